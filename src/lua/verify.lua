-- verify.lua: before COMMIT, prove that the lock is still ours and keep it long enough to commit.
-- ARGV: holder, fencing token, lease ms to guarantee from now.
-- Returns 1 when holder still owns the lock with that token (a lease that ran out while nobody took the
-- lock counts as kept, and is renewed), 0 when the lock was lost.
local holder, token, keep = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
local now_ms = redis_now()
local v = redis.call('HMGET', lock_key, 'owner', 'token', 'expires')
if v[1] ~= holder or tonumber(v[2]) ~= token then
  return 0
end
if tonumber(v[3]) < now_ms + keep then
  redis.call('HSET', lock_key, 'expires', now_ms + keep)
  redis.call('PEXPIRE', lock_key, hash_ttl(keep))
end
return 1
