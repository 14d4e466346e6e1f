/* quants_ext.c - scalar reference kernels of q4_1, q5_0, q5_1, iq4_nl (with q8_1), q2_K, q3_K
 * and iq4_xs: dequantization, a reference quantizer and the vec_dot against their activation
 * type (q8_1 for the types with a minimum, q8_0 for the other 32-blocks, q8_K for the rest). */
#include <math.h>
#include <string.h>

#include "quants_impl.h"

const int8_t nf_kvalues_iq4nl[16] = {-127, -104, -83, -65, -49, -35, -22, -10,
                                     1,    13,   25,  38,  53,  69,  89,  113};

/* The fifth bits of a q5_0/q5_1 block: bit j is element j. */
static inline uint32_t q5_high_bits(const uint8_t qh[4])
{
    uint32_t u;
    memcpy(&u, qh, sizeof(u));
    return u;
}

/* The low nibble of qs[j] is element j, the high one element j + 16: the unsigned quant of
 * element e (0..31) of a 32-block. */
static inline int nibble(const uint8_t *qs, int e)
{
    return e < 16 ? qs[e] & 0xF : qs[e - 16] >> 4;
}

/* The 6-bit scale (0..63) of sub-block s (0..15) of a q3_K block. */
static inline int q3_K_scale(const uint8_t *sc, int s)
{
    int lo = s < 8 ? sc[s] & 0xF : sc[s - 8] >> 4;
    int hi = (sc[8 + s % 4] >> (2 * (s / 4))) & 3;
    return lo | (hi << 4);
}

/* The 2-bit field of element e (0..255) of a q2_K/q3_K qs array. */
static inline int q2_bits(const uint8_t *qs, int e)
{
    return (qs[32 * (e / 128) + e % 32] >> (2 * ((e % 128) / 32))) & 3;
}

/* The signed 3-bit quant (-4..3) of element e of a q3_K block. */
static inline int q3_K_value(const nf_block_q3_K *b, int e)
{
    int bit = (b->hmask[e % 32] >> (4 * (e / 128) + (e % 128) / 32)) & 1;
    return q2_bits(b->qs, e) - (bit ? 0 : 4);
}

/* ---- dequantization ---------------------------------------------------------------------- */

void nf__to_float_q4_1(const void *vx, float *y, int64_t n)
{
    const nf_block_q4_1 *x = vx;
    for (int64_t i = 0; i < n / NF_QK4_0; i++) {
        float d = nf_fp16_to_fp32(x[i].d), m = nf_fp16_to_fp32(x[i].m);
        for (int e = 0; e < NF_QK4_0; e++)
            *y++ = (float)nibble(x[i].qs, e) * d + m;
    }
}

void nf__to_float_q5_0(const void *vx, float *y, int64_t n)
{
    const nf_block_q5_0 *x = vx;
    for (int64_t i = 0; i < n / NF_QK4_0; i++) {
        float d = nf_fp16_to_fp32(x[i].d);
        uint32_t qh = q5_high_bits(x[i].qh);
        for (int e = 0; e < NF_QK4_0; e++)
            *y++ = (float)((nibble(x[i].qs, e) | (int)(((qh >> e) & 1) << 4)) - 16) * d;
    }
}

void nf__to_float_q5_1(const void *vx, float *y, int64_t n)
{
    const nf_block_q5_1 *x = vx;
    for (int64_t i = 0; i < n / NF_QK4_0; i++) {
        float d = nf_fp16_to_fp32(x[i].d), m = nf_fp16_to_fp32(x[i].m);
        uint32_t qh = q5_high_bits(x[i].qh);
        for (int e = 0; e < NF_QK4_0; e++)
            *y++ = (float)(nibble(x[i].qs, e) | (int)(((qh >> e) & 1) << 4)) * d + m;
    }
}

void nf__to_float_q8_1(const void *vx, float *y, int64_t n)
{
    const nf_block_q8_1 *x = vx;
    for (int64_t i = 0; i < n / NF_QK8_0; i++) {
        float d = nf_fp16_to_fp32(x[i].d);
        for (int e = 0; e < NF_QK8_0; e++)
            *y++ = (float)x[i].qs[e] * d;
    }
}

void nf__to_float_iq4_nl(const void *vx, float *y, int64_t n)
{
    const nf_block_iq4_nl *x = vx;
    for (int64_t i = 0; i < n / NF_QK4_0; i++) {
        float d = nf_fp16_to_fp32(x[i].d);
        for (int e = 0; e < NF_QK4_0; e++)
            *y++ = d * nf_kvalues_iq4nl[nibble(x[i].qs, e)];
    }
}

void nf__to_float_iq4_xs(const void *vx, float *y, int64_t n)
{
    const nf_block_iq4_xs *x = vx;
    for (int64_t i = 0; i < n / NF_QK_K; i++) {
        float d = nf_fp16_to_fp32(x[i].d);
        for (int j = 0; j < NF_QK_K / 32; j++) {
            float dl = d * (float)(nf__iq4_xs_scale(&x[i], j) - 32);
            for (int e = 0; e < 32; e++)
                *y++ = dl * nf_kvalues_iq4nl[nibble(x[i].qs + 16 * j, e)];
        }
    }
}

void nf__to_float_q2_K(const void *vx, float *y, int64_t n)
{
    const nf_block_q2_K *x = vx;
    for (int64_t i = 0; i < n / NF_QK_K; i++) {
        float d = nf_fp16_to_fp32(x[i].d), dmin = nf_fp16_to_fp32(x[i].dmin);
        for (int s = 0; s < NF_QK_K / 16; s++) {
            float dl = d * (float)(x[i].scales[s] & 0xF), ml = dmin * (float)(x[i].scales[s] >> 4);
            for (int e = 16 * s; e < 16 * s + 16; e++)
                *y++ = dl * (float)q2_bits(x[i].qs, e) - ml;
        }
    }
}

void nf__to_float_q3_K(const void *vx, float *y, int64_t n)
{
    const nf_block_q3_K *x = vx;
    for (int64_t i = 0; i < n / NF_QK_K; i++) {
        float d = nf_fp16_to_fp32(x[i].d);
        for (int s = 0; s < NF_QK_K / 16; s++) {
            float dl = d * (float)(q3_K_scale(x[i].scales, s) - 32);
            for (int e = 16 * s; e < 16 * s + 16; e++)
                *y++ = dl * (float)q3_K_value(&x[i], e);
        }
    }
}

/* ---- reference quantizers ---------------------------------------------------------------- */

/* As quantize_row_q4_1_ref: d = (max - min) / 15, m = min, q = (x - min) / d rounded half up. */
void nf__quantize_row_q4_1_ref(const float *x, void *vy, int64_t n)
{
    nf_block_q4_1 *y = vy;
    for (int64_t i = 0; i < n / NF_QK4_0; i++, x += NF_QK4_0) {
        float min = x[0], max = x[0];
        for (int e = 1; e < NF_QK4_0; e++) {
            min = fminf(min, x[e]);
            max = fmaxf(max, x[e]);
        }
        float d = (max - min) / 15, id = d ? 1.0f / d : 0.0f;
        y[i].d = nf_fp32_to_fp16(d);
        y[i].m = nf_fp32_to_fp16(min);
        memset(y[i].qs, 0, sizeof(y[i].qs));
        for (int e = 0; e < NF_QK4_0; e++) {
            int q = (int)((x[e] - min) * id + 0.5f);
            q = q > 15 ? 15 : q;
            y[i].qs[e % 16] |= (uint8_t)(q << (e < 16 ? 0 : 4));
        }
    }
}

/* Packs 32 quants (0..31) into the nibbles and high bits of a q5_0/q5_1 block. */
static void pack_q5(const int q[32], uint8_t qs[16], uint8_t qh_out[4])
{
    uint32_t qh = 0;
    memset(qs, 0, 16);
    for (int e = 0; e < 32; e++) {
        qs[e % 16] |= (uint8_t)((q[e] & 0xF) << (e < 16 ? 0 : 4));
        qh |= (uint32_t)(q[e] >> 4) << e;
    }
    memcpy(qh_out, &qh, 4);
}

/* As quantize_row_q5_0_ref: the element of largest magnitude maps to -16 exactly. */
void nf__quantize_row_q5_0_ref(const float *x, void *vy, int64_t n)
{
    nf_block_q5_0 *y = vy;
    for (int64_t i = 0; i < n / NF_QK4_0; i++, x += NF_QK4_0) {
        float amax = 0.0f, max = 0.0f;
        for (int e = 0; e < NF_QK4_0; e++) {
            if (amax < fabsf(x[e])) {
                amax = fabsf(x[e]);
                max = x[e];
            }
        }
        float d = max / -16, id = d ? 1.0f / d : 0.0f;
        int q[32];
        for (int e = 0; e < NF_QK4_0; e++) {
            int v = (int8_t)(x[e] * id + 16.5f);
            q[e] = v < 31 ? v : 31;
        }
        y[i].d = nf_fp32_to_fp16(d);
        pack_q5(q, y[i].qs, y[i].qh);
    }
}

/* As quantize_row_q5_1_ref: d = (max - min) / 31, m = min. */
void nf__quantize_row_q5_1_ref(const float *x, void *vy, int64_t n)
{
    nf_block_q5_1 *y = vy;
    for (int64_t i = 0; i < n / NF_QK4_0; i++, x += NF_QK4_0) {
        float min = x[0], max = x[0];
        for (int e = 1; e < NF_QK4_0; e++) {
            min = fminf(min, x[e]);
            max = fmaxf(max, x[e]);
        }
        float d = (max - min) / 31, id = d ? 1.0f / d : 0.0f;
        int q[32];
        for (int e = 0; e < NF_QK4_0; e++) {
            int v = (int)((x[e] - min) * id + 0.5f);
            q[e] = v > 31 ? 31 : v;
        }
        y[i].d = nf_fp32_to_fp16(d);
        y[i].m = nf_fp32_to_fp16(min);
        pack_q5(q, y[i].qs, y[i].qh);
    }
}

/* As quantize_row_q8_1_ref: q8_0's rule, and s = d * sum(qs) with the unrounded d. */
void nf__quantize_row_q8_1_ref(const float *x, void *vy, int64_t n)
{
    nf_block_q8_1 *y = vy;
    for (int64_t i = 0; i < n / NF_QK8_0; i++, x += NF_QK8_0) {
        float amax = 0.0f;
        for (int e = 0; e < NF_QK8_0; e++)
            amax = fmaxf(amax, fabsf(x[e]));
        float d = amax / 127, id = d ? 1.0f / d : 0.0f;
        int sum = 0;
        for (int e = 0; e < NF_QK8_0; e++) {
            y[i].qs[e] = (int8_t)roundf(x[e] * id);
            sum += y[i].qs[e];
        }
        y[i].d = nf_fp32_to_fp16(d);
        y[i].s = nf_fp32_to_fp16((float)sum * d);
    }
}

/* The index of the iq4_nl level nearest to v (levels are sorted; ties go to the lower). */
static int iq4_nearest(float v)
{
    int best = 0;
    float bd = fabsf(v - nf_kvalues_iq4nl[0]);
    for (int k = 1; k < 16; k++) {
        float dk = fabsf(v - nf_kvalues_iq4nl[k]);
        if (dk < bd) {
            bd = dk;
            best = k;
        }
    }
    return best;
}

/* Fits x[0..n) ~ d * kvalues[L] by least squares over 15 trial scales around the one that
 * maps the element of largest magnitude to -127 (as ggml's search, without importance
 * weights). Returns d; L gets the level indices (all 0 and d = 0 for an all-zero group). */
static float iq4_fit(const float *x, int n, uint8_t *L)
{
    float amax = 0.0f, max = 0.0f;
    for (int e = 0; e < n; e++) {
        if (fabsf(x[e]) > amax) {
            amax = fabsf(x[e]);
            max = x[e];
        }
    }
    if (amax < 1e-15f) {
        memset(L, 0, (size_t)n);
        return 0.0f;
    }
    float best_d = 0.0f, best = -1.0f;
    uint8_t Lt[32];
    for (int itry = -7; itry <= 7; itry++) {
        float id = (float)(itry + nf_kvalues_iq4nl[0]) / max;
        float sumqx = 0.0f, sumq2 = 0.0f;
        for (int e = 0; e < n; e++) {
            Lt[e] = (uint8_t)iq4_nearest(id * x[e]);
            float q = nf_kvalues_iq4nl[Lt[e]];
            sumqx += q * x[e];
            sumq2 += q * q;
        }
        if (sumq2 > 0 && sumqx * sumqx / sumq2 > best) {
            best = sumqx * sumqx / sumq2;
            best_d = sumqx / sumq2;
            memcpy(L, Lt, (size_t)n);
        }
    }
    return best_d;
}

/* Requantizes x[0..n) with the rounded scale d (levels as iq4_nearest; index of level 1 for a
 * zero scale, whose value does not matter). */
static void iq4_requant(const float *x, int n, float d, uint8_t *L)
{
    for (int e = 0; e < n; e++)
        L[e] = (uint8_t)(d ? iq4_nearest(x[e] / d) : 8);
}

void nf__quantize_row_iq4_nl_ref(const float *x, void *vy, int64_t n)
{
    nf_block_iq4_nl *y = vy;
    uint8_t L[NF_QK4_0];
    for (int64_t i = 0; i < n / NF_QK4_0; i++, x += NF_QK4_0) {
        y[i].d = nf_fp32_to_fp16(iq4_fit(x, NF_QK4_0, L));
        iq4_requant(x, NF_QK4_0, nf_fp16_to_fp32(y[i].d), L);
        for (int j = 0; j < 16; j++)
            y[i].qs[j] = (uint8_t)(L[j] | (L[j + 16] << 4));
    }
}

/* Sub-block scales as in ggml's quantize_row_iq4_xs_impl: the largest in magnitude maps to
 * -32, the others to the nearest 6-bit step; then every element is requantized. */
void nf__quantize_row_iq4_xs_ref(const float *x, void *vy, int64_t n)
{
    nf_block_iq4_xs *y = vy;
    uint8_t L[32];
    float scales[NF_QK_K / 32];
    for (int64_t i = 0; i < n / NF_QK_K; i++, x += NF_QK_K) {
        float amax = 0.0f, max = 0.0f;
        for (int j = 0; j < NF_QK_K / 32; j++) {
            scales[j] = iq4_fit(x + 32 * j, 32, L);
            if (fabsf(scales[j]) > amax) {
                amax = fabsf(scales[j]);
                max = scales[j];
            }
        }
        memset(&y[i], 0, sizeof(y[i]));
        float d = -max / 32, id = d ? 1.0f / d : 0.0f;
        y[i].d = nf_fp32_to_fp16(d);
        float dr = nf_fp16_to_fp32(y[i].d);
        for (int j = 0; j < NF_QK_K / 32; j++) {
            int ls = nf__nearest_int(id * scales[j]);
            ls = (ls < -32 ? -32 : ls > 31 ? 31 : ls) + 32;
            y[i].scales_l[j / 2] |= (uint8_t)((ls & 0xF) << (4 * (j % 2)));
            y[i].scales_h |= (uint16_t)((ls >> 4) << (2 * j));
            iq4_requant(x + 32 * j, 32, dr * (float)(ls - 32), L);
            for (int k = 0; k < 16; k++)
                y[i].qs[16 * j + k] = (uint8_t)(L[k] | (L[k + 16] << 4));
        }
    }
}

/* Packs 256 two-bit fields (0..3) as q2_K/q3_K store them. */
static void pack_2bit(const uint8_t *L, uint8_t *qs)
{
    for (int h = 0; h < 2; h++)
        for (int l = 0; l < 32; l++)
            qs[32 * h + l] = (uint8_t)(L[128 * h + l] | (L[128 * h + l + 32] << 2) |
                                       (L[128 * h + l + 64] << 4) | (L[128 * h + l + 96] << 6));
}

/* As quantize_row_q2_K_ref: 16 sub-blocks fitted with weights |x| (make_qkx2_quants), their
 * scales and mins quantized to 4 bits against the largest, then requantized. */
void nf__quantize_row_q2_K_ref(const float *x, void *vy, int64_t n)
{
    nf_block_q2_K *y = vy;
    uint8_t L[NF_QK_K], Laux[16];
    float weights[16], mins[NF_QK_K / 16], scales[NF_QK_K / 16];
    for (int64_t i = 0; i < n / NF_QK_K; i++, x += NF_QK_K) {
        float max_scale = 0, max_min = 0;
        for (int j = 0; j < NF_QK_K / 16; j++) {
            for (int l = 0; l < 16; l++)
                weights[l] = fabsf(x[16 * j + l]);
            scales[j] = nf__make_qkx2_quants(16, 3, x + 16 * j, weights, L + 16 * j, &mins[j], Laux,
                                             -0.5f, 0.1f, 15);
            max_scale = fmaxf(max_scale, scales[j]);
            max_min = fmaxf(max_min, mins[j]);
        }
        memset(y[i].scales, 0, sizeof(y[i].scales));
        y[i].d = y[i].dmin = 0;
        if (max_scale > 0) {
            float iscale = 15.f / max_scale;
            for (int j = 0; j < NF_QK_K / 16; j++)
                y[i].scales[j] = (uint8_t)nf__nearest_int(iscale * scales[j]);
            y[i].d = nf_fp32_to_fp16(max_scale / 15.f);
        }
        if (max_min > 0) {
            float iscale = 15.f / max_min;
            for (int j = 0; j < NF_QK_K / 16; j++)
                y[i].scales[j] |= (uint8_t)(nf__nearest_int(iscale * mins[j]) << 4);
            y[i].dmin = nf_fp32_to_fp16(max_min / 15.f);
        }
        float d0 = nf_fp16_to_fp32(y[i].d), m0 = nf_fp16_to_fp32(y[i].dmin);
        for (int j = 0; j < NF_QK_K / 16; j++) {
            float d = d0 * (float)(y[i].scales[j] & 0xF);
            if (!d)
                continue;
            float dm = m0 * (float)(y[i].scales[j] >> 4);
            for (int l = 0; l < 16; l++) {
                int q = nf__nearest_int((x[16 * j + l] + dm) / d);
                L[16 * j + l] = (uint8_t)(q < 0 ? 0 : q > 3 ? 3 : q);
            }
        }
        pack_2bit(L, y[i].qs);
    }
}

/* As quantize_row_q3_K_ref: signed sub-block scales (make_qx_quants), the largest in
 * magnitude mapped to -32, quants requantized to -4..3 and stored with offset 4 (bit 2 in
 * hmask). */
void nf__quantize_row_q3_K_ref(const float *x, void *vy, int64_t n)
{
    nf_block_q3_K *y = vy;
    int8_t L[NF_QK_K];
    uint8_t U[NF_QK_K];
    float scales[NF_QK_K / 16];
    for (int64_t i = 0; i < n / NF_QK_K; i++, x += NF_QK_K) {
        float max_scale = 0, amax = 0;
        for (int j = 0; j < NF_QK_K / 16; j++) {
            scales[j] = nf__make_qx_quants(16, 4, x + 16 * j, L + 16 * j);
            if (fabsf(scales[j]) > amax) {
                amax = fabsf(scales[j]);
                max_scale = scales[j];
            }
        }
        memset(&y[i], 0, sizeof(y[i]));
        if (amax < 1e-15f)
            continue;
        float iscale = -32.f / max_scale;
        for (int j = 0; j < NF_QK_K / 16; j++) {
            int l = nf__nearest_int(iscale * scales[j]);
            l = (l < -32 ? -32 : l > 31 ? 31 : l) + 32;
            if (j < 8)
                y[i].scales[j] = (uint8_t)(l & 0xF);
            else
                y[i].scales[j - 8] |= (uint8_t)((l & 0xF) << 4);
            y[i].scales[8 + j % 4] |= (uint8_t)((l >> 4) << (2 * (j / 4)));
        }
        y[i].d = nf_fp32_to_fp16(1 / iscale);
        float d0 = nf_fp16_to_fp32(y[i].d);
        for (int j = 0; j < NF_QK_K / 16; j++) {
            float d = d0 * (float)(q3_K_scale(y[i].scales, j) - 32);
            for (int l = 0; l < 16; l++) {
                int q = d ? nf__nearest_int(x[16 * j + l] / d) : 0;
                q = (q < -4 ? -4 : q > 3 ? 3 : q) + 4;
                int e = 16 * j + l;
                if (q > 3)
                    y[i].hmask[e % 32] |= (uint8_t)(1 << (e / 32));
                U[e] = (uint8_t)(q & 3);
            }
        }
        pack_2bit(U, y[i].qs);
    }
}

/* ---- dot products ------------------------------------------------------------------------ */

void nf__vec_dot_q4_1_q8_1_ref(int n, float *s, const void *vx, const void *vy)
{
    const nf_block_q4_1 *x = vx;
    const nf_block_q8_1 *y = vy;
    float sum = 0;
    for (int i = 0; i < n / NF_QK8_0; i++) {
        int sumi = 0;
        for (int e = 0; e < NF_QK4_0; e++)
            sumi += nibble(x[i].qs, e) * y[i].qs[e];
        sum += (nf_fp16_to_fp32(x[i].d) * nf_fp16_to_fp32(y[i].d)) * (float)sumi +
               nf_fp16_to_fp32(x[i].m) * nf_fp16_to_fp32(y[i].s);
    }
    *s = sum;
}

void nf__vec_dot_q5_0_q8_0_ref(int n, float *s, const void *vx, const void *vy)
{
    const nf_block_q5_0 *x = vx;
    const nf_block_q8_0 *y = vy;
    float sum = 0;
    for (int i = 0; i < n / NF_QK8_0; i++) {
        uint32_t qh = q5_high_bits(x[i].qh);
        int sumi = 0;
        for (int e = 0; e < NF_QK4_0; e++)
            sumi += ((nibble(x[i].qs, e) | (int)(((qh >> e) & 1) << 4)) - 16) * y[i].qs[e];
        sum += (float)sumi * (nf_fp16_to_fp32(x[i].d) * nf_fp16_to_fp32(y[i].d));
    }
    *s = sum;
}

void nf__vec_dot_q5_1_q8_1_ref(int n, float *s, const void *vx, const void *vy)
{
    const nf_block_q5_1 *x = vx;
    const nf_block_q8_1 *y = vy;
    float sum = 0;
    for (int i = 0; i < n / NF_QK8_0; i++) {
        uint32_t qh = q5_high_bits(x[i].qh);
        int sumi = 0;
        for (int e = 0; e < NF_QK4_0; e++)
            sumi += (nibble(x[i].qs, e) | (int)(((qh >> e) & 1) << 4)) * y[i].qs[e];
        sum += (nf_fp16_to_fp32(x[i].d) * nf_fp16_to_fp32(y[i].d)) * (float)sumi +
               nf_fp16_to_fp32(x[i].m) * nf_fp16_to_fp32(y[i].s);
    }
    *s = sum;
}

void nf__vec_dot_iq4_nl_q8_0_ref(int n, float *s, const void *vx, const void *vy)
{
    const nf_block_iq4_nl *x = vx;
    const nf_block_q8_0 *y = vy;
    float sum = 0;
    for (int i = 0; i < n / NF_QK8_0; i++) {
        int sumi = 0;
        for (int e = 0; e < NF_QK4_0; e++)
            sumi += nf_kvalues_iq4nl[nibble(x[i].qs, e)] * y[i].qs[e];
        sum += (float)sumi * (nf_fp16_to_fp32(x[i].d) * nf_fp16_to_fp32(y[i].d));
    }
    *s = sum;
}

void nf__vec_dot_iq4_xs_q8_K_ref(int n, float *s, const void *vx, const void *vy)
{
    const nf_block_iq4_xs *x = vx;
    const nf_block_q8_K *y = vy;
    float sum = 0;
    for (int i = 0; i < n / NF_QK_K; i++) {
        int sumi = 0;
        for (int j = 0; j < NF_QK_K / 32; j++) {
            int dot = 0;
            for (int e = 0; e < 32; e++)
                dot += nf_kvalues_iq4nl[nibble(x[i].qs + 16 * j, e)] * y[i].qs[32 * j + e];
            sumi += (nf__iq4_xs_scale(&x[i], j) - 32) * dot;
        }
        sum += nf_fp16_to_fp32(x[i].d) * y[i].d * (float)sumi;
    }
    *s = sum;
}

/* Per block: d * dy * sum_s sc_s * (q . q8) - dmin * dy * sum_s m_s * bsum_s. */
void nf__vec_dot_q2_K_q8_K_ref(int n, float *s, const void *vx, const void *vy)
{
    const nf_block_q2_K *x = vx;
    const nf_block_q8_K *y = vy;
    float sum = 0;
    for (int i = 0; i < n / NF_QK_K; i++) {
        int sumi = 0, summ = 0;
        for (int sb = 0; sb < NF_QK_K / 16; sb++) {
            int dot = 0;
            for (int e = 16 * sb; e < 16 * sb + 16; e++)
                dot += q2_bits(x[i].qs, e) * y[i].qs[e];
            sumi += (x[i].scales[sb] & 0xF) * dot;
            summ += (x[i].scales[sb] >> 4) * y[i].bsums[sb];
        }
        sum += y[i].d * nf_fp16_to_fp32(x[i].d) * (float)sumi;
        sum -= y[i].d * nf_fp16_to_fp32(x[i].dmin) * (float)summ;
    }
    *s = sum;
}

void nf__vec_dot_q3_K_q8_K_ref(int n, float *s, const void *vx, const void *vy)
{
    const nf_block_q3_K *x = vx;
    const nf_block_q8_K *y = vy;
    float sum = 0;
    for (int i = 0; i < n / NF_QK_K; i++) {
        int sumi = 0;
        for (int sb = 0; sb < NF_QK_K / 16; sb++) {
            int dot = 0;
            for (int e = 16 * sb; e < 16 * sb + 16; e++)
                dot += q3_K_value(&x[i], e) * y[i].qs[e];
            sumi += (q3_K_scale(x[i].scales, sb) - 32) * dot;
        }
        sum += y[i].d * nf_fp16_to_fp32(x[i].d) * (float)sumi;
    }
    *s = sum;
}
