/* quants_mxfp4_avx512.c - the AVX-512 (F/BW/VL/DQ/VNNI) MXFP4 kernels: vec_dot against q8_0 and
 * the register-blocked multi-token vec_dot_mat.
 *
 * Two blocks per 512-bit vector: the low 8 int32 lanes hold block i's, the high 8 block
 * i + 1's, each lane the same four products as the AVX2 kernel's lane (VNNI's unsigned-by-signed
 * vpdpbusd on the codes' values plus 128, the offset taken back through the activation's sums).
 * One 16-lane float accumulator is then exactly the AVX2 kernel's two (even blocks in the low
 * half, odd blocks in the high half), added and reduced the same way, with the same scalar
 * tail: results are bit-identical to quants_mxfp4_avx2.c, which sums as llama.cpp does. */
#include "quants_avx2_impl.h"
#include "quants_mat_impl.h"

/* The 16 values plus 128 (as unsigned bytes 116..140) in every 128-bit lane. */
static ALWAYS_INLINE __m256i mxfp4_table_u(void)
{
    const __m128i t = _mm_loadu_si128((const __m128i *)nf_kvalues_mxfp4);
    return _mm256_broadcastsi128_si256(_mm_xor_si128(t, _mm_set1_epi8((char)0x80)));
}

/* The codes of blocks x[0] and x[1] as unsigned values + 128, in element order. */
static ALWAYS_INLINE __m512i mxfp4_pair_u(const nf_block_mxfp4 *x, __m256i table)
{
    const __m256i a = _mm256_shuffle_epi8(table, nibbles_32(x[0].qs));
    const __m256i b = _mm256_shuffle_epi8(table, nibbles_32(x[1].qs));
    return _mm512_inserti64x4(_mm512_castsi256_si512(a), b, 1);
}

/* The 64 quants of activation blocks y[0] and y[1]. */
static ALWAYS_INLINE __m512i q8_pair(const nf_block_q8_0 *y)
{
    return _mm512_inserti64x4(_mm512_castsi256_si512(_mm256_loadu_si256((const __m256i *)y[0].qs)),
                              _mm256_loadu_si256((const __m256i *)y[1].qs), 1);
}

/* 128 * (the sums of four quants) per lane, what the offset of the weights adds. */
static ALWAYS_INLINE __m512i offset_sums(__m512i yq)
{
    return _mm512_dpbusd_epi32(_mm512_setzero_si512(), _mm512_set1_epi8((char)0x80), yq);
}

/* [a x 8 | b x 8]. */
static ALWAYS_INLINE __m512 halves(float a, float b)
{
    return _mm512_insertf32x8(_mm512_set1_ps(a), _mm256_set1_ps(b), 1);
}

/* The low and high 8 lanes added, then reduced: the AVX2 kernel's hsum_ps(acc1 + acc2). */
static ALWAYS_INLINE float fold_sum(__m512 acc)
{
    return hsum_ps(_mm256_add_ps(_mm512_castps512_ps256(acc), _mm512_extractf32x8_ps(acc, 1)));
}

/* The odd last block, summed like ggml's scalar tail. */
static ALWAYS_INLINE float mxfp4_tail(float sum, const nf_block_mxfp4 *x, const nf_block_q8_0 *y,
                                      __m256i table)
{
    const __m256i u = _mm256_shuffle_epi8(table, nibbles_32(x->qs));
    const __m256i yq = _mm256_loadu_si256((const __m256i *)y->qs);
    const __m256i base =
        _mm256_dpbusd_epi32(_mm256_setzero_si256(), _mm256_set1_epi8((char)0x80), yq);
    const __m256i p = _mm256_sub_epi32(_mm256_dpbusd_epi32(_mm256_setzero_si256(), u, yq), base);
    return __builtin_fmaf(h2f(y->d) * nf_e8m0_to_fp32_half(x->e), (float)hsum_epi32(p), sum);
}

void nf__vec_dot_mxfp4_q8_0_avx512(int n, float *s, const void *vx, const void *vy)
{
    const nf_block_mxfp4 *x = vx;
    const nf_block_q8_0 *y = vy;
    const int nb = n / NF_QK4_0;
    const __m256i table = mxfp4_table_u();
    __m512 acc = _mm512_setzero_ps();
    int i = 0;
    for (; i + 1 < nb; i += 2) {
        const __m512i yq = q8_pair(&y[i]);
        const __m512i p = _mm512_sub_epi32(
            _mm512_dpbusd_epi32(_mm512_setzero_si512(), mxfp4_pair_u(&x[i], table), yq),
            offset_sums(yq));
        const __m512 d = halves(h2f(y[i].d) * nf_e8m0_to_fp32_half(x[i].e),
                                h2f(y[i + 1].d) * nf_e8m0_to_fp32_half(x[i + 1].e));
        acc = _mm512_fmadd_ps(d, _mm512_cvtepi32_ps(p), acc);
    }
    float sum = fold_sum(acc);
    if (i < nb)
        sum = mxfp4_tail(sum, &x[i], &y[i], table);
    *s = sum;
}

/* ---- multi-token --------------------------------------------------------------------------
 *
 * Tiles of 4 weight rows x 4 activation rows (16 accumulators); per pair of blocks each weight
 * row's codes are looked up once for the tile's activation rows, and each activation pair's
 * offset sums once for its weight rows. */
enum { MX_RT = 4, MX_CT = 4 };

static ALWAYS_INLINE void mxfp4_tile(int rt, int ct, int nb, float *s, size_t ld, const char *x,
                                     size_t bx, const char *y, size_t by)
{
    const __m256i table = mxfp4_table_u();
    __m512 acc[MX_RT][MX_CT];
    UNROLL
    for (int r = 0; r < rt; r++)
        UNROLL
    for (int c = 0; c < ct; c++)
        acc[r][c] = _mm512_setzero_ps();
    int i = 0;
    for (; i + 1 < nb; i += 2) {
        __m512i u[MX_RT];
        __m512 dx[MX_RT];
        UNROLL
        for (int r = 0; r < rt; r++) {
            const nf_block_mxfp4 *b = (const nf_block_mxfp4 *)(x + (size_t)r * bx) + i;
            u[r] = mxfp4_pair_u(b, table);
            dx[r] = halves(nf_e8m0_to_fp32_half(b[0].e), nf_e8m0_to_fp32_half(b[1].e));
        }
        UNROLL
        for (int c = 0; c < ct; c++) {
            const nf_block_q8_0 *b = (const nf_block_q8_0 *)(y + (size_t)c * by) + i;
            const __m512i yq = q8_pair(b);
            const __m512i base = offset_sums(yq);
            const __m512 dy = halves(h2f(b[0].d), h2f(b[1].d));
            UNROLL
            for (int r = 0; r < rt; r++) {
                const __m512i p =
                    _mm512_sub_epi32(_mm512_dpbusd_epi32(_mm512_setzero_si512(), u[r], yq), base);
                acc[r][c] =
                    _mm512_fmadd_ps(_mm512_mul_ps(dy, dx[r]), _mm512_cvtepi32_ps(p), acc[r][c]);
            }
        }
    }
    UNROLL
    for (int r = 0; r < rt; r++)
        UNROLL
    for (int c = 0; c < ct; c++) {
        float sum = fold_sum(acc[r][c]);
        if (i < nb)
            sum = mxfp4_tail(sum, (const nf_block_mxfp4 *)(x + (size_t)r * bx) + i,
                             (const nf_block_q8_0 *)(y + (size_t)c * by) + i, table);
        s[(size_t)c * ld + r] = sum;
    }
}

void nf__vec_dot_mxfp4_q8_0_avx512_mat(int n, float *s, size_t ld, const void *vx, size_t bx,
                                       const void *vy, size_t by, int nrows, int ncols)
{
    const int nb = n / NF_QK4_0;
    const char *x = vx, *y = vy;
#define MX_TILE(rt, ct, so, xo, yo) mxfp4_tile(rt, ct, nb, so, ld, xo, bx, yo, by)
    FOR_TILES(MX_RT, MX_CT, MX_TILE);
#undef MX_TILE
}
