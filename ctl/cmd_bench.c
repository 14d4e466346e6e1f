/* cmd_bench.c - nanoflowctl bench: raw disk bandwidth, the stack's decode (exact and sparse) and
 * the plain-mmap engine, side by side on one model under one RAM budget, in one table. */
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <limits.h>
#include <liburing.h>
#include <math.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "cgroup.h"
#include "cmds.h"
#include "gen_output.h"
#include "nf_err.h"
#include "nf_proc.h"
#include "nft.h"
#include "stack.h"
#include "stack_ctl.h"
#include "nf_time.h"

static const char *const cmd = "bench";

#define NF_BENCH_MAX_LEVELS  8
#define NF_BENCH_RAW_CAP     (2ull << 30) /* raw read: at most this many bytes of tiles */
#define NF_BENCH_QD          16u          /* the fetcher's default --qd */
#define NF_BENCH_UP_TIMEOUT  120.0        /* seconds for `up` (it waits 60 s for READY itself) */
#define NF_BENCH_DOWN_WAIT   30.0
#define NF_BENCH_CANCEL_WAIT 15.0 /* after a phase's time box: wait this long for the end */

static void usage(FILE *f)
{
    fprintf(f,
            "usage: nanoflowctl bench --model FILE [options]\n\n"
            "Measures, side by side on the same model and RAM budget, and prints one table:\n"
            "  raw    O_DIRECT reads of the .nft's tiles in file order with io_uring at the\n"
            "         fetcher's queue depth (%u), up to 2 GiB: the disk's bandwidth;\n"
            "  stack  the streaming stack's decode in exact mode and at each --sparsity level\n"
            "         (each a fresh 'up' in its own run directory, 'gen', 'stats', 'down');\n"
            "  mmap   'run --mmap': the same engine with the GGUF mapped read-only, the page\n"
            "         cache serving weights on demand (as llama.cpp by default); the file's\n"
            "         cached pages are dropped first. Needs a .gguf model.\n"
            "When it can create a memory cgroup (root, cgroup v2 or v1), each engine runs in a\n"
            "fresh cgroup limited to --ram and the peak is the cgroup's (page cache included);\n"
            "otherwise it says why and the peak is the processes' VmHWM. A .gguf is converted\n"
            "once to the cached .nft that 'up' uses. Progress goes to stderr.\n\n"
            "  -m, --model FILE      .gguf (all rows) or .nft (no mmap row) model (required)\n"
            "      --ram SIZE        RAM budget, K/M/G/T suffixes (default: 1G)\n"
            "  -n, --n-predict N     tokens generated per engine, 2..100000 (default: 8)\n"
            "      --sparsity LIST   comma-separated sparse levels, each 0 < S <= 0.99, measured\n"
            "                        after exact mode; 'none' for exact only (default: 0.5)\n"
            "  -t, --threads N       compute threads of every engine, the stack's and mmap's\n"
            "                        alike; 0 = what 'up' picks: one per CPU but one, at least\n"
            "                        1 (default: 0)\n"
            "  -c, --ctx-size N      context length of every engine, 0..1048576; the stack's\n"
            "                        KV cache is reserved from the budget for all of it, so\n"
            "                        a short context leaves more to the tile pool (default: 0 =\n"
            "                        what 'up' picks: KV cache at most a quarter of the budget)\n"
            "      --timeout SECS    time box of each engine's generation, 5..3600 (default: 70);\n"
            "                        a phase cut short reports the tokens it finished\n"
            "      --run-dir DIR     base directory for the stacks' run directories and logs\n"
            "                        (default: a fresh /tmp/nanoflow-bench-XXXXXX, removed after)\n"
            "      --no-cgroup       do not create memory cgroups\n"
            "      --json            one JSON object on stdout instead of the table\n"
            "  -h, --help            show this help\n",
            NF_BENCH_QD);
}

struct bench_opts {
    const char *model, *run_dir;
    uint64_t ram;
    long n, threads, timeout, ctx;
    float levels[NF_BENCH_MAX_LEVELS];
    int n_levels;
    bool json, no_cgroup;
};

/* One measured engine. Doubles are NAN when not measured or not applicable. */
struct row {
    char mode[32];
    float sparsity;
    bool is_mmap, ran, timed_out;
    char error[384];
    int tokens;           /* tokens generated */
    double tok_s;         /* decode tokens per second */
    double mb_s;          /* MB read from disk per second of the generation */
    double busy_mb_s;     /* stack: fetcher MB per second with reads in flight */
    double bytes_per_tok; /* bytes read from disk per evaluated token */
    double hit_rate;      /* share of the weight bytes used that needed no disk read */
    double req_hit_rate;  /* stack: fetcher requests found loading or ready */
    double used_per_tok;  /* stack: tile bytes compute used per evaluated token */
    double recall, stall;
    uint64_t peak; /* bytes; 0 = unknown */
    const char *peak_src;
    uint64_t oom_kills, limit_hits;
    double vs_mmap, io_bound, vs_io_bound;
};

struct raw_result {
    bool ok;
    char error[256];
    const char *backend;
    uint64_t bytes, reads;
    double secs, mb_s, avg_tile;
};

struct bench {
    struct bench_opts o;
    char self[PATH_MAX];
    char gguf[PATH_MAX]; /* empty when the model is a .nft */
    char nft[PATH_MAX];
    char base[PATH_MAX];
    bool base_made;
    bool use_cgroup;
    int cg_version;
    char cg_why[512];
    char cg_where[PATH_MAX];
    uint32_t n_ctx;                /* the stack's context per its plan, used for run --mmap too */
    struct raw_result raw;         /* the faster successful pass (the bound's bandwidth) */
    struct raw_result raw_pass[2]; /* before and after the engines */
    struct row rows[NF_BENCH_MAX_LEVELS + 2];
    int n_rows;
    bool tty;
    double t_start;
};

static volatile sig_atomic_t nf_bench_stop;

static void on_signal(int sig)
{
    (void)sig;
    nf_bench_stop = 1;
}

static void progress(struct bench *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void progress(struct bench *b, const char *fmt, ...)
{
    char msg[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    fprintf(stderr, "bench [%5.1fs] %s\n", nf_now_s() - b->t_start, msg);
}

/* --- arguments ------------------------------------------------------------------------------ */

static int parse_levels(const char *v, struct bench_opts *o)
{
    o->n_levels = 0;
    if (!strcmp(v, "none") || !strcmp(v, "0"))
        return 0;
    char tmp[256];
    if (strlen(v) >= sizeof(tmp))
        return nf_usage_error(cmd, "--sparsity list is too long");
    snprintf(tmp, sizeof(tmp), "%s", v);
    for (char *s = NULL, *t = strtok_r(tmp, ",", &s); t; t = strtok_r(NULL, ",", &s)) {
        if (o->n_levels == NF_BENCH_MAX_LEVELS)
            return nf_usage_error(cmd, "--sparsity takes at most %d levels", NF_BENCH_MAX_LEVELS);
        float f;
        if (nf_arg_float(cmd, "--sparsity", t, 0.01f, 0.99f, &f))
            return 2;
        o->levels[o->n_levels++] = f;
    }
    if (o->n_levels == 0)
        return nf_usage_error(cmd, "--sparsity expects a list like 0.5,0.8 or 'none', got '%s'", v);
    return 0;
}

static int parse_args(int argc, char **argv, struct bench_opts *o)
{
    o->ram = 1ull << 30;
    o->n = 8;
    o->timeout = 70; /* 3 engines stay under 5 minutes in all */
    o->levels[0] = 0.5f;
    o->n_levels = 1;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v;
        if (!strcmp(a, "-h") || !strcmp(a, "--help")) {
            usage(stdout);
            return 1;
        }
        if (!strcmp(a, "--json")) {
            o->json = true;
            continue;
        }
        if (!strcmp(a, "--no-cgroup")) {
            o->no_cgroup = true;
            continue;
        }
        if (!(nf_arg_is(a, "--model") || !strcmp(a, "-m") || nf_arg_is(a, "--ram") ||
              nf_arg_is(a, "--n-predict") || !strcmp(a, "-n") || nf_arg_is(a, "--sparsity") ||
              nf_arg_is(a, "--threads") || !strcmp(a, "-t") || nf_arg_is(a, "--timeout") ||
              nf_arg_is(a, "--run-dir") || nf_arg_is(a, "--ctx-size") || !strcmp(a, "-c")))
            return nf_usage_error(cmd, "unknown flag '%s'", a);
        if (!(v = nf_arg_value(cmd, argc, argv, &i)))
            return 2;
        if (nf_arg_is(a, "--model") || !strcmp(a, "-m")) {
            o->model = v;
        } else if (nf_arg_is(a, "--ram")) {
            if (nf_arg_size(cmd, a, v, &o->ram))
                return 2;
            if (o->ram == 0)
                return nf_usage_error(cmd, "--ram must be above 0");
        } else if (nf_arg_is(a, "--n-predict") || !strcmp(a, "-n")) {
            if (nf_arg_long(cmd, a, v, 2, 100000, &o->n))
                return 2;
        } else if (nf_arg_is(a, "--sparsity")) {
            int rc = parse_levels(v, o);
            if (rc)
                return rc;
        } else if (nf_arg_is(a, "--threads") || !strcmp(a, "-t")) {
            if (nf_arg_long(cmd, a, v, 0, 1024, &o->threads))
                return 2;
        } else if (nf_arg_is(a, "--ctx-size") || !strcmp(a, "-c")) {
            if (nf_arg_long(cmd, a, v, 0, 1048576, &o->ctx))
                return 2;
        } else if (nf_arg_is(a, "--timeout")) {
            if (nf_arg_long(cmd, a, v, 5, 3600, &o->timeout))
                return 2;
        } else {
            o->run_dir = v;
        }
    }
    if (!o->model)
        return nf_usage_error(cmd, "--model FILE is required");
    return 0;
}

/* --- raw O_DIRECT read bandwidth ------------------------------------------------------------ */

static int cmp_offset(const void *a, const void *b)
{
    const struct nf_nft_tile *x = *(const struct nf_nft_tile *const *)a,
                             *y = *(const struct nf_nft_tile *const *)b;
    return x->offset < y->offset ? -1 : x->offset > y->offset;
}

/* Reads tiles (in file order, padded extents, up to NF_BENCH_RAW_CAP bytes) with qd reads in
 * flight: io_uring with registered buffers, or pread when io_uring cannot be set up. */
static void bench_raw(struct bench *b, const struct nf_nft *f, struct raw_result *r)
{
    const unsigned qd = NF_BENCH_QD;
    uint64_t n = 0, cap = 0, total = 0;
    const struct nf_nft_tile **order = calloc(f->n_tiles ? f->n_tiles : 1, sizeof(*order));
    if (!order) {
        snprintf(r->error, sizeof(r->error), "out of memory");
        return;
    }
    for (uint64_t i = 0; i < f->n_tiles; i++)
        order[i] = &f->tiles[i];
    qsort(order, f->n_tiles, sizeof(*order), cmp_offset);
    for (; n < f->n_tiles && total < NF_BENCH_RAW_CAP; n++) {
        uint64_t p = nf_nft_padded(order[n]->size);
        total += p;
        if (p > cap)
            cap = p;
    }
    int fd = open(b->nft, O_RDONLY | O_DIRECT | O_CLOEXEC);
    uint8_t *bufs = cap ? aligned_alloc(NF_NFT_ALIGN, cap * qd) : NULL; /* (qd, cap) */
    struct iovec iov[NF_BENCH_QD];
    uint32_t free_b[NF_BENCH_QD];
    struct io_uring ring;
    bool have_ring = false;
    if (fd < 0 || !bufs) {
        snprintf(r->error, sizeof(r->error), "%.180s: %s", b->nft,
                 fd < 0 ? strerror(errno) : "out of memory");
        goto out;
    }
    for (unsigned i = 0; i < qd; i++) {
        iov[i].iov_base = bufs + (size_t)i * cap;
        iov[i].iov_len = cap;
        free_b[i] = i;
    }
    progress(b, "raw: reading %llu tiles (%.1f MiB) O_DIRECT, qd %u", (unsigned long long)n,
             (double)total / 1048576.0, qd);
    int rc = io_uring_queue_init(qd, &ring, 0);
    have_ring = rc == 0;
    double t0 = nf_now_s(), last = t0;
    uint64_t next = 0, done = 0, bytes = 0;
    if (have_ring) {
        r->backend = "io_uring";
        bool fixed = io_uring_register_buffers(&ring, iov, qd) == 0;
        unsigned n_free = qd, in_flight = 0;
        while ((next < n || in_flight) && !nf_bench_stop) {
            while (next < n && n_free) {
                struct io_uring_sqe *sqe = io_uring_get_sqe(&ring);
                if (!sqe)
                    break;
                uint32_t bi = free_b[--n_free];
                const struct nf_nft_tile *t = order[next++];
                unsigned len = (unsigned)nf_nft_padded(t->size);
                if (fixed)
                    io_uring_prep_read_fixed(sqe, fd, iov[bi].iov_base, len, t->offset, (int)bi);
                else
                    io_uring_prep_read(sqe, fd, iov[bi].iov_base, len, t->offset);
                io_uring_sqe_set_data64(sqe, ((uint64_t)len << 32) | bi);
                in_flight++;
            }
            io_uring_submit(&ring);
            struct io_uring_cqe *cqe;
            rc = io_uring_wait_cqe(&ring, &cqe);
            if (rc == -EINTR)
                continue;
            if (rc < 0) {
                snprintf(r->error, sizeof(r->error), "io_uring wait: %s", strerror(-rc));
                goto out;
            }
            uint64_t ud = io_uring_cqe_get_data64(cqe);
            int res = cqe->res;
            io_uring_cqe_seen(&ring, cqe);
            in_flight--;
            free_b[n_free++] = (uint32_t)(ud & 0xffffffffu);
            if (res < 0 || (uint64_t)res != ud >> 32) {
                snprintf(r->error, sizeof(r->error), "read of %llu bytes returned %d (%s)",
                         (unsigned long long)(ud >> 32), res, res < 0 ? strerror(-res) : "short");
                goto out;
            }
            bytes += (uint64_t)res;
            done++;
            if (nf_now_s() - last > 2.0) {
                last = nf_now_s();
                progress(b, "raw: %.0f / %.0f MiB", (double)bytes / 1048576.0,
                         (double)total / 1048576.0);
            }
        }
    } else {
        /* One reader: io_uring is forbidden here (as some containers do); the fetcher then uses
         * a pread pool, so this understates what it could reach. */
        r->backend = "pread (io_uring unavailable)";
        for (; next < n && !nf_bench_stop; next++) {
            const struct nf_nft_tile *t = order[next];
            size_t len = (size_t)nf_nft_padded(t->size);
            ssize_t got = pread(fd, bufs, len, (off_t)t->offset);
            if (got != (ssize_t)len) {
                snprintf(r->error, sizeof(r->error), "pread of %zu bytes at %llu: %s", len,
                         (unsigned long long)t->offset, got < 0 ? strerror(errno) : "short");
                goto out;
            }
            bytes += len;
            done++;
        }
    }
    r->secs = nf_now_s() - t0;
    r->bytes = bytes;
    r->reads = done;
    r->mb_s = r->secs > 0 ? (double)bytes / 1e6 / r->secs : NAN;
    r->avg_tile = done ? (double)bytes / (double)done : NAN;
    r->ok = !nf_bench_stop && done == n && n > 0;
    if (!r->ok && !r->error[0])
        snprintf(r->error, sizeof(r->error), nf_bench_stop ? "interrupted" : "no tiles");
out:
    if (have_ring)
        io_uring_queue_exit(&ring);
    if (fd >= 0)
        close(fd);
    free(bufs);
    free(order);
}

/* --- child processes ------------------------------------------------------------------------ */

/* Starts self with argv (NULL-terminated, argv[0] ignored). stdout goes to *out_fd (a pipe we
 * read) when out_fd is not NULL, else to log; stderr to log. With cg, the child moves itself into
 * the cgroup before exec so everything it starts inherits it. Returns the pid or -1. */
static pid_t spawn(struct bench *b, char **argv, const struct nf_cgroup *cg, int *out_fd,
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
        argv[0] = (char *)"nanoflowctl";
        execv(b->self, argv);
        dprintf(2, "nanoflowctl bench: exec %s: %s\n", b->self, strerror(errno));
        _exit(127);
    }
    if (out_fd) {
        close(pfd[1]);
        *out_fd = pfd[0];
    }
    return pid;
}

/* Waits up to secs for pid; returns its exit status (128 + signal when killed), or -1 on
 * timeout (the child is left running). */
/* Waits up to secs for child pid; returns its exit code (128 + signal when killed) or -1. When
 * maxrss_kb is not NULL it receives the child's peak resident size (wait4's ru_maxrss), which
 * catches a child too short-lived for the /proc samples. */
static int wait_child_ru(pid_t pid, double secs, uint64_t *maxrss_kb)
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

static int wait_child(pid_t pid, double secs)
{
    return wait_child_ru(pid, secs, NULL);
}

static void kill_wait(pid_t pid)
{
    kill(pid, SIGKILL);
    wait_child(pid, 10.0);
}

/* The last non-empty line of a log file into out. */
static void log_last_line(const char *log, char *out, size_t len)
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

/* A number following "key": in a JSON line, or NAN. */
static double json_num(const char *line, const char *key)
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

/* Line reader over a pipe. */
struct lines {
    int fd;
    char buf[1 << 16];
    size_t len;
    bool eof;
};

/* Returns the next complete line (NUL-terminated, in l->buf, valid until the next call) or NULL
 * when none arrives within ms milliseconds (check l->eof). Overlong lines are cut. */
static char *next_line(struct lines *l, int ms, size_t *consumed)
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

/* Drops path's pages from the page cache (so each engine starts cold and its reads are charged
 * to its own cgroup). */
static void drop_cache(const char *path)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return;
    fdatasync(fd);
    posix_fadvise(fd, 0, 0, POSIX_FADV_DONTNEED);
    close(fd);
}

/* --- the stack's counters ------------------------------------------------------------------- */

#define NF_BENCH_MAX_CTR 96

struct ctr_snap {
    bool ok[NF_N_ROLES];
    int n[NF_N_ROLES];
    char name[NF_N_ROLES][NF_BENCH_MAX_CTR][32];
    uint64_t val[NF_N_ROLES][NF_BENCH_MAX_CTR];
    double t;
};

static uint64_t ctr(const struct ctr_snap *s, int role, const char *name)
{
    for (int i = 0; i < s->n[role]; i++)
        if (!strcmp(s->name[role][i], name))
            return s->val[role][i];
    return 0;
}

/* Asks each daemon of the stack in dir for its Stats and keeps its own stage's counters. */
static void take_snap(const char *dir, struct ctr_snap *s)
{
    memset(s, 0, sizeof(*s));
    s->t = nf_now_s();
    for (int i = 0; i < NF_N_ROLES; i++) {
        char err[256];
        int fd = nf_ctl_connect(dir, nf_stack_roles[i], 2000, err, sizeof(err));
        if (fd < 0)
            continue;
        nf_envelope req, *r = NULL;
        Nanoflow__StatsRequest sr;
        nanoflow__envelope__init(&req);
        nanoflow__stats_request__init(&sr);
        req.msg_case = NANOFLOW__ENVELOPE__MSG_STATS_REQUEST;
        req.stats_request = &sr;
        int rc = nf_ctl_request(fd, &req, &r, 5000);
        close(fd);
        if (rc == 0 && r->msg_case == NANOFLOW__ENVELOPE__MSG_STATS) {
            for (size_t k = 0; k < r->stats->n_stages; k++) {
                const Nanoflow__StageStats *sg = r->stats->stages[k];
                if (!sg->stage || strcmp(sg->stage, nf_stack_roles[i]))
                    continue;
                for (size_t c = 0; c < sg->n_counters && s->n[i] < NF_BENCH_MAX_CTR; c++) {
                    snprintf(s->name[i][s->n[i]], sizeof(s->name[i][0]), "%s",
                             sg->counters[c]->name ? sg->counters[c]->name : "");
                    s->val[i][s->n[i]++] = sg->counters[c]->value;
                }
                s->ok[i] = true;
            }
        }
        nf_envelope_free(r);
    }
}

static double ratio(double num, double den)
{
    return den > 0 ? num / den : NAN;
}

/* --- one engine run --------------------------------------------------------------------------- */

/* Creates this phase's cgroup when cgroups are in use; false when it could not (row error). */
static bool phase_cgroup(struct bench *b, struct nf_cgroup *cg, const char *phase, struct row *r)
{
    if (!b->use_cgroup)
        return true;
    char name[128], why[512];
    const char *env = getenv("NANOFLOW_BENCH_CGROUP");
    snprintf(name, sizeof(name), "%s-%s", env && *env ? env : "nanoflow-bench", phase);
    if (!env || !*env) {
        char pidpart[32];
        snprintf(pidpart, sizeof(pidpart), "-%d", (int)getpid());
        strncat(name, pidpart, sizeof(name) - strlen(name) - 1);
    }
    int rc = nf_cgroup_create(cg, name, b->o.ram, why, sizeof(why));
    if (rc < 0) {
        nf_errf(r->error, sizeof(r->error), 0, "memory cgroup: %s", why);
        return false;
    }
    return true;
}

static void phase_peak(struct nf_cgroup *cg, bool have_cg, struct row *r, uint64_t hwm_bytes)
{
    if (have_cg) {
        bool kernel = false;
        if (nf_cgroup_peak(cg, &r->peak, &kernel) == 0)
            r->peak_src = kernel ? (cg->version == 2 ? "memory.peak" : "memory.max_usage_in_bytes")
                                 : "polled memory usage";
        nf_cgroup_oom(cg, &r->oom_kills, &r->limit_hits);
    } else {
        r->peak = hwm_bytes;
        r->peak_src = "VmHWM";
    }
}

/* Reads a generation's JSON Lines from fd (gen --json or run --json): counts tokens (progress),
 * stops the child with sig after the time box, and fills tok_s / tokens. Calls tick(ud, pid)
 * about every 200 ms and after every token. Returns true when the summary line arrived. */
static bool follow_gen(struct bench *b, struct row *r, pid_t pid, int fd, int sig,
                       void (*tick)(void *ud, pid_t pid, int tokens), void *ud)
{
    static struct lines l;
    l.fd = fd;
    l.len = 0;
    l.eof = false;
    size_t consumed = 0;
    double t0 = nf_now_s(), deadline = t0 + (double)b->o.timeout, t_first = 0, t_last = 0;
    double last_report = 0;
    bool signalled = false, summary = false;
    while (!l.eof) {
        double now = nf_now_s();
        if (!signalled && (now > deadline || nf_bench_stop)) {
            kill(pid, sig);
            signalled = true;
            r->timed_out = !nf_bench_stop;
            deadline = now + NF_BENCH_CANCEL_WAIT;
            progress(b, "%s: %s after %d tokens", r->mode,
                     nf_bench_stop ? "interrupted" : "time box reached, stopping", r->tokens);
        } else if (signalled && now > deadline) {
            kill(pid, SIGKILL);
            break;
        }
        char *line = next_line(&l, 200, &consumed);
        tick(ud, pid, r->tokens);
        if (!line)
            continue;
        if (strstr(line, "\"gen_ids\"")) {
            summary = true;
            double ts = json_num(line, "decode_tok_s");
            if (!isnan(ts) && ts > 0)
                r->tok_s = ts;
            continue;
        }
        if (strncmp(line, "{\"id\":", 6))
            continue;
        r->tokens++;
        t_last = nf_now_s();
        if (r->tokens == 1)
            t_first = t_last;
        if (b->tty || t_last - last_report > 1.0 || r->tokens == b->o.n) {
            last_report = t_last;
            progress(b, "%s: tokens %d/%ld", r->mode, r->tokens, b->o.n);
        }
    }
    /* Cut short: the rate of the tokens that arrived after the first (prompt) one. */
    if (!summary && r->tokens >= 2 && t_last > t_first)
        r->tok_s = (r->tokens - 1) / (t_last - t_first);
    (void)t0;
    return summary;
}

struct stack_tick {
    struct nf_cgroup *cg;
    bool have_cg;
};

static void stack_tick(void *ud, pid_t pid, int tokens)
{
    (void)pid;
    (void)tokens;
    struct stack_tick *st = ud;
    if (st->have_cg)
        nf_cgroup_poll(st->cg);
}

static void run_stack(struct bench *b, struct row *r, float sparsity)
{
    char phase[32], dir[PATH_MAX], log[PATH_MAX + 32], sp[32], ram[32], thr[32], n[32];
    if (sparsity > 0)
        snprintf(phase, sizeof(phase), "sparse-%.2f", (double)sparsity);
    else
        snprintf(phase, sizeof(phase), "exact");
    snprintf(r->mode, sizeof(r->mode), sparsity > 0 ? "stack s=%.2f" : "stack exact",
             (double)sparsity);
    r->sparsity = sparsity;
    if ((size_t)snprintf(dir, sizeof(dir), "%s/%s", b->base, phase) >= sizeof(dir)) {
        nf_errf(r->error, sizeof(r->error), 0, "run directory name too long");
        return;
    }
    snprintf(log, sizeof(log), "%s.log", dir);
    snprintf(sp, sizeof(sp), "%g", (double)sparsity);
    snprintf(ram, sizeof(ram), "%llu", (unsigned long long)b->o.ram);
    snprintf(thr, sizeof(thr), "%ld", b->o.threads);
    snprintf(n, sizeof(n), "%ld", b->o.n);
    struct nf_cgroup cg;
    bool have_cg = b->use_cgroup;
    if (!phase_cgroup(b, &cg, phase, r))
        return;
    drop_cache(b->nft);
    progress(b, "%s: up (run dir %s%s)", r->mode, dir, have_cg ? ", in its memory cgroup" : "");
    char ctx[32];
    snprintf(ctx, sizeof(ctx), "%u", b->n_ctx);
    char *up_argv[] = {NULL, "up", "--model",    b->nft, "--ram", ram, "--run-dir", dir,
                       "-t", thr,  "--sparsity", sp,     "--ctx", ctx, NULL};
    pid_t pid = spawn(b, up_argv, have_cg ? &cg : NULL, NULL, log);
    int st = pid > 0 ? wait_child(pid, NF_BENCH_UP_TIMEOUT) : -1;
    if (pid > 0 && st < 0)
        kill_wait(pid);
    if (st != 0) {
        char last[300];
        log_last_line(log, last, sizeof(last));
        nf_errf(r->error, sizeof(r->error), 0, "up failed (%s): %s", st < 0 ? "timeout" : "exit",
                last);
        goto down;
    }
    struct ctr_snap *s0 = calloc(1, sizeof(*s0)), *s1 = calloc(1, sizeof(*s1));
    if (!s0 || !s1) {
        free(s0);
        free(s1);
        nf_errf(r->error, sizeof(r->error), 0, "out of memory");
        goto down;
    }
    take_snap(dir, s0);
    progress(b, "%s: gen -n %ld", r->mode, b->o.n);
    char *gen_argv[] = {NULL,     "gen", "--run-dir", dir, "-n",     n,
                        "--temp", "0",   "--seed",    "1", "--json", NULL};
    int out_fd = -1;
    pid = spawn(b, gen_argv, NULL, &out_fd, log);
    if (pid < 0) {
        nf_errf(r->error, sizeof(r->error), 0, "cannot start gen: %s", strerror(errno));
    } else {
        struct stack_tick tk = {&cg, have_cg};
        bool summary = follow_gen(b, r, pid, out_fd, SIGINT, stack_tick, &tk);
        close(out_fd);
        st = wait_child(pid, NF_BENCH_CANCEL_WAIT);
        if (st < 0)
            kill_wait(pid);
        if (!summary && !r->timed_out) {
            char last[300];
            log_last_line(log, last, sizeof(last));
            nf_errf(r->error, sizeof(r->error), 0, "gen failed: %s", last);
        }
        take_snap(dir, s1);
        r->ran = r->tokens > 0;
        double bytes = (double)(ctr(s1, 0, "bytes") - ctr(s0, 0, "bytes"));
        double busy = (double)(ctr(s1, 0, "busy_ns") - ctr(s0, 0, "busy_ns")) * 1e-9;
        double hits = (double)(ctr(s1, 0, "hits") - ctr(s0, 0, "hits"));
        double used = (double)(ctr(s1, 2, "tile_bytes_used") - ctr(s0, 2, "tile_bytes_used"));
        double miss = (double)(ctr(s1, 0, "misses") - ctr(s0, 0, "misses"));
        double tp = (double)(ctr(s1, 1, "true_pos") - ctr(s0, 1, "true_pos"));
        double fn = (double)(ctr(s1, 1, "false_neg") - ctr(s0, 1, "false_neg"));
        double toks = (double)(ctr(s1, 2, "prompt_tokens") + ctr(s1, 2, "decode_tokens") -
                               ctr(s0, 2, "prompt_tokens") - ctr(s0, 2, "decode_tokens"));
        double ns = (double)(ctr(s1, 2, "prompt_ns") + ctr(s1, 2, "decode_ns") -
                             ctr(s0, 2, "prompt_ns") - ctr(s0, 2, "decode_ns"));
        double stall = (double)(ctr(s1, 2, "stall_ns") - ctr(s0, 2, "stall_ns"));
        if (s1->ok[0]) {
            r->mb_s = ratio(bytes / 1e6, s1->t - s0->t);
            r->busy_mb_s = ratio(bytes / 1e6, busy);
            r->bytes_per_tok = ratio(bytes, toks);
            r->req_hit_rate = ratio(hits, hits + miss);
            /* Bytes compute used that were already resident (a prefetched tile read during
             * this generation counts as read). */
            if (s1->ok[2] && used > 0) {
                r->used_per_tok = ratio(used, toks);
                r->hit_rate = bytes >= used ? 0.0 : 1.0 - bytes / used;
            }
        }
        if (s1->ok[1])
            r->recall = ratio(tp, tp + fn);
        if (s1->ok[2])
            r->stall = ratio(stall, ns);
        uint64_t hwm = 0;
        for (int i = 0; i < NF_N_ROLES && !have_cg; i++) {
            int dp = nf_pidfile_read(dir, nf_stack_roles[i]);
            if (dp > 0)
                hwm += nf_proc_value(dp, "status", "VmHWM") * 1024;
        }
        phase_peak(&cg, have_cg, r, hwm);
    }
    free(s0);
    free(s1);
down:
    progress(b, "%s: down", r->mode);
    char *down_argv[] = {NULL, "down", "--run-dir", dir, NULL};
    pid = spawn(b, down_argv, NULL, NULL, log);
    if (pid > 0 && wait_child(pid, NF_BENCH_DOWN_WAIT) < 0)
        kill_wait(pid);
    if (have_cg) {
        int rc = nf_cgroup_remove(&cg);
        if (rc < 0)
            progress(b, "warning: cannot remove cgroup %s: %s", cg.path, strerror(-rc));
    }
}

struct mmap_tick {
    struct nf_cgroup *cg;
    bool have_cg;
    uint64_t read_bytes, hwm_kb;
    double t_first_io, t_last_io;
    uint64_t rb_first; /* read_bytes when the first token arrived */
    int last_tokens;
};

static void mmap_tick(void *ud, pid_t pid, int tokens)
{
    struct mmap_tick *m = ud;
    if (m->have_cg)
        nf_cgroup_poll(m->cg);
    uint64_t rb = nf_proc_value(pid, "io", "read_bytes");
    if (rb > m->read_bytes)
        m->read_bytes = rb;
    uint64_t h = nf_proc_value(pid, "status", "VmHWM");
    if (h > m->hwm_kb)
        m->hwm_kb = h;
    if (tokens == 1 && m->last_tokens == 0) {
        m->rb_first = m->read_bytes;
        m->t_first_io = nf_now_s();
    }
    if (tokens > m->last_tokens)
        m->t_last_io = nf_now_s();
    m->last_tokens = tokens;
}

static void run_mmap(struct bench *b, struct row *r)
{
    snprintf(r->mode, sizeof(r->mode), "mmap");
    r->is_mmap = true;
    if (!b->gguf[0]) {
        nf_errf(r->error, sizeof(r->error), 0, "needs the .gguf (the model given is a .nft)");
        return;
    }
    char log[PATH_MAX + 32], thr[32], n[32], ctx[32];
    snprintf(log, sizeof(log), "%s/mmap.log", b->base);
    snprintf(thr, sizeof(thr), "%ld", b->o.threads);
    snprintf(n, sizeof(n), "%ld", b->o.n);
    snprintf(ctx, sizeof(ctx), "%u", b->n_ctx ? b->n_ctx : 256u);
    struct nf_cgroup cg;
    bool have_cg = b->use_cgroup;
    if (!phase_cgroup(b, &cg, "mmap", r))
        return;
    drop_cache(b->gguf);
    progress(b, "mmap: run --mmap -n %ld -c %s%s", b->o.n, ctx,
             have_cg ? " in its memory cgroup" : "");
    char *argv[] = {NULL, "run", "--mmap", "-m", b->gguf,  "-n", n,        "-c", ctx,
                    "-t", thr,   "--temp", "0",  "--seed", "1",  "--json", NULL};
    int out_fd = -1;
    pid_t pid = spawn(b, argv, have_cg ? &cg : NULL, &out_fd, log);
    if (pid < 0) {
        nf_errf(r->error, sizeof(r->error), 0, "cannot start run --mmap: %s", strerror(errno));
    } else {
        struct mmap_tick mt = {.cg = &cg, .have_cg = have_cg};
        double t0 = nf_now_s();
        bool summary = follow_gen(b, r, pid, out_fd, SIGKILL, mmap_tick, &mt);
        double t1 = nf_now_s();
        close(out_fd);
        uint64_t maxrss_kb = 0;
        int st = wait_child_ru(pid, NF_BENCH_CANCEL_WAIT, &maxrss_kb);
        if (st < 0)
            kill_wait(pid);
        if (maxrss_kb > mt.hwm_kb)
            mt.hwm_kb = maxrss_kb;
        if (!summary && !r->timed_out) {
            char last[300];
            log_last_line(log, last, sizeof(last));
            nf_errf(r->error, sizeof(r->error), 0, "run --mmap failed (exit %d): %s", st, last);
        }
        r->ran = r->tokens > 0;
        /* Every evaluated token: the prompt (BOS) and each generated one but the last. */
        double toks = (double)r->tokens;
        r->bytes_per_tok = ratio((double)mt.read_bytes, toks);
        r->mb_s = ratio((double)mt.read_bytes / 1e6, t1 - t0);
        phase_peak(&cg, have_cg, r, mt.hwm_kb * 1024);
        (void)mt.rb_first;
    }
    if (have_cg) {
        int rc = nf_cgroup_remove(&cg);
        if (rc < 0)
            progress(b, "warning: cannot remove cgroup %s: %s", cg.path, strerror(-rc));
    }
}

/* --- output ----------------------------------------------------------------------------------- */

static void fmt_num(char *buf, size_t len, double v, const char *fmt)
{
    if (isnan(v))
        snprintf(buf, len, "-");
    else
        snprintf(buf, len, fmt, v);
}

static void print_table(const struct bench *b)
{
    char sz[32];
    printf("nanoflowctl bench: %s\n", b->gguf[0] ? b->gguf : b->nft);
    printf("  tiles: %s\n", b->nft);
    printf("  budget %s, context %u tokens, %ld tokens per engine (greedy, prompt = BOS), %ld "
           "threads per engine, time box %ld s\n",
           nf_ctl_fmt_size(sz, sizeof(sz), b->o.ram), b->n_ctx, b->o.n, b->o.threads, b->o.timeout);
    if (b->use_cgroup)
        printf("  memory cgroup: v%d, a fresh one per engine under %s, limit %llu bytes "
               "(peak = the cgroup's, page cache included)\n",
               b->cg_version, b->cg_where, (unsigned long long)b->o.ram);
    else
        printf("  memory cgroup: not used (%s); peak = the processes' VmHWM (the stack's shared "
               "region counted in each daemon)\n",
               b->cg_why);
    if (b->raw.ok) {
        printf("  raw read: %.1f MB/s (%s, O_DIRECT, qd %u, %llu tiles of %.0f KiB on average, "
               "%.1f MiB in file order in %.2f s)\n",
               b->raw.mb_s, b->raw.backend, NF_BENCH_QD, (unsigned long long)b->raw.reads,
               b->raw.avg_tile / 1024.0, (double)b->raw.bytes / 1048576.0, b->raw.secs);
        char after[64];
        fmt_num(after, sizeof(after), b->raw_pass[1].ok ? b->raw_pass[1].mb_s : NAN, "%.1f MB/s");
        printf("            the faster of two passes: before the engines %.1f MB/s, after %s\n",
               b->raw_pass[0].mb_s, after);
    } else
        printf("  raw read: failed: %s\n", b->raw.error);
    printf("\n%-13s %8s %10s %10s %9s %8s %7s %7s %11s %8s %10s %9s\n", "ENGINE", "tok/s",
           "MB/s read", "busy MB/s", "MB/token", "hit rate", "recall", "stall", "peak mem",
           "vs mmap", "I/O bound", "vs bound");
    printf("%-13s %8s %10s %10s %9s %8s %7s %7s %11s %8s %10s %9s\n", "", "", "", "", "", "", "",
           "", "", "", "tok/s", "");
    for (int i = 0; i < b->n_rows; i++) {
        const struct row *r = &b->rows[i];
        char c[12][32];
        fmt_num(c[0], 32, r->ran ? r->tok_s : NAN, "%.3f");
        fmt_num(c[1], 32, r->mb_s, "%.1f");
        fmt_num(c[2], 32, r->busy_mb_s, "%.1f");
        fmt_num(c[3], 32, r->bytes_per_tok / 1e6, "%.1f");
        fmt_num(c[4], 32, r->hit_rate * 100.0, "%.1f%%");
        fmt_num(c[5], 32, r->recall * 100.0, "%.1f%%");
        fmt_num(c[6], 32, r->stall * 100.0, "%.1f%%");
        if (r->peak)
            nf_ctl_fmt_size(c[7], 32, r->peak);
        else
            snprintf(c[7], 32, "-");
        fmt_num(c[8], 32, r->vs_mmap, "%.2fx");
        fmt_num(c[9], 32, r->io_bound, "%.3f");
        fmt_num(c[10], 32, r->vs_io_bound, "%.2fx");
        printf("%-13s %8s %10s %10s %9s %8s %7s %7s %11s %8s %10s %9s\n", r->mode, c[0], c[1], c[2],
               c[3], c[4], c[5], c[6], c[7], c[8], c[9], c[10]);
    }
    printf("\n");
    for (int i = 0; i < b->n_rows; i++) {
        const struct row *r = &b->rows[i];
        if (r->error[0])
            printf("  %s: %s%s\n", r->mode, r->timed_out ? "time box reached; " : "", r->error);
        else if (r->timed_out)
            printf("  %s: time box reached after %d of %ld tokens (rate from those)\n", r->mode,
                   r->tokens, b->o.n);
        if (r->oom_kills || r->limit_hits)
            printf("  %s: cgroup OOM kills %llu, limit reached %llu times\n", r->mode,
                   (unsigned long long)r->oom_kills, (unsigned long long)r->limit_hits);
    }
    printf(
        "tok/s: decode tokens per second (the stack's GenerateDone timings, run's summary).\n"
        "MB/s read: bytes read from disk over the generation's wall time (stack: fetcher\n"
        "bytes; mmap: the process's read_bytes); busy MB/s: fetcher bytes per second with a\n"
        "read in flight. MB/token: bytes read per evaluated token (1 MB = 10^6 bytes).\n"
        "hit rate: share of the weight bytes used per token that needed no read (stack:\n"
        "1 - fetched / tile bytes compute used; mmap: 1 - read / what exact mode uses).\n"
        "recall: predictor vs the FFN groups or experts compute used ('-': not tracked, as\n"
        "in exact mode); stall: share of compute time waiting for tiles. I/O bound =\n"
        "raw MB/s / MB per token; vs bound = tok/s / I/O bound; vs mmap = tok/s / mmap tok/s.\n");
}

static void jnum(const char *key, double v, bool comma)
{
    if (isnan(v) || isinf(v))
        printf("\"%s\":null", key);
    else
        printf("\"%s\":%.6g", key, v);
    if (comma)
        putchar(',');
}

static void jstr(const char *key, const char *s, bool comma)
{
    printf("\"%s\":", key);
    if (s)
        nf_json_str(stdout, (const unsigned char *)s, strlen(s));
    else
        printf("null");
    if (comma)
        putchar(',');
}

static void print_json(const struct bench *b)
{
    printf("{");
    jstr("model", b->gguf[0] ? b->gguf : b->nft, true);
    jstr("nft", b->nft, true);
    printf("\"ram_budget\":%llu,\"n_predict\":%ld,\"threads\":%ld,\"timeout_s\":%ld,"
           "\"n_ctx\":%u,",
           (unsigned long long)b->o.ram, b->o.n, b->o.threads, b->o.timeout, b->n_ctx);
    printf("\"cgroup\":{\"used\":%s,", b->use_cgroup ? "true" : "false");
    if (b->use_cgroup)
        printf("\"version\":%d,", b->cg_version);
    jstr("where", b->use_cgroup ? b->cg_where : NULL, true);
    jstr("reason", b->use_cgroup ? NULL : b->cg_why, false);
    printf("},\"raw\":{\"ok\":%s,", b->raw.ok ? "true" : "false");
    jstr("backend", b->raw.backend, true);
    printf("\"qd\":%u,\"bytes\":%llu,\"reads\":%llu,", NF_BENCH_QD,
           (unsigned long long)b->raw.bytes, (unsigned long long)b->raw.reads);
    jnum("secs", b->raw.secs, true);
    jnum("avg_tile_bytes", b->raw.avg_tile, true);
    jnum("mb_s", b->raw.ok ? b->raw.mb_s : NAN, true);
    jnum("mb_s_before", b->raw_pass[0].ok ? b->raw_pass[0].mb_s : NAN, true);
    jnum("mb_s_after", b->raw_pass[1].ok ? b->raw_pass[1].mb_s : NAN, true);
    jstr("error", b->raw.error[0] ? b->raw.error : NULL, false);
    printf("},\"rows\":[");
    for (int i = 0; i < b->n_rows; i++) {
        const struct row *r = &b->rows[i];
        printf("%s{", i ? "," : "");
        jstr("mode", r->mode, true);
        jstr("engine", r->is_mmap ? "mmap" : "stack", true);
        jnum("sparsity", r->sparsity, true);
        printf("\"ran\":%s,\"timed_out\":%s,\"tokens\":%d,", r->ran ? "true" : "false",
               r->timed_out ? "true" : "false", r->tokens);
        jnum("tok_s", r->ran ? r->tok_s : NAN, true);
        jnum("mb_s", r->mb_s, true);
        jnum("busy_mb_s", r->busy_mb_s, true);
        jnum("bytes_per_token", r->bytes_per_tok, true);
        jnum("hit_rate", r->hit_rate, true);
        jnum("request_hit_rate", r->req_hit_rate, true);
        jnum("used_bytes_per_token", r->used_per_tok, true);
        jnum("recall", r->recall, true);
        jnum("stall_share", r->stall, true);
        if (r->peak)
            printf("\"peak_bytes\":%llu,", (unsigned long long)r->peak);
        else
            printf("\"peak_bytes\":null,");
        jstr("peak_source", r->peak_src, true);
        printf("\"oom_kills\":%llu,\"limit_hits\":%llu,", (unsigned long long)r->oom_kills,
               (unsigned long long)r->limit_hits);
        jnum("vs_mmap", r->vs_mmap, true);
        jnum("io_bound_tok_s", r->io_bound, true);
        jnum("vs_io_bound", r->vs_io_bound, true);
        jstr("error", r->error[0] ? r->error : NULL, false);
        printf("}");
    }
    printf("]}\n");
}

static int rm_entry(const char *path, const struct stat *st, int type, struct FTW *ftw)
{
    (void)st;
    (void)type;
    (void)ftw;
    remove(path);
    return 0;
}

/* --- main --------------------------------------------------------------------------------- */

static void row_init(struct row *r)
{
    memset(r, 0, sizeof(*r));
    r->tok_s = r->mb_s = r->busy_mb_s = r->bytes_per_tok = NAN;
    r->hit_rate = r->req_hit_rate = r->used_per_tok = r->recall = r->stall = NAN;
    r->vs_mmap = r->io_bound = r->vs_io_bound = NAN;
}

int nf_cmd_bench(int argc, char **argv)
{
    static struct bench b; /* large (rows, paths): not on the stack */
    memset(&b, 0, sizeof(b));
    int rc = parse_args(argc, argv, &b.o);
    if (rc)
        return rc == 1 ? 0 : rc;
    b.t_start = nf_now_s();
    b.tty = isatty(2);
    ssize_t sl = readlink("/proc/self/exe", b.self, sizeof(b.self) - 1);
    if (sl <= 0) {
        fprintf(stderr, "nanoflowctl bench: cannot find our own binary: %s\n", strerror(errno));
        return 1;
    }
    b.self[sl] = '\0';
    char absm[PATH_MAX];
    if (!realpath(b.o.model, absm)) {
        fprintf(stderr, "nanoflowctl bench: %s: %s\n", b.o.model, strerror(errno));
        return 1;
    }
    /* A .gguf is converted once to the cached .nft that `up` uses. */
    if (nf_up_resolve_model(absm, b.nft, sizeof(b.nft)))
        return 1;
    if (strcmp(absm, b.nft))
        snprintf(b.gguf, sizeof(b.gguf), "%s", absm);
    char err[512];
    struct nf_nft *f = NULL;
    if ((rc = nf_nft_open(&f, b.nft, false, err, sizeof(err))) < 0) {
        fprintf(stderr, "nanoflowctl bench: %s\n", err);
        return 1;
    }
    struct nf_stack_plan plan;
    /* Every engine gets the same thread count: what the stack would pick for -t 0. */
    b.o.threads = (long)nf_stack_compute_threads((uint32_t)b.o.threads);
    if (nf_stack_plan(f, b.o.ram, (uint32_t)b.o.ctx, (int)b.o.threads, &plan, err, sizeof(err)) <
        0) {
        fprintf(stderr, "nanoflowctl bench: %s\n", err);
        nf_nft_close(f);
        return 1;
    }
    b.n_ctx = plan.n_ctx;

    if (b.o.run_dir) {
        snprintf(b.base, sizeof(b.base), "%s", b.o.run_dir);
        if (nf_rundir_create(b.base, err, sizeof(err)) < 0) {
            fprintf(stderr, "nanoflowctl bench: %s\n", err);
            nf_nft_close(f);
            return 1;
        }
    } else {
        snprintf(b.base, sizeof(b.base), "/tmp/nanoflow-bench-XXXXXX");
        if (!mkdtemp(b.base)) {
            fprintf(stderr, "nanoflowctl bench: cannot create %s: %s\n", b.base, strerror(errno));
            nf_nft_close(f);
            return 1;
        }
        b.base_made = true;
    }
    struct sigaction sa = {0};
    sa.sa_handler = on_signal;
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);

    /* Can we make memory cgroups? Try once with a probe cgroup. */
    if (b.o.no_cgroup) {
        snprintf(b.cg_why, sizeof(b.cg_why), "--no-cgroup");
    } else {
        struct nf_cgroup probe;
        char name[96];
        const char *env = getenv("NANOFLOW_BENCH_CGROUP");
        snprintf(name, sizeof(name), "%s-probe-%d", env && *env ? env : "nanoflow-bench",
                 (int)getpid());
        if (nf_cgroup_create(&probe, name, b.o.ram, b.cg_why, sizeof(b.cg_why)) == 0) {
            b.use_cgroup = true;
            b.cg_version = probe.version;
            snprintf(b.cg_where, sizeof(b.cg_where), "%.*s",
                     (int)(strrchr(probe.path, '/') - probe.path), probe.path);
            nf_cgroup_remove(&probe);
        }
    }
    if (b.use_cgroup)
        progress(&b, "memory cgroups: v%d under %s, limit %llu bytes per engine", b.cg_version,
                 b.cg_where, (unsigned long long)b.o.ram);
    else
        progress(&b, "memory cgroups not used: %s (peak memory from VmHWM)", b.cg_why);

    /* Pending writeback (a conversion just written, say) would slow the first pass down. */
    int sfd = open(b.nft, O_RDONLY | O_CLOEXEC);
    if (sfd >= 0) {
        syncfs(sfd);
        close(sfd);
    }
    bench_raw(&b, f, &b.raw_pass[0]);
    if (b.raw_pass[0].ok)
        progress(&b, "raw: %.1f MB/s (%s)", b.raw_pass[0].mb_s, b.raw_pass[0].backend);
    else
        progress(&b, "raw: failed: %s", b.raw_pass[0].error);

    float levels[NF_BENCH_MAX_LEVELS + 1] = {0};
    int n_levels = 1;
    for (int i = 0; i < b.o.n_levels; i++)
        levels[n_levels++] = b.o.levels[i];
    for (int i = 0; i < n_levels && !nf_bench_stop; i++) {
        struct row *r = &b.rows[b.n_rows++];
        row_init(r);
        run_stack(&b, r, levels[i]);
    }
    struct row *mm = NULL;
    if (!nf_bench_stop) {
        mm = &b.rows[b.n_rows++];
        row_init(mm);
        run_mmap(&b, mm);
    }
    /* A second raw pass after the engines: the bound uses the faster of the two, so a disk
     * busy with someone else's writes during one pass does not flatter the engines. */
    if (!nf_bench_stop && b.raw_pass[0].ok) {
        bench_raw(&b, f, &b.raw_pass[1]);
        if (b.raw_pass[1].ok)
            progress(&b, "raw (after the engines): %.1f MB/s", b.raw_pass[1].mb_s);
    }
    nf_nft_close(f);
    b.raw = b.raw_pass[0];
    if (b.raw_pass[1].ok && (!b.raw.ok || b.raw_pass[1].mb_s > b.raw.mb_s))
        b.raw = b.raw_pass[1];
    /* Ratios. */
    for (int i = 0; i < b.n_rows; i++) {
        struct row *r = &b.rows[i];
        if (!r->ran)
            continue;
        if (b.raw.ok && r->bytes_per_tok > 0)
            r->io_bound = b.raw.mb_s * 1e6 / r->bytes_per_tok;
        r->vs_io_bound = ratio(r->tok_s, r->io_bound);
        if (!r->is_mmap && mm && mm->ran)
            r->vs_mmap = ratio(r->tok_s, mm->tok_s);
    }
    /* The mmap engine uses the exact engine's bytes per token: what it did not read was hit. */
    if (mm && mm->ran && b.n_rows > 1 && b.rows[0].ran && b.rows[0].used_per_tok > 0 &&
        mm->bytes_per_tok >= 0) {
        double u = b.rows[0].used_per_tok;
        mm->hit_rate = mm->bytes_per_tok >= u ? 0.0 : 1.0 - mm->bytes_per_tok / u;
    }
    if (b.o.json)
        print_json(&b);
    else
        print_table(&b);
    fflush(stdout);
    if (b.base_made)
        nftw(b.base, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
    progress(&b, "done");
    bool ok = b.raw.ok && !nf_bench_stop;
    for (int i = 0; i < b.n_rows; i++)
        ok = ok && b.rows[i].ran && !b.rows[i].error[0];
    return nf_bench_stop ? 130 : ok ? 0 : 1;
}
