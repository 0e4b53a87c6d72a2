/*
 * lock_table.c
 *		This backend's held Redis locks: hold counts, fencing tokens, leases and subtransaction levels.
 *
 * Re-entrancy is answered here without a round trip: a key already held gains one more hold. Each hold
 * remembers the transaction nesting level that took it, so that aborting a subtransaction drops exactly
 * the holds it took and committing one hands them to its parent. Holds are kept oldest first, and their
 * levels never decrease along the list.
 *
 * Session locks (redis_session_lock) count their holds apart: they outlive transactions, and a key
 * held in both scopes stays held in Redis until both counts are zero. With the lease keeper, every
 * held lock is also entered in the shared registry (registry.c).
 *
 * Besides held locks the table tracks one pending key (a lock call in flight, whose effect in Redis is
 * not yet known) and the first key this transaction found lost, which forbids its COMMIT.
 */
#include "redislock.h"

#include "access/xact.h"
#include "utils/hsearch.h"
#include "utils/memutils.h"
#include "utils/timestamp.h"

static HTAB *held_locks = NULL;
static char pending_key[REDISLOCK_KEY_MAX + 1];
static char pending_prefix[REDISLOCK_PREFIX_MAX + 1];
static bool has_pending = false;
static char lost_key[REDISLOCK_KEY_MAX + 1];
static bool has_lost = false;

static HTAB *
table(void)
{
	if (held_locks == NULL)
	{
		HASHCTL		ctl;

		ctl.keysize = REDISLOCK_KEY_MAX + 1;
		ctl.entrysize = sizeof(HeldLock);
		ctl.hcxt = TopMemoryContext;
		held_locks = hash_create("redislock held locks", 16, &ctl,
								 HASH_ELEM | HASH_STRINGS | HASH_CONTEXT);
	}
	return held_locks;
}

HeldLock *
lock_table_find(const char *key)
{
	return hash_search(table(), key, HASH_FIND, NULL);
}

HeldLock *
lock_table_add(const char *key, int64 token, int ttl_ms, TimestampTz lease_start, bool session)
{
	bool		found;
	HeldLock   *lock = hash_search(table(), key, HASH_ENTER, &found);

	Assert(!found);
	strlcpy(lock->prefix, redislock_key_prefix, sizeof(lock->prefix));
	lock->token = token;
	lock->ttl_ms = ttl_ms;
	lock->acquired_at = GetCurrentTimestamp();
	lock->lease_start = lease_start;
	lock->connection_epoch = redis_connection_epoch(redis_primary_server());
	lock->session_holds = session ? 1 : 0;
	lock->nholds = 0;
	lock->holds_cap = 4;
	lock->hold_levels = MemoryContextAlloc(TopMemoryContext, lock->holds_cap * sizeof(int));
	if (!session)
		lock_table_push_hold(lock);
	PG_TRY();
	{
		registry_add(lock);
	}
	PG_CATCH();
	{
		/*
		 * The keeper could not take it on (registry full): make it a hold of this (sub)transaction,
		 * so that the abort releases it in Redis rather than keep a lock nobody renews.
		 */
		lock->session_holds = 0;
		if (lock->nholds == 0)
			lock_table_push_hold(lock);
		PG_RE_THROW();
	}
	PG_END_TRY();
	return lock;
}

LockRef
lock_ref_of(const HeldLock *lock)
{
	LockRef		ref = {lock->prefix, lock->key};

	return ref;
}

void
lock_table_push_hold(HeldLock *lock)
{
	if (lock->nholds == lock->holds_cap)
	{
		lock->holds_cap *= 2;
		lock->hold_levels = repalloc(lock->hold_levels, lock->holds_cap * sizeof(int));
	}
	lock->hold_levels[lock->nholds++] = GetCurrentTransactionNestLevel();
}

void
lock_table_pop_hold(HeldLock *lock)
{
	Assert(lock->nholds > 0);
	lock->nholds--;
}

void
lock_table_remove(HeldLock *lock)
{
	registry_remove(lock->key);
	pfree(lock->hold_levels);
	hash_search(table(), lock->key, HASH_REMOVE, NULL);
}

int
lock_table_count(void)
{
	return held_locks ? (int) hash_get_num_entries(held_locks) : 0;
}

/* Every held lock, in a palloc'd array the caller frees. */
int
lock_table_collect(HeldLock ***locks)
{
	return lock_table_collect_level(-1, locks);
}

/* The held locks that have a transaction hold taken at nesting level >= level (-1: all of them). */
int
lock_table_collect_level(int level, HeldLock ***locks)
{
	HASH_SEQ_STATUS status;
	HeldLock   *lock;
	int			n = 0;

	*locks = palloc(Max(lock_table_count(), 1) * sizeof(HeldLock *));
	if (held_locks == NULL)
		return 0;
	hash_seq_init(&status, held_locks);
	while ((lock = hash_seq_search(&status)) != NULL)
	{
		if (level < 0 || (lock->nholds > 0 && lock->hold_levels[lock->nholds - 1] >= level))
			(*locks)[n++] = lock;
	}
	return n;
}

/* Subtransaction commit: holds of from_level now belong to the parent, to_level. */
void
lock_table_reassign_level(int from_level, int to_level)
{
	HASH_SEQ_STATUS status;
	HeldLock   *lock;

	if (held_locks == NULL)
		return;
	hash_seq_init(&status, held_locks);
	while ((lock = hash_seq_search(&status)) != NULL)
	{
		for (int i = lock->nholds - 1; i >= 0 && lock->hold_levels[i] >= from_level; i--)
			lock->hold_levels[i] = to_level;
	}
}

void
lock_table_set_pending(const char *key)
{
	strlcpy(pending_key, key, sizeof(pending_key));
	strlcpy(pending_prefix, redislock_key_prefix, sizeof(pending_prefix));
	has_pending = true;
}

void
lock_table_clear_pending(void)
{
	has_pending = false;
}

bool
lock_table_pending(LockRef *ref)
{
	if (has_pending && ref != NULL)
	{
		ref->prefix = pending_prefix;
		ref->key = pending_key;
	}
	return has_pending;
}

void
lock_table_note_lost(const char *key)
{
	if (!has_lost)
	{
		strlcpy(lost_key, key, sizeof(lost_key));
		has_lost = true;
	}
}

const char *
lock_table_lost(void)
{
	return has_lost ? lost_key : NULL;
}

/*
 * Forget what ends with the transaction: its holds (a lock with session holds stays), the pending key
 * and any lost-lock mark. With all_scopes, session locks go too (backend exit).
 */
void
lock_table_reset_xact(bool all_scopes)
{
	HASH_SEQ_STATUS status;
	HeldLock   *lock;

	if (held_locks != NULL)
	{
		hash_seq_init(&status, held_locks);
		while ((lock = hash_seq_search(&status)) != NULL)
		{
			lock->nholds = 0;
			if (all_scopes || lock->session_holds == 0)
				lock_table_remove(lock);	/* dynahash allows deleting the current entry */
		}
	}
	has_pending = false;
	has_lost = false;
}
