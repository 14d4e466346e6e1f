/* test_mxfp4.c - the MXFP4 type: its scale and value table, dequantization and quantization
 * against llama.cpp's (tests/data/quants/mxfp4*.bin), every SIMD vec_dot, multi-row and
 * multi-token kernel against the scalar reference and against llama.cpp's float order, and the
 * block check that refuses a NaN scale. */
#include <math.h>
#include <setjmp.h>
#include <stdbool.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "nf_err.h"
#include "quants.h"
#include "quants_impl.h"

/* SIMD vs scalar reference: the sums differ only in the order of float additions of exact
 * per-block products, so relative to sum |d * integer lane sums| they agree within this. */
#define TOL_MXFP4_DOT 1e-5

static uint64_t rng_state = 0x2545f4914f6cdd1dull;

static uint64_t rng_u64(void)
{
    uint64_t x = rng_state;
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    return rng_state = x;
}

static uint32_t f2u(float f)
{
    uint32_t u;
    memcpy(&u, &f, 4);
    return u;
}

/* ---- scale, table, known blocks ---------------------------------------------------------- */

static void test_scale_and_table(void **state)
{
    (void)state;
    /* 2^(e - 128) for every exponent but NaN's 0xFF: subnormal for 0 and 1. */
    for (int e = 0; e < 255; e++)
        assert_true(nf_e8m0_to_fp32_half((uint8_t)e) == ldexpf(1.0f, e - 128));
    assert_int_equal(f2u(nf_e8m0_to_fp32_half(0)), 0x00200000u);
    assert_int_equal(f2u(nf_e8m0_to_fp32_half(1)), 0x00400000u);
    assert_true(nf_e8m0_to_fp32_half(128) == 1.0f);
    /* Twice the E2M1 values; bit 3 the sign. */
    static const float e2m1[8] = {0, 0.5f, 1, 1.5f, 2, 3, 4, 6};
    for (int k = 0; k < 16; k++)
        assert_true(nf_kvalues_mxfp4[k] == (k & 8 ? -2 : 2) * e2m1[k & 7]);
    const struct nf_type_traits *t = nf_type_traits(NF_TYPE_MXFP4);
    assert_non_null(t);
    assert_string_equal(t->name, "mxfp4");
    assert_true(t->compute);
    assert_int_equal(t->blck_size, 32);
    assert_int_equal(t->type_size, 17);
    assert_int_equal(t->vec_dot_type, NF_TYPE_Q8_0);
    assert_non_null(t->to_float);
    assert_non_null(t->from_float);
    assert_non_null(t->vec_dot);
    assert_non_null(t->vec_dot_rows);
    assert_non_null(t->vec_dot_mat);
    assert_int_equal(nf_row_size(NF_TYPE_MXFP4, 2880), 2880 / 32 * 17);
}

/* A hand-made block: element j is the low nibble of qs[j], element j + 16 the high one. */
static void test_known_block(void **state)
{
    (void)state;
    nf_block_mxfp4 b = {.e = 130}; /* scale 2^2 */
    for (int j = 0; j < 16; j++)
        b.qs[j] = (uint8_t)(j | ((15 - j) << 4));
    float y[32];
    nf_type_traits(NF_TYPE_MXFP4)->to_float(&b, y, 32);
    for (int j = 0; j < 16; j++) {
        assert_true(y[j] == 4.0f * nf_kvalues_mxfp4[j]);
        assert_true(y[j + 16] == 4.0f * nf_kvalues_mxfp4[15 - j]);
    }
    assert_true(y[7] == 48.0f && y[15] == -48.0f && y[16] == -48.0f);
    /* Code 8 is -0. */
    assert_true(y[8] == 0.0f);
}

/* The quantizer: e from the block's largest magnitude, each value to its nearest code, exact
 * on values the format holds, and all-zero blocks to e = 0. */
static void test_quantize(void **state)
{
    (void)state;
    const struct nf_type_traits *t = nf_type_traits(NF_TYPE_MXFP4);
    float x[64], back[64];
    nf_block_mxfp4 q[2];
    for (int e = 1; e <= 252; e += 7) { /* 12 * 2^(253 - 128) overflows */
        for (int j = 0; j < 64; j++)
            x[j] = ldexpf((float)nf_kvalues_mxfp4[rng_u64() % 16], e - 128);
        x[5] = ldexpf(12.0f, e - 128); /* the largest magnitude fixes the scale */
        x[40] = ldexpf(-12.0f, e - 128);
        t->from_float(x, q, 64);
        t->to_float(q, back, 64);
        assert_int_equal(q[0].e, e);
        assert_memory_equal(x, back, sizeof(x));
    }
    memset(x, 0, sizeof(x));
    t->from_float(x, q, 64);
    assert_int_equal(q[0].e, 0);
    assert_int_equal(q[1].e, 0);
    /* Below 2^-125 llama.cpp's e would be negative: 0 here, never the NaN 0xFF. */
    x[3] = 1e-38f;
    t->from_float(x, q, 32);
    assert_int_equal(q[0].e, 0);
    /* amax 5: floor(log2 5) = 2, e = 127, scale 2^-1; 5 lies halfway between codes 6 and 7
     * (values 4 and 6): a tie, the first code wins; -0.2 is nearer 0 than -0.5. */
    memset(x, 0, sizeof(x));
    x[0] = 5.0f;
    x[1] = -0.2f;
    t->from_float(x, q, 32);
    assert_int_equal(q[0].e, 127);
    assert_int_equal(q[0].qs[0] & 0xF, 6);
    assert_int_equal(q[0].qs[1] & 0xF, 0);
}

/* ---- llama.cpp's blocks ------------------------------------------------------------------ */

static char *read_fixture(const char *name, size_t *size)
{
    char path[512];
    snprintf(path, sizeof(path), "%s/tests/data/quants/%s", NF_SOURCE_DIR, name);
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

/* mxfp4.bin: blocks of a tensor that llama-quantize made (MXFP4_MOE --pure), then llama.cpp's
 * dequantization of them; mxfp4_src.bin: the values it quantized. Our dequantization equals
 * llama.cpp's and our quantizer gives llama-quantize's blocks, bit for bit. */
static void test_llama_blocks(void **state)
{
    (void)state;
    const struct nf_type_traits *t = nf_type_traits(NF_TYPE_MXFP4);
    size_t size, src_size;
    char *buf = read_fixture("mxfp4.bin", &size);
    char *src = read_fixture("mxfp4_src.bin", &src_size);
    const size_t per = 17 + 32 * sizeof(float);
    assert_true(size > 0 && size % per == 0);
    const int nb = (int)(size / per), n = 32 * nb;
    assert_int_equal(src_size, (size_t)n * sizeof(float));
    float *want = malloc((size_t)n * sizeof(float)), *got = malloc((size_t)n * sizeof(float));
    float *x = malloc((size_t)n * sizeof(float));
    char *q = malloc((size_t)nb * 17);
    memcpy(want, buf + (size_t)nb * 17, (size_t)n * sizeof(float));
    memcpy(x, src, (size_t)n * sizeof(float));
    t->to_float(buf, got, n);
    for (int e = 0; e < n; e++)
        if (f2u(got[e]) != f2u(want[e]))
            fail_msg("element %d of %d: %.9g, llama.cpp %.9g", e, n, got[e], want[e]);
    t->from_float(x, q, n);
    for (int b = 0; b < nb; b++)
        if (memcmp(q + 17 * b, buf + 17 * b, 17))
            fail_msg("block %d: quantized differently from llama-quantize (e %d vs %d)", b,
                     (uint8_t)q[17 * b], (uint8_t)buf[17 * b]);
    assert_int_equal(nf_blocks_check(NF_TYPE_MXFP4, buf, n, NULL), 0);
    free(want);
    free(got);
    free(x);
    free(q);
    free(buf);
    free(src);
}

/* ---- kernels ----------------------------------------------------------------------------- */

/* nb random weight blocks: exponents over the whole range (0, 1 subnormal, up to 254) and
 * random codes; activation blocks with random quants and a positive or negative F16 scale
 * chosen so that no block's product overflows (dy smaller where e is large). */
static void random_blocks(nf_block_mxfp4 *x, nf_block_q8_0 *y, int nb, bool any_pair)
{
    for (int i = 0; i < nb; i++) {
        const uint64_t r = rng_u64();
        int e = (int)(r % 255);
        if (r % 11 == 0)
            e = (int)(r >> 8) % 3 ? 0 : 254;
        else if (r % 13 == 0)
            e = 1;
        x[i].e = (uint8_t)e;
        for (int j = 0; j < 16; j++)
            x[i].qs[j] = (uint8_t)rng_u64();
        /* any_pair: every x block may meet every y block (the multi-row tests), so dy is
         * small enough for e = 254. */
        int ey = any_pair ? -20 : 100 - (e - 128) - 16;
        ey = ey > 15 ? 15 : ey < -24 ? -24 : ey;
        float dy = ldexpf(1.0f + (float)(rng_u64() % 1024) / 1024.0f, ey - (int)(rng_u64() % 8));
        y[i].d = nf_fp32_to_fp16(rng_u64() & 1 ? dy : -dy);
        if (y[i].d == 0 || y[i].d == 0x8000)
            y[i].d = 1; /* the smallest subnormal */
        for (int j = 0; j < 32; j++)
            y[i].qs[j] = (int8_t)((int)(rng_u64() % 255) - 127);
    }
}

/* The code of element j (0..31) of block b: low nibbles first. */
static int code(const nf_block_mxfp4 *b, int j)
{
    return j < 16 ? b->qs[j] & 0xF : b->qs[j - 16] >> 4;
}

/* The dot in double from the codes (dequantized floats overflow for e >= 253); *scale = sum over
 * blocks of |dy * 2^(e - 128)| * sum |value * quant|, the size of the rounding errors. */
static double exact_dot(const nf_block_mxfp4 *x, const nf_block_q8_0 *y, int nb, double *scale)
{
    double s = 0;
    *scale = 0;
    for (int i = 0; i < nb; i++) {
        double a = 0, aa = 0;
        for (int j = 0; j < 32; j++) {
            const double p = (double)nf_kvalues_mxfp4[code(&x[i], j)] * y[i].qs[j];
            a += p;
            aa += fabs(p);
        }
        const double d = (double)nf_fp16_to_fp32(y[i].d) * ldexp(1.0, x[i].e - 128);
        s += d * a;
        *scale += fabs(d) * aa;
    }
    return s;
}

/* llama.cpp's x86 ggml_vec_dot_mxfp4_q8_0 (its AVX2 path), emulated lane by lane: even blocks
 * in accumulator 1, odd ones in 2, lane k = elements 4k..4k+3, fma per block; the two added,
 * then the AVX horizontal add; an odd last block as a scalar fma. */
static float llama_order(const nf_block_mxfp4 *x, const nf_block_q8_0 *y, int nb)
{
    float acc[2][8] = {{0}};
    int i = 0;
    for (; i + 1 < nb; i += 2)
        for (int h = 0; h < 2; h++) {
            const float d = nf_fp16_to_fp32(y[i + h].d) * nf_e8m0_to_fp32_half(x[i + h].e);
            for (int k = 0; k < 8; k++) {
                int sumi = 0;
                for (int j = 4 * k; j < 4 * k + 4; j++)
                    sumi += nf_kvalues_mxfp4[code(&x[i + h], j)] * y[i + h].qs[j];
                acc[h][k] = fmaf(d, (float)sumi, acc[h][k]);
            }
        }
    float l[8];
    for (int k = 0; k < 8; k++)
        l[k] = acc[0][k] + acc[1][k];
    const float h0 = l[4] + l[0], h1 = l[5] + l[1], h2 = l[6] + l[2], h3 = l[7] + l[3];
    float sum = (h0 + h2) + (h1 + h3);
    if (i < nb) {
        int sumi = 0;
        for (int j = 0; j < 32; j++)
            sumi += nf_kvalues_mxfp4[code(&x[i], j)] * y[i].qs[j];
        sum = fmaf(nf_fp16_to_fp32(y[i].d) * nf_e8m0_to_fp32_half(x[i].e), (float)sumi, sum);
    }
    return sum;
}

/* Every ISA's vec_dot: the scalar reference within TOL_MXFP4_DOT of the exact dot, the SIMD
 * paths within it of the reference and bit-identical to llama.cpp's order; 1..17 blocks, then
 * longer rows. */
static void test_vec_dot(void **state)
{
    (void)state;
    static const int nbs[] = {1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 90, 128};
    enum { MAXB = 128 };
    nf_block_mxfp4 *x = malloc(sizeof(*x) * MAXB);
    nf_block_q8_0 *y = malloc(sizeof(*y) * MAXB);
    int tested = 0;
    for (size_t k = 0; k < sizeof(nbs) / sizeof(nbs[0]); k++) {
        for (int rep = 0; rep < 20; rep++) {
            const int nb = nbs[k], n = 32 * nb;
            random_blocks(x, y, nb, false);
            double scale;
            const double exact = exact_dot(x, y, nb, &scale);
            float ref;
            nf_vec_dot_for(NF_TYPE_MXFP4, NF_ISA_SCALAR)(n, &ref, x, y);
            if (!(fabs(ref - exact) <= TOL_MXFP4_DOT * scale + 1e-37))
                fail_msg("scalar n=%d: %.9g, exact %.9g", n, ref, exact);
            const float want = llama_order(x, y, nb);
            for (int isa = NF_ISA_AVX2; isa <= (int)nf_cpu_best_isa(); isa++) {
                nf_vec_dot_fn f = nf_vec_dot_for(NF_TYPE_MXFP4, (enum nf_isa)isa);
                assert_non_null(f);
                float got = -12345.0f;
                f(n, &got, x, y);
                if (!(fabs(got - ref) <= TOL_MXFP4_DOT * scale + 1e-37))
                    fail_msg("%s n=%d: %.9g, scalar %.9g", nf_isa_name(isa), n, got, ref);
                if (f2u(got) != f2u(want))
                    fail_msg("%s n=%d: %.9g, llama.cpp's order %.9g", nf_isa_name(isa), n, got,
                             want);
                tested++;
            }
        }
    }
    if (nf_cpu_best_isa() >= NF_ISA_AVX2)
        assert_true(tested > 0);
    free(x);
    free(y);
}

/* Multi-row and multi-token kernels of every ISA, 1..17 weight rows (and 1..9 activation rows)
 * with a row stride: each output equals that ISA's vec_dot bit for bit (so the forward pass
 * sums as llama.cpp's mul_mat_id does, whatever the batch), and the SIMD ones agree with the
 * scalar reference within TOL_MXFP4_DOT. */
static void test_rows_and_mat(void **state)
{
    (void)state;
    enum { R = 17, C = 9 };
    static const int nbs[] = {1, 2, 3, 8, 9, 16, 17};
    for (size_t k = 0; k < sizeof(nbs) / sizeof(nbs[0]); k++) {
        const int nb = nbs[k], n = 32 * nb;
        const size_t bx = 17 * (size_t)nb + 5, by = 34 * (size_t)nb + 2; /* odd strides */
        char *x = calloc(R, bx), *y = calloc(C, by);
        for (int r = 0; r < R; r++) {
            nf_block_mxfp4 xb[17];
            nf_block_q8_0 yb[17];
            random_blocks(xb, yb, nb, true);
            memcpy(x + (size_t)r * bx, xb, 17 * (size_t)nb);
            if (r < C)
                memcpy(y + (size_t)r * by, yb, 34 * (size_t)nb);
        }
        for (int isa = NF_ISA_SCALAR; isa <= (int)nf_cpu_best_isa(); isa++) {
            nf_vec_dot_fn dot = nf_vec_dot_for(NF_TYPE_MXFP4, (enum nf_isa)isa);
            nf_vec_dot_fn ref = nf_vec_dot_for(NF_TYPE_MXFP4, NF_ISA_SCALAR);
            nf_vec_dot_rows_fn rows = nf_vec_dot_rows_for(NF_TYPE_MXFP4, (enum nf_isa)isa);
            nf_vec_dot_mat_fn mat = nf_vec_dot_mat_for(NF_TYPE_MXFP4, (enum nf_isa)isa);
            assert_non_null(dot);
            assert_non_null(rows);
            assert_non_null(mat);
            float want[C][R], s[C * (R + 1) + 1];
            for (int c = 0; c < C; c++)
                for (int r = 0; r < R; r++) {
                    const void *xr = x + (size_t)r * bx, *yc = y + (size_t)c * by;
                    float sr;
                    dot(n, &want[c][r], xr, yc);
                    ref(n, &sr, xr, yc);
                    double sc;
                    exact_dot(xr, yc, nb, &sc);
                    if (!(fabs(want[c][r] - sr) <= TOL_MXFP4_DOT * sc + 1e-37))
                        fail_msg("%s n=%d row %d col %d: %.9g, scalar %.9g", nf_isa_name(isa), n, r,
                                 c, want[c][r], sr);
                }
            for (int nr = 1; nr <= R; nr++) {
                s[nr] = -777.0f;
                rows(n, s, bx, x, y, nr);
                assert_true(s[nr] == -777.0f); /* nothing past nrows */
                for (int r = 0; r < nr; r++)
                    if (f2u(s[r]) != f2u(want[0][r]))
                        fail_msg("%s rows n=%d nrows=%d row %d: %.9g, vec_dot %.9g",
                                 nf_isa_name(isa), n, nr, r, s[r], want[0][r]);
                for (int nc = 1; nc <= C; nc += (nr % 3) + 1) {
                    const size_t ld = (size_t)nr + 1;
                    for (size_t i = 0; i < sizeof(s) / sizeof(s[0]); i++)
                        s[i] = -777.0f;
                    mat(n, s, ld, x, bx, y, by, nr, nc);
                    for (int c = 0; c < nc; c++) {
                        for (int r = 0; r < nr; r++)
                            if (f2u(s[(size_t)c * ld + r]) != f2u(want[c][r]))
                                fail_msg("%s mat n=%d %dx%d (%d, %d): %.9g, vec_dot %.9g",
                                         nf_isa_name(isa), n, nr, nc, r, c, s[(size_t)c * ld + r],
                                         want[c][r]);
                        assert_true(s[(size_t)c * ld + nr] == -777.0f); /* the ld gap */
                    }
                }
            }
        }
        free(x);
        free(y);
    }
}

/* ---- the block check --------------------------------------------------------------------- */

static void test_blocks_check(void **state)
{
    (void)state;
    nf_block_mxfp4 b[5];
    memset(b, 0, sizeof(b));
    for (int i = 0; i < 5; i++)
        b[i].e = (uint8_t)(251 + i); /* 254 is the largest valid exponent, 255 NaN */
    int64_t bad = -1;
    assert_int_equal(nf_blocks_check(NF_TYPE_MXFP4, b, 32 * 4, &bad), 0);
    assert_int_equal(bad, -1);
    assert_int_equal(nf_blocks_check(NF_TYPE_MXFP4, b, 32 * 5, &bad), NF_ECORRUPT);
    assert_int_equal(bad, 4);
    b[1].e = 0xFF;
    assert_int_equal(nf_blocks_check(NF_TYPE_MXFP4, b, 32 * 5, NULL), NF_ECORRUPT);
    assert_int_equal(nf_blocks_check(NF_TYPE_MXFP4, b, 32 * 5, &bad), NF_ECORRUPT);
    assert_int_equal(bad, 1);
    /* Other types have no invalid bit pattern. */
    memset(b, 0xFF, sizeof(b));
    assert_int_equal(nf_blocks_check(NF_TYPE_Q8_0, b, 32 * 2, &bad), 0);
    assert_int_equal(nf_blocks_check(NF_TYPE_F32, b, 16, &bad), 0);
}

int main(void)
{
    printf("mxfp4: cpu best isa %s\n", nf_isa_name(nf_cpu_best_isa()));
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_scale_and_table), cmocka_unit_test(test_known_block),
        cmocka_unit_test(test_quantize),        cmocka_unit_test(test_llama_blocks),
        cmocka_unit_test(test_vec_dot),         cmocka_unit_test(test_rows_and_mat),
        cmocka_unit_test(test_blocks_check),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
