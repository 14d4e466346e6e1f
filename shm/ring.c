/* ring.c - single-producer single-consumer ring over shared memory (see ring.h). */
#include "ring.h"

#include <errno.h>
#include <stdbool.h>
#include <string.h>

#include "nf_err.h"

/* The layout is shared between processes (and possibly builds): freeze it. */
_Static_assert(offsetof(struct nf_ring, magic) == 0, "ring layout");
_Static_assert(offsetof(struct nf_ring, count) == 4, "ring layout");
_Static_assert(offsetof(struct nf_ring, mask) == 8, "ring layout");
_Static_assert(offsetof(struct nf_ring, esize) == 12, "ring layout");
_Static_assert(offsetof(struct nf_ring, prod_tail) == 64, "producer index on its own line");
_Static_assert(offsetof(struct nf_ring, cons_tail) == 128, "consumer index on its own line");
_Static_assert(offsetof(struct nf_ring, slots) == 192, "entries start on line 3");
_Static_assert(sizeof(struct nf_ring) == 192, "ring header is three cache lines");
_Static_assert(sizeof(_Atomic uint32_t) == 4, "atomic index is a plain 32-bit word");
/* Lock-free atomics are address-free, so they work between processes sharing the mapping. */
_Static_assert(ATOMIC_INT_LOCK_FREE == 2, "32-bit atomics must be lock-free");

static bool ring_params_ok(uint32_t count, uint32_t esize)
{
    return count >= 1 && count <= NF_RING_MAX_COUNT && (count & (count - 1)) == 0 && esize >= 4 &&
           esize <= NF_RING_MAX_ESIZE && esize % 4 == 0;
}

int nf_ring_memsize(uint32_t count, uint32_t esize, size_t *size)
{
    if (!ring_params_ok(count, esize))
        return -EINVAL;
    /* count <= 2^30 and esize <= 2^12: the product fits in 64 bits. */
    *size = sizeof(struct nf_ring) + (size_t)count * esize;
    return 0;
}

int nf_ring_init(struct nf_ring *r, size_t mem_size, uint32_t count, uint32_t esize)
{
    size_t need;
    if (nf_ring_memsize(count, esize, &need) < 0)
        return -EINVAL;
    if ((uintptr_t)r % NF_RING_CACHELINE != 0)
        return -EINVAL;
    if (mem_size < need)
        return -ENOSPC;
    memset(r, 0, sizeof(*r));
    r->count = count;
    r->mask = count - 1;
    r->esize = esize;
    atomic_init(&r->prod_tail, 0);
    atomic_init(&r->cons_tail, 0);
    /* Pairs with the acquire load of magic in nf_ring_check(): a process that sees the magic
     * sees the whole header. */
    atomic_store_explicit(&r->magic, NF_RING_MAGIC, memory_order_release);
    return 0;
}

int nf_ring_check(const struct nf_ring *r, size_t mem_size)
{
    size_t need;
    /* Pairs with the release store of magic in nf_ring_init(). */
    if (atomic_load_explicit(&((struct nf_ring *)r)->magic, memory_order_acquire) != NF_RING_MAGIC)
        return NF_EBADMAGIC;
    if (nf_ring_memsize(r->count, r->esize, &need) < 0 || r->mask != r->count - 1 ||
        need > mem_size)
        return NF_ECORRUPT;
    return 0;
}

void nf_ring_reset(struct nf_ring *r, uint32_t start)
{
    atomic_store_explicit(&r->prod_tail, start, memory_order_relaxed);
    /* Seq-cst: a later sp/sc call on another thread needs its own synchronization anyway. */
    atomic_store_explicit(&r->cons_tail, start, memory_order_seq_cst);
}

/* Copies n entries into the slots starting at index idx, splitting at the end of the array. */
static void copy_in(struct nf_ring *r, uint32_t idx, const uint8_t *src, unsigned n)
{
    uint32_t first = idx & r->mask;
    size_t es = r->esize;
    unsigned n1 = r->count - first < n ? r->count - first : n;
    memcpy(r->slots + (size_t)first * es, src, (size_t)n1 * es);
    if (n1 < n)
        memcpy(r->slots, src + (size_t)n1 * es, (size_t)(n - n1) * es);
}

static void copy_out(const struct nf_ring *r, uint32_t idx, uint8_t *dst, unsigned n)
{
    uint32_t first = idx & r->mask;
    size_t es = r->esize;
    unsigned n1 = r->count - first < n ? r->count - first : n;
    memcpy(dst, r->slots + (size_t)first * es, (size_t)n1 * es);
    if (n1 < n)
        memcpy(dst + (size_t)n1 * es, r->slots, (size_t)(n - n1) * es);
}

static unsigned enqueue(struct nf_ring *r, const void *objs, unsigned n, bool bulk,
                        unsigned *free_space)
{
    /* Only this thread writes prod_tail, so a relaxed load of our own index is enough. */
    uint32_t prod = atomic_load_explicit(&r->prod_tail, memory_order_relaxed);
    /* Acquire pairs with the consumer's release store of cons_tail in dequeue(): the consumer
     * has finished copying out of the slots it freed before we overwrite them. */
    uint32_t cons = atomic_load_explicit(&r->cons_tail, memory_order_acquire);
    unsigned free_n = r->count - (prod - cons);
    if (n > free_n)
        n = bulk ? 0 : free_n;
    if (n > 0) {
        copy_in(r, prod, objs, n);
        /* Release pairs with the consumer's acquire load of prod_tail in dequeue(): the entries
         * are written before the consumer can see them. */
        atomic_store_explicit(&r->prod_tail, prod + n, memory_order_release);
    }
    if (free_space)
        *free_space = free_n - n;
    return n;
}

static unsigned dequeue(struct nf_ring *r, void *objs, unsigned n, bool bulk, unsigned *available)
{
    /* Only this thread writes cons_tail. */
    uint32_t cons = atomic_load_explicit(&r->cons_tail, memory_order_relaxed);
    /* Acquire pairs with the producer's release store of prod_tail in enqueue(). */
    uint32_t prod = atomic_load_explicit(&r->prod_tail, memory_order_acquire);
    unsigned avail = prod - cons;
    if (n > avail)
        n = bulk ? 0 : avail;
    if (n > 0) {
        copy_out(r, cons, objs, n);
        /* Release pairs with the producer's acquire load of cons_tail in enqueue(): our reads
         * of the slots complete before the producer may reuse them. */
        atomic_store_explicit(&r->cons_tail, cons + n, memory_order_release);
    }
    if (available)
        *available = avail - n;
    return n;
}

unsigned nf_ring_sp_enqueue_bulk(struct nf_ring *r, const void *objs, unsigned n,
                                 unsigned *free_space)
{
    return enqueue(r, objs, n, true, free_space);
}

unsigned nf_ring_sp_enqueue_burst(struct nf_ring *r, const void *objs, unsigned n,
                                  unsigned *free_space)
{
    return enqueue(r, objs, n, false, free_space);
}

unsigned nf_ring_sc_dequeue_bulk(struct nf_ring *r, void *objs, unsigned n, unsigned *available)
{
    return dequeue(r, objs, n, true, available);
}

unsigned nf_ring_sc_dequeue_burst(struct nf_ring *r, void *objs, unsigned n, unsigned *available)
{
    return dequeue(r, objs, n, false, available);
}

unsigned nf_ring_count(const struct nf_ring *r)
{
    /* Acquire on both: a snapshot, ordered after whatever the caller observed before. */
    uint32_t cons = atomic_load_explicit(&((struct nf_ring *)r)->cons_tail, memory_order_acquire);
    uint32_t prod = atomic_load_explicit(&((struct nf_ring *)r)->prod_tail, memory_order_acquire);
    unsigned n = prod - cons;
    return n > r->count ? r->count : n; /* a torn snapshot can overshoot; clamp */
}

unsigned nf_ring_free_count(const struct nf_ring *r)
{
    return r->count - nf_ring_count(r);
}
