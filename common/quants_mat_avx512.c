/* quants_mat_avx512.c - AVX-512 (F/BW/VL/VNNI) multi-token kernels: q8_0, f32, f16, K-quants.
 *
 * Each kernel computes a tile of weight rows x activation rows in registers, so a weight block
 * is loaded and unpacked once for all the tile's activation rows and an activation block once
 * for all its weight rows. */
#include <immintrin.h>

#include "quants_avx512_impl.h"
#include "quants_mat_impl.h"

/* q4_0: quants_mat_q4_0_avx512.c. */

/* ---- q8_0 ---------------------------------------------------------------------------------
 *
 * Bit-identical to nf__vec_dot_q8_0_q8_0_avx2 (one 8-lane accumulator, as ggml's vec_dot and
 * tinyBLAS_Q0 for q8_0): per block, the same int32 lane sums (four products each, exact) come
 * from 256-bit VNNI with the weight made unsigned (+128) and -128 * (sum of each 4 activation
 * quants) as the starting value, then acc = fma(dx * dy, float(sums), acc). Tiles of 4 weight
 * rows x 4 activation rows. */
enum { Q8_RT = 4, Q8_CT = 4 };

static ALWAYS_INLINE void q8_0_tile(int rt, int ct, int nb, float *s, size_t ld, const char *x,
                                    size_t bx, const char *y, size_t by)
{
    const __m256i flip = _mm256_set1_epi8((char)0x80);
    const __m256i off = _mm256_set1_epi8((char)0x80);
    __m256 acc[Q8_RT][Q8_CT];
    UNROLL
    for (int r = 0; r < rt; r++)
        UNROLL
    for (int c = 0; c < ct; c++)
        acc[r][c] = _mm256_setzero_ps();
    for (int i = 0; i < nb; i++) {
        __m256i ux[Q8_RT];
        __m256 dx[Q8_RT];
        UNROLL
        for (int r = 0; r < rt; r++) {
            const nf_block_q8_0 *b = (const nf_block_q8_0 *)(x + (size_t)r * bx) + i;
            ux[r] = _mm256_xor_si256(_mm256_loadu_si256((const __m256i *)b->qs), flip);
            dx[r] = _mm256_set1_ps(_cvtsh_ss(b->d));
        }
        UNROLL
        for (int c = 0; c < ct; c++) {
            const nf_block_q8_0 *b = (const nf_block_q8_0 *)(y + (size_t)c * by) + i;
            const __m256i yq = _mm256_loadu_si256((const __m256i *)b->qs);
            const __m256i base = _mm256_sub_epi32(
                _mm256_setzero_si256(), _mm256_dpbusd_epi32(_mm256_setzero_si256(), off, yq));
            const __m256 dy = _mm256_set1_ps(_cvtsh_ss(b->d));
            UNROLL
            for (int r = 0; r < rt; r++) {
                __m256i p = _mm256_dpbusd_epi32(base, ux[r], yq);
                acc[r][c] =
                    _mm256_fmadd_ps(_mm256_mul_ps(dx[r], dy), _mm256_cvtepi32_ps(p), acc[r][c]);
            }
        }
    }
    UNROLL
    for (int r = 0; r < rt; r++)
        UNROLL
    for (int c = 0; c < ct; c++) {
        __m128 h =
            _mm_add_ps(_mm256_castps256_ps128(acc[r][c]), _mm256_extractf128_ps(acc[r][c], 1));
        h = _mm_add_ps(h, _mm_movehl_ps(h, h));
        h = _mm_add_ss(h, _mm_movehdup_ps(h));
        s[(size_t)c * ld + r] = _mm_cvtss_f32(h);
    }
}

void nf__vec_dot_q8_0_q8_0_mat_avx512(int n, float *s, size_t ld, const void *vx, size_t bx,
                                      const void *vy, size_t by, int nrows, int ncols)
{
    const int nb = n / NF_QK8_0;
    const char *x = vx, *y = vy;
#define Q8_TILE(rt, ct, so, xo, yo) q8_0_tile(rt, ct, nb, so, ld, xo, bx, yo, by)
    FOR_TILES(Q8_RT, Q8_CT, Q8_TILE);
#undef Q8_TILE
}

/* ---- f32 and f16: tinyBLAS order ----------------------------------------------------------
 *
 * One 16-lane accumulator of fused multiply-adds per output and _mm512_reduce_add_ps, as
 * llamafile's tinyBLAS on AVX-512 (and quants_mat.c's references, bit for bit); the last n % 16
 * elements through masked loads (zero lanes add nothing). Tiles of 4 x 4. */
enum { F_RT = 4, F_CT = 4 };

static ALWAYS_INLINE __m512 ld_f(const char *p, bool f16, int i, __mmask16 m)
{
    const nf_fp16_t *h = (const void *)p;
    const float *f = (const void *)p;
    if (f16)
        return _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(m, h + i));
    return _mm512_maskz_loadu_ps(m, f + i);
}

static ALWAYS_INLINE void f_tile(bool f16, int rt, int ct, int n, float *s, size_t ld,
                                 const char *x, size_t bx, const char *y, size_t by)
{
    __m512 acc[F_RT][F_CT];
    UNROLL
    for (int r = 0; r < rt; r++)
        UNROLL
    for (int c = 0; c < ct; c++)
        acc[r][c] = _mm512_setzero_ps();
    for (int i = 0; i < n; i += 16) {
        const __mmask16 m = n - i >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << (n - i)) - 1);
        __m512 xv[F_RT];
        UNROLL
        for (int r = 0; r < rt; r++)
            xv[r] = ld_f(x + (size_t)r * bx, f16, i, m);
        UNROLL
        for (int c = 0; c < ct; c++) {
            const __m512 yv = ld_f(y + (size_t)c * by, f16, i, m);
            UNROLL
            for (int r = 0; r < rt; r++)
                acc[r][c] = _mm512_fmadd_ps(xv[r], yv, acc[r][c]);
        }
    }
    UNROLL
    for (int r = 0; r < rt; r++)
        UNROLL
    for (int c = 0; c < ct; c++)
        s[(size_t)c * ld + r] = _mm512_reduce_add_ps(acc[r][c]);
}

static ALWAYS_INLINE void f_mat(bool f16, int n, float *s, size_t ld, const char *x, size_t bx,
                                const char *y, size_t by, int nrows, int ncols)
{
#define F_TILE(rt, ct, so, xo, yo) f_tile(f16, rt, ct, n, so, ld, xo, bx, yo, by)
    FOR_TILES(F_RT, F_CT, F_TILE);
#undef F_TILE
}

void nf__vec_dot_f32_mat_avx512(int n, float *s, size_t ld, const void *x, size_t bx, const void *y,
                                size_t by, int nrows, int ncols)
{
    f_mat(false, n, s, ld, x, bx, y, by, nrows, ncols);
}

void nf__vec_dot_f16_mat_avx512(int n, float *s, size_t ld, const void *x, size_t bx, const void *y,
                                size_t by, int nrows, int ncols)
{
    f_mat(true, n, s, ld, x, bx, y, by, nrows, ncols);
}

/* ---- q4_K, q5_K, q6_K: quants_mat_k_impl.h, bit-identical to the AVX2 single-row kernels ---- */
#define KQ_RT   4
#define KQ_CT   4
#define KQ_VNNI 1
#include "quants_mat_k_impl.h"

void nf__vec_dot_q4_K_q8_K_mat_avx512(int n, float *s, size_t ld, const void *x, size_t bx,
                                      const void *y, size_t by, int nrows, int ncols)
{
    kq_q4_K_mat(n, s, ld, x, bx, y, by, nrows, ncols);
}

void nf__vec_dot_q5_K_q8_K_mat_avx512(int n, float *s, size_t ld, const void *x, size_t bx,
                                      const void *y, size_t by, int nrows, int ncols)
{
    kq_q5_K_mat(n, s, ld, x, bx, y, by, nrows, ncols);
}

void nf__vec_dot_q6_K_q8_K_mat_avx512(int n, float *s, size_t ld, const void *x, size_t bx,
                                      const void *y, size_t by, int nrows, int ncols)
{
    kq_q6_K_mat(n, s, ld, x, bx, y, by, nrows, ncols);
}

/* ---- q2_K and q3_K: 64 elements per 512-bit vector -------------------------------------------
 *
 * Bit-identical to nf__vec_dot_q2_K_q8_K_avx512 / nf__vec_dot_q3_K_q8_K_avx512
 * (quants_ext_avx512.c, themselves bit-identical to the reference): per block and output the
 * same 16 int32 lanes, folded to 8, and the same float multiply-adds in the same order (q2_K:
 * its mins term first). Per block each weight row's 64-element chunks are unpacked and their
 * scales spread once for the tile's activation rows; tiles of 4 x 4 (16 accumulators). */
enum { K23_RT = 4, K23_CT = 4 };

static ALWAYS_INLINE void k23_tile(bool q3, int rt, int ct, int nb, float *s, size_t ld,
                                   const char *x, size_t bx, const char *y, size_t by)
{
    const __m512i one = _mm512_set1_epi8(1), four = _mm512_set1_epi8(4);
    const size_t xs = q3 ? sizeof(nf_block_q3_K) : sizeof(nf_block_q2_K);
    __m256 acc[K23_RT][K23_CT];
    UNROLL
    for (int r = 0; r < rt; r++)
        UNROLL
    for (int c = 0; c < ct; c++)
        acc[r][c] = _mm256_setzero_ps();
    for (int i = 0; i < nb; i++) {
        const nf_block_q8_K *yb[K23_CT];
        UNROLL
        for (int c = 0; c < ct; c++)
            yb[c] = (const nf_block_q8_K *)(const void *)(y + (size_t)c * by) + i;
        const char *xb[K23_RT];
        __m512i sc16[K23_RT];
        float xd[K23_RT];
        UNROLL
        for (int r = 0; r < rt; r++) {
            xb[r] = x + (size_t)r * bx + (size_t)i * xs;
            if (q3) {
                const nf_block_q3_K *b = (const nf_block_q3_K *)(const void *)xb[r];
                int8_t sc[16];
                nf__q3_K_scales(b->scales, sc);
                sc16[r] = _mm512_castsi256_si512(
                    _mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i *)sc)));
                xd[r] = _cvtsh_ss(b->d);
            } else {
                const nf_block_q2_K *b = (const nf_block_q2_K *)(const void *)xb[r];
                const __m128i sc = _mm_loadu_si128((const __m128i *)b->scales);
                sc16[r] = _mm512_castsi256_si512(
                    _mm256_cvtepu8_epi16(_mm_and_si128(sc, _mm_set1_epi8(0x0F))));
                xd[r] = _cvtsh_ss(b->d);
                /* The mins term goes first, as in the single-row kernel. */
                const __m256i mins =
                    _mm256_cvtepu8_epi16(_mm_and_si128(_mm_srli_epi16(sc, 4), _mm_set1_epi8(0x0F)));
                const float dmin = _cvtsh_ss(b->dmin);
                UNROLL
                for (int c = 0; c < ct; c++) {
                    const __m256i pm =
                        _mm256_madd_epi16(mins, _mm256_loadu_si256((const void *)yb[c]->bsums));
                    acc[r][c] = _mm256_fmadd_ps(_mm256_set1_ps(-yb[c]->d * dmin),
                                                _mm256_cvtepi32_ps(pm), acc[r][c]);
                }
            }
        }
        __m512i sumi[K23_RT][K23_CT];
        UNROLL
        for (int r = 0; r < rt; r++)
            UNROLL
        for (int c = 0; c < ct; c++)
            sumi[r][c] = _mm512_setzero_si512();
        for (int g = 0; g < 4; g++) { /* g = 2h + jj: elements 64g .. 64g + 63 */
            const int h = g >> 1, jj = g & 1;
            const __m512i ix = scale_index(g);
            __m512i q[K23_RT], scv[K23_RT];
            UNROLL
            for (int r = 0; r < rt; r++) {
                const uint8_t *qs = q3 ? ((const nf_block_q3_K *)(const void *)xb[r])->qs
                                       : ((const nf_block_q2_K *)(const void *)xb[r])->qs;
                q[r] = crumbs64(_mm256_loadu_si256((const __m256i *)(qs + 32 * h)), jj);
                if (q3) {
                    const __m256i hm = _mm256_loadu_si256(
                        (const __m256i *)((const nf_block_q3_K *)(const void *)xb[r])->hmask);
                    const __m512i sh = cat256(_mm256_set1_epi16((short)(4 * h + 2 * jj)),
                                              _mm256_set1_epi16((short)(4 * h + 2 * jj + 1)));
                    const __m512i hb = _mm512_and_si512(_mm512_srlv_epi16(cat256(hm, hm), sh), one);
                    q[r] = _mm512_or_si512(q[r], _mm512_slli_epi16(hb, 2));
                }
                scv[r] = _mm512_permutexvar_epi16(ix, sc16[r]);
            }
            UNROLL
            for (int c = 0; c < ct; c++) {
                const __m512i y8 = _mm512_loadu_si512(yb[c]->qs + 64 * g);
                const __m512i off = q3 ? _mm512_maddubs_epi16(four, y8) : _mm512_setzero_si512();
                UNROLL
                for (int r = 0; r < rt; r++) {
                    __m512i p = _mm512_maddubs_epi16(q[r], y8);
                    if (q3)
                        p = _mm512_sub_epi16(p, off);
                    sumi[r][c] = _mm512_add_epi32(sumi[r][c], _mm512_madd_epi16(p, scv[r]));
                }
            }
        }
        UNROLL
        for (int r = 0; r < rt; r++)
            UNROLL
        for (int c = 0; c < ct; c++)
            acc[r][c] = _mm256_fmadd_ps(_mm256_set1_ps(yb[c]->d * xd[r]),
                                        _mm256_cvtepi32_ps(fold16(sumi[r][c])), acc[r][c]);
    }
    UNROLL
    for (int r = 0; r < rt; r++)
        UNROLL
    for (int c = 0; c < ct; c++)
        s[(size_t)c * ld + r] = hsum_ps(acc[r][c]);
}

void nf__vec_dot_q2_K_q8_K_mat_avx512(int n, float *s, size_t ld, const void *vx, size_t bx,
                                      const void *vy, size_t by, int nrows, int ncols)
{
    const int nb = n / NF_QK_K;
    const char *x = vx, *y = vy;
#define K2_TILE(rt, ct, so, xo, yo) k23_tile(false, rt, ct, nb, so, ld, xo, bx, yo, by)
    FOR_TILES(K23_RT, K23_CT, K2_TILE);
#undef K2_TILE
}

void nf__vec_dot_q3_K_q8_K_mat_avx512(int n, float *s, size_t ld, const void *vx, size_t bx,
                                      const void *vy, size_t by, int nrows, int ncols)
{
    const int nb = n / NF_QK_K;
    const char *x = vx, *y = vy;
#define K3_TILE(rt, ct, so, xo, yo) k23_tile(true, rt, ct, nb, so, ld, xo, bx, yo, by)
    FOR_TILES(K23_RT, K23_CT, K3_TILE);
#undef K3_TILE
}
