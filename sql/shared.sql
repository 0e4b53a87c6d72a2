-- Shared locks, semaphores and several keys at once (version 1.2), in one session; PostgreSQL's own
-- advisory_lock regression test, adapted to redis locks (transaction scope; session scope needs the
-- keeper and is in test/t/014_shared_and_deadlocks.pl).
SET client_min_messages = warning;
CREATE EXTENSION IF NOT EXISTS redislock;
RESET client_min_messages;
\set VERBOSITY terse

-- transaction-level locks, exclusive and shared, re-entrant, released at commit
BEGIN;
SELECT redis_wait_lock('adv:1') > 0 AS x1, redis_wait_lock_shared('adv:2') > 0 AS s2,
       redis_wait_lock('adv:1') > 0 AS x1_again, redis_wait_lock_shared('adv:2') > 0 AS s2_again;
SELECT key, hold_count, mode FROM redis_locks ORDER BY key, mode;
-- an exclusive unlock does not release a shared hold, nor the reverse
SELECT redis_unlock('adv:2'), redis_unlock_shared('adv:1');
SELECT redis_unlock('adv:1'), redis_unlock_shared('adv:2');
SELECT key, hold_count, mode FROM redis_locks ORDER BY key, mode;
COMMIT;
SELECT count(*) FROM redis_locks;
SELECT held FROM redis_lock_info('adv:1');
SELECT held FROM redis_lock_info('adv:2');

-- rollback releases both modes too
BEGIN;
SELECT redis_try_lock_shared('adv:3'), redis_try_lock('adv:3');
SELECT holders FROM redis_lock_info('adv:3');
ROLLBACK;
SELECT held, holders FROM redis_lock_info('adv:3');

-- a backend's own shared hold does not block its exclusive request, and the two are two locks
BEGIN;
SELECT redis_wait_lock_shared('adv:own') AS s \gset
SELECT redis_wait_lock('adv:own', NULL, '1 s') > :s AS exclusive_token_greater;
SELECT redis_fencing_token('adv:own') > :s AS fencing_token_is_the_exclusive_one;
SELECT mode FROM redis_locks WHERE key = 'adv:own' ORDER BY mode;
SELECT redis_unlock_all();
COMMIT;

-- redis_unlock_all releases every mode
BEGIN;
SELECT redis_try_lock_shared('adv:a'), redis_try_lock('adv:b'), redis_try_semaphore('adv:c', 2);
SELECT redis_unlock_all();
SELECT count(*) FROM redis_locks;
COMMIT;

-- semaphores
BEGIN;
SELECT redis_wait_semaphore('sem:p', 2) > 0 AS first_permit;
SELECT redis_try_semaphore('sem:p', 2) AS reentrant;
SELECT holders FROM redis_lock_info('sem:p');
SELECT key, hold_count, mode FROM redis_locks;
-- other permits, or the key as a lock: 22023 naming both
SAVEPOINT p;
SELECT redis_try_semaphore('sem:p', 3);
ROLLBACK TO p;
SELECT redis_try_lock('sem:p');
ROLLBACK TO p;
SELECT redis_wait_lock_shared('sem:p');
ROLLBACK TO p;
SELECT redis_unlock('sem:p') AS unlock_releases_a_permit;
SELECT count(*) FROM redis_locks;
COMMIT;
-- a lock in use cannot be a semaphore
BEGIN;
SELECT redis_wait_lock('sem:lock') > 0;
SAVEPOINT p;
SELECT redis_try_semaphore('sem:lock', 1);
ROLLBACK TO p;
COMMIT;
-- a free key can change kind
SELECT redis_try_semaphore('sem:lock', 1);
SELECT redis_try_lock('sem:p');
SELECT redis_try_semaphore('sem:p', 1);
-- bad permits
SELECT redis_try_semaphore('sem:x', 0);
SELECT redis_wait_semaphore('sem:x', NULL);

-- several keys at once: tokens in the order given, duplicates once, one hold each
BEGIN;
SELECT array_length(redis_wait_locks(ARRAY['m:b', 'm:a', 'm:b', 'm:c']), 1) AS n;
SELECT (t[1] = t[3]) AS dup_same_token, (t[2] < t[1]) AS a_taken_first
  FROM (SELECT ARRAY[redis_fencing_token('m:b'), redis_fencing_token('m:a'), redis_fencing_token('m:b')] AS t) s;
SELECT key, hold_count FROM redis_locks ORDER BY key;
COMMIT;
SELECT count(*) FROM redis_locks;
SELECT redis_wait_locks(ARRAY[]::text[]);
SELECT redis_wait_locks(NULL);
SELECT redis_wait_locks(ARRAY['ok', NULL]);
SELECT redis_wait_locks(ARRAY['ok', '']);
SELECT redis_wait_locks(ARRAY[['a'], ['b']]);
