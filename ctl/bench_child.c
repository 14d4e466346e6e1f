/* bench_child.c - nanoflowctl bench's child processes: nanoflowctl itself started for each
 * step (up, gen, down, run --mmap), waited for with a time limit, and the lines it prints. */
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include "bench.h"
#include "nf_file.h"
#include "nf_time.h"

pid_t nf_bench_spawn(struct nf_bench *b, char **argv, const struct nf_cgroup *cg, int *out_fd,
                     const char *log)
{
    argv[0] = (char *)"nanoflowctl";
    return nf_bench_spawn_exe(b->self, argv, cg, out_fd, log);
}

pid_t nf_bench_spawn_exe(const char *exe, char **argv, const struct nf_cgroup *cg, int *out_fd,
                         const char *log)
{
    int pfd[2] = {-1, -1};
    if (out_fd && pipe2(pfd, O_CLOEXEC) < 0)
        return -1;
    fflush(stdout);
    fflush(stderr);
    pid_t pid = fork();
    if (pid < 0) {
        if (out_fd) {
            close(pfd[0]);
            close(pfd[1]);
        }
        return -1;
    }
    if (pid == 0) {
        signal(SIGINT, SIG_DFL);
        signal(SIGTERM, SIG_DFL);
        int lfd = open(log, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0600);
        int nul = open("/dev/null", O_RDONLY | O_CLOEXEC);
        if (lfd < 0 || nul < 0)
            _exit(126);
        dup2(nul, 0);
        dup2(out_fd ? pfd[1] : lfd, 1);
        dup2(lfd, 2);
        if (cg) {
            int rc = nf_cgroup_add(cg, 0);
            if (rc < 0) {
                dprintf(2, "nanoflowctl bench: cannot enter cgroup %s: %s\n", cg->path,
                        strerror(-rc));
                _exit(126);
            }
        }
        execv(exe, argv);
        dprintf(2, "nanoflowctl bench: exec %s: %s\n", exe, strerror(errno));
        _exit(127);
    }
    if (out_fd) {
        close(pfd[1]);
        *out_fd = pfd[0];
    }
    return pid;
}

int nf_bench_wait_ru(pid_t pid, double secs, uint64_t *maxrss_kb)
{
    double end = nf_now_s() + secs;
    for (;;) {
        int st;
        struct rusage ru;
        pid_t r = wait4(pid, &st, WNOHANG, &ru);
        if (r == pid) {
            if (maxrss_kb)
                *maxrss_kb = ru.ru_maxrss > 0 ? (uint64_t)ru.ru_maxrss : 0;
            return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
        }
        if (r < 0 && errno != EINTR)
            return -1;
        if (nf_now_s() > end)
            return -1;
        nf_sleep_ms(20);
    }
}

int nf_bench_wait(pid_t pid, double secs)
{
    return nf_bench_wait_ru(pid, secs, NULL);
}

void nf_bench_kill_wait(pid_t pid)
{
    kill(pid, SIGKILL);
    nf_bench_wait(pid, 10.0);
}

void nf_bench_log_last_line(const char *log, char *out, size_t len)
{
    size_t n = 0;
    char *s = nf_read_file(log, &n);
    out[0] = '\0';
    if (!s)
        return;
    while (n && (s[n - 1] == '\n' || s[n - 1] == '\r'))
        s[--n] = '\0';
    char *nl = memrchr(s, '\n', n);
    snprintf(out, len, "%s", nl ? nl + 1 : s);
    free(s);
}

double nf_bench_json_num(const char *line, const char *key)
{
    char pat[64];
    snprintf(pat, sizeof(pat), "\"%s\":", key);
    const char *p = strstr(line, pat);
    if (!p)
        return NAN;
    char *end;
    double v = strtod(p + strlen(pat), &end);
    return end == p + strlen(pat) ? NAN : v;
}

uint64_t nf_bench_json_list_hash(const char *line, const char *key)
{
    char pat[64];
    snprintf(pat, sizeof(pat), "\"%s\":[", key);
    const char *p = strstr(line, pat);
    const char *end = p ? strchr(p, ']') : NULL;
    if (!end)
        return 0;
    uint64_t h = 0xcbf29ce484222325ull;
    for (const char *c = p + strlen(pat); c < end; c++)
        h = (h ^ (uint8_t)*c) * 0x100000001b3ull;
    return h ? h : 1;
}

char *nf_bench_next_line(struct nf_bench_lines *l, int ms, size_t *consumed)
{
    for (;;) {
        if (*consumed) {
            memmove(l->buf, l->buf + *consumed, l->len - *consumed);
            l->len -= *consumed;
            *consumed = 0;
        }
        char *nl = memchr(l->buf, '\n', l->len);
        if (nl || l->len == sizeof(l->buf) - 1) {
            size_t at = nl ? (size_t)(nl - l->buf) : l->len;
            l->buf[at] = '\0';
            *consumed = nl ? at + 1 : at;
            return l->buf;
        }
        if (l->eof)
            return NULL;
        struct pollfd p = {.fd = l->fd, .events = POLLIN};
        int pn = poll(&p, 1, ms);
        if (pn <= 0)
            return NULL;
        ssize_t r = read(l->fd, l->buf + l->len, sizeof(l->buf) - 1 - l->len);
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0) {
            l->eof = true;
            continue;
        }
        l->len += (size_t)r;
    }
}
