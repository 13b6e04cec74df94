#!/usr/bin/env bash
# Sets up and runs every brickcrypt test: installs the interop tools, builds, starts
# the key servers the backend tests need, and runs node's test runner over dist/test.
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/install-test-tools.sh
[ -d node_modules ] || npm ci
node scripts/build-native.mjs
# A fresh dist/: a compiled test whose source was renamed or removed must not run.
rm -rf dist
npx tsc -p tsconfig.json

# Real servers the tests talk to, each a script taking start|stop: the key servers (Barbican,
# PyKMIP) and every scripts/servers/*.sh (one per server kind). All are stopped on exit, in
# reverse order, also when a start fails half-way.
servers=(scripts/key-servers.sh)
for s in scripts/servers/*.sh; do [ -e "$s" ] && servers+=("$s"); done
started=()
stop_servers() {
  local i
  for ((i = ${#started[@]} - 1; i >= 0; i--)); do bash "${started[$i]}" stop || true; done
}
trap stop_servers EXIT
for s in "${servers[@]}"; do
  started+=("$s")
  bash "$s" start
done

files=$(find dist/test -name '*.test.js' | sort)
if [ $# -gt 0 ]; then files="$*"; fi
# shellcheck disable=SC2086
node --test --test-concurrency=2 --test-reporter=spec $files
