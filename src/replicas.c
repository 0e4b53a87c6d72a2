/*
 * replicas.c
 *		Replica acknowledgement: redislock.wait_replicas and redislock.wait_replicas_timeout.
 *
 * Redis replicates asynchronously: a master that dies before its replicas have a lock's keys takes the
 * lock with it, and the replica promoted in its place may grant it again. With wait_replicas above 0,
 * the command that may acquire or renew a lock is followed, in the same write, by WAIT <replicas>
 * <timeout> on the same connection: Redis answers WAIT once that many replicas have everything this
 * connection wrote, so the cost is the replication delay and no extra round trip. Every script that
 * WAIT follows writes something of its own on that connection (a lock's TTL at least); a grant taken
 * by BLPOP is confirmed by the acquire script run behind it (lock_ops.c). Replication is in order, so
 * that write also covers the grant that the releasing backend's script made.
 */
#include "redislock.h"

/*
 * Append WAIT to the commands cmds[0..ncmds-1] (room for one more) when replicas must acknowledge;
 * returns the new count.
 */
int
replicas_append_wait(RedisCommand *cmds, RedisScriptId *ids, int ncmds)
{
	static char replicas[16];
	static char timeout[16];
	RedisCommand *c = &cmds[ncmds];

	if (redislock_wait_replicas <= 0)
		return ncmds;
	snprintf(replicas, sizeof(replicas), "%d", redislock_wait_replicas);
	snprintf(timeout, sizeof(timeout), "%d", redislock_wait_replicas_timeout_ms);
	c->argc = 3;
	c->argv[0] = "WAIT";
	c->argvlen[0] = 4;
	c->argv[1] = replicas;
	c->argvlen[1] = strlen(replicas);
	c->argv[2] = timeout;
	c->argvlen[2] = strlen(timeout);
	if (ids != NULL)
		ids[ncmds] = SCRIPT_NONE;
	return ncmds + 1;
}

/* How much longer a round trip with WAIT in it may take. */
int
replicas_extra_ms(void)
{
	return redislock_wait_replicas > 0 ? redislock_wait_replicas_timeout_ms : 0;
}

/*
 * Whether WAIT's answer shows enough replicas; otherwise err says how many acknowledged (55P03), or
 * what was wrong with the answer.
 */
bool
replicas_acknowledged(RedisServer *server, const redisReply *reply, RedisError *err)
{
	if (reply->type == REDIS_REPLY_ERROR)
	{
		redis_error_from_reply(server, reply, err);
		return false;
	}
	if (reply->type != REDIS_REPLY_INTEGER)
	{
		redis_error_malformed(server, "WAIT answered with an unexpected shape", err);
		return false;
	}
	if (reply->integer >= redislock_wait_replicas)
		return true;
	redis_error_set(err, ERRCODE_LOCK_NOT_AVAILABLE,
					"Check the replicas of the Redis master, or lower redislock.wait_replicas or raise redislock.wait_replicas_timeout.",
					"only %lld of %d replicas of Redis at %s acknowledged within %d ms",
					(long long) reply->integer, redislock_wait_replicas, redis_server_name(server),
					redislock_wait_replicas_timeout_ms);
	err->sent = true;
	err->connection_lost = false;
	return false;
}
