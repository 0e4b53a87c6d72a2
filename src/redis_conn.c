/*
 * redis_conn.c
 *		Redis connections and their interruptible, time-bounded I/O.
 *
 * A RedisServer is one Redis endpoint with this backend's connection to it, made lazily with a
 * non-blocking hiredis context. Every wait for the socket is a wait on the latch too (a WaitEventSet
 * kept with the connection, so a round trip costs no epoll set-up), so that cancel requests,
 * statement_timeout and postmaster death reach a backend that waits on Redis, and every round trip has
 * a deadline. Callers describe commands as binary-safe argument vectors and get hiredis
 * replies back.
 *
 * A connection whose round trip did not finish (timeout, I/O error, or an interrupt that threw out of
 * the wait) is closed: its stream may still carry a reply we would misread. The next call reconnects.
 * Replies read so far live in the server's inbox, not on the caller's stack, so an ERROR thrown out of
 * the wait cannot leak them; the inbox is emptied when the connection is closed or reused.
 *
 * The bytes move through transport.c (a plain or TLS socket); hiredis reads the protocol. A server is
 * one of two kinds: the data server that holds the locks (redislock.host/port, or the master that the
 * Sentinels name: sentinel.c finds it each time we connect) and the Sentinel that sentinel.c asks. In
 * Redis Cluster every master is a data server of its own (a node, made on first use at the address
 * cluster.c names, and kept for the backend's life); what one connection owes stays with it.
 */
#include "redislock.h"

#include <errno.h>

#include "miscadmin.h"
#include "pgstat.h"
#include "storage/fd.h"
#include "storage/ipc.h"
#include "storage/latch.h"
#include "utils/memutils.h"
#include "utils/timestamp.h"

struct RedisServer
{
	RedisServerKind kind;
	char		host[MAXPGPATH];	/* where it is now: a host, an address or a Unix socket path */
	int			port;
	char		name[MAXPGPATH + 16];	/* "host:port" or socket path, for messages */
	bool		connected;		/* sock is open (connected, or connecting while in flight) */
	bool		broken;			/* an I/O error or EOF met on it: it cannot be kept */
	bool		not_master;		/* it answered READONLY: replace it (Sentinel names the new master) */
	bool		named_not_master;	/* the last connect failed: ROLE said it is not a master */
	bool		cluster_node;	/* a Redis Cluster node: its address is fixed */
	uint32		known_scripts;	/* scripts.c: the scripts it answered on this connection */
	bool		inbox_unanswered;	/* the inbox holds some of what redis_send_unanswered is owed */
	Transport	sock;
	redisReader *reader;		/* hiredis's protocol reader, one per connection */
	char	   *out;			/* commands not written yet: out[out_sent..out_len) (malloc'd) */
	size_t		out_len;
	size_t		out_sent;
	size_t		out_cap;
	bool		in_flight;		/* a round trip started and did not finish */
	int			in_flight_replies;	/* how many replies that round trip awaits; -1 while connecting */
	bool		in_flight_blocking; /* it was a blocking command (BLPOP) */
	redisReply **inbox;			/* replies read in the current round trip */
	int			inbox_len;
	int			inbox_cap;
	TimestampTz timed_out_at;	/* when a round trip last ran out of time, or 0 */
	uint64		connections;	/* connections made so far: changes when we reconnect */
	WaitEventSet *waits;		/* latch, postmaster death and the socket */
	int			socket_event_pos;
	int			socket_events;	/* WL_SOCKET_READABLE or WL_SOCKET_WRITEABLE */
	int			unanswered;		/* replies owed to redis_send_unanswered, not read yet */
};

static RedisServer primary_server = {.kind = SERVER_DATA};
static RedisServer sentinel_server = {.kind = SERVER_SENTINEL};

/* Redis Cluster nodes met so far (never freed: a backend meets few), and what each keeps room for */
static RedisServer **cluster_nodes = NULL;
static int	ncluster_nodes = 0;
static int	reserved_replies = 0;
static size_t reserved_output = 0;

static void
server_set_name(RedisServer *server)
{
	if (server->host[0] == '/')
		snprintf(server->name, sizeof(server->name), "%s", server->host);
	else if (strchr(server->host, ':') != NULL)
		snprintf(server->name, sizeof(server->name), "[%s]:%d", server->host, server->port);
	else
		snprintf(server->name, sizeof(server->name), "%s:%d", server->host, server->port);
}

/* The data server's address from the settings, unless Sentinel names it when we connect. */
static void
server_set_configured_address(RedisServer *server)
{
	if (server->kind != SERVER_DATA || server->cluster_node || redislock_sentinels[0] != '\0')
		return;
	snprintf(server->host, sizeof(server->host), "%s", redislock_host);
	server->port = redislock_port;
	server_set_name(server);
}

/* How a server is named in messages: "host:port", or the socket path. */
const char *
redis_server_name(RedisServer *server)
{
	return server->name;
}

/*
 * The primary server's connection as it is, even when the connection settings changed since it was
 * made: only to read what it still owes (redis_read_unanswered) before it is replaced.
 */
RedisServer *
redis_primary_server_as_is(void)
{
	return &primary_server;
}

/*
 * Connection settings that changed take effect: every data connection is closed (the next call
 * connects as they say now), and Cluster mode forgets its map.
 */
void
redis_apply_settings(void)
{
	if (!redislock_connection_settings_changed)
		return;
	redis_disconnect(&primary_server);
	for (int i = 0; i < ncluster_nodes; i++)
		redis_disconnect(cluster_nodes[i]);
	cluster_forget();
	transport_settings_changed();
	redislock_connection_settings_changed = false;
}

RedisServer *
redis_primary_server(void)
{
	redis_apply_settings();
	if (!primary_server.connected)
		server_set_configured_address(&primary_server);
	return &primary_server;
}

/*
 * The connection to one Sentinel, for sentinel.c: the Sentinel at host:port, disconnected from any
 * other first.
 */
RedisServer *
redis_sentinel_server(const char *host, int port)
{
	if (sentinel_server.connected && (strcmp(sentinel_server.host, host) != 0 || sentinel_server.port != port))
		redis_disconnect(&sentinel_server);
	snprintf(sentinel_server.host, sizeof(sentinel_server.host), "%s", host);
	sentinel_server.port = port;
	server_set_name(&sentinel_server);
	return &sentinel_server;
}

static void inbox_reserve(RedisServer *server, int n);
static bool output_reserve(RedisServer *server, size_t len);

/*
 * The Redis Cluster node at host:port, made (not connected) when first named. NULL when out of memory:
 * this may run in a commit callback (a redirection), where it must not throw.
 */
RedisServer *
redis_node_server(const char *host, int port)
{
	RedisServer *server;

	for (int i = 0; i < ncluster_nodes; i++)
	{
		if (redis_server_is_at(cluster_nodes[i], host, port))
			return cluster_nodes[i];
	}
	if (ncluster_nodes % 16 == 0)
	{
		RedisServer **grown = MemoryContextAllocExtended(TopMemoryContext,
														 (ncluster_nodes + 16) * sizeof(RedisServer *),
														 MCXT_ALLOC_NO_OOM);

		if (grown == NULL)
			return NULL;
		if (ncluster_nodes > 0)
		{
			memcpy(grown, cluster_nodes, ncluster_nodes * sizeof(RedisServer *));
			pfree(cluster_nodes);
		}
		cluster_nodes = grown;
	}
	server = MemoryContextAllocExtended(TopMemoryContext, sizeof(RedisServer),
										MCXT_ALLOC_NO_OOM | MCXT_ALLOC_ZERO);
	if (server == NULL)
		return NULL;
	server->kind = SERVER_DATA;
	server->cluster_node = true;
	snprintf(server->host, sizeof(server->host), "%s", host);
	server->port = port;
	server_set_name(server);
	if (reserved_replies > 0)
	{
		server->inbox = MemoryContextAllocExtended(TopMemoryContext, reserved_replies * sizeof(redisReply *),
												   MCXT_ALLOC_NO_OOM | MCXT_ALLOC_ZERO);
		server->inbox_cap = server->inbox ? reserved_replies : 0;
	}
	(void) output_reserve(server, reserved_output);
	cluster_nodes[ncluster_nodes++] = server;
	return server;
}

/* Whether the server is at host:port. */
bool
redis_server_is_at(RedisServer *server, const char *host, int port)
{
	return server->port == port && strcmp(server->host, host) == 0;
}

/* The host (or address, or socket path) the server is at. */
const char *
redis_server_host(RedisServer *server)
{
	return server->host;
}

/* Whether the server has a connection that is up and idle. */
bool
redis_server_usable(RedisServer *server)
{
	return server->connected && !server->in_flight && !server->broken && server->unanswered == 0;
}

/* scripts.c's record of the scripts this server answered on its current connection. */
uint32 *
redis_known_scripts(RedisServer *server)
{
	return &server->known_scripts;
}

/*
 * Room for n replies and bytes of output on every data server, now and on nodes met later, made ahead
 * of commit and abort callbacks that must not allocate (release.c). False when out of memory.
 */
bool
redis_reserve_everywhere(int n, size_t bytes)
{
	bool		ok = true;

	reserved_replies = Max(reserved_replies, n);
	reserved_output = Max(reserved_output, bytes);
	inbox_reserve(&primary_server, n);
	ok &= output_reserve(&primary_server, bytes);
	for (int i = 0; i < ncluster_nodes; i++)
	{
		inbox_reserve(cluster_nodes[i], n);
		ok &= output_reserve(cluster_nodes[i], bytes);
	}
	return ok;
}

/* Close every data connection (backend exit). */
void
redis_disconnect_all(void)
{
	redis_disconnect(&primary_server);
	for (int i = 0; i < ncluster_nodes; i++)
		redis_disconnect(cluster_nodes[i]);
}

static void
inbox_clear(RedisServer *server)
{
	redis_free_replies(server->inbox_len, server->inbox);
	server->inbox_len = 0;
}

/*
 * No reply redislock expects is an array of more than a handful of elements. hiredis allocates an
 * array as soon as it reads its length, and frees it element by element: a Redis (or something
 * pretending to be one) that announces two billion elements would cost gigabytes and a long loop in
 * redisFree. The reader of every connection refuses such an array at once (a protocol error).
 */
#define REDIS_MAX_REPLY_ELEMENTS 16384	/* CLUSTER SLOTS: a range each */

static redisReplyObjectFunctions guarded_functions;
static void *(*hiredis_create_array) (const redisReadTask *, int) = NULL;
static int	refused_elements = 0;	/* the length of the last array refused, for the message */

static void *
guarded_create_array(const redisReadTask *task, int elements)
{
	if (elements > REDIS_MAX_REPLY_ELEMENTS)
	{
		refused_elements = elements;
		return NULL;			/* hiredis makes this a reader error */
	}
	return hiredis_create_array(task, elements);
}

static void
guard_reader(redisReader *reader)
{
	if (hiredis_create_array == NULL)
	{
		guarded_functions = *reader->fn;
		hiredis_create_array = guarded_functions.createArray;
		guarded_functions.createArray = guarded_create_array;
	}
	reader->fn = &guarded_functions;
}

/* Close the connection, if any, and drop whatever it was in the middle of. */
void
redis_disconnect(RedisServer *server)
{
	inbox_clear(server);
	if (server->waits != NULL)
	{
		FreeWaitEventSet(server->waits);
		server->waits = NULL;
	}
	if (server->reader != NULL)
	{
		redisReaderFree(server->reader);
		server->reader = NULL;
	}
	if (server->connected)
	{
		transport_close(&server->sock);
		server->connected = false;
		ReleaseExternalFD();
	}
	server->out_len = server->out_sent = 0;
	server->broken = false;
	server->not_master = false;
	server->known_scripts = 0;
	server->inbox_unanswered = false;
	server->in_flight = false;
	server->timed_out_at = 0;
	server->unanswered = 0;
}

void
redis_free_replies(int n, redisReply **replies)
{
	for (int i = 0; i < n; i++)
	{
		if (replies[i] != NULL)
			freeReplyObject(replies[i]);
		replies[i] = NULL;
	}
}

/* err says fmt..., with hint (NULL: none); no detail. */
void
redis_error_set(RedisError *err, int sqlstate, const char *hint, const char *fmt,...)
{
	va_list		args;

	err->sqlstate = sqlstate;
	va_start(args, fmt);
	vsnprintf(err->message, sizeof(err->message), fmt, args);
	va_end(args);
	snprintf(err->hint, sizeof(err->hint), "%s", hint ? hint : "");
	err->detail[0] = '\0';
	err->timed_out = false;
	err->unreachable = false;
}

#define set_error redis_error_set

static long
ms_until(TimestampTz deadline)
{
	TimestampTz now = GetCurrentTimestamp();

	if (now >= deadline)
		return 0;
	return (long) ((deadline - now + 999) / 1000);
}

/*
 * The wait event a backend waiting on Redis shows in pg_stat_activity: on PostgreSQL 17 and later a
 * named one, RedisLock (type Extension); before 17 extensions have only Extension itself.
 */
uint32
redis_wait_event(void)
{
#if PG_VERSION_NUM >= 170000
	static uint32 named = 0;

	if (named == 0)
		named = WaitEventExtensionNew("RedisLock");
	return named;
#else
	return PG_WAIT_EXTENSION;
#endif
}

/* The wait set of a new connection: latch, postmaster death, and its socket. */
static void
create_wait_set(RedisServer *server)
{
	server->waits = CreateWaitEventSet(TopMemoryContext, 3);
	AddWaitEventToSet(server->waits, WL_LATCH_SET, PGINVALID_SOCKET, MyLatch, NULL);
	AddWaitEventToSet(server->waits, WL_POSTMASTER_DEATH, PGINVALID_SOCKET, NULL, NULL);
	server->socket_events = WL_SOCKET_WRITEABLE;
	server->socket_event_pos = AddWaitEventToSet(server->waits, server->socket_events,
												 server->sock.fd, NULL, NULL);
}

/*
 * Wait until the socket is ready for events, or the deadline passes (false). Interrupts are served while
 * waiting when interruptible; an interrupt that throws leaves server->in_flight set, so the connection
 * is closed before its next use. Outside interruptible calls we may be in a commit or abort callback or
 * already exiting, where exiting again on postmaster death is no option: there it just ends the wait.
 */
static bool
wait_for_socket(RedisServer *server, int events, TimestampTz deadline, bool interruptible)
{
	if (server->socket_events != events)
	{
		ModifyWaitEvent(server->waits, server->socket_event_pos, events, NULL);
		server->socket_events = events;
	}
	for (;;)
	{
		long		timeout = ms_until(deadline);
		WaitEvent	event;

		if (timeout <= 0)
			return false;
		if (WaitEventSetWait(server->waits, timeout, &event, 1, redis_wait_event()) == 0)
			continue;			/* timed out: the loop checks the deadline */
		if (event.events & WL_POSTMASTER_DEATH)
		{
			if (interruptible)
				proc_exit(1);
			return false;
		}
		if (event.events & WL_LATCH_SET)
		{
			ResetLatch(MyLatch);
			if (interruptible)
				CHECK_FOR_INTERRUPTS();
		}
		if (event.events & events)
			return true;
	}
}

/* The connection broke (st: EOF or an error, why says which): it cannot be kept. Returns false. */
static bool
connection_broke(RedisServer *server, TransportStatus st, const char *why, RedisError *err)
{
	server->broken = true;
	set_error(err, ERRCODE_CONNECTION_FAILURE, NULL,
			  "lost connection to Redis at %s: %s", server->name,
			  st == TRANSPORT_EOF ? "server closed the connection" : why);
	err->connection_lost = true;
	return false;
}

/* Send what is buffered for the server, within the deadline. */
static bool
flush_output(RedisServer *server, TimestampTz deadline, bool interruptible, RedisError *err)
{
	while (server->out_sent < server->out_len)
	{
		TransportStatus st;
		char		why[256];
		ssize_t		n = transport_write(&server->sock, server->out + server->out_sent,
										server->out_len - server->out_sent, &st, why, sizeof(why));

		if (n > 0)
		{
			server->out_sent += n;
			continue;
		}
		if (st == TRANSPORT_ERROR || st == TRANSPORT_EOF)
			return connection_broke(server, st, why, err);
		if (!wait_for_socket(server, st == TRANSPORT_WANT_READ ? WL_SOCKET_READABLE : WL_SOCKET_WRITEABLE,
							 deadline, interruptible))
		{
			set_error(err, ERRCODE_CONNECTION_FAILURE,
					  "Check that Redis is running and not overloaded, or raise redislock.command_timeout.",
					  "Redis at %s did not accept a command in time", server->name);
			err->timed_out = true;
			return false;
		}
	}
	server->out_len = server->out_sent = 0;
	return true;
}

/*
 * Read what the socket has into the protocol reader. False with err set when the connection broke,
 * or when the deadline passed with nothing to read.
 */
static bool
feed_reader(RedisServer *server, TimestampTz deadline, int timeout_ms, bool interruptible, RedisError *err)
{
	int			events = WL_SOCKET_READABLE;

	for (;;)
	{
		char		buf[16 * 1024];
		char		why[256];
		TransportStatus st;
		ssize_t		n;

		/* under TLS, bytes already taken off the socket may wait inside OpenSSL */
		if (!transport_has_buffered(&server->sock) &&
			!wait_for_socket(server, events, deadline, interruptible))
		{
			set_error(err, ERRCODE_CONNECTION_FAILURE,
					  "Check that Redis is running and not overloaded, or raise redislock.command_timeout.",
					  "Redis at %s did not answer within %d ms", server->name, timeout_ms);
			err->timed_out = true;
			return false;
		}
		n = transport_read(&server->sock, buf, sizeof(buf), &st, why, sizeof(why));
		if (n > 0)
		{
			/* no ERROR here: this may run in a commit callback (reading what releases owe) */
			if (redisReaderFeed(server->reader, buf, n) != REDIS_OK)
			{
				server->broken = true;
				set_error(err, ERRCODE_OUT_OF_MEMORY, NULL,
						  "could not read from Redis at %s: out of memory", server->name);
				return false;
			}
			return true;
		}
		if (st == TRANSPORT_WANT_READ || st == TRANSPORT_WANT_WRITE)
		{
			/* not a whole TLS record yet, or TLS must write first */
			events = st == TRANSPORT_WANT_READ ? WL_SOCKET_READABLE : WL_SOCKET_WRITEABLE;
			continue;
		}
		return connection_broke(server, st, why, err);
	}
}

/* Read n replies into the inbox, within the deadline. */
static bool
read_replies(RedisServer *server, int n, TimestampTz deadline, int timeout_ms, bool interruptible,
			 RedisError *err)
{
	while (server->inbox_len < n)
	{
		void	   *reply = NULL;

		refused_elements = 0;
		if (redisReaderGetReply(server->reader, &reply) == REDIS_ERR)
		{
			server->broken = true;
			if (refused_elements != 0)
				set_error(err, ERRCODE_PROTOCOL_VIOLATION, NULL,
						  "invalid reply from Redis at %s: an array of %d elements", server->name,
						  refused_elements);
			else
				set_error(err, ERRCODE_PROTOCOL_VIOLATION, NULL,
						  "invalid reply from Redis at %s: %s", server->name, server->reader->errstr);
			return false;
		}
		if (reply != NULL)
		{
			server->inbox[server->inbox_len++] = reply;
			continue;
		}
		if (!feed_reader(server, deadline, timeout_ms, interruptible, err))
			return false;
	}
	return true;
}

static void
inbox_reserve(RedisServer *server, int n)
{
	if (server->inbox_cap >= n)
		return;
	if (server->inbox == NULL)
		server->inbox = MemoryContextAllocZero(TopMemoryContext, n * sizeof(redisReply *));
	else
	{
		server->inbox = repalloc(server->inbox, n * sizeof(redisReply *));
		memset(server->inbox + server->inbox_cap, 0, (n - server->inbox_cap) * sizeof(redisReply *));
	}
	server->inbox_cap = n;
}

/* Room for len more bytes of output; false when out of memory (malloc: callbacks may not palloc). */
static bool
output_reserve(RedisServer *server, size_t len)
{
	if (server->out_sent > 0 && server->out_sent == server->out_len)
		server->out_len = server->out_sent = 0;
	if (server->out_len + len > server->out_cap)
	{
		size_t		cap = Max(server->out_cap * 2, server->out_len + len + 1024);
		char	   *grown = realloc(server->out, cap);

		if (grown == NULL)
			return false;
		server->out = grown;
		server->out_cap = cap;
	}
	return true;
}

static bool
output_append(RedisServer *server, const char *buf, size_t len)
{
	if (!output_reserve(server, len))
		return false;
	memcpy(server->out + server->out_len, buf, len);
	server->out_len += len;
	return true;
}

/* Append commands to the server's output buffer, in the wire format. */
static void
append_commands(RedisServer *server, int ncmds, const RedisCommand *cmds)
{
	for (int i = 0; i < ncmds; i++)
	{
		char	   *wire = NULL;
		int			len = redisFormatCommandArgv(&wire, cmds[i].argc, (const char **) cmds[i].argv,
												 cmds[i].argvlen);
		bool		ok = len > 0 && output_append(server, wire, len);

		if (wire != NULL)
			redisFreeCommand(wire);
		if (!ok)
			elog(ERROR, "out of memory while formatting a Redis command");
	}
}

/*
 * An eviction policy other than noeviction lets Redis delete lock keys to make room (every lock key has
 * a TTL, so the volatile-* policies pick them first) while the connection stays up: nothing would tell
 * a holder before its COMMIT. Say so once per connection. info is INFO's answer; a Redis that does not
 * let us ask (an ACL without INFO) is not judged.
 */
static void
warn_if_evicting(RedisServer *server, const redisReply *info)
{
	const char *field = "maxmemory_policy:";
	const char *p;
	char		policy[64];
	size_t		n = 0;

	if (info->type != REDIS_REPLY_STRING && info->type != REDIS_REPLY_STATUS)
		return;
	p = info->str ? strstr(info->str, field) : NULL;
	if (p == NULL)
		return;
	p += strlen(field);
	while (n < sizeof(policy) - 1 && p[n] != '\0' && p[n] != '\r' && p[n] != '\n')
	{
		policy[n] = p[n];
		n++;
	}
	policy[n] = '\0';
	if (strcmp(policy, "noeviction") == 0)
		return;
	ereport(WARNING,
			(errcode(ERRCODE_WARNING),
			 errmsg("Redis at %s may evict redis locks: its maxmemory-policy is %s", server->name, policy),
			 errdetail("Every redislock key has a TTL; when Redis reaches maxmemory it may delete a held lock while its holder still works, and another backend can then take it."),
			 errhint("Set maxmemory-policy noeviction on that Redis, or turn on redislock.verify_at_commit.")));
}

/* The hint for a connection to this server that could not be made. */
static const char *
connect_hint(RedisServer *server)
{
	if (server->kind == SERVER_SENTINEL)
		return "Check redislock.sentinels, and that the Sentinels are running.";
	if (server->cluster_node)
		return "Check redislock.cluster_nodes, and that the Redis Cluster is running (a failover may be under way).";
	if (redislock_sentinels[0] != '\0')
		return "Sentinel named this server as the master; check that it is running.";
	return "Check redislock.host and redislock.port, and that Redis is running.";
}

/* AUTH with the credentials of the server's kind into c, if a password is set. */
static bool
auth_command(RedisServer *server, RedisCommand *c)
{
	const char *user = server->kind == SERVER_SENTINEL ? redislock_sentinel_username : redislock_username;
	const char *password = server->kind == SERVER_SENTINEL ? redislock_sentinel_password : redislock_password;

	if (password[0] == '\0')
		return false;
	c->argc = 0;
	c->argv[c->argc] = "AUTH";
	c->argvlen[c->argc++] = 4;
	if (user[0] != '\0')
	{
		c->argv[c->argc] = user;
		c->argvlen[c->argc++] = strlen(user);
	}
	c->argv[c->argc] = password;
	c->argvlen[c->argc++] = strlen(password);
	return true;
}

static void
simple_command(RedisCommand *c, const char *name, const char *arg)
{
	c->argc = 0;
	c->argv[c->argc] = name;
	c->argvlen[c->argc++] = strlen(name);
	if (arg != NULL)
	{
		c->argv[c->argc] = arg;
		c->argvlen[c->argc++] = strlen(arg);
	}
}

/* Whether ROLE's answer says master; *role is what it says (for a message). */
static bool
role_is_master(const redisReply *reply, char *role, size_t len)
{
	snprintf(role, len, "unknown");
	if (reply->type != REDIS_REPLY_ARRAY || reply->elements < 1 ||
		(reply->element[0]->type != REDIS_REPLY_STRING && reply->element[0]->type != REDIS_REPLY_STATUS))
		return false;
	snprintf(role, len, "%.*s", (int) Min(reply->element[0]->len, 32), reply->element[0]->str);
	return strcmp(role, "master") == 0;
}

/*
 * What follows connecting, in one round trip: AUTH when a password is set; for the data server, SELECT
 * when redislock.database asks for it, ROLE when Sentinel named it (it must be a master: Sentinel may
 * lag behind a failover), and INFO memory for the eviction policy.
 */
static bool
handshake(RedisServer *server, TimestampTz deadline, bool interruptible, RedisError *err)
{
	RedisCommand cmds[4];
	int			n = 0;
	int			role_at = -1;
	int			info_at = -1;
	char		db[16];
	char		role[40];

	if (auth_command(server, &cmds[n]))
		n++;
	if (server->kind == SERVER_DATA)
	{
		if (redislock_database != 0)
		{
			snprintf(db, sizeof(db), "%d", redislock_database);
			simple_command(&cmds[n++], "SELECT", db);
		}
		if (redislock_sentinels[0] != '\0' && !server->cluster_node)
		{
			role_at = n;
			simple_command(&cmds[n++], "ROLE", NULL);
		}
		info_at = n;
		simple_command(&cmds[n++], "INFO", "memory");
	}
	if (n == 0)
		return true;

	inbox_reserve(server, n);
	append_commands(server, n, cmds);
	if (!flush_output(server, deadline, interruptible, err) ||
		!read_replies(server, n, deadline, redislock_connect_timeout_ms, interruptible, err))
	{
		/*
		 * A TLS server drops a client that speaks plain text at once; under TLS 1.3 a server that
		 * wants a client certificate says so only after the handshake, when it ends the connection.
		 */
		if (err->connection_lost && (redislock_sslmode == REDIS_SSL_DISABLE || server->host[0] == '/'))
			set_error(err, ERRCODE_SQLCLIENT_UNABLE_TO_ESTABLISH_SQLCONNECTION,
					  "If that port expects TLS (Redis's tls-port), set redislock.sslmode.",
					  "could not connect to Redis at %s: the server closed the connection before answering",
					  server->name);
		else if (err->connection_lost)
		{
			char		why[sizeof(err->message)];
			const char *colon = strstr(err->message, ": ");

			snprintf(why, sizeof(why), "%s", colon ? colon + 2 : err->message);
			set_error(err, ERRCODE_SQLCLIENT_UNABLE_TO_ESTABLISH_SQLCONNECTION,
					  "If Redis asks for client certificates (tls-auth-clients), set redislock.sslcert and redislock.sslkey.",
					  "could not connect to Redis at %s: the server ended the TLS connection (%s)",
					  server->name, why);
		}
		return false;
	}
	for (int i = 0; i < n; i++)
	{
		if (i != info_at && server->inbox[i]->type == REDIS_REPLY_ERROR)
		{
			redis_error_from_reply(server, server->inbox[i], err);
			return false;
		}
	}
	if (role_at >= 0 && !role_is_master(server->inbox[role_at], role, sizeof(role)))
	{
		set_error(err, ERRCODE_SQLCLIENT_UNABLE_TO_ESTABLISH_SQLCONNECTION,
				  "Sentinel may be in the middle of a failover: retry in a moment.",
				  "Redis at %s, named master \"%s\" by Sentinel, is not a master (its role is %s)",
				  server->name, redislock_sentinel_master, role);
		err->unreachable = true;
		server->named_not_master = true;
		return false;
	}
	if (info_at >= 0)
		warn_if_evicting(server, server->inbox[info_at]);
	inbox_clear(server);
	return true;
}

/* The TLS handshake on a connected socket, within the deadline. */
static bool
tls_handshake(RedisServer *server, TimestampTz deadline, bool interruptible, RedisError *err)
{
	for (;;)
	{
		char		why[256];
		bool		certificate_problem;
		TransportStatus st = transport_tls_step(&server->sock, server->host, why, sizeof(why),
												&certificate_problem);

		if (st == TRANSPORT_DONE)
			return true;
		if (st != TRANSPORT_WANT_READ && st != TRANSPORT_WANT_WRITE)
		{
			const char *hint = "Check redislock.sslmode, redislock.sslcert and redislock.sslkey against Redis's TLS settings.";

			if (certificate_problem)
				hint = "Check redislock.sslrootcert (the authority that signed the server's certificate) and, for verify-full, that the certificate names the host redislock connects to.";
			else if (strstr(why, "wrong version number") != NULL || strstr(why, "record") != NULL)
				hint = "The server may not speak TLS on that port: check redislock.port (Redis's tls-port) and redislock.sslmode.";
			set_error(err, ERRCODE_SQLCLIENT_UNABLE_TO_ESTABLISH_SQLCONNECTION, hint,
					  "could not connect to Redis at %s: %s", server->name, why);
			return false;
		}
		if (!wait_for_socket(server, st == TRANSPORT_WANT_READ ? WL_SOCKET_READABLE : WL_SOCKET_WRITEABLE,
							 deadline, interruptible))
		{
			set_error(err, ERRCODE_SQLCLIENT_UNABLE_TO_ESTABLISH_SQLCONNECTION,
					  "The server may not speak TLS on that port: check redislock.port (Redis's tls-port) and redislock.sslmode, or raise redislock.connect_timeout.",
					  "could not connect to Redis at %s: the TLS handshake did not finish within %d ms",
					  server->name, redislock_connect_timeout_ms);
			err->timed_out = true;
			return false;
		}
	}
}

/*
 * Connect within redislock.connect_timeout (after Sentinel, if configured, named the master); on
 * failure the server stays disconnected.
 */
static bool server_connect_to(RedisServer *server, bool interruptible, RedisError *err);

static bool
server_connect(RedisServer *server, bool interruptible, RedisError *err)
{
	if (server->kind == SERVER_DATA && redislock_sentinels[0] != '\0' && !server->cluster_node)
	{
		/* a Sentinel that names a server which is not a master lags: ask the next one */
		for (int tried = 1;; tried++)
		{
			if (!sentinel_locate_master(server->host, sizeof(server->host), &server->port,
										interruptible, err))
				return false;
			server_set_name(server);
			if (server_connect_to(server, interruptible, err))
				return true;
			if (!server->named_not_master || !sentinel_answer_was_wrong(tried))
				return false;
		}
	}
	server_set_configured_address(server);
	return server_connect_to(server, interruptible, err);
}

/*
 * Connect to the server's address within redislock.connect_timeout; on failure the server stays
 * disconnected (server->named_not_master says whether ROLE refused it).
 */
static bool
server_connect_to(RedisServer *server, bool interruptible, RedisError *err)
{
	TimestampTz deadline;
	MemoryContext oldcxt = CurrentMemoryContext;
	HeldInterrupts held;
	char		why[256];

	server->named_not_master = false;
	deadline = TimestampTzPlusMilliseconds(GetCurrentTimestamp(), redislock_connect_timeout_ms);

	/*
	 * A host name is resolved before the non-blocking connect, with no time bound; a commit or abort
	 * callback (interrupts held, not interruptible) must not wait on a resolver. Such a call leaves its
	 * work owed to the next interruptible one.
	 */
	if (!interruptible && !transport_host_is_address(server->host))
	{
		set_error(err, ERRCODE_SQLCLIENT_UNABLE_TO_ESTABLISH_SQLCONNECTION,
				  "Name Redis (and the Sentinels) by address, which needs no resolving.",
				  "could not connect to Redis at %s: not resolving a host name at the end of a transaction",
				  server->name);
		return false;
	}
	if (!AcquireExternalFD())
	{
		set_error(err, ERRCODE_INSUFFICIENT_RESOURCES, NULL,
				  "could not connect to Redis at %s: too many open files", server->name);
		return false;
	}
	if (!transport_open(&server->sock, server->host, server->port, why, sizeof(why)))
	{
		ReleaseExternalFD();
		set_error(err, ERRCODE_SQLCLIENT_UNABLE_TO_ESTABLISH_SQLCONNECTION, connect_hint(server),
				  "could not connect to Redis at %s: %s", server->name, why);
		err->unreachable = true;
		return false;
	}
	server->connected = true;
	server->broken = false;
	server->reader = redisReaderCreate();
	if (server->reader == NULL)
	{
		redis_disconnect(server);
		set_error(err, ERRCODE_OUT_OF_MEMORY, NULL,
				  "could not connect to Redis at %s: out of memory", server->name);
		return false;
	}
	guard_reader(server->reader);

	/*
	 * The connect is done when the socket is writable. Until the handshake is over the connection
	 * counts as in flight and connecting, so that an interrupt or an error anywhere in between makes
	 * the next call start afresh. Creating the wait set can fail (out of file descriptors); in a
	 * commit or abort callback that must not become an ERROR.
	 */
	server->in_flight = true;
	server->in_flight_replies = -1;
	server->in_flight_blocking = false;
	held = redislock_interrupts_held();
	PG_TRY();
	{
		create_wait_set(server);
	}
	PG_CATCH();
	{
		MemoryContextSwitchTo(oldcxt);
		if (!interruptible)
			redislock_interrupts_restore(held);
		redis_disconnect(server);
		if (interruptible)
			PG_RE_THROW();
		FlushErrorState();
		set_error(err, ERRCODE_INSUFFICIENT_RESOURCES, NULL,
				  "could not connect to Redis at %s: no file descriptor or memory left to wait with",
				  server->name);
		return false;
	}
	PG_END_TRY();
	if (!wait_for_socket(server, WL_SOCKET_WRITEABLE, deadline, interruptible))
	{
		set_error(err, ERRCODE_SQLCLIENT_UNABLE_TO_ESTABLISH_SQLCONNECTION,
				  server->kind == SERVER_SENTINEL || server->cluster_node || redislock_sentinels[0] != '\0' ? connect_hint(server) :
				  "Check redislock.host and redislock.port, or raise redislock.connect_timeout.",
				  "could not connect to Redis at %s: timed out after %d ms",
				  server->name, redislock_connect_timeout_ms);
		err->unreachable = true;
		redis_disconnect(server);
		return false;
	}
	if (!transport_connected(&server->sock, why, sizeof(why)))
	{
		set_error(err, ERRCODE_SQLCLIENT_UNABLE_TO_ESTABLISH_SQLCONNECTION, connect_hint(server),
				  "could not connect to Redis at %s: %s", server->name, why);
		err->unreachable = true;
		redis_disconnect(server);
		return false;
	}
	/* as libpq: a Unix socket is local, and TLS does not apply to it */
	if ((redislock_sslmode != REDIS_SSL_DISABLE && server->host[0] != '/' &&
		 !tls_handshake(server, deadline, interruptible, err)) ||
		!handshake(server, deadline, interruptible, err))
	{
		redis_disconnect(server);
		return false;
	}
	server->in_flight = false;
	server->connections++;
	stats_add(STATS_RECONNECTS, 1);
	return true;
}

/*
 * Which connection we are on: a value that changes whenever we connect anew, so a lock can tell that
 * the connection it was taken on is gone (Redis restarted, or the connection broke).
 */
uint64
redis_connection_epoch(RedisServer *server)
{
	return server->connections;
}

/*
 * Whether the connection of this epoch is still up, as far as the kernel knows, without a round trip:
 * an idle connection has nothing to read, so a readable socket means the server closed it (a restart,
 * CLIENT KILL) or sent something unasked. A connection that owes replies to redis_send_unanswered is
 * not idle: read them first (redis_read_unanswered).
 */
bool
redis_connection_intact(RedisServer *server, uint64 epoch)
{
	if (!server->connected || server->in_flight || server->unanswered > 0 ||
		server->connections != epoch || server->not_master)
		return false;
	return transport_idle_intact(&server->sock);
}

/*
 * A commit or abort callback that follows a round trip which just ran out of time does not wait for
 * that Redis a second time: it queues its commands (the undo of what timed out, typically) behind the
 * stalled ones on the same connection, without waiting for replies. Redis runs a connection's
 * commands in order, so when it wakes up the undo runs after what it undoes. The connection stays in
 * flight and is replaced by the next call that waits.
 */
static bool
send_behind_stalled(RedisServer *server, int ncmds, const RedisCommand *cmds, RedisError *err)
{
	TimestampTz deadline = TimestampTzPlusMilliseconds(GetCurrentTimestamp(),
													   redislock_command_timeout_ms);

	append_commands(server, ncmds, cmds);
	err->sent = true;
	if (!flush_output(server, deadline, false, err))
	{
		redis_disconnect(server);
		return false;
	}
	set_error(err, ERRCODE_CONNECTION_FAILURE, NULL,
			  "Redis at %s did not answer a moment ago; commands were sent without waiting for replies",
			  server->name);
	err->timed_out = true;
	return false;
}

/*
 * Before a commit or abort callback uses a connection whose round trip an interrupt cut short (a
 * cancel, statement_timeout): a blocking BLPOP has nothing to keep in order with what follows, so the
 * connection is simply replaced. A script may have changed things in Redis, and the undo that follows
 * must run after it: give its reply a moment (at most 200 ms) and keep the connection; if Redis does not
 * answer that soon it is stalled, and the undo is queued behind the script (send_behind_stalled).
 */
static void
settle_interrupted(RedisServer *server)
{
	TimestampTz deadline;
	RedisError	ignored;
	int			wait_ms = Min(redislock_command_timeout_ms, 200);

	/* cut short while connecting (no AUTH or SELECT yet), or in a BLPOP: start afresh */
	if (!server->connected || server->in_flight_replies < 0 || server->in_flight_blocking)
	{
		redis_disconnect(server);
		return;
	}
	deadline = TimestampTzPlusMilliseconds(GetCurrentTimestamp(), wait_ms);
	if (flush_output(server, deadline, false, &ignored) &&
		read_replies(server, server->in_flight_replies, deadline, wait_ms, false, &ignored))
	{
		inbox_clear(server);
		server->in_flight = false;
	}
	else if (!server->broken && GetCurrentTimestamp() >= deadline)
		server->timed_out_at = GetCurrentTimestamp();
	else
		redis_disconnect(server);
}

/* A round trip is over: hand its n replies over to the caller. */
static void
take_replies(RedisServer *server, int n, redisReply **replies)
{
	server->in_flight = false;
	server->timed_out_at = 0;
	for (int i = 0; i < n; i++)
	{
		replies[i] = server->inbox[i];
		server->inbox[i] = NULL;
	}
	server->inbox_len = 0;
}

/*
 * Connect now if there is no usable connection, so that a caller can tell "not sent" from "maybe
 * sent" even when an interrupt ends the connecting: a lock call marks itself as maybe sent (to be
 * undone) only once this returned. A connection busy with something else is left to redis_roundtrip.
 */
bool
redis_ensure_connected(RedisServer *server, bool interruptible, RedisError *err)
{
	err->sent = false;
	err->connection_lost = false;
	err->timed_out = false;
	err->unreachable = false;
	if (server->connected && (server->in_flight || server->unanswered > 0 ||
							  redis_connection_intact(server, server->connections)))
		return true;
	if (server->connected)
		redis_disconnect(server);
	return server_connect(server, interruptible, err);
}

/*
 * Send ncmds commands in one write and read their ncmds replies: one round trip, finished within
 * timeout_ms (connecting first, if needed, within redislock.connect_timeout).
 *
 * On success replies[0..ncmds-1] hold the replies, which the caller frees with redis_free_replies
 * before it raises anything. On failure the connection is closed and err says why. Nothing here throws,
 * except CHECK_FOR_INTERRUPTS when interruptible.
 */
bool
redis_roundtrip(RedisServer *server, int ncmds, const RedisCommand *cmds, redisReply **replies,
				int timeout_ms, bool interruptible, RedisError *err)
{
	TimestampTz deadline;

	err->sent = false;
	err->connection_lost = false;
	err->timed_out = false;
	err->unreachable = false;

	/*
	 * Replies owed to redis_send_unanswered come first on the stream. Their sender reads them before
	 * its next round trip (release.c); should anyone else get here first, they are dropped
	 * rather than misread as this round trip's (the commands ran all the same).
	 */
	if (server->unanswered > 0 && !server->in_flight)
	{
		int			n = server->unanswered;
		redisReply **late = palloc0(n * sizeof(redisReply *));

		if (redis_read_unanswered(server, late, interruptible, err))
			redis_free_replies(n, late);
		pfree(late);
		err->sent = false;
		err->connection_lost = false;
		err->timed_out = false;
	}
	if (server->in_flight && !interruptible && server->timed_out_at == 0)
		settle_interrupted(server);
	if (server->in_flight && !interruptible && server->timed_out_at != 0 &&
		!TimestampDifferenceExceeds(server->timed_out_at, GetCurrentTimestamp(),
									redislock_command_timeout_ms))
		return send_behind_stalled(server, ncmds, cmds, err);
	/*
	 * An idle connection whose socket is readable was closed by the server (a restart, CLIENT KILL,
	 * timeout): replace it now rather than fail on it. One poll(), no round trip.
	 */
	if (server->in_flight || (server->connected &&
							  !redis_connection_intact(server, server->connections)))
		redis_disconnect(server);
	inbox_clear(server);
	if (!server->connected && !server_connect(server, interruptible, err))
		return false;

	inbox_reserve(server, ncmds);
	stats_add(STATS_ROUND_TRIPS, 1);
	deadline = TimestampTzPlusMilliseconds(GetCurrentTimestamp(), timeout_ms);
	server->in_flight = true;
	server->in_flight_replies = ncmds;
	server->in_flight_blocking = strcmp(cmds[0].argv[0], "BLPOP") == 0;
	err->sent = true;
	append_commands(server, ncmds, cmds);
	if (!flush_output(server, deadline, interruptible, err) ||
		!read_replies(server, ncmds, deadline, timeout_ms, interruptible, err))
	{
		if (server->connected && !server->broken && GetCurrentTimestamp() >= deadline)
		{
			/* keep the stalled connection: see send_behind_stalled */
			server->timed_out_at = GetCurrentTimestamp();
			return false;
		}
		redis_disconnect(server);
		return false;
	}
	take_replies(server, ncmds, replies);
	return true;
}

/*
 * Send commands, already formatted, in one write without waiting for their replies: Redis runs them as
 * soon as it reads them, and the replies wait in the socket until redis_read_unanswered reads them,
 * which must happen before this connection's next round trip. Only on a connection that is up and idle
 * (the check needs one that owes no replies; one that does is taken as it is); otherwise nothing is
 * sent, err->sent is false, and the caller takes a round trip instead. Never throws and allocates
 * nothing of PostgreSQL's (the output buffer grows only past what release.c reserved); waits at most
 * redislock.command_timeout, and only when the socket's send buffer is full.
 */
bool
redis_send_unanswered(RedisServer *server, int ncmds, const RedisFormatted *cmds, RedisError *err)
{
	TimestampTz deadline;

	err->sent = false;
	err->connection_lost = false;
	err->timed_out = false;
	if (!server->connected || server->in_flight || server->timed_out_at != 0 ||
		redislock_connection_settings_changed ||
		(server->unanswered == 0 && !redis_connection_intact(server, server->connections)))
		return false;
	deadline = TimestampTzPlusMilliseconds(GetCurrentTimestamp(), redislock_command_timeout_ms);
	for (int i = 0; i < ncmds; i++)
	{
		if (!output_append(server, cmds[i].buf, cmds[i].len))
		{
			/* out of memory in hiredis: the buffer may hold part of a command */
			set_error(err, ERRCODE_OUT_OF_MEMORY, NULL,
					  "could not send to Redis at %s: out of memory", server->name);
			redis_disconnect(server);
			return false;
		}
	}
	err->sent = true;
	if (!flush_output(server, deadline, false, err))
	{
		redis_disconnect(server);
		return false;
	}
	server->unanswered += ncmds;
	stats_add(STATS_ROUND_TRIPS, 1);	/* a write; its answer is read later, with no wait */
	return true;
}

/* How many replies the connection owes to redis_send_unanswered. */
int
redis_unanswered(RedisServer *server)
{
	return server->unanswered;
}

/*
 * Whether every reply owed to redis_send_unanswered arrives within wait_ms (a short grace, which
 * never throws); then they are read into replies[] as redis_read_unanswered does. When they do not,
 * what arrived is kept, and the connection still owes the rest, as before: nothing is lost or closed.
 */
bool
redis_unanswered_arrived(RedisServer *server, redisReply **replies, int wait_ms)
{
	int			n = server->unanswered;
	TimestampTz deadline = TimestampTzPlusMilliseconds(GetCurrentTimestamp(), wait_ms);
	RedisError	err;

	if (n == 0 || !server->connected || server->in_flight)
		return false;
	if (!server->inbox_unanswered)
		inbox_clear(server);
	inbox_reserve(server, n);
	server->in_flight = true;
	server->in_flight_replies = n;
	server->in_flight_blocking = false;
	if (!read_replies(server, n, deadline, wait_ms, false, &err))
	{
		server->in_flight = false;
		server->inbox_unanswered = server->inbox_len > 0;
		if (server->broken)
			redis_disconnect(server);
		return false;
	}
	server->unanswered = 0;
	server->inbox_unanswered = false;
	take_replies(server, n, replies);
	return true;
}

/*
 * Read the replies owed to redis_send_unanswered, in the order of the commands, into replies[] (room
 * for redis_unanswered() of them), within redislock.command_timeout. Usually they arrived long ago
 * and this is one read(). On failure the connection is closed (or kept as stalled, like a round trip
 * that timed out) and err says why.
 */
bool
redis_read_unanswered(RedisServer *server, redisReply **replies, bool interruptible, RedisError *err)
{
	int			n = server->unanswered;
	int			timeout_ms = redislock_command_timeout_ms;
	TimestampTz deadline = TimestampTzPlusMilliseconds(GetCurrentTimestamp(), timeout_ms);

	err->sent = true;
	err->connection_lost = false;
	err->timed_out = false;
	Assert(server->connected && !server->in_flight);
	if (!server->inbox_unanswered)
		inbox_clear(server);
	server->inbox_unanswered = false;
	inbox_reserve(server, n);
	server->unanswered = 0;
	server->in_flight = true;
	server->in_flight_replies = n;
	server->in_flight_blocking = false;
	if (!read_replies(server, n, deadline, timeout_ms, interruptible, err))
	{
		if (server->connected && !server->broken && GetCurrentTimestamp() >= deadline)
			server->timed_out_at = GetCurrentTimestamp();
		else
			redis_disconnect(server);
		return false;
	}
	take_replies(server, n, replies);
	return true;
}

/*
 * The Redis ACL rule that lets a user do all that redislock does under the current key prefix: its
 * keys (every one starts with "{<prefix>"), the commands it sends, and those its scripts call. INFO is
 * only for the eviction-policy check at connect, SELECT only for redislock.database, ROLE only for
 * Sentinel mode, WAIT only for redislock.wait_replicas, ASKING and CLUSTER SLOTS only for Redis Cluster.
 */
const char *
redis_acl_rule(void)
{
	static char rule[REDISLOCK_PREFIX_MAX + 512];

	snprintf(rule, sizeof(rule),
			 "~{%s* -@all +evalsha +eval +blpop +info +select +role +wait +asking +cluster|slots +time +hget +hgetall +hmget +hset +hsetnx +hdel +del +exists +set +pexpire +pttl +rpush +zadd +zrange +zrangebyscore +zrem +zcard +zscore",
			 redislock_key_prefix);
	return rule;
}

/* Whether an error reply is an ACL denial, of a command we sent or of one a script called. */
static bool
reply_is_acl_denial(const char *s)
{
	return strncmp(s, "NOPERM", 6) == 0 ||
		strstr(s, "The user executing the script can't") != NULL ||
		strstr(s, "ACL failure in script") != NULL ||
		strstr(s, "no permissions to") != NULL;
}

/*
 * Describe a Redis error reply as an error of ours, with the SQLSTATE and hint that fit its code; what
 * Redis said goes in the detail.
 */
void
redis_error_from_reply(RedisServer *server, const redisReply *reply, RedisError *err)
{
	const char *s = reply->str ? reply->str : "";
	int			len = (int) Min(reply->len, 300);

#define REPLY_STARTS(prefix) (strncmp(s, prefix, strlen(prefix)) == 0)
	/* (Redis refuses a long command from a client that has not authenticated as a protocol error) */
	if (REPLY_STARTS("NOAUTH") || REPLY_STARTS("WRONGPASS") || REPLY_STARTS("ERR invalid password") ||
		REPLY_STARTS("ERR AUTH") || REPLY_STARTS("ERR Protocol error: unauthenticated"))
	{
		if (server->kind == SERVER_SENTINEL)
			set_error(err, ERRCODE_INVALID_PASSWORD,
					  "Check redislock.sentinel_username and redislock.sentinel_password.",
					  "Sentinel at %s refused authentication", server->name);
		else
			set_error(err, ERRCODE_INVALID_PASSWORD,
					  "Check redislock.username and redislock.password.",
					  "Redis at %s refused authentication", server->name);
	}
	else if (reply_is_acl_denial(s))
	{
		set_error(err, ERRCODE_INSUFFICIENT_PRIVILEGE, NULL,
				  "Redis at %s denied permission", server->name);
		snprintf(err->hint, sizeof(err->hint),
				 "Give the Redis user of redislock.username the keys and commands redislock uses: ACL SETUSER <user> %s",
				 redis_acl_rule());
	}
	else if (REPLY_STARTS("OOM"))
		set_error(err, ERRCODE_OUT_OF_MEMORY,
				  "Raise Redis's maxmemory or free memory there.",
				  "Redis at %s is out of memory", server->name);
	else if (REPLY_STARTS("READONLY"))
	{
		/* a master demoted under us: the next call replaces the connection (and asks Sentinel) */
		server->not_master = true;
		set_error(err, ERRCODE_READ_ONLY_SQL_TRANSACTION,
				  redislock_sentinels[0] != '\0' ?
				  "Sentinel is moving the master: the next call connects to the new one." :
				  "Point redislock.host and redislock.port at the master.",
				  "Redis at %s is a read-only replica", server->name);
	}
	else if ((REPLY_STARTS("MOVED ") || REPLY_STARTS("ASK ")) && !cluster_mode())
		set_error(err, ERRCODE_CONNECTION_EXCEPTION,
				  "That server is a Redis Cluster node: list nodes of the cluster in redislock.cluster_nodes.",
				  "Redis at %s returned an error", server->name);
	else if (REPLY_STARTS("MOVED ") || REPLY_STARTS("ASK "))
		set_error(err, ERRCODE_CONNECTION_EXCEPTION,
				  "The Redis Cluster's slots may be moving, or its nodes disagree about them: retry in a moment.",
				  "Redis Cluster kept redirecting a command for a lock (last at %s)", server->name);
	else if (REPLY_STARTS("LOADING") || REPLY_STARTS("BUSY") || REPLY_STARTS("MASTERDOWN") ||
			 REPLY_STARTS("TRYAGAIN") || REPLY_STARTS("CLUSTERDOWN"))
		set_error(err, ERRCODE_CANNOT_CONNECT_NOW, "Retry when Redis is ready.",
				  "Redis at %s is not ready", server->name);
	else
		set_error(err, ERRCODE_CONNECTION_EXCEPTION, NULL,
				  "Redis at %s returned an error", server->name);
#undef REPLY_STARTS
	/* never the password: Redis does not echo AUTH's arguments in its errors */
	snprintf(err->detail, sizeof(err->detail), "Redis answered: %.*s", len, s);
}

/* A reply of the wrong shape: the server is not the Redis we expect, or the stream is corrupt. */
void
redis_error_malformed(RedisServer *server, const char *what, RedisError *err)
{
	set_error(err, ERRCODE_PROTOCOL_VIOLATION, NULL,
			  "unexpected reply from Redis at %s: %s", server->name, what);
	redis_disconnect(server);
}

void
redis_raise(const RedisError *err)
{
	stats_add(STATS_REDIS_ERRORS, 1);
	ereport(ERROR,
			(errcode(err->sqlstate),
			 errmsg_internal("%s", err->message),
			 err->detail[0] ? errdetail_internal("%s", err->detail) : 0,
			 err->hint[0] ? errhint("%s", err->hint) : 0));
	pg_unreachable();
}

/* The error as a WARNING; context, a sentence, says what follows from it. */
void
redis_warn(const RedisError *err, const char *context)
{
	stats_add(STATS_REDIS_ERRORS, 1);
	ereport(WARNING,
			(errcode(err->sqlstate),
			 errmsg_internal("%s", err->message),
			 errdetail_internal("%s%s%s", err->detail, err->detail[0] ? " " : "", context),
			 err->hint[0] ? errhint("%s", err->hint) : 0));
}
