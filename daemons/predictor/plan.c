/* plan.c - tile use order of a token step, and FFN group / expert forecasts from activations. */
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "nf_err.h"
#include "plan.h"
#include "predictor.h"
#include "sparse_pick.h"

/* gpt-oss's MoE tiles used every token whatever the routing: the router's bias and the
 * experts' bias rows (a few rows of them, but the tiles are read whole). */
static const enum nf_tile_kind nf_plan_bias_kinds[] = {NF_TILE_ROUTER_BIAS, NF_TILE_EXP_GATE_BIAS,
                                                       NF_TILE_EXP_UP_BIAS, NF_TILE_EXP_DOWN_BIAS};

static uint32_t tile_id(const struct nf_nft *f, const struct nf_nft_tile *t)
{
    return (uint32_t)nf_nft_tile_id(f, t);
}

void nf_sel_all(uint64_t *sel, uint32_t n, uint32_t words)
{
    for (uint32_t w = 0; w < words; w++) {
        uint32_t lo = w * 64;
        if (n >= lo + 64)
            sel[w] = ~0ull;
        else if (n > lo)
            sel[w] = (1ull << (n - lo)) - 1;
        else
            sel[w] = 0;
    }
}

uint32_t nf_sel_count(const uint64_t *sel, uint32_t words)
{
    uint32_t n = 0;
    for (uint32_t w = 0; w < words; w++)
        n += (uint32_t)__builtin_popcountll(sel[w]);
    return n;
}

/* Dense layer: group g -> the FFN tile holding it. Tiles of a layer are numbered in neuron
 * order and hold whole groups of one size. */
static int map_dense(struct nf_plan_layer *pl, const struct nf_nft *f, uint32_t layer, char *err,
                     size_t errlen)
{
    uint32_t nt = nf_nft_count(f, layer, NF_TILE_FFN);
    const uint32_t n_ff = f->hdr.n_ff;
    if (nt == 0)
        return nf_errf(err, errlen, NF_ECORRUPT, "%s: layer %u has no ffn tiles", f->path, layer);
    if (nf_nft_find(f, layer, NF_TILE_FFN, 0)->type[3] != NF_SLICE_NONE) {
        /* In-place index: row slices of gate, up and down, one unit a tile (no predictor, so
         * every unit is used, in tile order). */
        pl->group = 0;
        pl->n_units = nt;
        pl->unit_tile = malloc(sizeof(uint32_t) * nt);
        if (!pl->unit_tile)
            return -ENOMEM;
        for (uint32_t i = 0; i < nt; i++)
            pl->unit_tile[i] = tile_id(f, nf_nft_find(f, layer, NF_TILE_FFN, i));
        return 0;
    }
    uint32_t G = nf_nft_find(f, layer, NF_TILE_FFN, 0)->group;
    if (G == 0 || n_ff % G)
        return nf_errf(err, errlen, NF_ECORRUPT,
                       "%s: layer %u ffn group %u does not divide n_ff %u", f->path, layer, G,
                       n_ff);
    pl->group = G;
    pl->n_units = n_ff / G;
    pl->unit_tile = malloc(sizeof(uint32_t) * pl->n_units);
    if (!pl->unit_tile)
        return -ENOMEM;
    uint32_t next = 0; /* first neuron not yet covered */
    for (uint32_t i = 0; i < nt; i++) {
        const struct nf_nft_tile *t = nf_nft_find(f, layer, NF_TILE_FFN, i);
        if (t->group != G || t->first != next || t->count % G || t->count == 0 ||
            t->first + t->count > n_ff)
            return nf_errf(err, errlen, NF_ECORRUPT,
                           "%s: layer %u ffn tile #%u covers neurons [%u, +%u) with group %u "
                           "(expected to start at %u, whole groups of %u)",
                           f->path, layer, i, t->first, t->count, t->group, next, G);
        for (uint32_t g = t->first / G; g < (t->first + t->count) / G; g++)
            pl->unit_tile[g] = tile_id(f, t);
        next = t->first + t->count;
    }
    if (next != n_ff)
        return nf_errf(err, errlen, NF_ECORRUPT, "%s: layer %u ffn tiles cover %u of %u neurons",
                       f->path, layer, next, n_ff);
    return 0;
}

/* MoE layer: expert e -> its contiguous run of EXPERT tiles (index is expert-major). */
static int map_moe(struct nf_plan_layer *pl, const struct nf_nft *f, uint32_t layer, char *err,
                   size_t errlen)
{
    const uint32_t ne = f->hdr.n_expert;
    uint32_t nt = nf_nft_count(f, layer, NF_TILE_EXPERT);
    if (nt == 0 && !nf_nft_find(f, layer, NF_TILE_ROUTER, 0) &&
        nf_nft_count(f, layer, NF_TILE_FFN)) {
        /* A leading dense layer of a MoE model (glm4moe, deepseek2): no experts; its FFN tiles are
         * fixed (put_fixed). */
        pl->group = 0;
        pl->n_units = 0;
        pl->unit_tile = calloc(1, sizeof(uint32_t));
        return pl->unit_tile ? 0 : -ENOMEM;
    }
    if (nt == 0 || !nf_nft_find(f, layer, NF_TILE_ROUTER, 0))
        return nf_errf(err, errlen, NF_ECORRUPT, "%s: MoE layer %u lacks expert or router tiles",
                       f->path, layer);
    pl->group = 0;
    pl->n_units = ne;
    pl->unit_tile = malloc(sizeof(uint32_t) * (ne + 1));
    if (!pl->unit_tile)
        return -ENOMEM;
    uint32_t e = 0;
    pl->unit_tile[0] = tile_id(f, nf_nft_find(f, layer, NF_TILE_EXPERT, 0));
    for (uint32_t i = 0; i < nt; i++) {
        const struct nf_nft_tile *t = nf_nft_find(f, layer, NF_TILE_EXPERT, i);
        while (e < ne && t->expert > e)
            pl->unit_tile[++e] = tile_id(f, t);
        if (t->expert != e)
            return nf_errf(err, errlen, NF_ECORRUPT,
                           "%s: layer %u expert tile #%u names expert %u (expected %u: tiles "
                           "are expert-major)",
                           f->path, layer, i, t->expert, e);
    }
    const struct nf_nft_tile *last = nf_nft_find(f, layer, NF_TILE_EXPERT, nt - 1);
    if (e + 1 != ne)
        return nf_errf(err, errlen, NF_ECORRUPT, "%s: layer %u has tiles for %u of %u experts",
                       f->path, layer, e + 1, ne);
    pl->unit_tile[ne] = tile_id(f, last) + 1;
    return 0;
}

/* deepseek2's tiles put_fixed adds beyond the six kinds nf_plan_init requires of it. */
static const enum nf_tile_kind nf_mla_extra[] = {NF_TILE_ATTN_Q,         NF_TILE_ATTN_Q_A,
                                                 NF_TILE_ATTN_Q_A_NORM,  NF_TILE_ATTN_Q_B,
                                                 NF_TILE_ATTN_KV_A_NORM, NF_TILE_EXP_PROBS_B};

static uint32_t nf_plan_count_mla(const struct nf_nft *f, uint32_t il)
{
    uint32_t n = 0;
    for (size_t k = 0; k < sizeof(nf_mla_extra) / sizeof(nf_mla_extra[0]); k++)
        n += nf_nft_count(f, il, nf_mla_extra[k]);
    return n;
}

int nf_plan_init(struct nf_plan *p, const struct nf_nft *f, char *err, size_t errlen)
{
    memset(p, 0, sizeof(*p));
    p->f = f;
    p->n_layer = f->hdr.n_layer;
    p->n_embd = f->hdr.n_embd;
    p->n_expert = f->hdr.n_expert;
    p->n_expert_used = f->hdr.n_expert_used;
    p->moe = p->n_expert > 0;
    if (p->n_layer == 0)
        return nf_errf(err, errlen, NF_ECORRUPT, "%s: n_layer is 0", f->path);
    p->layers = calloc(p->n_layer, sizeof(*p->layers));
    if (!p->layers)
        return -ENOMEM;
    int rc;
    uint64_t total = 0;
    for (uint32_t il = 0; il < p->n_layer; il++) {
        struct nf_plan_layer *pl = &p->layers[il];
        rc = p->moe ? map_moe(pl, f, il, err, errlen) : map_dense(pl, f, il, err, errlen);
        if (rc)
            goto fail;
        /* deepseek2's latent attention has none of ATTN_K and ATTN_V, and ATTN_Q only
         * without a q rank: its own kinds are counted by nf_plan_count_mla. */
        const bool mla = nf_nft_count(f, il, NF_TILE_ATTN_KV_A) > 0;
        const enum nf_tile_kind need[] = {NF_TILE_ATTN_NORM,
                                          mla ? NF_TILE_ATTN_KV_A : NF_TILE_ATTN_Q,
                                          mla ? NF_TILE_ATTN_K_B : NF_TILE_ATTN_K,
                                          mla ? NF_TILE_ATTN_V_B : NF_TILE_ATTN_V,
                                          NF_TILE_ATTN_O,
                                          NF_TILE_FFN_NORM};
        pl->n_fixed = p->moe ? 1 : 0;
        if (p->moe) /* a shared expert (qwen2moe): its gate and FFN tiles, every token */
            pl->n_fixed +=
                nf_nft_count(f, il, NF_TILE_SHEXP_GATE) + nf_nft_count(f, il, NF_TILE_FFN);
        for (size_t k = 0; p->moe && k < sizeof(nf_plan_bias_kinds) / sizeof(nf_plan_bias_kinds[0]);
             k++) /* gpt-oss's router and expert biases */
            pl->n_fixed += nf_nft_count(f, il, nf_plan_bias_kinds[k]);
        for (size_t k = 0; k < sizeof(need) / sizeof(need[0]); k++) {
            uint32_t n = nf_nft_count(f, il, need[k]);
            if (n == 0) {
                rc = nf_errf(err, errlen, NF_ECORRUPT, "%s: layer %u has no %s tile", f->path, il,
                             nf_tile_kind_name(need[k]));
                goto fail;
            }
            pl->n_fixed += n;
        }
        if (mla)
            pl->n_fixed += nf_plan_count_mla(f, il);
        if (pl->n_units > p->max_units)
            p->max_units = pl->n_units;
        total += pl->n_fixed;
        total += p->moe ? pl->unit_tile[pl->n_units] - pl->unit_tile[0]
                        : nf_nft_count(f, il, NF_TILE_FFN);
    }
    total += 2 + nf_nft_count(f, NF_NFT_NO_LAYER, NF_TILE_OUTPUT_NORM) +
             nf_nft_count(f, NF_NFT_NO_LAYER, NF_TILE_OUTPUT) +
             nf_nft_count(f, NF_NFT_NO_LAYER, NF_TILE_EMBD);
    if (nf_nft_count(f, NF_NFT_NO_LAYER, NF_TILE_OUTPUT_NORM) == 0 ||
        nf_nft_count(f, NF_NFT_NO_LAYER, NF_TILE_EMBD) == 0) {
        rc = nf_errf(err, errlen, NF_ECORRUPT, "%s: no output_norm or embedding tiles", f->path);
        goto fail;
    }
    if (total > UINT32_MAX) {
        rc = nf_errf(err, errlen, NF_EOVERFLOW, "%s: %llu tiles per step", f->path,
                     (unsigned long long)total);
        goto fail;
    }
    p->max_step = (uint32_t)total;
    p->words = (p->max_units + 63) / 64;
    return 0;
fail:
    nf_plan_free(p);
    return rc;
}

void nf_plan_free(struct nf_plan *p)
{
    if (p->layers)
        for (uint32_t il = 0; il < p->n_layer; il++)
            free(p->layers[il].unit_tile);
    free(p->layers);
    p->layers = NULL;
}

/* Appends the ids of every tile of (layer, kind) in index order. */
static int put_run(const struct nf_nft *f, uint32_t layer, enum nf_tile_kind kind, uint32_t *out,
                   size_t cap, size_t *n)
{
    uint32_t c = nf_nft_count(f, layer, kind);
    for (uint32_t i = 0; i < c; i++) {
        if (*n >= cap)
            return -ENOBUFS;
        out[(*n)++] = tile_id(f, nf_nft_find(f, layer, kind, i));
    }
    return 0;
}

int nf_plan_head(const struct nf_plan *p, uint32_t token, uint32_t *out, size_t cap)
{
    size_t n = 0;
    const struct nf_nft_tile *t = nf_nft_embd_row(p->f, token, NULL);
    if (t) {
        if (cap < 1)
            return -ENOBUFS;
        out[n++] = tile_id(p->f, t);
    }
    int rc = put_run(p->f, NF_NFT_NO_LAYER, NF_TILE_ROPE_FREQS, out, cap, &n);
    return rc ? rc : (int)n;
}

/* Appends the tiles of layer used whatever its units: norms, attention, and for MoE the shared
 * expert's gate and FFN tiles (qwen2moe; compute runs them first; a glm4moe leading dense
 * layer's FFN tiles) and the router. */
static int put_fixed(const struct nf_plan *p, uint32_t layer, uint32_t *out, size_t cap, size_t *n)
{
    /* In compute's order; the deepseek2 kinds are absent from the other architectures. */
    static const enum nf_tile_kind fixed[] = {
        NF_TILE_ATTN_NORM,      NF_TILE_ATTN_Q,        NF_TILE_ATTN_K,   NF_TILE_ATTN_V,
        NF_TILE_ATTN_Q_A,       NF_TILE_ATTN_Q_A_NORM, NF_TILE_ATTN_Q_B, NF_TILE_ATTN_KV_A,
        NF_TILE_ATTN_KV_A_NORM, NF_TILE_ATTN_K_B,      NF_TILE_ATTN_V_B, NF_TILE_ATTN_O,
        NF_TILE_FFN_NORM,       NF_TILE_EXP_PROBS_B};
    int rc;
    for (size_t k = 0; k < sizeof(fixed) / sizeof(fixed[0]); k++)
        if ((rc = put_run(p->f, layer, fixed[k], out, cap, n)))
            return rc;
    if (p->moe && ((rc = put_run(p->f, layer, NF_TILE_SHEXP_GATE, out, cap, n)) ||
                   (rc = put_run(p->f, layer, NF_TILE_FFN, out, cap, n))))
        return rc;
    if (p->moe && (rc = put_run(p->f, layer, NF_TILE_ROUTER, out, cap, n)))
        return rc;
    for (size_t k = 0; p->moe && k < sizeof(nf_plan_bias_kinds) / sizeof(nf_plan_bias_kinds[0]);
         k++)
        if ((rc = put_run(p->f, layer, nf_plan_bias_kinds[k], out, cap, n)))
            return rc;
    return 0;
}

int nf_plan_layer(const struct nf_plan *p, uint32_t layer, const uint64_t *sel, uint32_t *out,
                  size_t cap)
{
    if (layer >= p->n_layer)
        return NF_EUSAGE;
    const struct nf_plan_layer *pl = &p->layers[layer];
    size_t n = 0;
    int rc = put_fixed(p, layer, out, cap, &n);
    if (rc)
        return rc;
    if (p->moe) {
        for (uint32_t e = 0; e < pl->n_units; e++) {
            if (sel && !nf_sel_test(sel, e))
                continue;
            for (uint32_t id = pl->unit_tile[e]; id < pl->unit_tile[e + 1]; id++) {
                if (n >= cap)
                    return -ENOBUFS;
                out[n++] = id;
            }
        }
    } else {
        uint32_t last = UINT32_MAX;
        for (uint32_t g = 0; g < pl->n_units; g++) {
            if (sel && !nf_sel_test(sel, g))
                continue;
            uint32_t id = pl->unit_tile[g];
            if (id == last)
                continue; /* groups of one tile are consecutive */
            if (n >= cap)
                return -ENOBUFS;
            out[n++] = last = id;
        }
    }
    return (int)n;
}

int nf_plan_layer_dropped(const struct nf_plan *p, uint32_t layer, const uint64_t *old,
                          const uint64_t *sel, uint32_t *out, size_t cap)
{
    if (layer >= p->n_layer || p->moe)
        return NF_EUSAGE;
    const struct nf_plan_layer *pl = &p->layers[layer];
    size_t n = 0;
    /* Groups of one tile are consecutive: decide each tile at its last group. */
    bool was = false, is = false;
    for (uint32_t g = 0; g < pl->n_units; g++) {
        was = was || nf_sel_test(old, g);
        is = is || !sel || nf_sel_test(sel, g);
        uint32_t id = pl->unit_tile[g];
        if (g + 1 < pl->n_units && pl->unit_tile[g + 1] == id)
            continue;
        if (was && !is) {
            if (n >= cap)
                return -ENOBUFS;
            out[n++] = id;
        }
        was = is = false;
    }
    return (int)n;
}

int nf_plan_layer_experts(const struct nf_plan *p, uint32_t layer, const uint32_t *units,
                          uint32_t n, uint32_t *out, size_t cap)
{
    if (layer >= p->n_layer || !p->moe)
        return NF_EUSAGE;
    const struct nf_plan_layer *pl = &p->layers[layer];
    size_t m = 0;
    int rc = put_fixed(p, layer, out, cap, &m);
    if (rc)
        return rc;
    for (uint32_t i = 0; i < n; i++) {
        const uint32_t e = units[i];
        if (e >= pl->n_units)
            return NF_EUSAGE;
        for (uint32_t id = pl->unit_tile[e]; id < pl->unit_tile[e + 1]; id++) {
            if (m >= cap)
                return -ENOBUFS;
            out[m++] = id;
        }
    }
    return (int)m;
}

int nf_plan_tail(const struct nf_plan *p, uint32_t *out, size_t cap)
{
    size_t n = 0;
    int rc = put_run(p->f, NF_NFT_NO_LAYER, NF_TILE_OUTPUT_NORM, out, cap, &n);
    if (!rc)
        rc = put_run(p->f, NF_NFT_NO_LAYER, p->f->hdr.tied_output ? NF_TILE_EMBD : NF_TILE_OUTPUT,
                     out, cap, &n);
    return rc ? rc : (int)n;
}

int nf_plan_step(const struct nf_plan *p, uint32_t token, const uint64_t *const *sels,
                 uint32_t *out, size_t cap)
{
    size_t n = 0;
    int rc = nf_plan_head(p, token, out, cap);
    if (rc < 0)
        return rc;
    n += (size_t)rc;
    for (uint32_t il = 0; il < p->n_layer; il++) {
        rc = nf_plan_layer(p, il, sels ? sels[il] : NULL, out + n, cap - n);
        if (rc < 0)
            return rc;
        n += (size_t)rc;
    }
    rc = nf_plan_tail(p, out + n, cap - n);
    if (rc < 0)
        return rc;
    /* A tied output reads every EMBD tile again; the token's own tile was listed at the head
     * (and is still resident then), so it is listed once. */
    const struct nf_nft_tile *et = nf_nft_embd_row(p->f, token, NULL);
    size_t m = n;
    for (size_t i = n; i < n + (size_t)rc; i++)
        if (!et || out[i] != tile_id(p->f, et))
            out[m++] = out[i];
    return (int)m;
}

/* --- Forecasts ------------------------------------------------------------------------------ */

static void *aligned_alloc_4k(size_t n)
{
    void *p = NULL;
    return posix_memalign(&p, NF_NFT_ALIGN, n ? n : NF_NFT_ALIGN) ? NULL : p;
}

int nf_forecaster_init(struct nf_forecaster *fc, const struct nf_plan *p, uint64_t mem_cap,
                       char *err, size_t errlen)
{
    const struct nf_nft *f = p->f;
    memset(fc, 0, sizeof(*fc));
    fc->p = p;
    fc->rms_eps = 1e-5f;
    float eps;
    if (nf_gguf_get_f32(nf_nft_gguf(f), "llama.attention.layer_norm_rms_epsilon", &eps) == 0 &&
        eps >= 0)
        fc->rms_eps = eps;
    const size_t E = p->n_embd;
    size_t rows = p->moe ? p->n_expert : f->hdr.n_ff;
    size_t wide = E > f->hdr.pred_rank ? E : f->hdr.pred_rank;
    fc->layers = calloc(p->n_layer, sizeof(*fc->layers));
    fc->xn = malloc(sizeof(float) * E);
    fc->scores = malloc(sizeof(float) * (rows ? rows : 1));
    fc->gscores = malloc(sizeof(float) * (p->max_units ? p->max_units : 1));
    fc->tmp = malloc(sizeof(float) * wide);
    const size_t U = p->max_units ? p->max_units : 1;
    fc->idx = malloc(sizeof(uint32_t) * U);
    fc->bound = malloc(sizeof(uint32_t) * (U + 1));
    fc->order = malloc(sizeof(uint32_t) * 2 * U);
    fc->tscore = malloc(sizeof(float) * U);
    if (!fc->layers || !fc->xn || !fc->scores || !fc->gscores || !fc->tmp || !fc->idx ||
        !fc->bound || !fc->order || !fc->tscore) {
        nf_forecaster_free(fc);
        return -ENOMEM;
    }
    fc->mem_bytes = sizeof(*fc->layers) * p->n_layer + sizeof(float) * (E + rows + 2 * U + wide) +
                    sizeof(uint32_t) * (4 * U + 1);
    int rc = 0;
    for (uint32_t il = 0; il < p->n_layer; il++) {
        struct nf_fc_layer *L = &fc->layers[il];
        const struct nf_nft_tile *pt = nf_nft_predictor(f, il);
        const struct nf_nft_tile *nt = nf_nft_find(f, il, NF_TILE_FFN_NORM, 0);
        if (!p->moe && !pt && f->in_place)
            break; /* an in-place index has no dense predictors: every unit, in order */
        if (p->moe && p->layers[il].n_units == 0)
            continue; /* a leading dense layer of a MoE model: nothing to forecast */
        bool want =
            p->moe ? pt && pt->kind == NF_TILE_PRED_ROUTER : pt && pt->kind == NF_TILE_PRED_LOWRANK;
        if (!want || !nt || nt->type[0] != NF_TYPE_F32 || nt->size != E * sizeof(float)) {
            rc = nf_errf(err, errlen, NF_ECORRUPT,
                         "%s: layer %u lacks a %s predictor or an F32 ffn_norm of %zu floats",
                         f->path, il, p->moe ? "router" : "low-rank", E);
            goto fail;
        }
        uint64_t need = nf_nft_tile_span(pt) + nf_nft_tile_span(nt);
        if (fc->mem_bytes + need > mem_cap)
            break; /* this and later layers fall back to every unit */
        L->pred = aligned_alloc_4k(nf_nft_tile_span(pt));
        void *nb = aligned_alloc_4k(nf_nft_tile_span(nt));
        L->norm = nb;
        if (!L->pred || !nb) {
            rc = -ENOMEM;
            goto fail;
        }
        if ((rc = nf_nft_read(f, pt, L->pred, nf_nft_tile_span(pt), err, errlen)) ||
            (rc = nf_nft_read(f, nt, nb, nf_nft_tile_span(nt), err, errlen)))
            goto fail;
        /* gpt-oss: the router's bias joins the logits, as compute adds it before its top k. */
        const struct nf_nft_tile *bt = p->moe ? nf_nft_find(f, il, NF_TILE_ROUTER_BIAS, 0) : NULL;
        if (bt && (bt->type[0] != NF_TYPE_F32 || bt->count != 1 || bt->ne0 != p->n_expert)) {
            rc = nf_errf(err, errlen, NF_ECORRUPT, "%s: layer %u router bias is not %u F32 values",
                         f->path, il, p->n_expert);
            goto fail;
        }
        if (bt) {
            L->bias = aligned_alloc_4k(nf_nft_tile_span(bt));
            if (!L->bias) {
                rc = -ENOMEM;
                goto fail;
            }
            if ((rc = nf_nft_read(f, bt, L->bias, nf_nft_tile_span(bt), err, errlen)))
                goto fail;
            fc->mem_bytes += nf_nft_tile_span(bt);
        }
        L->type = (enum nf_type)pt->type[0];
        L->rank = pt->rank;
        L->rows = p->moe ? p->n_expert : pt->count;
        const struct nf_type_traits *tr = nf_type_traits(L->type);
        if (!tr || !tr->to_float ||
            (p->moe ? pt->count != p->n_expert : pt->count != f->hdr.n_ff)) {
            rc = nf_errf(err, errlen, NF_ECORRUPT,
                         "%s: layer %u predictor has %u rows of type %u (expected %zu rows of a "
                         "type NanoFlow can read)",
                         f->path, il, pt->count, pt->type[0], rows);
            goto fail;
        }
        fc->mem_bytes += need;
        fc->n_loaded++;
    }
    return 0;
fail:
    nf_forecaster_free(fc);
    return rc;
}

void nf_forecaster_free(struct nf_forecaster *fc)
{
    if (fc->layers && fc->p)
        for (uint32_t il = 0; il < fc->p->n_layer; il++) {
            free(fc->layers[il].pred);
            free(fc->layers[il].bias);
            free(fc->layers[il].norm);
        }
    free(fc->layers);
    free(fc->xn);
    free(fc->scores);
    free(fc->gscores);
    free(fc->tmp);
    free(fc->idx);
    free(fc->bound);
    free(fc->order);
    free(fc->tscore);
    memset(fc, 0, sizeof(*fc));
}

/* idx[0..k) = the k highest of score[0..n), ties to the lower index (partial selection sort:
 * n is a few hundred units at most, so O(n k) is a few microseconds). */
static void top_k(uint32_t *idx, const float *score, uint32_t n, uint32_t k)
{
    for (uint32_t i = 0; i < n; i++)
        idx[i] = i;
    for (uint32_t i = 0; i < k && i < n; i++) {
        uint32_t best = i;
        for (uint32_t j = i + 1; j < n; j++) {
            float a = score[idx[j]], b = score[idx[best]];
            if (a > b || (a == b && idx[j] < idx[best]))
                best = j;
        }
        uint32_t t = idx[i];
        idx[i] = idx[best];
        idx[best] = t;
    }
}

uint32_t nf_forecast_moe_pick(const float *logits, uint32_t n, uint32_t k, float gap,
                              uint32_t extra, uint32_t *idx)
{
    if (k > n)
        k = n;
    uint32_t most = k + extra > n ? n : k + extra;
    top_k(idx, logits, n, most);
    if (k == 0)
        return 0;
    uint32_t got = k;
    /* NaN-safe: a NaN logit never counts as close. */
    while (got < most && gap > 0 && logits[idx[got]] >= logits[idx[k - 1]] - gap)
        got++;
    return got;
}

int nf_forecast(struct nf_forecaster *fc, uint32_t layer, const float *x, float sparsity,
                float margin, uint64_t *sel)
{
    const struct nf_plan *p = fc->p;
    if (layer >= p->n_layer)
        return NF_EUSAGE;
    const struct nf_plan_layer *pl = &p->layers[layer];
    const uint32_t n = pl->n_units;
    if (!p->moe && !(sparsity > 0)) {
        nf_sel_all(sel, n, p->words); /* exact mode: every group, no scoring needed */
        return (int)n;
    }
    if (p->moe && n == 0) /* a dense layer of a MoE model: its FFN tiles are fixed ones */
        return 0;
    const struct nf_fc_layer *L = &fc->layers[layer];
    if (!L->pred)
        return -ENOENT;
    const int E = (int)p->n_embd;
    double ss = 0;
    for (int j = 0; j < E; j++)
        ss += (double)x[j] * x[j];
    float inv = (float)(1.0 / sqrt(ss / E + fc->rms_eps));
    for (int j = 0; j < E; j++)
        fc->xn[j] = x[j] * inv * L->norm[j];
    uint32_t k;
    if (p->moe) {
        const struct nf_type_traits *tr = nf_type_traits(L->type);
        size_t rs = nf_row_size(L->type, E);
        for (uint32_t e = 0; e < n; e++) {
            tr->to_float((const uint8_t *)L->pred + rs * e, fc->tmp, E);
            float acc = 0;
            for (int j = 0; j < E; j++)
                acc += fc->tmp[j] * fc->xn[j];
            fc->gscores[e] = L->bias ? acc + L->bias[e] : acc;
        }
        k = nf_forecast_moe_pick(fc->gscores, n, p->n_expert_used, margin, p->n_expert_used,
                                 fc->idx);
    } else {
        size_t esz = nf_type_traits(L->type)->type_size;
        const void *A = L->pred;
        const void *B = (const uint8_t *)L->pred + (size_t)L->rows * L->rank * esz;
        nf_lowrank_scores(fc->scores, A, B, L->type, L->rows, E, (int)L->rank, fc->xn, fc->tmp);
        nf_group_scores(fc->gscores, fc->scores, L->rows, (int)pl->group);
        float m = margin > 0 ? margin : 0;
        k = nf_sparse_keep(n, sparsity) +
            (uint32_t)ceil((double)m * n - 1e-6); /* 1e-6: float 0.1 */
    }
    if (k > n)
        k = n;
    if (!p->moe) {
        /* Groups unit_tile maps to the same tile are consecutive (map_dense). */
        uint32_t nb = 0;
        for (uint32_t g = 0; g < n; g++)
            if (g == 0 || pl->unit_tile[g] != pl->unit_tile[g - 1])
                fc->bound[nb++] = g;
        fc->bound[nb] = n;
        k = nf_sparse_pick(fc->gscores, n, fc->bound, nb, k, fc->tscore, fc->order, fc->idx);
    }
    memset(sel, 0, sizeof(uint64_t) * p->words);
    for (uint32_t i = 0; i < k; i++)
        nf_sel_set(sel, fc->idx[i]);
    return (int)k;
}
