/* logprobs.c - OpenAI's logprobs of a completion: compute sends each token's log-probability and
 * those of its top alternatives (log-softmax of the raw logits over the whole vocabulary,
 * TokenEvent.logprob and TopLogit.logprob); here they become chat's
 * {"content":[{"token","logprob","bytes","top_logprobs"}]} or the completions' parallel arrays
 * {"tokens","token_logprobs","top_logprobs","text_offset"}.
 *
 * The alternatives' text needs the vocabulary, which the gateway loads from the model on the
 * first request that asks for logprobs (most never do, and a large vocabulary is megabytes). */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "gateway.h"
#include "nf_err.h"
#include "tokenizer.h"

int gw_lp_vocab(struct gw *g, char *err, size_t errlen)
{
    if (g->vocab)
        return 0;
    if (!g->gguf)
        return nf_errf(err, errlen, -ENOENT, "the model's vocabulary is not available");
    return nf_vocab_load(&g->vocab, g->gguf, err, errlen);
}

/* {"token","logprob","bytes"} for piece p[0..n). */
static json_t *lp_entry(const char *p, size_t n, double logprob)
{
    json_t *bytes = json_array();
    for (size_t i = 0; i < n; i++)
        json_array_append_new(bytes, json_integer((unsigned char)p[i]));
    json_t *o = json_object();
    json_object_set_new(o, "token", gw_json_text(p, n));
    json_object_set_new(o, "logprob", json_real(logprob));
    json_object_set_new(o, "bytes", bytes);
    return o;
}

json_t *gw_lp_token(struct gw *g, const Nanoflow__TokenEvent *t, int n_top)
{
    json_t *o = lp_entry((const char *)t->piece.data, t->piece.len, t->logprob);
    json_t *top = json_array();
    char buf[256];
    for (size_t i = 0; i < t->n_top_logits && (int)i < n_top; i++) {
        const Nanoflow__TopLogit *tl = t->top_logits[i];
        int n = g->vocab ? nf_token_to_piece(g->vocab, tl->id, buf, sizeof(buf)) : -EINVAL;
        if (n < 0 || n > (int)sizeof(buf))
            n = 0; /* a piece longer than 256 bytes is shown empty (its bytes too) */
        json_array_append_new(top, lp_entry(buf, (size_t)n, tl->logprob));
    }
    json_object_set_new(o, "top_logprobs", top);
    return o;
}

/* Characters in a token's bytes: its UTF-8 lead bytes (a character split across tokens counts
 * in the token holding its first byte). */
static size_t lp_chars(const json_t *bytes)
{
    size_t n = 0, i;
    json_t *b;
    json_array_foreach(bytes, i, b)
    {
        if (((unsigned)json_integer_value(b) & 0xC0) != 0x80)
            n++;
    }
    return n;
}

json_t *gw_lp_render(json_t *entries, bool chat, size_t *text_offset)
{
    if (chat)
        return json_pack("{s:o,s:n}", "content", entries, "refusal");
    json_t *tokens = json_array(), *lps = json_array(), *tops = json_array(), *offs = json_array();
    size_t i;
    json_t *e;
    json_array_foreach(entries, i, e)
    {
        json_array_append(tokens, json_object_get(e, "token"));
        json_array_append(lps, json_object_get(e, "logprob"));
        json_t *m = json_object(), *alt;
        size_t k;
        json_array_foreach(json_object_get(e, "top_logprobs"), k, alt)
        {
            /* A dict by text as OpenAI's: the first (likeliest) of equal texts is kept. */
            const char *tx = json_string_value(json_object_get(alt, "token"));
            if (tx && !json_object_get(m, tx))
                json_object_set(m, tx, json_object_get(alt, "logprob"));
        }
        json_array_append_new(tops, m);
        json_array_append_new(offs, json_integer((json_int_t)*text_offset));
        *text_offset += lp_chars(json_object_get(e, "bytes"));
    }
    json_decref(entries);
    return json_pack("{s:o,s:o,s:o,s:o}", "tokens", tokens, "token_logprobs", lps, "top_logprobs",
                     tops, "text_offset", offs);
}
