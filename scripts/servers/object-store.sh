#!/usr/bin/env bash
# Runs a real single-node OpenStack Swift on 127.0.0.1 (Debian's swift packages) with tempauth and
# the s3api middleware, for the backup store tests (swift+http:// and s3:// repositories).
#
# Usage: scripts/servers/object-store.sh start|stop|status|env
#   start   installs the Debian packages if missing, builds rings and configs in the state dir and
#           starts memcached + account/container/object/proxy servers (a second start reuses them)
#   stop    stops every server and waits for it to exit
#   status  exit 1 when the proxy does not answer
#   env     prints the `export ...` lines the tests read (ST_AUTH/ST_USER/ST_KEY, AWS_*, the URIs)
# State lives in ${BRICKCRYPT_OBJECT_STORE_DIR:-/tmp/brickcrypt-object-store}. Swift always reads
# /etc/swift/swift.conf (hash prefix/suffix); the Debian package ships it and it is not changed.
set -euo pipefail

DIR=${BRICKCRYPT_OBJECT_STORE_DIR:-/tmp/brickcrypt-object-store}
PROXY_PORT=${BRICKCRYPT_SWIFT_PORT:-18080}
OBJECT_PORT=$((PROXY_PORT + 10))
CONTAINER_PORT=$((PROXY_PORT + 11))
ACCOUNT_PORT=$((PROXY_PORT + 12))
MEMCACHED_PORT=$((PROXY_PORT + 13))
START_TIMEOUT=${BRICKCRYPT_OBJECT_STORE_TIMEOUT:-40}
SERVERS=(account container object proxy)

log() { echo "object-store: $*" >&2; }

install_packages() {
  local missing=()
  for b in swift-proxy-server swift-object-server swift-container-server swift-account-server swift-ring-builder memcached; do
    command -v "$b" >/dev/null 2>&1 || [ -x "/usr/bin/$b" ] || missing+=("$b")
  done
  [ ${#missing[@]} -eq 0 ] && [ -f /etc/swift/swift.conf ] && return
  log "installing Debian swift packages (missing: ${missing[*]:-swift.conf})"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >/dev/null
  apt-get install -y -qq --no-install-recommends swift swift-proxy swift-object swift-container swift-account python3-swift memcached >/dev/null
}

pid_alive() { [ -f "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

proxy_answers() {
  curl -fsS -m 2 -o /dev/null "http://127.0.0.1:$PROXY_PORT/healthcheck" 2>/dev/null &&
    curl -fsS -m 3 -o /dev/null -H 'X-Auth-User: test:tester' -H 'X-Auth-Key: testing' "http://127.0.0.1:$PROXY_PORT/auth/v1.0" 2>/dev/null
}

write_configs() {
  mkdir -p "$DIR/etc" "$DIR/srv/d1" "$DIR/run" "$DIR/log"
  local common="bind_ip = 127.0.0.1
workers = 0
user = root
swift_dir = $DIR/etc
devices = $DIR/srv
mount_check = false
log_name = swift"
  cat >"$DIR/etc/account-server.conf" <<CONF
[DEFAULT]
bind_port = $ACCOUNT_PORT
$common
[pipeline:main]
pipeline = account-server
[app:account-server]
use = egg:swift#account
CONF
  cat >"$DIR/etc/container-server.conf" <<CONF
[DEFAULT]
bind_port = $CONTAINER_PORT
$common
[pipeline:main]
pipeline = container-server
[app:container-server]
use = egg:swift#container
CONF
  cat >"$DIR/etc/object-server.conf" <<CONF
[DEFAULT]
bind_port = $OBJECT_PORT
$common
[pipeline:main]
pipeline = object-server
[app:object-server]
use = egg:swift#object
CONF
  cat >"$DIR/etc/proxy-server.conf" <<CONF
[DEFAULT]
bind_port = $PROXY_PORT
$common
[pipeline:main]
pipeline = catch_errors gatekeeper healthcheck proxy-logging cache listing_formats s3api tempauth copy slo dlo versioned_writes proxy-logging proxy-server
[app:proxy-server]
use = egg:swift#proxy
account_autocreate = true
[filter:tempauth]
use = egg:swift#tempauth
user_test_tester = testing .admin .reseller_admin
[filter:s3api]
use = egg:swift#s3api
location = us-east-1
[filter:cache]
use = egg:swift#memcache
memcache_servers = 127.0.0.1:$MEMCACHED_PORT
[filter:catch_errors]
use = egg:swift#catch_errors
[filter:gatekeeper]
use = egg:swift#gatekeeper
[filter:healthcheck]
use = egg:swift#healthcheck
[filter:proxy-logging]
use = egg:swift#proxy_logging
[filter:listing_formats]
use = egg:swift#listing_formats
[filter:copy]
use = egg:swift#copy
[filter:slo]
use = egg:swift#slo
[filter:dlo]
use = egg:swift#dlo
[filter:versioned_writes]
use = egg:swift#versioned_writes
CONF
  (
    cd "$DIR/etc"
    for kind in account container object; do
      [ -f "$kind.ring.gz" ] && continue
      local port=$OBJECT_PORT
      [ "$kind" = account ] && port=$ACCOUNT_PORT
      [ "$kind" = container ] && port=$CONTAINER_PORT
      swift-ring-builder "$kind.builder" create 6 1 0 >/dev/null
      swift-ring-builder "$kind.builder" add "r1z1-127.0.0.1:$port/d1" 1 >/dev/null
      swift-ring-builder "$kind.builder" rebalance >/dev/null || true
    done
  )
}

start() {
  if pid_alive "$DIR/run/proxy.pid" && proxy_answers; then
    log "swift already running at http://127.0.0.1:$PROXY_PORT"
    return
  fi
  stop_quiet
  install_packages
  write_configs
  memcached -u root -l 127.0.0.1 -p "$MEMCACHED_PORT" -U 0 -m 32 >"$DIR/log/memcached.log" 2>&1 &
  echo $! >"$DIR/run/memcached.pid"
  for s in "${SERVERS[@]}"; do
    "/usr/bin/swift-$s-server" "$DIR/etc/$s-server.conf" -v >"$DIR/log/$s.log" 2>&1 &
    echo $! >"$DIR/run/$s.pid"
  done
  local deadline=$((SECONDS + START_TIMEOUT))
  until proxy_answers; do
    for s in "${SERVERS[@]}"; do
      if ! pid_alive "$DIR/run/$s.pid"; then
        log "swift-$s-server exited during start:"
        tail -n 20 "$DIR/log/$s.log" >&2 || true
        return 1
      fi
    done
    if [ $SECONDS -ge $deadline ]; then
      log "swift not ready within ${START_TIMEOUT}s"
      tail -n 20 "$DIR/log/proxy.log" >&2 || true
      return 1
    fi
    sleep 0.3
  done
  log "swift (tempauth + s3api) at http://127.0.0.1:$PROXY_PORT"
}

stop_quiet() {
  local f pid
  for f in "$DIR"/run/*.pid; do
    [ -e "$f" ] || continue
    pid=$(cat "$f")
    kill "$pid" 2>/dev/null || true
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$pid" 2>/dev/null || true
    rm -f "$f"
  done
}

case "${1:-}" in
  start) start ;;
  stop) stop_quiet; log "stopped" ;;
  status) proxy_answers ;;
  env)
    cat <<ENV
export ST_AUTH=http://127.0.0.1:$PROXY_PORT/auth/v1.0
export ST_USER=test:tester
export ST_KEY=testing
export AWS_ACCESS_KEY_ID=test:tester
export AWS_SECRET_ACCESS_KEY=testing
export AWS_REGION=us-east-1
export BRICKCRYPT_TEST_SWIFT_URI=swift+http://127.0.0.1:$PROXY_PORT
export BRICKCRYPT_TEST_S3_URI=s3://127.0.0.1:$PROXY_PORT
ENV
    ;;
  *) echo "usage: $0 start|stop|status|env" >&2; exit 2 ;;
esac
