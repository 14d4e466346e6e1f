/* bench_membw.c - streaming-read bandwidth of this machine's DRAM, the bound of a mat-vec.
 *
 * A decode step reads every weight once, so its speed is at most DRAM bandwidth / bytes per
 * token. This program reads a buffer much larger than the caches (default 1 GiB) with 1 and
 * 2 threads, each thread summing its contiguous half with 64-byte loads (as the q4_0 row
 * kernels stream their rows), and prints the best of several passes in GB/s (10^9 bytes),
 * once with the buffer in 4 KiB pages and once advised to transparent huge pages.
 *
 * Usage: bench_membw [MIB [PASSES]] */
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

#include "nf_time.h"

struct part {
    const uint64_t *p;
    size_t n; /* uint64_t words, a multiple of 32 */
    uint64_t sum;
};

/* A cache line as one vector (GCC vector extension: SSE2 in a portable build, wider with
 * -march=native); four lines in flight per iteration, each into its own accumulator. */
typedef uint64_t nf_line __attribute__((vector_size(64), aligned(64)));

/* Sums the part's words: the loads are the whole cost. */
static void *read_part(void *arg)
{
    struct part *pt = arg;
    const nf_line *l = (const nf_line *)pt->p;
    nf_line a0 = {0}, a1 = {0}, a2 = {0}, a3 = {0};
    for (size_t i = 0; i < pt->n / 8; i += 4) {
        a0 += l[i];
        a1 += l[i + 1];
        a2 += l[i + 2];
        a3 += l[i + 3];
    }
    a0 ^= a1 ^ a2 ^ a3;
    uint64_t s = 0;
    for (int k = 0; k < 8; k++)
        s ^= a0[k];
    pt->sum = s;
    return NULL;
}

/* Seconds for one pass over words[0..n) split into nth contiguous parts. */
static double pass(const uint64_t *words, size_t n, int nth, uint64_t *sink)
{
    struct part pt[2] = {{0}};
    pthread_t th[2];
    size_t per = n / (size_t)nth / 32 * 32;
    double t0 = nf_now_s();
    for (int i = 0; i < nth; i++) {
        pt[i] = (struct part){.p = words + (size_t)i * per, .n = per};
        if (i > 0 && pthread_create(&th[i], NULL, read_part, &pt[i]) != 0) {
            fprintf(stderr, "bench_membw: pthread_create failed\n");
            exit(1);
        }
    }
    read_part(&pt[0]);
    for (int i = 1; i < nth; i++)
        pthread_join(th[i], NULL);
    double t = nf_now_s() - t0;
    for (int i = 0; i < nth; i++)
        *sink ^= pt[i].sum;
    return t;
}

int main(int argc, char **argv)
{
    size_t mib = argc > 1 ? strtoul(argv[1], NULL, 10) : 1024;
    int passes = argc > 2 ? atoi(argv[2]) : 5;
    if (mib < 64 || passes < 1) {
        fprintf(stderr, "usage: bench_membw [MIB >= 64 [PASSES >= 1]]\n");
        return 2;
    }
    size_t bytes = mib << 20, n = bytes / sizeof(uint64_t);
    uint64_t sink = 0;
    printf("streaming read of %zu MiB, best of %d passes\n", mib, passes);
    printf("pages  threads   GB/s\n");
    for (int huge = 0; huge <= 1; huge++) {
        uint64_t *words = aligned_alloc(2 << 20, bytes);
        if (!words) {
            fprintf(stderr, "bench_membw: cannot allocate %zu MiB\n", mib);
            return 1;
        }
        (void)madvise(words, bytes, huge ? MADV_HUGEPAGE : MADV_NOHUGEPAGE);
        for (size_t i = 0; i < n; i++) /* touch every page, and no zero-page sharing */
            words[i] = i * 0x9e3779b97f4a7c15ull;
        for (int nth = 1; nth <= 2; nth++) {
            double best = 1e30;
            for (int r = 0; r < passes; r++) {
                double t = pass(words, n, nth, &sink);
                best = t < best ? t : best;
            }
            printf("%-6s %7d %6.2f\n", huge ? "THP" : "4K", nth,
                   (double)(n / (size_t)nth / 32 * 32 * (size_t)nth) * 8.0 / best / 1e9);
        }
        free(words);
    }
    fflush(stdout);
    fprintf(stderr, "(checksum %llx)\n", (unsigned long long)sink);
    return 0;
}
