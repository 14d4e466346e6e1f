/* bench_kv_walk.c - the attention walk's decode kernels over KV blocks read back from the file
 * (kv_file.h), against the same rows elsewhere in memory.
 *
 * One 7B-shaped layer (32 heads of 128 values, one KV head per head, F16 rows of 8 KiB) of
 * DEPTH positions is written to a KV file in /tmp (or NF_KV_DIR) a row at a time, as decode
 * does, then walked as nf_attn_walk does for one token: the K scores (nf_ggml_dot_cols, one
 * cell a call as nf_walk_k) over the runs of blocks nf_kv_file_need hands out, then the V sums
 * (nf_kv_axpy_f16_for into 64 lane rows per head, as nf_walk_v), in two orders:
 *  - head: each head through the run's cells;
 *  - cell: the run's cells in groups of CELLS, each group through all heads;
 * from these sources of the rows (prepare): the KV file's window (file); a malloc'd copy after
 * 64 MiB of other writes (ram-cold) or right after a pass over it (ram-warm); the copy's pages
 * given back and written again by the CPU (fresh); read with O_DIRECT into the copy's pages
 * (dio-fixed) or into them after they were given back (dio-fresh). Every row's sums are
 * compared with the first's (bit for bit). `bench_kv_walk [DEPTH [REPS]]` (default 4000 5)
 * prints one table: ns per kernel call (one head's 128 values of one cell) and ms per layer,
 * best of REPS, the time in nf_kv_file_need apart. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <fcntl.h>
#include <stdbool.h>
#include <sys/mman.h>
#include <unistd.h>

#include "kv_file.h"
#include "kv_quant.h"
#include "nf_time.h"
#include "quants_rows.h"

enum { N_HEAD = 32, HD = 128, KVD = N_HEAD * HD, LANES = 64, BLOCK = 64, CELLS = 16 };

struct walk {
    nf_vec_dot_mat_fn dot;
    nf_kv_f16_fn axpy;
    const nf_fp16_t *q; /* (N_HEAD, HD) */
    float *sc;          /* (N_HEAD, depth) */
    float *acc;         /* (N_HEAD, LANES, HD) */
    const float *p;     /* (depth) the probabilities */
};

/* Cells [c0, c1) of rows from base (cell c0's), kind 0 (K scores) or 1 (V sums), in order. */
static void run_cells(const struct walk *w, int depth, int kind, const nf_fp16_t *base, int c0,
                      int c1, int cell_major)
{
    const int g = cell_major ? CELLS : c1 - c0;
    for (int a = c0; a < c1; a += g) {
        const int b = a + g < c1 ? a + g : c1;
        for (int h = 0; h < N_HEAD; h++)
            for (int i = a; i < b; i++) {
                const nf_fp16_t *row = base + (size_t)(i - c0) * KVD + (size_t)h * HD;
                if (kind == 0)
                    w->dot(HD, w->sc + (size_t)h * depth + i, 1, row, 0, w->q + (size_t)h * HD, 0,
                           1, 1);
                else
                    w->axpy(w->acc + ((size_t)h * LANES + (size_t)(i & (LANES - 1))) * HD, w->p[i],
                            row, HD);
            }
    }
}

static void walk_reset(struct walk *w, int depth)
{
    memset(w->sc, 0, sizeof(float) * (size_t)N_HEAD * (size_t)depth);
    memset(w->acc, 0, sizeof(float) * (size_t)N_HEAD * LANES * HD);
}

/* One walk of the file's layer; *t_need gets the ns spent in nf_kv_file_need. */
static int walk_file(struct nf_kv_file *kf, struct walk *w, int depth, int cell_major,
                     uint64_t *t_kern, uint64_t *t_need)
{
    const int nb = (depth + BLOCK - 1) / BLOCK;
    *t_kern = *t_need = 0;
    if (nf_kv_file_walk_prefetch(kf, 0, 0) < 0)
        return -1;
    for (int kind = 0; kind < 2; kind++)
        for (int b = 0; b < nb;) {
            const void *base;
            uint64_t t0 = nf_now_ns();
            const int n = nf_kv_file_need(kf, 0, 0, kind, b, nb, &base);
            uint64_t t1 = nf_now_ns();
            if (n < 0)
                return -1;
            const int c0 = b * BLOCK, c1 = (b + n) * BLOCK < depth ? (b + n) * BLOCK : depth;
            run_cells(w, depth, kind, base, c0, c1, cell_major);
            *t_kern += nf_now_ns() - t1;
            *t_need += t1 - t0;
            b += n;
        }
    return nf_kv_file_layer_store(kf, 0, 0, depth);
}

static void scrub(char *junk, size_t n)
{
    for (size_t i = 0; i < n; i += 64)
        junk[i] = (char)(junk[i] + 1);
}

/* The sources of the rows the kernels read (the table's first column). */
enum { SRC_FILE, SRC_COLD, SRC_WARM, SRC_FRESH, SRC_DIO, SRC_DIO_FRESH, SRC_N };

/* The layer's rows in malloc'd memory (k, v), copies of them (ck, cv), the KV file opened
 * with O_DIRECT (fd: V at off_v) and 64 MiB to write over the caches. */
struct rows {
    nf_fp16_t *k, *v, *ck, *cv;
    size_t len, len_file; /* bytes of the rows, of those in the file (whole blocks) */
    off_t off_v;
    int fd;
    char *junk;
    size_t junk_n;
};

/* Puts the rows in place for source src before a timed pass (SRC_WARM: the caller's pass):
 *  - SRC_COLD: the rows as written, the caches written over;
 *  - SRC_FRESH: the pages given back (MADV_DONTNEED), the rows copied in by the CPU;
 *  - SRC_DIO: the rows read from the file with O_DIRECT into the same pages as before;
 *  - SRC_DIO_FRESH: the same into pages given back first (the kernel faults them in for the
 *    read, as it did for the window's blocks at their layout addresses).
 * (ck and cv: copies of k and v.) Returns 0 or -1 (a failed read). */
static int prepare(struct rows *r, int src)
{
    if (src == SRC_FRESH) {
        madvise(r->k, r->len, MADV_DONTNEED);
        madvise(r->v, r->len, MADV_DONTNEED);
        memcpy(r->k, r->ck, r->len);
        memcpy(r->v, r->cv, r->len);
    }
    if (src == SRC_DIO_FRESH) {
        madvise(r->k, r->len, MADV_DONTNEED);
        madvise(r->v, r->len, MADV_DONTNEED);
    }
    if (src == SRC_DIO || src == SRC_DIO_FRESH) { /* the file holds the whole blocks */
        if (pread(r->fd, r->k, r->len_file, 0) != (ssize_t)r->len_file ||
            pread(r->fd, r->v, r->len_file, r->off_v) != (ssize_t)r->len_file)
            return -1;
        memcpy((char *)r->k + r->len_file, (char *)r->ck + r->len_file, r->len - r->len_file);
        memcpy((char *)r->v + r->len_file, (char *)r->cv + r->len_file, r->len - r->len_file);
    }
    if (src != SRC_WARM)
        scrub(r->junk, r->junk_n);
    return 0;
}

int main(int argc, char **argv)
{
    const int depth = argc > 1 ? atoi(argv[1]) : 4000;
    const int reps = argc > 2 ? atoi(argv[2]) : 5;
    if (depth < 2 * BLOCK || reps < 1) {
        fprintf(stderr, "bench_kv_walk: DEPTH must be at least %d, REPS at least 1\n", 2 * BLOCK);
        return 2;
    }
    const int n_ctx = (depth + BLOCK - 1) / BLOCK * BLOCK + BLOCK;
    const char *dir = getenv("NF_KV_DIR") ? getenv("NF_KV_DIR") : "/tmp";
    char path[4096], err[512];
    snprintf(path, sizeof(path), "%s/bench_kv_walk.%d.kv", dir, (int)getpid());
    struct nf_kv_file *kf = NULL;
    const struct nf_kv_file_opts o = {.path = path,
                                      .n_layer = 1,
                                      .n_ctx = n_ctx,
                                      .n_slots = 1,
                                      .block = BLOCK,
                                      .row_k = KVD * 2,
                                      .row_v = KVD * 2};
    if (nf_kv_file_open(&kf, &o, err, sizeof(err)) < 0) {
        fprintf(stderr, "bench_kv_walk: %s\n", err);
        return 1;
    }
    nf_fp16_t *k = nf_kv_file_k(kf, 0), *v = nf_kv_file_v(kf, 0);
    const size_t lay_b = sizeof(nf_fp16_t) * (size_t)depth * KVD;
    nf_fp16_t *rk = aligned_alloc(4096, lay_b), *rv = aligned_alloc(4096, lay_b);
    nf_fp16_t *ck = malloc(lay_b), *cv = malloc(lay_b);
    nf_fp16_t *q = malloc(sizeof(nf_fp16_t) * KVD);
    float *p = malloc(sizeof(float) * (size_t)depth);
    float *sc[2], *acc[2];
    const size_t junk_n = (size_t)64 << 20;
    char *junk = calloc(1, junk_n);
    for (int i = 0; i < 2; i++) {
        sc[i] = malloc(sizeof(float) * (size_t)N_HEAD * (size_t)depth);
        acc[i] = malloc(sizeof(float) * (size_t)N_HEAD * LANES * HD);
    }
    if (!rk || !rv || !ck || !cv || !q || !p || !junk || !sc[0] || !sc[1] || !acc[0] || !acc[1]) {
        fprintf(stderr, "bench_kv_walk: out of memory\n");
        return 1;
    }
    uint64_t s = 0x9e3779b97f4a7c15ull;
    for (int pos = 0; pos < depth; pos++) { /* decode: a row per step, a block stored when full */
        for (size_t i = 0; i < KVD; i++) {
            s ^= s << 13, s ^= s >> 7, s ^= s << 17;
            rk[(size_t)pos * KVD + i] = k[(size_t)pos * KVD + i] =
                nf_fp32_to_fp16((float)(s >> 40) / (float)(1 << 24) - 0.5f);
            rv[(size_t)pos * KVD + i] = v[(size_t)pos * KVD + i] =
                nf_fp32_to_fp16((float)(s & 0xffffff) / (float)(1 << 24) - 0.5f);
        }
        if (nf_kv_file_layer_store(kf, 0, 0, pos + 1) < 0) {
            fprintf(stderr, "bench_kv_walk: %s\n", nf_kv_file_error(kf));
            return 1;
        }
    }
    memcpy(ck, rk, lay_b);
    memcpy(cv, rv, lay_b);
    for (int i = 0; i < KVD; i++)
        q[i] = nf_fp32_to_fp16((float)(i % 7) * 0.1f - 0.3f);
    for (int i = 0; i < depth; i++)
        p[i] = 1.0f / (float)(i + 1);
    struct walk w[2];
    for (int i = 0; i < 2; i++)
        w[i] = (struct walk){.dot = nf_ggml_dot_cols(NF_TYPE_F16),
                             .axpy = nf_kv_axpy_f16_for(),
                             .q = q,
                             .sc = sc[i],
                             .acc = acc[i],
                             .p = p};
    const double calls = 2.0 * depth * N_HEAD;
    printf("| rows | order | ns / call | ms / layer (kernels) | ms in need | same sums |\n"
           "|---|---|---|---|---|---|\n");
    struct rows rb = {.k = rk,
                      .v = rv,
                      .ck = ck,
                      .cv = cv,
                      .len = lay_b,
                      .len_file = sizeof(nf_fp16_t) * (size_t)(depth / BLOCK * BLOCK) * KVD,
                      .off_v = (off_t)((size_t)n_ctx * KVD * 2),
                      .fd = open(path, O_RDONLY | O_DIRECT),
                      .junk = junk,
                      .junk_n = junk_n};
    for (int mode = 0; mode < 2 * SRC_N; mode++) {
        const int cell_major = mode & 1, src = mode / 2;
        struct walk *wm = &w[mode == 0 ? 0 : 1];
        uint64_t best = UINT64_MAX, need_best = 0;
        for (int r = 0; r < reps; r++) {
            uint64_t tk, tn = 0;
            walk_reset(wm, depth);
            if (src == SRC_FILE) {
                if (walk_file(kf, wm, depth, cell_major, &tk, &tn) < 0) {
                    fprintf(stderr, "bench_kv_walk: %s\n", nf_kv_file_error(kf));
                    return 1;
                }
            } else {
                if (prepare(&rb, src) < 0) {
                    fprintf(stderr, "bench_kv_walk: O_DIRECT read failed\n");
                    return 1;
                }
                if (src == SRC_WARM)
                    run_cells(wm, depth, 0, rk, 0, depth, 0),
                        run_cells(wm, depth, 1, rv, 0, depth, 0);
                walk_reset(wm, depth);
                const uint64_t t0 = nf_now_ns();
                run_cells(wm, depth, 0, rk, 0, depth, cell_major);
                run_cells(wm, depth, 1, rv, 0, depth, cell_major);
                tk = nf_now_ns() - t0;
            }
            if (tk < best)
                best = tk, need_best = tn;
        }
        const bool same =
            mode == 0 ||
            (memcmp(sc[0], wm->sc, sizeof(float) * (size_t)N_HEAD * (size_t)depth) == 0 &&
             memcmp(acc[0], wm->acc, sizeof(float) * (size_t)N_HEAD * LANES * HD) == 0);
        static const char *const srcs[SRC_N] = {"file",  "ram-cold",  "ram-warm",
                                                "fresh", "dio-fixed", "dio-fresh"};
        printf("| %s | %s | %.1f | %.2f | %.2f | %s |\n", srcs[src], cell_major ? "cell" : "head",
               (double)best / calls, (double)best / 1e6, (double)need_best / 1e6,
               mode == 0 ? "-"
               : same    ? "yes"
                         : "NO");
        if (!same)
            return 1;
    }
    if (rb.fd >= 0)
        close(rb.fd);
    nf_kv_file_close(kf);
    free(ck), free(cv);
    free(rk), free(rv), free(q), free(p), free(junk);
    for (int i = 0; i < 2; i++)
        free(sc[i]), free(acc[i]);
    return 0;
}
