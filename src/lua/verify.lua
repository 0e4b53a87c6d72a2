-- verify.lua: prove that an acquisition still owns its lock and keep it long enough: the check before
-- COMMIT, and the lease keeper's renewal.
-- ARGV: acquisition id, fencing token, lease ms to guarantee from now.
-- Returns 1 when the acquisition still owns the lock with that token (a lease that ran out while
-- nobody took the lock counts as kept, and is renewed), 0 when the lock was lost.
local me, token, keep = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
local now_ms = redis_now()
local v = redis.call('HMGET', lock_key, 'owner', 'token', 'expires')
if v[1] ~= me or tonumber(v[2]) ~= token then
  return 0
end
if tonumber(v[3]) < now_ms + keep then
  redis.call('HSET', lock_key, 'expires', now_ms + keep)
  redis.call('PEXPIRE', lock_key, hash_ttl(keep))
end
return 1
