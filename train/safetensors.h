/* safetensors.h: the .safetensors format (what safetensors.torch.load_file and
 * safetensors.numpy.load_file read): a writer for any tensors, and a checking reader that
 * finds the tensors a caller expects (the checkpoint loader's).
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
#define SAFETENSORS_NAME_MAX 1024 /* bytes of a tensor name the reader takes, NUL included */
#define SAFETENSORS_HEADER_MAX (16u << 20) /* bytes of JSON header the reader takes */

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

// --- reading ------------------------------------------------------------------------------

/* A tensor a reader expects in a file: its name, dtype, element count and shape (filled by
 * the caller), and where its data starts (filled by safetensors_locate). */
typedef struct {
  const char *name;
  const char *dtype; /* e.g. "F32" */
  uint64_t count;    /* elements */
  uint32_t ndim;     /* 0 (a scalar) .. SAFETENSORS_MAX_DIMS */
  uint64_t shape[SAFETENSORS_MAX_DIMS];
  uint64_t offset; /* out: absolute byte offset of the tensor's data in the file */
} safetensors_want_t;

/* Reads the header of the safetensors file open as fd (size bytes; `what` names it in
 * errors), checks every entry (known dtype, data_offsets inside the data and matching the
 * shape; "__metadata__" strings only; no other key) and finds each want[i]: it must appear
 * exactly once, with want[i]'s dtype, count and shape. Tensors nobody asked for are checked
 * and passed over. Sets every want[i].offset on DRV_OK. DRV_ERR_INVALID saying what is
 * wrong and where ("model.safetensors: tensor layers.0.bias: 512 elements in the file, 511
 * expected", "model.safetensors: header byte 17: ..."), DRV_ERR_SYS when fd cannot be
 * read, DRV_ERR_NOMEM. Nothing in the file is trusted: a caller that must not parse a
 * damaged file checks its size and checksum first. */
drv_result_t safetensors_locate(int fd, uint64_t size, const char *what, safetensors_want_t *want,
                                size_t n);

/* Reads count F32 values at byte offset off of fd (little-endian in the file) into dst, in
 * host order; `what` names the file in errors. */
drv_result_t safetensors_read_f32(int fd, uint64_t off, float *dst, uint64_t count,
                                  const char *what);

#endif
