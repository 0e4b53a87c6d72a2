-- release.lua: give up a hold (exclusive, shared or a semaphore permit) or a place in the queue, and
-- hand the lock to whoever the queue's head entitles now.
-- ARGV: acquisition id. It acts only on that acquisition: a release that arrives late (delayed in the
-- network, sent twice) finds a later lock of the same backend under another id, and leaves it alone.
-- Also the undo of a lock call that was cut short, whatever state it reached.
-- Returns 1 when the acquisition held the lock (its lease may have run out, but nobody took the lock
-- meanwhile), 0 when it did not.
local me = ARGV[1]
local v = redis.call('HMGET', lock_key, 'owner')
if v[1] == me then
  -- the usual case, an exclusive holder that nobody waits for and nobody shares with: the keys go
  if redis.call('EXISTS', queue_key) == 0 and redis.call('EXISTS', shared_key) == 0 then
    redis.call('DEL', lock_key)
    return 1
  end
  redis.call('HDEL', lock_key, 'owner', 'otoken', 'expires')
elseif redis.call('HDEL', shared_key, me) == 0 then
  -- not a holder: leave the queue, if queued, and drop a grant that may be on its way; an acquire of
  -- this acquisition still in the network must not take the lock or queue after this
  forget_waiter(me)
  redis.call('DEL', grant_key(me))
  redis.call('SET', tombstone_key(me), 1, 'PX', TOMBSTONE_MS)
  -- a waiter that leaves may have kept others behind it waiting (shared ones behind an exclusive one)
  if redis.call('EXISTS', queue_key) == 1 then
    local now_ms, now_us = redis_now()
    hand_over(lock_state(now_ms, true), now_ms, now_us)
  end
  return 0
end
local now_ms, now_us = redis_now()
local st = lock_state(now_ms, true)
if redis.call('EXISTS', queue_key) == 1 then
  hand_over(st, now_ms, now_us)
end
delete_if_unused(st)
return 1
