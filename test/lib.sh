# test/lib.sh: sourced by test/run.sh, test/demo.sh and bench/run.sh.
# Installs what the project needs from Debian, builds and installs the extension, and starts a
# throwaway Redis and PostgreSQL on free loopback ports. Everything lives under $RL_TMP and is stopped
# by rl_cleanup (set as an EXIT trap by rl_setup).

RL_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
RL_PACKAGES="make gcc postgresql-15 postgresql-server-dev-15 postgresql-contrib libhiredis-dev libssl-dev openssl redis-server libipc-run-perl valgrind libfaketime debhelper postgresql-server-dev-all"
PG_BIN=/usr/lib/postgresql/15/bin

rl_log() { printf '== %s\n' "$*" >&2; }

# Install the Debian packages that are missing (needs root; asks nothing).
rl_install_packages() {
  local missing=() p
  for p in $RL_PACKAGES; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  if [ "$(id -u)" -ne 0 ]; then
    echo "missing Debian packages: ${missing[*]} (run as root, or install them)" >&2
    return 1
  fi
  rl_log "installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >/dev/null && apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

# Build and install the extension into this PostgreSQL.
rl_build_install() {
  rl_log "building and installing redislock"
  make -s -C "$RL_ROOT" >/dev/null && make -s -C "$RL_ROOT" install >/dev/null
}

# A free TCP port on 127.0.0.1.
rl_free_port() {
  perl -MIO::Socket::INET -e 'print IO::Socket::INET->new(Listen => 1, LocalAddr => "127.0.0.1", LocalPort => 0, ReuseAddr => 1)->sockport'
}

# Run a command as the PostgreSQL server's owner: postgres when we are root, else ourselves. As
# postgres it runs from $RL_TMP unless the current directory is readable to postgres (a clone under
# a private directory is not).
rl_as_pg() {
  if [ "$(id -u)" -ne 0 ]; then "$@"; return; fi
  if runuser -u postgres -- test -x "$PWD" 2>/dev/null; then
    runuser -u postgres -- "$@"
  else
    (cd "${RL_TMP:-/}" && runuser -u postgres -- "$@")
  fi
}

# rl_start_redis: sets REDIS_PORT, starts redis-server without persistence.
rl_start_redis() {
  REDIS_PORT=$(rl_free_port)
  mkdir -p "$RL_TMP/redis"
  redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save '' --appendonly no \
    --daemonize yes --dir "$RL_TMP/redis" --pidfile "$RL_TMP/redis/redis.pid" \
    --logfile "$RL_TMP/redis/redis.log" >/dev/null
  local i
  for i in $(seq 1 100); do
    redis-cli -p "$REDIS_PORT" ping >/dev/null 2>&1 && return 0
    sleep 0.1
  done
  echo "redis-server did not start; see $RL_TMP/redis/redis.log" >&2
  return 1
}

# rl_enable_tls: opens a TLS port on the running Redis (CONFIG SET), with a self-signed certificate for
# 127.0.0.1 that is its own CA; sets TLS_PORT and TLS_CERT.
rl_enable_tls() {
  mkdir -p "$RL_TMP/tls"
  TLS_CERT=$RL_TMP/tls/redis.crt
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 -subj /CN=127.0.0.1 \
    -addext subjectAltName=IP:127.0.0.1 -keyout "$RL_TMP/tls/redis.key" -out "$TLS_CERT" 2>/dev/null || return 1
  chmod 755 "$RL_TMP/tls" && chmod 644 "$TLS_CERT" "$RL_TMP/tls/redis.key"
  TLS_PORT=$(rl_free_port)
  redis-cli -p "$REDIS_PORT" CONFIG SET tls-cert-file "$TLS_CERT" tls-key-file "$RL_TMP/tls/redis.key" \
    tls-ca-cert-file "$TLS_CERT" tls-auth-clients no tls-port "$TLS_PORT" >/dev/null
}

# rl_start_pg NAME [POSTGRES_BINARY]: a throwaway cluster pointed at our Redis; sets PGPORT_<NAME>
# and PGPORT. A second argument runs the server through that program (see test/valgrind.sh).
rl_start_pg() {
  local name=$1 postgres=${2:-$PG_BIN/postgres} port dir=$RL_TMP/pg-$1
  port=$(rl_free_port)
  mkdir -p "$dir"
  [ "$(id -u)" -eq 0 ] && chown -R postgres "$RL_TMP"
  rl_as_pg "$PG_BIN/initdb" -D "$dir/data" -U postgres -A trust --no-sync >"$dir/initdb.log" 2>&1 ||
    { cat "$dir/initdb.log" >&2; return 1; }
  cat >>"$dir/data/postgresql.conf" <<CONF
listen_addresses = '127.0.0.1'
port = $port
unix_socket_directories = '$dir'
max_connections = 300
fsync = off
redislock.host = '127.0.0.1'
redislock.port = $REDIS_PORT
CONF
  rl_as_pg "$PG_BIN/pg_ctl" -D "$dir/data" -l "$dir/server.log" -p "$postgres" -w -t 300 start >/dev/null ||
    { cat "$dir/server.log" >&2; return 1; }
  eval "PGPORT_$name=$port"
  export PGPORT=$port PGHOST=127.0.0.1 PGUSER=postgres PGDATABASE=postgres
}

rl_cleanup() {
  local d
  for d in "$RL_TMP"/pg-*/data; do
    [ -d "$d" ] && rl_as_pg "$PG_BIN/pg_ctl" -D "$d" -m immediate stop >/dev/null 2>&1
  done
  local pid i
  if [ -f "$RL_TMP/redis/redis.pid" ]; then
    pid=$(cat "$RL_TMP/redis/redis.pid")
    kill "$pid" 2>/dev/null
    for i in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  fi
  [ -n "${RL_KEEP_TMP:-}" ] || rm -rf "$RL_TMP"
}

# Everything a run needs: packages, build, Redis, one PostgreSQL cluster named "main".
rl_setup() {
  rl_install_packages || return 1
  rl_build_install || return 1
  RL_TMP=$(mktemp -d /tmp/redislock.XXXXXX)
  chmod 755 "$RL_TMP"
  trap rl_cleanup EXIT
  rl_start_redis || return 1
  rl_start_pg main || return 1
}
