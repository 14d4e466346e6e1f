/* quants_mat_q4_0_impl.h - internal: the packing and blocking of the q4_0 prompt GEMMs
 * (quants_mat_q4_0_avx2.c, quants_mat_q4_0_avx512.c). The including file defines PR (weight
 * rows per panel: one 32-bit vector lane each) and CT (tokens per register tile), then defines
 * the tile declared below and calls q4_0_gemm.
 *
 * The weights are packed, once per call and chunk of blocks, into panels of PR rows where
 * 32-bit lane r of a vector holds four consecutive quants of row r (what llama.cpp's repack
 * does once at load; here the panel is made on the fly, so the tensor in RAM keeps the GGUF
 * layout that decode, the stack's tiles and the other paths read). Four activation quants
 * broadcast to every lane then multiply PR rows by one token, and a float vector of PR sums
 * per token is also PR consecutive outputs of s: no horizontal sum. Per (row, token, block) the
 * sum is exact in int32 and acc = fma(float(isum), dw * dy, acc), as the single-row kernels do,
 * so the result differs from the reference only in the float order of the sum over blocks
 * (tests/test_quants_mat.c's tolerance).
 *
 * q4_0 nibbles are 0..15 (the unsigned operand of vpdpbusd / vpmaddubsw); the -8 offset comes
 * back through the integer sum's starting value, -8 times the sum of the block's activation
 * quants, computed when the activations are packed.
 *
 * Blocking (one thread's call; nf_matmul_run splits rows between threads): blocks of K in
 * chunks of kc, outer, so each weight byte comes from RAM once per call; for each chunk the
 * activations of up to NC_MAX tokens are packed into y_buf (at most YP_BYTES, in L2), then
 * every panel of PR rows is packed (kc blocks, in L1) and meets all those tokens in tiles of
 * CT. */
#ifndef NF_QUANTS_MAT_Q4_0_IMPL_H
#define NF_QUANTS_MAT_Q4_0_IMPL_H

#include <immintrin.h>
#include <stdbool.h>
#include <stdint.h>
#include <string.h>

#include "quants_impl.h"
#include "quants_mat_impl.h"

enum {
    KC = 64,              /* blocks per chunk of K: a weight panel of at most 20 KiB */
    NC_MAX = 152,         /* tokens per packed activation chunk: NC_MAX * KC blocks fit y_buf */
    YP_BYTES = 384 * 1024 /* packed activations per chunk: in L2 with room for the panel */
};

/* One q4_0 block of PR rows: the scales in F32, then qs[q] lane r = bytes 4q..4q+3 of row r's
 * quants (elements 4q..4q+3 in the low nibbles, 16+4q..16+4q+3 in the high ones). */
struct w_panel_blk {
    float d[PR];
    uint32_t qs[4][PR];
};
_Static_assert(sizeof(struct w_panel_blk) == 20 * PR, "panel block is 5 vectors");

/* One q8_0 block of one token: its quants, scale in F32 and -8 * sum(qs). */
struct y_blk {
    int8_t qs[32];
    float d;
    int32_t corr;
};
_Static_assert(sizeof(struct y_blk) == 40, "packed activation block");

static _Thread_local struct w_panel_blk w_buf[KC] __attribute__((aligned(64)));
static _Thread_local struct y_blk y_buf[YP_BYTES / sizeof(struct y_blk)]
    __attribute__((aligned(64)));

/* Packs blocks b0..b0+kc of rn <= PR rows at x (stride bx) into w_buf; missing rows get zero
 * scales and quants (their outputs are computed and not stored). Asks for the same blocks of
 * the pn rows of the next panel, which then come from RAM while this one computes: without
 * that, packing waited for each row's lines in turn (a third of the kernel's time). */
static void pack_w(const char *x, size_t bx, int rn, int b0, int kc, int pn)
{
    for (int k = 0; k < kc; k++) {
        struct w_panel_blk *p = &w_buf[k];
        for (int r = 0; r < PR; r++) {
            if (r >= rn) {
                p->d[r] = 0.0f;
                for (int q = 0; q < 4; q++)
                    p->qs[q][r] = 0;
                continue;
            }
            const nf_block_q4_0 *b = (const nf_block_q4_0 *)(x + (size_t)r * bx) + b0 + k;
            if (r < pn)
                _mm_prefetch((const char *)b + PR * bx, _MM_HINT_T0);
            p->d[r] = _cvtsh_ss(b->d);
            memcpy(&p->qs[0][r], b->qs, 4);
            memcpy(&p->qs[1][r], b->qs + 4, 4);
            memcpy(&p->qs[2][r], b->qs + 8, 4);
            memcpy(&p->qs[3][r], b->qs + 12, 4);
        }
    }
}

/* Packs block b of one q8_0 activation row into o: its quants, scale and -8 * sum(qs). */
static inline __attribute__((always_inline)) void pack_y_blk(const nf_block_q8_0 *b,
                                                             struct y_blk *o)
{
    const __m256i one = _mm256_set1_epi8(1), minus8 = _mm256_set1_epi16(-8);
    const __m256i q = _mm256_loadu_si256((const __m256i *)b->qs);
    _mm256_storeu_si256((__m256i *)o->qs, q);
    /* -8 * sum(qs) in 8 lanes (exact: pairs in int16, then fours in int32), summed. */
    __m256i s8 = _mm256_madd_epi16(_mm256_maddubs_epi16(one, q), minus8);
    __m128i h = _mm_add_epi32(_mm256_castsi256_si128(s8), _mm256_extracti128_si256(s8, 1));
    h = _mm_add_epi32(h, _mm_shuffle_epi32(h, _MM_SHUFFLE(1, 0, 3, 2)));
    h = _mm_add_epi32(h, _mm_shuffle_epi32(h, _MM_SHUFFLE(2, 3, 0, 1)));
    o->corr = _mm_cvtsi128_si32(h);
    o->d = _cvtsh_ss(b->d);
}

/* Packs blocks b0..b0+kc of nc activation rows at y (stride by) into y_buf, token-major. */
static void pack_y(const char *y, size_t by, int nc, int b0, int kc)
{
    for (int c = 0; c < nc; c++) {
        const nf_block_q8_0 *b = (const nf_block_q8_0 *)(y + (size_t)c * by) + b0;
        struct y_blk *o = &y_buf[(size_t)c * kc];
        for (int k = 0; k < kc; k++)
            pack_y_blk(&b[k], &o[k]);
    }
}

/* The PR panel rows x ct tokens (packed at y, kc blocks apart) over kc blocks; stores the sums
 * into s (token c at s + c * ld, the first rn rows), or adds them when !first. Defined by the
 * including file. */
static inline __attribute__((always_inline)) void tile(int ct, int kc, const struct y_blk *y,
                                                       float *s, size_t ld, int rn, bool first);

/* One packed panel against the nc tokens packed at yp (kc blocks apart): tiles of CT, the rest in
 * tiles of 8, 4, 2, 1. */
static void panel(int kc, const struct y_blk *yp, float *s, size_t ld, int rn, int nc, bool first)
{
    int c = 0;
    for (; c + CT <= nc; c += CT)
        tile(CT, kc, yp + (size_t)c * kc, s + (size_t)c * ld, ld, rn, first);
#define REST(t)                                                                            \
    if (t < CT && c + t <= nc) {                                                           \
        tile(t < CT ? t : CT, kc, yp + (size_t)c * kc, s + (size_t)c * ld, ld, rn, first); \
        c += t;                                                                            \
    }
    REST(8)
    REST(4)
    REST(2)
    REST(1)
#undef REST
}

/* Blocks per chunk of K for nc tokens: always KC, whatever nc. Each chunk's sum is added to
 * the output as a whole (tile's !first), so the chunk boundaries are part of a token's float
 * order: with a K-chunk that shrank when more tokens shared y_buf, a token's result depended on
 * how many tokens its call had. With KC fixed, every token of a call of any size (one token
 * included) gets the same bits (tests/test_matmul_split.c). */
static int chunk_blocks(int nc)
{
    (void)nc;
    return KC;
}
_Static_assert(NC_MAX *KC * sizeof(struct y_blk) <= YP_BYTES, "NC_MAX tokens fill y_buf");

/* The vec_dot_mat (quants.h nf_vec_dot_mat_fn) of the including file's ISA. With packed, vy
 * holds the activations already packed by pack_act (by is not used): every chunk of them is
 * read where pack_act left it instead of being packed again, which a call on a few rows (a
 * stack tile's, or one thread's share of it) would otherwise pay for every token's blocks. */
static void q4_0_gemm(int n, float *s, size_t ld, const void *vx, size_t bx, const void *vy,
                      size_t by, int nrows, int ncols, bool packed)
{
    const int nb = n / NF_QK8_0;
    const char *x = vx, *y = vy;
    if (nrows < 1 || ncols < 1)
        return;
    for (int c0 = 0; c0 < ncols; c0 += NC_MAX) {
        const int nc = ncols - c0 < NC_MAX ? ncols - c0 : NC_MAX;
        const int kcs = chunk_blocks(nc);
        float *sc = s + (size_t)c0 * ld;
        if (nb == 0)
            for (int c = 0; c < nc; c++)
                memset(sc + (size_t)c * ld, 0, sizeof(float) * (size_t)nrows);
        for (int b0 = 0; b0 < nb; b0 += kcs) {
            const int kc = nb - b0 < kcs ? nb - b0 : kcs;
            const struct y_blk *yp = y_buf;
            if (packed) /* chunk (c0, b0) of pack_act's layout */
                yp = (const struct y_blk *)vy + (size_t)c0 * nb + (size_t)b0 * nc;
            else
                pack_y(y + (size_t)c0 * by, by, nc, b0, kc);
            for (int r0 = 0; r0 < nrows; r0 += PR) {
                const int rn = nrows - r0 < PR ? nrows - r0 : PR;
                const int pn = nrows - r0 - rn < PR ? nrows - r0 - rn : PR;
                pack_w(x + (size_t)r0 * bx, bx, rn, b0, kc, pn);
                panel(kc, yp, sc + r0, ld, rn, nc, b0 == 0);
            }
        }
    }
}

/* Quantizes ncols activation rows of n floats (x, n apart) with q (q8_0's activation
 * quantizer, one block at a time: q8_0 blocks do not depend on each other) and packs them at
 * out in the order q4_0_gemm reads them: for each chunk of NC_MAX tokens (c0) and each chunk
 * of kc blocks (b0), the chunk's tokens one after the other, kc blocks each, so chunk (c0, b0)
 * starts c0 * nb + b0 * nc blocks in. out holds ncols * nb struct y_blk (40 bytes each). */
static inline void pack_act(const float *x, int n, int ncols, nf_from_float_fn q, void *out)
{
    const int nb = n / NF_QK8_0;
    struct y_blk *o = out;
    for (int c0 = 0; c0 < ncols; c0 += NC_MAX) {
        const int nc = ncols - c0 < NC_MAX ? ncols - c0 : NC_MAX;
        const int kcs = chunk_blocks(nc);
        for (int c = 0; c < nc; c++) {
            const float *xr = x + (size_t)(c0 + c) * (size_t)n;
            for (int b = 0; b < nb; b++) {
                const int b0 = b - b % kcs, kc = nb - b0 < kcs ? nb - b0 : kcs;
                nf_block_q8_0 blk;
                q(xr + (size_t)b * NF_QK8_0, &blk, NF_QK8_0);
                pack_y_blk(&blk, &o[(size_t)c0 * nb + (size_t)b0 * nc + (size_t)c * kc + (b - b0)]);
            }
        }
    }
}

#endif
