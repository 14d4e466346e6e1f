/* model_sparse.c - sparse FFN (selected neuron groups only) and the predictor-driven evaluator. */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE /* qsort_r */
#endif
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "nf_err.h"
#include "predictor.h"
#include "sparse.h"

/* Rows [r0, r1) of a 2-D weight tensor, as a tensor of its own (the GGUF layout: a sparse
 * model is never loaded with nf_model_load_opts.repack). */
static struct nf_tensor rows_view(const struct nf_tensor *t, int64_t r0, int64_t r1)
{
    NF_ASSERT(!t->x8);
    struct nf_tensor v = *t;
    v.ne[1] = r1 - r0;
    v.ne[2] = 1;
    v.data = (char *)t->data + (size_t)r0 * t->row_size;
    return v;
}

/* The activation quantizer exact mode uses (model_forward.c): llama.cpp's x86 AVX2 rounding
 * when the CPU has it, else the reference. */
static nf_from_float_fn act_quantizer(enum nf_type t)
{
    nf_from_float_fn f = nf_kernels_isa() >= NF_ISA_AVX2 ? nf_from_float_for(t, NF_ISA_AVX2) : NULL;
    return f ? f : nf_type_traits(t)->from_float;
}

void nf_ffn_sparse_xn(struct nf_ctx *c, const struct nf_ffn_weights *w, const uint8_t *mask,
                      int group)
{
    const int E = c->m->hp.n_embd;
    const int64_t F = w->gate.ne[1];
    const int n_groups = (int)(F / group);
    float *hb = c->hb, *hb2 = c->hb2;
    /* Gate and up: one mat-vec per run of consecutive selected groups (row views of the
     * tensors, so each row's dot is the one exact mode computes). */
    for (int g0 = 0; g0 < n_groups;) {
        if (!mask[g0]) {
            memset(hb + (size_t)g0 * group, 0, sizeof(float) * (size_t)group);
            g0++;
            continue;
        }
        int g1 = g0 + 1;
        while (g1 < n_groups && mask[g1])
            g1++;
        const int64_t r0 = (int64_t)g0 * group, r1 = (int64_t)g1 * group;
        struct nf_tensor gv = rows_view(&w->gate, r0, r1), uv = rows_view(&w->up, r0, r1);
        nf_matmul(c, hb + r0, &gv, c->xn, 1);
        nf_matmul(c, hb2 + r0, &uv, c->xn, 1);
        if (c->m->hp.ffn_gelu) /* gemma3 */
            nf_geglu(hb + r0, hb2 + r0, 1, (int)(r1 - r0));
        else
            for (int64_t i = r0; i < r1; i++) /* SwiGLU as model_forward.c (ggml's SiLU) */
                hb[i] = hb[i] / (1.0f + expf(-hb[i])) * hb2[i];
        g0 = g1;
    }
    /* Down: each output row summed over the selected groups' columns only. The activations are
     * converted to the weight's vec_dot_type once; groups are whole blocks of both. */
    const struct nf_type_traits *tr = nf_type_traits(w->down.type);
    const enum nf_type vt = tr->vec_dot_type;
    const char *xq = (const char *)hb;
    if (vt != NF_TYPE_F32) {
        act_quantizer(vt)(hb, c->xq, F);
        xq = c->xq;
    }
    for (int r = 0; r < E; r++) {
        const char *row = (const char *)w->down.data + (size_t)r * w->down.row_size;
        float sum = 0.0f;
        for (int g0 = 0; g0 < n_groups;) {
            if (!mask[g0]) {
                g0++;
                continue;
            }
            int g1 = g0 + 1;
            while (g1 < n_groups && mask[g1])
                g1++;
            const int64_t n0 = (int64_t)g0 * group, n = (int64_t)(g1 - g0) * group;
            float part;
            tr->vec_dot((int)n, &part, row + nf_row_size(w->down.type, n0),
                        xq + nf_row_size(vt, n0));
            sum += part;
            g0 = g1;
        }
        c->ffo[r] = sum;
    }
    nf_post_norm(c, c->ffo, &w->post_norm, 1); /* gemma3's post_ffw_norm; else nothing */
    for (int i = 0; i < E; i++)
        c->x[i] += c->ffo[i];
}

static int cmp_desc(const void *a, const void *b, void *ud)
{
    const float *s = ud;
    const int i = *(const int *)a, j = *(const int *)b;
    if (s[i] != s[j])
        return s[i] > s[j] ? -1 : 1;
    return (i > j) - (i < j);
}

void nf_topk_mask(uint8_t *mask, const float *score, int n, int k, int *idx)
{
    for (int i = 0; i < n; i++)
        idx[i] = i;
    qsort_r(idx, (size_t)n, sizeof(int), cmp_desc, (void *)score);
    memset(mask, 0, (size_t)n);
    for (int i = 0; i < k && i < n; i++)
        mask[idx[i]] = 1;
}

void nf_sparse_free(struct nf_sparse *s)
{
    if (!s)
        return;
    if (s->pred)
        for (int il = 0; il < s->n_layer; il++)
            free(s->pred[il]);
    free(s->pred);
    free(s->group);
    free(s->scores);
    free(s->gscores);
    free(s->tmp);
    free(s->idx);
    free(s->mask);
    free(s);
}

int nf_sparse_create(struct nf_sparse **out, const struct nf_model *m, const struct nf_nft *f,
                     char *err, size_t errlen)
{
    const struct nf_hparams *hp = &m->hp;
    if (f->hdr.n_layer != (uint32_t)hp->n_layer || f->hdr.n_embd != (uint32_t)hp->n_embd)
        return nf_errf(err, errlen, NF_EUSAGE, "%s: not the file the model was loaded from",
                       f->path);
    struct nf_sparse *s = calloc(1, sizeof(*s));
    if (!s)
        return nf_errf(err, errlen, -ENOMEM, "out of memory");
    s->m = m;
    s->n_layer = hp->n_layer;
    s->n_ff = hp->n_ff;
    s->n_embd = hp->n_embd;
    s->rank = (int)f->hdr.pred_rank;
    s->pred_type = (enum nf_type)f->hdr.pred_type;
    s->group = calloc((size_t)hp->n_layer, sizeof(int));
    s->pred = calloc((size_t)hp->n_layer, sizeof(void *));
    s->scores = calloc((size_t)hp->n_ff, sizeof(float));
    s->gscores = calloc((size_t)hp->n_ff, sizeof(float));
    s->tmp = calloc((size_t)(s->rank > 0 ? s->rank : 1), sizeof(float));
    s->idx = calloc((size_t)hp->n_ff, sizeof(int));
    s->mask = calloc((size_t)hp->n_ff, 1);
    int rc = -ENOMEM;
    if (!s->group || !s->pred || !s->scores || !s->gscores || !s->tmp || !s->idx || !s->mask) {
        nf_errf(err, errlen, rc, "out of memory");
        goto fail;
    }
    for (int il = 0; il < hp->n_layer; il++) {
        if (hp->n_expert)
            continue;
        const struct nf_nft_tile *ft = nf_nft_find(f, (uint32_t)il, NF_TILE_FFN, 0);
        const struct nf_nft_tile *pt = nf_nft_find(f, (uint32_t)il, NF_TILE_PRED_LOWRANK, 0);
        if (!ft || !pt || pt->count != (uint32_t)hp->n_ff || pt->rank != (uint32_t)s->rank ||
            pt->ne0 != (uint32_t)hp->n_embd || ft->group == 0 || hp->n_ff % (int)ft->group) {
            rc = nf_errf(err, errlen, NF_ENOTENSOR,
                         "%s: layer %d has no usable FFN tiles or low-rank predictor", f->path, il);
            goto fail;
        }
        s->group[il] = (int)ft->group;
        if (posix_memalign(&s->pred[il], NF_NFT_ALIGN, nf_nft_tile_span(pt))) {
            s->pred[il] = NULL;
            rc = nf_errf(err, errlen, -ENOMEM, "out of memory for the predictor of layer %d", il);
            goto fail;
        }
        if ((rc = nf_nft_read(f, pt, s->pred[il], nf_nft_tile_span(pt), err, errlen)))
            goto fail;
    }
    *out = s;
    return 0;
fail:
    nf_sparse_free(s);
    return rc;
}

void nf_sparse_predict(struct nf_sparse *s, int il, const float *xn)
{
    const size_t elt = s->pred_type == NF_TYPE_F16 ? 2 : 4;
    const char *A = s->pred[il], *B = A + (size_t)s->n_ff * (size_t)s->rank * elt;
    nf_lowrank_scores(s->scores, A, B, s->pred_type, s->n_ff, s->n_embd, s->rank, xn, s->tmp);
    nf_group_scores(s->gscores, s->scores, s->n_ff, s->group[il]);
}

int nf_sparse_eval(struct nf_sparse *s, struct nf_ctx *c, int32_t token)
{
    const struct nf_model *m = c->m;
    const struct nf_hparams *hp = &m->hp;
    const int E = hp->n_embd;
    if (token < 0 || token >= hp->n_vocab)
        return NF_EUSAGE;
    if (c->n_past >= c->n_ctx)
        return NF_ECTXFULL;
    nf_type_traits(m->tok_embd.type)
        ->to_float((const char *)m->tok_embd.data + (size_t)token * m->tok_embd.row_size, c->x, E);
    if (hp->embd_scale) /* gemma3 */
        for (int i = 0; i < E; i++)
            c->x[i] *= hp->embd_scale;
    const int pos = c->n_past;
    nf_rope_cache(c, pos, 1); /* gemma3's local layers' table too */
    for (int il = 0; il < hp->n_layer; il++) {
        const struct nf_layer *L = &m->layers[il];
        nf_attn_forward(c, &L->attn, il, pos, 1);
        if (hp->n_expert) {
            nf_moe_forward(c, &L->ffn_norm, &L->moe, 1);
            continue;
        }
        nf_rmsnorm(c->xn, c->x, L->ffn_norm.data, E, hp->rms_eps);
        const int G = s->group[il], n_groups = hp->n_ff / G;
        if (s->sparsity > 0.0f) {
            nf_sparse_predict(s, il, c->xn);
            nf_topk_mask(s->mask, s->gscores, n_groups,
                         (int)nf_sparse_keep((uint32_t)n_groups, s->sparsity), s->idx);
        } else {
            memset(s->mask, 1, (size_t)n_groups);
        }
        nf_ffn_sparse_xn(c, &L->ffn, s->mask, G);
        if (s->observe)
            s->observe(s->observe_ud, il, c->xn, c->hb, s->mask);
    }
    c->n_past++;
    nf_rmsnorm(c->xn, c->x, m->output_norm.data, E, hp->rms_eps);
    nf_matmul(c, c->logits, &m->output, c->xn, 1);
    return 0;
}
