/* model_load.c - loading a llama-family GGUF (llama, qwen2, qwen3, qwen3moe, gemma3, qwen2moe,
 * olmoe, phi3, glm4moe, deepseek2, gpt-oss) into RAM, with every hyperparameter and tensor
 * validated. */
#include <errno.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

#include "model.h"
#include "nf_err.h"
#include "quants_q4_0x8.h"

/* Tensor data is aligned for the widest SIMD loads (AVX-512). */
#define NF_WEIGHT_ALIGN 64

static void nf_shape_str(char *buf, size_t len, const int64_t *ne, int n)
{
    int off = snprintf(buf, len, "[");
    for (int i = 0; i < n && off > 0 && (size_t)off < len; i++)
        off += snprintf(buf + off, len - (size_t)off, "%s%lld", i ? ", " : "", (long long)ne[i]);
    if (off > 0 && (size_t)off < len)
        snprintf(buf + off, len - (size_t)off, "]");
}

enum { NF_T_REQUIRED = 0, NF_T_OPTIONAL = 1, NF_T_F32 = 2 };

/* Refuses tensor data no kernel may meet (an mxfp4 block with the NaN exponent 0xFF), as
 * llama.cpp's ggml_validate_row_data does. */
static int nf_check_blocks(const struct nf_gguf *g, const struct nf_tensor *t, char *err,
                           size_t errlen)
{
    int64_t bad;
    if (!nf_blocks_check(t->type, t->data, t->ne[0] * t->ne[1] * t->ne[2], &bad))
        return 0;
    return nf_errf(err, errlen, NF_ECORRUPT,
                   "%s: tensor '%s': %s block %lld has the exponent 0xFF (NaN in E8M0)", g->path,
                   t->name, nf_type_traits(t->type)->name, (long long)bad);
}

/* Asks for transparent huge pages over the whole 2 MiB pages of a weight buffer before it is
 * filled (with THP in "madvise" mode, as here, anonymous memory gets 4 KiB pages otherwise).
 * A decode step streams every weight once: with 4 KiB pages that is a TLB miss every 4 KiB.
 * Advice only: failure (no THP in the kernel) leaves 4 KiB pages and changes nothing else. */
static void nf_weights_hugepage(void *p, size_t sz)
{
    const uintptr_t huge = (uintptr_t)2 << 20;
    uintptr_t a = ((uintptr_t)p + huge - 1) & ~(huge - 1), b = ((uintptr_t)p + sz) & ~(huge - 1);
    if (b > a)
        (void)madvise((void *)a, b - a, MADV_HUGEPAGE);
}

/* Finds tensor `name`, checks it has shape (ne0, ne1, ne2) (trailing 1s may be omitted in the
 * file) and a type NanoFlow can compute with (F32 only with NF_T_F32), and reads it into RAM.
 * An absent optional tensor leaves t->data NULL and returns 0. */
static int nf_load_tensor(struct nf_model *m, struct nf_tensor *t, const char *name, int64_t ne0,
                          int64_t ne1, int64_t ne2, int flags, char *err, size_t errlen)
{
    const struct nf_gguf *g = m->gguf;
    const struct nf_gguf_tensor *gt = nf_gguf_find_tensor(g, name);
    int64_t want[3] = {ne0, ne1, ne2};
    int nd = ne2 > 1 ? 3 : ne1 > 1 ? 2 : 1;
    char ws[96], gs[96];
    memset(t, 0, sizeof(*t));
    if (!gt) {
        if (flags & NF_T_OPTIONAL)
            return 0;
        nf_shape_str(ws, sizeof(ws), want, nd);
        return nf_errf(err, errlen, NF_ENOTENSOR, "%s: tensor '%s' %s is missing", g->path, name,
                       ws);
    }
    if (gt->ne[0] != ne0 || gt->ne[1] != ne1 || gt->ne[2] != ne2 || gt->ne[3] != 1) {
        nf_shape_str(ws, sizeof(ws), want, nd);
        nf_shape_str(gs, sizeof(gs), gt->ne, (int)gt->n_dims);
        return nf_errf(err, errlen, NF_ESHAPE, "%s: tensor '%s' has shape %s, expected %s", g->path,
                       name, gs, ws);
    }
    const struct nf_type_traits *tr = nf_type_traits(gt->type);
    if ((flags & NF_T_F32) && gt->type != NF_TYPE_F32)
        return nf_errf(err, errlen, NF_EBADTYPE, "%s: tensor '%s' has type %s, expected f32",
                       g->path, name, tr ? tr->name : "?");
    if (!tr || !tr->compute || !tr->to_float || !tr->vec_dot)
        return nf_errf(err, errlen, NF_EBADTYPE,
                       "%s: tensor '%s' has type %s, which NanoFlow cannot compute with", g->path,
                       name, tr ? tr->name : "unknown");
    const struct nf_type_traits *dt = nf_type_traits(tr->vec_dot_type);
    if (!dt || ne0 % tr->blck_size || ne0 % dt->blck_size || !dt->from_float)
        return nf_errf(err, errlen, NF_ESHAPE,
                       "%s: tensor '%s' (%s): row length %lld is not a multiple of the "
                       "block size",
                       g->path, name, tr->name, (long long)ne0);
    t->name = gt->name.s;
    t->type = gt->type;
    t->ne[0] = ne0;
    t->ne[1] = ne1;
    t->ne[2] = ne2;
    t->row_size = nf_row_size(gt->type, ne0);
    if (t->row_size * (size_t)ne1 * (size_t)ne2 != gt->size)
        return nf_errf(err, errlen, NF_ECORRUPT, "%s: tensor '%s': %llu data bytes, expected %zu",
                       g->path, name, (unsigned long long)gt->size,
                       t->row_size * (size_t)ne1 * (size_t)ne2);
    if (m->map) {
        /* Mapped: the data stays in the page cache (the GGUF validated its range). */
        t->data = (char *)m->map + gt->offset;
        m->weight_bytes += gt->size;
        return nf_check_blocks(g, t, err, errlen);
    }
    size_t sz = (gt->size + NF_WEIGHT_ALIGN - 1) / NF_WEIGHT_ALIGN * NF_WEIGHT_ALIGN;
    if (posix_memalign(&t->data, NF_WEIGHT_ALIGN, sz ? sz : NF_WEIGHT_ALIGN)) {
        t->data = NULL;
        return nf_errf(err, errlen, -ENOMEM, "%s: out of memory for tensor '%s' (%llu bytes)",
                       g->path, name, (unsigned long long)gt->size);
    }
    nf_weights_hugepage(t->data, sz);
    int rc = m->read_tensor ? m->read_tensor(m->src, gt, t->data, sz, err, errlen)
                            : nf_gguf_read_tensor(g, gt, t->data, sz);
    if (rc < 0) {
        free(t->data);
        t->data = NULL;
        if (m->read_tensor)
            return rc; /* err already names the tile */
        return nf_errf(err, errlen, rc, "%s: reading tensor '%s': %s", g->path, name,
                       nf_strerror(rc));
    }
    m->weight_bytes += gt->size;
    return nf_check_blocks(g, t, err, errlen);
}

/* What each architecture adds to the llama layer, and its RoPE layout (llama.cpp's
 * llama_model_rope_type: NORM for llama, NEOX for the qwen family). */
static const struct nf_arch_info {
    const char *name;
    bool rope_neox, qkv_bias, qk_norm, moe;
} nf_archs[] = {
    [NF_ARCH_LLAMA] = {"llama", false, false, false, false},
    [NF_ARCH_QWEN2] = {"qwen2", true, true, false, false},
    [NF_ARCH_QWEN3] = {"qwen3", true, false, true, false},
    [NF_ARCH_QWEN3MOE] = {"qwen3moe", true, false, true, true},
    [NF_ARCH_GEMMA3] = {"gemma3", true, false, true, false},
    [NF_ARCH_QWEN2MOE] = {"qwen2moe", true, true, false, true},
    [NF_ARCH_OLMOE] = {"olmoe", true, false, true, true},
    [NF_ARCH_PHI3] = {"phi3", true, false, false, false},
    /* glm4moe's biases and q/k norms are optional: nf_load_glm4moe sets the flags by file. */
    [NF_ARCH_GLM4MOE] = {"glm4moe", true, false, false, true},
    [NF_ARCH_DEEPSEEK2] = {"deepseek2", false, false, false, true},
    [NF_ARCH_GPTOSS] = {"gpt-oss", true, true, false, true},
};

const char *nf_arch_name(enum nf_arch a)
{
    return (unsigned)a < sizeof(nf_archs) / sizeof(nf_archs[0]) ? nf_archs[a].name : "?";
}

/* Reads an integer hyperparameter "<pfx>.<key>"; def < 0 means required. */
static int nf_hp_int(const struct nf_gguf *g, const char *pfx, const char *key, int64_t def,
                     int64_t min, int64_t max, int *out, char *err, size_t errlen)
{
    char full[128];
    snprintf(full, sizeof(full), "%s.%s", pfx, key);
    uint64_t v;
    int rc = nf_gguf_get_u64(g, full, &v);
    if (rc == NF_ENOKEY && def >= 0) {
        *out = (int)def;
        return 0;
    }
    if (rc == NF_ENOKEY)
        return nf_errf(err, errlen, rc, "%s: metadata key '%s' is missing", g->path, full);
    if (rc < 0 || (int64_t)v < min || (int64_t)v > max)
        return nf_errf(err, errlen, rc < 0 ? rc : NF_EKEYTYPE,
                       "%s: metadata key '%s' must be an integer in [%lld, %lld]", g->path, full,
                       (long long)min, (long long)max);
    *out = (int)v;
    return 0;
}

static int nf_hp_float(const struct nf_gguf *g, const char *pfx, const char *key, float def,
                       bool required, float *out, char *err, size_t errlen)
{
    char full[128];
    snprintf(full, sizeof(full), "%s.%s", pfx, key);
    int rc = nf_gguf_get_f32(g, full, out);
    if (rc == NF_ENOKEY && !required) {
        *out = def;
        return 0;
    }
    if (rc < 0)
        return nf_errf(err, errlen, rc, "%s: metadata key '%s': %s", g->path, full,
                       nf_strerror(rc));
    if (!(*out == *out))
        return nf_errf(err, errlen, NF_EKEYTYPE, "%s: metadata key '%s' is NaN", g->path, full);
    return 0;
}

/* Sets hp->arch and its flags from general.architecture, or refuses the file. */
static int nf_load_arch(struct nf_hparams *hp, const struct nf_gguf *g, char *err, size_t errlen)
{
    const char *arch = NULL;
    if (nf_gguf_get_str(g, "general.architecture", &arch) < 0)
        return nf_errf(err, errlen, NF_EARCH, "%s: metadata key 'general.architecture' is missing",
                       g->path);
    for (size_t i = 0; i < sizeof(nf_archs) / sizeof(nf_archs[0]); i++) {
        if (strcmp(arch, nf_archs[i].name) != 0)
            continue;
        hp->arch = (enum nf_arch)i;
        hp->rope_neox = nf_archs[i].rope_neox;
        hp->qkv_bias = nf_archs[i].qkv_bias;
        hp->qk_norm = nf_archs[i].qk_norm;
        /* llama.cpp's build_moe_ffn with norm_w false for these two (norm_topk_prob false). */
        hp->moe_norm_w =
            hp->arch != NF_ARCH_QWEN2MOE && hp->arch != NF_ARCH_OLMOE && hp->arch != NF_ARCH_GPTOSS;
        hp->oai_moe = hp->arch == NF_ARCH_GPTOSS;
        return 0;
    }
    return nf_errf(err, errlen, NF_EARCH,
                   "%s: architecture '%s' is not supported (supported: llama - Llama 1/2/3, "
                   "Mistral, Mixtral-style MoE; qwen2; qwen3; qwen3moe; gemma3; qwen2moe; olmoe; "
                   "phi3 - Phi-3/3.5, Phi-4-mini; glm4moe - GLM-4.5/4.6/Air; deepseek2 - "
                   "DeepSeek-V2/V3/R1, Kimi-K2; gpt-oss)",
                   g->path, arch);
}

/* Reads the rope.* keys: freq_base, and linear scaling (factor, scale_linear, scaling.type). */
static int nf_load_rope(struct nf_hparams *hp, const struct nf_gguf *g, const char *pfx, char *err,
                        size_t errlen)
{
    float factor = 0;
    int rc;
    if ((rc =
             nf_hp_float(g, pfx, "rope.freq_base", 10000.0f, false, &hp->rope_base, err, errlen)) ||
        (rc = nf_hp_float(g, pfx, "rope.scaling.factor", 0.0f, false, &factor, err, errlen)))
        return rc;
    if (factor == 0.0f &&
        (rc = nf_hp_float(g, pfx, "rope.scale_linear", 0.0f, false, &factor, err, errlen)))
        return rc;
    char key[64];
    snprintf(key, sizeof(key), "%s.rope.scaling.type", pfx);
    const char *stype = NULL;
    if (nf_gguf_get_str(g, key, &stype) < 0)
        stype = NULL;
    /* YaRN for deepseek2 (nf_load_deepseek2_rope reads its other keys) and gpt-oss
     * (nf_load_gptoss); other architectures keep refusing it. */
    const bool yarn = stype && !strcmp(stype, "yarn") &&
                      (hp->arch == NF_ARCH_GPTOSS || hp->arch == NF_ARCH_DEEPSEEK2);
    if (stype && strcmp(stype, "none") != 0 && strcmp(stype, "linear") != 0 && !yarn)
        return nf_errf(
            err, errlen, NF_EARCH,
            "%s: %s '%s' is not supported (supported: none, linear, and yarn for "
            "deepseek2 and gpt-oss; Llama 3.1+ scaling comes as the rope_freqs.weight tensor)",
            g->path, key, stype);
    hp->yarn_ext_factor = yarn ? 1.0f : 0.0f;
    if (factor < 0 || !(hp->rope_base > 0))
        return nf_errf(err, errlen, NF_EKEYTYPE,
                       "%s: %s.rope.freq_base must be > 0 and %s.rope.scaling.factor >= 0", g->path,
                       pfx, pfx);
    hp->rope_freq_scale =
        (factor == 0.0f || (stype && !strcmp(stype, "none"))) ? 1.0f : 1.0f / factor;
    return 0;
}

/* gemma3's additions, with llama.cpp's values (llama-model.cpp, LLM_ARCH_GEMMA3): every 6th
 * layer global, the others local with a sliding window of attention.sliding_window positions and
 * RoPE base 10000 unscaled (a file without the key, or with 0, has global layers only: llama.cpp
 * reads it so, and the converter omits the key for sliding_window_pattern 1); embeddings times
 * sqrt(n_embd); Q times 1 / sqrt(key_length) after RoPE, except for the 27B model (62 layers,
 * recognised by its layer count as llama.cpp does), whose query_pre_attn_scalar is n_embd / n_head.
 */
static int nf_load_gemma3(struct nf_hparams *hp, const struct nf_gguf *g, char *err, size_t errlen)
{
    int rc =
        nf_hp_int(g, "gemma3", "attention.sliding_window", 0, 0, 1 << 30, &hp->n_swa, err, errlen);
    if (rc)
        return rc;
    char key[64] = "gemma3.final_logit_softcapping";
    float cap = 0;
    if (nf_gguf_get_f32(g, key, &cap) == 0 && cap != 0)
        return nf_errf(err, errlen, NF_EARCH, "%s: %s (%g) is not supported", g->path, key,
                       (double)cap);
    hp->post_norms = true;
    hp->ffn_gelu = true;
    hp->swa_pattern = 6;
    hp->rope_base_swa = 10000.0f;
    hp->rope_freq_scale_swa = 1.0f;
    /* The llama.cpp that made the gemma3 goldens pads its KV cache view to 256 cells (the
     * older one behind shared/golden, and the other archs' goldens, measure right with 32). */
    hp->kv_pad = 256;
    hp->embd_scale = sqrtf((float)hp->n_embd);
    hp->q_scale = hp->n_layer == 62 ? 1.0f / sqrtf((float)(hp->n_embd / hp->n_head))
                                    : 1.0f / sqrtf((float)hp->head_dim);
    return 0;
}

/* Whether layer 0 of g has tensor "blk.0.<sfx>". */
static bool nf_has_blk0(const struct nf_gguf *g, const char *sfx)
{
    char n[64];
    snprintf(n, sizeof(n), "blk.0.%s", sfx);
    return nf_gguf_find_tensor(g, n) != NULL;
}

/* glm4moe's group limit (expert_group_count, expert_group_used_count), with llama.cpp's
 * checks: fewer groups than experts, equal groups, 1..count-1 of them used; NanoFlow also wants
 * two experts a group (a group is scored by its two best) and enough experts in the used groups
 * for expert_used_count. */
static int nf_load_expert_groups(struct nf_hparams *hp, const struct nf_gguf *g, const char *pfx,
                                 char *err, size_t errlen)
{
    struct nf_moe_sigmoid_route *r = &hp->route;
    int rc;
    if ((rc = nf_hp_int(g, pfx, "expert_group_count", 0, 0, hp->n_expert - 1, &r->n_group, err,
                        errlen)) ||
        (rc =
             nf_hp_int(g, pfx, "expert_group_used_count", 0, 0, 64, &r->n_group_used, err, errlen)))
        return rc;
    if (r->n_group <= 1)
        return 0;
    const int per = hp->n_expert / r->n_group;
    if (hp->n_expert % r->n_group || per < 2 || r->n_group_used < 1 ||
        r->n_group_used >= r->n_group || r->n_group_used * per < hp->n_expert_used)
        return nf_errf(err, errlen, NF_EKEYTYPE,
                       "%s: %s.expert_group_count %d / expert_group_used_count %d do not fit "
                       "%d experts, %d used (equal groups of 2 or more, 1 to count-1 used, "
                       "holding the used experts)",
                       g->path, pfx, r->n_group, r->n_group_used, hp->n_expert, hp->n_expert_used);
    return 0;
}

/* glm4moe's keys, as llama.cpp's llama_model_glm4_moe reads them: block_count counts the
 * nextn_predict_layers next-token-prediction blocks at the end, which are skipped (n_layer
 * excludes them); the first leading_dense_block_count layers have a dense FFN of
 * feed_forward_length, the others expert_count experts of expert_feed_forward_length and
 * expert_shared_count shared experts of that width times the count; sigmoid routing
 * (expert_gating_func 2 or absent) with exp_probs_b, expert_weights_norm and
 * expert_weights_scale. Q/K/V biases and per-head q/k norms are optional (GLM-4.5 has the
 * norms, Air not), taken as layer 0 has them. M-RoPE files (rope.dimension_sections) are
 * refused. */
static int nf_load_glm4moe(struct nf_hparams *hp, const struct nf_gguf *g, char *err, size_t errlen)
{
    const char *pfx = "glm4moe";
    char key[96];
    int rc, n_shared = 0, gating = 2;
    if ((rc = nf_hp_int(g, pfx, "nextn_predict_layers", 0, 0, hp->n_layer - 1, &hp->n_nextn, err,
                        errlen)))
        return rc;
    hp->n_layer -= hp->n_nextn;
    if ((rc = nf_hp_int(g, pfx, "leading_dense_block_count", 0, 0, hp->n_layer, &hp->n_layer_dense,
                        err, errlen)) ||
        (rc = nf_hp_int(g, pfx, "expert_feed_forward_length", -1, 1, 1 << 24, &hp->n_ff, err,
                        errlen)) ||
        (rc = nf_hp_int(g, pfx, "feed_forward_length", hp->n_layer_dense ? -1 : 0, 1, 1 << 24,
                        &hp->n_ff_dense, err, errlen)) ||
        (rc = nf_hp_int(g, pfx, "expert_shared_count", -1, 0, 64, &n_shared, err, errlen)) ||
        (rc = nf_hp_int(g, pfx, "expert_gating_func", 2, 0, 16, &gating, err, errlen)) ||
        (rc = nf_hp_float(g, pfx, "expert_weights_scale", 0.0f, false, &hp->route.scale, err,
                          errlen)) ||
        (rc = nf_load_expert_groups(hp, g, pfx, err, errlen)))
        return rc;
    if (gating != 2 && gating != 0) /* llama.cpp takes 0 (none) as sigmoid */
        return nf_errf(err, errlen, NF_EARCH,
                       "%s: %s.expert_gating_func %d is not supported (supported: 2, sigmoid)",
                       g->path, pfx, gating);
    snprintf(key, sizeof(key), "%s.expert_weights_norm", pfx);
    rc = nf_gguf_get_bool(g, key, &hp->route.norm_w);
    if (rc == NF_ENOKEY)
        hp->route.norm_w = false;
    else if (rc < 0)
        return nf_errf(err, errlen, rc, "%s: metadata key '%s' must be a bool", g->path, key);
    snprintf(key, sizeof(key), "%s.rope.dimension_sections", pfx);
    uint64_t n_sec = 0;
    const void *sec = NULL;
    if (nf_gguf_get_arr(g, key, NF_GGUF_INT32, &n_sec, &sec) == 0 && n_sec >= 2 &&
        ((const int32_t *)sec)[0] > 0 && ((const int32_t *)sec)[1] > 0)
        return nf_errf(err, errlen, NF_EARCH, "%s: %s (M-RoPE) is not supported", g->path, key);
    if (!(hp->route.scale >= 0))
        return nf_errf(err, errlen, NF_EKEYTYPE, "%s: %s.expert_weights_scale must be >= 0",
                       g->path, pfx);
    hp->n_ff_shexp = hp->n_ff * n_shared;
    hp->moe_sigmoid = true;
    hp->route.n_expert = hp->n_expert;
    hp->route.n_expert_used = hp->n_expert_used;
    hp->qkv_bias = nf_has_blk0(g, "attn_q.bias");
    hp->qk_norm = nf_has_blk0(g, "attn_q_norm.weight");
    return 0;
}

/* The keys phi3 adds: LongRoPE's original context length and attention factor, and the sliding
 * window, which llama.cpp reads and then disables for phi3 ("Phi SWA is currently disabled"):
 * full attention, as here. Other architectures keep the defaults (no prescaled Q, factor 1). */
static int nf_load_phi3_hparams(struct nf_hparams *hp, const struct nf_gguf *g, const char *pfx,
                                char *err, size_t errlen)
{
    int rc;
    hp->q_prescale = hp->arch == NF_ARCH_PHI3;
    hp->n_ctx_orig = hp->n_ctx_train;
    hp->rope_attn_factor = 1.0f;
    if (hp->arch != NF_ARCH_PHI3)
        return 0;
    if ((rc = nf_hp_int(g, pfx, "rope.scaling.original_context_length", hp->n_ctx_train, 1, 1 << 30,
                        &hp->n_ctx_orig, err, errlen)) ||
        (rc = nf_hp_float(g, pfx, "rope.scaling.attn_factor", 1.0f, false, &hp->rope_attn_factor,
                          err, errlen)) ||
        (rc = nf_hp_int(g, pfx, "attention.sliding_window", 0, 0, INT32_MAX, &hp->phi3_swa, err,
                        errlen)))
        return rc;
    if (!(hp->rope_attn_factor > 0))
        return nf_errf(err, errlen, NF_EKEYTYPE, "%s: %s.rope.scaling.attn_factor must be > 0",
                       g->path, pfx);
    return 0;
}

/* ggml_rope_yarn_corr_dims: the first and last pair index of YaRN's ramp between extrapolated
 * and interpolated angles (pairs that turn beta_fast, resp. beta_slow, times over n_ctx_orig),
 * for n_dims rotated dims of RoPE base base (deepseek2 and gpt-oss). */
static void nf_yarn_corr_dims(int n_dims, int n_ctx_orig, float base, float beta_fast,
                              float beta_slow, float dims[2])
{
    const float pi2 = 2 * (float)M_PI, nd = (float)n_dims;
    const float lo = nd * logf((float)n_ctx_orig / (beta_fast * pi2)) / (2 * logf(base));
    const float hi = nd * logf((float)n_ctx_orig / (beta_slow * pi2)) / (2 * logf(base));
    dims[0] = fmaxf(0, floorf(lo));
    dims[1] = fminf(nd - 1, ceilf(hi));
}

/* YaRN's attention factor as llama.cpp's context computes it (cparams.yarn_attn_factor):
 * get_mscale(factor) = 0.1 ln(factor) + 1 (divided by get_mscale with log_mul when
 * rope.scaling.yarn_log_multiplier is set), times the inverse of the 1 + 0.1 ln(1 / freq_scale)
 * that ggml's rope multiplies back in, times rope.scaling.attn_factor. In float, with the
 * product-sums fused as the compiled C++ has them. */
static float nf_yarn_attn_factor(float freq_scale, float log_mul, float attn_factor)
{
    const float factor = 1.0f / freq_scale;
    float a = 1.0f;
    if (factor > 1.0f) {
        const float m1 = fmaf(0.1f * 1.0f, logf(factor), 1.0f);
        a = log_mul != 0.0f ? m1 / fmaf(0.1f * log_mul, logf(factor), 1.0f) : m1;
    }
    a *= 1.0f / fmaf(0.1f, logf(factor), 1.0f);
    return a * attn_factor;
}

/* gpt-oss's keys, as llama.cpp's openai-moe loader reads them: the sliding window (required),
 * its layer pattern (attention.sliding_window_pattern, default 2: even layers local), the local
 * layers' RoPE base (rope.freq_base_swa, default rope.freq_base) and scaling (the global one),
 * and YaRN: original context, beta_fast / beta_slow (32 / 1), the attention factor. The KV view
 * is padded to 256 cells as gemma3's (the same llama.cpp made both goldens). */
static int nf_load_gptoss(struct nf_hparams *hp, const struct nf_gguf *g, char *err, size_t errlen)
{
    const char *pfx = "gpt-oss";
    float attn_factor = 1.0f, log_mul = 0.0f, beta_fast = 32.0f, beta_slow = 1.0f;
    int rc;
    if ((rc = nf_hp_int(g, pfx, "attention.sliding_window", -1, 1, INT32_MAX, &hp->n_swa, err,
                        errlen)) ||
        (rc = nf_hp_int(g, pfx, "attention.sliding_window_pattern", 2, 1, 4096, &hp->swa_pattern,
                        err, errlen)) ||
        (rc = nf_hp_float(g, pfx, "rope.freq_base_swa", hp->rope_base, false, &hp->rope_base_swa,
                          err, errlen)) ||
        (rc = nf_hp_int(g, pfx, "rope.scaling.original_context_length", hp->n_ctx_train, 1, 1 << 30,
                        &hp->n_ctx_orig, err, errlen)) ||
        (rc = nf_hp_float(g, pfx, "rope.scaling.yarn_beta_fast", 32.0f, false, &beta_fast, err,
                          errlen)) ||
        (rc = nf_hp_float(g, pfx, "rope.scaling.yarn_beta_slow", 1.0f, false, &beta_slow, err,
                          errlen)) ||
        (rc = nf_hp_float(g, pfx, "rope.scaling.yarn_log_multiplier", 0.0f, false, &log_mul, err,
                          errlen)) ||
        (rc = nf_hp_float(g, pfx, "rope.scaling.attn_factor", 1.0f, false, &attn_factor, err,
                          errlen)))
        return rc;
    if (!(hp->rope_base_swa > 0) || !(attn_factor > 0))
        return nf_errf(err, errlen, NF_EKEYTYPE,
                       "%s: gpt-oss.rope.freq_base_swa and rope.scaling.attn_factor must be > 0",
                       g->path);
    hp->rope_freq_scale_swa = hp->rope_freq_scale;
    hp->kv_pad = 256;
    hp->rope_attn_factor = attn_factor;
    if (hp->yarn_ext_factor != 0.0f) {
        /* rope_attn_factor holds the cos/sin scale after rope_yarn's 1 + 0.1 ln(1 / freq_scale)
         * (nf_rope_fill applies it as it is, as for deepseek2); the local layers' corrections
         * are over their own base. */
        const float fs = hp->rope_freq_scale;
        hp->rope_attn_factor =
            nf_yarn_attn_factor(fs, log_mul, attn_factor) * fmaf(0.1f, logf(1.0f / fs), 1.0f);
        nf_yarn_corr_dims(hp->n_rot, hp->n_ctx_orig, hp->rope_base, beta_fast, beta_slow,
                          hp->yarn_corr);
        nf_yarn_corr_dims(hp->n_rot, hp->n_ctx_orig, hp->rope_base_swa, beta_fast, beta_slow,
                          hp->yarn_corr_swa);
    }
    return 0;
}

/* llama.cpp's get_mscale of YaRN. */
static float nf_yarn_mscale(float scale, float mscale)
{
    return scale <= 1.0f ? 1.0f : (0.1f * mscale * logf(scale) + 1.0f);
}

/* deepseek2's rope scaling and score scale, in the float steps of llama.cpp (llama_context's
 * yarn_attn_factor, then llm_build_deepseek2's mscale and kq_scale, and ggml's rope_yarn):
 * YaRN (rope.scaling.type yarn: original_context_length, yarn_log_multiplier, which the
 * converter writes as 0.1 x mscale_all_dim) or linear scaling, times rope.scaling.attn_factor. */
static int nf_load_deepseek2_rope(struct nf_hparams *hp, const struct nf_gguf *g, char *err,
                                  size_t errlen)
{
    const char *pfx = "deepseek2", *stype = NULL;
    float log_mul = 0.0f, attn = 1.0f;
    int orig = 0, rc;
    char key[96];
    snprintf(key, sizeof(key), "%s.rope.scaling.type", pfx);
    const bool yarn = nf_gguf_get_str(g, key, &stype) == 0 && stype && !strcmp(stype, "yarn");
    if ((rc = nf_hp_float(g, pfx, "rope.scaling.yarn_log_multiplier", 0.0f, false, &log_mul, err,
                          errlen)) ||
        (rc = nf_hp_float(g, pfx, "rope.scaling.attn_factor", 1.0f, false, &attn, err, errlen)) ||
        (rc = nf_hp_int(g, pfx, "rope.scaling.original_context_length", hp->n_ctx_train, 1, 1 << 30,
                        &orig, err, errlen)))
        return rc;
    log_mul /= 0.1f; /* llama.cpp cancels the converter's factor */
    const float fs = hp->rope_freq_scale, factor = 1.0f / fs;
    float yaf = 1.0f;
    if (yarn) {
        if (log_mul != 0.0f) /* DeepSeek-V2's mscale is mscale_all_dim unless that is 1 */
            yaf = nf_yarn_mscale(factor, log_mul != 1.0f ? log_mul : 1.0f) /
                  nf_yarn_mscale(factor, log_mul);
        else
            yaf = nf_yarn_mscale(factor, 1.0f);
        yaf *= 1.0f / (1.0f + 0.1f * logf(factor)); /* cancelled again in rope_yarn */
    }
    yaf *= attn;
    const float org = yaf * (1.0f + 0.1f * logf(1.0f / fs));
    const float ms = org * (1.0f + 0.1f * log_mul * logf(1.0f / fs));
    hp->kq_scale = 1.0f * ms * ms / sqrtf((float)hp->n_embd_head_k_mla);
    hp->rope_attn_factor = yarn ? yaf * (1.0f + 0.1f * logf(1.0f / fs)) : yaf;
    hp->yarn_ext_factor = yarn ? 1.0f : 0.0f;
    if (yarn) /* llama.cpp's beta_fast 32, beta_slow 1 */
        nf_yarn_corr_dims(hp->n_rot, orig, hp->rope_base, 32.0f, 1.0f, hp->yarn_corr);
    return 0;
}

/* deepseek2's keys, as llama.cpp's llama_model_deepseek2 reads them, for files with the split
 * attn_k_b / attn_v_b (key_length_mla and value_length_mla present; the latent's lengths in
 * key_length and value_length, one KV head). On entry hp->n_lora_kv holds value_length. */
static int nf_load_deepseek2(struct nf_hparams *hp, const struct nf_gguf *g, char *err,
                             size_t errlen)
{
    const char *pfx = "deepseek2", *path = g->path;
    const int vlen = hp->n_lora_kv;
    int kv_lora = 0, groups = 0, used = 0, gating = 0, rc;
    bool norm = false;
    char key[96];
    if ((rc = nf_hp_int(g, pfx, "attention.q_lora_rank", 0, 0, 1 << 20, &hp->n_lora_q, err,
                        errlen)) ||
        (rc = nf_hp_int(g, pfx, "attention.kv_lora_rank", -1, 1, 1 << 20, &kv_lora, err, errlen)))
        return rc;
    snprintf(key, sizeof(key), "%s.attention.key_length_mla", pfx);
    if (!nf_gguf_get(g, key))
        return nf_errf(err, errlen, NF_EARCH,
                       "%s: metadata key '%s' is missing: a deepseek2 file with the legacy "
                       "attn_kv_b is not supported (convert it again: newer GGUFs carry "
                       "attn_k_b and attn_v_b)",
                       path, key);
    if ((rc = nf_hp_int(g, pfx, "attention.key_length_mla", -1, 2, 1 << 16, &hp->n_embd_head_k_mla,
                        err, errlen)) ||
        (rc = nf_hp_int(g, pfx, "attention.value_length_mla", -1, 1, 1 << 16,
                        &hp->n_embd_head_v_mla, err, errlen)) ||
        (rc = nf_hp_int(g, pfx, "leading_dense_block_count", 0, 0, hp->n_layer, &hp->n_layer_dense,
                        err, errlen)) ||
        (rc = nf_hp_int(g, pfx, "expert_group_count", 0, 0, hp->n_expert, &groups, err, errlen)) ||
        (rc = nf_hp_int(g, pfx, "expert_group_used_count", 0, 0, groups, &used, err, errlen)) ||
        (rc = nf_hp_int(g, pfx, "expert_gating_func", NF_GATING_SOFTMAX, 0, NF_GATING_SIGMOID,
                        &gating, err, errlen)) ||
        (rc = nf_hp_float(g, pfx, "expert_weights_scale", 0.0f, false, &hp->expert_weights_scale,
                          err, errlen)))
        return rc;
    snprintf(key, sizeof(key), "%s.expert_weights_norm", pfx);
    if (nf_gguf_get(g, key) && (rc = nf_gguf_get_bool(g, key, &norm)) < 0)
        return nf_errf(err, errlen, rc, "%s: metadata key '%s' must be a bool", path, key);
    hp->expert_weights_norm = norm;
    /* llama.cpp: no gating key (0) means softmax, as DeepSeek-V2's files have it. */
    hp->expert_gating = gating ? gating : NF_GATING_SOFTMAX;
    hp->n_expert_groups = groups;
    hp->n_group_used = used;
    if (groups > 1 &&
        (hp->n_expert % groups || hp->n_expert / groups < 2 || used < 1 || used >= groups))
        return nf_errf(err, errlen, NF_EKEYTYPE,
                       "%s: %s.expert_group_count %d must divide expert_count %d in groups of "
                       "2 or more, with expert_group_used_count in [1, %d)",
                       path, pfx, groups, hp->n_expert, groups);
    if (hp->n_expert > NF_DS_MAX_EXPERT)
        return nf_errf(err, errlen, NF_EKEYTYPE, "%s: %s.expert_count %d is more than %d", path,
                       pfx, hp->n_expert, NF_DS_MAX_EXPERT);
    /* The absorbed form is MQA over the latents: one KV head whose key is the latent and the
     * rope part, whose value is the latent. */
    if (hp->n_head_kv != 1 || hp->head_dim != kv_lora + hp->n_rot || vlen != kv_lora)
        return nf_errf(err, errlen, NF_EKEYTYPE,
                       "%s: %s needs attention.head_count_kv 1, key_length kv_lora_rank + "
                       "rope.dimension_count (%d) and value_length kv_lora_rank (%d); got %d, "
                       "%d and %d",
                       path, pfx, kv_lora + hp->n_rot, kv_lora, hp->n_head_kv, hp->head_dim, vlen);
    if (hp->n_embd_head_k_mla <= hp->n_rot || hp->n_rot % 2)
        return nf_errf(err, errlen, NF_EKEYTYPE,
                       "%s: %s.attention.key_length_mla (%d) must be more than the even "
                       "rope.dimension_count (%d)",
                       path, pfx, hp->n_embd_head_k_mla, hp->n_rot);
    hp->n_lora_kv = kv_lora;
    if ((rc = nf_load_deepseek2_rope(hp, g, err, errlen)))
        return rc;
    /* The oracle (d32676d) pads its KV view to 256 cells, as for gemma3: with 32 a V3-like
     * q8_0 model's decode steps drift (13 of 178 off by more than 1e-4), with 256 none. */
    hp->kv_pad = 256;
    return 0;
}

static int nf_load_hparams(struct nf_model *m, char *err, size_t errlen)
{
    const struct nf_gguf *g = m->gguf;
    struct nf_hparams *hp = &m->hp;
    int rc = nf_load_arch(hp, g, err, errlen);
    if (rc < 0)
        return rc;
    const char *pfx = nf_arch_name(hp->arch);
    const bool moe = nf_archs[hp->arch].moe;
    if ((rc = nf_hp_int(g, pfx, "embedding_length", -1, 1, 1 << 20, &hp->n_embd, err, errlen)) ||
        (rc = nf_hp_int(g, pfx, "block_count", -1, 1, 4096, &hp->n_layer, err, errlen)) ||
        (rc = nf_hp_int(g, pfx, "attention.head_count", -1, 1, 4096, &hp->n_head, err, errlen)) ||
        (rc = nf_hp_int(g, pfx, "attention.head_count_kv", hp->n_head, 1, hp->n_head,
                        &hp->n_head_kv, err, errlen)) ||
        (rc = nf_hp_int(g, pfx, "context_length", 2048, 1, 1 << 30, &hp->n_ctx_train, err,
                        errlen)) ||
        (rc = nf_hp_int(g, pfx, "expert_count", moe ? -1 : 0, moe ? 2 : 0, 4096, &hp->n_expert, err,
                        errlen)) ||
        /* At most 64 chosen experts a token: nf_moe_route's selection arrays. */
        (rc = nf_hp_int(g, pfx, "expert_used_count", moe ? -1 : 0, 0,
                        hp->n_expert < 64 ? hp->n_expert : 64, &hp->n_expert_used, err, errlen)))
        return rc;
    if (hp->n_head % hp->n_head_kv)
        return nf_errf(err, errlen, NF_EKEYTYPE,
                       "%s: %s.attention.head_count (%d) is not a multiple of "
                       "%s.attention.head_count_kv (%d)",
                       g->path, pfx, hp->n_head, pfx, hp->n_head_kv);
    int def_hd = hp->n_embd % hp->n_head ? -1 : hp->n_embd / hp->n_head;
    int vlen;
    if ((rc = nf_hp_int(g, pfx, "attention.key_length", def_hd, 2, 1 << 16, &hp->head_dim, err,
                        errlen)) ||
        (rc = nf_hp_int(g, pfx, "attention.value_length", hp->head_dim, 2, 1 << 16, &vlen, err,
                        errlen)))
        return rc;
    /* deepseek2: the latent's key length (kv_lora_rank + rope dims) and value length
     * (kv_lora_rank), checked by nf_load_deepseek2. */
    if (hp->arch == NF_ARCH_DEEPSEEK2)
        hp->n_lora_kv = vlen;
    else if (vlen != hp->head_dim || hp->head_dim % 2)
        return nf_errf(err, errlen, NF_EKEYTYPE,
                       "%s: attention key length %d and value length %d must be equal and "
                       "even",
                       g->path, hp->head_dim, vlen);
    if ((rc = nf_hp_int(g, pfx, "rope.dimension_count", hp->head_dim, 2, hp->head_dim, &hp->n_rot,
                        err, errlen)))
        return rc;
    if (hp->n_rot % 2)
        return nf_errf(err, errlen, NF_EKEYTYPE, "%s: %s.rope.dimension_count must be even, got %d",
                       g->path, pfx, hp->n_rot);
    if (hp->n_expert > 0 && (hp->n_expert_used < 1 || hp->n_expert < 2))
        return nf_errf(err, errlen, NF_EKEYTYPE,
                       "%s: %s.expert_count %d needs %s.expert_used_count in [1, %d]", g->path, pfx,
                       hp->n_expert, pfx, hp->n_expert);
    if ((rc = nf_hp_float(g, pfx, "attention.layer_norm_rms_epsilon", 0, true, &hp->rms_eps, err,
                          errlen)))
        return rc;
    if (!(hp->rms_eps >= 0))
        return nf_errf(err, errlen, NF_EKEYTYPE,
                       "%s: %s.attention.layer_norm_rms_epsilon must be >= 0", g->path, pfx);
    if ((rc = nf_load_rope(hp, g, pfx, err, errlen)))
        return rc;
    if ((rc = nf_load_phi3_hparams(hp, g, pfx, err, errlen)))
        return rc;
    if (hp->arch == NF_ARCH_GLM4MOE)
        return nf_load_glm4moe(hp, g, err, errlen);
    if (hp->arch == NF_ARCH_DEEPSEEK2)
        return nf_load_deepseek2(hp, g, err, errlen);
    if (hp->arch == NF_ARCH_GPTOSS)
        return nf_load_gptoss(hp, g, err, errlen);
    return hp->arch == NF_ARCH_GEMMA3 ? nf_load_gemma3(hp, g, err, errlen) : 0;
}

/* qwen2moe's widths as llama.cpp reads them: the experts' from expert_feed_forward_length, else
 * feed_forward_length / expert_used_count; the shared expert's from
 * expert_shared_feed_forward_length, else feed_forward_length. */
static int nf_load_n_ff_qwen2moe(struct nf_hparams *hp, const struct nf_gguf *g, char *err,
                                 size_t errlen)
{
    const char *pfx = nf_arch_name(hp->arch);
    int ff = 0, rc;
    if ((rc = nf_hp_int(g, pfx, "expert_feed_forward_length", 0, 1, 1 << 24, &hp->n_ff, err,
                        errlen)) ||
        (rc = nf_hp_int(g, pfx, "expert_shared_feed_forward_length", 0, 1, 1 << 24, &hp->n_ff_shexp,
                        err, errlen)))
        return rc;
    if ((!hp->n_ff || !hp->n_ff_shexp) &&
        (rc = nf_hp_int(g, pfx, "feed_forward_length", -1, 1, 1 << 24, &ff, err, errlen)))
        return rc;
    if (!hp->n_ff)
        hp->n_ff = ff / hp->n_expert_used;
    if (!hp->n_ff_shexp)
        hp->n_ff_shexp = ff;
    if (hp->n_ff < 1)
        return nf_errf(err, errlen, NF_EKEYTYPE,
                       "%s: %s.feed_forward_length %d / expert_used_count %d leaves no expert "
                       "width (and %s.expert_feed_forward_length is missing)",
                       g->path, pfx, ff, hp->n_expert_used, pfx);
    return 0;
}

/* deepseek2's widths: the routed experts' (expert_feed_forward_length), the leading dense
 * layers' (feed_forward_length) and the shared experts' together (expert_shared_count x the
 * experts' width, as llama.cpp shapes ffn_*_shexp). */
static int nf_load_n_ff_deepseek2(struct nf_hparams *hp, const struct nf_gguf *g, char *err,
                                  size_t errlen)
{
    const char *pfx = "deepseek2";
    int shared = 0, rc;
    if ((rc = nf_hp_int(g, pfx, "expert_feed_forward_length", -1, 1, 1 << 24, &hp->n_ff, err,
                        errlen)) ||
        (rc = nf_hp_int(g, pfx, "expert_shared_count", -1, 0, 64, &shared, err, errlen)) ||
        (rc = nf_hp_int(g, pfx, "feed_forward_length", hp->n_layer_dense ? -1 : 0, 0, 1 << 24,
                        &hp->n_ff_dense, err, errlen)))
        return rc;
    if (hp->n_layer_dense && hp->n_ff_dense < 1)
        return nf_errf(err, errlen, NF_EKEYTYPE,
                       "%s: %s.feed_forward_length must be >= 1 with %d leading dense layers",
                       g->path, pfx, hp->n_layer_dense);
    hp->n_ff_shexp = hp->n_ff * shared;
    return 0;
}

/* The FFN width: the dense feed_forward_length, or for MoE the experts' width, which llama.cpp
 * reads from expert_feed_forward_length (required for qwen3moe) or else feed_forward_length
 * (olmoe reads feed_forward_length only; qwen2moe: nf_load_n_ff_qwen2moe). */
static int nf_load_n_ff(struct nf_hparams *hp, const struct nf_gguf *g, char *err, size_t errlen)
{
    const char *pfx = nf_arch_name(hp->arch);
    int rc;
    if (hp->arch == NF_ARCH_QWEN2MOE)
        return nf_load_n_ff_qwen2moe(hp, g, err, errlen);
    if (hp->arch == NF_ARCH_GLM4MOE) /* nf_load_glm4moe read both widths */
        return 0;
    if (hp->arch == NF_ARCH_DEEPSEEK2)
        return nf_load_n_ff_deepseek2(hp, g, err, errlen);
    if (!hp->n_expert || hp->arch == NF_ARCH_OLMOE)
        return nf_hp_int(g, pfx, "feed_forward_length", -1, 1, 1 << 24, &hp->n_ff, err, errlen);
    if ((rc = nf_hp_int(g, pfx, "expert_feed_forward_length", nf_archs[hp->arch].moe ? -1 : 0, 1,
                        1 << 24, &hp->n_ff, err, errlen)))
        return rc;
    if (hp->n_ff == 0 &&
        (rc = nf_hp_int(g, pfx, "feed_forward_length", -1, 1, 1 << 24, &hp->n_ff, err, errlen)))
        return rc;
    return 0;
}

/* Loads layer il's architecture-specific attention tensors: the Q/K/V biases (qwen2) and the
 * q/k norms (per head for qwen3, over the whole projection for olmoe); refuses biases in a file
 * whose architecture does not use them (a few llama-arch fine-tunes have them), rather than
 * silently compute something else. */
static int nf_load_attn_extra(struct nf_model *m, struct nf_attn_weights *a, int il, char *err,
                              size_t errlen)
{
    const struct nf_hparams *hp = &m->hp;
    const int64_t qd = (int64_t)hp->n_head * hp->head_dim;
    const int64_t kvd = (int64_t)hp->n_head_kv * hp->head_dim;
    char n[5][64];
    const char *sfx[5] = {"attn_q.bias", "attn_k.bias", "attn_v.bias", "attn_q_norm.weight",
                          "attn_k_norm.weight"};
    for (int i = 0; i < 5; i++)
        snprintf(n[i], sizeof(n[i]), "blk.%d.%s", il, sfx[i]);
    int rc;
    if (!hp->qkv_bias && nf_gguf_find_tensor(m->gguf, n[0]))
        return nf_errf(err, errlen, NF_EARCH,
                       "%s: tensor '%s': attention biases are not supported for "
                       "architecture %s",
                       m->gguf->path, n[0], nf_arch_name(hp->arch));
    if (hp->qkv_bias && ((rc = nf_load_tensor(m, &a->bq, n[0], qd, 1, 1, NF_T_F32, err, errlen)) ||
                         (rc = nf_load_tensor(m, &a->bk, n[1], kvd, 1, 1, NF_T_F32, err, errlen)) ||
                         (rc = nf_load_tensor(m, &a->bv, n[2], kvd, 1, 1, NF_T_F32, err, errlen))))
        return rc;
    const bool full = hp->arch == NF_ARCH_OLMOE;
    if (hp->qk_norm && ((rc = nf_load_tensor(m, &a->q_norm, n[3], full ? qd : hp->head_dim, 1, 1,
                                             NF_T_F32, err, errlen)) ||
                        (rc = nf_load_tensor(m, &a->k_norm, n[4], full ? kvd : hp->head_dim, 1, 1,
                                             NF_T_F32, err, errlen))))
        return rc;
    return 0;
}

/* Loads layer il's shared expert (qwen2moe); refuses one in a file whose architecture has none. */
static int nf_load_shexp(struct nf_model *m, struct nf_moe_weights *w, int il, char *err,
                         size_t errlen)
{
    const int64_t E = m->hp.n_embd, S = m->hp.n_ff_shexp;
    char n[4][64];
    const char *sfx[4] = {"ffn_gate_inp_shexp", "ffn_gate_shexp", "ffn_up_shexp", "ffn_down_shexp"};
    for (int i = 0; i < 4; i++)
        snprintf(n[i], sizeof(n[i]), "blk.%d.%s.weight", il, sfx[i]);
    if (!S) {
        for (int i = 0; i < 4; i++)
            if (nf_gguf_find_tensor(m->gguf, n[i]))
                return nf_errf(err, errlen, NF_EARCH,
                               "%s: tensor '%s': a shared expert is not supported for "
                               "architecture %s",
                               m->gguf->path, n[i], nf_arch_name(m->hp.arch));
        return 0;
    }
    int rc;
    /* glm4moe's shared expert is ungated: a gate tensor there is refused. */
    const bool gated = m->hp.arch != NF_ARCH_GLM4MOE;
    if (!gated && nf_gguf_find_tensor(m->gguf, n[0]))
        return nf_errf(err, errlen, NF_EARCH,
                       "%s: tensor '%s': a shared expert gate is not supported for architecture "
                       "%s",
                       m->gguf->path, n[0], nf_arch_name(m->hp.arch));
    if ((gated && (rc = nf_load_tensor(m, &w->gate_inp_shexp, n[0], E, 1, 1, 0, err, errlen))) ||
        (rc = nf_load_tensor(m, &w->gate_shexp, n[1], E, S, 1, 0, err, errlen)) ||
        (rc = nf_load_tensor(m, &w->up_shexp, n[2], E, S, 1, 0, err, errlen)) ||
        (rc = nf_load_tensor(m, &w->down_shexp, n[3], S, E, 1, 0, err, errlen)))
        return rc;
    return 0;
}

/* gemma3's RMSNorms of the attention and FFN outputs. llama.cpp's converter already adds
 * Gemma's +1 to every norm weight, so they are used as stored, like the other norms. */
static int nf_load_post_norms(struct nf_model *m, struct nf_layer *L, int il, char *err,
                              size_t errlen)
{
    char pa[64], pf[64];
    snprintf(pa, sizeof(pa), "blk.%d.post_attention_norm.weight", il);
    snprintf(pf, sizeof(pf), "blk.%d.post_ffw_norm.weight", il);
    int rc = nf_load_tensor(m, &L->attn.post_norm, pa, m->hp.n_embd, 1, 1, NF_T_F32, err, errlen);
    return rc ? rc
              : nf_load_tensor(m, &L->ffn.post_norm, pf, m->hp.n_embd, 1, 1, NF_T_F32, err, errlen);
}

/* Loads a phi3 layer: the fused attn_qkv and ffn_up tensors, with wq, wk, wv (rows Q, then K,
 * then V, as llama.cpp's build_qkv splits them) and gate, up (the first n_ff rows are the gate:
 * llama.cpp's ggml_swiglu takes silu of the first half) as row views into them. */
static int nf_load_fused_layer(struct nf_model *m, struct nf_layer *L, int il, char *err,
                               size_t errlen)
{
    const struct nf_hparams *hp = &m->hp;
    const int64_t E = hp->n_embd, F = hp->n_ff;
    const int64_t qd = (int64_t)hp->n_head * hp->head_dim;
    const int64_t kvd = (int64_t)hp->n_head_kv * hp->head_dim;
    char n[6][64];
    const char *sfx[6] = {"attn_norm", "attn_qkv", "attn_output", "ffn_norm", "ffn_up", "ffn_down"};
    for (int i = 0; i < 6; i++)
        snprintf(n[i], sizeof(n[i]), "blk.%d.%s.weight", il, sfx[i]);
    int rc;
    if ((rc = nf_load_tensor(m, &L->attn.norm, n[0], E, 1, 1, NF_T_F32, err, errlen)) ||
        (rc = nf_load_tensor(m, &L->attn.wqkv, n[1], E, qd + 2 * kvd, 1, 0, err, errlen)) ||
        (rc = nf_load_tensor(m, &L->attn.wo, n[2], qd, E, 1, 0, err, errlen)) ||
        (rc = nf_load_tensor(m, &L->ffn_norm, n[3], E, 1, 1, NF_T_F32, err, errlen)) ||
        (rc = nf_load_tensor(m, &L->ffn.gate_up, n[4], E, 2 * F, 1, 0, err, errlen)) ||
        (rc = nf_load_tensor(m, &L->ffn.down, n[5], F, E, 1, 0, err, errlen)))
        return rc;
    const struct nf_tensor *qkv = &L->attn.wqkv, *gu = &L->ffn.gate_up;
    const int64_t first[3] = {0, qd, qd + kvd}, rows[3] = {qd, kvd, kvd};
    struct nf_tensor *part[3] = {&L->attn.wq, &L->attn.wk, &L->attn.wv};
    for (int i = 0; i < 3; i++) {
        *part[i] = *qkv;
        part[i]->ne[1] = rows[i];
        part[i]->data = (char *)qkv->data + (size_t)first[i] * qkv->row_size;
    }
    L->ffn.gate = *gu;
    L->ffn.gate.ne[1] = F;
    L->ffn.up = L->ffn.gate;
    L->ffn.up.data = (char *)gu->data + (size_t)F * gu->row_size;
    return 0;
}

/* Loads a gpt-oss layer (llama.cpp's openai-moe tensors): attention with biases on Q, K, V
 * (nf_load_attn_extra) and on the output, the per-head sinks, post_attention_norm as the FFN's
 * norm, the router and its bias, the experts and their biases, every bias and sink F32. */
static int nf_load_gptoss_layer(struct nf_model *m, struct nf_layer *L, int il, char *err,
                                size_t errlen)
{
    const struct nf_hparams *hp = &m->hp;
    const int64_t E = hp->n_embd, F = hp->n_ff, X = hp->n_expert, H = hp->n_head;
    const int64_t qd = (int64_t)hp->n_head * hp->head_dim;
    const int64_t kvd = (int64_t)hp->n_head_kv * hp->head_dim;
    static const char *const sfx[15] = {"attn_norm.weight",     "attn_q.weight",
                                        "attn_k.weight",        "attn_v.weight",
                                        "attn_output.weight",   "attn_output.bias",
                                        "attn_sinks.weight",    "post_attention_norm.weight",
                                        "ffn_gate_inp.weight",  "ffn_gate_inp.bias",
                                        "ffn_gate_exps.weight", "ffn_up_exps.weight",
                                        "ffn_down_exps.weight", "ffn_gate_exps.bias",
                                        "ffn_up_exps.bias"};
    char n[16][64];
    for (int i = 0; i < 15; i++)
        snprintf(n[i], sizeof(n[i]), "blk.%d.%s", il, sfx[i]);
    snprintf(n[15], sizeof(n[15]), "blk.%d.ffn_down_exps.bias", il);
    const int f32 = NF_T_F32;
    int rc;
    if ((rc = nf_load_tensor(m, &L->attn.norm, n[0], E, 1, 1, f32, err, errlen)) ||
        (rc = nf_load_tensor(m, &L->attn.wq, n[1], E, qd, 1, 0, err, errlen)) ||
        (rc = nf_load_tensor(m, &L->attn.wk, n[2], E, kvd, 1, 0, err, errlen)) ||
        (rc = nf_load_tensor(m, &L->attn.wv, n[3], E, kvd, 1, 0, err, errlen)) ||
        (rc = nf_load_tensor(m, &L->attn.wo, n[4], qd, E, 1, 0, err, errlen)) ||
        (rc = nf_load_tensor(m, &L->attn.bo, n[5], E, 1, 1, f32, err, errlen)) ||
        (rc = nf_load_tensor(m, &L->attn.sinks, n[6], H, 1, 1, f32, err, errlen)) ||
        (rc = nf_load_tensor(m, &L->ffn_norm, n[7], E, 1, 1, f32, err, errlen)) ||
        (rc = nf_load_tensor(m, &L->moe.gate_inp, n[8], E, X, 1, 0, err, errlen)) ||
        (rc = nf_load_tensor(m, &L->moe.gate_inp_b, n[9], X, 1, 1, f32, err, errlen)) ||
        (rc = nf_load_tensor(m, &L->moe.gate_exps, n[10], E, F, X, 0, err, errlen)) ||
        (rc = nf_load_tensor(m, &L->moe.up_exps, n[11], E, F, X, 0, err, errlen)) ||
        (rc = nf_load_tensor(m, &L->moe.down_exps, n[12], F, E, X, 0, err, errlen)) ||
        (rc = nf_load_tensor(m, &L->moe.gate_exps_b, n[13], F, X, 1, f32, err, errlen)) ||
        (rc = nf_load_tensor(m, &L->moe.up_exps_b, n[14], F, X, 1, f32, err, errlen)) ||
        (rc = nf_load_tensor(m, &L->moe.down_exps_b, n[15], E, X, 1, f32, err, errlen)))
        return rc;
    return 0;
}

/* Loads phi3's optional LongRoPE factors: both or neither (llama.cpp picks the long ones when
 * the context is longer than rope.scaling.original_context_length). */
static int nf_load_longrope(struct nf_model *m, char *err, size_t errlen)
{
    const int64_t half = m->hp.n_rot / 2;
    int rc;
    /* llama.cpp's phi3 has no rope_freqs (its tensor count check refuses such a file). */
    if (nf_gguf_find_tensor(m->gguf, "rope_freqs.weight"))
        return nf_errf(err, errlen, NF_EARCH,
                       "%s: tensor 'rope_freqs.weight' is not used by architecture phi3 (its "
                       "frequency factors are rope_factors_short/long.weight)",
                       m->gguf->path);
    if ((rc = nf_load_tensor(m, &m->rope_short, "rope_factors_short.weight", half, 1, 1,
                             NF_T_OPTIONAL | NF_T_F32, err, errlen)) ||
        (rc = nf_load_tensor(m, &m->rope_long, "rope_factors_long.weight", half, 1, 1,
                             NF_T_OPTIONAL | NF_T_F32, err, errlen)))
        return rc;
    if (!m->rope_short.data != !m->rope_long.data)
        return nf_errf(
            err, errlen, NF_ENOTENSOR,
            "%s: tensor '%s' [%lld] is missing (LongRoPE needs both factor tensors)", m->gguf->path,
            m->rope_short.data ? "rope_factors_long.weight" : "rope_factors_short.weight",
            (long long)half);
    return 0;
}

/* Loads a deepseek2 layer: the latent attention's tensors, then a dense FFN (leading layers) or
 * the router, routed experts (with V3's optional selection bias) and the shared expert. The
 * kv latent's width is checked against attention.kv_lora_rank first, so a file whose rank does
 * not match its tensors is refused with one line naming both. */
static int nf_load_mla_layer(struct nf_model *m, struct nf_layer *L, int il, char *err,
                             size_t errlen)
{
    const struct nf_hparams *hp = &m->hp;
    const int64_t E = hp->n_embd, H = hp->n_head, K = hp->n_embd_head_k_mla, R = hp->n_rot;
    const int64_t LK = hp->n_lora_kv, QA = hp->n_lora_q, VM = hp->n_embd_head_v_mla;
    const int64_t X = hp->n_expert, F = hp->n_ff, S = hp->n_ff_shexp;
    struct nf_attn_weights *a = &L->attn;
    char n[19][64];
    const char *sfx[19] = {"attn_norm.weight",      "attn_q_a.weight",    "attn_q_a_norm.weight",
                           "attn_q_b.weight",       "attn_q.weight",      "attn_kv_a_mqa.weight",
                           "attn_kv_a_norm.weight", "attn_k_b.weight",    "attn_v_b.weight",
                           "attn_output.weight",    "ffn_norm.weight",    "ffn_gate.weight",
                           "ffn_up.weight",         "ffn_down.weight",    "ffn_gate_inp.weight",
                           "ffn_gate_exps.weight",  "ffn_up_exps.weight", "ffn_down_exps.weight",
                           "exp_probs_b.bias"};
    for (int i = 0; i < 19; i++)
        snprintf(n[i], sizeof(n[i]), "blk.%d.%s", il, sfx[i]);
    const struct nf_gguf_tensor *kva = nf_gguf_find_tensor(m->gguf, n[5]);
    if (kva && kva->ne[1] != LK + R)
        return nf_errf(err, errlen, NF_ESHAPE,
                       "%s: tensor '%s' has %lld rows, but deepseek2.attention.kv_lora_rank %lld "
                       "+ rope dims %lld = %lld (the MLA rank does not match the tensor)",
                       m->gguf->path, n[5], (long long)kva->ne[1], (long long)LK, (long long)R,
                       (long long)(LK + R));
    int rc;
    if ((rc = nf_load_tensor(m, &a->norm, n[0], E, 1, 1, NF_T_F32, err, errlen)))
        return rc;
    if (QA > 0 && ((rc = nf_load_tensor(m, &a->wq_a, n[1], E, QA, 1, 0, err, errlen)) ||
                   (rc = nf_load_tensor(m, &a->q_a_norm, n[2], QA, 1, 1, NF_T_F32, err, errlen)) ||
                   (rc = nf_load_tensor(m, &a->wq_b, n[3], QA, H * K, 1, 0, err, errlen))))
        return rc;
    if (QA == 0 && (rc = nf_load_tensor(m, &a->wq, n[4], E, H * K, 1, 0, err, errlen)))
        return rc;
    if ((rc = nf_load_tensor(m, &a->wkv_a, n[5], E, LK + R, 1, 0, err, errlen)) ||
        (rc = nf_load_tensor(m, &a->kv_a_norm, n[6], LK, 1, 1, NF_T_F32, err, errlen)) ||
        (rc = nf_load_tensor(m, &a->wk_b, n[7], K - R, LK, H, 0, err, errlen)) ||
        (rc = nf_load_tensor(m, &a->wv_b, n[8], LK, VM, H, 0, err, errlen)) ||
        (rc = nf_load_tensor(m, &a->wo, n[9], H * VM, E, 1, 0, err, errlen)) ||
        (rc = nf_load_tensor(m, &L->ffn_norm, n[10], E, 1, 1, NF_T_F32, err, errlen)))
        return rc;
    if (nf_layer_dense(hp, il)) {
        const int64_t FD = hp->n_ff_dense;
        return (rc = nf_load_tensor(m, &L->ffn.gate, n[11], E, FD, 1, 0, err, errlen)) ||
                       (rc = nf_load_tensor(m, &L->ffn.up, n[12], E, FD, 1, 0, err, errlen)) ||
                       (rc = nf_load_tensor(m, &L->ffn.down, n[13], FD, E, 1, 0, err, errlen))
                   ? rc
                   : 0;
    }
    struct nf_moe_weights *w = &L->moe;
    char sh[3][64];
    snprintf(sh[0], sizeof(sh[0]), "blk.%d.ffn_gate_shexp.weight", il);
    snprintf(sh[1], sizeof(sh[1]), "blk.%d.ffn_up_shexp.weight", il);
    snprintf(sh[2], sizeof(sh[2]), "blk.%d.ffn_down_shexp.weight", il);
    if ((rc = nf_load_tensor(m, &w->gate_inp, n[14], E, X, 1, 0, err, errlen)) ||
        (rc = nf_load_tensor(m, &w->gate_exps, n[15], E, F, X, 0, err, errlen)) ||
        (rc = nf_load_tensor(m, &w->up_exps, n[16], E, F, X, 0, err, errlen)) ||
        (rc = nf_load_tensor(m, &w->down_exps, n[17], F, E, X, 0, err, errlen)) ||
        (rc = nf_load_tensor(m, &w->exp_probs_b, n[18], X, 1, 1, NF_T_OPTIONAL | NF_T_F32, err,
                             errlen)))
        return rc;
    if (S && ((rc = nf_load_tensor(m, &w->gate_shexp, sh[0], E, S, 1, 0, err, errlen)) ||
              (rc = nf_load_tensor(m, &w->up_shexp, sh[1], E, S, 1, 0, err, errlen)) ||
              (rc = nf_load_tensor(m, &w->down_shexp, sh[2], S, E, 1, 0, err, errlen))))
        return rc;
    return 0;
}

/* Loads every tensor with the shapes the hyperparameters imply. */
static int nf_load_weights(struct nf_model *m, char *err, size_t errlen)
{
    struct nf_hparams *hp = &m->hp;
    const struct nf_gguf *g = m->gguf;
    const struct nf_gguf_tensor *te = nf_gguf_find_tensor(g, "token_embd.weight");
    if (!te)
        return nf_errf(err, errlen, NF_ENOTENSOR,
                       "%s: tensor 'token_embd.weight' [%d, n_vocab] is missing", g->path,
                       hp->n_embd);
    if (te->ne[1] < 1 || te->ne[1] > (1 << 24))
        return nf_errf(err, errlen, NF_ESHAPE,
                       "%s: tensor 'token_embd.weight' has %lld rows, expected 1..%d", g->path,
                       (long long)te->ne[1], 1 << 24);
    hp->n_vocab = (int)te->ne[1];
    int64_t E = hp->n_embd, V = hp->n_vocab;
    int64_t qd = (int64_t)hp->n_head * hp->head_dim, kvd = (int64_t)hp->n_head_kv * hp->head_dim;
    int rc;
    if ((rc = nf_load_tensor(m, &m->tok_embd, "token_embd.weight", E, V, 1, 0, err, errlen)) ||
        (rc = nf_load_tensor(m, &m->output_norm, "output_norm.weight", E, 1, 1, NF_T_F32, err,
                             errlen)) ||
        (rc =
             nf_load_tensor(m, &m->output, "output.weight", E, V, 1, NF_T_OPTIONAL, err, errlen)) ||
        (rc = hp->arch == NF_ARCH_LLAMA
                  ? nf_load_tensor(m, &m->rope_freqs, "rope_freqs.weight", hp->n_rot / 2, 1, 1,
                                   NF_T_OPTIONAL | NF_T_F32, err, errlen)
                  : 0) ||
        (rc = hp->arch == NF_ARCH_PHI3 ? nf_load_longrope(m, err, errlen) : 0))
        return rc;
    if (!m->output.data) {
        m->output = m->tok_embd;
        m->tied_output = true;
    }
    if ((rc = nf_load_n_ff(hp, g, err, errlen)))
        return rc;
    int64_t F = hp->n_ff, X = hp->n_expert;
    m->layers = calloc((size_t)hp->n_layer, sizeof(*m->layers));
    if (!m->layers)
        return nf_errf(err, errlen, -ENOMEM, "%s: out of memory", g->path);
    for (int il = 0; il < hp->n_layer; il++) {
        struct nf_layer *L = &m->layers[il];
        char n[10][64];
        const char *sfx[10] = {"attn_norm", "attn_q",   "attn_k", "attn_v",   "attn_output",
                               "ffn_norm",  "ffn_gate", "ffn_up", "ffn_down", "ffn_gate_inp"};
        for (int i = 0; i < 10; i++)
            snprintf(n[i], sizeof(n[i]), "blk.%d.%s.weight", il, sfx[i]);
        if (hp->arch == NF_ARCH_DEEPSEEK2) {
            if ((rc = nf_load_mla_layer(m, L, il, err, errlen)))
                return rc;
            continue;
        }
        if ((rc = nf_load_attn_extra(m, &L->attn, il, err, errlen)))
            return rc;
        if (hp->arch == NF_ARCH_PHI3) {
            if ((rc = nf_load_fused_layer(m, L, il, err, errlen)))
                return rc;
            continue;
        }
        if (hp->arch == NF_ARCH_GPTOSS) {
            if ((rc = nf_load_gptoss_layer(m, L, il, err, errlen)))
                return rc;
            continue;
        }
        /* glm4moe normalizes the FFN input with post_attention_norm (it has no ffn_norm). */
        if (hp->arch == NF_ARCH_GLM4MOE)
            snprintf(n[5], sizeof(n[5]), "blk.%d.post_attention_norm.weight", il);
        if ((rc = nf_load_tensor(m, &L->attn.norm, n[0], E, 1, 1, NF_T_F32, err, errlen)) ||
            (rc = nf_load_tensor(m, &L->attn.wq, n[1], E, qd, 1, 0, err, errlen)) ||
            (rc = nf_load_tensor(m, &L->attn.wk, n[2], E, kvd, 1, 0, err, errlen)) ||
            (rc = nf_load_tensor(m, &L->attn.wv, n[3], E, kvd, 1, 0, err, errlen)) ||
            (rc = nf_load_tensor(m, &L->attn.wo, n[4], qd, E, 1, 0, err, errlen)) ||
            (rc = nf_load_tensor(m, &L->ffn_norm, n[5], E, 1, 1, NF_T_F32, err, errlen)))
            return rc;
        if (hp->post_norms && (rc = nf_load_post_norms(m, L, il, err, errlen)))
            return rc;
        if (!X || nf_layer_dense(hp, il)) {
            const int64_t Fl = nf_layer_n_ff(hp, il);
            if ((rc = nf_load_tensor(m, &L->ffn.gate, n[6], E, Fl, 1, 0, err, errlen)) ||
                (rc = nf_load_tensor(m, &L->ffn.up, n[7], E, Fl, 1, 0, err, errlen)) ||
                (rc = nf_load_tensor(m, &L->ffn.down, n[8], Fl, E, 1, 0, err, errlen)))
                return rc;
            continue;
        }
        char ge[64], ue[64], de[64];
        snprintf(ge, sizeof(ge), "blk.%d.ffn_gate_exps.weight", il);
        snprintf(ue, sizeof(ue), "blk.%d.ffn_up_exps.weight", il);
        snprintf(de, sizeof(de), "blk.%d.ffn_down_exps.weight", il);
        if ((rc = nf_load_tensor(m, &L->moe.gate_inp, n[9], E, X, 1, 0, err, errlen)) ||
            (rc = nf_load_tensor(m, &L->moe.gate_exps, ge, E, F, X, 0, err, errlen)) ||
            (rc = nf_load_tensor(m, &L->moe.up_exps, ue, E, F, X, 0, err, errlen)) ||
            (rc = nf_load_tensor(m, &L->moe.down_exps, de, F, E, X, 0, err, errlen)) ||
            (rc = nf_load_shexp(m, &L->moe, il, err, errlen)))
            return rc;
        if (hp->moe_sigmoid) {
            char eb[64];
            snprintf(eb, sizeof(eb), "blk.%d.exp_probs_b.bias", il);
            if ((rc = nf_load_tensor(m, &L->moe.exp_probs_b, eb, X, 1, 1, NF_T_F32, err, errlen)))
                return rc;
        }
    }
    return 0;
}

int nf_model_hparams(struct nf_hparams *hp, struct nf_gguf *g, char *err, size_t errlen)
{
    struct nf_model tmp = {.gguf = g};
    int rc = nf_load_hparams(&tmp, err, errlen);
    if (rc < 0)
        return rc;
    const struct nf_gguf_tensor *te = nf_gguf_find_tensor(g, "token_embd.weight");
    if (!te || te->ne[1] < 1 || te->ne[1] > (1 << 24))
        return nf_errf(err, errlen, NF_ENOTENSOR,
                       "%s: tensor 'token_embd.weight' [%d, 1..%d] is missing or malformed",
                       g->path, tmp.hp.n_embd, 1 << 24);
    tmp.hp.n_vocab = (int)te->ne[1];
    /* The FFN width as nf_load_weights reads it. */
    if ((rc = nf_load_n_ff(&tmp.hp, g, err, errlen)))
        return rc;
    *hp = tmp.hp;
    return 0;
}

/* Bytes of readable zero pages kept after a mapped file, so kernels that read a little past a
 * tensor's end never fault at the end of the file. */
#define NF_MAP_TAIL 65536

/* Maps m's GGUF read-only: an anonymous reservation with each file (each part of a split model)
 * mapped over it at its base in the reader's offset space; the gaps between parts stay zero. */
static int nf_model_map(struct nf_model *m, char *err, size_t errlen)
{
    const struct nf_gguf *g = m->gguf;
    size_t len = (size_t)g->file_size + NF_MAP_TAIL;
    void *base = mmap(NULL, len, PROT_READ, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (base == MAP_FAILED)
        return nf_errf(err, errlen, -errno, "%s: reserving %zu bytes of address space: %s", g->path,
                       len, strerror(errno));
    for (uint32_t i = 0; i < g->n_parts; i++) {
        const struct nf_gguf_part *p = &g->parts[i];
        if (p->size && mmap((char *)base + p->base, (size_t)p->size, PROT_READ,
                            MAP_SHARED | MAP_FIXED, p->fd, 0) == MAP_FAILED) {
            int e = errno;
            munmap(base, len);
            return nf_errf(err, errlen, -e, "%s: mmap: %s", p->path, strerror(e));
        }
    }
    m->map = base;
    m->map_len = len;
    return 0;
}

/* Drops the mapping of a mapped model; its tensors point into it, so they are only cleared. */
static void nf_model_unmap(struct nf_model *m)
{
    if (m->layers)
        memset(m->layers, 0, sizeof(*m->layers) * (size_t)m->hp.n_layer);
    memset(&m->tok_embd, 0, sizeof(m->tok_embd));
    memset(&m->output, 0, sizeof(m->output));
    memset(&m->output_norm, 0, sizeof(m->output_norm));
    memset(&m->rope_freqs, 0, sizeof(m->rope_freqs));
    memset(&m->rope_short, 0, sizeof(m->rope_short));
    memset(&m->rope_long, 0, sizeof(m->rope_long));
    munmap(m->map, m->map_len);
    m->map = NULL;
}

/* nf_model_load_opts.repack: the q4_0 matrices of the dense layers (not the fused ones of phi3,
 * whose parts are views, nor experts, nor deepseek2's) interleaved by eight rows in place.
 * Returns 0 or -ENOMEM (the tensors then keep whatever layout each has, x8 saying which). */
static int nf_model_repack(struct nf_model *m)
{
    if (m->hp.arch == NF_ARCH_DEEPSEEK2)
        return 0;
    void *tmp = NULL;
    size_t tmp_len = 0;
    for (int il = 0; il < m->hp.n_layer; il++) {
        struct nf_layer *L = &m->layers[il];
        if (L->attn.wqkv.data || L->ffn.gate_up.data)
            continue;
        struct nf_tensor *ts[] = {&L->attn.wq,  &L->attn.wk, &L->attn.wv, &L->attn.wo,
                                  &L->ffn.gate, &L->ffn.up,  &L->ffn.down};
        for (size_t i = 0; i < sizeof(ts) / sizeof(ts[0]); i++) {
            struct nf_tensor *t = ts[i];
            if (!t->data || t->type != NF_TYPE_Q4_0 || t->ne[2] != 1 ||
                !nf_q4_0x8_ok(t->ne[0], t->ne[1]))
                continue;
            if (8 * t->row_size > tmp_len) {
                void *p = realloc(tmp, 8 * t->row_size);
                if (!p) {
                    free(tmp);
                    return -ENOMEM;
                }
                tmp = p;
                tmp_len = 8 * t->row_size;
            }
            nf_q4_0x8_repack(t->data, t->ne[0], t->ne[1], tmp);
            t->x8 = true;
            m->x8_row_size = t->row_size > m->x8_row_size ? t->row_size : m->x8_row_size;
        }
    }
    free(tmp);
    return 0;
}

int nf_model_load(struct nf_model **out, const char *path, char *err, size_t errlen)
{
    return nf_model_load_ex(out, path, NULL, err, errlen);
}

int nf_model_load_ex(struct nf_model **out, const char *path, const struct nf_model_load_opts *o,
                     char *err, size_t errlen)
{
    nf_kernels_init();
    struct nf_model *m = calloc(1, sizeof(*m));
    if (!m)
        return nf_errf(err, errlen, -ENOMEM, "%s: out of memory", path);
    /* A .nft tile file brings its own metadata and tile reader (model_nft.c). */
    int rc = nf_model_nft_source(m, path, err, errlen);
    if (rc > 0 && o && o->use_mmap) {
        rc = nf_errf(err, errlen, NF_EUSAGE,
                     "%s: a .nft tile file cannot be mapped as a whole (use the .gguf)", path);
        goto fail; /* m owns the .nft's metadata and reader: nf_model_free closes both */
    }
    if (rc == 0)
        rc = nf_gguf_open(&m->gguf, path, err, errlen);
    if (rc < 0) {
        m->gguf = NULL;
        goto fail;
    }
    if (rc == 0 && o && o->use_mmap && (rc = nf_model_map(m, err, errlen)) < 0)
        goto fail;
    if ((rc = nf_load_hparams(m, err, errlen)) < 0 || (rc = nf_load_weights(m, err, errlen)) < 0)
        goto fail;
    if (o && o->repack && !m->map && (rc = nf_model_repack(m)) < 0) {
        rc = nf_errf(err, errlen, rc, "%s: out of memory interleaving q4_0 rows", path);
        goto fail;
    }
    *out = m;
    return 0;
fail:
    nf_model_free(m);
    return rc;
}

static void nf_tensor_release(struct nf_tensor *t)
{
    free(t->data);
    t->data = NULL;
}

void nf_model_free(struct nf_model *m)
{
    if (!m)
        return;
    if (m->map)
        nf_model_unmap(m);
    if (m->layers) {
        for (int il = 0; il < m->hp.n_layer; il++) {
            struct nf_layer *L = &m->layers[il];
            if (L->attn.wqkv.data) /* phi3: views into the fused tensors, freed below */
                L->attn.wq.data = L->attn.wk.data = L->attn.wv.data = NULL;
            if (L->ffn.gate_up.data)
                L->ffn.gate.data = L->ffn.up.data = NULL;
            struct nf_tensor *ts[] = {&L->attn.norm,
                                      &L->attn.wq,
                                      &L->attn.wk,
                                      &L->attn.wv,
                                      &L->attn.wo,
                                      &L->ffn_norm,
                                      &L->ffn.gate,
                                      &L->ffn.up,
                                      &L->ffn.down,
                                      &L->moe.gate_inp,
                                      &L->moe.gate_exps,
                                      &L->moe.up_exps,
                                      &L->moe.down_exps,
                                      &L->attn.bq,
                                      &L->attn.bk,
                                      &L->attn.bv,
                                      &L->attn.q_norm,
                                      &L->attn.k_norm,
                                      &L->moe.gate_inp_shexp,
                                      &L->moe.gate_shexp,
                                      &L->moe.up_shexp,
                                      &L->moe.down_shexp,
                                      &L->attn.wqkv,
                                      &L->ffn.gate_up};
            for (size_t i = 0; i < sizeof(ts) / sizeof(ts[0]); i++)
                nf_tensor_release(ts[i]);
            nf_tensor_release(&L->attn.post_norm);
            nf_tensor_release(&L->ffn.post_norm);
            struct nf_tensor *extra[] = {
                &L->attn.wq_a,      &L->attn.q_a_norm,  &L->attn.wq_b,      &L->attn.wkv_a,
                &L->attn.kv_a_norm, &L->attn.wk_b,      &L->attn.wv_b,      &L->moe.exp_probs_b,
                &L->attn.bo,        &L->attn.sinks,     &L->moe.gate_inp_b, &L->moe.gate_exps_b,
                &L->moe.up_exps_b,  &L->moe.down_exps_b};
            for (size_t i = 0; i < sizeof(extra) / sizeof(extra[0]); i++)
                nf_tensor_release(extra[i]);
        }
        free(m->layers);
    }
    if (!m->tied_output)
        nf_tensor_release(&m->output);
    nf_tensor_release(&m->tok_embd);
    nf_tensor_release(&m->output_norm);
    nf_tensor_release(&m->rope_freqs);
    nf_tensor_release(&m->rope_short);
    nf_tensor_release(&m->rope_long);
    if (m->gguf)
        nf_gguf_close(m->gguf);
    if (m->close_src)
        m->close_src(m->src);
    free(m);
}

/* What phi3 adds to the summary: partial rotary, LongRoPE, an unapplied sliding window. */
static void nf_model_describe_phi3(const struct nf_model *m, char *buf, size_t len)
{
    const struct nf_hparams *hp = &m->hp;
    int off = snprintf(buf, len, ", rope dims %d", hp->n_rot);
    if (m->rope_long.data && off > 0 && (size_t)off < len)
        off +=
            snprintf(buf + off, len - (size_t)off, ", LongRoPE (original ctx %d, attn factor %g)",
                     hp->n_ctx_orig, (double)hp->rope_attn_factor);
    if (hp->phi3_swa && off > 0 && (size_t)off < len)
        snprintf(buf + off, len - (size_t)off,
                 ", sliding window %d not applied (as llama.cpp: full attention)", hp->phi3_swa);
}

void nf_model_describe(const struct nf_model *m, char *buf, size_t len)
{
    const struct nf_hparams *hp = &m->hp;
    const struct nf_type_traits *tr = nf_type_traits(
        hp->arch == NF_ARCH_DEEPSEEK2 ? m->layers[0].attn.wkv_a.type : m->layers[0].attn.wq.type);
    int off =
        snprintf(buf, len,
                 "%s: %d layers, dim %d, ffn %d, heads %d/%d (head dim %d), vocab %d, "
                 "ctx %d, %s%s, %.1f MiB",
                 nf_arch_name(hp->arch), hp->n_layer, hp->n_embd, hp->n_ff, hp->n_head,
                 hp->n_head_kv, hp->head_dim, hp->n_vocab, hp->n_ctx_train, tr ? tr->name : "?",
                 m->tied_output ? ", tied output" : "", m->weight_bytes / 1048576.0);
    if (hp->n_expert && off > 0 && (size_t)off < len)
        off += snprintf(buf + off, len - (size_t)off, ", %d experts (%d used)", hp->n_expert,
                        hp->n_expert_used);
    if (hp->n_swa && hp->swa_pattern == 2 && off > 0 && (size_t)off < len)
        off += snprintf(buf + off, len - (size_t)off,
                        ", sliding window %d (even layers; the odd ones global)", hp->n_swa);
    else if (hp->n_swa && off > 0 && (size_t)off < len)
        off +=
            snprintf(buf + off, len - (size_t)off, ", sliding window %d (every %dth layer global)",
                     hp->n_swa, hp->swa_pattern);
    if (hp->n_ff_shexp && off > 0 && (size_t)off < len)
        off += snprintf(buf + off, len - (size_t)off, ", shared expert %d", hp->n_ff_shexp);
    if (hp->arch == NF_ARCH_PHI3 && off > 0 && (size_t)off < len)
        nf_model_describe_phi3(m, buf + off, len - (size_t)off);
    if (hp->moe_sigmoid && off > 0 && (size_t)off < len)
        off += snprintf(buf + off, len - (size_t)off,
                        ", sigmoid routing (groups %d/%d, norm %s, scale %g), %d leading dense "
                        "(ffn %d), rope dims %d, %d nextn layers skipped",
                        hp->route.n_group_used, hp->route.n_group, hp->route.norm_w ? "yes" : "no",
                        (double)hp->route.scale, hp->n_layer_dense, hp->n_ff_dense, hp->n_rot,
                        hp->n_nextn);
    if (hp->arch == NF_ARCH_DEEPSEEK2 && off > 0 && (size_t)off < len)
        off +=
            snprintf(buf + off, len - (size_t)off,
                     ", MLA (q rank %d, kv rank %d, rope dims %d, latent cache %d per token), "
                     "%d leading dense (ffn %d), %s routing%s",
                     hp->n_lora_q, hp->n_lora_kv, hp->n_rot, hp->head_dim, hp->n_layer_dense,
                     hp->n_ff_dense, hp->expert_gating == NF_GATING_SIGMOID ? "sigmoid" : "softmax",
                     hp->n_expert_groups > 1 ? " (grouped)" : "");
    if (hp->arch == NF_ARCH_GPTOSS && hp->yarn_ext_factor != 0.0f && off > 0 && (size_t)off < len)
        snprintf(buf + off, len - (size_t)off, ", YaRN x%g (original ctx %d)",
                 (double)(1.0f / hp->rope_freq_scale), hp->n_ctx_orig);
}
