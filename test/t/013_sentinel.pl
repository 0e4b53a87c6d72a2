# Sentinel and replica acknowledgement, against a real master, two replicas and three Sentinels
# (redis-server --sentinel) on loopback, started once for the file:
# - discovery (redislock.host/port unused), a dead Sentinel skipped, an unknown master name and no
#   reachable Sentinel (08001, naming what was tried), Sentinel credentials refused (28P01, no password
#   printed);
# - SENTINEL FAILOVER with a holder and a waiter across two clusters: the holder verifies on the new
#   master and commits, the waiter re-queues and acquires with a greater token, new calls work again
#   within seconds, the lease keeper renews on the new master; the exclusion checker runs on both
#   clusters through the failover;
# - kill -9 of the master with a lock that did not reach the replicas (wait_replicas = 0): the COMMIT is
#   refused by the verify (40001); with wait_replicas = 1 the same lock survives, and a waiter rides
#   out the failover (the master unreachable until Sentinel promotes a replica) and acquires;
# - replicas stopped with wait_replicas = 1: the acquisition fails (55P03, how many acknowledged) and
#   nothing stays held; the waiter next in line gets the lock.
use strict;
use warnings;
use lib 'perl';
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(time usleep);
use RedisLockTest;
use RedisTopology qw(make_certs start_tls_redis start_sentinel_topology);
use CriticalSections;

my $topo = start_sentinel_topology(down_after_ms => 1000, failover_timeout_ms => 5000);
my $sentinels = $topo->sentinels_setting;
my $conf = "redislock.sentinels = '$sentinels'\nredislock.connect_timeout = '1s'\nredislock.command_timeout = '1s'\n"
  . "redislock.host = '192.0.2.1'\n";    # not used in Sentinel mode (TEST-NET-1: would time out)
my $a = new_node('sentinel_a', $topo->master, "shared_preload_libraries = 'redislock'\n$conf");    # keeper mode
my $b = new_node('sentinel_b', $topo->master, $conf);
$SIG{PIPE} = 'IGNORE';

sub owner_on
{
	my ($server, $key) = @_;
	return $server->cli('HGET', "{redislock:$key}", 'owner') // '';
}

sub psql_err
{
	my ($node, $sql) = @_;
	my ($out, $err) = ('', '');
	$node->psql('postgres', $sql, stdout => \$out, stderr => \$err, extra_params => [ '-v', 'VERBOSITY=verbose' ]);
	return ($out, $err);
}

# --- discovery ------------------------------------------------------------------------------------
{
	my $s = $a->background_psql('postgres', on_error_stop => 0);
	$s->query_safe("BEGIN; SELECT redis_wait_lock('sen:found');");
	like(owner_on($topo->master, 'sen:found'), qr/:\Q@{[$a->port]}\E:/, 'the lock is on the master that Sentinel names');
	$s->query_safe('COMMIT');
	$s->quit;

	my $closed = RedisLockTest::free_port();
	my ($out, $err) = psql_err($a, "SET redislock.sentinels = '127.0.0.1:$closed, $sentinels'; SELECT redis_try_lock('sen:skip');");
	is($out, 't', 'a Sentinel that cannot be reached is skipped') or diag($err);

	($out, $err) = psql_err($a, "SET redislock.sentinel_master = 'nosuch'; SELECT redis_try_lock('sen:x');");
	like($err, qr/08001: no Sentinel knows a Redis master named "nosuch"/, 'an unknown master name: 08001');
	like($err, qr/DETAIL:  Sentinel at 127\.0\.0\.1:\d+ knows no master of that name/, '... naming the Sentinels asked');

	my $closed2 = RedisLockTest::free_port();
	($out, $err) = psql_err($a, "SET redislock.sentinels = '127.0.0.1:$closed,127.0.0.1:$closed2'; SELECT redis_try_lock('sen:x');");
	like($err, qr/08001: could not find the Redis master "mymaster": no Sentinel answered \(tried 2\)/, 'no Sentinel reachable: 08001');
	like($err, qr/DETAIL:  could not connect to Redis at 127\.0\.0\.1:$closed: Connection refused; could not connect to Redis at 127\.0\.0\.1:$closed2/,
		'... naming each Sentinel tried');

	($out, $err) = psql_err($a, "LOAD 'redislock'; SET redislock.sentinels = 'no-port';");
	like($err, qr/invalid value for parameter "redislock.sentinels"/, 'a malformed Sentinel list is refused when set');

	# Sentinel's own ACL user
	$topo->sentinel_cli($_, 'ACL', 'SETUSER', 'locker', 'on', '>sentinel-secret', '+@all', '~*') for 0 .. 2;
	($out, $err) = psql_err($a, "SET redislock.sentinel_username = 'locker'; SET redislock.sentinel_password = 'sentinel-secret'; SELECT redis_try_lock('sen:auth');");
	is($out, 't', 'Sentinel credentials are used') or diag($err);
	($out, $err) = psql_err($a, "SET redislock.sentinel_username = 'locker'; SET redislock.sentinel_password = 'wrong-secret'; SELECT redis_try_lock('sen:auth');");
	like($err, qr/28P01: Sentinel at 127\.0\.0\.1:\d+ refused authentication/, 'Sentinel refusing the credentials: 28P01');
	unlike($err, qr/wrong-secret/, '... and the password is not printed');
}

# --- SENTINEL FAILOVER: holder, waiter, new calls, tokens --------------------------------------------
{
	my $old = $topo->master;
	my $h = $a->background_psql('postgres', on_error_stop => 0);
	my $token_h = $h->query_safe("BEGIN; SELECT redis_wait_lock('sen:fo', '60 s');");
	my $w = $b->background_psql('postgres', on_error_stop => 0);
	$w->query_until(qr/waiting/, "\\echo waiting\nBEGIN; SELECT redis_wait_lock('sen:fo', '60 s', '60 s') AS tok;\n");
	ok(wait_until(sub { ($old->cli('ZCARD', '{redislock:sen:fo}:q') // 0) == 1 }), 'a waiter on cluster b is queued');
	$topo->wait_replicas_synced;

	# a session lock with a 4 s lease, which only the lease keeper (following Sentinel too) can keep
	my $k = $a->background_psql('postgres', on_error_stop => 0);
	$k->query_safe("SELECT redis_session_lock('sen:kept', '4 s')");

	my $t0 = time;
	my $new = $topo->failover;
	isnt($new->{port}, $old->{port}, 'Sentinel promoted a replica');
	my $back_after;
	for (1 .. 100)
	{
		my ($out) = psql_err($a, "SELECT redis_try_lock('sen:after-fo')");
		if ($out eq 't') { $back_after = time - $t0; last; }
		usleep(100_000);
	}
	ok(defined $back_after, sprintf('new lock calls work again after the failover (%.1f s after SENTINEL FAILOVER)', $back_after // -1));
	like(owner_on($new, 'sen:fo'), qr/:\Q@{[$a->port]}\E:/, 'the held lock is on the new master');

	$h->query('COMMIT');
	is($h->{stderr}, '', 'the holder, whose connection broke in the failover, verifies on the new master and commits');
	my $out = $w->query('SELECT 1');
	my ($token_w) = $out =~ /^(\d+)\n1$/;
	ok(defined $token_w, 'the waiter re-queued on the new master and acquired') or diag("$out / $w->{stderr}");
	cmp_ok($token_w // 0, '>', $token_h, 'its fencing token is greater than the holder\'s');
	$w->query_safe('COMMIT');
	$h->quit;
	$w->quit;

	sleep 5 - (time - $t0) if time - $t0 < 5;
	is($b->safe_psql('postgres', "SELECT redis_try_lock('sen:kept')"), 'f',
		'the lease keeper renews a 4 s session lock on the new master: it is still held 5 s after the failover');
	$k->quit;
}

# --- the exclusion checker through a failover, on two clusters -------------------------------------
{
	sections_prepare($a, $b);
	my $clients = sections_start(nodes => [ $a, $b ], clients => 3, seconds => 12,
		lock_sql => "SELECT redis_wait_lock('sen:check', '10 s', '30 s') AS tok \\gset");
	sleep 3;    # traffic before the failover
	$topo->failover;
	my $errors = sections_finish($clients);
	note("errors met by the clients through the failover:\n" . join("\n", (split /\n/, $errors)[0 .. 9]));
	my ($n, $overlaps, $disorder, $both) = sections_check($a, $b);
	cmp_ok($n, '>=', 50, "critical sections committed through the failover ($n)");
	is($both, 2, 'on both clusters');
	is($overlaps, 0, 'no two committed critical sections overlap');
	is($disorder, 0, 'fencing tokens rise in the order the sections ran, across the failover');
}

# --- kill -9 of the master: a lock that never reached the replicas ----------------------------------
for my $replicas (0, 1)
{
	my $master = $topo->master;
	my $h = $a->background_psql('postgres', on_error_stop => 0);
	$h->query_safe("SET redislock.wait_replicas = $replicas");
	$h->query_safe("\\set VERBOSITY verbose");
	$h->query_safe("BEGIN; SELECT redis_wait_lock('sen:kill$replicas', '60 s');");
	$topo->wait_replicas_synced;
	if ($replicas == 0)
	{
		# make sure the lock did not reach the replicas: delete it there (a replica's own writes are
		# not propagated), as if the master had died before replicating it
		for my $r (grep { $_->{port} != $master->{port} } $topo->data_nodes)
		{
			$r->cli('CONFIG', 'SET', 'replica-read-only', 'no');
			$r->cli('DEL', '{redislock:sen:kill0}');
			$r->cli('CONFIG', 'SET', 'replica-read-only', 'yes');
		}
	}
	my $w;
	if ($replicas == 1)
	{
		$w = $b->background_psql('postgres', on_error_stop => 0);
		$w->query_until(qr/waiting/, "\\echo waiting\nSET redislock.wait_replicas = 1; BEGIN; SELECT redis_wait_lock('sen:kill1', '60 s', '60 s') > 0 AS got;\n");
		ok(wait_until(sub { ($master->cli('ZCARD', '{redislock:sen:kill1}:q') // 0) == 1 }), 'a waiter is queued before kill -9');
		$topo->wait_replicas_synced;
	}
	my ($old, $new) = $topo->kill_master;
	$h->query('COMMIT');
	if ($replicas == 0)
	{
		like($h->{stderr}, qr/ERROR:  40001: redis lock "sen:kill0" was lost during this transaction/,
			'wait_replicas = 0: a lock lost with the master fails the COMMIT (40001)');
	}
	else
	{
		is($h->{stderr}, '', 'wait_replicas = 1: the acknowledged lock survives kill -9 of the master, and the holder commits');
		like($w->query('SELECT 1'), qr/^t\n1$/, 'the waiter re-queues on the new master and acquires');
		$w->query_safe('COMMIT');
		$w->quit;
	}
	$h->quit;
	$old->start;    # it comes back as a replica of the new master
	$topo->wait_replicas_synced;
}

# --- a handoff to a waiter with wait_replicas = 1 while the replicas are frozen ------------------------
# The replicas stay connected (SIGSTOP) with their old acknowledgements: a WAIT that counted only the
# waiter's own writes (none, for a BLPOP served by the releaser's push) would pass at once.
{
	my $master = $topo->master;
	$topo->wait_replicas_synced;
	my $h = $a->background_psql('postgres', on_error_stop => 0);
	$h->query_safe("BEGIN; SELECT redis_wait_lock('sen:frozen', '30 s');");
	my $x = $b->background_psql('postgres', on_error_stop => 0);
	$x->query_until(qr/waiting/, "\\echo waiting\nSET redislock.wait_replicas = 1; BEGIN; SELECT redis_wait_lock('sen:frozen', '30 s', '20 s');\n");
	ok(wait_until(sub { ($master->cli('ZCARD', '{redislock:sen:frozen}:q') // 0) == 1 }), 'a waiter with wait_replicas = 1 queues');
	# the replicas acknowledge everything written so far (the waiter's queue entry included), then freeze
	$master->cli('WAIT', '2', '1000');
	$_->signal('STOP') for $topo->replicas;
	$h->query_safe('COMMIT');
	$x->query('SELECT 1');
	like($x->{stderr}, qr/"sen:frozen" was not acknowledged by enough replicas.*only 0 of 1/s,
		'a handoff the frozen replicas never received is not acknowledged: the waiter fails (55P03)');
	is(owner_on($master, 'sen:frozen'), '', 'and holds nothing');
	$_->signal('CONT') for $topo->replicas;
	$_->quit for $h, $x;
	$topo->wait_replicas_synced;
}

# --- replicas stopped with wait_replicas = 1 -----------------------------------------------------------
{
	my $master = $topo->master;
	$topo->stop_replicas;
	my $t0 = time;
	my ($out, $err) = psql_err($a, "SET redislock.wait_replicas = 1; BEGIN; SELECT redis_wait_lock('sen:norepl', '30 s', '5 s'); COMMIT;");
	like($err, qr/55P03: redis lock "sen:norepl" was not acknowledged by enough replicas.*only 0 of 1 replicas/s,
		'replicas down: the acquisition fails with 55P03, saying how many acknowledged');
	cmp_ok(time - $t0, '<', 4, 'within wait_replicas_timeout (and a little)');
	is(owner_on($master, 'sen:norepl'), '', 'nothing stays held');

	# a waiter queued behind a holder gets the lock when the holder's grant is not acknowledged
	my $h = $a->background_psql('postgres', on_error_stop => 0);
	$h->query_safe("BEGIN; SELECT redis_wait_lock('sen:next', '30 s');");    # wait_replicas = 0
	my $x = $a->background_psql('postgres', on_error_stop => 0);
	$x->query_until(qr/waiting/, "\\echo waiting\nSET redislock.wait_replicas = 1; BEGIN; SELECT redis_wait_lock('sen:next', '30 s', '20 s');\n");
	my $y = $b->background_psql('postgres', on_error_stop => 0);
	ok(wait_until(sub { ($master->cli('ZCARD', '{redislock:sen:next}:q') // 0) == 1 }), 'a waiter with wait_replicas = 1 queues');
	$y->query_until(qr/waiting/, "\\echo waiting\nBEGIN; SELECT redis_wait_lock('sen:next', '30 s', '20 s') > 0 AS got;\n");
	ok(wait_until(sub { ($master->cli('ZCARD', '{redislock:sen:next}:q') // 0) == 2 }), 'a second waiter queues behind it');
	$h->query_safe('COMMIT');
	$out = $x->query('SELECT 1');
	like($x->{stderr}, qr/was not acknowledged by enough replicas/, 'the first waiter is handed the lock, which no replica acknowledges: it fails');
	$out = $y->query('SELECT 2');
	like($out, qr/^t\n2$/, 'and the lock goes on to the next waiter');
	$y->query_safe('COMMIT');
	$_->quit for $h, $x, $y;
	$topo->start_replicas;
	$topo->wait_replicas_synced;
	($out, $err) = psql_err($a, "SET redislock.wait_replicas = 2; BEGIN; SELECT redis_wait_lock('sen:acked') > 0; COMMIT;");
	is($out, 't', 'with the replicas back, wait_replicas = 2 acquires') or diag($err);
}

done_testing();
