/* jobspec.c: the job spec's one libcyaml schema, and everything built on it.
 *
 * The schema below is the single description of the format. Loading a spec runs these
 * passes over one text:
 *   1. libyaml parses it into a document, so that a syntax error carries line and column;
 *   2. libcyaml loads it into a jobspec_t with the schema: unknown keys, missing required
 *      keys, values of the wrong type and unknown enum names are errors. Its log is
 *      captured and turned into one message that names the key (`spec_load_error`);
 *   3. a walk of the document beside the schema checks numbers strictly (libcyaml 1.3
 *      reads "5x" as 5 and "010" as 8) and records which keys the text wrote;
 *   4. `--set key.path=value` overrides are applied by walking the schema (key names,
 *      value types, data offsets), then the defaults of every key the text and the
 *      overrides left out, through the same path. libcyaml 1.3 has no default values
 *      for optional fields and zeroes them, which is why pass 3 records presence: an
 *      explicit `momentum: 0` stays 0. Last come the defaults that copy another key's
 *      final value (min_nodes and max_nodes take nodes, after any `--set nodes=`);
 *   5. floats are rounded to the six significant digits libcyaml writes them with (%g),
 *      so a dumped spec parses back to an equal one; then the values are validated.
 */
#include "common/jobspec.h"

#include <cyaml/cyaml.h>
#include <errno.h>
#include <float.h>
#include <inttypes.h>
#include <math.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <yaml.h>

#include "common/settings.h"

#define SPEC_MAX_BYTES (1u << 20) /* DROVER_MAX_SPEC_BYTES cannot raise the limit past this */
#define SPEC_MAX_DEPTH 16         /* collections open at once; a spec needs 4 */
#define SPEC_MAX_FLOW 256         /* '[' and '{' in a whole spec, quoted or not; it needs a few */
#define SPEC_PATH_MAX 128         /* longest dotted key path ("data.synthetic.train_samples") */
#define SPEC_SET_MAX_ENTRIES 64   /* most entries a `--set` list may carry */

// --- Before libyaml: a linear pre-scan ---------------------------------------------------
/*
 * libyaml's scanner costs the product of a text's tokens and its flow nesting: with every
 * '[' it keeps one more possible simple key, and checks them all at each token, so 100000
 * nested '[' (200 KB) took it over a minute. Nothing of libyaml's or libcyaml's runs on a
 * text until this pass has bounded, in one walk over the bytes:
 *   - valid UTF-8, so that what is stored and echoed can be read by every client;
 *   - nesting: collections open at once, block ones (indentation, and the compact "- - x"
 *     form, each indicator a level) and flow ones ('[' and '{' outside quotes and
 *     comments) together, at most SPEC_MAX_DEPTH;
 *   - every '[' and '{' of the text, wherever it is, at most SPEC_MAX_FLOW. This one needs
 *     no YAML and so cannot be misled by text this pass takes for a quoted scalar when
 *     libyaml does not: whatever the walk above believes, libyaml's flow nesting, and
 *     with it its cost, stay below SPEC_MAX_FLOW.
 * The walk follows YAML only as far as it needs to: quoted scalars start where a node
 * does, comments after a blank, flow collections end with ']' and '}'. Where it guesses
 * wrong, it counts more levels than libyaml would, never fewer, except after a false quote,
 * which the count of '[' and '{' covers.
 */

/* A setting that can only lower a fixed cap: 0 (no limit) and anything above give it. */
static int64_t spec_capped(drv_setting_t id, int64_t cap) {
  int64_t v = drv_setting(id);
  return v > 0 && v < cap ? v : cap;
}

static size_t spec_max_bytes(void) {
  return (size_t)spec_capped(DRV_SET_MAX_SPEC_BYTES, SPEC_MAX_BYTES);
}

typedef struct {
  const char *p;
  size_t n, i;
  size_t line;                       /* 1-based, of p[i] */
  uint32_t cols[SPEC_MAX_DEPTH + 1]; /* columns of the block collections open, increasing */
  int ncols;
  int flow;           /* flow collections open */
  uint32_t braces;    /* '[' and '{' seen */
  size_t braces_line; /* where the one over SPEC_MAX_FLOW was */
  const char *origin;
} spec_scan_t;

static drv_result_t spec_scan_deep(const spec_scan_t *sc) {
  return drv_error(DRV_ERR_INVALID,
                   "%s:%zu: nesting deeper than %d levels (block and flow collections "
                   "together), more than a job spec may have",
                   sc->origin, sc->line, SPEC_MAX_DEPTH);
}

/* A block collection opens at column col (when deeper than the innermost open one). */
static drv_result_t spec_scan_block(spec_scan_t *sc, uint32_t col) {
  if (sc->ncols && sc->cols[sc->ncols - 1] >= col) return DRV_OK;
  if (sc->ncols + sc->flow >= SPEC_MAX_DEPTH) return spec_scan_deep(sc);
  sc->cols[sc->ncols++] = col;
  return DRV_OK;
}

/* Counts a '[' or '{', wherever it is. */
static void spec_scan_brace(spec_scan_t *sc) {
  if (++sc->braces == SPEC_MAX_FLOW + 1) sc->braces_line = sc->line;
}

/* Skips a quoted scalar starting at p[i] (the quote), lines included. */
static void spec_scan_quoted(spec_scan_t *sc) {
  char q = sc->p[sc->i++];
  while (sc->i < sc->n) {
    char c = sc->p[sc->i++];
    if (c == '\n') sc->line++;
    if (c == '[' || c == '{') spec_scan_brace(sc);
    if (q == '"' && c == '\\' && sc->i < sc->n) {
      if (sc->p[sc->i] == '\n') sc->line++;
      sc->i++;
    } else if (c == q) {
      if (q == '\'' && sc->i < sc->n && sc->p[sc->i] == '\'') {
        sc->i++; /* '' inside single quotes */
        continue;
      }
      return;
    }
  }
}

static int spec_scan_blank(char c) {
  return c == ' ' || c == '\t' || c == '\n' || c == '\r';
}

/* At the start of a line in block context: its indentation closes the collections
 * deeper than it; then each indicator "- ", "? ", ": " opens one at the column after it. */
static drv_result_t spec_scan_line(spec_scan_t *sc) {
  uint32_t col = 0;
  while (sc->i < sc->n && (sc->p[sc->i] == ' ' || sc->p[sc->i] == '\t')) sc->i++, col++;
  if (sc->i >= sc->n || sc->p[sc->i] == '\n' || sc->p[sc->i] == '\r' || sc->p[sc->i] == '#')
    return DRV_OK; /* blank or comment lines say nothing about nesting */
  while (sc->ncols && sc->cols[sc->ncols - 1] > col) sc->ncols--;
  DRV_CHECK(spec_scan_block(sc, col));
  /* A document marker: a node may follow it on its line. */
  if (col == 0 && sc->n - sc->i >= 3 &&
      (!memcmp(sc->p + sc->i, "---", 3) || !memcmp(sc->p + sc->i, "...", 3)) &&
      (sc->i + 3 == sc->n || spec_scan_blank(sc->p[sc->i + 3]))) {
    sc->i += 3;
    return DRV_OK;
  }
  for (;;) {
    char c = sc->p[sc->i];
    if (!(c == '-' || c == '?' || c == ':') || sc->i + 1 >= sc->n ||
        !spec_scan_blank(sc->p[sc->i + 1]))
      return DRV_OK;
    sc->i++, col++;
    while (sc->i < sc->n && (sc->p[sc->i] == ' ' || sc->p[sc->i] == '\t')) sc->i++, col++;
    if (sc->i >= sc->n || sc->p[sc->i] == '\n' || sc->p[sc->i] == '\r') return DRV_OK;
    DRV_CHECK(spec_scan_block(sc, col));
  }
}

/* Where the walk is within a line: whether a node may start at p[i] (after indentation,
 * an indicator, or in a flow collection a bracket, ',' or ':'), whether it is inside a
 * plain scalar (whose blanks start nothing: "a 'b" is one scalar), and whether the last
 * character was a blank (a '#' after one starts a comment). */
typedef struct {
  int start, plain, blank;
} spec_pos_t;

/* A flow bracket at p[i-1]: counted, and opening a collection where a node may start or
 * inside another one. */
static drv_result_t spec_scan_bracket(spec_scan_t *sc, spec_pos_t *at) {
  spec_scan_brace(sc);
  if (!at->start && !sc->flow) { /* "a[b": part of a plain scalar */
    at->plain = 1;
    at->start = 0;
    return DRV_OK;
  }
  if (sc->ncols + sc->flow >= SPEC_MAX_DEPTH) return spec_scan_deep(sc);
  sc->flow++;
  at->start = 1;
  at->plain = 0;
  return DRV_OK;
}

/* One character at p[i] that is not a line break (a quoted scalar or a comment whole). */
static drv_result_t spec_scan_char(spec_scan_t *sc, spec_pos_t *at) {
  char c = sc->p[sc->i];
  if (spec_scan_blank(c)) {
    sc->i++;
    at->blank = 1;
    if (!at->plain) at->start = 1;
    return DRV_OK;
  }
  if (c == '#' && at->blank) { /* a comment, to the end of the line */
    while (sc->i < sc->n && sc->p[sc->i] != '\n') sc->i++;
    return DRV_OK;
  }
  int was_start = at->start;
  at->blank = at->start = at->plain = 0;
  if ((c == '"' || c == '\'') && was_start) {
    spec_scan_quoted(sc);
    return DRV_OK;
  }
  sc->i++;
  int next_blank = sc->i >= sc->n || spec_scan_blank(sc->p[sc->i]);
  if (c == '[' || c == '{') {
    at->start = was_start;
    return spec_scan_bracket(sc, at);
  }
  if ((c == ']' || c == '}') && sc->flow) {
    sc->flow--;
  } else if ((c == ',' || c == ':') && sc->flow) {
    at->start = 1;
  } else if ((c == ':' || c == '-' || c == '?') && next_blank) {
    at->start = 1; /* an indicator */
  } else {
    at->plain = 1;
  }
  return DRV_OK;
}

/* The pre-scan: size, UTF-8, nesting and the count of '[' and '{' (see above). */
static drv_result_t spec_prescan(const char *yaml, size_t len, const char *origin) {
  size_t max = spec_max_bytes();
  if (len > max)
    return drv_error(DRV_ERR_INVALID,
                     "%s: %zu bytes; a job spec is at most %zu (DROVER_MAX_SPEC_BYTES)", origin,
                     len, max);
  size_t ok = drv_utf8_valid(yaml, len);
  if (ok < len) {
    size_t line = 1;
    for (size_t i = 0; i < ok; i++) line += yaml[i] == '\n';
    return drv_error(DRV_ERR_INVALID, "%s:%zu: not valid UTF-8 (byte %zu of the spec)", origin,
                     line, ok);
  }
  spec_scan_t sc = {.p = yaml, .n = len, .line = 1, .origin = origin};
  spec_pos_t at = {.start = 1, .blank = 1};
  int bol = 1; /* at the beginning of a line */
  while (sc.i < sc.n) {
    if (bol && !sc.flow) DRV_CHECK(spec_scan_line(&sc));
    bol = 0;
    if (sc.i >= sc.n) break;
    if (sc.p[sc.i] == '\n') {
      sc.i++;
      sc.line++;
      bol = 1;
      at = (spec_pos_t){.start = 1, .blank = 1};
      continue;
    }
    DRV_CHECK(spec_scan_char(&sc, &at));
    if (sc.braces > SPEC_MAX_FLOW)
      return drv_error(DRV_ERR_INVALID,
                       "%s:%zu: more than %d '[' and '{' (quoted or not), more than a job "
                       "spec may have",
                       origin, sc.braces_line, SPEC_MAX_FLOW);
  }
  return DRV_OK;
}

// --- Schema --------------------------------------------------------------------------------

/* The nested mappings are anonymous structs in the header; name their types here. */
typedef __typeof__(((jobspec_t *)0)->model) spec_model_map_t;
typedef __typeof__(((jobspec_t *)0)->data) spec_data_map_t;
typedef __typeof__(((jobspec_t *)0)->train) spec_train_map_t;
typedef __typeof__(((jobspec_t *)0)->resources) spec_resources_map_t;
typedef __typeof__(((spec_train_map_t *)0)->optimizer) spec_optim_map_t;
typedef __typeof__(((spec_train_map_t *)0)->lr_schedule) spec_sched_map_t;

static const cyaml_strval_t spec_activation_names[] = {
    {"relu", SPEC_ACT_RELU},
    {"gelu", SPEC_ACT_GELU},
};
static const cyaml_strval_t spec_format_names[] = {
    {"idx", SPEC_DATA_IDX},
    {"synthetic", SPEC_DATA_SYNTHETIC},
};
static const cyaml_strval_t spec_optimizer_names[] = {
    {"sgd", SPEC_OPT_SGD},
    {"adamw", SPEC_OPT_ADAMW},
};
static const cyaml_strval_t spec_backend_names[] = {
    {"auto", SPEC_BACKEND_AUTO},
    {"cpu", SPEC_BACKEND_CPU},
    {"cuda", SPEC_BACKEND_CUDA},
};
static const cyaml_strval_t spec_precision_names[] = {
    {"fp32", SPEC_PREC_FP32},
    {"tf32", SPEC_PREC_TF32},
    {"bf16", SPEC_PREC_BF16},
};
static const cyaml_strval_t spec_dtype_names[] = {
    {"fp32", SPEC_DTYPE_FP32},
    {"bf16", SPEC_DTYPE_BF16},
};
static const cyaml_strval_t spec_switch_names[] = {
    {"auto", SPEC_AUTO},
    {"on", SPEC_ON},
    {"off", SPEC_OFF},
};
static const cyaml_strval_t spec_schedule_names[] = {
    {"constant", SPEC_LR_CONSTANT},
    {"cosine", SPEC_LR_COSINE},
};

#define SPEC_OPT CYAML_FLAG_OPTIONAL
#define SPEC_ENUM_REQ CYAML_FLAG_STRICT
#define SPEC_ENUM_OPT (CYAML_FLAG_OPTIONAL | CYAML_FLAG_STRICT)
#define SPEC_STR_REQ CYAML_FLAG_POINTER
#define SPEC_STR_OPT (CYAML_FLAG_OPTIONAL | CYAML_FLAG_POINTER)

static const cyaml_schema_field_t spec_split_fields[] = {
    CYAML_FIELD_STRING_PTR("images", SPEC_STR_REQ, spec_split_t, images, 1, CYAML_UNLIMITED),
    CYAML_FIELD_STRING_PTR("labels", SPEC_STR_REQ, spec_split_t, labels, 1, CYAML_UNLIMITED),
    CYAML_FIELD_END,
};

static const cyaml_schema_field_t spec_synthetic_fields[] = {
    CYAML_FIELD_UINT("train_samples", SPEC_OPT, spec_synthetic_t, train_samples),
    CYAML_FIELD_UINT("test_samples", SPEC_OPT, spec_synthetic_t, test_samples),
    CYAML_FIELD_UINT("features", SPEC_OPT, spec_synthetic_t, features),
    CYAML_FIELD_UINT("classes", SPEC_OPT, spec_synthetic_t, classes),
    CYAML_FIELD_UINT("seed", SPEC_OPT, spec_synthetic_t, seed),
    CYAML_FIELD_END,
};

static const cyaml_schema_value_t spec_hidden_entry = {
    CYAML_VALUE_UINT(CYAML_FLAG_DEFAULT, uint32_t),
};

static const cyaml_schema_field_t spec_model_fields[] = {
    CYAML_FIELD_STRING_PTR("type", SPEC_STR_REQ, spec_model_map_t, type, 1, CYAML_UNLIMITED),
    CYAML_FIELD_SEQUENCE_COUNT("hidden", CYAML_FLAG_OPTIONAL | CYAML_FLAG_POINTER | CYAML_FLAG_FLOW,
                               spec_model_map_t, hidden, hidden_count, &spec_hidden_entry, 0,
                               JOBSPEC_MAX_HIDDEN),
    CYAML_FIELD_ENUM("activation", SPEC_ENUM_OPT, spec_model_map_t, activation,
                     spec_activation_names, CYAML_ARRAY_LEN(spec_activation_names)),
    CYAML_FIELD_END,
};

static const cyaml_schema_field_t spec_data_fields[] = {
    CYAML_FIELD_ENUM("format", SPEC_ENUM_REQ, spec_data_map_t, format, spec_format_names,
                     CYAML_ARRAY_LEN(spec_format_names)),
    CYAML_FIELD_MAPPING_PTR("train", CYAML_FLAG_OPTIONAL, spec_data_map_t, train,
                            spec_split_fields),
    CYAML_FIELD_MAPPING_PTR("test", CYAML_FLAG_OPTIONAL, spec_data_map_t, test, spec_split_fields),
    CYAML_FIELD_MAPPING_PTR("synthetic", CYAML_FLAG_OPTIONAL, spec_data_map_t, synthetic,
                            spec_synthetic_fields),
    CYAML_FIELD_END,
};

static const cyaml_schema_field_t spec_optim_fields[] = {
    CYAML_FIELD_ENUM("type", SPEC_ENUM_REQ, spec_optim_map_t, type, spec_optimizer_names,
                     CYAML_ARRAY_LEN(spec_optimizer_names)),
    CYAML_FIELD_FLOAT("lr", CYAML_FLAG_DEFAULT, spec_optim_map_t, lr),
    CYAML_FIELD_FLOAT("momentum", SPEC_OPT, spec_optim_map_t, momentum),
    CYAML_FIELD_FLOAT("weight_decay", SPEC_OPT, spec_optim_map_t, weight_decay),
    CYAML_FIELD_FLOAT("beta1", SPEC_OPT, spec_optim_map_t, beta1),
    CYAML_FIELD_FLOAT("beta2", SPEC_OPT, spec_optim_map_t, beta2),
    CYAML_FIELD_FLOAT("eps", SPEC_OPT, spec_optim_map_t, eps),
    CYAML_FIELD_END,
};

static const cyaml_schema_field_t spec_sched_fields[] = {
    CYAML_FIELD_ENUM("type", SPEC_ENUM_OPT, spec_sched_map_t, type, spec_schedule_names,
                     CYAML_ARRAY_LEN(spec_schedule_names)),
    CYAML_FIELD_UINT("warmup_steps", SPEC_OPT, spec_sched_map_t, warmup_steps),
    CYAML_FIELD_FLOAT("lr_min", SPEC_OPT, spec_sched_map_t, lr_min),
    CYAML_FIELD_END,
};

static const cyaml_schema_field_t spec_train_fields[] = {
    CYAML_FIELD_UINT("epochs", CYAML_FLAG_DEFAULT, spec_train_map_t, epochs),
    CYAML_FIELD_UINT("global_batch", CYAML_FLAG_DEFAULT, spec_train_map_t, global_batch),
    CYAML_FIELD_UINT("max_steps", SPEC_OPT, spec_train_map_t, max_steps),
    CYAML_FIELD_UINT("seed", SPEC_OPT, spec_train_map_t, seed),
    CYAML_FIELD_UINT("commit_every", SPEC_OPT, spec_train_map_t, commit_every),
    CYAML_FIELD_UINT("checkpoint_every", SPEC_OPT, spec_train_map_t, checkpoint_every),
    CYAML_FIELD_UINT("keep_checkpoints", SPEC_OPT, spec_train_map_t, keep_checkpoints),
    CYAML_FIELD_ENUM("backend", SPEC_ENUM_OPT, spec_train_map_t, backend, spec_backend_names,
                     CYAML_ARRAY_LEN(spec_backend_names)),
    CYAML_FIELD_ENUM("precision", SPEC_ENUM_OPT, spec_train_map_t, precision, spec_precision_names,
                     CYAML_ARRAY_LEN(spec_precision_names)),
    CYAML_FIELD_ENUM("allreduce_dtype", SPEC_ENUM_OPT, spec_train_map_t, allreduce_dtype,
                     spec_dtype_names, CYAML_ARRAY_LEN(spec_dtype_names)),
    CYAML_FIELD_UINT("allreduce_bucket_mb", SPEC_OPT, spec_train_map_t, allreduce_bucket_mb),
    CYAML_FIELD_ENUM("cuda_graphs", SPEC_ENUM_OPT, spec_train_map_t, cuda_graphs, spec_switch_names,
                     CYAML_ARRAY_LEN(spec_switch_names)),
    CYAML_FIELD_MAPPING("optimizer", CYAML_FLAG_DEFAULT, spec_train_map_t, optimizer,
                        spec_optim_fields),
    CYAML_FIELD_MAPPING("lr_schedule", SPEC_OPT, spec_train_map_t, lr_schedule, spec_sched_fields),
    CYAML_FIELD_END,
};

static const cyaml_schema_field_t spec_resources_fields[] = {
    CYAML_FIELD_UINT("cpus_per_worker", SPEC_OPT, spec_resources_map_t, cpus_per_worker),
    CYAML_FIELD_UINT("memory_mb", SPEC_OPT, spec_resources_map_t, memory_mb),
    CYAML_FIELD_UINT("gpus_per_worker", SPEC_OPT, spec_resources_map_t, gpus_per_worker),
    CYAML_FIELD_END,
};

static const cyaml_schema_value_t spec_word_entry = {
    CYAML_VALUE_STRING(CYAML_FLAG_POINTER, char, 0, CYAML_UNLIMITED),
};

static const cyaml_schema_field_t spec_fields[] = {
    CYAML_FIELD_STRING_PTR("name", SPEC_STR_REQ, jobspec_t, name, 1, CYAML_UNLIMITED),
    CYAML_FIELD_STRING_PTR("target", SPEC_STR_OPT, jobspec_t, target, 1, CYAML_UNLIMITED),
    CYAML_FIELD_UINT("nodes", SPEC_OPT, jobspec_t, nodes),
    CYAML_FIELD_UINT("min_nodes", SPEC_OPT, jobspec_t, min_nodes),
    CYAML_FIELD_UINT("max_nodes", SPEC_OPT, jobspec_t, max_nodes),
    CYAML_FIELD_UINT("workers_per_node", SPEC_OPT, jobspec_t, workers_per_node),
    CYAML_FIELD_UINT("max_restarts", SPEC_OPT, jobspec_t, max_restarts),
    CYAML_FIELD_UINT("rejoin_timeout", SPEC_OPT, jobspec_t, rejoin_timeout_s),
    CYAML_FIELD_INT("priority", SPEC_OPT, jobspec_t, priority),
    CYAML_FIELD_UINT("max_runtime", SPEC_OPT, jobspec_t, max_runtime_s),
    CYAML_FIELD_MAPPING("resources", SPEC_OPT, jobspec_t, resources, spec_resources_fields),
    CYAML_FIELD_MAPPING("model", SPEC_OPT, jobspec_t, model, spec_model_fields),
    CYAML_FIELD_MAPPING("data", SPEC_OPT, jobspec_t, data, spec_data_fields),
    CYAML_FIELD_MAPPING("train", SPEC_OPT, jobspec_t, train, spec_train_fields),
    CYAML_FIELD_SEQUENCE("command", SPEC_STR_OPT | CYAML_FLAG_FLOW, jobspec_t, command,
                         &spec_word_entry, 1, JOBSPEC_MAX_WORDS),
    CYAML_FIELD_STRING_PTR("workdir", SPEC_STR_OPT, jobspec_t, workdir, 1, CYAML_UNLIMITED),
    CYAML_FIELD_SEQUENCE("env", SPEC_STR_OPT | CYAML_FLAG_FLOW, jobspec_t, env, &spec_word_entry,
                         0, JOBSPEC_MAX_WORDS),
    CYAML_FIELD_UINT("hang_timeout", SPEC_OPT, jobspec_t, hang_timeout_s),
    CYAML_FIELD_STRING_PTR("run_dir", SPEC_STR_OPT, jobspec_t, run_dir, 1, CYAML_UNLIMITED),
    CYAML_FIELD_END,
};

static const cyaml_schema_value_t spec_schema = {
    CYAML_VALUE_MAPPING(CYAML_FLAG_POINTER, jobspec_t, spec_fields),
};

/* The schema a command job is written with: the same, without model, data and train. */
static const cyaml_schema_value_t *spec_command_schema(void) {
  static cyaml_schema_field_t fields[DRV_ARRAY_LEN(spec_fields)];
  static cyaml_schema_value_t schema;
  if (!schema.type) {
    size_t n = 0;
    for (const cyaml_schema_field_t *f = spec_fields; f->key; f++)
      if (strcmp(f->key, "model") && strcmp(f->key, "data") && strcmp(f->key, "train"))
        fields[n++] = *f;
    fields[n] = (cyaml_schema_field_t)CYAML_FIELD_END;
    schema = (cyaml_schema_value_t){
        CYAML_VALUE_MAPPING(CYAML_FLAG_POINTER, jobspec_t, fields),
    };
  }
  return &schema;
}

/* The defaults of the header's comment, as the text a `--set` would give. Applied to every
 * key that neither the YAML nor an override wrote. Keys whose default is zero are listed
 * too, so this table reads as the whole list; spec_defaults_from follows it. */
static const struct {
  const char *path, *value;
} spec_defaults[] = {
    {"target", "local"},
    {"nodes", "1"},
    {"workers_per_node", "0"},
    {"max_restarts", "3"},
    {"rejoin_timeout", "60"},
    {"priority", "0"},
    {"max_runtime", "0"},
    {"resources.cpus_per_worker", "0"},
    {"resources.memory_mb", "0"},
    {"resources.gpus_per_worker", "0"},
    {"model.activation", "relu"},
    {"data.synthetic.train_samples", "60000"},
    {"data.synthetic.test_samples", "10000"},
    {"data.synthetic.features", "784"},
    {"data.synthetic.classes", "10"},
    {"data.synthetic.seed", "1"},
    {"train.max_steps", "0"},
    {"train.seed", "42"},
    {"train.commit_every", "50"},
    {"train.checkpoint_every", "0"},
    {"train.keep_checkpoints", "3"},
    {"train.backend", "auto"},
    {"train.precision", "fp32"},
    {"train.allreduce_dtype", "fp32"},
    {"train.allreduce_bucket_mb", "25"},
    {"train.cuda_graphs", "auto"},
    {"train.optimizer.momentum", "0.9"},
    {"train.optimizer.weight_decay", "0"},
    {"train.optimizer.beta1", "0.9"},
    {"train.optimizer.beta2", "0.999"},
    {"train.optimizer.eps", "1e-8"},
    {"train.lr_schedule.type", "cosine"},
    {"train.lr_schedule.warmup_steps", "0"},
    {"train.lr_schedule.lr_min", "0"},
    {"run_dir", "runs"},
};

/* Defaults that take another key's final value (after overrides and spec_defaults), for
 * keys that neither the YAML nor an override wrote: `--set nodes=4` moves both bounds. */
static const struct {
  const char *path, *from;
} spec_defaults_from[] = {
    {"min_nodes", "nodes"},
    {"max_nodes", "nodes"},
};

// --- libcyaml configuration and its captured log ------------------------------------------

typedef jobspec_cyaml_log_t spec_log_t;

static void spec_log_fn(cyaml_log_t level, void *ctx, const char *fmt, va_list args) {
  spec_log_t *log = ctx;
  if (level < CYAML_LOG_ERROR || log->len >= sizeof log->text - 1) return;
  int n = vsnprintf(log->text + log->len, sizeof log->text - log->len, fmt, args);
  if (n > 0) log->len = DRV_MIN(log->len + (size_t)n, sizeof log->text - 1);
}

cyaml_config_t jobspec_cyaml_config(jobspec_cyaml_log_t *log) {
  return (cyaml_config_t){
      .log_fn = spec_log_fn,
      .log_ctx = log,
      .mem_fn = cyaml_mem,
      .log_level = CYAML_LOG_ERROR,
      /* Aliases are refused: a spec has no use for them and they allow expansion bombs. */
      .flags = CYAML_CFG_STYLE_BLOCK | CYAML_CFG_NO_ALIAS,
  };
}

/* Allocations that end up inside a spec go through libcyaml's allocator, so that
 * cyaml_free releases them with the rest. */
static void *spec_mem(void *ptr, size_t size) {
  return cyaml_mem(NULL, ptr, size);
}

static char *spec_strdup(const char *s) {
  size_t n = strlen(s) + 1;
  char *d = spec_mem(NULL, n);
  if (d) memcpy(d, s, n);
  return d;
}

// --- Walking the schema --------------------------------------------------------------------

static const cyaml_schema_field_t *spec_field_find(const cyaml_schema_field_t *fields,
                                                   const char *key, size_t n) {
  for (; fields->key; fields++)
    if (strlen(fields->key) == n && memcmp(fields->key, key, n) == 0) return fields;
  return NULL;
}

/* "a, b, c": the keys a mapping takes, for error messages. */
static void spec_keys_list(const cyaml_schema_field_t *fields, char *buf, size_t cap) {
  size_t len = 0;
  buf[0] = '\0';
  for (; fields->key && len < cap; fields++) {
    int n = snprintf(buf + len, cap - len, "%s%s", len ? ", " : "", fields->key);
    if (n < 0) break;
    len += (size_t)n;
  }
}

static void *spec_ptr_get(const uint8_t *at) {
  void *p;
  memcpy(&p, at, sizeof p);
  return p;
}

static void spec_ptr_set(uint8_t *at, void *p) {
  memcpy(at, &p, sizeof p);
}

/* A key path resolved against the schema: its field and the struct holding it. */
typedef struct {
  const cyaml_schema_field_t *field;
  uint8_t *base; /* the mapping's struct; NULL when resolving the schema alone */
} spec_slot_t;

/* Resolves a dotted key path ("train.optimizer.lr"). With `spec` NULL only the schema is
 * walked. With `create`, optional mappings held by pointer are allocated (zeroed) on the
 * way when absent; without it, an absent one leaves slot->base NULL. */
static drv_result_t spec_resolve(jobspec_t *spec, const char *path, bool create,
                                 spec_slot_t *slot) {
  const cyaml_schema_field_t *fields = spec_fields;
  uint8_t *base = (uint8_t *)spec;
  const char *p = path;
  for (;;) {
    const char *dot = strchr(p, '.');
    size_t n = dot ? (size_t)(dot - p) : strlen(p);
    const cyaml_schema_field_t *f = spec_field_find(fields, p, n);
    if (!f) {
      char keys[256];
      spec_keys_list(fields, keys, sizeof keys);
      if (p == path)
        return drv_error(DRV_ERR_INVALID, "unknown key '%.*s' (keys: %s)", (int)n, p, keys);
      return drv_error(DRV_ERR_INVALID, "unknown key '%.*s' in '%.*s' (keys: %s)", (int)n, p,
                       (int)(p - path - 1), path, keys);
    }
    if (!dot) {
      slot->field = f;
      slot->base = base;
      return DRV_OK;
    }
    if (f->value.type != CYAML_MAPPING)
      return drv_error(DRV_ERR_INVALID, "'%.*s' is not a mapping", (int)(dot - path), path);
    if (base) {
      base += f->data_offset;
      if (f->value.flags & CYAML_FLAG_POINTER) {
        uint8_t *child = spec_ptr_get(base);
        if (!child && create) {
          child = spec_mem(NULL, f->value.data_size);
          if (!child) return drv_error(DRV_ERR_NOMEM, "'%.*s': out of memory", (int)n, p);
          memset(child, 0, f->value.data_size);
          spec_ptr_set(base, child);
        }
        base = child;
      }
    }
    fields = f->value.mapping.fields;
    p = dot + 1;
  }
}

/* What a value of this schema looks like in YAML ("an unsigned integer"). */
static void spec_describe(const cyaml_schema_value_t *v, char *buf, size_t cap) {
  switch (v->type) {
  case CYAML_INT: snprintf(buf, cap, "an integer"); break;
  case CYAML_UINT: snprintf(buf, cap, "an unsigned integer"); break;
  case CYAML_FLOAT: snprintf(buf, cap, "a number"); break;
  case CYAML_BOOL: snprintf(buf, cap, "true or false"); break;
  case CYAML_STRING: snprintf(buf, cap, "a string"); break;
  case CYAML_MAPPING: snprintf(buf, cap, "a mapping"); break;
  case CYAML_ENUM: {
    size_t len = (size_t)snprintf(buf, cap, "one of");
    for (uint32_t i = 0; i < v->enumeration.count && len < cap; i++)
      len += (size_t)snprintf(buf + len, cap - len, "%s %s", i ? "," : "",
                              v->enumeration.strings[i].str);
    break;
  }
  case CYAML_SEQUENCE:
  case CYAML_SEQUENCE_FIXED: {
    char entry[96];
    spec_describe(v->sequence.entry, entry, sizeof entry);
    snprintf(buf, cap, "a list, each entry %s", entry);
    break;
  }
  default: snprintf(buf, cap, "a value"); break;
  }
}

// --- Scalars: strict parsing, shared by the document check and `--set` --------------------

/* "0" or a decimal without leading zeros (libcyaml would read "010" as octal 8). */
static bool spec_is_decimal(const char *s, bool allow_minus) {
  if (allow_minus && *s == '-') s++;
  if (!*s || (s[0] == '0' && s[1])) return false;
  for (; *s; s++)
    if (*s < '0' || *s > '9') return false;
  return true;
}

static drv_result_t spec_parse_uint(const char *text, uint32_t size, uint64_t *out) {
  if (!spec_is_decimal(text, false))
    return drv_error(DRV_ERR_INVALID, "expected an unsigned integer, got '%s'", text);
  uint64_t max = size >= 8 ? UINT64_MAX : (UINT64_C(1) << (size * 8)) - 1;
  errno = 0;
  unsigned long long u = strtoull(text, NULL, 10);
  if (errno == ERANGE || u > max)
    return drv_error(DRV_ERR_INVALID, "%s is out of range (at most %" PRIu64 ")", text, max);
  *out = u;
  return DRV_OK;
}

static drv_result_t spec_parse_int(const char *text, uint32_t size, int64_t *out) {
  if (!spec_is_decimal(text, true))
    return drv_error(DRV_ERR_INVALID, "expected an integer, got '%s'", text);
  int64_t max = size >= 8 ? INT64_MAX : (INT64_C(1) << (size * 8 - 1)) - 1;
  errno = 0;
  long long i = strtoll(text, NULL, 10);
  if (errno == ERANGE || i > max || i < -max - 1)
    return drv_error(DRV_ERR_INVALID, "%s is out of range", text);
  *out = i;
  return DRV_OK;
}

/* Parses as libcyaml does (strtof for float, strtod for double) but whole-text and finite. */
static drv_result_t spec_parse_float(const char *text, uint32_t size, double *out) {
  char *end = NULL;
  double d;
  errno = 0;
  if (size == sizeof(float))
    d = strtof(text, &end);
  else
    d = strtod(text, &end);
  if (end == text || *end || (*text == ' ' || *text == '\t'))
    return drv_error(DRV_ERR_INVALID, "expected a number, got '%s'", text);
  if (errno == ERANGE || !isfinite(d))
    return drv_error(DRV_ERR_INVALID, "expected a finite number in range, got '%s'", text);
  *out = d;
  return DRV_OK;
}

static void spec_store_uint(uint8_t *at, uint32_t size, uint64_t u) {
  switch (size) {
  case 1: {
    uint8_t x = (uint8_t)u;
    memcpy(at, &x, 1);
    break;
  }
  case 2: {
    uint16_t x = (uint16_t)u;
    memcpy(at, &x, 2);
    break;
  }
  case 4: {
    uint32_t x = (uint32_t)u;
    memcpy(at, &x, 4);
    break;
  }
  default: memcpy(at, &u, 8); break;
  }
}

static void spec_store_int(uint8_t *at, uint32_t size, int64_t i) {
  switch (size) {
  case 1: {
    int8_t x = (int8_t)i;
    memcpy(at, &x, 1);
    break;
  }
  case 2: {
    int16_t x = (int16_t)i;
    memcpy(at, &x, 2);
    break;
  }
  case 4: {
    int32_t x = (int32_t)i;
    memcpy(at, &x, 4);
    break;
  }
  default: memcpy(at, &i, 8); break;
  }
}

static void spec_store_float(uint8_t *at, uint32_t size, double d) {
  if (size == sizeof(float)) {
    float f = (float)d;
    memcpy(at, &f, sizeof f);
  } else {
    memcpy(at, &d, sizeof d);
  }
}

/* Parses `text` as a scalar of schema `v`; stores it at `at` unless `at` is NULL (check
 * only). Strings held by pointer replace (and free) the old one. */
static drv_result_t spec_scalar(const cyaml_schema_value_t *v, const char *text, uint8_t *at) {
  switch (v->type) {
  case CYAML_UINT: {
    uint64_t u = 0;
    DRV_CHECK(spec_parse_uint(text, v->data_size, &u));
    if (at) spec_store_uint(at, v->data_size, u);
    return DRV_OK;
  }
  case CYAML_INT: {
    int64_t i = 0;
    DRV_CHECK(spec_parse_int(text, v->data_size, &i));
    if (at) spec_store_int(at, v->data_size, i);
    return DRV_OK;
  }
  case CYAML_FLOAT: {
    double d = 0;
    DRV_CHECK(spec_parse_float(text, v->data_size, &d));
    if (at) spec_store_float(at, v->data_size, d);
    return DRV_OK;
  }
  case CYAML_BOOL: {
    bool b;
    if (!strcmp(text, "true"))
      b = true;
    else if (!strcmp(text, "false"))
      b = false;
    else
      return drv_error(DRV_ERR_INVALID, "expected true or false, got '%s'", text);
    if (at) spec_store_uint(at, v->data_size, b);
    return DRV_OK;
  }
  case CYAML_ENUM: {
    for (uint32_t i = 0; i < v->enumeration.count; i++) {
      if (!strcmp(text, v->enumeration.strings[i].str)) {
        if (at) spec_store_int(at, v->data_size, v->enumeration.strings[i].val);
        return DRV_OK;
      }
    }
    char want[160];
    spec_describe(v, want, sizeof want);
    return drv_error(DRV_ERR_INVALID, "expected %s, got '%s'", want, text);
  }
  case CYAML_STRING: {
    size_t n = strlen(text);
    if (n < v->string.min) return drv_error(DRV_ERR_INVALID, "must not be empty");
    if (n > v->string.max)
      return drv_error(DRV_ERR_INVALID, "too long (at most %u bytes)", v->string.max);
    if (!at) return DRV_OK;
    if (!(v->flags & CYAML_FLAG_POINTER)) {
      memcpy(at, text, n + 1);
      return DRV_OK;
    }
    char *dup = spec_strdup(text);
    if (!dup) return drv_error(DRV_ERR_NOMEM, "out of memory");
    spec_mem(spec_ptr_get(at), 0);
    spec_ptr_set(at, dup);
    return DRV_OK;
  }
  default: {
    char want[160];
    spec_describe(v, want, sizeof want);
    return drv_error(DRV_ERR_INVALID, "takes %s and cannot be set from text", want);
  }
  }
}

static char *spec_trim(char *s) {
  while (*s == ' ' || *s == '\t') s++;
  size_t n = strlen(s);
  while (n && (s[n - 1] == ' ' || s[n - 1] == '\t')) s[--n] = '\0';
  return s;
}

/* Replaces a sequence field's entries with the list in `text`: "[512,256]", "512, 256" or
 * "[]" (empty). Entries must be scalars. */
static drv_result_t spec_set_sequence(const cyaml_schema_field_t *f, uint8_t *base,
                                      const char *text) {
  const cyaml_schema_value_t *entry = f->value.sequence.entry;
  drv_result_t rc = DRV_OK;
  uint8_t *items = NULL;
  char *copy = strdup(text);
  if (!copy) return drv_error(DRV_ERR_NOMEM, "out of memory");
  char *s = spec_trim(copy);
  size_t n = strlen(s);
  if (n && s[0] == '[') {
    if (s[n - 1] != ']') {
      rc = drv_error(DRV_ERR_INVALID, "unbalanced '[' in '%s'", text);
      goto fail;
    }
    s[n - 1] = '\0';
    s = spec_trim(s + 1);
  }
  if (entry->type == CYAML_MAPPING || entry->type == CYAML_SEQUENCE ||
      entry->type == CYAML_SEQUENCE_FIXED || (entry->flags & CYAML_FLAG_POINTER)) {
    rc = drv_error(DRV_ERR_INVALID, "a list of this kind cannot be set from text");
    goto fail;
  }
  uint32_t count = 0;
  items = spec_mem(NULL, (size_t)entry->data_size * SPEC_SET_MAX_ENTRIES);
  if (!items) {
    rc = drv_error(DRV_ERR_NOMEM, "out of memory");
    goto fail;
  }
  for (char *item = s; *s;) { /* an empty text is an empty list */
    char *comma = strchr(item, ',');
    if (comma) *comma = '\0';
    if (count == SPEC_SET_MAX_ENTRIES || count == f->value.sequence.max) {
      rc = drv_error(DRV_ERR_INVALID, "too many entries (at most %u)",
                     DRV_MIN(f->value.sequence.max, (uint32_t)SPEC_SET_MAX_ENTRIES));
      goto fail;
    }
    DRV_CHECK_GOTO(spec_scalar(entry, spec_trim(item), items + (size_t)count * entry->data_size),
                   rc, fail);
    count++;
    if (!comma) break;
    item = comma + 1;
  }
  if (count < f->value.sequence.min) {
    rc = drv_error(DRV_ERR_INVALID, "too few entries (at least %u)", f->value.sequence.min);
    goto fail;
  }
  if (count == 0) {
    spec_mem(items, 0);
    items = NULL;
  }
  spec_mem(spec_ptr_get(base + f->data_offset), 0);
  spec_ptr_set(base + f->data_offset, items);
  spec_store_uint(base + f->count_offset, f->count_size, count);
  items = NULL;
fail:
  spec_mem(items, 0);
  free(copy);
  return rc;
}

/* Sets the key at dotted `path` from `text`, creating optional mappings on the way. */
static drv_result_t spec_set_path(jobspec_t *spec, const char *path, const char *text) {
  spec_slot_t slot;
  DRV_CHECK(spec_resolve(spec, path, true, &slot));
  const cyaml_schema_field_t *f = slot.field;
  if (f->value.type == CYAML_MAPPING) {
    char keys[256];
    spec_keys_list(f->value.mapping.fields, keys, sizeof keys);
    return drv_error(DRV_ERR_INVALID, "'%s' is a mapping; set one of its keys (%s)", path, keys);
  }
  if (f->value.type == CYAML_SEQUENCE) return spec_set_sequence(f, slot.base, text);
  return spec_scalar(&f->value, text, slot.base + f->data_offset);
}

// --- Which keys were written ---------------------------------------------------------------

typedef struct {
  char (*paths)[SPEC_PATH_MAX];
  int n, cap;
} spec_seen_t;

static drv_result_t spec_seen_add(spec_seen_t *seen, const char *path) {
  if (seen->n == seen->cap) {
    int cap = seen->cap ? seen->cap * 2 : 32;
    void *p = realloc(seen->paths, (size_t)cap * sizeof *seen->paths);
    if (!p) return drv_error(DRV_ERR_NOMEM, "out of memory");
    seen->paths = p;
    seen->cap = cap;
  }
  snprintf(seen->paths[seen->n++], SPEC_PATH_MAX, "%s", path);
  return DRV_OK;
}

static bool spec_seen_has(const spec_seen_t *seen, const char *path) {
  for (int i = 0; i < seen->n; i++)
    if (!strcmp(seen->paths[i], path)) return true;
  return false;
}

/* Walks a mapping node of the document beside its schema (both already known to agree,
 * libcyaml having loaded it): records each key's path and checks numbers strictly. */
static drv_result_t spec_walk_doc(yaml_document_t *doc, yaml_node_t *map,
                                  const cyaml_schema_field_t *fields, const char *prefix,
                                  spec_seen_t *seen, const char *origin) {
  for (yaml_node_pair_t *pair = map->data.mapping.pairs.start; pair < map->data.mapping.pairs.top;
       pair++) {
    yaml_node_t *k = yaml_document_get_node(doc, pair->key);
    yaml_node_t *v = yaml_document_get_node(doc, pair->value);
    if (!k || !v || k->type != YAML_SCALAR_NODE) continue;
    const char *key = (const char *)k->data.scalar.value;
    const cyaml_schema_field_t *f = spec_field_find(fields, key, strlen(key));
    if (!f) continue;
    char path[SPEC_PATH_MAX];
    snprintf(path, sizeof path, "%s%s%s", prefix, *prefix ? "." : "", key);
    DRV_CHECK(spec_seen_add(seen, path));
    drv_result_t rc = DRV_OK;
    if (f->value.type == CYAML_MAPPING && v->type == YAML_MAPPING_NODE) {
      DRV_CHECK(spec_walk_doc(doc, v, f->value.mapping.fields, path, seen, origin));
    } else if (f->value.type == CYAML_SEQUENCE && v->type == YAML_SEQUENCE_NODE) {
      const cyaml_schema_value_t *entry = f->value.sequence.entry;
      int i = 0;
      for (yaml_node_item_t *it = v->data.sequence.items.start; it < v->data.sequence.items.top;
           it++, i++) {
        yaml_node_t *e = yaml_document_get_node(doc, *it);
        if (!e || e->type != YAML_SCALAR_NODE) continue;
        if (entry->type == CYAML_UINT || entry->type == CYAML_INT || entry->type == CYAML_FLOAT)
          rc = spec_scalar(entry, (const char *)e->data.scalar.value, NULL);
        if (rc != DRV_OK)
          return drv_error_prefix(rc, "%s:%zu: %s[%d]", origin, e->start_mark.line + 1, path, i);
      }
    } else if (v->type == YAML_SCALAR_NODE &&
               (f->value.type == CYAML_UINT || f->value.type == CYAML_INT ||
                f->value.type == CYAML_FLOAT)) {
      rc = spec_scalar(&f->value, (const char *)v->data.scalar.value, NULL);
      if (rc != DRV_OK)
        return drv_error_prefix(rc, "%s:%zu: %s", origin, v->start_mark.line + 1, path);
    }
  }
  return DRV_OK;
}

// --- Turning libyaml's and libcyaml's complaints into one message --------------------------

static drv_result_t spec_syntax_error(const yaml_parser_t *p, const char *origin) {
  const char *problem = p->problem ? p->problem : "unreadable";
  if (p->error == YAML_MEMORY_ERROR) return drv_error(DRV_ERR_NOMEM, "%s: out of memory", origin);
  if (p->error == YAML_READER_ERROR)
    return drv_error(DRV_ERR_INVALID, "%s: invalid YAML: %s at byte %zu", origin, problem,
                     p->problem_offset);
  if (p->context)
    return drv_error(DRV_ERR_INVALID, "%s:%zu:%zu: invalid YAML: %s (%s at line %zu)", origin,
                     p->problem_mark.line + 1, p->problem_mark.column + 1, problem, p->context,
                     p->context_mark.line + 1);
  return drv_error(DRV_ERR_INVALID, "%s:%zu:%zu: invalid YAML: %s", origin,
                   p->problem_mark.line + 1, p->problem_mark.column + 1, problem);
}

#define SPEC_TRACE_MAX 16

/* libcyaml's error log, parsed: its first message and the backtrace
 * ("in mapping field 'epochs' (line: 9, column: 11)"), innermost first. */
typedef struct {
  char msg[256];
  char comp[SPEC_TRACE_MAX][64];
  bool comp_is_entry[SPEC_TRACE_MAX]; /* a sequence entry ("[3]"), not a mapping field */
  int ncomp;
  unsigned line;      /* of the innermost backtrace entry; 0 when unknown */
  bool inner_is_comp; /* the innermost entry named a field or entry (not a bare mapping) */
} spec_trace_t;

static void spec_trace_parse(const spec_log_t *log, spec_trace_t *t) {
  memset(t, 0, sizeof *t);
  bool first = true;
  for (const char *p = log->text; *p;) {
    const char *nl = strchr(p, '\n');
    size_t n = nl ? (size_t)(nl - p) : strlen(p);
    char line[256];
    snprintf(line, sizeof line, "%.*s", (int)DRV_MIN(n, sizeof line - 1), p);
    p += n + (nl ? 1 : 0);
    char *s = line;
    if (!strncmp(s, "Load: ", 6) || !strncmp(s, "Save: ", 6)) s += 6;
    while (*s == ' ') s++;
    if (!*s || !strncmp(s, "Backtrace:", 10)) continue;
    if (strncmp(s, "in ", 3) != 0) {
      if (!t->msg[0]) snprintf(t->msg, sizeof t->msg, "%s", s);
      continue;
    }
    char name[64] = "";
    unsigned ln = 0;
    bool field = sscanf(s, "in mapping field '%63[^']' (line: %u", name, &ln) >= 1;
    bool entry = !field && sscanf(s, "in sequence entry '%63[^']' (line: %u", name, &ln) >= 1;
    if (!field && !entry) {
      const char *l = strstr(s, "(line: ");
      if (l) sscanf(l, "(line: %u", &ln);
    }
    if (first) {
      t->line = ln;
      t->inner_is_comp = field || entry;
      first = false;
    }
    if ((field || entry) && t->ncomp < SPEC_TRACE_MAX) {
      snprintf(t->comp[t->ncomp], sizeof t->comp[0], "%s", name);
      t->comp_is_entry[t->ncomp++] = entry;
    }
  }
  size_t n = strlen(t->msg);
  while (n && (t->msg[n - 1] == '\n' || t->msg[n - 1] == ' ')) t->msg[--n] = '\0';
}

/* The dotted path of the backtrace, outermost first, leaving out the `skip` innermost
 * components; then `leaf` if given. Sequence entries are dropped when `entries` is false. */
static void spec_trace_path(const spec_trace_t *t, int skip, bool entries, const char *leaf,
                            char *buf, size_t cap) {
  size_t len = 0;
  buf[0] = '\0';
  for (int i = t->ncomp - 1; i >= skip && len < cap; i--) {
    if (t->comp_is_entry[i]) {
      if (entries) len += (size_t)snprintf(buf + len, cap - len, "[%s]", t->comp[i]);
    } else {
      len += (size_t)snprintf(buf + len, cap - len, "%s%s", len ? "." : "", t->comp[i]);
    }
  }
  if (leaf && len < cap) snprintf(buf + len, cap - len, "%s%s", len ? "." : "", leaf);
}

/* The schema of the value at `path` ("model.hidden[2]" gives the entry's), or NULL. */
static const cyaml_schema_value_t *spec_schema_at(const char *path) {
  if (!*path) return &spec_schema;
  char plain[SPEC_PATH_MAX];
  snprintf(plain, sizeof plain, "%s", path);
  char *bracket = strchr(plain, '[');
  if (bracket) *bracket = '\0';
  spec_slot_t slot;
  if (spec_resolve(NULL, plain, false, &slot) != DRV_OK) return NULL;
  const cyaml_schema_value_t *v = &slot.field->value;
  if (bracket && (v->type == CYAML_SEQUENCE || v->type == CYAML_SEQUENCE_FIXED))
    v = v->sequence.entry;
  return v;
}

static const char *spec_after(const char *msg, const char *prefix) {
  size_t n = strlen(prefix);
  return strncmp(msg, prefix, n) ? NULL : msg + n;
}

/* One message for a failed cyaml_load_data: "origin:line: key.path: what is wrong". */
static drv_result_t spec_load_error(cyaml_err_t err, const spec_log_t *log, const char *origin) {
  spec_trace_t t;
  spec_trace_parse(log, &t);
  char where[320], path[SPEC_PATH_MAX], what[512];
  const char *key;
  if (t.line)
    snprintf(where, sizeof where, "%s:%u", origin, t.line);
  else
    snprintf(where, sizeof where, "%s", origin);
  spec_trace_path(&t, 0, true, NULL, path, sizeof path);

  switch (err) {
  case CYAML_ERR_INVALID_KEY: {
    key = spec_after(t.msg, "Unexpected key: ");
    char parent[SPEC_PATH_MAX], keys[256] = "";
    spec_trace_path(&t, t.inner_is_comp ? 1 : 0, true, NULL, parent, sizeof parent);
    spec_trace_path(&t, t.inner_is_comp ? 1 : 0, true, key ? key : "?", path, sizeof path);
    const cyaml_schema_value_t *v = spec_schema_at(parent);
    if (v && v->type == CYAML_MAPPING) spec_keys_list(v->mapping.fields, keys, sizeof keys);
    snprintf(what, sizeof what, "unknown key (keys%s%s: %s)", *parent ? " in " : "", parent, keys);
    break;
  }
  case CYAML_ERR_MAPPING_FIELD_MISSING:
    /* The backtrace's innermost entry is the mapping's last field read, not the missing
     * one: drop it and name the missing key under its mapping. */
    key = spec_after(t.msg, "Missing required mapping field: ");
    spec_trace_path(&t, t.inner_is_comp ? 1 : 0, true, key ? key : "?", path, sizeof path);
    snprintf(what, sizeof what, "required key missing");
    break;
  case CYAML_ERR_ALIAS:
    snprintf(what, sizeof what, "anchors and aliases are not allowed in a job spec");
    break;
  case CYAML_ERR_STRING_LENGTH_MIN: snprintf(what, sizeof what, "must not be empty"); break;
  case CYAML_ERR_SEQUENCE_ENTRIES_MAX:
  case CYAML_ERR_SEQUENCE_ENTRIES_MIN: {
    spec_trace_path(&t, 0, false, NULL, path, sizeof path);
    const cyaml_schema_value_t *v = spec_schema_at(path);
    if (!v || v->type != CYAML_SEQUENCE)
      snprintf(what, sizeof what, "%s", cyaml_strerror(err));
    else if (err == CYAML_ERR_SEQUENCE_ENTRIES_MAX)
      snprintf(what, sizeof what, "too many entries (at most %u)", v->sequence.max);
    else
      snprintf(what, sizeof what, "too few entries (at least %u)", v->sequence.min);
    break;
  }
  case CYAML_ERR_UNEXPECTED_EVENT:
    if (spec_after(t.msg, "Mapping field already seen")) {
      snprintf(what, sizeof what, "key given twice");
      break;
    }
    /* fall through */
  case CYAML_ERR_INVALID_VALUE: {
    /* libcyaml numbers sequence entries inconsistently (from 0 or 1 depending on the
     * error), so an entry's problem is reported on the list, with the value. */
    bool entry = t.ncomp > 0 && t.comp_is_entry[0];
    spec_trace_path(&t, 0, false, NULL, path, sizeof path);
    const cyaml_schema_value_t *v = spec_schema_at(path);
    if (v && entry && v->type == CYAML_SEQUENCE) v = v->sequence.entry;
    char want[160] = "";
    if (v) spec_describe(v, want, sizeof want);
    snprintf(what, sizeof what, "expected %s%s (%s)", entry ? "each entry to be " : "",
             v ? want : "another value", t.msg[0] ? t.msg : cyaml_strerror(err));
    break;
  }
  case CYAML_ERR_OOM: return drv_error(DRV_ERR_NOMEM, "%s: out of memory", origin);
  default:
    snprintf(what, sizeof what, "%s%s%s%s", cyaml_strerror(err), t.msg[0] ? " (" : "", t.msg,
             t.msg[0] ? ")" : "");
    break;
  }
  if (*path) return drv_error(DRV_ERR_INVALID, "%s: %s: %s", where, path, what);
  return drv_error(DRV_ERR_INVALID, "%s: %s", where, what);
}

// --- Overrides, defaults, rounding, validation --------------------------------------------

static drv_result_t spec_apply_set(jobspec_t *spec, const char *arg, spec_seen_t *seen) {
  const char *eq = arg ? strchr(arg, '=') : NULL;
  if (!eq || eq == arg)
    return drv_error(DRV_ERR_INVALID, "--set %s: expected key.path=value", arg ? arg : "(null)");
  char path[SPEC_PATH_MAX], value[4096];
  if ((size_t)(eq - arg) >= sizeof path || strlen(eq + 1) >= sizeof value)
    return drv_error(DRV_ERR_INVALID, "--set %.40s...: too long", arg);
  snprintf(path, sizeof path, "%.*s", (int)(eq - arg), arg);
  snprintf(value, sizeof value, "%s", eq + 1);
  drv_result_t rc = spec_set_path(spec, path, spec_trim(value));
  if (rc != DRV_OK) return drv_error_prefix(rc, "--set %s", arg);
  return spec_seen_add(seen, path);
}

/* Copies the scalar at `from` to `path`: both must be scalars of one type and size. */
static drv_result_t spec_copy_path(jobspec_t *spec, const char *path, const char *from) {
  spec_slot_t dst, src;
  DRV_CHECK(spec_resolve(spec, path, true, &dst));
  DRV_CHECK(spec_resolve(spec, from, true, &src));
  const cyaml_schema_value_t *d = &dst.field->value, *s = &src.field->value;
  bool scalar = d->type == CYAML_UINT || d->type == CYAML_INT || d->type == CYAML_FLOAT ||
                d->type == CYAML_ENUM || d->type == CYAML_BOOL;
  if (!scalar || d->type != s->type || d->data_size != s->data_size ||
      ((d->flags | s->flags) & CYAML_FLAG_POINTER))
    return drv_error(DRV_ERR_INVALID, "'%s' cannot take the value of '%s'", path, from);
  memcpy(dst.base + dst.field->data_offset, src.base + src.field->data_offset, d->data_size);
  return DRV_OK;
}

static drv_result_t spec_fill_defaults(jobspec_t *spec, const spec_seen_t *seen) {
  for (size_t i = 0; i < DRV_ARRAY_LEN(spec_defaults); i++) {
    if (spec_seen_has(seen, spec_defaults[i].path)) continue;
    const char *p = spec_defaults[i].path; /* a command job has no trainer keys */
    if (spec->command && (!strncmp(p, "model.", 6) || !strncmp(p, "data.", 5) ||
                          !strncmp(p, "train.", 6)))
      continue;
    drv_result_t rc = spec_set_path(spec, spec_defaults[i].path, spec_defaults[i].value);
    if (rc != DRV_OK)
      return drv_error_prefix(rc, "default %s=%s", spec_defaults[i].path, spec_defaults[i].value);
  }
  /* After the fixed ones, so that a defaulted `from` key has its value. */
  for (size_t i = 0; i < DRV_ARRAY_LEN(spec_defaults_from); i++) {
    if (spec_seen_has(seen, spec_defaults_from[i].path)) continue;
    drv_result_t rc = spec_copy_path(spec, spec_defaults_from[i].path, spec_defaults_from[i].from);
    if (rc != DRV_OK)
      return drv_error_prefix(rc, "default %s=%s", spec_defaults_from[i].path,
                              spec_defaults_from[i].from);
  }
  return DRV_OK;
}

/* Rounds every float to what libcyaml writes ("%g", six significant digits) and reads back
 * (strtof), so that jobspec_dump's text parses to the same bits. */
static drv_result_t spec_round_floats(const cyaml_schema_field_t *fields, uint8_t *base,
                                      const char *prefix, const char *origin) {
  for (const cyaml_schema_field_t *f = fields; f->key; f++) {
    char path[SPEC_PATH_MAX];
    snprintf(path, sizeof path, "%s%s%s", prefix, *prefix ? "." : "", f->key);
    uint8_t *at = base + f->data_offset;
    if (f->value.type == CYAML_MAPPING) {
      uint8_t *child = (f->value.flags & CYAML_FLAG_POINTER) ? spec_ptr_get(at) : at;
      if (child) DRV_CHECK(spec_round_floats(f->value.mapping.fields, child, path, origin));
    } else if (f->value.type == CYAML_FLOAT) {
      double d;
      char text[48];
      if (f->value.data_size == sizeof(float)) {
        float x;
        memcpy(&x, at, sizeof x);
        d = x;
      } else {
        memcpy(&d, at, sizeof d);
      }
      snprintf(text, sizeof text, "%g", d);
      drv_result_t rc = spec_parse_float(text, f->value.data_size, &d);
      if (rc != DRV_OK) return drv_error_prefix(rc, "%s: %s", origin, path);
      spec_store_float(at, f->value.data_size, d);
    }
  }
  return DRV_OK;
}

static drv_result_t spec_invalid(const char *origin, const char *key, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static drv_result_t spec_invalid(const char *origin, const char *key, const char *fmt, ...) {
  char what[512];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(what, sizeof what, fmt, ap);
  va_end(ap);
  return drv_error(DRV_ERR_INVALID, "%s: %s: %s", origin, key, what);
}

static drv_result_t spec_check_split(const spec_split_t *split, const char *name, bool required,
                                     const char *origin) {
  const char *why = required ? "required when data.format is idx" : "required";
  char key[64];
  if (!split && !required) return DRV_OK;
  if (!split || !split->images || !*split->images) {
    snprintf(key, sizeof key, "data.%s.images", name);
    return spec_invalid(origin, key, "%s", why);
  }
  if (!split->labels || !*split->labels) {
    snprintf(key, sizeof key, "data.%s.labels", name);
    return spec_invalid(origin, key, "%s", why);
  }
  return DRV_OK;
}

/* A job name is a file name part (<run_dir>/<name>-<id>) and shows in every listing: 1 to
 * JOBSPEC_NAME_MAX letters, digits, '.', '_' or '-', not starting with '.'. */
int jobspec_name_ok(const char *name, size_t max) {
  size_t n = name ? strlen(name) : 0;
  bool ok = n >= 1 && n <= max && name[0] != '.';
  for (size_t k = 0; ok && k < n; k++) {
    char c = name[k];
    ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '.' ||
         c == '_' || c == '-';
  }
  return ok;
}

static drv_result_t spec_check_name(const char *name, const char *origin) {
  if (!name || !*name) return spec_invalid(origin, "name", "must not be empty");
  if (jobspec_name_ok(name, JOBSPEC_NAME_MAX)) return DRV_OK;
  return spec_invalid(origin, "name",
                      "'%.64s%s' is not a job name: 1 to %d letters, digits, '.', '_' or '-', "
                      "not starting with '.'",
                      name, strlen(name) > 64 ? "..." : "", JOBSPEC_NAME_MAX);
}

/* A target is named like a job, in at most JOBSPEC_TARGET_MAX bytes. */
static drv_result_t spec_check_target(const char *target, const char *origin) {
  if (jobspec_name_ok(target, JOBSPEC_TARGET_MAX)) return DRV_OK;
  return spec_invalid(origin, "target",
                      "'%.64s' is not a target name: local, attached, or 1 to %d letters, "
                      "digits, '.', '_' or '-' naming one of the coordinator's targets",
                      target ? target : "", JOBSPEC_TARGET_MAX);
}

/* Whether path has a component that is exactly "..". */
static bool path_has_dotdot(const char *path) {
  for (const char *p = path; (p = strstr(p, "..")) != NULL; p += 2)
    if ((p == path || p[-1] == '/') && (p[2] == '\0' || p[2] == '/')) return true;
  return false;
}

/* A command job's own keys: its words, its environment ("KEY=VALUE"), no trainer keys. */
static drv_result_t spec_validate_command(const jobspec_t *s, const char *origin) {
  for (uint32_t i = 0; i < s->command_count; i++)
    if (!s->command[i] || (i == 0 && !*s->command[i]))
      return spec_invalid(origin, "command", "word %u is empty", i);
  for (uint32_t i = 0; i < s->env_count; i++) {
    const char *e = s->env[i], *eq = e ? strchr(e, '=') : NULL;
    bool ok = eq && eq > e;
    for (const char *p = e; ok && p < eq; p++)
      ok = (*p >= 'A' && *p <= 'Z') || (*p >= 'a' && *p <= 'z') || *p == '_' ||
           (p > e && *p >= '0' && *p <= '9');
    if (!ok) {
      char key[32];
      snprintf(key, sizeof key, "env[%u]", i);
      return spec_invalid(origin, key, "'%.64s' is not KEY=VALUE (a key of letters, digits and _)",
                          e ? e : "");
    }
  }
  return DRV_OK;
}

static drv_result_t spec_validate_train(const jobspec_t *s, const char *origin);

/* Whether a key under `top` ("model") was written. */
static bool spec_seen_under(const spec_seen_t *seen, const char *top) {
  size_t n = strlen(top);
  for (int i = 0; i < seen->n; i++)
    if (!strncmp(seen->paths[i], top, n) && (!seen->paths[i][n] || seen->paths[i][n] == '.'))
      return true;
  return false;
}

/* A job runs the built-in trainer (model, data and train required) or a command (none of
 * them). */
static drv_result_t spec_check_kind(const jobspec_t *s, const spec_seen_t *seen,
                                    const char *origin) {
  static const char *const trainer[] = {"model", "data", "train"};
  for (size_t k = 0; k < DRV_ARRAY_LEN(trainer); k++) {
    bool has = spec_seen_under(seen, trainer[k]);
    if (s->command && has)
      return spec_invalid(origin, trainer[k],
                          "is for the built-in trainer; a command job runs its own program");
    if (!s->command && !has)
      return spec_invalid(origin, trainer[k],
                          "required key missing (or give `command:` to run your own program)");
  }
  return DRV_OK;
}

static drv_result_t spec_validate(const jobspec_t *s, const char *origin) {
  DRV_CHECK(spec_check_name(s->name, origin));
  DRV_CHECK(spec_check_target(s->target, origin));
  if (s->nodes < 1) return spec_invalid(origin, "nodes", "must be at least 1, got %u", s->nodes);
  if (s->min_nodes < 1)
    return spec_invalid(origin, "min_nodes", "must be at least 1, got %u", s->min_nodes);
  if (s->min_nodes > s->nodes)
    return spec_invalid(origin, "min_nodes", "%u is larger than nodes (%u)", s->min_nodes,
                        s->nodes);
  if (s->max_nodes < s->nodes)
    return spec_invalid(origin, "max_nodes", "%u is smaller than nodes (%u)", s->max_nodes,
                        s->nodes);
  if (s->workers_per_node > JOBSPEC_MAX_WORKERS_PER_NODE)
    return spec_invalid(origin, "workers_per_node", "%u is more than %d", s->workers_per_node,
                        JOBSPEC_MAX_WORKERS_PER_NODE);
  uint64_t per_node = s->workers_per_node ? s->workers_per_node : 1;
  if (per_node > 1 && (uint64_t)s->max_nodes * per_node > JOBSPEC_MAX_WORLD)
    return spec_invalid(origin, s->max_nodes > s->nodes ? "max_nodes" : "nodes",
                        "%u x workers_per_node %" PRIu64 " is more than %d workers",
                        s->max_nodes, per_node, JOBSPEC_MAX_WORLD);
  if (s->command) return spec_validate_command(s, origin);
  if (s->workdir || s->env || s->hang_timeout_s)
    return spec_invalid(origin, s->workdir ? "workdir" : s->env ? "env" : "hang_timeout",
                        "is for command jobs: give `command:` too");
  return spec_validate_train(s, origin);
}

/* The built-in trainer's keys: model, data, train. */
static drv_result_t spec_validate_train(const jobspec_t *s, const char *origin) {
  const spec_optim_map_t *o = &s->train.optimizer;
  if (!s->model.type || strcmp(s->model.type, "mlp") != 0)
    return spec_invalid(origin, "model.type", "unknown model '%s' (known: mlp)",
                        s->model.type ? s->model.type : "");
  if (s->model.hidden_count > JOBSPEC_MAX_HIDDEN)
    return spec_invalid(origin, "model.hidden", "%u layers, at most %d", s->model.hidden_count,
                        JOBSPEC_MAX_HIDDEN);
  for (uint32_t i = 0; i < s->model.hidden_count; i++) {
    if (s->model.hidden[i] == 0) {
      char key[32];
      snprintf(key, sizeof key, "model.hidden[%u]", i);
      return spec_invalid(origin, key, "a layer needs at least one unit, got 0");
    }
  }

  bool idx = s->data.format == SPEC_DATA_IDX;
  DRV_CHECK(spec_check_split(s->data.train, "train", idx, origin));
  DRV_CHECK(spec_check_split(s->data.test, "test", idx, origin));
  const spec_synthetic_t *syn = s->data.synthetic;
  if (!syn) return spec_invalid(origin, "data.synthetic", "missing after defaults");
  if (syn->train_samples == 0)
    return spec_invalid(origin, "data.synthetic.train_samples", "must be at least 1");
  if (syn->test_samples == 0)
    return spec_invalid(origin, "data.synthetic.test_samples", "must be at least 1");
  if (syn->features == 0)
    return spec_invalid(origin, "data.synthetic.features", "must be at least 1");
  if (syn->classes < 2)
    return spec_invalid(origin, "data.synthetic.classes", "must be at least 2, got %u",
                        syn->classes);

  if (s->train.epochs < 1) return spec_invalid(origin, "train.epochs", "must be at least 1");
  if (s->train.global_batch < 1)
    return spec_invalid(origin, "train.global_batch", "must be at least 1");
  /* With workers_per_node 0 the world is known at placement (job.c checks it there). */
  uint64_t per_node = s->workers_per_node ? s->workers_per_node : 1;
  if ((uint64_t)s->nodes * per_node > s->train.global_batch)
    return spec_invalid(origin, "train.global_batch",
                        "%u is smaller than nodes x workers_per_node (%" PRIu64
                        "): every worker needs at least one sample per step",
                        s->train.global_batch, (uint64_t)s->nodes * per_node);
  if ((uint64_t)s->max_nodes * per_node > s->train.global_batch)
    return spec_invalid(origin, "max_nodes",
                        "%u x workers_per_node %" PRIu64
                        " is larger than train.global_batch (%u): every worker needs at least "
                        "one sample per step",
                        s->max_nodes, per_node, s->train.global_batch);
  if (s->train.keep_checkpoints < 1)
    return spec_invalid(origin, "train.keep_checkpoints", "must be at least 1, got %u",
                        s->train.keep_checkpoints);
  if (s->train.allreduce_bucket_mb < 1 || s->train.allreduce_bucket_mb > 4096)
    return spec_invalid(origin, "train.allreduce_bucket_mb", "must be in [1, 4096], got %u",
                        s->train.allreduce_bucket_mb);
  if (s->train.backend == SPEC_BACKEND_CPU && s->train.precision != SPEC_PREC_FP32)
    return spec_invalid(origin, "train.precision",
                        "%s needs a GPU, but train.backend is cpu (the CPU computes in fp32)",
                        s->train.precision == SPEC_PREC_BF16 ? "bf16" : "tf32");
  if (s->train.backend == SPEC_BACKEND_CPU && s->train.allreduce_dtype != SPEC_DTYPE_FP32)
    return spec_invalid(origin, "train.allreduce_dtype",
                        "bf16 needs a GPU, but train.backend is cpu");
  if (!(o->lr > 0)) return spec_invalid(origin, "train.optimizer.lr", "must be > 0, got %g", o->lr);
  if (!(o->momentum >= 0 && o->momentum < 1))
    return spec_invalid(origin, "train.optimizer.momentum", "must be in [0, 1), got %g",
                        o->momentum);
  if (!(o->weight_decay >= 0))
    return spec_invalid(origin, "train.optimizer.weight_decay", "must be >= 0, got %g",
                        o->weight_decay);
  if (!(o->beta1 >= 0 && o->beta1 < 1))
    return spec_invalid(origin, "train.optimizer.beta1", "must be in [0, 1), got %g", o->beta1);
  if (!(o->beta2 >= 0 && o->beta2 < 1))
    return spec_invalid(origin, "train.optimizer.beta2", "must be in [0, 1), got %g", o->beta2);
  if (!(o->eps > 0))
    return spec_invalid(origin, "train.optimizer.eps", "must be > 0, got %g", o->eps);
  float lr_min = s->train.lr_schedule.lr_min;
  if (!(lr_min >= 0 && lr_min <= o->lr))
    return spec_invalid(origin, "train.lr_schedule.lr_min",
                        "must be in [0, train.optimizer.lr = %g], got %g", o->lr, lr_min);

  if (!s->run_dir || !*s->run_dir) return spec_invalid(origin, "run_dir", "must not be empty");
  if (path_has_dotdot(s->run_dir))
    return spec_invalid(origin, "run_dir",
                        "'%.200s' has a '..' component: name the directory itself", s->run_dir);
  return DRV_OK;
}

// --- Public API ----------------------------------------------------------------------------

drv_result_t jobspec_parse(const char *yaml, size_t len, const char *origin,
                           const char *const *sets, int nset, jobspec_t **out) {
  drv_result_t rc = DRV_OK;
  spec_log_t log = {0};
  cyaml_config_t cfg = jobspec_cyaml_config(&log);
  yaml_parser_t parser;
  yaml_document_t doc;
  bool have_parser = false, have_doc = false;
  jobspec_t *spec = NULL;
  spec_seen_t seen = {0};

  if (!out) return drv_error(DRV_ERR_INVALID, "jobspec_parse: out is NULL");
  *out = NULL;
  if (!origin) origin = "job spec";
  if (!yaml) return drv_error(DRV_ERR_INVALID, "%s: no text", origin);
  if (nset > 0 && !sets)
    return drv_error(DRV_ERR_INVALID, "%s: %d overrides but no list", origin, nset);
  /* 0. Size, UTF-8 and nesting, in one linear pass: libyaml is quadratic in nesting. */
  DRV_CHECK(spec_prescan(yaml, len, origin));

  /* 1. Syntax, with line and column. */
  if (!yaml_parser_initialize(&parser))
    return drv_error(DRV_ERR_NOMEM, "%s: out of memory", origin);
  have_parser = true;
  yaml_parser_set_input_string(&parser, (const unsigned char *)yaml, len);
  if (!yaml_parser_load(&parser, &doc)) {
    rc = spec_syntax_error(&parser, origin);
    goto fail;
  }
  have_doc = true;
  yaml_node_t *root = yaml_document_get_root_node(&doc);
  if (!root) {
    rc = drv_error(DRV_ERR_INVALID, "%s: empty document; a job spec needs %s", origin,
                   "name, model, data and train");
    goto fail;
  }

  /* 2. The schema. */
  cyaml_data_t *loaded = NULL;
  cyaml_err_t err = cyaml_load_data((const uint8_t *)yaml, len, &cfg, &spec_schema, &loaded, NULL);
  spec = loaded;
  if (err != CYAML_OK) {
    rc = spec_load_error(err, &log, origin);
    goto fail;
  }
  if (!spec || root->type != YAML_MAPPING_NODE) {
    rc = drv_error(DRV_ERR_INVALID, "%s: expected a mapping with name, model, data and train",
                   origin);
    goto fail;
  }

  /* 3. Strict numbers; which keys were written. */
  DRV_CHECK_GOTO(spec_walk_doc(&doc, root, spec_fields, "", &seen, origin), rc, fail);

  /* 4. Overrides, then defaults for what is still unset. */
  for (int i = 0; i < nset; i++) DRV_CHECK_GOTO(spec_apply_set(spec, sets[i], &seen), rc, fail);
  DRV_CHECK_GOTO(spec_check_kind(spec, &seen, origin), rc, fail);
  DRV_CHECK_GOTO(spec_fill_defaults(spec, &seen), rc, fail);

  /* 5. Floats as the dump writes them; then the values. */
  DRV_CHECK_GOTO(spec_round_floats(spec_fields, (uint8_t *)spec, "", origin), rc, fail);
  DRV_CHECK_GOTO(spec_validate(spec, origin), rc, fail);

  *out = spec;
  spec = NULL;
fail:
  free(seen.paths);
  jobspec_destroy(&spec);
  if (have_doc) yaml_document_delete(&doc);
  if (have_parser) yaml_parser_delete(&parser);
  return rc;
}

drv_result_t jobspec_load(const char *path, const char *const *sets, int nset, jobspec_t **out) {
  drv_result_t rc = DRV_OK;
  char *buf = NULL;
  size_t len = 0, cap = 0;
  if (!out) return drv_error(DRV_ERR_INVALID, "jobspec_load: out is NULL");
  *out = NULL;
  FILE *f = fopen(path, "rb");
  if (!f) return drv_error(DRV_ERR_SYS, "%s: %s", path, strerror(errno));
  for (;;) {
    if (len == cap) {
      size_t max = spec_max_bytes();
      if (len > max) {
        rc = drv_error(DRV_ERR_INVALID,
                       "%s: larger than %zu bytes; a job spec is at most that "
                       "(DROVER_MAX_SPEC_BYTES)",
                       path, max);
        goto fail;
      }
      cap = cap ? cap * 2 : 4096;
      char *p = realloc(buf, cap);
      if (!p) {
        rc = drv_error(DRV_ERR_NOMEM, "%s: out of memory", path);
        goto fail;
      }
      buf = p;
    }
    size_t n = fread(buf + len, 1, cap - len, f);
    len += n;
    if (n == 0) break;
  }
  if (ferror(f)) {
    rc = drv_error(DRV_ERR_SYS, "%s: read failed", path);
    goto fail;
  }
  rc = jobspec_parse(buf, len, path, sets, nset, out);
fail:
  free(buf);
  fclose(f);
  return rc;
}

drv_result_t jobspec_dump(const jobspec_t *spec, char **yaml, size_t *len) {
  spec_log_t log = {0};
  cyaml_config_t cfg = jobspec_cyaml_config(&log);
  char *raw = NULL;
  size_t n = 0;
  if (!spec || !yaml) return drv_error(DRV_ERR_INVALID, "jobspec_dump: NULL argument");
  *yaml = NULL;
  cyaml_err_t err =
      cyaml_save_data(&raw, &n, &cfg, spec->command ? spec_command_schema() : &spec_schema, spec, 0);
  if (err != CYAML_OK) {
    spec_trace_t t;
    spec_trace_parse(&log, &t);
    char path[SPEC_PATH_MAX];
    spec_trace_path(&t, 0, true, NULL, path, sizeof path);
    return drv_error(err == CYAML_ERR_OOM ? DRV_ERR_NOMEM : DRV_ERR_INVALID,
                     "jobspec_dump: %s%s%s (%s)", path, *path ? ": " : "", cyaml_strerror(err),
                     t.msg);
  }
  /* libcyaml's text has no terminating NUL and is its allocation: hand out a malloc'd,
   * NUL-terminated copy so that the caller's free() is right whatever the allocator. */
  char *text = malloc(n + 1);
  if (!text) {
    cyaml_mem(NULL, raw, 0);
    return drv_error(DRV_ERR_NOMEM, "jobspec_dump: out of memory");
  }
  memcpy(text, raw, n);
  text[n] = '\0';
  cyaml_mem(NULL, raw, 0);
  *yaml = text;
  if (len) *len = n;
  return DRV_OK;
}

void jobspec_destroy(jobspec_t **spec) {
  if (!spec || !*spec) return;
  spec_log_t log = {0};
  cyaml_config_t cfg = jobspec_cyaml_config(&log);
  cyaml_free(&cfg, &spec_schema, *spec, 0);
  *spec = NULL;
}

// --- Paths ---------------------------------------------------------------------------------

/* X(key, char ** of the path in spec s, NULL when its part is absent): every path key. */
#define JOBSPEC_PATHS(X)                                                \
  X("run_dir", &s->run_dir)                                             \
  X("workdir", s->workdir ? &s->workdir : NULL)                         \
  X("data.train.images", s->data.train ? &s->data.train->images : NULL) \
  X("data.train.labels", s->data.train ? &s->data.train->labels : NULL) \
  X("data.test.images", s->data.test ? &s->data.test->images : NULL)    \
  X("data.test.labels", s->data.test ? &s->data.test->labels : NULL)

/* Path key i of s (its name in *key), NULL past the last one or when its part is absent;
 * *key is NULL past the last. */
static char **path_slot(const jobspec_t *cs, unsigned i, const char **key) {
  jobspec_t *s = (jobspec_t *)cs;
  unsigned k = 0;
#define PATH_SLOT(name, expr) \
  if (i == k++) {             \
    *key = name;              \
    return (expr);            \
  }
  JOBSPEC_PATHS(PATH_SLOT)
#undef PATH_SLOT
  *key = NULL;
  return NULL;
}

/* Drops the empty and "." components of an absolute path in place ("/a//b/./c/" ->
 * "/a/b/c"); ".." components are left as they are. */
static void path_tidy(char *p) {
  char *out = p + 1, *in = p + 1;
  while (*in) {
    char *end = strchr(in, '/');
    size_t n = end ? (size_t)(end - in) : strlen(in);
    if (n && !(n == 1 && in[0] == '.')) {
      if (out != p + 1) *out++ = '/';
      memmove(out, in, n);
      out += n;
    }
    in += n + (end != NULL);
  }
  *out = '\0';
}

// --- Limits: what one job may ask of the cluster -------------------------------------

/* A limit of DRV_SETTINGS, 0 meaning none. */
static int over_limit(double value, drv_setting_t limit) {
  int64_t max = drv_setting(limit);
  return max > 0 && value > (double)max;
}

/* Parameters of the MLP: (in x out + out) per layer, over [in, hidden..., out]. For IDX data
 * the input and output sizes come from the files, unknown here: they count as 1. */
static double spec_model_params(const jobspec_t *s) {
  int syn = s->data.format == SPEC_DATA_SYNTHETIC && s->data.synthetic;
  double in = syn ? s->data.synthetic->features : 1, params = 0;
  for (uint32_t i = 0; i <= s->model.hidden_count; i++) {
    double out = i < s->model.hidden_count ? s->model.hidden[i]
                 : syn                     ? s->data.synthetic->classes
                                           : 1;
    params += in * out + out;
    in = out;
  }
  return params;
}

drv_result_t jobspec_check_limits(const jobspec_t *s, const char *origin) {
  if (!origin) origin = "job spec";
#define SPEC_LIMIT(value, setting, key, what)                                               \
  if (over_limit((double)(value), DRV_SET_##setting))                                       \
    return spec_invalid(origin, key, "%.0f%s, more than DROVER_" #setting " (%" PRId64 ")", \
                        (double)(value), what, drv_setting(DRV_SET_##setting));
  SPEC_LIMIT(s->nodes, MAX_NODES, "nodes", "");
  SPEC_LIMIT(s->max_nodes, MAX_NODES, "max_nodes", "");
  SPEC_LIMIT(s->train.epochs, MAX_EPOCHS, "train.epochs", "");
  SPEC_LIMIT(s->train.global_batch, MAX_BATCH, "train.global_batch", "");
  double params = spec_model_params(s);
  SPEC_LIMIT(params * 4, MAX_MODEL_BYTES, "model.hidden", " bytes of parameters (4 per parameter)");
  const spec_synthetic_t *syn = s->data.synthetic;
  if (s->data.format == SPEC_DATA_SYNTHETIC && syn) {
    double bytes = ((double)syn->train_samples + syn->test_samples) * syn->features * 4;
    SPEC_LIMIT(bytes, MAX_DATA_BYTES, "data.synthetic", " bytes of samples (4 per feature)");
  }
#undef SPEC_LIMIT
  int64_t path_max = spec_capped(DRV_SET_MAX_PATH_BYTES, JOBSPEC_PATH_MAX);
  const char *key;
  char **p;
  for (unsigned i = 0; (p = path_slot(s, i, &key)) || key; i++) {
    size_t n = p && *p ? strlen(*p) : 0;
    if ((int64_t)n > path_max)
      return spec_invalid(origin, key, "%zu bytes, more than DROVER_MAX_PATH_BYTES (%" PRId64 ")",
                          n, path_max);
  }
  return DRV_OK;
}

drv_result_t jobspec_absolutize(jobspec_t *spec, const char *dir) {
  const char *key;
  char **p;
  for (unsigned i = 0; (p = path_slot(spec, i, &key)) || key; i++) {
    if (!p || !*p || !**p) continue;
    if (**p != '/') {
      size_t n = strlen(dir) + strlen(*p) + 2;
      char *abs = malloc(n);
      if (!abs) return drv_error(DRV_ERR_NOMEM, "%s: out of memory", key);
      snprintf(abs, n, "%s/%s", dir, *p);
      free(*p);
      *p = abs;
    }
    path_tidy(*p);
  }
  return DRV_OK;
}

char **jobspec_path_at(jobspec_t *spec, unsigned i, const char **key) {
  return path_slot(spec, i, key);
}

drv_result_t jobspec_check_submitted(const jobspec_t *spec, const char *origin) {
  const char *key;
  char **p;
  for (unsigned i = 0; (p = path_slot(spec, i, &key)) || key; i++)
    if (p && *p && (*p)[0] != '/')
      return spec_invalid(origin, key,
                          "must be an absolute path (drover submit resolves relative ones "
                          "against the submitting directory)");
  /* The run directory is made of it: exactly the directory it names, no other. */
  char tidy[4096];
  int n = snprintf(tidy, sizeof tidy, "%s", spec->run_dir);
  if (n < 0 || (size_t)n >= sizeof tidy)
    return spec_invalid(origin, "run_dir", "longer than %zu bytes", sizeof tidy - 1);
  path_tidy(tidy);
  if (strcmp(tidy, spec->run_dir) != 0 || path_has_dotdot(spec->run_dir))
    return spec_invalid(origin, "run_dir",
                        "'%.200s' is not a normalised path (no empty, '.' or '..' components, "
                        "no trailing '/')",
                        spec->run_dir);
  return DRV_OK;
}

const char *jobspec_relative_path(const jobspec_t *spec) {
  const char *key;
  char **p;
  for (unsigned i = 0; (p = path_slot(spec, i, &key)) || key; i++)
    if (p && *p && (*p)[0] != '/') return key;
  return NULL;
}


