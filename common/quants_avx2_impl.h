/* quants_avx2_impl.h - internal: AVX2 helpers shared by the AVX2 kernel files (include only
 * from files built with -mavx2 -mfma -mf16c, that is *_avx2.c and *_avx512.c). */
#ifndef NF_QUANTS_AVX2_IMPL_H
#define NF_QUANTS_AVX2_IMPL_H

#include <immintrin.h>
#include <string.h>

#include "quants_impl.h"

static inline float hsum_ps(__m256 v)
{
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

static inline int hsum_epi32(__m256i v)
{
    __m128i s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
    s = _mm_add_epi32(s, _mm_shuffle_epi32(s, _MM_SHUFFLE(1, 0, 3, 2)));
    s = _mm_add_epi32(s, _mm_shuffle_epi32(s, _MM_SHUFFLE(2, 3, 0, 1)));
    return _mm_cvtsi128_si32(s);
}

static inline float h2f(nf_fp16_t h)
{
    return _cvtsh_ss(h);
}

/* The 32 nibbles of a q4_0 block as bytes 0..15 in element order (low nibbles first). */
static inline __m256i nibbles_32(const uint8_t *p)
{
    __m128i t = _mm_loadu_si128((const __m128i *)p);
    __m256i b = _mm256_insertf128_si256(_mm256_castsi128_si256(t), _mm_srli_epi16(t, 4), 1);
    return _mm256_and_si256(b, _mm256_set1_epi8(0x0F));
}

/* Eight int32 partial sums of x*y for signed bytes x, y (|x| <= 127 avoids saturation). */
static inline __m256i dot_i8(__m256i x, __m256i y)
{
    __m256i p = _mm256_maddubs_epi16(_mm256_sign_epi8(x, x), _mm256_sign_epi8(y, x));
    return _mm256_madd_epi16(p, _mm256_set1_epi16(1));
}

/* Eight int32 partial sums of u*y for unsigned bytes u <= 127 and signed bytes y. */
static inline __m256i dot_u8i8(__m256i u, __m256i y)
{
    return _mm256_madd_epi16(_mm256_maddubs_epi16(u, y), _mm256_set1_epi16(1));
}

/* Unpacks the 12 scale bytes of a q4_K/q5_K block into 8 scales and 8 mins (6 bits each). */
static inline void unpack_k4_scales(const uint8_t *q, uint8_t sc[8], uint8_t m[8])
{
    uint32_t u[4];
    memcpy(u, q, 12);
    const uint32_t k1 = 0x3f3f3f3f, k2 = 0x0f0f0f0f, k3 = 0x03030303;
    uint32_t s0 = u[0] & k1;
    uint32_t s1 = (u[2] & k2) | (((u[0] >> 6) & k3) << 4);
    uint32_t m0 = u[1] & k1;
    uint32_t m1 = ((u[2] >> 4) & k2) | (((u[1] >> 6) & k3) << 4);
    memcpy(sc, &s0, 4);
    memcpy(sc + 4, &s1, 4);
    memcpy(m, &m0, 4);
    memcpy(m + 4, &m1, 4);
}

/* ggml's four partial sums of the mins term: lane l = m[2l] * (b[4l] + b[4l+1]) + m[2l+1] *
 * (b[4l+2] + b[4l+3]) for 8 mins and 16 bsums (the pair sums are exact in int16). */
static inline __m128i mins_dot_bsums(const uint8_t m[8], const int16_t *bsums)
{
    const __m128i m16 = _mm_cvtepu8_epi16(_mm_loadl_epi64((const __m128i *)m));
    const __m128i q8s = _mm_hadd_epi16(_mm_loadu_si128((const __m128i *)bsums),
                                       _mm_loadu_si128((const __m128i *)(bsums + 8)));
    return _mm_madd_epi16(m16, q8s);
}

#endif
