/*
 * deadlock.c
 *		Deadlock detection for redis locks (redislock.deadlock_timeout): cycles of redis-lock waits
 *		across backends of every server that shares the Redis, and mixed cycles through PostgreSQL's
 *		own locks on this server.
 *
 * Redis holds the graph's pieces: each lock's holders (holders.lua), and, for a backend that has waited
 * longer than deadlock_timeout, a record of what it waits for: the hash {<prefix>wf:<host>:<port>:<pid>}
 * (names.c) with its backend id, the lock's prefix, key, mode, acquisition and since when it waits. A
 * waiter publishes its record once it has waited deadlock_timeout (and renews it every few heartbeats
 * while it waits), then looks once for a cycle through itself: from its key to the key's holders, from each holder to the key its record says it waits for
 * (if that wait is still on: the acquisition is still queued there), and so on, one pipelined round
 * trip per step for the holders and one for the records, at most DEADLOCK_MAX_DEPTH steps. A holder
 * of this server that waits for no redis lock may be blocked by PostgreSQL locks: if this backend is
 * among the processes that block it (pg_blocking_pids, followed transitively), that is a mixed cycle
 * neither PostgreSQL's detector nor Redis can see alone.
 *
 * Exactly one member of a cycle fails: the one that waits for the shortest time (the latest "since";
 * ties go to the greater backend id). Every member computes the same victim from the same records; a
 * member that is not the victim goes on waiting, and the victim, which published last, finds the
 * cycle when it checks. Before failing, the victim looks again: a cycle that is gone (a holder released,
 * a lease ran out, a wait ended) is not reported. Nothing here runs before deadlock_timeout, so the
 * check costs nothing on a short wait. Every key is touched alone (one lock's keys, or one record), so
 * a cycle whose keys live on different Cluster slots is found the same way.
 */
#include "redislock.h"

#include "catalog/pg_type.h"
#include "lib/stringinfo.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/fmgrprotos.h"
#include "utils/memutils.h"

#define DEADLOCK_MAX_DEPTH 8
#define DEADLOCK_MAX_NODES 64
#define DEADLOCK_MAX_PG_BLOCKERS 64

/* One waiting backend of the graph. */
typedef struct WaitNode
{
	char	   *backend;
	char	   *prefix;
	char	   *key;
	char		mode;
	char	   *acquisition;
	int64		since_us;
	int			blocked_by_parent;	/* the node whose key this one holds: index, or -1 */
} WaitNode;

static const char *
mode_name(char mode)
{
	return mode == 's' ? "shared" : mode == 'm' ? "semaphore permit" : "exclusive";
}

/*
 * Whether a holder in hold_mode (or a waiter queued ahead in that mode: queued) blocks a request in
 * want_mode of another backend. A permit of a semaphore of several permits is an edge of none: any
 * one holder's release would do (an "or" wait, which a cycle of single edges does not describe), so
 * such waits are left to their timeouts; a semaphore of one permit is a mutex.
 */
static bool
blocks(char want_mode, char hold_mode, bool queued, int permits)
{
	if (want_mode == 'm' || hold_mode == 'm')
		return want_mode == 'm' && hold_mode == 'm' && permits == 1;
	if (want_mode == 's')
		return hold_mode == 'x';
	return true;
}

/* "process <pid> on <host>:<port>" for a backend id "<host>:<port>:<pid>:<nonce>" (palloc'd). */
static char *
process_name(const char *backend)
{
	const char *nonce = strrchr(backend, ':');
	const char *p = nonce ? nonce - 1 : backend;

	while (p > backend && *p != ':')
		p--;
	if (nonce == NULL || p == backend)
		return pstrdup(backend);
	return psprintf("process %.*s on %.*s", (int) (nonce - p - 1), p + 1, (int) (p - backend), backend);
}

/* The record's key and its fields, for publishing or reading. */
static void
record_command(RedisCommand *c, const char *cmd, const char *key)
{
	c->argc = 0;
	c->argv[c->argc] = cmd;
	c->argvlen[c->argc++] = strlen(cmd);
	c->argv[c->argc] = key;
	c->argvlen[c->argc++] = strlen(key);
}

static void
add_arg(RedisCommand *c, const char *arg)
{
	c->argv[c->argc] = arg;
	c->argvlen[c->argc++] = strlen(arg);
}

/*
 * How long a record lives unless renewed: two renewal periods and a command_timeout. A record whose
 * wait ended without removing it (an error, a cancel) is harmless meanwhile: a check follows it only
 * while its acquisition is still queued.
 */
static int
record_ttl_ms(void)
{
	return 2 * DEADLOCK_REFRESH_MS + redislock_command_timeout_ms;
}

/*
 * Plain commands on wait records, each sent to the server of its key (records of different backends
 * may be on different Redis Cluster nodes): one round trip per server.
 */
static bool
run_plain(int n, RedisCommand *cmds, redisReply **replies, RedisError *err)
{
	RedisScriptId *ids = palloc(n * sizeof(RedisScriptId));
	bool		ok;

	for (int i = 0; i < n; i++)
		ids[i] = SCRIPT_NONE;
	ok = script_run_routed(n, cmds, ids, replies, redislock_command_timeout_ms, true, err);
	pfree(ids);
	return ok;
}

/*
 * Say in Redis that this backend waits for ref in mode, by acquisition, since since_us (first: the
 * wait's first publication); again to keep the record alive. One round trip; false when Redis could
 * not be asked (the wait goes on: a failover, say, is ridden out by the wait loop).
 */
bool
deadlock_publish(const LockRef *ref, char mode, const char *acquisition, int64 since_us, bool first)
{
	char	   *key = names_wait_record_key(ref->prefix, names_backend_id());
	RedisCommand cmds[3];
	redisReply *replies[3] = {NULL, NULL, NULL};
	RedisError	err;
	char		mode_text[2] = {mode, '\0'};
	char		since[24];
	char		ttl[16];
	bool		ok;

	snprintf(since, sizeof(since), INT64_FORMAT, since_us);
	snprintf(ttl, sizeof(ttl), "%d", record_ttl_ms());
	record_command(&cmds[0], "HSET", key);
	add_arg(&cmds[0], "backend");
	add_arg(&cmds[0], names_backend_id());
	add_arg(&cmds[0], "prefix");
	add_arg(&cmds[0], ref->prefix);
	add_arg(&cmds[0], "key");
	add_arg(&cmds[0], ref->key);
	add_arg(&cmds[0], "mode");
	add_arg(&cmds[0], mode_text);
	add_arg(&cmds[0], "acq");
	add_arg(&cmds[0], acquisition);
	/* a wait's first publication sets "since"; a record left by an earlier wait must not lend it one */
	record_command(&cmds[1], first ? "HSET" : "HSETNX", key);
	add_arg(&cmds[1], "since");
	add_arg(&cmds[1], since);
	record_command(&cmds[2], "PEXPIRE", key);
	add_arg(&cmds[2], ttl);
	if (!run_plain(3, cmds, replies, &err))
	{
		pfree(key);
		return false;
	}
	ok = true;
	for (int i = 0; i < 3 && ok; i++)
	{
		if (replies[i]->type == REDIS_REPLY_ERROR)
		{
			redis_error_from_reply(script_answered_by(&cmds[i]), replies[i], &err);
			ok = false;
		}
	}
	redis_free_replies(3, replies);
	pfree(key);
	return ok;
}

/* The wait is over: forget the record (best effort; it expires anyway). */
void
deadlock_unpublish(const LockRef *ref)
{
	char	   *key = names_wait_record_key(ref->prefix, names_backend_id());
	RedisCommand cmd;
	redisReply *reply = NULL;
	RedisError	err;

	record_command(&cmd, "DEL", key);
	if (run_plain(1, &cmd, &reply, &err))
		redis_free_replies(1, &reply);
	pfree(key);
}

/* The processes that block pid through PostgreSQL's locks, directly or through others (up to max). */
static int
pg_blockers(int pid, int *out, int max)
{
	int			n = 0;
	int			done = 0;

	out[n++] = pid;
	while (done < n && n < max)
	{
		ArrayType  *arr = DatumGetArrayTypeP(DirectFunctionCall1(pg_blocking_pids,
																 Int32GetDatum(out[done++])));
		Datum	   *elems;
		int			nelems;

		deconstruct_array(arr, INT4OID, 4, true, TYPALIGN_INT, &elems, NULL, &nelems);
		for (int i = 0; i < nelems && n < max; i++)
		{
			int			b = DatumGetInt32(elems[i]);
			bool		seen = false;

			for (int j = 0; j < n && !seen; j++)
				seen = out[j] == b;
			if (!seen)
				out[n++] = b;
		}
	}
	/* out[0] is pid itself */
	memmove(out, out + 1, (n - 1) * sizeof(int));
	return n - 1;
}

static bool
reply_str(const redisReply *r, char **out)
{
	if (r == NULL || (r->type != REDIS_REPLY_STRING && r->type != REDIS_REPLY_STATUS))
		return false;
	*out = pnstrdup(r->str, r->len);
	return true;
}

/* A cycle through nodes[last] ... nodes[0] (each blocked by the previous's key): its report. */
static void
describe_cycle(WaitNode *nodes, int last, const char *closing, StringInfo report)
{
	int			path[DEADLOCK_MAX_NODES];
	int			n = 0;

	for (int i = last; i >= 0; i = nodes[i].blocked_by_parent)
		path[n++] = i;
	/* path runs from last back to 0: report from 0 forwards */
	for (int k = n - 1; k >= 0; k--)
	{
		WaitNode   *w = &nodes[path[k]];
		const char *by = k > 0 ? nodes[path[k - 1]].backend : closing;

		char	   *who = process_name(w->backend);

		if (report->len > 0)
			appendStringInfoChar(report, '\n');
		who[0] = pg_toupper((unsigned char) who[0]);	/* a sentence, as PostgreSQL's own report */
		appendStringInfo(report, "%s waits for redis lock \"%s\" (%s); blocked by %s.",
						 who, w->key, mode_name(w->mode), process_name(by));
	}
}

/* The victim of the cycle through nodes[last] ... nodes[0]: whether it is this backend (node 0). */
static bool
victim_is_me(WaitNode *nodes, int last)
{
	int			victim = 0;

	for (int i = last; i >= 0; i = nodes[i].blocked_by_parent)
	{
		if (nodes[i].since_us > nodes[victim].since_us ||
			(nodes[i].since_us == nodes[victim].since_us &&
			 strcmp(nodes[i].backend, nodes[victim].backend) > 0))
			victim = i;
	}
	return victim == 0;
}

typedef enum CycleFound
{
	NO_CYCLE,
	CYCLE_OTHER_VICTIM,
	CYCLE_ME_VICTIM
} CycleFound;

/*
 * One search for a cycle through this backend, which waits for ref in mode by acquisition since
 * since_us. The report says who waits for what when a cycle is found.
 */
static CycleFound
search(const LockRef *ref, char mode, const char *acquisition, int64 since_us, StringInfo report)
{
	WaitNode	nodes[DEADLOCK_MAX_NODES];
	int			nnodes = 1;
	int			level_start = 0;
	const char *me = names_backend_id();

	nodes[0].backend = pstrdup(me);
	nodes[0].prefix = pstrdup(ref->prefix);
	nodes[0].key = pstrdup(ref->key);
	nodes[0].mode = mode;
	nodes[0].acquisition = pstrdup(acquisition);
	nodes[0].since_us = since_us;
	nodes[0].blocked_by_parent = -1;

	for (int depth = 0; depth < DEADLOCK_MAX_DEPTH && level_start < nnodes; depth++)
	{
		int			level_end = nnodes;
		int			nlevel = level_end - level_start;
		RedisCommand *cmds = palloc(nlevel * sizeof(RedisCommand));
		RedisScriptId *ids = palloc(nlevel * sizeof(RedisScriptId));
		redisReply **replies = palloc0(nlevel * sizeof(redisReply *));
		LockKeys   *keys = palloc(nlevel * sizeof(LockKeys));
		/* the holders found at this level that may wait in turn: backend, parent, prefix */
		char	  **cand_backend = palloc(DEADLOCK_MAX_NODES * sizeof(char *));
		int		   *cand_parent = palloc(DEADLOCK_MAX_NODES * sizeof(int));
		int			ncand = 0;
		RedisError	err;

		for (int i = 0; i < nlevel; i++)
		{
			WaitNode   *w = &nodes[level_start + i];
			LockRef		r = {w->prefix, w->key};
			const char *args[1] = {w->acquisition};

			names_lock_keys(&r, &keys[i]);
			script_command(&cmds[i], SCRIPT_HOLDERS, &keys[i], 1, args);
			ids[i] = SCRIPT_HOLDERS;
		}
		/* a check that cannot ask Redis finds nothing; the wait loop deals with Redis */
		if (!script_run_routed(nlevel, cmds, ids, replies, redislock_command_timeout_ms, true, &err))
			return NO_CYCLE;
		for (int i = 0; i < nlevel; i++)
		{
			WaitNode   *w = &nodes[level_start + i];
			redisReply *r = replies[i];

			names_lock_keys_free(&keys[i]);
			/* a wait that is over (granted, given up) is no edge: only node 0 is taken as it is */
			if (r->type != REDIS_REPLY_ARRAY || r->elements < 2 || r->element[0]->type != REDIS_REPLY_INTEGER ||
				r->element[1]->type != REDIS_REPLY_INTEGER ||
				(level_start + i > 0 && r->element[0]->integer != 1))
				continue;
			for (size_t h = 2; h + 1 < r->elements; h += 2)
			{
				char	   *holder;
				char	   *hold_mode;
				char	   *hb;
				int			pid;
				bool		queued;

				if (!reply_str(r->element[h], &holder) || !reply_str(r->element[h + 1], &hold_mode))
					continue;
				/*
				 * A waiter queued ahead blocks as a holder would: FIFO serves it first. One that
				 * asks for the same mode adds no path: everything that blocks it (the key's holders,
				 * the waiters ahead of it) blocks this waiter directly. So only a waiter ahead in
				 * another mode is followed (a shared waiter behind an exclusive one, say), which
				 * keeps a long queue from multiplying the search.
				 */
				queued = hold_mode[0] == 'q';
				if (queued && hold_mode[1] == w->mode)
					continue;
				if (!blocks(w->mode, queued ? hold_mode[1] : hold_mode[0], queued,
							(int) r->element[1]->integer))
					continue;
				hb = names_backend_of(holder);
				if (strcmp(hb, w->backend) == 0)
					continue;	/* a backend's own holds never block it */
				if (strcmp(hb, me) == 0)
				{
					CycleFound found;

					describe_cycle(nodes, level_start + i, me, report);
					found = victim_is_me(nodes, level_start + i) ? CYCLE_ME_VICTIM : CYCLE_OTHER_VICTIM;
					redis_free_replies(nlevel, replies);
					return found;
				}
				/* a holder of this server that PostgreSQL's locks hold up: is this backend one cause? */
				if (names_backend_is_local(hb, &pid))
				{
					int			blockers[DEADLOCK_MAX_PG_BLOCKERS];
					int			nb = pg_blockers(pid, blockers, DEADLOCK_MAX_PG_BLOCKERS);

					for (int b = 0; b < nb; b++)
					{
						if (blockers[b] == MyProcPid)
						{
							char	   *who = process_name(hb);

							describe_cycle(nodes, level_start + i, hb, report);
							who[0] = pg_toupper((unsigned char) who[0]);
							appendStringInfo(report, "\n%s waits for a PostgreSQL lock; blocked (directly or through others) by %s.",
											 who, process_name(me));
							redis_free_replies(nlevel, replies);
							/* PostgreSQL's detector does not see it: this backend is the only one to act */
							return CYCLE_ME_VICTIM;
						}
					}
				}
				if (ncand < DEADLOCK_MAX_NODES)
				{
					cand_backend[ncand] = hb;
					cand_parent[ncand] = level_start + i;
					ncand++;
				}
			}
		}
		redis_free_replies(nlevel, replies);

		/* what each candidate waits for, if anything: one round trip for all their records */
		if (ncand > 0)
		{
			RedisCommand *rc = palloc(ncand * sizeof(RedisCommand));
			redisReply **rr = palloc0(ncand * sizeof(redisReply *));

			for (int c = 0; c < ncand; c++)
			{
				record_command(&rc[c], "HMGET",
							   names_wait_record_key(nodes[cand_parent[c]].prefix, cand_backend[c]));
				add_arg(&rc[c], "backend");
				add_arg(&rc[c], "prefix");
				add_arg(&rc[c], "key");
				add_arg(&rc[c], "mode");
				add_arg(&rc[c], "acq");
				add_arg(&rc[c], "since");
			}
			if (!run_plain(ncand, rc, rr, &err))
				return NO_CYCLE;
			for (int c = 0; c < ncand && nnodes < DEADLOCK_MAX_NODES; c++)
			{
				redisReply *r = rr[c];
				WaitNode   *n = &nodes[nnodes];
				char	   *mode_text;
				char	   *since;
				bool		seen = false;

				if (r->type != REDIS_REPLY_ARRAY || r->elements != 6 ||
					!reply_str(r->element[0], &n->backend) || strcmp(n->backend, cand_backend[c]) != 0 ||
					!reply_str(r->element[1], &n->prefix) || !reply_str(r->element[2], &n->key) ||
					!reply_str(r->element[3], &mode_text) || !reply_str(r->element[4], &n->acquisition) ||
					!reply_str(r->element[5], &since))
					continue;
				for (int j = 0; j < nnodes && !seen; j++)
					seen = strcmp(nodes[j].backend, n->backend) == 0;
				if (seen)
					continue;
				n->mode = mode_text[0];
				n->since_us = strtoll(since, NULL, 10);
				n->blocked_by_parent = cand_parent[c];
				nnodes++;
			}
			redis_free_replies(ncand, rr);
		}
		level_start = level_end;
	}
	return NO_CYCLE;
}

/*
 * Whether this backend, waiting for ref in mode by acquisition since since_us, is the victim of a
 * deadlock: found twice in a row (the second look rules out a cycle that has just gone away). report
 * gets the detail. Throws when Redis cannot be asked.
 */
bool
deadlock_check(const LockRef *ref, char mode, const char *acquisition, int64 since_us, StringInfo report)
{
	MemoryContext cxt = AllocSetContextCreate(CurrentMemoryContext, "redislock deadlock check",
											  ALLOCSET_DEFAULT_SIZES);
	MemoryContext old = MemoryContextSwitchTo(cxt);
	StringInfoData found;
	bool		victim;

	/* what a search allocates (nodes, keys, replies' copies) goes with its context */
	initStringInfo(&found);
	victim = search(ref, mode, acquisition, since_us, &found) == CYCLE_ME_VICTIM;
	if (victim)
	{
		resetStringInfo(&found);
		victim = search(ref, mode, acquisition, since_us, &found) == CYCLE_ME_VICTIM;
	}
	MemoryContextSwitchTo(old);
	if (victim)
		appendStringInfoString(report, found.data);
	MemoryContextDelete(cxt);
	return victim;
}
