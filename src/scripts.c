/*
 * scripts.c
 *		The Redis-side logic of redislock: Lua scripts run atomically by Redis.
 *
 * The scripts live in src/lua/ (common.lua is prepended to each) and are embedded at build time,
 * together with their SHA1, by src/lua/embed.sh. They are called with EVALSHA; a NOSCRIPT reply (after
 * SCRIPT FLUSH, a restart or a failover) is answered by sending that command again as EVAL, which
 * also loads the script for the next EVALSHA. A script that answered NOSCRIPT did not run, so
 * resending is safe.
 */
#include "redislock.h"

#include "lib/stringinfo.h"

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

/* EVALSHA <sha1> 3 <lock> <queue> <waiters> <args...> */
void
script_command(RedisCommand *cmd, RedisScriptId id, const LockKeys *keys,
					 int nargs, const char *const *args)
{
	Assert(nargs + 6 <= REDIS_MAX_ARGS);
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
	for (int i = 0; i < nargs; i++)
	{
		cmd->argv[cmd->argc] = args[i];
		cmd->argvlen[cmd->argc] = strlen(args[i]);
		cmd->argc++;
	}
}

/*
 * Which scripts Redis has answered on the current connection (so it knows them), as a bit per
 * RedisScriptId; a new connection starts with none known. Any NOSCRIPT answer clears the lot: Redis
 * may have forgotten them all (SCRIPT FLUSH, a restart behind a proxy). A command sent without waiting
 * for its answer can only use a known script: an unread NOSCRIPT would leave the work undone.
 */
static uint64 known_epoch = 0;
static uint32 known_scripts = 0;

void
script_note_answer(RedisServer *server, RedisScriptId id, const redisReply *reply)
{
	uint64		epoch = redis_connection_epoch(server);

	if (id == SCRIPT_NONE)
		return;
	if (known_epoch != epoch)
	{
		known_epoch = epoch;
		known_scripts = 0;
	}
	if (script_reply_is_noscript(reply))
		known_scripts = 0;
	else if (reply->type != REDIS_REPLY_ERROR)
		known_scripts |= 1u << id;	/* not an error Redis may give before it looks (BUSY, LOADING) */
}

/* Whether Redis answered script id on this connection since it last forgot scripts. */
bool
script_known(RedisServer *server, RedisScriptId id)
{
	return known_epoch == redis_connection_epoch(server) && (known_scripts & (1u << id)) != 0;
}

/* Whether Redis answered that it does not know the script (it did not run). */
bool
script_reply_is_noscript(const redisReply *reply)
{
	return reply->type == REDIS_REPLY_ERROR && reply->len >= 8 &&
		strncmp(reply->str, "NOSCRIPT", 8) == 0;
}

/*
 * Whether an error reply says the script did not run at all, for a reason that passes: Redis did not
 * know it, was loading its data, busy running another script, a replica, or its cluster was down.
 */
bool
script_reply_not_run(const redisReply *reply)
{
	static const char *const passing[] = {"NOSCRIPT", "LOADING", "BUSY", "MASTERDOWN", "TRYAGAIN",
	"CLUSTERDOWN", "READONLY"};

	if (reply->type != REDIS_REPLY_ERROR || reply->str == NULL)
		return false;
	for (int i = 0; i < lengthof(passing); i++)
	{
		if (strncmp(reply->str, passing[i], strlen(passing[i])) == 0)
			return true;
	}
	return false;
}

/*
 * Run script commands built by script_command in one round trip, plus a second one only when
 * Redis had forgotten a script. ids[i] names the script of cmds[i], or is SCRIPT_NONE for a plain
 * command sent along (WAIT, which must follow what it confirms: it is sent again in the second round
 * trip). On success every reply is set (Redis error replies included: the caller interprets them); on
 * failure nothing is left allocated.
 */
bool
script_run(RedisServer *server, int ncmds, RedisCommand *cmds, RedisScriptId *ids,
				  redisReply **replies, int timeout_ms, bool interruptible, RedisError *err)
{
	int			nmissing = 0;

	if (!redis_roundtrip(server, ncmds, cmds, replies, timeout_ms, interruptible, err))
		return false;
	for (int i = 0; i < ncmds; i++)
	{
		script_note_answer(server, ids[i], replies[i]);
		if (ids[i] == SCRIPT_NONE && nmissing > 0)
		{
			freeReplyObject(replies[i]);
			replies[i] = NULL;
			cmds[nmissing] = cmds[i];
			nmissing++;
		}
		else if (ids[i] != SCRIPT_NONE && script_reply_is_noscript(replies[i]))
		{
			freeReplyObject(replies[i]);
			replies[i] = NULL;
			cmds[i].argv[0] = "EVAL";
			cmds[i].argvlen[0] = 4;
			cmds[i].argv[1] = scripts[ids[i]].text;
			cmds[i].argvlen[1] = scripts[ids[i]].text_len;
			cmds[nmissing] = cmds[i];
			nmissing++;
		}
	}
	if (nmissing > 0)
	{
		redisReply *reloaded[64];
		redisReply **again = nmissing <= 64 ? reloaded : palloc(nmissing * sizeof(redisReply *));
		int			j = 0;

		/*
		 * Not interruptible when some first-round replies are held here: an interrupt thrown now
		 * would leak them. The retry is bounded by timeout_ms all the same.
		 */
		if (!redis_roundtrip(server, nmissing, cmds, again, timeout_ms,
							 interruptible && nmissing == ncmds, err))
		{
			redis_free_replies(ncmds, replies);
			/* the first round reached Redis, and some of it ran */
			if (nmissing < ncmds)
				err->sent = true;
			return false;
		}
		for (int i = 0; i < ncmds; i++)
		{
			if (replies[i] == NULL)
			{
				replies[i] = again[j++];
				script_note_answer(server, ids[i], replies[i]);
			}
		}
		if (again != reloaded)
			pfree(again);
	}
	return true;
}

/*
 * Run n commands of one script, whose answers are 1 or 0, in one round trip, into answers[]. Frees
 * every reply. Returns false with err set on any failure, an error reply included. confirm: the
 * replicas must acknowledge what the scripts did (redislock.wait_replicas; cmds has room for one more
 * command, the WAIT), else it fails too.
 */
bool
script_run_yes_no(RedisServer *server, int n, RedisScriptId id, RedisCommand *cmds, int *answers,
				  bool confirm, bool interruptible, RedisError *err)
{
	RedisScriptId *ids = palloc((n + 1) * sizeof(RedisScriptId));
	redisReply **replies = palloc0((n + 1) * sizeof(redisReply *));
	int			ncmds = n;
	bool		ok;

	for (int i = 0; i < n; i++)
		ids[i] = id;
	if (confirm)
		ncmds = replicas_append_wait(cmds, ids, n);
	ok = script_run(server, ncmds, cmds, ids, replies,
					redislock_command_timeout_ms + (ncmds > n ? replicas_extra_ms() : 0),
					interruptible, err);
	for (int i = 0; ok && i < n; i++)
	{
		if (replies[i]->type == REDIS_REPLY_ERROR)
		{
			redis_error_from_reply(server, replies[i], err);
			ok = false;
		}
		else if (replies[i]->type != REDIS_REPLY_INTEGER)
		{
			redis_error_malformed(server, "a script answered with an unexpected shape", err);
			ok = false;
		}
		else
			answers[i] = replies[i]->integer == 1;
	}
	if (ok && ncmds > n)
		ok = replicas_acknowledged(server, replies[n], err);
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
