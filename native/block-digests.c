/*
 * blockDigests(data: Uint8Array, block, hash, out: Uint8Array): the digest of every `block`
 * bytes of `data` (the last block may be shorter), written one after another into `out`.
 * Returns true, or false when OpenSSL does not know `hash` (the caller then hashes in
 * JavaScript, the reference, which gives identical bytes).
 *
 * Why native: the checksum resilience of in-place reencryption (cryptsetup's "checksum", one
 * digest per 4096-byte block, lib/luks2/luks2_reencrypt.c) hashes a whole hot zone, 65536
 * blocks per 256 MiB. A Hash object per block cost about as much as hashing the block itself;
 * here one EVP context, initialised once and copied per block, serves the whole buffer.
 */
#include "addon.h"
#include <openssl/evp.h>
#include <stdbool.h>

napi_value brickcrypt_block_digests(napi_env env, napi_callback_info info) {
  size_t argc = 4;
  napi_value argv[4];
  napi_get_cb_info(env, info, &argc, argv, NULL, NULL);
  uint8_t *data, *out;
  size_t len, out_len;
  uint32_t block;
  char name[32];
  size_t name_len;
  if (argc < 4 || !brickcrypt_bytes_of(env, argv[0], &data, &len) || napi_get_value_uint32(env, argv[1], &block) != napi_ok ||
      napi_get_value_string_utf8(env, argv[2], name, sizeof(name), &name_len) != napi_ok || !brickcrypt_bytes_of(env, argv[3], &out, &out_len)) {
    napi_throw_type_error(env, "ERR_INVALID_ARG_TYPE", "blockDigests(data: Uint8Array, block: number, hash: string, out: Uint8Array)");
    return NULL;
  }
  napi_value result;
  const EVP_MD *md = EVP_get_digestbyname(name);
  if (md == NULL) {
    napi_get_boolean(env, false, &result);
    return result;
  }
  size_t digest_size = (size_t)EVP_MD_get_size(md);
  size_t blocks = block == 0 ? 0 : (len + block - 1) / block;
  if (block == 0 || digest_size == 0 || out_len < blocks * digest_size) {
    napi_throw_range_error(env, "ERR_OUT_OF_RANGE", "blockDigests: block is 0 or out cannot hold a digest per block");
    return NULL;
  }
  EVP_MD_CTX *base = EVP_MD_CTX_new();
  EVP_MD_CTX *ctx = EVP_MD_CTX_new();
  bool ok = base != NULL && ctx != NULL && EVP_DigestInit_ex(base, md, NULL) == 1;
  for (size_t i = 0; ok && i < blocks; i++) {
    size_t off = i * block;
    size_t n = len - off < block ? len - off : block;
    ok = EVP_MD_CTX_copy_ex(ctx, base) == 1 && EVP_DigestUpdate(ctx, data + off, n) == 1 && EVP_DigestFinal_ex(ctx, out + i * digest_size, NULL) == 1;
  }
  EVP_MD_CTX_free(base);
  EVP_MD_CTX_free(ctx);
  napi_get_boolean(env, ok, &result);
  return result;
}
