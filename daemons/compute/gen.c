/* gen.c - nanoflow-compute's tile source over the shared pool: pins and hints go to the stack's
 * tile protocol, the residual stream and the used groups are published for the predictor, and
 * the engine's work is added to the shared counters (see gen.h). */
#include <string.h>

#include "gen.h"
#include "nf_err.h"

/* --- tile source over the shared pool -------------------------------------------------------- */

static const uint8_t *shm_pin(void *ud, uint32_t id, int *rc)
{
    struct nf_gen *g = ud;
    const uint8_t *p = nf_tile_pin_wait(g->st, id, g->step, NF_GEN_PIN_TIMEOUT_MS, rc);
    /* The slot holds the tile's aligned span: its bytes start at the skew (0 in a .nft). */
    return p ? p + nf_nft_tile_skew(&g->f->tiles[id]) : NULL;
}

static void shm_want(void *ud, uint32_t id, bool flush)
{
    struct nf_gen *g = ud;
    nf_tile_request(g->st, id, flush);
}

/* A KV block's tile: refused while it is a copy of an older generation (stack.h). */
static const uint8_t *shm_kv_pin(void *ud, uint32_t id, int *rc)
{
    struct nf_gen *g = ud;
    return nf_kv_tile_pin_wait(g->st, id, g->step, NF_GEN_PIN_TIMEOUT_MS, rc);
}

static void shm_kv_mark(void *ud, uint32_t id, bool durable)
{
    struct nf_gen *g = ud;
    if (durable)
        nf_kv_tile_durable(g->st, id);
    else
        nf_kv_tile_invalidate(g->st, id);
}

/* Layer il's walk ended: the walk record for the predictor, which reads the next layers' KV
 * tiles of these slots now (stack.h), then act_bell. */
static void shm_kv_walked(void *ud, uint32_t il, const int *slots, int n)
{
    struct nf_gen *g = ud;
    uint32_t ids[NF_KV_WALK_MAX];
    uint32_t k = 0;
    for (int i = 0; i < n && k < NF_KV_WALK_MAX; i++)
        ids[k++] = (uint32_t)slots[i];
    nf_kv_walk_publish(g->st, g->step, il, ids, k);
    nf_notify_wake(&g->st->sync->act_bell);
}

/* In the pool now (READY; the fetcher may still evict it before the pin: a hint). */
static bool shm_present(void *ud, uint32_t id)
{
    const struct nf_gen *g = ud;
    return id < g->st->cfg->n_tiles &&
           atomic_load_explicit(&g->st->tiles[id].state, memory_order_relaxed) == NF_TILE_READY;
}

static void shm_unpin(void *ud, uint32_t id)
{
    struct nf_gen *g = ud;
    nf_tile_unpin(g->st, id);
}

/* Publishes the residual stream after `layer` (seqlock: odd while writing), then rings act_bell
 * for the predictor. */
static void shm_layer_done(void *ud, uint32_t layer, const float *x, int n_embd)
{
    struct nf_gen *g = ud;
    /* The engine calls this for its own layers 0..n_layer-1 of the plan it was built from. */
    NF_ASSERT(layer < g->st->cfg->n_layer);
    nf_act_slot_publish(nf_stack_act(g->st, layer), g->step, layer, x, (uint32_t)n_embd);
    nf_notify_wake(&g->st->sync->act_bell);
}

/* Publishes row `row` of a batched step's residual stream after `layer` in its row slot (a MoE
 * model run with several sequences: the predictor forecasts the union of the rows' experts),
 * then rings act_bell. */
static void shm_row_done(void *ud, uint32_t layer, uint32_t row, const float *x, int n_embd)
{
    struct nf_gen *g = ud;
    struct nf_act_slot *a = nf_stack_act_row(g->st, layer, row);
    if (!a)
        return; /* more rows than the plan's sequences: the predictor sees the first ones */
    nf_act_slot_publish(a, g->step, layer, x, (uint32_t)n_embd);
    nf_notify_wake(&g->st->sync->act_bell);
}

/* Publishes the groups or experts layer used (same seqlock discipline). */
static void shm_used(void *ud, uint32_t layer, const uint64_t *bits, uint32_t n_groups)
{
    struct nf_gen *g = ud;
    const struct nf_stack_config *cfg = g->st->cfg;
    /* The plan sized every used slot for the most groups or experts of any layer. */
    NF_ASSERT(layer < cfg->n_layer);
    const size_t words = (n_groups + 63) / 64;
    NF_ASSERT(sizeof(struct nf_used_slot) + words * sizeof(uint64_t) <= cfg->used_stride);
    nf_used_slot_publish(nf_stack_used(g->st, layer), g->step, layer, bits, n_groups);
}

void nf_gen_flush_counters(struct nf_gen *g)
{
    struct nf_stream_stats s;
    nf_stream_get_stats(g->s, &s);
    struct nf_stack_counters *c = g->st->ctr;
    atomic_fetch_add(&c->c_tiles_used, s.tiles_pinned - g->last.tiles_pinned);
    atomic_fetch_add(&c->c_tile_bytes_used, s.tile_bytes - g->last.tile_bytes);
    atomic_fetch_add(&c->c_groups_total, s.groups_total - g->last.groups_total);
    atomic_fetch_add(&c->c_groups_skipped, s.groups_skipped - g->last.groups_skipped);
    g->last = s;
}

void nf_gen_tile_src(struct nf_gen *g, struct nf_tile_src *src)
{
    *src = (struct nf_tile_src){.pin = shm_pin,
                                .unpin = shm_unpin,
                                .layer_done = shm_layer_done,
                                .used = shm_used,
                                .want = shm_want,
                                .present = shm_present,
                                .row_done = g->st->cfg->act_rows ? shm_row_done : NULL,
                                .ud = g};
    /* The KV blocks as the region's tiles when the fetcher reads the file this engine writes
     * (the engine checks the rest of the geometry). */
    const struct nf_stack_config *cfg = g->st->cfg;
    if (cfg->kv_tiles && g->kv_block && !strcmp(cfg->kv_path, g->kv_path)) {
        g->kv_src =
            (struct nf_tile_src_kv){.first = (uint32_t)cfg->n_tiles,
                                    .n_slots = cfg->n_seq ? (int)cfg->n_seq : 1,
                                    .n_ctx = (int)cfg->n_ctx,
                                    .block = (int)cfg->kv_block,
                                    .row_k = (size_t)cfg->kv_row_k,
                                    .row_v = (size_t)cfg->kv_row_v,
                                    /* half the KV class on its way at once */
                                    .ahead = (int)(cfg->classes[cfg->n_classes].n_slots / 2 > 1
                                                       ? cfg->classes[cfg->n_classes].n_slots / 2
                                                       : 1),
                                    .pin = shm_kv_pin,
                                    .mark = shm_kv_mark,
                                    .walked = shm_kv_walked};
        src->kv = &g->kv_src;
    }
}
