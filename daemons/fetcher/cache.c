/* cache.c - the fetcher's resident set and farthest-next-use eviction (see cache.h). */
#include "cache.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "nft.h"

static bool always_hot(const struct nf_cache_tile_info *t)
{
    switch (t->kind) {
    case NF_TILE_OUTPUT_NORM:
    case NF_TILE_ROPE_FREQS:
    case NF_TILE_ATTN_NORM:
    case NF_TILE_FFN_NORM:
    case NF_TILE_ROUTER: return true;
    default: return false;
    }
}

static bool is_attention(const struct nf_cache_tile_info *t)
{
    return t->kind == NF_TILE_ATTN_Q || t->kind == NF_TILE_ATTN_K || t->kind == NF_TILE_ATTN_V ||
           t->kind == NF_TILE_ATTN_O;
}

static void mark(struct nf_cache *c, const struct nf_cache_tile_info *info, uint32_t id)
{
    c->resident[id] = 1;
    c->n_resident++;
    c->resident_bytes += info[id].bytes;
}

int nf_cache_init(struct nf_cache *c, const struct nf_cache_tile_info *info, uint32_t n_tiles,
                  uint32_t n_layer, uint32_t n_slots, uint32_t max_slots)
{
    memset(c, 0, sizeof(*c));
    c->n_tiles = n_tiles;
    c->n_slots = n_slots;
    c->resident = calloc(n_tiles ? n_tiles : 1, 1);
    uint32_t *attn = calloc(n_layer ? n_layer : 1, sizeof(*attn)); /* (n_layer) tiles each */
    if (!c->resident || !attn) {
        free(attn);
        nf_cache_free(c);
        return -ENOMEM;
    }
    if (max_slots > n_slots)
        max_slots = n_slots;
    /* Small tiles every token uses, one by one while they fit. */
    for (uint32_t id = 0; id < n_tiles && c->n_resident < max_slots; id++)
        if (always_hot(&info[id]))
            mark(c, info, id);
    /* Attention tiles by whole layers, first layers first, while they fit. */
    for (uint32_t id = 0; id < n_tiles; id++)
        if (is_attention(&info[id]) && info[id].layer < n_layer)
            attn[info[id].layer]++;
    uint32_t layers = 0, used = c->n_resident;
    while (layers < n_layer && used + attn[layers] <= max_slots)
        used += attn[layers++];
    for (uint32_t id = 0; id < n_tiles; id++)
        if (is_attention(&info[id]) && info[id].layer < layers)
            mark(c, info, id);
    free(attn);
    return 0;
}

int nf_cache_init_nft(struct nf_cache *c, const struct nf_nft *f, uint32_t n_slots,
                      uint32_t max_slots)
{
    uint32_t n = (uint32_t)f->n_tiles;
    struct nf_cache_tile_info *info = calloc(n ? n : 1, sizeof(*info)); /* (n_tiles) */
    if (!info)
        return -ENOMEM;
    for (uint32_t i = 0; i < n; i++) {
        info[i].layer = f->tiles[i].layer;
        info[i].kind = f->tiles[i].kind;
        info[i].bytes = nf_nft_padded(f->tiles[i].size);
    }
    int rc = nf_cache_init(c, info, n, f->hdr.n_layer, n_slots, max_slots);
    free(info);
    return rc;
}

void nf_cache_free(struct nf_cache *c)
{
    free(c->resident);
    c->resident = NULL;
}

uint32_t nf_cache_pick_victim(const struct nf_tile_entry *tiles, uint32_t n_tiles,
                              const struct nf_slot_entry *slots, uint32_t n_slots, uint32_t cur,
                              uint32_t min_dist, uint32_t below)
{
    uint32_t best = NF_NO_SLOT, best_dist = 0;
    for (uint32_t s = 0; s < n_slots; s++) {
        uint32_t id = atomic_load_explicit(&slots[s].tile, memory_order_relaxed);
        if (id >= n_tiles)
            continue;
        if (atomic_load_explicit(&slots[s].flags, memory_order_relaxed) & NF_SLOT_RESIDENT)
            continue;
        const struct nf_tile_entry *t = &tiles[id];
        if (atomic_load_explicit(&t->state, memory_order_relaxed) != NF_TILE_READY ||
            atomic_load_explicit(&t->pins, memory_order_relaxed) != 0)
            continue;
        uint32_t d = nf_cache_distance(id, cur, n_tiles);
        if (d <= min_dist || d >= below)
            continue;
        if (best == NF_NO_SLOT || d > best_dist) {
            best = s;
            best_dist = d;
        }
    }
    return best;
}
