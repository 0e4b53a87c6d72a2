-- acquire.lua: take the lock (exclusive, shared, or a semaphore permit), or join (or stay in) its FIFO queue.
-- ARGV: acquisition id (one per lock call: no other call, earlier or later, uses it), lease ttl ms,
-- call mode, waiter liveness ms (a queued acquisition that does not call again within it is taken for
-- dead and skipped), lock mode ('x', 's' or 'm'; default 'x'), permits (a semaphore's).
-- Call modes: 'try' never queues; 'wait' queues; 'recheck' is a queued acquisition's heartbeat and
-- bounded re-check, which also picks up a grant whose wake-up it missed.
-- Returns {1, token, lease ms left} when this acquisition holds the lock now, {0, ms until the first
-- hold that blocks it ends, or -1} otherwise, {2, 0} to a re-check whose place in the queue is gone
-- (its heartbeat lapsed, or it was undone): the caller joins again, at the tail; and {3, kind, permits}
-- when the key is in use as the other kind ('lock' or 'semaphore') or with other permits.
-- Queue order: a request waits behind every earlier waiter (no writer starvation), except that a
-- backend that already holds the key is not queued behind others (its own holds never block it).
local me, ttl, mode, liveness = ARGV[1], tonumber(ARGV[2]), ARGV[3], tonumber(ARGV[4])
local lmode, permits = ARGV[5] or 'x', tonumber(ARGV[6] or '0')
local now_ms, now_us = redis_now()
local st = lock_state(now_ms, true)

-- handed to this acquisition while it was not listening (or just now, to the BLPOP before us): this is
-- that grant. The PEXPIRE is a write of this connection's own, always replicated, so that a WAIT after
-- this script covers the grant (WAIT counts only what the waiting connection wrote).
if st.owner == me or st.shared[me] then
  local exp, token = st.expires, st.otoken
  if st.owner ~= me then
    exp, token = st.shared[me][1], st.shared[me][2]
  end
  redis.call('DEL', grant_key(me))
  redis.call('PEXPIRE', lock_key, math.max(redis.call('PTTL', lock_key), hash_ttl(exp - now_ms)))
  return {1, token, exp - now_ms}
end

local waiting = redis.call('EXISTS', queue_key) == 1
local queued = waiting and mode ~= 'try' and redis.call('ZSCORE', queue_key, me)
if mode == 'recheck' then
  if not queued then
    -- a grant whose lease ran out before we came back must not be popped by our next wait
    redis.call('DEL', grant_key(me))
    return {2, 0}
  end
elseif redis.call('EXISTS', tombstone_key(me)) == 1 then
  -- (one more call for each acquisition, for the rare undo that overtook its acquire in the network)
  return {0, 0}
end

-- a key is a lock or a semaphore, with one number of permits, while anyone holds or waits for it
if st.raw_owner or st.nshared > 0 or waiting then
  if (lmode == 'm') ~= (st.kind == 'm') or (lmode == 'm' and st.permits ~= permits) then
    return {3, st.kind == 'm' and 'semaphore' or 'lock', st.permits or 0}
  end
elseif lmode == 'm' then
  redis.call('HSET', lock_key, 'kind', 'm', 'permits', permits)
  st.kind, st.permits = 'm', permits
elseif st.kind then
  redis.call('HDEL', lock_key, 'kind', 'permits')
  st.kind, st.permits = nil, nil
end

-- whoever the queue's head entitles now (a lease ran out, a hold ended) gets the lock first
local handed, tokens = 0, {}
if waiting then
  -- (dead waiters are dropped on the way, so the queue may be empty afterwards even if nobody got it)
  handed, tokens = hand_over(st, now_ms, now_us)
  waiting = redis.call('EXISTS', queue_key) == 1
end
if tokens[me] then
  -- our own place came up while we re-checked: the lease is the one asked now
  redis.call('DEL', grant_key(me))
  local token = tokens[me]
  if lmode == 'x' then
    redis.call('HSET', lock_key, 'expires', now_ms + ttl)
  else
    redis.call('HSET', shared_key, me, held_value(now_ms + ttl, token))
  end
  keep_at_least(lock_key, hash_ttl(ttl))
  return {1, token, ttl}
end

-- take it now: compatible with the holds of other backends, and nobody waits ahead (a backend that
-- holds the key already does not wait behind others)
local own = backend_holds(st, me)
if compatible(st, lmode, me) and (own or not waiting) then
  if queued then
    forget_waiter(me)
  end
  return {1, grant(st, me, lmode, ttl, now_ms, now_us), ttl}
end

if mode == 'try' then
  return {0, blocked_for(st, lmode, me, now_ms)}
end

-- join the queue (unless queued): at the tail, in arrival order (strictly rising even if Redis's clock
-- steps back); at the head when this backend holds the key already
if not queued then
  local score = now_us
  if own then
    local head = redis.call('ZRANGE', queue_key, 0, 0, 'WITHSCORES')
    if head[2] then
      score = tonumber(head[2]) - 1
    end
  else
    local tail = redis.call('ZRANGE', queue_key, -1, -1, 'WITHSCORES')
    if tail[2] and tonumber(tail[2]) >= score then
      score = tonumber(tail[2]) + 1
    end
  end
  redis.call('ZADD', queue_key, 'NX', score, me)
end
redis.call('HSET', waiters_key, me, string.format('%.0f:%.0f:%s', now_ms + liveness, ttl, lmode))
redis.call('PEXPIRE', queue_key, liveness * 2)
redis.call('PEXPIRE', waiters_key, liveness * 2)
return {0, blocked_for(st, lmode, me, now_ms)}
