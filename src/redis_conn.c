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
 * Only the primary server (redislock.host/port) exists today; the struct keeps everything per server so
 * that Sentinel, Cluster or a quorum of masters can add more.
 */
#include "redislock.h"

#include <errno.h>
#include <poll.h>
#include <sys/socket.h>
#include <arpa/inet.h>
#include <netinet/in.h>

#include "miscadmin.h"
#include "pgstat.h"
#include "storage/fd.h"
#include "storage/ipc.h"
#include "storage/latch.h"
#include "utils/memutils.h"
#include "utils/timestamp.h"

struct RedisServer
{
	char		name[MAXPGPATH + 16];	/* "host:port" or socket path, for messages */
	redisContext *ctx;			/* NULL when not connected */
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

static RedisServer primary_server;

static void
server_set_name(RedisServer *server)
{
	if (redislock_host[0] == '/')
		snprintf(server->name, sizeof(server->name), "%s", redislock_host);
	else
		snprintf(server->name, sizeof(server->name), "%s:%d", redislock_host, redislock_port);
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

RedisServer *
redis_primary_server(void)
{
	if (redislock_connection_settings_changed)
	{
		redis_disconnect(&primary_server);
		redislock_connection_settings_changed = false;
	}
	if (primary_server.ctx == NULL)
		server_set_name(&primary_server);
	return &primary_server;
}

static void inbox_reserve(RedisServer *server, int n);

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
#define REDIS_MAX_REPLY_ELEMENTS 1024

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
guard_reader(redisContext *ctx)
{
	if (hiredis_create_array == NULL)
	{
		guarded_functions = *ctx->reader->fn;
		hiredis_create_array = guarded_functions.createArray;
		guarded_functions.createArray = guarded_create_array;
	}
	ctx->reader->fn = &guarded_functions;
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
	if (server->ctx != NULL)
	{
		redisFree(server->ctx);
		server->ctx = NULL;
		ReleaseExternalFD();
	}
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

static void
set_error(RedisError *err, int sqlstate, const char *hint, const char *fmt,...)
pg_attribute_printf(4, 5);

/* err says fmt..., with hint (NULL: none); no detail. */
static void
set_error(RedisError *err, int sqlstate, const char *hint, const char *fmt,...)
{
	va_list		args;

	err->sqlstate = sqlstate;
	va_start(args, fmt);
	vsnprintf(err->message, sizeof(err->message), fmt, args);
	va_end(args);
	snprintf(err->hint, sizeof(err->hint), "%s", hint ? hint : "");
	err->detail[0] = '\0';
	err->timed_out = false;
}

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
												 server->ctx->fd, NULL, NULL);
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

/* Send what the context has buffered, within the deadline. */
static bool
flush_output(RedisServer *server, TimestampTz deadline, bool interruptible, RedisError *err)
{
	int			done = 0;

	while (!done)
	{
		if (redisBufferWrite(server->ctx, &done) == REDIS_ERR)
		{
			set_error(err, ERRCODE_CONNECTION_FAILURE, NULL,
					  "lost connection to Redis at %s: %s", server->name, server->ctx->errstr);
			err->connection_lost = true;
			return false;
		}
		if (!done && !wait_for_socket(server, WL_SOCKET_WRITEABLE, deadline, interruptible))
		{
			set_error(err, ERRCODE_CONNECTION_FAILURE,
					  "Check that Redis is running and not overloaded, or raise redislock.command_timeout.",
					  "Redis at %s did not accept a command in time", server->name);
			err->timed_out = true;
			return false;
		}
	}
	return true;
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
		if (redisGetReplyFromReader(server->ctx, &reply) == REDIS_ERR)
		{
			if (refused_elements != 0)
				set_error(err, ERRCODE_PROTOCOL_VIOLATION, NULL,
						  "invalid reply from Redis at %s: an array of %d elements", server->name,
						  refused_elements);
			else
				set_error(err, ERRCODE_PROTOCOL_VIOLATION, NULL,
						  "invalid reply from Redis at %s: %s", server->name, server->ctx->errstr);
			return false;
		}
		if (reply != NULL)
		{
			server->inbox[server->inbox_len++] = reply;
			continue;
		}
		if (!wait_for_socket(server, WL_SOCKET_READABLE, deadline, interruptible))
		{
			set_error(err, ERRCODE_CONNECTION_FAILURE,
					  "Check that Redis is running and not overloaded, or raise redislock.command_timeout.",
					  "Redis at %s did not answer within %d ms", server->name, timeout_ms);
			err->timed_out = true;
			return false;
		}
		if (redisBufferRead(server->ctx) == REDIS_ERR)
		{
			set_error(err, ERRCODE_CONNECTION_FAILURE, NULL,
					  "lost connection to Redis at %s: %s", server->name,
					  server->ctx->err == REDIS_ERR_EOF ? "server closed the connection" :
					  server->ctx->errstr);
			err->connection_lost = true;
			return false;
		}
	}
	return true;
}

/*
 * Room for n replies in the server's inbox, made ahead of a commit or abort callback that must not
 * allocate (see release.c).
 */
void
redis_reserve_replies(RedisServer *server, int n)
{
	inbox_reserve(server, n);
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

/* Append commands to the context's output buffer (hiredis copies the arguments). */
static void
append_commands(RedisServer *server, int ncmds, const RedisCommand *cmds)
{
	for (int i = 0; i < ncmds; i++)
	{
		if (redisAppendCommandArgv(server->ctx, cmds[i].argc,
								   (const char **) cmds[i].argv, cmds[i].argvlen) != REDIS_OK)
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

/*
 * What follows connecting, in one round trip: AUTH and SELECT when the settings ask for them, and INFO
 * memory for the eviction policy.
 */
static bool
handshake(RedisServer *server, TimestampTz deadline, bool interruptible, RedisError *err)
{
	RedisCommand cmds[3];
	int			n = 0;
	char		db[16];
	RedisCommand *c;

	if (redislock_password[0] != '\0')
	{
		c = &cmds[n++];
		c->argc = 0;
		c->argv[c->argc] = "AUTH";
		c->argvlen[c->argc++] = 4;
		if (redislock_username[0] != '\0')
		{
			c->argv[c->argc] = redislock_username;
			c->argvlen[c->argc++] = strlen(redislock_username);
		}
		c->argv[c->argc] = redislock_password;
		c->argvlen[c->argc++] = strlen(redislock_password);
	}
	if (redislock_database != 0)
	{
		c = &cmds[n++];
		snprintf(db, sizeof(db), "%d", redislock_database);
		c->argc = 2;
		c->argv[0] = "SELECT";
		c->argvlen[0] = 6;
		c->argv[1] = db;
		c->argvlen[1] = strlen(db);
	}
	c = &cmds[n++];
	c->argc = 2;
	c->argv[0] = "INFO";
	c->argvlen[0] = 4;
	c->argv[1] = "memory";
	c->argvlen[1] = 6;

	inbox_reserve(server, n);
	append_commands(server, n, cmds);
	if (!flush_output(server, deadline, interruptible, err) ||
		!read_replies(server, n, deadline, redislock_connect_timeout_ms, interruptible, err))
		return false;
	for (int i = 0; i < n - 1; i++)
	{
		if (server->inbox[i]->type == REDIS_REPLY_ERROR)
		{
			redis_error_from_reply(server, server->inbox[i], err);
			return false;
		}
	}
	warn_if_evicting(server, server->inbox[n - 1]);
	inbox_clear(server);
	return true;
}

/* Whether host is an IPv4 or IPv6 address or a Unix socket path, which need no resolving. */
static bool
host_is_address(const char *host)
{
	unsigned char buf[sizeof(struct in6_addr)];

	return host[0] == '/' || inet_pton(AF_INET, host, buf) == 1 || inet_pton(AF_INET6, host, buf) == 1;
}

/* Connect within redislock.connect_timeout; on failure the server stays disconnected. */
static bool
server_connect(RedisServer *server, bool interruptible, RedisError *err)
{
	TimestampTz deadline = TimestampTzPlusMilliseconds(GetCurrentTimestamp(),
													   redislock_connect_timeout_ms);
	int			sockerr = 0;
	socklen_t	len = sizeof(sockerr);
	MemoryContext oldcxt = CurrentMemoryContext;
	HeldInterrupts held;

	server_set_name(server);

	/*
	 * hiredis resolves a host name before its non-blocking connect, with no time bound; a commit or
	 * abort callback (interrupts held, not interruptible) must not wait on a resolver. Such a call
	 * leaves its work owed to the next interruptible one.
	 */
	if (!interruptible && !host_is_address(redislock_host))
	{
		set_error(err, ERRCODE_SQLCLIENT_UNABLE_TO_ESTABLISH_SQLCONNECTION,
				  "Set redislock.host to an address, which needs no resolving.",
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
	if (redislock_host[0] == '/')
		server->ctx = redisConnectUnixNonBlock(redislock_host);
	else
		server->ctx = redisConnectNonBlock(redislock_host, redislock_port);
	if (server->ctx == NULL)
	{
		ReleaseExternalFD();
		set_error(err, ERRCODE_OUT_OF_MEMORY, NULL,
				  "could not connect to Redis at %s: out of memory", server->name);
		return false;
	}
	if (server->ctx->err)
	{
		set_error(err, ERRCODE_SQLCLIENT_UNABLE_TO_ESTABLISH_SQLCONNECTION,
				  "Check redislock.host and redislock.port, and that Redis is running.",
				  "could not connect to Redis at %s: %s", server->name, server->ctx->errstr);
		redis_disconnect(server);
		return false;
	}
	guard_reader(server->ctx);

	/*
	 * hiredis started a non-blocking connect; it is done when the socket is writable. Until the
	 * handshake is over the connection counts as in flight and connecting, so that an interrupt or
	 * an error anywhere in between makes the next call start afresh. Creating the wait set can fail
	 * (out of file descriptors); in a commit or abort callback that must not become an ERROR.
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
				  "Check redislock.host and redislock.port, or raise redislock.connect_timeout.",
				  "could not connect to Redis at %s: timed out after %d ms",
				  server->name, redislock_connect_timeout_ms);
		redis_disconnect(server);
		return false;
	}
	if (getsockopt(server->ctx->fd, SOL_SOCKET, SO_ERROR, &sockerr, &len) < 0)
		sockerr = errno;
	if (sockerr != 0)
	{
		set_error(err, ERRCODE_SQLCLIENT_UNABLE_TO_ESTABLISH_SQLCONNECTION,
				  "Check redislock.host and redislock.port, and that Redis is running.",
				  "could not connect to Redis at %s: %s", server->name, strerror(sockerr));
		redis_disconnect(server);
		return false;
	}
	/* TCP keepalive notices a peer that vanished; it does not apply to (and fails on) Unix sockets */
	if (redislock_host[0] != '/')
		redisEnableKeepAlive(server->ctx);

	if (!handshake(server, deadline, interruptible, err))
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
	struct pollfd pfd;

	if (server->ctx == NULL || server->in_flight || server->unanswered > 0 ||
		server->connections != epoch)
		return false;
	pfd.fd = server->ctx->fd;
	pfd.events = POLLIN;
	pfd.revents = 0;
	return poll(&pfd, 1, 0) == 0;
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
	if (server->ctx == NULL || server->in_flight_replies < 0 || server->in_flight_blocking)
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
	else if (server->ctx->err == 0 && GetCurrentTimestamp() >= deadline)
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
	if (server->in_flight || (server->ctx != NULL &&
							  !redis_connection_intact(server, server->connections)))
		redis_disconnect(server);
	inbox_clear(server);
	if (server->ctx == NULL && !server_connect(server, interruptible, err))
		return false;

	inbox_reserve(server, ncmds);
	stats_add(STATS_ROUND_TRIPS, 1);
	deadline = TimestampTzPlusMilliseconds(GetCurrentTimestamp(), timeout_ms);
	server->in_flight = true;
	server->in_flight_replies = ncmds;
	server->in_flight_blocking = ncmds == 1 && strcmp(cmds[0].argv[0], "BLPOP") == 0;
	err->sent = true;
	append_commands(server, ncmds, cmds);
	if (!flush_output(server, deadline, interruptible, err) ||
		!read_replies(server, ncmds, deadline, timeout_ms, interruptible, err))
	{
		if (server->ctx != NULL && server->ctx->err == 0 && GetCurrentTimestamp() >= deadline)
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
 * nothing of PostgreSQL's (hiredis's output buffer may grow); waits at most redislock.command_timeout,
 * and only when the socket's send buffer is full.
 */
bool
redis_send_unanswered(RedisServer *server, int ncmds, const RedisFormatted *cmds, RedisError *err)
{
	TimestampTz deadline;

	err->sent = false;
	err->connection_lost = false;
	err->timed_out = false;
	if (server->ctx == NULL || server->in_flight || server->timed_out_at != 0 ||
		redislock_connection_settings_changed ||
		(server->unanswered == 0 && !redis_connection_intact(server, server->connections)))
		return false;
	deadline = TimestampTzPlusMilliseconds(GetCurrentTimestamp(), redislock_command_timeout_ms);
	for (int i = 0; i < ncmds; i++)
	{
		if (redisAppendFormattedCommand(server->ctx, cmds[i].buf, cmds[i].len) != REDIS_OK)
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
 * Read the replies owed to redis_send_unanswered, in the order of the commands, into replies[] (room
 * for redis_unanswered() of them), within redislock.command_timeout. Usually they arrived long ago
 * and this is one read(). On failure the connection is closed (or kept as stalled, like a round trip
 * that timed out) and err says why.
 */
bool
redis_read_unanswered(RedisServer *server, redisReply **replies, bool interruptible, RedisError *err)
{
	int			n = server->unanswered;
	TimestampTz deadline = TimestampTzPlusMilliseconds(GetCurrentTimestamp(),
													   redislock_command_timeout_ms);

	err->sent = true;
	err->connection_lost = false;
	err->timed_out = false;
	Assert(server->ctx != NULL && !server->in_flight);
	inbox_clear(server);
	inbox_reserve(server, n);
	server->unanswered = 0;
	server->in_flight = true;
	server->in_flight_replies = n;
	server->in_flight_blocking = false;
	if (!read_replies(server, n, deadline, redislock_command_timeout_ms, interruptible, err))
	{
		if (server->ctx != NULL && server->ctx->err == 0 && GetCurrentTimestamp() >= deadline)
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
 * only for the eviction-policy check at connect, SELECT only for redislock.database.
 */
const char *
redis_acl_rule(void)
{
	static char rule[REDISLOCK_PREFIX_MAX + 256];

	snprintf(rule, sizeof(rule),
			 "~{%s* -@all +evalsha +eval +blpop +info +select +time +hget +hmget +hset +hdel +del +exists +pexpire +rpush +zadd +zrange +zrem +zcard",
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
	if (REPLY_STARTS("NOAUTH") || REPLY_STARTS("WRONGPASS") || REPLY_STARTS("ERR invalid password") ||
		REPLY_STARTS("ERR AUTH"))
		set_error(err, ERRCODE_INVALID_PASSWORD,
				  "Check redislock.username and redislock.password.",
				  "Redis at %s refused authentication", server->name);
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
		set_error(err, ERRCODE_READ_ONLY_SQL_TRANSACTION,
				  "Point redislock.host and redislock.port at the master.",
				  "Redis at %s is a read-only replica", server->name);
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
