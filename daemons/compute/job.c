/* job.c - one Generate request run through the common generation driver (generate.h) on the
 * streaming engine, with the shared counters kept up to date and the tokens streamed back. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "gen.h"
#include "nf_err.h"
#include "nf_time.h"

/* The driver's engine: g's stream, each eval counted in the stack's compute counters. */

static int job_eval(void *ud, const int32_t *toks, int n, bool prompt)
{
    struct nf_gen *g = ud;
    struct nf_stack_counters *c = g->st->ctr;
    const uint64_t t0 = nf_now_ns();
    g->step = atomic_fetch_add(&c->c_step, 1) + 1;
    int rc = nf_stream_eval(g->s, toks, n);
    const uint64_t dt = nf_now_ns() - t0;
    if (rc == 0) {
        atomic_fetch_add(prompt ? &c->c_prompt_tokens : &c->c_decode_tokens, (uint64_t)n);
        atomic_fetch_add(prompt ? &c->c_prompt_ns : &c->c_decode_ns, dt);
    }
    nf_gen_flush_counters(g);
    return rc;
}

/* A verification pass of speculative decoding: counted as decode work; the positions a
 * rollback drops are taken back out of the token count (job_rollback). */
static int job_eval_rows(void *ud, const int32_t *toks, int n, float *logits)
{
    struct nf_gen *g = ud;
    struct nf_stack_counters *c = g->st->ctr;
    const uint64_t t0 = nf_now_ns();
    g->step = atomic_fetch_add(&c->c_step, 1) + 1;
    int rc = nf_stream_eval_rows(g->s, toks, n, logits);
    if (rc == 0) {
        atomic_fetch_add(&c->c_decode_tokens, (uint64_t)n);
        atomic_fetch_add(&c->c_decode_ns, nf_now_ns() - t0);
    }
    nf_gen_flush_counters(g);
    return rc;
}

static int job_rollback(void *ud, int n_past)
{
    struct nf_gen *g = ud;
    const int dropped = nf_stream_n_past(g->s) - n_past;
    int rc = nf_stream_rollback(g->s, n_past);
    if (rc == 0 && dropped > 0)
        atomic_fetch_sub(&g->st->ctr->c_decode_tokens, (uint64_t)dropped);
    return rc;
}

static const float *job_logits(void *ud)
{
    const struct nf_gen *g = ud;
    return nf_stream_logits(g->s);
}

static int job_n_past(void *ud)
{
    const struct nf_gen *g = ud;
    return nf_stream_n_past(g->s);
}

static void job_reset(void *ud)
{
    struct nf_gen *g = ud;
    nf_stream_reset(g->s);
}

struct job_run {
    struct nf_gen *g;
    struct nf_gen_job *j;
    bool gone;              /* a TokenEvent could not be sent: the client is gone */
    uint64_t last_frame_ns; /* nf_now_ns when the last frame went to the client */
    uint64_t progress_ns;   /* least interval between PromptProgress frames */
};

/* Interval of PromptProgress frames during a long prompt: often enough for the client's
 * --timeout and the server's idle rule, seldom enough to cost nothing. The environment may
 * change it (NANOFLOW_PROGRESS_MS, 0 = after every chunk: the tests' setting). */
#define NF_GEN_PROGRESS_MS 1000

static uint64_t progress_interval_ns(void)
{
    const char *e = getenv("NANOFLOW_PROGRESS_MS");
    char *end;
    long ms = e ? strtol(e, &end, 10) : -1;
    if (!e || end == e || *end || ms < 0 || ms > 3600000)
        ms = NF_GEN_PROGRESS_MS;
    return (uint64_t)ms * 1000000ull;
}

/* The stream's progress hook: a PromptProgress frame at most every progress interval. */
static void job_on_progress(void *ud, int done, int total)
{
    struct job_run *r = ud;
    const uint64_t now = nf_now_ns();
    if (done >= total || now - r->last_frame_ns < r->progress_ns)
        return;
    r->last_frame_ns = now;
    if (nf_gen_send_progress(r->g, r->j, done, total) < 0)
        atomic_store(&r->j->cancel, 1); /* the client is gone */
}

static int job_on_token(void *ud, const struct nf_gen_token *t)
{
    struct job_run *r = ud;
    if (nf_gen_send_token(r->g, r->j, t) < 0) {
        r->gone = true;
        return 1;
    }
    return 0;
}

/* Answers a sequence that ended in an error: an eval failure names the tile or the shutdown. */
static void job_failed(struct nf_gen *g, const struct nf_gen_job *j, const struct nf_gen_seq *q)
{
    char msg[600];
    if (!q->eval_failed)
        snprintf(msg, sizeof(msg), "%s", q->err);
    else if (q->rc == -ECANCELED)
        snprintf(msg, sizeof(msg), "compute is shutting down");
    else if (q->rc == -EOWNERDEAD) /* a daemon died: name it (daemons/common/live.c) */
        nf_live_message(g->st, nf_live_check(g->st), msg, sizeof(msg));
    else
        snprintf(msg, sizeof(msg), "generation aborted: %s",
                 nf_stream_error(g->s)[0] ? nf_stream_error(g->s) : nf_strerror(q->rc));
    nf_gen_send_error(g, j, q->rc, msg);
}

void nf_gen_run_job(struct nf_gen *g, struct nf_gen_job *j, double wait_s)
{
    char err[512];
    int32_t *ids = NULL;
    struct nf_gen_seq q = {0};
    struct job_run r = {.g = g, .j = j};
    const struct nf_gen_engine e = {.eval = job_eval,
                                    .logits = job_logits,
                                    .n_past = job_n_past,
                                    .reset = job_reset,
                                    .ud = g,
                                    .n_ctx = nf_stream_n_ctx(g->s),
                                    .n_vocab = nf_stream_hparams(g->s)->n_vocab,
                                    .eval_rows = job_eval_rows,
                                    .rollback = job_rollback};
    struct nf_gen_lookup lk = {.ngram_min = 1, .ngram_max = 3};
    struct nf_gen_draft draft;
    struct nf_gen_draft_model dm = {0};
    nf_gen_draft_lookup(&draft, &lk);
    if (j->draft) { /* the draft model's context: made once, on this (the worker) thread */
        int rc =
            g->dctx ? 0 : nf_ctx_create(&g->dctx, g->dmodel, nf_stream_n_ctx(g->s), g->n_threads);
        if (rc == 0)
            rc = nf_gen_draft_model_init(&draft, &dm, g->dctx, g->dvocab);
        if (rc < 0) {
            snprintf(err, sizeof(err), "creating the draft model's context: %s", nf_strerror(rc));
            nf_gen_send_error(g, j, rc, err);
            goto done;
        }
    }
    const struct nf_gen_params p = {.max_tokens = j->n_predict,
                                    .top_logits = j->top_logits,
                                    .sp = j->sp,
                                    .cancel = &j->cancel,
                                    .on_token = job_on_token,
                                    .ud = &r,
                                    .logprobs = j->logprobs,
                                    .draft = j->lookup || j->draft ? &draft : NULL};
    /* Tokenize as `run` does: BOS as the vocabulary says, special tokens parsed. */
    int n = nf_gen_tokenize(g->v, j->prompt, j->prompt_len, true, &ids, err, sizeof(err));
    if (n < 0 || (n = nf_gen_seq_init(&q, &e, g->v, ids, n, &p, err, sizeof(err))) < 0) {
        if (n == NF_ECTXFULL) { /* as `run` says it: what bounds the context */
            const size_t l = strlen(err);
            snprintf(err + l, sizeof(err) - l,
                     " (the stack's n_ctx, set by 'up -c' up to the model's trained length %d)",
                     nf_stream_hparams(g->s)->n_ctx_train);
        }
        nf_gen_send_error(g, j, n, err);
        goto done;
    }
    nf_stream_set_abort(g->s, &j->cancel);
    r.last_frame_ns = nf_now_ns();
    r.progress_ns = progress_interval_ns();
    nf_stream_set_progress(g->s, job_on_progress, &r);
    nf_gen_seq_run(&q);
    j->drafted = q.n_drafted;
    j->accepted = q.n_accepted;
    pthread_mutex_lock(&g->mu);
    g->n_drafted += (uint64_t)q.n_drafted;
    g->n_accepted += (uint64_t)q.n_accepted;
    pthread_mutex_unlock(&g->mu);
    if (q.stop == NF_GEN_STOP_ERROR) {
        job_failed(g, j, &q);
        goto done;
    }
    if (r.gone) {
        nf_log(NF_LOG_INFO, "request %llu: client gone, generation stopped",
               (unsigned long long)j->req_id);
        goto done;
    }
    const char *stop = nf_gen_stop_name(q.stop);
    nf_gen_send_done(g, j, q.ids, q.n_prompt, q.n_gen, stop,
                     (double)(q.t_prompt_ns - q.t_start_ns) * 1e-9,
                     (double)(q.t_end_ns - q.t_prompt_ns) * 1e-9, wait_s);
    nf_log(NF_LOG_INFO,
           "request %llu: %d prompt + %d generated tokens, stop %s, %.3f s in the queue",
           (unsigned long long)j->req_id, q.n_prompt, q.n_gen, stop, wait_s);
done:
    nf_stream_set_abort(g->s, NULL);
    nf_stream_set_progress(g->s, NULL, NULL);
    nf_gen_seq_free(&q);
    nf_gen_draft_model_free(&dm);
    free(ids);
}
