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

# Key servers (Barbican, PyKMIP) for the key-manager backend tests; stopped on exit.
if [ -x scripts/key-servers.sh ]; then
  bash scripts/key-servers.sh start
  trap 'bash scripts/key-servers.sh stop' EXIT
fi

files=$(find dist/test -name '*.test.js' | sort)
if [ $# -gt 0 ]; then files="$*"; fi
# shellcheck disable=SC2086
node --test --test-concurrency=2 --test-reporter=spec $files
