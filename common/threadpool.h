/* threadpool.h - a persistent pool of worker threads that run one parallel job at a time.
 *
 * The caller thread takes part as thread 0, so a pool of n threads starts n - 1 workers. Jobs
 * are dispatched without allocating: the steady state (one job per mat-vec) only touches an
 * atomic generation counter and, when workers sleep, a condition variable. */
#ifndef NF_THREADPOOL_H
#define NF_THREADPOOL_H

/* A job body: called once on every thread with ith in [0, nth). */
typedef void (*nf_job_fn)(void *arg, int ith, int nth);

struct nf_threadpool;

/* Starts a pool of n_threads threads (n_threads - 1 workers; 1 means everything runs in the
 * caller). n_threads <= 0 means one per online CPU. Returns 0 or a negative errno. */
int nf_threadpool_create(struct nf_threadpool **out, int n_threads);

/* Stops and joins the workers and frees the pool; NULL is accepted. */
void nf_threadpool_free(struct nf_threadpool *p);

/* The threads the pool was created with (its capacity, whatever nf_threadpool_limit says). */
int nf_threadpool_size(const struct nf_threadpool *p);

/* Caps the threads of later jobs at n (n <= 0: no cap, every thread of the pool). Jobs are
 * split by the nth they are given, so a capped job runs on fewer threads and leaves the other
 * workers asleep: a one-token decode step can leave a core to another process while batched
 * steps and prompt chunks use them all. Only the thread that created the pool may call it. */
void nf_threadpool_limit(struct nf_threadpool *p, int n);

/* Runs fn(arg, ith, nth) on nth = min(n, pool size, limit) threads and returns when all have
 * finished. Must only be called from the thread that created the pool (jobs do not nest). */
void nf_threadpool_run(struct nf_threadpool *p, nf_job_fn fn, void *arg, int n);

#endif
