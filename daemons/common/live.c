/* live.c - liveness of a stack's daemons: each records its pid and start time in the region
 * (struct nf_stack_live), the others check those records every NF_LIVE_CHECK_MS against /proc
 * and mark a daemon that vanished without a clean exit dead (sync->dead_mask). */
#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "daemon.h"
#include "stack.h"

static const char *const live_roles[NF_STACK_DAEMONS] = {NF_ROLE_FETCHER, NF_ROLE_PREDICTOR,
                                                         NF_ROLE_COMPUTE};

/* The record index of a ready bit (its position). */
static int live_index(unsigned ready_bit)
{
    for (int i = 0; i < NF_STACK_DAEMONS; i++)
        if (ready_bit == 1u << i)
            return i;
    return -1;
}

int nf_proc_start_time(int pid, uint64_t *start)
{
    char path[64], buf[1024];
    if (pid <= 0)
        return -ESRCH;
    snprintf(path, sizeof(path), "/proc/%d/stat", pid);
    FILE *f = fopen(path, "r");
    if (!f)
        return -ESRCH;
    size_t n = fread(buf, 1, sizeof(buf) - 1, f);
    fclose(f);
    buf[n] = '\0';
    /* "PID (COMM) STATE PPID ...": COMM may hold spaces and parentheses, so parse after the
     * last ')'. STATE is field 3, starttime field 22. */
    const char *p = strrchr(buf, ')');
    char state;
    unsigned long long t;
    if (!p || sscanf(p + 1,
                     " %c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %*u %*u %*d %*d %*d %*d %*d "
                     "%*d %llu",
                     &state, &t) != 2)
        return -ESRCH;
    /* A zombie (or a dying task) no longer serves anything: killed and not yet reaped. */
    if (state == 'Z' || state == 'X' || state == 'x')
        return -ESRCH;
    *start = t;
    return 0;
}

void nf_live_register(struct nf_stack *st, unsigned ready_bit)
{
    int i = live_index(ready_bit);
    uint64_t start = 0;
    if (i < 0 || nf_proc_start_time((int)getpid(), &start) < 0)
        return;
    struct nf_stack_live *l = &st->sync->live[i];
    atomic_store_explicit(&l->pid, (int32_t)getpid(), memory_order_relaxed);
    atomic_store_explicit(&l->start, start, memory_order_relaxed);
    /* Release pairs with the acquire load of state in nf_live_check(): a checker that sees UP
     * sees our pid and start. */
    atomic_store_explicit(&l->state, NF_LIVE_UP, memory_order_release);
}

void nf_live_unregister(struct nf_stack *st, unsigned ready_bit)
{
    int i = live_index(ready_bit);
    if (i < 0)
        return;
    uint32_t up = NF_LIVE_UP;
    /* Only our own UP record: a record already marked DEAD (we were stopped in the debugger
     * too long?) stays so. */
    atomic_compare_exchange_strong(&st->sync->live[i].state, &up, NF_LIVE_EXITED);
}

uint32_t nf_live_check(const struct nf_stack *st)
{
    struct nf_stack_sync *sy = st->sync;
    uint32_t dead = atomic_load_explicit(&sy->dead_mask, memory_order_acquire);
    for (int i = 0; i < NF_STACK_DAEMONS; i++) {
        struct nf_stack_live *l = &sy->live[i];
        if (dead & (1u << i))
            continue;
        /* Acquire pairs with the release store of UP in nf_live_register(). */
        const uint32_t state = atomic_load_explicit(&l->state, memory_order_acquire);
        /* DEAD without its bit in the mask yet: another process is inside nf_live_mark(),
         * between its two stores. Skipped as not UP, such a record once let `up` take a stack
         * whose compute was SIGKILLed for a running one (the marker preempted in between). */
        if (state == NF_LIVE_DEAD) {
            dead |= 1u << i;
            continue;
        }
        if (state != NF_LIVE_UP)
            continue;
        uint64_t start;
        int pid = atomic_load_explicit(&l->pid, memory_order_relaxed);
        if (nf_proc_start_time(pid, &start) < 0 ||
            start != atomic_load_explicit(&l->start, memory_order_relaxed)) {
            /* It may have exited cleanly between our two loads: only UP is dead. */
            if (atomic_load_explicit(&l->state, memory_order_acquire) == NF_LIVE_UP)
                dead |= 1u << i;
        }
    }
    return dead;
}

void nf_live_mark(struct nf_stack *st, uint32_t dead)
{
    struct nf_stack_sync *sy = st->sync;
    /* Record by record, then the mask: a checker between the two sees the record DEAD, which
     * nf_live_check() counts as dead as the mask bit is. */
    for (int i = 0; i < NF_STACK_DAEMONS; i++) {
        uint32_t up = NF_LIVE_UP;
        if (dead & (1u << i))
            atomic_compare_exchange_strong(&sy->live[i].state, &up, NF_LIVE_DEAD);
    }
    /* Release pairs with the acquire load of dead_mask in nf_tile_pin_wait(); the bells wake
     * every loop sleeping on them so that it sees the mask now. */
    uint32_t old = atomic_fetch_or_explicit(&sy->dead_mask, dead, memory_order_acq_rel);
    if ((old | dead) != old) {
        nf_notify_wake(&sy->tile_done);
        nf_notify_wake(&sy->fetch_bell);
        nf_notify_wake(&sy->act_bell);
    }
}

const char *nf_live_role(uint32_t dead)
{
    for (int i = 0; i < NF_STACK_DAEMONS; i++)
        if (dead & (1u << i))
            return live_roles[i];
    return "?";
}

int nf_live_pid(const struct nf_stack *st, uint32_t dead)
{
    for (int i = 0; i < NF_STACK_DAEMONS; i++)
        if (dead & (1u << i))
            return atomic_load(&st->sync->live[i].pid);
    return 0;
}

void nf_live_message(const struct nf_stack *st, uint32_t dead, char *buf, size_t len)
{
    snprintf(buf, len,
             "the %s (pid %d) died: restart the stack with nanoflowctl down && nanoflowctl up",
             nf_live_role(dead), nf_live_pid(st, dead));
}
