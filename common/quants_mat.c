/* quants_mat.c - multi-token (matrix x matrix) dot kernels: scalar references, and the paths
 * made of single-row kernels for types and ISAs without a register-blocked one.
 *
 * A vec_dot_mat call multiplies nrows weight rows by ncols activation rows (see quants.h). The
 * references below define what the SIMD paths (quants_mat_avx2.c, quants_mat_avx512.c) are
 * tested against (tests/test_quants_mat.c):
 *  - quantized types: each output is the type's scalar reference vec_dot;
 *  - BF16: the order of tinyBLAS with AVX512-BF16 (llama.cpp's for BF16 weights in prompt
 *    batches): one 16-lane accumulator, lane l taking elements 32k + 2l + 1 then 32k + 2l as
 *    vdpbf16ps does (products of bfloat16 values are exact in float, each addition rounded),
 *    the last n % 32 elements padded with zeros, then _mm512_reduce_add_ps;
 *  - F32 and F16: the order of llamafile's tinyBLAS on AVX-512, which llama.cpp uses for F32
 *    and F16 weights in prompt batches (one 16-lane accumulator of fused multiply-adds, lane
 *    i % 16 taking element i, then _mm512_reduce_add_ps). The SIMD paths reproduce it bit for
 *    bit, so the forward pass's tinyBLAS emulation (model_forward.c) can call them. */
#include <math.h>

#include "quants_impl.h"

void nf__vec_dot_f32_mat_ref(int n, float *s, size_t ld, const void *x, size_t bx, const void *y,
                             size_t by, int nrows, int ncols)
{
    for (int r = 0; r < nrows; r++) {
        const float *xr = (const void *)((const char *)x + (size_t)r * bx);
        for (int c = 0; c < ncols; c++) {
            const float *yc = (const void *)((const char *)y + (size_t)c * by);
            float acc[16] = {0};
            for (int i = 0; i < n; i++)
                acc[i & 15] = fmaf(xr[i], yc[i], acc[i & 15]);
            s[(size_t)c * ld + r] = nf__hsum16(acc);
        }
    }
}

void nf__vec_dot_f16_mat_ref(int n, float *s, size_t ld, const void *x, size_t bx, const void *y,
                             size_t by, int nrows, int ncols)
{
    for (int r = 0; r < nrows; r++) {
        const nf_fp16_t *xr = (const void *)((const char *)x + (size_t)r * bx);
        for (int c = 0; c < ncols; c++) {
            const nf_fp16_t *yc = (const void *)((const char *)y + (size_t)c * by);
            float acc[16] = {0};
            for (int i = 0; i < n; i++)
                acc[i & 15] = fmaf(nf_fp16_to_fp32(xr[i]), nf_fp16_to_fp32(yc[i]), acc[i & 15]);
            s[(size_t)c * ld + r] = nf__hsum16(acc);
        }
    }
}

void nf__vec_dot_bf16_mat_ref(int n, float *s, size_t ld, const void *x, size_t bx, const void *y,
                              size_t by, int nrows, int ncols)
{
    for (int r = 0; r < nrows; r++) {
        const nf_bf16_t *xr = (const void *)((const char *)x + (size_t)r * bx);
        for (int c = 0; c < ncols; c++) {
            const nf_bf16_t *yc = (const void *)((const char *)y + (size_t)c * by);
            float acc[16] = {0};
            for (int i = 0; i < n; i += 32)
                for (int l = 0; l < 16; l++)
                    for (int e = i + 2 * l + 1; e >= i + 2 * l; e--) { /* odd, then even */
                        const float a = e < n ? nf_bf16_to_fp32(xr[e]) : 0.0f;
                        const float b = e < n ? nf_bf16_to_fp32(yc[e]) : 0.0f;
                        acc[l] += a * b;
                    }
            s[(size_t)c * ld + r] = nf__hsum16(acc);
        }
    }
}

void nf__vec_dot_f16_cols_ref(int n, float *out, int nd, const nf_fp16_t *v, size_t vs,
                              const float *p)
{
    for (int d = 0; d < nd; d++) {
        float acc[16] = {0};
        for (int i = 0; i < n; i++)
            acc[i & 15] = fmaf(nf_fp16_to_fp32(v[(size_t)i * vs + d]), p[i], acc[i & 15]);
        out[d] = nf__hsum16(acc);
    }
}

/* Multi-token kernels made of single-row ones: weight row r stays in L1 while it meets every
 * activation row, which the caller keeps few enough to stay in L2. */
#define MAT_FROM(fn)                                                                              \
    void fn##_mat(int n, float *s, size_t ld, const void *x, size_t bx, const void *y, size_t by, \
                  int nrows, int ncols)                                                           \
    {                                                                                             \
        for (int r = 0; r < nrows; r++)                                                           \
            for (int c = 0; c < ncols; c++)                                                       \
                fn(n, s + (size_t)c * ld + r, (const char *)x + (size_t)r * bx,                   \
                   (const char *)y + (size_t)c * by);                                             \
    }

MAT_FROM(nf__vec_dot_q4_0_q8_0_ref)
MAT_FROM(nf__vec_dot_q8_0_q8_0_ref)
MAT_FROM(nf__vec_dot_q4_K_q8_K_ref)
MAT_FROM(nf__vec_dot_q5_K_q8_K_ref)
MAT_FROM(nf__vec_dot_q6_K_q8_K_ref)
MAT_FROM(nf__vec_dot_q8_K_q8_K_ref)
/* The types of quants_ext.c: register-blocked kernels in quants_mat_ext_avx2.c and
 * quants_mat_ext_avx512.c (bit-identical to the single-row AVX2 kernels). */
MAT_FROM(nf__vec_dot_q4_1_q8_1_ref)
MAT_FROM(nf__vec_dot_q5_0_q8_0_ref)
MAT_FROM(nf__vec_dot_q5_1_q8_1_ref)
MAT_FROM(nf__vec_dot_iq4_nl_q8_0_ref)
MAT_FROM(nf__vec_dot_q2_K_q8_K_ref)
MAT_FROM(nf__vec_dot_q3_K_q8_K_ref)
MAT_FROM(nf__vec_dot_iq4_xs_q8_K_ref)
