#!/usr/bin/env bash
# brickcrypt's main job on its embedded defaults: a storage service creates an encrypted
# volume from a disk image with a new key that it can never read back, and a compute host
# that was granted the key proves the volume opens and holds exactly the image.
#
# Everything runs in userspace with the embedded local keystore and cryptsetup's default
# KDF settings (LUKS2, aes-xts-plain64, argon2id, 2 s unlock time). Output lands in
# $BRICKCRYPT_DEMO_DIR (default: a new temporary directory).
#
# The result is cross-checked with cryptsetup, the reference implementation: when it is
# missing, cryptsetup-bin is installed from Debian as the tests install their tools
# (scripts/install-test-tools.sh). Each check prints one line, "ok   ..." or "FAIL ...";
# the demo exits non-zero if any check failed.
set -euo pipefail
cd "$(dirname "$0")/.."

[ -d node_modules ] || npm ci --no-audit --no-fund
node scripts/build-native.mjs
npx tsc -p tsconfig.json

demo=${BRICKCRYPT_DEMO_DIR:-$(mktemp -d -t brickcrypt-demo.XXXXXX)}
mkdir -p "$demo"
export BRICKCRYPT_HOME="$demo/home"
bc() { node "$PWD/bin/brickcrypt" "$@"; }
step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

verdicts=()
failures=0
verdict() { # verdict ok|FAIL LABEL
  local line
  line=$(printf '%-4s %s' "$1" "$2")
  verdicts+=("$line")
  printf '%s\n' "$line"
  [ "$1" = ok ] || failures=$((failures + 1))
}
check() { # check LABEL COMMAND...: ok when COMMAND succeeds
  local label=$1; shift
  if "$@"; then verdict ok "$label"; else verdict FAIL "$label"; fi
}
check_exit() { # check_exit LABEL CODE COMMAND...: ok when COMMAND exits with CODE
  local label=$1 want=$2 got=0; shift 2
  "$@" || got=$?
  if [ "$got" = "$want" ]; then verdict ok "$label"; else verdict FAIL "$label (exit $got, expected $want)"; fi
}

step "1. A disk image as an image service stores it (qcow2, 64 MiB virtual, partly sparse)"
node -e '
  const fs = require("node:fs"), crypto = require("node:crypto");
  const fd = fs.openSync(process.argv[1], "w");
  const text = Buffer.from("brickcrypt demo disk: this sector must survive encryption.\n".repeat(8));
  fs.writeSync(fd, text, 0, text.length, 0);
  for (let mib = 1; mib < 64; mib += 3) fs.writeSync(fd, crypto.randomBytes(1 << 20), 0, 1 << 20, mib << 20);
  fs.ftruncateSync(fd, 64 << 20);
  fs.closeSync(fd);' "$demo/disk.raw"
check "the image converts to qcow2" bc convert "$demo/disk.raw" "$demo/image.qcow2" --dst-format qcow2 --compress --force
bc info "$demo/image.qcow2"

step "2. The embedded keystore (SQLite, secrets wrapped under a 0600 key-encryption key)"
check "the keystore is created" bc key init

step "3. The storage service (role: creator) creates the volume from the image with a new key"
key_id=$(bc convert "$demo/image.qcow2" "$demo/volume.luks" --dst-format luks2 --create-key \
  --user cinder --project demo --roles creator --force) || key_id=
if [ -n "$key_id" ]; then verdict ok "the volume is created with a new managed key"; else verdict FAIL "the volume is created with a new managed key"; fi
echo "new key id: $key_id"
bc dump "$demo/volume.luks" || true

step "4. The storage service cannot read the key it made (expected: FORBIDDEN, exit 2)"
check_exit "the creator cannot read the key it made (FORBIDDEN, exit 2)" 2 \
  bc test-key "$demo/volume.luks" --key-id "$key_id" --user cinder --project demo --roles creator

step "5. It grants read to the compute host, which opens the volume and compares it with the image"
check "the creator grants read to the compute host" \
  bc key acl "$key_id" --grant-read nova-compute --user cinder --project demo --roles creator
check "the compute host's key opens the volume" \
  bc test-key "$demo/volume.luks" --key-id "$key_id" --user nova-compute --project demo --roles reader
check "the volume holds exactly the image (verify)" \
  bc verify "$demo/image.qcow2" "$demo/volume.luks" --dst-key-id "$key_id" --user nova-compute --project demo --roles reader

step "6. cryptsetup, the reference implementation, opens the same volume with the os-brick passphrase (hex of the key)"
cryptsetup_bin=$(command -v cryptsetup || { [ -x /usr/sbin/cryptsetup ] && echo /usr/sbin/cryptsetup; } || true)
if [ -z "$cryptsetup_bin" ]; then
  echo "cryptsetup is not installed: installing Debian's cryptsetup-bin as the tests do (scripts/install-test-tools.sh cryptsetup-bin)"
  bash scripts/install-test-tools.sh cryptsetup-bin || true
  cryptsetup_bin=$(command -v cryptsetup || { [ -x /usr/sbin/cryptsetup ] && echo /usr/sbin/cryptsetup; } || true)
fi
if [ -z "$cryptsetup_bin" ]; then
  verdict FAIL "cryptsetup is available for the cross-check (installing cryptsetup-bin failed)"
else
  "$cryptsetup_bin" --version
  cryptsetup_opens() {
    bc key get "$key_id" --hex --out - --user nova-compute --project demo --roles reader \
      | "$cryptsetup_bin" open --test-passphrase --key-file=- "$demo/volume.luks"
  }
  check "cryptsetup opens the volume with the managed key's passphrase" cryptsetup_opens
  cryptsetup_dumps() { "$cryptsetup_bin" luksDump "$demo/volume.luks" | grep -q '^Version:[[:space:]]*2$'; }
  check "cryptsetup reads the header as LUKS2 (luksDump)" cryptsetup_dumps
fi

step "7. The audit log (hash-chained; no key bytes)"
bc key audit --user admin --project demo --roles admin || true
check "the audit log's hash chain verifies" bc key audit --verify --user admin --project demo --roles admin

printf '\n\033[1mChecks\033[0m\n'
printf '%s\n' "${verdicts[@]}"
if [ "$failures" -ne 0 ]; then
  printf '\n\033[1mDemo FAILED\033[0m: %d check(s) failed; files in %s\n' "$failures" "$demo"
  exit 1
fi
printf '\n\033[1mDemo OK\033[0m: %s holds the image, encrypted, and cryptsetup agrees; files in %s\n' "$demo/volume.luks" "$demo"
