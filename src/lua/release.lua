-- release.lua: give up a lock (or a place in its queue) and hand it to the next live waiter.
-- ARGV: acquisition id. It acts only on that acquisition: a release that arrives late (delayed in the
-- network, sent twice) finds a later lock of the same backend under another id, and leaves it alone.
-- Also the undo of a lock call that was cut short, whatever state it reached.
-- Returns 1 when the acquisition owned the lock (its lease may have run out, but nobody took the lock
-- meanwhile), 0 when it did not.
local me = ARGV[1]
local v = redis.call('HMGET', lock_key, 'owner', 'token')
if v[1] ~= me then
  -- not the owner: leave the queue, if queued, and drop a grant that may be on its way; an acquire of
  -- this acquisition still in the network must not take the lock or queue after this
  forget_waiter(me)
  redis.call('DEL', grant_key(me))
  redis.call('SET', tombstone_key(me), 1, 'PX', TOMBSTONE_MS)
  return 0
end
if redis.call('EXISTS', queue_key) == 1 then
  local now_ms, now_us = redis_now()
  if hand_over(tonumber(v[2]), now_ms, now_us) then
    return 1
  end
end
redis.call('DEL', lock_key)
return 1
