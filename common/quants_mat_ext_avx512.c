/* quants_mat_ext_avx512.c - AVX-512 (VNNI on 256-bit vectors) register-blocked multi-token
 * kernels of q4_1, q5_0, q5_1, iq4_nl and iq4_xs (quants_mat_ext_impl.h), and bf16 with
 * AVX512-BF16's vdpbf16ps where the CPU has it (cpu.c checks; the function carries its own
 * target, so the rest of the file needs no BF16). */
#include <immintrin.h>

#define XQ_RT   4
#define XQ_CT   4
#define XQ_VNNI 1
#include "quants_mat_ext_impl.h"

#define XQ_LEGACY_MAT(name, kind)                                                               \
    void name(int n, float *s, size_t ld, const void *vx, size_t bx, const void *vy, size_t by, \
              int nrows, int ncols)                                                             \
    {                                                                                           \
        const int nb = n / NF_QK8_0;                                                            \
        const char *x = vx, *y = vy;                                                            \
        FOR_TILES(XQ_RT, XQ_CT, XQ_LEGACY_TILE_##kind);                                         \
    }
#define XQ_LEGACY_TILE_XQ_Q4_1(rt, ct, so, xo, yo) \
    xq_tile(XQ_Q4_1, rt, ct, nb, so, ld, xo, bx, yo, by)
#define XQ_LEGACY_TILE_XQ_Q5_0(rt, ct, so, xo, yo) \
    xq_tile(XQ_Q5_0, rt, ct, nb, so, ld, xo, bx, yo, by)
#define XQ_LEGACY_TILE_XQ_Q5_1(rt, ct, so, xo, yo) \
    xq_tile(XQ_Q5_1, rt, ct, nb, so, ld, xo, bx, yo, by)
#define XQ_LEGACY_TILE_XQ_IQ4_NL(rt, ct, so, xo, yo) \
    xq_tile(XQ_IQ4_NL, rt, ct, nb, so, ld, xo, bx, yo, by)

XQ_LEGACY_MAT(nf__vec_dot_q4_1_q8_1_mat_avx512, XQ_Q4_1)
XQ_LEGACY_MAT(nf__vec_dot_q5_0_q8_0_mat_avx512, XQ_Q5_0)
XQ_LEGACY_MAT(nf__vec_dot_q5_1_q8_1_mat_avx512, XQ_Q5_1)
XQ_LEGACY_MAT(nf__vec_dot_iq4_nl_q8_0_mat_avx512, XQ_IQ4_NL)

void nf__vec_dot_iq4_xs_q8_K_mat_avx512(int n, float *s, size_t ld, const void *vx, size_t bx,
                                        const void *vy, size_t by, int nrows, int ncols)
{
    const int nb = n / NF_QK_K;
    const char *x = vx, *y = vy;
#define IQ4XS_TILE(rt, ct, so, xo, yo) xq_iq4_xs_tile(rt, ct, nb, so, ld, xo, bx, yo, by)
    FOR_TILES(XQ_RT, XQ_CT, IQ4XS_TILE);
#undef IQ4XS_TILE
}

/* ---- bf16 with vdpbf16ps --------------------------------------------------------------------
 *
 * tinyBLAS's order with AVX512-BF16 (llama.cpp's for BF16 weights in prompt batches, and
 * nf__vec_dot_bf16_mat_ref's): one 16-lane accumulator per output, vdpbf16ps over each 32
 * elements (masked loads past n: zero pairs add nothing), _mm512_reduce_add_ps. vdpbf16ps
 * treats denormal inputs as zero and flushes denormal results, which the reference does not:
 * the two agree bit for bit on rows without denormals (weights and activations of real
 * models). Tiles of 4 x 4. */
#define BF16_TARGET __attribute__((target("avx512bf16")))
enum { BF_RT = 4, BF_CT = 4 };

static ALWAYS_INLINE BF16_TARGET __m512i bf_ld(const char *p, int i, int n)
{
    const nf_bf16_t *b = (const void *)p;
    const __mmask32 m = n - i >= 32 ? (__mmask32)0xFFFFFFFFu : (__mmask32)((1u << (n - i)) - 1);
    return _mm512_maskz_loadu_epi16(m, b + i);
}

static ALWAYS_INLINE BF16_TARGET void bf_tile(int rt, int ct, int n, float *s, size_t ld,
                                              const char *x, size_t bx, const char *y, size_t by)
{
    __m512 acc[BF_RT][BF_CT];
    UNROLL
    for (int r = 0; r < rt; r++)
        UNROLL
    for (int c = 0; c < ct; c++)
        acc[r][c] = _mm512_setzero_ps();
    for (int i = 0; i < n; i += 32) {
        __m512i xv[BF_RT];
        UNROLL
        for (int r = 0; r < rt; r++)
            xv[r] = bf_ld(x + (size_t)r * bx, i, n);
        UNROLL
        for (int c = 0; c < ct; c++) {
            const __m512bh yv = (__m512bh)bf_ld(y + (size_t)c * by, i, n);
            UNROLL
            for (int r = 0; r < rt; r++)
                acc[r][c] = _mm512_dpbf16_ps(acc[r][c], (__m512bh)xv[r], yv);
        }
    }
    UNROLL
    for (int r = 0; r < rt; r++)
        UNROLL
    for (int c = 0; c < ct; c++)
        s[(size_t)c * ld + r] = _mm512_reduce_add_ps(acc[r][c]);
}

BF16_TARGET void nf__vec_dot_bf16_mat_avx512bf16(int n, float *s, size_t ld, const void *vx,
                                                 size_t bx, const void *vy, size_t by, int nrows,
                                                 int ncols)
{
    const char *x = vx, *y = vy;
#define BF_TILE(rt, ct, so, xo, yo) bf_tile(rt, ct, n, so, ld, xo, bx, yo, by)
    FOR_TILES(BF_RT, BF_CT, BF_TILE);
#undef BF_TILE
}

/* ---- prompt attention's KQV: V's columns against the softmax row ----------------------------
 *
 * nf__vec_dot_f16_cols_ref's order with 16 columns per vector: accumulator l takes the rows
 * i = l (mod 16), each a fused multiply-add of 16 columns by p[i], then the 16 accumulators are
 * reduced in _mm512_reduce_add_ps's order (halves, quarters, pairs), lane by lane. The last
 * nd % 16 columns through masked loads and stores. */
void nf__vec_dot_f16_cols_avx512(int n, float *out, int nd, const nf_fp16_t *v, size_t vs,
                                 const float *p)
{
    for (int d0 = 0; d0 < nd; d0 += 16) {
        const __mmask16 m = nd - d0 >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << (nd - d0)) - 1);
        __m512 a[16];
        UNROLL
        for (int l = 0; l < 16; l++)
            a[l] = _mm512_setzero_ps();
        const nf_fp16_t *vr = v + d0;
        int i = 0;
        for (; i + 16 <= n; i += 16)
            UNROLL
        for (int l = 0; l < 16; l++)
            a[l] = _mm512_fmadd_ps(
                _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(m, vr + (size_t)(i + l) * vs)),
                _mm512_set1_ps(p[i + l]), a[l]);
        UNROLL
        for (int l = 0; l < 16; l++)
            if (i + l < n)
                a[l] = _mm512_fmadd_ps(
                    _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(m, vr + (size_t)(i + l) * vs)),
                    _mm512_set1_ps(p[i + l]), a[l]);
        UNROLL
        for (int l = 0; l < 8; l++)
            a[l] = _mm512_add_ps(a[l + 8], a[l]);
        UNROLL
        for (int l = 0; l < 4; l++)
            a[l] = _mm512_add_ps(a[l + 4], a[l]);
        const __m512 r = _mm512_add_ps(_mm512_add_ps(a[0], a[2]), _mm512_add_ps(a[1], a[3]));
        _mm512_mask_storeu_ps(out + d0, m, r);
    }
}
