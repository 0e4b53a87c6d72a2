/*
 * xact.c
 *		How a Redis lock's life follows the transaction, the subtransaction and the backend.
 *
 * Registered lazily by the first lock call of a backend:
 *	- PRE_COMMIT: the check before commit. A transaction whose lock was lost does not commit (40001); a
 *	  session lock the keeper found lost fails the commit once with 55000 and is forgotten. A lock that
 *	  must be proven held — its lease is close to running out, the connection it was taken on is gone
 *	  (a Redis restart forgets locks), or redislock.verify_at_commit is on — is verified in one round
 *	  trip, and kept through the commit; a lock that cannot be proven held (Redis unreachable from
 *	  here, an error) fails the commit too: the commit fails closed. A lock well inside its lease on an
 *	  intact connection costs nothing here (one poll() of the socket), so an uncontended lock cycle is
 *	  two Redis commands.
 *	- PRE_PREPARE: refuse PREPARE TRANSACTION while holding a lock (0A000).
 *	- COMMIT / ABORT: release every transaction lock, and undo a lock call cut short, in one write that
 *	  does not wait for Redis's answer (release.c). This runs after the commit is visible, with
 *	  interrupts held: nothing here allocates or raises an ERROR, each step is time-bounded, failures
 *	  are WARNINGs, and what could not be released is run again before the next command.
 *	- ABORT_SUB / COMMIT_SUB: drop the holds a subtransaction took, or hand them to its parent.
 *	- backend exit: release whatever is left and wait for the answer, time-bounded.
 */
#include "redislock.h"

#include "access/xact.h"
#include "nodes/parsenodes.h"
#include "storage/ipc.h"
#include "tcop/utility.h"
#include "utils/timestamp.h"

static bool callbacks_registered = false;
static ProcessUtility_hook_type prev_process_utility = NULL;

/*
 * The first transaction lock this transaction found lost, or could not release (so could not learn
 * whether it still held it): it may not commit.
 */
static char lost_key[REDISLOCK_KEY_MAX + 1];
static bool has_lost = false;
static bool lost_unconfirmed = false;

static void
note_lost(const char *key, bool unconfirmed)
{
	if (!has_lost)
	{
		strlcpy(lost_key, key, sizeof(lost_key));
		has_lost = true;
		lost_unconfirmed = unconfirmed;
	}
}

/* This transaction may not commit: its lock on key was lost. */
void
xact_note_lost(const char *key)
{
	note_lost(key, false);
}

/* How close to the end of its lease a lock is verified before commit. */
static int
commit_margin_ms(const HeldLock *lock)
{
	return Min(lock->ttl_ms / 2, 2000);
}

/*
 * Release, at the end of a transaction (or of the backend, all_scopes), every lock that ends there,
 * and forget them. Allocates nothing, never throws.
 */
static void
xact_release_ending(bool committed, bool all_scopes, bool wait)
{
	HeldLock  **locks;
	int			n = lock_table_collect(&locks);

	for (int i = 0; i < n; i++)
	{
		locks[i]->nholds = 0;
		if (all_scopes || locks[i]->session_holds == 0)
			release_enqueue(lock_table_remove(locks[i]), committed);
	}
	release_at_xact_end(wait);
	has_lost = false;
}

/*
 * A session lock the keeper found lost is forgotten: its release is harmless, and the session goes on
 * without it.
 */
static void
forget_lost(HeldLock *lock)
{
	release_enqueue(lock_table_remove(lock), false);
}

/*
 * Session locks that are lost, or cannot be proven held: forget them all, and fail this commit once
 * with 55000 (the session then goes on without them). why completes "...: why".
 */
/* Forget the n lost locks[], counting them; key gets the first one's name, for the message. */
static void
forget_all_lost(int n, HeldLock **locks, char *key)
{
	stats_add(STATS_LOST, n);
	strlcpy(key, locks[0]->key, REDISLOCK_KEY_MAX + 1);
	for (int i = 0; i < n; i++)
		forget_lost(locks[i]);
}

static void
fail_session_locks(int n, HeldLock **locks, const char *why)
{
	char		key[REDISLOCK_KEY_MAX + 1];

	forget_all_lost(n, locks, key);
	ereport(ERROR,
			(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
			 n == 1 ?
			 errmsg("redis session lock \"%s\" was lost", key) :
			 errmsg("redis session lock \"%s\" and %d more were lost", key, n - 1),
			 errdetail("This session no longer holds %s: %s.", n == 1 ? "it" : "them", why),
			 errhint("Take the lock again if the session still needs it.")));
}

/*
 * lockop_verify_many for the check before commit, where every failure to ask Redis (including one
 * met while settling what earlier releases owe) is reported in err rather than thrown, so that the
 * commit fails with 40001. A cancel is still a cancel.
 */
static bool
verify_or_explain(int n, const LockRef *refs, const char *const *acquisitions, const int64 *tokens,
				  const int *keeps, int *kept, RedisError *err)
{
	MemoryContext old = CurrentMemoryContext;
	bool		ok = false;

	PG_TRY();
	{
		ok = lockop_verify_many(n, refs, acquisitions, tokens, keeps, kept, true, err);
	}
	PG_CATCH();
	{
		ErrorData  *edata;

		MemoryContextSwitchTo(old);
		edata = CopyErrorData();
		/* a cancel, statement_timeout or shutdown stays what it is */
		if (edata->sqlerrcode == ERRCODE_QUERY_CANCELED || edata->sqlerrcode == ERRCODE_ADMIN_SHUTDOWN)
		{
			FreeErrorData(edata);
			PG_RE_THROW();
		}
		FlushErrorState();
		err->sqlstate = edata->sqlerrcode;
		strlcpy(err->message, edata->message ? edata->message : "", sizeof(err->message));
		strlcpy(err->detail, edata->detail ? edata->detail : "", sizeof(err->detail));
		err->hint[0] = '\0';
		FreeErrorData(edata);
		ok = false;
	}
	PG_END_TRY();
	return ok;
}

/* The check before commit; see the file header. */
static void
verify_before_commit(void)
{
	HeldLock  **locks;
	int			n;
	int			nchecked = 0;
	int64		now = redislock_monotonic_ms();
	LockRef    *refs;
	const char **acquisitions;
	int64	   *tokens;
	int		   *kept;
	int		   *keeps;
	bool		intact = false;
	int			nlost = 0;
	bool		in_xact = false;
	RedisError	err;

	if (has_lost && lost_unconfirmed)
		ereport(ERROR,
				(errcode(ERRCODE_T_R_SERIALIZATION_FAILURE),
				 errmsg("could not confirm redis lock \"%s\" before commit", lost_key),
				 errdetail("Releasing it early failed, so it cannot be shown that it was held until then.")));
	if (has_lost)
		ereport(ERROR,
				(errcode(ERRCODE_T_R_SERIALIZATION_FAILURE),
				 errmsg("redis lock \"%s\" was lost during this transaction", lost_key),
				 errdetail("Its lease ran out and another holder took it, or Redis forgot it, before the transaction ended.")));

	n = lock_table_collect(&locks);
	if (n == 0)
		return;

	/* with the lease keeper: its renewals, and what it found lost (moved to the front) */
	for (int i = 0; i < n; i++)
	{
		HeldLock   *lock = locks[i];
		int64		renewed_ms;
		bool		keeper_lost;

		if (!registry_lease(lock->name, &renewed_ms, &keeper_lost))
			continue;
		if (keeper_lost)
		{
			locks[i] = locks[nlost];
			locks[nlost++] = lock;
			in_xact |= lock->nholds > 0;
		}
		else
			lock->lease_start_ms = Max(lock->lease_start_ms, renewed_ms);
	}
	if (nlost > 0)
	{
		char		key[REDISLOCK_KEY_MAX + 1];

		if (!in_xact)
			fail_session_locks(nlost, locks, "the lease keeper found it gone from Redis, or held by another holder");
		forget_all_lost(nlost, locks, key);
		ereport(ERROR,
				(errcode(ERRCODE_T_R_SERIALIZATION_FAILURE),
				 errmsg("redis lock \"%s\" was lost during this transaction", key),
				 errdetail("The lease keeper found it gone from Redis or held by someone else.")));
	}

	/*
	 * Transaction locks are checked when their lease is near its end, their connection broke, or
	 * verify_at_commit asks. Session locks are the keeper's to vouch for: only one whose lease has
	 * run out unrenewed (no keeper renewed it) is checked, and it is lost (55000) if unproven.
	 */
	for (int i = 0; i < n; i++)
	{
		HeldLock   *lock = locks[i];
		bool		expiring = now >= lock->lease_start_ms + lock->ttl_ms - commit_margin_ms(lock);
		RedisServer *server = lock_table_server_now(lock);

		/*
		 * Still on the connection it was taken on (no round trip). In Redis Cluster also under the
		 * same slot map: a lock whose slot moved, or whose master this backend saw fail over, is
		 * checked (a demoted master keeps its clients' connections open).
		 */
		intact = server != NULL && server == lock->server &&
			lock->map_generation == cluster_map_generation() &&
			redis_connection_intact(server, lock->connection_epoch);

		if (lock->nholds == 0 ? expiring :
			(redislock_verify_at_commit || expiring || !intact))
			locks[nchecked++] = lock;
	}
	if (nchecked == 0)
		return;

	refs = palloc(nchecked * sizeof(LockRef));
	acquisitions = palloc(nchecked * sizeof(char *));
	tokens = palloc(nchecked * sizeof(int64));
	keeps = palloc(nchecked * sizeof(int));
	kept = palloc(nchecked * sizeof(int));
	for (int i = 0; i < nchecked; i++)
	{
		refs[i] = lock_table_ref(locks[i]);
		acquisitions[i] = locks[i]->acquisition;
		tokens[i] = locks[i]->token;
		keeps[i] = locks[i]->ttl_ms;
	}
	if (!verify_or_explain(nchecked, refs, acquisitions, tokens, keeps, kept, &err))
	{
		/*
		 * The lock cannot be proven held. "Nobody else can take it while Redis is unreachable" is
		 * false: Redis may be unreachable from this server only, or back empty for everyone else.
		 */
		for (int i = 0; i < nchecked; i++)
		{
			if (locks[i]->nholds > 0)
				ereport(ERROR,
						(errcode(ERRCODE_T_R_SERIALIZATION_FAILURE),
						 errmsg("could not confirm redis lock \"%s\" before commit", refs[i].key),
						 errdetail("The lock could not be checked in Redis (%s%s%s), so it cannot be shown that no other backend holds it.",
								   err.message, err.detail[0] ? ": " : "", err.detail),
						 errhint("Retry the transaction once Redis can be reached.")));
		}
		fail_session_locks(nchecked, locks, "the lease ran out unrenewed, and could not be checked in Redis");
	}
	for (int i = 0; i < nchecked; i++)
	{
		/* a lost transaction lock comes first: 40001, which tells a client to retry */
		if (!kept[i] && locks[i]->nholds > 0)
		{
			stats_add(STATS_LOST, 1);
			ereport(ERROR,
					(errcode(ERRCODE_T_R_SERIALIZATION_FAILURE),
					 errmsg("redis lock \"%s\" was lost during this transaction", refs[i].key),
					 errdetail("Its lease of %d ms ran out, or Redis forgot it, and it cannot be shown that nobody else took it before the transaction ended.",
							   locks[i]->ttl_ms)));
		}
	}
	for (int i = 0; i < nchecked; i++)
	{
		if (!kept[i])
			locks[nlost++] = locks[i];	/* (nlost is 0 here; all session-only) */
	}
	if (nlost > 0)
		fail_session_locks(nlost, locks, "the lease ran out unrenewed, and Redis no longer has it for this session");
	for (int i = 0; i < nchecked; i++)
	{
		locks[i]->lease_start_ms = now;
		lock_table_note_connection(locks[i]);
	}
	pfree(kept);
	pfree(keeps);
	pfree(tokens);
	pfree(acquisitions);
	pfree(refs);
}

/* Whether any lock has a hold of this transaction, or a lock call is in flight. */
static bool
xact_holds_locks(void)
{
	HeldLock  **locks;
	int			n = lock_table_collect(&locks);

	for (int i = 0; i < n; i++)
	{
		if (locks[i]->nholds > 0)
			return true;
	}
	return false;
}

static void
xact_callback(XactEvent event, void *arg)
{
	switch (event)
	{
		case XACT_EVENT_PRE_COMMIT:
		case XACT_EVENT_PARALLEL_PRE_COMMIT:
			verify_before_commit();
			break;
		case XACT_EVENT_PRE_PREPARE:
			if (xact_holds_locks())
				ereport(ERROR,
						(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
						 errmsg("cannot PREPARE a transaction that holds redis locks"),
						 errdetail("A redis lock lives only as long as its backend's transaction."),
						 errhint("Release the locks with redis_unlock_all() before PREPARE TRANSACTION.")));
			break;
		case XACT_EVENT_COMMIT:
		case XACT_EVENT_PARALLEL_COMMIT:
			xact_release_ending(true, false, false);
			break;
		case XACT_EVENT_ABORT:
		case XACT_EVENT_PARALLEL_ABORT:
		case XACT_EVENT_PREPARE:
			xact_release_ending(false, false, false);
			break;
	}
}

static void
subxact_callback(SubXactEvent event, SubTransactionId mySubid, SubTransactionId parentSubid,
				 void *arg)
{
	int			level = GetCurrentTransactionNestLevel();

	if (event == SUBXACT_EVENT_COMMIT_SUB)
		lock_table_reassign_level(level, level - 1);
	else if (event == SUBXACT_EVENT_ABORT_SUB)
	{
		HeldLock  **locks;
		int			n = lock_table_collect_level(level, &locks);

		for (int i = 0; i < n; i++)
		{
			HeldLock   *lock = locks[i];

			while (lock->nholds > 0 && lock->hold_levels[lock->nholds - 1] >= level)
				lock_table_pop_hold(lock);
			if (lock->nholds == 0 && lock->session_holds == 0)
				release_enqueue(lock_table_remove(lock), false);
		}
		/* and the lock call this subtransaction had in flight */
		release_at_xact_end(false);
	}
}

static void
at_backend_exit(int code, Datum arg)
{
	xact_release_ending(false, true, true);
	redis_disconnect_all();
}

void
xact_init(void)
{
	if (callbacks_registered)
		return;
	RegisterXactCallback(xact_callback, NULL);
	RegisterSubXactCallback(subxact_callback, NULL);
	before_shmem_exit(at_backend_exit, (Datum) 0);
	callbacks_registered = true;
}

/*
 * A lock the keeper found lost, asked to be released (redis_unlock): a WARNING, and it is forgotten.
 * A lost transaction hold also forbids this transaction's commit. Returns whether it was lost.
 */
bool
xact_forget_if_lost(HeldLock *lock)
{
	int64		renewed_ms;
	bool		lost = false;
	char		key[REDISLOCK_KEY_MAX + 1];

	if (!registry_lease(lock->name, &renewed_ms, &lost) || !lost)
		return false;
	strlcpy(key, lock->key, sizeof(key));
	if (lock->nholds > 0)
		xact_note_lost(key);
	forget_lost(lock);
	ereport(WARNING,
			(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
			 errmsg("redis lock \"%s\" had already been lost", key),
			 errdetail("The lease keeper found it gone from Redis, or held by another holder; it is forgotten.")));
	return true;
}

static void
warn_released_lost(const char *key, bool xact_hold)
{
	stats_add(STATS_LOST, 1);
	ereport(WARNING,
			(errcode(ERRCODE_T_R_SERIALIZATION_FAILURE),
			 errmsg("redis lock \"%s\" had already been lost when it was released", key),
			 xact_hold ?
			 errdetail("Its lease ran out and another holder took it, or Redis forgot it; this transaction cannot commit.") :
			 errdetail("Its lease ran out and another holder took it, or Redis forgot it.")));
}

/*
 * release_now for redis_unlock and redis_unlock_all: when it fails (the release is then owed), a
 * transaction hold it gave up makes the transaction unable to commit: it can no longer be shown that
 * the lock was held until then.
 */
static bool
release_now_or_unconfirm(int n, ReleaseTicket **tickets, char **keys, const bool *xact_hold,
						 int *owned, RedisError *err)
{
	bool		ok = false;

	PG_TRY();
	{
		ok = release_now(n, tickets, owned, err);
	}
	PG_CATCH();
	{
		for (int i = 0; i < n; i++)
		{
			if (xact_hold[i])
				note_lost(keys[i], true);
		}
		PG_RE_THROW();
	}
	PG_END_TRY();
	for (int i = 0; i < n && !ok; i++)
	{
		if (xact_hold[i])
			note_lost(keys[i], true);
	}
	return ok;
}

/*
 * redis_unlock_all(), DISCARD ALL: release every lock now, in one round trip. Returns how many keys
 * were released. A transaction lock found already lost forbids this transaction's commit.
 */
int
xact_release_all(bool interruptible)
{
	HeldLock  **locks;
	int			n = lock_table_collect(&locks);
	ReleaseTicket **tickets;
	char	  **keys;
	bool	   *xact_hold;
	int		   *owned;
	RedisError	err;

	if (n == 0)
		return 0;
	tickets = palloc(n * sizeof(ReleaseTicket *));
	keys = palloc(n * sizeof(char *));
	xact_hold = palloc(n * sizeof(bool));
	owned = palloc(n * sizeof(int));
	for (int i = 0; i < n; i++)
	{
		keys[i] = pstrdup(locks[i]->key);
		xact_hold[i] = locks[i]->nholds > 0;
	}
	/* forgotten first: whatever happens next, their release is owed, not held */
	for (int i = 0; i < n; i++)
		tickets[i] = lock_table_remove(locks[i]);
	if (!release_now_or_unconfirm(n, tickets, keys, xact_hold, owned, &err))
		redis_raise(&err);
	for (int i = 0; i < n; i++)
	{
		if (owned[i])
			continue;
		if (xact_hold[i])
			xact_note_lost(keys[i]);
		warn_released_lost(keys[i], xact_hold[i]);
	}
	return n;
}

/*
 * redis_unlock() of the last hold: forget the lock, then release it in Redis. xact_hold: the hold
 * was a transaction hold, whose loss forbids the commit.
 */
void
xact_release_one(HeldLock *lock, bool xact_hold)
{
	char	   *key = pstrdup(lock->key);
	ReleaseTicket *ticket = lock_table_remove(lock);
	int			owned;
	RedisError	err;

	if (!release_now_or_unconfirm(1, &ticket, &key, &xact_hold, &owned, &err))
		redis_raise(&err);
	if (!owned)
	{
		if (xact_hold)
			xact_note_lost(key);
		warn_released_lost(key, xact_hold);
	}
}

/*
 * DISCARD ALL releases session locks, as it releases PostgreSQL's session-level advisory locks. It
 * cannot run inside a transaction block, so only session locks are left to release. It also reads what
 * the last transaction's releases answered, so that their WARNINGs reach this client, not the next
 * one of a pooled connection.
 */
static void
process_utility(PlannedStmt *pstmt, const char *queryString, bool readOnlyTree,
				ProcessUtilityContext context, ParamListInfo params,
				QueryEnvironment *queryEnv, DestReceiver *dest, QueryCompletion *qc)
{
	Node	   *parsetree = pstmt->utilityStmt;

	if (prev_process_utility)
		prev_process_utility(pstmt, queryString, readOnlyTree, context, params, queryEnv, dest, qc);
	else
		standard_ProcessUtility(pstmt, queryString, readOnlyTree, context, params, queryEnv, dest, qc);

	if (IsA(parsetree, DiscardStmt) && ((DiscardStmt *) parsetree)->target == DISCARD_ALL)
	{
		release_settle(true);
		if (lock_table_count() > 0)
			(void) xact_release_all(true);
	}
}

void
xact_install_utility_hook(void)
{
	prev_process_utility = ProcessUtility_hook;
	ProcessUtility_hook = process_utility;
}
