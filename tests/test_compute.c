/* test_compute.c - nanoflow-compute with the real nanoflow-fetcher on stories260K: greedy and
 * seeded generations equal the in-process model token for token with bit-identical top logits,
 * Stats counts the work, Cancel ends a generation (only its own connection's: another's Cancel
 * is refused), the per-request token limit clamps a long request while a short one queued behind
 * it reports its wait, a corrupted tile fails only the generation with an Error naming it,
 * requests out of range are refused without reserving memory, and Shutdown leaves no socket,
 * pid file or shm object. */
#include <errno.h>
#include <fcntl.h>
#include <math.h>
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
#include "json_mini.h"
#include "model.h"
#include "nf_err.h"
#include "nft.h"
#include "sampler.h"
#include "tokenizer.h"

#define FETCHER    NF_BUILD_DIR "/daemons/nanoflow-fetcher"
#define COMPUTE    NF_BUILD_DIR "/daemons/nanoflow-compute"
#define STORIES    NF_SHARED_DIR "/models/stories260K.gguf"
#define GOLDEN     NF_SHARED_DIR "/golden/stories260K.jsonl"
#define TIMEOUT_MS 20000

static char tmpdir[256], nft_path[512], bad_path[512];
/* When >= 0, the file descriptor spawn gives compute as its stdout and stderr (its log in
 * --foreground) instead of its .out file. */
static int compute_log_fd = -1;

struct stack {
    char run_dir[600];
    pid_t fetcher, compute;
    int fd; /* client connection to compute.sock */
};

static int setup(void **state)
{
    (void)state;
    if (access(FETCHER, X_OK) != 0 || access(COMPUTE, X_OK) != 0) {
        print_message("skip: the daemons are not built\n");
        exit(77);
    }
    snprintf(tmpdir, sizeof(tmpdir), "/tmp/test_compute-XXXXXX");
    if (!mkdtemp(tmpdir))
        return -1;
    snprintf(nft_path, sizeof(nft_path), "%s/stories.nft", tmpdir);
    snprintf(bad_path, sizeof(bad_path), "%s/bad.nft", tmpdir);
    struct nf_nft_convert_opts o = {.tile_size = 8192};
    char err[512];
    if (nf_nft_convert(STORIES, nft_path, &o, err, sizeof(err))) {
        fprintf(stderr, "convert: %s\n", err);
        return -1;
    }
    return 0;
}

static int teardown(void **state)
{
    (void)state;
    char cmd[600];
    snprintf(cmd, sizeof(cmd), "rm -rf '%s'", tmpdir);
    return system(cmd) == 0 ? 0 : -1;
}

static void sleep_ms(int ms)
{
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

/* Starts bin on run_dir and model, with one more flag and value when flag is not NULL. */
static pid_t spawn(const char *bin, const char *run_dir, const char *model, const char *flag,
                   const char *val)
{
    char log[700];
    snprintf(log, sizeof(log), "%s/%s.out", run_dir, strrchr(bin, '-') + 1);
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        int fd = compute_log_fd >= 0 && !strcmp(bin, COMPUTE)
                     ? compute_log_fd
                     : open(log, O_WRONLY | O_CREAT | O_APPEND, 0600);
        if (fd >= 0) {
            dup2(fd, 1);
            dup2(fd, 2);
        }
        execl(bin, bin, "--run-dir", run_dir, "--model", model, "--ram", "64M", "-t", "2",
              "--foreground", flag, val, (char *)NULL);
        _exit(127);
    }
    return pid;
}

/* Waits for pid to exit (SIGKILL after timeout_ms); returns its exit status or -1. */
static int reap(pid_t pid, int timeout_ms)
{
    for (int waited = 0;; waited += 20) {
        int st;
        pid_t r = waitpid(pid, &st, WNOHANG);
        if (r == pid)
            return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
        if (waited >= timeout_ms) {
            kill(pid, SIGKILL);
            waitpid(pid, &st, 0);
            return -1;
        }
        sleep_ms(20);
    }
}

static int health(const char *sock)
{
    char err[256];
    int fd = nf_client_connect(sock, 1000, err, sizeof(err));
    if (fd < 0)
        return -1;
    nf_envelope env, *r = NULL;
    Nanoflow__HealthRequest hr;
    nanoflow__envelope__init(&env);
    nanoflow__health_request__init(&hr);
    env.msg_case = NANOFLOW__ENVELOPE__MSG_HEALTH_REQUEST;
    env.health_request = &hr;
    int state = -1;
    if (nf_client_send(fd, 1, &env) == 0 && nf_client_recv(fd, &r, 2000) == 1 &&
        r->msg_case == NANOFLOW__ENVELOPE__MSG_HEALTH)
        state = r->health->state;
    if (r)
        nf_envelope_free(r);
    close(fd);
    return state;
}

/* Starts a fetcher and a compute (given one more flag and value when flag is not NULL) in run
 * directory name and connects to compute. */
static void stack_up_flag(struct stack *s, const char *model, const char *name, const char *flag,
                          const char *val)
{
    char sock[700], err[256];
    memset(s, 0, sizeof(*s));
    snprintf(s->run_dir, sizeof(s->run_dir), "%s/%s", tmpdir, name);
    assert_int_equal(mkdir(s->run_dir, 0700), 0);
    s->fetcher = spawn(FETCHER, s->run_dir, model, NULL, NULL);
    s->compute = spawn(COMPUTE, s->run_dir, model, flag, val);
    snprintf(sock, sizeof(sock), "%s/compute.sock", s->run_dir);
    int waited = 0;
    while (health(sock) != NANOFLOW__HEALTH__STATE__READY) {
        if (waited > TIMEOUT_MS) {
            char cmd[800];
            snprintf(cmd, sizeof(cmd), "tail -n 20 '%s'/*.out >&2", s->run_dir);
            if (system(cmd) != 0)
                print_error("no daemon log in %s\n", s->run_dir);
            fail_msg("compute did not become ready (logs above, from %s)", s->run_dir);
        }
        sleep_ms(50);
        waited += 50;
    }
    s->fd = nf_client_connect(sock, 1000, err, sizeof(err));
    assert_true(s->fd >= 0);
}

static void stack_up(struct stack *s, const char *model, const char *name)
{
    stack_up_flag(s, model, name, NULL, NULL);
}

/* A second client connection to s's compute. */
static int stack_connect(const struct stack *s)
{
    char sock[700], err[256];
    snprintf(sock, sizeof(sock), "%s/compute.sock", s->run_dir);
    int fd = nf_client_connect(sock, 1000, err, sizeof(err));
    assert_true(fd >= 0);
    return fd;
}

/* The first golden prompt of stories260K and llama.cpp's greedy continuation of it. */
struct golden {
    char prompt[512];
    int32_t gen[128];
    int n_gen;
};

static void golden_first(struct golden *g)
{
    FILE *f = fopen(GOLDEN, "r");
    assert_non_null(f);
    static char line[1 << 16];
    assert_non_null(fgets(line, sizeof(line), f));
    fclose(f);
    struct jm_val *v = jm_parse(line, strlen(line));
    assert_non_null(v);
    const struct jm_val *p = jm_get(v, "prompt"), *ids = jm_get(v, "gen_ids");
    assert_true(p && p->type == JM_STR && p->len < sizeof(g->prompt));
    assert_true(ids && ids->type == JM_ARR && ids->n <= 128);
    snprintf(g->prompt, sizeof(g->prompt), "%s", p->str);
    g->n_gen = ids->n;
    for (int i = 0; i < ids->n; i++)
        g->gen[i] = (int32_t)ids->kids[i].num;
    jm_free(v);
}

static int send_simple_rc(int fd, uint64_t req, Nanoflow__Envelope__MsgCase what)
{
    nf_envelope env;
    Nanoflow__Shutdown sd;
    Nanoflow__StatsRequest sr;
    nanoflow__envelope__init(&env);
    env.msg_case = what;
    if (what == NANOFLOW__ENVELOPE__MSG_SHUTDOWN) {
        nanoflow__shutdown__init(&sd);
        env.shutdown = &sd;
    } else {
        nanoflow__stats_request__init(&sr);
        env.stats_request = &sr;
    }
    return nf_client_send(fd, req, &env);
}

static void send_simple(int fd, uint64_t req, Nanoflow__Envelope__MsgCase what)
{
    assert_int_equal(send_simple_rc(fd, req, what), 0);
}

/* Shuts compute then the fetcher down and checks nothing is left behind. */
static void stack_down(struct stack *s)
{
    char sock[700], err[256];
    send_simple(s->fd, 99, NANOFLOW__ENVELOPE__MSG_SHUTDOWN);
    close(s->fd);
    assert_int_equal(reap(s->compute, 10000), 0);
    snprintf(sock, sizeof(sock), "%s/fetcher.sock", s->run_dir);
    /* Compute's Shutdown stopped the stack (the stop word in the region), so the fetcher may
     * be on its way out already: ask it only while it still listens. Either way it exits 0. */
    int fd = nf_client_connect(sock, 1000, err, sizeof(err));
    if (fd >= 0) {
        /* It may also close between the connect and this send (EPIPE, ECONNRESET): CI saw it. */
        int rc = send_simple_rc(fd, 1, NANOFLOW__ENVELOPE__MSG_SHUTDOWN);
        if (rc != 0 && rc != -EPIPE && rc != -ECONNRESET)
            fail_msg("Shutdown to the fetcher: %d", rc);
        close(fd);
    }
    assert_int_equal(reap(s->fetcher, 10000), 0);
    const char *left[] = {"compute.sock", "compute.pid", "fetcher.sock", "fetcher.pid"};
    for (int i = 0; i < 4; i++) {
        snprintf(sock, sizeof(sock), "%s/%s", s->run_dir, left[i]);
        if (access(sock, F_OK) == 0)
            fail_msg("%s left behind", sock);
    }
    char shm[128], path[200];
    nf_rundir_shm_name(s->run_dir, shm, sizeof(shm));
    snprintf(path, sizeof(path), "/dev/shm%s", shm);
    assert_int_not_equal(access(path, F_OK), 0);
}

/* Sends a Generate whose sampling fields are llama.cpp's defaults but for temp and seed; edit,
 * when given, may change any field of the request before it is sent. */
static void send_generate_edit(int fd, uint64_t req, const char *prompt, int n, float temp,
                               uint64_t seed, int top,
                               void (*edit)(Nanoflow__Generate *, const void *), const void *arg)
{
    nf_envelope env;
    Nanoflow__Generate g;
    Nanoflow__SamplingParams sp;
    nanoflow__envelope__init(&env);
    nanoflow__generate__init(&g);
    nanoflow__sampling_params__init(&sp);
    struct nf_sampler_params d;
    nf_sampler_params_default(&d);
    sp.temp = temp;
    sp.top_k = d.top_k;
    sp.top_p = d.top_p;
    sp.min_p = d.min_p;
    sp.repeat_penalty = d.repeat_penalty;
    sp.repeat_last_n = d.repeat_last_n;
    sp.seed = seed;
    g.prompt.data = (uint8_t *)prompt;
    g.prompt.len = strlen(prompt);
    g.sampling = &sp;
    g.n_predict = n;
    g.top_logits = (uint32_t)top;
    if (edit)
        edit(&g, arg);
    env.msg_case = NANOFLOW__ENVELOPE__MSG_GENERATE;
    env.generate = &g;
    assert_int_equal(nf_client_send(fd, req, &env), 0);
}

static void send_generate(int fd, uint64_t req, const char *prompt, int n, float temp,
                          uint64_t seed, int top)
{
    send_generate_edit(fd, req, prompt, n, temp, seed, top, NULL, NULL);
}

/* The reference: what `run` computes in-process for the same request. */
static int reference(const char *prompt, int n, float temp, uint64_t seed, int32_t *gen,
                     float *top1)
{
    char err[512];
    struct nf_model *m;
    struct nf_vocab *v;
    struct nf_ctx *c;
    struct nf_sampler *smp;
    struct nf_sampler_params sp;
    assert_int_equal(nf_model_load(&m, nft_path, err, sizeof(err)), 0);
    assert_int_equal(nf_vocab_load(&v, m->gguf, err, sizeof(err)), 0);
    nf_sampler_params_default(&sp);
    sp.temp = temp;
    sp.seed = seed;
    assert_int_equal(nf_sampler_create(&smp, &sp, m->hp.n_vocab), 0);
    int32_t ids[512];
    int np = nf_tokenize(v, prompt, strlen(prompt), nf_vocab_add_bos(v), true, ids, 256);
    assert_true(np > 0);
    assert_int_equal(nf_ctx_create(&c, m, m->hp.n_ctx_train, 2), 0);
    for (int i = 0; i < np; i++)
        nf_sampler_accept(smp, ids[i]);
    assert_int_equal(nf_ctx_eval(c, ids, np), 0);
    int k = 0;
    for (;;) {
        int32_t tok = nf_sampler_sample(smp, c->logits);
        int best = 0;
        for (int i = 1; i < m->hp.n_vocab; i++)
            best = c->logits[i] > c->logits[best] ? i : best;
        top1[k] = c->logits[best];
        gen[k++] = tok;
        nf_sampler_accept(smp, tok);
        if (nf_vocab_is_eog(v, tok) || k >= n || c->n_past >= c->n_ctx)
            break;
        assert_int_equal(nf_ctx_eval(c, &tok, 1), 0);
    }
    nf_sampler_free(smp);
    nf_ctx_free(c);
    nf_vocab_free(v);
    nf_model_free(m);
    return k;
}

/* What collect saw in the last GenerateDone beyond the tokens. */
static struct {
    double queue_wait_s;
    uint32_t queued_ahead, n_ctx, n_ctx_train;
    char note[256];
} last_done;

/* Reads the events of request req until GenerateDone or Error, after n0 tokens already read
 * into ids; returns the tokens seen, the n0 included. */
static int collect_from(int fd, uint64_t req, int n0, int32_t *ids, float *top1, char *stop,
                        int *err_code, char *err_msg, size_t err_len)
{
    int n = n0;
    *err_code = 0;
    for (;;) {
        nf_envelope *r = NULL;
        assert_int_equal(nf_client_recv(fd, &r, TIMEOUT_MS), 1);
        assert_int_equal(r->request_id, req);
        if (r->msg_case == NANOFLOW__ENVELOPE__MSG_TOKEN) {
            ids[n] = r->token->id;
            top1[n] = r->token->n_top_logits ? r->token->top_logits[0]->logit : 0.0f;
            n++;
        } else if (r->msg_case == NANOFLOW__ENVELOPE__MSG_GENERATE_DONE) {
            const Nanoflow__GenerateDone *d = r->generate_done;
            snprintf(stop, 32, "%s", d->stop);
            last_done.queue_wait_s = d->queue_wait_s;
            last_done.queued_ahead = d->queued_ahead;
            last_done.n_ctx = d->n_ctx;
            last_done.n_ctx_train = d->n_ctx_train;
            snprintf(last_done.note, sizeof(last_done.note), "%s", d->note ? d->note : "");
            assert_int_equal(r->generate_done->n_gen_ids, n);
            for (int i = 0; i < n; i++)
                assert_int_equal(r->generate_done->gen_ids[i], ids[i]);
            nf_envelope_free(r);
            return n;
        } else {
            assert_int_equal(r->msg_case, NANOFLOW__ENVELOPE__MSG_ERROR);
            *err_code = r->error->code;
            snprintf(err_msg, err_len, "%s", r->error->message);
            nf_envelope_free(r);
            return n;
        }
        nf_envelope_free(r);
    }
}

static int collect(int fd, uint64_t req, int32_t *ids, float *top1, char *stop, int *err_code,
                   char *err_msg, size_t err_len)
{
    return collect_from(fd, req, 0, ids, top1, stop, err_code, err_msg, err_len);
}

static uint64_t stat_value(int fd, const char *name)
{
    send_simple(fd, 50, NANOFLOW__ENVELOPE__MSG_STATS_REQUEST);
    nf_envelope *r = NULL;
    assert_int_equal(nf_client_recv(fd, &r, TIMEOUT_MS), 1);
    assert_int_equal(r->msg_case, NANOFLOW__ENVELOPE__MSG_STATS);
    uint64_t v = UINT64_MAX;
    for (size_t s = 0; s < r->stats->n_stages; s++)
        for (size_t i = 0; i < r->stats->stages[s]->n_counters; i++)
            if (!strcmp(r->stats->stages[s]->counters[i]->name, name))
                v = r->stats->stages[s]->counters[i]->value;
    nf_envelope_free(r);
    return v;
}

static void test_generate_equals_run(void **state)
{
    (void)state;
    struct stack s;
    stack_up(&s, nft_path, "ok");
    const char *prompt = "Once upon a time";
    const struct {
        float temp;
        uint64_t seed;
    } cases[] = {{0.0f, 0}, {0.8f, 42}};
    for (int c = 0; c < 2; c++) {
        int32_t ref[64], got[64];
        float rtop[64], gtop[64];
        char stop[32], msg[512];
        int code;
        int nr = reference(prompt, 40, cases[c].temp, cases[c].seed, ref, rtop);
        send_generate(s.fd, 10 + (uint64_t)c, prompt, 40, cases[c].temp, cases[c].seed, 1);
        int ng = collect(s.fd, 10 + (uint64_t)c, got, gtop, stop, &code, msg, sizeof(msg));
        assert_int_equal(code, 0);
        assert_int_equal(ng, nr);
        for (int i = 0; i < ng; i++) {
            assert_int_equal(got[i], ref[i]);
            assert_memory_equal(&gtop[i], &rtop[i], sizeof(float));
        }
        print_message("temp %.1f: %d tokens equal to the in-process model, stop %s\n",
                      (double)cases[c].temp, ng, stop);
    }
    assert_true(stat_value(s.fd, "decode_tokens") > 0);
    assert_true(stat_value(s.fd, "tiles_used") > 0);
    assert_true(stat_value(s.fd, "mem_bytes") > 0);
    /* Cancel after the first tokens: the generation ends with stop "cancel" (or, if the
     * context of 128 fills first, "ctx"), its GenerateDone listing the tokens streamed. */
    send_generate(s.fd, 20, prompt, 100000, 0.0f, 0, 0);
    static int32_t many[4096];
    for (int i = 0; i < 3; i++) {
        nf_envelope *r = NULL;
        assert_int_equal(nf_client_recv(s.fd, &r, TIMEOUT_MS), 1);
        assert_int_equal(r->msg_case, NANOFLOW__ENVELOPE__MSG_TOKEN);
        many[i] = r->token->id;
        nf_envelope_free(r);
    }
    nf_envelope env;
    Nanoflow__Cancel cn;
    nanoflow__envelope__init(&env);
    nanoflow__cancel__init(&cn);
    cn.target_id = 20;
    env.msg_case = NANOFLOW__ENVELOPE__MSG_CANCEL;
    env.cancel = &cn;
    assert_int_equal(nf_client_send(s.fd, 21, &env), 0);
    char stop[32], msg[512];
    int code;
    nf_envelope *r = NULL;
    int n = 3;
    for (;;) {
        assert_int_equal(nf_client_recv(s.fd, &r, TIMEOUT_MS), 1);
        if (r->msg_case != NANOFLOW__ENVELOPE__MSG_TOKEN)
            break;
        assert_true(n < 4096);
        many[n++] = r->token->id;
        nf_envelope_free(r);
    }
    assert_int_equal(r->msg_case, NANOFLOW__ENVELOPE__MSG_GENERATE_DONE);
    snprintf(stop, sizeof(stop), "%s", r->generate_done->stop);
    assert_int_equal(r->generate_done->n_gen_ids, n);
    for (int i = 0; i < n; i++)
        assert_int_equal(r->generate_done->gen_ids[i], many[i]);
    nf_envelope_free(r);
    print_message("cancel: stop %s after %d tokens\n", stop, n);
    assert_true(!strcmp(stop, "cancel") || !strcmp(stop, "ctx"));
    /* The daemon takes the next request normally. */
    int32_t got[64];
    float gtop[64];
    send_generate(s.fd, 22, prompt, 4, 0.0f, 0, 0);
    assert_int_equal(collect(s.fd, 22, got, gtop, stop, &code, msg, sizeof(msg)), 4);
    assert_int_equal(code, 0);
    stack_down(&s);
}

static void test_corrupt_tile(void **state)
{
    (void)state;
    char cmd[1200], err[512];
    snprintf(cmd, sizeof(cmd), "cp '%s' '%s'", nft_path, bad_path);
    assert_int_equal(system(cmd), 0);
    struct nf_nft *f;
    assert_int_equal(nf_nft_open(&f, bad_path, false, err, sizeof(err)), 0);
    const struct nf_nft_tile *t = nf_nft_find(f, 2, NF_TILE_FFN, 0);
    assert_non_null(t);
    int fd = open(bad_path, O_RDWR);
    assert_true(fd >= 0);
    uint8_t b;
    assert_int_equal(pread(fd, &b, 1, (off_t)t->offset + 7), 1);
    b ^= 0x10;
    assert_int_equal(pwrite(fd, &b, 1, (off_t)t->offset + 7), 1);
    close(fd);
    nf_nft_close(f);
    struct stack s;
    stack_up(&s, bad_path, "bad");
    int32_t ids[64];
    float top[64];
    char stop[32], msg[512];
    int code;
    send_generate(s.fd, 30, "Once upon a time", 8, 0.0f, 0, 0);
    collect(s.fd, 30, ids, top, stop, &code, msg, sizeof(msg));
    print_message("corrupt tile: error %d: %s\n", code, msg);
    assert_int_equal(code, NF_ECHECKSUM);
    assert_non_null(strstr(msg, "layer 2 ffn"));
    /* The daemon stays up and answers. */
    char sock[700];
    snprintf(sock, sizeof(sock), "%s/compute.sock", s.run_dir);
    assert_int_equal(health(sock), NANOFLOW__HEALTH__STATE__READY);
    stack_down(&s);
}

/* VmRSS and VmPeak of pid in KiB (from /proc/pid/status). */
static void proc_mem_kb(pid_t pid, long *rss, long *peak)
{
    char path[64], line[256];
    snprintf(path, sizeof(path), "/proc/%d/status", (int)pid);
    FILE *f = fopen(path, "r");
    assert_non_null(f);
    *rss = *peak = -1;
    while (fgets(line, sizeof(line), f)) {
        if (!strncmp(line, "VmRSS:", 6))
            *rss = atol(line + 6);
        else if (!strncmp(line, "VmPeak:", 7))
            *peak = atol(line + 7);
    }
    fclose(f);
    assert_true(*rss > 0 && *peak > 0);
}

/* One field of a Generate out of its range. */
struct bad_case {
    const char *field;
    int32_t n_predict;
    uint32_t top_logits;
    float temp, top_p;
    int32_t top_k;
};

static const struct bad_case bad_cases[] = {
    {"n_predict", .n_predict = 2147483647},
    {"n_predict", .n_predict = -1},
    {"top_logits", .top_logits = 1000},
    {"temp", .temp = NAN},
    {"temp", .temp = -1.0f},
    {"top_p", .top_p = 2.0f},
    {"top_k", .top_k = -5},
};

/* Applies a bad_case: its nonzero fields replace the request's. */
static void bad_edit(Nanoflow__Generate *g, const void *arg)
{
    const struct bad_case *b = arg;
    if (b->n_predict)
        g->n_predict = b->n_predict;
    if (b->top_logits)
        g->top_logits = b->top_logits;
    if (b->temp != 0.0f)
        g->sampling->temp = b->temp;
    if (b->top_p != 0.0f)
        g->sampling->top_p = b->top_p;
    if (b->top_k)
        g->sampling->top_k = b->top_k;
}

/* Generate requests out of range are answered with an Error naming the field, before anything
 * is reserved for them: compute's RSS and peak address space stay put (the INT32_MAX n_predict
 * once made it reserve 8 GiB of token ids), and it serves the next request normally. */
static void test_bad_requests(void **state)
{
    (void)state;
    struct stack s;
    stack_up(&s, nft_path, "req");
    long rss0, peak0, rss1, peak1;
    proc_mem_kb(s.compute, &rss0, &peak0);
    for (size_t c = 0; c < sizeof(bad_cases) / sizeof(bad_cases[0]); c++) {
        const uint64_t req = 40 + c;
        send_generate_edit(s.fd, req, "Once upon a time", 8, 0.8f, 0, 0, bad_edit, &bad_cases[c]);
        int32_t ids[64];
        float top[64];
        char stop[32] = "", msg[512] = "";
        int code;
        assert_int_equal(collect(s.fd, req, ids, top, stop, &code, msg, sizeof(msg)), 0);
        print_message("%s: error %d: %s\n", bad_cases[c].field, code, msg);
        assert_int_equal(code, NF_EUSAGE);
        assert_non_null(strstr(msg, bad_cases[c].field));
    }
    /* A legal but huge n_predict runs until the context is full, reserving only that. */
    int32_t got[256];
    float gtop[256];
    char stop[32], msg[512];
    int code;
    send_generate(s.fd, 60, "Once upon a time", 1000000, 0.0f, 0, 0);
    const int n = collect(s.fd, 60, got, gtop, stop, &code, msg, sizeof(msg));
    assert_int_equal(code, 0);
    assert_string_equal(stop, "ctx");
    print_message("n_predict 1000000: %d tokens, stop %s\n", n, stop);
    proc_mem_kb(s.compute, &rss1, &peak1);
    print_message("compute VmRSS %ld -> %ld KiB, VmPeak %ld -> %ld KiB\n", rss0, rss1, peak0,
                  peak1);
    assert_true(rss1 - rss0 < 32 * 1024);
    assert_true(peak1 - peak0 < 256 * 1024);
    send_generate(s.fd, 61, "Once upon a time", 4, 0.0f, 0, 0);
    assert_int_equal(collect(s.fd, 61, got, gtop, stop, &code, msg, sizeof(msg)), 4);
    assert_int_equal(code, 0);
    stack_down(&s);
}

static void send_cancel(int fd, uint64_t req, uint64_t target)
{
    nf_envelope env;
    Nanoflow__Cancel cn;
    nanoflow__envelope__init(&env);
    nanoflow__cancel__init(&cn);
    cn.target_id = target;
    env.msg_case = NANOFLOW__ENVELOPE__MSG_CANCEL;
    env.cancel = &cn;
    assert_int_equal(nf_client_send(fd, req, &env), 0);
}

/* Two clients each use request id 1 (as every `gen` does): the second's Cancel of request 1 is
 * refused with an Error on its own connection, and the first's generation runs to the end with
 * llama.cpp's golden tokens. The second's own request 1 can still be cancelled by it. */
static void test_cancel_own_connection(void **state)
{
    (void)state;
    struct golden gd = {0};
    golden_first(&gd);
    struct stack s;
    stack_up(&s, nft_path, "cancel");
    const int fd2 = stack_connect(&s);
    send_generate(s.fd, 1, gd.prompt, gd.n_gen, 0.0f, 0, 0);
    nf_envelope *r = NULL;
    assert_int_equal(nf_client_recv(s.fd, &r, TIMEOUT_MS), 1); /* it runs */
    assert_int_equal(r->msg_case, NANOFLOW__ENVELOPE__MSG_TOKEN);
    int32_t got[128];
    float top[128];
    got[0] = r->token->id;
    nf_envelope_free(r);
    send_cancel(fd2, 7, 1);
    assert_int_equal(nf_client_recv(fd2, &r, TIMEOUT_MS), 1);
    assert_int_equal(r->request_id, 7);
    assert_int_equal(r->msg_case, NANOFLOW__ENVELOPE__MSG_ERROR);
    assert_int_equal(r->error->code, -EPERM);
    print_message("foreign cancel: %s\n", r->error->message);
    assert_non_null(strstr(r->error->message, "not a request of this connection"));
    nf_envelope_free(r);
    char stop[32], msg[512];
    int code;
    const int n = collect_from(s.fd, 1, 1, got, top, stop, &code, msg, sizeof(msg));
    assert_int_equal(code, 0);
    assert_int_equal(n, gd.n_gen);
    assert_memory_equal(got, gd.gen, sizeof(int32_t) * (size_t)n);
    print_message("the first client's %d tokens equal the golden ones, stop %s\n", n, stop);
    /* Request 1 of the second connection is its own to cancel: queued behind a long one. */
    send_generate(s.fd, 2, gd.prompt, 100, 0.0f, 0, 0);
    assert_int_equal(nf_client_recv(s.fd, &r, TIMEOUT_MS), 1); /* it runs */
    assert_int_equal(r->msg_case, NANOFLOW__ENVELOPE__MSG_TOKEN);
    got[0] = r->token->id;
    nf_envelope_free(r);
    send_generate(fd2, 1, gd.prompt, 100, 0.0f, 0, 0);
    send_cancel(fd2, 8, 1);
    assert_int_equal(collect(fd2, 1, got + 1, top, stop, &code, msg, sizeof(msg)), 0);
    assert_int_equal(code, 0);
    assert_string_equal(stop, "cancel");
    assert_int_equal(collect_from(s.fd, 2, 1, got, top, stop, &code, msg, sizeof(msg)), 100);
    close(fd2);
    stack_down(&s);
}

/* Fairness without a second KV cache: the per-request limit clamps a long request (its reply
 * says so), and a short request queued behind it reports its wait, in its reply and in Stats. */
static void test_queue_limit_and_wait(void **state)
{
    (void)state;
    struct golden gd = {0};
    golden_first(&gd);
    struct stack s;
    stack_up_flag(&s, nft_path, "queue", "--max-tokens-per-request", "50");
    const int fd2 = stack_connect(&s);
    send_generate(s.fd, 1, gd.prompt, 100, 0.0f, 0, 0);
    nf_envelope *r = NULL;
    assert_int_equal(nf_client_recv(s.fd, &r, TIMEOUT_MS), 1); /* the long one runs */
    assert_int_equal(r->msg_case, NANOFLOW__ENVELOPE__MSG_TOKEN);
    int32_t got[128], short_ids[8];
    float top[128];
    got[0] = r->token->id;
    nf_envelope_free(r);
    send_generate(fd2, 1, gd.prompt, 5, 0.0f, 0, 0);
    char stop[32], msg[512];
    int code;
    const int n = collect_from(s.fd, 1, 1, got, top, stop, &code, msg, sizeof(msg));
    assert_int_equal(code, 0);
    assert_int_equal(n, 50);
    assert_string_equal(stop, "length");
    assert_memory_equal(got, gd.gen, sizeof(int32_t) * 50);
    print_message("long request: %d tokens, note: %s\n", n, last_done.note);
    assert_non_null(strstr(last_done.note, "n_predict 100 clamped to the per-request limit 50"));
    assert_int_equal(last_done.queued_ahead, 0);
    assert_int_equal(last_done.n_ctx, 128);
    assert_int_equal(last_done.n_ctx_train, 128);
    assert_int_equal(collect(fd2, 1, short_ids, top, stop, &code, msg, sizeof(msg)), 5);
    assert_int_equal(code, 0);
    assert_memory_equal(short_ids, gd.gen, sizeof(int32_t) * 5);
    print_message("short request: waited %.3f s behind %u\n", last_done.queue_wait_s,
                  last_done.queued_ahead);
    assert_int_equal(last_done.queued_ahead, 1);
    assert_true(last_done.queue_wait_s > 0.0);
    assert_string_equal(last_done.note, "");
    assert_int_equal(stat_value(s.fd, "requests"), 2);
    assert_int_equal(stat_value(s.fd, "clamped"), 1);
    assert_int_equal(stat_value(s.fd, "queue_len"), 0);
    assert_true(stat_value(s.fd, "queue_wait_ns") >= (uint64_t)(last_done.queue_wait_s * 1e9));
    close(fd2);
    stack_down(&s);
}

/* Reads the pipe fd (non-blocking) until what came through holds needle, at most TIMEOUT_MS;
 * true when it did. */
static bool read_until(int fd, const char *needle)
{
    static char buf[1 << 16];
    size_t n = 0;
    for (int waited = 0; waited <= TIMEOUT_MS; waited += 10) {
        ssize_t r;
        while (n < sizeof(buf) - 1 && (r = read(fd, buf + n, sizeof(buf) - 1 - n)) > 0)
            n += (size_t)r;
        buf[n] = '\0';
        if (strstr(buf, needle))
            return true;
        if (n == sizeof(buf) - 1) { /* keep the tail, where a line may be half read */
            memmove(buf, buf + n - 1024, 1024);
            n = 1024;
        }
        sleep_ms(10);
    }
    return false;
}

/* A client that has its GenerateDone sees its sequence gone from Stats (active 0) at once, even
 * while compute's worker is held up right after the reply. The worker used to take the job out
 * of its slot only after sending the reply, so a Stats answered while it was preempted in
 * between said `active 1` (what test_batch_*'s stats check could see on a loaded machine). Here
 * the worker's log line after the reply holds it up: compute logs to a pipe of one page that the
 * test has filled, so the worker blocks in that write until the test reads the pipe. */
static void test_stats_after_reply(void **state)
{
    (void)state;
    int p[2];
    assert_int_equal(pipe2(p, O_CLOEXEC), 0);
    assert_true(fcntl(p[0], F_SETPIPE_SZ, 4096) > 0);
    assert_int_equal(fcntl(p[0], F_SETFL, O_NONBLOCK), 0);
    /* Our own non-blocking way into the pipe (compute's descriptors stay blocking). */
    char path[64];
    snprintf(path, sizeof(path), "/proc/self/fd/%d", p[1]);
    const int wfd = open(path, O_WRONLY | O_NONBLOCK | O_CLOEXEC);
    assert_true(wfd >= 0);
    compute_log_fd = p[1];
    struct stack s;
    stack_up(&s, nft_path, "after-reply");
    compute_log_fd = -1;
    close(p[1]);
    assert_true(read_until(p[0], "ready on")); /* its start-up lines are out */
    size_t filled = 0;
    while (write(wfd, "x", 1) == 1) /* until full: the next log line blocks its writer */
        filled++;
    assert_true(errno == EAGAIN && filled > 0);
    send_generate(s.fd, 1, "Once upon a time", 4, 0.0f, 0, 0);
    int32_t got[8];
    float top[8];
    char stop[32], msg[512];
    int code;
    assert_int_equal(collect(s.fd, 1, got, top, stop, &code, msg, sizeof(msg)), 4);
    assert_int_equal(code, 0);
    const uint64_t active = stat_value(s.fd, "active");
    /* The worker's line about the request comes through only now: it was held up meanwhile. */
    const bool line = read_until(p[0], "generated tokens");
    print_message("active %llu after the reply, %zu bytes filled the log pipe, its line %s\n",
                  (unsigned long long)active, filled, line ? "came after" : "never came");
    close(wfd);
    stack_down(&s);
    close(p[0]);
    assert_true(line);
    assert_int_equal(active, 0);
}

/* A prompt of several evaluation chunks is reported as it goes (PromptProgress, here after every
 * chunk: NANOFLOW_PROGRESS_MS=0), so a client's --timeout does not fire during a long prompt;
 * the tokens that follow are still run's. */
static void test_prompt_progress(void **state)
{
    (void)state;
    char prompt[1024] = "";
    for (int i = 0; i < 8; i++) /* 12 tokens each: about 97 of the context's 128 */
        strcat(prompt, "Once upon a time, Lily saw a cat. ");
    int32_t want[8], got[8];
    float top[8];
    const int nw = reference(prompt, 4, 0.0f, 0, want, top);
    assert_int_equal(setenv("NANOFLOW_PROGRESS_MS", "0", 1), 0);
    struct stack s;
    /* Chunks of NF_MAX_BATCH tokens (the plan would choose a larger ubatch for this budget). */
    char ub[16];
    snprintf(ub, sizeof(ub), "%d", NF_MAX_BATCH);
    stack_up_flag(&s, nft_path, "progress", "--ubatch", ub);
    assert_int_equal(unsetenv("NANOFLOW_PROGRESS_MS"), 0);
    send_generate(s.fd, 7, prompt, 4, 0.0f, 0, 0);
    int n_progress = 0, done = 0, total = 0, n = 0;
    for (;;) {
        nf_envelope *r = NULL;
        assert_int_equal(nf_client_recv(s.fd, &r, TIMEOUT_MS), 1);
        assert_int_equal(r->request_id, 7);
        if (r->msg_case == NANOFLOW__ENVELOPE__MSG_PROMPT_PROGRESS) {
            assert_int_equal(n, 0); /* only before the first token */
            assert_true(r->prompt_progress->done > done);
            assert_true(r->prompt_progress->done < r->prompt_progress->total);
            done = r->prompt_progress->done;
            total = r->prompt_progress->total;
            n_progress++;
        } else if (r->msg_case == NANOFLOW__ENVELOPE__MSG_TOKEN) {
            got[n++] = r->token->id;
        } else {
            assert_int_equal(r->msg_case, NANOFLOW__ENVELOPE__MSG_GENERATE_DONE);
            assert_int_equal((int)r->generate_done->n_prompt_ids, total);
            nf_envelope_free(r);
            break;
        }
        nf_envelope_free(r);
    }
    print_message("prompt of %d tokens: %d progress frames, last at %d\n", total, n_progress, done);
    assert_true(total > 2 * NF_MAX_BATCH);
    assert_int_equal(n_progress, (total - 1) / NF_MAX_BATCH);
    assert_int_equal(n, nw);
    assert_memory_equal(got, want, sizeof(int32_t) * (size_t)nw);
    stack_down(&s);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_generate_equals_run),  cmocka_unit_test(test_corrupt_tile),
        cmocka_unit_test(test_bad_requests),         cmocka_unit_test(test_cancel_own_connection),
        cmocka_unit_test(test_queue_limit_and_wait), cmocka_unit_test(test_prompt_progress),
        cmocka_unit_test(test_stats_after_reply),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
