/*
 * lock_ops.c
 *		Taking a lock in Redis: try, wait in the FIFO queue; and the checks that read a lock: verify (the
 *		check before commit, the keeper's renewal) and info.
 *
 * Each operation is one script call (scripts.c), so one round trip. A waiting backend blocks in BLPOP
 * on its acquisition's own grant list: the releasing backend's script hands the lock over and pushes
 * the fencing token there, which wakes exactly that waiter with nothing more to ask. Every BLPOP is
 * bounded by REDISLOCK_RECHECK_MS, after which the waiter re-runs the acquire script: that re-check
 * is its heartbeat in the queue and catches a lease that ran out without a release (a holder that
 * died) or a wake-up that never came.
 *
 * Every call names its acquisition (names.c). The caller has handed the acquisition's release ticket to
 * release.c (release_call_started) before the call; each round trip that may have reached Redis is
 * reported with release_call_sent, so that a call cut short is undone — by that acquisition's id,
 * which never touches anyone else's lock, nor a later lock of this backend. Before its round trip,
 * every operation lets release.c read and settle what earlier releases owe (release_settle).
 */
#include "redislock.h"

#include <errno.h>
#include <unistd.h>

#include "miscadmin.h"
#include "pgstat.h"
#include "postmaster/postmaster.h"
#include "storage/latch.h"
#include "port.h"
#include "utils/memutils.h"
#include "utils/timestamp.h"

/*
 * Before a lock operation: the answers that earlier releases owe are read and every release whose
 * outcome is unknown has run (they come first on the stream).
 */
static void
settle_before_call(bool interruptible)
{
	release_settle(interruptible);
}

/*
 * How long a queued waiter that stops re-checking is still taken for alive: between two re-checks it
 * blocks for a heartbeat, and each of the two round trips may wait for replicas.
 */
static int
waiter_liveness_ms(void)
{
	return 2 * REDISLOCK_RECHECK_MS + redislock_command_timeout_ms + 2 * replicas_extra_ms();
}

/*
 * An acquisition the replicas did not acknowledge in time is undone at once (the next waiter gets the
 * lock), and the call fails: 55P03 when too few replicas answered, else what went wrong with WAIT.
 */
static void
undo_unacknowledged(const LockRef *ref, RedisError *err)
{
	ReleaseTicket *ticket = release_call_finished();
	int			owned;
	RedisError	undo_err;

	(void) release_now(1, &ticket, &owned, &undo_err);
	if (err->sqlstate != ERRCODE_LOCK_NOT_AVAILABLE)
		redis_raise(err);
	stats_add(STATS_REDIS_ERRORS, 1);
	ereport(ERROR,
			(errcode(ERRCODE_LOCK_NOT_AVAILABLE),
			 errmsg("redis lock \"%s\" was not acknowledged by enough replicas, and was given up", ref->key),
			 errdetail_internal("%s.", err->message),
			 errhint("%s", err->hint)));
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
	bool		place_gone;		/* a re-check found its place in the queue gone: join again */
	bool		wrong_kind;		/* the key is in use as the other kind, or with other permits: */
	char		other_kind[16]; /* 'lock' or 'semaphore' */
	int64		other_permits;
	int64		token;
	int64		lease_left_ms;	/* ours when acquired, else the current holder's; -1 unknown */
} AcquireResult;

/* One acquire script call, built; its strings live here. */
typedef struct AcquireCommand
{
	LockKeys	keys;
	char		ttl[16];
	char		liveness[16];
	char		lock_mode[2];
	char		permits[16];
	const char *args[6];
} AcquireCommand;

static void
acquire_command(const LockRef *ref, LockRequest req, const char *acquisition, int ttl_ms,
				const char *mode, AcquireCommand *ac, RedisCommand *cmd)
{
	snprintf(ac->ttl, sizeof(ac->ttl), "%d", ttl_ms);
	snprintf(ac->liveness, sizeof(ac->liveness), "%d", waiter_liveness_ms());
	ac->lock_mode[0] = (char) req.mode;
	ac->lock_mode[1] = '\0';
	snprintf(ac->permits, sizeof(ac->permits), "%d", req.permits);
	ac->args[0] = acquisition;
	ac->args[1] = ac->ttl;
	ac->args[2] = mode;
	ac->args[3] = ac->liveness;
	ac->args[4] = ac->lock_mode;
	ac->args[5] = ac->permits;
	names_lock_keys(ref, &ac->keys);
	/* exclusive is the script's default: the common call stays short */
	script_command(cmd, SCRIPT_ACQUIRE, &ac->keys, req.mode == LOCK_EXCLUSIVE ? 4 : 6, ac->args);
}

/*
 * The acquire script found the key in use as the other kind (a lock, a semaphore) or with other
 * permits: 22023, naming both.
 */
static void
wrong_kind(const LockRef *ref, LockRequest req, const AcquireResult *res)
{
	if (req.mode == LOCK_SEMAPHORE && strcmp(res->other_kind, "semaphore") == 0)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("redis semaphore \"%s\" is in use with %lld permits, not %d", ref->key,
						(long long) res->other_permits, req.permits),
				 errhint("Every caller of one semaphore must give the same number of permits.")));
	ereport(ERROR,
			(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
			 errmsg("redis key \"%s\" is in use as a %s, not as a %s", ref->key,
					strcmp(res->other_kind, "semaphore") == 0 ? "semaphore" : "lock",
					req.mode == LOCK_SEMAPHORE ? "semaphore" : "lock"),
			 errhint("A key is either a lock (exclusive or shared) or a semaphore while anyone holds or waits for it.")));
}

/*
 * Read the acquire script's reply into res; false with err set when it is an error or malformed.
 * res->wrong_kind: the key is in use as the other kind (the caller frees the replies, then raises it).
 */
static bool
acquire_reply(RedisServer *server, const redisReply *reply, AcquireResult *res, RedisError *err)
{
	res->wrong_kind = false;
	if (reply->type == REDIS_REPLY_ARRAY && reply->elements == 3 && reply_is_integer(reply->element[0]) &&
		reply->element[0]->integer == 3 && reply->element[1]->type == REDIS_REPLY_STRING &&
		reply_is_integer(reply->element[2]))
	{
		res->wrong_kind = true;
		res->acquired = res->place_gone = false;
		snprintf(res->other_kind, sizeof(res->other_kind), "%.*s",
				 (int) Min(reply->element[1]->len, sizeof(res->other_kind) - 1), reply->element[1]->str);
		res->other_permits = reply->element[2]->integer;
		return true;
	}
	if (reply->type == REDIS_REPLY_ERROR)
		redis_error_from_reply(server, reply, err);
	else if (reply->type != REDIS_REPLY_ARRAY || reply->elements < 2 ||
			 !reply_is_integer(reply->element[0]) ||
			 !reply_is_integer(reply->element[1]) ||
			 (reply->element[0]->integer == 1 &&
			  (reply->elements != 3 || !reply_is_integer(reply->element[2]))))
		redis_error_malformed(server, "acquire script answered with an unexpected shape", err);
	else if (reply->element[0]->integer < 0 || reply->element[0]->integer > 2)
		redis_error_malformed(server, "acquire script answered with an unexpected verdict", err);
	else
	{
		res->acquired = reply->element[0]->integer == 1;
		res->place_gone = reply->element[0]->integer == 2;
		res->token = res->acquired ? reply->element[1]->integer : 0;
		res->lease_left_ms = res->acquired ? reply->element[2]->integer : reply->element[1]->integer;
		return true;
	}
	return false;
}

/*
 * Whether a failure lets a wait in Sentinel or Cluster mode go on: the master could not be reached, or
 * the connection broke (a failover closes every client; in Cluster mode the slot's master may have
 * died, and its replica takes over once the cluster notices). The acquire script is safe to run again for the
 * same acquisition (it finds itself owner, or queued, and keeps that), so whether it was sent does
 * not matter. The wait then asks Sentinel again until its deadline.
 */
static bool
may_retry_for_failover(bool may_wait_for_master, const RedisError *err)
{
	return may_wait_for_master && (err->unreachable || err->connection_lost);
}

/*
 * A connection to the server of a lock (a cancel while connecting leaves nothing to undo). In Cluster
 * mode a node that cannot be reached may have been failed over: the map is asked for again, and when
 * it names another node for the slot, that one is tried. NULL with err set on failure.
 */
static RedisServer *
connect_for_lock(const LockRef *ref, RedisError *err)
{
	RedisServer *server = cluster_server_for_lock(ref, true, err);

	if (server != NULL && redis_ensure_connected(server, true, err))
		return server;
	if (!cluster_mode())
		return NULL;
	cluster_server_failed();
	if (server != NULL)
	{
		/* (asking for the map must not overwrite why the first node failed) */
		RedisError	again_err;
		RedisServer *again = cluster_server_for_lock(ref, true, &again_err);

		if (again != NULL && again != server)
		{
			if (redis_ensure_connected(again, true, err))
				return again;
			cluster_server_failed();
		}
	}
	return NULL;
}

/*
 * Run the acquire script once for acquisition (followed by WAIT when replicas must acknowledge).
 * Throws on failure (release.c undoes what was sent) — except, when may_wait_for_master, a master that
 * cannot be reached or a connection that broke: then it returns false with *failure saying why.
 */
static bool
acquire_call(const LockRef *ref, LockRequest req, const char *acquisition, int ttl_ms, const char *mode,
			 AcquireResult *res, bool may_wait_for_master, RedisError *failure)
{
	RedisServer *server;
	AcquireCommand ac;
	RedisCommand cmds[2];
	RedisScriptId ids[2] = {SCRIPT_ACQUIRE, SCRIPT_NONE};
	redisReply *replies[2] = {NULL, NULL};
	RedisError	err;
	int			ncmds;
	bool		ok;
	bool		was_sent;

	/* what earlier releases owe comes first on the stream */
	if (!release_settle_reporting(true, &err))
	{
		if (may_retry_for_failover(may_wait_for_master, &err))
		{
			*failure = err;
			return false;
		}
		redis_raise(&err);
	}
	cluster_check_settings();
	server = connect_for_lock(ref, &err);
	/* a cancel while connecting (a TLS handshake that hangs) leaves nothing to undo */
	if (server == NULL)
	{
		if (may_retry_for_failover(may_wait_for_master, &err))
		{
			*failure = err;
			return false;
		}
		redis_raise(&err);
	}
	acquire_command(ref, req, acquisition, ttl_ms, mode, &ac, &cmds[0]);
	ncmds = replicas_append_wait(cmds, ids, 1);
	/* from here on the call may reach Redis, even if an interrupt ends the wait for its answer */
	was_sent = release_call_sent(true);
	ok = script_run(server, ncmds, cmds, ids, replies,
					redislock_command_timeout_ms + replicas_extra_ms(), true, &err);
	names_lock_keys_free(&ac.keys);
	if (!ok)
	{
		/* a call that never left (Redis refused the connection) has nothing to undo */
		if (!err.sent)
			release_call_sent(was_sent);
		if (err.unreachable || err.connection_lost)
			cluster_server_failed();
		if (may_retry_for_failover(may_wait_for_master, &err))
		{
			*failure = err;
			return false;
		}
		redis_raise(&err);
	}
	ok = acquire_reply(server, replies[0], res, &err);
	if (ok && res->wrong_kind)
	{
		redis_free_replies(ncmds, replies);
		wrong_kind(ref, req, res);
	}
	/* a lock taken must be on enough replicas; a place in the queue need not */
	if (ok && res->acquired && ncmds > 1 && !replicas_acknowledged(server, replies[1], &err))
	{
		redis_free_replies(ncmds, replies);
		undo_unacknowledged(ref, &err);
	}
	redis_free_replies(ncmds, replies);
	if (!ok)
		redis_raise(&err);
	return true;
}

/*
 * Take the lock only if it is free and nobody is queued for it. Never waits. *lease_start_ms
 * (monotonic) is no later than the lease began.
 */
bool
lockop_try(const LockRef *ref, LockRequest req, const char *acquisition, int ttl_ms, int64 *token,
		   int64 *lease_start_ms)
{
	AcquireResult res;
	int64		sent = redislock_monotonic_ms();

	(void) acquire_call(ref, req, acquisition, ttl_ms, "try", &res, false, NULL);
	if (res.acquired)
		stats_add(STATS_IMMEDIATE, 1);
	*token = res.token;
	*lease_start_ms = sent;
	return res.acquired;
}

typedef enum GrantWait
{
	GRANT_RECEIVED,
	GRANT_NOT_YET,				/* block_ms passed without a grant */
	GRANT_CONNECTION_LOST		/* the connection broke: re-check on a new one */
} GrantWait;

/*
 * Block in BLPOP on the acquisition's grant list for up to block_ms; *token is set when the lock was
 * handed to it. When replicas must acknowledge the grant, the BLPOP is followed in the same write by a
 * re-check (the acquire script, which confirms the grant with a write of this connection's own) and
 * WAIT: WAIT counts only what the waiting connection itself wrote, and whether the pop of a BLPOP
 * served by another client's push counts as the waiter's write is Redis's internal affair (7.0.15
 * counts it); our own write makes it certain, for one script run and no round trip. Only a grant
 * found by BLPOP counts here; any other outcome is left to the caller's next re-check.
 */
static GrantWait
wait_for_grant(const LockRef *ref, LockRequest req, const char *acquisition, int ttl_ms, int block_ms,
			   int64 *token,
			   bool may_wait_for_master)
{
	RedisServer *server;
	RedisCommand cmds[3];
	RedisScriptId ids[3] = {SCRIPT_NONE, SCRIPT_ACQUIRE, SCRIPT_NONE};
	redisReply *replies[3] = {NULL, NULL, NULL};
	redisReply *reply;
	AcquireCommand ac;
	AcquireResult confirmed;
	RedisError	err;
	char	   *grant_key = names_grant_key(ref, acquisition);
	char		seconds[32];
	bool		granted = false;
	bool		confirm = redislock_wait_replicas > 0;
	int			ncmds = 1;
	bool		ok;

	server = cluster_server_for_lock(ref, true, &err);
	if (server == NULL)
	{
		pfree(grant_key);
		if (may_retry_for_failover(may_wait_for_master, &err))
			return GRANT_CONNECTION_LOST;
		redis_raise(&err);
	}
	snprintf(seconds, sizeof(seconds), "%d.%03d", block_ms / 1000, block_ms % 1000);
	cmds[0].argc = 3;
	cmds[0].argv[0] = "BLPOP";
	cmds[0].argvlen[0] = 5;
	cmds[0].argv[1] = grant_key;
	cmds[0].argvlen[1] = strlen(grant_key);
	cmds[0].argv[2] = seconds;
	cmds[0].argvlen[2] = strlen(seconds);
	if (confirm)
	{
		acquire_command(ref, req, acquisition, ttl_ms, "recheck", &ac, &cmds[1]);
		ncmds = replicas_append_wait(cmds, ids, 2);
	}
	ok = script_run(server, ncmds, cmds, ids, replies,
					block_ms + redislock_command_timeout_ms + replicas_extra_ms(), true, &err);
	if (confirm)
		names_lock_keys_free(&ac.keys);
	pfree(grant_key);
	if (!ok)
	{
		/*
		 * The connection that carries our wake-up broke (CLIENT KILL, a proxy, a network blip, a
		 * failover). Our place in the queue outlives it until the heartbeat lapses, and a grant
		 * meanwhile is recorded in Redis: the caller re-checks on a new connection, and fails only if
		 * that fails (and then release.c undoes the wait as soon as Redis can be reached).
		 */
		if (err.unreachable || err.connection_lost)
			cluster_server_failed();
		if (err.connection_lost || may_retry_for_failover(may_wait_for_master, &err))
			return GRANT_CONNECTION_LOST;
		redis_raise(&err);
	}

	reply = replies[0];
	if (reply->type == REDIS_REPLY_NIL || script_reply_not_run(reply))
	{
		/*
		 * Nothing granted yet, or (Redis Cluster) the lock's slot moved or is moving: MOVED has
		 * corrected the map, and the next re-check follows the slot to its node.
		 */
		bool		moving = reply->type == REDIS_REPLY_ERROR;

		if (moving)
		{
			RedisServer *to;
			bool		ask;

			(void) cluster_redirection(reply, server, &to, &ask);
		}
		redis_free_replies(ncmds, replies);
		/* while a slot is half moved, BLPOP is turned away at once: do not spin on it */
		if (moving)
		{
			(void) WaitLatch(MyLatch, WL_LATCH_SET | WL_TIMEOUT | WL_EXIT_ON_PM_DEATH,
							 Min(block_ms, 50), redis_wait_event());
			ResetLatch(MyLatch);
			CHECK_FOR_INTERRUPTS();
		}
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
	if (granted && confirm)
	{
		/* the re-check behind the BLPOP must find the same grant, and the replicas must have it */
		if (!acquire_reply(server, replies[1], &confirmed, &err))
			granted = false;
		else if (!confirmed.acquired || confirmed.token != *token)
		{
			redis_free_replies(ncmds, replies);
			return GRANT_NOT_YET;	/* the grant is gone already: the next re-check says why */
		}
		else if (!replicas_acknowledged(server, replies[2], &err))
		{
			redis_free_replies(ncmds, replies);
			undo_unacknowledged(ref, &err);
		}
	}
	redis_free_replies(ncmds, replies);
	if (!granted)
		redis_raise(&err);
	return GRANT_RECEIVED;
}

/*
 * Leave the queue now (and give on a grant that raced with our leaving), then report the lock
 * timeout. Should Redis not answer, the undo stays owed (release.c).
 */
static void
give_up_wait(const LockRef *ref, int timeout_ms)
{
	ReleaseTicket *ticket = release_call_finished();
	int			owned;
	RedisError	err;

	(void) release_now(1, &ticket, &owned, &err);
	stats_add(STATS_TIMEOUTS, 1);
	stats_note_wait(timeout_ms);
	ereport(ERROR,
			(errcode(ERRCODE_LOCK_NOT_AVAILABLE),
			 errmsg("could not obtain redis lock \"%s\" within %d ms", ref->key, timeout_ms),
			 errhint("The timeout comes from the timeout argument, or else from lock_timeout.")));
}

/*
 * Fail this wait with 40P01 if it is the victim of a deadlock (deadlock.c): leave the queue first (and
 * give on a grant that raced with it), as a timeout does.
 */
static void
look_for_deadlock(const LockRef *ref, LockRequest req, const char *acquisition, int64 since_us)
{
	StringInfoData report;
	ReleaseTicket *ticket;
	int			owned;
	RedisError	err;

	initStringInfo(&report);
	if (!deadlock_check(ref, (char) req.mode, acquisition, since_us, &report))
	{
		pfree(report.data);
		return;
	}
	deadlock_unpublish(ref);
	ticket = release_call_finished();
	(void) release_now(1, &ticket, &owned, &err);
	stats_add(STATS_DEADLOCKS, 1);
	ereport(ERROR,
			(errcode(ERRCODE_T_R_DEADLOCK_DETECTED),
			 errmsg("deadlock detected"),
			 errdetail_internal("%s", report.data),
			 errhint("Take redis locks (and PostgreSQL locks) in one order everywhere, or use redis_wait_locks.")));
}

/*
 * Who holds the lock now, for a log line: palloc'd, or NULL when Redis cannot say. Never throws for
 * Redis's sake (a wait must not fail for its log line).
 */
static char *
current_holder(const LockRef *ref)
{
	LockKeys	keys;
	RedisCommand cmd;
	RedisScriptId id = SCRIPT_INFO;
	redisReply *reply = NULL;
	RedisError	err;
	char	   *holder = NULL;

	names_lock_keys(ref, &keys);
	script_command(&cmd, id, &keys, 0, NULL);
	if (script_run_routed(1, &cmd, &id, &reply, redislock_command_timeout_ms, true, &err))
	{
		if (reply->type == REDIS_REPLY_ARRAY && reply->elements == 6 &&
			reply->element[0]->type == REDIS_REPLY_STRING && reply->element[0]->len > 0)
			holder = pnstrdup(reply->element[0]->str, reply->element[0]->len);
		freeReplyObject(reply);
	}
	names_lock_keys_free(&keys);
	return holder;
}

/* redislock.log_lock_waits: a wait that lasts, and its end, in the server log. */
static void
log_wait(const LockRef *ref, int64 waited_ms, bool acquired)
{
	char	   *holder;

	if (acquired)
	{
		ereport(LOG,
				(errmsg("process %d acquired redis lock \"%s\" after %lld ms", MyProcPid, ref->key,
						(long long) waited_ms)));
		return;
	}
	holder = current_holder(ref);
	ereport(LOG,
			(errmsg("process %d still waiting for redis lock \"%s\" after %lld ms", MyProcPid, ref->key,
					(long long) waited_ms),
			 holder ? errdetail("Held by %s.", holder) : 0));
}

/*
 * Before the attempt-th retry of something that keeps failing (a connection that keeps breaking, a
 * master that cannot be reached): pause 100 ms, doubling up to a heartbeat, never past the deadline.
 */
static void
pause_before_retry(int attempt, int64 deadline)
{
	long		pause = Min(100L << Min(attempt - 1, 4), REDISLOCK_RECHECK_MS);

	if (deadline != 0)
		pause = Min(pause, Max(deadline - redislock_monotonic_ms(), 0));
	(void) WaitLatch(MyLatch, WL_LATCH_SET | WL_TIMEOUT | WL_EXIT_ON_PM_DEATH, pause,
					 redis_wait_event());
	ResetLatch(MyLatch);
	CHECK_FOR_INTERRUPTS();
}

/*
 * Wait in the lock's FIFO queue until acquisition owns it, and return the fencing token. timeout_ms 0
 * waits without limit (cancel and statement_timeout still end the wait). *lease_start_ms (monotonic)
 * is no later than the moment Redis granted the lease.
 */
int64
lockop_wait(const LockRef *ref, LockRequest req, const char *acquisition, int ttl_ms, int timeout_ms,
			int64 *lease_start_ms)
{
	int64		deadline = 0;
	int64		not_granted_at = 0;
	const char *mode = "wait";
	AcquireResult res;
	int			losses = 0;		/* connections lost in a row while waiting for a grant */
	int64		started = redislock_monotonic_ms();
	bool		logged = false; /* redislock.log_lock_waits said we wait */
	bool		queued = false; /* it had to wait (counted once) */
	int			unreachable_in_a_row = 0;	/* Sentinel mode: attempts that found no master */
	RedisError	unreachable;
	bool		follow_failover = redislock_sentinels[0] != '\0' || cluster_mode();
	int64		since_us = GetCurrentTimestamp();	/* for the deadlock check's choice of victim */
	int64		deadlock_checked_ms = 0;	/* when this wait last looked for a deadlock, or 0 */

	if (timeout_ms > 0)
		deadline = redislock_monotonic_ms() + timeout_ms;

	for (;;)
	{
		int64		sent = redislock_monotonic_ms();
		int			block_ms = REDISLOCK_RECHECK_MS;

		CHECK_FOR_INTERRUPTS();
		if (!acquire_call(ref, req, acquisition, ttl_ms, mode, &res, follow_failover, &unreachable))
		{
			/*
			 * Sentinel mode: the master cannot be reached, as while Sentinel fails it over. The wait
			 * goes on (asking Sentinel again each time) until its deadline, and then fails with why.
			 */
			if (deadline != 0 && redislock_monotonic_ms() >= deadline)
				redis_raise(&unreachable);
			pause_before_retry(++unreachable_in_a_row, deadline);
			continue;
		}
		unreachable_in_a_row = 0;
		if (res.acquired)
		{
			/* a grant found by a re-check was made after our last look that saw none */
			*lease_start_ms = strcmp(mode, "wait") == 0 ? sent : not_granted_at;
			if (strcmp(mode, "wait") == 0 && !queued)
				stats_add(STATS_IMMEDIATE, 1);
			else
				stats_note_wait(redislock_monotonic_ms() - started);
			if (logged)
				log_wait(ref, redislock_monotonic_ms() - started, true);
			if (deadlock_checked_ms != 0)
				deadlock_unpublish(ref);
			return res.token;
		}
		not_granted_at = sent;
		if (!queued)
		{
			char		name[REDISLOCK_NAME_MAX + 1];

			queued = true;
			stats_add(STATS_WAITS, 1);
			lock_table_name(name, req.mode, ref->key);
			registry_wait_begin(ref->prefix, name);	/* for redis_lock_activity */
		}
		if (res.place_gone)
		{
			/* our heartbeat lapsed (a long pause) and the queue moved on: join again, at the tail */
			mode = "wait";
			continue;
		}
		mode = "recheck";

		/* sleep no longer than the current lease: if it runs out unreleased, the queue moves on */
		if (res.lease_left_ms >= 0 && res.lease_left_ms + 5 < block_ms)
			block_ms = (int) res.lease_left_ms + 5;
		if (deadline != 0)
		{
			int64		left = deadline - redislock_monotonic_ms();

			if (left <= 0)
				give_up_wait(ref, timeout_ms);
			block_ms = (int) Min(block_ms, left);
		}
		/* the first look for a deadlock comes at deadlock_timeout, not at the next heartbeat */
		if (redislock_deadlock_timeout_ms > 0 && deadlock_checked_ms == 0)
			block_ms = (int) Min(block_ms, started + redislock_deadlock_timeout_ms - redislock_monotonic_ms());
		block_ms = Max(block_ms, 10);

		sent = redislock_monotonic_ms();
		switch (wait_for_grant(ref, req, acquisition, ttl_ms, block_ms, &res.token, follow_failover))
		{
			case GRANT_RECEIVED:
				*lease_start_ms = not_granted_at;
				stats_note_wait(redislock_monotonic_ms() - started);
				if (logged)
					log_wait(ref, redislock_monotonic_ms() - started, true);
				if (deadlock_checked_ms != 0)
					deadlock_unpublish(ref);
				return res.token;
			case GRANT_NOT_YET:
				not_granted_at = sent;
				losses = 0;
				break;
			case GRANT_CONNECTION_LOST:
				/*
				 * not_granted_at stays: a grant may have come at any time since. Something that
				 * keeps closing the connection must not make us reconnect back to back: from
				 * the second loss in a row, pause (100 ms, doubling up to a heartbeat).
				 */
				if (++losses > 1)
					pause_before_retry(losses - 1, deadline);
				break;
		}
		if (deadline != 0 && redislock_monotonic_ms() >= deadline)
			give_up_wait(ref, timeout_ms);
		/*
		 * At deadlock_timeout: say what we wait for, and look for a deadlock, once, as PostgreSQL
		 * does (a cycle that closes later is found by the member that closes it, which looks after
		 * its own deadlock_timeout and finds this record). Then keep the record alive, every few
		 * heartbeats. Not right after a lost connection: the wait rides out a failover first.
		 */
		if (redislock_deadlock_timeout_ms > 0 && losses == 0 &&
			redislock_monotonic_ms() - started >= redislock_deadlock_timeout_ms)
		{
			if (deadlock_checked_ms == 0)
			{
				if (deadlock_publish(ref, (char) req.mode, acquisition, since_us, true))
				{
					deadlock_checked_ms = redislock_monotonic_ms();
					look_for_deadlock(ref, req, acquisition, since_us);
				}
			}
			else if (redislock_monotonic_ms() - deadlock_checked_ms >= DEADLOCK_REFRESH_MS &&
					 deadlock_publish(ref, (char) req.mode, acquisition, since_us, false))
				deadlock_checked_ms = redislock_monotonic_ms();
		}
		if (redislock_log_lock_waits && !logged &&
			redislock_monotonic_ms() - started >= REDISLOCK_LOG_WAIT_AFTER_MS)
		{
			log_wait(ref, redislock_monotonic_ms() - started, false);
			logged = true;
		}
	}
}

/*
 * Check in one round trip that acquisitions[i] still owns refs[i] with tokens[i], and keep each for
 * keep_ms[i] more: the check before commit, and the lease keeper's renewal. kept[i] is 1 or 0. Returns
 * false with err set when Redis could not answer, or (redislock.wait_replicas) too few replicas
 * acknowledged the renewals.
 */
bool
lockop_verify_many(int n, const LockRef *refs, const char *const *acquisitions, const int64 *tokens,
				   const int *keep_ms, int *kept, bool interruptible, RedisError *err)
{
	RedisCommand *cmds = palloc((n + 1) * sizeof(RedisCommand));	/* and WAIT */
	LockKeys   *keys = palloc(n * sizeof(LockKeys));
	char	  (*token_text)[24] = palloc(n * sizeof(*token_text));
	char	  (*keep_text)[16] = palloc(n * sizeof(*keep_text));
	bool		ok;

	for (int i = 0; i < n; i++)
	{
		const char *args[3];

		snprintf(token_text[i], sizeof(token_text[i]), INT64_FORMAT, tokens[i]);
		snprintf(keep_text[i], sizeof(keep_text[i]), "%d", keep_ms[i]);
		args[0] = acquisitions[i];
		args[1] = token_text[i];
		args[2] = keep_text[i];
		names_lock_keys(&refs[i], &keys[i]);
		script_command(&cmds[i], SCRIPT_VERIFY, &keys[i], 3, args);
	}
	settle_before_call(interruptible);
	ok = script_run_yes_no(n, SCRIPT_VERIFY, cmds, kept, redislock_wait_replicas > 0, interruptible, err);
	for (int i = 0; i < n; i++)
		names_lock_keys_free(&keys[i]);
	pfree(keys);
	pfree(token_text);
	pfree(keep_text);
	pfree(cmds);
	return ok;
}

/* Break the lock, whoever holds it; whether a live holder lost it. Throws on failure. */
bool
lockop_force(const LockRef *ref)
{
	LockKeys	keys;
	RedisCommand cmd;
	int			broke;
	RedisError	err;
	bool		ok;

	names_lock_keys(ref, &keys);
	script_command(&cmd, SCRIPT_FORCE, &keys, 0, NULL);
	settle_before_call(true);
	ok = script_run_yes_no(1, SCRIPT_FORCE, &cmd, &broke, false, true, &err);
	names_lock_keys_free(&keys);
	if (!ok)
		redis_raise(&err);
	return broke == 1;
}

/* What Redis knows of a lock now. Throws on failure. */
void
lockop_info(const LockRef *ref, LockInfo *info)
{
	RedisServer *server;
	LockKeys	keys;
	RedisCommand cmd;
	RedisScriptId id = SCRIPT_INFO;
	redisReply *reply;
	RedisError	err;
	bool		ok;

	settle_before_call(true);
	names_lock_keys(ref, &keys);
	script_command(&cmd, id, &keys, 0, NULL);
	ok = script_run_routed(1, &cmd, &id, &reply, redislock_command_timeout_ms, true, &err);
	server = ok ? script_answered_by(&cmd) : NULL;
	names_lock_keys_free(&keys);
	if (!ok)
		redis_raise(&err);

	if (reply->type == REDIS_REPLY_ERROR)
		redis_error_from_reply(server, reply, &err);
	else if (reply->type != REDIS_REPLY_ARRAY || reply->elements != 6 ||
			 reply->element[0]->type != REDIS_REPLY_STRING ||
			 !reply_is_integer(reply->element[1]) ||
			 !reply_is_integer(reply->element[2]) ||
			 !reply_is_integer(reply->element[3]) ||
			 !reply_is_integer(reply->element[4]) ||
			 reply->element[5]->type != REDIS_REPLY_STRING)
		redis_error_malformed(server, "info script answered with an unexpected shape", &err);
	else
	{
		info->held = reply->element[0]->len > 0;
		info->holder = info->held ? pnstrdup(reply->element[0]->str, reply->element[0]->len) : NULL;
		info->token = reply->element[1]->integer;
		info->lease_left_ms = reply->element[2]->integer;
		info->waiters = reply->element[3]->integer;
		info->holders = reply->element[4]->integer;
		info->mode = pnstrdup(reply->element[5]->str, reply->element[5]->len);
		freeReplyObject(reply);
		return;
	}
	freeReplyObject(reply);
	redis_raise(&err);
}
