/* gen.c - nanoflow-compute's generation worker (see gen.h). */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "gen.h"
#include "nf_err.h"
#include "nf_time.h"

/* --- tile source over the shared pool -------------------------------------------------------- */

static const uint8_t *shm_pin(void *ud, uint32_t id, int *rc)
{
    struct nf_gen *g = ud;
    return nf_tile_pin_wait(g->st, id, g->step, NF_GEN_PIN_TIMEOUT_MS, rc);
}

static void shm_want(void *ud, uint32_t id, bool flush)
{
    struct nf_gen *g = ud;
    nf_tile_request(g->st, id, flush);
}

static void shm_unpin(void *ud, uint32_t id)
{
    struct nf_gen *g = ud;
    nf_tile_unpin(g->st, id);
}

/* Publishes the residual stream after `layer` (seqlock: odd while writing), then rings act_bell
 * for the predictor. */
static void shm_layer_done(void *ud, uint32_t layer, const float *x, int n_embd)
{
    struct nf_gen *g = ud;
    if (layer >= g->st->cfg->n_layer)
        return;
    nf_act_slot_publish(nf_stack_act(g->st, layer), g->step, layer, x, (uint32_t)n_embd);
    nf_notify_wake(&g->st->sync->act_bell);
}

/* Publishes the groups or experts layer used (same seqlock discipline). */
static void shm_used(void *ud, uint32_t layer, const uint64_t *bits, uint32_t n_groups)
{
    struct nf_gen *g = ud;
    const struct nf_stack_config *cfg = g->st->cfg;
    if (layer >= cfg->n_layer)
        return;
    const size_t words = (n_groups + 63) / 64;
    if (sizeof(struct nf_used_slot) + words * sizeof(uint64_t) > cfg->used_stride)
        return;
    nf_used_slot_publish(nf_stack_used(g->st, layer), g->step, layer, bits, n_groups);
}

/* Adds what the engine did since the last call to the shared compute counters. */
static void flush_counters(struct nf_gen *g)
{
    struct nf_stream_stats s;
    nf_stream_get_stats(g->s, &s);
    struct nf_stack_counters *c = g->st->ctr;
    atomic_fetch_add(&c->c_tiles_used, s.tiles_pinned - g->last.tiles_pinned);
    atomic_fetch_add(&c->c_tile_bytes_used, s.tile_bytes - g->last.tile_bytes);
    atomic_fetch_add(&c->c_groups_total, s.groups_total - g->last.groups_total);
    atomic_fetch_add(&c->c_groups_skipped, s.groups_skipped - g->last.groups_skipped);
    g->last = s;
}

/* --- one generation ----------------------------------------------------------------------------
 */

static int send_error(struct nf_gen *g, const struct nf_gen_job *j, int code, const char *msg)
{
    nf_log(NF_LOG_WARN, "request %llu: %s", (unsigned long long)j->req_id, msg);
    return nf_server_send_error(g->srv, j->conn_id, j->req_id, code, "%s", msg);
}

/* The k highest logits (k small), in decreasing order, as `run` selects them. */
static int top_logits(const float *logits, int nv, int k, int32_t *ids, float *vals)
{
    int nk = 0;
    for (int i = 0; i < nv && k > 0; i++) {
        int pos = nk < k ? nk++ : k;
        if (pos == k && !(logits[i] > logits[ids[k - 1]]))
            continue;
        if (pos == k)
            pos = k - 1;
        while (pos > 0 && logits[i] > logits[ids[pos - 1]]) {
            ids[pos] = ids[pos - 1];
            pos--;
        }
        ids[pos] = i;
    }
    for (int i = 0; i < nk; i++)
        vals[i] = logits[ids[i]];
    return nk;
}

static int send_token(struct nf_gen *g, const struct nf_gen_job *j, int32_t tok, const char *piece,
                      int plen)
{
    int32_t ids[NF_GEN_MAX_TOP_LOGITS] = {0};
    float vals[NF_GEN_MAX_TOP_LOGITS];
    Nanoflow__TopLogit tl[NF_GEN_MAX_TOP_LOGITS], *tlp[NF_GEN_MAX_TOP_LOGITS];
    const int nk = top_logits(nf_stream_logits(g->s), nf_stream_hparams(g->s)->n_vocab,
                              j->top_logits, ids, vals);
    for (int i = 0; i < nk; i++) {
        nanoflow__top_logit__init(&tl[i]);
        tl[i].id = ids[i];
        tl[i].logit = vals[i];
        tlp[i] = &tl[i];
    }
    Nanoflow__TokenEvent ev;
    nanoflow__token_event__init(&ev);
    ev.id = tok;
    ev.piece.data = (uint8_t *)piece;
    ev.piece.len = (size_t)plen;
    ev.n_top_logits = (size_t)nk;
    ev.top_logits = nk ? tlp : NULL;
    nf_envelope env;
    nanoflow__envelope__init(&env);
    env.msg_case = NANOFLOW__ENVELOPE__MSG_TOKEN;
    env.token = &ev;
    return nf_server_send(g->srv, j->conn_id, j->req_id, &env);
}

static int send_done(struct nf_gen *g, const struct nf_gen_job *j, const int32_t *ids, int n_prompt,
                     int n_gen, const char *stop, double prompt_s, double decode_s)
{
    Nanoflow__Timings tm;
    nanoflow__timings__init(&tm);
    tm.prompt_s = prompt_s;
    tm.decode_s = decode_s;
    tm.prompt_tok_s = n_prompt / (prompt_s > 0 ? prompt_s : 1e-9);
    tm.decode_tok_s = (n_gen > 1 ? n_gen - 1 : 0) / (decode_s > 0 ? decode_s : 1e-9);
    Nanoflow__GenerateDone d;
    nanoflow__generate_done__init(&d);
    d.n_prompt_ids = (size_t)n_prompt;
    d.prompt_ids = (int32_t *)ids;
    d.n_gen_ids = (size_t)n_gen;
    d.gen_ids = (int32_t *)ids + n_prompt;
    d.stop = (char *)stop;
    d.seed = j->sp.seed;
    d.timings = &tm;
    nf_envelope env;
    nanoflow__envelope__init(&env);
    env.msg_case = NANOFLOW__ENVELOPE__MSG_GENERATE_DONE;
    env.generate_done = &d;
    return nf_server_send(g->srv, j->conn_id, j->req_id, &env);
}

/* Evaluates n tokens, keeping the shared counters and the step up to date. */
static int eval(struct nf_gen *g, const int32_t *toks, int n, bool prompt)
{
    struct nf_stack_counters *c = g->st->ctr;
    const uint64_t t0 = nf_now_ns();
    g->step = atomic_fetch_add(&c->c_step, 1) + 1;
    int rc = nf_stream_eval(g->s, toks, n);
    const uint64_t dt = nf_now_ns() - t0;
    if (rc == 0) {
        atomic_fetch_add(prompt ? &c->c_prompt_tokens : &c->c_decode_tokens, (uint64_t)n);
        atomic_fetch_add(prompt ? &c->c_prompt_ns : &c->c_decode_ns, dt);
    }
    flush_counters(g);
    return rc;
}

/* Reports a failed eval: cancellation ends the generation normally, anything else is an Error. */
static const char *eval_failed(struct nf_gen *g, const struct nf_gen_job *j, int rc)
{
    if (rc == -ECANCELED && atomic_load(&j->cancel))
        return "cancel";
    char msg[600];
    if (rc == -ECANCELED)
        snprintf(msg, sizeof(msg), "compute is shutting down");
    else
        snprintf(msg, sizeof(msg), "generation aborted: %s",
                 nf_stream_error(g->s)[0] ? nf_stream_error(g->s) : nf_strerror(rc));
    send_error(g, j, rc, msg);
    return NULL;
}

/* Runs job j to its end: TokenEvents, then GenerateDone or an Error. Allocates per request
 * (tokens, sampler); the evaluation itself does not. */
static void generate(struct nf_gen *g, struct nf_gen_job *j)
{
    const struct nf_vocab *v = g->v;
    struct nf_sampler *smp = NULL;
    int32_t *ids = NULL;
    char *piece = NULL;
    const int n_ctx = nf_stream_n_ctx(g->s);
    int piece_cap = 256;
    piece = malloc((size_t)piece_cap);
    if (!piece) {
        send_error(g, j, -ENOMEM, "out of memory for the request");
        goto done;
    }
    /* Tokenize as `run` does: BOS as the vocabulary says, special tokens parsed. */
    int n_prompt = nf_tokenize_alloc(v, j->prompt, j->prompt_len, nf_vocab_add_bos(v) || j->add_bos,
                                     true, (size_t)j->n_predict + 1, &ids);
    if (n_prompt < 0) {
        send_error(g, j, n_prompt,
                   n_prompt == -ENOMEM ? "out of memory for the request"
                                       : "tokenizing the prompt failed");
        goto done;
    }
    if (n_prompt == 0) {
        if (nf_vocab_bos(v) < 0) {
            send_error(g, j, NF_EUSAGE, "empty prompt and the vocabulary has no BOS token");
            goto done;
        }
        ids[n_prompt++] = nf_vocab_bos(v);
    }
    char msg[256];
    if (n_prompt + 1 > n_ctx) {
        snprintf(msg, sizeof(msg), "the prompt has %d tokens but the context holds %d", n_prompt,
                 n_ctx);
        send_error(g, j, NF_ECTXFULL, msg);
        goto done;
    }
    int rc = nf_sampler_create(&smp, &j->sp, nf_stream_hparams(g->s)->n_vocab);
    if (rc < 0) {
        snprintf(msg, sizeof(msg), "invalid sampling parameters: %s", nf_strerror(rc));
        send_error(g, j, rc, msg);
        goto done;
    }
    for (int i = 0; i < n_prompt; i++)
        nf_sampler_accept(smp, ids[i]);
    nf_stream_reset(g->s);
    nf_stream_set_abort(g->s, &j->cancel);
    const uint64_t t0 = nf_now_ns();
    const char *stop = NULL;
    if ((rc = eval(g, ids, n_prompt, true)) < 0) {
        stop = eval_failed(g, j, rc);
        if (!stop)
            goto done;
        send_done(g, j, ids, n_prompt, 0, stop, (double)(nf_now_ns() - t0) * 1e-9, 0);
        goto done;
    }
    const uint64_t t1 = nf_now_ns();
    int n_gen = 0;
    stop = "length";
    for (;;) {
        if (atomic_load(&j->cancel)) {
            stop = "cancel";
            break;
        }
        int32_t tok = nf_sampler_sample(smp, nf_stream_logits(g->s));
        ids[n_prompt + n_gen++] = tok;
        nf_sampler_accept(smp, tok);
        int pl = nf_token_to_piece(v, tok, piece, piece_cap);
        if (pl > piece_cap) {
            char *np = realloc(piece, (size_t)pl);
            if (!np) {
                send_error(g, j, -ENOMEM, "out of memory for a token piece");
                goto done;
            }
            piece = np;
            piece_cap = pl;
            pl = nf_token_to_piece(v, tok, piece, piece_cap);
        }
        if (pl < 0) {
            snprintf(msg, sizeof(msg), "token %d has no piece: %s", tok, nf_strerror(pl));
            send_error(g, j, pl, msg);
            goto done;
        }
        if (send_token(g, j, tok, piece, pl) < 0) {
            /* The client is gone: nobody to finish for. */
            nf_log(NF_LOG_INFO, "request %llu: client gone, generation stopped",
                   (unsigned long long)j->req_id);
            goto done;
        }
        if (nf_vocab_is_eog(v, tok)) {
            stop = "eog";
            break;
        }
        if (n_gen >= j->n_predict)
            break;
        if (nf_stream_n_past(g->s) >= n_ctx) {
            stop = "ctx";
            break;
        }
        if ((rc = eval(g, &tok, 1, false)) < 0) {
            stop = eval_failed(g, j, rc);
            if (!stop)
                goto done;
            break;
        }
    }
    const uint64_t t2 = nf_now_ns();
    send_done(g, j, ids, n_prompt, n_gen, stop, (double)(t1 - t0) * 1e-9, (double)(t2 - t1) * 1e-9);
    nf_log(NF_LOG_INFO, "request %llu: %d prompt + %d generated tokens, stop %s",
           (unsigned long long)j->req_id, n_prompt, n_gen, stop);
done:
    nf_stream_set_abort(g->s, NULL);
    nf_sampler_free(smp);
    free(ids);
    free(piece);
}

/* --- the worker and its queue --------------------------------------------------------------------
 */

static void job_free(struct nf_gen_job *j)
{
    if (!j)
        return;
    free(j->prompt);
    free(j);
}

static void *worker(void *arg)
{
    struct nf_gen *g = arg;
    struct nf_tile_src src = {.pin = shm_pin,
                              .unpin = shm_unpin,
                              .layer_done = shm_layer_done,
                              .used = shm_used,
                              .want = shm_want,
                              .ud = g};
    struct nf_stream_opts o = {
        .n_ctx = g->n_ctx, .n_threads = g->n_threads, .sparsity = g->sparsity};
    int rc = nf_stream_create(&g->s, g->f, &src, &o, g->init_err, sizeof(g->init_err));
    pthread_mutex_lock(&g->mu);
    g->init_rc = rc;
    g->init_done = true;
    pthread_cond_broadcast(&g->cv);
    pthread_mutex_unlock(&g->mu);
    if (rc < 0)
        return NULL;
    for (;;) {
        pthread_mutex_lock(&g->mu);
        while (!g->stop && !g->head)
            pthread_cond_wait(&g->cv, &g->mu);
        if (g->stop) {
            pthread_mutex_unlock(&g->mu);
            break;
        }
        struct nf_gen_job *j = g->head;
        g->head = j->next;
        if (!g->head)
            g->tail = NULL;
        g->cur = j;
        pthread_mutex_unlock(&g->mu);
        if (atomic_load(&j->cancel))
            send_done(g, j, NULL, 0, 0, "cancel", 0, 0);
        else
            generate(g, j);
        pthread_mutex_lock(&g->mu);
        g->cur = NULL;
        pthread_mutex_unlock(&g->mu);
        job_free(j);
    }
    return NULL;
}

int nf_gen_start(struct nf_gen *g, char *err, size_t errlen)
{
    pthread_mutex_init(&g->mu, NULL);
    pthread_cond_init(&g->cv, NULL);
    int rc = pthread_create(&g->thread, NULL, worker, g);
    if (rc) {
        snprintf(err, errlen, "cannot start the generation thread: %s", strerror(rc));
        return -rc;
    }
    g->started = true;
    pthread_mutex_lock(&g->mu);
    while (!g->init_done)
        pthread_cond_wait(&g->cv, &g->mu);
    rc = g->init_rc;
    pthread_mutex_unlock(&g->mu);
    if (rc < 0) {
        snprintf(err, errlen, "%s", g->init_err);
        pthread_join(g->thread, NULL);
        g->started = false;
    }
    return rc;
}

void nf_gen_stop(struct nf_gen *g)
{
    if (!g->started)
        return;
    pthread_mutex_lock(&g->mu);
    g->stop = true;
    if (g->cur)
        atomic_store(&g->cur->cancel, 1);
    pthread_cond_broadcast(&g->cv);
    pthread_mutex_unlock(&g->mu);
    pthread_join(g->thread, NULL);
    g->started = false;
    while (g->head) {
        struct nf_gen_job *j = g->head;
        g->head = j->next;
        job_free(j);
    }
    g->tail = NULL;
    nf_stream_free(g->s);
    g->s = NULL;
}

int nf_gen_submit(struct nf_gen *g, uint64_t conn_id, uint64_t req_id, const Nanoflow__Generate *m)
{
    struct nf_gen_job *j = calloc(1, sizeof(*j));
    if (!j)
        return -ENOMEM;
    j->conn_id = conn_id;
    j->req_id = req_id;
    j->prompt_len = m->prompt.len;
    j->prompt = malloc(m->prompt.len + 1);
    if (!j->prompt) {
        free(j);
        return -ENOMEM;
    }
    if (m->prompt.len)
        memcpy(j->prompt, m->prompt.data, m->prompt.len);
    j->prompt[m->prompt.len] = 0;
    nf_sampler_params_default(&j->sp);
    if (m->sampling) {
        const Nanoflow__SamplingParams *p = m->sampling;
        j->sp = (struct nf_sampler_params){.temp = p->temp,
                                           .top_k = p->top_k,
                                           .top_p = p->top_p,
                                           .min_p = p->min_p,
                                           .repeat_penalty = p->repeat_penalty,
                                           .repeat_last_n = p->repeat_last_n,
                                           .seed = p->seed};
    }
    j->n_predict = m->n_predict > 0 ? m->n_predict : NF_GEN_DEFAULT_N;
    j->top_logits =
        m->top_logits > NF_GEN_MAX_TOP_LOGITS ? NF_GEN_MAX_TOP_LOGITS : (int)m->top_logits;
    j->add_bos = m->add_bos;
    atomic_init(&j->cancel, 0);
    pthread_mutex_lock(&g->mu);
    if (g->tail)
        g->tail->next = j;
    else
        g->head = j;
    g->tail = j;
    pthread_cond_broadcast(&g->cv);
    pthread_mutex_unlock(&g->mu);
    return 0;
}

bool nf_gen_cancel(struct nf_gen *g, uint64_t conn_id, uint64_t target_id)
{
    bool found = false;
    pthread_mutex_lock(&g->mu);
    for (int pass = 0; pass < 2 && !found; pass++) {
        if (g->cur && g->cur->req_id == target_id && (pass || g->cur->conn_id == conn_id)) {
            atomic_store(&g->cur->cancel, 1);
            found = true;
        }
        for (struct nf_gen_job *j = g->head; j && !found; j = j->next)
            if (j->req_id == target_id && (pass || j->conn_id == conn_id)) {
                atomic_store(&j->cancel, 1);
                found = true;
            }
    }
    pthread_mutex_unlock(&g->mu);
    return found;
}

void nf_gen_conn_closed(struct nf_gen *g, uint64_t conn_id)
{
    pthread_mutex_lock(&g->mu);
    if (g->cur && g->cur->conn_id == conn_id)
        atomic_store(&g->cur->cancel, 1);
    for (struct nf_gen_job *j = g->head; j; j = j->next)
        if (j->conn_id == conn_id)
            atomic_store(&j->cancel, 1);
    pthread_mutex_unlock(&g->mu);
}

uint64_t nf_gen_engine_bytes(const struct nf_gen *g)
{
    return g->s ? nf_stream_mem_bytes(g->s) : 0;
}
