#!/usr/bin/env bash
# Conversion benchmark: brickcrypt convert against qemu-img convert and cp, in one run, on the
# same random source file (page cache warm). Prints MiB/s, the ratios and brickcrypt's peak RSS.
#
#   BENCH_SIZE  source size (default 2G; e.g. 256M for a quick run)
#   BENCH_DIR   where the temporary files go (default /tmp; needs ~4x BENCH_SIZE free)
#   BENCH_ITER_TIME  LUKS keyslot iter-time in ms for both tools (default 100)
#
# Cases: raw->luks1, luks1->raw, qcow2->luks1. Both tools use the same iter-time, so each
# end-to-end time includes a PBKDF benchmark; brickcrypt's KDF time is shown separately.
set -euo pipefail
cd "$(dirname "$0")/.."

size=${BENCH_SIZE:-2G}
base=${BENCH_DIR:-/tmp}
iter=${BENCH_ITER_TIME:-100}

for tool in qemu-img node; do
  command -v "$tool" >/dev/null || { echo "bench: $tool is missing (run scripts/install-test-tools.sh)" >&2; exit 1; }
done
timer=()
if [ -x /usr/bin/time ]; then timer=(/usr/bin/time -f '%e %M %U %S' -o); fi
[ -f dist/src/cli/main.js ] || npx tsc -p tsconfig.json

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

bc=(node bin/brickcrypt convert --json)
qemu_secret=(--object "secret,id=sec0,file=$work/key")

# cp: the same bytes through the page cache, without and with fsync at the end (best of 3:
# the first copy can be slowed by the writeback of the freshly made source files).
min() { awk -v a="$1" -v b="$2" 'BEGIN { print (a == "" || b + 0 < a + 0) ? b : a }'; }
cp_best=""
cps_best=""
for i in 1 2 3; do
  run cp cp "$work/src.raw" "$work/cp.raw"
  rm -f "$work/cp.raw"
  cp_best=$(min "$cp_best" "${secs[cp]}")
  run cpsync bash -c 'cp "$1" "$2" && sync "$2"' cp "$work/src.raw" "$work/cp.raw"
  rm -f "$work/cp.raw"
  cps_best=$(min "$cps_best" "${secs[cpsync]}")
done
secs[cp]=$cp_best
secs[cpsync]=$cps_best

# raw -> luks1
run bc_raw_luks "${bc[@]}" "$work/src.raw" "$work/bc.luks" --dst-format luks1 --dst-key-file "$work/key" --iter-time "$iter"
run q_raw_luks qemu-img convert -W -m 16 "${qemu_secret[@]}" -f raw -O luks -o "key-secret=sec0,iter-time=$iter" "$work/src.raw" "$work/q.luks"
rm -f "$work/q.luks"

# luks1 -> raw (both read the same LUKS1 file)
run bc_luks_raw "${bc[@]}" "$work/bc.luks" "$work/bc.raw" --dst-format raw --src-key-file "$work/key"
rm -f "$work/bc.raw"
run q_luks_raw qemu-img convert -W -m 16 "${qemu_secret[@]}" --image-opts "driver=luks,key-secret=sec0,file.filename=$work/bc.luks" -O raw "$work/q.raw"
rm -f "$work/q.raw" "$work/bc.luks"

# qcow2 -> luks1
run bc_qcow_luks "${bc[@]}" "$work/src.qcow2" "$work/bc2.luks" --dst-format luks1 --dst-key-file "$work/key" --iter-time "$iter"
rm -f "$work/bc2.luks"
run q_qcow_luks qemu-img convert -W -m 16 "${qemu_secret[@]}" -f qcow2 -O luks -o "key-secret=sec0,iter-time=$iter" "$work/src.qcow2" "$work/q2.luks"
rm -f "$work/q2.luks"

kdf() { grep '"event":"done"' "$work/out.$1" | node -e 'let s="";process.stdin.on("data",d=>s+=d).on("end",()=>{const r=JSON.parse(s);process.stdout.write(r.kdfSeconds.toFixed(2)+" "+(r.peakRssBytes/1048576).toFixed(0)+"\n")})'; }
rate() { awk -v m="$mib" -v s="$1" 'BEGIN { printf "%.0f", m / s }'; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", a / b }'; }

cp_rate=$(rate "${secs[cp]}")
cps_rate=$(rate "${secs[cpsync]}")
echo
echo "size ${mib} MiB; cp ${cp_rate} MiB/s; cp+sync ${cps_rate} MiB/s; iter-time ${iter} ms for both tools"
printf '%-14s %10s %10s %8s %8s %10s %9s %10s %10s %9s %9s\n' case 'bc MiB/s' 'qemu MiB/s' 'bc/qemu' 'bc/cp' 'bc/cp+sync' 'bc KDF s' 'bc RSS MiB' 'RSS(time)' 'bc CPU s' 'qemu CPU s'
for c in raw_luks luks_raw qcow_luks; do
  b=$(rate "${secs[bc_$c]}")
  q=$(rate "${secs[q_$c]}")
  read -r k r < <(kdf "bc_$c")
  tr=$(awk -v k="${rss[bc_$c]}" 'BEGIN { printf "%.0f", k / 1024 }')
  printf '%-14s %10s %10s %8s %8s %10s %9s %10s %10s %9s %9s\n' "${c/_/->}" "$b" "$q" "$(ratio "$b" "$q")" "$(ratio "$b" "$cp_rate")" "$(ratio "$b" "$cps_rate")" "$k" "$r" "$tr" "${cpu[bc_$c]}" "${cpu[q_$c]}"
done
echo "load average at the end: $(cut -d' ' -f1-3 /proc/loadavg) (a loaded machine distorts MiB/s; CPU seconds are steadier)"
echo "(end to end, including each tool's PBKDF benchmark and final flush; targets: bc/qemu >= 3, bc/cp >= 0.70)"
