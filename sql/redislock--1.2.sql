/* redislock--1.2.sql: distributed, transaction-scoped locks held in Redis (a fresh install of 1.2). */

\echo Use "CREATE EXTENSION redislock" to load this file. \quit

CREATE FUNCTION redis_wait_lock(key text, ttl interval DEFAULT NULL, timeout interval DEFAULT NULL)
RETURNS bigint
AS 'MODULE_PATHNAME', 'redis_wait_lock'
LANGUAGE C VOLATILE PARALLEL UNSAFE;
COMMENT ON FUNCTION redis_wait_lock(text, interval, interval) IS
'wait first come, first served for a Redis lock held until the transaction ends; returns its fencing token';

CREATE FUNCTION redis_try_lock(key text, ttl interval DEFAULT NULL)
RETURNS boolean
AS 'MODULE_PATHNAME', 'redis_try_lock'
LANGUAGE C VOLATILE PARALLEL UNSAFE;
COMMENT ON FUNCTION redis_try_lock(text, interval) IS
'take a Redis lock only if it is free and nobody waits for it; never waits';

CREATE FUNCTION redis_unlock(key text)
RETURNS boolean
AS 'MODULE_PATHNAME', 'redis_unlock'
LANGUAGE C VOLATILE PARALLEL UNSAFE;
COMMENT ON FUNCTION redis_unlock(text) IS
'release one hold of a Redis lock now';

CREATE FUNCTION redis_unlock_all()
RETURNS integer
AS 'MODULE_PATHNAME', 'redis_unlock_all'
LANGUAGE C VOLATILE PARALLEL UNSAFE;
COMMENT ON FUNCTION redis_unlock_all() IS
'release every Redis lock this backend holds; returns how many keys';

CREATE FUNCTION redis_fencing_token(key text)
RETURNS bigint
AS 'MODULE_PATHNAME', 'redis_fencing_token'
LANGUAGE C VOLATILE PARALLEL UNSAFE;
COMMENT ON FUNCTION redis_fencing_token(text) IS
'fencing token of a Redis lock this backend holds, or NULL';

CREATE FUNCTION redis_locks(
    OUT key text,
    OUT hold_count integer,
    OUT fencing_token bigint,
    OUT acquired_at timestamptz,
    OUT expires_at timestamptz,
    OUT mode text)
RETURNS SETOF record
AS 'MODULE_PATHNAME', 'redis_locks'
LANGUAGE C VOLATILE PARALLEL UNSAFE;
COMMENT ON FUNCTION redis_locks() IS
'the Redis locks this backend holds';
CREATE VIEW redis_locks AS SELECT * FROM redis_locks();


CREATE FUNCTION redis_lock_info(
    key text,
    OUT held boolean,
    OUT holder text,
    OUT fencing_token bigint,
    OUT ttl interval,
    OUT waiters integer,
    OUT holders integer)
RETURNS record
AS 'MODULE_PATHNAME', 'redis_lock_info'
LANGUAGE C VOLATILE PARALLEL UNSAFE;
COMMENT ON FUNCTION redis_lock_info(text) IS
'what Redis knows of a lock now, whoever holds it';

CREATE FUNCTION redis_session_lock(key text, ttl interval DEFAULT NULL, timeout interval DEFAULT NULL)
RETURNS bigint
AS 'MODULE_PATHNAME', 'redis_session_lock'
LANGUAGE C VOLATILE PARALLEL UNSAFE;
COMMENT ON FUNCTION redis_session_lock(text, interval, interval) IS
'wait for a Redis lock held until redis_unlock, DISCARD ALL or session end (needs the lease keeper)';

CREATE FUNCTION redis_try_session_lock(key text, ttl interval DEFAULT NULL)
RETURNS boolean
AS 'MODULE_PATHNAME', 'redis_try_session_lock'
LANGUAGE C VOLATILE PARALLEL UNSAFE;
COMMENT ON FUNCTION redis_try_session_lock(text, interval) IS
'take a session-level Redis lock only if it is free and nobody waits for it (needs the lease keeper)';

CREATE FUNCTION redis_lock_mode()
RETURNS text
AS 'MODULE_PATHNAME', 'redis_lock_mode'
LANGUAGE C STABLE PARALLEL SAFE;
COMMENT ON FUNCTION redis_lock_mode() IS
'keeper when the lease keeper renews leases (shared_preload_libraries), lease when a lock lives for its ttl';

CREATE FUNCTION redis_extend_lock(key text, ttl interval)
RETURNS boolean
AS 'MODULE_PATHNAME', 'redis_extend_lock'
LANGUAGE C VOLATILE PARALLEL UNSAFE;
COMMENT ON FUNCTION redis_extend_lock(text, interval) IS
'keep a Redis lock this backend holds for at least ttl from now; false when it was lost';

CREATE FUNCTION redis_force_unlock(key text)
RETURNS boolean
AS 'MODULE_PATHNAME', 'redis_force_unlock'
LANGUAGE C VOLATILE PARALLEL UNSAFE;
COMMENT ON FUNCTION redis_force_unlock(text) IS
'break a Redis lock whoever holds it, on any server; true when a live holder lost it';
REVOKE ALL ON FUNCTION redis_force_unlock(text) FROM PUBLIC;

CREATE FUNCTION redis_lock_activity(
    OUT pid integer,
    OUT key text,
    OUT mode text,
    OUT scope text,
    OUT granted boolean,
    OUT fencing_token bigint,
    OUT since timestamptz,
    OUT expires_at timestamptz)
RETURNS SETOF record
AS 'MODULE_PATHNAME', 'redis_lock_activity'
LANGUAGE C VOLATILE PARALLEL UNSAFE;
COMMENT ON FUNCTION redis_lock_activity() IS
'every Redis lock held or awaited by a backend of this server (needs the lease keeper)';

CREATE VIEW redis_lock_activity AS SELECT * FROM redis_lock_activity();

CREATE FUNCTION redis_blocking_pids(pid integer)
RETURNS integer[]
AS 'MODULE_PATHNAME', 'redis_blocking_pids'
LANGUAGE C VOLATILE STRICT PARALLEL UNSAFE;
COMMENT ON FUNCTION redis_blocking_pids(integer) IS
'the backends of this server holding the Redis lock that pid waits for (needs the lease keeper)';

CREATE FUNCTION redis_lock_stats(
    OUT acquisitions bigint,
    OUT immediate bigint,
    OUT waits bigint,
    OUT wait_time_ms bigint,
    OUT max_wait_ms bigint,
    OUT timeouts bigint,
    OUT cancels bigint,
    OUT deadlocks bigint,
    OUT lost bigint,
    OUT redis_errors bigint,
    OUT reconnects bigint,
    OUT round_trips bigint,
    OUT stats_reset timestamptz)
RETURNS record
AS 'MODULE_PATHNAME', 'redis_lock_stats'
LANGUAGE C VOLATILE PARALLEL UNSAFE;
COMMENT ON FUNCTION redis_lock_stats() IS
'server-wide counters of Redis lock activity since stats_reset (needs the lease keeper)';

CREATE VIEW redis_lock_stats AS SELECT * FROM redis_lock_stats();

CREATE FUNCTION redis_lock_stats_reset()
RETURNS void
AS 'MODULE_PATHNAME', 'redis_lock_stats_reset'
LANGUAGE C VOLATILE PARALLEL UNSAFE;
COMMENT ON FUNCTION redis_lock_stats_reset() IS
'zero the server-wide counters of redis_lock_stats (needs the lease keeper)';
REVOKE ALL ON FUNCTION redis_lock_stats_reset() FROM PUBLIC;

CREATE FUNCTION redis_wait_lock_shared(key text, ttl interval DEFAULT NULL, timeout interval DEFAULT NULL)
RETURNS bigint
AS 'MODULE_PATHNAME', 'redis_wait_lock_shared'
LANGUAGE C VOLATILE PARALLEL UNSAFE;
COMMENT ON FUNCTION redis_wait_lock_shared(text, interval, interval) IS
'wait for a shared Redis lock, held until the transaction ends; returns its fencing token';

CREATE FUNCTION redis_try_lock_shared(key text, ttl interval DEFAULT NULL)
RETURNS boolean
AS 'MODULE_PATHNAME', 'redis_try_lock_shared'
LANGUAGE C VOLATILE PARALLEL UNSAFE;
COMMENT ON FUNCTION redis_try_lock_shared(text, interval) IS
'take a shared Redis lock for the transaction if nobody holds it exclusive or waits ahead';

CREATE FUNCTION redis_session_lock_shared(key text, ttl interval DEFAULT NULL, timeout interval DEFAULT NULL)
RETURNS bigint
AS 'MODULE_PATHNAME', 'redis_session_lock_shared'
LANGUAGE C VOLATILE PARALLEL UNSAFE;
COMMENT ON FUNCTION redis_session_lock_shared(text, interval, interval) IS
'wait for a shared Redis lock held until redis_unlock_shared or the session ends (keeper mode)';

CREATE FUNCTION redis_try_session_lock_shared(key text, ttl interval DEFAULT NULL)
RETURNS boolean
AS 'MODULE_PATHNAME', 'redis_try_session_lock_shared'
LANGUAGE C VOLATILE PARALLEL UNSAFE;
COMMENT ON FUNCTION redis_try_session_lock_shared(text, interval) IS
'take a shared Redis lock for the session if available (keeper mode)';

CREATE FUNCTION redis_unlock_shared(key text)
RETURNS boolean
AS 'MODULE_PATHNAME', 'redis_unlock_shared'
LANGUAGE C VOLATILE PARALLEL UNSAFE;
COMMENT ON FUNCTION redis_unlock_shared(text) IS
'release one shared hold of a Redis lock; false with a WARNING if none';

CREATE FUNCTION redis_wait_semaphore(key text, permits integer, ttl interval DEFAULT NULL, timeout interval DEFAULT NULL)
RETURNS bigint
AS 'MODULE_PATHNAME', 'redis_wait_semaphore'
LANGUAGE C VOLATILE PARALLEL UNSAFE;
COMMENT ON FUNCTION redis_wait_semaphore(text, integer, interval, interval) IS
'wait for one of permits places of a Redis semaphore, held until the transaction ends; returns a fencing token';

CREATE FUNCTION redis_try_semaphore(key text, permits integer, ttl interval DEFAULT NULL)
RETURNS boolean
AS 'MODULE_PATHNAME', 'redis_try_semaphore'
LANGUAGE C VOLATILE PARALLEL UNSAFE;
COMMENT ON FUNCTION redis_try_semaphore(text, integer, interval) IS
'take one of permits places of a Redis semaphore for the transaction if one is free and nobody waits';

CREATE FUNCTION redis_wait_locks(keys text[], ttl interval DEFAULT NULL, timeout interval DEFAULT NULL)
RETURNS bigint[]
AS 'MODULE_PATHNAME', 'redis_wait_locks'
LANGUAGE C VOLATILE PARALLEL UNSAFE;
COMMENT ON FUNCTION redis_wait_locks(text[], interval, interval) IS
'wait for every key exclusive, taken in one canonical order, or none; returns the tokens in the order of keys';
