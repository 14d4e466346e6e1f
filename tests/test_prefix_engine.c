/* test_prefix_engine.c - the rule behind the compute daemon's prefix reuse (daemons/compute/gen.h),
 * checked on the streaming engine: a slot that evaluated prompt A and generated from it, rolled
 * back to what it keeps of A (nf_stream_prefix_kept: all of A's 45 positions, but the last when
 * it was a chunk of its own) and what B may reuse of it (nf_stream_prefix_usable), and given the
 * rest of a prompt B that extends A and its output (nf_stream_slot_eval_rest: chunks of two
 * tokens or more, a last one alone where a cold run has it alone), leaves bit for bit the
 * logits of B evaluated cold on a fresh slot, for the prompt and every later decode step; on
 * dense, quantized and MoE models, with ubatches of 32, 8, 5 and 23 (A's last chunk partial),
 * 4 and 11 (of one token: not kept); and a prompt C of A and one token more, which leaves one
 * token to evaluate (reused: one position fewer, but at ubatch 5, where C's last token is a
 * chunk of its own cold too); and with the KV cache on disk (common/kv_file.c). It also
 * reports, without asserting, what reusing A's generated tokens as well would change
 * (docs/exactness.md cites it). */
#include <dirent.h>
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
#include "stream.h"

#define ENGINE_TEST_NAME "test_prefix_engine"
#include "engine_test.h"

#define N_CTX 128
#define LEN_A 45 /* prompt A: one or more whole chunks and a partial one for every ubatch */
#define GEN_A 12 /* tokens generated after A (one-token steps) */
#define EXTRA 9  /* B = A, A's output, then EXTRA more tokens */
#define STEPS 8  /* decode steps compared after B */

/* Greedy decoding of n steps on slot i from its current logits; the logits of each step go to
 * out (n, V) and the tokens to toks. */
static void decode(struct nf_stream *s, int i, int n, int V, float *out, int32_t *toks)
{
    for (int k = 0; k < n; k++) {
        int32_t t = argmax(nf_stream_slot_logits(s, i), V);
        if (toks)
            toks[k] = t;
        int idx = i;
        assert_int_equal(nf_stream_step(s, &idx, &t, 1), 0);
        if (out)
            memcpy(out + (size_t)k * V, nf_stream_slot_logits(s, i), sizeof(float) * V);
    }
}

/* The largest |difference| between a and b (n floats). */
static double max_diff(const float *a, const float *b, size_t n)
{
    double m = 0;
    for (size_t i = 0; i < n; i++)
        m = fmax(m, fabs((double)a[i] - (double)b[i]));
    return m;
}

/* The KV cache of the engines check_model makes: in RAM (kv_block 0), or in a file in blocks of
 * kv_block positions, of types kv_tk / kv_tv (0: f16). */
static int kv_block;
static enum nf_type kv_tk, kv_tv;

/* Slot 1 rolled back to keep positions and given the rest of the n tokens at b, then STEPS
 * greedy steps: the logits (into warm) must be cold's bit for bit. */
static void warm_vs_cold(struct nf_stream *s, const char *name, const char *what, const int32_t *b,
                         int n, int keep, const float *cold, float *warm)
{
    const int V = nf_stream_hparams(s)->n_vocab;
    assert_int_equal(nf_stream_slot_rollback(s, 1, keep), 0);
    assert_int_equal(nf_stream_slot_eval_rest(s, 1, b + keep, n - keep), 0);
    memcpy(warm, nf_stream_slot_logits(s, 1), sizeof(float) * V);
    decode(s, 1, STEPS, V, warm + V, NULL);
    for (int k = 0; k <= STEPS; k++)
        if (memcmp(cold + (size_t)k * V, warm + (size_t)k * V, sizeof(float) * V))
            fail_msg("%s, ubatch %d, KV blocks %d: %s from %d kept positions differs from cold "
                     "at step %d (max |diff| %.3g)",
                     name, nf_stream_ubatch(s), kv_block, what, keep, k,
                     max_diff(cold + (size_t)k * V, warm + (size_t)k * V, (size_t)V));
}

static void check_model(const char *name, int n_ubatch)
{
    char in[512], nft[512], err[512];
    snprintf(in, sizeof(in), "%s/models/%s.gguf", NF_SHARED_DIR, name);
    if (access(in, R_OK) != 0) {
        printf("note: %s is missing, skipped\n", in);
        return;
    }
    snprintf(nft, sizeof(nft), "%s/%s.nft", tmpdir, name);
    struct nf_nft_convert_opts co = {.tile_size = 16384};
    if (access(nft, R_OK) != 0 && nf_nft_convert(in, nft, &co, err, sizeof(err)) < 0)
        fail_msg("convert %s: %s", name, err);
    struct nf_nft *f;
    if (nf_nft_open(&f, nft, false, err, sizeof(err)) < 0)
        fail_msg("%s", err);
    struct nf_tile_src src;
    assert_int_equal(nf_tile_src_file_open(&src, f, 1 << 20), 0);
    char kv[600];
    snprintf(kv, sizeof(kv), "%s/%s.kv", tmpdir, name);
    struct nf_stream_opts o = {.n_ctx = N_CTX,
                               .n_threads = 2,
                               .n_ubatch = n_ubatch,
                               .n_seq = 3,
                               .type_k = kv_tk,
                               .type_v = kv_tv,
                               .kv_path = kv_block ? kv : NULL,
                               .kv_block = kv_block};
    struct nf_stream *s;
    if (nf_stream_create(&s, f, &src, &o, err, sizeof(err)) < 0)
        fail_msg("%s", err);
    if (nf_stream_set_slots(s, 3, err, sizeof(err)) < 0)
        fail_msg("%s", err);
    const int V = nf_stream_hparams(s)->n_vocab, ub = nf_stream_ubatch(s);
    assert_int_equal(ub, n_ubatch);
    /* A, then its output on slot 1: the finished sequence whose slot keeps A. */
    int32_t b[LEN_A + GEN_A + EXTRA];
    b[0] = 1;
    for (int k = 1; k < LEN_A; k++)
        b[k] = (int32_t)((k * 37 + 11) % V);
    nf_stream_slot_reset(s, 1);
    assert_int_equal(nf_stream_slot_eval(s, 1, b, LEN_A), 0);
    decode(s, 1, GEN_A, V, NULL, b + LEN_A);
    for (int k = 0; k < EXTRA; k++)
        b[LEN_A + GEN_A + k] = (int32_t)((k * 53 + 5) % V);
    const int nb = LEN_A + GEN_A + EXTRA;
    /* B cold on slot 0. */
    float *cold = malloc(sizeof(float) * (size_t)(STEPS + 1) * V);
    float *warm = malloc(sizeof(float) * (size_t)(STEPS + 1) * V);
    assert_non_null(cold);
    assert_non_null(warm);
    nf_stream_slot_reset(s, 0);
    assert_int_equal(nf_stream_slot_eval(s, 0, b, nb), 0);
    memcpy(cold, nf_stream_slot_logits(s, 0), sizeof(float) * V);
    decode(s, 0, STEPS, V, cold + V, NULL);
    /* B from what slot 1 keeps of A: identical, prompt and steps. */
    const int keep = nf_stream_prefix_usable(nf_stream_prefix_kept(LEN_A, ub), nb, ub);
    assert_int_equal(keep, LEN_A - (LEN_A % ub == 1));
    warm_vs_cold(s, name, "B", b, nb, keep, cold, warm);
    /* What reusing A whole and its output would give (slot 2 replays A and its output). */
    nf_stream_slot_reset(s, 2);
    assert_int_equal(nf_stream_slot_eval(s, 2, b, LEN_A), 0);
    decode(s, 2, GEN_A, V, NULL, NULL);
    const int all = LEN_A + GEN_A;
    assert_int_equal(nf_stream_slot_rollback(s, 2, all), 0);
    assert_int_equal(nf_stream_slot_eval(s, 2, b + all, nb - all), 0);
    memcpy(warm, nf_stream_slot_logits(s, 2), sizeof(float) * V);
    decode(s, 2, STEPS, V, warm + V, NULL);
    printf("%s, ubatch %2d%s: reusing %d prompt positions: bit-identical; reusing all %d: "
           "max |diff| %.3g over the prompt and %d steps\n",
           name, ub, kv_block ? ", KV on disk" : "", keep, all,
           max_diff(cold, warm, (size_t)(STEPS + 1) * V), STEPS);
    /* C = A and one token: one position fewer reused, unless C's last token is a chunk of its
     * own cold as well (ubatch 5). */
    const int keep_c = nf_stream_prefix_usable(nf_stream_prefix_kept(LEN_A, ub), LEN_A + 1, ub);
    assert_int_equal(keep_c, ub == 5 ? LEN_A : LEN_A - 1);
    nf_stream_slot_reset(s, 0);
    assert_int_equal(nf_stream_slot_eval(s, 0, b, LEN_A + 1), 0);
    memcpy(cold, nf_stream_slot_logits(s, 0), sizeof(float) * V);
    decode(s, 0, STEPS, V, cold + V, NULL);
    warm_vs_cold(s, name, "C", b, LEN_A + 1, keep_c, cold, warm);
    free(cold);
    free(warm);
    nf_stream_free(s);
    nf_tile_src_file_close(&src);
    nf_nft_close(f);
}

static void check_all_ubatches(const char *name)
{
    check_model(name, 32);
    check_model(name, 8);
    check_model(name, 5);
    check_model(name, 4);
    check_model(name, 11);
    check_model(name, 23);
}

static void test_stories(void **state)
{
    (void)state;
    check_all_ubatches("stories260K");
}

static void test_quantized(void **state)
{
    (void)state;
    check_all_ubatches("zoo-Q4_K_M");
    check_all_ubatches("zoo-Q4_0");
    check_all_ubatches("zoo-F16");
}

static void test_moe(void **state)
{
    (void)state;
    check_all_ubatches("moe-Q4_K_M");
}

/* The KV cache on disk in blocks of 4: the rollback to the kept prefix lands inside a block
 * already written to the file (ubatch 5 keeps 45 positions, the block [44, 48) comes back
 * from the file with its first row kept), and the kept cells are read back from the file; a
 * quantized cache (q8_0 K, q4_0 V) too. The engine's own output equals its in-RAM one bit for
 * bit (test_kv_file), so the rule holds as it does in RAM. */
static void test_kv_disk(void **state)
{
    (void)state;
    kv_block = 4;
    check_model("stories260K", 8);
    check_model("stories260K", 5);
    check_model("stories260K", 4);
    kv_tk = NF_TYPE_Q8_0;
    kv_tv = NF_TYPE_Q4_0;
    check_model("zoo-Q8_0", 5);
    check_model("zoo-Q8_0", 23);
    kv_tk = kv_tv = 0;
    kv_block = 0;
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_stories),
        cmocka_unit_test(test_quantized),
        cmocka_unit_test(test_moe),
        cmocka_unit_test(test_kv_disk),
    };
    return cmocka_run_group_tests(tests, setup_dir, teardown_dir);
}
