/* sparse.h - sparse FFN: compute only the neuron groups a mask selects, and the low-rank
 * predictor driver that picks the groups from a layer's FFN input.
 *
 * A group is the .nft bundle group of the layer (G neurons: the block size of ffn_down's type,
 * so a group's down columns are whole quant blocks). For dense layers, the predictor of a .nft
 * (PRED_LOWRANK: ffn_gate ~= A B) scores neurons with A (B xn), groups are scored by the sum of
 * |scores| (nf_group_scores) and the top (1 - sparsity) fraction of groups is kept. MoE layers
 * run their usual expert path. */
#ifndef NF_SPARSE_H
#define NF_SPARSE_H

#include <stdint.h>

#include "model.h"
#include "nft.h"
#include "sparse_pick.h"

/* FFN of one token on c->xn (already normed) that computes gate, up and down only for the
 * groups with mask[g] != 0 (mask has n_ff / group entries), and adds the result to c->x.
 * On return c->hb holds silu(gate) * up for selected neurons and 0 elsewhere. With every group
 * selected the result equals nf_ffn_forward up to float rounding of the down projection (gate
 * and up are bit-identical). */
void nf_ffn_sparse_xn(struct nf_ctx *c, const struct nf_ffn_weights *w, const uint8_t *mask,
                      int group);

/* Called by nf_sparse_eval after each dense layer's FFN: xn (n_embd) its input, h (n_ff) the
 * activations silu(gate) * up (0 for unselected neurons), mask (n_groups) the selection. */
typedef void (*nf_sparse_observe_fn)(void *ud, int il, const float *xn, const float *h,
                                     const uint8_t *mask);

/* Predictors and scratch for sparse evaluation of a model loaded from a .nft. */
struct nf_sparse {
    const struct nf_model *m;
    int n_layer, n_ff, n_embd;
    int *group; /* (n_layer) neurons per group; 0 for MoE layers */
    int rank;   /* predictor rank */
    enum nf_type pred_type;
    void **pred;    /* (n_layer) A (n_ff, rank) then B (rank, n_embd); NULL for MoE layers */
    float sparsity; /* fraction of groups skipped, in [0, 1); 0 computes every neuron */
    nf_sparse_observe_fn observe;
    void *observe_ud;
    /* Scratch. */
    float *scores;  /* (n_ff) predicted gate pre-activations */
    float *gscores; /* (n_ff) group scores (n_groups used) */
    float *tmp;     /* (rank) */
    int *idx;       /* (n_ff) */
    uint8_t *mask;  /* (n_ff) */
};

/* Reads the predictors of f (each tile checksummed) for model m, which must have been loaded
 * from the same file. Returns 0, or a negative code with err naming the file and problem
 * (NF_ENOTENSOR when a dense layer has no predictor). */
int nf_sparse_create(struct nf_sparse **out, const struct nf_model *m, const struct nf_nft *f,
                     char *err, size_t errlen);
void nf_sparse_free(struct nf_sparse *s);

/* Predicted group scores of dense layer il for input xn: s->gscores (n_ff / group[il]). */
void nf_sparse_predict(struct nf_sparse *s, int il, const float *xn);

/* mask (n) = 1 for the k highest scores (ties to the lower index), else 0; idx is n ints of
 * scratch. */
void nf_topk_mask(uint8_t *mask, const float *score, int n, int k, int *idx);

/* Evaluates one token at position c->n_past with the sparse FFN (dense layers: the predictor's
 * top (1 - s->sparsity) groups, all groups when sparsity is 0) and leaves its logits in
 * c->logits. Returns 0, NF_ECTXFULL or NF_EUSAGE (bad token). */
int nf_sparse_eval(struct nf_sparse *s, struct nf_ctx *c, int32_t token);

#endif
