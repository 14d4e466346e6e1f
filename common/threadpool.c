/* threadpool.c - persistent worker threads with a generation-counter job hand-off. */
#include <errno.h>
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdlib.h>
#include <unistd.h>

#include "threadpool.h"

/* Spin this many polls before sleeping: short enough not to steal a shared core for long,
 * long enough to catch the next mat-vec of a decode step without a futex round trip. */
#define NF_POOL_SPIN 2000

struct nf_threadpool {
    int n_threads;
    pthread_t *threads;
    pthread_mutex_t mu;
    pthread_cond_t wake; /* workers wait here for a new generation */
    pthread_cond_t done; /* the caller waits here for pending to reach 0 */
    atomic_uint gen;     /* bumped (under mu) for every job; workers run once per value */
    atomic_int pending;  /* workers still running the current job */
    atomic_bool stop;
    nf_job_fn fn;
    void *arg;
    int nth;   /* threads taking part in the current job */
    int limit; /* most threads a job takes (nf_threadpool_limit); n_threads when not capped */
};

struct nf_worker_arg {
    struct nf_threadpool *p;
    int ith;
};

static void *nf_worker_main(void *varg)
{
    struct nf_worker_arg wa = *(struct nf_worker_arg *)varg;
    struct nf_threadpool *p = wa.p;
    free(varg);
    unsigned seen = 0;
    for (;;) {
        unsigned g;
        int spins = 0;
        /* Acquire pairs with the release in nf_threadpool_run: fn/arg/nth are visible. */
        while ((g = atomic_load_explicit(&p->gen, memory_order_acquire)) == seen &&
               !atomic_load(&p->stop) && spins < NF_POOL_SPIN) {
            spins++;
            if ((spins & 63) == 0)
                sched_yield();
        }
        if (g == seen && !atomic_load(&p->stop)) {
            pthread_mutex_lock(&p->mu);
            while ((g = atomic_load(&p->gen)) == seen && !atomic_load(&p->stop))
                pthread_cond_wait(&p->wake, &p->mu);
            pthread_mutex_unlock(&p->mu);
        }
        if (atomic_load(&p->stop))
            return NULL;
        seen = g;
        if (wa.ith < p->nth)
            p->fn(p->arg, wa.ith, p->nth);
        /* Release pairs with the caller's acquire load of pending: results are visible. */
        if (atomic_fetch_sub_explicit(&p->pending, 1, memory_order_acq_rel) == 1) {
            pthread_mutex_lock(&p->mu);
            pthread_cond_signal(&p->done);
            pthread_mutex_unlock(&p->mu);
        }
    }
}

int nf_threadpool_create(struct nf_threadpool **out, int n_threads)
{
    if (n_threads <= 0) {
        long n = sysconf(_SC_NPROCESSORS_ONLN);
        n_threads = n > 0 ? (int)n : 1;
    }
    struct nf_threadpool *p = calloc(1, sizeof(*p));
    if (!p)
        return -ENOMEM;
    p->n_threads = n_threads;
    p->limit = n_threads;
    pthread_mutex_init(&p->mu, NULL);
    pthread_cond_init(&p->wake, NULL);
    pthread_cond_init(&p->done, NULL);
    atomic_init(&p->gen, 0);
    atomic_init(&p->pending, 0);
    atomic_init(&p->stop, false);
    p->threads = calloc((size_t)n_threads, sizeof(pthread_t));
    if (!p->threads) {
        free(p);
        return -ENOMEM;
    }
    for (int i = 1; i < n_threads; i++) {
        struct nf_worker_arg *wa = malloc(sizeof(*wa));
        if (wa) {
            wa->p = p;
            wa->ith = i;
        }
        int rc = wa ? pthread_create(&p->threads[i], NULL, nf_worker_main, wa) : ENOMEM;
        if (rc) {
            free(wa);
            p->n_threads = i; /* join only the ones started */
            nf_threadpool_free(p);
            return -rc;
        }
    }
    *out = p;
    return 0;
}

void nf_threadpool_free(struct nf_threadpool *p)
{
    if (!p)
        return;
    pthread_mutex_lock(&p->mu);
    atomic_store(&p->stop, true);
    pthread_cond_broadcast(&p->wake);
    pthread_mutex_unlock(&p->mu);
    for (int i = 1; i < p->n_threads; i++)
        pthread_join(p->threads[i], NULL);
    pthread_cond_destroy(&p->wake);
    pthread_cond_destroy(&p->done);
    pthread_mutex_destroy(&p->mu);
    free(p->threads);
    free(p);
}

int nf_threadpool_size(const struct nf_threadpool *p)
{
    return p ? p->n_threads : 1;
}

void nf_threadpool_limit(struct nf_threadpool *p, int n)
{
    if (p)
        p->limit = n > 0 && n < p->n_threads ? n : p->n_threads;
}

void nf_threadpool_run(struct nf_threadpool *p, nf_job_fn fn, void *arg, int n)
{
    if (!p || p->limit == 1 || n <= 1) {
        fn(arg, 0, 1);
        return;
    }
    int nth = n < p->limit ? n : p->limit;
    p->fn = fn;
    p->arg = arg;
    p->nth = nth;
    atomic_store_explicit(&p->pending, p->n_threads - 1, memory_order_relaxed);
    pthread_mutex_lock(&p->mu);
    atomic_fetch_add_explicit(&p->gen, 1, memory_order_release);
    pthread_cond_broadcast(&p->wake);
    pthread_mutex_unlock(&p->mu);
    fn(arg, 0, nth);
    int spins = 0;
    while (atomic_load_explicit(&p->pending, memory_order_acquire) > 0 && spins < NF_POOL_SPIN)
        spins++;
    if (atomic_load_explicit(&p->pending, memory_order_acquire) > 0) {
        pthread_mutex_lock(&p->mu);
        while (atomic_load(&p->pending) > 0)
            pthread_cond_wait(&p->done, &p->mu);
        pthread_mutex_unlock(&p->mu);
    }
}
