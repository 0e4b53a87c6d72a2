-- holders.lua: who holds a lock now, and who waits ahead of a given acquisition, for the deadlock
-- check. Reads only.
-- ARGV: an acquisition id, or ''. Returns {1 when that acquisition is queued for the lock (its wait is
-- still on), else 0; the semaphore's permits, or 0 for a lock; then each live holder and its mode,
-- then each waiter queued ahead of the acquisition (at most 16) and its mode, its mode letter
-- prefixed by 'q': id, 'x'|'s'|'m'|'qx'|'qs'|'qm', ...}.
local now_ms = redis_now()
local st = lock_state(now_ms, false)
local out = {0, st.kind == 'm' and (st.permits or 0) or 0}
local my_score = ARGV[1] ~= '' and redis.call('ZSCORE', queue_key, ARGV[1])
if my_score then
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
if my_score then
  for _, id in ipairs(redis.call('ZRANGEBYSCORE', queue_key, '-inf', '(' .. my_score, 'LIMIT', 0, 16)) do
    local info = redis.call('HGET', waiters_key, id)
    local mode = info and string.match(info, '^%d+:%d+:(%a)$') or 'x'
    out[#out + 1] = id
    out[#out + 1] = 'q' .. mode
  end
end
return out
