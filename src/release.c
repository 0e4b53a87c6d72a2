/*
 * release.c
 *		Every release of a Redis lock, and the rule that what Redis owes us is read before we ask again.
 *
 * A release is made ready when the lock call that acquires starts: a ReleaseTicket holds the lock's
 * names, the acquisition id and the release command already formatted, and the arrays below are grown
 * to hold every ticket there is. Releasing at the end of a transaction — in commit and abort callbacks,
 * which must not raise an ERROR — then allocates nothing of PostgreSQL's.
 *
 * The release script acts only on the acquisition it names, so running a release twice, late, or
 * after the lock was lost is harmless. That is what lets this file keep one list of owed releases —
 * those whose outcome is not known yet — and run each again until Redis has answered it:
 *	- at COMMIT and ROLLBACK (and ROLLBACK TO SAVEPOINT) the releases are written in one write without
 *	  waiting (once Redis has answered the release script on that connection, and unless
 *	  redislock.synchronous_release); their answers are read before anything else is sent on that
 *	  connection, by release_settle, which every lock operation calls first;
 *	- a lock call cut short (an error, a cancel, a timeout) after it may have reached Redis leaves its
 *	  undo here: a wait whose connection broke and could not be made again still leaves the queue, and
 *	  gives on a grant it may have received, as soon as Redis can be reached;
 *	- a release that met NOSCRIPT, whose answer was lost (a cancel while reading, a broken connection),
 *	  or that could not be sent at all, is run again (EVALSHA, EVAL on NOSCRIPT) at the next settle.
 * An owed release is dropped once Redis has surely let the lock go by itself (its lease and the lock
 * hash's TTL, or the waiter's heartbeat, ran out), or when Redis answered it with an error.
 *
 * In Redis Cluster each release goes to the node that serves its lock's slot: the releases of one
 * transaction are one write per node. A release that meets MOVED or ASK (the slot moved, or its
 * master failed over, since this backend last looked) did not run; it is sent again to the node
 * named at once. So that this happens even when the session then sits idle, COMMIT in Cluster mode
 * gives the answers a short grace (RELEASE_CLUSTER_GRACE_MS, one round trip on a healthy network) to
 * arrive before it returns; answers later than that are read before the next command, as usual.
 *
 * A lock found already lost when released is a WARNING (after a commit; a ROLLBACK has nothing to
 * regret), unless the release may have run before and this is its second run. Undoing a call is
 * silent: the call's own ERROR has said what went wrong.
 */
#include "redislock.h"

#include "miscadmin.h"
#include "utils/memutils.h"

/* What is known of an owed release. */
typedef struct OwedState
{
	bool		sent;			/* written on server's current connection, answer not read yet */
	RedisServer *server;		/* where it was sent */
	RedisServer *route;			/* where it is about to be sent */
	bool		maybe_ran;		/* it may have run already: a 0 answer proves nothing */
	bool		warn_if_lost;	/* released after a commit, while held */
	bool		reading;		/* its answer is being read now */
	bool		ran_before;		/* maybe_ran before this send */
} OwedState;

static MemoryContext release_cxt = NULL;
static int	ntickets = 0;		/* tickets in existence: held locks, the call in flight, owed */
static int	capacity = 0;		/* room in every array below */
static ReleaseTicket **owed = NULL;
static OwedState *owed_state = NULL;
static int	nowed = 0;
static int	nenqueued = 0;		/* enqueued since the last release_at_xact_end */
static RedisFormatted *send_buf = NULL;
static redisReply **answers = NULL;

static ReleaseTicket *call_ticket = NULL;	/* the lock call in flight */
static bool call_sent = false;	/* it may have reached Redis */
static size_t ticket_bytes = 0;	/* the release commands of every live ticket */

/* Grow the arrays to hold n tickets; only where an ERROR is allowed. */
static void
reserve(int n)
{
	MemoryContext old;

	if (n <= capacity)
		return;
	n = Max(n, Max(16, 2 * capacity));
	old = MemoryContextSwitchTo(release_cxt);
	owed = owed ? repalloc(owed, n * sizeof(*owed)) : palloc(n * sizeof(*owed));
	owed_state = owed_state ? repalloc(owed_state, n * sizeof(*owed_state)) :
		palloc(n * sizeof(*owed_state));
	send_buf = send_buf ? repalloc(send_buf, n * sizeof(*send_buf)) : palloc(n * sizeof(*send_buf));
	answers = answers ? repalloc(answers, n * sizeof(*answers)) : palloc0(n * sizeof(*answers));
	MemoryContextSwitchTo(old);
	capacity = n;
	/* and the room to read as many answers at once, on every server */
	if (!redis_reserve_everywhere(n, ticket_bytes))
		ereport(ERROR, (errcode(ERRCODE_OUT_OF_MEMORY), errmsg("out of memory")));
}

/*
 * A ticket for releasing acquisition (of ref, with a lease of ttl_ms); it belongs to the caller until
 * given to release_call_started, lock_table_add or release_enqueue.
 */
ReleaseTicket *
release_ticket_make(const LockRef *ref, const char *acquisition, int ttl_ms)
{
	ReleaseTicket *t;
	LockKeys	keys;
	RedisCommand cmd;
	const char *args[1] = {acquisition};
	MemoryContext old;

	if (release_cxt == NULL)
		release_cxt = AllocSetContextCreate(TopMemoryContext, "redislock releases",
											ALLOCSET_DEFAULT_SIZES);
	reserve(ntickets + 1);
	old = MemoryContextSwitchTo(release_cxt);
	t = palloc0(sizeof(ReleaseTicket));
	t->key = pstrdup(ref->key);
	t->prefix = pstrdup(ref->prefix);
	t->acquisition = pstrdup(acquisition);
	names_lock_keys(ref, &keys);
	script_command(&cmd, SCRIPT_RELEASE, &keys, 1, args);
	t->command = script_format(&cmd, &t->command_len);
	t->slot = cluster_key_slot(keys.lock, keys.lock_len);
	names_lock_keys_free(&keys);
	t->ttl_ms = ttl_ms;
	MemoryContextSwitchTo(old);
	ntickets++;
	/* the commit that sends every live ticket's release at once finds room for them in the buffer */
	ticket_bytes += t->command_len;
	if (!redis_reserve_everywhere(capacity, ticket_bytes))
	{
		release_ticket_free(t);
		ereport(ERROR, (errcode(ERRCODE_OUT_OF_MEMORY), errmsg("out of memory")));
	}
	return t;
}

void
release_ticket_free(ReleaseTicket *t)
{
	pfree(t->key);
	pfree(t->prefix);
	pfree(t->acquisition);
	ticket_bytes -= t->command_len;
	pfree(t->command);
	pfree(t);
	ntickets--;
}

/* A lock call is about to ask Redis for acquisition t. */
void
release_call_started(ReleaseTicket *t)
{
	Assert(call_ticket == NULL);
	call_ticket = t;
	call_sent = false;
}

/*
 * Whether the lock call in flight may have reached Redis (then, should it not finish, it is undone);
 * returns what was said before.
 */
bool
release_call_sent(bool sent)
{
	bool		was = call_sent;

	call_sent = sent;
	return was;
}

/* The lock call finished (taken or not): its ticket goes back to the caller. */
ReleaseTicket *
release_call_finished(void)
{
	ReleaseTicket *t = call_ticket;

	call_ticket = NULL;
	call_sent = false;
	return t;
}

/* Remove owed[i], keeping the order of the rest. */
static void
owed_remove(int i)
{
	release_ticket_free(owed[i]);
	memmove(&owed[i], &owed[i + 1], (nowed - i - 1) * sizeof(*owed));
	memmove(&owed_state[i], &owed_state[i + 1], (nowed - i - 1) * sizeof(*owed_state));
	nowed--;
}

/*
 * Owe the release of t from now on (it takes t). warn_if_lost: it is a held lock released after a
 * commit, whose loss is worth a WARNING. Allocates nothing.
 */
void
release_enqueue(ReleaseTicket *t, bool warn_if_lost)
{
	int64		ttl = t->ttl_ms;

	Assert(nowed < capacity);
	/* by then the lease, the lock hash's TTL after it, and any heartbeat have run out */
	t->forget_after_ms = redislock_monotonic_ms() + 2 * ttl + 10000 +
		2 * REDISLOCK_RECHECK_MS + redislock_command_timeout_ms;
	owed[nowed] = t;
	owed_state[nowed].sent = false;
	owed_state[nowed].maybe_ran = false;
	owed_state[nowed].warn_if_lost = warn_if_lost && t->held;
	nowed++;
	nenqueued++;
}

static void
warn_lost(const ReleaseTicket *t)
{
	stats_add(STATS_LOST, 1);
	ereport(WARNING,
			(errcode(ERRCODE_T_R_SERIALIZATION_FAILURE),
			 errmsg("redis lock \"%s\" had already been lost when it was released", t->key),
			 errdetail("Its lease had run out and another holder had taken it, or Redis had forgotten it, before this session's transaction ended.")));
}

/*
 * Judge Redis's answer r to owed[i]: true when the release is settled (done, or not worth running
 * again), false when it must run again (it did not run: NOSCRIPT, LOADING, BUSY, ...). *owned, when
 * not NULL, is 1 or 0 for an answer that says whether the acquisition still owned its lock, -1 else.
 */
static bool
judge(int i, const redisReply *r, int *owned)
{
	ReleaseTicket *t = owed[i];

	if (owned)
		*owned = -1;
	if (script_reply_not_run(r))
		return false;
	if (r->type == REDIS_REPLY_INTEGER)
	{
		if (owned)
			*owned = r->integer == 1;
		if (r->integer != 1 && owed_state[i].warn_if_lost && !owed_state[i].maybe_ran)
			warn_lost(t);
		return true;
	}
	if (t->held && owned == NULL)	/* (with owned, the caller reports it) */
		ereport(WARNING,
				(errcode(ERRCODE_CONNECTION_EXCEPTION),
				 errmsg("could not release redis lock \"%s\"", t->key),
				 r->type == REDIS_REPLY_ERROR ?
				 errdetail("Redis answered: %.*s Its lease frees it.", (int) Min(r->len, 300), r->str) :
				 errdetail("Redis answered with something that is not a release's answer. Its lease frees it.")));
	return true;
}

/*
 * Read the answers that server owes to releases sent without waiting, and judge them. grace_ms > 0:
 * only if they all arrive within that long (never throws; otherwise they stay owed as they were).
 * Else on a failure (a cancel, a timeout, a broken connection) the releases are owed again, as maybe
 * run, and it returns false with err set.
 */
static bool
read_server_answers(RedisServer *server, int grace_ms, bool interruptible, RedisError *err)
{
	int			nsent = 0;
	int			j = 0;

	for (int i = 0; i < nowed; i++)
	{
		owed_state[i].reading = owed_state[i].sent && owed_state[i].server == server;
		nsent += owed_state[i].reading;
	}
	if (nsent == 0)
		return true;
	if (grace_ms > 0)
	{
		if (redis_unanswered(server) != nsent || !redis_unanswered_arrived(server, answers, grace_ms))
		{
			for (int i = 0; i < nowed; i++)
				owed_state[i].reading = false;
			return true;
		}
	}
	for (int i = 0; i < nowed; i++)
	{
		if (owed_state[i].reading)
		{
			/* should the read throw (a cancel), they are owed again, maybe run */
			owed_state[i].sent = false;
			owed_state[i].ran_before = owed_state[i].maybe_ran;
			owed_state[i].maybe_ran = true;
		}
	}
	if (grace_ms <= 0)
	{
		if (redis_unanswered(server) != nsent)
			return true;		/* the connection closed meanwhile: run them again */
		if (!redis_read_unanswered(server, answers, interruptible, err))
			return false;
	}

	/* the answers come in the order of the owed list, which keeps the order of sending */
	for (int i = 0; i < nowed && j < nsent;)
	{
		RedisServer *to;
		bool		ask;

		if (!owed_state[i].reading)
		{
			i++;
			continue;
		}
		owed_state[i].reading = false;
		owed_state[i].maybe_ran = owed_state[i].ran_before;
		script_note_answer(server, SCRIPT_RELEASE, answers[j]);
		/* MOVED: the map learns the slot's node now; the release runs again there (run_owed) */
		(void) cluster_redirection(answers[j], server, &to, &ask);
		if (judge(i, answers[j], NULL))
			owed_remove(i);
		else
			i++;
		j++;
	}
	redis_free_replies(nsent, answers);
	return true;
}

/* read_server_answers for every server that owes answers. */
static bool
read_sent_answers(bool interruptible, RedisError *err)
{
	bool		ok = true;

	for (;;)
	{
		RedisServer *server = NULL;

		for (int i = 0; i < nowed && server == NULL; i++)
		{
			if (owed_state[i].sent)
				server = owed_state[i].server;
		}
		if (server == NULL)
			return ok;
		if (!read_server_answers(server, 0, interruptible, err))
			ok = false;
	}
}

/*
 * Where owed releases go: the connection they were sent on while it is up, even when the connection
 * settings changed since (locks are released where they were taken); else the server the settings
 * name.
 */
static RedisServer *
release_server(void)
{
	RedisServer *as_is = redis_primary_server_as_is();

	if (redislock_connection_settings_changed &&
		redis_connection_intact(as_is, redis_connection_epoch(as_is)))
		return as_is;
	return redis_primary_server();
}

/*
 * Where the release of t goes: in Cluster mode the node serving its slot as the map says now (no round
 * trip, nothing allocated; NULL: none known); else the one server, as release_server says.
 */
static RedisServer *
ticket_server(const ReleaseTicket *t)
{
	if (!cluster_mode())
		return release_server();
	return cluster_server_for_slot_as_is(t->slot);
}

/* Drop owed releases that Redis has let go of by itself. */
static void
drop_forgotten(void)
{
	int64		now = redislock_monotonic_ms();

	for (int i = 0; i < nowed;)
	{
		if (!owed_state[i].sent && now > owed[i]->forget_after_ms)
			owed_remove(i);
		else
			i++;
	}
}

/*
 * Run the owed releases owed[idx[0..n-1]] (idx ascending) in one round trip (EVALSHA, EVAL on
 * NOSCRIPT), judge each answer, and drop those settled. With owned (release_now), owned[k] is 1 or 0
 * for an answer that says whether the acquisition still owned its lock, and an error reply makes the
 * result false with err saying what Redis answered. Returns false with err set when Redis could not
 * be asked; the releases stay owed. Allocates, and throws when interruptible.
 */
static bool
run_owed(int n, const int *idx, bool interruptible, int *owned, RedisError *err)
{
	RedisCommand *cmds = palloc(n * sizeof(RedisCommand));
	LockKeys   *keys = palloc(n * sizeof(LockKeys));
	RedisScriptId *ids = palloc(n * sizeof(RedisScriptId));
	redisReply **replies = palloc0(n * sizeof(redisReply *));
	bool	   *settled = palloc(n * sizeof(bool));
	bool		ok;

	for (int k = 0; k < n; k++)
	{
		ReleaseTicket *t = owed[idx[k]];
		LockRef		ref = {t->prefix, t->key};
		const char *args[1] = {t->acquisition};

		names_lock_keys(&ref, &keys[k]);
		script_command(&cmds[k], SCRIPT_RELEASE, &keys[k], 1, args);
		ids[k] = SCRIPT_RELEASE;
	}
	for (int k = 0; k < n; k++)
	{
		/* should a cancel cut the round trip short, it may have run */
		owed_state[idx[k]].ran_before = owed_state[idx[k]].maybe_ran;
		owed_state[idx[k]].maybe_ran = true;
	}
	if (cluster_mode())
		ok = script_run_routed(n, cmds, ids, replies, redislock_command_timeout_ms, interruptible, err);
	else
		ok = script_run(release_server(), n, cmds, ids, replies, redislock_command_timeout_ms,
						interruptible, err);
	for (int k = 0; k < n; k++)
	{
		/* (a release stopped mid-way by a slot migration and run again may have run before) */
		if ((ok || !err->sent) && !script_call_stopped_midway())
			owed_state[idx[k]].maybe_ran = owed_state[idx[k]].ran_before;
	}
	if (ok)
	{
		for (int k = 0; k < n; k++)
		{
			settled[k] = judge(idx[k], replies[k], owned ? &owned[k] : NULL);
			if (owned && owned[k] < 0 && ok)
			{
				RedisServer *server = cluster_mode() ? script_answered_by(&cmds[k]) : release_server();

				if (replies[k]->type == REDIS_REPLY_ERROR)
					redis_error_from_reply(server, replies[k], err);
				else
					redis_error_malformed(server, "a release answered with an unexpected shape", err);
				ok = false;
			}
		}
		redis_free_replies(n, replies);
		for (int k = n - 1; k >= 0; k--)
		{
			if (settled[k])
				owed_remove(idx[k]);
		}
	}
	for (int k = 0; k < n; k++)
		names_lock_keys_free(&keys[k]);
	pfree(settled);
	pfree(replies);
	pfree(ids);
	pfree(keys);
	pfree(cmds);
	return ok;
}

/* Run every owed release that is not on the wire (see run_owed). */
static bool
run_unsent(bool interruptible, RedisError *err)
{
	int		   *idx = palloc(Max(nowed, 1) * sizeof(int));
	int			n = 0;
	bool		ok;

	for (int i = 0; i < nowed; i++)
	{
		if (!owed_state[i].sent)
			idx[n++] = i;
	}
	ok = n == 0 || run_owed(n, idx, interruptible, NULL, err);
	pfree(idx);
	return ok;
}

/*
 * run_unsent where no ERROR may escape (commit and abort callbacks, backend exit): running out of
 * memory leaves the releases owed.
 */
static bool
run_unsent_quietly(RedisError *err)
{
	MemoryContext old = CurrentMemoryContext;
	HeldInterrupts held = redislock_interrupts_held();
	bool		ok = false;

	PG_TRY();
	{
		ok = run_unsent(false, err);
	}
	PG_CATCH();
	{
		MemoryContextSwitchTo(old);
		redislock_interrupts_restore(held);
		FlushErrorState();
		err->sqlstate = ERRCODE_OUT_OF_MEMORY;
		snprintf(err->message, sizeof(err->message), "could not release redis locks: out of memory");
		err->detail[0] = err->hint[0] = '\0';
		ok = false;
	}
	PG_END_TRY();
	return ok;
}

/*
 * Before any command on the connection: read what Redis owes to releases sent without waiting, and
 * run again every owed release whose outcome is unknown. Interruptible (a lock operation is about to
 * follow): a Redis that does not answer in time, or cannot be reached, fails here with that
 * operation's ERROR (the releases stay owed). Not interruptible: never throws; failures are left for
 * the next settle.
 */
void
release_settle(bool interruptible)
{
	RedisError	err;

	if (!release_settle_reporting(interruptible, &err))
		redis_raise(&err);
}

/*
 * release_settle, but what it would raise is returned in err instead (false), for a caller that
 * decides: a wait in Sentinel mode goes on while the master cannot be reached. Interrupts still throw.
 */
bool
release_settle_reporting(bool interruptible, RedisError *err)
{
	if (nowed == 0)
		return true;
	if (!read_sent_answers(interruptible, err))
	{
		/* a stalled Redis: the operation that follows would wait as long again; it fails now */
		if (interruptible && err->timed_out)
			return false;
	}
	drop_forgotten();
	if (nowed == 0)
		return true;
	if (interruptible)
	{
		if (!run_unsent(true, err) && (err->timed_out || !err->sent || err->connection_lost))
			return false;
	}
	else
		(void) run_unsent_quietly(err);
	return true;
}

/*
 * Send every owed release that is not on the wire without waiting: one write per server (each to the
 * server of its lock: one in all outside Cluster mode), where that server has answered the release
 * script on its connection (it knows it) and the connection is up and idle. The rest stay unsent.
 */
static void
send_grouped_by_server(void)
{
	for (int i = 0; i < nowed; i++)
		owed_state[i].route = owed_state[i].sent ? NULL : ticket_server(owed[i]);
	for (int first = 0; first < nowed; first++)
	{
		RedisServer *server = owed_state[first].route;
		RedisError	err;
		int			n = 0;

		if (owed_state[first].sent || server == NULL || !script_known(server, SCRIPT_RELEASE))
			continue;
		for (int i = first; i < nowed; i++)
		{
			if (!owed_state[i].sent && owed_state[i].route == server)
			{
				send_buf[n].buf = owed[i]->command;
				send_buf[n++].len = owed[i]->command_len;
			}
		}
		if (redis_send_unanswered(server, n, send_buf, &err))
		{
			for (int i = first; i < nowed; i++)
			{
				if (!owed_state[i].sent && owed_state[i].route == server)
				{
					owed_state[i].sent = true;
					owed_state[i].server = server;
				}
			}
		}
		else
		{
			/* not sent (they take a round trip below); part of the write may have reached Redis */
			for (int i = first; i < nowed; i++)
			{
				if (!owed_state[i].sent && owed_state[i].route == server)
				{
					owed_state[i].maybe_ran |= err.sent;
					owed_state[i].route = NULL;
				}
			}
		}
	}
}

/* How long COMMIT in Cluster mode gives the releases' answers to arrive (see the top of the file). */
#define RELEASE_CLUSTER_GRACE_MS 20

/*
 * Cluster mode, after the releases were sent: read the answers that arrive within the grace, so that
 * a release that met MOVED or ASK is sent again to the right node now (a waiter there gets the lock)
 * rather than when this session next talks to Redis. Never throws.
 */
static void
read_redirected_releases(void)
{
	RedisServer *servers[64];
	int			nservers = 0;
	RedisError	err;
	int64		until = redislock_monotonic_ms() + Min(RELEASE_CLUSTER_GRACE_MS, redislock_command_timeout_ms);
	int			unsent = 0;
	int			unsent_before = 0;

	for (int i = 0; i < nowed; i++)
		unsent_before += !owed_state[i].sent;
	for (int i = 0; i < nowed; i++)
	{
		bool		seen = false;

		for (int k = 0; k < nservers && !seen; k++)
			seen = servers[k] == owed_state[i].server;
		if (owed_state[i].sent && !seen && nservers < lengthof(servers))
			servers[nservers++] = owed_state[i].server;
	}
	for (int k = 0; k < nservers; k++)
	{
		int			left = (int) (until - redislock_monotonic_ms());

		(void) read_server_answers(servers[k], Max(left, 1), false, &err);
	}
	/* those that did not run where they were sent (MOVED, ASK, NOSCRIPT) run again now */
	for (int i = 0; i < nowed; i++)
		unsent += !owed_state[i].sent;
	if (unsent > unsent_before)
		(void) run_unsent_quietly(&err);
}

/*
 * At the end of a transaction, subtransaction or backend: release what release_enqueue queued (and
 * undo the lock call in flight, if it may have reached Redis). Never throws; allocates nothing of
 * PostgreSQL's on its usual path (one write). wait: read Redis's answers now (backend exit); so does
 * redislock.synchronous_release, and a connection that has not answered the release script yet (it
 * may not know it). Held locks that cannot be released now are a WARNING; they stay owed.
 */
void
release_at_xact_end(bool wait)
{
	RedisError	err;
	int			unsent = 0;
	bool		any_held = false;

	if (call_ticket != NULL)
	{
		bool		sent = call_sent;
		ReleaseTicket *t = release_call_finished();

		if (sent)
			release_enqueue(t, false);
		else
			release_ticket_free(t);
	}
	/* a transaction that released nothing does not wait on Redis (unless the backend exits) */
	if (nowed == 0 || (nenqueued == 0 && !wait))
		return;
	nenqueued = 0;

	/* what earlier releases answered comes first on the connection */
	if (!read_sent_answers(false, &err))
	{
		/* they are owed again; sent below with the rest */
	}
	drop_forgotten();
	for (int i = 0; i < nowed; i++)
		any_held |= owed[i]->held;
	if (!wait && !redislock_synchronous_release)
		send_grouped_by_server();
	/* the rest in a round trip (per server), on a new connection if need be */
	for (int i = 0; i < nowed; i++)
		unsent += !owed_state[i].sent;
	if (unsent > 0 && !run_unsent_quietly(&err) && any_held)
		redis_warn(&err, "Their release is run again before this session's next Redis command; their leases free them otherwise.");
	if (cluster_mode() && !wait && !redislock_synchronous_release)
		read_redirected_releases();
}

/*
 * Release the n locks of tickets now (redis_unlock, redis_unlock_all, DISCARD ALL, a wait that timed
 * out), in one round trip; owned[i] says whether tickets[i] still owned its lock. It takes the
 * tickets: whatever happens, even an ERROR or a cancel, their releases are owed until Redis has
 * answered them, and run again before the next command. Returns false with err set when Redis did not
 * answer every release (transport failure, or an error reply); throws only on an interrupt.
 */
bool
release_now(int n, ReleaseTicket **tickets, int *owned, RedisError *err)
{
	int		   *idx;
	int			first;
	bool		ok;

	PG_TRY();
	{
		release_settle(true);
	}
	PG_CATCH();
	{
		/* Redis cannot be reached or a cancel came: the releases are owed, for the abort to send */
		for (int i = 0; i < n; i++)
			release_enqueue(tickets[i], false);
		PG_RE_THROW();
	}
	PG_END_TRY();

	/* owed (before anything can fail) while the round trip is under way: a cancel leaves them to run */
	first = nowed;
	for (int i = 0; i < n; i++)
		release_enqueue(tickets[i], false);
	idx = palloc(n * sizeof(int));
	for (int i = 0; i < n; i++)
		idx[i] = first + i;
	ok = run_owed(n, idx, true, owned, err);
	pfree(idx);
	return ok;
}
