#!/usr/bin/env bash
# Backup benchmark: brickcrypt backup against restic (Debian's package, installed here if missing)
# on the same volume in one run: initial backup, incremental backup after 10 MiB of scattered
# changes (160 random 64 KiB writes), full restore, repository size and peak RSS. Both back up into
# a local directory repository; restic's repository is encrypted with a password, brickcrypt's
# under its backup key. The volume is random data, which is what an encrypted volume's ciphertext
# looks like to a backup (incompressible, no zero blocks).
#
#   BENCH_BACKUP_SIZE   volume size (default 1G)
#   BENCH_DIR           where the temporary files go (default /tmp; needs ~4x the size free)
#   BENCH_BACKUP_SWEEP  1: also measure brickcrypt's chunk sizes 256K, 1M and 4M (initial and
#                       incremental time, incremental bytes stored): how the default was chosen
set -euo pipefail
cd "$(dirname "$0")/../.."

size=${BENCH_BACKUP_SIZE:-1G}
base=${BENCH_DIR:-/tmp}
if ! command -v restic >/dev/null 2>&1; then
  echo "bench backup: installing restic (Debian)" >&2
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq restic >/dev/null 2>&1 || { apt-get update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq restic >/dev/null; }
fi
[ -d node_modules ] || npm ci --no-audit --no-fund
node scripts/build-native.mjs
npx tsc -p tsconfig.json

work=$(mktemp -d "$base/brickcrypt-bench-backup.XXXXXX")
trap '[ -n "${BENCH_KEEP:-}" ] || rm -rf "$work"' EXIT
bytes=$(numfmt --from=iec "$size")
mib=$(awk -v b="$bytes" 'BEGIN { printf "%.0f", b / 1048576 }')
export BRICKCRYPT_HOME=$work/home RESTIC_PASSWORD=bench RESTIC_CACHE_DIR=$work/restic-cache
bc=(node bin/brickcrypt backup)

(openssl enc -aes-128-ctr -pass pass:brickcrypt-bench -nosalt -pbkdf2 </dev/zero 2>/dev/null || true) | head -c "$bytes" >"$work/vol.img"

declare -A secs rss cpu
run() { # NAME CMD...: seconds and peak RSS (KiB) of one run
  local name=$1
  shift
  sync
  cat "$work/vol.img" >/dev/null
  /usr/bin/time -f '%e %M %U %S' -o "$work/time.$name" "$@" >"$work/out.$name" 2>"$work/err.$name" || { cat "$work/err.$name" >&2; exit 1; }
  secs[$name]=$(tail -1 "$work/time.$name" | awk '{ print $1 }')
  rss[$name]=$(tail -1 "$work/time.$name" | awk '{ printf "%.0f", $2 / 1024 }')
  cpu[$name]=$(tail -1 "$work/time.$name" | awk '{ printf "%.2f", $3 + $4 }')
}

scatter() { # 160 writes of 64 KiB at random 64 KiB-aligned offsets (a fixed seed: the same for every run)
  node -e '
    const fs = require("fs"); const { createHash } = require("crypto");
    const fd = fs.openSync(process.argv[1], "r+"); const size = fs.fstatSync(fd).size; const slots = Math.floor(size / 65536);
    for (let i = 0; i < 160; i++) {
      const h = createHash("sha256").update("bench-" + i).digest();
      const slot = h.readUInt32BE(0) % slots; const data = Buffer.alloc(65536);
      for (let j = 0; j < 65536; j += 32) createHash("sha256").update(h).update(String(j)).digest().copy(data, j);
      fs.writeSync(fd, data, 0, data.length, slot * 65536);
    }
    fs.closeSync(fd);' "$1"
}

cp --sparse=never "$work/vol.img" "$work/vol.orig"
node bin/brickcrypt key init >/dev/null

# brickcrypt with the default chunk size, restic with its defaults.
node bin/brickcrypt backup init --repo "file:$work/bc-repo" >/dev/null
restic init -r "$work/restic-repo" >/dev/null
run bc_init "${bc[@]}" create "$work/vol.img" --repo "file:$work/bc-repo"
run r_init restic -r "$work/restic-repo" backup --quiet "$work/vol.img"
scatter "$work/vol.img"
run bc_incr "${bc[@]}" create "$work/vol.img" --repo "file:$work/bc-repo"
run r_incr restic -r "$work/restic-repo" backup --quiet "$work/vol.img"
bc_id=$(cat "$work/out.bc_incr")
# Both restores start cold, as a restore from backup storage does: neither repository in the page
# cache (brickcrypt writes chunk files with O_DIRECT, restic through the page cache, so after the
# backups only restic's would be cached). Dropping caches needs root; otherwise each repository
# file is evicted with posix_fadvise(DONTNEED) (dd iflag=nocache).
cold() {
  sync
  if [ -w /proc/sys/vm/drop_caches ]; then echo 3 >/proc/sys/vm/drop_caches
  else find "$work/bc-repo" "$work/restic-repo" -type f -exec dd if={} iflag=nocache count=0 status=none \;
  fi
}
# restic restores through the page cache and ends without a flush; brickcrypt's restore is durable
# (fsync, then the rename), so restic's time includes the fsync of what it restored.
cold
run bc_restore "${bc[@]}" restore "$bc_id" "$work/bc-restored.img" --repo "file:$work/bc-repo"
cold
run r_restore bash -c 'restic -r "$1" restore latest --target "$2" && sync "$2$3"' restore "$work/restic-repo" "$work/restic-restored" "$work/vol.img"
cmp "$work/vol.img" "$work/bc-restored.img"
cmp "$work/vol.img" "$work/restic-restored$work/vol.img"
rm -f "$work/bc-restored.img"; rm -rf "$work/restic-restored"
bc_size=$(du -sb "$work/bc-repo" | awk '{ print $1 }')
r_size=$(du -sb "$work/restic-repo" | awk '{ print $1 }')

ratio() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", a / b }'; }
echo "backup bench: ${mib} MiB random volume, 10 MiB scattered change (160 x 64 KiB); $(restic version | head -1); node $(node -v); $(nproc) CPUs"
printf '%-22s %10s %10s %14s\n' step brickcrypt restic 'restic/bc'
for s in init incr restore; do
  printf '%-22s %9ss %9ss %13sx\n' "$s" "${secs[bc_$s]}" "${secs[r_$s]}" "$(ratio "${secs[r_$s]}" "${secs[bc_$s]}")"
done
for s in init incr restore; do
  printf '%-22s %9ss %9ss %13sx\n' "$s CPU (user+sys)" "${cpu[bc_$s]}" "${cpu[r_$s]}" "$(ratio "${cpu[r_$s]}" "${cpu[bc_$s]}")"
done
printf '%-22s %10s %10s %14s\n' 'repository MiB' "$(awk -v b="$bc_size" 'BEGIN { printf "%.1f", b / 1048576 }')" "$(awk -v b="$r_size" 'BEGIN { printf "%.1f", b / 1048576 }')" "$(ratio "$r_size" "$bc_size")"
printf '%-22s %10s %10s\n' 'peak RSS MiB (i/n/r)' "${rss[bc_init]}/${rss[bc_incr]}/${rss[bc_restore]}" "${rss[r_init]}/${rss[r_incr]}/${rss[r_restore]}"
echo "targets: init, incr and restore each >= 3x restic; repository no larger than restic's; peak RSS < 256 MiB"
echo "load average at the end: $(cut -d' ' -f1-3 /proc/loadavg) (a loaded machine distorts seconds; compare ratios within this run)"

if [ "${BENCH_BACKUP_SWEEP:-0}" = 1 ]; then
  echo
  echo "chunk-size sweep (brickcrypt): initial s, incremental s, incremental bytes stored"
  for cs in 256K 1M 4M; do
    cp --sparse=never "$work/vol.orig" "$work/vol.img"
    rm -rf "$work/sweep"
    node bin/brickcrypt backup init --repo "file:$work/sweep" --chunk-size "$cs" >/dev/null
    run sw_init "${bc[@]}" create "$work/vol.img" --repo "file:$work/sweep"
    scatter "$work/vol.img"
    run sw_incr "${bc[@]}" create "$work/vol.img" --repo "file:$work/sweep" --json
    stored=$(grep '"event":"done"' "$work/out.sw_incr" | node -e 'let s="";process.stdin.on("data",d=>s+=d).on("end",()=>console.log(JSON.parse(s).stats.storedBytes))')
    printf '  %-5s %8ss %8ss %10.1f MiB\n' "$cs" "${secs[sw_init]}" "${secs[sw_incr]}" "$(awk -v b="$stored" 'BEGIN { print b / 1048576 }')"
  done
fi
