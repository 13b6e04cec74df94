/*
 * afChain(stripes: Uint8Array, keyBytes, count, hash): the LUKS AF-splitter chain value
 * d_count, where d_0 = 0 and d_{i+1} = H(d_i xor s_i) over the first `count` stripes of
 * `keyBytes` bytes each (LUKS1 On-Disk Format Specification 2.4; the LUKS2 "luks1" AF type).
 * H hashes d per digest-sized block j as hash(u32BE(j) || block_j), truncating the last block.
 * Returns a new Uint8Array of keyBytes, or undefined when OpenSSL does not know `hash` (the caller
 * then uses its JavaScript loop, which is the reference and gives identical bytes).
 *
 * Why native: a keyslot holds 4000 stripes, so sealing or opening one hashes 8000 tiny blocks for
 * a 64-byte key. One JavaScript hash call per block made that 10-17 ms a keyslot here, on the
 * thread that also answers an HTTP API or an NBD export; here one EVP digest context, initialised
 * once and copied per block, makes it about 1 ms.
 */
#include "addon.h"
#include <openssl/evp.h>
#include <openssl/crypto.h>
#include <string.h>

napi_value brickcrypt_af_chain(napi_env env, napi_callback_info info) {
  size_t argc = 4;
  napi_value argv[4];
  napi_get_cb_info(env, info, &argc, argv, NULL, NULL);
  uint8_t *stripes;
  size_t len;
  uint32_t key_bytes, count;
  char name[32];
  size_t name_len;
  if (argc < 4 || !brickcrypt_bytes_of(env, argv[0], &stripes, &len) ||
      napi_get_value_uint32(env, argv[1], &key_bytes) != napi_ok ||
      napi_get_value_uint32(env, argv[2], &count) != napi_ok ||
      napi_get_value_string_utf8(env, argv[3], name, sizeof(name), &name_len) != napi_ok) {
    napi_throw_type_error(env, "ERR_INVALID_ARG_TYPE", "afChain(stripes: Uint8Array, keyBytes: number, count: number, hash: string)");
    return NULL;
  }
  if (key_bytes == 0 || key_bytes > 4096 || (uint64_t)key_bytes * count > len) {
    napi_throw_range_error(env, "ERR_OUT_OF_RANGE", "afChain: the stripes do not hold count * keyBytes bytes");
    return NULL;
  }
  napi_value undefined;
  napi_get_undefined(env, &undefined);
  const EVP_MD *md = EVP_get_digestbyname(name);
  if (md == NULL) return undefined;
  int digest_size = EVP_MD_get_size(md);
  // A context initialised once and copied per block: EVP_DigestInit_ex looks the algorithm up
  // again on every call in OpenSSL 3, which costs more than hashing 36 bytes.
  EVP_MD_CTX *base = EVP_MD_CTX_new();
  EVP_MD_CTX *ctx = EVP_MD_CTX_new();
  if (base == NULL || ctx == NULL || digest_size <= 0 || digest_size > EVP_MAX_MD_SIZE || EVP_DigestInit_ex(base, md, NULL) != 1) {
    EVP_MD_CTX_free(base);
    EVP_MD_CTX_free(ctx);
    return undefined;
  }

  void *out_data;
  napi_value out_buffer, out;
  if (napi_create_arraybuffer(env, key_bytes, &out_data, &out_buffer) != napi_ok ||
      napi_create_typedarray(env, napi_uint8_array, key_bytes, out_buffer, 0, &out) != napi_ok) {
    EVP_MD_CTX_free(base);
    EVP_MD_CTX_free(ctx);
    return NULL;
  }
  uint8_t *d = out_data;
  memset(d, 0, key_bytes);
  uint8_t digest[EVP_MAX_MD_SIZE];
  int ok = 1;
  for (uint32_t i = 0; i < count && ok; i++) {
    const uint8_t *s = stripes + (size_t)i * key_bytes;
    for (uint32_t k = 0; k < key_bytes; k++) d[k] ^= s[k];
    for (uint32_t j = 0, off = 0; off < key_bytes; j++, off += (uint32_t)digest_size) {
      uint32_t block = key_bytes - off < (uint32_t)digest_size ? key_bytes - off : (uint32_t)digest_size;
      uint8_t iv[4] = {(uint8_t)(j >> 24), (uint8_t)(j >> 16), (uint8_t)(j >> 8), (uint8_t)j};
      if (EVP_MD_CTX_copy_ex(ctx, base) != 1 || EVP_DigestUpdate(ctx, iv, 4) != 1 ||
          EVP_DigestUpdate(ctx, d + off, block) != 1 || EVP_DigestFinal_ex(ctx, digest, NULL) != 1) {
        ok = 0;
        break;
      }
      memcpy(d + off, digest, block);
    }
  }
  OPENSSL_cleanse(digest, sizeof(digest));
  EVP_MD_CTX_free(base);
  EVP_MD_CTX_free(ctx);
  if (!ok) {
    OPENSSL_cleanse(d, key_bytes);
    return undefined;
  }
  return out;
}
