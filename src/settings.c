/*
 * settings.c
 *		The redislock.* settings.
 *
 * Settings that choose where a backend connects, with which credentials, and under which key prefix are
 * PGC_SUSET: only a superuser may point the server at another Redis or into another lock namespace. The
 * passwords are also GUC_SUPERUSER_ONLY, so they are never shown to anyone else. Changing a connection
 * setting (where, credentials, TLS, Sentinel) makes the next Redis call reconnect.
 */
#include "redislock.h"

#include <errno.h>
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
int			redislock_sslmode = REDIS_SSL_DISABLE;
char	   *redislock_sslrootcert = NULL;
char	   *redislock_sslcert = NULL;
char	   *redislock_sslkey = NULL;
char	   *redislock_sentinels = NULL;
char	   *redislock_cluster_nodes = NULL;
char	   *redislock_sentinel_master = NULL;
char	   *redislock_sentinel_username = NULL;
char	   *redislock_sentinel_password = NULL;
int			redislock_wait_replicas = 0;
int			redislock_wait_replicas_timeout_ms = 500;
int			redislock_deadlock_timeout_ms = 1000;

static const struct config_enum_entry sslmode_options[] = {
	{"disable", REDIS_SSL_DISABLE, false},
	{"require", REDIS_SSL_REQUIRE, false},
	{"verify-ca", REDIS_SSL_VERIFY_CA, false},
	{"verify-full", REDIS_SSL_VERIFY_FULL, false},
	{NULL, 0, false}
};

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
 * Parse a list setting (name) of "host:port, host:port, [v6 address]:port" into out[] (at most max of
 * what, e.g. "Sentinels"). Returns the count, or -1 with problem saying what is wrong.
 */
int
redislock_parse_addresses(const char *name, const char *what, const char *list, RedisAddress *out,
						  int max, char *problem, size_t len)
{
	int			n = 0;
	const char *p = list;

	while (*p != '\0')
	{
		const char *start,
				   *end,
				   *colon;
		char		item[300];
		size_t		item_len;
		char	   *port_end;
		long		port;

		while (*p == ' ' || *p == '\t' || *p == ',')
			p++;
		if (*p == '\0')
			break;
		start = p;
		while (*p != '\0' && *p != ',')
			p++;
		end = p;
		while (end > start && (end[-1] == ' ' || end[-1] == '\t'))
			end--;
		item_len = end - start;
		if (item_len >= sizeof(item))
		{
			snprintf(problem, len, "an entry of %s is too long.", name);
			return -1;
		}
		memcpy(item, start, item_len);
		item[item_len] = '\0';
		colon = strrchr(item, ':');
		if (colon == NULL || colon == item || colon[1] == '\0')
		{
			snprintf(problem, len, "\"%s\" is not host:port.", item);
			return -1;
		}
		errno = 0;
		port = strtol(colon + 1, &port_end, 10);
		if (errno != 0 || *port_end != '\0' || port < 1 || port > 65535)
		{
			snprintf(problem, len, "\"%s\" has no valid port.", item);
			return -1;
		}
		if (n == max)
		{
			snprintf(problem, len, "%s names more than %d %s.", name, max, what);
			return -1;
		}
		item[colon - item] = '\0';
		/* an IPv6 address is written in brackets */
		if (item[0] == '[' && item[strlen(item) - 1] == ']')
		{
			item[strlen(item) - 1] = '\0';
			snprintf(out[n].host, sizeof(out[n].host), "%s", item + 1);
		}
		else
			snprintf(out[n].host, sizeof(out[n].host), "%s", item);
		if (out[n].host[0] == '\0' || strchr(out[n].host, '[') || strchr(out[n].host, ']') ||
			(strchr(out[n].host, ':') != NULL && item[0] != '['))
		{
			snprintf(problem, len, "\"%s\" is not host:port (write an IPv6 address in brackets).",
					 start);
			return -1;
		}
		out[n].port = (int) port;
		n++;
	}
	return n;
}

static bool
check_sentinels(char **newval, void **extra, GucSource source)
{
	char		problem[256];

	if (*newval != NULL && !sentinel_check_list(*newval, problem, sizeof(problem)))
	{
		GUC_check_errdetail("%s", problem);
		return false;
	}
	return true;
}

static bool
check_cluster_nodes(char **newval, void **extra, GucSource source)
{
	char		problem[256];

	if (*newval != NULL && !cluster_check_list(*newval, problem, sizeof(problem)))
	{
		GUC_check_errdetail("%s", problem);
		return false;
	}
	return true;
}

static bool
check_sentinel_master(char **newval, void **extra, GucSource source)
{
	if (*newval == NULL || (*newval)[0] == '\0')
	{
		GUC_check_errdetail("redislock.sentinel_master must name the master as the Sentinels know it.");
		return false;
	}
	return true;
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

	/* TLS, named as libpq names its own settings */
	DefineCustomEnumVariable("redislock.sslmode",
							 "Whether connections to Redis use TLS, and how the server's certificate is checked.",
							 "disable, require (encrypt, no certificate check), verify-ca (the certificate chains to redislock.sslrootcert), verify-full (and names the host).",
							 &redislock_sslmode,
							 REDIS_SSL_DISABLE, sslmode_options,
							 PGC_SUSET, 0,
							 NULL, mark_connection_int_changed, NULL);
	DefineCustomStringVariable("redislock.sslrootcert",
							   "File of the certificate authorities that verify-ca and verify-full trust; empty for the system's.",
							   NULL,
							   &redislock_sslrootcert,
							   "",
							   PGC_SUSET, 0,
							   NULL, mark_connection_settings_changed, NULL);
	DefineCustomStringVariable("redislock.sslcert",
							   "File of the client certificate, for a Redis with tls-auth-clients; empty for none.",
							   NULL,
							   &redislock_sslcert,
							   "",
							   PGC_SUSET, 0,
							   NULL, mark_connection_settings_changed, NULL);
	DefineCustomStringVariable("redislock.sslkey",
							   "File of the client certificate's private key.",
							   NULL,
							   &redislock_sslkey,
							   "",
							   PGC_SUSET, 0,
							   NULL, mark_connection_settings_changed, NULL);

	/* Sentinel: where the master is, asked anew on every connect */
	DefineCustomStringVariable("redislock.sentinels",
							   "Comma-separated host:port of Redis Sentinels; non-empty, the master comes from them and redislock.host and redislock.port are not used.",
							   NULL,
							   &redislock_sentinels,
							   "",
							   PGC_SUSET, 0,
							   check_sentinels, mark_connection_settings_changed, NULL);
	DefineCustomStringVariable("redislock.sentinel_master",
							   "The master's name in Sentinel.",
							   NULL,
							   &redislock_sentinel_master,
							   "mymaster",
							   PGC_SUSET, 0,
							   check_sentinel_master, mark_connection_settings_changed, NULL);
	DefineCustomStringVariable("redislock.sentinel_username",
							   "Sentinel's ACL user name; empty for the default user.",
							   NULL,
							   &redislock_sentinel_username,
							   "",
							   PGC_SUSET, 0,
							   NULL, mark_connection_settings_changed, NULL);
	DefineCustomStringVariable("redislock.sentinel_password",
							   "Sentinel's password; empty for none.",
							   NULL,
							   &redislock_sentinel_password,
							   "",
							   PGC_SUSET, GUC_SUPERUSER_ONLY | GUC_NO_SHOW_ALL,
							   NULL, mark_connection_settings_changed, NULL);

	/* Redis Cluster: the seeds that the slot map is first asked of */
	DefineCustomStringVariable("redislock.cluster_nodes",
							   "Comma-separated host:port of Redis Cluster nodes to learn the cluster from; non-empty, locks are routed by slot and redislock.host and redislock.port are not used.",
							   NULL,
							   &redislock_cluster_nodes,
							   "",
							   PGC_SUSET, 0,
							   check_cluster_nodes, mark_connection_settings_changed, NULL);

	/* replica acknowledgement of acquisitions and renewals */
	DefineCustomIntVariable("redislock.wait_replicas",
							"Replicas that must acknowledge an acquisition (with WAIT) before a lock call returns; 0 for none.",
							NULL,
							&redislock_wait_replicas,
							0, 0, 100,
							PGC_SUSET, 0,
							NULL, NULL, NULL);
	DefineCustomIntVariable("redislock.wait_replicas_timeout",
							"How long an acquisition waits for the replicas' acknowledgement.",
							NULL,
							&redislock_wait_replicas_timeout_ms,
							500, 1, REDISLOCK_TIMEOUT_MAX_MS,
							PGC_SUSET, GUC_UNIT_MS,
							NULL, NULL, NULL);

	DefineCustomIntVariable("redislock.deadlock_timeout",
							"How long a wait for a redis lock lasts before it looks for a deadlock; 0 never looks.",
							"As deadlock_timeout for PostgreSQL's own locks: a cycle of waits through this backend fails it with 40P01.",
							&redislock_deadlock_timeout_ms,
							1000, 0, REDISLOCK_TIMEOUT_MAX_MS,
							PGC_SUSET, GUC_UNIT_MS,
							NULL, NULL, NULL);

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
