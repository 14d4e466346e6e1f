/* cmd_mkmodel.c - nanoflowctl mkmodel: write a llama-family GGUF (llama, qwen2, qwen3, qwen3moe,
 * gemma3, qwen2moe, olmoe, phi3, glm4moe, deepseek2, gpt-oss) with generated weights. */
#include <errno.h>
#include <fcntl.h>
#include <libgen.h>
#include <limits.h>
#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <time.h>
#include <unistd.h>

#include "cmds.h"
#include "mkmodel.h"
#include "nf_err.h"
#include "nf_time.h"

#define CMD "mkmodel"

/* Published hyperparameters of common llama-architecture models, plus small test shapes. */
static const struct nf_mk_shape nf_mk_shapes[] = {
    {"tiny", 256, 2, 768, 8, 4, 0, 0, 1024, 2048, 10000.0f, 1e-5f, "llama", 0, 0, 0.0f},
    {"tiny-moe", 256, 2, 512, 8, 2, 4, 2, 1024, 2048, 10000.0f, 1e-5f, "llama", 0, 0, 0.0f},
    {"llama-7b", 4096, 32, 11008, 32, 32, 0, 0, 32000, 4096, 10000.0f, 1e-5f, "llama", 0, 0, 0.0f},
    {"llama-13b", 5120, 40, 13824, 40, 40, 0, 0, 32000, 4096, 10000.0f, 1e-5f, "llama", 0, 0, 0.0f},
    {"llama-70b", 8192, 80, 28672, 64, 8, 0, 0, 32000, 4096, 10000.0f, 1e-5f, "llama", 0, 0, 0.0f},
    {"llama3-8b", 4096, 32, 14336, 32, 8, 0, 0, 128256, 8192, 500000.0f, 1e-5f, "llama", 0, 0,
     0.0f},
    {"llama3-70b", 8192, 80, 28672, 64, 8, 0, 0, 128256, 8192, 500000.0f, 1e-5f, "llama", 0, 0,
     0.0f},
    {"llama3-405b", 16384, 126, 53248, 128, 8, 0, 0, 128256, 8192, 500000.0f, 1e-5f, "llama", 0, 0,
     0.0f},
    {"mixtral-8x7b", 4096, 32, 14336, 32, 8, 8, 2, 32000, 32768, 1000000.0f, 1e-5f, "llama", 0, 0,
     0.0f},
    {"mixtral-8x22b", 6144, 56, 16384, 48, 8, 8, 2, 32768, 65536, 1000000.0f, 1e-5f, "llama", 0, 0,
     0.0f},
    /* Qwen: published config.json values; qwen3-30b-a3b's ffn is the experts' width. */
    {"qwen2.5-7b", 3584, 28, 18944, 28, 4, 0, 0, 152064, 32768, 1000000.0f, 1e-6f, "qwen2", 0, 0,
     0.0f},
    {"qwen3-8b", 4096, 36, 12288, 32, 8, 0, 0, 151936, 40960, 1000000.0f, 1e-6f, "qwen3", 128, 0,
     0.0f},
    {"qwen3-30b-a3b", 2048, 48, 768, 32, 4, 128, 8, 151936, 40960, 1000000.0f, 1e-6f, "qwen3moe",
     128, 0, 0.0f},
    /* Qwen1.5-MoE-A2.7B (shared expert 5632) and OLMoE-1B-7B, from their config.json. */
    {"qwen1.5-moe-a2.7b", 2048, 24, 1408, 16, 16, 60, 4, 151936, 8192, 1000000.0f, 1e-6f,
     "qwen2moe", 128, 0, 0.0f},
    {"olmoe-1b-7b", 2048, 16, 1024, 16, 16, 64, 8, 50304, 4096, 10000.0f, 1e-5f, "olmoe", 128, 0,
     0.0f},
    /* Phi-3-mini-4k-instruct's config.json (no LongRoPE; fused QKV and gate/up tensors). */
    {"phi3-mini", 3072, 32, 8192, 32, 32, 0, 0, 32064, 4096, 10000.0f, 1e-5f, "phi3", 0, 0, 0.0f},
    {"qwen3-235b-a22b", 4096, 94, 1536, 64, 4, 128, 8, 151936, 40960, 1000000.0f, 1e-6f, "qwen3moe",
     128, 0, 0.0f},
    /* Gemma 3 12B's config.json: head_dim 256 (16 x 256 != 3840), sliding window 1024, linear
     * rope scaling 8 (llama.cpp applies it to the global layers only). */
    {"gemma3-12b", 3840, 48, 15360, 16, 8, 0, 0, 262208, 131072, 1000000.0f, 1e-6f, "gemma3", 256,
     1024, 8.0f},
    /* GLM-4.5 and GLM-4.5-Air, from their config.json: 92 / 46 transformer layers (plus one
     * nextn block: block_count 93 / 47), 160 / 128 experts of 1536 / 1408 with 8 used,
     * head_dim 128 (96 heads, 8 KV), vocab 151552; the rest in mkmodel_glm4moe.c. */
    {"glm-4.5", 5120, 92, 1536, 96, 8, 160, 8, 151552, 131072, 1000000.0f, 1e-5f, "glm4moe", 128, 0,
     0.0f},
    {"glm-4.5-air", 4096, 46, 1408, 96, 8, 128, 8, 151552, 131072, 1000000.0f, 1e-5f, "glm4moe",
     128, 0, 0.0f},
    /* DeepSeek-V3 and Kimi-K2 (the MLA part in mkmodel_deepseek2.c). */
    {"deepseek-v3", 7168, 61, 2048, 128, 1, 256, 8, 129280, 163840, 10000.0f, 1e-6f, "deepseek2",
     192, 0, 0.0f},
    {"kimi-k2", 7168, 61, 2048, 64, 1, 384, 8, 163840, 131072, 50000.0f, 1e-6f, "deepseek2", 192, 0,
     0.0f},
    /* gpt-oss-20b and -120b's config.json: hidden and expert width 2880, 64 heads of 64, 8 KV
     * heads, 32 / 128 experts with 4 used, sliding window 128, YaRN factor 32 over 4096. */
    {"gpt-oss-20b", 2880, 24, 2880, 64, 8, 32, 4, 201088, 131072, 150000.0f, 1e-5f, "gpt-oss", 64,
     128, 32.0f},
    {"gpt-oss-120b", 2880, 36, 2880, 64, 8, 128, 4, 201088, 131072, 150000.0f, 1e-5f, "gpt-oss", 64,
     128, 32.0f},
};

/* The architectures mkmodel writes, and what each needs (see model.h). */
static const char *const nf_mk_archs[] = {"llama",   "qwen2",     "qwen3",  "qwen3moe",
                                          "gemma3",  "qwen2moe",  "olmoe",  "phi3",
                                          "glm4moe", "deepseek2", "gpt-oss"};

/* gemma3's sliding window when --window is not given (Gemma 3 1B's). */
#define NF_MK_GEMMA3_WINDOW 512
/* gpt-oss's when not given, and the original context of its YaRN scaling (both published). */
#define NF_MK_GPTOSS_WINDOW   128
#define NF_MK_GPTOSS_ORIG_CTX 4096

/* The architectures with routed experts only (llama may have them too). */
static bool nf_mk_moe_arch(const char *a)
{
    return !strcmp(a, "qwen3moe") || !strcmp(a, "qwen2moe") || !strcmp(a, "olmoe") ||
           !strcmp(a, "glm4moe") || !strcmp(a, "deepseek2") || !strcmp(a, "gpt-oss");
}

const struct nf_mk_shape *nf_mk_shape_find(const char *name)
{
    for (size_t i = 0; i < sizeof(nf_mk_shapes) / sizeof(nf_mk_shapes[0]); i++)
        if (!strcmp(nf_mk_shapes[i].name, name))
            return &nf_mk_shapes[i];
    return NULL;
}

void nf_mk_shape_list(char *buf, size_t len)
{
    size_t used = 0;
    buf[0] = '\0';
    for (size_t i = 0; i < sizeof(nf_mk_shapes) / sizeof(nf_mk_shapes[0]) && used < len; i++)
        used +=
            (size_t)snprintf(buf + used, len - used, "%s%s", i ? ", " : "", nf_mk_shapes[i].name);
}

static const struct {
    const char *name;
    enum nf_type type;
} nf_mk_types[] = {
    {"f32", NF_TYPE_F32},   {"f16", NF_TYPE_F16},       {"bf16", NF_TYPE_BF16},
    {"q8_0", NF_TYPE_Q8_0}, {"q4_0", NF_TYPE_Q4_0},     {"q4_k", NF_TYPE_Q4_K},
    {"q5_k", NF_TYPE_Q5_K}, {"q6_k", NF_TYPE_Q6_K},     {"q4_1", NF_TYPE_Q4_1},
    {"q5_0", NF_TYPE_Q5_0}, {"q5_1", NF_TYPE_Q5_1},     {"q2_k", NF_TYPE_Q2_K},
    {"q3_k", NF_TYPE_Q3_K}, {"iq4_nl", NF_TYPE_IQ4_NL}, {"iq4_xs", NF_TYPE_IQ4_XS},
};

static void usage(FILE *f)
{
    char shapes[512];
    nf_mk_shape_list(shapes, sizeof(shapes));
    fprintf(
        f,
        "usage: nanoflowctl mkmodel OUT.gguf (--shape NAME | --dim D --layers L --ffn F "
        "--heads H [--kv-heads K]) [OPTIONS]\n\n"
        "Writes a GGUF v3 model of architecture llama, qwen2, qwen3, qwen3moe, gemma3,\n"
        "qwen2moe, olmoe, phi3, glm4moe, deepseek2 or gpt-oss with deterministic random weights\n"
        "(uniform, std %.2g; norms 1.0, qwen3 q/k norms, deepseek2 low-rank norms, every gemma3\n"
        "and gpt-oss norm and gpt-oss's sinks and router bias 1 + %g x noise, gpt-oss's expert\n"
        "gate/up biases %g x noise) or, with --zero, all-zero matrices left as file holes.\n\n"
        "Shape (flags override the preset's values):\n"
        "  --shape NAME         %s\n"
        "                       (required unless --dim, --layers, --ffn and --heads are given)\n"
        "  --arch A             llama, qwen2 (Q/K/V biases), qwen3 (q/k norms), qwen3moe\n"
        "                       (qwen3 with experts), qwen2moe (qwen2 with experts and a\n"
        "                       shared expert), olmoe (q/k norms over the whole projection,\n"
        "                       experts; the MoE ones need --experts), gemma3 (sliding-\n"
        "                       window and global layers, post norms, GELU; published\n"
        "                       files have --tied-output) or phi3 (fused attn_qkv and\n"
        "                       ffn_up tensors), glm4moe (sigmoid-routed experts with a\n"
        "                       score-correction bias, a shared expert, leading dense\n"
        "                       layers, partial rotary, Q/K/V biases, nextn blocks) or\n"
        "                       gpt-oss (attention sinks and biases, alternating sliding-\n"
        "                       window layers, biased experts, YaRN; needs --experts)\n"
        "                       (default: the shape's, else llama)\n"
        "  --dense-layers N     (glm4moe) leading dense layers (default: the shape's, or one\n"
        "                       less than --layers when that cuts a preset; else 1)\n"
        "  --dense-ffn N        (glm4moe) their FFN width (default: the shape's, else four\n"
        "                       times --ffn)\n"
        "  --nextn N            (glm4moe) next-token-prediction blocks after the others,\n"
        "                       which engines skip (default: the shape's, else 0)\n"
        "  --shared-experts N   (glm4moe) shared experts of --ffn each (default 1)\n"
        "  --expert-scale F     (glm4moe) expert_weights_scale, the routed scaling factor\n"
        "                       (default: the shape's, else 1)\n"
        "  --qk-norm            (glm4moe) per-head q/k norms, as GLM-4.5 (not Air) has\n"
        "  --expert-groups G    (glm4moe) expert_group_count: the experts in G groups, of\n"
        "                       which --groups-used are used (default: no group keys)\n"
        "  --groups-used U      (glm4moe) expert_group_used_count (default: no group keys)\n"

        "  --shared-ffn N       (qwen2moe) the shared expert's width (default: the shape's,\n"
        "                       else 4 x --ffn)\n"
        "  --window N           (gemma3, gpt-oss) attention.sliding_window of the local\n"
        "                       layers (default: the shape's, else %d; gpt-oss %d); every\n"
        "                       6th layer is global (gpt-oss: every 2nd); 0: no window key\n"
        "                       (gemma3: every layer global; gpt-oss: a file llama.cpp and\n"
        "                       NanoFlow refuse)\n"
        "  --rope-scale F       linear RoPE scaling factor (rope.scaling.factor; gemma3: the\n"
        "                       global layers only; gpt-oss: YaRN's factor over an original\n"
        "                       context of %d) (default: the shape's, else none)\n"
        "  --head-dim N         attention head size (default dim/heads; qwen3 presets 128)\n"
        "  --tied-output        no output.weight: the output reuses token_embd\n"
        "  --rope-freqs         (llama) Llama 3.1 rope scaling: a rope_freqs.weight tensor\n"
        "                       as llama.cpp's converter writes it (factor 8, low/high\n"
        "                       frequency factors 1 and 4, original context 8192)\n"
        "  --rope-dim N         (phi3, glm4moe) rope.dimension_count, even and <= head dim:\n"
        "                       partial rotary as Phi-4-mini (default: the head dim; glm4moe\n"
        "                       half of it, as GLM-4.5)\n"
        "  --longrope ORIG      (phi3) LongRoPE: rope_factors_short/long.weight tensors,\n"
        "                       rope.scaling.original_context_length ORIG (< --ctx) and\n"
        "                       rope.scaling.attn_factor, as llama.cpp's converter writes them\n"
        "                       (default: none)\n"
        "  --sliding-window N   (phi3) attention.sliding_window, which llama.cpp ignores for\n"
        "                       phi3 (default: none)\n"
        "deepseek2 (multi-head latent attention; --head-dim is the q/k head size, nope +\n"
        "rope, --rope-dim its decoupled rope part, --ffn the experts' width; presets\n"
        "deepseek-v3, kimi-k2):\n"
        "  --q-lora N           attention.q_lora_rank; 0: plain attn_q as V2-Lite (default:\n"
        "                       the shape's, else 0)\n"
        "  --kv-lora N          attention.kv_lora_rank, the cached latent's width (default:\n"
        "                       the shape's)\n"
        "  --v-head N           value head size (default: the shape's, else head dim - rope\n"
        "                       dim)\n"
        "  --dense-layers N     leading dense layers (default: the shape's, cut to --layers - 1\n"
        "                       when fewer; else 0)\n"
        "  --dense-ffn N        their feed-forward length (default: the shape's)\n"
        "  --shared-experts N   shared experts, each --ffn wide (default: the shape's, else 0)\n"
        "  --sigmoid            V3 routing: sigmoid gating, an exp_probs_b selection bias,\n"
        "                       renormalized weights (default: the shape's, else V2's softmax)\n"
        "  --expert-scale F     expert_weights_scale (default: the shape's, else 1)\n"
        "  --expert-groups G    grouped top-k over G groups (default: the shape's, else none)\n"
        "  --groups-used U      groups kept (default: the shape's)\n"
        "  --yarn F             YaRN rope scaling by F (default: the shape's, else none;\n"
        "                       deepseek-v3 40, kimi-k2 32)\n"
        "  --yarn-orig N        its original context length (default: the shape's, else --ctx)\n"
        "  --yarn-mscale M      its mscale_all_dim (default 1; 0: no log multiplier)\n"
        "  --dim D              embedding length (default: the shape's)\n"
        "  --layers L           block count (default: the shape's; --layers-override is the\n"
        "                       same flag)\n"
        "  --ffn F              feed-forward length per expert (default: the shape's)\n"
        "  --heads H            attention heads, dividing dim unless --head-dim (default: the\n"
        "                       shape's)\n"
        "  --kv-heads K         key/value heads, dividing H (default: the shape's, else H)\n"
        "  --experts E          experts per layer, Mixtral-style MoE; 0 = dense (default: the\n"
        "                       shape's, else 0)\n"
        "  --experts-used U     experts used per token (default min(2, E))\n"
        "  --vocab N            synthetic SentencePiece vocabulary size (default: shape's, "
        "else 32000)\n"
        "  --ctx N              llama.context_length (default: shape's, else 4096)\n"
        "  --rope-base F        llama.rope.freq_base (default: shape's, else 10000)\n"
        "  --rms-eps F          llama.attention.layer_norm_rms_epsilon (default: shape's, else\n"
        "                       1e-5)\n"
        "Contents:\n"
        "  --type T             matrix type: f32 f16 bf16 q8_0 q4_0 q4_1 q5_0 q5_1 iq4_nl\n"
        "                       q2_k q3_k q4_k q5_k q6_k iq4_xs (default f16);\n"
        "                       norms and the MoE router stay f32; q4_k_m is llama-quantize's\n"
        "                       Q4_K_M mix: q4_k with q6_k output and, on 1/8 + 1/8 + every\n"
        "                       third layer between, attn_v and ffn_down*; mxfp4 is\n"
        "                       llama-quantize's MXFP4_MOE: routed experts mxfp4, the\n"
        "                       other matrices q8_0 (needs --experts)\n"
        "  --seed S             generator seed (default 1); same seed, same bytes\n"
        "  --zero               all-zero matrices written as file holes (norms stay 1.0)\n"
        "  --zero-experts       routed experts' tensors written as real zero bytes (not\n"
        "                       holes; fast, every byte on disk); router, attention, norms\n"
        "                       and embeddings stay random, so routing still varies\n"
        "  --tensor-types FILE  per-tensor types after --type: lines 'TENSOR TYPE' (ggml's\n"
        "                       type names, e.g. q6_K, mxfp4), to write another tool's mix\n"
        "                       (a llama-quantize recipe's); '#' starts a comment line\n"
        "  --random-blocks      (--type q8_0, q4_0, mxfp4) random matrices as random valid\n"
        "                       blocks straight from the generator (fixed scales, random\n"
        "                       quants), not quantized from random floats: other bytes\n"
        "                       for the same seed, written many times faster (large\n"
        "                       models for I/O benchmarks)\n"
        "  --router-skew S      MoE routers favour low experts: expert e's router row is\n"
        "                       divided by exp(S e / (E - 1)), so routing is skewed as in a\n"
        "                       trained model rather than near-uniform (default 0)\n"
        "  --vocab-from GGUF    copy every tokenizer.* key (and the vocab size) from GGUF\n"
        "                       (default: a synthetic vocabulary)\n"
        "  --name S             general.name (default nanoflow-<shape>)\n"
        "  --alignment N        general.alignment, a power of two (default 32)\n"
        "  -t, --threads N      generator threads, 1..256 (default: online CPUs)\n"
        "  -h, --help           show this help\n",
        NF_MK_STD, NF_MK_NEAR_ONE_SCALE, NF_MK_WIDE_SCALE, shapes, NF_MK_GEMMA3_WINDOW,
        NF_MK_GPTOSS_WINDOW, NF_MK_GPTOSS_ORIG_CTX);
}

struct mk_opts {
    const char *out;
    const char *shape_name;
    const char *vocab_from;
    const char *name;
    const char *arch;
    const char *tensor_types; /* --tensor-types FILE */
    bool tied, rope_freqs;
    /* -1 = not given on the command line. */
    long rope_dim, longrope, swa;
    long head_dim, dim, layers, ffn, heads, kv_heads, experts, experts_used, vocab, ctx, window;
    long shared_ffn;
    /* glm4moe and deepseek2 (shared: dense layers, shared experts, groups, scale); -1 = not
     * given */
    long q_lora, kv_lora, v_head, dense_layers, dense_ffn, nextn, shared_experts, groups,
        groups_used;
    bool qk_norm, sigmoid;
    float expert_scale, yarn, yarn_mscale; /* expert_scale < 0: not given */
    long yarn_orig;
    struct nf_mk_ds ds; /* the resolved deepseek2 shape */
    float rope_base, rms_eps, rope_scale, router_skew;
    bool rope_set, eps_set;
    enum nf_type type;
    uint64_t seed;
    bool zero, zero_experts, random_blocks;
    bool q4_k_m; /* --type q4_k_m: o->type is q4_k, some tensors get q6_k */
    bool mxfp4;  /* --type mxfp4: o->type is q8_0, the routed experts get mxfp4 */
    long threads;
    long alignment;
};

static int parse_type(const char *s, enum nf_type *out)
{
    for (size_t i = 0; i < sizeof(nf_mk_types) / sizeof(nf_mk_types[0]); i++)
        if (!strcasecmp(s, nf_mk_types[i].name)) {
            *out = nf_mk_types[i].type;
            return 0;
        }
    return -1;
}

/* Parses argv into o; returns 0, or the exit code (2 usage, 0 after --help) with *done set. */
static int parse_args(int argc, char **argv, struct mk_opts *o, bool *done)
{
    static const struct {
        const char *flag;
        long min, max;
        size_t off;
    } ints[] = {
        {"--dim", 1, 1 << 20, offsetof(struct mk_opts, dim)},
        {"--layers", 1, 4096, offsetof(struct mk_opts, layers)},
        {"--layers-override", 1, 4096, offsetof(struct mk_opts, layers)},
        {"--ffn", 1, 1 << 22, offsetof(struct mk_opts, ffn)},
        {"--shared-ffn", 1, 1 << 22, offsetof(struct mk_opts, shared_ffn)},
        {"--heads", 1, 4096, offsetof(struct mk_opts, heads)},
        {"--head-dim", 2, 1 << 16, offsetof(struct mk_opts, head_dim)},
        {"--kv-heads", 1, 4096, offsetof(struct mk_opts, kv_heads)},
        {"--experts", 0, 1024, offsetof(struct mk_opts, experts)},
        {"--experts-used", 1, 1024, offsetof(struct mk_opts, experts_used)},
        {"--vocab", NF_MK_MIN_VOCAB, NF_MK_MAX_VOCAB, offsetof(struct mk_opts, vocab)},
        {"--ctx", 1, 1 << 24, offsetof(struct mk_opts, ctx)},
        {"--threads", 1, 256, offsetof(struct mk_opts, threads)},
        {"-t", 1, 256, offsetof(struct mk_opts, threads)},
        {"--alignment", 1, 1 << 20, offsetof(struct mk_opts, alignment)},
        {"--window", 0, 1 << 30, offsetof(struct mk_opts, window)},
        {"--rope-dim", 2, 1 << 16, offsetof(struct mk_opts, rope_dim)},
        {"--longrope", 1, 1 << 24, offsetof(struct mk_opts, longrope)},
        {"--sliding-window", 1, 1 << 30, offsetof(struct mk_opts, swa)},
        {"--q-lora", 0, 1 << 20, offsetof(struct mk_opts, q_lora)},
        {"--kv-lora", 1, 1 << 20, offsetof(struct mk_opts, kv_lora)},
        {"--v-head", 1, 1 << 16, offsetof(struct mk_opts, v_head)},
        {"--dense-layers", 0, 4096, offsetof(struct mk_opts, dense_layers)},
        {"--dense-ffn", 1, 1 << 22, offsetof(struct mk_opts, dense_ffn)},
        {"--nextn", 0, 64, offsetof(struct mk_opts, nextn)},
        {"--shared-experts", 0, 64, offsetof(struct mk_opts, shared_experts)},
        {"--expert-groups", 0, 1024, offsetof(struct mk_opts, groups)},
        {"--groups-used", 1, 1024, offsetof(struct mk_opts, groups_used)},
        {"--yarn-orig", 1, 1 << 24, offsetof(struct mk_opts, yarn_orig)},
    };
    *done = false;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
            usage(stdout);
            *done = true;
            return 0;
        }
        if (a[0] != '-' || a[1] == '\0') {
            if (o->out)
                return nf_usage_error(CMD, "unexpected argument '%s' (OUT is already '%s')", a,
                                      o->out);
            o->out = a;
            continue;
        }
        if (!strcmp(a, "--zero")) {
            o->zero = true;
            continue;
        }
        if (!strcmp(a, "--zero-experts")) {
            o->zero_experts = true;
            continue;
        }
        if (!strcmp(a, "--random-blocks")) {
            o->random_blocks = true;
            continue;
        }
        if (!strcmp(a, "--tied-output")) {
            o->tied = true;
            continue;
        }
        if (!strcmp(a, "--rope-freqs")) {
            o->rope_freqs = true;
            continue;
        }
        if (!strcmp(a, "--qk-norm")) {
            o->qk_norm = true;
            continue;
        }
        if (!strcmp(a, "--sigmoid")) {
            o->sigmoid = true;
            continue;
        }
        bool matched = false;
        for (size_t k = 0; k < sizeof(ints) / sizeof(ints[0]); k++) {
            if (!nf_arg_is(a, ints[k].flag))
                continue;
            const char *v = nf_arg_value(CMD, argc, argv, &i);
            long *dst = (long *)((char *)o + ints[k].off);
            if (!v || nf_arg_long(CMD, ints[k].flag, v, ints[k].min, ints[k].max, dst))
                return 2;
            matched = true;
            break;
        }
        if (matched)
            continue;
        const char *v;
        if (nf_arg_is(a, "--shape")) {
            if (!(v = nf_arg_value(CMD, argc, argv, &i)))
                return 2;
            if (!nf_mk_shape_find(v)) {
                char shapes[512];
                nf_mk_shape_list(shapes, sizeof(shapes));
                return nf_usage_error(CMD, "unknown --shape '%s' (known: %s)", v, shapes);
            }
            o->shape_name = v;
        } else if (nf_arg_is(a, "--tensor-types")) {
            if (!(o->tensor_types = nf_arg_value(CMD, argc, argv, &i)))
                return 2;
        } else if (nf_arg_is(a, "--arch")) {
            if (!(v = nf_arg_value(CMD, argc, argv, &i)))
                return 2;
            bool known = false;
            for (size_t k = 0; k < sizeof(nf_mk_archs) / sizeof(nf_mk_archs[0]); k++)
                known |= !strcmp(v, nf_mk_archs[k]);
            if (!known)
                return nf_usage_error(
                    CMD,
                    "unknown --arch '%s' (expected llama, qwen2, qwen3, qwen3moe, gemma3, "
                    "qwen2moe, olmoe, phi3, glm4moe, deepseek2 or gpt-oss)",
                    v);
            o->arch = v;
        } else if (nf_arg_is(a, "--type")) {
            if (!(v = nf_arg_value(CMD, argc, argv, &i)))
                return 2;
            o->q4_k_m = !strcasecmp(v, "q4_k_m");
            o->mxfp4 = !strcasecmp(v, "mxfp4");
            if (o->q4_k_m)
                o->type = NF_TYPE_Q4_K;
            else if (o->mxfp4)
                o->type = NF_TYPE_Q8_0;
            else if (parse_type(v, &o->type))
                return nf_usage_error(
                    CMD,
                    "unknown --type '%s' (expected f32, f16, bf16, q8_0, q4_0, q4_1, q5_0, "
                    "q5_1, iq4_nl, q2_k, q3_k, q4_k, q4_k_m, q5_k, q6_k, iq4_xs or mxfp4)",
                    v);
        } else if (nf_arg_is(a, "--seed")) {
            if (!(v = nf_arg_value(CMD, argc, argv, &i)) || nf_arg_u64(CMD, "--seed", v, &o->seed))
                return 2;
        } else if (nf_arg_is(a, "--vocab-from")) {
            if (!(v = nf_arg_value(CMD, argc, argv, &i)))
                return 2;
            o->vocab_from = v;
        } else if (nf_arg_is(a, "--name")) {
            if (!(v = nf_arg_value(CMD, argc, argv, &i)))
                return 2;
            o->name = v;
        } else if (nf_arg_is(a, "--rope-base")) {
            if (!(v = nf_arg_value(CMD, argc, argv, &i)) ||
                nf_arg_float(CMD, "--rope-base", v, 1.0f, 1e9f, &o->rope_base))
                return 2;
            o->rope_set = true;
        } else if (nf_arg_is(a, "--rope-scale")) {
            if (!(v = nf_arg_value(CMD, argc, argv, &i)) ||
                nf_arg_float(CMD, "--rope-scale", v, 1.0f, 1e6f, &o->rope_scale))
                return 2;
        } else if (nf_arg_is(a, "--router-skew")) {
            if (!(v = nf_arg_value(CMD, argc, argv, &i)) ||
                nf_arg_float(CMD, "--router-skew", v, 0.0f, 100.0f, &o->router_skew))
                return 2;
        } else if (nf_arg_is(a, "--yarn") || nf_arg_is(a, "--yarn-mscale")) {
            const bool f = nf_arg_is(a, "--yarn");
            if (!(v = nf_arg_value(CMD, argc, argv, &i)) ||
                nf_arg_float(CMD, f ? "--yarn" : "--yarn-mscale", v, f ? 1.0f : 0.0f, 1e4f,
                             f ? &o->yarn : &o->yarn_mscale))
                return 2;
        } else if (nf_arg_is(a, "--expert-scale")) {
            if (!(v = nf_arg_value(CMD, argc, argv, &i)) ||
                nf_arg_float(CMD, "--expert-scale", v, 0.0f, 1e6f, &o->expert_scale))
                return 2;
        } else if (nf_arg_is(a, "--rms-eps")) {
            if (!(v = nf_arg_value(CMD, argc, argv, &i)) ||
                nf_arg_float(CMD, "--rms-eps", v, 1e-12f, 1.0f, &o->rms_eps))
                return 2;
            o->eps_set = true;
        } else {
            return nf_usage_error(CMD, "unknown flag '%s'", a);
        }
    }
    if (!o->out)
        return nf_usage_error(CMD, "missing the output file OUT.gguf");
    return 0;
}

/* qwen2moe's shared expert width: --shared-ffn, else 4 x the experts' (Qwen1.5-MoE-A2.7B's
 * 5632 = 4 x 1408); 0 for the other architectures. */
static int64_t mk_shared_ffn(const struct nf_mk_shape *s, const struct mk_opts *o)
{
    if (strcmp(s->arch, "qwen2moe") != 0)
        return 0;
    return o->shared_ffn > 0 ? o->shared_ffn : 4 * s->ffn;
}

/* Checks the phi3-only flags, and what llama.cpp's phi3 needs: attn_output is (n_embd, n_embd),
 * so heads x head dim must be the width; dense only. */
static int resolve_phi3(const struct mk_opts *o, const struct nf_mk_shape *s)
{
    const bool phi3 = !strcmp(s->arch, "phi3");
    if (!strcmp(s->arch, "deepseek2")) /* its --rope-dim is the decoupled rope part */
        return o->longrope > 0 || o->swa > 0
                   ? nf_usage_error(CMD, "--longrope and --sliding-window are for --arch phi3")
                   : 0;
    const char *only = o->rope_dim > 0 && strcmp(s->arch, "glm4moe") != 0 ? "--rope-dim"
                       : o->longrope > 0                                  ? "--longrope"
                       : o->swa > 0                                       ? "--sliding-window"
                                                                          : NULL;
    if (!phi3)
        return only ? nf_usage_error(CMD, "%s is for --arch phi3", only) : 0;
    if (s->experts)
        return nf_usage_error(CMD, "--arch phi3 is dense: --experts is not supported");
    if (s->heads * s->head_dim != s->dim)
        return nf_usage_error(CMD,
                              "--arch phi3 needs heads x head dim = dim (llama.cpp's attn_output "
                              "is dim x dim): %lld x %lld != %lld",
                              (long long)s->heads, (long long)s->head_dim, (long long)s->dim);
    if (o->rope_dim > 0 && (o->rope_dim > s->head_dim || o->rope_dim % 2))
        return nf_usage_error(CMD, "--rope-dim %ld must be even and at most the head dim %lld",
                              o->rope_dim, (long long)s->head_dim);
    if (o->longrope > 0 && o->longrope >= s->ctx)
        return nf_usage_error(CMD, "--longrope %ld must be below the context length %lld",
                              o->longrope, (long long)s->ctx);
    return 0;
}

/* glm4moe's part of the shape: the preset's values (a custom shape: 1 leading dense layer of 4 x
 * --ffn, no nextn block, 1 shared expert, scale 1, rope over half the head) overridden by the
 * flags; a preset cut by --layers keeps at least one MoE layer. Refuses the glm4moe flags for
 * other architectures. */
static int resolve_glm4moe(const struct mk_opts *o, const struct nf_mk_shape *s,
                           struct nf_mk_glm *g)
{
    const bool preset_glm = nf_mk_glm4moe_preset(o->shape_name, g);
    const char *only = o->dense_layers >= 0      ? "--dense-layers"
                       : o->dense_ffn > 0        ? "--dense-ffn"
                       : o->nextn >= 0           ? "--nextn"
                       : o->shared_experts >= 0  ? "--shared-experts"
                       : o->expert_scale >= 0.0f ? "--expert-scale"
                       : o->qk_norm              ? "--qk-norm"
                       : o->groups > 0           ? "--expert-groups"
                       : o->groups_used > 0      ? "--groups-used"
                                                 : NULL;
    if (!strcmp(s->arch, "deepseek2")) /* the flags both take are resolve_deepseek2's */
        only = o->nextn >= 0 ? "--nextn" : o->qk_norm ? "--qk-norm" : NULL;
    if (strcmp(s->arch, "glm4moe") != 0)
        return only ? nf_usage_error(CMD, "%s is for --arch glm4moe%s", only,
                                     strcmp(only, "--nextn") && strcmp(only, "--qk-norm")
                                         ? " or deepseek2"
                                         : "")
                    : 0;
    if (!preset_glm)
        *g = (struct nf_mk_glm){1, 4 * s->ffn, 0, 1, 0, 1.0f, false, 0, 0};
    else if (o->layers > 0 && g->dense_layers >= s->layers)
        g->dense_layers = s->layers > 1 ? s->layers - 1 : 0;
    if (o->dense_layers >= 0)
        g->dense_layers = o->dense_layers;
    if (o->dense_ffn > 0)
        g->dense_ffn = o->dense_ffn;
    if (o->nextn >= 0)
        g->nextn = o->nextn;
    if (o->shared_experts >= 0)
        g->shared = o->shared_experts;
    if (o->expert_scale >= 0.0f)
        g->scale = o->expert_scale;
    g->qk_norm |= o->qk_norm;
    if (o->groups > 0 || o->groups_used > 0) {
        g->groups = o->groups;
        g->groups_used = o->groups_used;
    }
    g->rope_dim = o->rope_dim > 0 ? o->rope_dim : s->head_dim / 2;
    if (g->dense_layers > s->layers)
        return nf_usage_error(CMD, "--dense-layers %lld is more than --layers %lld",
                              (long long)g->dense_layers, (long long)s->layers);
    if (g->rope_dim > s->head_dim || g->rope_dim % 2 || g->rope_dim < 2)
        return nf_usage_error(CMD, "--rope-dim %lld must be even, 2 to the head dim %lld",
                              (long long)g->rope_dim, (long long)s->head_dim);
    /* llama.cpp's checks: equal groups, fewer than the experts, 1 to count-1 used. */
    if ((g->groups > 0) != (g->groups_used > 0) ||
        (g->groups > 0 &&
         (s->experts % g->groups || g->groups >= s->experts || g->groups_used >= g->groups ||
          g->groups_used * (s->experts / g->groups) < s->experts_used)))
        return nf_usage_error(CMD,
                              "--expert-groups G and --groups-used U go together: G divides "
                              "--experts, U < G, and the U groups hold --experts-used experts");
    return 0;
}

/* Applies the deepseek2 flags to s (refused for the other architectures) and checks the shape:
 * one KV head (the latent), the leading dense layers cut below --layers. */
static int resolve_deepseek2(struct mk_opts *o, struct nf_mk_shape *s)
{
    /* The flags glm4moe shares (dense layers, shared experts, groups, scale) are checked by
     * resolve_glm4moe for the other architectures. */
    const long *given[] = {&o->q_lora, &o->kv_lora, &o->v_head, &o->yarn_orig};
    bool any = o->sigmoid || o->yarn > 0 || o->yarn_mscale >= 0;
    for (size_t i = 0; i < sizeof(given) / sizeof(given[0]); i++)
        any |= *given[i] >= 0;
    if (strcmp(s->arch, "deepseek2") != 0)
        return any ? nf_usage_error(CMD, "--q-lora, --kv-lora, --v-head, --sigmoid and --yarn "
                                         "are for --arch deepseek2")
                   : 0;
    struct nf_mk_ds *d = &o->ds;
    const struct nf_mk_ds *pre = nf_mk_ds_preset(o->shape_name);
    if (pre && !strcmp(s->name, o->shape_name))
        *d = *pre;
    if (o->q_lora >= 0)
        d->q_lora = o->q_lora;
    if (o->kv_lora > 0)
        d->kv_lora = o->kv_lora;
    if (o->rope_dim > 0)
        d->rope_dim = o->rope_dim;
    if (o->v_head > 0)
        d->v_head = o->v_head;
    if (d->v_head <= 0)
        d->v_head = s->head_dim - d->rope_dim;
    if (o->dense_layers >= 0)
        d->dense_lead = o->dense_layers;
    if (o->dense_ffn > 0)
        d->dense_ffn = o->dense_ffn;
    if (o->shared_experts >= 0)
        d->n_shared = o->shared_experts;
    if (o->sigmoid)
        d->sigmoid = true;
    if (o->expert_scale > 0)
        d->expert_scale = o->expert_scale;
    if (o->groups >= 0)
        d->groups = o->groups;
    if (o->groups_used > 0)
        d->groups_used = o->groups_used;
    if (o->yarn > 0) {
        d->yarn = o->yarn;
        d->yarn_mscale = 1.0f;
    }
    if (o->yarn_orig > 0)
        d->yarn_orig = o->yarn_orig;
    if (o->yarn_mscale >= 0)
        d->yarn_mscale = o->yarn_mscale;
    if (d->dense_lead >= s->layers && o->dense_layers < 0)
        d->dense_lead = s->layers - 1; /* a preset cut by --layers keeps one MoE layer */
    s->kv_heads = 1;
    return nf_mk_deepseek2_check(s, d);
}

/* Combines the preset and the flags into s and checks that the result is a valid model. */
static int resolve_shape(const struct mk_opts *o, struct nf_mk_shape *s, struct nf_mk_glm *g)
{
    int rc;
    static const struct nf_mk_shape custom = {"custom", -1,   -1,       -1,    -1,   -1, 0, 0,
                                              32000,    4096, 10000.0f, 1e-5f, NULL, 0,  0, 0.0f};
    *s = o->shape_name ? *nf_mk_shape_find(o->shape_name) : custom;
    if (o->dim > 0)
        s->dim = o->dim;
    if (o->layers > 0)
        s->layers = o->layers;
    if (o->ffn > 0)
        s->ffn = o->ffn;
    if (o->heads > 0) {
        s->heads = o->heads;
        /* New head count without --kv-heads: keep the preset's GQA only if it still divides. */
        if (o->kv_heads < 0 && (s->kv_heads <= 0 || s->heads % s->kv_heads != 0))
            s->kv_heads = s->heads;
    }
    if (o->kv_heads > 0)
        s->kv_heads = o->kv_heads;
    if (o->experts >= 0) {
        s->experts = o->experts;
        s->experts_used = s->experts < 2 ? s->experts : 2;
    }
    if (o->experts_used > 0)
        s->experts_used = o->experts_used;
    if (o->vocab > 0)
        s->vocab = o->vocab;
    if (o->ctx > 0)
        s->ctx = o->ctx;
    if (o->rope_set)
        s->rope_base = o->rope_base;
    if (o->eps_set)
        s->rms_eps = o->rms_eps;
    if (o->arch && s->arch && strcmp(o->arch, s->arch) != 0) {
        s->window = 0; /* the preset's window and scaling belong to its own architecture */
        s->rope_scale = 0.0f;
    }
    if (o->arch)
        s->arch = o->arch;
    if (!s->arch)
        s->arch = "llama";
    if (o->head_dim > 0)
        s->head_dim = o->head_dim;
    bool gemma3 = !strcmp(s->arch, "gemma3");
    const bool gptoss = !strcmp(s->arch, "gpt-oss");
    if (o->window >= 0 && !gemma3 && !gptoss)
        return nf_usage_error(CMD,
                              "--window is for --arch gemma3 or gpt-oss (sliding-window layers)");
    if (gptoss && o->tied)
        return nf_usage_error(CMD, "--tied-output: llama.cpp requires output.weight for --arch "
                                   "gpt-oss");

    const char *missing = s->dim < 0      ? "--dim"
                          : s->layers < 0 ? "--layers"
                          : s->ffn < 0    ? "--ffn"
                          : s->heads < 0  ? "--heads"
                                          : NULL;
    if (missing)
        return nf_usage_error(CMD, "no --shape given and %s is missing", missing);
    if (s->head_dim <= 0 && s->dim % s->heads != 0)
        return nf_usage_error(CMD, "--dim %lld is not a multiple of --heads %lld",
                              (long long)s->dim, (long long)s->heads);
    if (s->head_dim <= 0)
        s->head_dim = s->dim / s->heads;
    if (s->head_dim % 2 != 0)
        return nf_usage_error(CMD, "head dimension %lld must be even (RoPE rotates pairs)",
                              (long long)s->head_dim);
    bool moe_arch = nf_mk_moe_arch(s->arch);
    if (moe_arch && s->experts == 0)
        return nf_usage_error(CMD, "--arch %s needs --experts", s->arch);
    if (s->experts && strcmp(s->arch, "llama") != 0 && !moe_arch)
        return nf_usage_error(
            CMD,
            "--arch %s is dense: use qwen3moe, qwen2moe, olmoe, gpt-oss or llama for --experts",
            s->arch);
    bool shexp = !strcmp(s->arch, "qwen2moe");
    if (o->shared_ffn > 0 && !shexp)
        return nf_usage_error(CMD, "--shared-ffn is for --arch qwen2moe (its shared expert)");
    /* llama.cpp's loaders for these two take attn_q/attn_output (and olmoe's q/k norms) as
     * n_embd wide: a file with another shape would not load there. */
    if ((shexp || !strcmp(s->arch, "olmoe")) && s->heads * s->head_dim != s->dim)
        return nf_usage_error(CMD, "--arch %s needs --heads x head dimension = --dim (llama.cpp)",
                              s->arch);
    if (!strcmp(s->arch, "olmoe") && s->kv_heads != s->heads)
        return nf_usage_error(CMD,
                              "--arch olmoe needs --kv-heads = --heads (llama.cpp reads its k norm "
                              "as n_embd wide)");
    if (o->tied && (shexp || !strcmp(s->arch, "olmoe")))
        return nf_usage_error(CMD, "--tied-output: llama.cpp requires output.weight for --arch %s",
                              s->arch);
    if ((rc = resolve_phi3(o, s)))
        return rc;
    if ((rc = resolve_glm4moe(o, s, g)))
        return rc;
    if (s->heads % s->kv_heads != 0)
        return nf_usage_error(CMD, "--heads %lld is not a multiple of --kv-heads %lld",
                              (long long)s->heads, (long long)s->kv_heads);
    if (o->experts_used > 0 && s->experts == 0)
        return nf_usage_error(CMD, "--experts-used %ld needs --experts (the model is dense)",
                              o->experts_used);
    if (s->experts_used > s->experts)
        return nf_usage_error(CMD, "--experts-used %lld is more than --experts %lld",
                              (long long)s->experts_used, (long long)s->experts);
    return 0;
}

/* The tensors of the model, in the order compute uses them. Returns the count, or -1 with a
 * message when the type cannot hold a row length. *out is malloc'ed. */
/* The Llama 3.1 frequency factors of the n_rot / 2 rotated pairs, as llama.cpp's converter
 * computes them from rope_scaling (rope_type llama3): 1 for short wavelengths, `factor` for
 * long ones, a smooth blend between. Written to rope_freqs.weight; rope divides by them. */
#define NF_MK_L3_FACTOR   8.0
#define NF_MK_L3_LOW      1.0
#define NF_MK_L3_HIGH     4.0
#define NF_MK_L3_ORIG_CTX 8192.0
static void llama3_rope_freqs(float *out, int64_t n_rot, float base)
{
    const double lo_wl = NF_MK_L3_ORIG_CTX / NF_MK_L3_LOW,
                 hi_wl = NF_MK_L3_ORIG_CTX / NF_MK_L3_HIGH;
    for (int64_t i = 0; i < n_rot / 2; i++) {
        const double freq = 1.0 / pow((double)base, (double)(2 * i) / (double)n_rot);
        const double wl = 2.0 * M_PI / freq;
        if (wl < hi_wl) {
            out[i] = 1.0f;
        } else if (wl > lo_wl) {
            out[i] = (float)NF_MK_L3_FACTOR;
        } else {
            const double smooth =
                (NF_MK_L3_ORIG_CTX / wl - NF_MK_L3_LOW) / (NF_MK_L3_HIGH - NF_MK_L3_LOW);
            out[i] = (float)(1.0 / ((1.0 - smooth) / NF_MK_L3_FACTOR + smooth));
        }
    }
}

static int build_tensors(const struct nf_mk_shape *s, int64_t S, enum nf_type type, bool tied,
                         const float *rope_freqs, struct nf_mk_tensor **out, size_t *count)
{
    int64_t hd = s->head_dim;
    int64_t q_dim = s->heads * hd, kv_dim = s->kv_heads * hd, e = s->experts;
    bool gemma3 = !strcmp(s->arch, "gemma3");
    bool bias = !strcmp(s->arch, "qwen2") || !strcmp(s->arch, "qwen2moe");
    bool olmoe = !strcmp(s->arch, "olmoe");
    bool qk_norm = !strncmp(s->arch, "qwen3", 5) || olmoe || gemma3;
    size_t per_layer =
        (e ? 10 : 9) + (bias ? 3 : 0) + (qk_norm ? 2 : 0) + (gemma3 ? 2 : 0) + (S ? 4 : 0);
    /* gemma3's norms are all 1 + noise, so each one (the post norms too) shows in the output. */
    enum nf_mk_fill norm_fill = gemma3 ? NF_MK_NEAR_ONE : NF_MK_ONES;
    size_t n = 4 + per_layer * (size_t)s->layers, k = 0;
    struct nf_mk_tensor *t = calloc(n, sizeof(*t));
    if (!t)
        return -ENOMEM;
#define ADD(fill_, type_, nd, n0, n1, n2, ...)           \
    do {                                                 \
        struct nf_mk_tensor *x = &t[k++];                \
        snprintf(x->name, sizeof(x->name), __VA_ARGS__); \
        x->n_dims = (nd);                                \
        x->ne[0] = (n0);                                 \
        x->ne[1] = (n1);                                 \
        x->ne[2] = (n2);                                 \
        x->ne[3] = 1;                                    \
        x->type = (type_);                               \
        x->fill = (fill_);                               \
    } while (0)
    /* (vocab, dim) embedding rows; the output projection has the same shape. */
    ADD(NF_MK_RANDOM, type, 2, s->dim, s->vocab, 1, "token_embd.weight");
    ADD(norm_fill, NF_TYPE_F32, 1, s->dim, 1, 1, "output_norm.weight");
    if (!tied)
        ADD(NF_MK_RANDOM, type, 2, s->dim, s->vocab, 1, "output.weight");
    if (rope_freqs) {
        ADD(NF_MK_VALUES, NF_TYPE_F32, 1, hd / 2, 1, 1, "rope_freqs.weight");
        t[k - 1].values = rope_freqs;
    }
    for (int64_t l = 0; l < s->layers; l++) {
        long long b = (long long)l;
        ADD(norm_fill, NF_TYPE_F32, 1, s->dim, 1, 1, "blk.%lld.attn_norm.weight", b);
        ADD(NF_MK_RANDOM, type, 2, s->dim, q_dim, 1, "blk.%lld.attn_q.weight", b);
        ADD(NF_MK_RANDOM, type, 2, s->dim, kv_dim, 1, "blk.%lld.attn_k.weight", b);
        ADD(NF_MK_RANDOM, type, 2, s->dim, kv_dim, 1, "blk.%lld.attn_v.weight", b);
        ADD(NF_MK_RANDOM, type, 2, q_dim, s->dim, 1, "blk.%lld.attn_output.weight", b);
        if (bias) { /* qwen2: F32 biases of Q, K and V */
            ADD(NF_MK_RANDOM, NF_TYPE_F32, 1, q_dim, 1, 1, "blk.%lld.attn_q.bias", b);
            ADD(NF_MK_RANDOM, NF_TYPE_F32, 1, kv_dim, 1, 1, "blk.%lld.attn_k.bias", b);
            ADD(NF_MK_RANDOM, NF_TYPE_F32, 1, kv_dim, 1, 1, "blk.%lld.attn_v.bias", b);
        }
        if (qk_norm) { /* RMSNorm weights of q and k: per head (qwen3), whole (olmoe) */
            ADD(NF_MK_NEAR_ONE, NF_TYPE_F32, 1, olmoe ? q_dim : hd, 1, 1,
                "blk.%lld.attn_q_norm.weight", b);
            ADD(NF_MK_NEAR_ONE, NF_TYPE_F32, 1, olmoe ? kv_dim : hd, 1, 1,
                "blk.%lld.attn_k_norm.weight", b);
        }
        if (gemma3) /* RMSNorm of the attention output, before the residual add */
            ADD(norm_fill, NF_TYPE_F32, 1, s->dim, 1, 1, "blk.%lld.post_attention_norm.weight", b);
        ADD(norm_fill, NF_TYPE_F32, 1, s->dim, 1, 1, "blk.%lld.ffn_norm.weight", b);
        if (gemma3) /* and of the FFN output */
            ADD(norm_fill, NF_TYPE_F32, 1, s->dim, 1, 1, "blk.%lld.post_ffw_norm.weight", b);
        if (e) {
            /* Router (n_expert, dim) in F32 as llama.cpp keeps it; experts stacked in ne[2]. */
            ADD(NF_MK_RANDOM, NF_TYPE_F32, 2, s->dim, e, 1, "blk.%lld.ffn_gate_inp.weight", b);
            ADD(NF_MK_RANDOM, type, 3, s->dim, s->ffn, e, "blk.%lld.ffn_gate_exps.weight", b);
            ADD(NF_MK_RANDOM, type, 3, s->dim, s->ffn, e, "blk.%lld.ffn_up_exps.weight", b);
            ADD(NF_MK_RANDOM, type, 3, s->ffn, s->dim, e, "blk.%lld.ffn_down_exps.weight", b);
        }
        if (e && S) { /* qwen2moe's shared expert; its gate is one F32 row, as converted */
            ADD(NF_MK_RANDOM, NF_TYPE_F32, 1, s->dim, 1, 1, "blk.%lld.ffn_gate_inp_shexp.weight",
                b);
            ADD(NF_MK_RANDOM, type, 2, s->dim, S, 1, "blk.%lld.ffn_gate_shexp.weight", b);
            ADD(NF_MK_RANDOM, type, 2, s->dim, S, 1, "blk.%lld.ffn_up_shexp.weight", b);
            ADD(NF_MK_RANDOM, type, 2, S, s->dim, 1, "blk.%lld.ffn_down_shexp.weight", b);
        }
        if (!e) {
            ADD(NF_MK_RANDOM, type, 2, s->dim, s->ffn, 1, "blk.%lld.ffn_gate.weight", b);
            ADD(NF_MK_RANDOM, type, 2, s->dim, s->ffn, 1, "blk.%lld.ffn_up.weight", b);
            ADD(NF_MK_RANDOM, type, 2, s->ffn, s->dim, 1, "blk.%lld.ffn_down.weight", b);
        }
    }
#undef ADD
    *out = t;
    *count = k;
    return 0;
}

/* llama-quantize's use_more_bits(): the first and last eighth of the layers and every third
 * layer between get more bits in its _M mixes. */
static bool more_bits(int64_t i, int64_t n)
{
    return i < n / 8 || i >= 7 * n / 8 || (i - n / 8) % 3 == 2;
}

/* general.file_type of llama-quantize's Q4_K_M (LLAMA_FTYPE_MOSTLY_Q4_K_M). */
#define NF_MK_FTYPE_Q4_K_M 15u

/* Turns the q4_k tensors of t into llama-quantize's Q4_K_M mix (its llama_tensor_get_type()):
 * output.weight q6_k (token_embd when the output is tied), and attn_v and every ffn_down tensor
 * (dense, routed experts, shared expert) q6_k on the more_bits() layers. The rest stays q4_k. */
static void q4_k_m_mix(struct nf_mk_tensor *t, size_t n, int64_t layers, bool tied)
{
    for (size_t i = 0; i < n; i++) {
        long long l;
        char rest[NF_GGUF_MAX_NAME + 1];
        if (t[i].type != NF_TYPE_Q4_K)
            continue;
        if (!strcmp(t[i].name, tied ? "token_embd.weight" : "output.weight"))
            t[i].type = NF_TYPE_Q6_K;
        else if (sscanf(t[i].name, "blk.%lld.%63s", &l, rest) == 2 &&
                 (!strcmp(rest, "attn_v.weight") || !strncmp(rest, "ffn_down", 8)) &&
                 more_bits(l, layers))
            t[i].type = NF_TYPE_Q6_K;
    }
}

/* general.file_type of llama-quantize's MXFP4_MOE (LLAMA_FTYPE_MOSTLY_MXFP4_MOE). */
#define NF_MK_FTYPE_MXFP4_MOE 38u

/* --type mxfp4: the routed experts' stacked weights (blk.N.ffn_*_exps.weight) in mxfp4, as
 * llama-quantize's MXFP4_MOE writes them; the other matrices stay q8_0 and gpt-oss's expert
 * biases (ffn_*_exps.bias) f32. */
static void mxfp4_experts(struct nf_mk_tensor *t, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (strstr(t[i].name, "_exps.weight"))
            t[i].type = NF_TYPE_MXFP4;
}

/* --zero-experts: the routed experts' stacked tensors (blk.N.ffn_*_exps) become real zero bytes.
 */
static void zero_experts(struct nf_mk_tensor *t, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (strstr(t[i].name, "_exps."))
            t[i].fill = NF_MK_ZEROS;
}

/* LongRoPE factors for n pairs, smooth and deterministic (the published ones rise from ~1 for
 * the fast pairs): short from 1 to 2, long from 1 to 40 (both as the converter writes them, F32).
 * out holds 2 n floats: short, then long. */
static void longrope_factors(float *out, int64_t n)
{
    for (int64_t i = 0; i < n; i++) {
        const double x = n > 1 ? (double)i / (double)(n - 1) : 0.0;
        out[i] = (float)(1.0 + x * x);
        out[n + i] = (float)(1.0 + 39.0 * x * x * x);
    }
}

/* phi3's tensors: per layer a fused attn_qkv (Q rows, then K, then V) and a fused ffn_up (gate
 * rows, then up rows), as llama.cpp loads them; with --longrope, the two factor tensors (their
 * values malloc'ed into *factors). */
static int build_tensors_phi3(const struct nf_mk_shape *s, const struct mk_opts *o,
                              struct nf_mk_tensor **out, size_t *count, float **factors)
{
    const int64_t hd = s->head_dim, qkv = (s->heads + 2 * s->kv_heads) * hd;
    const int64_t half = (o->rope_dim > 0 ? o->rope_dim : hd) / 2;
    const size_t n = 5 + 6 * (size_t)s->layers;
    size_t k = 0;
    struct nf_mk_tensor *t = calloc(n, sizeof(*t));
    if (!t)
        return -ENOMEM;
#define ADD(fill_, type_, nd, n0, n1, ...)                                               \
    do {                                                                                 \
        struct nf_mk_tensor *x = &t[k++];                                                \
        *x = (struct nf_mk_tensor){                                                      \
            .n_dims = (nd), .ne = {(n0), (n1), 1, 1}, .type = (type_), .fill = (fill_)}; \
        snprintf(x->name, sizeof(x->name), __VA_ARGS__);                                 \
    } while (0)
    ADD(NF_MK_RANDOM, o->type, 2, s->dim, s->vocab, "token_embd.weight");
    ADD(NF_MK_ONES, NF_TYPE_F32, 1, s->dim, 1, "output_norm.weight");
    if (!o->tied)
        ADD(NF_MK_RANDOM, o->type, 2, s->dim, s->vocab, "output.weight");
    if (o->longrope > 0) {
        *factors = malloc(sizeof(float) * 2 * (size_t)half);
        if (!*factors) {
            free(t);
            return -ENOMEM;
        }
        longrope_factors(*factors, half);
        ADD(NF_MK_VALUES, NF_TYPE_F32, 1, half, 1, "rope_factors_long.weight");
        t[k - 1].values = *factors + half;
        ADD(NF_MK_VALUES, NF_TYPE_F32, 1, half, 1, "rope_factors_short.weight");
        t[k - 1].values = *factors;
    }
    for (int64_t l = 0; l < s->layers; l++) {
        long long b = (long long)l;
        ADD(NF_MK_ONES, NF_TYPE_F32, 1, s->dim, 1, "blk.%lld.attn_norm.weight", b);
        ADD(NF_MK_RANDOM, o->type, 2, s->dim, qkv, "blk.%lld.attn_qkv.weight", b);
        ADD(NF_MK_RANDOM, o->type, 2, s->dim, s->dim, "blk.%lld.attn_output.weight", b);
        ADD(NF_MK_ONES, NF_TYPE_F32, 1, s->dim, 1, "blk.%lld.ffn_norm.weight", b);
        ADD(NF_MK_RANDOM, o->type, 2, s->dim, 2 * s->ffn, "blk.%lld.ffn_up.weight", b);
        ADD(NF_MK_RANDOM, o->type, 2, s->ffn, s->dim, "blk.%lld.ffn_down.weight", b);
    }
#undef ADD
    *out = t;
    *count = k;
    return 0;
}

/* gpt-oss's tensors as llama.cpp's openai-moe loader takes them: per layer the attention with
 * F32 biases on Q, K, V and the output, the per-head sinks, post_attention_norm (the FFN's
 * norm), a biased F32 router and the experts with F32 biases (ffn_*_exps.bias: one row per
 * expert). Norms, sinks and the router bias are 1 + noise x NF_MK_NEAR_ONE_SCALE, the gate and up
 * biases wide (NF_MK_WIDE), so each one shows in the output and the SwiGLU clamp is reached. */
static int build_tensors_gptoss(const struct nf_mk_shape *s, const struct mk_opts *o,
                                struct nf_mk_tensor **out, size_t *count)
{
    const int64_t q_dim = s->heads * s->head_dim, kv_dim = s->kv_heads * s->head_dim;
    const int64_t E = s->dim, F = s->ffn, X = s->experts;
    const enum nf_type ty = o->type, f32 = NF_TYPE_F32;
    const size_t n = 3 + 19 * (size_t)s->layers;
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
    ADD(NF_MK_RANDOM, ty, 2, E, s->vocab, 1, "token_embd.weight");
    ADD(NF_MK_NEAR_ONE, f32, 1, E, 1, 1, "output_norm.weight");
    ADD(NF_MK_RANDOM, ty, 2, E, s->vocab, 1, "output.weight");
    for (int64_t l = 0; l < s->layers; l++) {
        long long b = (long long)l;
        ADD(NF_MK_NEAR_ONE, f32, 1, E, 1, 1, "blk.%lld.attn_norm.weight", b);
        ADD(NF_MK_RANDOM, ty, 2, E, q_dim, 1, "blk.%lld.attn_q.weight", b);
        ADD(NF_MK_RANDOM, f32, 1, q_dim, 1, 1, "blk.%lld.attn_q.bias", b);
        ADD(NF_MK_RANDOM, ty, 2, E, kv_dim, 1, "blk.%lld.attn_k.weight", b);
        ADD(NF_MK_RANDOM, f32, 1, kv_dim, 1, 1, "blk.%lld.attn_k.bias", b);
        ADD(NF_MK_RANDOM, ty, 2, E, kv_dim, 1, "blk.%lld.attn_v.weight", b);
        ADD(NF_MK_RANDOM, f32, 1, kv_dim, 1, 1, "blk.%lld.attn_v.bias", b);
        ADD(NF_MK_RANDOM, ty, 2, q_dim, E, 1, "blk.%lld.attn_output.weight", b);
        ADD(NF_MK_RANDOM, f32, 1, E, 1, 1, "blk.%lld.attn_output.bias", b);
        ADD(NF_MK_NEAR_ONE, f32, 1, s->heads, 1, 1, "blk.%lld.attn_sinks.weight", b);
        ADD(NF_MK_NEAR_ONE, f32, 1, E, 1, 1, "blk.%lld.post_attention_norm.weight", b);
        ADD(NF_MK_RANDOM, f32, 2, E, X, 1, "blk.%lld.ffn_gate_inp.weight", b);
        ADD(NF_MK_NEAR_ONE, f32, 1, X, 1, 1, "blk.%lld.ffn_gate_inp.bias", b);
        ADD(NF_MK_RANDOM, ty, 3, E, F, X, "blk.%lld.ffn_gate_exps.weight", b);
        ADD(NF_MK_WIDE, f32, 2, F, X, 1, "blk.%lld.ffn_gate_exps.bias", b);
        ADD(NF_MK_RANDOM, ty, 3, E, F, X, "blk.%lld.ffn_up_exps.weight", b);
        ADD(NF_MK_WIDE, f32, 2, F, X, 1, "blk.%lld.ffn_up_exps.bias", b);
        ADD(NF_MK_RANDOM, ty, 3, F, E, X, "blk.%lld.ffn_down_exps.weight", b);
        ADD(NF_MK_RANDOM, f32, 2, E, X, 1, "blk.%lld.ffn_down_exps.bias", b);
    }
#undef ADD
    *out = t;
    *count = k;
    return 0;
}

/* Checks that every row length fits the type's block size: K-types need multiples of 256. */
static int check_rows(const struct nf_mk_tensor *t, size_t n, enum nf_type type)
{
    const struct nf_type_traits *tr = nf_type_traits(type);
    for (size_t i = 0; i < n; i++) {
        if (t[i].type != type || t[i].ne[0] % tr->blck_size == 0)
            continue;
        return nf_usage_error(CMD,
                              "--type %s packs rows in blocks of %lld, but tensor %s has rows of "
                              "%lld elements (every --dim, --ffn and head count times head "
                              "dimension must be a multiple of %lld)",
                              tr->name, (long long)tr->blck_size, t[i].name, (long long)t[i].ne[0],
                              (long long)tr->blck_size);
    }
    return 0;
}

/* LongRoPE's attention factor as llama.cpp's converter computes it for Phi-3: sqrt(1 +
 * ln(ctx / orig) / ln(orig)). */
static float longrope_attn_factor(int64_t ctx, int64_t orig)
{
    return (float)sqrt(1.0 + log((double)ctx / (double)orig) / log((double)orig));
}

/* phi3's optional keys: LongRoPE's original context and attention factor, the sliding window. */
static int add_metadata_phi3(struct nf_gguf_writer *w, const struct nf_mk_shape *s,
                             const struct mk_opts *o)
{
    int rc = 0;
    if (o->longrope > 0 &&
        !(rc = nf_gguf_writer_add_u32(w, "phi3.rope.scaling.original_context_length",
                                      (uint32_t)o->longrope)))
        rc = nf_gguf_writer_add_f32(w, "phi3.rope.scaling.attn_factor",
                                    longrope_attn_factor(s->ctx, o->longrope));
    if (!rc && o->swa > 0)
        rc = nf_gguf_writer_add_u32(w, "phi3.attention.sliding_window", (uint32_t)o->swa);
    return rc;
}

/* The metadata llama.cpp reads for the shape's architecture (the tokenizer keys are added
 * separately): every key under "<arch>.". */
static int add_metadata(struct nf_gguf_writer *w, const struct nf_mk_shape *s,
                        const struct nf_mk_glm *g, const struct mk_opts *o, const char *name)
{
    int rc = 0;
    const char *a = s->arch;
    char k[96];
    bool moe_arch = !strcmp(a, "qwen3moe") || !strcmp(a, "qwen2moe");
    const bool gptoss = !strcmp(a, "gpt-oss");
#define U32(key, v)                                       \
    if (!rc) {                                            \
        snprintf(k, sizeof(k), "%s.%s", a, key);          \
        rc = nf_gguf_writer_add_u32(w, k, (uint32_t)(v)); \
    }
#define F32(key, v)                              \
    if (!rc) {                                   \
        snprintf(k, sizeof(k), "%s.%s", a, key); \
        rc = nf_gguf_writer_add_f32(w, k, (v));  \
    }
    if (!rc)
        rc = nf_gguf_writer_add_str(w, "general.architecture", a);
    if (!rc)
        rc = nf_gguf_writer_add_str(w, "general.name", name);
    if (!rc)
        rc = nf_gguf_writer_add_u32(w, "general.file_type",
                                    o->q4_k_m  ? NF_MK_FTYPE_Q4_K_M
                                    : o->mxfp4 ? NF_MK_FTYPE_MXFP4_MOE
                                               : (uint32_t)nf_gguf_ftype_for(o->type));
    if (!rc)
        rc = nf_gguf_writer_add_u32(
            w, "general.alignment",
            (uint32_t)(o->alignment > 0 ? o->alignment : NF_GGUF_DEFAULT_ALIGNMENT));
    if (!rc && o->type != NF_TYPE_F32 && o->type != NF_TYPE_F16 && o->type != NF_TYPE_BF16)
        rc = nf_gguf_writer_add_u32(w, "general.quantization_version", 2);
    if (!rc && !strcmp(a, "deepseek2"))
        return nf_mk_deepseek2_metadata(w, s, &o->ds);
    U32("context_length", s->ctx);
    U32("embedding_length", s->dim);
    const bool glm = !strcmp(a, "glm4moe");
    U32("block_count", s->layers + (glm ? g->nextn : 0));
    /* qwen3moe: the experts' width has its own key; feed_forward_length is the width of the
     * used experts together, as the published files have it. */
    U32("feed_forward_length", glm ? g->dense_ffn : moe_arch ? s->ffn * s->experts_used : s->ffn);
    if (moe_arch || glm || gptoss) /* gpt-oss: both keys the experts' width, as converted */
        U32("expert_feed_forward_length", s->ffn);
    if (mk_shared_ffn(s, o)) /* qwen2moe */
        U32("expert_shared_feed_forward_length", mk_shared_ffn(s, o));
    U32("attention.head_count", s->heads);
    U32("attention.head_count_kv", s->kv_heads);
    if (s->head_dim != s->dim / s->heads || strcmp(a, "llama") != 0) {
        U32("attention.key_length", s->head_dim);
        U32("attention.value_length", s->head_dim);
    }
    U32("rope.dimension_count", glm ? g->rope_dim : o->rope_dim > 0 ? o->rope_dim : s->head_dim);
    F32("rope.freq_base", s->rope_base);
    F32("attention.layer_norm_rms_epsilon", s->rms_eps);
    const int64_t window = o->window >= 0  ? o->window
                           : s->window > 0 ? s->window
                           : gptoss        ? NF_MK_GPTOSS_WINDOW
                                           : NF_MK_GEMMA3_WINDOW;
    const float rope_scale = o->rope_scale > 0 ? o->rope_scale : s->rope_scale;
    if ((!strcmp(a, "gemma3") || gptoss) && window != 0)
        U32("attention.sliding_window", window);
    if (rope_scale > 0) {
        snprintf(k, sizeof(k), "%s.rope.scaling.type", a);
        if (!rc)
            rc = nf_gguf_writer_add_str(w, k, gptoss ? "yarn" : "linear");
        F32("rope.scaling.factor", rope_scale);
        if (gptoss)
            U32("rope.scaling.original_context_length", NF_MK_GPTOSS_ORIG_CTX);
    }
    U32("vocab_size", s->vocab);
    if (s->experts) {
        U32("expert_count", s->experts);
        U32("expert_used_count", s->experts_used);
    }
    if (!rc && !strcmp(a, "phi3"))
        rc = add_metadata_phi3(w, s, o);
    if (!rc && glm)
        rc = nf_mk_glm4moe_metadata(w, g);
#undef U32
#undef F32
    return rc;
}

/* Path of the temporary file, for the signal handler (which may only call async-safe unlink). */
static char nf_mk_tmp_path[PATH_MAX];

static void on_signal(int sig)
{
    if (nf_mk_tmp_path[0])
        unlink(nf_mk_tmp_path);
    signal(sig, SIG_DFL);
    raise(sig);
}

static void human(char *buf, size_t len, double bytes)
{
    const char *u[] = {"B", "KiB", "MiB", "GiB", "TiB", "PiB"};
    int i = 0;
    while (bytes >= 1024 && i < 5) {
        bytes /= 1024;
        i++;
    }
    snprintf(buf, len, i ? "%.2f %s" : "%.0f %s", bytes, u[i]);
}

/* Refuses when the directory of the output lacks room for `need` bytes (reason in err). */
static int check_space(const char *dir, uint64_t need, bool zero, char *err, size_t errlen)
{
    struct statvfs sv;
    if (statvfs(dir, &sv) != 0) {
        int rc = -errno;
        snprintf(err, errlen, "%s: %s", dir, strerror(errno));
        return rc;
    }
    uint64_t avail = (uint64_t)sv.f_bavail * sv.f_frsize;
    /* Keep a margin so the filesystem's own metadata and other writers are not starved. */
    uint64_t margin = 64ull << 20;
    if (avail >= need + margin)
        return 0;
    char a[32], b[32];
    human(a, sizeof(a), (double)need);
    human(b, sizeof(b), (double)avail);
    snprintf(err, errlen,
             "not enough free disk space in %s: the model needs %s (plus a 64 MiB margin), only "
             "%s is free%s",
             dir, a, b, zero ? "" : " (--zero writes an all-zero model that takes almost no disk)");
    return -ENOSPC;
}

static int fsync_dir(const char *dir)
{
    int fd = open(dir, O_RDONLY | O_DIRECTORY);
    if (fd < 0)
        return -errno;
    int rc = fsync(fd) ? -errno : 0;
    close(fd);
    return rc;
}

/* Writes the model under a temporary name beside out, syncs it and renames it into place, so an
 * interrupted or failed run never leaves a file under the final name. Returns 0 or a negative
 * code with the reason in err; *written receives the bytes of data written. */
static int write_model(const char *out, const char *dir, const struct nf_gguf_writer *w,
                       const struct nf_mk_tensor *t, size_t nt, const struct nf_mk_gen *g,
                       uint64_t *written, char *err, size_t errlen)
{
    int rc = 0, fd = -1;
    if ((size_t)snprintf(nf_mk_tmp_path, sizeof(nf_mk_tmp_path), "%s.tmp-XXXXXX", out) >=
        sizeof(nf_mk_tmp_path)) {
        nf_mk_tmp_path[0] = '\0';
        snprintf(err, errlen, "%s: %s", out, strerror(ENAMETOOLONG));
        return -ENAMETOOLONG;
    }
    struct sigaction sa = {.sa_handler = on_signal};
    sigemptyset(&sa.sa_mask);
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGHUP, &sa, NULL);
    /* Past a file size limit (ulimit -f) writes then fail with EFBIG instead of killing us. */
    signal(SIGXFSZ, SIG_IGN);
    fd = mkstemp(nf_mk_tmp_path);
    if (fd < 0) {
        rc = -errno;
        snprintf(err, errlen, "%s: %s", nf_mk_tmp_path, strerror(errno));
        nf_mk_tmp_path[0] = '\0';
        goto out;
    }
    fchmod(fd, 0644);
    if ((rc = nf_gguf_writer_write_header(w, fd))) {
        snprintf(err, errlen, "%s: writing the header: %s", nf_mk_tmp_path, nf_strerror(rc));
        goto out;
    }
    /* Reserve the blocks up front for a non-zero model, so a full disk fails now and not late. */
    uint64_t total = nf_gguf_writer_file_size(w);
    if (!g->zero) {
        int frc = posix_fallocate(fd, 0, (off_t)total);
        if (frc && frc != EOPNOTSUPP && frc != EINVAL) {
            rc = -frc;
            snprintf(err, errlen, "%s: reserving %llu bytes: %s", nf_mk_tmp_path,
                     (unsigned long long)total, strerror(frc));
            goto out;
        }
    }
    if ((rc = nf_mk_write_data(fd, t, nt, g, written))) {
        snprintf(err, errlen, "%s: writing tensor data: %s", nf_mk_tmp_path, nf_strerror(rc));
        goto out;
    }
    if (fsync(fd) != 0) {
        rc = -errno;
        snprintf(err, errlen, "%s: fsync: %s", nf_mk_tmp_path, strerror(errno));
        goto out;
    }
    if (rename(nf_mk_tmp_path, out) != 0) {
        rc = -errno;
        snprintf(err, errlen, "rename %s -> %s: %s", nf_mk_tmp_path, out, strerror(errno));
        goto out;
    }
    nf_mk_tmp_path[0] = '\0';
    fsync_dir(dir);
out:
    if (fd >= 0)
        close(fd);
    if (nf_mk_tmp_path[0]) {
        unlink(nf_mk_tmp_path);
        nf_mk_tmp_path[0] = '\0';
    }
    signal(SIGINT, SIG_DFL);
    signal(SIGTERM, SIG_DFL);
    signal(SIGHUP, SIG_DFL);
    signal(SIGXFSZ, SIG_DFL);
    return rc;
}

/* Sets up the tokenizer keys: copied from --vocab-from (which also fixes s->vocab) or synthetic.
 * Returns 0, or the exit code after printing the reason. */
static int add_vocab(struct nf_gguf_writer *w, const struct mk_opts *o, struct nf_mk_shape *s)
{
    char err[PATH_MAX + 512] = "";
    int64_t nv;
    int rc = o->vocab_from ? nf_mk_vocab_copy(w, o->vocab_from, &nv, err, sizeof(err))
                           : nf_mk_vocab_synth(w, s->vocab);
    if (rc) {
        fprintf(stderr, "nanoflowctl mkmodel: %s\n", err[0] ? err : nf_strerror(rc));
        return o->vocab_from ? 2 : 1;
    }
    if (o->vocab_from)
        s->vocab = nv;
    return 0;
}

/* general.name when --name is not given: "nanoflow-<shape>". llama.cpp's vocabulary loader
 * looks up Phi-3's chat tokens in a model whose name contains "phi3" or "phi-3" (measured:
 * "unordered_map::at", the model refused), which the synthetic vocabulary lacks, so with it the
 * phi3 presets are called "nanoflow-phi-..." (a copied Phi-3 vocabulary has the tokens). */
static void default_name(char *name, size_t len, const struct mk_opts *o)
{
    const char *shape = o->shape_name ? o->shape_name : "custom";
    if (!o->vocab_from && !strncmp(shape, "phi3", 4))
        snprintf(name, len, "nanoflow-phi%s", shape + 4);
    else
        snprintf(name, len, "nanoflow-%s", shape);
}

int nf_cmd_mkmodel(int argc, char **argv)
{
    struct mk_opts o = {.yarn_orig = -1,
                        .yarn_mscale = -1.0f,
                        .q_lora = -1,
                        .kv_lora = -1,
                        .v_head = -1,
                        .dense_layers = -1,
                        .dense_ffn = -1,
                        .shared_experts = -1,
                        .groups = -1,
                        .groups_used = -1,
                        .rope_dim = -1,
                        .longrope = -1,
                        .swa = -1,
                        .dim = -1,
                        .layers = -1,
                        .ffn = -1,
                        .heads = -1,
                        .kv_heads = -1,
                        .experts = -1,
                        .experts_used = -1,
                        .vocab = -1,
                        .ctx = -1,
                        .window = -1,
                        .nextn = -1,
                        .expert_scale = -1.0f,
                        .type = NF_TYPE_F16,
                        .seed = 1,
                        .threads = -1,
                        .alignment = -1};
    bool done;
    int rc = parse_args(argc, argv, &o, &done);
    if (rc || done)
        return rc;
    struct nf_mk_shape s;
    struct nf_mk_glm glm = {0};
    if ((rc = resolve_shape(&o, &s, &glm)) || (rc = resolve_deepseek2(&o, &s)))
        return rc;
    if (o.vocab_from && o.vocab > 0)
        return nf_usage_error(CMD, "--vocab and --vocab-from exclude each other");
    if (o.alignment > 0 && (o.alignment & (o.alignment - 1)) != 0)
        return nf_usage_error(CMD, "--alignment %ld is not a power of two", o.alignment);
    if (o.zero_experts && o.zero)
        return nf_usage_error(CMD, "--zero-experts and --zero exclude each other");
    if (o.zero_experts && s.experts == 0)
        return nf_usage_error(CMD, "--zero-experts needs routed experts (the model is dense)");
    if (o.random_blocks && o.zero)
        return nf_usage_error(CMD, "--random-blocks and --zero exclude each other");
    if (o.random_blocks && o.q4_k_m)
        return nf_usage_error(CMD, "--random-blocks needs --type q8_0, q4_0 or mxfp4 (not "
                                   "q4_k_m)");
    if (o.random_blocks && o.type != NF_TYPE_Q8_0 && o.type != NF_TYPE_Q4_0)
        return nf_usage_error(CMD, "--random-blocks needs --type q8_0, q4_0 or mxfp4 (not %s)",
                              nf_type_traits(o.type) ? nf_type_traits(o.type)->name : "?");
    if (o.router_skew > 0 && s.experts == 0)
        return nf_usage_error(CMD, "--router-skew needs routed experts (the model is dense)");
    if (o.mxfp4 && s.experts == 0)
        return nf_usage_error(CMD, "--type mxfp4 needs routed experts (the model is dense)");
    if (o.q4_k_m && !strcmp(s.arch, "phi3"))
        return nf_usage_error(CMD, "--type q4_k_m is not supported for --arch phi3 (fused "
                                   "attn_qkv)");
    const struct nf_type_traits *tr = nf_type_traits(o.type);
    if (!tr || (!o.zero && o.type != NF_TYPE_F32 && !tr->from_float)) {
        fprintf(stderr, "nanoflowctl mkmodel: no quantizer for type %s in this build\n",
                tr ? tr->name : "?");
        return 1;
    }

    struct nf_gguf_writer *w = NULL, *vw = NULL;
    struct nf_mk_tensor *t = NULL;
    float *freqs = NULL;
    size_t nt = 0;
    int exit_code = 1;
    char err[2 * PATH_MAX + 512] = "";
    char *dup1 = strdup(o.out);
    const char *dir = dup1 ? dirname(dup1) : ".";
    char name[128];
    if (o.name)
        snprintf(name, sizeof(name), "%s", o.name);
    else
        default_name(name, sizeof(name), &o);

    /* The tokenizer keys go last, but the vocabulary size is needed by the llama.* keys and the
     * embedding shapes: build them in a writer of their own first, then append. */
    if ((rc = nf_gguf_writer_init(&w)) || (rc = nf_gguf_writer_init(&vw)))
        goto fail;
    if ((rc = add_vocab(vw, &o, &s))) {
        exit_code = rc;
        goto out;
    }
    if ((rc = add_metadata(w, &s, &glm, &o, name)))
        goto fail;
    if ((rc = add_vocab(w, &o, &s))) {
        exit_code = rc;
        goto out;
    }
    if (o.rope_freqs && strcmp(s.arch, "llama") != 0) {
        rc = nf_usage_error(CMD, "--rope-freqs is for --arch llama (Llama 3.1 scaling)");
        exit_code = rc;
        goto out;
    }
    if (o.rope_freqs) {
        freqs = malloc(sizeof(float) * (size_t)(s.head_dim / 2));
        if (!freqs) {
            rc = -ENOMEM;
            goto fail;
        }
        llama3_rope_freqs(freqs, s.head_dim, s.rope_base);
    }
    if ((rc = !strcmp(s.arch, "phi3") ? build_tensors_phi3(&s, &o, &t, &nt, &freqs)
              : !strcmp(s.arch, "glm4moe")
                  ? nf_mk_glm4moe_tensors(&s, &glm, o.type, o.tied, &t, &nt)
              : !strcmp(s.arch, "deepseek2")
                  ? nf_mk_deepseek2_tensors(&s, &o.ds, o.type, o.tied, &t, &nt)
              : !strcmp(s.arch, "gpt-oss")
                  ? build_tensors_gptoss(&s, &o, &t, &nt)
                  : build_tensors(&s, mk_shared_ffn(&s, &o), o.type, o.tied, freqs, &t, &nt)))
        goto fail;
    if ((rc = check_rows(t, nt, o.type))) {
        exit_code = rc;
        goto out;
    }
    if (o.q4_k_m)
        q4_k_m_mix(t, nt, s.layers, o.tied);
    if (o.mxfp4)
        mxfp4_experts(t, nt);
    if (o.zero_experts)
        zero_experts(t, nt);
    if (o.tensor_types && (rc = nf_mk_tensor_types_apply(o.tensor_types, t, nt))) {
        exit_code = rc;
        goto out;
    }
    uint64_t params = 0;
    for (size_t i = 0; i < nt; i++) {
        rc = nf_gguf_writer_add_tensor(w, t[i].name, t[i].n_dims, t[i].ne, t[i].type, NULL);
        if (rc) {
            snprintf(err, sizeof(err), "tensor %s: %s", t[i].name, nf_strerror(rc));
            goto fail;
        }
        params += (uint64_t)(t[i].ne[0] * t[i].ne[1] * t[i].ne[2] * t[i].ne[3]);
    }
    for (size_t i = 0; i < nt; i++) {
        t[i].offset = nf_gguf_writer_tensor_offset(w, i);
        t[i].size = nf_gguf_writer_tensor_size(w, i);
    }
    uint64_t total = nf_gguf_writer_file_size(w);
    uint64_t need = total;
    if (o.zero) {
        need = nf_gguf_writer_data_offset(w);
        for (size_t i = 0; i < nt; i++)
            if (t[i].fill != NF_MK_RANDOM)
                need += t[i].size + 4096;
    }
    if ((rc = check_space(dir, need, o.zero, err, sizeof(err))))
        goto fail;

    long ncpu = sysconf(_SC_NPROCESSORS_ONLN);
    struct nf_mk_gen g = {.seed = o.seed,
                          .zero = o.zero,
                          .threads = (int)(o.threads > 0 ? o.threads : (ncpu > 0 ? ncpu : 1)),
                          .progress = isatty(2),
                          .router_skew = o.router_skew,
                          .random_blocks = o.random_blocks};
    uint64_t written = 0;
    double t0 = nf_now_s();
    if ((rc = write_model(o.out, dir, w, t, nt, &g, &written, err, sizeof(err))))
        goto fail;
    double secs = nf_now_s() - t0;
    char hs[32], hw[32];
    human(hs, sizeof(hs), (double)total);
    human(hw, sizeof(hw), (double)(written + nf_gguf_writer_data_offset(w)));
    printf("mkmodel: wrote %s: %s, %.3f%s params, %s%s, %llu bytes (%s; %s written), %.2f s\n",
           o.out, name, params >= 1e9 ? params / 1e9 : params / 1e6, params >= 1e9 ? "B" : "M",
           o.q4_k_m  ? "q4_K_M"
           : o.mxfp4 ? "MXFP4_MOE"
                     : tr->name,
           o.zero            ? " (zero)"
           : o.zero_experts  ? " (zero experts)"
           : o.random_blocks ? " (random blocks)"
                             : "",
           (unsigned long long)total, hs, hw, secs);
    exit_code = 0;
    goto out;
fail:
    fprintf(stderr, "nanoflowctl mkmodel: %s\n", err[0] ? err : nf_strerror(rc));
out:
    free(t);
    free(freqs);
    nf_gguf_writer_free(vw);
    nf_gguf_writer_free(w);
    free(dup1);
    return exit_code;
}
