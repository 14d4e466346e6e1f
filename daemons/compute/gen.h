/* gen.h - nanoflow-compute's generation worker: the request queue, the streaming engine over the
 * shared tile pool, and one generation at a time streamed back to its client.
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
#include "sampler.h"
#include "stack.h"
#include "stream.h"
#include "tokenizer.h"

#define NF_GEN_DEFAULT_N      128
#define NF_GEN_MAX_TOP_LOGITS 64
#define NF_GEN_PIN_TIMEOUT_MS 30000 /* a tile not READY after this fails the generation */

/* One queued Generate request (owned by the queue, freed by the worker). */
struct nf_gen_job {
    uint64_t conn_id, req_id;
    char *prompt; /* (prompt_len) bytes, owned */
    size_t prompt_len;
    struct nf_sampler_params sp;
    int n_predict;
    int top_logits;
    bool add_bos;
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
    /* Private. */
    pthread_t thread;
    bool started;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    struct nf_gen_job *head, *tail; /* FIFO */
    struct nf_gen_job *cur;         /* running job (under mu) */
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

/* Loop thread: queue a Generate request (copied). Returns 0 or -ENOMEM. */
int nf_gen_submit(struct nf_gen *g, uint64_t conn_id, uint64_t req_id, const Nanoflow__Generate *m);
/* Loop thread: cancel request target_id (on conn_id if such a job exists there, else on any
 * connection). Returns true when a job was found. */
bool nf_gen_cancel(struct nf_gen *g, uint64_t conn_id, uint64_t target_id);
/* Loop thread: the connection went away: cancel its jobs. */
void nf_gen_conn_closed(struct nf_gen *g, uint64_t conn_id);
/* Bytes of private memory of the engine (for logs). */
uint64_t nf_gen_engine_bytes(const struct nf_gen *g);

#endif
