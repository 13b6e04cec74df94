#!/usr/bin/env bash
# brickcrypt's main job on its embedded defaults: a storage service creates an encrypted
# volume from a disk image with a new key that it can never read back, and a compute host
# that was granted the key proves the volume opens and holds exactly the image.
#
# Everything runs in userspace with the embedded local keystore and cryptsetup's default
# KDF settings (LUKS2, aes-xts-plain64, argon2id, 2 s unlock time). Output lands in
# $BRICKCRYPT_DEMO_DIR (default: a new temporary directory).
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

step "1. A disk image as an image service stores it (qcow2, 64 MiB virtual, partly sparse)"
node -e '
  const fs = require("node:fs"), crypto = require("node:crypto");
  const fd = fs.openSync(process.argv[1], "w");
  const text = Buffer.from("brickcrypt demo disk: this sector must survive encryption.\n".repeat(8));
  fs.writeSync(fd, text, 0, text.length, 0);
  for (let mib = 1; mib < 64; mib += 3) fs.writeSync(fd, crypto.randomBytes(1 << 20), 0, 1 << 20, mib << 20);
  fs.ftruncateSync(fd, 64 << 20);
  fs.closeSync(fd);' "$demo/disk.raw"
bc convert "$demo/disk.raw" "$demo/image.qcow2" --dst-format qcow2 --compress --force
bc info "$demo/image.qcow2"

step "2. The embedded keystore (SQLite, secrets wrapped under a 0600 key-encryption key)"
bc key init

step "3. The storage service (role: creator) creates the volume from the image with a new key"
key_id=$(bc convert "$demo/image.qcow2" "$demo/volume.luks" --dst-format luks2 --create-key \
  --user cinder --project demo --roles creator --force)
echo "new key id: $key_id"
bc dump "$demo/volume.luks"

step "4. The storage service cannot read the key it made (expected: FORBIDDEN, exit 2)"
if bc test-key "$demo/volume.luks" --key-id "$key_id" --user cinder --project demo --roles creator; then
  echo "demo FAILED: a creator could read an existing key" >&2; exit 1
fi

step "5. It grants read to the compute host, which opens the volume and compares it with the image"
bc key acl "$key_id" --grant-read nova-compute --user cinder --project demo --roles creator
bc test-key "$demo/volume.luks" --key-id "$key_id" --user nova-compute --project demo --roles reader
bc verify "$demo/image.qcow2" "$demo/volume.luks" --dst-key-id "$key_id" --user nova-compute --project demo --roles reader

if command -v cryptsetup >/dev/null 2>&1; then
  step "6. cryptsetup opens the same volume with the os-brick passphrase (hex of the key)"
  bc key get "$key_id" --hex --out - --user nova-compute --project demo --roles reader \
    | cryptsetup open --test-passphrase --key-file=- "$demo/volume.luks"
  echo "cryptsetup: passphrase accepted"
else
  step "6. (cryptsetup not installed: skipping the cross-check with cryptsetup)"
fi

step "7. The audit log (hash-chained; no key bytes)"
bc key audit --user admin --project demo --roles admin
bc key audit --verify --user admin --project demo --roles admin

printf '\n\033[1mDemo OK\033[0m: %s holds the image, encrypted; files in %s\n' "$demo/volume.luks" "$demo"
