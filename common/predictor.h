/* predictor.h - low-rank FFN activation predictors (randomized SVD of ffn_gate) and their use.
 *
 * A dense layer's gate pre-activations are g = W x with W = ffn_gate (n_ff, n_embd). The
 * predictor stores W ~= A B with A (n_ff, rank) and B (rank, n_embd), found by a randomized SVD
 * (Halko, Martinsson, Tropp 2011) of the dequantized W, so that scores = A (B x) cost
 * rank * (n_ff + n_embd) multiply-adds instead of n_ff * n_embd, and the neuron groups with the
 * largest |scores| are the ones worth fetching. */
#ifndef NF_PREDICTOR_H
#define NF_PREDICTOR_H

#include <stddef.h>
#include <stdint.h>

#include "quants.h"

/* Fits W ~= A B. W is m rows of n elements of `type` (any type with to_float), row_size bytes
 * apart at w; rows are dequantized a few at a time, so only the workspace (about
 * (m + n) * (rank + 8) floats) is allocated. A (m, rank) and B (rank, n) are F32 outputs; A has
 * orthonormal columns and B carries the singular values. n_power power iterations sharpen the
 * subspace (1 is a good default). Deterministic for a given seed. Returns 0, NF_EUSAGE
 * (rank outside [1, min(m, n)], bad type) or -ENOMEM. */
int nf_lowrank_fit(const void *w, enum nf_type type, size_t row_size, int64_t m, int64_t n,
                   int rank, int n_power, uint64_t seed, float *A, float *B);

/* scores (m) = A (B x): A (m, rank) and B (rank, n) stored as `type` (NF_TYPE_F32 or F16,
 * row-major, A first as in a PRED_LOWRANK tile); tmp holds rank floats. */
void nf_lowrank_scores(float *scores, const void *A, const void *B, enum nf_type type, int64_t m,
                       int64_t n, int rank, const float *x, float *tmp);

/* out (m / group) = sum of |scores| over each group of `group` neurons. */
void nf_group_scores(float *out, const float *scores, int64_t m, int group);

/* The rank that keeps n_layers predictors of (m + n) * rank elements of elt_size bytes within
 * share * weight_bytes, clamped to [1, min(m, n)]. */
int nf_lowrank_default_rank(uint64_t weight_bytes, int n_layers, int64_t m, int64_t n,
                            size_t elt_size, double share);

/* Internal: y[r][0..k) += sum_t c[r][t] * x[t][0..k) for r, t < 4 (k a multiple of 8). */
void nf__madd4x4(float *const y[4], const float *const x[4], const float c[4][4], int k);
void nf__madd4x4_avx2(float *const y[4], const float *const x[4], const float c[4][4], int k);

#endif
