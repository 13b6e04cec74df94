/* Shared by the native module's files; xts.c registers the exported functions. */
#ifndef BRICKCRYPT_ADDON_H
#define BRICKCRYPT_ADDON_H
#include <node_api.h>
#include <stddef.h>
#include <stdint.h>

napi_value brickcrypt_copy_bytes(napi_env env, napi_callback_info info);
napi_value brickcrypt_align_gap(napi_env env, napi_callback_info info);
napi_value brickcrypt_seek_data(napi_env env, napi_callback_info info);
napi_value brickcrypt_sync_fs(napi_env env, napi_callback_info info);
napi_value brickcrypt_af_chain(napi_env env, napi_callback_info info);
napi_value brickcrypt_block_digests(napi_env env, napi_callback_info info);
/* The bytes of a Uint8Array (any view, also over a SharedArrayBuffer); 0 for anything else. */
int brickcrypt_bytes_of(napi_env env, napi_value v, uint8_t **data, size_t *len);

#endif
