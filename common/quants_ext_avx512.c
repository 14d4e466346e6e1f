/* quants_ext_avx512.c - AVX-512 (F/BW/VL/DQ/VNNI) vec_dot kernels of the types of
 * quants_ext.c. The integer work is done 64 bytes at a time: the 32-element types take two
 * blocks per vector with VNNI's unsigned-by-signed vpdpbusd (signed weights stored with an
 * offset taken back through the activation's sums), the K-types 64 elements per vector. The
 * float work is the AVX2 kernel's: every int32 lane holds exactly the AVX2 kernel's lane (sums
 * of the same four products), and the same 8-lane float accumulator takes the blocks in the
 * same order, so results are bit-identical to quants_ext_avx2.c, which sums as llama.cpp's
 * AVX2 code does (llama.cpp has no AVX-512 path for these types; a 16-lane float sum moved the
 * first-step logits of a q4_1 model by 0.009 against llama.cpp's). */
#include <string.h>

#include "quants_avx2_impl.h"
#include "quants_avx512_impl.h"

/* acc += da * (low 8 lanes of p) then db * (high 8 lanes): two blocks in the AVX2 order. */
static inline __m256 fma_pair(__m256 acc, float da, float db, __m512i p)
{
    const __m512 f = _mm512_cvtepi32_ps(p);
    acc = _mm256_fmadd_ps(_mm256_set1_ps(da), _mm512_castps512_ps256(f), acc);
    return _mm256_fmadd_ps(_mm256_set1_ps(db), _mm512_extractf32x8_ps(f, 1), acc);
}

/* The 256-bit vpdpbusd of one block (a row's odd last block), as dot_offset for 32 bytes. */
static inline __m256i dot_offset_256(__m256i u, __m256i y, char off)
{
    const __m256i base = _mm256_dpbusd_epi32(_mm256_setzero_si256(), _mm256_set1_epi8(off), y);
    return _mm256_sub_epi32(_mm256_dpbusd_epi32(_mm256_setzero_si256(), u, y), base);
}

/* The 64 activation quants of blocks i and i + 1 (q8_0 and q8_1 alike). */
#define Y_PAIR(y, i)                                       \
    cat256(_mm256_loadu_si256((const __m256i *)(y)[i].qs), \
           _mm256_loadu_si256((const __m256i *)(y)[(i) + 1].qs))

/* 32 bytes, byte k = 0x10 when bit k of qh is set (the fifth bits of q5_0/q5_1), by a mask
 * register instead of AVX2's shuffle. */
static inline __m256i q5_high_512(const uint8_t qh[4])
{
    uint32_t u;
    memcpy(&u, qh, sizeof(u));
    return _mm256_maskz_mov_epi8((__mmask32)u, _mm256_set1_epi8(0x10));
}

/* sum(u * y) - off * sum(y) in 16 int32 lanes: the dot of signed weights stored as u = q + off
 * (unsigned) with signed activations. */
static inline __m512i dot_offset(__m512i u, __m512i y, char off)
{
    const __m512i base = _mm512_dpbusd_epi32(_mm512_setzero_si512(), _mm512_set1_epi8(off), y);
    return _mm512_sub_epi32(_mm512_dpbusd_epi32(_mm512_setzero_si512(), u, y), base);
}

/* The 16 iq4_nl levels in every 128-bit lane, plus 128 (as unsigned bytes, 1..241). */
static inline __m512i iq4_table_u(void)
{
    const __m128i t = _mm_loadu_si128((const __m128i *)nf_kvalues_iq4nl);
    return _mm512_broadcast_i32x4(_mm_xor_si128(t, _mm_set1_epi8((char)0x80)));
}

/* The kernels of the 32-element types share one loop: INT_PAIR gives the 16 int32 lanes of
 * blocks i and i + 1, INT_ONE the 8 of block i, MIN_TERM the per-block float added apart (for
 * the types with a minimum). */
#define LEGACY_KERNEL(name, xt, yt, INT_PAIR, INT_ONE, MIN_TERM)                              \
    void name(int n, float *s, const void *vx, const void *vy)                                \
    {                                                                                         \
        const xt *x = vx;                                                                     \
        const yt *y = vy;                                                                     \
        const int nb = n / NF_QK8_0;                                                          \
        __m256 acc = _mm256_setzero_ps();                                                     \
        float summs = 0.0f;                                                                   \
        int i = 0;                                                                            \
        for (; i + 2 <= nb; i += 2) {                                                         \
            MIN_TERM(i);                                                                      \
            MIN_TERM(i + 1);                                                                  \
            acc = fma_pair(acc, h2f(x[i].d) * h2f(y[i].d), h2f(x[i + 1].d) * h2f(y[i + 1].d), \
                           INT_PAIR(i));                                                      \
        }                                                                                     \
        if (i < nb) {                                                                         \
            MIN_TERM(i);                                                                      \
            acc = _mm256_fmadd_ps(_mm256_set1_ps(h2f(x[i].d) * h2f(y[i].d)),                  \
                                  _mm256_cvtepi32_ps(INT_ONE(i)), acc);                       \
        }                                                                                     \
        *s = hsum_ps(acc) + summs;                                                            \
    }

#define Y_ONE(i)    _mm256_loadu_si256((const __m256i *)y[i].qs)
#define NO_MIN(i)   (void)0
#define MIN_M_S(i)  summs += h2f(x[i].m) * h2f(y[i].s)
#define Q4_1_U(i)   nibbles_32(x[i].qs)
#define Q5_U(i)     _mm256_or_si256(nibbles_32(x[i].qs), q5_high_512(x[i].qh))
#define IQ4_NL_U(i) _mm256_shuffle_epi8(_mm512_castsi512_si256(iq4_table_u()), nibbles_32(x[i].qs))
#define UNSIGNED_PAIR(U, i) \
    _mm512_dpbusd_epi32(_mm512_setzero_si512(), cat256(U(i), U((i) + 1)), Y_PAIR(y, i))
#define UNSIGNED_ONE(U, i) _mm256_dpbusd_epi32(_mm256_setzero_si256(), U(i), Y_ONE(i))

#define Q4_1_PAIR(i)   UNSIGNED_PAIR(Q4_1_U, i)
#define Q4_1_ONE(i)    UNSIGNED_ONE(Q4_1_U, i)
#define Q5_1_PAIR(i)   UNSIGNED_PAIR(Q5_U, i)
#define Q5_1_ONE(i)    UNSIGNED_ONE(Q5_U, i)
#define Q5_0_PAIR(i)   dot_offset(cat256(Q5_U(i), Q5_U((i) + 1)), Y_PAIR(y, i), 16)
#define Q5_0_ONE(i)    dot_offset_256(Q5_U(i), Y_ONE(i), 16)
#define IQ4_NL_PAIR(i) dot_offset(cat256(IQ4_NL_U(i), IQ4_NL_U((i) + 1)), Y_PAIR(y, i), (char)0x80)
#define IQ4_NL_ONE(i)  dot_offset_256(IQ4_NL_U(i), Y_ONE(i), (char)0x80)

LEGACY_KERNEL(nf__vec_dot_q4_1_q8_1_avx512, nf_block_q4_1, nf_block_q8_1, Q4_1_PAIR, Q4_1_ONE,
              MIN_M_S)
LEGACY_KERNEL(nf__vec_dot_q5_1_q8_1_avx512, nf_block_q5_1, nf_block_q8_1, Q5_1_PAIR, Q5_1_ONE,
              MIN_M_S)
LEGACY_KERNEL(nf__vec_dot_q5_0_q8_0_avx512, nf_block_q5_0, nf_block_q8_0, Q5_0_PAIR, Q5_0_ONE,
              NO_MIN)
LEGACY_KERNEL(nf__vec_dot_iq4_nl_q8_0_avx512, nf_block_iq4_nl, nf_block_q8_0, IQ4_NL_PAIR,
              IQ4_NL_ONE, NO_MIN)

/* ---- 256-element blocks, 64 elements per vector ------------------------------------------ */

void nf__vec_dot_q2_K_q8_K_avx512(int n, float *s, const void *vx, const void *vy)
{
    const nf_block_q2_K *x = vx;
    const nf_block_q8_K *y = vy;
    const __m512i ix[4] = {scale_index(0), scale_index(1), scale_index(2), scale_index(3)};
    __m256 acc = _mm256_setzero_ps();
    for (int i = 0; i < n / NF_QK_K; i++) {
        const __m128i sc = _mm_loadu_si128((const __m128i *)x[i].scales);
        const __m256i mins =
            _mm256_cvtepu8_epi16(_mm_and_si128(_mm_srli_epi16(sc, 4), _mm_set1_epi8(0x0F)));
        const __m256i pm = _mm256_madd_epi16(mins, _mm256_loadu_si256((const void *)y[i].bsums));
        acc =
            _mm256_fmadd_ps(_mm256_set1_ps(-y[i].d * h2f(x[i].dmin)), _mm256_cvtepi32_ps(pm), acc);
        const __m512i sc16 =
            _mm512_castsi256_si512(_mm256_cvtepu8_epi16(_mm_and_si128(sc, _mm_set1_epi8(0x0F))));
        __m512i sumi = _mm512_setzero_si512();
        for (int h = 0; h < 2; h++) {
            const __m256i q2 = _mm256_loadu_si256((const __m256i *)(x[i].qs + 32 * h));
            for (int jj = 0; jj < 2; jj++) {
                const __m512i y8 = _mm512_loadu_si512(y[i].qs + 128 * h + 64 * jj);
                const __m512i p = _mm512_maddubs_epi16(crumbs64(q2, jj), y8);
                const __m512i scv = _mm512_permutexvar_epi16(ix[2 * h + jj], sc16);
                sumi = _mm512_add_epi32(sumi, _mm512_madd_epi16(p, scv));
            }
        }
        acc = _mm256_fmadd_ps(_mm256_set1_ps(y[i].d * h2f(x[i].d)),
                              _mm256_cvtepi32_ps(fold16(sumi)), acc);
    }
    *s = hsum_ps(acc);
}

void nf__vec_dot_q3_K_q8_K_avx512(int n, float *s, const void *vx, const void *vy)
{
    const nf_block_q3_K *x = vx;
    const nf_block_q8_K *y = vy;
    const __m512i ix[4] = {scale_index(0), scale_index(1), scale_index(2), scale_index(3)};
    const __m512i one = _mm512_set1_epi8(1), four = _mm512_set1_epi8(4);
    __m256 acc = _mm256_setzero_ps();
    for (int i = 0; i < n / NF_QK_K; i++) {
        int8_t sc[16];
        nf__q3_K_scales(x[i].scales, sc);
        const __m512i sc16 =
            _mm512_castsi256_si512(_mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i *)sc)));
        const __m256i hm = _mm256_loadu_si256((const __m256i *)x[i].hmask);
        const __m512i hm2 = cat256(hm, hm);
        __m512i sumi = _mm512_setzero_si512();
        for (int h = 0; h < 2; h++) {
            const __m256i q2 = _mm256_loadu_si256((const __m256i *)(x[i].qs + 32 * h));
            for (int jj = 0; jj < 2; jj++) {
                /* Third bits: bit 4h + 2jj of hmask for the low half, the next bit for the
                 * high half. */
                const __m512i sh = cat256(_mm256_set1_epi16((short)(4 * h + 2 * jj)),
                                          _mm256_set1_epi16((short)(4 * h + 2 * jj + 1)));
                const __m512i hb = _mm512_and_si512(_mm512_srlv_epi16(hm2, sh), one);
                const __m512i q =
                    _mm512_or_si512(crumbs64(q2, jj), _mm512_slli_epi16(hb, 2)); /* 0..7 */
                const __m512i y8 = _mm512_loadu_si512(y[i].qs + 128 * h + 64 * jj);
                const __m512i p =
                    _mm512_sub_epi16(_mm512_maddubs_epi16(q, y8), _mm512_maddubs_epi16(four, y8));
                const __m512i scv = _mm512_permutexvar_epi16(ix[2 * h + jj], sc16);
                sumi = _mm512_add_epi32(sumi, _mm512_madd_epi16(p, scv));
            }
        }
        acc = _mm256_fmadd_ps(_mm256_set1_ps(y[i].d * h2f(x[i].d)),
                              _mm256_cvtepi32_ps(fold16(sumi)), acc);
    }
    *s = hsum_ps(acc);
}

void nf__vec_dot_iq4_xs_q8_K_avx512(int n, float *s, const void *vx, const void *vy)
{
    const nf_block_iq4_xs *x = vx;
    const nf_block_q8_K *y = vy;
    const __m512i table = iq4_table_u();
    __m256 acc = _mm256_setzero_ps();
    for (int i = 0; i < n / NF_QK_K; i++) {
        __m512i sumi = _mm512_setzero_si512();
        for (int j = 0; j < NF_QK_K / 32; j += 2) {
            const __m512i u = _mm512_shuffle_epi8(
                table, cat256(nibbles_32(x[i].qs + 16 * j), nibbles_32(x[i].qs + 16 * j + 16)));
            const __m512i p = dot_offset(u, _mm512_loadu_si512(y[i].qs + 32 * j), (char)0x80);
            const int ls[2] = {nf__iq4_xs_scale(&x[i], j) - 32,
                               nf__iq4_xs_scale(&x[i], j + 1) - 32};
            const __m512i scv =
                _mm512_mask_blend_epi32(0xFF00, _mm512_set1_epi32(ls[0]), _mm512_set1_epi32(ls[1]));
            sumi = _mm512_add_epi32(sumi, _mm512_mullo_epi32(p, scv));
        }
        acc = _mm256_fmadd_ps(_mm256_set1_ps(h2f(x[i].d) * y[i].d),
                              _mm256_cvtepi32_ps(fold16(sumi)), acc);
    }
    *s = hsum_ps(acc);
}
