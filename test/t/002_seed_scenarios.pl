# The three concurrency scenarios of the concert-booking service (shared/seeds), 100, 70 and 10
# concurrent clients: with the redis lock every invariant holds; with the lock call made a no-op the
# same run breaks them, which shows these tests can fail.
use strict;
use warnings;
use lib 'perl';
use PostgreSQL::Test::Utils;
use Test::More;
use RedisLockTest;

my $redis = start_redis();
my $node = new_node('scenarios', $redis);
my $scenarios = $ENV{REDISLOCK_SCENARIOS} or die 'REDISLOCK_SCENARIOS not set';
$node->safe_psql('postgres', slurp_file("$scenarios/schema.sql"));

sub run_scenarios
{
	my ($mode) = @_;
	local $ENV{PGHOST} = $node->host;
	local $ENV{PGPORT} = $node->port;
	local $ENV{PGUSER} = $ENV{USER} // 'postgres';
	local $ENV{PGDATABASE} = 'postgres';
	my $out = `bash $scenarios/run.sh $mode 2>&1`;
	note($out);
	my %r;
	for my $line (split /\n/, $out)
	{
		next unless $line =~ /^(\w+) (.*)$/;
		my ($name, $fields) = ($1, $2);
		$r{$name}{$1} = $2 while $fields =~ /(\w+)=(\d+)/g;
	}
	return \%r;
}

my $with = run_scenarios('on');
is($with->{queue}{distinct_positions}, 100, 'queue: 100 concurrent requests get 100 distinct positions');
is($with->{balance}{succeeded}, 50, 'balance: exactly 50 of 70 spends succeed');
is($with->{balance}{failed}, 20, 'balance: exactly 20 spends fail');
is($with->{balance}{balance}, 0, 'balance: ends at 0');
is($with->{reservation}{succeeded}, 1, 'reservation: exactly 1 of 10 succeeds');

my $without = run_scenarios('off');
cmp_ok($without->{queue}{distinct_positions}, '<', 100, 'without the lock: queue positions collide');
ok($without->{balance}{succeeded} > 50 || $without->{balance}{balance} != 50 - $without->{balance}{succeeded},
	'without the lock: the balance is spent wrongly');
cmp_ok($without->{reservation}{succeeded}, '>', 1, 'without the lock: a seat is sold twice');

done_testing();
