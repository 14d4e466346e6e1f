/* bench_kernels.c - single-threaded mat-vec throughput (GB/s of weights) per type and ISA, and
 * the multi-token product (GMAC/s) of vec_dot_mat against one vec_dot per row and token.
 * `bench_kernels mat [TOKENS [ROWS [TYPE [ISA]]]]` prints the second table only (default 32
 * tokens, 1024 rows, every type and ISA; `mat 512 4096 q4_0 avx512` is one 7B attention matrix
 * at a 512-token ubatch). `bench_kernels cols [ROWS]` times q4_0's per-row exact multi-token
 * kernel (nf_vec_dot_cols: a batched decode step's products) over a 4096-column matrix of ROWS
 * rows (default 33024, 76 MB: read from memory, as a batched step reads pool tiles) for 1 to 16
 * activation rows. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "quants.h"
#include "quants_rows.h"
#include "nf_time.h"

/* 4096 x 11008 is the FFN shape of a 7B Llama: far bigger than any cache in every type. */
enum { COLS = 4096, ROWS = 11008, REPS = 3 };

static uint64_t rng = 0x243f6a8885a308d3ull;

static uint64_t next(void)
{
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return rng;
}

/* Fills a weight matrix with random bytes, then makes every block scale a normal half so the
 * timing is not skewed by NaNs or denormals. Plain types get random values in [-1, 1). */
static void fill_weights(enum nf_type t, char *w, size_t bytes)
{
    for (size_t i = 0; i + 8 <= bytes; i += 8) {
        uint64_t v = next();
        memcpy(w + i, &v, 8);
    }
    const struct nf_type_traits *tt = nf_type_traits(t);
    if (tt->blck_size == 1) {
        float tmp[256];
        size_t n = bytes / tt->type_size;
        for (size_t i = 0; i < n; i += 256) {
            for (int k = 0; k < 256; k++)
                tmp[k] = (float)(next() >> 40) / (float)(1 << 23) - 1.0f;
            tt->from_float(tmp, w + i * tt->type_size, (int64_t)(n - i < 256 ? n - i : 256));
        }
        return;
    }
    const nf_fp16_t d = nf_fp32_to_fp16(0.01f);
    for (size_t off = 0; off < bytes; off += tt->type_size) {
        switch (t) {
        case NF_TYPE_Q4_0: ((nf_block_q4_0 *)(w + off))->d = d; break;
        case NF_TYPE_Q8_0: ((nf_block_q8_0 *)(w + off))->d = d; break;
        case NF_TYPE_Q4_K:
            ((nf_block_q4_K *)(w + off))->d = d;
            ((nf_block_q4_K *)(w + off))->dmin = d;
            break;
        case NF_TYPE_Q5_K:
            ((nf_block_q5_K *)(w + off))->d = d;
            ((nf_block_q5_K *)(w + off))->dmin = d;
            break;
        case NF_TYPE_Q6_K: ((nf_block_q6_K *)(w + off))->d = d; break;
        case NF_TYPE_Q4_1:
            ((nf_block_q4_1 *)(w + off))->d = d;
            ((nf_block_q4_1 *)(w + off))->m = d;
            break;
        case NF_TYPE_Q5_0: ((nf_block_q5_0 *)(w + off))->d = d; break;
        case NF_TYPE_Q5_1:
            ((nf_block_q5_1 *)(w + off))->d = d;
            ((nf_block_q5_1 *)(w + off))->m = d;
            break;
        case NF_TYPE_IQ4_NL: ((nf_block_iq4_nl *)(w + off))->d = d; break;
        case NF_TYPE_Q2_K:
            ((nf_block_q2_K *)(w + off))->d = d;
            ((nf_block_q2_K *)(w + off))->dmin = d;
            break;
        case NF_TYPE_Q3_K: ((nf_block_q3_K *)(w + off))->d = d; break;
        case NF_TYPE_IQ4_XS: ((nf_block_iq4_xs *)(w + off))->d = d; break;
        default: break;
        }
    }
}

/* Thread CPU seconds: the machine is shared, and CPU time is less disturbed by other
 * processes than wall time. */
static double cpu_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

/* mrows weight rows x mtok tokens (a prompt chunk) through vec_dot one row and token at a time
 * (the prompt path before vec_dot_mat) and through vec_dot_mat, best of REPS, CPU time. */
static void bench_mat(const enum nf_type *types, size_t ntypes, int mtok, int mrows,
                      const char *only_isa)
{
    printf("mat-mat %d rows x %d x %d tokens, one thread, best of %d (thread CPU time)\n", mrows,
           COLS, mtok, REPS);
    printf("%-6s %-7s %14s %14s %8s\n", "type", "isa", "vec_dot GMAC/s", "mat GMAC/s", "speedup");
    float *act = malloc(sizeof(float) * COLS);
    float *out = malloc(sizeof(float) * mrows * mtok);
    char *yq = malloc((size_t)mtok * COLS * 4);
    for (int i = 0; i < COLS; i++)
        act[i] = (float)(next() >> 40) / (float)(1 << 23) - 1.0f;
    for (size_t ti = 0; ti < ntypes; ti++) {
        const enum nf_type t = types[ti];
        const struct nf_type_traits *tt = nf_type_traits(t);
        const size_t rs = nf_row_size(t, COLS), ys = (size_t)COLS * 4;
        char *w = malloc(rs * mrows);
        fill_weights(t, w, rs * mrows);
        for (int k = 0; k < mtok; k++)
            nf_type_traits(tt->vec_dot_type)->from_float(act, yq + (size_t)k * ys, COLS);
        for (int isa = 0; isa <= (int)nf_cpu_best_isa(); isa++) {
            if (only_isa && strcmp(only_isa, nf_isa_name((enum nf_isa)isa)))
                continue;
            nf_vec_dot_fn dot = NULL;
            nf_vec_dot_mat_fn mat = NULL;
            for (int k = isa; k >= 0 && !dot; k--)
                dot = nf_vec_dot_for(t, (enum nf_isa)k);
            for (int k = isa; k >= 0 && !mat; k--)
                mat = nf_vec_dot_mat_for(t, (enum nf_isa)k);
            double td = 1e9, tm = 1e9;
            for (int rep = 0; rep < REPS; rep++) {
                double t0 = cpu_s();
                for (int r = 0; r < mrows; r++)
                    for (int k = 0; k < mtok; k++)
                        dot(COLS, out + (size_t)k * mrows + r, w + (size_t)r * rs,
                            yq + (size_t)k * ys);
                double t1 = cpu_s();
                mat(COLS, out, mrows, w, rs, yq, ys, mrows, mtok);
                double t2 = cpu_s();
                td = t1 - t0 < td ? t1 - t0 : td;
                tm = t2 - t1 < tm ? t2 - t1 : tm;
            }
            const double macs = (double)mrows * COLS * mtok;
            printf("%-6s %-7s %14.2f %14.2f %7.2fx\n", tt->name, nf_isa_name((enum nf_isa)isa),
                   macs / td / 1e9, macs / tm / 1e9, td / tm);
            fflush(stdout);
        }
        free(w);
    }
    free(act);
    free(out);
    free(yq);
}

/* nf_vec_dot_cols(q4_0) over COLS x mrows for 1..16 tokens: ms a call (best of REPS, CPU
 * time), weight GB/s, ns per (row, token). */
static int bench_cols(int mrows)
{
    const nf_vec_dot_mat_fn cols = nf_vec_dot_cols(NF_TYPE_Q4_0);
    if (!cols) {
        fprintf(stderr, "bench_kernels: no q4_0 cols kernel\n");
        return 1;
    }
    enum { MAXTOK = 16 };
    const size_t rs = nf_row_size(NF_TYPE_Q4_0, COLS), ys = nf_row_size(NF_TYPE_Q8_0, COLS);
    char *w = malloc(rs * (size_t)mrows), *yq = malloc(ys * MAXTOK);
    float *act = malloc(COLS * sizeof(float)), *out = malloc(sizeof(float) * mrows * MAXTOK);
    if (!w || !yq || !act || !out)
        return 1;
    fill_weights(NF_TYPE_Q4_0, w, rs * (size_t)mrows);
    for (int k = 0; k < MAXTOK; k++) {
        for (int i = 0; i < COLS; i++)
            act[i] = (float)(next() >> 40) / (float)(1 << 23) - 1.0f;
        nf_type_traits(NF_TYPE_Q8_0)->from_float(act, yq + (size_t)k * ys, COLS);
    }
    printf("q4_0 cols kernel, %d x %d (%.1f MB), one thread, isa %s, best of %d\n", mrows, COLS,
           rs * (double)mrows / 1e6, nf_isa_name(nf_kernels_isa()), REPS);
    printf("%6s %10s %12s %14s\n", "tokens", "ms", "weight GB/s", "ns/row/token");
    static const int toks[] = {1, 2, 4, 8, 12, 16};
    for (size_t i = 0; i < sizeof(toks) / sizeof(toks[0]); i++) {
        const int nt = toks[i];
        double best = 1e9;
        for (int rep = 0; rep < REPS; rep++) {
            double t0 = cpu_s();
            cols(COLS, out, (size_t)mrows, w, rs, yq, ys, mrows, nt);
            double t1 = cpu_s();
            best = t1 - t0 < best ? t1 - t0 : best;
        }
        printf("%6d %10.2f %12.2f %14.3f\n", nt, best * 1e3, rs * (double)mrows / best / 1e9,
               best * 1e9 / ((double)mrows * nt));
        fflush(stdout);
    }
    free(w);
    free(yq);
    free(act);
    free(out);
    return 0;
}

int main(int argc, char **argv)
{
    static const enum nf_type types[] = {NF_TYPE_F32,    NF_TYPE_F16,  NF_TYPE_BF16,  NF_TYPE_Q8_0,
                                         NF_TYPE_Q4_0,   NF_TYPE_Q4_1, NF_TYPE_Q5_0,  NF_TYPE_Q5_1,
                                         NF_TYPE_IQ4_NL, NF_TYPE_Q2_K, NF_TYPE_Q3_K,  NF_TYPE_Q4_K,
                                         NF_TYPE_Q5_K,   NF_TYPE_Q6_K, NF_TYPE_IQ4_XS};
    const size_t ntypes = sizeof(types) / sizeof(types[0]);
    if (argc > 1 && !strcmp(argv[1], "cols")) {
        const int mrows = argc > 2 ? atoi(argv[2]) : 33024;
        if (mrows < 1 || mrows > 1 << 20) {
            fprintf(stderr, "bench_kernels: ROWS must be 1..1048576\n");
            return 2;
        }
        return bench_cols(mrows);
    }
    if (argc > 1 && !strcmp(argv[1], "mat")) {
        const int mtok = argc > 2 ? atoi(argv[2]) : 32, mrows = argc > 3 ? atoi(argv[3]) : 1024;
        if (mtok < 1 || mtok > 4096 || mrows < 1 || mrows > 65536) {
            fprintf(stderr, "bench_kernels: TOKENS must be 1..4096 and ROWS 1..65536\n");
            return 2;
        }
        for (size_t ti = 0; argc > 4 && ti < ntypes; ti++)
            if (!strcmp(argv[4], nf_type_traits(types[ti])->name)) {
                bench_mat(&types[ti], 1, mtok, mrows, argc > 5 ? argv[5] : NULL);
                return 0;
            }
        if (argc > 4) {
            fprintf(stderr, "bench_kernels: unknown type '%s'\n", argv[4]);
            return 2;
        }
        bench_mat(types, ntypes, mtok, mrows, NULL);
        return 0;
    }
    float *act = malloc(COLS * sizeof(float));
    float *out = malloc(ROWS * sizeof(float));
    void *yq = malloc(COLS * 4);
    for (int i = 0; i < COLS; i++)
        act[i] = (float)(next() >> 40) / (float)(1 << 23) - 1.0f;

    printf("mat-vec %d x %d, one thread, best of %d; cpu %s, NF_ISA choice %s\n", ROWS, COLS, REPS,
           nf_isa_name(nf_cpu_best_isa()), nf_isa_name(nf_kernels_isa()));
    printf("%-6s %-7s %10s %10s %12s %12s\n", "type", "isa", "MiB", "quant us", "vec_dot GB/s",
           "rows GB/s");
    for (size_t ti = 0; ti < sizeof(types) / sizeof(types[0]); ti++) {
        enum nf_type t = types[ti];
        const struct nf_type_traits *tt = nf_type_traits(t);
        size_t rs = nf_row_size(t, COLS), bytes = rs * ROWS;
        char *w = malloc(bytes);
        if (!w) {
            fprintf(stderr, "bench_kernels: out of memory for %s\n", tt->name);
            return 1;
        }
        fill_weights(t, w, bytes);
        for (int isa = 0; isa <= (int)nf_cpu_best_isa(); isa++) {
            nf_vec_dot_fn dot = NULL;
            nf_vec_dot_rows_fn rows = NULL;
            nf_from_float_fn q = NULL;
            for (int k = isa; k >= 0 && !dot; k--)
                dot = nf_vec_dot_for(t, (enum nf_isa)k);
            for (int k = isa; k >= 0 && !rows; k--)
                rows = nf_vec_dot_rows_for(t, (enum nf_isa)k);
            for (int k = isa; k >= 0 && !q; k--)
                q = nf_from_float_for(tt->vec_dot_type, (enum nf_isa)k);
            if (!q)
                q = nf_type_traits(tt->vec_dot_type)->from_float;
            double tq = 1e9, td = 1e9, tr = 1e9;
            for (int rep = 0; rep < REPS; rep++) {
                double t0 = nf_now_s();
                q(act, yq, COLS);
                double t1 = nf_now_s();
                for (int r = 0; r < ROWS; r++)
                    dot(COLS, out + r, w + (size_t)r * rs, yq);
                double t2 = nf_now_s();
                rows(COLS, out, rs, w, yq, ROWS);
                double t3 = nf_now_s();
                tq = t1 - t0 < tq ? t1 - t0 : tq;
                td = t2 - t1 < td ? t2 - t1 : td;
                tr = t3 - t2 < tr ? t3 - t2 : tr;
            }
            printf("%-6s %-7s %10.1f %10.1f %12.2f %12.2f\n", tt->name,
                   nf_isa_name((enum nf_isa)isa), (double)bytes / (1 << 20), tq * 1e6,
                   (double)bytes / td / 1e9, (double)bytes / tr / 1e9);
            fflush(stdout);
        }
        free(w);
    }
    free(act);
    free(out);
    free(yq);
    bench_mat(types, ntypes, 32, 1024, NULL);
    return 0;
}
