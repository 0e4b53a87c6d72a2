# Packaging: META.json (PGXN) names the version that redislock.control installs.
use strict;
use warnings;
use Test::More;

sub slurp { my ($f) = @_; open my $fh, '<', "$ENV{TESTDIR}/$f" or die "$f: $!"; local $/; return <$fh>; }
my ($control) = slurp('redislock.control') =~ /^default_version\s*=\s*'([^']+)'/m;
ok($control, "redislock.control names a default_version ($control)");
my $meta = slurp('META.json');
my @versions = $meta =~ /"version"\s*:\s*"([^"]+)"/g;
my ($dist, $provided) = @versions[0, 1];
is($dist, "$control.0", 'META.json: the distribution version follows redislock.control');
is($provided, "$control.0", 'META.json: the extension it provides too');
like($meta, qr{"file"\s*:\s*"sql/redislock--\Q$control\E\.sql"}, 'META.json points at the install script of that version');
done_testing();
