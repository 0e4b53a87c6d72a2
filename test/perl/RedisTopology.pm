# RedisTopology: the Redis deployments the TAP suites need beyond one plain redis-server —
#   - test certificates made with the openssl CLI (make_certs),
#   - a TLS-only redis-server (start_tls_redis, a RedisTopology::TlsRedis),
#   - a Sentinel topology: a master, two replicas and three Sentinels on free loopback ports
#     (start_sentinel_topology, a RedisTopology::Sentinels), with helpers that fail over, kill the
#     master, and stop and restart the replicas, each waiting until Sentinel and the data nodes agree,
#   - a Redis Cluster: three masters and three replicas on free loopback ports
#     (start_cluster_topology, a RedisTopology::Cluster), with helpers that find a key name per master,
#     migrate a slot (whole, or step by step to hold it half-migrated), fail over, kill a master and
#     restart a node, each waiting until every node agrees.
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

our @EXPORT_OK = qw(make_certs start_tls_redis start_sentinel_topology start_cluster_topology);

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

############################################################################
# Redis Cluster
############################################################################

# Arguments of every cluster node, beyond RedisLockTest::Redis's (port, bind 127.0.0.1, no save, no
# appendonly, dir, pidfile, logfile):
#   cluster-port: the bus port is allocated too (port + 10000 may be above 65535 for an ephemeral port),
#   cluster-announce-ip: what CLUSTER NODES/SLOTS and MOVED name, whatever a node learnt of itself,
#   cluster-replica-validity-factor 0: a replica always tries to fail over, however long its link was
#     down (a kill -9 right after a restart must still promote it),
#   cluster-allow-replica-migration no: a replica stays with its master (the topology stays as built),
#   repl-diskless-load swapdb, repl-diskless-sync: no dump.rdb is written by a full sync, so a
#     restarted node comes back empty, as a node without persistence does.
my @CLUSTER_NODE_ARGS = ('--cluster-enabled', 'yes', '--cluster-announce-ip', '127.0.0.1',
	'--cluster-replica-validity-factor', '0', '--cluster-allow-replica-migration', 'no',
	'--maxmemory-policy', 'noeviction', '--protected-mode', 'no',
	'--repl-diskless-sync', 'yes', '--repl-diskless-sync-delay', '0', '--repl-diskless-load', 'swapdb');

# start_cluster_topology(masters => 3, replicas => 1 (per master), node_timeout_ms => 1000,
#   args => [more redis-server arguments], seconds => 30): a Redis Cluster made by
# `redis-cli --cluster create ... --cluster-replicas N`, returned once every node says cluster_state:ok,
# all agree on who serves which slot and every replica is synced: a RedisTopology::Cluster.
# Its nodes are RedisTopology::ClusterNode objects; ->nodes lists them in creation order (the first
# `masters` were created as the masters). Every node is killed (-9) at exit.
sub start_cluster_topology
{
	my (%opt) = @_;
	my $self = bless {
		n_masters => $opt{masters} // 3,
		n_replicas => $opt{replicas} // 1,
		node_timeout_ms => $opt{node_timeout_ms} // 1000,
		args => $opt{args} // [],
		nodes => [],
	}, 'RedisTopology::Cluster';
	$self->start_nodes;
	$self->create($opt{seconds});
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

# An error reply of RedisTopology::ClusterNode::command: a blessed reference to its text.
package RedisTopology::ReplyError;

use overload '""' => sub { ${ $_[0] } }, fallback => 1;

sub new { my ($class, $text) = @_; return bless \$text, $class }

# A node of a RedisTopology::Cluster: a RedisLockTest::Redis started with the cluster arguments and its
# own nodes.conf in its directory, kept across ->stop and ->start, so a restarted node rejoins with its
# identity (a master that was failed over comes back as a replica of the node that replaced it). Its
# data is not kept: it comes back empty and resyncs from its master.
package RedisTopology::ClusterNode;

use parent -norequire, 'RedisLockTest::Redis';
use IO::Select;
use IO::Socket::INET;
use Time::HiRes ();

# kill -9, waiting until the process is gone.
sub stop { RedisTopology::kill_and_wait(@_) }

sub port { return $_[0]{port} }

# "127.0.0.1:<port>"
sub addr { return "127.0.0.1:$_[0]{port}" }

sub log_file { return "$_[0]{dir}/redis.log" }

sub alive { return RedisTopology::running($_[0]) }

sub start
{
	my ($self) = @_;
	unlink "$self->{dir}/dump.rdb";
	local $self->{args} = [ '--cluster-config-file', "$self->{dir}/nodes.conf", '--cluster-port', $self->{cport},
		'--cluster-node-timeout', $self->{node_timeout_ms}, @CLUSTER_NODE_ARGS, @{ $self->{extra_args} } ];
	$self->SUPER::start;
}

# command(args...): one command over this object's own connection to the node (RESP, made again
# when the node closed it), answered within timeout_ms (default 10 s). Returns the reply as Perl data:
# a string (status, integer, bulk), undef (nil), an array ref, or a RedisTopology::ReplyError for an
# error reply; a RedisTopology::ReplyError 'NOCONNECTION ...' when the node cannot be reached or does
# not answer in time (the connection is then dropped). Polling the six nodes with redis-cli costs
# 50 ms a call here; this ~0.1 ms.
sub command
{
	my ($self, @args) = @_;
	my $sock = $self->{sock};
	# a connection the node has closed (restarted, CLIENT KILL) reads as ready: drop it first
	if ($sock && IO::Select->new($sock)->can_read(0))
	{
		close $sock;
		$sock = undef;
	}
	$sock //= IO::Socket::INET->new(PeerAddr => '127.0.0.1', PeerPort => $self->{port}, Proto => 'tcp', Timeout => 2);
	return RedisTopology::ReplyError->new("NOCONNECTION cannot connect to port $self->{port}: $!") unless $sock;
	$self->{sock} = $sock;
	$self->{rbuf} = '';
	my $reply = eval {
		local $SIG{PIPE} = 'IGNORE';
		my $req = '*' . scalar(@args) . "\r\n" . join('', map { '$' . length($_) . "\r\n$_\r\n" } @args);
		while (length $req)
		{
			my $n = syswrite($sock, $req);
			die "write: $!\n" unless $n;
			substr($req, 0, $n) = '';
		}
		$self->read_reply(Time::HiRes::time() + ($self->{timeout_ms} // 10_000) / 1000);
	};
	return $reply unless $@;
	close $sock;
	delete $self->{sock};
	chomp(my $why = $@);
	return RedisTopology::ReplyError->new("NOCONNECTION port $self->{port}: $why");
}

sub read_more
{
	my ($self, $deadline) = @_;
	my $left = $deadline - Time::HiRes::time();
	die "no answer in time\n" if $left <= 0 || !IO::Select->new($self->{sock})->can_read($left);
	my $n = sysread($self->{sock}, $self->{rbuf}, 65536, length $self->{rbuf});
	die "read: " . (defined $n ? 'connection closed' : $!) . "\n" unless $n;
}

sub read_reply
{
	my ($self, $deadline) = @_;
	my $end;
	$self->read_more($deadline) while ($end = index($self->{rbuf}, "\r\n")) < 0;
	my $line = substr($self->{rbuf}, 0, $end + 2, '');
	my ($type, $rest) = (substr($line, 0, 1), substr($line, 1, $end - 1));
	return $rest if $type eq '+' || $type eq ':';
	return RedisTopology::ReplyError->new($rest) if $type eq '-';
	if ($type eq '$')
	{
		return undef if $rest < 0;
		$self->read_more($deadline) while length($self->{rbuf}) < $rest + 2;
		my $data = substr($self->{rbuf}, 0, $rest + 2, '');
		return substr($data, 0, $rest);
	}
	if ($type eq '*')
	{
		return undef if $rest < 0;
		return [ map { $self->read_reply($deadline) } 1 .. $rest ];
	}
	die "unexpected reply: $line\n";
}

# cli(args...): the answer as redis-cli prints it (not to a terminal), trimmed: an error reply as its
# text ("MOVED 1234 127.0.0.1:5678"), nil as '', an array's elements one a line; '' when the node does
# not answer.
sub cli
{
	my ($self, @args) = @_;
	my $reply = $self->command(@args);
	return '' if ref $reply eq 'RedisTopology::ReplyError' && $$reply =~ /^NOCONNECTION /;
	return cli_text($reply);
}

sub cli_text
{
	my ($reply) = @_;
	return '' unless defined $reply;
	return join "\n", map { cli_text($_) } @$reply if ref $reply eq 'ARRAY';
	return $$reply if ref $reply eq 'RedisTopology::ReplyError';
	return $reply;
}

# The node's cluster id (kept in nodes.conf, so the same after a restart).
sub id
{
	my ($self) = @_;
	return $self->{id} if defined $self->{id};
	my $id = $self->cli('CLUSTER', 'MYID');
	die "CLUSTER MYID on port $self->{port} answers: $id" unless $id =~ /^[0-9a-f]{40}$/;
	return $self->{id} = $id;
}

# ROLE's first word: 'master', 'slave' or '' when it does not answer.
sub role
{
	my ($self) = @_;
	my ($role) = split /\n/, $self->cli('ROLE');
	return $role // '';
}

# INFO <section> as { field => value }.
sub info
{
	my ($self, $section) = @_;
	return RedisTopology::Cluster::fields($self->cli('INFO', $section // 'default'));
}

# CLUSTER INFO as { field => value }.
sub cluster_info
{
	my ($self) = @_;
	return RedisTopology::Cluster::fields($self->cli('CLUSTER', 'INFO'));
}

# This node's CLUSTER NODES, parsed: { id => { id, port, flags => { master => 1, ... }, master_id
# (undef for a master), epoch, link, slots => [ [first, last], ... ], migrating => { slot => id },
# importing => { slot => id } } } (migrating and importing appear only in the node's own entry).
sub view
{
	my ($self) = @_;
	my %view;
	for my $line (split /\r?\n/, $self->cli('CLUSTER', 'NODES'))
	{
		my ($id, $addr, $flags, $master, undef, undef, $epoch, $link, @slots) = split ' ', $line;
		next unless defined $link && $id =~ /^[0-9a-f]{40}$/;
		my ($port) = $addr =~ /:(\d+)@/;
		my $node = {
			id => $id, port => $port, flags => { map { $_ => 1 } split /,/, $flags },
			master_id => $master eq '-' ? undef : $master, epoch => $epoch, link => $link,
			slots => [], migrating => {}, importing => {},
		};
		for (@slots)
		{
			if (/^\[(\d+)->-([0-9a-f]{40})\]$/) { $node->{migrating}{$1} = $2 }
			elsif (/^\[(\d+)-<-([0-9a-f]{40})\]$/) { $node->{importing}{$1} = $2 }
			elsif (/^(\d+)(?:-(\d+))?$/) { push @{ $node->{slots} }, [ $1, $2 // $1 ] }
		}
		$view{$id} = $node;
	}
	return \%view;
}

# A Redis Cluster made by start_cluster_topology. Who is master changes with failovers: ->masters,
# ->replicas, ->replica_of and ->master_of ask the nodes each time (once they agree). Masters are
# numbered by the lowest slot each serves (0 serves slot 0 as long as slot 0 is not migrated).
package RedisTopology::Cluster;

use RedisLockTest qw(wait_until);
use Time::HiRes qw(usleep);

# "field:value" lines as { field => value }.
sub fields
{
	my ($text) = @_;
	my %fields;
	for (split /\r?\n/, $text // '')
	{
		$fields{$1} = $2 if /^(\w+):(.*)$/;
	}
	return \%fields;
}

sub start_nodes
{
	my ($self) = @_;
	my %taken;
	my $free_port = sub {
		my $port;
		do { $port = RedisLockTest::free_port() } while $taken{$port}++;
		return $port;
	};
	for my $i (0 .. $self->{n_masters} * (1 + $self->{n_replicas}) - 1)
	{
		my $node = bless {
			port => $free_port->(),
			cport => $free_port->(),
			dir => RedisTopology::fresh_dir("redis_cluster$i"),
			node_timeout_ms => $self->{node_timeout_ms},
			extra_args => $self->{args},
		}, 'RedisTopology::ClusterNode';
		push @started, $node;
		push @{ $self->{nodes} }, $node;
		$node->start;
	}
}

sub create
{
	my ($self, $seconds) = @_;
	my @cmd = ('redis-cli', '--cluster', 'create', (map { $_->addr } @{ $self->{nodes} }),
		'--cluster-replicas', $self->{n_replicas}, '--cluster-yes');
	eval { RedisTopology::run_quiet(@cmd); 1 } or $self->fail("redis-cli --cluster create failed: $@");
	$self->wait_converged(seconds => $seconds);
}

# die with the message and the tail of every node's log.
sub fail
{
	my ($self, $message) = @_;
	my $logs = join '', map { RedisTopology::log_tail($_->log_file, 10) } @{ $self->{nodes} };
	die "$message\n$logs";
}

# Every node, in creation order (dead ones too).
sub nodes { return @{ $_[0]{nodes} } }

sub live_nodes { return grep { $_->alive } @{ $_[0]{nodes} } }

sub node_by_id
{
	my ($self, $id) = @_;
	return undef unless defined $id;
	my ($node) = grep { $_->id eq $id } @{ $self->{nodes} };
	return $node;
}

sub node_on_port
{
	my ($self, $port) = @_;
	my ($node) = grep { $_->{port} == $port } @{ $self->{nodes} };
	return $node;
}

# redislock.cluster_nodes naming one node: "127.0.0.1:<port>" (default the first node created, a
# master at creation).
sub seed_setting
{
	my ($self, $node) = @_;
	return ($node // $self->{nodes}[0])->addr;
}

# redislock.cluster_nodes naming every node.
sub nodes_setting
{
	my ($self) = @_;
	return join ',', map { $_->addr } @{ $self->{nodes} };
}

# cli(args...) on the first live node.
sub cli_any
{
	my ($self, @args) = @_;
	my ($node) = $self->live_nodes or $self->fail("no live cluster node");
	return $node->cli(@args);
}

# What a view says about who serves which slots and who replicates whom (flags such as fail, pfail
# and myself left out).
sub view_signature
{
	my ($view) = @_;
	my @entries;
	for my $id (sort keys %$view)
	{
		my $n = $view->{$id};
		next if $n->{flags}{handshake} || $n->{flags}{noaddr};
		my $role = $n->{flags}{master} ? 'master' : $n->{flags}{slave} ? 'slave' : '?';
		push @entries, join ':', $id, $role, $n->{master_id} // '-', join ',', map { "$_->[0]-$_->[1]" } @{ $n->{slots} };
	}
	return join ';', @entries;
}

# The layout every live node agrees on (a view, see RedisTopology::ClusterNode::view), or undef while
# they differ or one does not answer. In list context also the views of each live node, by port.
sub agreed_view
{
	my ($self) = @_;
	my ($agreed, $signature, %views);
	for my $node ($self->live_nodes)
	{
		my $view = $node->view;
		return undef unless %$view;
		$views{ $node->{port} } = $view;
		my $s = view_signature($view);
		if (!defined $agreed) { ($agreed, $signature) = ($view, $s) }
		elsif ($s ne $signature) { return undef }
	}
	return wantarray ? ($agreed, \%views) : $agreed;
}

# The agreed layout, waiting up to 30 s for the nodes to agree.
sub view
{
	my ($self, $seconds) = @_;
	my $view;
	wait_until(sub { $view = $self->agreed_view; defined $view }, $seconds // 30)
	  or $self->fail("the cluster's nodes do not agree on who serves which slots");
	return $view;
}

# The masters serving slots, ordered by the lowest slot each serves.
sub masters
{
	my ($self) = @_;
	my $view = $self->view;
	my @masters = sort { $a->{slots}[0][0] <=> $b->{slots}[0][0] }
	  grep { $_->{flags}{master} && @{ $_->{slots} } } values %$view;
	return map { $self->node_by_id($_->{id}) } @masters;
}

# The nodes that are replicas (live or not), ordered as their masters are in ->masters.
sub replicas
{
	my ($self) = @_;
	my $view = $self->view;
	my %rank;
	my @masters = $self->masters;
	$rank{ $masters[$_]->id } = $_ for 0 .. $#masters;
	my @replicas = sort { ($rank{ $a->{master_id} } // 99) <=> ($rank{ $b->{master_id} } // 99) || $a->{port} <=> $b->{port} }
	  grep { $_->{flags}{slave} } values %$view;
	return map { $self->node_by_id($_->{id}) } @replicas;
}

# The first live replica of a master (undef if none).
sub replica_of
{
	my ($self, $master) = @_;
	my $view = $self->view;
	my ($replica) = grep { $_->alive } map { $self->node_by_id($_->{id}) }
	  grep { $_->{flags}{slave} && ($_->{master_id} // '') eq $master->id } values %$view;
	return $replica;
}

# The master a replica replicates (undef for a master).
sub master_of
{
	my ($self, $node) = @_;
	return $self->node_by_id($self->view->{ $node->id }{master_id});
}

# CLUSTER KEYSLOT of a Redis key.
sub slot_of
{
	my ($self, $key) = @_;
	my $slot = $self->cli_any('CLUSTER', 'KEYSLOT', $key);
	$self->fail("CLUSTER KEYSLOT $key answers: $slot") unless $slot =~ /^\d+$/;
	return $slot;
}

# The master serving a slot, as all live nodes agree (it may be dead: a master killed before its
# replica is promoted).
sub node_for_slot
{
	my ($self, $slot) = @_;
	my $view = $self->view;
	for my $n (values %$view)
	{
		return $self->node_by_id($n->{id}) if $n->{flags}{master} && grep { $_->[0] <= $slot && $slot <= $_->[1] } @{ $n->{slots} };
	}
	return undef;
}

# The Redis key of redislock's lock hash for a lock name: "{<key_prefix><name>}".
sub lock_key
{
	my ($self, $name, $key_prefix) = @_;
	return '{' . ($key_prefix // 'redislock:') . $name . '}';
}

# The slot of a lock name's keys, and the master serving it.
sub lock_slot { my ($self, $name, $key_prefix) = @_; return $self->slot_of($self->lock_key($name, $key_prefix)) }

sub master_for_lock
{
	my ($self, $name, $key_prefix) = @_;
	return $self->node_for_slot($self->lock_slot($name, $key_prefix));
}

# The owner field of a lock's hash on the master serving its slot ('' when not held).
sub lock_owner
{
	my ($self, $name, $key_prefix) = @_;
	return $self->master_for_lock($name, $key_prefix)->cli('HGET', $self->lock_key($name, $key_prefix), 'owner');
}

# key_on_master(i, name_prefix, key_prefix = 'redislock:'): the first lock name "<name_prefix>-<n>"
# whose keys ("{<key_prefix><name>}") fall on master i of ->masters. In list context also its slot.
sub key_on_master
{
	my ($self, $i, $name_prefix, $key_prefix) = @_;
	my $master = ($self->masters)[$i] or $self->fail("no master $i");
	my @ranges = @{ $self->view->{ $master->id }{slots} };
	for my $n (0 .. 10_000)
	{
		my $name = "$name_prefix-$n";
		my $slot = $self->slot_of($self->lock_key($name, $key_prefix));
		next unless grep { $_->[0] <= $slot && $slot <= $_->[1] } @ranges;
		return wantarray ? ($name, $slot) : $name;
	}
	$self->fail("no name $name_prefix-N falls on master $i");
}

# Slot migration, as redis-cli --cluster reshard does it: begin_migration (IMPORTING on the target,
# MIGRATING on the source), move_keys (GETKEYSINSLOT + MIGRATE, in batches), finish_migration (SETSLOT
# NODE on the target, the source and the other masters; waits until every node agrees).
# Between move_keys and finish_migration the slot is half-migrated: the source answers ASK for keys
# it no longer has.
sub begin_migration
{
	my ($self, $slot, $from, $to) = @_;
	my $answer = $to->cli('CLUSTER', 'SETSLOT', $slot, 'IMPORTING', $from->id);
	$self->fail("CLUSTER SETSLOT $slot IMPORTING on port $to->{port} answers: $answer") unless $answer eq 'OK';
	$answer = $from->cli('CLUSTER', 'SETSLOT', $slot, 'MIGRATING', $to->id);
	$self->fail("CLUSTER SETSLOT $slot MIGRATING on port $from->{port} answers: $answer") unless $answer eq 'OK';
}

# move_keys(slot, from, to, batch => 100, timeout_ms => 5000): MIGRATEs every key of the slot from the
# source to the target (keeping their TTLs); returns how many were moved.
sub move_keys
{
	my ($self, $slot, $from, $to, %opt) = @_;
	my $moved = 0;
	for (1 .. 1000)
	{
		my @keys = grep { length } split /\n/, $from->cli('CLUSTER', 'GETKEYSINSLOT', $slot, $opt{batch} // 100);
		return $moved unless @keys;
		my $answer = $from->cli('MIGRATE', '127.0.0.1', $to->{port}, '', 0, $opt{timeout_ms} // 5000, 'KEYS', @keys);
		$self->fail("MIGRATE of slot $slot from port $from->{port} to $to->{port} answers: $answer")
		  unless $answer eq 'OK' || $answer eq 'NOKEY';
		$moved += @keys;
	}
	$self->fail("slot $slot on port $from->{port} does not empty");
}

sub finish_migration
{
	my ($self, $slot, $from, $to, %opt) = @_;
	my @others = grep { $_ != $from && $_ != $to && $_->alive } $self->masters;
	$self->move_keys($slot, $from, $to);
	# the target first: being IMPORTING, it bumps its config epoch, so its claim wins everywhere
	my $answer = $to->cli('CLUSTER', 'SETSLOT', $slot, 'NODE', $to->id);
	$self->fail("CLUSTER SETSLOT $slot NODE on port $to->{port} answers: $answer") unless $answer eq 'OK';
	# the source refuses while it holds keys of the slot (created there meanwhile): move them again
	wait_until(sub {
		$self->move_keys($slot, $from, $to);
		($answer = $from->cli('CLUSTER', 'SETSLOT', $slot, 'NODE', $to->id)) eq 'OK';
	}, 5) or $self->fail("CLUSTER SETSLOT $slot NODE on port $from->{port} answers: $answer");
	$_->cli('CLUSTER', 'SETSLOT', $slot, 'NODE', $to->id) for @others;
	$self->wait_converged(seconds => $opt{seconds}, check => sub {
		my ($view, $views) = @_;
		my $owner = $self->node_for_slot_in($view, $slot) // '';
		return "slot $slot is served by " . ($owner ? "port $owner->{port}" : 'nobody') . ", not port $to->{port}" if $owner != $to;
		for my $port (keys %$views)
		{
			for my $n (values %{ $views->{$port} })
			{
				return "port $port still has slot $slot migrating or importing"
				  if exists $n->{migrating}{$slot} || exists $n->{importing}{$slot};
			}
		}
		return '';
	});
}

# migrate_slot(slot, from, to): the whole migration; returns how many keys were moved.
sub migrate_slot
{
	my ($self, $slot, $from, $to, %opt) = @_;
	$self->begin_migration($slot, $from, $to);
	my $moved = $self->move_keys($slot, $from, $to);
	$self->finish_migration($slot, $from, $to, %opt);
	return $moved;
}

sub node_for_slot_in
{
	my ($self, $view, $slot) = @_;
	for my $n (values %$view)
	{
		return $self->node_by_id($n->{id}) if $n->{flags}{master} && grep { $_->[0] <= $slot && $slot <= $_->[1] } @{ $n->{slots} };
	}
	return undef;
}

# Why the cluster is not settled yet ('' once it is): every live node answers cluster_state:ok and
# knows every node, they agree on the layout, every slot-serving master is alive and seen by no live
# node as failing, and every live replica has its link to its master up, synced, and is online on the
# master's side. check->(agreed view, { port => view }) may add a condition (returns why not, or '').
sub not_converged
{
	my ($self, $check) = @_;
	my @live = $self->live_nodes;
	for my $node (@live)
	{
		my $state = $node->cluster_info->{cluster_state} // 'no answer';
		return "port $node->{port}: cluster_state $state" if $state ne 'ok';
	}
	my ($view, $views) = $self->agreed_view;
	return 'the nodes do not agree on who serves which slots' unless $view;
	return 'not every node knows every node' unless keys %$view == @{ $self->{nodes} };
	my %live = map { $_->id => $_ } @live;
	for my $n (values %$view)
	{
		return "master on port $n->{port} serves slots but is down" if $n->{flags}{master} && @{ $n->{slots} } && !$live{ $n->{id} };
	}
	for my $port (keys %$views)
	{
		for my $n (values %{ $views->{$port} })
		{
			return "port $port sees live port $n->{port} as failing"
			  if $live{ $n->{id} } && ($n->{flags}{fail} || $n->{flags}{'fail?'});
		}
	}
	for my $n (grep { $_->{flags}{slave} && $live{ $_->{id} } } values %$view)
	{
		my $replica = $live{ $n->{id} };
		my $master = $live{ $n->{master_id} // '' } or return "replica on port $n->{port} has no live master";
		my $r = $replica->info('replication');
		return "replica on port $n->{port} is not synced with port $master->{port}"
		  unless ($r->{role} // '') eq 'slave' && ($r->{master_port} // '') eq $master->{port}
		  && ($r->{master_link_status} // '') eq 'up' && ($r->{master_sync_in_progress} // 1) eq '0';
		my $m = $master->info('replication');
		return "master on port $master->{port} does not list replica $n->{port} online"
		  unless grep { /port=$n->{port},state=online/ } map { $m->{$_} } grep { /^slave\d+$/ } keys %$m;
	}
	return $check ? $check->($view, $views) : '';
}

# wait_converged(seconds => 30, check => sub): wait until not_converged says ''.
sub wait_converged
{
	my ($self, %opt) = @_;
	my $why = '';
	wait_until(sub { ($why = $self->not_converged($opt{check})) eq '' }, $opt{seconds} // 30)
	  or $self->fail("the cluster did not settle: $why");
}

# Wait until every live replica has received everything its master had written when this was called
# (replication offsets), e.g. a lock and its waiters' queue entries before a kill -9 of the master.
sub wait_replicas_synced
{
	my ($self, %opt) = @_;
	for my $master (grep { $_->alive } $self->masters)
	{
		my $offset = $master->info('replication')->{master_repl_offset} // 0;
		my $view = $self->view;
		for my $replica (grep { $_->alive } map { $self->node_by_id($_->{id}) }
			grep { $_->{flags}{slave} && ($_->{master_id} // '') eq $master->id } values %$view)
		{
			my $r = {};
			# and online in the master's view (after the replica's first ACK): WAIT counts only those
			wait_until(sub {
				$r = $replica->info('replication');
				my $m = $master->info('replication');
				my ($seen) = grep { /port=\Q$replica->{port}\E,/ } map { $m->{$_} } grep { /^slave\d+$/ } keys %$m;
				($r->{master_link_status} // '') eq 'up' && ($r->{slave_repl_offset} // -1) >= $offset
				  && defined $seen && $seen =~ /state=online/;
			}, $opt{seconds} // 30) or $self->fail("replica on port $replica->{port} did not reach offset $offset of port $master->{port}"
				  . " (at " . ($r->{slave_repl_offset} // '?') . ", link " . ($r->{master_link_status} // '?') . ")");
		}
		# a replica just resynchronised may take a while to acknowledge the first write after it (0.4 s
		# seen): write and WAIT once here, so that the tests' own WAITs (wait_replicas_timeout, 500 ms)
		# meet a replica that acknowledges at once
		my $n = grep { $_->{flags}{slave} && ($_->{master_id} // '') eq $master->id && $self->node_by_id($_->{id})->alive }
		  values %$view;
		next unless $n > 0;
		my $warm;
		for my $j (1 .. 10000)
		{
			$warm = "rt-warm-$j";
			last if $self->node_for_slot($self->slot_of($warm))->id eq $master->id;
		}
		$master->cli('SET', $warm, '1', 'PX', '1000');
		my $acked = $master->cli('WAIT', $n, 5000);
		$self->fail("master on port $master->{port}: WAIT $n after a write answered $acked") if $acked ne $n;
	}
}

# failover(replica, mode => '' | 'FORCE' | 'TAKEOVER', seconds => 30): CLUSTER FAILOVER on the replica,
# then wait until every node agrees it is the master of its old master's slots, the old master
# replicates from it and the cluster has settled. Returns the old master.
sub failover
{
	my ($self, $replica, %opt) = @_;
	my $old = $self->master_of($replica) or $self->fail("port $replica->{port} is not a replica");
	my $answer = $replica->cli('CLUSTER', 'FAILOVER', $opt{mode} ? $opt{mode} : ());
	$self->fail("CLUSTER FAILOVER on port $replica->{port} answers: $answer") unless $answer eq 'OK';
	$self->wait_converged(seconds => $opt{seconds}, check => sub {
		my ($view) = @_;
		my $n = $view->{ $replica->id };
		return "port $replica->{port} is not a master serving slots yet" unless $n->{flags}{master} && @{ $n->{slots} };
		return '' unless $old->alive;
		return "old master on port $old->{port} does not replicate port $replica->{port} yet"
		  unless ($view->{ $old->id }{master_id} // '') eq $replica->id;
		return '';
	});
	return $old;
}

# kill_master(master, seconds => 30): kill -9 the master, then wait until its replica is promoted
# (after cluster-node-timeout and the election) and the surviving nodes have settled. Returns the
# promoted replica; the old master stays down (restart_node brings it back as a replica).
sub kill_master
{
	my ($self, $master, %opt) = @_;
	my $replica = $self->replica_of($master) or $self->fail("master on port $master->{port} has no live replica");
	$master->stop;
	return $self->wait_promoted($replica, %opt);
}

# wait_promoted(replica, seconds => 30): wait until every live node agrees the replica is a master
# serving slots and the cluster has settled; returns it. For a test that kills a master itself (to
# act before the promotion): take replica_of(master) before the kill.
sub wait_promoted
{
	my ($self, $replica, %opt) = @_;
	$self->wait_converged(seconds => $opt{seconds}, check => sub {
		my ($view) = @_;
		my $n = $view->{ $replica->id };
		return "replica on port $replica->{port} is not promoted yet" unless $n->{flags}{master} && @{ $n->{slots} };
		return '';
	});
	return $replica;
}

# restart_node(node, seconds => 30): start a stopped node again (same directory, nodes.conf and ports)
# and wait until it has rejoined and the cluster has settled (a failed-over master comes back as a
# replica of its replacement, resynced).
sub restart_node
{
	my ($self, $node, %opt) = @_;
	$node->start;
	$self->wait_converged(seconds => $opt{seconds}, check => sub {
		my ($view) = @_;
		my $n = $view->{ $node->id };
		return "port $node->{port} is not a replica or a master serving slots yet"
		  unless $n->{flags}{slave} || ($n->{flags}{master} && @{ $n->{slots} });
		return '';
	});
	return $node;
}

1;
