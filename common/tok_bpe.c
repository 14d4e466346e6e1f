/* tok_bpe.c - byte-level BPE: pre-tokenize, map bytes to printable code points, apply merges by
 * rank (llama.cpp's llm_tokenizer_bpe). */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "tok_internal.h"
#include "unicode.h"

struct sym {
    int prev, next;
    uint32_t off, n;
};

/* Rank of merging texts a and b ("a b" in tokenizer.ggml.merges), or -1. The key is built in
 * `key`, which has room for both plus the separating space. */
static int32_t merge_rank(const struct nf_vocab *v, const char *a, uint32_t na, const char *b,
                          uint32_t nb, char *key)
{
    memcpy(key, a, na);
    key[na] = ' ';
    memcpy(key + na + 1, b, nb);
    return nf_strmap_get(&v->merge_map, key, na + 1 + nb);
}

struct bpe {
    const struct nf_vocab *v;
    const char *word; /* byte-encoded word */
    struct sym *sym;
    struct nf_bigram_heap heap;
    char *key;
    int err;
};

static void add_bigram(struct bpe *s, int left, int right)
{
    if (left == -1 || right == -1 || s->err)
        return;
    const struct sym *l = &s->sym[left], *r = &s->sym[right];
    int32_t rank = merge_rank(s->v, s->word + l->off, l->n, s->word + r->off, r->n, s->key);
    if (rank < 0)
        return;
    if (nf_bigram_push(&s->heap, (struct nf_bigram){left, right, -(double)rank, l->n + r->n}))
        s->err = -ENOMEM;
}

/* Merges one byte-encoded word and emits its tokens. */
static int bpe_word(struct bpe *s, const char *w, uint32_t wlen, struct nf_tok_out *out)
{
    const struct nf_vocab *v = s->v;
    int n = 0;
    s->word = w;
    s->heap.n = 0;
    if (v->ignore_merges && nf_vocab_find(v, w, wlen) >= 0) {
        s->sym[n++] = (struct sym){-1, -1, 0, wlen};
    } else {
        for (uint32_t off = 0; off < wlen;) {
            uint32_t cl = (uint32_t)nf_utf8_len((unsigned char)w[off]);
            if (cl > wlen - off)
                cl = wlen - off;
            s->sym[n] = (struct sym){n - 1, off + cl == wlen ? -1 : n + 1, off, cl};
            off += cl;
            n++;
        }
    }
    for (int i = 1; i < n; i++)
        add_bigram(s, i - 1, i);
    while (s->heap.n > 0 && !s->err) {
        struct nf_bigram b = nf_bigram_pop(&s->heap);
        struct sym *l = &s->sym[b.left], *r = &s->sym[b.right];
        if (l->n == 0 || r->n == 0 || l->n + r->n != b.size)
            continue; /* stale */
        l->n += r->n;
        r->n = 0;
        l->next = r->next;
        if (r->next >= 0)
            s->sym[r->next].prev = b.left;
        add_bigram(s, l->prev, b.left);
        add_bigram(s, b.left, l->next);
    }
    if (s->err)
        return s->err;
    for (int i = 0; i < n; i++) {
        const struct sym *sy = &s->sym[i];
        if (sy->n == 0)
            continue;
        int32_t tok = nf_vocab_find(v, w + sy->off, sy->n);
        if (tok >= 0) {
            nf_tok_push(out, tok);
            continue;
        }
        /* No token: fall back to single-byte tokens, skipping bytes that have none. */
        for (uint32_t j = 0; j < sy->n; j++) {
            int32_t id = nf_vocab_find(v, w + sy->off + j, 1);
            if (id >= 0)
                nf_tok_push(out, id);
        }
    }
    return 0;
}

int nf_bpe_tokenize(const struct nf_vocab *v, const char *text, size_t len, struct nf_tok_out *out)
{
    if (len == 0)
        return 0;
    uint32_t *cps = malloc(len * sizeof(*cps));
    uint32_t *words = NULL;
    size_t n_cps = 0, n_words = 0;
    struct bpe s = {.v = v};
    char *wbuf = NULL;
    int rc = -ENOMEM;
    if (!cps)
        goto done;
    for (size_t off = 0; off < len;)
        cps[n_cps++] = nf_utf8_decode(text, len, &off);
    rc = nf_pretok_split(v->pre, cps, n_cps, &words, &n_words);
    if (rc)
        goto done;
    size_t maxw = 0;
    for (size_t i = 0; i < n_words; i++)
        maxw = words[i] > maxw ? words[i] : maxw;
    /* A code point is at most 4 UTF-8 bytes, each byte 2 bytes once byte-encoded. */
    rc = -ENOMEM;
    wbuf = malloc(8 * maxw + 1);
    s.key = malloc(16 * maxw + 2);
    s.sym = malloc(8 * maxw * sizeof(*s.sym) + sizeof(*s.sym));
    if (!wbuf || !s.key || !s.sym)
        goto done;
    rc = 0;
    size_t c = 0;
    for (size_t i = 0; i < n_words && rc == 0; i++) {
        uint32_t wl = 0;
        for (uint32_t k = 0; k < words[i]; k++, c++) {
            char u8[4];
            int nb = nf_utf8_encode(cps[c] > 0x10FFFF ? 0xFFFD : cps[c], u8);
            for (int b = 0; b < nb; b++)
                wl += (uint32_t)nf_utf8_encode(nf_byte_to_unicode((uint8_t)u8[b]), wbuf + wl);
        }
        rc = bpe_word(&s, wbuf, wl, out);
    }
done:
    free(cps);
    free(words);
    free(wbuf);
    free(s.key);
    free(s.sym);
    nf_bigram_heap_free(&s.heap);
    return rc;
}
