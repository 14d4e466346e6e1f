/* attn.c - the scalar references of the one-token attention kernels (attn.h) and the choice of
 * their SIMD paths. */
#include <math.h>

#include "attn.h"
#include "quants_impl.h"
#include "quants_rows.h"

double nf__softmax_exp_ref(float *y, const float *x, int n, float max)
{
    double sum = 0.0;
    int i = 0;
    for (; i + 16 <= n; i += 16) {
        for (int l = 0; l < 16; l++)
            y[i + l] = nf__v_expf_ref(x[i + l] - max);
        sum += (double)nf__hsum16(y + i);
    }
    for (; i < n; i++) {
        y[i] = expf(x[i] - max);
        sum += (double)y[i];
    }
    return sum;
}

void nf__scale_round_f16_ref(float *x, int n, float s)
{
    for (int i = 0; i < n; i++)
        x[i] = nf_fp16_to_fp32(nf_fp32_to_fp16(x[i] * s));
}

void nf__attn_kqv_f16_ref(float *out, int nd, const nf_fp16_t *v, size_t vs, const float *p, int n,
                          int nv, float *vcol)
{
    const int ne = nv < n ? nv : n;
    for (int d = 0; d < nd; d++) {
        for (int i = 0; i < ne; i++)
            vcol[i] = nf_fp16_to_fp32(v[(size_t)i * vs + d]);
        out[d] = nf__ggml_dot_ref(vcol, p, false, n, nv);
    }
}

void nf__attn_kqv_tile_ref(float *out, size_t ldo, int nd, const nf_fp16_t *v, size_t vs,
                           const float *p, size_t ldp, int nq, int n, float *lanes)
{
    (void)lanes;
    for (int q = 0; q < nq; q++)
        nf__vec_dot_f16_cols_ref(n, out + (size_t)q * ldo, nd, v, vs, p + (size_t)q * ldp);
}

/* The SIMD paths exist for AVX2 (with FMA and F16C) and AVX-512; an isa the CPU lacks gets the
 * reference, as nf_vec_dot_for would give no path. */
static enum nf_isa usable(enum nf_isa isa)
{
    return isa <= nf_cpu_best_isa() ? isa : NF_ISA_SCALAR;
}

nf_softmax_exp_fn nf_softmax_exp_for(enum nf_isa isa)
{
    switch (usable(isa)) {
    case NF_ISA_AVX512: return nf__softmax_exp_avx512;
    case NF_ISA_AVX2: return nf__softmax_exp_avx2;
    default: return nf__softmax_exp_ref;
    }
}

nf_scale_round_f16_fn nf_scale_round_f16_for(enum nf_isa isa)
{
    switch (usable(isa)) {
    case NF_ISA_AVX512: return nf__scale_round_f16_avx512;
    case NF_ISA_AVX2: return nf__scale_round_f16_avx2;
    default: return nf__scale_round_f16_ref;
    }
}

nf_attn_kqv_fn nf_attn_kqv_for(enum nf_isa isa)
{
    switch (usable(isa)) {
    case NF_ISA_AVX512: return nf__attn_kqv_f16_avx512;
    case NF_ISA_AVX2: return nf__attn_kqv_f16_avx2;
    default: return nf__attn_kqv_f16_ref;
    }
}

nf_attn_kqv_tile_fn nf_attn_kqv_tile_for(enum nf_isa isa)
{
    switch (usable(isa)) {
    case NF_ISA_AVX512: return nf__attn_kqv_tile_avx512;
    case NF_ISA_AVX2: return nf__attn_kqv_tile_avx2;
    default: return nf__attn_kqv_tile_ref;
    }
}
