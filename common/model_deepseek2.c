/* model_deepseek2.c - deepseek2's multi-head latent attention (absorbed form, latent KV cache)
 * and its expert router, in llama.cpp's CPU arithmetic (its llm_build_deepseek2 graph with the
 * split attn_k_b / attn_v_b, non-flash attention, F16 cache). */
#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "model.h"

int nf_mla_ctx_alloc(struct nf_ctx *c, size_t n_ubatch)
{
    const struct nf_hparams *hp = &c->m->hp;
    const size_t H = (size_t)hp->n_head, K = (size_t)hp->n_embd_head_k_mla;
    const size_t L = (size_t)hp->n_lora_kv, VM = (size_t)hp->n_embd_head_v_mla;
    const size_t QA = hp->n_lora_q > 0 ? (size_t)hp->n_lora_q : 1;
    c->mla_q = calloc(n_ubatch * H * K, sizeof(float));
    c->mla_qa = calloc(n_ubatch * QA, sizeof(float));
    c->mla_in = calloc(n_ubatch * (K > L ? K : L), sizeof(float));
    c->mla_out = calloc(n_ubatch * (L > VM ? L : VM), sizeof(float));
    c->mla_att = calloc(n_ubatch * H * VM, sizeof(float));
    return c->mla_q && c->mla_qa && c->mla_in && c->mla_out && c->mla_att ? 0 : -ENOMEM;
}

/* Head h's 2-D slice of a per-head 3-D tensor (attn_k_b, attn_v_b). */
static struct nf_tensor nf_head_view(const struct nf_tensor *t, int h)
{
    struct nf_tensor v = *t;
    v.ne[2] = 1;
    v.data = (char *)t->data + (size_t)h * (size_t)t->ne[1] * t->row_size;
    return v;
}

/* ggml's batched mul_mat over the heads, each head a mat-mul of n_tok columns: for heads
 * h0 .. h0 + w->ne[2] - 1 (w holds exactly those), the w->ne[0] values at in + h * in_off of each
 * token row (in_stride floats apart) times w's slice of head h, written at out + h * out_off of
 * each row (out_stride floats apart). */
static void nf_mla_heads(struct nf_ctx *c, const struct nf_tensor *w, int h0, const float *in,
                         size_t in_off, size_t in_stride, float *out, size_t out_off,
                         size_t out_stride, int n_tok)
{
    const size_t n = (size_t)w->ne[0], m = (size_t)w->ne[1];
    for (int j = 0; j < (int)w->ne[2]; j++) {
        const size_t h = (size_t)(h0 + j);
        const struct nf_tensor wh = nf_head_view(w, j);
        for (int t = 0; t < n_tok; t++)
            memcpy(c->mla_in + (size_t)t * n, in + (size_t)t * in_stride + h * in_off,
                   n * sizeof(float));
        nf_matmul(c, c->mla_out, &wh, c->mla_in, n_tok);
        for (int t = 0; t < n_tok; t++)
            memcpy(out + (size_t)t * out_stride + h * out_off, c->mla_out + (size_t)t * m,
                   m * sizeof(float));
    }
}

void nf_mla_prep(struct nf_ctx *c, const float *kv_a_norm, int n_tok)
{
    const struct nf_hparams *hp = &c->m->hp;
    const int H = hp->n_head, K = hp->n_embd_head_k_mla, R = hp->n_rot, NOPE = K - R;
    const int L = hp->n_lora_kv, D = hp->head_dim;
    for (int t = 0; t < n_tok; t++) {
        /* ggml_rope_ext of the q_pe and k_pe views (NORM mode), then the RMSNorm of the
         * latent, kv_cmpr. */
        float *qt = c->mla_q + (size_t)t * H * K, *kt = c->k + (size_t)t * D;
        for (int h = 0; h < H; h++)
            nf_rope_vec(c, qt + (size_t)h * K + NOPE, t, false);
        nf_rope_vec(c, kt + L, t, false);
        nf_rmsnorm(kt, kt, kv_a_norm, L, hp->rms_eps);
    }
}

void nf_mla_absorb(struct nf_ctx *c, const struct nf_tensor *wk_b, int h0, int n_tok)
{
    const struct nf_hparams *hp = &c->m->hp;
    const size_t H = (size_t)hp->n_head, K = (size_t)hp->n_embd_head_k_mla;
    const size_t D = (size_t)hp->head_dim;
    /* Qcur's first part, wk_b x q_nope per head: (n_tok, H, L) at stride D. */
    nf_mla_heads(c, wk_b, h0, c->mla_q, K, H * K, c->q, D, H * D, n_tok);
}

void nf_mla_attend_latent(struct nf_ctx *c, int il, int pos0, int n_tok)
{
    const struct nf_hparams *hp = &c->m->hp;
    const int H = hp->n_head, K = hp->n_embd_head_k_mla, R = hp->n_rot, NOPE = K - R;
    const int L = hp->n_lora_kv, D = hp->head_dim;
    /* Qcur = concat(q_nope_absorbed, q_pe) per head: (n_tok, H, L + R). */
    for (int t = 0; t < n_tok; t++)
        for (int h = 0; h < H; h++)
            memcpy(c->q + (size_t)t * H * D + (size_t)h * D + L,
                   c->mla_q + (size_t)t * H * K + (size_t)h * K + NOPE, (size_t)R * sizeof(float));
    nf_fp16_t *kc = (nf_fp16_t *)c->k_cache + (size_t)il * c->n_ctx * D;
    for (int t = 0; t < n_tok; t++)
        for (int i = 0; i < D; i++)
            kc[(size_t)(pos0 + t) * D + i] = nf_fp32_to_fp16(c->k[(size_t)t * D + i]);
    nf_attn_heads(c, il, pos0, n_tok);
}

void nf_mla_values(struct nf_ctx *c, const struct nf_tensor *wv_b, int h0, int n_tok)
{
    const struct nf_hparams *hp = &c->m->hp;
    const size_t H = (size_t)hp->n_head, L = (size_t)hp->n_lora_kv;
    const size_t VM = (size_t)hp->n_embd_head_v_mla;
    /* kqv_mla = wv_b x kqv per head: (n_tok, H, VM), the input of attn_output. */
    nf_mla_heads(c, wv_b, h0, c->att, L, H * L, c->mla_att, VM, H * VM, n_tok);
}

void nf_mla_attend(struct nf_ctx *c, const struct nf_attn_weights *w, int il, int pos0, int n_tok)
{
    nf_mla_prep(c, w->kv_a_norm.data, n_tok);
    nf_mla_absorb(c, &w->wk_b, 0, n_tok);
    nf_mla_attend_latent(c, il, pos0, n_tok);
    nf_mla_values(c, &w->wv_b, 0, n_tok);
}

void nf_mla_forward(struct nf_ctx *c, const struct nf_attn_weights *w, int il, int pos0, int n_tok)
{
    const struct nf_hparams *hp = &c->m->hp;
    const int E = hp->n_embd;
    for (int t = 0; t < n_tok; t++)
        nf_rmsnorm(c->xn + (size_t)t * E, c->x + (size_t)t * E, w->norm.data, E, hp->rms_eps);
    if (w->wq_a.data) { /* q through its low rank, normed in between */
        const int QA = hp->n_lora_q;
        nf_matmul(c, c->mla_qa, &w->wq_a, c->xn, n_tok);
        for (int t = 0; t < n_tok; t++)
            nf_rmsnorm(c->mla_qa + (size_t)t * QA, c->mla_qa + (size_t)t * QA, w->q_a_norm.data, QA,
                       hp->rms_eps);
        nf_matmul(c, c->mla_q, &w->wq_b, c->mla_qa, n_tok);
    } else {
        nf_matmul(c, c->mla_q, &w->wq, c->xn, n_tok);
    }
    nf_matmul(c, c->k, &w->wkv_a, c->xn, n_tok);
    nf_mla_attend(c, w, il, pos0, n_tok);
    nf_matmul(c, c->ffo, &w->wo, c->mla_att, n_tok);
    for (size_t i = 0; i < (size_t)n_tok * E; i++)
        c->x[i] += c->ffo[i];
}

void nf_moe_route_ds(const struct nf_hparams *hp, float *p, const float *bias, int *sel, float *w)
{
    /* V3's sigmoid and V2's softmax gates share glm4moe's selection (moe_route.c): the
     * selection bias (V3's e_score_correction_bias), the group limit, the top K, the unbiased
     * gate values as weights, their normalization and the routed scaling factor. */
    const struct nf_moe_sigmoid_route r = {.n_expert = hp->n_expert,
                                           .n_expert_used = hp->n_expert_used,
                                           .n_group = hp->n_expert_groups,
                                           .n_group_used = hp->n_group_used,
                                           .norm_w = hp->expert_weights_norm,
                                           .scale = hp->expert_weights_scale};
    if (hp->expert_gating == NF_GATING_SIGMOID) {
        nf_moe_route_sigmoid(&r, p, bias, sel, w);
        return;
    }
    /* ggml_soft_max as nf_moe_route_raw computes it (the top K it picks is redone in the
     * selection, after the bias and the groups). */
    int tmp_sel[64];
    float tmp_w[64];
    nf_moe_route_raw(p, hp->n_expert, 1, tmp_sel, tmp_w);
    nf_moe_route_select(&r, p, bias, sel, w);
}
