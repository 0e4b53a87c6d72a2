/*
 * redislock.h
 *		Declarations shared by the files of the redislock extension.
 *
 * Files and what each owns (a function's prefix names its file):
 *	redislock.c		module entry point (_PG_init)
 *	settings.c		the redislock.* settings (redislock_*)
 *	redis_conn.c	Redis connections and their interruptible, time-bounded I/O (redis_*)
 *	transport.c		the socket under a connection, plain or TLS: connect, handshake, read, write
 *					(transport_*)
 *	sentinel.c		finding the master through Redis Sentinel (sentinel_*)
 *	cluster.c		Redis Cluster: the slot map, which node serves a lock, redirections (cluster_*)
 *	replicas.c		confirming an acquisition or renewal with WAIT (replicas_*)
 *	deadlock.c		finding cycles of waits through redis locks and PostgreSQL's locks (deadlock_*)
 *	names.c			every name redislock uses in Redis: the keys of a lock, the ids of its holders (names_*)
 *	scripts.c		the Lua scripts (embedded at build time), EVALSHA with NOSCRIPT fallback (script_*)
 *	lock_ops.c		taking a lock in Redis: try, wait in the FIFO queue; verify; inspect; force (lockop_*)
 *	release.c		every release: at transaction end without waiting, now, the undo of a call cut
 *					short, and releases whose outcome is still unknown (release_*)
 *	lock_table.c	this backend's held locks, their hold counts and subtransaction levels (lock_table_*)
 *	xact.c			transaction, subtransaction and backend-exit integration; the check before
 *					commit (xact_*)
 *	sql_api.c		the SQL-callable functions and their argument checks
 *	registry.c		the shared registry of held locks (with shared_preload_libraries) (registry_*)
 *	keeper.c		the lease keeper, a background worker that renews the registry's leases (keeper_*)
 *	stats.c			server-wide counters, summed from per-process slots (stats_*)
 *
 * Calls go one way, with no cycle between files: sql_api → xact → lock_ops → release → scripts,
 * names → redis_conn → transport; sql_api and xact also call lock_table (→ registry, release) and
 * release directly; keeper → registry, lock_ops; lock_ops → replicas. One exception: redis_conn asks
 * sentinel where the master is when it connects, and sentinel asks the Sentinels through redis_conn's
 * connections of the other kind (SERVER_SENTINEL), which never ask sentinel again. Likewise cluster
 * asks redis_conn's node connections for the slot map (CLUSTER SLOTS, a plain round trip), and
 * redis_conn only tells cluster to forget its map when the settings change; scripts and the callers
 * of script_run_routed ask cluster which node serves a slot.
 */
#ifndef REDISLOCK_H
#define REDISLOCK_H

#include "postgres.h"

#include <time.h>

#include <hiredis/hiredis.h>

#include "datatype/timestamp.h"
#include "lib/stringinfo.h"
#include "miscadmin.h"
#include "storage/lwlock.h"
#include "utils/timestamp.h"

/* Longest lock key accepted, and longest redislock.key_prefix, in bytes. */
#define REDISLOCK_KEY_MAX 1024
#define REDISLOCK_PREFIX_MAX 256
/*
 * Longest acquisition id: "<host>:<port>:<pid>:<nonce>:<n>" with a host name of up to 255 bytes and a
 * 64-bit counter.
 */
#define REDISLOCK_HOLDER_MAX 320

/*
 * How a key is held: exclusive, shared, or as a permit of a semaphore. The value is also the mode's
 * letter in Redis (src/lua/common.lua) and the first byte of a held lock's local name (lock_table.c).
 */
typedef enum LockMode
{
	LOCK_EXCLUSIVE = 'x',
	LOCK_SHARED = 's',
	LOCK_SEMAPHORE = 'm'
} LockMode;

/* Longest local name of a held lock: the mode's letter, then the key. */
#define REDISLOCK_NAME_MAX (REDISLOCK_KEY_MAX + 1)

/*
 * A lock as Redis names it: the key prefix in force when it was taken, and the key. Changing
 * redislock.key_prefix later does not move a lock already held or waited for.
 */
typedef struct LockRef
{
	const char *prefix;
	const char *key;
} LockRef;

/* What a lock call asks for: a mode, and for a semaphore its permits. */
typedef struct LockRequest
{
	LockMode	mode;
	int			permits;
} LockRequest;

/*
 * How often a waiting backend re-checks its place (heartbeat), and how long a queued waiter that stops
 * re-checking is still taken for alive (2 heartbeats and a command_timeout).
 */
#define REDISLOCK_RECHECK_MS 1000

/*
 * Leases are timed on the monotonic clock, in milliseconds: a step of the wall clock must not make an
 * expired lease look alive. The clock is system-wide, so the keeper and the backends compare readings.
 */
static inline int64
redislock_monotonic_us(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64) ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

static inline int64
redislock_monotonic_ms(void)
{
	return redislock_monotonic_us() / 1000;
}

/* The wall-clock time at which a monotonic reading (ms) is or was, for display. */
static inline TimestampTz
redislock_wall_time_of(int64 monotonic_ms)
{
	return GetCurrentTimestamp() + (monotonic_ms * 1000 - redislock_monotonic_us());
}

/*
 * Where an ERROR is caught and swallowed while interrupts are held (commit and abort callbacks),
 * errfinish has reset the hold counts before jumping: they are put back, or the
 * caller's RESUME_INTERRUPTS would wrap them round and cancel would never work again.
 */
typedef struct HeldInterrupts
{
	uint32		interrupts;
	uint32		cancel;
	uint32		crit_section;
} HeldInterrupts;

static inline HeldInterrupts
redislock_interrupts_held(void)
{
	HeldInterrupts h = {InterruptHoldoffCount, QueryCancelHoldoffCount, CritSectionCount};

	return h;
}

static inline void
redislock_interrupts_restore(HeldInterrupts h)
{
	InterruptHoldoffCount = h.interrupts;
	QueryCancelHoldoffCount = h.cancel;
	CritSectionCount = h.crit_section;
}

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
extern bool redislock_verify_at_commit;
extern bool redislock_log_lock_waits;
extern int	redislock_sslmode;
extern char *redislock_sslrootcert;
extern char *redislock_sslcert;
extern char *redislock_sslkey;
extern char *redislock_sentinels;
extern char *redislock_cluster_nodes;
extern char *redislock_sentinel_master;
extern char *redislock_sentinel_username;
extern char *redislock_sentinel_password;
extern int	redislock_wait_replicas;
extern int	redislock_wait_replicas_timeout_ms;
extern int	redislock_deadlock_timeout_ms;

/* redislock.sslmode, in the order of the checks each one adds */
typedef enum RedisSslMode
{
	REDIS_SSL_DISABLE,
	REDIS_SSL_REQUIRE,
	REDIS_SSL_VERIFY_CA,
	REDIS_SSL_VERIFY_FULL
} RedisSslMode;

/* How long a wait lasts before redislock.log_lock_waits logs it (PostgreSQL's deadlock_timeout default). */
#define REDISLOCK_LOG_WAIT_AFTER_MS 1000
extern bool redislock_connection_settings_changed;
extern void redislock_define_settings(void);

/* One host:port of a list setting (redislock.sentinels, redislock.cluster_nodes). */
typedef struct RedisAddress
{
	char		host[256];
	int			port;
} RedisAddress;

extern int	redislock_parse_addresses(const char *name, const char *what, const char *list,
									  RedisAddress *out, int max, char *problem, size_t len);

/* Longest any one timeout setting may be: sums of a few of them never overflow an int. */
#define REDISLOCK_TIMEOUT_MAX_MS (3600 * 1000)

/* transport.c */
typedef struct Transport
{
	int			fd;				/* -1 when closed */
	struct ssl_st *ssl;			/* the TLS session, or NULL for plain text */
	bool		unix_socket;
} Transport;

/* What a transport step did, or the socket event it waits for. */
typedef enum TransportStatus
{
	TRANSPORT_DONE,
	TRANSPORT_WANT_READ,
	TRANSPORT_WANT_WRITE,
	TRANSPORT_EOF,
	TRANSPORT_ERROR
} TransportStatus;

extern bool transport_host_is_address(const char *host);
extern bool transport_open(Transport *t, const char *host, int port, char *errbuf, size_t errlen);
extern bool transport_connected(Transport *t, char *errbuf, size_t errlen);
extern TransportStatus transport_tls_step(Transport *t, const char *host, char *errbuf, size_t errlen,
										  bool *certificate_problem);
extern ssize_t transport_read(Transport *t, char *buf, size_t len, TransportStatus *st,
							  char *errbuf, size_t errlen);
extern ssize_t transport_write(Transport *t, const char *buf, size_t len, TransportStatus *st,
							   char *errbuf, size_t errlen);
extern bool transport_has_buffered(Transport *t);
extern bool transport_idle_intact(Transport *t);
extern void transport_close(Transport *t);
extern void transport_settings_changed(void);

/* redis_conn.c */
#define REDIS_MAX_ARGS 13

/* One command as binary-safe arguments; the strings belong to the caller. */
typedef struct RedisCommand
{
	int			argc;
	const char *argv[REDIS_MAX_ARGS];
	size_t		argvlen[REDIS_MAX_ARGS];
} RedisCommand;

/* One command already in the wire format (RESP), for sending without formatting or allocating. */
typedef struct RedisFormatted
{
	const char *buf;
	size_t		len;
} RedisFormatted;

/* Why a round trip failed, ready to be raised as an ERROR or a WARNING. */
typedef struct RedisError
{
	int			sqlstate;
	char		message[256];
	char		detail[512];	/* what Redis said, when it said something */
	char		hint[512];
	bool		sent;			/* the commands may have reached Redis */
	bool		connection_lost;	/* the connection broke (closed, reset); Redis may be fine */
	bool		timed_out;		/* Redis did not answer in time (stalled, overloaded) */
	bool		unreachable;	/* no connection could be made (refused, timed out, no master): a
								 * failover under way looks like this */
} RedisError;

typedef struct RedisServer RedisServer;

/* The data server holds the locks; a Sentinel only says where the master is. */
typedef enum RedisServerKind
{
	SERVER_DATA,
	SERVER_SENTINEL
} RedisServerKind;

extern RedisServer *redis_primary_server(void);
extern RedisServer *redis_sentinel_server(const char *host, int port);
extern const char *redis_server_name(RedisServer *server);
extern RedisServer *redis_primary_server_as_is(void);
extern void redis_apply_settings(void);
extern RedisServer *redis_node_server(const char *host, int port);
extern bool redis_server_is_at(RedisServer *server, const char *host, int port);
extern const char *redis_server_host(RedisServer *server);
extern bool redis_server_usable(RedisServer *server);
extern uint32 *redis_known_scripts(RedisServer *server);
extern bool redis_reserve_everywhere(int n, size_t bytes);
extern void redis_disconnect_all(void);
extern bool redis_ensure_connected(RedisServer *server, bool interruptible, RedisError *err);
extern bool redis_roundtrip(RedisServer *server, int ncmds, const RedisCommand *cmds,
							redisReply **replies, int timeout_ms, bool interruptible,
							RedisError *err);
extern bool redis_send_unanswered(RedisServer *server, int ncmds, const RedisFormatted *cmds,
								  RedisError *err);
extern int	redis_unanswered(RedisServer *server);
extern bool redis_read_unanswered(RedisServer *server, redisReply **replies, bool interruptible,
								  RedisError *err);
extern bool redis_unanswered_arrived(RedisServer *server, redisReply **replies, int wait_ms);
extern void redis_free_replies(int n, redisReply **replies);
extern void redis_disconnect(RedisServer *server);
extern uint64 redis_connection_epoch(RedisServer *server);
extern bool redis_connection_intact(RedisServer *server, uint64 epoch);
extern void redis_error_set(RedisError *err, int sqlstate, const char *hint, const char *fmt,...)
			pg_attribute_printf(4, 5);
extern void redis_error_from_reply(RedisServer *server, const redisReply *reply, RedisError *err);
extern void redis_error_malformed(RedisServer *server, const char *what, RedisError *err);
extern void redis_raise(const RedisError *err) pg_attribute_noreturn();
extern void redis_warn(const RedisError *err, const char *context);
extern const char *redis_acl_rule(void);
extern uint32 redis_wait_event(void);

/* sentinel.c */
extern bool sentinel_locate_master(char *host, size_t hostlen, int *port, bool interruptible,
								   RedisError *err);
extern bool sentinel_check_list(const char *list, char *problem, size_t len);
extern bool sentinel_answer_was_wrong(int tried);

/* cluster.c */
extern bool cluster_mode(void);
extern bool cluster_check_list(const char *list, char *problem, size_t len);
extern void cluster_check_settings(void);
extern void cluster_forget(void);
extern int	cluster_key_slot(const char *key, size_t len);
extern int	cluster_command_slot(const RedisCommand *cmd);
extern RedisServer *cluster_server_for_slot(int slot, bool interruptible, RedisError *err);
extern RedisServer *cluster_server_for_slot_as_is(int slot);
extern RedisServer *cluster_server_for_lock(const LockRef *ref, bool interruptible, RedisError *err);
extern bool cluster_redirection(const redisReply *reply, RedisServer *from, RedisServer **to, bool *ask);
extern void cluster_server_failed(void);
extern uint64 cluster_map_generation(void);

/* names.c */

/* The Redis keys of one lock; all share one hash tag. */
typedef struct LockKeys
{
	char	   *lock;			/* {P K}: owner, token, lease expiry */
	size_t		lock_len;
	char	   *queue;			/* {P K}:q: FIFO of waiters */
	size_t		queue_len;
	char	   *waiters;		/* {P K}:w: waiter heartbeats */
	size_t		waiters_len;
	char	   *shared;			/* {P K}:s: shared holders, semaphore permits */
	size_t		shared_len;
} LockKeys;

extern const char *names_backend_id(void);
extern void names_new_acquisition(char *buf, size_t len);
extern void names_lock_keys(const LockRef *ref, LockKeys *keys);
extern void names_lock_keys_free(LockKeys *keys);
extern char *names_grant_key(const LockRef *ref, const char *acquisition);
extern char *names_backend_of(const char *acquisition);
extern char *names_wait_record_key(const char *prefix, const char *backend);
extern bool names_backend_is_local(const char *backend, int *pid);

/* scripts.c */
typedef enum RedisScriptId
{
	SCRIPT_ACQUIRE,
	SCRIPT_RELEASE,
	SCRIPT_VERIFY,
	SCRIPT_INFO,
	SCRIPT_FORCE,
	SCRIPT_HOLDERS,
	SCRIPT_NONE					/* a plain command sent along with scripts (WAIT) */
} RedisScriptId;

extern void script_command(RedisCommand *cmd, RedisScriptId id, const LockKeys *keys,
						   int nargs, const char *const *args);
extern char *script_format(const RedisCommand *cmd, size_t *len);
extern bool script_run(RedisServer *server, int ncmds, RedisCommand *cmds, RedisScriptId *ids,
					   redisReply **replies, int timeout_ms, bool interruptible, RedisError *err);
extern bool script_run_routed(int ncmds, RedisCommand *cmds, RedisScriptId *ids, redisReply **replies,
							  int timeout_ms, bool interruptible, RedisError *err);
extern bool script_run_yes_no(int n, RedisScriptId id, RedisCommand *cmds, int *answers, bool confirm,
							  bool interruptible, RedisError *err);
extern RedisServer *script_answered_by(const RedisCommand *cmd);
extern bool script_reply_is_noscript(const redisReply *reply);
extern bool script_reply_not_run(const redisReply *reply);
extern bool script_call_stopped_midway(void);
extern void script_note_answer(RedisServer *server, RedisScriptId id, const redisReply *reply);
extern bool script_known(RedisServer *server, RedisScriptId id);

/* replicas.c */
extern int	replicas_append_wait(RedisCommand *cmds, RedisScriptId *ids, int ncmds);
extern int	replicas_extra_ms(void);
extern bool replicas_acknowledged(RedisServer *server, const redisReply *reply, RedisError *err);

/* release.c */

/*
 * What it takes to release one acquisition, made when the call that acquires starts (before any
 * commit), so that releasing at the end of a transaction allocates nothing and cannot fail with an
 * ERROR: the lock's names, the acquisition id, and the release command in the wire format.
 */
typedef struct ReleaseTicket
{
	char	   *key;
	char	   *prefix;
	char	   *acquisition;
	char	   *command;		/* EVALSHA of the release script, formatted */
	size_t		command_len;
	int			slot;			/* Redis Cluster's slot of the lock */
	bool		held;			/* a held lock (its loss is worth a WARNING), not a call's undo */
	int			ttl_ms;			/* the lease asked for */
	int64		forget_after_ms;	/* monotonic, once owed: by then Redis has let it go by itself */
} ReleaseTicket;

extern ReleaseTicket *release_ticket_make(const LockRef *ref, const char *acquisition, int ttl_ms);
extern void release_ticket_free(ReleaseTicket *ticket);
extern void release_call_started(ReleaseTicket *ticket);
extern bool release_call_sent(bool sent);
extern ReleaseTicket *release_call_finished(void);
extern void release_enqueue(ReleaseTicket *ticket, bool warn_if_lost);
extern void release_at_xact_end(bool wait);
extern bool release_now(int n, ReleaseTicket **tickets, int *owned, RedisError *err);
extern void release_settle(bool interruptible);
extern bool release_settle_reporting(bool interruptible, RedisError *err);

/* lock_ops.c */
typedef struct LockInfo
{
	bool		held;
	char	   *holder;			/* the exclusive holder, or one of the shared ones */
	int64		token;
	int64		lease_left_ms;
	int64		waiters;
	int64		holders;
	char	   *mode;			/* 'exclusive', 'shared', 'semaphore', or '' when free */
} LockInfo;

extern bool lockop_try(const LockRef *ref, LockRequest req, const char *acquisition, int ttl_ms,
					   int64 *token, int64 *lease_start_ms);
extern int64 lockop_wait(const LockRef *ref, LockRequest req, const char *acquisition, int ttl_ms,
						 int timeout_ms, int64 *lease_start_ms);
extern bool lockop_verify_many(int n, const LockRef *refs, const char *const *acquisitions,
							   const int64 *tokens, const int *keep_ms, int *kept,
							   bool interruptible, RedisError *err);
extern void lockop_info(const LockRef *ref, LockInfo *info);
extern bool lockop_force(const LockRef *ref);

/* lock_table.c */
typedef struct HeldLock
{
	char		name[REDISLOCK_NAME_MAX + 1];	/* hash key: the mode's letter, then the key */
	char		key[REDISLOCK_KEY_MAX + 1]; /* the lock key as given */
	LockMode	mode;
	int			permits;		/* a semaphore's */
	char		prefix[REDISLOCK_PREFIX_MAX + 1];	/* redislock.key_prefix when taken */
	char		acquisition[REDISLOCK_HOLDER_MAX + 1];	/* who holds it in Redis: this acquisition */
	int64		token;			/* fencing token of this acquisition */
	int			ttl_ms;			/* lease asked for */
	TimestampTz acquired_at;	/* when this backend got it (wall clock, for display) */
	int64		lease_start_ms; /* monotonic; no later than the lease began in Redis */
	RedisServer *server;		/* the server it was taken on (a Cluster node: its slot's master) */
	uint64		connection_epoch;	/* the connection to it that it was taken on */
	uint64		map_generation; /* Redis Cluster: the slot map it was taken under */
	int			session_holds;	/* holds that outlive transactions (redis_session_lock) */
	int			nholds;			/* re-entrant transaction holds */
	int			holds_cap;
	int		   *hold_levels;	/* transaction nesting level of each hold, oldest first */
	ReleaseTicket *ticket;		/* its release */
} HeldLock;

extern void lock_table_name(char *name, LockMode mode, const char *key);
extern HeldLock *lock_table_find(const char *key, LockMode mode);
extern HeldLock *lock_table_add(const char *key, LockRequest req, int64 token, int ttl_ms,
								int64 lease_start_ms, bool session);
extern LockRef lock_table_ref(const HeldLock *lock);
extern RedisServer *lock_table_server_now(const HeldLock *lock);
extern void lock_table_note_connection(HeldLock *lock);
extern void lock_table_push_hold(HeldLock *lock);
extern void lock_table_pop_hold(HeldLock *lock);
extern void lock_table_push_session_hold(HeldLock *lock);
extern ReleaseTicket *lock_table_remove(HeldLock *lock);
extern int	lock_table_count(void);
extern int	lock_table_collect(HeldLock ***locks);
extern int	lock_table_collect_level(int level, HeldLock ***locks);
extern void lock_table_reassign_level(int from_level, int to_level);

/* registry.c */
typedef struct RenewalItem
{
	int			pid;
	char		name[REDISLOCK_NAME_MAX + 1];	/* mode letter, key */
	char		prefix[REDISLOCK_PREFIX_MAX + 1];
	char		acquisition[REDISLOCK_HOLDER_MAX + 1];
	int64		token;
	int			ttl_ms;
	int64		renewed_ms;		/* monotonic */
} RenewalItem;

/* One entry of the registry, as redis_lock_activity shows it. */
typedef struct RegistryRow
{
	int			pid;
	char		key[REDISLOCK_KEY_MAX + 1];
	LockMode	mode;
	char		prefix[REDISLOCK_PREFIX_MAX + 1];
	bool		granted;
	bool		session;
	bool		lost;
	int64		token;
	TimestampTz since;
	int64		lease_end_ms;	/* monotonic */
} RegistryRow;

extern int	redislock_max_locks;
extern void registry_install_hooks(void);
extern void registry_wait_begin(const char *prefix, const char *name);
extern void registry_wait_end(const char *name);
extern void registry_note_session(const char *name);
extern int	registry_snapshot(RegistryRow **rows);
extern bool registry_active(void);
extern bool registry_tracks_session(void);
extern void registry_keeper_started(void);
extern void registry_keeper_tick(void);
extern void registry_drop_dead(void);
extern bool registry_add(const HeldLock *lock);
extern void registry_remove(const char *name);
extern bool registry_lease(const char *name, int64 *renewed_ms, bool *lost);
extern void registry_extend(const char *name, int ttl_ms, int64 renewed_ms);
extern int	registry_collect_due(int64 now_ms, RenewalItem *items, int max);
extern void registry_record(const RenewalItem *item, bool kept, int64 renewed_ms);

/* deadlock.c */

/* How often a wait renews its record; the record outlives a few of these. */
#define DEADLOCK_REFRESH_MS (5 * REDISLOCK_RECHECK_MS)
extern bool deadlock_publish(const LockRef *ref, char mode, const char *acquisition, int64 since_us,
							 bool first);
extern void deadlock_unpublish(const LockRef *ref);
extern bool deadlock_check(const LockRef *ref, char mode, const char *acquisition, int64 since_us,
						   StringInfo report);

/* stats.c */
typedef enum StatsCounter
{
	STATS_ACQUISITIONS,
	STATS_IMMEDIATE,
	STATS_WAITS,
	STATS_WAIT_TIME_MS,
	STATS_MAX_WAIT_MS,
	STATS_TIMEOUTS,
	STATS_CANCELS,
	STATS_DEADLOCKS,
	STATS_LOST,
	STATS_REDIS_ERRORS,
	STATS_RECONNECTS,
	STATS_ROUND_TRIPS,
	STATS_NCOUNTERS
} StatsCounter;

extern Size stats_shmem_size(void);
extern void stats_shmem_init(LWLock *lock);
extern void stats_add(StatsCounter c, int64 n);
extern void stats_note_wait(int64 ms);
extern bool stats_available(void);
extern void stats_read(uint64 *values, TimestampTz *reset_at);
extern void stats_reset(void);

/* keeper.c */
extern void keeper_register(void);
extern int	keeper_min_lease_ms(void);
extern PGDLLEXPORT void redislock_keeper_main(Datum arg);

/* xact.c */
extern void xact_init(void);
extern void xact_install_utility_hook(void);
extern void xact_note_lost(const char *key);
extern int	xact_release_all(bool interruptible);
extern void xact_release_one(HeldLock *lock, bool xact_hold);
extern bool xact_forget_if_lost(HeldLock *lock);

#endif							/* REDISLOCK_H */
