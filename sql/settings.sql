-- Settings: defaults, ranges, who may change them, and a Redis that cannot be reached.
-- creating the extension loads the library, so the settings exist in this session
SET client_min_messages = warning;
CREATE EXTENSION IF NOT EXISTS redislock;
RESET client_min_messages;
LOAD 'redislock';
\set VERBOSITY default
SHOW redislock.host;
SHOW redislock.key_prefix;
SHOW redislock.default_ttl;
SHOW redislock.connect_timeout;
SHOW redislock.command_timeout;
SHOW redislock.database;
SHOW redislock.username;
SELECT name, context, unit FROM pg_settings WHERE name LIKE 'redislock.%' ORDER BY name;

-- values are checked
SET redislock.key_prefix = '';
SET redislock.key_prefix = 'has{brace';
SET redislock.port = 0;
SET redislock.default_ttl = 0;
SET redislock.sslmode = 'prefer';
SET redislock.sentinels = '127.0.0.1';
SET redislock.sentinels = 'host:70000';
SET redislock.sentinels = '::1:26379';
SET redislock.sentinels = '[::1]:26379, 127.0.0.1:26380';
RESET redislock.sentinels;
SET redislock.cluster_nodes = '127.0.0.1';
SET redislock.cluster_nodes = '127.0.0.1:7000,, [::1]:7001';
SHOW redislock.cluster_nodes;
-- Cluster and Sentinel together: refused at the first lock call, naming both
SET redislock.sentinels = '127.0.0.1:26379';
\set VERBOSITY sqlstate
SELECT redis_try_lock('both');
\set VERBOSITY default
SELECT redis_try_lock('both');
RESET redislock.sentinels;
RESET redislock.cluster_nodes;
SET redislock.sentinel_master = '';
SET redislock.wait_replicas = -1;
SET redislock.wait_replicas_timeout = 0;
SHOW redislock.sslmode;
SHOW redislock.sentinel_master;
SHOW redislock.wait_replicas;
SHOW redislock.wait_replicas_timeout;

-- a separate key namespace; a lock keeps the prefix it was taken under, even when the prefix changes
BEGIN;
SELECT redis_wait_lock('set:k') > 0;
SET LOCAL redislock.key_prefix = 'other:';
SELECT held FROM redis_lock_info('set:k');
RESET redislock.key_prefix;
SELECT held FROM redis_lock_info('set:k');
SET LOCAL redislock.key_prefix = 'other:';
-- the same key name under another prefix while the first is held: refused, not taken as re-entry
SELECT redis_wait_lock('set:k') > 0;
COMMIT;
SELECT held FROM redis_lock_info('set:k');

-- a Redis that cannot be reached: class 08, naming host and port; then the next call reconnects
SET redislock.port = 1;
SELECT redis_try_lock('set:down');
\set VERBOSITY sqlstate
SELECT redis_try_lock('set:down');
\set VERBOSITY default
RESET redislock.port;
SELECT redis_try_lock('set:down');

-- timeouts are bounded (1 hour), so that no sum of them overflows
SET redislock.command_timeout = '2h';
SET redislock.connect_timeout = '2h';
SET redislock.command_timeout = '1h';
RESET redislock.command_timeout;

-- an unknown setting under the reserved prefix
SET redislock.no_such_setting = 1;

-- a non-superuser may not change where we connect nor read the password
CREATE ROLE redislock_user;
SET ROLE redislock_user;
SET redislock.host = 'elsewhere';
SET redislock.port = 6390;
SET redislock.key_prefix = 'mine:';
SET redislock.password = 'guess';
SHOW redislock.password;
SET redislock.sslmode = 'disable';
SET redislock.sentinels = '127.0.0.1:26379';
SET redislock.sentinel_password = 'guess';
SHOW redislock.sentinel_password;
SET redislock.cluster_nodes = '127.0.0.1:7000';
SET redislock.wait_replicas = 0;
SELECT count(*) FROM pg_settings WHERE name IN ('redislock.password', 'redislock.sentinel_password');
RESET ROLE;
DROP ROLE redislock_user;
