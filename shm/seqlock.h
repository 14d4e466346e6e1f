/* seqlock.h - a single-writer sequence lock over shared memory (after DPDK's rte_seqcount).
 *
 * One 64-bit sequence word guards a block of data. The writer makes it odd, writes the
 * data, and makes it even again; a reader loads an even sequence, copies the data and loads the
 * sequence again: the copy is whole (not torn) when both loads agree. 0 means never written. No
 * one waits on anyone: a reader that meets a writer retries (or gives up), the writer is never
 * held back. Only one writer per word (callers serialize their writes); any number of readers,
 * in any process mapping the word.
 *
 * Writer:                                   Reader:
 *     uint64_t sn = nf_seqlock_write_begin(w);  uint64_t sn;
 *     ... store the data ...                     do {
 *     nf_seqlock_write_end(w, sn);                   sn = nf_seqlock_read_begin(w);
 *                                                    ... copy the data ...
 *                                                } while (nf_seqlock_read_retry(w, sn));
 * A copy made while the writer is inside may be torn, and read_retry then says so: a reader
 * must act only on a copy for which read_retry returned false. Access the data with relaxed
 * atomics (__atomic_load_n / __atomic_store_n with __ATOMIC_RELAXED: on x86-64 the same plain
 * moves), not plain loads and stores: the reader's loads race with the writer's stores by
 * design, which C11 makes undefined for plain accesses and ThreadSanitizer reports (Boehm, "Can
 * seqlocks get along with programming language memory models?", 2012). The fences below order
 * those relaxed accesses against the sequence word. */
#ifndef NF_SEQLOCK_H
#define NF_SEQLOCK_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>

_Static_assert(ATOMIC_LLONG_LOCK_FREE == 2, "a 64-bit sequence word must be lock-free");
_Static_assert(sizeof(_Atomic uint64_t) == 8, "the sequence word is a plain 64-bit word");

/* Writer: makes the sequence odd and returns the even value it had, for nf_seqlock_write_end().
 * The single writer owns the word, so a relaxed load and store suffice for the increment. */
static inline uint64_t nf_seqlock_write_begin(_Atomic uint64_t *sn)
{
    uint64_t s = atomic_load_explicit(sn, memory_order_relaxed);
    atomic_store_explicit(sn, s + 1, memory_order_relaxed);
    /* Release fence: the odd sequence is visible before any data store that follows (pairs with
     * the reader's acquire fence before its second sequence load in nf_seqlock_read_retry()). */
    atomic_thread_fence(memory_order_release);
    return s;
}

/* Writer: publishes the data stored since nf_seqlock_write_begin() returned begin. */
static inline void nf_seqlock_write_end(_Atomic uint64_t *sn, uint64_t begin)
{
    /* Release: the data is visible before the even sequence (pairs with the reader's acquire
     * load of the sequence in nf_seqlock_read_begin()). */
    atomic_store_explicit(sn, begin + 2, memory_order_release);
}

/* Reader: the sequence before a copy; odd while a writer is inside (a copy made then is torn),
 * 0 when the data was never written. */
static inline uint64_t nf_seqlock_read_begin(const _Atomic uint64_t *sn)
{
    /* Acquire pairs with the writer's release store of the even sequence in
     * nf_seqlock_write_end(): the data written before it is visible to the copy that follows. */
    return atomic_load_explicit((_Atomic uint64_t *)sn, memory_order_acquire);
}

/* Reader: true when the copy made since nf_seqlock_read_begin() returned begin may be torn (a
 * writer was inside at begin, or has entered since): discard it. */
static inline bool nf_seqlock_read_retry(const _Atomic uint64_t *sn, uint64_t begin)
{
    if (begin & 1)
        return true;
    /* Acquire fence: the copies above are done before the sequence is loaded again (pairs with
     * the writer's release fence after its odd store in nf_seqlock_write_begin()). */
    atomic_thread_fence(memory_order_acquire);
    return atomic_load_explicit((_Atomic uint64_t *)sn, memory_order_relaxed) != begin;
}

/* Anyone: the sequence without ordering, as a hint only (has the writer published since we last
 * read sn?); never a guard for data. */
static inline uint64_t nf_seqlock_peek(const _Atomic uint64_t *sn)
{
    return atomic_load_explicit((_Atomic uint64_t *)sn, memory_order_relaxed);
}

#endif
