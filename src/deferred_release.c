/*
 * deferred_release.c
 *		Releases at the end of a transaction, sent without waiting for Redis's answers.
 *
 * COMMIT and ROLLBACK release their locks with one write and go on without waiting for the replies.
 * Redis runs the release as soon as it reads it, whether or not anyone listens, so the lock is free
 * just as early; what the wait would cost is the committing backend's sleep and wake-up, about a fifth
 * of an uncontended lock cycle on a loaded machine (see bench/results.md).
 *
 * The replies are read before this backend's next command on that connection: every lock operation
 * and the check before commit call redis_lock_settle_releases first (so nothing is read out of
 * order), and so does backend exit. There they are judged as a waited-for release would be: a lock
 * found already lost is a WARNING, a release that met a script Redis had forgotten (NOSCRIPT, after
 * SCRIPT FLUSH) is run again with its text, and a connection that broke meanwhile is a WARNING (the
 * leases free the locks).
 */
#include "redislock.h"

#include "utils/memutils.h"

static MemoryContext deferred_cxt = NULL;
static int	ndeferred = 0;			/* releases whose replies are not read yet */
static int	deferred_cap = 0;
static LockRef *deferred_refs = NULL;	/* copies, in deferred_cxt */
static bool *deferred_held = NULL;	/* a held lock, not the undo of a wait */

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
		deferred_refs[ndeferred].prefix = pstrdup(refs[i].prefix);
		deferred_refs[ndeferred].key = pstrdup(refs[i].key);
		deferred_held[ndeferred] = i < nheld;
		ndeferred++;
	}
	MemoryContextSwitchTo(oldcxt);
}

/*
 * Send the release of refs[0..n-1] (the first nheld held locks, the rest a wait being undone) without
 * waiting for the answer. Returns false when it was not sent: err->sent false means the connection was
 * not ready (the caller releases with a round trip instead); true means the write failed.
 */
bool
redis_lock_release_unanswered(int n, const LockRef *refs, int nheld, RedisError *err)
{
	RedisServer *server = redis_primary_server();
	RedisCommand *cmds;
	LockKeys   *lk;
	const char *args[1] = {redislock_holder_id()};
	bool		sent;

	err->sent = false;
	/* replies still owed to a connection we no longer have are nobody's to read */
	if (redis_unanswered(server) != ndeferred)
		ndeferred = 0;

	/*
	 * Only when Redis has shown it knows the release script on this connection: a NOSCRIPT answer
	 * that nobody reads until this backend's next call (maybe never) would leave the locks held until
	 * their leases end. The first release on a connection, and the first after Redis forgot its
	 * scripts, waits for its answer (and loads the script).
	 */
	if (!redis_script_known(server, SCRIPT_RELEASE))
		return false;
	cmds = palloc(n * sizeof(RedisCommand));
	lk = palloc(n * sizeof(LockKeys));
	for (int i = 0; i < n; i++)
	{
		lock_keys_build(&refs[i], &lk[i]);
		redis_script_command(&cmds[i], SCRIPT_RELEASE, &lk[i], 1, args);
	}
	sent = redis_send_unanswered(server, n, cmds, err);
	if (sent)
		remember(n, refs, nheld);
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
 * Read and judge the answers to releases sent by redis_lock_release_unanswered, if any are owed.
 * Throws only when interruptible (a cancel while Redis is slow to answer).
 */
void
redis_lock_settle_releases(bool interruptible)
{
	RedisServer *server;
	int			n = ndeferred;
	LockRef    *refs = deferred_refs;
	bool	   *held = deferred_held;
	redisReply **replies;
	int		   *verdict;			/* 1 released, 0 already lost, -1 run again, -2 error */
	char	  **errors;
	int			nagain = 0;
	RedisError	err;

	if (n == 0)
		return;
	server = redis_primary_server();
	/* an interrupt thrown while reading must not bring these back: the connection forgets them too */
	ndeferred = 0;
	if (redis_unanswered(server) != n)
		return;					/* the connection was closed (settings changed): replies are gone */

	replies = palloc0(n * sizeof(redisReply *));
	if (!redis_read_unanswered(server, replies, interruptible, &err))
	{
		pfree(replies);
		redis_warn(&err, "Redis locks released at the end of an earlier transaction may stay in Redis until their leases run out.");
		return;
	}
	verdict = palloc(n * sizeof(int));
	errors = palloc0(n * sizeof(char *));
	for (int i = 0; i < n; i++)
	{
		redisReply *r = replies[i];

		if (redis_reply_is_noscript(r))
			verdict[i] = -1;
		else if (r->type == REDIS_REPLY_ERROR)
		{
			verdict[i] = -2;
			errors[i] = pnstrdup(r->str, Min(r->len, 300));
		}
		else if (r->type == REDIS_REPLY_INTEGER)
			verdict[i] = r->integer == 1 ? 1 : 0;
		else
		{
			verdict[i] = -2;
			errors[i] = pstrdup("a release script answered with an unexpected shape");
		}
	}
	redis_free_replies(n, replies);
	pfree(replies);

	for (int i = 0; i < n; i++)
	{
		if (verdict[i] == -1)
		{
			/* compacts in place: i >= nagain */
			refs[nagain] = refs[i];
			held[nagain++] = held[i];
		}
		else if (verdict[i] == -2)
			ereport(WARNING,
					(errcode(ERRCODE_CONNECTION_EXCEPTION),
					 errmsg("could not release redis lock \"%s\": Redis answered: %s", refs[i].key, errors[i]),
					 errdetail("It was released at the end of an earlier transaction; its lease frees it.")));
		else if (verdict[i] == 0 && held[i])
			warn_lost(refs[i].key);
	}
	if (nagain > 0)
	{
		int		   *owned = palloc(nagain * sizeof(int));

		if (!redis_lock_release_many(nagain, refs, owned, interruptible, &err))
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
