/*
 * settings.c
 *		The redislock.* settings.
 *
 * Settings that choose where a backend connects, with which credentials, and under which key prefix are
 * PGC_SUSET: only a superuser may point the server at another Redis or into another lock namespace. The
 * password is also GUC_SUPERUSER_ONLY, so it is never shown to anyone else. Changing a connection
 * setting makes the next Redis call reconnect.
 */
#include "redislock.h"

#include <limits.h>

#include "miscadmin.h"
#include "utils/guc.h"

char	   *redislock_host = NULL;
int			redislock_port = 6379;
char	   *redislock_username = NULL;
char	   *redislock_password = NULL;
int			redislock_database = 0;
int			redislock_connect_timeout_ms = 2000;
int			redislock_command_timeout_ms = 2000;
int			redislock_default_ttl_ms = 30000;
char	   *redislock_key_prefix = NULL;
bool		redislock_synchronous_release = false;
bool		redislock_verify_at_commit = false;
bool		redislock_log_lock_waits = false;

/* Set when a connection setting changes; redis_conn.c reconnects and clears it. */
bool		redislock_connection_settings_changed = false;

static void
mark_connection_settings_changed(const char *newval, void *extra)
{
	redislock_connection_settings_changed = true;
}

static void
mark_connection_int_changed(int newval, void *extra)
{
	redislock_connection_settings_changed = true;
}

/*
 * Braces in the prefix would move the Redis Cluster hash tag, and an empty prefix would let a key that
 * starts with '}' produce an empty one; both would scatter a lock's keys across slots.
 */
static bool
check_key_prefix(char **newval, void **extra, GucSource source)
{
	if (*newval == NULL || (*newval)[0] == '\0')
	{
		GUC_check_errdetail("redislock.key_prefix must not be empty.");
		return false;
	}
	if (strchr(*newval, '{') != NULL || strchr(*newval, '}') != NULL)
	{
		GUC_check_errdetail("redislock.key_prefix must not contain braces.");
		return false;
	}
	if (strlen(*newval) > REDISLOCK_PREFIX_MAX)
	{
		GUC_check_errdetail("redislock.key_prefix must be at most " CppAsString2(REDISLOCK_PREFIX_MAX) " bytes.");
		return false;
	}
	return true;
}

static bool
check_host(char **newval, void **extra, GucSource source)
{
	if (*newval == NULL || (*newval)[0] == '\0')
	{
		GUC_check_errdetail("redislock.host must name a host, an address or a Unix socket path.");
		return false;
	}
	return true;
}

void
redislock_define_settings(void)
{
	DefineCustomStringVariable("redislock.host",
							   "Redis host, address, or Unix socket path (starting with /).",
							   NULL,
							   &redislock_host,
							   "127.0.0.1",
							   PGC_SUSET, 0,
							   check_host, mark_connection_settings_changed, NULL);
	DefineCustomIntVariable("redislock.port",
							"Redis TCP port.",
							NULL,
							&redislock_port,
							6379, 1, 65535,
							PGC_SUSET, 0,
							NULL, mark_connection_int_changed, NULL);
	DefineCustomStringVariable("redislock.username",
							   "Redis ACL user name; empty for the default user.",
							   NULL,
							   &redislock_username,
							   "",
							   PGC_SUSET, 0,
							   NULL, mark_connection_settings_changed, NULL);
	DefineCustomStringVariable("redislock.password",
							   "Redis password; empty for none.",
							   NULL,
							   &redislock_password,
							   "",
							   PGC_SUSET, GUC_SUPERUSER_ONLY | GUC_NO_SHOW_ALL,
							   NULL, mark_connection_settings_changed, NULL);
	DefineCustomIntVariable("redislock.database",
							"Redis logical database number.",
							NULL,
							&redislock_database,
							0, 0, INT_MAX,
							PGC_SUSET, 0,
							NULL, mark_connection_int_changed, NULL);
	DefineCustomIntVariable("redislock.connect_timeout",
							"Time allowed to connect to Redis, including authentication.",
							NULL,
							&redislock_connect_timeout_ms,
							2000, 1, REDISLOCK_TIMEOUT_MAX_MS,
							PGC_SUSET, GUC_UNIT_MS,
							NULL, NULL, NULL);
	DefineCustomIntVariable("redislock.command_timeout",
							"Time allowed for one Redis round trip, beyond any time spent waiting for a lock.",
							NULL,
							&redislock_command_timeout_ms,
							2000, 1, REDISLOCK_TIMEOUT_MAX_MS,
							PGC_SUSET, GUC_UNIT_MS,
							NULL, NULL, NULL);
	DefineCustomIntVariable("redislock.default_ttl",
							"Lease of a lock taken without an explicit ttl.",
							NULL,
							&redislock_default_ttl_ms,
							30000, 1, INT_MAX / 2,
							PGC_SUSET, GUC_UNIT_MS,
							NULL, NULL, NULL);
	DefineCustomStringVariable("redislock.key_prefix",
							   "Prefix of every Redis key redislock creates.",
							   NULL,
							   &redislock_key_prefix,
							   "redislock:",
							   PGC_SUSET, 0,
							   check_key_prefix, NULL, NULL);

	/* a cluster-wide promise: the superuser decides */
	DefineCustomBoolVariable("redislock.verify_at_commit",
							 "Whether every transaction lock is checked in Redis before COMMIT.",
							 "On, a lock removed from Redis by any means (eviction, FLUSHALL, a failover behind a proxy) fails the commit, for one round trip per commit.",
							 &redislock_verify_at_commit,
							 false,
							 PGC_SUSET, 0,
							 NULL, NULL, NULL);

	DefineCustomBoolVariable("redislock.log_lock_waits",
							 "Whether a wait for a redis lock longer than a second is logged, and its end.",
							 "As log_lock_waits does for PostgreSQL's own locks.",
							 &redislock_log_lock_waits,
							 false,
							 PGC_SUSET, 0,
							 NULL, NULL, NULL);

	/* only this session's own latency is at stake: anyone may choose */
	DefineCustomBoolVariable("redislock.synchronous_release",
							 "Whether COMMIT and ROLLBACK wait for Redis to confirm that their locks are released.",
							 "Off, the release is sent at once and its answer read before the session's next Redis command.",
							 &redislock_synchronous_release,
							 false,
							 PGC_USERSET, 0,
							 NULL, NULL, NULL);

	/* sizes shared memory: exists only when preloaded */
	if (process_shared_preload_libraries_in_progress)
		DefineCustomIntVariable("redislock.max_locks",
								"Locks the lease keeper can track on this server.",
								NULL,
								&redislock_max_locks,
								4096, 16, 1000000,
								PGC_POSTMASTER, 0,
								NULL, NULL, NULL);

	MarkGUCPrefixReserved("redislock");
}
