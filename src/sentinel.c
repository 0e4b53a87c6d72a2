/*
 * sentinel.c
 *		Finding the master through Redis Sentinel: redislock.sentinels, sentinel_master,
 *		sentinel_username and sentinel_password.
 *
 * Redis's client protocol for Sentinel: ask the Sentinels in turn (each within connect_timeout and
 * command_timeout) for the master's address with SENTINEL GET-MASTER-ADDR-BY-NAME; the first that
 * answers is asked first next time. The caller (redis_conn.c) connects to that address and confirms
 * with ROLE that it is a master. This runs on every connect of the data server — after a failover,
 * Redis closes the clients of both servers, so every backend asks again — and after a server answered
 * READONLY.
 *
 * A connection to a Sentinel lives for one question: the data connection is long-lived, so asking
 * happens only when it is made anew.
 */
#include "redislock.h"

#include <errno.h>

#define SENTINELS_MAX 16

static int
parse_list(const char *list, RedisAddress *out, char *problem, size_t len)
{
	return redislock_parse_addresses("redislock.sentinels", "Sentinels", list, out, SENTINELS_MAX,
									 problem, len);
}

/* The index of the Sentinel that answered last, asked first next time. */
static int	first_to_ask = 0;
static int	last_answered = -1;

/*
 * The master that the Sentinel which answered last named is not a master (ROLE says so): that Sentinel
 * lags behind a failover. Ask the next one first from now on. Returns whether another Sentinel is
 * left to ask in this search (attempts made so far: tried).
 */
bool
sentinel_answer_was_wrong(int tried)
{
	RedisAddress addrs[SENTINELS_MAX];
	char		problem[256];
	int			n = parse_list(redislock_sentinels, addrs, problem, sizeof(problem));

	if (n <= 0 || last_answered < 0)
		return false;
	first_to_ask = (last_answered + 1) % n;
	return tried < n;
}

/* For the setting's check hook: whether list is a valid redislock.sentinels. */
bool
sentinel_check_list(const char *list, char *problem, size_t len)
{
	RedisAddress addrs[SENTINELS_MAX];

	return parse_list(list, addrs, problem, len) >= 0;
}

static void
append_tried(char *tried, size_t len, const char *fmt,...)
pg_attribute_printf(3, 4);

static void
append_tried(char *tried, size_t len, const char *fmt,...)
{
	size_t		used = strlen(tried);
	va_list		args;

	if (used + 3 >= len)
		return;
	if (used > 0)
	{
		strcat(tried, "; ");
		used += 2;
	}
	va_start(args, fmt);
	vsnprintf(tried + used, len - used, fmt, args);
	va_end(args);
}

/* The address in a GET-MASTER-ADDR-BY-NAME answer ([host, port]); false if it has another shape. */
static bool
parse_answer(const redisReply *reply, char *host, size_t hostlen, int *port)
{
	char		buf[16];
	char	   *end;
	long		p;

	if (reply->type != REDIS_REPLY_ARRAY || reply->elements != 2 ||
		reply->element[0]->type != REDIS_REPLY_STRING || reply->element[1]->type != REDIS_REPLY_STRING ||
		reply->element[0]->len == 0 || reply->element[0]->len >= hostlen ||
		reply->element[1]->len == 0 || reply->element[1]->len >= sizeof(buf))
		return false;
	memcpy(buf, reply->element[1]->str, reply->element[1]->len);
	buf[reply->element[1]->len] = '\0';
	errno = 0;
	p = strtol(buf, &end, 10);
	if (errno != 0 || *end != '\0' || p < 1 || p > 65535)
		return false;
	/* an address or a host name, never a path: a Sentinel must not point us at a local socket */
	if (reply->element[0]->str[0] == '/' || memchr(reply->element[0]->str, '\0', reply->element[0]->len))
		return false;
	memcpy(host, reply->element[0]->str, reply->element[0]->len);
	host[reply->element[0]->len] = '\0';
	*port = (int) p;
	return true;
}

/*
 * Ask the Sentinels where the master redislock.sentinel_master is: its host (or address) and port. On
 * failure err says what was tried: 28P01 when the Sentinels that could be reached refused the
 * credentials, else 08001. Outside interruptible calls (a commit or abort callback) no further Sentinel
 * is asked once connect_timeout has passed: the asking takes at most about connect_timeout +
 * command_timeout, then the master's own connect_timeout.
 */
bool
sentinel_locate_master(char *host, size_t hostlen, int *port, bool interruptible, RedisError *err)
{
	RedisAddress addrs[SENTINELS_MAX];
	char		problem[256];
	char		tried[sizeof(err->detail) - 16] = "";
	int			n = parse_list(redislock_sentinels, addrs, problem, sizeof(problem));
	int			asked = 0;
	int			unknown = 0;
	int			refused = 0;
	int64		started = redislock_monotonic_ms();
	RedisError	auth_err;

	if (n <= 0)
	{
		redis_error_set(err, ERRCODE_INVALID_PARAMETER_VALUE, "Check redislock.sentinels.",
						"redislock.sentinels names no Sentinel");
		snprintf(err->detail, sizeof(err->detail), "%s", n < 0 ? problem : "");
		err->sent = err->connection_lost = false;
		return false;
	}
	for (int k = 0; k < n; k++)
	{
		int			i = (first_to_ask + k) % n;
		RedisServer *server;
		RedisCommand cmd;
		redisReply *reply = NULL;
		RedisError	e;
		bool		ok;

		if (!interruptible && k > 0 &&
			redislock_monotonic_ms() - started >= redislock_connect_timeout_ms)
		{
			append_tried(tried, sizeof(tried), "the others not asked at the end of a transaction");
			break;
		}
		server = redis_sentinel_server(addrs[i].host, addrs[i].port);
		cmd.argc = 3;
		cmd.argv[0] = "SENTINEL";
		cmd.argvlen[0] = 8;
		cmd.argv[1] = "GET-MASTER-ADDR-BY-NAME";
		cmd.argvlen[1] = strlen(cmd.argv[1]);
		cmd.argv[2] = redislock_sentinel_master;
		cmd.argvlen[2] = strlen(redislock_sentinel_master);
		asked++;
		ok = redis_roundtrip(server, 1, &cmd, &reply, redislock_command_timeout_ms, interruptible, &e);
		if (ok && reply->type == REDIS_REPLY_ERROR)
		{
			redis_error_from_reply(server, reply, &e);
			ok = false;
		}
		if (!ok)
		{
			if (e.sqlstate == ERRCODE_INVALID_PASSWORD)
			{
				refused++;
				auth_err = e;
			}
			append_tried(tried, sizeof(tried), "%s", e.message);
		}
		else if (reply->type == REDIS_REPLY_NIL)
		{
			unknown++;
			append_tried(tried, sizeof(tried), "Sentinel at %s knows no master of that name",
						 redis_server_name(server));
		}
		else if (parse_answer(reply, host, hostlen, port))
		{
			freeReplyObject(reply);
			redis_disconnect(server);
			first_to_ask = last_answered = i;
			return true;
		}
		else
			append_tried(tried, sizeof(tried), "Sentinel at %s answered with an unexpected shape",
						 redis_server_name(server));
		if (reply != NULL)
			freeReplyObject(reply);
		redis_disconnect(server);
	}
	if (refused > 0 && refused + unknown == asked)
	{
		*err = auth_err;
		return false;
	}
	if (unknown > 0 && unknown == asked)
		redis_error_set(err, ERRCODE_SQLCLIENT_UNABLE_TO_ESTABLISH_SQLCONNECTION,
						"Check redislock.sentinel_master: it must be the name given in the Sentinels' \"sentinel monitor\".",
						"no Sentinel knows a Redis master named \"%s\"", redislock_sentinel_master);
	else
		redis_error_set(err, ERRCODE_SQLCLIENT_UNABLE_TO_ESTABLISH_SQLCONNECTION,
						"Check redislock.sentinels, and that the Sentinels are running.",
						"could not find the Redis master \"%s\": no Sentinel answered (tried %d)",
						redislock_sentinel_master, asked);
	snprintf(err->detail, sizeof(err->detail), "%s", tried);
	err->unreachable = !(unknown > 0 && unknown == asked);
	err->sent = err->connection_lost = false;
	return false;
}
