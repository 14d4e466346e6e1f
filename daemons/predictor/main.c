/* main.c - nanoflow-predictor: attaches to a stack, loads the predictors, runs the prefetch loop.
 */
#include <errno.h>
#include <limits.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "daemon.h"
#include "loop.h"
#include "nf_err.h"
#include "nf_proc.h"
#include "nft.h"
#include "plan.h"
#include "stack.h"

#define PRED_HEADROOM (1ull << 20) /* private growth after loading (thread stack, buffers) */

/* The predictor's own flags; the stack's are in struct nf_daemon_args. */
struct pred_opts {
    uint32_t lookahead;
    float margin;
    uint64_t pred_mem; /* bytes for predictor data; 0: the plan's predictor share */
    bool kv_prefetch;  /* push KV block tiles after each attention walk */
};

/* Everything the daemon holds; one instance, reached from the libuv callbacks through ud. */
struct pred {
    struct nf_daemon_args o;
    struct pred_opts po;
    char dir[4096];
    struct nf_nft *f;
    struct nf_stack st;
    bool attached;
    struct nf_plan plan;
    struct nf_forecaster fc;
    struct nf_pred_loop lp;
    pthread_t thread;
    bool thread_started;
    bool thread_ok; /* the worker ran and was joined */
    struct nf_daemon_loop dl;
    uv_async_t stopped; /* the worker ended (the stack stopped): shut down */
};

static void usage(FILE *out)
{
    fprintf(out,
            "usage: nanoflow-predictor --model FILE.nft [options]\n\n"
            "Forecasts the tiles the next layers need from compute's activations and queues them\n"
            "for the fetcher (one daemon of a stack started by `nanoflowctl up`).\n\n"
            "  --run-dir DIR       run directory (default: $NANOFLOW_RUN_DIR, else\n"
            "                      $XDG_RUNTIME_DIR/nanoflow, else /run/nanoflow as root,\n"
            "                      else /tmp/nanoflow-UID)\n"
            "  --model FILE        the stack's .nft tile file (required)\n"
            "  --ram SIZE          RAM budget of the stack (informational: the region's plan\n"
            "                      rules; default: the plan's)\n"
            "  -t, --threads N     threads, 0..1024 (informational; default: 0)\n"
            "  --sparsity S        fraction of FFN groups skipped, in [0, 1) (informational:\n"
            "                      the stack's is used, a different value logged; default: the\n"
            "                      stack's)\n"
            "  --ctx N             context length (informational; default: 0 = the plan's)\n"
            "  --parallel N        sequences compute runs at once (informational; default: 0 =\n"
            "                      the plan's)\n"
            "  --lookahead N       deepest lookahead in layers, 1..64 (default 4)\n"
            "  --margin F          extra share of groups prefetched in sparse mode (default 0.1)\n"
            "  --attach-timeout S  seconds to wait for the fetcher's region, 1..3600 (default 30)\n"
            "  --pred-mem SIZE     memory for predictor data (default: the plan's predictor "
            "share)\n"
            "  --kv-prefetch on|off  with the KV cache on disk in the pool's KV tiles, push the\n"
            "                      next layers' KV blocks after each attention walk (default:\n"
            "                      on, or $NANOFLOW_KV_PREFETCH; off leaves compute's own\n"
            "                      requests ahead of its walk)\n"
            "  --foreground        stay attached to the terminal, log to stderr (default: detach\n"
            "                      and log to DIR/predictor.log)\n"
            "  --log-level L       error, warn, info (default) or debug\n"
            "  -h, --help          show this help\n");
}

enum { O_LOOK = NF_ARG_OWN, O_MARGIN, O_PREDMEM, O_KVPF };

static const struct option own_opts[] = {
    {"lookahead", required_argument, NULL, O_LOOK},
    {"margin", required_argument, NULL, O_MARGIN},
    {"pred-mem", required_argument, NULL, O_PREDMEM},
    {"kv-prefetch", required_argument, NULL, O_KVPF},
    {NULL, 0, NULL, 0},
};

/* "on" or "off" into *v: 0, else -EINVAL. */
static int on_off(const char *arg, bool *v)
{
    if (!strcmp(arg, "on") || !strcmp(arg, "off")) {
        *v = !strcmp(arg, "on");
        return 0;
    }
    return -EINVAL;
}

/* Parses one of own_opts: 0 or -EINVAL. */
static int parse_own(int val, const char *arg, void *ud)
{
    struct pred_opts *po = ud;
    long v;
    switch (val) {
    case O_LOOK:
        if (nf_daemon_arg_long(arg, 1, 64, &v))
            return -EINVAL;
        po->lookahead = (uint32_t)v;
        return 0;
    case O_MARGIN: return nf_daemon_arg_float(arg, 0, 1.0001f, &po->margin);
    case O_PREDMEM: return nf_daemon_arg_size(arg, &po->pred_mem);
    case O_KVPF: return on_off(arg, &po->kv_prefetch);
    default: return -EINVAL;
    }
}

/* Loads the plan and as many layers' predictors as the plan's predictor share allows. */
static int load_predictors(struct pred *d)
{
    char err[512];
    const struct nf_stack_config *cfg = d->st.cfg;
    struct nf_stack_plan sp;
    int rc = nf_stack_plan_seq(d->f, cfg->ram_budget, cfg->n_ctx, cfg->n_threads,
                               cfg->n_seq ? cfg->n_seq : 1, &sp, err, sizeof(err));
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
    if (d->po.pred_mem) {
        nf_log(NF_LOG_INFO, "--pred-mem %llu bytes replaces the plan's %llu for predictor data",
               (unsigned long long)d->po.pred_mem, (unsigned long long)cap);
        cap = d->po.pred_mem;
    }
    if ((rc = nf_forecaster_init(&d->fc, &d->plan, cap, err, sizeof(err)))) {
        nf_log(NF_LOG_ERROR, "%s", rc == -ENOMEM ? "out of memory loading predictors" : err);
        return rc;
    }
    bool needed = d->plan.moe || cfg->sparsity > 0;
    if (d->fc.n_loaded < d->plan.n_layer && needed)
        nf_log(NF_LOG_WARN,
               "predictors of %u of %u layers fit the plan's %llu bytes for predictor data; "
               "layers %u.. %s",
               d->fc.n_loaded, d->plan.n_layer, (unsigned long long)cap, d->fc.n_loaded,
               d->plan.moe ? "are routed with the pool's router tiles"
                           : "prefetch every group in order");
    nf_log(NF_LOG_INFO, "%s: %u layers, %s, %u units max, predictors for %u layers (%llu bytes)",
           d->f->path, d->plan.n_layer, d->plan.moe ? "MoE" : "dense", d->plan.max_units,
           d->fc.n_loaded, (unsigned long long)d->fc.mem_bytes);
    return 0;
}

/* --- control loop hooks (daemons/common/loop.c does the rest) ----------------------------- */

/* The worker sleeps on the stack's bells, which the shutdown rang; it ends within WAKE_MS. */
static void on_shutdown(struct nf_daemon_loop *dl)
{
    struct pred *d = dl->ud;
    atomic_store(&d->lp.stop, true);
}

/* Joins the worker before its async handle closes. */
static void on_stop(struct nf_daemon_loop *dl)
{
    struct pred *d = dl->ud;
    if (d->thread_started) {
        pthread_join(d->thread, NULL);
        d->thread_started = false;
        d->thread_ok = true;
    }
}

static const struct nf_daemon_hooks hooks = {.shutdown = on_shutdown, .stop = on_stop};

static void on_worker_stopped(uv_async_t *a)
{
    struct pred *d = a->data;
    nf_daemon_loop_shutdown(&d->dl, "the stack is stopping");
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
    char err[PATH_MAX + 256];
    int rc = nf_daemon_loop_start(&d->dl, NF_ROLE_PREDICTOR, d->dir, &d->st, NF_READY_PREDICTOR,
                                  &hooks, d, err, sizeof(err));
    if (rc < 0) {
        nf_log(NF_LOG_ERROR, "%s", err);
        return 1;
    }
    uv_async_init(&d->dl.loop, &d->stopped, on_worker_stopped);
    d->stopped.data = d;
    float sparsity = d->st.cfg->sparsity;
    if (d->o.sparsity >= 0 && d->o.sparsity != sparsity)
        nf_log(NF_LOG_WARN, "--sparsity %g differs from the stack's %g; using the stack's",
               d->o.sparsity, sparsity);
    if (!(rc = nf_pred_loop_init(&d->lp, &d->st, &d->plan, &d->fc, sparsity, d->po.margin,
                                 d->po.lookahead, bos_token(d->f))))
        d->lp.kv_push = d->po.kv_prefetch;
    if (rc) {
        nf_log(NF_LOG_ERROR, "out of memory");
        nf_daemon_loop_shutdown(&d->dl, "startup failed");
    } else if ((rc = pthread_create(&d->thread, NULL, worker, d))) {
        nf_log(NF_LOG_ERROR, "cannot start the worker thread: %s", strerror(rc));
        nf_daemon_loop_shutdown(&d->dl, "startup failed");
    } else {
        d->thread_started = true;
        atomic_store(&d->st.ctr->mem_predictor, nf_proc_private_bytes(0));
        nf_daemon_loop_ready(&d->dl);
        nf_log(NF_LOG_INFO, "ready on %s (sparsity %g, lookahead up to %u, KV pushes %s)",
               d->dl.sock, sparsity, d->po.lookahead,
               !d->st.kv_walk      ? "none: no KV tiles"
               : d->po.kv_prefetch ? "on"
                                   : "off");
    }
    nf_daemon_loop_run(&d->dl);
    return d->thread_ok ? 0 : 1;
}

int main(int argc, char **argv)
{
    static struct pred d;
    d.po = (struct pred_opts){.lookahead = 4, .margin = 0.1f, .kv_prefetch = true};
    const char *kvpf = getenv("NANOFLOW_KV_PREFETCH");
    if (kvpf && on_off(kvpf, &d.po.kv_prefetch) < 0) {
        fprintf(stderr, "nanoflow-predictor: NANOFLOW_KV_PREFETCH must be on or off, not '%s'\n",
                kvpf);
        return 2;
    }
    const struct nf_daemon_argspec spec = {.role = NF_ROLE_PREDICTOR,
                                           .attaches = true,
                                           .usage = usage,
                                           .own = own_opts,
                                           .parse = parse_own,
                                           .ud = &d.po};
    int rc = nf_daemon_args_parse(argc, argv, &spec, &d.o);
    if (rc)
        return rc == 1 ? 0 : 2;
    char err[PATH_MAX + 256];
    if (nf_daemon_begin(NF_ROLE_PREDICTOR, d.o.run_dir, d.o.foreground, d.o.level, NULL, NULL,
                        d.dir, sizeof(d.dir)))
        return 1;
    int status = 1;
    if ((rc = nf_nft_open(&d.f, d.o.model, false, err, sizeof(err)))) {
        nf_log(NF_LOG_ERROR, "%s", err);
        goto out;
    }
    if ((rc = nf_daemon_attach(&d.st, d.dir, d.f, d.o.attach_timeout_s, &d.attached, err,
                               sizeof(err)))) {
        nf_log(NF_LOG_ERROR, "%s", err);
        goto out;
    }
    if (load_predictors(&d))
        goto out;
    status = serve(&d);
out:
    nf_daemon_loop_close(&d.dl);
    nf_pred_loop_free(&d.lp);
    nf_forecaster_free(&d.fc);
    nf_plan_free(&d.plan);
    if (d.attached) {
        atomic_fetch_and(&d.st.sync->ready_mask, ~NF_READY_PREDICTOR);
        nf_stack_detach(&d.st);
    }
    if (d.f)
        nf_nft_close(d.f);
    nf_daemon_end(NF_ROLE_PREDICTOR, d.dir, status);
    return status;
}
