/* test_kv_quant.c - the quantized KV cache (kv_quant.h): its V kernels against their scalar
 * reference, and attention over q8_0 / q4_0 caches against a reference that quantizes,
 * dequantizes and attends in double precision. */
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

#include "kv_quant.h"
#include "model.h"
#include "nf_err.h"
#include "nft.h"
#include "stack.h"

/* Attention output vs the double-precision reference, relative to the largest |value| of the
 * head's V: the kernel sums in float (scores, softmax, the weighted V rows) and, with an F16 V,
 * rounds the probabilities to F16 as llama.cpp does (relative error 2^-11 each). */
#define TOL_ATTN_QV  1e-5 /* quantized V: F32 probabilities and fused sums */
#define TOL_ATTN_F16 2e-3 /* F16 V: probabilities rounded to F16 */

static uint64_t rng_state = 0x9E3779B97F4A7C15ull;
static float frand(void) /* uniform in [-1, 1) */
{
    rng_state ^= rng_state << 13;
    rng_state ^= rng_state >> 7;
    rng_state ^= rng_state << 17;
    return (float)((rng_state >> 40) * (2.0 / 16777216.0) - 1.0);
}

/* The AVX2 V kernels are bit-identical to the reference (one fused product per element). */
static void test_axpy_simd_vs_ref(void **state)
{
    (void)state;
    if (nf_cpu_best_isa() < NF_ISA_AVX2)
        skip();
    enum nf_type types[] = {NF_TYPE_Q8_0, NF_TYPE_Q4_0};
    nf_kv_axpy_fn ref[] = {nf__kv_axpy_q8_0_ref, nf__kv_axpy_q4_0_ref};
    nf_kv_axpy_fn simd[] = {nf__kv_axpy_q8_0_avx2, nf__kv_axpy_q4_0_avx2};
    for (int ti = 0; ti < 2; ti++)
        for (int n = 32; n <= 256; n += 32) {
            float src[256] = {0}, init[256] = {0}, a[256] = {0}, b[256] = {0}, deq[256] = {0};
            uint8_t row[256 * 2];
            for (int i = 0; i < n; i++)
                src[i] = frand() * (i % 7 == 0 ? 40.0f : 1.0f);
            nf_kv_store_row(types[ti], row, src, n);
            for (int i = 0; i < n; i++)
                init[i] = a[i] = b[i] = frand();
            const float w = frand();
            ref[ti](a, w, row, n);
            simd[ti](b, w, row, n);
            assert_memory_equal(a, b, sizeof(float) * (size_t)n);
            /* and the reference is what it says: out + w * dequant(row), one rounding */
            nf_kv_load_row(types[ti], deq, row, n);
            for (int i = 0; i < n; i++)
                assert_true(a[i] == fmaf(w, deq[i], init[i]));
        }
}

/* The F16 V kernels of the walk: the AVX2 paths give the reference's bits at every length
 * (the 8-wide loop and its tail), and the reference is one rounding of the exact half. */
static void test_f16_simd_vs_ref(void **state)
{
    (void)state;
    if (nf_cpu_best_isa() < NF_ISA_AVX2)
        skip();
    for (int n = 1; n <= 150; n++) {
        float init[150], a[150], b[150];
        nf_fp16_t row[150];
        for (int i = 0; i < n; i++) {
            row[i] = nf_fp32_to_fp16(frand() * (i % 5 == 0 ? 300.0f : 1.0f));
            init[i] = a[i] = b[i] = frand();
        }
        const float w = frand();
        nf__kv_axpy_f16_ref(a, w, row, n);
        nf__kv_axpy_f16_avx2(b, w, row, n);
        assert_memory_equal(a, b, sizeof(float) * (size_t)n);
        for (int i = 0; i < n; i++)
            assert_true(a[i] == fmaf(w, nf_fp16_to_fp32(row[i]), init[i]));
        nf__kv_mul_f16_ref(a, w, row, n);
        nf__kv_mul_f16_avx2(b, w, row, n);
        assert_memory_equal(a, b, sizeof(float) * (size_t)n);
        for (int i = 0; i < n; i++)
            assert_true(a[i] == w * nf_fp16_to_fp32(row[i]));
    }
}

/* A row stored as q8_0 / q4_0 comes back within the type's rounding: half a step of
 * max|x| / 127 for q8_0; for q4_0 a step of max|x| / 8 (the value of largest magnitude maps to
 * -8 exactly, so one of the opposite sign and the same size is clamped to 7). */
static void test_store_load(void **state)
{
    (void)state;
    float src[128], out[128];
    uint8_t row[128 * 2];
    for (int i = 0; i < 128; i++)
        src[i] = frand() * 3.0f;
    const enum nf_type types[] = {NF_TYPE_F16, NF_TYPE_Q8_0, NF_TYPE_Q4_0};
    const float step[] = {0.002f, 3.0f / 127 * 0.51f, 3.0f / 8 * 1.01f};
    for (int t = 0; t < 3; t++) {
        nf_kv_store_row(types[t], row, src, 128);
        nf_kv_load_row(types[t], out, row, 128);
        for (int i = 0; i < 128; i++)
            assert_true(fabsf(out[i] - src[i]) <= step[t]);
    }
    assert_int_equal(nf_kv_row_bytes(NF_TYPE_Q8_0, 128), 4 * 34);
    assert_int_equal(nf_kv_row_bytes(NF_TYPE_Q4_0, 128), 4 * 18);
    enum nf_type t;
    assert_int_equal(nf_kv_type_parse("q8_0", &t), 0);
    assert_int_equal(t, NF_TYPE_Q8_0);
    assert_int_equal(nf_kv_type_parse("q4_1", &t), NF_EUSAGE);
    assert_int_equal(nf_kv_type_parse("", &t), NF_EUSAGE);
}

static struct nf_model *load(const char *name)
{
    char path[1024], err[512];
    snprintf(path, sizeof(path), "%s/models/%s", NF_SHARED_DIR, name);
    if (access(path, R_OK) != 0)
        return NULL;
    struct nf_model *m = NULL;
    if (nf_model_load(&m, path, err, sizeof(err)) < 0)
        fail_msg("loading %s: %s", path, err);
    return m;
}

/* Attention of every head over a cache of random rows of the given types, against the
 * reference: K and V rows quantized by the same quantizer, dequantized, Q quantized to q8_0
 * and dequantized for a quantized K (rounded to F16 for an F16 K), softmax and weighted sum in
 * double. */
static void attn_case(struct nf_ctx *c, enum nf_type tk, enum nf_type tv, int n_pos, int n_tok)
{
    char err[256];
    assert_int_equal(nf_ctx_set_kv_types(c, tk, tv, err, sizeof(err)), 0);
    const struct nf_hparams *hp = &c->m->hp;
    const int hd = hp->head_dim, kvd = hp->n_head_kv * hd, qd = hp->n_head * hd;
    const int il = 1, pos0 = n_pos - n_tok;
    const size_t kr = nf_kv_row_bytes(tk, kvd), vr = nf_kv_row_bytes(tv, kvd);
    float *kf = malloc(sizeof(float) * (size_t)n_pos * kvd);
    float *vf = malloc(sizeof(float) * (size_t)n_pos * kvd);
    float *qf = malloc(sizeof(float) * (size_t)n_tok * qd);
    assert_true(kf && vf && qf);
    for (int p = 0; p < n_pos; p++) {
        float row[4096];
        for (int i = 0; i < kvd; i++)
            row[i] = frand() * 2.0f;
        nf_kv_store_row(tk, (char *)c->k_cache + ((size_t)il * c->n_ctx + p) * kr, row, kvd);
        nf_kv_load_row(tk, kf + (size_t)p * kvd,
                       (char *)c->k_cache + ((size_t)il * c->n_ctx + p) * kr, kvd);
        for (int i = 0; i < kvd; i++)
            row[i] = frand() * 2.0f;
        nf_kv_store_row(tv, (char *)c->v_cache + ((size_t)il * c->n_ctx + p) * vr, row, kvd);
        nf_kv_load_row(tv, vf + (size_t)p * kvd,
                       (char *)c->v_cache + ((size_t)il * c->n_ctx + p) * vr, kvd);
    }
    for (int i = 0; i < n_tok * qd; i++)
        c->q[i] = frand() * 2.0f;
    memcpy(qf, c->q, sizeof(float) * (size_t)n_tok * qd);
    c->attn_sinks = NULL;
    nf_attn_heads(c, il, pos0, n_tok);

    const float scale = 1.0f / sqrtf((float)hd);
    double *sc = malloc(sizeof(double) * (size_t)n_pos);
    for (int t = 0; t < n_tok; t++)
        for (int h = 0; h < hp->n_head; h++) {
            const int kvh = h / (hp->n_head / hp->n_head_kv), pos = pos0 + t;
            float qh[512];
            uint8_t qq[512 * 2];
            if (tk == NF_TYPE_F16) {
                for (int d = 0; d < hd; d++)
                    qh[d] = nf_fp16_to_fp32(nf_fp32_to_fp16(qf[(size_t)t * qd + h * hd + d]));
            } else {
                nf_kv_store_row(NF_TYPE_Q8_0, qq, qf + (size_t)t * qd + h * hd, hd);
                nf_kv_load_row(NF_TYPE_Q8_0, qh, qq, hd);
            }
            double mx = -INFINITY, sum = 0, vmax = 0;
            for (int p = 0; p <= pos; p++) {
                double s = 0;
                for (int d = 0; d < hd; d++)
                    s += (double)qh[d] * kf[(size_t)p * kvd + kvh * hd + d];
                sc[p] = s * scale;
                mx = sc[p] > mx ? sc[p] : mx;
            }
            for (int p = 0; p <= pos; p++) {
                sc[p] = exp(sc[p] - mx);
                sum += sc[p];
            }
            for (int d = 0; d < hd; d++) {
                double o = 0;
                for (int p = 0; p <= pos; p++) {
                    const double v = vf[(size_t)p * kvd + kvh * hd + d];
                    o += sc[p] / sum * v;
                    vmax = fabs(v) > vmax ? fabs(v) : vmax;
                }
                const double got = c->att[(size_t)t * qd + h * hd + d];
                const double tol = (tv == NF_TYPE_F16 ? TOL_ATTN_F16 : TOL_ATTN_QV) * vmax;
                if (fabs(got - o) > tol)
                    fail_msg("K %s V %s, %d tokens at %d: token %d head %d dim %d: %.7f, "
                             "reference %.7f (tolerance %.2g)",
                             nf_kv_type_name(tk), nf_kv_type_name(tv), n_tok, pos0, t, h, d, got, o,
                             tol);
            }
        }
    free(sc);
    free(kf);
    free(vf);
    free(qf);
}

static void test_attention_vs_reference(void **state)
{
    (void)state;
    struct nf_model *m = load("zoo-Q8_0.gguf"); /* head_dim 32, 8 heads, 4 KV heads */
    if (!m) {
        print_message("skipping: zoo-Q8_0.gguf is not in the shared models\n");
        skip();
    }
    struct nf_ctx *c = NULL;
    assert_int_equal(nf_ctx_create(&c, m, 160, 2), 0);
    const enum nf_type ty[] = {NF_TYPE_F16, NF_TYPE_Q8_0, NF_TYPE_Q4_0};
    for (int a = 0; a < 3; a++)
        for (int b = 0; b < 3; b++) {
            if (ty[a] == NF_TYPE_F16 && ty[b] == NF_TYPE_F16)
                continue;                        /* the llama.cpp path, checked by the goldens */
            attn_case(c, ty[a], ty[b], 1, 1);    /* first token */
            attn_case(c, ty[a], ty[b], 77, 1);   /* a decode step */
            attn_case(c, ty[a], ty[b], 150, 20); /* a prompt chunk */
        }
    nf_ctx_free(c);
    nf_model_free(m);
}

/* A prompt chunk over a quantized cache runs in query tiles (nf_attn_tile_q): the same bits as
 * one (token, head) at a time (c->attn_untiled), for every pair of quantized types, chunks
 * shorter and longer than a tile, at the start and deep in the cache. */
static void test_prompt_tiles_match_heads(void **state)
{
    (void)state;
    struct nf_model *m = load("zoo-Q8_0.gguf"); /* head_dim 32, 8 heads, 4 KV heads */
    if (!m)
        skip();
    char err[256];
    struct nf_ctx *c = NULL;
    assert_int_equal(nf_ctx_create(&c, m, 160, 2), 0);
    const struct nf_hparams *hp = &m->hp;
    const int kvd = hp->n_head_kv * hp->head_dim, qd = hp->n_head * hp->head_dim, il = 1;
    const enum nf_type ty[] = {NF_TYPE_Q8_0, NF_TYPE_Q4_0};
    const int cases[][2] = {{2, 2}, {150, 20}, {32, 32}, {160, 31}, {9, 3}}; /* n_pos, n_tok */
    float *want = malloc(sizeof(float) * (size_t)NF_MAX_BATCH * 2 * qd);
    assert_non_null(want);
    for (int a = 0; a < 2; a++)
        for (int b = 0; b < 2; b++)
            for (size_t k = 0; k < sizeof(cases) / sizeof(cases[0]); k++) {
                const int n_pos = cases[k][0], n_tok = cases[k][1], pos0 = n_pos - n_tok;
                assert_int_equal(nf_ctx_set_kv_types(c, ty[a], ty[b], err, sizeof(err)), 0);
                const size_t kr = nf_kv_row_bytes(ty[a], kvd), vr = nf_kv_row_bytes(ty[b], kvd);
                for (int p = 0; p < n_pos; p++) {
                    float row[4096];
                    for (int i = 0; i < kvd; i++)
                        row[i] = frand() * 2.0f;
                    nf_kv_store_row(ty[a], (char *)c->k_cache + ((size_t)il * c->n_ctx + p) * kr,
                                    row, kvd);
                    for (int i = 0; i < kvd; i++)
                        row[i] = frand() * 2.0f;
                    nf_kv_store_row(ty[b], (char *)c->v_cache + ((size_t)il * c->n_ctx + p) * vr,
                                    row, kvd);
                }
                for (int i = 0; i < n_tok * qd; i++)
                    c->q[i] = frand() * 2.0f;
                c->attn_sinks = NULL;
                c->attn_untiled = true;
                nf_attn_heads(c, il, pos0, n_tok);
                memcpy(want, c->att, sizeof(float) * (size_t)n_tok * qd);
                memset(c->att, 0, sizeof(float) * (size_t)n_tok * qd);
                c->attn_untiled = false;
                nf_attn_heads(c, il, pos0, n_tok);
                for (int i = 0; i < n_tok * qd; i++)
                    if (memcmp(&want[i], &c->att[i], sizeof(float)) != 0)
                        fail_msg("K %s V %s, %d tokens at %d: output %d: tiles %.9g, heads %.9g",
                                 nf_kv_type_name(ty[a]), nf_kv_type_name(ty[b]), n_tok, pos0, i,
                                 c->att[i], want[i]);
            }
    free(want);
    nf_ctx_free(c);
    nf_model_free(m);
}

/* Per-row passes (speculative verification) give each row what a one-token step gives, bit
 * for bit, with quantized caches too; and the cache takes the types' bytes. */
static void test_rows_match_steps(void **state)
{
    (void)state;
    struct nf_model *m = load("zoo-Q8_0.gguf");
    if (!m)
        skip();
    char err[256];
    struct nf_ctx *a = NULL, *b = NULL;
    assert_int_equal(nf_ctx_create(&a, m, 64, 2), 0);
    assert_int_equal(nf_ctx_create(&b, m, 64, 2), 0);
    const size_t f16 = nf_ctx_kv_bytes(a);
    assert_int_equal(nf_ctx_set_kv_types(a, NF_TYPE_Q8_0, NF_TYPE_Q4_0, err, sizeof(err)), 0);
    assert_int_equal(nf_ctx_set_kv_types(b, NF_TYPE_Q8_0, NF_TYPE_Q4_0, err, sizeof(err)), 0);
    /* per row of 128 values: F16 256 bytes, q8_0 136, q4_0 72 */
    assert_int_equal(nf_ctx_kv_bytes(a) * 512, f16 * (136 + 72));
    const int32_t toks[] = {1, 403, 407, 261, 378, 103, 458, 98};
    const int n = 8, nv = m->hp.n_vocab;
    float *rows = malloc(sizeof(float) * (size_t)n * nv);
    assert_non_null(rows);
    assert_int_equal(nf_ctx_eval(a, toks, 3), 0);
    assert_int_equal(nf_ctx_eval_rows(a, toks + 3, n - 3, rows), 0);
    assert_int_equal(nf_ctx_eval(b, toks, 3), 0);
    for (int i = 3; i < n; i++) {
        assert_int_equal(nf_ctx_eval(b, toks + i, 1), 0);
        assert_memory_equal(rows + (size_t)(i - 3) * nv, b->logits, sizeof(float) * (size_t)nv);
    }
    free(rows);
    nf_ctx_free(a);
    nf_ctx_free(b);
    nf_model_free(m);
}

/* Models that cannot keep a quantized cache are refused with one line. */
static void test_refusals(void **state)
{
    (void)state;
    struct nf_model *m = load("stories260K.gguf"); /* head_dim 8 */
    if (!m)
        skip();
    char err[256] = "";
    struct nf_ctx *c = NULL;
    assert_int_equal(nf_ctx_create(&c, m, 32, 1), 0);
    assert_int_equal(nf_ctx_set_kv_types(c, NF_TYPE_Q8_0, NF_TYPE_F16, err, sizeof(err)),
                     NF_EUSAGE);
    assert_non_null(strstr(err, "multiple of 32"));
    assert_null(strchr(err, '\n'));
    assert_int_equal(nf_ctx_set_kv_types(c, NF_TYPE_Q4_1, NF_TYPE_F16, err, sizeof(err)),
                     NF_EUSAGE);
    assert_int_equal(nf_ctx_set_kv_types(c, NF_TYPE_F16, NF_TYPE_F16, err, sizeof(err)), 0);
    struct nf_hparams hp = m->hp;
    hp.n_lora_kv = 64;
    hp.head_dim = 80;
    assert_int_equal(nf_kv_types_check(&hp, NF_TYPE_Q8_0, NF_TYPE_F16, err, sizeof(err)),
                     NF_EUSAGE);
    assert_non_null(strstr(err, "latent"));
    nf_ctx_free(c);
    nf_model_free(m);
}

/* The budget plan counts the cache types' bytes: per token a q8_0 row is 34/64 of an f16 one
 * and a q4_0 row 18/64, so under a budget that caps the context the quantized caches get a
 * longer one, and at a fixed context a larger pool. */
static void test_plan_counts_types(void **state)
{
    (void)state;
    char path[1024], err[512];
    snprintf(path, sizeof(path), "%s/models/stories260K.nft", NF_SHARED_DIR);
    struct nf_nft *f = NULL;
    if (access(path, R_OK) != 0 || nf_nft_open(&f, path, false, err, sizeof(err)) < 0)
        skip();
    /* stories260K: 5 layers, K and V rows of 32 values (f16 64 bytes, q8_0 34, q4_0 18) */
    struct nf_stack_plan p16, p8, p4, pv;
    const uint64_t ram = 64ull << 20;
    assert_int_equal(nf_stack_plan_kv(f, ram, 1u << 20, 1, 1, 0, NF_TYPE_F16, NF_TYPE_F16, 0, &p16,
                                      err, sizeof(err)),
                     0);
    assert_int_equal(nf_stack_plan_kv(f, ram, 1u << 20, 1, 1, 0, NF_TYPE_Q8_0, NF_TYPE_Q8_0, 0, &p8,
                                      err, sizeof(err)),
                     0);
    assert_int_equal(nf_stack_plan_kv(f, ram, 1u << 20, 1, 1, 0, NF_TYPE_Q4_0, NF_TYPE_Q4_0, 0, &p4,
                                      err, sizeof(err)),
                     0);
    assert_int_equal(nf_stack_plan_kv(f, ram, 1u << 20, 1, 1, 0, NF_TYPE_Q8_0, NF_TYPE_F16, 0, &pv,
                                      err, sizeof(err)),
                     0);
    assert_int_equal(p16.kv_token_bytes, 5 * (64 + 64));
    assert_int_equal(p8.kv_token_bytes, 5 * (34 + 34));
    assert_int_equal(p4.kv_token_bytes, 5 * (18 + 18));
    assert_int_equal(pv.kv_token_bytes, 5 * (34 + 64));
    assert_int_equal(p8.type_k, NF_TYPE_Q8_0);
    /* the request (2^20) is capped by the budget, less so for the smaller rows */
    assert_true(p16.n_ctx < (1u << 20));
    assert_true(p8.n_ctx > p16.n_ctx && p4.n_ctx > p8.n_ctx);
    assert_true(p16.kv_bytes == (uint64_t)p16.n_ctx * p16.kv_token_bytes);
    /* the f16 plan is the one nf_stack_plan_seq_ub made before the types */
    struct nf_stack_plan old;
    assert_int_equal(nf_stack_plan_seq_ub(f, ram, 1u << 20, 1, 1, 0, &old, err, sizeof(err)), 0);
    assert_int_equal(old.n_ctx, p16.n_ctx);
    assert_int_equal(old.pool_bytes, p16.pool_bytes);
    /* at a fixed context the bytes saved go to the pool */
    assert_int_equal(nf_stack_plan_kv(f, 64ull << 20, 128, 1, 1, 0, NF_TYPE_F16, NF_TYPE_F16, 0,
                                      &p16, err, sizeof(err)),
                     0);
    assert_int_equal(nf_stack_plan_kv(f, 64ull << 20, 128, 1, 1, 0, NF_TYPE_Q4_0, NF_TYPE_Q4_0, 0,
                                      &p4, err, sizeof(err)),
                     0);
    assert_true(p4.kv_bytes < p16.kv_bytes && p4.pool_bytes >= p16.pool_bytes);
    /* a type the cache cannot hold is refused */
    assert_int_equal(
        nf_stack_plan_kv(f, ram, 128, 1, 1, 0, NF_TYPE_Q4_1, NF_TYPE_F16, 0, &p4, err, sizeof(err)),
        NF_EUSAGE);
    nf_nft_close(f);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_axpy_simd_vs_ref),  cmocka_unit_test(test_f16_simd_vs_ref),
        cmocka_unit_test(test_store_load),        cmocka_unit_test(test_attention_vs_reference),
        cmocka_unit_test(test_rows_match_steps),  cmocka_unit_test(test_refusals),
        cmocka_unit_test(test_plan_counts_types), cmocka_unit_test(test_prompt_tiles_match_heads),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
