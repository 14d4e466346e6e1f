/* tok_internal.h - the vocabulary's layout, shared by tokenizer.c, tok_spm.c, tok_bpe.c and
 * tok_pretok.c. */
#ifndef NF_TOK_INTERNAL_H
#define NF_TOK_INTERNAL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "gguf.h"

/* Token attributes, as llama.cpp's llama_token_attr (bit values kept the same). */
enum {
    NF_TATTR_UNKNOWN = 1 << 0,
    NF_TATTR_UNUSED = 1 << 1,
    NF_TATTR_NORMAL = 1 << 2,
    NF_TATTR_CONTROL = 1 << 3,
    NF_TATTR_USER_DEFINED = 1 << 4,
    NF_TATTR_BYTE = 1 << 5,
    NF_TATTR_LSTRIP = 1 << 7,
    NF_TATTR_RSTRIP = 1 << 8,
};

enum nf_vocab_type { NF_VOCAB_SPM, NF_VOCAB_BPE };

/* Pre-tokenizers: each is a fixed list of splitting stages (see tok_pretok.c). */
enum nf_pretok {
    NF_PRETOK_DEFAULT,
    NF_PRETOK_GPT2,
    NF_PRETOK_LLAMA3,
    NF_PRETOK_QWEN2,
    NF_PRETOK_FALCON,
    NF_PRETOK_DEEPSEEK_LLM,
    NF_PRETOK_STARCODER,
    NF_PRETOK_DEEPSEEK_CODER,
    NF_PRETOK_DEEPSEEK3,
    NF_PRETOK_GPT4O,
    NF_PRETOK_TEKKEN,
    NF_PRETOK_QWEN35,
    NF_PRETOK_KIMI_K2,
};

/* Settings llama.cpp ties to some pre-tokenizer names besides their splitting rules. */
enum {
    NF_PRE_IGNORE_MERGES = 1 << 0, /* a word that is a token is that token, merges or not */
    NF_PRE_ADD_BOS = 1 << 1,       /* add_bos_token defaults to true */
    NF_PRE_NO_BOS = 1 << 2,        /* no default BOS id (tokenizer.ggml.bos_token_id sets one) */
};

/* The splitting rules (*pre) and NF_PRE_* settings (*flags) llama.cpp gives the
 * tokenizer.ggml.pre value `name`: 0, or -ENOENT for a name it does not know or we do not
 * support. */
int nf_pretok_lookup(const char *name, enum nf_pretok *pre, unsigned *flags);
/* Writes the first name of each group of names with the same rules and settings, joined by
 * ", " (short enough for a one-line refusal), into buf[len] (256 bytes are enough). */
void nf_pretok_heads(char *buf, size_t len);

/* A string hash table from byte strings to int32 values (open addressing, linear probing).
 * Keys are not copied: they point into storage that outlives the table. */
struct nf_strmap {
    uint32_t mask; /* slots - 1 (slots is a power of two) */
    int32_t *slot; /* value index into keys/vals, or -1 */
    const char **key;
    uint32_t *klen;
    int32_t *val;
    uint32_t n, cap;
};

struct nf_vocab {
    enum nf_vocab_type type;
    enum nf_pretok pre;
    int32_t n_tokens;
    char *text;               /* all token texts, each NUL-terminated */
    uint32_t *text_off;       /* (n_tokens) offset of token i's text in `text` */
    uint32_t *text_len;       /* (n_tokens) */
    float *score;             /* (n_tokens) */
    uint16_t *attr;           /* (n_tokens) NF_TATTR_* */
    struct nf_strmap tok_map; /* text -> id (the last id wins on duplicates, as in llama.cpp) */

    char *merge_text;           /* BPE: merges as "left right", NUL-separated */
    struct nf_strmap merge_map; /* "left right" -> rank (the first rank wins) */

    int32_t bos, eos, unk, eot, eom;
    bool add_bos, add_eos, add_space_prefix, ignore_merges;

    int32_t *special; /* ids of control/user-defined/unknown tokens, longest text first */
    int n_special;
    int32_t *eog; /* end-of-generation ids */
    int n_eog;
};

/* Output sink: writes while room is left and counts everything. */
struct nf_tok_out {
    int32_t *buf;
    int max;
    int n;
};
static inline void nf_tok_push(struct nf_tok_out *o, int32_t id)
{
    if (o->n < o->max)
        o->buf[o->n] = id;
    o->n++;
}

int nf_strmap_init(struct nf_strmap *m, uint32_t cap);
void nf_strmap_free(struct nf_strmap *m);
/* Inserts key -> val; when the key is present, replaces its value if `replace`. 0 or -ENOMEM. */
int nf_strmap_put(struct nf_strmap *m, const char *key, uint32_t klen, int32_t val, bool replace);
/* The value for key, or -1. */
int32_t nf_strmap_get(const struct nf_strmap *m, const char *key, uint32_t klen);

static inline const char *nf_vocab_text(const struct nf_vocab *v, int32_t id)
{
    return v->text + v->text_off[id];
}
static inline int32_t nf_vocab_find(const struct nf_vocab *v, const char *s, size_t len)
{
    return nf_strmap_get(&v->tok_map, s, (uint32_t)len);
}

/* After the tokens and the special ids are loaded: finds the end-of-turn, end-of-message and
 * fill-in-the-middle tokens llama.cpp recognizes by text (making them control tokens), builds
 * the end-of-generation set and the list of special tokens matched before tokenizing, and
 * applies llama.cpp's attribute fix-ups. 0 or -ENOMEM. */
int nf_vocab_setup_special(struct nf_vocab *v, const struct nf_gguf *g);

/* Tokenizes one raw text fragment (already separated from special tokens). */
int nf_spm_tokenize(const struct nf_vocab *v, const char *text, size_t len, struct nf_tok_out *out);
int nf_bpe_tokenize(const struct nf_vocab *v, const char *text, size_t len, struct nf_tok_out *out);

/* Splits code points cps[0..n) into words as llama.cpp's unicode_regex_split does for the
 * pre-tokenizer `pre`. On success *words holds *n_words word lengths in code points (summing to
 * n; the caller frees it). 0 or -ENOMEM. */
int nf_pretok_split(enum nf_pretok pre, const uint32_t *cps, size_t n, uint32_t **words,
                    size_t *n_words);

/* A merge candidate of the SentencePiece and BPE tokenizers: symbols left and right (adjacent
 * when proposed) whose merged text is `size` bytes. The higher `pri` merges first, ties to the
 * leftmost pair (llama.cpp's llm_bigram_spm / llm_bigram_bpe comparators): SPM uses the merged
 * token's score, BPE the negated merge rank (exact in a double). */
struct nf_bigram {
    int left, right;
    double pri;
    uint32_t size;
};

/* Binary max-heap of merge candidates; zero-initialized is empty. */
struct nf_bigram_heap {
    struct nf_bigram *v;
    size_t n, cap;
};

/* Adds b; 0 or -ENOMEM (the heap is unchanged). */
int nf_bigram_push(struct nf_bigram_heap *h, struct nf_bigram b);
/* Removes and returns the first candidate; h->n must be > 0. */
struct nf_bigram nf_bigram_pop(struct nf_bigram_heap *h);
void nf_bigram_heap_free(struct nf_bigram_heap *h);

#endif
