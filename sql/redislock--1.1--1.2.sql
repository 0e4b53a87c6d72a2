/* redislock 1.1 -> 1.2: shared locks, semaphores, several keys at once */
\echo Use "ALTER EXTENSION redislock UPDATE TO '1.2'" to load this file. \quit

-- redis_locks gains a mode column, redis_lock_info a holders column
DROP VIEW redis_locks;
DROP FUNCTION redis_locks();
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

DROP FUNCTION redis_lock_info(text);
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
