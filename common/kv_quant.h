/* kv_quant.h - the KV cache's element formats (f16, q8_0, q4_0) and the kernels attention
 * runs over them.
 *
 * A cache row is one position's K (or V) of one layer: n_head_kv * head_dim values stored as
 * that many F16 halves, or as head_dim / 32 q8_0 / q4_0 blocks per head (ggml's blocks, see
 * quants.h), so each head's row is whole blocks, as llama.cpp quantizes its cache. Quantized
 * types need head_dim to be a multiple of 32 (nf_kv_types_check).
 *
 * How attention reads them (model_forward.c, nf_attn_head):
 *  - K f16: llama.cpp's non-flash order, bit for bit (Q rounded to F16, ggml's F16 dot).
 *  - K q8_0 / q4_0: as llama.cpp's non-flash mul_mat(K, Q) with a quantized K: Q is quantized
 *    to q8_0 (the types' vec_dot_type) with llama.cpp's x86 quantizer and each score is the
 *    type's vec_dot (one 8-lane accumulator, which is also tinyBLAS_Q0's order).
 *  - V f16: llama.cpp's non-flash order (softmax rounded to F16, ggml's dot over the cells).
 *  - V q8_0 / q4_0: llama.cpp cannot run these without flash attention (its non-flash cache
 *    stores V transposed, and 32 cells of one dimension do not make a block). NanoFlow stores
 *    V by rows like K and dequantizes them on the fly: out += p * dequant(V row) for each cell
 *    in order, one fused multiply-add per element (nf_kv_axpy), the softmax probabilities p
 *    kept in F32. No llama.cpp output exists to match: tests compare it with a scalar
 *    reference (quantize, dequantize, F32 attention). */
#ifndef NF_KV_QUANT_H
#define NF_KV_QUANT_H

#include <stddef.h>

#include "quants.h"

struct nf_hparams;

/* The cache types --cache-type-k / --cache-type-v take, as llama.cpp spells them. */
#define NF_KV_TYPE_NAMES "f16, q8_0, q4_0"

/* Parses "f16", "q8_0" or "q4_0" into *out. Returns 0 or NF_EUSAGE (anything else). */
int nf_kv_type_parse(const char *s, enum nf_type *out);
/* "f16", "q8_0", "q4_0" (or "?" for a type the cache cannot hold). */
const char *nf_kv_type_name(enum nf_type t);
/* True for the three cache types. */
bool nf_kv_type_ok(enum nf_type t);

/* Checks that a model with hyperparameters hp can keep K as tk and V as tv. MLA models
 * (deepseek2) cache their compressed latent, always F16: a quantized type is refused for
 * them (NF_EUSAGE, naming the model's latent), as is a quantized type when head_dim is not a
 * multiple of 32 (llama.cpp accepts that case and its output degrades to noise: measured on
 * stories260K, head_dim 8). Returns 0 or NF_EUSAGE with one line in err. */
int nf_kv_types_check(const struct nf_hparams *hp, enum nf_type tk, enum nf_type tv, char *err,
                      size_t errlen);

/* Bytes of one cache row of n values (n a multiple of 32 for the quantized types). */
size_t nf_kv_row_bytes(enum nf_type t, int n);
/* Bytes of one position in every layer, K and V (the latent alone for MLA models): what the
 * budget plan and the engines count per token. */
size_t nf_kv_token_bytes(const struct nf_hparams *hp, enum nf_type tk, enum nf_type tv);

/* Stores n floats as a cache row of type t: F16 rounding, or llama.cpp's quantizer for the
 * type (its x86 q8_0 quantizer, the reference q4_0 one: what its KV copy calls). */
void nf_kv_store_row(enum nf_type t, void *dst, const float *src, int n);
/* Dequantizes a cache row of n values into out. */
void nf_kv_load_row(enum nf_type t, float *out, const void *row, int n);

/* out[i] = fmaf(a, dequant(row)[i], out[i]) for i < n (n a multiple of 32), the dequantized
 * value computed as in ggml (d * q, d * (q - 8)) in float: V rows weighted by a probability.
 * Every element is one rounding of one fused product, so the SIMD paths are bit-identical to
 * the reference. */
typedef void (*nf_kv_axpy_fn)(float *out, float a, const void *row, int n);
/* The best path for type t (q8_0 or q4_0) on this CPU (NF_ISA caps it, as for the quants). */
nf_kv_axpy_fn nf_kv_axpy_for(enum nf_type t);

/* The walk's V sums over an F16 cache (nf_attn_walk, model_forward.c), a lane's vd sums
 * meeting one cell's V row: out[i] = fmaf(a, row[i], out[i]) (axpy) and out[i] = a * row[i]
 * (mul, the products of ggml_vec_dot_f32's tail) for i < n, any n, the halves converted
 * exactly. One rounding per element as the column-wise kernels compute each lane, so the SIMD
 * paths are bit-identical to the references. */
typedef void (*nf_kv_f16_fn)(float *out, float a, const nf_fp16_t *row, int n);
nf_kv_f16_fn nf_kv_axpy_f16_for(void);
nf_kv_f16_fn nf_kv_mul_f16_for(void);

/* The paths, for the tests: portable reference and AVX2. */
void nf__kv_axpy_f16_ref(float *out, float a, const nf_fp16_t *row, int n);
void nf__kv_axpy_f16_avx2(float *out, float a, const nf_fp16_t *row, int n);
void nf__kv_mul_f16_ref(float *out, float a, const nf_fp16_t *row, int n);
void nf__kv_mul_f16_avx2(float *out, float a, const nf_fp16_t *row, int n);
void nf__kv_axpy_q8_0_ref(float *out, float a, const void *row, int n);
void nf__kv_axpy_q4_0_ref(float *out, float a, const void *row, int n);
void nf__kv_axpy_q8_0_avx2(float *out, float a, const void *row, int n);
void nf__kv_axpy_q4_0_avx2(float *out, float a, const void *row, int n);

#endif
