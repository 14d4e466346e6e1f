/* test_fetch_cache.c - the fetcher's cache policy: farthest-next-use eviction and resident set. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>

/* The policy is compiled into nanoflow-fetcher, not into a library: test its source directly. */
#include "../daemons/fetcher/cache.c"

#define NT 20 /* tiles in the synthetic model */
#define NS 8  /* pool slots */

struct table {
    struct nf_tile_entry tiles[NT];
    struct nf_slot_entry slots[NS];
};

/* Tiles 0..NS-1 READY in slots 0..NS-1, the rest EMPTY. */
static void table_init(struct table *t)
{
    memset(t, 0, sizeof(*t));
    for (uint32_t i = 0; i < NT; i++) {
        atomic_init(&t->tiles[i].state, NF_TILE_EMPTY);
        atomic_init(&t->tiles[i].slot, NF_NO_SLOT);
    }
    for (uint32_t s = 0; s < NS; s++) {
        atomic_init(&t->slots[s].tile, s);
        atomic_init(&t->tiles[s].state, NF_TILE_READY);
        atomic_init(&t->tiles[s].slot, s);
    }
}

static uint32_t victim(struct table *t, uint32_t cur, uint64_t min_dist, uint64_t below)
{
    return nf_cache_pick_victim(t->tiles, NT, t->slots, 0, NS, cur, min_dist, below, NULL, NULL);
}

static void test_distance(void **state)
{
    (void)state;
    assert_int_equal(nf_cache_distance(5, 5, NT), 0);
    assert_int_equal(nf_cache_distance(6, 5, NT), 1);
    assert_int_equal(nf_cache_distance(4, 5, NT), NT - 1);
    assert_int_equal(nf_cache_distance(0, 19, NT), 1);
}

/* Compute moved on to tile 8 after using 0..7: the tile just used (7) is needed last, the
 * first ones (0, 1, ...) are needed soonest in the next cycle. */
static void test_cyclic_evicts_most_recent(void **state)
{
    (void)state;
    struct table t;
    table_init(&t);
    assert_int_equal(victim(&t, 8, 0, UINT64_MAX), 7);
    /* The next candidate after 7 failed (pinned meanwhile) is 6, then 5. */
    assert_int_equal(victim(&t, 8, 0, nf_cache_distance(7, 8, NT)), 6);
    assert_int_equal(victim(&t, 8, 0, nf_cache_distance(6, 8, NT)), 5);
    /* Mid-cycle: compute is at tile 3, so 4..7 are needed soon and 2 (just used) is last. */
    assert_int_equal(victim(&t, 3, 0, UINT64_MAX), 2);
}

static void test_pinned_resident_loading_never(void **state)
{
    (void)state;
    struct table t;
    table_init(&t);
    atomic_store(&t.tiles[7].pins, 1);                 /* compute uses it */
    atomic_store(&t.slots[6].flags, NF_SLOT_RESIDENT); /* hot set */
    atomic_store(&t.tiles[5].state, NF_TILE_LOADING);  /* read in flight */
    assert_int_equal(victim(&t, 8, 0, UINT64_MAX), 4);
    /* Nothing evictable at all: every slot pinned, resident or loading. */
    for (uint32_t s = 0; s < NS; s++)
        atomic_store(&t.tiles[s].pins, 1);
    atomic_store(&t.tiles[6].pins, 0);
    atomic_store(&t.tiles[5].pins, 0);
    assert_int_equal(victim(&t, 8, 0, UINT64_MAX), NF_NO_SLOT);
    /* An empty slot is not a victim (it is free already). */
    table_init(&t);
    atomic_store(&t.slots[3].tile, NF_NO_TILE);
    atomic_store(&t.tiles[3].state, NF_TILE_EMPTY);
    for (uint32_t s = 0; s < NS; s++)
        if (s != 3)
            atomic_store(&t.tiles[s].pins, 1);
    assert_int_equal(victim(&t, 8, 0, UINT64_MAX), NF_NO_SLOT);
}

/* A prefetch only evicts tiles needed after itself. */
static void test_prefetch_does_not_evict_sooner_tiles(void **state)
{
    (void)state;
    struct table t;
    table_init(&t);
    /* cur 8: tile 15 is 7 steps ahead; all cached tiles (0..7) are 12..19 ahead: evict 7. */
    assert_int_equal(victim(&t, 8, nf_cache_distance(15, 8, NT), UINT64_MAX), 7);
    /* Tile 5 of the next cycle (17 ahead): only 6 (18) and 7 (19) are needed later. */
    assert_int_equal(victim(&t, 8, nf_cache_distance(5, 8, NT), UINT64_MAX), 7);
    atomic_store(&t.tiles[7].pins, 1);
    assert_int_equal(victim(&t, 8, nf_cache_distance(5, 8, NT), UINT64_MAX), 6);
    atomic_store(&t.tiles[6].pins, 1);
    assert_int_equal(victim(&t, 8, nf_cache_distance(5, 8, NT), UINT64_MAX), NF_NO_SLOT);
}

/* Simulates compute scanning NT tiles cyclically with NS slots, loading each miss into a free
 * slot or the policy's victim (LRU as the comparison). Returns the misses over `cycles` cycles
 * after one warm-up cycle. */
static unsigned simulate(bool lru, unsigned cycles)
{
    struct table t;
    memset(&t, 0, sizeof(t));
    uint32_t last[NT] = {0}; /* time of last use, for LRU */
    for (uint32_t i = 0; i < NT; i++)
        atomic_init(&t.tiles[i].slot, NF_NO_SLOT);
    for (uint32_t s = 0; s < NS; s++)
        atomic_init(&t.slots[s].tile, NF_NO_TILE);
    unsigned misses = 0, clock = 0;
    for (unsigned c = 0; c < cycles + 1; c++) {
        for (uint32_t id = 0; id < NT; id++, clock++) {
            if (atomic_load(&t.tiles[id].state) != NF_TILE_READY) {
                if (c > 0)
                    misses++;
                uint32_t s = NF_NO_SLOT;
                for (uint32_t k = 0; k < NS && s == NF_NO_SLOT; k++)
                    if (atomic_load(&t.slots[k].tile) == NF_NO_TILE)
                        s = k;
                if (s == NF_NO_SLOT && lru) {
                    uint32_t best = UINT32_MAX;
                    for (uint32_t k = 0; k < NS; k++)
                        if (last[atomic_load(&t.slots[k].tile)] < best) {
                            best = last[atomic_load(&t.slots[k].tile)];
                            s = k;
                        }
                } else if (s == NF_NO_SLOT) {
                    s = victim(&t, id, 0, UINT64_MAX);
                }
                assert_int_not_equal(s, NF_NO_SLOT);
                uint32_t old = atomic_load(&t.slots[s].tile);
                if (old != NF_NO_TILE)
                    atomic_store(&t.tiles[old].state, NF_TILE_EMPTY);
                atomic_store(&t.slots[s].tile, id);
                atomic_store(&t.tiles[id].state, NF_TILE_READY);
            }
            last[id] = clock;
        }
    }
    return misses;
}

static void test_cyclic_scan_beats_lru(void **state)
{
    (void)state;
    unsigned cycles = 10;
    unsigned lru = simulate(true, cycles), far = simulate(false, cycles);
    /* LRU misses every tile of a scan larger than the cache. */
    assert_int_equal(lru, cycles * NT);
    /* Farthest-next-use keeps NS - 1 tiles per cycle (one slot turns over). */
    assert_true(far <= cycles * (NT - (NS - 1)));
    print_message("cyclic scan of %d tiles in %d slots, %u cycles: LRU %u misses, policy %u\n", NT,
                  NS, cycles, lru, far);
}

/* A small model: embedding, 3 layers of (attn_norm, q, k, v, o, ffn_norm, 4 ffn), output norm,
 * output. */
static uint32_t build_info(struct nf_cache_tile_info *info)
{
    uint32_t n = 0;
    info[n++] = (struct nf_cache_tile_info){NF_NFT_NO_LAYER, NF_TILE_EMBD, 4096, 0};
    for (uint32_t l = 0; l < 3; l++) {
        static const uint16_t kinds[] = {
            NF_TILE_ATTN_NORM, NF_TILE_ATTN_Q, NF_TILE_ATTN_K, NF_TILE_ATTN_V, NF_TILE_ATTN_O,
            NF_TILE_FFN_NORM,  NF_TILE_FFN,    NF_TILE_FFN,    NF_TILE_FFN,    NF_TILE_FFN};
        for (size_t k = 0; k < sizeof(kinds) / sizeof(kinds[0]); k++)
            info[n++] = (struct nf_cache_tile_info){l, kinds[k], 8192, 0};
    }
    info[n++] = (struct nf_cache_tile_info){NF_NFT_NO_LAYER, NF_TILE_OUTPUT_NORM, 4096, 0};
    info[n++] = (struct nf_cache_tile_info){NF_NFT_NO_LAYER, NF_TILE_OUTPUT, 8192, 0};
    return n;
}

static void test_resident_set(void **state)
{
    (void)state;
    struct nf_cache_tile_info info[40];
    uint32_t n = build_info(info);
    assert_int_equal(n, 33);
    struct nf_cache c;
    /* 11 slots: 6 norms + output norm = 7, then layer 0's attention (4) fits, layer 1's not. */
    assert_int_equal(nf_cache_init(&c, info, n, 3, 1, (uint32_t[]){11}, false), 0);
    assert_int_equal(c.n_resident, 11);
    for (uint32_t id = 0; id < n; id++) {
        bool norm = info[id].kind == NF_TILE_ATTN_NORM || info[id].kind == NF_TILE_FFN_NORM ||
                    info[id].kind == NF_TILE_OUTPUT_NORM;
        bool attn0 = info[id].layer == 0 && info[id].kind >= NF_TILE_ATTN_Q &&
                     info[id].kind <= NF_TILE_ATTN_O;
        assert_int_equal(nf_cache_is_resident(&c, id), norm || attn0);
    }
    nf_cache_free(&c);
    /* 10 slots: no whole layer of attention fits after the norms. */
    assert_int_equal(nf_cache_init(&c, info, n, 3, 1, (uint32_t[]){10}, false), 0);
    assert_int_equal(c.n_resident, 7);
    assert_false(nf_cache_is_resident(&c, 2)); /* layer 0 q */
    nf_cache_free(&c);
    /* 3 slots: only the first norms, never more than allowed. */
    assert_int_equal(nf_cache_init(&c, info, n, 3, 1, (uint32_t[]){3}, false), 0);
    assert_int_equal(c.n_resident, 3);
    nf_cache_free(&c);
    /* No slots to spare: nothing resident. */
    assert_int_equal(nf_cache_init(&c, info, n, 3, 1, (uint32_t[]){0}, false), 0);
    assert_int_equal(c.n_resident, 0);
    assert_false(nf_cache_is_resident(&c, n)); /* out of range */
    nf_cache_free(&c);
}

/* Two classes: slots 0..3 hold small tiles (class 0), slots 4..7 large ones (class 1). A load
 * of a class-1 tile looks at slots 4..7 only, even when a class-0 tile is needed later. */
static void test_victim_within_class(void **state)
{
    (void)state;
    struct table t;
    table_init(&t); /* tiles 0..7 READY in slots 0..7 */
    /* cur 4: tile 3 (slot 3, class 0) is needed last of all, but a class-1 load may only take
     * slots 4..7, where tile 4 is needed soonest and 7 last. */
    assert_int_equal(
        nf_cache_pick_victim(t.tiles, NT, t.slots, 0, NS, 4, 0, UINT64_MAX, NULL, NULL), 3);
    assert_int_equal(
        nf_cache_pick_victim(t.tiles, NT, t.slots, 4, NS, 4, 0, UINT64_MAX, NULL, NULL), 7);
    assert_int_equal(nf_cache_pick_victim(t.tiles, NT, t.slots, 0, 4, 4, 0, UINT64_MAX, NULL, NULL),
                     3);
    /* Class 1 wholly pinned: no victim there, though class 0 has free-able slots. */
    for (uint32_t s = 4; s < NS; s++)
        atomic_store(&t.tiles[s].pins, 1);
    assert_int_equal(
        nf_cache_pick_victim(t.tiles, NT, t.slots, 4, NS, 4, 0, UINT64_MAX, NULL, NULL),
        NF_NO_SLOT);
    assert_int_not_equal(
        nf_cache_pick_victim(t.tiles, NT, t.slots, 0, 4, 4, 0, UINT64_MAX, NULL, NULL), NF_NO_SLOT);
}

/* A cyclic scan over tiles of two classes (even ids small, odd ids large), each class with its
 * own slots, loading misses into a free slot of the tile's class or the class's victim: no load
 * ever evicts a tile of the other class, and each class keeps all but one of its slots' tiles
 * across cycles. */
static void test_cyclic_scan_per_class(void **state)
{
    (void)state;
    struct table t;
    memset(&t, 0, sizeof(t));
    for (uint32_t i = 0; i < NT; i++)
        atomic_init(&t.tiles[i].slot, NF_NO_SLOT);
    for (uint32_t s = 0; s < NS; s++)
        atomic_init(&t.slots[s].tile, NF_NO_TILE);
    const uint32_t first[2] = {0, 3}, end[2] = {3, NS}; /* 3 small slots, 5 large */
    unsigned misses[2] = {0, 0}, cycles = 10;
    for (unsigned c = 0; c < cycles + 1; c++) {
        for (uint32_t id = 0; id < NT; id++) {
            uint32_t k = id % 2;
            if (atomic_load(&t.tiles[id].state) == NF_TILE_READY)
                continue;
            if (c > 0)
                misses[k]++;
            uint32_t s = NF_NO_SLOT;
            for (uint32_t j = first[k]; j < end[k] && s == NF_NO_SLOT; j++)
                if (atomic_load(&t.slots[j].tile) == NF_NO_TILE)
                    s = j;
            if (s == NF_NO_SLOT)
                s = nf_cache_pick_victim(t.tiles, NT, t.slots, first[k], end[k], id, 0, UINT64_MAX,
                                         NULL, NULL);
            assert_true(s >= first[k] && s < end[k]);
            uint32_t old = atomic_load(&t.slots[s].tile);
            if (old != NF_NO_TILE) {
                assert_int_equal(old % 2, k); /* evicts within its class only */
                atomic_store(&t.tiles[old].state, NF_TILE_EMPTY);
            }
            atomic_store(&t.slots[s].tile, id);
            atomic_store(&t.tiles[id].state, NF_TILE_READY);
        }
    }
    /* Each class scans NT / 2 tiles per cycle and keeps (its slots - 1) of them. */
    assert_true(misses[0] <= cycles * (NT / 2 - 2));
    assert_true(misses[1] <= cycles * (NT / 2 - 4));
    assert_true(misses[0] > 0 && misses[1] > 0);
}

/* The resident set per class: norms fill the small class's share, attention the main class's
 * by whole layers, predictor tiles the large class's, each up to its own limit. */
static void test_resident_per_class(void **state)
{
    (void)state;
    struct nf_cache_tile_info info[40];
    uint32_t n = 0;
    info[n++] = (struct nf_cache_tile_info){NF_NFT_NO_LAYER, NF_TILE_EMBD, 4096, 0};
    for (uint32_t l = 0; l < 3; l++) {
        info[n++] = (struct nf_cache_tile_info){l, NF_TILE_ATTN_NORM, 4096, 0};
        for (uint16_t kind = NF_TILE_ATTN_Q; kind <= NF_TILE_ATTN_O; kind++)
            info[n++] = (struct nf_cache_tile_info){l, kind, 65536, 1};
        info[n++] = (struct nf_cache_tile_info){l, NF_TILE_FFN_NORM, 4096, 0};
        info[n++] = (struct nf_cache_tile_info){l, NF_TILE_FFN, 65536, 1};
        info[n++] = (struct nf_cache_tile_info){l, NF_TILE_PRED_LOWRANK, 262144, 2};
    }
    info[n++] = (struct nf_cache_tile_info){NF_NFT_NO_LAYER, NF_TILE_OUTPUT_NORM, 4096, 0};
    /* The old single limit of 8 would have gone to the 7 norms first; per class the main
     * class gets its own 8: two whole layers of attention. */
    struct nf_cache c;
    assert_int_equal(nf_cache_init(&c, info, n, 3, 3, (uint32_t[]){3, 8, 1}, false), 0);
    assert_int_equal(c.class_resident[0], 3); /* the first three norms */
    assert_int_equal(c.class_resident[1], 8); /* layers 0 and 1 of attention */
    assert_int_equal(c.class_resident[2], 1); /* layer 0's predictor */
    assert_int_equal(c.n_resident, 12);
    for (uint32_t id = 0; id < n; id++) {
        bool attn = info[id].kind >= NF_TILE_ATTN_Q && info[id].kind <= NF_TILE_ATTN_O;
        if (attn)
            assert_int_equal(nf_cache_is_resident(&c, id), info[id].layer < 2);
        if (info[id].kind == NF_TILE_PRED_LOWRANK)
            assert_int_equal(nf_cache_is_resident(&c, id), info[id].layer == 0);
        if (info[id].kind == NF_TILE_FFN || info[id].kind == NF_TILE_EMBD)
            assert_false(nf_cache_is_resident(&c, id));
        assert_int_equal(nf_cache_class(&c, id), info[id].cls);
    }
    nf_cache_free(&c);
    /* A tile no class fits is never resident and has no class; bad class counts are refused. */
    info[1].cls = NF_CACHE_NO_CLASS;
    assert_int_equal(nf_cache_init(&c, info, n, 3, 3, (uint32_t[]){8, 8, 8}, false), 0);
    assert_false(nf_cache_is_resident(&c, 1));
    assert_int_equal(nf_cache_class(&c, 1), NF_CACHE_NO_CLASS);
    nf_cache_free(&c);
    assert_int_equal(nf_cache_init(&c, info, n, 3, 0, (uint32_t[]){8}, false), -EINVAL);
    assert_int_equal(nf_cache_init(&c, info, n, 3, NF_STACK_MAX_CLASSES + 1,
                                   (uint32_t[NF_STACK_MAX_CLASSES + 1]){0}, false),
                     -EINVAL);
}

/* A 7B-like main class: per layer 4 attention tiles and 8 FFN tiles, a predictor tile in its own
 * class; 4 layers. */
static uint32_t build_sparse_info(struct nf_cache_tile_info *info)
{
    uint32_t n = 0;
    info[n++] = (struct nf_cache_tile_info){NF_NFT_NO_LAYER, NF_TILE_EMBD, 4096, 0};
    for (uint32_t l = 0; l < 4; l++) {
        info[n++] = (struct nf_cache_tile_info){l, NF_TILE_ATTN_NORM, 4096, 0};
        for (uint16_t kind = NF_TILE_ATTN_Q; kind <= NF_TILE_ATTN_O; kind++)
            info[n++] = (struct nf_cache_tile_info){l, kind, 65536, 1};
        info[n++] = (struct nf_cache_tile_info){l, NF_TILE_FFN_NORM, 4096, 0};
        info[n++] = (struct nf_cache_tile_info){l, NF_TILE_PRED_LOWRANK, 262144, 2};
        for (int i = 0; i < 8; i++)
            info[n++] = (struct nf_cache_tile_info){l, NF_TILE_FFN, 65536, 1};
    }
    info[n++] = (struct nf_cache_tile_info){NF_NFT_NO_LAYER, NF_TILE_OUTPUT_NORM, 4096, 0};
    info[n++] = (struct nf_cache_tile_info){NF_NFT_NO_LAYER, NF_TILE_OUTPUT, 65536, 1};
    return n;
}

/* Half of each class, less where the rest would fall below the class's minimum. */
static void test_limits(void **state)
{
    (void)state;
    uint32_t max[4];
    nf_cache_limits(4, (uint32_t[]){16, 40, 4, 5}, (uint32_t[]){4, 30, 3, 9}, max);
    assert_int_equal(max[0], 8);
    assert_int_equal(max[1], 10); /* half is 20, but 30 must stay for the working set */
    assert_int_equal(max[2], 1);
    assert_int_equal(max[3], 0); /* a class below its minimum keeps nothing resident */
}

/* Spread: the same number of whole layers of attention, taken evenly over the model. */
static void test_resident_spread(void **state)
{
    (void)state;
    struct nf_cache_tile_info info[64];
    uint32_t n = build_sparse_info(info);
    struct nf_cache c;
    /* 9 slots in class 1: two layers of 4 attention tiles (the output is not by layer). */
    for (int spread = 0; spread < 2; spread++) {
        assert_int_equal(nf_cache_init(&c, info, n, 4, 3, (uint32_t[]){16, 9, 2}, spread), 0);
        assert_int_equal(c.class_resident[1], 8);
        assert_int_equal(c.class_resident[2], 2);
        for (uint32_t id = 0; id < n; id++) {
            bool attn = info[id].kind >= NF_TILE_ATTN_Q && info[id].kind <= NF_TILE_ATTN_O;
            bool pred = info[id].kind == NF_TILE_PRED_LOWRANK;
            /* First layers first: 0 and 1; spread over 4 layers: 1 and 3. */
            bool want = spread ? info[id].layer == 1 || info[id].layer == 3 : info[id].layer < 2;
            if (attn || pred)
                assert_int_equal(nf_cache_is_resident(&c, id), want);
            if (info[id].kind == NF_TILE_FFN)
                assert_false(nf_cache_is_resident(&c, id));
        }
        nf_cache_free(&c);
    }
    /* Every layer fits: the same set either way. */
    assert_int_equal(nf_cache_init(&c, info, n, 4, 3, (uint32_t[]){16, 16, 4}, true), 0);
    assert_int_equal(c.class_resident[1], 16);
    nf_cache_free(&c);
}

/* Compute is on tile 50, in position 5 of 9 (8 layers and the output). */
static void test_late_prefetch(void **state)
{
    (void)state;
    /* Same position: earlier tiles are behind, later ones ahead. */
    assert_true(nf_cache_behind(48, 5, 50, 5, 9));
    assert_false(nf_cache_behind(50, 5, 50, 5, 9));
    assert_false(nf_cache_behind(52, 5, 50, 5, 9));
    /* Up to half a step back is behind, the rest is ahead (the next step's early layers). */
    assert_true(nf_cache_behind(30, 3, 50, 5, 9));
    assert_true(nf_cache_behind(10, 1, 50, 5, 9));
    assert_false(nf_cache_behind(5, 0, 50, 5, 9));
    assert_false(nf_cache_behind(60, 6, 50, 5, 9));
    /* A layer-3 tile asked for 1 or 2 layers ahead: compute has passed it, too late. Asked for
     * 6 layers ahead (the next step's layer 3 is 7 positions away): in time. */
    assert_true(nf_cache_late(30, 3, 50, 5, 9, 1));
    assert_true(nf_cache_late(30, 3, 50, 5, 9, 2));
    assert_false(nf_cache_late(30, 3, 50, 5, 9, 6));
    /* A tile of the current layer behind compute, asked for one layer ahead: too late. */
    assert_true(nf_cache_late(48, 5, 50, 5, 9, 1));
    /* Ahead of compute: never late. */
    assert_false(nf_cache_late(60, 6, 50, 5, 9, 1));
    assert_false(nf_cache_late(52, 5, 50, 5, 9, 1));
}

/* Frequency estimate: an expert used every step tends to 1, one used once long ago to almost
 * 0, one never seen is rare too once steps go by (had it been chosen, it would have been
 * loaded and seen); a tile with prior 0 is used every step and not tracked. */
static void test_freq_estimate(void **state)
{
    (void)state;
    const float p0[4] = {0.25f, 0.25f, 0.25f, 0.0f};
    struct nf_cache_freq q;
    assert_int_equal(nf_cache_freq_init(&q, p0, 4), 0);
    /* Before any step: the prior. */
    assert_true(nf_cache_freq_p(&q, 0) > 0.24 && nf_cache_freq_p(&q, 0) < 0.26);
    nf_cache_freq_observe(&q, 1, 100);
    for (uint32_t step = 100; step < 160; step++) {
        nf_cache_freq_observe(&q, 0, step);
        nf_cache_freq_observe(&q, 0, step); /* seen twice in a step: one use */
    }
    assert_true(nf_cache_freq_p(&q, 0) > 0.8);
    assert_true(nf_cache_freq_p(&q, 1) < 0.1);
    assert_true(nf_cache_freq_p(&q, 2) < 0.1);
    assert_true(nf_cache_freq_p(&q, 1) > 0.0);
    assert_true(nf_cache_freq_p(&q, 3) == 1.0);
    /* Not seen: counts nothing. */
    double p1 = nf_cache_freq_p(&q, 1);
    nf_cache_freq_observe(&q, 1, NF_CACHE_FREQ_NONE);
    assert_true(nf_cache_freq_p(&q, 1) == p1);
    /* Expected distance: every-step tiles keep their distance; a rare expert's is larger than
     * any every-step tile's; a frequent expert's is below a rare one's. */
    assert_int_equal(nf_cache_expected(&q, 3, 7, 20), 7);
    assert_int_equal(nf_cache_expected(NULL, 1, 7, 20), 7);
    assert_true(nf_cache_expected(&q, 1, 0, 20) > 20);
    assert_true(nf_cache_expected(&q, 0, 7, 20) < nf_cache_expected(&q, 1, 0, 20));
    nf_cache_freq_free(&q);
}

/* The victim by expected next use: compute is at tile 8 after 0..7; tiles 2 and 3 are routed
 * experts, 2 chosen every other step, 3 not since its load: 3 goes first, then 2 (its next use
 * is about two cycles away), then the cyclic order (7, 6, ...). A prefetch needed at distance
 * 15 may still evict the experts but no every-step tile. */
static void test_victim_rare_expert_first(void **state)
{
    (void)state;
    struct table t;
    table_init(&t);
    float p0[NT] = {0};
    p0[2] = p0[3] = 0.25f;
    struct nf_cache_freq q;
    assert_int_equal(nf_cache_freq_init(&q, p0, NT), 0);
    for (uint32_t step = 2; step <= 30; step += 2)
        nf_cache_freq_observe(&q, 2, step);
    nf_cache_freq_observe(&q, 3, 1);
    uint64_t got = 0;
    uint32_t s = nf_cache_pick_victim(t.tiles, NT, t.slots, 0, NS, 8, 0, UINT64_MAX, &q, &got);
    assert_int_equal(s, 3);
    s = nf_cache_pick_victim(t.tiles, NT, t.slots, 0, NS, 8, 0, got, &q, &got);
    assert_int_equal(s, 2);
    s = nf_cache_pick_victim(t.tiles, NT, t.slots, 0, NS, 8, 0, got, &q, &got);
    assert_int_equal(s, 7);
    /* The cyclic rule alone would take 7 first. */
    assert_int_equal(victim(&t, 8, 0, UINT64_MAX), 7);
    s = nf_cache_pick_victim(t.tiles, NT, t.slots, 0, NS, 8, nf_cache_distance(15, 8, NT),
                             UINT64_MAX, &q, &got);
    assert_int_equal(s, 3);
    nf_cache_freq_free(&q);
}

/* A rare expert prefetched and not pinned since its load (last_use NF_CACHE_FREQ_NONE), less
 * than half a cycle ahead of compute, is wanted on that pass: it ranks by its cyclic distance
 * like any tile and is not the victim, where by its frequency it would have gone first, before
 * it was used. Once compute has passed it unused (the forecast missed), its frequency ranks it
 * first again. */
static void test_victim_prefetched_expert_kept(void **state)
{
    (void)state;
    struct table t;
    table_init(&t);
    float p0[NT] = {0};
    p0[2] = p0[3] = 0.25f;
    struct nf_cache_freq q;
    assert_int_equal(nf_cache_freq_init(&q, p0, NT), 0);
    for (uint32_t step = 2; step <= 30; step += 2)
        nf_cache_freq_observe(&q, 2, step);
    nf_cache_freq_observe(&q, 3, 1);
    /* Compute at 1: tile 3 is 2 tiles ahead. Used before, it goes first. */
    assert_int_equal(nf_cache_pick_victim(t.tiles, NT, t.slots, 0, NS, 1, 0, UINT64_MAX, &q, NULL),
                     3);
    atomic_store(&t.tiles[3].last_use, NF_CACHE_FREQ_NONE); /* reloaded by a prefetch */
    uint64_t got = 0;
    uint32_t order[NS - 1]; /* 1, at distance 0, is never a victim */
    for (uint32_t i = 0; i < NS - 1; i++) {
        order[i] =
            nf_cache_pick_victim(t.tiles, NT, t.slots, 0, NS, 1, 0, i ? got : UINT64_MAX, &q, &got);
        assert_true(order[i] < NS);
    }
    /* Ranked by its distance it is the last victim. */
    assert_int_equal(order[NS - 2], 3);
    /* Compute at 4, past it. */
    assert_int_equal(nf_cache_pick_victim(t.tiles, NT, t.slots, 0, NS, 4, 0, UINT64_MAX, &q, NULL),
                     3);
    nf_cache_freq_free(&q);
}

/* A batched MoE step runs the experts already in memory first: compute's newest pin is past
 * experts of its layer it asked for and has not run. Layer from tile 2, compute at 7 after
 * pinning 6; tile 3 loaded and not pinned since (asked for, still to run): with the layer
 * known it ranks as needed next (1), the last victim of a demand and never one of a prefetch;
 * without it (nf_cache_pick_victim), it goes first, as an expert compute passed unused. */
static void test_victim_unreached_in_layer_kept(void **state)
{
    (void)state;
    struct table t;
    table_init(&t);
    float p0[NT] = {0};
    p0[3] = p0[4] = p0[5] = 0.25f;
    struct nf_cache_freq q;
    assert_int_equal(nf_cache_freq_init(&q, p0, NT), 0);
    for (uint32_t i = 0; i < NS; i++)
        atomic_store(&t.tiles[i].last_use, 9);
    atomic_store(&t.tiles[3].last_use, NF_CACHE_FREQ_NONE);
    for (uint32_t i = 0; i < NS; i++)
        if (i != 3) /* reloaded since its uses, none seen: a rare expert */
            nf_cache_freq_observe(&q, i, 9);
    assert_int_equal(nf_cache_pick_victim(t.tiles, NT, t.slots, 0, NS, 7, 0, UINT64_MAX, &q, NULL),
                     3);
    uint64_t got = 0;
    uint32_t s = 0;
    for (uint32_t i = 0; i < NS - 1; i++) { /* 7, at distance 0, is never a victim */
        s = nf_cache_pick_victim_in(t.tiles, NT, t.slots, 0, NS, 7, 2, 0, i ? got : UINT64_MAX, &q,
                                    &got);
        assert_true(s < NS);
        assert_true(s != 3 || i == NS - 2);
    }
    assert_int_equal(s, 3);
    assert_int_equal(got, 1);
    /* A prefetch (min_dist of its own distance, here 1 and more) never takes it. */
    for (uint64_t below = UINT64_MAX;;) {
        s = nf_cache_pick_victim_in(t.tiles, NT, t.slots, 0, NS, 7, 2, 1, below, &q, &got);
        if (s == NF_NO_SLOT)
            break;
        assert_int_not_equal(s, 3);
        below = got;
    }
    /* Compute in the next layer (from 7, at 8): 3 is passed, unused, and goes first again. */
    assert_int_equal(
        nf_cache_pick_victim_in(t.tiles, NT, t.slots, 0, NS, 8, 7, 0, UINT64_MAX, &q, NULL), 3);
    nf_cache_freq_free(&q);
}

/* A MoE scan with skewed routing: 4 layers of one every-step tile and 8 experts (2 chosen per
 * token, expert e with weight 2^-e), 14 slots for 36 tiles. Loads evict by expected next use
 * or by cyclic distance alone; the frequency rule must miss less (the hot experts stay), and
 * the every-step tiles must not miss more than under the cyclic rule. */
#define ML 4
#define ME 8
#define MT (ML * (ME + 1))
#define MS 14
static void moe_scan(bool use_freq, unsigned *misses, unsigned *dense_misses)
{
    struct nf_tile_entry tiles[MT];
    struct nf_slot_entry slots[MS];
    memset(tiles, 0, sizeof(tiles));
    memset(slots, 0, sizeof(slots));
    for (uint32_t i = 0; i < MT; i++)
        atomic_init(&tiles[i].slot, NF_NO_SLOT);
    for (uint32_t s = 0; s < MS; s++)
        atomic_init(&slots[s].tile, NF_NO_TILE);
    float p0[MT];
    for (uint32_t i = 0; i < MT; i++)
        p0[i] = i % (ME + 1) == 0 ? 0.0f : 2.0f / ME;
    struct nf_cache_freq q;
    assert_int_equal(nf_cache_freq_init(&q, p0, MT), 0);
    uint64_t rng = 12345;
    *misses = *dense_misses = 0;
    for (uint32_t step = 1; step <= 400; step++) {
        for (uint32_t l = 0; l < ML; l++) {
            uint32_t use[3] = {l * (ME + 1), 0, 0};
            for (int k = 1; k <= 2; k++) {
                uint32_t e;
                do { /* weight 2^-e: e with probability ~ 2^-(e+1) */
                    rng = rng * 6364136223846793005ull + 1442695040888963407ull;
                    uint32_t r = (uint32_t)(rng >> 32) | 0x80000000u;
                    e = (uint32_t)__builtin_ctz(r) % ME;
                } while (k == 2 && l * (ME + 1) + 1 + e == use[1]);
                use[k] = l * (ME + 1) + 1 + e;
            }
            for (int k = 0; k < 3; k++) {
                uint32_t id = use[k];
                if (atomic_load(&tiles[id].state) != NF_TILE_READY) {
                    if (step > 20) { /* after warm-up */
                        (*misses)++;
                        *dense_misses += k == 0;
                    }
                    uint32_t s = NF_NO_SLOT;
                    for (uint32_t j = 0; j < MS && s == NF_NO_SLOT; j++)
                        if (atomic_load(&slots[j].tile) == NF_NO_TILE)
                            s = j;
                    if (s == NF_NO_SLOT)
                        s = nf_cache_pick_victim(tiles, MT, slots, 0, MS, id, 0, UINT64_MAX,
                                                 use_freq ? &q : NULL, NULL);
                    assert_int_not_equal(s, NF_NO_SLOT);
                    uint32_t old = atomic_load(&slots[s].tile);
                    if (old != NF_NO_TILE)
                        atomic_store(&tiles[old].state, NF_TILE_EMPTY);
                    atomic_store(&slots[s].tile, id);
                    atomic_store(&tiles[id].state, NF_TILE_READY);
                }
                atomic_store(&tiles[id].last_use, step);
                nf_cache_freq_observe(&q, id, step);
            }
        }
    }
    nf_cache_freq_free(&q);
}

static void test_moe_scan_skewed(void **state)
{
    (void)state;
    unsigned cyc, cyc_dense, fr, fr_dense;
    moe_scan(false, &cyc, &cyc_dense);
    moe_scan(true, &fr, &fr_dense);
    print_message("skewed MoE scan, 380 steps: misses cyclic %u (every-step tiles %u), "
                  "frequency %u (%u)\n",
                  cyc, cyc_dense, fr, fr_dense);
    assert_true(fr * 10 < cyc * 8); /* at least 20% fewer misses */
    assert_true(fr_dense <= cyc_dense);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_distance),
        cmocka_unit_test(test_cyclic_evicts_most_recent),
        cmocka_unit_test(test_pinned_resident_loading_never),
        cmocka_unit_test(test_prefetch_does_not_evict_sooner_tiles),
        cmocka_unit_test(test_cyclic_scan_beats_lru),
        cmocka_unit_test(test_resident_set),
        cmocka_unit_test(test_victim_within_class),
        cmocka_unit_test(test_cyclic_scan_per_class),
        cmocka_unit_test(test_resident_per_class),
        cmocka_unit_test(test_limits),
        cmocka_unit_test(test_resident_spread),
        cmocka_unit_test(test_late_prefetch),
        cmocka_unit_test(test_freq_estimate),
        cmocka_unit_test(test_victim_rare_expert_first),
        cmocka_unit_test(test_victim_prefetched_expert_kept),
        cmocka_unit_test(test_victim_unreached_in_layer_kept),
        cmocka_unit_test(test_moe_scan_skewed),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
