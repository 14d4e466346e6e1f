/* model_batch.c - several sequences over one context: a KV cache slot per sequence and the
 * batched decode step, each row computed exactly as its own solo step would (see model.h). */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "model.h"
#include "nf_err.h"

size_t nf_kv_slot_bytes(const struct nf_ctx *c)
{
    /* deepseek2 caches one latent per position (no v_cache). */
    return nf_ctx_kv_bytes(c) + sizeof(float) * (size_t)c->m->hp.n_vocab;
}

int nf_kv_slots_create(struct nf_kv_slot **out, struct nf_ctx *c, int n)
{
    const struct nf_hparams *hp = &c->m->hp;
    *out = NULL;
    if (n < 1)
        return NF_EUSAGE;
    struct nf_kv_slot *sl = calloc((size_t)n, sizeof(*sl));
    if (!sl)
        return -ENOMEM;
    sl[0] = (struct nf_kv_slot){
        .k_cache = c->k_cache, .v_cache = c->v_cache, .logits = c->logits, .n_past = c->n_past};
    /* Rows of the context's cache types (F16 unless nf_ctx_set_kv_types said otherwise). */
    const size_t rows = (size_t)hp->n_layer * (size_t)c->n_ctx;
    const int64_t kvd = (int64_t)hp->n_head_kv * hp->head_dim;
    for (int i = 1; i < n; i++) {
        sl[i].owned = true;
        sl[i].k_cache = calloc(rows, nf_row_size(c->type_k, kvd));
        sl[i].v_cache = hp->n_lora_kv ? NULL : calloc(rows, nf_row_size(c->type_v, kvd));
        sl[i].logits = calloc((size_t)hp->n_vocab, sizeof(float));
        if (!sl[i].k_cache || (!sl[i].v_cache && !hp->n_lora_kv) || !sl[i].logits) {
            nf_kv_slots_free(sl, i + 1);
            return -ENOMEM;
        }
    }
    *out = sl;
    return 0;
}

void nf_kv_slots_free(struct nf_kv_slot *slots, int n)
{
    if (!slots)
        return;
    for (int i = 0; i < n; i++)
        if (slots[i].owned) {
            free(slots[i].k_cache);
            free(slots[i].v_cache);
            free(slots[i].logits);
        }
    free(slots);
}

void nf_ctx_bind(struct nf_ctx *c, const struct nf_kv_slot *sl)
{
    c->k_cache = sl->k_cache;
    c->v_cache = sl->v_cache;
    c->logits = sl->logits;
    c->n_past = sl->n_past;
}

void nf_ctx_row_view(struct nf_ctx *v, const struct nf_ctx *c, int r, const struct nf_kv_slot *sl)
{
    const struct nf_hparams *hp = &c->m->hp;
    const size_t R = (size_t)r, E = (size_t)hp->n_embd;
    const size_t qd = (size_t)hp->n_head * hp->head_dim, kvd = (size_t)hp->n_head_kv * hp->head_dim;
    /* The strides nf_ctx_create_ub sizes its buffers with. */
    size_t F = (size_t)(hp->n_ff_shexp > hp->n_ff ? hp->n_ff_shexp : hp->n_ff);
    F = (size_t)hp->n_ff_dense > F ? (size_t)hp->n_ff_dense : F;
    const size_t half = (size_t)hp->n_rot / 2;
    *v = *c;
    nf_ctx_bind(v, sl);
    v->x = c->x + R * E;
    v->xn = c->xn + R * E;
    v->q = c->q + R * qd;
    v->k = c->k + R * kvd;
    v->v = c->v + R * kvd;
    v->att = c->att + R * qd;
    v->hb = c->hb + R * F;
    v->hb2 = c->hb2 + R * F;
    v->ffo = c->ffo + R * E;
    v->router = c->router + R * (size_t)(hp->n_expert ? hp->n_expert : 1);
    v->rope_cos = c->rope_cos + R * half;
    v->rope_sin = c->rope_sin + R * half;
    if (c->rope_cos_swa) {
        v->rope_cos_swa = c->rope_cos_swa + R * half;
        v->rope_sin_swa = c->rope_sin_swa + R * half;
    }
    v->sh_out = c->sh_out + R * E;
    v->sh_gate = c->sh_gate + R;
    if (c->mla_q) { /* deepseek2: as nf_mla_ctx_alloc sizes them */
        const size_t H = (size_t)hp->n_head, K = (size_t)hp->n_embd_head_k_mla;
        const size_t L = (size_t)hp->n_lora_kv, VM = (size_t)hp->n_embd_head_v_mla;
        const size_t QA = hp->n_lora_q > 0 ? (size_t)hp->n_lora_q : 1;
        v->mla_q = c->mla_q + R * H * K;
        v->mla_qa = c->mla_qa + R * QA;
        v->mla_in = c->mla_in + R * (K > L ? K : L);
        v->mla_out = c->mla_out + R * (L > VM ? L : VM);
        v->mla_att = c->mla_att + R * H * VM;
    }
    v->n_ubatch = 1;
}

int nf_ctx_slot_eval(struct nf_ctx *c, struct nf_kv_slot *slots, int i, const int32_t *tokens,
                     int n)
{
    nf_ctx_bind(c, &slots[i]);
    int rc = nf_ctx_eval(c, tokens, n);
    slots[i].n_past = c->n_past;
    nf_ctx_bind(c, &slots[0]);
    return rc;
}

/* nf_attn_forward for the n rows of a batched step: the mat-vecs of all rows at once (c is in
 * per_row mode: each row with its one-token arithmetic), the attention of each row over its own
 * sequence's cache (view v[r]). */
static void nf_step_attn(struct nf_ctx *c, struct nf_ctx *v, int n, const struct nf_attn_weights *w,
                         int il)
{
    const struct nf_hparams *hp = &c->m->hp;
    const int E = hp->n_embd;
    for (int r = 0; r < n; r++)
        nf_rmsnorm(c->xn + (size_t)r * E, c->x + (size_t)r * E, w->norm.data, E, hp->rms_eps);
    nf_matmul(c, c->q, &w->wq, c->xn, n);
    nf_matmul(c, c->k, &w->wk, c->xn, n);
    nf_matmul(c, c->v, &w->wv, c->xn, n);
    nf_attn_qk(c, w, n);
    for (int r = 0; r < n; r++) {
        v[r].attn_sinks = w->sinks.data;
        nf_attn_core(&v[r], il, v[r].n_past, 1);
    }
    nf_matmul(c, c->ffo, &w->wo, c->att, n);
    nf_add_bias(c->ffo, &w->bo, 0, n);
    nf_post_norm(c, c->ffo, &w->post_norm, n);
    for (size_t i = 0; i < (size_t)n * E; i++)
        c->x[i] += c->ffo[i];
}

int nf_ctx_step(struct nf_ctx *c, struct nf_kv_slot *slots, const int *idx, const int32_t *toks,
                int n)
{
    const struct nf_model *m = c->m;
    const struct nf_hparams *hp = &m->hp;
    const int E = hp->n_embd;
    if (n < 1 || n > NF_MAX_BATCH || n > c->n_ubatch)
        return NF_EUSAGE;
    for (int r = 0; r < n; r++) {
        if (toks[r] < 0 || toks[r] >= hp->n_vocab || idx[r] < 0)
            return NF_EUSAGE;
        for (int q = 0; q < r; q++)
            if (idx[q] == idx[r])
                return NF_EUSAGE;
        if (slots[idx[r]].n_past >= c->n_ctx)
            return NF_ECTXFULL;
    }
    struct nf_ctx v[NF_MAX_BATCH];
    const struct nf_type_traits *et = nf_type_traits(m->tok_embd.type);
    for (int r = 0; r < n; r++) {
        nf_ctx_row_view(&v[r], c, r, &slots[idx[r]]);
        /* As nf_eval_chunk does for a chunk of one token. */
        et->to_float((const char *)m->tok_embd.data + (size_t)toks[r] * m->tok_embd.row_size,
                     v[r].x, E);
        if (hp->embd_scale)
            for (int i = 0; i < E; i++)
                v[r].x[i] *= hp->embd_scale;
        nf_rope_cache(&v[r], v[r].n_past, 1);
    }
    /* Layer by layer, so each layer's weights serve every sequence while they are hot; the
     * mat-vecs of the attention and of a dense FFN take all rows at once, each row with its
     * one-token arithmetic (per_row: quants_rows.h's kernels unpack each weight block once for
     * all rows). deepseek2's attention and the MoE FFNs go row by row. */
    c->per_row = true;
    for (int il = 0; il < hp->n_layer; il++) {
        const struct nf_layer *L = &m->layers[il];
        if (!hp->n_lora_kv)
            nf_step_attn(c, v, n, &L->attn, il);
        const bool moe = hp->n_expert && !nf_layer_dense(hp, il);
        if (!moe && !hp->n_lora_kv) {
            nf_ffn_forward(c, &L->ffn_norm, &L->ffn, n);
            continue;
        }
        for (int r = 0; r < n; r++) {
            if (hp->n_lora_kv) /* as nf_eval_chunk */
                nf_mla_forward(&v[r], &L->attn, il, v[r].n_past, 1);
            if (moe)
                nf_moe_forward(&v[r], &L->ffn_norm, &L->moe, 1);
            else
                nf_ffn_forward(&v[r], &L->ffn_norm, &L->ffn, 1);
        }
    }
    c->per_row = false;
    for (int r = 0; r < n; r++) {
        nf_rmsnorm(v[r].xn, v[r].x, m->output_norm.data, E, hp->rms_eps);
        nf_matmul(&v[r], v[r].logits, &m->output, v[r].xn, 1);
        slots[idx[r]].n_past++;
    }
    return 0;
}
