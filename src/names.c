/*
 * names.c
 *		Every name redislock uses in Redis: the keys of a lock and the ids of those who hold it.
 *
 * A lock "K" taken under redislock.key_prefix "P" lives in keys that share the hash tag "{PK}", so that
 * a Redis Cluster keeps them in one slot:
 *	{PK}		hash: owner, token, expires
 *	{PK}:q		sorted set: the FIFO queue of waiting acquisitions
 *	{PK}:w		hash: the waiters' heartbeats
 *	{PK}:g:<a>	list: the grant handed to waiting acquisition <a>
 * The Lua scripts (src/lua/common.lua) derive the grant key the same way.
 *
 * An acquisition id names one lock call of one backend: "<host>:<port>:<pid>:<nonce>:<n>", where the
 * random nonce tells a backend from a later one with the same pid, and n counts this backend's lock
 * calls. Redis records the acquisition as the owner (or the waiter), and every release, undo, check
 * and renewal names the acquisition it is for: a command that reaches Redis late, after the same
 * backend took the key again, finds another id there and leaves that lock alone.
 */
#include "redislock.h"

#include <unistd.h>

#include "miscadmin.h"
#include "port.h"
#include "postmaster/postmaster.h"
#include "utils/memutils.h"
#include "utils/timestamp.h"

static char *backend_id = NULL;
static uint64 acquisitions = 0;

/* Who this backend is in Redis: "<host>:<port>:<pid>:<nonce>". */
const char *
names_backend_id(void)
{
	if (backend_id == NULL)
	{
		char		host[256];
		uint32		nonce;

		if (gethostname(host, sizeof(host)) != 0)
			strlcpy(host, "localhost", sizeof(host));
		host[sizeof(host) - 1] = '\0';
		if (!pg_strong_random(&nonce, sizeof(nonce)))
			nonce = (uint32) GetCurrentTimestamp() ^ (uint32) MyProcPid;
		backend_id = MemoryContextAlloc(TopMemoryContext, strlen(host) + 48);
		sprintf(backend_id, "%s:%d:%d:%08x", host, PostPortNumber, MyProcPid, nonce);
	}
	return backend_id;
}

/* A new acquisition id, never used before by this backend (or any other). */
void
names_new_acquisition(char *buf, size_t len)
{
	snprintf(buf, len, "%s:" UINT64_FORMAT, names_backend_id(), ++acquisitions);
}

/* The keys of a lock, palloc'd; names_lock_keys_free frees them. */
void
names_lock_keys(const LockRef *ref, LockKeys *keys)
{
	keys->lock = psprintf("{%s%s}", ref->prefix, ref->key);
	keys->lock_len = strlen(keys->lock);
	keys->queue = psprintf("%s:q", keys->lock);
	keys->queue_len = keys->lock_len + 2;
	keys->waiters = psprintf("%s:w", keys->lock);
	keys->waiters_len = keys->lock_len + 2;
	keys->shared = psprintf("%s:s", keys->lock);
	keys->shared_len = keys->lock_len + 2;
}

void
names_lock_keys_free(LockKeys *keys)
{
	pfree(keys->lock);
	pfree(keys->queue);
	pfree(keys->waiters);
	pfree(keys->shared);
}

/* The list on which a waiting acquisition receives its grant, palloc'd. */
char *
names_grant_key(const LockRef *ref, const char *acquisition)
{
	return psprintf("{%s%s}:g:%s", ref->prefix, ref->key, acquisition);
}

/* The backend of an acquisition id: the id without its last ":<n>" (palloc'd). */
char *
names_backend_of(const char *acquisition)
{
	const char *colon = strrchr(acquisition, ':');

	return colon ? pnstrdup(acquisition, colon - acquisition) : pstrdup(acquisition);
}

/*
 * Where a backend that waits for a lock under prefix says so, for the deadlock check of other
 * backends: "{<prefix>wf:<host>:<port>:<pid>}" for backend "<host>:<port>:<pid>:<nonce>" (the nonce is
 * left out, so that a backend of this server can be looked up by its pid; the record names the whole
 * backend id, which tells a later backend with the same pid apart). palloc'd.
 */
char *
names_wait_record_key(const char *prefix, const char *backend)
{
	const char *colon = strrchr(backend, ':');
	int			len = colon ? (int) (colon - backend) : (int) strlen(backend);

	return psprintf("{%swf:%.*s}", prefix, len, backend);
}

/*
 * Whether backend (an id as above) runs on this PostgreSQL server, and then its pid. Host names alone
 * can repeat across machines; host and port together name one server.
 */
bool
names_backend_is_local(const char *backend, int *pid)
{
	const char *mine = names_backend_id();
	const char *p = strrchr(mine, ':');		/* mine is "<host>:<port>:<pid>:<nonce>" */
	size_t		server_len;
	char	   *end;

	/* the server is what comes before ":<pid>:<nonce>" */
	do
		p--;
	while (p > mine && *p != ':');
	server_len = p - mine;
	if (strncmp(backend, mine, server_len) != 0 || backend[server_len] != ':')
		return false;
	*pid = (int) strtol(backend + server_len + 1, &end, 10);
	return *end == ':';
}
