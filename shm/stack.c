/* stack.c - the stack's shared region: create it from a plan, attach to it, check it. */
#include <errno.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdio.h>
#include <string.h>

#include "nf_err.h"
#include "nft.h"
#include "stack_int.h"

/* --- Layout ---------------------------------------------------------------------------------
 *
 * Every structure below lives in the shared region and is read by other processes, possibly
 * built at another time: its layout is frozen here (a change needs a new config magic). The
 * atomics in it must be lock-free, hence address-free: a lock-based atomic would take a lock
 * private to each process. They are naturally aligned (the checks below, and every table starts
 * on an NF_STACK_CL boundary of a page-aligned area), so no atomic straddles a cache line. */
_Static_assert(ATOMIC_INT_LOCK_FREE == 2, "32-bit atomics must be lock-free (address-free)");
_Static_assert(ATOMIC_LLONG_LOCK_FREE == 2, "64-bit atomics must be lock-free (address-free)");
_Static_assert(__atomic_always_lock_free(sizeof(uint32_t), 0), "32-bit atomics lock-free");
_Static_assert(__atomic_always_lock_free(sizeof(uint64_t), 0), "64-bit atomics lock-free");
_Static_assert(sizeof(_Atomic uint32_t) == 4 && _Alignof(_Atomic uint32_t) == 4,
               "a 32-bit atomic is a plain aligned 32-bit word");
_Static_assert(sizeof(_Atomic uint64_t) == 8 && _Alignof(_Atomic uint64_t) == 8,
               "a 64-bit atomic is a plain aligned 64-bit word");

/* NF_SHM_TILE_TABLE: the config (written once before the magic is published), then the tile
 * and slot tables. */
_Static_assert(offsetof(struct nf_stack_config, magic) == 0, "nf_stack_config layout");
_Static_assert(offsetof(struct nf_stack_config, ram_budget) == 8, "nf_stack_config layout");
_Static_assert(offsetof(struct nf_stack_config, n_tiles) == 16, "nf_stack_config layout");
_Static_assert(offsetof(struct nf_stack_config, n_slots) == 24, "nf_stack_config layout");
_Static_assert(offsetof(struct nf_stack_config, max_slot_size) == 32, "nf_stack_config layout");
_Static_assert(offsetof(struct nf_stack_config, demand_ring_off) == 40, "nf_stack_config layout");
_Static_assert(offsetof(struct nf_stack_config, demand_ring_size) == 48, "nf_stack_config layout");
_Static_assert(offsetof(struct nf_stack_config, prefetch_ring_off) == 56, "nf_stack_config layout");
_Static_assert(offsetof(struct nf_stack_config, prefetch_ring_size) == 64,
               "nf_stack_config layout");
_Static_assert(offsetof(struct nf_stack_config, tiles_off) == 72, "nf_stack_config layout");
_Static_assert(offsetof(struct nf_stack_config, slots_off) == 80, "nf_stack_config layout");
_Static_assert(offsetof(struct nf_stack_config, act_off) == 88, "nf_stack_config layout");
_Static_assert(offsetof(struct nf_stack_config, used_off) == 96, "nf_stack_config layout");
_Static_assert(offsetof(struct nf_stack_config, act_stride) == 104, "nf_stack_config layout");
_Static_assert(offsetof(struct nf_stack_config, used_stride) == 112, "nf_stack_config layout");
_Static_assert(offsetof(struct nf_stack_config, nft_file_size) == 120, "nf_stack_config layout");
_Static_assert(offsetof(struct nf_stack_config, nft_header_checksum) == 128,
               "nf_stack_config layout");
_Static_assert(offsetof(struct nf_stack_config, kv_bytes) == 136, "nf_stack_config layout");
_Static_assert(offsetof(struct nf_stack_config, n_ctx) == 144, "nf_stack_config layout");
_Static_assert(offsetof(struct nf_stack_config, n_layer) == 148, "nf_stack_config layout");
_Static_assert(offsetof(struct nf_stack_config, n_embd) == 152, "nf_stack_config layout");
_Static_assert(offsetof(struct nf_stack_config, n_vocab) == 156, "nf_stack_config layout");
_Static_assert(offsetof(struct nf_stack_config, max_groups) == 160, "nf_stack_config layout");
_Static_assert(offsetof(struct nf_stack_config, sparsity) == 164, "nf_stack_config layout");
_Static_assert(offsetof(struct nf_stack_config, n_threads) == 168, "nf_stack_config layout");
_Static_assert(offsetof(struct nf_stack_config, n_classes) == 172, "nf_stack_config layout");
_Static_assert(offsetof(struct nf_stack_config, n_seq) == 176, "nf_stack_config layout");
_Static_assert(offsetof(struct nf_stack_config, kv_type_k) == 180, "nf_stack_config layout");
_Static_assert(offsetof(struct nf_stack_config, kv_type_v) == 182, "nf_stack_config layout");
_Static_assert(offsetof(struct nf_stack_config, kv_block) == 184, "nf_stack_config layout");
_Static_assert(offsetof(struct nf_stack_config, n_ubatch) == 188, "nf_stack_config layout");
_Static_assert(offsetof(struct nf_stack_config, classes) == 192, "nf_stack_config layout");
_Static_assert(offsetof(struct nf_stack_config, nft_path) == 320, "nf_stack_config layout");
_Static_assert(offsetof(struct nf_stack_config, kv_tiles) == 320 + PATH_MAX,
               "nf_stack_config layout");
_Static_assert(offsetof(struct nf_stack_config, kv_n_blk) == 352 + PATH_MAX,
               "nf_stack_config layout");
_Static_assert(offsetof(struct nf_stack_config, kv_path) == 360 + PATH_MAX,
               "nf_stack_config layout");
_Static_assert(offsetof(struct nf_stack_config, act_rows_off) == 360 + 2 * PATH_MAX,
               "nf_stack_config layout");
_Static_assert(sizeof(struct nf_stack_config) == 376 + 2 * PATH_MAX, "nf_stack_config size");
_Static_assert(offsetof(struct nf_stack_config, classes) % 8 == 0, "class table 8-aligned");
_Static_assert(offsetof(struct nf_stack_class, slot_size) == 0, "nf_stack_class layout");
_Static_assert(offsetof(struct nf_stack_class, n_slots) == 8, "nf_stack_class layout");
_Static_assert(offsetof(struct nf_stack_class, first_slot) == 16, "nf_stack_class layout");
_Static_assert(offsetof(struct nf_stack_class, pool_off) == 24, "nf_stack_class layout");
_Static_assert(offsetof(struct nf_tile_entry, state) == 0, "nf_tile_entry layout");
_Static_assert(offsetof(struct nf_tile_entry, slot) == 4, "nf_tile_entry layout");
_Static_assert(offsetof(struct nf_tile_entry, pins) == 8, "nf_tile_entry layout");
_Static_assert(offsetof(struct nf_tile_entry, last_use) == 12, "nf_tile_entry layout");
_Static_assert(_Alignof(struct nf_tile_entry) == 4 &&
                   NF_STACK_CL % sizeof(struct nf_tile_entry) == 0,
               "tile entries never straddle a cache line");
_Static_assert(offsetof(struct nf_slot_entry, tile) == 0, "nf_slot_entry layout");
_Static_assert(offsetof(struct nf_slot_entry, flags) == 4, "nf_slot_entry layout");
_Static_assert(_Alignof(struct nf_slot_entry) == 4 &&
                   NF_STACK_CL % sizeof(struct nf_slot_entry) == 0,
               "slot entries never straddle a cache line");

/* NF_SHM_REQ_RING: entries of the two rings (shm/ring.c freezes the ring itself). */
_Static_assert(offsetof(struct nf_tile_req, tile) == 0, "nf_tile_req layout");
_Static_assert(offsetof(struct nf_tile_req, prio) == 4, "nf_tile_req layout");

/* NF_SHM_COMPLETION: doorbells (shm/notify.c freezes struct nf_notify) and stop words. */
_Static_assert(offsetof(struct nf_stack_sync, fetch_bell) == 0, "nf_stack_sync layout");
_Static_assert(offsetof(struct nf_stack_sync, tile_done) == 8, "nf_stack_sync layout");
_Static_assert(offsetof(struct nf_stack_sync, act_bell) == 16, "nf_stack_sync layout");
_Static_assert(offsetof(struct nf_stack_sync, stop) == 24, "nf_stack_sync layout");
_Static_assert(offsetof(struct nf_stack_sync, ready_mask) == 28, "nf_stack_sync layout");
_Static_assert(offsetof(struct nf_stack_sync, dead_mask) == 32, "nf_stack_sync layout");
_Static_assert(offsetof(struct nf_stack_sync, live) == 40, "nf_stack_sync layout");
_Static_assert(offsetof(struct nf_stack_live, state) == 0, "nf_stack_live layout");
_Static_assert(offsetof(struct nf_stack_live, pid) == 4, "nf_stack_live layout");
_Static_assert(offsetof(struct nf_stack_live, start) == 8, "nf_stack_live layout");
_Static_assert(sizeof(struct nf_stack_live) == 16, "nf_stack_live size");
_Static_assert(sizeof(struct nf_stack_sync) == 88, "nf_stack_sync size");
_Static_assert(_Alignof(struct nf_stack_sync) == 8, "sync words 4-aligned, start words 8");

/* NF_SHM_ACTIVATIONS: per layer an activation slot, then per layer a used slot, each at a
 * multiple of a cache-line stride: the sequence word first, the payload 8-aligned. */
_Static_assert(offsetof(struct nf_act_slot, seq) == 0, "nf_act_slot layout");
_Static_assert(offsetof(struct nf_act_slot, step) == 8, "nf_act_slot layout");
_Static_assert(offsetof(struct nf_act_slot, layer) == 16, "nf_act_slot layout");
_Static_assert(offsetof(struct nf_act_slot, n_embd) == 20, "nf_act_slot layout");
_Static_assert(offsetof(struct nf_act_slot, x) == 24, "nf_act_slot layout");
_Static_assert(sizeof(struct nf_act_slot) == 24, "nf_act_slot size (without x)");
_Static_assert(_Alignof(struct nf_act_slot) == 8, "nf_act_slot 8-aligned");
_Static_assert(offsetof(struct nf_used_slot, seq) == 0, "nf_used_slot layout");
_Static_assert(offsetof(struct nf_used_slot, step) == 8, "nf_used_slot layout");
_Static_assert(offsetof(struct nf_used_slot, layer) == 16, "nf_used_slot layout");
_Static_assert(offsetof(struct nf_used_slot, n_groups) == 20, "nf_used_slot layout");
_Static_assert(offsetof(struct nf_used_slot, bits) == 24, "nf_used_slot layout");
_Static_assert(sizeof(struct nf_used_slot) == 24, "nf_used_slot size (without bits)");
_Static_assert(_Alignof(struct nf_used_slot) == 8, "nf_used_slot 8-aligned");

/* NF_SHM_COUNTERS: 64 counters of 8 bytes, the start of each daemon's group frozen. */
_Static_assert(offsetof(struct nf_stack_counters, f_reads) == 0, "nf_stack_counters layout");
_Static_assert(offsetof(struct nf_stack_counters, f_lat_hist) == 88, "nf_stack_counters layout");
_Static_assert(offsetof(struct nf_stack_counters, f_resident_bytes) == 344,
               "nf_stack_counters layout");
_Static_assert(offsetof(struct nf_stack_counters, p_predictions) == 352,
               "nf_stack_counters layout");
_Static_assert(offsetof(struct nf_stack_counters, p_lookahead) == 400, "nf_stack_counters layout");
_Static_assert(offsetof(struct nf_stack_counters, c_prompt_tokens) == 408,
               "nf_stack_counters layout");
_Static_assert(offsetof(struct nf_stack_counters, c_groups_total) == 480,
               "nf_stack_counters layout");
_Static_assert(offsetof(struct nf_stack_counters, mem_fetcher) == 488, "nf_stack_counters layout");
_Static_assert(offsetof(struct nf_stack_counters, mem_compute) == 504, "nf_stack_counters layout");
_Static_assert(offsetof(struct nf_stack_counters, f_prefetch_dropped) == 512,
               "nf_stack_counters layout");
/* 64 counters, then the fetcher's appended drop counters, its KV read counters, the
 * predictor's KV pushes and the fetcher's peak in flight (the area stays within its page). */
_Static_assert(offsetof(struct nf_stack_counters, f_kv_prefetch_reads) == 536,
               "nf_stack_counters layout");
_Static_assert(offsetof(struct nf_stack_counters, f_inflight_peak) == 576,
               "nf_stack_counters layout");
_Static_assert(NF_KV_WALK_MAX == NF_STACK_SEQ_MAX, "a walk record holds every sequence");
_Static_assert(sizeof(struct nf_stack_counters) == 584, "nf_stack_counters size");
_Static_assert(_Alignof(struct nf_stack_counters) == 8, "counters 8-aligned");

/* The largest slot a region may declare (a tile is at most this big in any sane .nft). */
#define NF_STACK_MAX_SLOT (1ull << 32)

/* --- Create / attach ------------------------------------------------------------------------ */

/* Checks a plan's class table before create uses it: 1..NF_STACK_MAX_CLASSES classes of
 * increasing slot sizes (multiples of NF_SHM_ALIGN), each with slots, together n_slots (less
 * than NF_NO_SLOT), the largest fitting the model's largest tile. */
static int plan_check_classes(const struct nf_stack_plan *plan, const struct nf_stack_shape *sh,
                              const char *name, const char *path, char *err, size_t errlen)
{
    uint64_t largest = sh->class_size[sh->n_classes - 1], total = 0;
    if (plan->n_classes == 0 || plan->n_classes > NF_STACK_MAX_CLASSES)
        return nf_errf(err, errlen, NF_EUSAGE, "stack %s: plan has %u slot classes, expected 1..%d",
                       name, plan->n_classes, NF_STACK_MAX_CLASSES);
    for (uint32_t k = 0; k < plan->n_classes; k++) {
        const struct nf_stack_class *c = &plan->classes[k];
        uint64_t prev = k ? plan->classes[k - 1].slot_size : 0;
        if (c->n_slots == 0 || c->n_slots >= NF_NO_SLOT || c->slot_size <= prev ||
            c->slot_size % NF_SHM_ALIGN != 0 || c->slot_size > NF_STACK_MAX_SLOT)
            return nf_errf(err, errlen, NF_EUSAGE,
                           "stack %s: plan class %u has %llu slots of %llu bytes, expected 1..%u "
                           "slots of a multiple of %u bytes above %llu (the class before) and at "
                           "most %llu",
                           name, k, (unsigned long long)c->n_slots,
                           (unsigned long long)c->slot_size, NF_NO_SLOT - 1, NF_SHM_ALIGN,
                           (unsigned long long)prev, (unsigned long long)NF_STACK_MAX_SLOT);
        total += c->n_slots;
    }
    if (plan->kv_tiles && plan->n_classes < NF_STACK_MAX_CLASSES)
        total += plan->classes[plan->n_classes].n_slots;
    if (total != plan->n_slots || total >= NF_NO_SLOT)
        return nf_errf(err, errlen, NF_EUSAGE,
                       "stack %s: plan has %llu slots but its classes %llu, expected the same and "
                       "below %u",
                       name, (unsigned long long)plan->n_slots, (unsigned long long)total,
                       NF_NO_SLOT);
    if (plan->classes[plan->n_classes - 1].slot_size < largest)
        return nf_errf(err, errlen, NF_EUSAGE,
                       "stack %s: plan's largest slots are %llu bytes, expected >= %llu (the "
                       "largest tile of %s)",
                       name, (unsigned long long)plan->classes[plan->n_classes - 1].slot_size,
                       (unsigned long long)largest, path);
    return 0;
}

/* Points st's fields into its mapping per the config. */
static void stack_bind(struct nf_stack *st)
{
    struct nf_stack_config *c = st->cfg;
    uint8_t *table = nf_shm_area(&st->shm, NF_SHM_TILE_TABLE, NULL);
    uint8_t *rings = nf_shm_area(&st->shm, NF_SHM_REQ_RING, NULL);
    uint8_t *act = nf_shm_area(&st->shm, NF_SHM_ACTIVATIONS, NULL);
    st->tiles = (struct nf_tile_entry *)(table + c->tiles_off);
    st->slots = (struct nf_slot_entry *)(table + c->slots_off);
    st->pool = nf_shm_area(&st->shm, NF_SHM_TILE_POOL, NULL);
    st->demand = (struct nf_ring *)(rings + c->demand_ring_off);
    st->prefetch = (struct nf_ring *)(rings + c->prefetch_ring_off);
    st->act_base = act + c->act_off;
    st->used_base = act + c->used_off;
    st->rows_base = act + c->act_rows_off;
    st->sync = nf_shm_area(&st->shm, NF_SHM_COMPLETION, NULL);
    st->ctr = nf_shm_area(&st->shm, NF_SHM_COUNTERS, NULL);
    st->kv = c->kv_tiles ? (struct nf_kv_word *)(table + c->kv_words_off) : NULL;
    st->kv_walk = c->kv_tiles ? (struct nf_kv_walk *)(table + nf_stack_kv_walk_off(c)) : NULL;
}

int nf_stack_create(struct nf_stack *st, const char *name, const struct nf_nft *f,
                    const struct nf_stack_plan *plan, float sparsity, uint32_t n_threads, char *err,
                    size_t errlen)
{
    memset(st, 0, sizeof(*st));
    struct nf_stack_shape sh;
    int rc = nf__stack_shape(f, &sh, err, errlen);
    if (rc < 0)
        return rc;
    rc = plan_check_classes(plan, &sh, name, f->path, err, errlen);
    if (rc < 0)
        return rc;
    /* The plan's classes (normally the ones the shape chose; a caller may pass others). */
    uint64_t counts[NF_STACK_MAX_CLASSES] = {0};
    sh.n_classes = plan->n_classes;
    for (uint32_t k = 0; k < plan->n_classes; k++) {
        sh.class_size[k] = plan->classes[k].slot_size;
        counts[k] = plan->classes[k].n_slots;
    }
    struct nf_stack_plan p;
    memset(&p, 0, sizeof(p));
    p.n_seq = plan->n_seq;
    p.kv_block = plan->kv_block;
    sh.type_k = plan->type_k;
    sh.type_v = plan->type_v;
    nf__plan_total(&sh, counts, plan->n_ctx, n_threads ? n_threads : 1, &p);
    struct nf_stack_layout lo;
    nf__stack_layout(&sh, p.n_slots, p.kv_tiles, p.n_seq, &lo);

    rc = nf_shm_create(&st->shm, name, p.area_sizes);
    if (rc < 0)
        return nf_errf(err, errlen, rc, "%s", st->shm.err);

    /* The object is zero-filled by ftruncate; everything not set below starts at 0. */
    struct nf_stack_config *c = nf_shm_area(&st->shm, NF_SHM_TILE_TABLE, NULL);
    st->cfg = c;
    c->ram_budget = plan->ram_budget;
    c->n_tiles = sh.n_tiles;
    c->n_slots = p.n_slots;
    c->n_classes = p.n_classes;
    memcpy(c->classes, p.classes, sizeof(c->classes));
    c->max_slot_size = p.classes[p.n_classes - 1].slot_size;
    c->demand_ring_off = lo.demand_off;
    c->demand_ring_size = lo.demand_size;
    c->prefetch_ring_off = lo.prefetch_off;
    c->prefetch_ring_size = lo.prefetch_size;
    c->tiles_off = lo.tiles_off;
    c->slots_off = lo.slots_off;
    c->act_off = lo.act_off;
    c->used_off = lo.used_off;
    c->act_stride = lo.act_stride;
    c->used_stride = lo.used_stride;
    c->act_rows_off = lo.rows_off;
    c->act_rows = lo.act_rows;
    c->nft_file_size = f->hdr.file_size;
    c->nft_header_checksum = f->hdr.header_checksum;
    c->kv_bytes = plan->kv_bytes;
    c->n_ctx = plan->n_ctx;
    c->n_layer = sh.n_layer;
    c->n_embd = sh.n_embd;
    c->n_vocab = sh.n_vocab;
    c->max_groups = sh.max_groups;
    c->sparsity = sparsity;
    c->n_threads = n_threads;
    c->n_seq = plan->n_seq ? plan->n_seq : 1;
    c->n_ubatch = plan->n_ubatch;
    c->kv_type_k = (uint16_t)(plan->type_k ? plan->type_k : NF_TYPE_F16);
    c->kv_type_v = (uint16_t)(plan->type_v ? plan->type_v : NF_TYPE_F16);
    c->kv_block = plan->kv_block;
    snprintf(c->nft_path, sizeof(c->nft_path), "%s", f->path);
    c->kv_tiles = p.kv_tiles;
    c->kv_n_blk = p.kv_n_blk;
    c->kv_row_k = p.kv_row_k;
    c->kv_row_v = p.kv_row_v;
    c->kv_words_off = lo.kv_words_off;
    stack_bind(st);

    for (uint64_t i = 0; i < nf_stack_n_ids(c); i++) {
        atomic_init(&st->tiles[i].state, NF_TILE_EMPTY);
        atomic_init(&st->tiles[i].slot, NF_NO_SLOT);
        atomic_init(&st->tiles[i].pins, 0);
        atomic_init(&st->tiles[i].last_use, 0);
    }
    for (uint64_t i = 0; i < c->n_slots; i++) {
        atomic_init(&st->slots[i].tile, NF_NO_TILE);
        atomic_init(&st->slots[i].flags, 0);
    }
    for (uint64_t i = 0; i < c->kv_tiles; i++) {
        atomic_init(&st->kv[i].gen, 0);
        atomic_init(&st->kv[i].read_gen, 0);
    }
    if (st->kv_walk)
        atomic_init(&st->kv_walk->seq, 0); /* never written */
    if ((rc = nf_ring_init(st->demand, lo.demand_size, sh.demand_count,
                           sizeof(struct nf_tile_req))) < 0 ||
        (rc = nf_ring_init(st->prefetch, lo.prefetch_size, sh.prefetch_count,
                           sizeof(struct nf_tile_req))) < 0) {
        nf_errf(err, errlen, rc, "stack %s: ring init failed: %s", name, nf_strerror(rc));
        goto fail;
    }
    nf_notify_init(&st->sync->fetch_bell);
    nf_notify_init(&st->sync->tile_done);
    nf_notify_init(&st->sync->act_bell);
    atomic_init(&st->sync->stop, 0);
    atomic_init(&st->sync->ready_mask, 0);
    atomic_init(&st->sync->dead_mask, 0);
    for (int i = 0; i < NF_STACK_DAEMONS; i++) {
        atomic_init(&st->sync->live[i].state, NF_LIVE_NONE);
        atomic_init(&st->sync->live[i].pid, 0);
        atomic_init(&st->sync->live[i].start, 0);
    }

    /* Per-layer group counts for the used bitmaps (FFN groups, or experts for MoE). */
    for (uint32_t l = 0; l < sh.n_layer; l++) {
        struct nf_act_slot *a = nf_stack_act(st, l);
        atomic_init(&a->seq, 0);
        a->layer = l;
        a->n_embd = sh.n_embd;
        struct nf_used_slot *u = nf_stack_used(st, l);
        atomic_init(&u->seq, 0);
        u->layer = l;
        u->n_groups = f->hdr.n_expert;
    }
    if (!f->hdr.n_expert) {
        for (uint64_t i = 0; i < f->n_tiles; i++) {
            const struct nf_nft_tile *t = &f->tiles[i];
            if (t->kind == NF_TILE_FFN && t->group && t->layer < sh.n_layer)
                nf_stack_used(st, t->layer)->n_groups += t->count / t->group;
        }
    }
    /* Release pairs with the acquire load of the config magic in nf_stack_attach(): an
     * attacher that sees the magic sees every table, ring and word initialized above. */
    atomic_store_explicit((_Atomic uint64_t *)&c->magic, NF_STACK_CONFIG_MAGIC,
                          memory_order_release);
    return 0;
fail:
    nf_shm_close(&st->shm);
    nf_shm_unlink(name);
    memset(st, 0, sizeof(*st));
    return rc;
}

/* Checks that [off, off + size) lies within an area of area_size bytes. */
static bool in_area(uint64_t off, uint64_t size, uint64_t area_size)
{
    return off <= area_size && size <= area_size - off;
}

/* Checks the class table of a region's config against its pool area of pool_size bytes (and,
 * with f, that the largest class fits f's largest tile): what nf_stack_slot_ptr() relies on. */
static int check_classes(const struct nf_stack_config *c, uint64_t pool_size,
                         const struct nf_nft *f, const char *name, char *err, size_t errlen)
{
    if (c->n_classes == 0 || c->n_classes > NF_STACK_MAX_CLASSES)
        return nf_errf(err, errlen, NF_ECORRUPT,
                       "stack %s: config field n_classes %u, expected 1..%d", name, c->n_classes,
                       NF_STACK_MAX_CLASSES);
    uint64_t first = 0, off = 0;
    const uint32_t n_pool =
        c->n_classes < NF_STACK_MAX_CLASSES ? nf_stack_pool_classes(c) : c->n_classes;
    for (uint32_t k = 0; k < n_pool; k++) {
        const struct nf_stack_class *s = &c->classes[k];
        /* (The KV tiles' class, past the weights', may be of any size.) */
        uint64_t prev = k && k < c->n_classes ? c->classes[k - 1].slot_size : 0;
        const char *bad = NULL;
        if (s->slot_size <= prev || s->slot_size % NF_SHM_ALIGN || s->slot_size > NF_STACK_MAX_SLOT)
            bad = "slot_size (a multiple of 4096 above the class before)";
        else if (s->n_slots == 0 || s->n_slots >= NF_NO_SLOT)
            bad = "n_slots (1 or more)";
        else if (s->first_slot != first)
            bad = "first_slot (the slots of the classes before)";
        else if (s->pool_off != off)
            bad = "pool_off (the bytes of the classes before)";
        else if (s->n_slots > (pool_size - off) / s->slot_size)
            bad = "n_slots * slot_size (beyond the pool area)";
        if (bad)
            return nf_errf(err, errlen, NF_ECORRUPT,
                           "stack %s: config class %u (%llu slots of %llu bytes from slot %llu, "
                           "pool offset %llu): field %s out of bounds; pool area %llu bytes",
                           name, k, (unsigned long long)s->n_slots,
                           (unsigned long long)s->slot_size, (unsigned long long)s->first_slot,
                           (unsigned long long)s->pool_off, bad, (unsigned long long)pool_size);
        first += s->n_slots;
        off += s->n_slots * s->slot_size;
    }
    uint64_t largest = c->classes[c->n_classes - 1].slot_size;
    if (first != c->n_slots || largest != c->max_slot_size)
        return nf_errf(
            err, errlen, NF_ECORRUPT,
            "stack %s: config n_slots %llu and max_slot_size %llu, expected the classes' "
            "%llu slots and largest slot size %llu",
            name, (unsigned long long)c->n_slots, (unsigned long long)c->max_slot_size,
            (unsigned long long)first, (unsigned long long)largest);
    if (f) {
        for (uint64_t i = 0; i < f->n_tiles; i++)
            if (nf_nft_tile_span(&f->tiles[i]) > largest)
                return nf_errf(err, errlen, NF_ECORRUPT,
                               "stack %s: largest slots %llu bytes, expected >= %llu (tile %llu of "
                               "%s)",
                               name, (unsigned long long)largest,
                               (unsigned long long)nf_nft_tile_span(&f->tiles[i]),
                               (unsigned long long)i, f->path);
    }
    return 0;
}

int nf_stack_attach(struct nf_stack *st, const char *name, const struct nf_nft *f, char *err,
                    size_t errlen)
{
    memset(st, 0, sizeof(*st));
    int rc = nf_shm_open(&st->shm, name);
    if (rc < 0)
        return nf_errf(err, errlen, rc, "%s", st->shm.err);
    uint64_t sz[NF_SHM_NAREAS];
    for (int i = 0; i < NF_SHM_NAREAS; i++)
        nf_shm_area(&st->shm, i, &sz[i]);
    struct nf_stack_config *c = nf_shm_area(&st->shm, NF_SHM_TILE_TABLE, NULL);
    if (sz[NF_SHM_TILE_TABLE] < sizeof(*c)) {
        rc = nf_errf(err, errlen, NF_ECORRUPT,
                     "stack %s: tile table area %llu bytes, expected at least %zu", name,
                     (unsigned long long)sz[NF_SHM_TILE_TABLE], sizeof(*c));
        goto fail;
    }
    /* Acquire pairs with the release store of the magic at the end of nf_stack_create(). */
    uint64_t magic = atomic_load_explicit((_Atomic uint64_t *)&c->magic, memory_order_acquire);
    if (magic == 0) {
        rc =
            nf_errf(err, errlen, -EAGAIN, "stack %s: still being initialized by its creator", name);
        goto fail;
    }
    if (magic == NF_STACK_CONFIG_MAGIC_V1) {
        rc = nf_errf(err, errlen, NF_EBADMAGIC,
                     "stack %s: config magic \"NFNSTACK\" (one slot size, an older NanoFlow's "
                     "layout), expected \"NFNSTAK2\" (slot size classes): stop the old stack "
                     "and start it again",
                     name);
        goto fail;
    }
    if (magic != NF_STACK_CONFIG_MAGIC) {
        rc = nf_errf(err, errlen, NF_EBADMAGIC,
                     "stack %s: config magic 0x%016llx, expected 0x%016llx (\"NFNSTAK2\")", name,
                     (unsigned long long)magic, (unsigned long long)NF_STACK_CONFIG_MAGIC);
        goto fail;
    }
    if (f && (c->nft_file_size != f->hdr.file_size ||
              c->nft_header_checksum != f->hdr.header_checksum || c->n_tiles != f->n_tiles)) {
        rc = nf_errf(err, errlen, NF_EUSAGE,
                     "stack %s was made for %s (%llu bytes, header checksum %016llx, %llu tiles), "
                     "not for %s (%llu bytes, header checksum %016llx, %llu tiles)",
                     name, c->nft_path, (unsigned long long)c->nft_file_size,
                     (unsigned long long)c->nft_header_checksum, (unsigned long long)c->n_tiles,
                     f->path, (unsigned long long)f->hdr.file_size,
                     (unsigned long long)f->hdr.header_checksum, (unsigned long long)f->n_tiles);
        goto fail;
    }
    const char *bad = NULL;
    if (c->n_tiles == 0 || c->kv_tiles >= NF_NO_TILE || nf_stack_n_ids(c) >= NF_NO_TILE ||
        !in_area(c->tiles_off, nf_stack_n_ids(c) * sizeof(struct nf_tile_entry),
                 sz[NF_SHM_TILE_TABLE]) ||
        c->tiles_off % NF_STACK_CL)
        bad = "tiles_off/n_tiles";
    else if (c->kv_tiles &&
             (c->n_classes >= NF_STACK_MAX_CLASSES || c->kv_n_blk == 0 ||
              c->kv_tiles != (uint64_t)(c->n_seq ? c->n_seq : 1) * c->n_layer * 2 * c->kv_n_blk ||
              !in_area(c->kv_words_off, c->kv_tiles * sizeof(struct nf_kv_word),
                       sz[NF_SHM_TILE_TABLE]) ||
              !in_area(nf_stack_kv_walk_off(c), sizeof(struct nf_kv_walk), sz[NF_SHM_TILE_TABLE]) ||
              c->kv_words_off % NF_STACK_CL))
        bad = "kv_tiles/kv_words_off";
    else if (c->n_slots == 0 || c->n_slots >= NF_NO_SLOT ||
             !in_area(c->slots_off, c->n_slots * sizeof(struct nf_slot_entry),
                      sz[NF_SHM_TILE_TABLE]) ||
             c->slots_off % NF_STACK_CL)
        bad = "slots_off/n_slots";
    else if (!in_area(c->demand_ring_off, c->demand_ring_size, sz[NF_SHM_REQ_RING]) ||
             c->demand_ring_off % NF_STACK_CL)
        bad = "demand_ring_off/size";
    else if (!in_area(c->prefetch_ring_off, c->prefetch_ring_size, sz[NF_SHM_REQ_RING]) ||
             c->prefetch_ring_off % NF_STACK_CL)
        bad = "prefetch_ring_off/size";
    else if (c->n_layer == 0 || c->n_layer > NF_NFT_MAX_LAYERS ||
             c->act_stride < sizeof(struct nf_act_slot) + (uint64_t)c->n_embd * sizeof(float) ||
             c->used_stride <
                 sizeof(struct nf_used_slot) + ((uint64_t)c->max_groups + 63) / 64 * 8 ||
             c->act_stride % NF_STACK_CL || c->used_stride % NF_STACK_CL ||
             c->act_off % NF_STACK_CL || c->used_off % NF_STACK_CL ||
             !in_area(c->act_off, c->n_layer * c->act_stride, sz[NF_SHM_ACTIVATIONS]) ||
             !in_area(c->used_off, c->n_layer * c->used_stride, sz[NF_SHM_ACTIVATIONS]))
        bad = "activation/used slots";
    else if (c->act_rows > NF_STACK_SEQ_MAX || c->act_rows_off % NF_STACK_CL ||
             (c->act_rows &&
              !in_area(c->act_rows_off, (uint64_t)c->n_layer * c->act_rows * c->act_stride,
                       sz[NF_SHM_ACTIVATIONS])))
        bad = "act_rows/act_rows_off";
    else if (sz[NF_SHM_COMPLETION] < sizeof(struct nf_stack_sync))
        bad = "completion area size";
    else if (sz[NF_SHM_COUNTERS] < sizeof(struct nf_stack_counters))
        bad = "counters area size";
    if (bad) {
        rc = nf_errf(err, errlen, NF_ECORRUPT, "stack %s: config field %s out of its area bounds",
                     name, bad);
        goto fail;
    }
    if ((rc = check_classes(c, sz[NF_SHM_TILE_POOL], f, name, err, errlen)) < 0)
        goto fail;
    st->cfg = c;
    stack_bind(st);
    if ((rc = nf_ring_check(st->demand, c->demand_ring_size)) < 0 ||
        (rc = nf_ring_check(st->prefetch, c->prefetch_ring_size)) < 0) {
        nf_errf(err, errlen, rc, "stack %s: request ring refused: %s", name, nf_strerror(rc));
        goto fail;
    }
    if (st->demand->esize != sizeof(struct nf_tile_req) ||
        st->prefetch->esize != sizeof(struct nf_tile_req)) {
        rc = nf_errf(err, errlen, NF_ECORRUPT, "stack %s: ring entry size %u/%u, expected %zu",
                     name, st->demand->esize, st->prefetch->esize, sizeof(struct nf_tile_req));
        goto fail;
    }
    return 0;
fail:
    nf_shm_close(&st->shm);
    memset(st, 0, sizeof(*st));
    return rc;
}

void nf_stack_detach(struct nf_stack *st)
{
    nf_shm_close(&st->shm);
    memset(st, 0, sizeof(*st));
}

int nf_stack_unlink(const char *name)
{
    return nf_shm_unlink(name);
}

void nf_stack_stop(struct nf_stack *st, uint32_t ready_bit)
{
    struct nf_stack_sync *sy = st->sync;
    atomic_fetch_and(&sy->ready_mask, ~ready_bit);
    atomic_store(&sy->stop, 1);
    nf_notify_wake(&sy->fetch_bell);
    nf_notify_wake(&sy->tile_done);
    nf_notify_wake(&sy->act_bell);
}
