/* targets.c: the targets file (see targets.h): one libcyaml schema, then the checks the
 * schema cannot say. */
#include "coordinator/targets.h"

#include <cyaml/cyaml.h>
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/jobspec.h"

#define TARGETS_MAX_BYTES (1u << 20)
#define DEFAULT_IDLE_TIMEOUT_S 300
#define DEFAULT_LAUNCH_TIMEOUT_S 120

// --- The schema ----------------------------------------------------------------------------

#define OPT CYAML_FLAG_OPTIONAL
#define STR_OPT (CYAML_FLAG_POINTER | CYAML_FLAG_OPTIONAL)

static const cyaml_strval_t launcher_names[] = {
    {"command", LAUNCHER_COMMAND},
    {"ssh", LAUNCHER_SSH},
    {"slurm", LAUNCHER_SLURM},
};

static const cyaml_schema_value_t string_entry = {
    CYAML_VALUE_STRING(CYAML_FLAG_POINTER, char, 1, CYAML_UNLIMITED),
};

static const cyaml_schema_field_t command_fields[] = {
    CYAML_FIELD_STRING_PTR("start", CYAML_FLAG_POINTER, target_command_t, start, 1,
                           CYAML_UNLIMITED),
    CYAML_FIELD_STRING_PTR("stop", STR_OPT, target_command_t, stop, 0, CYAML_UNLIMITED),
    CYAML_FIELD_END,
};

static const cyaml_schema_field_t ssh_fields[] = {
    CYAML_FIELD_SEQUENCE("hosts", CYAML_FLAG_POINTER, target_ssh_t, hosts, &string_entry, 1,
                         TARGETS_MAX_NODES),
    CYAML_FIELD_STRING_PTR("user", STR_OPT, target_ssh_t, user, 0, CYAML_UNLIMITED),
    CYAML_FIELD_UINT("port", OPT, target_ssh_t, port),
    CYAML_FIELD_STRING_PTR("identity", STR_OPT, target_ssh_t, identity, 0, CYAML_UNLIMITED),
    CYAML_FIELD_STRING_PTR("known_hosts", STR_OPT, target_ssh_t, known_hosts, 0,
                           CYAML_UNLIMITED),
    CYAML_FIELD_SEQUENCE("options", STR_OPT, target_ssh_t, options, &string_entry, 0, 64),
    CYAML_FIELD_END,
};

static const cyaml_schema_field_t slurm_fields[] = {
    CYAML_FIELD_STRING_PTR("partition", STR_OPT, target_slurm_t, partition, 0, CYAML_UNLIMITED),
    CYAML_FIELD_STRING_PTR("account", STR_OPT, target_slurm_t, account, 0, CYAML_UNLIMITED),
    CYAML_FIELD_STRING_PTR("time_limit", STR_OPT, target_slurm_t, time_limit, 0,
                           CYAML_UNLIMITED),
    CYAML_FIELD_STRING_PTR("gres", STR_OPT, target_slurm_t, gres, 0, CYAML_UNLIMITED),
    CYAML_FIELD_SEQUENCE("sbatch_args", STR_OPT, target_slurm_t, sbatch_args, &string_entry, 0,
                         64),
    CYAML_FIELD_END,
};

typedef __typeof__(((target_t *)0)->node) target_node_map_t;

static const cyaml_schema_field_t node_fields[] = {
    CYAML_FIELD_UINT("cpus", OPT, target_node_map_t, cpus),
    CYAML_FIELD_UINT("gpus", OPT, target_node_map_t, gpus),
    CYAML_FIELD_UINT("memory_mb", OPT, target_node_map_t, memory_mb),
    CYAML_FIELD_END,
};

static const cyaml_schema_field_t target_fields[] = {
    CYAML_FIELD_STRING_PTR("name", CYAML_FLAG_POINTER, target_t, name, 1, CYAML_UNLIMITED),
    CYAML_FIELD_ENUM("launcher", CYAML_FLAG_STRICT, target_t, launcher, launcher_names,
                     CYAML_ARRAY_LEN(launcher_names)),
    CYAML_FIELD_UINT("min_nodes", OPT, target_t, min_nodes),
    CYAML_FIELD_UINT("max_nodes", CYAML_FLAG_DEFAULT, target_t, max_nodes),
    CYAML_FIELD_UINT("idle_timeout", OPT, target_t, idle_timeout_s),
    CYAML_FIELD_UINT("launch_timeout", OPT, target_t, launch_timeout_s),
    CYAML_FIELD_BOOL("preemptible", OPT, target_t, preemptible),
    CYAML_FIELD_MAPPING("node", OPT, target_t, node, node_fields),
    CYAML_FIELD_STRING_PTR("drover", STR_OPT, target_t, drover, 1, CYAML_UNLIMITED),
    CYAML_FIELD_STRING_PTR("join", STR_OPT, target_t, join, 1, CYAML_UNLIMITED),
    CYAML_FIELD_SEQUENCE("agent_args", STR_OPT, target_t, agent_args, &string_entry, 0, 64),
    CYAML_FIELD_MAPPING_PTR("command", STR_OPT, target_t, command, command_fields),
    CYAML_FIELD_MAPPING_PTR("ssh", STR_OPT, target_t, ssh, ssh_fields),
    CYAML_FIELD_MAPPING_PTR("slurm", STR_OPT, target_t, slurm, slurm_fields),
    CYAML_FIELD_END,
};

static const cyaml_schema_value_t target_entry = {
    CYAML_VALUE_MAPPING(CYAML_FLAG_DEFAULT, target_t, target_fields),
};

static const cyaml_schema_field_t file_fields[] = {
    CYAML_FIELD_SEQUENCE("targets", CYAML_FLAG_POINTER, targets_file_t, targets, &target_entry, 1,
                         TARGETS_MAX),
    CYAML_FIELD_END,
};

static const cyaml_schema_value_t file_schema = {
    CYAML_VALUE_MAPPING(CYAML_FLAG_POINTER, targets_file_t, file_fields),
};

// --- libcyaml's errors, as one line --------------------------------------------------------

/* The line (from 1) at or after line `from` whose first word is "key:", or 0. */
static unsigned key_line(const char *yaml, size_t len, unsigned from, const char *key) {
  size_t klen = strlen(key);
  unsigned line = 1;
  for (size_t i = 0; i < len; line++) {
    size_t j = i;
    while (j < len && (yaml[j] == ' ' || yaml[j] == '-')) j++;
    if (line >= from && j + klen < len && !strncmp(yaml + j, key, klen) && yaml[j + klen] == ':')
      return line;
    while (i < len && yaml[i] != '\n') i++;
    i++;
  }
  return 0;
}

/* libcyaml logs "Load: <what>" then a backtrace, innermost first: "  in mapping field
 * 'launcher' (line: 5, column: 15)", "  in sequence entry '2' (line: 6, ...)" (numbered
 * from 0 or 1 depending on the error). This makes "origin:8: max_nodes (target at line
 * 6): <what>" of it; an unknown key gets the line it is on. */
static drv_result_t load_error(cyaml_err_t err, const jobspec_cyaml_log_t *log, const char *yaml,
                               size_t len, const char *origin) {
  char what[256] = "", path[256] = "";
  unsigned line = 0, entry_line = 0;
  char *copy = strdup(log->text);
  const char *fields[16];
  int depth = 0;
  for (char *save = NULL, *l = copy ? strtok_r(copy, "\n", &save) : NULL; l;
       l = strtok_r(NULL, "\n", &save)) {
    const char *f = strstr(l, "in mapping field '"), *at = strstr(l, "(line: ");
    unsigned n = at ? (unsigned)strtoul(at + 7, NULL, 10) : 0;
    if (strstr(l, "in sequence entry '")) {
      if (!entry_line) entry_line = n; /* the fields inside the entry are what to name */
      continue;
    }
    if (at && !line) line = n;
    if (f && !entry_line && depth < 16) {
      char *name = (char *)f + 18, *q = strchr(name, '\'');
      if (q) *q = '\0';
      fields[depth++] = name;
    } else if (!f && !at && !what[0] && strncmp(l, "Load: Backtrace", 15)) {
      snprintf(what, sizeof what, "%s", strncmp(l, "Load: ", 6) ? l : l + 6);
    }
  }
  size_t n = 0;
  for (int k = depth - 1; k >= 0 && n < sizeof path; k--)
    n += (size_t)snprintf(path + n, sizeof path - n, "%s%s", n ? "." : "", fields[k]);
  const char *unknown = strstr(what, "Unexpected key: ");
  if (unknown) {
    unsigned at = key_line(yaml, len, entry_line, unknown + 16);
    if (at) line = at;
    snprintf(path + n, sizeof path - n, "%s%s", n ? "." : "", unknown + 16);
    snprintf(what, sizeof what, "unknown key");
  }
  free(copy);
  if (!what[0]) snprintf(what, sizeof what, "%s", cyaml_strerror(err));
  if (strstr(what, "Invalid ENUM value") && n >= 8 && !strcmp(path + n - 8, "launcher"))
    snprintf(what + strlen(what), sizeof what - strlen(what), " (launchers: command, ssh, slurm)");
  char where[320], entry[48] = "";
  if (line)
    snprintf(where, sizeof where, "%s:%u", origin, line);
  else
    snprintf(where, sizeof where, "%s", origin);
  if (entry_line) snprintf(entry, sizeof entry, " (target at line %u)", entry_line);
  if (path[0]) return drv_error(DRV_ERR_INVALID, "%s: %s%s: %s", where, path, entry, what);
  return drv_error(DRV_ERR_INVALID, "%s: %s%s", where, what, entry);
}

// --- The checks ----------------------------------------------------------------------------

static drv_result_t invalid(const char *origin, const target_t *t, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static drv_result_t invalid(const char *origin, const target_t *t, const char *fmt, ...) {
  char what[512];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(what, sizeof what, fmt, ap);
  va_end(ap);
  return drv_error(DRV_ERR_INVALID, "%s: target %s: %s", origin, t->name, what);
}

static drv_result_t check_target(const targets_file_t *f, uint32_t i, const char *origin) {
  target_t *t = &f->targets[i];
  if (!jobspec_name_ok(t->name, JOBSPEC_TARGET_MAX))
    return drv_error(DRV_ERR_INVALID,
                     "%s: targets[%u].name: '%.64s' is not a target name: 1 to %d letters, "
                     "digits, '.', '_' or '-', not starting with '.'",
                     origin, i, t->name, JOBSPEC_TARGET_MAX);
  if (!strcmp(t->name, "local") || !strcmp(t->name, "attached"))
    return invalid(origin, t, "name: %s is a built-in target", t->name);
  for (uint32_t k = 0; k < i; k++)
    if (!strcmp(f->targets[k].name, t->name)) return invalid(origin, t, "name given twice");
  if (t->max_nodes < 1 || t->max_nodes > TARGETS_MAX_NODES)
    return invalid(origin, t, "max_nodes: must be 1 to %d, got %u", TARGETS_MAX_NODES,
                   t->max_nodes);
  if (t->min_nodes > t->max_nodes)
    return invalid(origin, t, "min_nodes %u is more than max_nodes %u", t->min_nodes,
                   t->max_nodes);
  if (!t->idle_timeout_s) t->idle_timeout_s = DEFAULT_IDLE_TIMEOUT_S;
  if (!t->launch_timeout_s) t->launch_timeout_s = DEFAULT_LAUNCH_TIMEOUT_S;
  const char *kind = targets_launcher_name(t->launcher);
  int have = t->launcher == LAUNCHER_COMMAND ? t->command != NULL
             : t->launcher == LAUNCHER_SSH   ? t->ssh != NULL
                                             : t->slurm != NULL;
  if (!have) return invalid(origin, t, "launcher %s needs its section `%s:`", kind, kind);
  if ((t->launcher != LAUNCHER_COMMAND && t->command) ||
      (t->launcher != LAUNCHER_SSH && t->ssh) || (t->launcher != LAUNCHER_SLURM && t->slurm))
    return invalid(origin, t, "only the section of its launcher (%s) may be given", kind);
  if (t->ssh && t->max_nodes > t->ssh->hosts_count)
    return invalid(origin, t, "max_nodes %u is more than its %u ssh host(s): one node per host",
                   t->max_nodes, t->ssh->hosts_count);
  return DRV_OK;
}

// --- Loading -------------------------------------------------------------------------------

drv_result_t targets_parse(const char *yaml, size_t len, const char *origin, targets_file_t **out) {
  *out = NULL;
  if (len > TARGETS_MAX_BYTES)
    return drv_error(DRV_ERR_INVALID, "%s: %zu bytes, more than %u", origin, len,
                     TARGETS_MAX_BYTES);
  jobspec_cyaml_log_t log = {.len = 0};
  cyaml_config_t cfg = jobspec_cyaml_config(&log);
  cyaml_data_t *data = NULL;
  cyaml_err_t err = cyaml_load_data((const uint8_t *)yaml, len, &cfg, &file_schema, &data, NULL);
  targets_file_t *f = data;
  if (err != CYAML_OK) return load_error(err, &log, yaml, len, origin);
  if (!f) return drv_error(DRV_ERR_INVALID, "%s: empty: expected `targets:`", origin);
  for (uint32_t i = 0; i < f->targets_count; i++) {
    drv_result_t rc = check_target(f, i, origin);
    if (rc != DRV_OK) {
      targets_free(&f);
      return rc;
    }
  }
  *out = f;
  return DRV_OK;
}

drv_result_t targets_load(const char *path, targets_file_t **out) {
  *out = NULL;
  FILE *f = fopen(path, "rb");
  if (!f) return drv_error(DRV_ERR_SYS, "targets file %s: %s", path, strerror(errno));
  char *text = malloc(TARGETS_MAX_BYTES + 1);
  size_t len = text ? fread(text, 1, TARGETS_MAX_BYTES + 1, f) : 0;
  int bad = text ? ferror(f) : 0;
  fclose(f);
  drv_result_t rc;
  if (!text)
    rc = drv_error(DRV_ERR_NOMEM, "targets file %s: out of memory", path);
  else if (bad)
    rc = drv_error(DRV_ERR_SYS, "targets file %s: read failed", path);
  else
    rc = targets_parse(text, len, path, out);
  free(text);
  return rc;
}

void targets_free(targets_file_t **t) {
  if (!t || !*t) return;
  jobspec_cyaml_log_t log = {.len = 0};
  cyaml_config_t cfg = jobspec_cyaml_config(&log);
  cyaml_free(&cfg, &file_schema, *t, 0);
  *t = NULL;
}

const target_t *targets_find(const targets_file_t *t, const char *name) {
  for (uint32_t i = 0; t && name && i < t->targets_count; i++)
    if (!strcmp(t->targets[i].name, name)) return &t->targets[i];
  return NULL;
}

const char *targets_launcher_name(launcher_kind_t k) {
  for (size_t i = 0; i < DRV_ARRAY_LEN(launcher_names); i++)
    if (launcher_names[i].val == (int64_t)k) return launcher_names[i].str;
  return "?";
}
