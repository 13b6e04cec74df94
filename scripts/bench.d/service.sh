#!/usr/bin/env bash
# Service API overhead: 200 clients (autocannon) poll job status while two image -> LUKS2 copies
# run in `brickcrypt serve`; prints p50/p99 polling latency and the jobs' throughput against
# `brickcrypt convert` of the same image measured in the same run.
#   BENCH_SIZE (default 1G), BENCH_DIR (default /tmp), BENCH_CLIENTS (default 200)
set -euo pipefail
cd "$(dirname "$0")/../.."
[ -d node_modules ] || npm ci --no-audit --no-fund
[ -d dist/src/service ] || npx tsc -p tsconfig.json
node bench/service-load.mjs
