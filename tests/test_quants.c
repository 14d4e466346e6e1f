/* test_quants.c - quant types: traits, fp16/bf16, reference kernels, SIMD paths vs reference. */
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cmocka.h>

#include "quants.h"
#include "quants_impl.h"

#if defined(__x86_64__)
#include <immintrin.h>
#endif

/* Tolerances, relative to sum |x_i * y_i| of the dequantized operands (the scale of the
 * rounding errors of any summation order). Integer-accumulating kernels differ from the
 * reference only in the order of float additions of per-block results. */
#define TOL_REF_DOT    2e-5 /* scalar reference vs dequantize-then-dot in double */
#define TOL_F32_DOT    2e-6
#define TOL_F16_DOT    2e-6
#define TOL_BF16_DOT   2e-6
#define TOL_Q4_0_DOT   1e-5
#define TOL_Q8_0_DOT   1e-5
#define TOL_Q4_K_DOT   1e-5
#define TOL_Q5_K_DOT   1e-5
#define TOL_Q6_K_DOT   1e-5
#define TOL_Q8_K_DOT   1e-5
#define TOL_Q4_1_DOT   1e-5
#define TOL_Q5_0_DOT   1e-5
#define TOL_Q5_1_DOT   1e-5
#define TOL_IQ4_NL_DOT 1e-5
#define TOL_Q2_K_DOT   1e-5
#define TOL_Q3_K_DOT   1e-5
#define TOL_IQ4_XS_DOT 1e-5
/* RMS quantize->dequantize error relative to the RMS of gaussian input (per 256 elements);
 * with 40x outliers among the data (pattern 1) the bound is TOL_RMSE_OUTLIERS times larger. */
#define TOL_RMSE_Q4_0     0.125
#define TOL_RMSE_Q8_0     0.008
#define TOL_RMSE_Q4_K     0.10
#define TOL_RMSE_Q5_K     0.05
#define TOL_RMSE_Q6_K     0.026
#define TOL_RMSE_Q8_K     0.012
#define TOL_RMSE_Q4_1     0.11
#define TOL_RMSE_Q5_0     0.06
#define TOL_RMSE_Q5_1     0.05
#define TOL_RMSE_Q8_1     0.008
#define TOL_RMSE_IQ4_NL   0.10
#define TOL_RMSE_Q2_K     0.36
#define TOL_RMSE_Q3_K     0.20
#define TOL_RMSE_IQ4_XS   0.10
#define TOL_RMSE_F16      0.0003
#define TOL_RMSE_BF16     0.0025
#define TOL_RMSE_OUTLIERS 4.0

/* ---- helpers ----------------------------------------------------------------------------- */

static uint64_t rng_state = 0x9e3779b97f4a7c15ull;

static uint64_t rng_u64(void)
{
    uint64_t x = rng_state;
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    return rng_state = x;
}

static float rng_uniform(void) /* [0, 1) */
{
    return (float)(rng_u64() >> 40) / (float)(1 << 24);
}

static float rng_gauss(void)
{
    float u = rng_uniform() + 1e-7f, v = rng_uniform();
    return sqrtf(-2.0f * logf(u)) * cosf(6.2831853f * v);
}

static uint32_t f2u(float f)
{
    uint32_t u;
    memcpy(&u, &f, 4);
    return u;
}

static float u2f(uint32_t u)
{
    float f;
    memcpy(&f, &u, 4);
    return f;
}

/* Fills x with one of several patterns: gaussian, gaussian with outliers, all zero in places,
 * tiny and huge magnitudes, and rounding ties for 8-bit quantizers. */
static void fill(float *x, int n, int pattern)
{
    for (int i = 0; i < n; i++) {
        float g = rng_gauss();
        switch (pattern) {
        case 0: x[i] = g; break;
        case 1: x[i] = (rng_u64() % 97 == 0) ? 40.0f * g : g; break;
        case 2: x[i] = ((i / 64) % 3 == 1) ? 0.0f : g * 1e-3f; break;
        case 3: x[i] = g * 1e3f; break;
        case 4: x[i] = (float)((int)(rng_u64() % 255) - 127) * 0.5f; break; /* many ties */
        default: x[i] = (i % 32 == 0) ? -1.0f : 0.0f; break;                /* one-hot */
        }
    }
}
#define NPATTERNS 6

static const enum nf_type weight_types[] = {
    NF_TYPE_F32,    NF_TYPE_F16,  NF_TYPE_BF16, NF_TYPE_Q4_0,  NF_TYPE_Q8_0, NF_TYPE_Q4_K,
    NF_TYPE_Q5_K,   NF_TYPE_Q6_K, NF_TYPE_Q8_K, NF_TYPE_Q4_1,  NF_TYPE_Q5_0, NF_TYPE_Q5_1,
    NF_TYPE_IQ4_NL, NF_TYPE_Q2_K, NF_TYPE_Q3_K, NF_TYPE_IQ4_XS};
#define NWEIGHT (sizeof(weight_types) / sizeof(weight_types[0]))

static double dot_tol(enum nf_type t)
{
    switch (t) {
    case NF_TYPE_F32: return TOL_F32_DOT;
    case NF_TYPE_F16: return TOL_F16_DOT;
    case NF_TYPE_BF16: return TOL_BF16_DOT;
    case NF_TYPE_Q4_0: return TOL_Q4_0_DOT;
    case NF_TYPE_Q8_0: return TOL_Q8_0_DOT;
    case NF_TYPE_Q4_K: return TOL_Q4_K_DOT;
    case NF_TYPE_Q5_K: return TOL_Q5_K_DOT;
    case NF_TYPE_Q6_K: return TOL_Q6_K_DOT;
    case NF_TYPE_Q4_1: return TOL_Q4_1_DOT;
    case NF_TYPE_Q5_0: return TOL_Q5_0_DOT;
    case NF_TYPE_Q5_1: return TOL_Q5_1_DOT;
    case NF_TYPE_IQ4_NL: return TOL_IQ4_NL_DOT;
    case NF_TYPE_Q2_K: return TOL_Q2_K_DOT;
    case NF_TYPE_Q3_K: return TOL_Q3_K_DOT;
    case NF_TYPE_IQ4_XS: return TOL_IQ4_XS_DOT;
    default: return TOL_Q8_K_DOT;
    }
}

/* Row lengths to test for a type: single block, odd block counts, long rows; plain types
 * also get lengths that exercise the scalar tail after SIMD loops. */
static int lengths(enum nf_type t, int *out)
{
    int64_t bs = nf_type_traits(t)->blck_size;
    if (bs == 1) {
        static const int plain[] = {1, 7, 16, 33, 100, 255, 1024, 4099};
        memcpy(out, plain, sizeof(plain));
        return 8;
    }
    static const int blocks[] = {1, 2, 3, 5, 8, 17, 64};
    for (int i = 0; i < 7; i++)
        out[i] = (int)(blocks[i] * bs);
    out[7] = 4096;
    return 8;
}

struct operands {
    int n;
    void *x, *y;    /* quantized weight row, quantized activation row */
    float *xf, *yf; /* their dequantized values */
    float *src;     /* scratch */
};

/* Quantizes random data of the given pattern into x (weight type t, reference quantizer) and
 * y (its vec_dot_type), and dequantizes both. */
static void make_operands(struct operands *o, enum nf_type t, int n, int pattern)
{
    const struct nf_type_traits *tt = nf_type_traits(t);
    const struct nf_type_traits *yt = nf_type_traits(tt->vec_dot_type);
    o->n = n;
    o->x = calloc(1, nf_row_size(t, n) + 64);
    o->y = calloc(1, nf_row_size(tt->vec_dot_type, n) + 64);
    o->xf = malloc(n * sizeof(float));
    o->yf = malloc(n * sizeof(float));
    o->src = malloc(n * sizeof(float));
    assert_non_null(o->x);
    assert_non_null(o->y);
    fill(o->src, n, pattern);
    tt->from_float(o->src, o->x, n);
    tt->to_float(o->x, o->xf, n);
    fill(o->src, n, pattern == 5 ? 0 : pattern);
    yt->from_float(o->src, o->y, n);
    yt->to_float(o->y, o->yf, n);
}

static void free_operands(struct operands *o)
{
    free(o->x);
    free(o->y);
    free(o->xf);
    free(o->yf);
    free(o->src);
}

/* Returns sum x*y in double and stores sum |x*y| in *scale. */
static double exact_dot(const float *x, const float *y, int n, double *scale)
{
    double s = 0, a = 0;
    for (int i = 0; i < n; i++) {
        s += (double)x[i] * y[i];
        a += fabs((double)x[i] * y[i]);
    }
    *scale = a;
    return s;
}

/* For q4_1/q5_1 weights (else 0): what the q8_1 activation's own s adds to the dot beyond the
 * dequantized values. llama.cpp's q8_1 keeps s = d * sum(qs) rounded to fp16 from the
 * unrounded d, and the min term of a block is m * s, not m * (fp16 d) * sum(qs): the exact
 * dot of the format is sum x * y plus sum over blocks m * (s - d * sum(qs)). */
static double q8_1_s_term(enum nf_type t, const struct operands *o)
{
    if (t != NF_TYPE_Q4_1 && t != NF_TYPE_Q5_1)
        return 0.0;
    const size_t xs = nf_type_traits(t)->type_size;
    const nf_block_q8_1 *y = o->y;
    double a = 0;
    for (int i = 0; i < o->n / NF_QK8_0; i++) {
        nf_fp16_t m; /* q4_1 and q5_1 both keep m right after d */
        memcpy(&m, (const char *)o->x + i * xs + 2, sizeof(m));
        int sumq = 0;
        for (int e = 0; e < NF_QK8_0; e++)
            sumq += y[i].qs[e];
        a += (double)nf_fp16_to_fp32(m) *
             ((double)nf_fp16_to_fp32(y[i].s) - (double)nf_fp16_to_fp32(y[i].d) * sumq);
    }
    return a;
}

/* ---- traits ------------------------------------------------------------------------------ */

static void test_traits(void **state)
{
    (void)state;
    const struct nf_type_traits *t = nf_type_traits(NF_TYPE_Q4_0);
    assert_non_null(t);
    assert_string_equal(t->name, "q4_0");
    assert_int_equal(t->blck_size, 32);
    assert_int_equal(t->type_size, 18);
    assert_int_equal(t->vec_dot_type, NF_TYPE_Q8_0);
    assert_int_equal(nf_type_traits(NF_TYPE_Q8_0)->vec_dot_type, NF_TYPE_Q8_0);
    assert_int_equal(nf_type_traits(NF_TYPE_F32)->vec_dot_type, NF_TYPE_F32);
    assert_int_equal(nf_type_traits(NF_TYPE_F16)->vec_dot_type, NF_TYPE_F16);
    assert_int_equal(nf_type_traits(NF_TYPE_BF16)->vec_dot_type, NF_TYPE_BF16);
    assert_int_equal(nf_type_traits(NF_TYPE_Q4_K)->vec_dot_type, NF_TYPE_Q8_K);
    assert_int_equal(nf_type_traits(NF_TYPE_Q5_K)->vec_dot_type, NF_TYPE_Q8_K);
    assert_int_equal(nf_type_traits(NF_TYPE_Q6_K)->vec_dot_type, NF_TYPE_Q8_K);
    assert_int_equal(nf_type_traits(NF_TYPE_Q4_K)->type_size, sizeof(nf_block_q4_K));
    assert_int_equal(nf_type_traits(NF_TYPE_Q5_K)->type_size, 176);
    assert_int_equal(nf_type_traits(NF_TYPE_Q6_K)->type_size, 210);
    assert_int_equal(nf_type_traits(NF_TYPE_Q8_K)->type_size, 292);
    assert_int_equal(nf_type_traits(NF_TYPE_Q2_K)->type_size, 84);
    assert_int_equal(nf_type_traits(NF_TYPE_IQ4_XS)->type_size, 136);
    assert_string_equal(nf_type_traits(NF_TYPE_BF16)->name, "bf16");
    assert_false(nf_type_traits(NF_TYPE_IQ2_XXS)->compute);
    assert_null(nf_type_traits(NF_TYPE_IQ2_XXS)->vec_dot);
    /* llama.cpp's pairing: q8_1 carries the min term of q4_1/q5_1. */
    assert_int_equal(nf_type_traits(NF_TYPE_Q4_1)->vec_dot_type, NF_TYPE_Q8_1);
    assert_int_equal(nf_type_traits(NF_TYPE_Q5_1)->vec_dot_type, NF_TYPE_Q8_1);
    assert_int_equal(nf_type_traits(NF_TYPE_Q5_0)->vec_dot_type, NF_TYPE_Q8_0);
    assert_int_equal(nf_type_traits(NF_TYPE_IQ4_NL)->vec_dot_type, NF_TYPE_Q8_0);
    assert_int_equal(nf_type_traits(NF_TYPE_Q2_K)->vec_dot_type, NF_TYPE_Q8_K);
    assert_int_equal(nf_type_traits(NF_TYPE_Q3_K)->vec_dot_type, NF_TYPE_Q8_K);
    assert_int_equal(nf_type_traits(NF_TYPE_IQ4_XS)->vec_dot_type, NF_TYPE_Q8_K);
    assert_int_equal(nf_type_traits(NF_TYPE_Q3_K)->type_size, 110);
    assert_int_equal(nf_type_traits(NF_TYPE_IQ4_NL)->type_size, 18);
    assert_false(nf_type_traits(NF_TYPE_Q8_1)->compute);
    assert_null(nf_type_traits(NF_TYPE_Q8_1)->vec_dot);
    assert_non_null(nf_type_traits(NF_TYPE_Q8_1)->from_float_act);
    /* Retired ggml numbers and out-of-range values have no traits. */
    static const int retired[] = {4, 5, 31, 32, 33, 36, 37, 38, 40, -1, 1000};
    for (size_t i = 0; i < sizeof(retired) / sizeof(retired[0]); i++)
        assert_null(nf_type_traits((enum nf_type)retired[i]));
    for (size_t i = 0; i < NWEIGHT; i++) {
        const struct nf_type_traits *w = nf_type_traits(weight_types[i]);
        assert_true(w->compute);
        assert_non_null(w->to_float);
        assert_non_null(w->from_float);
        assert_non_null(w->vec_dot);
        assert_non_null(w->vec_dot_rows);
        assert_non_null(nf_type_traits(w->vec_dot_type)->from_float_act);
    }
    assert_int_equal(nf_row_size(NF_TYPE_Q4_0, 4096), 4096 / 32 * 18);
    assert_int_equal(nf_row_size(NF_TYPE_F16, 7), 14);
    assert_int_equal(nf_row_size(NF_TYPE_Q6_K, 512), 420);
    assert_int_equal(nf_row_size((enum nf_type)4, 32), 0);
}

/* ---- fp16 / bf16 ------------------------------------------------------------------------- */

#if defined(__x86_64__)
__attribute__((target("f16c"))) static uint16_t hw_fp32_to_fp16(float f)
{
    return (uint16_t)_cvtss_sh(f, _MM_FROUND_TO_NEAREST_INT);
}
__attribute__((target("f16c"))) static float hw_fp16_to_fp32(uint16_t h)
{
    return _cvtsh_ss(h);
}
#endif

static int have_f16c(void)
{
#if defined(__x86_64__)
    return nf_cpu_best_isa() >= NF_ISA_AVX2;
#else
    return 0;
#endif
}

static void test_fp16_exhaustive(void **state)
{
    (void)state;
    for (uint32_t h = 0; h < 65536; h++) {
        float f = nf_fp16_to_fp32((nf_fp16_t)h);
        uint32_t e = (h >> 10) & 0x1f, m = h & 0x3ff;
        if (e == 0x1f && m) {
            assert_true(isnan(f));
            /* NaN payload kept, quiet bit forced. */
            assert_int_equal(nf_fp32_to_fp16(f), h | 0x200);
        } else {
            assert_int_equal(nf_fp32_to_fp16(f), h);
            /* Independent value check: sign * m * 2^(e-25) for normal, m * 2^-24 subnormal. */
            double v = e == 0 ? ldexp(m, -24) : e == 0x1f ? INFINITY : ldexp(m + 1024, (int)e - 25);
            if (h & 0x8000)
                v = -v;
            assert_true((double)f == v);
        }
#if defined(__x86_64__)
        if (have_f16c()) {
            assert_int_equal(f2u(f), f2u(hw_fp16_to_fp32((uint16_t)h)));
            /* The midpoint between h and its successor must round to the even one. */
            if (e < 0x1e || (e == 0x1e && m < 0x3ff)) {
                float next = nf_fp16_to_fp32((nf_fp16_t)(h + 1));
                float mid = (float)(((double)f + next) / 2);
                assert_int_equal(nf_fp32_to_fp16(mid), hw_fp32_to_fp16(mid));
                assert_int_equal(nf_fp32_to_fp16(mid), (h & 1) ? h + 1 : h);
                float up = nextafterf(mid, INFINITY), dn = nextafterf(mid, -INFINITY);
                assert_int_equal(nf_fp32_to_fp16(up), hw_fp32_to_fp16(up));
                assert_int_equal(nf_fp32_to_fp16(dn), hw_fp32_to_fp16(dn));
            }
        }
#endif
    }
}

static void test_fp16_special(void **state)
{
    (void)state;
    assert_int_equal(nf_fp32_to_fp16(1.0f), 0x3c00);
    assert_int_equal(nf_fp32_to_fp16(-2.0f), 0xc000);
    assert_int_equal(nf_fp32_to_fp16(65504.0f), 0x7bff);
    assert_int_equal(nf_fp32_to_fp16(65519.99f), 0x7bff);
    assert_int_equal(nf_fp32_to_fp16(65520.0f), 0x7c00); /* tie rounds to even: infinity */
    assert_int_equal(nf_fp32_to_fp16(1e10f), 0x7c00);
    assert_int_equal(nf_fp32_to_fp16(-INFINITY), 0xfc00);
    assert_int_equal(nf_fp32_to_fp16(ldexpf(1, -24)), 0x0001);
    assert_int_equal(nf_fp32_to_fp16(ldexpf(1, -25)), 0x0000); /* tie to even zero */
    assert_int_equal(nf_fp32_to_fp16(ldexpf(3, -26)), 0x0001);
    assert_int_equal(nf_fp32_to_fp16(ldexpf(3, -25)), 0x0002); /* 1.5 ulp: tie to even 2 */
    assert_int_equal(nf_fp32_to_fp16(-0.0f), 0x8000);
    assert_int_equal(nf_fp32_to_fp16(1e-30f), 0x0000);
    assert_int_equal(nf_fp32_to_fp16(u2f(0x7fc00000)), 0x7e00);
    assert_int_equal(nf_fp32_to_fp16(u2f(0xff800001)), 0xfe00); /* signalling NaN: quieted */
    assert_int_equal(nf_fp32_to_fp16(u2f(0x7fffffff)), 0x7fff);
    assert_true(isinf(nf_fp16_to_fp32(0x7c00)));
    assert_true(nf_fp16_to_fp32(0x0001) == ldexpf(1, -24));
#if defined(__x86_64__)
    if (have_f16c()) {
        /* Random bit patterns: every class of float against the hardware. */
        for (int i = 0; i < 2000000; i++) {
            uint32_t u = (uint32_t)rng_u64();
            if (i & 1) /* concentrate around the half range */
                u = (u & 0x80ffffff) | ((uint32_t)(96 + rng_u64() % 60) << 23);
            assert_int_equal(nf_fp32_to_fp16(u2f(u)), hw_fp32_to_fp16(u2f(u)));
        }
    }
#endif
}

/* Independent bf16 rounding: pick the nearer of the two neighbours, the even one on a tie. */
static uint16_t oracle_bf16(uint32_t u)
{
    if ((u & 0x7fffffff) > 0x7f800000)
        return (uint16_t)((u >> 16) | 0x40);
    uint32_t lo = u >> 16, rem = u & 0xffff;
    if (rem > 0x8000 || (rem == 0x8000 && (lo & 1)))
        return (uint16_t)(lo + 1);
    return (uint16_t)lo;
}

static void test_bf16(void **state)
{
    (void)state;
    for (uint32_t h = 0; h < 65536; h++) {
        float f = nf_bf16_to_fp32((nf_bf16_t)h);
        assert_int_equal(f2u(f), h << 16);
        uint16_t back = nf_fp32_to_bf16(f);
        if (isnan(f))
            assert_int_equal(back, h | 0x40);
        else
            assert_int_equal(back, h);
    }
    assert_int_equal(nf_fp32_to_bf16(1.0f), 0x3f80);
    assert_int_equal(nf_fp32_to_bf16(u2f(0x3f808000)), 0x3f80); /* tie, even below */
    assert_int_equal(nf_fp32_to_bf16(u2f(0x3f818000)), 0x3f82); /* tie, even above */
    assert_int_equal(nf_fp32_to_bf16(u2f(0x7f7fffff)), 0x7f80); /* max float -> inf */
    assert_int_equal(nf_fp32_to_bf16(u2f(0x7f800001)), 0x7fc0);
    assert_int_equal(nf_fp32_to_bf16(u2f(0x00018000)), 0x0002); /* subnormal tie, kept */
    for (int i = 0; i < 1000000; i++) {
        uint32_t u = (uint32_t)rng_u64();
        if (i & 1)
            u = (u & 0xffff0000) | 0x8000; /* exact ties */
        assert_int_equal(nf_fp32_to_bf16(u2f(u)), oracle_bf16(u));
    }
}

/* ---- hand-computed blocks ---------------------------------------------------------------- */

static void test_known_blocks(void **state)
{
    (void)state;
    const struct nf_type_traits *t = nf_type_traits(NF_TYPE_Q4_0);
    nf_block_q4_0 b4 = {.d = 0x3c00}; /* d = 1 */
    for (int j = 0; j < 16; j++)
        b4.qs[j] = (uint8_t)(j | ((15 - j) << 4));
    float out[NF_QK_K];
    t->to_float(&b4, out, 32);
    for (int j = 0; j < 16; j++) {
        assert_true(out[j] == (float)(j - 8));
        assert_true(out[16 + j] == (float)(7 - j));
    }
    /* q4_0 . q8_0 with y = all ones, d = 0.5: sum(-8..7) + sum(7..-8) = -16, times 0.5. */
    nf_block_q8_0 b8 = {.d = 0x3800};
    for (int j = 0; j < 32; j++)
        b8.qs[j] = 1;
    float s = 0;
    for (int isa = 0; isa <= (int)nf_cpu_best_isa(); isa++) {
        nf_vec_dot_fn f = nf_vec_dot_for(NF_TYPE_Q4_0, (enum nf_isa)isa);
        if (!f)
            continue;
        f(32, &s, &b4, &b8);
        assert_true(s == -8.0f);
    }
    nf_type_traits(NF_TYPE_Q8_0)->to_float(&b8, out, 32);
    assert_true(out[31] == 0.5f);

    /* q4_K: d = 1, dmin = 0.5; sub-block j has scale j+1 and min 2j (6-bit packing). */
    nf_block_q4_K bk = {.d = 0x3c00, .dmin = 0x3800};
    for (int j = 0; j < 8; j++) {
        int sc = j + 1 + (j >= 4 ? 40 : 0), m = 2 * j + (j >= 6 ? 33 : 0);
        if (j < 4) {
            bk.scales[j] = (uint8_t)sc;
            bk.scales[j + 4] = (uint8_t)m;
        } else {
            bk.scales[j + 4] = (uint8_t)((sc & 0xF) | ((m & 0xF) << 4));
            bk.scales[j - 4] |= (uint8_t)((sc >> 4) << 6);
            bk.scales[j] |= (uint8_t)((m >> 4) << 6);
        }
    }
    for (int l = 0; l < 128; l++)
        bk.qs[l] = (uint8_t)((l % 16) | ((15 - l % 16) << 4));
    nf_type_traits(NF_TYPE_Q4_K)->to_float(&bk, out, 256);
    for (int e = 0; e < 256; e++) {
        int j = e / 32, l = e % 32;
        int sc = j + 1 + (j >= 4 ? 40 : 0), m = 2 * j + (j >= 6 ? 33 : 0);
        int q = (j & 1) ? 15 - l % 16 : l % 16;
        assert_true(out[e] == (float)sc * q - 0.5f * m);
    }

    /* q5_K: as above plus the fifth bit set on odd elements. */
    nf_block_q5_K b5 = {.d = 0x3c00, .dmin = 0x3800};
    memcpy(b5.scales, bk.scales, sizeof(b5.scales));
    memcpy(b5.qs, bk.qs, sizeof(b5.qs));
    for (int l = 0; l < 32; l++)
        b5.qh[l] = (l & 1) ? 0xff : 0x00;
    nf_type_traits(NF_TYPE_Q5_K)->to_float(&b5, out, 256);
    for (int e = 0; e < 256; e++) {
        int j = e / 32, l = e % 32;
        int sc = j + 1 + (j >= 4 ? 40 : 0), m = 2 * j + (j >= 6 ? 33 : 0);
        int q = ((j & 1) ? 15 - l % 16 : l % 16) + ((l & 1) ? 16 : 0);
        assert_true(out[e] == (float)sc * q - 0.5f * m);
    }

    /* q6_K: d = 2, scale of group g = g - 8; element e holds (e % 64) - 32. */
    nf_block_q6_K b6 = {.d = 0x4000};
    for (int g = 0; g < 16; g++)
        b6.scales[g] = (int8_t)(g - 8);
    for (int h = 0; h < 2; h++) {
        for (int l = 0; l < 32; l++) {
            int v[4];
            for (int k = 0; k < 4; k++)
                v[k] = (128 * h + 32 * k + l) % 64;
            b6.ql[64 * h + l] = (uint8_t)((v[0] & 0xF) | ((v[2] & 0xF) << 4));
            b6.ql[64 * h + l + 32] = (uint8_t)((v[1] & 0xF) | ((v[3] & 0xF) << 4));
            b6.qh[32 * h + l] = (uint8_t)((v[0] >> 4) | ((v[1] >> 4) << 2) | ((v[2] >> 4) << 4) |
                                          ((v[3] >> 4) << 6));
        }
    }
    nf_type_traits(NF_TYPE_Q6_K)->to_float(&b6, out, 256);
    for (int e = 0; e < 256; e++)
        assert_true(out[e] == 2.0f * (e / 16 - 8) * (e % 64 - 32));
}

/* ---- quantizers -------------------------------------------------------------------------- */

static double rmse_tol(enum nf_type t)
{
    switch (t) {
    case NF_TYPE_Q4_0: return TOL_RMSE_Q4_0;
    case NF_TYPE_Q8_0: return TOL_RMSE_Q8_0;
    case NF_TYPE_Q4_K: return TOL_RMSE_Q4_K;
    case NF_TYPE_Q5_K: return TOL_RMSE_Q5_K;
    case NF_TYPE_Q6_K: return TOL_RMSE_Q6_K;
    case NF_TYPE_Q8_K: return TOL_RMSE_Q8_K;
    case NF_TYPE_Q4_1: return TOL_RMSE_Q4_1;
    case NF_TYPE_Q5_0: return TOL_RMSE_Q5_0;
    case NF_TYPE_Q5_1: return TOL_RMSE_Q5_1;
    case NF_TYPE_Q8_1: return TOL_RMSE_Q8_1;
    case NF_TYPE_IQ4_NL: return TOL_RMSE_IQ4_NL;
    case NF_TYPE_Q2_K: return TOL_RMSE_Q2_K;
    case NF_TYPE_Q3_K: return TOL_RMSE_Q3_K;
    case NF_TYPE_IQ4_XS: return TOL_RMSE_IQ4_XS;
    case NF_TYPE_F16: return TOL_RMSE_F16;
    case NF_TYPE_BF16: return TOL_RMSE_BF16;
    default: return 0;
    }
}

static void test_quantize_roundtrip(void **state)
{
    (void)state;
    enum { N = 8192 };
    float *x = malloc(N * sizeof(float)), *y = malloc(N * sizeof(float));
    void *q = malloc(N * 4);
    for (size_t i = 0; i <= NWEIGHT; i++) { /* the weight types, then q8_1 (activations only) */
        enum nf_type t = i < NWEIGHT ? weight_types[i] : NF_TYPE_Q8_1;
        const struct nf_type_traits *tt = nf_type_traits(t);
        for (int p = 0; p < 4; p++) {
            fill(x, N, p);
            tt->from_float(x, q, N);
            tt->to_float(q, y, N);
            /* Error per 256-element chunk relative to that chunk's RMS (chunks differ in scale
             * in pattern 2). */
            for (int c = 0; c < N; c += 256) {
                double e2 = 0, x2 = 0;
                for (int k = c; k < c + 256; k++) {
                    e2 += ((double)x[k] - y[k]) * ((double)x[k] - y[k]);
                    x2 += (double)x[k] * x[k];
                }
                double rel = x2 > 0 ? sqrt(e2 / x2) : sqrt(e2);
                double tol = rmse_tol(t) * (p == 1 ? TOL_RMSE_OUTLIERS : 1.0);
                if (rel > tol && t != NF_TYPE_F32)
                    fail_msg("%s pattern %d chunk %d: relative RMSE %g > %g", tt->name, p, c, rel,
                             tol);
                if (t == NF_TYPE_F32)
                    assert_true(e2 == 0);
            }
        }
        /* All-zero input quantizes to an all-zero output. */
        memset(x, 0, N * sizeof(float));
        tt->from_float(x, q, N);
        tt->to_float(q, y, N);
        for (int k = 0; k < N; k++)
            assert_true(y[k] == 0.0f);
    }
    free(x);
    free(y);
    free(q);
}

/* q8_0 and q8_K follow llama.cpp's reference quantizers exactly; check the defining rules. */
static void test_q8_rules(void **state)
{
    (void)state;
    float x[NF_QK_K];
    for (int p = 0; p < NPATTERNS; p++) {
        fill(x, NF_QK_K, p);
        nf_block_q8_0 b[NF_QK_K / 32];
        nf_type_traits(NF_TYPE_Q8_0)->from_float(x, b, NF_QK_K);
        for (int i = 0; i < NF_QK_K / 32; i++) {
            float amax = 0;
            for (int j = 0; j < 32; j++)
                amax = fmaxf(amax, fabsf(x[32 * i + j]));
            float d = amax / 127, id = d ? 1 / d : 0;
            assert_int_equal(b[i].d, nf_fp32_to_fp16(d));
            for (int j = 0; j < 32; j++)
                assert_int_equal(b[i].qs[j], (int)roundf(x[32 * i + j] * id));
        }
        nf_block_q8_K k;
        nf_type_traits(NF_TYPE_Q8_K)->from_float(x, &k, NF_QK_K);
        for (int g = 0; g < 16; g++) {
            int sum = 0;
            for (int l = 0; l < 16; l++)
                sum += k.qs[16 * g + l];
            assert_int_equal(k.bsums[g], sum);
        }
        float amax = 0, max = 0;
        for (int j = 0; j < NF_QK_K; j++)
            if (fabsf(x[j]) > amax) {
                amax = fabsf(x[j]);
                max = x[j];
            }
        float iscale = -127.f / max;
        assert_true(k.d == 1 / iscale);
        for (int j = 0; j < NF_QK_K; j++)
            assert_int_equal(k.qs[j], (int)rintf(iscale * x[j]));
    }
}

/* ---- dot products ------------------------------------------------------------------------ */

/* The scalar reference against dequantize-then-dot in double. */
static void test_ref_dot(void **state)
{
    (void)state;
    for (size_t i = 0; i < NWEIGHT; i++) {
        enum nf_type t = weight_types[i];
        nf_vec_dot_fn ref = nf_vec_dot_for(t, NF_ISA_SCALAR);
        assert_non_null(ref);
        int ns[8];
        int nl = lengths(t, ns);
        for (int li = 0; li < nl; li++) {
            for (int p = 0; p < NPATTERNS; p++) {
                struct operands o;
                make_operands(&o, t, ns[li], p);
                double scale, want = exact_dot(o.xf, o.yf, o.n, &scale);
                float got;
                ref(o.n, &got, o.x, o.y);
                want += q8_1_s_term(t, &o);
                if (fabs(got - want) > TOL_REF_DOT * scale + 1e-30)
                    fail_msg("%s n=%d pattern %d: ref %g, exact %g", nf_type_traits(t)->name, o.n,
                             p, got, want);
                free_operands(&o);
            }
        }
    }
}

/* Every SIMD vec_dot and multi-row path against the scalar reference. */
static void test_simd_dot(void **state)
{
    (void)state;
    int tested = 0;
    for (int isa = NF_ISA_SCALAR; isa <= (int)nf_cpu_best_isa(); isa++) {
        for (size_t i = 0; i < NWEIGHT; i++) {
            enum nf_type t = weight_types[i];
            nf_vec_dot_fn ref = nf_vec_dot_for(t, NF_ISA_SCALAR);
            nf_vec_dot_fn f = nf_vec_dot_for(t, (enum nf_isa)isa);
            nf_vec_dot_rows_fn rows = nf_vec_dot_rows_for(t, (enum nf_isa)isa);
            int ns[8];
            int nl = lengths(t, ns);
            for (int li = 0; li < nl; li++) {
                for (int p = 0; p < NPATTERNS; p++) {
                    struct operands o;
                    make_operands(&o, t, ns[li], p);
                    double scale;
                    exact_dot(o.xf, o.yf, o.n, &scale);
                    float want, got;
                    ref(o.n, &want, o.x, o.y);
                    if (f) {
                        got = -12345.0f;
                        f(o.n, &got, o.x, o.y);
                        if (!(fabs(got - want) <= dot_tol(t) * scale + 1e-30))
                            fail_msg("%s %s n=%d pattern %d: %.9g, scalar %.9g",
                                     nf_type_traits(t)->name, nf_isa_name(isa), o.n, p, got, want);
                        tested++;
                    }
                    if (rows) {
                        /* Rows: the same weight row repeated with a stride (and once with
                         * different rows) gives the single-row result for each. */
                        enum { R = 7 };
                        size_t rs = nf_row_size(t, o.n);
                        char *xs = malloc(rs * R);
                        float s[R], w[R];
                        for (int r = 0; r < R; r++) {
                            memcpy(xs + r * rs, o.x, rs);
                            if (r & 1) /* vary every other row: quantize fresh data */
                                nf_type_traits(t)->from_float(o.src, xs + r * rs, o.n);
                            ref(o.n, &w[r], xs + r * rs, o.y);
                        }
                        for (int nr = 1; nr <= R; nr++) {
                            rows(o.n, s, rs, xs, o.y, nr);
                            for (int r = 0; r < nr; r++) {
                                double sc2 = scale * 2 + fabs(w[r]);
                                if (!(fabs(s[r] - w[r]) <= dot_tol(t) * sc2 + 1e-30))
                                    fail_msg("%s %s rows n=%d nrows=%d row %d: %.9g, scalar "
                                             "%.9g",
                                             nf_type_traits(t)->name, nf_isa_name(isa), o.n, nr, r,
                                             s[r], w[r]);
                            }
                        }
                        free(xs);
                        tested++;
                    }
                    free_operands(&o);
                }
            }
        }
    }
    assert_true(tested > 0);
}

/* SIMD activation quantizers against the reference: f16/bf16/q8_K bit-exact; q8_0 and q8_1
 * with the same scale and each quant within 1 of the reference, differing only where x/d is
 * (nearly) a tie, because the SIMD path rounds ties to even as llama.cpp's AVX2 code does;
 * q8_1's s is d * sum of its own quants. */
static void test_simd_quantize(void **state)
{
    (void)state;
    static const enum nf_type act[] = {NF_TYPE_F16, NF_TYPE_BF16, NF_TYPE_Q8_0, NF_TYPE_Q8_K,
                                       NF_TYPE_Q8_1};
    enum { N = 4096 };
    float *x = malloc(N * sizeof(float));
    char *a = malloc(N * 4), *b = malloc(N * 4);
    for (int isa = NF_ISA_AVX2; isa <= (int)nf_cpu_best_isa(); isa++) {
        for (size_t i = 0; i < sizeof(act) / sizeof(act[0]); i++) {
            enum nf_type t = act[i];
            nf_from_float_fn f = nf_from_float_for(t, (enum nf_isa)isa);
            nf_from_float_fn ref = nf_from_float_for(t, NF_ISA_SCALAR);
            if (!f)
                continue;
            static const int ns[] = {256, 512, 4096};
            for (int ni = 0; ni < 3; ni++) {
                for (int p = 0; p < NPATTERNS + 1; p++) {
                    int n = ns[ni];
                    fill(x, n, p % NPATTERNS);
                    if (p == NPATTERNS) { /* specials for the float conversions */
                        x[0] = NAN;
                        x[1] = INFINITY;
                        x[2] = -0.0f;
                        x[3] = 1e-40f;
                        x[4] = 65520.0f;
                        x[5] = u2f(0x3f808000);
                        if (t == NF_TYPE_Q8_0 || t == NF_TYPE_Q8_K || t == NF_TYPE_Q8_1)
                            fill(x, 8, 0);
                    }
                    size_t sz = nf_row_size(t, n);
                    memset(a, 0x55, sz);
                    memset(b, 0xaa, sz);
                    ref(x, a, n);
                    f(x, b, n);
                    if (t != NF_TYPE_Q8_0 && t != NF_TYPE_Q8_1) {
                        if (memcmp(a, b, sz) != 0)
                            fail_msg("%s %s n=%d pattern %d differs from scalar",
                                     nf_type_traits(t)->name, nf_isa_name(isa), n, p);
                        continue;
                    }
                    /* q8_1 is q8_0 with s between d and the quants. */
                    const size_t bsz = nf_type_traits(t)->type_size, qoff = bsz - 32;
                    for (int k = 0; k < n / 32; k++) {
                        const char *ba = a + k * bsz, *bb = b + k * bsz;
                        const int8_t *qa = (const int8_t *)(ba + qoff);
                        const int8_t *qb = (const int8_t *)(bb + qoff);
                        assert_memory_equal(ba, bb, 2); /* d */
                        /* The unrounded 127 / amax both paths start from: x / (fp16 d) is
                         * off by up to 2^-11 * 127 and can hide a tie. */
                        float amax = 0;
                        for (int j = 0; j < 32; j++)
                            amax = fmaxf(amax, fabsf(x[32 * k + j]));
                        float id = 127.f / amax;
                        if (t == NF_TYPE_Q8_1) { /* s = d * sum(qs), d unrounded */
                            int sum = 0;
                            for (int j = 0; j < 32; j++)
                                sum += qb[j];
                            nf_fp16_t sb;
                            memcpy(&sb, bb + 2, 2);
                            assert_int_equal(sb, nf_fp32_to_fp16(amax / 127.f * (float)sum));
                        }
                        for (int j = 0; j < 32; j++) {
                            int diff = qa[j] - qb[j];
                            if (diff == 0)
                                continue;
                            assert_true(abs(diff) == 1);
                            /* Only ties (up to the 1/d vs 127/amax rounding) may differ. */
                            float frac = fabsf(x[32 * k + j] * id);
                            assert_true(fabsf(frac - floorf(frac) - 0.5f) < 1e-3f);
                        }
                    }
                }
            }
        }
    }
    free(x);
    free(a);
    free(b);
}

/* Child side of test_isa_env: run with NF_ISA set, checks that the traits table holds the
 * paths of the capped ISA. Returns the process exit status. */
static int isa_child(const char *name)
{
    enum nf_isa want = NF_ISA_SCALAR;
    for (int k = 0; k < NF_ISA_COUNT; k++)
        if (strcmp(name, nf_isa_name((enum nf_isa)k)) == 0)
            want = (enum nf_isa)k;
    if (want > nf_cpu_best_isa())
        want = nf_cpu_best_isa();
    if (nf_kernels_isa() != want)
        return 1;
    for (size_t i = 0; i < NWEIGHT; i++) {
        const struct nf_type_traits *t = nf_type_traits(weight_types[i]);
        nf_vec_dot_fn f = NULL;
        nf_vec_dot_rows_fn r = NULL;
        for (int k = want; k >= 0 && !f; k--)
            f = nf_vec_dot_for(weight_types[i], (enum nf_isa)k);
        for (int k = want; k >= 0 && !r; k--)
            r = nf_vec_dot_rows_for(weight_types[i], (enum nf_isa)k);
        if (t->vec_dot != f || t->vec_dot_rows != r)
            return 2;
    }
    return 0;
}

/* NF_ISA caps the kernels chosen. The choice is made once per process, so each cap is
 * checked in a fresh exec of this program. */
/* The float summation orders that reproduce llama.cpp's x86 results bit for bit: q4_0 rows in
 * the repacked q4_0_8x8 order (per row, fma of each block's integer dot times dw * dx, block
 * after block) and q8_0 in ggml_vec_dot_q8_0_q8_0's (one 8-lane accumulator, lane k holding
 * bytes 4k..4k+3 of every block, then the AVX horizontal add). */
static void test_llama_order(void **state)
{
    (void)state;
    const int n = 256, nr = 21;
    const struct nf_type_traits *q4 = nf_type_traits(NF_TYPE_Q4_0);
    const struct nf_type_traits *q8 = nf_type_traits(NF_TYPE_Q8_0);
    const size_t rs4 = nf_row_size(NF_TYPE_Q4_0, n), rs8 = nf_row_size(NF_TYPE_Q8_0, n);
    char *w4 = calloc((size_t)nr, rs4), *w8 = calloc((size_t)nr, rs8), *y = calloc(1, rs8);
    float *src = malloc(sizeof(float) * (size_t)n), *xf = malloc(sizeof(float) * (size_t)n),
          *yf = malloc(sizeof(float) * (size_t)n);
    float want[21], got[21];
    assert_true(w4 && w8 && y && src && xf && yf);
    for (int r = 0; r < nr; r++) {
        fill(src, n, r % NPATTERNS);
        q4->from_float(src, w4 + (size_t)r * rs4, n);
        q8->from_float(src, w8 + (size_t)r * rs8, n);
    }
    fill(src, n, 0);
    q8->from_float(src, y, n);
    q8->to_float(y, yf, n);
    const nf_block_q8_0 *yb = (const nf_block_q8_0 *)y;
    for (int r = 0; r < nr; r++) {
        const nf_block_q4_0 *xb = (const nf_block_q4_0 *)(w4 + (size_t)r * rs4);
        float acc = 0.0f;
        for (int i = 0; i < n / 32; i++) {
            int sumi = 0;
            for (int j = 0; j < 16; j++)
                sumi += ((xb[i].qs[j] & 0xF) - 8) * yb[i].qs[j] +
                        ((xb[i].qs[j] >> 4) - 8) * yb[i].qs[j + 16];
            acc = fmaf((float)sumi, nf_fp16_to_fp32(xb[i].d) * nf_fp16_to_fp32(yb[i].d), acc);
        }
        want[r] = acc;
        q4->to_float(xb, xf, n);
        double scale, exact = exact_dot(xf, yf, n, &scale);
        assert_true(fabs(want[r] - exact) <= TOL_Q4_0_DOT * scale + 1e-30);
    }
    for (int m = 1; m <= nr; m++) {
        nf__vec_dot_q4_0_q8_0_seq_ref_rows(n, got, rs4, w4, y, m);
        assert_memory_equal(got, want, sizeof(float) * (size_t)m);
        if (nf_cpu_best_isa() >= NF_ISA_AVX2) {
            memset(got, 0, sizeof(got));
            nf__vec_dot_q4_0_q8_0_seq_avx2_rows(n, got, rs4, w4, y, m);
            assert_memory_equal(got, want, sizeof(float) * (size_t)m);
        }
    }
    nf_vec_dot_fn d8 = nf_vec_dot_for(NF_TYPE_Q8_0, NF_ISA_AVX2);
    for (int r = 0; d8 && r < nr; r++) {
        const nf_block_q8_0 *xb = (const nf_block_q8_0 *)(w8 + (size_t)r * rs8);
        float lane[8] = {0};
        for (int i = 0; i < n / 32; i++) {
            const float d = nf_fp16_to_fp32(xb[i].d) * nf_fp16_to_fp32(yb[i].d);
            for (int k = 0; k < 8; k++) {
                int sumi = 0;
                for (int j = 4 * k; j < 4 * k + 4; j++)
                    sumi += xb[i].qs[j] * yb[i].qs[j];
                lane[k] = fmaf(d, (float)sumi, lane[k]);
            }
        }
        const float h0 = lane[4] + lane[0], h1 = lane[5] + lane[1], h2 = lane[6] + lane[2],
                    h3 = lane[7] + lane[3];
        const float w = (h0 + h2) + (h1 + h3);
        float g = 0.0f;
        d8(n, &g, xb, y);
        assert_memory_equal(&g, &w, sizeof(float));
    }
    free(w4);
    free(w8);
    free(y);
    free(src);
    free(xf);
    free(yf);
}

/* The AVX-512 kernels of q4_1, q5_0, q5_1, iq4_nl, q2_K, q3_K and iq4_xs sum in the float
 * order of their AVX2 kernels (llama.cpp's): the results are bit-identical. */
static void test_avx512_order(void **state)
{
    (void)state;
    if (nf_cpu_best_isa() < NF_ISA_AVX512)
        skip();
    static const enum nf_type types[] = {NF_TYPE_Q4_1, NF_TYPE_Q5_0, NF_TYPE_Q5_1,  NF_TYPE_IQ4_NL,
                                         NF_TYPE_Q2_K, NF_TYPE_Q3_K, NF_TYPE_IQ4_XS};
    for (size_t ti = 0; ti < sizeof(types) / sizeof(types[0]); ti++) {
        const enum nf_type t = types[ti];
        nf_vec_dot_fn f2 = nf_vec_dot_for(t, NF_ISA_AVX2), f5 = nf_vec_dot_for(t, NF_ISA_AVX512);
        assert_non_null(f2);
        assert_non_null(f5);
        int ns[8];
        int nl = lengths(t, ns);
        for (int li = 0; li < nl; li++) {
            for (int p = 0; p < NPATTERNS; p++) {
                struct operands o;
                make_operands(&o, t, ns[li], p);
                float a, b;
                f2(o.n, &a, o.x, o.y);
                f5(o.n, &b, o.x, o.y);
                if (f2u(a) != f2u(b))
                    fail_msg("%s n=%d pattern %d: avx512 %.9g, avx2 %.9g", nf_type_traits(t)->name,
                             o.n, p, b, a);
                free_operands(&o);
            }
        }
    }
}

/* ---- llama.cpp's dequantization ------------------------------------------------------------
 * tests/data/quants/TYPE.bin: blocks of a tensor quantized by llama.cpp's llama-quantize, then
 * llama.cpp's dequantization of them as float32 (made as tests/data/quants/README.md says). */

static char *read_fixture(const char *name, size_t *size)
{
    char path[512], lower[16];
    size_t k = 0;
    for (; name[k] && k + 1 < sizeof(lower); k++)
        lower[k] = (char)(name[k] >= 'A' && name[k] <= 'Z' ? name[k] - 'A' + 'a' : name[k]);
    lower[k] = 0;
    snprintf(path, sizeof(path), "%s/tests/data/quants/%s.bin", NF_SOURCE_DIR, lower);
    FILE *f = fopen(path, "rb");
    if (!f)
        fail_msg("%s: cannot open", path);
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    rewind(f);
    char *buf = malloc((size_t)n + 64);
    assert_non_null(buf);
    assert_int_equal(fread(buf, 1, (size_t)n, f), (size_t)n);
    fclose(f);
    *size = (size_t)n;
    return buf;
}

/* Our dequantization equals llama.cpp's bit for bit; every vec_dot path on those blocks
 * agrees with the double dot of llama.cpp's values and the dequantized activation. */
static void test_llama_dequant(void **state)
{
    (void)state;
    static const enum nf_type types[] = {NF_TYPE_Q4_1, NF_TYPE_Q5_0, NF_TYPE_Q5_1,  NF_TYPE_IQ4_NL,
                                         NF_TYPE_Q2_K, NF_TYPE_Q3_K, NF_TYPE_IQ4_XS};
    for (size_t ti = 0; ti < sizeof(types) / sizeof(types[0]); ti++) {
        const enum nf_type t = types[ti];
        const struct nf_type_traits *tt = nf_type_traits(t);
        const struct nf_type_traits *yt = nf_type_traits(tt->vec_dot_type);
        size_t size;
        char *buf = read_fixture(tt->name, &size);
        const size_t per = tt->type_size + (size_t)tt->blck_size * sizeof(float);
        assert_true(size > 0 && size % per == 0);
        const int nb = (int)(size / per), n = nb * (int)tt->blck_size;
        /* The floats follow the blocks, so they need not be 4-byte aligned in buf. */
        float *want = malloc((size_t)n * sizeof(float)), *got = malloc((size_t)n * sizeof(float));
        memcpy(want, buf + (size_t)nb * tt->type_size, (size_t)n * sizeof(float));
        tt->to_float(buf, got, n);
        for (int e = 0; e < n; e++)
            if (f2u(got[e]) != f2u(want[e]))
                fail_msg("%s element %d of %d: %.9g, llama.cpp %.9g", tt->name, e, n, got[e],
                         want[e]);
        struct operands o = {.n = n, .x = buf};
        o.y = calloc(1, nf_row_size(tt->vec_dot_type, n) + 64);
        o.yf = malloc((size_t)n * sizeof(float));
        fill(got, n, 0);
        yt->from_float(got, o.y, n);
        yt->to_float(o.y, o.yf, n);
        double scale, exact = exact_dot(want, o.yf, n, &scale) + q8_1_s_term(t, &o);
        for (int isa = NF_ISA_SCALAR; isa <= (int)nf_cpu_best_isa(); isa++) {
            nf_vec_dot_fn f = nf_vec_dot_for(t, (enum nf_isa)isa);
            if (!f)
                continue;
            float s = -12345.0f;
            f(n, &s, buf, o.y);
            if (!(fabs(s - exact) <= TOL_REF_DOT * scale))
                fail_msg("%s %s on llama.cpp's blocks: %.9g, exact %.9g", tt->name,
                         nf_isa_name(isa), s, exact);
        }
        free(o.y);
        free(o.yf);
        free(got);
        free(want);
        free(buf);
    }
}

/* ggml's AVX-512 exp and SwiGLU: the vector kernel equals the scalar emulation bit for bit,
 * including lanes past the overflow/underflow limits, and both stay close to the C library. */
static void test_swiglu(void **state)
{
    (void)state;
    enum { N = 16 * 6 + 7 };
    float h[N], g[N], h1[N], h2[N];
    for (int i = 0; i < N; i++) {
        h[i] = (rng_uniform() - 0.5f) * 40.0f;
        g[i] = rng_uniform() - 0.5f;
    }
    h[3] = 150.0f;   /* exp(-150) underflows to 0 in ggml_v_expf */
    h[20] = -120.0f; /* exp(120) overflows to infinity: silu = -0 */
    for (int i = 0; i < N; i++) {
        const float x = h[i] / 4.0f, e = nf__v_expf_ref(x), want = expf(x);
        assert_true(fabsf(e - want) <= 4e-7f * want);
    }
    memcpy(h1, h, sizeof(h));
    nf__swiglu_ref(h1, g, N);
    for (int i = 0; i < N; i++) {
        const float want = h[i] / (1.0f + expf(-h[i])) * g[i];
        assert_true(fabsf(h1[i] - want) <= 1e-6f * fabsf(h[i] * g[i]) + 1e-30f);
    }
    if (nf_cpu_best_isa() >= NF_ISA_AVX512) {
        for (int n = 1; n <= N; n += 5) {
            memcpy(h1, h, sizeof(h));
            memcpy(h2, h, sizeof(h));
            nf__swiglu_ref(h1, g, n);
            nf__swiglu_avx512(h2, g, n);
            assert_memory_equal(h1, h2, sizeof(float) * (size_t)n);
        }
    }
}

static void test_isa_env(void **state)
{
    (void)state;
    static const char *names[] = {"scalar", "avx2", "avx512"};
    for (int isa = 0; isa < NF_ISA_COUNT; isa++) {
        pid_t pid = fork();
        assert_true(pid >= 0);
        if (pid == 0) {
            setenv("NF_ISA", names[isa], 1);
            execl("/proc/self/exe", "test_quants", "--isa-child", names[isa], (char *)NULL);
            _exit(127);
        }
        int status;
        assert_int_equal(waitpid(pid, &status, 0), pid);
        assert_true(WIFEXITED(status));
        assert_int_equal(WEXITSTATUS(status), 0);
    }
    assert_string_equal(nf_isa_name(NF_ISA_AVX2), "avx2");
    assert_null(nf_vec_dot_for(NF_TYPE_IQ2_XXS, NF_ISA_SCALAR));
}

int main(int argc, char **argv)
{
    if (argc == 3 && strcmp(argv[1], "--isa-child") == 0)
        return isa_child(argv[2]);
    printf("quants: cpu best isa %s, kernels use %s\n", nf_isa_name(nf_cpu_best_isa()),
           nf_isa_name(nf_kernels_isa()));
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_traits),       cmocka_unit_test(test_fp16_exhaustive),
        cmocka_unit_test(test_fp16_special), cmocka_unit_test(test_bf16),
        cmocka_unit_test(test_known_blocks), cmocka_unit_test(test_quantize_roundtrip),
        cmocka_unit_test(test_q8_rules),     cmocka_unit_test(test_ref_dot),
        cmocka_unit_test(test_simd_dot),     cmocka_unit_test(test_simd_quantize),
        cmocka_unit_test(test_isa_env),      cmocka_unit_test(test_llama_order),
        cmocka_unit_test(test_swiglu),       cmocka_unit_test(test_llama_dequant),
        cmocka_unit_test(test_avx512_order),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
