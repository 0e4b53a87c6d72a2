-- force.lua: break the lock, whoever holds it (a dead server's lock under a long lease).
-- No ARGV. The holder loses it as if its lease had run out: the first live waiter gets it (with a
-- greater token), or it is free; the last token stays, so the next acquisition's is greater. The old
-- holder's check or renewal then finds another owner, or none, and its COMMIT fails.
-- Returns 1 when a live holder lost the lock, 0 when it was free.
local now_ms, now_us = redis_now()
local owner, last = lock_state(now_ms)
if not owner then
  return 0
end
redis.call('HDEL', lock_key, 'owner', 'expires')
if not hand_over(last, now_ms, now_us) then
  redis.call('PEXPIRE', lock_key, hash_ttl(0))
end
return 1
