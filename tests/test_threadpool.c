/* test_threadpool.c - the thread pool: every thread of a job runs once with the job's nth, a
 * job never takes more threads than asked, than the pool has or than nf_threadpool_limit
 * allows, and a capped pool takes all its threads again once the cap is lifted. */
#include <setjmp.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>

#include "threadpool.h"

#define POOL 3

/* What one job saw: the calls per ith and the nth each call was given. */
struct seen {
    atomic_int calls[POOL + 1];
    atomic_int nth[POOL + 1];
};

static void record(void *arg, int ith, int nth)
{
    struct seen *s = arg;
    if (ith < 0 || ith > POOL)
        ith = POOL; /* counted where the checks below see it */
    atomic_fetch_add(&s->calls[ith], 1);
    atomic_store(&s->nth[ith], nth);
}

/* Runs one job asking for n threads and checks that exactly want threads ran it, each once. */
static void run_expect(struct nf_threadpool *p, int n, int want)
{
    struct seen s;
    memset(&s, 0, sizeof(s));
    nf_threadpool_run(p, record, &s, n);
    for (int i = 0; i <= POOL; i++) {
        assert_int_equal(atomic_load(&s.calls[i]), i < want ? 1 : 0);
        if (i < want)
            assert_int_equal(atomic_load(&s.nth[i]), want);
    }
}

static void test_limit(void **state)
{
    (void)state;
    struct nf_threadpool *p = NULL;
    assert_int_equal(nf_threadpool_create(&p, POOL), 0);
    assert_int_equal(nf_threadpool_size(p), POOL);
    run_expect(p, POOL, POOL);
    run_expect(p, 2, 2);
    run_expect(p, 1, 1);
    run_expect(p, 100, POOL);
    nf_threadpool_limit(p, 1);
    assert_int_equal(nf_threadpool_size(p), POOL); /* the capacity, not the cap */
    run_expect(p, POOL, 1);
    nf_threadpool_limit(p, 2);
    run_expect(p, POOL, 2);
    run_expect(p, 1, 1);
    nf_threadpool_limit(p, POOL + 5); /* above the pool: no cap */
    run_expect(p, POOL, POOL);
    nf_threadpool_limit(p, 1);
    run_expect(p, POOL, 1);
    nf_threadpool_limit(p, 0); /* lifted */
    run_expect(p, POOL, POOL);
    /* Many jobs in a row alternating the cap: the sleeping workers wake for every full job. */
    for (int k = 0; k < 200; k++) {
        nf_threadpool_limit(p, k % 2 ? 1 : 0);
        run_expect(p, POOL, k % 2 ? 1 : POOL);
    }
    nf_threadpool_free(p);
}

static void test_single(void **state)
{
    (void)state;
    struct nf_threadpool *p = NULL;
    assert_int_equal(nf_threadpool_create(&p, 1), 0);
    nf_threadpool_limit(p, 4);
    run_expect(p, 4, 1);
    nf_threadpool_free(p);
    nf_threadpool_limit(NULL, 2); /* accepted, as nf_threadpool_free(NULL) is */
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_limit),
        cmocka_unit_test(test_single),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
