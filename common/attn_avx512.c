/* attn_avx512.c - AVX-512 paths of the one-token attention kernels (attn.h), bit-identical to
 * the references of attn.c. */
#include <immintrin.h>
#include <math.h>

#include "attn.h"
#include "quants_mat_impl.h"
#include "vec_avx512_impl.h"

double nf__softmax_exp_avx512(float *y, const float *x, int n, float max)
{
    const __m512 mx = _mm512_set1_ps(max);
    double sum = 0.0;
    int i = 0;
    for (; i + 16 <= n; i += 16) {
        const __m512 e = v_expf16(_mm512_sub_ps(_mm512_loadu_ps(x + i), mx));
        _mm512_storeu_ps(y + i, e);
        sum += (double)hsum16_ps(e);
    }
    for (; i < n; i++) {
        y[i] = expf(x[i] - max);
        sum += (double)y[i];
    }
    return sum;
}

void nf__scale_round_f16_avx512(float *x, int n, float s)
{
    const __m512 sv = _mm512_set1_ps(s);
    for (int i = 0; i < n; i += 16) {
        const __mmask16 m = n - i >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << (n - i)) - 1);
        const __m512 v = _mm512_mul_ps(_mm512_maskz_loadu_ps(m, x + i), sv);
        const __m256i h = _mm512_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
        _mm512_mask_storeu_ps(x + i, m, _mm512_cvtph_ps(h));
    }
}

/* ---- KQV: ggml_vec_dot_f32 of each V column with the probabilities -------------------------
 *
 * In nf__ggml_dot_ref, cell i of the body goes to lane i % 64 (accumulator i / 16 % 4, lane
 * i % 16), and each lane is its own chain of fused multiply-adds over the cells i, i + 64, ...
 * Here the vectors run across V's columns instead: for a group of 32 columns (two vectors, one
 * cache line of halves), lanes l and l + 1 (mod 16) are taken at a time, their 4 x 2 chains
 * over the cells in increasing order, then (a0 + a2) + (a1 + a3) per lane as the reference;
 * the 16 lane sums are reduced in nf__hsum16's order, and the cells past the body are added in
 * double. Every column keeps the reference's order; each cell's row is read once per group. */
static ALWAYS_INLINE __m512 ldv(const nf_fp16_t *v, size_t i, size_t vs, __mmask16 m)
{
    return _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(m, v + i * vs));
}

static ALWAYS_INLINE void kqv_lanes(__m512 t[16][2], int l0, const nf_fp16_t *v, size_t vs,
                                    const float *p, int mv, __mmask16 m0, __mmask16 m1)
{
    __m512 a[2][4][2];
    UNROLL
    for (int l = 0; l < 2; l++)
        UNROLL
    for (int k = 0; k < 4; k++)
        a[l][k][0] = a[l][k][1] = _mm512_setzero_ps();
    for (int j = 0; j < mv; j += 64) {
        UNROLL
        for (int k = 0; k < 4; k++)
            UNROLL
        for (int l = 0; l < 2; l++) {
            const int i = j + 16 * k + l0 + l;
            if (i < mv) {
                const __m512 pi = _mm512_set1_ps(p[i]);
                a[l][k][0] = _mm512_fmadd_ps(ldv(v, (size_t)i, vs, m0), pi, a[l][k][0]);
                a[l][k][1] = _mm512_fmadd_ps(ldv(v + 16, (size_t)i, vs, m1), pi, a[l][k][1]);
            }
        }
    }
    UNROLL
    for (int l = 0; l < 2; l++)
        UNROLL
    for (int h = 0; h < 2; h++)
        t[l0 + l][h] = _mm512_add_ps(_mm512_add_ps(a[l][0][h], a[l][2][h]),
                                     _mm512_add_ps(a[l][1][h], a[l][3][h]));
}

/* Columns [0, 32) of v (those past nd masked by m0, m1) into out. */
static void kqv32(float *out, const nf_fp16_t *v, size_t vs, const float *p, int n, int nv,
                  __mmask16 m0, __mmask16 m1)
{
    const int np = n & ~63, mv = nv < np ? nv : np, ne = nv < n ? nv : n;
    __m512d s[2][2];
    if (np) {
        __m512 t[16][2];
        for (int l0 = 0; l0 < 16; l0 += 2)
            kqv_lanes(t, l0, v, vs, p, mv, m0, m1);
        UNROLL
        for (int h = 0; h < 2; h++) {
            UNROLL
            for (int l = 0; l < 8; l++)
                t[l][h] = _mm512_add_ps(t[l + 8][h], t[l][h]);
            UNROLL
            for (int l = 0; l < 4; l++)
                t[l][h] = _mm512_add_ps(t[l + 4][h], t[l][h]);
            const __m512 r =
                _mm512_add_ps(_mm512_add_ps(t[0][h], t[2][h]), _mm512_add_ps(t[1][h], t[3][h]));
            s[h][0] = _mm512_cvtps_pd(_mm512_castps512_ps256(r));
            s[h][1] = _mm512_cvtps_pd(_mm512_extractf32x8_ps(r, 1));
        }
    } else {
        s[0][0] = s[0][1] = s[1][0] = s[1][1] = _mm512_setzero_pd();
    }
    for (int i = np; i < ne; i++) {
        const __m512 pi = _mm512_set1_ps(p[i]);
        const __m512 q0 = _mm512_mul_ps(ldv(v, (size_t)i, vs, m0), pi);
        const __m512 q1 = _mm512_mul_ps(ldv(v + 16, (size_t)i, vs, m1), pi);
        s[0][0] = _mm512_add_pd(s[0][0], _mm512_cvtps_pd(_mm512_castps512_ps256(q0)));
        s[0][1] = _mm512_add_pd(s[0][1], _mm512_cvtps_pd(_mm512_extractf32x8_ps(q0, 1)));
        s[1][0] = _mm512_add_pd(s[1][0], _mm512_cvtps_pd(_mm512_castps512_ps256(q1)));
        s[1][1] = _mm512_add_pd(s[1][1], _mm512_cvtps_pd(_mm512_extractf32x8_ps(q1, 1)));
    }
    UNROLL
    for (int h = 0; h < 2; h++) {
        const __m512 r = _mm512_insertf32x8(_mm512_castps256_ps512(_mm512_cvtpd_ps(s[h][0])),
                                            _mm512_cvtpd_ps(s[h][1]), 1);
        _mm512_mask_storeu_ps(out + 16 * h, h ? m1 : m0, r);
    }
}

static __mmask16 cols_mask(int left)
{
    return left >= 16 ? (__mmask16)0xFFFF : left <= 0 ? 0 : (__mmask16)((1u << left) - 1);
}

void nf__attn_kqv_f16_avx512(float *out, int nd, const nf_fp16_t *v, size_t vs, const float *p,
                             int n, int nv, float *vcol)
{
    (void)vcol;
    for (int d0 = 0; d0 < nd; d0 += 32)
        kqv32(out + d0, v + d0, vs, p, n, nv, cols_mask(nd - d0), cols_mask(nd - d0 - 16));
}

/* ---- a prompt tile's KQV: nf__vec_dot_f16_cols_ref's order for several queries at once -----
 *
 * Each of the 16 lanes of the reference is its own chain over the cells i = l (mod 16), so the
 * lanes are taken one after the other: for lane l, a group of 32 columns (two vectors) and up to
 * 8 queries, every cell i of the lane is loaded and converted once and meets the 8 queries'
 * probabilities (16 accumulators). The lane's sums go to lanes[l][q][32]; at the end each
 * query's 16 lane sums are reduced in nf__hsum16's order (halves, quarters, pairs). */
static ALWAYS_INLINE void kqv_tile_blk(int qb, float *out, size_t ldo, int d0, __mmask16 m0,
                                       __mmask16 m1, const nf_fp16_t *v, size_t vs, const float *p,
                                       size_t ldp, int n, float *lanes)
{
    for (int l = 0; l < 16; l++) {
        __m512 a0[NF_KQV_TILE_Q], a1[NF_KQV_TILE_Q];
        UNROLL
        for (int q = 0; q < qb; q++)
            a0[q] = a1[q] = _mm512_setzero_ps();
        for (int i = l; i < n; i += 16) {
            const nf_fp16_t *vr = v + (size_t)i * vs + d0;
            const __m512 v0 = _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(m0, vr));
            const __m512 v1 = _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(m1, vr + 16));
            UNROLL
            for (int q = 0; q < qb; q++) {
                const __m512 pq = _mm512_set1_ps(p[(size_t)q * ldp + (size_t)i]);
                a0[q] = _mm512_fmadd_ps(v0, pq, a0[q]);
                a1[q] = _mm512_fmadd_ps(v1, pq, a1[q]);
            }
        }
        float *lb = lanes + (size_t)l * NF_KQV_TILE_Q * NF_KQV_TILE_D;
        UNROLL
        for (int q = 0; q < qb; q++) {
            _mm512_store_ps(lb + q * NF_KQV_TILE_D, a0[q]);
            _mm512_store_ps(lb + q * NF_KQV_TILE_D + 16, a1[q]);
        }
    }
    for (int q = 0; q < qb; q++)
        for (int h = 0; h < 2; h++) {
            __m512 a[16];
            UNROLL
            for (int l = 0; l < 16; l++)
                a[l] = _mm512_load_ps(
                    lanes + ((size_t)l * NF_KQV_TILE_Q + (size_t)q) * NF_KQV_TILE_D + 16 * h);
            UNROLL
            for (int l = 0; l < 8; l++)
                a[l] = _mm512_add_ps(a[l + 8], a[l]);
            UNROLL
            for (int l = 0; l < 4; l++)
                a[l] = _mm512_add_ps(a[l + 4], a[l]);
            const __m512 r = _mm512_add_ps(_mm512_add_ps(a[0], a[2]), _mm512_add_ps(a[1], a[3]));
            _mm512_mask_storeu_ps(out + (size_t)q * ldo + d0 + 16 * h, h ? m1 : m0, r);
        }
}

void nf__attn_kqv_tile_avx512(float *out, size_t ldo, int nd, const nf_fp16_t *v, size_t vs,
                              const float *p, size_t ldp, int nq, int n, float *lanes)
{
    for (int q0 = 0; q0 < nq; q0 += NF_KQV_TILE_Q) {
        const int qb = nq - q0 < NF_KQV_TILE_Q ? nq - q0 : NF_KQV_TILE_Q;
        float *o = out + (size_t)q0 * ldo;
        const float *pq = p + (size_t)q0 * ldp;
        for (int d0 = 0; d0 < nd; d0 += NF_KQV_TILE_D) {
            const int r = nd - d0;
            const __mmask16 m0 = r >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << r) - 1);
            const __mmask16 m1 = r >= 32  ? (__mmask16)0xFFFF
                                 : r > 16 ? (__mmask16)((1u << (r - 16)) - 1)
                                          : (__mmask16)0;
            /* A constant query count per call, so the accumulators stay in registers. */
            switch (qb) {
            case 1: kqv_tile_blk(1, o, ldo, d0, m0, m1, v, vs, pq, ldp, n, lanes); break;
            case 2: kqv_tile_blk(2, o, ldo, d0, m0, m1, v, vs, pq, ldp, n, lanes); break;
            case 3: kqv_tile_blk(3, o, ldo, d0, m0, m1, v, vs, pq, ldp, n, lanes); break;
            case 4: kqv_tile_blk(4, o, ldo, d0, m0, m1, v, vs, pq, ldp, n, lanes); break;
            case 5: kqv_tile_blk(5, o, ldo, d0, m0, m1, v, vs, pq, ldp, n, lanes); break;
            case 6: kqv_tile_blk(6, o, ldo, d0, m0, m1, v, vs, pq, ldp, n, lanes); break;
            case 7: kqv_tile_blk(7, o, ldo, d0, m0, m1, v, vs, pq, ldp, n, lanes); break;
            default: kqv_tile_blk(8, o, ldo, d0, m0, m1, v, vs, pq, ldp, n, lanes); break;
            }
        }
    }
}
