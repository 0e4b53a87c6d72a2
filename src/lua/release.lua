-- release.lua: give the lock up (or the place in its queue) and hand it to the next live waiter.
-- ARGV: holder. Also the undo of a wait that was cancelled or timed out, whatever state it reached.
-- Returns 1 when the holder owned the lock (its lease may have run out, but nobody took the lock
-- meanwhile), 0 when it did not.
local holder = ARGV[1]
local v = redis.call('HMGET', lock_key, 'owner', 'token')
if v[1] ~= holder then
  -- not the owner: leave the queue, if we are in it, and drop a grant that may be on its way
  forget_waiter(holder)
  redis.call('DEL', grant_key(holder))
  return 0
end
-- an owner is never in the queue; a grant list left by a grant that raced with giving up is cleared
-- when the holder next joins a queue
if redis.call('EXISTS', queue_key) == 1 then
  local now_ms, now_us = redis_now()
  if hand_over(tonumber(v[2]), now_ms, now_us) then
    return 1
  end
end
redis.call('DEL', lock_key)
return 1
