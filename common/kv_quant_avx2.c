/* kv_quant_avx2.c - AVX2 paths of the KV cache's V kernels (kv_quant.h): 8 lanes, one fused
 * multiply-add (or product) per element, bit-identical to the references in kv_quant.c. */
#include <immintrin.h>
#include <math.h>

#include "kv_quant.h"

void nf__kv_axpy_q8_0_avx2(float *out, float a, const void *row, int n)
{
    const nf_block_q8_0 *b = row;
    const __m256 va = _mm256_set1_ps(a);
    for (int ib = 0; ib < n / NF_QK8_0; ib++) {
        const __m256 d = _mm256_set1_ps(nf_fp16_to_fp32(b[ib].d));
        float *o = out + (size_t)ib * NF_QK8_0;
        for (int j = 0; j < NF_QK8_0; j += 8) {
            const __m128i q8 = _mm_loadl_epi64((const __m128i *)(b[ib].qs + j));
            const __m256 x = _mm256_mul_ps(d, _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(q8)));
            _mm256_storeu_ps(o + j, _mm256_fmadd_ps(va, x, _mm256_loadu_ps(o + j)));
        }
    }
}

void nf__kv_axpy_q4_0_avx2(float *out, float a, const void *row, int n)
{
    const nf_block_q4_0 *b = row;
    const __m256 va = _mm256_set1_ps(a);
    const __m128i m4 = _mm_set1_epi8(0x0F), e8 = _mm_set1_epi8(8);
    for (int ib = 0; ib < n / NF_QK4_0; ib++) {
        const __m256 d = _mm256_set1_ps(nf_fp16_to_fp32(b[ib].d));
        float *o = out + (size_t)ib * NF_QK4_0;
        const __m128i qs = _mm_loadu_si128((const __m128i *)b[ib].qs);
        /* elements 0..15 are the low nibbles, 16..31 the high ones, each minus 8 */
        const __m128i lo = _mm_sub_epi8(_mm_and_si128(qs, m4), e8);
        const __m128i hi = _mm_sub_epi8(_mm_and_si128(_mm_srli_epi16(qs, 4), m4), e8);
        const __m128i parts[4] = {lo, _mm_srli_si128(lo, 8), hi, _mm_srli_si128(hi, 8)};
        for (int p = 0; p < 4; p++) {
            const __m256 x = _mm256_mul_ps(d, _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(parts[p])));
            _mm256_storeu_ps(o + 8 * p, _mm256_fmadd_ps(va, x, _mm256_loadu_ps(o + 8 * p)));
        }
    }
}

/* F16C converts halves exactly, as nf_fp16_to_fp32; the tail is the reference's loop. */
void nf__kv_axpy_f16_avx2(float *out, float a, const nf_fp16_t *row, int n)
{
    const __m256 va = _mm256_set1_ps(a);
    int i = 0;
    for (; i + 8 <= n; i += 8) {
        const __m256 x = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(row + i)));
        _mm256_storeu_ps(out + i, _mm256_fmadd_ps(va, x, _mm256_loadu_ps(out + i)));
    }
    for (; i < n; i++)
        out[i] = fmaf(a, nf_fp16_to_fp32(row[i]), out[i]);
}

void nf__kv_mul_f16_avx2(float *out, float a, const nf_fp16_t *row, int n)
{
    const __m256 va = _mm256_set1_ps(a);
    int i = 0;
    for (; i + 8 <= n; i += 8) {
        const __m256 x = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(row + i)));
        _mm256_storeu_ps(out + i, _mm256_mul_ps(va, x));
    }
    for (; i < n; i++)
        out[i] = a * nf_fp16_to_fp32(row[i]);
}
