/* main.c - nanoflow-fetcher: creates the stack's shared region and serves tile reads into it.
 *
 * Startup: flags, the .nft opened with O_DIRECT, the plan, the region (named after the run
 * directory) placed on the NUMA node compute will run on, the pid file, the fetch thread and
 * the control server on fetcher.sock (Hello/Health by the server, Stats and Shutdown here).
 * Then health READY and bit 0 of sync->ready_mask. Shutdown (the message, SIGTERM or SIGINT)
 * sets sync->stop, rings every bell, joins the fetch thread and, the region's creator, unlinks
 * the shm name last. */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <numa.h>
#include <pthread.h>
#include <sched.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "daemon.h"
#include "fetch.h"
#include "nf_err.h"
#include "nf_proc.h"
#include "nft.h"
#include "stack.h"

/* The fetcher's own flags; the stack's are in struct nf_daemon_args. */
struct fetcher_opts {
    int numa_node;      /* --numa-node; -1: the node this process starts on */
    const char *kv_dir; /* --kv-dir: where compute's KV file is (NULL: the run directory) */
    struct nf_fetch_opts o;
};

struct fetcher_main {
    struct nf_daemon_args a;
    struct fetcher_opts fo;
    uint64_t ram;       /* --ram, else 1 GiB */
    uint32_t n_threads; /* -t, resolved as compute resolves it (nf_stack_compute_threads) */
    char run_dir[PATH_MAX];
    char shm_name[NAME_MAX];
    struct nf_nft *f;
    struct nf_stack st;
    bool have_stack;
    struct nf_fetcher ft;
    bool have_ft;
    pthread_t thread;
    bool have_thread;
    int fetch_rc;
    struct nf_daemon_loop dl;
    uv_async_t fetch_failed; /* the fetch loop ended with an error: shut down */
    int ready_fd; /* detached: pipe to the waiting parent until startup is over, else -1 */
};

static void usage(FILE *out)
{
    fprintf(out,
            "usage: nanoflow-fetcher --model FILE.nft [--run-dir DIR] [--ram SIZE] [-t N]\n"
            "                        [--sparsity S] [--ctx N] [--parallel N] [--ubatch N]\n"
            "                        [--cache-type-k T] [--cache-type-v T] [--kv-block N]\n"
            "                        [--kv-dir DIR] [--qd N] [--inflight SIZE]\n"
            "                        [--verify all|sample|none]\n"
            "                        [--no-uring] [--nice N] [--numa-node N]\n"
            "                        [--expert-cache freq|cyclic] [--foreground]\n"
            "                        [--log-level error|warn|info|debug]\n\n"
            "Creates the stack's shared region and reads weight tiles into it with io_uring\n"
            "(O_DIRECT, registered buffers; a pread thread pool when io_uring is unavailable).\n\n"
            "  --model FILE       the stack's .nft tile file (required)\n"
            "  --run-dir DIR      run directory (default: $NANOFLOW_RUN_DIR, else\n"
            "                     $XDG_RUNTIME_DIR/nanoflow, else /run/nanoflow as root,\n"
            "                     else /tmp/nanoflow-UID)\n"
            "  --ram SIZE         RAM budget of the whole stack, e.g. 512M or 1G (default 1G)\n"
            "  -t, --threads N    compute threads the plan accounts for, 0..1024; 0 = what\n"
            "                     compute's pool has for 0: one per CPU (default: 0)\n"
            "  --sparsity S       share of FFN groups skipped per token, in [0, 1) (default: 0 =\n"
            "                     exact)\n"
            "  --ctx N            context length the plan holds KV for (default: 0 = the\n"
            "                     model's, capped at 4096 and by the budget)\n"
            "  --parallel N       sequences compute runs at once, whose KV caches the plan\n"
            "                     holds, 0..32 (default: 0 = chosen from the budget)\n"
            "  --ubatch N         compute's prompt chunk in tokens, 1..4096, whose activations\n"
            "                     the plan holds (default: chosen from the budget, up to\n"
            "                     512; the region records it for compute)\n"
            "  --cache-type-k T   KV cache type of K the plan counts: f16, q8_0 or q4_0 (the\n"
            "                     region records it for compute; default: f16)\n"
            "  --cache-type-v T   KV cache type of V, likewise (default: f16)\n"
            "  --kv-block N       compute's KV cache on disk in blocks of N positions,\n"
            "                     0..65536: the plan holds only its resident blocks (the region\n"
            "                     records it for compute; `up` passes it when the cache goes\n"
            "                     on disk; default: 0 = in RAM)\n"
            "  --kv-dir DIR       the directory of compute's KV file, whose blocks the\n"
            "                     fetcher reads into the pool as tiles (default: the run\n"
            "                     directory; `up` passes compute's)\n"
            "  --qd N             reads in flight (default 16, 1..4096)\n"
            "  --inflight SIZE    bytes in flight at most, past the first read, e.g. 64M;\n"
            "                     the pool's slots beyond it keep tiles for their next use\n"
            "                     (default: $NANOFLOW_FETCH_INFLIGHT, else 128M)\n"
            "  --verify MODE      check each tile's XXH3-64: all (default), sample (1 in 16),\n"
            "                     none\n"
            "  --no-uring         use the pread thread pool even when io_uring works\n"
            "                     (default: off)\n"
            "  --nice N           nice value of the fetch thread, -20..19, and of the\n"
            "                     fetcher's session group where the kernel groups by\n"
            "                     session (autogroup), so that it resubmits reads at once\n"
            "                     when the CPUs are busy; 0 leaves both as they are\n"
            "                     (default: -10; left as they are without CAP_SYS_NICE)\n"
            "  --numa-node N      bind the region's tile pool to node N (default: the node the\n"
            "                     fetcher starts on; a one-node machine ignores it)\n"
            "  --expert-cache P   which routed-expert tiles a load evicts first: freq, the one\n"
            "                     whose next use is expected farthest by its decayed use\n"
            "                     frequency (rarely chosen experts first); cyclic, the one\n"
            "                     farthest in layer order, as for dense tiles (default: freq)\n"
            "  --foreground       stay attached, log to stderr (default: detach once ready and\n"
            "                     log to DIR/fetcher.log)\n"
            "  --log-level L      error, warn, info or debug (default: info)\n"
            "  -h, --help         show this help\n");
}

enum {
    O_QD = NF_ARG_OWN,
    O_INFLIGHT,
    O_VERIFY,
    O_NO_URING,
    O_NUMA,
    O_EXPERT_CACHE,
    O_NICE,
    O_KV_DIR
};

static const struct option own_opts[] = {
    {"qd", required_argument, NULL, O_QD},
    {"inflight", required_argument, NULL, O_INFLIGHT},
    {"verify", required_argument, NULL, O_VERIFY},
    {"no-uring", no_argument, NULL, O_NO_URING},
    {"numa-node", required_argument, NULL, O_NUMA},
    {"expert-cache", required_argument, NULL, O_EXPERT_CACHE},
    {"nice", required_argument, NULL, O_NICE},
    {"kv-dir", required_argument, NULL, O_KV_DIR},
    {NULL, 0, NULL, 0},
};

/* Parses one of own_opts: 0 or -EINVAL. */
static int parse_own(int val, const char *arg, void *ud)
{
    struct fetcher_opts *fo = ud;
    long v;
    switch (val) {
    case O_QD:
        if (nf_daemon_arg_long(arg, 1, 4096, &v))
            return -EINVAL;
        fo->o.qd = (unsigned)v;
        return 0;
    case O_INFLIGHT: return nf_daemon_arg_size(arg, &fo->o.inflight);
    case O_VERIFY:
        if (!strcmp(arg, "all"))
            fo->o.verify = NF_VERIFY_ALL;
        else if (!strcmp(arg, "sample"))
            fo->o.verify = NF_VERIFY_SAMPLE;
        else if (!strcmp(arg, "none"))
            fo->o.verify = NF_VERIFY_NONE;
        else
            return -EINVAL;
        return 0;
    case O_NO_URING: fo->o.no_uring = true; return 0;
    case O_KV_DIR: fo->kv_dir = arg; return 0;
    case O_NICE:
        if (nf_daemon_arg_long(arg, -20, 19, &v))
            return -EINVAL;
        fo->o.nice = (int)v;
        return 0;
    case O_EXPERT_CACHE:
        if (!strcmp(arg, "freq"))
            fo->o.expert_cyclic = false;
        else if (!strcmp(arg, "cyclic"))
            fo->o.expert_cyclic = true;
        else
            return -EINVAL;
        return 0;
    case O_NUMA:
        if (nf_daemon_arg_long(arg, 0, 4095, &v))
            return -EINVAL;
        fo->numa_node = (int)v;
        return 0;
    default: return -EINVAL;
    }
}

/* Detaches (nf_daemon_begin's hook): forks, and the parent waits on a pipe until the child
 * reports that startup is over, then exits 0 (ready) or 1 (failed, or the child died); the child
 * gets the pipe's write end in *(int *)ud and detaches as every daemon does. */
static int detach(const char *log_path, void *ud)
{
    int *ready_fd = ud, p[2];
    if (pipe2(p, O_CLOEXEC) < 0)
        return -errno;
    fflush(NULL);
    pid_t pid = fork();
    if (pid < 0)
        return -errno;
    if (pid > 0) {
        close(p[1]);
        char c = 1;
        ssize_t n;
        while ((n = read(p[0], &c, 1)) < 0 && errno == EINTR)
            ;
        _exit(n == 1 && c == 0 ? 0 : 1);
    }
    close(p[0]);
    *ready_fd = p[1];
    return nf_daemon_detach(log_path);
}

/* Tells the waiting parent (detached mode) that startup is over: ok or failed. */
static void report_startup(int *ready_fd, bool ok)
{
    if (*ready_fd < 0)
        return;
    char c = ok ? 0 : 1;
    if (write(*ready_fd, &c, 1) != 1)
        nf_log(NF_LOG_WARN, "cannot report startup to the parent: %s", strerror(errno));
    close(*ready_fd);
    *ready_fd = -1;
}

/* Binds the pool's pages to the node compute runs on. Without NUMA support or with one node
 * this does nothing. Pages not yet touched are placed at their first touch (the fetcher's
 * registration or first read). */
static void place_pool(struct fetcher_main *m)
{
    if (numa_available() < 0) {
        nf_log(NF_LOG_DEBUG, "numa: not available, pool left to the kernel's default policy");
        return;
    }
    int max = numa_max_node();
    if (max <= 0)
        return; /* one node: nothing to choose */
    int node = m->fo.numa_node;
    if (node < 0) {
        int cpu = sched_getcpu();
        node = cpu >= 0 ? numa_node_of_cpu(cpu) : 0;
        if (node < 0)
            node = 0;
    }
    if (node > max) {
        nf_log(NF_LOG_WARN, "numa: node %d does not exist (max %d): pool not placed", node, max);
        return;
    }
    numa_tonode_memory(m->st.pool, nf_stack_pool_bytes(&m->st), node);
    nf_log(NF_LOG_INFO, "numa: pool placed on node %d of %d", node, max + 1);
}

/* --- control loop hooks (daemons/common/loop.c does the rest) ----------------------------- */

static void on_mem(struct nf_daemon_loop *dl)
{
    struct fetcher_main *m = dl->ud;
    atomic_store(&m->st.ctr->mem_fetcher, nf_proc_private_bytes(0));
}

/* Joins the fetch thread (the shutdown set sync->stop) before fetch_failed closes. */
static void on_stop(struct nf_daemon_loop *dl)
{
    struct fetcher_main *m = dl->ud;
    if (m->have_thread) {
        pthread_join(m->thread, NULL);
        m->have_thread = false;
    }
}

static const struct nf_daemon_hooks hooks = {.mem = on_mem, .stop = on_stop};

static void on_fetch_failed(uv_async_t *a)
{
    struct fetcher_main *m = a->data;
    nf_daemon_loop_shutdown(&m->dl, "the fetch loop failed");
}

static void *fetch_thread(void *arg)
{
    struct fetcher_main *m = arg;
    m->fetch_rc = nf_fetch_run(&m->ft);
    if (m->fetch_rc < 0) {
        nf_log(NF_LOG_ERROR, "fetch loop failed: %s", nf_strerror(m->fetch_rc));
        /* Compute would wait for its tiles forever: stop the stack. */
        uv_async_send(&m->fetch_failed);
    }
    return NULL;
}

/* --- startup -------------------------------------------------------------------------------- */

static int create_region(struct fetcher_main *m, char *err, size_t errlen)
{
    struct nf_stack_plan plan;
    float sparsity = m->a.sparsity >= 0 ? m->a.sparsity : 0;
    int rc = nf_stack_plan_kv(m->f, m->ram, m->a.ctx, m->n_threads, m->a.parallel, m->a.ubatch,
                              m->a.type_k, m->a.type_v, m->a.kv_block, &plan, err, errlen);
    if (rc < 0)
        return rc;
    nf_rundir_shm_name(m->run_dir, m->shm_name, sizeof(m->shm_name));
    rc = nf_stack_create(&m->st, m->shm_name, m->f, &plan, sparsity, m->n_threads, err, errlen);
    if (rc == -EEXIST) {
        /* We hold the pid file, so no live fetcher owns this name: a crashed stack left it. */
        nf_log(NF_LOG_WARN, "removing stale shared memory %s", m->shm_name);
        nf_stack_unlink(m->shm_name);
        rc = nf_stack_create(&m->st, m->shm_name, m->f, &plan, sparsity, m->n_threads, err, errlen);
    }
    if (rc < 0)
        return rc;
    m->have_stack = true;
    /* The KV file's path for the fetcher's reads and compute's check (before ready). */
    if (m->st.cfg->kv_tiles)
        nf_rundir_kv_path(m->run_dir, m->fo.kv_dir, m->st.cfg->kv_path, sizeof(m->st.cfg->kv_path));
    char classes[160] = "";
    size_t o = 0;
    for (uint32_t k = 0; k < plan.n_classes && o < sizeof(classes); k++) {
        m->fo.o.class_min[k] = (uint32_t)plan.class_min[k];
        int n = snprintf(classes + o, sizeof(classes) - o, "%s%" PRIu64 " x %" PRIu64,
                         k ? " + " : "", plan.classes[k].n_slots, plan.classes[k].slot_size);
        if (n > 0)
            o += (size_t)n;
    }
    nf_log(NF_LOG_INFO,
           "region %s: %" PRIu64 " bytes, pool %" PRIu64 " bytes in %" PRIu64 " slots (%s "
           "bytes), %" PRIu64 " tiles, budget %" PRIu64 ", n_ctx %u",
           m->shm_name, (uint64_t)m->st.shm.size, plan.pool_bytes, plan.n_slots, classes,
           m->f->n_tiles, m->ram, plan.n_ctx);
    return 0;
}

static int start(struct fetcher_main *m, char *err, size_t errlen)
{
    int rc = nf_nft_open(&m->f, m->a.model, true, err, errlen);
    if (rc < 0)
        return rc;
    if ((rc = create_region(m, err, errlen)) < 0)
        return rc;
    place_pool(m);
    if ((rc = nf_fetch_init(&m->ft, &m->st, m->f, &m->fo.o, err, errlen)) < 0)
        return rc;
    m->have_ft = true;
    nf_log(NF_LOG_INFO, "reading with %s, queue depth %u, %" PRIu64 " MiB in flight, verify %s",
           m->ft.backend_name, m->ft.o.qd, m->ft.o.inflight >> 20,
           m->fo.o.verify == NF_VERIFY_ALL      ? "all"
           : m->fo.o.verify == NF_VERIFY_SAMPLE ? "1 in 16"
                                                : "none");
    return 0;
}

static int serve(struct fetcher_main *m, char *err, size_t errlen)
{
    int rc = nf_daemon_loop_start(&m->dl, NF_ROLE_FETCHER, m->run_dir, &m->st, NF_READY_FETCHER,
                                  &hooks, m, err, errlen);
    if (rc < 0)
        return rc;
    uv_async_init(&m->dl.loop, &m->fetch_failed, on_fetch_failed);
    m->fetch_failed.data = m;
    if ((rc = pthread_create(&m->thread, NULL, fetch_thread, m)) != 0)
        return nf_errf(err, errlen, -rc, "cannot start the fetch thread: %s", strerror(rc));
    m->have_thread = true;
    nf_daemon_loop_ready(&m->dl);
    nf_log(NF_LOG_INFO, "ready on %s (pid %d)", m->dl.sock, (int)getpid());
    report_startup(&m->ready_fd, true);
    nf_daemon_loop_run(&m->dl);
    return 0;
}

static void cleanup(struct fetcher_main *m)
{
    if (m->have_stack) {
        atomic_store(&m->st.sync->stop, 1);
        nf_notify_wake(&m->st.sync->fetch_bell);
    }
    if (m->have_thread)
        pthread_join(m->thread, NULL);
    nf_daemon_loop_close(&m->dl);
    if (m->have_ft)
        nf_fetch_free(&m->ft);
    if (m->have_stack) {
        /* The creator unlinks the name last: `down` stopped compute and predictor first. */
        nf_stack_detach(&m->st);
        nf_stack_unlink(m->shm_name);
    }
    if (m->f)
        nf_nft_close(m->f);
}

int main(int argc, char **argv)
{
    static struct fetcher_main m;
    char err[PATH_MAX + 512] = "";
    m.fo = (struct fetcher_opts){.numa_node = -1,
                                 .o = {.qd = 16,
                                       .inflight = NF_FETCH_INFLIGHT,
                                       .verify = NF_VERIFY_ALL,
                                       .nice = NF_FETCH_NICE}};
    const char *inflight = getenv("NANOFLOW_FETCH_INFLIGHT");
    if (inflight && nf_daemon_arg_size(inflight, &m.fo.o.inflight) < 0) {
        fprintf(stderr,
                "nanoflow-fetcher: NANOFLOW_FETCH_INFLIGHT must be a size such as 64M, "
                "not '%s'\n",
                inflight);
        return 2;
    }
    const struct nf_daemon_argspec spec = {
        .role = NF_ROLE_FETCHER, .usage = usage, .own = own_opts, .parse = parse_own, .ud = &m.fo};
    int rc = nf_daemon_args_parse(argc, argv, &spec, &m.a);
    if (rc)
        return rc == 1 ? 0 : 2;
    m.ram = m.a.ram ? m.a.ram : 1ull << 30;
    /* -t 0 (what `up` passes every daemon by default): the plan accounts for the threads of
     * compute's pool, one per CPU. */
    m.n_threads = nf_stack_compute_threads(m.a.threads > 0 ? (uint32_t)m.a.threads : 0);
    m.ready_fd = -1;
    if (nf_daemon_begin(NF_ROLE_FETCHER, m.a.run_dir, m.a.foreground, m.a.level, detach,
                        &m.ready_fd, m.run_dir, sizeof(m.run_dir))) {
        report_startup(&m.ready_fd, false);
        return 1;
    }
    rc = start(&m, err, sizeof(err));
    if (rc == 0)
        rc = serve(&m, err, sizeof(err));
    if (rc < 0)
        nf_log(NF_LOG_ERROR, "%s", err[0] ? err : nf_strerror(rc));
    report_startup(&m.ready_fd, false); /* no-op once ready was reported */
    cleanup(&m);
    if (rc == 0 && m.fetch_rc < 0)
        rc = m.fetch_rc;
    nf_daemon_end(NF_ROLE_FETCHER, m.run_dir, rc);
    return rc == 0 ? 0 : 1;
}
