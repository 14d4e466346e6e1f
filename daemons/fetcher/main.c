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
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>
#include <uv.h>

#include "daemon.h"
#include "fetch.h"
#include "nf_err.h"
#include "nf_proc.h"
#include "nf_size.h"
#include "nft.h"
#include "stack.h"

struct args {
    const char *run_dir_arg, *model, *log_level;
    uint64_t ram;
    uint32_t n_ctx, n_threads;
    float sparsity;
    bool foreground;
    int numa_node; /* -1: the node this process starts on */
    struct nf_fetch_opts o;
};

struct fetcher_main {
    struct args a;
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
    uv_loop_t loop;
    struct nf_server *srv;
    uv_signal_t sigterm, sigint;
    uv_timer_t mem_timer, stop_timer;
    bool stopping;
    int ready_fd; /* detached: pipe to the waiting parent until startup is over, else -1 */
};

static void usage(FILE *out)
{
    fprintf(out,
            "usage: nanoflow-fetcher --model FILE.nft [--run-dir DIR] [--ram SIZE] [-t N]\n"
            "                        [--sparsity S] [--ctx N] [--qd N] [--verify all|sample|none]\n"
            "                        [--no-uring] [--numa-node N] [--foreground]\n"
            "                        [--log-level error|warn|info|debug]\n\n"
            "Creates the stack's shared region and reads weight tiles into it with io_uring\n"
            "(O_DIRECT, registered buffers; a pread thread pool when io_uring is unavailable).\n\n"
            "  --model FILE       the stack's .nft tile file (required)\n"
            "  --run-dir DIR      run directory (default: $NANOFLOW_RUN_DIR, else\n"
            "                     $XDG_RUNTIME_DIR/nanoflow, else /tmp/nanoflow-UID)\n"
            "  --ram SIZE         RAM budget of the whole stack, e.g. 512M or 1G (default 1G)\n"
            "  -t, --threads N    compute threads the plan accounts for, 0..1024 (default: 0 =\n"
            "                     one per CPU)\n"
            "  --sparsity S       share of FFN groups skipped per token, in [0, 1) (default: 0 =\n"
            "                     exact)\n"
            "  --ctx N            context length the plan holds KV for (default: 0 = the\n"
            "                     model's, capped at 4096 and by the budget)\n"
            "  --qd N             reads in flight (default 16, 1..4096)\n"
            "  --verify MODE      check each tile's XXH3-64: all (default), sample (1 in 16),\n"
            "                     none\n"
            "  --no-uring         use the pread thread pool even when io_uring works\n"
            "                     (default: off)\n"
            "  --numa-node N      place the shared region on node N (default: the current node)\n"
            "  --foreground       stay attached, log to stderr (default: detach once ready and\n"
            "                     log to DIR/fetcher.log)\n"
            "  --log-level L      error, warn, info or debug (default: info)\n"
            "  -h, --help         show this help\n");
}

/* --ram: a size (nf_parse_size) that is positive and fits in an int64. */
static int parse_size(const char *s, uint64_t *out)
{
    uint64_t v;
    if (nf_parse_size(s, &v) < 0 || v == 0 || v > (uint64_t)9.0e18)
        return -EINVAL;
    *out = v;
    return 0;
}

static int parse_u32(const char *s, uint32_t lo, uint32_t hi, uint32_t *out)
{
    char *end;
    errno = 0;
    unsigned long v = strtoul(s, &end, 10);
    if (errno || end == s || *end || v < lo || v > hi)
        return -EINVAL;
    *out = (uint32_t)v;
    return 0;
}

static bool value_flag(const char *k)
{
    static const char *const names[] = {"--run-dir", "--model",     "--ram",      "-t",
                                        "--threads", "--ctx",       "--sparsity", "--qd",
                                        "--verify",  "--numa-node", "--log-level"};
    for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++)
        if (!strcmp(k, names[i]))
            return true;
    return false;
}

/* Returns 0, 1 after --help, or -1 after a usage error (message printed). */
static int parse_args(int argc, char **argv, struct args *a)
{
    memset(a, 0, sizeof(*a));
    a->ram = 1ull << 30;
    a->numa_node = -1;
    a->o.qd = 16;
    a->o.verify = NF_VERIFY_ALL;
    a->log_level = "info";
    for (int i = 1; i < argc; i++) {
        const char *k = argv[i];
        const char *v = i + 1 < argc ? argv[i + 1] : NULL;
        bool takes = true;
        int bad = 0;
        uint32_t u;
        /* "--flag=value", as nanoflowctl and the other daemons take it. */
        char key[32];
        const char *eq = strncmp(k, "--", 2) ? NULL : strchr(k, '=');
        if (eq && (size_t)(eq - k) < sizeof(key)) {
            memcpy(key, k, (size_t)(eq - k));
            key[eq - k] = '\0';
            k = key;
            v = eq + 1;
        } else {
            eq = NULL;
        }
        if (!strcmp(k, "-h") || !strcmp(k, "--help")) {
            usage(stdout);
            return 1;
        } else if (!strcmp(k, "--foreground")) {
            a->foreground = true;
            takes = false;
        } else if (!strcmp(k, "--no-uring")) {
            a->o.no_uring = true;
            takes = false;
        } else if (!value_flag(k)) {
            fprintf(stderr, "nanoflow-fetcher: unknown flag '%s' (try 'nanoflow-fetcher --help')\n",
                    k);
            return -1;
        } else if (!v) {
            fprintf(stderr, "nanoflow-fetcher: %s needs a value (try 'nanoflow-fetcher --help')\n",
                    k);
            return -1;
        } else if (!strcmp(k, "--run-dir")) {
            a->run_dir_arg = v;
        } else if (!strcmp(k, "--model")) {
            a->model = v;
        } else if (!strcmp(k, "--ram")) {
            bad = parse_size(v, &a->ram);
        } else if (!strcmp(k, "-t") || !strcmp(k, "--threads")) {
            bad = parse_u32(v, 0, 1024, &a->n_threads);
        } else if (!strcmp(k, "--ctx")) {
            bad = parse_u32(v, 0, 1u << 24, &a->n_ctx);
        } else if (!strcmp(k, "--sparsity")) {
            char *end;
            a->sparsity = strtof(v, &end);
            bad = (*end || end == v || !(a->sparsity >= 0 && a->sparsity < 1)) ? -EINVAL : 0;
        } else if (!strcmp(k, "--qd")) {
            bad = parse_u32(v, 1, 4096, &a->o.qd);
        } else if (!strcmp(k, "--verify")) {
            if (!strcmp(v, "all"))
                a->o.verify = NF_VERIFY_ALL;
            else if (!strcmp(v, "sample"))
                a->o.verify = NF_VERIFY_SAMPLE;
            else if (!strcmp(v, "none"))
                a->o.verify = NF_VERIFY_NONE;
            else
                bad = -EINVAL;
        } else if (!strcmp(k, "--numa-node")) {
            bad = parse_u32(v, 0, 4095, &u);
            a->numa_node = (int)u;
        } else if (!strcmp(k, "--log-level")) {
            a->log_level = v;
        } else {
            fprintf(stderr, "nanoflow-fetcher: unknown flag '%s' (try 'nanoflow-fetcher --help')\n",
                    k);
            return -1;
        }
        if (bad) {
            fprintf(stderr,
                    "nanoflow-fetcher: invalid value '%s' for %s (try 'nanoflow-fetcher --help')\n",
                    v, k);
            return -1;
        }
        if (eq && !takes) {
            fprintf(stderr, "nanoflow-fetcher: %s takes no value (try 'nanoflow-fetcher --help')\n",
                    k);
            return -1;
        }
        if (takes && !eq)
            i++;
    }
    if (!a->model) {
        fprintf(stderr,
                "nanoflow-fetcher: --model FILE.nft is required (try 'nanoflow-fetcher --help')\n");
        return -1;
    }
    if (a->n_threads == 0) { /* -t 0 (what `up` passes by default): one per CPU, as compute */
        long n = sysconf(_SC_NPROCESSORS_ONLN);
        a->n_threads = n > 0 && n <= 1024 ? (uint32_t)n : 1;
    }
    return 0;
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
    int node = m->a.numa_node;
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

/* --- control server ------------------------------------------------------------------------- */

static void on_mem_timer(uv_timer_t *t)
{
    struct fetcher_main *m = t->data;
    atomic_store(&m->st.ctr->mem_fetcher, nf_proc_private_bytes(0));
}

/* Stats: the shared helper reads the fetcher's counters from the region (the same numbers any
 * process sees); only the private memory gauge is refreshed first. */
static void send_stats(struct fetcher_main *m, uint64_t conn, uint64_t req)
{
    atomic_store(&m->st.ctr->mem_fetcher, nf_proc_private_bytes(0));
    int rc = nf_stats_reply(m->srv, conn, req, &m->st, NF_ROLE_FETCHER);
    if (rc < 0)
        nf_server_send_error(m->srv, conn, req, rc, "stats: %s", nf_strerror(rc));
}

static void close_handle(uv_handle_t *h)
{
    if (!uv_is_closing(h))
        uv_close(h, NULL);
}

/* After the Shutdown reply had a loop turn to go out: stop serving, let the loop end. */
static void on_stop_timer(uv_timer_t *t)
{
    struct fetcher_main *m = t->data;
    nf_server_stop(m->srv);
    m->srv = NULL;
    close_handle((uv_handle_t *)&m->sigterm);
    close_handle((uv_handle_t *)&m->sigint);
    close_handle((uv_handle_t *)&m->mem_timer);
    close_handle((uv_handle_t *)&m->stop_timer);
}

static void begin_shutdown(struct fetcher_main *m, const char *why)
{
    if (m->stopping)
        return;
    m->stopping = true;
    nf_log(NF_LOG_INFO, "shutting down (%s)", why);
    if (m->srv)
        nf_server_set_health(m->srv, NANOFLOW__HEALTH__STATE__STOPPING);
    nf_stack_stop(&m->st, 1u);
    uv_timer_start(&m->stop_timer, on_stop_timer, 50, 0);
}

static void on_request(struct nf_server *s, uint64_t conn, nf_envelope *env, void *ud)
{
    struct fetcher_main *m = ud;
    switch (env->msg_case) {
    case NANOFLOW__ENVELOPE__MSG_STATS_REQUEST: send_stats(m, conn, env->request_id); break;
    case NANOFLOW__ENVELOPE__MSG_SHUTDOWN: {
        nf_server_send_stopping(s, conn, env->request_id);
        begin_shutdown(m, "Shutdown request");
        break;
    }
    default:
        nf_server_send_error(s, conn, env->request_id, NF_EPROTO,
                             "the fetcher does not handle this message (%d)", (int)env->msg_case);
        break;
    }
}

static void on_signal(uv_signal_t *h, int signum)
{
    begin_shutdown(h->data, signum == SIGTERM ? "SIGTERM" : "SIGINT");
}

static void *fetch_thread(void *arg)
{
    struct fetcher_main *m = arg;
    m->fetch_rc = nf_fetch_run(&m->ft);
    if (m->fetch_rc < 0)
        nf_log(NF_LOG_ERROR, "fetch loop failed: %s", nf_strerror(m->fetch_rc));
    return NULL;
}

/* --- startup -------------------------------------------------------------------------------- */

static int create_region(struct fetcher_main *m, char *err, size_t errlen)
{
    struct nf_stack_plan plan;
    int rc = nf_stack_plan(m->f, m->a.ram, m->a.n_ctx, m->a.n_threads ? m->a.n_threads : 1, &plan,
                           err, errlen);
    if (rc < 0)
        return rc;
    nf_rundir_shm_name(m->run_dir, m->shm_name, sizeof(m->shm_name));
    rc = nf_stack_create(&m->st, m->shm_name, m->f, &plan, m->a.sparsity, m->a.n_threads, err,
                         errlen);
    if (rc == -EEXIST) {
        /* We hold the pid file, so no live fetcher owns this name: a crashed stack left it. */
        nf_log(NF_LOG_WARN, "removing stale shared memory %s", m->shm_name);
        nf_stack_unlink(m->shm_name);
        rc = nf_stack_create(&m->st, m->shm_name, m->f, &plan, m->a.sparsity, m->a.n_threads, err,
                             errlen);
    }
    if (rc < 0)
        return rc;
    m->have_stack = true;
    char classes[160] = "";
    size_t o = 0;
    for (uint32_t k = 0; k < plan.n_classes && o < sizeof(classes); k++) {
        m->a.o.class_min[k] = (uint32_t)plan.class_min[k];
        int n = snprintf(classes + o, sizeof(classes) - o, "%s%" PRIu64 " x %" PRIu64,
                         k ? " + " : "", plan.classes[k].n_slots, plan.classes[k].slot_size);
        if (n > 0)
            o += (size_t)n;
    }
    nf_log(NF_LOG_INFO,
           "region %s: %" PRIu64 " bytes, pool %" PRIu64 " bytes in %" PRIu64 " slots (%s "
           "bytes), %" PRIu64 " tiles, budget %" PRIu64 ", n_ctx %u",
           m->shm_name, (uint64_t)m->st.shm.size, plan.pool_bytes, plan.n_slots, classes,
           m->f->n_tiles, m->a.ram, plan.n_ctx);
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
    if ((rc = nf_fetch_init(&m->ft, &m->st, m->f, &m->a.o, err, errlen)) < 0)
        return rc;
    m->have_ft = true;
    nf_log(NF_LOG_INFO, "reading with %s, queue depth %u, verify %s", m->ft.backend_name,
           m->ft.o.qd,
           m->a.o.verify == NF_VERIFY_ALL      ? "all"
           : m->a.o.verify == NF_VERIFY_SAMPLE ? "1 in 16"
                                               : "none");
    return 0;
}

static int serve(struct fetcher_main *m, char *err, size_t errlen)
{
    char sock[PATH_MAX];
    int rc = uv_loop_init(&m->loop);
    if (rc < 0) {
        snprintf(err, errlen, "uv_loop_init: %s", uv_strerror(rc));
        return rc;
    }
    nf_rundir_path(m->run_dir, NF_ROLE_FETCHER, "sock", sock, sizeof(sock));
    rc = nf_server_start(&m->srv, &m->loop, sock, NF_ROLE_FETCHER, on_request, NULL, m);
    if (rc < 0) {
        snprintf(err, errlen, "cannot serve %s: %s", sock, nf_strerror(rc));
        return rc;
    }
    uv_signal_init(&m->loop, &m->sigterm);
    uv_signal_init(&m->loop, &m->sigint);
    m->sigterm.data = m->sigint.data = m;
    uv_signal_start(&m->sigterm, on_signal, SIGTERM);
    uv_signal_start(&m->sigint, on_signal, SIGINT);
    uv_timer_init(&m->loop, &m->mem_timer);
    uv_timer_init(&m->loop, &m->stop_timer);
    m->mem_timer.data = m->stop_timer.data = m;
    uv_timer_start(&m->mem_timer, on_mem_timer, 0, 1000);

    if ((rc = pthread_create(&m->thread, NULL, fetch_thread, m)) != 0) {
        snprintf(err, errlen, "cannot start the fetch thread: %s", strerror(rc));
        return -rc;
    }
    m->have_thread = true;
    nf_server_set_health(m->srv, NANOFLOW__HEALTH__STATE__READY);
    atomic_fetch_or(&m->st.sync->ready_mask, NF_READY_FETCHER);
    nf_log(NF_LOG_INFO, "ready on %s (pid %d)", sock, (int)getpid());
    report_startup(&m->ready_fd, true);
    uv_run(&m->loop, UV_RUN_DEFAULT);
    return 0;
}

static void walk_close(uv_handle_t *h, void *arg)
{
    (void)arg;
    close_handle(h);
}

static void cleanup(struct fetcher_main *m)
{
    if (m->have_stack) {
        atomic_store(&m->st.sync->stop, 1);
        nf_notify_wake(&m->st.sync->fetch_bell);
    }
    if (m->have_thread)
        pthread_join(m->thread, NULL);
    if (m->srv) { /* startup failed after the server started */
        nf_server_stop(m->srv);
        m->srv = NULL;
    }
    if (m->loop.data != (void *)-1) {
        uv_walk(&m->loop, walk_close, NULL);
        uv_run(&m->loop, UV_RUN_DEFAULT);
        uv_loop_close(&m->loop);
    }
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
    int rc = parse_args(argc, argv, &m.a);
    if (rc)
        return rc > 0 ? 0 : 2;
    enum nf_log_level level;
    if (nf_daemon_log_level(NF_ROLE_FETCHER, m.a.log_level, &level) < 0)
        return 2;
    m.loop.data = (void *)-1; /* not initialized yet */
    m.ready_fd = -1;
    if (nf_daemon_begin(NF_ROLE_FETCHER, m.a.run_dir_arg, m.a.foreground, level, detach,
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
