/* test_batch_engine.c - several sequences in one engine (continuous batching): every sequence's
 * logits at every step are bit-identical to running it alone, for the in-RAM context
 * (nf_ctx_step) and the streaming engine (nf_stream_step), with sequences of different prompt
 * lengths joining and leaving at different steps, on dense, quantized, F16/BF16 and MoE models
 * (glm4moe, deepseek2 and gpt-oss among them: leading dense layers, sigmoid routing, latent
 * attention, attention sinks and expert biases), and in sparse mode; a batched MoE step's
 * experts in any run order. */
#include <dirent.h>
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

#define ENGINE_TEST_NAME "test_batch_engine"
#include "engine_test.h"

#define N_SEQ     4
#define N_CTX     96
#define MAX_STEPS 24

/* Sequence i: a prompt of plen[i] tokens, joins the batch at step join[i], generates ngen[i]
 * tokens greedily. Prompt 1 takes two chunks; sequences 0 and 3 overlap only partly. */
static const int plen[N_SEQ] = {5, 40, 12, 1};
static const int join[N_SEQ] = {0, 0, 3, 7};
static const int ngen[N_SEQ] = {14, 6, 12, 9};

static void prompt(int i, int32_t *tok, int n_vocab)
{
    tok[0] = 1;
    for (int k = 1; k < plen[i]; k++)
        tok[k] = (int32_t)((k * 37 + 11 * (i + 1)) % n_vocab);
}

/* One engine seen through the same calls: the in-RAM context or the stream. */
struct eng {
    struct nf_ctx *c;
    struct nf_kv_slot *slots;
    struct nf_stream *s;
    int n_vocab;
};

static int eng_solo(struct eng *e, bool reset, const int32_t *t, int n)
{
    if (e->s) {
        if (reset)
            nf_stream_reset(e->s);
        return nf_stream_eval(e->s, t, n);
    }
    if (reset)
        nf_ctx_reset(e->c);
    return nf_ctx_eval(e->c, t, n);
}

static const float *eng_solo_logits(const struct eng *e)
{
    return e->s ? nf_stream_logits(e->s) : e->c->logits;
}

static int eng_prefill(struct eng *e, int i, const int32_t *t, int n)
{
    if (e->s) {
        nf_stream_slot_reset(e->s, i);
        return nf_stream_slot_eval(e->s, i, t, n);
    }
    e->slots[i].n_past = 0;
    return nf_ctx_slot_eval(e->c, e->slots, i, t, n);
}

static int eng_step(struct eng *e, const int *idx, const int32_t *t, int n)
{
    return e->s ? nf_stream_step(e->s, idx, t, n) : nf_ctx_step(e->c, e->slots, idx, t, n);
}

static const float *eng_slot_logits(const struct eng *e, int i)
{
    return e->s ? nf_stream_slot_logits(e->s, i) : e->slots[i].logits;
}

/* ref[i][k]: logits of sequence i after its prompt (k = 0) and after its k-th generated token,
 * each sequence run alone from a reset engine. */
static float *solo_reference(struct eng *e)
{
    const int V = e->n_vocab;
    float *ref = malloc(sizeof(float) * N_SEQ * (MAX_STEPS + 1) * (size_t)V);
    assert_non_null(ref);
    for (int i = 0; i < N_SEQ; i++) {
        int32_t tok[64];
        prompt(i, tok, V);
        assert_int_equal(eng_solo(e, true, tok, plen[i]), 0);
        for (int k = 0;; k++) {
            const float *l = eng_solo_logits(e);
            memcpy(ref + ((size_t)i * (MAX_STEPS + 1) + k) * V, l, sizeof(float) * V);
            if (k == ngen[i] - 1)
                break;
            int32_t t = argmax(l, V);
            assert_int_equal(eng_solo(e, false, &t, 1), 0);
        }
    }
    return ref;
}

/* Runs the join/leave schedule in batches and checks every logit vector against ref. Returns
 * the number of steps that ran two or more sequences. */
static int check_batched(struct eng *e, const float *ref)
{
    const int V = e->n_vocab;
    int done[N_SEQ] = {0}, shared = 0;
    for (int step = 0; step < MAX_STEPS; step++) {
        for (int i = 0; i < N_SEQ; i++)
            if (join[i] == step) {
                int32_t tok[64];
                prompt(i, tok, V);
                assert_int_equal(eng_prefill(e, i, tok, plen[i]), 0);
                assert_memory_equal(eng_slot_logits(e, i), ref + (size_t)i * (MAX_STEPS + 1) * V,
                                    sizeof(float) * V);
            }
        int idx[N_SEQ], n = 0;
        int32_t t[N_SEQ];
        for (int i = 0; i < N_SEQ; i++)
            if (join[i] <= step && done[i] < ngen[i] - 1) {
                idx[n] = i;
                t[n++] = argmax(eng_slot_logits(e, i), V);
            }
        if (n == 0)
            continue;
        assert_int_equal(eng_step(e, idx, t, n), 0);
        shared += n >= 2;
        for (int r = 0; r < n; r++) {
            const int i = idx[r];
            done[i]++;
            const float *want = ref + ((size_t)i * (MAX_STEPS + 1) + done[i]) * V;
            if (memcmp(eng_slot_logits(e, i), want, sizeof(float) * V))
                fail_msg("sequence %d, step %d of %d in a batch of %d: logits differ from its solo "
                         "run",
                         i, done[i], ngen[i], n);
        }
    }
    for (int i = 0; i < N_SEQ; i++)
        assert_int_equal(done[i], ngen[i] - 1);
    return shared;
}

/* A model mkmodel generated into tmpdir (gen_model), else the shared one. */
static void model_path(const char *name, char *out, size_t len)
{
    snprintf(out, len, "%s/%s.gguf", tmpdir, name);
    if (access(out, R_OK) != 0)
        snprintf(out, len, "%s/models/%s.gguf", NF_SHARED_DIR, name);
}

/* tmpdir/NAME.gguf from `nanoflowctl mkmodel ARGS` (once). */
static void gen_model(const char *name, const char *args)
{
    char path[512], cmd[1536];
    snprintf(path, sizeof(path), "%s/%s.gguf", tmpdir, name);
    if (access(path, R_OK) == 0)
        return;
    snprintf(cmd, sizeof(cmd), "%s/ctl/nanoflowctl mkmodel %s %s >/dev/null", NF_BUILD_DIR, path,
             args);
    if (system(cmd) != 0)
        fail_msg("mkmodel %s failed", name);
}

/* The tests/test_golden_arch.sh shapes of the architectures main gained. */
static void gen_arch_models(void)
{
    gen_model("glm4moe-q8_0", "--seed 7 --arch glm4moe --dim 64 --layers 3 --ffn 64 --heads 4 "
                              "--kv-heads 2 --head-dim 32 --experts 8 --experts-used 4 "
                              "--dense-layers 1 --dense-ffn 128 --nextn 1 --expert-scale 2.5 "
                              "--qk-norm --type q8_0");
    gen_model("glm4moe-grp-q8_0",
              "--seed 7 --arch glm4moe --dim 64 --layers 3 --ffn 64 --heads 4 --kv-heads 2 "
              "--head-dim 32 --experts 16 --experts-used 4 --expert-groups 4 --groups-used 2 "
              "--dense-layers 1 --dense-ffn 128 --nextn 1 --expert-scale 2.5 --type q8_0");
    gen_model("deepseek2-q8_0", "--seed 7 --arch deepseek2 --dim 128 --layers 3 --ffn 64 --heads 4 "
                                "--head-dim 48 --rope-dim 16 --kv-lora 64 --v-head 32 --q-lora 0 "
                                "--dense-layers 1 --dense-ffn 256 --experts 8 --experts-used 2 "
                                "--shared-experts 1 --type q8_0");
    gen_model("deepseek3-q4_k",
              "--seed 7 --arch deepseek2 --dim 256 --layers 3 --ffn 256 --heads 4 --head-dim 64 "
              "--rope-dim 16 --kv-lora 256 --v-head 64 --q-lora 256 --dense-layers 1 "
              "--dense-ffn 512 --experts 8 --experts-used 2 --shared-experts 1 --sigmoid "
              "--expert-scale 2.5 --expert-groups 4 --groups-used 2 --type q4_k");
    gen_model("deepseek2yarn-q8_0",
              "--seed 9 --arch deepseek2 --dim 128 --layers 3 --ffn 64 --heads 4 --head-dim 48 "
              "--rope-dim 32 --kv-lora 64 --v-head 32 --q-lora 64 --dense-layers 1 "
              "--dense-ffn 256 --experts 8 --experts-used 2 --shared-experts 1 --type q8_0 "
              "--yarn 8 --yarn-orig 256 --rope-base 1000 --yarn-mscale 0.707");
    gen_model("gptoss-q8_0", "--seed 7 --arch gpt-oss --dim 64 --layers 4 --ffn 64 --heads 4 "
                             "--kv-heads 2 --head-dim 64 --experts 8 --experts-used 4 --window 4 "
                             "--rope-base 150000 --rope-scale 32 --ctx 131072 --type q8_0");
}

static const char *const arch_models[] = {"glm4moe-q8_0",   "glm4moe-grp-q8_0",   "deepseek2-q8_0",
                                          "deepseek3-q4_k", "deepseek2yarn-q8_0", "gptoss-q8_0"};

static void check_ctx(const char *name)
{
    char path[512], err[512];
    model_path(name, path, sizeof(path));
    struct nf_model *m;
    if (nf_model_load(&m, path, err, sizeof(err)) < 0)
        fail_msg("%s", err);
    struct eng e = {.n_vocab = m->hp.n_vocab};
    assert_int_equal(nf_ctx_create(&e.c, m, N_CTX, 2), 0);
    float *ref = solo_reference(&e);
    assert_int_equal(nf_kv_slots_create(&e.slots, e.c, N_SEQ), 0);
    assert_true(check_batched(&e, ref) >= 5);
    nf_kv_slots_free(e.slots, N_SEQ);
    free(ref);
    nf_ctx_free(e.c);
    nf_model_free(m);
}

/* The shared model NAME as a .nft of 16 KiB tiles, converted into tmpdir once. */
static struct nf_nft *open_nft(const char *name)
{
    char in[512], nft[512], err[512];
    model_path(name, in, sizeof(in));
    snprintf(nft, sizeof(nft), "%s/%s.nft", tmpdir, name);
    struct nf_nft_convert_opts co = {.tile_size = 16384};
    if (access(nft, R_OK) != 0 && nf_nft_convert(in, nft, &co, err, sizeof(err)) < 0)
        fail_msg("convert %s: %s", name, err);
    struct nf_nft *f;
    if (nf_nft_open(&f, nft, false, err, sizeof(err)) < 0)
        fail_msg("%s", err);
    return f;
}

/* n_one: the engine's n_threads_one (0: both threads for every step). */
static void check_stream_thr(const char *name, float sparsity, int n_ubatch, int n_seq, int n_one)
{
    char err[512];
    struct nf_nft *f = open_nft(name);
    struct nf_tile_src src;
    assert_int_equal(nf_tile_src_file_open(&src, f, 1 << 20), 0);
    struct nf_stream_opts o = {.n_ctx = N_CTX,
                               .n_threads = 2,
                               .n_threads_one = n_one,
                               .sparsity = sparsity,
                               .n_ubatch = n_ubatch,
                               .n_seq = n_seq};
    struct eng e = {0};
    if (nf_stream_create(&e.s, f, &src, &o, err, sizeof(err)) < 0)
        fail_msg("%s", err);
    e.n_vocab = nf_stream_hparams(e.s)->n_vocab;
    float *ref = solo_reference(&e);
    if (nf_stream_set_slots(e.s, N_SEQ, err, sizeof(err)) < 0)
        fail_msg("%s", err);
    const uint64_t reads0 = nf_tile_src_file_reads(&src);
    struct nf_stream_stats st0, st1;
    nf_stream_get_stats(e.s, &st0);
    assert_true(check_batched(&e, ref) >= 5);
    nf_stream_get_stats(e.s, &st1);
    (void)reads0;
    assert_true(st1.tiles_pinned > st0.tiles_pinned);
    /* Bad steps are refused without evaluating anything. */
    int idx[2] = {0, 0};
    int32_t t[2] = {1, 1};
    assert_int_equal(nf_stream_step(e.s, idx, t, 2), NF_EUSAGE);
    idx[1] = N_SEQ;
    assert_int_equal(nf_stream_step(e.s, idx, t, 2), NF_EUSAGE);
    idx[1] = 1;
    t[1] = e.n_vocab;
    assert_int_equal(nf_stream_step(e.s, idx, t, 2), NF_EUSAGE);
    assert_int_equal(nf_stream_set_slots(e.s, 2, err, sizeof(err)), NF_EUSAGE);
    free(ref);
    nf_stream_free(e.s);
    nf_tile_src_file_close(&src);
    nf_nft_close(f);
}

/* A tile source over another that says a tile is in memory or not at random (present), so a
 * batched MoE step runs its union's experts in an order other than their index order, and
 * records whether it did: in a batched MoE step (present asked since the last tile other than
 * an expert's; a one-token MoE layer runs its experts in choice order without asking), an
 * expert of a lower index pinned after one of a higher index of the same layer. It also checks
 * the rows a batched step gives row_done: each row once a layer, the last one with the bytes
 * layer_done then gets, and counts the rows given before an expert of their layer still ran. */
struct shuffle_src {
    struct nf_tile_src in;
    const struct nf_nft *f;
    uint32_t rng;
    uint32_t last;     /* the last expert tile pinned since the last other tile, or UINT32_MAX */
    bool batch;        /* present asked since the last tile other than an expert's */
    int reordered;     /* such expert pins that went back to a lower expert */
    int present_calls; /* present() calls answered */
    uint32_t rows;     /* bitmap of the rows row_done gave since the last layer_done */
    int row_calls;     /* row_done calls since the last layer_done */
    int row_layer;     /* their layer (-1: none yet) */
    int early;         /* expert pins of a layer after row_done gave one of its rows */
    int layers_rows;   /* layer_done calls that followed rows (checked) */
    float *xrow;       /* (N_SEQ, n_embd) the rows given */
};

static const uint8_t *shuffle_pin(void *ud, uint32_t id, int *rc)
{
    struct shuffle_src *ss = ud;
    const struct nf_nft_tile *t = &ss->f->tiles[id];
    if (t->kind != NF_TILE_EXPERT) {
        ss->last = UINT32_MAX;
        ss->batch = false;
    } else {
        if (ss->row_calls > 0 && (int)t->layer == ss->row_layer)
            ss->early++;
        if (ss->batch && ss->last != UINT32_MAX && ss->f->tiles[ss->last].layer == t->layer &&
            ss->f->tiles[ss->last].expert > t->expert)
            ss->reordered++;
        ss->last = id;
    }
    return ss->in.pin(ss->in.ud, id, rc);
}

static void shuffle_row_done(void *ud, uint32_t layer, uint32_t row, const float *x, int n_embd)
{
    struct shuffle_src *ss = ud;
    assert_true(row < N_SEQ && !(ss->rows >> row & 1));
    assert_true(ss->row_calls == 0 || (int)layer == ss->row_layer);
    ss->rows |= 1u << row;
    ss->row_calls++;
    ss->row_layer = (int)layer;
    memcpy(ss->xrow + (size_t)row * n_embd, x, sizeof(float) * (size_t)n_embd);
}

static void shuffle_layer_done(void *ud, uint32_t layer, const float *x, int n_embd)
{
    struct shuffle_src *ss = ud;
    if (ss->row_calls > 0) {
        /* Every row of the step 0..n-1 once; layer_done gets the last. */
        const int n = ss->row_calls;
        assert_int_equal(ss->rows, (1u << n) - 1);
        assert_int_equal(ss->row_layer, (int)layer);
        assert_memory_equal(ss->xrow + (size_t)(n - 1) * n_embd, x, sizeof(float) * n_embd);
        ss->layers_rows++;
    }
    ss->rows = 0;
    ss->row_calls = 0;
}

static void shuffle_unpin(void *ud, uint32_t id)
{
    struct shuffle_src *ss = ud;
    ss->in.unpin(ss->in.ud, id);
}

static bool shuffle_present(void *ud, uint32_t id)
{
    struct shuffle_src *ss = ud;
    (void)id;
    ss->batch = true;
    ss->present_calls++;
    ss->rng = ss->rng * 1103515245u + 12345u;
    return (ss->rng >> 16) & 1;
}

/* Every row of every batched MoE step keeps its solo logits bit for bit whatever order the
 * step runs the union's experts in (nf_stream_moe_batch: the ones in memory first). */
static void check_stream_moe_order(const char *name)
{
    char err[512];
    struct nf_nft *f = open_nft(name);
    struct shuffle_src ss = {.f = f, .rng = 7, .last = UINT32_MAX};
    assert_int_equal(nf_tile_src_file_open(&ss.in, f, 1 << 20), 0);
    ss.row_layer = -1;
    ss.xrow = malloc(sizeof(float) * N_SEQ * f->hdr.n_embd);
    assert_non_null(ss.xrow);
    struct nf_tile_src src = {.pin = shuffle_pin,
                              .unpin = shuffle_unpin,
                              .present = shuffle_present,
                              .row_done = shuffle_row_done,
                              .layer_done = shuffle_layer_done,
                              .ud = &ss};
    struct nf_stream_opts o = {.n_ctx = N_CTX, .n_threads = 2};
    struct eng e = {0};
    if (nf_stream_create(&e.s, f, &src, &o, err, sizeof(err)) < 0)
        fail_msg("%s", err);
    e.n_vocab = nf_stream_hparams(e.s)->n_vocab;
    float *ref = solo_reference(&e);
    if (nf_stream_set_slots(e.s, N_SEQ, err, sizeof(err)) < 0)
        fail_msg("%s", err);
    ss.reordered = ss.present_calls = 0;
    assert_true(check_batched(&e, ref) >= 5);
    assert_true(ss.present_calls > 0);
    assert_true(ss.reordered > 0); /* the order did change */
    assert_true(ss.layers_rows > 0);
    assert_true(ss.early > 0); /* some rows were given before their layer's last expert */
    print_message("%s: %d layers of batched steps gave their rows, %d expert pins after one "
                  "of their rows\n",
                  name, ss.layers_rows, ss.early);
    free(ss.xrow);
    free(ref);
    nf_stream_free(e.s);
    nf_tile_src_file_close(&ss.in);
    nf_nft_close(f);
}

static void test_stream_moe_order(void **state)
{
    (void)state;
    check_stream_moe_order("moe-Q8_0");
    check_stream_moe_order("moe-Q4_K_M");
}

static void check_stream_ub(const char *name, float sparsity, int n_ubatch, int n_seq)
{
    check_stream_thr(name, sparsity, n_ubatch, n_seq, 0);
}

static void check_stream(const char *name, float sparsity)
{
    check_stream_ub(name, sparsity, 0, 0);
}

static void test_ctx_stories(void **state)
{
    (void)state;
    check_ctx("stories260K");
}

static void test_ctx_quantized(void **state)
{
    (void)state;
    check_ctx("zoo-Q4_K_M");
    check_ctx("zoo-Q4_0");
}

static void test_ctx_moe(void **state)
{
    (void)state;
    check_ctx("moe-Q8_0");
}

static void test_stream_stories(void **state)
{
    (void)state;
    check_stream("stories260K", 0.0f);
}

static void test_stream_types(void **state)
{
    (void)state;
    /* F16 and BF16 prompt batches take tinyBLAS's order, q4_0 of a small model the repacked
     * row order: a batched step must take the decode order instead. */
    check_stream("zoo-F16", 0.0f);
    check_stream("zoo-BF16", 0.0f);
    check_stream("zoo-Q4_0", 0.0f);
    check_stream("zoo-Q4_K_M", 0.0f);
}

/* A q4_0 model above NF_EXACT_Q4_0_MAX (model_forward.c: 32 MiB) decodes with the one-token
 * vec_dot, not the repacked row order: a batched step goes through nf_vec_dot_cols (its ffn_down
 * rows of 8448 take two of the AVX-512 kernel's 8192-element chunks); on AVX-512 the streaming
 * engine's batched step reassembles ffn_down by groups of 128 columns (66 of them) and reads it
 * with nf_vec_dot_cols_gs. */
static void test_large_q4_0(void **state)
{
    (void)state;
    gen_model("big-q4_0", "--seed 3 --dim 512 --layers 3 --ffn 8448 --heads 8 --type q4_0");
    check_ctx("big-q4_0");
    check_stream("big-q4_0", 0.0f);
}

static void test_stream_moe(void **state)
{
    (void)state;
    check_stream("moe-Q8_0", 0.0f);
    check_stream("moe-Q4_K_M", 0.0f);
}

static void test_ctx_arch(void **state)
{
    (void)state;
    gen_arch_models();
    for (size_t i = 0; i < sizeof(arch_models) / sizeof(arch_models[0]); i++)
        check_ctx(arch_models[i]);
}

static void test_stream_arch(void **state)
{
    (void)state;
    gen_arch_models();
    for (size_t i = 0; i < sizeof(arch_models) / sizeof(arch_models[0]); i++)
        check_stream(arch_models[i], 0.0f);
}

/* A prompt ubatch smaller than the sequences (up -ub 2 --parallel 4): the buffers hold the
 * step's rows, prompts still go 2 tokens a chunk; without n_seq the slots are refused. */
static void test_stream_small_ubatch(void **state)
{
    (void)state;
    check_stream_ub("stories260K", 0.0f, 2, N_SEQ);
    check_stream_ub("moe-Q8_0", 0.0f, 2, N_SEQ);
    char err[512];
    struct nf_nft *f = open_nft("stories260K");
    struct nf_tile_src src;
    assert_int_equal(nf_tile_src_file_open(&src, f, 1 << 20), 0);
    struct nf_stream_opts o = {.n_ctx = N_CTX, .n_threads = 1, .n_ubatch = 2};
    struct nf_stream *s;
    if (nf_stream_create(&s, f, &src, &o, err, sizeof(err)) < 0)
        fail_msg("%s", err);
    assert_int_equal(nf_stream_set_slots(s, N_SEQ, err, sizeof(err)), NF_EUSAGE);
    assert_non_null(strstr(err, "rows"));
    nf_stream_free(s);
    nf_tile_src_file_close(&src);
    nf_nft_close(f);
}

static void test_stream_sparse(void **state)
{
    (void)state;
    check_stream("stories260K", 0.5f);
}

/* The compute daemon's threads on two cores: decode steps (batched too) on one thread, prompt
 * chunks on two. Each row of a batched step still gets its solo logits bit for bit, in sparse
 * mode too (there a row's groups are split as its solo step splits them: the split decides
 * the order of the sums; check_stream's n_one 0 has both on two threads). */
static void test_stream_one_thread(void **state)
{
    (void)state;
    check_stream_thr("stories260K", 0.0f, 0, 0, 1);
    check_stream_thr("stories260K", 0.5f, 0, 0, 1);
    check_stream_thr("zoo-Q4_0", 0.0f, 0, 0, 1);
    check_stream_thr("moe-Q8_0", 0.0f, 0, 0, 1);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_ctx_stories),      cmocka_unit_test(test_ctx_quantized),
        cmocka_unit_test(test_ctx_moe),          cmocka_unit_test(test_stream_stories),
        cmocka_unit_test(test_stream_types),     cmocka_unit_test(test_stream_moe),
        cmocka_unit_test(test_stream_sparse),    cmocka_unit_test(test_ctx_arch),
        cmocka_unit_test(test_stream_arch),      cmocka_unit_test(test_stream_small_ubatch),
        cmocka_unit_test(test_large_q4_0),       cmocka_unit_test(test_stream_one_thread),
        cmocka_unit_test(test_stream_moe_order),
    };
    return cmocka_run_group_tests(tests, setup_dir, teardown_dir);
}
