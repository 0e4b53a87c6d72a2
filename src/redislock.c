/*
 * redislock.c
 *		Module entry point of redislock: distributed, transaction-scoped locks held in Redis.
 *
 * Loading the library only defines the settings. The Redis connection and the transaction callbacks
 * come lazily, on the first lock call of a backend.
 */
#include "redislock.h"

#include "fmgr.h"

PG_MODULE_MAGIC;

void		_PG_init(void);

void
_PG_init(void)
{
	redislock_define_settings();
}
