/*
 * redislock.h
 *		Declarations shared by the files of the redislock extension.
 *
 * Files and what each owns:
 *	redislock.c		module entry point (_PG_init)
 *	settings.c		the redislock.* settings
 *	redis_conn.c	Redis connections and their interruptible, time-bounded I/O
 *	scripts.c		the Lua scripts (embedded at build time) and EVALSHA with NOSCRIPT fallback
 *	lock_ops.c		lock operations in Redis: acquire, wait in the FIFO queue, release, verify, info
 *	deferred_release.c	releases at transaction end sent without waiting, and reading their answers
 *	lock_table.c	this backend's held locks, their hold counts and subtransaction levels
 *	xact.c			transaction, subtransaction and backend-exit integration
 *	sql_api.c		the SQL-callable functions and their argument checks
 *	registry.c		the shared registry of held locks (with shared_preload_libraries)
 *	keeper.c		the lease keeper, a background worker that renews the registry's leases
 */
#ifndef REDISLOCK_H
#define REDISLOCK_H

#include "postgres.h"

#include <hiredis/hiredis.h>

#include "datatype/timestamp.h"

/* Longest lock key accepted, and longest redislock.key_prefix, in bytes. */
#define REDISLOCK_KEY_MAX 1024
#define REDISLOCK_PREFIX_MAX 256
/* Longest holder id: "<host>:<port>:<pid>:<nonce>" with a host name of up to 255 bytes. */
#define REDISLOCK_HOLDER_MAX 320

/*
 * A lock as Redis names it: the key prefix in force when it was taken, and the key. Changing
 * redislock.key_prefix later does not move a lock already held or waited for.
 */
typedef struct LockRef
{
	const char *prefix;
	const char *key;
} LockRef;

/*
 * How often a waiting backend re-checks its place (heartbeat), and how long a queued waiter that stops
 * re-checking is still taken for alive. A waiter that dies without cleaning up blocks those behind it
 * for at most REDISLOCK_WAITER_LIVENESS_MS.
 */
#define REDISLOCK_RECHECK_MS 1000
#define REDISLOCK_WAITER_LIVENESS_MS 3000

/* settings.c */
extern char *redislock_host;
extern int	redislock_port;
extern char *redislock_username;
extern char *redislock_password;
extern int	redislock_database;
extern int	redislock_connect_timeout_ms;
extern int	redislock_command_timeout_ms;
extern int	redislock_default_ttl_ms;
extern char *redislock_key_prefix;
extern bool redislock_synchronous_release;
extern bool redislock_connection_settings_changed;
extern void redislock_define_settings(void);

/* redis_conn.c */
#define REDIS_MAX_ARGS 12

/* One command as binary-safe arguments; the strings belong to the caller. */
typedef struct RedisCommand
{
	int			argc;
	const char *argv[REDIS_MAX_ARGS];
	size_t		argvlen[REDIS_MAX_ARGS];
} RedisCommand;

/* Why a round trip failed, ready to be raised as an ERROR or a WARNING. */
typedef struct RedisError
{
	int			sqlstate;
	char		message[512];
	char		hint[256];
	bool		sent;			/* the commands may have reached Redis */
	bool		connection_lost;	/* the connection broke (closed, reset); Redis may be fine */
} RedisError;

typedef struct RedisServer RedisServer;

extern RedisServer *redis_primary_server(void);
extern RedisServer *redis_primary_server_as_is(void);
extern bool redis_roundtrip(RedisServer *server, int ncmds, const RedisCommand *cmds,
							redisReply **replies, int timeout_ms, bool interruptible,
							RedisError *err);
extern bool redis_send_unanswered(RedisServer *server, int ncmds, const RedisCommand *cmds,
								  RedisError *err);
extern int	redis_unanswered(RedisServer *server);
extern bool redis_read_unanswered(RedisServer *server, redisReply **replies, bool interruptible,
								  RedisError *err);
extern void redis_free_replies(int n, redisReply **replies);
extern void redis_disconnect(RedisServer *server);
extern uint64 redis_connection_epoch(RedisServer *server);
extern bool redis_connection_intact(RedisServer *server, uint64 epoch);
extern void redis_error_from_reply(RedisServer *server, const redisReply *reply, RedisError *err);
extern void redis_error_malformed(RedisServer *server, const char *what, RedisError *err);
extern void redis_raise(const RedisError *err) pg_attribute_noreturn();
extern void redis_warn(const RedisError *err, const char *context);

/* scripts.c */
typedef enum RedisScriptId
{
	SCRIPT_ACQUIRE,
	SCRIPT_RELEASE,
	SCRIPT_VERIFY,
	SCRIPT_INFO
} RedisScriptId;

/* The Redis keys of one lock; all share one hash tag. */
typedef struct LockKeys
{
	char	   *lock;			/* {P K}: owner, token, lease expiry */
	size_t		lock_len;
	char	   *queue;			/* {P K}:q: FIFO of waiters */
	size_t		queue_len;
	char	   *waiters;		/* {P K}:w: waiter heartbeats */
	size_t		waiters_len;
} LockKeys;

extern void redis_script_command(RedisCommand *cmd, RedisScriptId id, const LockKeys *keys,
								 int nargs, const char *const *args);
extern bool redis_run_scripts(RedisServer *server, int ncmds, RedisCommand *cmds,
							  RedisScriptId *ids, redisReply **replies, int timeout_ms,
							  bool interruptible, RedisError *err);
extern bool redis_reply_is_noscript(const redisReply *reply);
extern bool redis_script_known(RedisServer *server, RedisScriptId id);
extern void redis_script_command_whole(RedisCommand *cmd, RedisScriptId id, const LockKeys *keys,
									   int nargs, const char *const *args);

/* lock_ops.c */
typedef struct LockInfo
{
	bool		held;
	char	   *holder;
	int64		token;
	int64		lease_left_ms;
	int64		waiters;
} LockInfo;

extern const char *redislock_holder_id(void);
extern void lock_keys_build(const LockRef *ref, LockKeys *keys);
extern void lock_keys_free(LockKeys *keys);
extern void release_commands_build(int n, const LockRef *refs, bool whole, RedisCommand *cmds,
								   LockKeys *lk);
extern bool redis_lock_try(const char *key, int ttl_ms, int64 *token, TimestampTz *lease_start);
extern int64 redis_lock_wait(const char *key, int ttl_ms, int timeout_ms, TimestampTz *lease_start);
extern bool redis_lock_release_many(int n, const LockRef *refs, int *owned, bool interruptible,
									RedisError *err);
extern bool redis_lock_release_again(RedisServer *server, int n, const LockRef *refs, int *owned,
									 RedisError *err);
extern bool redis_lock_verify_many(int n, const LockRef *refs, const char *const *holders,
								   const int64 *tokens, const int *keep_ms, int *kept,
								   bool interruptible, RedisError *err);
extern void redis_lock_info_fetch(const char *key, LockInfo *info);

/* deferred_release.c */
extern bool redis_lock_release_unanswered(int n, const LockRef *refs, int nheld, RedisError *err);
extern void redis_lock_settle_releases(bool interruptible);

/* lock_table.c */
typedef struct HeldLock
{
	char		key[REDISLOCK_KEY_MAX + 1]; /* hash key: the lock key as given */
	char		prefix[REDISLOCK_PREFIX_MAX + 1];	/* redislock.key_prefix when taken */
	int64		token;			/* fencing token of this acquisition */
	int			ttl_ms;			/* lease asked for */
	TimestampTz acquired_at;	/* when this backend got it */
	TimestampTz lease_start;	/* no later than the lease began in Redis */
	uint64		connection_epoch;	/* the Redis connection it was taken on */
	int			session_holds;	/* holds that outlive transactions (redis_session_lock) */
	int			nholds;			/* re-entrant transaction holds */
	int			holds_cap;
	int		   *hold_levels;	/* transaction nesting level of each hold, oldest first */
} HeldLock;

extern HeldLock *lock_table_find(const char *key);
extern HeldLock *lock_table_add(const char *key, int64 token, int ttl_ms, TimestampTz lease_start,
								bool session);
extern LockRef lock_ref_of(const HeldLock *lock);
extern void lock_table_push_hold(HeldLock *lock);
extern void lock_table_pop_hold(HeldLock *lock);
extern void lock_table_remove(HeldLock *lock);
extern int	lock_table_count(void);
extern int	lock_table_collect(HeldLock ***locks);
extern int	lock_table_collect_level(int level, HeldLock ***locks);
extern void lock_table_reassign_level(int from_level, int to_level);
extern void lock_table_set_pending(const char *key);
extern void lock_table_clear_pending(void);
extern bool lock_table_pending(LockRef *ref);
extern void lock_table_note_lost(const char *key);
extern const char *lock_table_lost(void);
extern void lock_table_reset_xact(bool all_scopes);

/* registry.c */
typedef struct RenewalItem
{
	int			pid;
	char		key[REDISLOCK_KEY_MAX + 1];
	char		prefix[REDISLOCK_PREFIX_MAX + 1];
	char		holder[REDISLOCK_HOLDER_MAX + 1];
	int64		token;
	int			ttl_ms;
	TimestampTz renewed_at;
} RenewalItem;

extern int	redislock_max_locks;
extern void registry_install_hooks(void);
extern bool registry_active(void);
extern void registry_publish_keeper_server(void);
extern void registry_add(const HeldLock *lock);
extern void registry_remove(const char *key);
extern bool registry_lease(const char *key, TimestampTz *renewed_at, bool *lost);
extern int	registry_collect_due(TimestampTz now, RenewalItem *items, int max);
extern void registry_record(const RenewalItem *item, bool kept, TimestampTz renewed_at);

/* keeper.c */
extern void keeper_register(void);
extern PGDLLEXPORT void redislock_keeper_main(Datum arg);

/* xact.c */
extern void redislock_xact_init(void);
extern void redislock_install_utility_hook(void);
extern int	redislock_release_all(bool interruptible, bool note_lost);
extern void redislock_release_one(HeldLock *lock);

#endif							/* REDISLOCK_H */
