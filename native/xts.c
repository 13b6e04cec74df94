/*
 * AES-XTS over runs of whole sectors, in place, with OpenSSL's XTS (the copy of OpenSSL that
 * Node itself carries, so no extra library is linked).
 *
 * Why native: node:crypto's Cipher.update allocates two output buffers and copies once per
 * call, and one call per 512-byte sector costs about 1 us. Here a run of sectors costs one
 * N-API call; each sector is one EVP_CipherInit_ex (new IV only, the key schedule stays) and
 * one EVP_CipherUpdate, in place, into the caller's memory (which may be a SharedArrayBuffer).
 *
 * IVs (dm-crypt, cryptsetup docs/on-disk-format): plain64 = the 64-bit sector number, little
 * endian, zero-padded to 16 bytes; plain = its low 32 bits only; null = all zeros.
 * IEEE 1619-2007 5.1: the two key halves must differ - checked by the caller and here.
 */
#include <node_api.h>
#include <openssl/evp.h>
#include <openssl/crypto.h>
#include <stdint.h>
#include <string.h>

typedef struct {
  EVP_CIPHER_CTX *enc;
  EVP_CIPHER_CTX *dec;
} xts_keys;

enum { IV_PLAIN64 = 0, IV_PLAIN = 1, IV_NULL = 2 };

static napi_value throw_error(napi_env env, const char *code, const char *msg) {
  napi_throw_error(env, code, msg);
  return NULL;
}

static void free_keys(xts_keys *k) {
  if (!k) return;
  /* EVP_CIPHER_CTX_free cleanses the key schedule before freeing it. */
  if (k->enc) EVP_CIPHER_CTX_free(k->enc);
  if (k->dec) EVP_CIPHER_CTX_free(k->dec);
  k->enc = k->dec = NULL;
}

static void finalize_keys(napi_env env, void *data, void *hint) {
  (void)env;
  (void)hint;
  free_keys((xts_keys *)data);
  OPENSSL_free(data);
}

static int get_bytes(napi_env env, napi_value v, uint8_t **data, size_t *len) {
  bool is_ta = false;
  if (napi_is_typedarray(env, v, &is_ta) != napi_ok || !is_ta) return 0;
  napi_typedarray_type type;
  size_t length;
  void *ptr;
  napi_value ab;
  size_t offset;
  if (napi_get_typedarray_info(env, v, &type, &length, &ptr, &ab, &offset) != napi_ok) return 0;
  if (type != napi_uint8_array) return 0;
  *data = (uint8_t *)ptr;
  *len = length;
  return 1;
}

/* createKeys(key: Uint8Array of 32 or 64 bytes) -> external */
static napi_value create_keys(napi_env env, napi_callback_info info) {
  size_t argc = 1;
  napi_value argv[1];
  napi_get_cb_info(env, info, &argc, argv, NULL, NULL);
  uint8_t *key;
  size_t key_len;
  if (argc < 1 || !get_bytes(env, argv[0], &key, &key_len)) return throw_error(env, "ERR_INVALID_ARG_TYPE", "key must be a Uint8Array");
  const EVP_CIPHER *cipher = key_len == 32 ? EVP_aes_128_xts() : key_len == 64 ? EVP_aes_256_xts() : NULL;
  if (!cipher) return throw_error(env, "ERR_INVALID_ARG_VALUE", "AES-XTS keys are 32 or 64 bytes");
  if (CRYPTO_memcmp(key, key + key_len / 2, key_len / 2) == 0) return throw_error(env, "ERR_CRYPTO_INVALID_KEYLEN", "AES-XTS key halves are equal");
  xts_keys *k = OPENSSL_zalloc(sizeof(*k));
  if (!k) return throw_error(env, "ERR_MEMORY", "out of memory");
  k->enc = EVP_CIPHER_CTX_new();
  k->dec = EVP_CIPHER_CTX_new();
  if (!k->enc || !k->dec || EVP_CipherInit_ex(k->enc, cipher, NULL, key, NULL, 1) != 1 ||
      EVP_CipherInit_ex(k->dec, cipher, NULL, key, NULL, 0) != 1) {
    free_keys(k);
    OPENSSL_free(k);
    return throw_error(env, "ERR_CRYPTO", "AES-XTS key setup failed");
  }
  napi_value handle;
  if (napi_create_external(env, k, finalize_keys, NULL, &handle) != napi_ok) {
    free_keys(k);
    OPENSSL_free(k);
    return throw_error(env, "ERR_MEMORY", "cannot wrap the key");
  }
  return handle;
}

static xts_keys *keys_of(napi_env env, napi_value v) {
  void *p = NULL;
  napi_valuetype t;
  if (napi_typeof(env, v, &t) != napi_ok || t != napi_external) return NULL;
  if (napi_get_value_external(env, v, &p) != napi_ok) return NULL;
  return (xts_keys *)p;
}

/*
 * run(keys, data: Uint8Array, firstIv: number, sectorSize, ivStep, ivMode, encrypt: boolean)
 * Sector i of `data` gets IV number firstIv + i * ivStep. The caller checks that
 * data.length is a multiple of sectorSize and that all IV numbers are safe integers.
 */
static napi_value run(napi_env env, napi_callback_info info) {
  size_t argc = 7;
  napi_value argv[7];
  napi_get_cb_info(env, info, &argc, argv, NULL, NULL);
  if (argc < 7) return throw_error(env, "ERR_MISSING_ARGS", "run needs 7 arguments");
  xts_keys *k = keys_of(env, argv[0]);
  if (!k || !k->enc) return throw_error(env, "ERR_INVALID_STATE", "the AES-XTS key was wiped");
  uint8_t *data;
  size_t len;
  if (!get_bytes(env, argv[1], &data, &len)) return throw_error(env, "ERR_INVALID_ARG_TYPE", "data must be a Uint8Array");
  double first_d;
  uint32_t sector_size, step, mode;
  bool encrypt;
  if (napi_get_value_double(env, argv[2], &first_d) != napi_ok || napi_get_value_uint32(env, argv[3], &sector_size) != napi_ok ||
      napi_get_value_uint32(env, argv[4], &step) != napi_ok || napi_get_value_uint32(env, argv[5], &mode) != napi_ok ||
      napi_get_value_bool(env, argv[6], &encrypt) != napi_ok) {
    return throw_error(env, "ERR_INVALID_ARG_TYPE", "bad argument");
  }
  if (sector_size < 16 || len % sector_size != 0 || first_d < 0 || mode > IV_NULL) return throw_error(env, "ERR_INVALID_ARG_VALUE", "bad run");
  EVP_CIPHER_CTX *ctx = encrypt ? k->enc : k->dec;
  uint64_t iv_no = (uint64_t)first_d;
  uint8_t iv[16];
  for (size_t pos = 0; pos < len; pos += sector_size, iv_no += step) {
    memset(iv, 0, sizeof(iv));
    if (mode != IV_NULL) {
      uint64_t v = mode == IV_PLAIN ? (iv_no & 0xffffffffu) : iv_no;
      for (int b = 0; b < 8; b++) iv[b] = (uint8_t)(v >> (8 * b));
    }
    int outl = 0;
    if (EVP_CipherInit_ex(ctx, NULL, NULL, NULL, iv, -1) != 1 || EVP_CipherUpdate(ctx, data + pos, &outl, data + pos, (int)sector_size) != 1 ||
        outl != (int)sector_size) {
      return throw_error(env, "ERR_CRYPTO", "AES-XTS failed");
    }
  }
  return NULL;
}

/* wipe(keys): frees the key schedules now instead of at garbage collection. */
static napi_value wipe(napi_env env, napi_callback_info info) {
  size_t argc = 1;
  napi_value argv[1];
  napi_get_cb_info(env, info, &argc, argv, NULL, NULL);
  xts_keys *k = argc >= 1 ? keys_of(env, argv[0]) : NULL;
  if (k) free_keys(k);
  return NULL;
}

static napi_value init(napi_env env, napi_value exports) {
  napi_property_descriptor props[] = {
      {"createKeys", NULL, create_keys, NULL, NULL, NULL, napi_default, NULL},
      {"run", NULL, run, NULL, NULL, NULL, napi_default, NULL},
      {"wipe", NULL, wipe, NULL, NULL, NULL, napi_default, NULL},
  };
  napi_define_properties(env, exports, sizeof(props) / sizeof(props[0]), props);
  return exports;
}

NAPI_MODULE(NODE_GYP_MODULE_NAME, init)
