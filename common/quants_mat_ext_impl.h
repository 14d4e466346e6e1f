/* quants_mat_ext_impl.h - internal: the register-blocked multi-token kernels of the types of
 * quants_ext.c (q4_1, q5_0, q5_1, iq4_nl, iq4_xs; q2_K and q3_K for AVX2), included by
 * quants_mat_ext_avx2.c and quants_mat_ext_avx512.c, which set before including it:
 *  - XQ_RT x XQ_CT: weight rows x activation rows per tile;
 *  - XQ_VNNI: 1 to form the int32 lane sums with 256-bit AVX512-VNNI (vpdpbusd, vpdpwssd).
 *
 * Every output is bit-identical to the type's single-row AVX2 kernel (quants_ext_avx2.c, and so
 * to the AVX-512 one, which is bit-identical to it): per block the same int32 lane sums (sums
 * of the same four products, exact in any order), then the same float multiply-adds in one
 * 8-lane accumulator in block order, the q4_1/q5_1 minimum term in the same scalar sum. The
 * forward pass can therefore use them for prompt batches without changing a bit.
 *
 * What the tiling saves: per block, each weight row's quants are unpacked (nibbles, fifth bits,
 * table lookups, scales) once for the tile's XQ_CT activation rows, and each activation block
 * is loaded once for its XQ_RT weight rows. */
#ifndef NF_QUANTS_MAT_EXT_IMPL_H
#define NF_QUANTS_MAT_EXT_IMPL_H

#include <string.h>

#include "quants_avx2_impl.h"
#include "quants_mat_impl.h"

/* ---- 32-element blocks: q4_1, q5_0, q5_1, iq4_nl ----------------------------------------- */

enum xq_kind { XQ_Q4_1, XQ_Q5_0, XQ_Q5_1, XQ_IQ4_NL };

/* 32 bytes, byte k = 0x10 when bit k of a q5 block's qh is set (the fifth bits). */
static ALWAYS_INLINE __m256i xq_q5_high(const uint8_t qh[4])
{
    uint32_t u;
    memcpy(&u, qh, sizeof(u));
#if XQ_VNNI
    return _mm256_maskz_mov_epi8((__mmask32)u, _mm256_set1_epi8(0x10));
#else
    /* Byte k takes byte k / 8 of qh, then tests bit k % 8. */
    const __m256i spread =
        _mm256_setr_epi64x(0, 0x0101010101010101, 0x0202020202020202, 0x0303030303030303);
    const __m256i bit = _mm256_set1_epi64x((long long)0x8040201008040201ull);
    __m256i v = _mm256_shuffle_epi8(_mm256_set1_epi32((int)u), spread);
    v = _mm256_cmpeq_epi8(_mm256_and_si256(v, bit), bit);
    return _mm256_and_si256(v, _mm256_set1_epi8(0x10));
#endif
}

/* The 16 iq4_nl levels in both 128-bit lanes; with VNNI plus 128 (unsigned, for vpdpbusd). */
static ALWAYS_INLINE __m256i xq_iq4_table(void)
{
    const __m128i t = _mm_loadu_si128((const __m128i *)nf_kvalues_iq4nl);
#if XQ_VNNI
    return _mm256_broadcastsi128_si256(_mm_xor_si128(t, _mm_set1_epi8((char)0x80)));
#else
    return _mm256_broadcastsi128_si256(t);
#endif
}

/* Whether kind k has a minimum (q8_1 activations, the m * s term) and signed quants. */
#define XQ_HAS_MIN(k) ((k) == XQ_Q4_1 || (k) == XQ_Q5_1)

/* A weight block unpacked for the tile: u the quants as the lane sums take them (unsigned, or
 * with VNNI signed ones plus their offset), sq the signed quants (AVX2 signed kinds: u = |sq|),
 * d the scale, m the minimum. */
struct xq_w {
    __m256i u, sq;
    float d, m;
};

static ALWAYS_INLINE struct xq_w xq_unpack(enum xq_kind k, const char *p, __m256i table)
{
    struct xq_w w = {.m = 0.0f};
    if (k == XQ_Q4_1) {
        const nf_block_q4_1 *b = (const void *)p;
        w.u = nibbles_32(b->qs);
        w.d = h2f(b->d);
        w.m = h2f(b->m);
    } else if (k == XQ_Q5_1) {
        const nf_block_q5_1 *b = (const void *)p;
        w.u = _mm256_or_si256(nibbles_32(b->qs), xq_q5_high(b->qh));
        w.d = h2f(b->d);
        w.m = h2f(b->m);
    } else if (k == XQ_Q5_0) {
        const nf_block_q5_0 *b = (const void *)p;
        w.u = _mm256_or_si256(nibbles_32(b->qs), xq_q5_high(b->qh)); /* q + 16 */
        w.d = h2f(b->d);
#if !XQ_VNNI
        w.sq = _mm256_sub_epi8(w.u, _mm256_set1_epi8(16));
        w.u = _mm256_sign_epi8(w.sq, w.sq);
#endif
    } else {
        const nf_block_iq4_nl *b = (const void *)p;
        w.u = _mm256_shuffle_epi8(table, nibbles_32(b->qs)); /* VNNI: level + 128 */
        w.d = h2f(b->d);
#if !XQ_VNNI
        w.sq = w.u;
        w.u = _mm256_sign_epi8(w.sq, w.sq);
#endif
    }
    return w;
}

/* The eight int32 lane sums of one weight block and one activation block (yq its quants,
 * base -off * (sums of four activation quants) for VNNI's signed kinds). */
static ALWAYS_INLINE __m256i xq_lanes(enum xq_kind k, const struct xq_w *w, __m256i yq,
                                      __m256i base)
{
#if XQ_VNNI
    return _mm256_dpbusd_epi32(XQ_HAS_MIN(k) ? _mm256_setzero_si256() : base, w->u, yq);
#else
    const __m256i ones = _mm256_set1_epi16(1);
    if (XQ_HAS_MIN(k))
        return _mm256_madd_epi16(_mm256_maddubs_epi16(w->u, yq), ones);
    return _mm256_madd_epi16(_mm256_maddubs_epi16(w->u, _mm256_sign_epi8(yq, w->sq)), ones);
#endif
}

static ALWAYS_INLINE void xq_tile(enum xq_kind k, int rt, int ct, int nb, float *s, size_t ld,
                                  const char *x, size_t bx, const char *y, size_t by)
{
    const size_t xs = k == XQ_Q4_1   ? sizeof(nf_block_q4_1)
                      : k == XQ_Q5_0 ? sizeof(nf_block_q5_0)
                      : k == XQ_Q5_1 ? sizeof(nf_block_q5_1)
                                     : sizeof(nf_block_iq4_nl);
    const size_t ys = XQ_HAS_MIN(k) ? sizeof(nf_block_q8_1) : sizeof(nf_block_q8_0);
    const __m256i table = xq_iq4_table();
    __m256 acc[XQ_RT][XQ_CT];
    float summs[XQ_RT][XQ_CT];
    UNROLL
    for (int r = 0; r < rt; r++)
        UNROLL
    for (int c = 0; c < ct; c++) {
        acc[r][c] = _mm256_setzero_ps();
        summs[r][c] = 0.0f;
    }
    for (int i = 0; i < nb; i++) {
        struct xq_w w[XQ_RT];
        UNROLL
        for (int r = 0; r < rt; r++)
            w[r] = xq_unpack(k, x + (size_t)r * bx + (size_t)i * xs, table);
        UNROLL
        for (int c = 0; c < ct; c++) {
            const char *yb = y + (size_t)c * by + (size_t)i * ys;
            __m256i yq, base = _mm256_setzero_si256();
            float dy, sy = 0.0f;
            if (XQ_HAS_MIN(k)) {
                const nf_block_q8_1 *b = (const void *)yb;
                yq = _mm256_loadu_si256((const __m256i *)b->qs);
                dy = h2f(b->d);
                sy = h2f(b->s);
            } else {
                const nf_block_q8_0 *b = (const void *)yb;
                yq = _mm256_loadu_si256((const __m256i *)b->qs);
                dy = h2f(b->d);
#if XQ_VNNI
                const char off = k == XQ_Q5_0 ? 16 : (char)0x80;
                base = _mm256_sub_epi32(
                    _mm256_setzero_si256(),
                    _mm256_dpbusd_epi32(_mm256_setzero_si256(), _mm256_set1_epi8(off), yq));
#endif
            }
            UNROLL
            for (int r = 0; r < rt; r++) {
                if (XQ_HAS_MIN(k))
                    summs[r][c] += w[r].m * sy;
                const __m256i p = xq_lanes(k, &w[r], yq, base);
                acc[r][c] =
                    _mm256_fmadd_ps(_mm256_set1_ps(w[r].d * dy), _mm256_cvtepi32_ps(p), acc[r][c]);
            }
        }
    }
    UNROLL
    for (int r = 0; r < rt; r++)
        UNROLL
    for (int c = 0; c < ct; c++)
        s[(size_t)c * ld + r] =
            XQ_HAS_MIN(k) ? hsum_ps(acc[r][c]) + summs[r][c] : hsum_ps(acc[r][c]);
}

/* ---- iq4_xs: 256-element blocks of 8 sub-blocks with 6-bit scales ------------------------ */

/* acc + madd(p, s): eight int32 sums of two int16 products (vpdpwssd: the same integer). */
static ALWAYS_INLINE __m256i xq_madd_acc(__m256i acc, __m256i p, __m256i s)
{
#if XQ_VNNI
    return _mm256_dpwssd_epi32(acc, p, s);
#else
    return _mm256_add_epi32(acc, _mm256_madd_epi16(p, s));
#endif
}

/* As nf__vec_dot_iq4_xs_q8_K_avx2: per sub-block the signed levels times the activation in
 * int16 pairs, scaled by ls - 32 into the block's eight int32 lanes. */
static ALWAYS_INLINE void xq_iq4_xs_tile(int rt, int ct, int nb, float *s, size_t ld, const char *x,
                                         size_t bx, const char *y, size_t by)
{
    const __m256i table =
        _mm256_broadcastsi128_si256(_mm_loadu_si128((const __m128i *)nf_kvalues_iq4nl));
    __m256 acc[XQ_RT][XQ_CT];
    UNROLL
    for (int r = 0; r < rt; r++)
        UNROLL
    for (int c = 0; c < ct; c++)
        acc[r][c] = _mm256_setzero_ps();
    for (int i = 0; i < nb; i++) {
        const nf_block_iq4_xs *xb[XQ_RT];
        const nf_block_q8_K *yb[XQ_CT];
        UNROLL
        for (int r = 0; r < rt; r++)
            xb[r] = (const nf_block_iq4_xs *)(const void *)(x + (size_t)r * bx) + i;
        UNROLL
        for (int c = 0; c < ct; c++)
            yb[c] = (const nf_block_q8_K *)(const void *)(y + (size_t)c * by) + i;
        __m256i sumi[XQ_RT][XQ_CT];
        UNROLL
        for (int r = 0; r < rt; r++)
            UNROLL
        for (int c = 0; c < ct; c++)
            sumi[r][c] = _mm256_setzero_si256();
        for (int j = 0; j < NF_QK_K / 32; j++) {
            __m256i q[XQ_RT], aq[XQ_RT], sc[XQ_RT];
            UNROLL
            for (int r = 0; r < rt; r++) {
                q[r] = _mm256_shuffle_epi8(table, nibbles_32(xb[r]->qs + 16 * j));
                aq[r] = _mm256_sign_epi8(q[r], q[r]);
                sc[r] = _mm256_set1_epi16((short)(nf__iq4_xs_scale(xb[r], j) - 32));
            }
            UNROLL
            for (int c = 0; c < ct; c++) {
                const __m256i y8 = _mm256_loadu_si256((const void *)(yb[c]->qs + 32 * j));
                UNROLL
                for (int r = 0; r < rt; r++)
                    sumi[r][c] = xq_madd_acc(
                        sumi[r][c], _mm256_maddubs_epi16(aq[r], _mm256_sign_epi8(y8, q[r])), sc[r]);
            }
        }
        UNROLL
        for (int r = 0; r < rt; r++)
            UNROLL
        for (int c = 0; c < ct; c++)
            acc[r][c] = _mm256_fmadd_ps(_mm256_set1_ps(h2f(xb[r]->d) * yb[c]->d),
                                        _mm256_cvtepi32_ps(sumi[r][c]), acc[r][c]);
    }
    UNROLL
    for (int r = 0; r < rt; r++)
        UNROLL
    for (int c = 0; c < ct; c++)
        s[(size_t)c * ld + r] = hsum_ps(acc[r][c]);
}

/* ---- q2_K and q3_K, 32 elements per 256-bit vector (AVX2) -------------------------------- */

#if !XQ_VNNI
/* As nf__vec_dot_q2_K_q8_K_avx2 / nf__vec_dot_q3_K_q8_K_avx2 (quants_ext_avx2.c): the two-bit
 * fields of each 32-byte half, q3_K's third bit from hmask and 4 * q8 subtracted per pair of
 * products, each pair of sub-blocks weighted by its two scales; q2_K's mins term first. */
static ALWAYS_INLINE void xq_k23_tile(bool q3, int rt, int ct, int nb, float *s, size_t ld,
                                      const char *x, size_t bx, const char *y, size_t by)
{
    const __m256i one = _mm256_set1_epi8(1), four = _mm256_set1_epi8(4);
    const __m256i m3 = _mm256_set1_epi8(3);
    const size_t xs = q3 ? sizeof(nf_block_q3_K) : sizeof(nf_block_q2_K);
    __m256 acc[XQ_RT][XQ_CT];
    UNROLL
    for (int r = 0; r < rt; r++)
        UNROLL
    for (int c = 0; c < ct; c++)
        acc[r][c] = _mm256_setzero_ps();
    for (int i = 0; i < nb; i++) {
        const nf_block_q8_K *yb[XQ_CT];
        UNROLL
        for (int c = 0; c < ct; c++)
            yb[c] = (const nf_block_q8_K *)(const void *)(y + (size_t)c * by) + i;
        const uint8_t *qs[XQ_RT], *hm[XQ_RT];
        int8_t sc[XQ_RT][16];
        float xd[XQ_RT];
        UNROLL
        for (int r = 0; r < rt; r++) {
            const char *b = x + (size_t)r * bx + (size_t)i * xs;
            if (q3) {
                const nf_block_q3_K *bk = (const void *)b;
                nf__q3_K_scales(bk->scales, sc[r]);
                xd[r] = h2f(bk->d);
                qs[r] = bk->qs;
                hm[r] = bk->hmask;
            } else {
                const nf_block_q2_K *bk = (const void *)b;
                const __m128i s8 = _mm_loadu_si128((const __m128i *)bk->scales);
                _mm_storeu_si128((__m128i *)sc[r], _mm_and_si128(s8, _mm_set1_epi8(0x0F)));
                xd[r] = h2f(bk->d);
                qs[r] = bk->qs;
                hm[r] = NULL;
                const __m256i mins =
                    _mm256_cvtepu8_epi16(_mm_and_si128(_mm_srli_epi16(s8, 4), _mm_set1_epi8(0x0F)));
                const float dmin = h2f(bk->dmin);
                UNROLL
                for (int c = 0; c < ct; c++) {
                    const __m256i pm =
                        _mm256_madd_epi16(mins, _mm256_loadu_si256((const void *)yb[c]->bsums));
                    acc[r][c] = _mm256_fmadd_ps(_mm256_set1_ps(-yb[c]->d * dmin),
                                                _mm256_cvtepi32_ps(pm), acc[r][c]);
                }
            }
        }
        __m256i sumi[XQ_RT][XQ_CT];
        UNROLL
        for (int r = 0; r < rt; r++)
            UNROLL
        for (int c = 0; c < ct; c++)
            sumi[r][c] = _mm256_setzero_si256();
        for (int h = 0; h < 2; h++) {
            for (int j = 0; j < 4; j++) {
                const int sb = 8 * h + 2 * j;
                __m256i q[XQ_RT], scv[XQ_RT];
                UNROLL
                for (int r = 0; r < rt; r++) {
                    const __m256i q2 = _mm256_loadu_si256((const __m256i *)(qs[r] + 32 * h));
                    q[r] = _mm256_and_si256(_mm256_srl_epi16(q2, _mm_cvtsi32_si128(2 * j)), m3);
                    if (q3) {
                        const __m256i hb = _mm256_and_si256(
                            _mm256_srl_epi16(_mm256_loadu_si256((const __m256i *)hm[r]),
                                             _mm_cvtsi32_si128(4 * h + j)),
                            one);
                        q[r] = _mm256_or_si256(q[r], _mm256_slli_epi16(hb, 2));
                    }
                    scv[r] =
                        _mm256_setr_m128i(_mm_set1_epi16(sc[r][sb]), _mm_set1_epi16(sc[r][sb + 1]));
                }
                UNROLL
                for (int c = 0; c < ct; c++) {
                    const __m256i y8 =
                        _mm256_loadu_si256((const void *)(yb[c]->qs + 128 * h + 32 * j));
                    const __m256i off =
                        q3 ? _mm256_maddubs_epi16(four, y8) : _mm256_setzero_si256();
                    UNROLL
                    for (int r = 0; r < rt; r++) {
                        __m256i p = _mm256_maddubs_epi16(q[r], y8);
                        if (q3)
                            p = _mm256_sub_epi16(p, off);
                        sumi[r][c] = _mm256_add_epi32(sumi[r][c], _mm256_madd_epi16(p, scv[r]));
                    }
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
        s[(size_t)c * ld + r] = hsum_ps(acc[r][c]);
}
#endif

#endif
