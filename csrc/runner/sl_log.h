/* sl_log.h - leveled logging for sandlotd (stderr or a log file).
 *
 * Lines look like "2025-01-02T03:04:05.678Z info  message". Callers must never
 * pass secret values (env of secrets, tokens) into these functions.
 */
#ifndef SL_LOG_H
#define SL_LOG_H

enum sl_log_level { SL_LOG_DEBUG = 0, SL_LOG_INFO = 1, SL_LOG_WARN = 2, SL_LOG_ERROR = 3 };

/* Parse "debug" | "info" | "warn" | "error". Returns 0 or -EINVAL. */
int sl_log_parse_level(const char *s, enum sl_log_level *out);

/* Log to path (opened O_APPEND, created 0600) or to stderr when path is NULL.
 * Returns 0 or -errno. Also routes libevent's own warnings into the log. */
int sl_log_open(const char *path, enum sl_log_level level);

/* The fd log lines go to (for the daemon's stdio redirection). */
int sl_log_fd(void);

/* While on, warnings and errors also go to stderr when logging to a file, so
 * that start-up failures reach whoever started the runner. */
void sl_log_echo_stderr(int on);

/* Close the log file (no-op for stderr). */
void sl_log_close(void);

void sl_log(enum sl_log_level level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

#define sl_debug(...) sl_log(SL_LOG_DEBUG, __VA_ARGS__)
#define sl_info(...) sl_log(SL_LOG_INFO, __VA_ARGS__)
#define sl_warn(...) sl_log(SL_LOG_WARN, __VA_ARGS__)
#define sl_error(...) sl_log(SL_LOG_ERROR, __VA_ARGS__)

#endif
