/* quants_mat_q4_0_avx512.c - the AVX-512 VNNI q4_0 x q8_0 multi-token kernel (prompt GEMM):
 * panels of 16 rows (quants_mat_q4_0_impl.h), vpdpbusd against four activation quants
 * broadcast to every lane, register tiles of 16 rows x 16 tokens (16 float accumulators and a
 * block's 8 unpacked weight vectors fit the 32 registers). */
#define PR 16
#define CT 16
#include "quants_mat_q4_0_impl.h"

static ALWAYS_INLINE __m512i bcast4(const int8_t *p)
{
    int32_t v;
    memcpy(&v, p, 4);
    return _mm512_set1_epi32(v);
}

/* Per (16 rows, token, block): 8 vpdpbusd, a conversion and an fma. */
static inline __attribute__((always_inline)) void tile(int ct, int kc, const struct y_blk *y,
                                                       float *s, size_t ld, int rn, bool first)
{
    const __mmask16 m = (__mmask16)((1u << rn) - 1);
    const __m512i m4 = _mm512_set1_epi8(0x0F);
    __m512 acc[CT];
    UNROLL
    for (int c = 0; c < ct; c++)
        acc[c] = _mm512_setzero_ps();
    for (int k = 0; k < kc; k++) {
        const struct w_panel_blk *w = &w_buf[k];
        const __m512 dw = _mm512_load_ps(w->d);
        __m512i lo[4], hi[4];
        UNROLL
        for (int q = 0; q < 4; q++) {
            const __m512i p = _mm512_load_si512(w->qs[q]);
            lo[q] = _mm512_and_si512(p, m4);
            hi[q] = _mm512_and_si512(_mm512_srli_epi16(p, 4), m4);
        }
        UNROLL
        for (int c = 0; c < ct; c++) {
            const struct y_blk *yb = &y[(size_t)c * kc + k];
            __m512i isum = _mm512_set1_epi32(yb->corr);
            UNROLL
            for (int q = 0; q < 4; q++)
                isum = _mm512_dpbusd_epi32(isum, lo[q], bcast4(yb->qs + 4 * q));
            UNROLL
            for (int q = 0; q < 4; q++)
                isum = _mm512_dpbusd_epi32(isum, hi[q], bcast4(yb->qs + 16 + 4 * q));
            acc[c] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(isum),
                                     _mm512_mul_ps(dw, _mm512_set1_ps(yb->d)), acc[c]);
        }
    }
    UNROLL
    for (int c = 0; c < ct; c++) {
        float *o = s + (size_t)c * ld;
        __m512 v = acc[c];
        if (!first)
            v = _mm512_add_ps(v, _mm512_maskz_loadu_ps(m, o));
        _mm512_mask_storeu_ps(o, m, v);
    }
}

void nf__vec_dot_q4_0_q8_0_mat_avx512(int n, float *s, size_t ld, const void *vx, size_t bx,
                                      const void *vy, size_t by, int nrows, int ncols)
{
    q4_0_gemm(n, s, ld, vx, bx, vy, by, nrows, ncols, false);
}

void nf__vec_dot_q4_0_packed_mat_avx512(int n, float *s, size_t ld, const void *vx, size_t bx,
                                        const void *vy, size_t by, int nrows, int ncols)
{
    q4_0_gemm(n, s, ld, vx, bx, vy, by, nrows, ncols, true);
}
