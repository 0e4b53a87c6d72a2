# What crosses the wire and what happens when Redis goes away: an uncontended lock cycle is two Redis
# commands; a dead Redis gives class-08 errors, and the COMMIT of a holder that cannot prove its lock
# fails (40001: the commit fails closed); the next
# call after Redis returns reconnects by itself; a stalled Redis is bounded by command_timeout; a
# cancelled wait ends promptly and leaves the queue.
use strict;
use warnings;
use lib 'perl';
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(time usleep);
use RedisLockTest;

my $redis = start_redis();
my $node = new_node('traffic', $redis, "redislock.command_timeout = '1s'\nredislock.connect_timeout = '1s'\n");

# --- round trips ---------------------------------------------------------------------------------
my $s = $node->background_psql('postgres', on_error_stop => 0);
$s->query_safe("SELECT redis_try_lock('warm-up')");    # connect and load the scripts
$redis->cli('CONFIG', 'RESETSTAT');
$s->query_safe("BEGIN; SELECT redis_wait_lock('rt:one'); COMMIT;");
my $calls = $redis->client_command_calls;
is_deeply($calls, { evalsha => 2 }, 'an uncontended BEGIN; lock; COMMIT sends 2 commands: acquire and release');

$redis->cli('CONFIG', 'RESETSTAT');
$s->query_safe("BEGIN; SELECT redis_wait_lock('rt:' || i) FROM generate_series(1, 5) i; SELECT redis_wait_lock('rt:1'); COMMIT;");
$calls = $redis->client_command_calls;
is_deeply($calls, { evalsha => 10 }, 'five locks (one re-entered) cost 5 acquires and 5 releases, pipelined at commit');

$redis->cli('SCRIPT', 'FLUSH');
$redis->cli('CONFIG', 'RESETSTAT');
$s->query_safe("BEGIN; SELECT redis_wait_lock('rt:flushed'); COMMIT;");
$calls = $redis->client_command_calls;
is_deeply($calls, { evalsha => 2, eval => 2 }, 'after SCRIPT FLUSH, NOSCRIPT falls back to EVAL transparently');

# --- the release sent at commit without waiting for its answer -------------------------------------
# Its answer is read before the session's next command. Scripts flushed between the lock and the
# commit: the release meets NOSCRIPT, and is run again (EVAL) before that next command.
$s->query_safe("BEGIN; SELECT redis_wait_lock('rt:midflush');");
$redis->cli('SCRIPT', 'FLUSH');
$s->query_safe('COMMIT');
ok(wait_until(sub { ($redis->cli('HGET', '{redislock:rt:midflush}', 'owner') // '') ne '' }),
	'a release sent at commit into a SCRIPT FLUSH did not run (NOSCRIPT) ...');
$s->query_safe("SELECT held FROM redis_lock_info('rt:other')");
is($redis->cli('EXISTS', '{redislock:rt:midflush}'), '0', '... and runs again before the next command of that session');
# a connection replaced mid-transaction has answered the release script but not the acquire script:
# after a SCRIPT FLUSH, the acquire's NOSCRIPT must stop the next COMMIT sending a release unanswered
$s->query_safe("BEGIN; SELECT redis_wait_lock('rt:swap');");
$redis->cli('CLIENT', 'KILL', 'TYPE', 'normal');
$s->query('COMMIT');
$redis->cli('SCRIPT', 'FLUSH');
$s->query_safe("BEGIN; SELECT redis_wait_lock('rt:after-swap'); COMMIT;");
ok(wait_until(sub { $redis->cli('EXISTS', '{redislock:rt:after-swap}') eq '0' }, 2),
	'after a SCRIPT FLUSH, a COMMIT on a connection that knew only the release script releases at once');
# a release run again after NOSCRIPT goes where it was sent, even if the settings moved on meanwhile
my $redis2 = start_redis();
$s->query_safe("BEGIN; SELECT redis_wait_lock('rt:moved');");
$redis->cli('SCRIPT', 'FLUSH');
$s->query_safe('COMMIT');
$s->query_safe("SET redislock.port = $redis2->{port}");
$s->{stderr} = '';
$s->query("SELECT redis_try_lock('rt:elsewhere')");
is($redis->cli('EXISTS', '{redislock:rt:moved}'), '0',
	'a release that met NOSCRIPT runs again on the Redis it was sent to after redislock.port changed');
unlike($s->{stderr}, qr/already been lost/, 'without a false "lost" WARNING');
$s->query_safe('RESET redislock.port');
$s->query_safe("SELECT redis_try_lock('rt:back')");
$redis2->stop;
$s->{stderr} = '';
# a lock that vanished from Redis under its holder (not near the end of its lease, so not checked
# before commit): the release finds it gone, and says so at the next command
$s->{stderr} = '';
$s->query_safe("BEGIN; SELECT redis_wait_lock('rt:vanished');");
$redis->cli('DEL', '{redislock:rt:vanished}');
$s->query('COMMIT');
is($s->{stderr}, '', 'the COMMIT does not wait to hear about it');
$s->query("SELECT 1 FROM redis_lock_info('rt:other')");
like($s->{stderr}, qr/WARNING:  redis lock "rt:vanished" had already been lost when it was released/,
	'a release that finds its lock gone is a WARNING at the next command');
$s->{stderr} = '';
$s->query_safe("BEGIN; SELECT redis_wait_lock('rt:vanished2');");
$redis->cli('DEL', '{redislock:rt:vanished2}');
$s->query('COMMIT');
$s->query('DISCARD ALL');
like($s->{stderr}, qr/WARNING:  redis lock "rt:vanished2" had already been lost/,
	'DISCARD ALL reads what the last release answered (the WARNING stays with this client)');
$s->{stderr} = '';
# redislock.synchronous_release: COMMIT waits for the answer, and reports a lost lock itself
$s->query_safe('SET redislock.synchronous_release = on');
$s->query_safe("BEGIN; SELECT redis_wait_lock('rt:sync');");
$redis->cli('DEL', '{redislock:rt:sync}');
$s->query('COMMIT');
like($s->{stderr}, qr/WARNING:  redis lock "rt:sync" had already been lost/,
	'with redislock.synchronous_release on, COMMIT itself reports the lost lock');
$s->{stderr} = '';
$s->query_safe('RESET redislock.synchronous_release');
# a release sent without waiting leaves the connection owing an answer; a later release must still
# notice that Redis closed the connection meanwhile, and release on a new one
$s->query_safe("BEGIN; SELECT redis_wait_lock('rt:a'); SAVEPOINT p; SELECT redis_wait_lock('rt:b'); ROLLBACK TO p;");
$redis->cli('CLIENT', 'KILL', 'TYPE', 'normal');
$s->query('ROLLBACK');
ok(wait_until(sub { $redis->cli('EXISTS', '{redislock:rt:a}') eq '0' && $redis->cli('EXISTS', '{redislock:rt:b}') eq '0' }, 3),
	'a ROLLBACK after ROLLBACK TO SAVEPOINT and a killed connection releases at once');
$s->{stderr} = '';

# --- a Unix socket ------------------------------------------------------------------------------------
is($node->safe_psql('postgres', "SET redislock.host = '$redis->{dir}/redis.sock'; BEGIN; SELECT redis_try_lock('unix:k'); SELECT held FROM redis_lock_info('unix:k'); COMMIT;"),
	"t\nt", 'redislock.host starting with / connects through a Unix socket');
my ($rc0, $out0, $err0) = $node->psql('postgres', "SET redislock.host = '$redis->{dir}/nothing.sock'; SELECT redis_try_lock('unix:k')");
like($err0, qr/could not connect to Redis at \Q$redis->{dir}\E\/nothing\.sock/, 'a missing socket is named in the error');

# --- Redis dies under a holder and a waiter -------------------------------------------------------
my $w = $node->background_psql('postgres', on_error_stop => 0);
$s->query_safe("BEGIN; SELECT redis_wait_lock('down:k');");
$w->query_until(qr/waiting/, "\\echo waiting\nSELECT redis_wait_lock('down:k');\n");
ok(wait_until(sub { ($redis->cli('ZCARD', '{redislock:down:k}:q') // 0) == 1 }), 'a waiter is queued');
$redis->stop;
my $t0 = time;
$w->query('SELECT 1');
my $waiter_err = $w->{stderr};
my $waited = time - $t0;
like($waiter_err, qr/(lost connection to|did not answer|could not connect to) Redis at 127\.0\.0\.1:$redis->{port}/,
	'the waiter gets a connection error naming host and port');
ok($waited < 5, sprintf('within command_timeout and a little (%.1f s)', $waited));
$w->quit;

# the holder's connection broke with Redis: COMMIT must prove the lock, and cannot
$s->query("\\set VERBOSITY verbose\nCOMMIT;");
like($s->{stderr}, qr/ERROR:  40001: could not confirm redis lock "down:k" before commit.*DETAIL:  The lock could not be checked in Redis \(could not connect to Redis at 127\.0\.0\.1:$redis->{port}/s,
	'COMMIT of a lock that cannot be proven held fails with 40001, saying why (the commit fails closed)');
like($s->{stderr}, qr/WARNING:  .*could not connect to Redis at 127\.0\.0\.1:$redis->{port}.*DETAIL:  Their release is run again before this session's next Redis command/s,
	'the rollback that follows says the release could not reach Redis, and is owed');
$s->query("\\set VERBOSITY default");
my ($rc, $out, $err) = $node->psql('postgres', "\\set VERBOSITY sqlstate\nSELECT redis_try_lock('down:k')");
like($err, qr/ERROR:  08\d\d\d/, 'a lock call while Redis is down fails with SQLSTATE class 08');

$redis->start;
$s->{stderr} = '';
is($s->query_safe("SELECT redis_try_lock('down:k')"), 't', 'when Redis is back, the same session locks again by itself');

# A backend stuck in a redislock call: check that it waits on Redis, cancel it, and check that the
# cancel ends the call within 5 s.
sub cancel_stuck_call
{
	my ($pid, $waiting_name, $cancelled_name) = @_;
	ok(wait_until(sub { $node->safe_psql('postgres', "SELECT wait_event_type FROM pg_stat_activity WHERE pid = $pid") eq 'Extension' }),
		$waiting_name);
	my $start = time;
	$node->safe_psql('postgres', "SELECT pg_cancel_backend($pid)");
	ok(wait_until(sub { $node->safe_psql('postgres', "SELECT state FROM pg_stat_activity WHERE pid = $pid") eq 'idle' }, 5),
		sprintf('%s (%.0f ms)', $cancelled_name, (time - $start) * 1000));
}

# --- a stalled Redis -------------------------------------------------------------------------------
my $stalled_session = $node->background_psql('postgres', on_error_stop => 0);
$stalled_session->query_safe("SELECT redis_try_lock('stall:warm')");
$redis->signal('STOP');
# a long command_timeout, so that only the cancel can end this call
$stalled_session->query_until(qr/calling/, "SET redislock.command_timeout = '60s';\n\\echo calling\nSELECT redis_try_lock('stall:cancel');\n");
my $spid = $node->safe_psql('postgres', "SELECT pid FROM pg_stat_activity WHERE query LIKE '%stall:cancel%' AND pid <> pg_backend_pid()");
cancel_stuck_call($spid, 'a call is stuck on the stalled Redis', 'pg_cancel_backend ends it during the stall');
$t0 = time;
($rc, $out, $err) = $node->psql('postgres', "SELECT redis_try_lock('stall:k')");
my $stalled = time - $t0;
like($err, qr/did not answer within 1000 ms|could not connect/, 'a stalled Redis gives an error');
ok($stalled < 4, sprintf('bounded by the timeouts (%.1f s)', $stalled));
$redis->signal('CONT');
is($node->safe_psql('postgres', "SELECT redis_try_lock('stall:k')"), 't', 'all recovers on SIGCONT');
$stalled_session->query('RESET redislock.command_timeout');
is(scalar $stalled_session->query("SELECT redis_try_lock('stall:again')"), 't',
	'including the session whose call was stuck');
$stalled_session->quit;

# --- a call while the answer to the last COMMIT's release is owed and Redis stalls -----------------
# without a cancel, it fails after one command_timeout (not one for the owed answer and one for itself)
my $f = $node->background_psql('postgres', on_error_stop => 0);
$f->query_safe("SET redislock.command_timeout = '2s'");
$f->query_safe("SELECT redis_try_lock('owed:warm-f')");
$f->query_safe("BEGIN; SELECT redis_wait_lock('owed:f');");
$redis->signal('STOP');
$f->query('COMMIT');
$t0 = time;
$f->query("SELECT redis_try_lock('owed:f-next')");
my $took = time - $t0;
$redis->signal('CONT');
like($f->{stderr}, qr/did not answer within 2000 ms/, 'a call behind an answer owed by a stalled Redis fails');
ok($took < 3.5, sprintf('after one command_timeout (%.1f s)', $took));
$f->{stderr} = '';
is(scalar $f->query("SELECT redis_try_lock('owed:f-after')"), 't', 'and the session locks again once Redis is back');
$f->quit;

# --- a cancel while the answer to the last COMMIT's release is owed and Redis stalls ---------------
my $o = $node->background_psql('postgres', on_error_stop => 0);
$o->query_safe("SELECT redis_try_lock('owed:warm')");
$o->query_safe("SET redislock.command_timeout = '60s'");
$o->query_safe("BEGIN; SELECT redis_wait_lock('owed:k');");
$redis->signal('STOP');
$o->query('COMMIT');    # the release is written, and its answer will be owed
my $opid = $o->query_safe('SELECT pg_backend_pid()');
$o->{stderr} = '';
$o->query_until(qr/calling/, "\\echo calling\nSELECT redis_try_lock('owed:next');\n");
cancel_stuck_call($opid, 'the next call waits for the owed answer', 'a cancel ends that wait at once');
$redis->signal('CONT');
$o->query('RESET redislock.command_timeout');
is(scalar $o->query("SELECT redis_try_lock('owed:after')"), 't', 'the session locks again once Redis is back');
unlike($o->{stderr}, qr/already been lost/, 'a release whose answer was lost and that runs again is no false "lost"');
ok(wait_until(sub { $redis->cli('EXISTS', '{redislock:owed:k}') eq '0' }), 'the release itself ran when Redis woke');

# the same, with the scripts flushed before the COMMIT: the release meets NOSCRIPT when Redis wakes,
# and the cancel of the read that would have told so must not skip running it again
$o->{stderr} = '';
$o->query_safe("SET redislock.command_timeout = '60s'");
$o->query_safe("BEGIN; SELECT redis_wait_lock('owed:flushed', '60 s');");
$redis->cli('SCRIPT', 'FLUSH');
$redis->signal('STOP');
$o->query('COMMIT');
$o->query_until(qr/calling/, "\\echo calling\nSELECT redis_try_lock('owed:next2');\n");
cancel_stuck_call($opid, 'the next call waits for the owed answer', 'a cancel ends that wait at once');
$redis->signal('CONT');
ok(wait_until(sub { ($redis->cli('HGET', '{redislock:owed:flushed}', 'owner') // '') ne '' }),
	'the release met NOSCRIPT when Redis woke: the lock is still there');
$o->query('RESET redislock.command_timeout');
$o->query("SELECT redis_try_lock('owed:after2')");
is($redis->cli('EXISTS', '{redislock:owed:flushed}'), '0',
	'a release that met NOSCRIPT while its answer\'s read was cancelled runs again at the next command');
$o->quit;

# --- cancel during a wait ---------------------------------------------------------------------------
$s->query_safe("BEGIN; SELECT redis_wait_lock('cancel:k');");
my $c = $node->background_psql('postgres', on_error_stop => 0);
$c->query_until(qr/waiting/, "\\echo waiting\nSELECT redis_wait_lock('cancel:k');\n");
ok(wait_until(sub { ($redis->cli('ZCARD', '{redislock:cancel:k}:q') // 0) == 1 }), 'a waiter is queued');
my $cpid = $node->safe_psql('postgres', "SELECT pid FROM pg_stat_activity WHERE query LIKE '%cancel:k%' AND pid <> pg_backend_pid() AND state = 'active'");
$t0 = time;
$node->safe_psql('postgres', "SELECT pg_cancel_backend($cpid)");
ok(wait_until(sub { $node->safe_psql('postgres', "SELECT state FROM pg_stat_activity WHERE pid = $cpid") eq 'idle' }, 5),
	'pg_cancel_backend ends the wait');
my $cancelled = time - $t0;
note(sprintf('wait ended %.0f ms after the cancel', $cancelled * 1000));
is($redis->cli('ZCARD', '{redislock:cancel:k}:q'), '0', 'and its queue entry is gone');
$s->query_safe('COMMIT');
is(scalar $c->query("SELECT redis_try_lock('cancel:k')"), 't', 'the cancelled session can lock again');

$c->quit;
$s->quit;
done_testing();
