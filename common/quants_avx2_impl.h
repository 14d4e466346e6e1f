/* quants_avx2_impl.h - internal: AVX2 helpers shared by the AVX2 kernel files (include only
 * from files built with -mavx2 -mfma -mf16c, that is *_avx2.c and *_avx512.c). */
#ifndef NF_QUANTS_AVX2_IMPL_H
#define NF_QUANTS_AVX2_IMPL_H

#include <immintrin.h>

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

#endif
