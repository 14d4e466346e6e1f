/* kv_quant.c - KV cache element formats: names, checks, sizes, row store / load, and the
 * portable reference of the V kernels (kv_quant.h says how attention uses them). */
#include <math.h>
#include <string.h>

#include "kv_quant.h"
#include "model.h"
#include "nf_err.h"

static const struct {
    const char *name;
    enum nf_type type;
} kv_types[] = {{"f16", NF_TYPE_F16}, {"q8_0", NF_TYPE_Q8_0}, {"q4_0", NF_TYPE_Q4_0}};

int nf_kv_type_parse(const char *s, enum nf_type *out)
{
    for (size_t i = 0; s && i < sizeof(kv_types) / sizeof(kv_types[0]); i++)
        if (!strcmp(s, kv_types[i].name)) {
            *out = kv_types[i].type;
            return 0;
        }
    return NF_EUSAGE;
}

const char *nf_kv_type_name(enum nf_type t)
{
    for (size_t i = 0; i < sizeof(kv_types) / sizeof(kv_types[0]); i++)
        if (kv_types[i].type == t)
            return kv_types[i].name;
    return "?";
}

bool nf_kv_type_ok(enum nf_type t)
{
    return t == NF_TYPE_F16 || t == NF_TYPE_Q8_0 || t == NF_TYPE_Q4_0;
}

int nf_kv_types_check(const struct nf_hparams *hp, enum nf_type tk, enum nf_type tv, char *err,
                      size_t errlen)
{
    if (!nf_kv_type_ok(tk) || !nf_kv_type_ok(tv))
        return nf_errf(err, errlen, NF_EUSAGE, "KV cache types %s / %s, expected one of %s",
                       nf_kv_type_name(tk), nf_kv_type_name(tv), NF_KV_TYPE_NAMES);
    if (tk == NF_TYPE_F16 && tv == NF_TYPE_F16)
        return 0;
    if (hp->n_lora_kv)
        return nf_errf(err, errlen, NF_EUSAGE,
                       "--cache-type-k %s / --cache-type-v %s: this model (MLA attention) caches "
                       "its compressed latent (%d values a token and layer), always f16; drop "
                       "the flags",
                       nf_kv_type_name(tk), nf_kv_type_name(tv), hp->head_dim);
    if (hp->head_dim % NF_QK8_0)
        return nf_errf(err, errlen, NF_EUSAGE,
                       "--cache-type-k %s / --cache-type-v %s: quantized KV needs a head size "
                       "that is a multiple of 32 (whole blocks per head), this model's is %d",
                       nf_kv_type_name(tk), nf_kv_type_name(tv), hp->head_dim);
    return 0;
}

size_t nf_kv_row_bytes(enum nf_type t, int n)
{
    return nf_row_size(t, n);
}

size_t nf_kv_token_bytes(const struct nf_hparams *hp, enum nf_type tk, enum nf_type tv)
{
    const int kvd = hp->n_head_kv * hp->head_dim;
    if (hp->n_lora_kv) /* the latent (head_dim values), F16 */
        return (size_t)hp->n_layer * nf_kv_row_bytes(NF_TYPE_F16, kvd);
    return (size_t)hp->n_layer * (nf_kv_row_bytes(tk, kvd) + nf_kv_row_bytes(tv, kvd));
}

void nf_kv_store_row(enum nf_type t, void *dst, const float *src, int n)
{
    if (t == NF_TYPE_F16) {
        nf_fp16_t *h = dst;
        for (int i = 0; i < n; i++)
            h[i] = nf_fp32_to_fp16(src[i]);
        return;
    }
    /* ggml's KV copy quantizes with the CPU type traits' from_float: for q8_0 the x86 SIMD
     * quantizer (the activations' one here), for q4_0 the reference. */
    const struct nf_type_traits *tr = nf_type_traits(t);
    nf_from_float_fn q = NULL;
    if (t == NF_TYPE_Q8_0 && nf_kernels_isa() >= NF_ISA_AVX2)
        q = nf_from_float_for(t, NF_ISA_AVX2);
    (q ? q : tr->from_float)(src, dst, n);
}

void nf_kv_load_row(enum nf_type t, float *out, const void *row, int n)
{
    nf_type_traits(t)->to_float(row, out, n);
}

void nf__kv_axpy_q8_0_ref(float *out, float a, const void *row, int n)
{
    const nf_block_q8_0 *b = row;
    for (int ib = 0; ib < n / NF_QK8_0; ib++) {
        const float d = nf_fp16_to_fp32(b[ib].d);
        float *o = out + (size_t)ib * NF_QK8_0;
        for (int j = 0; j < NF_QK8_0; j++)
            o[j] = fmaf(a, d * (float)b[ib].qs[j], o[j]);
    }
}

void nf__kv_axpy_q4_0_ref(float *out, float a, const void *row, int n)
{
    const nf_block_q4_0 *b = row;
    for (int ib = 0; ib < n / NF_QK4_0; ib++) {
        const float d = nf_fp16_to_fp32(b[ib].d);
        float *o = out + (size_t)ib * NF_QK4_0;
        for (int j = 0; j < NF_QK4_0 / 2; j++) {
            const int lo = (b[ib].qs[j] & 0x0F) - 8, hi = (b[ib].qs[j] >> 4) - 8;
            o[j] = fmaf(a, d * (float)lo, o[j]);
            o[j + NF_QK4_0 / 2] = fmaf(a, d * (float)hi, o[j + NF_QK4_0 / 2]);
        }
    }
}

nf_kv_axpy_fn nf_kv_axpy_for(enum nf_type t)
{
    const bool avx2 = nf_kernels_isa() >= NF_ISA_AVX2;
    if (t == NF_TYPE_Q8_0)
        return avx2 ? nf__kv_axpy_q8_0_avx2 : nf__kv_axpy_q8_0_ref;
    if (t == NF_TYPE_Q4_0)
        return avx2 ? nf__kv_axpy_q4_0_avx2 : nf__kv_axpy_q4_0_ref;
    return NULL;
}

void nf__kv_axpy_f16_ref(float *out, float a, const nf_fp16_t *row, int n)
{
    for (int i = 0; i < n; i++)
        out[i] = fmaf(a, nf_fp16_to_fp32(row[i]), out[i]);
}

void nf__kv_mul_f16_ref(float *out, float a, const nf_fp16_t *row, int n)
{
    for (int i = 0; i < n; i++)
        out[i] = a * nf_fp16_to_fp32(row[i]);
}

nf_kv_f16_fn nf_kv_axpy_f16_for(void)
{
    return nf_kernels_isa() >= NF_ISA_AVX2 ? nf__kv_axpy_f16_avx2 : nf__kv_axpy_f16_ref;
}

nf_kv_f16_fn nf_kv_mul_f16_for(void)
{
    return nf_kernels_isa() >= NF_ISA_AVX2 ? nf__kv_mul_f16_avx2 : nf__kv_mul_f16_ref;
}
