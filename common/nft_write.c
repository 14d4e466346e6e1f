/* nft_write.c - converts a llama-family GGUF (llama, qwen2, qwen3, qwen3moe, gemma3, qwen2moe,
 * olmoe, phi3, gpt-oss) into a .nft tile file (see nft.h). */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <libgen.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <dirent.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <unistd.h>
#include <xxhash.h>

#include "gguf_write.h"
#include "model.h"
#include "nf_err.h"
#include "nft.h"
#include "predictor.h"

/* The tensors of one layer (NULL when absent). */
struct layer_src {
    const struct nf_gguf_tensor *attn_norm, *q, *k, *v, *o, *ffn_norm;
    const struct nf_gguf_tensor *gate, *up, *down;                           /* dense */
    const struct nf_gguf_tensor *gate_inp, *gate_exps, *up_exps, *down_exps; /* MoE */
    const struct nf_gguf_tensor *bq, *bk, *bv, *q_norm, *k_norm; /* qwen2 / qwen3 extras */
    uint32_t group;                                              /* neurons per FFN group */
    const struct nf_gguf_tensor *attn_post, *ffn_post;           /* gemma3 post norms */
    /* qwen2moe's shared expert (its FFN tiles hold these, group_sh neurons a group). */
    const struct nf_gguf_tensor *gate_inp_sh, *gate_sh, *up_sh, *down_sh;
    uint32_t group_sh;
    const struct nf_gguf_tensor *probs_b; /* exp_probs_b.bias (glm4moe, deepseek2 V3) */
    /* phi3: the fused attn_qkv, and q, k, v, gate, up as row ranges of it and of the fused
     * ffn_up (held in `up` as classified, replaced by its upper half), which q..up point to. */
    const struct nf_gguf_tensor *qkv;
    struct nf_gguf_tensor split[5];
    /* gpt-oss's biases and sinks (its post_attention_norm becomes ffn_norm: check_gptoss). */
    const struct nf_gguf_tensor *bo, *sinks, *gate_inp_b, *gate_exps_b, *up_exps_b, *down_exps_b;
    /* deepseek2's latent attention (its V3 selection bias is probs_b above) */
    const struct nf_gguf_tensor *q_a, *q_a_norm, *q_b, *kv_a, *kv_a_norm, *k_b, *v_b;
};

/* The tensors FFN tiles of layer l hold (part 0 gate, 1 up, 2 down): the dense FFN's, or in
 * a MoE layer its shared expert's. */
static const struct nf_gguf_tensor *ffn_src(const struct layer_src *l, int part)
{
    const struct nf_gguf_tensor *d[3] = {l->gate, l->up, l->down},
                                *sh[3] = {l->gate_sh, l->up_sh, l->down_sh};
    return l->gate ? d[part] : sh[part];
}

struct conv {
    const char *in;
    struct nf_gguf *g;
    const struct nf_nft_convert_opts *o;
    char *err;
    size_t errlen;
    struct nf_nft_header hdr;
    struct nf_hparams hp; /* as the engine reads them (nf_model_hparams) */
    const struct nf_gguf_tensor *embd, *out_norm, *output, *rope;
    const struct nf_gguf_tensor *rope_short, *rope_long; /* phi3 LongRoPE factors */
    struct layer_src *L;
    struct nf_nft_tile *tiles;
    uint64_t n_tiles, cap;
    uint64_t tile_size;
    int rank;
    enum nf_type pred_type;
    int fd;
    char *tmp;
    void *buf; /* tile buffer, 4096-aligned */
    size_t buf_cap;
    uint64_t done, total;
    int checked; /* 0: not looked yet, 1: no tensor nf_blocks_check checks, 2: some (mxfp4) */
};

/* --- classifying the source tensors --- */

static int assign(struct conv *c, const struct nf_gguf_tensor **slot,
                  const struct nf_gguf_tensor *t)
{
    if (*slot)
        return nf_errf_at(c->err, c->errlen, NF_ECORRUPT, c->in, "tensor '%s' appears twice",
                          t->name.s);
    *slot = t;
    return 0;
}

static int classify(struct conv *c, const struct nf_gguf_tensor *t)
{
    static const struct {
        const char *name;
        size_t off;
    } per_layer[] = {
        {"attn_norm.weight", offsetof(struct layer_src, attn_norm)},
        {"attn_q.weight", offsetof(struct layer_src, q)},
        {"attn_k.weight", offsetof(struct layer_src, k)},
        {"attn_v.weight", offsetof(struct layer_src, v)},
        {"attn_output.weight", offsetof(struct layer_src, o)},
        {"ffn_norm.weight", offsetof(struct layer_src, ffn_norm)},
        {"ffn_gate.weight", offsetof(struct layer_src, gate)},
        {"ffn_up.weight", offsetof(struct layer_src, up)},
        {"ffn_down.weight", offsetof(struct layer_src, down)},
        {"ffn_gate_inp.weight", offsetof(struct layer_src, gate_inp)},
        {"ffn_gate_exps.weight", offsetof(struct layer_src, gate_exps)},
        {"ffn_up_exps.weight", offsetof(struct layer_src, up_exps)},
        {"ffn_down_exps.weight", offsetof(struct layer_src, down_exps)},
        {"attn_q.bias", offsetof(struct layer_src, bq)},
        {"attn_k.bias", offsetof(struct layer_src, bk)},
        {"attn_v.bias", offsetof(struct layer_src, bv)},
        {"attn_q_norm.weight", offsetof(struct layer_src, q_norm)},
        {"attn_k_norm.weight", offsetof(struct layer_src, k_norm)},
        {"post_attention_norm.weight", offsetof(struct layer_src, attn_post)},
        {"post_ffw_norm.weight", offsetof(struct layer_src, ffn_post)},
        {"ffn_gate_inp_shexp.weight", offsetof(struct layer_src, gate_inp_sh)},
        {"ffn_gate_shexp.weight", offsetof(struct layer_src, gate_sh)},
        {"ffn_up_shexp.weight", offsetof(struct layer_src, up_sh)},
        {"ffn_down_shexp.weight", offsetof(struct layer_src, down_sh)},
        {"attn_qkv.weight", offsetof(struct layer_src, qkv)},
        {"attn_output.bias", offsetof(struct layer_src, bo)},
        {"attn_sinks.weight", offsetof(struct layer_src, sinks)},
        {"ffn_gate_inp.bias", offsetof(struct layer_src, gate_inp_b)},
        {"ffn_gate_exps.bias", offsetof(struct layer_src, gate_exps_b)},
        {"ffn_up_exps.bias", offsetof(struct layer_src, up_exps_b)},
        {"ffn_down_exps.bias", offsetof(struct layer_src, down_exps_b)},
        {"attn_q_a.weight", offsetof(struct layer_src, q_a)},
        {"attn_q_a_norm.weight", offsetof(struct layer_src, q_a_norm)},
        {"attn_q_b.weight", offsetof(struct layer_src, q_b)},
        {"attn_kv_a_mqa.weight", offsetof(struct layer_src, kv_a)},
        {"attn_kv_a_norm.weight", offsetof(struct layer_src, kv_a_norm)},
        {"attn_k_b.weight", offsetof(struct layer_src, k_b)},
        {"attn_v_b.weight", offsetof(struct layer_src, v_b)},
        {"exp_probs_b.bias", offsetof(struct layer_src, probs_b)},
    };
    const char *name = t->name.s;
    const struct nf_type_traits *tr = nf_type_traits(t->type);
    if (!tr || !tr->compute)
        return nf_errf_at(c->err, c->errlen, NF_EBADTYPE, c->in,
                          "tensor '%s' has type %s, which NanoFlow cannot compute with", name,
                          tr ? tr->name : "unknown");
    for (uint32_t d = 0; d < t->n_dims; d++)
        if (t->ne[d] > (int64_t)UINT32_MAX)
            return nf_errf_at(c->err, c->errlen, NF_ESHAPE, c->in,
                              "tensor '%s': dimension %u is %" PRId64 " (at most 2^32-1)", name, d,
                              t->ne[d]);
    if (!strcmp(name, "token_embd.weight"))
        return assign(c, &c->embd, t);
    if (!strcmp(name, "output_norm.weight"))
        return assign(c, &c->out_norm, t);
    if (!strcmp(name, "output.weight"))
        return assign(c, &c->output, t);
    if (!strcmp(name, "rope_freqs.weight"))
        return assign(c, &c->rope, t);
    if (!strcmp(name, "rope_factors_short.weight"))
        return assign(c, &c->rope_short, t);
    if (!strcmp(name, "rope_factors_long.weight"))
        return assign(c, &c->rope_long, t);
    unsigned layer;
    int pos = 0;
    if (sscanf(name, "blk.%u.%n", &layer, &pos) == 1 && pos > 0) {
        /* glm4moe's next-token-prediction blocks follow the model's: skipped, not refused. */
        if (layer >= c->hdr.n_layer && layer < c->hdr.n_layer + (uint32_t)c->hp.n_nextn)
            return 0;
        /* Its FFN input norm is post_attention_norm: an FFN_NORM tile like ffn_norm. */
        if (c->hp.arch == NF_ARCH_GLM4MOE && layer < c->hdr.n_layer &&
            !strcmp(name + pos, "post_attention_norm.weight"))
            return assign(c, &c->L[layer].ffn_norm, t);
        if (layer >= c->hdr.n_layer)
            return nf_errf_at(c->err, c->errlen, NF_ESHAPE, c->in,
                              "tensor '%s' names layer %u but block_count is %u", name, layer,
                              c->hdr.n_layer);
        for (size_t i = 0; i < sizeof(per_layer) / sizeof(per_layer[0]); i++)
            if (!strcmp(name + pos, per_layer[i].name))
                return assign(
                    c, (const struct nf_gguf_tensor **)((char *)&c->L[layer] + per_layer[i].off),
                    t);
    }
    return nf_errf_at(
        c->err, c->errlen, NF_EARCH, c->in,
        "tensor '%s' is not part of the llama layout this converter knows (it cannot be "
        "represented in a .nft)",
        name);
}

/* Checks t has n_dims dims and, where want[d] >= 0, ne[d] == want[d]. */
static int want_shape(struct conv *c, const struct nf_gguf_tensor *t, const char *what,
                      uint32_t n_dims, int64_t a, int64_t b, int64_t e)
{
    int64_t want[3] = {a, b, e};
    if (!t)
        return nf_errf_at(c->err, c->errlen, NF_ENOTENSOR, c->in, "missing tensor %s", what);
    bool ok = t->n_dims == n_dims;
    for (uint32_t d = 0; ok && d < n_dims; d++)
        ok = want[d] < 0 || t->ne[d] == want[d];
    if (!ok)
        return nf_errf_at(c->err, c->errlen, NF_ESHAPE, c->in,
                          "tensor '%s' has shape [%" PRId64 ", %" PRId64 ", %" PRId64
                          "] (%u dims), expected [%" PRId64 ", %" PRId64 ", %" PRId64 "] (%u dims)",
                          t->name.s, t->ne[0], t->ne[1], t->ne[2], t->n_dims, a, b, e, n_dims);
    return 0;
}

/* Neurons per FFN group for an ffn_down of this type: its block size, so columns are whole
 * blocks; for plain types the largest power of two <= 32 dividing n_ff. */
static uint32_t group_for(enum nf_type down, int64_t n_ff)
{
    int64_t b = nf_type_traits(down)->blck_size;
    if (b > 1)
        return (uint32_t)b;
    uint32_t g = 32;
    while (n_ff % g)
        g /= 2;
    return g;
}

/* A MoE layer's shared expert (qwen2moe): present exactly when the architecture has one. */
static int check_shexp(struct conv *c, uint32_t il)
{
    struct layer_src *l = &c->L[il];
    /* (the leading dense layers of glm4moe and deepseek2 have none) */
    const int64_t n_embd = c->hdr.n_embd,
                  S = nf_layer_dense(&c->hp, (int)il) ? 0 : c->hp.n_ff_shexp;
    const struct nf_gguf_tensor *any = l->gate_inp_sh ? l->gate_inp_sh
                                       : l->gate_sh   ? l->gate_sh
                                       : l->up_sh     ? l->up_sh
                                                      : l->down_sh;
    if (!S) {
        if (any)
            return nf_errf_at(c->err, c->errlen, NF_EARCH, c->in,
                              "tensor '%s' is not used by architecture %s (not supported)",
                              any->name.s, nf_arch_name(c->hp.arch));
        return 0;
    }
    char what[64];
    int rc;
    /* The shared experts of glm4moe and deepseek2 have no gate: one is refused, the others need
     * theirs. */
    const bool gated = c->hp.arch != NF_ARCH_GLM4MOE && c->hp.arch != NF_ARCH_DEEPSEEK2;
    if (!gated && l->gate_inp_sh)
        return nf_errf_at(c->err, c->errlen, NF_EARCH, c->in,
                          "tensor '%s' is not used by architecture %s (not supported)",
                          l->gate_inp_sh->name.s, nf_arch_name(c->hp.arch));
    const struct {
        const struct nf_gguf_tensor *t;
        const char *name;
        uint32_t n_dims;
        int64_t a, b;
    } need[] = {{l->gate_inp_sh, "ffn_gate_inp_shexp", 1, n_embd, 1},
                {l->gate_sh, "ffn_gate_shexp", 2, n_embd, S},
                {l->up_sh, "ffn_up_shexp", 2, n_embd, S},
                {l->down_sh, "ffn_down_shexp", 2, S, n_embd}};
    for (size_t i = gated ? 0 : 1; i < sizeof(need) / sizeof(need[0]); i++) {
        snprintf(what, sizeof(what), "blk.%u.%s", il, need[i].name);
        if ((rc = want_shape(c, need[i].t, what, need[i].n_dims, need[i].a, need[i].b, 1)))
            return rc;
    }
    l->group_sh = group_for(l->down_sh->type, S);
    if (S % l->group_sh)
        return nf_errf_at(c->err, c->errlen, NF_ESHAPE, c->in,
                          "layer %u: the shared expert's width %" PRId64
                          " is not a multiple of the group size %u",
                          il, S, l->group_sh);
    return 0;
}

/* Rows [first, first + rows) of the 2-D tensor t, as a tensor of its own. */
static struct nf_gguf_tensor row_range(const struct nf_gguf_tensor *t, int64_t first, int64_t rows)
{
    struct nf_gguf_tensor r = *t;
    const uint64_t row = nf_row_size(t->type, t->ne[0]);
    r.ne[1] = rows;
    r.offset = t->offset + row * (uint64_t)first;
    r.size = row * (uint64_t)rows;
    return r;
}

/* phi3: checks the fused attn_qkv and ffn_up and points q, k, v, gate and up at their row
 * ranges, so the layer is cut into the same ATTN_Q/K/V and FFN tiles as a llama layer (one
 * tile layout for the readers, and FFN bundles that sparse mode selects as for llama). A layer
 * of another architecture with attn_qkv is refused. */
static int split_fused(struct conv *c, uint32_t il)
{
    struct layer_src *l = &c->L[il];
    const struct nf_hparams *hp = &c->hp;
    const int64_t E = c->hdr.n_embd, F = hp->n_ff;
    const int64_t qd = (int64_t)hp->n_head * hp->head_dim;
    const int64_t kvd = (int64_t)hp->n_head_kv * hp->head_dim;
    char what[64];
    int rc;
    if (hp->arch != NF_ARCH_PHI3)
        return l->qkv ? nf_errf_at(c->err, c->errlen, NF_EARCH, c->in,
                                   "tensor '%s' is not used by architecture %s (not supported)",
                                   l->qkv->name.s, nf_arch_name(hp->arch))
                      : 0;
    if (l->q || l->k || l->v || l->gate)
        return nf_errf_at(c->err, c->errlen, NF_EARCH, c->in,
                          "layer %u: phi3 has fused attn_qkv and ffn_up tensors, not separate "
                          "attn_q/k/v or ffn_gate ones",
                          il);
    snprintf(what, sizeof(what), "blk.%u.attn_qkv.weight", il);
    if ((rc = want_shape(c, l->qkv, what, 2, E, qd + 2 * kvd, 1)))
        return rc;
    snprintf(what, sizeof(what), "blk.%u.ffn_up.weight", il);
    if ((rc = want_shape(c, l->up, what, 2, E, 2 * F, 1)))
        return rc;
    l->split[0] = row_range(l->qkv, 0, qd);
    l->split[1] = row_range(l->qkv, qd, kvd);
    l->split[2] = row_range(l->qkv, qd + kvd, kvd);
    l->split[3] = row_range(l->up, 0, F);
    l->split[4] = row_range(l->up, F, F);
    l->q = &l->split[0];
    l->k = &l->split[1];
    l->v = &l->split[2];
    l->gate = &l->split[3];
    l->up = &l->split[4];
    return 0;
}

/* gpt-oss's extras: its post_attention_norm is the FFN norm (moved to ffn_norm, so the layer
 * has the usual FFN_NORM tile); the output bias, sinks, router bias and expert biases (F32) are
 * required by it and refused in any other architecture. Runs before check_layer's checks. */
static int check_gptoss(struct conv *c, uint32_t il)
{
    struct layer_src *l = &c->L[il];
    const struct nf_gguf_tensor *ex[6] = {l->bo,          l->sinks,     l->gate_inp_b,
                                          l->gate_exps_b, l->up_exps_b, l->down_exps_b};
    if (c->hp.arch != NF_ARCH_GPTOSS) {
        for (int i = 0; i < 6; i++)
            if (ex[i])
                return nf_errf_at(c->err, c->errlen, NF_EARCH, c->in,
                                  "tensor '%s' is not used by architecture %s (not supported)",
                                  ex[i]->name.s, nf_arch_name(c->hp.arch));
        return 0;
    }
    if (l->ffn_norm)
        return nf_errf_at(c->err, c->errlen, NF_EARCH, c->in,
                          "tensor '%s' is not used by architecture gpt-oss (its FFN norm is "
                          "post_attention_norm)",
                          l->ffn_norm->name.s);
    l->ffn_norm = l->attn_post;
    l->attn_post = NULL;
    const int64_t E = c->hdr.n_embd, X = c->hp.n_expert, F = c->hp.n_ff, H = c->hp.n_head;
    const struct {
        const char *name;
        uint32_t n_dims;
        int64_t a, b;
    } need[6] = {{"attn_output.bias", 1, E, 1},  {"attn_sinks.weight", 1, H, 1},
                 {"ffn_gate_inp.bias", 1, X, 1}, {"ffn_gate_exps.bias", 2, F, X},
                 {"ffn_up_exps.bias", 2, F, X},  {"ffn_down_exps.bias", 2, E, X}};
    char what[64];
    int rc;
    for (int i = 0; i < 6; i++) {
        snprintf(what, sizeof(what), "blk.%u.%s", il, need[i].name);
        if ((rc = want_shape(c, ex[i], what, need[i].n_dims, need[i].a, need[i].b, 1)))
            return rc;
        if (ex[i]->type != NF_TYPE_F32)
            return nf_errf_at(c->err, c->errlen, NF_EBADTYPE, c->in, "tensor '%s' must be f32",
                              ex[i]->name.s);
    }
    return 0;
}

/* Checks layer il's tensor l->t against want_shape(..., dims...), naming it "blk.<il>.<t>";
 * for functions with c, il, l, what and rc in scope (check_mla, check_layer). */
#define NEED(t, ...)                                       \
    do {                                                   \
        snprintf(what, sizeof(what), "blk.%u.%s", il, #t); \
        if ((rc = want_shape(c, l->t, what, __VA_ARGS__))) \
            return rc;                                     \
    } while (0)

/* deepseek2's latent attention tensors, shaped by the hyperparameters nf_model_hparams read
 * (a file the engine would refuse is refused here too). */
static int check_mla(struct conv *c, uint32_t il)
{
    struct layer_src *l = &c->L[il];
    const struct nf_hparams *hp = &c->hp;
    const int64_t E = c->hdr.n_embd, H = hp->n_head, K = hp->n_embd_head_k_mla, R = hp->n_rot;
    const int64_t LK = hp->n_lora_kv, QA = hp->n_lora_q, VM = hp->n_embd_head_v_mla;
    char what[64];
    int rc;
    if (l->k || l->v)
        return nf_errf_at(c->err, c->errlen, NF_EARCH, c->in,
                          "tensor '%s' is not used by architecture deepseek2 (not supported)",
                          (l->k ? l->k : l->v)->name.s);
    if (QA > 0) {
        NEED(q_a, 2, E, QA, 1);
        NEED(q_a_norm, 1, QA, 1, 1);
        NEED(q_b, 2, QA, H * K, 1);
    } else {
        NEED(q, 2, E, H * K, 1);
    }
    NEED(kv_a, 2, E, LK + R, 1);
    NEED(kv_a_norm, 1, LK, 1, 1);
    NEED(k_b, 3, K - R, LK, H);
    NEED(v_b, 3, LK, VM, H);
    NEED(o, 2, H * VM, E, 1);
    if (l->probs_b)
        NEED(probs_b, 1, hp->n_expert, 1, 1);
    return 0;
}

static int check_layer(struct conv *c, uint32_t il)
{
    struct layer_src *l = &c->L[il];
    int64_t n_embd = c->hdr.n_embd;
    char what[64];
    int rc;
    if ((rc = split_fused(c, il)) || (rc = check_gptoss(c, il)))
        return rc;
    NEED(attn_norm, 1, n_embd, 1, 1);
    if (c->hp.arch == NF_ARCH_DEEPSEEK2) {
        if ((rc = check_mla(c, il)))
            return rc;
    } else {
        /* (exp_probs_b is checked with the router: glm4moe has one too) */
        const struct nf_gguf_tensor *mla = l->q_a    ? l->q_a
                                           : l->kv_a ? l->kv_a
                                           : l->k_b  ? l->k_b
                                                     : NULL;
        if (mla)
            return nf_errf_at(c->err, c->errlen, NF_EARCH, c->in,
                              "tensor '%s' is not used by architecture %s (not supported)",
                              mla->name.s, nf_arch_name(c->hp.arch));
        NEED(q, 2, n_embd, -1, 1);
        NEED(k, 2, n_embd, -1, 1);
        NEED(v, 2, n_embd, l->k->ne[1], 1);
        NEED(o, 2, l->q->ne[1], n_embd, 1);
    }
    NEED(ffn_norm, 1, n_embd, 1, 1);
    /* The architecture's attention extras: required by it, refused without it. */
    const struct nf_gguf_tensor *extra =
        !c->hp.qkv_bias && (l->bq || l->bk || l->bv) ? (l->bq   ? l->bq
                                                        : l->bk ? l->bk
                                                                : l->bv)
        : !c->hp.qk_norm && (l->q_norm || l->k_norm) ? (l->q_norm ? l->q_norm : l->k_norm)
        : !c->hp.post_norms && (l->attn_post || l->ffn_post)
            ? (l->attn_post ? l->attn_post : l->ffn_post)
            : NULL;
    if (extra)
        return nf_errf_at(c->err, c->errlen, NF_EARCH, c->in,
                          "tensor '%s' is not used by architecture %s (not supported)",
                          extra->name.s, nf_arch_name(c->hp.arch));
    if (c->hp.qkv_bias) {
        NEED(bq, 1, l->q->ne[1], 1, 1);
        NEED(bk, 1, l->k->ne[1], 1, 1);
        NEED(bv, 1, l->v->ne[1], 1, 1);
    }
    if (c->hp.qk_norm) { /* per head, or over the whole projection (olmoe) */
        const bool full = c->hp.arch == NF_ARCH_OLMOE;
        NEED(q_norm, 1, full ? l->q->ne[1] : c->hp.head_dim, 1, 1);
        NEED(k_norm, 1, full ? l->k->ne[1] : c->hp.head_dim, 1, 1);
    }
    if (c->hp.post_norms) {
        NEED(attn_post, 1, n_embd, 1, 1);
        NEED(ffn_post, 1, n_embd, 1, 1);
    }
    if ((rc = check_shexp(c, il)))
        return rc;
    if (l->probs_b && c->hp.arch != NF_ARCH_DEEPSEEK2 && (!c->hp.moe_sigmoid || !l->gate_inp))
        return nf_errf_at(c->err, c->errlen, NF_EARCH, c->in,
                          "tensor '%s' is not used by architecture %s (not supported)",
                          l->probs_b->name.s, nf_arch_name(c->hp.arch));
    if (l->gate_inp || l->gate_exps || l->up_exps || l->down_exps) {
        if (l->gate || l->up || l->down)
            return nf_errf_at(c->err, c->errlen, NF_EARCH, c->in,
                              "layer %u has both dense and expert FFN tensors", il);
        /* The router has expert_count rows: a router of another count is named as the bad
         * tensor, not the experts that match the key (files without the key take the
         * tensors' count). */
        NEED(gate_inp, 2, n_embd, c->hp.n_expert > 0 ? c->hp.n_expert : -1, 1);
        int64_t n_exp = l->gate_inp->ne[1];
        NEED(gate_exps, 3, n_embd, -1, n_exp);
        int64_t n_ff = l->gate_exps->ne[1];
        NEED(up_exps, 3, n_embd, n_ff, n_exp);
        NEED(down_exps, 3, n_ff, n_embd, n_exp);
        if (c->hdr.n_expert && c->hdr.n_expert != n_exp)
            return nf_errf_at(c->err, c->errlen, NF_ESHAPE, c->in,
                              "layer %u has %" PRId64 " experts, expert_count is %u", il, n_exp,
                              c->hdr.n_expert);
        c->hdr.n_expert = (uint32_t)n_exp;
        c->hdr.n_ff = (uint32_t)n_ff;
        l->group = group_for(l->down_exps->type, n_ff);
        if (c->hp.moe_sigmoid) {
            NEED(probs_b, 1, n_exp, 1, 1);
            if (l->probs_b->type != NF_TYPE_F32)
                return nf_errf_at(c->err, c->errlen, NF_EBADTYPE, c->in, "tensor '%s' must be f32",
                                  l->probs_b->name.s);
        }
    } else {
        NEED(gate, 2, n_embd, -1, 1);
        int64_t n_ff = l->gate->ne[1];
        NEED(up, 2, n_embd, n_ff, 1);
        NEED(down, 2, n_ff, n_embd, 1);
        if (!c->hp.n_expert) /* a MoE model's (leading dense) layers keep the experts' n_ff */
            c->hdr.n_ff = (uint32_t)n_ff;
        l->group = group_for(l->down->type, n_ff);
        if (n_ff % l->group)
            return nf_errf_at(c->err, c->errlen, NF_ESHAPE, c->in,
                              "layer %u: n_ff %" PRId64 " is not a multiple of the group "
                              "size %u",
                              il, n_ff, l->group);
    }
#undef NEED
    return 0;
}

/* phi3's LongRoPE factors: both or neither, n_rot / 2 F32 each (what nf_model_load takes);
 * phi3 has no rope_freqs.weight (nf_model_load refuses it too), other architectures no factors. */
static int check_longrope(struct conv *c)
{
    int rc;
    if (c->hp.arch == NF_ARCH_PHI3 && c->rope)
        return nf_errf_at(c->err, c->errlen, NF_EARCH, c->in,
                          "tensor 'rope_freqs.weight' is not used by architecture phi3");
    if (!c->rope_short && !c->rope_long)
        return 0;
    if (c->hp.arch != NF_ARCH_PHI3)
        return nf_errf_at(c->err, c->errlen, NF_EARCH, c->in,
                          "tensor 'rope_factors_%s.weight' is not used by architecture %s",
                          c->rope_short ? "short" : "long", nf_arch_name(c->hp.arch));
    const int64_t half = c->hp.n_rot / 2;
    if ((rc = want_shape(c, c->rope_short, "rope_factors_short.weight", 1, half, 1, 1)) ||
        (rc = want_shape(c, c->rope_long, "rope_factors_long.weight", 1, half, 1, 1)))
        return rc;
    if (c->rope_short->type != NF_TYPE_F32 || c->rope_long->type != NF_TYPE_F32)
        return nf_errf_at(c->err, c->errlen, NF_EBADTYPE, c->in,
                          "the rope_factors tensors must be f32");
    return 0;
}

static int check_model(struct conv *c)
{
    /* The architecture and its hyperparameters as the engine will read them: a file the
     * engine would refuse is refused here, with the same message. */
    struct nf_hparams hp;
    int rc = nf_model_hparams(&hp, c->g, c->err, c->errlen);
    if (rc < 0)
        return rc;
    c->hp = hp;
    if (hp.n_layer > NF_NFT_MAX_LAYERS)
        return nf_errf_at(c->err, c->errlen, NF_ESHAPE, c->in, "%s.block_count is %d, at most %d",
                          nf_arch_name(hp.arch), hp.n_layer, NF_NFT_MAX_LAYERS);
    c->hdr.n_layer = (uint32_t)hp.n_layer;
    c->hdr.n_head = (uint32_t)hp.n_head;
    c->hdr.n_head_kv = (uint32_t)hp.n_head_kv;
    c->hdr.n_expert = (uint32_t)hp.n_expert;
    c->hdr.n_expert_used = (uint32_t)hp.n_expert_used;
    if (hp.n_expert)
        c->hdr.n_ff = (uint32_t)hp.n_ff;
    c->L = calloc(c->hdr.n_layer, sizeof(*c->L));
    if (!c->L)
        return nf_errf_at(c->err, c->errlen, -ENOMEM, c->in, "out of memory");
    for (uint64_t i = 0; i < c->g->n_tensors; i++)
        if ((rc = classify(c, &c->g->tensors[i])))
            return rc;
    if ((rc = want_shape(c, c->embd, "token_embd.weight", 2, -1, -1, 1)))
        return rc;
    c->hdr.n_embd = (uint32_t)c->embd->ne[0];
    c->hdr.n_vocab = (uint32_t)c->embd->ne[1];
    if ((rc = want_shape(c, c->out_norm, "output_norm.weight", 1, c->hdr.n_embd, 1, 1)))
        return rc;
    if (c->output &&
        (rc = want_shape(c, c->output, "output.weight", 2, c->hdr.n_embd, c->hdr.n_vocab, 1)))
        return rc;
    if (c->rope && (rc = want_shape(c, c->rope, "rope_freqs.weight", 1, -1, 1, 1)))
        return rc;
    if ((rc = check_longrope(c)))
        return rc;
    c->hdr.tied_output = c->output == NULL;
    for (uint32_t il = 0; il < c->hdr.n_layer; il++)
        if ((rc = check_layer(c, il)))
            return rc;
    for (uint64_t i = 0; i < c->g->n_tensors; i++) {
        unsigned layer;
        if (sscanf(c->g->tensors[i].name.s, "blk.%u.", &layer) == 1 && layer >= c->hdr.n_layer)
            continue; /* a skipped next-token-prediction block */
        c->hdr.weight_bytes += c->g->tensors[i].size;
    }
    return 0;
}

/* --- planning the tiles --- */

static int add_tile(struct conv *c, enum nf_tile_kind kind, uint32_t layer, uint32_t index,
                    uint32_t first, uint32_t count, uint32_t ne0, enum nf_type t0)
{
    if (c->n_tiles == c->cap) {
        uint64_t cap = c->cap ? c->cap * 2 : 1024;
        struct nf_nft_tile *nt = realloc(c->tiles, cap * sizeof(*nt));
        if (!nt)
            return nf_errf_at(c->err, c->errlen, -ENOMEM, c->in,
                              "out of memory for the tile index");
        c->tiles = nt;
        c->cap = cap;
    }
    struct nf_nft_tile *t = &c->tiles[c->n_tiles++];
    *t = (struct nf_nft_tile){.layer = layer,
                              .kind = (uint16_t)kind,
                              .index = index,
                              .expert = NF_NFT_NO_EXPERT,
                              .first = first,
                              .count = count,
                              .ne0 = ne0,
                              .type = {(uint8_t)t0}};
    return 0;
}

/* In-place index: tile t's bytes are src's from byte skip on (offset within its part). */
static void src_extent(struct conv *c, struct nf_nft_tile *t, const struct nf_gguf_tensor *src,
                       uint64_t skip)
{
    t->part = (uint16_t)src->part;
    t->offset = src->offset - c->g->parts[src->part].base + skip;
}

static bool in_place(const struct conv *c)
{
    return c->o && c->o->in_place;
}

/* Tiles of rows_per rows covering a 2-D tensor's rows. */
static int plan_rows(struct conv *c, enum nf_tile_kind kind, uint32_t layer,
                     const struct nf_gguf_tensor *t, uint64_t rows_per)
{
    uint64_t rows = (uint64_t)t->ne[1] * (uint64_t)t->ne[2]; /* a per-head tensor's heads too */
    if (rows_per == 0) {
        uint64_t row = nf_row_size(t->type, t->ne[0]);
        rows_per = c->tile_size / row ? c->tile_size / row : 1;
    }
    int rc;
    for (uint64_t r = 0, i = 0; r < rows; r += rows_per, i++) {
        uint64_t n = rows - r < rows_per ? rows - r : rows_per;
        if ((rc = add_tile(c, kind, layer, (uint32_t)i, (uint32_t)r, (uint32_t)n,
                           (uint32_t)t->ne[0], t->type)))
            return rc;
        if (in_place(c))
            src_extent(c, &c->tiles[c->n_tiles - 1], t, r * nf_row_size(t->type, t->ne[0]));
    }
    return 0;
}

/* In-place index: the FFN of one dense layer or shared expert (expert == NF_NFT_NO_EXPERT) as row
 * slices of about tile_size bytes of ffn_gate, then ffn_up, then ffn_down; or one expert as three
 * tiles, its whole slices of ffn_gate_exps, ffn_up_exps and ffn_down_exps (each contiguous in the
 * GGUF). */
static int plan_slices(struct conv *c, uint32_t il, uint32_t expert, uint32_t *index)
{
    const struct layer_src *l = &c->L[il];
    bool moe = expert != NF_NFT_NO_EXPERT;
    const struct nf_gguf_tensor *src[3] = {moe ? l->gate_exps : ffn_src(l, 0),
                                           moe ? l->up_exps : ffn_src(l, 1),
                                           moe ? l->down_exps : ffn_src(l, 2)};
    for (int k = 0; k < 3; k++) {
        const struct nf_gguf_tensor *t = src[k];
        uint64_t row = nf_row_size(t->type, t->ne[0]), rows = (uint64_t)t->ne[1];
        uint64_t per = moe ? rows : (c->tile_size / row ? c->tile_size / row : 1);
        for (uint64_t r = 0; r < rows; r += per) {
            uint64_t n = rows - r < per ? rows - r : per;
            int rc = add_tile(c, moe ? NF_TILE_EXPERT : NF_TILE_FFN, il, (*index)++, (uint32_t)r,
                              (uint32_t)n, (uint32_t)t->ne[0], t->type);
            if (rc)
                return rc;
            struct nf_nft_tile *nt = &c->tiles[c->n_tiles - 1];
            nt->expert = expert;
            nt->group = (uint32_t)n; /* one unit per tile for the used bitmaps */
            nt->type[3] = (uint8_t)(NF_SLICE_GATE + k);
            src_extent(c, nt, t, (moe ? row * rows * expert : 0) + r * row);
        }
    }
    return 0;
}

/* Bundle tiles of one dense layer or shared expert (expert == NF_NFT_NO_EXPERT) or one
 * expert. */
static int plan_bundles(struct conv *c, uint32_t il, uint32_t expert, uint32_t *index)
{
    const struct layer_src *l = &c->L[il];
    bool moe = expert != NF_NFT_NO_EXPERT;
    const struct nf_gguf_tensor *g = moe ? l->gate_exps : ffn_src(l, 0),
                                *u = moe ? l->up_exps : ffn_src(l, 1);
    const struct nf_gguf_tensor *d = moe ? l->down_exps : ffn_src(l, 2);
    uint32_t G = moe || l->gate ? l->group : l->group_sh, n_ff = (uint32_t)g->ne[1],
             n_embd = c->hdr.n_embd;
    uint64_t per = (uint64_t)G * (nf_row_size(g->type, n_embd) + nf_row_size(u->type, n_embd)) +
                   (uint64_t)n_embd * nf_row_size(d->type, G);
    uint64_t groups_per = c->tile_size / per ? c->tile_size / per : 1;
    uint32_t n_groups = n_ff / G;
    for (uint32_t gi = 0; gi < n_groups; gi += (uint32_t)groups_per) {
        uint32_t n = n_groups - gi < groups_per ? n_groups - gi : (uint32_t)groups_per;
        int rc = add_tile(c, moe ? NF_TILE_EXPERT : NF_TILE_FFN, il, (*index)++, gi * G, n * G,
                          n_embd, g->type);
        if (rc)
            return rc;
        struct nf_nft_tile *t = &c->tiles[c->n_tiles - 1];
        t->expert = expert;
        t->group = G;
        t->type[1] = (uint8_t)u->type;
        t->type[2] = (uint8_t)d->type;
    }
    return 0;
}

/* Embedding rows per tile: the fewest rows whose padded tile wastes at most 1/8, within
 * NF_NFT_EMBD_TILE_MAX; else the least wasteful count in that range. */
static uint32_t embd_rows_per_tile(uint64_t row)
{
    uint32_t best = 1;
    double best_waste = 2;
    for (uint32_t n = 1; n <= 1024; n++) {
        uint64_t b = row * n;
        if (n > 1 && b > NF_NFT_EMBD_TILE_MAX)
            break;
        double waste = (double)(nf_nft_padded(b) - b) / (double)b;
        if (waste <= 0.125)
            return n;
        if (waste < best_waste) {
            best_waste = waste;
            best = n;
        }
    }
    return best;
}

/* Rows per tile of a per-head tensor (head_rows rows a head): whole heads, about tile_size
 * bytes, one head at least. */
static uint64_t head_rows_per(const struct conv *c, const struct nf_gguf_tensor *t)
{
    const uint64_t head = nf_row_size(t->type, t->ne[0]) * (uint64_t)t->ne[1];
    return (c->tile_size / head ? c->tile_size / head : 1) * (uint64_t)t->ne[1];
}

/* deepseek2's latent attention tiles, in the order compute uses them. */
static int plan_mla(struct conv *c, uint32_t il)
{
    const struct layer_src *l = &c->L[il];
    int rc;
    if ((l->q_a && ((rc = plan_rows(c, NF_TILE_ATTN_Q_A, il, l->q_a, 0)) ||
                    (rc = plan_rows(c, NF_TILE_ATTN_Q_A_NORM, il, l->q_a_norm, 1)) ||
                    (rc = plan_rows(c, NF_TILE_ATTN_Q_B, il, l->q_b, 0)))) ||
        (rc = plan_rows(c, NF_TILE_ATTN_KV_A, il, l->kv_a, 0)) ||
        (rc = plan_rows(c, NF_TILE_ATTN_KV_A_NORM, il, l->kv_a_norm, 1)) ||
        (rc = plan_rows(c, NF_TILE_ATTN_K_B, il, l->k_b, head_rows_per(c, l->k_b))) ||
        (rc = plan_rows(c, NF_TILE_ATTN_V_B, il, l->v_b, head_rows_per(c, l->v_b))))
        return rc;
    return 0;
}

static int plan(struct conv *c)
{
    int rc;
    const struct nf_nft_header *h = &c->hdr;
    c->hdr.embd_rows_per_tile = embd_rows_per_tile(nf_row_size(c->embd->type, h->n_embd));
    if ((rc = plan_rows(c, NF_TILE_EMBD, NF_NFT_NO_LAYER, c->embd, h->embd_rows_per_tile)))
        return rc;
    for (uint32_t il = 0; il < h->n_layer; il++) {
        const struct layer_src *l = &c->L[il];
        if ((rc = plan_rows(c, NF_TILE_ATTN_NORM, il, l->attn_norm, 1)) ||
            (l->q && (rc = plan_rows(c, NF_TILE_ATTN_Q, il, l->q, 0))) ||
            (l->k && (rc = plan_rows(c, NF_TILE_ATTN_K, il, l->k, 0))) ||
            (l->v && (rc = plan_rows(c, NF_TILE_ATTN_V, il, l->v, 0))) ||
            (l->kv_a && (rc = plan_mla(c, il))) ||
            (rc = plan_rows(c, NF_TILE_ATTN_O, il, l->o, 0)) ||
            (l->bq && (rc = plan_rows(c, NF_TILE_ATTN_Q_BIAS, il, l->bq, 1))) ||
            (l->bk && (rc = plan_rows(c, NF_TILE_ATTN_K_BIAS, il, l->bk, 1))) ||
            (l->bv && (rc = plan_rows(c, NF_TILE_ATTN_V_BIAS, il, l->bv, 1))) ||
            (l->q_norm && (rc = plan_rows(c, NF_TILE_ATTN_Q_NORM, il, l->q_norm, 1))) ||
            (l->k_norm && (rc = plan_rows(c, NF_TILE_ATTN_K_NORM, il, l->k_norm, 1))) ||
            (l->attn_post && (rc = plan_rows(c, NF_TILE_ATTN_POST_NORM, il, l->attn_post, 1))) ||
            (l->ffn_post && (rc = plan_rows(c, NF_TILE_FFN_POST_NORM, il, l->ffn_post, 1))) ||
            (l->bo && (rc = plan_rows(c, NF_TILE_ATTN_O_BIAS, il, l->bo, 1))) ||
            (l->sinks && (rc = plan_rows(c, NF_TILE_ATTN_SINKS, il, l->sinks, 1))) ||
            (rc = plan_rows(c, NF_TILE_FFN_NORM, il, l->ffn_norm, 1)) ||
            (l->probs_b && c->hp.arch == NF_ARCH_DEEPSEEK2 && /* glm4moe's: after its router */
             (rc = plan_rows(c, NF_TILE_EXP_PROBS_B, il, l->probs_b, 1))))
            return rc;
        uint32_t index = 0;
        if (l->gate_sh) { /* the shared expert first: compute runs it before the router */
            uint32_t sh_index = 0;
            if ((l->gate_inp_sh && /* glm4moe's shared expert is ungated */
                 (rc = plan_rows(c, NF_TILE_SHEXP_GATE, il, l->gate_inp_sh, 1))) ||
                (rc = in_place(c) ? plan_slices(c, il, NF_NFT_NO_EXPERT, &sh_index)
                                  : plan_bundles(c, il, NF_NFT_NO_EXPERT, &sh_index)))
                return rc;
        }
        if (l->gate_inp) {
            if ((rc = plan_rows(c, NF_TILE_ROUTER, il, l->gate_inp, UINT32_MAX)) ||
                (rc = plan_rows(c, NF_TILE_PRED_ROUTER, il, l->gate_inp, UINT32_MAX)) ||
                (l->probs_b && c->hp.arch != NF_ARCH_DEEPSEEK2 &&
                 (rc = plan_rows(c, NF_TILE_EXP_PROBS_B, il, l->probs_b, 1))))
                return rc;
            /* gpt-oss: the router's bias, then the experts' bias rows, before the experts. */
            if (l->gate_inp_b &&
                ((rc = plan_rows(c, NF_TILE_ROUTER_BIAS, il, l->gate_inp_b, 1)) ||
                 (rc = plan_rows(c, NF_TILE_EXP_GATE_BIAS, il, l->gate_exps_b, 0)) ||
                 (rc = plan_rows(c, NF_TILE_EXP_UP_BIAS, il, l->up_exps_b, 0)) ||
                 (rc = plan_rows(c, NF_TILE_EXP_DOWN_BIAS, il, l->down_exps_b, 0))))
                return rc;
            for (uint32_t e = 0; e < h->n_expert; e++)
                if ((rc = in_place(c) ? plan_slices(c, il, e, &index)
                                      : plan_bundles(c, il, e, &index)))
                    return rc;
        } else if (in_place(c) || h->n_expert) {
            /* In a MoE model a (leading dense) layer has no low-rank predictor: sparse mode is
             * for dense models. */
            if ((rc = in_place(c) ? plan_slices(c, il, NF_NFT_NO_EXPERT, &index)
                                  : plan_bundles(c, il, NF_NFT_NO_EXPERT, &index)))
                return rc;
        } else {
            if ((rc = add_tile(c, NF_TILE_PRED_LOWRANK, il, 0, 0, (uint32_t)l->gate->ne[1],
                               h->n_embd, c->pred_type)))
                return rc;
            c->tiles[c->n_tiles - 1].rank = (uint32_t)c->rank;
            if ((rc = plan_bundles(c, il, NF_NFT_NO_EXPERT, &index)))
                return rc;
        }
    }
    if ((rc = plan_rows(c, NF_TILE_OUTPUT_NORM, NF_NFT_NO_LAYER, c->out_norm, 1)))
        return rc;
    if (c->output && (rc = plan_rows(c, NF_TILE_OUTPUT, NF_NFT_NO_LAYER, c->output, 0)))
        return rc;
    if (c->rope && (rc = plan_rows(c, NF_TILE_ROPE_FREQS, NF_NFT_NO_LAYER, c->rope, 1)))
        return rc;
    /* phi3 LongRoPE: rows 0 (short) and 1 (long) of ROPE_FREQS, one tile each. */
    if (c->rope_short) {
        const struct nf_gguf_tensor *f[2] = {c->rope_short, c->rope_long};
        for (uint32_t i = 0; i < 2; i++) {
            if ((rc = add_tile(c, NF_TILE_ROPE_FREQS, NF_NFT_NO_LAYER, i, i, 1,
                               (uint32_t)f[i]->ne[0], NF_TYPE_F32)))
                return rc;
            if (in_place(c))
                src_extent(c, &c->tiles[c->n_tiles - 1], f[i], 0);
        }
    }
    for (uint64_t i = 0; i < c->n_tiles; i++) {
        struct nf_nft_tile *t = &c->tiles[i];
        t->size = nf_nft_tile_bytes(t);
        if (t->size == 0)
            return nf_errf_at(c->err, c->errlen, NF_ESHAPE, c->in,
                              "tile %" PRIu64 " (%s) has an invalid shape", i,
                              nf_tile_kind_name((enum nf_tile_kind)t->kind));
        if (t->kind == NF_TILE_PRED_LOWRANK || t->kind == NF_TILE_PRED_ROUTER)
            c->hdr.predictor_bytes += t->size;
        c->total += t->size;
    }
    return 0;
}

/* --- writing --- */

static int ensure_buf(struct conv *c, uint64_t need)
{
    need = nf_nft_padded(need);
    if (need <= c->buf_cap)
        return 0;
    free(c->buf);
    c->buf = NULL;
    c->buf_cap = 0;
    if (posix_memalign(&c->buf, NF_NFT_ALIGN, (size_t)need))
        return nf_errf_at(c->err, c->errlen, -ENOMEM, c->in,
                          "out of memory for a %" PRIu64 "-byte tile", need);
    c->buf_cap = (size_t)need;
    return 0;
}

static int write_all(struct conv *c, const void *p, size_t len, uint64_t off)
{
    const uint8_t *b = p;
    while (len) {
        ssize_t n = pwrite(c->fd, b, len, (off_t)off);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            return nf_errf_at(c->err, c->errlen, -errno, c->in,
                              "writing %s at offset %" PRIu64 ": %s", c->tmp, off, strerror(errno));
        }
        b += n;
        len -= (size_t)n;
        off += (uint64_t)n;
    }
    return 0;
}

/* Checksums the tile now in c->buf (zero-padded) and writes it. */
static int emit(struct conv *c, struct nf_nft_tile *t)
{
    uint64_t padded = nf_nft_padded(t->size);
    memset((uint8_t *)c->buf + t->size, 0, (size_t)(padded - t->size));
    t->checksum = XXH3_64bits(c->buf, (size_t)padded);
    int rc = write_all(c, c->buf, (size_t)padded, t->offset);
    c->done += t->size;
    return rc;
}

/* Refuses bytes [off, off + len) of the source, whole blocks of one tensor, when they hold
 * what no kernel may meet (an mxfp4 block with the NaN exponent 0xFF), naming the tensor. */
static int check_blocks(struct conv *c, const void *buf, size_t len, uint64_t off)
{
    const struct nf_gguf *g = c->g;
    if (!c->checked) {
        c->checked = 1;
        for (uint64_t i = 0; i < g->n_tensors; i++)
            if (g->tensors[i].type == NF_TYPE_MXFP4)
                c->checked = 2;
    }
    for (uint64_t i = 0; c->checked == 2 && i < g->n_tensors; i++) {
        const struct nf_gguf_tensor *t = &g->tensors[i];
        if (t->type != NF_TYPE_MXFP4 || off < t->offset || off >= t->offset + t->size)
            continue;
        const size_t bs = nf_type_traits(t->type)->type_size;
        int64_t bad;
        if (nf_blocks_check(t->type, buf, (int64_t)(len / bs) * NF_QK4_0, &bad))
            return nf_errf_at(c->err, c->errlen, NF_ECORRUPT, c->in,
                              "tensor '%s': mxfp4 block %" PRIu64
                              " has the exponent 0xFF (NaN in E8M0)",
                              t->name.s, (off - t->offset) / bs + (uint64_t)bad);
        return 0;
    }
    return 0;
}

static int src_read(struct conv *c, void *dst, size_t len, uint64_t off)
{
    int rc = nf_gguf_pread(c->g, dst, len, off);
    return rc ? nf_errf_at(c->err, c->errlen, rc, c->in,
                           "reading %zu bytes at offset %" PRIu64 ": %s", len, off, nf_strerror(rc))
              : check_blocks(c, dst, len, off);
}

/* Writes a row tile of tensor src (its rows [first, first + count)). */
static int write_rows(struct conv *c, struct nf_nft_tile *t, const struct nf_gguf_tensor *src)
{
    int rc;
    uint64_t row = nf_row_size(src->type, src->ne[0]);
    if ((rc = ensure_buf(c, t->size)) ||
        (rc = src_read(c, c->buf, (size_t)t->size, src->offset + row * t->first)))
        return rc;
    return emit(c, t);
}

/* Writes a LongRoPE factor tile: row 0 is rope_factors_short, row 1 rope_factors_long. */
static int write_longrope(struct conv *c, struct nf_nft_tile *t)
{
    const struct nf_gguf_tensor *src = t->first ? c->rope_long : c->rope_short;
    int rc;
    if ((rc = ensure_buf(c, t->size)) || (rc = src_read(c, c->buf, (size_t)t->size, src->offset)))
        return rc;
    return emit(c, t);
}

/* Writes a bundle tile; down is the layer's (or expert's) whole ffn_down, (n_embd, n_ff). */
static int write_bundle(struct conv *c, struct nf_nft_tile *t, const struct layer_src *l,
                        const uint8_t *down)
{
    bool moe = t->kind == NF_TILE_EXPERT;
    const struct nf_gguf_tensor *g = moe ? l->gate_exps : ffn_src(l, 0),
                                *u = moe ? l->up_exps : ffn_src(l, 1);
    const struct nf_gguf_tensor *d = moe ? l->down_exps : ffn_src(l, 2);
    uint64_t n_ff = (uint64_t)g->ne[1], n_embd = t->ne0, G = t->group;
    uint64_t grs = nf_row_size(g->type, (int64_t)n_embd),
             urs = nf_row_size(u->type, (int64_t)n_embd);
    uint64_t drs_full = nf_row_size(d->type, (int64_t)n_ff), drs = nf_row_size(d->type, (int64_t)G);
    uint64_t e = moe ? t->expert : 0;
    int rc;
    if ((rc = ensure_buf(c, t->size)))
        return rc;
    uint8_t *p = c->buf;
    for (uint64_t n0 = t->first; n0 < (uint64_t)t->first + t->count; n0 += G) {
        uint64_t gate_off = g->offset + (e * n_ff + n0) * grs;
        uint64_t up_off = u->offset + (e * n_ff + n0) * urs;
        if ((rc = src_read(c, p, (size_t)(G * grs), gate_off)) ||
            (rc = src_read(c, p + G * grs, (size_t)(G * urs), up_off)))
            return rc;
        p += G * (grs + urs);
        uint64_t col = n0 / G * drs; /* byte offset of this group's blocks in a down row */
        for (uint64_t r = 0; r < n_embd; r++, p += drs)
            memcpy(p, down + r * drs_full + col, (size_t)drs);
    }
    return emit(c, t);
}

/* Fits and writes a layer's low-rank predictor tile. */
static int write_predictor(struct conv *c, struct nf_nft_tile *t, const struct layer_src *l)
{
    int64_t m = l->gate->ne[1], n = l->gate->ne[0];
    uint8_t *w = malloc((size_t)l->gate->size);
    float *A = malloc((size_t)m * t->rank * sizeof(float));
    float *B = malloc((size_t)n * t->rank * sizeof(float));
    int rc = -ENOMEM;
    if (!w || !A || !B) {
        nf_errf_at(c->err, c->errlen, rc, c->in, "out of memory for the predictor of layer %u",
                   t->layer);
        goto out;
    }
    if ((rc = src_read(c, w, (size_t)l->gate->size, l->gate->offset)))
        goto out;
    rc = nf_lowrank_fit(w, l->gate->type, nf_row_size(l->gate->type, n), m, n, (int)t->rank, 1,
                        0x9E3779B97F4A7C15ull ^ t->layer, A, B);
    if (rc) {
        nf_errf_at(c->err, c->errlen, rc, c->in, "predictor of layer %u: %s", t->layer,
                   nf_strerror(rc));
        goto out;
    }
    if ((rc = ensure_buf(c, t->size)))
        goto out;
    size_t na = (size_t)m * t->rank, nb = (size_t)n * t->rank;
    if (t->type[0] == NF_TYPE_F32) {
        memcpy(c->buf, A, na * sizeof(float));
        memcpy((float *)c->buf + na, B, nb * sizeof(float));
    } else {
        nf_fp16_t *h = c->buf;
        for (size_t i = 0; i < na; i++)
            h[i] = nf_fp32_to_fp16(A[i]);
        for (size_t i = 0; i < nb; i++)
            h[na + i] = nf_fp32_to_fp16(B[i]);
    }
    rc = emit(c, t);
out:
    free(w);
    free(A);
    free(B);
    return rc;
}

static void progress(struct conv *c, const char *what)
{
    if (c->o && c->o->progress)
        c->o->progress(c->o->progress_ud, c->done, c->total, what);
}

/* Drops the pages of the source and of what is already written from the page cache, so the
 * converter's footprint (which a memory cgroup charges, page cache included) stays small. */
static void drop_caches(struct conv *c)
{
    fdatasync(c->fd);
    posix_fadvise(c->fd, 0, 0, POSIX_FADV_DONTNEED);
    for (uint32_t i = 0; i < c->g->n_parts; i++) /* every file of a split source */
        posix_fadvise(c->g->parts[i].fd, 0, 0, POSIX_FADV_DONTNEED);
}

static int write_tiles(struct conv *c)
{
    uint8_t *down = NULL;
    uint32_t down_layer = UINT32_MAX, down_expert = UINT32_MAX;
    int rc = 0;
    char what[64];
    for (uint64_t i = 0; i < c->n_tiles && !rc; i++) {
        struct nf_nft_tile *t = &c->tiles[i];
        const struct layer_src *l = t->layer == NF_NFT_NO_LAYER ? NULL : &c->L[t->layer];
        if (i > 0 && t->layer != c->tiles[i - 1].layer) {
            snprintf(what, sizeof(what), t->layer == NF_NFT_NO_LAYER ? "output" : "layer %u/%u",
                     t->layer + 1, c->hdr.n_layer);
            progress(c, what);
            drop_caches(c);
        }
        switch ((enum nf_tile_kind)t->kind) {
        case NF_TILE_EMBD: rc = write_rows(c, t, c->embd); break;
        case NF_TILE_OUTPUT: rc = write_rows(c, t, c->output); break;
        case NF_TILE_OUTPUT_NORM: rc = write_rows(c, t, c->out_norm); break;
        case NF_TILE_ROPE_FREQS:
            rc = c->rope ? write_rows(c, t, c->rope) : write_longrope(c, t);
            break;
        case NF_TILE_ATTN_NORM: rc = write_rows(c, t, l->attn_norm); break;
        case NF_TILE_ATTN_Q: rc = write_rows(c, t, l->q); break;
        case NF_TILE_ATTN_K: rc = write_rows(c, t, l->k); break;
        case NF_TILE_ATTN_V: rc = write_rows(c, t, l->v); break;
        case NF_TILE_ATTN_O: rc = write_rows(c, t, l->o); break;
        case NF_TILE_FFN_NORM: rc = write_rows(c, t, l->ffn_norm); break;
        case NF_TILE_ATTN_Q_BIAS: rc = write_rows(c, t, l->bq); break;
        case NF_TILE_ATTN_K_BIAS: rc = write_rows(c, t, l->bk); break;
        case NF_TILE_ATTN_V_BIAS: rc = write_rows(c, t, l->bv); break;
        case NF_TILE_ATTN_Q_NORM: rc = write_rows(c, t, l->q_norm); break;
        case NF_TILE_ATTN_K_NORM: rc = write_rows(c, t, l->k_norm); break;
        case NF_TILE_ATTN_POST_NORM: rc = write_rows(c, t, l->attn_post); break;
        case NF_TILE_FFN_POST_NORM: rc = write_rows(c, t, l->ffn_post); break;
        case NF_TILE_SHEXP_GATE: rc = write_rows(c, t, l->gate_inp_sh); break;
        case NF_TILE_ATTN_O_BIAS: rc = write_rows(c, t, l->bo); break;
        case NF_TILE_ATTN_SINKS: rc = write_rows(c, t, l->sinks); break;
        case NF_TILE_ROUTER_BIAS: rc = write_rows(c, t, l->gate_inp_b); break;
        case NF_TILE_EXP_GATE_BIAS: rc = write_rows(c, t, l->gate_exps_b); break;
        case NF_TILE_EXP_UP_BIAS: rc = write_rows(c, t, l->up_exps_b); break;
        case NF_TILE_EXP_DOWN_BIAS: rc = write_rows(c, t, l->down_exps_b); break;
        case NF_TILE_ATTN_Q_A: rc = write_rows(c, t, l->q_a); break;
        case NF_TILE_ATTN_Q_A_NORM: rc = write_rows(c, t, l->q_a_norm); break;
        case NF_TILE_ATTN_Q_B: rc = write_rows(c, t, l->q_b); break;
        case NF_TILE_ATTN_KV_A: rc = write_rows(c, t, l->kv_a); break;
        case NF_TILE_ATTN_KV_A_NORM: rc = write_rows(c, t, l->kv_a_norm); break;
        case NF_TILE_ATTN_K_B: rc = write_rows(c, t, l->k_b); break;
        case NF_TILE_ATTN_V_B: rc = write_rows(c, t, l->v_b); break;
        case NF_TILE_EXP_PROBS_B: rc = write_rows(c, t, l->probs_b); break;
        case NF_TILE_ROUTER:
        case NF_TILE_PRED_ROUTER: rc = write_rows(c, t, l->gate_inp); break;
        case NF_TILE_PRED_LOWRANK: rc = write_predictor(c, t, l); break;
        case NF_TILE_FFN:
        case NF_TILE_EXPERT: {
            /* Only one layer's (or one expert's) ffn_down is held at a time. */
            uint32_t e = t->kind == NF_TILE_EXPERT ? t->expert : 0;
            /* (a MoE layer's FFN tiles, its shared expert, have their own ffn_down) */
            uint32_t key = t->kind == NF_TILE_EXPERT ? t->expert : NF_NFT_NO_EXPERT;
            if (down_layer != t->layer || down_expert != key) {
                const struct nf_gguf_tensor *d =
                    t->kind == NF_TILE_EXPERT ? l->down_exps : ffn_src(l, 2);
                uint64_t bytes = nf_row_size(d->type, d->ne[0]) * (uint64_t)d->ne[1];
                free(down);
                down = malloc((size_t)bytes);
                if (!down) {
                    rc = nf_errf_at(c->err, c->errlen, -ENOMEM, c->in,
                                    "out of memory for %" PRIu64 " bytes of ffn_down", bytes);
                    break;
                }
                if ((rc = src_read(c, down, (size_t)bytes, d->offset + bytes * e)))
                    break;
                down_layer = t->layer;
                down_expert = key;
            }
            rc = write_bundle(c, t, l, down);
            break;
        }
        case NF_TILE_KIND_COUNT:
            rc = nf_errf_at(c->err, c->errlen, NF_ECORRUPT, c->in, "bad tile kind");
            break;
        }
    }
    free(down);
    return rc;
}

/* In-place index: the source files' absolute paths, sizes and mtimes (ns), which the reader
 * opens and checks (nf_nft_open: a changed part makes the index stale). */
static int add_sources(struct conv *c, struct nf_gguf_writer *w)
{
    uint32_t n = c->g->n_parts;
    char(*paths)[PATH_MAX] = calloc(n, sizeof(*paths));
    const char **names = calloc(n, sizeof(*names));
    uint64_t *sizes = calloc(n, sizeof(*sizes)), *mtimes = calloc(n, sizeof(*mtimes));
    int rc = 0;
    if (!paths || !names || !sizes || !mtimes)
        rc = nf_errf_at(c->err, c->errlen, -ENOMEM, c->in, "out of memory");
    for (uint32_t i = 0; i < n && !rc; i++) {
        struct stat st;
        const struct nf_gguf_part *p = &c->g->parts[i];
        if (!realpath(p->path, paths[i]) || fstat(p->fd, &st) != 0)
            rc = nf_errf_at(c->err, c->errlen, -errno, c->in, "%s: %s", p->path, strerror(errno));
        names[i] = paths[i];
        sizes[i] = (uint64_t)st.st_size;
        mtimes[i] = (uint64_t)st.st_mtim.tv_sec * 1000000000ull + (uint64_t)st.st_mtim.tv_nsec;
    }
    if (!rc &&
        ((rc = nf_gguf_writer_add_arr_str(w, "nanoflow.source.paths", names, NULL, n)) ||
         (rc = nf_gguf_writer_add_arr(w, "nanoflow.source.sizes", NF_GGUF_UINT64, sizes, n)) ||
         (rc = nf_gguf_writer_add_arr(w, "nanoflow.source.mtimes_ns", NF_GGUF_UINT64, mtimes, n))))
        nf_errf_at(c->err, c->errlen, rc, c->in, "recording the source files: %s", nf_strerror(rc));
    free(paths);
    free(names);
    free(sizes);
    free(mtimes);
    return rc;
}

/* In-place index: each tile's XXH3-64 over its bytes in the source, reading the source once in
 * file order, one tile at a time (a PRED_ROUTER names its ROUTER's bytes and copies its sum). */
static int cmp_src(const void *a, const void *b)
{
    const struct nf_nft_tile *x = *(const struct nf_nft_tile *const *)a;
    const struct nf_nft_tile *y = *(const struct nf_nft_tile *const *)b;
    if (x->part != y->part)
        return x->part < y->part ? -1 : 1;
    return x->offset < y->offset ? -1 : x->offset > y->offset;
}

static int hash_tiles(struct conv *c)
{
    struct nf_nft_tile **order = malloc(c->n_tiles * sizeof(*order));
    if (!order)
        return nf_errf_at(c->err, c->errlen, -ENOMEM, c->in, "out of memory");
    for (uint64_t i = 0; i < c->n_tiles; i++)
        order[i] = &c->tiles[i];
    qsort(order, c->n_tiles, sizeof(*order), cmp_src);
    int rc = 0;
    uint64_t since_drop = 0;
    char what[64];
    for (uint64_t i = 0; i < c->n_tiles && !rc; i++) {
        struct nf_nft_tile *t = order[i];
        const struct nf_nft_tile *p = i ? order[i - 1] : NULL;
        if (p && p->part == t->part && p->offset == t->offset && p->size == t->size) {
            t->checksum = p->checksum; /* the router and its predictor copy */
            c->done += t->size;
            continue;
        }
        if ((rc = ensure_buf(c, t->size)))
            break;
        if ((rc = src_read(c, c->buf, (size_t)t->size, c->g->parts[t->part].base + t->offset)))
            break;
        t->checksum = XXH3_64bits(c->buf, (size_t)t->size);
        c->done += t->size;
        if ((since_drop += t->size) >= (64u << 20)) {
            since_drop = 0;
            drop_caches(c);
            snprintf(what, sizeof(what), "part %u/%u", (unsigned)t->part + 1, c->g->n_parts);
            progress(c, what);
        }
    }
    free(order);
    return rc;
}

/* The metadata image: every key of the source and its tensor infos, no tensor data. */
static int build_meta(struct conv *c, void **img, size_t *len)
{
    struct nf_gguf_writer *w;
    int rc = nf_gguf_writer_init(&w);
    if (rc)
        return nf_errf_at(c->err, c->errlen, rc, c->in, "out of memory");
    for (uint64_t i = 0; i < c->g->n_kv && !rc; i++) {
        const struct nf_gguf_kv *kv = &c->g->kv[i];
        if ((rc = nf_gguf_writer_add_value(w, kv->key.s, &kv->value)))
            nf_errf_at(c->err, c->errlen, rc, c->in, "copying metadata key '%s': %s", kv->key.s,
                       nf_strerror(rc));
    }
    if (!rc && in_place(c))
        rc = add_sources(c, w);
    for (uint64_t i = 0; i < c->g->n_tensors && !rc; i++) {
        const struct nf_gguf_tensor *t = &c->g->tensors[i];
        if ((rc = nf_gguf_writer_add_tensor(w, t->name.s, t->n_dims, t->ne, t->type, NULL)))
            nf_errf_at(c->err, c->errlen, rc, c->in, "copying tensor info '%s': %s", t->name.s,
                       nf_strerror(rc));
    }
    if (!rc && (rc = nf_gguf_writer_header(w, img, len)))
        nf_errf_at(c->err, c->errlen, rc, c->in, "serializing the metadata: %s", nf_strerror(rc));
    nf_gguf_writer_free(w);
    return rc;
}

/* Creates the temporary file from the template tmp ("OUT.tmp-XXXXXX", rewritten with the name
 * made) and locks it: the flock is held until the descriptor closes or the process dies, so
 * nf_nft_tmp_sweep leaves alone a file whose writer still runs. A sweep by another converter
 * that came between mkstemp and flock has unlinked the file: then another is made. Returns the
 * descriptor or a negative errno. */
static int tmp_create(char *tmp)
{
    size_t n = strlen(tmp);
    for (int tries = 0;; tries++) {
        memcpy(tmp + n - 6, "XXXXXX", 6);
        int fd = mkstemp(tmp);
        if (fd < 0)
            return -errno;
        struct stat st;
        if (flock(fd, LOCK_EX) == 0 && fstat(fd, &st) == 0 && (st.st_nlink > 0 || tries == 3))
            return fd;
        close(fd);
        if (tries == 3)
            return -EAGAIN;
    }
}

/* convert --calibrate: the temporary file is a complete .nft now; runs the model in it over the
 * text and appends the calibration section after the last tile, then rewrites the header (page
 * is its 4096-byte buffer). */
static int add_calibration(struct conv *c, void *page)
{
    progress(c, "calibrating");
    void *img = NULL;
    size_t len = 0;
    char msg[512];
    fsync(c->fd);
    int rc = nf_nft_calib_build(c->tmp, c->o->calib_text, c->o->calib_levels, c->o->calib_n_levels,
                                c->o->calib_max_tokens, c->o->calib_threads, &img, &len, msg,
                                sizeof(msg));
    if (rc)
        return nf_errf_at(c->err, c->errlen, rc, c->in, "calibration: %s", msg);
    struct nf_nft_header *h = &c->hdr;
    void *buf = NULL;
    if (posix_memalign(&buf, NF_NFT_ALIGN, nf_nft_padded(len))) {
        free(img);
        return nf_errf_at(c->err, c->errlen, -ENOMEM, c->in, "out of memory");
    }
    memset(buf, 0, nf_nft_padded(len));
    memcpy(buf, img, len);
    h->calib_offset = h->file_size;
    h->calib_size = len;
    h->calib_checksum = XXH3_64bits(img, len);
    h->calib_levels = ((const struct nf_nft_calib_header *)img)->n_levels;
    h->file_size += nf_nft_padded(len);
    h->header_checksum = XXH3_64bits(h, offsetof(struct nf_nft_header, header_checksum));
    memset(page, 0, NF_NFT_ALIGN);
    memcpy(page, h, sizeof(*h));
    if (!(rc = write_all(c, buf, nf_nft_padded(len), h->calib_offset)))
        rc = write_all(c, page, NF_NFT_ALIGN, 0);
    free(buf);
    free(img);
    return rc;
}

static int write_file(struct conv *c, const char *out)
{
    void *meta = NULL, *page = NULL;
    size_t meta_len = 0;
    int rc = build_meta(c, &meta, &meta_len);
    if (rc)
        return rc;
    struct nf_nft_header *h = &c->hdr;
    h->meta_offset = NF_NFT_ALIGN;
    h->meta_size = meta_len;
    h->meta_checksum = XXH3_64bits(meta, meta_len);
    h->index_offset = h->meta_offset + nf_nft_padded(meta_len);
    h->n_tiles = c->n_tiles;
    h->data_offset = h->index_offset + nf_nft_padded(c->n_tiles * sizeof(struct nf_nft_tile));
    uint64_t off = h->data_offset;
    for (uint64_t i = 0; i < c->n_tiles && !in_place(c); i++) {
        c->tiles[i].offset = off;
        off += nf_nft_padded(c->tiles[i].size);
    }
    h->file_size = off;

    /* Refuse early when the disk cannot hold the file. */
    char dirbuf[PATH_MAX];
    snprintf(dirbuf, sizeof(dirbuf), "%s", out);
    const char *dir = dirname(dirbuf);
    struct statvfs vfs;
    if (statvfs(dir, &vfs) == 0 && (uint64_t)vfs.f_bavail * vfs.f_frsize < h->file_size) {
        rc = nf_errf_at(c->err, c->errlen, -ENOSPC, c->in,
                        "%s has %llu bytes free, the .nft needs %" PRIu64, dir,
                        (unsigned long long)vfs.f_bavail * vfs.f_frsize, h->file_size);
        goto out;
    }
    nf_nft_tmp_sweep(out);
    if ((size_t)snprintf(c->tmp, PATH_MAX, "%s.tmp-XXXXXX", out) >= PATH_MAX) {
        c->tmp[0] = '\0';
        rc = nf_errf_at(c->err, c->errlen, NF_EUSAGE, c->in, "output path too long");
        goto out;
    }
    c->fd = tmp_create(c->tmp);
    if (c->fd < 0) {
        rc = nf_errf_at(c->err, c->errlen, c->fd, c->in, "creating %s: %s", c->tmp,
                        strerror(-c->fd));
        c->tmp[0] = '\0';
        c->fd = -1;
        goto out;
    }
    fchmod(c->fd, 0644);
    if (ftruncate(c->fd, (off_t)h->file_size) != 0) {
        rc = nf_errf_at(c->err, c->errlen, -errno, c->in, "sizing %s to %" PRIu64 " bytes: %s",
                        c->tmp, h->file_size, strerror(errno));
        goto out;
    }
    progress(c, in_place(c) ? "checksums" : "layer 1");
    if ((rc = in_place(c) ? hash_tiles(c) : write_tiles(c)))
        goto out;
    h->index_checksum = XXH3_64bits(c->tiles, c->n_tiles * sizeof(struct nf_nft_tile));
    h->magic = NF_NFT_MAGIC;
    h->major = NF_NFT_MAJOR;
    h->minor = in_place(c) ? NF_NFT_MINOR_INPLACE : NF_NFT_MINOR;
    h->flags = in_place(c) ? NF_NFT_IN_PLACE : 0;
    h->header_size = sizeof(*h);
    h->tile_size = (uint32_t)c->tile_size;
    h->pred_rank = (uint32_t)c->rank;
    h->pred_type = c->pred_type;
    h->header_checksum = XXH3_64bits(h, offsetof(struct nf_nft_header, header_checksum));
    if (posix_memalign(&page, NF_NFT_ALIGN, NF_NFT_ALIGN)) {
        rc = nf_errf_at(c->err, c->errlen, -ENOMEM, c->in, "out of memory");
        goto out;
    }
    memset(page, 0, NF_NFT_ALIGN);
    memcpy(page, h, sizeof(*h));
    if ((rc = write_all(c, meta, meta_len, h->meta_offset)) ||
        (rc = write_all(c, c->tiles, c->n_tiles * sizeof(struct nf_nft_tile), h->index_offset)) ||
        (rc = write_all(c, page, NF_NFT_ALIGN, 0)))
        goto out;
    if (c->o && c->o->calib_text && (rc = add_calibration(c, page)))
        goto out;
    if (fsync(c->fd) != 0) {
        rc = nf_errf_at(c->err, c->errlen, -errno, c->in, "fsync %s: %s", c->tmp, strerror(errno));
        goto out;
    }
    if (rename(c->tmp, out) != 0) {
        rc = nf_errf_at(c->err, c->errlen, -errno, c->in, "rename %s -> %s: %s", c->tmp, out,
                        strerror(errno));
        goto out;
    }
    c->tmp[0] = '\0';
    int dfd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (dfd >= 0) {
        fsync(dfd); /* make the rename durable */
        close(dfd);
    }
    posix_fadvise(c->fd, 0, 0, POSIX_FADV_DONTNEED);
    progress(c, "done");
out:
    if (c->fd >= 0)
        close(c->fd);
    c->fd = -1;
    if (c->tmp[0]) {
        unlink(c->tmp);
        c->tmp[0] = '\0';
    }
    free(page);
    free(meta);
    return rc;
}

int nf_nft_tmp_sweep(const char *out_path)
{
    char dirbuf[PATH_MAX], basebuf[PATH_MAX], path[PATH_MAX];
    snprintf(dirbuf, sizeof(dirbuf), "%s", out_path);
    snprintf(basebuf, sizeof(basebuf), "%s", out_path);
    const char *dir = dirname(dirbuf), *base = basename(basebuf);
    size_t blen = strlen(base);
    DIR *d = opendir(dir);
    if (!d)
        return 0;
    int n = 0;
    for (struct dirent *e; (e = readdir(d));) {
        /* Exactly what mkstemp made of "OUT.tmp-XXXXXX". */
        if (strncmp(e->d_name, base, blen) || strncmp(e->d_name + blen, ".tmp-", 5) ||
            strlen(e->d_name + blen + 5) != 6)
            continue;
        if ((size_t)snprintf(path, sizeof(path), "%s/%s", dir, e->d_name) >= sizeof(path))
            continue;
        int fd = open(path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW | O_NONBLOCK);
        if (fd < 0)
            continue;
        struct stat st;
        /* A lock we get means its writer is gone (the kernel drops it with the process). */
        if (fstat(fd, &st) == 0 && S_ISREG(st.st_mode) && flock(fd, LOCK_EX | LOCK_NB) == 0 &&
            unlink(path) == 0)
            n++;
        close(fd);
    }
    closedir(d);
    return n;
}

int nf_nft_convert(const char *in_path, const char *out_path, const struct nf_nft_convert_opts *o,
                   char *err, size_t errlen)
{
    if (!in_path || !out_path)
        return NF_EUSAGE;
    char own_tmp[PATH_MAX] = "";
    struct conv c = {.in = in_path, .o = o, .err = err, .errlen = errlen, .fd = -1};
    c.tmp = o && o->tmp_path && o->tmp_path_len >= PATH_MAX ? o->tmp_path : own_tmp;
    c.tmp[0] = '\0';
    if (err && errlen)
        err[0] = '\0';
    c.tile_size = o && o->tile_size ? o->tile_size : NF_NFT_DEFAULT_TILE_SIZE;
    if (c.tile_size > UINT32_MAX)
        return nf_errf_at(c.err, c.errlen, NF_EUSAGE, c.in, "tile size %" PRIu64 " is above 4 GiB",
                          c.tile_size);
    c.pred_type = o && o->pred_f32 ? NF_TYPE_F32 : NF_TYPE_F16;
    char gerr[512];
    int rc = nf_gguf_open(&c.g, in_path, gerr, sizeof(gerr));
    if (rc) {
        if (err && errlen)
            snprintf(err, errlen, "%s", gerr);
        return rc;
    }
    if ((rc = check_model(&c)))
        goto out;
    bool dense = c.L[0].gate != NULL;
    int64_t cap = c.hdr.n_ff < c.hdr.n_embd ? c.hdr.n_ff : c.hdr.n_embd;
    uint32_t n_dense = 0;
    for (uint32_t il = 0; il < c.hdr.n_layer && !c.hdr.n_expert; il++)
        n_dense += c.L[il].gate != NULL;
    if (o && o->rank) {
        if (o->rank < 0 || o->rank > cap) {
            rc = nf_errf_at(c.err, c.errlen, NF_EUSAGE, c.in,
                            "rank %d is outside [1, %" PRId64 "] (min of n_ff, n_embd)", o->rank,
                            cap);
            goto out;
        }
        c.rank = o->rank;
    } else if (dense || n_dense) {
        c.rank = nf_lowrank_default_rank(c.hdr.weight_bytes, (int)n_dense, c.hdr.n_ff, c.hdr.n_embd,
                                         nf_type_traits(c.pred_type)->type_size, NF_NFT_PRED_SHARE);
    }
    if (n_dense == 0 || (o && o->in_place))
        c.rank = 0;
    if ((rc = plan(&c)) || (rc = write_file(&c, out_path)))
        goto out;
out:
    free(c.buf);
    free(c.tiles);
    free(c.L);
    nf_gguf_close(c.g);
    return rc;
}

int nf_nft_index_build(const char *in_path, const char *out_path,
                       const struct nf_nft_convert_opts *o, char *err, size_t errlen)
{
    struct nf_nft_convert_opts io = o ? *o : (struct nf_nft_convert_opts){0};
    io.in_place = true;
    io.calib_text = NULL;
    return nf_nft_convert(in_path, out_path, &io, err, errlen);
}
