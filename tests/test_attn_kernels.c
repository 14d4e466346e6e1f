/* test_attn_kernels.c - the one-token attention kernels (attn.h) and the forward pass's F32/F16
 * dot (nf_ggml_dot_cols_for, quants_rows.h): every SIMD path the CPU has, bit for bit against
 * its scalar reference, for lengths 1..300 (bodies of 64, tails, lengths under 64), masked
 * cells (nv < n) whose rows hold NaN so that any read of them shows, V column counts with
 * partial vectors, and values of mixed magnitude so that a different summation order gives
 * different bits (checked: a plain left-to-right sum differs from the reference on many). */
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "attn.h"
#include "quants_impl.h"
#include "quants_rows.h"

#define MAXN 300

static uint64_t rng_state = 0x2545f4914f6cdd1dull;

static double rng_unit(void)
{
    rng_state ^= rng_state << 13;
    rng_state ^= rng_state >> 7;
    rng_state ^= rng_state << 17;
    return (double)(rng_state >> 11) / (double)(1ull << 53);
}

/* A value whose magnitude spans 2^-6..2^6: sums of such values depend on their order. */
static float rng_val(void)
{
    return (float)((rng_unit() * 2.0 - 1.0) * ldexp(1.0, (int)(rng_unit() * 13.0) - 6));
}

static bool same(float a, float b)
{
    return memcmp(&a, &b, sizeof(a)) == 0;
}

/* The SIMD ISAs the CPU has (the scalar path is the reference itself). */
static int simd_isas(enum nf_isa *out)
{
    int k = 0;
    for (int i = NF_ISA_AVX2; i <= (int)nf_cpu_best_isa(); i++)
        out[k++] = (enum nf_isa)i;
    return k;
}

static void test_ggml_dot_cols(void **state)
{
    (void)state;
    enum nf_isa isas[NF_ISA_COUNT];
    const int ni = simd_isas(isas);
    enum { R = 3, C = 2 };
    const size_t bx = MAXN * 4 + 12, by = MAXN * 4 + 20; /* odd strides, in bytes */
    char *x = malloc(R * bx), *y = malloc(C * by);
    assert_true(x && y);
    int order_matters = 0;
    for (int f16 = 0; f16 < 2; f16++)
        for (int n = 1; n <= MAXN; n++) {
            for (int r = 0; r < R; r++)
                for (int i = 0; i < n; i++) {
                    const float v = rng_val();
                    if (f16)
                        ((nf_fp16_t *)(void *)(x + r * bx))[i] = nf_fp32_to_fp16(v);
                    else
                        ((float *)(void *)(x + r * bx))[i] = v;
                }
            for (int c = 0; c < C; c++)
                for (int i = 0; i < n; i++) {
                    const float v = rng_val();
                    if (f16)
                        ((nf_fp16_t *)(void *)(y + c * by))[i] = nf_fp32_to_fp16(v);
                    else
                        ((float *)(void *)(y + c * by))[i] = v;
                }
            float want[C][R];
            for (int r = 0; r < R; r++)
                for (int c = 0; c < C; c++) {
                    want[c][r] = nf__ggml_dot_ref(x + r * bx, y + c * by, f16, n, n);
                    float naive = 0.0f;
                    for (int i = 0; i < n; i++)
                        naive += f16 ? nf_fp16_to_fp32(((nf_fp16_t *)(void *)(x + r * bx))[i]) *
                                           nf_fp16_to_fp32(((nf_fp16_t *)(void *)(y + c * by))[i])
                                     : ((float *)(void *)(x + r * bx))[i] *
                                           ((float *)(void *)(y + c * by))[i];
                    order_matters += !same(naive, want[c][r]);
                }
            const enum nf_type t = f16 ? NF_TYPE_F16 : NF_TYPE_F32;
            for (int k = 0; k < ni; k++) {
                nf_vec_dot_mat_fn fn = nf_ggml_dot_cols_for(t, isas[k]);
                assert_non_null(fn);
                /* C query columns, then one (the decode scores' shape: one query, many K rows). */
                float got[C][R + 1];
                fn(n, &got[0][0], R + 1, x, bx, y, by, R, C);
                float one[R];
                fn(n, one, 1, x, bx, y, by, R, 1);
                for (int r = 0; r < R; r++)
                    for (int c = 0; c < C; c++)
                        if (!same(got[c][r], want[c][r]) || (c == 0 && !same(one[r], want[0][r])))
                            fail_msg("ggml dot %s n=%d isa %s (%d, %d): %.9g, reference %.9g",
                                     f16 ? "f16" : "f32", n, nf_isa_name(isas[k]), r, c,
                                     (double)got[c][r], (double)want[c][r]);
            }
        }
    printf("ggml dot: %d of %d reference sums differ from a left-to-right sum\n", order_matters,
           2 * MAXN * R * C);
    assert_true(order_matters > MAXN);
    assert_null(nf_ggml_dot_cols_for(NF_TYPE_Q8_0, NF_ISA_SCALAR));
    free(x);
    free(y);
}

static void test_kqv(void **state)
{
    (void)state;
    enum nf_isa isas[NF_ISA_COUNT];
    const int ni = simd_isas(isas);
    static const int nds[] = {1, 7, 8, 13, 16, 24, 40, 64, 128};
    const size_t vs = 128 + 5; /* halves between rows: odd */
    nf_fp16_t *v = malloc(sizeof(nf_fp16_t) * vs * MAXN);
    float *p = malloc(sizeof(float) * MAXN), *vcol = malloc(sizeof(float) * MAXN);
    float want[128], ref1[128], got[128 + 1];
    assert_true(v && p && vcol);
    int order_matters = 0, outputs = 0;
    for (int n = 1; n <= MAXN; n++) {
        const int nvs[] = {n, 1, n / 2 + 1, n > 3 ? n - 3 : 1, 1 + (int)(rng_unit() * n)};
        for (int j = 0; j < 5; j++) {
            const int nv = nvs[j];
            for (int i = 0; i < n; i++) {
                /* Cells from nv on are masked: NaN there shows any read of them. */
                for (size_t d = 0; d < vs; d++)
                    v[(size_t)i * vs + d] = i < nv ? nf_fp32_to_fp16(rng_val()) : 0x7e00;
                p[i] = i < nv ? nf_fp16_to_fp32(nf_fp32_to_fp16((float)rng_unit())) : NAN;
            }
            for (size_t q = 0; q < sizeof(nds) / sizeof(nds[0]); q++) {
                const int nd = nds[q];
                nf__attn_kqv_f16_ref(want, nd, v, vs, p, n, nv, vcol);
                /* The reference is nf__ggml_dot_ref on each gathered column. */
                for (int d = 0; d < nd; d++) {
                    float naive = 0.0f;
                    for (int i = 0; i < nv; i++) {
                        vcol[i] = nf_fp16_to_fp32(v[(size_t)i * vs + d]);
                        naive = fmaf(vcol[i], p[i], naive);
                    }
                    ref1[d] = nf__ggml_dot_ref(vcol, p, false, n, nv);
                    assert_true(same(ref1[d], want[d]));
                    assert_false(isnan(want[d]));
                    order_matters += !same(naive, want[d]);
                    outputs++;
                }
                for (int k = 0; k < ni; k++) {
                    got[nd] = -1234.5f;
                    nf_attn_kqv_for(isas[k])(got, nd, v, vs, p, n, nv, vcol);
                    assert_true(got[nd] == -1234.5f);
                    for (int d = 0; d < nd; d++)
                        if (!same(got[d], want[d]))
                            fail_msg("kqv n=%d nv=%d nd=%d isa %s column %d: %.9g, reference "
                                     "%.9g",
                                     n, nv, nd, nf_isa_name(isas[k]), d, (double)got[d],
                                     (double)want[d]);
                }
            }
        }
    }
    printf("kqv: %d of %d reference outputs differ from a left-to-right sum\n", order_matters,
           outputs);
    assert_true(order_matters > outputs / 4);
    free(v);
    free(p);
    free(vcol);
}

/* The query-tile KQV: every path bit for bit against the reference for 1..17 queries, odd
 * strides and column counts, each query seeing its own first cells with p = 0 past them (as a
 * causal mask leaves them), which must give the bits of the query's own length; rows past n
 * hold NaN, so a read of them shows, and the columns past nd must stay untouched. */
static void test_kqv_tile(void **state)
{
    (void)state;
    enum nf_isa isas[NF_ISA_COUNT];
    const int ni = simd_isas(isas);
    enum { NQ = 17, N = 150 };
    static const int nds[] = {1, 7, 16, 24, 40, 64, 100, 128};
    const size_t vs = 128 + 5, ldp = N + 3, ldo = 128 + 7;
    nf_fp16_t *v = malloc(sizeof(nf_fp16_t) * vs * (N + 16));
    float *p = malloc(sizeof(float) * ldp * NQ), *want = malloc(sizeof(float) * ldo * NQ),
          *got = malloc(sizeof(float) * ldo * NQ), *own = malloc(sizeof(float) * 128);
    float *lanes = aligned_alloc(64, sizeof(float) * NF_KQV_TILE_LANES);
    assert_true(v && p && want && got && own && lanes);
    for (int n = 1; n <= N; n += n < 40 ? 1 : 7) {
        for (int i = 0; i < n + 16; i++)
            for (size_t d = 0; d < vs; d++)
                v[(size_t)i * vs + d] = i < n ? nf_fp32_to_fp16(rng_val()) : 0x7e00;
        for (int nq = 1; nq <= NQ; nq += nq < 10 ? 1 : 7) {
            int seen[NQ];
            for (int q = 0; q < nq; q++) {
                /* The last query sees all n cells, the others fewer (a causal tile). */
                seen[q] = q == nq - 1 ? n : 1 + (int)(rng_unit() * n);
                for (int i = 0; i < (int)ldp; i++)
                    p[(size_t)q * ldp + i] =
                        i < seen[q] ? nf_fp16_to_fp32(nf_fp32_to_fp16((float)rng_unit()))
                        : i < n     ? 0.0f
                                    : NAN;
            }
            for (size_t k = 0; k < sizeof(nds) / sizeof(nds[0]); k++) {
                const int nd = nds[k];
                nf__attn_kqv_tile_ref(want, ldo, nd, v, vs, p, ldp, nq, n, lanes);
                for (int q = 0; q < nq; q++) {
                    nf__vec_dot_f16_cols_ref(seen[q], own, nd, v, vs, p + (size_t)q * ldp);
                    for (int d = 0; d < nd; d++) {
                        assert_false(isnan(want[(size_t)q * ldo + d]));
                        if (!same(own[d], want[(size_t)q * ldo + d]))
                            fail_msg("kqv tile n=%d q=%d: the zero cells change column %d", n, q,
                                     d);
                    }
                }
                for (int j = 0; j < ni; j++) {
                    for (size_t e = 0; e < ldo * NQ; e++)
                        got[e] = -1234.5f;
                    nf_attn_kqv_tile_for(isas[j])(got, ldo, nd, v, vs, p, ldp, nq, n, lanes);
                    for (int q = 0; q < NQ; q++)
                        for (int d = 0; d < (int)ldo; d++) {
                            const float g = got[(size_t)q * ldo + d];
                            if (q >= nq || d >= nd) {
                                assert_true(g == -1234.5f);
                                continue;
                            }
                            if (!same(g, want[(size_t)q * ldo + d]))
                                fail_msg("kqv tile n=%d nq=%d nd=%d isa %s q %d column %d: %.9g, "
                                         "reference %.9g",
                                         n, nq, nd, nf_isa_name(isas[j]), q, d, (double)g,
                                         (double)want[(size_t)q * ldo + d]);
                        }
                }
            }
        }
    }
    free(v);
    free(p);
    free(want);
    free(got);
    free(own);
    free(lanes);
}

static void test_softmax(void **state)
{
    (void)state;
    enum nf_isa isas[NF_ISA_COUNT];
    const int ni = simd_isas(isas);
    float x[MAXN], want[MAXN], got[MAXN];
    for (int n = 1; n <= MAXN; n++) {
        float mx = -INFINITY;
        for (int i = 0; i < n; i++) {
            /* Scores over a wide range, masked cells (-inf) and underflowing ones. */
            const double u = rng_unit();
            x[i] = u < 0.1 ? -INFINITY : u < 0.15 ? -120.0f : (float)(rng_unit() * 40.0 - 30.0);
            mx = x[i] > mx ? x[i] : mx;
        }
        if (mx == -INFINITY)
            mx = x[0] = 0.0f;
        const double sw = nf__softmax_exp_ref(want, x, n, mx);
        for (int k = 0; k < ni; k++) {
            memcpy(got, x, sizeof(float) * (size_t)n);
            const double sg = nf_softmax_exp_for(isas[k])(got, got, n, mx); /* in place */
            if (memcmp(&sg, &sw, sizeof(sg)) != 0)
                fail_msg("softmax n=%d isa %s: sum %.17g, reference %.17g", n, nf_isa_name(isas[k]),
                         sg, sw);
            for (int i = 0; i < n; i++)
                if (!same(got[i], want[i]))
                    fail_msg("softmax n=%d isa %s: y[%d] = %.9g, reference %.9g", n,
                             nf_isa_name(isas[k]), i, (double)got[i], (double)want[i]);
        }
        /* Scaled and rounded to F16 as the probabilities are, with subnormal halves. */
        const float inv = (float)(1.0 / sw) * (n % 3 == 0 ? 1e-6f : 1.0f);
        memcpy(want, got, sizeof(float) * (size_t)n);
        nf__scale_round_f16_ref(want, n, inv);
        for (int k = 0; k < ni; k++) {
            float r[MAXN + 1];
            memcpy(r, got, sizeof(float) * (size_t)n);
            r[n] = -1234.5f;
            nf_scale_round_f16_for(isas[k])(r, n, inv);
            assert_true(r[n] == -1234.5f);
            for (int i = 0; i < n; i++)
                if (!same(r[i], want[i]))
                    fail_msg("scale_round n=%d isa %s: [%d] = %.9g, reference %.9g", n,
                             nf_isa_name(isas[k]), i, (double)r[i], (double)want[i]);
        }
    }
}

/* ggml_v_expf's whole range through the softmax kernels: every float step of x - max from -200
 * to 100 (underflow to 0, subnormal results, overflow to infinity past 88.7). */
static void test_expf_range(void **state)
{
    (void)state;
    enum nf_isa isas[NF_ISA_COUNT];
    const int ni = simd_isas(isas);
    enum { N = 4096 };
    static float x[N], want[N], got[N];
    for (int pass = 0; pass < 64; pass++) {
        for (int i = 0; i < N; i++)
            x[i] = -200.0f + 300.0f * (float)(pass * N + i) / (float)(64 * N);
        nf__softmax_exp_ref(want, x, N, 0.0f);
        for (int k = 0; k < ni; k++) {
            nf_softmax_exp_for(isas[k])(got, x, N, 0.0f);
            for (int i = 0; i < N; i++)
                if (!same(got[i], want[i]))
                    fail_msg("v_expf isa %s x=%.9g: %.9g, reference %.9g", nf_isa_name(isas[k]),
                             (double)x[i], (double)got[i], (double)want[i]);
        }
    }
}

int main(void)
{
    nf_kernels_init();
    printf("best isa: %s\n", nf_isa_name(nf_cpu_best_isa()));
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_ggml_dot_cols), cmocka_unit_test(test_kqv),
        cmocka_unit_test(test_kqv_tile),      cmocka_unit_test(test_softmax),
        cmocka_unit_test(test_expf_range),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
