/* log.c: see log.h. */
#include "common/log.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include "common/drv.h"

static char log_role[64] = "drover";
static log_level_t log_level = LOG_INFO;

void log_init(const char *role) {
  snprintf(log_role, sizeof log_role, "%s", role);
  const char *env = getenv("DROVER_LOG_LEVEL");
  if (!env) return;
  if (!strcasecmp(env, "debug"))
    log_level = LOG_DEBUG;
  else if (!strcasecmp(env, "info"))
    log_level = LOG_INFO;
  else if (!strcasecmp(env, "warn"))
    log_level = LOG_WARN;
  else if (!strcasecmp(env, "error"))
    log_level = LOG_ERROR;
}

void log_set_level(log_level_t level) {
  log_level = level;
}

/* One line: time, level, role, message, and for warnings and errors where it comes from. */
static void emit(log_level_t level, const char *where, const char *msg) {
  static const char *names[] = {"debug", "info", "warn", "error"};
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  struct tm tm;
  localtime_r(&ts.tv_sec, &tm);
  if (level >= LOG_WARN && where && *where)
    fprintf(stderr, "%02d:%02d:%02d.%03ld %-5s [%s] %s (%s)\n", tm.tm_hour, tm.tm_min, tm.tm_sec,
            ts.tv_nsec / 1000000, names[level], log_role, msg, where);
  else
    fprintf(stderr, "%02d:%02d:%02d.%03ld %-5s [%s] %s\n", tm.tm_hour, tm.tm_min, tm.tm_sec,
            ts.tv_nsec / 1000000, names[level], log_role, msg);
}

void log_msg(log_level_t level, const char *file, int line, const char *fmt, ...) {
  if (level < log_level) return;
  char msg[2048], where[256];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(msg, sizeof msg, fmt, ap);
  va_end(ap);
  const char *base = strrchr(file, '/');
  snprintf(where, sizeof where, "%s:%d", base ? base + 1 : file, line);
  emit(level, where, msg);
}

void log_last_error(void) {
  if (LOG_ERROR >= log_level) emit(LOG_ERROR, drv_last_error_where(), drv_last_error());
}
