/* generate.c - the generation driver: BOS rule, prompt, sampling, stop rules (see generate.h). */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "generate.h"
#include "nf_err.h"
#include "nf_time.h"

/* --- engine adapters ------------------------------------------------------------------------- */

static int ctx_eval(void *ud, const int32_t *toks, int n, bool prompt)
{
    (void)prompt;
    return nf_ctx_eval(ud, toks, n);
}

static const float *ctx_logits(void *ud)
{
    const struct nf_ctx *c = ud;
    return c->logits;
}

static int ctx_n_past(void *ud)
{
    const struct nf_ctx *c = ud;
    return c->n_past;
}

static void ctx_reset(void *ud)
{
    nf_ctx_reset(ud);
}

void nf_gen_engine_ctx(struct nf_gen_engine *e, struct nf_ctx *c)
{
    *e = (struct nf_gen_engine){.eval = ctx_eval,
                                .logits = ctx_logits,
                                .n_past = ctx_n_past,
                                .reset = ctx_reset,
                                .ud = c,
                                .n_ctx = c->n_ctx,
                                .n_vocab = c->m->hp.n_vocab};
}

static int stream_eval(void *ud, const int32_t *toks, int n, bool prompt)
{
    (void)prompt;
    return nf_stream_eval(ud, toks, n);
}

static const float *stream_logits(void *ud)
{
    return nf_stream_logits(ud);
}

static int stream_n_past(void *ud)
{
    return nf_stream_n_past(ud);
}

static void stream_reset(void *ud)
{
    nf_stream_reset(ud);
}

void nf_gen_engine_stream(struct nf_gen_engine *e, struct nf_stream *s)
{
    *e = (struct nf_gen_engine){.eval = stream_eval,
                                .logits = stream_logits,
                                .n_past = stream_n_past,
                                .reset = stream_reset,
                                .ud = s,
                                .n_ctx = nf_stream_n_ctx(s),
                                .n_vocab = nf_stream_hparams(s)->n_vocab};
}

/* --- tokenizing ------------------------------------------------------------------------------ */

const char *nf_gen_stop_name(enum nf_gen_stop stop)
{
    switch (stop) {
    case NF_GEN_RUNNING: return "running";
    case NF_GEN_STOP_EOG: return "eog";
    case NF_GEN_STOP_LENGTH: return "length";
    case NF_GEN_STOP_CTX: return "ctx";
    case NF_GEN_STOP_CANCEL: return "cancel";
    case NF_GEN_STOP_ERROR: return "error";
    }
    return "?";
}

int nf_gen_tokenize(const struct nf_vocab *v, const char *text, size_t len, bool parse_special,
                    int32_t **out, char *err, size_t errlen)
{
    /* One spare id: an empty prompt becomes [BOS]. */
    int n = nf_tokenize_alloc(v, text, len, nf_vocab_add_bos(v), parse_special, 1, out);
    if (n < 0)
        return nf_errf(err, errlen, n, "tokenizing the prompt failed: %s", nf_strerror(n));
    if (n == 0) {
        if (nf_vocab_bos(v) < 0) {
            free(*out);
            *out = NULL;
            return nf_errf(err, errlen, NF_EUSAGE,
                           "empty prompt and the vocabulary has no BOS token");
        }
        (*out)[n++] = nf_vocab_bos(v);
    }
    return n;
}

int nf_gen_ctx_check(long n_ctx, int n_ctx_train, char *err, size_t errlen)
{
    if (n_ctx_train > 0 && n_ctx > n_ctx_train)
        return nf_errf(err, errlen, NF_EUSAGE,
                       "context %ld is beyond the model's trained length %d (context_length); "
                       "use -c %d or less",
                       n_ctx, n_ctx_train, n_ctx_train);
    return 0;
}

/* --- one sequence ---------------------------------------------------------------------------- */

int nf_gen_seq_init(struct nf_gen_seq *q, const struct nf_gen_engine *e, const struct nf_vocab *v,
                    const int32_t *prompt, int n_prompt, const struct nf_gen_params *p, char *err,
                    size_t errlen)
{
    memset(q, 0, sizeof(*q));
    q->e = e;
    q->v = v;
    q->p = *p;
    if (p->max_tokens < 0)
        return nf_errf(err, errlen, NF_EUSAGE, "max_tokens %d is negative", p->max_tokens);
    if (p->top_logits < 0 || p->top_logits > NF_GEN_TOP_LOGITS_MAX)
        return nf_errf(err, errlen, NF_EUSAGE, "top_logits %d is out of range, expected 0..%d",
                       p->top_logits, NF_GEN_TOP_LOGITS_MAX);
    if (n_prompt < 1)
        return nf_errf(err, errlen, NF_EUSAGE, "the prompt has no tokens");
    /* Generating needs one position past the prompt for the first sampled token's successor. */
    const int need = n_prompt + (p->max_tokens > 0);
    if (n_prompt > e->n_ctx)
        return nf_errf(err, errlen, NF_ECTXFULL,
                       "the prompt has %d tokens but the context holds %d", n_prompt, e->n_ctx);
    if (need > e->n_ctx)
        return nf_errf(err, errlen, NF_ECTXFULL,
                       "the prompt has %d tokens and fills the context of %d: no room to generate",
                       n_prompt, e->n_ctx);
    /* Every generated token but the last is evaluated, so at most n_ctx - n_prompt + 1 fit:
     * the buffer never depends on a huge max_tokens. */
    const int room = e->n_ctx - n_prompt + 1;
    const int n_max = p->max_tokens < room ? p->max_tokens : room;
    q->cap = n_prompt + n_max;
    q->ids = malloc(sizeof(int32_t) * (size_t)q->cap);
    if (!q->ids)
        return nf_errf(err, errlen, -ENOMEM, "out of memory for %d token ids", q->cap);
    memcpy(q->ids, prompt, sizeof(int32_t) * (size_t)n_prompt);
    q->n_prompt = n_prompt;
    if (p->max_tokens == 0)
        return 0;
    int rc = nf_sampler_create(&q->smp, &p->sp, e->n_vocab);
    if (rc < 0)
        return nf_errf(err, errlen, rc, "%s: %s",
                       rc == -ENOMEM ? "out of memory for the sampler"
                                     : "invalid sampling parameters",
                       nf_strerror(rc));
    q->piece_cap = 256;
    q->piece = malloc((size_t)q->piece_cap);
    if (!q->piece)
        return nf_errf(err, errlen, -ENOMEM, "out of memory for a token piece");
    for (int i = 0; i < n_prompt; i++)
        nf_sampler_accept(q->smp, prompt[i]);
    return 0;
}

/* Ends q with stop; returns 0 (what nf_gen_seq_step returns once stopped). */
static int seq_end(struct nf_gen_seq *q, enum nf_gen_stop stop)
{
    q->stop = stop;
    q->t_end_ns = nf_now_ns();
    return 0;
}

static int seq_fail(struct nf_gen_seq *q, int rc)
{
    q->rc = rc;
    return seq_end(q, NF_GEN_STOP_ERROR);
}

static bool seq_cancelled(const struct nf_gen_seq *q)
{
    return q->p.cancel && atomic_load(q->p.cancel);
}

/* An eval of tok (-1: the prompt) returned rc < 0: a cancel when the flag asked for it. */
static int seq_eval_failed(struct nf_gen_seq *q, int rc, int32_t tok)
{
    if (rc == -ECANCELED && seq_cancelled(q))
        return seq_end(q, NF_GEN_STOP_CANCEL);
    q->eval_failed = true;
    if (tok < 0)
        nf_errf(q->err, sizeof(q->err), rc, "evaluating the prompt: %s", nf_strerror(rc));
    else
        nf_errf(q->err, sizeof(q->err), rc, "evaluating token %d: %s", tok, nf_strerror(rc));
    return seq_fail(q, rc);
}

/* The piece of tok into q->piece (grown when needed); returns its length or a negative code. */
static int seq_piece(struct nf_gen_seq *q, int32_t tok)
{
    int pl = nf_token_to_piece(q->v, tok, q->piece, q->piece_cap);
    if (pl > q->piece_cap) {
        char *np = realloc(q->piece, (size_t)pl);
        if (!np)
            return nf_errf(q->err, sizeof(q->err), -ENOMEM, "out of memory for a token piece");
        q->piece = np;
        q->piece_cap = pl;
        pl = nf_token_to_piece(q->v, tok, q->piece, q->piece_cap);
    }
    if (pl < 0)
        return nf_errf(q->err, sizeof(q->err), pl, "token %d has no piece: %s", tok,
                       nf_strerror(pl));
    return pl;
}

int nf_gen_seq_step(struct nf_gen_seq *q)
{
    const struct nf_gen_engine *e = q->e;
    if (q->stop != NF_GEN_RUNNING)
        return 0;
    if (!q->prompt_done) {
        q->prompt_done = true;
        q->t_start_ns = nf_now_ns();
        e->reset(e->ud);
        int rc = e->eval(e->ud, q->ids, q->n_prompt, true);
        q->t_prompt_ns = nf_now_ns();
        if (rc < 0)
            return seq_eval_failed(q, rc, -1);
        return q->p.max_tokens > 0 ? 1 : seq_end(q, NF_GEN_STOP_LENGTH);
    }
    if (seq_cancelled(q))
        return seq_end(q, NF_GEN_STOP_CANCEL);
    const float *logits = e->logits(e->ud);
    const int32_t tok = nf_sampler_sample(q->smp, logits);
    NF_ASSERT(q->n_prompt + q->n_gen < q->cap);
    q->ids[q->n_prompt + q->n_gen++] = tok;
    nf_sampler_accept(q->smp, tok);
    if (q->p.on_token) {
        const int pl = seq_piece(q, tok);
        if (pl < 0)
            return seq_fail(q, pl);
        struct nf_gen_token t = {.id = tok,
                                 .index = q->n_gen - 1,
                                 .piece = q->piece,
                                 .piece_len = pl,
                                 .top_ids = q->top_ids,
                                 .top_vals = q->top_vals,
                                 .logit = logits[tok]};
        if (q->p.logprobs)
            t.log_sum_exp = nf_log_sum_exp(logits, e->n_vocab);
        t.n_top = nf_top_logits(logits, e->n_vocab, q->p.top_logits, q->top_ids, q->top_vals);
        if (q->p.on_token(q->p.ud, &t))
            return seq_end(q, NF_GEN_STOP_CANCEL);
    }
    if (nf_vocab_is_eog(q->v, tok))
        return seq_end(q, NF_GEN_STOP_EOG);
    if (q->n_gen >= q->p.max_tokens)
        return seq_end(q, NF_GEN_STOP_LENGTH);
    if (e->n_past(e->ud) >= e->n_ctx)
        return seq_end(q, NF_GEN_STOP_CTX);
    int rc = e->eval(e->ud, &tok, 1, false);
    if (rc < 0)
        return seq_eval_failed(q, rc, tok);
    return 1;
}

int nf_gen_seq_eval_failed(struct nf_gen_seq *q, int rc, int32_t tok)
{
    if (q->stop != NF_GEN_RUNNING)
        return 0;
    return seq_eval_failed(q, rc, tok);
}

int nf_gen_seq_run(struct nf_gen_seq *q)
{
    while (nf_gen_seq_step(q) > 0)
        ;
    return q->rc;
}

void nf_gen_seq_free(struct nf_gen_seq *q)
{
    nf_sampler_free(q->smp);
    free(q->ids);
    free(q->piece);
    q->smp = NULL;
    q->ids = NULL;
    q->piece = NULL;
}
