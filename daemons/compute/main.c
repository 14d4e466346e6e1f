/* main.c - nanoflow-compute: runs generations with the tile-streaming engine over the stack's pool.
 *
 * Startup: flags, the run directory, detach, the pid file, the .nft (index and metadata only:
 * the fetcher reads the tiles), the vocabulary, the stack's region (attached once the fetcher
 * created it and set its ready bit), the generation worker (which creates the engine with the
 * plan's n_ctx, threads and sparsity) and the control server on compute.sock. Then bit 2 of
 * sync->ready_mask and health READY. Requests: Generate (queued FIFO, one generation at a time,
 * streamed as TokenEvents then GenerateDone), Cancel, Stats, Shutdown; Hello/Health are answered
 * by the server. SIGTERM/SIGINT = Shutdown. */
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <inttypes.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>
#include <unistd.h>
#include <uv.h>

#include "daemon.h"
#include "gen.h"
#include "nf_err.h"
#include "nf_size.h"
#include "nft.h"
#include "stack.h"
#include "tokenizer.h"
#include "nf_time.h"

struct opts {
    const char *run_dir, *model, *log_level;
    uint64_t ram; /* informational: the fetcher's plan holds the budget */
    int n_threads, n_ctx, max_tokens;
    float sparsity;
    bool sparsity_set, foreground;
    int attach_timeout_s;
};

struct compute {
    struct opts o;
    char dir[PATH_MAX];
    struct nf_nft *f;
    struct nf_vocab *v;
    struct nf_stack st;
    bool attached;
    struct nf_gen gen;
    uv_loop_t loop;
    bool loop_init;
    struct nf_server *srv;
    uv_signal_t sigterm, sigint;
    uv_timer_t mem_timer, stop_timer;
    bool stopping;
};

static void usage(FILE *out)
{
    fprintf(out,
            "usage: nanoflow-compute --model FILE.nft [--run-dir DIR] [--ram SIZE] [-t N]\n"
            "                        [--sparsity S] [--ctx N] [--attach-timeout S]\n"
            "                        [--max-tokens-per-request N] [--foreground]\n"
            "                        [--log-level error|warn|info|debug]\n\n"
            "Runs generations for nanoflowctl gen, streaming weight tiles from the stack's shared\n"
            "pool (filled by nanoflow-fetcher). The context length, thread count and sparsity\n"
            "come from the stack's plan; -t, --ctx and --sparsity override them.\n\n"
            "  --model FILE        the stack's .nft tile file (required)\n"
            "  --run-dir DIR       run directory (default: $NANOFLOW_RUN_DIR, else\n"
            "                      $XDG_RUNTIME_DIR/nanoflow, else /tmp/nanoflow-UID)\n"
            "  --ram SIZE          RAM budget of the stack, checked but informational: the\n"
            "                      region's plan rules (default: the plan's)\n"
            "  -t, --threads N     compute threads, 0..1024; 0 = one per CPU but one, at\n"
            "                      least 1 (default: the plan's)\n"
            "  --sparsity S        fraction of FFN groups skipped, in [0, 1); 0 = exact\n"
            "                      (default: the plan's)\n"
            "  --ctx N             context length, 0..16777216; 0 = the plan's (default: the\n"
            "                      plan's)\n"
            "  --max-tokens-per-request N\n"
            "                      tokens one request may generate, 1..1000000; a request\n"
            "                      asking more is clamped (its reply says so) so that requests\n"
            "                      queued behind it wait less (default %d)\n"
            "  --attach-timeout S  seconds to wait for the fetcher's region, 1..3600\n"
            "                      (default 30)\n"
            "  --foreground        stay attached, log to stderr (default: detach and log to\n"
            "                      DIR/compute.log)\n"
            "  --log-level L       error, warn, info or debug (default: info)\n"
            "  -h, --help          show this help\n",
            NF_GEN_DEFAULT_MAX_TOKENS);
}

static int bad_flag(const char *flag, const char *val)
{
    fprintf(stderr, "nanoflow-compute: invalid value '%s' for %s (try 'nanoflow-compute --help')\n",
            val, flag);
    return -1;
}

static int parse_long(const char *s, long lo, long hi, long *out)
{
    char *end;
    errno = 0;
    long v = strtol(s, &end, 10);
    if (errno || end == s || *end || v < lo || v > hi)
        return -EINVAL;
    *out = v;
    return 0;
}

/* True when s is a size as the fetcher takes it: nf_parse_size's spelling, positive, fitting
 * in an int64 (e.g. 1G). */
static bool ram_valid(const char *s)
{
    uint64_t v;
    return nf_parse_size(s, &v) == 0 && v > 0 && v <= (uint64_t)9.0e18;
}

/* Returns 0, 1 after --help, or -1 after a usage error (message printed). */
static int parse_args(int argc, char **argv, struct opts *o)
{
    enum { O_RUN = 256, O_MODEL, O_RAM, O_SPARS, O_CTX, O_FG, O_LOG, O_ATTACH, O_MAXTOK };
    static const struct option lo[] = {
        {"run-dir", required_argument, NULL, O_RUN},
        {"model", required_argument, NULL, O_MODEL},
        {"ram", required_argument, NULL, O_RAM},
        {"threads", required_argument, NULL, 't'},
        {"sparsity", required_argument, NULL, O_SPARS},
        {"ctx", required_argument, NULL, O_CTX},
        {"foreground", no_argument, NULL, O_FG},
        {"log-level", required_argument, NULL, O_LOG},
        {"attach-timeout", required_argument, NULL, O_ATTACH},
        {"max-tokens-per-request", required_argument, NULL, O_MAXTOK},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    memset(o, 0, sizeof(*o));
    o->log_level = "info";
    o->attach_timeout_s = 30;
    o->n_threads = -1; /* not given: the plan's */
    opterr = 0;
    int c;
    long v;
    while ((c = getopt_long(argc, argv, ":t:h", lo, NULL)) != -1) {
        switch (c) {
        case 'h': usage(stdout); return 1;
        case O_RUN: o->run_dir = optarg; break;
        case O_MODEL: o->model = optarg; break;
        case O_RAM: /* the plan in the region carries the budget; the value is only checked */
            if (!ram_valid(optarg))
                return bad_flag("--ram", optarg);
            break;
        case 't':
            if (parse_long(optarg, 0, 1024, &v))
                return bad_flag("-t", optarg);
            o->n_threads = (int)v;
            break;
        case O_SPARS: {
            char *end;
            o->sparsity = strtof(optarg, &end);
            if (*end || end == optarg || !(o->sparsity >= 0 && o->sparsity < 1))
                return bad_flag("--sparsity", optarg);
            o->sparsity_set = true;
            break;
        }
        case O_CTX:
            if (parse_long(optarg, 0, 1 << 24, &v))
                return bad_flag("--ctx", optarg);
            o->n_ctx = (int)v;
            break;
        case O_FG: o->foreground = true; break;
        case O_LOG: o->log_level = optarg; break;
        case O_ATTACH:
            if (parse_long(optarg, 1, 3600, &v))
                return bad_flag("--attach-timeout", optarg);
            o->attach_timeout_s = (int)v;
            break;
        case O_MAXTOK:
            if (parse_long(optarg, 1, NF_GEN_MAX_N_PREDICT, &v))
                return bad_flag("--max-tokens-per-request", optarg);
            o->max_tokens = (int)v;
            break;
        case ':':
            fprintf(stderr, "nanoflow-compute: %s needs a value (try 'nanoflow-compute --help')\n",
                    argv[optind - 1]);
            return -1;
        default:
            fprintf(stderr, "nanoflow-compute: unknown flag '%s' (try 'nanoflow-compute --help')\n",
                    argv[optind - 1]);
            return -1;
        }
    }
    if (optind < argc) {
        fprintf(stderr,
                "nanoflow-compute: unexpected argument '%s' (try 'nanoflow-compute --help')\n",
                argv[optind]);
        return -1;
    }
    if (!o->model) {
        fprintf(stderr, "nanoflow-compute: --model FILE.nft is required (try 'nanoflow-compute "
                        "--help')\n");
        return -1;
    }
    return 0;
}

/* Private resident memory (resident minus shared pages) from /proc/self/statm, in bytes. */
static uint64_t private_rss(void)
{
    unsigned long size, resident, shared;
    FILE *fp = fopen("/proc/self/statm", "r");
    if (!fp)
        return 0;
    int n = fscanf(fp, "%lu %lu %lu", &size, &resident, &shared);
    fclose(fp);
    if (n != 3 || resident < shared)
        return 0;
    return (uint64_t)(resident - shared) * (uint64_t)sysconf(_SC_PAGESIZE);
}

/* Attaches to the region (retrying while the fetcher creates it), then waits for the fetcher's
 * ready bit. */
static int attach_stack(struct compute *m, char *err, size_t errlen)
{
    char name[NAME_MAX];
    nf_rundir_shm_name(m->dir, name, sizeof(name));
    const int limit = m->o.attach_timeout_s * 1000;
    int waited = 0, rc;
    while ((rc = nf_stack_attach(&m->st, name, m->f, err, errlen)) < 0) {
        if ((rc != -ENOENT && rc != -EAGAIN) || waited >= limit)
            return rc;
        nf_sleep_ms(100);
        waited += 100;
    }
    m->attached = true;
    while (!(atomic_load(&m->st.sync->ready_mask) & NF_READY_FETCHER)) {
        if (atomic_load(&m->st.sync->stop)) {
            snprintf(err, errlen, "the stack is stopping");
            return -ECANCELED;
        }
        if (waited >= limit) {
            snprintf(err, errlen, "the fetcher did not become ready within %d s",
                     m->o.attach_timeout_s);
            return -ETIMEDOUT;
        }
        nf_sleep_ms(50);
        waited += 50;
    }
    return 0;
}

static int start(struct compute *m, char *err, size_t errlen)
{
    int rc = nf_nft_open(&m->f, m->o.model, false, err, errlen);
    if (rc < 0)
        return rc;
    if ((rc = nf_vocab_load(&m->v, nf_nft_gguf(m->f), err, errlen)) < 0)
        return rc;
    if ((rc = attach_stack(m, err, errlen)) < 0)
        return rc;
    const struct nf_stack_config *cfg = m->st.cfg;
    m->gen.st = &m->st;
    m->gen.f = m->f;
    m->gen.v = m->v;
    m->gen.n_ctx = m->o.n_ctx > 0 ? m->o.n_ctx : (int)cfg->n_ctx;
    /* -t 0 (what `up` passes by default): one thread per CPU but one (nf_stack_compute_threads). */
    m->gen.n_threads = (int)nf_stack_compute_threads(
        (uint32_t)(m->o.n_threads >= 0 ? m->o.n_threads : (int)cfg->n_threads));
    m->gen.sparsity = m->o.sparsity_set ? m->o.sparsity : cfg->sparsity;
    m->gen.max_tokens = m->o.max_tokens;
    if (m->gen.n_ctx < 1) {
        snprintf(err, errlen, "the stack's plan has no context room (n_ctx %u)", cfg->n_ctx);
        return NF_EUSAGE;
    }
    if ((rc = nf_gen_start(&m->gen, err, errlen)) < 0)
        return rc;
    atomic_store(&m->st.ctr->mem_compute, private_rss());
    nf_log(NF_LOG_INFO,
           "engine ready: %s, n_ctx %d, %d threads, sparsity %.2f, %.1f MiB of KV cache and "
           "scratch",
           m->o.model, m->gen.n_ctx, m->gen.n_threads, (double)m->gen.sparsity,
           (double)nf_gen_engine_bytes(&m->gen) / 1048576.0);
    return 0;
}

/* --- control server ------------------------------------------------------------------------- */

static void close_handle(uv_handle_t *h)
{
    if (!uv_is_closing(h))
        uv_close(h, NULL);
}

static void on_mem_timer(uv_timer_t *t)
{
    struct compute *m = t->data;
    atomic_store(&m->st.ctr->mem_compute, private_rss());
}

/* After the Shutdown reply had a loop turn to go out: stop serving and let the loop end. */
static void on_stop_timer(uv_timer_t *t)
{
    struct compute *m = t->data;
    /* The worker sends frames; it must be gone before the server is. */
    nf_gen_stop(&m->gen);
    nf_server_stop(m->srv);
    m->srv = NULL;
    close_handle((uv_handle_t *)&m->sigterm);
    close_handle((uv_handle_t *)&m->sigint);
    close_handle((uv_handle_t *)&m->mem_timer);
    close_handle((uv_handle_t *)&m->stop_timer);
}

static void begin_shutdown(struct compute *m, const char *why)
{
    if (m->stopping)
        return;
    m->stopping = true;
    nf_log(NF_LOG_INFO, "shutting down (%s)", why);
    nf_server_set_health(m->srv, NANOFLOW__HEALTH__STATE__STOPPING);
    /* As every daemon on Shutdown (stack.md): stop every loop of the stack and wake it. */
    nf_stack_stop(&m->st, NF_READY_COMPUTE);
    /* Cancel the running generation; the worker is joined in on_stop_timer. */
    pthread_mutex_lock(&m->gen.mu);
    if (m->gen.cur)
        atomic_store(&m->gen.cur->cancel, 1);
    pthread_mutex_unlock(&m->gen.mu);
    uv_timer_start(&m->stop_timer, on_stop_timer, 50, 0);
}

static void on_request(struct nf_server *s, uint64_t conn, nf_envelope *env, void *ud)
{
    struct compute *m = ud;
    const uint64_t req = env->request_id;
    switch (env->msg_case) {
    case NANOFLOW__ENVELOPE__MSG_GENERATE:
        if (m->stopping) {
            nf_server_send_error(s, conn, req, -ECANCELED, "compute is shutting down");
        } else if (nf_gen_submit(&m->gen, conn, req, env->generate) < 0) {
            nf_server_send_error(s, conn, req, -ENOMEM, "out of memory queueing the request");
        }
        break;
    case NANOFLOW__ENVELOPE__MSG_CANCEL:
        if (!nf_gen_cancel(&m->gen, conn, req, env->cancel->target_id))
            nf_log(NF_LOG_DEBUG, "cancel of request %llu: no such generation",
                   (unsigned long long)env->cancel->target_id);
        break;
    case NANOFLOW__ENVELOPE__MSG_STATS_REQUEST:
        atomic_store(&m->st.ctr->mem_compute, private_rss());
        nf_gen_stats_reply(&m->gen, s, conn, req);
        break;
    case NANOFLOW__ENVELOPE__MSG_SHUTDOWN: {
        nf_server_send_stopping(s, conn, req);
        begin_shutdown(m, "Shutdown request");
        break;
    }
    default:
        nf_server_send_error(s, conn, req, NF_EPROTO, "compute does not handle this message (%d)",
                             (int)env->msg_case);
        break;
    }
}

static void on_close(struct nf_server *s, uint64_t conn, void *ud)
{
    (void)s;
    struct compute *m = ud;
    nf_gen_conn_closed(&m->gen, conn);
}

static void on_signal(uv_signal_t *h, int signum)
{
    begin_shutdown(h->data, signum == SIGTERM ? "SIGTERM" : "SIGINT");
}

static int serve(struct compute *m, char *err, size_t errlen)
{
    char sock[PATH_MAX];
    int rc = uv_loop_init(&m->loop);
    if (rc < 0) {
        snprintf(err, errlen, "uv_loop_init: %s", uv_strerror(rc));
        return rc;
    }
    m->loop_init = true;
    nf_rundir_path(m->dir, NF_ROLE_COMPUTE, "sock", sock, sizeof(sock));
    rc = nf_server_start(&m->srv, &m->loop, sock, NF_ROLE_COMPUTE, on_request, on_close, m);
    if (rc < 0) {
        snprintf(err, errlen, "cannot serve %s: %s", sock, nf_strerror(rc));
        return rc;
    }
    m->gen.srv = m->srv;
    uv_signal_init(&m->loop, &m->sigterm);
    uv_signal_init(&m->loop, &m->sigint);
    m->sigterm.data = m->sigint.data = m;
    uv_signal_start(&m->sigterm, on_signal, SIGTERM);
    uv_signal_start(&m->sigint, on_signal, SIGINT);
    uv_timer_init(&m->loop, &m->mem_timer);
    uv_timer_init(&m->loop, &m->stop_timer);
    m->mem_timer.data = m->stop_timer.data = m;
    uv_timer_start(&m->mem_timer, on_mem_timer, 1000, 1000);
    atomic_fetch_or(&m->st.sync->ready_mask, NF_READY_COMPUTE);
    nf_server_set_health(m->srv, NANOFLOW__HEALTH__STATE__READY);
    nf_log(NF_LOG_INFO, "ready on %s (pid %d)", sock, (int)getpid());
    uv_run(&m->loop, UV_RUN_DEFAULT);
    return 0;
}

static void walk_close(uv_handle_t *h, void *arg)
{
    (void)arg;
    close_handle(h);
}

static void cleanup(struct compute *m)
{
    nf_gen_stop(&m->gen);
    if (m->srv) { /* startup failed after the server started */
        nf_server_stop(m->srv);
        m->srv = NULL;
    }
    if (m->loop_init) {
        uv_walk(&m->loop, walk_close, NULL);
        uv_run(&m->loop, UV_RUN_DEFAULT);
        uv_loop_close(&m->loop);
    }
    if (m->attached) {
        atomic_fetch_and(&m->st.sync->ready_mask, ~NF_READY_COMPUTE);
        nf_stack_detach(&m->st);
    }
    nf_vocab_free(m->v);
    if (m->f)
        nf_nft_close(m->f);
}

int main(int argc, char **argv)
{
    static struct compute m;
    char err[PATH_MAX + 512] = "";
    int rc = parse_args(argc, argv, &m.o);
    if (rc)
        return rc > 0 ? 0 : 2;
    enum nf_log_level level;
    if (nf_daemon_log_level(NF_ROLE_COMPUTE, m.o.log_level, &level) < 0)
        return 2;
    if (nf_daemon_begin(NF_ROLE_COMPUTE, m.o.run_dir, m.o.foreground, level, NULL, NULL, m.dir,
                        sizeof(m.dir)))
        return 1;
    rc = start(&m, err, sizeof(err));
    if (rc == 0)
        rc = serve(&m, err, sizeof(err));
    if (rc < 0)
        nf_log(NF_LOG_ERROR, "%s", err[0] ? err : nf_strerror(rc));
    cleanup(&m);
    nf_daemon_end(NF_ROLE_COMPUTE, m.dir, rc);
    return rc == 0 ? 0 : 1;
}
