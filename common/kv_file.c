/* kv_file.c - the KV cache as blocks of a file on the SSD (see kv_file.h). */
#include "kv_file.h"

#include <errno.h>
#include <fcntl.h>
#include <liburing.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "nf_err.h"
#include "nf_time.h"

#define NF_KV_PAGE     4096u
#define NF_KV_IO_MAX   (1u << 20) /* bytes per read or write request: parallel pieces */
#define NF_KV_QD       64u        /* io_uring entries */
#define NF_KV_REQS     256u       /* requests in flight at most */
#define NF_KV_REQ_NONE UINT32_MAX

/* One read or write in flight (user_data is its index). */
struct nf_kv_req {
    uint32_t lay; /* index of its struct nf_kv_layer */
    bool write;
    uint8_t *buf;
    uint64_t off;
    uint32_t len, done; /* done: bytes transferred so far (short transfers are resubmitted) */
    uint32_t next_free;
};

/* The state of one (slot, layer). Positions [0, kept) are durable in the file and their pages
 * released (unless `loaded`); [kept, wr_end) have writes submitted (n_wr in flight; durable
 * when n_wr is 0) and stay resident until then; later positions are resident only. */
struct nf_kv_layer {
    int kept, wr_end;
    int n_rd, n_wr;
    bool loaded; /* [0, kept) read back into memory (for the attention running now) */
};

struct nf_kv_file {
    int fd;
    bool direct, uring;
    struct io_uring ring;
    int n_layer, n_ctx, n_slots, block;
    size_t row_k, row_v;
    uint64_t layer_k, layer_v; /* bytes of one layer's span: n_ctx * row (the cache's stride) */
    uint64_t size_k, size_v;   /* of all slots and layers; V starts at size_k */
    uint8_t *mem;              /* (size_k + size_v) reserved, MAP_NORESERVE */
    struct nf_kv_layer *lay;   /* (n_slots * n_layer) */
    struct nf_kv_req req[NF_KV_REQS];
    uint32_t free_head;
    uint32_t unsubmitted;            /* SQEs prepared but not submitted */
    int io_err;                      /* the first failed transfer: its negative errno */
    uint64_t resident, resident_max; /* bytes of released-or-not file-backed spans: estimate */
    struct nf_kv_file_stats st;
    char path[4096];
    char err[4096 + 256];
};

static uint64_t round_up(uint64_t v, uint64_t a)
{
    return (v + a - 1) / a * a;
}

uint64_t nf_kv_file_bytes(int n_layer, int n_ctx, int n_slots, int block, size_t row)
{
    (void)block; /* the file mirrors the cache: whole n_ctx spans, the last block partial */
    return (uint64_t)n_slots * (uint64_t)n_layer * (uint64_t)n_ctx * row;
}

uint64_t nf_kv_file_resident_bound(int n_layer, int n_ctx, int n_slots, int block, size_t row)
{
    return (uint64_t)n_slots * (2 * (uint64_t)n_ctx + 2 * (uint64_t)n_layer * (uint64_t)block) *
           row;
}

/* --- requests -------------------------------------------------------------------------------- */

static uint32_t req_get(struct nf_kv_file *kf)
{
    const uint32_t i = kf->free_head;
    if (i != NF_KV_REQ_NONE)
        kf->free_head = kf->req[i].next_free;
    return i;
}

static void req_put(struct nf_kv_file *kf, uint32_t i)
{
    kf->req[i].next_free = kf->free_head;
    kf->free_head = i;
}

static void req_finish(struct nf_kv_file *kf, uint32_t i, int res)
{
    struct nf_kv_req *r = &kf->req[i];
    struct nf_kv_layer *l = &kf->lay[r->lay];
    if (res < 0 && !kf->io_err)
        kf->io_err = res;
    if (r->write) {
        l->n_wr--;
        kf->st.write_bytes += r->len;
    } else {
        l->n_rd--;
        kf->st.read_bytes += r->len;
    }
    req_put(kf, i);
}

/* The synchronous back end: the whole transfer now. */
static int req_sync(struct nf_kv_file *kf, struct nf_kv_req *r)
{
    while (r->done < r->len) {
        const ssize_t n =
            r->write ? pwrite(kf->fd, r->buf + r->done, r->len - r->done, (off_t)(r->off + r->done))
                     : pread(kf->fd, r->buf + r->done, r->len - r->done, (off_t)(r->off + r->done));
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            return n < 0 ? -errno : -EIO;
        r->done += (uint32_t)n;
    }
    return 0;
}

static int ring_submit(struct nf_kv_file *kf)
{
    while (kf->unsubmitted) {
        const int n = io_uring_submit(&kf->ring);
        if (n == -EINTR || n == -EAGAIN || n == -EBUSY)
            continue;
        if (n < 0)
            return n;
        kf->unsubmitted -= (uint32_t)n < kf->unsubmitted ? (uint32_t)n : kf->unsubmitted;
    }
    return 0;
}

/* Handles one completion: a short transfer is resubmitted for its rest. */
static void ring_complete(struct nf_kv_file *kf, struct io_uring_cqe *cqe);

static int ring_prep(struct nf_kv_file *kf, uint32_t i)
{
    struct nf_kv_req *r = &kf->req[i];
    struct io_uring_sqe *sqe = io_uring_get_sqe(&kf->ring);
    if (!sqe) { /* SQ full: hand the queue to the kernel and retry */
        int rc = ring_submit(kf);
        if (rc < 0)
            return rc;
        if (!(sqe = io_uring_get_sqe(&kf->ring)))
            return -EBUSY;
    }
    if (r->write)
        io_uring_prep_write(sqe, kf->fd, r->buf + r->done, r->len - r->done, r->off + r->done);
    else
        io_uring_prep_read(sqe, kf->fd, r->buf + r->done, r->len - r->done, r->off + r->done);
    io_uring_sqe_set_data64(sqe, i);
    kf->unsubmitted++;
    return 0;
}

static void ring_complete(struct nf_kv_file *kf, struct io_uring_cqe *cqe)
{
    const uint32_t i = (uint32_t)io_uring_cqe_get_data64(cqe);
    const int res = cqe->res;
    io_uring_cqe_seen(&kf->ring, cqe);
    struct nf_kv_req *r = &kf->req[i];
    if (res > 0 && r->done + (uint32_t)res < r->len) {
        r->done += (uint32_t)res;
        if (ring_prep(kf, i) == 0)
            return;
    }
    req_finish(kf, i, res < 0 ? res : res == 0 && r->done < r->len ? -EIO : 0);
}

/* Reaps completions; with wait, blocks for at least one (there must be one in flight). */
static int ring_reap(struct nf_kv_file *kf, bool wait)
{
    int rc = ring_submit(kf);
    if (rc < 0)
        return rc;
    struct io_uring_cqe *cqe;
    if (wait) {
        do
            rc = io_uring_wait_cqe(&kf->ring, &cqe);
        while (rc == -EINTR);
        if (rc < 0)
            return rc;
        ring_complete(kf, cqe);
    }
    while (io_uring_peek_cqe(&kf->ring, &cqe) == 0)
        ring_complete(kf, cqe);
    return ring_submit(kf);
}

/* Starts the transfer of len bytes between buf and the file at off for layer state lay, in
 * pieces of at most NF_KV_IO_MAX. */
static int xfer(struct nf_kv_file *kf, uint32_t lay, bool write, uint8_t *buf, uint64_t off,
                uint64_t len)
{
    while (len > 0) {
        const uint32_t n = len < NF_KV_IO_MAX ? (uint32_t)len : NF_KV_IO_MAX;
        uint32_t i;
        while ((i = req_get(kf)) == NF_KV_REQ_NONE) { /* all in flight: wait for one */
            int rc = kf->uring ? ring_reap(kf, true) : -EBUSY;
            if (rc < 0)
                return rc;
        }
        kf->req[i] =
            (struct nf_kv_req){.lay = lay, .write = write, .buf = buf, .off = off, .len = n};
        if (write)
            kf->lay[lay].n_wr++;
        else
            kf->lay[lay].n_rd++;
        if (kf->uring) {
            int rc = ring_prep(kf, i);
            if (rc < 0) {
                req_finish(kf, i, rc);
                return rc;
            }
        } else {
            req_finish(kf, i, req_sync(kf, &kf->req[i]));
        }
        buf += n;
        off += n;
        len -= n;
    }
    return kf->uring ? ring_submit(kf) : 0;
}

/* --- layout ---------------------------------------------------------------------------------- */

static uint64_t span_k(const struct nf_kv_file *kf, int slot, int il)
{
    return ((uint64_t)slot * (uint64_t)kf->n_layer + (uint64_t)il) * kf->layer_k;
}

static uint64_t span_v(const struct nf_kv_file *kf, int slot, int il)
{
    return kf->size_k + ((uint64_t)slot * (uint64_t)kf->n_layer + (uint64_t)il) * kf->layer_v;
}

/* Starts the transfer of positions [p0, p1) of (slot, il), K and V. */
static int xfer_rows(struct nf_kv_file *kf, int slot, int il, bool write, int p0, int p1)
{
    const uint32_t lay = (uint32_t)(slot * kf->n_layer + il);
    const uint64_t ok = span_k(kf, slot, il) + (uint64_t)p0 * kf->row_k;
    int rc = xfer(kf, lay, write, kf->mem + ok, ok, (uint64_t)(p1 - p0) * kf->row_k);
    if (rc == 0 && kf->row_v) {
        const uint64_t ov = span_v(kf, slot, il) + (uint64_t)p0 * kf->row_v;
        rc = xfer(kf, lay, write, kf->mem + ov, ov, (uint64_t)(p1 - p0) * kf->row_v);
    }
    return rc;
}

/* Gives back the whole pages of [off, off + len) of the reserved range (they read as zeros
 * until written or read back). */
static void release(struct nf_kv_file *kf, uint64_t off, uint64_t len)
{
    const uint64_t a = round_up(off, NF_KV_PAGE), b = (off + len) / NF_KV_PAGE * NF_KV_PAGE;
    if (b > a)
        madvise(kf->mem + a, b - a, MADV_DONTNEED);
}

static void release_rows(struct nf_kv_file *kf, int slot, int il, int p0, int p1)
{
    release(kf, span_k(kf, slot, il) + (uint64_t)p0 * kf->row_k, (uint64_t)(p1 - p0) * kf->row_k);
    if (kf->row_v)
        release(kf, span_v(kf, slot, il) + (uint64_t)p0 * kf->row_v,
                (uint64_t)(p1 - p0) * kf->row_v);
}

/* Waits until no transfer of (slot, il) is in flight (reads with rd, writes with wr). */
static int wait_layer(struct nf_kv_file *kf, struct nf_kv_layer *l, bool rd, bool wr)
{
    while ((rd && l->n_rd) || (wr && l->n_wr)) {
        int rc = ring_reap(kf, true);
        if (rc < 0)
            return rc;
    }
    return kf->io_err;
}

/* --- the engine's calls ------------------------------------------------------------------ */

int nf_kv_file_open(struct nf_kv_file **out, const struct nf_kv_file_opts *o, char *err,
                    size_t errlen)
{
    if (!o->path || o->n_layer < 1 || o->n_ctx < 1 || o->n_slots < 1 || o->block < 1 ||
        o->row_k == 0)
        return nf_errf(err, errlen, NF_EUSAGE, "kv file: bad geometry");
    struct nf_kv_file *kf = calloc(1, sizeof(*kf));
    if (!kf)
        return nf_errf(err, errlen, -ENOMEM, "out of memory");
    kf->fd = -1;
    kf->n_layer = o->n_layer;
    kf->n_ctx = o->n_ctx;
    kf->n_slots = o->n_slots;
    kf->block = o->block;
    kf->row_k = o->row_k;
    kf->row_v = o->row_v;
    kf->layer_k = (uint64_t)o->n_ctx * o->row_k;
    kf->layer_v = (uint64_t)o->n_ctx * o->row_v;
    kf->size_k = nf_kv_file_bytes(o->n_layer, o->n_ctx, o->n_slots, o->block, o->row_k);
    kf->size_v = nf_kv_file_bytes(o->n_layer, o->n_ctx, o->n_slots, o->block, o->row_v);
    snprintf(kf->path, sizeof(kf->path), "%s", o->path);
    for (uint32_t i = 0; i < NF_KV_REQS; i++)
        kf->req[i].next_free = i + 1 < NF_KV_REQS ? i + 1 : NF_KV_REQ_NONE;
    int rc;
    kf->lay = calloc((size_t)o->n_slots * (size_t)o->n_layer, sizeof(*kf->lay));
    const size_t total = (size_t)(kf->size_k + kf->size_v);
    void *mem = mmap(NULL, total, PROT_READ | PROT_WRITE,
                     MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (!kf->lay || mem == MAP_FAILED) {
        rc = nf_errf(err, errlen, -ENOMEM, "kv file: cannot reserve %zu bytes of address space",
                     total);
        goto fail;
    }
    kf->mem = mem;
    /* O_DIRECT needs every transfer aligned: blocks and layer spans of whole pages. */
    const bool aligned = ((uint64_t)o->block * o->row_k) % NF_KV_PAGE == 0 &&
                         ((uint64_t)o->block * o->row_v) % NF_KV_PAGE == 0 &&
                         kf->layer_k % NF_KV_PAGE == 0 && kf->layer_v % NF_KV_PAGE == 0;
    kf->fd = open(o->path, O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC | (aligned ? O_DIRECT : 0), 0600);
    if (kf->fd < 0 && aligned && errno == EINVAL) /* a file system without O_DIRECT */
        kf->fd = open(o->path, O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    else
        kf->direct = aligned;
    if (kf->fd < 0) {
        rc = nf_errf(err, errlen, -errno, "kv file %s: %s", o->path, strerror(errno));
        goto fail;
    }
    if (ftruncate(kf->fd, (off_t)(kf->size_k + kf->size_v)) < 0) {
        rc = nf_errf(err, errlen, -errno, "kv file %s: cannot size it to %zu bytes: %s", o->path,
                     total, strerror(errno));
        goto fail;
    }
    kf->uring = io_uring_queue_init(NF_KV_QD, &kf->ring, 0) == 0;
    *out = kf;
    return 0;
fail:
    nf_kv_file_close(kf);
    return rc;
}

void nf_kv_file_close(struct nf_kv_file *kf)
{
    if (!kf)
        return;
    if (kf->uring) {
        for (int i = 0; kf->lay && i < kf->n_slots * kf->n_layer; i++)
            if (wait_layer(kf, &kf->lay[i], true, true) < 0 && kf->io_err == 0)
                break; /* the ring itself failed: nothing more will complete */
        io_uring_queue_exit(&kf->ring);
    }
    if (kf->fd >= 0) {
        close(kf->fd);
        unlink(kf->path);
    }
    if (kf->mem)
        munmap(kf->mem, (size_t)(kf->size_k + kf->size_v));
    free(kf->lay);
    free(kf);
}

void *nf_kv_file_k(struct nf_kv_file *kf, int slot)
{
    return kf->mem + span_k(kf, slot, 0);
}

void *nf_kv_file_v(struct nf_kv_file *kf, int slot)
{
    return kf->row_v ? kf->mem + span_v(kf, slot, 0) : NULL;
}

static struct nf_kv_layer *layer(struct nf_kv_file *kf, int slot, int il)
{
    NF_ASSERT(slot >= 0 && slot < kf->n_slots && il >= 0 && il < kf->n_layer);
    return &kf->lay[slot * kf->n_layer + il];
}

void nf_kv_file_layer_prefetch(struct nf_kv_file *kf, int slot, int il)
{
    struct nf_kv_layer *l = layer(kf, slot, il);
    if (l->loaded || l->n_rd || l->kept == 0 || kf->io_err)
        return;
    /* A failure here is seen again (io_err, or the reads not done) by the load that follows. */
    if (xfer_rows(kf, slot, il, false, 0, l->kept) < 0 && !kf->io_err)
        kf->io_err = -EIO;
}

int nf_kv_file_layer_load(struct nf_kv_file *kf, int slot, int il)
{
    struct nf_kv_layer *l = layer(kf, slot, il);
    if (l->loaded || l->kept == 0)
        return kf->io_err;
    const uint64_t t0 = nf_now_ns();
    nf_kv_file_layer_prefetch(kf, slot, il);
    int rc = wait_layer(kf, l, true, false);
    kf->st.wait_ns += nf_now_ns() - t0;
    if (rc < 0) {
        snprintf(kf->err, sizeof(kf->err), "kv file %s: reading layer %d: %s", kf->path, il,
                 nf_strerror(rc));
        return rc;
    }
    l->loaded = true;
    const uint64_t res = (uint64_t)l->kept * (kf->row_k + kf->row_v);
    kf->resident += res;
    if (kf->resident > kf->st.resident_max)
        kf->st.resident_max = kf->resident;
    return 0;
}

int nf_kv_file_layer_store(struct nf_kv_file *kf, int slot, int il, int n_end)
{
    struct nf_kv_layer *l = layer(kf, slot, il);
    NF_ASSERT(n_end >= l->wr_end && n_end <= kf->n_ctx);
    if (kf->uring && ring_reap(kf, false) < 0 && !kf->io_err)
        kf->io_err = -EIO;
    if (kf->io_err) {
        snprintf(kf->err, sizeof(kf->err), "kv file %s: writing: %s", kf->path,
                 nf_strerror(kf->io_err));
        return kf->io_err;
    }
    if (l->loaded)
        kf->resident -= (uint64_t)l->kept * (kf->row_k + kf->row_v);
    l->loaded = false;
    const int full = n_end / kf->block * kf->block;
    /* Before more blocks are written, the previous ones (a block's worth of tokens ago in
     * decode) must be durable, so that at most the newest block and the one being written stay
     * resident per layer (nf_kv_file_resident_bound). */
    int rc = full > l->wr_end && l->n_wr ? wait_layer(kf, l, false, true) : 0;
    if (rc < 0) {
        snprintf(kf->err, sizeof(kf->err), "kv file %s: writing layer %d: %s", kf->path, il,
                 nf_strerror(rc));
        return rc;
    }
    if (l->n_wr == 0) /* the earlier writes are durable: their blocks may go */
        l->kept = l->wr_end;
    release_rows(kf, slot, il, 0, l->kept);
    if (full > l->wr_end) {
        rc = xfer_rows(kf, slot, il, true, l->wr_end, full);
        l->wr_end = full;
        if (rc < 0) {
            kf->io_err = kf->io_err ? kf->io_err : rc;
            snprintf(kf->err, sizeof(kf->err), "kv file %s: writing layer %d: %s", kf->path, il,
                     nf_strerror(rc));
            return rc;
        }
    }
    return 0;
}

void nf_kv_file_reset(struct nf_kv_file *kf, int slot)
{
    for (int il = 0; il < kf->n_layer; il++) {
        struct nf_kv_layer *l = layer(kf, slot, il);
        wait_layer(kf, l, true, true);
        if (l->loaded)
            kf->resident -= (uint64_t)l->kept * (kf->row_k + kf->row_v);
        *l = (struct nf_kv_layer){0};
    }
    release(kf, span_k(kf, slot, 0), (uint64_t)kf->n_layer * kf->layer_k);
    if (kf->row_v)
        release(kf, span_v(kf, slot, 0), (uint64_t)kf->n_layer * kf->layer_v);
    /* A failed transfer belonged to a sequence now forgotten. */
    kf->io_err = 0;
}

int nf_kv_file_rollback(struct nf_kv_file *kf, int slot, int n_past)
{
    const int b = n_past / kf->block * kf->block;
    for (int il = 0; il < kf->n_layer; il++) {
        struct nf_kv_layer *l = layer(kf, slot, il);
        int rc = wait_layer(kf, l, true, true);
        if (rc < 0)
            return rc;
        if (l->loaded) {
            kf->resident -= (uint64_t)l->kept * (kf->row_k + kf->row_v);
            l->loaded = false;
        }
        if (b < l->kept) { /* the block that will take new rows comes back into memory */
            if ((rc = xfer_rows(kf, slot, il, false, b, l->kept)) < 0 ||
                (rc = wait_layer(kf, l, true, false)) < 0)
                return rc;
            l->kept = b;
        }
        if (l->wr_end > b)
            l->wr_end = b;
    }
    return 0;
}

void nf_kv_file_get_stats(const struct nf_kv_file *kf, struct nf_kv_file_stats *out)
{
    *out = kf->st;
}

int nf_kv_file_n_slots(const struct nf_kv_file *kf)
{
    return kf->n_slots;
}

const char *nf_kv_file_error(const struct nf_kv_file *kf)
{
    return kf->err;
}
