/* quants_avx2.c - AVX2/FMA/F16C kernels (vec_dot, activation quantizers); see quants_impl.h. */
#include <immintrin.h>
#include <math.h>
#include <string.h>

#include "quants_avx2_impl.h"

/* ---- plain float types ------------------------------------------------------------------- */

void nf__vec_dot_f32_avx2(int n, float *s, const void *vx, const void *vy)
{
    const float *x = vx, *y = vy;
    __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
    int i = 0;
    for (; i + 32 <= n; i += 32) {
        a0 = _mm256_fmadd_ps(_mm256_loadu_ps(x + i), _mm256_loadu_ps(y + i), a0);
        a1 = _mm256_fmadd_ps(_mm256_loadu_ps(x + i + 8), _mm256_loadu_ps(y + i + 8), a1);
        a2 = _mm256_fmadd_ps(_mm256_loadu_ps(x + i + 16), _mm256_loadu_ps(y + i + 16), a2);
        a3 = _mm256_fmadd_ps(_mm256_loadu_ps(x + i + 24), _mm256_loadu_ps(y + i + 24), a3);
    }
    for (; i + 8 <= n; i += 8)
        a0 = _mm256_fmadd_ps(_mm256_loadu_ps(x + i), _mm256_loadu_ps(y + i), a0);
    float sum = hsum_ps(_mm256_add_ps(_mm256_add_ps(a0, a1), _mm256_add_ps(a2, a3)));
    for (; i < n; i++)
        sum += x[i] * y[i];
    *s = sum;
}

void nf__vec_dot_f16_avx2(int n, float *s, const void *vx, const void *vy)
{
    const nf_fp16_t *x = vx, *y = vy;
    __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
    int i = 0;
#define LD(p) _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(p)))
    for (; i + 32 <= n; i += 32) {
        a0 = _mm256_fmadd_ps(LD(x + i), LD(y + i), a0);
        a1 = _mm256_fmadd_ps(LD(x + i + 8), LD(y + i + 8), a1);
        a2 = _mm256_fmadd_ps(LD(x + i + 16), LD(y + i + 16), a2);
        a3 = _mm256_fmadd_ps(LD(x + i + 24), LD(y + i + 24), a3);
    }
    for (; i + 8 <= n; i += 8)
        a0 = _mm256_fmadd_ps(LD(x + i), LD(y + i), a0);
#undef LD
    float sum = hsum_ps(_mm256_add_ps(_mm256_add_ps(a0, a1), _mm256_add_ps(a2, a3)));
    for (; i < n; i++)
        sum += h2f(x[i]) * h2f(y[i]);
    *s = sum;
}

static inline __m256 load_bf16(const nf_bf16_t *p)
{
    __m256i w = _mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)p));
    return _mm256_castsi256_ps(_mm256_slli_epi32(w, 16));
}

void nf__vec_dot_bf16_avx2(int n, float *s, const void *vx, const void *vy)
{
    const nf_bf16_t *x = vx, *y = vy;
    __m256 a0 = _mm256_setzero_ps(), a1 = a0;
    int i = 0;
    for (; i + 16 <= n; i += 16) {
        a0 = _mm256_fmadd_ps(load_bf16(x + i), load_bf16(y + i), a0);
        a1 = _mm256_fmadd_ps(load_bf16(x + i + 8), load_bf16(y + i + 8), a1);
    }
    for (; i + 8 <= n; i += 8)
        a0 = _mm256_fmadd_ps(load_bf16(x + i), load_bf16(y + i), a0);
    float sum = hsum_ps(_mm256_add_ps(a0, a1));
    for (; i < n; i++)
        sum += nf_bf16_to_fp32(x[i]) * nf_bf16_to_fp32(y[i]);
    *s = sum;
}

/* ---- legacy quants ----------------------------------------------------------------------- */

void nf__vec_dot_q4_0_q8_0_avx2(int n, float *s, const void *vx, const void *vy)
{
    const nf_block_q4_0 *x = vx;
    const nf_block_q8_0 *y = vy;
    const int nb = n / NF_QK8_0;
    const __m256i off = _mm256_set1_epi8(8);
    __m256 a0 = _mm256_setzero_ps(), a1 = a0;
    int i = 0;
    for (; i + 2 <= nb; i += 2) {
        __m256i q0 = _mm256_sub_epi8(nibbles_32(x[i].qs), off);
        __m256i q1 = _mm256_sub_epi8(nibbles_32(x[i + 1].qs), off);
        __m256i p0 = dot_i8(q0, _mm256_loadu_si256((const __m256i *)y[i].qs));
        __m256i p1 = dot_i8(q1, _mm256_loadu_si256((const __m256i *)y[i + 1].qs));
        a0 = _mm256_fmadd_ps(_mm256_set1_ps(h2f(x[i].d) * h2f(y[i].d)), _mm256_cvtepi32_ps(p0), a0);
        a1 = _mm256_fmadd_ps(_mm256_set1_ps(h2f(x[i + 1].d) * h2f(y[i + 1].d)),
                             _mm256_cvtepi32_ps(p1), a1);
    }
    for (; i < nb; i++) {
        __m256i q0 = _mm256_sub_epi8(nibbles_32(x[i].qs), off);
        __m256i p0 = dot_i8(q0, _mm256_loadu_si256((const __m256i *)y[i].qs));
        a0 = _mm256_fmadd_ps(_mm256_set1_ps(h2f(x[i].d) * h2f(y[i].d)), _mm256_cvtepi32_ps(p0), a0);
    }
    *s = hsum_ps(_mm256_add_ps(a0, a1));
}

/* One 8-lane accumulator, as ggml_vec_dot_q8_0_q8_0 on x86 (and llamafile's tinyBLAS for q8_0
 * batches): the float sums then round exactly as llama.cpp's do. */
void nf__vec_dot_q8_0_q8_0_avx2(int n, float *s, const void *vx, const void *vy)
{
    const nf_block_q8_0 *x = vx, *y = vy;
    const int nb = n / NF_QK8_0;
    __m256 acc = _mm256_setzero_ps();
    for (int i = 0; i < nb; i++) {
        __m256i p = dot_i8(_mm256_loadu_si256((const __m256i *)x[i].qs),
                           _mm256_loadu_si256((const __m256i *)y[i].qs));
        acc =
            _mm256_fmadd_ps(_mm256_set1_ps(h2f(x[i].d) * h2f(y[i].d)), _mm256_cvtepi32_ps(p), acc);
    }
    *s = hsum_ps(acc);
}

/* Lane k of the result = the sum of the eight int32 lanes of p[k] (integers: exact). */
static inline __m256i hsum8_epi32(const __m256i p[8])
{
    const __m256i h01 = _mm256_hadd_epi32(p[0], p[1]), h23 = _mm256_hadd_epi32(p[2], p[3]);
    const __m256i h45 = _mm256_hadd_epi32(p[4], p[5]), h67 = _mm256_hadd_epi32(p[6], p[7]);
    const __m256i h0123 = _mm256_hadd_epi32(h01, h23), h4567 = _mm256_hadd_epi32(h45, h67);
    return _mm256_add_epi32(_mm256_permute2x128_si256(h0123, h4567, 0x20),
                            _mm256_permute2x128_si256(h0123, h4567, 0x31));
}

/* q4_0 rows in the order of llama.cpp's repacked q4_0_8x8 gemv/gemm (which llama.cpp uses for
 * q4_0 weights on AVX2/AVX-512 machines): per row, acc = fma(block integer dot, weight scale *
 * activation scale, acc) block after block. That chain cannot be reordered, so four rows are
 * interleaved to hide its latency. The integer dots of two blocks of the four rows are reduced
 * together. */
void nf__vec_dot_q4_0_q8_0_seq_avx2_rows(int n, float *s, size_t bs, const void *vx, const void *vy,
                                         int nrows)
{
    const nf_block_q8_0 *y = vy;
    const int nb = n / NF_QK8_0;
    const __m256i off = _mm256_set1_epi8(8);
    int r = 0;
    for (; r + 4 <= nrows; r += 4) {
        const nf_block_q4_0 *x[4];
        for (int k = 0; k < 4; k++)
            x[k] = (const nf_block_q4_0 *)((const char *)vx + (size_t)(r + k) * bs);
        float acc[4] = {0.0f, 0.0f, 0.0f, 0.0f};
        int i = 0;
        for (; i + 2 <= nb; i += 2) {
            /* p[2k + b] = row k, block i + b. Several rows stream at once: prefetch them. */
            for (int k = 0; k < 4; k++)
                _mm_prefetch((const char *)(x[k] + i) + 1024, _MM_HINT_T0);
            const __m256i y0 = _mm256_loadu_si256((const __m256i *)y[i].qs);
            const __m256i y1 = _mm256_loadu_si256((const __m256i *)y[i + 1].qs);
            __m256i p[8];
            for (int k = 0; k < 4; k++) {
                p[2 * k] = dot_i8(_mm256_sub_epi8(nibbles_32(x[k][i].qs), off), y0);
                p[2 * k + 1] = dot_i8(_mm256_sub_epi8(nibbles_32(x[k][i + 1].qs), off), y1);
            }
            const float dy0 = h2f(y[i].d), dy1 = h2f(y[i + 1].d);
            float sf[8];
            _mm256_storeu_ps(sf, _mm256_cvtepi32_ps(hsum8_epi32(p)));
            for (int k = 0; k < 4; k++) {
                acc[k] = fmaf(sf[2 * k], h2f(x[k][i].d) * dy0, acc[k]);
                acc[k] = fmaf(sf[2 * k + 1], h2f(x[k][i + 1].d) * dy1, acc[k]);
            }
        }
        for (; i < nb; i++) {
            const __m256i yq = _mm256_loadu_si256((const __m256i *)y[i].qs);
            for (int k = 0; k < 4; k++) {
                const int sk = hsum_epi32(dot_i8(_mm256_sub_epi8(nibbles_32(x[k][i].qs), off), yq));
                acc[k] = fmaf((float)sk, h2f(x[k][i].d) * h2f(y[i].d), acc[k]);
            }
        }
        for (int k = 0; k < 4; k++)
            s[r + k] = acc[k];
    }
    for (; r < nrows; r++) {
        const nf_block_q4_0 *x = (const nf_block_q4_0 *)((const char *)vx + (size_t)r * bs);
        float acc = 0.0f;
        for (int i = 0; i < nb; i++) {
            const __m256i p = dot_i8(_mm256_sub_epi8(nibbles_32(x[i].qs), off),
                                     _mm256_loadu_si256((const __m256i *)y[i].qs));
            acc = fmaf((float)hsum_epi32(p), h2f(x[i].d) * h2f(y[i].d), acc);
        }
        s[r] = acc;
    }
}

/* ---- K-quants ---------------------------------------------------------------------------- */

void nf__vec_dot_q4_K_q8_K_avx2(int n, float *s, const void *vx, const void *vy)
{
    const nf_block_q4_K *x = vx;
    const nf_block_q8_K *y = vy;
    const __m256i m4 = _mm256_set1_epi8(0x0F);
    /* ggml_vec_dot_q4_K_q8_K's float order: 8 lanes for the scales term, 4 for the mins. */
    __m256 acc = _mm256_setzero_ps();
    __m128 accm = _mm_setzero_ps();
    for (int i = 0; i < n / NF_QK_K; i++) {
        uint8_t sc[8], m[8];
        unpack_k4_scales(x[i].scales, sc, m);
        const float d = y[i].d * h2f(x[i].d), dmin = -y[i].d * h2f(x[i].dmin);
        accm =
            _mm_fmadd_ps(_mm_set1_ps(dmin), _mm_cvtepi32_ps(mins_dot_bsums(m, y[i].bsums)), accm);
        __m256i sumi = _mm256_setzero_si256();
        for (int j = 0; j < 4; j++) {
            __m256i q4 = _mm256_loadu_si256((const __m256i *)(x[i].qs + 32 * j));
            __m256i lo = _mm256_and_si256(q4, m4);
            __m256i hi = _mm256_and_si256(_mm256_srli_epi16(q4, 4), m4);
            __m256i pl =
                _mm256_maddubs_epi16(lo, _mm256_loadu_si256((const void *)(y[i].qs + 64 * j)));
            __m256i ph =
                _mm256_maddubs_epi16(hi, _mm256_loadu_si256((const void *)(y[i].qs + 64 * j + 32)));
            pl = _mm256_madd_epi16(pl, _mm256_set1_epi16(sc[2 * j]));
            ph = _mm256_madd_epi16(ph, _mm256_set1_epi16(sc[2 * j + 1]));
            sumi = _mm256_add_epi32(sumi, _mm256_add_epi32(pl, ph));
        }
        acc = _mm256_fmadd_ps(_mm256_set1_ps(d), _mm256_cvtepi32_ps(sumi), acc);
    }
    accm = _mm_add_ps(accm, _mm_movehl_ps(accm, accm));
    accm = _mm_add_ss(accm, _mm_movehdup_ps(accm));
    *s = hsum_ps(acc) + _mm_cvtss_f32(accm);
}

void nf__vec_dot_q5_K_q8_K_avx2(int n, float *s, const void *vx, const void *vy)
{
    const nf_block_q5_K *x = vx;
    const nf_block_q8_K *y = vy;
    const __m256i m4 = _mm256_set1_epi8(0x0F), one = _mm256_set1_epi8(1);
    /* ggml_vec_dot_q5_K_q8_K's float order: 8 lanes for the scales term; the mins term is
     * reduced to one integer per block and accumulated in a scalar (a fused multiply-add, as
     * compilers contract ggml's summs += dmin * x). */
    __m256 acc = _mm256_setzero_ps();
    float summs = 0.0f;
    for (int i = 0; i < n / NF_QK_K; i++) {
        uint8_t sc[8], m[8];
        unpack_k4_scales(x[i].scales, sc, m);
        const float d = y[i].d * h2f(x[i].d), dmin = -y[i].d * h2f(x[i].dmin);
        const __m128i pm = mins_dot_bsums(m, y[i].bsums);
        const __m128i pm2 =
            _mm_hadd_epi32(_mm_hadd_epi32(pm, _mm_setzero_si128()), _mm_setzero_si128());
        summs = fmaf(dmin, (float)_mm_cvtsi128_si32(pm2), summs);
        __m256i hb = _mm256_loadu_si256((const __m256i *)x[i].qh);
        __m256i sumi = _mm256_setzero_si256();
        for (int j = 0; j < 4; j++) {
            __m256i q4 = _mm256_loadu_si256((const __m256i *)(x[i].qs + 32 * j));
            /* Bit 2j of qh is the fifth bit of the low-nibble sub-block, bit 2j+1 of the high. */
            __m256i hl = _mm256_slli_epi16(_mm256_and_si256(hb, one), 4);
            __m256i hh = _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(hb, 1), one), 4);
            hb = _mm256_srli_epi16(hb, 2);
            __m256i lo = _mm256_or_si256(_mm256_and_si256(q4, m4), hl);
            __m256i hi = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(q4, 4), m4), hh);
            __m256i pl =
                _mm256_maddubs_epi16(lo, _mm256_loadu_si256((const void *)(y[i].qs + 64 * j)));
            __m256i ph =
                _mm256_maddubs_epi16(hi, _mm256_loadu_si256((const void *)(y[i].qs + 64 * j + 32)));
            pl = _mm256_madd_epi16(pl, _mm256_set1_epi16(sc[2 * j]));
            ph = _mm256_madd_epi16(ph, _mm256_set1_epi16(sc[2 * j + 1]));
            sumi = _mm256_add_epi32(sumi, _mm256_add_epi32(pl, ph));
        }
        acc = _mm256_fmadd_ps(_mm256_set1_ps(d), _mm256_cvtepi32_ps(sumi), acc);
    }
    *s = hsum_ps(acc) + summs;
}

/* q6_K as ggml_vec_dot_q6_K_q8_K on AVX2: the quants are taken unsigned (0..63) and the offset
 * 32 * q8 is subtracted per pair of products, so that every int32 lane holds exactly ggml's
 * partial sum (lane k: elements 4k..4k+3 of each 32-element chunk, times their scale) and the
 * float accumulation rounds as llama.cpp's does. */
void nf__vec_dot_q6_K_q8_K_avx2(int n, float *s, const void *vx, const void *vy)
{
    const nf_block_q6_K *x = vx;
    const nf_block_q8_K *y = vy;
    const __m256i m4 = _mm256_set1_epi8(0x0F), m2 = _mm256_set1_epi8(3);
    const __m256i m32 = _mm256_set1_epi8(32);
    __m256 acc = _mm256_setzero_ps();
    for (int i = 0; i < n / NF_QK_K; i++) {
        const float d = y[i].d * h2f(x[i].d);
        __m256i sumi = _mm256_setzero_si256();
        for (int h = 0; h < 2; h++) {
            const uint8_t *ql = x[i].ql + 64 * h, *qh = x[i].qh + 32 * h;
            const int8_t *q8 = y[i].qs + 128 * h;
            const int8_t *scp = x[i].scales + 8 * h;
            __m256i l1 = _mm256_loadu_si256((const __m256i *)ql);
            __m256i l2 = _mm256_loadu_si256((const __m256i *)(ql + 32));
            __m256i hb = _mm256_loadu_si256((const __m256i *)qh);
            __m256i q[4];
            q[0] = _mm256_or_si256(_mm256_and_si256(l1, m4),
                                   _mm256_slli_epi16(_mm256_and_si256(hb, m2), 4));
            q[1] = _mm256_or_si256(
                _mm256_and_si256(l2, m4),
                _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(hb, 2), m2), 4));
            q[2] = _mm256_or_si256(
                _mm256_and_si256(_mm256_srli_epi16(l1, 4), m4),
                _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(hb, 4), m2), 4));
            q[3] = _mm256_or_si256(
                _mm256_and_si256(_mm256_srli_epi16(l2, 4), m4),
                _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(hb, 6), m2), 4));
            __m256i p[4];
            for (int k = 0; k < 4; k++) {
                const __m256i y8 = _mm256_loadu_si256((const void *)(q8 + 32 * k));
                const __m256i scv =
                    _mm256_setr_m128i(_mm_set1_epi16(scp[2 * k]), _mm_set1_epi16(scp[2 * k + 1]));
                p[k] =
                    _mm256_sub_epi16(_mm256_maddubs_epi16(q[k], y8), _mm256_maddubs_epi16(m32, y8));
                p[k] = _mm256_madd_epi16(scv, p[k]);
            }
            sumi = _mm256_add_epi32(sumi, _mm256_add_epi32(p[0], p[1]));
            sumi = _mm256_add_epi32(sumi, _mm256_add_epi32(p[2], p[3]));
        }
        acc = _mm256_fmadd_ps(_mm256_set1_ps(d), _mm256_cvtepi32_ps(sumi), acc);
    }
    *s = hsum_ps(acc);
}

/* ---- activation quantizers --------------------------------------------------------------- */

void nf__quantize_row_f16_avx2(const float *x, void *vy, int64_t n)
{
    nf_fp16_t *y = vy;
    int64_t i = 0;
    for (; i + 8 <= n; i += 8)
        _mm_storeu_si128((__m128i *)(y + i),
                         _mm256_cvtps_ph(_mm256_loadu_ps(x + i), _MM_FROUND_TO_NEAREST_INT));
    for (; i < n; i++)
        y[i] = nf_fp32_to_fp16(x[i]);
}

/* Same rounding as nf_fp32_to_bf16, eight at a time with integer arithmetic. */
void nf__quantize_row_bf16_avx2(const float *x, void *vy, int64_t n)
{
    nf_bf16_t *y = vy;
    int64_t i = 0;
    const __m256i one = _mm256_set1_epi32(1), bias = _mm256_set1_epi32(0x7fff);
    const __m256i quiet = _mm256_set1_epi32(0x40);
    for (; i + 16 <= n; i += 16) {
        __m256i r[2];
        for (int k = 0; k < 2; k++) {
            __m256 f = _mm256_loadu_ps(x + i + 8 * k);
            __m256i u = _mm256_castps_si256(f);
            __m256i odd = _mm256_and_si256(_mm256_srli_epi32(u, 16), one);
            __m256i rnd = _mm256_srli_epi32(_mm256_add_epi32(u, _mm256_add_epi32(bias, odd)), 16);
            __m256i nan = _mm256_or_si256(_mm256_srli_epi32(u, 16), quiet);
            __m256i isnan = _mm256_castps_si256(_mm256_cmp_ps(f, f, _CMP_UNORD_Q));
            r[k] = _mm256_blendv_epi8(rnd, nan, isnan);
        }
        __m256i p = _mm256_packus_epi32(r[0], r[1]);
        p = _mm256_permute4x64_epi64(p, _MM_SHUFFLE(3, 1, 2, 0));
        _mm256_storeu_si256((__m256i *)(y + i), p);
    }
    for (; i < n; i++)
        y[i] = nf_fp32_to_bf16(x[i]);
}

/* 32 floats scaled by id, rounded to nearest even, packed to int8 in element order. */
static inline __m256i round_pack_32(const float *x, __m256 id)
{
    __m256i v[4];
    for (int k = 0; k < 4; k++) {
        __m256 f = _mm256_mul_ps(_mm256_loadu_ps(x + 8 * k), id);
        f = _mm256_round_ps(f, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
        v[k] = _mm256_cvtps_epi32(f);
    }
    __m256i a = _mm256_packs_epi32(v[0], v[1]), b = _mm256_packs_epi32(v[2], v[3]);
    __m256i p = _mm256_packs_epi16(a, b);
    /* packs work per 128-bit lane: restore the element order. */
    return _mm256_permutevar8x32_epi32(p, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
}

static inline float amax_32(const float *x)
{
    const __m256 sign = _mm256_set1_ps(-0.0f);
    __m256 m = _mm256_andnot_ps(sign, _mm256_loadu_ps(x));
    for (int k = 1; k < 4; k++)
        m = _mm256_max_ps(m, _mm256_andnot_ps(sign, _mm256_loadu_ps(x + 8 * k)));
    __m128 h = _mm_max_ps(_mm256_castps256_ps128(m), _mm256_extractf128_ps(m, 1));
    h = _mm_max_ps(h, _mm_movehl_ps(h, h));
    h = _mm_max_ss(h, _mm_movehdup_ps(h));
    return _mm_cvtss_f32(h);
}

/* As llama.cpp's AVX2 quantize_row_q8_0: d = amax / 127 (the same as the reference) but the
 * quants are round(x * (127 / amax)) with ties to even, so a quant can differ by one from the
 * reference's roundf(x * (1 / d)) when x * id is (within rounding) a tie. */
void nf__quantize_row_q8_0_avx2(const float *x, void *vy, int64_t n)
{
    nf_block_q8_0 *y = vy;
    for (int64_t i = 0; i < n / NF_QK8_0; i++, x += NF_QK8_0) {
        float amax = amax_32(x);
        y[i].d = (nf_fp16_t)_cvtss_sh(amax / 127.f, _MM_FROUND_TO_NEAREST_INT);
        __m256 id = _mm256_set1_ps(amax != 0.0f ? 127.f / amax : 0.0f);
        _mm256_storeu_si256((__m256i *)y[i].qs, round_pack_32(x, id));
    }
}

/* As llama.cpp's AVX2 quantize_row_q8_1: q8_0's d and quants (ties to even), and
 * s = d * sum(qs) from the unrounded d, rounded to fp16. */
void nf__quantize_row_q8_1_avx2(const float *x, void *vy, int64_t n)
{
    nf_block_q8_1 *y = vy;
    for (int64_t i = 0; i < n / NF_QK8_0; i++, x += NF_QK8_0) {
        const float amax = amax_32(x), d = amax / 127.f;
        y[i].d = (nf_fp16_t)_cvtss_sh(d, _MM_FROUND_TO_NEAREST_INT);
        const __m256i q = round_pack_32(x, _mm256_set1_ps(amax != 0.0f ? 127.f / amax : 0.0f));
        _mm256_storeu_si256((__m256i *)y[i].qs, q);
        const __m256i w = _mm256_maddubs_epi16(_mm256_set1_epi8(1), q);
        const int sum = hsum_epi32(_mm256_madd_epi16(w, _mm256_set1_epi16(1)));
        y[i].s = (nf_fp16_t)_cvtss_sh(d * (float)sum, _MM_FROUND_TO_NEAREST_INT);
    }
}

/* Bit-exact with the reference quantize_row_q8_K (ggml's x86 build uses the reference too). */
void nf__quantize_row_q8_K_avx2(const float *x, void *vy, int64_t n)
{
    nf_block_q8_K *y = vy;
    for (int64_t i = 0; i < n / NF_QK_K; i++, x += NF_QK_K) {
        float amax = 0;
        for (int k = 0; k < NF_QK_K; k += 32) {
            float a = amax_32(x + k);
            amax = a > amax ? a : amax;
        }
        if (!amax) {
            memset(&y[i], 0, sizeof(y[i]));
            continue;
        }
        /* The first element of largest magnitude sets the sign, as in the reference. */
        float max = 0;
        for (int k = 0; k < NF_QK_K; k++) {
            if (fabsf(x[k]) == amax) {
                max = x[k];
                break;
            }
        }
        const float iscale = -127.f / max;
        __m256 is = _mm256_set1_ps(iscale);
        for (int k = 0; k < NF_QK_K; k += 32) {
            __m256i q = round_pack_32(x + k, is);
            _mm256_storeu_si256((__m256i *)(y[i].qs + k), q);
            /* Sums of each 16 quants: widen to int16 and add pairs, then reduce. */
            __m256i w0 = _mm256_cvtepi8_epi16(_mm256_castsi256_si128(q));
            __m256i w1 = _mm256_cvtepi8_epi16(_mm256_extracti128_si256(q, 1));
            y[i].bsums[k / 16] = (int16_t)hsum_epi32(_mm256_madd_epi16(w0, _mm256_set1_epi16(1)));
            y[i].bsums[k / 16 + 1] =
                (int16_t)hsum_epi32(_mm256_madd_epi16(w1, _mm256_set1_epi16(1)));
        }
        y[i].d = 1 / iscale;
    }
}
