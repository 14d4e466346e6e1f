/* spec_lookup.c - prompt lookup, the draft source of speculative decoding that needs no model:
 * the tokens that followed an earlier occurrence of the sequence's last few tokens. */
#include "generate.h"

/* The latest start i < n - g of ids[n - g .. n) earlier in ids, or -1. Scanning back from the
 * end finds the most recent context first: in generated text that repeats itself the freshest
 * match is the likeliest continuation. */
static int lookup_match(const int32_t *ids, int n, int g)
{
    const int32_t *pat = ids + n - g;
    for (int i = n - g - 1; i >= 0; i--) {
        int k = 0;
        while (k < g && ids[i + k] == pat[k])
            k++;
        if (k == g)
            return i;
    }
    return -1;
}

static int lookup_draft(void *ud, const int32_t *ids, int n, int32_t *out, int max)
{
    const struct nf_gen_lookup *l = ud;
    for (int g = l->ngram_max; g >= l->ngram_min; g--) {
        if (n < g + 1)
            continue;
        const int i = lookup_match(ids, n, g);
        if (i < 0)
            continue;
        /* What followed the match, up to the end of what is known (it may run into the
         * pattern itself: a period of fewer than g tokens repeats). */
        int nd = 0;
        for (int j = i + g; j < n && nd < max; j++)
            out[nd++] = ids[j];
        return nd;
    }
    return 0;
}

void nf_gen_draft_lookup(struct nf_gen_draft *d, struct nf_gen_lookup *l)
{
    if (l->ngram_min < 1)
        l->ngram_min = 1;
    if (l->ngram_max < l->ngram_min)
        l->ngram_max = l->ngram_min;
    if (l->ngram_max > 8)
        l->ngram_max = 8;
    if (l->ngram_min > l->ngram_max)
        l->ngram_min = l->ngram_max;
    *d = (struct nf_gen_draft){.draft = lookup_draft, .ud = l};
}
