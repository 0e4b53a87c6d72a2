/*
 * scripts.c
 *		The Redis-side logic of redislock: Lua scripts run atomically by Redis.
 *
 * The scripts live in src/lua/ (common.lua is prepended to each) and are embedded at build time,
 * together with their SHA1, by src/lua/embed.sh. They are called with EVALSHA; a NOSCRIPT reply (after
 * SCRIPT FLUSH, a restart or a failover) is answered by sending that command again as EVAL, which
 * also loads the script for the next EVALSHA. A script that answered NOSCRIPT did not run, so
 * resending is safe.
 *
 * The same holds for Redis Cluster's answers that a command did not run where it was sent: MOVED (sent
 * again to the node named, which cluster.c now maps the slot to), ASK (sent again to the node named,
 * after ASKING), TRYAGAIN and CLUSTERDOWN (sent again after a short pause, until the call's time is
 * up). script_run_routed sends each command to the node that serves its slot, one round trip per
 * node.
 */
#include "redislock.h"

#include "lib/stringinfo.h"
#include "miscadmin.h"
#include "storage/ipc.h"
#include "storage/latch.h"

#include "scripts_generated.h"

typedef struct ScriptDef
{
	const char *sha1;
	const char *text;
	size_t		text_len;
} ScriptDef;

static const ScriptDef scripts[] = {
	[SCRIPT_ACQUIRE] = {SCRIPT_ACQUIRE_SHA1, SCRIPT_ACQUIRE_TEXT, sizeof(SCRIPT_ACQUIRE_TEXT) - 1},
	[SCRIPT_RELEASE] = {SCRIPT_RELEASE_SHA1, SCRIPT_RELEASE_TEXT, sizeof(SCRIPT_RELEASE_TEXT) - 1},
	[SCRIPT_VERIFY] = {SCRIPT_VERIFY_SHA1, SCRIPT_VERIFY_TEXT, sizeof(SCRIPT_VERIFY_TEXT) - 1},
	[SCRIPT_INFO] = {SCRIPT_INFO_SHA1, SCRIPT_INFO_TEXT, sizeof(SCRIPT_INFO_TEXT) - 1},
	[SCRIPT_FORCE] = {SCRIPT_FORCE_SHA1, SCRIPT_FORCE_TEXT, sizeof(SCRIPT_FORCE_TEXT) - 1},
	[SCRIPT_HOLDERS] = {SCRIPT_HOLDERS_SHA1, SCRIPT_HOLDERS_TEXT, sizeof(SCRIPT_HOLDERS_TEXT) - 1},
};

/*
 * EVALSHA <sha1> 3 <lock> <queue> <waiters> <args...>; in Redis Cluster mode with a fourth key, the
 * shared holders (see src/lua/common.lua), so that Redis sees every key of a lock's state. Outside it
 * the scripts derive that key, and the common command stays short.
 */
void
script_command(RedisCommand *cmd, RedisScriptId id, const LockKeys *keys,
					 int nargs, const char *const *args)
{
	Assert(nargs + 7 <= REDIS_MAX_ARGS);
	cmd->argv[0] = "EVALSHA";
	cmd->argvlen[0] = 7;
	cmd->argv[1] = scripts[id].sha1;
	cmd->argvlen[1] = 40;
	cmd->argv[2] = "3";
	cmd->argvlen[2] = 1;
	cmd->argv[3] = keys->lock;
	cmd->argvlen[3] = keys->lock_len;
	cmd->argv[4] = keys->queue;
	cmd->argvlen[4] = keys->queue_len;
	cmd->argv[5] = keys->waiters;
	cmd->argvlen[5] = keys->waiters_len;
	cmd->argc = 6;
	if (cluster_mode())
	{
		cmd->argv[2] = "4";
		cmd->argv[cmd->argc] = keys->shared;
		cmd->argvlen[cmd->argc++] = keys->shared_len;
	}
	for (int i = 0; i < nargs; i++)
	{
		cmd->argv[cmd->argc] = args[i];
		cmd->argvlen[cmd->argc] = strlen(args[i]);
		cmd->argc++;
	}
}

/*
 * Which scripts each server has answered on its current connection (so it knows them), as a bit per
 * RedisScriptId kept with the connection (a new one starts with none known). Any NOSCRIPT answer
 * clears the lot: Redis may have forgotten them all (SCRIPT FLUSH, a restart behind a proxy). A command
 * sent without waiting for its answer can only use a known script: an unread NOSCRIPT would leave the
 * work undone.
 */
void
script_note_answer(RedisServer *server, RedisScriptId id, const redisReply *reply)
{
	uint32	   *known = redis_known_scripts(server);

	if (id == SCRIPT_NONE)
		return;
	if (script_reply_is_noscript(reply))
		*known = 0;
	else if (reply->type != REDIS_REPLY_ERROR)
		*known |= 1u << id;		/* not an error Redis may give before it looks (BUSY, LOADING) */
}

/* Whether Redis answered script id on this connection since it last forgot scripts. */
bool
script_known(RedisServer *server, RedisScriptId id)
{
	return (*redis_known_scripts(server) & (1u << id)) != 0;
}

/* Whether Redis answered that it does not know the script (it did not run). */
bool
script_reply_is_noscript(const redisReply *reply)
{
	return reply->type == REDIS_REPLY_ERROR && reply->len >= 8 &&
		strncmp(reply->str, "NOSCRIPT", 8) == 0;
}

/*
 * Whether a script stopped because a key it touched is not on this node while its slot migrates (a
 * grant list it did not declare, or a key it had just deleted: see src/lua/common.lua): Redis
 * Cluster's answer "Script attempted to access a non local key". What it wrote before stays written;
 * running it again is safe (it acts on its own acquisition), but its answer then may not say what the
 * first run did: script_call_stopped_midway tells the caller.
 */
static bool
reply_is_non_local_key(const redisReply *r)
{
	return r != NULL && r->type == REDIS_REPLY_ERROR && r->str != NULL &&
		strstr(r->str, "non local key") != NULL;
}

static bool stopped_midway = false;

/*
 * Whether a script of the last script_run_routed stopped mid-way (see reply_is_non_local_key) and ran
 * again.
 */
bool
script_call_stopped_midway(void)
{
	return stopped_midway;
}

/*
 * Whether an error reply says the script did not run at all, for a reason that passes: Redis did not
 * know it, was loading its data, busy running another script, a replica, or its cluster was down;
 * Redis Cluster sent it elsewhere (MOVED, ASK); a blocked BLPOP was ended by a master turning replica
 * (UNBLOCKED).
 */
bool
script_reply_not_run(const redisReply *reply)
{
	static const char *const passing[] = {"NOSCRIPT", "LOADING", "BUSY", "MASTERDOWN", "TRYAGAIN",
	"CLUSTERDOWN", "READONLY", "UNBLOCKED"};

	if (reply->type != REDIS_REPLY_ERROR || reply->str == NULL)
		return false;
	if (reply_is_non_local_key(reply) ||
		(cluster_mode() && (strncmp(reply->str, "MOVED ", 6) == 0 || strncmp(reply->str, "ASK ", 4) == 0)))
		return true;
	for (int i = 0; i < lengthof(passing); i++)
	{
		if (strncmp(reply->str, passing[i], strlen(passing[i])) == 0)
			return true;
	}
	return false;
}

/* How many times one call follows MOVED and ASK before it gives up (a loop is an error, not a hang). */
#define SCRIPT_MAX_REDIRECTIONS 5

static bool
command_is(const RedisCommand *cmd, const char *name)
{
	return strcmp(cmd->argv[0], name) == 0;
}

/* Whether a Redis Cluster answer asks to send the command again after a pause. */
static bool
reply_is_busy_cluster(const redisReply *r)
{
	return r != NULL && r->type == REDIS_REPLY_ERROR && r->str != NULL &&
		(strncmp(r->str, "TRYAGAIN", 8) == 0 || strncmp(r->str, "CLUSTERDOWN", 11) == 0 ||
		 reply_is_non_local_key(r));
}

/* A pause before sending again (10 ms doubling to 200 ms), never past deadline; false if none left. */
static bool
pause_for_cluster(int attempt, TimestampTz deadline, bool interruptible)
{
	long		left = (long) ((deadline - GetCurrentTimestamp()) / 1000);
	long		pause = Min(10L << Min(attempt, 5), 200L);
	int			rc;

	if (left <= 0)
		return false;
	rc = WaitLatch(MyLatch, WL_LATCH_SET | WL_TIMEOUT | WL_POSTMASTER_DEATH, Min(pause, left),
				   redis_wait_event());
	ResetLatch(MyLatch);
	if (rc & WL_POSTMASTER_DEATH)
	{
		if (interruptible)
			proc_exit(1);
		return false;
	}
	if (interruptible)
		CHECK_FOR_INTERRUPTS();
	return true;
}

/*
 * Send cmds[idx[0..n-1]] again to one server in one round trip, each after ASKING where asking[] says,
 * plus WAIT (cmds[wait_at]) when wait_at >= 0; the replies go to replies[idx[k]], and WAIT's to *wait.
 */
static bool
resend_group(RedisServer *server, int n, const int *idx, RedisCommand *cmds, const bool *asking,
			 int wait_at, redisReply **replies, redisReply **wait, int timeout_ms, bool interruptible,
			 RedisError *err)
{
	static const RedisCommand asking_cmd = {1, {"ASKING"}, {6}};
	RedisCommand *batch = palloc((2 * n + 1) * sizeof(RedisCommand));
	redisReply **got = palloc0((2 * n + 1) * sizeof(redisReply *));
	int		   *place = palloc((2 * n + 1) * sizeof(int));
	int			m = 0;
	bool		ok;

	for (int k = 0; k < n; k++)
	{
		if (asking[idx[k]])
		{
			place[m] = -2;		/* ASKING's OK */
			batch[m++] = asking_cmd;
		}
		place[m] = idx[k];
		batch[m++] = cmds[idx[k]];
	}
	if (wait_at >= 0)
	{
		place[m] = -1;
		batch[m++] = cmds[wait_at];
	}
	ok = redis_roundtrip(server, m, batch, got, timeout_ms, interruptible, err);
	if (ok)
	{
		for (int k = 0; k < m; k++)
		{
			if (place[k] >= 0)
				replies[place[k]] = got[k];
			else if (place[k] == -1)
				*wait = got[k];
			else
				freeReplyObject(got[k]);
		}
	}
	pfree(place);
	pfree(got);
	pfree(batch);
	return ok;
}

/* Of two WAIT answers, the one that counts fewer replicas (an error counts none). */
static redisReply *
fewer_acknowledged(redisReply *a, redisReply *b)
{
	bool		b_less;

	if (a == NULL)
		return b;
	if (b == NULL)
		return a;
	b_less = b->type != REDIS_REPLY_INTEGER ||
		(a->type == REDIS_REPLY_INTEGER && b->integer < a->integer);
	freeReplyObject(b_less ? a : b);
	return b_less ? b : a;
}

/*
 * Run script commands built by script_command in one round trip, plus more only when a command did
 * not run where it was sent: Redis had forgotten a script (sent again as EVAL), or Redis Cluster
 * redirected it (MOVED, ASK) or asked to try again (TRYAGAIN, CLUSTERDOWN). ids[i] names the script of
 * cmds[i], or is SCRIPT_NONE for a plain command: a BLPOP is never sent again (its caller re-checks),
 * WAIT (sent last, to confirm what precedes it) goes again behind what is sent again. On success every
 * reply is set (Redis error replies included: the caller interprets them); on failure nothing is left
 * allocated.
 */
bool
script_run(RedisServer *server, int ncmds, RedisCommand *cmds, RedisScriptId *ids,
		   redisReply **replies, int timeout_ms, bool interruptible, RedisError *err)
{
	int			wait_at = (ncmds > 1 && ids[ncmds - 1] == SCRIPT_NONE && command_is(&cmds[ncmds - 1], "WAIT")) ?
		ncmds - 1 : -1;
	RedisServer **sent_to;
	RedisServer **target;
	bool	   *asking;
	int		   *idx;
	int			redirections = 0;
	int			pauses = 0;
	TimestampTz deadline = TimestampTzPlusMilliseconds(GetCurrentTimestamp(), timeout_ms);
	bool		any_error = false;

	if (!redis_roundtrip(server, ncmds, cmds, replies, timeout_ms, interruptible, err))
		return false;
	for (int i = 0; i < ncmds; i++)
	{
		script_note_answer(server, ids[i], replies[i]);
		any_error |= replies[i]->type == REDIS_REPLY_ERROR;
	}
	if (!any_error)
		return true;			/* the common case: nothing to send again */

	sent_to = palloc(ncmds * sizeof(RedisServer *));
	target = palloc(ncmds * sizeof(RedisServer *));
	asking = palloc0(ncmds * sizeof(bool));
	idx = palloc(ncmds * sizeof(int));
	for (int i = 0; i < ncmds; i++)
		sent_to[i] = server;
	for (;;)
	{
		int			nagain = 0;
		bool		redirected = false;
		bool		busy = false;
		int			held = 0;

		for (int i = 0; i < ncmds; i++)
		{
			bool		ask;

			target[i] = NULL;
			if (i == wait_at || command_is(&cmds[i], "BLPOP"))
				continue;
			if (ids[i] != SCRIPT_NONE && script_reply_is_noscript(replies[i]))
			{
				cmds[i].argv[0] = "EVAL";
				cmds[i].argvlen[0] = 4;
				cmds[i].argv[1] = scripts[ids[i]].text;
				cmds[i].argvlen[1] = scripts[ids[i]].text_len;
				target[i] = sent_to[i];	/* and after ASKING again, if it was */
			}
			else if (redirections < SCRIPT_MAX_REDIRECTIONS &&
					 cluster_redirection(replies[i], sent_to[i], &target[i], &ask))
			{
				asking[i] = ask;
				redirected = true;
			}
			else if (reply_is_busy_cluster(replies[i]) && cluster_mode() &&
					 GetCurrentTimestamp() < deadline)
			{
				/*
				 * (In a commit or abort callback too, within timeout_ms: a release that stayed owed
				 * would wait for the session's next command, or the lease.)
				 */
				stopped_midway |= reply_is_non_local_key(replies[i]);
				/*
				 * An ASK target that says TRYAGAIN (the lock's keys are split for a moment) is asked
				 * again, after ASKING; anything else goes where the map says now.
				 */
				if (asking[i])
					target[i] = sent_to[i];
				else
				{
					target[i] = cluster_server_for_slot_as_is(cluster_command_slot(&cmds[i]));
					asking[i] = false;
				}
				busy |= target[i] != NULL;
			}
			if (target[i] != NULL)
				idx[nagain++] = i;
		}
		if (nagain == 0)
			break;
		if (redirected)
			redirections++;

		/*
		 * WAIT counts what ran on the node it was sent to: when nothing but WAIT ran there (every
		 * command is sent elsewhere now), its answer says nothing; the WAIT sent along with the
		 * commands that are sent again answers instead.
		 */
		if (wait_at >= 0 && replies[wait_at] != NULL && nagain == ncmds - 1)
		{
			freeReplyObject(replies[wait_at]);
			replies[wait_at] = NULL;
		}
		for (int k = 0; k < nagain; k++)
		{
			freeReplyObject(replies[idx[k]]);
			replies[idx[k]] = NULL;
		}
		for (int i = 0; i < ncmds; i++)
			held += replies[i] != NULL;

		/*
		 * Not interruptible while some replies of the first round are held here: an interrupt thrown
		 * now would leak them. Each round is bounded by timeout_ms all the same.
		 */
		if (busy && !redirected && !pause_for_cluster(pauses++, deadline, interruptible && held == 0))
		{
			redis_error_set(err, ERRCODE_CANNOT_CONNECT_NOW, "Retry when the Redis Cluster is ready.",
							"Redis Cluster did not run a command for a lock in time: a slot is moving or the cluster is down");
			err->sent = true;
			redis_free_replies(ncmds, replies);
			return false;
		}
		/* one round trip per node named, in the order of the commands */
		for (int k = 0; k < nagain; k++)
		{
			RedisServer *to = target[idx[k]];
			int		   *group;
			int			n = 0;
			redisReply *wait = NULL;

			if (to == NULL)
				continue;
			group = palloc(nagain * sizeof(int));
			for (int l = k; l < nagain; l++)
			{
				if (target[idx[l]] == to)
				{
					group[n++] = idx[l];
					target[idx[l]] = NULL;
				}
			}
			/* every round within what is left of the call's time */
			if (!resend_group(to, n, group, cmds, asking, wait_at, replies,
							  wait_at >= 0 ? &wait : NULL,
							  (int) Max(1, (deadline - GetCurrentTimestamp()) / 1000),
							  interruptible && held == 0, err))
			{
				pfree(group);
				redis_free_replies(ncmds, replies);
				err->sent = true;	/* the first round reached Redis, and some of it may have run */
				if (err->unreachable || err->connection_lost)
					cluster_server_failed();
				return false;
			}
			held += n;
			if (wait_at >= 0)
				replies[wait_at] = fewer_acknowledged(replies[wait_at], wait);
			for (int g = 0; g < n; g++)
			{
				sent_to[group[g]] = to;
				script_note_answer(to, ids[group[g]], replies[group[g]]);
			}
			pfree(group);
		}
	}
	pfree(idx);
	pfree(asking);
	pfree(target);
	pfree(sent_to);
	return true;
}

/*
 * The server that answered a command of script_run_routed, as far as messages go: the one that serves
 * its slot now (no round trip). The one data server outside Cluster mode.
 */
RedisServer *
script_answered_by(const RedisCommand *cmd)
{
	RedisServer *server;

	if (!cluster_mode())
		return redis_primary_server();
	server = cluster_server_for_slot_as_is(cluster_command_slot(cmd));
	return server != NULL ? server : redis_primary_server_as_is();
}

/*
 * script_run, each command sent to the server that serves its key's slot: one round trip per server
 * (in Cluster mode, per node; else the one server), one after the other. WAIT, last, follows the
 * commands of every server, and its answer is the one that counts fewest replicas. Fails before
 * anything is sent when a command's server cannot be named (no node reachable to learn the map).
 */
bool
script_run_routed(int ncmds, RedisCommand *cmds, RedisScriptId *ids, redisReply **replies,
				  int timeout_ms, bool interruptible, RedisError *err)
{
	int			wait_at = (ncmds > 1 && ids[ncmds - 1] == SCRIPT_NONE && command_is(&cmds[ncmds - 1], "WAIT")) ?
		ncmds - 1 : -1;
	int			nplain = wait_at >= 0 ? ncmds - 1 : ncmds;
	RedisServer **route;
	RedisCommand *sub_cmds;
	RedisScriptId *sub_ids;
	redisReply **sub_replies;
	int		   *sub_idx;
	bool		ok = true;
	bool		any_sent = false;
	int			nran = 0;

	stopped_midway = false;
	if (!cluster_mode())
		return script_run(redis_primary_server(), ncmds, cmds, ids, replies, timeout_ms, interruptible, err);
	if (interruptible)
		cluster_check_settings();
	route = palloc(ncmds * sizeof(RedisServer *));
	for (int i = 0; i < nplain; i++)
	{
		/* commit and abort callbacks take the map as it is: no round trip, no settings applied */
		route[i] = interruptible ?
			cluster_server_for_slot(cluster_command_slot(&cmds[i]), true, err) :
			cluster_server_for_slot_as_is(cluster_command_slot(&cmds[i]));
		if (route[i] == NULL && !interruptible)
			redis_error_set(err, ERRCODE_CANNOT_CONNECT_NOW, NULL,
							"no node of the Redis Cluster is known for slot %d", cluster_command_slot(&cmds[i]));
		if (route[i] == NULL)
		{
			err->sent = false;
			pfree(route);
			return false;
		}
	}
	/* one server: no copying */
	for (int i = 1; i < nplain && ok; i++)
		ok = route[i] == route[0];
	if (ok)
	{
		RedisServer *server = route[0];

		pfree(route);
		ok = script_run(server, ncmds, cmds, ids, replies, timeout_ms, interruptible, err);
		if (ok || !(err->unreachable || err->connection_lost))
			return ok;

		/*
		 * The node is down or its connection broke: a failover may have given its slots to another
		 * node. Ask for the map again, and when it names another node, send there once more (every
		 * script is safe to run twice for the same acquisition).
		 */
		cluster_server_failed();
		if (interruptible)
		{
			RedisError	again_err;
			RedisServer *again = cluster_server_for_slot(cluster_command_slot(&cmds[0]), true, &again_err);
			bool		sent_before = err->sent;

			if (again != NULL && again != server)
			{
				ok = script_run(again, ncmds, cmds, ids, replies, timeout_ms, interruptible, err);
				if (!ok && (err->unreachable || err->connection_lost))
					cluster_server_failed();
				if (!ok)
					err->sent |= sent_before;
			}
		}
		return ok;
	}

	sub_cmds = palloc((ncmds + 1) * sizeof(RedisCommand));
	sub_ids = palloc((ncmds + 1) * sizeof(RedisScriptId));
	sub_replies = palloc0((ncmds + 1) * sizeof(redisReply *));
	sub_idx = palloc(ncmds * sizeof(int));
	for (int i = 0; i < ncmds; i++)
		replies[i] = NULL;
	ok = true;
	for (int i = 0; i < nplain && ok; i++)
	{
		RedisServer *to = route[i];
		int			n = 0;
		int			m;

		if (to == NULL)
			continue;
		for (int j = i; j < nplain; j++)
		{
			if (route[j] == to)
			{
				sub_idx[n] = j;
				sub_cmds[n] = cmds[j];
				sub_ids[n] = ids[j];
				route[j] = NULL;
				n++;
			}
		}
		m = n;
		if (wait_at >= 0)
		{
			sub_cmds[m] = cmds[wait_at];
			sub_ids[m++] = SCRIPT_NONE;
		}
		ok = script_run(to, m, sub_cmds, sub_ids, sub_replies, timeout_ms,
						interruptible && nran == 0, err);
		if (!ok)
		{
			any_sent |= err->sent;
			if (err->unreachable || err->connection_lost)
				cluster_server_failed();
			break;
		}
		any_sent = true;
		nran += n;
		for (int k = 0; k < n; k++)
		{
			replies[sub_idx[k]] = sub_replies[k];
			cmds[sub_idx[k]] = sub_cmds[k];	/* EVAL now, if it was sent as such */
		}
		if (wait_at >= 0)
			replies[wait_at] = fewer_acknowledged(replies[wait_at], sub_replies[n]);
	}
	if (!ok)
	{
		redis_free_replies(ncmds, replies);
		err->sent = any_sent;
	}
	pfree(sub_idx);
	pfree(sub_replies);
	pfree(sub_ids);
	pfree(sub_cmds);
	pfree(route);
	return ok;
}

/*
 * Run n commands of one script, whose answers are 1 or 0, in one round trip, into answers[]. Frees
 * every reply. Returns false with err set on any failure, an error reply included. confirm: the
 * replicas must acknowledge what the scripts did (redislock.wait_replicas; cmds has room for one more
 * command, the WAIT), else it fails too.
 */
bool
script_run_yes_no(int n, RedisScriptId id, RedisCommand *cmds, int *answers, bool confirm,
				  bool interruptible, RedisError *err)
{
	RedisScriptId *ids = palloc((n + 1) * sizeof(RedisScriptId));
	redisReply **replies = palloc0((n + 1) * sizeof(redisReply *));
	int			ncmds = n;
	bool		ok;

	for (int i = 0; i < n; i++)
		ids[i] = id;
	if (confirm)
		ncmds = replicas_append_wait(cmds, ids, n);
	ok = script_run_routed(ncmds, cmds, ids, replies,
						   redislock_command_timeout_ms + (ncmds > n ? replicas_extra_ms() : 0),
						   interruptible, err);
	for (int i = 0; ok && i < n; i++)
	{
		if (replies[i]->type == REDIS_REPLY_ERROR)
		{
			redis_error_from_reply(script_answered_by(&cmds[i]), replies[i], err);
			ok = false;
		}
		else if (replies[i]->type != REDIS_REPLY_INTEGER)
		{
			redis_error_malformed(script_answered_by(&cmds[i]), "a script answered with an unexpected shape", err);
			ok = false;
		}
		else
			answers[i] = replies[i]->integer == 1;
	}
	if (ok && ncmds > n)
		ok = replicas_acknowledged(script_answered_by(&cmds[0]), replies[n], err);
	redis_free_replies(ncmds, replies);
	pfree(replies);
	pfree(ids);
	return ok;
}

/*
 * A command in Redis's wire format (RESP), palloc'd in the current memory context, so that it can be
 * sent later without formatting or allocating anything.
 */
char *
script_format(const RedisCommand *cmd, size_t *len)
{
	StringInfoData buf;

	initStringInfo(&buf);
	appendStringInfo(&buf, "*%d\r\n", cmd->argc);
	for (int i = 0; i < cmd->argc; i++)
	{
		appendStringInfo(&buf, "$%zu\r\n", cmd->argvlen[i]);
		appendBinaryStringInfo(&buf, cmd->argv[i], cmd->argvlen[i]);
		appendStringInfoString(&buf, "\r\n");
	}
	*len = buf.len;
	return buf.data;
}
