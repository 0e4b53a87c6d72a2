/*
 * cluster.c
 *		Redis Cluster: which node serves a lock (redislock.cluster_nodes, the slot map), and what a
 *		redirection says.
 *
 * Every key of one lock shares one hash tag ({<prefix><key>}), so a lock lives in one slot and each of
 * its scripts runs on one node. A backend keeps its own map of the 16384 slots to the masters that
 * serve them, asked with CLUSTER SLOTS of a node it knows (or of a seed) the first time it needs one,
 * and again after a MOVED or a node that could not be reached (a failover). MOVED also corrects the
 * one slot at once, so the command that met it can be re-sent straight away (scripts.c does the
 * re-sending, with ASKING after ASK). A connection to a node is made when a lock first needs it
 * (redis_conn.c keeps them, one RedisServer per node).
 *
 * Outside Cluster mode every lock routes to the one data server (redislock.host, or Sentinel's master),
 * so callers route every command, whatever the mode.
 */
#include "redislock.h"

#include "utils/memutils.h"

#define CLUSTER_SLOTS 16384
#define CLUSTER_SEEDS_MAX 32
#define CLUSTER_NODES_MAX 1024

static RedisServer *nodes[CLUSTER_NODES_MAX];	/* the masters (and seeds) met so far */
static int	nnodes = 0;
static int16 slot_node[CLUSTER_SLOTS];	/* index into nodes[], -1 when no node serves it */
static bool map_known = false;
static bool refresh_wanted = false; /* a MOVED or a node down: ask for the whole map again */
static int	last_answered = -1;		/* the node whose CLUSTER SLOTS was last used */
static uint64 map_generation = 0;	/* changes whenever a slot changes node */

bool
cluster_mode(void)
{
	return redislock_cluster_nodes != NULL && redislock_cluster_nodes[0] != '\0';
}

static int
parse_seeds(const char *list, RedisAddress *out, char *problem, size_t len)
{
	return redislock_parse_addresses("redislock.cluster_nodes", "nodes", list, out, CLUSTER_SEEDS_MAX,
									 problem, len);
}

/* For the setting's check hook: whether list is a valid redislock.cluster_nodes. */
bool
cluster_check_list(const char *list, char *problem, size_t len)
{
	RedisAddress addrs[CLUSTER_SEEDS_MAX];

	return parse_seeds(list, addrs, problem, len) >= 0;
}

/*
 * Cluster and Sentinel are two ways of finding the servers; both at once is a configuration error,
 * raised by the first call that would talk to Redis.
 */
void
cluster_check_settings(void)
{
	if (cluster_mode() && redislock_sentinels[0] != '\0')
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("redislock.cluster_nodes and redislock.sentinels cannot both be set"),
				 errdetail("Redis Cluster finds its masters itself; Sentinel is for a single master with replicas."),
				 errhint("Set one of redislock.cluster_nodes and redislock.sentinels to ''.")));
}

/* Forget the map and the nodes (the settings changed); their connections are closed by the caller. */
void
cluster_forget(void)
{
	nnodes = 0;
	map_known = false;
	refresh_wanted = false;
	last_answered = -1;
}

/* CRC16-CCITT (XModem), the checksum Redis Cluster takes modulo 16384 for a key's slot. */
static uint16
crc16(const char *buf, size_t len)
{
	uint16		crc = 0;

	for (size_t i = 0; i < len; i++)
	{
		crc ^= (uint16) ((unsigned char) buf[i]) << 8;
		for (int bit = 0; bit < 8; bit++)
			crc = (crc & 0x8000) ? (uint16) ((crc << 1) ^ 0x1021) : (uint16) (crc << 1);
	}
	return crc;
}

/*
 * The slot of a Redis key: of its hash tag, the part between the first '{' and the first '}' after it
 * when that part is not empty, else of the whole key.
 */
int
cluster_key_slot(const char *key, size_t len)
{
	const char *open = memchr(key, '{', len);

	if (open != NULL)
	{
		size_t		from = open - key + 1;
		const char *close = memchr(key + from, '}', len - from);

		if (close != NULL && close > key + from)
			return crc16(key + from, close - (key + from)) & (CLUSTER_SLOTS - 1);
	}
	return crc16(key, len) & (CLUSTER_SLOTS - 1);
}

/* The node at host:port, added to nodes[] if new; -1 when there is no room or memory (callbacks). */
static int
node_index(const char *host, int port)
{
	RedisServer *server;

	for (int i = 0; i < nnodes; i++)
	{
		if (redis_server_is_at(nodes[i], host, port))
			return i;
	}
	if (nnodes == CLUSTER_NODES_MAX)
		return -1;
	server = redis_node_server(host, port);
	if (server == NULL)
		return -1;
	nodes[nnodes] = server;
	return nnodes++;
}

/* A string element of a reply, copied into buf; false if it is not one or does not fit. */
static bool
element_text(const redisReply *r, char *buf, size_t len)
{
	if (r->type != REDIS_REPLY_STRING || r->len >= len)
		return false;
	memcpy(buf, r->str, r->len);
	buf[r->len] = '\0';
	return true;
}

/*
 * Read CLUSTER SLOTS's answer (from the node asked) into the map: [[first, last, [host, port, id,
 * ...], replicas...], ...]. A node that announces no host ("" or "?") is at the address we asked.
 */
static bool
read_slot_map(RedisServer *asked, const redisReply *reply)
{
	int16	   *fresh;
	int			served = 0;

	if (reply->type != REDIS_REPLY_ARRAY)
		return false;
	fresh = palloc(CLUSTER_SLOTS * sizeof(int16));
	for (int s = 0; s < CLUSTER_SLOTS; s++)
		fresh[s] = -1;
	for (size_t i = 0; i < reply->elements; i++)
	{
		const redisReply *range = reply->element[i];
		const redisReply *master;
		char		host[256];
		int			node;

		if (range->type != REDIS_REPLY_ARRAY || range->elements < 3 ||
			range->element[0]->type != REDIS_REPLY_INTEGER || range->element[1]->type != REDIS_REPLY_INTEGER ||
			range->element[2]->type != REDIS_REPLY_ARRAY || range->element[2]->elements < 2)
			continue;
		master = range->element[2];
		if (master->element[1]->type != REDIS_REPLY_INTEGER || master->element[1]->integer < 1 ||
			master->element[1]->integer > 65535 || !element_text(master->element[0], host, sizeof(host)))
			continue;
		if (host[0] == '\0' || strcmp(host, "?") == 0)
			snprintf(host, sizeof(host), "%s", redis_server_host(asked));
		node = node_index(host, (int) master->element[1]->integer);
		if (node < 0)
			continue;
		for (long long s = Max(range->element[0]->integer, 0);
			 s <= Min(range->element[1]->integer, CLUSTER_SLOTS - 1); s++)
		{
			served += fresh[s] < 0;
			fresh[s] = (int16) node;
		}
	}
	/* a node that knows no slot (reset, or not part of the cluster yet) is no source: ask another */
	if (served == 0)
	{
		pfree(fresh);
		return false;
	}
	if (memcmp(slot_node, fresh, sizeof(slot_node)) != 0)
		map_generation++;
	memcpy(slot_node, fresh, sizeof(slot_node));
	pfree(fresh);
	map_known = true;
	refresh_wanted = false;
	return true;
}

/* Ask one node for the slot map; false with err set when it could not answer. */
static bool
ask_for_map(RedisServer *server, bool interruptible, RedisError *err)
{
	RedisCommand cmd = {2, {"CLUSTER", "SLOTS"}, {7, 5}};
	redisReply *reply = NULL;
	bool		ok;

	if (!redis_roundtrip(server, 1, &cmd, &reply, redislock_command_timeout_ms, interruptible, err))
		return false;
	if (reply->type == REDIS_REPLY_ERROR)
	{
		redis_error_from_reply(server, reply, err);
		ok = false;
	}
	else if (!(ok = read_slot_map(server, reply)))
		redis_error_set(err, ERRCODE_CANNOT_CONNECT_NOW, NULL,
						"Redis at %s named no slot served in the Redis Cluster", redis_server_name(server));
	freeReplyObject(reply);
	return ok;
}

static void
append_tried(char *tried, size_t len, const RedisError *err)
{
	size_t		used = strlen(tried);

	if (used + 3 >= len)
		return;
	snprintf(tried + used, len - used, "%s%s", used > 0 ? "; " : "", err->message);
}

/*
 * Learn the slot map: from the node that answered last, the other nodes already connected, the seeds,
 * then the nodes met before — the first that answers. False with err set when none did.
 */
static bool
refresh_map(bool interruptible, RedisError *err)
{
	RedisAddress seeds[CLUSTER_SEEDS_MAX];
	char		problem[256];
	char		tried[512] = "";
	int			nseeds = parse_seeds(redislock_cluster_nodes, seeds, problem, sizeof(problem));
	int			order[CLUSTER_NODES_MAX + CLUSTER_SEEDS_MAX];
	int			n = 0;
	int			asked = 0;
	bool		seen[CLUSTER_NODES_MAX] = {false};

	if (last_answered >= 0 && last_answered < nnodes && redis_server_usable(nodes[last_answered]))
	{
		order[n++] = last_answered;
		seen[last_answered] = true;
	}
	last_answered = -1;			/* set again by the one that answers */
	for (int i = 0; i < nnodes; i++)
	{
		if (!seen[i] && redis_server_usable(nodes[i]))
		{
			order[n++] = i;
			seen[i] = true;
		}
	}
	for (int i = 0; i < nseeds; i++)
	{
		int			node = node_index(seeds[i].host, seeds[i].port);

		if (node >= 0 && !seen[node])
		{
			order[n++] = node;
			seen[node] = true;
		}
	}
	for (int i = 0; i < nnodes; i++)
	{
		if (!seen[i])
		{
			order[n++] = i;
			seen[i] = true;
		}
	}
	for (int k = 0; k < n; k++)
	{
		asked++;
		if (ask_for_map(nodes[order[k]], interruptible, err))
		{
			last_answered = order[k];
			return true;
		}
		append_tried(tried, sizeof(tried), err);
	}
	redis_error_set(err, ERRCODE_SQLCLIENT_UNABLE_TO_ESTABLISH_SQLCONNECTION,
					"Check redislock.cluster_nodes, and that the Redis Cluster is running.",
					"could not learn the slots of the Redis Cluster: no node answered (tried %d)", asked);
	snprintf(err->detail, sizeof(err->detail), "%s", tried);
	err->unreachable = true;
	return false;
}

/*
 * The server that serves slot: outside Cluster mode the one data server. In Cluster mode the map is
 * learnt first when there is none, or when a redirection or a node down asked for it again and we may
 * take a round trip (interruptible: not in commit and abort callbacks, which take the map as it is and
 * follow redirections). NULL with err set when no node can be named.
 */
RedisServer *
cluster_server_for_slot(int slot, bool interruptible, RedisError *err)
{
	if (!cluster_mode())
		return redis_primary_server();
	if (slot < 0 || slot >= CLUSTER_SLOTS)
		slot = 0;				/* a command without a key (none is routed): any node will do */
	redis_apply_settings();
	if ((!map_known || (refresh_wanted && interruptible)) && !refresh_map(interruptible, err) && !map_known)
		return NULL;
	if (slot_node[slot] < 0)
	{
		redis_error_set(err, ERRCODE_CANNOT_CONNECT_NOW,
						"The Redis Cluster may be failing over or resharding: retry in a moment.",
						"no node of the Redis Cluster serves slot %d", slot);
		refresh_wanted = true;
		err->unreachable = true;
		return NULL;
	}
	return nodes[slot_node[slot]];
}

/*
 * The node that serves slot as the map says now, with no round trip, no change of settings applied
 * and nothing allocated: for commit and abort callbacks. NULL when the map names none.
 */
RedisServer *
cluster_server_for_slot_as_is(int slot)
{
	if (!map_known || slot < 0 || slot >= CLUSTER_SLOTS || slot_node[slot] < 0)
		return NULL;
	return nodes[slot_node[slot]];
}

/* The server that serves a lock (every key of a lock is in one slot). */
RedisServer *
cluster_server_for_lock(const LockRef *ref, bool interruptible, RedisError *err)
{
	LockKeys	keys;
	int			slot;

	if (!cluster_mode())
		return redis_primary_server();
	names_lock_keys(ref, &keys);
	slot = cluster_key_slot(keys.lock, keys.lock_len);
	names_lock_keys_free(&keys);
	return cluster_server_for_slot(slot, interruptible, err);
}

/*
 * Whether reply is a redirection (MOVED or ASK <slot> <host>:<port>); then *to is the node it names
 * (from: the node that answered, for an empty host) and *ask says which kind. MOVED also corrects the
 * map for that slot at once, and asks for the whole map again at the next chance.
 */
bool
cluster_redirection(const redisReply *reply, RedisServer *from, RedisServer **to, bool *ask)
{
	char		text[300];
	char	   *slot_end;
	char	   *colon;
	long		slot;
	long		port;
	int			node;

	if (!cluster_mode() || reply == NULL || reply->type != REDIS_REPLY_ERROR || reply->len >= sizeof(text))
		return false;
	memcpy(text, reply->str, reply->len);
	text[reply->len] = '\0';
	if (strncmp(text, "MOVED ", 6) == 0)
		*ask = false;
	else if (strncmp(text, "ASK ", 4) == 0)
		*ask = true;
	else
		return false;
	slot = strtol(text + (*ask ? 4 : 6), &slot_end, 10);
	colon = strrchr(text, ':');
	if (slot < 0 || slot >= CLUSTER_SLOTS || *slot_end != ' ' || colon == NULL || colon < slot_end)
		return false;
	port = strtol(colon + 1, NULL, 10);
	if (port < 1 || port > 65535)
		return false;
	*colon = '\0';
	node = node_index(slot_end[1] != '\0' ? slot_end + 1 : redis_server_host(from), (int) port);
	if (node < 0)
		return false;
	*to = nodes[node];
	if (!*ask)
	{
		if (slot_node[slot] != node)
			map_generation++;
		slot_node[slot] = (int16) node;
		refresh_wanted = true;
	}
	return true;
}

/*
 * A number that changes whenever this backend learns that a slot changed node (a resharding or a
 * failover): a lock taken before may have moved, or been lost with its master.
 */
uint64
cluster_map_generation(void)
{
	return map_generation;
}

/* A node could not be reached or its connection broke: its slots may have a new master. */
void
cluster_server_failed(void)
{
	if (cluster_mode())
		refresh_wanted = true;
}

/* The slot a command's key is in, or -1 for a command without a key (WAIT, ASKING). */
int
cluster_command_slot(const RedisCommand *cmd)
{
	if (cmd->argc >= 4 && strncmp(cmd->argv[0], "EVAL", 4) == 0)
		return cluster_key_slot(cmd->argv[3], cmd->argvlen[3]);
	if (cmd->argc < 2 || strcmp(cmd->argv[0], "WAIT") == 0 || strcmp(cmd->argv[0], "CLUSTER") == 0)
		return -1;
	return cluster_key_slot(cmd->argv[1], cmd->argvlen[1]);
}
