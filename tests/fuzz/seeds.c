/* seeds.c: writes the seed inputs of tests/fuzz/corpus/ from the code itself, so that they
 * are what drover really sends and writes (frames by proto_pack, checkpoints by ckpt_write,
 * tensor files by safetensors_write), and can be made again when a format changes.
 *
 *   fuzz_seeds SOURCE_DIR
 *
 * writes SOURCE_DIR/tests/fuzz/corpus/<target>/seed-*, overwriting earlier seeds, and
 * reads the specs of SOURCE_DIR/examples/. Inputs found by fuzzing (regress-*) are kept
 * beside them by hand; this program does not touch them. */
#include <dirent.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <zlib.h>

#include "common/fsutil.h"
#include "common/proto.h"
#include "tests/fuzz/fixture.h"
#include "tests/fuzz/fuzz.h"
#include "tests/tmpdir.h"
#include "train/safetensors.h"

static char corpus[4096]; /* SOURCE_DIR/tests/fuzz/corpus */

static void put(const char *target, const char *name, const void *data, size_t len) {
  char dir[4200], path[4400];
  snprintf(dir, sizeof dir, "%s/%s", corpus, target);
  FUZZ_CHECK(fs_mkdir_p(dir, 0750) == DRV_OK);
  snprintf(path, sizeof path, "%s/%s", dir, name);
  FILE *f = fopen(path, "wb");
  FUZZ_CHECK(f && fwrite(data, 1, len, f) == len && fclose(f) == 0);
}

/* The whole file at path into a malloc'ed buffer (*len bytes). */
static char *slurp(const char *path, size_t *len) {
  FILE *f = fopen(path, "rb");
  FUZZ_CHECK(f);
  char *buf = malloc(1 << 20);
  FUZZ_CHECK(buf);
  *len = fread(buf, 1, 1 << 20, f);
  fclose(f);
  return buf;
}

// --- proto: one frame of every type, zeroed, then a few filled as peers send them --------

static void put_frame(const char *name, const proto_msg_t *m) {
  char *buf, file[128];
  size_t len;
  FUZZ_CHECK(proto_pack(m, &buf, &len) == DRV_OK);
  snprintf(file, sizeof file, "seed-%s.msgpack", name);
  put("proto", file, buf, len);
  free(buf);
}

static void seeds_proto(void) {
  proto_msg_t m;
  for (int t = 0; t < PROTO_TYPE_COUNT; t++) {
    proto_msg_init(&m, (proto_type_t)t);
    put_frame(proto_type_name((proto_type_t)t), &m);
  }
  proto_gpu_t gpus[2] = {{0, "H100", 80ull << 30, 9, 0, "0000:17:00.0", "GPU-a"},
                         {1, "A100", 40ull << 30, 8, 0, "0000:65:00.0", "GPU-b"}};
  proto_msg_init(&m, PROTO_HELLO);
  m.u.hello = (proto_hello_t){.agent_id = "node-1",
                              .host = "10.0.0.1",
                              .target = "attached",
                              .pool = "a",
                              .pid = 77,
                              .session = 1234567,
                              .cpus = 64,
                              .mem_bytes = 512ull << 30,
                              .gpus = gpus,
                              .gpus_count = 2};
  put_frame("hello-gpus", &m);
  const char *peers[3] = {"127.0.0.1:4001", "127.0.0.1:4002", "127.0.0.1:4003"};
  const char *gpu_ids[3] = {"", "h/0000:01:00.0", ""};
  proto_msg_init(&m, PROTO_START);
  m.u.start = (proto_start_t){.job = 5,
                              .generation = 1,
                              .world = 3,
                              .peers = peers,
                              .peers_count = 3,
                              .gpus = gpu_ids,
                              .gpus_count = 3,
                              .nccl_id = "00ff"};
  put_frame("start-peers", &m);
  proto_msg_init(&m, PROTO_ASSIGN);
  m.u.assign = (proto_assign_t){.job = 9,
                                .generation = 2,
                                .rank = 1,
                                .world = 2,
                                .device = -1,
                                .spec = "name: x\nnodes: 2\n",
                                .run_dir = "/runs/9",
                                .coordinator = "tcp://127.0.0.1:7700",
                                .resume_dir = "/runs/8/checkpoints",
                                .owner = "alice",
                                .lineage = "l-1",
                                .ring_key = "ab"};
  put_frame("assign-full", &m);
  proto_msg_init(&m, PROTO_PROGRESS);
  m.u.progress = (proto_progress_t){.job = 42,
                                    .generation = 3,
                                    .rank = 1,
                                    .epoch = 2,
                                    .step = 1234,
                                    .steps_total = 9999,
                                    .loss = 0.25,
                                    .lr = 0.1,
                                    .samples = 640,
                                    .interval_s = 0.5,
                                    .step_ms = 7.5,
                                    .wait_ms = 1.5,
                                    .coll_seq = 99,
                                    .data_ms = 0.25};
  put_frame("progress-full", &m);
  proto_rank_t ranks[2] = {{0, "a0", "h0", 7.5, 6.0, 1.5, 0, 0.1, 0, "0000:17:00.0"},
                           {1, "a0", "h0", 9.5, 8.0, 1.5, 1, 0.2, 1, "0000:65:00.0"}};
  proto_job_t jobs[1] = {{.id = 4,
                          .name = "mnist",
                          .state = "running",
                          .reason = "",
                          .target = "local",
                          .run_dir = "/runs/4",
                          .nodes = 2,
                          .epochs = 5,
                          .step = 10,
                          .steps_total = 100,
                          .loss = 2.3,
                          .submitted_at = 1e9,
                          .ckpt_step = 5,
                          .owner = "bob",
                          .ranks = ranks,
                          .ranks_count = 2}};
  proto_msg_init(&m, PROTO_JOBS);
  m.u.jobs = (proto_jobs_t){.jobs = jobs, .jobs_count = 1};
  put_frame("jobs-ranks", &m);
  proto_agent_gpu_t devs[1] = {{0, "H100", "0000:17:00.0", 80ull << 30, 1ull << 30, 97, 1}};
  proto_agent_t agents[2] = {{"a0", "h0", "local", "idle", 4, 0, 1 << 30, 0, 0.5, 0, NULL, 0},
                             {"a1", "h1", "local", "busy", 8, 1, 2u << 30, 4, 0.1, 2, devs, 1}};
  proto_msg_init(&m, PROTO_AGENT_LIST);
  m.u.agent_list = (proto_agent_list_t){.agents = agents, .agents_count = 2};
  put_frame("agent_list-two", &m);
  proto_msg_init(&m, PROTO_SUBMIT);
  m.u.submit = (proto_submit_t){.spec = "name: x\n", .pool = "gpu", .resume = 3, .token = "t"};
  put_frame("submit-full", &m);
  proto_msg_init(&m, PROTO_ERROR);
  m.u.error = (proto_error_t){.code = "proto", .message = "hello: missing field 'host'"};
  put_frame("error-text", &m);
}

// --- jobspec: the examples, and some with overrides --------------------------------------

static void seeds_jobspec(const char *src) {
  static const char *const examples[] = {"fashion-mnist.yaml", "fashion-mnist-gpu.yaml",
                                         "synthetic.yaml"};
  for (size_t i = 0; i < DRV_ARRAY_LEN(examples); i++) {
    char path[4200], name[128];
    size_t len;
    snprintf(path, sizeof path, "%s/examples/%s", src, examples[i]);
    char *text = slurp(path, &len);
    snprintf(name, sizeof name, "seed-%s", examples[i]);
    put("jobspec", name, text, len);
    if (strcmp(examples[i], "synthetic.yaml") == 0) {
      /* The same text with overrides after a NUL (see fuzz_jobspec.c). */
      static const char sets[] = "\0nodes=4\0model.hidden=[64, 32]\0train.optimizer.lr=0.05";
      char *with = malloc(len + sizeof sets);
      FUZZ_CHECK(with);
      memcpy(with, text, len);
      memcpy(with + len, sets, sizeof sets); /* its last NUL ends the last override */
      put("jobspec", "seed-synthetic-sets.yaml", with, len + sizeof sets);
      free(with);
    }
    free(text);
  }
  static const char minimal[] =
      "name: m\nmodel: {type: mlp, hidden: [8]}\n"
      "data: {format: synthetic}\ntrain: {epochs: 1, global_batch: 4, optimizer: {type: sgd, lr: "
      "0.1}}\n";
  put("jobspec", "seed-minimal.yaml", minimal, sizeof minimal - 1);
  /* Refused on purpose, each for one reason the fuzzer is slow to reach by itself. */
  static const struct {
    const char *name, *text;
  } refused[] = {
      {"seed-alias.yaml", "name: &n m\nrun_dir: *n\nmodel: {type: mlp}\n"},
      {"seed-min-nodes.yaml",
       "name: m\nnodes: 2\nmin_nodes: 3\nmodel: {type: mlp}\n"
       "data: {format: synthetic}\ntrain: {epochs: 1, global_batch: 4, optimizer: {type: sgd, lr: "
       "0.1}}\n"},
      {"seed-max-nodes.yaml",
       "name: m\nnodes: 2\nmax_nodes: 9\nmodel: {type: mlp}\n"
       "data: {format: synthetic}\ntrain: {epochs: 1, global_batch: 4, optimizer: {type: sgd, lr: "
       "0.1}}\n"},
      {"seed-idx-labels.yaml",
       "name: m\nmodel: {type: mlp}\ndata: {format: idx, train: "
       "{images: a, labels: \"\"}, test: {images: b, labels: c}}\n"
       "train: {epochs: 1, global_batch: 4, optimizer: {type: sgd, lr: 0.1}}\n"},
      {"seed-hidden-many.yaml",
       "name: m\nmodel: {type: mlp, hidden: [1, 2, 3, 4, 5, 6, 7, 8, "
       "9, 10, 11, 12, 13, 14, 15, 16, 17]}\n"},
  };
  for (size_t i = 0; i < DRV_ARRAY_LEN(refused); i++)
    put("jobspec", refused[i].name, refused[i].text, strlen(refused[i].text));
}

// --- dataset: [u32 LE images length][images][labels] ------------------------------------

/* An IDX header (magic 0x0000080<ndims>, then dims big-endian) and `count * per` bytes. */
static size_t idx_make(uint8_t *out, uint32_t ndims, const uint32_t *dims, uint8_t seed) {
  size_t n = 0, values = 1;
  out[n++] = 0;
  out[n++] = 0;
  out[n++] = 0x08;
  out[n++] = (uint8_t)ndims;
  for (uint32_t d = 0; d < ndims; d++) {
    for (int b = 3; b >= 0; b--) out[n++] = (uint8_t)(dims[d] >> (8 * b));
    values *= dims[d];
  }
  for (size_t v = 0; v < values; v++) out[n++] = (uint8_t)(seed * 37 + v * 11);
  return n;
}

static size_t gzip_make(const uint8_t *in, size_t n, uint8_t *out, size_t cap) {
  z_stream z = {0};
  FUZZ_CHECK(deflateInit2(&z, 9, Z_DEFLATED, 15 + 16, 8, Z_DEFAULT_STRATEGY) == Z_OK);
  z.next_in = (Bytef *)in;
  z.avail_in = (uInt)n;
  z.next_out = out;
  z.avail_out = (uInt)cap;
  FUZZ_CHECK(deflate(&z, Z_FINISH) == Z_STREAM_END);
  size_t len = z.total_out;
  deflateEnd(&z);
  return len;
}

static void put_pair(const char *name, const uint8_t *img, size_t ni, const uint8_t *lab,
                     size_t nl) {
  uint8_t buf[4096];
  FUZZ_CHECK(4 + ni + nl <= sizeof buf);
  for (int b = 0; b < 4; b++) buf[b] = (uint8_t)(ni >> (8 * b));
  memcpy(buf + 4, img, ni);
  memcpy(buf + 4 + ni, lab, nl);
  put("dataset", name, buf, 4 + ni + nl);
}

static void seeds_dataset(void) {
  uint8_t img[512], lab[64], gimg[1024], glab[256];
  uint32_t d3[3] = {3, 2, 2}, d2[2] = {4, 5}, d1[1] = {3}, d1b[1] = {4};
  size_t ni = idx_make(img, 3, d3, 1), nl = idx_make(lab, 1, d1, 2);
  for (size_t k = 8; k < nl; k++) lab[k] %= 10; /* labels 0..9 */
  put_pair("seed-3x2x2.idx", img, ni, lab, nl);
  size_t gi = gzip_make(img, ni, gimg, sizeof gimg), gl = gzip_make(lab, nl, glab, sizeof glab);
  put_pair("seed-3x2x2-gz.idx", gimg, gi, glab, gl);
  ni = idx_make(img, 2, d2, 3);
  nl = idx_make(lab, 1, d1b, 4);
  for (size_t k = 8; k < nl; k++) lab[k] %= 3;
  put_pair("seed-4x5-flat.idx", img, ni, lab, nl);
}

// --- checkpoint and safetensors: the fixture written by ckpt_write -----------------------

static void seeds_checkpoint(void) {
  char root[256], path[512];
  float data[FIXTURE_FLOATS];
  ckpt_tensor_t t[FIXTURE_TENSORS];
  FUZZ_CHECK(tmpdir_make(root, sizeof root, "fuzz-seeds") == 0);
  fixture_tensors(t, data, 1);
  FUZZ_CHECK(ckpt_write(root, &fixture_meta, t, FIXTURE_TENSORS) == DRV_OK);
  static const char *const files[] = {"manifest.json", "model.safetensors", "state.safetensors"};
  for (size_t i = 0; i < DRV_ARRAY_LEN(files); i++) {
    size_t len;
    snprintf(path, sizeof path, "%s/step-%010llu/%s", root, (unsigned long long)fixture_meta.step,
             files[i]);
    char *text = slurp(path, &len), name[64];
    snprintf(name, sizeof name, "seed-%s", files[i]);
    put(i == 0 ? "checkpoint" : "safetensors", name, text, len);
    if (i == 0) {
      /* The placeholder that fuzz_checkpoint replaces by the right CRC32. */
      char *crc = strstr(text, "\"manifest_crc32\": \"");
      FUZZ_CHECK(crc);
      memcpy(crc + strlen("\"manifest_crc32\": \""), "????????", 8);
      put("checkpoint", "seed-manifest-crc-placeholder.json", text, len);
    }
    free(text);
  }
  /* Every tensor in one file, with metadata, and a scalar. */
  float one = 1.0f;
  safetensors_tensor_t st[FIXTURE_TENSORS + 1];
  for (int i = 0; i < FIXTURE_TENSORS; i++)
    st[i] = (safetensors_tensor_t){.name = t[i].name,
                                   .dtype = "F32",
                                   .ndim = t[i].ndim,
                                   .shape = {t[i].shape[0], t[i].shape[1]},
                                   .data = t[i].data};
  st[FIXTURE_TENSORS] = (safetensors_tensor_t){.name = "step", .dtype = "F32", .data = &one};
  safetensors_meta_t meta[2] = {{"format", "pt"}, {"job", "3"}};
  snprintf(path, sizeof path, "%s/all.safetensors", root);
  FUZZ_CHECK(safetensors_write(path, st, FIXTURE_TENSORS + 1, meta, 2) == DRV_OK);
  size_t len;
  char *bytes = slurp(path, &len);
  put("safetensors", "seed-all-meta.safetensors", bytes, len);
  free(bytes);
  tmpdir_remove(root);
}

int main(int argc, char **argv) {
  if (argc != 2) {
    fprintf(stderr, "usage: %s SOURCE_DIR\n", argv[0]);
    return 2;
  }
  log_set_level(LOG_ERROR);
  snprintf(corpus, sizeof corpus, "%s/tests/fuzz/corpus", argv[1]);
  seeds_proto();
  seeds_jobspec(argv[1]);
  seeds_dataset();
  seeds_checkpoint();
  printf("seeds written under %s\n", corpus);
  return 0;
}
