/* bench_raw.c - nanoflowctl bench's raw read: the disk's bandwidth on the model's tiles (in the
 * .nft, or in the GGUF parts of an in-place index) with O_DIRECT reads at the fetcher's queue
 * depth, each read the aligned span the fetcher reads. */
#include <errno.h>
#include <fcntl.h>
#include <liburing.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "bench.h"
#include "nf_time.h"

#define NF_BENCH_RAW_CAP (2ull << 30) /* raw read: at most this many bytes of tiles */

static int cmp_offset(const void *a, const void *b)
{
    const struct nf_nft_tile *x = *(const struct nf_nft_tile *const *)a,
                             *y = *(const struct nf_nft_tile *const *)b;
    if (x->part != y->part)
        return x->part < y->part ? -1 : 1;
    return x->offset < y->offset ? -1 : x->offset > y->offset;
}

/* Bytes a read of t's span must return: the whole span, or in an in-place index up to the
 * tile's end (the span may run past the end of the GGUF part). */
static uint64_t need_of(const struct nf_nft *f, const struct nf_nft_tile *t)
{
    return f->in_place ? nf_nft_tile_skew(t) + t->size : nf_nft_tile_span(t);
}

void nf_bench_raw_read(struct nf_bench *b, const struct nf_nft *f, struct nf_bench_raw *r)
{
    const unsigned qd = NF_BENCH_QD;
    uint64_t n = 0, cap = 0, total = 0;
    const struct nf_nft_tile **order = calloc(f->n_tiles ? f->n_tiles : 1, sizeof(*order));
    if (!order) {
        snprintf(r->error, sizeof(r->error), "out of memory");
        return;
    }
    for (uint64_t i = 0; i < f->n_tiles; i++)
        order[i] = &f->tiles[i];
    qsort(order, f->n_tiles, sizeof(*order), cmp_offset);
    for (; n < f->n_tiles && total < NF_BENCH_RAW_CAP; n++) {
        uint64_t p = nf_nft_tile_span(order[n]);
        total += p;
        if (p > cap)
            cap = p;
    }
    /* Each file f reads tiles from, opened again with O_DIRECT. */
    int fds[NF_NFT_MAX_PARTS], fd = 0;
    uint32_t n_fds = 0;
    for (; n_fds < f->n_parts && fd >= 0; n_fds++) {
        char p[64];
        snprintf(p, sizeof(p), "/proc/self/fd/%d", f->part_fd[n_fds]);
        fds[n_fds] = fd = open(f->in_place ? p : b->nft, O_RDONLY | O_DIRECT | O_CLOEXEC);
    }
    uint8_t *bufs = cap ? aligned_alloc(NF_NFT_ALIGN, cap * qd) : NULL; /* (qd, cap) */
    struct iovec iov[NF_BENCH_QD];
    uint32_t free_b[NF_BENCH_QD];
    struct io_uring ring;
    bool have_ring = false;
    if (fd < 0 || !bufs) {
        snprintf(r->error, sizeof(r->error), "%.180s: %s", b->nft,
                 fd < 0 ? strerror(errno) : "out of memory");
        goto out;
    }
    for (unsigned i = 0; i < qd; i++) {
        iov[i].iov_base = bufs + (size_t)i * cap;
        iov[i].iov_len = cap;
        free_b[i] = i;
    }
    nf_bench_progress(b, "raw: reading %llu tiles (%.1f MiB) O_DIRECT, qd %u",
                      (unsigned long long)n, (double)total / 1048576.0, qd);
    int rc = io_uring_queue_init(qd, &ring, 0);
    have_ring = rc == 0;
    double t0 = nf_now_s(), last = t0;
    uint64_t next = 0, done = 0, bytes = 0;
    if (have_ring) {
        r->backend = "io_uring";
        bool fixed = io_uring_register_buffers(&ring, iov, qd) == 0;
        unsigned n_free = qd, in_flight = 0;
        while ((next < n || in_flight) && !nf_bench_stop) {
            while (next < n && n_free) {
                struct io_uring_sqe *sqe = io_uring_get_sqe(&ring);
                if (!sqe)
                    break;
                uint32_t bi = free_b[--n_free];
                const struct nf_nft_tile *t = order[next++];
                unsigned len = (unsigned)nf_nft_tile_span(t);
                uint64_t off = t->offset - nf_nft_tile_skew(t);
                if (fixed)
                    io_uring_prep_read_fixed(sqe, fds[t->part], iov[bi].iov_base, len, off,
                                             (int)bi);
                else
                    io_uring_prep_read(sqe, fds[t->part], iov[bi].iov_base, len, off);
                io_uring_sqe_set_data64(sqe, (need_of(f, t) << 32) | bi);
                in_flight++;
            }
            io_uring_submit(&ring);
            struct io_uring_cqe *cqe;
            rc = io_uring_wait_cqe(&ring, &cqe);
            if (rc == -EINTR)
                continue;
            if (rc < 0) {
                snprintf(r->error, sizeof(r->error), "io_uring wait: %s", strerror(-rc));
                goto out;
            }
            uint64_t ud = io_uring_cqe_get_data64(cqe);
            int res = cqe->res;
            io_uring_cqe_seen(&ring, cqe);
            in_flight--;
            free_b[n_free++] = (uint32_t)(ud & 0xffffffffu);
            if (res < 0 || (uint64_t)res < ud >> 32) {
                snprintf(r->error, sizeof(r->error), "read of %llu bytes returned %d (%s)",
                         (unsigned long long)(ud >> 32), res, res < 0 ? strerror(-res) : "short");
                goto out;
            }
            bytes += (uint64_t)res;
            done++;
            if (nf_now_s() - last > 2.0) {
                last = nf_now_s();
                nf_bench_progress(b, "raw: %.0f / %.0f MiB", (double)bytes / 1048576.0,
                                  (double)total / 1048576.0);
            }
        }
    } else {
        /* One reader: io_uring is forbidden here (as some containers do); the fetcher then uses
         * a pread pool, so this understates what it could reach. */
        r->backend = "pread (io_uring unavailable)";
        for (; next < n && !nf_bench_stop; next++) {
            const struct nf_nft_tile *t = order[next];
            size_t len = (size_t)nf_nft_tile_span(t);
            ssize_t got = pread(fds[t->part], bufs, len, (off_t)(t->offset - nf_nft_tile_skew(t)));
            if (got < 0 || (uint64_t)got < need_of(f, t)) {
                snprintf(r->error, sizeof(r->error), "pread of %zu bytes at %llu: %s", len,
                         (unsigned long long)t->offset, got < 0 ? strerror(errno) : "short");
                goto out;
            }
            bytes += (uint64_t)got;
            done++;
        }
    }
    r->secs = nf_now_s() - t0;
    r->bytes = bytes;
    r->reads = done;
    r->mb_s = r->secs > 0 ? (double)bytes / 1e6 / r->secs : NAN;
    r->avg_tile = done ? (double)bytes / (double)done : NAN;
    r->ok = !nf_bench_stop && done == n && n > 0;
    if (!r->ok && !r->error[0])
        snprintf(r->error, sizeof(r->error), nf_bench_stop ? "interrupted" : "no tiles");
out:
    if (have_ring)
        io_uring_queue_exit(&ring);
    for (uint32_t i = 0; i < n_fds; i++)
        if (fds[i] >= 0)
            close(fds[i]);
    free(bufs);
    free(order);
}
