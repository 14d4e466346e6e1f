/* io.c - the fetcher's read back ends: io_uring with registered buffers/file, or pread threads. */
#include <errno.h>
#include <inttypes.h>
#include <liburing.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>
#include <unistd.h>

#include "daemon.h"
#include "fetch.h"
#include "nf_err.h"
#include "nft.h"

#define NF_URING_MAX_BUFS    16384u       /* io_uring's limit on registered iovecs */
#define NF_URING_MAX_BUF     (1ull << 30) /* and on the size of one */
#define NF_PREAD_MAX_THREADS 16u

struct nf_fetch_backend {
    bool uring;
    /* io_uring */
    struct io_uring ring;
    bool fixed_bufs, fixed_file;
    /* Registered buffers per class k: slots first_slot + i * buf_slots[k] .. (at most
     * buf_slots[k] of them) form buffer buf_first[k] + i. */
    uint64_t buf_slots[NF_STACK_MAX_CLASSES];
    uint32_t buf_first[NF_STACK_MAX_CLASSES];
    /* Reads prepared in the submission queue and not yet taken by the kernel, oldest first (it
     * takes them in order): at most qd, as each io is prepared again only after it completed. */
    uint32_t *queued; /* (qd) io indices */
    unsigned n_queued;
    int broken; /* io_uring_submit failed for good: that code, else 0 */
    /* pread pool: jobs (io indices) in, completions out, both guarded by mu. */
    pthread_t *threads; /* (n_threads) */
    unsigned n_threads;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    uint32_t *jobs; /* (qd) circular */
    uint32_t jobs_head, jobs_len;
    uint32_t *done; /* (qd) */
    uint32_t done_len;
    bool quit;
    struct nf_fetcher *ft;
};

/* --- io_uring ------------------------------------------------------------------------------- */

/* Registered buffers pin memory and count against RLIMIT_MEMLOCK: raise the soft limit as far
 * as the hard limit allows before trying. */
static void raise_memlock(void)
{
    struct rlimit rl;
    if (getrlimit(RLIMIT_MEMLOCK, &rl) == 0 && rl.rlim_cur != rl.rlim_max) {
        rl.rlim_cur = rl.rlim_max;
        (void)setrlimit(RLIMIT_MEMLOCK, &rl);
    }
}

static int uring_open(struct nf_fetcher *ft, struct nf_fetch_backend *be)
{
    be->queued = calloc(ft->o.qd, sizeof(*be->queued));
    if (!be->queued)
        return -ENOMEM;
    int rc = io_uring_queue_init(ft->o.qd, &be->ring, 0);
    if (rc < 0)
        return rc;
    be->uring = true;
    /* The pool as registered buffers, class by class (a buffer never spans two slot sizes):
     * one iovec per slot when that fits io_uring's limit, else chunks of several slots of a
     * class (each at most 1 GiB). Each class may use an equal share of the iovecs. */
    const struct nf_stack_config *cfg = ft->st->cfg;
    const uint32_t n_classes = nf_stack_pool_classes(cfg); /* the KV tiles' too */
    uint64_t share = NF_URING_MAX_BUFS / n_classes, nbufs = 0, pool = 0;
    bool fits = ft->n_slots > 0;
    for (uint32_t k = 0; k < n_classes; k++) {
        const struct nf_stack_class *c = &cfg->classes[k];
        uint64_t per = (c->n_slots + share - 1) / share;
        if (per * c->slot_size > NF_URING_MAX_BUF)
            fits = false;
        be->buf_slots[k] = per;
        be->buf_first[k] = (uint32_t)nbufs;
        nbufs += (c->n_slots + per - 1) / per;
        pool += c->n_slots * c->slot_size;
    }
    struct iovec *iov = fits ? calloc(nbufs, sizeof(*iov)) : NULL; /* (nbufs) */
    if (iov) {
        for (uint32_t k = 0; k < n_classes; k++) {
            const struct nf_stack_class *c = &cfg->classes[k];
            uint64_t per = be->buf_slots[k], n = c->n_slots;
            for (uint64_t first = 0, b = be->buf_first[k]; first < n; first += per, b++) {
                uint64_t cnt = n - first < per ? n - first : per;
                iov[b].iov_base = nf_stack_slot_ptr(ft->st, (uint32_t)(c->first_slot + first));
                iov[b].iov_len = cnt * c->slot_size;
            }
        }
        raise_memlock();
        rc = io_uring_register_buffers(&be->ring, iov, (unsigned)nbufs);
        free(iov);
        if (rc == 0) {
            be->fixed_bufs = true;
        } else {
            nf_log(NF_LOG_WARN,
                   "io_uring: cannot register the %" PRIu64 "-byte pool as fixed buffers "
                   "(%s; RLIMIT_MEMLOCK too low?): using unregistered reads",
                   pool, strerror(-rc));
        }
    }
    /* The files tiles are read from: the .nft, or the GGUF parts of an in-place index (a
     * tile's part is its index among the registered files). */
    if (io_uring_register_files(&be->ring, ft->f->part_fd, ft->f->n_parts) == 0)
        be->fixed_file = true;
    return 0;
}

/* True for the io_uring_submit failures that pass: the completion queue is full (-EBUSY) or the
 * kernel is short of memory (-EAGAIN): reap completions, then submit again. */
static bool transient(int rc)
{
    return rc == -EBUSY || rc == -EAGAIN;
}

/* Drops from the queue the reads the kernel has taken: all but the io_uring_sq_ready() newest
 * (taken in order; the count also covers a submission liburing made on its own, as
 * io_uring_wait_cqe_timeout does on kernels without IORING_FEAT_EXT_ARG). */
static void sync_queued(struct nf_fetch_backend *be)
{
    unsigned left = io_uring_sq_ready(&be->ring);
    if (left > be->n_queued)
        left = be->n_queued;
    unsigned taken = be->n_queued - left;
    memmove(be->queued, be->queued + taken, left * sizeof(*be->queued));
    be->n_queued = left;
}

/* Hands the prepared reads to the kernel. Returns 0; a transient code (the rest stays queued);
 * or, logged once, the code of a failure that does not pass: the ring is unusable, and the reads
 * still queued are given up by nf_fetch_backend_abandon. */
static int uring_push(struct nf_fetch_backend *be)
{
    while (be->n_queued > 0 && !be->broken) {
        unsigned before = be->n_queued;
        int rc = io_uring_submit(&be->ring);
        sync_queued(be);
        if (rc == -EINTR || (rc >= 0 && be->n_queued < before))
            continue; /* interrupted, or progress: push the rest */
        if (rc >= 0)
            rc = -EAGAIN; /* nothing taken: as when the kernel is short of memory */
        if (transient(rc))
            return rc;
        nf_log(NF_LOG_ERROR, "io_uring_submit: %s (%u reads not submitted): stopping reads",
               nf_strerror(rc), be->n_queued);
        be->broken = rc;
    }
    return be->broken;
}

static int uring_submit(struct nf_fetcher *ft, struct nf_fetch_backend *be, uint32_t i)
{
    if (be->broken)
        return be->broken;
    struct nf_fetch_io *io = &ft->ios[i];
    struct io_uring_sqe *sqe = io_uring_get_sqe(&be->ring);
    if (!sqe) { /* ring full: push what is queued and retry once */
        int rc = uring_push(be);
        if (rc < 0 && !transient(rc))
            return rc;
        sqe = io_uring_get_sqe(&be->ring);
        if (!sqe)
            return -EBUSY;
    }
    uint8_t *dst = nf_stack_slot_ptr(ft->st, io->slot) + io->done;
    unsigned len = nf_fetch_read_len(io);
    uint64_t off = io->off + io->done;
    /* A KV tile comes from the KV file, not registered (compute creates it after the fetcher
     * started). */
    const bool kv = io->tile >= ft->n_tiles;
    const struct nf_nft_tile *t = kv ? NULL : &ft->f->tiles[io->tile];
    int fd = kv ? ft->kv_fd : be->fixed_file ? (int)t->part : nf_nft_tile_fd(ft->f, t);
    if (be->fixed_bufs) {
        uint32_t k = nf_stack_slot_class(ft->st, io->slot);
        uint64_t in_class = io->slot - ft->st->cfg->classes[k].first_slot;
        io_uring_prep_read_fixed(sqe, fd, dst, len, off,
                                 (int)(be->buf_first[k] + in_class / be->buf_slots[k]));
    } else {
        io_uring_prep_read(sqe, fd, dst, len, off);
    }
    if (be->fixed_file && !kv)
        sqe->flags |= IOSQE_FIXED_FILE;
    io_uring_sqe_set_data64(sqe, i);
    NF_ASSERT(be->n_queued < ft->o.qd); /* each io is queued once until it completes */
    be->queued[be->n_queued++] = i;
    return 0;
}

static unsigned uring_reap(struct nf_fetcher *ft, struct nf_fetch_backend *be, uint32_t *done,
                           unsigned max, long timeout_us)
{
    struct io_uring_cqe *cqe = NULL;
    int rc, pushed = uring_push(be);
    if (transient(pushed) && (timeout_us < 0 || timeout_us > 1000))
        timeout_us = 1000; /* reap (a full completion queue drains), then push again */
    else if (pushed < 0)
        timeout_us = 0; /* the ring is unusable: take only what has completed */
    if (timeout_us == 0) {
        rc = io_uring_peek_cqe(&be->ring, &cqe);
    } else if (timeout_us < 0) {
        rc = io_uring_wait_cqe(&be->ring, &cqe);
    } else {
        struct __kernel_timespec ts = {.tv_sec = timeout_us / 1000000,
                                       .tv_nsec = (timeout_us % 1000000) * 1000};
        rc = io_uring_wait_cqe_timeout(&be->ring, &cqe, &ts);
    }
    unsigned n = 0;
    while (rc == 0 && cqe && n < max) {
        uint64_t i = io_uring_cqe_get_data64(cqe);
        /* Only uring_submit prepares reads, each tagged with its io index. */
        NF_ASSERT(i < ft->o.qd);
        ft->ios[i].res = cqe->res;
        done[n++] = (uint32_t)i;
        io_uring_cqe_seen(&be->ring, cqe);
        cqe = NULL;
        rc = io_uring_peek_cqe(&be->ring, &cqe);
    }
    if (transient(pushed))
        (void)uring_push(be); /* still transient: the next reap tries again */
    return n;
}

/* --- pread pool ----------------------------------------------------------------------------- */

static void *pread_worker(void *arg)
{
    struct nf_fetch_backend *be = arg;
    struct nf_fetcher *ft = be->ft;
    pthread_mutex_lock(&be->mu);
    for (;;) {
        while (!be->quit && be->jobs_len == 0)
            pthread_cond_wait(&be->cv, &be->mu);
        if (be->quit)
            break;
        uint32_t i = be->jobs[be->jobs_head];
        be->jobs_head = (be->jobs_head + 1) % ft->o.qd;
        be->jobs_len--;
        pthread_mutex_unlock(&be->mu);

        struct nf_fetch_io *io = &ft->ios[i];
        ssize_t r = pread(io->tile >= ft->n_tiles ? ft->kv_fd
                                                  : nf_nft_tile_fd(ft->f, &ft->f->tiles[io->tile]),
                          nf_stack_slot_ptr(ft->st, io->slot) + io->done, nf_fetch_read_len(io),
                          (off_t)(io->off + io->done));
        int res = r < 0 ? -errno : (int)r;

        pthread_mutex_lock(&be->mu);
        io->res = res;
        be->done[be->done_len++] = i;
        /* The fetch loop sleeps on fetch_bell for requests and completions alike. */
        nf_notify_wake(&ft->st->sync->fetch_bell);
    }
    pthread_mutex_unlock(&be->mu);
    return NULL;
}

static int pread_open(struct nf_fetcher *ft, struct nf_fetch_backend *be)
{
    unsigned n = ft->o.qd < NF_PREAD_MAX_THREADS ? ft->o.qd : NF_PREAD_MAX_THREADS;
    be->jobs = calloc(ft->o.qd, sizeof(*be->jobs));
    be->done = calloc(ft->o.qd, sizeof(*be->done));
    be->threads = calloc(n, sizeof(*be->threads));
    if (!be->jobs || !be->done || !be->threads)
        return -ENOMEM;
    pthread_mutex_init(&be->mu, NULL);
    pthread_cond_init(&be->cv, NULL);
    for (unsigned t = 0; t < n; t++) {
        int rc = pthread_create(&be->threads[t], NULL, pread_worker, be);
        if (rc)
            return -rc;
        be->n_threads++;
    }
    return 0;
}

static unsigned pread_reap(struct nf_fetcher *ft, struct nf_fetch_backend *be, uint32_t *done,
                           unsigned max, long timeout_us)
{
    struct nf_notify *bell = &ft->st->sync->fetch_bell;
    uint32_t seen = nf_notify_seq(bell);
    pthread_mutex_lock(&be->mu);
    unsigned n = be->done_len < max ? be->done_len : max;
    memcpy(done, be->done, n * sizeof(*done));
    memmove(be->done, be->done + n, (be->done_len - n) * sizeof(*done));
    be->done_len -= n;
    pthread_mutex_unlock(&be->mu);
    if (n == 0 && timeout_us != 0) {
        /* Completions and new requests both ring fetch_bell; the caller loops either way. */
        int ms = timeout_us < 0 ? 1000 : (int)((timeout_us + 999) / 1000);
        nf_notify_wait(bell, seen, ms);
    }
    return n;
}

/* --- dispatch ------------------------------------------------------------------------------- */

int nf_fetch_backend_open(struct nf_fetcher *ft, char *err, size_t errlen)
{
    struct nf_fetch_backend *be = calloc(1, sizeof(*be));
    if (!be) {
        snprintf(err, errlen, "out of memory for the I/O back end");
        return -ENOMEM;
    }
    be->ft = ft;
    ft->be = be;
    int rc = ft->o.no_uring ? -ENOSYS : uring_open(ft, be);
    if (rc == 0) {
        ft->backend_name = be->fixed_bufs ? "io_uring (registered buffers)" : "io_uring";
        return 0;
    }
    if (ft->o.no_uring)
        nf_log(NF_LOG_INFO, "io_uring disabled by --no-uring: reading with a pread thread pool");
    else
        nf_log(NF_LOG_WARN,
               "io_uring unavailable (io_uring_queue_init: %s): falling back to a "
               "pread thread pool",
               strerror(-rc));
    rc = pread_open(ft, be);
    if (rc < 0) {
        snprintf(err, errlen, "cannot start the pread pool: %s", strerror(-rc));
        return rc;
    }
    ft->backend_name = "pread pool";
    return 0;
}

void nf_fetch_backend_close(struct nf_fetcher *ft)
{
    struct nf_fetch_backend *be = ft->be;
    if (!be)
        return;
    if (be->uring) {
        io_uring_queue_exit(&be->ring);
    } else if (be->threads) {
        if (be->n_threads) {
            pthread_mutex_lock(&be->mu);
            be->quit = true;
            pthread_cond_broadcast(&be->cv);
            pthread_mutex_unlock(&be->mu);
            for (unsigned t = 0; t < be->n_threads; t++)
                pthread_join(be->threads[t], NULL);
        }
        pthread_mutex_destroy(&be->mu);
        pthread_cond_destroy(&be->cv);
    }
    free(be->queued);
    free(be->threads);
    free(be->jobs);
    free(be->done);
    free(be);
    ft->be = NULL;
}

int nf_fetch_backend_submit(struct nf_fetcher *ft, uint32_t io)
{
    struct nf_fetch_backend *be = ft->be;
    if (be->uring)
        return uring_submit(ft, be, io);
    pthread_mutex_lock(&be->mu);
    be->jobs[(be->jobs_head + be->jobs_len) % ft->o.qd] = io;
    be->jobs_len++;
    pthread_cond_signal(&be->cv);
    pthread_mutex_unlock(&be->mu);
    return 0;
}

int nf_fetch_backend_flush(struct nf_fetcher *ft)
{
    struct nf_fetch_backend *be = ft->be;
    if (!be->uring)
        return 0;
    int rc = uring_push(be);
    return transient(rc) ? 0 : rc; /* the next reap pushes again */
}

unsigned nf_fetch_backend_abandon(struct nf_fetcher *ft, uint32_t *done, unsigned max)
{
    struct nf_fetch_backend *be = ft->be;
    if (!be->uring || !be->broken)
        return 0;
    unsigned n = be->n_queued < max ? be->n_queued : max;
    memcpy(done, be->queued, n * sizeof(*done));
    memmove(be->queued, be->queued + n, (be->n_queued - n) * sizeof(*be->queued));
    be->n_queued -= n;
    return n;
}

unsigned nf_fetch_backend_reap(struct nf_fetcher *ft, uint32_t *done, unsigned max, long timeout_us)
{
    struct nf_fetch_backend *be = ft->be;
    return be->uring ? uring_reap(ft, be, done, max, timeout_us)
                     : pread_reap(ft, be, done, max, timeout_us);
}
