/* log.h: leveled logging to stderr, one line per call, prefixed with time, level and the
 * process's role ("coordinator", "agent", "worker 1"). Thread-safe (one fprintf per line). */
#ifndef DROVER_COMMON_LOG_H
#define DROVER_COMMON_LOG_H

typedef enum { LOG_DEBUG = 0, LOG_INFO, LOG_WARN, LOG_ERROR } log_level_t;

/* Sets the role printed on each line (copied) and the minimum level. The level can also
 * come from DROVER_LOG_LEVEL (debug|info|warn|error), read by log_init. */
void log_init(const char *role);
void log_set_level(log_level_t level);

void log_msg(log_level_t level, const char *file, int line, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

#define log_debug(...) log_msg(LOG_DEBUG, __FILE__, __LINE__, __VA_ARGS__)
#define log_info(...) log_msg(LOG_INFO, __FILE__, __LINE__, __VA_ARGS__)
#define log_warn(...) log_msg(LOG_WARN, __FILE__, __LINE__, __VA_ARGS__)
#define log_error(...) log_msg(LOG_ERROR, __FILE__, __LINE__, __VA_ARGS__)

/* Logs the calling thread's last error (drv_last_error) at error level, with the place it
 * arose (drv_last_error_where, "train/dataset.c:212") rather than the place it is logged. */
void log_last_error(void);

#endif
