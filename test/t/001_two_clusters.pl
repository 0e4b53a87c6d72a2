# Two PostgreSQL clusters share one Redis: a lock held on one excludes the other, waiters are woken
# at commit, locks go away at pg_terminate_backend, and a SIGKILLed holder's lock frees itself when
# its lease runs out.
use strict;
use warnings;
use lib 'perl';
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(time);
use RedisLockTest;

my $redis = start_redis();
my $a = new_node('a', $redis, "restart_after_crash = on\n");
my $b = new_node('b', $redis);

# a holds the lock
my $holder = $a->background_psql('postgres');
my $token_a = $holder->query_safe("BEGIN; SELECT redis_wait_lock('tc:seat');");
$token_a =~ s/\D//g;
ok($token_a > 0, 'cluster a holds the lock');

is($b->safe_psql('postgres', "SELECT redis_try_lock('tc:seat')"), 'f', 'cluster b cannot take it');
my ($ret, $out, $err) = $b->psql('postgres', "SELECT redis_wait_lock('tc:seat', NULL, '300 ms')");
like($err, qr/could not obtain redis lock "tc:seat" within 300 ms/, 'cluster b times out waiting');
like($b->safe_psql('postgres', "SELECT holder FROM redis_lock_info('tc:seat')"),
	qr/:\Q@{[$a->port]}\E:\d+:/, 'redis_lock_info names the holder on cluster a');

# b waits; a's commit hands the lock to b
my $waiter = $b->background_psql('postgres');
$waiter->query_until(qr/waiting/, "\\echo waiting\nBEGIN; SELECT redis_wait_lock('tc:seat');\n");
ok(wait_until(sub { $a->safe_psql('postgres', "SELECT waiters FROM redis_lock_info('tc:seat')") == 1 }),
	'b is queued');
is($b->safe_psql('postgres', "SELECT wait_event_type FROM pg_stat_activity WHERE backend_type = 'client backend' AND query LIKE '%redis_wait_lock%' AND pid <> pg_backend_pid()"),
	'Extension', 'a waiting backend shows wait_event_type Extension');
$holder->query_safe('COMMIT');
# the wait's own output comes first, then this query's
my ($token_b) = (split /\n/, $waiter->query_safe("SELECT redis_fencing_token('tc:seat')"))[-1];
ok($token_b > $token_a, 'b got the lock after a committed, with a greater fencing token');
is($a->safe_psql('postgres', "SELECT redis_try_lock('tc:seat')"), 'f', 'now a is excluded');
$waiter->query_safe('COMMIT');
is($a->safe_psql('postgres', "SELECT redis_try_lock('tc:seat')"), 't', 'free again after b committed');

# pg_terminate_backend releases a holder's locks and a waiter's queue entry
my $victim = $a->background_psql('postgres');
$victim->query_safe("BEGIN; SELECT redis_wait_lock('tc:term');");
my $victim_pid = $victim->query_safe('SELECT pg_backend_pid()');
my $queued = $b->background_psql('postgres');
$queued->query_until(qr/waiting/, "\\echo waiting\nSELECT redis_wait_lock('tc:term', NULL, '60 s');\n");
ok(wait_until(sub { $a->safe_psql('postgres', "SELECT waiters FROM redis_lock_info('tc:term')") == 1 }),
	'a waiter is queued behind the holder');
my $queued_pid = $b->safe_psql('postgres',
	"SELECT pid FROM pg_stat_activity WHERE query LIKE '%tc:term%' AND pid <> pg_backend_pid()");
$b->safe_psql('postgres', "SELECT pg_terminate_backend($queued_pid)");
ok(wait_until(sub { $a->safe_psql('postgres', "SELECT waiters FROM redis_lock_info('tc:term')") == 0 }, 2),
	'terminating the waiter removes its queue entry');
$a->safe_psql('postgres', "SELECT pg_terminate_backend($victim_pid)");
ok(wait_until(sub { $b->safe_psql('postgres', "SELECT NOT held FROM redis_lock_info('tc:term')") eq 't' }, 2),
	'terminating the holder releases its lock');
# both sessions were terminated: their psql has exited already
$SIG{PIPE} = 'IGNORE';
eval { $victim->quit };
eval { $queued->quit };

$holder->quit;
$waiter->quit;

# a SIGKILLed holder runs no cleanup: its lock frees itself when the lease runs out
my $doomed = $a->background_psql('postgres');
$doomed->query_safe("BEGIN; SELECT redis_wait_lock('tc:kill', '2 s');");
my $doomed_pid = $doomed->query_safe('SELECT pg_backend_pid()');
my $killed_at = time;
kill 'KILL', $doomed_pid;
is($b->safe_psql('postgres', "SELECT redis_try_lock('tc:kill')"), 'f', 'the killed holder still holds the lock');
$b->safe_psql('postgres', "SELECT redis_wait_lock('tc:kill', NULL, '10 s')");
my $freed_after = time - $killed_at;
ok($freed_after < 5, sprintf('the lock came free within its 2 s lease (after %.1f s)', $freed_after));
eval { $doomed->quit };
ok($a->poll_query_until('postgres', "SELECT redis_try_lock('tc:kill')", 't'),
	'cluster a restarts after the crash and locks again');
done_testing();
