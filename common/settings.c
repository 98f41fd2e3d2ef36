/* settings.c: see settings.h. */
#include "common/settings.h"

#include <errno.h>
#include <pthread.h>
#include <stdlib.h>

#include "common/log.h"

typedef struct {
  const char *name;
  int64_t def;
  const char *help;
} setting_def_t;

static const setting_def_t defs[DRV_SET_COUNT] = {
#define DRV_SETTING_DEF(name, def, help) {#name, def, help},
#define DRV_FAULT_DEF(name, help) {#name, 0, help},
    DRV_SETTINGS(DRV_SETTING_DEF) DRV_FAULTS(DRV_FAULT_DEF)
#undef DRV_SETTING_DEF
#undef DRV_FAULT_DEF
};

typedef struct {
  const char *name, *def, *help;
} text_def_t;

static const text_def_t text_defs[DRV_TEXT_COUNT] = {
#define DRV_TEXT_DEF(name, def, help) {#name, def, help},
    DRV_TEXT_SETTINGS(DRV_TEXT_DEF)
#undef DRV_TEXT_DEF
};

/* How many entries DRV_SETTINGS has: the fault hooks' first index. */
#define DRV_SETTING_ONE(name, def, help) +1
enum { DRV_SETTINGS_PLAIN = 0 DRV_SETTINGS(DRV_SETTING_ONE) };
#undef DRV_SETTING_ONE

static int64_t values[DRV_SET_COUNT];
static const char *text_values[DRV_TEXT_COUNT];
static pthread_once_t once = PTHREAD_ONCE_INIT;

static void settings_load(void) {
  for (int i = 0; i < DRV_TEXT_COUNT; i++) {
    char var[96];
    snprintf(var, sizeof var, "DROVER_%s", text_defs[i].name);
    const char *env = getenv(var);
    text_values[i] = env && *env ? env : text_defs[i].def;
  }
  for (int i = 0; i < DRV_SET_COUNT; i++) {
    char var[96];
    snprintf(var, sizeof var, "DROVER_%s", defs[i].name);
    values[i] = defs[i].def;
    const char *env = getenv(var);
    if (!env || !*env) continue;
    char *end;
    errno = 0;
    long long v = strtoll(env, &end, 10);
    if (errno || *end || v < 0)
      log_warn("%s=%s is not a non-negative integer; using the default %lld", var, env,
               (long long)defs[i].def);
    else
      values[i] = v;
  }
}

int64_t drv_setting(drv_setting_t id) {
  pthread_once(&once, settings_load);
  return values[id];
}

const char *drv_setting_text(drv_text_setting_t id) {
  pthread_once(&once, settings_load);
  return text_values[id];
}

void drv_settings_print(FILE *out) {
  pthread_once(&once, settings_load);
  fprintf(out, "%-34s %12s %12s  %s\n", "environment variable", "default", "current", "meaning");
  for (int i = 0; i < DRV_SET_COUNT; i++) {
    char var[96];
    snprintf(var, sizeof var, "DROVER_%s", defs[i].name);
    if (i == DRV_SETTINGS_PLAIN) /* the fault hooks follow the plain settings */
      fputs("\nfault injection, for tests and drills (0: off)\n", out);
    fprintf(out, "%-34s %12lld %12lld  %s\n", var, (long long)defs[i].def, (long long)values[i],
            defs[i].help);
  }
  fputs("\ntext\n", out);
  for (int i = 0; i < DRV_TEXT_COUNT; i++) {
    char var[96];
    snprintf(var, sizeof var, "DROVER_%s", text_defs[i].name);
    fprintf(out, "%-34s %s\n%34s default \"%s\", now \"%s\"\n", var, text_defs[i].help, "",
            text_defs[i].def, text_values[i]);
  }
}
