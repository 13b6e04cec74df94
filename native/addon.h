/* Functions of the brickcrypt native module defined outside xts.c (which registers them). */
#ifndef BRICKCRYPT_ADDON_H
#define BRICKCRYPT_ADDON_H
#include <node_api.h>

napi_value brickcrypt_copy_bytes(napi_env env, napi_callback_info info);

#endif
