/*
 * stats.c
 *		Server-wide counters of redis lock activity, for the view redis_lock_stats (keeper mode).
 *
 * Each process has a slot of its own in shared memory (by its PGPROC number) and only ever adds to
 * it, with plain atomic reads and writes: counting costs no lock and no round trip. Reading sums the
 * slots under the registry's lock; a slot reused by a later process keeps counting on, so nothing is
 * lost when backends exit. A reset records the sums as a baseline that reading subtracts (the
 * maximum wait, which cannot be subtracted, is zeroed in every slot instead).
 *
 * Without shared_preload_libraries there are no slots, and counting does nothing.
 */
#include "redislock.h"

#include "access/twophase.h"
#include "port/atomics.h"
#include "storage/ipc.h"
#include "storage/lwlock.h"
#include "storage/proc.h"
#include "storage/shmem.h"
#include "utils/timestamp.h"

typedef struct StatsSlot
{
	pg_atomic_uint64 counters[STATS_NCOUNTERS];
} StatsSlot;

typedef struct StatsShared
{
	int			nslots;
	uint64		baseline[STATS_NCOUNTERS];	/* the sums at the last reset */
	TimestampTz reset_at;
	StatsSlot	slots[FLEXIBLE_ARRAY_MEMBER];
} StatsShared;

static StatsShared *stats = NULL;
static LWLock *stats_lock = NULL;

static int
stats_nslots(void)
{
	return MaxBackends + NUM_AUXILIARY_PROCS + max_prepared_xacts;
}

Size
stats_shmem_size(void)
{
	return add_size(offsetof(StatsShared, slots), mul_size(stats_nslots(), sizeof(StatsSlot)));
}

/* From the shmem startup hook, under AddinShmemInitLock; lock guards resets against reads. */
void
stats_shmem_init(LWLock *lock)
{
	bool		found;

	stats_lock = lock;
	stats = ShmemInitStruct("redislock stats", stats_shmem_size(), &found);
	if (!found)
	{
		stats->nslots = stats_nslots();
		memset(stats->baseline, 0, sizeof(stats->baseline));
		stats->reset_at = GetCurrentTimestamp();
		for (int i = 0; i < stats->nslots; i++)
		{
			for (int c = 0; c < STATS_NCOUNTERS; c++)
				pg_atomic_init_u64(&stats->slots[i].counters[c], 0);
		}
	}
}

static pg_atomic_uint64 *
my_counter(StatsCounter c)
{
	if (stats == NULL || MyProc == NULL || MyProc->pgprocno >= stats->nslots)
		return NULL;
	return &stats->slots[MyProc->pgprocno].counters[c];
}

/* Add n to counter c of this process (no lock: only this process writes its slot). */
void
stats_add(StatsCounter c, int64 n)
{
	pg_atomic_uint64 *p = my_counter(c);

	if (p != NULL)
		pg_atomic_write_u64(p, pg_atomic_read_u64(p) + n);
}

/* Raise this process's maximum wait to ms. */
void
stats_note_wait(int64 ms)
{
	pg_atomic_uint64 *p = my_counter(STATS_MAX_WAIT_MS);

	stats_add(STATS_WAIT_TIME_MS, ms);
	if (p != NULL && (uint64) ms > pg_atomic_read_u64(p))
		pg_atomic_write_u64(p, ms);
}

/* Whether counters exist (keeper mode); the SQL objects fail with 55000 otherwise. */
bool
stats_available(void)
{
	return stats != NULL;
}

/* The counters since the last reset into values[STATS_NCOUNTERS], and when that was. */
void
stats_read(uint64 *values, TimestampTz *reset_at)
{
	LWLockAcquire(stats_lock, LW_SHARED);
	for (int c = 0; c < STATS_NCOUNTERS; c++)
	{
		uint64		sum = 0;

		for (int i = 0; i < stats->nslots; i++)
		{
			uint64		v = pg_atomic_read_u64(&stats->slots[i].counters[c]);

			if (c == STATS_MAX_WAIT_MS)
				sum = Max(sum, v);
			else
				sum += v;
		}
		values[c] = c == STATS_MAX_WAIT_MS ? sum : sum - Min(sum, stats->baseline[c]);
	}
	*reset_at = stats->reset_at;
	LWLockRelease(stats_lock);
}

/* Start counting afresh. */
void
stats_reset(void)
{
	LWLockAcquire(stats_lock, LW_EXCLUSIVE);
	for (int c = 0; c < STATS_NCOUNTERS; c++)
	{
		uint64		sum = 0;

		for (int i = 0; i < stats->nslots; i++)
		{
			if (c == STATS_MAX_WAIT_MS)
				pg_atomic_write_u64(&stats->slots[i].counters[c], 0);
			else
				sum += pg_atomic_read_u64(&stats->slots[i].counters[c]);
		}
		stats->baseline[c] = sum;
	}
	stats->reset_at = GetCurrentTimestamp();
	LWLockRelease(stats_lock);
}
