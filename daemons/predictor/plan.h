/* plan.h - the predictor's planning: which tiles a token step uses, in use order, and forecasts.
 *
 * Everything here works on an open .nft and private memory only (no shared region), so it can
 * be unit-tested alone. Tile ids are .nft tile ids (positions in the index).
 *
 * Use order of one token step (what compute touches, first to last):
 *   1. the EMBD tile holding the token's row, then ROPE_FREQS (when the model has it);
 *   2. per layer L in order: ATTN_NORM, ATTN_Q tiles, ATTN_K tiles, ATTN_V tiles, ATTN_O tiles,
 *      FFN_NORM, then
 *        dense: the FFN tiles holding the selected groups (all groups in exact mode), in neuron
 *               order, each tile once;
 *        MoE:   ROUTER, then every EXPERT tile of each selected expert, in expert order;
 *   3. OUTPUT_NORM, then the OUTPUT tiles (every EMBD tile when the output is tied), in row order.
 * A "unit" of a layer is an FFN group (dense: `group` neurons, n_ff / group units) or an expert
 * (MoE: n_expert units). Selections are bitmaps of units, uint64_t words, bit u of word u / 64. */
#ifndef NF_PRED_PLAN_H
#define NF_PRED_PLAN_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "nft.h"

/* Per-layer unit -> tile mapping. */
struct nf_plan_layer {
    uint32_t n_units; /* FFN groups (dense) or experts (MoE) */
    uint32_t group;   /* neurons per group (dense); 0 for MoE */
    /* Dense: unit_tile[g] is the id of the FFN tile holding group g (n_units entries).
     * MoE: expert e's tiles are the ids unit_tile[e] .. unit_tile[e + 1] - 1 (n_units + 1). */
    uint32_t *unit_tile;
    uint32_t
        n_fixed; /* tiles of the layer used whatever the selection (norms, attention, router) */
};

struct nf_plan {
    const struct nf_nft *f; /* not owned */
    uint32_t n_layer, n_embd;
    bool moe;
    uint32_t n_expert, n_expert_used;
    uint32_t max_units;           /* largest n_units of any layer */
    uint32_t words;               /* uint64_t words of a selection bitmap: ceil(max_units / 64) */
    uint32_t max_step;            /* capacity a whole step's list needs (all units selected) */
    struct nf_plan_layer *layers; /* (n_layer) */
};

/* Builds the unit -> tile maps of f and checks that every tile kind the use order needs is
 * present and consistent (groups of one size per layer, experts with equal tile counts). Returns
 * 0 or a negative code (NF_ECORRUPT, -ENOMEM) with err naming the file and the problem. */
int nf_plan_init(struct nf_plan *p, const struct nf_nft *f, char *err, size_t errlen);
void nf_plan_free(struct nf_plan *p);

/* Each of the following appends tile ids in use order to out (cap entries) and returns the
 * number appended, or -ENOBUFS when cap is too small (out then holds a prefix). */

/* Step start: the EMBD tile of token (none when token is out of range), then ROPE_FREQS. */
int nf_plan_head(const struct nf_plan *p, uint32_t token, uint32_t *out, size_t cap);
/* Layer `layer` with units sel (NULL: every unit). */
int nf_plan_layer(const struct nf_plan *p, uint32_t layer, const uint64_t *sel, uint32_t *out,
                  size_t cap);
/* Dense layer `layer`: the FFN tiles that hold a unit of old and no unit of sel (NULL: every
 * unit), in use order: what a plan that changed from old to sel no longer wants. NF_EUSAGE for
 * a MoE layer or a layer out of range. */
int nf_plan_layer_dropped(const struct nf_plan *p, uint32_t layer, const uint64_t *old,
                          const uint64_t *sel, uint32_t *out, size_t cap);
/* MoE layer `layer` with the n experts of units in that order (e.g. a forecast's, best first, so
 * the fetcher reads first what compute most likely uses first): FFN-side tiles as nf_plan_layer
 * lists them, then each listed expert's tiles. NF_EUSAGE for a dense layer or an expert out of
 * range. */
int nf_plan_layer_experts(const struct nf_plan *p, uint32_t layer, const uint32_t *units,
                          uint32_t n, uint32_t *out, size_t cap);
/* Step end: OUTPUT_NORM then the output matrix's tiles. */
int nf_plan_tail(const struct nf_plan *p, uint32_t *out, size_t cap);
/* A whole step: head, every layer (sels[L], or every unit when sels or sels[L] is NULL), tail. */
int nf_plan_step(const struct nf_plan *p, uint32_t token, const uint64_t *const *sels,
                 uint32_t *out, size_t cap);

/* Bitmap helpers over plan-sized selections. */
static inline bool nf_sel_test(const uint64_t *sel, uint32_t u)
{
    return (sel[u / 64] >> (u % 64)) & 1u;
}
static inline void nf_sel_set(uint64_t *sel, uint32_t u)
{
    sel[u / 64] |= 1ull << (u % 64);
}
/* Sets bits [0, n) of sel and clears the rest of `words` words. */
void nf_sel_all(uint64_t *sel, uint32_t n, uint32_t words);
uint32_t nf_sel_count(const uint64_t *sel, uint32_t words);

/* --- Forecasts ------------------------------------------------------------------------------ */

/* One layer's predictor data in private memory. */
struct nf_fc_layer {
    void *pred;        /* the PRED_LOWRANK / PRED_ROUTER tile's bytes (4096-aligned), or NULL */
    float *norm;       /* (n_embd) the layer's ffn_norm, or NULL */
    enum nf_type type; /* element type of pred */
    uint32_t rank;     /* low-rank predictors */
    uint32_t rows;     /* n_ff (low-rank) or n_expert (router) */
    float *bias;       /* (n_expert) gpt-oss's router bias (ROUTER_BIAS), or NULL */
};

struct nf_forecaster {
    const struct nf_plan *p;    /* not owned */
    struct nf_fc_layer *layers; /* (n_layer) */
    uint32_t n_loaded;          /* layers whose predictor and norm fit the memory cap */
    uint64_t mem_bytes;         /* private bytes held (predictors, norms, scratch) */
    float rms_eps;
    /* Scratch (allocated once; forecasting allocates nothing). */
    float *xn;       /* (n_embd) normed input */
    float *scores;   /* (max(n_ff, n_expert)) neuron scores or router logits */
    float *gscores;  /* (max_units) unit scores */
    float *tmp;      /* (max(rank, n_embd)) */
    uint32_t *idx;   /* (max_units) */
    uint32_t *bound; /* (max_units + 1) first group of each FFN tile of a dense layer */
    uint32_t *order; /* (2 max_units) nf_sparse_pick scratch */
    float *tscore;   /* (max_units) FFN tile scores */
};

/* Reads the predictor tile and the ffn_norm tile of each layer, in layer order, while they fit
 * within mem_cap bytes (scratch counted first); layers that do not fit keep NULL pointers and
 * nf_forecast refuses them (the caller prefetches every unit in order instead). Returns 0, or a
 * negative code (a read or checksum error, NF_ECORRUPT for a missing predictor, -ENOMEM) with
 * err set. */
int nf_forecaster_init(struct nf_forecaster *fc, const struct nf_plan *p, uint64_t mem_cap,
                       char *err, size_t errlen);
void nf_forecaster_free(struct nf_forecaster *fc);

/* The experts a MoE forecast keeps from router logits (n of them): the k best, then each next
 * best whose logit is within gap of the k-th best's (gap <= 0: exactly k), at most k + extra.
 * Writes their indices to idx best first (ties to the lower index; idx has room for n) and
 * returns how many were kept. A wrong extra expert costs a whole expert's read, a missed one a
 * read compute waits for, so the extra ones are only those the forecast cannot tell apart from
 * the k-th. */
uint32_t nf_forecast_moe_pick(const float *logits, uint32_t n, uint32_t k, float gap,
                              uint32_t extra, uint32_t *idx);

/* Forecasts layer `layer`'s units from the residual stream x (n_embd): x is normed with the
 * layer's ffn_norm, then
 *   dense: scored with its low-rank predictor; nf_sparse_keep(n, sparsity) groups plus
 *          ceil(margin * n) more are selected, whole FFN tiles first as compute chooses them
 *          (nf_sparse_pick in sparse_pick.h; every group when sparsity <= 0);
 *   MoE:   routed with its router copy (plus gpt-oss's router bias, L->bias); the experts
 *          nf_forecast_moe_pick keeps with k = n_expert_used, gap = margin (a router-logit
 *          difference) and at most n_expert_used extra; fc->idx[0 .. returned) lists them best
 *          first.
 * Writes the selection to sel (p->words words) and returns the number of units selected, or
 * -ENOENT when the layer's predictor was not loaded (sel untouched), NF_EUSAGE for a bad layer. */
int nf_forecast(struct nf_forecaster *fc, uint32_t layer, const float *x, float sparsity,
                float margin, uint64_t *sel);

#endif
