/* predictor.c - randomized SVD of ffn_gate into a low-rank predictor, and its scores. */
#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "nf_err.h"
#include "predictor.h"

#define OVERSAMPLE 8 /* extra random directions beyond the rank (Halko et al. suggest 5-10) */

void nf__madd4x4(float *const y[4], const float *const x[4], const float c[4][4], int k)
{
    for (int r = 0; r < 4; r++)
        for (int i = 0; i < k; i++)
            y[r][i] +=
                c[r][0] * x[0][i] + c[r][1] * x[1][i] + c[r][2] * x[2][i] + c[r][3] * x[3][i];
}

typedef void (*madd_fn)(float *const y[4], const float *const x[4], const float c[4][4], int k);

static madd_fn pick_madd(void)
{
    nf_kernels_init();
    return nf_kernels_isa() >= NF_ISA_AVX2 ? nf__madd4x4_avx2 : nf__madd4x4;
}

/* splitmix64, and standard normal samples from it (Box-Muller). */
static uint64_t next_u64(uint64_t *s)
{
    uint64_t z = (*s += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

static float gaussian(uint64_t *s)
{
    double u1 = ((double)(next_u64(s) >> 11) + 1.0) / 9007199254740993.0;
    double u2 = (double)(next_u64(s) >> 11) / 9007199254740992.0;
    return (float)(sqrt(-2.0 * log(u1)) * cos(6.283185307179586 * u2));
}

/* The source matrix, dequantized 4 rows at a time into rows[4] (n4 floats each, zero-padded). */
struct wsrc {
    const uint8_t *w;
    const struct nf_type_traits *tr;
    size_t row_size;
    int64_t m, n, m4, n4;
    float *rows; /* (4, n4) */
};

static void load_rows(struct wsrc *s, int64_t i0)
{
    for (int r = 0; r < 4; r++) {
        float *dst = s->rows + (size_t)r * (size_t)s->n4;
        if (i0 + r < s->m)
            s->tr->to_float(s->w + (size_t)(i0 + r) * s->row_size, dst, s->n);
        else
            memset(dst, 0, (size_t)s->n * sizeof(float));
    }
}

/* Y (m4, k) = W X with X (n4, k). */
static void pass_right(struct wsrc *s, const float *X, float *Y, int k, madd_fn madd)
{
    memset(Y, 0, (size_t)s->m4 * (size_t)k * sizeof(float));
    for (int64_t i = 0; i < s->m4; i += 4) {
        load_rows(s, i);
        float *y[4];
        for (int r = 0; r < 4; r++)
            y[r] = Y + (size_t)(i + r) * (size_t)k;
        for (int64_t j = 0; j < s->n4; j += 4) {
            float c[4][4];
            const float *x[4];
            for (int t = 0; t < 4; t++) {
                x[t] = X + (size_t)(j + t) * (size_t)k;
                for (int r = 0; r < 4; r++)
                    c[r][t] = s->rows[(size_t)r * (size_t)s->n4 + (size_t)(j + t)];
            }
            madd(y, x, c, k);
        }
    }
}

/* Z (n4, k) = W^T Q with Q (m4, k). */
static void pass_left(struct wsrc *s, const float *Q, float *Z, int k, madd_fn madd)
{
    memset(Z, 0, (size_t)s->n4 * (size_t)k * sizeof(float));
    for (int64_t i = 0; i < s->m4; i += 4) {
        load_rows(s, i);
        const float *x[4];
        for (int t = 0; t < 4; t++)
            x[t] = Q + (size_t)(i + t) * (size_t)k;
        for (int64_t j = 0; j < s->n4; j += 4) {
            float c[4][4];
            float *y[4];
            for (int r = 0; r < 4; r++) {
                y[r] = Z + (size_t)(j + r) * (size_t)k;
                for (int t = 0; t < 4; t++)
                    c[r][t] = s->rows[(size_t)t * (size_t)s->n4 + (size_t)(j + r)];
            }
            madd(y, x, c, k);
        }
    }
}

/* Orthonormalizes the k columns of M (rows, k) in place by modified Gram-Schmidt, twice for
 * stability, in a column-major copy T. Columns that vanish (M has lower rank) become zero. */
static void orthonormalize(float *M, int64_t rows, int k, double *T)
{
    for (int64_t i = 0; i < rows; i++)
        for (int c = 0; c < k; c++)
            T[(size_t)c * (size_t)rows + (size_t)i] = M[(size_t)i * (size_t)k + (size_t)c];
    for (int c = 0; c < k; c++) {
        double *v = T + (size_t)c * (size_t)rows;
        double norm0 = 0;
        for (int64_t i = 0; i < rows; i++)
            norm0 += v[i] * v[i];
        for (int pass = 0; pass < 2; pass++) {
            for (int p = 0; p < c; p++) {
                const double *u = T + (size_t)p * (size_t)rows;
                double d = 0;
                for (int64_t i = 0; i < rows; i++)
                    d += u[i] * v[i];
                for (int64_t i = 0; i < rows; i++)
                    v[i] -= d * u[i];
            }
        }
        double norm = 0;
        for (int64_t i = 0; i < rows; i++)
            norm += v[i] * v[i];
        double scale = norm > 1e-10 * norm0 && norm > 0 ? 1.0 / sqrt(norm) : 0.0;
        for (int64_t i = 0; i < rows; i++)
            v[i] *= scale;
    }
    for (int64_t i = 0; i < rows; i++)
        for (int c = 0; c < k; c++)
            M[(size_t)i * (size_t)k + (size_t)c] = (float)T[(size_t)c * (size_t)rows + (size_t)i];
}

/* Eigen-decomposes the symmetric C (k, k) by cyclic Jacobi rotations: on return the diagonal of
 * C holds the eigenvalues and column j of V the eigenvector of C[j][j]. */
static void jacobi_eigen(double *C, double *V, int k)
{
    for (int i = 0; i < k; i++)
        for (int j = 0; j < k; j++)
            V[i * k + j] = i == j;
    for (int sweep = 0; sweep < 60; sweep++) {
        double off = 0, diag = 0;
        for (int i = 0; i < k; i++) {
            diag += C[i * k + i] * C[i * k + i];
            for (int j = i + 1; j < k; j++)
                off += C[i * k + j] * C[i * k + j];
        }
        if (off <= 1e-22 * diag || off == 0)
            break;
        for (int p = 0; p < k; p++) {
            for (int q = p + 1; q < k; q++) {
                double apq = C[p * k + q];
                if (fabs(apq) < 1e-300)
                    continue;
                double theta = (C[q * k + q] - C[p * k + p]) / (2 * apq);
                double t = (theta >= 0 ? 1.0 : -1.0) / (fabs(theta) + sqrt(theta * theta + 1));
                double cs = 1 / sqrt(t * t + 1), sn = t * cs;
                for (int r = 0; r < k; r++) { /* columns p, q */
                    double a = C[r * k + p], b = C[r * k + q];
                    C[r * k + p] = cs * a - sn * b;
                    C[r * k + q] = sn * a + cs * b;
                }
                for (int r = 0; r < k; r++) { /* rows p, q */
                    double a = C[p * k + r], b = C[q * k + r];
                    C[p * k + r] = cs * a - sn * b;
                    C[q * k + r] = sn * a + cs * b;
                }
                for (int r = 0; r < k; r++) {
                    double a = V[r * k + p], b = V[r * k + q];
                    V[r * k + p] = cs * a - sn * b;
                    V[r * k + q] = sn * a + cs * b;
                }
            }
        }
    }
}

int nf_lowrank_fit(const void *w, enum nf_type type, size_t row_size, int64_t m, int64_t n,
                   int rank, int n_power, uint64_t seed, float *A, float *B)
{
    const struct nf_type_traits *tr = nf_type_traits(type);
    if (!w || !A || !B || !tr || !tr->to_float || m < 1 || n < 1 || rank < 1 || rank > m ||
        rank > n || n_power < 0 || n % tr->blck_size)
        return NF_EUSAGE;
    int k = rank + OVERSAMPLE;
    if (k > m)
        k = (int)m;
    if (k > n)
        k = (int)n;
    k = (k + 7) / 8 * 8; /* the kernel works on 8 lanes; extra columns only refine the basis */
    struct wsrc s = {.w = w, .tr = tr, .row_size = row_size, .m = m, .n = n};
    s.m4 = (m + 3) / 4 * 4;
    s.n4 = (n + 3) / 4 * 4;
    int64_t big = s.m4 > s.n4 ? s.m4 : s.n4;
    s.rows = calloc((size_t)(4 * s.n4), sizeof(float));
    float *Y = malloc((size_t)s.m4 * (size_t)k * sizeof(float));
    float *Z = malloc((size_t)s.n4 * (size_t)k * sizeof(float));
    double *T = malloc((size_t)big * (size_t)k * sizeof(double));
    double *C = malloc((size_t)k * (size_t)k * sizeof(double));
    double *V = malloc((size_t)k * (size_t)k * sizeof(double));
    int rc = -ENOMEM;
    if (!s.rows || !Y || !Z || !T || !C || !V)
        goto out;
    madd_fn madd = pick_madd();
    /* Z holds the random test matrix Omega (n, k); padding rows stay zero. */
    uint64_t st = seed ? seed : 0x6E616E6F666C6F77ull;
    memset(Z, 0, (size_t)s.n4 * (size_t)k * sizeof(float));
    for (int64_t j = 0; j < n; j++)
        for (int c = 0; c < k; c++)
            Z[(size_t)j * (size_t)k + (size_t)c] = gaussian(&st);
    pass_right(&s, Z, Y, k, madd); /* Y = W Omega */
    orthonormalize(Y, s.m4, k, T);
    for (int it = 0; it < n_power; it++) {
        pass_left(&s, Y, Z, k, madd); /* Z = W^T Q */
        orthonormalize(Z, s.n4, k, T);
        pass_right(&s, Z, Y, k, madd); /* Y = W Z */
        orthonormalize(Y, s.m4, k, T);
    }
    pass_left(&s, Y, Z, k, madd); /* Z = W^T Q = (Q^T W)^T, (n4, k) */
    /* C = Z^T Z = (Q^T W)(Q^T W)^T, whose top eigenvectors span the best rank-r subspace. */
    for (int a = 0; a < k; a++)
        for (int b = a; b < k; b++) {
            double d = 0;
            for (int64_t j = 0; j < n; j++)
                d += (double)Z[(size_t)j * (size_t)k + (size_t)a] *
                     Z[(size_t)j * (size_t)k + (size_t)b];
            C[a * k + b] = C[b * k + a] = d;
        }
    jacobi_eigen(C, V, k);
    /* Order the eigenpairs by decreasing eigenvalue (selection of the top rank). */
    int *order = malloc((size_t)k * sizeof(int));
    if (!order)
        goto out;
    for (int i = 0; i < k; i++)
        order[i] = i;
    for (int i = 0; i < rank; i++)
        for (int j = i + 1; j < k; j++)
            if (C[order[j] * k + order[j]] > C[order[i] * k + order[i]]) {
                int t = order[i];
                order[i] = order[j];
                order[j] = t;
            }
    /* A = Q U_r (m, rank); B = U_r^T Q^T W = (Z U_r)^T (rank, n). */
    for (int64_t i = 0; i < m; i++)
        for (int r = 0; r < rank; r++) {
            double d = 0;
            for (int c = 0; c < k; c++)
                d += (double)Y[(size_t)i * (size_t)k + (size_t)c] * V[c * k + order[r]];
            A[(size_t)i * (size_t)rank + (size_t)r] = (float)d;
        }
    for (int r = 0; r < rank; r++)
        for (int64_t j = 0; j < n; j++) {
            double d = 0;
            for (int c = 0; c < k; c++)
                d += (double)Z[(size_t)j * (size_t)k + (size_t)c] * V[c * k + order[r]];
            B[(size_t)r * (size_t)n + (size_t)j] = (float)d;
        }
    free(order);
    rc = 0;
out:
    free(s.rows);
    free(Y);
    free(Z);
    free(T);
    free(C);
    free(V);
    return rc;
}

static float elem(const void *p, enum nf_type type, size_t i)
{
    return type == NF_TYPE_F16 ? nf_fp16_to_fp32(((const nf_fp16_t *)p)[i]) : ((const float *)p)[i];
}

void nf_lowrank_scores(float *scores, const void *A, const void *B, enum nf_type type, int64_t m,
                       int64_t n, int rank, const float *x, float *tmp)
{
    for (int r = 0; r < rank; r++) {
        float acc = 0;
        for (int64_t j = 0; j < n; j++)
            acc += elem(B, type, (size_t)r * (size_t)n + (size_t)j) * x[j];
        tmp[r] = acc;
    }
    for (int64_t i = 0; i < m; i++) {
        float acc = 0;
        for (int r = 0; r < rank; r++)
            acc += elem(A, type, (size_t)i * (size_t)rank + (size_t)r) * tmp[r];
        scores[i] = acc;
    }
}

void nf_group_scores(float *out, const float *scores, int64_t m, int group)
{
    for (int64_t g = 0; g < m / group; g++) {
        float s = 0;
        for (int i = 0; i < group; i++)
            s += fabsf(scores[g * group + i]);
        out[g] = s;
    }
}

int nf_lowrank_default_rank(uint64_t weight_bytes, int n_layers, int64_t m, int64_t n,
                            size_t elt_size, double share)
{
    int64_t cap = m < n ? m : n;
    if (n_layers < 1 || cap < 1)
        return 1;
    double r =
        share * (double)weight_bytes / ((double)n_layers * (double)(m + n) * (double)elt_size);
    if (r >= 16)
        r = floor(r / 8) * 8; /* whole SIMD lanes for the score kernels */
    int64_t ri = (int64_t)r;
    if (ri < 1)
        ri = 1;
    return (int)(ri > cap ? cap : ri);
}
