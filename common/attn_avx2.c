/* attn_avx2.c - AVX2 (FMA, F16C) paths of the one-token attention kernels (attn.h),
 * bit-identical to the references of attn.c: ggml's AVX-512 orders with each 16-lane vector
 * kept as two 8-lane halves in step. */
#include <immintrin.h>
#include <math.h>

#include "attn.h"
#include "quants_impl.h"
#include "quants_mat_impl.h"

/* ggml_v_expf (nf__v_expf_ref) on 8 lanes. _mm512_scalef_ps(j, n), one rounding of j * 2^n, is
 * formed in double, where the product is exact (|n| <= 192), and rounded once to float. */
static inline __m256 scalef8(__m256 j, __m256 n)
{
    const __m256i ni = _mm256_cvtps_epi32(n);
    const __m256i bias = _mm256_set1_epi64x(1023);
    const __m256i e0 = _mm256_slli_epi64(
        _mm256_add_epi64(_mm256_cvtepi32_epi64(_mm256_castsi256_si128(ni)), bias), 52);
    const __m256i e1 = _mm256_slli_epi64(
        _mm256_add_epi64(_mm256_cvtepi32_epi64(_mm256_extracti128_si256(ni, 1)), bias), 52);
    const __m128 r0 = _mm256_cvtpd_ps(
        _mm256_mul_pd(_mm256_cvtps_pd(_mm256_castps256_ps128(j)), _mm256_castsi256_pd(e0)));
    const __m128 r1 = _mm256_cvtpd_ps(
        _mm256_mul_pd(_mm256_cvtps_pd(_mm256_extractf128_ps(j, 1)), _mm256_castsi256_pd(e1)));
    return _mm256_insertf128_ps(_mm256_castps128_ps256(r0), r1, 1);
}

static inline __m256 v_expf8(__m256 x)
{
    const __m256 r = _mm256_set1_ps(0x1.8p23f);
    const __m256 z = _mm256_fmadd_ps(x, _mm256_set1_ps(0x1.715476p+0f), r);
    const __m256 n = _mm256_sub_ps(z, r);
    const __m256 b = _mm256_fnmadd_ps(n, _mm256_set1_ps(0x1.7f7d1cp-20f),
                                      _mm256_fnmadd_ps(n, _mm256_set1_ps(0x1.62e4p-1f), x));
    const __m256 absn = _mm256_andnot_ps(_mm256_set1_ps(-0.0f), n);
    const __m256 big = _mm256_cmp_ps(absn, _mm256_set1_ps(192), _CMP_GT_OQ);
    const __m256 u = _mm256_mul_ps(b, b);
    const __m256 p01 =
        _mm256_fmadd_ps(_mm256_set1_ps(0x1.0e4020p-7f), b, _mm256_set1_ps(0x1.573e2ep-5f));
    const __m256 p23 =
        _mm256_fmadd_ps(_mm256_set1_ps(0x1.555e66p-3f), b, _mm256_set1_ps(0x1.fffdb6p-2f));
    const __m256 p45 = _mm256_fmadd_ps(_mm256_set1_ps(0x1.ffffecp-1f), b, _mm256_set1_ps(1.0f));
    const __m256 j = _mm256_fmadd_ps(_mm256_fmadd_ps(p01, u, p23), u, p45);
    /* Lanes past |n| > 192 (and -inf inputs) take 0 or infinity; scalef8 sees n = 0 there. */
    const __m256 res = scalef8(j, _mm256_andnot_ps(big, n));
    if (_mm256_movemask_ps(big) == 0)
        return res;
    const __m256 neg = _mm256_cmp_ps(n, _mm256_setzero_ps(), _CMP_LE_OQ);
    const __m256 alt = _mm256_blendv_ps(_mm256_set1_ps(INFINITY), _mm256_setzero_ps(), neg);
    return _mm256_blendv_ps(res, alt, big);
}

/* nf__hsum16 of lanes lo (0..7) and hi (8..15). */
static inline float hsum16_2(__m256 lo, __m256 hi)
{
    const __m256 t8 = _mm256_add_ps(hi, lo);
    const __m128 t4 = _mm_add_ps(_mm256_extractf128_ps(t8, 1), _mm256_castps256_ps128(t8));
    const __m128 t2 = _mm_add_ps(t4, _mm_movehl_ps(t4, t4));
    return _mm_cvtss_f32(_mm_add_ss(t2, _mm_movehdup_ps(t2)));
}

double nf__softmax_exp_avx2(float *y, const float *x, int n, float max)
{
    const __m256 mx = _mm256_set1_ps(max);
    double sum = 0.0;
    int i = 0;
    for (; i + 16 <= n; i += 16) {
        const __m256 e0 = v_expf8(_mm256_sub_ps(_mm256_loadu_ps(x + i), mx));
        const __m256 e1 = v_expf8(_mm256_sub_ps(_mm256_loadu_ps(x + i + 8), mx));
        _mm256_storeu_ps(y + i, e0);
        _mm256_storeu_ps(y + i + 8, e1);
        sum += (double)hsum16_2(e0, e1);
    }
    for (; i < n; i++) {
        y[i] = expf(x[i] - max);
        sum += (double)y[i];
    }
    return sum;
}

void nf__scale_round_f16_avx2(float *x, int n, float s)
{
    const __m256 sv = _mm256_set1_ps(s);
    int i = 0;
    for (; i + 8 <= n; i += 8) {
        const __m256 v = _mm256_mul_ps(_mm256_loadu_ps(x + i), sv);
        const __m128i h = _mm256_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
        _mm256_storeu_ps(x + i, _mm256_cvtph_ps(h));
    }
    nf__scale_round_f16_ref(x + i, n - i, s);
}

/* ---- KQV: ggml_vec_dot_f32 of each V column with the probabilities -------------------------
 *
 * As attn_avx512.c: vectors across V's columns, here C groups of 8 columns, and one lane l of
 * the reference's 16 at a time (its 4 x C chains over the cells l, l + 16, ... in increasing
 * order, cell i feeding accumulator i / 16 % 4), then (a0 + a2) + (a1 + a3), nf__hsum16's
 * order over the 16 lane sums and the cells past the body in double. */
static ALWAYS_INLINE __m256 ldv(const nf_fp16_t *v, size_t i, size_t vs)
{
    return _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(v + i * vs)));
}

static ALWAYS_INLINE void kqv8(int C, float *out, const nf_fp16_t *v, size_t vs, const float *p,
                               int n, int nv)
{
    const int np = n & ~63, mv = nv < np ? nv : np, ne = nv < n ? nv : n;
    __m256d s[2][2];
    if (np) {
        __m256 t[16][2];
        for (int l = 0; l < 16; l++) {
            __m256 a[4][2];
            UNROLL
            for (int k = 0; k < 4; k++)
                a[k][0] = a[k][1] = _mm256_setzero_ps();
            for (int j = 0; j < mv; j += 64)
                UNROLL
            for (int k = 0; k < 4; k++) {
                const int i = j + 16 * k + l;
                if (i < mv) {
                    const __m256 pi = _mm256_set1_ps(p[i]);
                    UNROLL
                    for (int c = 0; c < C; c++)
                        a[k][c] = _mm256_fmadd_ps(ldv(v + 8 * c, (size_t)i, vs), pi, a[k][c]);
                }
            }
            UNROLL
            for (int c = 0; c < C; c++)
                t[l][c] =
                    _mm256_add_ps(_mm256_add_ps(a[0][c], a[2][c]), _mm256_add_ps(a[1][c], a[3][c]));
        }
        UNROLL
        for (int c = 0; c < C; c++) {
            UNROLL
            for (int l = 0; l < 8; l++)
                t[l][c] = _mm256_add_ps(t[l + 8][c], t[l][c]);
            UNROLL
            for (int l = 0; l < 4; l++)
                t[l][c] = _mm256_add_ps(t[l + 4][c], t[l][c]);
            const __m256 r =
                _mm256_add_ps(_mm256_add_ps(t[0][c], t[2][c]), _mm256_add_ps(t[1][c], t[3][c]));
            s[c][0] = _mm256_cvtps_pd(_mm256_castps256_ps128(r));
            s[c][1] = _mm256_cvtps_pd(_mm256_extractf128_ps(r, 1));
        }
    } else {
        UNROLL
        for (int c = 0; c < C; c++)
            s[c][0] = s[c][1] = _mm256_setzero_pd();
    }
    for (int i = np; i < ne; i++) {
        const __m256 pi = _mm256_set1_ps(p[i]);
        UNROLL
        for (int c = 0; c < C; c++) {
            const __m256 q = _mm256_mul_ps(ldv(v + 8 * c, (size_t)i, vs), pi);
            s[c][0] = _mm256_add_pd(s[c][0], _mm256_cvtps_pd(_mm256_castps256_ps128(q)));
            s[c][1] = _mm256_add_pd(s[c][1], _mm256_cvtps_pd(_mm256_extractf128_ps(q, 1)));
        }
    }
    UNROLL
    for (int c = 0; c < C; c++)
        _mm256_storeu_ps(out + 8 * c,
                         _mm256_insertf128_ps(_mm256_castps128_ps256(_mm256_cvtpd_ps(s[c][0])),
                                              _mm256_cvtpd_ps(s[c][1]), 1));
}

void nf__attn_kqv_f16_avx2(float *out, int nd, const nf_fp16_t *v, size_t vs, const float *p, int n,
                           int nv, float *vcol)
{
    int d = 0;
    for (; d + 16 <= nd; d += 16)
        kqv8(2, out + d, v + d, vs, p, n, nv);
    if (d + 8 <= nd) {
        kqv8(1, out + d, v + d, vs, p, n, nv);
        d += 8;
    }
    if (d < nd) /* the last nd % 8 columns, gathered */
        nf__attn_kqv_f16_ref(out + d, nd - d, v + d, vs, p, n, nv, vcol);
}

/* KQV of a query tile: the AVX2 multi-token F16 column kernel per query (the same bits as the
 * reference; the AVX2 path does not share V's conversions between queries). */
void nf__attn_kqv_tile_avx2(float *out, size_t ldo, int nd, const nf_fp16_t *v, size_t vs,
                            const float *p, size_t ldp, int nq, int n, float *lanes)
{
    (void)lanes;
    for (int q = 0; q < nq; q++)
        nf__vec_dot_f16_cols_avx2(n, out + (size_t)q * ldo, nd, v, vs, p + (size_t)q * ldp);
}
