/* cache.c - the fetcher's resident set and farthest-next-use eviction (see cache.h). */
#include "cache.h"

#include <errno.h>
#include <math.h>
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
    case NF_TILE_ROUTER:
    case NF_TILE_SHEXP_GATE:
    case NF_TILE_EXP_PROBS_B:
    case NF_TILE_ATTN_O_BIAS: /* gpt-oss: one small row each */
    case NF_TILE_ATTN_SINKS:
    case NF_TILE_ROUTER_BIAS: return true;
    default: return false;
    }
}

/* Tiles made resident by whole layers: attention and the layer's predictor. */
static bool by_layer(const struct nf_cache_tile_info *t)
{
    return t->kind == NF_TILE_ATTN_Q || t->kind == NF_TILE_ATTN_K || t->kind == NF_TILE_ATTN_V ||
           t->kind == NF_TILE_ATTN_O || t->kind == NF_TILE_PRED_LOWRANK ||
           t->kind == NF_TILE_PRED_ROUTER ||
           (t->kind >= NF_TILE_ATTN_Q_A && t->kind <= NF_TILE_ATTN_V_B) || /* deepseek2 */
           t->kind == NF_TILE_EXP_GATE_BIAS || t->kind == NF_TILE_EXP_UP_BIAS ||
           t->kind == NF_TILE_EXP_DOWN_BIAS; /* gpt-oss */
}

static void mark(struct nf_cache *c, const struct nf_cache_tile_info *info, uint32_t id)
{
    c->resident[id] = 1;
    c->n_resident++;
    c->class_resident[info[id].cls]++;
    c->resident_bytes += info[id].bytes;
}

void nf_cache_limits(uint32_t n_classes, const uint32_t *class_slots, const uint32_t *class_min,
                     uint32_t *max_slots)
{
    for (uint32_t k = 0; k < n_classes && k < NF_STACK_MAX_CLASSES; k++) {
        uint32_t n = class_slots[k], min = class_min[k];
        max_slots[k] = n / 2;
        if (n - max_slots[k] < min)
            max_slots[k] = n > min ? n - min : 0;
    }
}

int nf_cache_init(struct nf_cache *c, const struct nf_cache_tile_info *info, uint32_t n_tiles,
                  uint32_t n_layer, uint32_t n_classes, const uint32_t *max_slots, bool spread)
{
    memset(c, 0, sizeof(*c));
    if (n_classes == 0 || n_classes > NF_STACK_MAX_CLASSES)
        return -EINVAL;
    c->n_tiles = n_tiles;
    c->n_classes = n_classes;
    c->resident = calloc(n_tiles ? n_tiles : 1, 1);
    c->cls = malloc(n_tiles ? n_tiles : 1);
    /* (n_layer, n_classes) by-layer tiles of each layer in each class */
    uint32_t *per = calloc((size_t)(n_layer ? n_layer : 1) * n_classes, sizeof(*per));
    if (!c->resident || !c->cls || !per) {
        free(per);
        nf_cache_free(c);
        return -ENOMEM;
    }
    for (uint32_t id = 0; id < n_tiles; id++)
        c->cls[id] = info[id].cls < n_classes ? info[id].cls : NF_CACHE_NO_CLASS;
    /* Small tiles every token uses, one by one while their class has room. */
    for (uint32_t id = 0; id < n_tiles; id++) {
        uint32_t k = c->cls[id];
        if (k != NF_CACHE_NO_CLASS && always_hot(&info[id]) && c->class_resident[k] < max_slots[k])
            mark(c, info, id);
    }
    /* Attention and predictor tiles by whole layers, first layers first, while they fit; each
     * class on its own (a layer's predictor tile may be resident in its class while the
     * layer's attention no longer fits in the main class). */
    for (uint32_t id = 0; id < n_tiles; id++)
        if (by_layer(&info[id]) && info[id].layer < n_layer && c->cls[id] != NF_CACHE_NO_CLASS)
            per[(size_t)info[id].layer * n_classes + c->cls[id]]++;
    uint8_t *pick = calloc((size_t)(n_layer ? n_layer : 1) * n_classes, 1);
    if (!pick) {
        free(per);
        nf_cache_free(c);
        return -ENOMEM;
    }
    for (uint32_t k = 0; k < n_classes; k++) {
        /* r layers fit when taken first layers first; spread, the same number is taken evenly
         * over the layers (fewer if the chosen layers happen to hold more tiles). */
        uint32_t used = c->class_resident[k], r = 0;
        while (r < n_layer && used + per[(size_t)r * n_classes + k] <= max_slots[k])
            used += per[(size_t)r++ * n_classes + k];
        for (; r > 0; r--) {
            uint64_t sum = c->class_resident[k];
            for (uint32_t l = 0; l < n_layer; l++) {
                bool on =
                    spread ? (uint64_t)(l + 1) * r / n_layer != (uint64_t)l * r / n_layer : l < r;
                pick[(size_t)l * n_classes + k] = on;
                sum += on ? per[(size_t)l * n_classes + k] : 0;
            }
            if (sum <= max_slots[k])
                break;
        }
        if (r == 0)
            for (uint32_t l = 0; l < n_layer; l++)
                pick[(size_t)l * n_classes + k] = 0;
    }
    for (uint32_t id = 0; id < n_tiles; id++) {
        uint32_t k = c->cls[id];
        if (k != NF_CACHE_NO_CLASS && by_layer(&info[id]) && info[id].layer < n_layer &&
            pick[(size_t)info[id].layer * n_classes + k])
            mark(c, info, id);
    }
    free(pick);
    free(per);
    return 0;
}

int nf_cache_init_nft(struct nf_cache *c, const struct nf_nft *f,
                      const struct nf_stack_class *classes, uint32_t n_classes,
                      const uint32_t *class_min, bool spread, uint32_t *max_slots)
{
    memset(c, 0, sizeof(*c));
    if (n_classes == 0 || n_classes > NF_STACK_MAX_CLASSES)
        return -EINVAL;
    uint32_t n = (uint32_t)f->n_tiles;
    struct nf_cache_tile_info *info = calloc(n ? n : 1, sizeof(*info)); /* (n_tiles) */
    if (!info)
        return -ENOMEM;
    for (uint32_t i = 0; i < n; i++) {
        info[i].layer = f->tiles[i].layer;
        info[i].kind = f->tiles[i].kind;
        info[i].bytes = nf_nft_tile_span(&f->tiles[i]);
        int k = nf_stack_class_of(classes, n_classes, info[i].bytes);
        info[i].cls = k < 0 ? NF_CACHE_NO_CLASS : (uint8_t)k;
    }
    uint32_t slots[NF_STACK_MAX_CLASSES];
    for (uint32_t k = 0; k < n_classes; k++)
        slots[k] = (uint32_t)classes[k].n_slots;
    nf_cache_limits(n_classes, slots, class_min, max_slots);
    int rc = nf_cache_init(c, info, n, f->hdr.n_layer, n_classes, max_slots, spread);
    free(info);
    return rc;
}

void nf_cache_free(struct nf_cache *c)
{
    free(c->resident);
    free(c->cls);
    c->resident = NULL;
    c->cls = NULL;
}

bool nf_cache_behind(uint32_t id, uint32_t pt, uint32_t cur, uint32_t pc, uint32_t np)
{
    if (id == cur || np == 0)
        return false;
    if (pt == pc)
        return id < cur;
    return (pc + np - pt) % np <= np / 2;
}

bool nf_cache_late(uint32_t id, uint32_t pt, uint32_t cur, uint32_t pc, uint32_t np, uint32_t prio)
{
    if (!nf_cache_behind(id, pt, cur, pc, np))
        return false;
    uint64_t next = np - (pc + np - pt) % np; /* positions until its next use */
    return next > (uint64_t)prio + 1;
}

int nf_cache_freq_init(struct nf_cache_freq *q, const float *p0, uint32_t n_tiles)
{
    memset(q, 0, sizeof(*q));
    size_t n = n_tiles ? n_tiles : 1;
    q->n_tiles = n_tiles;
    q->p0 = malloc(n * sizeof(*q->p0));
    q->uses = calloc(n, sizeof(*q->uses));
    q->upd = calloc(n, sizeof(*q->upd));
    q->seen = malloc(n * sizeof(*q->seen));
    if (!q->p0 || !q->uses || !q->upd || !q->seen) {
        nf_cache_freq_free(q);
        return -ENOMEM;
    }
    for (uint32_t i = 0; i < n_tiles; i++) {
        q->p0[i] = p0[i] > 1.0f ? 1.0f : p0[i] < 0.0f ? 0.0f : p0[i];
        q->seen[i] = NF_CACHE_FREQ_NONE;
    }
    return 0;
}

int nf_cache_freq_init_nft(struct nf_cache_freq *q, const struct nf_nft *f)
{
    uint32_t n = (uint32_t)f->n_tiles;
    float *p0 = calloc(n ? n : 1, sizeof(*p0));
    if (!p0)
        return -ENOMEM;
    float prior = f->hdr.n_expert ? (float)f->hdr.n_expert_used / (float)f->hdr.n_expert : 0.0f;
    for (uint32_t i = 0; i < n; i++)
        p0[i] = f->tiles[i].kind == NF_TILE_EXPERT ? prior : 0.0f;
    int rc = nf_cache_freq_init(q, p0, n);
    free(p0);
    return rc;
}

void nf_cache_freq_free(struct nf_cache_freq *q)
{
    free(q->p0);
    free(q->uses);
    free(q->upd);
    free(q->seen);
    memset(q, 0, sizeof(*q));
}

/* decay^steps */
static float decay_pow(uint32_t steps)
{
    return expf((float)steps * logf(NF_CACHE_FREQ_DECAY));
}

void nf_cache_freq_observe(struct nf_cache_freq *q, uint32_t id, uint32_t last_use)
{
    if (id >= q->n_tiles || last_use == NF_CACHE_FREQ_NONE)
        return;
    if (!q->started) {
        q->first = q->now = last_use;
        q->started = true;
    }
    /* Steps grow; one older than the first seen (a tile pinned before the fetcher looked)
     * counts from the first. */
    uint32_t u = last_use < q->first ? q->first : last_use;
    if (u > q->now)
        q->now = u;
    if (q->p0[id] == 0.0f || q->seen[id] == last_use)
        return;
    q->seen[id] = last_use;
    if (u >= q->upd[id]) {
        q->uses[id] = q->uses[id] * decay_pow(u - q->upd[id]) + 1.0f;
        q->upd[id] = u;
    } else { /* a use older than the newest counted: weighed at its age */
        q->uses[id] += decay_pow(q->upd[id] - u);
    }
}

double nf_cache_freq_p(const struct nf_cache_freq *q, uint32_t id)
{
    if (!q || id >= q->n_tiles || q->p0[id] == 0.0f)
        return 1.0;
    const float d = NF_CACHE_FREQ_DECAY;
    uint32_t span = q->started ? q->now - q->first + 1 : 0; /* steps seen */
    double uses = q->uses[id] * decay_pow(q->now - q->upd[id]);
    double steps = (1.0 - decay_pow(span)) / (1.0 - d); /* the same decayed weights, summed */
    double p = (uses + NF_CACHE_FREQ_PRIOR * q->p0[id]) / (steps + NF_CACHE_FREQ_PRIOR);
    return p < NF_CACHE_FREQ_MIN_P ? NF_CACHE_FREQ_MIN_P : p > 1.0 ? 1.0 : p;
}

uint64_t nf_cache_expected(const struct nf_cache_freq *q, uint32_t id, uint32_t dist,
                           uint32_t n_tiles)
{
    double p = nf_cache_freq_p(q, id);
    if (p >= 1.0)
        return dist;
    return dist + (uint64_t)((double)n_tiles * (1.0 / p - 1.0));
}

uint32_t nf_cache_pick_victim_in(const struct nf_tile_entry *tiles, uint32_t n_tiles,
                                 const struct nf_slot_entry *slots, uint32_t first_slot,
                                 uint32_t end_slot, uint32_t cur, uint32_t layer_first,
                                 uint64_t min_dist, uint64_t below, const struct nf_cache_freq *q,
                                 uint64_t *got)
{
    uint32_t best = NF_NO_SLOT;
    uint64_t best_dist = 0;
    /* Tiles from layer_first up to cur: compute's layer, before its newest pin. */
    const uint32_t behind_in_layer = nf_cache_distance(cur, layer_first, n_tiles);
    for (uint32_t s = first_slot; s < end_slot; s++) {
        uint32_t id = atomic_load_explicit(&slots[s].tile, memory_order_relaxed);
        if (id >= n_tiles)
            continue;
        if (atomic_load_explicit(&slots[s].flags, memory_order_relaxed) & NF_SLOT_RESIDENT)
            continue;
        const struct nf_tile_entry *t = &tiles[id];
        if (atomic_load_explicit(&t->state, memory_order_relaxed) != NF_TILE_READY ||
            atomic_load_explicit(&t->pins, memory_order_relaxed) != 0)
            continue;
        /* A tile loaded and not pinned since, still in the half cycle ahead of compute, was
         * prefetched for that pass: its expected use is its distance, whatever its frequency
         * (ranked by frequency, the next prefetch evicted it before compute got to it). One in
         * compute's layer before its newest pin has not been reached yet: next (1). Once
         * compute has passed it unused (a forecast that missed), it ranks by frequency again. */
        uint32_t dist = nf_cache_distance(id, cur, n_tiles);
        const bool unused =
            atomic_load_explicit(&t->last_use, memory_order_relaxed) == NF_CACHE_FREQ_NONE;
        uint64_t d =
            unused && dist < n_tiles / 2 ? dist
            : unused && id != cur && nf_cache_distance(id, layer_first, n_tiles) < behind_in_layer
                ? 1
                : nf_cache_expected(q, id, dist, n_tiles);
        if (d <= min_dist || d >= below)
            continue;
        if (best == NF_NO_SLOT || d > best_dist) {
            best = s;
            best_dist = d;
        }
    }
    if (got)
        *got = best_dist;
    return best;
}

uint32_t nf_cache_pick_victim(const struct nf_tile_entry *tiles, uint32_t n_tiles,
                              const struct nf_slot_entry *slots, uint32_t first_slot,
                              uint32_t end_slot, uint32_t cur, uint64_t min_dist, uint64_t below,
                              const struct nf_cache_freq *q, uint64_t *got)
{
    return nf_cache_pick_victim_in(tiles, n_tiles, slots, first_slot, end_slot, cur, cur, min_dist,
                                   below, q, got);
}
