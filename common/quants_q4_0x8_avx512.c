/* quants_q4_0x8_avx512.c - the decode kernel of the interleaved q4_0 layout (quants_q4_0x8.h). */
#include <immintrin.h>

#include "quants_avx512_impl.h"
#include "quants_q4_0x8.h"

/* The order of nf__vec_dot_q4_0_q8_0_rows_avx512 (quants_avx512.c), which the sums must keep:
 * a row is summed in chunks of CHUNK_GROUPS groups, the groups of a chunk alternating between
 * two accumulators, and each chunk's _mm512_reduce_add_ps(a0 + a1) added to the output. */
enum { CHUNK_GROUPS = 64, ROWS = 8, GROUP8 = ROWS * 72 };

/* Software prefetch distance of the weight stream, in bytes past the group being read (every
 * line of the group 4 KiB ahead, i.e. about 7 groups of 8 rows). On the 7B q4_0 model, 2
 * threads, decode measured 9.25 and 11.59 tok/s with it against 7.86 and 9.34 without, two
 * alternated rounds (docs/measurements.md); 0 leaves the stream to the hardware prefetcher. */
#ifndef NF_Q4_0X8_PREFETCH
#define NF_Q4_0X8_PREFETCH 4096
#endif

/* Lane indices: row r's four products (lanes 4 (r % 4) .. + 3 of P) spread as
 * q4_0_unpack spreads a row's scales, each over its block's 4 lanes. */
static inline __m512i row_scale_index(int r)
{
    const int b = 4 * (r % 4);
    return _mm512_setr_epi32(b, b, b, b, b + 1, b + 1, b + 1, b + 1, b + 2, b + 2, b + 2, b + 2,
                             b + 3, b + 3, b + 3, b + 3);
}

/* Group p (576 bytes: 8 x 64 quants, then 8 x 4 scales) of eight rows against the prepared
 * activation group g, row r into acc[r]: q4_0_group's arithmetic (quants_avx512_impl.h) with
 * the product of the two scales formed for four rows at once (the same floats: a product of
 * two F16 values in float is exact and commutes). */
static inline __attribute__((always_inline)) void
q4_0x8_group(__m512 *acc, const char *p, const struct y_group *g, const __m512i *ix)
{
    const __m512i m4 = _mm512_set1_epi8(0x0F);
    /* dy4 lane 4r + b = scale of activation block b (g->d repeats it over block b's lanes). */
    const __m512 dy4 = _mm512_permutexvar_ps(
        _mm512_setr_epi32(0, 4, 8, 12, 0, 4, 8, 12, 0, 4, 8, 12, 0, 4, 8, 12), g->d);
    const __m512 dd[2] = {
        _mm512_mul_ps(_mm512_cvtph_ps(_mm256_load_si256((const __m256i *)(p + 512))), dy4),
        _mm512_mul_ps(_mm512_cvtph_ps(_mm256_load_si256((const __m256i *)(p + 544))), dy4)};
#if NF_Q4_0X8_PREFETCH
    for (int l = 0; l < 9; l++)
        _mm_prefetch(p + NF_Q4_0X8_PREFETCH + 64 * l, _MM_HINT_T0);
#endif
    for (int r = 0; r < ROWS; r++) {
        const __m512i qs = _mm512_load_si512(p + 64 * r);
        const __m512i lo = _mm512_and_si512(qs, m4);
        const __m512i hi = _mm512_and_si512(_mm512_srli_epi16(qs, 4), m4);
        __m512i sumi = _mm512_dpbusd_epi32(g->base, lo, g->lo);
        sumi = _mm512_dpbusd_epi32(sumi, hi, g->hi);
        const __m512 d = _mm512_permutexvar_ps(ix[r % 4], dd[r / 4]);
        acc[r] = _mm512_fmadd_ps(d, _mm512_cvtepi32_ps(sumi), acc[r]);
    }
}

void nf__vec_dot_q4_0x8_q8_0_avx512(int n, float *s, const void *vx, const void *vy, int nrows)
{
    const nf_block_q8_0 *y = vy;
    const int ng = n / (4 * NF_QK8_0);
    const __m512i ix[4] = {row_scale_index(0), row_scale_index(1), row_scale_index(2),
                           row_scale_index(3)};
    /* The whole activation row prepared once (ng <= NF_Q4_0X8_MAX_GROUPS) and used by every
     * eight rows: the weights are then read in one pass, eight rows after eight rows. */
    struct y_group g[NF_Q4_0X8_MAX_GROUPS];
    for (int k = 0; k < ng; k++)
        prep_group(&g[k], y + 4 * k, 8);
    for (int rb = 0; rb < nrows; rb += ROWS) {
        const char *x = (const char *)vx + (size_t)rb * ng * 72;
        float out[ROWS] = {0.0f};
        for (int g0 = 0; g0 < ng; g0 += CHUNK_GROUPS) {
            const int gn = ng - g0 < CHUNK_GROUPS ? ng - g0 : CHUNK_GROUPS;
            __m512 a0[ROWS], a1[ROWS];
            for (int r = 0; r < ROWS; r++)
                a0[r] = a1[r] = _mm512_setzero_ps();
            int k = 0;
            for (; k + 2 <= gn; k += 2) {
                q4_0x8_group(a0, x + (size_t)(g0 + k) * GROUP8, &g[g0 + k], ix);
                q4_0x8_group(a1, x + (size_t)(g0 + k + 1) * GROUP8, &g[g0 + k + 1], ix);
            }
            if (k < gn)
                q4_0x8_group(a0, x + (size_t)(g0 + k) * GROUP8, &g[g0 + k], ix);
            for (int r = 0; r < ROWS; r++)
                out[r] += _mm512_reduce_add_ps(_mm512_add_ps(a0[r], a1[r]));
        }
        for (int r = 0; r < ROWS; r++)
            s[rb + r] = out[r];
    }
}
