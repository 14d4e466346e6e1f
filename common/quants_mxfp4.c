/* quants_mxfp4.c - MXFP4 (OCP microscaling FP4, ggml type 39): the scalar reference kernels
 * (dequantization, ggml's reference quantizer, the vec_dot against q8_0 activations, the
 * multi-row and multi-token paths made of it) and the block check that refuses a NaN scale.
 *
 * A block is one E8M0 exponent byte e and 32 E2M1 codes. ggml stores the codes' values doubled
 * (nf_kvalues_mxfp4: 0, 1, 2, 3, 4, 6, 8, 12 and their negatives, so they are integers) and
 * halves the scale instead: x = 2^(e - 128) * kvalue. Both are powers of two times small
 * integers, so dequantization is exact (values of 8 and more overflow to infinity for
 * e >= 253, as in ggml). The SIMD kernels are quants_mxfp4_avx2.c and quants_mxfp4_avx512.c. */
#include <math.h>

#include "nf_err.h"
#include "quants_impl.h"

const int8_t nf_kvalues_mxfp4[16] = {0, 1, 2, 3, 4, 6, 8, 12, 0, -1, -2, -3, -4, -6, -8, -12};

void nf__to_float_mxfp4(const void *vx, float *y, int64_t n)
{
    const nf_block_mxfp4 *x = vx;
    for (int64_t i = 0; i < n / NF_QK4_0; i++) {
        const float d = nf_e8m0_to_fp32_half(x[i].e);
        for (int j = 0; j < NF_QK4_0 / 2; j++) {
            y[j] = (float)nf_kvalues_mxfp4[x[i].qs[j] & 0xF] * d;
            y[j + NF_QK4_0 / 2] = (float)nf_kvalues_mxfp4[x[i].qs[j] >> 4] * d;
        }
        y += NF_QK4_0;
    }
}

/* The code whose value d * kvalue is nearest to v; the first one on ties (so +0 before -0). */
static int best_index(float v, float d)
{
    int best = 0;
    float best_err = fabsf((float)nf_kvalues_mxfp4[0] * d - v);
    for (int k = 1; k < 16; k++) {
        float err = fabsf((float)nf_kvalues_mxfp4[k] * d - v);
        if (err < best_err) {
            best = k;
            best_err = err;
        }
    }
    return best;
}

/* As quantize_row_mxfp4_ref: e = floor(log2(amax)) - 2 + 127, which puts amax in [4, 8) times
 * the scale 2^(e - 127) (the largest E2M1 value is 6: a block's largest values may saturate),
 * then each value to its nearest code. An all-zero block gets e = 0. Where ggml's cast to
 * uint8_t is undefined (amax below 2^-125, e negative; an infinite amax) e is 0 or 254 here,
 * never the NaN 0xFF. */
void nf__quantize_row_mxfp4_ref(const float *x, void *vy, int64_t n)
{
    nf_block_mxfp4 *y = vy;
    for (int64_t i = 0; i < n / NF_QK4_0; i++, x += NF_QK4_0) {
        float amax = 0.0f;
        for (int j = 0; j < NF_QK4_0; j++)
            if (amax < fabsf(x[j]))
                amax = fabsf(x[j]);
        const float fe = amax > 0.0f ? floorf(log2f(amax)) - 2 + 127 : 0.0f;
        y[i].e = (uint8_t)(fe < 0.0f ? 0 : fe > 254.0f ? 254 : (int)fe);
        const float d = nf_e8m0_to_fp32_half(y[i].e);
        for (int j = 0; j < NF_QK4_0 / 2; j++)
            y[i].qs[j] = (uint8_t)(best_index(x[j], d) | (best_index(x[j + NF_QK4_0 / 2], d) << 4));
    }
}

/* The integer dot of one block's codes with a q8_0 block's quants. */
static inline int block_dot(const nf_block_mxfp4 *x, const nf_block_q8_0 *y)
{
    int sumi = 0;
    for (int j = 0; j < NF_QK4_0 / 2; j++) {
        sumi += nf_kvalues_mxfp4[x->qs[j] & 0xF] * y->qs[j];
        sumi += nf_kvalues_mxfp4[x->qs[j] >> 4] * y->qs[j + NF_QK4_0 / 2];
    }
    return sumi;
}

/* ggml's generic order: block after block, sum += (dy * scale) * integer dot. */
void nf__vec_dot_mxfp4_q8_0_ref(int n, float *s, const void *vx, const void *vy)
{
    const nf_block_mxfp4 *x = vx;
    const nf_block_q8_0 *y = vy;
    float sum = 0.0f;
    for (int i = 0; i < n / NF_QK4_0; i++)
        sum +=
            nf_fp16_to_fp32(y[i].d) * nf_e8m0_to_fp32_half(x[i].e) * (float)block_dot(&x[i], &y[i]);
    *s = sum;
}

void nf__vec_dot_mxfp4_q8_0_ref_mat(int n, float *s, size_t ld, const void *x, size_t bx,
                                    const void *y, size_t by, int nrows, int ncols)
{
    for (int r = 0; r < nrows; r++)
        for (int c = 0; c < ncols; c++)
            nf__vec_dot_mxfp4_q8_0_ref(n, s + (size_t)c * ld + r, (const char *)x + (size_t)r * bx,
                                       (const char *)y + (size_t)c * by);
}

int nf_blocks_check(enum nf_type t, const void *data, int64_t n, int64_t *bad_block)
{
    if (t != NF_TYPE_MXFP4)
        return 0;
    const nf_block_mxfp4 *x = data;
    for (int64_t i = 0; i < n / NF_QK4_0; i++) {
        if (x[i].e == 0xFF) {
            if (bad_block)
                *bad_block = i;
            return NF_ECORRUPT;
        }
    }
    return 0;
}
