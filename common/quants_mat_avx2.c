/* quants_mat_avx2.c - AVX2/FMA/F16C multi-token kernels: q8_0, f32, f16, K-quants.
 *
 * Tiles of weight rows x activation rows held in the 16 registers: each weight block is loaded
 * and unpacked once for the tile's activation rows, each activation block once for its weight
 * rows. */
#include <immintrin.h>

#include "quants_avx2_impl.h"
#include "quants_mat_impl.h"

static ALWAYS_INLINE float hsum8(__m256 v)
{
    return hsum_ps(v);
}

/* ---- q8_0 (q4_0: quants_mat_q4_0_avx2.c) ---------------------------------------------------
 *
 * Per block and output: the int32 lane sums of dot_i8 and acc = fma(dx * dy, float(sums), acc)
 * in one 8-lane accumulator: nf__vec_dot_q8_0_q8_0_avx2 bit for bit. The weight's |q| (the
 * maddubs operand) is formed once per block and tile; tiles of 2 weight rows x 4 activation
 * rows (8 accumulators). */
enum { Q_RT = 2, Q_CT = 4 };

static ALWAYS_INLINE void q_tile(int rt, int ct, int nb, float *s, size_t ld, const char *x,
                                 size_t bx, const char *y, size_t by)
{
    const __m256i ones = _mm256_set1_epi16(1);
    __m256 acc[Q_RT][Q_CT];
    UNROLL
    for (int r = 0; r < rt; r++)
        UNROLL
    for (int c = 0; c < ct; c++)
        acc[r][c] = _mm256_setzero_ps();
    for (int i = 0; i < nb; i++) {
        __m256i q[Q_RT], aq[Q_RT];
        float dx[Q_RT];
        UNROLL
        for (int r = 0; r < rt; r++) {
            const nf_block_q8_0 *b = (const nf_block_q8_0 *)(x + (size_t)r * bx) + i;
            q[r] = _mm256_loadu_si256((const __m256i *)b->qs);
            dx[r] = h2f(b->d);
            aq[r] = _mm256_sign_epi8(q[r], q[r]);
        }
        UNROLL
        for (int c = 0; c < ct; c++) {
            const nf_block_q8_0 *b = (const nf_block_q8_0 *)(y + (size_t)c * by) + i;
            const __m256i yq = _mm256_loadu_si256((const __m256i *)b->qs);
            const float dy = h2f(b->d);
            UNROLL
            for (int r = 0; r < rt; r++) {
                __m256i p = _mm256_madd_epi16(
                    _mm256_maddubs_epi16(aq[r], _mm256_sign_epi8(yq, q[r])), ones);
                acc[r][c] =
                    _mm256_fmadd_ps(_mm256_set1_ps(dx[r] * dy), _mm256_cvtepi32_ps(p), acc[r][c]);
            }
        }
    }
    UNROLL
    for (int r = 0; r < rt; r++)
        UNROLL
    for (int c = 0; c < ct; c++)
        s[(size_t)c * ld + r] = hsum8(acc[r][c]);
}

void nf__vec_dot_q8_0_q8_0_mat_avx2(int n, float *s, size_t ld, const void *vx, size_t bx,
                                    const void *vy, size_t by, int nrows, int ncols)
{
    const int nb = n / NF_QK8_0;
    const char *x = vx, *y = vy;
#define Q8_TILE(rt, ct, so, xo, yo) q_tile(rt, ct, nb, so, ld, xo, bx, yo, by)
    FOR_TILES(Q_RT, Q_CT, Q8_TILE);
#undef Q8_TILE
}

/* ---- f32 and f16: tinyBLAS order ----------------------------------------------------------
 *
 * tinyBLAS's AVX-512 order (see quants_mat.c) with two 8-lane halves per accumulator: lanes
 * 0..7 and 8..15 of its 16-lane vector, reduced as _mm512_reduce_add_ps does; the last n % 16
 * elements go to their lanes one by one. Tiles of 2 x 2 (8 accumulators). */
enum { F_RT = 2, F_CT = 2 };

static ALWAYS_INLINE __m256 ld8(const char *p, bool f16, int i)
{
    const nf_fp16_t *h = (const void *)p;
    const float *f = (const void *)p;
    if (f16)
        return _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(h + i)));
    return _mm256_loadu_ps(f + i);
}

static float ld1(const char *p, bool f16, int i)
{
    const nf_fp16_t *h = (const void *)p;
    const float *f = (const void *)p;
    return f16 ? h2f(h[i]) : f[i];
}

/* _mm512_reduce_add_ps of the 16 lanes lo | hi. */
static float reduce16(__m256 lo, __m256 hi)
{
    __m256 t8 = _mm256_add_ps(hi, lo);
    __m128 t4 = _mm_add_ps(_mm256_extractf128_ps(t8, 1), _mm256_castps256_ps128(t8));
    __m128 t2 = _mm_add_ps(t4, _mm_movehl_ps(t4, t4));
    return _mm_cvtss_f32(_mm_add_ss(t2, _mm_movehdup_ps(t2)));
}

static ALWAYS_INLINE void f_tile(bool f16, int rt, int ct, int n, float *s, size_t ld,
                                 const char *x, size_t bx, const char *y, size_t by)
{
    __m256 lo[F_RT][F_CT], hi[F_RT][F_CT];
    UNROLL
    for (int r = 0; r < rt; r++)
        UNROLL
    for (int c = 0; c < ct; c++)
        lo[r][c] = hi[r][c] = _mm256_setzero_ps();
    const int n16 = n & ~15;
    for (int i = 0; i < n16; i += 16) {
        __m256 xl[F_RT], xh[F_RT];
        UNROLL
        for (int r = 0; r < rt; r++) {
            xl[r] = ld8(x + (size_t)r * bx, f16, i);
            xh[r] = ld8(x + (size_t)r * bx, f16, i + 8);
        }
        UNROLL
        for (int c = 0; c < ct; c++) {
            const __m256 yl = ld8(y + (size_t)c * by, f16, i);
            const __m256 yh = ld8(y + (size_t)c * by, f16, i + 8);
            UNROLL
            for (int r = 0; r < rt; r++) {
                lo[r][c] = _mm256_fmadd_ps(xl[r], yl, lo[r][c]);
                hi[r][c] = _mm256_fmadd_ps(xh[r], yh, hi[r][c]);
            }
        }
    }
    UNROLL
    for (int r = 0; r < rt; r++)
        UNROLL
    for (int c = 0; c < ct; c++) {
        if (n16 < n) {
            float a[16];
            _mm256_storeu_ps(a, lo[r][c]);
            _mm256_storeu_ps(a + 8, hi[r][c]);
            for (int i = n16; i < n; i++)
                a[i & 15] = __builtin_fmaf(ld1(x + (size_t)r * bx, f16, i),
                                           ld1(y + (size_t)c * by, f16, i), a[i & 15]);
            lo[r][c] = _mm256_loadu_ps(a);
            hi[r][c] = _mm256_loadu_ps(a + 8);
        }
        s[(size_t)c * ld + r] = reduce16(lo[r][c], hi[r][c]);
    }
}

void nf__vec_dot_f32_mat_avx2(int n, float *s, size_t ld, const void *vx, size_t bx, const void *vy,
                              size_t by, int nrows, int ncols)
{
    const char *x = vx, *y = vy;
#define F32_TILE(rt, ct, so, xo, yo) f_tile(false, rt, ct, n, so, ld, xo, bx, yo, by)
    FOR_TILES(F_RT, F_CT, F32_TILE);
#undef F32_TILE
}

void nf__vec_dot_f16_mat_avx2(int n, float *s, size_t ld, const void *vx, size_t bx, const void *vy,
                              size_t by, int nrows, int ncols)
{
    const char *x = vx, *y = vy;
#define F16_TILE(rt, ct, so, xo, yo) f_tile(true, rt, ct, n, so, ld, xo, bx, yo, by)
    FOR_TILES(F_RT, F_CT, F16_TILE);
#undef F16_TILE
}

/* ---- q4_K, q5_K, q6_K: quants_mat_k_impl.h, bit-identical to the AVX2 single-row kernels ---- */
#define KQ_RT   2
#define KQ_CT   4
#define KQ_VNNI 0
#include "quants_mat_k_impl.h"

void nf__vec_dot_q4_K_q8_K_mat_avx2(int n, float *s, size_t ld, const void *x, size_t bx,
                                    const void *y, size_t by, int nrows, int ncols)
{
    kq_q4_K_mat(n, s, ld, x, bx, y, by, nrows, ncols);
}

void nf__vec_dot_q5_K_q8_K_mat_avx2(int n, float *s, size_t ld, const void *x, size_t bx,
                                    const void *y, size_t by, int nrows, int ncols)
{
    kq_q5_K_mat(n, s, ld, x, bx, y, by, nrows, ncols);
}

void nf__vec_dot_q6_K_q8_K_mat_avx2(int n, float *s, size_t ld, const void *x, size_t bx,
                                    const void *y, size_t by, int nrows, int ncols)
{
    kq_q6_K_mat(n, s, ld, x, bx, y, by, nrows, ncols);
}
