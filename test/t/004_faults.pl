# Faults injected into real processes: a waiter killed without cleanup, a holder stopped past its
# lease, a wake-up connection killed, and Redis refusing (out of memory, read-only replica, wrong
# password, ACL). Each must keep exclusion, end in a clear error, and recover.
use strict;
use warnings;
use lib 'perl';
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(time usleep);
use RedisLockTest;

my $redis = start_redis();
my $a = new_node('fa', $redis, "restart_after_crash = on\nredislock.command_timeout = '1s'\n");
my $b = new_node('fb', $redis, "redislock.command_timeout = '1s'\n");
$SIG{PIPE} = 'IGNORE';

sub queued { my ($key) = @_; return $redis->cli('ZCARD', "{redislock:$key}:q") // 0; }

# --- a waiter SIGKILLed (crash restart of its cluster) never blocks the next for long -------------
{
	my $holder = $b->background_psql('postgres');
	$holder->query_safe("BEGIN; SELECT redis_wait_lock('f:deadwaiter');");
	my $doomed = $a->background_psql('postgres');
	$doomed->query_until(qr/waiting/, "\\echo waiting\nSELECT redis_wait_lock('f:deadwaiter', '3 s');\n");
	ok(wait_until(sub { queued('f:deadwaiter') == 1 }), 'a waiter on cluster a is queued');
	my $next = $b->background_psql('postgres');
	$next->query_until(qr/waiting/, "\\echo waiting\nBEGIN; SELECT redis_wait_lock('f:deadwaiter', NULL, '30 s');\n");
	ok(wait_until(sub { queued('f:deadwaiter') == 2 }), 'a second waiter on cluster b queues behind it');
	my $pid = $a->safe_psql('postgres', "SELECT pid FROM pg_stat_activity WHERE query LIKE '%f:deadwaiter%' AND pid <> pg_backend_pid()");
	kill 'KILL', $pid;
	my $t0 = time;
	$holder->query_safe('COMMIT');
	my ($out) = (split /\n/, $next->query_safe("SELECT redis_fencing_token('f:deadwaiter') IS NOT NULL"))[-1];
	my $took = time - $t0;
	is($out, 't', 'the waiter behind the dead one gets the lock');
	ok($took < 8, sprintf('within the documented bound: heartbeat lapse 3 s, or the dead waiter\'s 3 s lease (%.1f s)', $took));
	$next->quit;
	$holder->quit;
	eval { $doomed->quit };
	$a->poll_query_until('postgres', 'SELECT true') or die 'cluster a did not restart';
}

# --- a holder stopped past its lease cannot commit; the new holder's token is greater -------------
{
	my $h = $a->background_psql('postgres', on_error_stop => 0);
	my $t1 = $h->query_safe("BEGIN; SELECT redis_wait_lock('f:stopped', '1 s');");
	my $hpid = $h->query_safe('SELECT pg_backend_pid()');
	kill 'STOP', $hpid;
	my $t2 = $b->safe_psql('postgres', "SELECT redis_wait_lock('f:stopped', '10 s', '5 s')");
	ok($t2 > $t1, 'another backend takes the key once the stopped holder\'s lease ran out, with a greater token');
	kill 'CONT', $hpid;
	$h->query("\\set VERBOSITY sqlstate\nCOMMIT;");
	like($h->{stderr}, qr/ERROR:  40001/, 'the stopped holder\'s COMMIT fails with 40001');
	$h->quit;
}

# --- the connection that carries a wake-up is killed: the waiter re-checks and still acquires ------
{
	my $h = $a->background_psql('postgres');
	$h->query_safe("BEGIN; SELECT redis_wait_lock('f:wakeup');");
	my $w = $b->background_psql('postgres');
	$w->query_until(qr/waiting/, "\\echo waiting\nBEGIN; SELECT redis_wait_lock('f:wakeup', NULL, '20 s');\n");
	ok(wait_until(sub { queued('f:wakeup') == 1 }), 'a waiter is queued');
	my $killed = 0;
	ok(wait_until(sub {
		for (split /\n/, $redis->cli('CLIENT', 'LIST'))
		{
			next unless /\bid=(\d+)\b.*\bcmd=blpop\b/;
			$redis->cli('CLIENT', 'KILL', 'ID', $1);
			$killed++;
		}
		return $killed > 0;
	}), 'its BLPOP connection is killed');
	$h->query_safe('COMMIT');
	my ($out) = (split /\n/, $w->query_safe("SELECT redis_fencing_token('f:wakeup') IS NOT NULL"))[-1];
	is($out, 't', 'the waiter still acquires after losing its wake-up connection');
	$w->quit;
	$h->quit;
}

# --- Redis restarted empty under a holder: its commit fails once someone else took the key; tokens grow
{
	my $h = $a->background_psql('postgres', on_error_stop => 0);
	my $t1 = $h->query_safe("BEGIN; SELECT redis_wait_lock('f:restart', '60 s');");
	$redis->stop;
	$redis->start;
	my $t2 = $b->safe_psql('postgres', "SELECT redis_wait_lock('f:restart', '60 s', '5 s')");
	ok($t2 > $t1, 'after a restart without persistence another backend takes the key, with a greater token');
	$h->query("\\set VERBOSITY sqlstate\nCOMMIT;");
	like($h->{stderr}, qr/ERROR:  40001/, 'the holder that Redis forgot cannot commit (40001)');
	$h->{stderr} = '';
	$h->query_safe("BEGIN; SELECT redis_wait_lock('f:restart2', '60 s');");
	$h->query_safe('COMMIT');
	is($h->{stderr}, '', 'a lock taken on the new connection commits without a word');
	$h->quit;
}

# --- Redis refuses: clear errors with a SQLSTATE and a hint; recovery once fixed ----------------
sub try_lock_error
{
	my ($node, $key) = @_;
	my ($rc, $out, $err) = $node->psql('postgres', "\\set VERBOSITY verbose\nSELECT redis_try_lock('$key')");
	return $err;
}

$redis->cli('CONFIG', 'SET', 'maxmemory', '1');
$redis->cli('CONFIG', 'SET', 'maxmemory-policy', 'noeviction');
like(try_lock_error($a, 'f:oom'), qr/ERROR:  53200: Redis at .* is out of memory.*HINT:  Raise Redis's maxmemory/s,
	'maxmemory reached: 53200 with a hint');
$redis->cli('CONFIG', 'SET', 'maxmemory', '0');
is($a->safe_psql('postgres', "SELECT redis_try_lock('f:oom')"), 't', 'recovers when memory is back');

my $other = start_redis();
$redis->cli('REPLICAOF', '127.0.0.1', $other->{port});
ok(wait_until(sub { ($redis->cli('ROLE') // '') =~ /^slave/ }), 'Redis is now a replica');
like(try_lock_error($a, 'f:ro'), qr/ERROR:  25006: Redis at .* is a read-only replica.*HINT:  Point redislock/s,
	'a read-only replica: 25006 with a hint');
$redis->cli('REPLICAOF', 'NO', 'ONE');
$redis->cli('SCRIPT', 'FLUSH');
is($a->safe_psql('postgres', "SELECT redis_try_lock('f:ro')"), 't', 'recovers when it is a master again');

$redis->cli('CONFIG', 'SET', 'requirepass', 'sesame');
$redis->{auth} = 'sesame';
like(try_lock_error($a, 'f:auth'), qr/ERROR:  28P01: Redis at .* refused authentication.*HINT:  Check redislock.username and redislock.password/s,
	'a password Redis requires but we lack: 28P01 with a hint');
my ($rc, $out, $err) = $a->psql('postgres', "SET redislock.password = 'wrong'; SELECT redis_try_lock('f:auth')");
unlike($err, qr/wrong/, 'the password never appears in the error');
like($err, qr/refused authentication/, 'a wrong password is refused');
is($a->safe_psql('postgres', "SET redislock.password = 'sesame'; SELECT redis_try_lock('f:auth')"), 't',
	'the right password works');
$redis->cli('ACL', 'SETUSER', 'locker', 'on', '>pw', '~*', '+@all', '-evalsha', '-eval');
($rc, $out, $err) = $a->psql('postgres', "\\set VERBOSITY verbose\nSET redislock.password = 'sesame'; SET redislock.username = 'locker'; SET redislock.password = 'pw'; SELECT redis_try_lock('f:acl')");
like($err, qr/ERROR:  42501: Redis at .* denied permission.*HINT:  Give the Redis user .* ACL SETUSER <user> ~\{redislock:\* /s, 'an ACL that denies EVALSHA: 42501 with a hint');
$redis->cli('CONFIG', 'SET', 'requirepass', '');
delete $redis->{auth};

done_testing();
