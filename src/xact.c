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
 *	- COMMIT / ABORT: release every lock, and undo a wait in flight, in one round trip. This runs after
 *	  the commit is visible, with interrupts held: it is time-bounded and failures are WARNINGs (the
 *	  lease frees the lock).
 *	- ABORT_SUB / COMMIT_SUB: drop the holds a subtransaction took, or hand them to its parent.
 *	- backend exit: release whatever is left, time-bounded.
 */
#include "redislock.h"

#include "access/xact.h"
#include "storage/ipc.h"
#include "utils/timestamp.h"

static bool callbacks_registered = false;

/* How close to the end of its lease a lock is verified before commit. */
static int
commit_margin_ms(const HeldLock *lock)
{
	return Min(lock->ttl_ms / 2, 2000);
}

/*
 * Release keys at the end of a transaction, subtransaction or backend. Never throws; a failure is a
 * WARNING, and the leases free the locks in Redis. Only after a commit is a lock found already lost
 * worth a WARNING (the first nheld refs are held locks, the rest a wait being undone).
 */
static void
release_quietly(int n, const LockRef *refs, int nheld, bool committed)
{
	int		   *owned;
	RedisError	err;

	if (n == 0)
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

/* Release every lock and the pending wait, and forget them. */
static void
release_everything_quietly(bool committed)
{
	HeldLock  **locks;
	int			n = lock_table_collect(&locks);
	LockRef    *refs = palloc((n + 1) * sizeof(LockRef));
	bool		pending = lock_table_pending(&refs[n]);

	for (int i = 0; i < n; i++)
		refs[i] = lock_ref_of(locks[i]);
	release_quietly(n + (pending ? 1 : 0), refs, n, committed);
	pfree(refs);
	pfree(locks);
	lock_table_reset_xact();
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
	int			keep_ms = 0;
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
		epoch = redis_connection_epoch(redis_primary_server());
		intact = redis_connection_intact(redis_primary_server(), epoch);
	}
	for (int i = 0; i < n; i++)
	{
		HeldLock   *lock = locks[i];
		bool		expiring = now >= TimestampTzPlusMilliseconds(lock->lease_start,
																  lock->ttl_ms - commit_margin_ms(lock));

		if (expiring || !intact || lock->connection_epoch != epoch)
		{
			locks[nnear++] = lock;
			keep_ms = Max(keep_ms, lock->ttl_ms);
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
	kept = palloc(nnear * sizeof(int));
	for (int i = 0; i < nnear; i++)
	{
		refs[i] = lock_ref_of(locks[i]);
		tokens[i] = locks[i]->token;
	}
	if (!redis_lock_verify_many(nnear, refs, tokens, keep_ms, kept, &err))
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
		locks[i]->ttl_ms = keep_ms;
		locks[i]->connection_epoch = redis_connection_epoch(redis_primary_server());
	}
	pfree(kept);
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
			if (lock_table_count() > 0 || lock_table_pending(NULL))
				ereport(ERROR,
						(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
						 errmsg("cannot PREPARE a transaction that holds redis locks"),
						 errdetail("A redis lock lives only as long as its backend's transaction."),
						 errhint("Release the locks with redis_unlock_all() before PREPARE TRANSACTION.")));
			break;
		case XACT_EVENT_COMMIT:
		case XACT_EVENT_PARALLEL_COMMIT:
			release_everything_quietly(true);
			break;
		case XACT_EVENT_ABORT:
		case XACT_EVENT_PARALLEL_ABORT:
		case XACT_EVENT_PREPARE:
			release_everything_quietly(false);
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
			if (lock->nholds == 0)
			{
				locks[nfree] = lock;
				refs[nfree++] = lock_ref_of(lock);
			}
		}
		if (pending)
			refs[nfree] = pending_ref;
		release_quietly(nfree + (pending ? 1 : 0), refs, nfree, false);
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
	release_everything_quietly(false);
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
 * redis_unlock_all(): release every lock now, in one round trip. Returns how many keys were released.
 */
int
redislock_release_all(bool interruptible)
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
		if (!owned[i])
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
