/* test_stream.c - the tile-streaming engine: bit-identical logits to nf_model on every shared
 * model, a tiny tile cache, sparse mode on stories260K, callbacks, and a corrupted tile named. */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

#include "model.h"
#include "nf_err.h"
#include "nft.h"
#include "stream.h"

#define ENGINE_TEST_NAME "test_stream"
#include "engine_test.h"

#define N_PROMPT 40 /* more than NF_MAX_BATCH: the prompt takes two chunks */
#define N_GEN    8
#define N_CTX    64

/* Converts models/NAME.gguf into tmpdir/NAME.nft (small tiles: several per tensor). */
static void convert(const char *name, char *out, size_t len)
{
    char in[512], err[512];
    snprintf(in, sizeof(in), "%s/models/%s.gguf", NF_SHARED_DIR, name);
    snprintf(out, len, "%s/%s.nft", tmpdir, name);
    if (access(out, R_OK) == 0)
        return;
    struct nf_nft_convert_opts o = {.tile_size = 16384};
    int rc = nf_nft_convert(in, out, &o, err, sizeof(err));
    if (rc < 0)
        fail_msg("convert %s: %s", name, err);
}

/* Callback bookkeeping. */
struct seen {
    int layers_done;
    uint64_t used_bits, used_calls;
};

static void on_layer(void *ud, uint32_t layer, const float *x, int n_embd)
{
    struct seen *s = ud;
    (void)layer;
    (void)x;
    (void)n_embd;
    s->layers_done++;
}

static void on_used(void *ud, uint32_t layer, const uint64_t *bits, uint32_t n_groups)
{
    struct seen *s = ud;
    (void)layer;
    for (uint32_t g = 0; g < n_groups; g++)
        s->used_bits += (bits[g / 64] >> (g % 64)) & 1;
    s->used_calls++;
}

struct engine {
    struct nf_nft *f;
    struct nf_tile_src src;
    struct nf_stream *s;
};

static void engine_open(struct engine *e, const char *nft, uint64_t cache, float sparsity)
{
    char err[512];
    memset(e, 0, sizeof(*e));
    if (nf_nft_open(&e->f, nft, false, err, sizeof(err)) < 0)
        fail_msg("%s", err);
    assert_int_equal(nf_tile_src_file_open(&e->src, e->f, cache), 0);
    struct nf_stream_opts o = {.n_ctx = N_CTX, .n_threads = 2, .sparsity = sparsity};
    if (nf_stream_create(&e->s, e->f, &e->src, &o, err, sizeof(err)) < 0)
        fail_msg("%s", err);
}

static void engine_close(struct engine *e)
{
    nf_stream_free(e->s);
    nf_tile_src_file_close(&e->src);
    nf_nft_close(e->f);
}

static void prompt_tokens(int32_t *tok, int n_vocab)
{
    tok[0] = 1;
    for (int i = 1; i < N_PROMPT; i++)
        tok[i] = (int32_t)((i * 37 + 11) % n_vocab);
}

/* Exact mode: the streamed logits equal nf_ctx_eval's bit for bit over the prompt and N_GEN
 * greedy steps, with a cache of a few tiles (cache_bytes) forcing evictions and rereads. */
static void check_exact(const char *name, uint64_t cache_bytes)
{
    char nft[512], err[512];
    convert(name, nft, sizeof(nft));
    struct nf_model *m;
    if (nf_model_load(&m, nft, err, sizeof(err)) < 0)
        fail_msg("%s", err);
    struct nf_ctx *c;
    assert_int_equal(nf_ctx_create(&c, m, N_CTX, 2), 0);
    struct engine e;
    engine_open(&e, nft, cache_bytes, 0.0f);
    const int V = m->hp.n_vocab;
    assert_int_equal(nf_stream_hparams(e.s)->n_vocab, V);
    int32_t tok[N_PROMPT];
    prompt_tokens(tok, V);
    assert_int_equal(nf_ctx_eval(c, tok, N_PROMPT), 0);
    assert_int_equal(nf_stream_eval(e.s, tok, N_PROMPT), 0);
    for (int step = 0; step <= N_GEN; step++) {
        if (memcmp(c->logits, nf_stream_logits(e.s), sizeof(float) * (size_t)V) != 0)
            fail_msg("%s: logits differ at step %d", name, step);
        if (step == N_GEN)
            break;
        int32_t next = argmax(c->logits, V);
        assert_int_equal(nf_ctx_eval(c, &next, 1), 0);
        assert_int_equal(nf_stream_eval(e.s, &next, 1), 0);
    }
    assert_int_equal(nf_stream_n_past(e.s), N_PROMPT + N_GEN);
    struct nf_stream_stats st;
    nf_stream_get_stats(e.s, &st);
    assert_int_equal(st.groups_skipped, 0);
    assert_true(st.tiles_pinned > 0);
    print_message("%-20s exact: %d+%d tokens bit-identical, %llu pins, %llu reads\n", name,
                  N_PROMPT, N_GEN, (unsigned long long)st.tiles_pinned,
                  (unsigned long long)nf_tile_src_file_reads(&e.src));
    engine_close(&e);
    nf_ctx_free(c);
    nf_model_free(m);
}

static void test_exact_all(void **state)
{
    (void)state;
    DIR *d = opendir(NF_SHARED_DIR "/models");
    if (!d)
        skip();
    struct dirent *de;
    int n = 0;
    while ((de = readdir(d))) {
        size_t l = strlen(de->d_name);
        if (l < 6 || strcmp(de->d_name + l - 5, ".gguf") != 0)
            continue;
        char name[256];
        snprintf(name, sizeof(name), "%.*s", (int)(l - 5), de->d_name);
        /* Alternate between a big cache and one of two tiles. */
        check_exact(name, n % 2 ? 0 : (uint64_t)1 << 30);
        n++;
    }
    closedir(d);
    assert_true(n > 0);
}

/* Callbacks: layer_done once per layer per eval, used reports every group in exact mode. */
static struct seen g_seen;
static void seen_layer(void *ud, uint32_t layer, const float *x, int n_embd)
{
    (void)ud;
    on_layer(&g_seen, layer, x, n_embd);
}
static void seen_used(void *ud, uint32_t layer, const uint64_t *bits, uint32_t n_groups)
{
    (void)ud;
    on_used(&g_seen, layer, bits, n_groups);
}

static float run_sparse(const char *nft, float sparsity, const struct nf_model *m,
                        struct nf_stream_stats *st)
{
    char err[512];
    struct nf_nft *f;
    if (nf_nft_open(&f, nft, false, err, sizeof(err)) < 0)
        fail_msg("%s", err);
    struct nf_tile_src src;
    assert_int_equal(nf_tile_src_file_open(&src, f, (uint64_t)1 << 30), 0);
    src.layer_done = seen_layer;
    src.used = seen_used;
    struct nf_stream *s;
    struct nf_stream_opts o = {.n_ctx = N_CTX, .n_threads = 2, .sparsity = sparsity};
    if (nf_stream_create(&s, f, &src, &o, err, sizeof(err)) < 0)
        fail_msg("%s", err);
    struct nf_ctx *c;
    assert_int_equal(nf_ctx_create(&c, m, N_CTX, 2), 0);
    const int V = m->hp.n_vocab, steps = N_CTX - 8;
    int32_t tok = 1;
    int agree = 0;
    /* Teacher forcing: both consume the exact model's greedy tokens. */
    for (int i = 0; i < steps; i++) {
        assert_int_equal(nf_ctx_eval(c, &tok, 1), 0);
        assert_int_equal(nf_stream_eval(s, &tok, 1), 0);
        int a = argmax(c->logits, V), b = argmax(nf_stream_logits(s), V);
        agree += a == b;
        tok = a;
    }
    nf_stream_get_stats(s, st);
    nf_ctx_free(c);
    nf_stream_free(s);
    nf_tile_src_file_close(&src);
    nf_nft_close(f);
    return (float)agree / (float)steps;
}

static void test_sparse_stories(void **state)
{
    (void)state;
    char nft[512], err[512];
    convert("stories260K", nft, sizeof(nft));
    struct nf_model *m;
    if (nf_model_load(&m, nft, err, sizeof(err)) < 0)
        fail_msg("%s", err);
    struct nf_stream_stats st;
    memset(&g_seen, 0, sizeof(g_seen));
    float agree0 = run_sparse(nft, 0.0f, m, &st);
    const int steps = N_CTX - 8, L = m->hp.n_layer;
    assert_true(agree0 == 1.0f);
    assert_int_equal(g_seen.layers_done, steps * L);
    assert_int_equal(g_seen.used_calls, (uint64_t)steps * L);
    assert_int_equal(g_seen.used_bits, st.groups_total);
    memset(&g_seen, 0, sizeof(g_seen));
    float agree = run_sparse(nft, 0.5f, m, &st);
    double skipped = (double)st.groups_skipped / (double)st.groups_total;
    print_message("stories260K sparse 0.5: %.1f%% of groups skipped, greedy argmax agrees with "
                  "exact on %.1f%% of %d steps\n",
                  100 * skipped, 100 * agree, steps);
    assert_true(skipped > 0.4 && skipped < 0.6);
    assert_int_equal(g_seen.used_bits, st.groups_total - st.groups_skipped);
    assert_true(agree >= 0.25f);
    nf_model_free(m);
}

/* A flipped byte in an FFN tile: the eval fails with NF_ECHECKSUM naming the tile. */
static void test_corrupt_tile(void **state)
{
    (void)state;
    char nft[512], bad[600], err[512];
    convert("stories260K", nft, sizeof(nft));
    snprintf(bad, sizeof(bad), "%s/bad.nft", tmpdir);
    char cmd[1300];
    snprintf(cmd, sizeof(cmd), "cp '%s' '%s'", nft, bad);
    assert_int_equal(system(cmd), 0);
    struct nf_nft *f;
    if (nf_nft_open(&f, bad, false, err, sizeof(err)) < 0)
        fail_msg("%s", err);
    const struct nf_nft_tile *t = nf_nft_find(f, 1, NF_TILE_FFN, 0);
    assert_non_null(t);
    int fd = open(bad, O_RDWR);
    assert_true(fd >= 0);
    uint8_t b;
    assert_int_equal(pread(fd, &b, 1, (off_t)t->offset + 5), 1);
    b ^= 0x40;
    assert_int_equal(pwrite(fd, &b, 1, (off_t)t->offset + 5), 1);
    close(fd);
    struct nf_tile_src src;
    assert_int_equal(nf_tile_src_file_open(&src, f, (uint64_t)1 << 30), 0);
    struct nf_stream *s;
    struct nf_stream_opts o = {.n_ctx = N_CTX, .n_threads = 1};
    if (nf_stream_create(&s, f, &src, &o, err, sizeof(err)) < 0)
        fail_msg("%s", err);
    int32_t tok[2] = {1, 5};
    assert_int_equal(nf_stream_eval(s, tok, 2), NF_ECHECKSUM);
    print_message("corrupt tile: %s\n", nf_stream_error(s));
    assert_non_null(strstr(nf_stream_error(s), "layer 1"));
    assert_non_null(strstr(nf_stream_error(s), "ffn"));
    /* Bad input is refused without evaluating. */
    nf_stream_reset(s);
    int32_t oob = 1 << 20;
    assert_int_equal(nf_stream_eval(s, &oob, 1), NF_EUSAGE);
    nf_stream_free(s);
    struct nf_stream_opts bado = {.n_ctx = 0};
    assert_int_equal(nf_stream_create(&s, f, &src, &bado, err, sizeof(err)), NF_EUSAGE);
    nf_tile_src_file_close(&src);
    nf_nft_close(f);
}

/* The ubatch (nf_stream_opts.n_ubatch): a 40-token prompt in one chunk of 40 (past NF_MAX_BATCH:
 * progress after each layer, done increasing and below the total) or in chunks of 7 (progress
 * after each chunk) gives the logits of the in-RAM context with the same ubatch,
 * bit for bit. */
struct prog {
    int calls, last, total;
    bool bad;
};

static void on_prog(void *ud, int done, int total)
{
    struct prog *p = ud;
    p->bad |= done <= p->last || done > total;
    p->last = done;
    p->total = total;
    p->calls++;
}

static void test_ubatch(void **state)
{
    (void)state;
    char nft[512], err[512];
    convert("stories260K", nft, sizeof(nft));
    struct nf_model *m;
    if (nf_model_load(&m, nft, err, sizeof(err)) < 0)
        fail_msg("%s", err);
    struct nf_nft *f;
    if (nf_nft_open(&f, nft, false, err, sizeof(err)) < 0)
        fail_msg("%s", err);
    int32_t tok[N_PROMPT];
    for (int i = 0; i < N_PROMPT; i++)
        tok[i] = 1 + (i * 37) % (m->hp.n_vocab - 1);
    const int ubs[] = {N_PROMPT, 7};
    for (int k = 0; k < 2; k++) {
        const int ub = ubs[k];
        struct nf_tile_src src;
        assert_int_equal(nf_tile_src_file_open(&src, f, (uint64_t)1 << 30), 0);
        struct nf_stream *s;
        struct nf_stream_opts o = {.n_ctx = N_CTX, .n_threads = 2, .n_ubatch = ub};
        if (nf_stream_create(&s, f, &src, &o, err, sizeof(err)) < 0)
            fail_msg("%s", err);
        struct prog p = {0};
        nf_stream_set_progress(s, on_prog, &p);
        assert_int_equal(nf_stream_eval(s, tok, N_PROMPT), 0);
        struct nf_ctx *c;
        assert_int_equal(nf_ctx_create_ub(&c, m, N_CTX, 2, ub), 0);
        assert_int_equal(nf_ctx_eval(c, tok, N_PROMPT), 0);
        assert_memory_equal(nf_stream_logits(s), c->logits, sizeof(float) * m->hp.n_vocab);
        print_message("ubatch %d: %d progress calls\n", ub, p.calls);
        assert_false(p.bad);
        if (ub == N_PROMPT) /* one chunk: after every layer but the last */
            assert_int_equal(p.calls, m->hp.n_layer - 1);
        else /* chunks of 7: after each, the last one included (done == total ends it) */
            assert_int_equal(p.calls, (N_PROMPT + ub - 1) / ub);
        assert_true(p.last < N_PROMPT || ub < N_PROMPT);
        nf_ctx_free(c);
        nf_stream_free(s);
        nf_tile_src_file_close(&src);
    }
    nf_nft_close(f);
    nf_model_free(m);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_exact_all),
        cmocka_unit_test(test_sparse_stories),
        cmocka_unit_test(test_corrupt_tile),
        cmocka_unit_test(test_ubatch),
    };
    return cmocka_run_group_tests(tests, setup_dir, teardown_dir);
}
