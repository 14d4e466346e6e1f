/* notify.h - completion signalling over shared memory: a futex word waiters sleep on.
 *
 * A struct nf_notify lives in the shared region (no pointers, 8 bytes). The waker bumps a
 * sequence number and calls futex wake only when someone sleeps; a waiter samples the
 * sequence, checks its own condition (a tile's state, say), and sleeps in the kernel until
 * the sequence moves. Nothing spins when idle. Usage:
 *     uint32_t seen = nf_notify_seq(n);
 *     while (!condition()) { nf_notify_wait(n, seen, -1); seen = nf_notify_seq(n); }
 * and on the other side: make condition() true, then nf_notify_wake(n). */
#ifndef NF_NOTIFY_H
#define NF_NOTIFY_H

#include <stdatomic.h>
#include <stdint.h>

struct nf_notify {
    _Atomic uint32_t seq;     /* bumped by every wake */
    _Atomic uint32_t waiters; /* threads inside nf_notify_wait() */
};

/* Initializes n in place (before other processes attach). */
void nf_notify_init(struct nf_notify *n);

/* The current sequence number, to pass to nf_notify_wait() after checking the condition. */
uint32_t nf_notify_seq(struct nf_notify *n);

/* Sleeps until the sequence differs from seen, or timeout_ms passes (< 0: no timeout).
 * Returns 0 (the sequence moved, or a spurious wake-up: re-check the condition),
 * -ETIMEDOUT or -EINTR. */
int nf_notify_wait(struct nf_notify *n, uint32_t seen, int timeout_ms);

/* Bumps the sequence and wakes every waiter (no system call when nobody waits). */
void nf_notify_wake(struct nf_notify *n);

#endif
