#!/usr/bin/env bash
# make demo: the concert-booking service of shared/seeds on a throwaway PostgreSQL and Redis.
# 100 users ask for a queue position at once, 70 spends of 1 point hit a 50-point wallet at once, and
# 10 users try to reserve the same seat at once — first with redis_wait_lock guarding each critical
# section, then with the lock call turned into a no-op, to show what the lock prevents.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
rl_setup
cd "$RL_ROOT"
psql -X -q -v ON_ERROR_STOP=1 -f test/scenarios/schema.sql >/dev/null

# show TITLE: turn run.sh's "name key=value ..." lines into sentences
show() {
  local kind fields kv
  echo "$1"
  while read -r kind fields; do
    local requests= distinct_positions= spends= succeeded= failed= balance= attempts=
    for kv in $fields; do local "$kv"; done
    case $kind in
      queue) echo "  queue:       $requests concurrent requests for a place in line -> $distinct_positions distinct positions" ;;
      balance) echo "  balance:     $spends concurrent spends of 1 point from a 50-point wallet -> $succeeded succeeded, $failed refused, balance $balance" ;;
      reservation) echo "  reservation: $attempts concurrent reservations of seat 42 -> $succeeded succeeded" ;;
    esac
  done
}

echo
echo "redislock demo: PostgreSQL 15 on 127.0.0.1:$PGPORT, Redis $(redis-server --version | sed 's/.*v=\([^ ]*\).*/\1/') on 127.0.0.1:$REDIS_PORT"
echo
bash test/scenarios/run.sh on | show "With redis_wait_lock guarding each read-then-write (expected: 100 positions; 50 spent, 20 refused, balance 0; 1 seat sold):"
echo
bash test/scenarios/run.sh off | show "Without the lock (the same functions, the lock call made a no-op):"
echo
echo "A lock as seen from SQL while one session holds it and another waits:"
psql -X -q -c "BEGIN; SELECT redis_wait_lock('concert:7:seat:42', '10 s') AS fencing_token; SELECT pg_sleep(1.5); COMMIT;" >/dev/null &
sleep 0.3
psql -X -q -c "SELECT redis_wait_lock('concert:7:seat:42', timeout => '5 s') AS fencing_token_of_waiter" >/dev/null &
sleep 0.3
psql -X -c "SELECT held, holder, fencing_token, ttl, waiters FROM redis_lock_info('concert:7:seat:42')"
wait
echo "Redis keys left behind once all locks are released: $(redis-cli -p "$REDIS_PORT" --scan --pattern '{redislock:*' | wc -l)"
