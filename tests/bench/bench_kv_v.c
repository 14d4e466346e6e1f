/* bench_kv_v.c - the attention walk's F16 V sums (kv_quant.h) per path: one decode step's V
 * rows of one layer weighted into the lane sums as nf_walk_v does (model_forward.c), for a
 * 7B-shaped layer (32 heads of 128 values, one KV head per head) at several context depths.
 * `bench_kv_v [DEPTH...]` (default 512 4096); prints one table: microseconds per layer and the
 * GB/s of V rows read, single-threaded, for the scalar reference and the AVX2 path. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kv_quant.h"
#include "nf_time.h"

enum { N_HEAD = 32, HD = 128, LANES = 64, REPS = 5 };

/* One layer's V sums over n cells: head h's cells' rows (kvd = N_HEAD * HD halves apart) into
 * its 64 lane rows of HD sums. Returns the best time of REPS in ns. */
static uint64_t run(nf_kv_f16_fn axpy, const nf_fp16_t *v, const float *p, float *acc, int n)
{
    uint64_t best = UINT64_MAX;
    for (int r = 0; r < REPS; r++) {
        memset(acc, 0, sizeof(float) * (size_t)N_HEAD * LANES * HD);
        const uint64_t t0 = nf_now_ns();
        for (int h = 0; h < N_HEAD; h++) {
            float *a = acc + (size_t)h * LANES * HD;
            for (int i = 0; i < n; i++)
                axpy(a + (size_t)(i & (LANES - 1)) * HD, p[i],
                     v + (size_t)i * N_HEAD * HD + (size_t)h * HD, HD);
        }
        const uint64_t dt = nf_now_ns() - t0;
        best = dt < best ? dt : best;
    }
    return best;
}

int main(int argc, char **argv)
{
    int depths[16] = {512, 4096}, nd = 2;
    if (argc > 1) {
        nd = 0;
        for (int i = 1; i < argc && nd < 16; i++)
            depths[nd++] = atoi(argv[i]);
    }
    int max = 0;
    for (int i = 0; i < nd; i++) {
        if (depths[i] < 1) {
            fprintf(stderr, "bench_kv_v: depth '%s' is not a positive integer\n", argv[i + 1]);
            return 2;
        }
        max = depths[i] > max ? depths[i] : max;
    }
    nf_fp16_t *v = malloc(sizeof(nf_fp16_t) * (size_t)max * N_HEAD * HD);
    float *p = malloc(sizeof(float) * (size_t)max);
    float *acc = malloc(sizeof(float) * (size_t)N_HEAD * LANES * HD);
    float *acc2 = malloc(sizeof(float) * (size_t)N_HEAD * LANES * HD);
    if (!v || !p || !acc || !acc2) {
        fprintf(stderr, "bench_kv_v: out of memory\n");
        return 1;
    }
    uint64_t s = 0x9e3779b97f4a7c15ull;
    for (size_t i = 0; i < (size_t)max * N_HEAD * HD; i++) {
        s ^= s << 13, s ^= s >> 7, s ^= s << 17;
        v[i] = nf_fp32_to_fp16((float)(s >> 40) / (float)(1 << 24) - 0.5f);
    }
    for (int i = 0; i < max; i++)
        p[i] = 1.0f / (float)(i + 1);
    printf("| depth | path | us / layer | GB/s of V rows | speed-up |\n|---|---|---|---|---|\n");
    for (int d = 0; d < nd; d++) {
        const int n = depths[d];
        const double bytes = (double)n * N_HEAD * HD * sizeof(nf_fp16_t);
        const uint64_t t_ref = run(nf__kv_axpy_f16_ref, v, p, acc, n);
        memcpy(acc2, acc, sizeof(float) * (size_t)N_HEAD * LANES * HD);
        const uint64_t t_simd = run(nf__kv_axpy_f16_avx2, v, p, acc, n);
        if (memcmp(acc, acc2, sizeof(float) * (size_t)N_HEAD * LANES * HD) != 0) {
            fprintf(stderr, "bench_kv_v: the AVX2 sums differ from the reference's\n");
            return 1;
        }
        printf("| %d | reference | %.1f | %.2f | |\n", n, (double)t_ref / 1e3,
               bytes / (double)t_ref);
        printf("| %d | avx2 | %.1f | %.2f | %.2fx |\n", n, (double)t_simd / 1e3,
               bytes / (double)t_simd, (double)t_ref / (double)t_simd);
    }
    free(v);
    free(p);
    free(acc);
    free(acc2);
    return 0;
}
