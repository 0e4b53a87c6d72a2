#!/usr/bin/env bash
# make bench: redislock against PostgreSQL's own pg_advisory_xact_lock, in one run on a throwaway
# PostgreSQL and Redis (same set-up as make test). Prints one table (also saved to bench/results.md):
#   - pgbench TPS and latency p50/p99 of BEGIN; <lock>; COMMIT with <lock> = (a) nothing,
#     (b) pg_advisory_xact_lock, (c) redis_wait_lock, uncontended (a key per client) and contended
#     (one key), at 1, 8 and 64 clients, and the ratio (c)/(b) of the same run; at 8 clients also
#     (c) over TLS (redislock.sslmode = verify-full) and with redislock.wait_replicas = 1 (one replica),
#     and shared locks on one key (many readers) against pg_advisory_xact_lock_shared, and against a
#     Redis Cluster of three masters (redislock.cluster_nodes, one seed);
#   - Redis commands sent per uncontended cycle and per contended handoff (INFO commandstats, client
#     commands only);
#   - wake-ups per release with 50 waiters, and CPU used by waiting backends;
#   - fairness: max / median and p99 / median transaction latency under contention, and 200 waiters
#     on one key, their arrival order against their acquisition order.
# BENCH_SECONDS (default 5) sets the length of each pgbench run; BENCH_ROUNDS (default 3) how many
# times each run is repeated. The rounds interleave (a), (b) and (c), so that a noisy neighbour or a
# drifting clock hits them alike, and the table shows the median TPS; latencies pool every round.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/../test/lib.sh"
rl_setup
cd "$RL_ROOT"
secs=${BENCH_SECONDS:-5}
rounds=${BENCH_ROUNDS:-3}
pgbench=$PG_BIN/pgbench
work=$RL_TMP/bench
mkdir -p "$work"
[ "$(id -u)" -eq 0 ] && chown postgres "$work"
psql -X -q -c "CREATE EXTENSION IF NOT EXISTS redislock" -c "CREATE TABLE acquired (seq serial, who int)"
q() { psql -X -q -At -c "$1"; }

# a TLS port on the same Redis, for the TLS rows
rl_enable_tls
# one replica, for the wait_replicas rows only: they run last, after it is started (a replica makes
# the master propagate every write, which would weigh on the other rows)
start_replica() {
  REPLICA_PORT=$(rl_free_port)
  mkdir -p "$RL_TMP/replica"
  redis-server --port "$REPLICA_PORT" --bind 127.0.0.1 --save '' --appendonly no --daemonize yes \
    --dir "$RL_TMP/replica" --pidfile "$RL_TMP/replica/redis.pid" --logfile "$RL_TMP/replica/redis.log" \
    --replicaof 127.0.0.1 "$REDIS_PORT" >/dev/null
  trap 'kill "$(cat "$RL_TMP/replica/redis.pid")" 2>/dev/null; rl_cleanup' EXIT
  for _ in $(seq 1 100); do
    redis-cli -p "$REDIS_PORT" INFO replication | grep -q 'state=online' && break
    sleep 0.1
  done
}
# a Redis Cluster of three masters (no replicas), for the Cluster rows: they run last
start_cluster() {
  local p nodes=()
  CLUSTER_PORTS=()
  for _ in 1 2 3; do
    p=$(rl_free_port)
    mkdir -p "$RL_TMP/cluster-$p"
    redis-server --port "$p" --bind 127.0.0.1 --save '' --appendonly no --daemonize yes \
      --cluster-enabled yes --cluster-config-file "$RL_TMP/cluster-$p/nodes.conf" --dir "$RL_TMP/cluster-$p" \
      --pidfile "$RL_TMP/cluster-$p/redis.pid" --logfile "$RL_TMP/cluster-$p/redis.log" >/dev/null
    CLUSTER_PORTS+=("$p")
    nodes+=("127.0.0.1:$p")
  done
  trap 'kill "$(cat "$RL_TMP/replica/redis.pid")" $(cat "$RL_TMP"/cluster-*/redis.pid) 2>/dev/null; rl_cleanup' EXIT
  for p in "${CLUSTER_PORTS[@]}"; do
    for _ in $(seq 1 50); do redis-cli -p "$p" PING >/dev/null 2>&1 && break; sleep 0.1; done
  done
  redis-cli --cluster create "${nodes[@]}" --cluster-replicas 0 --cluster-yes >/dev/null
  for p in "${CLUSTER_PORTS[@]}"; do
    for _ in $(seq 1 100); do redis-cli -p "$p" CLUSTER INFO | grep -q 'cluster_state:ok' && break; sleep 0.1; done
  done
  variant_options[cluster]="-c redislock.cluster_nodes=127.0.0.1:${CLUSTER_PORTS[0]}"
  STAT_PORTS=("${CLUSTER_PORTS[@]}")
}
STAT_PORTS=("$REDIS_PORT")
declare -A variant_options=(
  [tls]="-c redislock.sslmode=verify-full -c redislock.sslrootcert=$TLS_CERT -c redislock.port=$TLS_PORT"
  [replica]="-c redislock.wait_replicas=1"
)
client_commands() {   # EVALSHA + EVAL + BLPOP + WAIT calls, and the microseconds Redis spent on them, since
                      # the last CONFIG RESETSTAT (every node of the Cluster, for its rows)
  for p in "${STAT_PORTS[@]}"; do redis-cli -p "$p" INFO commandstats; done | tr -d '\r' |
    awk -F'[:=,]' '/^cmdstat_(evalsha|eval|blpop|wait):/ {n += $3; us += $5} END {print n + 0, us + 0}'
}

# --- throughput and latency ---------------------------------------------------------------------
declare -A tps_runs txs commands redis_us p50 p99 pmax tps cmds
run_pgbench() {   # name clients sql round [PGOPTIONS]
  local name=$1 clients=$2 sql=$3 round=$4 options=${5:-} done_tx
  printf '%s\n' "$sql" > "$work/$name.sql"
  mkdir -p "$work/log-$name"
  for p in "${STAT_PORTS[@]}"; do redis-cli -p "$p" CONFIG RESETSTAT >/dev/null; done
  # one pgbench thread per client: a thread serving several clients stamps their latencies with one
  # cached clock reading, which makes short transactions read as 0 ms
  (cd "$work/log-$name" && PGOPTIONS="$options" "$pgbench" -n -M prepared -c "$clients" -j "$clients" -T "$secs" \
     -l --log-prefix="r$round" -f "../$name.sql" > "../$name.$round.out" 2>&1)
  done_tx=$(awk '/number of transactions actually processed/ {split($NF, a, "/"); print a[1]}' "$work/$name.$round.out")
  tps_runs[$name]+="$(awk '/^tps = / {printf "%.0f", $3}' "$work/$name.$round.out") "
  txs[$name]=$(( ${txs[$name]:-0} + done_tx ))
  local n us
  read -r n us < <(client_commands)
  commands[$name]=$(( ${commands[$name]:-0} + n ))
  redis_us[$name]=$(( ${redis_us[$name]:-0} + us ))
}
median() { tr ' ' '\n' | grep . | sort -n | awk '{v[NR] = $1} END {print NR ? v[int((NR + 1) / 2)] : 0}'; }
for round in $(seq 1 "$rounds"); do
  for c in 1 8 64; do
    run_pgbench "none-$c" "$c" 'BEGIN; COMMIT;' "$round"
    for mode in uncontended contended; do
      if [ $mode = uncontended ]; then key=':client_id'; else key='1'; fi
      run_pgbench "advisory-$mode-$c" "$c" "BEGIN; SELECT pg_advisory_xact_lock($key); COMMIT;" "$round"
      run_pgbench "redis-$mode-$c" "$c" "BEGIN; SELECT redis_wait_lock('bench:' || $key); COMMIT;" "$round"
      if [ "$c" = 8 ] && [ $mode = contended ]; then
        # many readers, one key: shared locks against pg_advisory_xact_lock_shared
        run_pgbench "advisory-shared-$c" "$c" "BEGIN; SELECT pg_advisory_xact_lock_shared(1); COMMIT;" "$round"
        run_pgbench "redis-shared-$c" "$c" "BEGIN; SELECT redis_wait_lock_shared('bench-shared'); COMMIT;" "$round"
      fi
      if [ "$c" = 8 ]; then
        run_pgbench "redis-$mode-$c-tls" "$c" "BEGIN; SELECT redis_wait_lock('bench:' || $key); COMMIT;" \
          "$round" "${variant_options[tls]}"
      fi
    done
  done
done
variant_rounds() {   # variant: its uncontended and contended rows at 8 clients, every round
  local variant=$1 round mode key
  for round in $(seq 1 "$rounds"); do
    for mode in uncontended contended; do
      if [ $mode = uncontended ]; then key=':client_id'; else key='1'; fi
      run_pgbench "redis-$mode-8-$variant" 8 "BEGIN; SELECT redis_wait_lock('bench:' || $key); COMMIT;" \
        "$round" "${variant_options[$variant]}"
    done
  done
}
start_replica
variant_rounds replica
start_cluster
variant_rounds cluster
STAT_PORTS=("$REDIS_PORT")
for name in "${!tps_runs[@]}"; do
  tps[$name]=$(echo "${tps_runs[$name]}" | median)
  cmds[$name]=$(awk -v c="${commands[$name]}" -v n="${txs[$name]}" 'BEGIN {printf "%.2f", n ? c / n : 0}')
  read -r p50[$name] p99[$name] pmax[$name] < <(cat "$work/log-$name"/r* | awk '{print $3}' | sort -n |
    awk '{v[NR] = $1} END {printf "%.2f %.2f %.2f\n", v[int(NR * 0.5) + 1] / 1000, v[int(NR * 0.99) + 1] / 1000, v[NR] / 1000}')
done

# --- wake-ups per release with 50 waiters, CPU of waiting backends ------------------------------
waiters=50
psql -X -q -c "BEGIN; SELECT redis_wait_lock('bench:herd'); SELECT pg_sleep(12); COMMIT;" >/dev/null 2>&1 &
holder=$!
sleep 0.5
for i in $(seq 1 $waiters); do
  psql -X -q -c "BEGIN; SELECT redis_wait_lock('bench:herd'); SELECT pg_sleep(60); COMMIT;" >/dev/null 2>&1 &
done
for _ in $(seq 1 100); do
  [ "$(q "SELECT waiters FROM redis_lock_info('bench:herd')")" -ge $waiters ] && break
  sleep 0.1
done
waiting_pids=$(q "SELECT string_agg(pid::text, ' ') FROM pg_stat_activity WHERE wait_event_type = 'Extension' AND query LIKE '%bench:herd%'")
# CPU time in ns of the waiting backends (first field of /proc/PID/schedstat)
cpu_ns() { local p t=0; for p in $waiting_pids; do [ -r /proc/$p/schedstat ] && t=$((t + $(cut -d' ' -f1 /proc/$p/schedstat))); done; echo $t; }
t0=$(cpu_ns); s0=$(date +%s.%N)
sleep 5
t1=$(cpu_ns); s1=$(date +%s.%N)
cpu_ms_per_10s=$(awk -v d=$((t1 - t0)) -v n=$waiters -v a="$s0" -v b="$s1" \
  'BEGIN {printf "%.2f", d / 1e6 / n * 10 / (b - a)}')
before=$(q "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Extension' AND query LIKE '%bench:herd%'")
# cancel the holder's sleep: its transaction aborts and releases the lock
q "SELECT pg_cancel_backend(pid) FROM pg_stat_activity WHERE query LIKE '%pg_sleep(12)%' AND pid <> pg_backend_pid()" >/dev/null
sleep 0.5
after=$(q "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Extension' AND query LIKE '%bench:herd%'")
woken=$((before - after))
# end the rest: the woken one's sleep and every wait still queued
q "SELECT count(pg_cancel_backend(pid)) FROM pg_stat_activity WHERE query LIKE '%bench:herd%' AND pid <> pg_backend_pid()" >/dev/null
wait

# --- fairness: 200 waiters, arrival order against acquisition order -------------------------------
fair=200
q "TRUNCATE acquired" >/dev/null
psql -X -q -c "BEGIN; SELECT redis_wait_lock('bench:fair'); SELECT pg_sleep(2); COMMIT;" >/dev/null 2>&1 &
sleep 0.3
start=$(date +%s.%N)
for i in $(seq 1 $fair); do
  psql -X -q -c "SELECT redis_wait_lock('bench:fair', timeout => '60 s'); INSERT INTO acquired(who) VALUES (pg_backend_pid());" >/dev/null 2>"$work/fair.$i.err" &
done
for _ in $(seq 1 300); do
  [ "$(q "SELECT waiters FROM redis_lock_info('bench:fair')")" -ge $fair ] && break
  sleep 0.05
done
# arrival order, read from the queue itself: holder ids carry the backend pid
redis-cli -p "$REDIS_PORT" ZRANGE '{redislock:bench:fair}:q' 0 -1 | awk -F: 'NF > 1 {print $(NF - 1)}' > "$work/arrival"
wait
q "SELECT who FROM acquired ORDER BY seq" > "$work/acquisition"
acquired=$(wc -l < "$work/acquisition")
timeouts=$(cat "$work"/fair.*.err | grep -c 'could not obtain' || true)
inversions=$(awk 'NR == FNR {rank[$1] = FNR; next} {r = rank[$1]; if (r < last) n++; last = r} END {print n + 0}' \
  "$work/arrival" "$work/acquisition")

# --- report ---------------------------------------------------------------------------------------
ratio() { awk -v a="$1" -v b="$2" 'BEGIN {printf (b > 0 ? "%.2f" : "-"), a / b}'; }
round_ratios() {   # the (c)/(b) ratio of each round, for one case
  paste -d' ' <(echo "${tps_runs[redis-$1]}" | tr ' ' '\n' | grep .) <(echo "${tps_runs[advisory-$1]}" | tr ' ' '\n' | grep .) |
    awk '{printf "%s%.2f", (NR > 1 ? " " : ""), $1 / $2}'
}
{
  echo "# redislock benchmark, $(date -u '+%Y-%m-%d %H:%M UTC')"
  echo
  echo "Machine: $(nproc) cores, $(awk '/MemTotal/ {printf "%.0f GiB", $2 / 1048576}' /proc/meminfo), $(uname -sr);" \
       "PostgreSQL $(q 'SHOW server_version' | cut -d' ' -f1), Redis $(redis-server --version | sed 's/.*v=\([^ ]*\).*/\1/');" \
       "pgbench -M prepared, ${secs} s per run, median of $rounds interleaved rounds, loopback."
  echo
  echo "| clients | lock | (a) none TPS | (b) advisory TPS | (c) redislock TPS | (c)/(b) | (b) p50 / p99 ms | (c) p50 / p99 ms | Redis cmds per tx |"
  echo "|---|---|---|---|---|---|---|---|---|"
  for c in 1 8 64; do
    for mode in uncontended contended; do
      a=none-$c b=advisory-$mode-$c r=redis-$mode-$c
      echo "| $c | $mode | ${tps[$a]} | ${tps[$b]} | ${tps[$r]} | $(ratio "${tps[$r]}" "${tps[$b]}") | ${p50[$b]} / ${p99[$b]} | ${p50[$r]} / ${p99[$r]} | ${cmds[$r]} |"
    done
  done
  for c in 8; do
    a=none-$c b=advisory-shared-$c r=redis-shared-$c
    echo "| $c | shared, one key | ${tps[$a]} | ${tps[$b]} | ${tps[$r]} | $(ratio "${tps[$r]}" "${tps[$b]}") | ${p50[$b]} / ${p99[$b]} | ${p50[$r]} / ${p99[$r]} | ${cmds[$r]} |"
  done
  for variant in tls replica cluster; do
    for mode in uncontended contended; do
      a=none-8 b=advisory-$mode-8 r=redis-$mode-8-$variant
      case $variant in
        tls) label='TLS (verify-full)' ;;
        replica) label='wait_replicas = 1' ;;
        cluster) label='Redis Cluster, 3 masters' ;;
      esac
      echo "| 8 | $mode, $label | ${tps[$a]} | ${tps[$b]} | ${tps[$r]} | $(ratio "${tps[$r]}" "${tps[$b]}") | ${p50[$b]} / ${p99[$b]} | ${p50[$r]} / ${p99[$r]} | ${cmds[$r]} |"
    done
  done
  echo
  echo "- (c)/(b) at 8 clients in each round: uncontended $(round_ratios uncontended-8), contended $(round_ratios contended-8)"
  echo "- Redis time per transaction (its own accounting of those commands, 8 clients): uncontended $(awk -v u="${redis_us[redis-uncontended-8]}" -v n="${txs[redis-uncontended-8]}" 'BEGIN {printf "%.1f", u / n}') µs, contended $(awk -v u="${redis_us[redis-contended-8]}" -v n="${txs[redis-contended-8]}" 'BEGIN {printf "%.1f", u / n}') µs"
  echo "- Redis commands per uncontended lock cycle (8 clients): ${cmds[redis-uncontended-8]} (target 2)"
  echo "- Redis commands per contended transaction, i.e. per handoff (8 clients): ${cmds[redis-contended-8]} (target ≤ 3)"
  echo "- Waiting backends woken by one release with $waiters waiters: $woken (target 1)"
  echo "- CPU of a waiting backend: ${cpu_ms_per_10s} ms per 10 s of waiting (target < 10)"
  echo "- $fair waiters on one key: $acquired acquired, $timeouts timed out, $inversions acquired out of arrival order (target: all, 0, 0)"
  echo "- Fairness under contention (8 clients, transaction latency, every round): redislock p99 / p50 = $(ratio "${p99[redis-contended-8]}" "${p50[redis-contended-8]}"), max / median = $(ratio "${pmax[redis-contended-8]}" "${p50[redis-contended-8]}"); advisory p99 / p50 = $(ratio "${p99[advisory-contended-8]}" "${p50[advisory-contended-8]}"), max / median = $(ratio "${pmax[advisory-contended-8]}" "${p50[advisory-contended-8]}")"
} | tee "$RL_ROOT/bench/results.md"
