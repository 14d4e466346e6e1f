/* test_sparse.c - sparse FFN and predictor driver: all groups equals exact mode, masked groups
 * are skipped, top-k selection, and the calibration section read back from a converted file. */
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
#include "sparse.h"

static char nft_path[128], calib_path[128], text_path[128];

static int setup(void **state)
{
    (void)state;
    const char *src = NF_SHARED_DIR "/models/stories260K.gguf";
    if (access(src, R_OK) != 0)
        return 0; /* tests skip */
    snprintf(nft_path, sizeof(nft_path), "/tmp/test_sparse-%d.nft", (int)getpid());
    snprintf(calib_path, sizeof(calib_path), "/tmp/test_sparse-%d-c.nft", (int)getpid());
    snprintf(text_path, sizeof(text_path), "/tmp/test_sparse-%d.txt", (int)getpid());
    FILE *t = fopen(text_path, "w");
    if (!t)
        return -1;
    for (int i = 0; i < 6; i++)
        fputs("Lily saw a big red ball in the park. She was very happy and ran to get it.\n", t);
    fclose(t);
    char err[512];
    struct nf_nft_convert_opts o = {.tile_size = 8192};
    if (nf_nft_convert(src, nft_path, &o, err, sizeof(err)))
        return -1;
    o.calib_text = text_path;
    if (nf_nft_convert(src, calib_path, &o, err, sizeof(err))) {
        fprintf(stderr, "%s\n", err);
        return -1;
    }
    return 0;
}

static int teardown(void **state)
{
    (void)state;
    unlink(nft_path);
    unlink(calib_path);
    unlink(text_path);
    return 0;
}

static void need_model(void)
{
    if (!nft_path[0])
        skip();
}

static const int32_t toks[] = {1, 403, 407, 261, 378, 426, 275, 260, 395, 338, 286, 383, 285};
#define N_TOKS ((int)(sizeof(toks) / sizeof(toks[0])))

static void test_all_groups_equal_exact(void **state)
{
    (void)state;
    need_model();
    char err[512];
    struct nf_model *m;
    struct nf_nft *f;
    struct nf_sparse *s;
    struct nf_ctx *a, *b;
    assert_int_equal(nf_model_load(&m, nft_path, err, sizeof(err)), 0);
    assert_int_equal(nf_nft_open(&f, nft_path, false, err, sizeof(err)), 0);
    assert_int_equal(nf_sparse_create(&s, m, f, err, sizeof(err)), 0);
    assert_int_equal(nf_ctx_create(&a, m, 64, 1), 0);
    assert_int_equal(nf_ctx_create(&b, m, 64, 1), 0);
    const int V = m->hp.n_vocab;
    double worst = 0, worst_half = 0;
    for (int i = 0; i < N_TOKS; i++) {
        /* Exact mode one token at a time, as nanoflowctl run decodes. */
        assert_int_equal(nf_ctx_eval(a, &toks[i], 1), 0);
        s->sparsity = 0.0f;
        assert_int_equal(nf_sparse_eval(s, b, toks[i]), 0);
        int am = 0, bm = 0;
        for (int j = 0; j < V; j++) {
            double d = fabs((double)a->logits[j] - b->logits[j]);
            worst = d > worst ? d : worst;
            am = a->logits[j] > a->logits[am] ? j : am;
            bm = b->logits[j] > b->logits[bm] ? j : bm;
        }
        assert_int_equal(am, bm);
    }
    /* Only the down projection's summation order may differ (single runs of the same dots).
     * Its last-bit differences are amplified by the F16 roundings of K, V, Q and the softmax
     * (up to 3.1e-4 with the llama.cpp-exact attention/SwiGLU/RoPE numerics of nf_ctx_eval). */
    assert_true(worst < 1e-3);
    /* At 50% sparsity the logits move (the mask is used) and half the groups are zero. */
    nf_ctx_reset(a);
    nf_ctx_reset(b);
    for (int i = 0; i < N_TOKS; i++) {
        assert_int_equal(nf_ctx_eval(a, &toks[i], 1), 0);
        s->sparsity = 0.5f;
        assert_int_equal(nf_sparse_eval(s, b, toks[i]), 0);
        for (int j = 0; j < V; j++) {
            double d = fabs((double)a->logits[j] - b->logits[j]);
            worst_half = d > worst_half ? d : worst_half;
        }
    }
    assert_true(worst_half > 1e-3);
    const int G = s->group[m->hp.n_layer - 1], n = m->hp.n_ff / G;
    int kept = 0, zero_ok = 1;
    for (int g = 0; g < n; g++) {
        kept += s->mask[g];
        for (int i = 0; i < G && !s->mask[g]; i++)
            zero_ok &= b->hb[g * G + i] == 0.0f;
    }
    assert_int_equal(kept, nf_sparse_keep(n, 0.5f));
    assert_true(zero_ok);
    nf_ctx_free(a);
    nf_ctx_free(b);
    nf_sparse_free(s);
    nf_nft_close(f);
    nf_model_free(m);
}

static void test_topk(void **state)
{
    (void)state;
    const float sc[6] = {0.5f, 3.0f, -1.0f, 3.0f, 2.0f, 0.0f};
    uint8_t mask[6];
    int idx[6];
    nf_topk_mask(mask, sc, 6, 3, idx);
    const uint8_t want[6] = {0, 1, 0, 1, 1, 0};
    assert_memory_equal(mask, want, 6);
    nf_topk_mask(mask, sc, 6, 1, idx); /* a tie goes to the lower index */
    assert_int_equal(mask[1], 1);
    assert_int_equal(mask[3], 0);
}

/* nf_sparse_keep: (1 - s) * n rounded half up in double, clamped to [1, n]; n when s <= 0. */
static void test_keep(void **state)
{
    (void)state;
    assert_int_equal(nf_sparse_keep(43, 0.5f), 22);
    assert_int_equal(nf_sparse_keep(43, 0.8f), 9);
    assert_int_equal(nf_sparse_keep(4, 0.99f), 1);
    /* Sparsity 0, negative or NaN computes every group; n = 0 keeps nothing. */
    assert_int_equal(nf_sparse_keep(4, 0.0f), 4);
    assert_int_equal(nf_sparse_keep(4, -0.5f), 4);
    assert_int_equal(nf_sparse_keep(4, NAN), 4);
    assert_int_equal(nf_sparse_keep(0, 0.5f), 0);
    assert_int_equal(nf_sparse_keep(0, 0.0f), 0);
    /* Sparsity 1 (refused by every caller) and tiny n still keep one group. */
    assert_int_equal(nf_sparse_keep(4, 1.0f), 1);
    assert_int_equal(nf_sparse_keep(1, 0.7f), 1);
    assert_int_equal(nf_sparse_keep(1, 0.3f), 1);
    assert_int_equal(nf_sparse_keep(2, 0.7f), 1);
    assert_int_equal(nf_sparse_keep(3, 0.5f), 2);
    /* Halves go up, not to even (lrintf would give 4 and 22). */
    assert_int_equal(nf_sparse_keep(6, 0.25f), 5);
    assert_int_equal(nf_sparse_keep(45, 0.5f), 23);
    /* Float sparsities that are not exact: 0.7f is 0.69999999 and 0.1f 0.10000000149, yet the
     * product lands on the integer a decimal reading expects. */
    assert_int_equal(nf_sparse_keep(10, 0.7f), 3);
    assert_int_equal(nf_sparse_keep(10, 0.3f), 7);
    assert_int_equal(nf_sparse_keep(10, 0.1f), 9);
    assert_int_equal(nf_sparse_keep(10, 0.9f), 1);
    assert_int_equal(nf_sparse_keep(128, 0.1f), 115);
    assert_int_equal(nf_sparse_keep(128, 0.7f), 38);
    assert_int_equal(nf_sparse_keep(128, 0.5f), 64);
    /* 7B: 11008 neurons, 344 groups of 32. Compute's old ceiling kept 104 here. */
    assert_int_equal(nf_sparse_keep(344, 0.7f), 103);
    assert_int_equal(nf_sparse_keep(344, 0.1f), 310);
    assert_int_equal(nf_sparse_keep(11008, 0.7f), 3302);
    assert_int_equal(nf_sparse_keep(11008, 0.1f), 9907);
    /* Everywhere: within half a group of (1 - s) n, in [1, n], never more as s grows. */
    for (uint32_t n = 1; n <= 2048; n++) {
        uint32_t prev = n;
        for (int j = 1; j < 100; j++) {
            const float sp = (float)j / 100.0f;
            const uint32_t k = nf_sparse_keep(n, sp);
            assert_true(k >= 1 && k <= n && k <= prev);
            if ((1.0 - sp) * n >= 1.0)
                assert_true(fabs((double)k - (1.0 - sp) * n) <= 0.5 + 1e-9);
            prev = k;
        }
    }
}

/* nf_sparse_pick: whole tiles by mean score while they fit, the rest from the next tile's best
 * groups, ties to the lower index, k clamped to n. */
static void test_pick(void **state)
{
    (void)state;
    /* Three tiles of four groups; means 1.0, 3.0, 0.5: tile 1 first, then tile 0. */
    const float gs[12] = {1.0f, 2.0f, 0.5f, 0.5f, 3.0f, 3.0f, 3.0f, 3.0f, 0.5f, 0.5f, 0.5f, 0.5f};
    const uint32_t bound[4] = {0, 4, 8, 12};
    float tscore[3];
    uint32_t order[3 + 12], out[12];
    assert_int_equal(nf_sparse_pick(gs, 12, bound, 3, 6, tscore, order, out), 6);
    const uint32_t want6[6] = {4, 5, 6, 7, 1, 0};
    assert_memory_equal(out, want6, sizeof(want6));
    /* Exactly two tiles: no partial tile. */
    assert_int_equal(nf_sparse_pick(gs, 12, bound, 3, 8, tscore, order, out), 8);
    const uint32_t want8[8] = {4, 5, 6, 7, 0, 1, 2, 3};
    assert_memory_equal(out, want8, sizeof(want8));
    /* k = 0 picks nothing; k above n is clamped to every group, tile by tile. */
    assert_int_equal(nf_sparse_pick(gs, 12, bound, 3, 0, tscore, order, out), 0);
    assert_int_equal(nf_sparse_pick(gs, 12, bound, 3, 99, tscore, order, out), 12);
    const uint32_t want12[12] = {4, 5, 6, 7, 0, 1, 2, 3, 8, 9, 10, 11};
    assert_memory_equal(out, want12, sizeof(want12));
    /* Ties: equal tile means go to the lower tile, equal groups to the lower group. */
    const float flat[6] = {1.0f, 1.0f, 1.0f, 1.0f, 1.0f, 1.0f};
    const uint32_t b3[4] = {0, 2, 4, 6};
    assert_int_equal(nf_sparse_pick(flat, 6, b3, 3, 3, tscore, order, out), 3);
    const uint32_t want_tie[3] = {0, 1, 2};
    assert_memory_equal(out, want_tie, sizeof(want_tie));
    /* The best tile does not fit in k: its best groups fill k (no smaller tile jumps ahead). */
    const float gu[10] = {0.1f, 0.1f, 5.0f, 1.0f, 4.0f, 2.0f, 3.0f, 4.0f, 0.2f, 0.2f};
    const uint32_t bu[4] = {0, 2, 8, 10};
    assert_int_equal(nf_sparse_pick(gu, 10, bu, 3, 3, tscore, order, out), 3);
    const uint32_t want_u[3] = {2, 4, 7};
    assert_memory_equal(out, want_u, sizeof(want_u));
    /* An empty tile scores 0 and contributes nothing. */
    const float ge[4] = {-1.0f, -1.0f, 2.0f, 2.0f};
    const uint32_t be[4] = {0, 2, 2, 4};
    assert_int_equal(nf_sparse_pick(ge, 4, be, 3, 4, tscore, order, out), 4);
    const uint32_t want_e[4] = {2, 3, 0, 1};
    assert_memory_equal(out, want_e, sizeof(want_e));
}

static void test_calibration_section(void **state)
{
    (void)state;
    need_model();
    char err[512];
    struct nf_nft *f;
    assert_int_equal(nf_nft_open(&f, nft_path, false, err, sizeof(err)), 0);
    assert_null(nf_nft_calib(f));
    struct nf_nft_calib_layer cl;
    assert_int_equal(nf_nft_calib_layer(f, 0, &cl), NF_ENOKEY);
    nf_nft_close(f);

    assert_int_equal(nf_nft_open(&f, calib_path, false, err, sizeof(err)), 0);
    assert_int_equal(f->hdr.minor, NF_NFT_MINOR);
    assert_int_equal(nf_nft_verify(f, NULL, NULL), 0);
    const struct nf_nft_calib_header *ch = nf_nft_calib(f);
    assert_non_null(ch);
    assert_int_equal(ch->n_levels, 3);
    assert_true(ch->n_tokens > 50);
    for (uint32_t il = 0; il < f->hdr.n_layer; il++) {
        assert_int_equal(nf_nft_calib_layer(f, il, &cl), 0);
        assert_int_equal(cl.n_groups * cl.group, f->hdr.n_ff);
        for (uint32_t l = 1; l < ch->n_levels; l++) {
            assert_true(cl.act_thr[l] >= cl.act_thr[l - 1]);
            assert_true(cl.pred_thr[l] >= cl.pred_thr[l - 1]);
        }
        /* About a fraction (1 - s) of (token, group) pairs lie above each level's threshold. */
        for (uint32_t l = 0; l < ch->n_levels; l++) {
            double mean = 0;
            for (uint32_t g = 0; g < cl.n_groups; g++)
                mean += cl.freq[(size_t)l * cl.n_groups + g];
            mean /= cl.n_groups;
            assert_true(fabs(mean - (1.0 - ch->levels[l])) < 0.05);
        }
        /* Hot first: frequency at the top level never increases along the order. */
        const float *top = cl.freq + (size_t)(ch->n_levels - 1) * cl.n_groups;
        for (uint32_t g = 1; g < cl.n_groups; g++)
            assert_true(top[cl.order[g]] <= top[cl.order[g - 1]]);
    }
    nf_nft_close(f);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_topk),
        cmocka_unit_test(test_keep),
        cmocka_unit_test(test_pick),
        cmocka_unit_test(test_all_groups_equal_exact),
        cmocka_unit_test(test_calibration_section),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
