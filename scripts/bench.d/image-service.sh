#!/usr/bin/env bash
# Image-service benchmark against a real Glance v2 (scripts/servers/glance.sh), in one run:
#   1. volume from image: a LUKS2 volume from a raw image in Glance with `brickcrypt image
#      download` (one streaming pass) against Cinder's pipeline for create-from-image: the
#      whole image downloaded to a temporary file (`curl`) with its sha512 checked against
#      os_hash_value as glanceclient does, then `qemu-img convert -O luks`.
#      Both write the target with O_DIRECT (Cinder's cache mode for volumes, `-t none`;
#      brickcrypt `--cache none`) and the same PBKDF iter-time.
#   2. as-is upload: `brickcrypt image upload` of a LUKS2 volume (key cloned, properties set,
#      sha512 checked) against `curl -T` of the same file to the same Glance.
# Prints seconds, MiB/s and the ratios (targets: >= 2x Cinder's pipeline; >= 0.9x curl -T).
#
#   BENCH_IMAGE_SIZE  image size (default 1G)    BENCH_DIR  temporary files (default /tmp)
#   BENCH_RUNS        runs per case, best counts (default 2)
#   BENCH_ITER_TIME   LUKS keyslot iter-time in ms for both tools (default 100)
set -euo pipefail
cd "$(dirname "$0")/../.."

size=${BENCH_IMAGE_SIZE:-1G}
runs=${BENCH_RUNS:-2}
iter=${BENCH_ITER_TIME:-100}
base=${BENCH_DIR:-/tmp}

[ -d dist/src ] || npx tsc -p tsconfig.json
started_glance=
if ! bash scripts/servers/glance.sh status >/dev/null 2>&1; then
  bash scripts/servers/glance.sh start
  started_glance=1
fi
eval "$(bash scripts/servers/glance.sh env)"
url=$BRICKCRYPT_TEST_GLANCE_URL

work=$(mktemp -d "$base/brickcrypt-bench-image.XXXXXX")
project="bench-$$"
cleanup() {
  # The images this run made, then the files (and the server when this run started it).
  for id in $(curl -s "${hdr[@]}" "$url/v2/images?limit=1000&owner=$project" | node -e 'let s="";process.stdin.on("data",d=>s+=d).on("end",()=>{for(const i of JSON.parse(s).images)console.log(i.id)})' 2>/dev/null); do
    curl -s -o /dev/null -X DELETE "${hdr[@]}" "$url/v2/images/$id" || true
  done
  rm -rf "$work"
  [ -z "$started_glance" ] || bash scripts/servers/glance.sh stop
}
# Not admin: a Glance admin sees (and the cleanup would delete) every project's images.
hdr=(-H 'X-Identity-Status: Confirmed' -H "X-Project-Id: $project" -H 'X-User-Id: bench' -H 'X-Roles: member,creator')
trap cleanup EXIT
export BRICKCRYPT_HOME=$work/home
who=(--user bench --project "$project" --roles member,creator)
bc=(node bin/brickcrypt)

bytes=$(numfmt --from=iec "$size")
mib=$(awk -v b="$bytes" 'BEGIN { printf "%.1f", b / 1048576 }')
(openssl enc -aes-128-ctr -pass pass:brickcrypt-bench -nosalt -pbkdf2 </dev/zero 2>/dev/null || true) | head -c "$bytes" >"$work/src.raw"
printf 'bench-passphrase' >"$work/key"

create_image() { # name disk_format -> id
  curl -sf "${hdr[@]}" -H 'Content-Type: application/json' \
    -d "{\"name\":\"$1\",\"disk_format\":\"$2\",\"container_format\":\"bare\"}" "$url/v2/images" |
    node -e 'let s="";process.stdin.on("data",d=>s+=d).on("end",()=>console.log(JSON.parse(s).id))'
}
src_id=$(create_image bench-src raw)
curl -sf "${hdr[@]}" -H 'Content-Type: application/octet-stream' -T "$work/src.raw" "$url/v2/images/$src_id/file"

declare -A secs
# timed NAME CLEANUP CMD...: best of BENCH_RUNS runs; CLEANUP (shell) after each.
timed() {
  local name=$1 clean=$2 i t0 t1 s best=""
  shift 2
  for i in $(seq "$runs"); do
    sync
    t0=$(date +%s.%N)
    "$@" >"$work/out.$name" 2>"$work/err.$name" || { cat "$work/err.$name" >&2; exit 1; }
    t1=$(date +%s.%N)
    s=$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.3f", b - a }')
    if [ -z "$best" ] || awk -v a="$s" -v b="$best" 'BEGIN { exit !(a < b) }'; then best=$s; fi
    eval "$clean"
  done
  secs[$name]=$best
}

# 1. LUKS2 volume from the image.
# Glance's sha512 of the image (os_hash_value): Cinder downloads through python-glanceclient,
# whose images.data() checks it while the bytes arrive (utils.serious_integrity_iter); brickcrypt
# checks it too. Here sha512sum hashes the stream in a process of its own, beside curl.
src_hash=$(curl -sf "${hdr[@]}" "$url/v2/images/$src_id" | node -e 'let s="";process.stdin.on("data",d=>s+=d).on("end",()=>console.log(JSON.parse(s).os_hash_value))')
cinder() {
  local sum
  sum=$(curl -sf "${hdr[@]}" "$url/v2/images/$src_id/file" | tee "$work/tmp.raw" | sha512sum | cut -d' ' -f1)
  [ "$sum" = "$src_hash" ] || { echo "bench: the downloaded image does not match os_hash_value" >&2; exit 1; }
  qemu-img convert -t none -W -m 16 --object "secret,id=sec0,file=$work/key" -f raw -O luks \
    -o "key-secret=sec0,iter-time=$iter" "$work/tmp.raw" "$work/cinder.luks"
  rm -f "$work/tmp.raw"
}
timed cinder 'rm -f "$work/cinder.luks"' cinder
timed bc_download 'rm -f "$work/bc.luks"' "${bc[@]}" image download "$src_id" "$work/bc.luks" --image-service "$url" "${who[@]}" \
  --dst-format luks2 --dst-key-file "$work/key" --iter-time "$iter" --cache none --key-manager memory:

# 2. As-is upload of a LUKS2 volume with a managed key (local keystore), against curl -T.
"${bc[@]}" key init >/dev/null 2>&1
vol_key=$("${bc[@]}" convert "$work/src.raw" "$work/vol.luks" --dst-format luks2 --create-key --iter-time "$iter" "${who[@]}" 2>/dev/null)
cat "$work/vol.luks" >/dev/null # both read it from the page cache
# Each side creates its image and uploads; the delete after each run is not timed.
curl_upload() {
  local id
  id=$(create_image bench-curl raw)
  echo "$id" >"$work/last-id"
  curl -sf "${hdr[@]}" -H 'Content-Type: application/octet-stream' -T "$work/vol.luks" "$url/v2/images/$id/file"
}
bc_upload() {
  "${bc[@]}" image upload "$work/vol.luks" --image-service "$url" --name bench-bc --key-id "$vol_key" "${who[@]}" >"$work/last-id"
}
timed curl_upload 'curl -sf -o /dev/null -X DELETE "${hdr[@]}" "$url/v2/images/$(cat "$work/last-id")"' curl_upload
timed bc_upload '"${bc[@]}" image delete "$(cat "$work/last-id")" --image-service "$url" "${who[@]}" 2>/dev/null' bc_upload

rate() { awk -v m="$mib" -v s="$1" 'BEGIN { printf "%.0f", m / s }'; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", a / b }'; }
echo "image service: Glance $(/usr/bin/python3 -c 'import glance.version as v; print(v.version_info.version_string())' 2>/dev/null) at $url, ${mib} MiB image, best of $runs runs, $(nproc) CPUs"
printf '%-44s %8s %8s\n' case seconds MiB/s
printf '%-44s %8s %8s\n' 'cinder: curl+sha512 to temp, qemu-img convert' "${secs[cinder]}" "$(rate "${secs[cinder]}")"
printf '%-44s %8s %8s\n' 'brickcrypt image download --dst-format luks2' "${secs[bc_download]}" "$(rate "${secs[bc_download]}")"
printf '%-44s %8s %8s\n' 'curl -T (upload of the LUKS2 volume)' "${secs[curl_upload]}" "$(rate "${secs[curl_upload]}")"
printf '%-44s %8s %8s\n' 'brickcrypt image upload (as-is, key clone)' "${secs[bc_upload]}" "$(rate "${secs[bc_upload]}")"
echo "ratio volume-from-image brickcrypt/cinder: $(ratio "${secs[cinder]}" "${secs[bc_download]}")x (target >= 2)"
echo "ratio as-is upload brickcrypt/curl -T:     $(ratio "${secs[curl_upload]}" "${secs[bc_upload]}")x (target >= 0.9)"
echo "(times include process start and image create; for brickcrypt also the sha512 check, the key clone and the properties; load average $(cut -d' ' -f1-3 /proc/loadavg))"
