-- info.lua: what Redis knows of a lock now, whoever holds it. Reads only.
-- Returns {holder or '', fencing token or -1, lease ms left or -1, queued waiters, holders, mode}: the
-- holder is the exclusive one, or else one of the shared holders (the latest); mode is 'exclusive',
-- 'shared', 'semaphore' or '' when free.
local now_ms = redis_now()
local st = lock_state(now_ms, false)
local waiters = redis.call('ZCARD', queue_key)
if st.owner then
  return {st.owner, st.otoken, st.expires - now_ms, waiters, 1 + st.nshared, 'exclusive'}
end
local holder, best
for id, h in pairs(st.shared) do
  if not best or h[2] > best[2] then
    holder, best = id, h
  end
end
if not holder then
  return {'', -1, -1, waiters, 0, ''}
end
return {holder, best[2], best[1] - now_ms, waiters, st.nshared, st.kind == 'm' and 'semaphore' or 'shared'}
