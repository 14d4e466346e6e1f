/* test_ring.c - SPSC ring: empty/full, bulk vs burst, index wrap past 2^32, threads, processes. */
#include <errno.h>
#include <pthread.h>
#include <sched.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cmocka.h>

#include "nf_err.h"
#include "region.h"
#include "ring.h"

/* One entry: a sequence number and its complement, so a torn or stale slot is detected. */
struct item {
    uint64_t seq;
    uint64_t check;
};

static struct item mk(uint64_t seq)
{
    struct item it = {seq, ~seq * 0x9e3779b97f4a7c15ull};
    return it;
}

static struct nf_ring *ring_new(uint32_t count, uint32_t esize)
{
    size_t sz;
    assert_int_equal(nf_ring_memsize(count, esize, &sz), 0);
    void *mem = NULL;
    assert_int_equal(posix_memalign(&mem, NF_RING_CACHELINE, sz), 0);
    assert_int_equal(nf_ring_init(mem, sz, count, esize), 0);
    return mem;
}

static void test_params(void **state)
{
    size_t sz;
    assert_int_equal(nf_ring_memsize(0, 16, &sz), -EINVAL);
    assert_int_equal(nf_ring_memsize(12, 16, &sz), -EINVAL);
    assert_int_equal(nf_ring_memsize(16, 6, &sz), -EINVAL);
    assert_int_equal(nf_ring_memsize(16, 0, &sz), -EINVAL);
    assert_int_equal(nf_ring_memsize(16, NF_RING_MAX_ESIZE + 4, &sz), -EINVAL);
    assert_int_equal(nf_ring_memsize(NF_RING_MAX_COUNT * 2u, 4, &sz), -EINVAL);
    assert_int_equal(nf_ring_memsize(16, 16, &sz), 0);
    assert_int_equal(sz, 192 + 16 * 16);

    void *mem = NULL;
    assert_int_equal(posix_memalign(&mem, 64, 1024), 0);
    assert_int_equal(nf_ring_init(mem, 1024, 64, 16), -ENOSPC); /* needs 192 + 1024 */
    assert_int_equal(nf_ring_init((void *)((char *)mem + 8), 1000, 4, 16), -EINVAL);
    assert_int_equal(nf_ring_init(mem, 1024, 8, 16), 0);
    assert_int_equal(nf_ring_check(mem, 1024), 0);
    assert_int_equal(nf_ring_check(mem, 192 + 8 * 16 - 1), NF_ECORRUPT);
    struct nf_ring *r = mem;
    r->mask = 3;
    assert_int_equal(nf_ring_check(mem, 1024), NF_ECORRUPT);
    r->mask = 7;
    atomic_store(&r->magic, 0);
    assert_int_equal(nf_ring_check(mem, 1024), NF_EBADMAGIC);
    free(mem);
}

static void test_empty_full(void **state)
{
    struct nf_ring *r = ring_new(8, sizeof(struct item));
    struct item in[16], out[16];
    unsigned left = 99;
    for (int i = 0; i < 16; i++)
        in[i] = mk((uint64_t)i);

    assert_int_equal(nf_ring_count(r), 0);
    assert_int_equal(nf_ring_sc_dequeue_burst(r, out, 1, &left), 0);
    assert_int_equal(left, 0);
    assert_int_equal(nf_ring_sc_dequeue_bulk(r, out, 1, NULL), 0);

    /* All count slots are usable. */
    assert_int_equal(nf_ring_sp_enqueue_bulk(r, in, 8, &left), 8);
    assert_int_equal(left, 0);
    assert_int_equal(nf_ring_count(r), 8);
    assert_int_equal(nf_ring_free_count(r), 0);
    assert_int_equal(nf_ring_sp_enqueue_bulk(r, in, 1, NULL), 0);
    assert_int_equal(nf_ring_sp_enqueue_burst(r, in, 1, NULL), 0);

    /* Bulk takes all or nothing; burst takes what is there. */
    assert_int_equal(nf_ring_sc_dequeue_bulk(r, out, 9, &left), 0);
    assert_int_equal(left, 8);
    assert_int_equal(nf_ring_sc_dequeue_bulk(r, out, 3, &left), 3);
    assert_int_equal(left, 5);
    assert_memory_equal(out, in, 3 * sizeof(struct item));
    assert_int_equal(nf_ring_sp_enqueue_bulk(r, in + 8, 4, &left), 0);
    assert_int_equal(left, 3);
    assert_int_equal(nf_ring_sp_enqueue_burst(r, in + 8, 4, &left), 3);
    assert_int_equal(left, 0);
    assert_int_equal(nf_ring_sc_dequeue_burst(r, out, 16, &left), 8);
    assert_int_equal(left, 0);
    assert_memory_equal(out, in + 3, 8 * sizeof(struct item));
    assert_int_equal(nf_ring_count(r), 0);
    free(r);
}

/* Pushes and pops varying batch sizes across the 2^32 index wrap and the slot-array end. */
static void test_wrap(void **state)
{
    struct nf_ring *r = ring_new(16, sizeof(struct item));
    nf_ring_reset(r, UINT32_MAX - 37);
    struct item buf[16];
    uint64_t next_in = 0, next_out = 0;
    unsigned sizes[] = {1, 7, 16, 3, 5, 13, 2, 11};
    for (int round = 0; round < 64; round++) {
        unsigned n = sizes[round % 8];
        for (unsigned i = 0; i < n; i++)
            buf[i] = mk(next_in + i);
        unsigned got = nf_ring_sp_enqueue_burst(r, buf, n, NULL);
        assert_true(got <= n);
        next_in += got;
        assert_int_equal(nf_ring_count(r), (unsigned)(next_in - next_out));
        unsigned m = sizes[(round + 3) % 8];
        unsigned d = nf_ring_sc_dequeue_burst(r, buf, m, NULL);
        for (unsigned i = 0; i < d; i++) {
            struct item want = mk(next_out + i);
            assert_memory_equal(&buf[i], &want, sizeof(want));
        }
        next_out += d;
    }
    /* The indices went past UINT32_MAX: well over 38 entries moved. */
    assert_true(next_out > 100);
    uint32_t prod = atomic_load(&r->prod_tail);
    assert_true(prod < UINT32_MAX - 37);
    free(r);
}

#define STRESS_N 1000000

struct stress {
    struct nf_ring *r;
    uint64_t n;
    int bad;
};

/* Producer: bursts of 1..8 entries, spinning politely (sched_yield) when full. */
static void produce(struct nf_ring *r, uint64_t n)
{
    struct item buf[8];
    uint64_t next = 0;
    unsigned x = 12345;
    while (next < n) {
        x = x * 1103515245u + 12345u;
        unsigned want = 1 + (x >> 16) % 8;
        if (want > n - next)
            want = (unsigned)(n - next);
        for (unsigned i = 0; i < want; i++)
            buf[i] = mk(next + i);
        unsigned got = (x >> 8) & 1 ? nf_ring_sp_enqueue_bulk(r, buf, want, NULL)
                                    : nf_ring_sp_enqueue_burst(r, buf, want, NULL);
        next += got;
        if (!got)
            sched_yield();
    }
}

/* Consumer: returns the number of entries that arrived out of order or corrupted. */
static int consume(struct nf_ring *r, uint64_t n)
{
    struct item buf[8];
    uint64_t next = 0;
    int bad = 0;
    unsigned x = 777;
    while (next < n) {
        x = x * 1103515245u + 12345u;
        unsigned want = 1 + (x >> 16) % 8;
        unsigned got = (x >> 8) & 1 ? nf_ring_sc_dequeue_bulk(r, buf, want, NULL)
                                    : nf_ring_sc_dequeue_burst(r, buf, want, NULL);
        for (unsigned i = 0; i < got; i++) {
            struct item want_it = mk(next + i);
            if (memcmp(&buf[i], &want_it, sizeof(want_it)) != 0)
                bad++;
        }
        next += got;
        if (!got)
            sched_yield();
    }
    return bad;
}

static void *consumer_thread(void *arg)
{
    struct stress *s = arg;
    s->bad = consume(s->r, s->n);
    return NULL;
}

static void test_two_threads(void **state)
{
    struct nf_ring *r = ring_new(64, sizeof(struct item));
    nf_ring_reset(r, UINT32_MAX - 1000); /* wrap in the middle of the run */
    struct stress s = {r, STRESS_N, -1};
    pthread_t t;
    assert_int_equal(pthread_create(&t, NULL, consumer_thread, &s), 0);
    produce(r, STRESS_N);
    assert_int_equal(pthread_join(t, NULL), 0);
    assert_int_equal(s.bad, 0);
    assert_int_equal(nf_ring_count(r), 0);
    free(r);
}

/* Producer in this process, consumer in a forked child that opens the region by name. */
static void test_two_processes(void **state)
{
    char name[64];
    snprintf(name, sizeof(name), "/nf-test-ring-%d", (int)getpid());
    uint64_t sizes[NF_SHM_NAREAS] = {0};
    size_t rsz;
    assert_int_equal(nf_ring_memsize(128, sizeof(struct item), &rsz), 0);
    sizes[NF_SHM_REQ_RING] = rsz;
    struct nf_shm shm;
    int rc = nf_shm_create(&shm, name, sizes);
    if (rc < 0)
        fail_msg("%s", shm.err);
    struct nf_ring *r = nf_shm_area(&shm, NF_SHM_REQ_RING, NULL);
    assert_int_equal(nf_ring_init(r, rsz, 128, sizeof(struct item)), 0);
    nf_ring_reset(r, UINT32_MAX - 300);

    fflush(NULL);
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        /* Child: a separate mapping at its own address, as a daemon would have. */
        struct nf_shm c;
        if (nf_shm_open(&c, name) < 0)
            _exit(2);
        uint64_t csz;
        struct nf_ring *cr = nf_shm_area(&c, NF_SHM_REQ_RING, &csz);
        if (nf_ring_check(cr, csz) < 0)
            _exit(3);
        int bad = consume(cr, STRESS_N);
        nf_shm_close(&c);
        _exit(bad ? 1 : 0);
    }
    produce(r, STRESS_N);
    int st = 0;
    assert_int_equal(waitpid(pid, &st, 0), pid);
    nf_shm_close(&shm);
    assert_int_equal(nf_shm_unlink(name), 0);
    assert_true(WIFEXITED(st));
    assert_int_equal(WEXITSTATUS(st), 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_params),        cmocka_unit_test(test_empty_full),
        cmocka_unit_test(test_wrap),          cmocka_unit_test(test_two_threads),
        cmocka_unit_test(test_two_processes),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
