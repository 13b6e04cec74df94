#!/usr/bin/env bash
# In-place encryption benchmark: `brickcrypt reencrypt --encrypt` against `cryptsetup reencrypt
# --encrypt --reduce-device-size 32M` (offline, resilience datashift, both with a 16 MiB header)
# on the same 1 GiB plain file, alternating the tools BENCH_ENCRYPT_ROUNDS times (default 3) on
# a fresh copy each time and keeping each one's best time. brickcrypt runs twice per round: on
# a file it grows by the header (the default) and with the same --reduce-device-size as
# cryptsetup. Peak RSS of each run is recorded. cryptsetup needs root on an image file.
#
#   BENCH_ENCRYPT_SIZE     file size (default 1G)
#   BENCH_ENCRYPT_ROUNDS   alternating rounds (default 3)
#   BENCH_DIR              where the files go (default /tmp; needs twice the size free)
set -euo pipefail
cd "$(dirname "$0")/../.."

size=${BENCH_ENCRYPT_SIZE:-1G}
rounds=${BENCH_ENCRYPT_ROUNDS:-3}
base=${BENCH_DIR:-/tmp}
command -v cryptsetup >/dev/null 2>&1 || bash scripts/install-test-tools.sh
[ -d node_modules ] || npm ci --no-audit --no-fund
node scripts/build-native.mjs
npx tsc -p tsconfig.json

work=$(mktemp -d "$base/brickcrypt-bench-encrypt.XXXXXX")
trap '[ -n "${BENCH_KEEP:-}" ] || rm -rf "$work"' EXIT
bytes=$(numfmt --from=iec "$size")
mib=$(awk -v b="$bytes" 'BEGIN { printf "%.0f", b / 1048576 }')
src=$work/plain.src
vol=$work/vol.img
printf 'bench' >"$work/pass"
fast=(--pbkdf pbkdf2 --pbkdf-force-iterations 1000)
(openssl enc -aes-128-ctr -pass pass:brickcrypt-bench -nosalt -pbkdf2 </dev/zero 2>/dev/null || true) | head -c "$bytes" >"$src"

declare -A best rss
run() { # NAME CMD...: best seconds and peak RSS (MiB) per NAME, on a fresh copy of the plain file
  local name=$1
  shift
  cp "$src" "$vol"
  sync
  /usr/bin/time -f '%e %M' -o "$work/time.$name" "$@" >"$work/out.$name" 2>"$work/err.$name" || { cat "$work/err.$name" >&2; exit 1; }
  local s r
  s=$(tail -1 "$work/time.$name" | awk '{ print $1 }')
  r=$(tail -1 "$work/time.$name" | awk '{ printf "%.0f", $2 / 1024 }')
  best[$name]=$(awk -v a="${best[$name]:-1e9}" -v b="$s" 'BEGIN { print (b < a ? b : a) }')
  if [ "$r" -gt "${rss[$name]:-0}" ]; then rss[$name]=$r; fi
  cryptsetup open --test-passphrase --disable-locks --key-file "$work/pass" "$vol"
}

for ((i = 1; i <= rounds; i++)); do
  run bc_grow node bin/brickcrypt reencrypt --encrypt --type luks2 "$vol" --key-file "$work/pass" "${fast[@]}"
  run bc_reduce node bin/brickcrypt reencrypt --encrypt --type luks2 --reduce-device-size 32M "$vol" --key-file "$work/pass" "${fast[@]}"
  run cs cryptsetup reencrypt --encrypt --type luks2 --reduce-device-size 32M --batch-mode --disable-locks --force-offline-reencrypt "${fast[@]}" --key-file "$work/pass" "$vol"
done

ratio() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", a / b }'; }
rate() { awk -v m="$mib" -v s="$1" 'BEGIN { printf "%.0f", m / s }'; }
echo "encrypt bench: ${mib} MiB plain file -> LUKS2 aes-xts-plain64, datashift, best of $rounds alternating rounds; $(cryptsetup --version); node $(node -v); $(nproc) CPUs"
printf '%-34s %10s %10s %8s %10s\n' run seconds 'MiB/s' 'cs/bc' 'RSS MiB'
for name in bc_grow bc_reduce cs; do
  case $name in
    bc_grow) label='brickcrypt (file grows 16 MiB)' ;;
    bc_reduce) label='brickcrypt --reduce-device-size 32M' ;;
    cs) label='cryptsetup --reduce-device-size 32M' ;;
  esac
  printf '%-34s %9ss %10s %7sx %10s\n' "$label" "${best[$name]}" "$(rate "${best[$name]}")" "$(ratio "${best[cs]}" "${best[$name]}")" "${rss[$name]}"
done
echo "load average at the end: $(cut -d' ' -f1-3 /proc/loadavg) (a loaded machine distorts seconds; compare ratios within this run)"
