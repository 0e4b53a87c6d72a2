/* redislock--1.0--1.1.sql: what version 1.1 adds to 1.0. */

\echo Use "ALTER EXTENSION redislock UPDATE TO '1.1'" to load this file. \quit

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
