#!/usr/bin/env bash
# Runs a real OpenStack Glance v2 image service (Debian python3-glance) on 127.0.0.1 for the
# image-service tests and benchmark: SQLite database, file store, no Keystone. The paste
# pipeline uses Glance's own ContextMiddleware, which trusts the identity headers Keystone's
# middleware would set (X-Identity-Status: Confirmed, X-Project-Id, X-User-Id, X-Roles), so
# tests can act as several projects. Import method glance-direct (stage + import) is enabled.
#
# Usage: scripts/servers/glance.sh start|stop|status|env
#   start   starts Glance unless it already answers (a second start reuses it)
#   stop    stops it and waits for it to exit (nothing to do when it is not running)
#   status  prints the state; exit 1 when it is down
#   env     prints `export ...` lines the tests read
# State lives in ${BRICKCRYPT_GLANCE_DIR:-/tmp/brickcrypt-glance}; port ${BRICKCRYPT_GLANCE_PORT:-9292}
# (Glance's registered port). Nothing outside the state directory is written, except that a
# missing python3-glance is installed with apt.
set -euo pipefail

cd "$(dirname "$0")/../.."
DIR=${BRICKCRYPT_GLANCE_DIR:-/tmp/brickcrypt-glance}
PORT=${BRICKCRYPT_GLANCE_PORT:-9292}
PY=/usr/bin/python3 # Debian's python: a pyenv python on PATH cannot see Debian's packages
START_TIMEOUT=${BRICKCRYPT_GLANCE_TIMEOUT:-40}

log() { echo "glance: $*" >&2; }

pid_alive() { [ -f "$DIR/pid" ] && kill -0 "$(cat "$DIR/pid")" 2>/dev/null; }
url() { echo "http://127.0.0.1:$PORT"; }

# The versions document answers once the WSGI app (and its database) is loaded; a listing as
# a project checks the header-identity pipeline too.
answers() {
  (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null || return 1
  curl -fsS -m 10 -o /dev/null -H 'X-Identity-Status: Confirmed' -H 'X-Project-Id: healthcheck' \
    -H 'X-User-Id: healthcheck' -H 'X-Roles: member' "$(url)/v2/images?limit=1" 2>/dev/null
}

ensure_installed() {
  if "$PY" -c 'import glance.cmd.api, glance_store' 2>/dev/null && command -v curl >/dev/null; then return; fi
  log "installing python3-glance (Debian) ..."
  local sudo=
  [ "$(id -u)" -eq 0 ] || sudo=sudo
  $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
    python3-glance python3-glance-store curl >&2 \
    || { $sudo apt-get update >&2 && $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
      python3-glance python3-glance-store curl >&2; }
}

write_config() {
  mkdir -p "$DIR/images" "$DIR/staging" "$DIR/locks"
  cat >"$DIR/glance-api.conf" <<EOF
[DEFAULT]
bind_host = 127.0.0.1
bind_port = $PORT
# One process: the tests kill and restart it by pid.
workers = 0
log_file = $DIR/glance-api.log
debug = False
node_staging_uri = file://$DIR/staging
# Must be a bracketed list: a bare value makes POST /v2/images fail with an empty 500.
enabled_import_methods = ['glance-direct']
show_image_direct_url = False
show_multiple_locations = False

[database]
connection = sqlite:///$DIR/glance.sqlite

[glance_store]
stores = file
default_store = file
filesystem_store_datadir = $DIR/images

[paste_deploy]
flavor = brickcrypt
config_file = $DIR/glance-api-paste.ini

[oslo_concurrency]
lock_path = $DIR/locks

[oslo_policy]
enforce_new_defaults = false
enforce_scope = false
EOF
  cat >"$DIR/glance-api-paste.ini" <<'EOF'
# Header identity (as behind Keystone's auth_token middleware): ContextMiddleware builds the
# request context from X-Identity-Status / X-Project-Id / X-User-Id / X-Roles.
[pipeline:glance-api-brickcrypt]
pipeline = cors http_proxy_to_wsgi versionnegotiation context rootapp

[composite:rootapp]
paste.composite_factory = glance.api:root_app_factory
/: apiversions
/v2: apiv2app

[app:apiversions]
paste.app_factory = glance.api.versions:create_resource

[app:apiv2app]
paste.app_factory = glance.api.v2.router:API.factory

[filter:versionnegotiation]
paste.filter_factory = glance.api.middleware.version_negotiation:VersionNegotiationFilter.factory

[filter:context]
paste.filter_factory = glance.api.middleware.context:ContextMiddleware.factory

[filter:http_proxy_to_wsgi]
paste.filter_factory = oslo_middleware:HTTPProxyToWSGI.factory

[filter:cors]
paste.filter_factory = oslo_middleware.cors:filter_factory
oslo_config_project = glance
oslo_config_program = glance-api
EOF
}

start() {
  if pid_alive; then
    # A busy machine can make a running server slow to answer: give it time before replacing it.
    local deadline=$((SECONDS + START_TIMEOUT))
    until answers || [ $SECONDS -ge $deadline ]; do sleep 0.5; done
    if answers; then
      log "already running at $(url) (pid $(cat "$DIR/pid"))"
      return
    fi
  fi
  stop_quiet
  if (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null; then
    log "port $PORT on 127.0.0.1 is taken by another process; set BRICKCRYPT_GLANCE_PORT"
    return 1
  fi
  ensure_installed
  mkdir -p "$DIR"
  chmod 700 "$DIR"
  # Every start is a fresh service (empty database, store and staging area), unless
  # BRICKCRYPT_GLANCE_KEEP_STATE=1 restarts it on its old state (a test that kills the server).
  if [ "${BRICKCRYPT_GLANCE_KEEP_STATE:-0}" != 1 ]; then
    rm -rf "$DIR/images" "$DIR/staging" "$DIR/glance.sqlite" "$DIR/glance-api.log"
  fi
  write_config
  (cd "$DIR" && "$PY" -m glance.cmd.manage --config-file "$DIR/glance-api.conf" db sync >"$DIR/db-sync.log" 2>&1) \
    || { log "db sync failed:"; tail -n 20 "$DIR/db-sync.log" >&2; return 1; }
  (
    cd "$DIR"
    setsid "$PY" -m glance.cmd.api --config-file "$DIR/glance-api.conf" >"$DIR/stdout.log" 2>&1 </dev/null &
    echo $! >"$DIR/pid"
  )
  local deadline=$((SECONDS + START_TIMEOUT))
  until answers; do
    if ! pid_alive; then
      log "exited during start; last log lines:"
      tail -n 20 "$DIR/stdout.log" "$DIR/glance-api.log" >&2 2>/dev/null || true
      rm -f "$DIR/pid"
      return 1
    fi
    if [ $SECONDS -ge $deadline ]; then
      log "not ready within ${START_TIMEOUT}s; last log lines:"
      tail -n 20 "$DIR/stdout.log" "$DIR/glance-api.log" >&2 2>/dev/null || true
      stop_quiet
      return 1
    fi
    sleep 0.2
  done
  log "running at $(url) (pid $(cat "$DIR/pid"))"
}

stop_pidfile() { # name
  [ -f "$DIR/pid" ] || return 0
  local pid
  pid=$(cat "$DIR/pid")
  if kill -0 "$pid" 2>/dev/null; then
    # Started with setsid: signal its process group (only our own processes).
    kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null || true
    local i
    for i in $(seq 1 100); do
      kill -0 "$pid" 2>/dev/null || break
      sleep 0.1
    done
    if kill -0 "$pid" 2>/dev/null; then
      log "did not exit on SIGTERM; killing"
      kill -KILL -- "-$pid" 2>/dev/null || kill -KILL "$pid" 2>/dev/null || true
    fi
    [ "$1" = quiet ] || log "stopped"
  fi
  rm -f "$DIR/pid"
}
stop_quiet() { stop_pidfile quiet; }

case "${1:-}" in
  start) start ;;
  stop) stop_pidfile glance ;;
  status)
    if pid_alive && answers; then echo "glance: running at $(url)"; else echo "glance: stopped"; exit 1; fi
    ;;
  env)
    if ! pid_alive; then
      log "not running: run '$0 start' first"
      exit 1
    fi
    cat <<EOF
export BRICKCRYPT_TEST_GLANCE_URL='$(url)'
export BRICKCRYPT_TEST_GLANCE_DIR='$DIR'
export BRICKCRYPT_TEST_GLANCE_STORE='$DIR/images'
export BRICKCRYPT_TEST_GLANCE_PID='$(cat "$DIR/pid")'
EOF
    ;;
  *)
    echo "usage: $0 start|stop|status|env" >&2
    exit 2
    ;;
esac
