/* log.c - the daemons' logging module: one line per event with monotonic time, role and pid. */
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>
#include <time.h>
#include <unistd.h>

#include "daemon.h"
#include "nf_time.h"

static pthread_mutex_t nf_log_mu = PTHREAD_MUTEX_INITIALIZER;
static FILE *nf_log_file; /* NULL: stderr */
static char nf_log_role[32] = "nanoflow";
static enum nf_log_level nf_log_max = NF_LOG_INFO;

static const char *const nf_log_names[] = {"ERROR", "WARN", "INFO", "DEBUG"};

int nf_log_open(const char *role, const char *path, enum nf_log_level level)
{
    FILE *f = NULL;
    if (path) {
        /* O_APPEND so that concurrent writers (a restarted daemon, `up` copying the tail) never
         * overwrite each other's lines; close-on-exec so children do not inherit it. */
        int fd = open(path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0600);
        if (fd < 0)
            return -errno;
        f = fdopen(fd, "a");
        if (!f) {
            int e = errno;
            close(fd);
            return -e;
        }
        setvbuf(f, NULL, _IOLBF, 0);
    }
    pthread_mutex_lock(&nf_log_mu);
    if (nf_log_file)
        fclose(nf_log_file);
    nf_log_file = f;
    if (role)
        snprintf(nf_log_role, sizeof(nf_log_role), "%s", role);
    nf_log_max = level;
    pthread_mutex_unlock(&nf_log_mu);
    return 0;
}

void nf_log(enum nf_log_level level, const char *fmt, ...)
{
    if ((int)level > (int)nf_log_max)
        return;
    const uint64_t ns = nf_now_ns();
    char msg[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    int li = (int)level < 0 || (int)level > NF_LOG_DEBUG ? NF_LOG_DEBUG : (int)level;
    pthread_mutex_lock(&nf_log_mu);
    FILE *f = nf_log_file ? nf_log_file : stderr;
    fprintf(f, "%lld.%06ld %s[%d] %s %s\n", (long long)(ns / 1000000000u),
            (long)(ns % 1000000000u / 1000), nf_log_role, (int)getpid(), nf_log_names[li], msg);
    fflush(f);
    pthread_mutex_unlock(&nf_log_mu);
}

void nf_log_close(void)
{
    pthread_mutex_lock(&nf_log_mu);
    if (nf_log_file)
        fclose(nf_log_file);
    nf_log_file = NULL;
    pthread_mutex_unlock(&nf_log_mu);
}

int nf_log_level_parse(const char *s, enum nf_log_level *out)
{
    static const char *const names[] = {"error", "warn", "info", "debug"};
    for (int i = 0; i < 4; i++)
        if (!strcasecmp(s, names[i])) {
            *out = (enum nf_log_level)i;
            return 0;
        }
    return -EINVAL;
}
