/* quants_rows.h - internal: multi-token kernels that are exact per row.
 *
 * A batched decode step (nf_ctx_step, nf_stream_step) and a verification pass (per_row) must
 * give every activation row the floats its own one-token step gives, bit for bit. The
 * register-blocked vec_dot_mat kernels of q4_0, f16 and f32 sum in tinyBLAS-like orders, so
 * these "cols" kernels take their place there: each weight block is loaded and unpacked once
 * and multiplied with every activation row (column), and each output is accumulated in exactly
 * the order of the one-token kernel. Same arguments and output layout as nf_vec_dot_mat_fn
 * (quants.h): s[c * ld + r] = dot(weight row r, activation row c). */
#ifndef NF_QUANTS_ROWS_H
#define NF_QUANTS_ROWS_H

#include "quants.h"

/* The multi-token kernel of weight type t whose every output equals, bit for bit, what
 * nf_type_traits(t)->vec_dot gives for that pair at the ISA the kernels run with
 * (nf_kernels_isa()); NULL for types without one (callers then call vec_dot per pair). */
nf_vec_dot_mat_fn nf_vec_dot_cols(enum nf_type t);

/* The kernel above for a weight matrix whose rows are stored by groups of four blocks (q4_0:
 * 128 weights, 72 bytes): group k of row r at x + r * bx + k * gs; n a multiple of 128. */
typedef void (*nf_vec_dot_cols_gs_fn)(int n, float *s, size_t ld, const void *x, size_t bx,
                                      size_t gs, const void *y, size_t by, int nrows, int ncols);

/* nf_vec_dot_cols(t) for that layout, every output bit for bit the same; NULL where there is
 * none (types other than q4_0, ISAs below AVX-512: callers keep contiguous rows there). */
nf_vec_dot_cols_gs_fn nf_vec_dot_cols_gs(enum nf_type t);

/* The multi-row kernel of weight type t (one activation row against nrows weight rows, as
 * nf_vec_dot_rows_fn) whose every output equals, bit for bit, what nf_type_traits(t)->vec_dot
 * gives for that row, whatever the range of rows a call covers; NULL for types where it would
 * be no faster than vec_dot per row. A decode step's mat-vec takes it: q4_0's AVX-512 rows
 * kernel prepares the activation once per call instead of once per row. */
nf_vec_dot_rows_fn nf_vec_dot_rows_exact(enum nf_type t);

/* Likewise for the forward pass's one-token F32 and F16 dot, ggml_vec_dot_f32 / _f16 on
 * AVX-512 (four 16-lane accumulators over blocks of 64, the tail in double): t is NF_TYPE_F32
 * (both operands F32) or NF_TYPE_F16 (both F16); NULL for any other type. */
nf_vec_dot_mat_fn nf_ggml_dot_cols(enum nf_type t);

/* That dot for one pair, the scalar definition: n elements of which those from nv on are zero
 * in y (masked attention cells add nothing, but n still decides which part the 64-element
 * body sums); the forward pass's own (model_forward.c) is this function. */
float nf__ggml_dot_ref(const void *x, const void *y, bool f16, int n, int nv);

/* The F32 (t NF_TYPE_F32) or F16 dot kernel above built for isa: its SIMD path, or the
 * scalar reference for NF_ISA_SCALAR or an isa the CPU lacks (tests compare the paths). */
nf_vec_dot_mat_fn nf_ggml_dot_cols_for(enum nf_type t, enum nf_isa isa);

/* The kernels behind the choosers (quants_rows.c, _avx2.c, _avx512.c). */
void nf__vec_dot_q4_0_q8_0_cols_avx2(int n, float *s, size_t ld, const void *x, size_t bx,
                                     const void *y, size_t by, int nrows, int ncols);
void nf__vec_dot_q4_0_q8_0_cols_avx512(int n, float *s, size_t ld, const void *x, size_t bx,
                                       const void *y, size_t by, int nrows, int ncols);
void nf__vec_dot_q4_0_q8_0_cols_gs_avx512(int n, float *s, size_t ld, const void *x, size_t bx,
                                          size_t gs, const void *y, size_t by, int nrows,
                                          int ncols);
void nf__ggml_dot_f32_cols_ref(int n, float *s, size_t ld, const void *x, size_t bx, const void *y,
                               size_t by, int nrows, int ncols);
void nf__ggml_dot_f16_cols_ref(int n, float *s, size_t ld, const void *x, size_t bx, const void *y,
                               size_t by, int nrows, int ncols);
void nf__ggml_dot_f32_cols_avx512(int n, float *s, size_t ld, const void *x, size_t bx,
                                  const void *y, size_t by, int nrows, int ncols);
void nf__ggml_dot_f16_cols_avx512(int n, float *s, size_t ld, const void *x, size_t bx,
                                  const void *y, size_t by, int nrows, int ncols);
void nf__ggml_dot_f32_cols_avx2(int n, float *s, size_t ld, const void *x, size_t bx, const void *y,
                                size_t by, int nrows, int ncols);
void nf__ggml_dot_f16_cols_avx2(int n, float *s, size_t ld, const void *x, size_t bx, const void *y,
                                size_t by, int nrows, int ncols);

#endif
