# Exclusion under load across servers, and bad input in bulk:
# - 2 clusters x 8 sessions lock, run a critical section and commit on one key for several seconds,
#   while Redis forgets its scripts (SCRIPT FLUSH) every 200 ms:
#   no two critical sections overlap, and fencing tokens increase in the order the sections ran; the
#   same run with the lock replaced by a no-op shows overlaps, so the check can fail;
# - a sweep of odd keys and arguments gets clean errors with the right SQLSTATE;
# - 100k lock cycles in a PL/pgSQL loop leave the backend's memory flat.
use strict;
use warnings;
use lib 'perl';
use PostgreSQL::Test::Utils;
use Test::More;
use IPC::Run;
use RedisLockTest;
use CriticalSections;

my $redis = start_redis();
my @nodes = (new_node('soak1', $redis), new_node('soak2', $redis));
my $seconds = 4;

sections_prepare(@nodes);

# run pgbench with 8 clients on both clusters at once
sub soak
{
	my ($lock_sql) = @_;
	my $script = PostgreSQL::Test::Utils::tempdir() . '/soak.sql';
	open my $fh, '>', $script or die;
	print $fh CriticalSections::section_sql($lock_sql);
	close $fh;
	$_->safe_psql('postgres', 'TRUNCATE sections') for @nodes;
	# Redis forgets the scripts every 200 ms meanwhile (NOSCRIPT mid-run must stay transparent)
	my $flusher = IPC::Run::start([ 'sh', '-c', "for i in \$(seq 1 " . ($seconds * 5) . "); do redis-cli -p $redis->{port} SCRIPT FLUSH >/dev/null; sleep 0.2; done" ]);
	my @runs;
	for my $node (@nodes)
	{
		my ($out, $err) = ('', '');
		push @runs, [ IPC::Run::start([ 'pgbench', '-n', '-c', '8', '-j', '8', '-T', $seconds, '-f', $script,
					'-h', $node->host, '-p', $node->port, 'postgres' ], '>', \$out, '2>', \$err), \$out, \$err ];
	}
	for (@runs)
	{
		$_->[0]->finish;
		note(${ $_->[2] }) if $_->[0]->result;
	}
	$flusher->finish;
	return sections_check(@nodes);
}

my ($n, $overlaps, $disorder, $both) = soak("SELECT redis_wait_lock('soak:key') AS tok \\gset");
cmp_ok($n, '>=', 1000, "thousands of critical sections ran ($n)");
is($both, 2, 'on both clusters');
is($overlaps, 0, 'no two critical sections overlap');
is($disorder, 0, 'fencing tokens increase in the order the sections ran');

($n, $overlaps) = soak("SELECT (random() * 1e15)::bigint AS tok \\gset");
cmp_ok($overlaps, '>', 0, "without the lock the same check finds overlaps ($overlaps of $n)");

# --- bad input sweep --------------------------------------------------------------------------------
my $node = $nodes[0];
sub sqlstate_of
{
	my ($sql) = @_;
	my ($rc, $out, $err) = $node->psql('postgres', "\\set VERBOSITY sqlstate\n$sql");
	return $err =~ /ERROR:  (\w{5})/ ? $1 : ($rc == 0 ? 'ok' : $err);
}
is(sqlstate_of("SELECT redis_wait_lock(NULL)"), '22004', 'NULL key: 22004');
is(sqlstate_of("SELECT redis_try_lock(NULL, '1 s')"), '22004', 'NULL key to try_lock: 22004');
is(sqlstate_of("SELECT redis_wait_lock('')"), '22023', 'empty key: 22023');
is(sqlstate_of("SELECT redis_wait_lock(repeat('x', 1024 * 1024))"), '22023', '1 MiB key: 22023');
is(sqlstate_of("SELECT redis_wait_lock('k', '0')"), '22023', 'ttl 0: 22023');
is(sqlstate_of("SELECT redis_wait_lock('k', '-1 s')"), '22023', 'negative ttl: 22023');
is(sqlstate_of("SELECT redis_wait_lock('k', '178000000 years')"), '22023', 'near-infinite ttl: 22023');
is(sqlstate_of("SELECT redis_wait_lock('k', '1 s', '-1 s')"), '22023', 'negative timeout: 22023');
is(sqlstate_of("SELECT redis_wait_lock('k', '1 s', '178000000 years')"), 'ok', 'near-infinite timeout waits without limit');
is(sqlstate_of("SELECT redis_wait_lock('k', '1 s', '0')"), 'ok', 'timeout 0 waits without limit');
my $odd_keys = <<'SQL';
SELECT count(*) FILTER (WHERE ok) FROM (
  SELECT redis_try_lock(k, '5 s') AS ok FROM (
    SELECT chr(b) || '{' || chr(b) || '}' || E'\r\n' || chr(b) AS k FROM generate_series(1, 255) b
    UNION ALL SELECT '{}' UNION ALL SELECT '}' UNION ALL SELECT repeat('{', 1024)) keys) t
SQL
is($node->safe_psql('postgres', $odd_keys), '258',
	'every byte value, braces, CR/LF and a 1024-byte key lock in one transaction');

# --- memory stays flat over 100k lock cycles --------------------------------------------------------
my $s = $node->background_psql('postgres');
my $pid = $s->query_safe('SELECT pg_backend_pid()');
sub rss_kb { open my $fh, '<', "/proc/$pid/status" or return 0; while (<$fh>) { return $1 if /^VmRSS:\s+(\d+)/ } return 0; }
my $cycles = q{DO $$ BEGIN FOR i IN 1..%d LOOP PERFORM redis_wait_lock('rss:' || (i %% 7)); PERFORM redis_unlock('rss:' || (i %% 7)); PERFORM redis_try_lock('rss:t'); END LOOP; END $$;};
$s->query_safe(sprintf($cycles, 10000));    # warm-up: caches, the connection, the lock table
my $before = rss_kb();
$s->query_safe(sprintf($cycles, 100000));
my $after = rss_kb();
note("VmRSS before $before kB, after $after kB");
cmp_ok($after - $before, '<', 5 * 1024, 'backend memory grows less than 5 MB over 100k lock cycles');
$s->query_safe("SELECT redis_wait_lock('rss:x') FROM generate_series(1, 1000)");
is($s->query_safe("SELECT hold_count FROM redis_locks WHERE key = 'rss:x'"), '', 'a statement\'s holds end with its transaction');
$s->quit;

done_testing();
