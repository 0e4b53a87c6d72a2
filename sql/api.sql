-- The SQL API within one session: locking, re-entrancy, tokens, views, release points.
CREATE EXTENSION redislock;
\set VERBOSITY terse

-- an uncontended lock in its own transaction, released at its end
SELECT redis_wait_lock('api:a') > 0 AS got_token;
SELECT held FROM redis_lock_info('api:a');

-- re-entrant: same token, hold_count grows, each hold needs its own unlock
BEGIN;
SELECT redis_wait_lock('api:a', '10 s') AS t1 \gset
SELECT redis_wait_lock('api:a') = :t1 AS same_token;
SELECT redis_try_lock('api:a') AS try_again;
SELECT key, hold_count, fencing_token = :t1 AS token_ok,
       expires_at - acquired_at BETWEEN '9 s' AND '10 s' AS lease_ok
  FROM redis_locks;
SELECT redis_fencing_token('api:a') = :t1 AS fencing_token_ok;
SELECT held, holder LIKE '%:' || pg_backend_pid() || ':%' AS holder_names_pid,
       fencing_token = :t1 AS token_ok, ttl > '9 s' AS ttl_ok, waiters
  FROM redis_lock_info('api:a');
SELECT redis_unlock('api:a'), redis_unlock('api:a');
SELECT held FROM redis_lock_info('api:a');
SELECT redis_unlock('api:a');
SELECT count(*) FROM redis_locks;
SELECT held FROM redis_lock_info('api:a');
COMMIT;

-- fencing tokens grow with every acquisition
SELECT redis_wait_lock('api:f') AS f1 \gset
SELECT redis_wait_lock('api:f') AS f2 \gset
SELECT redis_wait_lock('api:other') AS f3 \gset
SELECT :f2 > :f1 AS second_greater, :f3 > :f2 AS other_key_greater;

-- not held: NULL token, WARNING and false from unlock
SELECT redis_fencing_token('api:nothing') IS NULL AS no_token;
SELECT redis_unlock('api:nothing');

-- redis_unlock_all counts keys, not holds
BEGIN;
SELECT redis_wait_lock('api:u1') > 0, redis_wait_lock('api:u1') > 0, redis_try_lock('api:u2');
SELECT redis_unlock_all();
SELECT count(*) FROM redis_locks;
SELECT redis_unlock_all();
COMMIT;

-- released at ROLLBACK
BEGIN;
SELECT redis_wait_lock('api:r') > 0;
ROLLBACK;
SELECT held FROM redis_lock_info('api:r');

-- ROLLBACK TO SAVEPOINT releases what the subtransaction took, keeps what came before
BEGIN;
SELECT redis_wait_lock('api:outer') > 0;
SAVEPOINT s1;
SELECT redis_wait_lock('api:inner') > 0;
SELECT redis_wait_lock('api:outer') > 0;
SELECT key, hold_count FROM redis_locks ORDER BY key;
ROLLBACK TO SAVEPOINT s1;
SELECT key, hold_count FROM redis_locks ORDER BY key;
SELECT held FROM redis_lock_info('api:inner');
-- RELEASE SAVEPOINT hands the subtransaction's locks to the parent
SAVEPOINT s2;
SELECT redis_wait_lock('api:kept') > 0;
RELEASE SAVEPOINT s2;
SAVEPOINT s3;
ROLLBACK TO SAVEPOINT s3;
SELECT key, hold_count FROM redis_locks ORDER BY key;
COMMIT;
SELECT count(*) FROM redis_locks;
SELECT held FROM redis_lock_info('api:kept');

-- a failed PL/pgSQL exception block releases the locks taken inside it
BEGIN;
DO $$
BEGIN
  BEGIN
    PERFORM redis_wait_lock('api:plpgsql');
    RAISE EXCEPTION 'fail inside the block';
  EXCEPTION WHEN raise_exception THEN
    RAISE NOTICE 'caught; still held: %', (SELECT count(*) FROM redis_locks);
  END;
END $$;
SELECT held FROM redis_lock_info('api:plpgsql');
COMMIT;

-- PREPARE TRANSACTION is refused while a lock is held, and the abort releases it
BEGIN;
SELECT redis_wait_lock('api:prepared') > 0;
PREPARE TRANSACTION 'redislock_api';
SELECT held FROM redis_lock_info('api:prepared');
SELECT count(*) FROM pg_prepared_xacts;

-- try_lock on a free key, then a key held by another backend is tested in the isolation suite
SELECT redis_try_lock('api:try', '5 s');
