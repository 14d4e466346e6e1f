/* main.c - nanoflow-predictor: attaches to a stack, loads the predictors, runs the prefetch loop.
 */
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "daemon.h"
#include "loop.h"
#include "nf_err.h"
#include "nf_proc.h"
#include "nf_size.h"
#include "nft.h"
#include "plan.h"
#include "stack.h"
#include "nf_time.h"

#define PRED_HEADROOM (1ull << 20) /* private growth after loading (thread stack, buffers) */

struct opts {
    const char *run_dir, *model;
    uint64_t ram;
    int threads;
    float sparsity; /* < 0: the stack's */
    uint32_t ctx;
    bool foreground;
    enum nf_log_level level;
    uint32_t lookahead;
    float margin;
    int attach_timeout_s;
    uint64_t pred_mem; /* bytes for predictor data; 0: the plan's predictor share */
};

/* Everything the daemon holds; one instance, reached from the libuv callbacks through ud. */
struct pred {
    struct opts o;
    char dir[4096];
    char sock[4200];
    struct nf_nft *f;
    struct nf_stack st;
    bool attached;
    struct nf_plan plan;
    struct nf_forecaster fc;
    struct nf_pred_loop lp;
    pthread_t thread;
    bool thread_started;
    bool thread_ok; /* the worker ran and was joined */
    uv_loop_t loop;
    struct nf_server *srv;
    uv_signal_t sigterm, sigint;
    uv_async_t stopped; /* the worker ended (the stack stopped): shut down */
    uv_timer_t linger;  /* lets the Shutdown reply leave before the server closes */
    bool stopping;
};

static void usage(FILE *out)
{
    fprintf(out,
            "usage: nanoflow-predictor --model FILE.nft [options]\n\n"
            "Forecasts the tiles the next layers need from compute's activations and queues them\n"
            "for the fetcher (one daemon of a stack started by `nanoflowctl up`).\n\n"
            "  --run-dir DIR       run directory (default: $NANOFLOW_RUN_DIR, else\n"
            "                      $XDG_RUNTIME_DIR/nanoflow, else /tmp/nanoflow-UID)\n"
            "  --model FILE        the stack's .nft tile file (required)\n"
            "  --ram SIZE          RAM budget of the stack (informational: the region's plan\n"
            "                      rules; default: the plan's)\n"
            "  -t, --threads N     threads, 0..4096 (informational; default: 0)\n"
            "  --sparsity S        fraction of FFN groups skipped, in [0, 1) (default: the "
            "stack's)\n"
            "  --ctx N             context length (informational; default: 0 = the plan's)\n"
            "  --lookahead N       deepest lookahead in layers, 1..64 (default 4)\n"
            "  --margin F          extra share of groups prefetched in sparse mode (default 0.1)\n"
            "  --attach-timeout S  seconds to wait for the fetcher's region, 1..3600 (default 30)\n"
            "  --pred-mem SIZE     memory for predictor data (default: the plan's predictor "
            "share)\n"
            "  --foreground        stay attached to the terminal, log to stderr (default: detach\n"
            "                      and log to DIR/predictor.log)\n"
            "  --log-level L       error, warn, info (default) or debug\n"
            "  -h, --help          show this help\n");
}

static int bad_flag(const char *fmt, const char *a, const char *b)
{
    fprintf(stderr, "nanoflow-predictor: ");
    fprintf(stderr, fmt, a, b);
    fprintf(stderr, " (try 'nanoflow-predictor --help')\n");
    return 2;
}

static int parse_uint(const char *s, long lo, long hi, long *out)
{
    char *end;
    errno = 0;
    long v = strtol(s, &end, 10);
    if (errno || end == s || *end || v < lo || v > hi)
        return -1;
    *out = v;
    return 0;
}

static int parse_float(const char *s, float lo, float hi, float *out)
{
    char *end;
    errno = 0;
    float v = strtof(s, &end);
    if (errno || end == s || *end || !(v >= lo && v < hi))
        return -1;
    *out = v;
    return 0;
}

/* Returns 0, 1 for --help (exit 0), or 2 (usage error, message printed). */
static int parse_args(int argc, char **argv, struct opts *o)
{
    enum {
        O_RUNDIR = 256,
        O_MODEL,
        O_RAM,
        O_SPARSITY,
        O_CTX,
        O_FG,
        O_LEVEL,
        O_LOOK,
        O_MARGIN,
        O_ATTACH,
        O_PREDMEM
    };
    static const struct option lo[] = {
        {"run-dir", required_argument, NULL, O_RUNDIR},
        {"model", required_argument, NULL, O_MODEL},
        {"ram", required_argument, NULL, O_RAM},
        {"threads", required_argument, NULL, 't'},
        {"sparsity", required_argument, NULL, O_SPARSITY},
        {"ctx", required_argument, NULL, O_CTX},
        {"foreground", no_argument, NULL, O_FG},
        {"log-level", required_argument, NULL, O_LEVEL},
        {"lookahead", required_argument, NULL, O_LOOK},
        {"margin", required_argument, NULL, O_MARGIN},
        {"attach-timeout", required_argument, NULL, O_ATTACH},
        {"pred-mem", required_argument, NULL, O_PREDMEM},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    memset(o, 0, sizeof(*o));
    o->sparsity = -1;
    o->level = NF_LOG_INFO;
    o->lookahead = 4;
    o->margin = 0.1f;
    o->attach_timeout_s = 30;
    opterr = 0;
    optind = 1;
    int c;
    long v;
    while ((c = getopt_long(argc, argv, ":t:h", lo, NULL)) != -1) {
        switch (c) {
        case O_RUNDIR: o->run_dir = optarg; break;
        case O_MODEL: o->model = optarg; break;
        case O_RAM:
            if (nf_parse_size(optarg, &o->ram))
                return bad_flag("--ram: '%s' is not a size (e.g. 1G, 512M)%s", optarg, "");
            break;
        case 't':
            if (parse_uint(optarg, 0, 4096, &v))
                return bad_flag("--threads: '%s' is not a number in [0, 4096]%s", optarg, "");
            o->threads = (int)v;
            break;
        case O_SPARSITY:
            if (parse_float(optarg, 0, 1, &o->sparsity))
                return bad_flag("--sparsity: '%s' is not in [0, 1)%s", optarg, "");
            break;
        case O_CTX:
            if (parse_uint(optarg, 0, 1 << 24, &v)) /* 0: the model's */
                return bad_flag("--ctx: '%s' is not a number in [0, 16777216]%s", optarg, "");
            o->ctx = (uint32_t)v;
            break;
        case O_FG: o->foreground = true; break;
        case O_LEVEL:
            if (nf_log_level_parse(optarg, &o->level) < 0)
                return bad_flag("--log-level: '%s' (expected error, warn, info or debug)%s", optarg,
                                "");
            break;
        case O_LOOK:
            if (parse_uint(optarg, 1, 64, &v))
                return bad_flag("--lookahead: '%s' is not a number in [1, 64]%s", optarg, "");
            o->lookahead = (uint32_t)v;
            break;
        case O_MARGIN:
            if (parse_float(optarg, 0, 1.0001f, &o->margin))
                return bad_flag("--margin: '%s' is not in [0, 1]%s", optarg, "");
            break;
        case O_ATTACH:
            if (parse_uint(optarg, 1, 3600, &v))
                return bad_flag("--attach-timeout: '%s' is not a number of seconds%s", optarg, "");
            o->attach_timeout_s = (int)v;
            break;
        case O_PREDMEM:
            if (nf_parse_size(optarg, &o->pred_mem) || o->pred_mem == 0)
                return bad_flag("--pred-mem: '%s' is not a positive size%s", optarg, "");
            break;
        case 'h': return 1;
        case ':': return bad_flag("%s needs a value%s", argv[optind - 1], "");
        default: return bad_flag("unknown flag '%s'%s", argv[optind - 1], "");
        }
    }
    if (optind < argc)
        return bad_flag("unexpected argument '%s'%s", argv[optind], "");
    if (!o->model)
        return bad_flag("--model FILE.nft is required%s%s", "", "");
    return 0;
}

/* Attaches to the stack's region, retrying while the fetcher creates it, then waits for the
 * fetcher's ready bit. */
static int attach_stack(struct pred *d)
{
    char name[NAME_MAX], err[512];
    nf_rundir_shm_name(d->dir, name, sizeof(name));
    int waited = 0, limit = d->o.attach_timeout_s * 1000, rc;
    for (;;) {
        rc = nf_stack_attach(&d->st, name, d->f, err, sizeof(err));
        if (rc == 0)
            break;
        if ((rc != -ENOENT && rc != -EAGAIN) || waited >= limit) {
            nf_log(NF_LOG_ERROR, "cannot attach to stack %s: %s", name, err);
            return rc;
        }
        nf_sleep_ms(100);
        waited += 100;
    }
    d->attached = true;
    while (!(atomic_load(&d->st.sync->ready_mask) & NF_READY_FETCHER)) {
        if (atomic_load(&d->st.sync->stop))
            return -ECANCELED;
        if (waited >= limit) {
            nf_log(NF_LOG_ERROR, "the fetcher did not become ready within %d s",
                   d->o.attach_timeout_s);
            return -ETIMEDOUT;
        }
        nf_sleep_ms(50);
        waited += 50;
    }
    return 0;
}

/* Loads the plan and as many layers' predictors as the plan's predictor share allows. */
static int load_predictors(struct pred *d)
{
    char err[512];
    const struct nf_stack_config *cfg = d->st.cfg;
    struct nf_stack_plan sp;
    int rc =
        nf_stack_plan(d->f, cfg->ram_budget, cfg->n_ctx, cfg->n_threads, &sp, err, sizeof(err));
    if (rc < 0) {
        nf_log(NF_LOG_ERROR, "plan: %s", err);
        return rc;
    }
    if ((rc = nf_plan_init(&d->plan, d->f, err, sizeof(err)))) {
        nf_log(NF_LOG_ERROR, "%s", err);
        return rc;
    }
    /* What the plan gives this process, minus what it holds already (code and libraries, which
     * the plan's NF_STACK_PROC_BYTES covers, so RssFile as well as the private bytes of the .nft
     * index) and headroom for the worker's stack and the control server's buffers. */
    uint64_t held =
        nf_proc_private_bytes(0) + nf_proc_value(0, "status", "RssFile") * 1024 + PRED_HEADROOM;
    if (held < PRED_HEADROOM * 2)
        held = NF_STACK_PROC_BYTES; /* RSS unknown: assume the plan's estimate for the code */
    uint64_t cap = sp.predictor_private > held ? sp.predictor_private - held : 0;
    if (d->o.pred_mem) {
        nf_log(NF_LOG_INFO, "--pred-mem %llu bytes replaces the plan's %llu for predictor data",
               (unsigned long long)d->o.pred_mem, (unsigned long long)cap);
        cap = d->o.pred_mem;
    }
    if ((rc = nf_forecaster_init(&d->fc, &d->plan, cap, err, sizeof(err)))) {
        nf_log(NF_LOG_ERROR, "%s", rc == -ENOMEM ? "out of memory loading predictors" : err);
        return rc;
    }
    bool needed = d->plan.moe || cfg->sparsity > 0;
    if (d->fc.n_loaded < d->plan.n_layer && needed)
        nf_log(NF_LOG_WARN,
               "predictors of %u of %u layers fit the plan's %llu bytes for predictor data; "
               "layers %u.. prefetch every %s in order",
               d->fc.n_loaded, d->plan.n_layer, (unsigned long long)cap, d->fc.n_loaded,
               d->plan.moe ? "expert" : "group");
    nf_log(NF_LOG_INFO, "%s: %u layers, %s, %u units max, predictors for %u layers (%llu bytes)",
           d->f->path, d->plan.n_layer, d->plan.moe ? "MoE" : "dense", d->plan.max_units,
           d->fc.n_loaded, (unsigned long long)d->fc.mem_bytes);
    return 0;
}

static void closed_cb(uv_handle_t *h)
{
}

static void linger_done(uv_timer_t *t)
{
    struct pred *d = t->data;
    /* The worker was told to stop and wakes within WAKE_MS; join it before closing the async
     * handle it signals through. */
    if (d->thread_started) {
        pthread_join(d->thread, NULL);
        d->thread_started = false;
        d->thread_ok = true;
    }
    if (d->srv) {
        nf_server_stop(d->srv);
        d->srv = NULL;
    }
    uv_close((uv_handle_t *)&d->sigterm, closed_cb);
    uv_close((uv_handle_t *)&d->sigint, closed_cb);
    uv_close((uv_handle_t *)&d->stopped, closed_cb);
    uv_close((uv_handle_t *)&d->linger, closed_cb);
}

/* Loop thread: stops the worker, tells the stack (design: Shutdown stops every loop), and
 * closes the server shortly after so a reply can still leave. */
static void begin_shutdown(struct pred *d, const char *why)
{
    if (d->stopping)
        return;
    d->stopping = true;
    nf_log(NF_LOG_INFO, "shutting down (%s)", why);
    if (d->srv)
        nf_server_set_health(d->srv, NANOFLOW__HEALTH__STATE__STOPPING);
    atomic_store(&d->lp.stop, true);
    if (d->attached)
        nf_stack_stop(&d->st, NF_READY_PREDICTOR);
    uv_timer_start(&d->linger, linger_done, 50, 0);
}

static void on_request(struct nf_server *s, uint64_t conn, nf_envelope *env, void *ud)
{
    struct pred *d = ud;
    switch (env->msg_case) {
    case NANOFLOW__ENVELOPE__MSG_STATS_REQUEST:
        nf_stats_reply(s, conn, env->request_id, &d->st, NF_ROLE_PREDICTOR);
        break;
    case NANOFLOW__ENVELOPE__MSG_SHUTDOWN: {
        nf_server_send_stopping(s, conn, env->request_id);
        begin_shutdown(d, "Shutdown request");
        break;
    }
    default:
        nf_server_send_error(s, conn, env->request_id, NF_EUSAGE,
                             "the predictor answers Hello, Health, Stats and Shutdown only");
        break;
    }
}

static void on_signal(uv_signal_t *h, int sig)
{
    begin_shutdown(h->data, sig == SIGTERM ? "SIGTERM" : "SIGINT");
}

static void on_worker_stopped(uv_async_t *a)
{
    begin_shutdown(a->data, "the stack is stopping");
}

static void *worker(void *arg)
{
    struct pred *d = arg;
    nf_pred_loop_run(&d->lp);
    uv_async_send(&d->stopped);
    return NULL;
}

static uint32_t bos_token(const struct nf_nft *f)
{
    uint32_t bos;
    if (nf_gguf_get_u32(nf_nft_gguf(f), "tokenizer.ggml.bos_token_id", &bos) == 0 &&
        bos < f->hdr.n_vocab)
        return bos;
    return UINT32_MAX;
}

/* Sets up the loop, server and worker, then runs until shutdown. Returns the exit status. */
static int serve(struct pred *d)
{
    int rc;
    if ((rc = uv_loop_init(&d->loop)))
        return 1;
    uv_signal_init(&d->loop, &d->sigterm);
    uv_signal_init(&d->loop, &d->sigint);
    uv_async_init(&d->loop, &d->stopped, on_worker_stopped);
    uv_timer_init(&d->loop, &d->linger);
    d->sigterm.data = d->sigint.data = d->stopped.data = d->linger.data = d;
    uv_signal_start(&d->sigterm, on_signal, SIGTERM);
    uv_signal_start(&d->sigint, on_signal, SIGINT);
    nf_rundir_path(d->dir, NF_ROLE_PREDICTOR, "sock", d->sock, sizeof(d->sock));
    if ((rc =
             nf_server_start(&d->srv, &d->loop, d->sock, NF_ROLE_PREDICTOR, on_request, NULL, d))) {
        nf_log(NF_LOG_ERROR, "cannot serve %s: %s", d->sock, nf_strerror(rc));
        d->srv = NULL;
        linger_done(&d->linger);
        uv_run(&d->loop, UV_RUN_DEFAULT);
        uv_loop_close(&d->loop);
        return 1;
    }
    float sparsity = d->st.cfg->sparsity;
    if (d->o.sparsity >= 0 && d->o.sparsity != sparsity)
        nf_log(NF_LOG_WARN, "--sparsity %g differs from the stack's %g; using the stack's",
               d->o.sparsity, sparsity);
    if ((rc = nf_pred_loop_init(&d->lp, &d->st, &d->plan, &d->fc, sparsity, d->o.margin,
                                d->o.lookahead, bos_token(d->f)))) {
        nf_log(NF_LOG_ERROR, "out of memory");
        begin_shutdown(d, "startup failed");
    } else if ((rc = pthread_create(&d->thread, NULL, worker, d))) {
        nf_log(NF_LOG_ERROR, "cannot start the worker thread: %s", strerror(rc));
        begin_shutdown(d, "startup failed");
    } else {
        d->thread_started = true;
        atomic_store(&d->st.ctr->mem_predictor, nf_proc_private_bytes(0));
        atomic_fetch_or(&d->st.sync->ready_mask, NF_READY_PREDICTOR);
        nf_server_set_health(d->srv, NANOFLOW__HEALTH__STATE__READY);
        nf_log(NF_LOG_INFO, "ready on %s (sparsity %g, lookahead up to %u)", d->sock, sparsity,
               d->o.lookahead);
    }
    uv_run(&d->loop, UV_RUN_DEFAULT);
    uv_loop_close(&d->loop);
    return d->thread_ok ? 0 : 1;
}

int main(int argc, char **argv)
{
    static struct pred d;
    int rc = parse_args(argc, argv, &d.o);
    if (rc == 1) {
        usage(stdout);
        return 0;
    }
    if (rc)
        return 2;
    char err[512];
    if (nf_daemon_begin(NF_ROLE_PREDICTOR, d.o.run_dir, d.o.foreground, d.o.level, NULL, NULL,
                        d.dir, sizeof(d.dir)))
        return 1;
    int status = 1;
    if ((rc = nf_nft_open(&d.f, d.o.model, false, err, sizeof(err)))) {
        nf_log(NF_LOG_ERROR, "%s", err);
        goto out;
    }
    if (attach_stack(&d) || load_predictors(&d))
        goto out;
    status = serve(&d);
out:
    nf_pred_loop_free(&d.lp);
    nf_forecaster_free(&d.fc);
    nf_plan_free(&d.plan);
    if (d.attached) {
        atomic_fetch_and(&d.st.sync->ready_mask, ~NF_READY_PREDICTOR);
        nf_stack_detach(&d.st);
    }
    if (d.f)
        nf_nft_close(d.f);
    if (d.sock[0])
        unlink(d.sock);
    nf_daemon_end(NF_ROLE_PREDICTOR, d.dir, status);
    return status;
}
