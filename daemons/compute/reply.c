/* reply.c - nanoflow-compute's protobuf output for a generation: one TokenEvent per token, then
 * GenerateDone or an Error (see gen.h). Every function is safe from the worker thread. */
#include <stdio.h>

#include "gen.h"
#include "nf_err.h"

int nf_gen_send_error(struct nf_gen *g, const struct nf_gen_job *j, int code, const char *msg)
{
    nf_log(NF_LOG_WARN, "request %llu: %s", (unsigned long long)j->req_id, msg);
    return nf_server_send_error(g->srv, j->conn_id, j->req_id, code, "%s", msg);
}

int nf_gen_send_token(struct nf_gen *g, const struct nf_gen_job *j, const struct nf_gen_token *t)
{
    Nanoflow__TopLogit tl[NF_GEN_TOP_LOGITS_MAX], *tlp[NF_GEN_TOP_LOGITS_MAX];
    const int nk = t->n_top;
    NF_ASSERT(nk >= 0 && nk <= NF_GEN_TOP_LOGITS_MAX);
    for (int i = 0; i < nk; i++) {
        nanoflow__top_logit__init(&tl[i]);
        tl[i].id = t->top_ids[i];
        tl[i].logit = t->top_vals[i];
        if (j->logprobs)
            tl[i].logprob = (float)((double)t->top_vals[i] - t->log_sum_exp);
        tlp[i] = &tl[i];
    }
    Nanoflow__TokenEvent ev;
    nanoflow__token_event__init(&ev);
    ev.id = t->id;
    ev.piece.data = (uint8_t *)t->piece;
    ev.piece.len = (size_t)t->piece_len;
    ev.n_top_logits = (size_t)nk;
    ev.top_logits = nk ? tlp : NULL;
    if (j->logprobs)
        ev.logprob = (float)((double)t->logit - t->log_sum_exp);
    nf_envelope env;
    nanoflow__envelope__init(&env);
    env.msg_case = NANOFLOW__ENVELOPE__MSG_TOKEN;
    env.token = &ev;
    return nf_server_send(g->srv, j->conn_id, j->req_id, &env);
}

int nf_gen_send_progress(struct nf_gen *g, const struct nf_gen_job *j, int done, int total)
{
    Nanoflow__PromptProgress pp;
    nanoflow__prompt_progress__init(&pp);
    pp.done = done;
    pp.total = total;
    nf_envelope env;
    nanoflow__envelope__init(&env);
    env.msg_case = NANOFLOW__ENVELOPE__MSG_PROMPT_PROGRESS;
    env.prompt_progress = &pp;
    return nf_server_send(g->srv, j->conn_id, j->req_id, &env);
}

int nf_gen_send_done(struct nf_gen *g, const struct nf_gen_job *j, const int32_t *ids, int n_prompt,
                     int n_gen, const char *stop, double prompt_s, double decode_s, double wait_s)
{
    char note[128] = "";
    if (j->n_predict < j->n_asked)
        snprintf(note, sizeof(note),
                 "n_predict %d clamped to the per-request limit %d (--max-tokens-per-request)",
                 j->n_asked, j->n_predict);
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
    d.gen_ids = ids ? (int32_t *)ids + n_prompt : NULL;
    d.stop = (char *)stop;
    d.seed = j->sp.seed;
    d.timings = &tm;
    d.n_ctx = (uint32_t)nf_stream_n_ctx(g->s);
    d.n_ctx_train = (uint32_t)nf_stream_hparams(g->s)->n_ctx_train;
    d.queue_wait_s = wait_s;
    d.queued_ahead = j->ahead;
    d.note = note;
    d.drafted = (uint32_t)j->drafted;
    d.accepted = (uint32_t)j->accepted;
    nf_envelope env;
    nanoflow__envelope__init(&env);
    env.msg_case = NANOFLOW__ENVELOPE__MSG_GENERATE_DONE;
    env.generate_done = &d;
    return nf_server_send(g->srv, j->conn_id, j->req_id, &env);
}
