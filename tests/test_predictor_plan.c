/* test_predictor_plan.c - the predictor's planning module: step use order and forecasts. */
#include <errno.h>
#include <math.h>
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

/* The module lives with the daemon (daemons/predictor/); it needs only nfcommon, so the test
 * compiles it in directly. */
#include "../daemons/predictor/plan.c"

#define STORIES NF_SHARED_DIR "/models/stories260K.gguf"
#define MOE     NF_SHARED_DIR "/models/moe-Q8_0.gguf"

static char tmpdir[256];
static char dense_path[512], moe_path[512];

static int setup_files(void **state)
{
    snprintf(tmpdir, sizeof(tmpdir), "/tmp/test_predictor_plan-XXXXXX");
    if (!mkdtemp(tmpdir))
        return -1;
    char err[512];
    snprintf(dense_path, sizeof(dense_path), "%s/stories.nft", tmpdir);
    snprintf(moe_path, sizeof(moe_path), "%s/moe.nft", tmpdir);
    /* Small tiles, so that attention and FFN matrices span several tiles. */
    struct nf_nft_convert_opts o = {.tile_size = 8192};
    if (nf_nft_convert(STORIES, dense_path, &o, err, sizeof(err))) {
        fprintf(stderr, "convert: %s\n", err);
        return -1;
    }
    o.tile_size = 65536;
    if (nf_nft_convert(MOE, moe_path, &o, err, sizeof(err))) {
        fprintf(stderr, "convert: %s\n", err);
        return -1;
    }
    return 0;
}

static int teardown_files(void **state)
{
    unlink(dense_path);
    unlink(moe_path);
    rmdir(tmpdir);
    return 0;
}

static struct nf_nft *open_nft(const char *path)
{
    struct nf_nft *f;
    char err[512];
    if (nf_nft_open(&f, path, false, err, sizeof(err)))
        fail_msg("%s", err);
    return f;
}

static void init_plan(struct nf_plan *p, const struct nf_nft *f)
{
    char err[512];
    if (nf_plan_init(p, f, err, sizeof(err)))
        fail_msg("%s", err);
}

/* Checks that list (n ids) is a valid use order: no id twice, layered tiles in (layer, kind,
 * index) order, layer-less tiles only before the first and after the last layer. */
static void check_order(const struct nf_nft *f, const uint32_t *list, int n)
{
    uint8_t *seen = calloc(f->n_tiles, 1);
    assert_non_null(seen);
    uint64_t prev_key = 0;
    bool in_layers = false, after_layers = false;
    for (int i = 0; i < n; i++) {
        assert_true(list[i] < f->n_tiles);
        assert_int_equal(seen[list[i]], 0);
        seen[list[i]] = 1;
        const struct nf_nft_tile *t = &f->tiles[list[i]];
        if (t->layer == NF_NFT_NO_LAYER) {
            if (in_layers)
                after_layers = true;
            continue;
        }
        assert_false(after_layers);
        in_layers = true;
        uint64_t key = ((uint64_t)t->layer << 48) | ((uint64_t)t->kind << 32) | t->index;
        assert_true(key > prev_key);
        prev_key = key;
    }
    free(seen);
}

/* Exact mode on a dense model: every tile a token step needs, each once, in layer order. */
static void test_dense_step(void **state)
{
    struct nf_nft *f = open_nft(dense_path);
    struct nf_plan p;
    init_plan(&p, f);
    assert_false(p.moe);
    uint32_t *list = malloc(sizeof(uint32_t) * p.max_step);
    uint32_t token = 300;
    int n = nf_plan_step(&p, token, NULL, list, p.max_step);
    assert_true(n > 0);
    check_order(f, list, n);
    /* The token's embedding tile comes first. */
    assert_int_equal(list[0], nf_nft_tile_id(f, nf_nft_embd_row(f, token, NULL)));
    /* The set is every tile but the predictors and the other tokens' embedding rows (every
     * EMBD tile when the output is tied to the embedding). */
    int expect = 0;
    for (uint64_t id = 0; id < f->n_tiles; id++) {
        uint16_t k = f->tiles[id].kind;
        bool need = k != NF_TILE_PRED_LOWRANK && k != NF_TILE_PRED_ROUTER;
        if (k == NF_TILE_EMBD && !f->hdr.tied_output)
            need = &f->tiles[id] == nf_nft_embd_row(f, token, NULL);
        expect += need;
        bool found = false;
        for (int i = 0; i < n; i++)
            found |= list[i] == id;
        assert_int_equal(found, need);
    }
    assert_int_equal(n, expect);
    /* Several tiles per matrix (so order within a layer is really tested). */
    assert_true(nf_nft_count(f, 0, NF_TILE_FFN) > 1);
    assert_true(nf_nft_count(f, NF_NFT_NO_LAYER, NF_TILE_EMBD) > 1);
    /* Too small a buffer is refused. */
    assert_int_equal(nf_plan_step(&p, token, NULL, list, (size_t)n - 1), -ENOBUFS);
    /* A selection keeps only the tiles holding selected groups. */
    uint64_t sel[8] = {0};
    nf_sel_set(sel, 0);
    nf_sel_set(sel, p.layers[1].n_units - 1);
    int nl = nf_plan_layer(&p, 1, sel, list, p.max_step);
    assert_int_equal(nl, (int)p.layers[1].n_fixed + 2);
    assert_int_equal(list[nl - 2], p.layers[1].unit_tile[0]);
    assert_int_equal(list[nl - 1], p.layers[1].unit_tile[p.layers[1].n_units - 1]);
    free(list);
    nf_plan_free(&p);
    nf_nft_close(f);
}

/* nf_plan_layer_dropped: the FFN tiles the old plan held and the new one does not, each once,
 * in use order; none for an unchanged plan or a new plan of every unit. */
static void test_dense_dropped(void **state)
{
    (void)state;
    struct nf_nft *f = open_nft(dense_path);
    struct nf_plan p;
    init_plan(&p, f);
    const struct nf_plan_layer *pl = &p.layers[1];
    uint32_t n = pl->n_units, first = pl->unit_tile[0], last = pl->unit_tile[n - 1];
    assert_true(first != last);
    uint32_t *out = malloc(sizeof(uint32_t) * p.max_units);
    assert_non_null(out);
    uint64_t old[8] = {0}, sel[8] = {0}, none[8] = {0};
    assert_true(p.words <= 8);
    /* Old: the first group and every group of the last tile. */
    nf_sel_set(old, 0);
    for (uint32_t g = 0; g < n; g++)
        if (pl->unit_tile[g] == last)
            nf_sel_set(old, g);
    /* New: a group of the first tile only (the last of that tile, so the tile is kept through
     * another group than old's): the last tile is dropped, once. */
    uint32_t g1 = 0;
    while (g1 + 1 < n && pl->unit_tile[g1 + 1] == first)
        g1++;
    nf_sel_set(sel, g1);
    assert_int_equal(nf_plan_layer_dropped(&p, 1, old, sel, out, p.max_units), 1);
    assert_int_equal(out[0], last);
    /* Unchanged, or every unit: nothing dropped. */
    assert_int_equal(nf_plan_layer_dropped(&p, 1, old, old, out, p.max_units), 0);
    assert_int_equal(nf_plan_layer_dropped(&p, 1, old, NULL, out, p.max_units), 0);
    /* Nothing planned before: nothing to drop. */
    assert_int_equal(nf_plan_layer_dropped(&p, 1, none, sel, out, p.max_units), 0);
    /* An empty new plan drops both tiles, in use order; too small a buffer is refused. */
    assert_int_equal(nf_plan_layer_dropped(&p, 1, old, none, out, p.max_units), 2);
    assert_int_equal(out[0], first);
    assert_int_equal(out[1], last);
    assert_int_equal(nf_plan_layer_dropped(&p, 1, old, none, out, 1), -ENOBUFS);
    assert_int_equal(nf_plan_layer_dropped(&p, p.n_layer, old, none, out, p.max_units), NF_EUSAGE);
    free(out);
    nf_plan_free(&p);
    nf_nft_close(f);
}

/* MoE: router then the selected experts' tiles; with every expert, every tile once. */
static void test_moe_step(void **state)
{
    struct nf_nft *f = open_nft(moe_path);
    struct nf_plan p;
    init_plan(&p, f);
    assert_true(p.moe);
    assert_int_equal(p.max_units, f->hdr.n_expert);
    uint32_t *list = malloc(sizeof(uint32_t) * p.max_step);
    int n = nf_plan_step(&p, 7, NULL, list, p.max_step);
    assert_true(n > 0);
    check_order(f, list, n);
    for (uint64_t id = 0; id < f->n_tiles; id++) {
        uint16_t k = f->tiles[id].kind;
        bool need = k != NF_TILE_PRED_ROUTER && k != NF_TILE_PRED_LOWRANK;
        if (k == NF_TILE_EMBD && !f->hdr.tied_output)
            need = &f->tiles[id] == nf_nft_embd_row(f, 7, NULL);
        bool found = false;
        for (int i = 0; i < n; i++)
            found |= list[i] == id;
        assert_int_equal(found, need);
    }
    /* Experts 1 and 5 of layer 2: the router, then exactly their tiles. */
    uint64_t sel[1] = {0};
    nf_sel_set(sel, 1);
    nf_sel_set(sel, 5);
    int nl = nf_plan_layer(&p, 2, sel, list, p.max_step);
    assert_true(nl > 0);
    int experts = 0;
    for (int i = 0; i < nl; i++) {
        const struct nf_nft_tile *t = &f->tiles[list[i]];
        assert_int_equal(t->layer, 2);
        if (t->kind == NF_TILE_EXPERT) {
            assert_true(t->expert == 1 || t->expert == 5);
            experts++;
        } else {
            assert_int_equal(experts, 0); /* fixed tiles first */
        }
    }
    assert_int_equal(experts, (int)(2 * nf_nft_count(f, 2, NF_TILE_EXPERT) / f->hdr.n_expert));
    assert_int_equal(nf_plan_layer(&p, 3, NULL, list, p.max_step), NF_EUSAGE);
    free(list);
    nf_plan_free(&p);
    nf_nft_close(f);
}

static void fill_x(float *x, int n, uint64_t seed);

/* nf_plan_layer_experts: the layer's fixed tiles and router, then the listed experts' tiles in
 * the listed order; bad experts, dense layers and short buffers are refused. */
static void test_moe_layer_experts(void **state)
{
    struct nf_nft *f = open_nft(moe_path);
    struct nf_plan p;
    init_plan(&p, f);
    uint32_t *list = malloc(sizeof(uint32_t) * p.max_step);
    const uint32_t per = nf_nft_count(f, 2, NF_TILE_EXPERT) / f->hdr.n_expert;
    const uint32_t units[2] = {5, 1};
    int nl = nf_plan_layer_experts(&p, 2, units, 2, list, p.max_step);
    assert_int_equal(nl, (int)(p.layers[2].n_fixed + 2 * per));
    for (int i = 0; i < nl; i++) {
        const struct nf_nft_tile *t = &f->tiles[list[i]];
        assert_int_equal(t->layer, 2);
        if (i < (int)p.layers[2].n_fixed) {
            assert_true(t->kind != NF_TILE_EXPERT);
        } else {
            assert_int_equal(t->kind, NF_TILE_EXPERT);
            /* Expert 5's tiles first, in tile order, then expert 1's. */
            uint32_t j = (uint32_t)i - p.layers[2].n_fixed;
            assert_int_equal(t->expert, j < per ? 5 : 1);
            if (j % per)
                assert_int_equal(list[i], list[i - 1] + 1);
        }
    }
    /* The same fixed tiles nf_plan_layer lists with no expert selected. */
    uint64_t none[1] = {0};
    uint32_t *fixed = malloc(sizeof(uint32_t) * p.max_step);
    assert_int_equal(nf_plan_layer(&p, 2, none, fixed, p.max_step), (int)p.layers[2].n_fixed);
    assert_memory_equal(fixed, list, sizeof(uint32_t) * p.layers[2].n_fixed);
    assert_int_equal(nf_plan_layer_experts(&p, 2, NULL, 0, list, p.max_step),
                     (int)p.layers[2].n_fixed);
    const uint32_t bad[1] = {f->hdr.n_expert};
    assert_int_equal(nf_plan_layer_experts(&p, 2, bad, 1, list, p.max_step), NF_EUSAGE);
    assert_int_equal(nf_plan_layer_experts(&p, p.n_layer, units, 2, list, p.max_step), NF_EUSAGE);
    assert_int_equal(nf_plan_layer_experts(&p, 2, units, 2, list, p.layers[2].n_fixed + per),
                     -ENOBUFS);
    free(fixed);
    free(list);
    nf_plan_free(&p);
    nf_nft_close(f);
    struct nf_nft *d = open_nft(dense_path);
    struct nf_plan pd;
    init_plan(&pd, d);
    uint32_t out[4];
    assert_int_equal(nf_plan_layer_experts(&pd, 0, NULL, 0, out, 4), NF_EUSAGE);
    nf_plan_free(&pd);
    nf_nft_close(d);
}

/* The experts a MoE forecast keeps for given router logits: the top k, plus the next ones only
 * while they are within the gap of the k-th, at most `extra` of them. */
static void test_moe_pick(void **state)
{
    const float lg[8] = {0.1f, 2.0f, 1.0f, 0.9f, -1.0f, 1.95f, 1.8f, 0.9f};
    uint32_t idx[8];
    /* Gap 0: exactly the top 2, best first. */
    assert_int_equal(nf_forecast_moe_pick(lg, 8, 2, 0, 2, idx), 2);
    assert_int_equal(idx[0], 1);
    assert_int_equal(idx[1], 5);
    /* 1.8 is within 0.25 of 1.95; 1.0 is not. */
    assert_int_equal(nf_forecast_moe_pick(lg, 8, 2, 0.25f, 2, idx), 3);
    assert_int_equal(idx[2], 6);
    /* A wide gap keeps at most k + extra, the ties to the lower index. */
    assert_int_equal(nf_forecast_moe_pick(lg, 8, 2, 1.1f, 2, idx), 4);
    assert_int_equal(idx[2], 6);
    assert_int_equal(idx[3], 2);
    assert_int_equal(nf_forecast_moe_pick(lg, 8, 2, 1.1f, 3, idx), 5);
    assert_int_equal(idx[4], 3); /* 0.9 twice: expert 3 before expert 7 */
    /* A close third but no room for extras. */
    assert_int_equal(nf_forecast_moe_pick(lg, 8, 2, 0.25f, 0, idx), 2);
    /* k larger than n: all of them. */
    assert_int_equal(nf_forecast_moe_pick(lg, 3, 4, 0, 2, idx), 3);
    /* A NaN logit is never close enough to be kept as an extra. */
    const float nan_lg[3] = {1.0f, NAN, 0.5f};
    assert_int_equal(nf_forecast_moe_pick(nan_lg, 3, 1, 10.0f, 1, idx), 1);
    assert_int_equal(idx[0], 0);
}

/* A forecast on the moe model keeps n_expert_used experts with no gap and up to twice that with
 * a wide one, listed best first in fc.idx and matching the selection bitmap. */
static void test_moe_forecast_gap(void **state)
{
    struct nf_nft *f = open_nft(moe_path);
    struct nf_plan p;
    init_plan(&p, f);
    struct nf_forecaster fc;
    char err[512];
    if (nf_forecaster_init(&fc, &p, UINT64_MAX, err, sizeof(err)))
        fail_msg("%s", err);
    float *x = malloc(sizeof(float) * p.n_embd);
    uint64_t sel[1];
    const uint32_t k = p.n_expert_used, n = p.n_expert;
    for (uint32_t il = 0; il < p.n_layer; il++) {
        fill_x(x, (int)p.n_embd, il + 11);
        assert_int_equal(nf_forecast(&fc, il, x, 0, 0, sel), (int)k);
        assert_int_equal(nf_sel_count(sel, p.words), k);
        int m = nf_forecast(&fc, il, x, 0, 1e9f, sel);
        assert_int_equal(m, (int)(2 * k < n ? 2 * k : n));
        assert_int_equal(nf_sel_count(sel, p.words), (uint32_t)m);
        for (int i = 0; i < m; i++) {
            assert_true(nf_sel_test(sel, fc.idx[i]));
            if (i > 0)
                assert_true(fc.gscores[fc.idx[i - 1]] >= fc.gscores[fc.idx[i]]);
        }
        /* Nothing left out scores above what was kept. */
        for (uint32_t e = 0; e < n; e++)
            if (!nf_sel_test(sel, e))
                assert_true(fc.gscores[e] <= fc.gscores[fc.idx[m - 1]]);
    }
    free(x);
    nf_forecaster_free(&fc);
    nf_plan_free(&p);
    nf_nft_close(f);
}

static void fill_x(float *x, int n, uint64_t seed)
{
    for (int i = 0; i < n; i++) {
        seed = seed * 6364136223846793005ull + 1442695040888963407ull;
        x[i] = (float)((double)(seed >> 11) / 9007199254740992.0 - 0.5);
    }
}

/* Sparsity 0 selects every group, 0.5 about half (plus the margin), and layers whose predictor
 * did not fit the memory cap are refused so the caller falls back to every group. */
static void test_sparse_counts(void **state)
{
    struct nf_nft *f = open_nft(dense_path);
    struct nf_plan p;
    init_plan(&p, f);
    struct nf_forecaster fc;
    char err[512];
    if (nf_forecaster_init(&fc, &p, UINT64_MAX, err, sizeof(err)))
        fail_msg("%s", err);
    assert_int_equal(fc.n_loaded, p.n_layer);
    float x[64];
    assert_int_equal(p.n_embd, 64);
    uint64_t sel[8];
    for (uint32_t il = 0; il < p.n_layer; il++) {
        uint32_t n = p.layers[il].n_units;
        fill_x(x, 64, il + 1);
        assert_int_equal(nf_forecast(&fc, il, x, 0, 0.1f, sel), (int)n);
        assert_int_equal(nf_sel_count(sel, p.words), n);
        assert_int_equal(nf_forecast(&fc, il, x, 0.5f, 0, sel), (int)nf_sparse_keep(n, 0.5f));
        assert_int_equal(nf_sel_count(sel, p.words), nf_sparse_keep(n, 0.5f));
        assert_true(nf_sel_count(sel, p.words) * 2 >= n - 1);
        assert_true(nf_sel_count(sel, p.words) * 2 <= n + 1);
        int k = nf_forecast(&fc, il, x, 0.5f, 0.1f, sel);
        assert_int_equal(k, (int)(nf_sparse_keep(n, 0.5f) + (n + 9) / 10));
        assert_int_equal(nf_sel_count(sel, p.words), (uint32_t)k);
    }
    uint64_t full = fc.mem_bytes;
    nf_forecaster_free(&fc);
    /* A cap that holds about two layers' predictors. */
    uint64_t per = nf_nft_padded(nf_nft_predictor(f, 0)->size) +
                   nf_nft_padded(nf_nft_find(f, 0, NF_TILE_FFN_NORM, 0)->size);
    if (nf_forecaster_init(&fc, &p, full - (p.n_layer - 2) * per + per / 2, err, sizeof(err)))
        fail_msg("%s", err);
    assert_int_equal(fc.n_loaded, 2);
    assert_true(fc.mem_bytes <= full - (p.n_layer - 2) * per + per / 2);
    fill_x(x, 64, 99);
    assert_true(nf_forecast(&fc, 0, x, 0.5f, 0, sel) > 0);
    assert_int_equal(nf_forecast(&fc, p.n_layer - 1, x, 0.5f, 0, sel), -ENOENT);
    /* Exact mode needs no predictor. */
    assert_int_equal(nf_forecast(&fc, p.n_layer - 1, x, 0, 0, sel),
                     (int)p.layers[p.n_layer - 1].n_units);
    nf_forecaster_free(&fc);
    nf_plan_free(&p);
    nf_nft_close(f);
}

/* Runs `tokens` through layers 0..il of m with layer il's FFN output zeroed, so that after each
 * token c->x is layer il's FFN input (the residual after its attention), c->hb its dense
 * activations and c->router its routing probabilities. Calls fn after each token. */
static void run_to_layer(const struct nf_model *m, int il, const int32_t *tokens, int n,
                         void (*fn)(void *ud, struct nf_ctx *c), void *ud)
{
    struct nf_model m2 = *m;
    m2.hp.n_layer = il + 1;
    m2.layers = malloc(sizeof(struct nf_layer) * (size_t)(il + 1));
    memcpy(m2.layers, m->layers, sizeof(struct nf_layer) * (size_t)(il + 1));
    struct nf_tensor *down =
        m->hp.n_expert ? &m2.layers[il].moe.down_exps : &m2.layers[il].ffn.down;
    int64_t n2 = down->ne[2] > 0 ? down->ne[2] : 1;
    void *zero = calloc((size_t)(n2 * down->ne[1]), down->row_size);
    down->data = zero; /* all-zero blocks of any type dequantize to 0 */
    struct nf_ctx *c;
    assert_int_equal(nf_ctx_create(&c, &m2, 64, 1), 0);
    for (int t = 0; t < n; t++) {
        assert_int_equal(nf_ctx_eval(c, &tokens[t], 1), 0);
        fn(ud, c);
    }
    nf_ctx_free(c);
    free(zero);
    free(m2.layers);
}

struct recall_ctx {
    struct nf_forecaster *fc;
    const struct nf_model *m;
    uint32_t layer;
    double hits, total; /* true top units found, true top units seen */
};

static void dense_observe(void *ud, struct nf_ctx *c)
{
    struct recall_ctx *r = ud;
    const struct nf_plan *p = r->fc->p;
    uint32_t n = p->layers[r->layer].n_units, G = p->layers[r->layer].group;
    float truth[512];
    uint32_t idx[512];
    uint64_t sel[8];
    assert_true(n <= 512);
    for (uint32_t g = 0; g < n; g++) {
        truth[g] = 0;
        for (uint32_t i = 0; i < G; i++)
            truth[g] += fabsf(c->hb[g * G + i]);
    }
    uint32_t half = nf_sparse_keep(n, 0.5f);
    top_k(idx, truth, n, half);
    assert_int_equal(nf_forecast(r->fc, r->layer, c->x, 0.5f, 0, sel), (int)half);
    for (uint32_t i = 0; i < half; i++)
        r->hits += nf_sel_test(sel, idx[i]);
    r->total += half;
}

static void moe_observe(void *ud, struct nf_ctx *c)
{
    struct recall_ctx *r = ud;
    const struct nf_plan *p = r->fc->p;
    uint32_t n = p->n_expert, k = p->n_expert_used;
    uint32_t idx[64];
    uint64_t sel[1];
    top_k(idx, c->router, n, k);
    assert_int_equal(nf_forecast(r->fc, r->layer, c->x, 0, 0, sel), (int)k);
    for (uint32_t i = 0; i < k; i++)
        r->hits += nf_sel_test(sel, idx[i]);
    r->total += k;
}

static void recall_for(const char *gguf, const char *nft, void (*obs)(void *, struct nf_ctx *),
                       double *out)
{
    char err[512];
    struct nf_model *m;
    if (nf_model_load(&m, gguf, err, sizeof(err)))
        fail_msg("%s", err);
    struct nf_nft *f = open_nft(nft);
    struct nf_plan p;
    init_plan(&p, f);
    struct nf_forecaster fc;
    if (nf_forecaster_init(&fc, &p, UINT64_MAX, err, sizeof(err)))
        fail_msg("%s", err);
    int32_t tokens[24];
    tokens[0] = 1;
    for (int i = 1; i < 24; i++)
        tokens[i] = (int32_t)((i * 37 + 11) % m->hp.n_vocab);
    struct recall_ctx r = {.fc = &fc, .m = m};
    for (uint32_t il = 0; il < p.n_layer; il++) {
        r.layer = il;
        run_to_layer(m, (int)il, tokens, 24, obs, &r);
    }
    *out = r.hits / r.total;
    nf_forecaster_free(&fc);
    nf_plan_free(&p);
    nf_nft_close(f);
    nf_model_free(m);
}

/* Forecasts from the true FFN input recall the true top half of groups better than chance. */
static void test_dense_recall(void **state)
{
    double recall;
    recall_for(STORIES, dense_path, dense_observe, &recall);
    print_message("stories260K: recall of the true top-50%% groups %.3f (chance 0.5)\n", recall);
    assert_true(recall > 0.55);
}

/* The router copy on the layer's own FFN input finds the experts the model really routes to,
 * with no spare expert. */
static void test_moe_recall(void **state)
{
    double recall;
    recall_for(MOE, moe_path, moe_observe, &recall);
    print_message("moe-Q8_0: recall of the routed experts %.3f (chance %.3f)\n", recall, 2.0 / 8);
    assert_true(recall > 0.9);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_dense_step),    cmocka_unit_test(test_dense_dropped),
        cmocka_unit_test(test_moe_step),      cmocka_unit_test(test_moe_layer_experts),
        cmocka_unit_test(test_moe_pick),      cmocka_unit_test(test_moe_forecast_gap),
        cmocka_unit_test(test_sparse_counts), cmocka_unit_test(test_dense_recall),
        cmocka_unit_test(test_moe_recall),
    };
    return cmocka_run_group_tests(tests, setup_files, teardown_files);
}
