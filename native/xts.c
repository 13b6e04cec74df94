/*
 * AES-XTS over runs of whole sectors, in place, with OpenSSL's XTS (the copy of OpenSSL that
 * Node itself carries, so no extra library is linked).
 *
 * Why native: node:crypto's Cipher.update allocates two output buffers and copies once per
 * call, and one call per 512-byte sector costs about 1 us. Here a run of sectors costs one
 * N-API call; each sector is one EVP_CipherInit_ex (new IV only, the key schedule stays) and
 * one EVP_CipherUpdate, in place, into the caller's memory (which may be a SharedArrayBuffer).
 *
 * On x86-64 CPUs with AES-NI a second engine does XTS itself with the AES instructions: the
 * per-sector EVP_CipherInit_ex costs about as much as encrypting a 512-byte sector, and eight
 * blocks in flight keep the AES unit busy. It follows IEEE 1619-2007 5.3.1 directly (sectors are
 * whole multiples of 16 bytes here, so no ciphertext stealing); the tests compare both engines
 * with OpenSSL's XTS on random data and with the IEEE 1619 vectors.
 *
 * IVs (dm-crypt, cryptsetup docs/on-disk-format): plain64 = the 64-bit sector number, little
 * endian, zero-padded to 16 bytes; plain = its low 32 bits only; null = all zeros.
 * IEEE 1619-2007 5.1: the two key halves must differ - checked by the caller and here.
 */
#include <node_api.h>
#include "addon.h"
#include <openssl/evp.h>
#include <openssl/crypto.h>
#include <stdint.h>
#include <string.h>

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#define HAVE_AESNI_ENGINE 1
#include <immintrin.h>
#endif

typedef struct {
  EVP_CIPHER_CTX *enc;
  EVP_CIPHER_CTX *dec;
#ifdef HAVE_AESNI_ENGINE
  /* Round keys for the AES-NI engine: data key encrypt/decrypt schedules, tweak key encrypt. */
  int use_aesni;
  int rounds;
  __m128i k1e[15], k1d[15], k2e[15];
#endif
} xts_keys;

enum { IV_PLAIN64 = 0, IV_PLAIN = 1, IV_NULL = 2 };

static napi_value throw_error(napi_env env, const char *code, const char *msg) {
  napi_throw_error(env, code, msg);
  return NULL;
}

static void free_keys(xts_keys *k) {
  if (!k) return;
#ifdef HAVE_AESNI_ENGINE
  OPENSSL_cleanse(k->k1e, sizeof(k->k1e));
  OPENSSL_cleanse(k->k1d, sizeof(k->k1d));
  OPENSSL_cleanse(k->k2e, sizeof(k->k2e));
  k->use_aesni = 0;
#endif
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


#ifdef HAVE_AESNI_ENGINE
#define AESNI __attribute__((target("aes,sse2")))

/* FIPS-197 5.2 key expansion with AESKEYGENASSIST: w[i] = w[i-Nk] ^ f(w[i-1]). */
AESNI static inline __m128i expand_step(__m128i prev, __m128i assist, int lane) {
  assist = lane == 3 ? _mm_shuffle_epi32(assist, 0xff) : _mm_shuffle_epi32(assist, 0xaa);
  prev = _mm_xor_si128(prev, _mm_slli_si128(prev, 4));
  prev = _mm_xor_si128(prev, _mm_slli_si128(prev, 4));
  prev = _mm_xor_si128(prev, _mm_slli_si128(prev, 4));
  return _mm_xor_si128(prev, assist);
}

/* AESKEYGENASSIST needs its round constant as an immediate, hence the macros. */
#define EXP128(i, rcon) rk[i] = expand_step(rk[i - 1], _mm_aeskeygenassist_si128(rk[i - 1], rcon), 3)
#define EXP256(i, rcon)                                                          \
  rk[i] = expand_step(rk[i - 2], _mm_aeskeygenassist_si128(rk[i - 1], rcon), 3); \
  if (i + 1 <= 14) rk[i + 1] = expand_step(rk[i - 1], _mm_aeskeygenassist_si128(rk[i], 0), 2)

AESNI static int expand_key(const uint8_t *key, size_t len, __m128i *rk) {
  if (len == 16) {
    rk[0] = _mm_loadu_si128((const __m128i *)key);
    EXP128(1, 0x01); EXP128(2, 0x02); EXP128(3, 0x04); EXP128(4, 0x08); EXP128(5, 0x10);
    EXP128(6, 0x20); EXP128(7, 0x40); EXP128(8, 0x80); EXP128(9, 0x1b); EXP128(10, 0x36);
    return 10;
  }
  rk[0] = _mm_loadu_si128((const __m128i *)key);
  rk[1] = _mm_loadu_si128((const __m128i *)(key + 16));
  EXP256(2, 0x01); EXP256(4, 0x02); EXP256(6, 0x04); EXP256(8, 0x08); EXP256(10, 0x10); EXP256(12, 0x20);
  rk[14] = expand_step(rk[12], _mm_aeskeygenassist_si128(rk[13], 0x40), 3);
  return 14;
}

/* The equivalent inverse cipher's schedule (FIPS-197 5.3.5), as AESDEC expects it. */
AESNI static void decrypt_schedule(const __m128i *ek, __m128i *dk, int rounds) {
  dk[0] = ek[rounds];
  for (int i = 1; i < rounds; i++) dk[i] = _mm_aesimc_si128(ek[rounds - i]);
  dk[rounds] = ek[0];
}

/* Multiplication by alpha in GF(2^128), little-endian block (IEEE 1619-2007 5.2). */
AESNI static inline __m128i mul_alpha(__m128i t) {
  __m128i carry = _mm_and_si128(_mm_srai_epi32(t, 31), _mm_set_epi32(0x87, 1, 1, 1));
  return _mm_xor_si128(_mm_add_epi32(t, t), _mm_shuffle_epi32(carry, 0x93));
}

AESNI static inline __m128i encrypt_block(const __m128i *rk, int rounds, __m128i b) {
  b = _mm_xor_si128(b, rk[0]);
  for (int r = 1; r < rounds; r++) b = _mm_aesenc_si128(b, rk[r]);
  return _mm_aesenclast_si128(b, rk[rounds]);
}

/* One sector (len a multiple of 128 bytes), eight blocks in flight. */
AESNI static void sector_aesni(const xts_keys *k, const uint8_t iv[16], uint8_t *data, size_t len, int encrypt) {
  const int nr = k->rounds;
  const __m128i *rk = encrypt ? k->k1e : k->k1d;
  __m128i t = encrypt_block(k->k2e, nr, _mm_loadu_si128((const __m128i *)iv));
  for (size_t pos = 0; pos < len; pos += 128) {
    __m128i tw[8], b[8];
    for (int j = 0; j < 8; j++) {
      tw[j] = t;
      t = mul_alpha(t);
      b[j] = _mm_xor_si128(_mm_xor_si128(_mm_loadu_si128((const __m128i *)(data + pos + 16 * j)), tw[j]), rk[0]);
    }
    if (encrypt) {
      for (int r = 1; r < nr; r++)
        for (int j = 0; j < 8; j++) b[j] = _mm_aesenc_si128(b[j], rk[r]);
      for (int j = 0; j < 8; j++) b[j] = _mm_aesenclast_si128(b[j], rk[nr]);
    } else {
      for (int r = 1; r < nr; r++)
        for (int j = 0; j < 8; j++) b[j] = _mm_aesdec_si128(b[j], rk[r]);
      for (int j = 0; j < 8; j++) b[j] = _mm_aesdeclast_si128(b[j], rk[nr]);
    }
    for (int j = 0; j < 8; j++) _mm_storeu_si128((__m128i *)(data + pos + 16 * j), _mm_xor_si128(b[j], tw[j]));
  }
}

static void setup_aesni(xts_keys *k, const uint8_t *key, size_t key_len) {
  __builtin_cpu_init();
  if (!__builtin_cpu_supports("aes") || !__builtin_cpu_supports("sse2")) return;
  size_t half = key_len / 2;
  k->rounds = expand_key(key, half, k->k1e);
  expand_key(key + half, half, k->k2e);
  decrypt_schedule(k->k1e, k->k1d, k->rounds);
  k->use_aesni = 1;
}
#endif

/* createKeys(key: Uint8Array of 32 or 64 bytes, engine: 0 = best available, 1 = OpenSSL EVP only) -> external */
static napi_value create_keys(napi_env env, napi_callback_info info) {
  size_t argc = 2;
  napi_value argv[2];
  napi_get_cb_info(env, info, &argc, argv, NULL, NULL);
  uint8_t *key;
  size_t key_len;
  uint32_t engine = 0;
  if (argc >= 2 && napi_get_value_uint32(env, argv[1], &engine) != napi_ok) return throw_error(env, "ERR_INVALID_ARG_TYPE", "engine must be a number");
  if (argc < 1 || !brickcrypt_bytes_of(env, argv[0], &key, &key_len)) return throw_error(env, "ERR_INVALID_ARG_TYPE", "key must be a Uint8Array");
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
#ifdef HAVE_AESNI_ENGINE
  if (engine == 0) setup_aesni(k, key, key_len);
#endif
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

/* The keys passed as the only argument, or NULL. */
static xts_keys *keys_arg(napi_env env, napi_callback_info info) {
  size_t argc = 1;
  napi_value argv[1];
  napi_get_cb_info(env, info, &argc, argv, NULL, NULL);
  return argc >= 1 ? keys_of(env, argv[0]) : NULL;
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
  if (!brickcrypt_bytes_of(env, argv[1], &data, &len)) return throw_error(env, "ERR_INVALID_ARG_TYPE", "data must be a Uint8Array");
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
#ifdef HAVE_AESNI_ENGINE
    if (k->use_aesni && sector_size % 128 == 0) {
      sector_aesni(k, iv, data + pos, sector_size, encrypt);
      continue;
    }
#endif
    int outl = 0;
    if (EVP_CipherInit_ex(ctx, NULL, NULL, NULL, iv, -1) != 1 || EVP_CipherUpdate(ctx, data + pos, &outl, data + pos, (int)sector_size) != 1 ||
        outl != (int)sector_size) {
      return throw_error(env, "ERR_CRYPTO", "AES-XTS failed");
    }
  }
  return NULL;
}

/* engine(keys) -> "aesni" | "evp" */
static napi_value engine_of(napi_env env, napi_callback_info info) {
  xts_keys *k = keys_arg(env, info);
  const char *name = "evp";
#ifdef HAVE_AESNI_ENGINE
  if (k && k->use_aesni) name = "aesni";
#else
  (void)k;
#endif
  napi_value out;
  napi_create_string_utf8(env, name, NAPI_AUTO_LENGTH, &out);
  return out;
}

/* wipe(keys): frees the key schedules now instead of at garbage collection. */
static napi_value wipe(napi_env env, napi_callback_info info) {
  xts_keys *k = keys_arg(env, info);
  if (k) free_keys(k);
  return NULL;
}

static napi_value init(napi_env env, napi_value exports) {
  napi_property_descriptor props[] = {
      {"createKeys", NULL, create_keys, NULL, NULL, NULL, napi_default, NULL},
      {"run", NULL, run, NULL, NULL, NULL, napi_default, NULL},
      {"wipe", NULL, wipe, NULL, NULL, NULL, napi_default, NULL},
      {"engine", NULL, engine_of, NULL, NULL, NULL, napi_default, NULL},
      {"copyBytes", NULL, brickcrypt_copy_bytes, NULL, NULL, NULL, napi_default, NULL},
      {"alignGap", NULL, brickcrypt_align_gap, NULL, NULL, NULL, napi_default, NULL},
      {"seekData", NULL, brickcrypt_seek_data, NULL, NULL, NULL, napi_default, NULL},
      {"syncFs", NULL, brickcrypt_sync_fs, NULL, NULL, NULL, napi_default, NULL},
      {"afChain", NULL, brickcrypt_af_chain, NULL, NULL, NULL, napi_default, NULL},
      {"blockDigests", NULL, brickcrypt_block_digests, NULL, NULL, NULL, napi_default, NULL},
  };
  napi_define_properties(env, exports, sizeof(props) / sizeof(props[0]), props);
  return exports;
}

NAPI_MODULE(NODE_GYP_MODULE_NAME, init)
