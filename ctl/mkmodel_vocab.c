/* mkmodel_vocab.c - the vocabulary of a generated model: synthetic SentencePiece or copied. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "gguf.h"
#include "mkmodel.h"
#include "nf_err.h"

/* llama.cpp's llama_token_type values. */
enum { TT_NORMAL = 1, TT_UNKNOWN = 2, TT_CONTROL = 3, TT_BYTE = 6 };

#define SPM_SPACE "\xe2\x96\x81" /* U+2581, SentencePiece's word-start marker */

/* Writes the k-th string of length len over a..z (k in [0, 26^len)) to out, most significant
 * letter first, and returns len. */
static size_t letters(char *out, uint64_t k, int len)
{
    for (int i = len - 1; i >= 0; i--) {
        out[i] = (char)('a' + k % 26);
        k /= 26;
    }
    return (size_t)len;
}

/* Fills tokens[first..n) with printable pieces in a fixed order: "▁", the 94 printable ASCII
 * characters, then for L = 1, 2, ...: every "▁" + L letters, then (L >= 2) every L letters.
 * Each piece of length > 1 splits into two shorter pieces present earlier, so SentencePiece
 * merges can reach it. Pieces are stored in arena (NUL-terminated). */
static int make_pieces(char **tokens, int64_t first, int64_t n, char **arena_out)
{
    /* Longest piece: "▁" (3 bytes) + 5 letters + NUL is plenty for NF_MK_MAX_VOCAB. */
    size_t cap = (size_t)(n - first) * 10 + 16;
    char *arena = malloc(cap);
    if (!arena)
        return -ENOMEM;
    char *p = arena;
    int64_t id = first;
#define EMIT_PIECE(s, l)     \
    do {                     \
        memcpy(p, (s), (l)); \
        p[(l)] = '\0';       \
        tokens[id++] = p;    \
        p += (l) + 1;        \
    } while (0)
    if (id < n)
        EMIT_PIECE(SPM_SPACE, 3);
    for (int c = 33; c <= 126 && id < n; c++) {
        char ch = (char)c;
        EMIT_PIECE(&ch, 1);
    }
    for (int len = 1; id < n; len++) {
        uint64_t count = 1;
        for (int i = 0; i < len; i++)
            count *= 26;
        char buf[16];
        for (uint64_t k = 0; k < count && id < n; k++) {
            memcpy(buf, SPM_SPACE, 3);
            size_t l = 3 + letters(buf + 3, k, len);
            EMIT_PIECE(buf, l);
        }
        for (uint64_t k = 0; len >= 2 && k < count && id < n; k++) {
            size_t l = letters(buf, k, len);
            EMIT_PIECE(buf, l);
        }
    }
#undef EMIT_PIECE
    *arena_out = arena;
    return 0;
}

int nf_mk_vocab_synth(struct nf_gguf_writer *w, int64_t n)
{
    if (n < NF_MK_MIN_VOCAB || n > NF_MK_MAX_VOCAB)
        return -EINVAL;
    char **tokens = calloc((size_t)n, sizeof(*tokens));
    float *scores = calloc((size_t)n, sizeof(*scores));
    int32_t *types = calloc((size_t)n, sizeof(*types));
    char *bytes = malloc(256 * 7);
    char *arena = NULL;
    int rc = -ENOMEM;
    if (!tokens || !scores || !types || !bytes)
        goto fail;
    tokens[0] = "<unk>";
    types[0] = TT_UNKNOWN;
    tokens[1] = "<s>";
    types[1] = TT_CONTROL;
    tokens[2] = "</s>";
    types[2] = TT_CONTROL;
    for (int b = 0; b < 256; b++) {
        snprintf(bytes + 7 * b, 7, "<0x%02X>", b);
        tokens[3 + b] = bytes + 7 * b;
        types[3 + b] = TT_BYTE;
    }
    rc = make_pieces(tokens, 259, n, &arena);
    if (rc)
        goto fail;
    /* SentencePiece merges the pair whose result scores highest: earlier (shorter) pieces win. */
    for (int64_t i = 259; i < n; i++) {
        types[i] = TT_NORMAL;
        scores[i] = -(float)(i - 259);
    }
    rc = nf_gguf_writer_add_str(w, "tokenizer.ggml.model", "llama");
    if (!rc)
        rc = nf_gguf_writer_add_arr_str(w, "tokenizer.ggml.tokens", (const char *const *)tokens,
                                        NULL, (uint64_t)n);
    if (!rc)
        rc = nf_gguf_writer_add_arr(w, "tokenizer.ggml.scores", NF_GGUF_FLOAT32, scores,
                                    (uint64_t)n);
    if (!rc)
        rc = nf_gguf_writer_add_arr(w, "tokenizer.ggml.token_type", NF_GGUF_INT32, types,
                                    (uint64_t)n);
    if (!rc)
        rc = nf_gguf_writer_add_u32(w, "tokenizer.ggml.bos_token_id", 1);
    if (!rc)
        rc = nf_gguf_writer_add_u32(w, "tokenizer.ggml.eos_token_id", 2);
    if (!rc)
        rc = nf_gguf_writer_add_u32(w, "tokenizer.ggml.unknown_token_id", 0);
    if (!rc)
        rc = nf_gguf_writer_add_bool(w, "tokenizer.ggml.add_bos_token", true);
    if (!rc)
        rc = nf_gguf_writer_add_bool(w, "tokenizer.ggml.add_eos_token", false);
fail:
    free(arena);
    free(bytes);
    free(types);
    free(scores);
    free(tokens);
    return rc;
}

int nf_mk_vocab_copy(struct nf_gguf_writer *w, const char *path, int64_t *n_vocab, char *err,
                     size_t errlen)
{
    struct nf_gguf *g;
    char gerr[512];
    int rc = nf_gguf_open(&g, path, gerr, sizeof(gerr));
    if (rc) {
        snprintf(err, errlen, "--vocab-from: %s", gerr[0] ? gerr : nf_strerror(rc));
        return rc;
    }
    const struct nf_gguf_value *tok = nf_gguf_get(g, "tokenizer.ggml.tokens");
    if (!tok || tok->type != NF_GGUF_ARRAY || tok->v.arr.type != NF_GGUF_STRING ||
        tok->v.arr.n == 0) {
        snprintf(err, errlen,
                 "--vocab-from: %s: tokenizer.ggml.tokens is missing or not a non-empty array of "
                 "strings",
                 path);
        rc = NF_EVOCAB;
        goto out;
    }
    if (tok->v.arr.n > INT32_MAX) {
        snprintf(err, errlen, "--vocab-from: %s: %llu tokens is more than a model can index", path,
                 (unsigned long long)tok->v.arr.n);
        rc = NF_EVOCAB;
        goto out;
    }
    *n_vocab = (int64_t)tok->v.arr.n;
    for (uint64_t i = 0; i < g->n_kv; i++) {
        const struct nf_gguf_kv *kv = &g->kv[i];
        if (strncmp(kv->key.s, "tokenizer.", 10) != 0)
            continue;
        rc = nf_gguf_writer_add_value(w, kv->key.s, &kv->value);
        if (rc) {
            snprintf(err, errlen, "--vocab-from: %s: cannot copy key '%s': %s", path, kv->key.s,
                     nf_strerror(rc));
            goto out;
        }
    }
out:
    nf_gguf_close(g);
    return rc;
}
