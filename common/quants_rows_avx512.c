/* quants_rows_avx512.c - AVX-512 per-row exact multi-token kernels (quants_rows.h): q4_0, and
 * the forward pass's F32/F16 dot. */
#include <immintrin.h>

#include "nf_err.h"
#include "quants_avx512_impl.h"
#include "quants_mat_impl.h"
#include "quants_rows.h"
#include "vec_avx512_impl.h"

/* ---- q4_0 ---------------------------------------------------------------------------------
 *
 * nf__vec_dot_q4_0_q8_0_avx512 (the one-token kernel) sums a row in chunks of 64 four-block
 * groups: in a chunk, groups alternate between two accumulators, a chunk's sum is
 * _mm512_reduce_add_ps(a0 + a1) added to the output (from 0.0f), and the blocks past the last
 * whole group are added one by one after every chunk. Here the same, with each group's weights
 * unpacked once for up to COLS activation rows; a chunk's prepared activation groups are shared
 * by a tile of ROW_TILE weight rows (enough to amortize the preparation, few enough for the
 * tile's weights to stay in L2 when a row has several chunks). */
enum { CHUNK_GROUPS = 64, COLS = 8, ROW_TILE = 32 };

static ALWAYS_INLINE __m512 q4_0_acc(__m512 acc, const struct q4_w *w, const struct y_group *g)
{
    __m512i sumi = _mm512_dpbusd_epi32(g->base, w->lo, g->lo);
    sumi = _mm512_dpbusd_epi32(sumi, w->hi, g->hi);
    return _mm512_fmadd_ps(_mm512_mul_ps(w->d, g->d), _mm512_cvtepi32_ps(sumi), acc);
}

/* Rows [0, nrows) of x against the ct activation rows whose groups g0.. are prepared in
 * g[c * CHUNK_GROUPS + k], k < gn: adds each chunk sum to s[c * ld + r]. Group k of row r is
 * at x + r * bx + k * gs. */
static ALWAYS_INLINE void q4_0_chunk(int ct, float *s, size_t ld, const char *x, size_t bx,
                                     size_t gs, int nrows, const struct y_group *g, int gn,
                                     __m512i iq, __m512i id)
{
    for (int r = 0; r < nrows; r++) {
        const char *p = x + (size_t)r * bx;
        /* The next row's groups are asked for while this row is summed: a batched step's
         * weights come from DRAM (pool tiles, each read once a step) and its rows cross 4 KiB
         * pages, where the hardware prefetchers stop; the weight loads were a third of this
         * kernel's time (docs/measurements.md). A prefetch past the matrix does not fault. */
        const char *pn = p + bx;
        __m512 a0[COLS], a1[COLS];
        UNROLL
        for (int c = 0; c < ct; c++)
            a0[c] = a1[c] = _mm512_setzero_ps();
        int k = 0;
        for (; k + 2 <= gn; k += 2) {
            _mm_prefetch(pn + gs * k, _MM_HINT_T0);
            _mm_prefetch(pn + gs * k + 64, _MM_HINT_T0);
            _mm_prefetch(pn + gs * (k + 1), _MM_HINT_T0);
            _mm_prefetch(pn + gs * (k + 1) + 64, _MM_HINT_T0);
            const struct q4_w w0 = q4_0_unpack(p + gs * k, iq, id);
            UNROLL
            for (int c = 0; c < ct; c++)
                a0[c] = q4_0_acc(a0[c], &w0, &g[c * CHUNK_GROUPS + k]);
            const struct q4_w w1 = q4_0_unpack(p + gs * (k + 1), iq, id);
            UNROLL
            for (int c = 0; c < ct; c++)
                a1[c] = q4_0_acc(a1[c], &w1, &g[c * CHUNK_GROUPS + k + 1]);
        }
        if (k < gn) {
            const struct q4_w w0 = q4_0_unpack(p + gs * k, iq, id);
            UNROLL
            for (int c = 0; c < ct; c++)
                a0[c] = q4_0_acc(a0[c], &w0, &g[c * CHUNK_GROUPS + k]);
        }
        UNROLL
        for (int c = 0; c < ct; c++)
            s[(size_t)c * ld + r] += _mm512_reduce_add_ps(_mm512_add_ps(a0[c], a1[c]));
    }
}

/* The kernel for groups gs bytes apart (72: rows of contiguous blocks); with gs != 72 n is a
 * multiple of 128 (no blocks past the last whole group). */
static ALWAYS_INLINE void q4_0_cols(int n, float *s, size_t ld, const void *vx, size_t bx,
                                    size_t gs, const void *vy, size_t by, int nrows, int ncols)
{
    const int nb = n / NF_QK8_0, ng = nb / 4;
    const __m512i iq = q4_0_qs_index(), id = q4_0_d_index();
    /* (COLS, CHUNK_GROUPS) one chunk of each activation row of the column tile: 128 KiB. */
    struct y_group g[COLS * CHUNK_GROUPS];
    /* One chunk: prepare once for all rows. Several: tiles of rows, each reading its weights
     * once from memory for all chunks. */
    const int rt = ng <= CHUNK_GROUPS ? nrows : ROW_TILE;
    for (int c0 = 0; c0 < ncols; c0 += COLS) {
        const int ct = ncols - c0 < COLS ? ncols - c0 : COLS;
        const char *y0 = (const char *)vy + (size_t)c0 * by;
        float *s0 = s + (size_t)c0 * ld;
        for (int c = 0; c < ct; c++)
            for (int r = 0; r < nrows; r++)
                s0[(size_t)c * ld + r] = 0.0f;
        for (int r0 = 0; r0 < nrows; r0 += rt) {
            const int rn = nrows - r0 < rt ? nrows - r0 : rt;
            for (int q0 = 0; q0 < ng; q0 += CHUNK_GROUPS) {
                const int gn = ng - q0 < CHUNK_GROUPS ? ng - q0 : CHUNK_GROUPS;
                for (int c = 0; c < ct; c++) {
                    const nf_block_q8_0 *yc = (const nf_block_q8_0 *)(y0 + (size_t)c * by);
                    for (int k = 0; k < gn; k++)
                        prep_group(&g[c * CHUNK_GROUPS + k], yc + 4 * (q0 + k), 8);
                }
                const char *x = (const char *)vx + (size_t)r0 * bx + (size_t)q0 * gs;
                float *sr = s0 + r0;
                switch (ct) {
                case 1: q4_0_chunk(1, sr, ld, x, bx, gs, rn, g, gn, iq, id); break;
                case 2: q4_0_chunk(2, sr, ld, x, bx, gs, rn, g, gn, iq, id); break;
                case 3: q4_0_chunk(3, sr, ld, x, bx, gs, rn, g, gn, iq, id); break;
                case 4: q4_0_chunk(4, sr, ld, x, bx, gs, rn, g, gn, iq, id); break;
                case 5: q4_0_chunk(5, sr, ld, x, bx, gs, rn, g, gn, iq, id); break;
                case 6: q4_0_chunk(6, sr, ld, x, bx, gs, rn, g, gn, iq, id); break;
                case 7: q4_0_chunk(7, sr, ld, x, bx, gs, rn, g, gn, iq, id); break;
                default: q4_0_chunk(8, sr, ld, x, bx, gs, rn, g, gn, iq, id); break;
                }
            }
        }
        /* The blocks past the last whole group, as the one-token kernel adds them. */
        for (int i = 4 * ng; i < nb; i++)
            for (int r = 0; r < nrows; r++)
                for (int c = 0; c < ct; c++)
                    s0[(size_t)c * ld + r] +=
                        q4_0_block((const nf_block_q4_0 *)((const char *)vx + (size_t)r * bx) + i,
                                   (const nf_block_q8_0 *)(y0 + (size_t)c * by) + i);
    }
}

void nf__vec_dot_q4_0_q8_0_cols_avx512(int n, float *s, size_t ld, const void *vx, size_t bx,
                                       const void *vy, size_t by, int nrows, int ncols)
{
    q4_0_cols(n, s, ld, vx, bx, 72, vy, by, nrows, ncols);
}

void nf__vec_dot_q4_0_q8_0_cols_gs_avx512(int n, float *s, size_t ld, const void *vx, size_t bx,
                                          size_t gs, const void *vy, size_t by, int nrows,
                                          int ncols)
{
    NF_ASSERT(n % (4 * NF_QK8_0) == 0);
    q4_0_cols(n, s, ld, vx, bx, gs, vy, by, nrows, ncols);
}

/* ---- F32 / F16: ggml_vec_dot_f32 / _f16 on AVX-512 -----------------------------------------
 *
 * Four 16-lane accumulators, block j of 64 elements feeding accumulator (i / 16) % 4 lane
 * i % 16 by fused multiply-adds, then (a0 + a2) + (a1 + a3) and nf__hsum16's order; the tail
 * past the last whole block of 64 summed in double (nf__ggml_dot_ref). Up to GCOLS activation
 * rows share each weight block's loads. One F16 activation row against many weight rows (a
 * decode step's attention scores: one query head against every cached K row) is converted to
 * F32 once, exactly, into YF_MAX floats at most. */
enum { GCOLS = 4, YF_MAX = 1024 };

static ALWAYS_INLINE __m512 ld16(const void *p, bool f16, int i)
{
    if (f16)
        return _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)((const nf_fp16_t *)p + i)));
    return _mm512_loadu_ps((const float *)p + i);
}

static ALWAYS_INLINE float ld1(const void *p, bool f16, int i)
{
    return f16 ? nf_fp16_to_fp32(((const nf_fp16_t *)p)[i]) : ((const float *)p)[i];
}

/* x16 / y16: whether the weight row x / the activation rows y hold F16 (else F32). */
static ALWAYS_INLINE void ggml_tile(bool x16, bool y16, int ct, int n, float *s, size_t ld,
                                    const char *x, const char *y, size_t by)
{
    const int np = n & ~63;
    __m512 acc[GCOLS][4];
    UNROLL
    for (int c = 0; c < ct; c++)
        acc[c][0] = acc[c][1] = acc[c][2] = acc[c][3] = _mm512_setzero_ps();
    for (int i = 0; i < np; i += 64) {
        const __m512 x0 = ld16(x, x16, i), x1 = ld16(x, x16, i + 16);
        const __m512 x2 = ld16(x, x16, i + 32), x3 = ld16(x, x16, i + 48);
        UNROLL
        for (int c = 0; c < ct; c++) {
            const char *yc = y + (size_t)c * by;
            acc[c][0] = _mm512_fmadd_ps(x0, ld16(yc, y16, i), acc[c][0]);
            acc[c][1] = _mm512_fmadd_ps(x1, ld16(yc, y16, i + 16), acc[c][1]);
            acc[c][2] = _mm512_fmadd_ps(x2, ld16(yc, y16, i + 32), acc[c][2]);
            acc[c][3] = _mm512_fmadd_ps(x3, ld16(yc, y16, i + 48), acc[c][3]);
        }
    }
    UNROLL
    for (int c = 0; c < ct; c++) {
        const __m512 a =
            _mm512_add_ps(_mm512_add_ps(acc[c][0], acc[c][2]), _mm512_add_ps(acc[c][1], acc[c][3]));
        const char *yc = y + (size_t)c * by;
        double sum = np ? (double)hsum16_ps(a) : 0.0;
        for (int i = np; i < n; i++)
            sum += (double)(ld1(x, x16, i) * ld1(yc, y16, i));
        s[(size_t)c * ld] = (float)sum;
    }
}

static ALWAYS_INLINE void ggml_cols(bool f16, int n, float *s, size_t ld, const char *x, size_t bx,
                                    const char *y, size_t by, int nrows, int ncols)
{
    if (f16 && ncols == 1 && nrows > 1 && n <= YF_MAX) {
        float yf[YF_MAX];
        for (int i = 0; i < n; i += 16) {
            const __mmask16 m = n - i >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << (n - i)) - 1);
            _mm512_mask_storeu_ps(yf + i, m,
                                  _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(
                                      m, (const nf_fp16_t *)(const void *)y + i)));
        }
        for (int r = 0; r < nrows; r++)
            ggml_tile(true, false, 1, n, s + r, ld, x + (size_t)r * bx, (const char *)yf, 0);
        return;
    }
    for (int r = 0; r < nrows; r++) {
        const char *xr = x + (size_t)r * bx;
        int c = 0;
        for (; c + GCOLS <= ncols; c += GCOLS)
            ggml_tile(f16, f16, GCOLS, n, s + (size_t)c * ld + r, ld, xr, y + (size_t)c * by, by);
        for (; c < ncols; c++)
            ggml_tile(f16, f16, 1, n, s + (size_t)c * ld + r, ld, xr, y + (size_t)c * by, by);
    }
}

void nf__ggml_dot_f32_cols_avx512(int n, float *s, size_t ld, const void *x, size_t bx,
                                  const void *y, size_t by, int nrows, int ncols)
{
    ggml_cols(false, n, s, ld, x, bx, y, by, nrows, ncols);
}

void nf__ggml_dot_f16_cols_avx512(int n, float *s, size_t ld, const void *x, size_t bx,
                                  const void *y, size_t by, int nrows, int ncols)
{
    ggml_cols(true, n, s, ld, x, bx, y, by, nrows, ncols);
}
