-- holders.lua: who holds a lock now, for the deadlock check. Reads only.
-- ARGV: an acquisition id, or ''. Returns {1 when that acquisition is queued for the lock (its wait is
-- still on), else 0, then each live holder and its mode: id, 'x'|'s'|'m', id, ...}.
local now_ms = redis_now()
local st = lock_state(now_ms, false)
local out = {0}
if ARGV[1] ~= '' and redis.call('ZSCORE', queue_key, ARGV[1]) then
  out[1] = 1
end
if st.owner then
  out[#out + 1] = st.owner
  out[#out + 1] = 'x'
end
for id in pairs(st.shared) do
  out[#out + 1] = id
  out[#out + 1] = st.kind == 'm' and 'm' or 's'
end
return out
