/* tok_spm.c - SentencePiece-style tokenization: greedy merge of the best-scoring adjacent pair
 * (llama.cpp's llm_tokenizer_spm). */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "nf_err.h"
#include "tok_internal.h"
#include "unicode.h"

/* A symbol is a byte range of the text; merged-away symbols have n == 0. */
struct sym {
    int prev, next;
    uint32_t off, n;
};

struct spm {
    const struct nf_vocab *v;
    const char *text;
    struct sym *sym;
    struct nf_bigram_heap heap;
    /* rev_merge: text of a merge candidate -> the (left, right) pair that last proposed it. */
    struct nf_strmap rev;
    int *rev_pair; /* (2 * rev.cap) */
    int err;
};

static void try_add_bigram(struct spm *s, int left, int right)
{
    if (left == -1 || right == -1 || s->err)
        return;
    const char *t = s->text + s->sym[left].off;
    uint32_t n = s->sym[left].n + s->sym[right].n;
    int32_t tok = nf_vocab_find(s->v, t, n);
    if (tok < 0)
        return;
    struct nf_bigram b = {left, right, s->v->score[tok], n};
    if (nf_bigram_push(&s->heap, b)) {
        s->err = -ENOMEM;
        return;
    }
    int32_t idx = nf_strmap_get(&s->rev, t, n);
    if (idx < 0) {
        idx = (int32_t)s->rev.n;
        if (nf_strmap_put(&s->rev, t, n, idx, false)) {
            s->err = -ENOMEM;
            return;
        }
    }
    s->rev_pair[2 * idx] = left;
    s->rev_pair[2 * idx + 1] = right;
}

/* Token id of byte ch: "<0xNN>" if present, else the one-byte token, else -1. */
static int32_t byte_token(const struct nf_vocab *v, unsigned char ch)
{
    char buf[8];
    snprintf(buf, sizeof(buf), "<0x%02X>", ch);
    int32_t id = nf_vocab_find(v, buf, 6);
    if (id < 0)
        id = nf_vocab_find(v, (const char *)&ch, 1);
    return id;
}

static int resegment(struct spm *s, const struct sym *sy, struct nf_tok_out *out, int depth)
{
    const char *t = s->text + sy->off;
    int32_t tok = nf_vocab_find(s->v, t, sy->n);
    if (tok >= 0) {
        nf_tok_push(out, tok);
        return 0;
    }
    int32_t idx = depth < 64 ? nf_strmap_get(&s->rev, t, sy->n) : -1;
    if (idx < 0) {
        /* No token for this symbol: emit its bytes (byte fallback). */
        for (uint32_t j = 0; j < sy->n; j++) {
            int32_t id = byte_token(s->v, (unsigned char)t[j]);
            if (id < 0)
                id = s->v->unk;
            if (id < 0)
                return NF_EVOCAB;
            nf_tok_push(out, id);
        }
        return 0;
    }
    int rc = resegment(s, &s->sym[s->rev_pair[2 * idx]], out, depth + 1);
    if (rc == 0)
        rc = resegment(s, &s->sym[s->rev_pair[2 * idx + 1]], out, depth + 1);
    return rc;
}

int nf_spm_tokenize(const struct nf_vocab *v, const char *text, size_t len, struct nf_tok_out *out)
{
    if (len == 0)
        return 0;
    if (len > INT32_MAX / 4)
        return -E2BIG;
    struct spm s = {.v = v, .text = text};
    int rc = -ENOMEM;
    s.sym = malloc(len * sizeof(*s.sym));
    /* Each merge proposes at most two new candidates: at most 3 * len distinct texts. */
    if (!s.sym || nf_strmap_init(&s.rev, (uint32_t)(3 * len + 1)))
        goto done;
    s.rev_pair = malloc(2 * (size_t)s.rev.cap * sizeof(int));
    if (!s.rev_pair)
        goto done;

    /* Split into UTF-8 characters (a truncated sequence at the end is kept short). */
    int n = 0;
    for (size_t off = 0; off < len;) {
        size_t cl = (size_t)nf_utf8_len((unsigned char)text[off]);
        if (cl > len - off)
            cl = len - off;
        s.sym[n] = (struct sym){n - 1, off + cl == len ? -1 : n + 1, (uint32_t)off, (uint32_t)cl};
        off += cl;
        n++;
    }
    for (int i = 1; i < n; i++)
        try_add_bigram(&s, i - 1, i);

    while (s.heap.n > 0 && !s.err) {
        struct nf_bigram b = nf_bigram_pop(&s.heap);
        struct sym *l = &s.sym[b.left], *r = &s.sym[b.right];
        if (l->n == 0 || r->n == 0 || l->n + r->n != b.size)
            continue; /* stale: one side was merged since */
        l->n += r->n;
        r->n = 0;
        l->next = r->next;
        if (r->next >= 0)
            s.sym[r->next].prev = b.left;
        try_add_bigram(&s, l->prev, b.left);
        try_add_bigram(&s, b.left, l->next);
    }
    if (s.err) {
        rc = s.err;
        goto done;
    }
    rc = 0;
    for (int i = 0; i != -1 && rc == 0; i = s.sym[i].next)
        rc = resegment(&s, &s.sym[i], out, 0);
done:
    free(s.sym);
    nf_bigram_heap_free(&s.heap);
    free(s.rev_pair);
    nf_strmap_free(&s.rev);
    return rc;
}
