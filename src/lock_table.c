/*
 * lock_table.c
 *		This backend's held Redis locks: hold counts, fencing tokens, leases and subtransaction levels.
 *
 * A held lock is named by its mode's letter and its key (LockMode): one backend may hold a key both
 * exclusive and shared, as with advisory locks, and those are two entries, two acquisitions in Redis.
 *
 * Re-entrancy is answered here without a round trip: a key already held in a mode gains one more hold. Each hold
 * remembers the transaction nesting level that took it, so that aborting a subtransaction drops exactly
 * the holds it took and committing one hands them to its parent. Holds are kept oldest first, and their
 * levels never decrease along the list.
 *
 * Session locks (redis_session_lock) count their holds apart: they outlive transactions, and a key
 * held in both scopes stays held in Redis until both counts are zero. With the lease keeper, every
 * held lock is also entered in the shared registry (registry.c).
 *
 * Each entry keeps the release ticket of its acquisition (release.c); removing an entry hands the
 * ticket back to the caller. Walking the table needs no allocation (the array it fills is grown when
 * locks are added), so that commit and abort callbacks can walk it.
 */
#include "redislock.h"

#include "access/xact.h"
#include "utils/hsearch.h"
#include "utils/memutils.h"
#include "utils/timestamp.h"

static HTAB *held_locks = NULL;
static HeldLock **walk = NULL;	/* what lock_table_collect* fill: room for every entry */
static int	walk_cap = 0;

static HTAB *
table(void)
{
	if (held_locks == NULL)
	{
		HASHCTL		ctl;

		ctl.keysize = REDISLOCK_NAME_MAX + 1;
		ctl.entrysize = sizeof(HeldLock);
		ctl.hcxt = TopMemoryContext;
		held_locks = hash_create("redislock held locks", 16, &ctl,
								 HASH_ELEM | HASH_STRINGS | HASH_CONTEXT);
	}
	return held_locks;
}

/* The local name of key held in mode (room for REDISLOCK_NAME_MAX + 1 bytes). */
void
lock_table_name(char *name, LockMode mode, const char *key)
{
	name[0] = (char) mode;
	strlcpy(name + 1, key, REDISLOCK_NAME_MAX);
}

HeldLock *
lock_table_find(const char *key, LockMode mode)
{
	char		name[REDISLOCK_NAME_MAX + 1];

	lock_table_name(name, mode, key);
	return hash_search(table(), name, HASH_FIND, NULL);
}

/* A session lock that no keeper would renew must not be taken: it would lapse under its holder. */
static void
session_lock_unrenewed(const char *key)
{
	ereport(ERROR,
			(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
			 errmsg("session-level redis lock \"%s\" would not be renewed", key),
			 errdetail("The lease keeper does not renew it: it was taken without the keeper, or on a Redis the keeper does not use."),
			 errhint("Release it and take it again as a session lock, with the server-wide redislock.host, port, database and username.")));
}

/*
 * Enter a lock just taken by the lock call in flight, whose release ticket the table takes over from
 * release.c once the entry exists (until then an ERROR leaves the call to be undone), with its first
 * hold (a session hold when session). ERROR when the keeper's registry is full; the lock is then a
 * hold of this (sub)transaction, so that the abort releases it.
 */
HeldLock *
lock_table_add(const char *key, LockRequest req, int64 token, int ttl_ms, int64 lease_start_ms,
			   bool session)
{
	bool		found;
	HeldLock   *lock;
	ReleaseTicket *ticket;
	int		   *hold_levels;
	char		name[REDISLOCK_NAME_MAX + 1];

	if (walk_cap < lock_table_count() + 1)
	{
		int			cap = Max(16, 2 * (lock_table_count() + 1));

		walk = walk ? repalloc(walk, cap * sizeof(HeldLock *)) :
			MemoryContextAlloc(TopMemoryContext, cap * sizeof(HeldLock *));
		walk_cap = cap;
	}
	hold_levels = MemoryContextAlloc(TopMemoryContext, 4 * sizeof(int));
	lock_table_name(name, req.mode, key);
	lock = hash_search(table(), name, HASH_ENTER, &found);
	Assert(!found);
	strlcpy(lock->key, key, sizeof(lock->key));
	lock->mode = req.mode;
	lock->permits = req.permits;
	/* nothing below allocates until the registry: the entry is whole when the ticket moves */
	ticket = release_call_finished();
	strlcpy(lock->prefix, ticket->prefix, sizeof(lock->prefix));
	strlcpy(lock->acquisition, ticket->acquisition, sizeof(lock->acquisition));
	lock->ticket = ticket;
	ticket->held = true;
	lock->token = token;
	lock->ttl_ms = ttl_ms;
	lock->acquired_at = GetCurrentTimestamp();
	lock->lease_start_ms = lease_start_ms;
	lock_table_note_connection(lock);
	lock->session_holds = session ? 1 : 0;
	lock->nholds = 0;
	lock->holds_cap = 4;
	lock->hold_levels = hold_levels;
	if (!session)
		lock_table_push_hold(lock);
	PG_TRY();
	{
		if (!registry_add(lock) && session)
			session_lock_unrenewed(key);
	}
	PG_CATCH();
	{
		lock->session_holds = 0;
		if (lock->nholds == 0)
			lock_table_push_hold(lock);
		PG_RE_THROW();
	}
	PG_END_TRY();
	return lock;
}

/*
 * The server that serves the lock now, as far as this backend knows without asking (in Cluster mode,
 * by its slot), or NULL when no node is known for it.
 */
RedisServer *
lock_table_server_now(const HeldLock *lock)
{
	if (!cluster_mode())
		return redis_primary_server_as_is();
	return cluster_server_for_slot_as_is(lock->ticket->slot);
}

/* The lock is in Redis on its server's current connection (just taken, or just verified). */
void
lock_table_note_connection(HeldLock *lock)
{
	lock->server = lock_table_server_now(lock);
	lock->connection_epoch = lock->server ? redis_connection_epoch(lock->server) : 0;
	lock->map_generation = cluster_map_generation();
}

/*
 * One more session hold of a lock held already. A lock the keeper does not renew (taken in lease
 * mode: before a keeper ran, or on another Redis, which the lock table cannot tell apart) cannot
 * become a session lock.
 */
void
lock_table_push_session_hold(HeldLock *lock)
{
	int64		renewed_ms;
	bool		lost;

	if (!registry_lease(lock->name, &renewed_ms, &lost))
		session_lock_unrenewed(lock->key);
	if (lock->session_holds++ == 0)
		registry_note_session(lock->name);
}

LockRef
lock_table_ref(const HeldLock *lock)
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

/* Forget a lock; returns its release ticket, which the caller releases or frees. */
ReleaseTicket *
lock_table_remove(HeldLock *lock)
{
	ReleaseTicket *ticket = lock->ticket;

	registry_remove(lock->name);
	pfree(lock->hold_levels);
	hash_search(table(), lock->name, HASH_REMOVE, NULL);
	return ticket;
}

int
lock_table_count(void)
{
	return held_locks ? (int) hash_get_num_entries(held_locks) : 0;
}

/* Every held lock. The array is the table's, valid until the next lock_table_* call that adds. */
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

	*locks = walk;
	if (held_locks == NULL)
		return 0;
	hash_seq_init(&status, held_locks);
	while ((lock = hash_seq_search(&status)) != NULL)
	{
		if (level < 0 || (lock->nholds > 0 && lock->hold_levels[lock->nholds - 1] >= level))
			walk[n++] = lock;
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
