-- Versions: ALTER EXTENSION redislock UPDATE from 1.0 gives exactly what a fresh install of the
-- newest version gives (objects, signatures, attributes, comments, privileges); and what 1.1 adds.
DROP EXTENSION IF EXISTS redislock;
CREATE EXTENSION redislock VERSION '1.0';
SELECT extversion FROM pg_extension WHERE extname = 'redislock';
ALTER EXTENSION redislock UPDATE;
SELECT extversion FROM pg_extension WHERE extname = 'redislock';

CREATE TEMP VIEW extension_objects AS
SELECT pg_describe_object(d.classid, d.objid, d.objsubid) AS object,
       CASE d.classid
         WHEN 'pg_proc'::regclass THEN
           (SELECT format('(%s) -> %s; %s %s %s %s; acl %s', pg_get_function_arguments(p.oid),
                          pg_get_function_result(p.oid), p.provolatile, p.proparallel, p.proisstrict,
                          p.prosrc, coalesce(p.proacl::text, 'default'))
              FROM pg_proc p WHERE p.oid = d.objid)
         WHEN 'pg_class'::regclass THEN pg_get_viewdef(d.objid)
       END AS definition,
       obj_description(d.objid, d.classid::regclass::text) AS comment
  FROM pg_depend d JOIN pg_extension e ON e.oid = d.refobjid
 WHERE d.refclassid = 'pg_extension'::regclass AND e.extname = 'redislock' AND d.deptype = 'e';
CREATE TEMP TABLE updated AS SELECT * FROM extension_objects;
DROP EXTENSION redislock;
CREATE EXTENSION redislock;
SELECT extversion FROM pg_extension WHERE extname = 'redislock';
SELECT count(*) AS objects FROM extension_objects;
-- no difference either way
(SELECT * FROM updated EXCEPT SELECT * FROM extension_objects)
UNION ALL
(SELECT * FROM extension_objects EXCEPT SELECT * FROM updated);

-- 1.1: redis_extend_lock keeps a lock longer; redis_force_unlock breaks one
\set VERBOSITY terse
BEGIN;
SELECT redis_wait_lock('up:e', '1 s') > 0 AS locked;
SELECT redis_extend_lock('up:e', '60 s') AS extended;
SELECT ttl > '50 s' AS ttl_extended FROM redis_lock_info('up:e');
SELECT expires_at - now() > '50 s' AS expiry_extended FROM redis_locks WHERE key = 'up:e';
SELECT redis_extend_lock('up:none', '1 s') AS not_held;
COMMIT;
SELECT redis_force_unlock('up:free') AS broke_nothing;
BEGIN;
SELECT redis_wait_lock('up:f') AS t1 \gset
SELECT redis_force_unlock('up:f') AS broke_own;
SELECT held FROM redis_lock_info('up:f');
SELECT count(*) FROM redis_locks;
COMMIT;
SELECT redis_wait_lock('up:f') > :t1 AS next_token_greater;
-- redis_force_unlock is not for everyone
CREATE ROLE redislock_plain;
SET ROLE redislock_plain;
SELECT redis_force_unlock('up:f');
RESET ROLE;
DROP ROLE redislock_plain;

-- 1.1 updated to 1.2 equals a fresh 1.2 too; before the update, the library serves 1.1's
-- redis_locks and redis_lock_info (one column fewer each)
CREATE TEMP TABLE fresh AS SELECT * FROM extension_objects;
DROP EXTENSION redislock;
CREATE EXTENSION redislock VERSION '1.1';
BEGIN;
SELECT redis_wait_lock('up:v11') > 0 AS locked;
SELECT key, hold_count FROM redis_locks;
SELECT held, waiters FROM redis_lock_info('up:v11');
COMMIT;
ALTER EXTENSION redislock UPDATE TO '1.2';
SELECT extversion FROM pg_extension WHERE extname = 'redislock';
(SELECT * FROM fresh EXCEPT SELECT * FROM extension_objects)
UNION ALL
(SELECT * FROM extension_objects EXCEPT SELECT * FROM fresh);
DROP EXTENSION redislock;
CREATE EXTENSION redislock;
