/* gen.h - nanoflow-compute's generation worker: the request queue, the streaming engine over the
 * shared tile pool, and up to `parallel` generations at once (continuous batching), each
 * streamed back to its client.
 *
 * Batching: a request that arrives while others run joins them at the next step if one of the
 * `parallel` KV cache slots is free, else waits in the FIFO. Its prompt is evaluated alone on
 * its slot (the others wait that long), then every step evaluates one token of every running
 * sequence in one pass over the weights (nf_stream_step: each tile pinned once for all of
 * them), each sequence keeping its own sampler, stop rules, token limit, cancel flag and
 * replies, and its output identical to running it alone. A sequence leaves when it stops.
 *
 * Files: queue.c (requests checked and queued, the worker thread and its batch loop), job.c
 * (one request through the common driver, generate.h, and the batched step), gen.c (the tile
 * source over the shared pool and the shared counters), reply.c (TokenEvent, GenerateDone,
 * Error).
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
#include "kv_store.h"
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
/* Default per-request token limit (--max-tokens-per-request). Beyond `parallel` running
 * sequences requests wait for a slot: this bounds how long a short request can wait behind
 * long ones (512 tokens: under a minute at 10 tokens/s). */
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
    /* The prompt's tokens (n_ids; NULL until the worker tokenizes it, nf_gen_job_tokens), owned
     * until nf_gen_run_begin takes them. */
    int32_t *ids;
    int n_ids;
    struct nf_gen_job *next;
};

/* Prefix reuse (`up --prefix-cache on`, the default): each KV cache slot keeps, after its
 * sequence ends, the tokens of the prompt positions whose cells hold exactly what a cold
 * evaluation of those tokens leaves there. A prompt is evaluated in chunks of the ubatch from
 * position 0; every multi-token kernel (the matrix products, the chunk's attention over its
 * padded view) gives a token the same bits whatever the chunk's extent and the token's place in
 * it, but a chunk of one token takes the one-token kernels. So a slot keeps all of its prompt
 * but a last position that was a chunk of its own (nf_stream_prefix_kept, common/stream.h: n
 * positions, n - 1 when n % ub == 1); the generated tokens (one-token steps) are not kept. A
 * request whose prompt starts with kept tokens takes the free slot with the longest such prefix
 * (at least NF_GEN_PREFIX_MIN, at most n_prompt - 1, one fewer when a single token would be
 * left before the end or a cold run's last one-token chunk: nf_stream_prefix_usable), rolls the
 * slot back to it and evaluates the rest of its prompt from there in chunks of two tokens or
 * more, the last one alone exactly when a cold run evaluates it alone
 * (nf_stream_slot_eval_rest): every position is computed by the kernels a cold run uses for
 * it, so its output is bit for bit a cold run's (docs/exactness.md). */
#define NF_GEN_PREFIX_MIN 16
struct nf_gen_kept {
    int32_t *ids;  /* (n_ctx) */
    int n;         /* tokens kept (nf_stream_prefix_kept), 0 for none */
    uint64_t used; /* g->kept_clock when last stored or taken (the least recent goes first) */
    bool saved;    /* the prefix store (--kv-store) holds these n tokens, or a longer prefix */
};

/* The prefix store (`up --kv-store DIR`, common/kv_store.h): the kept prefixes outlive the
 * daemon. A slot's kept prefix is written into the store when it is about to be lost: when a
 * request takes the slot and will overwrite positions of it (the new prompt does not extend it
 * whole), and for every slot when compute stops (`down`). Writing when a sequence is kept would
 * put the store's writes (megabytes a token for a 7B model) in every request's path, most of
 * them for prefixes the slot keeps anyway; writing at eviction and at stop loses only what a
 * crash interrupts. A request whose prompt may reuse more of a stored prefix than of its slot's
 * kept one has that prefix read into its slot (the file straight into the
 * slot's cache, no other buffer: within the plan's memory) and starts from it, as from a kept
 * prefix. With the KV cache on disk (--kv-offload) the store is not used (one warning). */
#define NF_GEN_KV_STORE_MAX NF_KV_STORE_DEFAULT_MAX

struct nf_gen {
    /* Set by the caller before nf_gen_start. */
    struct nf_stack *st;
    const struct nf_nft *f;
    const struct nf_vocab *v;
    struct nf_server *srv; /* may be set after start, before the first job */
    int n_threads;         /* the pool's: prompt chunks of several tokens */
    int n_threads_one;     /* decode steps, batched too (nf_stream_opts n_threads_one) */
    int n_ctx;
    float sparsity;
    int n_ubatch;       /* prompt tokens per chunk (--ubatch); 0: the stream's default */
    int type_k, type_v; /* KV cache types (enum nf_type; 0: f16), nf_stream_opts' */
    int max_tokens;     /* per-request token limit, 1..NF_GEN_MAX_N_PREDICT; 0: the default */
    int parallel;       /* sequences run at once, 1..NF_MAX_BATCH (the plan's n_seq); 0: 1 */
    bool lookup;        /* requests speculate with prompt lookup unless they say otherwise */
    bool prefix_off;    /* --prefix-cache off: every prompt evaluated whole, no slot keeps one */
    /* The KV cache on disk in kv_path, in blocks of kv_block positions (0: in RAM). */
    int kv_block;
    char kv_path[PATH_MAX];
    /* The region's KV tiles (cfg->kv_tiles) for the engine, when the region's KV file is
     * kv_path (nf_gen_tile_src); the engine checks the rest of the geometry. */
    struct nf_tile_src_kv kv_src;
    /* --kv-store DIR ("" for none) bounded to kv_store_max bytes (0: NF_GEN_KV_STORE_MAX). */
    char kv_store_dir[PATH_MAX];
    uint64_t kv_store_max;
    /* --draft: a draft model held in RAM (owned by the caller), the default draft source of
     * requests when set; its context is created by the worker at its first use. */
    struct nf_model *dmodel;
    struct nf_vocab *dvocab;
    struct nf_ctx *dctx;
    /* The draft model's state over dctx, shared by the runs that draft with it (one context:
     * its token record follows what dctx holds, so runs taking turns re-evaluate, never mix). */
    struct nf_gen_draft_model dm;
    /* Private. */
    pthread_t thread;
    bool started;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    struct nf_gen_job *head, *tail; /* FIFO */
    struct nf_gen_job **running;    /* (parallel) the job on each slot, or NULL (under mu) */
    int n_running;                  /* non-NULL entries of running (under mu) */
    uint32_t n_queued;              /* jobs in head..tail (under mu) */
    atomic_int shutdown;            /* set by nf_gen_stop: aborts a batched step */
    /* Counters for Stats (under mu): jobs started, their summed queue waits, jobs clamped. */
    uint64_t n_started, wait_ns, n_clamped;
    uint64_t n_drafted, n_accepted; /* speculative decoding: drafts verified and accepted */
    /* Prefix reuse (under mu): requests whose prompt started from a kept prefix, the prompt
     * tokens they did not evaluate, and the tokens they shared with the slot's kept ones
     * (reused ones plus those recomputed to keep the chunks aligned). */
    uint64_t n_prefix_hits, n_prefix_reused, n_prefix_common;
    struct nf_gen_kept *kept; /* (parallel) each slot's kept prefix (worker only) */
    uint64_t kept_clock;      /* worker only */
    struct nf_kv_store *ks;   /* the prefix store, or NULL (worker only) */
    /* The store (under mu): requests started from a stored prefix, the prompt tokens it
     * saved them, prefixes written, and the store's entries and bytes (gauges). */
    uint64_t n_store_hits, n_store_reused, n_store_saved, n_store_entries, n_store_bytes;
    /* Batched steps that served two or more sequences, and their sequences (under mu). */
    uint64_t n_shared_steps, n_shared_rows;
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
/* Loop thread: cancels the running generations (shutdown; the worker is joined later). */
void nf_gen_cancel_running(struct nf_gen *g);
/* Loop thread: another daemon died: every running and queued request is answered with an
 * Error carrying msg and cancelled. */
void nf_gen_fail_all(struct nf_gen *g, struct nf_server *srv, const char *msg);
/* Loop thread: the Stats reply of compute: the shared counters (nf_stats_fill) and the queue's:
 * queue_len (gauge: jobs waiting), active (gauge: sequences running), parallel (most that may
 * run at once), shared_steps and shared_rows (steps that served two or more sequences, and
 * those sequences), requests (started), queue_wait_ns (their summed waits), clamped (requests
 * cut to the per-request token limit), drafted and accepted (speculative decoding's draft
 * tokens verified and accepted), prefix_hits, prefix_reused and prefix_common (prefix reuse:
 * requests started from a kept prefix, the prompt tokens they did not evaluate, the tokens
 * their prompts shared with the kept ones). Returns nf_server_send's result. */
int nf_gen_stats_reply(struct nf_gen *g, struct nf_server *s, uint64_t conn_id, uint64_t req_id);
/* Bytes of private memory of the engine (for logs). */
uint64_t nf_gen_engine_bytes(const struct nf_gen *g);

/* Between the compute files (worker thread only). */

/* gen.c: fills src with the tile source over g's shared pool. */
void nf_gen_tile_src(struct nf_gen *g, struct nf_tile_src *src);
/* gen.c: adds what the engine did since the last call to the shared compute counters. */
void nf_gen_flush_counters(struct nf_gen *g);
/* job.c: one running request on its KV cache slot. */
struct nf_gen_run {
    struct nf_gen *g;
    struct nf_gen_job *j;
    int slot;
    double wait_s; /* its wait in the queue */
    int reuse;     /* prompt positions taken from the slot's kept prefix (0: none) */
    int common;    /* tokens the prompt shares with the slot's kept prefix */
    struct nf_gen_engine e;
    struct nf_gen_seq q;
    int32_t *ids; /* the tokenized prompt */
    bool gone;    /* a TokenEvent could not be sent: the client is gone */
    bool pending; /* tok waits for the batched step */
    /* Speculative decoding (the job's lookup or draft): the run evaluates on its own, its
     * drafts verified in one pass of its slot, and never joins the batched step. */
    bool spec;
    struct nf_gen_lookup lk;
    struct nf_gen_draft draft;
    int32_t tok;            /* with pending: the token to evaluate */
    uint64_t last_frame_ns; /* nf_now_ns when the last frame went to the client */
    uint64_t progress_ns;   /* least interval between PromptProgress frames */
};
/* job.c: tokenizes j's prompt into j->ids once (the driver's BOS rule). Returns its count, or
 * a negative code (nf_gen_run_begin tokenizes again to answer the error). */
int nf_gen_job_tokens(struct nf_gen *g, struct nf_gen_job *j);
/* job.c: the prompt positions ids[0..n) may take from slot's kept prefix (0: none, or prefix
 * reuse is off); with common set, the tokens they share with it. */
int nf_gen_prefix_len(const struct nf_gen *g, int slot, const int32_t *ids, int n, int *common);
/* store.c (with --kv-store; no-ops without): opens the store after the engine and the kept
 * records exist (0, or a negative code with init_err set); before r's prompt on its slot, with
 * r->reuse from the kept prefix, saves the slot's kept prefix if r will overwrite it and reads
 * a stored prefix into the slot when it saves r more (r->reuse and the slot's kept record then
 * follow it); at stop, saves every slot's kept prefix; closes the store. */
int nf_gen_store_open(struct nf_gen *g);
void nf_gen_store_prepare(struct nf_gen_run *r, int n);
void nf_gen_store_flush(struct nf_gen *g);
void nf_gen_store_close(struct nf_gen *g);
/* job.c: prepares r to run job j (which waited wait_s) on slot: tokenizes the prompt and checks
 * the context. Returns 0, or a negative code with err saying why (r then holds nothing): the
 * caller answers j with that Error once j has left its slot (queue.c, slot_release).
 * Allocates per request (tokens, sampler); the steps do not. */
int nf_gen_run_begin(struct nf_gen *g, struct nf_gen_run *r, struct nf_gen_job *j, int slot,
                     double wait_s, char *err, size_t errlen);
/* job.c: one step of r (nf_gen_seq_step): the first evaluates its prompt alone on its slot,
 * each later one samples and sends a token and leaves the token's evaluation pending for
 * nf_gen_run_batch. Returns 1 while r runs, 0 once it has stopped. */
int nf_gen_run_step(struct nf_gen_run *r);
/* job.c: evaluates the pending tokens of rs[0..n) in one batched step; a failure ends each of
 * those sequences (a cancel at shutdown, else an error naming the tile). */
void nf_gen_run_batch(struct nf_gen *g, struct nf_gen_run *const *rs, int n);
/* job.c: r has stopped and its job has left its slot (queue.c, slot_release): answers its
 * client (GenerateDone, or an Error) and frees what r holds. */
void nf_gen_run_end(struct nf_gen *g, struct nf_gen_run *r);
/* reply.c: the frames of a generation; each returns nf_server_send's result. */
int nf_gen_send_error(struct nf_gen *g, const struct nf_gen_job *j, int code, const char *msg);
int nf_gen_send_token(struct nf_gen *g, const struct nf_gen_job *j, const struct nf_gen_token *t);
int nf_gen_send_progress(struct nf_gen *g, const struct nf_gen_job *j, int done, int total);
/* ids: n_prompt prompt ids then n_gen generated ones (NULL when both are 0); wait_s: the
 * job's queue wait. */
int nf_gen_send_done(struct nf_gen *g, const struct nf_gen_job *j, const int32_t *ids, int n_prompt,
                     int n_gen, const char *stop, double prompt_s, double decode_s, double wait_s);

#endif
