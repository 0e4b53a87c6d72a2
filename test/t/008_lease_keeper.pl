# The lease keeper (redislock in shared_preload_libraries): leases of live backends never lapse, a
# dead holder's lock frees within one lease, killing the keeper loses no lease, a lock the keeper
# cannot renew takes the lost-lock path; session locks survive COMMIT and ROLLBACK and go with
# redis_unlock, DISCARD ALL and session end. Without preload, session locks refuse with a hint.
use strict;
use warnings;
use lib 'perl';
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(time sleep);
use RedisLockTest;

my $redis = start_redis();
my $a = new_node('keeper', $redis,
	"shared_preload_libraries = 'redislock'\nrestart_after_crash = on\nredislock.command_timeout = '500ms'\n");
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

# --- without preload --------------------------------------------------------------------------------
my ($rc, $out, $err) = $b->psql('postgres', "\\set VERBOSITY verbose\nSELECT redis_session_lock('keep:nopreload')");
like($err, qr/ERROR:  55000: session-level redis locks need the redislock lease keeper.*HINT:  Add redislock to shared_preload_libraries/s,
	'without preload, session locks refuse with a hint');

done_testing();
