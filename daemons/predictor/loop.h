/* loop.h - the predictor's worker: activations in, prefetch requests out, accuracy counters.
 *
 * One thread runs nf_pred_loop_run. It sleeps on the act_bell until compute publishes the
 * residual stream after some layer L, reads the newest activation slot (seqlock), and queues the
 * tiles of the next k layers in use order on the prefetch ring (prio = distance in layers): the
 * FFN units of each come from the forecast of that layer (sparse dense layers) or are all
 * of them (exact dense layers, or a layer whose predictor did not fit in memory). MoE layers get
 * experts only one layer ahead (the forecast's top n_expert_used, plus those within moe_gap of
 * the last, best first) and their attention tiles only deeper; compute asks for the experts it
 * routes to itself. With several sequences (a MoE stack's row slots, nf_stack_act_row) the
 * experts one layer ahead are the union of every row's top n_expert_used, the experts most rows
 * need first, cut to what the expert class has room for; compute publishes a row as soon as its
 * experts have run, so the union of the rows done is asked for while the layer's last experts
 * still run, and again with every row when the layer is done. Past the last layer it queues the
 * output tiles, then the next step's first layers (dense: units from the set compute used last time
 * at that layer when known; MoE: no expert). When a newer plan for a sparse dense layer (the
 * forecast replacing last time's units, or a closer forecast replacing a farther one) no longer
 * holds some FFN tiles, it withdraws them (nf_tile_prefetch_drop). k adapts to the pool: deeper
 * while the tiles still missing fit in half the free or evictable slots, 1 when the pool is tight.
 * It scores each forecast against the set compute publishes in the used slot of the same (step,
 * layer).
 *
 * KV block tiles (the KV cache on disk, read through the pool): when compute's walk record says
 * the attention walk of layer L ended (stack.h, struct nf_kv_walk), it pushes the durable
 * blocks of layers L+1, L+2, ... (into the next step past the last layer) of the sequences the
 * walk visits, in the walk's order (per layer each sequence's K blocks, then its V blocks),
 * up to the KV class's slots, prio d for layer L+d: layer L+1's blocks are read after the
 * tiles of layer L still queued (its FFN) and before layer L+1's weights, which the next
 * activation asks for. */
#ifndef NF_PRED_LOOP_H
#define NF_PRED_LOOP_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>

#include "plan.h"
#include "stack.h"

/* Default MoE gap: an expert past the top n_expert_used is prefetched for the next layer when its
 * forecast router logit is within this of the last chosen one's. */
#define NF_PRED_MOE_GAP 0.25f

struct nf_pred_loop {
    struct nf_stack *st;        /* attached region (not owned) */
    const struct nf_plan *plan; /* not owned */
    struct nf_forecaster *fc;   /* not owned */
    float sparsity;             /* 0: exact mode */
    float margin;               /* extra share of groups kept in sparse mode */
    float moe_gap;              /* MoE: router-logit gap of extra experts (nf_forecast_moe_pick) */
    uint32_t max_lookahead;     /* deepest lookahead in layers (>= 1) */
    uint32_t bos;               /* token queued before the first step (UINT32_MAX: none) */
    _Atomic bool stop;          /* set by the daemon to end the loop */
    /* Private state (nf_pred_loop_init allocates, nf_pred_loop_free frees). */
    uint64_t *act_seq, *used_seq; /* (n_layer) last seqlock values seen */
    float *x;                     /* (n_embd) activation copy */
    uint64_t *fc_sel;             /* (n_layer, words) newest forecast per layer */
    uint64_t *fc_step;            /* (n_layer) the step it was for */
    bool *fc_live;                /* (n_layer) forecast not yet scored */
    uint64_t *last_used;          /* (n_layer, words) units compute used last time */
    bool *have_used;              /* (n_layer) */
    uint64_t *sel, *used;         /* (words) scratch */
    uint32_t *list;               /* (max_step) tile ids of one layer or step part */
    uint32_t *order;              /* (max_units) a MoE forecast's experts, best first */
    /* Sparse dense layers: the units last planned per layer (a forecast or the fallback); when
     * a newer plan for the layer drops some, their FFN tiles are withdrawn from the fetcher
     * (nf_tile_prefetch_drop) so it reads no tile the latest plan does not hold. */
    uint64_t *asked;  /* (n_layer, words) */
    bool *asked_live; /* (n_layer) asked holds a plan */
    uint32_t *drops;  /* (max_units) tiles to withdraw */
    bool have_plan;   /* the forecast just made was a plan (not "no forecast") */
    /* MoE run with several sequences (cfg->act_rows > 0): compute publishes each row of a
     * batched step (nf_stack_act_row) as soon as it is final; the layer after is forecast from
     * every row of the newest (step, layer) seen, and the union of their experts is asked for
     * (forecast_union in loop.c). */
    uint64_t *row_seq;    /* (n_layer, act_rows) last seqlock values seen */
    float *xr;            /* (act_rows, n_embd) the rows' copies */
    uint32_t n_rows;      /* rows of the activation being handled (0: lp->x alone) */
    bool rows_partial;    /* compute has not finished that layer: some rows are still to come */
    uint32_t *votes;      /* (3 max_units) per expert: rows forecasting it in their top
                           * n_expert_used, as an extra, and its best rank in a row's list */
    bool kv_push;         /* push KV block tiles after each walk (--kv-prefetch) */
    uint64_t kv_walk_seq; /* the walk record's sequence last handled */
    uint64_t mem_at_ns;   /* when mem_predictor was last measured */
};

/* Allocates the loop's private state. Returns 0 or -ENOMEM. */
int nf_pred_loop_init(struct nf_pred_loop *lp, struct nf_stack *st, const struct nf_plan *plan,
                      struct nf_forecaster *fc, float sparsity, float margin,
                      uint32_t max_lookahead, uint32_t bos);
void nf_pred_loop_free(struct nf_pred_loop *lp);

/* Thread body (arg: struct nf_pred_loop *). Returns when lp->stop or the stack's stop word is
 * set. */
void *nf_pred_loop_run(void *arg);

#endif
