/* tok_special.c - the special tokens of a vocabulary: end of generation, fill-in-the-middle and
 * the attribute fix-ups llama.cpp applies by token text, and the list matched before tokenizing. */
#include <ctype.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "tok_internal.h"

#define N_OF(a) (sizeof(a) / sizeof((a)[0]))

/* "<｜end▁of▁sentence｜>" (DeepSeek), with full-width bars and U+2581. */
#define DS_EOS      \
    "<\xef\xbd\x9c" \
    "end\xe2\x96\x81of\xe2\x96\x81sentence\xef\xbd\x9c>"

/* Texts llama.cpp takes for the end-of-turn token when tokenizer.ggml.eot_token_id is absent. */
static const char *const eot_texts[] = {
    "<|eot_id|>", "<|im_end|>", "<|end|>", "<end_of_turn>", "<|endoftext|>",      "<|end_of_text|>",
    "<EOT>",      "_<EOT>",     "[EOT]",   DS_EOS,          "<end_of_utterance>",
};

/* Texts of end-of-generation tokens. */
static const char *const eog_texts[] = {
    "<|eot_id|>",
    "<|im_end|>",
    "<|end|>",
    "<|return|>",
    "<|call|>",
    "<|flush|>",
    "<|calls|>",
    "<end_of_turn>",
    "<|endoftext|>",
    "</s>",
    "<|eom_id|>",
    "<EOT>",
    "_<EOT>",
    "[EOT]",
    "[EOS]",
    "<|end_of_text|>",
    "<end_of_utterance>",
    "<eos>",
    "<turn|>",
    "<|tool_response>",
    DS_EOS,
    "[e~[",
};

/* Fill-in-the-middle tokens: found by text when their key is absent, then control tokens; the
 * last three also end generation. */
enum { FIM_PRE, FIM_SUF, FIM_MID, FIM_PAD, FIM_REP, FIM_SEP, FIM_N };
static const char *const fim_keys[FIM_N][2] = {
    {"tokenizer.ggml.fim_pre_token_id", "tokenizer.ggml.prefix_token_id"},
    {"tokenizer.ggml.fim_suf_token_id", "tokenizer.ggml.suffix_token_id"},
    {"tokenizer.ggml.fim_mid_token_id", "tokenizer.ggml.middle_token_id"},
    {"tokenizer.ggml.fim_pad_token_id", NULL},
    {"tokenizer.ggml.fim_rep_token_id", NULL},
    {"tokenizer.ggml.fim_sep_token_id", NULL},
};
static const char *const fim_texts[FIM_N][9] = {
    {"<|fim_prefix|>", "<fim-prefix>", "<fim_prefix>",
     "<\xef\xbd\x9c"
     "fim\xe2\x96\x81"
     "begin\xef\xbd\x9c>",
     "<PRE>", "\xe2\x96\x81<PRE>", "<|code_prefix|>", "<|prefix|>", NULL},
    {"<|fim_suffix|>", "<fim-suffix>", "<fim_suffix>",
     "<\xef\xbd\x9c"
     "fim\xe2\x96\x81"
     "hole\xef\xbd\x9c>",
     "<SUF>", "\xe2\x96\x81<SUF>", "<|code_suffix|>", "<|suffix|>", NULL},
    {"<|fim_middle|>", "<fim-middle>", "<fim_middle>",
     "<\xef\xbd\x9c"
     "fim\xe2\x96\x81"
     "end\xef\xbd\x9c>",
     "<MID>", "\xe2\x96\x81<MID>", "<|code_middle|>", "<|middle|>", NULL},
    {"<|fim_pad|>", "<fim-pad>", "<fim_pad>", "<PAD>", "[PAD]", NULL},
    {"<|fim_repo|>", "<|repo_name|>", "<fim-repo>", "<REPO>", "<reponame>", NULL},
    {"<|file_sep|>", NULL},
};

static int32_t find_text(const struct nf_vocab *v, const char *s)
{
    return nf_vocab_find(v, s, strlen(s));
}

/* The id of the first of texts[0..n) (NULL ends the list early) the vocabulary holds, made a
 * control token (llama.cpp adds the control attribute to such a token); -1 if none. */
static int32_t find_control(struct nf_vocab *v, const char *const *texts, size_t n)
{
    for (size_t i = 0; i < n && texts[i]; i++) {
        int32_t id = find_text(v, texts[i]);
        if (id >= 0) {
            v->attr[id] |= NF_TATTR_CONTROL;
            return id;
        }
    }
    return -1;
}

static void get_id(const struct nf_gguf *g, const char *key, int32_t n_tokens, int32_t *id)
{
    uint32_t x;
    if (key && nf_gguf_get_u32(g, key, &x) == 0 && x < (uint32_t)n_tokens)
        *id = (int32_t)x;
}

static void eog_add(struct nf_vocab *v, int32_t id)
{
    if (id < 0)
        return;
    for (int i = 0; i < v->n_eog; i++) {
        if (v->eog[i] == id)
            return;
    }
    v->eog[v->n_eog++] = id;
}

static bool eog_has(const struct nf_vocab *v, const char *text)
{
    int32_t id = find_text(v, text);
    for (int i = 0; id >= 0 && i < v->n_eog; i++) {
        if (v->eog[i] == id)
            return true;
    }
    return false;
}

/* Removes the token with this text from the end-of-generation set and gives it attributes
 * `attr`. */
static void eog_remove(struct nf_vocab *v, const char *text, uint16_t attr)
{
    int32_t id = find_text(v, text);
    for (int i = 0; id >= 0 && i < v->n_eog; i++) {
        if (v->eog[i] == id) {
            v->eog[i] = v->eog[--v->n_eog];
            v->attr[id] = attr;
            return;
        }
    }
}

/* The end-of-generation set, as llama_vocab::impl::load builds it. */
static int setup_eog(struct nf_vocab *v, const struct nf_gguf *g)
{
    if (v->eot < 0)
        v->eot = find_control(v, eot_texts, N_OF(eot_texts));
    if (v->eom < 0) {
        static const char *const eom[] = {"<|eom_id|>"};
        v->eom = find_control(v, eom, 1);
    }
    int32_t fim[FIM_N];
    for (int f = 0; f < FIM_N; f++) {
        fim[f] = -1;
        get_id(g, fim_keys[f][0], v->n_tokens, &fim[f]);
        get_id(g, fim_keys[f][1], v->n_tokens, &fim[f]);
        if (fim[f] < 0)
            fim[f] = find_control(v, fim_texts[f], N_OF(fim_texts[f]));
    }
    v->eog = malloc((N_OF(eog_texts) + 6) * sizeof(*v->eog));
    if (!v->eog)
        return -ENOMEM;
    eog_add(v, fim[FIM_PAD]);
    eog_add(v, fim[FIM_REP]);
    eog_add(v, fim[FIM_SEP]);
    for (size_t i = 0; i < N_OF(eog_texts); i++) {
        int32_t id = find_text(v, eog_texts[i]);
        if (id >= 0) {
            eog_add(v, id);
            v->attr[id] |= NF_TATTR_CONTROL;
        }
    }
    /* gpt-oss: its message-structure tokens are always rendered (user-defined). */
    static const char *const harmony[] = {"<|channel|>", "<|message|>", "<|start|>",
                                          "<|constrain|>"};
    for (size_t i = 0; i < N_OF(harmony); i++) {
        int32_t id = find_text(v, harmony[i]);
        if (id >= 0)
            v->attr[id] = NF_TATTR_USER_DEFINED;
    }
    eog_add(v, v->eos);
    eog_add(v, v->eot);
    eog_add(v, v->eom);
    /* o200k_harmony and solar-open: "<|end|>" ends a message, not the generation. */
    bool call = eog_has(v, "<|call|>") || eog_has(v, "<|calls|>");
    if (eog_has(v, "<|end|>") && call && (eog_has(v, "<|return|>") || eog_has(v, "<|flush|>")))
        eog_remove(v, "<|end|>", NF_TATTR_USER_DEFINED);
    /* Gemma 4 and PaddleOCR: "</s>" is a normal token there. */
    if (eog_has(v, "<|tool_response>") && eog_has(v, "</s>"))
        eog_remove(v, "</s>", NF_TATTR_NORMAL);
    return 0;
}

static int cmp_special(const void *a, const void *b, void *ctx)
{
    const struct nf_vocab *v = ctx;
    int32_t x = *(const int32_t *)a, y = *(const int32_t *)b;
    if (v->text_len[x] != v->text_len[y])
        return v->text_len[x] > v->text_len[y] ? -1 : 1;
    return x < y ? -1 : x > y;
}

int nf_vocab_setup_special(struct nf_vocab *v, const struct nf_gguf *g)
{
    int rc = setup_eog(v, g);
    if (rc)
        return rc;

    /* Special tokens matched before tokenizing, longest text first. */
    const uint16_t special_mask = NF_TATTR_CONTROL | NF_TATTR_USER_DEFINED | NF_TATTR_UNKNOWN;
    v->special = malloc((size_t)v->n_tokens * sizeof(*v->special));
    if (!v->special)
        return -ENOMEM;
    for (int32_t i = 0; i < v->n_tokens; i++) {
        if (v->attr[i] & special_mask)
            v->special[v->n_special++] = i;
    }
    qsort_r(v->special, (size_t)v->n_special, sizeof(*v->special), cmp_special, v);

    /* llama.cpp's per-model attribute fix-up: Phi-3 strips spaces right of its special tokens. */
    const char *name = NULL;
    char lower[128] = "";
    if (nf_gguf_get_str(g, "general.name", &name) == 0) {
        size_t i = 0;
        for (; name[i] && i + 1 < sizeof(lower); i++)
            lower[i] = (char)tolower((unsigned char)name[i]);
        lower[i] = '\0';
    }
    if (strstr(lower, "phi-3") || strstr(lower, "phi3")) {
        for (int i = 0; i < v->n_special; i++)
            v->attr[v->special[i]] |= NF_TATTR_RSTRIP;
        int32_t id = find_text(v, "</s>");
        if (id >= 0)
            v->attr[id] |= NF_TATTR_RSTRIP;
        static const char *const keep[] = {"<unk>", "<s>", "<|endoftext|>"};
        for (size_t k = 0; k < N_OF(keep); k++) {
            id = find_text(v, keep[k]);
            if (id >= 0)
                v->attr[id] &= (uint16_t)~NF_TATTR_RSTRIP;
        }
    }
    return 0;
}
