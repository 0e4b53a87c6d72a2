# A Redis that answers nonsense: wrong reply types, huge or negative lengths, truncated or deeply
# nested replies, garbage bytes, or nothing. Every lock call must end in an ERROR within
# command_timeout (plus a little), never succeed, and never crash or hang the backend.
use strict;
use warnings;
use lib 'perl';
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(time);
use FakeRedis;
use RedisLockTest;

my $redis = start_redis();
my $node = new_node('broken', $redis, "redislock.command_timeout = '500ms'\nredislock.connect_timeout = '500ms'\n");
my $started = $node->safe_psql('postgres', 'SELECT pg_postmaster_start_time()');

my %replies = (
	'status instead of an array'   => "+OK\r\n",
	'integer instead of an array'  => ":1\r\n",
	'array of the wrong length'    => "*1\r\n:1\r\n",
	'array of wrong element types' => "*3\r\n\$1\r\nx\r\n\$1\r\ny\r\n\$1\r\nz\r\n",
	'acquired without a token'     => "*2\r\n:1\r\n:5\r\n",
	'nil'                          => "\$-1\r\n",
	'negative bulk length'         => "\$-7\r\n",
	'negative array length'        => "*-5\r\n",
	'huge bulk length'             => "\$9223372036854775807\r\nabc",
	'huge array length'            => "*2147483647\r\n:1\r\n",
	'truncated array'              => "*3\r\n:1\r\n",
	'deeply nested'                => ("*1\r\n" x 40) . ":1\r\n",
	'garbage bytes'                => "\x00\xff\xfe garbage \x01\r\n",
	'an error reply'               => "-ERR no such thing\r\n",
	'no answer at all'             => undef,
);

for my $name (sort keys %replies)
{
	my $fake = FakeRedis->start($replies{$name});
	for my $call ("SELECT redis_try_lock('bad:k')", "SELECT redis_wait_lock('bad:k', NULL, '2 s')",
		"SELECT * FROM redis_lock_info('bad:k')")
	{
		my $t0 = time;
		my ($rc, $out, $err) = $node->psql('postgres', "SET redislock.port = $fake->{port};\n$call;\nSELECT 'alive';",
			on_error_stop => 0);
		my $took = time - $t0;
		like($err, qr/ERROR:/, "$name: $call fails");
		like($out, qr/alive/, "$name: the backend survives");
		ok($took < 3, sprintf("$name: within the timeouts (%.1f s)", $took));
	}
	$fake->stop;
}
is($node->safe_psql('postgres', 'SELECT pg_postmaster_start_time()'), $started, 'no backend crashed (no restart)');
is($node->safe_psql('postgres', "SELECT redis_try_lock('bad:k')"), 't', 'the real Redis still works');

done_testing();
