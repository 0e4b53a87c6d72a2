# CriticalSections: the exclusion checker of the TAP suites. Clients on several PostgreSQL clusters
# take one redis lock, record their critical section (fencing token, start, end) in a table of their own
# cluster and commit; afterwards the committed sections of every cluster, on the machine's one clock,
# must not overlap and their tokens must rise in the order they ran.
package CriticalSections;

use strict;
use warnings;

use Exporter 'import';
use IPC::Run;
use PostgreSQL::Test::Utils;

our @EXPORT = qw(sections_prepare sections_start sections_finish sections_check);

# sections_prepare(@nodes): an empty sections table on each cluster
sub sections_prepare
{
	for my $node (@_)
	{
		$node->safe_psql('postgres',
			'DROP TABLE IF EXISTS sections; CREATE TABLE sections (token bigint, t_start timestamptz, t_end timestamptz, node text)');
	}
}

# The SQL of one critical section; lock_sql sets :tok (\gset).
sub section_sql
{
	my ($lock_sql) = @_;
	return "BEGIN;\n$lock_sql\n"
	  . "INSERT INTO sections VALUES (:tok, clock_timestamp(), NULL, current_setting('port'));\n"
	  . "UPDATE sections SET t_end = clock_timestamp() WHERE token = :tok AND t_end IS NULL;\n"
	  . "COMMIT;\n";
}

# sections_start(nodes => [...], clients => N, seconds => S, lock_sql => SQL, settings => SQL):
# N psql clients per cluster loop over critical sections for S seconds, in the background. Errors do not
# stop a client (a failover makes some calls fail); an aborted transaction records nothing.
sub sections_start
{
	my %o = @_;
	my $dir = PostgreSQL::Test::Utils::tempdir();
	my $script = "$dir/sections.sql";
	open my $fh, '>', $script or die "$script: $!";
	print $fh ($o{settings} // '');
	print $fh "SELECT (clock_timestamp() + interval '$o{seconds} s')::text AS deadline \\gset\n";
	for (1 .. 100_000)
	{
		print $fh "SELECT clock_timestamp() > :'deadline'::timestamptz AS done \\gset\n\\if :done\n\\quit\n\\endif\n";
		print $fh section_sql($o{lock_sql});
	}
	close $fh;
	my @runs;
	for my $node (@{ $o{nodes} })
	{
		for (1 .. $o{clients})
		{
			my $err = '';
			push @runs, [ IPC::Run::start([ 'psql', '-X', '-q', '-v', 'ON_ERROR_STOP=0', '-f', $script,
						'-h', $node->host, '-p', $node->port, 'postgres' ], '>', '/dev/null', '2>', \$err), \$err ];
		}
	}
	return \@runs;
}

# sections_finish(what sections_start returned): waits for the clients; their stderr, joined
sub sections_finish
{
	my ($runs) = @_;
	my $errors = '';
	for (@$runs)
	{
		$_->[0]->finish;
		$errors .= ${ $_->[1] };
	}
	return $errors;
}

# sections_check(@nodes): (committed sections, overlaps, tokens out of order, clusters seen)
sub sections_check
{
	my @rows;
	for my $node (@_)
	{
		push @rows, map { [ split /\|/ ] } split /\n/, $node->safe_psql('postgres',
			"SELECT token, extract(epoch FROM t_start)::numeric(20,6), extract(epoch FROM t_end)::numeric(20,6), node FROM sections WHERE t_end IS NOT NULL");
	}
	@rows = sort { $a->[1] <=> $b->[1] } @rows;
	my ($overlaps, $disorder) = (0, 0);
	for my $i (1 .. $#rows)
	{
		$overlaps++ if $rows[$i][1] < $rows[ $i - 1 ][2];
		$disorder++ if $rows[$i][0] <= $rows[ $i - 1 ][0];
	}
	my %nodes_seen = map { $_->[3] => 1 } @rows;
	return (scalar @rows, $overlaps, $disorder, scalar keys %nodes_seen);
}

1;
