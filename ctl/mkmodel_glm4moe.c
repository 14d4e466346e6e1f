/* mkmodel_glm4moe.c - the tensors and keys of a generated glm4moe (GLM-4.5 / Air) model, in the
 * layout llama.cpp's llama_model_glm4_moe loads. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "mkmodel.h"

/* GLM-4.5 and GLM-4.5-Air from their config.json (the rest of the shape is in cmd_mkmodel.c's
 * table): the first 3 / 1 layers dense (intermediate_size 12288 / 10944), one nextn block,
 * 1 shared expert, partial_rotary_factor 0.5 of head_dim 128, routed scaling 2.5 / 1.0, q/k
 * norms in GLM-4.5 only, n_group 1 (no group keys). */
static const struct {
    const char *name;
    struct nf_mk_glm g;
} nf_mk_glm_presets[] = {
    {"glm-4.5", {3, 12288, 1, 1, 64, 2.5f, true, 0, 0}},
    {"glm-4.5-air", {1, 10944, 1, 1, 64, 1.0f, false, 0, 0}},
};

bool nf_mk_glm4moe_preset(const char *name, struct nf_mk_glm *out)
{
    for (size_t i = 0; name && i < sizeof(nf_mk_glm_presets) / sizeof(nf_mk_glm_presets[0]); i++)
        if (!strcmp(nf_mk_glm_presets[i].name, name)) {
            *out = nf_mk_glm_presets[i].g;
            return true;
        }
    return false;
}

int nf_mk_glm4moe_tensors(const struct nf_mk_shape *s, const struct nf_mk_glm *g, enum nf_type type,
                          bool tied, struct nf_mk_tensor **out, size_t *count)
{
    const int64_t hd = s->head_dim, qd = s->heads * hd, kvd = s->kv_heads * hd;
    const int64_t X = s->experts, S = s->ffn * g->shared, blocks = s->layers + g->nextn;
    /* Per block at most: 6 attention, 3 biases, 2 q/k norms, post norm, router, bias, 3
     * experts, 3 shared expert, 4 nextn. */
    const size_t n = 3 + 23 * (size_t)blocks;
    size_t k = 0;
    struct nf_mk_tensor *t = calloc(n, sizeof(*t));
    if (!t)
        return -ENOMEM;
#define ADD(fill_, type_, nd, n0, n1, n2, ...)                                              \
    do {                                                                                    \
        struct nf_mk_tensor *x = &t[k++];                                                   \
        *x = (struct nf_mk_tensor){                                                         \
            .n_dims = (nd), .ne = {(n0), (n1), (n2), 1}, .type = (type_), .fill = (fill_)}; \
        snprintf(x->name, sizeof(x->name), __VA_ARGS__);                                    \
    } while (0)
    ADD(NF_MK_RANDOM, type, 2, s->dim, s->vocab, 1, "token_embd.weight");
    ADD(NF_MK_ONES, NF_TYPE_F32, 1, s->dim, 1, 1, "output_norm.weight");
    if (!tied)
        ADD(NF_MK_RANDOM, type, 2, s->dim, s->vocab, 1, "output.weight");
    for (int64_t l = 0; l < blocks; l++) {
        const long long b = (long long)l;
        ADD(NF_MK_ONES, NF_TYPE_F32, 1, s->dim, 1, 1, "blk.%lld.attn_norm.weight", b);
        ADD(NF_MK_RANDOM, type, 2, s->dim, qd, 1, "blk.%lld.attn_q.weight", b);
        ADD(NF_MK_RANDOM, type, 2, s->dim, kvd, 1, "blk.%lld.attn_k.weight", b);
        ADD(NF_MK_RANDOM, type, 2, s->dim, kvd, 1, "blk.%lld.attn_v.weight", b);
        ADD(NF_MK_RANDOM, NF_TYPE_F32, 1, qd, 1, 1, "blk.%lld.attn_q.bias", b);
        ADD(NF_MK_RANDOM, NF_TYPE_F32, 1, kvd, 1, 1, "blk.%lld.attn_k.bias", b);
        ADD(NF_MK_RANDOM, NF_TYPE_F32, 1, kvd, 1, 1, "blk.%lld.attn_v.bias", b);
        ADD(NF_MK_RANDOM, type, 2, qd, s->dim, 1, "blk.%lld.attn_output.weight", b);
        if (g->qk_norm) {
            ADD(NF_MK_NEAR_ONE, NF_TYPE_F32, 1, hd, 1, 1, "blk.%lld.attn_q_norm.weight", b);
            ADD(NF_MK_NEAR_ONE, NF_TYPE_F32, 1, hd, 1, 1, "blk.%lld.attn_k_norm.weight", b);
        }
        /* The FFN's input norm (glm4moe has no ffn_norm): 1 + noise, so a skipped or
         * misplaced one shows. */
        ADD(NF_MK_NEAR_ONE, NF_TYPE_F32, 1, s->dim, 1, 1, "blk.%lld.post_attention_norm.weight", b);
        if (l < g->dense_layers) {
            ADD(NF_MK_RANDOM, type, 2, s->dim, g->dense_ffn, 1, "blk.%lld.ffn_gate.weight", b);
            ADD(NF_MK_RANDOM, type, 2, s->dim, g->dense_ffn, 1, "blk.%lld.ffn_up.weight", b);
            ADD(NF_MK_RANDOM, type, 2, g->dense_ffn, s->dim, 1, "blk.%lld.ffn_down.weight", b);
        } else {
            ADD(NF_MK_RANDOM, NF_TYPE_F32, 2, s->dim, X, 1, "blk.%lld.ffn_gate_inp.weight", b);
            /* The score-correction bias: 1 + noise (std 0.2 around 1), large enough next to
             * the routers' sigmoids to change which experts win. */
            ADD(NF_MK_NEAR_ONE, NF_TYPE_F32, 1, X, 1, 1, "blk.%lld.exp_probs_b.bias", b);
            ADD(NF_MK_RANDOM, type, 3, s->dim, s->ffn, X, "blk.%lld.ffn_gate_exps.weight", b);
            ADD(NF_MK_RANDOM, type, 3, s->dim, s->ffn, X, "blk.%lld.ffn_up_exps.weight", b);
            ADD(NF_MK_RANDOM, type, 3, s->ffn, s->dim, X, "blk.%lld.ffn_down_exps.weight", b);
            if (S) {
                ADD(NF_MK_RANDOM, type, 2, s->dim, S, 1, "blk.%lld.ffn_gate_shexp.weight", b);
                ADD(NF_MK_RANDOM, type, 2, s->dim, S, 1, "blk.%lld.ffn_up_shexp.weight", b);
                ADD(NF_MK_RANDOM, type, 2, S, s->dim, 1, "blk.%lld.ffn_down_shexp.weight", b);
            }
        }
        if (l >= s->layers) { /* a next-token-prediction block: what llama.cpp requires */
            ADD(NF_MK_RANDOM, type, 2, 2 * s->dim, s->dim, 1, "blk.%lld.nextn.eh_proj.weight", b);
            ADD(NF_MK_ONES, NF_TYPE_F32, 1, s->dim, 1, 1, "blk.%lld.nextn.enorm.weight", b);
            ADD(NF_MK_ONES, NF_TYPE_F32, 1, s->dim, 1, 1, "blk.%lld.nextn.hnorm.weight", b);
            ADD(NF_MK_ONES, NF_TYPE_F32, 1, s->dim, 1, 1, "blk.%lld.nextn.shared_head_norm.weight",
                b);
        }
    }
#undef ADD
    *out = t;
    *count = k;
    return 0;
}

int nf_mk_glm4moe_metadata(struct nf_gguf_writer *w, const struct nf_mk_glm *g)
{
    int rc = 0;
    if (!rc)
        rc = nf_gguf_writer_add_u32(w, "glm4moe.leading_dense_block_count",
                                    (uint32_t)g->dense_layers);
    if (!rc)
        rc = nf_gguf_writer_add_u32(w, "glm4moe.nextn_predict_layers", (uint32_t)g->nextn);
    if (!rc)
        rc = nf_gguf_writer_add_u32(w, "glm4moe.expert_shared_count", (uint32_t)g->shared);
    if (!rc)
        rc = nf_gguf_writer_add_f32(w, "glm4moe.expert_weights_scale", g->scale);
    if (!rc)
        rc = nf_gguf_writer_add_bool(w, "glm4moe.expert_weights_norm", true);
    if (!rc) /* LLAMA_EXPERT_GATING_FUNC_TYPE_SIGMOID */
        rc = nf_gguf_writer_add_u32(w, "glm4moe.expert_gating_func", 2);
    if (!rc && g->groups > 0)
        rc = nf_gguf_writer_add_u32(w, "glm4moe.expert_group_count", (uint32_t)g->groups);
    if (!rc && g->groups > 0)
        rc = nf_gguf_writer_add_u32(w, "glm4moe.expert_group_used_count", (uint32_t)g->groups_used);
    return rc;
}
