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
    DRV_SETTINGS(DRV_SETTING_DEF)
#undef DRV_SETTING_DEF
};

static int64_t values[DRV_SET_COUNT];
static pthread_once_t once = PTHREAD_ONCE_INIT;

static void settings_load(void) {
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

void drv_settings_print(FILE *out) {
  pthread_once(&once, settings_load);
  fprintf(out, "%-34s %12s %12s  %s\n", "environment variable", "default", "current", "meaning");
  for (int i = 0; i < DRV_SET_COUNT; i++) {
    char var[96];
    snprintf(var, sizeof var, "DROVER_%s", defs[i].name);
    fprintf(out, "%-34s %12lld %12lld  %s\n", var, (long long)defs[i].def, (long long)values[i],
            defs[i].help);
  }
}
