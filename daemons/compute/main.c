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
#include <limits.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "daemon.h"
#include "gen.h"
#include "kv_quant.h"
#include "nf_err.h"
#include "nf_proc.h"
#include "nf_size.h"
#include "nft.h"
#include "stack.h"
#include "tokenizer.h"

struct compute {
    struct nf_daemon_args o;
    const char *draft;  /* --draft FILE */
    int max_tokens;     /* --max-tokens-per-request; 0: NF_GEN_DEFAULT_MAX_TOKENS */
    const char *kv_dir; /* --kv-dir DIR (NULL: the run directory) */
    char dir[PATH_MAX];
    struct nf_nft *f;
    struct nf_vocab *v;
    struct nf_stack st;
    bool attached;
    struct nf_gen gen;
    struct nf_daemon_loop dl;
};

static void usage(FILE *out)
{
    fprintf(out,
            "usage: nanoflow-compute --model FILE.nft [--run-dir DIR] [--ram SIZE] [-t N]\n"
            "                        [--sparsity S] [--ctx N] [--parallel N] [--ubatch N]\n"
            "                        [--cache-type-k T] [--cache-type-v T] [--attach-timeout S]\n"
            "                        [--max-tokens-per-request N] [--lookup] [--draft FILE]\n"
            "                        [--prefix-cache on|off] [--kv-dir DIR] [--kv-block N]\n"
            "                        [--kv-store DIR] [--kv-store-max SIZE] [--foreground]\n"
            "                        [--log-level error|warn|info|debug]\n\n"
            "Runs generations for nanoflowctl gen, streaming weight tiles from the stack's shared\n"
            "pool (filled by nanoflow-fetcher). The context length, thread count and sparsity\n"
            "come from the stack's plan; -t, --ctx and --sparsity override them.\n\n"
            "  --model FILE        the stack's .nft tile file (required)\n"
            "  --run-dir DIR       run directory (default: $NANOFLOW_RUN_DIR, else\n"
            "                      $XDG_RUNTIME_DIR/nanoflow, else /run/nanoflow as root,\n"
            "                      else /tmp/nanoflow-UID)\n"
            "  --ram SIZE          RAM budget of the stack, checked but informational: the\n"
            "                      region's plan rules (default: the plan's)\n"
            "  -t, --threads N     compute threads, 0..1024; 0 = one per CPU for prompt\n"
            "                      chunks, one per CPU but one (at least 1) for decode\n"
            "                      steps, batched too (default: the plan's)\n"
            "  --sparsity S        fraction of FFN groups skipped, in [0, 1); 0 = exact\n"
            "                      (default: the plan's)\n"
            "  --ctx N             context length, 0..16777216; 0 = the plan's (default: the\n"
            "                      plan's)\n"
            "  --parallel N        sequences run at once, each with its KV cache, 0..32; 0 =\n"
            "                      the plan's (default: the plan's)\n"
            "  --ubatch N          prompt tokens evaluated together, 1..4096: each weight tile\n"
            "                      is read once per chunk of N (default: the plan's, which\n"
            "                      the fetcher chose from the budget or was given)\n"
            "  --cache-type-k T    KV cache type of K: f16, q8_0 or q4_0 (default: the plan's,\n"
            "                      which up's flag of this name sets; f16 without one)\n"
            "  --cache-type-v T    KV cache type of V, likewise (default: the plan's)\n"
            "  --max-tokens-per-request N\n"
            "                      tokens one request may generate, 1..1000000; a request\n"
            "                      asking more is clamped (its reply says so) so that requests\n"
            "                      queued behind it wait less (default %d)\n"
            "  --lookup            speculative decoding with prompt-lookup drafts for the\n"
            "                      requests that do not say (Generate.speculate 0); the\n"
            "                      output is the same (default: off)\n"
            "  --draft FILE        a small draft model (GGUF, the same vocabulary) held in RAM:\n"
            "                      the default draft source of requests (Generate.speculate\n"
            "                      0 or 2); the output is the same (default: none)\n"
            "  --kv-dir DIR        where the KV file goes when the plan puts the KV cache on\n"
            "                      disk (default: the run directory)\n"
            "  --kv-block N        the stack's KV cache on disk in blocks of N positions\n"
            "                      (every daemon; `up` passes it), 0..65536; 0 = in RAM\n"
            "                      (default: 0)\n"
            "  --prefix-cache on|off\n"
            "                      keep each slot's prompt tokens after its sequence ends, and\n"
            "                      start a prompt that extends them from the kept KV cells\n"
            "                      (the output is the same) (default: on)\n"
            "  --kv-store DIR      keep the kept prefixes' KV cells in DIR across restarts:\n"
            "                      saved when a request overwrites one and at stop, read\n"
            "                      back for a prompt that extends one (the output is the\n"
            "                      same); files of another model or KV type, truncated or\n"
            "                      corrupt are ignored with a warning (default: none)\n"
            "  --kv-store-max SIZE bound of DIR's files, the least recently used dropped first\n"
            "                      (default 2G)\n"
            "  --attach-timeout S  seconds to wait for the fetcher's region, 1..3600\n"
            "                      (default 30)\n"
            "  --foreground        stay attached, log to stderr (default: detach and log to\n"
            "                      DIR/compute.log)\n"
            "  --log-level L       error, warn, info or debug (default: info)\n"
            "  -h, --help          show this help\n",
            NF_GEN_DEFAULT_MAX_TOKENS);
}

enum {
    ARG_MAX_TOKENS = NF_ARG_OWN,
    ARG_LOOKUP,
    ARG_DRAFT,
    ARG_KV_DIR,
    ARG_PREFIX_CACHE,
    ARG_KV_STORE,
    ARG_KV_STORE_MAX
};

static const struct option own_opts[] = {
    {"max-tokens-per-request", required_argument, NULL, ARG_MAX_TOKENS},
    {"lookup", no_argument, NULL, ARG_LOOKUP},
    {"draft", required_argument, NULL, ARG_DRAFT},
    {"kv-dir", required_argument, NULL, ARG_KV_DIR},
    {"prefix-cache", required_argument, NULL, ARG_PREFIX_CACHE},
    {"kv-store", required_argument, NULL, ARG_KV_STORE},
    {"kv-store-max", required_argument, NULL, ARG_KV_STORE_MAX},
    {NULL, 0, NULL, 0},
};

/* Parses one of own_opts: 0 or -EINVAL. */
static int parse_own(int val, const char *arg, void *ud)
{
    struct compute *m = ud;
    long v;
    if (val == ARG_LOOKUP) {
        m->gen.lookup = true;
        return 0;
    }
    if (val == ARG_DRAFT) {
        m->draft = arg;
        return 0;
    }
    if (val == ARG_KV_DIR) {
        m->kv_dir = arg;
        return 0;
    }
    if (val == ARG_KV_STORE) {
        if (!arg[0] || snprintf(m->gen.kv_store_dir, sizeof(m->gen.kv_store_dir), "%s", arg) >=
                           (int)sizeof(m->gen.kv_store_dir))
            return -EINVAL;
        return 0;
    }
    if (val == ARG_KV_STORE_MAX)
        return nf_parse_size(arg, &m->gen.kv_store_max) < 0 || m->gen.kv_store_max == 0 ? -EINVAL
                                                                                        : 0;
    if (val == ARG_PREFIX_CACHE) {
        if (strcmp(arg, "on") && strcmp(arg, "off"))
            return -EINVAL;
        m->gen.prefix_off = !strcmp(arg, "off");
        return 0;
    }
    if (val != ARG_MAX_TOKENS || nf_daemon_arg_long(arg, 1, NF_GEN_MAX_N_PREDICT, &v) < 0)
        return -EINVAL;
    m->max_tokens = (int)v;
    return 0;
}

static int start(struct compute *m, char *err, size_t errlen)
{
    int rc = nf_nft_open(&m->f, m->o.model, false, err, errlen);
    if (rc < 0)
        return rc;
    if ((rc = nf_vocab_load(&m->v, nf_nft_gguf(m->f), err, errlen)) < 0)
        return rc;
    if (m->draft) { /* held in RAM for the daemon's life; `up` counted it in the budget */
        char why[400];
        if ((rc = nf_model_load(&m->gen.dmodel, m->draft, why, sizeof(why))) < 0 ||
            (rc = nf_vocab_load(&m->gen.dvocab, m->gen.dmodel->gguf, why, sizeof(why))) < 0 ||
            (rc = nf_gen_vocab_check(m->v, m->gen.dvocab, why, sizeof(why))) < 0) {
            snprintf(err, errlen, "--draft %s: %s", m->draft, why);
            return rc;
        }
    }
    if ((rc = nf_daemon_attach(&m->st, m->dir, m->f, m->o.attach_timeout_s, &m->attached, err,
                               errlen)) < 0)
        return rc;
    const struct nf_stack_config *cfg = m->st.cfg;
    m->gen.st = &m->st;
    m->gen.f = m->f;
    m->gen.v = m->v;
    m->gen.n_ctx = m->o.ctx > 0 ? (int)m->o.ctx : (int)cfg->n_ctx;
    /* -t 0 (what `up` passes by default): one thread per CPU for prompt chunks
     * (nf_stack_compute_threads), one per CPU but one for decode steps, batched too
     * (nf_stack_decode_threads); -t N: N for both. */
    m->gen.n_threads = (int)nf_stack_compute_threads(
        (uint32_t)(m->o.threads >= 0 ? m->o.threads : (int)cfg->n_threads));
    m->gen.n_threads_one =
        (int)nf_stack_decode_threads((uint32_t)(m->o.threads > 0 ? m->o.threads : 0));
    if (m->gen.n_threads_one > m->gen.n_threads)
        m->gen.n_threads_one = m->gen.n_threads;
    m->gen.sparsity = m->o.sparsity >= 0 ? m->o.sparsity : cfg->sparsity;
    m->gen.max_tokens = m->max_tokens;
    m->gen.parallel = m->o.parallel > 0 ? (int)m->o.parallel : cfg->n_seq ? (int)cfg->n_seq : 1;
    /* The ubatch the fetcher planned with (the region's: `up` passes the plan's choice to
     * every daemon), unless given here. */
    m->gen.n_ubatch = (int)(m->o.ubatch ? m->o.ubatch : cfg->n_ubatch);
    /* The KV types the fetcher planned with (the region's), unless given here. */
    m->gen.type_k = (int)(m->o.type_k ? m->o.type_k : cfg->kv_type_k);
    m->gen.type_v = (int)(m->o.type_v ? m->o.type_v : cfg->kv_type_v);
    /* The plan puts the KV cache on disk (up --kv-offload): its file, created empty. */
    m->gen.kv_block = (int)cfg->kv_block;
    if (m->gen.kv_block)
        nf_rundir_kv_path(m->dir, m->kv_dir, m->gen.kv_path, sizeof(m->gen.kv_path));
    if (m->gen.n_ctx < 1) {
        snprintf(err, errlen, "the stack's plan has no context room (n_ctx %u)", cfg->n_ctx);
        return NF_EUSAGE;
    }
    if ((rc = nf_gen_start(&m->gen, err, errlen)) < 0)
        return rc;
    atomic_store(&m->st.ctr->mem_compute, nf_proc_private_bytes(0));
    nf_log(NF_LOG_INFO,
           "engine ready: %s, n_ctx %d, %d sequences, %d threads (%d for one token), "
           "sparsity %.2f, ubatch %d, KV %s/%s, %.1f MiB of KV caches and scratch%s%s",
           m->o.model, m->gen.n_ctx, m->gen.parallel, m->gen.n_threads, m->gen.n_threads_one,
           (double)m->gen.sparsity, m->gen.n_ubatch ? m->gen.n_ubatch : NF_MAX_BATCH,
           nf_kv_type_name(m->gen.type_k ? (enum nf_type)m->gen.type_k : NF_TYPE_F16),
           nf_kv_type_name(m->gen.type_v ? (enum nf_type)m->gen.type_v : NF_TYPE_F16),
           (double)nf_gen_engine_bytes(&m->gen) / 1048576.0,
           m->gen.kv_block ? ", KV on disk in " : "", m->gen.kv_block ? m->gen.kv_path : "");
    return 0;
}

/* --- control loop hooks (daemons/common/loop.c does the rest) ----------------------------- */

static void on_mem(struct nf_daemon_loop *dl)
{
    struct compute *m = dl->ud;
    atomic_store(&m->st.ctr->mem_compute, nf_proc_private_bytes(0));
}

/* Cancels the running generation; the worker is joined in on_stop. */
static void on_shutdown(struct nf_daemon_loop *dl)
{
    struct compute *m = dl->ud;
    nf_gen_cancel_running(&m->gen);
}

/* The worker sends frames; it must be gone before the server is. */
static void on_stop(struct nf_daemon_loop *dl)
{
    struct compute *m = dl->ud;
    nf_gen_stop(&m->gen);
}

/* Another daemon died (loop.c saw it): the running and the queued generations fail at once
 * with msg, sent before the stack is marked dead so that it is the first word their clients
 * read (the worker's own error or cancel reply follows, to a client that has left). */
static void on_dead(struct nf_daemon_loop *dl, uint32_t dead, const char *msg)
{
    (void)dead;
    struct compute *m = dl->ud;
    nf_gen_fail_all(&m->gen, dl->srv, msg);
}

static bool on_request(struct nf_daemon_loop *dl, uint64_t conn, nf_envelope *env)
{
    struct compute *m = dl->ud;
    const uint64_t req = env->request_id;
    char msg[256];
    uint32_t dead;
    switch (env->msg_case) {
    case NANOFLOW__ENVELOPE__MSG_GENERATE:
        if (dl->stopping) {
            nf_server_send_error(dl->srv, conn, req, -ECANCELED, "compute is shutting down");
        } else if ((dead = nf_live_check(&m->st) & ~NF_READY_COMPUTE) != 0) {
            /* Checked now, not only on the timer: a request right after a death fails too. */
            nf_live_message(&m->st, dead, msg, sizeof(msg));
            nf_server_send_error(dl->srv, conn, req, -EOWNERDEAD, "%s", msg);
        } else if (nf_gen_submit(&m->gen, conn, req, env->generate) < 0) {
            nf_server_send_error(dl->srv, conn, req, -ENOMEM, "out of memory queueing the request");
        }
        return true;
    case NANOFLOW__ENVELOPE__MSG_CANCEL:
        if (!nf_gen_cancel(&m->gen, conn, req, env->cancel->target_id))
            nf_log(NF_LOG_DEBUG, "cancel of request %llu: no such generation",
                   (unsigned long long)env->cancel->target_id);
        return true;
    default: return false;
    }
}

static int on_stats(struct nf_daemon_loop *dl, uint64_t conn, uint64_t req)
{
    struct compute *m = dl->ud;
    return nf_gen_stats_reply(&m->gen, dl->srv, conn, req);
}

static void on_close(struct nf_daemon_loop *dl, uint64_t conn)
{
    struct compute *m = dl->ud;
    nf_gen_conn_closed(&m->gen, conn);
}

static const struct nf_daemon_hooks hooks = {
    .request = on_request,
    .conn_closed = on_close,
    .mem = on_mem,
    .stats = on_stats,
    .shutdown = on_shutdown,
    .stop = on_stop,
    .dead = on_dead,
};

static int serve(struct compute *m, char *err, size_t errlen)
{
    int rc = nf_daemon_loop_start(&m->dl, NF_ROLE_COMPUTE, m->dir, &m->st, NF_READY_COMPUTE, &hooks,
                                  m, err, errlen);
    if (rc < 0)
        return rc;
    m->gen.srv = m->dl.srv;
    nf_daemon_loop_ready(&m->dl);
    nf_log(NF_LOG_INFO, "ready on %s (pid %d)", m->dl.sock, (int)getpid());
    nf_daemon_loop_run(&m->dl);
    return 0;
}

static void cleanup(struct compute *m)
{
    nf_gen_stop(&m->gen);
    nf_daemon_loop_close(&m->dl);
    if (m->attached) {
        atomic_fetch_and(&m->st.sync->ready_mask, ~NF_READY_COMPUTE);
        nf_stack_detach(&m->st);
    }
    nf_vocab_free(m->v);
    if (m->f)
        nf_nft_close(m->f);
    nf_vocab_free(m->gen.dvocab);
    nf_model_free(m->gen.dmodel);
}

int main(int argc, char **argv)
{
    static struct compute m;
    char err[PATH_MAX + 512] = "";
    const struct nf_daemon_argspec spec = {.role = NF_ROLE_COMPUTE,
                                           .attaches = true,
                                           .usage = usage,
                                           .own = own_opts,
                                           .parse = parse_own,
                                           .ud = &m};
    int rc = nf_daemon_args_parse(argc, argv, &spec, &m.o);
    if (rc)
        return rc == 1 ? 0 : 2;
    if (nf_daemon_begin(NF_ROLE_COMPUTE, m.o.run_dir, m.o.foreground, m.o.level, NULL, NULL, m.dir,
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
