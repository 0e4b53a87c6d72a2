/*
 * lock_ops.c
 *		Lock operations in Redis: take, wait in the FIFO queue, release, verify, inspect.
 *
 * Each operation is one script call (scripts.c), so one round trip; a release of k locks is k script
 * calls in one round trip. A waiting backend blocks in BLPOP on its own grant list: the releasing
 * backend's script hands the lock over and pushes the fencing token there, which wakes exactly that
 * waiter with nothing more to ask. Every BLPOP is bounded by REDISLOCK_RECHECK_MS, after which the
 * waiter re-runs the acquire script: that re-check is its heartbeat in the queue and catches a lease
 * that ran out without a release (a holder that died) or a wake-up that never came.
 *
 * Before a call that may change our state in Redis (acquire, wait), the key is registered as pending
 * in the lock table; if the call is interrupted or fails, the transaction's abort undoes it with the
 * release script, which is keyed by our holder id and so never touches anyone else's lock.
 */
#include "redislock.h"

#include <errno.h>
#include <unistd.h>

#include "miscadmin.h"
#include "postmaster/postmaster.h"
#include "port.h"
#include "utils/memutils.h"
#include "utils/timestamp.h"

static char *holder_id = NULL;

/*
 * Who we are in Redis: "<host>:<port>:<pid>:<nonce>", naming the PostgreSQL server and backend. The
 * random nonce keeps a later backend that reuses the pid from being taken for this one.
 */
const char *
redislock_holder_id(void)
{
	if (holder_id == NULL)
	{
		char		host[256];
		uint32		nonce;

		if (gethostname(host, sizeof(host)) != 0)
			strlcpy(host, "localhost", sizeof(host));
		host[sizeof(host) - 1] = '\0';
		if (!pg_strong_random(&nonce, sizeof(nonce)))
			nonce = (uint32) GetCurrentTimestamp() ^ (uint32) MyProcPid;
		holder_id = MemoryContextAlloc(TopMemoryContext, strlen(host) + 48);
		sprintf(holder_id, "%s:%d:%d:%08x", host, PostPortNumber, MyProcPid, nonce);
	}
	return holder_id;
}

/* The Redis keys of a lock: "{<prefix><key>}", then ":q" and ":w" after it. */
void
lock_keys_build(const LockRef *ref, LockKeys *keys)
{
	size_t		len = strlen(ref->prefix) + strlen(ref->key) + 2;

	keys->lock = palloc(len + 1);
	snprintf(keys->lock, len + 1, "{%s%s}", ref->prefix, ref->key);
	keys->lock_len = len;
	keys->queue = psprintf("%s:q", keys->lock);
	keys->queue_len = len + 2;
	keys->waiters = psprintf("%s:w", keys->lock);
	keys->waiters_len = len + 2;
}

void
lock_keys_free(LockKeys *keys)
{
	pfree(keys->lock);
	pfree(keys->queue);
	pfree(keys->waiters);
}

/*
 * The connection for a lock operation, once the answers to releases sent without waiting (at the end
 * of an earlier transaction) have been read: they come first on the stream.
 */
static RedisServer *
server_for_call(bool interruptible)
{
	redis_lock_settle_releases(interruptible);
	return redis_primary_server();
}

/* How long a queued waiter that stops re-checking is still taken for alive. */
static int
waiter_liveness_ms(void)
{
	return 2 * REDISLOCK_RECHECK_MS + redislock_command_timeout_ms;
}

static bool
reply_is_integer(const redisReply *r)
{
	return r != NULL && r->type == REDIS_REPLY_INTEGER;
}

/* The answer of the acquire script. */
typedef struct AcquireResult
{
	bool		acquired;
	int64		token;
	int64		lease_left_ms;	/* ours when acquired, else the current holder's; -1 unknown */
} AcquireResult;

/*
 * Run the acquire script once. Throws on failure (pending state is left for the abort to undo).
 */
static void
acquire_call(const char *key, int ttl_ms, const char *mode, bool interruptible, AcquireResult *res)
{
	RedisServer *server = server_for_call(interruptible);
	LockKeys	keys;
	RedisCommand cmd;
	RedisScriptId id = SCRIPT_ACQUIRE;
	redisReply *reply;
	RedisError	err;
	char		ttl[16];
	char		liveness[16];
	const char *args[4];
	LockRef		ref = {redislock_key_prefix, key};
	bool		ok;

	snprintf(ttl, sizeof(ttl), "%d", ttl_ms);
	snprintf(liveness, sizeof(liveness), "%d", waiter_liveness_ms());
	args[0] = redislock_holder_id();
	args[1] = ttl;
	args[2] = mode;
	args[3] = liveness;
	lock_keys_build(&ref, &keys);
	redis_script_command(&cmd, id, &keys, 4, args);
	ok = redis_run_scripts(server, 1, &cmd, &id, &reply, redislock_command_timeout_ms,
						   interruptible, &err);
	lock_keys_free(&keys);
	if (!ok)
	{
		/* a call that never reached Redis has nothing to undo */
		if (!err.sent)
			lock_table_clear_pending();
		redis_raise(&err);
	}

	if (reply->type == REDIS_REPLY_ERROR)
		redis_error_from_reply(server, reply, &err);
	else if (reply->type != REDIS_REPLY_ARRAY || reply->elements < 2 ||
			 !reply_is_integer(reply->element[0]) ||
			 !reply_is_integer(reply->element[1]) ||
			 (reply->element[0]->integer == 1 &&
			  (reply->elements != 3 || !reply_is_integer(reply->element[2]))))
		redis_error_malformed(server, "acquire script answered with an unexpected shape", &err);
	else
	{
		res->acquired = reply->element[0]->integer == 1;
		if (res->acquired)
		{
			res->token = reply->element[1]->integer;
			res->lease_left_ms = reply->element[2]->integer;
		}
		else
		{
			res->token = 0;
			res->lease_left_ms = reply->element[1]->integer;
		}
		freeReplyObject(reply);
		return;
	}
	freeReplyObject(reply);
	redis_raise(&err);
}

/*
 * Take the lock only if it is free and nobody is queued for it. Never waits.
 */
bool
redis_lock_try(const char *key, int ttl_ms, int64 *token, TimestampTz *lease_start)
{
	AcquireResult res;
	TimestampTz sent = GetCurrentTimestamp();

	lock_table_set_pending(key);
	acquire_call(key, ttl_ms, "try", true, &res);
	lock_table_clear_pending();
	*token = res.token;
	*lease_start = sent;
	return res.acquired;
}

typedef enum GrantWait
{
	GRANT_RECEIVED,
	GRANT_NOT_YET,				/* block_ms passed without a grant */
	GRANT_CONNECTION_LOST		/* the connection broke: re-check on a new one */
} GrantWait;

/*
 * Block in BLPOP on our grant list for up to block_ms; *token is set when the lock was handed to us.
 */
static GrantWait
wait_for_grant(const char *key, int block_ms, int64 *token)
{
	RedisServer *server = redis_primary_server();
	RedisCommand cmd;
	redisReply *reply;
	RedisError	err;
	char	   *grant_key;
	char		seconds[32];
	bool		granted = false;

	grant_key = psprintf("{%s%s}:g:%s", redislock_key_prefix, key, redislock_holder_id());
	snprintf(seconds, sizeof(seconds), "%d.%03d", block_ms / 1000, block_ms % 1000);
	cmd.argc = 3;
	cmd.argv[0] = "BLPOP";
	cmd.argvlen[0] = 5;
	cmd.argv[1] = grant_key;
	cmd.argvlen[1] = strlen(grant_key);
	cmd.argv[2] = seconds;
	cmd.argvlen[2] = strlen(seconds);
	if (!redis_roundtrip(server, 1, &cmd, &reply, block_ms + redislock_command_timeout_ms, true, &err))
	{
		pfree(grant_key);

		/*
		 * The connection that carries our wake-up broke (CLIENT KILL, a proxy, a network blip). Our
		 * place in the queue outlives it until the heartbeat lapses, and a grant meanwhile is
		 * recorded in Redis: the caller re-checks on a new connection, and fails only if that fails.
		 */
		if (err.connection_lost)
			return GRANT_CONNECTION_LOST;
		redis_raise(&err);
	}
	pfree(grant_key);

	if (reply->type == REDIS_REPLY_NIL)
	{
		freeReplyObject(reply);
		return GRANT_NOT_YET;
	}
	if (reply->type == REDIS_REPLY_ERROR)
		redis_error_from_reply(server, reply, &err);
	else if (reply->type == REDIS_REPLY_ARRAY && reply->elements == 2 &&
			 reply->element[1]->type == REDIS_REPLY_STRING &&
			 reply->element[1]->len > 0 && reply->element[1]->len < 21)
	{
		char		buf[24];
		char	   *end;

		memcpy(buf, reply->element[1]->str, reply->element[1]->len);
		buf[reply->element[1]->len] = '\0';
		errno = 0;
		*token = strtoll(buf, &end, 10);
		granted = (errno == 0 && *end == '\0' && *token > 0);
		if (!granted)
			redis_error_malformed(server, "the grant list held something that is not a token", &err);
	}
	else
		redis_error_malformed(server, "BLPOP answered with an unexpected shape", &err);
	freeReplyObject(reply);
	if (!granted)
		redis_raise(&err);
	return GRANT_RECEIVED;
}

static long
ms_left(TimestampTz deadline)
{
	TimestampTz now = GetCurrentTimestamp();

	return now >= deadline ? 0 : (long) ((deadline - now) / 1000);
}

/*
 * Leave the queue (and give back a grant that raced with our leaving), then report the lock timeout.
 */
static void
give_up_wait(const char *key, int timeout_ms)
{
	LockRef		ref = {redislock_key_prefix, key};
	int			owned;
	RedisError	err;

	if (redis_lock_release_many(1, &ref, &owned, false, &err))
		lock_table_clear_pending();
	/* else the pending key stays, and the abort of this transaction retries */
	ereport(ERROR,
			(errcode(ERRCODE_LOCK_NOT_AVAILABLE),
			 errmsg("could not obtain redis lock \"%s\" within %d ms", key, timeout_ms),
			 errhint("The timeout comes from the timeout argument, or else from lock_timeout.")));
}

/*
 * Wait in the lock's FIFO queue until we own it, and return the fencing token. timeout_ms 0 waits
 * without limit (cancel and statement_timeout still end the wait). *lease_start is set no later than
 * the moment Redis granted the lease.
 */
int64
redis_lock_wait(const char *key, int ttl_ms, int timeout_ms, TimestampTz *lease_start)
{
	TimestampTz deadline = 0;
	TimestampTz not_granted_at = 0;
	const char *mode = "wait";
	AcquireResult res;

	if (timeout_ms > 0)
		deadline = TimestampTzPlusMilliseconds(GetCurrentTimestamp(), timeout_ms);
	lock_table_set_pending(key);

	for (;;)
	{
		TimestampTz sent = GetCurrentTimestamp();
		int			block_ms = REDISLOCK_RECHECK_MS;

		CHECK_FOR_INTERRUPTS();
		acquire_call(key, ttl_ms, mode, true, &res);
		if (res.acquired)
		{
			/* a grant found by a re-check was made after our last look that saw none */
			*lease_start = strcmp(mode, "wait") == 0 ? sent : not_granted_at;
			break;
		}
		not_granted_at = sent;
		mode = "recheck";

		/* sleep no longer than the current lease: if it runs out unreleased, the queue moves on */
		if (res.lease_left_ms >= 0 && res.lease_left_ms + 5 < block_ms)
			block_ms = (int) res.lease_left_ms + 5;
		if (deadline != 0)
		{
			long		left = ms_left(deadline);

			if (left <= 0)
				give_up_wait(key, timeout_ms);
			block_ms = Min(block_ms, left);
		}
		block_ms = Max(block_ms, 10);

		sent = GetCurrentTimestamp();
		switch (wait_for_grant(key, block_ms, &res.token))
		{
			case GRANT_RECEIVED:
				*lease_start = not_granted_at;
				lock_table_clear_pending();
				return res.token;
			case GRANT_NOT_YET:
				not_granted_at = sent;
				break;
			case GRANT_CONNECTION_LOST:
				/* not_granted_at stays: a grant may have come at any time since */
				break;
		}
		if (deadline != 0 && ms_left(deadline) <= 0)
			give_up_wait(key, timeout_ms);
	}
	lock_table_clear_pending();
	return res.token;
}

/*
 * Run n commands of one script, whose keys are lk[], in one round trip, and read each answer as 1 or
 * 0 into answers[]. Frees lk[]'s keys and every reply. Returns false with err set on any failure.
 */
static bool
run_yes_no_scripts(RedisServer *server, int n, RedisScriptId id, RedisCommand *cmds, LockKeys *lk,
				   int *answers, bool interruptible, RedisError *err)
{
	RedisScriptId *ids = palloc(n * sizeof(RedisScriptId));
	redisReply **replies = palloc0(n * sizeof(redisReply *));
	bool		ok;

	for (int i = 0; i < n; i++)
		ids[i] = id;
	ok = redis_run_scripts(server, n, cmds, ids, replies, redislock_command_timeout_ms,
						   interruptible, err);
	for (int i = 0; ok && i < n; i++)
	{
		if (replies[i]->type == REDIS_REPLY_ERROR)
		{
			redis_error_from_reply(server, replies[i], err);
			ok = false;
		}
		else if (!reply_is_integer(replies[i]))
		{
			redis_error_malformed(server, "a script answered with an unexpected shape", err);
			ok = false;
		}
		else
			answers[i] = replies[i]->integer == 1;
	}
	redis_free_replies(n, replies);
	for (int i = 0; i < n; i++)
		lock_keys_free(&lk[i]);
	pfree(replies);
	pfree(ids);
	return ok;
}

/*
 * The release script commands for refs[0..n-1] into cmds[], their keys into lk[] (freed by the caller
 * with lock_keys_free); whole: with the script's text (EVAL) rather than its SHA1.
 */
void
release_commands_build(int n, const LockRef *refs, bool whole, RedisCommand *cmds, LockKeys *lk)
{
	const char *args[1] = {redislock_holder_id()};

	for (int i = 0; i < n; i++)
	{
		lock_keys_build(&refs[i], &lk[i]);
		if (whole)
			redis_script_command_whole(&cmds[i], SCRIPT_RELEASE, &lk[i], 1, args);
		else
			redis_script_command(&cmds[i], SCRIPT_RELEASE, &lk[i], 1, args);
	}
}

/* Release refs[0..n-1] on server in one round trip; whole: send the script's text (EVAL). */
static bool
release_on(RedisServer *server, int n, const LockRef *refs, int *owned, bool whole,
		   bool interruptible, RedisError *err)
{
	RedisCommand *cmds = palloc(n * sizeof(RedisCommand));
	LockKeys   *lk = palloc(n * sizeof(LockKeys));
	bool		ok;

	release_commands_build(n, refs, whole, cmds, lk);
	ok = run_yes_no_scripts(server, n, SCRIPT_RELEASE, cmds, lk, owned, interruptible, err);
	pfree(lk);
	pfree(cmds);
	return ok;
}

/*
 * Release locks (or leave their queues) in one round trip. owned[i] says whether we still owned refs[i]
 * (1) or had lost it (0). Returns false with err set when Redis could not be reached; never throws
 * unless interruptible.
 */
bool
redis_lock_release_many(int n, const LockRef *refs, int *owned, bool interruptible, RedisError *err)
{
	return release_on(server_for_call(interruptible), n, refs, owned, false, interruptible, err);
}

/*
 * Run again, on server (the connection they were first sent on, whatever the settings say now) and with
 * the script's text, releases whose EVALSHA met NOSCRIPT. Not interruptible; as
 * redis_lock_release_many otherwise.
 */
bool
redis_lock_release_again(RedisServer *server, int n, const LockRef *refs, int *owned,
						 RedisError *err)
{
	return release_on(server, n, refs, owned, true, false, err);
}

/*
 * Check in one round trip that holders[i] (NULL: this backend) still owns refs[i] with tokens[i],
 * and keep each for keep_ms[i] more: the check before commit, and the lease keeper's renewal. kept[i]
 * is 1 or 0. Returns false with err set when Redis could not answer.
 */
bool
redis_lock_verify_many(int n, const LockRef *refs, const char *const *holders, const int64 *tokens,
					   const int *keep_ms, int *kept, bool interruptible, RedisError *err)
{
	RedisCommand *cmds = palloc(n * sizeof(RedisCommand));
	LockKeys   *lk = palloc(n * sizeof(LockKeys));
	char	  (*token_text)[24] = palloc(n * sizeof(*token_text));
	char	  (*keep_text)[16] = palloc(n * sizeof(*keep_text));
	bool		ok;

	for (int i = 0; i < n; i++)
	{
		const char *args[3];

		snprintf(token_text[i], sizeof(token_text[i]), INT64_FORMAT, tokens[i]);
		snprintf(keep_text[i], sizeof(keep_text[i]), "%d", keep_ms[i]);
		args[0] = holders && holders[i] ? holders[i] : redislock_holder_id();
		args[1] = token_text[i];
		args[2] = keep_text[i];
		lock_keys_build(&refs[i], &lk[i]);
		redis_script_command(&cmds[i], SCRIPT_VERIFY, &lk[i], 3, args);
	}
	ok = run_yes_no_scripts(server_for_call(interruptible), n, SCRIPT_VERIFY, cmds, lk, kept,
							interruptible, err);
	pfree(lk);
	pfree(token_text);
	pfree(keep_text);
	pfree(cmds);
	return ok;
}

/* What Redis knows of a lock now. Throws on failure. */
void
redis_lock_info_fetch(const char *key, LockInfo *info)
{
	RedisServer *server = server_for_call(true);
	LockKeys	keys;
	RedisCommand cmd;
	RedisScriptId id = SCRIPT_INFO;
	redisReply *reply;
	RedisError	err;
	LockRef		ref = {redislock_key_prefix, key};
	bool		ok;

	lock_keys_build(&ref, &keys);
	redis_script_command(&cmd, id, &keys, 0, NULL);
	ok = redis_run_scripts(server, 1, &cmd, &id, &reply, redislock_command_timeout_ms, true, &err);
	lock_keys_free(&keys);
	if (!ok)
		redis_raise(&err);

	if (reply->type == REDIS_REPLY_ERROR)
		redis_error_from_reply(server, reply, &err);
	else if (reply->type != REDIS_REPLY_ARRAY || reply->elements != 4 ||
			 reply->element[0]->type != REDIS_REPLY_STRING ||
			 !reply_is_integer(reply->element[1]) ||
			 !reply_is_integer(reply->element[2]) ||
			 !reply_is_integer(reply->element[3]))
		redis_error_malformed(server, "info script answered with an unexpected shape", &err);
	else
	{
		info->held = reply->element[0]->len > 0;
		info->holder = info->held ? pnstrdup(reply->element[0]->str, reply->element[0]->len) : NULL;
		info->token = reply->element[1]->integer;
		info->lease_left_ms = reply->element[2]->integer;
		info->waiters = reply->element[3]->integer;
		freeReplyObject(reply);
		return;
	}
	freeReplyObject(reply);
	redis_raise(&err);
}
