# The lock's safety against the network and against a Redis that is not set up for it: a release
# delayed past command_timeout cannot delete a later lock of the same backend; a wait whose reconnect
# failed leaves the queue (and gives on a grant) once Redis can be reached; a commit that cannot prove
# its lock fails (40001); a first-contact failure is one message; ACL denials, inside a script or not,
# are 42501 with a rule that works; an evicting Redis is named; redislock.verify_at_commit catches a lock
# that vanished under a live connection; a cancelled redis_unlock leaves nothing to re-enter.
# Faults come from TcpProxy (a real relay that delays, drops or refuses) and from real redis-servers.
use strict;
use warnings;
use lib 'perl';
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(time usleep);
use FakeRedis;
use RedisLockTest;
use TcpProxy;

my $redis = start_redis();
my $node = new_node('safety', $redis, "redislock.command_timeout = '1s'\nredislock.connect_timeout = '1s'\n");
$SIG{PIPE} = 'IGNORE';

sub session
{
	my ($port) = @_;
	my $s = $node->background_psql('postgres', on_error_stop => 0);
	$s->query_safe("SET redislock.port = $port") if $port;
	return $s;
}
sub queued { my ($key) = @_; return $redis->cli('ZCARD', "{redislock:$key}:q") // 0; }
sub try_elsewhere { my ($key) = @_; return $node->safe_psql('postgres', "SELECT redis_try_lock('$key')"); }

# --- 1. a release delayed in the network cannot delete a later lock of the same backend ----------
for my $sync ('on', 'off')
{
	my $key = "late:$sync";
	my $proxy = TcpProxy->start($redis->{port});
	my $x = session($proxy->{port});
	$x->query_safe("SET redislock.synchronous_release = $sync");
	$x->query_safe("SELECT redis_try_lock('late:warm-$sync')");    # the release script is known
	$x->query_safe("BEGIN; SELECT redis_wait_lock('$key', '30 s');");
	$proxy->pause;    # what X sends on this connection from now on is held in the network
	$x->query('COMMIT');
	if ($sync eq 'on')
	{
		like($x->{stderr}, qr/did not answer within 1000 ms/, "sync $sync: the COMMIT's release is not answered in time (WARNING)");
	}
	else
	{
		# the next call meets the owed answer of the delayed release, and fails after command_timeout
		$x->query("SELECT redis_try_lock('late:probe-$sync')");
		like($x->{stderr}, qr/did not answer within 1000 ms/, "sync $sync: the next call fails behind the delayed release");
	}
	$x->{stderr} = '';
	# the same backend takes the key again, on a new connection
	$x->query("BEGIN; SELECT redis_wait_lock('$key', '30 s', '5 s');");
	is($x->{stderr}, '', "sync $sync: the backend takes the key again on a new connection");
	$proxy->resume;    # the old release reaches Redis now
	usleep(300_000);
	is(try_elsewhere($key), 'f', "sync $sync: the delayed release did not free the new lock: nobody else gets in");
	$x->query('COMMIT');
	is($x->{stderr}, '', "sync $sync: and the new holder commits");
	$x->quit;
	$proxy->stop;
}

# --- 4. a wait whose reconnect fails leaves the queue, and gives on a grant, once Redis is back ----
{
	my $proxy = TcpProxy->start($redis->{port});
	my $h = session();
	$h->query_safe("BEGIN; SELECT redis_wait_lock('ghost:k', '30 s');");
	my $x = session($proxy->{port});
	$x->query_until(qr/waiting/, "\\echo waiting\nSELECT redis_wait_lock('ghost:k', '10 s', '30 s');\n");
	ok(wait_until(sub { queued('ghost:k') == 1 }), 'a waiter reaching Redis through a proxy is queued');
	my $w = session();
	$w->query_until(qr/waiting/, "\\echo waiting\nBEGIN; SELECT redis_wait_lock('ghost:k', '10 s', '30 s');\n");
	ok(wait_until(sub { queued('ghost:k') == 2 }), 'a second waiter queues behind it');
	$proxy->stop;    # the first waiter's connection breaks, and its reconnect is refused
	$x->query('SELECT 1');
	like($x->{stderr}, qr/(could not connect to|lost connection to) Redis/, 'the first waiter fails: its connection broke and cannot be made again');
	unlike($x->{stderr}, qr/WARNING/, 'with one message: its ERROR');
	$h->query_safe('COMMIT');    # the lock goes to the abandoned wait, whose heartbeat is still fresh
	$proxy->restart;
	my $t0 = time;
	$x->{stderr} = '';
	$x->query("SELECT redis_try_lock('ghost:other')");    # its next Redis command undoes the wait
	my ($out) = (split /\n/, $w->query_safe("SELECT redis_fencing_token('ghost:k') IS NOT NULL"))[-1];
	my $took = time - $t0;
	is($out, 't', 'the second waiter gets the lock');
	ok($took < 3, sprintf('as soon as the abandoned wait could reach Redis, not after its 10 s lease (%.1f s)', $took));
	$w->query_safe('COMMIT');
	$_->quit for $x, $w, $h;
	$proxy->stop;
}

# --- 5. a commit that cannot prove its lock fails closed -------------------------------------------
{
	my $proxy = TcpProxy->start($redis->{port});
	my $x = session($proxy->{port});
	$x->query_safe("BEGIN; SELECT redis_wait_lock('closed:k', '30 s');");
	$proxy->stop;    # Redis is unreachable from this backend only
	$x->query("\\set VERBOSITY verbose\nCOMMIT;");
	like($x->{stderr}, qr/ERROR:  40001: could not confirm redis lock "closed:k" before commit.*DETAIL:  The lock could not be checked in Redis/s,
		'a lock whose connection broke and that cannot be checked fails the commit (40001), saying why');
	$x->quit;
	$proxy->stop;
	$redis->cli('DEL', '{redislock:closed:k}');
}

# --- 8. a first-contact failure is one message ----------------------------------------------------
sub one_message
{
	my ($name, $setup, $call, $error) = @_;
	my ($rc, $out, $err) = $node->psql('postgres', "$setup\n\\set VERBOSITY terse\n$call;", on_error_stop => 0);
	like($err, $error, "$name: $call fails");
	unlike($err, qr/WARNING|queue/, "$name: $call says nothing more");
}
my $closed = RedisLockTest::free_port();
my $auth = start_redis('--requirepass', 'sesame');
$redis->cli('ACL', 'SETUSER', 'noeval', 'on', '>pw', '~*', '+@all', '-evalsha', '-eval');
my $moved = FakeRedis->start("-MOVED 12739 127.0.0.1:1\r\n");
for my $call ("SELECT redis_try_lock('first:k')", "SELECT redis_wait_lock('first:k', NULL, '2 s')")
{
	one_message('refused', "SET redislock.port = $closed;", $call, qr/could not connect/);
	one_message('NOAUTH', "SET redislock.port = $auth->{port};", $call, qr/refused authentication/);
	one_message('NOPERM', "SET redislock.username = 'noeval'; SET redislock.password = 'pw';", $call, qr/denied permission/);
	one_message('MOVED', "SET redislock.port = $moved->{port};", $call, qr/returned an error/);
	# a stalled Redis, on a connection made before it stalled
	my $s = session();
	$s->query_safe("SELECT redis_try_lock('first:warm')");
	$redis->signal('STOP');
	$s->query("$call;");
	$redis->signal('CONT');
	like($s->{stderr}, qr/did not answer within 1000 ms/, "stalled: $call fails");
	unlike($s->{stderr}, qr/WARNING|queue/, "stalled: $call says nothing more");
	$s->quit;
}
$moved->stop;

# --- 7. ACL denials are 42501, inside a script or not, and README's ACL rule works ---------------
$redis->cli('ACL', 'SETUSER', 'nohset', 'on', '>pw', '~{redislock:*', '-@all', '+evalsha', '+eval', '+blpop', '+info', '+time', '+hmget');
my ($rc, $out, $err) = $node->psql('postgres',
	"SET redislock.username = 'nohset'; SET redislock.password = 'pw';\n\\set VERBOSITY verbose\nSELECT redis_try_lock('acl:k');");
like($err, qr/ERROR:  42501: Redis at .* denied permission.*DETAIL:  Redis answered: .*script.*HINT:  .*ACL SETUSER <user> ~\{redislock:\* -\@all \+evalsha/s,
	'a command denied inside a script is 42501, with the ACL rule that works in the hint');

open my $readme, '<', "$ENV{TESTDIR}/README.md" or die "README.md: $!";
my ($acl_line) = grep { /^ACL SETUSER redislock / } <$readme>;
close $readme;
ok($acl_line, "README gives an ACL SETUSER line");
chomp $acl_line;
my @acl = split ' ', $acl_line;
is($redis->cli(@acl), 'OK', "README's ACL line is accepted by Redis");
my ($pw) = map { substr($_, 1) } grep { /^>/ } @acl;
my $as_acl = "SET redislock.username = 'redislock'; SET redislock.password = '$pw';";
is($node->safe_psql('postgres', "$as_acl BEGIN; SELECT redis_try_lock('acl:readme'); SELECT held FROM redis_lock_info('acl:readme'); COMMIT;"),
	"t\nt", "a lock cycle works as README's ACL user");
my $acl_h = session();
$acl_h->query_safe("$as_acl BEGIN; SELECT redis_wait_lock('acl:wait');");
my $acl_w = session();
$acl_w->query_until(qr/waiting/, "$as_acl\n\\echo waiting\nSELECT redis_wait_lock('acl:wait', NULL, '10 s') > 0;\n");
ok(wait_until(sub { queued('acl:wait') == 1 }), "a wait works as README's ACL user");
usleep(1_500_000);    # past a heartbeat: the waiter's re-check runs as that user too
# a wait that times out is undone (the release script's branch for a non-owner) as that user
my ($rc2, $out2, $err2) = $node->psql('postgres', "$as_acl SELECT redis_wait_lock('acl:wait', NULL, '300 ms');");
like($err2, qr/could not obtain redis lock "acl:wait" within 300 ms/, "a wait that times out, as README's ACL user, just times out");
unlike($err2, qr/denied|WARNING/, '... with nothing denied');
$acl_h->query_safe('COMMIT');
my ($got) = (split /\n/, $acl_w->query_safe("SELECT 'handed over'"))[-1];
is($got, 'handed over', "and the handoff reaches it");
is($acl_w->{stderr}, '', 'without a word');
$_->quit for $acl_h, $acl_w;
($rc2, $out2, $err2) = $node->psql('postgres', "$as_acl SET redislock.wait_replicas = 1; SET redislock.wait_replicas_timeout = '50ms'; SELECT redis_try_lock('acl:wait-replicas');");
like($err2, qr/only 0 of 1 replicas/, "WAIT is allowed to README's ACL user (no replica here: 0 acknowledged)");

# --- an evicting Redis is named once per connection -----------------------------------------------
my $lru = start_redis('--maxmemory-policy', 'allkeys-lru');
($rc, $out, $err) = $node->psql('postgres', "SET redislock.port = $lru->{port}; SELECT redis_try_lock('ev:1'); SELECT redis_try_lock('ev:2');");
like($err, qr/WARNING:  Redis at 127\.0\.0\.1:$lru->{port} may evict redis locks: its maxmemory-policy is allkeys-lru.*HINT:  Set maxmemory-policy noeviction/s,
	'a Redis whose maxmemory-policy may evict lock keys gives a WARNING naming it');
is(scalar(() = $err =~ /may evict/g), 1, 'once per connection');
($rc, $out, $err) = $node->psql('postgres', "SELECT redis_try_lock('ev:3')");
is($err, '', 'noeviction: no WARNING');

# --- redislock.verify_at_commit: a lock that vanished under a live connection ---------------------
for my $verify ('off', 'on')
{
	($rc, $out, $err) = $node->psql('postgres',
		"SET redislock.verify_at_commit = $verify;\nBEGIN;\nSELECT redis_wait_lock('vac:$verify', '60 s') > 0;\n\\! redis-cli -p $redis->{port} FLUSHALL >/dev/null\nCOMMIT;\n",
		on_error_stop => 0);
	if ($verify eq 'off')
	{
		unlike($err, qr/ERROR/, 'verify_at_commit off: a lock flushed from Redis under an intact connection is not noticed (as documented)');
	}
	else
	{
		like($err, qr/ERROR:  redis lock "vac:on" was lost during this transaction/, 'verify_at_commit on: the commit fails (40001)');
	}
}

# --- 9. a cancelled redis_unlock leaves no hold-less entry to re-enter ----------------------------
{
	my $x = session();
	$x->query_safe("SELECT redis_try_lock('reent:warm')");
	$x->query_safe("BEGIN; SELECT redis_wait_lock('reent:k', '60 s'); SAVEPOINT s;");
	$redis->signal('STOP');
	$x->query("SELECT redis_unlock('reent:k');");
	like($x->{stderr}, qr/did not answer/, 'redis_unlock against a stalled Redis fails');
	$x->query('ROLLBACK TO s');
	$redis->signal('CONT');
	$x->{stderr} = '';
	$x->query("SELECT redis_wait_lock('reent:k', '60 s', '5 s') > 0");
	is($x->{stderr}, '', 'the key is taken again afterwards');
	is(try_elsewhere('reent:k'), 'f', 'and really held in Redis (not re-entered on a stale local entry)');
	$x->query('COMMIT');
	$x->quit;
}

# --- a redis_unlock that fails still gives the lock up: its release is owed, not lost --------------
{
	my $proxy = TcpProxy->start($redis->{port});
	my $x = session($proxy->{port});
	$x->query_safe("SELECT redis_try_lock('owe:warm')");
	$x->query_safe("BEGIN; SELECT redis_wait_lock('owe:a', '1 h'); SAVEPOINT s; SELECT redis_wait_lock('owe:b', '1 h');");
	$proxy->pause;    # from here on, what this backend sends is held in the network
	# the ROLLBACK TO sends b's release without waiting: its answer is owed when the unlock comes
	$x->query_safe("ROLLBACK TO s;");
	$x->query("SELECT redis_unlock('owe:a');");
	like($x->{stderr}, qr/did not answer/, 'redis_unlock fails behind an answer that does not come');
	$x->query('ROLLBACK');
	$proxy->resume;
	$x->query("SELECT redis_try_lock('owe:next')");    # the next command runs what is still owed
	ok(wait_until(sub { try_elsewhere('owe:a') eq 't' }, 3),
		'the lock whose redis_unlock failed is free once its backend reaches Redis again');
	$x->quit;
	$proxy->stop;
}

# --- a redis_unlock error caught by an exception block: the transaction cannot commit --------------
{
	my $x = session();
	$x->query_safe("SELECT redis_try_lock('catch:warm')");
	$x->query_safe("BEGIN; SELECT redis_wait_lock('catch:k', '1 h');");
	$redis->signal('STOP');
	$x->query("DO \$\$ BEGIN PERFORM redis_unlock('catch:k'); EXCEPTION WHEN OTHERS THEN RAISE NOTICE 'caught: %', SQLERRM; END \$\$;");
	$redis->signal('CONT');
	like($x->{stderr}, qr/NOTICE:  caught: .*did not answer/, 'the failed redis_unlock is caught');
	$x->{stderr} = '';
	$x->query("\\set VERBOSITY verbose\nCOMMIT;");
	like($x->{stderr}, qr/ERROR:  40001: could not confirm redis lock "catch:k" before commit/,
		'the commit fails: it cannot be shown that the lock was held until it was given up');
	$x->quit;
}

# --- a release that meets BUSY (Redis running a long script) did not run: it runs again -------------
{
	my $x = session();
	$x->query_safe("SELECT redis_try_lock('busy:warm')");
	$x->query_safe("BEGIN; SELECT redis_wait_lock('busy:k', '1 h');");
	$redis->cli('CONFIG', 'SET', 'busy-reply-threshold', '100');
	my $pid = fork() // die;
	if ($pid == 0)
	{
		# a script that keeps Redis busy for 2 s
		exec('redis-cli', '-p', $redis->{port}, 'EVAL',
			"local t = redis.call('TIME') local e = t[1] * 1000000 + t[2] + 2000000 "
			  . "while true do t = redis.call('TIME') if t[1] * 1000000 + t[2] > e then break end end return 1", '0');
	}
	usleep(300_000);
	$x->query('COMMIT');    # the release meets BUSY
	waitpid($pid, 0);
	$redis->cli('CONFIG', 'SET', 'busy-reply-threshold', '5000');
	$x->{stderr} = '';
	$x->query("SELECT redis_try_lock('busy:next')");
	is(try_elsewhere('busy:k'), 't', 'a release answered BUSY runs again at the next command');
	unlike($x->{stderr}, qr/could not release/, 'without a WARNING that it could not');
	$x->quit;
}

# --- 1.1: redis_force_unlock breaks a lock held on another cluster; redis_extend_lock keeps one ----
{
	my $other = new_node('other', $redis, "redislock.verify_at_commit = on\n");
	my $h = $other->background_psql('postgres', on_error_stop => 0);
	my $t1 = $h->query_safe("BEGIN; SELECT redis_wait_lock('force:k', '1 h');");
	is($node->safe_psql('postgres', "SELECT redis_force_unlock('force:k')"), 't',
		'redis_force_unlock breaks a lock held on another cluster');
	my $t2 = $node->safe_psql('postgres', "SELECT redis_wait_lock('force:k')");
	cmp_ok($t2, '>', $t1, 'the next acquisition gets a greater token');
	$h->query("\\set VERBOSITY sqlstate\nCOMMIT;");
	like($h->{stderr}, qr/ERROR:  40001/, 'the old holder cannot commit once its server checks');
	$h->{stderr} = '';
	$h->query_safe("BEGIN; SELECT redis_wait_lock('extend:k', '1 s'); SELECT redis_extend_lock('extend:k', '20 s');");
	sleep 2;
	is(try_elsewhere('extend:k'), 'f', 'a 1 s lock extended to 20 s still excludes after 2 s');
	$h->query('COMMIT');
	is($h->{stderr}, '', 'and its holder commits');
	$h->quit;
	$other->stop;
}

# --- the scripts run on their own with redis-cli ----------------------------------------------------
my $lua = "$ENV{TESTDIR}/lua";
my $k = '{redislock:cli:k}';
my $r = `redis-cli -p $redis->{port} --eval $lua/acquire.lua '$k' '$k:q' '$k:w' , me:1 5000 try 3000 2>&1`;
like($r, qr/^1\n\d+\n5000$/, 'acquire.lua runs with redis-cli --eval');
$r = `redis-cli -p $redis->{port} --eval $lua/release.lua '$k' '$k:q' '$k:w' , me:2 2>&1`;
chomp $r;
is($r, '0', 'release.lua of another acquisition leaves the lock alone');
$r = `redis-cli -p $redis->{port} --eval $lua/release.lua '$k' '$k:q' '$k:w' , me:1 2>&1`;
chomp $r;
is($r, '1', 'release.lua of its own acquisition releases it');

done_testing();
