-- acquire.lua: take the lock, or join (or stay in) its FIFO queue.
-- ARGV: acquisition id (one per lock call: no other call, earlier or later, uses it), lease ttl ms,
-- mode, waiter liveness ms (a queued acquisition that does not call again within it is taken for dead
-- and skipped). Modes: 'try' never queues; 'wait' queues; 'recheck' is a queued acquisition's
-- heartbeat and bounded re-check, which also picks up a grant whose wake-up it missed.
-- Returns {1, token, lease ms left} when this acquisition owns the lock now, {0, ms until the current
-- lease ends} otherwise, and {2, 0} to a re-check whose place in the queue is gone (its heartbeat
-- lapsed, or it was undone): the caller joins again, at the tail.
local me, ttl, mode, liveness = ARGV[1], tonumber(ARGV[2]), ARGV[3], tonumber(ARGV[4])
local now_ms, now_us = redis_now()
local owner, last, expires = lock_state(now_ms)

if owner == me then
  -- handed to this acquisition while it was not listening: this is that grant
  redis.call('DEL', grant_key(me))
  return {1, last, expires - now_ms}
end

if mode == 'recheck' then
  if not redis.call('ZSCORE', queue_key, me) then
    -- a grant whose lease ran out before we came back must not be popped by our next wait
    redis.call('DEL', grant_key(me))
    return {2, 0}
  end
elseif redis.call('EXISTS', tombstone_key(me)) == 1 then
  -- (one more call for each acquisition, for the rare undo that overtook its acquire in the network)
  return {0, 0}
end

if not owner then
  -- Free, or its lease ran out: the first live waiter is entitled to it, else the caller takes it.
  local new_owner, token, granted_ttl = hand_over(last, now_ms, now_us)
  if not new_owner then
    -- nobody live waits (so neither do we): take it
    return {1, grant(me, ttl, last, now_ms, now_us), ttl}
  end
  if new_owner == me then
    -- our own place came up while we re-checked: the lease is the one asked now
    redis.call('DEL', grant_key(me))
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
redis.call('ZADD', queue_key, 'NX', score, me)
redis.call('HSET', waiters_key, me, (now_ms + liveness) .. ':' .. ttl)
redis.call('PEXPIRE', queue_key, liveness * 2)
redis.call('PEXPIRE', waiters_key, liveness * 2)
return {0, expires - now_ms}
