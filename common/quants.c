/* quants.c - type traits table, fp16/bf16 conversions and the scalar reference kernels. */
#include <math.h>
#include <string.h>

#include "quants_impl.h"

/* ---- half and bfloat16 ------------------------------------------------------------------- */

static inline uint32_t f32_bits(float f)
{
    uint32_t u;
    memcpy(&u, &f, sizeof(u));
    return u;
}

static inline float f32_from_bits(uint32_t u)
{
    float f;
    memcpy(&f, &u, sizeof(f));
    return f;
}

/* Same result as F16C's vcvtph2ps: exact, signalling NaNs come back quiet with their payload. */
float nf_fp16_to_fp32(nf_fp16_t h)
{
    uint32_t sign = (uint32_t)(h & 0x8000) << 16;
    uint32_t e = (h >> 10) & 0x1f;
    uint32_t m = h & 0x3ff;

    if (e == 0x1f)
        return f32_from_bits(sign | 0x7f800000 | (m << 13) | (m ? 0x400000 : 0));
    if (e == 0) {
        if (m == 0)
            return f32_from_bits(sign);
        /* Subnormal half: normalise the mantissa into a normal float. */
        e = 113;
        while (!(m & 0x400)) {
            m <<= 1;
            e--;
        }
        return f32_from_bits(sign | (e << 23) | ((m & 0x3ff) << 13));
    }
    return f32_from_bits(sign | ((e + 112) << 23) | (m << 13));
}

/* Same result as F16C's vcvtps2ph with round-to-nearest-even: overflow goes to infinity,
 * tiny values to (correctly rounded) subnormals, NaNs stay NaN with the top payload bits and
 * the quiet bit set. */
nf_fp16_t nf_fp32_to_fp16(float f)
{
    uint32_t u = f32_bits(f);
    uint16_t sign = (uint16_t)((u >> 16) & 0x8000);
    u &= 0x7fffffff;

    if (u > 0x7f800000)
        return (uint16_t)(sign | 0x7e00 | ((u >> 13) & 0x3ff));
    if (u >= 0x47800000) /* >= 65536, or infinity */
        return (uint16_t)(sign | 0x7c00);
    if (u >= 0x38800000) /* normal half; a carry out of the mantissa bumps the exponent */
        return (uint16_t)(sign | ((u - 0x38000000 + 0xfff + ((u >> 13) & 1)) >> 13));
    if (u <= 0x33000000) /* at most 2^-25: rounds to zero (2^-25 itself is a tie to even 0) */
        return sign;
    /* Subnormal half: k * 2^-24 with k = m * 2^(e - 126), rounded to nearest even. */
    uint32_t e = u >> 23;
    uint32_t m = (u & 0x7fffff) | 0x800000;
    uint32_t shift = 126 - e; /* 14..24 */
    uint32_t k = m >> shift;
    uint32_t rem = m & ((1u << shift) - 1);
    uint32_t half = 1u << (shift - 1);
    if (rem > half || (rem == half && (k & 1)))
        k++;
    return (uint16_t)(sign | k);
}

float nf_bf16_to_fp32(nf_bf16_t h)
{
    return f32_from_bits((uint32_t)h << 16);
}

/* As ggml_compute_fp32_to_bf16: NaNs are truncated and forced quiet, everything else is
 * rounded to nearest even (subnormals kept, overflow to infinity). */
nf_bf16_t nf_fp32_to_bf16(float f)
{
    uint32_t u = f32_bits(f);
    if ((u & 0x7fffffff) > 0x7f800000)
        return (uint16_t)((u >> 16) | 64);
    return (uint16_t)((u + (0x7fff + ((u >> 16) & 1))) >> 16);
}

/* ---- dequantization (to_float) ----------------------------------------------------------- */

static void to_float_f32(const void *x, float *y, int64_t n)
{
    memcpy(y, x, (size_t)n * sizeof(float));
}

static void to_float_f16(const void *x, float *y, int64_t n)
{
    const nf_fp16_t *h = x;
    for (int64_t i = 0; i < n; i++)
        y[i] = nf_fp16_to_fp32(h[i]);
}

static void to_float_bf16(const void *x, float *y, int64_t n)
{
    const nf_bf16_t *h = x;
    for (int64_t i = 0; i < n; i++)
        y[i] = nf_bf16_to_fp32(h[i]);
}

static void to_float_q4_0(const void *vx, float *y, int64_t n)
{
    const nf_block_q4_0 *x = vx;
    for (int64_t i = 0; i < n / NF_QK4_0; i++) {
        float d = nf_fp16_to_fp32(x[i].d);
        for (int j = 0; j < NF_QK4_0 / 2; j++) {
            y[i * NF_QK4_0 + j] = (float)((x[i].qs[j] & 0xF) - 8) * d;
            y[i * NF_QK4_0 + j + NF_QK4_0 / 2] = (float)((x[i].qs[j] >> 4) - 8) * d;
        }
    }
}

static void to_float_q8_0(const void *vx, float *y, int64_t n)
{
    const nf_block_q8_0 *x = vx;
    for (int64_t i = 0; i < n / NF_QK8_0; i++) {
        float d = nf_fp16_to_fp32(x[i].d);
        for (int j = 0; j < NF_QK8_0; j++)
            y[i * NF_QK8_0 + j] = (float)x[i].qs[j] * d;
    }
}

static void to_float_q4_K(const void *vx, float *y, int64_t n)
{
    const nf_block_q4_K *x = vx;
    for (int64_t i = 0; i < n / NF_QK_K; i++) {
        float d = nf_fp16_to_fp32(x[i].d);
        float dmin = nf_fp16_to_fp32(x[i].dmin);
        const uint8_t *q = x[i].qs;
        /* Each 32 bytes of qs hold two sub-blocks: low nibbles, then high nibbles. */
        for (int j = 0; j < NF_QK_K; j += 64, q += 32) {
            uint8_t sc, m;
            nf__get_scale_min_k4(j / 32, x[i].scales, &sc, &m);
            float d1 = d * sc, m1 = dmin * m;
            nf__get_scale_min_k4(j / 32 + 1, x[i].scales, &sc, &m);
            float d2 = d * sc, m2 = dmin * m;
            for (int l = 0; l < 32; l++) {
                *y++ = d1 * (q[l] & 0xF) - m1;
            }
            for (int l = 0; l < 32; l++) {
                *y++ = d2 * (q[l] >> 4) - m2;
            }
        }
    }
}

static void to_float_q5_K(const void *vx, float *y, int64_t n)
{
    const nf_block_q5_K *x = vx;
    for (int64_t i = 0; i < n / NF_QK_K; i++) {
        float d = nf_fp16_to_fp32(x[i].d);
        float dmin = nf_fp16_to_fp32(x[i].dmin);
        const uint8_t *ql = x[i].qs;
        const uint8_t *qh = x[i].qh;
        /* Sub-block pair c uses bits 2c and 2c+1 of qh as the fifth bit. */
        uint8_t u1 = 1, u2 = 2;
        for (int j = 0; j < NF_QK_K; j += 64, ql += 32, u1 <<= 2, u2 <<= 2) {
            uint8_t sc, m;
            nf__get_scale_min_k4(j / 32, x[i].scales, &sc, &m);
            float d1 = d * sc, m1 = dmin * m;
            nf__get_scale_min_k4(j / 32 + 1, x[i].scales, &sc, &m);
            float d2 = d * sc, m2 = dmin * m;
            for (int l = 0; l < 32; l++)
                *y++ = d1 * ((ql[l] & 0xF) + (qh[l] & u1 ? 16 : 0)) - m1;
            for (int l = 0; l < 32; l++)
                *y++ = d2 * ((ql[l] >> 4) + (qh[l] & u2 ? 16 : 0)) - m2;
        }
    }
}

/* The signed 6-bit value (-32..31) of element l (0..127) of a q6_K half block. */
static inline int q6_K_value(const uint8_t *ql, const uint8_t *qh, int l)
{
    int quarter = l / 32, k = l % 32;
    int lo = quarter & 1 ? ql[k + 32] : ql[k];
    lo = quarter < 2 ? lo & 0xF : lo >> 4;
    int hi = (qh[k] >> (2 * quarter)) & 3;
    return (lo | (hi << 4)) - 32;
}

static void to_float_q6_K(const void *vx, float *y, int64_t n)
{
    const nf_block_q6_K *x = vx;
    for (int64_t i = 0; i < n / NF_QK_K; i++) {
        float d = nf_fp16_to_fp32(x[i].d);
        /* Two halves of 128: ql advances by 64 bytes, qh by 32, scales by 8. */
        for (int h = 0; h < 2; h++) {
            const uint8_t *ql = x[i].ql + 64 * h;
            const uint8_t *qh = x[i].qh + 32 * h;
            for (int l = 0; l < 128; l++)
                *y++ = d * x[i].scales[8 * h + l / 16] * q6_K_value(ql, qh, l);
        }
    }
}

static void to_float_q8_K(const void *vx, float *y, int64_t n)
{
    const nf_block_q8_K *x = vx;
    for (int64_t i = 0; i < n / NF_QK_K; i++)
        for (int j = 0; j < NF_QK_K; j++)
            *y++ = x[i].d * x[i].qs[j];
}

/* ---- quantization (from_float), following ggml's reference quantizers ------------------- */

static void from_float_f32(const float *x, void *y, int64_t n)
{
    memcpy(y, x, (size_t)n * sizeof(float));
}

void nf__quantize_row_f16_ref(const float *x, void *vy, int64_t n)
{
    nf_fp16_t *y = vy;
    for (int64_t i = 0; i < n; i++)
        y[i] = nf_fp32_to_fp16(x[i]);
}

void nf__quantize_row_bf16_ref(const float *x, void *vy, int64_t n)
{
    nf_bf16_t *y = vy;
    for (int64_t i = 0; i < n; i++)
        y[i] = nf_fp32_to_bf16(x[i]);
}

/* As quantize_row_q4_0_ref: the element of largest magnitude maps to -8 exactly. */
static void quantize_row_q4_0_ref(const float *x, void *vy, int64_t n)
{
    nf_block_q4_0 *y = vy;
    for (int64_t i = 0; i < n / NF_QK4_0; i++, x += NF_QK4_0) {
        float amax = 0.0f, max = 0.0f;
        for (int j = 0; j < NF_QK4_0; j++) {
            if (amax < fabsf(x[j])) {
                amax = fabsf(x[j]);
                max = x[j];
            }
        }
        float d = max / -8;
        float id = d ? 1.0f / d : 0.0f;
        y[i].d = nf_fp32_to_fp16(d);
        for (int j = 0; j < NF_QK4_0 / 2; j++) {
            int q0 = (int8_t)(x[j] * id + 8.5f);
            int q1 = (int8_t)(x[j + NF_QK4_0 / 2] * id + 8.5f);
            q0 = q0 < 15 ? q0 : 15;
            q1 = q1 < 15 ? q1 : 15;
            y[i].qs[j] = (uint8_t)(q0 | (q1 << 4));
        }
    }
}

/* As quantize_row_q8_0_ref: d = amax / 127, q = roundf(x / d) (ties away from zero). */
void nf__quantize_row_q8_0_ref(const float *x, void *vy, int64_t n)
{
    nf_block_q8_0 *y = vy;
    for (int64_t i = 0; i < n / NF_QK8_0; i++, x += NF_QK8_0) {
        float amax = 0.0f;
        for (int j = 0; j < NF_QK8_0; j++)
            amax = fmaxf(amax, fabsf(x[j]));
        float d = amax / 127;
        float id = d ? 1.0f / d : 0.0f;
        y[i].d = nf_fp32_to_fp16(d);
        for (int j = 0; j < NF_QK8_0; j++)
            y[i].qs[j] = (int8_t)roundf(x[j] * id);
    }
}

/* As quantize_row_q8_K_ref: the element of largest magnitude maps to -127 (ggml's AVX code
 * relies on the symmetric range), ties round to even, bsums hold sums of 16 quants. */
void nf__quantize_row_q8_K_ref(const float *x, void *vy, int64_t n)
{
    nf_block_q8_K *y = vy;
    for (int64_t i = 0; i < n / NF_QK_K; i++, x += NF_QK_K) {
        float amax = 0.0f, max = 0.0f;
        for (int j = 0; j < NF_QK_K; j++) {
            if (fabsf(x[j]) > amax) {
                amax = fabsf(x[j]);
                max = x[j];
            }
        }
        if (!amax) {
            memset(&y[i], 0, sizeof(y[i]));
            continue;
        }
        float iscale = -127.f / max;
        for (int j = 0; j < NF_QK_K; j++) {
            int v = nf__nearest_int(iscale * x[j]);
            y[i].qs[j] = (int8_t)(v < 127 ? v : 127);
        }
        for (int j = 0; j < NF_QK_K / 16; j++) {
            int sum = 0;
            for (int l = 0; l < 16; l++)
                sum += y[i].qs[16 * j + l];
            y[i].bsums[j] = (int16_t)sum;
        }
        y[i].d = 1 / iscale;
    }
}

/* ggml's make_qkx2_quants: fits x ~ scale * L - min (L in 0..nmax) by weighted least squares,
 * trying nstep+1 candidate scales around nmax / (max - min). Returns scale; *the_min = min. */
float nf__make_qkx2_quants(int n, int nmax, const float *x, const float *w, uint8_t *L,
                           float *the_min, uint8_t *Laux, float rmin, float rdelta, int nstep)
{
    float min = x[0], max = x[0];
    float sum_w = w[0], sum_x = w[0] * x[0];
    for (int i = 1; i < n; i++) {
        if (x[i] < min)
            min = x[i];
        if (x[i] > max)
            max = x[i];
        sum_w += w[i];
        sum_x += w[i] * x[i];
    }
    if (min > 0)
        min = 0;
    if (max == min) {
        memset(L, 0, (size_t)n);
        *the_min = -min;
        return 0.0f;
    }
    float iscale = nmax / (max - min);
    float scale = 1 / iscale;
    float best_err = 0;
    for (int i = 0; i < n; i++) {
        int l = nf__nearest_int(iscale * (x[i] - min));
        L[i] = (uint8_t)(l < 0 ? 0 : l > nmax ? nmax : l);
        float diff = scale * L[i] + min - x[i];
        best_err += w[i] * diff * diff;
    }
    for (int is = 0; is <= nstep; is++) {
        iscale = (rmin + rdelta * is + nmax) / (max - min);
        float sum_l = 0, sum_l2 = 0, sum_xl = 0;
        for (int i = 0; i < n; i++) {
            int l = nf__nearest_int(iscale * (x[i] - min));
            l = l < 0 ? 0 : l > nmax ? nmax : l;
            Laux[i] = (uint8_t)l;
            sum_l += w[i] * l;
            sum_l2 += w[i] * l * l;
            sum_xl += w[i] * l * x[i];
        }
        float D = sum_w * sum_l2 - sum_l * sum_l;
        if (D > 0) {
            float this_scale = (sum_w * sum_xl - sum_x * sum_l) / D;
            float this_min = (sum_l2 * sum_x - sum_l * sum_xl) / D;
            if (this_min > 0) {
                this_min = 0;
                this_scale = sum_xl / sum_l2;
            }
            float err = 0;
            for (int i = 0; i < n; i++) {
                float diff = this_scale * Laux[i] + this_min - x[i];
                err += w[i] * diff * diff;
            }
            if (err < best_err) {
                memcpy(L, Laux, (size_t)n);
                best_err = err;
                scale = this_scale;
                min = this_min;
            }
        }
    }
    *the_min = -min;
    return scale;
}

/* Shared by q4_K and q5_K (nmax 15 or 31): fits 8 sub-blocks, packs their 6-bit scales and
 * mins into y_scales and d/dmin, and requantizes x into L (0..nmax) with the rounded scales. */
static void quantize_k_superblock(const float *x, int nmax, float rmin, int nstep, uint8_t *L,
                                  uint8_t *y_scales, nf_fp16_t *y_d, nf_fp16_t *y_dmin)
{
    uint8_t Laux[32];
    float weights[32], mins[8], scales[8];
    float max_scale = 0, max_min = 0;

    for (int j = 0; j < 8; j++) {
        float sum_x2 = 0;
        for (int l = 0; l < 32; l++)
            sum_x2 += x[32 * j + l] * x[32 * j + l];
        float av_x = sqrtf(sum_x2 / 32);
        for (int l = 0; l < 32; l++)
            weights[l] = av_x + fabsf(x[32 * j + l]);
        scales[j] = nf__make_qkx2_quants(32, nmax, x + 32 * j, weights, L + 32 * j, &mins[j], Laux,
                                         rmin, 0.1f, nstep);
        if (scales[j] > max_scale)
            max_scale = scales[j];
        if (mins[j] > max_min)
            max_min = mins[j];
    }
    float inv_scale = max_scale > 0 ? 63.f / max_scale : 0.f;
    float inv_min = max_min > 0 ? 63.f / max_min : 0.f;
    memset(y_scales, 0, NF_K_SCALE_SIZE);
    for (int j = 0; j < 8; j++) {
        int ls = nf__nearest_int(inv_scale * scales[j]);
        int lm = nf__nearest_int(inv_min * mins[j]);
        ls = ls < 63 ? ls : 63;
        lm = lm < 63 ? lm : 63;
        if (j < 4) {
            y_scales[j] = (uint8_t)ls;
            y_scales[j + 4] = (uint8_t)lm;
        } else {
            y_scales[j + 4] = (uint8_t)((ls & 0xF) | ((lm & 0xF) << 4));
            y_scales[j - 4] |= (uint8_t)((ls >> 4) << 6);
            y_scales[j] |= (uint8_t)((lm >> 4) << 6);
        }
    }
    *y_d = nf_fp32_to_fp16(max_scale / 63.f);
    *y_dmin = nf_fp32_to_fp16(max_min / 63.f);
    float d = nf_fp16_to_fp32(*y_d), dmin = nf_fp16_to_fp32(*y_dmin);
    for (int j = 0; j < 8; j++) {
        uint8_t sc, m;
        nf__get_scale_min_k4(j, y_scales, &sc, &m);
        float dj = d * sc;
        if (!dj)
            continue;
        float dm = dmin * m;
        for (int l = 0; l < 32; l++) {
            int q = nf__nearest_int((x[32 * j + l] + dm) / dj);
            L[32 * j + l] = (uint8_t)(q < 0 ? 0 : q > nmax ? nmax : q);
        }
    }
}

static void quantize_row_q4_K_ref(const float *x, void *vy, int64_t n)
{
    nf_block_q4_K *y = vy;
    uint8_t L[NF_QK_K];
    for (int64_t i = 0; i < n / NF_QK_K; i++, x += NF_QK_K) {
        memset(L, 0, sizeof(L));
        quantize_k_superblock(x, 15, -1.f, 20, L, y[i].scales, &y[i].d, &y[i].dmin);
        uint8_t *q = y[i].qs;
        for (int j = 0; j < NF_QK_K; j += 64, q += 32)
            for (int l = 0; l < 32; l++)
                q[l] = (uint8_t)(L[j + l] | (L[j + l + 32] << 4));
    }
}

static void quantize_row_q5_K_ref(const float *x, void *vy, int64_t n)
{
    nf_block_q5_K *y = vy;
    uint8_t L[NF_QK_K];
    for (int64_t i = 0; i < n / NF_QK_K; i++, x += NF_QK_K) {
        memset(L, 0, sizeof(L));
        quantize_k_superblock(x, 31, -0.5f, 15, L, y[i].scales, &y[i].d, &y[i].dmin);
        uint8_t *ql = y[i].qs;
        uint8_t *qh = y[i].qh;
        memset(qh, 0, NF_QK_K / 8);
        uint8_t m1 = 1, m2 = 2;
        for (int j = 0; j < NF_QK_K; j += 64, ql += 32, m1 <<= 2, m2 <<= 2) {
            for (int l = 0; l < 32; l++) {
                int l1 = L[j + l], l2 = L[j + l + 32];
                if (l1 > 15) {
                    l1 -= 16;
                    qh[l] |= m1;
                }
                if (l2 > 15) {
                    l2 -= 16;
                    qh[l] |= m2;
                }
                ql[l] = (uint8_t)(l1 | (l2 << 4));
            }
        }
    }
}

#define GROUP_MAX_EPS 1e-15f

/* ggml's make_qx_quants with rmse_type 1 and no importance weights: symmetric quants in
 * [-nmax, nmax-1] stored with offset nmax in L, trying 18 scales around -nmax / max. */
float nf__make_qx_quants(int n, int nmax, const float *x, int8_t *L)
{
    float max = 0, amax = 0;
    for (int i = 0; i < n; i++) {
        if (fabsf(x[i]) > amax) {
            amax = fabsf(x[i]);
            max = x[i];
        }
    }
    if (amax < GROUP_MAX_EPS) {
        memset(L, 0, (size_t)n);
        return 0.f;
    }
    float iscale = -nmax / max;
    float sumlx = 0, suml2 = 0;
    for (int i = 0; i < n; i++) {
        int l = nf__nearest_int(iscale * x[i]);
        l = l < -nmax ? -nmax : l > nmax - 1 ? nmax - 1 : l;
        L[i] = (int8_t)(l + nmax);
        float w = x[i] * x[i];
        sumlx += w * x[i] * l;
        suml2 += w * l * l;
    }
    float scale = suml2 ? sumlx / suml2 : 0.0f;
    float best = scale * sumlx;
    for (int is = -9; is <= 9; is++) {
        if (is == 0)
            continue;
        iscale = -(nmax + 0.1f * is) / max;
        sumlx = suml2 = 0;
        for (int i = 0; i < n; i++) {
            int l = nf__nearest_int(iscale * x[i]);
            l = l < -nmax ? -nmax : l > nmax - 1 ? nmax - 1 : l;
            float w = x[i] * x[i];
            sumlx += w * x[i] * l;
            suml2 += w * l * l;
        }
        if (suml2 > 0 && sumlx * sumlx > best * suml2) {
            for (int i = 0; i < n; i++) {
                int l = nf__nearest_int(iscale * x[i]);
                L[i] = (int8_t)(nmax + (l < -nmax ? -nmax : l > nmax - 1 ? nmax - 1 : l));
            }
            scale = sumlx / suml2;
            best = scale * sumlx;
        }
    }
    return scale;
}

static void quantize_row_q6_K_ref(const float *x, void *vy, int64_t n)
{
    nf_block_q6_K *y = vy;
    int8_t L[NF_QK_K];
    float scales[NF_QK_K / 16];
    for (int64_t i = 0; i < n / NF_QK_K; i++, x += NF_QK_K) {
        float max_scale = 0, max_abs_scale = 0;
        for (int ib = 0; ib < NF_QK_K / 16; ib++) {
            scales[ib] = nf__make_qx_quants(16, 32, x + 16 * ib, L + 16 * ib);
            if (fabsf(scales[ib]) > max_abs_scale) {
                max_abs_scale = fabsf(scales[ib]);
                max_scale = scales[ib];
            }
        }
        if (max_abs_scale < GROUP_MAX_EPS) {
            memset(&y[i], 0, sizeof(y[i]));
            continue;
        }
        float iscale = -128.f / max_scale;
        y[i].d = nf_fp32_to_fp16(1 / iscale);
        for (int ib = 0; ib < NF_QK_K / 16; ib++) {
            int v = nf__nearest_int(iscale * scales[ib]);
            y[i].scales[ib] = (int8_t)(v < 127 ? v : 127);
        }
        float d0 = nf_fp16_to_fp32(y[i].d);
        for (int j = 0; j < NF_QK_K / 16; j++) {
            float d = d0 * y[i].scales[j];
            if (!d)
                continue;
            for (int l = 0; l < 16; l++) {
                int q = nf__nearest_int(x[16 * j + l] / d);
                L[16 * j + l] = (int8_t)((q < -32 ? -32 : q > 31 ? 31 : q) + 32);
            }
        }
        uint8_t *ql = y[i].ql, *qh = y[i].qh;
        for (int j = 0; j < NF_QK_K; j += 128, ql += 64, qh += 32) {
            for (int l = 0; l < 32; l++) {
                int q1 = L[j + l], q2 = L[j + l + 32], q3 = L[j + l + 64], q4 = L[j + l + 96];
                ql[l] = (uint8_t)((q1 & 0xF) | ((q3 & 0xF) << 4));
                ql[l + 32] = (uint8_t)((q2 & 0xF) | ((q4 & 0xF) << 4));
                qh[l] =
                    (uint8_t)((q1 >> 4) | ((q2 >> 4) << 2) | ((q3 >> 4) << 4) | ((q4 >> 4) << 6));
            }
        }
    }
}

/* ---- dot products ------------------------------------------------------------------------ */

/* Plain float types accumulate in double, as ggml's scalar code does. */
void nf__vec_dot_f32_ref(int n, float *s, const void *vx, const void *vy)
{
    const float *x = vx, *y = vy;
    double sum = 0;
    for (int i = 0; i < n; i++)
        sum += (double)(x[i] * y[i]);
    *s = (float)sum;
}

void nf__vec_dot_f16_ref(int n, float *s, const void *vx, const void *vy)
{
    const nf_fp16_t *x = vx, *y = vy;
    double sum = 0;
    for (int i = 0; i < n; i++)
        sum += (double)(nf_fp16_to_fp32(x[i]) * nf_fp16_to_fp32(y[i]));
    *s = (float)sum;
}

void nf__vec_dot_bf16_ref(int n, float *s, const void *vx, const void *vy)
{
    const nf_bf16_t *x = vx, *y = vy;
    double sum = 0;
    for (int i = 0; i < n; i++)
        sum += (double)(nf_bf16_to_fp32(x[i]) * nf_bf16_to_fp32(y[i]));
    *s = (float)sum;
}

void nf__vec_dot_q4_0_q8_0_ref(int n, float *s, const void *vx, const void *vy)
{
    const nf_block_q4_0 *x = vx;
    const nf_block_q8_0 *y = vy;
    float sum = 0;
    for (int i = 0; i < n / NF_QK8_0; i++) {
        int sumi = 0;
        for (int j = 0; j < NF_QK4_0 / 2; j++) {
            sumi += ((x[i].qs[j] & 0xF) - 8) * y[i].qs[j];
            sumi += ((x[i].qs[j] >> 4) - 8) * y[i].qs[j + NF_QK4_0 / 2];
        }
        sum += sumi * (nf_fp16_to_fp32(x[i].d) * nf_fp16_to_fp32(y[i].d));
    }
    *s = sum;
}

/* q4_0 rows in llama.cpp's repacked (q4_0_8x8) order: per row, a fused multiply-add of each
 * block's integer dot times (weight scale * activation scale), block after block. */
void nf__vec_dot_q4_0_q8_0_seq_ref_rows(int n, float *s, size_t bs, const void *vx, const void *vy,
                                        int nrows)
{
    const nf_block_q8_0 *y = vy;
    for (int r = 0; r < nrows; r++) {
        const nf_block_q4_0 *x = (const nf_block_q4_0 *)((const char *)vx + (size_t)r * bs);
        float acc = 0.0f;
        for (int i = 0; i < n / NF_QK8_0; i++) {
            int sumi = 0;
            for (int j = 0; j < NF_QK4_0 / 2; j++) {
                sumi += ((x[i].qs[j] & 0xF) - 8) * y[i].qs[j];
                sumi += ((x[i].qs[j] >> 4) - 8) * y[i].qs[j + NF_QK4_0 / 2];
            }
            acc = fmaf((float)sumi, nf_fp16_to_fp32(x[i].d) * nf_fp16_to_fp32(y[i].d), acc);
        }
        s[r] = acc;
    }
}

/* ggml_v_expf, the AVX-512 form, for one lane: exp(x) = 2^n * p(b) with n = round(x / ln 2)
 * (by the 1.5 * 2^23 shifter), b = x - n * ln 2 in two parts, p a degree-5 polynomial by
 * Horner pairs, and 0 or infinity past |n| > 192. Every step is one rounding (fmaf is fused) as
 * in the vector code. */
float nf__v_expf_ref(float x)
{
    const float r = 0x1.8p23f;
    const float z = fmaf(x, 0x1.715476p+0f, r);
    const float n = z - r;
    const float b = fmaf(-n, 0x1.7f7d1cp-20f, fmaf(-n, 0x1.62e4p-1f, x));
    const float u = b * b;
    const float j = fmaf(
        fmaf(fmaf(0x1.0e4020p-7f, b, 0x1.573e2ep-5f), u, fmaf(0x1.555e66p-3f, b, 0x1.fffdb6p-2f)),
        u, fmaf(0x1.ffffecp-1f, b, 1.0f));
    if (fabsf(n) > 192.0f)
        return n <= 0.0f ? 0.0f : INFINITY;
    return ldexpf(j, (int)n); /* _mm512_scalef_ps(j, n) for an integral n */
}

/* ggml_vec_swiglu_f32 on AVX-512: h[i] = silu(h[i]) * g[i], silu(x) = x / (1 + exp(-x)) with
 * ggml_v_expf on every element. (The C of ggml's vec.cpp takes expf for a row's last n % 16
 * elements, but against the goldens ggml_v_expf there measured better on stories260K, whose
 * rows of 172 have such a tail: 159 vs 83 exact steps.) Elementwise, the result does not depend
 * on how a row is split into calls (the sparse engine calls this on bundles of neurons). */
void nf__swiglu_ref(float *h, const float *g, int n)
{
    for (int i = 0; i < n; i++)
        h[i] = (h[i] / (1.0f + nf__v_expf_ref(0.0f - h[i]))) * g[i];
}

void nf__vec_dot_q8_0_q8_0_ref(int n, float *s, const void *vx, const void *vy)
{
    const nf_block_q8_0 *x = vx, *y = vy;
    float sum = 0;
    for (int i = 0; i < n / NF_QK8_0; i++) {
        int sumi = 0;
        for (int j = 0; j < NF_QK8_0; j++)
            sumi += x[i].qs[j] * y[i].qs[j];
        sum += sumi * (nf_fp16_to_fp32(x[i].d) * nf_fp16_to_fp32(y[i].d));
    }
    *s = sum;
}

/* q4_K and q5_K: per block, d*dy * sum_j sc_j * (q . q8) - dmin*dy * sum_j m_j * sum(q8 of j);
 * the sums of q8 come from the activation's bsums. quant(b, l) gives element l of block b. */
void nf__vec_dot_q4_K_q8_K_ref(int n, float *s, const void *vx, const void *vy)
{
    const nf_block_q4_K *x = vx;
    const nf_block_q8_K *y = vy;
    float sum = 0;
    for (int i = 0; i < n / NF_QK_K; i++) {
        int sumi = 0, summ = 0;
        for (int j = 0; j < 8; j++) {
            uint8_t sc, m;
            nf__get_scale_min_k4(j, x[i].scales, &sc, &m);
            const uint8_t *q = x[i].qs + 32 * (j / 2);
            const int8_t *q8 = y[i].qs + 32 * j;
            int dot = 0;
            for (int l = 0; l < 32; l++)
                dot += (j & 1 ? q[l] >> 4 : q[l] & 0xF) * q8[l];
            sumi += sc * dot;
            summ += m * (y[i].bsums[2 * j] + y[i].bsums[2 * j + 1]);
        }
        sum += y[i].d * nf_fp16_to_fp32(x[i].d) * sumi;
        sum -= y[i].d * nf_fp16_to_fp32(x[i].dmin) * summ;
    }
    *s = sum;
}

void nf__vec_dot_q5_K_q8_K_ref(int n, float *s, const void *vx, const void *vy)
{
    const nf_block_q5_K *x = vx;
    const nf_block_q8_K *y = vy;
    float sum = 0;
    for (int i = 0; i < n / NF_QK_K; i++) {
        int sumi = 0, summ = 0;
        for (int j = 0; j < 8; j++) {
            uint8_t sc, m;
            nf__get_scale_min_k4(j, x[i].scales, &sc, &m);
            const uint8_t *q = x[i].qs + 32 * (j / 2);
            const int8_t *q8 = y[i].qs + 32 * j;
            int dot = 0;
            for (int l = 0; l < 32; l++) {
                int v = (j & 1 ? q[l] >> 4 : q[l] & 0xF) + ((x[i].qh[l] >> j) & 1) * 16;
                dot += v * q8[l];
            }
            sumi += sc * dot;
            summ += m * (y[i].bsums[2 * j] + y[i].bsums[2 * j + 1]);
        }
        sum += y[i].d * nf_fp16_to_fp32(x[i].d) * sumi;
        sum -= y[i].d * nf_fp16_to_fp32(x[i].dmin) * summ;
    }
    *s = sum;
}

void nf__vec_dot_q6_K_q8_K_ref(int n, float *s, const void *vx, const void *vy)
{
    const nf_block_q6_K *x = vx;
    const nf_block_q8_K *y = vy;
    float sum = 0;
    for (int i = 0; i < n / NF_QK_K; i++) {
        int sumi = 0;
        for (int h = 0; h < 2; h++) {
            const uint8_t *ql = x[i].ql + 64 * h;
            const uint8_t *qh = x[i].qh + 32 * h;
            const int8_t *q8 = y[i].qs + 128 * h;
            for (int g = 0; g < 8; g++) {
                int dot = 0;
                for (int l = 16 * g; l < 16 * g + 16; l++)
                    dot += q6_K_value(ql, qh, l) * q8[l];
                sumi += x[i].scales[8 * h + g] * dot;
            }
        }
        sum += y[i].d * nf_fp16_to_fp32(x[i].d) * sumi;
    }
    *s = sum;
}

void nf__vec_dot_q8_K_q8_K_ref(int n, float *s, const void *vx, const void *vy)
{
    const nf_block_q8_K *x = vx, *y = vy;
    float sum = 0;
    for (int i = 0; i < n / NF_QK_K; i++) {
        int sumi = 0;
        for (int j = 0; j < NF_QK_K; j++)
            sumi += x[i].qs[j] * y[i].qs[j];
        sum += x[i].d * y[i].d * sumi;
    }
    *s = sum;
}

/* ---- traits ------------------------------------------------------------------------------ */

#define PLAIN(t, nm, sz)     [NF_TYPE_##t] = {.name = nm, .blck_size = 1, .type_size = sz}
#define BLOCK(t, nm, bs, sz) [NF_TYPE_##t] = {.name = nm, .blck_size = bs, .type_size = sz}

/* Sizes of the types NanoFlow cannot compute are ggml's (ggml-common.h), so GGUF files holding
 * them can still be read and skipped. vec_dot, from_float_act and vec_dot_rows start as the
 * scalar paths and are upgraded by nf_kernels_init (cpu.c). */
struct nf_type_traits nf__traits[NF_TYPE_COUNT] = {
    [NF_TYPE_F32] = {.name = "f32",
                     .blck_size = 1,
                     .type_size = 4,
                     .compute = true,
                     .vec_dot_type = NF_TYPE_F32,
                     .to_float = to_float_f32,
                     .from_float = from_float_f32,
                     .vec_dot = nf__vec_dot_f32_ref},
    [NF_TYPE_F16] = {.name = "f16",
                     .blck_size = 1,
                     .type_size = 2,
                     .compute = true,
                     .vec_dot_type = NF_TYPE_F16,
                     .to_float = to_float_f16,
                     .from_float = nf__quantize_row_f16_ref,
                     .vec_dot = nf__vec_dot_f16_ref},
    [NF_TYPE_BF16] = {.name = "bf16",
                      .blck_size = 1,
                      .type_size = 2,
                      .compute = true,
                      .vec_dot_type = NF_TYPE_BF16,
                      .to_float = to_float_bf16,
                      .from_float = nf__quantize_row_bf16_ref,
                      .vec_dot = nf__vec_dot_bf16_ref},
    [NF_TYPE_Q4_0] = {.name = "q4_0",
                      .blck_size = NF_QK4_0,
                      .type_size = sizeof(nf_block_q4_0),
                      .compute = true,
                      .vec_dot_type = NF_TYPE_Q8_0,
                      .to_float = to_float_q4_0,
                      .from_float = quantize_row_q4_0_ref,
                      .vec_dot = nf__vec_dot_q4_0_q8_0_ref},
    [NF_TYPE_Q8_0] = {.name = "q8_0",
                      .blck_size = NF_QK8_0,
                      .type_size = sizeof(nf_block_q8_0),
                      .compute = true,
                      .vec_dot_type = NF_TYPE_Q8_0,
                      .to_float = to_float_q8_0,
                      .from_float = nf__quantize_row_q8_0_ref,
                      .vec_dot = nf__vec_dot_q8_0_q8_0_ref},
    [NF_TYPE_Q4_K] = {.name = "q4_K",
                      .blck_size = NF_QK_K,
                      .type_size = sizeof(nf_block_q4_K),
                      .compute = true,
                      .vec_dot_type = NF_TYPE_Q8_K,
                      .to_float = to_float_q4_K,
                      .from_float = quantize_row_q4_K_ref,
                      .vec_dot = nf__vec_dot_q4_K_q8_K_ref},
    [NF_TYPE_Q5_K] = {.name = "q5_K",
                      .blck_size = NF_QK_K,
                      .type_size = sizeof(nf_block_q5_K),
                      .compute = true,
                      .vec_dot_type = NF_TYPE_Q8_K,
                      .to_float = to_float_q5_K,
                      .from_float = quantize_row_q5_K_ref,
                      .vec_dot = nf__vec_dot_q5_K_q8_K_ref},
    [NF_TYPE_Q6_K] = {.name = "q6_K",
                      .blck_size = NF_QK_K,
                      .type_size = sizeof(nf_block_q6_K),
                      .compute = true,
                      .vec_dot_type = NF_TYPE_Q8_K,
                      .to_float = to_float_q6_K,
                      .from_float = quantize_row_q6_K_ref,
                      .vec_dot = nf__vec_dot_q6_K_q8_K_ref},
    /* Activation type of the K-quants; never found as weights in GGUF files. */
    [NF_TYPE_Q8_K] = {.name = "q8_K",
                      .blck_size = NF_QK_K,
                      .type_size = sizeof(nf_block_q8_K),
                      .compute = true,
                      .vec_dot_type = NF_TYPE_Q8_K,
                      .to_float = to_float_q8_K,
                      .from_float = nf__quantize_row_q8_K_ref,
                      .vec_dot = nf__vec_dot_q8_K_q8_K_ref},
#define EXT(t, nm, bs, vt, fn, dot)                             \
    [NF_TYPE_##t] = {.name = nm,                                \
                     .blck_size = bs,                           \
                     .type_size = sizeof(nf_block_##fn),        \
                     .compute = true,                           \
                     .vec_dot_type = NF_TYPE_##vt,              \
                     .to_float = nf__to_float_##fn,             \
                     .from_float = nf__quantize_row_##fn##_ref, \
                     .vec_dot = nf__vec_dot_##dot##_ref}
    /* The types of quants_ext.c, and q8_1, the activation type of q4_1 and q5_1. */
    EXT(Q4_1, "q4_1", NF_QK4_0, Q8_1, q4_1, q4_1_q8_1),
    EXT(Q5_0, "q5_0", NF_QK4_0, Q8_0, q5_0, q5_0_q8_0),
    EXT(Q5_1, "q5_1", NF_QK4_0, Q8_1, q5_1, q5_1_q8_1),
    /* Only an activation type: llama.cpp writes no q8_1 weights, and a file holding them is
     * refused as one NanoFlow cannot compute with (no vec_dot). */
    [NF_TYPE_Q8_1] = {.name = "q8_1",
                      .blck_size = NF_QK8_0,
                      .type_size = sizeof(nf_block_q8_1),
                      .to_float = nf__to_float_q8_1,
                      .from_float = nf__quantize_row_q8_1_ref},
    EXT(IQ4_NL, "iq4_nl", NF_QK4_0, Q8_0, iq4_nl, iq4_nl_q8_0),
    EXT(Q2_K, "q2_K", NF_QK_K, Q8_K, q2_K, q2_K_q8_K),
    EXT(Q3_K, "q3_K", NF_QK_K, Q8_K, q3_K, q3_K_q8_K),
    EXT(IQ4_XS, "iq4_xs", NF_QK_K, Q8_K, iq4_xs, iq4_xs_q8_K),
    /* quants_mxfp4.c: the experts of gpt-oss and of llama.cpp's MXFP4_MOE files. */
    EXT(MXFP4, "mxfp4", NF_QK4_0, Q8_0, mxfp4, mxfp4_q8_0),
    BLOCK(IQ2_XXS, "iq2_xxs", 256, 66),
    BLOCK(IQ2_XS, "iq2_xs", 256, 74),
    BLOCK(IQ3_XXS, "iq3_xxs", 256, 98),
    BLOCK(IQ1_S, "iq1_s", 256, 50),
    BLOCK(IQ3_S, "iq3_s", 256, 110),
    BLOCK(IQ2_S, "iq2_s", 256, 82),
    PLAIN(I8, "i8", 1),
    PLAIN(I16, "i16", 2),
    PLAIN(I32, "i32", 4),
    PLAIN(I64, "i64", 8),
    PLAIN(F64, "f64", 8),
    BLOCK(IQ1_M, "iq1_m", 256, 56),
    BLOCK(TQ1_0, "tq1_0", 256, 54),
    BLOCK(TQ2_0, "tq2_0", 256, 66),
};

const struct nf_type_traits *nf_type_traits(enum nf_type t)
{
    if ((int)t < 0 || t >= NF_TYPE_COUNT || nf__traits[t].name == NULL)
        return NULL;
    nf_kernels_init();
    return &nf__traits[t];
}

size_t nf_row_size(enum nf_type t, int64_t n)
{
    if ((int)t < 0 || t >= NF_TYPE_COUNT || nf__traits[t].name == NULL || n < 0)
        return 0;
    return (size_t)(n / nf__traits[t].blck_size) * nf__traits[t].type_size;
}
