/*
 * keeper.c
 *		The lease keeper: a background worker that keeps the leases of live backends' locks alive.
 *
 * With redislock in shared_preload_libraries, the postmaster starts one keeper per server, as soon as
 * the server accepts connections — on a hot standby too: it needs no database, and session locks taken
 * there need it as much. Every
 * KEEPER_TICK_MS it takes from the registry (registry.c) the locks whose lease is a third used up and
 * renews them all in one round trip per batch, with the verify script run as each lock's holder: a
 * lock still owned gets a fresh lease, a lock found gone or owned by someone else is marked lost, so
 * that its holder's COMMIT fails with 40001. A lease then bounds only how long a dead holder's lock
 * survives. When Redis cannot be reached, nothing is renewed, and a lock whose lease ran out meanwhile
 * is marked lost. If the keeper dies, the postmaster starts it again after a second, and it renews at
 * once whatever fell due.
 */
#include "redislock.h"

#include "miscadmin.h"
#include "pgstat.h"
#include "postmaster/bgworker.h"
#include "postmaster/interrupt.h"
#include "tcop/tcopprot.h"
#include "storage/ipc.h"
#include "storage/latch.h"
#include "utils/guc.h"
#include "utils/memutils.h"
#include "utils/timestamp.h"

#define KEEPER_TICK_MS 100
#define KEEPER_BATCH 256

/*
 * The shortest lease the keeper can keep: a few of its rounds, and a renewal that takes all of
 * command_timeout. Shorter ones are raised to it, when taken and when renewed.
 */
int
keeper_min_lease_ms(void)
{
	return 3 * KEEPER_TICK_MS + redislock_command_timeout_ms;
}

void
keeper_register(void)
{
	BackgroundWorker worker;

	memset(&worker, 0, sizeof(worker));
	/* a connection to no database: enough to show in pg_stat_activity */
	worker.bgw_flags = BGWORKER_SHMEM_ACCESS | BGWORKER_BACKEND_DATABASE_CONNECTION;
	/* not RecoveryFinished, which never comes on a standby */
	worker.bgw_start_time = BgWorkerStart_ConsistentState;
	worker.bgw_restart_time = 1;
	snprintf(worker.bgw_library_name, BGW_MAXLEN, "redislock");
	snprintf(worker.bgw_function_name, BGW_MAXLEN, "redislock_keeper_main");
	snprintf(worker.bgw_name, BGW_MAXLEN, "redislock lease keeper");
	snprintf(worker.bgw_type, BGW_MAXLEN, "redislock lease keeper");
	RegisterBackgroundWorker(&worker);
}

/* Renew one batch of due leases; returns how many were due. */
static int
renew_batch(RenewalItem *items)
{
	int64		now = redislock_monotonic_ms();
	int			n = registry_collect_due(now, items, KEEPER_BATCH);
	LockRef    *refs;
	const char **acquisitions;
	int64	   *tokens;
	int		   *keep;
	int		   *kept;
	RedisError	err;

	if (n == 0)
		return 0;
	refs = palloc(n * sizeof(LockRef));
	acquisitions = palloc(n * sizeof(char *));
	tokens = palloc(n * sizeof(int64));
	keep = palloc(n * sizeof(int));
	kept = palloc(n * sizeof(int));
	for (int i = 0; i < n; i++)
	{
		refs[i].prefix = items[i].prefix;
		refs[i].key = items[i].name + 1;	/* after the mode letter */
		acquisitions[i] = items[i].acquisition;
		tokens[i] = items[i].token;
		keep[i] = Max(items[i].ttl_ms, keeper_min_lease_ms());
	}
	if (lockop_verify_many(n, refs, acquisitions, tokens, keep, kept, true, &err))
	{
		for (int i = 0; i < n; i++)
			registry_record(&items[i], kept[i], now);
	}
	else
	{
		ereport(LOG,
				(errmsg("redislock lease keeper could not renew %d lease(s): %s", n, err.message),
				 err.detail[0] ? errdetail_internal("%s", err.detail) : 0));
		for (int i = 0; i < n; i++)
		{
			/* a lease that ran out unrenewed may have been taken by someone else: lost */
			if (now >= items[i].renewed_ms + items[i].ttl_ms)
				registry_record(&items[i], false, now);
		}
		n = 0;					/* do not retry at once */
	}
	return n;
}

void
redislock_keeper_main(Datum arg)
{
	MemoryContext loop_cxt;
	RenewalItem *items;
	int64		swept_ms = 0;

	pqsignal(SIGHUP, SignalHandlerForConfigReload);
	pqsignal(SIGTERM, die);
	BackgroundWorkerUnblockSignals();
	BackgroundWorkerInitializeConnection(NULL, NULL, 0);
	pgstat_report_activity(STATE_RUNNING, "renewing the leases of this server's redis locks");
	registry_keeper_started();

	loop_cxt = AllocSetContextCreate(TopMemoryContext, "redislock keeper", ALLOCSET_DEFAULT_SIZES);
	items = MemoryContextAlloc(TopMemoryContext, KEEPER_BATCH * sizeof(RenewalItem));
	for (;;)
	{
		MemoryContext old;

		CHECK_FOR_INTERRUPTS();
		if (ConfigReloadPending)
		{
			ConfigReloadPending = false;
			ProcessConfigFile(PGC_SIGHUP);
		}
		registry_keeper_tick();
		old = MemoryContextSwitchTo(loop_cxt);
		while (renew_batch(items) == KEEPER_BATCH)
			CHECK_FOR_INTERRUPTS();
		if (redislock_monotonic_ms() - swept_ms >= 1000)
		{
			registry_drop_dead();
			swept_ms = redislock_monotonic_ms();
		}
		MemoryContextSwitchTo(old);
		MemoryContextReset(loop_cxt);

		(void) WaitLatch(MyLatch, WL_LATCH_SET | WL_TIMEOUT | WL_EXIT_ON_PM_DEATH, KEEPER_TICK_MS,
						 redis_wait_event());
		ResetLatch(MyLatch);
	}
}
