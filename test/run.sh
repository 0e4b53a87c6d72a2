#!/usr/bin/env bash
# make test: installs what is missing, builds and installs redislock, starts a throwaway Redis and
# PostgreSQL on free loopback ports, then runs every suite: pg_regress (sql/, expected/),
# pg_isolation_regress (test/isolation/) and the TAP tests (test/t/, each starting its own Redis and
# clusters). Ends with "N passed, N failed"; exits non-zero on any failure.
#   bash test/run.sh [regress] [isolation] [tap] [deb] [valgrind] [t/NNN_name.pl ...]   runs only what is named
set -uo pipefail
suites=" ${*:-regress isolation tap deb valgrind} "
tap_files=$(printf '%s\n' "$@" | grep '^t/' | tr '\n' ' ')
[ -n "$tap_files" ] && suites="$suites tap "
[ -n "$tap_files" ] || tap_files='t/*.pl'
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
source "$(dirname "${BASH_SOURCE[0]}")/valgrind.sh"
source "$(dirname "${BASH_SOURCE[0]}")/deb.sh"
rl_setup || { echo "0 passed, 1 failed"; exit 1; }
cd "$RL_ROOT"

PGXS_TEST=/usr/lib/postgresql/15/lib/pgxs/src/test
passed=0 failed=0
count_pg_regress() {   # tally "test name ... ok|FAILED" lines of a pg_regress log
  local log=$1 ok bad
  ok=$(grep -cE '^(ok|test) .*\.\.\. ok|^ok [0-9]+ ' "$log")
  bad=$(grep -cE '\.\.\. FAILED|^not ok [0-9]+ ' "$log")
  passed=$((passed + ok)) failed=$((failed + bad))
}

# pg_regress and pg_isolation_regress run the PGXS way, as make installcheck against the cluster just
# started (PGHOST, PGPORT); a run that fails without a FAILED line (a missing expected file) counts.
installcheck_suite() {   # installcheck_suite NAME LOG DIFFS MAKE-ARGS...
  local name=$1 log=$2 diffs=$3 status
  shift 3
  rl_log "$name (make installcheck)"
  make -s -C "$RL_ROOT" installcheck "$@" 2>&1 | tee "$log"
  status=${PIPESTATUS[0]}
  count_pg_regress "$log"
  [ "$status" -ne 0 ] && ! grep -qE '\.\.\. FAILED|^not ok' "$log" && failed=$((failed + 1))
  [ -f "$diffs" ] && cat "$diffs"
}
[[ $suites == *" regress "* ]] &&
  installcheck_suite pg_regress "$RL_TMP/regress.log" "$RL_ROOT/regression.diffs" ISOLATION=
[[ $suites == *" isolation "* ]] &&
  installcheck_suite pg_isolation_regress "$RL_TMP/isolation.log" "$RL_ROOT/output_iso/regression.diffs" REGRESS=

if [[ $suites == *" tap "* ]]; then
rl_log "TAP"
tap=$RL_TMP/tap
mkdir -p "$tap" && cp -r test/t test/perl test/scenarios README.md META.json redislock.control "$tap/" && cp -r src/lua/out "$tap/lua"
[ "$(id -u)" -eq 0 ] && chown -R postgres "$tap"
(cd "$tap" && rl_as_pg env PATH="$PG_BIN:$PATH" PG_REGRESS="$PGXS_TEST/regress/pg_regress" \
  PERL5LIB="/usr/lib/postgresql/15/lib/pgxs/src/test/perl:$tap/perl" TESTDIR="$tap" \
  REDISLOCK_SCENARIOS="$tap/scenarios" prove -v $tap_files 2>&1) | tee "$RL_TMP/tap.log"
tap_status=${PIPESTATUS[0]}
ok=$(grep -cE '^ok [0-9]+' "$RL_TMP/tap.log")
bad=$(grep -cE '^not ok [0-9]+' "$RL_TMP/tap.log")
# a test file that died or planned wrong counts as one more failure
{ [ "$tap_status" -ne 0 ] || [ "$ok" -eq 0 ]; } && [ "$bad" -eq 0 ] && bad=1
passed=$((passed + ok)) failed=$((failed + bad))
if [ "$tap_status" -ne 0 ]; then
  for f in "$tap"/tmp_check/log/*.log; do [ -f "$f" ] && { echo "--- $f"; tail -n 30 "$f"; }; done
fi
fi

if [[ $suites == *" deb "* ]]; then
  rl_log "Debian package"
  if rl_deb_suite; then passed=$((passed + 1)); else failed=$((failed + 1)); fi
fi

if [[ $suites == *" valgrind "* ]]; then
  rl_log "valgrind"
  rl_valgrind_suite || failed=$((failed + 1))
fi

echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ]
