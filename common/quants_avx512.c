/* quants_avx512.c - AVX-512 (F/BW/VL/VNNI) kernels: f32/f16 dots and 4-block q4_0/q8_0 dots. */
#include <immintrin.h>
#include <math.h>

#include "quants_avx512_impl.h"
#include "vec_avx512_impl.h"

void nf__vec_dot_f32_avx512(int n, float *s, const void *vx, const void *vy)
{
    const float *x = vx, *y = vy;
    __m512 a0 = _mm512_setzero_ps(), a1 = a0;
    int i = 0;
    for (; i + 32 <= n; i += 32) {
        a0 = _mm512_fmadd_ps(_mm512_loadu_ps(x + i), _mm512_loadu_ps(y + i), a0);
        a1 = _mm512_fmadd_ps(_mm512_loadu_ps(x + i + 16), _mm512_loadu_ps(y + i + 16), a1);
    }
    if (i + 16 <= n) {
        a0 = _mm512_fmadd_ps(_mm512_loadu_ps(x + i), _mm512_loadu_ps(y + i), a0);
        i += 16;
    }
    if (i < n) { /* masked tail: lanes past n load as zero */
        __mmask16 m = (__mmask16)((1u << (n - i)) - 1);
        a1 = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(m, x + i), _mm512_maskz_loadu_ps(m, y + i), a1);
    }
    *s = _mm512_reduce_add_ps(_mm512_add_ps(a0, a1));
}

void nf__vec_dot_f16_avx512(int n, float *s, const void *vx, const void *vy)
{
    const nf_fp16_t *x = vx, *y = vy;
    __m512 a0 = _mm512_setzero_ps(), a1 = a0;
    int i = 0;
#define LD(p) _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(p)))
    for (; i + 32 <= n; i += 32) {
        a0 = _mm512_fmadd_ps(LD(x + i), LD(y + i), a0);
        a1 = _mm512_fmadd_ps(LD(x + i + 16), LD(y + i + 16), a1);
    }
#undef LD
    if (i + 16 <= n) {
        a0 = _mm512_fmadd_ps(_mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(x + i))),
                             _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(y + i))), a0);
        i += 16;
    }
    if (i < n) {
        __mmask16 m = (__mmask16)((1u << (n - i)) - 1);
        a1 = _mm512_fmadd_ps(_mm512_cvtph_ps(_mm256_maskz_loadu_epi16(m, x + i)),
                             _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(m, y + i)), a1);
    }
    *s = _mm512_reduce_add_ps(_mm512_add_ps(a0, a1));
}

/* Activation groups are prepared once per chunk and reused by every row; a chunk of 64 groups
 * (8192 elements) keeps the prepared activation (16 KiB) in L1. */
enum { CHUNK_GROUPS = 64 };

/* Software prefetch distance of the weight stream, in bytes ahead of the group pair being
 * read (one line per pair of groups, 144 bytes): a decode step's rows are contiguous, so this
 * runs into the next rows. On the 4-layer llama-7b q4_0 model, 2 threads, decode measured
 * 53.1-53.6 tok/s with it against 49.0-50.3 without (docs/measurements.md). */
enum { Q4_0_PREFETCH = 2048 };

void nf__vec_dot_q4_0_q8_0_rows_avx512(int n, float *s, size_t bs, const void *vx, const void *vy,
                                       int nrows)
{
    const nf_block_q8_0 *y = vy;
    const int nb = n / NF_QK8_0, ng = nb / 4;
    const __m512i iq = q4_0_qs_index(), id = q4_0_d_index();
    struct y_group g[CHUNK_GROUPS];
    for (int r = 0; r < nrows; r++)
        s[r] = 0.0f;
    for (int g0 = 0; g0 < ng; g0 += CHUNK_GROUPS) {
        int gn = ng - g0 < CHUNK_GROUPS ? ng - g0 : CHUNK_GROUPS;
        for (int k = 0; k < gn; k++)
            prep_group(&g[k], y + 4 * (g0 + k), 8);
        for (int r = 0; r < nrows; r++) {
            const char *p = (const char *)vx + (size_t)r * bs + (size_t)g0 * 4 * 18;
            __m512 a0 = _mm512_setzero_ps(), a1 = a0;
            int k = 0;
            for (; k + 2 <= gn; k += 2) {
                _mm_prefetch(p + 72 * k + Q4_0_PREFETCH, _MM_HINT_T0);
                a0 = q4_0_group(a0, p + 72 * k, &g[k], iq, id);
                a1 = q4_0_group(a1, p + 72 * (k + 1), &g[k + 1], iq, id);
            }
            if (k < gn)
                a0 = q4_0_group(a0, p + 72 * k, &g[k], iq, id);
            s[r] += _mm512_reduce_add_ps(_mm512_add_ps(a0, a1));
        }
    }
    for (int i = 4 * ng; i < nb; i++)
        for (int r = 0; r < nrows; r++)
            s[r] +=
                q4_0_block((const nf_block_q4_0 *)((const char *)vx + (size_t)r * bs) + i, y + i);
}

void nf__vec_dot_q4_0_q8_0_avx512(int n, float *s, const void *x, const void *y)
{
    nf__vec_dot_q4_0_q8_0_rows_avx512(n, s, 0, x, y, 1);
}

/* q8_0 weights: 4 blocks = 136 bytes. The first 16 quants of each block come from
 * A = bytes 0..63 and B = bytes 64..127, the last 16 from A8 = bytes 8..71 and C = 72..135. */
static inline __m512i q8_0_lo_index(void)
{
    short idx[32];
    for (int m = 0; m < 32; m++) {
        int g = 17 * (m / 8) + 1 + m % 8;
        idx[m] = (short)g; /* A: 0..31, B: 32..63 */
    }
    return _mm512_loadu_si512(idx);
}

static inline __m512i q8_0_hi_index(void)
{
    short idx[32];
    for (int m = 0; m < 32; m++) {
        int g = 17 * (m / 8) + 9 + m % 8;
        idx[m] = (short)(g - 4); /* A8 holds words 4..35, C words 36..67 */
    }
    return _mm512_loadu_si512(idx);
}

static inline __m512i q8_0_d_index(void)
{
    short idx[32] = {0};
    for (int m = 0; m < 16; m++)
        idx[m] = (short)(17 * (m / 4)); /* A and B */
    return _mm512_loadu_si512(idx);
}

struct q8_idx {
    __m512i lo, hi, d;
};

static inline __m512 q8_0_group(__m512 acc, const char *p, const struct y_group *g,
                                const struct q8_idx *ix)
{
    const __m512i flip = _mm512_set1_epi8((char)0x80);
    __m512i a = _mm512_loadu_si512(p), b = _mm512_loadu_si512(p + 64);
    __m512i t = _mm512_castsi128_si512(_mm_loadl_epi64((const void *)(p + 128)));
    __m512i a8 = _mm512_alignr_epi32(b, a, 2), c = _mm512_alignr_epi32(t, b, 2);
    __m512i lo = _mm512_xor_si512(_mm512_permutex2var_epi16(a, ix->lo, b), flip);
    __m512i hi = _mm512_xor_si512(_mm512_permutex2var_epi16(a8, ix->hi, c), flip);
    __m512 dx = _mm512_cvtph_ps(_mm512_castsi512_si256(_mm512_permutex2var_epi16(a, ix->d, b)));
    __m512i sumi = _mm512_dpbusd_epi32(g->base, lo, g->lo);
    sumi = _mm512_dpbusd_epi32(sumi, hi, g->hi);
    return _mm512_fmadd_ps(_mm512_mul_ps(dx, g->d), _mm512_cvtepi32_ps(sumi), acc);
}

static inline float q8_0_block(const nf_block_q8_0 *x, const nf_block_q8_0 *y)
{
    __m256i xq = _mm256_loadu_si256((const __m256i *)x->qs);
    __m256i yq = _mm256_loadu_si256((const __m256i *)y->qs);
    __m256i p =
        _mm256_madd_epi16(_mm256_maddubs_epi16(_mm256_sign_epi8(xq, xq), _mm256_sign_epi8(yq, xq)),
                          _mm256_set1_epi16(1));
    __m128i s = _mm_add_epi32(_mm256_castsi256_si128(p), _mm256_extracti128_si256(p, 1));
    s = _mm_add_epi32(s, _mm_shuffle_epi32(s, _MM_SHUFFLE(1, 0, 3, 2)));
    s = _mm_add_epi32(s, _mm_shuffle_epi32(s, _MM_SHUFFLE(2, 3, 0, 1)));
    return (float)_mm_cvtsi128_si32(s) * (_cvtsh_ss(x->d) * _cvtsh_ss(y->d));
}

void nf__vec_dot_q8_0_q8_0_rows_avx512(int n, float *s, size_t bs, const void *vx, const void *vy,
                                       int nrows)
{
    const nf_block_q8_0 *y = vy;
    const int nb = n / NF_QK8_0, ng = nb / 4;
    const struct q8_idx ix = {q8_0_lo_index(), q8_0_hi_index(), q8_0_d_index()};
    struct y_group g[CHUNK_GROUPS];
    for (int r = 0; r < nrows; r++)
        s[r] = 0.0f;
    for (int g0 = 0; g0 < ng; g0 += CHUNK_GROUPS) {
        int gn = ng - g0 < CHUNK_GROUPS ? ng - g0 : CHUNK_GROUPS;
        for (int k = 0; k < gn; k++)
            prep_group(&g[k], y + 4 * (g0 + k), 128);
        for (int r = 0; r < nrows; r++) {
            const char *p = (const char *)vx + (size_t)r * bs + (size_t)g0 * 4 * 34;
            __m512 a0 = _mm512_setzero_ps(), a1 = a0;
            int k = 0;
            for (; k + 2 <= gn; k += 2) {
                a0 = q8_0_group(a0, p + 136 * k, &g[k], &ix);
                a1 = q8_0_group(a1, p + 136 * (k + 1), &g[k + 1], &ix);
            }
            if (k < gn)
                a0 = q8_0_group(a0, p + 136 * k, &g[k], &ix);
            s[r] += _mm512_reduce_add_ps(_mm512_add_ps(a0, a1));
        }
    }
    for (int i = 4 * ng; i < nb; i++)
        for (int r = 0; r < nrows; r++)
            s[r] +=
                q8_0_block((const nf_block_q8_0 *)((const char *)vx + (size_t)r * bs) + i, y + i);
}

/* ---- SwiGLU with ggml's AVX-512 exp (see nf__v_expf_ref) ---------------------------------- */

void nf__swiglu_avx512(float *h, const float *g, int n)
{
    const __m512 one = _mm512_set1_ps(1.0f);
    int i = 0;
    for (; i + 16 <= n; i += 16) {
        const __m512 x = _mm512_loadu_ps(h + i);
        const __m512 e = v_expf16(_mm512_sub_ps(_mm512_setzero_ps(), x));
        const __m512 si = _mm512_div_ps(x, _mm512_add_ps(one, e));
        _mm512_storeu_ps(h + i, _mm512_mul_ps(si, _mm512_loadu_ps(g + i)));
    }
    if (i < n) { /* the tail through the same vector code (masked lanes) */
        const __mmask16 m = (__mmask16)((1u << (n - i)) - 1);
        const __m512 x = _mm512_maskz_loadu_ps(m, h + i);
        const __m512 e = v_expf16(_mm512_sub_ps(_mm512_setzero_ps(), x));
        const __m512 si = _mm512_div_ps(x, _mm512_add_ps(one, e));
        _mm512_mask_storeu_ps(h + i, m, _mm512_mul_ps(si, _mm512_maskz_loadu_ps(m, g + i)));
    }
}
