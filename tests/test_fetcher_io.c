/* test_fetcher_io.c - the real nanoflow-fetcher serving a stack: every tile's bytes, eviction,
 * io_uring and the pread pool, a corrupt tile reported as a checksum error, clean shutdown. */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>

#include "../daemons/fetcher/fetch.h"
#include "daemon.h"
#include "nf_err.h"
#include "nft.h"
#include "stack.h"

#define FETCHER    NF_BUILD_DIR "/daemons/nanoflow-fetcher"
#define MODEL_GGUF NF_SHARED_DIR "/models/stories260K.gguf"
#define TILE_SIZE  (16u * 1024) /* small tiles: many of them, so a small pool must evict */

static char g_dir[PATH_MAX - 64]; /* temporary directory of the whole test */
static char g_nft[PATH_MAX];      /* stories260K converted */
static char g_bad[PATH_MAX];      /* the same with one byte flipped in one tile */
static uint32_t g_bad_tile;       /* that tile */
static uint64_t g_ram;            /* a budget whose pool is smaller than the model */

/* Fetchers started by the running test, stopped by teardown() if a check failed midway. */
#define MAX_STARTED 8
static pid_t g_started[MAX_STARTED];
static char g_started_shm[MAX_STARTED][NAME_MAX];
static int g_n_started;

struct running {
    pid_t pid;
    char run_dir[PATH_MAX];
    char shm[NAME_MAX];
    struct nf_stack st;
};

static void rm_rf(const char *path)
{
    char cmd[PATH_MAX + 16];
    snprintf(cmd, sizeof(cmd), "rm -rf '%s'", path);
    if (system(cmd) != 0)
        fprintf(stderr, "could not remove %s\n", path);
}

static int copy_file(const char *from, const char *to)
{
    char cmd[2 * PATH_MAX + 16];
    snprintf(cmd, sizeof(cmd), "cp '%s' '%s'", from, to);
    return system(cmd) == 0 ? 0 : -1;
}

/* Starts the fetcher on model in a fresh run directory and attaches to its region. */
static void start_fetcher_x(struct running *r, const char *model, const char *tag, bool no_uring,
                            const char *verify, const char *inflight)
{
    memset(r, 0, sizeof(*r));
    snprintf(r->run_dir, sizeof(r->run_dir), "%s/run-%s", g_dir, tag);
    char ram[32], log[PATH_MAX + 16];
    snprintf(ram, sizeof(ram), "%llu", (unsigned long long)g_ram);
    snprintf(log, sizeof(log), "%s-%s.log", r->run_dir, tag);
    r->pid = fork();
    assert_true(r->pid >= 0);
    if (r->pid == 0) {
        int fd = open(log, O_WRONLY | O_CREAT | O_TRUNC, 0600);
        if (fd >= 0) {
            dup2(fd, 1);
            dup2(fd, 2);
        }
        const char *argv[16] = {FETCHER,    "--foreground", "--run-dir", r->run_dir, "--model",
                                model,      "--ram",        ram,         "--qd",     "4",
                                "--verify", verify};
        int k = 12;
        if (no_uring)
            argv[k++] = "--no-uring";
        if (inflight) {
            argv[k++] = "--inflight";
            argv[k++] = inflight;
        }
        argv[k] = NULL;
        execv(FETCHER, (char *const *)argv);
        _exit(127);
    }
    nf_rundir_shm_name(r->run_dir, r->shm, sizeof(r->shm));
    if (g_n_started < MAX_STARTED) {
        g_started[g_n_started] = r->pid;
        snprintf(g_started_shm[g_n_started], NAME_MAX, "%s", r->shm);
        g_n_started++;
    }
    char err[512];
    int rc = -ENOENT;
    for (int i = 0; i < 1000; i++) { /* up to 10 s */
        rc = nf_stack_attach(&r->st, r->shm, NULL, err, sizeof(err));
        if (rc == 0 && (atomic_load(&r->st.sync->ready_mask) & NF_READY_FETCHER))
            break;
        if (rc == 0) {
            nf_stack_detach(&r->st);
            rc = -EAGAIN;
        }
        int status;
        if (waitpid(r->pid, &status, WNOHANG) == r->pid)
            fail_msg("nanoflow-fetcher exited early (status %d), see %s", status, log);
        usleep(10000);
    }
    if (rc != 0)
        fail_msg("cannot attach to %s: %s", r->shm, err);
}

static void start_fetcher_v(struct running *r, const char *model, const char *tag, bool no_uring,
                            const char *verify)
{
    start_fetcher_x(r, model, tag, no_uring, verify, NULL);
}

static void start_fetcher(struct running *r, const char *model, const char *tag, bool no_uring)
{
    start_fetcher_v(r, model, tag, no_uring, "all");
}

/* After each test: any fetcher it started that is still running (a check failed before
 * stop_fetcher) is killed and its region removed, so a failure leaves nothing behind. */
static int teardown(void **state)
{
    (void)state;
    for (int i = 0; i < g_n_started; i++) {
        if (waitpid(g_started[i], NULL, WNOHANG) == 0) {
            kill(g_started[i], SIGKILL);
            waitpid(g_started[i], NULL, 0);
            nf_stack_unlink(g_started_shm[i]);
        }
    }
    g_n_started = 0;
    return 0;
}

/* Sends env as request id over fetcher.sock and returns the reply (the caller frees it). */
static nf_envelope *fetcher_call(const struct running *r, nf_envelope *env, uint64_t id)
{
    char sock[PATH_MAX], err[256];
    nf_rundir_path(r->run_dir, NF_ROLE_FETCHER, "sock", sock, sizeof(sock));
    int fd = nf_client_connect(sock, 5000, err, sizeof(err));
    if (fd < 0)
        fail_msg("connect %s: %s", sock, err);
    assert_int_equal(nf_client_send(fd, id, env), 0);
    nf_envelope *reply = NULL;
    assert_int_equal(nf_client_recv(fd, &reply, 5000), 1);
    close(fd);
    return reply;
}

/* Sends Shutdown over fetcher.sock, waits for the process and checks nothing is left. */
static void stop_fetcher(struct running *r)
{
    nf_stack_detach(&r->st);
    char sock[PATH_MAX];
    nf_rundir_path(r->run_dir, NF_ROLE_FETCHER, "sock", sock, sizeof(sock));
    nf_envelope env;
    Nanoflow__Shutdown sd;
    nanoflow__envelope__init(&env);
    nanoflow__shutdown__init(&sd);
    env.msg_case = NANOFLOW__ENVELOPE__MSG_SHUTDOWN;
    env.shutdown = &sd;
    nf_envelope *reply = fetcher_call(r, &env, 7);
    assert_int_equal(reply->request_id, 7);
    nf_envelope_free(reply);
    int status = -1;
    for (int i = 0; i < 1000 && waitpid(r->pid, &status, WNOHANG) != r->pid; i++)
        usleep(10000);
    if (!WIFEXITED(status)) {
        kill(r->pid, SIGKILL);
        waitpid(r->pid, &status, 0);
        fail_msg("nanoflow-fetcher did not exit after Shutdown");
    }
    assert_int_equal(WEXITSTATUS(status), 0);
    char path[PATH_MAX + 16];
    snprintf(path, sizeof(path), "/dev/shm%s", r->shm);
    assert_int_equal(access(path, F_OK), -1); /* shm object unlinked */
    assert_int_equal(access(sock, F_OK), -1);
    nf_rundir_path(r->run_dir, NF_ROLE_FETCHER, "pid", path, sizeof(path));
    assert_int_equal(access(path, F_OK), -1);
}

/* Pins every tile (passes cycles over the model, in id order as compute does), compares the
 * bytes with a direct checked read, and returns how many failed with NF_ECHECKSUM (the tile
 * id of the last in *bad). */
static unsigned check_all_tiles(struct running *r, const struct nf_nft *f, int cycles,
                                uint32_t *bad)
{
    size_t cap = 0;
    for (uint64_t i = 0; i < f->n_tiles; i++)
        if (nf_nft_padded(f->tiles[i].size) > cap)
            cap = nf_nft_padded(f->tiles[i].size);
    void *buf = aligned_alloc(4096, cap);
    assert_non_null(buf);
    unsigned n_bad = 0;
    uint64_t step = 0;
    for (int c = 0; c < cycles; c++) {
        for (uint32_t id = 0; id < f->n_tiles; id++, step++) {
            const struct nf_nft_tile *t = &f->tiles[id];
            /* Ask for the next few as a predictor would, so both rings are used. */
            for (uint32_t k = 1; k <= 3 && id + k < f->n_tiles; k++)
                nf_tile_prefetch(&r->st, id + k, k, k == 3);
            int rc = 0;
            const uint8_t *p = nf_tile_pin_wait(&r->st, id, step, 10000, &rc);
            if (!p && rc == NF_ECHECKSUM) {
                n_bad++;
                *bad = id;
                continue;
            }
            if (!p) {
                fail_msg("tile %u: pin_wait failed: %s", id, nf_strerror(rc));
                continue;
            }
            char err[256];
            assert_int_equal(nf_nft_read(f, t, buf, cap, err, sizeof(err)), 0);
            if (memcmp(p, buf, t->size) != 0)
                fail_msg("tile %u: bytes in the pool differ from the file", id);
            nf_tile_unpin(&r->st, id);
        }
    }
    free(buf);
    return n_bad;
}

static void run_model_check(bool no_uring)
{
    struct nf_nft *f;
    char err[512];
    assert_int_equal(nf_nft_open(&f, g_nft, false, err, sizeof(err)), 0);
    struct running r;
    start_fetcher(&r, g_nft, no_uring ? "pread" : "uring", no_uring);
    assert_true(r.st.cfg->n_slots < f->n_tiles); /* the pool cannot hold the model */
    uint32_t bad = 0;
    assert_int_equal(check_all_tiles(&r, f, 3, &bad), 0);
    struct nf_stack_counters *c = r.st.ctr;
    assert_true(atomic_load(&c->f_reads) >= f->n_tiles);
    assert_true(atomic_load(&c->f_evictions) > 0);
    assert_true(atomic_load(&c->f_demand_reads) + atomic_load(&c->f_prefetch_reads) ==
                atomic_load(&c->f_reads));
    assert_int_equal(atomic_load(&c->f_checksum_errors), 0);
    assert_int_equal(atomic_load(&c->f_io_errors), 0);
    assert_true(atomic_load(&c->f_resident_bytes) > 0);
    print_message("%s: %u tiles, %llu slots, 3 cycles: %llu reads, %llu evictions, %llu hits\n",
                  no_uring ? "pread pool" : "io_uring", (unsigned)f->n_tiles,
                  (unsigned long long)r.st.cfg->n_slots,
                  (unsigned long long)atomic_load(&c->f_reads),
                  (unsigned long long)atomic_load(&c->f_evictions),
                  (unsigned long long)atomic_load(&c->f_hits));
    stop_fetcher(&r);
    nf_nft_close(f);
}

static void test_uring(void **state)
{
    (void)state;
    run_model_check(false);
}

static void test_pread_pool(void **state)
{
    (void)state;
    run_model_check(true);
}

static void test_corrupt_tile(void **state)
{
    (void)state;
    struct nf_nft *f;
    char err[512];
    assert_int_equal(nf_nft_open(&f, g_bad, false, err, sizeof(err)), 0);
    for (int pass = 0; pass < 2; pass++) {
        bool no_uring = pass == 1;
        struct running r;
        start_fetcher(&r, g_bad, no_uring ? "bad-pread" : "bad-uring", no_uring);
        uint32_t bad = UINT32_MAX;
        /* Only the flipped tile fails, in every cycle, and the others still load. */
        assert_int_equal(check_all_tiles(&r, f, 2, &bad), 2);
        assert_int_equal(bad, g_bad_tile);
        assert_int_equal(atomic_load(&r.st.ctr->f_checksum_errors), 1);
        assert_int_equal(nf_tile_error(&r.st, g_bad_tile), NF_ECHECKSUM);
        stop_fetcher(&r);
    }
    nf_nft_close(f);
}

/* --verify none serves the flipped tile as read (nothing checks it); sample checks some. */
static void test_verify_none(void **state)
{
    (void)state;
    struct nf_nft *f;
    char err[512];
    assert_int_equal(nf_nft_open(&f, g_bad, false, err, sizeof(err)), 0);
    struct running r;
    start_fetcher_v(&r, g_bad, "none", false, "none");
    int rc = 0;
    const uint8_t *p = nf_tile_pin_wait(&r.st, g_bad_tile, 0, 10000, &rc);
    if (!p)
        fail_msg("tile %u: %s", g_bad_tile, nf_strerror(rc));
    const struct nf_nft_tile *t = &f->tiles[g_bad_tile];
    void *buf = aligned_alloc(4096, nf_nft_padded(t->size));
    assert_non_null(buf);
    /* The checked read refuses the tile; the unchecked pool copy is what is on disk. */
    assert_int_equal(nf_nft_read(f, t, buf, nf_nft_padded(t->size), err, sizeof(err)),
                     NF_ECHECKSUM);
    nf_tile_unpin(&r.st, g_bad_tile);
    assert_int_equal(atomic_load(&r.st.ctr->f_checksum_errors), 0);
    free(buf);
    stop_fetcher(&r);
    nf_nft_close(f);
}

/* The file shrinks under a running fetcher: reads past the end fail as I/O errors (ERROR with
 * NF_ETRUNCATED for those tiles), tiles before the cut still load. */
static void test_truncated_under_fetcher(void **state)
{
    (void)state;
    char path[PATH_MAX];
    snprintf(path, sizeof(path), "%s/cut.nft", g_dir);
    assert_int_equal(copy_file(g_nft, path), 0);
    struct nf_nft *f;
    char err[512];
    assert_int_equal(nf_nft_open(&f, g_nft, false, err, sizeof(err)), 0);
    for (int pass = 0; pass < 2; pass++) {
        bool no_uring = pass == 1;
        if (pass == 1)
            assert_int_equal(copy_file(g_nft, path), 0);
        struct running r;
        start_fetcher(&r, path, no_uring ? "cut-pread" : "cut-uring", no_uring);
        uint32_t cut = (uint32_t)(f->n_tiles / 2);
        assert_int_equal(truncate(path, (off_t)f->tiles[cut].offset), 0);
        int rc = 0;
        for (uint32_t id = cut; id < f->n_tiles; id++) {
            assert_null(nf_tile_pin_wait(&r.st, id, 0, 10000, &rc));
            assert_int_equal(rc, NF_ETRUNCATED);
        }
        for (uint32_t id = 0; id < cut; id++) {
            assert_non_null(nf_tile_pin_wait(&r.st, id, 1, 10000, &rc));
            nf_tile_unpin(&r.st, id);
        }
        assert_int_equal(atomic_load(&r.st.ctr->f_io_errors), f->n_tiles - cut);
        stop_fetcher(&r);
    }
    nf_nft_close(f);
}

/* Converts the model, makes the corrupt copy and picks the budget. Returns 0 or 77 (skip). */
static int setup_files(void)
{
    if (access(FETCHER, X_OK) != 0 || access(MODEL_GGUF, R_OK) != 0) {
        printf("skip: needs %s and %s\n", FETCHER, MODEL_GGUF);
        return 77;
    }
    snprintf(g_dir, sizeof(g_dir), "/tmp/nf-test-fetcher-XXXXXX");
    if (!mkdtemp(g_dir))
        return 1;
    snprintf(g_nft, sizeof(g_nft), "%s/s.nft", g_dir);
    snprintf(g_bad, sizeof(g_bad), "%s/bad.nft", g_dir);
    char err[512];
    struct nf_nft_convert_opts o = {.tile_size = TILE_SIZE};
    if (nf_nft_convert(MODEL_GGUF, g_nft, &o, err, sizeof(err)) < 0) {
        fprintf(stderr, "convert: %s\n", err);
        return 1;
    }
    struct nf_nft *f;
    if (nf_nft_open(&f, g_nft, false, err, sizeof(err)) < 0 || copy_file(g_nft, g_bad) < 0)
        return 1;
    /* Flip one byte in the middle tile of the copy. */
    g_bad_tile = (uint32_t)(f->n_tiles / 2);
    const struct nf_nft_tile *t = &f->tiles[g_bad_tile];
    int fd = open(g_bad, O_RDWR);
    uint8_t b = 0;
    off_t at = (off_t)(t->offset + t->size / 2);
    if (fd < 0 || pread(fd, &b, 1, at) != 1)
        return 1;
    b ^= 0x40;
    if (pwrite(fd, &b, 1, at) != 1 || close(fd) != 0)
        return 1;
    /* The smallest budget the plan accepts (its pool is the minimum working set) plus 16 of
     * the largest slots, so there is room for a resident set and still far fewer slots than
     * tiles. */
    struct nf_stack_plan plan;
    int rc = nf_stack_plan(f, 4096, 0, 1, &plan, err, sizeof(err));
    g_ram = plan.min_budget + 16 * (plan.classes[plan.n_classes - 1].slot_size + 64);
    if (rc != -ENOSPC || nf_stack_plan(f, g_ram, 0, 1, &plan, err, sizeof(err)) != 0) {
        fprintf(stderr, "plan: %s\n", err);
        return 1;
    }
    printf("model %s: %llu tiles; budget %llu gives %llu slots\n", g_nft,
           (unsigned long long)f->n_tiles, (unsigned long long)g_ram,
           (unsigned long long)plan.n_slots);
    nf_nft_close(f);
    return 0;
}

/* The fetcher's counter `name` from its stats reply (what 'nanoflowctl stats' shows). */
static uint64_t fetcher_stat(struct running *r, const char *name)
{
    nf_envelope env;
    Nanoflow__StatsRequest sr;
    nanoflow__envelope__init(&env);
    nanoflow__stats_request__init(&sr);
    env.msg_case = NANOFLOW__ENVELOPE__MSG_STATS_REQUEST;
    env.stats_request = &sr;
    nf_envelope *reply = fetcher_call(r, &env, 9);
    assert_int_equal(reply->msg_case, NANOFLOW__ENVELOPE__MSG_STATS);
    bool found = false;
    uint64_t v = 0;
    for (size_t i = 0; i < reply->stats->n_stages; i++)
        for (size_t j = 0; j < reply->stats->stages[i]->n_counters; j++)
            if (!strcmp(reply->stats->stages[i]->counters[j]->name, name)) {
                v = reply->stats->stages[i]->counters[j]->value;
                found = true;
            }
    nf_envelope_free(reply);
    if (!found)
        fail_msg("no fetcher counter %s", name);
    return v;
}

/* The predictor's plan changes: of 2n prefetched tiles it withdraws every other one
 * (nf_tile_prefetch_drop) before the fetcher takes the batch. The n kept are read; the n
 * withdrawn are never read nor delivered (EMPTY to the end, no read counted beyond the kept
 * ones) and are counted as dropped in the fetcher's stats. A withdrawal of a tile compute asked
 * for is ignored: that tile is read. */
static void test_withdrawn_prefetch(void **state)
{
    (void)state;
    struct nf_nft *f;
    char err[512];
    assert_int_equal(nf_nft_open(&f, g_nft, false, err, sizeof(err)), 0);
    struct running r;
    start_fetcher(&r, g_nft, "withdraw", false);
    struct nf_stack *st = &r.st;
    /* 2n tiles of the first layer's class that fit the pool together, plus one demanded. */
    enum { N = 6 };
    uint32_t ids[2 * N] = {0}, n = 0, demanded = UINT32_MAX;
    for (uint32_t id = 1; id < f->n_tiles && n < 2 * N; id++)
        if (f->tiles[id].kind == NF_TILE_FFN)
            ids[n++] = id;
    assert_int_equal(n, 2 * N);
    for (uint32_t id = ids[n - 1] + 1; id < f->n_tiles && demanded == UINT32_MAX; id++)
        if (f->tiles[id].kind == NF_TILE_FFN)
            demanded = id;
    assert_true(demanded != UINT32_MAX);
    assert_true(r.st.cfg->n_slots > 2 * N + 1);
    uint64_t reads0 = atomic_load(&st->ctr->f_reads);
    /* One batch, one bell: the fetcher sees requests and withdrawals together. */
    for (uint32_t i = 0; i < n; i++)
        assert_int_equal(nf_tile_prefetch(st, ids[i], 2, false), 1);
    assert_int_equal(nf_tile_request(st, demanded, false), 1);
    for (uint32_t i = 1; i < n; i += 2)
        assert_int_equal(nf_tile_prefetch_drop(st, ids[i], false), 1);
    assert_int_equal(nf_tile_prefetch_drop(st, demanded, false), 1);
    nf_notify_wake(&st->sync->fetch_bell);
    /* The kept ones and the demanded one arrive; the withdrawn ones never do. */
    for (int tries = 0;; tries++) {
        bool all = atomic_load(&st->tiles[demanded].state) == NF_TILE_READY;
        for (uint32_t i = 0; i < n; i++) {
            uint32_t s = atomic_load(&st->tiles[ids[i]].state);
            if (i % 2) /* QUEUED until the fetcher takes the withdrawal, then EMPTY */
                assert_true(s == NF_TILE_QUEUED || s == NF_TILE_EMPTY);
            else
                all = all && s == NF_TILE_READY;
        }
        if (all)
            break;
        if (tries > 1000)
            fail_msg("kept prefetches not READY after 10 s");
        usleep(10000);
    }
    usleep(100000); /* a withdrawn tile read late would show now */
    for (uint32_t i = 1; i < n; i += 2)
        assert_int_equal(atomic_load(&st->tiles[ids[i]].state), NF_TILE_EMPTY);
    assert_int_equal(atomic_load(&st->ctr->f_reads) - reads0, N + 1);
    assert_int_equal(atomic_load(&st->ctr->f_plan_dropped), N);
    assert_int_equal(atomic_load(&st->ctr->f_plan_released), 0);
    assert_int_equal(fetcher_stat(&r, "plan_dropped"), N);
    assert_int_equal(fetcher_stat(&r, "prefetch_dropped"), N);
    /* Withdrawn, they can be asked for again (QUEUED -> EMPTY gave them back). */
    assert_int_equal(nf_tile_prefetch(st, ids[1], 1, true), 1);
    int rc = 0;
    const uint8_t *p = nf_tile_pin_wait(st, ids[1], 1, 10000, &rc);
    if (!p)
        fail_msg("tile %u after its withdrawal: %s", ids[1], nf_strerror(rc));
    nf_tile_unpin(st, ids[1]);
    print_message("withdrawn: %u of %u prefetches dropped unread, %llu reads\n", N, 2 * N,
                  (unsigned long long)(atomic_load(&st->ctr->f_reads) - reads0));
    stop_fetcher(&r);
    nf_nft_close(f);
}

/* Reads a tile of len bytes the way the back ends do, piece by piece (nf_fetch_read_len, each
 * piece read in full here); checks every piece and that they add up to the tile. */
/* Prefetches 8 tiles not in the pool at once (one ring bell, so the fetcher takes them in one
 * pass) and waits for each; returns the fetcher's peak of bytes in flight and sets *max_span to
 * the largest of their spans. */
static uint64_t burst_peak(const char *tag, const char *inflight, uint64_t *max_span)
{
    struct nf_nft *f;
    char err[512];
    assert_int_equal(nf_nft_open(&f, g_nft, false, err, sizeof(err)), 0);
    struct running r;
    start_fetcher_x(&r, g_nft, tag, false, "all", inflight);
    uint32_t ids[8], n = 0;
    *max_span = 0;
    for (uint32_t id = (uint32_t)f->n_tiles / 2; id < f->n_tiles && n < 8; id++)
        if (atomic_load(&r.st.tiles[id].state) == NF_TILE_EMPTY) {
            ids[n++] = id;
            if (nf_nft_tile_span(&f->tiles[id]) > *max_span)
                *max_span = nf_nft_tile_span(&f->tiles[id]);
        }
    assert_int_equal(n, 8);
    for (uint32_t i = 0; i < n; i++)
        assert_int_equal(nf_tile_prefetch(&r.st, ids[i], i + 1, i + 1 == n), 1);
    for (uint32_t i = 0; i < n; i++) {
        int rc = 0;
        if (!nf_tile_pin_wait(&r.st, ids[i], 0, 10000, &rc))
            fail_msg("tile %u: %s", ids[i], nf_strerror(rc));
        nf_tile_unpin(&r.st, ids[i]);
    }
    uint64_t peak = fetcher_stat(&r, "inflight_peak_bytes");
    assert_int_equal(atomic_load(&r.st.ctr->f_prefetch_dropped), 0);
    stop_fetcher(&r);
    nf_nft_close(f);
    return peak;
}

/* --inflight: with room for one read, eight prefetched tiles are read one at a time, and all
 * arrive (none dropped for want of room); with room for all, the first pass starts its queue
 * depth's worth at once. */
static void test_inflight_cap(void **state)
{
    (void)state;
    uint64_t span, wide = burst_peak("wide", "1G", &span);
    print_message("one pass of 8 prefetches: %llu bytes in flight at most with 1G, largest tile "
                  "%llu\n",
                  (unsigned long long)wide, (unsigned long long)span);
    assert_true(wide > span); /* --qd 4: several reads at once */
    uint64_t one = burst_peak("one", "1", &span);
    print_message("with --inflight 1: %llu\n", (unsigned long long)one);
    assert_true(one > 0);
    assert_true(one <= span);
}

static void read_in_pieces(uint64_t len, unsigned want_pieces)
{
    struct nf_fetch_io io = {.len = len};
    unsigned pieces = 0;
    while (io.done < io.len) {
        uint32_t n = nf_fetch_read_len(&io);
        assert_true(n > 0 && n <= NF_FETCH_READ_MAX);
        assert_true(n % 4096 == 0 || io.done + n == io.len); /* O_DIRECT: aligned pieces */
        io.done += n;
        pieces++;
        assert_true(pieces <= want_pieces);
    }
    assert_int_equal(io.done, len);
    assert_int_equal(pieces, want_pieces);
}

/* Reads of 4 GiB and more are split, never truncated to 32 bits: a 4 GiB tile cast to unsigned
 * would read 0 bytes (taken for end of file), 4 GiB + 4 KiB only 4 KiB at a time. */
static void test_read_len_4g(void **state)
{
    (void)state;
    read_in_pieces(4096, 1);
    read_in_pieces(NF_FETCH_READ_MAX, 1);
    read_in_pieces((uint64_t)NF_FETCH_READ_MAX + 4096, 2);
    read_in_pieces(4ull << 30, 4);
    read_in_pieces((4ull << 30) + 4096, 5);
    read_in_pieces((9ull << 30) + 8192, 10);
    /* After a short read the rest follows, again at most NF_FETCH_READ_MAX. */
    struct nf_fetch_io io = {.len = 6ull << 30, .done = 4096};
    assert_int_equal(nf_fetch_read_len(&io), NF_FETCH_READ_MAX);
    io.done = (6ull << 30) - 8192;
    assert_int_equal(nf_fetch_read_len(&io), 8192);
}

int main(void)
{
    int rc = setup_files();
    if (rc != 0) {
        if (g_dir[0])
            rm_rf(g_dir);
        return rc;
    }
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_read_len_4g),
        cmocka_unit_test_teardown(test_uring, teardown),
        cmocka_unit_test_teardown(test_pread_pool, teardown),
        cmocka_unit_test_teardown(test_corrupt_tile, teardown),
        cmocka_unit_test_teardown(test_verify_none, teardown),
        cmocka_unit_test_teardown(test_truncated_under_fetcher, teardown),
        cmocka_unit_test_teardown(test_withdrawn_prefetch, teardown),
        cmocka_unit_test_teardown(test_inflight_cap, teardown),
    };
    rc = cmocka_run_group_tests(tests, NULL, NULL);
    rm_rf(g_dir);
    return rc;
}
