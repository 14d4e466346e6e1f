/* test_spec.c - speculative decoding: the engines' per-row passes (nf_ctx_eval_rows,
 * nf_stream_eval_rows) give every position the logits a decode step gives it, bit for bit, and
 * roll back; the driver's speculative steps give plain greedy's tokens (llama.cpp's goldens)
 * for prompt lookup and for test drafts that are always right (running into eog, the length
 * and the context limit) or always wrong; seeded sampling gives plain sampling's tokens, and
 * the distribution over seeds matches plain sampling's (chi-square); with the sampler's
 * penalties too. */
#include <dirent.h>
#include <errno.h>
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

#include "generate.h"
#include "json_mini.h"
#include "model.h"
#include "nf_err.h"
#include "nft.h"
#include "stream.h"
#include "tokenizer.h"

#define MODELS      NF_SHARED_DIR "/models/"
#define GOLDEN      NF_SHARED_DIR "/golden/"
#define STORIES_NFT NF_SHARED_DIR "/models/stories260K.nft"
#define MAX_GOLD    8

struct golden {
    int32_t prompt[64], gen[128];
    int n_prompt, n_gen;
};

/* One model of the shared directory with its goldens. */
struct fixture {
    struct nf_model *m;
    struct nf_vocab *v;
    struct golden g[MAX_GOLD];
    int n_gold;
};

static char tmpdir[64];

static int setup_dir(void **state)
{
    (void)state;
    snprintf(tmpdir, sizeof(tmpdir), "/tmp/test_spec-XXXXXX");
    return mkdtemp(tmpdir) ? 0 : -1;
}

static int teardown_dir(void **state)
{
    (void)state;
    DIR *d = opendir(tmpdir);
    struct dirent *e;
    char p[600];
    while (d && (e = readdir(d)))
        if (e->d_name[0] != '.') {
            snprintf(p, sizeof(p), "%s/%s", tmpdir, e->d_name);
            unlink(p);
        }
    if (d)
        closedir(d);
    rmdir(tmpdir);
    return 0;
}

/* Loads models/NAME.gguf and golden/NAME.jsonl; skips the test when either is missing. */
static void fixture_open(struct fixture *fx, const char *name)
{
    char path[512], err[512];
    memset(fx, 0, sizeof(*fx));
    snprintf(path, sizeof(path), MODELS "%s.gguf", name);
    if (access(path, R_OK) != 0) {
        print_message("skip: %s is missing\n", path);
        skip();
    }
    if (nf_model_load(&fx->m, path, err, sizeof(err)) ||
        nf_vocab_load(&fx->v, fx->m->gguf, err, sizeof(err)))
        fail_msg("%s", err);
    snprintf(path, sizeof(path), GOLDEN "%s.jsonl", name);
    FILE *f = fopen(path, "r");
    if (!f)
        fail_msg("cannot open %s", path);
    char *line = NULL;
    size_t cap = 0;
    ssize_t len;
    while (fx->n_gold < MAX_GOLD && (len = getline(&line, &cap, f)) > 0) {
        struct jm_val *o = jm_parse(line, (size_t)len);
        assert_non_null(o);
        const struct jm_val *pi = jm_get(o, "prompt_ids"), *gi = jm_get(o, "gen_ids");
        assert_true(pi && gi && pi->n <= 64 && gi->n <= 128);
        struct golden *g = &fx->g[fx->n_gold++];
        g->n_prompt = pi->n;
        g->n_gen = gi->n;
        for (int k = 0; k < pi->n; k++)
            g->prompt[k] = (int32_t)pi->kids[k].num;
        for (int k = 0; k < gi->n; k++)
            g->gen[k] = (int32_t)gi->kids[k].num;
        jm_free(o);
    }
    free(line);
    fclose(f);
}

static void fixture_close(struct fixture *fx)
{
    nf_vocab_free(fx->v);
    nf_model_free(fx->m);
}

/* --- engines: per-row passes equal decode steps ------------------------------------------- */

#define N_ROWS 20

/* Checks an engine: the logits of N_ROWS decode steps after the prompt (plain evals of one
 * token) equal the rows of per-row passes over the same tokens, in two passes split by a
 * rollback (which also drops rows evaluated past it). */
static void check_rows(const struct nf_gen_engine *e, const struct golden *g)
{
    const size_t V = (size_t)e->n_vocab;
    float *want = malloc(sizeof(float) * V * N_ROWS), *got = malloc(sizeof(float) * V * N_ROWS);
    assert_true(want && got);
    e->reset(e->ud);
    assert_int_equal(e->eval(e->ud, g->prompt, g->n_prompt, true), 0);
    for (int t = 0; t < N_ROWS; t++) {
        assert_int_equal(e->eval(e->ud, &g->gen[t], 1, false), 0);
        memcpy(want + (size_t)t * V, e->logits(e->ud), sizeof(float) * V);
    }
    e->reset(e->ud);
    assert_int_equal(e->eval(e->ud, g->prompt, g->n_prompt, true), 0);
    /* 8 rows, of which the last 5 are dropped again and evaluated in the second pass. */
    assert_int_equal(e->eval_rows(e->ud, g->gen, 8, got), 0);
    assert_memory_equal(got, want, sizeof(float) * V * 8);
    assert_memory_equal(e->logits(e->ud), want + 7 * V, sizeof(float) * V);
    assert_int_equal(e->rollback(e->ud, g->n_prompt + 3), 0);
    assert_int_equal(e->n_past(e->ud), g->n_prompt + 3);
    assert_int_equal(e->eval_rows(e->ud, g->gen + 3, N_ROWS - 3, got), 0);
    for (int t = 3; t < N_ROWS; t++)
        if (memcmp(got + (size_t)(t - 3) * V, want + (size_t)t * V, sizeof(float) * V))
            fail_msg("row %d differs from its decode step", t);
    /* Rolling forward is refused. */
    assert_int_equal(e->rollback(e->ud, e->n_past(e->ud) + 1), NF_EUSAGE);
    free(want);
    free(got);
}

static void rows_ram(const char *name, int n_ubatch)
{
    struct fixture fx;
    fixture_open(&fx, name);
    struct nf_ctx *c;
    assert_int_equal(nf_ctx_create_ub(&c, fx.m, 128, 2, n_ubatch), 0);
    struct nf_gen_engine e;
    nf_gen_engine_ctx(&e, c);
    check_rows(&e, &fx.g[1]);
    nf_ctx_free(c);
    fixture_close(&fx);
}

static void test_rows_ram(void **state)
{
    (void)state;
    rows_ram("stories260K", NF_MAX_BATCH);
    rows_ram("stories260K", 4); /* passes cut into chunks of 4 */
    rows_ram("zoo-Q4_K_M", NF_MAX_BATCH);
    rows_ram("zoo-F16", NF_MAX_BATCH); /* F16: tinyBLAS in prompt batches, not in decode */
    rows_ram("moe-Q4_K_M", NF_MAX_BATCH);
}

static void rows_stream(const char *nft, const char *name, float sparsity)
{
    char err[512];
    struct fixture fx;
    fixture_open(&fx, name);
    struct nf_nft *f;
    if (nf_nft_open(&f, nft, false, err, sizeof(err)) < 0)
        fail_msg("%s", err);
    struct nf_tile_src src;
    assert_int_equal(nf_tile_src_file_open(&src, f, 64u << 20), 0);
    struct nf_stream_opts o = {.n_ctx = 128, .n_threads = 2, .sparsity = sparsity};
    struct nf_stream *s;
    if (nf_stream_create(&s, f, &src, &o, err, sizeof(err)) < 0)
        fail_msg("%s", err);
    struct nf_gen_engine e;
    nf_gen_engine_stream(&e, s);
    check_rows(&e, &fx.g[2]);
    nf_stream_free(s);
    nf_tile_src_file_close(&src);
    nf_nft_close(f);
    fixture_close(&fx);
}

/* Converts models/NAME.gguf into tmpdir/NAME.nft with small tiles (several per matrix). */
static void convert(const char *name, char *out, size_t len)
{
    char in[512], err[512];
    snprintf(in, sizeof(in), MODELS "%s.gguf", name);
    snprintf(out, len, "%s/%s.nft", tmpdir, name);
    if (access(out, R_OK) == 0) /* converted by an earlier test */
        return;
    struct nf_nft_convert_opts o = {.tile_size = 16384};
    if (nf_nft_convert(in, out, &o, err, sizeof(err)) < 0)
        fail_msg("convert %s: %s", name, err);
}

static void test_rows_stream(void **state)
{
    (void)state;
    char nft[600];
    if (access(STORIES_NFT, R_OK) == 0) {
        rows_stream(STORIES_NFT, "stories260K", 0.0f);
        rows_stream(STORIES_NFT, "stories260K", 0.5f); /* sparse: each token's groups alone */
    }
    convert("zoo-Q4_K_M", nft, sizeof(nft));
    rows_stream(nft, "zoo-Q4_K_M", 0.0f);
    convert("moe-Q4_K_M", nft, sizeof(nft));
    rows_stream(nft, "moe-Q4_K_M", 0.0f);
}

/* --- the driver ---------------------------------------------------------------------------- */

/* A test draft source: the reference continuation ref shifted by delta (0: always right, else
 * always wrong), from the position the sequence has reached. */
struct ref_draft {
    const int32_t *ref;
    int n_ref, n_prompt, delta, n_vocab;
    int calls;
};

static int ref_draft(void *ud, const int32_t *ids, int n, int32_t *out, int max)
{
    struct ref_draft *r = ud;
    (void)ids;
    r->calls++;
    int nd = 0;
    for (int i = n - r->n_prompt; i < r->n_ref && nd < max; i++)
        out[nd++] = (r->ref[i] + r->delta) % r->n_vocab;
    return nd;
}

struct run_out {
    int32_t ids[512];
    int n_gen, n_drafted, n_accepted, n_verify;
    enum nf_gen_stop stop;
    int n_past;
};

static void run(const struct nf_gen_engine *e, const struct nf_vocab *v, const int32_t *prompt,
                int n_prompt, const struct nf_gen_params *p, struct run_out *o)
{
    char err[256];
    struct nf_gen_seq q;
    if (nf_gen_seq_init(&q, e, v, prompt, n_prompt, p, err, sizeof(err)))
        fail_msg("%s", err);
    assert_int_equal(nf_gen_seq_run(&q), 0);
    assert_true(q.n_gen <= 512);
    memcpy(o->ids, q.ids + n_prompt, sizeof(int32_t) * (size_t)q.n_gen);
    o->n_gen = q.n_gen;
    o->n_drafted = q.n_drafted;
    o->n_accepted = q.n_accepted;
    o->n_verify = q.n_verify;
    o->stop = q.stop;
    o->n_past = e->n_past(e->ud);
    nf_gen_seq_free(&q);
}

static struct nf_gen_params params(int max_tokens, float temp, uint64_t seed)
{
    struct nf_gen_params p = {.max_tokens = max_tokens};
    nf_sampler_params_default(&p.sp);
    p.sp.temp = temp;
    p.sp.seed = seed;
    return p;
}

/* Plain and speculative runs of the same request give the same tokens, stop and n_past. */
static void same_run(const struct run_out *a, const struct run_out *b)
{
    assert_int_equal(a->n_gen, b->n_gen);
    assert_memory_equal(a->ids, b->ids, sizeof(int32_t) * (size_t)a->n_gen);
    assert_int_equal(a->stop, b->stop);
    assert_int_equal(a->n_past, b->n_past);
}

/* A RAM engine over the named model (a context of n_ctx, n_threads threads) with prompt lookup
 * (n-grams of 1 to 3) as its draft source. */
struct ram_lookup {
    struct fixture fx;
    struct nf_ctx *c;
    struct nf_gen_engine e;
    struct nf_gen_lookup l;
    struct nf_gen_draft d;
};

static void ram_lookup_open(struct ram_lookup *r, const char *name, int n_ctx, int n_threads)
{
    fixture_open(&r->fx, name);
    assert_int_equal(nf_ctx_create(&r->c, r->fx.m, n_ctx, n_threads), 0);
    nf_gen_engine_ctx(&r->e, r->c);
    r->l = (struct nf_gen_lookup){.ngram_min = 1, .ngram_max = 3};
    nf_gen_draft_lookup(&r->d, &r->l);
}

static void ram_lookup_close(struct ram_lookup *r)
{
    nf_ctx_free(r->c);
    fixture_close(&r->fx);
}

/* Greedy with prompt lookup equals the goldens (and plain decoding) on every golden prompt. */
static void lookup_goldens(const char *name, int n_ctx)
{
    struct ram_lookup r;
    ram_lookup_open(&r, name, n_ctx, 2);
    int drafted = 0, accepted = 0;
    for (int i = 0; i < r.fx.n_gold; i++) {
        const struct golden *g = &r.fx.g[i];
        struct nf_gen_params p = params(g->n_gen, 0.0f, 0);
        struct run_out plain, spec;
        run(&r.e, r.fx.v, g->prompt, g->n_prompt, &p, &plain);
        p.draft = &r.d;
        run(&r.e, r.fx.v, g->prompt, g->n_prompt, &p, &spec);
        assert_int_equal(spec.n_gen, g->n_gen);
        assert_memory_equal(spec.ids, g->gen, sizeof(int32_t) * (size_t)g->n_gen);
        same_run(&plain, &spec);
        drafted += spec.n_drafted;
        accepted += spec.n_accepted;
    }
    print_message("%s: lookup drafted %d, accepted %d\n", name, drafted, accepted);
    assert_true(drafted > 0);
    ram_lookup_close(&r);
}

static void test_lookup_goldens(void **state)
{
    (void)state;
    lookup_goldens("stories260K", 256);
    lookup_goldens("zoo-Q4_K_M", 256); /* its 4th prompt ends in eog */
}

/* Always-right and always-wrong drafts on zoo-Q4_K_M, on both engines: into eog, the length
 * and the context limit. */
static void ref_drafts(const struct nf_gen_engine *e, const struct fixture *fx)
{
    const struct golden *g = &fx->g[3]; /* ends with eog after 14 tokens */
    assert_true(nf_vocab_is_eog(fx->v, g->gen[g->n_gen - 1]));
    struct ref_draft rd = {
        .ref = g->gen, .n_ref = g->n_gen, .n_prompt = g->n_prompt, .n_vocab = e->n_vocab};
    struct nf_gen_draft d = {.draft = ref_draft, .ud = &rd};
    struct run_out plain, spec;
    for (int delta = 0; delta <= 1; delta++) {
        rd.delta = delta;
        struct nf_gen_params p = params(40, 0.0f, 0);
        run(e, fx->v, g->prompt, g->n_prompt, &p, &plain);
        assert_int_equal(plain.stop, NF_GEN_STOP_EOG);
        p.draft = &d;
        p.spec_max = 4 + 3 * delta;
        run(e, fx->v, g->prompt, g->n_prompt, &p, &spec);
        same_run(&plain, &spec);
        assert_true(spec.n_drafted > 0);
        /* Right: all accepted, eog inside an accepted run; wrong: none. */
        assert_int_equal(spec.n_accepted, delta ? 0 : spec.n_drafted);
        print_message("delta %d: drafted %d accepted %d verify %d gen %d\n", delta, spec.n_drafted,
                      spec.n_accepted, spec.n_verify, spec.n_gen);
        if (!delta)
            assert_true(spec.n_verify < spec.n_gen / 2);
        /* The length limit inside a run. */
        p = params(9, 0.0f, 0);
        run(e, fx->v, g->prompt, g->n_prompt, &p, &plain);
        p.draft = &d;
        run(e, fx->v, g->prompt, g->n_prompt, &p, &spec);
        same_run(&plain, &spec);
        assert_int_equal(spec.stop, NF_GEN_STOP_LENGTH);
    }
}

static void test_ref_drafts(void **state)
{
    (void)state;
    struct fixture fx;
    fixture_open(&fx, "zoo-Q4_K_M");
    struct nf_ctx *c;
    assert_int_equal(nf_ctx_create(&c, fx.m, 128, 2), 0);
    struct nf_gen_engine e;
    nf_gen_engine_ctx(&e, c);
    ref_drafts(&e, &fx);
    nf_ctx_free(c);

    char nft[600], err[512];
    convert("zoo-Q4_K_M", nft, sizeof(nft));
    struct nf_nft *f;
    if (nf_nft_open(&f, nft, false, err, sizeof(err)) < 0)
        fail_msg("%s", err);
    struct nf_tile_src src;
    assert_int_equal(nf_tile_src_file_open(&src, f, 64u << 20), 0);
    struct nf_stream_opts o = {.n_ctx = 128, .n_threads = 2};
    struct nf_stream *s;
    if (nf_stream_create(&s, f, &src, &o, err, sizeof(err)) < 0)
        fail_msg("%s", err);
    nf_gen_engine_stream(&e, s);
    ref_drafts(&e, &fx);
    nf_stream_free(s);
    nf_tile_src_file_close(&src);
    nf_nft_close(f);
    fixture_close(&fx);
}

/* The context limit inside accepted runs: stories260K's golden continuation as always-right
 * drafts in a context only a little longer than the prompt, for every spare room 1..12. */
static void test_ctx_limit(void **state)
{
    (void)state;
    struct fixture fx;
    fixture_open(&fx, "stories260K");
    const struct golden *g = &fx.g[1];
    struct ref_draft rd = {
        .ref = g->gen, .n_ref = g->n_gen, .n_prompt = g->n_prompt, .n_vocab = fx.m->hp.n_vocab};
    struct nf_gen_draft d = {.draft = ref_draft, .ud = &rd};
    struct nf_gen_lookup l = {.ngram_min = 1, .ngram_max = 3};
    struct nf_gen_draft dl;
    nf_gen_draft_lookup(&dl, &l);
    for (int room = 1; room <= 12; room++) {
        struct nf_ctx *c;
        assert_int_equal(nf_ctx_create(&c, fx.m, g->n_prompt + room, 2), 0);
        struct nf_gen_engine e;
        nf_gen_engine_ctx(&e, c);
        struct nf_gen_params p = params(100, 0.0f, 0);
        struct run_out plain, spec;
        run(&e, fx.v, g->prompt, g->n_prompt, &p, &plain);
        assert_int_equal(plain.stop, NF_GEN_STOP_CTX);
        assert_int_equal(plain.n_gen, room + 1);
        p.draft = &d;
        run(&e, fx.v, g->prompt, g->n_prompt, &p, &spec);
        same_run(&plain, &spec);
        assert_int_equal(spec.n_accepted, spec.n_drafted);
        p.draft = &dl;
        run(&e, fx.v, g->prompt, g->n_prompt, &p, &spec);
        same_run(&plain, &spec);
        nf_ctx_free(c);
    }
    fixture_close(&fx);
}

/* Sampling: with the same seed the speculative run gives plain sampling's tokens; over
 * different seeds the second and third tokens' distributions match plain sampling's (a
 * two-sample chi-square with a fixed, generous bound; the seeds are fixed, so it cannot
 * flake). The drafts are the greedy continuation: likely enough to be accepted often, wrong
 * often enough to exercise the rejections. */
#define N_SEEDS 150
#define N_TOK   3

static void test_sampled(void **state)
{
    (void)state;
    struct fixture fx;
    fixture_open(&fx, "stories260K");
    const struct golden *g = &fx.g[0];
    const int V = fx.m->hp.n_vocab;
    struct nf_ctx *c;
    assert_int_equal(nf_ctx_create(&c, fx.m, 128, 2), 0);
    struct nf_gen_engine e;
    nf_gen_engine_ctx(&e, c);
    struct ref_draft rd = {.ref = g->gen, .n_ref = g->n_gen, .n_prompt = g->n_prompt, .n_vocab = V};
    struct nf_gen_draft d = {.draft = ref_draft, .ud = &rd};
    int *hist = calloc((size_t)2 * (N_TOK - 1) * (size_t)V, sizeof(int));
    assert_non_null(hist);
    int drafted = 0, accepted = 0;
    for (int s = 0; s < 2 * N_SEEDS; s++) {
        struct nf_gen_params p = params(N_TOK + 5, 1.5f, 1000 + (uint64_t)s);
        p.sp.top_p = 1.0f;
        p.sp.min_p = 0.0f;
        struct run_out plain, spec;
        if (s < 12) { /* same seed: the same tokens */
            run(&e, fx.v, g->prompt, g->n_prompt, &p, &plain);
            p.draft = &d;
            run(&e, fx.v, g->prompt, g->n_prompt, &p, &spec);
            same_run(&plain, &spec);
            drafted += spec.n_drafted;
            accepted += spec.n_accepted;
            p.draft = NULL;
        }
        /* Seeds 0..N_SEEDS-1 plain, the next N_SEEDS speculative. */
        const int side = s >= N_SEEDS;
        if (side)
            p.draft = &d;
        run(&e, fx.v, g->prompt, g->n_prompt, &p, &spec);
        assert_int_equal(spec.n_gen, N_TOK + 5);
        for (int t = 1; t < N_TOK; t++)
            hist[((size_t)side * (N_TOK - 1) + (size_t)(t - 1)) * V + spec.ids[t]]++;
    }
    print_message("sampled, same seeds: drafted %d, accepted %d\n", drafted, accepted);
    assert_true(accepted > 0 && accepted < drafted);
    for (int t = 1; t < N_TOK; t++) {
        const int *a = hist + (size_t)(t - 1) * V, *b = hist + (size_t)(N_TOK - 1 + t - 1) * V;
        /* Bins with fewer than 10 draws in both samples are pooled into one. */
        double chi = 0.0;
        int df = -1, pa = 0, pb = 0;
        for (int i = 0; i <= V; i++) {
            int x = i < V ? a[i] : pa, y = i < V ? b[i] : pb;
            if (i < V && x + y < 10) {
                pa += x;
                pb += y;
                continue;
            }
            if (x + y == 0)
                continue;
            chi += (double)(x - y) * (x - y) / (x + y); /* equal sample sizes */
            df++;
        }
        print_message("token %d: chi-square %.1f with %d degrees of freedom\n", t, chi, df);
        assert_true(df >= 1);
        assert_true(chi < df + 6.0 * sqrt(2.0 * df) + 10.0);
    }
    free(hist);
    nf_ctx_free(c);
    fixture_close(&fx);
}

/* A draft model: greedy with it equals the goldens for a draft that always agrees (the model
 * itself), one that often does (zoo-Q8_0 for zoo-Q4_K_M) and one that never does
 * (stories260K for the random zoo-Q4_K_M: all its drafts rejected), eog prompt included; a
 * draft model with another vocabulary is refused. */
static void draft_goldens(const char *name, const char *draft_name, int n_gold, bool all_right)
{
    char path[512], err[512];
    struct fixture fx;
    fixture_open(&fx, name);
    snprintf(path, sizeof(path), MODELS "%s.gguf", draft_name);
    struct nf_model *dm;
    struct nf_vocab *dv;
    if (nf_model_load(&dm, path, err, sizeof(err)) ||
        nf_vocab_load(&dv, dm->gguf, err, sizeof(err)))
        fail_msg("%s", err);
    assert_int_equal(nf_gen_vocab_check(fx.v, dv, err, sizeof(err)), 0);
    struct nf_ctx *c, *dc;
    assert_int_equal(nf_ctx_create(&c, fx.m, 256, 2), 0);
    assert_int_equal(nf_ctx_create(&dc, dm, 256, 2), 0);
    struct nf_gen_engine e;
    nf_gen_engine_ctx(&e, c);
    struct nf_gen_draft d;
    struct nf_gen_draft_model dmod;
    assert_int_equal(nf_gen_draft_model_init(&d, &dmod, dc, dv), 0);
    int drafted = 0, accepted = 0;
    for (int i = 0; i < n_gold; i++) {
        const struct golden *g = &fx.g[i];
        struct nf_gen_params p = params(g->n_gen, 0.0f, 0);
        p.draft = &d;
        struct run_out spec;
        run(&e, fx.v, g->prompt, g->n_prompt, &p, &spec);
        assert_int_equal(spec.n_gen, g->n_gen);
        assert_memory_equal(spec.ids, g->gen, sizeof(int32_t) * (size_t)g->n_gen);
        drafted += spec.n_drafted;
        accepted += spec.n_accepted;
    }
    print_message("%s drafted by %s: %d drafted, %d accepted\n", name, draft_name, drafted,
                  accepted);
    assert_true(drafted > 0);
    if (all_right)
        assert_int_equal(accepted, drafted);
    nf_gen_draft_model_free(&dmod);
    nf_ctx_free(dc);
    nf_ctx_free(c);
    nf_vocab_free(dv);
    nf_model_free(dm);
    fixture_close(&fx);
}

static void test_draft_model(void **state)
{
    (void)state;
    draft_goldens("stories260K", "stories260K", 3, true);
    draft_goldens("zoo-Q4_K_M", "zoo-Q8_0", 8, false);
    draft_goldens("zoo-Q4_K_M", "stories260K", 4, false); /* the 4th ends in eog */
    /* Another vocabulary is refused, naming the difference. */
    char err[512];
    struct nf_gguf *g;
    struct nf_vocab *v, *v2;
    struct nf_model *m;
    if (access(MODELS "llama-2-tiny-random.gguf", R_OK) != 0)
        return;
    assert_int_equal(nf_model_load(&m, MODELS "stories260K.gguf", err, sizeof(err)), 0);
    assert_int_equal(nf_vocab_load(&v, m->gguf, err, sizeof(err)), 0);
    assert_int_equal(nf_gguf_open(&g, MODELS "llama-2-tiny-random.gguf", err, sizeof(err)), 0);
    assert_int_equal(nf_vocab_load(&v2, g, err, sizeof(err)), 0);
    assert_int_equal(nf_gen_vocab_check(v, v2, err, sizeof(err)), NF_EUSAGE);
    assert_non_null(strstr(err, "same vocabulary"));
    nf_vocab_free(v2);
    nf_gguf_close(g);
    nf_vocab_free(v);
    nf_model_free(m);
}

/* Bad parameters are refused with a message. */
static void test_refusals(void **state)
{
    (void)state;
    struct ram_lookup r;
    ram_lookup_open(&r, "stories260K", 64, 1);
    struct nf_gen_params p = params(4, 0.0f, 0);
    p.draft = &r.d;
    p.spec_max = NF_GEN_SPEC_MAX + 1;
    struct nf_gen_seq q;
    char err[256];
    assert_int_equal(nf_gen_seq_init(&q, &r.e, r.fx.v, r.fx.g[0].prompt, r.fx.g[0].n_prompt, &p,
                                     err, sizeof(err)),
                     NF_EUSAGE);
    assert_non_null(strstr(err, "spec_max"));
    nf_gen_seq_free(&q);
    p.spec_max = 0;
    r.e.eval_rows = NULL;
    assert_int_equal(nf_gen_seq_init(&q, &r.e, r.fx.v, r.fx.g[0].prompt, r.fx.g[0].n_prompt, &p,
                                     err, sizeof(err)),
                     NF_EUSAGE);
    assert_non_null(strstr(err, "speculative"));
    nf_gen_seq_free(&q);
    ram_lookup_close(&r);
}

/* The sampler's penalties see the tokens of the positions before each sample, so a
 * speculative step keeps plain decoding's tokens with them too: greedy with a negative
 * frequency penalty (text that falls into a loop, the drafts hit) and with a repeat and a
 * presence penalty (the text leaves its loops, the drafts miss), plain against lookup, on the
 * RAM engine over stories260K's golden prompts. */
static void test_penalties(void **state)
{
    (void)state;
    struct ram_lookup r;
    ram_lookup_open(&r, "stories260K", 256, 2);
    static const float freq[] = {-1.0f, 0.0f, 0.5f}, pres[] = {0.0f, 0.7f, -0.3f},
                       rep[] = {1.0f, 1.3f, 1.1f};
    for (int k = 0; k < 3; k++) {
        int drafted = 0, accepted = 0, differ = 0;
        for (int i = 0; i < r.fx.n_gold; i++) {
            const struct golden *g = &r.fx.g[i];
            struct nf_gen_params p = params(120, 0.0f, 0);
            p.sp.frequency_penalty = freq[k];
            p.sp.presence_penalty = pres[k];
            p.sp.repeat_penalty = rep[k];
            struct run_out plain, spec;
            run(&r.e, r.fx.v, g->prompt, g->n_prompt, &p, &plain);
            p.draft = &r.d;
            run(&r.e, r.fx.v, g->prompt, g->n_prompt, &p, &spec);
            same_run(&plain, &spec);
            drafted += spec.n_drafted;
            accepted += spec.n_accepted;
            /* The penalties are in force: the text is not the goldens' plain greedy text. */
            const int n = plain.n_gen < g->n_gen ? plain.n_gen : g->n_gen;
            differ += memcmp(plain.ids, g->gen, sizeof(int32_t) * (size_t)n) != 0;
        }
        print_message("penalties freq %.1f pres %.1f rep %.1f: drafted %d, accepted %d\n",
                      (double)freq[k], (double)pres[k], (double)rep[k], drafted, accepted);
        assert_true(differ > 0);
        assert_true(drafted > 0 && accepted > 0);
        if (k == 0) /* the loop a negative frequency penalty makes is drafted right mostly */
            assert_true(accepted * 2 > drafted);
    }
    ram_lookup_close(&r);
}

/* The lookup source itself: the longest n-gram first, the latest match, bounded by max. */
static void test_lookup_source(void **state)
{
    (void)state;
    struct nf_gen_lookup l = {.ngram_min = 1, .ngram_max = 3};
    struct nf_gen_draft d;
    nf_gen_draft_lookup(&d, &l);
    int32_t out[16];
    const int32_t a[] = {5, 6, 7, 8, 9, 1, 6, 7, 2, 5, 6, 7};
    /* 3-gram 5 6 7 occurs at 0: 8 9 1 6 ... */
    assert_int_equal(d.draft(d.ud, a, 12, out, 4), 4);
    assert_int_equal(out[0], 8);
    assert_int_equal(out[3], 6);
    const int32_t b[] = {5, 6, 7, 8, 1, 6, 7, 2, 3, 7};
    /* no 3-gram or 2-gram (6 7 / x 7 at the end is "3 7"); 1-gram 7: latest at 6 -> 2 3 7,
     * then the overlapping copy goes on with the period 2 3 7: 2 3 7 2 3 */
    assert_int_equal(d.draft(d.ud, b, 10, out, 8), 8);
    const int32_t b_draft[] = {2, 3, 7, 2, 3, 7, 2, 3};
    assert_memory_equal(out, b_draft, sizeof(b_draft));
    /* A run of one token: the latest match is one back, the draft is the token max times. */
    const int32_t r[] = {4, 9, 9, 9};
    assert_int_equal(d.draft(d.ud, r, 4, out, 5), 5);
    for (int i = 0; i < 5; i++)
        assert_int_equal(out[i], 9);
    const int32_t c[] = {1, 2, 3, 4};
    assert_int_equal(d.draft(d.ud, c, 4, out, 8), 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_lookup_source), cmocka_unit_test(test_rows_ram),
        cmocka_unit_test(test_rows_stream),   cmocka_unit_test(test_lookup_goldens),
        cmocka_unit_test(test_ref_drafts),    cmocka_unit_test(test_ctx_limit),
        cmocka_unit_test(test_sampled),       cmocka_unit_test(test_refusals),
        cmocka_unit_test(test_draft_model),   cmocka_unit_test(test_penalties),
    };
    return cmocka_run_group_tests(tests, setup_dir, teardown_dir);
}
