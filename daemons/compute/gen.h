/* gen.h - nanoflow-compute's generation worker: the request queue, the streaming engine over the
 * shared tile pool, and one generation at a time streamed back to its client.
 *
 * Files: queue.c (requests checked and queued, the worker thread), job.c (one request through
 * the common driver, generate.h), gen.c (the tile source over the shared pool and the shared
 * counters), reply.c (TokenEvent, GenerateDone, Error).
 *
 * Threads: the libuv loop thread calls nf_gen_submit / nf_gen_cancel / nf_gen_conn_closed; the
 * worker thread (started by nf_gen_start) owns the engine (its thread pool must be driven from
 * the thread that created it), pins tiles (the demand ring has one producer) and sends frames
 * with nf_server_send (safe from any thread). */
#ifndef NF_COMPUTE_GEN_H
#define NF_COMPUTE_GEN_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>

#include "daemon.h"
#include "generate.h"
#include "sampler.h"
#include "stack.h"
#include "stream.h"
#include "tokenizer.h"

#define NF_GEN_DEFAULT_N     128
#define NF_GEN_MAX_N_PREDICT 1000000 /* as `run -n` and `gen -n` */
/* Largest prompt taken: the default frame limit (NF_FRAME_MAX_DEFAULT), far more text than any
 * context we run holds; a longer one is refused before it is copied or tokenized. */
#define NF_GEN_MAX_PROMPT_BYTES (1 << 20)
#define NF_GEN_PIN_TIMEOUT_MS   30000 /* a tile not READY after this fails the generation */
/* Default per-request token limit (--max-tokens-per-request). The engine holds one sequence's
 * KV cache, so requests run one after the other: this bounds how long a short request can wait
 * behind one long one (512 tokens: under a minute at 10 tokens/s). */
#define NF_GEN_DEFAULT_MAX_TOKENS 512

/* One queued Generate request (owned by the queue, freed by the worker). */
struct nf_gen_job {
    uint64_t conn_id, req_id;
    char *prompt; /* (prompt_len) bytes, owned */
    size_t prompt_len;
    struct nf_sampler_params sp;
    int n_predict;         /* 1..max_tokens of struct nf_gen (clamped) */
    int n_asked;           /* n_predict as asked (0 taken as NF_GEN_DEFAULT_N) */
    int top_logits;        /* 0..NF_GEN_TOP_LOGITS_MAX */
    bool logprobs;         /* Generate.logprobs: log-probabilities in the TokenEvents */
    bool lookup;           /* speculative decoding with prompt-lookup drafts */
    bool draft;            /* speculative decoding with the stack's draft model */
    int drafted, accepted; /* set by the run: what GenerateDone reports */
    uint64_t t_queued_ns;  /* nf_now_ns when queued */
    uint32_t ahead;        /* jobs ahead of it when queued, the running one included */
    atomic_int cancel;
    struct nf_gen_job *next;
};

struct nf_gen {
    /* Set by the caller before nf_gen_start. */
    struct nf_stack *st;
    const struct nf_nft *f;
    const struct nf_vocab *v;
    struct nf_server *srv; /* may be set after start, before the first job */
    int n_threads;
    int n_ctx;
    float sparsity;
    int n_ubatch;   /* prompt tokens per chunk (--ubatch); 0: the stream's default */
    int max_tokens; /* per-request token limit, 1..NF_GEN_MAX_N_PREDICT; 0: the default */
    bool lookup;    /* requests speculate with prompt lookup unless they say otherwise */
    /* --draft: a draft model held in RAM (owned by the caller), the default draft source of
     * requests when set; its context is created by the worker at its first use. */
    struct nf_model *dmodel;
    struct nf_vocab *dvocab;
    struct nf_ctx *dctx;
    /* Private. */
    pthread_t thread;
    bool started;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    struct nf_gen_job *head, *tail; /* FIFO */
    struct nf_gen_job *cur;         /* running job (under mu) */
    uint32_t n_queued;              /* jobs in head..tail (under mu) */
    /* Counters for Stats (under mu): jobs started, their summed queue waits, jobs clamped. */
    uint64_t n_started, wait_ns, n_clamped;
    uint64_t n_drafted, n_accepted; /* speculative decoding: drafts verified and accepted */
    bool stop;
    int init_rc; /* engine creation result, valid once init_done */
    bool init_done;
    char init_err[512];
    struct nf_stream *s;
    struct nf_stream_stats last; /* engine stats already added to the shared counters */
    uint64_t step;
};

/* Starts the worker and waits until it has created the engine. Returns 0 or a negative code with
 * the reason in err. */
int nf_gen_start(struct nf_gen *g, char *err, size_t errlen);
/* Stops the worker (the running generation is cancelled) and frees what is queued. */
void nf_gen_stop(struct nf_gen *g);

/* Loop thread: checks every field of a Generate request and queues a copy of it. A request out
 * of range (n_predict, top_logits, sampling, prompt size) is answered with an Error naming the
 * field and not queued. Returns 0 (queued or answered) or -ENOMEM. */
int nf_gen_submit(struct nf_gen *g, uint64_t conn_id, uint64_t req_id, const Nanoflow__Generate *m);
/* Loop thread: Cancel req_id on conn_id: cancels request target_id of conn_id. A target_id
 * that only another connection has is answered with an Error (-EPERM) and cancels nothing; one
 * that no connection has (it already ended) is a no-op. Returns true when a job was cancelled. */
bool nf_gen_cancel(struct nf_gen *g, uint64_t conn_id, uint64_t req_id, uint64_t target_id);
/* Loop thread: the connection went away: cancel its jobs. */
void nf_gen_conn_closed(struct nf_gen *g, uint64_t conn_id);
/* Loop thread: the Stats reply of compute: the shared counters (nf_stats_fill) and the queue's:
 * queue_len (gauge: jobs waiting), requests (started), queue_wait_ns (their summed waits),
 * clamped (requests cut to the per-request token limit), drafted and accepted (speculative
 * decoding's draft tokens verified and accepted). Returns nf_server_send's result. */
int nf_gen_stats_reply(struct nf_gen *g, struct nf_server *s, uint64_t conn_id, uint64_t req_id);
/* Bytes of private memory of the engine (for logs). */
uint64_t nf_gen_engine_bytes(const struct nf_gen *g);

/* Between the compute files (worker thread only). */

/* gen.c: fills src with the tile source over g's shared pool. */
void nf_gen_tile_src(struct nf_gen *g, struct nf_tile_src *src);
/* gen.c: adds what the engine did since the last call to the shared compute counters. */
void nf_gen_flush_counters(struct nf_gen *g);
/* job.c: runs job j, which waited wait_s in the queue, to its end: TokenEvents, then
 * GenerateDone or an Error. Allocates per request (tokens, sampler); the evaluation itself does
 * not. */
void nf_gen_run_job(struct nf_gen *g, struct nf_gen_job *j, double wait_s);
/* reply.c: the frames of a generation; each returns nf_server_send's result. */
int nf_gen_send_error(struct nf_gen *g, const struct nf_gen_job *j, int code, const char *msg);
int nf_gen_send_token(struct nf_gen *g, const struct nf_gen_job *j, const struct nf_gen_token *t);
int nf_gen_send_progress(struct nf_gen *g, const struct nf_gen_job *j, int done, int total);
/* ids: n_prompt prompt ids then n_gen generated ones (NULL when both are 0); wait_s: the
 * job's queue wait. */
int nf_gen_send_done(struct nf_gen *g, const struct nf_gen_job *j, const int32_t *ids, int n_prompt,
                     int n_gen, const char *stop, double prompt_s, double decode_s, double wait_s);

#endif
