/* queue.c - nanoflow-compute's job queue: Generate requests checked, clamped to the per-request
 * token limit and queued by the loop thread, run up to `parallel` at once by the worker thread
 * that owns the engine, joining and leaving the batch between steps (see gen.h); Cancel by
 * (connection, request id); the queue's Stats counters. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "gen.h"
#include "kv_file.h"
#include "kv_quant.h"
#include "nf_err.h"
#include "nf_time.h"

static void job_free(struct nf_gen_job *j)
{
    if (!j)
        return;
    free(j->prompt);
    free(j->ids);
    free(j);
}

/* Worker: frees slot i's entry of the running table. Called before the job's last frame
 * (GenerateDone or Error) is sent, never after: a client that has its reply and then asks for
 * Stats must not see its sequence still `active` (the stats check of test_batch_*, which a
 * worker preempted between the reply and the release would fail). Out of the table the job can
 * no longer be cancelled, which nothing needs: it has stopped. */
static void slot_release(struct nf_gen *g, int i)
{
    pthread_mutex_lock(&g->mu);
    g->running[i] = NULL;
    g->n_running--;
    pthread_mutex_unlock(&g->mu);
}

/* Worker, under mu: the free slot for job j, or -1 when none is free. Without prefix reuse the
 * first free one. With it, the one whose kept prefix saves j the most prompt tokens (gen.h);
 * when none saves any, the one whose kept prefix was used least recently, so that the
 * prefixes of recent sequences stay for their next turn. */
static int pick_slot(struct nf_gen *g, const struct nf_gen_job *j)
{
    int best = -1, best_len = 0;
    for (int i = 0; i < g->parallel; i++) {
        if (g->running[i])
            continue;
        if (g->prefix_off || !g->kept)
            return i;
        const int l = j->ids ? nf_gen_prefix_len(g, i, j->ids, j->n_ids, NULL) : 0;
        if (best < 0 || l > best_len ||
            (l == best_len && l == 0 && g->kept[i].used < g->kept[best].used)) {
            best = i;
            best_len = l;
        }
    }
    return best;
}

/* Worker: moves queued jobs to free slots, oldest first, waiting while there is nothing to do.
 * Fills fresh[] with the slots taken (their wait in wait_s[]); returns their count, or -1 when
 * the worker is to stop. */
static int admit(struct nf_gen *g, int *fresh, double *wait_s)
{
    int n = 0;
    pthread_mutex_lock(&g->mu);
    while (!g->stop && !g->head && g->n_running == 0)
        pthread_cond_wait(&g->cv, &g->mu);
    if (g->stop) {
        pthread_mutex_unlock(&g->mu);
        return -1;
    }
    while (g->head && g->n_running < g->parallel) {
        struct nf_gen_job *j = g->head;
        if (!g->prefix_off && !j->ids) {
            /* Its tokens choose its slot. Tokenized outside the lock: only this thread takes
             * jobs off the queue, so j stays at its head. */
            pthread_mutex_unlock(&g->mu);
            nf_gen_job_tokens(g, j);
            pthread_mutex_lock(&g->mu);
        }
        const int i = pick_slot(g, j);
        NF_ASSERT(i >= 0); /* n_running < parallel */
        g->head = j->next;
        if (!g->head)
            g->tail = NULL;
        g->n_queued--;
        g->running[i] = j;
        g->n_running++;
        const uint64_t wait_ns = nf_now_ns() - j->t_queued_ns;
        g->n_started++;
        g->wait_ns += wait_ns;
        wait_s[n] = (double)wait_ns * 1e-9;
        fresh[n++] = i;
    }
    pthread_mutex_unlock(&g->mu);
    return n;
}

/* Worker: each slot's kept-prefix record, n_ctx token ids (prefix reuse keeps the KV cells in
 * the slots themselves: nothing else is allocated for it). 0 or -ENOMEM with init_err set. */
static int kept_alloc(struct nf_gen *g)
{
    const int n_ctx = nf_stream_n_ctx(g->s);
    g->kept = calloc((size_t)g->parallel, sizeof(*g->kept));
    for (int i = 0; g->kept && i < g->parallel; i++)
        if (!(g->kept[i].ids = malloc(sizeof(int32_t) * (size_t)n_ctx)))
            return nf_errf(g->init_err, sizeof(g->init_err), -ENOMEM,
                           "out of memory for the kept prefixes' token ids");
    return g->kept ? 0 : nf_errf(g->init_err, sizeof(g->init_err), -ENOMEM, "out of memory");
}

static void kept_free(struct nf_gen *g)
{
    for (int i = 0; g->kept && i < g->parallel; i++)
        free(g->kept[i].ids);
    free(g->kept);
    g->kept = NULL;
}

static void *worker(void *arg)
{
    struct nf_gen *g = arg;
    struct nf_tile_src src;
    nf_gen_tile_src(g, &src);
    struct nf_stream_opts o = {.n_ctx = g->n_ctx,
                               .n_threads = g->n_threads,
                               .n_threads_one = g->n_threads_one,
                               .sparsity = g->sparsity,
                               .n_ubatch = g->n_ubatch,
                               .n_seq = g->parallel,
                               .type_k = (enum nf_type)g->type_k,
                               .type_v = (enum nf_type)g->type_v,
                               .kv_path = g->kv_block ? g->kv_path : NULL,
                               .kv_block = g->kv_block};
    struct nf_gen_run *runs = calloc((size_t)g->parallel, sizeof(*runs));
    bool *live = calloc((size_t)g->parallel, sizeof(*live));
    int rc = !runs || !live
                 ? nf_errf(g->init_err, sizeof(g->init_err), -ENOMEM, "out of memory")
                 : nf_stream_create(&g->s, g->f, &src, &o, g->init_err, sizeof(g->init_err));
    if (rc == 0)
        rc = nf_stream_set_slots(g->s, g->parallel, g->init_err, sizeof(g->init_err));
    if (rc == 0 && !g->prefix_off)
        rc = kept_alloc(g);
    if (rc == 0)
        rc = nf_gen_store_open(g);
    pthread_mutex_lock(&g->mu);
    g->init_rc = rc;
    g->init_done = true;
    pthread_cond_broadcast(&g->cv);
    pthread_mutex_unlock(&g->mu);
    int fresh[NF_MAX_BATCH], n;
    double wait_s[NF_MAX_BATCH];
    struct nf_gen_run *batch[NF_MAX_BATCH];
    while (rc == 0 && (n = admit(g, fresh, wait_s)) >= 0) {
        /* Joining requests: each prompt evaluated alone on its slot. */
        for (int k = 0; k < n; k++) {
            const int i = fresh[k];
            struct nf_gen_job *j = g->running[i]; /* only the worker changes a slot's job */
            char err[512];
            const int brc = atomic_load(&j->cancel)
                                ? 1
                                : nf_gen_run_begin(g, &runs[i], j, i, wait_s[k], err, sizeof(err));
            if (brc == 0) {
                live[i] = true;
                nf_gen_run_step(&runs[i]);
                continue;
            }
            slot_release(g, i);
            if (brc > 0)
                nf_gen_send_done(g, j, NULL, 0, 0, "cancel", 0, 0, wait_s[k]);
            else
                nf_gen_send_error(g, j, brc, err);
            job_free(j);
        }
        /* One token of every running sequence: sampled and sent, then evaluated together. */
        int m = 0;
        for (int i = 0; i < g->parallel; i++)
            if (live[i] && nf_gen_run_step(&runs[i]))
                batch[m++] = &runs[i];
        nf_gen_run_batch(g, batch, m);
        /* Sequences that stopped leave. */
        for (int i = 0; i < g->parallel; i++) {
            if (!live[i] || runs[i].q.stop == NF_GEN_RUNNING)
                continue;
            struct nf_gen_job *j = runs[i].j;
            live[i] = false;
            slot_release(g, i);
            nf_gen_run_end(g, &runs[i]);
            job_free(j);
        }
    }
    /* Stopping: what still runs was cancelled by nf_gen_stop; its clients get their reply. */
    for (int i = 0; runs && live && i < g->parallel; i++) {
        if (!live[i])
            continue;
        while (nf_gen_run_step(&runs[i]))
            ;
        struct nf_gen_job *j = runs[i].j;
        slot_release(g, i);
        nf_gen_run_end(g, &runs[i]);
        job_free(j);
    }
    /* The kept prefixes outlive the daemon in the store (`down`). */
    if (rc == 0)
        nf_gen_store_flush(g);
    nf_gen_store_close(g);
    free(runs);
    free(live);
    return NULL;
}

int nf_gen_start(struct nf_gen *g, char *err, size_t errlen)
{
    if (g->parallel < 1)
        g->parallel = 1;
    if (g->parallel > NF_MAX_BATCH) {
        snprintf(err, errlen, "%d sequences at once, expected at most %d", g->parallel,
                 NF_MAX_BATCH);
        return NF_EUSAGE;
    }
    g->running = calloc((size_t)g->parallel, sizeof(*g->running));
    if (!g->running) {
        snprintf(err, errlen, "out of memory");
        return -ENOMEM;
    }
    atomic_init(&g->shutdown, 0);
    pthread_mutex_init(&g->mu, NULL);
    pthread_cond_init(&g->cv, NULL);
    int rc = pthread_create(&g->thread, NULL, worker, g);
    if (rc) {
        snprintf(err, errlen, "cannot start the generation thread: %s", strerror(rc));
        free(g->running);
        g->running = NULL;
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
        nf_stream_free(g->s); /* made before nf_stream_set_slots failed, or NULL */
        g->s = NULL;
        kept_free(g);
        free(g->running);
        g->running = NULL;
    }
    return rc;
}

void nf_gen_stop(struct nf_gen *g)
{
    if (!g->started)
        return;
    pthread_mutex_lock(&g->mu);
    g->stop = true;
    for (int i = 0; i < g->parallel; i++)
        if (g->running[i])
            atomic_store(&g->running[i]->cancel, 1);
    atomic_store(&g->shutdown, 1);
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
    g->n_queued = 0;
    nf_stream_free(g->s);
    g->s = NULL;
    kept_free(g);
    free(g->running);
    g->running = NULL;
    nf_gen_draft_model_free(&g->dm);
    nf_ctx_free(g->dctx);
    g->dctx = NULL;
}

/* Checks every field of Generate request m against its range (add_bos is ignored: BOS follows
 * the vocabulary, as in `run`) and fills j's copy of the parameters, n_predict clamped to
 * max_tokens. Returns 0, or NF_EUSAGE with err naming the field. */
static int job_check(const Nanoflow__Generate *m, int max_tokens, struct nf_gen_job *j, char *err,
                     size_t errlen)
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
    if (m->speculate < -1 || m->speculate > 2)
        return nf_errf(err, errlen, NF_EUSAGE,
                       "Generate.speculate %d is out of range, expected -1 (off), 0 (the "
                       "stack's default), 1 (prompt lookup) or 2 (the draft model)",
                       m->speculate);
    nf_sampler_params_default(&j->sp);
    if (m->sampling) {
        const Nanoflow__SamplingParams *p = m->sampling;
        j->sp = (struct nf_sampler_params){.temp = p->temp,
                                           .top_k = p->top_k,
                                           .top_p = p->top_p,
                                           .min_p = p->min_p,
                                           .repeat_penalty = p->repeat_penalty,
                                           .repeat_last_n = p->repeat_last_n,
                                           .seed = p->seed,
                                           .presence_penalty = p->presence_penalty,
                                           .frequency_penalty = p->frequency_penalty};
        char why[200];
        if (nf_sampler_params_check(&j->sp, why, sizeof(why)) < 0)
            return nf_errf(err, errlen, NF_EUSAGE, "Generate.sampling: %s", why);
    }
    /* What n_predict reserves is bounded by the context, not by its value: the driver stops at
     * a full context ("ctx") and sizes its ids for what fits. */
    j->n_asked = m->n_predict > 0 ? m->n_predict : NF_GEN_DEFAULT_N;
    j->n_predict = j->n_asked < max_tokens ? j->n_asked : max_tokens;
    j->top_logits = (int)m->top_logits;
    j->logprobs = m->logprobs;
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
    const int max_tokens = g->max_tokens > 0 ? g->max_tokens : NF_GEN_DEFAULT_MAX_TOKENS;
    if (job_check(m, max_tokens, j, err, sizeof(err)) < 0) {
        nf_gen_send_error(g, j, NF_EUSAGE, err);
        free(j);
        return 0;
    }
    if (m->speculate == 2 && !g->dmodel) {
        nf_gen_send_error(g, j, NF_EUSAGE,
                          "Generate.speculate 2 asks for the draft model, but the stack has "
                          "none (up --draft FILE)");
        free(j);
        return 0;
    }
    j->draft = m->speculate == 2 || (m->speculate == 0 && g->dmodel);
    j->lookup = m->speculate == 1 || (m->speculate == 0 && !g->dmodel && g->lookup);
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
    j->t_queued_ns = nf_now_ns();
    j->ahead = g->n_queued + (uint32_t)g->n_running;
    if (j->n_predict < j->n_asked)
        g->n_clamped++;
    if (g->tail)
        g->tail->next = j;
    else
        g->head = j;
    g->tail = j;
    g->n_queued++;
    pthread_cond_broadcast(&g->cv);
    pthread_mutex_unlock(&g->mu);
    return 0;
}

/* The job with request id req_id on conn_id, the running one included, or NULL (under mu). */
static struct nf_gen_job *job_find(struct nf_gen *g, uint64_t conn_id, uint64_t req_id)
{
    for (int i = 0; i < g->parallel; i++)
        if (g->running[i] && g->running[i]->conn_id == conn_id && g->running[i]->req_id == req_id)
            return g->running[i];
    for (struct nf_gen_job *j = g->head; j; j = j->next)
        if (j->conn_id == conn_id && j->req_id == req_id)
            return j;
    return NULL;
}

/* True when a connection other than conn_id has a job with request id req_id (under mu). */
static bool job_elsewhere(const struct nf_gen *g, uint64_t conn_id, uint64_t req_id)
{
    for (int i = 0; i < g->parallel; i++)
        if (g->running[i] && g->running[i]->conn_id != conn_id && g->running[i]->req_id == req_id)
            return true;
    for (const struct nf_gen_job *j = g->head; j; j = j->next)
        if (j->conn_id != conn_id && j->req_id == req_id)
            return true;
    return false;
}

bool nf_gen_cancel(struct nf_gen *g, uint64_t conn_id, uint64_t req_id, uint64_t target_id)
{
    /* Request ids are chosen by each client (every `gen` uses 1), so only the pair (connection,
     * request id) names a generation: a client may cancel only its own. */
    pthread_mutex_lock(&g->mu);
    struct nf_gen_job *j = job_find(g, conn_id, target_id);
    if (j)
        atomic_store(&j->cancel, 1);
    const bool foreign = !j && job_elsewhere(g, conn_id, target_id);
    pthread_mutex_unlock(&g->mu);
    if (foreign) {
        nf_log(NF_LOG_WARN, "connection %llu: Cancel of request %llu refused: not its request",
               (unsigned long long)conn_id, (unsigned long long)target_id);
        nf_server_send_error(g->srv, conn_id, req_id, -EPERM,
                             "Cancel.target_id %llu is not a request of this connection",
                             (unsigned long long)target_id);
    }
    return j != NULL;
}

void nf_gen_conn_closed(struct nf_gen *g, uint64_t conn_id)
{
    pthread_mutex_lock(&g->mu);
    for (int i = 0; i < g->parallel; i++)
        if (g->running[i] && g->running[i]->conn_id == conn_id)
            atomic_store(&g->running[i]->cancel, 1);
    for (struct nf_gen_job *j = g->head; j; j = j->next)
        if (j->conn_id == conn_id)
            atomic_store(&j->cancel, 1);
    pthread_mutex_unlock(&g->mu);
}

void nf_gen_cancel_running(struct nf_gen *g)
{
    pthread_mutex_lock(&g->mu);
    for (int i = 0; i < g->parallel; i++)
        if (g->running[i])
            atomic_store(&g->running[i]->cancel, 1);
    pthread_mutex_unlock(&g->mu);
}

void nf_gen_fail_all(struct nf_gen *g, struct nf_server *srv, const char *msg)
{
    pthread_mutex_lock(&g->mu);
    for (int i = 0; i < g->parallel; i++) {
        struct nf_gen_job *j = g->running[i];
        if (j) {
            nf_server_send_error(srv, j->conn_id, j->req_id, -EOWNERDEAD, "%s", msg);
            atomic_store(&j->cancel, 1);
        }
    }
    for (struct nf_gen_job *j = g->head; j; j = j->next) {
        nf_server_send_error(srv, j->conn_id, j->req_id, -EOWNERDEAD, "%s", msg);
        atomic_store(&j->cancel, 1);
    }
    pthread_mutex_unlock(&g->mu);
}

int nf_gen_stats_reply(struct nf_gen *g, struct nf_server *s, uint64_t conn_id, uint64_t req_id)
{
    struct nf_stats_msg m;
    int rc =
        nf_stats_fill(&m, NF_ROLE_COMPUTE, g->st->ctr, g->st->cfg->ram_budget, g->st->shm.size);
    if (rc < 0)
        return rc;
    pthread_mutex_lock(&g->mu);
    nf_stats_add(&m, "queue_len", g->n_queued);
    nf_stats_add(&m, "active", (uint64_t)g->n_running);
    nf_stats_add(&m, "parallel", (uint64_t)g->parallel);
    nf_stats_add(&m, "shared_steps", g->n_shared_steps);
    nf_stats_add(&m, "shared_rows", g->n_shared_rows);
    nf_stats_add(&m, "requests", g->n_started);
    nf_stats_add(&m, "queue_wait_ns", g->wait_ns);
    nf_stats_add(&m, "clamped", g->n_clamped);
    nf_stats_add(&m, "drafted", g->n_drafted);
    nf_stats_add(&m, "accepted", g->n_accepted);
    nf_stats_add(&m, "prefix_hits", g->n_prefix_hits);
    nf_stats_add(&m, "prefix_reused", g->n_prefix_reused);
    nf_stats_add(&m, "prefix_common", g->n_prefix_common);
    nf_stats_add(&m, "kv_store_hits", g->n_store_hits);
    nf_stats_add(&m, "kv_store_reused", g->n_store_reused);
    nf_stats_add(&m, "kv_store_saved", g->n_store_saved);
    nf_stats_add(&m, "kv_store_entries", g->n_store_entries);
    nf_stats_add(&m, "kv_store_bytes", g->n_store_bytes);
    pthread_mutex_unlock(&g->mu);
    /* The KV cache: its element types (enum nf_type) and the bytes of every slot's cache. */
    const enum nf_type tk = g->type_k ? (enum nf_type)g->type_k : NF_TYPE_F16;
    const enum nf_type tv = g->type_v ? (enum nf_type)g->type_v : NF_TYPE_F16;
    nf_stats_add(&m, "kv_type_k", (uint64_t)tk);
    nf_stats_add(&m, "kv_type_v", (uint64_t)tv);
    if (g->s) { /* (set once by the worker before it serves anything) */
        const uint64_t tok = nf_kv_token_bytes(nf_stream_hparams(g->s), tk, tv);
        nf_stats_add(&m, "kv_token_bytes", tok);
        nf_stats_add(&m, "kv_bytes", tok * (uint64_t)g->n_ctx * (uint64_t)g->parallel);
        struct nf_kv_file_stats kst;
        if (nf_stream_kv_stats(g->s, &kst)) { /* the cache on disk (kv_file.h) */
            nf_stats_add(&m, "kv_read_bytes", kst.read_bytes);
            nf_stats_add(&m, "kv_write_bytes", kst.write_bytes);
            nf_stats_add(&m, "kv_wait_ns", kst.wait_ns);
            nf_stats_add(&m, "kv_resident_max", kst.resident_max);
            nf_stats_add(&m, "kv_window", kst.window);
        }
    }
    nf_envelope env;
    nanoflow__envelope__init(&env);
    env.msg_case = NANOFLOW__ENVELOPE__MSG_STATS;
    env.stats = &m.stats;
    return nf_server_send(s, conn_id, req_id, &env);
}

uint64_t nf_gen_engine_bytes(const struct nf_gen *g)
{
    return g->s ? nf_stream_mem_bytes(g->s) : 0;
}
