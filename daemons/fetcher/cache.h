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
 * The pool has slot size classes (stack.h): a tile lives only in the smallest class that fits
 * it, so all of the above works within a class: a load takes a free slot of its tile's class or
 * evicts a tile of that class (the farthest one there), never a slot of another class.
 *
 * The resident set (chosen at startup per class, at most half of each class's slots; see
 * nf_cache_limits) holds the tiles every token needs that are small or always used: output
 * norm, rope frequencies, every layer's norms and MoE routers (and gpt-oss's attention output
 * bias, sinks and router bias), then the attention tiles (Q, K, V, O), predictor tiles and
 * gpt-oss's expert bias rows of whole layers while they fit in their class: layers 0, 1, ... in
 * exact mode; in sparse mode the same number of layers spread evenly over the model (every
 * third or fourth layer), so that every stretch of layers has attention tiles to read while
 * compute works, not only the last ones (that read fewer bytes per token than layers 0, 1, ...;
 * see docs/measurements.md). Resident tiles are loaded on first use (demand or prefetch), not
 * at startup, and their slot is then flagged NF_SLOT_RESIDENT and never evicted: startup stays
 * fast and a resident tile the model never uses (a predictor tile in exact mode) costs nothing.
 * In each class the set never takes more slots than leave the plan's minimum working set of
 * that class for everything else, so the main class (attention, FFN and output tiles) pins as
 * much attention as its half allows without small or oversize tiles taking its slots; hot FFN
 * groups are not made resident (which groups are hot depends on the prompt).
 *
 * Everything here is a pure function of the tables it is given, so it is unit-tested on
 * synthetic tables (tests/test_fetch_cache.c). */
#ifndef NF_FETCH_CACHE_H
#define NF_FETCH_CACHE_H

#include <stdbool.h>
#include <stdint.h>

#include "stack.h"

struct nf_nft;

#define NF_CACHE_NO_CLASS 0xffu /* a tile no class fits (never loaded) */

struct nf_cache {
    uint32_t n_tiles, n_classes;
    uint8_t *resident;       /* (n_tiles) 1 when the tile belongs to the resident set */
    uint8_t *cls;            /* (n_tiles) the tile's class, or NF_CACHE_NO_CLASS */
    uint32_t n_resident;     /* tiles in the set (each takes one slot once loaded) */
    uint64_t resident_bytes; /* padded bytes of the set */
    uint32_t class_resident[NF_STACK_MAX_CLASSES]; /* tiles of the set in each class */
};

/* What a resident-set choice needs to know about one tile. */
struct nf_cache_tile_info {
    uint32_t layer; /* NF_NFT_NO_LAYER for layer-less kinds */
    uint16_t kind;  /* enum nf_tile_kind */
    uint64_t bytes; /* padded size */
    uint8_t cls;    /* the pool class it goes in (< n_classes), or NF_CACHE_NO_CLASS */
};

/* The most slots of each class the resident set may take, into max_slots[k]: half of the
 * class_slots[k] slots, less where the rest would fall below class_min[k] (the plan's minimum
 * working set). Not more in sparse mode, though there a resident attention slot saves a whole
 * tile per token and a cyclic one less: a larger set saved under 2% of the bytes read, and the
 * fetcher then read at about half its bandwidth; a fetch thread starved of CPU gives the same
 * sign (docs/measurements.md, "Sparse-mode reads"), the larger set was not measured again since
 * it runs at NF_FETCH_NICE. */
void nf_cache_limits(uint32_t n_classes, const uint32_t *class_slots, const uint32_t *class_min,
                     uint32_t *max_slots);
/* Chooses the resident set for n_tiles tiles described by info into c, using at most
 * max_slots[k] slots of class k; the by-layer tiles of each class are taken from layers 0, 1,
 * ... or, when spread, from as many layers spread evenly (layer l when floor((l + 1) r / n)
 * exceeds floor(l r / n) for r layers of n). Returns 0, -EINVAL for n_classes outside
 * 1..NF_STACK_MAX_CLASSES, or -ENOMEM. */
int nf_cache_init(struct nf_cache *c, const struct nf_cache_tile_info *info, uint32_t n_tiles,
                  uint32_t n_layer, uint32_t n_classes, const uint32_t *max_slots, bool spread);
/* The same from an open .nft and the pool's class table (a tile goes in the smallest class
 * that fits its padded size), with the limits of nf_cache_limits (left in max_slots); the
 * fetcher spreads the layers in sparse mode. */
int nf_cache_init_nft(struct nf_cache *c, const struct nf_nft *f,
                      const struct nf_stack_class *classes, uint32_t n_classes,
                      const uint32_t *class_min, bool spread, uint32_t *max_slots);
void nf_cache_free(struct nf_cache *c);

static inline bool nf_cache_is_resident(const struct nf_cache *c, uint32_t id)
{
    return id < c->n_tiles && c->resident[id];
}

/* The class of tile id, NF_CACHE_NO_CLASS when it fits none (or id is out of range). */
static inline uint32_t nf_cache_class(const struct nf_cache *c, uint32_t id)
{
    return id < c->n_tiles ? c->cls[id] : NF_CACHE_NO_CLASS;
}

/* Steps from cur forward to id in the cyclic use order (0 when id == cur). */
static inline uint32_t nf_cache_distance(uint32_t id, uint32_t cur, uint32_t n_tiles)
{
    return id >= cur ? id - cur : n_tiles - cur + id;
}

/* Where tiles sit in a token step: position pt of tile id, pc of the tile cur compute is on, np
 * positions per step (the layers, plus one for the tiles after the last layer; the tiles
 * before layer 0 count as layer 0). nf_cache_behind: compute has passed tile id in this step
 * (an earlier tile of its position, or a tile of one of the np / 2 positions before
 * compute's). */
bool nf_cache_behind(uint32_t id, uint32_t pt, uint32_t cur, uint32_t pc, uint32_t np);
/* A prefetch of tile id requested with priority prio (the layers until the requester expected
 * it to be used) comes too late: compute has passed the tile, and the request was not for the
 * next step (its next use is more than prio + 1 positions away). Read now, such a tile would
 * wait a whole step and be the first evicted, unused (a predictor that falls behind compute
 * asks for such tiles; see docs/measurements.md). */
bool nf_cache_late(uint32_t id, uint32_t pt, uint32_t cur, uint32_t pc, uint32_t np, uint32_t prio);

/* --- Routed experts: decayed use frequency ----------------------------------------------
 *
 * The cyclic rule above is Belady's for tiles every token uses. A routed expert's tile is used
 * only by the tokens that choose it: with probability p per token, its next use is expected
 * (1/p - 1) whole steps after its next pass, so the victim rule compares expected distances,
 * distance + n_tiles * (1/p - 1) (nf_cache_expected). Every tile every token uses (attention,
 * dense FFN, a shared expert, norms and routers) then outranks every routed expert, and among
 * experts the rarely chosen go first: skewed routing turns into hits. p is estimated per tile
 * from the uses compute's pins show (a pin stamps the tile's last_use with compute's step):
 * decayed counts, each step weighing NF_CACHE_FREQ_DECAY of the one after it, blended with the
 * prior K/E (experts used of experts per layer) weighing NF_CACHE_FREQ_PRIOR steps, so an expert
 * not seen yet counts as an average one and recent routing outweighs old. */
#define NF_CACHE_FREQ_DECAY 0.95f /* a use 14 steps ago counts half */
#define NF_CACHE_FREQ_PRIOR 4.0f  /* steps' worth of weight of the prior */
#define NF_CACHE_FREQ_MIN_P (1.0f / 1024)

struct nf_cache_freq {
    uint32_t n_tiles;
    float *p0;           /* (n_tiles) prior use probability per step; 0: not tracked (every step) */
    float *uses;         /* (n_tiles) decayed uses as of step upd[id] */
    uint32_t *upd;       /* (n_tiles) step of the last counted use */
    uint32_t *seen;      /* (n_tiles) the last_use value last counted (NF_CACHE_FREQ_NONE: none) */
    uint32_t first, now; /* first and newest step seen */
    bool started;
};
#define NF_CACHE_FREQ_NONE UINT32_MAX

/* Allocates q for n_tiles tiles with prior p0[id] (copied; 0 for a tile used every step, which
 * is not tracked). Returns 0 or -ENOMEM. */
int nf_cache_freq_init(struct nf_cache_freq *q, const float *p0, uint32_t n_tiles);
/* The same from an open .nft: EXPERT tiles get n_expert_used / n_expert, the rest 0. */
int nf_cache_freq_init_nft(struct nf_cache_freq *q, const struct nf_nft *f);
void nf_cache_freq_free(struct nf_cache_freq *q);
/* Counts a use of tile id at compute step last_use, once per distinct value (NF_CACHE_FREQ_NONE,
 * a tile not pinned since it was loaded, counts nothing); also advances q's newest step. */
void nf_cache_freq_observe(struct nf_cache_freq *q, uint32_t id, uint32_t last_use);
/* Estimated probability that tile id is used in a step, as of q's newest step (1 for a tile
 * not tracked). */
double nf_cache_freq_p(const struct nf_cache_freq *q, uint32_t id);
/* Expected steps-in-tiles until tile id's next use: dist, plus n_tiles * (1/p - 1) for a
 * tracked tile (q may be NULL: dist alone, the cyclic rule). */
uint64_t nf_cache_expected(const struct nf_cache_freq *q, uint32_t id, uint32_t dist,
                           uint32_t n_tiles);

/* Picks the eviction victim among the slots first_slot .. end_slot - 1 (one class: a tile
 * only evicts within its own class): the slot whose tile is READY, unpinned, not flagged
 * NF_SLOT_RESIDENT, and has the largest expected next use (nf_cache_expected with q: NULL for
 * the cyclic distance alone; a tile whose last_use is NF_CACHE_FREQ_NONE, loaded and not pinned
 * since, and less than half a cycle ahead of cur was prefetched for that pass and ranks by its
 * cyclic distance) that is both > min_dist
 * and < below (pass UINT64_MAX for no upper bound; after a failed nf_slot_try_evict, call again
 * with below set to the failed tile's value to get the next candidate, *got when not NULL). Returns
 * the slot, or NF_NO_SLOT when none qualifies. Reads the tables with relaxed atomics (a racing pin
 * is caught by nf_slot_try_evict). */
uint32_t nf_cache_pick_victim(const struct nf_tile_entry *tiles, uint32_t n_tiles,
                              const struct nf_slot_entry *slots, uint32_t first_slot,
                              uint32_t end_slot, uint32_t cur, uint64_t min_dist, uint64_t below,
                              const struct nf_cache_freq *q, uint64_t *got);
/* nf_cache_pick_victim with compute's layer known: cur is in the layer whose first tile is
 * layer_first, and a tile loaded and not pinned since that lies from layer_first up to cur is
 * one of this layer's that compute has not reached yet rather than one it passed unused (a
 * batched MoE step runs the experts of its union that are in memory first, so compute's
 * newest pin can be past experts it asked for and still runs): it ranks as needed next (1), so
 * a prefetch never evicts it and a demand only when no other tile is left. layer_first == cur:
 * nf_cache_pick_victim. */
uint32_t nf_cache_pick_victim_in(const struct nf_tile_entry *tiles, uint32_t n_tiles,
                                 const struct nf_slot_entry *slots, uint32_t first_slot,
                                 uint32_t end_slot, uint32_t cur, uint32_t layer_first,
                                 uint64_t min_dist, uint64_t below, const struct nf_cache_freq *q,
                                 uint64_t *got);

#endif
