#!/usr/bin/env bash
# Runs real key servers on 127.0.0.1 for the Barbican and KMIP key-manager backend tests:
#   - OpenStack Barbican (Debian python3-barbican) without Keystone: the unauthenticated-context
#     pipeline trusts X-Project-Id / X-User-Id / X-Roles, an sqlite db and the simple_crypto KEK;
#   - PyKMIP's server (Debian python3-pykmip) with mutual TLS: a throwaway CA, a server cert and
#     two client certs (CN brickcrypt-a and brickcrypt-b, so tests can check object ownership).
#
# Usage: scripts/key-servers.sh start|stop|status|env
#   start   starts whatever is not running yet (a second start reuses running servers)
#   stop    stops both servers and waits for them to exit
#   status  prints the state of each server; exit 1 if one is down
#   env     prints `export ...` lines the tests read (also in $DIR/servers.json)
# State lives in ${BRICKCRYPT_KEY_SERVERS_DIR:-/tmp/brickcrypt-key-servers}. Nothing outside it is written.
set -euo pipefail

cd "$(dirname "$0")/.."
DIR=${BRICKCRYPT_KEY_SERVERS_DIR:-/tmp/brickcrypt-key-servers}
PY=/usr/bin/python3 # Debian's python: a pyenv python on PATH cannot see Debian's packages
BARBICAN_DIR=$DIR/barbican
KMIP_DIR=$DIR/kmip
START_TIMEOUT=${BRICKCRYPT_KEY_SERVERS_TIMEOUT:-25}

log() { echo "key-servers: $*" >&2; }

# Waits until CHECK succeeds; fails early if the server died, or after START_TIMEOUT seconds,
# showing the tail of its logs either way.
wait_ready() { # name pidfile check log...
  local name=$1 pidfile=$2 check=$3
  shift 3
  local deadline=$((SECONDS + START_TIMEOUT))
  until "$check"; do
    if ! pid_alive "$pidfile"; then
      log "$name exited during start; last log lines:"
      tail -n 20 "$@" >&2 2>/dev/null || true
      return 1
    fi
    if [ $SECONDS -ge $deadline ]; then
      log "$name not ready within ${START_TIMEOUT}s; last log lines:"
      tail -n 20 "$@" >&2 2>/dev/null || true
      return 1
    fi
    sleep 0.2
  done
}

pid_alive() { # pidfile
  [ -f "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null
}

port_free() { # port
  "$PY" - "$1" <<'EOF'
import socket, sys
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
try:
    s.bind(("127.0.0.1", int(sys.argv[1])))
except OSError:
    sys.exit(1)
EOF
}

free_port() { # preferred port -> prints it if free, else an ephemeral free port
  if port_free "$1"; then echo "$1"; return; fi
  "$PY" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

# ---------------------------------------------------------------- Barbican
barbican_url() { echo "http://127.0.0.1:$(cat "$BARBICAN_DIR/port")"; }

barbican_answers() {
  [ -f "$BARBICAN_DIR/port" ] || return 1
  # Cheap TCP probe first: the HTTP check below costs a python start.
  (exec 3<>"/dev/tcp/127.0.0.1/$(cat "$BARBICAN_DIR/port")") 2>/dev/null || return 1
  "$PY" - "$(barbican_url)" <<'EOF'
import sys, urllib.request
import urllib.error
# A member may list its project's secrets: a JSON answer means the app and its db are up.
req = urllib.request.Request(sys.argv[1] + "/v1/secrets?limit=1", headers={"X-Project-Id": "healthcheck", "X-Roles": "member", "Accept": "application/json"})
try:
    urllib.request.urlopen(req, timeout=2).read()
except Exception:
    sys.exit(1)
EOF
}

barbican_start() {
  if pid_alive "$BARBICAN_DIR/pid" && barbican_answers; then
    log "barbican already running at $(barbican_url)"
    return
  fi
  barbican_stop_quiet
  mkdir -p "$BARBICAN_DIR/home/.barbican" "$BARBICAN_DIR/policy.d"
  rm -f "$BARBICAN_DIR/barbican.sqlite"
  local port
  port=$(free_port "${BRICKCRYPT_BARBICAN_PORT:-9311}")
  echo "$port" >"$BARBICAN_DIR/port"
  [ -f "$BARBICAN_DIR/kek" ] || "$PY" -c 'import base64, os; print(base64.b64encode(os.urandom(32)).decode())' >"$BARBICAN_DIR/kek"
  chmod 600 "$BARBICAN_DIR/kek"
  # oslo.config looks for ~/.barbican/barbican.conf, so the server runs with HOME in the state dir.
  cat >"$BARBICAN_DIR/home/.barbican/barbican.conf" <<EOF
[DEFAULT]
host_href = http://127.0.0.1:$port
sql_connection = sqlite:///$BARBICAN_DIR/barbican.sqlite
db_auto_create = True
log_file = $BARBICAN_DIR/barbican.log
debug = False

[queue]
# Orders complete inside the API request: no worker process.
enable = False

[secretstore]
enabled_secretstore_plugins = store_crypto

[crypto]
enabled_crypto_plugins = simple_crypto

[simple_crypto_plugin]
kek = $(cat "$BARBICAN_DIR/kek")

[oslo_policy]
policy_dirs = $BARBICAN_DIR/policy.d
enforce_new_defaults = True
enforce_scope = False
EOF
  cat >"$BARBICAN_DIR/barbican-api-paste.ini" <<'EOF'
[composite:main]
use = egg:Paste#urlmap
/ = barbican_version
/v1 = barbican_api

[pipeline:barbican_version]
pipeline = http_proxy_to_wsgi versionapp

[pipeline:barbican_api]
pipeline = http_proxy_to_wsgi unauthenticated-context microversion apiapp

[app:apiapp]
paste.app_factory = barbican.api.app:create_main_app

[app:versionapp]
paste.app_factory = barbican.api.app:create_version_app

[filter:unauthenticated-context]
paste.filter_factory = barbican.api.middleware.context:UnauthenticatedContextMiddleware.factory

[filter:microversion]
paste.filter_factory = barbican.api.middleware.microversion:MicroversionMiddleware.factory

[filter:http_proxy_to_wsgi]
paste.filter_factory = oslo_middleware.http_proxy_to_wsgi:HTTPProxyToWSGI.factory
EOF
  cat >"$BARBICAN_DIR/serve.py" <<'EOF'
import sys
from paste.deploy import loadapp
import waitress

ini, port = sys.argv[1], int(sys.argv[2])
del sys.argv[1:]  # barbican parses sys.argv with oslo.config on import
app = loadapp("config:" + ini)
# One request at a time: barbican keeps its state in SQLite, and two writing requests at once
# fail with "database is locked" (HTTP 500 "Secret creation failure") when the test files run
# side by side.
waitress.serve(app, host="127.0.0.1", port=port, threads=1, _quiet=True)
EOF
  (
    cd "$BARBICAN_DIR"
    HOME=$BARBICAN_DIR/home setsid "$PY" serve.py "$BARBICAN_DIR/barbican-api-paste.ini" "$port" \
      >"$BARBICAN_DIR/stdout.log" 2>&1 </dev/null &
    echo $! >"$BARBICAN_DIR/pid"
  )
  wait_ready barbican "$BARBICAN_DIR/pid" barbican_answers "$BARBICAN_DIR/stdout.log" "$BARBICAN_DIR/barbican.log" || return 1
  log "barbican running at $(barbican_url) (pid $(cat "$BARBICAN_DIR/pid"))"
}

# ---------------------------------------------------------------- PyKMIP
kmip_certs() {
  local d=$KMIP_DIR/pki
  [ -f "$d/done" ] && return
  rm -rf "$d"
  mkdir -p "$d"
  (
    cd "$d"
    umask 077
    openssl req -x509 -newkey rsa:2048 -nodes -days 3650 -subj "/CN=brickcrypt test CA" \
      -keyout ca.key -out ca.pem -addext "basicConstraints=critical,CA:TRUE" \
      -addext "keyUsage=critical,keyCertSign,cRLSign" 2>/dev/null
    issue() { # name cn extfile-lines
      openssl req -newkey rsa:2048 -nodes -subj "/CN=$2" -keyout "$1.key" -out "$1.csr" 2>/dev/null
      printf '%s\n' "$3" >"$1.ext"
      openssl x509 -req -in "$1.csr" -CA ca.pem -CAkey ca.key -CAcreateserial -days 3650 \
        -extfile "$1.ext" -out "$1.pem" 2>/dev/null
      rm -f "$1.csr" "$1.ext"
    }
    issue server 127.0.0.1 "$(printf 'basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\nsubjectAltName=IP:127.0.0.1,DNS:localhost')"
    for who in a b; do
      issue "client-$who" "brickcrypt-$who" "$(printf 'basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\nextendedKeyUsage=clientAuth')"
    done
    chmod 644 ./*.pem
    touch done
  )
}

kmip_port() { cat "$KMIP_DIR/port"; }

kmip_answers() {
  [ -f "$KMIP_DIR/port" ] && grep -q "Starting connection service" "$KMIP_DIR/server.log" 2>/dev/null \
    && ! port_free "$(kmip_port)"
}

kmip_start() {
  if pid_alive "$KMIP_DIR/pid" && kmip_answers; then
    log "pykmip already running on 127.0.0.1:$(kmip_port)"
    return
  fi
  kmip_stop_quiet
  mkdir -p "$KMIP_DIR/policies"
  # A fresh server starts with an empty database: Locate-based tests stay fast and independent.
  rm -f "$KMIP_DIR/pykmip.sqlite"
  kmip_certs
  local port
  port=$(free_port "${BRICKCRYPT_KMIP_PORT:-5696}")
  echo "$port" >"$KMIP_DIR/port"
  cat >"$KMIP_DIR/server.conf" <<EOF
[server]
hostname=127.0.0.1
port=$port
certificate_path=$KMIP_DIR/pki/server.pem
key_path=$KMIP_DIR/pki/server.key
ca_path=$KMIP_DIR/pki/ca.pem
auth_suite=TLS1.2
policy_path=$KMIP_DIR/policies
enable_tls_client_auth=True
database_path=$KMIP_DIR/pykmip.sqlite
logging_level=INFO
EOF
  : >"$KMIP_DIR/server.log"
  (
    cd "$KMIP_DIR"
    setsid /usr/bin/pykmip-server -f "$KMIP_DIR/server.conf" -l "$KMIP_DIR/server.log" \
      >"$KMIP_DIR/stdout.log" 2>&1 </dev/null &
    echo $! >"$KMIP_DIR/pid"
  )
  wait_ready pykmip-server "$KMIP_DIR/pid" kmip_answers "$KMIP_DIR/stdout.log" "$KMIP_DIR/server.log" || return 1
  log "pykmip running on 127.0.0.1:$port (pid $(cat "$KMIP_DIR/pid"))"
}

# ---------------------------------------------------------------- common
stop_pidfile() { # pidfile name
  local pidfile=$1 name=$2 pid
  [ -f "$pidfile" ] || return 0
  pid=$(cat "$pidfile")
  if kill -0 "$pid" 2>/dev/null; then
    # Each server was started with setsid: signal its process group (only our own processes).
    kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null || true
    local i
    for i in $(seq 1 100); do
      kill -0 "$pid" 2>/dev/null || break
      sleep 0.1
    done
    if kill -0 "$pid" 2>/dev/null; then
      log "$name did not exit on SIGTERM; killing"
      kill -KILL -- "-$pid" 2>/dev/null || kill -KILL "$pid" 2>/dev/null || true
    fi
    [ "$name" = quiet ] || log "$name stopped"
  fi
  rm -f "$pidfile"
}
barbican_stop_quiet() { stop_pidfile "$BARBICAN_DIR/pid" quiet; }
kmip_stop_quiet() { stop_pidfile "$KMIP_DIR/pid" quiet; }

write_json() {
  "$PY" - "$DIR/servers.json" "$(barbican_url)" "$(kmip_port)" "$KMIP_DIR/pki" <<'EOF'
import json, os, sys
path, url, port, pki = sys.argv[1:]
data = {
    "barbican": {"url": url},
    "kmip": {
        "host": "127.0.0.1", "port": int(port), "ca": f"{pki}/ca.pem",
        "cert": f"{pki}/client-a.pem", "key": f"{pki}/client-a.key",
        "cert2": f"{pki}/client-b.pem", "key2": f"{pki}/client-b.key",
    },
}
tmp = path + ".tmp"
with open(tmp, "w") as f:
    json.dump(data, f, indent=2)
os.replace(tmp, path)
EOF
}

print_env() {
  cat <<EOF
export BRICKCRYPT_KEY_SERVERS_DIR='$DIR'
export BRICKCRYPT_TEST_BARBICAN_URL='$(barbican_url)'
export BRICKCRYPT_TEST_KMIP_HOST='127.0.0.1'
export BRICKCRYPT_TEST_KMIP_PORT='$(kmip_port)'
export BRICKCRYPT_TEST_KMIP_CA='$KMIP_DIR/pki/ca.pem'
export BRICKCRYPT_TEST_KMIP_CERT='$KMIP_DIR/pki/client-a.pem'
export BRICKCRYPT_TEST_KMIP_KEY='$KMIP_DIR/pki/client-a.key'
export BRICKCRYPT_TEST_KMIP_CERT2='$KMIP_DIR/pki/client-b.pem'
export BRICKCRYPT_TEST_KMIP_KEY2='$KMIP_DIR/pki/client-b.key'
EOF
}

cmd=${1:-}
case "$cmd" in
  start)
    for tool in /usr/bin/pykmip-server openssl; do
      command -v "$tool" >/dev/null || { log "$tool missing: run scripts/install-test-tools.sh"; exit 1; }
    done
    "$PY" -c 'import barbican, paste.deploy, waitress' 2>/dev/null \
      || { log "python3-barbican missing: run scripts/install-test-tools.sh"; exit 1; }
    mkdir -p "$DIR"
    chmod 700 "$DIR"
    # Both start in parallel: the whole start stays within a few seconds.
    rc=0
    barbican_start &
    b=$!
    kmip_start || rc=1
    wait "$b" || rc=1
    if [ $rc -ne 0 ]; then
      log "start failed"
      exit 1
    fi
    write_json
    ;;
  stop)
    stop_pidfile "$BARBICAN_DIR/pid" barbican &
    stop_pidfile "$KMIP_DIR/pid" pykmip
    wait
    rm -f "$DIR/servers.json"
    ;;
  status)
    rc=0
    if pid_alive "$BARBICAN_DIR/pid" && barbican_answers; then echo "barbican: running at $(barbican_url)"; else echo "barbican: stopped"; rc=1; fi
    if pid_alive "$KMIP_DIR/pid" && kmip_answers; then echo "pykmip: running on 127.0.0.1:$(kmip_port)"; else echo "pykmip: stopped"; rc=1; fi
    exit $rc
    ;;
  env)
    if ! { pid_alive "$BARBICAN_DIR/pid" && pid_alive "$KMIP_DIR/pid"; }; then
      log "servers are not running: run '$0 start' first"
      exit 1
    fi
    print_env
    ;;
  *)
    echo "usage: $0 start|stop|status|env" >&2
    exit 2
    ;;
esac
