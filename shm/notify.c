/* notify.c - futex-based wait/wake on a shared sequence word (see notify.h). */
#include "notify.h"

#include <errno.h>
#include <linux/futex.h>
#include <stddef.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

_Static_assert(sizeof(struct nf_notify) == 8, "notify layout is shared between processes");
_Static_assert(offsetof(struct nf_notify, seq) == 0, "notify layout");
_Static_assert(offsetof(struct nf_notify, waiters) == 4, "notify layout");
_Static_assert(sizeof(_Atomic uint32_t) == sizeof(uint32_t), "futex word is 32 bits");

/* Not FUTEX_PRIVATE_FLAG: waiter and waker may be different processes sharing the mapping. */
static long futex(_Atomic uint32_t *addr, int op, uint32_t val, const struct timespec *ts)
{
    return syscall(SYS_futex, (uint32_t *)addr, op, val, ts, NULL, 0);
}

void nf_notify_init(struct nf_notify *n)
{
    atomic_init(&n->seq, 0);
    atomic_init(&n->waiters, 0);
}

uint32_t nf_notify_seq(struct nf_notify *n)
{
    /* Acquire pairs with the seq-cst increment in nf_notify_wake(): what the waker did before
     * waking is visible once we see the new sequence. */
    return atomic_load_explicit(&n->seq, memory_order_acquire);
}

int nf_notify_wait(struct nf_notify *n, uint32_t seen, int timeout_ms)
{
    struct timespec ts, *tsp = NULL;
    if (timeout_ms >= 0) {
        ts.tv_sec = timeout_ms / 1000;
        ts.tv_nsec = (long)(timeout_ms % 1000) * 1000000L;
        tsp = &ts;
    }
    /* Seq-cst increment of waiters, then seq-cst load of seq: pairs with the seq-cst increment
     * of seq then load of waiters in nf_notify_wake(). Either we see the new sequence, or the
     * waker sees us waiting and calls futex wake; the kernel re-checks seq == seen atomically. */
    atomic_fetch_add_explicit(&n->waiters, 1, memory_order_seq_cst);
    int rc = 0;
    if (atomic_load_explicit(&n->seq, memory_order_seq_cst) == seen) {
        if (futex(&n->seq, FUTEX_WAIT, seen, tsp) < 0) {
            if (errno == ETIMEDOUT || errno == EINTR)
                rc = -errno;
            /* EAGAIN: the sequence already moved, which is success. */
        }
    }
    atomic_fetch_sub_explicit(&n->waiters, 1, memory_order_seq_cst);
    return rc;
}

void nf_notify_wake(struct nf_notify *n)
{
    /* Pairs with the seq-cst load of seq in nf_notify_wait() and the acquire in nf_notify_seq. */
    atomic_fetch_add_explicit(&n->seq, 1, memory_order_seq_cst);
    /* Pairs with the seq-cst increment of waiters in nf_notify_wait(). */
    if (atomic_load_explicit(&n->waiters, memory_order_seq_cst) > 0)
        futex(&n->seq, FUTEX_WAKE, INT32_MAX, NULL);
}
