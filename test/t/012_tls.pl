# TLS: redislock.sslmode (disable, require, verify-ca, verify-full), sslrootcert, sslcert and sslkey
# against Debian's redis-server started with --tls-port and certificates made here with openssl. Every
# mode works where it should and fails where it should (an untrusted certificate, a name mismatch, a
# missing client certificate) with 08001 naming the host and port and what failed; plain text against a
# TLS port, and TLS against a plain port, fail within connect_timeout. Waits, handoffs and the lease
# keeper work over TLS, and an idle TLS connection is kept (TLS 1.3 session tickets do not look like a
# closed connection).
use strict;
use warnings;
use lib 'perl';
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(time usleep);
use RedisLockTest;
use RedisTopology qw(make_certs start_tls_redis start_sentinel_topology);

my $certs = make_certs(PostgreSQL::Test::Utils::tempdir());
my $tls = start_tls_redis(certs => $certs);
my $tls_clients = start_tls_redis(certs => $certs, auth_clients => 'yes');
my $wrong_name = start_tls_redis(certs => $certs, cert => $certs->{wrongname_crt}, key => $certs->{wrongname_key});
my $self_signed = start_tls_redis(certs => $certs, cert => $certs->{selfsigned_crt}, key => $certs->{selfsigned_key},
	cli_cacert => $certs->{selfsigned_crt});
my $plain = start_redis();

my $node = new_node('tls', $tls,
	"shared_preload_libraries = 'redislock'\nredislock.connect_timeout = '1s'\nredislock.command_timeout = '1s'\n"
	  . "redislock.sslmode = 'verify-full'\nredislock.sslrootcert = '$certs->{ca_crt}'\n");

# run(settings, sql): psql's stdout and stderr for sql after SET-ting settings ({name => value})
sub run
{
	my ($settings, $sql) = @_;
	my $set = join '', map { "SET redislock.$_ = '$settings->{$_}';\n" } sort keys %$settings;
	my ($out, $err) = ('', '');
	$node->psql('postgres', "$set$sql", stdout => \$out, stderr => \$err, extra_params => ['-v', 'VERBOSITY=verbose']);
	return ($out, $err);
}

sub lock_once
{
	my ($server, $settings, $key) = @_;
	return run({ port => $server->{port}, %$settings }, "SELECT redis_try_lock('$key') IS NOT NULL AS ok;");
}

# --- each mode where it works ---------------------------------------------------------------------
my %ok_cases = (
	'require, no CA'              => [ $self_signed, { sslmode => 'require', sslrootcert => '' } ],
	'verify-ca with the CA'       => [ $wrong_name,  { sslmode => 'verify-ca' } ],
	'verify-full with the CA'     => [ $tls,         { sslmode => 'verify-full' } ],
	'client certificate and key'  => [ $tls_clients, { sslcert => $certs->{client_crt}, sslkey => $certs->{client_key} } ],
);
for my $name (sort keys %ok_cases)
{
	my ($server, $settings) = @{ $ok_cases{$name} };
	my ($out, $err) = lock_once($server, $settings, "tls:ok");
	is($out, 't', "$name: a lock is taken over TLS") or diag($err);
}
is($tls->cli('EXISTS', '{redislock:tls:ok}'), '0', 'the lock taken over TLS was released at commit');

# --- each mode where it must fail: 08001, host and port named, what failed said ----------------------
my @fail_cases = (
	[ 'verify-ca, certificate from another CA', $tls, { sslmode => 'verify-ca', sslrootcert => $certs->{other_ca_crt} },
		qr/08001: could not connect to Redis at 127\.0\.0\.1:$tls->{port}: the server's certificate is not trusted/ ],
	[ 'verify-ca, self-signed certificate', $self_signed, { sslmode => 'verify-ca' },
		qr/08001: could not connect to Redis at 127\.0\.0\.1:$self_signed->{port}: the server's certificate is not trusted: self-signed certificate/ ],
	[ 'verify-full, certificate for another name', $wrong_name, { sslmode => 'verify-full' },
		qr/08001: could not connect to Redis at 127\.0\.0\.1:$wrong_name->{port}: the server's certificate does not match "127\.0\.0\.1"/ ],
	[ 'verify-full, system CA store', $tls, { sslmode => 'verify-full', sslrootcert => '' },
		qr/08001: could not connect to Redis at 127\.0\.0\.1:$tls->{port}: the server's certificate is not trusted/ ],
	[ 'no client certificate where Redis asks for one', $tls_clients, { sslmode => 'verify-full' },
		qr/08001: could not connect to Redis at 127\.0\.0\.1:$tls_clients->{port}: .*(certificate required|TLS)/ ],
	[ 'plain text against a TLS port', $tls, { sslmode => 'disable' },
		qr/08001: could not connect to Redis at 127\.0\.0\.1:$tls->{port}: the server closed the connection before answering.*HINT:  If that port expects TLS/s ],
	[ 'TLS against a plain port', $plain, { sslmode => 'require' },
		qr/08001: could not connect to Redis at 127\.0\.0\.1:$plain->{port}: (the TLS handshake did not finish within 1000 ms|.*(wrong version number|record|packet))/ ],
	[ 'a client certificate file that does not exist', $tls, { sslcert => '/nonexistent/client.crt' },
		qr/08001: could not connect to Redis at 127\.0\.0\.1:$tls->{port}: could not load client certificate \/nonexistent\/client\.crt/ ],
);
for my $case (@fail_cases)
{
	my ($name, $server, $settings, $pattern) = @$case;
	my $t0 = time;
	my ($out, $err) = lock_once($server, $settings, 'tls:fail');
	my $took = time - $t0;
	like($err, $pattern, "$name: fails with 08001 and says why");
	cmp_ok($took, '<', 2.5, "$name: within connect_timeout (took " . sprintf('%.2f', $took) . ' s)');
}
is($tls->cli('EXISTS', '{redislock:tls:fail}'), '0', 'nothing was locked by the failed attempts');

# --- waits, handoff and the lease keeper over TLS --------------------------------------------------
{
	my $h = $node->background_psql('postgres', on_error_stop => 0);
	$h->query_safe("BEGIN; SELECT redis_wait_lock('tls:handoff', '30 s');");
	my $w = $node->background_psql('postgres', on_error_stop => 0);
	$w->query_until(qr/waiting/, "\\echo waiting\nBEGIN; SELECT redis_wait_lock('tls:handoff', '30 s', '20 s') > 0 AS got;\n");
	ok(wait_until(sub { ($tls->cli('ZCARD', '{redislock:tls:handoff}:q') // 0) == 1 }), 'a waiter queues over TLS');
	$h->query_safe('COMMIT');
	my $got = $w->query('SELECT 42');
	like($got, qr/^t\n42$/, 'the waiter is handed the lock over TLS');
	is($node->safe_psql('postgres', "SELECT redis_try_lock('tls:handoff')"), 'f', 'and holds it');
	$w->query_safe('COMMIT');
	$h->quit;
	$w->quit;

	# a session lock with a 1 s lease, renewed by the keeper (over TLS) for 3 s
	my $k = $node->background_psql('postgres', on_error_stop => 0);
	$k->query_safe("SELECT redis_session_lock('tls:kept', '1 s')");
	my $held = 1;
	for (1 .. 6)
	{
		usleep(500_000);
		$held &&= $node->safe_psql('postgres', "SELECT redis_try_lock('tls:kept')") eq 'f';
	}
	ok($held, 'the lease keeper renews a 1 s lease over TLS for 3 s');
	$k->quit;
}

# --- an idle TLS connection is kept: TLS 1.3 tickets are not taken for a closed connection ----------
{
	my $s = $node->background_psql('postgres', on_error_stop => 0);
	$s->query_safe("SELECT redis_try_lock('tls:warm')");
	my $before = ($tls->cli('INFO', 'stats') =~ /total_connections_received:(\d+)/)[0];
	$s->query_safe("BEGIN; SELECT redis_wait_lock('tls:idle:' || i) FROM generate_series(1, 5) i; COMMIT;") for 1 .. 3;
	usleep(200_000);
	$s->query_safe("SELECT redis_try_lock('tls:idle:after')");
	my $after = ($tls->cli('INFO', 'stats') =~ /total_connections_received:(\d+)/)[0];
	# (the one new connection is redis-cli's own, asking for the second count)
	is($after - $before, 1, 'calls on an idle TLS connection reuse it (no reconnect)');
	$s->quit;
}

# --- a cancel reaches a backend stuck in a TLS handshake -------------------------------------------
{
	# a listener that accepts and never answers: the handshake waits until cancelled
	my $quiet = IO::Socket::INET->new(Listen => 5, LocalAddr => '127.0.0.1', LocalPort => 0, ReuseAddr => 1) or die;
	my $port = $quiet->sockport;
	my $s = $node->background_psql('postgres', on_error_stop => 0);
	$s->query_safe("SET redislock.connect_timeout = '60s'; SET redislock.port = $port; SET statement_timeout = '500ms';");
	my $t0 = time;
	$s->query("SELECT redis_try_lock('tls:stuck')");
	like($s->{stderr}, qr/canceling statement due to statement timeout/, 'statement_timeout ends a stalled TLS handshake');
	cmp_ok(time - $t0, '<', 5, 'promptly');
	$s->quit;
	close $quiet;
}

done_testing();
