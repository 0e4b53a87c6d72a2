# The lease keeper (redislock in shared_preload_libraries): leases of live backends never lapse, a
# dead holder's lock frees within one lease, killing the keeper loses no lease, a lock the keeper
# cannot renew takes the lost-lock path; session locks survive COMMIT and ROLLBACK and go with
# redis_unlock, DISCARD ALL and session end; a lost session lock fails one commit with 55000 and is
# forgotten. redislock.max_locks is a hard cap that leaves PostgreSQL's lock capacity alone. The keeper
# runs on a hot standby too. Without preload, session locks refuse with a hint.
use strict;
use warnings;
use lib 'perl';
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(time sleep usleep);
use RedisLockTest;

my $redis = start_redis();
my $a = new_node('keeper', $redis,
	"shared_preload_libraries = 'redislock'\nrestart_after_crash = on\nredislock.command_timeout = '500ms'\nredislock.max_locks = 16\nautovacuum = off\n",
	allows_streaming => 1);
my $b = new_node('plain', $redis);
$SIG{PIPE} = 'IGNORE';

sub free_on_b { my ($key) = @_; return $b->safe_psql('postgres', "SELECT NOT held FROM redis_lock_info('$key')") eq 't'; }

is($a->safe_psql('postgres', 'SELECT redis_lock_mode()'), 'keeper', 'redis_lock_mode() says keeper');
is($b->safe_psql('postgres', 'SELECT redis_lock_mode()'), 'lease', 'and lease without preload');
ok($a->poll_query_until('postgres',
	"SELECT count(*) = 1 FROM pg_stat_activity WHERE backend_type = 'redislock lease keeper'"),
	'the keeper shows in pg_stat_activity');

# --- a 1-second lease held for 5 seconds keeps excluding others ------------------------------------
my $h = $a->background_psql('postgres', on_error_stop => 0);
$h->query_safe("BEGIN; SELECT redis_wait_lock('keep:short', '1 s');");
my $first_expiry = $h->query_safe("SELECT extract(epoch FROM expires_at) FROM redis_locks WHERE key = 'keep:short'");
my $excluded = 1;
for (1 .. 10)
{
	sleep 0.5;
	$excluded &&= $b->safe_psql('postgres', "SELECT redis_try_lock('keep:short')") eq 'f';
}
ok($excluded, 'a 1 s lease held for 5 s keeps excluding another cluster');
my $later_expiry = $h->query_safe("SELECT extract(epoch FROM expires_at) FROM redis_locks WHERE key = 'keep:short'");
cmp_ok($later_expiry, '>', $first_expiry + 3, 'redis_locks shows the renewed expiry');
$h->query("COMMIT");
is($h->{stderr}, '', 'and it commits cleanly');

# --- idle in transaction: kept while the session lives, released when the timeout ends it ----------
$h->query_safe("SET idle_in_transaction_session_timeout = '3s'; BEGIN; SELECT redis_wait_lock('keep:idle', '1 s');");
sleep 2;
ok(!free_on_b('keep:idle'), 'an idle-in-transaction session keeps its lock past its lease');
ok(wait_until(sub { free_on_b('keep:idle') }, 6), 'idle_in_transaction_session_timeout ends it and releases the lock');
eval { $h->quit };

# --- killing the keeper loses no lease ------------------------------------------------------------
$h = $a->background_psql('postgres', on_error_stop => 0);
$h->query_safe("BEGIN; SELECT redis_wait_lock('keep:keeper', '3 s');");
my $keeper = $a->safe_psql('postgres', "SELECT pid FROM pg_stat_activity WHERE backend_type = 'redislock lease keeper'");
$a->safe_psql('postgres', "SELECT pg_terminate_backend($keeper)");
$excluded = 1;
for (1 .. 12)
{
	sleep 0.5;
	$excluded &&= !free_on_b('keep:keeper');
}
ok($excluded, 'a 3 s lease held for 6 s survives the keeper being killed');
ok($a->poll_query_until('postgres',
	"SELECT count(*) = 1 FROM pg_stat_activity WHERE backend_type = 'redislock lease keeper' AND pid <> $keeper"),
	'the postmaster started a new keeper');
$h->query('COMMIT');
is($h->{stderr}, '', 'the holder commits');

# --- a lock taken while the keeper restarts is renewed by the next keeper ---------------------------
{
	my $old = $a->safe_psql('postgres', "SELECT pid FROM pg_stat_activity WHERE backend_type = 'redislock lease keeper'");
	$a->safe_psql('postgres', "SELECT pg_terminate_backend($old)");
	ok($a->poll_query_until('postgres', "SELECT redis_lock_mode() = 'lease'"),
		'while no keeper runs, redis_lock_mode() says lease');
	my $g = $a->background_psql('postgres', on_error_stop => 0);
	$g->query_safe("BEGIN; SELECT redis_wait_lock('keep:gap', '1 s');");
	my $held = 1;
	for (1 .. 8)
	{
		sleep 0.5;
		$held &&= !free_on_b('keep:gap');
	}
	ok($held, 'a 1 s lock taken while the keeper was restarting is held for 4 s (the new keeper renews it)');
	$g->query('COMMIT');
	is($g->{stderr}, '', 'and commits');
	$g->quit;
}

# --- Redis down during renewal: the lost-lock path --------------------------------------------------
$h->query_safe("BEGIN; SELECT redis_wait_lock('keep:down', '1 s');");
$redis->stop;
sleep 2;
$redis->start;
$h->query("\\set VERBOSITY sqlstate\nCOMMIT;");
like($h->{stderr}, qr/ERROR:  40001/, 'a lock the keeper could not renew before its lease ran out cannot commit');
$h->{stderr} = '';

# --- session locks ---------------------------------------------------------------------------------
my $tok = $h->query_safe("SELECT redis_session_lock('keep:session', '1 s')");
$h->query_safe('BEGIN; SELECT 1; COMMIT;');
ok(!free_on_b('keep:session'), 'a session lock survives COMMIT');
$h->query("BEGIN; SELECT 1; ROLLBACK;");
ok(!free_on_b('keep:session'), 'and ROLLBACK');
sleep 2;
ok(!free_on_b('keep:session'), 'and outlives its 1 s lease');
is($h->query_safe("SELECT redis_try_session_lock('keep:session')"), 't', 'it is re-entrant');
is($h->query_safe("SELECT hold_count FROM redis_locks WHERE key = 'keep:session'"), '2', 'with two holds');
$h->query_safe("BEGIN; SELECT redis_wait_lock('keep:session'); COMMIT;");
is($h->query_safe("SELECT hold_count FROM redis_locks WHERE key = 'keep:session'"), '2',
	'a transaction hold on the same key goes at commit, the session holds stay');
$h->query_safe("SELECT redis_unlock('keep:session')");
ok(!free_on_b('keep:session'), 'one redis_unlock leaves one hold');
$h->query_safe("SELECT redis_unlock('keep:session')");
ok(free_on_b('keep:session'), 'the second releases it');

$h->query_safe("SELECT redis_session_lock('keep:all1'), redis_try_session_lock('keep:all2')");
is($h->query_safe('SELECT redis_unlock_all()'), '2', 'redis_unlock_all releases session locks');
ok(free_on_b('keep:all1') && free_on_b('keep:all2'), 'both are free');

$h->query_safe("SELECT redis_session_lock('keep:discard')");
$h->query_safe('DISCARD ALL');
ok(free_on_b('keep:discard'), 'DISCARD ALL releases session locks');

$h->query_safe("SELECT redis_session_lock('keep:exit')");
$h->quit;
ok(wait_until(sub { free_on_b('keep:exit') }, 3), 'session end releases them');

# --- a SIGKILLed holder's lock is free within one lease -------------------------------------------
$h = $a->background_psql('postgres');
$h->query_safe("SELECT redis_session_lock('keep:killed', '2 s')");
my $pid = $h->query_safe('SELECT pg_backend_pid()');
my $t0 = time;
kill 'KILL', $pid;
ok(!free_on_b('keep:killed'), 'the killed holder\'s lock is still held at first');
ok(wait_until(sub { free_on_b('keep:killed') }, 6), 'it frees itself');
my $took = time - $t0;
ok($took < 4, sprintf('within about one 2 s lease (%.1f s)', $took));
eval { $h->quit };
$a->poll_query_until('postgres', 'SELECT true') or die 'no restart';

# --- a session pointed at another Redis is not the keeper's: its locks live for their lease ----------
my $other = start_redis();
my ($rc0, $out0, $err0) = $a->psql('postgres',
	"SET redislock.port = $other->{port}; SELECT redis_lock_mode(); BEGIN; SELECT redis_wait_lock('keep:other', '1 s') > 0; SELECT pg_sleep(1.5); COMMIT;",
	on_error_stop => 0);
like($out0, qr/^lease\n/, 'a session using another Redis is in lease mode');
is($err0, '', 'its lock, not renewed by the keeper on the wrong Redis, commits (nobody took it)');
($rc0, $out0, $err0) = $a->psql('postgres', "SET redislock.port = $other->{port}; SELECT redis_session_lock('keep:other')");
like($err0, qr/need the redislock lease keeper/, 'and it cannot take session locks');

# --- a lost session lock fails one commit with 55000, and the session goes on without it ----------
{
	my $s = $a->background_psql('postgres', on_error_stop => 0);
	$s->query_safe("SELECT redis_session_lock('lost:s', '1 s')");
	$redis->cli('DEL', '{redislock:lost:s}');    # Redis forgets it ...
	my $other = $b->background_psql('postgres');
	$other->query_safe("BEGIN; SELECT redis_wait_lock('lost:s', '60 s');");    # ... and someone else takes it
	sleep 1.5;    # the keeper's next renewal finds it lost
	$s->query("\\set VERBOSITY verbose\nSELECT 1;");
	like($s->{stderr}, qr/ERROR:  55000: redis session lock "lost:s" was lost/,
		'the next transaction to commit fails with 55000, naming the key');
	$s->{stderr} = '';
	$s->query("SELECT 2; SELECT count(*) FROM redis_locks;");
	is($s->{stderr}, '', 'the session then works normally');
	$other->query_safe('COMMIT');
	$other->quit;

	$s->query_safe("SELECT redis_session_lock('lost:u', '1 s')");
	$redis->cli('DEL', '{redislock:lost:u}');
	sleep 1.5;
	my $out = $s->query("SELECT redis_unlock('lost:u');");
	is($out, 'f', 'redis_unlock of a lost session lock returns false');
	like($s->{stderr}, qr/WARNING:  55000: redis lock "lost:u" had already been lost/, 'with a WARNING');
	unlike($s->{stderr}, qr/ERROR/, 'and no ERROR');
	$s->{stderr} = '';
	is($s->query("SELECT count(*) FROM redis_locks"), '0', 'it is forgotten');
	is($s->{stderr}, '', 'and the session works normally');
	$s->quit;
}

# --- several lost session locks fail one commit, not one each ----------------------------------------
{
	my $s = $a->background_psql('postgres', on_error_stop => 0);
	$s->query_safe("SELECT redis_session_lock('lost:m1', '1 s'), redis_session_lock('lost:m2', '1 s')");
	$redis->cli('DEL', '{redislock:lost:m1}');
	$redis->cli('DEL', '{redislock:lost:m2}');
	sleep 1.5;
	$s->query("SELECT 1;");
	like($s->{stderr}, qr/ERROR:  redis session lock "lost:m[12]" and 1 more were lost/, 'two lost session locks fail one commit, naming both');
	$s->{stderr} = '';
	$s->query("SELECT 2;");
	is($s->{stderr}, '', 'the next commit goes through');
	$s->quit;
}

# --- a session hold is refused on a lock the keeper does not renew -------------------------------
{
	my $other = start_redis();
	my $s = $a->background_psql('postgres', on_error_stop => 0);
	$s->query_safe("BEGIN; SET LOCAL redislock.port = $other->{port}; SELECT redis_wait_lock('mix:k', '1 s');");
	$s->query("RESET redislock.port; SELECT redis_session_lock('mix:k');");
	like($s->{stderr}, qr/ERROR:  session-level redis lock "mix:k" would not be renewed/,
		'a session hold on a lock taken on another Redis is refused');
	$s->query('ROLLBACK');
	$s->quit;
	$other->stop;
}

# --- a lease shorter than the keeper's rounds is still kept ------------------------------------------
{
	my $s = $a->background_psql('postgres', on_error_stop => 0);
	$s->query_safe("SELECT redis_session_lock('keep:tiny', '50 ms')");
	# ask Redis itself, every 20 ms for 2 s, whether the lease is still running
	my $alive = q{local t = redis.call("TIME") local e = tonumber(redis.call("HGET", KEYS[1], "expires")) or 0 }
	  . q{if e > t[1] * 1000 + math.floor(t[2] / 1000) then return 1 end return 0};
	my $lapses = 0;
	for (1 .. 100)
	{
		$lapses++ if $redis->cli('EVAL', $alive, '1', '{redislock:keep:tiny}') ne '1';
		usleep(20_000);
	}
	is($lapses, 0, 'a 50 ms session lease is kept for 2 s: Redis never saw it run out');
	$s->query('SELECT 1');
	is($s->{stderr}, '', 'and the session commits');
	$s->quit;
}

# --- who holds and who waits, server-wide; lock waits in the log -----------------------------------
{
	my $h = $a->background_psql('postgres', on_error_stop => 0);
	my $hpid = $h->query_safe('SELECT pg_backend_pid()');
	$h->query_safe("BEGIN; SELECT redis_wait_lock('act:k', '30 s');");
	my $w = $a->background_psql('postgres', on_error_stop => 0);
	my $wpid = $w->query_safe('SELECT pg_backend_pid()');
	$w->query_until(qr/waiting/, "SET redislock.log_lock_waits = on;\n\\echo waiting\nBEGIN; SELECT redis_wait_lock('act:k', '30 s', '30 s');\n");
	my $bw = $b->background_psql('postgres', on_error_stop => 0);
	$bw->query_until(qr/waiting/, "\\echo waiting\nBEGIN; SELECT redis_wait_lock('act:k', '30 s', '30 s');\n");
	ok($a->poll_query_until('postgres',
		"SELECT count(*) = 2 FROM redis_lock_activity WHERE key = 'act:k'"), 'redis_lock_activity lists the holder and the waiter of this server');
	is($a->safe_psql('postgres',
		"SELECT string_agg(format('%s %s %s %s %s', pid = $hpid, mode, scope, granted, fencing_token IS NOT NULL), ',' ORDER BY granted DESC) FROM redis_lock_activity WHERE key = 'act:k'"),
		't exclusive transaction t t,f exclusive transaction f f', 'with mode, scope, granted and token');
	is($a->safe_psql('postgres', "SELECT redis_blocking_pids($wpid)"), "{$hpid}", 'redis_blocking_pids names the holder of what the waiter waits for');
	is($a->safe_psql('postgres', "SELECT redis_blocking_pids($hpid)"), '{}', 'and nothing for a backend that does not wait');
	sleep 1.5;
	$h->query_safe('COMMIT');
	my ($got) = (split /\n/, $w->query_safe("SELECT 'got it'"))[-1];
	is($got, 'got it', 'the waiter on this server gets the lock');
	$w->query_safe('COMMIT');
	$bw->query_safe('COMMIT');
	my $log = slurp_file($a->logfile);
	like($log, qr/LOG:  process $wpid still waiting for redis lock "act:k" after \d+ ms\n.*DETAIL:  Held by [^\n]*:$hpid:/s,
		'redislock.log_lock_waits logs a wait past a second, naming the holder');
	like($log, qr/LOG:  process $wpid acquired redis lock "act:k" after \d+ ms/, 'and when it ends');
	# another cluster's holder: the waiter here is listed, the holder is not ours to name
	my $bh = $b->background_psql('postgres');
	$bh->query_safe("BEGIN; SELECT redis_wait_lock('act:remote', '30 s');");
	$w->query_until(qr/waiting/, "\\echo waiting\nBEGIN; SELECT redis_wait_lock('act:remote', '30 s', '30 s');\n");
	ok($a->poll_query_until('postgres', "SELECT count(*) = 1 FROM redis_lock_activity WHERE key = 'act:remote' AND NOT granted"),
		'a wait for a lock held on another cluster is listed');
	is($a->safe_psql('postgres', "SELECT redis_blocking_pids($wpid)"), '{}', 'with no blocking pid on this server');
	$bh->query_safe('COMMIT');
	$w->query_safe('COMMIT');
	$_->quit for $h, $w, $bw, $bh;
	my ($rc, $out, $err) = $b->psql('postgres', "\\set VERBOSITY verbose\nSELECT * FROM redis_lock_activity");
	like($err, qr/ERROR:  55000: the server-wide view of redis locks needs the redislock lease keeper/, 'without preload: 55000 with a hint');
}

# --- server-wide counters against a known sequence of calls ----------------------------------------
{
	$a->safe_psql('postgres', 'SELECT redis_lock_stats_reset()');
	my $s = $a->background_psql('postgres', on_error_stop => 0);
	$s->query_safe("SELECT redis_try_lock('st:1'), redis_try_lock('st:2'), redis_wait_lock('st:3')");    # 3 immediate
	my $h = $b->background_psql('postgres');
	$h->query_safe("BEGIN; SELECT redis_wait_lock('st:busy', '30 s');");
	$s->query("SELECT redis_try_lock('st:busy')");    # not taken: no acquisition
	$s->query("SELECT redis_wait_lock('st:busy', NULL, '300 ms')");    # a wait that times out
	$s->query_until(qr/waiting/, "\\echo waiting\nSELECT redis_wait_lock('st:busy', NULL, '30 s');\n");    # a wait that gets it
	sleep 0.5;
	$h->query_safe('COMMIT');
	$s->{stderr} = '';
	$s->query_safe("SELECT 1");
	$h->quit;
	is($a->safe_psql('postgres',
		'SELECT format($$%s %s %s %s %s %s$$, acquisitions, immediate, waits, timeouts, cancels, deadlocks) FROM redis_lock_stats'),
		'4 3 2 1 0 0', 'acquisitions 4, immediate 3, waits 2, timeouts 1, no cancel, no deadlock');
	is($a->safe_psql('postgres',
		'SELECT wait_time_ms >= 600 AND max_wait_ms >= 300 AND round_trips > 0 AND stats_reset > now() - interval $$1 minute$$ FROM redis_lock_stats'),
		't', 'wait time, the longest wait, round trips and the time of the reset');
	$a->safe_psql('postgres', 'CREATE ROLE stats_reader LOGIN');
	my ($rc, $out, $err) = $a->psql('postgres', "SELECT redis_lock_stats_reset()", extra_params => [ '-U', 'stats_reader' ]);
	like($err, qr/permission denied for function redis_lock_stats_reset/, 'resetting is not for everyone');
	$s->quit;
	($rc, $out, $err) = $b->psql('postgres', "\\set VERBOSITY verbose\nSELECT * FROM redis_lock_stats");
	like($err, qr/ERROR:  55000: redis lock statistics need the redislock lease keeper/, 'without preload: 55000');
}

# --- redislock.max_locks is a hard cap, in memory of its own ---------------------------------------
{
	$a->safe_psql('postgres', q{
		CREATE FUNCTION advisory_capacity() RETURNS int LANGUAGE plpgsql AS $$
		DECLARE n int := 0;
		BEGIN
		  BEGIN
		    LOOP PERFORM pg_advisory_xact_lock(n); n := n + 1; END LOOP;
		  EXCEPTION WHEN out_of_memory THEN RETURN n;
		  END;
		END $$;
		CREATE ROLE ordinary LOGIN;});
	$a->restart;
	my $before = $a->safe_psql('postgres', 'SELECT advisory_capacity()');
	$a->restart;
	my ($rc1, $out1, $err1) = $a->psql('postgres',
		"\\set VERBOSITY sqlstate\nSELECT count(*) FROM generate_series(1, 16) i WHERE redis_try_lock('cap:' || i);",
		extra_params => [ '-U', 'ordinary' ]);
	is($out1, '16', 'an ordinary user holds redislock.max_locks = 16 locks');
	my ($rc2, $out2, $err2) = $a->psql('postgres',
		"\\set VERBOSITY sqlstate\nSELECT count(*) FROM generate_series(1, 2000) i WHERE redis_try_lock('burst:' || i);",
		extra_params => [ '-U', 'ordinary' ]);
	like($err2, qr/ERROR:  53200/, 'a burst beyond max_locks fails with 53200');
	my $after = $a->safe_psql('postgres', 'SELECT advisory_capacity()');
	# (a few locks of other processes come and go: the registry's growth would cost hundreds)
	cmp_ok($after, '>=', $before - 20, "the burst leaves PostgreSQL's lock capacity as it was ($before, then $after advisory locks)");
}

# --- the keeper runs on a hot standby, and redis_lock_mode() says keeper only while it runs -------
{
	$a->backup('for_standby');
	my $standby = PostgreSQL::Test::Cluster->new('standby');
	$standby->init_from_backup($a, 'for_standby', has_streaming => 1);
	$standby->start;
	ok($standby->poll_query_until('postgres',
		"SELECT count(*) = 1 FROM pg_stat_activity WHERE backend_type = 'redislock lease keeper'"),
		'a lease keeper runs on the hot standby');
	is($standby->safe_psql('postgres', 'SELECT redis_lock_mode()'), 'keeper', 'redis_lock_mode() there says keeper');
	my $s = $standby->background_psql('postgres');
	$s->query_safe("SELECT redis_session_lock('standby:leader', '1 s')");
	my $kept = 1;
	for (1 .. 6)
	{
		sleep 0.5;
		$kept &&= !free_on_b('standby:leader');
	}
	ok($kept, 'a 1 s session lock taken on the standby is held for 3 s');
	$s->quit;
	$standby->stop;
}

# --- without preload --------------------------------------------------------------------------------
my ($rc, $out, $err) = $b->psql('postgres', "\\set VERBOSITY verbose\nSELECT redis_session_lock('keep:nopreload')");
like($err, qr/ERROR:  55000: session-level redis locks need the redislock lease keeper.*HINT:  Add redislock to shared_preload_libraries/s,
	'without preload, session locks refuse with a hint');

done_testing();
