-- common.lua: helpers shared by every redislock script; the build prepends this file to each of them.
--
-- Keys of one lock (all share the hash tag "{<prefix><key>}", so a Redis Cluster keeps them in one slot):
--   KEYS[1]  {P K}            hash: owner, otoken (its token), expires (Redis time, ms) of the exclusive
--                             holder or the last one; token: the last fencing token of any mode; kind
--                             'm' and permits for a semaphore
--   KEYS[2]  {P K}:q          sorted set: waiting acquisitions, scored by arrival (Redis time, us, strictly rising)
--   KEYS[3]  {P K}:w          hash: waiting acquisition -> "<heartbeat deadline ms>:<lease ttl ms>:<mode>"
--   KEYS[4]  {P K}:s          hash: shared holder (or semaphore permit holder) -> "<expires ms>:<token>";
--                             declared in Redis Cluster mode only (derived from KEYS[1] otherwise), so
--                             that a slot migration that has moved some of these four keys and not the
--                             rest makes Redis answer TRYAGAIN instead of running on half the state
--   {P K}:g:<acquisition>     list: the grant (fencing token) handed to a waiting acquisition
--   {P K}:x:<acquisition>     the undo of an acquisition that did not hold the lock (see tombstone_key)
-- The last two are derived from KEYS[1], so they are in the same slot. In Redis Cluster, a script that
-- meets one of them missing on a node whose slot is migrating fails there ("Script attempted to access
-- a non local key") and is run again: so a handoff pushes the grant before it writes anything else.
-- Modes: 'x' exclusive, 's' shared, 'm' a semaphore permit.
-- An acquisition id ("<host>:<port>:<pid>:<nonce>:<n>") names one lock call of one backend; no other
-- call uses it, so nothing sent for one acquisition can act on another. Its backend is the id without
-- ":<n>": a backend's own holds never block its own requests.
-- Every key has a TTL, and the scripts delete the lock's keys when nobody holds or waits.
local lock_key, queue_key, waiters_key = KEYS[1], KEYS[2], KEYS[3]
local shared_key = KEYS[4] or (lock_key .. ':s')

-- Redis's own clock, never a client's: milliseconds for leases, microseconds for tokens and arrival order.
local function redis_now()
  local t = redis.call('TIME')
  local sec, usec = tonumber(t[1]), tonumber(t[2])
  return sec * 1000 + math.floor(usec / 1000), sec * 1000000 + usec
end

local function grant_key(holder)
  return lock_key .. ':g:' .. holder
end

-- Left by the undo of an acquisition that did not own the lock: a lock call cut short, whose request
-- may still be on its way (a connection given up while the network held it). An acquire that arrives
-- after its undo finds it and does nothing.
local function tombstone_key(holder)
  return lock_key .. ':x:' .. holder
end
local TOMBSTONE_MS = 60000

local function backend_of(id)
  return string.match(id, '^(.*):%d+$') or id
end

-- How long the lock's keys outlive a lease of ttl ms: one more ttl, and at least 10 s, so that a holder
-- whose lease ran out can still prove, before it commits, that nobody took the lock meanwhile.
local function hash_ttl(ttl)
  return ttl + math.max(ttl, 10000)
end

-- A shared holder's entry: "<expires ms>:<token>". Tokens have 16 digits: written with %.0f, since
-- Lua's own number-to-string keeps only 14.
local function held_value(expires, token)
  return string.format('%.0f:%.0f', expires, token)
end

local function keep_at_least(key, ms)
  if redis.call('PTTL', key) < ms then
    redis.call('PEXPIRE', key, ms)
  end
end

-- The lock's state now: st.owner (the live exclusive holder, or false), st.raw_owner (the owner field,
-- live or not), st.otoken (its token), st.last (last token of any mode), st.expires, st.kind ('m' for a semaphore), st.permits, st.shared
-- (live shared holders: id -> {expires, token}), st.nshared. purge: forget shared holders whose lease
-- ran out (a script that may write).
local function lock_state(now_ms, purge)
  local v = redis.call('HMGET', lock_key, 'owner', 'token', 'expires', 'kind', 'permits', 'otoken')
  local st = {raw_owner = v[1], last = tonumber(v[2]), expires = tonumber(v[3]), kind = v[4],
              permits = tonumber(v[5]), otoken = tonumber(v[6]), shared = {}, nshared = 0, owner = false}
  if v[1] and st.expires and st.expires > now_ms then
    st.owner = v[1]
  end
  -- shared holders exist only with the lock hash (every grant writes its token there, and the hash
  -- outlives them): no hash, no call for them (the uncontended path)
  if not v[2] then
    return st
  end
  local flat = redis.call('HGETALL', shared_key)
  for i = 1, #flat, 2 do
    local exp, tok = string.match(flat[i + 1], '^(%d+):(%d+)$')
    if exp and tonumber(exp) > now_ms then
      st.shared[flat[i]] = {tonumber(exp), tonumber(tok)}
      st.nshared = st.nshared + 1
    elseif purge then
      redis.call('HDEL', shared_key, flat[i])
    end
  end
  return st
end

-- Whether a request of mode by acquisition me may be granted next to the live holds of other backends
-- (a backend's own holds never block it).
local function compatible(st, mode, me)
  if mode == 'm' then
    return st.nshared < (st.permits or 0)
  end
  local b = backend_of(me)
  if st.owner and backend_of(st.owner) ~= b then
    return false
  end
  if mode == 'x' then
    for id in pairs(st.shared) do
      if backend_of(id) ~= b then
        return false
      end
    end
  end
  return true
end

-- Whether the backend of acquisition me holds the key now, in any mode.
local function backend_holds(st, me)
  local b = backend_of(me)
  if st.owner and backend_of(st.owner) == b then
    return true
  end
  for id in pairs(st.shared) do
    if backend_of(id) == b then
      return true
    end
  end
  return false
end

-- Milliseconds until the first hold that blocks a request of mode by me ends, or -1 when none does.
local function blocked_for(st, mode, me, now_ms)
  local b, left = backend_of(me), -1
  local function consider(exp)
    if left < 0 or exp - now_ms < left then
      left = exp - now_ms
    end
  end
  if st.owner and backend_of(st.owner) ~= b then
    consider(st.expires)
  end
  if mode ~= 's' then
    for id, h in pairs(st.shared) do
      if mode == 'm' or backend_of(id) ~= b then
        consider(h[1])
      end
    end
  end
  return left
end

-- A fencing token greater than every earlier one: the last token + 1, or Redis's clock in microseconds
-- when that is larger (so tokens keep rising after the lock hash was deleted or Redis restarted empty).
local function next_token(last, now_us)
  if last and last >= now_us then
    return last + 1
  end
  return now_us
end

-- Give holder the lock in mode for ttl ms; returns its token. An exclusive holder whose lease ran out
-- loses its claim here: its check before commit must now fail, as the lock was taken meanwhile.
local function grant(st, holder, mode, ttl, now_ms, now_us, given_token)
  local token = given_token or next_token(st.last, now_us)
  st.last = token
  if st.raw_owner and not st.owner and mode ~= 'x' then
    redis.call('HDEL', lock_key, 'owner', 'otoken', 'expires')
    st.raw_owner = nil
  end
  if mode == 'x' then
    redis.call('HSET', lock_key, 'owner', holder, 'token', token, 'otoken', token, 'expires', now_ms + ttl)
    st.owner, st.raw_owner, st.expires, st.otoken = holder, holder, now_ms + ttl, token
  else
    redis.call('HSET', shared_key, holder, held_value(now_ms + ttl, token))
    redis.call('HSET', lock_key, 'token', token)
    keep_at_least(shared_key, hash_ttl(ttl))
    st.shared[holder] = {now_ms + ttl, token}
    st.nshared = st.nshared + 1
  end
  if st.nshared == 0 then
    redis.call('PEXPIRE', lock_key, hash_ttl(ttl))
  else
    keep_at_least(lock_key, hash_ttl(ttl))
  end
  return token
end

local function forget_waiter(holder)
  redis.call('ZREM', queue_key, holder)
  redis.call('HDEL', waiters_key, holder)
end

-- The first waiter whose heartbeat is still fresh, the lease it asked for and its mode. Waiters whose
-- heartbeat deadline passed (they died without cleaning up) are dropped on the way. The head stays
-- queued until it is granted: should the grant fail (Redis out of memory), nobody has lost a place.
local function live_head(now_ms)
  while true do
    local head = redis.call('ZRANGE', queue_key, 0, 0)[1]
    if not head then
      return nil
    end
    local info = redis.call('HGET', waiters_key, head)
    if info then
      local deadline, ttl, mode = string.match(info, '^(%d+):(%d+):?(%a?)$')
      if deadline and tonumber(deadline) > now_ms then
        return head, tonumber(ttl), (mode == '' and 'x' or mode)
      end
    end
    forget_waiter(head)
    redis.call('DEL', grant_key(head))
  end
end

-- Direct handoff: grant the lock to the waiters at the head of the queue that can have it now — one
-- exclusive waiter, or every shared waiter up to the next exclusive one, or semaphore waiters while
-- permits last — and wake each alone by pushing its token onto its own grant list (its BLPOP returns at
-- once, with no further round trip). Each list is empty: only a handoff, which takes the waiter out of
-- the queue, pushes onto it. Returns how many were granted, and the token each got (id -> token).
local function hand_over(st, now_ms, now_us)
  local n, tokens = 0, {}
  while true do
    local head, ttl, mode = live_head(now_ms)
    if not head or not compatible(st, mode, head) then
      return n, tokens
    end
    -- the grant list first (see the top: in a migrating slot it is the write that may be refused)
    local token = next_token(st.last, now_us)
    local g = grant_key(head)
    redis.call('RPUSH', g, token)
    redis.call('PEXPIRE', g, ttl)
    grant(st, head, mode, ttl, now_ms, now_us, token)
    forget_waiter(head)
    n = n + 1
    tokens[head] = token
    if mode == 'x' then
      return n, tokens
    end
  end
end

-- Nobody holds or waits any more (and no exclusive holder whose lease ran out may still need to prove
-- that nobody took the lock): the lock's keys go, the last token with them (tokens follow the clock).
local function delete_if_unused(st)
  if not st.raw_owner and st.nshared == 0 and redis.call('EXISTS', queue_key) == 0 then
    redis.call('DEL', lock_key, shared_key)
    return true
  end
  return false
end
