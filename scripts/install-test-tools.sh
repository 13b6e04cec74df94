#!/usr/bin/env bash
# Installs the Debian packages that brickcrypt's interop tests and benchmarks talk to.
# Idempotent: only missing packages are installed. Needs root (or sudo) and Debian's apt.
# With package names as arguments, installs only those (e.g. `install-test-tools.sh cryptsetup-bin`).
set -euo pipefail

packages=(
  cryptsetup-bin   # cryptsetup: the LUKS reference implementation (luksFormat, luksDump, --test-passphrase)
  qemu-utils       # qemu-img, qemu-io, qemu-nbd: LUKS1 and qcow2 peer
  qemu-system-common # qemu-storage-daemon: runs printed --object/--blockdev options verbatim
  libxml2-utils    # xmllint: checks the printed libvirt XML
  libnbd-bin       # nbdinfo, nbdcopy, nbdfuse: NBD clients
  nbdkit           # nbdkit --filter=luks: NBD peer for benchmarks
  fuse3            # fusermount3 for nbdfuse
  softhsm2         # PKCS#11 token for the keystore's KEK
  python3-barbican # OpenStack Barbican key server
  python3-pykmip   # KMIP key server
  python3-cryptography # independent AES-XTS/CBC encryptor for the plain dm-crypt tests
  openssl
  xz-utils
  e2fsprogs
  util-linux
  mount            # losetup: loop devices for the block-device tests
  time             # GNU /usr/bin/time -v: peak RSS in scripts/bench.sh
  postgresql       # PostgreSQL server for the service scale-out tests (scripts/servers/postgresql.sh)
  chromium         # headless browser for the service status page test (driven by playwright-core)
  g++              # builds the native AES-XTS kernel (scripts/build-native.mjs, with make and python3 for node-gyp)
  make
  python3
)

if [ $# -gt 0 ]; then packages=("$@"); fi

missing=()
for p in "${packages[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed'; then
    missing+=("$p")
  fi
done

if [ ${#missing[@]} -eq 0 ]; then
  echo "install-test-tools: all packages present"
  exit 0
fi

sudo_cmd=()
if [ "$(id -u)" -ne 0 ]; then
  if command -v sudo >/dev/null 2>&1; then sudo_cmd=(sudo); else
    echo "install-test-tools: need root to install: ${missing[*]}" >&2; exit 1; fi
fi

echo "install-test-tools: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
"${sudo_cmd[@]}" apt-get update -qq
"${sudo_cmd[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
echo "install-test-tools: done"
