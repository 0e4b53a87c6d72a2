-- common.lua: helpers shared by every redislock script; the build prepends this file to each of them.
--
-- Keys of one lock (all share the hash tag "{<prefix><key>}", so a Redis Cluster keeps them in one slot):
--   KEYS[1]  {P K}            hash: owner, token, expires (Redis time, ms) of the current or last lease
--   KEYS[2]  {P K}:q          sorted set: waiting acquisitions, scored by arrival (Redis time, us, strictly rising)
--   KEYS[3]  {P K}:w          hash: waiting acquisition -> "<heartbeat deadline ms>:<lease ttl ms>"
--   {P K}:g:<acquisition>     list: the grant (fencing token) handed to a waiting acquisition; derived
--                             from KEYS[1], so it is in the same slot
-- An acquisition id ("<host>:<port>:<pid>:<nonce>:<n>") names one lock call of one backend; no other
-- call uses it, so nothing sent for one acquisition can act on another.
-- Every key has a TTL, and the scripts delete the lock hash when the lock is free and nobody waits.
local lock_key, queue_key, waiters_key = KEYS[1], KEYS[2], KEYS[3]

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
-- after its undo finds it and does nothing. Derived from KEYS[1], so it is in the same slot.
local function tombstone_key(holder)
  return lock_key .. ':x:' .. holder
end
local TOMBSTONE_MS = 60000

-- The lock's state: owner (false when free or the lease ran out), last fencing token, lease expiry.
local function lock_state(now_ms)
  local v = redis.call('HMGET', lock_key, 'owner', 'token', 'expires')
  local token, expires = tonumber(v[2]), tonumber(v[3])
  if v[1] and expires and expires > now_ms then
    return v[1], token, expires
  end
  return false, token, expires
end

-- A fencing token greater than every earlier one: the last token + 1, or Redis's clock in microseconds
-- when that is larger (so tokens keep rising after the lock hash was deleted or Redis restarted empty).
local function next_token(last, now_us)
  if last and last >= now_us then
    return last + 1
  end
  return now_us
end

-- How long the lock hash outlives a lease of ttl ms: one more ttl, and at least 10 s, so that a holder
-- whose lease ran out can still prove, before it commits, that nobody took the lock meanwhile.
local function hash_ttl(ttl)
  return ttl + math.max(ttl, 10000)
end

-- Make holder the owner for ttl ms.
local function grant(holder, ttl, last, now_ms, now_us)
  local token = next_token(last, now_us)
  redis.call('HSET', lock_key, 'owner', holder, 'token', token, 'expires', now_ms + ttl)
  redis.call('PEXPIRE', lock_key, hash_ttl(ttl))
  return token
end

local function forget_waiter(holder)
  redis.call('ZREM', queue_key, holder)
  redis.call('HDEL', waiters_key, holder)
end

-- The first waiter whose heartbeat is still fresh, and the lease it asked for. Waiters whose heartbeat
-- deadline passed (they died without cleaning up) are dropped on the way. The head stays queued until
-- it is granted: should the grant fail (Redis out of memory), nobody has lost a place.
local function live_head(now_ms)
  while true do
    local head = redis.call('ZRANGE', queue_key, 0, 0)[1]
    if not head then
      return nil
    end
    local info = redis.call('HGET', waiters_key, head)
    if info then
      local deadline, ttl = string.match(info, '^(%d+):(%d+)$')
      if deadline and tonumber(deadline) > now_ms then
        return head, tonumber(ttl)
      end
    end
    forget_waiter(head)
    redis.call('DEL', grant_key(head))
  end
end

-- Direct handoff: grant the free lock to the first live waiter and wake that waiter alone by pushing the
-- token onto its grant list (its BLPOP returns at once, with no further round trip). The list is empty:
-- each acquisition has a list of its own, and only a handoff, which takes it out of the queue, pushes
-- onto it. Returns the new owner, token and lease ttl, or nil when nobody waits.
local function hand_over(last, now_ms, now_us)
  local head, ttl = live_head(now_ms)
  if not head then
    return nil
  end
  local token = grant(head, ttl, last, now_ms, now_us)
  forget_waiter(head)
  local g = grant_key(head)
  redis.call('RPUSH', g, token)
  redis.call('PEXPIRE', g, ttl)
  return head, token, ttl
end
