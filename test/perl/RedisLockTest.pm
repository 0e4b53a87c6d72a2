# RedisLockTest: helpers for the TAP suites — a real redis-server on a free loopback port, and
# PostgreSQL clusters (PostgreSQL::Test::Cluster) with redislock pointed at it.
package RedisLockTest;

use strict;
use warnings;

use Exporter 'import';
use IO::Socket::INET;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Time::HiRes qw(usleep time);

our @EXPORT = qw(start_redis new_node wait_until);

my @servers;

sub free_port
{
	my $sock = IO::Socket::INET->new(Listen => 1, LocalAddr => '127.0.0.1', LocalPort => 0, ReuseAddr => 1)
	  or die "no free port: $!";
	my $port = $sock->sockport;
	close $sock;
	return $port;
}

# wait_until(sub { ... }, seconds): poll until the sub returns true; returns whether it did.
sub wait_until
{
	my ($check, $seconds) = @_;
	my $deadline = time + ($seconds // 10);
	while (time < $deadline)
	{
		return 1 if $check->();
		usleep(20_000);
	}
	return $check->() ? 1 : 0;
}

# start_redis(extra redis-server arguments...): a RedisLockTest::Redis, stopped at exit.
sub start_redis
{
	my $self = bless { port => free_port(), dir => PostgreSQL::Test::Utils::tempdir(), args => [@_] },
	  'RedisLockTest::Redis';
	my %args = @_ % 2 ? () : @_;
	$self->{auth} = $args{'--requirepass'} if $args{'--requirepass'};
	$self->start;
	push @servers, $self;
	return $self;
}

# new_node(name, redis, extra postgresql.conf text, init options): a started cluster with the
# extension created.
sub new_node
{
	my ($name, $redis, $conf, %init) = @_;
	my $node = PostgreSQL::Test::Cluster->new($name);
	$node->init(%init);
	$node->append_conf('postgresql.conf', "max_connections = 150\n" . "redislock.host = '127.0.0.1'\n"
		  . "redislock.port = $redis->{port}\n" . ($conf // ''));
	$node->start;
	$node->safe_psql('postgres', 'CREATE EXTENSION redislock');
	return $node;
}

END
{
	$_->stop for @servers;
}

package RedisLockTest::Redis;

use Time::HiRes qw(usleep);

sub start
{
	my ($self) = @_;
	system('redis-server', '--port', $self->{port}, '--bind', '127.0.0.1', '--save', '', '--appendonly', 'no',
		'--unixsocket', "$self->{dir}/redis.sock", '--unixsocketperm', '700',
		'--daemonize', 'yes', '--dir', $self->{dir}, '--pidfile', "$self->{dir}/redis.pid",
		'--logfile', "$self->{dir}/redis.log", @{ $self->{args} }) == 0
	  or die "redis-server did not start";
	for (1 .. 200)
	{
		return if ($self->cli('PING') // '') eq 'PONG';
		usleep(25_000);
	}
	die "redis-server on port $self->{port} does not answer";
}

sub pid
{
	my ($self) = @_;
	open my $fh, '<', "$self->{dir}/redis.pid" or return undef;
	my $pid = <$fh>;
	chomp $pid;
	return $pid;
}

# cli(args...): redis-cli's answer, trimmed.
sub cli
{
	my ($self, @args) = @_;
	my $auth = $self->{auth} ? "--no-auth-warning -a '$self->{auth}'" : '';
	my $out = `redis-cli -p $self->{port} $auth @{[ map { "'$_'" } @args ]} 2>/dev/null`;
	chomp $out if defined $out;
	return $out;
}

sub signal
{
	my ($self, $sig) = @_;
	my $pid = $self->pid or return;
	kill $sig, $pid;
}

sub stop
{
	my ($self) = @_;
	my $pid = $self->pid or return;
	kill 'KILL', $pid;
	kill 'CONT', $pid;
	usleep(50_000) while kill 0, $pid;
	unlink "$self->{dir}/redis.pid";
}

# Calls since the last CONFIG RESETSTAT of the commands redislock sends, as { name => calls }.
# Redis counts the commands its Lua scripts run too; none of these is ever called from a script, so
# what is left is what clients sent.
sub client_command_calls
{
	my ($self) = @_;
	my %calls;
	for (split /\r?\n/, $self->cli('INFO', 'commandstats'))
	{
		$calls{$1} = $2 if /^cmdstat_(evalsha|eval|blpop|auth|select|ping):calls=(\d+)/;
	}
	return \%calls;
}

1;
