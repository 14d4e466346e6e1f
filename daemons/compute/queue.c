/* queue.c - nanoflow-compute's job queue: Generate requests checked and queued by the loop
 * thread, run one at a time by the worker thread that owns the engine (see gen.h). */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "gen.h"
#include "nf_err.h"

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
    struct nf_tile_src src;
    nf_gen_tile_src(g, &src);
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
            nf_gen_send_done(g, j, NULL, 0, 0, "cancel", 0, 0);
        else
            nf_gen_run_job(g, j);
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

/* Checks every field of Generate request m against its range (add_bos is ignored: BOS follows
 * the vocabulary, as in `run`) and
 * fills j's copy of the parameters. Returns 0, or NF_EUSAGE with err naming the field. */
static int job_check(const Nanoflow__Generate *m, struct nf_gen_job *j, char *err, size_t errlen)
{
    if (m->prompt.len > NF_GEN_MAX_PROMPT_BYTES)
        return nf_errf(err, errlen, NF_EUSAGE, "Generate.prompt has %zu bytes, expected at most %d",
                       m->prompt.len, NF_GEN_MAX_PROMPT_BYTES);
    if (m->n_predict < 0 || m->n_predict > NF_GEN_MAX_N_PREDICT)
        return nf_errf(err, errlen, NF_EUSAGE,
                       "Generate.n_predict %d is out of range, expected 0..%d (0: %d)",
                       m->n_predict, NF_GEN_MAX_N_PREDICT, NF_GEN_DEFAULT_N);
    if (m->top_logits > NF_GEN_TOP_LOGITS_MAX)
        return nf_errf(err, errlen, NF_EUSAGE,
                       "Generate.top_logits %u is out of range, expected 0..%d", m->top_logits,
                       NF_GEN_TOP_LOGITS_MAX);
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
        char why[200];
        if (nf_sampler_params_check(&j->sp, why, sizeof(why)) < 0)
            return nf_errf(err, errlen, NF_EUSAGE, "Generate.sampling: %s", why);
    }
    /* What n_predict reserves is bounded by the context, not by its value: the driver stops at
     * a full context ("ctx") and sizes its ids for what fits. */
    j->n_predict = m->n_predict > 0 ? m->n_predict : NF_GEN_DEFAULT_N;
    j->top_logits = (int)m->top_logits;
    return 0;
}

int nf_gen_submit(struct nf_gen *g, uint64_t conn_id, uint64_t req_id, const Nanoflow__Generate *m)
{
    struct nf_gen_job *j = calloc(1, sizeof(*j));
    if (!j)
        return -ENOMEM;
    j->conn_id = conn_id;
    j->req_id = req_id;
    char err[300];
    if (job_check(m, j, err, sizeof(err)) < 0) {
        nf_gen_send_error(g, j, NF_EUSAGE, err);
        free(j);
        return 0;
    }
    j->prompt_len = m->prompt.len;
    j->prompt = malloc(m->prompt.len + 1);
    if (!j->prompt) {
        free(j);
        return -ENOMEM;
    }
    if (m->prompt.len)
        memcpy(j->prompt, m->prompt.data, m->prompt.len);
    j->prompt[m->prompt.len] = 0;
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
