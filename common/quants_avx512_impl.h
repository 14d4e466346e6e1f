/* quants_avx512_impl.h - internal: the q4_0 / q8_0 group helpers shared by the AVX-512 kernel
 * files (include only from *_avx512.c). */
#ifndef NF_QUANTS_AVX512_IMPL_H
#define NF_QUANTS_AVX512_IMPL_H

#include <immintrin.h>

#include "quants_impl.h"

/* ---- q4_0 / q8_0 in groups of four blocks --------------------------------------------------
 *
 * Four blocks are handled per 512-bit vector, 128-bit lane k holding block k. The activation
 * (q8_0) of a group is first rearranged into ylo = the first 16 quants of each block and
 * yhi = the last 16, with base = -off * (sum of the block's quants) per lane and dy = the four
 * block scales, each repeated over its lane. Weight quants are made unsigned (q4_0 nibbles are
 * 0..15, q8_0 quants get +128) so that VNNI's unsigned-by-signed vpdpbusd applies, and the
 * offset comes back through base. The weight bytes of a group are gathered with word
 * permutes, which works because both block sizes (18 and 34 bytes) are even. */

struct y_group {
    __m512i lo, hi, base;
    __m512 d;
};

/* Rearranges 4 q8_0 blocks; off is the unsigned offset the weights carry (8 or 128). */
static inline void prep_group(struct y_group *g, const nf_block_q8_0 *y, int off)
{
    __m512i a =
        _mm512_inserti64x4(_mm512_castsi256_si512(_mm256_loadu_si256((const void *)y[0].qs)),
                           _mm256_loadu_si256((const void *)y[1].qs), 1);
    __m512i b =
        _mm512_inserti64x4(_mm512_castsi256_si512(_mm256_loadu_si256((const void *)y[2].qs)),
                           _mm256_loadu_si256((const void *)y[3].qs), 1);
    /* a = [y0lo y0hi y1lo y1hi], b = [y2lo y2hi y3lo y3hi] in 128-bit lanes. */
    g->lo = _mm512_shuffle_i64x2(a, b, _MM_SHUFFLE(2, 0, 2, 0));
    g->hi = _mm512_shuffle_i64x2(a, b, _MM_SHUFFLE(3, 1, 3, 1));
    const __m512i offv = _mm512_set1_epi8((char)off);
    __m512i sum = _mm512_dpbusd_epi32(_mm512_setzero_si512(), offv, g->lo);
    sum = _mm512_dpbusd_epi32(sum, offv, g->hi);
    g->base = _mm512_sub_epi32(_mm512_setzero_si512(), sum);
    __m128i dw =
        _mm_setr_epi16((short)y[0].d, (short)y[1].d, (short)y[2].d, (short)y[3].d, 0, 0, 0, 0);
    __m128 d4 = _mm_cvtph_ps(dw);
    g->d = _mm512_permutexvar_ps(_mm512_setr_epi32(0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3),
                                 _mm512_castps128_ps512(d4));
}

/* Word indices: the 4 qs of 4 q4_0 blocks from A = bytes 0..63 and B = bytes 8..71 of the
 * group (B's word j is the group's word j + 4), and the 4 scales, each repeated 4 times. */
static inline __m512i q4_0_qs_index(void)
{
    short idx[32];
    for (int m = 0; m < 32; m++) {
        int g = 9 * (m / 8) + 1 + m % 8;
        idx[m] = (short)(g < 32 ? g : 32 + g - 4);
    }
    return _mm512_loadu_si512(idx);
}

static inline __m512i q4_0_d_index(void)
{
    short idx[32] = {0};
    for (int m = 0; m < 16; m++)
        idx[m] = (short)(9 * (m / 4));
    return _mm512_loadu_si512(idx);
}

/* One group of 4 q4_0 blocks at p unpacked: unsigned nibbles lo (low halves) and hi, and the
 * blocks' scales d, each repeated over its block's lanes. */
struct q4_w {
    __m512i lo, hi;
    __m512 d;
};

static inline __attribute__((always_inline)) struct q4_w q4_0_unpack(const char *p, __m512i iq,
                                                                     __m512i id)
{
    const __m512i m4 = _mm512_set1_epi8(0x0F);
    /* b = bytes 8..71 by shifting, not by a second 64-byte load: loads that straddle cache
     * lines cost a third of the streaming bandwidth. */
    __m512i a = _mm512_loadu_si512(p);
    __m512i b =
        _mm512_alignr_epi32(_mm512_castsi128_si512(_mm_loadl_epi64((const void *)(p + 64))), a, 2);
    __m512i qs = _mm512_permutex2var_epi16(a, iq, b);
    struct q4_w w;
    w.d = _mm512_cvtph_ps(_mm512_castsi512_si256(_mm512_permutexvar_epi16(id, a)));
    w.lo = _mm512_and_si512(qs, m4);
    w.hi = _mm512_and_si512(_mm512_srli_epi16(qs, 4), m4);
    return w;
}

/* sum over one group of 4 q4_0 blocks at p, accumulated into acc. */
static inline __m512 q4_0_group(__m512 acc, const char *p, const struct y_group *g, __m512i iq,
                                __m512i id)
{
    const struct q4_w w = q4_0_unpack(p, iq, id);
    __m512i sumi = _mm512_dpbusd_epi32(g->base, w.lo, g->lo);
    sumi = _mm512_dpbusd_epi32(sumi, w.hi, g->hi);
    return _mm512_fmadd_ps(_mm512_mul_ps(w.d, g->d), _mm512_cvtepi32_ps(sumi), acc);
}

/* One q4_0 block against one q8_0 block (the tail of a row), 256-bit. */
static inline float q4_0_block(const nf_block_q4_0 *x, const nf_block_q8_0 *y)
{
    __m128i t = _mm_loadu_si128((const __m128i *)x->qs);
    __m256i q = _mm256_inserti128_si256(_mm256_castsi128_si256(t), _mm_srli_epi16(t, 4), 1);
    q = _mm256_and_si256(q, _mm256_set1_epi8(0x0F));
    __m256i yq = _mm256_loadu_si256((const __m256i *)y->qs);
    __m256i base = _mm256_dpbusd_epi32(_mm256_setzero_si256(), _mm256_set1_epi8(8), yq);
    __m256i p = _mm256_sub_epi32(_mm256_dpbusd_epi32(_mm256_setzero_si256(), q, yq), base);
    __m128i s = _mm_add_epi32(_mm256_castsi256_si128(p), _mm256_extracti128_si256(p, 1));
    s = _mm_add_epi32(s, _mm_shuffle_epi32(s, _MM_SHUFFLE(1, 0, 3, 2)));
    s = _mm_add_epi32(s, _mm_shuffle_epi32(s, _MM_SHUFFLE(2, 3, 0, 1)));
    return (float)_mm_cvtsi128_si32(s) * (_cvtsh_ss(x->d) * _cvtsh_ss(y->d));
}

/* ---- helpers of the 512-bit K-quant kernels (quants_ext_avx512.c, quants_mat_avx512.c) ---- */

static inline __m512i cat256(__m256i lo, __m256i hi)
{
    return _mm512_inserti64x4(_mm512_castsi256_si512(lo), hi, 1);
}

/* Lane k of the result: lanes k and k + 8 of p added (integers: exact). */
static inline __m256i fold16(__m512i p)
{
    return _mm256_add_epi32(_mm512_castsi512_si256(p), _mm512_extracti64x4_epi64(p, 1));
}

/* Word indices spreading four 16-bit scales (sub-blocks 4g..4g+3) over the 32 words of the
 * vpmaddubsw result of 64 elements: word m holds elements 2m, 2m + 1, sub-block 4g + m / 8. */
static inline __m512i scale_index(int g)
{
    short idx[32];
    for (int m = 0; m < 32; m++)
        idx[m] = (short)(4 * g + m / 8);
    return _mm512_loadu_si512(idx);
}

/* The two-bit fields of element 128h + 32j + l for j = 2jj, 2jj + 1 from qs[32h + l]. */
static inline __m512i crumbs64(__m256i q2, int jj)
{
    const __m512i q = cat256(q2, q2);
    const __m512i sh =
        cat256(_mm256_set1_epi16((short)(4 * jj)), _mm256_set1_epi16((short)(4 * jj + 2)));
    return _mm512_and_si512(_mm512_srlv_epi16(q, sh), _mm512_set1_epi8(3));
}

#endif
