/* quants_mat_ext_avx2.c - AVX2 register-blocked multi-token kernels of q4_1, q5_0, q5_1,
 * iq4_nl, iq4_xs, q2_K, q3_K (quants_mat_ext_impl.h) and bf16 in AVX512-BF16's order. */
#include <immintrin.h>

#define XQ_RT   2
#define XQ_CT   4
#define XQ_VNNI 0
#include "quants_mat_ext_impl.h"

/* One function per type over the tiles of quants_mat_ext_impl.h. */
#define XQ_LEGACY_MAT(name, kind)                                                               \
    void name(int n, float *s, size_t ld, const void *vx, size_t bx, const void *vy, size_t by, \
              int nrows, int ncols)                                                             \
    {                                                                                           \
        const int nb = n / NF_QK8_0;                                                            \
        const char *x = vx, *y = vy;                                                            \
        FOR_TILES(XQ_RT, XQ_CT, XQ_LEGACY_TILE_##kind);                                         \
    }
#define XQ_LEGACY_TILE_XQ_Q4_1(rt, ct, so, xo, yo) \
    xq_tile(XQ_Q4_1, rt, ct, nb, so, ld, xo, bx, yo, by)
#define XQ_LEGACY_TILE_XQ_Q5_0(rt, ct, so, xo, yo) \
    xq_tile(XQ_Q5_0, rt, ct, nb, so, ld, xo, bx, yo, by)
#define XQ_LEGACY_TILE_XQ_Q5_1(rt, ct, so, xo, yo) \
    xq_tile(XQ_Q5_1, rt, ct, nb, so, ld, xo, bx, yo, by)
#define XQ_LEGACY_TILE_XQ_IQ4_NL(rt, ct, so, xo, yo) \
    xq_tile(XQ_IQ4_NL, rt, ct, nb, so, ld, xo, bx, yo, by)

XQ_LEGACY_MAT(nf__vec_dot_q4_1_q8_1_mat_avx2, XQ_Q4_1)
XQ_LEGACY_MAT(nf__vec_dot_q5_0_q8_0_mat_avx2, XQ_Q5_0)
XQ_LEGACY_MAT(nf__vec_dot_q5_1_q8_1_mat_avx2, XQ_Q5_1)
XQ_LEGACY_MAT(nf__vec_dot_iq4_nl_q8_0_mat_avx2, XQ_IQ4_NL)

void nf__vec_dot_iq4_xs_q8_K_mat_avx2(int n, float *s, size_t ld, const void *vx, size_t bx,
                                      const void *vy, size_t by, int nrows, int ncols)
{
    const int nb = n / NF_QK_K;
    const char *x = vx, *y = vy;
#define IQ4XS_TILE(rt, ct, so, xo, yo) xq_iq4_xs_tile(rt, ct, nb, so, ld, xo, bx, yo, by)
    FOR_TILES(XQ_RT, XQ_CT, IQ4XS_TILE);
#undef IQ4XS_TILE
}

void nf__vec_dot_q2_K_q8_K_mat_avx2(int n, float *s, size_t ld, const void *vx, size_t bx,
                                    const void *vy, size_t by, int nrows, int ncols)
{
    const int nb = n / NF_QK_K;
    const char *x = vx, *y = vy;
#define K2_TILE(rt, ct, so, xo, yo) xq_k23_tile(false, rt, ct, nb, so, ld, xo, bx, yo, by)
    FOR_TILES(XQ_RT, XQ_CT, K2_TILE);
#undef K2_TILE
}

void nf__vec_dot_q3_K_q8_K_mat_avx2(int n, float *s, size_t ld, const void *vx, size_t bx,
                                    const void *vy, size_t by, int nrows, int ncols)
{
    const int nb = n / NF_QK_K;
    const char *x = vx, *y = vy;
#define K3_TILE(rt, ct, so, xo, yo) xq_k23_tile(true, rt, ct, nb, so, ld, xo, bx, yo, by)
    FOR_TILES(XQ_RT, XQ_CT, K3_TILE);
#undef K3_TILE
}

/* ---- bf16: AVX512-BF16's order without it ----------------------------------------------------
 *
 * The order of nf__vec_dot_bf16_mat_ref (quants_mat.c): 16 lanes, lane l taking elements
 * 32k + 2l + 1 then 32k + 2l, as vdpbf16ps does; lanes 0..7 and 8..15 are two 8-lane halves.
 * A 32-bit word of bfloat16 pairs is the even element's float when shifted left by 16 and the
 * odd one's when its low half is cleared; products of bfloat16 values are exact in float, so
 * a fused multiply-add rounds as vdpbf16ps's addition. A row's last n % 32 elements are padded
 * with zeros. Tiles of 2 x 2, one half at a time (8 accumulators). */
enum { BF_RT = 2, BF_CT = 2 };

static ALWAYS_INLINE void bf_halves(__m256i w, __m256 *odd, __m256 *even)
{
    *odd = _mm256_castsi256_ps(_mm256_and_si256(w, _mm256_set1_epi32((int)0xFFFF0000u)));
    *even = _mm256_castsi256_ps(_mm256_slli_epi32(w, 16));
}

/* Words h (0, 1) of the 32 elements at element i of row p (zeros past n). */
static ALWAYS_INLINE __m256i bf_ld(const char *p, int i, int n, int h, nf_bf16_t *pad)
{
    const nf_bf16_t *b = (const void *)p;
    if (i + 32 <= n)
        return _mm256_loadu_si256((const __m256i *)(b + i + 16 * h));
    memset(pad, 0, 32 * sizeof(nf_bf16_t));
    memcpy(pad, b + i, (size_t)(n - i) * sizeof(nf_bf16_t));
    return _mm256_loadu_si256((const __m256i *)(pad + 16 * h));
}

/* _mm512_reduce_add_ps of the 16 lanes lo | hi. */
static float bf_reduce16(__m256 lo, __m256 hi)
{
    __m256 t8 = _mm256_add_ps(hi, lo);
    __m128 t4 = _mm_add_ps(_mm256_extractf128_ps(t8, 1), _mm256_castps256_ps128(t8));
    __m128 t2 = _mm_add_ps(t4, _mm_movehl_ps(t4, t4));
    return _mm_cvtss_f32(_mm_add_ss(t2, _mm_movehdup_ps(t2)));
}

static ALWAYS_INLINE void bf_tile(int rt, int ct, int n, float *s, size_t ld, const char *x,
                                  size_t bx, const char *y, size_t by)
{
    __m256 acc[2][BF_RT][BF_CT];
    nf_bf16_t pad[32];
    UNROLL
    for (int h = 0; h < 2; h++)
        UNROLL
    for (int r = 0; r < rt; r++)
        UNROLL
    for (int c = 0; c < ct; c++)
        acc[h][r][c] = _mm256_setzero_ps();
    for (int i = 0; i < n; i += 32) {
        UNROLL
        for (int h = 0; h < 2; h++) {
            __m256 xo[BF_RT], xe[BF_RT];
            UNROLL
            for (int r = 0; r < rt; r++)
                bf_halves(bf_ld(x + (size_t)r * bx, i, n, h, pad), &xo[r], &xe[r]);
            UNROLL
            for (int c = 0; c < ct; c++) {
                __m256 yo, ye;
                bf_halves(bf_ld(y + (size_t)c * by, i, n, h, pad), &yo, &ye);
                UNROLL
                for (int r = 0; r < rt; r++) {
                    acc[h][r][c] = _mm256_fmadd_ps(xo[r], yo, acc[h][r][c]);
                    acc[h][r][c] = _mm256_fmadd_ps(xe[r], ye, acc[h][r][c]);
                }
            }
        }
    }
    UNROLL
    for (int r = 0; r < rt; r++)
        UNROLL
    for (int c = 0; c < ct; c++)
        s[(size_t)c * ld + r] = bf_reduce16(acc[0][r][c], acc[1][r][c]);
}

void nf__vec_dot_bf16_mat_avx2(int n, float *s, size_t ld, const void *vx, size_t bx,
                               const void *vy, size_t by, int nrows, int ncols)
{
    const char *x = vx, *y = vy;
#define BF_TILE(rt, ct, so, xo, yo) bf_tile(rt, ct, n, so, ld, xo, bx, yo, by)
    FOR_TILES(BF_RT, BF_CT, BF_TILE);
#undef BF_TILE
}

/* ---- prompt attention's KQV: V's columns against the softmax row ----------------------------
 *
 * nf__vec_dot_f16_cols_ref's order with 8 columns per vector, in two passes over the rows so
 * that 8 accumulators fit the registers: the first takes the rows i % 16 < 8 (accumulator
 * i % 16), the second the rest; then the 16 are reduced in _mm512_reduce_add_ps's order. The
 * last nd % 8 columns through the reference. */
void nf__vec_dot_f16_cols_avx2(int n, float *out, int nd, const nf_fp16_t *v, size_t vs,
                               const float *p)
{
    int d0 = 0;
    for (; d0 + 8 <= nd; d0 += 8) {
        __m256 a[16];
        const nf_fp16_t *vr = v + d0;
        for (int h = 0; h < 2; h++) {
            __m256 b[8];
            UNROLL
            for (int l = 0; l < 8; l++)
                b[l] = _mm256_setzero_ps();
            int i = 8 * h;
            for (; i + 8 <= n; i += 16)
                UNROLL
            for (int l = 0; l < 8; l++)
                b[l] = _mm256_fmadd_ps(
                    _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(vr + (size_t)(i + l) * vs))),
                    _mm256_set1_ps(p[i + l]), b[l]);
            for (int l = 0; i + l < n && l < 8; l++) /* the rows' last partial group */
                b[l] = _mm256_fmadd_ps(
                    _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(vr + (size_t)(i + l) * vs))),
                    _mm256_set1_ps(p[i + l]), b[l]);
            UNROLL
            for (int l = 0; l < 8; l++)
                a[8 * h + l] = b[l];
        }
        UNROLL
        for (int l = 0; l < 8; l++)
            a[l] = _mm256_add_ps(a[l + 8], a[l]);
        UNROLL
        for (int l = 0; l < 4; l++)
            a[l] = _mm256_add_ps(a[l + 4], a[l]);
        _mm256_storeu_ps(out + d0,
                         _mm256_add_ps(_mm256_add_ps(a[0], a[2]), _mm256_add_ps(a[1], a[3])));
    }
    if (d0 < nd)
        nf__vec_dot_f16_cols_ref(n, out + d0, nd - d0, v + d0, vs, p);
}
