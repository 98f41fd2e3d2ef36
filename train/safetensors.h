/* safetensors.h: a small writer for the .safetensors format (what
 * safetensors.torch.load_file and safetensors.numpy.load_file read).
 *
 * Layout of the file:
 *   8 bytes   N, the header length, unsigned little-endian
 *   N bytes   a JSON object: for each tensor
 *               "name": {"dtype": "F32", "shape": [out, in], "data_offsets": [begin, end]}
 *             and optionally "__metadata__": {"key": "value", ...} (strings only);
 *             padded with spaces so that 8 + N is a multiple of 8
 *   the data  every tensor's raw little-endian bytes, back to back in the order given;
 *             data_offsets are relative to the start of this section, with no holes.
 */
#ifndef DROVER_TRAIN_SAFETENSORS_H
#define DROVER_TRAIN_SAFETENSORS_H

#include <stddef.h>
#include <stdint.h>

#include "common/drv.h"

#define SAFETENSORS_MAX_DIMS 8

typedef struct {
  const char *name;  /* unique, not "__metadata__" */
  const char *dtype; /* "F64" "F32" "F16" "BF16" "I64" "I32" "I16" "I8" "U8" "BOOL" */
  uint32_t ndim;     /* 0 (a scalar) .. SAFETENSORS_MAX_DIMS */
  uint64_t shape[SAFETENSORS_MAX_DIMS];
  const void *data; /* host memory, native byte order, prod(shape) elements */
} safetensors_tensor_t;

typedef struct {
  const char *key;
  const char *value;
} safetensors_meta_t;

/* Writes `count` tensors and `meta_count` metadata pairs (meta may be NULL when
 * meta_count is 0) to `path` atomically: a temporary file in the same directory, fsync,
 * rename over `path`, fsync of the directory. Nothing is left behind on failure. Returns
 * DRV_ERR_INVALID for a bad tensor description (unknown dtype, duplicate name) and
 * DRV_ERR_SYS when the file cannot be written. Borrows everything it is given. */
drv_result_t safetensors_write(const char *path, const safetensors_tensor_t *tensors, size_t count,
                               const safetensors_meta_t *meta, size_t meta_count);

/* The size in bytes of one element of `dtype` ("F32" -> 4), or 0 when unknown. */
size_t safetensors_dtype_size(const char *dtype);

#endif
