/* test_predictor_daemon.c - nanoflow-predictor against a region this test creates, playing the
 * fetcher (drains the prefetch ring) and compute (publishes activations and used sets). */
#include <errno.h>
#include <fcntl.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>

#include "daemon.h"
#include "nf_err.h"
#include "nft.h"
#include "stack.h"

/* The expected forecasts are computed with the daemon's own planning module. */
#include "../daemons/predictor/plan.c"
#include "../daemons/predictor/loop.h"

#define BIN     NF_BUILD_DIR "/daemons/nanoflow-predictor"
#define STORIES NF_SHARED_DIR "/models/stories260K.gguf"
#define MOE     NF_SHARED_DIR "/models/moe-Q8_0.gguf"

static char tmpdir[256], nft_path[512], moe_path[512], run_dir[512], log_path[512];

static int setup(void **state)
{
    if (access(BIN, X_OK) != 0) {
        print_message("skip: %s not built\n", BIN);
        exit(77);
    }
    snprintf(tmpdir, sizeof(tmpdir), "/tmp/test_predictor_daemon-XXXXXX");
    if (!mkdtemp(tmpdir))
        return -1;
    snprintf(nft_path, sizeof(nft_path), "%s/stories.nft", tmpdir);
    snprintf(run_dir, sizeof(run_dir), "%s/run", tmpdir);
    snprintf(log_path, sizeof(log_path), "%s/predictor.out", tmpdir);
    struct nf_nft_convert_opts o = {.tile_size = 8192};
    char err[512];
    if (nf_nft_convert(STORIES, nft_path, &o, err, sizeof(err))) {
        fprintf(stderr, "convert: %s\n", err);
        return -1;
    }
    snprintf(moe_path, sizeof(moe_path), "%s/moe.nft", tmpdir);
    o.tile_size = 65536;
    if (nf_nft_convert(MOE, moe_path, &o, err, sizeof(err))) {
        fprintf(stderr, "convert: %s\n", err);
        return -1;
    }
    return 0;
}

static int teardown(void **state)
{
    char cmd[600];
    snprintf(cmd, sizeof(cmd), "rm -rf '%s'", tmpdir);
    return system(cmd) == 0 ? 0 : -1;
}

static void sleep_ms(int ms)
{
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

/* Starts the daemon in the foreground with argv (NULL-terminated, after the program name),
 * its output going to log_path. */
static pid_t spawn(const char *const *args)
{
    const char *argv[32] = {BIN};
    int n = 1;
    while (args[n - 1] && n < 31) {
        argv[n] = args[n - 1];
        n++;
    }
    argv[n] = NULL;
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        int fd = open(log_path, O_WRONLY | O_CREAT | O_APPEND, 0600);
        if (fd >= 0) {
            dup2(fd, 1);
            dup2(fd, 2);
        }
        execv(BIN, (char *const *)argv);
        _exit(127);
    }
    return pid;
}

/* Waits for pid to exit (up to ms) and returns its exit status, or -1 on timeout. */
static int wait_exit(pid_t pid, int ms)
{
    for (int t = 0; t < ms; t += 10) {
        int st;
        pid_t r = waitpid(pid, &st, WNOHANG);
        if (r == pid)
            return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
        sleep_ms(10);
    }
    return -1;
}

static void dump_log(void)
{
    char cmd[600];
    snprintf(cmd, sizeof(cmd), "cat '%s' >&2", log_path);
    if (system(cmd) != 0)
        fprintf(stderr, "(no log)\n");
}

static bool wait_until(_Atomic uint64_t *v, uint64_t want, int ms)
{
    for (int t = 0; t < ms; t += 5) {
        if (atomic_load(v) >= want)
            return true;
        sleep_ms(5);
    }
    return false;
}

static void publish_act(struct nf_stack *st, uint32_t layer, uint64_t step, const float *x)
{
    nf_act_slot_publish(nf_stack_act(st, layer), step, layer, x, st->cfg->n_embd);
    nf_notify_wake(&st->sync->act_bell);
}

static void publish_used(struct nf_stack *st, uint32_t layer, uint64_t step, uint32_t n,
                         const uint64_t *bits)
{
    nf_used_slot_publish(nf_stack_used(st, layer), step, layer, bits, n);
    nf_notify_wake(&st->sync->act_bell);
}

/* Drains the prefetch ring (as the fetcher would) and puts every drained tile back to EMPTY
 * (as if it had been read and evicted), so that later forecasts request it again. */
static int drain(struct nf_stack *st, struct nf_tile_req *reqs, int cap)
{
    int n = (int)nf_ring_sc_dequeue_burst(st->prefetch, reqs, (unsigned)cap, NULL);
    for (int i = 0; i < n; i++)
        atomic_store(&st->tiles[reqs[i].tile].state, NF_TILE_EMPTY);
    return n;
}

/* One request over the control socket; returns the reply (free with nf_envelope_free). */
static nf_envelope *ask(const char *sock, Nanoflow__Envelope__MsgCase what)
{
    char err[256];
    int fd = nf_client_connect(sock, 2000, err, sizeof(err));
    if (fd < 0)
        fail_msg("connect %s: %s", sock, err);
    nf_envelope env;
    nanoflow__envelope__init(&env);
    Nanoflow__StatsRequest sr;
    Nanoflow__HealthRequest hr;
    Nanoflow__Shutdown sd;
    nanoflow__stats_request__init(&sr);
    nanoflow__health_request__init(&hr);
    nanoflow__shutdown__init(&sd);
    env.msg_case = what;
    if (what == NANOFLOW__ENVELOPE__MSG_STATS_REQUEST)
        env.stats_request = &sr;
    else if (what == NANOFLOW__ENVELOPE__MSG_HEALTH_REQUEST)
        env.health_request = &hr;
    else
        env.shutdown = &sd;
    assert_int_equal(nf_client_send(fd, 42, &env), 0);
    nf_envelope *r = NULL;
    assert_int_equal(nf_client_recv(fd, &r, 5000), 1);
    assert_int_equal(r->request_id, 42);
    close(fd);
    return r;
}

/* Starts the predictor with args over the stack st and waits until it is ready. */
static pid_t spawn_ready(const char *const *args, struct nf_stack *st)
{
    pid_t pid = spawn(args);
    for (int t = 0; t < 10000 && !(atomic_load(&st->sync->ready_mask) & NF_READY_PREDICTOR);
         t += 10)
        sleep_ms(10);
    if (!(atomic_load(&st->sync->ready_mask) & NF_READY_PREDICTOR)) {
        dump_log();
        kill(pid, SIGKILL);
        fail_msg("predictor did not become ready");
    }
    return pid;
}

/* Asks the predictor pid to shut down over its socket; it must exit 0. */
static void shut_down(pid_t pid)
{
    char sock[600];
    nf_rundir_path(run_dir, NF_ROLE_PREDICTOR, "sock", sock, sizeof(sock));
    nf_envelope_free(ask(sock, NANOFLOW__ENVELOPE__MSG_SHUTDOWN));
    int status = wait_exit(pid, 5000);
    if (status != 0)
        dump_log();
    assert_int_equal(status, 0);
}

static uint64_t stat_value(const nf_envelope *r, const char *name)
{
    assert_int_equal(r->msg_case, NANOFLOW__ENVELOPE__MSG_STATS);
    for (size_t i = 0; i < r->stats->n_stages; i++)
        for (size_t j = 0; j < r->stats->stages[i]->n_counters; j++)
            if (!strcmp(r->stats->stages[i]->counters[j]->name, name))
                return r->stats->stages[i]->counters[j]->value;
    fail_msg("no counter %s", name);
    return 0;
}

static void fill_x(float *x, int n, uint64_t seed)
{
    for (int i = 0; i < n; i++) {
        seed = seed * 6364136223846793005ull + 1442695040888963407ull;
        x[i] = (float)((double)(seed >> 11) / 9007199254740992.0 - 0.5);
    }
}

/* Sparse mode: startup prefetch, forecasts turned into requests in use order with prio =
 * distance, lookahead that shrinks when the pool is full, scoring against used sets, Stats,
 * Shutdown. */
static void test_daemon_sparse(void **state)
{
    char err[512], shm[NAME_MAX], sock[600], pidf[600];
    assert_int_equal(nf_rundir_create(run_dir, err, sizeof(err)), 0);
    nf_rundir_shm_name(run_dir, shm, sizeof(shm));
    nf_stack_unlink(shm);
    struct nf_nft *f;
    assert_int_equal(nf_nft_open(&f, nft_path, false, err, sizeof(err)), 0);
    struct nf_stack_plan sp;
    if (nf_stack_plan(f, 64ull << 20, 0, 1, &sp, err, sizeof(err)))
        fail_msg("%s", err);
    struct nf_stack st;
    if (nf_stack_create(&st, shm, f, &sp, 0.5f, 1, err, sizeof(err)))
        fail_msg("%s", err);
    atomic_fetch_or(&st.sync->ready_mask, NF_READY_FETCHER); /* we are the fetcher */
    struct nf_plan p;
    assert_int_equal(nf_plan_init(&p, f, err, sizeof(err)), 0);
    struct nf_forecaster fc;
    assert_int_equal(nf_forecaster_init(&fc, &p, UINT64_MAX, err, sizeof(err)), 0);

    const char *args[] = {"--run-dir",  run_dir, "--model",     nft_path, "--foreground",
                          "--pred-mem", "16M",   "--log-level", "debug",  NULL};
    pid_t pid = spawn_ready(args, &st);
    nf_rundir_path(run_dir, NF_ROLE_PREDICTOR, "sock", sock, sizeof(sock));
    nf_envelope *r = ask(sock, NANOFLOW__ENVELOPE__MSG_HEALTH_REQUEST);
    assert_int_equal(r->msg_case, NANOFLOW__ENVELOPE__MSG_HEALTH);
    assert_int_equal(r->health->state, NANOFLOW__HEALTH__STATE__READY);
    nf_envelope_free(r);

    /* Startup: the first layers, every group (nothing known yet), layer 0 at prio 1. */
    struct nf_tile_req *reqs = malloc(sizeof(*reqs) * 4096);
    uint32_t *list = malloc(sizeof(uint32_t) * p.max_step);
    assert_true(wait_until(&st.ctr->p_lookahead, 1, 5000));
    sleep_ms(100);
    int n = drain(&st, reqs, 4096);
    assert_true(n > 0);
    assert_int_equal((uint64_t)n, atomic_load(&st.ctr->p_requests));
    int nl = nf_plan_layer(&p, 0, NULL, list, p.max_step), seen0 = 0;
    for (int i = 0; i < n; i++)
        for (int j = 0; j < nl; j++)
            if (reqs[i].tile == list[j]) {
                assert_int_equal(reqs[i].prio, 1);
                seen0++;
            }
    assert_int_equal(seen0, nl);

    /* Activation after layer 0 of step 7: forecasts of layers 1..k, in use order, prio = d. */
    float x[64];
    assert_int_equal(p.n_embd, 64);
    fill_x(x, 64, 5);
    uint64_t req0 = atomic_load(&st.ctr->p_requests);
    publish_act(&st, 0, 7, x);
    assert_true(wait_until(&st.ctr->p_predictions, 1, 5000));
    sleep_ms(200);
    uint64_t depth = atomic_load(&st.ctr->p_lookahead);
    print_message("lookahead %llu layers with a free pool\n", (unsigned long long)depth);
    assert_true(depth >= 1 && depth <= 4);
    /* The layer past the last one queued was forecast too, then found not to fit. */
    assert_true(atomic_load(&st.ctr->p_predictions) >= depth &&
                atomic_load(&st.ctr->p_predictions) <= depth + 1);
    n = drain(&st, reqs, 4096);
    assert_int_equal((uint64_t)n, atomic_load(&st.ctr->p_requests) - req0);
    uint64_t sel[8];
    int k = nf_forecast(&fc, 1, x, 0.5f, 0.1f, sel);
    assert_true(k > 0 && (uint32_t)k < p.layers[1].n_units);
    print_message("layer 1: %d of %u groups forecast\n", k, p.layers[1].n_units);
    nl = nf_plan_layer(&p, 1, sel, list, p.max_step);
    assert_true(n >= nl);
    for (int i = 0; i < nl; i++) {
        assert_int_equal(reqs[i].tile, list[i]);
        assert_int_equal(reqs[i].prio, 1);
    }
    for (int i = nl; i < n; i++)
        assert_true(reqs[i].prio >= 2 && reqs[i].prio <= depth);

    /* Compute used every group of layer 1 at step 7: tp = forecast, fn = the rest. */
    uint32_t nu = p.layers[1].n_units;
    uint64_t all[8];
    nf_sel_all(all, nu, p.words);
    publish_used(&st, 1, 7, nu, all);
    assert_true(wait_until(&st.ctr->p_true_pos, (uint64_t)k, 5000));
    sleep_ms(50);
    assert_int_equal(atomic_load(&st.ctr->p_true_pos), k);
    assert_int_equal(atomic_load(&st.ctr->p_false_pos), 0);
    assert_int_equal(atomic_load(&st.ctr->p_false_neg), nu - (uint32_t)k);

    /* A full pool (every slot LOADING): lookahead 1. */
    for (uint64_t i = 0; i < st.cfg->n_slots; i++)
        atomic_store(&st.slots[i].tile, 0);
    atomic_store(&st.tiles[0].state, NF_TILE_LOADING);
    uint64_t preds = atomic_load(&st.ctr->p_predictions);
    publish_act(&st, 1, 7, x);
    assert_true(wait_until(&st.ctr->p_predictions, preds + 1, 5000));
    sleep_ms(100);
    assert_int_equal(atomic_load(&st.ctr->p_lookahead), 1);
    assert_true(atomic_load(&st.ctr->p_predictions) <= preds + 2);

    /* Stats over the socket report the shared counters. */
    r = ask(sock, NANOFLOW__ENVELOPE__MSG_STATS_REQUEST);
    assert_int_equal(stat_value(r, "true_pos"), atomic_load(&st.ctr->p_true_pos));
    assert_int_equal(stat_value(r, "predictions"), atomic_load(&st.ctr->p_predictions));
    assert_int_equal(stat_value(r, "lookahead"), 1);
    assert_true(stat_value(r, "mem_bytes") > 0);
    nf_envelope_free(r);

    /* Shutdown: clean exit, stack told to stop, ready bit, socket and pid file gone. */
    r = ask(sock, NANOFLOW__ENVELOPE__MSG_SHUTDOWN);
    nf_envelope_free(r);
    int status = wait_exit(pid, 5000);
    if (status != 0)
        dump_log();
    assert_int_equal(status, 0);
    assert_int_equal(atomic_load(&st.sync->ready_mask) & NF_READY_PREDICTOR, 0);
    assert_int_equal(atomic_load(&st.sync->stop), 1);
    nf_rundir_path(run_dir, NF_ROLE_PREDICTOR, "pid", pidf, sizeof(pidf));
    assert_int_not_equal(access(sock, F_OK), 0);
    assert_int_not_equal(access(pidf, F_OK), 0);

    free(reqs);
    free(list);
    nf_forecaster_free(&fc);
    nf_plan_free(&p);
    nf_stack_detach(&st);
    nf_stack_unlink(shm);
    nf_nft_close(f);
}

/* How many of the n requests are EXPERT tiles. */
static int count_experts(const struct nf_nft *f, const struct nf_tile_req *reqs, int n)
{
    int c = 0;
    for (int i = 0; i < n; i++)
        c += f->tiles[reqs[i].tile].kind == NF_TILE_EXPERT;
    return c;
}

/* MoE: no expert before an activation or for layers two or more ahead; one layer ahead the
 * forecast's experts (top n_expert_used plus those within the gap), best first; scoring. */
static void test_daemon_moe(void **state)
{
    char err[512], shm[NAME_MAX];
    assert_int_equal(nf_rundir_create(run_dir, err, sizeof(err)), 0);
    nf_rundir_shm_name(run_dir, shm, sizeof(shm));
    nf_stack_unlink(shm);
    struct nf_nft *f;
    assert_int_equal(nf_nft_open(&f, moe_path, false, err, sizeof(err)), 0);
    struct nf_stack_plan sp;
    if (nf_stack_plan(f, 256ull << 20, 0, 1, &sp, err, sizeof(err)))
        fail_msg("%s", err);
    struct nf_stack st;
    if (nf_stack_create(&st, shm, f, &sp, 0, 1, err, sizeof(err)))
        fail_msg("%s", err);
    atomic_fetch_or(&st.sync->ready_mask, NF_READY_FETCHER);
    struct nf_plan p;
    assert_int_equal(nf_plan_init(&p, f, err, sizeof(err)), 0);
    assert_true(p.moe && p.n_layer >= 3);
    struct nf_forecaster fc;
    assert_int_equal(nf_forecaster_init(&fc, &p, UINT64_MAX, err, sizeof(err)), 0);
    const char *args[] = {"--run-dir",  run_dir, "--model",      moe_path,
                          "--pred-mem", "16M",   "--foreground", NULL};
    pid_t pid = spawn_ready(args, &st);
    const int cap = 1 << 16;
    struct nf_tile_req *reqs = malloc(sizeof(*reqs) * (size_t)cap);
    uint32_t *list = malloc(sizeof(uint32_t) * p.max_step);
    float *x = malloc(sizeof(float) * p.n_embd);

    /* Startup: the first layers' attention and router, no expert (none is known yet). */
    assert_true(wait_until(&st.ctr->p_lookahead, 1, 5000));
    sleep_ms(100);
    int n = drain(&st, reqs, cap);
    assert_true(n > 0);
    assert_int_equal(count_experts(f, reqs, n), 0);

    /* Activation after layer 0: layer 1's fixed tiles then its forecast experts, best first, at
     * prio 1; deeper layers without experts. */
    fill_x(x, (int)p.n_embd, 9);
    publish_act(&st, 0, 3, x);
    if (!wait_until(&st.ctr->p_predictions, 1, 5000)) {
        dump_log();
        kill(pid, SIGKILL);
        fail_msg("no forecast after an activation");
    }
    sleep_ms(200);
    assert_int_equal(atomic_load(&st.ctr->p_predictions), 1); /* only the next layer */
    n = drain(&st, reqs, cap);
    uint64_t sel[1];
    int k = nf_forecast(&fc, 1, x, 0, NF_PRED_MOE_GAP, sel);
    assert_true(k >= (int)p.n_expert_used && k <= 2 * (int)p.n_expert_used);
    print_message("layer 1: %d of %u experts forecast\n", k, p.n_expert);
    int nl = nf_plan_layer_experts(&p, 1, fc.idx, (uint32_t)k, list, p.max_step);
    assert_true(nl > 0 && n >= nl);
    for (int i = 0; i < nl; i++) {
        assert_int_equal(reqs[i].tile, list[i]);
        assert_int_equal(reqs[i].prio, 1);
    }
    assert_int_equal(count_experts(f, reqs, nl),
                     k * (int)(nf_nft_count(f, 1, NF_TILE_EXPERT) / p.n_expert));
    assert_int_equal(count_experts(f, reqs + nl, n - nl), 0);

    /* Compute used the forecast's best n_expert_used: all true, the extra ones false. */
    uint64_t used[1] = {0};
    for (uint32_t i = 0; i < p.n_expert_used; i++)
        nf_sel_set(used, fc.idx[i]);
    publish_used(&st, 1, 3, p.n_expert, used);
    assert_true(wait_until(&st.ctr->p_true_pos, p.n_expert_used, 5000));
    sleep_ms(50);
    assert_int_equal(atomic_load(&st.ctr->p_false_pos), (uint64_t)k - p.n_expert_used);
    assert_int_equal(atomic_load(&st.ctr->p_false_neg), 0);

    shut_down(pid);
    free(x);
    free(reqs);
    free(list);
    nf_forecaster_free(&fc);
    nf_plan_free(&p);
    nf_stack_detach(&st);
    nf_stack_unlink(shm);
    nf_nft_close(f);
}

/* The experts of layer l that tile requests reqs[0..n) ask for, as a bitmap, and the first one
 * asked for in *first. */
static uint64_t req_experts(const struct nf_plan *p, uint32_t l, const struct nf_tile_req *reqs,
                            int n, int *first)
{
    uint64_t m = 0;
    *first = -1;
    for (int i = 0; i < n; i++)
        for (uint32_t e = 0; e < p->layers[l].n_units; e++)
            if (reqs[i].tile >= p->layers[l].unit_tile[e] &&
                reqs[i].tile < p->layers[l].unit_tile[e + 1]) {
                if (*first < 0)
                    *first = (int)e;
                m |= 1ull << e;
            }
    return m;
}

/* MoE with 4 sequences (act_rows): the next layer's experts are the union of every row's top
 * n_expert_used, those most rows have there first, rows other than the last (the one activation
 * slot's) included, and rows of a layer compute has not finished are
 * forecast as they come. */
static void test_daemon_moe_rows(void **state)
{
    char err[512], shm[NAME_MAX];
    assert_int_equal(nf_rundir_create(run_dir, err, sizeof(err)), 0);
    nf_rundir_shm_name(run_dir, shm, sizeof(shm));
    nf_stack_unlink(shm);
    struct nf_nft *f;
    assert_int_equal(nf_nft_open(&f, moe_path, false, err, sizeof(err)), 0);
    struct nf_stack_plan sp;
    if (nf_stack_plan_seq(f, 256ull << 20, 64, 1, 4, &sp, err, sizeof(err)))
        fail_msg("%s", err);
    struct nf_stack st;
    if (nf_stack_create(&st, shm, f, &sp, 0, 1, err, sizeof(err)))
        fail_msg("%s", err);
    assert_int_equal(st.cfg->act_rows, 4);
    assert_non_null(nf_stack_act_row(&st, 2, 3));
    assert_null(nf_stack_act_row(&st, 2, 4));
    atomic_fetch_or(&st.sync->ready_mask, NF_READY_FETCHER);
    struct nf_plan p;
    assert_int_equal(nf_plan_init(&p, f, err, sizeof(err)), 0);
    assert_true(p.moe && p.n_layer >= 3 && p.n_expert <= 64);
    struct nf_forecaster fc;
    assert_int_equal(nf_forecaster_init(&fc, &p, UINT64_MAX, err, sizeof(err)), 0);
    const uint32_t E = p.n_embd, K = p.n_expert_used;

    /* Four rows whose forecasts for layer 1 differ: rows 0-2 have an expert in their top
     * n_expert_used that the last row's forecast (with its extras) does not hold. */
    float *x = malloc(sizeof(float) * 4 * E);
    uint64_t fsel[4], ftop[4], sel[1];
    uint32_t top[64] = {0};
    uint64_t seed = 100;
    for (;;) {
        memset(top, 0, sizeof(top));
        for (int r = 0; r < 4; r++) {
            fill_x(x + (size_t)r * E, (int)E, seed + (uint64_t)r);
            int k = nf_forecast(&fc, 1, x + (size_t)r * E, 0, NF_PRED_MOE_GAP, sel);
            assert_true(k >= (int)K);
            fsel[r] = sel[0];
            ftop[r] = 0;
            for (uint32_t i = 0; i < K; i++) {
                top[fc.idx[i]]++;
                ftop[r] |= 1ull << fc.idx[i];
            }
        }
        if ((ftop[0] | ftop[1] | ftop[2]) & ~fsel[3])
            break;
        seed += 4;
        assert_true(seed < 100 + 4 * 1000);
    }
    const uint64_t uni = ftop[0] | ftop[1] | ftop[2] | ftop[3];
    uint32_t most = 0;
    for (uint32_t e = 0; e < p.n_expert; e++)
        most = top[e] > most ? top[e] : most;
    print_message("layer 1: rows forecast %#llx %#llx %#llx %#llx, union of their top %u %#llx\n",
                  (unsigned long long)fsel[0], (unsigned long long)fsel[1],
                  (unsigned long long)fsel[2], (unsigned long long)fsel[3], K,
                  (unsigned long long)uni);

    const char *args[] = {"--run-dir",  run_dir, "--model",      moe_path,
                          "--pred-mem", "16M",   "--foreground", NULL};
    pid_t pid = spawn_ready(args, &st);
    const int cap = 1 << 16;
    struct nf_tile_req *reqs = malloc(sizeof(*reqs) * (size_t)cap);
    assert_true(wait_until(&st.ctr->p_lookahead, 1, 5000));
    sleep_ms(100);
    drain(&st, reqs, cap);

    /* A batched step's layer 0 done: its four rows, then the activation slot with the last row
     * (as compute publishes them), one bell. */
    for (uint32_t r = 0; r < 4; r++)
        nf_act_slot_publish(nf_stack_act_row(&st, 0, r), 7, 0, x + (size_t)r * E, E);
    publish_act(&st, 0, 7, x + 3 * (size_t)E);
    if (!wait_until(&st.ctr->p_predictions, 1, 5000)) {
        dump_log();
        kill(pid, SIGKILL);
        fail_msg("no forecast after the rows");
    }
    sleep_ms(200);
    int n = drain(&st, reqs, cap), first;
    uint64_t asked = req_experts(&p, 1, reqs, n, &first);
    assert_int_equal(asked, uni); /* with the last row's forecast alone: fsel[3] */
    assert_true(asked & ~fsel[3]);
    assert_true(first >= 0 && top[first] == most);

    /* Layer 1 of step 8 not finished: rows 0 and 1 only (no activation slot): layer 2 is
     * forecast from them. */
    uint64_t part = 0;
    for (uint32_t r = 0; r < 2; r++) {
        assert_true(nf_forecast(&fc, 2, x + (size_t)r * E, 0, NF_PRED_MOE_GAP, sel) >= (int)K);
        for (uint32_t i = 0; i < K; i++)
            part |= 1ull << fc.idx[i];
        nf_act_slot_publish(nf_stack_act_row(&st, 1, r), 8, 1, x + (size_t)r * E, E);
    }
    uint64_t before = atomic_load(&st.ctr->p_predictions);
    nf_notify_wake(&st.sync->act_bell);
    assert_true(wait_until(&st.ctr->p_predictions, before + 1, 5000));
    sleep_ms(200);
    n = drain(&st, reqs, cap);
    assert_int_equal(req_experts(&p, 2, reqs, n, &first), part);

    shut_down(pid);
    free(x);
    free(reqs);
    nf_forecaster_free(&fc);
    nf_plan_free(&p);
    nf_stack_detach(&st);
    nf_stack_unlink(shm);
    nf_nft_close(f);
}

/* --help exits 0, bad flags 2, and no stack to attach to 1 (after the timeout). */
static void test_flags(void **state)
{
    const char *help[] = {"--help", NULL};
    assert_int_equal(wait_exit(spawn(help), 5000), 0);
    const char *bad[] = {"--model", nft_path, "--no-such-flag", NULL};
    assert_int_equal(wait_exit(spawn(bad), 5000), 2);
    const char *nomodel[] = {"--run-dir", run_dir, NULL};
    assert_int_equal(wait_exit(spawn(nomodel), 5000), 2);
    const char *badsp[] = {"--model", nft_path, "--sparsity", "1.5", NULL};
    assert_int_equal(wait_exit(spawn(badsp), 5000), 2);
    char dir2[600];
    snprintf(dir2, sizeof(dir2), "%s/nostack", tmpdir);
    const char *nostack[] = {"--run-dir",        dir2, "--model", nft_path, "--foreground",
                             "--attach-timeout", "1",  NULL};
    assert_int_equal(wait_exit(spawn(nostack), 10000), 1);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_flags),
        cmocka_unit_test(test_daemon_sparse),
        cmocka_unit_test(test_daemon_moe),
        cmocka_unit_test(test_daemon_moe_rows),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
