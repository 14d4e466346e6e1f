/* attn.h - internal: the one-token attention kernels of the forward pass (model_forward.c) in
 * ggml's float orders, each with a scalar reference and AVX2 / AVX-512 paths that give the same
 * bits.
 *
 * A decode step's plain (non-flash) attention over an F16 cache is, as llama.cpp's CPU backend
 * computes it: scores = ggml_vec_dot_f16(K row, Q rounded to F16) per cell (nf_ggml_dot_cols(),
 * quants_rows.h), the softmax numerators with ggml_v_expf (nf__softmax_exp_*), probabilities
 * rounded to F16 (nf__scale_round_f16_*), and each output value ggml_vec_dot_f32(V's column,
 * probabilities) (nf__attn_kqv_f16_*). The scalar references define the orders; the SIMD paths
 * vectorize across cells or across V's columns so that every output keeps its own order.
 * tests/test_attn_kernels.c checks every path against its reference bit for bit. */
#ifndef NF_ATTN_H
#define NF_ATTN_H

#include "quants.h"

/* The softmax numerators and their sum, as ggml_vec_soft_max_f32 on AVX-512: y[i] =
 * ggml_v_expf(x[i] - max) in groups of 16, each group summed in float in _mm512_reduce_add_ps's
 * order and added in double; the last n % 16 with expf, one by one in double. y may be x. */
typedef double (*nf_softmax_exp_fn)(float *y, const float *x, int n, float max);
/* x[i] = x[i] * s rounded to F16 and back (ggml's F32 -> F16 conversion of the softmax). */
typedef void (*nf_scale_round_f16_fn)(float *x, int n, float s);
/* out[d] (d < nd) = ggml_vec_dot_f32 on AVX-512 of column d of V (rows of vs halves apart, as
 * floats) and p, over n cells of which those from nv on are masked (never read):
 * nf__ggml_dot_ref(column d, p, false, n, nv), quants_rows.h. vcol (n floats) is scratch for
 * the paths that gather columns (the reference, and the AVX2 path's last nd % 8 columns). */
typedef void (*nf_attn_kqv_fn)(float *out, int nd, const nf_fp16_t *v, size_t vs, const float *p,
                               int n, int nv, float *vcol);
/* A prompt batch's KQV for a tile of nq queries that share one V (tokens of a ubatch, the query
 * heads of a GQA group): out[q * ldo + d] (q < nq, d < nd) = nf__vec_dot_f16_cols_ref(n, ., nd,
 * v, vs, p + q * ldp), tinyBLAS's order (16 lanes over the cells, lane i % 16, each a chain of
 * fused multiply-adds, then nf__hsum16). A query's cells past its position must hold p = 0:
 * they then leave every lane's bits as they are (a product with +0 added to a sum that cannot
 * be -0), so the output is that of the query's own length. Each V row is converted once per
 * NF_KQV_TILE_Q queries. lanes is scratch of NF_KQV_TILE_LANES floats (64-byte aligned). */
typedef void (*nf_attn_kqv_tile_fn)(float *out, size_t ldo, int nd, const nf_fp16_t *v, size_t vs,
                                    const float *p, size_t ldp, int nq, int n, float *lanes);
enum { NF_KQV_TILE_Q = 8, NF_KQV_TILE_D = 32, NF_KQV_TILE_LANES = 16 * 8 * 32 };

/* The paths for isa (at most nf_cpu_best_isa(); the scalar ones otherwise or for NF_ISA_SCALAR). */
nf_softmax_exp_fn nf_softmax_exp_for(enum nf_isa isa);
nf_scale_round_f16_fn nf_scale_round_f16_for(enum nf_isa isa);
nf_attn_kqv_fn nf_attn_kqv_for(enum nf_isa isa);
nf_attn_kqv_tile_fn nf_attn_kqv_tile_for(enum nf_isa isa);

/* The kernels behind the choosers (attn.c, attn_avx2.c, attn_avx512.c). */
double nf__softmax_exp_ref(float *y, const float *x, int n, float max);
double nf__softmax_exp_avx2(float *y, const float *x, int n, float max);
double nf__softmax_exp_avx512(float *y, const float *x, int n, float max);
void nf__scale_round_f16_ref(float *x, int n, float s);
void nf__scale_round_f16_avx2(float *x, int n, float s);
void nf__scale_round_f16_avx512(float *x, int n, float s);
void nf__attn_kqv_f16_ref(float *out, int nd, const nf_fp16_t *v, size_t vs, const float *p, int n,
                          int nv, float *vcol);
void nf__attn_kqv_f16_avx2(float *out, int nd, const nf_fp16_t *v, size_t vs, const float *p, int n,
                           int nv, float *vcol);
void nf__attn_kqv_f16_avx512(float *out, int nd, const nf_fp16_t *v, size_t vs, const float *p,
                             int n, int nv, float *vcol);
void nf__attn_kqv_tile_ref(float *out, size_t ldo, int nd, const nf_fp16_t *v, size_t vs,
                           const float *p, size_t ldp, int nq, int n, float *lanes);
void nf__attn_kqv_tile_avx2(float *out, size_t ldo, int nd, const nf_fp16_t *v, size_t vs,
                            const float *p, size_t ldp, int nq, int n, float *lanes);
void nf__attn_kqv_tile_avx512(float *out, size_t ldo, int nd, const nf_fp16_t *v, size_t vs,
                              const float *p, size_t ldp, int nq, int n, float *lanes);

#endif
