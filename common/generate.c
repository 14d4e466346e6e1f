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

static int ctx_eval_rows(void *ud, const int32_t *toks, int n, float *logits)
{
    return nf_ctx_eval_rows(ud, toks, n, logits);
}

static int ctx_rollback(void *ud, int n_past)
{
    return nf_ctx_rollback(ud, n_past);
}

void nf_gen_engine_ctx(struct nf_gen_engine *e, struct nf_ctx *c)
{
    *e = (struct nf_gen_engine){.eval = ctx_eval,
                                .logits = ctx_logits,
                                .n_past = ctx_n_past,
                                .reset = ctx_reset,
                                .ud = c,
                                .n_ctx = c->n_ctx,
                                .n_vocab = c->m->hp.n_vocab,
                                .eval_rows = ctx_eval_rows,
                                .rollback = ctx_rollback};
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

static int stream_eval_rows(void *ud, const int32_t *toks, int n, float *logits)
{
    return nf_stream_eval_rows(ud, toks, n, logits);
}

static int stream_rollback(void *ud, int n_past)
{
    return nf_stream_rollback(ud, n_past);
}

void nf_gen_engine_stream(struct nf_gen_engine *e, struct nf_stream *s)
{
    *e = (struct nf_gen_engine){.eval = stream_eval,
                                .logits = stream_logits,
                                .n_past = stream_n_past,
                                .reset = stream_reset,
                                .ud = s,
                                .n_ctx = nf_stream_n_ctx(s),
                                .n_vocab = nf_stream_hparams(s)->n_vocab,
                                .eval_rows = stream_eval_rows,
                                .rollback = stream_rollback};
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
    if (p->draft && (!e->eval_rows || !e->rollback))
        return nf_errf(err, errlen, NF_EUSAGE,
                       "speculative decoding needs an engine that verifies drafts (eval_rows)");
    if (p->draft && (p->spec_max < 0 || p->spec_max > NF_GEN_SPEC_MAX))
        return nf_errf(err, errlen, NF_EUSAGE, "spec_max %d is out of range, expected 0..%d",
                       p->spec_max, NF_GEN_SPEC_MAX);
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
    if (p->draft) {
        q->p.spec_max = p->spec_max ? p->spec_max : NF_GEN_SPEC_MAX;
        q->spec_k = q->p.spec_max < 4 ? q->p.spec_max : 4;
        q->spec_rows = malloc(sizeof(float) * (size_t)(NF_GEN_SPEC_MAX + 1) * (size_t)e->n_vocab);
        if (!q->spec_rows)
            return nf_errf(err, errlen, -ENOMEM, "out of memory for %d rows of logits",
                           NF_GEN_SPEC_MAX + 1);
    }
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

/* Records tok, sampled from logits, as the next generated token, passes it to on_token and
 * applies the eog and length stops (rule 3; the caller checks the context). Returns 1 while
 * the sequence runs, 0 once it stopped. */
static int seq_emit(struct nf_gen_seq *q, int32_t tok, const float *logits)
{
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
            t.log_sum_exp = nf_log_sum_exp(logits, q->e->n_vocab);
        t.n_top = nf_top_logits(logits, q->e->n_vocab, q->p.top_logits, q->top_ids, q->top_vals);
        if (q->p.on_token(q->p.ud, &t))
            return seq_end(q, NF_GEN_STOP_CANCEL);
    }
    if (nf_vocab_is_eog(q->v, tok))
        return seq_end(q, NF_GEN_STOP_EOG);
    if (q->n_gen >= q->p.max_tokens)
        return seq_end(q, NF_GEN_STOP_LENGTH);
    return 1;
}

/* k for the next step from this one's drafts and acceptances: grow after a run accepted whole,
 * fall back to just past what was accepted otherwise. */
static void spec_adapt(struct nf_gen_seq *q, int drafted, int accepted)
{
    if (drafted == 0)
        return;
    int k = accepted == drafted ? q->spec_k + 2 : accepted + 1;
    q->spec_k = k < 1 ? 1 : k > q->p.spec_max ? q->p.spec_max : k;
}

/* One speculative step (generate.h): evaluates the pending token with the drafts that follow
 * it in one pass, then samples from each position's logits in order while the samples agree
 * with the drafts. Positions are counted as plain decoding would have them: after the n-th
 * generated token, n_prompt + n - 1 are evaluated. */
static int seq_spec_step(struct nf_gen_seq *q)
{
    const struct nf_gen_engine *e = q->e;
    const size_t V = (size_t)e->n_vocab;
    const float *rows = e->logits(e->ud);
    int nd = 0;
    if (q->spec_pending) {
        const int n_seq = q->n_prompt + q->n_gen, past = n_seq - 1;
        /* No draft past what the context, max_tokens or the id buffer can take. */
        int max = q->spec_k;
        if (max > e->n_ctx - past - 1)
            max = e->n_ctx - past - 1;
        if (max > q->p.max_tokens - q->n_gen - 1)
            max = q->p.max_tokens - q->n_gen - 1;
        if (max > q->cap - n_seq - 1)
            max = q->cap - n_seq - 1;
        const int32_t tok = q->ids[n_seq - 1];
        if (max > 0) {
            nd = q->p.draft->draft(q->p.draft->ud, q->ids, n_seq, q->spec_batch + 1, max);
            if (nd < 0) {
                nf_errf(q->err, sizeof(q->err), nd, "drafting after token %d: %s", tok,
                        nf_strerror(nd));
                return seq_fail(q, nd);
            }
            nd = nd < max ? nd : max;
        }
        int rc;
        if (nd == 0) {
            rc = e->eval(e->ud, &tok, 1, false);
        } else {
            q->spec_batch[0] = tok;
            rc = e->eval_rows(e->ud, q->spec_batch, nd + 1, q->spec_rows);
            rows = q->spec_rows;
            q->n_verify++;
        }
        if (rc < 0)
            return seq_eval_failed(q, rc, tok);
        q->spec_pending = false;
    }
    int accepted = 0;
    int run = 1;
    for (int j = 0; j <= nd && run; j++) {
        if (seq_cancelled(q)) {
            run = seq_end(q, NF_GEN_STOP_CANCEL);
            break;
        }
        const float *logits = rows + (size_t)j * V;
        const int32_t tok = nf_sampler_sample(q->smp, logits);
        const bool hit = j < nd && tok == q->spec_batch[j + 1];
        accepted += hit;
        if ((run = seq_emit(q, tok, logits)) == 0)
            break;
        if (q->n_prompt + q->n_gen - 1 >= e->n_ctx) {
            run = seq_end(q, NF_GEN_STOP_CTX);
            break;
        }
        if (!hit)
            break;
    }
    q->n_drafted += nd;
    q->n_accepted += accepted;
    spec_adapt(q, nd, accepted);
    if (nd > 0) {
        /* Drop the positions of rejected drafts: the engine holds what plain decoding would. */
        int rc = e->rollback(e->ud, q->n_prompt + q->n_gen - 1);
        if (rc < 0) {
            nf_errf(q->err, sizeof(q->err), rc, "rolling back rejected drafts: %s",
                    nf_strerror(rc));
            return seq_fail(q, rc);
        }
    }
    q->spec_pending = run > 0;
    return run;
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
    if (q->p.draft)
        return seq_spec_step(q);
    if (seq_cancelled(q))
        return seq_end(q, NF_GEN_STOP_CANCEL);
    const float *logits = e->logits(e->ud);
    const int32_t tok = nf_sampler_sample(q->smp, logits);
    if (seq_emit(q, tok, logits) == 0)
        return 0;
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
    free(q->spec_rows);
    q->spec_rows = NULL;
    q->smp = NULL;
    q->ids = NULL;
    q->piece = NULL;
}
