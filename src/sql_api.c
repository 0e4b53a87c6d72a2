/*
 * sql_api.c
 *		The SQL-callable functions of redislock and the checks of their arguments.
 *
 * Argument errors: a NULL key is 22004; an empty or too long key, a ttl that is not positive and a
 * negative timeout are 22023, naming the argument. Keys reach Redis as binary-safe arguments, so any
 * text value is a valid key.
 */
#include "redislock.h"

#include "access/htup_details.h"
#include "funcapi.h"
#include "miscadmin.h"
#include "common/int.h"
#include "storage/proc.h"
#include "catalog/pg_type.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/timestamp.h"

PG_FUNCTION_INFO_V1(redis_wait_lock);
PG_FUNCTION_INFO_V1(redis_try_lock);
PG_FUNCTION_INFO_V1(redis_unlock);
PG_FUNCTION_INFO_V1(redis_unlock_all);
PG_FUNCTION_INFO_V1(redis_fencing_token);
PG_FUNCTION_INFO_V1(redis_locks);
PG_FUNCTION_INFO_V1(redis_lock_info);
PG_FUNCTION_INFO_V1(redis_session_lock);
PG_FUNCTION_INFO_V1(redis_try_session_lock);
PG_FUNCTION_INFO_V1(redis_lock_mode);
PG_FUNCTION_INFO_V1(redis_extend_lock);
PG_FUNCTION_INFO_V1(redis_force_unlock);
PG_FUNCTION_INFO_V1(redis_lock_activity);
PG_FUNCTION_INFO_V1(redis_blocking_pids);
PG_FUNCTION_INFO_V1(redis_lock_stats);
PG_FUNCTION_INFO_V1(redis_lock_stats_reset);
PG_FUNCTION_INFO_V1(redis_wait_lock_shared);
PG_FUNCTION_INFO_V1(redis_try_lock_shared);
PG_FUNCTION_INFO_V1(redis_session_lock_shared);
PG_FUNCTION_INFO_V1(redis_try_session_lock_shared);
PG_FUNCTION_INFO_V1(redis_unlock_shared);
PG_FUNCTION_INFO_V1(redis_wait_semaphore);
PG_FUNCTION_INFO_V1(redis_try_semaphore);
PG_FUNCTION_INFO_V1(redis_wait_locks);

/* The key argument as a C string, checked. */
static char *
key_arg(FunctionCallInfo fcinfo, int argno)
{
	text	   *t;
	int			len;

	if (PG_ARGISNULL(argno))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("redis lock key must not be null")));
	t = PG_GETARG_TEXT_PP(argno);
	len = VARSIZE_ANY_EXHDR(t);
	if (len == 0)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("invalid value for argument \"key\""),
				 errdetail("A redis lock key must not be empty.")));
	if (len > REDISLOCK_KEY_MAX)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("invalid value for argument \"key\""),
				 errdetail("A redis lock key is at most %d bytes; this one has %d.",
						   REDISLOCK_KEY_MAX, len)));
	return text_to_cstring(t);
}

/* An interval argument in milliseconds (rounded up); months count as 30 days, as elsewhere in SQL. */
static int64
interval_ms(const Interval *span)
{
	int64		usecs;
	int64		days = (int64) span->month * DAYS_PER_MONTH + span->day;

	if (pg_mul_s64_overflow(days, USECS_PER_DAY, &usecs) ||
		pg_add_s64_overflow(usecs, span->time, &usecs))
		return span->time < 0 || days < 0 ? PG_INT64_MIN : PG_INT64_MAX;
	if (usecs > 0)
		return usecs / 1000 + (usecs % 1000 != 0);
	return usecs / 1000 - (usecs % 1000 != 0);
}

static int
ttl_arg(FunctionCallInfo fcinfo, int argno)
{
	int64		ms;

	if (PG_NARGS() <= argno || PG_ARGISNULL(argno))
		return redislock_default_ttl_ms;
	ms = interval_ms(PG_GETARG_INTERVAL_P(argno));
	if (ms <= 0)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("invalid value for argument \"ttl\""),
				 errdetail("A lock's ttl must be positive.")));
	if (ms > INT_MAX / 2)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("invalid value for argument \"ttl\""),
				 errdetail("A lock's ttl is at most %d ms.", INT_MAX / 2)));
	return (int) ms;
}

/* The timeout argument in ms, 0 for no limit; NULL means lock_timeout. */
static int
timeout_arg(FunctionCallInfo fcinfo, int argno)
{
	int64		ms;

	if (PG_NARGS() <= argno || PG_ARGISNULL(argno))
		return LockTimeout;
	ms = interval_ms(PG_GETARG_INTERVAL_P(argno));
	if (ms < 0)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("invalid value for argument \"timeout\""),
				 errdetail("A timeout must not be negative; 0 waits without limit.")));
	return ms > INT_MAX ? 0 : (int) ms;
}

static HeldLock *any_held(const char *key);

/*
 * Take key in req's mode for this transaction (session: for the session), waiting in its queue or not.
 * A key this backend already holds in that mode gets one more hold, with no round trip. Returns
 * whether it was taken; *token is its fencing token. Every call to Redis is a new acquisition, with an
 * id of its own (names.c).
 */
static bool
take_lock(const char *key, LockRequest req, int ttl_ms, int timeout_ms, bool wait, bool session,
		  int64 *token)
{
	HeldLock   *lock = lock_table_find(key, req.mode);
	HeldLock   *other = any_held(key);	/* in any mode: one backend, one prefix per key name */
	LockRef		ref = {redislock_key_prefix, key};
	char		acquisition[REDISLOCK_HOLDER_MAX + 1];
	char		name[REDISLOCK_NAME_MAX + 1];
	ReleaseTicket *ticket;
	int64		lease_start_ms;
	bool		taken = true;

	xact_init();
	if (lock == NULL && other != NULL && strcmp(other->prefix, redislock_key_prefix) != 0)
		lock = other;			/* for the message below */
	if (lock != NULL && strcmp(lock->prefix, redislock_key_prefix) != 0)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("redis lock \"%s\" is already held under key prefix \"%s\"", key, lock->prefix),
				 errdetail("redislock.key_prefix is now \"%s\"; one backend holds one lock per key name.",
						   redislock_key_prefix),
				 errhint("Release the lock, or set redislock.key_prefix back, before locking this key again.")));
	if (lock != NULL && req.mode == LOCK_SEMAPHORE && lock->permits != req.permits)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("redis semaphore \"%s\" is in use with %d permits, not %d", key, lock->permits,
						req.permits),
				 errhint("Every caller of one semaphore must give the same number of permits.")));
	if (lock != NULL && xact_forget_if_lost(lock))
		lock = NULL;
	if (lock != NULL && lock->nholds == 0 && lock->session_holds == 0)
	{
		/* no hold left (cannot happen, but must never pass for a lock): release it, take afresh */
		release_enqueue(lock_table_remove(lock), false);
		lock = NULL;
	}
	if (lock != NULL)
	{
		if (session)
			lock_table_push_session_hold(lock);
		else
			lock_table_push_hold(lock);
		*token = lock->token;
		return true;
	}

	/* the keeper cannot keep a lease shorter than a few of its rounds (the check is rare: tiny ttls) */
	if (ttl_ms < keeper_min_lease_ms() && registry_tracks_session())
		ttl_ms = keeper_min_lease_ms();
	names_new_acquisition(acquisition, sizeof(acquisition));
	ticket = release_ticket_make(&ref, acquisition, ttl_ms);
	release_call_started(ticket);
	lock_table_name(name, req.mode, key);
	if (wait)
	{
		/* once queued, the wait shows in redis_lock_activity (keeper mode) until it ends, however */
		PG_TRY();
		{
			*token = lockop_wait(&ref, req, acquisition, ttl_ms, timeout_ms, &lease_start_ms);
		}
		PG_CATCH();
		{
			registry_wait_end(name);
			if (geterrcode() == ERRCODE_QUERY_CANCELED)
				stats_add(STATS_CANCELS, 1);
			PG_RE_THROW();
		}
		PG_END_TRY();
	}
	else
		taken = lockop_try(&ref, req, acquisition, ttl_ms, token, &lease_start_ms);
	if (!taken)
	{
		release_ticket_free(release_call_finished());
		return false;
	}
	stats_add(STATS_ACQUISITIONS, 1);
	PG_TRY();
	{
		lock_table_add(key, req, *token, ttl_ms, lease_start_ms, session);
	}
	PG_FINALLY();
	{
		if (wait)
			registry_wait_end(name);	/* (a lock the registry took is no longer a wait) */
	}
	PG_END_TRY();
	return true;
}

static const LockRequest exclusive_request = {LOCK_EXCLUSIVE, 0};
static const LockRequest shared_request = {LOCK_SHARED, 0};

static const char *
lock_mode_name(LockMode mode)
{
	return mode == LOCK_SHARED ? "shared" : mode == LOCK_SEMAPHORE ? "semaphore" : "exclusive";
}

/* take_lock for the functions whose arguments are (key, ttl, timeout) */
static bool
take_lock_args(FunctionCallInfo fcinfo, LockRequest req, bool wait, bool session, int64 *token)
{
	char	   *key = key_arg(fcinfo, 0);
	int			ttl_ms = ttl_arg(fcinfo, 1);
	int			timeout_ms = wait ? timeout_arg(fcinfo, 2) : 0;

	return take_lock(key, req, ttl_ms, timeout_ms, wait, session, token);
}

/* Session locks live only as long as the lease keeper renews them. */
static void
require_keeper(void)
{
	if (!registry_active())
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("session-level redis locks need the redislock lease keeper"),
				 errdetail("Without it a lock lives only as long as its lease, which a session outlasts."),
				 errhint("Add redislock to shared_preload_libraries and restart the server; the session's redislock.host, port, database and username must be the server-wide ones the keeper uses.")));
}

Datum
redis_wait_lock(PG_FUNCTION_ARGS)
{
	int64		token;

	take_lock_args(fcinfo, exclusive_request, true, false, &token);
	PG_RETURN_INT64(token);
}

Datum
redis_try_lock(PG_FUNCTION_ARGS)
{
	int64		token;

	PG_RETURN_BOOL(take_lock_args(fcinfo, exclusive_request, false, false, &token));
}

Datum
redis_session_lock(PG_FUNCTION_ARGS)
{
	int64		token;

	require_keeper();
	take_lock_args(fcinfo, exclusive_request, true, true, &token);
	PG_RETURN_INT64(token);
}

Datum
redis_try_session_lock(PG_FUNCTION_ARGS)
{
	int64		token;

	require_keeper();
	PG_RETURN_BOOL(take_lock_args(fcinfo, exclusive_request, false, true, &token));
}

Datum
redis_wait_lock_shared(PG_FUNCTION_ARGS)
{
	int64		token;

	take_lock_args(fcinfo, shared_request, true, false, &token);
	PG_RETURN_INT64(token);
}

Datum
redis_try_lock_shared(PG_FUNCTION_ARGS)
{
	int64		token;

	PG_RETURN_BOOL(take_lock_args(fcinfo, shared_request, false, false, &token));
}

Datum
redis_session_lock_shared(PG_FUNCTION_ARGS)
{
	int64		token;

	require_keeper();
	take_lock_args(fcinfo, shared_request, true, true, &token);
	PG_RETURN_INT64(token);
}

Datum
redis_try_session_lock_shared(PG_FUNCTION_ARGS)
{
	int64		token;

	require_keeper();
	PG_RETURN_BOOL(take_lock_args(fcinfo, shared_request, false, true, &token));
}

/* A semaphore's permits argument, checked. */
static LockRequest
semaphore_request(FunctionCallInfo fcinfo, int argno)
{
	LockRequest req = {LOCK_SEMAPHORE, 0};

	if (PG_ARGISNULL(argno) || PG_GETARG_INT32(argno) < 1)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("invalid value for argument \"permits\""),
				 errdetail("A semaphore has at least one permit.")));
	req.permits = PG_GETARG_INT32(argno);
	return req;
}

Datum
redis_wait_semaphore(PG_FUNCTION_ARGS)
{
	char	   *key = key_arg(fcinfo, 0);
	LockRequest req = semaphore_request(fcinfo, 1);
	int64		token;

	take_lock(key, req, ttl_arg(fcinfo, 2), timeout_arg(fcinfo, 3), true, false, &token);
	PG_RETURN_INT64(token);
}

Datum
redis_try_semaphore(PG_FUNCTION_ARGS)
{
	char	   *key = key_arg(fcinfo, 0);
	LockRequest req = semaphore_request(fcinfo, 1);
	int64		token;

	PG_RETURN_BOOL(take_lock(key, req, ttl_arg(fcinfo, 2), 0, false, false, &token));
}

/* 'keeper' when the lease keeper renews leases, 'lease' when a lock lives only for its lease. */
Datum
redis_lock_mode(PG_FUNCTION_ARGS)
{
	PG_RETURN_TEXT_P(cstring_to_text(registry_active() ? "keeper" : "lease"));
}

/*
 * Release one hold of lock (NULL: none held, a WARNING naming what is not owned), as
 * pg_advisory_unlock does: a session hold goes first.
 */
static bool
unlock_one(HeldLock *lock, const char *key, const char *what)
{
	bool		xact_hold;

	if (lock == NULL)
	{
		ereport(WARNING,
				(errcode(ERRCODE_WARNING),
				 errmsg("you don't own %s on key \"%s\"", what, key)));
		return false;
	}
	/* a lock the keeper found lost: a WARNING, false, and the session goes on without it */
	if (xact_forget_if_lost(lock))
		return false;
	xact_hold = lock->session_holds == 0;
	if (lock->session_holds > 0)
		lock->session_holds--;
	else if (lock->nholds > 0)
		lock_table_pop_hold(lock);
	if (lock->session_holds == 0 && lock->nholds == 0)
		xact_release_one(lock, xact_hold);
	return true;
}

/* redis_unlock(key): one exclusive hold, or else one semaphore permit; never a shared hold. */
Datum
redis_unlock(PG_FUNCTION_ARGS)
{
	char	   *key = key_arg(fcinfo, 0);
	HeldLock   *lock = lock_table_find(key, LOCK_EXCLUSIVE);

	if (lock == NULL)
		lock = lock_table_find(key, LOCK_SEMAPHORE);
	PG_RETURN_BOOL(unlock_one(lock, key, "an exclusive redis lock"));
}

Datum
redis_unlock_shared(PG_FUNCTION_ARGS)
{
	char	   *key = key_arg(fcinfo, 0);

	PG_RETURN_BOOL(unlock_one(lock_table_find(key, LOCK_SHARED), key, "a shared redis lock"));
}

/* This backend's hold of key: exclusive first, then a semaphore permit, then shared; or NULL. */
static HeldLock *
any_held(const char *key)
{
	HeldLock   *lock = lock_table_find(key, LOCK_EXCLUSIVE);

	if (lock == NULL)
		lock = lock_table_find(key, LOCK_SEMAPHORE);
	if (lock == NULL)
		lock = lock_table_find(key, LOCK_SHARED);
	return lock;
}

Datum
redis_unlock_all(PG_FUNCTION_ARGS)
{
	PG_RETURN_INT32(xact_release_all(true));
}

Datum
redis_fencing_token(PG_FUNCTION_ARGS)
{
	char	   *key = key_arg(fcinfo, 0);
	HeldLock   *lock = any_held(key);

	if (lock == NULL)
		PG_RETURN_NULL();
	PG_RETURN_INT64(lock->token);
}

/* redis_locks(): the locks this backend holds. */
Datum
redis_locks(PG_FUNCTION_ARGS)
{
	ReturnSetInfo *rsinfo = (ReturnSetInfo *) fcinfo->resultinfo;
	HeldLock  **locks;
	int			n;

	InitMaterializedSRF(fcinfo, 0);
	n = lock_table_collect(&locks);
	for (int i = 0; i < n; i++)
	{
		HeldLock   *lock = locks[i];
		Datum		values[6];
		bool		nulls[6] = {false, false, false, false, false, false};
		int64		lease_start_ms = lock->lease_start_ms;
		int64		renewed_ms;
		bool		lost = false;

		/* with the lease keeper: its latest renewal; a lock it found lost has no expiry */
		if (registry_lease(lock->name, &renewed_ms, &lost))
			lease_start_ms = Max(lease_start_ms, renewed_ms);
		values[0] = CStringGetTextDatum(lock->key);
		values[1] = Int32GetDatum(lock->nholds + lock->session_holds);
		values[2] = Int64GetDatum(lock->token);
		values[3] = TimestampTzGetDatum(lock->acquired_at);
		values[4] = TimestampTzGetDatum(redislock_wall_time_of(lease_start_ms + lock->ttl_ms));
		nulls[4] = lost;
		/* version 1.2 has a mode column; 1.0 and 1.1 do not */
		values[5] = CStringGetTextDatum(lock_mode_name(lock->mode));
		tuplestore_putvalues(rsinfo->setResult, rsinfo->setDesc, values, nulls);
	}
	return (Datum) 0;
}

/* redis_lock_info(key): what Redis knows of a lock now, whoever holds it. */
Datum
redis_lock_info(PG_FUNCTION_ARGS)
{
	char	   *key = key_arg(fcinfo, 0);
	TupleDesc	tupdesc;
	LockInfo	info;
	Datum		values[6];
	bool		nulls[6] = {false, false, false, false, false, false};
	LockRef		ref = {redislock_key_prefix, key};

	if (get_call_result_type(fcinfo, NULL, &tupdesc) != TYPEFUNC_COMPOSITE)
		elog(ERROR, "return type must be a row type");
	/* version 1.2 has a holders column; 1.0 and 1.1 do not */
	if (tupdesc->natts < 5 || tupdesc->natts > 6)
		elog(ERROR, "redis_lock_info must return 5 or 6 columns");
	lockop_info(&ref, &info);

	values[0] = BoolGetDatum(info.held);
	if (info.held)
	{
		Interval   *left = palloc0(sizeof(Interval));

		left->time = info.lease_left_ms * 1000;
		values[1] = CStringGetTextDatum(info.holder);
		values[2] = Int64GetDatum(info.token);
		values[3] = IntervalPGetDatum(left);
	}
	else
		nulls[1] = nulls[2] = nulls[3] = true;
	values[4] = Int32GetDatum((int32) Min(info.waiters, PG_INT32_MAX));
	values[5] = Int32GetDatum((int32) Min(info.holders, PG_INT32_MAX));
	PG_RETURN_DATUM(HeapTupleGetDatum(heap_form_tuple(BlessTupleDesc(tupdesc), values, nulls)));
}

/* A lock this backend holds under the current key prefix, or NULL with a WARNING, as redis_unlock. */
static HeldLock *
held_lock_or_warn(const char *key)
{
	HeldLock   *lock = any_held(key);

	if (lock == NULL || strcmp(lock->prefix, redislock_key_prefix) != 0)
	{
		ereport(WARNING,
				(errcode(ERRCODE_WARNING),
				 errmsg("you don't own a redis lock on key \"%s\"", key)));
		return NULL;
	}
	return lock;
}

/*
 * redis_extend_lock(key, ttl): keep this backend's lock for at least ttl from now (one round trip);
 * false when it was lost (a transaction hold then cannot commit). The keeper, if it renews the lock,
 * renews it for ttl from then on.
 */
Datum
redis_extend_lock(PG_FUNCTION_ARGS)
{
	char	   *key = key_arg(fcinfo, 0);
	int			ttl_ms = ttl_arg(fcinfo, 1);
	HeldLock   *lock = held_lock_or_warn(key);
	LockRef		ref;
	const char *acquisition;
	int			kept;
	int64		sent;
	RedisError	err;

	if (lock == NULL || xact_forget_if_lost(lock))
		PG_RETURN_BOOL(false);
	if (ttl_ms < keeper_min_lease_ms() && registry_tracks_session())
		ttl_ms = keeper_min_lease_ms();
	ref = lock_table_ref(lock);
	acquisition = lock->acquisition;
	sent = redislock_monotonic_ms();
	if (!lockop_verify_many(1, &ref, &acquisition, &lock->token, &ttl_ms, &kept, true, &err))
		redis_raise(&err);
	if (!kept)
	{
		if (lock->nholds > 0)
			xact_note_lost(key);
		ereport(WARNING,
				(errcode(ERRCODE_T_R_SERIALIZATION_FAILURE),
				 errmsg("redis lock \"%s\" was lost before it could be extended", key),
				 errdetail("Its lease had run out and another holder had taken it, or Redis had forgotten it."),
				 lock->nholds > 0 ? errhint("This transaction cannot commit.") : 0));
		if (lock->nholds == 0)
			release_enqueue(lock_table_remove(lock), false);
		PG_RETURN_BOOL(false);
	}
	lock->ttl_ms = ttl_ms;
	lock->lease_start_ms = sent;
	registry_extend(lock->name, ttl_ms, sent);
	PG_RETURN_BOOL(true);
}

/*
 * redis_force_unlock(key): break the lock whoever holds it, on any server. Superuser only by default
 * (the install script revokes it from PUBLIC). A lock of this backend's own that is broken is
 * forgotten here too, and a transaction that held it cannot commit.
 */
Datum
redis_force_unlock(PG_FUNCTION_ARGS)
{
	char	   *key = key_arg(fcinfo, 0);
	LockRef		ref = {redislock_key_prefix, key};
	static const LockMode modes[] = {LOCK_EXCLUSIVE, LOCK_SHARED, LOCK_SEMAPHORE};
	bool		broke;

	xact_init();
	broke = lockop_force(&ref);
	/* every hold of this backend's on the key, in any mode, is broken too */
	for (int i = 0; i < lengthof(modes); i++)
	{
		HeldLock   *own = lock_table_find(key, modes[i]);

		if (own != NULL && strcmp(own->prefix, redislock_key_prefix) == 0)
		{
			if (own->nholds > 0)
				xact_note_lost(key);
			release_enqueue(lock_table_remove(own), false);
		}
	}
	PG_RETURN_BOOL(broke);
}

/*
 * redis_lock_activity(): every redis lock held or awaited by a backend of this server (keeper mode),
 * as pg_locks shows PostgreSQL's own.
 */
Datum
redis_lock_activity(PG_FUNCTION_ARGS)
{
	ReturnSetInfo *rsinfo = (ReturnSetInfo *) fcinfo->resultinfo;
	RegistryRow *rows;
	int			n;

	InitMaterializedSRF(fcinfo, 0);
	n = registry_snapshot(&rows);
	for (int i = 0; i < n; i++)
	{
		RegistryRow *r = &rows[i];
		Datum		values[8];
		bool		nulls[8] = {false, false, false, false, false, false, false, false};

		values[0] = Int32GetDatum(r->pid);
		values[1] = CStringGetTextDatum(r->key);
		values[2] = CStringGetTextDatum(lock_mode_name(r->mode));
		values[3] = CStringGetTextDatum(r->session ? "session" : "transaction");
		values[4] = BoolGetDatum(r->granted);
		values[5] = Int64GetDatum(r->token);
		nulls[5] = !r->granted;
		values[6] = TimestampTzGetDatum(r->since);
		values[7] = TimestampTzGetDatum(redislock_wall_time_of(r->lease_end_ms));
		nulls[7] = !r->granted || r->lost;
		tuplestore_putvalues(rsinfo->setResult, rsinfo->setDesc, values, nulls);
	}
	return (Datum) 0;
}

/*
 * redis_blocking_pids(pid): the backends of this server that hold the redis lock pid waits for
 * (empty when it waits for none, or the holder is on another server: redis_lock_info names it).
 */
Datum
redis_blocking_pids(PG_FUNCTION_ARGS)
{
	int			pid = PG_GETARG_INT32(0);
	RegistryRow *rows;
	int			n = registry_snapshot(&rows);
	RegistryRow *waiting = NULL;
	Datum	   *pids = palloc(Max(n, 1) * sizeof(Datum));
	int			npids = 0;

	for (int i = 0; i < n && waiting == NULL; i++)
	{
		if (rows[i].pid == pid && !rows[i].granted)
			waiting = &rows[i];
	}
	for (int i = 0; i < n && waiting != NULL; i++)
	{
		/* a holder blocks the wait unless both are shared */
		if (rows[i].granted && rows[i].pid != pid && strcmp(rows[i].key, waiting->key) == 0 &&
			strcmp(rows[i].prefix, waiting->prefix) == 0 &&
			!(rows[i].mode == LOCK_SHARED && waiting->mode == LOCK_SHARED))
			pids[npids++] = Int32GetDatum(rows[i].pid);
	}
	PG_RETURN_ARRAYTYPE_P(construct_array(pids, npids, INT4OID, sizeof(int32), true, TYPALIGN_INT));
}

static void
require_stats(void)
{
	if (!stats_available())
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("redis lock statistics need the redislock lease keeper"),
				 errdetail("Only with redislock in shared_preload_libraries does this server count its backends' redis lock activity."),
				 errhint("Add redislock to shared_preload_libraries and restart the server.")));
}

/* redis_lock_stats(): server-wide counters since the last reset (keeper mode). */
Datum
redis_lock_stats(PG_FUNCTION_ARGS)
{
	TupleDesc	tupdesc;
	uint64		counters[STATS_NCOUNTERS];
	TimestampTz reset_at;
	Datum		values[STATS_NCOUNTERS + 1];
	bool		nulls[STATS_NCOUNTERS + 1] = {0};

	require_stats();
	if (get_call_result_type(fcinfo, NULL, &tupdesc) != TYPEFUNC_COMPOSITE)
		elog(ERROR, "return type must be a row type");
	stats_read(counters, &reset_at);
	for (int c = 0; c < STATS_NCOUNTERS; c++)
		values[c] = Int64GetDatum((int64) counters[c]);
	values[STATS_NCOUNTERS] = TimestampTzGetDatum(reset_at);
	PG_RETURN_DATUM(HeapTupleGetDatum(heap_form_tuple(BlessTupleDesc(tupdesc), values, nulls)));
}

/* redis_lock_stats_reset(): count afresh (superuser, or as granted). */
Datum
redis_lock_stats_reset(PG_FUNCTION_ARGS)
{
	require_stats();
	stats_reset();
	PG_RETURN_VOID();
}

static int
compare_cstrings(const void *a, const void *b)
{
	return strcmp(*(char *const *) a, *(char *const *) b);
}

/*
 * redis_wait_locks(keys, ttl, timeout): every key, exclusive, for this transaction, or none. The keys
 * are taken one by one in one canonical order (byte order, duplicates once), so callers of this
 * function never deadlock among themselves; the timeout covers the whole call. On timeout, cancel or
 * error the transaction (or the subtransaction of an exception block) aborts, which releases the keys
 * already taken and leaves the queue. Returns the tokens in the order of keys.
 */
Datum
redis_wait_locks(PG_FUNCTION_ARGS)
{
	ArrayType  *arr;
	Datum	   *elems;
	bool	   *elem_nulls;
	int			n;
	char	  **keys;
	char	  **sorted;
	int64	   *tokens;
	Datum	   *result;
	int			ttl_ms = ttl_arg(fcinfo, 1);
	int			timeout_ms = timeout_arg(fcinfo, 2);
	int64		deadline = timeout_ms > 0 ? redislock_monotonic_ms() + timeout_ms : 0;
	int			nunique = 0;
	MemoryContext call_cxt = CurrentMemoryContext;

	if (PG_ARGISNULL(0))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("redis lock keys must not be null")));
	arr = PG_GETARG_ARRAYTYPE_P(0);
	if (ARR_NDIM(arr) > 1)
		ereport(ERROR,
				(errcode(ERRCODE_ARRAY_SUBSCRIPT_ERROR),
				 errmsg("redis lock keys must be a one-dimensional array")));
	deconstruct_array(arr, TEXTOID, -1, false, TYPALIGN_INT, &elems, &elem_nulls, &n);
	keys = palloc(Max(n, 1) * sizeof(char *));
	sorted = palloc(Max(n, 1) * sizeof(char *));
	for (int i = 0; i < n; i++)
	{
		text	   *t;
		int			len;

		if (elem_nulls[i])
			ereport(ERROR,
					(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
					 errmsg("redis lock key must not be null")));
		t = DatumGetTextPP(elems[i]);
		len = VARSIZE_ANY_EXHDR(t);
		if (len == 0 || len > REDISLOCK_KEY_MAX)
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("invalid value for argument \"keys\""),
					 errdetail("A redis lock key is 1 to %d bytes; element %d has %d.",
							   REDISLOCK_KEY_MAX, i + 1, len)));
		keys[i] = sorted[i] = text_to_cstring(t);
	}
	qsort(sorted, n, sizeof(char *), compare_cstrings);
	tokens = palloc(Max(n, 1) * sizeof(int64));
	for (int i = 0; i < n; i++)
	{
		int			left = 0;

		if (i > 0 && strcmp(sorted[i], sorted[i - 1]) == 0)
			continue;			/* a duplicate is one lock */
		if (deadline != 0)
		{
			int64		ms = deadline - redislock_monotonic_ms();

			if (ms <= 0)
				ereport(ERROR,
						(errcode(ERRCODE_LOCK_NOT_AVAILABLE),
						 errmsg("could not obtain redis locks within %d ms", timeout_ms),
						 errdetail("%d of the keys were taken when the time ran out.", nunique)));
			left = (int) ms;
		}
		PG_TRY();
		{
			take_lock(sorted[i], exclusive_request, ttl_ms, left, true, false, &tokens[nunique]);
		}
		PG_CATCH();
		{
			ErrorData  *edata;

			/* a lock timeout is the whole call's: say so (the abort releases what was taken) */
			MemoryContextSwitchTo(call_cxt);
			edata = CopyErrorData();
			if (edata->sqlerrcode == ERRCODE_LOCK_NOT_AVAILABLE && deadline != 0 &&
				strncmp(edata->message, "could not obtain redis lock", 27) == 0)
			{
				FlushErrorState();
				ereport(ERROR,
						(errcode(ERRCODE_LOCK_NOT_AVAILABLE),
						 errmsg("could not obtain redis locks within %d ms", timeout_ms),
						 errdetail("Redis lock \"%s\" was not free in time; %d of the keys were taken.",
								   sorted[i], nunique)));
			}
			PG_RE_THROW();
		}
		PG_END_TRY();
		sorted[nunique++] = sorted[i];
	}
	result = palloc(Max(n, 1) * sizeof(Datum));
	for (int i = 0; i < n; i++)
	{
		char	  **found = bsearch(&keys[i], sorted, nunique, sizeof(char *), compare_cstrings);

		result[i] = Int64GetDatum(tokens[found - sorted]);
	}
	PG_RETURN_ARRAYTYPE_P(construct_array(result, n, INT8OID, sizeof(int64), FLOAT8PASSBYVAL, TYPALIGN_DOUBLE));
}
