# Redis Cluster, against three masters and three replicas (redis-server 7.0, cluster-node-timeout
# 1000 ms) on loopback, started once for the file (test/perl/RedisTopology.pm), and two PostgreSQL
# clusters (one in keeper mode) configured with one seed node (redislock.cluster_nodes; redislock.host
# and port unused). Where a lock is, Redis itself says: HGET "{redislock:K}" owner on the master
# serving the key's slot. The seed (master 0) is never killed or failed over.
# - settings: cluster_nodes together with sentinels fails at the first lock call (22023, naming both);
# - locks whose keys fall on each of the three masters, in one transaction: each on its master, seen
#   by redis_lock_info, excluding the other cluster, all released at COMMIT and by redis_unlock_all;
# - first come, first served through handoffs: a holder and three waiters on two clusters;
# - slot migration while a lock is held and waited for: whole (the lock moves with its slot, the
#   waiter acquires within seconds of the holder's COMMIT), and held half-migrated (ASK, TRYAGAIN)
#   for 1.5 s across the holder's COMMIT: its release runs, the waiter acquires within seconds; a
#   third session polling with redis_try_lock never gets in;
# - CLUSTER FAILOVER of the master serving a held and awaited lock: the holder commits, the waiter
#   acquires with a greater token, new calls work on the new master, the keeper renews there;
# - kill -9 of a master: with wait_replicas = 1 the lock survives on the promoted replica (which,
#   with one replica a master, has none left: wait_replicas = 1 acquisitions there fail with 55P03
#   until the killed node rejoins as its replica), the holder then commits and a waiter queued before
#   the kill rides out the failover and acquires; with wait_replicas = 0 and the lock missing from the
#   replica, another session takes the key and the holder's COMMIT fails (40001);
# - the exclusion checker on both clusters, one key per master, through a slot migration held
#   half-done for a second;
# - lock calls while a master is down (before its replica is promoted) and while a slot's owner
#   points in a loop (MOVED back and forth): each call ends within the timeouts, with a result or an
#   error (57P03 or 08xxx), never hangs.
use strict;
use warnings;
use lib 'perl';
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(time usleep);
use RedisLockTest;
use RedisTopology qw(start_cluster_topology);
use CriticalSections;

my $t_file = time;
my $cluster = start_cluster_topology(node_timeout_ms => 1000);
note(sprintf('the Redis Cluster started in %.1f s', time - $t_file));
my $seed_node = ($cluster->masters)[0];    # never killed nor failed over
my $seed = $cluster->seed_setting($seed_node);
my $conf = "redislock.cluster_nodes = '$seed'\nredislock.connect_timeout = '1s'\nredislock.command_timeout = '1s'\n"
  . "redislock.host = '192.0.2.1'\n";    # not used in Cluster mode (TEST-NET-1: would time out)
my $a = new_node('cluster_a', $seed_node, "shared_preload_libraries = 'redislock'\n$conf");    # keeper mode
my $b = new_node('cluster_b', $seed_node, $conf);
my ($a_port, $b_port) = ($a->port, $b->port);
$SIG{PIPE} = 'IGNORE';

# try_for(key, seconds): redis_try_lock in a loop (every 50 ms, each try in its own exception block,
# released at once when it succeeds) for that long; how many tries got the lock, how many were made,
# the SQLSTATEs of the tries that failed, and the longest try in ms.
for my $node ($a, $b)
{
	$node->safe_psql('postgres', <<'EOF');
CREATE FUNCTION try_for(k text, secs float8, OUT got int, OUT tries int, OUT sqlstates text, OUT max_ms int)
LANGUAGE plpgsql AS $$
DECLARE
	deadline timestamptz := clock_timestamp() + make_interval(secs => secs);
	t0 timestamptz;
	states text[] := '{}';
BEGIN
	got := 0; tries := 0; max_ms := 0;
	WHILE clock_timestamp() < deadline LOOP
		t0 := clock_timestamp();
		tries := tries + 1;
		BEGIN
			IF redis_try_lock(k) THEN
				got := got + 1;
				PERFORM redis_unlock(k);
			END IF;
		EXCEPTION WHEN OTHERS THEN
			IF NOT SQLSTATE = ANY (states) THEN states := states || SQLSTATE; END IF;
		END;
		max_ms := greatest(max_ms, (extract(epoch FROM clock_timestamp() - t0) * 1000)::int);
		PERFORM pg_sleep(0.05);
	END LOOP;
	sqlstates := (SELECT string_agg(s, ',' ORDER BY s) FROM unnest(states) s);
END $$;
EOF
}

sub lock_key { return $cluster->lock_key($_[0]) }

# The owner field of a lock's hash on the master serving its slot ('' when free).
sub owner_of { return $cluster->lock_owner($_[0]) }

# Entries in a lock's queue, on the master serving its slot.
sub queued
{
	my ($key) = @_;
	my $n = $cluster->master_for_lock($key)->cli('ZCARD', lock_key($key) . ':q');
	return $n =~ /^\d+$/ ? $n : -1;
}

# How many of the lock's hash, queue and waiter hash exist on a node (READONLY for a replica).
sub lock_keys_on
{
	my ($node, $key) = @_;
	my $k = lock_key($key);
	$node->cli('READONLY');
	my $n = $node->cli('EXISTS', $k, "$k:q", "$k:w");
	$node->cli('READWRITE');
	return $n;
}

sub psql_err
{
	my ($node, $sql) = @_;
	my ($out, $err) = ('', '');
	$node->psql('postgres', $sql, stdout => \$out, stderr => \$err, extra_params => [ '-v', 'VERBOSITY=verbose' ]);
	return ($out, $err);
}

# A background session on node; with \set VERBOSITY verbose so that errors carry their SQLSTATE.
sub session
{
	my ($node) = @_;
	my $s = $node->background_psql('postgres', on_error_stop => 0);
	$s->query_safe("\\set VERBOSITY verbose");
	return $s;
}

# A waiter: BEGIN and redis_wait_lock in a background session, not waited for (what it returns is
# read later with ->query).
sub start_waiter
{
	my ($node, $key, $select) = @_;
	my $w = session($node);
	$w->query_until(qr/waiting/, "\\echo waiting\nBEGIN; SELECT " . ($select // "redis_wait_lock('$key', NULL, '30 s')") . ";\n");
	return $w;
}

# try_for(key, seconds) started in a background session on node; finish_probe returns its result.
sub start_probe
{
	my ($node, $key, $seconds) = @_;
	my $p = $node->background_psql('postgres', on_error_stop => 0);
	$p->query_until(qr/probing/, "\\echo probing\nSELECT * FROM try_for('$key', $seconds);\n");
	return $p;
}

sub finish_probe
{
	my ($p) = @_;
	my $out = $p->query('SELECT 1');
	my $err = $p->{stderr};
	$p->quit;
	my ($got, $tries, $states, $max_ms) = $out =~ /^(\d+)\|(\d+)\|([^|\n]*)\|(\d+)\n1$/
	  or return { got => -1, tries => 0, sqlstates => "no result: $out $err", max_ms => -1 };
	return { got => $got, tries => $tries, sqlstates => $states, max_ms => $max_ms };
}

# exclusion_ok(probe result, whether the waiter acquired, name): the probe, run while a holder and
# then the waiter held the key, never got it. Skipped when the waiter failed (the key was then free
# for a moment, and that failure is reported already).
sub exclusion_ok
{
	my ($p, $waiter_acquired, $name) = @_;
	my $detail = " ($p->{tries} tries, errors: " . ($p->{sqlstates} || 'none') . ')';
  SKIP:
	{
		skip "the waiter did not acquire: $name$detail", 1 unless $waiter_acquired;
		is($p->{got}, 0, "$name$detail");
	}
}

# Whether a background session has printed a line or an error yet (without waiting).
sub has_output
{
	my ($s) = @_;
	$s->{run}->pump_nb;
	return $s->{stdout} =~ /\n/ || $s->{stderr} =~ /ERROR:/;
}

# --- settings --------------------------------------------------------------------------------------
{
	my $closed = RedisLockTest::free_port();
	my ($out, $err) = psql_err($b, "SET redislock.sentinels = '127.0.0.1:$closed'; SELECT redis_try_lock('cl:both');");
	like($err, qr/ERROR:  22023: (?=[^\n]*redislock\.cluster_nodes)(?=[^\n]*redislock\.sentinels)/,
		'redislock.cluster_nodes together with redislock.sentinels: 22023 at the first lock call, naming both settings');
}

# --- one transaction, a lock on each master, one seed ----------------------------------------------
{
	my @masters = $cluster->masters;
	my @keys = map { scalar $cluster->key_on_master($_, "cl:every$_") } 0 .. 2;
	my $list = join ',', map { "'$_'" } @keys;
	my $s = session($a);
	$s->query_safe('BEGIN');
	my @tokens = map { $s->query_safe("SELECT redis_wait_lock('$_')") } @keys;
	for my $i (0 .. 2)
	{
		like($masters[$i]->cli('HGET', lock_key($keys[$i]), 'owner'), qr/:\Q$a_port\E:/,
			"lock $keys[$i] is held on master $i (port $masters[$i]{port}), the one serving its slot, found from the one seed");
	}
	is($b->safe_psql('postgres', "SELECT string_agg(redis_try_lock(k)::text, ',' ORDER BY k) FROM unnest(ARRAY[$list]) k"),
		'false,false,false', 'redis_try_lock from the other cluster fails on each while held');
	# (the names "cl:every<i>-<n>" sort in the order of i)
	my $info = $b->safe_psql('postgres', "SELECT string_agg(concat_ws(':', i.held, i.holder LIKE '%:$a_port:%', i.fencing_token), ',' ORDER BY k COLLATE \"C\") "
		  . "FROM unnest(ARRAY[$list]) k, redis_lock_info(k) i");
	is($info, join(',', map { "t:t:$_" } @tokens),
		'redis_lock_info on each key, from the other cluster: held, by this session, with its token');
	$s->query_safe('COMMIT');
	ok(wait_until(sub { !grep { lock_keys_on($cluster->master_for_lock($_), $_) ne '0' } @keys }, 5),
		'COMMIT releases all three: their keys are gone from each master');
	ok(wait_until(sub { !grep { lock_keys_on($cluster->replica_of($cluster->master_for_lock($_)), $_) ne '0' } @keys }, 5),
		'... and from each master\'s replica');

	$s->query_safe('BEGIN');
	is($s->query_safe("SELECT array_length(redis_wait_locks(ARRAY[$list]), 1)"), '3', 'redis_wait_locks takes the three keys, on three masters, in one call');
	is($s->query_safe('SELECT redis_unlock_all()'), '3', 'redis_unlock_all releases the three');
	ok(wait_until(sub { !grep { lock_keys_on($cluster->master_for_lock($_), $_) ne '0' } @keys }, 5), '... and their keys are gone from each master');
	is($b->safe_psql('postgres', "SELECT string_agg(redis_try_lock(k)::text, ',' ORDER BY k) FROM unnest(ARRAY[$list]) k"),
		'true,true,true', '... and the other cluster can take each');
	$s->query_safe('COMMIT');

	# the cost: six locks, two on each master, cost three writes at COMMIT (one per master, without
	# waiting: redis_lock_stats counts a write sent without waiting as one round trip), and three round
	# trips for redis_unlock_all (this cluster's lease keeper renews nothing this young)
	my @six = map { my $m = $_; map { scalar $cluster->key_on_master($m, "cl:cost$m$_") } 1 .. 2 } 0 .. 2;
	my $six = join ',', map { "'$_'" } @six;
	my $trips = "SELECT round_trips FROM redis_lock_stats()";
	$s->query_safe("BEGIN; SELECT count(redis_wait_lock(k)) FROM unnest(ARRAY[$six]) k;");
	my $before = $s->query_safe($trips);
	$s->query_safe('COMMIT');
	is($s->query_safe($trips) - $before, 3, 'COMMIT releases six locks on three masters in three writes');
	ok(wait_until(sub { !grep { lock_keys_on($cluster->master_for_lock($_), $_) ne '0' } @six }, 5), '... and they are gone');
	$s->query_safe("BEGIN; SELECT count(redis_wait_lock(k)) FROM unnest(ARRAY[$six]) k;");
	$before = $s->query_safe($trips);
	is($s->query_safe('SELECT redis_unlock_all()'), '6', 'redis_unlock_all releases six locks on three masters');
	is($s->query_safe($trips) - $before, 3, '... in one round trip per master');
	$s->query_safe('COMMIT');
	$s->quit;
}

# --- first come, first served: a holder and three waiters on two clusters ---------------------------
{
	my $key = $cluster->key_on_master(1, 'cl:fifo');
	my $h = session($a);
	my $token_h = $h->query_safe("BEGIN; SELECT redis_wait_lock('$key');");
	my @waiters;
	for my $i (1 .. 3)
	{
		my $node = $i % 2 ? $b : $a;
		push @waiters, start_waiter($node, $key,
			"redis_wait_lock('$key', '30 s', '30 s') AS tok, (extract(epoch FROM clock_timestamp()) * 1e6)::bigint AS at; COMMIT");
		ok(wait_until(sub { queued($key) == $i }), "waiter $i (cluster " . ($i % 2 ? 'b' : 'a') . ") is queued");
	}
	$h->query_safe('COMMIT');
	my @got = map { [ $_->query('SELECT 1') =~ /^(\d+)\|(\d+)\n1$/ ] } @waiters;
	is(scalar(grep { @$_ == 2 } @got), 3, 'the three waiters acquire after the holder commits') or diag(join ' / ', map { $_->{stderr} } @waiters);
	my @tokens = map { $_->[0] // 0 } @got;
	my @at = map { $_->[1] // 0 } @got;
	ok($token_h < $tokens[0] && $tokens[0] < $tokens[1] && $tokens[1] < $tokens[2],
		"fencing tokens rise in arrival order ($token_h, @tokens)");
	ok($at[0] <= $at[1] && $at[1] <= $at[2], 'and the waiters acquired in arrival order');
	$_->quit for $h, @waiters;
}

# --- slot migration while a lock is held and waited for ---------------------------------------------
{
	my ($from, $to) = ($cluster->masters)[ 1, 2 ];
	my ($key, $slot) = $cluster->key_on_master(1, 'cl:mig');
	my $h = session($a);
	my $token_h = $h->query_safe("BEGIN; SELECT redis_wait_lock('$key');");    # the default 30 s lease
	my $w = start_waiter($b, $key);
	ok(wait_until(sub { queued($key) == 1 }), "whole migration: a waiter is queued on master 1 (slot $slot)");
	my $probe = start_probe($a, $key, 3);

	my $moved = $cluster->migrate_slot($slot, $from, $to);
	note("keys moved with slot $slot: $moved");
	is($cluster->master_for_lock($key)->port, $to->port, "slot $slot now on master 2 (port $to->{port})");
	like($to->cli('HGET', lock_key($key), 'owner'), qr/:\Q$a_port\E:/, 'the held lock moved with its slot: its owner hash is on the new master');
	is($b->safe_psql('postgres', "SELECT redis_try_lock('$key')"), 'f', 'after the migration the lock still excludes the other cluster');

	my $t0 = time;
	$h->query('COMMIT');
	is($h->{stderr}, '', 'the holder commits after its lock\'s slot moved');
	my $out = $w->query('SELECT 1');
	my $waited = time - $t0;
	my ($token_w) = $out =~ /^(\d+)\n1$/;
	ok(defined $token_w, 'the waiter, queued before the migration, acquires') or diag("$out / $w->{stderr}");
	cmp_ok($waited, '<', 5, sprintf('within seconds of the holder\'s COMMIT, not at the end of its lease (%.1f s)', $waited));
	cmp_ok($token_w // 0, '>', $token_h, 'with a greater fencing token');
	like($to->cli('HGET', lock_key($key), 'owner'), qr/:\Q$b_port\E:/, 'the waiter\'s lock is on the new master');
	my $p = finish_probe($probe);
	exclusion_ok($p, defined $token_w, 'a third session polling with redis_try_lock through the migration and the handoff never got in');
	cmp_ok($p->{tries}, '>=', 10, '... and it kept trying');
	$w->query('COMMIT');
	ok(wait_until(sub { $a->safe_psql('postgres', "SELECT redis_try_lock('$key')") eq 't' }, 5), 'the key is free again after the waiter commits');
	$_->quit for $h, $w;
}

# --- the same with the slot held half-migrated (ASK redirections) -----------------------------------
# What Redis 7.0 does meanwhile: the source (MIGRATING) serves a command whose keys it all has,
# answers ASK when it has none of them and TRYAGAIN when it has some; the target (IMPORTING) serves a
# command sent after ASKING when it has all its keys (a one-key command always), else TRYAGAIN. So a
# script whose keys are partly absent (a lock's queue once nobody waits) gets TRYAGAIN on both sides
# until the migration is finished, and a BLPOP parked on the source stays blocked (a grant pushed to
# the target through ASK does not wake it) until SETSLOT NODE ends it with MOVED. The holder and the
# waiter have command_timeout 5 s here: a TRYAGAIN is to be retried within it, and the slot is held
# half-migrated for 1.5 s across the holder's COMMIT.
{
	my ($from, $to) = ($cluster->masters)[ 1, 2 ];
	my ($key, $slot) = $cluster->key_on_master(1, 'cl:half');
	my $h = session($a);
	$h->query_safe("SET redislock.command_timeout = '5s'");
	my $token_h = $h->query_safe("BEGIN; SELECT redis_wait_lock('$key');");
	my $w = session($b);
	$w->query_safe("SET redislock.command_timeout = '5s'");
	$w->query_until(qr/waiting/, "\\echo waiting\nBEGIN; SELECT redis_wait_lock('$key', NULL, '30 s');\n");
	ok(wait_until(sub { queued($key) == 1 }), "half migration: a waiter is queued on master 1 (slot $slot)");
	my $probe = start_probe($a, $key, 4);

	$cluster->begin_migration($slot, $from, $to);
	my $moved = $cluster->move_keys($slot, $from, $to);
	cmp_ok($moved, '>=', 3, "the lock's keys are moved to master 2, the slot left MIGRATING/IMPORTING ($moved keys)");
	like($from->cli('HGET', lock_key($key), 'owner'), qr/^ASK $slot 127\.0\.0\.1:$to->{port}$/, 'the source answers ASK for them');

	# COMMIT sent without waiting for it: a release that meets TRYAGAIN may be retried within it
	my $t0 = time;
	$h->query_until(qr/committing/, "\\echo committing\nCOMMIT;\n");
	my $acquired_half = wait_until(sub { has_output($w) }, 1.5) && $w->{stdout} =~ /^\d+\n/;
	note(sprintf('the waiter %s while the slot was half-migrated (%.1f s after the COMMIT was sent)',
		$acquired_half ? 'acquired' : 'did not acquire', time - $t0));
	$cluster->finish_migration($slot, $from, $to);
	my $t_finished = time;
	my $out = $w->query('SELECT 1');
	my $waited = time - $t0;
	my ($token_w) = $out =~ /^(\d+)\n1$/;
	# a Redis round trip in the holder's session reads what its release answered, if still owed
	$h->query("SELECT held FROM redis_lock_info('$key')");
	is($h->{stderr}, '', 'the holder, which committed with its slot half-migrated, got no error nor warning: its release ran');
	ok(defined $token_w, 'the waiter acquires') or diag("$out / $w->{stderr}");
	cmp_ok($waited, '<', 4, sprintf('within seconds of the COMMIT (%.1f s; the migration was finished %.1f s after it)', $waited, $t_finished - $t0));
	cmp_ok($token_w // 0, '>', $token_h, 'with a greater fencing token');
	like($to->cli('HGET', lock_key($key), 'owner'), qr/:\Q$b_port\E:/, 'its owner hash is on the new master');
	my $p = finish_probe($probe);
	exclusion_ok($p, defined $token_w, 'a third session polling with redis_try_lock through the half migration never got in');
	like($p->{sqlstates}, qr/^((57P03|08\w\w\w)(,|$))*$/, '... its tries failed, if at all, with 57P03 or 08xxx (' . ($p->{sqlstates} || 'none') . ')');
	cmp_ok($p->{max_ms}, '<', 3000, "... each within its timeouts ($p->{max_ms} ms)");
	$w->query('COMMIT');
	ok(wait_until(sub { $a->safe_psql('postgres', "SELECT redis_try_lock('$key')") eq 't' }, 5), 'the key is free again after the waiter commits');
	$_->quit for $h, $w;
}

# --- CLUSTER FAILOVER of the master serving a held and awaited lock ---------------------------------
{
	my $old = ($cluster->masters)[2];
	my $replica = $cluster->replica_of($old);
	my $key = $cluster->key_on_master(2, 'cl:fo');
	my $kept = $cluster->key_on_master(2, 'cl:kept');
	my $h = session($a);
	my $token_h = $h->query_safe("BEGIN; SELECT redis_wait_lock('$key', '60 s');");
	my $w = start_waiter($b, $key, "redis_wait_lock('$key', '60 s', '60 s') AS tok");
	ok(wait_until(sub { queued($key) == 1 }), 'failover: a waiter on cluster b is queued');
	# a session lock with a 4 s lease, which only the lease keeper (following the cluster) can keep
	my $k = session($a);
	$k->query_safe("SELECT redis_session_lock('$kept', '4 s')");
	$cluster->wait_replicas_synced;
	my $probe = start_probe($b, $key, 3);

	my $t0 = time;
	$cluster->failover($replica);
	note(sprintf('CLUSTER FAILOVER done in %.1f s', time - $t0));
	is($cluster->master_for_lock($key)->port, $replica->port, "the replica (port $replica->{port}) now serves the lock's slot");
	like($replica->cli('HGET', lock_key($key), 'owner'), qr/:\Q$a_port\E:/, 'the held lock is on the new master');
	my $after = $cluster->key_on_master(2, 'cl:fo-after');
	my $back_after;
	for (1 .. 100)
	{
		my ($out) = psql_err($a, "SELECT redis_try_lock('$after')");
		if ($out eq 't') { $back_after = time - $t0; last; }
		usleep(100_000);
	}
	ok(defined $back_after, sprintf('new lock calls on that master work again (%.1f s after CLUSTER FAILOVER)', $back_after // -1));

	$h->query('COMMIT');
	is($h->{stderr}, '', 'the holder commits (a manual failover loses nothing)');
	my $out = $w->query('SELECT 1');
	my ($token_w) = $out =~ /^(\d+)\n1$/;
	ok(defined $token_w, 'the waiter acquires on the new master') or diag("$out / $w->{stderr}");
	cmp_ok($token_w // 0, '>', $token_h, 'its fencing token is greater than the holder\'s');
	like($replica->cli('HGET', lock_key($key), 'owner'), qr/:\Q$b_port\E:/, 'the waiter\'s lock is on the new master');
	my $p = finish_probe($probe);
	exclusion_ok($p, defined $token_w, 'a third session polling with redis_try_lock through the failover never got in');
	$w->query('COMMIT');

	my $s = session($b);
	$s->query_safe("BEGIN; SELECT redis_wait_lock('$after');");
	like($replica->cli('HGET', lock_key($after), 'owner'), qr/:\Q$b_port\E:/, 'a new lock is taken on the new master');
	$s->query_safe('COMMIT');
	$_->quit for $h, $w, $s;

	sleep 5 - (time - $t0) if time - $t0 < 5;
	is($b->safe_psql('postgres', "SELECT redis_try_lock('$kept')"), 'f',
		'the lease keeper renews a 4 s session lock on the new master: it is still held 5 s after the failover');
	$k->quit;
}

# --- kill -9 of a master: a lock acknowledged by the replica, and one the replica never had ----------
for my $replicas (1, 0)
{
	my $master = ($cluster->masters)[1];
	my $replica = $cluster->replica_of($master);
	my $key = $cluster->key_on_master(1, "cl:kill$replicas");
	my $h = session($a);
	$h->query_safe("SET redislock.wait_replicas = $replicas");
	$h->query_safe("BEGIN; SELECT redis_wait_lock('$key', '60 s');");
	my $w;
	if ($replicas == 1)
	{
		# the waiter keeps wait_replicas = 0: with one replica a master, the promoted one has none
		# until the killed node is back, and a wait_replicas = 1 waiter re-queueing there would fail
		$w = start_waiter($b, $key, "redis_wait_lock('$key', '60 s', '60 s') > 0 AS got");
		ok(wait_until(sub { queued($key) == 1 }), 'wait_replicas = 1: a waiter is queued before kill -9');
		$cluster->wait_replicas_synced;
	}
	else
	{
		# the lock never reached the replica: take it away there (keyed writes to a replica are
		# redirected, so FLUSHALL, with the replica writable for a moment), as if the master had
		# died before replicating it
		$cluster->wait_replicas_synced;
		$replica->cli('CONFIG', 'SET', 'replica-read-only', 'no');
		$replica->cli('FLUSHALL');
		$replica->cli('CONFIG', 'SET', 'replica-read-only', 'yes');
		is(lock_keys_on($replica, $key), '0', 'wait_replicas = 0: the replica does not have the lock');
	}
	my $t0 = time;
	my $new = $cluster->kill_master($master);
	note(sprintf('kill -9 of port %d: replica port %d promoted after %.1f s', $master->port, $new->port, time - $t0));
	if ($replicas == 1)
	{
		like($new->cli('HGET', lock_key($key), 'owner'), qr/:\Q$a_port\E:/, 'wait_replicas = 1: the lock survives kill -9 of its master, on the promoted replica');
		my $other = $cluster->key_on_master(1, 'cl:noreplica');
		my ($out, $err) = psql_err($b, "SET redislock.wait_replicas = 1; BEGIN; SELECT redis_wait_lock('$other', NULL, '5 s'); COMMIT;");
		like($err, qr/ERROR:  55P03: /, 'the promoted master has no replica yet: a wait_replicas = 1 acquisition on it fails (55P03)');
		is(owner_of($other), '', '... and nothing stays held');
		$cluster->restart_node($master);
		$cluster->wait_replicas_synced;    # the COMMIT's verify waits for one replica's acknowledgement
		$h->query('COMMIT');
		is($h->{stderr}, '', 'once the killed node is back as its replica, the holder (wait_replicas = 1) verifies its lock and commits');
		like($w->query('SELECT 1'), qr/^t\n1$/, 'the waiter, queued before kill -9, rode out the failover and acquires') or diag($w->{stderr});
		$w->query('COMMIT');
		$w->quit;
	}
	else
	{
		my $x = session($b);
		my $x_got = $x->query("BEGIN; SELECT redis_try_lock('$key');");
		note("another session's redis_try_lock on the promoted replica: $x_got $x->{stderr}");
		$h->query('COMMIT');
		if ($x_got eq 't')
		{
			like($h->{stderr}, qr/ERROR:  40001: /, 'wait_replicas = 0: the lock was lost with the master and another session took it: the holder\'s COMMIT fails (40001)');
		}
		else
		{
			like($h->{stderr}, qr/^$|ERROR:  40001: /, 'wait_replicas = 0: the holder\'s COMMIT succeeds or fails with 40001');
		}
		$x->query('COMMIT');
		$x->quit;
	}
	$h->quit;
	$cluster->restart_node($master) unless $master->alive;
	is($cluster->master_of($master)->port, $new->port, "the killed node (port $master->{port}) rejoins as a replica of the promoted one");
}

# --- the exclusion checker on both clusters, one key per master, through a slot migration -----------
{
	my @keys = map { scalar $cluster->key_on_master($_, "cl:check$_") } 0 .. 2;
	sections_prepare($a, $b);
	for my $node ($a, $b)
	{
		$node->safe_psql('postgres', join '', map {
			"DROP SCHEMA IF EXISTS chk$_ CASCADE; CREATE SCHEMA chk$_; CREATE TABLE chk$_.sections (LIKE public.sections);"
		} 0 .. 2);
	}
	# three checkers at once, one per key, each recording into its own schema's sections table
	my @clients = map {
		sections_start(nodes => [ $a, $b ], clients => 2, seconds => 9,
			settings => "SET search_path = chk$_, public;\n",
			lock_sql => "SELECT redis_wait_lock('$keys[$_]', '10 s', '20 s') AS tok \\gset");
	} 0 .. 2;
	sleep 3;    # traffic before the migration
	my ($from, $to) = ($cluster->masters)[ 1, 2 ];
	my $slot = $cluster->lock_slot($keys[1]);
	$cluster->begin_migration($slot, $from, $to);
	$cluster->move_keys($slot, $from, $to);
	sleep 1;    # held half-migrated under traffic
	$cluster->finish_migration($slot, $from, $to);
	my $t_moved = time;
	is($cluster->master_for_lock($keys[1])->port, $to->port, "the checker's key on master 1 migrated to master 2 under traffic");
	my $errors = join '', map { sections_finish($_) } @clients;
	note("errors met by the clients:\n" . join("\n", grep { defined } (split /\n/, $errors)[0 .. 9]));
	for my $i (0 .. 2)
	{
		$_->safe_psql('postgres', "TRUNCATE public.sections; INSERT INTO public.sections SELECT * FROM chk$i.sections") for $a, $b;
		my ($n, $overlaps, $disorder, $both) = sections_check($a, $b);
		my $what = $i == 1 ? "key $keys[$i] (migrated)" : "key $keys[$i] (master $i)";
		cmp_ok($n, '>=', 100, "$what: critical sections committed ($n)");
		is($both, 2, "$what: on both clusters");
		is($overlaps, 0, "$what: no two committed critical sections overlap");
		is($disorder, 0, "$what: fencing tokens rise in the order the sections ran");
	}
	my $after = 0;
	$after += $_->safe_psql('postgres', "SELECT count(*) FROM chk1.sections WHERE t_end IS NOT NULL AND extract(epoch FROM t_start) > $t_moved") for $a, $b;
	cmp_ok($after, '>', 0, "sections on the migrated key committed after its slot moved ($after)");
}

# --- lock calls while a master is down, before its replica is promoted ------------------------------
{
	my $master = ($cluster->masters)[2];
	my $replica = $cluster->replica_of($master);
	my $key = $cluster->key_on_master(2, 'cl:down');
	my $waited = $cluster->key_on_master(2, 'cl:down-wait');
	my $healthy = $cluster->key_on_master(0, 'cl:up');
	$master->stop;
	my $t0 = time;
	my $w = start_waiter($b, $waited, "redis_wait_lock('$waited', NULL, '15 s') > 0 AS got");
	my $probe_down = start_probe($a, $key, 6);
	my $probe_up = start_probe($a, $healthy, 6);
	$cluster->wait_promoted($replica);
	note(sprintf('kill -9 of port %d: replica promoted after %.1f s', $master->port, time - $t0));
	for ([ 'the dead master', $probe_down ], [ 'a healthy master (the cluster is down until the promotion)', $probe_up ])
	{
		my ($what, $probe) = @$_;
		my $p = finish_probe($probe);
		like($p->{sqlstates}, qr/^((57P03|08\w\w\w)(,|$))*$/, "tries on a key of $what fail with 57P03 or 08xxx, if at all (" . ($p->{sqlstates} || 'none') . ')');
		cmp_ok($p->{max_ms}, '<', 3000, "... each within the timeouts (longest $p->{max_ms} ms)");
		cmp_ok($p->{got}, '>', 0, "... and succeed once the replica is promoted ($p->{got} of $p->{tries})");
	}
	my $out = $w->query('SELECT 1');
	my $took = time - $t0;
	ok($out =~ /^t\n1$/ || $w->{stderr} =~ /ERROR:  (57P03|08\w\w\w): /,
		'a wait started while the master was down acquires after the promotion, or fails with 57P03 or 08xxx') or diag("$out / $w->{stderr}");
	cmp_ok($took, '<', 18, sprintf('... within its 15 s timeout (%.1f s)', $took));
	$w->query('COMMIT');
	$w->quit;
	$cluster->restart_node($master);
}

# --- a slot whose owner points in a loop: MOVED back and forth ---------------------------------------
{
	my ($owner, $other) = ($cluster->masters)[ 1, 2 ];
	# a slot with no keys (a master refuses to give away a slot it holds keys of)
	my ($key, $slot);
	for my $n (0 .. 99)
	{
		($key, $slot) = $cluster->key_on_master(1, "cl:loop$n");
		last if $owner->cli('CLUSTER', 'COUNTKEYSINSLOT', $slot) eq '0';
	}
	is($owner->cli('CLUSTER', 'SETSLOT', $slot, 'NODE', $other->id), 'OK', "slot $slot: its owner now says master 2 serves it, master 2 says master 1 does");
	like($other->cli('HGET', lock_key($key), 'owner'), qr/^MOVED $slot 127\.0\.0\.1:$owner->{port}$/, '(master 2 redirects to master 1)');
	like($owner->cli('HGET', lock_key($key), 'owner'), qr/^MOVED $slot 127\.0\.0\.1:$other->{port}$/, '(master 1 redirects to master 2)');
	my $t0 = time;
	my ($out, $err) = psql_err($a, "SELECT redis_try_lock('$key')");
	my $took = time - $t0;
	like($err, qr/ERROR:  (57P03|08\w\w\w): /, 'a lock call on that slot fails with 57P03 or 08xxx') or diag("out: $out");
	cmp_ok($took, '<', 4, sprintf('... within the timeouts, no endless redirection (%.1f s)', $took));
	is($owner->cli('CLUSTER', 'SETSLOT', $slot, 'NODE', $owner->id), 'OK', 'the owner takes its slot back');
	$cluster->wait_converged;
	ok(wait_until(sub { (psql_err($a, "SELECT redis_try_lock('$key')"))[0] eq 't' }, 5), 'and the key can be locked again');
}

note(sprintf('015 ran in %.0f s', time - $t_file));
done_testing();
