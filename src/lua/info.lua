-- info.lua: what Redis knows of a lock now, whoever holds it.
-- Returns {owner or '', fencing token or -1, lease ms left or -1, queued waiters}.
local now_ms = redis_now()
local owner, token, expires = lock_state(now_ms)
local waiters = redis.call('ZCARD', queue_key)
if not owner then
  return {'', -1, -1, waiters}
end
return {owner, token, expires - now_ms, waiters}
