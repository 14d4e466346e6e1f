/* quants_mat_q4_0_avx2.c - the AVX2 q4_0 x q8_0 multi-token kernel (prompt GEMM): panels of 8
 * rows (quants_mat_q4_0_impl.h), vpmaddubsw against four activation quants broadcast to every
 * lane, register tiles of 8 rows x 4 tokens (4 float accumulators and a block's 8 unpacked
 * weight vectors in the 16 registers). */
#define PR 8
#define CT 4
#include "quants_mat_q4_0_impl.h"

static ALWAYS_INLINE __m256i bcast4(const int8_t *p)
{
    int32_t v;
    memcpy(&v, p, 4);
    return _mm256_set1_epi32(v);
}

/* Per (8 rows, token, block): 8 vpmaddubsw (pairs of nibble x quant in int16), the low and the
 * high halves' four each added in int16 (at most 4 * 2 * 15 * 128 = 15360: no saturation),
 * two vpmaddwd to int32 lanes, a conversion and an fma. */
static inline __attribute__((always_inline)) void tile(int ct, int kc, const struct y_blk *y,
                                                       float *s, size_t ld, int rn, bool first)
{
    const __m256i m4 = _mm256_set1_epi8(0x0F), ones = _mm256_set1_epi16(1);
    const __m256i m =
        _mm256_cmpgt_epi32(_mm256_set1_epi32(rn), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
    __m256 acc[CT];
    UNROLL
    for (int c = 0; c < ct; c++)
        acc[c] = _mm256_setzero_ps();
    for (int k = 0; k < kc; k++) {
        const struct w_panel_blk *w = &w_buf[k];
        const __m256 dw = _mm256_load_ps(w->d);
        __m256i lo[4], hi[4];
        UNROLL
        for (int q = 0; q < 4; q++) {
            const __m256i p = _mm256_load_si256((const __m256i *)w->qs[q]);
            lo[q] = _mm256_and_si256(p, m4);
            hi[q] = _mm256_and_si256(_mm256_srli_epi16(p, 4), m4);
        }
        UNROLL
        for (int c = 0; c < ct; c++) {
            const struct y_blk *yb = &y[(size_t)c * kc + k];
            __m256i sl = _mm256_maddubs_epi16(lo[0], bcast4(yb->qs));
            __m256i sh = _mm256_maddubs_epi16(hi[0], bcast4(yb->qs + 16));
            UNROLL
            for (int q = 1; q < 4; q++) {
                sl = _mm256_add_epi16(sl, _mm256_maddubs_epi16(lo[q], bcast4(yb->qs + 4 * q)));
                sh = _mm256_add_epi16(sh, _mm256_maddubs_epi16(hi[q], bcast4(yb->qs + 16 + 4 * q)));
            }
            const __m256i isum = _mm256_add_epi32(
                _mm256_add_epi32(_mm256_madd_epi16(sl, ones), _mm256_madd_epi16(sh, ones)),
                _mm256_set1_epi32(yb->corr));
            acc[c] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(isum),
                                     _mm256_mul_ps(dw, _mm256_set1_ps(yb->d)), acc[c]);
        }
    }
    UNROLL
    for (int c = 0; c < ct; c++) {
        float *o = s + (size_t)c * ld;
        __m256 v = acc[c];
        if (!first)
            v = _mm256_add_ps(v, _mm256_maskload_ps(o, m));
        _mm256_maskstore_ps(o, m, v);
    }
}

void nf__vec_dot_q4_0_q8_0_mat_avx2(int n, float *s, size_t ld, const void *vx, size_t bx,
                                    const void *vy, size_t by, int nrows, int ncols)
{
    q4_0_gemm(n, s, ld, vx, bx, vy, by, nrows, ncols, false);
}

void nf__vec_dot_q4_0_packed_mat_avx2(int n, float *s, size_t ld, const void *vx, size_t bx,
                                      const void *vy, size_t by, int nrows, int ncols)
{
    q4_0_gemm(n, s, ld, vx, bx, vy, by, nrows, ncols, true);
}

void nf__q4_0_pack_act_avx2(const float *x, int n, int ncols, nf_from_float_fn q, void *out)
{
    pack_act(x, n, ncols, q, out);
}
