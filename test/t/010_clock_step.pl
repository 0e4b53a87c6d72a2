# Leases are timed on PostgreSQL's side with the monotonic clock: when this server's wall clock steps
# back, a lease that ran out still counts as run out. The server runs under libfaketime (its wall
# clock steered from a file, its monotonic clock left alone); Redis and the other cluster keep the
# real time.
use strict;
use warnings;
use lib 'perl';
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(sleep);
use RedisLockTest;

my $libfaketime = '/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1';
plan skip_all => 'libfaketime is not installed' unless -e $libfaketime;

my $redis = start_redis();
my $clock = PostgreSQL::Test::Utils::tempdir() . '/faketime.rc';
sub set_offset
{
	my ($offset) = @_;
	open my $fh, '>', $clock or die "$clock: $!";
	print $fh "$offset\n";
	close $fh;
}
set_offset('+0');
my $stepped;
{
	local $ENV{LD_PRELOAD} = $libfaketime;
	local $ENV{FAKETIME_TIMESTAMP_FILE} = $clock;
	local $ENV{FAKETIME_NO_CACHE} = '1';
	local $ENV{FAKETIME_DONT_FAKE_MONOTONIC} = '1';
	$stepped = new_node('stepped', $redis);
}
my $other = new_node('steady', $redis);

my $h = $stepped->background_psql('postgres', on_error_stop => 0);
my $t0 = $h->query_safe("SELECT extract(epoch FROM now())");
$h->query_safe("BEGIN; SELECT redis_wait_lock('clock:k', '2 s');");
set_offset('-3600');    # this server's wall clock steps back an hour
my $t1 = $h->query_safe("SELECT extract(epoch FROM clock_timestamp())");
cmp_ok($t1, '<', $t0 - 3000, 'the stepped server\'s wall clock went back an hour');
sleep 3;                # the 2 s lease ran out in Redis ...
my $o = $other->background_psql('postgres');
$o->query_safe("BEGIN; SELECT redis_wait_lock('clock:k', '30 s', '5 s');");    # ... and another took it
$h->query("\\set VERBOSITY sqlstate\nCOMMIT;");
like($h->{stderr}, qr/ERROR:  40001/, 'the holder whose lease ran out cannot commit, though its wall clock says little time passed');
$o->query_safe('COMMIT');
set_offset('+0');
$h->quit;
$o->quit;
done_testing();
