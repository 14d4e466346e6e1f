/* cache.h - the fetcher's cache policy: the resident set and the choice of eviction victims.
 *
 * The compute daemon scans the model layer by layer, token after token: a cyclic scan over the
 * tiles in .nft id order (ids follow use order: embedding, then per layer norms, attention,
 * predictor and FFN tiles, then output norm and output). For a cyclic scan plain LRU evicts
 * exactly the tile needed next; the optimal (Belady) choice is the tile whose next use is
 * farthest away, which for a cyclic scan is the most recently used one. So:
 *  - distance(id) = (id - cur + n_tiles) mod n_tiles, where cur is the tile compute works on;
 *    the fetcher (fetch.c) keeps cur from the latest of three signals: the tile of the last
 *    demand request (compute is blocked right there), the layer after the newest activation
 *    compute published (once per layer), and just after the newest (last_use step, id) among
 *    the tiles compute pinned since they were loaded (tile-grained, needed when prefetching
 *    keeps up and there are no demands); the victim is the READY, unpinned, non-resident tile of
 * largest distance;
 *  - a prefetch may only evict a tile whose next use is farther than its own (otherwise a
 *    far-ahead prefetch would throw out what compute needs sooner); a demand may evict any.
 *
 * The resident set (chosen at startup, at most half the pool's slots) holds the tiles every
 * token needs that are small or always used: output norm, rope frequencies, every layer's
 * norms and MoE routers, then the attention tiles (Q, K, V, O) of layers 0, 1, ... as whole
 * layers while they fit. Resident tiles are loaded on first use (demand or prefetch), not at
 * startup, and their slot is then flagged NF_SLOT_RESIDENT and never evicted: startup stays
 * fast and a resident tile the model never uses costs nothing. The set never takes more slots
 * than leave the plan's minimum working set (min_slots) for everything else; hot FFN groups
 * are not made resident (which groups are hot depends on the prompt).
 *
 * Everything here is a pure function of the tables it is given, so it is unit-tested on
 * synthetic tables (tests/test_fetch_cache.c). */
#ifndef NF_FETCH_CACHE_H
#define NF_FETCH_CACHE_H

#include <stdbool.h>
#include <stdint.h>

#include "stack.h"

struct nf_nft;

struct nf_cache {
    uint32_t n_tiles, n_slots;
    uint8_t *resident;       /* (n_tiles) 1 when the tile belongs to the resident set */
    uint32_t n_resident;     /* tiles in the set (each takes one slot once loaded) */
    uint64_t resident_bytes; /* padded bytes of the set */
};

/* What a resident-set choice needs to know about one tile. */
struct nf_cache_tile_info {
    uint32_t layer; /* NF_NFT_NO_LAYER for layer-less kinds */
    uint16_t kind;  /* enum nf_tile_kind */
    uint64_t bytes; /* padded size */
};

/* Chooses the resident set for n_tiles tiles described by info into c, using at most
 * max_slots slots (the caller passes half the pool). Returns 0 or -ENOMEM. */
int nf_cache_init(struct nf_cache *c, const struct nf_cache_tile_info *info, uint32_t n_tiles,
                  uint32_t n_layer, uint32_t n_slots, uint32_t max_slots);
/* The same from an open .nft (the fetcher passes max_slots = n_slots / 2, less if the rest would
 * fall below the plan's minimum working set). */
int nf_cache_init_nft(struct nf_cache *c, const struct nf_nft *f, uint32_t n_slots,
                      uint32_t max_slots);
void nf_cache_free(struct nf_cache *c);

static inline bool nf_cache_is_resident(const struct nf_cache *c, uint32_t id)
{
    return id < c->n_tiles && c->resident[id];
}

/* Steps from cur forward to id in the cyclic use order (0 when id == cur). */
static inline uint32_t nf_cache_distance(uint32_t id, uint32_t cur, uint32_t n_tiles)
{
    return id >= cur ? id - cur : n_tiles - cur + id;
}

/* Picks the eviction victim among the n_slots slots: the slot whose tile is READY, unpinned,
 * not flagged NF_SLOT_RESIDENT, and has the largest distance from cur that is both > min_dist
 * and < below (pass UINT32_MAX for no upper bound; after a failed nf_slot_try_evict, call again
 * with below set to the failed tile's distance to get the next candidate). Returns the slot, or
 * NF_NO_SLOT when none qualifies. Reads the tables with relaxed atomics (a racing pin is caught
 * by nf_slot_try_evict). */
uint32_t nf_cache_pick_victim(const struct nf_tile_entry *tiles, uint32_t n_tiles,
                              const struct nf_slot_entry *slots, uint32_t n_slots, uint32_t cur,
                              uint32_t min_dist, uint32_t below);

#endif
