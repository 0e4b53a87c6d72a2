#!/usr/bin/env bash
# Sourced by test/run.sh (suite "deb"): builds the Debian package postgresql-15-redislock from a copy
# of the tracked files with dpkg-buildpackage, installs it with dpkg, and creates the extension from
# it in a new database of the running cluster, then takes a lock through it. Needs root (dpkg -i);
# as another user the suite is skipped and counts as passed.
rl_deb_suite() {
  if [ "$(id -u)" -ne 0 ]; then echo "deb: not root, skipped"; return 0; fi
  local src=$RL_TMP/deb/src deb
  mkdir -p "$src"
  (cd "$RL_ROOT" && git ls-files -z | xargs -0 cp --parents -t "$src") || return 1
  (cd "$src" && dpkg-buildpackage -us -uc -b >"$RL_TMP/deb/build.log" 2>&1) ||
    { tail -n 30 "$RL_TMP/deb/build.log"; echo "deb: dpkg-buildpackage failed"; return 1; }
  deb=$(ls "$RL_TMP"/deb/postgresql-15-redislock_*_*.deb 2>/dev/null | head -n 1)
  [ -n "$deb" ] || { echo "deb: no package built"; return 1; }
  dpkg -i "$deb" >"$RL_TMP/deb/install.log" 2>&1 || { cat "$RL_TMP/deb/install.log"; return 1; }
  dpkg -L postgresql-15-redislock | grep -q '/redislock.so$' || { echo "deb: no library in the package"; return 1; }
  psql -X -q -c "SET client_min_messages = warning" -c "DROP DATABASE IF EXISTS deb_check" -c "CREATE DATABASE deb_check" >/dev/null || return 1
  local out
  out=$(psql -X -q -At -d deb_check -c "CREATE EXTENSION redislock" \
    -c "SELECT extversion FROM pg_extension WHERE extname = 'redislock'" \
    -c "SELECT redis_try_lock('deb:check')" 2>&1)
  psql -X -q -c "DROP DATABASE deb_check" >/dev/null
  local want
  want=$(sed -n "s/^default_version = '\(.*\)'/\1/p" "$RL_ROOT/redislock.control")
  if [ "$out" != "$(printf '%s\nt' "$want")" ]; then echo "deb: CREATE EXTENSION from the package gave: $out (want $want)"; return 1; fi
  echo "deb: $(basename "$deb") built, installed, CREATE EXTENSION and a lock work"
}
