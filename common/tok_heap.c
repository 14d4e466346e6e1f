/* tok_heap.c - the merge-candidate heap shared by the SentencePiece and BPE tokenizers. */
#include <errno.h>
#include <stdlib.h>

#include "tok_internal.h"

static int before(const struct nf_bigram *a, const struct nf_bigram *b)
{
    return a->pri > b->pri || (a->pri == b->pri && a->left < b->left);
}

int nf_bigram_push(struct nf_bigram_heap *h, struct nf_bigram b)
{
    if (h->n == h->cap) {
        size_t cap = h->cap ? h->cap * 2 : 64;
        struct nf_bigram *v = realloc(h->v, cap * sizeof(*v));
        if (!v)
            return -ENOMEM;
        h->v = v;
        h->cap = cap;
    }
    size_t i = h->n++;
    while (i > 0 && before(&b, &h->v[(i - 1) / 2])) {
        h->v[i] = h->v[(i - 1) / 2];
        i = (i - 1) / 2;
    }
    h->v[i] = b;
    return 0;
}

struct nf_bigram nf_bigram_pop(struct nf_bigram_heap *h)
{
    struct nf_bigram top = h->v[0];
    struct nf_bigram last = h->v[--h->n];
    size_t i = 0;
    for (;;) {
        size_t c = 2 * i + 1;
        if (c >= h->n)
            break;
        if (c + 1 < h->n && before(&h->v[c + 1], &h->v[c]))
            c++;
        if (!before(&h->v[c], &last))
            break;
        h->v[i] = h->v[c];
        i = c;
    }
    if (h->n > 0)
        h->v[i] = last;
    return top;
}

void nf_bigram_heap_free(struct nf_bigram_heap *h)
{
    free(h->v);
    h->v = NULL;
    h->n = h->cap = 0;
}
