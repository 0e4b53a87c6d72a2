# FakeRedis: the test suite's deliberately broken Redis. It accepts connections on a free loopback port
# and answers every command it reads with one canned reply chosen by the test: wrong types, impossible
# lengths, truncated or deeply nested replies, garbage, or nothing at all. It is the only fake in the
# suite; everything else runs against a real redis-server.
package FakeRedis;

use strict;
use warnings;
use IO::Select;
use IO::Socket::INET;
use POSIX ();

sub start
{
	my ($class, $reply) = @_;
	my $listener = IO::Socket::INET->new(Listen => 16, LocalAddr => '127.0.0.1', LocalPort => 0, ReuseAddr => 1)
	  or die "fake redis: $!";
	my $pid = fork() // die "fork: $!";
	if ($pid == 0)
	{
		my $sel = IO::Select->new($listener);
		local $SIG{TERM} = sub { POSIX::_exit(0) };
		while (1)
		{
			for my $fh ($sel->can_read(1))
			{
				if ($fh == $listener)
				{
					my $c = $listener->accept or next;
					$sel->add($c);
					next;
				}
				my $n = sysread($fh, my $buf, 65536);
				if (!$n)
				{
					$sel->remove($fh);
					close $fh;
					next;
				}
				syswrite($fh, $reply) if defined $reply && length $reply;
			}
		}
	}
	my $self = bless { pid => $pid, port => $listener->sockport }, $class;
	close $listener;
	return $self;
}

sub stop
{
	my ($self) = @_;
	return unless $self->{pid};
	kill 'TERM', $self->{pid};
	waitpid($self->{pid}, 0);
	$self->{pid} = undef;
}

sub DESTROY { $_[0]->stop }

1;
