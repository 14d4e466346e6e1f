/* kvtile.c - KV block tiles: durability, generations and the pin that refuses a stale copy
 * (see stack.h). */
#include <errno.h>
#include <sched.h>

#include "nf_time.h"
#include "seqlock.h"
#include "stack.h"

/* Sleep between two looks while the fetcher evicts a stale copy (eviction rings no bell). */
#define NF_KV_STALE_SLICE_MS 1

static struct nf_kv_word *kv_word(const struct nf_stack *st, uint32_t id)
{
    const struct nf_stack_config *c = st->cfg;
    if (id < c->n_tiles || id - c->n_tiles >= c->kv_tiles)
        return NULL;
    return &st->kv[id - c->n_tiles];
}

void nf_kv_tile_durable(struct nf_stack *st, uint32_t id)
{
    struct nf_kv_word *w = kv_word(st, id);
    /* Release: the write completed before; pairs with the fetcher's acquire load before its
     * read. Only compute writes gen. */
    if (w)
        atomic_fetch_or_explicit(&w->gen, 1u, memory_order_release);
}

void nf_kv_tile_invalidate(struct nf_stack *st, uint32_t id)
{
    struct nf_kv_word *w = kv_word(st, id);
    if (!w)
        return;
    uint32_t g = atomic_load_explicit(&w->gen, memory_order_relaxed);
    /* Seq-cst: before compute rewrites the block's bytes in the file, every later look of the
     * fetcher sees the block not durable. */
    atomic_store_explicit(&w->gen, ((g >> 1) + 1) << 1, memory_order_seq_cst);
}

uint32_t nf_kv_tile_word(const struct nf_stack *st, uint32_t id)
{
    const struct nf_kv_word *w = kv_word(st, id);
    /* Acquire pairs with the release in nf_kv_tile_durable(). */
    return w ? atomic_load_explicit(&w->gen, memory_order_acquire) : 0;
}

void nf_kv_tile_set_read_gen(struct nf_stack *st, uint32_t id, uint32_t gen)
{
    struct nf_kv_word *w = kv_word(st, id);
    /* Relaxed: published with the tile's bytes by the release store of READY. */
    if (w)
        atomic_store_explicit(&w->read_gen, gen, memory_order_relaxed);
}

bool nf_kv_tile_stale(const struct nf_stack *st, uint32_t id)
{
    const struct nf_kv_word *w = kv_word(st, id);
    if (!w || atomic_load_explicit(&st->tiles[id].state, memory_order_acquire) != NF_TILE_READY)
        return false;
    return atomic_load_explicit(&w->read_gen, memory_order_relaxed) !=
           atomic_load_explicit(&w->gen, memory_order_acquire) >> 1;
}

const uint8_t *nf_kv_tile_pin_wait(struct nf_stack *st, uint32_t id, uint64_t step, int timeout_ms,
                                   int *rc)
{
    int dummy;
    if (!rc)
        rc = &dummy;
    struct nf_kv_word *w = kv_word(st, id);
    if (!w) {
        *rc = -EINVAL;
        return NULL;
    }
    const uint64_t t0 = nf_now_ns();
    const uint64_t deadline = timeout_ms >= 0 ? t0 + (uint64_t)timeout_ms * 1000000ull : UINT64_MAX;
    const uint32_t want = atomic_load_explicit(&w->gen, memory_order_relaxed) >> 1;
    for (;;) {
        int left = -1;
        if (deadline != UINT64_MAX) {
            const uint64_t now = nf_now_ns();
            if (now >= deadline) {
                *rc = -ETIMEDOUT;
                return NULL;
            }
            left = (int)((deadline - now) / 1000000ull) + 1;
        }
        const uint8_t *p = nf_tile_pin_wait(st, id, step, left, rc);
        /* The pin's seq-cst load of READY synchronizes with the fetcher's release store, made
         * after it recorded read_gen. */
        if (!p || atomic_load_explicit(&w->read_gen, memory_order_relaxed) == want)
            return p;
        nf_tile_unpin(st, id);
        uint32_t seen = nf_notify_seq(&st->sync->tile_done);
        struct nf_tile_req req = {.tile = id, .prio = NF_TILE_REQ_STALE};
        (void)nf_ring_sp_enqueue_bulk(st->demand, &req, 1, NULL); /* full: asked again */
        nf_notify_wake(&st->sync->fetch_bell);
        nf_notify_wait(&st->sync->tile_done, seen, NF_KV_STALE_SLICE_MS);
    }
}

bool nf_kv_tile_durable_now(const struct nf_stack *st, uint32_t id)
{
    return nf_kv_tile_word(st, id) & 1u;
}

/* The walk record's fields under its seqlock: relaxed atomics, as in shm/slots.c. */
#define SET(field, v) __atomic_store_n(&(field), (v), __ATOMIC_RELAXED)
#define GET(field)    __atomic_load_n(&(field), __ATOMIC_RELAXED)

void nf_kv_walk_publish(struct nf_stack *st, uint64_t step, uint32_t layer, const uint32_t *slots,
                        uint32_t n)
{
    struct nf_kv_walk *w = st->kv_walk;
    if (!w)
        return;
    if (n > NF_KV_WALK_MAX)
        n = NF_KV_WALK_MAX;
    uint64_t sn = nf_seqlock_write_begin(&w->seq);
    SET(w->step, step);
    SET(w->layer, layer);
    SET(w->n, n);
    for (uint32_t i = 0; i < n; i++)
        SET(w->slot[i], slots[i]);
    nf_seqlock_write_end(&w->seq, sn);
}

uint64_t nf_kv_walk_read(const struct nf_stack *st, int tries, uint64_t *step, uint32_t *layer,
                         uint32_t *slots, uint32_t *n)
{
    const struct nf_kv_walk *w = st->kv_walk;
    if (!w)
        return 0;
    while (tries-- > 0) {
        uint64_t sn = nf_seqlock_read_begin(&w->seq);
        if (sn == 0)
            return 0;
        if (sn & 1) {
            sched_yield();
            continue;
        }
        *step = GET(w->step);
        *layer = GET(w->layer);
        uint32_t k = GET(w->n);
        *n = k <= NF_KV_WALK_MAX ? k : NF_KV_WALK_MAX;
        for (uint32_t i = 0; i < *n; i++)
            slots[i] = GET(w->slot[i]);
        if (!nf_seqlock_read_retry(&w->seq, sn))
            return sn;
    }
    return 0;
}
