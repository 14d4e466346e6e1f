/* test_ubatch_logits.c - the forward pass gives the same bits whatever the ubatch a prompt is
 * evaluated in, as long as no chunk has one token (a chunk of one takes the one-token kernels):
 * the logits of a prompt, and of greedy decode steps after it (which read every position's KV
 * cells), are equal bit for bit with ubatches of 64 (one chunk), 7, 5, 3 and 2 tokens (44
 * prompt tokens: last chunks of 2, 4, 2 and 2), on stories260K and the zoo and MoE models of
 * ../shared/models, each also with the kernels of a large model (weight_bytes forced past
 * NF_EXACT_Q4_0_MAX: the q4_0 prompt GEMM, BF16's vec_dot), with one thread and with two, and
 * with quantized KV caches (q8_0 and q4_0 K and V); and on a generated q4_0 model over 32 MiB
 * whose FFN rows are longer than the GEMM's K-chunk, with a 200-token prompt in ubatches of
 * 200, 160, 64 and 7 (more than 153 tokens in one call changed the q4_0 GEMM's K-chunk once).
 * This is what prefix reuse relies on (daemons/compute/gen.h, docs/exactness.md). */
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
#include "quants.h"

#define ENGINE_TEST_NAME "test_ubatch_logits"
#include "engine_test.h"

#define N_STEPS 3
#define MAXP    200

/* The logits of a prompt of n tokens evaluated in chunks of ub, then of N_STEPS greedy decode
 * steps (the tokens of want's steps when want is given, so that a difference shows as one),
 * into out ((N_STEPS + 1) x V). */
static void logits_at(const struct nf_model *m, int threads, int ub, enum nf_type tk,
                      enum nf_type tv, const int32_t *toks, int n, const float *want, float *out)
{
    const int V = m->hp.n_vocab;
    struct nf_ctx *c;
    char err[256];
    assert_int_equal(nf_ctx_create_ub(&c, m, 256, threads, ub), 0);
    if ((tk != NF_TYPE_F16 || tv != NF_TYPE_F16) &&
        nf_ctx_set_kv_types(c, tk, tv, err, sizeof(err)) < 0)
        fail_msg("%s", err);
    assert_int_equal(nf_ctx_eval(c, toks, n), 0);
    memcpy(out, c->logits, sizeof(float) * (size_t)V);
    for (int s = 0; s < N_STEPS; s++) {
        int32_t t = argmax(want ? want + (size_t)s * V : c->logits, V);
        assert_int_equal(nf_ctx_eval(c, &t, 1), 0);
        memcpy(out + (size_t)(s + 1) * V, c->logits, sizeof(float) * (size_t)V);
    }
    nf_ctx_free(c);
}

/* Compares the logits of every ubatch in ubs (0-terminated) with the first's. */
static void check(const char *name, const struct nf_model *m, int threads, enum nf_type tk,
                  enum nf_type tv, int n, const int *ubs)
{
    const int V = m->hp.n_vocab;
    const size_t sz = (size_t)(N_STEPS + 1) * V;
    int32_t toks[MAXP];
    toks[0] = 1;
    for (int k = 1; k < n; k++)
        toks[k] = (int32_t)((k * 37 + 11) % V);
    float *ref = malloc(sizeof(float) * sz), *got = malloc(sizeof(float) * sz);
    assert_true(ref && got);
    logits_at(m, threads, ubs[0], tk, tv, toks, n, NULL, ref);
    for (int u = 1; ubs[u]; u++) {
        NF_ASSERT(n % ubs[u] != 1);
        logits_at(m, threads, ubs[u], tk, tv, toks, n, ref, got);
        for (size_t i = 0; i < sz; i++)
            if (memcmp(&ref[i], &got[i], sizeof(float)) != 0)
                fail_msg("%s (%d thread(s), K %s, V %s, weights %zu bytes): %s %zu logit %zu: "
                         "%.9g at ubatch %d, %.9g at ubatch %d",
                         name, threads, nf_type_traits(tk)->name, nf_type_traits(tv)->name,
                         m->weight_bytes, i < (size_t)V ? "prompt," : "decode step", i / (size_t)V,
                         i % (size_t)V, (double)ref[i], ubs[0], (double)got[i], ubs[u]);
    }
    free(ref);
    free(got);
}

static const int ubs44[] = {64, 7, 5, 3, 2, 0};

static void check_shared(const char *name, bool kv_quant)
{
    char path[512], err[512];
    snprintf(path, sizeof(path), "%s/models/%s.gguf", NF_SHARED_DIR, name);
    if (access(path, R_OK) != 0) {
        printf("note: %s is missing, skipped\n", path);
        return;
    }
    struct nf_model *m;
    if (nf_model_load(&m, path, err, sizeof(err)) < 0)
        fail_msg("%s", err);
    const size_t real = m->weight_bytes;
    for (int big = 0; big < 2; big++) {
        /* The kernels of a model over NF_EXACT_Q4_0_MAX (model_forward.c). */
        m->weight_bytes = big ? ((size_t)64 << 20) + real : real;
        check(name, m, 2, NF_TYPE_F16, NF_TYPE_F16, 44, ubs44);
        if (big)
            check(name, m, 1, NF_TYPE_F16, NF_TYPE_F16, 44, ubs44);
        if (kv_quant) {
            check(name, m, 2, NF_TYPE_Q8_0, NF_TYPE_Q8_0, 44, ubs44);
            check(name, m, 2, NF_TYPE_Q4_0, NF_TYPE_Q4_0, 44, ubs44);
            check(name, m, 2, NF_TYPE_Q8_0, NF_TYPE_F16, 44, ubs44);
        }
    }
    m->weight_bytes = real;
    nf_model_free(m);
}

static void test_stories(void **state)
{
    (void)state;
    check_shared("stories260K", false);
}

static void test_zoo(void **state)
{
    (void)state;
    check_shared("zoo-F16", false);
    check_shared("zoo-BF16", false);
    check_shared("zoo-Q4_0", false);
    check_shared("zoo-Q4_K_M", false);
    check_shared("zoo-Q5_K_M", false);
    check_shared("zoo-Q6_K", false);
    check_shared("zoo-Q8_0", true);
}

static void test_moe(void **state)
{
    (void)state;
    check_shared("moe-Q4_K_M", false);
    check_shared("moe-Q8_0", true);
}

/* A generated q4_0 model (as test_repack's) whose ffn_down rows have 264 blocks. */
static void test_q4_0_gemm(void **state)
{
    (void)state;
    char path[512], cmd[1024], err[512];
    snprintf(path, sizeof(path), "%s/q4_0.gguf", tmpdir);
    snprintf(cmd, sizeof(cmd),
             "%s/ctl/nanoflowctl mkmodel %s --seed 7 --dim 1024 --layers 2 --ffn 8448 "
             "--heads 8 --kv-heads 4 --type q4_0 >/dev/null",
             NF_BUILD_DIR, path);
    if (system(cmd) != 0)
        fail_msg("mkmodel %s failed", path);
    struct nf_model *m;
    if (nf_model_load(&m, path, err, sizeof(err)) < 0)
        fail_msg("%s", err);
    assert_true(m->weight_bytes > ((size_t)32 << 20));
    static const int ubs[] = {200, 160, 64, 7, 0};
    check("generated q4_0", m, 2, NF_TYPE_F16, NF_TYPE_F16, MAXP, ubs);
    check("generated q4_0", m, 1, NF_TYPE_F16, NF_TYPE_F16, MAXP, ubs);
    nf_model_free(m);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_stories),
        cmocka_unit_test(test_zoo),
        cmocka_unit_test(test_moe),
        cmocka_unit_test(test_q4_0_gemm),
    };
    return cmocka_run_group_tests(tests, setup_dir, teardown_dir);
}
