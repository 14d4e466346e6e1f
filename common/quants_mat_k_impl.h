/* quants_mat_k_impl.h - internal: the register-blocked q4_K, q5_K and q6_K multi-token kernels,
 * included by quants_mat_avx2.c and quants_mat_avx512.c, which set the tile and the integer
 * multiply-accumulate before including it:
 *  - KQ_RT x KQ_CT: weight rows x activation rows per tile;
 *  - KQ_VNNI: 1 to add the scaled pair sums with vpdpwssd (AVX512-VNNI on 256-bit vectors).
 *
 * Every output is bit-identical to the type's AVX2 single-row kernel (quants_avx2.c), which
 * sums in ggml's order (docs/exactness.md): per block the same int32 lane sums (integer
 * additions, exact in any order), then the same float multiply-adds per output in the same
 * order. The goldens' first step (the prompt batch) goes through these kernels, and on
 * AVX-512 machines test_golden asks for llama.cpp's logits bit for bit.
 *
 * What the tiling saves: per block, each weight row's quants are unpacked and its scales
 * decoded once for the tile's KQ_CT activation rows, and each activation block is loaded once
 * for its KQ_RT weight rows (q6_K: also its -32 * q8 offsets). The float accumulators live in
 * small arrays: they are touched once per 256-element block. */
#ifndef NF_QUANTS_MAT_K_IMPL_H
#define NF_QUANTS_MAT_K_IMPL_H

#include <math.h>

#include "quants_avx2_impl.h"
#include "quants_mat_impl.h"

/* acc + madd(p, s): eight int32 sums of two int16 products. vpdpwssd does not saturate, so it
 * is the same integer. */
static ALWAYS_INLINE __m256i kq_madd_acc(__m256i acc, __m256i p, __m256i s)
{
#if KQ_VNNI
    return _mm256_dpwssd_epi32(acc, p, s);
#else
    return _mm256_add_epi32(acc, _mm256_madd_epi16(p, s));
#endif
}

/* The 4-lane mins term of q4_K reduced as ggml's: (l0 + l2) + (l1 + l3). */
static ALWAYS_INLINE float kq_hsum4(__m128 v)
{
    v = _mm_add_ps(v, _mm_movehl_ps(v, v));
    return _mm_cvtss_f32(_mm_add_ss(v, _mm_movehdup_ps(v)));
}

/* The pair sums of a q8_K block's 16 bsums (exact in int16), as mins_dot_bsums reads them. */
static ALWAYS_INLINE __m128i kq_bsums8(const nf_block_q8_K *b)
{
    return _mm_hadd_epi16(_mm_loadu_si128((const __m128i *)b->bsums),
                          _mm_loadu_si128((const __m128i *)(b->bsums + 8)));
}

/* ---- q4_K and q5_K ----------------------------------------------------------------------- */

/* One tile of rt weight rows x ct activation rows over nb blocks of q4_K (q5: q5_K). */
static ALWAYS_INLINE void kq_q45_tile(bool q5, int rt, int ct, int nb, float *s, size_t ld,
                                      const char *x, size_t bx, const char *y, size_t by)
{
    const __m256i m4 = _mm256_set1_epi8(0x0F), one = _mm256_set1_epi8(1);
    __m256 acc[KQ_RT][KQ_CT];
    __m128 accm[KQ_RT][KQ_CT]; /* q4_K: ggml's 4-lane mins accumulator */
    float summs[KQ_RT][KQ_CT]; /* q5_K: its scalar one */
    UNROLL
    for (int r = 0; r < rt; r++)
        UNROLL
    for (int c = 0; c < ct; c++) {
        acc[r][c] = _mm256_setzero_ps();
        accm[r][c] = _mm_setzero_ps();
        summs[r][c] = 0.0f;
    }
    const size_t xs = q5 ? sizeof(nf_block_q5_K) : sizeof(nf_block_q4_K);
    for (int i = 0; i < nb; i++) {
        const uint8_t *qs[KQ_RT], *qh[KQ_RT];
        __m256i sc16[KQ_RT][8];
        __m128i m16[KQ_RT];
        float xd[KQ_RT], xdmin[KQ_RT];
        UNROLL
        for (int r = 0; r < rt; r++) {
            const char *b = x + (size_t)r * bx + (size_t)i * xs;
            uint8_t sc[8], m[8];
            if (q5) {
                const nf_block_q5_K *bk = (const nf_block_q5_K *)(const void *)b;
                unpack_k4_scales(bk->scales, sc, m);
                xd[r] = h2f(bk->d);
                xdmin[r] = h2f(bk->dmin);
                qs[r] = bk->qs;
                qh[r] = bk->qh;
            } else {
                const nf_block_q4_K *bk = (const nf_block_q4_K *)(const void *)b;
                unpack_k4_scales(bk->scales, sc, m);
                xd[r] = h2f(bk->d);
                xdmin[r] = h2f(bk->dmin);
                qs[r] = bk->qs;
                qh[r] = NULL;
            }
            for (int k = 0; k < 8; k++)
                sc16[r][k] = _mm256_set1_epi16(sc[k]);
            m16[r] = _mm_cvtepu8_epi16(_mm_loadl_epi64((const __m128i *)m));
        }
        const nf_block_q8_K *yb[KQ_CT];
        UNROLL
        for (int c = 0; c < ct; c++) {
            yb[c] = (const nf_block_q8_K *)(const void *)(y + (size_t)c * by) + i;
            const __m128i q8s = kq_bsums8(yb[c]);
            UNROLL
            for (int r = 0; r < rt; r++) {
                const __m128i pm = _mm_madd_epi16(m16[r], q8s);
                const float dmin = -yb[c]->d * xdmin[r];
                if (q5) {
                    const __m128i p2 = _mm_hadd_epi32(_mm_hadd_epi32(pm, _mm_setzero_si128()),
                                                      _mm_setzero_si128());
                    summs[r][c] = fmaf(dmin, (float)_mm_cvtsi128_si32(p2), summs[r][c]);
                } else {
                    accm[r][c] = _mm_fmadd_ps(_mm_set1_ps(dmin), _mm_cvtepi32_ps(pm), accm[r][c]);
                }
            }
        }
        __m256i sumi[KQ_RT][KQ_CT];
        UNROLL
        for (int r = 0; r < rt; r++)
            UNROLL
        for (int c = 0; c < ct; c++)
            sumi[r][c] = _mm256_setzero_si256();
        for (int j = 0; j < 4; j++) {
            __m256i lo[KQ_RT], hi[KQ_RT];
            UNROLL
            for (int r = 0; r < rt; r++) {
                const __m256i q4 = _mm256_loadu_si256((const __m256i *)(qs[r] + 32 * j));
                lo[r] = _mm256_and_si256(q4, m4);
                hi[r] = _mm256_and_si256(_mm256_srli_epi16(q4, 4), m4);
                if (q5) {
                    /* Bits 2j and 2j+1 of each qh byte: the fifth bits of this chunk. */
                    const __m256i hb = _mm256_srl_epi16(_mm256_loadu_si256((const __m256i *)qh[r]),
                                                        _mm_cvtsi32_si128(2 * j));
                    lo[r] = _mm256_or_si256(lo[r], _mm256_slli_epi16(_mm256_and_si256(hb, one), 4));
                    hi[r] = _mm256_or_si256(
                        hi[r],
                        _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(hb, 1), one), 4));
                }
            }
            UNROLL
            for (int c = 0; c < ct; c++) {
                const __m256i yl = _mm256_loadu_si256((const __m256i *)(yb[c]->qs + 64 * j));
                const __m256i yh = _mm256_loadu_si256((const __m256i *)(yb[c]->qs + 64 * j + 32));
                UNROLL
                for (int r = 0; r < rt; r++) {
                    sumi[r][c] =
                        kq_madd_acc(sumi[r][c], _mm256_maddubs_epi16(lo[r], yl), sc16[r][2 * j]);
                    sumi[r][c] = kq_madd_acc(sumi[r][c], _mm256_maddubs_epi16(hi[r], yh),
                                             sc16[r][2 * j + 1]);
                }
            }
        }
        UNROLL
        for (int r = 0; r < rt; r++)
            UNROLL
        for (int c = 0; c < ct; c++)
            acc[r][c] = _mm256_fmadd_ps(_mm256_set1_ps(yb[c]->d * xd[r]),
                                        _mm256_cvtepi32_ps(sumi[r][c]), acc[r][c]);
    }
    UNROLL
    for (int r = 0; r < rt; r++)
        UNROLL
    for (int c = 0; c < ct; c++)
        s[(size_t)c * ld + r] = hsum_ps(acc[r][c]) + (q5 ? summs[r][c] : kq_hsum4(accm[r][c]));
}

/* ---- q6_K -------------------------------------------------------------------------------- */

/* As nf__vec_dot_q6_K_q8_K_avx2: unsigned quants (0..63), the offset 32 * q8 subtracted per
 * pair of products (formed once per activation chunk for the tile's rows), the sub-block
 * scales per 16 elements. */
static ALWAYS_INLINE void kq_q6_tile(int rt, int ct, int nb, float *s, size_t ld, const char *x,
                                     size_t bx, const char *y, size_t by)
{
    const __m256i m4 = _mm256_set1_epi8(0x0F), m2 = _mm256_set1_epi8(3);
    const __m256i m32 = _mm256_set1_epi8(32);
    __m256 acc[KQ_RT][KQ_CT];
    UNROLL
    for (int r = 0; r < rt; r++)
        UNROLL
    for (int c = 0; c < ct; c++)
        acc[r][c] = _mm256_setzero_ps();
    for (int i = 0; i < nb; i++) {
        const nf_block_q6_K *xb[KQ_RT];
        const nf_block_q8_K *yb[KQ_CT];
        UNROLL
        for (int r = 0; r < rt; r++)
            xb[r] = (const nf_block_q6_K *)(const void *)(x + (size_t)r * bx) + i;
        UNROLL
        for (int c = 0; c < ct; c++)
            yb[c] = (const nf_block_q8_K *)(const void *)(y + (size_t)c * by) + i;
        __m256i sumi[KQ_RT][KQ_CT];
        UNROLL
        for (int r = 0; r < rt; r++)
            UNROLL
        for (int c = 0; c < ct; c++)
            sumi[r][c] = _mm256_setzero_si256();
        for (int h = 0; h < 2; h++) {
            for (int k = 0; k < 4; k++) {
                /* Chunk k of half h: low nibbles of ql (k even) or high (k odd), bits 2k, 2k+1
                 * of qh as bits 4-5. */
                __m256i q[KQ_RT], scv[KQ_RT];
                UNROLL
                for (int r = 0; r < rt; r++) {
                    const uint8_t *ql = xb[r]->ql + 64 * h + 32 * (k & 1);
                    const __m256i l = _mm256_loadu_si256((const __m256i *)ql);
                    const __m256i hb = _mm256_loadu_si256((const __m256i *)(xb[r]->qh + 32 * h));
                    const __m256i lq = k < 2 ? _mm256_and_si256(l, m4)
                                             : _mm256_and_si256(_mm256_srli_epi16(l, 4), m4);
                    const __m256i hq =
                        _mm256_and_si256(_mm256_srl_epi16(hb, _mm_cvtsi32_si128(2 * k)), m2);
                    q[r] = _mm256_or_si256(lq, _mm256_slli_epi16(hq, 4));
                    const int8_t *scp = xb[r]->scales + 8 * h + 2 * k;
                    scv[r] = _mm256_setr_m128i(_mm_set1_epi16(scp[0]), _mm_set1_epi16(scp[1]));
                }
                UNROLL
                for (int c = 0; c < ct; c++) {
                    const __m256i y8 =
                        _mm256_loadu_si256((const __m256i *)(yb[c]->qs + 128 * h + 32 * k));
                    const __m256i off = _mm256_maddubs_epi16(m32, y8);
                    UNROLL
                    for (int r = 0; r < rt; r++)
                        sumi[r][c] = kq_madd_acc(
                            sumi[r][c], _mm256_sub_epi16(_mm256_maddubs_epi16(q[r], y8), off),
                            scv[r]);
                }
            }
        }
        UNROLL
        for (int r = 0; r < rt; r++)
            UNROLL
        for (int c = 0; c < ct; c++)
            acc[r][c] = _mm256_fmadd_ps(_mm256_set1_ps(yb[c]->d * h2f(xb[r]->d)),
                                        _mm256_cvtepi32_ps(sumi[r][c]), acc[r][c]);
    }
    UNROLL
    for (int r = 0; r < rt; r++)
        UNROLL
    for (int c = 0; c < ct; c++)
        s[(size_t)c * ld + r] = hsum_ps(acc[r][c]);
}

static void kq_q4_K_mat(int n, float *s, size_t ld, const void *vx, size_t bx, const void *vy,
                        size_t by, int nrows, int ncols)
{
    const int nb = n / NF_QK_K;
    const char *x = vx, *y = vy;
#define KQ4_TILE(rt, ct, so, xo, yo) kq_q45_tile(false, rt, ct, nb, so, ld, xo, bx, yo, by)
    FOR_TILES(KQ_RT, KQ_CT, KQ4_TILE);
#undef KQ4_TILE
}

static void kq_q5_K_mat(int n, float *s, size_t ld, const void *vx, size_t bx, const void *vy,
                        size_t by, int nrows, int ncols)
{
    const int nb = n / NF_QK_K;
    const char *x = vx, *y = vy;
#define KQ5_TILE(rt, ct, so, xo, yo) kq_q45_tile(true, rt, ct, nb, so, ld, xo, bx, yo, by)
    FOR_TILES(KQ_RT, KQ_CT, KQ5_TILE);
#undef KQ5_TILE
}

static void kq_q6_K_mat(int n, float *s, size_t ld, const void *vx, size_t bx, const void *vy,
                        size_t by, int nrows, int ncols)
{
    const int nb = n / NF_QK_K;
    const char *x = vx, *y = vy;
#define KQ6_TILE(rt, ct, so, xo, yo) kq_q6_tile(rt, ct, nb, so, ld, xo, bx, yo, by)
    FOR_TILES(KQ_RT, KQ_CT, KQ6_TILE);
#undef KQ6_TILE
}

#endif
