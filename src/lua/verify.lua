-- verify.lua: prove that an acquisition still holds its lock (in any mode) and keep it long enough: the
-- check before COMMIT, and the lease keeper's renewal.
-- ARGV: acquisition id, fencing token, lease ms to guarantee from now.
-- Returns 1 when the acquisition still holds the lock with that token (a lease that ran out while
-- nobody took the lock counts as kept, and is renewed), 0 when the lock was lost.
local me, token, keep = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
local now_ms = redis_now()
local v = redis.call('HMGET', lock_key, 'owner', 'otoken', 'expires')
local expires
if v[1] == me and tonumber(v[2]) == token then
  expires = math.max(tonumber(v[3]), now_ms + keep)
  if expires > tonumber(v[3]) then
    redis.call('HSET', lock_key, 'expires', expires)
  end
else
  local held = redis.call('HGET', shared_key, me)
  local exp, tok = string.match(held or '', '^(%d+):(%d+)$')
  if not exp or tonumber(tok) ~= token then
    return 0
  end
  -- a shared hold or permit whose lease ran out counts only while nobody else could have used it:
  -- its entry is still there (expired entries go when anyone acquires, releases or verifies)
  expires = math.max(tonumber(exp), now_ms + keep)
  redis.call('HSET', shared_key, me, held_value(expires, tok))
  keep_at_least(shared_key, hash_ttl(expires - now_ms))
end
-- always a write (replicated), so that a WAIT after this script proves the replicas have the lock now
redis.call('PEXPIRE', lock_key, math.max(redis.call('PTTL', lock_key), hash_ttl(expires - now_ms)))
return 1
