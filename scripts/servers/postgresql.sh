#!/usr/bin/env bash
# Runs a real PostgreSQL (Debian's postgresql package) on 127.0.0.1 for the service's scale-out
# tests (`brickcrypt serve --database postgresql://...`): a private cluster made with initdb and
# run with pg_ctl, as the unprivileged `postgres` user when started as root (PostgreSQL refuses
# to run as root), else as the calling user. Trust authentication on loopback only: a test
# database, never a deployment.
#
# Usage: scripts/servers/postgresql.sh start|stop|status|env
#   start   starts the cluster unless it already answers (a second start reuses it); every
#           fresh start begins with an empty cluster and a database brickcrypt_test
#   stop    stops it (fast shutdown) and waits for it to exit
#   status  prints the state; exit 1 when it is down
#   env     prints `export ...` lines the tests read (BRICKCRYPT_TEST_POSTGRES_URL)
# State lives in ${BRICKCRYPT_PG_DIR:-/tmp/brickcrypt-postgresql}; port ${BRICKCRYPT_PG_PORT:-55432}
# (not 5432, so a system PostgreSQL is left alone). Nothing outside the state directory is
# written, except that a missing postgresql package is installed with apt.
set -euo pipefail

cd "$(dirname "$0")/../.."
DIR=${BRICKCRYPT_PG_DIR:-/tmp/brickcrypt-postgresql}
PORT=${BRICKCRYPT_PG_PORT:-55432}
DB=brickcrypt_test
SUPERUSER=brickcrypt
START_TIMEOUT=${BRICKCRYPT_PG_TIMEOUT:-60}

log() { echo "postgresql: $*" >&2; }

url() { echo "postgresql://$SUPERUSER@127.0.0.1:$PORT/$DB"; }

# The newest installed server version's binaries (Debian keeps them off PATH).
bindir() {
  local d
  d=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1)
  [ -n "$d" ] && [ -x "$d/initdb" ] && [ -x "$d/pg_ctl" ] && echo "$d"
}

ensure_installed() {
  if bindir >/dev/null && command -v pg_isready >/dev/null; then return; fi
  log "installing postgresql (Debian) ..."
  local sudo=
  [ "$(id -u)" -eq 0 ] || sudo=sudo
  $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends postgresql >&2 \
    || { $sudo apt-get update >&2 && $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends postgresql >&2; }
}

# Runs a command as the cluster's owner: `postgres` when we are root, else ourselves.
as_owner() {
  if [ "$(id -u)" -eq 0 ]; then
    runuser -u postgres -- "$@"
  else
    "$@"
  fi
}

answers() { pg_isready -q -h 127.0.0.1 -p "$PORT" -d "$DB" -U "$SUPERUSER" 2>/dev/null; }
running() { [ -f "$DIR/data/postmaster.pid" ] && as_owner "$(bindir)/pg_ctl" -D "$DIR/data" status >/dev/null 2>&1; }

start() {
  ensure_installed
  local bin
  bin=$(bindir)
  if running; then
    local deadline=$((SECONDS + START_TIMEOUT))
    until answers || [ $SECONDS -ge $deadline ]; do sleep 0.5; done
    if answers; then
      log "already running at $(url)"
      return
    fi
  fi
  stop_quiet
  if (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null; then
    log "port $PORT on 127.0.0.1 is taken by another process; set BRICKCRYPT_PG_PORT"
    return 1
  fi
  rm -rf "$DIR"
  mkdir -p "$DIR"
  if [ "$(id -u)" -eq 0 ]; then chown postgres:postgres "$DIR"; fi
  chmod 700 "$DIR"
  as_owner "$bin/initdb" -D "$DIR/data" -U "$SUPERUSER" --auth=trust --encoding=UTF8 --no-instructions >"$DIR/initdb.log" 2>&1 \
    || { log "initdb failed:"; tail -n 20 "$DIR/initdb.log" >&2; return 1; }
  # Loopback TCP only; the socket stays inside the state directory.
  as_owner "$bin/pg_ctl" -D "$DIR/data" -l "$DIR/server.log" -w -t "$START_TIMEOUT" \
    -o "-c listen_addresses=127.0.0.1 -p $PORT -c unix_socket_directories=$DIR -c max_connections=200 -c fsync=on" start >"$DIR/pg_ctl.log" 2>&1 \
    || { log "did not start; last log lines:"; tail -n 20 "$DIR/server.log" "$DIR/pg_ctl.log" >&2 2>/dev/null || true; return 1; }
  as_owner "$bin/createdb" -h 127.0.0.1 -p "$PORT" -U "$SUPERUSER" "$DB" \
    || { log "createdb failed"; return 1; }
  log "running at $(url)"
}

stop_pidfile() { # quiet|postgresql
  local bin
  bin=$(bindir) || return 0
  [ -f "$DIR/data/postmaster.pid" ] || return 0
  if running; then
    as_owner "$bin/pg_ctl" -D "$DIR/data" -m fast -w -t 30 stop >/dev/null 2>&1 \
      || as_owner "$bin/pg_ctl" -D "$DIR/data" -m immediate -w stop >/dev/null 2>&1 || true
    [ "$1" = quiet ] || log "stopped"
  fi
}
stop_quiet() { stop_pidfile quiet; }

case "${1:-}" in
  start) start ;;
  stop) stop_pidfile postgresql ;;
  status)
    if bindir >/dev/null && running && answers; then echo "postgresql: running at $(url)"; else echo "postgresql: stopped"; exit 1; fi
    ;;
  env)
    if ! (bindir >/dev/null && running); then
      log "not running: run '$0 start' first"
      exit 1
    fi
    cat <<EOT
export BRICKCRYPT_TEST_POSTGRES_URL='$(url)'
export BRICKCRYPT_TEST_POSTGRES_DIR='$DIR'
EOT
    ;;
  *)
    echo "usage: $0 start|stop|status|env" >&2
    exit 2
    ;;
esac
