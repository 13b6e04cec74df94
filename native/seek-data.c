/*
 * seekData(fd: number, offset: number, hole: boolean): lseek(fd, offset, SEEK_HOLE or SEEK_DATA),
 * as a double; -1 when there is no data at or after `offset` (ENXIO), -2 when the file system
 * does not report holes (EINVAL/ENOTSUP: the caller treats the file as all data).
 *
 * Why native: Node has no binding for SEEK_DATA/SEEK_HOLE (lseek(2), Linux 3.1+), and a backup
 * must skip a sparse volume's holes without reading them.
 */
#define _GNU_SOURCE
#include "addon.h"
#include <errno.h>
#include <unistd.h>

napi_value brickcrypt_seek_data(napi_env env, napi_callback_info info) {
  size_t argc = 3;
  napi_value argv[3];
  napi_get_cb_info(env, info, &argc, argv, NULL, NULL);
  int32_t fd;
  double offset;
  bool hole;
  if (argc < 3 || napi_get_value_int32(env, argv[0], &fd) != napi_ok || napi_get_value_double(env, argv[1], &offset) != napi_ok ||
      napi_get_value_bool(env, argv[2], &hole) != napi_ok || offset < 0) {
    napi_throw_type_error(env, "ERR_INVALID_ARG_TYPE", "seekData(fd: number, offset: number, hole: boolean)");
    return NULL;
  }
  off_t r = lseek(fd, (off_t)offset, hole ? SEEK_HOLE : SEEK_DATA);
  double result;
  if (r >= 0) {
    result = (double)r;
  } else if (errno == ENXIO) {
    result = -1;
  } else if (errno == EINVAL || errno == ENOTSUP || errno == EOPNOTSUPP) {
    result = -2;
  } else {
    napi_throw_error(env, "EIO", "seekData: lseek failed");
    return NULL;
  }
  napi_value out;
  napi_create_double(env, result, &out);
  return out;
}
