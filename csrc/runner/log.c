/* log.c - leveled, timestamped log lines for sandlotd. */
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

#include <event2/event.h>

#include "sl_log.h"

static int log_fd = STDERR_FILENO;
static int log_owned;
static enum sl_log_level log_min = SL_LOG_INFO;
static int echo_stderr;

static const char *const level_names[] = {"debug", "info", "warn", "error"};

int sl_log_parse_level(const char *s, enum sl_log_level *out)
{
    for (int i = 0; i < 4; i++) {
        if (strcmp(s, level_names[i]) == 0) {
            *out = (enum sl_log_level)i;
            return 0;
        }
    }
    return -EINVAL;
}

/* libevent reports internal trouble (e.g. accept() failing with EMFILE) through
 * this hook; without it those messages would go to stderr even in daemon mode. */
static void on_event_log(int severity, const char *msg)
{
    enum sl_log_level lvl = SL_LOG_DEBUG;
    if (severity == EVENT_LOG_WARN)
        lvl = SL_LOG_WARN;
    else if (severity == EVENT_LOG_ERR)
        lvl = SL_LOG_ERROR;
    else if (severity == EVENT_LOG_MSG)
        lvl = SL_LOG_INFO;
    sl_log(lvl, "libevent: %s", msg);
}

int sl_log_open(const char *path, enum sl_log_level level)
{
    log_min = level;
    if (path != NULL) {
        int fd = open(path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC | O_NOCTTY, 0600);
        if (fd < 0)
            return -errno;
        if (log_owned)
            close(log_fd);
        log_fd = fd;
        log_owned = 1;
    }
    event_set_log_callback(on_event_log);
    return 0;
}

void sl_log_echo_stderr(int on)
{
    echo_stderr = on;
}

int sl_log_fd(void)
{
    return log_fd;
}

void sl_log_close(void)
{
    if (log_owned) {
        close(log_fd);
        log_fd = STDERR_FILENO;
        log_owned = 0;
    }
}

void sl_log(enum sl_log_level level, const char *fmt, ...)
{
    if (level < log_min || level > SL_LOG_ERROR)
        return;
    int saved_errno = errno;
    char line[2048];
    struct timeval tv;
    struct tm tm;
    gettimeofday(&tv, NULL);
    gmtime_r(&tv.tv_sec, &tm);
    size_t n = strftime(line, sizeof(line), "%Y-%m-%dT%H:%M:%S", &tm);
    int k = snprintf(line + n, sizeof(line) - n, ".%03dZ %-5s ", (int)(tv.tv_usec / 1000),
                     level_names[level]);
    if (k > 0)
        n += (size_t)k;
    va_list ap;
    va_start(ap, fmt);
    k = vsnprintf(line + n, sizeof(line) - n - 1, fmt, ap);
    va_end(ap);
    if (k > 0)
        n += (size_t)k < sizeof(line) - n - 1 ? (size_t)k : sizeof(line) - n - 2;
    /* Neutralise control characters so a crafted name cannot forge log lines. */
    for (size_t i = 0; i < n; i++) {
        if ((unsigned char)line[i] < 0x20 && line[i] != '\t')
            line[i] = '?';
    }
    line[n++] = '\n';
    /* One write() per line keeps lines whole when several processes share a file. */
    ssize_t w = write(log_fd, line, n);
    if (echo_stderr && log_owned && level >= SL_LOG_WARN)
        w = write(STDERR_FILENO, line, n);
    (void)w;
    errno = saved_errno;
}
