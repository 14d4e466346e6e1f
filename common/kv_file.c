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
/* The window's default size (nf_kv_file_window_blocks): this many bytes of blocks, within
 * these many blocks. */
#define NF_KV_WINDOW_BYTES ((uint64_t)16 << 20)
#define NF_KV_WINDOW_MIN   4
#define NF_KV_WINDOW_MAX   1024
#define NF_KV_ENT_NONE     UINT32_MAX

/* Window entry states (struct nf_kv_file.est). */
enum { NF_KV_OUT = 0, NF_KV_READING, NF_KV_IN };

/* One read or write in flight (user_data is its index). */
struct nf_kv_req {
    uint32_t lay; /* index of its struct nf_kv_layer */
    bool write;
    uint8_t *buf;
    uint64_t off;
    uint32_t len, done; /* done: bytes transferred so far (short transfers are resubmitted) */
    uint32_t ent;       /* the window entry a read fills, or NF_KV_ENT_NONE */
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
    /* The window (nf_kv_file_need): entry e = ((slot * n_layer + il) * 2 + kind) * n_blk + b
     * is block b of K (kind 0) or V (kind 1) of (slot, il), read back for the attention walk.
     * win holds the admitted entries, oldest first; at most win_cap of them. */
    int n_blk, win_cap, win_n;
    uint32_t *win;    /* (win_cap) */
    uint8_t *est;     /* (n_ent) NF_KV_OUT, NF_KV_READING or NF_KV_IN */
    uint16_t *erd;    /* (n_ent) reads in flight */
    uint32_t *estamp; /* (n_ent) the nf_kv_file_need call that last wanted it */
    uint32_t stamp;
    uint32_t prev;      /* the block the previous nf_kv_file_need call made resident: kept too */
    uint64_t win_bytes; /* bytes of the admitted entries */
    /* The window's memory: win_cap slots of slot_bytes (a block of the wider row), mapped and
     * touched once at open and reused, never given back: an entry's block is read into its
     * slot (eslot), not into its layout address. Blocks read into pages that the kernel
     * faulted in for the read cost the walk's kernels 10-20x more per row than pages the CPU
     * touched first (bench_kv_walk; docs/measurements.md), and a fixed buffer has no page
     * churn either. The next slot is taken round-robin from slot_next, so that blocks admitted
     * in the walk's order lie one after the other and nf_kv_file_need hands out runs of them. */
    uint8_t *wbuf;
    size_t wbuf_len, wbuf_off, slot_bytes; /* wbuf_off: from the mapping's start */
    uint16_t *eslot;                       /* (n_ent) the slot of an admitted entry */
    uint8_t *slot_used;                    /* (win_cap) */
    int slot_next;
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

int nf_kv_file_window_blocks(int n_ctx, int block, size_t row)
{
    /* (Half a layer's blocks when that is less: a small cache is not outgrown.) */
    uint64_t w = NF_KV_WINDOW_BYTES / ((uint64_t)block * row);
    w = w < (uint64_t)n_ctx / (2 * (uint64_t)block) ? w : (uint64_t)n_ctx / (2 * (uint64_t)block);
    return w < NF_KV_WINDOW_MIN   ? NF_KV_WINDOW_MIN
           : w > NF_KV_WINDOW_MAX ? NF_KV_WINDOW_MAX
                                  : (int)w;
}

uint64_t nf_kv_file_prompt_layer(int n_ctx, size_t row)
{
    const uint64_t b = (uint64_t)n_ctx * row;
    return b <= NF_KV_LAYER_BYTES ? b : 0;
}

uint64_t nf_kv_file_resident_bound(int n_layer, int n_ctx, int n_slots, int block, size_t row)
{
    /* The newest block and the one being written of every layer, then the window; never more
     * than the whole cache. n_ctx only caps it. */
    const uint64_t whole = (uint64_t)n_slots * (uint64_t)n_layer * (uint64_t)n_ctx * row;
    const uint64_t b =
        (uint64_t)n_slots * 2 * (uint64_t)n_layer * (uint64_t)block * row +
        (uint64_t)nf_kv_file_window_blocks(n_ctx, block, row) * (uint64_t)block * row;
    return b < whole ? b : whole;
}

uint64_t nf_kv_file_newest_bound(int n_layer, int n_ctx, int n_slots, int block, size_t row)
{
    const uint64_t whole = (uint64_t)n_slots * (uint64_t)n_layer * (uint64_t)n_ctx * row;
    const uint64_t b = (uint64_t)n_slots * 2 * (uint64_t)n_layer * (uint64_t)block * row;
    return b < whole ? b : whole;
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
        /* (A failed read leaves its entry READING with no read in flight: nf_kv_file_need
         * reads it again once the error is forgotten.) */
        if (r->ent != NF_KV_ENT_NONE && --kf->erd[r->ent] == 0 && res >= 0 &&
            kf->est[r->ent] == NF_KV_READING)
            kf->est[r->ent] = NF_KV_IN;
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
                uint64_t len, uint32_t ent)
{
    while (len > 0) {
        const uint32_t n = len < NF_KV_IO_MAX ? (uint32_t)len : NF_KV_IO_MAX;
        uint32_t i;
        while ((i = req_get(kf)) == NF_KV_REQ_NONE) { /* all in flight: wait for one */
            int rc = kf->uring ? ring_reap(kf, true) : -EBUSY;
            if (rc < 0)
                return rc;
        }
        kf->req[i] = (struct nf_kv_req){
            .lay = lay, .write = write, .buf = buf, .off = off, .len = n, .ent = ent};
        if (write)
            kf->lay[lay].n_wr++;
        else
            kf->lay[lay].n_rd++;
        if (ent != NF_KV_ENT_NONE)
            kf->erd[ent]++;
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

/* Writes a zero into every page of [off, off + len) of the reserved range, before a read
 * fills it: the CPU faults the released pages in, not the kernel's read, whose pages cost
 * the attention's kernels 10-15x per row afterwards on this machine (struct nf_kv_file.wbuf).
 * Every byte written is one the read overwrites. */
static void touch(struct nf_kv_file *kf, uint64_t off, uint64_t len)
{
    for (uint64_t p = off; p < off + len; p = (p / NF_KV_PAGE + 1) * NF_KV_PAGE)
        kf->mem[p] = 0;
}

/* Starts the transfer of positions [p0, p1) of (slot, il), K and V. */
static int xfer_rows(struct nf_kv_file *kf, int slot, int il, bool write, int p0, int p1)
{
    const uint32_t lay = (uint32_t)(slot * kf->n_layer + il);
    const uint64_t ok = span_k(kf, slot, il) + (uint64_t)p0 * kf->row_k;
    if (!write) {
        touch(kf, ok, (uint64_t)(p1 - p0) * kf->row_k);
        if (kf->row_v)
            touch(kf, span_v(kf, slot, il) + (uint64_t)p0 * kf->row_v,
                  (uint64_t)(p1 - p0) * kf->row_v);
    }
    int rc =
        xfer(kf, lay, write, kf->mem + ok, ok, (uint64_t)(p1 - p0) * kf->row_k, NF_KV_ENT_NONE);
    if (rc == 0 && kf->row_v) {
        const uint64_t ov = span_v(kf, slot, il) + (uint64_t)p0 * kf->row_v;
        rc =
            xfer(kf, lay, write, kf->mem + ov, ov, (uint64_t)(p1 - p0) * kf->row_v, NF_KV_ENT_NONE);
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

static struct nf_kv_layer *layer(struct nf_kv_file *kf, int slot, int il);

/* --- the window: blocks read back for the attention walk ------------------------------- */

static uint32_t ent_id(const struct nf_kv_file *kf, int slot, int il, int kind, int b)
{
    return (uint32_t)((((int64_t)slot * kf->n_layer + il) * 2 + kind) * kf->n_blk + b);
}

/* Offset and length of entry (slot, il, kind, b) in the reserved range (= in the file). */
static uint64_t ent_span(const struct nf_kv_file *kf, int slot, int il, int kind, int b,
                         uint64_t *len)
{
    const size_t row = kind ? kf->row_v : kf->row_k;
    *len = (uint64_t)kf->block * row;
    return (kind ? span_v(kf, slot, il) : span_k(kf, slot, il)) + (uint64_t)b * *len;
}

/* Entry e's block in the window's memory (its slot). */
static uint8_t *ent_buf(const struct nf_kv_file *kf, uint32_t e)
{
    return kf->wbuf + (size_t)kf->eslot[e] * kf->slot_bytes;
}

/* Takes entry e out of the window at index i: its slot becomes free (it must have no read in
 * flight). */
static void win_remove(struct nf_kv_file *kf, int i, int slot, int il, int kind, int b)
{
    const uint32_t e = kf->win[i];
    uint64_t len;
    ent_span(kf, slot, il, kind, b, &len);
    NF_ASSERT(kf->erd[e] == 0);
    kf->slot_used[kf->eslot[e]] = 0;
    kf->est[e] = NF_KV_OUT;
    kf->win_bytes -= len;
    memmove(kf->win + i, kf->win + i + 1, sizeof(*kf->win) * (size_t)(kf->win_n - i - 1));
    kf->win_n--;
}

static void ent_decode(const struct nf_kv_file *kf, uint32_t e, int *slot, int *il, int *kind,
                       int *b)
{
    *b = (int)(e % (uint32_t)kf->n_blk);
    e /= (uint32_t)kf->n_blk;
    *kind = (int)(e % 2);
    e /= 2;
    *il = (int)(e % (uint32_t)kf->n_layer);
    *slot = (int)(e / (uint32_t)kf->n_layer);
}

/* Waits for the reads of the window's entries of slot (every layer when il < 0, else layer
 * il) and gives them back. */
static int win_drop(struct nf_kv_file *kf, int slot, int il)
{
    int rc = 0;
    for (int i = kf->win_n - 1; i >= 0; i--) {
        int s, l, kind, b;
        ent_decode(kf, kf->win[i], &s, &l, &kind, &b);
        if (s != slot || (il >= 0 && l != il))
            continue;
        while (kf->erd[kf->win[i]] && rc == 0)
            rc = ring_reap(kf, true);
        if (rc < 0)
            return rc; /* the ring failed: the entry stays, its pages too */
        win_remove(kf, i, s, l, kind, b);
    }
    return 0;
}

/* Admits entry (slot, il, kind, b) into the window and issues its read, giving back the oldest
 * entry not wanted by the current nf_kv_file_need call when the window is full. Returns 0,
 * 1 when every entry is wanted (nothing admitted), or a negative errno. */
static int win_admit(struct nf_kv_file *kf, int slot, int il, int kind, int b)
{
    const uint32_t e = ent_id(kf, slot, il, kind, b);
    if (kf->win_n == kf->win_cap) {
        int i = 0;
        while (i < kf->win_n && (kf->estamp[kf->win[i]] == kf->stamp || kf->erd[kf->win[i]] ||
                                 kf->win[i] == kf->prev))
            i++;
        if (i == kf->win_n)
            return 1;
        int s, l, k2, b2;
        ent_decode(kf, kf->win[i], &s, &l, &k2, &b2);
        win_remove(kf, i, s, l, k2, b2);
    }
    uint64_t len, off = ent_span(kf, slot, il, kind, b, &len);
    int si = kf->slot_next; /* a free slot: there is one, win_n < win_cap */
    while (kf->slot_used[si])
        si = si + 1 < kf->win_cap ? si + 1 : 0;
    kf->slot_used[si] = 1;
    kf->slot_next = si + 1 < kf->win_cap ? si + 1 : 0;
    kf->eslot[e] = (uint16_t)si;
    kf->win[kf->win_n++] = e;
    kf->est[e] = NF_KV_READING;
    kf->win_bytes += len;
    const uint64_t res = kf->win_bytes + kf->resident;
    if (res > kf->st.resident_max)
        kf->st.resident_max = res;
    /* (The synchronous back end completes it here: req_finish marks it NF_KV_IN.) */
    return xfer(kf, (uint32_t)(slot * kf->n_layer + il), false, ent_buf(kf, e), off, len, e);
}

/* The file-backed blocks of (slot, il): [0, kept / block), unless the whole layer is loaded. */
static int file_blocks(struct nf_kv_file *kf, int slot, int il)
{
    const struct nf_kv_layer *l = &kf->lay[slot * kf->n_layer + il];
    return l->loaded ? 0 : l->kept / kf->block;
}

/* The walk's order: the K blocks of a layer, its V blocks, then the next layer's. Moves
 * (il, kind, b) to the next file-backed entry; returns false past the last layer. */
static bool walk_next(struct nf_kv_file *kf, int slot, int *il, int *kind, int *b)
{
    (*b)++;
    while (*b >= file_blocks(kf, slot, *il)) {
        *b = 0;
        if (*kind == 0 && kf->row_v) {
            *kind = 1;
        } else {
            *kind = 0;
            if (++*il >= kf->n_layer)
                return false;
        }
    }
    return true;
}

/* Wants the win_cap - 1 entries after (il, kind, b) in the walk's order: issues the reads of
 * those not in the window. */
static int walk_ahead(struct nf_kv_file *kf, int slot, int il, int kind, int b)
{
    for (int n = 1; n < kf->win_cap && walk_next(kf, slot, &il, &kind, &b); n++) {
        const uint32_t e = ent_id(kf, slot, il, kind, b);
        kf->estamp[e] = kf->stamp;
        if (kf->est[e] == NF_KV_OUT) {
            int rc = win_admit(kf, slot, il, kind, b);
            if (rc != 0)
                return rc < 0 ? rc : 0;
        }
    }
    return 0;
}

int nf_kv_file_need(struct nf_kv_file *kf, int slot, int il, int kind, int b, int b_end,
                    const void **base)
{
    NF_ASSERT(kind == 0 || kf->row_v);
    layer(kf, slot, il);
    *base = kf->mem + (kind ? span_v(kf, slot, il) : span_k(kf, slot, il)) +
            (uint64_t)b * (uint64_t)kf->block * (kind ? kf->row_v : kf->row_k);
    const int nb = file_blocks(kf, slot, il);
    if (b >= nb)
        return b_end - b; /* resident: the newest blocks (or the whole layer, loaded) */
    if (kf->io_err)
        return kf->io_err;
    const uint64_t t0 = nf_now_ns();
    const uint32_t e = ent_id(kf, slot, il, kind, b);
    kf->stamp++;
    kf->estamp[e] = kf->stamp;
    int rc = 0;
    /* A full window of reads in flight: wait for one, then an entry can be given back. */
    while (kf->est[e] == NF_KV_OUT && (rc = win_admit(kf, slot, il, kind, b)) == 1)
        rc = ring_reap(kf, true);
    if (rc == 0 && kf->est[e] == NF_KV_READING && kf->erd[e] == 0) { /* an earlier read failed */
        uint64_t len, off = ent_span(kf, slot, il, kind, b, &len);
        rc = xfer(kf, (uint32_t)(slot * kf->n_layer + il), false, ent_buf(kf, e), off, len, e);
    }
    if (rc == 0)
        rc = walk_ahead(kf, slot, il, kind, b);
    while (rc == 0 && kf->est[e] != NF_KV_IN && !kf->io_err)
        rc = ring_reap(kf, true);
    if (rc == 0 && kf->uring)
        rc = ring_reap(kf, false);
    kf->st.wait_ns += nf_now_ns() - t0;
    rc = rc < 0 ? rc : kf->io_err;
    if (rc < 0) {
        snprintf(kf->err, sizeof(kf->err), "kv file %s: reading layer %d: %s", kf->path, il,
                 nf_strerror(rc));
        return rc;
    }
    kf->prev = e;
    *base = ent_buf(kf, e);
    /* The blocks after it that are read back into the slots after its, when its blocks fill
     * their slots (a narrower row's do not: K and V of different types); the resident blocks
     * from nb on are at their layout addresses, for the next call. */
    const bool packed = (size_t)kf->block * (kind ? kf->row_v : kf->row_k) == kf->slot_bytes;
    int n = 1;
    for (uint32_t en; packed && b + n < b_end && b + n < nb; n++) {
        en = ent_id(kf, slot, il, kind, b + n);
        if (kf->est[en] != NF_KV_IN || kf->eslot[en] != kf->eslot[e] + n)
            break;
    }
    return n;
}

int nf_kv_file_walk_prefetch(struct nf_kv_file *kf, int slot, int il)
{
    if (il >= kf->n_layer || kf->io_err)
        return kf->io_err;
    int kind = 0, b = -1;
    if (!walk_next(kf, slot, &il, &kind, &b))
        return 0;
    kf->stamp++;
    const uint32_t e = ent_id(kf, slot, il, kind, b);
    kf->estamp[e] = kf->stamp;
    int rc = kf->est[e] == NF_KV_OUT ? win_admit(kf, slot, il, kind, b) : 0;
    if (rc == 0)
        rc = walk_ahead(kf, slot, il, kind, b);
    return rc < 0 ? rc : 0;
}

/* --- the engine's calls ------------------------------------------------------------------ */

/* Maps the window's memory: win_cap slots of a block of the wider row, at a 2 MiB boundary
 * with MADV_HUGEPAGE over its whole huge pages (fewer TLB misses for the walk's rows, kvd
 * apart), every page touched now
 * so that the reads land in pages the CPU faulted in (struct nf_kv_file.wbuf). */
static int win_map(struct nf_kv_file *kf, char *err, size_t errlen)
{
    const size_t huge = (size_t)2 << 20;
    kf->slot_bytes = (size_t)kf->block * (kf->row_k > kf->row_v ? kf->row_k : kf->row_v);
    const size_t len = kf->slot_bytes * (size_t)kf->win_cap;
    const size_t map = round_up(len, NF_KV_PAGE) + huge;
    uint8_t *m = mmap(NULL, map, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (m == MAP_FAILED)
        return nf_errf(err, errlen, -ENOMEM, "kv file: cannot map a window of %zu bytes", len);
    kf->wbuf_len = map;
    kf->wbuf_off = (size_t)(round_up((uint64_t)(uintptr_t)m, huge) - (uint64_t)(uintptr_t)m);
    kf->wbuf = m + kf->wbuf_off;
#ifdef MADV_HUGEPAGE
    if (len >= huge) /* (whole huge pages only: a small window stays small; advice, a failure
                      * is harmless) */
        madvise(kf->wbuf, len / huge * huge, MADV_HUGEPAGE);
#endif
    memset(kf->wbuf, 0, len);
    return 0;
}

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
    kf->prev = NF_KV_ENT_NONE;
    for (uint32_t i = 0; i < NF_KV_REQS; i++)
        kf->req[i].next_free = i + 1 < NF_KV_REQS ? i + 1 : NF_KV_REQ_NONE;
    int rc;
    kf->lay = calloc((size_t)o->n_slots * (size_t)o->n_layer, sizeof(*kf->lay));
    kf->n_blk = (o->n_ctx + o->block - 1) / o->block;
    kf->win_cap = o->window > 0 ? o->window
                                : nf_kv_file_window_blocks(o->n_ctx, o->block, o->row_k + o->row_v);
    if (kf->win_cap < 2)
        kf->win_cap = 2; /* a K block and a V block at once (the flash walk) */
    const size_t n_ent = (size_t)o->n_slots * (size_t)o->n_layer * 2 * (size_t)kf->n_blk;
    kf->win = calloc((size_t)kf->win_cap, sizeof(*kf->win));
    kf->est = calloc(n_ent, sizeof(*kf->est));
    kf->erd = calloc(n_ent, sizeof(*kf->erd));
    kf->estamp = calloc(n_ent, sizeof(*kf->estamp));
    kf->eslot = calloc(n_ent, sizeof(*kf->eslot));
    kf->slot_used = calloc((size_t)kf->win_cap, 1);
    kf->st.window = (uint64_t)kf->win_cap * (uint64_t)o->block *
                    (uint64_t)(o->row_k > o->row_v ? o->row_k : o->row_v);
    const size_t total = (size_t)(kf->size_k + kf->size_v);
    void *mem = mmap(NULL, total, PROT_READ | PROT_WRITE,
                     MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    kf->mem = mem == MAP_FAILED ? NULL : mem;
    if (!kf->lay || !kf->win || !kf->est || !kf->erd || !kf->estamp || !kf->eslot ||
        !kf->slot_used || !kf->mem || kf->win_cap > UINT16_MAX) {
        rc = nf_errf(err, errlen, -ENOMEM, "kv file: cannot reserve %zu bytes of address space",
                     total);
        goto fail;
    }
    if ((rc = win_map(kf, err, errlen)) < 0)
        goto fail;
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
    if (kf->wbuf)
        munmap(kf->wbuf - kf->wbuf_off, kf->wbuf_len);
    free(kf->eslot);
    free(kf->slot_used);
    free(kf->lay);
    free(kf->win);
    free(kf->est);
    free(kf->erd);
    free(kf->estamp);
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
    kf->st.layer_loads++;
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
    if (kf->io_err || win_drop(kf, slot, il) < 0) {
        kf->io_err = kf->io_err ? kf->io_err : -EIO;
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
        /* A prompt chunk filled more than the two blocks the bound allows per layer: they
         * become durable and go now, not at the layer's next store. */
        if (rc == 0 && full - l->kept > 2 * kf->block &&
            (rc = wait_layer(kf, l, false, true)) == 0) {
            l->kept = full;
            release_rows(kf, slot, il, 0, l->kept);
        }
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
    win_drop(kf, slot, -1); /* (a failed ring leaves entries: reset below forgets them anyway) */
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
    /* [b, e): the block holding position n_past, whose rows before n_past stay (none when
     * n_past starts it). Every later position is to be overwritten before it is read: its
     * pages go, whether file-backed or still resident from the sequence rolled back. Reading
     * back all of [b, kept) instead, in every layer at once, held n_past - kept positions of
     * the whole model resident (a chat turn reusing a 1,536-token prefix of 2,046: ~200 MiB of
     * a 7B's f16 rows, past the plan's bound). */
    const int b = n_past / kf->block * kf->block;
    const int e = n_past > b ? (b + kf->block < kf->n_ctx ? b + kf->block : kf->n_ctx) : b;
    int rc0 = win_drop(kf, slot, -1);
    if (rc0 < 0)
        return rc0;
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
            const int re = e < l->kept ? e : l->kept;
            if (re > b && ((rc = xfer_rows(kf, slot, il, false, b, re)) < 0 ||
                           (rc = wait_layer(kf, l, true, false)) < 0))
                return rc;
            l->kept = b;
        }
        if (l->wr_end > b)
            l->wr_end = b;
        /* [0, kept) is durable (a loaded layer's copy goes too); [e, n_ctx) is dropped. */
        release_rows(kf, slot, il, 0, l->kept);
        release_rows(kf, slot, il, e, kf->n_ctx);
    }
    return 0;
}

int nf_kv_file_durable_blocks(const struct nf_kv_file *kf, int slot, int il)
{
    NF_ASSERT(slot >= 0 && slot < kf->n_slots && il >= 0 && il < kf->n_layer);
    return kf->lay[slot * kf->n_layer + il].kept / kf->block;
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
