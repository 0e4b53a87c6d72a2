# A non-superuser can lock, but cannot read redislock.password nor change where the server connects or
# the key prefix (42501), and the password never reaches an error or the log. With the library in
# session_preload_libraries (as README asks when a password is configured) this holds from the first
# statement of every session. Without it, a placeholder SET by a non-superuser is dropped when the
# library loads, so it still cannot redirect the server.
use strict;
use warnings;
use lib 'perl';
use PostgreSQL::Test::Utils;
use Test::More;
use RedisLockTest;

my $secret = 'sesame-5ecret';
my $redis = start_redis('--requirepass', $secret);
my $node = new_node('priv', $redis,
	"redislock.password = '$secret'\nsession_preload_libraries = 'redislock'\n");
$node->safe_psql('postgres', 'CREATE ROLE app LOGIN');

sub as_app
{
	my ($sql) = @_;
	my ($rc, $out, $err) = $node->psql('postgres', "\\set VERBOSITY sqlstate\n$sql", extra_params => [ '-U', 'app' ]);
	return $err =~ /ERROR:  (\w{5})/ ? $1 : $out;
}

is(as_app("SELECT redis_try_lock('priv:k')"), 't', 'a non-superuser can take a lock');
is(as_app('SHOW redislock.password'), '42501', 'cannot SHOW the password');
is(as_app("SELECT current_setting('redislock.password')"), '42501', 'cannot read it with current_setting');
is(as_app("SELECT count(*) FROM pg_settings WHERE name = 'redislock.password'"), '0', 'pg_settings does not list it');
for my $setting (qw(host port username password database key_prefix connect_timeout command_timeout default_ttl))
{
	is(as_app("SET redislock.$setting = '1'"), '42501', "cannot SET redislock.$setting");
}
is(as_app("SELECT set_config('redislock.host', 'elsewhere', false)"), '42501', 'nor through set_config');
is(as_app("SHOW redislock.host"), '127.0.0.1', 'other settings are readable');

# without preloading: a placeholder set before the library loads is dropped when it loads
my $plain = new_node('plain', $redis, "redislock.password = '$secret'\n");
$plain->safe_psql('postgres', 'CREATE ROLE app LOGIN');
my ($rc, $out, $err) = $plain->psql('postgres',
	"SET redislock.host = '192.0.2.1'; SET redislock.key_prefix = 'stolen:'; SELECT redis_try_lock('priv:plain'); SHOW redislock.host; SHOW redislock.key_prefix;",
	extra_params => [ '-U', 'app' ]);
like($out, qr/^t\n127\.0\.0\.1\nredislock:$/, 'placeholders set by a non-superuser are dropped when the library loads');
like($err, qr/permission denied to set parameter "redislock.host"/, 'with a warning');
is($redis->cli('EXISTS', '{stolen:priv:plain}'), '0', 'and the lock went under the configured prefix');

# a first call cancelled while Redis is stopped (cut short in the connection's handshake), with Redis
# waking while the abort still waits for its undo: the session goes on authenticated
my $s = $node->background_psql('postgres', on_error_stop => 0);
$redis->signal('STOP');
$s->query_until(qr/sent/, "\\echo sent\nSET redislock.command_timeout = '10s'; SET statement_timeout = '300ms'; SELECT redis_try_lock('priv:cut');\n");
sleep 1;
$redis->signal('CONT');
my $after = $s->query("RESET statement_timeout; SELECT redis_try_lock('priv:cut2');");
like($s->{stderr}, qr/statement timeout/, 'the first connection, stuck before AUTH, is cancelled');
unlike($s->{stderr}, qr/refused authentication|NOAUTH/, 'nothing runs on it unauthenticated');
like($after, qr/^t$/m, 'the next call connects again, with AUTH, and works');
$s->quit;

# the password appears nowhere in what the server logged
($rc, $out, $err) = $node->psql('postgres', "SET redislock.password = 'wrong'; SELECT redis_try_lock('priv:wrong')");
like($err, qr/refused authentication/, 'a wrong password fails');
unlike($err, qr/\Q$secret\E|wrong'/, 'no password in the error');
my $log = slurp_file($node->logfile) . slurp_file($plain->logfile);
my $leaks = () = $log =~ /\Q$secret\E/g;
is($leaks, 0, 'no password in the server log');

done_testing();
