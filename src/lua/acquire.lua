-- acquire.lua: take the lock, or join (or stay in) its FIFO queue.
-- ARGV: holder, lease ttl ms, mode, waiter liveness ms (a queued holder that does not call again within
-- it is taken for dead and skipped). Modes: 'try' never queues; 'wait' queues; 'recheck' is a queued
-- holder's heartbeat and bounded re-check, which also picks up a grant whose wake-up it missed.
-- Returns {1, token, lease ms left} when the holder owns the lock now, {0, ms until the current lease
-- ends} otherwise.
local holder, ttl, mode, liveness = ARGV[1], tonumber(ARGV[2]), ARGV[3], tonumber(ARGV[4])
local now_ms, now_us = redis_now()
local owner, last, expires = lock_state(now_ms)

if owner == holder then
  redis.call('DEL', grant_key(holder))
  if mode == 'recheck' then
    -- Handed to us while we were not listening: this is that grant.
    return {1, last, expires - now_ms}
  end
  -- Still ours from an earlier hold whose release never reached Redis: a new acquisition, new token.
  return {1, grant(holder, ttl, last, now_ms, now_us), ttl}
end

if not owner then
  -- Free, or its lease ran out: the first live waiter is entitled to it, else the caller takes it.
  local new_owner, token, granted_ttl = hand_over(last, now_ms, now_us)
  if not new_owner then
    -- nobody live waits (so neither do we): take it
    return {1, grant(holder, ttl, last, now_ms, now_us), ttl}
  end
  if new_owner == holder then
    -- our own queue entry, left by a wait whose undo never arrived: the lease is the one asked now
    redis.call('DEL', grant_key(holder))
    redis.call('HSET', lock_key, 'expires', now_ms + ttl)
    redis.call('PEXPIRE', lock_key, hash_ttl(ttl))
    return {1, token, ttl}
  end
  expires = now_ms + granted_ttl
end

if mode == 'try' then
  return {0, expires - now_ms}
end

-- join at the tail (arrival order, strictly rising even if Redis's clock steps back), unless queued
local tail = redis.call('ZRANGE', queue_key, -1, -1, 'WITHSCORES')
local score = now_us
if tail[2] and tonumber(tail[2]) >= score then
  score = tonumber(tail[2]) + 1
end
if redis.call('ZADD', queue_key, 'NX', score, holder) == 1 then
  -- a grant that raced with an earlier wait's giving up must not wake this one
  redis.call('DEL', grant_key(holder))
end
redis.call('HSET', waiters_key, holder, (now_ms + liveness) .. ':' .. ttl)
redis.call('PEXPIRE', queue_key, liveness * 2)
redis.call('PEXPIRE', waiters_key, liveness * 2)
return {0, expires - now_ms}
