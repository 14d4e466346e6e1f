/* model.h - the llama-family transformer: weights loaded from GGUF, run state, forward pass.
 *
 * Supported GGUF general.architecture values (anything else is refused with NF_EARCH):
 *  - "llama" (Llama 1/2/3.x, Mistral, TinyLlama, llama2.c stories, Mixtral-style MoE with
 *    ffn_*_exps tensors): RMSNorm, GQA attention with llama.cpp's NORM RoPE (adjacent pairs),
 *    optional rope_freqs frequency factors (Llama 3.1+) and linear rope scaling, SwiGLU FFN,
 *    tied or separate output;
 *  - "qwen2": the same with biases on Q, K and V and NEOX RoPE (pairs half a head apart);
 *  - "qwen3": NEOX RoPE, no biases, a per-head RMSNorm of q and k (attn_q_norm, attn_k_norm)
 *    before RoPE, head size from attention.key_length;
 *  - "qwen3moe": qwen3 attention with a routed MoE FFN (softmax, top-k, renormalized);
 *  - "gemma3" (Gemma 3 text): embeddings scaled by sqrt(n_embd), NEOX RoPE, qwen3's q/k norms,
 *    Q scaled after RoPE (1 / sqrt(key_length)), RMSNorm of the attention and FFN outputs
 *    (post_attention_norm, post_ffw_norm) before their residual adds, a GELU (tanh) gated FFN,
 *    and sliding-window layers (window attention.sliding_window, rope base 10000) with every
 *    6th layer global (rope.freq_base, linear rope.scaling.factor), as llama.cpp's gemma3;
 *    without the window key every layer is global.
 *  - "qwen2moe": qwen2 attention with a routed MoE FFN (softmax, top-k, not renormalized) plus
 *    a shared expert (ffn_*_shexp) whose output is scaled by sigmoid(ffn_gate_inp_shexp . x);
 *  - "olmoe": NEOX RoPE, an RMSNorm of q and of k over the whole projection (attn_q_norm of
 *    n_head * head_dim, attn_k_norm of n_head_kv * head_dim) before RoPE, a routed MoE FFN
 *    (softmax, top-k, not renormalized).
 *  - "phi3" (Phi-3, Phi-3.5, Phi-4-mini): fused attn_qkv (Q rows, then K, then V) and fused
 *    ffn_up (gate rows, then up rows) loaded as row views of one tensor, NEOX RoPE over
 *    rope.dimension_count dims (partial rotary), Q scaled by 1/sqrt(head_dim) before the
 *    attention (softmax scale 1), optional LongRoPE factors (rope_factors_short/long) with
 *    rope.scaling.attn_factor; attention.sliding_window is read but, as in llama.cpp, not
 *    applied (full causal attention).
 *  - "deepseek2" (DeepSeek-V2/V2-Lite/V3/R1, Kimi-K2): multi-head latent attention in its absorbed
 *    form (model_deepseek2.c): q through a low rank (attn_q_a, attn_q_a_norm, attn_q_b) or plain
 *    attn_q (V2-Lite), the kv latent attn_kv_a_mqa (kv_lora_rank values, then the shared rope
 *    part), attn_kv_a_norm, and the split attn_k_b / attn_v_b; the KV cache keeps the latent
 *    (kv_lora_rank + rope dims per token and layer, key_length); NORM RoPE on the rope dims;
 *    leading dense layers, then routed experts plus an ungated shared expert, routed by softmax
 *    (V2) or sigmoid with a score-correction bias and expert groups (V3), weights optionally
 *    renormalized and scaled by expert_weights_scale; YaRN rope scaling (rope.scaling.type
 *    yarn) with llama.cpp's attention factor and score scale (mscale^2 / sqrt(key_length_mla)).
 *  - "gpt-oss" (OpenAI gpt-oss-20b/120b): NEOX RoPE with YaRN scaling, biases on Q, K, V and
 *    the attention output, a learned per-head attention sink (attn_sinks: a logit added to
 *    the softmax's denominator), sliding-window layers (attention.sliding_window; even layers,
 *    the odd ones global) as llama.cpp's openai-moe graph, post_attention_norm as the FFN's
 *    norm, a routed MoE with a biased router (top k of the logits, then a softmax over those
 *    k) and biased experts whose activation is the clamped SwiGLU (nf_swiglu_oai).
 * Every hyperparameter is read from the "<arch>.*" metadata keys.
 *
 * The per-layer math takes weight pointers (struct nf_attn_weights, nf_ffn_weights,
 * nf_moe_weights), so a caller that streams tiles can run a layer on weights it owns.
 *
 * Numerics follow llama.cpp's CPU backend so outputs can be checked against it: activations
 * are converted to the weight type's vec_dot_type before each mat-vec, the KV cache is F16, and
 * attention follows ggml's mul_mat + soft_max path (see model_forward.c for what was measured). */
#ifndef NF_MODEL_H
#define NF_MODEL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "gguf.h"
#include "quants.h"

/* Largest number of tokens one forward call processes at once (prompt batches are cut into
 * chunks of this size); scratch buffers are sized for it. The default ubatch of nf_ctx_create
 * and the stream's chunk size. */
#define NF_MAX_BATCH 32
/* Largest ubatch nf_ctx_create_ub accepts (run's -ub). */
#define NF_MAX_UBATCH 4096

/* A weight tensor in RAM (or a view of one expert's slice of a 3-D tensor). */
struct nf_tensor {
    const char *name; /* points into the GGUF (valid while the model is open) */
    enum nf_type type;
    int64_t ne[3]; /* ne[0] = row length (input dim), ne[1] = rows (output dim), ne[2] = experts */
    size_t row_size; /* bytes per row */
    void *data;      /* ne[2] * ne[1] rows of row_size bytes; NULL when absent */
    /* q4_0 rows interleaved by eight in data (quants_q4_0x8.h, nf_model_load_opts.repack):
     * only nf_matmul reads such a tensor. */
    bool x8;
};

/* The architectures nf_model_load runs (general.architecture). */
enum nf_arch {
    NF_ARCH_LLAMA = 0,
    NF_ARCH_QWEN2,
    NF_ARCH_QWEN3,
    NF_ARCH_QWEN3MOE,
    NF_ARCH_GEMMA3,
    NF_ARCH_QWEN2MOE,
    NF_ARCH_OLMOE,
    NF_ARCH_PHI3,
    NF_ARCH_GLM4MOE,
    NF_ARCH_DEEPSEEK2,
    NF_ARCH_GPTOSS,
};

/* The general.architecture string of a. */
const char *nf_arch_name(enum nf_arch a);

/* Sigmoid expert routing (DeepSeek-V3, GLM-4.5; llama.cpp's build_moe_ffn with sigmoid gating),
 * its settings read from the <arch>.expert_* metadata keys. */
struct nf_moe_sigmoid_route {
    int n_expert;      /* X, 2..4096 */
    int n_expert_used; /* K, 1..64 */
    int n_group;       /* expert_group_count: experts in n_group equal groups; 0 or 1: none */
    int n_group_used;  /* expert_group_used_count: groups a token may choose from (1..n_group,
                        * at most 64) */
    bool norm_w;       /* expert_weights_norm: the K weights divided by their sum */
    float scale;       /* expert_weights_scale (routed scaling factor); 0 or 1: none */
};

struct nf_hparams {
    enum nf_arch arch;
    bool rope_neox;  /* NEOX RoPE (pairs i, i + n_rot/2) instead of adjacent pairs */
    bool qkv_bias;   /* attn_q/k/v.bias tensors present (qwen2) */
    bool qk_norm;    /* attn_q_norm / attn_k_norm: per head (qwen3, qwen3moe) or over the
                      * whole projection (olmoe), told apart by the norm's length */
    bool moe_norm_w; /* the top-k expert weights renormalized to sum to 1 (qwen3moe, llama) */
    int n_vocab;
    int n_embd; /* model width */
    int n_layer;
    int n_ff; /* dense FFN width, or expert FFN width for MoE */
    int n_head;
    int n_head_kv;
    int head_dim; /* n_embd / n_head unless attention.key_length says otherwise */
    int n_rot;    /* rotated dims per head (rope.dimension_count) */
    int n_expert; /* 0 for dense models */
    int n_expert_used;
    int n_ff_shexp;  /* shared expert width (qwen2moe), else 0 */
    int n_ctx_train; /* <arch>.context_length */
    float rope_base;
    float rope_freq_scale; /* 1 / rope.scaling.factor for linear scaling, else 1 */
    float rms_eps;

    /* gemma3 (zero / false for the other architectures): */
    bool post_norms;  /* post_attention_norm and post_ffw_norm tensors */
    bool ffn_gelu;    /* GEGLU FFN, gelu(gate) * up with the tanh GELU, instead of SwiGLU */
    float embd_scale; /* token embeddings multiplied by it (sqrt(n_embd)); 0: not scaled */
    float q_scale;    /* Q multiplied by it after RoPE, the KQ product then unscaled; 0: the
                       * usual 1 / sqrt(head_dim) on the scores */
    int n_swa;        /* sliding window of the local layers (attention.sliding_window); 0: none */
    int swa_pattern;  /* layer il is global when il % swa_pattern == swa_pattern - 1 */
    float rope_base_swa;       /* RoPE base of the local layers */
    float rope_freq_scale_swa; /* and their linear scaling (1) */
    int kv_pad; /* attention cells padded to this many (see model_forward.c); 0: the default */
    /* phi3: Q is multiplied by 1/sqrt(head_dim) after RoPE and the softmax scale is 1 (the
     * other architectures scale the scores in the softmax); different F16 roundings of Q. */
    bool q_prescale;
    int n_ctx_orig; /* rope.scaling.original_context_length (LongRoPE's switch point) */
    float
        rope_attn_factor; /* rope.scaling.attn_factor: cos and sin are scaled by it; 1 if absent */
    int phi3_swa;         /* phi3 attention.sliding_window as read (0: none); not applied */

    /* glm4moe and deepseek2 (zero / false for the other architectures): */
    bool moe_sigmoid;                  /* sigmoid routing with exp_probs_b: nf_moe_route_sigmoid */
    struct nf_moe_sigmoid_route route; /* its settings (moe_sigmoid only) */
    int n_layer_dense; /* leading_dense_block_count: layers [0, n) have a dense FFN of n_ff_dense */
    int n_ff_dense;    /* their width (feed_forward_length) */
    int n_nextn;       /* nextn_predict_layers: the file's last blocks, skipped (not in n_layer) */
    /* deepseek2 (zero for the other architectures). head_dim is the latent key length
     * (kv_lora_rank + n_rot), n_head_kv 1, n_ff the routed experts' width. */
    int n_lora_q;          /* q low rank (attention.q_lora_rank); 0: plain attn_q */
    int n_lora_kv;         /* kv latent (attention.kv_lora_rank) */
    int n_embd_head_k_mla; /* per-head q/k length, nope + rope (attention.key_length_mla) */
    int n_embd_head_v_mla; /* per-head value length after attn_v_b (attention.value_length_mla) */
    int expert_gating;     /* NF_GATING_SOFTMAX or NF_GATING_SIGMOID */
    bool expert_weights_norm;   /* the chosen weights renormalized to sum to 1 */
    float expert_weights_scale; /* then multiplied by it (0 or 1: not scaled) */
    int n_expert_groups;        /* grouped top-k (expert_group_count; 0 or 1: no groups) */
    int n_group_used;           /* groups kept (expert_group_used_count) */
    float kq_scale;             /* softmax scale of the scores; 0: 1 / sqrt(head_dim) */
    /* YaRN (deepseek2 and gpt-oss; rope.scaling.type yarn): ggml's ext_factor (1; 0 without
     * YaRN) and the correction dims between which rotated pairs blend interpolation and
     * extrapolation, for rope_base and (gpt-oss's local layers) rope_base_swa; rope_attn_factor
     * is then the cos/sin scale with rope_yarn's 1 + 0.1 ln(1 / freq_scale) in it. */
    float yarn_ext_factor;
    float yarn_corr[2];
    float yarn_corr_swa[2];
    /* gpt-oss: attention sinks, output and router biases, expert biases, the clamped SwiGLU and
     * the softmax over the chosen experts' logits (llama.cpp's SOFTMAX_WEIGHT gating). */
    bool oai_moe;
};

/* deepseek2's expert gating functions (llama.cpp's expert_gating_func values). */
enum { NF_GATING_SOFTMAX = 1, NF_GATING_SIGMOID = 2 };

/* Whether layer il of a MoE model has a dense FFN instead of experts (the leading dense layers
 * of glm4moe and deepseek2; every layer of a deepseek2 model without experts). */
static inline bool nf_layer_dense(const struct nf_hparams *hp, int il)
{
    return il < hp->n_layer_dense || (hp->arch == NF_ARCH_DEEPSEEK2 && hp->n_expert == 0);
}

/* The FFN width of layer il: n_ff_dense in a leading dense layer, else n_ff. */
static inline int nf_layer_n_ff(const struct nf_hparams *hp, int il)
{
    return nf_layer_dense(hp, il) ? hp->n_ff_dense : hp->n_ff;
}

/* Whether layer il attends through the sliding window (a local layer of gemma3). */
static inline bool nf_layer_swa(const struct nf_hparams *hp, int il)
{
    return hp->n_swa > 0 && il % hp->swa_pattern != hp->swa_pattern - 1;
}

struct nf_attn_weights {
    struct nf_tensor norm;   /* (n_embd) F32 */
    struct nf_tensor wq;     /* (n_embd -> n_head * head_dim) */
    struct nf_tensor wk;     /* (n_embd -> n_head_kv * head_dim) */
    struct nf_tensor wv;     /* (n_embd -> n_head_kv * head_dim) */
    struct nf_tensor wo;     /* (n_head * head_dim -> n_embd) */
    struct nf_tensor bq;     /* (n_head * head_dim) F32, qkv_bias only; else data NULL */
    struct nf_tensor bk;     /* (n_head_kv * head_dim) F32, qkv_bias only */
    struct nf_tensor bv;     /* (n_head_kv * head_dim) F32, qkv_bias only */
    struct nf_tensor q_norm; /* (head_dim), or (n_head * head_dim) for olmoe; F32, qk_norm */
    struct nf_tensor k_norm; /* (head_dim), or (n_head_kv * head_dim) for olmoe; F32 */
    /* phi3: (n_embd -> (n_head + 2 n_head_kv) * head_dim), owning the data wq, wk and wv view */
    struct nf_tensor wqkv;

    struct nf_tensor post_norm; /* (n_embd) F32 post_attention_norm, post_norms only */
    struct nf_tensor bo;        /* (n_embd) F32 attn_output.bias (gpt-oss); else data NULL */
    struct nf_tensor sinks;     /* (n_head) F32 attn_sinks (gpt-oss); else data NULL */

    /* deepseek2 (data NULL elsewhere); H = n_head, K = n_embd_head_k_mla, R = n_rot,
     * L = n_lora_kv. wq then holds V2-Lite's plain projection (n_embd -> H * K). */
    struct nf_tensor wq_a;      /* (n_embd -> n_lora_q) */
    struct nf_tensor q_a_norm;  /* (n_lora_q) F32 */
    struct nf_tensor wq_b;      /* (n_lora_q -> H * K) */
    struct nf_tensor wkv_a;     /* (n_embd -> L + R) attn_kv_a_mqa: the latent, then k_pe */
    struct nf_tensor kv_a_norm; /* (L) F32 */
    struct nf_tensor wk_b;      /* (K - R -> L, H) per head: q_nope into the latent space */
    struct nf_tensor wv_b;      /* (L -> n_embd_head_v_mla, H) per head: latent to value */
};

struct nf_ffn_weights {
    struct nf_tensor gate; /* (n_embd -> n_ff) */
    struct nf_tensor up;   /* (n_embd -> n_ff) */
    struct nf_tensor down; /* (n_ff -> n_embd) */

    struct nf_tensor post_norm; /* (n_embd) F32 post_ffw_norm, post_norms only; else data NULL */
    /* phi3: (n_embd -> 2 n_ff) gate rows then up rows, owning the data gate and up view */
    struct nf_tensor gate_up;
};

struct nf_moe_weights {
    struct nf_tensor gate_inp;  /* (n_embd -> n_expert) router */
    struct nf_tensor gate_exps; /* (n_embd -> n_ff, n_expert) */
    struct nf_tensor up_exps;   /* (n_embd -> n_ff, n_expert) */
    struct nf_tensor down_exps; /* (n_ff -> n_embd, n_expert) */
    /* qwen2moe's shared expert, used by every token (data NULL when absent). */
    struct nf_tensor gate_inp_shexp; /* (n_embd -> 1) its sigmoid gate */
    struct nf_tensor gate_shexp;     /* (n_embd -> n_ff_shexp) */
    struct nf_tensor up_shexp;       /* (n_embd -> n_ff_shexp) */
    struct nf_tensor down_shexp;     /* (n_ff_shexp -> n_embd) */
    /* gpt-oss's biases, F32 (data NULL when absent). */
    struct nf_tensor gate_inp_b;  /* (n_expert) added to the router logits */
    struct nf_tensor gate_exps_b; /* (n_ff, n_expert) */
    struct nf_tensor up_exps_b;   /* (n_ff, n_expert) */
    struct nf_tensor down_exps_b; /* (n_embd, n_expert) */
    /* The score-correction bias, exp_probs_b.bias (glm4moe, deepseek2 V3): (n_expert) F32 added
     * for selection only (data NULL when absent; unlike gpt-oss's gate_inp_b, which the weights
     * see too); the qwen2moe gate above is absent there, the shared expert ungated. */
    struct nf_tensor exp_probs_b;
};

struct nf_layer {
    struct nf_attn_weights attn;
    struct nf_tensor ffn_norm; /* (n_embd) F32 */
    struct nf_ffn_weights ffn; /* dense models */
    struct nf_moe_weights moe; /* MoE models (n_expert > 0) */
};

struct nf_model {
    struct nf_hparams hp;
    struct nf_gguf *gguf;         /* owned; kept open for names and metadata */
    struct nf_tensor tok_embd;    /* (n_embd, n_vocab) */
    struct nf_tensor output_norm; /* (n_embd) F32 */
    struct nf_tensor output;      /* (n_embd -> n_vocab); token_embd when tied */
    struct nf_tensor rope_freqs;  /* (n_rot / 2) F32 or absent (data NULL) */
    struct nf_tensor rope_short;  /* phi3 LongRoPE: (n_rot / 2) F32, n_ctx <= n_ctx_orig */
    struct nf_tensor rope_long;   /* phi3 LongRoPE: (n_rot / 2) F32, n_ctx > n_ctx_orig */
    struct nf_layer *layers;      /* (n_layer) */
    bool tied_output;
    size_t weight_bytes;
    /* Where the weights come from when not from gguf's tensor data (a .nft tile file, see
     * model_nft.c): read_tensor fills dst (len bytes) with tensor gt and on failure writes err;
     * close_src(src) runs in nf_model_free after gguf is closed. NULL for a GGUF. */
    int (*read_tensor)(void *src, const struct nf_gguf_tensor *gt, void *dst, size_t len, char *err,
                       size_t errlen);
    void (*close_src)(void *src);
    void *src;
    /* nf_model_load_ex with use_mmap: the read-only mapping of the GGUF that every tensor's data
     * points into (map_len bytes, unmapped by nf_model_free); NULL otherwise. */
    void *map;
    size_t map_len;
    /* The longest row (bytes) of a tensor with x8 set; 0 when there is none. */
    size_t x8_row_size;
};

/* Attention numerics. PLAIN (the default, exact mode) mirrors ggml's mul_mat + soft_max path
 * with the F16 cache: Q and the softmax rounded to F16; FLASH mirrors ggml's CPU
 * flash-attention kernel (online softmax, V accumulated in F16); F32 is the plain path without
 * rounding Q or the softmax. The last two are kept for comparison (tests/test_golden). */
enum nf_attn_mode { NF_ATTN_FLASH = 0, NF_ATTN_PLAIN, NF_ATTN_F32 };

/* Loads path: parses the GGUF, checks the architecture, hyperparameters and every tensor's
 * presence, shape and type, and preads all weights into RAM. On failure returns a negative code
 * and writes one line to err naming the file and the problem. */
int nf_model_load(struct nf_model **out, const char *path, char *err, size_t errlen);
void nf_model_free(struct nf_model *m);

/* How nf_model_load_ex loads the weights. */
struct nf_model_load_opts {
    /* Map the GGUF read-only (MAP_SHARED, no copy, no mlock) and point every tensor into the
     * mapping: the kernel's page cache serves the weights on demand, as with llama.cpp's default
     * mmap loading. Only for a GGUF file (a .nft is refused with NF_EUSAGE). */
    bool use_mmap;
    /* Interleave the q4_0 matrices of the dense layers by eight rows after reading them
     * (quants_q4_0x8.h), where the CPU runs the AVX-512 kernels: a decode step then reads each
     * matrix as one stream with the same sums. Products of several tokens unpack the rows
     * they need first, so take it for decoding, not for batched or speculative steps. Ignored
     * with use_mmap. */
    bool repack;
};

/* nf_model_load with options (NULL: the defaults, same as nf_model_load). */
int nf_model_load_ex(struct nf_model **out, const char *path, const struct nf_model_load_opts *o,
                     char *err, size_t errlen);

/* model_nft.c: when path is a .nft tile file (by its magic), opens it, sets m->gguf to its
 * embedded metadata and m->read_tensor/close_src/src to a reader that reassembles each tensor
 * from checksummed tiles, and returns 1; returns 0 when path is not a .nft (nothing changed), or
 * a negative code with err set. nf_model_load calls it first. */
int nf_model_nft_source(struct nf_model *m, const char *path, char *err, size_t errlen);

/* The hyperparameters of the llama model described by g's metadata and tensor infos (as
 * nf_model_load reads them, n_vocab and n_ff included), without loading any weight (for tile
 * streaming). Returns 0 or a negative code with err naming the file and key. */
int nf_model_hparams(struct nf_hparams *hp, struct nf_gguf *g, char *err, size_t errlen);

/* A human-readable one-line summary ("llama, 5 layers, dim 64, ...") into buf. */
void nf_model_describe(const struct nf_model *m, char *buf, size_t len);

struct nf_threadpool;

/* Run state for one sequence: the KV cache for n_ctx positions (F16, or the types of
 * nf_ctx_set_kv_types) and all scratch buffers, allocated here so that evaluating tokens
 * allocates nothing. */
struct nf_ctx {
    const struct nf_model *m;
    struct nf_threadpool *pool; /* owned */
    int n_ctx;
    int n_past; /* positions filled in the KV cache */
    enum nf_attn_mode attn_mode;
    void *k_cache; /* (n_layer, n_ctx) rows of n_head_kv * head_dim values of type_k */
    void *v_cache; /* (n_layer, n_ctx) rows of n_head_kv * head_dim values of type_v */
    float *x;      /* (NF_MAX_BATCH, n_embd) residual stream */
    float *xn;     /* (NF_MAX_BATCH, n_embd) normed input of the current block */
    float *q;      /* (NF_MAX_BATCH, n_head * head_dim) */
    float *k;      /* (NF_MAX_BATCH, n_head_kv * head_dim) */
    float *v;      /* (NF_MAX_BATCH, n_head_kv * head_dim) */
    float *att;    /* (NF_MAX_BATCH, n_head * head_dim) attention output */
    float *hb;     /* (NF_MAX_BATCH, max(n_ff, n_ff_shexp)) */
    float *hb2;    /* (NF_MAX_BATCH, max(n_ff, n_ff_shexp)) */
    float *ffo;    /* (NF_MAX_BATCH, n_embd) block output before the residual add */
    float *eo;     /* (n_embd) one expert's output */
    float *router; /* (n_expert) */
    float *logits; /* (n_vocab) logits of the last evaluated token */
    void *xq;      /* activations converted to a vec_dot_type: NF_MAX_BATCH rows of the widest */
    size_t xq_row_stride;
    float *rope_cos;   /* (NF_MAX_BATCH, n_rot / 2) */
    float *rope_sin;   /* (NF_MAX_BATCH, n_rot / 2) */
    void *att_scratch; /* per-thread attention scratch */
    size_t att_scratch_stride;
    /* Per thread: rows of the model's interleaved q4_0 matrices unpacked to the GGUF layout
     * (nf_matmul of several tokens; model_forward.c's NF_X8_UNPACK_BYTES); NULL when the
     * model has none. */
    void *x8_scratch;
    size_t x8_scratch_stride;

    float *rope_cos_swa; /* (NF_MAX_BATCH, n_rot / 2) the local layers' (n_swa > 0 only) */
    float *rope_sin_swa; /* (NF_MAX_BATCH, n_rot / 2) */
    float *sh_out;       /* (NF_MAX_BATCH, n_embd) the shared expert's gated output (qwen2moe) */
    float *sh_gate;      /* (NF_MAX_BATCH) its gate logits, then sigmoids */
    int n_ubatch; /* tokens per prompt chunk; the (NF_MAX_BATCH, ...) buffers hold this many */
    /* Set during a per-row pass (nf_ctx_eval_rows, nf_stream_eval_rows): nf_matmul and the
     * attention compute each token's row with the one-token kernels. */
    bool per_row;
    /* Tests: a prompt chunk's attention over a quantized cache one (token, head) at a time
     * (nf_attn_head), the path its query tiles (nf_attn_tile_q) are checked against. */
    bool attn_untiled;
    /* (n_head) F32 the attention sinks of the layer nf_attn_core runs next (gpt-oss), set by
     * its caller; NULL: none. Not owned. */
    const float *attn_sinks;

    /* deepseek2 (NULL elsewhere; H = n_head, K = n_embd_head_k_mla): q, k and att above hold
     * the absorbed queries (H, head_dim), the new latents (head_dim) and the attention over
     * the latents (H, n_lora_kv); v_cache is not used (the values are the latents). */
    float *mla_q;   /* (NF_MAX_BATCH, H * K) the queries before absorption */
    float *mla_qa;  /* (NF_MAX_BATCH, n_lora_q) the q low-rank activations */
    float *mla_in;  /* (NF_MAX_BATCH, max(K, n_lora_kv)) one head's input to attn_k_b / v_b */
    float *mla_out; /* (NF_MAX_BATCH, max(n_lora_kv, n_embd_head_v_mla)) its output */
    float *mla_att; /* (NF_MAX_BATCH, H * n_embd_head_v_mla) the heads' values, into wo */

    /* The cache's element types (kv_quant.h): NF_TYPE_F16 (the default), Q8_0 or Q4_0. */
    enum nf_type type_k, type_v;
    /* nf_matmul_reuse: while xq_reuse is set, a product whose input (pointer, length, rows and
     * converter) is the one xq already holds skips converting it again. */
    bool xq_reuse;
    const float *xq_of;
    const void *xq_fn;
    int64_t xq_n;
    int xq_ntok;
    bool xq_packed; /* xq holds the q4_0 GEMM's packed layout (nf_q4_0_packed), not rows */

    /* The attention walk (nf_attn_walk_init; NULL kv_need: the cache is all in memory). The
     * attention asks kv_need for each run of kv_block-position blocks it reads; an error it
     * returns is kept in kv_err for the caller. walk_buf (owned, walk_bytes) holds the
     * scores and sums of a wave of (token, head) tasks. */
    int (*kv_need)(void *ud, const struct nf_ctx *c, int il, int kind, int b, int b_end,
                   const void **base);
    void *kv_need_ud; /* (nf_kv_need_fn, declared below) */
    int kv_block, kv_err;
    /* The caller made the layer's whole cache resident for this attention (a prompt chunk with
     * the cache on disk, kv_file.h): nf_attn_heads takes the in-memory path, not the walk. */
    bool kv_whole;
    void *walk_buf;
    size_t walk_bytes;
};

/* The per-head length of what attention sums: the latent (deepseek2), else head_dim. */
static inline int nf_head_dim_v(const struct nf_hparams *hp)
{
    return hp->n_lora_kv ? hp->n_lora_kv : hp->head_dim;
}

/* Creates a context for m with room for n_ctx positions and n_threads threads (<= 0: all
 * CPUs). Returns 0 or a negative code (-ENOMEM, NF_EUSAGE for n_ctx < 1). */
int nf_ctx_create(struct nf_ctx **out, const struct nf_model *m, int n_ctx, int n_threads);
/* The same with prompts evaluated n_ubatch tokens at a time (1..NF_MAX_UBATCH, else
 * NF_EUSAGE; nf_ctx_create takes NF_MAX_BATCH): every weight matrix is read once per chunk,
 * and the chunk's activations take about n_ubatch * (7 n_embd + 3 n_ff) * 4 bytes. */
int nf_ctx_create_ub(struct nf_ctx **out, const struct nf_model *m, int n_ctx, int n_threads,
                     int n_ubatch);
void nf_ctx_free(struct nf_ctx *c);
/* Keeps K as tk and V as tv (NF_TYPE_F16, Q8_0 or Q4_0; kv_quant.h says how attention reads
 * them) from now on: the cache is allocated again, empty (n_past 0), before any slot is made
 * (nf_kv_slots_create). Returns 0, NF_EUSAGE with one line in err (a type the model cannot
 * keep: nf_kv_types_check) or -ENOMEM (the context keeps its old cache). */
int nf_ctx_set_kv_types(struct nf_ctx *c, enum nf_type tk, enum nf_type tv, char *err,
                        size_t errlen);
/* Bytes of one sequence's KV cache (every layer, n_ctx positions, both types). */
size_t nf_ctx_kv_bytes(const struct nf_ctx *c);

/* Forgets the sequence (n_past = 0). */
void nf_ctx_reset(struct nf_ctx *c);

/* Evaluates n tokens at positions n_past .. n_past + n - 1, appends them to the KV cache and
 * leaves the logits of the last one in c->logits. Returns 0, NF_ECTXFULL when they do not fit
 * (nothing evaluated), or NF_EUSAGE for a token id outside the vocabulary. */
int nf_ctx_eval(struct nf_ctx *c, const int32_t *tokens, int n);

/* Evaluates n tokens at positions n_past.. (appended to the KV cache) and writes the logits of
 * every one into logits (n, n_vocab), each row bit-identical to what nf_ctx_eval of that token
 * alone would leave: every mat-vec runs the one-token kernels per row and every row attends
 * as a decode step does (its own causal view, padded as for one token). The weights are still
 * read once per chunk of n_ubatch tokens. Speculative decoding verifies its drafts with it.
 * c->logits gets the last row. Returns 0, NF_ECTXFULL (nothing evaluated) or NF_EUSAGE. */
int nf_ctx_eval_rows(struct nf_ctx *c, const int32_t *tokens, int n, float *logits);
/* Rolls the sequence back to its first n_past positions (0 <= n_past <= c->n_past, else
 * NF_EUSAGE): the later positions are forgotten, as drafts a verification rejected. */
int nf_ctx_rollback(struct nf_ctx *c, int n_past);

/* --- several sequences over one context (model_batch.c) ---------------------------------
 * A slot is one sequence's KV cache, position and logits. Slot 0 borrows the context's own
 * cache and logits, the others own theirs. A context stays bound to slot 0 between calls, so
 * nf_ctx_free frees what it allocated; the slots' n_past is authoritative. */
struct nf_kv_slot {
    void *k_cache; /* (n_layer, n_ctx) rows of the context's type_k */
    void *v_cache; /* (n_layer, n_ctx) rows of its type_v; NULL for deepseek2 */
    float *logits; /* (n_vocab) of the last token this slot evaluated */
    int n_past;
    bool owned; /* the buffers above were allocated for the slot */
};

/* Bytes of one slot's KV cache and logits (what each slot past the first adds). */
size_t nf_kv_slot_bytes(const struct nf_ctx *c);
/* n >= 1 slots for c (slot 0 borrowing c's buffers); *out is freed with nf_kv_slots_free.
 * Returns 0, NF_EUSAGE (n < 1) or -ENOMEM. */
int nf_kv_slots_create(struct nf_kv_slot **out, struct nf_ctx *c, int n);
void nf_kv_slots_free(struct nf_kv_slot *slots, int n);
/* Points c's cache, logits and n_past at slot sl, so that the one-sequence calls (nf_ctx_eval,
 * nf_stream_eval) work on it. */
void nf_ctx_bind(struct nf_ctx *c, const struct nf_kv_slot *sl);
/* v = c seen from row r of a batched step whose row r belongs to slot sl: every activation
 * buffer starts at row r, the cache, logits and n_past are the slot's; thread pool and
 * quantization scratch are c's (v is used on c's thread, one row at a time). */
void nf_ctx_row_view(struct nf_ctx *v, const struct nf_ctx *c, int r, const struct nf_kv_slot *sl);
/* Evaluates n tokens (a prompt) for slot i alone: nf_ctx_eval on it. */
int nf_ctx_slot_eval(struct nf_ctx *c, struct nf_kv_slot *slots, int i, const int32_t *tokens,
                     int n);
/* One decode step of n sequences at once: token toks[r] for slot idx[r] (distinct slots,
 * n <= NF_MAX_BATCH), layer by layer, every row with the arithmetic of its solo step, so each
 * slot's logits are bit-identical to nf_ctx_eval of that token alone. Returns 0, NF_EUSAGE (a
 * bad slot or token; nothing evaluated) or NF_ECTXFULL (a slot's cache is full). */
int nf_ctx_step(struct nf_ctx *c, struct nf_kv_slot *slots, const int *idx, const int32_t *toks,
                int n);

/* Per-layer building blocks, exposed for callers that bring their own weights. Each works on
 * c->x for n_tok tokens starting at position pos0 and adds its output to the residual stream. */
void nf_attn_forward(struct nf_ctx *c, const struct nf_attn_weights *w, int il, int pos0,
                     int n_tok);
void nf_ffn_forward(struct nf_ctx *c, const struct nf_tensor *norm, const struct nf_ffn_weights *w,
                    int n_tok);
void nf_moe_forward(struct nf_ctx *c, const struct nf_tensor *norm, const struct nf_moe_weights *w,
                    int n_tok);

/* The attention core after the projections: ropes c->q and c->k (n_tok tokens, rope cache
 * filled by nf_rope_cache), appends K and V at positions pos0.. of layer il's cache, and leaves
 * the attention output in c->att (n_tok, n_head * head_dim). nf_attn_forward = RMSNorm, q/k/v
 * mat-vecs, nf_attn_core, wo mat-vec, residual add. */
void nf_attn_core(struct nf_ctx *c, int il, int pos0, int n_tok);
/* The architecture's steps between the q/k/v mat-vecs and nf_attn_core, on c->q, c->k, c->v
 * for n_tok tokens: the biases (qwen2), then the per-head RMSNorm of q and k (qwen3). Reads
 * only w's bq, bk, bv, q_norm and k_norm; nothing happens for a plain llama layer. */
void nf_attn_qk(struct nf_ctx *c, const struct nf_attn_weights *w, int n_tok);
/* The attention heads of nf_attn_core once q is roped and the new keys and values are in
 * layer il's cache: c->att (n_tok, n_head * nf_head_dim_v) from c->q, on the pool. */
void nf_attn_heads(struct nf_ctx *c, int il, int pos0, int n_tok);
/* Makes nf_attn_heads walk the cache's cells in blocks of `block` positions, asking need(ud,
 * c, il, kind, b, b_end, &base) for K (kind 0) or V (kind 1) block b before reading it: need
 * returns how many blocks from b on are in memory (>= 1, < b_end - b + 1), their rows (of the
 * cache's row size, as in c->k_cache / c->v_cache) one after the other from base, or a
 * negative errno, which stops the attention and is left in c->kv_err. The walk reads the
 * cache's cells only there (never through c->k_cache / c->v_cache), so the blocks may live
 * anywhere: in the cache's own memory, or each in a slot of its own. The new rows of the
 * current step must be in the blocks need hands out. The output is bit-identical to the
 * in-memory attention's. Allocates the walk's scratch (nf_attn_walk_bytes). Returns 0,
 * NF_EUSAGE or -ENOMEM. */
typedef int (*nf_kv_need_fn)(void *ud, const struct nf_ctx *c, int il, int kind, int b, int b_end,
                             const void **base);
int nf_attn_walk_init(struct nf_ctx *c, int block, int n_ubatch, nf_kv_need_fn need, void *ud);
/* Bytes of that scratch for n_ctx positions and chunks of n_ubatch tokens, of a cache that
 * takes kv_bytes in RAM: 32 MiB, an eighth of kv_bytes or a chunk's (token, head) tasks,
 * whichever is least, one task at least. A layer's attention walks its blocks once per wave
 * of tasks that fits. */
size_t nf_attn_walk_bytes(const struct nf_hparams *hp, int n_ctx, int n_ubatch, size_t kv_bytes);
/* Bytes of one thread's attention scratch for n_ctx cells and prompt chunks of n_ubatch tokens:
 * nf_attn_head's score and column rows, and with n_ubatch >= 2 a prompt tile's (at most 1 MiB
 * of score rows). The plan reserves it per compute thread. */
size_t nf_attn_scratch_bytes(const struct nf_hparams *hp, int n_ctx, int n_ubatch);
/* Rotates the first n_rot values of v (one head) by token t's angles from the rope cache. */
void nf_rope_vec(const struct nf_ctx *c, float *v, int t, bool swa);

/* Allocates c's deepseek2 buffers (mla_*) for n_ubatch tokens; -ENOMEM (nf_ctx_free frees what
 * was allocated). */
int nf_mla_ctx_alloc(struct nf_ctx *c, size_t n_ubatch);
/* deepseek2's multi-head latent attention (model_deepseek2.c), the whole block: RMSNorm, the q
 * and kv projections, nf_mla_attend, attn_output, residual add. */
void nf_mla_forward(struct nf_ctx *c, const struct nf_attn_weights *w, int il, int pos0, int n_tok);
/* The attention core of MLA once c->mla_q (n_tok, H * K) and c->k (n_tok, n_lora_kv + n_rot,
 * attn_kv_a_mqa's output) are filled: RoPE of q_pe and k_pe, kv_a_norm of the latent, q_nope
 * absorbed through attn_k_b, the latents stored in layer il's F16 cache, attention over them,
 * then attn_v_b per head into c->mla_att (n_tok, H * n_embd_head_v_mla). Reads only w's
 * kv_a_norm, wk_b and wv_b. */
void nf_mla_attend(struct nf_ctx *c, const struct nf_attn_weights *w, int il, int pos0, int n_tok);
/* nf_mla_attend in steps, for a caller whose attn_k_b / attn_v_b come in pieces of whole heads
 * (the streaming engine): nf_mla_prep (RoPE and the latent's norm, kv_a_norm (n_lora_kv) F32),
 * nf_mla_absorb for each piece of attn_k_b (heads h0 .. h0 + ne[2] - 1), nf_mla_attend_latent
 * (the cache and the heads), nf_mla_values for each piece of attn_v_b. */
void nf_mla_prep(struct nf_ctx *c, const float *kv_a_norm, int n_tok);
void nf_mla_absorb(struct nf_ctx *c, const struct nf_tensor *wk_b, int h0, int n_tok);
void nf_mla_attend_latent(struct nf_ctx *c, int il, int pos0, int n_tok);
void nf_mla_values(struct nf_ctx *c, const struct nf_tensor *wv_b, int h0, int n_tok);
/* deepseek2's router of one token: p (X) holds the router logits; softmax or sigmoid gating,
 * bias (X, or NULL) added for the selection only, the groups of hp's grouped top-k, the top K,
 * their gate values renormalized (expert_weights_norm) and scaled (expert_weights_scale), as
 * llama.cpp's build_moe_ffn computes them. */
void nf_moe_route_ds(const struct nf_hparams *hp, float *p, const float *bias, int *sel, float *w);

/* Fills c's RoPE cos/sin tables for n_tok positions from pos0 (once per evaluated chunk). */
void nf_rope_cache(struct nf_ctx *c, int pos0, int n_tok);
/* hb (n_rows, n) = silu(hb) * hb2, element by element. */
void nf_swiglu(float *hb, const float *hb2, int n_rows, int n);
/* hb (n_rows, n) = gelu(hb) * hb2 with ggml's tanh GELU (its F16 table, as llama.cpp's CPU
 * backend computes it). */
void nf_geglu(float *hb, const float *hb2, int n_rows, int n);
/* gpt-oss's clamped SwiGLU as ggml_swiglu_oai (alpha 1.702, limit 7): with x = min(hb, 7) and
 * y = clamp(hb2, -7, 7), hb = x / (1 + exp(-1.702 x)) * (y + 1), element by element. */
void nf_swiglu_oai(float *hb, const float *hb2, int n_rows, int n);
/* The FFN activation of hp's architecture: nf_geglu (ffn_gelu), nf_swiglu_oai (oai_moe) or
 * nf_swiglu. */
void nf_ffn_act(const struct nf_hparams *hp, float *hb, const float *hb2, int n_rows, int n);
/* x (n_tok, n_embd) = RMSNorm of x times norm, in place (gemma3's post norms); nothing when norm
 * has no data. */
void nf_post_norm(const struct nf_ctx *c, float *x, const struct nf_tensor *norm, int n_tok);
/* MoE router of one token: p (X) holds the router logits and is turned into probabilities;
 * sel (K) gets the chosen experts and w (K) their renormalized weights (K <= 64). */
void nf_moe_route(float *p, int X, int K, int *sel, float *w);
/* The router of an architecture that does not renormalize (qwen2moe, olmoe): the softmax as
 * ggml_soft_max computes it, the top K, w their probabilities as they are. */
void nf_moe_route_raw(float *p, int X, int K, int *sel, float *w);
/* sel (K) = the indices of the K largest of p (X) in decreasing order, the first of equal ones
 * first (ggml_argsort_top_k); w (K) their values. */
void nf_moe_top_k(const float *p, int X, int K, int *sel, float *w);
/* The most experts nf_moe_route_ds takes (Kimi-K2 has 384). */
#define NF_DS_MAX_EXPERT 512
/* gpt-oss's router (llama.cpp's SOFTMAX_WEIGHT gating): the top K of the logits p (X) as
 * they are (nf_moe_top_k), w their softmax over those K (ggml_soft_max on a row of K). */
void nf_moe_route_topk_softmax(const float *p, int X, int K, int *sel, float *w);
/* The router hp's architecture uses: nf_moe_route, nf_moe_route_raw or
 * nf_moe_route_topk_softmax. */
void nf_moe_route_hp(const struct nf_hparams *hp, float *p, int *sel, float *w);
/* Routes one token's router row p (n_expert) by the architecture's rule: glm4moe's sigmoid
 * (nf_moe_route_sigmoid), deepseek2's (nf_moe_route_ds), else nf_moe_route_hp. bias is the
 * layer's exp_probs_b (n_expert), or NULL. The one dispatch of nf_moe_forward and the stream. */
void nf_moe_route_layer(const struct nf_hparams *hp, float *p, const float *bias, int *sel,
                        float *w);

/* gpt-oss's biases: row (n) of bias tensor b (NULL data: nothing) added to each of n_tok rows of
 * x (n_tok, n), as ggml_add; row is the expert for a 2-D expert bias, else 0. */
void nf_add_bias(float *x, const struct nf_tensor *b, int row, int n_tok);

/* Sigmoid expert routing of one token (moe_route.c, settings in struct nf_moe_sigmoid_route): p (X)
 * holds the router logits and becomes their sigmoids; the experts are chosen by the sigmoid plus
 * bias (X, exp_probs_b, the score-correction bias; NULL: none), within the n_group_used groups
 * whose two best biased scores sum highest when n_group > 1; sel (K) gets the chosen experts in
 * decreasing biased score, w (K) their unbiased sigmoids, normalized (norm_w) and then scaled.
 * Settings out of range are a broken invariant (NF_ASSERT): the loader validates them. */
void nf_moe_route_sigmoid(const struct nf_moe_sigmoid_route *r, float *p, const float *bias,
                          int *sel, float *w);
/* nf_moe_route_sigmoid's selection on gate values p (X) computed already (a sigmoid, or
 * deepseek2's softmax): bias, groups, top K, weights, normalization and scale as above. */
void nf_moe_route_select(const struct nf_moe_sigmoid_route *r, const float *p, const float *bias,
                         int *sel, float *w);

/* qwen2moe's shared expert gate for n_tok tokens: c->sh_out (n_tok, n_embd) = ffn_out (the
 * shared expert's FFN output, same shape) times sigmoid(c->sh_gate[t]), the sigmoid computed
 * as llama.cpp does (silu(g) / g). */
void nf_shexp_gate(struct nf_ctx *c, const float *ffn_out, int n_tok);

/* out (n_tok, w->ne[1]) = x (n_tok, w->ne[0]) times w's rows, with x converted to w's
 * vec_dot_type first (as llama.cpp does); parallel over rows on c's pool. */
void nf_matmul(struct nf_ctx *c, float *out, const struct nf_tensor *w, const float *x, int n_tok);
/* The same product computed as n_tok separate one-token calls of nf_matmul would, bit for bit
 * (the decode arithmetic of each row, never a prompt batch's), in one dispatch over the rows:
 * the batched decode step of several sequences (model_batch.c, stream.c). */
void nf_matmul_each(struct nf_ctx *c, float *out, const struct nf_tensor *w, const float *x,
                    int n_tok);
/* nf_matmul_each for a weight matrix stored by groups of four blocks: group k of row r at
 * w->data + r * w->row_size + k * gs (a batched step's ffn_down reassembled a tile at a time
 * with sequential writes, stream.c). Only where nf_matmul_each_gs_ok, with n_tok >= 2 and
 * w->ne[0] a multiple of the 128-element groups; the same floats as nf_matmul_each on the
 * matrix with contiguous rows. */
void nf_matmul_each_gs(struct nf_ctx *c, float *out, const struct nf_tensor *w, size_t gs,
                       const float *x, int n_tok);
/* Whether nf_matmul_each_gs may take weights of type t: nf_matmul_each would run them through
 * nf_vec_dot_cols (the grouped kernel's arithmetic), and the CPU has the grouped kernel. */
bool nf_matmul_each_gs_ok(const struct nf_ctx *c, enum nf_type t);
/* Between nf_matmul_reuse(c, true) and nf_matmul_reuse(c, false), the caller promises that
 * the inputs of its products do not change: several tiles of one matrix, or the gate and up
 * groups of a layer, then convert their shared input to the vec_dot_type once, not per call
 * (the same bytes, so the same results). */
void nf_matmul_reuse(struct nf_ctx *c, bool on);

/* RMSNorm as ggml: out = x / sqrt(mean(x^2) + eps) * w, the sum of squares taken in double. */
void nf_rmsnorm(float *out, const float *x, const float *w, int n, float eps);

#endif
