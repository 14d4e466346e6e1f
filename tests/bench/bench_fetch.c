/* bench_fetch.c - raw O_DIRECT io_uring read bandwidth vs the fetcher's sustained rate, one table.
 *
 * usage: bench_fetch MODEL.nft [--ram BYTES] [--qd N] [--passes N] [--verify all|sample|none]
 *                              [--no-uring] [--fetcher PATH]
 *
 * 1. raw: every tile of the file read whole (padded size, its offset) with io_uring, O_DIRECT,
 *    registered buffers, qd reads in flight; `passes` passes over the file.
 * 2. fetcher: nanoflow-fetcher started on the same file with the same queue depth and a budget
 *    (default 1 GiB) whose pool is smaller than the model; this program plays an infinitely fast
 *    compute: it prefetches a window of tiles ahead (as the predictor does), pins each tile in id
 *    order and unpins it at once, for the same number of passes. The fetcher's rate is its bytes
 *    read (f_bytes) over the wall time.
 * Both read the file with O_DIRECT, so the page cache does not flatter either. Raw runs before
 * and after the fetcher; "vs raw" is relative to the mean of the two raw rates. */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <liburing.h>
#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "daemon.h"
#include "nf_err.h"
#include "nf_time.h"
#include "nft.h"
#include "stack.h"

struct result {
    uint64_t reads, bytes;
    double secs;
    double cpu_s; /* fetcher: its user + system CPU time over the whole run (incl. startup) */
};

/* Raw io_uring reads of every tile, qd in flight, into qd registered buffers. */
static int bench_raw(const struct nf_nft *f, const char *path, unsigned qd, int passes,
                     struct result *r)
{
    uint64_t cap = 0;
    for (uint64_t i = 0; i < f->n_tiles; i++)
        if (nf_nft_padded(f->tiles[i].size) > cap)
            cap = nf_nft_padded(f->tiles[i].size);
    int fd = open(path, O_RDONLY | O_DIRECT);
    if (fd < 0)
        return -errno;
    struct io_uring ring;
    int rc = io_uring_queue_init(qd, &ring, 0);
    if (rc < 0) {
        close(fd);
        return rc;
    }
    uint8_t *bufs = aligned_alloc(4096, cap * qd); /* (qd, cap) */
    struct iovec *iov = calloc(qd, sizeof(*iov));
    uint32_t *free_b = calloc(qd, sizeof(*free_b));
    if (!bufs || !iov || !free_b) {
        rc = -ENOMEM;
        goto out;
    }
    for (unsigned b = 0; b < qd; b++) {
        iov[b].iov_base = bufs + b * cap;
        iov[b].iov_len = cap;
        free_b[b] = b;
    }
    bool fixed = io_uring_register_buffers(&ring, iov, qd) == 0;
    unsigned n_free = qd, in_flight = 0;
    uint64_t total = (uint64_t)passes * f->n_tiles, next = 0;
    memset(r, 0, sizeof(*r));
    double t0 = nf_now_s();
    while (r->reads < total) {
        while (n_free > 0 && next < total) {
            const struct nf_nft_tile *t = &f->tiles[next % f->n_tiles];
            struct io_uring_sqe *sqe = io_uring_get_sqe(&ring);
            if (!sqe)
                break;
            unsigned b = free_b[--n_free];
            unsigned len = (unsigned)nf_nft_padded(t->size);
            if (fixed)
                io_uring_prep_read_fixed(sqe, fd, iov[b].iov_base, len, t->offset, (int)b);
            else
                io_uring_prep_read(sqe, fd, iov[b].iov_base, len, t->offset);
            io_uring_sqe_set_data64(sqe, b);
            next++;
            in_flight++;
        }
        io_uring_submit(&ring);
        struct io_uring_cqe *cqe;
        rc = io_uring_wait_cqe(&ring, &cqe);
        while (rc == 0) {
            if (cqe->res < 0) {
                rc = cqe->res;
                io_uring_cqe_seen(&ring, cqe);
                goto out;
            }
            r->bytes += (uint64_t)cqe->res; /* a short read counts what it read */
            r->reads++;
            free_b[n_free++] = (uint32_t)io_uring_cqe_get_data64(cqe);
            in_flight--;
            io_uring_cqe_seen(&ring, cqe);
            rc = io_uring_peek_cqe(&ring, &cqe);
        }
        rc = 0;
    }
    r->secs = nf_now_s() - t0;
out:
    io_uring_queue_exit(&ring);
    close(fd);
    free(bufs);
    free(iov);
    free(free_b);
    return rc;
}

static int bench_fetcher(const struct nf_nft *f, const char *path, const char *fetcher,
                         uint64_t ram, unsigned qd, int passes, const char *verify, bool no_uring,
                         struct result *r, uint64_t *slots)
{
    char run_dir[] = "/tmp/nf-bench-fetch-XXXXXX";
    if (!mkdtemp(run_dir))
        return -errno;
    char ram_s[32], qd_s[16];
    snprintf(ram_s, sizeof(ram_s), "%" PRIu64, ram);
    snprintf(qd_s, sizeof(qd_s), "%u", qd);
    pid_t pid = fork();
    if (pid == 0) {
        const char *argv[] = {fetcher,    "--foreground", "--run-dir",   run_dir, "--model",
                              path,       "--ram",        ram_s,         "--qd",  qd_s,
                              "--verify", verify,         "--log-level", "warn",  NULL};
        execv(fetcher, (char *const *)argv);
        _exit(127);
    }
    char shm[NAME_MAX], err[512] = "";
    nf_rundir_shm_name(run_dir, shm, sizeof(shm));
    struct nf_stack st;
    int rc = -ENOENT;
    for (int i = 0; i < 3000; i++) {
        rc = nf_stack_attach(&st, shm, f, err, sizeof(err));
        if (rc == 0 && (atomic_load(&st.sync->ready_mask) & NF_READY_FETCHER))
            break;
        if (rc == 0) {
            nf_stack_detach(&st);
            rc = -EAGAIN;
        }
        if (waitpid(pid, NULL, WNOHANG) == pid) {
            rc = -ECHILD;
            break;
        }
        usleep(10000);
    }
    if (rc < 0) {
        fprintf(stderr, "bench_fetch: fetcher did not come up: %s %s\n", nf_strerror(rc), err);
        kill(pid, SIGKILL);
        waitpid(pid, NULL, 0);
        return rc;
    }
    *slots = st.cfg->n_slots;
    /* Prefetch window: half the pool ahead (the rest holds the resident set and READY tiles). */
    uint32_t window = (uint32_t)(st.cfg->n_slots / 2);
    if (window < 1)
        window = 1;
    uint64_t n = f->n_tiles, total = (uint64_t)passes * n, asked = 0;
    uint64_t b0 = atomic_load(&st.ctr->f_bytes), r0 = atomic_load(&st.ctr->f_reads);
    double t0 = nf_now_s();
    for (uint64_t k = 0; k < total; k++) {
        while (asked < total && asked < k + window) {
            nf_tile_prefetch(&st, (uint32_t)(asked % n), (uint32_t)(1 + asked - k), false);
            asked++;
        }
        nf_notify_wake(&st.sync->fetch_bell);
        int prc = 0;
        uint32_t id = (uint32_t)(k % n);
        if (!nf_tile_pin_wait(&st, id, k, 30000, &prc)) {
            fprintf(stderr, "bench_fetch: tile %u: %s\n", id, nf_strerror(prc));
            rc = prc;
            break;
        }
        nf_tile_unpin(&st, id);
        /* Like compute, publish the layer's activation (seqlock) when its last tile is done:
         * the fetcher learns from it where compute is. */
        uint32_t layer = f->tiles[id].layer;
        if (layer < f->hdr.n_layer && st.cfg->act_stride &&
            (id + 1 == n || f->tiles[id + 1].layer != layer)) {
            struct nf_act_slot *a = nf_stack_act(&st, layer);
            uint64_t sn = nf_seqlock_write_begin(&a->seq);
            __atomic_store_n(&a->step, k / n, __ATOMIC_RELAXED); /* see seqlock.h */
            __atomic_store_n(&a->layer, layer, __ATOMIC_RELAXED);
            nf_seqlock_write_end(&a->seq, sn);
        }
    }
    r->secs = nf_now_s() - t0;
    r->bytes = atomic_load(&st.ctr->f_bytes) - b0;
    r->reads = atomic_load(&st.ctr->f_reads) - r0;
    nf_stack_detach(&st);
    kill(pid, SIGTERM);
    struct rusage ru;
    if (wait4(pid, NULL, 0, &ru) == pid)
        r->cpu_s = (double)ru.ru_utime.tv_sec + (double)ru.ru_utime.tv_usec * 1e-6 +
                   (double)ru.ru_stime.tv_sec + (double)ru.ru_stime.tv_usec * 1e-6;
    rmdir(run_dir);
    return rc;
}

static void row(const char *name, const struct result *r, double ref)
{
    double mb = (double)r->bytes / 1e6;
    printf("| %-34s | %8" PRIu64 " | %9.1f | %7.2f | %8.1f | %7.0f | %5.0f%% |\n", name, r->reads,
           mb, r->secs, mb / r->secs, (double)r->reads / r->secs, 100.0 * (mb / r->secs) / ref);
}

int main(int argc, char **argv)
{
    if (argc < 2) {
        fprintf(stderr, "usage: bench_fetch MODEL.nft [--ram BYTES] [--qd N] [--passes N] "
                        "[--verify all|sample|none] [--no-uring] [--fetcher P]\n");
        return 2;
    }
    const char *path = argv[1];
    uint64_t ram = 1ull << 30;
    unsigned qd = 16;
    int passes = 2;
    const char *verify = "all";
    bool no_uring = false;
    char fetcher[PATH_MAX];
    ssize_t l = readlink("/proc/self/exe", fetcher, sizeof(fetcher) - 64);
    if (l <= 0)
        return 1;
    fetcher[l] = 0;
    char *slash = strrchr(fetcher, '/');
    snprintf(slash ? slash : fetcher, 64, "/../daemons/nanoflow-fetcher");
    for (int i = 2; i < argc; i += 2) {
        if (!strcmp(argv[i], "--no-uring")) {
            no_uring = true;
            i--;
            continue;
        }
        if (i + 1 >= argc) {
            fprintf(stderr, "bench_fetch: %s needs a value\n", argv[i]);
            return 2;
        }
        if (!strcmp(argv[i], "--ram"))
            ram = strtoull(argv[i + 1], NULL, 10);
        else if (!strcmp(argv[i], "--qd"))
            qd = (unsigned)atoi(argv[i + 1]);
        else if (!strcmp(argv[i], "--passes"))
            passes = atoi(argv[i + 1]);
        else if (!strcmp(argv[i], "--verify"))
            verify = argv[i + 1];
        else if (!strcmp(argv[i], "--fetcher"))
            snprintf(fetcher, sizeof(fetcher), "%s", argv[i + 1]);
        else {
            fprintf(stderr, "bench_fetch: unknown option %s\n", argv[i]);
            return 2;
        }
    }
    if (qd < 1 || qd > 4096 || passes < 1) {
        fprintf(stderr, "bench_fetch: --qd must be 1..4096 and --passes >= 1\n");
        return 2;
    }
    struct nf_nft *f;
    char err[512];
    if (nf_nft_open(&f, path, false, err, sizeof(err)) < 0) {
        fprintf(stderr, "bench_fetch: %s\n", err);
        return 1;
    }
    uint64_t bytes = 0;
    for (uint64_t i = 0; i < f->n_tiles; i++)
        bytes += nf_nft_padded(f->tiles[i].size);
    struct result raw, raw2, fet;
    uint64_t slots = 0;
    int rc = bench_raw(f, path, qd, passes, &raw);
    if (rc < 0) {
        fprintf(stderr, "bench_fetch: raw io_uring reads failed: %s\n", nf_strerror(rc));
        nf_nft_close(f);
        return 1;
    }
    rc = bench_fetcher(f, path, fetcher, ram, qd, passes, verify, no_uring, &fet, &slots);
    if (rc < 0 || bench_raw(f, path, qd, passes, &raw2) < 0) {
        nf_nft_close(f);
        return 1;
    }
    /* The machine may be shared: raw is measured before and after the fetcher, and the
     * fetcher is compared with their mean rate. */
    double ref = ((double)raw.bytes / raw.secs + (double)raw2.bytes / raw2.secs) / 2e6;
    printf("model %s: %" PRIu64 " tiles, %.1f MB of tile data; qd %u; %d passes; fetcher pool "
           "%" PRIu64 " slots (budget %.0f MiB), --verify %s, %s\n\n",
           path, f->n_tiles, (double)bytes / 1e6, qd, passes, slots, (double)ram / 1048576.0,
           verify, no_uring ? "pread pool" : "io_uring");
    printf("| %-34s | %8s | %9s | %7s | %8s | %7s | %6s |\n", "reader", "reads", "MB", "s", "MB/s",
           "IOPS", "vs raw");
    printf("|%s|%s|%s|%s|%s|%s|%s|\n", "------------------------------------", "----------",
           "-----------", "---------", "----------", "---------", "--------");
    row("raw io_uring O_DIRECT, before", &raw, ref);
    row("nanoflow-fetcher (sustained)", &fet, ref);
    row("raw io_uring O_DIRECT, after", &raw2, ref);
    printf("\nfetcher CPU time: %.2f s (%.2f s per GB read)\n", fet.cpu_s,
           fet.cpu_s / ((double)fet.bytes / 1e9));
    nf_nft_close(f);
    return 0;
}
