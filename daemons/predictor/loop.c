/* loop.c - the predictor's worker thread: forecast the next layers' tiles and prefetch them. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "daemon.h"
#include "loop.h"
#include "nf_proc.h"
#include "nf_time.h"

#define WAKE_MS       200          /* idle wake-up to notice stop and refresh mem_predictor */
#define MEM_EVERY_NS  500000000ull /* mem_predictor refresh period */
#define SEQLOCK_TRIES 64           /* a writer holds a slot for a few microseconds at most */
#define NF_PRED_MIN_DEPTH \
    2 /* layers queued ahead whenever the pool has room (see prefetch_ahead) */

int nf_pred_loop_init(struct nf_pred_loop *lp, struct nf_stack *st, const struct nf_plan *plan,
                      struct nf_forecaster *fc, float sparsity, float margin,
                      uint32_t max_lookahead, uint32_t bos)
{
    memset(lp, 0, sizeof(*lp));
    lp->st = st;
    lp->plan = plan;
    lp->fc = fc;
    lp->sparsity = sparsity;
    lp->margin = margin;
    lp->max_lookahead = max_lookahead ? max_lookahead : 1;
    lp->moe_gap = NF_PRED_MOE_GAP;
    lp->bos = bos;
    atomic_init(&lp->stop, false);
    const size_t L = plan->n_layer, W = plan->words ? plan->words : 1;
    lp->act_seq = calloc(L, sizeof(uint64_t));
    lp->used_seq = calloc(L, sizeof(uint64_t));
    lp->x = calloc(plan->n_embd, sizeof(float));
    lp->fc_sel = calloc(L * W, sizeof(uint64_t));
    lp->fc_step = calloc(L, sizeof(uint64_t));
    lp->fc_live = calloc(L, sizeof(bool));
    lp->last_used = calloc(L * W, sizeof(uint64_t));
    lp->have_used = calloc(L, sizeof(bool));
    lp->sel = calloc(W, sizeof(uint64_t));
    lp->used = calloc(W, sizeof(uint64_t));
    lp->list = calloc(plan->max_step, sizeof(uint32_t));
    lp->order = calloc(plan->max_units ? plan->max_units : 1, sizeof(uint32_t));
    lp->asked = calloc(L * W, sizeof(uint64_t));
    lp->asked_live = calloc(L, sizeof(bool));
    lp->drops = calloc(plan->max_units ? plan->max_units : 1, sizeof(uint32_t));
    const size_t R = st->cfg->act_rows;
    lp->row_seq = calloc(L * (R ? R : 1), sizeof(uint64_t));
    lp->xr = calloc((R ? R : 1) * plan->n_embd, sizeof(float));
    lp->votes = calloc(3 * (size_t)(plan->max_units ? plan->max_units : 1), sizeof(uint32_t));
    if (!lp->row_seq || !lp->xr || !lp->votes || !lp->act_seq || !lp->used_seq || !lp->x ||
        !lp->fc_sel || !lp->fc_step || !lp->fc_live || !lp->last_used || !lp->have_used ||
        !lp->sel || !lp->used || !lp->list || !lp->order || !lp->asked || !lp->asked_live ||
        !lp->drops) {
        nf_pred_loop_free(lp);
        return -ENOMEM;
    }
    return 0;
}

void nf_pred_loop_free(struct nf_pred_loop *lp)
{
    void *bufs[] = {lp->act_seq,   lp->used_seq,   lp->x,     lp->fc_sel,  lp->fc_step, lp->fc_live,
                    lp->last_used, lp->have_used,  lp->sel,   lp->used,    lp->list,    lp->order,
                    lp->asked,     lp->asked_live, lp->drops, lp->row_seq, lp->xr,      lp->votes};
    for (size_t i = 0; i < sizeof(bufs) / sizeof(bufs[0]); i++)
        free(bufs[i]);
    memset(lp, 0, sizeof(*lp));
}

/* Reads an activation slot (nf_act_slot_read): its step and layer, and when x is not NULL its
 * vector. Returns the stable (even, non-zero) sequence number, or 0 when the slot was never
 * written, stayed busy, or holds a vector of another width than n_embd. */
static uint64_t read_act(const struct nf_act_slot *a, uint32_t n_embd, uint64_t *step,
                         uint32_t *layer, float *x)
{
    uint32_t n = 0;
    uint64_t s = nf_act_slot_read(a, SEQLOCK_TRIES, step, layer, &n, x, n_embd);
    return n == n_embd ? s : 0;
}

/* Reads the step and layer of slot a when compute published there since the read *seen
 * remembers (a hint first: the seqlock's number, unchanged means nothing new), and remembers
 * this read in *seen, so a superseded slot is skipped, not handled late. False when nothing is
 * new or the slot stayed busy. */
static bool read_slot_if_new(const struct nf_act_slot *a, uint32_t n_embd, uint64_t *seen,
                             uint64_t *step, uint32_t *layer)
{
    uint64_t s = nf_seqlock_peek(&a->seq);
    if (s == 0 || s == *seen)
        return false;
    s = read_act(a, n_embd, step, layer, NULL);
    if (s == 0)
        return false;
    *seen = s;
    return true;
}

/* Whether (step, layer) comes after (best_step, best_layer) in compute's order. */
static bool later(uint64_t step, uint32_t layer, uint64_t best_step, uint32_t best_layer)
{
    return step > best_step || (step == best_step && layer > best_layer);
}

/* Scores live forecasts against the used sets compute published, and remembers those sets. */
static void score_used(struct nf_pred_loop *lp)
{
    const struct nf_plan *p = lp->plan;
    struct nf_stack_counters *ctr = lp->st->ctr;
    const uint32_t W = p->words;
    for (uint32_t l = 0; l < p->n_layer; l++) {
        struct nf_used_slot *u = nf_stack_used(lp->st, l);
        /* A hint only: is there a used set we have not scored yet? */
        uint64_t s = nf_seqlock_peek(&u->seq);
        if (s == 0 || (s & 1) || s == lp->used_seq[l])
            continue;
        uint64_t step;
        uint32_t n;
        s = nf_used_slot_read(u, SEQLOCK_TRIES, &step, &n, lp->used, W);
        if (s == 0)
            continue;
        lp->used_seq[l] = s;
        if (n != p->layers[l].n_units)
            continue; /* not this model's units: ignore rather than miscount */
        memcpy(lp->last_used + (size_t)l * W, lp->used, sizeof(uint64_t) * W);
        lp->have_used[l] = true;
        if (!lp->fc_live[l] || step < lp->fc_step[l])
            continue;
        lp->fc_live[l] = false;
        if (step != lp->fc_step[l])
            continue; /* the forecast's step is gone without a used set: not scored */
        const uint64_t *f = lp->fc_sel + (size_t)l * W;
        uint64_t tp = 0, fp = 0, fn = 0;
        for (uint32_t w = 0; w < W; w++) {
            tp += (uint64_t)__builtin_popcountll(f[w] & lp->used[w]);
            fp += (uint64_t)__builtin_popcountll(f[w] & ~lp->used[w]);
            fn += (uint64_t)__builtin_popcountll(~f[w] & lp->used[w]);
        }
        atomic_fetch_add_explicit(&ctr->p_true_pos, tp, memory_order_relaxed);
        atomic_fetch_add_explicit(&ctr->p_false_pos, fp, memory_order_relaxed);
        atomic_fetch_add_explicit(&ctr->p_false_neg, fn, memory_order_relaxed);
    }
}

/* Slots free now or holding a tile that compute is done with for this step (READY, unpinned,
 * not resident, of a layer at or before `after`): what the fetcher can fill without evicting
 * anything the coming layers need; among slots first .. first + n - 1 (count_room: every
 * weight slot). */
static uint64_t count_room_in(const struct nf_pred_loop *lp, int32_t after, uint64_t first,
                              uint64_t n)
{
    const struct nf_stack *st = lp->st;
    const struct nf_nft *f = lp->plan->f;
    uint64_t room = 0;
    for (uint64_t i = first; i < first + n; i++) {
        uint32_t t = atomic_load_explicit(&st->slots[i].tile, memory_order_relaxed);
        if (t == NF_NO_TILE) {
            room++;
            continue;
        }
        if (t >= f->n_tiles ||
            (atomic_load_explicit(&st->slots[i].flags, memory_order_relaxed) & NF_SLOT_RESIDENT))
            continue;
        const struct nf_tile_entry *te = &st->tiles[t];
        uint32_t layer = f->tiles[t].layer;
        if (atomic_load_explicit(&te->state, memory_order_relaxed) == NF_TILE_READY &&
            atomic_load_explicit(&te->pins, memory_order_relaxed) == 0 &&
            layer != NF_NFT_NO_LAYER && (int64_t)layer <= after)
            room++;
    }
    return room;
}

static uint64_t count_room(const struct nf_pred_loop *lp, int32_t after)
{
    /* (The KV block tiles' class, past the weights', holds no weight tile.) */
    const struct nf_stack_config *cfg = lp->st->cfg;
    return count_room_in(lp, after, 0,
                         cfg->kv_tiles ? cfg->classes[cfg->n_classes].first_slot : cfg->n_slots);
}

/* count_room within the class that holds layer l's expert tiles (UINT64_MAX when there is no
 * such class). */
static uint64_t expert_room(const struct nf_pred_loop *lp, uint32_t l, int32_t after)
{
    const struct nf_stack_config *cfg = lp->st->cfg;
    const struct nf_nft_tile *t = nf_nft_find(lp->plan->f, l, NF_TILE_EXPERT, 0);
    const int k =
        t ? nf_stack_class_of(cfg->classes, nf_stack_pool_classes(cfg), nf_nft_tile_span(t)) : -1;
    if (k < 0)
        return UINT64_MAX;
    return count_room_in(lp, after, cfg->classes[k].first_slot, cfg->classes[k].n_slots);
}

/* Layer l's expert e: its tiles not in the pool nor on their way (EMPTY). */
static uint32_t expert_missing(const struct nf_pred_loop *lp, uint32_t l, uint32_t e)
{
    const struct nf_plan_layer *pl = &lp->plan->layers[l];
    uint32_t n = 0;
    for (uint32_t id = pl->unit_tile[e]; id < pl->unit_tile[e + 1]; id++)
        n += atomic_load_explicit(&lp->st->tiles[id].state, memory_order_relaxed) == NF_TILE_EMPTY;
    return n;
}

/* The units to prefetch for layer l when there is no forecast: what compute used there last
 * time, else every unit (NULL). */
static const uint64_t *fallback(const struct nf_pred_loop *lp, uint32_t l)
{
    if (!lp->plan->moe && !(lp->sparsity > 0))
        return NULL; /* exact dense layers use every group */
    return lp->have_used[l] ? lp->last_used + (size_t)l * lp->plan->words : NULL;
}

/* A MoE layer whose router copy did not fit this process's memory (deepseek-v3's 58 routers of
 * 256 x 7168 F32 are 426 MB, beyond a 1 GiB stack's share) is routed from the pool: its ROUTER
 * tile (the bytes its PRED_ROUTER copies), FFN_NORM and gpt-oss's ROUTER_BIAS read in place when
 * READY, peeked as pool_forecast peeks. They are tiles compute pins for the layer anyway, listed
 * with the layer's attention a layer or two ahead, so they are usually READY one layer ahead;
 * when the router is not, it is asked for and the layer gets no forecast. Returns what
 * nf_forecast returns, -ENOENT when the layer has no router of the plan's shape (a leading
 * dense layer: nf_forecast's answer), -EAGAIN when the tiles are not READY. */
static int pool_route(struct nf_pred_loop *lp, uint32_t l, uint32_t d, uint64_t *sel)
{
    const struct nf_plan *p = lp->plan;
    const struct nf_nft *f = p->f;
    struct nf_fc_layer *L = &lp->fc->layers[l];
    const struct nf_nft_tile *rt = nf_nft_find(f, l, NF_TILE_ROUTER, 0);
    const struct nf_nft_tile *nt = nf_nft_find(f, l, NF_TILE_FFN_NORM, 0);
    const struct nf_nft_tile *bt = nf_nft_find(f, l, NF_TILE_ROUTER_BIAS, 0);
    const struct nf_type_traits *tr = rt ? nf_type_traits((enum nf_type)rt->type[0]) : NULL;
    if (p->layers[l].n_units == 0 || !rt || !tr || !tr->to_float || rt->count != p->n_expert ||
        rt->ne0 != p->n_embd || nf_nft_count(f, l, NF_TILE_ROUTER) != 1 || !nt ||
        nt->type[0] != NF_TYPE_F32 || nt->size != (uint64_t)p->n_embd * sizeof(float) ||
        (bt && (bt->type[0] != NF_TYPE_F32 || bt->count != 1 || bt->ne0 != p->n_expert)))
        return -ENOENT;
    uint32_t ids[3] = {(uint32_t)nf_nft_tile_id(f, rt), (uint32_t)nf_nft_tile_id(f, nt),
                       bt ? (uint32_t)nf_nft_tile_id(f, bt) : 0};
    const uint8_t *b[3] = {NULL, NULL, NULL};
    uint32_t n = bt ? 3 : 2, got = 0;
    while (got < n && (b[got] = nf_tile_try_peek(lp->st, ids[got])))
        got++;
    int rc = -EAGAIN;
    if (got == n) {
        /* A slot holds a tile's aligned span: its bytes start at the skew (0 in a .nft). */
        L->pred = (void *)(b[0] + nf_nft_tile_skew(rt));
        L->norm = (float *)(void *)(b[1] + nf_nft_tile_skew(nt));
        L->bias = bt ? (float *)(void *)(b[2] + nf_nft_tile_skew(bt)) : NULL;
        L->type = (enum nf_type)rt->type[0];
        L->rank = 0;
        L->rows = p->n_expert;
        rc = nf_forecast(lp->fc, l, lp->x, lp->sparsity, lp->moe_gap, sel);
        L->pred = NULL;
        L->norm = NULL;
        L->bias = NULL;
    } else if (got == 0) {
        nf_tile_prefetch(lp->st, ids[0], d, false);
    }
    while (got > 0)
        nf_tile_unpin(lp->st, ids[--got]);
    return rc;
}

/* A dense layer whose predictor did not fit this process's memory is forecast from the pool:
 * its PRED_LOWRANK and FFN_NORM tiles read in place when READY (peeked: the fetcher tracks
 * compute from its pins, not ours). When the predictor tile is not READY it is asked for, so the
 * next forecast of the layer (one activation later) finds it. Returns what nf_forecast returns,
 * -ENOENT when the layer has its own copy (use nf_forecast), -EAGAIN when the tiles are not
 * ready or the layer is d > 1 layers ahead (no forecast). */
static int pool_forecast(struct nf_pred_loop *lp, uint32_t l, uint32_t d, uint64_t *sel)
{
    const struct nf_plan *p = lp->plan;
    struct nf_fc_layer *L = &lp->fc->layers[l];
    if (L->pred)
        return -ENOENT;
    if (p->moe)
        return pool_route(lp, l, d, sel);
    const struct nf_nft *f = p->f;
    const struct nf_nft_tile *pt = nf_nft_predictor(f, l);
    const struct nf_nft_tile *nt = nf_nft_find(f, l, NF_TILE_FFN_NORM, 0);
    if (!pt || pt->kind != NF_TILE_PRED_LOWRANK || !nt || nt->type[0] != NF_TYPE_F32 ||
        pt->count != f->hdr.n_ff || !nf_type_traits((enum nf_type)pt->type[0]))
        return -ENOENT;
    uint32_t pid = (uint32_t)nf_nft_tile_id(f, pt), nid = (uint32_t)nf_nft_tile_id(f, nt);
    const uint8_t *pb = nf_tile_try_peek(lp->st, pid);
    if (!pb || d > 1) {
        /* Only the next layer is forecast from the pool: a forecast two layers ahead is redone
         * one activation later, and its groups dropped then would still be read. */
        if (pb)
            nf_tile_unpin(lp->st, pid);
        else
            nf_tile_prefetch(lp->st, pid, d, false);
        return -EAGAIN;
    }
    const uint8_t *nb = nf_tile_try_peek(lp->st, nid);
    if (!nb) {
        nf_tile_unpin(lp->st, pid);
        return -ENOENT;
    }
    L->pred = (void *)pb;
    L->norm = (float *)(void *)nb;
    L->type = (enum nf_type)pt->type[0];
    L->rank = pt->rank;
    L->rows = pt->count;
    int rc = nf_forecast(lp->fc, l, lp->x, lp->sparsity, lp->margin, sel);
    L->pred = NULL;
    L->norm = NULL;
    nf_tile_unpin(lp->st, nid);
    nf_tile_unpin(lp->st, pid);
    return rc;
}

/* MoE layer l forecast from the lp->n_rows rows in lp->xr (a batched step: every sequence's
 * residual stream after the layer before, or those compute has finished): each row forecast
 * as one (its top n_expert_used plus the extras within the gap), and the union of their experts
 * left in lp->order (with several rows, of their top n_expert_used only), the experts most rows
 * need first (rows with it in their top n_expert_used, then rows with it as an extra, then its
 * best rank in a row's list, then its index), cut where
 * the tiles still to read would no longer fit the expert class's room (count_room's rule,
 * counting layers up to room_after): a tile read into a pool that has no room for it would
 * evict one needed sooner, or be evicted itself before its use. Experts already in the pool
 * past the cut are kept (nothing to read). Writes the kept experts to sel and returns how many,
 * or what the first row's forecast returned when one failed. */
static int forecast_union(struct nf_pred_loop *lp, uint32_t l, uint32_t d, int32_t room_after,
                          uint64_t *sel)
{
    const struct nf_plan *p = lp->plan;
    const uint32_t X = p->layers[l].n_units, K = p->n_expert_used;
    uint32_t *top = lp->votes, *extra = top + p->max_units, *rank = extra + p->max_units;
    memset(top, 0, sizeof(uint32_t) * X);
    memset(extra, 0, sizeof(uint32_t) * X);
    for (uint32_t e = 0; e < X; e++)
        rank[e] = UINT32_MAX;
    float *x0 = lp->x;
    int rc = 0;
    for (uint32_t r = 0; r < lp->n_rows && rc >= 0; r++) {
        lp->x = lp->xr + (size_t)r * p->n_embd;
        rc = pool_forecast(lp, l, d, lp->sel);
        if (rc == -ENOENT)
            rc = nf_forecast(lp->fc, l, lp->x, lp->sparsity, lp->moe_gap, lp->sel);
        for (int i = 0; i < rc; i++) {
            const uint32_t e = lp->fc->idx[i];
            (i < (int)K ? top : extra)[e]++;
            if ((uint32_t)i < rank[e])
                rank[e] = (uint32_t)i;
        }
    }
    lp->x = x0;
    if (rc < 0)
        return rc;
    /* With several rows an expert only some row's extras hold is left out: at 8 rows the union
     * of the top n_expert_used already covers most of a layer's experts, and the extras of 8
     * rows would add the expert no row chooses (the Mixtral shape's union is 6.95 of 8), a
     * whole expert read for nothing. */
    uint32_t n = 0;
    for (uint32_t e = 0; e < X; e++) {
        if (rank[e] == UINT32_MAX || (lp->n_rows > 1 && top[e] == 0))
            continue;
        uint32_t at = n++;
        for (; at > 0; at--) {
            const uint32_t o = lp->order[at - 1];
            if (top[o] > top[e] ||
                (top[o] == top[e] &&
                 (extra[o] > extra[e] || (extra[o] == extra[e] && rank[o] <= rank[e]))))
                break;
            lp->order[at] = o;
        }
        lp->order[at] = e;
    }
    const uint64_t room = expert_room(lp, l, room_after);
    uint64_t missing = 0;
    uint32_t kept = 0;
    bool cut = false;
    memset(sel, 0, sizeof(uint64_t) * p->words);
    for (uint32_t i = 0; i < n; i++) {
        const uint32_t e = lp->order[i], m = expert_missing(lp, l, e);
        if (cut && m > 0)
            continue;
        if (m > 0 && missing + m > room) {
            cut = true;
            continue;
        }
        missing += m;
        lp->order[kept++] = e;
        nf_sel_set(sel, e);
    }
    return (int)kept;
}

/* The units of layer l (of the activation's step) to prefetch: a fresh forecast from lp->x, or
 * from the rows in lp->xr (forecast_union, counting room up to layer room_after) when there are
 * (recorded for scoring), or the fallback. A MoE forecast also leaves its experts best first in
 * lp->order, their count in *n_order (0 when there is no forecast). */
static const uint64_t *forecast_layer(struct nf_pred_loop *lp, uint64_t step, uint32_t l,
                                      uint32_t d, int32_t room_after, uint32_t *n_order)
{
    const struct nf_plan *p = lp->plan;
    *n_order = 0;
    if (!p->moe && !(lp->sparsity > 0))
        return NULL;
    uint64_t *sel = lp->fc_sel + (size_t)l * p->words;
    uint64_t t0 = nf_now_ns();
    int rc = p->moe && lp->n_rows ? forecast_union(lp, l, d, room_after, sel)
                                  : pool_forecast(lp, l, d, sel);
    /* MoE: the margin is a router-logit gap (nf_forecast_moe_pick). */
    if (rc == -ENOENT)
        rc = nf_forecast(lp->fc, l, lp->x, lp->sparsity, p->moe ? lp->moe_gap : lp->margin, sel);
    if (rc > 0 && p->moe && !lp->n_rows) {
        memcpy(lp->order, lp->fc->idx, sizeof(uint32_t) * (size_t)rc);
        *n_order = (uint32_t)rc;
    } else if (rc > 0 && p->moe) {
        *n_order = (uint32_t)rc;
    }
    if (rc < 0) {
        lp->fc_live[l] = false;
        if (p->moe && rc == -EAGAIN)
            return fallback(lp, l); /* its router is not in the pool yet: last step's experts */
        if (p->moe)
            return NULL; /* no router copy in memory for this layer: every expert, in order */
        /* No predictor in memory for this dense layer: no FFN group is guessed (compute asks
         * for the tiles of the groups it chooses as soon as it has chosen them); prefetching
         * every group would read twice the bytes the layer needs. Not a plan: what an earlier
         * one queued for the layer stays queued. */
        lp->have_plan = false;
        memset(lp->sel, 0, sizeof(uint64_t) * p->words);
        return lp->sel;
    }
    struct nf_stack_counters *ctr = lp->st->ctr;
    atomic_fetch_add_explicit(&ctr->p_predictions, 1, memory_order_relaxed);
    atomic_fetch_add_explicit(&ctr->p_pred_ns, nf_now_ns() - t0, memory_order_relaxed);
    lp->fc_step[l] = step;
    lp->fc_live[l] = true;
    return sel;
}

/* Sparse dense layer l is now planned with units sel (NULL: every unit): withdraws the FFN
 * tiles the previous plan for l held and sel does not (the fetcher drops them unread, or frees
 * their slots when their read already started), and remembers sel as l's plan. */
static void withdraw_dropped(struct nf_pred_loop *lp, uint32_t l, const uint64_t *sel)
{
    const struct nf_plan *p = lp->plan;
    if (p->moe || !(lp->sparsity > 0))
        return; /* exact dense layers always plan every unit; MoE experts are not withdrawn */
    uint64_t *asked = lp->asked + (size_t)l * p->words;
    if (lp->asked_live[l]) {
        int n = nf_plan_layer_dropped(p, l, asked, sel, lp->drops, p->max_units);
        for (int i = 0; i < n; i++)
            if (nf_tile_prefetch_drop(lp->st, lp->drops[i], false) == -ENOBUFS)
                break; /* the fetcher is behind: it drops what compute passes by itself */
    }
    if (sel)
        memcpy(asked, sel, sizeof(uint64_t) * p->words);
    else
        nf_sel_all(asked, p->layers[l].n_units, p->words);
    lp->asked_live[l] = true;
}

/* Fills lp->list with the tiles of the target `d` layers past layer `after` of step `step`
 * (after = -1: before layer 0): a layer of this step, the output (d reaching n_layer), or a
 * layer of the next step. x_ok says whether lp->x holds the activation after `after`. Returns
 * the count, or -1 past the next step's last layer. */
static int build_target(struct nf_pred_loop *lp, uint64_t step, int32_t after, uint32_t d,
                        bool x_ok)
{
    const struct nf_plan *p = lp->plan;
    const int64_t n_layer = p->n_layer;
    int64_t tl = (int64_t)after + d;
    if (tl < n_layer) {
        /* MoE: experts only for the next layer. Forecast two layers ahead, the top two were
         * right 62% of the time against 79% one layer ahead (mixtral-8x7b shape), and a wrong
         * one is a whole expert read for nothing: deeper layers get their attention tiles only
         * (the fetcher reads them while compute works, experts come one layer ahead). */
        if (p->moe && (!x_ok || d > 1))
            return nf_plan_layer_experts(p, (uint32_t)tl, NULL, 0, lp->list, p->max_step);
        uint32_t k = 0;
        lp->have_plan = true;
        /* While compute is still in layer `after` (some of its rows to come), its tiles are
         * not room for the forecast's. */
        const int32_t room_after = lp->rows_partial ? after - 1 : after;
        const uint64_t *sel = x_ok ? forecast_layer(lp, step, (uint32_t)tl, d, room_after, &k)
                                   : fallback(lp, (uint32_t)tl);
        if (k > 0) /* MoE forecast: its experts best first, what compute likely uses first */
            return nf_plan_layer_experts(p, (uint32_t)tl, lp->order, k, lp->list, p->max_step);
        if (lp->have_plan)
            withdraw_dropped(lp, (uint32_t)tl, sel);
        return nf_plan_layer(p, (uint32_t)tl, sel, lp->list, p->max_step);
    }
    if (tl == n_layer)
        return nf_plan_tail(p, lp->list, p->max_step);
    int64_t j = tl - n_layer - 1;
    if (j >= n_layer)
        return -1;
    int n = 0;
    if (j == 0) {
        /* The next token is not known yet: only ROPE_FREQS of the head. */
        n = nf_plan_head(p, UINT32_MAX, lp->list, p->max_step);
        if (n < 0)
            return n;
    }
    /* MoE: the next token's experts are not known until compute routes it (it asks for them at
     * once); the ones this token used are no better than a guess, each a whole expert's read. */
    if (!p->moe)
        withdraw_dropped(lp, (uint32_t)j, fallback(lp, (uint32_t)j));
    int m = p->moe ? nf_plan_layer_experts(p, (uint32_t)j, NULL, 0, lp->list + n,
                                           p->max_step - (size_t)n)
                   : nf_plan_layer(p, (uint32_t)j, fallback(lp, (uint32_t)j), lp->list + n,
                                   p->max_step - (size_t)n);
    return m < 0 ? m : n + m;
}

/* Queues the next layers after layer `after` of `step`, as deep as the pool allows. */
static void prefetch_ahead(struct nf_pred_loop *lp, uint64_t step, int32_t after, bool x_ok)
{
    struct nf_stack *st = lp->st;
    uint64_t room = count_room(lp, after) / 2, missing = 0, reqs = 0;
    uint32_t depth = 0;
    for (uint32_t d = 1; d <= lp->max_lookahead; d++) {
        int n = build_target(lp, step, after, d, x_ok);
        if (n < 0)
            break;
        uint64_t miss = 0;
        for (int i = 0; i < n; i++)
            miss += atomic_load_explicit(&st->tiles[lp->list[i]].state, memory_order_relaxed) ==
                    NF_TILE_EMPTY;
        /* Two layers are always queued while the pool has any room: the layer compute starts
         * next is queued a whole layer early, so the fetcher is never idle at a layer boundary
         * waiting for this activation (the fetcher never lets a prefetch evict a tile needed
         * sooner, so queueing past what fits is safe). Deeper only while it fits. */
        if (d > 1 && (d > NF_PRED_MIN_DEPTH || room == 0) && missing + miss > room)
            break; /* the pool is tight: keep what we have queued */
        missing += miss;
        depth = d;
        bool full = false;
        for (int i = 0; i < n && !full; i++) {
            int rc = nf_tile_prefetch(st, lp->list[i], d, false);
            reqs += rc == 1;
            full = rc == -ENOBUFS;
        }
        if (full)
            break; /* the fetcher is behind: the ring holds enough work */
    }
    nf_notify_wake(&st->sync->fetch_bell); /* one flush per batch */
    atomic_fetch_add_explicit(&st->ctr->p_requests, reqs, memory_order_relaxed);
    atomic_store_explicit(&st->ctr->p_lookahead, depth, memory_order_relaxed);
}

/* The durable blocks of KV (slot, layer): the walk pins blocks [0, n) of K, then of V, and
 * reads the rest (the newest, not written back yet) from compute's memory. */
static uint32_t kv_durable_blocks(const struct nf_stack *st, uint32_t slot, uint32_t il)
{
    const struct nf_stack_config *c = st->cfg;
    uint32_t b = 0;
    while (b < c->kv_n_blk && nf_kv_tile_durable_now(st, nf_stack_kv_tile(c, slot, il, 0, b)) &&
           nf_kv_tile_durable_now(st, nf_stack_kv_tile(c, slot, il, 1, b)))
        b++;
    return b;
}

/* After compute's attention walk of a layer (its walk record changed): pushes the KV block
 * tiles the next walks read, in their order, as long as the KV class has slots for them. A
 * guess that went wrong (the record changed meanwhile, a block rewritten since) costs a read at
 * most: the fetcher reads only durable blocks and compute's pin refuses a stale copy. */
static void prefetch_kv(struct nf_pred_loop *lp)
{
    struct nf_stack *st = lp->st;
    if (!lp->kv_push || !st->kv_walk)
        return;
    const struct nf_stack_config *c = st->cfg;
    uint64_t step;
    uint32_t layer, n, slots[NF_KV_WALK_MAX];
    uint64_t sn = nf_kv_walk_read(st, SEQLOCK_TRIES, &step, &layer, slots, &n);
    if (sn == 0 || sn == lp->kv_walk_seq)
        return;
    lp->kv_walk_seq = sn;
    const uint64_t n_seq = c->n_seq ? c->n_seq : 1, room = c->classes[c->n_classes].n_slots;
    uint64_t held = 0, reqs = 0;
    bool full = false;
    for (uint32_t d = 1; d <= c->n_layer && !full && held < room; d++) {
        const uint32_t il = (layer + d) % c->n_layer;
        for (uint32_t i = 0; i < n && !full && held < room; i++) {
            if (slots[i] >= n_seq)
                continue;
            const uint32_t nb = kv_durable_blocks(st, slots[i], il);
            for (uint32_t k = 0; k < 2 && !full; k++)
                for (uint32_t b = 0; b < nb && !full && held < room; b++) {
                    int rc =
                        nf_tile_prefetch(st, nf_stack_kv_tile(c, slots[i], il, k, b), d, false);
                    reqs += rc == 1;
                    full = rc == -ENOBUFS;
                    held++;
                }
        }
    }
    if (reqs) {
        nf_notify_wake(&st->sync->fetch_bell);
        atomic_fetch_add_explicit(&st->ctr->p_kv_requests, reqs, memory_order_relaxed);
    }
}

/* Finds the newest activation compute published since we last looked, copies it to lp->x and
 * returns true with its step and layer. */
static bool newest_act(struct nf_pred_loop *lp, uint64_t *step, uint32_t *layer)
{
    const struct nf_plan *p = lp->plan;
    bool found = false;
    uint64_t best_step = 0;
    uint32_t best_layer = 0, best_l = 0;
    for (uint32_t l = 0; l < p->n_layer; l++) {
        uint64_t st_;
        uint32_t ly;
        if (!read_slot_if_new(nf_stack_act(lp->st, l), p->n_embd, &lp->act_seq[l], &st_, &ly) ||
            ly >= p->n_layer)
            continue;
        if (!found || later(st_, ly, best_step, best_layer)) {
            found = true;
            best_step = st_;
            best_layer = ly;
            best_l = l;
        }
    }
    if (!found)
        return false;
    /* Copy the winner's vector; if compute rewrote it meanwhile, take the newer content. */
    uint64_t s = read_act(nf_stack_act(lp->st, best_l), p->n_embd, step, layer, lp->x);
    if (s == 0 || *layer >= p->n_layer)
        return false;
    lp->act_seq[best_l] = s;
    return true;
}

/* The row slots (nf_stack_act_row) of layer `layer` holding step `step`, copied to lp->xr in
 * row order. Returns how many. */
static uint32_t gather_rows(struct nf_pred_loop *lp, uint64_t step, uint32_t layer)
{
    const struct nf_plan *p = lp->plan;
    const uint32_t R = lp->st->cfg->act_rows;
    uint32_t n = 0;
    for (uint32_t r = 0; r < R; r++) {
        uint64_t st_;
        uint32_t ly;
        float *x = lp->xr + (size_t)n * p->n_embd;
        uint64_t s = read_act(nf_stack_act_row(lp->st, layer, r), p->n_embd, &st_, &ly, x);
        if (s == 0 || st_ != step || ly != layer)
            continue;
        lp->row_seq[(size_t)layer * R + r] = s;
        n++;
    }
    return n;
}

/* With row slots: whether one changed since we last looked, and which activation to handle.
 * got, *step, *layer: what newest_act found (lp->x). The newest (step, layer) among the
 * changed row slots replaces it when it is newer; then lp->n_rows is the count of that layer's
 * rows of that step (gather_rows; 0: none, lp->x alone) and lp->rows_partial whether compute
 * has not finished the layer yet (its activation slot does not hold that step). Returns
 * whether there is an activation to handle. */
static bool take_rows(struct nf_pred_loop *lp, bool got, uint64_t *step, uint32_t *layer)
{
    const struct nf_plan *p = lp->plan;
    const uint32_t R = lp->st->cfg->act_rows;
    lp->n_rows = 0;
    lp->rows_partial = false;
    if (!R || !p->moe)
        return got;
    bool found = false;
    uint64_t best_step = 0;
    uint32_t best_layer = 0;
    for (uint32_t l = 0; l < p->n_layer; l++)
        for (uint32_t r = 0; r < R; r++) {
            uint64_t st_;
            uint32_t ly;
            if (!read_slot_if_new(nf_stack_act_row(lp->st, l, r), p->n_embd,
                                  &lp->row_seq[(size_t)l * R + r], &st_, &ly) ||
                ly != l)
                continue;
            if (!found || later(st_, ly, best_step, best_layer)) {
                found = true;
                best_step = st_;
                best_layer = ly;
            }
        }
    bool from_rows = false;
    if (found && (!got || later(best_step, best_layer, *step, *layer))) {
        *step = best_step;
        *layer = best_layer;
        from_rows = true;
    } else if (!got) {
        return false;
    }
    lp->n_rows = gather_rows(lp, *step, *layer);
    if (from_rows) {
        uint64_t s_ = 0;
        uint32_t l_ = 0;
        lp->rows_partial = read_act(nf_stack_act(lp->st, *layer), p->n_embd, &s_, &l_, NULL) == 0 ||
                           s_ != *step || l_ != *layer;
        if (lp->n_rows == 0)
            return false; /* rewritten meanwhile by a newer step: the next look finds it */
    }
    return true;
}

void *nf_pred_loop_run(void *arg)
{
    struct nf_pred_loop *lp = arg;
    struct nf_stack *st = lp->st;
    struct nf_notify *bell = &st->sync->act_bell;
    /* Before any activation: the first token's likely embedding tile and the first layers. */
    if (lp->bos != UINT32_MAX) {
        int n = nf_plan_head(lp->plan, lp->bos, lp->list, lp->plan->max_step);
        uint64_t reqs = 0;
        for (int i = 0; i < n; i++)
            reqs += nf_tile_prefetch(st, lp->list[i], 1, false) == 1;
        atomic_fetch_add_explicit(&st->ctr->p_requests, reqs, memory_order_relaxed);
    }
    prefetch_ahead(lp, 0, -1, false);
    nf_log(NF_LOG_INFO, "loop started (lookahead up to %u layers)", lp->max_lookahead);
    uint64_t handled = 0;
    while (!atomic_load(&lp->stop) && !atomic_load(&st->sync->stop)) {
        /* Sample the bell before looking, so a publish after the look still wakes us. */
        uint32_t seen = nf_notify_seq(bell);
        prefetch_kv(lp);
        uint64_t step;
        uint32_t layer;
        bool got = newest_act(lp, &step, &layer);
        got = take_rows(lp, got, &step, &layer);
        if (got) {
            score_used(lp);
            prefetch_ahead(lp, step, (int32_t)layer, true);
            handled++;
        } else {
            score_used(lp);
        }
        uint64_t now = nf_now_ns();
        if (now - lp->mem_at_ns > MEM_EVERY_NS) {
            lp->mem_at_ns = now;
            atomic_store_explicit(&st->ctr->mem_predictor, nf_proc_private_bytes(0),
                                  memory_order_relaxed);
        }
        if (!got)
            nf_notify_wait(bell, seen, WAKE_MS);
    }
    nf_log(NF_LOG_INFO, "loop stopped after %llu activations", (unsigned long long)handled);
    return NULL;
}
