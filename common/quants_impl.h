/* quants_impl.h - internal: the per-ISA kernels behind quants.h, for the dispatcher (cpu.c). */
#ifndef NF_QUANTS_IMPL_H
#define NF_QUANTS_IMPL_H

#include <string.h>

#include "quants.h"

/* Rounds to the nearest integer, ties to even, as ggml's nearest_int (|f| <= 4194303). */
static inline int nf__nearest_int(float f)
{
    union {
        float f;
        int32_t i;
    } u = {.f = f + 12582912.f};
    return (u.i & 0x007fffff) - 0x00400000;
}

/* The sum of 16 floats in the order of _mm512_reduce_add_ps: halves, then quarters, then
 * pairs (the tinyBLAS and ggml AVX-512 horizontal add that the references reproduce). */
static inline float nf__hsum16(const float *v)
{
    float t8[8], t4[4];
    for (int i = 0; i < 8; i++)
        t8[i] = v[i + 8] + v[i];
    for (int i = 0; i < 4; i++)
        t4[i] = t8[i + 4] + t8[i];
    return (t4[0] + t4[2]) + (t4[1] + t4[3]);
}

/* The traits table (quants.c); nf_kernels_init (cpu.c) fills in the fastest kernels. */
extern struct nf_type_traits nf__traits[NF_TYPE_COUNT];

/* Scalar reference kernels (quants.c). */
void nf__vec_dot_f32_ref(int n, float *s, const void *x, const void *y);
void nf__vec_dot_f16_ref(int n, float *s, const void *x, const void *y);
void nf__vec_dot_bf16_ref(int n, float *s, const void *x, const void *y);
void nf__vec_dot_q4_0_q8_0_ref(int n, float *s, const void *x, const void *y);
void nf__vec_dot_q8_0_q8_0_ref(int n, float *s, const void *x, const void *y);
void nf__vec_dot_q4_K_q8_K_ref(int n, float *s, const void *x, const void *y);
void nf__vec_dot_q5_K_q8_K_ref(int n, float *s, const void *x, const void *y);
void nf__vec_dot_q6_K_q8_K_ref(int n, float *s, const void *x, const void *y);
void nf__vec_dot_q8_K_q8_K_ref(int n, float *s, const void *x, const void *y);
void nf__quantize_row_f16_ref(const float *x, void *y, int64_t n);
void nf__quantize_row_bf16_ref(const float *x, void *y, int64_t n);
void nf__quantize_row_q8_0_ref(const float *x, void *y, int64_t n);
void nf__quantize_row_q8_K_ref(const float *x, void *y, int64_t n);
/* ggml's make_qkx2_quants and make_qx_quants (quants.c), shared by the K-quantizers. */
float nf__make_qkx2_quants(int n, int nmax, const float *x, const float *w, uint8_t *L,
                           float *the_min, uint8_t *Laux, float rmin, float rdelta, int nstep);
float nf__make_qx_quants(int n, int nmax, const float *x, int8_t *L);

/* Scalar reference kernels of quants_ext.c. */
void nf__to_float_q4_1(const void *x, float *y, int64_t n);
void nf__to_float_q5_0(const void *x, float *y, int64_t n);
void nf__to_float_q5_1(const void *x, float *y, int64_t n);
void nf__to_float_q8_1(const void *x, float *y, int64_t n);
void nf__to_float_iq4_nl(const void *x, float *y, int64_t n);
void nf__to_float_q2_K(const void *x, float *y, int64_t n);
void nf__to_float_q3_K(const void *x, float *y, int64_t n);
void nf__to_float_iq4_xs(const void *x, float *y, int64_t n);
void nf__quantize_row_q4_1_ref(const float *x, void *y, int64_t n);
void nf__quantize_row_q5_0_ref(const float *x, void *y, int64_t n);
void nf__quantize_row_q5_1_ref(const float *x, void *y, int64_t n);
void nf__quantize_row_q8_1_ref(const float *x, void *y, int64_t n);
void nf__quantize_row_iq4_nl_ref(const float *x, void *y, int64_t n);
void nf__quantize_row_q2_K_ref(const float *x, void *y, int64_t n);
void nf__quantize_row_q3_K_ref(const float *x, void *y, int64_t n);
void nf__quantize_row_iq4_xs_ref(const float *x, void *y, int64_t n);
void nf__vec_dot_q4_1_q8_1_ref(int n, float *s, const void *x, const void *y);
void nf__vec_dot_q5_0_q8_0_ref(int n, float *s, const void *x, const void *y);
void nf__vec_dot_q5_1_q8_1_ref(int n, float *s, const void *x, const void *y);
void nf__vec_dot_iq4_nl_q8_0_ref(int n, float *s, const void *x, const void *y);
void nf__vec_dot_q2_K_q8_K_ref(int n, float *s, const void *x, const void *y);
void nf__vec_dot_q3_K_q8_K_ref(int n, float *s, const void *x, const void *y);
void nf__vec_dot_iq4_xs_q8_K_ref(int n, float *s, const void *x, const void *y);
/* q4_0 rows in llama.cpp's repacked q4_0_8x8 order (see quants.c); not a traits kernel: the
 * forward pass picks it (with the AVX2 variant when available) to reproduce llama.cpp. */
/* ggml_v_expf (AVX-512 form) for one value, and ggml_vec_swiglu_f32 as llama.cpp's AVX-512
 * build computes it (h = silu(h) * g); see quants.c. */
float nf__v_expf_ref(float x);
void nf__swiglu_ref(float *h, const float *g, int n);
void nf__vec_dot_q4_0_q8_0_seq_ref_rows(int n, float *s, size_t bs, const void *x, const void *y,
                                        int nrows);

/* AVX2 + FMA + F16C kernels (quants_avx2.c); call only when nf_cpu_best_isa() >= AVX2. */
void nf__vec_dot_f32_avx2(int n, float *s, const void *x, const void *y);
void nf__vec_dot_f16_avx2(int n, float *s, const void *x, const void *y);
void nf__vec_dot_bf16_avx2(int n, float *s, const void *x, const void *y);
void nf__vec_dot_q4_0_q8_0_avx2(int n, float *s, const void *x, const void *y);
void nf__vec_dot_q8_0_q8_0_avx2(int n, float *s, const void *x, const void *y);
void nf__vec_dot_q4_K_q8_K_avx2(int n, float *s, const void *x, const void *y);
void nf__vec_dot_q5_K_q8_K_avx2(int n, float *s, const void *x, const void *y);
void nf__vec_dot_q6_K_q8_K_avx2(int n, float *s, const void *x, const void *y);
void nf__quantize_row_f16_avx2(const float *x, void *y, int64_t n);
void nf__quantize_row_bf16_avx2(const float *x, void *y, int64_t n);
void nf__quantize_row_q8_0_avx2(const float *x, void *y, int64_t n);
void nf__quantize_row_q8_K_avx2(const float *x, void *y, int64_t n);
void nf__vec_dot_q4_0_q8_0_seq_avx2_rows(int n, float *s, size_t bs, const void *x, const void *y,
                                         int nrows);

/* AVX2 kernels of quants_ext_avx2.c, and q8_1's activation quantizer (quants_avx2.c). */
void nf__vec_dot_q4_1_q8_1_avx2(int n, float *s, const void *x, const void *y);
void nf__vec_dot_q5_0_q8_0_avx2(int n, float *s, const void *x, const void *y);
void nf__vec_dot_q5_1_q8_1_avx2(int n, float *s, const void *x, const void *y);
void nf__vec_dot_iq4_nl_q8_0_avx2(int n, float *s, const void *x, const void *y);
void nf__vec_dot_q2_K_q8_K_avx2(int n, float *s, const void *x, const void *y);
void nf__vec_dot_q3_K_q8_K_avx2(int n, float *s, const void *x, const void *y);
void nf__vec_dot_iq4_xs_q8_K_avx2(int n, float *s, const void *x, const void *y);
void nf__quantize_row_q8_1_avx2(const float *x, void *y, int64_t n);

/* AVX-512 F/BW/VL/DQ/VNNI kernels (quants_avx512.c); call only when nf_cpu_best_isa() is
 * AVX512. */
void nf__vec_dot_f32_avx512(int n, float *s, const void *x, const void *y);
void nf__vec_dot_f16_avx512(int n, float *s, const void *x, const void *y);
void nf__vec_dot_q4_0_q8_0_avx512(int n, float *s, const void *x, const void *y);
void nf__vec_dot_q4_0_q8_0_rows_avx512(int n, float *s, size_t bs, const void *x, const void *y,
                                       int nrows);
void nf__swiglu_avx512(float *h, const float *g, int n);
void nf__vec_dot_q8_0_q8_0_rows_avx512(int n, float *s, size_t bs, const void *x, const void *y,
                                       int nrows);

/* AVX-512 kernels of quants_ext_avx512.c. */
void nf__vec_dot_q4_1_q8_1_avx512(int n, float *s, const void *x, const void *y);
void nf__vec_dot_q5_0_q8_0_avx512(int n, float *s, const void *x, const void *y);
void nf__vec_dot_q5_1_q8_1_avx512(int n, float *s, const void *x, const void *y);
void nf__vec_dot_iq4_nl_q8_0_avx512(int n, float *s, const void *x, const void *y);
void nf__vec_dot_q2_K_q8_K_avx512(int n, float *s, const void *x, const void *y);
void nf__vec_dot_q3_K_q8_K_avx512(int n, float *s, const void *x, const void *y);
void nf__vec_dot_iq4_xs_q8_K_avx512(int n, float *s, const void *x, const void *y);

/* Multi-token kernels (quants.h nf_vec_dot_mat_fn): scalar references and single-row-made
 * paths (quants_mat.c), register-blocked ones (quants_mat_avx2.c, quants_mat_avx512.c). */
#define NF__MAT_DECL(fn)                                                                    \
    void fn(int n, float *s, size_t ld, const void *x, size_t bx, const void *y, size_t by, \
            int nrows, int ncols)
NF__MAT_DECL(nf__vec_dot_f32_mat_ref);
NF__MAT_DECL(nf__vec_dot_f16_mat_ref);
NF__MAT_DECL(nf__vec_dot_bf16_mat_ref);
NF__MAT_DECL(nf__vec_dot_q4_0_q8_0_ref_mat);
NF__MAT_DECL(nf__vec_dot_q8_0_q8_0_ref_mat);
NF__MAT_DECL(nf__vec_dot_q4_K_q8_K_ref_mat);
NF__MAT_DECL(nf__vec_dot_q5_K_q8_K_ref_mat);
NF__MAT_DECL(nf__vec_dot_q6_K_q8_K_ref_mat);
NF__MAT_DECL(nf__vec_dot_q8_K_q8_K_ref_mat);
#define NF__MAT_DECL_ALL(fn)     \
    NF__MAT_DECL(fn##_ref_mat);  \
    NF__MAT_DECL(fn##_avx2_mat); \
    NF__MAT_DECL(fn##_avx512_mat)
/* The types of quants_ext.c: references made of the scalar vec_dot (quants_mat.c), blocked
 * kernels in quants_mat_ext_avx2.c / quants_mat_ext_avx512.c (q2_K, q3_K: quants_mat_avx512.c). */
#define NF__MAT_DECL_EXT(fn)     \
    NF__MAT_DECL(fn##_ref_mat);  \
    NF__MAT_DECL(fn##_mat_avx2); \
    NF__MAT_DECL(fn##_mat_avx512)
NF__MAT_DECL_EXT(nf__vec_dot_q4_1_q8_1);
NF__MAT_DECL_EXT(nf__vec_dot_q5_0_q8_0);
NF__MAT_DECL_EXT(nf__vec_dot_q5_1_q8_1);
NF__MAT_DECL_EXT(nf__vec_dot_iq4_nl_q8_0);
NF__MAT_DECL_EXT(nf__vec_dot_q2_K_q8_K);
NF__MAT_DECL_EXT(nf__vec_dot_q3_K_q8_K);
NF__MAT_DECL_EXT(nf__vec_dot_iq4_xs_q8_K);
/* bf16 in tinyBLAS's AVX512-BF16 order: emulated with AVX2, vdpbf16ps where the CPU has
 * AVX512-BF16 (nf_cpu_has_avx512bf16). */
NF__MAT_DECL(nf__vec_dot_bf16_mat_avx2);
NF__MAT_DECL(nf__vec_dot_bf16_mat_avx512bf16);
bool nf_cpu_has_avx512bf16(void);
/* Prompt attention's KQV: out[d] = sum over i < n of v[i * vs + d] * p[i] for d < nd (V's nd
 * columns, rows vs F16 values apart, times the softmax row p), each output in tinyBLAS's order
 * (lane i % 16, the lanes reduced as _mm512_reduce_add_ps): bit for bit what the F32
 * multi-token kernels give on each column gathered to F32. The SIMD paths take 16 (AVX-512) or
 * 8 (AVX2) columns per vector, so V's rows are read as they lie in the cache. */
void nf__vec_dot_f16_cols_ref(int n, float *out, int nd, const nf_fp16_t *v, size_t vs,
                              const float *p);
void nf__vec_dot_f16_cols_avx2(int n, float *out, int nd, const nf_fp16_t *v, size_t vs,
                               const float *p);
void nf__vec_dot_f16_cols_avx512(int n, float *out, int nd, const nf_fp16_t *v, size_t vs,
                                 const float *p);
NF__MAT_DECL(nf__vec_dot_f32_mat_avx2);
NF__MAT_DECL(nf__vec_dot_f16_mat_avx2);
NF__MAT_DECL(nf__vec_dot_q4_0_q8_0_mat_avx2);
NF__MAT_DECL(nf__vec_dot_q8_0_q8_0_mat_avx2);
NF__MAT_DECL(nf__vec_dot_f32_mat_avx512);
NF__MAT_DECL(nf__vec_dot_f16_mat_avx512);
NF__MAT_DECL(nf__vec_dot_q4_0_q8_0_mat_avx512);
NF__MAT_DECL(nf__vec_dot_q8_0_q8_0_mat_avx512);
/* The q4_0 prompt GEMMs on activations packed once by nf__q4_0_pack_act_avx2 (quants.h
 * nf_q4_0_packed). */
NF__MAT_DECL(nf__vec_dot_q4_0_packed_mat_avx2);
NF__MAT_DECL(nf__vec_dot_q4_0_packed_mat_avx512);
void nf__q4_0_pack_act_avx2(const float *x, int n, int ncols, nf_from_float_fn q, void *out);
NF__MAT_DECL(nf__vec_dot_q4_K_q8_K_mat_avx2);
NF__MAT_DECL(nf__vec_dot_q5_K_q8_K_mat_avx2);
NF__MAT_DECL(nf__vec_dot_q6_K_q8_K_mat_avx2);
NF__MAT_DECL(nf__vec_dot_q4_K_q8_K_mat_avx512);
NF__MAT_DECL(nf__vec_dot_q5_K_q8_K_mat_avx512);
NF__MAT_DECL(nf__vec_dot_q6_K_q8_K_mat_avx512);

/* MXFP4 (quants_mxfp4.c, quants_mxfp4_avx2.c, quants_mxfp4_avx512.c). */
void nf__to_float_mxfp4(const void *x, float *y, int64_t n);
void nf__quantize_row_mxfp4_ref(const float *x, void *y, int64_t n);
void nf__vec_dot_mxfp4_q8_0_ref(int n, float *s, const void *x, const void *y);
void nf__vec_dot_mxfp4_q8_0_avx2(int n, float *s, const void *x, const void *y);
void nf__vec_dot_mxfp4_q8_0_avx512(int n, float *s, const void *x, const void *y);
NF__MAT_DECL_ALL(nf__vec_dot_mxfp4_q8_0);

/* Decodes the 6-bit scale and min of sub-block j (0..7) of a q4_K/q5_K block. */
static inline void nf__get_scale_min_k4(int j, const uint8_t *q, uint8_t *sc, uint8_t *m)
{
    if (j < 4) {
        *sc = q[j] & 63;
        *m = q[j + 4] & 63;
    } else {
        *sc = (uint8_t)((q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4));
        *m = (uint8_t)((q[j + 4] >> 4) | ((q[j] >> 6) << 4));
    }
}

/* The 6-bit scale (0..63) of sub-block j (0..7) of an iq4_xs block. */
static inline int nf__iq4_xs_scale(const nf_block_iq4_xs *b, int j)
{
    return ((b->scales_l[j / 2] >> (4 * (j % 2))) & 0xF) | (((b->scales_h >> (2 * j)) & 3) << 4);
}

/* The 16 signed scales (-32..31) of a q3_K block, unpacked a word at a time (the SIMD
 * kernels' form of quants_ext.c's q3_K_scale). */
static inline void nf__q3_K_scales(const uint8_t *q, int8_t sc[16])
{
    uint32_t a[3];
    memcpy(a, q, 12);
    const uint32_t k2 = 0x0f0f0f0f, k1 = 0x03030303;
    const uint32_t u[4] = {(a[0] & k2) | ((a[2] & k1) << 4),
                           (a[1] & k2) | (((a[2] >> 2) & k1) << 4),
                           ((a[0] >> 4) & k2) | (((a[2] >> 4) & k1) << 4),
                           ((a[1] >> 4) & k2) | (((a[2] >> 6) & k1) << 4)};
    memcpy(sc, u, 16);
    for (int k = 0; k < 16; k++)
        sc[k] = (int8_t)(sc[k] - 32);
}

#endif
