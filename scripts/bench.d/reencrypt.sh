#!/usr/bin/env bash
# In-place reencryption benchmark: `brickcrypt reencrypt` (new volume key, resilience checksum)
# against `cryptsetup reencrypt` (offline, the same resilience) on the same 1 GiB LUKS2 volume,
# in one run, alternating the two tools BENCH_REENCRYPT_ROUNDS times (default 3) and keeping
# each one's best time. Peak RSS of each run is recorded. cryptsetup needs root to work on an
# image file (it runs with --force-offline-reencrypt --disable-locks).
#
#   BENCH_REENCRYPT_SIZE     payload size (default 1G)
#   BENCH_REENCRYPT_ROUNDS   alternating rounds (default 3)
#   BENCH_DIR                where the volume goes (default /tmp; needs the size free)
#
# In-place encryption (--encrypt) is compared by scripts/bench.d/reencrypt-encrypt.sh.
set -euo pipefail
cd "$(dirname "$0")/../.."

size=${BENCH_REENCRYPT_SIZE:-1G}
rounds=${BENCH_REENCRYPT_ROUNDS:-3}
base=${BENCH_DIR:-/tmp}
command -v cryptsetup >/dev/null 2>&1 || bash scripts/install-test-tools.sh
[ -d node_modules ] || npm ci --no-audit --no-fund
node scripts/build-native.mjs
npx tsc -p tsconfig.json

work=$(mktemp -d "$base/brickcrypt-bench-reencrypt.XXXXXX")
trap '[ -n "${BENCH_KEEP:-}" ] || rm -rf "$work"' EXIT
bytes=$(numfmt --from=iec "$size")
mib=$(awk -v b="$bytes" 'BEGIN { printf "%.0f", b / 1048576 }')
vol=$work/vol.img
printf 'bench' >"$work/pass"
fast=(--pbkdf pbkdf2 --pbkdf-force-iterations 1000)

# A LUKS2 volume (16 MiB header) whose payload is random-looking ciphertext, written out fully.
(openssl enc -aes-128-ctr -pass pass:brickcrypt-bench -nosalt -pbkdf2 </dev/zero 2>/dev/null || true) | head -c "$((bytes + 16 * 1048576))" >"$vol"
cryptsetup luksFormat --type luks2 --batch-mode "${fast[@]}" --key-file "$work/pass" "$vol"

best_bc=; best_cs=; rss_bc=0; rss_cs=0
run() { # NAME CMD...: seconds; peak RSS (MiB) into rss_NAME
  local name=$1
  shift
  sync
  /usr/bin/time -f '%e %M' -o "$work/time.$name" "$@" >"$work/out.$name" 2>"$work/err.$name" || { cat "$work/err.$name" >&2; exit 1; }
  local s r
  s=$(tail -1 "$work/time.$name" | awk '{ print $1 }')
  r=$(tail -1 "$work/time.$name" | awk '{ printf "%.0f", $2 / 1024 }')
  if [ "$name" = bc ]; then
    best_bc=$(awk -v a="${best_bc:-1e9}" -v b="$s" 'BEGIN { print (b < a ? b : a) }')
    if [ "$r" -gt "$rss_bc" ]; then rss_bc=$r; fi
  else
    best_cs=$(awk -v a="${best_cs:-1e9}" -v b="$s" 'BEGIN { print (b < a ? b : a) }')
    if [ "$r" -gt "$rss_cs" ]; then rss_cs=$r; fi
  fi
}

for ((i = 1; i <= rounds; i++)); do
  run bc node bin/brickcrypt reencrypt "$vol" --key-file "$work/pass" "${fast[@]}"
  run cs cryptsetup reencrypt --batch-mode --disable-locks --force-offline-reencrypt --resilience checksum "${fast[@]}" --key-file "$work/pass" "$vol"
done
# The volume still opens with the passphrase after all those re-keys.
cryptsetup open --test-passphrase --disable-locks --key-file "$work/pass" "$vol"

ratio() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", a / b }'; }
rate() { awk -v m="$mib" -v s="$1" 'BEGIN { printf "%.0f", m / s }'; }
echo "reencrypt bench: ${mib} MiB LUKS2 aes-xts-plain64 4096-byte sectors, resilience checksum, best of $rounds alternating rounds; $(cryptsetup --version); node $(node -v); $(nproc) CPUs"
printf '%-24s %12s %12s %14s\n' operation brickcrypt cryptsetup 'cs/bc (>=2x)'
printf '%-24s %10ss %10ss %13sx\n' 're-key (new key)' "$best_bc" "$best_cs" "$(ratio "$best_cs" "$best_bc")"
printf '%-24s %9s/s %9s/s\n' '  MiB/s' "$(rate "$best_bc")" "$(rate "$best_cs")"
printf '%-24s %12s %12s\n' 'encrypt in place' 'see reencrypt-encrypt.sh' '-'
printf '%-24s %12s %12s\n' 'peak RSS MiB' "$rss_bc" "$rss_cs"
echo "targets: re-key >= 2x cryptsetup reencrypt (same resilience); peak RSS < 256 MiB"
echo "load average at the end: $(cut -d' ' -f1-3 /proc/loadavg) (a loaded machine distorts seconds; compare ratios within this run)"
