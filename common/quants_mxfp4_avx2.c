/* quants_mxfp4_avx2.c - the AVX2 MXFP4 kernels: vec_dot against q8_0 and the register-blocked
 * multi-token vec_dot_mat.
 *
 * Both sum in the float order of llama.cpp's x86 ggml_vec_dot_mxfp4_q8_0 (its __AVX2__ path,
 * which its AVX-512 builds run too): int32 lane k of a block holds the products of elements
 * 4k..4k+3 (the codes looked up with a byte shuffle, multiplied with vpmaddubsw/vpmaddwd);
 * even blocks go to one 8-lane accumulator and odd blocks to a second, each by
 * fma(dy * scale, float(lanes), acc); the two are added lane by lane, reduced as hsum_ps does,
 * and an odd last block is added as fma(dy * scale, float(integer dot), sum). The multi-token
 * kernel keeps that order for every output, so it equals vec_dot bit for bit. */
#include "quants_avx2_impl.h"
#include "quants_mat_impl.h"

/* The 32 codes of a block as signed bytes in element order (low nibbles, then high). */
static ALWAYS_INLINE __m256i mxfp4_values(const uint8_t *qs, __m256i table)
{
    return _mm256_shuffle_epi8(table, nibbles_32(qs));
}

static ALWAYS_INLINE __m256i mxfp4_table(void)
{
    return _mm256_broadcastsi128_si256(_mm_loadu_si128((const __m128i *)nf_kvalues_mxfp4));
}

/* The scale of block x against activation block y, as ggml forms it (dy first). */
static ALWAYS_INLINE float mxfp4_d(const nf_block_mxfp4 *x, const nf_block_q8_0 *y)
{
    return h2f(y->d) * nf_e8m0_to_fp32_half(x->e);
}

/* The odd last block: its integer dot, summed like ggml's scalar tail. */
static ALWAYS_INLINE float mxfp4_tail(float sum, const nf_block_mxfp4 *x, const nf_block_q8_0 *y,
                                      __m256i table)
{
    const __m256i p =
        dot_i8(mxfp4_values(x->qs, table), _mm256_loadu_si256((const __m256i *)y->qs));
    return __builtin_fmaf(mxfp4_d(x, y), (float)hsum_epi32(p), sum);
}

void nf__vec_dot_mxfp4_q8_0_avx2(int n, float *s, const void *vx, const void *vy)
{
    const nf_block_mxfp4 *x = vx;
    const nf_block_q8_0 *y = vy;
    const int nb = n / NF_QK4_0;
    const __m256i table = mxfp4_table();
    __m256 acc1 = _mm256_setzero_ps(), acc2 = _mm256_setzero_ps();
    int i = 0;
    for (; i + 1 < nb; i += 2) {
        const __m256i p1 =
            dot_i8(mxfp4_values(x[i].qs, table), _mm256_loadu_si256((const __m256i *)y[i].qs));
        const __m256i p2 = dot_i8(mxfp4_values(x[i + 1].qs, table),
                                  _mm256_loadu_si256((const __m256i *)y[i + 1].qs));
        acc1 = _mm256_fmadd_ps(_mm256_set1_ps(mxfp4_d(&x[i], &y[i])), _mm256_cvtepi32_ps(p1), acc1);
        acc2 = _mm256_fmadd_ps(_mm256_set1_ps(mxfp4_d(&x[i + 1], &y[i + 1])),
                               _mm256_cvtepi32_ps(p2), acc2);
    }
    float sum = hsum_ps(_mm256_add_ps(acc1, acc2));
    if (i < nb)
        sum = mxfp4_tail(sum, &x[i], &y[i], table);
    *s = sum;
}

/* ---- multi-token --------------------------------------------------------------------------
 *
 * Tiles of 2 weight rows x 2 activation rows, two accumulators per output (8 registers); per
 * block the weight codes are looked up once for the tile's activation rows. */
enum { MX_RT = 2, MX_CT = 2 };

static ALWAYS_INLINE void mxfp4_tile(int rt, int ct, int nb, float *s, size_t ld, const char *x,
                                     size_t bx, const char *y, size_t by)
{
    const __m256i table = mxfp4_table();
    __m256 acc[2][MX_RT][MX_CT];
    UNROLL
    for (int h = 0; h < 2; h++)
        UNROLL
    for (int r = 0; r < rt; r++)
        UNROLL
    for (int c = 0; c < ct; c++)
        acc[h][r][c] = _mm256_setzero_ps();
    int i = 0;
    for (; i + 1 < nb; i += 2) {
        UNROLL
        for (int h = 0; h < 2; h++) {
            __m256i q[MX_RT], aq[MX_RT];
            float dx[MX_RT];
            UNROLL
            for (int r = 0; r < rt; r++) {
                const nf_block_mxfp4 *b = (const nf_block_mxfp4 *)(x + (size_t)r * bx) + i + h;
                q[r] = mxfp4_values(b->qs, table);
                aq[r] = _mm256_sign_epi8(q[r], q[r]);
                dx[r] = nf_e8m0_to_fp32_half(b->e);
            }
            UNROLL
            for (int c = 0; c < ct; c++) {
                const nf_block_q8_0 *b = (const nf_block_q8_0 *)(y + (size_t)c * by) + i + h;
                const __m256i yq = _mm256_loadu_si256((const __m256i *)b->qs);
                const float dy = h2f(b->d);
                UNROLL
                for (int r = 0; r < rt; r++) {
                    const __m256i p =
                        _mm256_madd_epi16(_mm256_maddubs_epi16(aq[r], _mm256_sign_epi8(yq, q[r])),
                                          _mm256_set1_epi16(1));
                    acc[h][r][c] = _mm256_fmadd_ps(_mm256_set1_ps(dy * dx[r]),
                                                   _mm256_cvtepi32_ps(p), acc[h][r][c]);
                }
            }
        }
    }
    UNROLL
    for (int r = 0; r < rt; r++)
        UNROLL
    for (int c = 0; c < ct; c++) {
        float sum = hsum_ps(_mm256_add_ps(acc[0][r][c], acc[1][r][c]));
        if (i < nb)
            sum = mxfp4_tail(sum, (const nf_block_mxfp4 *)(x + (size_t)r * bx) + i,
                             (const nf_block_q8_0 *)(y + (size_t)c * by) + i, table);
        s[(size_t)c * ld + r] = sum;
    }
}

void nf__vec_dot_mxfp4_q8_0_avx2_mat(int n, float *s, size_t ld, const void *vx, size_t bx,
                                     const void *vy, size_t by, int nrows, int ncols)
{
    const int nb = n / NF_QK4_0;
    const char *x = vx, *y = vy;
#define MX_TILE(rt, ct, so, xo, yo) mxfp4_tile(rt, ct, nb, so, ld, xo, bx, yo, by)
    FOR_TILES(MX_RT, MX_CT, MX_TILE);
#undef MX_TILE
}
