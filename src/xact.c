/*
 * xact.c
 *		How a Redis lock's life follows the transaction, the subtransaction and the backend.
 *
 * Registered lazily by the first lock call of a backend:
 *	- PRE_COMMIT: refuse to commit (40001) when a lock was lost; prove, in one round trip, that locks
 *	  whose lease is close to running out, or whose Redis connection is gone since they were taken (a
 *	  Redis restart forgets locks), are still ours, and keep them through the commit. A lock well
 *	  inside its lease on an intact connection costs nothing here (one poll() of the socket), so an
 *	  uncontended lock cycle is two Redis commands.
 *	- PRE_PREPARE: refuse PREPARE TRANSACTION while holding a lock (0A000).
 *	- COMMIT / ABORT: release every lock, and undo a wait in flight, in one write that does not wait
 *	  for Redis's answer (deferred_release.c reads it before the next command). This runs after the
 *	  commit is visible, with interrupts held: it is time-bounded and failures are WARNINGs (the
 *	  lease frees the lock).
 *	- ABORT_SUB / COMMIT_SUB: drop the holds a subtransaction took, or hand them to its parent (the
 *	  release is sent as at the end of a transaction).
 *	- backend exit: read what earlier releases answered, then release whatever is left and wait for
 *	  the answer, time-bounded.
 */
#include "redislock.h"

#include "access/xact.h"
#include "nodes/parsenodes.h"
#include "storage/ipc.h"
#include "tcop/utility.h"
#include "utils/timestamp.h"

static bool callbacks_registered = false;
static ProcessUtility_hook_type prev_process_utility = NULL;

/* How close to the end of its lease a lock is verified before commit. */
static int
commit_margin_ms(const HeldLock *lock)
{
	return Min(lock->ttl_ms / 2, 2000);
}

/*
 * Release keys at the end of a transaction, subtransaction or backend. Never throws; a failure is a
 * WARNING, and the leases free the locks in Redis. Only after a commit is a lock found already lost
 * worth a WARNING (the first nheld refs are held locks, the rest a wait being undone). Unless
 * wait_for_answer, the release is sent without waiting when the connection allows (its answer is
 * read, and a lost lock reported, before the next command).
 */
static void
release_quietly(int n, const LockRef *refs, int nheld, bool committed, bool wait_for_answer)
{
	int		   *owned;
	RedisError	err;

	if (n == 0)
		return;
	/*
	 * Not waiting when the connection is ready (and redislock.synchronous_release is off). When it is
	 * not (none yet, broken, busy with a call that was cut short), or the write failed, a round trip
	 * sets up a new one; releasing twice is harmless, the release script only acts for our holder id.
	 */
	if (!wait_for_answer && !redislock_synchronous_release &&
		redis_lock_release_unanswered(n, refs, committed ? nheld : 0, &err))
		return;
	owned = palloc(n * sizeof(int));
	if (!redis_lock_release_many(n, refs, owned, false, &err))
	{
		redis_warn(&err, nheld > 0 ?
				   "The redis locks of this transaction stay in Redis until their leases run out." :
				   "The place this wait had in the lock's queue is skipped once its heartbeat lapses.");
	}
	else
	{
		for (int i = 0; committed && i < nheld; i++)
		{
			if (!owned[i])
				ereport(WARNING,
						(errcode(ERRCODE_T_R_SERIALIZATION_FAILURE),
						 errmsg("redis lock \"%s\" had already been lost when it was released",
								refs[i].key),
						 errdetail("Its lease ran out and another holder took it.")));
		}
	}
	pfree(owned);
}

/*
 * Release what ends here — the transaction's locks (all_scopes: session locks too) and the pending
 * wait — and forget it.
 */
static void
release_everything_quietly(bool committed, bool all_scopes, bool wait_for_answer)
{
	HeldLock  **locks;
	int			n = lock_table_collect(&locks);
	int			nrel = 0;
	LockRef    *refs = palloc((n + 1) * sizeof(LockRef));
	bool		pending;

	for (int i = 0; i < n; i++)
	{
		if (all_scopes || locks[i]->session_holds == 0)
			refs[nrel++] = lock_ref_of(locks[i]);
	}
	pending = lock_table_pending(&refs[nrel]);
	release_quietly(nrel + (pending ? 1 : 0), refs, nrel, committed, wait_for_answer);
	pfree(refs);
	pfree(locks);
	lock_table_reset_xact(all_scopes);
}

/* Whether any lock has a hold of this transaction, or a lock call is in flight. */
static bool
xact_holds_locks(void)
{
	HeldLock  **locks;
	int			n = lock_table_collect(&locks);
	bool		any = lock_table_pending(NULL);

	for (int i = 0; i < n && !any; i++)
		any = locks[i]->nholds > 0;
	pfree(locks);
	return any;
}

static void
verify_before_commit(void)
{
	const char *lost = lock_table_lost();
	HeldLock  **locks;
	int			n;
	int			nnear = 0;
	int			nexpiring = 0;
	TimestampTz now = GetCurrentTimestamp();
	LockRef    *refs;
	int64	   *tokens;
	int		   *kept;
	int		   *keeps;
	uint64		epoch = 0;
	bool		intact = false;
	RedisError	err;

	if (lost != NULL)
		ereport(ERROR,
				(errcode(ERRCODE_T_R_SERIALIZATION_FAILURE),
				 errmsg("redis lock \"%s\" was lost during this transaction", lost),
				 errdetail("Its lease ran out and another holder took it before the transaction ended.")));

	n = lock_table_collect(&locks);
	if (n > 0)
	{
		/* answers owed by an earlier transaction's release come first on the connection */
		redis_lock_settle_releases(true);
		epoch = redis_connection_epoch(redis_primary_server());
		intact = redis_connection_intact(redis_primary_server(), epoch);
	}
	for (int i = 0; i < n; i++)
	{
		HeldLock   *lock = locks[i];
		TimestampTz renewed_at;
		bool		keeper_lost;
		bool		expiring;

		/* with the lease keeper: its renewals, and what it found lost */
		if (registry_lease(lock->key, &renewed_at, &keeper_lost))
		{
			if (keeper_lost)
				ereport(ERROR,
						(errcode(ERRCODE_T_R_SERIALIZATION_FAILURE),
						 errmsg("redis lock \"%s\" was lost during this transaction", lock->key),
						 errdetail("The lease keeper found it gone from Redis or held by someone else."),
						 lock->session_holds > 0 ?
						 errhint("Release the session lock with redis_unlock() before committing again.") : 0));
			lock->lease_start = Max(lock->lease_start, renewed_at);
		}
		expiring = now >= TimestampTzPlusMilliseconds(lock->lease_start,
													  lock->ttl_ms - commit_margin_ms(lock));

		if (expiring || !intact || lock->connection_epoch != epoch)
		{
			locks[nnear++] = lock;
			nexpiring += expiring ? 1 : 0;
		}
	}
	if (nnear == 0)
	{
		pfree(locks);
		return;
	}

	refs = palloc(nnear * sizeof(LockRef));
	tokens = palloc(nnear * sizeof(int64));
	keeps = palloc(nnear * sizeof(int));
	kept = palloc(nnear * sizeof(int));
	for (int i = 0; i < nnear; i++)
	{
		refs[i] = lock_ref_of(locks[i]);
		tokens[i] = locks[i]->token;
		keeps[i] = locks[i]->ttl_ms;
	}
	if (!redis_lock_verify_many(nnear, refs, NULL, tokens, keeps, kept, true, &err))
	{
		/*
		 * Redis cannot be asked. A lock whose lease is about to run out cannot be vouched for, so the
		 * transaction may not commit. Locks well inside their lease are only being re-checked because
		 * the connection broke: while Redis is unreachable nobody else can take them either, so the
		 * commit stands, as it does when the release after commit fails.
		 */
		if (nexpiring > 0)
			ereport(ERROR,
					(errcode(err.sqlstate),
					 errmsg_internal("%s", err.message),
					 errdetail("The lease of a redis lock was close to running out and could not be confirmed before commit."),
					 err.hint[0] ? errhint("%s", err.hint) : 0));
		redis_warn(&err, "The connection the redis locks were taken on broke, and they could not be confirmed; the commit goes ahead within their leases.");
		pfree(kept);
		pfree(keeps);
		pfree(tokens);
		pfree(refs);
		pfree(locks);
		return;
	}
	for (int i = 0; i < nnear; i++)
	{
		if (!kept[i])
			ereport(ERROR,
					(errcode(ERRCODE_T_R_SERIALIZATION_FAILURE),
					 errmsg("redis lock \"%s\" was lost during this transaction", refs[i].key),
					 errdetail("Its lease of %d ms ran out, or Redis forgot it, and it cannot be shown that nobody else took it before the transaction ended.",
							   locks[i]->ttl_ms)));
		locks[i]->lease_start = now;
		locks[i]->connection_epoch = redis_connection_epoch(redis_primary_server());
	}
	pfree(kept);
	pfree(keeps);
	pfree(tokens);
	pfree(refs);
	pfree(locks);
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
			release_everything_quietly(true, false, false);
			break;
		case XACT_EVENT_ABORT:
		case XACT_EVENT_PARALLEL_ABORT:
		case XACT_EVENT_PREPARE:
			release_everything_quietly(false, false, false);
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
		int			nfree = 0;
		LockRef    *refs = palloc((n + 1) * sizeof(LockRef));
		LockRef		pending_ref;
		bool		pending = lock_table_pending(&pending_ref);

		for (int i = 0; i < n; i++)
		{
			HeldLock   *lock = locks[i];

			while (lock->nholds > 0 && lock->hold_levels[lock->nholds - 1] >= level)
				lock_table_pop_hold(lock);
			if (lock->nholds == 0 && lock->session_holds == 0)
			{
				locks[nfree] = lock;
				refs[nfree++] = lock_ref_of(lock);
			}
		}
		if (pending)
			refs[nfree] = pending_ref;
		release_quietly(nfree + (pending ? 1 : 0), refs, nfree, false, false);
		for (int i = 0; i < nfree; i++)
			lock_table_remove(locks[i]);
		lock_table_clear_pending();
		pfree(refs);
		pfree(locks);
	}
}

static void
at_backend_exit(int code, Datum arg)
{
	redis_lock_settle_releases(false);
	release_everything_quietly(false, true, true);
	redis_disconnect(redis_primary_server());
}

void
redislock_xact_init(void)
{
	if (callbacks_registered)
		return;
	RegisterXactCallback(xact_callback, NULL);
	RegisterSubXactCallback(subxact_callback, NULL);
	before_shmem_exit(at_backend_exit, (Datum) 0);
	callbacks_registered = true;
}

/*
 * redis_unlock_all(), DISCARD ALL: release every lock now, in one round trip. Returns how many keys
 * were released. A lock found already lost forbids this transaction's commit when note_lost (not for
 * DISCARD ALL, which only resets the session).
 */
int
redislock_release_all(bool interruptible, bool note_lost)
{
	HeldLock  **locks;
	int			n = lock_table_collect(&locks);
	LockRef    *refs = palloc(Max(n, 1) * sizeof(LockRef));
	int		   *owned = palloc(Max(n, 1) * sizeof(int));
	RedisError	err;

	if (n == 0)
		return 0;
	for (int i = 0; i < n; i++)
		refs[i] = lock_ref_of(locks[i]);
	if (!redis_lock_release_many(n, refs, owned, interruptible, &err))
		redis_raise(&err);
	for (int i = 0; i < n; i++)
	{
		if (!owned[i] && note_lost)
			lock_table_note_lost(locks[i]->key);
		lock_table_remove(locks[i]);
	}
	pfree(owned);
	pfree(refs);
	pfree(locks);
	return n;
}

/* redis_unlock() of the last hold: release in Redis, then forget the lock. */
void
redislock_release_one(HeldLock *lock)
{
	LockRef		ref = lock_ref_of(lock);
	int			owned;
	RedisError	err;

	if (!redis_lock_release_many(1, &ref, &owned, true, &err))
		redis_raise(&err);
	if (!owned)
	{
		lock_table_note_lost(lock->key);
		ereport(WARNING,
				(errcode(ERRCODE_T_R_SERIALIZATION_FAILURE),
				 errmsg("redis lock \"%s\" had already been lost when it was released", lock->key),
				 errdetail("Its lease ran out and another holder took it; this transaction cannot commit.")));
	}
	lock_table_remove(lock);
}

/*
 * DISCARD ALL releases session locks, as it releases PostgreSQL's session-level advisory locks. It
 * cannot run inside a transaction block, so only session locks are left to release. It also reads what
 * the last transaction's releases answered, so that their WARNINGs reach this client, not the next
 * one of a pooled connection.
 */
static void
redislock_process_utility(PlannedStmt *pstmt, const char *queryString, bool readOnlyTree,
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
		/* what the last transaction's releases answered belongs to this session, not the next */
		redis_lock_settle_releases(true);
		if (lock_table_count() > 0)
			(void) redislock_release_all(true, false);
	}
}

void
redislock_install_utility_hook(void)
{
	prev_process_utility = ProcessUtility_hook;
	ProcessUtility_hook = redislock_process_utility;
}
