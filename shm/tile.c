/* tile.c - the tile protocol: pin, request, prefetch, load, fail, evict (see stack.h). */
#include <errno.h>

#include "nf_time.h"
#include "stack.h"

/* Longest single sleep of nf_tile_pin_wait, so a stop flag set without a bell is still seen. */
#define NF_STACK_WAIT_SLICE_MS 200

/* --- Tile protocol -------------------------------------------------------------------------- */

const uint8_t *nf_tile_try_peek(struct nf_stack *st, uint32_t id)
{
    if (id >= nf_stack_n_ids(st->cfg))
        return NULL;
    struct nf_tile_entry *t = &st->tiles[id];
    /* The same Dekker pairing with nf_slot_try_evict() as nf_tile_try_pin() below. */
    atomic_fetch_add_explicit(&t->pins, 1, memory_order_seq_cst);
    if (atomic_load_explicit(&t->state, memory_order_seq_cst) != NF_TILE_READY) {
        atomic_fetch_sub_explicit(&t->pins, 1, memory_order_release);
        return NULL;
    }
    return nf_stack_slot_ptr(st, atomic_load_explicit(&t->slot, memory_order_relaxed));
}

const uint8_t *nf_tile_try_pin(struct nf_stack *st, uint32_t id, uint64_t step)
{
    if (id >= nf_stack_n_ids(st->cfg))
        return NULL;
    struct nf_tile_entry *t = &st->tiles[id];
    /* Dekker pairing, compute side: seq-cst increment of pins, then seq-cst load of state.
     * Pairs with the seq-cst CAS READY -> EVICTING then seq-cst load of pins in
     * nf_slot_try_evict(): in the single total order one side sees the other, so either we see
     * EVICTING (and back off) or the fetcher sees our pin (and puts READY back). */
    atomic_fetch_add_explicit(&t->pins, 1, memory_order_seq_cst);
    uint32_t s = atomic_load_explicit(&t->state, memory_order_seq_cst);
    if (s != NF_TILE_READY) {
        /* Release: nothing was read; pairs with the fetcher's seq-cst load of pins. */
        atomic_fetch_sub_explicit(&t->pins, 1, memory_order_release);
        return NULL;
    }
    /* Ordered after the state load (seq-cst, so also acquire), which synchronizes with the
     * release store of READY in nf_tile_end_load(): the slot index and the slot's bytes written
     * before READY are visible here. */
    uint32_t slot = atomic_load_explicit(&t->slot, memory_order_relaxed);
    /* Relaxed: an eviction hint only, no data depends on it. */
    atomic_store_explicit(&t->last_use, (uint32_t)step, memory_order_relaxed);
    return nf_stack_slot_ptr(st, slot);
}

void nf_tile_unpin(struct nf_stack *st, uint32_t id)
{
    if (id >= nf_stack_n_ids(st->cfg))
        return;
    /* Release: our reads of the slot's bytes happen before the fetcher, whose seq-cst (acquire)
     * load of pins in nf_slot_try_evict() reads this decrement, reuses the slot. */
    atomic_fetch_sub_explicit(&st->tiles[id].pins, 1, memory_order_release);
}

int nf_tile_error(const struct nf_stack *st, uint32_t id)
{
    if (id >= nf_stack_n_ids(st->cfg))
        return 0;
    struct nf_tile_entry *t = &st->tiles[id];
    /* Acquire pairs with the release store of ERROR in nf_tile_fail(), after the code. */
    if (atomic_load_explicit(&t->state, memory_order_acquire) != NF_TILE_ERROR)
        return 0;
    uint32_t code = atomic_load_explicit(&t->slot, memory_order_relaxed);
    return code ? -(int)code : -EIO;
}

int nf_tile_request(struct nf_stack *st, uint32_t id, bool flush)
{
    if (id >= nf_stack_n_ids(st->cfg))
        return -EINVAL;
    struct nf_tile_entry *t = &st->tiles[id];
    int rc = 0;
    /* Acquire pairs with the fetcher's release stores of LOADING/READY/EMPTY. */
    uint32_t s = atomic_load_explicit(&t->state, memory_order_acquire);
    bool won = false;
    if (s == NF_TILE_EMPTY) {
        /* Acq-rel CAS pairs with the predictor's CAS in nf_tile_prefetch() and the fetcher's in
         * nf_tile_begin_load(); losing it means someone else moved the tile: look again. */
        uint32_t e = NF_TILE_EMPTY;
        won = atomic_compare_exchange_strong_explicit(&t->state, &e, NF_TILE_QUEUED,
                                                      memory_order_acq_rel, memory_order_acquire);
        s = won ? NF_TILE_QUEUED : e;
    }
    if (s == NF_TILE_QUEUED) {
        struct nf_tile_req req = {.tile = id, .prio = 0};
        rc = nf_ring_sp_enqueue_bulk(st->demand, &req, 1, NULL) == 1 ? 1 : -ENOBUFS;
        if (rc < 0 && won) {
            /* Nothing enqueued: EMPTY again unless someone moved it meanwhile (release pairs
             * with the next asker's CAS). */
            uint32_t q = NF_TILE_QUEUED;
            atomic_compare_exchange_strong_explicit(&t->state, &q, NF_TILE_EMPTY,
                                                    memory_order_release, memory_order_relaxed);
        }
    }
    if (flush || rc == -ENOBUFS)
        nf_notify_wake(&st->sync->fetch_bell);
    return rc;
}

const uint8_t *nf_tile_pin_wait(struct nf_stack *st, uint32_t id, uint64_t step, int timeout_ms,
                                int *rc)
{
    int dummy;
    if (!rc)
        rc = &dummy;
    *rc = 0;
    if (id >= nf_stack_n_ids(st->cfg)) {
        *rc = -EINVAL;
        return NULL;
    }
    const uint8_t *p = nf_tile_try_pin(st, id, step);
    if (p)
        return p;
    struct nf_tile_entry *t = &st->tiles[id];
    struct nf_stack_sync *sy = st->sync;
    uint64_t t0 = nf_now_ns();
    uint64_t deadline = timeout_ms >= 0 ? t0 + (uint64_t)timeout_ms * 1000000ull : UINT64_MAX;
    bool requested = false; /* a demand request of ours is in the ring for this QUEUED spell */
    for (;;) {
        /* Sample the bell before checking the condition (notify.h usage). */
        uint32_t seen = nf_notify_seq(&sy->tile_done);
        p = nf_tile_try_pin(st, id, step);
        if (p)
            break;
        /* Acquire pairs with the release store of stop by whoever shuts the stack down. */
        if (atomic_load_explicit(&sy->stop, memory_order_acquire)) {
            *rc = -ECANCELED;
            break;
        }
        /* A daemon of the stack died (daemons/common/live.c; the bell is rung after the store):
         * the tile may never come. */
        if (atomic_load_explicit(&sy->dead_mask, memory_order_acquire)) {
            *rc = -EOWNERDEAD;
            break;
        }
        /* Acquire pairs with the fetcher's release stores of LOADING/ERROR/EMPTY. */
        uint32_t s = atomic_load_explicit(&t->state, memory_order_acquire);
        int slice = NF_STACK_WAIT_SLICE_MS;
        if (s == NF_TILE_ERROR) {
            *rc = nf_tile_error(st, id);
            break;
        }
        if (s == NF_TILE_EMPTY) {
            /* Acq-rel CAS pairs with the predictor's CAS in nf_tile_prefetch() and the fetcher's
             * CAS in nf_tile_begin_load(); losing it just means someone else moved it. */
            uint32_t e = NF_TILE_EMPTY;
            if (atomic_compare_exchange_strong_explicit(&t->state, &e, NF_TILE_QUEUED,
                                                        memory_order_acq_rel, memory_order_acquire))
                requested = false;
            s = e == NF_TILE_EMPTY ? NF_TILE_QUEUED : e;
        }
        if (s == NF_TILE_QUEUED && !requested) {
            /* Served before prefetches even when the predictor queued it first. */
            struct nf_tile_req req = {.tile = id, .prio = 0};
            if (nf_ring_sp_enqueue_bulk(st->demand, &req, 1, NULL) == 1)
                requested = true;
            else
                slice = 1; /* ring full: the fetcher drains it; retry soon */
            nf_notify_wake(&sy->fetch_bell);
        } else if (s != NF_TILE_QUEUED) {
            /* LOADING, READY (it just became so: pin again) or EVICTING: our request, if any,
             * has been taken. EVICTING turns back into READY without a bell: poll. */
            requested = false;
            if (s == NF_TILE_READY)
                continue;
            if (s == NF_TILE_EVICTING)
                slice = 1;
        }
        uint64_t now = nf_now_ns();
        if (now >= deadline) {
            *rc = -ETIMEDOUT;
            break;
        }
        if (deadline != UINT64_MAX && (deadline - now) / 1000000ull < (uint64_t)slice)
            slice = (int)((deadline - now) / 1000000ull) + 1;
        nf_notify_wait(&sy->tile_done, seen, slice);
    }
    atomic_fetch_add_explicit(&st->ctr->c_stall_ns, nf_now_ns() - t0, memory_order_relaxed);
    return p;
}

int nf_tile_prefetch(struct nf_stack *st, uint32_t id, uint32_t prio, bool flush)
{
    if (id >= nf_stack_n_ids(st->cfg))
        return -EINVAL;
    struct nf_tile_entry *t = &st->tiles[id];
    uint32_t e = NF_TILE_EMPTY;
    int rc = 0;
    /* Acq-rel CAS EMPTY -> QUEUED pairs with compute's CAS in nf_tile_pin_wait() and the
     * fetcher's CAS QUEUED -> LOADING in nf_tile_begin_load(): exactly one asker wins. */
    if (atomic_load_explicit(&t->state, memory_order_relaxed) == NF_TILE_EMPTY &&
        atomic_compare_exchange_strong_explicit(&t->state, &e, NF_TILE_QUEUED, memory_order_acq_rel,
                                                memory_order_relaxed)) {
        struct nf_tile_req req = {.tile = id, .prio = prio};
        if (nf_ring_sp_enqueue_bulk(st->prefetch, &req, 1, NULL) == 1) {
            rc = 1;
        } else {
            /* Nothing was enqueued: put EMPTY back unless compute or the fetcher moved it
             * meanwhile (compute's demand request then covers it). Release pairs with the next
             * asker's CAS. */
            uint32_t q = NF_TILE_QUEUED;
            atomic_compare_exchange_strong_explicit(&t->state, &q, NF_TILE_EMPTY,
                                                    memory_order_release, memory_order_relaxed);
            rc = -ENOBUFS;
            flush = true; /* make sure the fetcher drains the full ring */
        }
    }
    if (flush)
        nf_notify_wake(&st->sync->fetch_bell);
    return rc;
}

int nf_tile_prefetch_drop(struct nf_stack *st, uint32_t id, bool flush)
{
    if (id >= nf_stack_n_ids(st->cfg))
        return -EINVAL;
    /* A hint only: the fetcher decides on the state it sees when it takes the withdrawal. */
    uint32_t s = atomic_load_explicit(&st->tiles[id].state, memory_order_relaxed);
    int rc = 0;
    if (s == NF_TILE_QUEUED || s == NF_TILE_LOADING) {
        struct nf_tile_req req = {.tile = id, .prio = NF_TILE_REQ_DROP};
        rc = nf_ring_sp_enqueue_bulk(st->prefetch, &req, 1, NULL) == 1 ? 1 : -ENOBUFS;
    }
    if (flush)
        nf_notify_wake(&st->sync->fetch_bell);
    return rc;
}

bool nf_tile_cancel(struct nf_stack *st, uint32_t id)
{
    if (id >= nf_stack_n_ids(st->cfg))
        return false;
    uint32_t q = NF_TILE_QUEUED;
    /* Release pairs with the acquire of the next CAS EMPTY -> QUEUED by compute or predictor. */
    if (!atomic_compare_exchange_strong_explicit(&st->tiles[id].state, &q, NF_TILE_EMPTY,
                                                 memory_order_release, memory_order_relaxed))
        return false;
    /* A compute thread blocked on it re-requests it at once instead of at its next slice. */
    nf_notify_wake(&st->sync->tile_done);
    return true;
}

int nf_tile_begin_load(struct nf_stack *st, uint32_t id, uint32_t slot)
{
    if (id >= nf_stack_n_ids(st->cfg) || slot >= st->cfg->n_slots)
        return -EINVAL;
    struct nf_tile_entry *t = &st->tiles[id];
    struct nf_slot_entry *se = &st->slots[slot];
    /* Acquire pairs with the release stores of NF_NO_TILE in nf_slot_try_evict() and
     * nf_tile_fail() (which a worker thread may call): whatever was done with the slot before
     * it was freed happens before it is reused. */
    if (atomic_load_explicit(&se->tile, memory_order_acquire) != NF_NO_TILE)
        return -EBUSY;
    uint32_t s = atomic_load_explicit(&t->state, memory_order_relaxed);
    for (;;) {
        if (s != NF_TILE_EMPTY && s != NF_TILE_QUEUED)
            return -EALREADY;
        /* Acq-rel CAS pairs with the EMPTY -> QUEUED CASes of compute and predictor (they may
         * move EMPTY to QUEUED under us: retry with what we saw). */
        if (atomic_compare_exchange_weak_explicit(&t->state, &s, NF_TILE_LOADING,
                                                  memory_order_acq_rel, memory_order_relaxed))
            break;
    }
    /* Relaxed: published to compute by the release store of READY in nf_tile_end_load(). */
    atomic_store_explicit(&t->slot, slot, memory_order_relaxed);
    atomic_store_explicit(&se->tile, id, memory_order_relaxed);
    return 0;
}

void nf_tile_fail(struct nf_stack *st, uint32_t id, int err)
{
    if (id >= nf_stack_n_ids(st->cfg))
        return;
    struct nf_tile_entry *t = &st->tiles[id];
    uint32_t slot = atomic_load_explicit(&t->slot, memory_order_relaxed);
    if (slot < st->cfg->n_slots &&
        atomic_load_explicit(&st->slots[slot].tile, memory_order_relaxed) == id)
        /* Release pairs with the acquire load in nf_tile_begin_load(). */
        atomic_store_explicit(&st->slots[slot].tile, NF_NO_TILE, memory_order_release);
    if (err >= 0)
        err = -EIO;
    atomic_store_explicit(&t->slot, (uint32_t)-err, memory_order_relaxed);
    /* Release pairs with the acquire load of state in nf_tile_error(): the code is visible. */
    atomic_store_explicit(&t->state, NF_TILE_ERROR, memory_order_release);
    nf_notify_wake(&st->sync->tile_done);
}

void nf_tile_end_load(struct nf_stack *st, uint32_t id, bool ok)
{
    if (id >= nf_stack_n_ids(st->cfg))
        return;
    if (!ok) {
        nf_tile_fail(st, id, -EIO);
        return;
    }
    /* Release pairs with the seq-cst load of state in nf_tile_try_pin(): the slot index and
     * the tile's bytes in the slot are visible to whoever sees READY. */
    atomic_store_explicit(&st->tiles[id].state, NF_TILE_READY, memory_order_release);
    nf_notify_wake(&st->sync->tile_done);
}

bool nf_slot_try_evict(struct nf_stack *st, uint32_t slot)
{
    if (slot >= st->cfg->n_slots)
        return false;
    struct nf_slot_entry *se = &st->slots[slot];
    uint32_t id = atomic_load_explicit(&se->tile, memory_order_relaxed);
    if (id == NF_NO_TILE)
        return true;
    if (atomic_load_explicit(&se->flags, memory_order_relaxed) & NF_SLOT_RESIDENT ||
        id >= nf_stack_n_ids(st->cfg))
        return false;
    struct nf_tile_entry *t = &st->tiles[id];
    uint32_t r = NF_TILE_READY;
    /* Dekker pairing, fetcher side: seq-cst CAS READY -> EVICTING then seq-cst load of pins;
     * pairs with the seq-cst pins increment then state load in nf_tile_try_pin(). */
    if (!atomic_compare_exchange_strong_explicit(&t->state, &r, NF_TILE_EVICTING,
                                                 memory_order_seq_cst, memory_order_relaxed))
        return false;
    if (atomic_load_explicit(&t->pins, memory_order_seq_cst) != 0) {
        /* Release pairs with the seq-cst load in nf_tile_try_pin(): READY again, slot intact. */
        atomic_store_explicit(&t->state, NF_TILE_READY, memory_order_release);
        return false;
    }
    atomic_store_explicit(&t->slot, NF_NO_SLOT, memory_order_relaxed);
    /* Release pairs with the acquire load in nf_tile_begin_load(). */
    atomic_store_explicit(&se->tile, NF_NO_TILE, memory_order_release);
    /* Release pairs with the acquire CAS EMPTY -> QUEUED of the next asker. */
    atomic_store_explicit(&t->state, NF_TILE_EMPTY, memory_order_release);
    atomic_fetch_add_explicit(&st->ctr->f_evictions, 1, memory_order_relaxed);
    return true;
}
