/* test_seqlock.c - the seqlock of shm/seqlock.h and the activation / used-set slots built on it:
 * the protocol step by step, then a writer thread publishing while reader threads copy, every
 * accepted copy checked whole (no torn slot) and the retries counted. */
#include <pthread.h>
#include <sched.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "seqlock.h"
#include "stack.h"

#define N_READERS 2
#define N_WORDS   64    /* data words of the generic block: a copy takes a while */
#define N_EMBD    256   /* floats of the activation slot */
#define N_GROUPS  300   /* bits of the used slot (5 words, the last partial) */
#define N_READS   20000 /* whole copies each reader makes at least */
#define N_WRITES                                                                     \
    20000 /* writes the writer makes at least; each side goes on until both are done \
           */

/* A block guarded by a seqlock: write k stores k into every word, so its sequence is 2k. */
struct block {
    _Atomic uint64_t seq;
    uint64_t data[N_WORDS];
};

static void test_protocol(void **state)
{
    (void)state;
    struct block b = {0};
    /* Never written: 0, and a copy of the zeroes is whole. */
    uint64_t r = nf_seqlock_read_begin(&b.seq);
    assert_true(r == 0);
    assert_false(nf_seqlock_read_retry(&b.seq, r));
    /* A writer inside: the sequence is odd and a copy begun then must be retried. */
    uint64_t w = nf_seqlock_write_begin(&b.seq);
    assert_true(w == 0);
    uint64_t r_odd = nf_seqlock_read_begin(&b.seq);
    assert_true(r_odd == 1);
    assert_true(nf_seqlock_peek(&b.seq) == 1);
    b.data[0] = 1;
    nf_seqlock_write_end(&b.seq, w);
    assert_true(nf_seqlock_read_retry(&b.seq, r_odd));
    /* A copy begun before the write and checked after it must be retried too. */
    assert_true(nf_seqlock_read_retry(&b.seq, r));
    /* Stable: the copy stands. */
    r = nf_seqlock_read_begin(&b.seq);
    assert_true(r == 2);
    assert_true(b.data[0] == 1);
    assert_false(nf_seqlock_read_retry(&b.seq, r));
    /* A writer entering after a stable begin invalidates the copy. */
    w = nf_seqlock_write_begin(&b.seq);
    assert_true(w == 2);
    assert_true(nf_seqlock_read_retry(&b.seq, r));
    nf_seqlock_write_end(&b.seq, w);
    assert_true(nf_seqlock_read_begin(&b.seq) == 4);
}

/* Shared by the writer and reader threads of one run. */
struct run {
    struct block *b;
    struct nf_act_slot *act;
    struct nf_used_slot *used;
    uint32_t words;          /* of the used bitmap */
    _Atomic int started;     /* readers running: the writer waits for all of them */
    _Atomic int done;        /* every reader has finished: the writer may stop */
    _Atomic uint64_t writes; /* what the writer has published */
};

/* What a reader saw. */
struct seen {
    struct run *run;
    uint64_t reads, retries, torn, stale, busy;
};

/* Writer: waits until every reader runs, so that they overlap it. */
static void wait_readers(struct run *run)
{
    while (atomic_load(&run->started) < N_READERS)
        sched_yield();
}

/* Writer: a short pause between writes (as compute between layers) without giving up the CPU,
 * so that readers find windows to copy in (never starved) and the writer is not starved either. */
static void gap(void)
{
    for (volatile int i = 0; i < 256; i++)
        ;
}

static void *block_writer(void *arg)
{
    struct run *run = arg;
    wait_readers(run);
    for (uint64_t k = 1; k <= N_WRITES || !atomic_load(&run->done); k++) {
        uint64_t sn = nf_seqlock_write_begin(&run->b->seq);
        for (int i = 0; i < N_WORDS; i++)
            __atomic_store_n(&run->b->data[i], k, __ATOMIC_RELAXED);
        nf_seqlock_write_end(&run->b->seq, sn);
        atomic_store_explicit(&run->writes, k, memory_order_relaxed);
        gap();
    }
    return NULL;
}

static void *block_reader(void *arg)
{
    struct seen *s = arg;
    struct block *b = s->run->b;
    uint64_t copy[N_WORDS], last = 0;
    atomic_fetch_add(&s->run->started, 1);
    while (s->reads < N_READS || atomic_load(&s->run->writes) < N_WRITES) {
        uint64_t sn;
        for (;;) {
            sn = nf_seqlock_read_begin(&b->seq);
            for (int i = 0; i < N_WORDS; i++) /* relaxed atomics: see seqlock.h */
                copy[i] = __atomic_load_n(&b->data[i], __ATOMIC_RELAXED);
            if (!nf_seqlock_read_retry(&b->seq, sn))
                break;
            s->retries++;
        }
        s->reads++;
        /* Whole: every word is the write the sequence names; and never older than before. */
        for (int i = 0; i < N_WORDS; i++)
            if (copy[i] != sn / 2)
                s->torn++;
        if (sn / 2 < last)
            s->stale++;
        last = sn / 2;
    }
    return NULL;
}

/* Runs writer against N_READERS readers and checks what they saw. */
static void run_threads(struct run *run, void *(*writer)(void *), void *(*reader)(void *),
                        const char *what)
{
    struct seen seen[N_READERS];
    pthread_t rt[N_READERS], wt;
    for (int i = 0; i < N_READERS; i++) {
        seen[i] = (struct seen){.run = run};
        assert_int_equal(pthread_create(&rt[i], NULL, reader, &seen[i]), 0);
    }
    assert_int_equal(pthread_create(&wt, NULL, writer, run), 0);
    for (int i = 0; i < N_READERS; i++)
        assert_int_equal(pthread_join(rt[i], NULL), 0);
    atomic_store(&run->done, 1);
    assert_int_equal(pthread_join(wt, NULL), 0);
    uint64_t reads = 0, retries = 0, busy = 0;
    for (int i = 0; i < N_READERS; i++) {
        assert_true(seen[i].torn == 0);
        assert_true(seen[i].stale == 0);
        reads += seen[i].reads;
        retries += seen[i].retries;
        busy += seen[i].busy;
    }
    printf("%s: %llu writes, %d readers, %llu whole copies, %llu retries, %llu gave up (writer "
           "busy)\n",
           what, (unsigned long long)atomic_load(&run->writes), N_READERS,
           (unsigned long long)reads, (unsigned long long)retries, (unsigned long long)busy);
    assert_true(reads >= (uint64_t)N_READERS * N_READS);
    assert_true(atomic_load(&run->writes) >= N_WRITES);
}

static void test_block_threads(void **state)
{
    (void)state;
    struct block *b = calloc(1, sizeof(*b));
    assert_non_null(b);
    struct run run = {.b = b};
    run_threads(&run, block_writer, block_reader, "block");
    assert_true(nf_seqlock_peek(&b->seq) == 2 * atomic_load(&run.writes));
    free(b);
}

/* Publication k: step k, layer k % 7, every float k, every used word k's pattern. */
static uint64_t pattern(uint64_t k, uint32_t w)
{
    return (k * 0x9e3779b97f4a7c15ull) ^ w;
}

static void *slot_writer(void *arg)
{
    struct run *run = arg;
    float x[N_EMBD];
    uint64_t bits[(N_GROUPS + 63) / 64];
    wait_readers(run);
    for (uint64_t k = 1; k <= N_WRITES || !atomic_load(&run->done); k++) {
        for (int i = 0; i < N_EMBD; i++)
            x[i] = (float)k;
        for (uint32_t w = 0; w < run->words; w++)
            bits[w] = pattern(k, w);
        nf_act_slot_publish(run->act, k, (uint32_t)(k % 7), x, N_EMBD);
        nf_used_slot_publish(run->used, k, (uint32_t)(k % 7), bits, N_GROUPS);
        atomic_store_explicit(&run->writes, k, memory_order_relaxed);
        gap();
    }
    return NULL;
}

static void *slot_reader(void *arg)
{
    struct seen *s = arg;
    struct run *run = s->run;
    float x[N_EMBD];
    uint64_t bits[(N_GROUPS + 63) / 64 + 1]; /* one word more than the slot: zero-filled */
    uint64_t last_act = 0, last_used = 0;
    atomic_fetch_add(&run->started, 1);
    /* The slots are read only once written (a 0 sequence means never). */
    while (nf_seqlock_peek(&run->used->seq) == 0) /* nothing to read before */
        sched_yield();
    while (s->reads < N_READS || atomic_load(&run->writes) < N_WRITES) {
        uint64_t step, step_u;
        uint32_t layer, n, groups;
        /* One try at a time (as the fetcher reads), counting the retries. */
        uint64_t sn;
        while ((sn = nf_act_slot_read(run->act, 1, &step, &layer, &n, x, N_EMBD)) == 0)
            s->retries++;
        s->reads++;
        if (step != sn / 2 || layer != step % 7 || n != N_EMBD)
            s->torn++;
        for (int i = 0; i < N_EMBD; i++)
            if (x[i] != (float)step)
                s->torn++;
        if (step < last_act)
            s->stale++;
        last_act = step;

        /* Up to 64 tries (as the predictor reads), counting the reads that gave up. */
        sn = nf_used_slot_read(run->used, 64, &step_u, &groups, bits, run->words + 1);
        if (sn == 0) {
            s->busy++; /* the writer was inside at every try */
            continue;
        }
        s->reads++;
        if (groups != N_GROUPS || step_u != sn / 2 || bits[run->words] != 0)
            s->torn++;
        for (uint32_t w = 0; w < run->words; w++)
            if (bits[w] != pattern(step_u, w))
                s->torn++;
        if (step_u < last_used)
            s->stale++;
        last_used = step_u;
    }
    return NULL;
}

static void test_slot_threads(void **state)
{
    (void)state;
    struct run run = {.words = (N_GROUPS + 63) / 64};
    run.act =
        aligned_alloc(64, 64 * ((sizeof(struct nf_act_slot) + N_EMBD * sizeof(float)) / 64 + 1));
    run.used = aligned_alloc(64, 64 * ((sizeof(struct nf_used_slot) + run.words * 8) / 64 + 1));
    assert_non_null(run.act);
    assert_non_null(run.used);
    atomic_init(&run.act->seq, 0);
    atomic_init(&run.used->seq, 0);
    /* Never written: nothing to read. */
    uint64_t step;
    uint32_t layer, n;
    assert_true(nf_act_slot_read(run.act, 3, &step, &layer, &n, NULL, 0) == 0);
    run_threads(&run, slot_writer, slot_reader, "act/used slots");
    /* The last publication, read alone. */
    float x[N_EMBD];
    assert_true(nf_act_slot_read(run.act, 1, &step, &layer, &n, x, N_EMBD) ==
                2 * atomic_load(&run.writes));
    assert_true(step == atomic_load(&run.writes) && layer == atomic_load(&run.writes) % 7 &&
                n == N_EMBD);
    assert_true(x[0] == (float)atomic_load(&run.writes) &&
                x[N_EMBD - 1] == (float)atomic_load(&run.writes));
    /* Another width: the header is read, the vector is not copied. */
    x[0] = -1;
    assert_true(nf_act_slot_read(run.act, 1, &step, &layer, &n, x, N_EMBD - 1) != 0);
    assert_true(n == N_EMBD && x[0] == -1);
    /* A reader meeting the writer inside gives up after its tries. */
    uint64_t sn = nf_seqlock_write_begin(&run.act->seq);
    assert_true(nf_act_slot_read(run.act, 2, &step, &layer, &n, x, N_EMBD) == 0);
    nf_seqlock_write_end(&run.act->seq, sn);
    free(run.act);
    free(run.used);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_protocol),
        cmocka_unit_test(test_block_threads),
        cmocka_unit_test(test_slot_threads),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
