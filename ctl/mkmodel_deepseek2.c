/* mkmodel_deepseek2.c - the deepseek2 (DeepSeek-V2/V3, Kimi-K2) tensors and metadata of
 * nanoflowctl mkmodel, in the layout llama.cpp's deepseek2 loader reads: multi-head latent
 * attention with the split attn_k_b / attn_v_b (key_length_mla present), leading dense layers,
 * routed plus shared experts. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cmds.h"
#include "mkmodel.h"

#define CMD "mkmodel"

/* DeepSeek-V3's and Kimi-K2's config.json (Kimi-K2: 64 heads, 384 experts, one dense layer, no
 * expert groups, rope base 50000, YaRN factor 32); the shapes' other half is in cmd_mkmodel.c's
 * table. */
static const struct {
    const char *name;
    struct nf_mk_ds ds;
} nf_mk_ds_presets[] = {
    {"deepseek-v3", {1536, 512, 64, 128, 3, 18432, 1, true, 2.5f, 8, 4, 40.0f, 4096, 1.0f}},
    {"kimi-k2", {1536, 512, 64, 128, 1, 18432, 1, true, 2.827f, 0, 0, 32.0f, 4096, 1.0f}},
};

const struct nf_mk_ds *nf_mk_ds_preset(const char *name)
{
    for (size_t i = 0; name && i < sizeof(nf_mk_ds_presets) / sizeof(nf_mk_ds_presets[0]); i++)
        if (!strcmp(nf_mk_ds_presets[i].name, name))
            return &nf_mk_ds_presets[i].ds;
    return NULL;
}

int nf_mk_deepseek2_check(const struct nf_mk_shape *s, const struct nf_mk_ds *d)
{
    if (d->kv_lora < 1 || d->rope_dim < 2 || d->rope_dim % 2)
        return nf_usage_error(CMD, "--arch deepseek2 needs --kv-lora N and an even --rope-dim");
    if (s->head_dim <= d->rope_dim)
        return nf_usage_error(CMD,
                              "--arch deepseek2: --head-dim (q/k head size, nope + rope) %lld "
                              "must be more than --rope-dim %lld",
                              (long long)s->head_dim, (long long)d->rope_dim);
    if (s->experts < 2 || d->dense_lead >= s->layers)
        return nf_usage_error(CMD, "--arch deepseek2 needs --experts >= 2 and fewer "
                                   "--dense-layers than --layers");
    if (d->dense_lead > 0 && d->dense_ffn < 1)
        return nf_usage_error(CMD, "--arch deepseek2 with --dense-layers needs --dense-ffn");
    if (d->groups > 1 &&
        (s->experts % d->groups || d->groups_used < 1 || d->groups_used >= d->groups))
        return nf_usage_error(CMD,
                              "--expert-groups %lld must divide --experts %lld, with "
                              "--groups-used in [1, %lld)",
                              (long long)d->groups, (long long)s->experts, (long long)d->groups);
    return 0;
}

/* The type a per-head matrix with rows of n elements gets: type when its blocks fit, else q8_0
 * when they fit, else f16 (llama-quantize likewise falls back for rows its type cannot pack). */
static enum nf_type fit_type(enum nf_type type, int64_t n)
{
    if (n % nf_type_traits(type)->blck_size == 0)
        return type;
    return n % 32 == 0 ? NF_TYPE_Q8_0 : NF_TYPE_F16;
}

int nf_mk_deepseek2_tensors(const struct nf_mk_shape *s, const struct nf_mk_ds *d,
                            enum nf_type type, bool tied, struct nf_mk_tensor **out, size_t *count)
{
    const int64_t E = s->dim, H = s->heads, K = s->head_dim, R = d->rope_dim;
    const int64_t L = d->kv_lora, QA = d->q_lora, VM = d->v_head, X = s->experts;
    const int64_t S = s->ffn * d->n_shared;
    const size_t n = 3 + 20 * (size_t)s->layers; /* at most 18 a layer */
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
    ADD(NF_MK_RANDOM, type, 2, E, s->vocab, 1, "token_embd.weight");
    ADD(NF_MK_ONES, NF_TYPE_F32, 1, E, 1, 1, "output_norm.weight");
    if (!tied)
        ADD(NF_MK_RANDOM, type, 2, E, s->vocab, 1, "output.weight");
    for (int64_t l = 0; l < s->layers; l++) {
        long long b = (long long)l;
        /* The low-rank norms are 1 + noise, so a misplaced one changes the output. */
        ADD(NF_MK_ONES, NF_TYPE_F32, 1, E, 1, 1, "blk.%lld.attn_norm.weight", b);
        if (QA > 0) {
            ADD(NF_MK_RANDOM, type, 2, E, QA, 1, "blk.%lld.attn_q_a.weight", b);
            ADD(NF_MK_NEAR_ONE, NF_TYPE_F32, 1, QA, 1, 1, "blk.%lld.attn_q_a_norm.weight", b);
            ADD(NF_MK_RANDOM, type, 2, QA, H * K, 1, "blk.%lld.attn_q_b.weight", b);
        } else {
            ADD(NF_MK_RANDOM, type, 2, E, H * K, 1, "blk.%lld.attn_q.weight", b);
        }
        ADD(NF_MK_RANDOM, type, 2, E, L + R, 1, "blk.%lld.attn_kv_a_mqa.weight", b);
        ADD(NF_MK_NEAR_ONE, NF_TYPE_F32, 1, L, 1, 1, "blk.%lld.attn_kv_a_norm.weight", b);
        ADD(NF_MK_RANDOM, fit_type(type, K - R), 3, K - R, L, H, "blk.%lld.attn_k_b.weight", b);
        ADD(NF_MK_RANDOM, fit_type(type, L), 3, L, VM, H, "blk.%lld.attn_v_b.weight", b);
        ADD(NF_MK_RANDOM, type, 2, H * VM, E, 1, "blk.%lld.attn_output.weight", b);
        ADD(NF_MK_ONES, NF_TYPE_F32, 1, E, 1, 1, "blk.%lld.ffn_norm.weight", b);
        if (l < d->dense_lead) {
            ADD(NF_MK_RANDOM, type, 2, E, d->dense_ffn, 1, "blk.%lld.ffn_gate.weight", b);
            ADD(NF_MK_RANDOM, type, 2, E, d->dense_ffn, 1, "blk.%lld.ffn_up.weight", b);
            ADD(NF_MK_RANDOM, type, 2, d->dense_ffn, E, 1, "blk.%lld.ffn_down.weight", b);
            continue;
        }
        /* The router stays f32, as llama.cpp's converter keeps it. */
        ADD(NF_MK_RANDOM, NF_TYPE_F32, 2, E, X, 1, "blk.%lld.ffn_gate_inp.weight", b);
        if (d->sigmoid)
            ADD(NF_MK_RANDOM, NF_TYPE_F32, 1, X, 1, 1, "blk.%lld.exp_probs_b.bias", b);
        ADD(NF_MK_RANDOM, type, 3, E, s->ffn, X, "blk.%lld.ffn_gate_exps.weight", b);
        ADD(NF_MK_RANDOM, type, 3, E, s->ffn, X, "blk.%lld.ffn_up_exps.weight", b);
        ADD(NF_MK_RANDOM, type, 3, s->ffn, E, X, "blk.%lld.ffn_down_exps.weight", b);
        if (S) {
            ADD(NF_MK_RANDOM, type, 2, E, S, 1, "blk.%lld.ffn_gate_shexp.weight", b);
            ADD(NF_MK_RANDOM, type, 2, E, S, 1, "blk.%lld.ffn_up_shexp.weight", b);
            ADD(NF_MK_RANDOM, type, 2, S, E, 1, "blk.%lld.ffn_down_shexp.weight", b);
        }
    }
#undef ADD
    *out = t;
    *count = k;
    return 0;
}

int nf_mk_deepseek2_metadata(struct nf_gguf_writer *w, const struct nf_mk_shape *s,
                             const struct nf_mk_ds *d)
{
    int rc = 0;
#define U32(key, v) \
    if (!rc)        \
    rc = nf_gguf_writer_add_u32(w, "deepseek2." key, (uint32_t)(v))
#define F32(key, v) \
    if (!rc)        \
    rc = nf_gguf_writer_add_f32(w, "deepseek2." key, (v))
    U32("context_length", s->ctx);
    U32("embedding_length", s->dim);
    U32("block_count", s->layers);
    U32("feed_forward_length", d->dense_ffn > 0 ? d->dense_ffn : s->ffn);
    U32("expert_feed_forward_length", s->ffn);
    U32("attention.head_count", s->heads);
    /* The absorbed form's MQA: one KV head, the latent and the rope part as its key, the
     * latent as its value; the per-head sizes in the _mla keys. */
    U32("attention.head_count_kv", 1);
    U32("attention.key_length", d->kv_lora + d->rope_dim);
    U32("attention.value_length", d->kv_lora);
    U32("attention.key_length_mla", s->head_dim);
    U32("attention.value_length_mla", d->v_head);
    /* Required by llama.cpp unless the layer count is V2-Lite's: 0 means plain attn_q. */
    U32("attention.q_lora_rank", d->q_lora);
    U32("attention.kv_lora_rank", d->kv_lora);
    U32("rope.dimension_count", d->rope_dim);
    F32("rope.freq_base", s->rope_base);
    F32("attention.layer_norm_rms_epsilon", s->rms_eps);
    U32("leading_dense_block_count", d->dense_lead);
    U32("expert_count", s->experts);
    U32("expert_used_count", s->experts_used);
    U32("expert_shared_count", d->n_shared);
    F32("expert_weights_scale", d->expert_scale > 0 ? d->expert_scale : 1.0f);
    if (!rc)
        rc = nf_gguf_writer_add_bool(w, "deepseek2.expert_weights_norm", d->sigmoid);
    U32("expert_gating_func", d->sigmoid ? 2 : 1);
    if (d->groups > 1) {
        U32("expert_group_count", d->groups);
        U32("expert_group_used_count", d->groups_used);
    }
    if (d->yarn > 0) { /* as llama.cpp's converter writes DeepSeek's rope_scaling */
        if (!rc)
            rc = nf_gguf_writer_add_str(w, "deepseek2.rope.scaling.type", "yarn");
        F32("rope.scaling.factor", d->yarn);
        U32("rope.scaling.original_context_length", d->yarn_orig > 0 ? d->yarn_orig : s->ctx);
        F32("rope.scaling.yarn_log_multiplier", 0.1f * d->yarn_mscale);
    }
    U32("vocab_size", s->vocab);
#undef U32
#undef F32
    return rc;
}
