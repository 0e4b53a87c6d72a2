#!/usr/bin/env bash
# Sourced by test/run.sh (suite "valgrind"): runs the regression and isolation suites once more against
# a cluster whose every process runs under valgrind, then reads valgrind's reports. What counts is what
# touches redislock or hiredis: an invalid read or write, a use of uninitialised memory, or a block
# malloc'd by hiredis or by us and lost (valgrind's leak check at each backend's exit). PostgreSQL's own
# reports are not ours to judge. The suites' outputs are not compared here: under valgrind every
# backend is many times slower and the timing-based expectations do not hold.

# The error paths, where replies are freed before ereport: a Redis error reply (out of memory),
# malformed replies from the suite's fake Redis, and a Redis that is not there.
rl_valgrind_error_paths() {
  local fake_pid reply port
  for reply in '+OK\r\n' '*1\r\n*1\r\n*1\r\n*1\r\n*1\r\n*1\r\n*1\r\n*1\r\n*1\r\n:1\r\n' '*3\r\n:1\r\n' '$5\r\nab'; do
    port=$(rl_free_port)
    perl -I"$RL_ROOT/test/perl" -MFakeRedis -e '
      my $f = FakeRedis->start(eval "\"$ARGV[0]\""); print "$f->{port}\n"; $f->{pid} = undef; ' "$reply" > "$RL_TMP/fake.port"
    psql -X -q -d contrib_regression -c "SET redislock.port = $(cat "$RL_TMP/fake.port"); SET redislock.command_timeout = '3s';" \
      -c "SELECT redis_try_lock('vg:fake')" >/dev/null 2>&1
  done
  pkill -f 'MFakeRedis' 2>/dev/null
  redis-cli -p "$REDIS_PORT" CONFIG SET maxmemory 1 >/dev/null
  psql -X -q -d contrib_regression -c "SELECT redis_try_lock('vg:oom')" >/dev/null 2>&1
  redis-cli -p "$REDIS_PORT" CONFIG SET maxmemory 0 >/dev/null
  psql -X -q -d contrib_regression -c "SET redislock.port = 1" -c "SELECT redis_wait_lock('vg:down')" >/dev/null 2>&1
  # TLS: a lock cycle and a wait over TLS, a certificate that does not verify, TLS against a plain port
  # and plain text against a TLS port
  rl_enable_tls
  local tls="SET redislock.port = $TLS_PORT; SET redislock.sslmode = 'verify-full'; SET redislock.sslrootcert = '$TLS_CERT';"
  psql -X -q -d contrib_regression -c "$tls" -c "BEGIN; SELECT redis_wait_lock('vg:tls'); SELECT redis_wait_lock('vg:tls2', NULL, '1 s'); COMMIT;" >/dev/null 2>&1
  psql -X -q -d contrib_regression -c "$tls SET redislock.sslrootcert = '/etc/ssl/certs/ca-certificates.crt';" -c "SELECT redis_try_lock('vg:tls')" >/dev/null 2>&1
  psql -X -q -d contrib_regression -c "SET redislock.sslmode = 'require'; SET redislock.connect_timeout = '3s';" -c "SELECT redis_try_lock('vg:tls')" >/dev/null 2>&1
  psql -X -q -d contrib_regression -c "SET redislock.port = $TLS_PORT;" -c "SELECT redis_try_lock('vg:tls')" >/dev/null 2>&1
  # Sentinel: none answering, and a Redis that is not a Sentinel; WAIT with no replica (undo, 55P03)
  psql -X -q -d contrib_regression -c "SET redislock.sentinels = '127.0.0.1:1, 127.0.0.1:$REDIS_PORT';" -c "SELECT redis_try_lock('vg:sentinel')" >/dev/null 2>&1
  psql -X -q -d contrib_regression -c "SET redislock.wait_replicas = 1; SET redislock.wait_replicas_timeout = '100ms';" -c "SELECT redis_try_lock('vg:wait')" >/dev/null 2>&1
}

rl_valgrind_suite() {
  local vg=$RL_TMP/valgrind wrapper=$RL_TMP/postgres-under-valgrind
  mkdir -p "$vg"
  [ "$(id -u)" -eq 0 ] && chown postgres "$vg"
  cat > "$wrapper" <<WRAP
#!/bin/sh
exec valgrind --quiet --trace-children=no --leak-check=full --show-leak-kinds=definite \\
  --errors-for-leak-kinds=definite --num-callers=30 --error-markers=VG-BEGIN,VG-END \\
  --log-file=$vg/%p.log $PG_BIN/postgres "\$@"
WRAP
  chmod 755 "$wrapper"
  local main_port=$PGPORT
  rl_start_pg valgrind "$wrapper" || return 1
  rl_log "pg_regress and pg_isolation_regress under valgrind (outputs not compared)"
  "$PGXS_TEST/regress/pg_regress" --inputdir=. --outputdir="$vg/regress" --bindir="$PG_BIN" \
    --dbname=contrib_regression api input settings upgrade shared >/dev/null 2>&1
  timeout 600 "$PGXS_TEST/isolation/pg_isolation_regress" --inputdir=test/isolation --outputdir="$vg/isolation" \
    --bindir="$PG_BIN" --dbname=isolation_regression setup fifo release timeout shared >/dev/null 2>&1
  rl_valgrind_error_paths
  rl_as_pg "$PG_BIN/pg_ctl" -D "$RL_TMP/pg-valgrind/data" -m fast -w -t 300 stop >/dev/null
  export PGPORT=$main_port

  # every report block between the markers that names our code or hiredis
  local reports=$vg/ours.txt
  awk '/VG-BEGIN/ {block = ""; inside = 1; next}
       /VG-END/ {if (block ~ /redislock\.so|libhiredis/) print block "----"; inside = 0; next}
       inside {block = block $0 "\n"}' "$vg"/*.log > "$reports"
  local errors leaks
  errors=$(grep -cE 'Invalid (read|write|free)|uninitialised|Mismatched free|Source and destination overlap' "$reports")
  leaks=$(grep -cE 'definitely lost' "$reports")
  echo "valgrind: $(ls "$vg"/*.log | wc -l) processes checked; $errors memory errors and $leaks leaks in redislock or hiredis"
  if [ "$errors" -gt 0 ] || [ "$leaks" -gt 0 ]; then
    head -n 200 "$reports"
  fi
  if [ "$(ls "$vg"/*.log | wc -l)" -lt 10 ]; then
    echo "valgrind: too few processes ran under valgrind; the suite did not run"; failed=$((failed + 1))
  else
    passed=$((passed + 1))
  fi
  [ "$errors" -eq 0 ] && passed=$((passed + 1)) || failed=$((failed + 1))
  [ "$leaks" -eq 0 ] && passed=$((passed + 1)) || failed=$((failed + 1))
}
