# Shared locks, semaphores and deadlock detection across sessions and servers:
# - deadlocks of two and three sessions, across two PostgreSQL clusters, and the mixed cycle of a redis
#   lock and a row lock, each ending in exactly one 40P01 within deadlock_timeout + 1 s, the others going on;
# - a wait that is no deadlock is not reported; deadlock_timeout = 0 never looks;
# - one release grants consecutive shared waiters together; session-level shared locks (keeper mode);
# - a semaphore permit of a SIGKILLed holder comes free within its lease;
# - readers under shared locks and writers under exclusive ones keep an invariant that the same run
#   without the locks breaks.
use strict;
use warnings;
use lib 'perl';
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(time usleep);
use RedisLockTest;
use IPC::Run;

my $redis = start_redis();
my $conf = "shared_preload_libraries = 'redislock'\nredislock.deadlock_timeout = '1s'\nautovacuum = off\nrestart_after_crash = on\n";
my $a = new_node('dl_a', $redis, $conf);
my $b = new_node('dl_b', $redis, $conf);
$SIG{PIPE} = 'IGNORE';

sub session
{
	my ($node) = @_;
	my $s = $node->background_psql('postgres', on_error_stop => 0);
	$s->query_safe('\set VERBOSITY verbose');
	return $s;
}

sub queued { my ($key) = @_; return $redis->cli('ZCARD', "{redislock:$key}:q") // 0; }

# start(session, sql): send sql without waiting for it
sub start { my ($s, $sql) = @_; $s->query_until(qr/started/, "\\echo started\n$sql\n"); }

# finish(session): the output of what start() sent, and its errors
sub finish
{
	my ($s) = @_;
	$s->{stderr} = '';
	my $out = $s->query('SELECT 1');
	return ($out, $s->{stderr});
}

# a cycle of n sessions: session i holds key i and then waits for key i+1 (mod n)
sub cycle
{
	my ($name, @nodes) = @_;
	my $n = scalar @nodes;
	my @s = map { session($_) } @nodes;
	$s[$_]->query_safe("BEGIN; SELECT redis_wait_lock('$name:$_');") for 0 .. $n - 1;
	my $t0 = time;
	for my $i (0 .. $n - 1)
	{
		my $next = ($i + 1) % $n;
		# (committing at once, so that the chain behind it moves on)
		start($s[$i], "SELECT redis_wait_lock('$name:$next', NULL, '20 s') > 0 AS got; COMMIT;");
		usleep(100_000);
	}
	my @results = map { [ finish($_) ] } @s;
	my $took = time - $t0;
	my @failed = grep { $results[$_][1] =~ /40P01/ } 0 .. $n - 1;
	$s[$_]->query('ROLLBACK') for @failed;
	is(scalar @failed, 1, "$name: exactly one of $n sessions fails with 40P01");
	cmp_ok($took, '<', 1 + 1 + 0.1 * $n + 1.5, sprintf("$name: within deadlock_timeout + 1 s of the cycle closing (%.1f s in all)", $took));
	like($results[ $failed[0] // 0 ][1], qr/ERROR:  40P01: deadlock detected\nDETAIL:  Process \d+ on .* waits for redis lock "$name:\d" \(exclusive\); blocked by process \d+ on /,
		"$name: the detail names each process and the key it waits for") if @failed;
	my $others_ok = 1;
	for my $i (grep { $_ != ($failed[0] // -1) } 0 .. $n - 1)
	{
		$others_ok &&= $results[$i][0] =~ /^t$/m;
	}
	ok($others_ok, "$name: the others go on and acquire");
	$_->quit for @s;
}

cycle('dl2', $a, $a);
cycle('dl3', $a, $a, $a);
cycle('dlx', $a, $b);

# --- the mixed cycle: a redis lock and a row lock --------------------------------------------------
{
	$a->safe_psql('postgres', 'CREATE TABLE seats (id int PRIMARY KEY, holder text); INSERT INTO seats VALUES (42, NULL)');
	my $x = session($a);
	my $y = session($a);
	$x->query_safe("BEGIN; UPDATE seats SET holder = 'x' WHERE id = 42;");
	$y->query_safe("BEGIN; SELECT redis_wait_lock('dlmix:seat');");
	start($y, "UPDATE seats SET holder = 'y' WHERE id = 42;");    # waits for x's row lock
	usleep(100_000);
	my $t0 = time;
	start($x, "SELECT redis_wait_lock('dlmix:seat', NULL, '20 s');");    # waits for y's redis lock
	my ($xout, $xerr) = finish($x);
	my $took = time - $t0;
	like($xerr, qr/ERROR:  40P01: deadlock detected.*waits for redis lock "dlmix:seat".*waits for a PostgreSQL lock; blocked \(directly or through others\) by process/s,
		'mixed cycle: the redis waiter fails with 40P01, naming the row-lock wait');
	cmp_ok($took, '<', 2.5, sprintf('within deadlock_timeout + 1 s (%.1f s)', $took));
	$x->query('ROLLBACK');
	my ($yout, $yerr) = finish($y);
	unlike($yerr, qr/ERROR/, 'the other one gets the row lock and goes on');
	$y->query('COMMIT');
	$_->quit for $x, $y;
}

# --- no deadlock, no report; deadlock_timeout = 0 never looks --------------------------------------
{
	my $h = session($a);
	$h->query_safe("BEGIN; SELECT redis_wait_lock('dlno:k');");
	my $w = session($b);
	start($w, "SELECT redis_wait_lock('dlno:k', NULL, '20 s') > 0 AS got;");
	sleep 3;
	$h->query_safe('COMMIT');
	my ($out, $err) = finish($w);
	unlike($err, qr/40P01/, 'a long wait that is no cycle is not reported');
	like($out, qr/t/, 'and acquires when the holder commits');
	$_->quit for $h, $w;

	my @s = (session($a), session($a));
	$_->query_safe("SET redislock.deadlock_timeout = 0") for @s;
	$s[0]->query_safe("BEGIN; SELECT redis_wait_lock('dloff:0');");
	$s[1]->query_safe("BEGIN; SELECT redis_wait_lock('dloff:1');");
	start($s[0], "SELECT redis_wait_lock('dloff:1', NULL, '2500 ms');");
	start($s[1], "SELECT redis_wait_lock('dloff:0', NULL, '3 s');");
	my @r = map { [ finish($_) ] } @s;
	ok(!grep({ $_->[1] =~ /40P01/ } @r), 'deadlock_timeout = 0: no deadlock reported');
	like($r[0][1], qr/55P03/, '... the cycle ends only by the lock timeout');
	$_->query('ROLLBACK') for @s;
	$_->quit for @s;
}

# --- one release grants consecutive shared waiters together ------------------------------------------
{
	my $x = session($a);
	$x->query_safe("BEGIN; SELECT redis_wait_lock('sh:group');");
	my @r = map { session($_) } ($a, $b, $a);
	start($_, "BEGIN; SELECT redis_wait_lock_shared('sh:group', NULL, '10 s') > 0 AS got;") for @r;
	ok(wait_until(sub { queued('sh:group') == 3 }), 'three shared waiters queue behind an exclusive holder');
	$x->query_safe('COMMIT');
	ok(wait_until(sub { ($a->safe_psql('postgres', "SELECT holders FROM redis_lock_info('sh:group')")) == 3 }, 2),
		'one release grants all three shared waiters');
	like((finish($_))[0], qr/t/, 'each shared waiter returns with the lock') for @r;
	$_->query('COMMIT') for @r;
	$_->quit for $x, @r;
}

# --- session-level shared locks (keeper mode) ----------------------------------------------------------
{
	my $s = session($a);
	my $t = session($b);
	$s->query_safe("SELECT redis_session_lock_shared('sh:session', '1 s')");
	$t->query_safe("SELECT redis_session_lock_shared('sh:session', '1 s')");
	sleep 2;
	is($a->safe_psql('postgres', "SELECT holders FROM redis_lock_info('sh:session')"), '2', 'two session shared locks outlive their 1 s lease (the keeper renews them)');
	is($a->safe_psql('postgres', "SELECT redis_try_lock('sh:session')"), 'f', 'an exclusive request is refused meanwhile');
	is($s->query_safe("SELECT redis_unlock_shared('sh:session')"), 't', 'redis_unlock_shared releases a session shared hold');
	is($t->query_safe("SELECT redis_try_session_lock('sh:session')"), 't', 'the other backend may now take it exclusive too (its own shared hold does not block it)');
	$t->query_safe("SELECT redis_unlock_all()");
	$_->quit for $s, $t;
}

# --- a semaphore permit of a SIGKILLed holder comes free within its lease ------------------------------
{
	my $k = $b->background_psql('postgres', on_error_stop => 0);
	$k->query_safe("BEGIN; SELECT redis_wait_semaphore('sem:kill', 1, '2 s');");
	my $pid = $k->query_safe('SELECT pg_backend_pid()');
	kill 'KILL', $pid;
	my $t0 = time;
	my $got = $a->safe_psql('postgres', "SELECT redis_wait_semaphore('sem:kill', 1, NULL, '10 s') > 0");
	is($got, 't', 'a semaphore permit held by a SIGKILLed backend is taken again');
	cmp_ok(time - $t0, '<', 4, 'within its 2 s lease (and a heartbeat)');
	eval { $k->quit };
	ok($b->poll_query_until('postgres', 'SELECT 1', '1'), 'the cluster of the killed holder restarts');
}

# --- readers under shared locks, writers under exclusive ones: an invariant that needs the lock --------
# A writer changes a and then b in two transactions (the pair is inconsistent in between); a reader
# checks a = b. Session locks, so that the lock spans the writer's two transactions.
sub readers_and_writers
{
	my ($with_lock) = @_;
	$a->safe_psql('postgres', 'DROP TABLE IF EXISTS pair, observations; CREATE TABLE pair (a int, b int); INSERT INTO pair VALUES (0, 0); CREATE TABLE observations (consistent boolean)');
	my $dir = PostgreSQL::Test::Utils::tempdir();
	my ($xl, $xu, $sl, $su) = $with_lock
	  ? ("SELECT redis_session_lock('rw:pair') > 0;", "SELECT redis_unlock('rw:pair');",
		"SELECT redis_session_lock_shared('rw:pair') > 0;", "SELECT redis_unlock_shared('rw:pair');")
	  : ('SELECT 1;', 'SELECT 1;', 'SELECT 1;', 'SELECT 1;');
	open my $w, '>', "$dir/writer.sql" or die;
	print $w "$xl\nUPDATE pair SET a = a + 1;\nSELECT pg_sleep(0.003);\nUPDATE pair SET b = b + 1;\n$xu\n";
	close $w;
	open my $r, '>', "$dir/reader.sql" or die;
	print $r "$sl\nINSERT INTO observations SELECT a = b FROM pair;\nSELECT pg_sleep(0.002);\n$su\n";
	close $r;
	my ($out, $err) = ('', '');
	IPC::Run::run([ 'pgbench', '-n', '-c', '6', '-j', '6', '-T', '3', '-f', "$dir/writer.sql\@1", '-f', "$dir/reader.sql\@3",
			'-h', $a->host, '-p', $a->port, 'postgres' ], '>', \$out, '2>', \$err);
	note($err) if $err =~ /error|abort/i;
	return split /\|/, $a->safe_psql('postgres',
		'SELECT count(*), count(*) FILTER (WHERE NOT consistent), (SELECT a FROM pair) FROM observations');
}
my ($reads, $broken, $writes) = readers_and_writers(1);
cmp_ok($reads, '>', 50, "readers under shared locks ran ($reads reads, $writes writes)");
cmp_ok($writes, '>', 10, 'and so did writers under exclusive ones');
is($broken, 0, 'no reader saw a half-written pair');
($reads, $broken) = readers_and_writers(0);
cmp_ok($broken, '>', 0, "without the locks the same run sees half-written pairs ($broken of $reads)");

# --- the scripts, with redis-cli: modes meet leases that ran out ---------------------------------------
{
	my $lua = "$ENV{TESTDIR}/lua";
	my $k = '{redislock:modes:k}';
	my $eval = sub {
		my ($script, @args) = @_;
		my $r = `redis-cli -p $redis->{port} --eval $lua/$script.lua '$k' '$k:q' '$k:w' , @args 2>&1`;
		chomp $r;
		return $r;
	};
	my ($ok, $token) = split /\n/, $eval->('acquire', 'h:1:1:a:1', 200, 'try', 3000, 'x', 0);
	is($ok, '1', 'an exclusive hold with a 200 ms lease');
	usleep(300_000);
	like($eval->('acquire', 'h:1:2:b:1', 30000, 'try', 3000, 's', 0), qr/^1\n/,
		'after its lease ran out, another backend takes the key shared');
	is($eval->('verify', 'h:1:1:a:1', $token, 30000), '0',
		'the exclusive holder whose lease ran out can no longer prove its lock (its COMMIT fails)');
	is($eval->('release', 'h:1:1:a:1'), '0', 'and its release finds nothing of its own');
	# a waiter that leaves lets the shared waiters behind it go at once
	is($eval->('acquire', 'h:1:3:c:1', 30000, 'wait', 3000, 'x', 0) =~ /^0/ ? 1 : 0, 1, 'an exclusive waiter queues behind the shared holder');
	is($eval->('acquire', 'h:1:4:d:1', 30000, 'wait', 3000, 's', 0) =~ /^0/ ? 1 : 0, 1, 'a shared waiter queues behind it (no writer starvation)');
	$eval->('release', 'h:1:3:c:1');
	is($redis->cli('HEXISTS', "$k:s", 'h:1:4:d:1'), '1', 'when the exclusive waiter leaves, the shared waiter behind it is granted at once');
	is($redis->cli('LLEN', "$k:g:h:1:4:d:1"), '1', '... and woken by its grant');
}

# --- the seed's seat reservation, with readers under shared locks ------------------------------------
# 10 reservations of one seat (exclusive, as the seed scenario) run with 20 readers that look at the
# seat under a shared lock of the same key: exactly one reservation succeeds, and no reader ever sees a
# holder other than the one that won.
{
	my $scenarios = $ENV{REDISLOCK_SCENARIOS};
	$a->safe_psql('postgres', "\\i $scenarios/schema.sql");
	$a->safe_psql('postgres', 'CALL scenario_reset(); CREATE TABLE seat_reads (holder int)');
	my $dir = PostgreSQL::Test::Utils::tempdir();
	open my $w, '>', "$dir/reserve.sql" or die;
	print $w "SELECT reserve_seat(7, 42, :client_id);\n";
	close $w;
	open my $r, '>', "$dir/read.sql" or die;
	print $r "BEGIN;\nSELECT redis_wait_lock_shared('concert:7:seat:42', '30 s') > 0;\n"
	  . "INSERT INTO seat_reads SELECT reserved_by FROM seat WHERE concert_id = 7 AND seat_no = 42;\nCOMMIT;\n";
	close $r;
	my @runs;
	push @runs, IPC::Run::start([ 'pgbench', '-n', '-c', '10', '-j', '10', '-t', '1', '-f', "$dir/reserve.sql",
			'-h', $a->host, '-p', $a->port, 'postgres' ], '>', \my $o1, '2>', \my $e1);
	push @runs, IPC::Run::start([ 'pgbench', '-n', '-c', '20', '-j', '10', '-t', '5', '-f', "$dir/read.sql",
			'-h', $a->host, '-p', $a->port, 'postgres' ], '>', \my $o2, '2>', \my $e2);
	$_->finish for @runs;
	my ($ok, $winner) = split /\|/, $a->safe_psql('postgres',
		'SELECT count(*) FILTER (WHERE ok), (SELECT reserved_by FROM seat WHERE concert_id = 7 AND seat_no = 42) FROM reservation_log');
	is($ok, 1, 'seat reservation with readers under shared locks: exactly 1 of 10 succeeds');
	my ($reads, $others) = split /\|/, $a->safe_psql('postgres',
		"SELECT count(*), count(*) FILTER (WHERE holder IS NOT NULL AND holder <> $winner) FROM seat_reads");
	is($reads, 100, 'all 100 reads ran');
	is($others, 0, 'no reader saw a holder other than the winner');
}

done_testing();
