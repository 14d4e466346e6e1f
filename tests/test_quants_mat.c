/* test_quants_mat.c - the multi-token kernels (vec_dot_mat) of every type and ISA against the
 * scalar reference: weight row counts 1..17, activation row counts 1..17, odd row lengths, an
 * output stride wider than the tile, and the bit-for-bit claims the forward pass relies on
 * (prompt attention's KQV kernel included). */
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "quants_impl.h"

/* The tolerances of test_quants.c's single-row kernel tests, relative to sum |x * y|. */
#define TOL_FLOAT_DOT 2e-6
#define TOL_QUANT_DOT 1e-5

#define MAXR 17 /* weight rows and activation rows tested */

static const enum nf_type weight_types[] = {
    NF_TYPE_F32,    NF_TYPE_F16,  NF_TYPE_BF16, NF_TYPE_Q4_0,  NF_TYPE_Q8_0, NF_TYPE_Q4_K,
    NF_TYPE_Q5_K,   NF_TYPE_Q6_K, NF_TYPE_Q8_K, NF_TYPE_Q4_1,  NF_TYPE_Q5_0, NF_TYPE_Q5_1,
    NF_TYPE_IQ4_NL, NF_TYPE_Q2_K, NF_TYPE_Q3_K, NF_TYPE_IQ4_XS};
#define NWEIGHT (sizeof(weight_types) / sizeof(weight_types[0]))

static uint64_t rng_state = 0x2545f4914f6cdd1dull;

static float rng_gauss(void)
{
    double a = 0;
    for (int i = 0; i < 4; i++) {
        rng_state ^= rng_state << 13;
        rng_state ^= rng_state >> 7;
        rng_state ^= rng_state << 17;
        a += (double)(rng_state >> 11) / (double)(1ull << 53);
    }
    return (float)((a - 2.0) * 1.7);
}

/* MAXR weight rows of type t and MAXR activation rows of its vec_dot_type, n elements each,
 * with their dequantized values; 1 in 64 values 30x larger (outliers). */
struct mats {
    int n;
    size_t bx, by;
    char *x, *y;
    float *xf, *yf;
};

static void make_mats(struct mats *m, enum nf_type t, int n)
{
    const struct nf_type_traits *tt = nf_type_traits(t);
    const enum nf_type yt = tt->vec_dot_type;
    m->n = n;
    m->bx = nf_row_size(t, n) + 8; /* odd strides: rows need not be aligned */
    m->by = nf_row_size(yt, n) + 4;
    m->x = calloc(MAXR, m->bx);
    m->y = calloc(MAXR, m->by);
    m->xf = malloc(sizeof(float) * MAXR * (size_t)n);
    m->yf = malloc(sizeof(float) * MAXR * (size_t)n);
    float *src = malloc(sizeof(float) * (size_t)n);
    assert_true(m->x && m->y && m->xf && m->yf && src);
    for (int r = 0; r < MAXR; r++) {
        for (int i = 0; i < n; i++)
            src[i] = rng_gauss() * ((i * 7 + r) % 64 == 0 ? 30.0f : 1.0f);
        tt->from_float(src, m->x + r * m->bx, n);
        tt->to_float(m->x + r * m->bx, m->xf + (size_t)r * n, n);
        for (int i = 0; i < n; i++)
            src[i] = rng_gauss();
        nf_type_traits(yt)->from_float(src, m->y + r * m->by, n);
        nf_type_traits(yt)->to_float(m->y + r * m->by, m->yf + (size_t)r * n, n);
    }
    free(src);
}

static void free_mats(struct mats *m)
{
    free(m->x);
    free(m->y);
    free(m->xf);
    free(m->yf);
}

/* sum |x * y| of weight row r and activation row c. */
static double abs_dot(const struct mats *m, int r, int c)
{
    double a = 0;
    for (int i = 0; i < m->n; i++)
        a += fabs((double)m->xf[(size_t)r * m->n + i] * m->yf[(size_t)c * m->n + i]);
    return a;
}

static bool is_float(enum nf_type t)
{
    return t == NF_TYPE_F32 || t == NF_TYPE_F16 || t == NF_TYPE_BF16;
}

/* Row lengths: one block, odd block counts, a long row; plain types also lengths that are not a
 * multiple of 16 (the masked and scalar tails). */
static int lengths(enum nf_type t, int *out)
{
    const int bs = (int)nf_type_traits(t)->blck_size;
    if (bs == 1) {
        static const int plain[] = {1, 16, 33, 100, 4099};
        memcpy(out, plain, sizeof(plain));
        return 5;
    }
    static const int blocks[] = {1, 3, 5, 9, 17};
    for (int i = 0; i < 5; i++)
        out[i] = blocks[i] * bs;
    out[5] = 4096 + (bs == 32 ? 3 * 32 : 0); /* q4_0: 131 blocks, 32 groups and 3 left */
    return 6;
}

/* Checks mat(nr, nc) against want (the reference over MAXR x MAXR, ld MAXR) with an output
 * stride of nr + 3 whose gaps must stay untouched; returns how many outputs were compared. */
static int check_tile(enum nf_type t, enum nf_isa isa, nf_vec_dot_mat_fn f, const struct mats *m,
                      const float *want, const double *scale, int nr, int nc)
{
    const size_t ld = (size_t)nr + 3;
    float *s = malloc(sizeof(float) * ld * (size_t)nc);
    assert_non_null(s);
    for (size_t i = 0; i < ld * (size_t)nc; i++)
        s[i] = -777.0f;
    f(m->n, s, ld, m->x, m->bx, m->y, m->by, nr, nc);
    const double tol = is_float(t) ? TOL_FLOAT_DOT : TOL_QUANT_DOT;
    for (int c = 0; c < nc; c++) {
        for (int r = 0; r < nr; r++) {
            const float g = s[(size_t)c * ld + r], w = want[c * MAXR + r];
            if (!(fabs((double)g - w) <= tol * scale[c * MAXR + r] + 1e-30))
                fail_msg("%s %s n=%d %dx%d: row %d col %d: %.9g, reference %.9g",
                         nf_type_traits(t)->name, nf_isa_name(isa), m->n, nr, nc, r, c, g, w);
        }
        for (size_t r = (size_t)nr; r < ld; r++)
            if (s[(size_t)c * ld + r] != -777.0f)
                fail_msg("%s %s n=%d %dx%d: wrote past row %d of column %d",
                         nf_type_traits(t)->name, nf_isa_name(isa), m->n, nr, nc, nr, c);
    }
    free(s);
    return nr * nc;
}

static void test_mat_vs_ref(void **state)
{
    (void)state;
    long compared = 0;
    for (size_t ti = 0; ti < NWEIGHT; ti++) {
        const enum nf_type t = weight_types[ti];
        nf_vec_dot_mat_fn ref = nf_vec_dot_mat_for(t, NF_ISA_SCALAR);
        assert_non_null(ref);
        int ns[6];
        const int nl = lengths(t, ns);
        for (int li = 0; li < nl; li++) {
            struct mats m;
            make_mats(&m, t, ns[li]);
            float want[MAXR * MAXR];
            double scale[MAXR * MAXR];
            ref(m.n, want, MAXR, m.x, m.bx, m.y, m.by, MAXR, MAXR);
            for (int c = 0; c < MAXR; c++)
                for (int r = 0; r < MAXR; r++)
                    scale[c * MAXR + r] = abs_dot(&m, r, c) + fabs(want[c * MAXR + r]);
            /* The reference itself: each output is the scalar single-row dot (the float types:
             * the tinyBLAS order, checked against the exact dot instead). */
            nf_vec_dot_fn dot = nf_vec_dot_for(t, NF_ISA_SCALAR);
            for (int c = 0; c < MAXR; c++)
                for (int r = 0; r < MAXR; r++) {
                    float d;
                    dot(m.n, &d, m.x + r * m.bx, m.y + c * m.by);
                    const double tol = is_float(t) ? TOL_FLOAT_DOT : 0.0;
                    if (!(fabs((double)d - want[c * MAXR + r]) <= tol * scale[c * MAXR + r]))
                        fail_msg("%s reference n=%d row %d col %d: %.9g, vec_dot %.9g",
                                 nf_type_traits(t)->name, m.n, r, c, want[c * MAXR + r], d);
                }
            for (int isa = NF_ISA_SCALAR; isa <= (int)nf_cpu_best_isa(); isa++) {
                nf_vec_dot_mat_fn f = nf_vec_dot_mat_for(t, (enum nf_isa)isa);
                if (!f)
                    continue;
                const bool long_row = m.n >= 4096;
                for (int nr = 1; nr <= MAXR; nr++)
                    for (int nc = 1; nc <= MAXR; nc++) {
                        /* Long rows: a few shapes only (time). */
                        if (long_row && !((nr == MAXR && nc == MAXR) || (nr == 3 && nc == 10) ||
                                          (nr == 1 && nc == 1) || (nr == 8 && nc == 16)))
                            continue;
                        compared += check_tile(t, (enum nf_isa)isa, f, &m, want, scale, nr, nc);
                    }
            }
            free_mats(&m);
        }
    }
    assert_true(compared > 100000);
}

/* Shapes past the kernels' blocking: 70 weight rows (more than a q4_0 panel of 64) x 40
 * activation rows (more than a block of 32), every type at the best ISA, against the
 * reference. */
static void test_mat_wide(void **state)
{
    (void)state;
    enum { WR = 70, WC = 40 };
    for (size_t ti = 0; ti < NWEIGHT; ti++) {
        const enum nf_type t = weight_types[ti];
        const struct nf_type_traits *tt = nf_type_traits(t);
        const int n = (int)(tt->blck_size == 1 ? 48 : 9 * tt->blck_size);
        const size_t bx = nf_row_size(t, n), by = nf_row_size(tt->vec_dot_type, n);
        char *x = calloc(WR, bx), *y = calloc(WC, by);
        float *src = malloc(sizeof(float) * (size_t)n);
        float *want = malloc(sizeof(float) * WR * WC), *got = malloc(sizeof(float) * WR * WC);
        assert_true(x && y && src && want && got);
        for (int r = 0; r < WR + WC; r++) {
            for (int i = 0; i < n; i++)
                src[i] = rng_gauss();
            if (r < WR)
                tt->from_float(src, x + (size_t)r * bx, n);
            else
                nf_type_traits(tt->vec_dot_type)->from_float(src, y + (size_t)(r - WR) * by, n);
        }
        nf_vec_dot_mat_for(t, NF_ISA_SCALAR)(n, want, WR, x, bx, y, by, WR, WC);
        tt->vec_dot_mat(n, got, WR, x, bx, y, by, WR, WC);
        for (int i = 0; i < WR * WC; i++)
            if (!(fabs((double)got[i] - want[i]) <= 1e-4 * (fabs(want[i]) + 1.0)))
                fail_msg("%s %dx%d output %d: %.9g, reference %.9g", tt->name, WR, WC, i, got[i],
                         want[i]);
        free(x);
        free(y);
        free(src);
        free(want);
        free(got);
    }
}

/* The forward pass relies on these being bit-identical: the multi-token kernels of q8_0, the
 * K-quants q2_K..q6_K, q4_1, q5_0, q5_1, iq4_nl and iq4_xs and their AVX2 single-row kernels
 * (llama.cpp's orders, which the goldens reproduce), and the F32/F16/BF16 kernels of every ISA
 * and their tinyBLAS-order reference (BF16: vdpbf16ps's, emulated on AVX2). */
static void test_mat_bit_identical(void **state)
{
    (void)state;
    int tested = 0;
    const enum nf_type types[] = {NF_TYPE_Q8_0,   NF_TYPE_Q4_K, NF_TYPE_Q5_K, NF_TYPE_Q6_K,
                                  NF_TYPE_Q2_K,   NF_TYPE_Q3_K, NF_TYPE_F32,  NF_TYPE_F16,
                                  NF_TYPE_Q4_1,   NF_TYPE_Q5_0, NF_TYPE_Q5_1, NF_TYPE_IQ4_NL,
                                  NF_TYPE_IQ4_XS, NF_TYPE_BF16};
    for (size_t ti = 0; ti < sizeof(types) / sizeof(types[0]); ti++) {
        const enum nf_type t = types[ti];
        int ns[6];
        const int nl = lengths(t, ns);
        for (int li = 0; li < nl; li++) {
            struct mats m;
            make_mats(&m, t, ns[li]);
            float want[MAXR * MAXR], got[MAXR * MAXR];
            if (!is_float(t)) {
                nf_vec_dot_fn d = nf_vec_dot_for(t, NF_ISA_AVX2);
                if (!d) {
                    free_mats(&m);
                    continue;
                }
                for (int c = 0; c < MAXR; c++)
                    for (int r = 0; r < MAXR; r++)
                        d(m.n, &want[c * MAXR + r], m.x + r * m.bx, m.y + c * m.by);
            } else {
                nf_vec_dot_mat_for(t, NF_ISA_SCALAR)(m.n, want, MAXR, m.x, m.bx, m.y, m.by, MAXR,
                                                     MAXR);
            }
            for (int isa = NF_ISA_AVX2; isa <= (int)nf_cpu_best_isa(); isa++) {
                nf_vec_dot_mat_fn f = nf_vec_dot_mat_for(t, (enum nf_isa)isa);
                if (!f && t == NF_TYPE_BF16) /* AVX-512 without AVX512-BF16: the AVX2 path */
                    continue;
                assert_non_null(f);
                f(m.n, got, MAXR, m.x, m.bx, m.y, m.by, MAXR, MAXR);
                for (int i = 0; i < MAXR * MAXR; i++)
                    if (memcmp(&got[i], &want[i], sizeof(float)))
                        fail_msg("%s %s n=%d output %d: %.9g, expected bit-identical %.9g",
                                 nf_type_traits(t)->name, nf_isa_name(isa), m.n, i, got[i],
                                 want[i]);
                tested++;
            }
            free_mats(&m);
        }
    }
    if (nf_cpu_best_isa() < NF_ISA_AVX2)
        skip();
    assert_true(tested > 0);
}

/* Prompt attention's KQV kernels (nf__vec_dot_f16_cols_*): every ISA bit-identical to the F32
 * multi-token reference on each column of V gathered to F32 (what the forward pass did
 * before), over row counts with and without a partial group of 16 and column counts with and
 * without a partial vector. */
static void test_cols_bit_identical(void **state)
{
    (void)state;
    typedef void (*cols_fn)(int, float *, int, const nf_fp16_t *, size_t, const float *);
    const cols_fn fns[NF_ISA_COUNT] = {nf__vec_dot_f16_cols_ref, nf__vec_dot_f16_cols_avx2,
                                       nf__vec_dot_f16_cols_avx512};
    static const int ns[] = {1, 5, 16, 17, 33, 100, 513};
    static const int nds[] = {1, 7, 8, 16, 17, 64, 80, 128};
    enum { MAXN = 513, MAXD = 128, VS = MAXD + 8 };
    nf_fp16_t *v = malloc(sizeof(nf_fp16_t) * MAXN * VS);
    float *p = malloc(sizeof(float) * MAXN), *col = malloc(sizeof(float) * MAXN);
    float want[MAXD + 1], got[MAXD + 1];
    assert_true(v && p && col);
    for (int i = 0; i < MAXN * VS; i++)
        v[i] = nf_fp32_to_fp16(rng_gauss());
    for (int i = 0; i < MAXN; i++) /* softmax-like weights, F16-rounded as the forward pass's */
        p[i] = nf_fp16_to_fp32(nf_fp32_to_fp16(fabsf(rng_gauss()) / 64.0f));
    int tested = 0;
    for (size_t ni = 0; ni < sizeof(ns) / sizeof(ns[0]); ni++)
        for (size_t di = 0; di < sizeof(nds) / sizeof(nds[0]); di++) {
            const int n = ns[ni], nd = nds[di];
            for (int d = 0; d < nd; d++) {
                for (int i = 0; i < n; i++)
                    col[i] = nf_fp16_to_fp32(v[(size_t)i * VS + d]);
                nf__vec_dot_f32_mat_ref(n, &want[d], 1, col, 0, p, 0, 1, 1);
            }
            for (int isa = NF_ISA_SCALAR; isa <= (int)nf_cpu_best_isa(); isa++) {
                got[nd] = -777.0f;
                fns[isa](n, got, nd, v, VS, p);
                for (int d = 0; d < nd; d++)
                    if (memcmp(&got[d], &want[d], sizeof(float)))
                        fail_msg("cols %s n=%d nd=%d column %d: %.9g, expected bit-identical %.9g",
                                 nf_isa_name((enum nf_isa)isa), n, nd, d, got[d], want[d]);
                if (got[nd] != -777.0f)
                    fail_msg("cols %s n=%d nd=%d wrote past the last column",
                             nf_isa_name((enum nf_isa)isa), n, nd);
                tested++;
            }
        }
    assert_true(tested >= 56);
    free(v);
    free(p);
    free(col);
}

/* A prompt ubatch's shape past every blocking of the q4_0 kernels: 37 weight rows (two panels
 * of 16 and 5 left) x 521 activation rows (more than a packed chunk of 512 tokens) x 70 blocks
 * (several chunks of K at that many tokens), each ISA's q4_0 vec_dot_mat against the reference,
 * with the tolerance of test_mat_vs_ref relative to sum |x * y|. */
static void test_mat_q4_0_prompt(void **state)
{
    (void)state;
    enum { R = 37, C = 521, N = 70 * 32 };
    const struct nf_type_traits *tt = nf_type_traits(NF_TYPE_Q4_0);
    const size_t bx = nf_row_size(NF_TYPE_Q4_0, N) + 2, by = nf_row_size(NF_TYPE_Q8_0, N);
    char *x = calloc(R, bx), *y = calloc(C, by);
    float *xf = malloc(sizeof(float) * R * N), *yf = malloc(sizeof(float) * C * N);
    float *want = malloc(sizeof(float) * R * C), *got = malloc(sizeof(float) * R * C);
    assert_true(x && y && xf && yf && want && got);
    for (int r = 0; r < R; r++) {
        for (int i = 0; i < N; i++)
            xf[(size_t)r * N + i] = rng_gauss();
        tt->from_float(xf + (size_t)r * N, x + r * bx, N);
        tt->to_float(x + r * bx, xf + (size_t)r * N, N);
    }
    for (int c = 0; c < C; c++) {
        for (int i = 0; i < N; i++)
            yf[(size_t)c * N + i] = rng_gauss();
        nf_type_traits(NF_TYPE_Q8_0)->from_float(yf + (size_t)c * N, y + c * by, N);
        nf_type_traits(NF_TYPE_Q8_0)->to_float(y + c * by, yf + (size_t)c * N, N);
    }
    nf_vec_dot_mat_for(NF_TYPE_Q4_0, NF_ISA_SCALAR)(N, want, R, x, bx, y, by, R, C);
    for (int isa = NF_ISA_SCALAR + 1; isa <= (int)nf_cpu_best_isa(); isa++) {
        nf_vec_dot_mat_fn f = nf_vec_dot_mat_for(NF_TYPE_Q4_0, (enum nf_isa)isa);
        assert_non_null(f);
        for (int i = 0; i < R * C; i++)
            got[i] = NAN;
        f(N, got, R, x, bx, y, by, R, C);
        for (int c = 0; c < C; c++)
            for (int r = 0; r < R; r++) {
                double a = 0;
                for (int i = 0; i < N; i++)
                    a += fabs((double)xf[(size_t)r * N + i] * yf[(size_t)c * N + i]);
                const float g = got[c * R + r], w = want[c * R + r];
                if (!(fabs((double)g - w) <= TOL_QUANT_DOT * (a + fabs(w))))
                    fail_msg("q4_0 %s %dx%d row %d col %d: %.9g, reference %.9g",
                             nf_isa_name((enum nf_isa)isa), R, C, r, c, g, w);
            }
    }
    free(x);
    free(y);
    free(xf);
    free(yf);
    free(want);
    free(got);
}

/* The q4_0 GEMM on activations packed once (nf_q4_0_packed) gives each ISA's kernel on the
 * q8_0 rows bit for bit, for every row count 1..17, a stack tile's 100 rows, token counts
 * from 1 past a chunk of 512 and odd block counts, and on any row range of a call (what one
 * thread's share of a tile computes). */
static void test_mat_q4_0_packed(void **state)
{
    (void)state;
    static const int ncs[] = {1, 2, 5, 17, 40, 513};
    static const int nbs[] = {1, 7, 70};
    enum { RMAX = 100, CMAX = 513, NMAX = 70 * 32 };
    const struct nf_type_traits *tt = nf_type_traits(NF_TYPE_Q4_0);
    nf_from_float_fn q = nf_type_traits(NF_TYPE_Q8_0)->from_float_act;
    const size_t bx = nf_row_size(NF_TYPE_Q4_0, NMAX) + 2, by = nf_row_size(NF_TYPE_Q8_0, NMAX);
    char *x = calloc(RMAX, bx), *y = calloc(CMAX, by);
    float *xf = malloc(sizeof(float) * RMAX * NMAX), *yf = malloc(sizeof(float) * CMAX * NMAX);
    float *want = malloc(sizeof(float) * RMAX * CMAX), *got = malloc(sizeof(float) * RMAX * CMAX);
    void *yp = malloc(nf_q4_0_packed_bytes(NMAX, CMAX));
    assert_true(x && y && xf && yf && want && got && yp);
    for (int i = 0; i < RMAX * NMAX; i++)
        xf[i] = rng_gauss();
    for (int i = 0; i < CMAX * NMAX; i++)
        yf[i] = rng_gauss();
    int tested = 0;
    for (int isa = NF_ISA_SCALAR; isa <= (int)nf_cpu_best_isa(); isa++) {
        nf_q4_0_pack_fn pack;
        nf_vec_dot_mat_fn pm;
        if (!nf_q4_0_packed((enum nf_isa)isa, &pack, &pm)) {
            assert_int_equal(isa, NF_ISA_SCALAR);
            continue;
        }
        nf_vec_dot_mat_fn f = nf_vec_dot_mat_for(NF_TYPE_Q4_0, (enum nf_isa)isa);
        for (size_t bi = 0; bi < sizeof(nbs) / sizeof(nbs[0]); bi++) {
            const int n = nbs[bi] * 32;
            for (int r = 0; r < RMAX; r++)
                tt->from_float(xf + (size_t)r * NMAX, x + r * bx, n);
            for (size_t ci = 0; ci < sizeof(ncs) / sizeof(ncs[0]); ci++) {
                const int nc = ncs[ci];
                for (int c = 0; c < nc; c++)
                    q(yf + (size_t)c * NMAX, y + c * by, n);
                /* The packer reads rows n floats apart. */
                float *yc = malloc(sizeof(float) * (size_t)nc * n);
                assert_non_null(yc);
                for (int c = 0; c < nc; c++)
                    memcpy(yc + (size_t)c * n, yf + (size_t)c * NMAX, sizeof(float) * n);
                pack(yc, n, nc, q, yp);
                free(yc);
                for (int nr = 1; nr <= RMAX; nr = nr < 17 ? nr + 1 : RMAX) {
                    for (int i = 0; i < RMAX * CMAX; i++)
                        want[i] = got[i] = NAN;
                    f(n, want, nr, x, bx, y, by, nr, nc);
                    /* Two row ranges, as two threads' shares of the call. */
                    const int r1 = nr / 3;
                    pm(n, got, nr, x, bx, yp, 0, r1, nc);
                    pm(n, got + r1, nr, x + (size_t)r1 * bx, bx, yp, 0, nr - r1, nc);
                    if (memcmp(want, got, sizeof(float) * (size_t)nr * nc) != 0)
                        fail_msg("q4_0 packed %s n=%d rows=%d cols=%d differs",
                                 nf_isa_name((enum nf_isa)isa), n, nr, nc);
                    tested++;
                    if (nr == RMAX)
                        break;
                }
            }
        }
    }
    if (nf_cpu_best_isa() >= NF_ISA_AVX2)
        assert_true(tested >= 18 * 18);
    free(x);
    free(y);
    free(xf);
    free(yf);
    free(want);
    free(got);
    free(yp);
}

static void test_mat_traits(void **state)
{
    (void)state;
    for (size_t ti = 0; ti < NWEIGHT; ti++) {
        const struct nf_type_traits *tt = nf_type_traits(weight_types[ti]);
        assert_non_null(tt->vec_dot_mat);
        assert_non_null(nf_vec_dot_mat_for(weight_types[ti], NF_ISA_SCALAR));
    }
    assert_null(nf_type_traits(NF_TYPE_IQ2_XXS)->vec_dot_mat);
    assert_null(nf_vec_dot_mat_for(NF_TYPE_Q4_0, NF_ISA_COUNT));
}

int main(void)
{
    nf_kernels_init();
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_mat_traits),         cmocka_unit_test(test_mat_vs_ref),
        cmocka_unit_test(test_mat_wide),           cmocka_unit_test(test_mat_bit_identical),
        cmocka_unit_test(test_cols_bit_identical), cmocka_unit_test(test_mat_q4_0_prompt),
        cmocka_unit_test(test_mat_q4_0_packed),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
