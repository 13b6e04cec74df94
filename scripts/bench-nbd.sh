#!/usr/bin/env bash
# NBD serving benchmark: `brickcrypt attach` against qemu-nbd (QEMU's luks driver) and
# nbdkit's luks filter, on the same LUKS1 volume, in one run. A client (nbdcopy, its defaults:
# multi-conn when offered, 64 requests in flight, 256 KiB requests) copies the whole export
# to null: (sequential read) and a random raw file onto the export (sequential write).
# Prints MiB/s (median of BENCH_RUNS runs) and brickcrypt's ratios against the targets. Each
# server gets one untimed warm-up read after it starts.
#
#   BENCH_SIZE  volume payload size (default 2G; e.g. 512M for a quick run)
#   BENCH_DIR   where the temporary files go (default /tmp; needs ~2x BENCH_SIZE free)
#   BENCH_RUNS  runs per case, the median is reported (default 3)
#
# Server settings: brickcrypt attach defaults; qemu-nbd defaults (cache=writeback, aio=threads)
# plus -t (stay up between clients) and -e 8 (allow 8 connections, so it offers multi-conn
# like the other two); nbdkit defaults (16 threads). All three serve the file through the
# page cache; nbdcopy does not flush at the end, so writes are measured into the page cache.
set -euo pipefail
cd "$(dirname "$0")/.."

size=${BENCH_SIZE:-2G}
base=${BENCH_DIR:-/tmp}
runs=${BENCH_RUNS:-3}

for tool in node nbdcopy nbdkit qemu-nbd nbdinfo openssl; do
  command -v "$tool" >/dev/null || { echo "bench-nbd: $tool is missing (run scripts/install-test-tools.sh)" >&2; exit 1; }
done
node scripts/build-native.mjs
[ -f dist/src/cli/main.js ] || npx tsc -p tsconfig.json

work=$(mktemp -d "$base/brickcrypt-bench-nbd.XXXXXX")
cleanup() {
  local p f
  for f in "$work"/*.pid; do
    [ -f "$f" ] || continue
    p=$(cat "$f" 2>/dev/null || true)
    [ -n "$p" ] && kill "$p" 2>/dev/null || true
  done
  # Let the servers exit before their files go.
  for f in "$work"/*.pid; do
    [ -f "$f" ] || continue
    p=$(cat "$f" 2>/dev/null || true)
    for _ in $(seq 50); do [ -n "$p" ] && kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
  done
  [ -n "${BENCH_KEEP:-}" ] || rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

bytes=$(numfmt --from=iec "$size")
mib=$(awk -v b="$bytes" 'BEGIN { printf "%.1f", b / 1048576 }')
vol=$work/vol.luks
key=$work/key
src=$work/src.raw
printf 'bench-passphrase' >"$key"

echo "bench-nbd: $size LUKS1 volume in $work (node $(node -v), $(qemu-nbd --version | head -1), $(nbdkit --version), $(nbdcopy --version | head -1), $(nproc) CPUs, $runs runs)"
# LUKS1 (the only version qemu-nbd and nbdkit read) with aes-xts-plain64, 512-bit key, 512-byte sectors.
node bin/brickcrypt format "$vol" --type luks1 --size "$size" --key-file "$key" --pbkdf-force-iterations 1000 >/dev/null
# Random plaintext (incompressible, no zero blocks): AES-CTR keystream is much faster than /dev/urandom.
(openssl enc -aes-128-ctr -pass pass:brickcrypt-bench-nbd -nosalt -pbkdf2 </dev/zero 2>/dev/null || true) | head -c "$bytes" >"$src"
src_sha=$(sha256sum "$src" | cut -d' ' -f1)

sock=$work/nbd.sock
uri="nbd+unix:///?socket=$sock"

wait_socket() {
  for _ in $(seq 200); do
    nbdinfo --size "$uri" >/dev/null 2>&1 && return 0
    sleep 0.05
  done
  echo "bench-nbd: $1 did not start" >&2
  exit 1
}

start_server() {
  case $1 in
    brickcrypt)
      node bin/brickcrypt attach "$vol" --key-file "$key" --socket "$sock" --daemon --pid-file "$work/server.pid" >/dev/null ;;
    qemu-nbd)
      qemu-nbd --object "secret,id=sec0,file=$key" --image-opts "driver=luks,key-secret=sec0,file.filename=$vol" \
        -k "$sock" -t -e 8 --fork --pid-file "$work/server.pid" ;;
    nbdkit)
      nbdkit -U "$sock" -P "$work/server.pid" --filter=luks file "$vol" "passphrase=+$key" ;;
  esac
  wait_socket "$1"
}

stop_server() {
  local p
  p=$(cat "$work/server.pid")
  kill "$p" 2>/dev/null || true
  for _ in $(seq 600); do kill -0 "$p" 2>/dev/null || break; sleep 0.05; done
  if kill -0 "$p" 2>/dev/null; then echo "bench-nbd: server $p did not stop" >&2; exit 1; fi
  rm -f "$work/server.pid" "$sock" "$sock.pid"
}

# timed CMD...: seconds the command took.
timed() {
  local t0 t1
  t0=$(date +%s.%N)
  "$@" >"$work/out" 2>&1 || { cat "$work/out" >&2; exit 1; }
  t1=$(date +%s.%N)
  awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.3f", b - a }'
}

declare -A results
servers=(brickcrypt qemu-nbd nbdkit)
for run in $(seq "$runs"); do
  for s in "${servers[@]}"; do
    start_server "$s"
    sync
    cat "$vol" "$src" >/dev/null # page cache warm for every server alike
    # One untimed read first, for every server alike: the servers are long-running daemons, and
    # a fresh process pays once for growing its buffers (and JIT warm-up), not on every request.
    nbdcopy "$uri" null:
    w=$(timed nbdcopy "$src" "$uri")
    # The write leaves up to 2 GiB dirty in the page cache; without a sync its writeback would
    # run during the read and charge it to whichever server wrote fastest.
    sync
    r=$(timed nbdcopy "$uri" null:)
    results[$s.write]+="$w "
    results[$s.read]+="$r "
    if [ "$run" = 1 ] && [ "$s" = brickcrypt ]; then
      # What brickcrypt wrote must read back identically through an independent LUKS implementation.
      stop_server
      start_server nbdkit
      got=$(nbdcopy "$uri" - | sha256sum | cut -d' ' -f1)
      [ "$got" = "$src_sha" ] || { echo "bench-nbd: data written by brickcrypt does not read back through nbdkit" >&2; exit 1; }
      echo "bench-nbd: check ok: brickcrypt's writes read back identically through nbdkit's luks filter"
    fi
    stop_server
    printf 'bench-nbd: run %d %-10s write %6.2f s  read %6.2f s\n' "$run" "$s" "$w" "$r"
  done
done

median() { tr ' ' '\n' | grep -v '^$' | sort -n | awk '{ a[NR] = $1 } END { print (NR % 2) ? a[(NR + 1) / 2] : (a[NR / 2] + a[NR / 2 + 1]) / 2 }'; }
declare -A speed
echo
printf '| server (%s MiB, median of %d) | read MiB/s | write MiB/s |\n|---|---|---|\n' "$mib" "$runs"
for s in "${servers[@]}"; do
  for op in read write; do
    t=$(echo "${results[$s.$op]}" | median)
    speed[$s.$op]=$(awk -v m="$mib" -v t="$t" 'BEGIN { printf "%.0f", m / t }')
  done
  printf '| %s | %s | %s |\n' "$s" "${speed[$s.read]}" "${speed[$s.write]}"
done

ratio() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", a / b }'; }
verdict() { awk -v r="$1" -v t="$2" 'BEGIN { print (r >= t) ? "met" : "MISSED" }'; }
echo
printf '| ratio | value | target | |\n|---|---|---|---|\n'
for spec in "read brickcrypt/nbdkit:read:nbdkit:1.3" "read brickcrypt/qemu-nbd:read:qemu-nbd:2.5" "write brickcrypt/qemu-nbd:write:qemu-nbd:2" "write brickcrypt/nbdkit:write:nbdkit:-"; do
  IFS=: read -r label op peer target <<<"$spec"
  r=$(ratio "${speed[brickcrypt.$op]}" "${speed[$peer.$op]}")
  if [ "$target" = - ]; then printf '| %s | %s | - | |\n' "$label" "$r"
  else printf '| %s | %s | >= %s | %s |\n' "$label" "$r" "$target" "$(verdict "$r" "$target")"; fi
done
