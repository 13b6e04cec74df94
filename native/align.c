/*
 * alignGap(view: Uint8Array, alignment: number): bytes from the view's first byte to the next
 * address that is a multiple of `alignment` (a power of two); 0 when the view is aligned.
 *
 * Why native: O_DIRECT I/O needs memory aligned to the device's logical block size
 * (open(2), "O_DIRECT"), and JavaScript cannot see an ArrayBuffer's address. A caller
 * allocates `alignment` spare bytes and starts its view at the gap.
 */
#include "addon.h"

napi_value brickcrypt_align_gap(napi_env env, napi_callback_info info) {
  size_t argc = 2;
  napi_value argv[2];
  napi_get_cb_info(env, info, &argc, argv, NULL, NULL);
  uint8_t *data;
  size_t len;
  uint32_t alignment;
  if (argc < 2 || !brickcrypt_bytes_of(env, argv[0], &data, &len) || napi_get_value_uint32(env, argv[1], &alignment) != napi_ok) {
    napi_throw_type_error(env, "ERR_INVALID_ARG_TYPE", "alignGap(view: Uint8Array, alignment: number)");
    return NULL;
  }
  if (alignment == 0 || (alignment & (alignment - 1)) != 0) {
    napi_throw_range_error(env, "ERR_OUT_OF_RANGE", "alignGap: the alignment must be a power of two");
    return NULL;
  }
  uint32_t gap = (uint32_t)((alignment - ((uintptr_t)data & (alignment - 1))) & (alignment - 1));
  napi_value out;
  napi_create_uint32(env, gap, &out);
  return out;
}
