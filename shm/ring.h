/* ring.h - lock-free single-producer single-consumer ring of fixed-size entries (shared memory).
 *
 * Modelled on DPDK's rte_ring. The ring is one contiguous block that may live in a shared
 * mapping at different addresses in different processes: it holds no pointers.
 *   - count (slots) is a power of two; all count slots are usable.
 *   - prod_tail and cons_tail are free-running 32-bit counters, masked with count - 1 on access;
 *     unsigned subtraction gives the fill level even after they wrap past UINT32_MAX.
 *   - The constant fields, the producer index and the consumer index sit on separate 64-byte
 *     cache lines, so the two sides never false-share.
 *   - Exactly one producer thread (sp_) and one consumer thread (sc_) at a time, possibly in
 *     different processes; nothing else is safe.
 * Bulk calls move all n entries or none; burst calls move as many as they can (up to n). */
#ifndef NF_RING_H
#define NF_RING_H

#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>

#define NF_RING_MAGIC     0x474e4952u /* "RING" */
#define NF_RING_CACHELINE 64
#define NF_RING_MAX_COUNT (1u << 30)
#define NF_RING_MAX_ESIZE 4096u

struct nf_ring {
    /* Cache line 0: written once by nf_ring_init, read-only afterwards. */
    _Atomic uint32_t magic; /* NF_RING_MAGIC once initialized */
    uint32_t count;         /* slots, a power of two */
    uint32_t mask;          /* count - 1 */
    uint32_t esize;         /* bytes per entry, a multiple of 4 */
    uint8_t pad0_[NF_RING_CACHELINE - 4 * sizeof(uint32_t)];
    /* Cache line 1: written only by the producer. */
    _Alignas(NF_RING_CACHELINE) _Atomic uint32_t prod_tail;
    uint8_t pad1_[NF_RING_CACHELINE - sizeof(uint32_t)];
    /* Cache line 2: written only by the consumer. */
    _Alignas(NF_RING_CACHELINE) _Atomic uint32_t cons_tail;
    uint8_t pad2_[NF_RING_CACHELINE - sizeof(uint32_t)];
    /* Cache line 3 on: count entries of esize bytes. */
    _Alignas(NF_RING_CACHELINE) uint8_t slots[];
};

/* Sets *size to the bytes a ring of count entries of esize bytes needs. Returns 0, or -EINVAL
 * when count is not a power of two in [1, NF_RING_MAX_COUNT] or esize is not a multiple of 4
 * in [4, NF_RING_MAX_ESIZE]. */
int nf_ring_memsize(uint32_t count, uint32_t esize, size_t *size);

/* Formats mem (mem_size bytes, 64-byte aligned) as an empty ring. Call before any producer or
 * consumer attaches. Returns 0, -EINVAL for bad parameters or alignment, or -ENOSPC when
 * mem_size is below nf_ring_memsize(). */
int nf_ring_init(struct nf_ring *r, size_t mem_size, uint32_t count, uint32_t esize);

/* Checks a ring found in shared memory (written by another process) before using it: magic,
 * count, mask and esize consistent and the ring within mem_size bytes. Returns 0,
 * NF_EBADMAGIC or NF_ECORRUPT. */
int nf_ring_check(const struct nf_ring *r, size_t mem_size);

/* Sets both indices to start, leaving the ring empty. Only while no producer or consumer is
 * active (tests use it to cross the 2^32 index wrap quickly). */
void nf_ring_reset(struct nf_ring *r, uint32_t start);

/* Producer only. Copies all n entries from objs (n * esize bytes) or none. Returns n or 0.
 * If free_space is not NULL it receives the free slots left after the call. */
unsigned nf_ring_sp_enqueue_bulk(struct nf_ring *r, const void *objs, unsigned n,
                                 unsigned *free_space);

/* Producer only. Copies up to n entries, as many as fit; returns how many. */
unsigned nf_ring_sp_enqueue_burst(struct nf_ring *r, const void *objs, unsigned n,
                                  unsigned *free_space);

/* Consumer only. Copies all n entries into objs or none. Returns n or 0. If available is not
 * NULL it receives the entries left after the call. */
unsigned nf_ring_sc_dequeue_bulk(struct nf_ring *r, void *objs, unsigned n, unsigned *available);

/* Consumer only. Copies up to n entries, as many as are there; returns how many. */
unsigned nf_ring_sc_dequeue_burst(struct nf_ring *r, void *objs, unsigned n, unsigned *available);

/* Entries in the ring (a snapshot; exact only when called by the producer or the consumer
 * while the other side is idle). */
unsigned nf_ring_count(const struct nf_ring *r);
unsigned nf_ring_free_count(const struct nf_ring *r);

#endif
