# TcpProxy: the test suite's network-fault injector. It owns a real TCP relay on a free loopback port
# that sits between PostgreSQL backends and a real redis-server and forwards bytes both ways, until the
# test tells it otherwise: pause() holds back what the clients of the current connections send (replies
# still flow) and resume() delivers it late — even for connections whose client has already given up —
# while stop()/restart() make the port vanish and come back and drop_connections() cuts every
# relayed connection. The relay runs in a forked child driven by signals, and acknowledges each
# command on a pipe before the parent's call returns.
package TcpProxy;

use strict;
use warnings;
use Errno qw(EAGAIN EINTR EWOULDBLOCK);
use IO::Select;
use IO::Socket::INET;
use POSIX ();
use Time::HiRes qw(time);

my $ACK_TIMEOUT = 5;         # seconds the parent waits for the child to acknowledge a command
my $TICK        = 0.05;      # select timeout in the child, so flags set by signal handlers act promptly
my $LINGER      = 2;         # seconds a half-closed server side may take to close after our FIN
my $CHUNK       = 65536;

# TcpProxy->start($target_port): relay 127.0.0.1:$self->{port} to 127.0.0.1:$target_port.
sub start
{
	my ($class, $target) = @_;
	my $self = bless { target => $target, port => 0, owner => $$ }, $class;
	$self->_spawn;
	return $self;
}

# restart(): listen again on the same port with the same target (stops a running child first).
sub restart
{
	my ($self) = @_;
	$self->stop;
	$self->_spawn;
	return $self;
}

sub pause            { $_[0]->_command('USR1', 'P') }
sub resume           { $_[0]->_command('USR2', 'R') }
sub drop_connections { $_[0]->_command('HUP',  'D') }

# stop(): kill the child; every relayed connection closes and the port refuses connections.
sub stop
{
	my ($self) = @_;
	return unless $self->{pid};
	kill 'KILL', $self->{pid};
	waitpid($self->{pid}, 0);
	$self->{pid} = undef;
	close $self->{ack} if $self->{ack};
	$self->{ack} = undef;
}

# Only the process that started the proxy may stop it: forked copies of this object must not.
sub DESTROY
{
	my ($self) = @_;
	$self->stop if defined $self->{owner} && $self->{owner} == $$;
}

sub _spawn
{
	my ($self) = @_;
	my $listener;
	my $deadline = time + 5;
	while (1)
	{
		$listener = IO::Socket::INET->new(Listen => 64, LocalAddr => '127.0.0.1', LocalPort => $self->{port},
			ReuseAddr => 1, Proto => 'tcp');
		last if $listener;
		die "tcp proxy: cannot listen on 127.0.0.1:$self->{port}: $!" if !$self->{port} || time > $deadline;
		Time::HiRes::sleep(0.05);
	}
	$self->{port} = $listener->sockport;
	pipe(my $ack_r, my $ack_w) or die "tcp proxy: pipe: $!";
	my $pid = fork() // die "tcp proxy: fork: $!";
	if ($pid == 0)
	{
		close $ack_r;
		# Never return into the test script: no END blocks, no destructors, whatever happens.
		eval { _child($listener, $ack_w, $self->{target}) };
		print STDERR "tcp proxy child: $@" if $@;
		POSIX::_exit(1);
	}
	close $listener;
	close $ack_w;
	$self->{pid} = $pid;
	$self->{ack} = $ack_r;
	$self->_wait_ack('S', 'start');
}

sub _command
{
	my ($self, $signal, $tag) = @_;
	die "tcp proxy: not running" unless $self->{pid};
	kill $signal, $self->{pid} or die "tcp proxy: cannot signal child $self->{pid}: $!";
	$self->_wait_ack($tag, "SIG$signal");
	return $self;
}

# Read acknowledgement bytes until the expected one arrives (a late ack of an earlier command is skipped).
sub _wait_ack
{
	my ($self, $tag, $what) = @_;
	my $sel      = IO::Select->new($self->{ack});
	my $deadline = time + $ACK_TIMEOUT;
	while ((my $left = $deadline - time) > 0)
	{
		next unless $sel->can_read($left);    # EINTR or timeout: the loop condition decides
		my $n = sysread($self->{ack}, my $byte, 1);
		next if !defined $n && $! == EINTR;
		die "tcp proxy: child exited before acknowledging $what" unless $n;
		return if $byte eq $tag;
	}
	die "tcp proxy: child did not acknowledge $what within ${ACK_TIMEOUT}s";
}

# The relay. Each connection: client socket c, server socket s, bytes waiting to go up (client to
# server) and down (server to client), whether it is paused, whether each side has sent EOF, and when
# we half-closed the server side.
sub _child
{
	my ($listener, $ack, $target) = @_;
	my $parent = getppid();
	my @events;

	# Whatever handlers the test script installed are not ours.
	$SIG{$_} = 'DEFAULT' for qw(INT QUIT ALRM CHLD __DIE__ __WARN__);
	$SIG{PIPE} = 'IGNORE';
	$SIG{TERM} = sub { POSIX::_exit(0) };
	# Perl's safe signals: a handler only queues the event; the main loop acts on it.
	$SIG{USR1} = sub { push @events, 'pause' };
	$SIG{USR2} = sub { push @events, 'resume' };
	$SIG{HUP}  = sub { push @events, 'drop' };

	_close_inherited_fds(fileno($listener), fileno($ack));
	$listener->blocking(0);
	my $ack_byte = sub { syswrite($ack, $_[0]) };
	$ack_byte->('S');

	my @conns;
	while (1)
	{
		POSIX::_exit(0) if getppid() != $parent;    # the test script is gone: so are we

		while (my $ev = shift @events)
		{
			if ($ev eq 'pause')
			{
				$_->{paused} = 1 for @conns;
				$ack_byte->('P');
			}
			elsif ($ev eq 'resume')
			{
				for my $conn (@conns)
				{
					next unless $conn->{paused};
					$conn->{paused} = 0;
					_flush_up($conn);
				}
				@conns = grep { _settle($_) } @conns;
				$ack_byte->('R');
			}
			elsif ($ev eq 'drop')
			{
				for my $conn (@conns)
				{
					close $conn->{c} if $conn->{c};
					close $conn->{s} if $conn->{s};
				}
				@conns = ();
				$ack_byte->('D');
			}
		}

		my $rsel = IO::Select->new($listener);
		my $wsel = IO::Select->new;
		for my $conn (@conns)
		{
			$rsel->add($conn->{c}) if $conn->{c} && !$conn->{c_eof};
			$rsel->add($conn->{s}) if $conn->{s} && !$conn->{s_eof};
			$wsel->add($conn->{s}) if $conn->{s} && !$conn->{paused} && !$conn->{s_shut} && length $conn->{up};
			$wsel->add($conn->{c}) if $conn->{c} && length $conn->{down};
		}
		# An interrupting signal makes select return an empty list: go round and act on it.
		my ($readable, $writable) = IO::Select->select($rsel, $wsel, undef, $TICK);
		my %r = map { fileno($_) => 1 } @{ $readable || [] };
		my %w = map { fileno($_) => 1 } @{ $writable || [] };

		if ($r{ fileno($listener) })
		{
			while (my $client = $listener->accept)
			{
				my $server = IO::Socket::INET->new(PeerAddr => '127.0.0.1', PeerPort => $target, Proto => 'tcp',
					Timeout => 5);
				if (!$server)
				{
					close $client;    # nothing to relay to: refuse the way a dead server would
					next;
				}
				$client->blocking(0);
				$server->blocking(0);
				push @conns, { c => $client, s => $server, up => '', down => '', paused => 0 };
			}
		}

		for my $conn (@conns)
		{
			if ($conn->{c} && $r{ fileno($conn->{c}) })
			{
				my $n = sysread($conn->{c}, $conn->{up}, $CHUNK, length $conn->{up});
				if (!defined $n)
				{
					_close_client($conn) unless _transient();    # reset: nothing left to write to either
				}
				elsif ($n == 0)
				{
					$conn->{c_eof} = 1;    # FIN: replies may still be written to it
				}
			}
			if ($conn->{s} && $r{ fileno($conn->{s}) })
			{
				my $n = sysread($conn->{s}, my $buf, $CHUNK);
				if (!defined $n ? !_transient() : $n == 0)
				{
					$conn->{s_eof} = 1;
				}
				elsif ($n && $conn->{c})
				{
					$conn->{down} .= $buf;    # (with the client gone, the reply is discarded)
				}
			}
			_flush_up($conn) if $conn->{s} && $w{ fileno($conn->{s}) } && !$conn->{paused};
			if ($conn->{c} && $w{ fileno($conn->{c}) })
			{
				my $n = syswrite($conn->{c}, $conn->{down});
				if (defined $n)
				{
					substr($conn->{down}, 0, $n, '');
				}
				elsif (!_transient())
				{
					_close_client($conn);
				}
			}
		}
		@conns = grep { _settle($_) } @conns;
	}
}

sub _transient { return $! == EAGAIN || $! == EWOULDBLOCK || $! == EINTR }

sub _flush_up
{
	my ($conn) = @_;
	while ($conn->{s} && !$conn->{s_shut} && length $conn->{up})
	{
		my $n = syswrite($conn->{s}, $conn->{up});
		if (defined $n)
		{
			substr($conn->{up}, 0, $n, '');
			next;
		}
		last if _transient();
		close $conn->{s};    # the server is gone: what was pending for it is lost
		$conn->{s} = undef;
		$conn->{up} = '';
	}
}

sub _close_client
{
	my ($conn) = @_;
	close $conn->{c} if $conn->{c};
	$conn->{c}     = undef;
	$conn->{c_eof} = 1;
	$conn->{down}  = '';
}

# Apply the end-of-stream rules to one connection; returns false once both sides are closed.
sub _settle
{
	my ($conn) = @_;
	# Client finished and everything it sent has reached the server: pass the FIN on, then wait for
	# the server to close (reading and relaying/discarding its last replies meanwhile).
	if ($conn->{c_eof} && !$conn->{paused} && !length $conn->{up} && $conn->{s} && !$conn->{s_shut})
	{
		shutdown($conn->{s}, 1);
		$conn->{s_shut} = time;
	}
	if ($conn->{s} && ($conn->{s_eof} || ($conn->{s_shut} && time - $conn->{s_shut} > $LINGER)))
	{
		close $conn->{s};
		$conn->{s}  = undef;
		$conn->{up} = '';
	}
	# Server gone: close the client once the replies already received have been written to it.
	_close_client($conn) if !$conn->{s} && $conn->{c} && !length $conn->{down};
	return $conn->{c} || $conn->{s};
}

# Descriptors inherited from the test script (e.g. pipes to background psql sessions) must not be
# kept open by the relay, or their readers would never see EOF. They are pointed at /dev/null rather
# than closed: Perl's copies of the script's handles still count references to those descriptor
# numbers, and a socket of ours reusing one would then not really be closed by close().
sub _close_inherited_fds
{
	my %keep = map { $_ => 1 } 0, 1, 2, @_;
	opendir(my $dh, '/proc/self/fd') or return;
	my @fds = grep { /^\d+$/ } readdir $dh;
	$keep{ fileno($dh) } = 1;
	closedir $dh;
	my $null = POSIX::open('/dev/null', POSIX::O_RDWR()) // return;
	POSIX::dup2($null, $_) for grep { !$keep{$_} && $_ != $null } @fds;
	POSIX::close($null);
}

1;
