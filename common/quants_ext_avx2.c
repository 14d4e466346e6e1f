/* quants_ext_avx2.c - AVX2 vec_dot kernels of the types of quants_ext.c (q4_1, q5_0, q5_1,
 * iq4_nl, q2_K, q3_K, iq4_xs). Each keeps one 8-lane float accumulator fed with exact int32
 * block sums, as ggml's AVX2 kernels do; the reference is quants_ext.c. */
#include <string.h>

#include "quants_avx2_impl.h"

/* 32 bytes, byte k = 0x10 when bit k of a q5 block's qh is set, else 0 (the fifth bits). */
static inline __m256i q5_high(const uint8_t qh[4])
{
    uint32_t u;
    memcpy(&u, qh, sizeof(u));
    /* Byte k takes byte k / 8 of qh (shuffles stay within 128-bit lanes: lane 1 reads bytes
     * 2 and 3 of its copy), then tests bit k % 8. */
    const __m256i spread =
        _mm256_setr_epi64x(0, 0x0101010101010101, 0x0202020202020202, 0x0303030303030303);
    const __m256i bit = _mm256_set1_epi64x((long long)0x8040201008040201ull);
    __m256i v = _mm256_shuffle_epi8(_mm256_set1_epi32((int)u), spread);
    v = _mm256_cmpeq_epi8(_mm256_and_si256(v, bit), bit);
    return _mm256_and_si256(v, _mm256_set1_epi8(0x10));
}

/* The 16 iq4_nl levels in both 128-bit lanes, for _mm256_shuffle_epi8 lookups. */
static inline __m256i iq4_table(void)
{
    return _mm256_broadcastsi128_si256(_mm_loadu_si128((const __m128i *)nf_kvalues_iq4nl));
}

/* ---- 32-element blocks ------------------------------------------------------------------- */

void nf__vec_dot_q4_1_q8_1_avx2(int n, float *s, const void *vx, const void *vy)
{
    const nf_block_q4_1 *x = vx;
    const nf_block_q8_1 *y = vy;
    __m256 acc = _mm256_setzero_ps();
    float summs = 0.0f;
    for (int i = 0; i < n / NF_QK8_0; i++) {
        summs += h2f(x[i].m) * h2f(y[i].s);
        const __m256i p =
            dot_u8i8(nibbles_32(x[i].qs), _mm256_loadu_si256((const __m256i *)y[i].qs));
        acc =
            _mm256_fmadd_ps(_mm256_set1_ps(h2f(x[i].d) * h2f(y[i].d)), _mm256_cvtepi32_ps(p), acc);
    }
    *s = hsum_ps(acc) + summs;
}

void nf__vec_dot_q5_0_q8_0_avx2(int n, float *s, const void *vx, const void *vy)
{
    const nf_block_q5_0 *x = vx;
    const nf_block_q8_0 *y = vy;
    const __m256i off = _mm256_set1_epi8(16);
    __m256 acc = _mm256_setzero_ps();
    for (int i = 0; i < n / NF_QK8_0; i++) {
        const __m256i q =
            _mm256_sub_epi8(_mm256_or_si256(nibbles_32(x[i].qs), q5_high(x[i].qh)), off);
        const __m256i p = dot_i8(q, _mm256_loadu_si256((const __m256i *)y[i].qs));
        acc =
            _mm256_fmadd_ps(_mm256_set1_ps(h2f(x[i].d) * h2f(y[i].d)), _mm256_cvtepi32_ps(p), acc);
    }
    *s = hsum_ps(acc);
}

void nf__vec_dot_q5_1_q8_1_avx2(int n, float *s, const void *vx, const void *vy)
{
    const nf_block_q5_1 *x = vx;
    const nf_block_q8_1 *y = vy;
    __m256 acc = _mm256_setzero_ps();
    float summs = 0.0f;
    for (int i = 0; i < n / NF_QK8_0; i++) {
        summs += h2f(x[i].m) * h2f(y[i].s);
        const __m256i q = _mm256_or_si256(nibbles_32(x[i].qs), q5_high(x[i].qh));
        const __m256i p = dot_u8i8(q, _mm256_loadu_si256((const __m256i *)y[i].qs));
        acc =
            _mm256_fmadd_ps(_mm256_set1_ps(h2f(x[i].d) * h2f(y[i].d)), _mm256_cvtepi32_ps(p), acc);
    }
    *s = hsum_ps(acc) + summs;
}

void nf__vec_dot_iq4_nl_q8_0_avx2(int n, float *s, const void *vx, const void *vy)
{
    const nf_block_iq4_nl *x = vx;
    const nf_block_q8_0 *y = vy;
    const __m256i table = iq4_table();
    __m256 acc = _mm256_setzero_ps();
    for (int i = 0; i < n / NF_QK8_0; i++) {
        const __m256i q = _mm256_shuffle_epi8(table, nibbles_32(x[i].qs));
        const __m256i p = dot_i8(q, _mm256_loadu_si256((const __m256i *)y[i].qs));
        acc =
            _mm256_fmadd_ps(_mm256_set1_ps(h2f(x[i].d) * h2f(y[i].d)), _mm256_cvtepi32_ps(p), acc);
    }
    *s = hsum_ps(acc);
}

/* ---- 256-element blocks ------------------------------------------------------------------ */

/* maddubs pairs of 32 elements (two sub-blocks of 16) weighted by their scales lo, hi. */
static inline __m256i scale_pairs(__m256i p16, int lo, int hi)
{
    return _mm256_madd_epi16(
        p16, _mm256_setr_m128i(_mm_set1_epi16((short)lo), _mm_set1_epi16((short)hi)));
}

/* The two-bit fields 2j..2j+1 of 32 bytes (q2_K/q3_K element 128h + 32j + l from qs[32h + l]). */
static inline __m256i crumbs(__m256i q, int j)
{
    return _mm256_and_si256(_mm256_srl_epi16(q, _mm_cvtsi32_si128(2 * j)), _mm256_set1_epi8(3));
}

void nf__vec_dot_q2_K_q8_K_avx2(int n, float *s, const void *vx, const void *vy)
{
    const nf_block_q2_K *x = vx;
    const nf_block_q8_K *y = vy;
    __m256 acc = _mm256_setzero_ps();
    for (int i = 0; i < n / NF_QK_K; i++) {
        const float dall = y[i].d * h2f(x[i].d), dmin = -y[i].d * h2f(x[i].dmin);
        /* The mins term: 16 mins (high nibbles) times the 16 bsums, in 8 int32 lanes. */
        const __m128i sc = _mm_loadu_si128((const __m128i *)x[i].scales);
        const __m256i mins =
            _mm256_cvtepu8_epi16(_mm_and_si128(_mm_srli_epi16(sc, 4), _mm_set1_epi8(0x0F)));
        const __m256i pm = _mm256_madd_epi16(mins, _mm256_loadu_si256((const void *)y[i].bsums));
        acc = _mm256_fmadd_ps(_mm256_set1_ps(dmin), _mm256_cvtepi32_ps(pm), acc);
        __m256i sumi = _mm256_setzero_si256();
        for (int h = 0; h < 2; h++) {
            const __m256i q2 = _mm256_loadu_si256((const __m256i *)(x[i].qs + 32 * h));
            for (int j = 0; j < 4; j++) {
                const int sb = 8 * h + 2 * j;
                const __m256i y8 = _mm256_loadu_si256((const void *)(y[i].qs + 128 * h + 32 * j));
                const __m256i p = _mm256_maddubs_epi16(crumbs(q2, j), y8);
                sumi = _mm256_add_epi32(
                    sumi, scale_pairs(p, x[i].scales[sb] & 0xF, x[i].scales[sb + 1] & 0xF));
            }
        }
        acc = _mm256_fmadd_ps(_mm256_set1_ps(dall), _mm256_cvtepi32_ps(sumi), acc);
    }
    *s = hsum_ps(acc);
}

/* q3_K: the quants are taken unsigned (low bits | third bit << 2, 0..7) and 4 * q8 is
 * subtracted per pair of products, as for q6_K. */
void nf__vec_dot_q3_K_q8_K_avx2(int n, float *s, const void *vx, const void *vy)
{
    const nf_block_q3_K *x = vx;
    const nf_block_q8_K *y = vy;
    const __m256i one = _mm256_set1_epi8(1), four = _mm256_set1_epi8(4);
    __m256 acc = _mm256_setzero_ps();
    for (int i = 0; i < n / NF_QK_K; i++) {
        int8_t sc[16];
        nf__q3_K_scales(x[i].scales, sc);
        const __m256i hm = _mm256_loadu_si256((const __m256i *)x[i].hmask);
        __m256i sumi = _mm256_setzero_si256();
        for (int h = 0; h < 2; h++) {
            const __m256i q2 = _mm256_loadu_si256((const __m256i *)(x[i].qs + 32 * h));
            for (int j = 0; j < 4; j++) {
                const __m256i hb =
                    _mm256_and_si256(_mm256_srl_epi16(hm, _mm_cvtsi32_si128(4 * h + j)), one);
                const __m256i u = _mm256_or_si256(crumbs(q2, j), _mm256_slli_epi16(hb, 2));
                const __m256i y8 = _mm256_loadu_si256((const void *)(y[i].qs + 128 * h + 32 * j));
                const __m256i p =
                    _mm256_sub_epi16(_mm256_maddubs_epi16(u, y8), _mm256_maddubs_epi16(four, y8));
                const int sb = 8 * h + 2 * j;
                sumi = _mm256_add_epi32(sumi, scale_pairs(p, sc[sb], sc[sb + 1]));
            }
        }
        acc = _mm256_fmadd_ps(_mm256_set1_ps(y[i].d * h2f(x[i].d)), _mm256_cvtepi32_ps(sumi), acc);
    }
    *s = hsum_ps(acc);
}

void nf__vec_dot_iq4_xs_q8_K_avx2(int n, float *s, const void *vx, const void *vy)
{
    const nf_block_iq4_xs *x = vx;
    const nf_block_q8_K *y = vy;
    const __m256i table = iq4_table();
    __m256 acc = _mm256_setzero_ps();
    for (int i = 0; i < n / NF_QK_K; i++) {
        __m256i sumi = _mm256_setzero_si256();
        for (int j = 0; j < NF_QK_K / 32; j++) {
            const int ls = nf__iq4_xs_scale(&x[i], j);
            const __m256i q = _mm256_shuffle_epi8(table, nibbles_32(x[i].qs + 16 * j));
            const __m256i y8 = _mm256_loadu_si256((const void *)(y[i].qs + 32 * j));
            const __m256i p = _mm256_maddubs_epi16(_mm256_sign_epi8(q, q), _mm256_sign_epi8(y8, q));
            sumi =
                _mm256_add_epi32(sumi, _mm256_madd_epi16(p, _mm256_set1_epi16((short)(ls - 32))));
        }
        acc = _mm256_fmadd_ps(_mm256_set1_ps(h2f(x[i].d) * y[i].d), _mm256_cvtepi32_ps(sumi), acc);
    }
    *s = hsum_ps(acc);
}
