/*
 * redislock.c
 *		Module entry point of redislock: distributed locks held in Redis.
 *
 * Loading the library defines the settings. The Redis connection and the transaction callbacks come
 * lazily, on the first lock call of a backend. Loaded from shared_preload_libraries, it also sets up
 * the shared registry of held locks and the lease keeper that renews them, and catches DISCARD ALL
 * for session locks.
 */
#include "redislock.h"

#include "fmgr.h"
#include "miscadmin.h"

PG_MODULE_MAGIC;

void		_PG_init(void);

void
_PG_init(void)
{
	redislock_define_settings();
	if (process_shared_preload_libraries_in_progress)
	{
		registry_install_hooks();
		keeper_register();
	}
	xact_install_utility_hook();
}
