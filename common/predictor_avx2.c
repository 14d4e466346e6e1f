/* predictor_avx2.c - AVX2/FMA inner kernel of the randomized SVD (see predictor.h). */
#include <immintrin.h>

#include "predictor.h"

void nf__madd4x4_avx2(float *const y[4], const float *const x[4], const float c[4][4], int k)
{
    __m256 c00 = _mm256_set1_ps(c[0][0]), c01 = _mm256_set1_ps(c[0][1]);
    __m256 c02 = _mm256_set1_ps(c[0][2]), c03 = _mm256_set1_ps(c[0][3]);
    __m256 c10 = _mm256_set1_ps(c[1][0]), c11 = _mm256_set1_ps(c[1][1]);
    __m256 c12 = _mm256_set1_ps(c[1][2]), c13 = _mm256_set1_ps(c[1][3]);
    __m256 c20 = _mm256_set1_ps(c[2][0]), c21 = _mm256_set1_ps(c[2][1]);
    __m256 c22 = _mm256_set1_ps(c[2][2]), c23 = _mm256_set1_ps(c[2][3]);
    __m256 c30 = _mm256_set1_ps(c[3][0]), c31 = _mm256_set1_ps(c[3][1]);
    __m256 c32 = _mm256_set1_ps(c[3][2]), c33 = _mm256_set1_ps(c[3][3]);
    for (int i = 0; i < k; i += 8) {
        __m256 x0 = _mm256_loadu_ps(x[0] + i), x1 = _mm256_loadu_ps(x[1] + i);
        __m256 x2 = _mm256_loadu_ps(x[2] + i), x3 = _mm256_loadu_ps(x[3] + i);
        __m256 y0 = _mm256_loadu_ps(y[0] + i), y1 = _mm256_loadu_ps(y[1] + i);
        __m256 y2 = _mm256_loadu_ps(y[2] + i), y3 = _mm256_loadu_ps(y[3] + i);
        y0 = _mm256_fmadd_ps(c00, x0, y0);
        y1 = _mm256_fmadd_ps(c10, x0, y1);
        y2 = _mm256_fmadd_ps(c20, x0, y2);
        y3 = _mm256_fmadd_ps(c30, x0, y3);
        y0 = _mm256_fmadd_ps(c01, x1, y0);
        y1 = _mm256_fmadd_ps(c11, x1, y1);
        y2 = _mm256_fmadd_ps(c21, x1, y2);
        y3 = _mm256_fmadd_ps(c31, x1, y3);
        y0 = _mm256_fmadd_ps(c02, x2, y0);
        y1 = _mm256_fmadd_ps(c12, x2, y1);
        y2 = _mm256_fmadd_ps(c22, x2, y2);
        y3 = _mm256_fmadd_ps(c32, x2, y3);
        y0 = _mm256_fmadd_ps(c03, x3, y0);
        y1 = _mm256_fmadd_ps(c13, x3, y1);
        y2 = _mm256_fmadd_ps(c23, x3, y2);
        y3 = _mm256_fmadd_ps(c33, x3, y3);
        _mm256_storeu_ps(y[0] + i, y0);
        _mm256_storeu_ps(y[1] + i, y1);
        _mm256_storeu_ps(y[2] + i, y2);
        _mm256_storeu_ps(y[3] + i, y3);
    }
}
