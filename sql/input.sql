-- Bad input gets clean errors with the right SQLSTATE; odd but valid keys work.
SET client_min_messages = warning;
CREATE EXTENSION IF NOT EXISTS redislock;
RESET client_min_messages;
\set VERBOSITY default
\set SHOW_CONTEXT never

-- NULL key: 22004
SELECT redis_wait_lock(NULL);
SELECT redis_try_lock(NULL);
SELECT redis_unlock(NULL);
SELECT redis_fencing_token(NULL);
SELECT * FROM redis_lock_info(NULL);
-- empty and too long keys: 22023
SELECT redis_wait_lock('');
SELECT redis_try_lock(repeat('k', 1025));
SELECT redis_try_lock(repeat('k', 1024));
-- ttl must be positive, timeout not negative: 22023
SELECT redis_wait_lock('in:k', '0 s');
SELECT redis_wait_lock('in:k', '-1 s');
SELECT redis_try_lock('in:k', '-1 day');
SELECT redis_wait_lock('in:k', '1 s', '-1 ms');
SELECT redis_wait_lock('in:k', '100 years');
-- SQLSTATEs themselves
\set VERBOSITY sqlstate
SELECT redis_wait_lock(NULL);
SELECT redis_wait_lock('');
SELECT redis_wait_lock('in:k', '0 s');
SELECT redis_wait_lock('in:k', NULL, '-1 s');
\set VERBOSITY default
-- a timeout of 0 waits without limit, a sub-millisecond ttl is rounded up (rolled back: a 1 ms lease
-- may well run out before a commit could prove it was kept)
BEGIN;
SELECT redis_wait_lock('in:k', '0.5 ms', '0 s') > 0 AS ok;
ROLLBACK;
SELECT redis_wait_lock('in:k', NULL, NULL) > 0 AS ok;

-- keys are binary-safe arguments: braces, spaces, newlines, quotes, UTF-8, Redis syntax
SELECT k, redis_try_lock(k) AS locked
  FROM unnest(ARRAY['{}', '}x{', 'a b', E'line\nbreak', E'cr\r\nlf', '"quoted"', '''single''',
                    'ключ', '*', '$-1', E'\\', 'EVAL']) AS k;
BEGIN;
SELECT count(*) = 255 AS all_bytes_locked
  FROM generate_series(1, 255) AS b,
       LATERAL (SELECT redis_try_lock(chr(b))) AS t(ok)
 WHERE ok;
SELECT count(*) FROM redis_locks;
COMMIT;
SELECT count(*) FROM redis_locks;
