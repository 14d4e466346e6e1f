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
        /* What followed the match, copied as an overlapping copy (LZ77's): past the end of
         * what is known the copy reads its own output, so text that repeats with a period p
         * (the distance from the match to the end) is drafted as that period repeated, up to
         * max, instead of stopping after p tokens. A run of one token repeated (p = 1), which
         * the latest match would otherwise draft one token at a time, drafts max of it. */
        const int src = i + g;
        int nd = 0;
        for (; nd < max && src + nd < n; nd++)
            out[nd] = ids[src + nd];
        for (; nd < max; nd++)
            out[nd] = out[src + nd - n];
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
