/* dataset.h: the samples a worker trains on, held in host memory, read by index.
 *
 * Two sources:
 *  - IDX files (the MNIST / Fashion-MNIST format): images as unsigned bytes, labels as
 *    unsigned bytes, each file plain or gzip-compressed. Plain files are mapped read-only
 *    (never copied); gzip files are decompressed once into memory. Every header field and
 *    the exact file length are checked, so a corrupt or truncated file is refused with a
 *    message naming the file and what is wrong, never read past its end.
 *  - A synthetic, learnable problem: features ~ N(0,1), labels = argmax(W x) for a fixed
 *    random linear "teacher" W (classes, features). The teacher depends only on
 *    (seed, features, classes) and the samples on (seed, split), so the train split (0)
 *    and the test split (1) of one seed pose the same problem. Sample i of a split does not
 *    depend on the count either: a larger dataset extends a smaller one.
 *
 * Either way, a dataset_t is immutable once made and can be read from several threads.
 */
#ifndef DROVER_TRAIN_DATASET_H
#define DROVER_TRAIN_DATASET_H

#include <stdint.h>

#include "common/drv.h"

typedef struct dataset dataset_t;

/* Loads an IDX image file (magic 0x00000803: count, rows, cols; or 0x00000802: count,
 * features; unsigned bytes) and its IDX label file (magic 0x00000801: count), each plain
 * or gzip (detected by the magic bytes 1f 8b, not by the name). Checks the magic (data
 * type 0x08 and the dimension count), that dimensions are non-zero and sane (at most
 * 2^24 features per sample), that the file (or decompressed stream) holds exactly the
 * header plus the product of the dimensions (truncated or trailing bytes are errors), and
 * that images and labels agree in count. Messages name the file and the problem:
 *   "/x/train.idx: expected magic 0x00000803, found 0x1f8b0808 (...)"
 *   "/x/train.idx.gz: truncated: expected 47040016 bytes, found 1000".
 * On success *out owns the data (release with dataset_destroy). Returns DRV_ERR_INVALID
 * for bad content, DRV_ERR_SYS when a file cannot be opened or read (with strerror),
 * DRV_ERR_NOMEM when decompressed data does not fit in memory. */
drv_result_t dataset_load_idx(const char *images, const char *labels, dataset_t **out);

/* Makes `count` samples of the synthetic problem (seed, features, classes), split `split`
 * (0 = train, 1 = test, any other value another independent sample of the same problem).
 * Features are float32, generated at well over ten million per second; labels are
 * argmax(W x) with W ~ N(0, 1/features). The same arguments give bit-identical data on
 * machines with the same C math library. Needs count, features >= 1 and classes >= 2.
 * Returns DRV_ERR_INVALID for bad arguments, DRV_ERR_NOMEM when count * features floats
 * cannot be allocated. */
drv_result_t dataset_synthetic(uint32_t count, uint32_t features, uint32_t classes, uint64_t seed,
                               uint32_t split, dataset_t **out);

/* Number of samples. */
uint32_t dataset_count(const dataset_t *ds);

/* Features per sample (rows * cols for IDX images). */
uint32_t dataset_features(const dataset_t *ds);

/* Number of classes: the largest label + 1 for IDX, `classes` for synthetic data. */
uint32_t dataset_classes(const dataset_t *ds);

/* Copies samples idx[0..n) into x (n, features) row-major float32, IDX bytes scaled to
 * [0, 1] by /255, and their labels into y (n). Every idx[i] must be < dataset_count; the
 * caller owns x and y. */
void dataset_gather(const dataset_t *ds, const uint32_t *idx, uint32_t n, float *x, int32_t *y);

/* Releases the dataset and its mappings; NULL-safe; sets *ds to NULL. */
void dataset_destroy(dataset_t **ds);

#endif
