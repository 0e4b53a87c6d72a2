-- force.lua: break the lock, whoever holds it (a dead server's lock under a long lease), in every mode.
-- No ARGV. The holders lose it as if their leases had run out: the waiters at the head get it (with
-- greater tokens), or it is free; the last token stays, so the next acquisition's is greater. An old
-- holder's check or renewal then finds another owner, or none, and its COMMIT fails.
-- Returns 1 when a live holder lost the lock, 0 when it was free.
local now_ms, now_us = redis_now()
local st = lock_state(now_ms, true)
if not st.owner and st.nshared == 0 then
  return 0
end
redis.call('HDEL', lock_key, 'owner', 'otoken', 'expires')
redis.call('DEL', shared_key)
st.owner, st.raw_owner, st.shared, st.nshared = false, nil, {}, 0
if hand_over(st, now_ms, now_us) == 0 then
  redis.call('PEXPIRE', lock_key, hash_ttl(0))
end
return 1
