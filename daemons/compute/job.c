/* job.c - one Generate request run through the common generation driver (generate.h) on its slot
 * of the streaming engine, the batched step of the running requests, the shared counters kept
 * up to date and the tokens streamed back. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "gen.h"
#include "nf_err.h"
#include "nf_time.h"

/* --- prefix reuse (gen.h) -------------------------------------------------------------------- */

int nf_gen_job_tokens(struct nf_gen *g, struct nf_gen_job *j)
{
    if (!j->ids) {
        char err[512];
        j->n_ids = nf_gen_tokenize(g->v, j->prompt, j->prompt_len, true, &j->ids, err, sizeof(err));
        if (j->n_ids < 0)
            return j->n_ids; /* j->ids stays NULL: nf_gen_run_begin says why */
    }
    return j->n_ids;
}

int nf_gen_prefix_len(const struct nf_gen *g, int slot, const int32_t *ids, int n, int *common)
{
    if (common)
        *common = 0;
    if (g->prefix_off || !g->kept || n < 1)
        return 0;
    const struct nf_gen_kept *k = &g->kept[slot];
    int l = 0;
    while (l < k->n && l < n && k->ids[l] == ids[l])
        l++;
    if (common)
        *common = l;
    /* At least one token left to evaluate (its logits are needed), and no chunk of one token
     * where a cold run's chunk has more (gen.h). */
    l = nf_stream_prefix_usable(l, n, nf_stream_ubatch(g->s));
    return l >= NF_GEN_PREFIX_MIN ? l : 0;
}

/* After r's prompt eval (toks[0..n), rc its result): what its slot keeps. On success, every
 * prompt position but a last one evaluated as a chunk of its own (gen.h); on failure nothing (the
 * cells past the reused prefix were partly overwritten, and an error leaves the sequence
 * undefined). Counts a hit. */
static void prefix_keep(struct nf_gen_run *r, const int32_t *toks, int n, int rc)
{
    struct nf_gen *g = r->g;
    if (g->prefix_off || !g->kept)
        return;
    struct nf_gen_kept *k = &g->kept[r->slot];
    k->used = ++g->kept_clock;
    if (rc < 0) {
        k->n = 0;
        return;
    }
    k->n = nf_stream_prefix_kept(n, nf_stream_ubatch(g->s));
    k->saved = false;
    memcpy(k->ids, toks, sizeof(int32_t) * (size_t)k->n);
    if (r->reuse > 0) {
        pthread_mutex_lock(&g->mu);
        g->n_prefix_hits++;
        g->n_prefix_reused += (uint64_t)r->reuse;
        g->n_prefix_common += (uint64_t)r->common;
        pthread_mutex_unlock(&g->mu);
        nf_log(NF_LOG_INFO,
               "request %llu: %d of %d prompt tokens reused from slot %d (%d in common)",
               (unsigned long long)r->j->req_id, r->reuse, n, r->slot, r->common);
    }
}

/* The driver's engine for one run: its slot of g's stream. The prompt is evaluated at once (alone,
 * counted in the stack's compute counters); a decode token is left pending for the batched
 * step (nf_gen_run_batch). */

static int job_eval(void *ud, const int32_t *toks, int n, bool prompt)
{
    struct nf_gen_run *r = ud;
    struct nf_gen *g = r->g;
    if (!prompt && !r->spec) {
        NF_ASSERT(n == 1 && !r->pending); /* the driver evaluates one token per step */
        r->pending = true;
        r->tok = toks[0];
        return 0;
    }
    /* A prompt, or a speculating run's step without drafts: on its slot alone, now (the
     * driver reads its logits right after). A prompt starting from a kept prefix evaluates
     * the rest from there (job_reset rolled the slot back to it). */
    const int skip = prompt ? r->reuse : 0;
    NF_ASSERT(skip < n);
    struct nf_stack_counters *c = g->st->ctr;
    const uint64_t t0 = nf_now_ns();
    g->step = atomic_fetch_add(&c->c_step, 1) + 1;
    if (!prompt)
        nf_stream_set_abort(g->s, &r->j->cancel);
    /* From a reused prefix: one-token chunks where a cold run has them only (gen.h). */
    int rc = nf_stream_slot_eval_rest(g->s, r->slot, toks + skip, n - skip);
    if (!prompt)
        nf_stream_set_abort(g->s, NULL);
    const uint64_t dt = nf_now_ns() - t0;
    if (rc == 0) {
        atomic_fetch_add(prompt ? &c->c_prompt_tokens : &c->c_decode_tokens, (uint64_t)(n - skip));
        atomic_fetch_add(prompt ? &c->c_prompt_ns : &c->c_decode_ns, dt);
    }
    if (prompt)
        prefix_keep(r, toks, n, rc);
    nf_gen_flush_counters(g);
    return rc;
}

/* A verification pass of speculative decoding: counted as decode work; the positions a
 * rollback drops are taken back out of the token count (job_rollback). */
static int job_eval_rows(void *ud, const int32_t *toks, int n, float *logits)
{
    struct nf_gen_run *r = ud;
    struct nf_gen *g = r->g;
    struct nf_stack_counters *c = g->st->ctr;
    const uint64_t t0 = nf_now_ns();
    g->step = atomic_fetch_add(&c->c_step, 1) + 1;
    nf_stream_set_abort(g->s, &r->j->cancel);
    int rc = nf_stream_slot_eval_rows(g->s, r->slot, toks, n, logits);
    nf_stream_set_abort(g->s, NULL);
    if (rc == 0) {
        atomic_fetch_add(&c->c_decode_tokens, (uint64_t)n);
        atomic_fetch_add(&c->c_decode_ns, nf_now_ns() - t0);
    }
    nf_gen_flush_counters(g);
    return rc;
}

static int job_rollback(void *ud, int n_past)
{
    struct nf_gen_run *r = ud;
    struct nf_gen *g = r->g;
    const int dropped = nf_stream_slot_n_past(g->s, r->slot) - n_past;
    int rc = nf_stream_slot_rollback(g->s, r->slot, n_past);
    if (rc == 0 && dropped > 0)
        atomic_fetch_sub(&g->st->ctr->c_decode_tokens, (uint64_t)dropped);
    return rc;
}

static const float *job_logits(void *ud)
{
    const struct nf_gen_run *r = ud;
    return nf_stream_slot_logits(r->g->s, r->slot);
}

static int job_n_past(void *ud)
{
    const struct nf_gen_run *r = ud;
    return nf_stream_slot_n_past(r->g->s, r->slot);
}

/* Before the prompt: the slot forgets its sequence, except the kept prefix r reuses. */
static void job_reset(void *ud)
{
    struct nf_gen_run *r = ud;
    if (r->reuse > 0 && nf_stream_slot_rollback(r->g->s, r->slot, r->reuse) == 0)
        return;
    r->reuse = 0;
    nf_stream_slot_reset(r->g->s, r->slot);
}

void nf_gen_run_batch(struct nf_gen *g, struct nf_gen_run *const *rs, int n)
{
    struct nf_gen_run *list[NF_MAX_BATCH];
    int idx[NF_MAX_BATCH], m = 0;
    int32_t toks[NF_MAX_BATCH];
    for (int i = 0; i < n; i++)
        if (rs[i]->pending) {
            NF_ASSERT(m < NF_MAX_BATCH); /* at most `parallel` runs, one token each */
            list[m] = rs[i];
            idx[m] = rs[i]->slot;
            toks[m++] = rs[i]->tok;
        }
    if (m == 0)
        return;
    struct nf_stack_counters *c = g->st->ctr;
    const uint64_t t0 = nf_now_ns();
    g->step = atomic_fetch_add(&c->c_step, 1) + 1;
    /* One sequence's cancel ends it before its next step (the driver checks its flag); only a
     * shutdown stops a step that serves the others too. */
    nf_stream_set_abort(g->s, &g->shutdown);
    const int rc = nf_stream_step(g->s, idx, toks, m);
    nf_stream_set_abort(g->s, NULL);
    const uint64_t dt = nf_now_ns() - t0;
    if (rc == 0) {
        atomic_fetch_add(&c->c_decode_tokens, (uint64_t)m);
        atomic_fetch_add(&c->c_decode_ns, dt);
    }
    if (rc == 0 && m >= 2) {
        pthread_mutex_lock(&g->mu);
        g->n_shared_steps++;
        g->n_shared_rows += (uint64_t)m;
        pthread_mutex_unlock(&g->mu);
    }
    nf_gen_flush_counters(g);
    for (int i = 0; i < m; i++) {
        list[i]->pending = false;
        if (rc < 0)
            nf_gen_seq_eval_failed(&list[i]->q, rc, list[i]->tok);
    }
}

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
    struct nf_gen_run *r = ud;
    const uint64_t now = nf_now_ns();
    if (done >= total || now - r->last_frame_ns < r->progress_ns)
        return;
    r->last_frame_ns = now;
    if (nf_gen_send_progress(r->g, r->j, done, total) < 0)
        atomic_store(&r->j->cancel, 1); /* the client is gone */
}

static int job_on_token(void *ud, const struct nf_gen_token *t)
{
    struct nf_gen_run *r = ud;
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

int nf_gen_run_begin(struct nf_gen *g, struct nf_gen_run *r, struct nf_gen_job *j, int slot,
                     double wait_s, char *err, size_t errlen)
{
    *r = (struct nf_gen_run){.g = g, .j = j, .slot = slot, .wait_s = wait_s};
    r->e = (struct nf_gen_engine){.eval = job_eval,
                                  .logits = job_logits,
                                  .n_past = job_n_past,
                                  .reset = job_reset,
                                  .ud = r,
                                  .n_ctx = nf_stream_n_ctx(g->s),
                                  .n_vocab = nf_stream_hparams(g->s)->n_vocab,
                                  .eval_rows = job_eval_rows,
                                  .rollback = job_rollback};
    r->spec = j->lookup || j->draft;
    r->lk = (struct nf_gen_lookup){.ngram_min = 1, .ngram_max = 3};
    nf_gen_draft_lookup(&r->draft, &r->lk);
    if (j->draft) {
        /* The draft model's context and state: made once, on this (the worker) thread, and
         * shared by the runs that draft with it (g->dm). */
        int rc = 0;
        if (!g->dctx) {
            rc = nf_ctx_create(&g->dctx, g->dmodel, nf_stream_n_ctx(g->s), g->n_threads);
            if (rc == 0 &&
                (rc = nf_gen_draft_model_init(&r->draft, &g->dm, g->dctx, g->dvocab)) < 0) {
                nf_gen_draft_model_free(&g->dm);
                nf_ctx_free(g->dctx);
                g->dctx = NULL;
            }
        }
        if (rc < 0)
            return nf_errf(err, errlen, rc, "creating the draft model's context: %s",
                           nf_strerror(rc));
        r->draft = (struct nf_gen_draft){.draft = nf_gen_draft_model_run, .ud = &g->dm};
    }
    const struct nf_gen_params p = {.max_tokens = j->n_predict,
                                    .top_logits = j->top_logits,
                                    .sp = j->sp,
                                    .cancel = &j->cancel,
                                    .on_token = job_on_token,
                                    .ud = r,
                                    .logprobs = j->logprobs,
                                    .draft = r->spec ? &r->draft : NULL};
    /* Tokenize as `run` does: BOS as the vocabulary says, special tokens parsed (admit did it
     * to choose the slot; again here only to say why it failed). */
    int n = j->n_ids;
    r->ids = j->ids;
    j->ids = NULL;
    if (!r->ids)
        n = nf_gen_tokenize(g->v, j->prompt, j->prompt_len, true, &r->ids, err, errlen);
    if (n > 0) {
        r->reuse = nf_gen_prefix_len(g, slot, r->ids, n, &r->common);
        nf_gen_store_prepare(r, n);
    }
    if (n < 0 || (n = nf_gen_seq_init(&r->q, &r->e, g->v, r->ids, n, &p, err, errlen)) < 0) {
        if (n == NF_ECTXFULL) { /* as `run` says it: what bounds the context */
            const size_t l = strlen(err);
            snprintf(err + l, l < errlen ? errlen - l : 0,
                     " (the stack's n_ctx, set by 'up -c' up to the model's trained length %d)",
                     nf_stream_hparams(g->s)->n_ctx_train);
        }
        nf_gen_seq_free(&r->q);
        free(r->ids);
        r->ids = NULL;
        return n;
    }
    r->last_frame_ns = nf_now_ns();
    r->progress_ns = progress_interval_ns();
    return 0;
}

int nf_gen_run_step(struct nf_gen_run *r)
{
    if (r->q.prompt_done)
        return nf_gen_seq_step(&r->q);
    /* The prompt, alone: the job's cancel stops it between layers, progress frames keep the
     * client's timeout away during a long one. */
    struct nf_gen *g = r->g;
    nf_stream_set_abort(g->s, &r->j->cancel);
    nf_stream_set_progress(g->s, job_on_progress, r);
    const int more = nf_gen_seq_step(&r->q);
    nf_stream_set_abort(g->s, NULL);
    nf_stream_set_progress(g->s, NULL, NULL);
    return more;
}

void nf_gen_run_end(struct nf_gen *g, struct nf_gen_run *r)
{
    const struct nf_gen_seq *q = &r->q;
    const struct nf_gen_job *j = r->j;
    r->j->drafted = q->n_drafted;
    r->j->accepted = q->n_accepted;
    pthread_mutex_lock(&g->mu);
    g->n_drafted += (uint64_t)q->n_drafted;
    g->n_accepted += (uint64_t)q->n_accepted;
    pthread_mutex_unlock(&g->mu);
    if (q->stop == NF_GEN_STOP_ERROR) {
        job_failed(g, j, q);
    } else if (r->gone) {
        nf_log(NF_LOG_INFO, "request %llu: client gone, generation stopped",
               (unsigned long long)j->req_id);
    } else {
        const char *stop = nf_gen_stop_name(q->stop);
        nf_gen_send_done(g, j, q->ids, q->n_prompt, q->n_gen, stop,
                         (double)(q->t_prompt_ns - q->t_start_ns) * 1e-9,
                         (double)(q->t_end_ns - q->t_prompt_ns) * 1e-9, r->wait_s);
        nf_log(NF_LOG_INFO,
               "request %llu: %d prompt + %d generated tokens, stop %s, %.3f s in the queue",
               (unsigned long long)j->req_id, q->n_prompt, q->n_gen, stop, r->wait_s);
    }
    nf_gen_seq_free(&r->q);
    free(r->ids);
    r->ids = NULL;
}
