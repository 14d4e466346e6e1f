/* quants_rows_avx2.c - AVX2 per-row exact multi-token kernels (quants_rows.h): q4_0, and the
 * forward pass's F32/F16 dot. */
#include <immintrin.h>

#include "quants_avx2_impl.h"
#include "quants_mat_impl.h"
#include "quants_rows.h"

/* nf__vec_dot_q4_0_q8_0_avx2 sums blocks in pairs, the first of each pair into a0 and the
 * second into a1 (an odd last block into a0), acc = fma(dx * dy, float(int32 lane sums), acc),
 * then hsum_ps(a0 + a1). Here each block pair's weights are unpacked once for COLS activation
 * rows (two accumulators each: 8 of the 16 registers). */
enum { COLS = 4 };

static ALWAYS_INLINE __m256i q4_dot(__m256i q, __m256i aq, const nf_block_q8_0 *b)
{
    const __m256i yq = _mm256_loadu_si256((const __m256i *)b->qs);
    /* dot_i8(q, yq) with |q| formed once per block. */
    return _mm256_madd_epi16(_mm256_maddubs_epi16(aq, _mm256_sign_epi8(yq, q)),
                             _mm256_set1_epi16(1));
}

static ALWAYS_INLINE void q4_0_tile(int ct, int nb, float *s, size_t ld, const nf_block_q4_0 *x,
                                    const char *y, size_t by)
{
    const __m256i off = _mm256_set1_epi8(8);
    __m256 a0[COLS], a1[COLS];
    UNROLL
    for (int c = 0; c < ct; c++)
        a0[c] = a1[c] = _mm256_setzero_ps();
    int i = 0;
    for (; i + 2 <= nb; i += 2) {
        const __m256i q0 = _mm256_sub_epi8(nibbles_32(x[i].qs), off);
        const __m256i q1 = _mm256_sub_epi8(nibbles_32(x[i + 1].qs), off);
        const __m256i aq0 = _mm256_sign_epi8(q0, q0), aq1 = _mm256_sign_epi8(q1, q1);
        const float d0 = h2f(x[i].d), d1 = h2f(x[i + 1].d);
        UNROLL
        for (int c = 0; c < ct; c++) {
            const nf_block_q8_0 *yc = (const nf_block_q8_0 *)(y + (size_t)c * by);
            const __m256i p0 = q4_dot(q0, aq0, yc + i), p1 = q4_dot(q1, aq1, yc + i + 1);
            a0[c] =
                _mm256_fmadd_ps(_mm256_set1_ps(d0 * h2f(yc[i].d)), _mm256_cvtepi32_ps(p0), a0[c]);
            a1[c] = _mm256_fmadd_ps(_mm256_set1_ps(d1 * h2f(yc[i + 1].d)), _mm256_cvtepi32_ps(p1),
                                    a1[c]);
        }
    }
    for (; i < nb; i++) {
        const __m256i q0 = _mm256_sub_epi8(nibbles_32(x[i].qs), off);
        const __m256i aq0 = _mm256_sign_epi8(q0, q0);
        const float d0 = h2f(x[i].d);
        UNROLL
        for (int c = 0; c < ct; c++) {
            const nf_block_q8_0 *yc = (const nf_block_q8_0 *)(y + (size_t)c * by);
            a0[c] = _mm256_fmadd_ps(_mm256_set1_ps(d0 * h2f(yc[i].d)),
                                    _mm256_cvtepi32_ps(q4_dot(q0, aq0, yc + i)), a0[c]);
        }
    }
    UNROLL
    for (int c = 0; c < ct; c++)
        s[(size_t)c * ld] = hsum_ps(_mm256_add_ps(a0[c], a1[c]));
}

void nf__vec_dot_q4_0_q8_0_cols_avx2(int n, float *s, size_t ld, const void *vx, size_t bx,
                                     const void *vy, size_t by, int nrows, int ncols)
{
    const int nb = n / NF_QK8_0;
    for (int r = 0; r < nrows; r++) {
        const nf_block_q4_0 *x = (const void *)((const char *)vx + (size_t)r * bx);
        int c = 0;
        for (; c + COLS <= ncols; c += COLS)
            q4_0_tile(COLS, nb, s + (size_t)c * ld + r, ld, x, (const char *)vy + (size_t)c * by,
                      by);
        switch (ncols - c) {
        case 3:
            q4_0_tile(3, nb, s + (size_t)c * ld + r, ld, x, (const char *)vy + c * by, by);
            break;
        case 2:
            q4_0_tile(2, nb, s + (size_t)c * ld + r, ld, x, (const char *)vy + c * by, by);
            break;
        case 1:
            q4_0_tile(1, nb, s + (size_t)c * ld + r, ld, x, (const char *)vy + c * by, by);
            break;
        default: break;
        }
    }
}

/* ---- F32 / F16: ggml_vec_dot_f32 / _f16 on AVX-512, with two 8-lane halves -----------------
 *
 * nf__ggml_dot_ref's order (quants_rows_avx512.c): each of the four 16-lane accumulators is
 * two 8-lane registers kept in step, lanes 0..7 and 8..15, then (a0 + a2) + (a1 + a3) and
 * nf__hsum16's order; the tail past the last whole block of 64 in double. One activation row
 * at a time (eight accumulators of the sixteen registers). */
enum { YF_MAX = 1024 };
static ALWAYS_INLINE __m256 ld8(const void *p, bool f16, int i)
{
    if (f16)
        return _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)((const nf_fp16_t *)p + i)));
    return _mm256_loadu_ps((const float *)p + i);
}

static ALWAYS_INLINE float ld1(const void *p, bool f16, int i)
{
    return f16 ? nf_fp16_to_fp32(((const nf_fp16_t *)p)[i]) : ((const float *)p)[i];
}

/* x16 / y16: whether x / y hold F16 (else F32). */
static ALWAYS_INLINE float ggml_dot_avx2(bool x16, bool y16, int n, const char *x, const char *y)
{
    const int np = n & ~63;
    __m256 acc[4][2];
    UNROLL
    for (int k = 0; k < 4; k++)
        acc[k][0] = acc[k][1] = _mm256_setzero_ps();
    for (int i = 0; i < np; i += 64)
        UNROLL
    for (int k = 0; k < 4; k++)
        UNROLL
    for (int h = 0; h < 2; h++) {
        const int e = i + 16 * k + 8 * h;
        acc[k][h] = _mm256_fmadd_ps(ld8(x, x16, e), ld8(y, y16, e), acc[k][h]);
    }
    double sum = 0.0;
    if (np) {
        float v[16];
        UNROLL
        for (int h = 0; h < 2; h++)
            _mm256_storeu_ps(v + 8 * h, _mm256_add_ps(_mm256_add_ps(acc[0][h], acc[2][h]),
                                                      _mm256_add_ps(acc[1][h], acc[3][h])));
        sum = (double)nf__hsum16(v);
    }
    for (int i = np; i < n; i++)
        sum += (double)(ld1(x, x16, i) * ld1(y, y16, i));
    return (float)sum;
}

static ALWAYS_INLINE void ggml_cols_avx2(bool f16, int n, float *s, size_t ld, const char *x,
                                         size_t bx, const char *y, size_t by, int nrows, int ncols)
{
    if (f16 && ncols == 1 && nrows > 1 && n <= YF_MAX) {
        /* One F16 activation row against many weight rows (attention scores): converted to
         * F32 once, exactly. */
        float yf[YF_MAX];
        int i = 0;
        for (; i + 8 <= n; i += 8)
            _mm256_storeu_ps(yf + i, ld8(y, true, i));
        for (; i < n; i++)
            yf[i] = ld1(y, true, i);
        for (int r = 0; r < nrows; r++)
            s[r] = ggml_dot_avx2(true, false, n, x + (size_t)r * bx, (const char *)yf);
        return;
    }
    for (int r = 0; r < nrows; r++)
        for (int c = 0; c < ncols; c++)
            s[(size_t)c * ld + r] =
                ggml_dot_avx2(f16, f16, n, x + (size_t)r * bx, y + (size_t)c * by);
}

void nf__ggml_dot_f32_cols_avx2(int n, float *s, size_t ld, const void *x, size_t bx, const void *y,
                                size_t by, int nrows, int ncols)
{
    ggml_cols_avx2(false, n, s, ld, x, bx, y, by, nrows, ncols);
}

void nf__ggml_dot_f16_cols_avx2(int n, float *s, size_t ld, const void *x, size_t bx, const void *y,
                                size_t by, int nrows, int ncols)
{
    ggml_cols_avx2(true, n, s, ld, x, bx, y, by, nrows, ncols);
}
