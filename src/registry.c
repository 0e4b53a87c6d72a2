/*
 * registry.c
 *		The server-wide registry of held Redis locks, in shared memory, for the lease keeper.
 *
 * It exists only when redislock is in shared_preload_libraries. Each backend enters the locks it
 * holds (pid, local name — the mode's letter and the key —, prefix, acquisition id, token, lease) and
 * removes them when it releases them; the lease keeper (keeper.c) reads it to renew leases and
 * writes back when it renewed a lease or found a lock lost. One LWLock guards the table; every section under it is short and does no I/O.
 *
 * The table is a fixed-size hash in shared memory of its own, sized by redislock.max_locks at server
 * start: it never grows into the spare shared memory that PostgreSQL's lock manager needs, and a lock
 * beyond max_locks fails with 53200.
 *
 * The keeper says here that it runs (its pid, cleared when it exits) and on which Redis it renews. A
 * session is in keeper mode only while a keeper runs and the session's settings name that Redis; a
 * session whose own settings name another Redis (SET, ALTER ROLE/DATABASE … SET) does not enter its
 * locks: they live for their lease, as without the keeper.
 *
 * A backend that dies without cleaning up (SIGKILL) takes the postmaster through a crash restart,
 * which wipes shared memory, so the registry never renews the locks of a dead backend for long; the
 * keeper also drops entries whose backend is gone.
 */
#include "redislock.h"

#include "miscadmin.h"
#include "storage/ipc.h"
#include "storage/lwlock.h"
#include "storage/procarray.h"
#include "storage/shmem.h"
#include "utils/hsearch.h"
#include "utils/timestamp.h"

typedef struct RegistryTag
{
	int			pid;
	char		name[REDISLOCK_NAME_MAX + 1];	/* the lock's local name: mode letter, key */
} RegistryTag;

typedef struct RegistryEntry
{
	RegistryTag tag;			/* hash key: must be first */
	char		prefix[REDISLOCK_PREFIX_MAX + 1];
	char		acquisition[REDISLOCK_HOLDER_MAX + 1];
	int64		token;
	int			ttl_ms;
	int64		renewed_ms;		/* monotonic: the lease began no later than this */
	bool		lost;
	bool		granted;		/* held; false while the backend waits for it */
	bool		session;		/* has (or had) a session hold */
	TimestampTz since;			/* acquired, or started waiting (wall clock, for display) */
} RegistryEntry;

#define SERVER_IDENTITY_LEN (MAXPGPATH + 128)

typedef struct RegistryShared
{
	int			keeper_pid;		/* the running keeper, or 0 */
	char		keeper_server[SERVER_IDENTITY_LEN];	/* where the keeper renews; "" until it runs */
} RegistryShared;

int			redislock_max_locks = 4096;
static HTAB *registry = NULL;
static RegistryShared *registry_shared = NULL;
static LWLock *registry_lock = NULL;
static shmem_request_hook_type prev_shmem_request_hook = NULL;
static shmem_startup_hook_type prev_shmem_startup_hook = NULL;

static void
registry_shmem_request(void)
{
	if (prev_shmem_request_hook)
		prev_shmem_request_hook();
	RequestAddinShmemSpace(hash_estimate_size(redislock_max_locks, sizeof(RegistryEntry)) +
						   MAXALIGN(sizeof(RegistryShared)) + MAXALIGN(stats_shmem_size()));
	/* the registry's lock, and the counters' */
	RequestNamedLWLockTranche("redislock", 2);
}

static void
registry_shmem_startup(void)
{
	HASHCTL		info;
	bool		found;

	if (prev_shmem_startup_hook)
		prev_shmem_startup_hook();
	info.keysize = sizeof(RegistryTag);
	info.entrysize = sizeof(RegistryEntry);
	LWLockAcquire(AddinShmemInitLock, LW_EXCLUSIVE);
	/* all max_locks entries made now, and never more (HASH_FIXED_SIZE) */
	registry = ShmemInitHash("redislock registry", redislock_max_locks, redislock_max_locks, &info,
							 HASH_ELEM | HASH_BLOBS | HASH_FIXED_SIZE);
	registry_shared = ShmemInitStruct("redislock keeper", sizeof(RegistryShared), &found);
	if (!found)
	{
		registry_shared->keeper_pid = 0;
		registry_shared->keeper_server[0] = '\0';
	}
	registry_lock = &(GetNamedLWLockTranche("redislock"))[0].lock;
	stats_shmem_init(&(GetNamedLWLockTranche("redislock"))[1].lock);
	LWLockRelease(AddinShmemInitLock);
}

/* From _PG_init while preloading: ask for shared memory. */
void
registry_install_hooks(void)
{
	prev_shmem_request_hook = shmem_request_hook;
	shmem_request_hook = registry_shmem_request;
	prev_shmem_startup_hook = shmem_startup_hook;
	shmem_startup_hook = registry_shmem_startup;
}

/* Which Redis the current settings name: host, port, database and user. */
static void
server_identity(char *buf, size_t len)
{
	snprintf(buf, len, "%s|%d|%d|%s", redislock_host, redislock_port, redislock_database,
			 redislock_username);
}

static void
keeper_exited(int code, Datum arg)
{
	LWLockAcquire(registry_lock, LW_EXCLUSIVE);
	if (registry_shared->keeper_pid == MyProcPid)
		registry_shared->keeper_pid = 0;
	LWLockRelease(registry_lock);
}

/* For the keeper, at start: from now on (until it exits) sessions are in keeper mode. */
void
registry_keeper_started(void)
{
	on_shmem_exit(keeper_exited, (Datum) 0);
	LWLockAcquire(registry_lock, LW_EXCLUSIVE);
	registry_shared->keeper_pid = MyProcPid;
	LWLockRelease(registry_lock);
}

/* For the keeper, each round: publish the Redis it renews on (the settings may have been reloaded). */
void
registry_keeper_tick(void)
{
	char		identity[SERVER_IDENTITY_LEN];

	server_identity(identity, sizeof(identity));
	LWLockAcquire(registry_lock, LW_EXCLUSIVE);
	strlcpy(registry_shared->keeper_server, identity, sizeof(registry_shared->keeper_server));
	LWLockRelease(registry_lock);
}

/*
 * Whether the keeper renews on the Redis this session's settings name (running: and runs now).
 */
static bool
keeper_serves_session(bool running)
{
	char		identity[SERVER_IDENTITY_LEN];
	bool		same;

	if (registry == NULL)
		return false;
	server_identity(identity, sizeof(identity));
	LWLockAcquire(registry_lock, LW_SHARED);
	same = (!running || registry_shared->keeper_pid != 0) &&
		strcmp(registry_shared->keeper_server, identity) == 0;
	LWLockRelease(registry_lock);
	return same;
}

/*
 * Whether a lock taken now would be entered for the keeper to renew (registry_add): the keeper renews
 * on this session's Redis, running at this instant or not.
 */
bool
registry_tracks_session(void)
{
	return keeper_serves_session(false);
}

/*
 * Whether the lease keeper keeps this session's leases alive: redislock was preloaded, a keeper runs
 * (on a standby too), and the session's settings name the Redis it renews on.
 */
bool
registry_active(void)
{
	return keeper_serves_session(true);
}

static void
make_tag(RegistryTag *tag, int pid, const char *name)
{
	memset(tag, 0, sizeof(*tag));
	tag->pid = pid;
	strlcpy(tag->name, name, sizeof(tag->name));
}

/*
 * Enter a lock this backend now holds. ERROR when the registry is full (the abort releases it). A
 * keeper that is restarting (or briefly stuck) still gets the lock to renew: what counts is the Redis
 * the keeper renews on, not whether it runs at this instant. Returns whether the lock was entered
 * (false: no registry, or the keeper renews on another Redis: the lock lives for its lease).
 */
bool
registry_add(const HeldLock *lock)
{
	RegistryTag tag;
	RegistryEntry *entry;
	bool		found;

	if (!keeper_serves_session(false))
		return false;
	make_tag(&tag, MyProcPid, lock->name);
	LWLockAcquire(registry_lock, LW_EXCLUSIVE);
	entry = hash_search(registry, &tag, HASH_ENTER_NULL, &found);
	if (entry != NULL)
	{
		strlcpy(entry->prefix, lock->prefix, sizeof(entry->prefix));
		strlcpy(entry->acquisition, lock->acquisition, sizeof(entry->acquisition));
		entry->token = lock->token;
		entry->ttl_ms = lock->ttl_ms;
		entry->renewed_ms = lock->lease_start_ms;
		entry->lost = false;
		entry->granted = true;
		entry->session = lock->session_holds > 0;
		entry->since = lock->acquired_at;
	}
	LWLockRelease(registry_lock);
	if (entry == NULL)
		ereport(ERROR,
				(errcode(ERRCODE_OUT_OF_MEMORY),
				 errmsg("too many redis locks held on this server"),
				 errdetail("The lease keeper tracks at most redislock.max_locks = %d locks.", redislock_max_locks),
				 errhint("Release locks, or raise redislock.max_locks (a restart is needed).")));
	return true;
}

void
registry_remove(const char *name)
{
	RegistryTag tag;

	if (registry == NULL)
		return;
	make_tag(&tag, MyProcPid, name);
	LWLockAcquire(registry_lock, LW_EXCLUSIVE);
	hash_search(registry, &tag, HASH_REMOVE, NULL);
	LWLockRelease(registry_lock);
}

/*
 * This backend's entry for the lock of that local name, or NULL, with the registry's lock held exclusively: the caller
 * releases it.
 */
static RegistryEntry *
lock_own_entry(const char *name)
{
	RegistryTag tag;

	make_tag(&tag, MyProcPid, name);
	LWLockAcquire(registry_lock, LW_EXCLUSIVE);
	return hash_search(registry, &tag, HASH_FIND, NULL);
}

/* redis_extend_lock: the keeper renews key for ttl_ms from now on; renewed at renewed_ms. */
void
registry_extend(const char *name, int ttl_ms, int64 renewed_ms)
{
	RegistryEntry *entry;

	if (registry == NULL)
		return;
	entry = lock_own_entry(name);
	if (entry != NULL && entry->granted)
	{
		entry->ttl_ms = ttl_ms;
		entry->renewed_ms = Max(entry->renewed_ms, renewed_ms);
	}
	LWLockRelease(registry_lock);
}

/*
 * What the keeper knows of a lock of ours: when its lease was last renewed (monotonic), and whether it
 * was found lost. False when there is no registry or no entry.
 */
bool
registry_lease(const char *name, int64 *renewed_ms, bool *lost)
{
	RegistryTag tag;
	RegistryEntry *entry;

	if (registry == NULL)
		return false;
	make_tag(&tag, MyProcPid, name);
	LWLockAcquire(registry_lock, LW_SHARED);
	entry = hash_search(registry, &tag, HASH_FIND, NULL);
	if (entry != NULL && !entry->granted)
		entry = NULL;			/* a wait, not a lock */
	if (entry != NULL)
	{
		*renewed_ms = entry->renewed_ms;
		*lost = entry->lost;
	}
	LWLockRelease(registry_lock);
	return entry != NULL;
}

/*
 * For the keeper: copies of the entries whose lease is due for renewal (a third of it has passed),
 * at most max of them. Reads under a shared lock: backends' lock calls do not wait behind it.
 */
int
registry_collect_due(int64 now_ms, RenewalItem *items, int max)
{
	HASH_SEQ_STATUS status;
	RegistryEntry *entry;
	int			n = 0;

	if (registry == NULL)
		return 0;
	LWLockAcquire(registry_lock, LW_SHARED);
	hash_seq_init(&status, registry);
	while ((entry = hash_seq_search(&status)) != NULL)
	{
		if (!entry->granted || entry->lost || now_ms < entry->renewed_ms + entry->ttl_ms / 3)
			continue;
		items[n].pid = entry->tag.pid;
		strlcpy(items[n].name, entry->tag.name, sizeof(items[n].name));
		strlcpy(items[n].prefix, entry->prefix, sizeof(items[n].prefix));
		strlcpy(items[n].acquisition, entry->acquisition, sizeof(items[n].acquisition));
		items[n].token = entry->token;
		items[n].ttl_ms = entry->ttl_ms;
		items[n].renewed_ms = entry->renewed_ms;
		if (++n >= max)
		{
			hash_seq_term(&status);
			break;
		}
	}
	LWLockRelease(registry_lock);
	return n;
}

/*
 * For the keeper: drop the entries of backends that are gone (they exited without releasing, which
 * only a bug or an error in exit handling leaves behind). The proc array is asked with the registry
 * lock shared; only entries found dead are rechecked under the exclusive lock.
 */
void
registry_drop_dead(void)
{
	HASH_SEQ_STATUS status;
	RegistryEntry *entry;
	int		   *pids;
	int			n = 0;
	int			ndead = 0;

	if (registry == NULL)
		return;
	pids = palloc(redislock_max_locks * sizeof(int));
	LWLockAcquire(registry_lock, LW_SHARED);
	hash_seq_init(&status, registry);
	while ((entry = hash_seq_search(&status)) != NULL)
		pids[n++] = entry->tag.pid;
	LWLockRelease(registry_lock);
	for (int i = 0; i < n; i++)
	{
		if (BackendPidGetProc(pids[i]) == NULL)
			pids[ndead++] = pids[i];
	}
	if (ndead > 0)
	{
		LWLockAcquire(registry_lock, LW_EXCLUSIVE);
		hash_seq_init(&status, registry);
		while ((entry = hash_seq_search(&status)) != NULL)
		{
			for (int i = 0; i < ndead; i++)
			{
				if (entry->tag.pid == pids[i] && BackendPidGetProc(pids[i]) == NULL)
				{
					hash_search(registry, &entry->tag, HASH_REMOVE, NULL);
					break;
				}
			}
		}
		LWLockRelease(registry_lock);
	}
	pfree(pids);
}

/* For the keeper: the outcome of renewing item (renewed at renewed_ms, or lost). */
void
registry_record(const RenewalItem *item, bool kept, int64 renewed_ms)
{
	RegistryTag tag;
	RegistryEntry *entry;

	make_tag(&tag, item->pid, item->name);
	LWLockAcquire(registry_lock, LW_EXCLUSIVE);
	entry = hash_search(registry, &tag, HASH_FIND, NULL);
	/* the backend may have released it, or taken it again, meanwhile */
	if (entry != NULL && entry->token == item->token &&
		strcmp(entry->acquisition, item->acquisition) == 0)
	{
		if (kept)
			entry->renewed_ms = Max(entry->renewed_ms, renewed_ms);
		else
			entry->lost = true;
	}
	LWLockRelease(registry_lock);
}

/*
 * A wait for key (under prefix) begins, once it has joined the lock's queue: enter it, so that
 * redis_lock_activity and redis_blocking_pids show it. Best effort: a full registry leaves the wait
 * unlisted. A lock call that never waited touches nothing here.
 */
static bool wait_listed = false;	/* this backend has a wait entry (no lock taken to ask) */

void
registry_wait_begin(const char *prefix, const char *name)
{
	RegistryTag tag;
	RegistryEntry *entry;
	bool		found;

	if (registry == NULL)
		return;
	wait_listed = true;
	make_tag(&tag, MyProcPid, name);
	LWLockAcquire(registry_lock, LW_EXCLUSIVE);
	entry = hash_search(registry, &tag, HASH_ENTER_NULL, &found);
	if (entry != NULL && !found)
	{
		strlcpy(entry->prefix, prefix, sizeof(entry->prefix));
		entry->acquisition[0] = '\0';
		entry->token = 0;
		entry->ttl_ms = 0;
		entry->renewed_ms = 0;
		entry->lost = false;
		entry->granted = false;
		entry->session = false;
		entry->since = GetCurrentTimestamp();
	}
	LWLockRelease(registry_lock);
}

/* The wait for key ended (the lock, if taken, has its own entry by now): drop what is left of it. */
void
registry_wait_end(const char *name)
{
	RegistryEntry *entry;

	if (registry == NULL || !wait_listed)
		return;
	wait_listed = false;
	entry = lock_own_entry(name);
	if (entry != NULL && !entry->granted)
		hash_search(registry, &entry->tag, HASH_REMOVE, NULL);
	LWLockRelease(registry_lock);
}

/* A lock of ours gained a session hold. */
void
registry_note_session(const char *name)
{
	RegistryEntry *entry;

	if (registry == NULL)
		return;
	entry = lock_own_entry(name);
	if (entry != NULL)
		entry->session = true;
	LWLockRelease(registry_lock);
}

/* The SQL objects that read the registry need it: in lease mode they fail with 55000. */
static void
require_registry(void)
{
	if (registry == NULL)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("the server-wide view of redis locks needs the redislock lease keeper"),
				 errdetail("Only with redislock in shared_preload_libraries does this server keep a registry of its backends' redis locks."),
				 errhint("Add redislock to shared_preload_libraries and restart the server.")));
}

/*
 * Copies of every entry (held locks and waits of this server's backends), palloc'd; for
 * redis_lock_activity and redis_blocking_pids. The lock is held shared for the copy only.
 */
int
registry_snapshot(RegistryRow **rows)
{
	HASH_SEQ_STATUS status;
	RegistryEntry *entry;
	int			n = 0;

	require_registry();
	LWLockAcquire(registry_lock, LW_SHARED);
	*rows = palloc(Max(hash_get_num_entries(registry), 1) * sizeof(RegistryRow));
	hash_seq_init(&status, registry);
	while ((entry = hash_seq_search(&status)) != NULL)
	{
		RegistryRow *r = &(*rows)[n++];

		r->pid = entry->tag.pid;
		strlcpy(r->key, entry->tag.name + 1, sizeof(r->key));
		r->mode = (LockMode) entry->tag.name[0];
		strlcpy(r->prefix, entry->prefix, sizeof(r->prefix));
		r->granted = entry->granted;
		r->session = entry->session;
		r->lost = entry->lost;
		r->token = entry->token;
		r->since = entry->since;
		r->lease_end_ms = entry->renewed_ms + entry->ttl_ms;
	}
	LWLockRelease(registry_lock);
	return n;
}
