/*
 * deferred_release.c
 *		Releases at the end of a transaction, sent without waiting for Redis's answers.
 *
 * COMMIT and ROLLBACK (and ROLLBACK TO SAVEPOINT) release their locks with one write and go on without
 * waiting for the replies. Redis runs the release as soon as it reads it, whether or not anyone
 * listens, so the lock is free just as early; what the wait would cost is the committing backend's
 * sleep and wake-up, about a fifth of an uncontended lock cycle on a busy machine (bench/results.md).
 *
 * The release goes by EVALSHA, and only once Redis has answered the release script on this connection
 * (scripts.c keeps track); the first release on a connection, or the first after Redis showed it had
 * forgotten its scripts, waits for its answer. Sending the whole script (EVAL) instead would survive a
 * SCRIPT FLUSH between the lock and the commit, but costs Redis a SHA1 of 2 kB per release, about a
 * tenth of an uncontended cycle's throughput; so after such a flush the release meets NOSCRIPT, and is
 * run again (EVAL) at this backend's next Redis command, or its lease frees the lock.
 *
 * The replies are read before anything else is sent on that connection: every lock operation, the
 * check before commit, the next such release, DISCARD ALL and backend exit call
 * redis_lock_settle_releases first. They are normally there long before, and reading them is one
 * read(); only a stalled Redis makes it wait, within redislock.command_timeout, and a cancel then
 * ends the wait as it ends any other (what the replies would have said is lost, with a WARNING at the
 * next call). A lock found already lost is a WARNING; so is a connection that broke before the replies
 * could be read (the leases free the locks). Releases that met NOSCRIPT are run again with the
 * script's text on the same connection, not interruptibly, so that a cancel cannot undo that too.
 */
#include "redislock.h"

#include "utils/memutils.h"

static MemoryContext deferred_cxt = NULL;
static int	ndeferred = 0;			/* releases whose replies are not read yet */
static int	deferred_cap = 0;
static LockRef *deferred_refs = NULL;	/* copies, in deferred_cxt */
static bool *deferred_held = NULL;	/* a held lock, not the undo of a wait */

/*
 * Copy refs[0..n-1] after the ndeferred releases already owed; they count only once sent. Called
 * before sending, so that running out of memory here cannot leave a sent release unaccounted for.
 */
static void
remember(int n, const LockRef *refs, int nheld)
{
	MemoryContext oldcxt;

	if (deferred_cxt == NULL)
		deferred_cxt = AllocSetContextCreate(TopMemoryContext, "redislock deferred releases",
											 ALLOCSET_SMALL_SIZES);
	if (ndeferred == 0)
	{
		MemoryContextReset(deferred_cxt);
		deferred_refs = NULL;
		deferred_held = NULL;
		deferred_cap = 0;
	}
	oldcxt = MemoryContextSwitchTo(deferred_cxt);
	if (ndeferred + n > deferred_cap)
	{
		int			cap = Max(8, 2 * (ndeferred + n));

		deferred_refs = deferred_refs ? repalloc(deferred_refs, cap * sizeof(LockRef)) :
			palloc(cap * sizeof(LockRef));
		deferred_held = deferred_held ? repalloc(deferred_held, cap * sizeof(bool)) :
			palloc(cap * sizeof(bool));
		deferred_cap = cap;
	}
	for (int i = 0; i < n; i++)
	{
		deferred_refs[ndeferred + i].prefix = pstrdup(refs[i].prefix);
		deferred_refs[ndeferred + i].key = pstrdup(refs[i].key);
		deferred_held[ndeferred + i] = i < nheld;
	}
	MemoryContextSwitchTo(oldcxt);
}

/*
 * Send the release of refs[0..n-1] (the first nheld held locks whose loss is worth a WARNING, the rest
 * locks not worth one or a wait being undone) without waiting for the answer. Returns false when it
 * was not sent: err->sent false means the connection was not ready (none yet, broken, or busy), true
 * that the write failed; either way the caller can still release with a round trip. Never throws
 * (short of running out of memory).
 */
bool
redis_lock_release_unanswered(int n, const LockRef *refs, int nheld, RedisError *err)
{
	RedisServer *server;
	RedisCommand *cmds;
	LockKeys   *lk;
	bool		sent;

	/* what earlier releases answered, first: a connection that owes nothing can be checked */
	redis_lock_settle_releases(false);
	server = redis_primary_server();
	err->sent = false;
	if (!redis_script_known(server, SCRIPT_RELEASE))
		return false;
	remember(n, refs, nheld);
	cmds = palloc(n * sizeof(RedisCommand));
	lk = palloc(n * sizeof(LockKeys));
	release_commands_build(n, refs, false, cmds, lk);
	sent = redis_send_unanswered(server, n, cmds, err);
	if (sent)
		ndeferred += n;
	for (int i = 0; i < n; i++)
		lock_keys_free(&lk[i]);
	pfree(lk);
	pfree(cmds);
	return sent;
}

static void
warn_lost(const char *key)
{
	ereport(WARNING,
			(errcode(ERRCODE_T_R_SERIALIZATION_FAILURE),
			 errmsg("redis lock \"%s\" had already been lost when it was released", key),
			 errdetail("It was released at the end of an earlier transaction; by then its lease had run out and another holder had it, or Redis had forgotten it.")));
}

/*
 * Read and judge the answers to releases sent by redis_lock_release_unanswered, if any are owed, and
 * run again those that met NOSCRIPT. Throws only when interruptible: a cancel while a stalled Redis
 * keeps us waiting, or that Redis not answering within redislock.command_timeout. What goes wrong
 * otherwise is a WARNING.
 */
void
redis_lock_settle_releases(bool interruptible)
{
	/* the connection they were sent on, even if the settings moved on since: read it before it goes */
	RedisServer *server = redis_primary_server_as_is();
	int			n = ndeferred;
	LockRef    *refs = deferred_refs;
	bool	   *held = deferred_held;
	redisReply **replies;
	int		   *verdict;			/* 1 released, 0 already lost, -1 an error, -2 NOSCRIPT */
	char	  **errors;
	int			nagain = 0;
	RedisError	err;

	if (n == 0)
		return;
	if (redis_unanswered(server) != n)
	{
		/* the read was cut short by a cancel, or the connection closed (an error path) */
		ndeferred = 0;
		ereport(WARNING,
				(errcode(ERRCODE_CONNECTION_FAILURE),
				 errmsg("could not learn whether redis locks released at the end of an earlier transaction were released"),
				 errdetail("Reading Redis's answer was cancelled, or the connection closed first; their leases free them if they were not.")));
		return;
	}

	/* an interrupt thrown from the read leaves ndeferred set: the next call warns (above) */
	replies = palloc0(n * sizeof(redisReply *));
	if (!redis_read_unanswered(server, replies, interruptible, &err))
	{
		ndeferred = 0;
		pfree(replies);

		/*
		 * No answer in time: Redis is stalled, and the call that brought us here would wait as long
		 * again on a new connection. It fails now instead (the releases were sent; Redis runs them
		 * when it wakes). A broken connection, by contrast, is replaced by that call.
		 */
		if (interruptible && !err.connection_lost && err.sqlstate == ERRCODE_CONNECTION_FAILURE)
			redis_raise(&err);
		redis_warn(&err, "Redis locks released at the end of an earlier transaction may stay in Redis until their leases run out.");
		return;
	}
	ndeferred = 0;
	verdict = palloc(n * sizeof(int));
	errors = palloc0(n * sizeof(char *));
	for (int i = 0; i < n; i++)
	{
		redisReply *r = replies[i];

		if (redis_reply_is_noscript(r))
			verdict[i] = -2;
		else if (r->type == REDIS_REPLY_INTEGER)
			verdict[i] = r->integer == 1 ? 1 : 0;
		else
		{
			verdict[i] = -1;
			errors[i] = r->type == REDIS_REPLY_ERROR ?
				pnstrdup(r->str, Min(r->len, 300)) :
				pstrdup("a release script answered with an unexpected shape");
		}
	}
	redis_free_replies(n, replies);
	pfree(replies);

	for (int i = 0; i < n; i++)
	{
		if (verdict[i] == -2)
		{
			/* not run: again, with the script's text; compacts in place (i >= nagain) */
			refs[nagain] = refs[i];
			held[nagain++] = held[i];
		}
		else if (verdict[i] == -1)
			ereport(WARNING,
					(errcode(ERRCODE_CONNECTION_EXCEPTION),
					 errmsg("could not release redis lock \"%s\": Redis answered: %s",
							refs[i].key, errors[i]),
					 errdetail("It was released at the end of an earlier transaction; its lease frees it.")));
		else if (verdict[i] == 0 && held[i])
			warn_lost(refs[i].key);
	}
	if (nagain > 0)
	{
		int		   *owned = palloc(nagain * sizeof(int));

		if (!redis_lock_release_again(server, nagain, refs, owned, &err))
			redis_warn(&err, "Redis locks released at the end of an earlier transaction may stay in Redis until their leases run out.");
		else
		{
			for (int i = 0; i < nagain; i++)
			{
				if (!owned[i] && held[i])
					warn_lost(refs[i].key);
			}
		}
		pfree(owned);
	}
	pfree(verdict);
	pfree(errors);
}
