#!/usr/bin/env bash
# Conversion benchmark: brickcrypt convert against qemu-img convert and plain copies, in one
# run, on the same random source file (page cache warm). Prints MiB/s, the ratios and
# brickcrypt's peak RSS.
#
#   BENCH_SIZE  source size (default 2G; e.g. 512M for a quick run)
#   BENCH_DIR   where the temporary files go (default /tmp; needs ~4x BENCH_SIZE free)
#   BENCH_ITER_TIME  LUKS keyslot iter-time in ms for both tools (default 100)
#   BENCH_RUNS  runs per tool and case, the best counts (default 2; a shared VM is noisy, and
#               the first write into memory the guest has just freed is several times slower)
#
# Cases: raw->luks1, luks1->raw, qcow2->luks1. Both tools use the same iter-time, so each
# end-to-end time includes a PBKDF benchmark; brickcrypt's KDF time is shown separately.
#
# Durability differs by default, so each tool runs in more than one cache mode: qemu-img as it
# runs by default (cache=unsafe for the target: no flush at all, the data may still be only in
# the page cache when it exits) and with `-t writeback`, where it fdatasyncs the target at the
# end; brickcrypt as it runs by default (for a file target --cache auto is writeback: page
# cache, then it fsyncs the target and its directory before it renames the target into place),
# with --cache none (data with O_DIRECT, same fsyncs) and with --no-sync (no fsync at all, like
# qemu-img's default). The like-for-like ratios are bc/qemu-wb (both page cache + sync) and
# bc-ns/qemu (neither synced).
# The copy references: `cp` (coreutils uses copy_file_range: an in-kernel copy, no user-space
# pass over the data), `cp` + `sync FILE`, and `dd bs=4M` through user space, with and without
# conv=fsync. brickcrypt's fair reference is a copy that also syncs: cp+sync and dd+fsync.
set -euo pipefail
cd "$(dirname "$0")/.."

size=${BENCH_SIZE:-2G}
base=${BENCH_DIR:-/tmp}
iter=${BENCH_ITER_TIME:-100}
runs=${BENCH_RUNS:-2}

# Set up like the tests do: the peer tools from Debian, the dependencies, a fresh build.
bash scripts/install-test-tools.sh
[ -d node_modules ] || npm ci --no-audit --no-fund
node scripts/build-native.mjs
npx tsc -p tsconfig.json
timer=()
if [ -x /usr/bin/time ]; then timer=(/usr/bin/time -f '%e %M %U %S' -o); fi

work=$(mktemp -d "$base/brickcrypt-bench.XXXXXX")
trap '[ -n "${BENCH_KEEP:-}" ] || rm -rf "$work"' EXIT
bytes=$(numfmt --from=iec "$size")
mib=$(awk -v b="$bytes" 'BEGIN { printf "%.1f", b / 1048576 }')

echo "bench: $size random source in $work (node $(node -v), $(qemu-img --version | head -1), $(nproc) CPUs)"
# Random data (incompressible, no zero blocks): AES-CTR keystream is much faster than /dev/urandom.
(openssl enc -aes-128-ctr -pass pass:brickcrypt-bench -nosalt -pbkdf2 </dev/zero 2>/dev/null || true) | head -c "$bytes" >"$work/src.raw"
printf 'bench-passphrase' >"$work/key"
qemu-img convert -f raw -O qcow2 "$work/src.raw" "$work/src.qcow2"
cat "$work/src.raw" "$work/src.qcow2" >/dev/null # warm the page cache

# run NAME CMD...: runs a command, records seconds (and peak RSS in KiB when GNU time is there).
declare -A secs rss cpu
run() {
  local name=$1
  shift
  local t0 t1
  local attempt
  # qemu-img's PBKDF benchmark fails now and then ("Unable to get accurate CPU usage"): retry.
  for attempt in 1 2 3; do
    sync
    t0=$(date +%s.%N)
    if "${timer[@]}" ${timer:+"$work/time.$name"} "$@" >"$work/out.$name" 2>"$work/err.$name"; then break; fi
    if [ "$attempt" -eq 3 ]; then cat "$work/err.$name" >&2; exit 1; fi
    echo "bench: $name failed ($(head -1 "$work/err.$name")), retrying" >&2
  done
  t1=$(date +%s.%N)
  secs[$name]=$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.3f", b - a }')
  rss[$name]=$(if [ -f "$work/time.$name" ]; then tail -1 "$work/time.$name" | awk '{ print $2 }'; else echo 0; fi)
  cpu[$name]=$(if [ -f "$work/time.$name" ]; then tail -1 "$work/time.$name" | awk '{ printf "%.2f", $3 + $4 }'; else echo '?'; fi)
}

# best NAME CLEANUP CMD...: `run` BENCH_RUNS times (CLEANUP, a shell snippet, after each), keeps the fastest.
best() {
  local name=$1 cleanup=$2
  shift 2
  local top="" topr="" topc="" i
  for i in $(seq "$runs"); do
    run "$name" "$@"
    if [ -z "$top" ] || awk -v a="${secs[$name]}" -v b="$top" 'BEGIN { exit !(a + 0 < b + 0) }'; then
      top=${secs[$name]}; topr=${rss[$name]}; topc=${cpu[$name]}
      cp "$work/out.$name" "$work/best.$name"
    fi
    eval "$cleanup"
  done
  secs[$name]=$top; rss[$name]=$topr; cpu[$name]=$topc
}

bc=(node bin/brickcrypt convert --json)
qemu_secret=(--object "secret,id=sec0,file=$work/key")

# Copies: the same bytes through the page cache (best of 3 each, as the first copy can be
# slowed by the writeback of the freshly made source files).
saved=$runs
runs=3
best cp 'rm -f "$work/cp.raw"' cp "$work/src.raw" "$work/cp.raw"
best cpsync 'rm -f "$work/cp.raw"' bash -c 'cp "$1" "$2" && sync "$2"' cp "$work/src.raw" "$work/cp.raw"
best dd 'rm -f "$work/dd.raw"' dd if="$work/src.raw" of="$work/dd.raw" bs=4M
best ddsync 'rm -f "$work/dd.raw"' dd if="$work/src.raw" of="$work/dd.raw" bs=4M conv=fsync
runs=$saved

qemu=(qemu-img convert -W -m 16 "${qemu_secret[@]}")

# raw -> luks1
best bc_raw_luks 'rm -f "$work/bc.luks"' "${bc[@]}" "$work/src.raw" "$work/bc.luks" --dst-format luks1 --dst-key-file "$work/key" --iter-time "$iter"
best q_raw_luks 'rm -f "$work/q.luks"' "${qemu[@]}" -f raw -O luks -o "key-secret=sec0,iter-time=$iter" "$work/src.raw" "$work/q.luks"
best qw_raw_luks 'rm -f "$work/q.luks"' "${qemu[@]}" -t writeback -f raw -O luks -o "key-secret=sec0,iter-time=$iter" "$work/src.raw" "$work/q.luks"
best bn_raw_luks 'rm -f "$work/bc.luks"' "${bc[@]}" --no-sync "$work/src.raw" "$work/bc.luks" --dst-format luks1 --dst-key-file "$work/key" --iter-time "$iter"
best bd_raw_luks 'rm -f "$work/bc.luks"' "${bc[@]}" --cache none "$work/src.raw" "$work/bc.luks" --dst-format luks1 --dst-key-file "$work/key" --iter-time "$iter"

# luks1 -> raw (both read the same LUKS1 file, made by brickcrypt; warmed like the other sources)
"${bc[@]}" "$work/src.raw" "$work/bc.luks" --dst-format luks1 --dst-key-file "$work/key" --iter-time "$iter" >/dev/null
cat "$work/bc.luks" >/dev/null
best bc_luks_raw 'rm -f "$work/bc.raw"' "${bc[@]}" "$work/bc.luks" "$work/bc.raw" --dst-format raw --src-key-file "$work/key"
best q_luks_raw 'rm -f "$work/q.raw"' "${qemu[@]}" --image-opts "driver=luks,key-secret=sec0,file.filename=$work/bc.luks" -O raw "$work/q.raw"
best qw_luks_raw 'rm -f "$work/q.raw"' "${qemu[@]}" -t writeback --image-opts "driver=luks,key-secret=sec0,file.filename=$work/bc.luks" -O raw "$work/q.raw"
best bn_luks_raw 'rm -f "$work/bc.raw"' "${bc[@]}" --no-sync "$work/bc.luks" "$work/bc.raw" --dst-format raw --src-key-file "$work/key"
best bd_luks_raw 'rm -f "$work/bc.raw"' "${bc[@]}" --cache none "$work/bc.luks" "$work/bc.raw" --dst-format raw --src-key-file "$work/key"
rm -f "$work/bc.luks"

# qcow2 -> luks1
best bc_qcow_luks 'rm -f "$work/bc2.luks"' "${bc[@]}" "$work/src.qcow2" "$work/bc2.luks" --dst-format luks1 --dst-key-file "$work/key" --iter-time "$iter"
best q_qcow_luks 'rm -f "$work/q2.luks"' "${qemu[@]}" -f qcow2 -O luks -o "key-secret=sec0,iter-time=$iter" "$work/src.qcow2" "$work/q2.luks"
best qw_qcow_luks 'rm -f "$work/q2.luks"' "${qemu[@]}" -t writeback -f qcow2 -O luks -o "key-secret=sec0,iter-time=$iter" "$work/src.qcow2" "$work/q2.luks"
best bn_qcow_luks 'rm -f "$work/bc2.luks"' "${bc[@]}" --no-sync "$work/src.qcow2" "$work/bc2.luks" --dst-format luks1 --dst-key-file "$work/key" --iter-time "$iter"
best bd_qcow_luks 'rm -f "$work/bc2.luks"' "${bc[@]}" --cache none "$work/src.qcow2" "$work/bc2.luks" --dst-format luks1 --dst-key-file "$work/key" --iter-time "$iter"

kdf() { grep '"event":"done"' "$work/best.$1" | node -e 'let s="";process.stdin.on("data",d=>s+=d).on("end",()=>{const r=JSON.parse(s);process.stdout.write(r.kdfSeconds.toFixed(2)+" "+(r.kdfBackgroundSeconds??0).toFixed(2)+" "+(r.peakRssBytes/1048576).toFixed(0)+"\n")})'; }
rate() { awk -v m="$mib" -v s="$1" 'BEGIN { printf "%.0f", m / s }'; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", a / b }'; }

cp_rate=$(rate "${secs[cp]}")
cps_rate=$(rate "${secs[cpsync]}")
dd_rate=$(rate "${secs[dd]}")
dds_rate=$(rate "${secs[ddsync]}")
echo
echo "size ${mib} MiB; iter-time ${iter} ms for both tools; best of ${runs} runs (copies: best of 3)"
echo "copies: cp ${cp_rate} MiB/s (in-kernel copy_file_range), cp+sync ${cps_rate}, dd bs=4M ${dd_rate}, dd bs=4M conv=fsync ${dds_rate}"
echo "bc = brickcrypt default (for a file: page cache + fsync); bc-dio = brickcrypt --cache none (O_DIRECT + fsync); bc-ns = brickcrypt --no-sync"
echo "qemu = qemu-img default (cache=unsafe, no flush); qemu-wb = qemu-img -t writeback (fdatasync at the end)"
printf '%-10s %6s %6s %6s %6s %7s | %8s %9s %9s %8s | %8s %7s %6s %6s | %6s %6s %7s %6s %6s\n' case bc bc-dio bc-ns qemu qemu-wb 'bc/q-wb' 'bc-dio/q-wb' 'bc-ns/q' 'bc/qemu' 'bc/cp+s' 'bc-ns/cp' 'bc/dd+s' 'bc-ns/dd' 'KDF s' 'KDF bg' 'RSS' 'bcCPU' 'qCPU'
for c in raw_luks luks_raw qcow_luks; do
  b=$(rate "${secs[bc_$c]}")
  bn=$(rate "${secs[bn_$c]}")
  bd=$(rate "${secs[bd_$c]}")
  q=$(rate "${secs[q_$c]}")
  qw=$(rate "${secs[qw_$c]}")
  read -r k kb r < <(kdf "bc_$c")
  tr=$(awk -v k="${rss[bc_$c]}" 'BEGIN { printf "%.0f", k / 1024 }')
  [ "$tr" != 0 ] && r="$r/$tr"
  printf '%-10s %6s %6s %6s %6s %7s | %8s %9s %9s %8s | %8s %7s %6s %6s | %6s %6s %7s %6s %6s\n' "${c/_/->}" "$b" "$bd" "$bn" "$q" "$qw" \
    "$(ratio "$b" "$qw")" "$(ratio "$bd" "$qw")" "$(ratio "$bn" "$q")" "$(ratio "$b" "$q")" \
    "$(ratio "$b" "$cps_rate")" "$(ratio "$bn" "$cp_rate")" "$(ratio "$b" "$dds_rate")" "$(ratio "$bn" "$dd_rate")" \
    "$k" "$kb" "$r" "${cpu[bc_$c]}" "${cpu[q_$c]}"
done
echo "MiB/s end to end (process start to exit, including each tool's PBKDF benchmark and, where it flushes, the final flush)."
echo "KDF s: key derivation brickcrypt waited for; KDF bg: keyslot derivation it ran during the copy. RSS MiB: from --json / from GNU time."
echo "load average at the end: $(cut -d' ' -f1-3 /proc/loadavg) (a loaded machine distorts MiB/s; CPU seconds are steadier)"
echo "ratios: bc/q-wb and bc-ns/q compare like with like (page cache + sync, neither synced); bc-dio/q-wb compares synced runs; bc/qemu compares the defaults."
echo "targets: brickcrypt >= 3x qemu-img; >= 0.70 of cp (bc/cp+s and bc-ns/cp are the like-for-like copies)"

# Attach path: sequential read/write through nbdcopy, brickcrypt vs qemu-nbd and nbdkit's luks filter.
if [ "${BENCH_NBD:-1}" = 1 ]; then
  echo
  bash "$(dirname "$0")/bench-nbd.sh"
fi

# Workflow benchmarks (image service, backup, re-encryption, service API): each
# scripts/bench.d/*.sh prints its own ratios against the peer it measures in the same run.
for b in scripts/bench.d/*.sh; do
  [ -e "$b" ] || continue
  echo
  bash "$b"
done
