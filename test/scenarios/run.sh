#!/usr/bin/env bash
# test/scenarios/run.sh on|off : runs the three seed scenarios concurrently with pgbench against the
# PostgreSQL named by PGHOST/PGPORT/PGUSER/PGDATABASE (schema.sql loaded), with the redis lock (on) or
# with the lock call turned into a no-op (off). Prints one line of results per scenario:
#   queue requests=100 distinct_positions=N
#   balance spends=70 succeeded=N failed=N balance=N
#   reservation attempts=10 succeeded=N
set -euo pipefail
mode=${1:-on}
here=$(cd "$(dirname "$0")" && pwd)
pgbench=/usr/lib/postgresql/15/bin/pgbench
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

q() { psql -X -q -At -v ON_ERROR_STOP=1 -c "$1"; }
# run_clients N SQL: N clients, one transaction each, all at once
run_clients() {
  printf '%s\n' "$2" > "$tmp/script.sql"
  PGOPTIONS="-c scenario.lock=$mode" "$pgbench" -n -c "$1" -j 4 -t 1 -f "$tmp/script.sql" >"$tmp/pgbench.log" 2>&1 ||
    { cat "$tmp/pgbench.log" >&2; exit 1; }
}

q "CALL scenario_reset()"
run_clients 100 'SELECT issue_queue_token(7, :client_id);'
echo "queue requests=$(q 'SELECT count(*) FROM queue_token') distinct_positions=$(q 'SELECT count(DISTINCT position) FROM queue_token')"

run_clients 70 'SELECT spend_point(1, 1);'
echo "balance spends=$(q 'SELECT count(*) FROM spend_log') succeeded=$(q 'SELECT count(*) FILTER (WHERE ok) FROM spend_log') failed=$(q 'SELECT count(*) FILTER (WHERE NOT ok) FROM spend_log') balance=$(q 'SELECT balance FROM wallet WHERE user_id = 1')"

run_clients 10 'SELECT reserve_seat(7, 42, :client_id);'
echo "reservation attempts=$(q 'SELECT count(*) FROM reservation_log') succeeded=$(q 'SELECT count(*) FILTER (WHERE ok) FROM reservation_log')"
