/* mkmodel.h - internals of nanoflowctl mkmodel shared by its source files. */
#ifndef NF_MKMODEL_H
#define NF_MKMODEL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "gguf_write.h"
#include "quants.h"

/* What glm4moe adds to a shape (mkmodel_glm4moe.c). */
struct nf_mk_glm {
    int64_t dense_layers;        /* leading_dense_block_count */
    int64_t dense_ffn;           /* their feed_forward_length */
    int64_t nextn;               /* nextn_predict_layers: blocks after the `layers` ones */
    int64_t shared;              /* expert_shared_count */
    int64_t rope_dim;            /* rope.dimension_count (GLM: half the head) */
    float scale;                 /* expert_weights_scale (routed scaling factor) */
    bool qk_norm;                /* attn_q_norm / attn_k_norm (GLM-4.5, not Air) */
    int64_t groups, groups_used; /* expert_group_count / _used_count; 0: keys absent */
};

/* Hyperparameters of a llama-family model. */
struct nf_mk_shape {
    const char *name; /* preset name, or "custom" */
    int64_t dim;      /* embedding length */
    int64_t layers;   /* block count */
    int64_t ffn;      /* feed-forward length (per expert for MoE) */
    int64_t heads;
    int64_t kv_heads;
    int64_t experts; /* 0 for a dense model */
    int64_t experts_used;
    int64_t vocab;
    int64_t ctx;
    float rope_base;
    float rms_eps;
    const char *arch; /* general.architecture: llama (NULL), qwen2, qwen3, qwen3moe, qwen2moe,
                       * olmoe, gemma3, phi3, gpt-oss */
    int64_t head_dim; /* attention.key_length; 0 = dim / heads */
    int64_t window;   /* gemma3, gpt-oss: attention.sliding_window; 0 = mkmodel's default */
    float rope_scale; /* linear rope.scaling.factor (gpt-oss: YaRN's); 0 = none */
};

/* The preset called name, or NULL. */
const struct nf_mk_shape *nf_mk_shape_find(const char *name);
/* Writes the preset names, comma-separated, to buf. */
void nf_mk_shape_list(char *buf, size_t len);

/* What a tensor's elements are filled with. */
enum nf_mk_fill {
    NF_MK_RANDOM,   /* uniform noise with standard deviation NF_MK_STD */
    NF_MK_ONES,     /* 1.0 (RMS norm weights) */
    NF_MK_VALUES,   /* the F32 values of nf_mk_tensor.values (rope_freqs) */
    NF_MK_NEAR_ONE, /* 1 + NF_MK_NEAR_ONE_SCALE x the RANDOM noise (q/k norms: not all equal,
                     * so a misplaced weight changes the output) */
    NF_MK_ZEROS,    /* all-zero bytes, really written (not a hole): --zero-experts */
    NF_MK_WIDE,     /* NF_MK_WIDE_SCALE x the RANDOM noise (gpt-oss's expert biases: values past
                     * the clamped SwiGLU's limit of 7, so the clamp is exercised) */
};
#define NF_MK_WIDE_SCALE     300.0f
#define NF_MK_NEAR_ONE_SCALE 10.0f

#define NF_MK_STD 0.02f

struct nf_mk_tensor {
    char name[NF_GGUF_MAX_NAME + 1];
    uint32_t n_dims;
    int64_t ne[NF_GGUF_MAX_DIMS]; /* ne[0] is the row length; unused dims are 1 */
    enum nf_type type;
    enum nf_mk_fill fill;
    const float *values; /* NF_MK_VALUES: every element, F32 (not owned) */
    uint64_t offset;     /* absolute offset in the file, known once the header is complete */
    uint64_t size;       /* bytes of data */
};

/* Adds the synthetic SentencePiece-style vocabulary of n tokens to w: <unk>, <s>, </s>, the 256
 * <0xNN> byte tokens, then printable pieces (single characters, then "▁word" and "word" pieces of
 * growing length over a-z). Requires n >= NF_MK_MIN_VOCAB. */
#define NF_MK_MIN_VOCAB 259
#define NF_MK_MAX_VOCAB 4000000
int nf_mk_vocab_synth(struct nf_gguf_writer *w, int64_t n);

/* Copies every tokenizer.* key of the GGUF file at path into w and sets *n_vocab to the length of
 * its tokenizer.ggml.tokens. On failure writes a one-line reason to err. */
int nf_mk_vocab_copy(struct nf_gguf_writer *w, const char *path, int64_t *n_vocab, char *err,
                     size_t errlen);

/* Generation options for nf_mk_write_data(). */
struct nf_mk_gen {
    uint64_t seed;
    bool zero;     /* RANDOM tensors are left as file holes (all zero) */
    int threads;   /* worker threads, >= 1 */
    bool progress; /* print progress to stderr */
    /* Routers (RANDOM ffn_gate_inp tensors): row e (expert e) scaled by
     * exp(-router_skew * e / (rows - 1)), so low experts win the top-k more often; 0: all rows
     * alike (near-uniform routing). */
    float router_skew;
    /* RANDOM mxfp4, q8_0 and q4_0 tensors as random valid blocks written straight from the
     * generator, not quantized from random floats (--random-blocks): other bytes for the same
     * seed, written many times faster. */
    bool random_blocks;
};

/* deepseek2's shape beyond struct nf_mk_shape (whose head_dim is then key_length_mla, nope +
 * rope, and ffn the experts' width). */
struct nf_mk_ds {
    int64_t q_lora;     /* attention.q_lora_rank; 0 = plain attn_q (V2-Lite) */
    int64_t kv_lora;    /* attention.kv_lora_rank */
    int64_t rope_dim;   /* qk_rope_head_dim (rope.dimension_count) */
    int64_t v_head;     /* value_length_mla */
    int64_t dense_lead; /* leading_dense_block_count */
    int64_t dense_ffn;  /* the dense layers' feed_forward_length */
    int64_t n_shared;   /* expert_shared_count */
    bool sigmoid;       /* V3 routing: sigmoid gating, exp_probs_b, normalized weights */
    float expert_scale; /* expert_weights_scale (0: 1) */
    int64_t groups;     /* expert_group_count (0: none) */
    int64_t groups_used;
    float yarn;        /* YaRN rope.scaling.factor (0: no rope scaling) */
    int64_t yarn_orig; /* its rope.scaling.original_context_length */
    float yarn_mscale; /* mscale_all_dim (written x 0.1 as yarn_log_multiplier) */
};

/* mkmodel_deepseek2.c: the deepseek2 part of the preset called name, or NULL. */
const struct nf_mk_ds *nf_mk_ds_preset(const char *name);
/* Checks a deepseek2 shape; returns 0 or the usage exit code after printing the reason. */
int nf_mk_deepseek2_check(const struct nf_mk_shape *s, const struct nf_mk_ds *d);
/* Its "deepseek2.*" metadata (the general.* and tokenizer keys are written by the caller). */
int nf_mk_deepseek2_metadata(struct nf_gguf_writer *w, const struct nf_mk_shape *s,
                             const struct nf_mk_ds *d);

/* Fills the data of every tensor into fd at its offset. The file must already have its final
 * size (nf_gguf_writer_write_header does that). Each element's value depends only on the seed,
 * the tensor name and the element index, so the output is identical for any thread count.
 * Returns 0 or a negative code; *written receives the bytes written. */
int nf_mk_write_data(int fd, const struct nf_mk_tensor *t, size_t n, const struct nf_mk_gen *g,
                     uint64_t *written);

/* mkmodel_types.c: sets the type of each tensor of t named in the recipe file at path (lines
 * "TENSOR TYPE"). Returns 0, or the usage exit code after printing one line naming the file,
 * the line and what is wrong (an unknown tensor or type, rows that are not whole blocks). */
int nf_mk_tensor_types_apply(const char *path, struct nf_mk_tensor *t, size_t n);

/* glm4moe (mkmodel_glm4moe.c), with s->layers the transformer layers (the nextn blocks come
 * after them): the glm4moe part of preset `name` into *out (false: not a glm4moe preset); the
 * tensors of the model, types as build_tensors' (routers, exp_probs_b and norms F32), the nextn
 * blocks included; the glm4moe.* keys llama.cpp reads beyond the common ones. */
bool nf_mk_glm4moe_preset(const char *name, struct nf_mk_glm *out);
int nf_mk_glm4moe_tensors(const struct nf_mk_shape *s, const struct nf_mk_glm *g, enum nf_type type,
                          bool tied, struct nf_mk_tensor **out, size_t *count);
int nf_mk_glm4moe_metadata(struct nf_gguf_writer *w, const struct nf_mk_glm *g);
/* mkmodel_deepseek2.c: the deepseek2 tensors (matrices of type type; the per-head attn_k_b and
 * attn_v_b fall back to q8_0 or f16 when their rows do not fit the type's blocks) in *out
 * (malloc'ed), *count set. Returns 0 or -ENOMEM. */
int nf_mk_deepseek2_tensors(const struct nf_mk_shape *s, const struct nf_mk_ds *d,
                            enum nf_type type, bool tied, struct nf_mk_tensor **out, size_t *count);

#endif
