/* test_repack.c - q4_0 matrices interleaved by eight rows (nf_model_load_opts.repack,
 * quants_q4_0x8.h) change no bit of the forward pass: a generated q4_0 model big enough for
 * the decode kernels (over 32 MiB of weights, an FFN row of two 64-group chunks) loaded both
 * ways gives the same logits for a prompt in ubatches, for decode steps, and for a per-row
 * verification pass, with one thread and with two. */
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
#include "quants.h"

#define ENGINE_TEST_NAME "test_repack"
#include "engine_test.h"

#define N_PROMPT 21 /* two ubatches of 16 and 5 tokens: the multi-token kernels, unpacked */
#define N_STEPS  6
#define N_ROWS   3 /* tokens of the per-row pass */

static void gen_model(const char *path)
{
    char cmd[1024];
    /* ffn 8448 = 66 groups of four blocks: ffn_down's rows have a second chunk of 2 groups. */
    snprintf(cmd, sizeof(cmd),
             "%s/ctl/nanoflowctl mkmodel %s --seed 7 --dim 1024 --layers 3 --ffn 8448 "
             "--heads 8 --kv-heads 4 --type q4_0 >/dev/null",
             NF_BUILD_DIR, path);
    if (system(cmd) != 0)
        fail_msg("mkmodel %s failed", path);
}

static void expect_same(const float *a, const float *b, int n, const char *what, int step)
{
    if (memcmp(a, b, sizeof(float) * (size_t)n) != 0) {
        int i = 0;
        while (a[i] == b[i])
            i++;
        fail_msg("%s %d: logit %d = %.9g interleaved, %.9g in the GGUF layout", what, step, i,
                 (double)a[i], (double)b[i]);
    }
}

/* The two models side by side with n_threads threads. */
static void compare(const struct nf_model *mx, const struct nf_model *mp, int n_threads)
{
    const int V = mp->hp.n_vocab;
    struct nf_ctx *cx, *cp;
    assert_int_equal(nf_ctx_create_ub(&cx, mx, 64, n_threads, 16), 0);
    assert_int_equal(nf_ctx_create_ub(&cp, mp, 64, n_threads, 16), 0);
    int32_t toks[N_PROMPT];
    for (int i = 0; i < N_PROMPT; i++)
        toks[i] = (int32_t)((i * 37 + 11) % V);
    assert_int_equal(nf_ctx_eval(cx, toks, N_PROMPT), 0);
    assert_int_equal(nf_ctx_eval(cp, toks, N_PROMPT), 0);
    expect_same(cx->logits, cp->logits, V, "prompt", 0);
    for (int s = 0; s < N_STEPS; s++) {
        int32_t t = argmax(cp->logits, V);
        assert_int_equal(nf_ctx_eval(cx, &t, 1), 0);
        assert_int_equal(nf_ctx_eval(cp, &t, 1), 0);
        expect_same(cx->logits, cp->logits, V, "decode step", s);
    }
    float *lx = malloc(sizeof(float) * (size_t)V * N_ROWS);
    float *lp = malloc(sizeof(float) * (size_t)V * N_ROWS);
    assert_true(lx && lp);
    assert_int_equal(nf_ctx_eval_rows(cx, toks, N_ROWS, lx), 0);
    assert_int_equal(nf_ctx_eval_rows(cp, toks, N_ROWS, lp), 0);
    expect_same(lx, lp, V * N_ROWS, "per-row pass", 0);
    free(lx);
    free(lp);
    nf_ctx_free(cx);
    nf_ctx_free(cp);
}

static void test_repack_same_logits(void **state)
{
    (void)state;
    char path[512], err[512];
    snprintf(path, sizeof(path), "%s/q4_0.gguf", tmpdir);
    gen_model(path);
    struct nf_model *mx, *mp;
    const struct nf_model_load_opts o = {.repack = true};
    if (nf_model_load_ex(&mx, path, &o, err, sizeof(err)) < 0 ||
        nf_model_load(&mp, path, err, sizeof(err)) < 0)
        fail_msg("%s", err);
    /* Every matrix takes the layout where the AVX-512 kernels run, none elsewhere. */
    const bool avx512 = nf_kernels_isa() == NF_ISA_AVX512;
    for (int il = 0; il < mx->hp.n_layer; il++) {
        const struct nf_layer *L = &mx->layers[il];
        const struct nf_tensor *ts[] = {&L->attn.wq,  &L->attn.wk, &L->attn.wv, &L->attn.wo,
                                        &L->ffn.gate, &L->ffn.up,  &L->ffn.down};
        for (size_t i = 0; i < sizeof(ts) / sizeof(ts[0]); i++) {
            assert_int_equal(ts[i]->x8, avx512);
            assert_false(mp->layers[il].attn.wq.x8);
        }
    }
    assert_false(mx->tok_embd.x8);
    /* Over NF_EXACT_Q4_0_MAX (model_forward.c): decode steps take the rows kernels. */
    assert_true(mp->weight_bytes > ((size_t)32 << 20));
    if (avx512)
        assert_true(memcmp(mx->layers[0].ffn.down.data, mp->layers[0].ffn.down.data,
                           mp->layers[0].ffn.down.row_size * 8) != 0);
    compare(mx, mp, 1);
    compare(mx, mp, 2);
    nf_model_free(mx);
    nf_model_free(mp);
    unlink(path);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_repack_same_logits),
    };
    return cmocka_run_group_tests(tests, setup_dir, teardown_dir);
}
