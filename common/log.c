/* log.c: see log.h. */
#include "common/log.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

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

void log_msg(log_level_t level, const char *file, int line, const char *fmt, ...) {
  static const char *names[] = {"debug", "info", "warn", "error"};
  if (level < log_level) return;
  char msg[2048];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(msg, sizeof msg, fmt, ap);
  va_end(ap);
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  struct tm tm;
  localtime_r(&ts.tv_sec, &tm);
  const char *base = strrchr(file, '/');
  base = base ? base + 1 : file;
  if (level >= LOG_WARN)
    fprintf(stderr, "%02d:%02d:%02d.%03ld %-5s [%s] %s (%s:%d)\n", tm.tm_hour, tm.tm_min, tm.tm_sec,
            ts.tv_nsec / 1000000, names[level], log_role, msg, base, line);
  else
    fprintf(stderr, "%02d:%02d:%02d.%03ld %-5s [%s] %s\n", tm.tm_hour, tm.tm_min, tm.tm_sec,
            ts.tv_nsec / 1000000, names[level], log_role, msg);
}
