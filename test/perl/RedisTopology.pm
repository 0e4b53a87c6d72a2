# RedisTopology: the Redis deployments the TAP suites need beyond one plain redis-server —
#   - test certificates made with the openssl CLI (make_certs),
#   - a TLS-only redis-server (start_tls_redis, a RedisTopology::TlsRedis),
#   - a Sentinel topology: a master, two replicas and three Sentinels on free loopback ports
#     (start_sentinel_topology, a RedisTopology::Sentinels), with helpers that fail over, kill the
#     master, and stop and restart the replicas, each waiting until Sentinel and the data nodes agree.
# Plain servers still come from RedisLockTest::start_redis. Every process started here is killed
# (-9) at exit.
package RedisTopology;

use strict;
use warnings;

use Exporter 'import';
use File::Spec;
use IPC::Run ();
use PostgreSQL::Test::Utils ();
use RedisLockTest ();
use Time::HiRes ();

our @EXPORT_OK = qw(make_certs start_tls_redis start_sentinel_topology);

# Everything started here, killed at exit (before File::Temp removes the directories).
my @started;

END
{
	$_->stop for reverse @started;
}

# run_quiet(command...): runs it, returns its output; dies with the output when it fails.
sub run_quiet
{
	my @cmd = @_;
	my $out = '';
	IPC::Run::run(\@cmd, '<', \undef, '>&', \$out)
	  or die "command failed (exit " . ($? >> 8) . "): @cmd\n$out";
	return $out;
}

sub write_file
{
	my ($path, $text) = @_;
	open my $fh, '>', $path or die "cannot write $path: $!";
	print $fh $text;
	close $fh or die "cannot write $path: $!";
}

# The last lines of a log file, for error messages.
sub log_tail
{
	my ($path, $lines) = @_;
	open my $fh, '<', $path or return "(no $path)\n";
	my @all = <$fh>;
	my $from = @all > ($lines // 15) ? @all - ($lines // 15) : 0;
	return "--- $path\n" . join('', @all[ $from .. $#all ]);
}

sub fresh_dir
{
	return File::Spec->rel2abs(PostgreSQL::Test::Utils::tempdir(@_));
}

# kill -9 a RedisLockTest::Redis-like process and wait until it is gone. Unlike
# RedisLockTest::Redis::stop this counts a zombie as gone: a daemonized redis-server is reparented to
# PID 1, which here reaps only every second or two.
sub kill_and_wait
{
	my ($self) = @_;
	my $pid = $self->pid or return;
	kill 'KILL', $pid;
	kill 'CONT', $pid;
	Time::HiRes::usleep(10_000) while kill(0, $pid) && !is_zombie($pid);
	unlink "$self->{dir}/redis.pid";
}

# Whether the process in the object's pidfile is running (not gone, not a zombie).
sub running
{
	my ($self) = @_;
	my $pid = $self->pid;
	return defined $pid && kill(0, $pid) && !is_zombie($pid);
}

sub is_zombie
{
	my ($pid) = @_;
	open my $fh, '<', "/proc/$pid/stat" or return 1;
	my $stat = <$fh> // return 1;
	return $stat =~ /\)\s+[ZX]\s/;
}

sub random_serial
{
	return sprintf('0x%08x%08x', int(rand(2**31)), int(rand(2**32)));
}

############################################################################
# Certificates
############################################################################

my $CERT_DAYS = 5;

# Extension sections for the openssl.cnf written by make_certs.
my $CERT_EXTENSIONS = <<'EOF';
[req]
distinguished_name = req_dn
prompt = no
[req_dn]
CN = unused

[ca_ext]
basicConstraints = critical,CA:TRUE
keyUsage = critical,keyCertSign,cRLSign
subjectKeyIdentifier = hash

[server_ext]
basicConstraints = critical,CA:FALSE
keyUsage = critical,digitalSignature,keyEncipherment
extendedKeyUsage = serverAuth
subjectAltName = IP:127.0.0.1,DNS:localhost
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid,issuer

[wrongname_ext]
basicConstraints = critical,CA:FALSE
keyUsage = critical,digitalSignature,keyEncipherment
extendedKeyUsage = serverAuth
subjectAltName = DNS:wrong.example
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid,issuer

[client_ext]
basicConstraints = critical,CA:FALSE
keyUsage = critical,digitalSignature,keyEncipherment
extendedKeyUsage = clientAuth
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid,issuer

[selfsigned_ext]
basicConstraints = critical,CA:FALSE
keyUsage = critical,digitalSignature,keyEncipherment
extendedKeyUsage = serverAuth
subjectAltName = IP:127.0.0.1,DNS:localhost
subjectKeyIdentifier = hash
EOF

# A self-signed certificate (a CA or the self-signed server): writes NAME.crt and NAME.key.
sub self_signed_cert
{
	my ($dir, $name, $cn, $ext) = @_;
	run_quiet('openssl', 'req', '-x509', '-config', "$dir/openssl.cnf", '-extensions', $ext,
		'-newkey', 'rsa:2048', '-noenc', '-keyout', "$dir/$name.key", '-out', "$dir/$name.crt",
		'-days', $CERT_DAYS, '-subj', "/CN=$cn", '-set_serial', random_serial());
	chmod 0600, "$dir/$name.key";
}

# A certificate signed by the CA in ca.crt/ca.key: writes NAME.crt and NAME.key.
sub ca_signed_cert
{
	my ($dir, $name, $cn, $ext) = @_;
	run_quiet('openssl', 'req', '-new', '-config', "$dir/openssl.cnf", '-newkey', 'rsa:2048', '-noenc',
		'-keyout', "$dir/$name.key", '-out', "$dir/$name.csr", '-subj', "/CN=$cn");
	chmod 0600, "$dir/$name.key";
	run_quiet('openssl', 'x509', '-req', '-in', "$dir/$name.csr", '-CA', "$dir/ca.crt",
		'-CAkey', "$dir/ca.key", '-set_serial', random_serial(), '-days', $CERT_DAYS,
		'-extfile', "$dir/openssl.cnf", '-extensions', $ext, '-out', "$dir/$name.crt");
	unlink "$dir/$name.csr";
}

# make_certs(dir): a test CA and certificates signed by it, plus an unrelated CA and a self-signed
# server certificate. Returns { ca_crt, ca_key, server_crt, server_key, wrongname_crt,
# wrongname_key, client_crt, client_key, other_ca_crt, other_ca_key, selfsigned_crt,
# selfsigned_key } (absolute paths).
sub make_certs
{
	my ($dir) = @_;
	$dir = File::Spec->rel2abs($dir);
	write_file("$dir/openssl.cnf", $CERT_EXTENSIONS);
	self_signed_cert($dir, 'ca', 'redislock test CA', 'ca_ext');
	self_signed_cert($dir, 'other_ca', 'unrelated test CA', 'ca_ext');
	self_signed_cert($dir, 'selfsigned', 'localhost', 'selfsigned_ext');
	ca_signed_cert($dir, 'server', 'localhost', 'server_ext');
	ca_signed_cert($dir, 'wrongname', 'wrong.example', 'wrongname_ext');
	ca_signed_cert($dir, 'client', 'redislock test client', 'client_ext');
	return { map { ("${_}_crt" => "$dir/$_.crt", "${_}_key" => "$dir/$_.key") }
		  qw(ca other_ca selfsigned server wrongname client) };
}

############################################################################
# TLS redis-server
############################################################################

# start_tls_redis(certs => make_certs(...), cert, key, auth_clients => 'no'|'yes'|'optional',
#   password, cli_cacert, cli_client_cert => bool, args => [more redis-server arguments]):
# a redis-server that listens on TCP with TLS only (plain TCP port 0; the unix socket
# RedisLockTest::Redis gives every server stays plain), a RedisTopology::TlsRedis; {port} is the TLS
# port. cert/key default to the CA-signed server pair. ->cli verifies the server with cli_cacert
# (default the test CA: pass the self-signed certificate itself when the server uses it) and presents
# the client certificate when cli_client_cert (default: when auth_clients is not 'no'). redis-cli
# checks the chain but not the name, so a server with the wrongname pair still answers ->cli.
sub start_tls_redis
{
	my (%opt) = @_;
	my $certs = $opt{certs} or die "start_tls_redis: certs => make_certs(...) is required";
	my $auth_clients = $opt{auth_clients} // 'no';
	my $client_cert = $opt{cli_client_cert} // ($auth_clients ne 'no');
	my @cli_tls = ('--tls', '--cacert', $opt{cli_cacert} // $certs->{ca_crt});
	push @cli_tls, '--cert', $certs->{client_crt}, '--key', $certs->{client_key} if $client_cert;
	my $port = RedisLockTest::free_port();
	my $self = bless {
		port => $port,
		dir => fresh_dir(),
		cli_tls => \@cli_tls,
		args => [
			'--port', '0', '--tls-port', $port,
			'--tls-cert-file', $opt{cert} // $certs->{server_crt},
			'--tls-key-file', $opt{key} // $certs->{server_key},
			'--tls-ca-cert-file', $certs->{ca_crt},
			'--tls-auth-clients', $auth_clients,
			@{ $opt{args} // [] } ],
	}, 'RedisTopology::TlsRedis';
	$self->{auth} = $opt{password} if defined $opt{password};
	push @{ $self->{args} }, '--requirepass', $opt{password} if defined $opt{password};
	push @started, $self;
	$self->start;
	return $self;
}

############################################################################
# Sentinel topology
############################################################################

# Sentinel's internal periods (SENTINEL DEBUG, in ms) for the topology, instead of the stock
#   ping-period 1000: with down-after 1000 a Sentinel pings a new link (a master just switched to, a
#     replica just found) only when its down-after deadline passes, so it flags it +sdown for a tick;
#     right after a failover the other Sentinels' cached "master is down" votes (kept 5 s) turn that
#     into +odown and a second, spurious failover of the healthy new master (seen once in ~15 runs).
#   info-period 10000, publish-period 2000: a Sentinel turns a reachable old master into a replica
#     only 4 publish periods after the switch and at its next INFO, ~10 s after SENTINEL FAILOVER;
#     with these ~3 s. Replicas and Sentinels are found faster too.
my %FAST_SENTINEL_TIMERS = ('ping-period' => 250, 'info-period' => 1000, 'publish-period' => 500);

# start_sentinel_topology(master_name => 'mymaster', down_after_ms => 1000,
#   failover_timeout_ms => 10000, sentinel_password, data_password, data_args => [...],
#   sentinel_timers => { SENTINEL DEBUG timer => ms } (default the fast ones above; {} for stock)):
# a master, two replicas and three Sentinels (quorum 2) that know them and each other, a
# RedisTopology::Sentinels. data_args are more redis-server arguments for the data nodes.
# After a failover a Sentinel will not start another one for 2 x failover-timeout (20 s by default)
# if it voted in the last election; the previous leader still can, so back-to-back failovers work,
# but a lower failover_timeout_ms makes repeated ones less dependent on who led.
sub start_sentinel_topology
{
	my (%opt) = @_;
	my $self = bless {
		name => $opt{master_name} // 'mymaster',
		down_after_ms => $opt{down_after_ms} // 1000,
		failover_timeout_ms => $opt{failover_timeout_ms} // 10000,
		sentinel_password => $opt{sentinel_password},
		data_password => $opt{data_password},
		data_args => $opt{data_args} // [],
		sentinel_timers => $opt{sentinel_timers} // {%FAST_SENTINEL_TIMERS},
		data => [],
		sentinels => [],
	}, 'RedisTopology::Sentinels';
	$self->start_data_nodes;
	$self->start_sentinels;
	return $self;
}

package RedisTopology::TlsRedis;

use parent -norequire, 'RedisLockTest::Redis';

sub stop { RedisTopology::kill_and_wait(@_) }

# cli(args...): redis-cli's answer over TLS, trimmed.
sub cli
{
	my ($self, @args) = @_;
	my @cmd = ('redis-cli', '-h', '127.0.0.1', '-p', $self->{port}, @{ $self->{cli_tls} });
	push @cmd, '--no-auth-warning', '-a', $self->{auth} if defined $self->{auth};
	my ($out, $err) = ('', '');
	IPC::Run::run([ @cmd, @args ], '<', \undef, '>', \$out, '2>', \$err);
	chomp $out;
	return $out;
}

sub log_file { return "$_[0]{dir}/redis.log" }

# A data node of a RedisTopology::Sentinels: a RedisLockTest::Redis whose ->start makes it a replica
# of whichever node the Sentinels agree is master (unless that is this node: a master restarted
# before any failover comes back as an empty master, since nothing is persisted).
package RedisTopology::DataNode;

use parent -norequire, 'RedisLockTest::Redis';

sub stop { RedisTopology::kill_and_wait(@_) }

sub port { return $_[0]{port} }

sub log_file { return "$_[0]{dir}/redis.log" }

sub start
{
	my ($self) = @_;
	my $topology = $self->{topology};
	my $master_port = $topology->live_sentinels ? $topology->agreed_master_port : $self->{initial_master_port};
	my @role = defined $master_port && $master_port != $self->{port}
	  ? ('--replicaof', '127.0.0.1', $master_port) : ();
	local $self->{args} = [ @{ $self->{base_args} }, @role ];
	$self->SUPER::start;
}

sub alive { return RedisTopology::running($_[0]) }

# ROLE's first word: 'master', 'slave' or '' when it does not answer.
sub role
{
	my ($self) = @_;
	my ($role) = split /\n/, $self->cli('ROLE') // '';
	return $role // '';
}

# INFO replication as { field => value }.
sub replication
{
	my ($self) = @_;
	my %info;
	for (split /\r?\n/, $self->cli('INFO', 'replication') // '')
	{
		$info{$1} = $2 if /^(\w+):(.*)$/;
	}
	return \%info;
}

# Whether this node is a replica of the node on port, with the link up.
sub replicating_from
{
	my ($self, $port) = @_;
	my $info = $self->replication;
	return ($info->{role} // '') eq 'slave'
	  && ($info->{master_port} // '') eq $port
	  && ($info->{master_link_status} // '') eq 'up';
}

# A Sentinel: redis-server sentinel.conf --sentinel, with the RedisLockTest::Redis pid/stop/signal/cli.
# The config file is written once; Sentinel rewrites it (myid, known replicas and sentinels, epochs),
# so a restarted Sentinel keeps what it learned. {timers}: SENTINEL DEBUG settings applied at start.
package RedisTopology::Sentinel;

use parent -norequire, 'RedisLockTest::Redis';
use Time::HiRes qw(usleep);

sub stop { RedisTopology::kill_and_wait(@_) }

sub port { return $_[0]{port} }

sub log_file { return "$_[0]{dir}/redis.log" }

sub start
{
	my ($self) = @_;
	RedisTopology::write_file($self->{conf}, $self->{conf_text}) unless -e $self->{conf};
	RedisTopology::run_quiet('redis-server', $self->{conf}, '--sentinel');
	my $answers;
	for (1 .. 200)
	{
		last if $answers = ($self->cli('PING') // '') eq 'PONG';
		usleep(25_000);
	}
	die "sentinel on port $self->{port} does not answer\n" . RedisTopology::log_tail($self->log_file)
	  unless $answers;
	$self->set_timers;
}

# SENTINEL DEBUG <timer> <ms>...: not saved in the config file, so set at every start.
sub set_timers
{
	my ($self) = @_;
	my %timers = %{ $self->{timers} // {} } or return;
	my $answer = $self->cli('SENTINEL', 'DEBUG', map { ($_, $timers{$_}) } sort keys %timers) // '';
	die "SENTINEL DEBUG on port $self->{port} answers: $answer" unless $answer eq 'OK';
}

package RedisTopology::Sentinels;

use RedisLockTest qw(wait_until);
use Scalar::Util qw(weaken);
use Time::HiRes qw(usleep);

my @DATA_NODE_ARGS = ('--repl-diskless-sync', 'yes', '--repl-diskless-sync-delay', '0');

sub start_data_nodes
{
	my ($self) = @_;
	my @base = (@DATA_NODE_ARGS, @{ $self->{data_args} });
	push @base, '--requirepass', $self->{data_password}, '--masterauth', $self->{data_password}
	  if defined $self->{data_password};
	my $master_port;
	for my $i (0 .. 2)
	{
		my $node = bless {
			port => RedisLockTest::free_port(),
			dir => RedisTopology::fresh_dir("redis_data$i"),
			base_args => [@base],
			initial_master_port => $master_port,
			topology => $self,
		}, 'RedisTopology::DataNode';
		weaken($node->{topology});
		$node->{auth} = $self->{data_password} if defined $self->{data_password};
		$master_port //= $node->{port};
		push @started, $node;
		push @{ $self->{data} }, $node;
		$node->start;
	}
	$self->wait_replicas_synced;
}

sub sentinel_conf_text
{
	my ($self, $port, $dir) = @_;
	my $name = $self->{name};
	my $master_port = $self->{data}[0]{port};
	my $text = "port $port\nbind 127.0.0.1\ndaemonize yes\n"
	  . "logfile \"$dir/redis.log\"\npidfile \"$dir/redis.pid\"\ndir \"$dir\"\n"
	  . "sentinel monitor $name 127.0.0.1 $master_port 2\n"
	  . "sentinel down-after-milliseconds $name $self->{down_after_ms}\n"
	  . "sentinel failover-timeout $name $self->{failover_timeout_ms}\n"
	  . "sentinel parallel-syncs $name 1\n";
	$text .= "sentinel auth-pass $name $self->{data_password}\n" if defined $self->{data_password};
	# A Sentinel also authenticates to its peers with its requirepass (no sentinel-pass needed).
	$text .= "requirepass $self->{sentinel_password}\n" if defined $self->{sentinel_password};
	return $text;
}

sub start_sentinels
{
	my ($self) = @_;
	for my $i (0 .. 2)
	{
		my $port = RedisLockTest::free_port();
		my $dir = RedisTopology::fresh_dir("redis_sentinel$i");
		my $sentinel = bless {
			port => $port,
			dir => $dir,
			conf => "$dir/sentinel.conf",
			conf_text => $self->sentinel_conf_text($port, $dir),
			timers => $self->{sentinel_timers},
		}, 'RedisTopology::Sentinel';
		$sentinel->{auth} = $self->{sentinel_password} if defined $self->{sentinel_password};
		push @started, $sentinel;
		push @{ $self->{sentinels} }, $sentinel;
		$sentinel->start;
	}
	$self->wait_sentinels_converged;
	$self->{started} = 1;
}

sub name { return $_[0]{name} }

sub sentinels { return @{ $_[0]{sentinels} } }

sub sentinel_ports { return map { $_->{port} } @{ $_[0]{sentinels} } }

# redislock.sentinels: "127.0.0.1:p1,127.0.0.1:p2,127.0.0.1:p3".
sub sentinels_setting
{
	my ($self) = @_;
	return join ',', map { "127.0.0.1:$_" } $self->sentinel_ports;
}

sub data_nodes { return @{ $_[0]{data} } }

sub sentinel_cli
{
	my ($self, $i, @args) = @_;
	return $self->{sentinels}[$i]->cli(@args);
}

sub live_sentinels
{
	my ($self) = @_;
	return grep { RedisTopology::running($_) } @{ $self->{sentinels} };
}

sub node_on_port
{
	my ($self, $port) = @_;
	my ($node) = grep { $_->{port} == $port } @{ $self->{data} };
	return $node;
}

# The master port one Sentinel reports, or undef.
sub reported_master_port
{
	my ($self, $sentinel) = @_;
	my ($ip, $port) = split /\n/, $sentinel->cli('SENTINEL', 'get-master-addr-by-name', $self->{name}) // '';
	return defined $port && $port =~ /^\d+$/ ? $port : undef;
}

# The master port all live Sentinels agree on, or undef. Before the Sentinels exist: undef.
sub sentinel_master_port
{
	my ($self) = @_;
	my @live = $self->live_sentinels or return undef;
	my %ports;
	$ports{ $self->reported_master_port($_) // 'none' }++ for @live;
	my @agreed = grep { $_ ne 'none' && $ports{$_} == @live } keys %ports;
	return $agreed[0];
}

# The master port all live Sentinels agree on, waiting up to 30 s for them to agree.
sub agreed_master_port
{
	my ($self, $seconds) = @_;
	my $port;
	wait_until(sub { $port = $self->sentinel_master_port; defined $port }, $seconds // 30)
	  or $self->fail("sentinels do not agree on a master");
	return $port;
}

# A Sentinel's answer to SENTINEL master|replicas|sentinels <name>, parsed from redis-cli's raw
# output (each instance's field-value pairs, flattened) as a list of hashes.
sub sentinel_instances
{
	my ($self, $sentinel, $what) = @_;
	my @lines = split /\n/, $sentinel->cli('SENTINEL', $what, $self->{name}) // '', -1;
	return () unless @lines && $lines[0] eq 'name';
	my @instances;
	while (@lines >= 2)
	{
		my ($key, $value) = splice @lines, 0, 2;
		push @instances, {} if $key eq 'name' || !@instances;
		$instances[-1]{$key} = $value;
	}
	return @instances;
}

sub up_flags
{
	my ($flags, $kind) = @_;
	return ($flags // '') =~ /\b$kind\b/ && $flags !~ /s_down|o_down|disconnected/;
}

# Why this Sentinel is not ready yet ('' when it is): it must report the master, know both replicas
# up and know the two other Sentinels.
sub sentinel_not_ready
{
	my ($self, $sentinel, $master_port) = @_;
	my $reported = $self->reported_master_port($sentinel) // 'nothing';
	return "reports master $reported, not $master_port" if $reported ne $master_port;
	my @replicas = grep { up_flags($_->{flags}, 'slave') } $self->sentinel_instances($sentinel, 'replicas');
	my $want = grep { $_->{port} != $master_port && $_->alive } @{ $self->{data} };
	return "knows " . scalar(@replicas) . " replicas up, not $want" if @replicas != $want;
	my @others = grep { up_flags($_->{flags}, 'sentinel') } $self->sentinel_instances($sentinel, 'sentinels');
	my $others = $self->live_sentinels - 1;
	return "knows " . scalar(@others) . " other sentinels, not $others" if @others != $others;
	return '';
}

# Wait until every live Sentinel reports the master they agree on (at start: the first data node),
# knows each live replica up and knows the other live Sentinels.
sub wait_sentinels_converged
{
	my ($self, $seconds) = @_;
	my $master_port = $self->{started} ? $self->agreed_master_port($seconds) : $self->{data}[0]{port};
	my $why = '';
	wait_until(sub {
		for my $sentinel ($self->live_sentinels)
		{
			$why = $self->sentinel_not_ready($sentinel, $master_port);
			return 0 if $why;
		}
		return 1;
	}, $seconds // 30) or $self->fail("sentinels did not converge: sentinel $why");
}

# die with the message and the tail of every log.
sub fail
{
	my ($self, $message) = @_;
	my $logs = join '', map { RedisTopology::log_tail($_->log_file) } @{ $self->{data} }, @{ $self->{sentinels} };
	die "$message\n$logs";
}

# The data node Sentinel says is master, once every live Sentinel agrees and the node answers ROLE
# master (waits up to 30 s for that).
sub master
{
	my ($self, $seconds) = @_;
	my $master;
	wait_until(sub {
		my $port = $self->sentinel_master_port // return 0;
		my $node = $self->node_on_port($port) // return 0;
		return 0 unless $node->role eq 'master';
		$master = $node;
		return 1;
	}, $seconds // 30) or $self->fail("no master that all sentinels agree on and that answers ROLE master");
	return $master;
}

# The data nodes other than the master.
sub replicas
{
	my ($self) = @_;
	my $master = $self->master;
	return grep { $_ != $master } @{ $self->{data} };
}

# Wait until the master has every live replica connected, state=online.
sub wait_replicas_synced
{
	my ($self, $seconds) = @_;
	my $master_port = $self->live_sentinels ? $self->agreed_master_port($seconds) : $self->{data}[0]{port};
	my $master = $self->node_on_port($master_port);
	my @live = grep { $_ != $master && $_->alive } @{ $self->{data} };
	my $info = {};
	wait_until(sub {
		$info = $master->replication;
		my $online = grep { /state=online/ } map { $info->{$_} } grep { /^slave\d+$/ } keys %$info;
		return ($info->{connected_slaves} // -1) == @live && $online == @live
		  && !grep { !$_->replicating_from($master->{port}) } @live;
	}, $seconds // 30)
	  or $self->fail("master on port $master->{port} does not have its " . scalar(@live)
		  . " replicas online: connected_slaves=" . ($info->{connected_slaves} // '?'));
}

# SENTINEL FAILOVER on sentinel 0, retried while it answers INPROG or NOGOODSLAVE.
sub request_failover
{
	my ($self, $seconds) = @_;
	my $answer = '';
	wait_until(sub {
		$answer = $self->sentinel_cli(0, 'SENTINEL', 'FAILOVER', $self->{name}) // '';
		return 1 if $answer eq 'OK';
		usleep(200_000);
		return 0;
	}, $seconds // 10) or $self->fail("SENTINEL FAILOVER answers: $answer");
}

# Wait until all live Sentinels report a master other than old_port that answers ROLE master;
# returns that node.
sub wait_new_master
{
	my ($self, $old_port, $seconds) = @_;
	my $new;
	wait_until(sub {
		my $port = $self->sentinel_master_port // return 0;
		return 0 if $port == $old_port;
		my $node = $self->node_on_port($port) // return 0;
		return 0 unless $node->role eq 'master';
		$new = $node;
		return 1;
	}, $seconds // 30) or $self->fail("sentinels did not agree on a new master (old was port $old_port)");
	return $new;
}

# Wait until no live Sentinel has a failover of the master in progress. A Sentinel that led a
# failover keeps reporting the promoted replica until its failover ends, and if that replica dies
# first (a kill_master right after failover) the failover never ends: that Sentinel keeps answering
# the dead replica's address while the others report the newer master.
sub wait_failover_finished
{
	my ($self, $seconds) = @_;
	my $flags = '';
	wait_until(sub {
		for my $sentinel ($self->live_sentinels)
		{
			($flags) = map { $_->{flags} } $self->sentinel_instances($sentinel, 'master');
			return 0 if !defined $flags || $flags =~ /failover_in_progress/;
		}
		return 1;
	}, $seconds // 30) or $self->fail("a sentinel failover did not end (master flags: " . ($flags // 'none') . ")");
}

# failover(demote_old_master => 0, seconds => 30): SENTINEL FAILOVER, then wait until the Sentinels
# report the new master, it answers ROLE master, the failover has ended on every Sentinel and the old
# master replicates from the new one. Returns the new master.
# Sentinel demotes a reachable old master only 4 publish periods after the switch, at its next INFO
# (~2-3 s with the fast timers, ~10 s with stock ones); meanwhile the old master is still a writable
# master. With demote_old_master the helper sends it REPLICAOF <new master> itself as soon as the
# Sentinels agree, which is what Sentinel would do later, closing that window.
sub failover
{
	my ($self, %opt) = @_;
	my $seconds = $opt{seconds};
	my $old = $self->master;
	$self->request_failover;
	my $new = $self->wait_new_master($old->{port}, $seconds);
	$old->cli('REPLICAOF', '127.0.0.1', $new->{port}) if $opt{demote_old_master};
	$self->wait_failover_finished($seconds);
	wait_until(sub { $old->replicating_from($new->{port}) }, $seconds // 30)
	  or $self->fail("old master on port $old->{port} did not become a replica of port $new->{port}");
	return $new;
}

# kill_master(seconds => 30): kill -9 the master; wait until the Sentinels agree on another one that
# answers ROLE master and the failover has ended on every Sentinel. Returns (old, new); old stays
# stopped (->start brings it back as a replica of the new master).
sub kill_master
{
	my ($self, %opt) = @_;
	my $seconds = $opt{seconds};
	my $old = $self->master;
	$old->stop;
	my $new = $self->wait_new_master($old->{port}, $seconds);
	$self->wait_failover_finished($seconds);
	return ($old, $new);
}

# kill -9 the two nodes that are not master.
sub stop_replicas
{
	my ($self) = @_;
	my @replicas = $self->replicas;
	$_->stop for @replicas;
	return @replicas;
}

# Start the stopped non-master nodes again as replicas of the master; wait until they are online.
sub start_replicas
{
	my ($self) = @_;
	my $master = $self->master;
	$_->start for grep { $_ != $master && !$_->alive } @{ $self->{data} };
	$self->wait_replicas_synced;
}

1;
