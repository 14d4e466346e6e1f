/* quants_rows.c - the choice of the per-row exact multi-token kernels (quants_rows.h) and the
 * scalar definition of the forward pass's one-token F32/F16 dot. */
#include <math.h>

#include "quants_impl.h"
#include "quants_rows.h"

nf_vec_dot_mat_fn nf_vec_dot_cols(enum nf_type t)
{
    const struct nf_type_traits *tr = nf_type_traits(t);
    const enum nf_isa isa = nf_kernels_isa();
    switch (t) {
    case NF_TYPE_Q4_0:
        /* The scalar vec_dot_mat is the reference vec_dot per pair; the SIMD ones are not. */
        if (isa == NF_ISA_AVX512)
            return nf__vec_dot_q4_0_q8_0_cols_avx512;
        if (isa == NF_ISA_AVX2)
            return nf__vec_dot_q4_0_q8_0_cols_avx2;
        return tr->vec_dot_mat;
    case NF_TYPE_Q8_0:
    case NF_TYPE_Q2_K:
    case NF_TYPE_Q3_K:
    case NF_TYPE_Q4_K:
    case NF_TYPE_Q5_K:
    case NF_TYPE_Q6_K:
    case NF_TYPE_MXFP4:
        /* Their register-blocked kernels keep vec_dot's order (quants_mat_avx2.c,
         * quants_mat_avx512.c, quants_mxfp4_avx*.c; checked by tests/test_quants_rows.c). */
        return tr->vec_dot_mat;
    default: return NULL;
    }
}

nf_vec_dot_cols_gs_fn nf_vec_dot_cols_gs(enum nf_type t)
{
    if (t == NF_TYPE_Q4_0 && nf_kernels_isa() == NF_ISA_AVX512)
        return nf__vec_dot_q4_0_q8_0_cols_gs_avx512;
    return NULL;
}

nf_vec_dot_rows_fn nf_vec_dot_rows_exact(enum nf_type t)
{
    /* q4_0: the AVX-512 vec_dot is the rows kernel called for one row, and a row's sum does
     * not depend on the other rows of a call; the AVX2 and scalar rows kernels call vec_dot
     * row by row (cpu.c). (q8_0's AVX-512 rows kernel sums in another order than its AVX2
     * vec_dot, which llama.cpp's order requires, so it is not one of these.) */
    if (t == NF_TYPE_Q4_0)
        return nf_type_traits(t)->vec_dot_rows;
    return NULL;
}

nf_vec_dot_mat_fn nf_ggml_dot_cols_for(enum nf_type t, enum nf_isa isa)
{
    if (t != NF_TYPE_F32 && t != NF_TYPE_F16)
        return NULL;
    const bool f16 = t == NF_TYPE_F16;
    switch (isa <= nf_cpu_best_isa() ? isa : NF_ISA_SCALAR) {
    case NF_ISA_AVX512: return f16 ? nf__ggml_dot_f16_cols_avx512 : nf__ggml_dot_f32_cols_avx512;
    case NF_ISA_AVX2: return f16 ? nf__ggml_dot_f16_cols_avx2 : nf__ggml_dot_f32_cols_avx2;
    default: return f16 ? nf__ggml_dot_f16_cols_ref : nf__ggml_dot_f32_cols_ref;
    }
}

nf_vec_dot_mat_fn nf_ggml_dot_cols(enum nf_type t)
{
    return nf_ggml_dot_cols_for(t, nf_kernels_isa());
}

static inline float nf_ld(const void *p, bool f16, int i)
{
    return f16 ? nf_fp16_to_fp32(((const nf_fp16_t *)p)[i]) : ((const float *)p)[i];
}

float nf__ggml_dot_ref(const void *x, const void *y, bool f16, int n, int nv)
{
    const int np = n & ~63, mv = nv < np ? nv : np;
    float acc[4][16] = {{0}};
    for (int i = 0; i < mv; i++)
        acc[(i >> 4) & 3][i & 15] =
            fmaf(nf_ld(x, f16, i), nf_ld(y, f16, i), acc[(i >> 4) & 3][i & 15]);
    for (int l = 0; l < 16; l++) {
        acc[0][l] = acc[0][l] + acc[2][l];
        acc[1][l] = acc[1][l] + acc[3][l];
        acc[0][l] = acc[0][l] + acc[1][l];
    }
    const int ne = nv < n ? nv : n;
    double s = np ? (double)nf__hsum16(acc[0]) : 0.0;
    for (int i = np; i < ne; i++)
        s += (double)(nf_ld(x, f16, i) * nf_ld(y, f16, i));
    return (float)s;
}

#define GGML_COLS_REF(name, f16)                                                              \
    void name(int n, float *s, size_t ld, const void *x, size_t bx, const void *y, size_t by, \
              int nrows, int ncols)                                                           \
    {                                                                                         \
        for (int r = 0; r < nrows; r++)                                                       \
            for (int c = 0; c < ncols; c++)                                                   \
                s[(size_t)c * ld + r] =                                                       \
                    nf__ggml_dot_ref((const char *)x + (size_t)r * bx,                        \
                                     (const char *)y + (size_t)c * by, f16, n, n);            \
    }
GGML_COLS_REF(nf__ggml_dot_f32_cols_ref, false)
GGML_COLS_REF(nf__ggml_dot_f16_cols_ref, true)
