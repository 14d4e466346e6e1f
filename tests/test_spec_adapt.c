/* test_spec_adapt.c - how many drafts speculative decoding asks for (k, common/generate.c): it
 * starts at min(4, spec_max), grows by 2 after a pass whose drafts were all accepted, falls to
 * one past the accepted drafts after a rejection (1 when all were rejected), stays within
 * 1..spec_max and is left alone by a step without drafts. A scripted engine (every position's
 * logits a point mass on a known token) and a scripted draft source record the k of every
 * step, so the rule is checked without a model; the output must stay the engine's tokens. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

#include "generate.h"
#include "gguf.h"
#include "tokenizer.h"

#define STORIES  NF_SHARED_DIR "/models/stories260K.gguf"
#define N_VOCAB  512 /* stories260K's: the vocabulary gives the pieces and the eog tokens */
#define N_CTX    4096
#define MAX_STEP 256

static struct nf_vocab *vocab;

/* The token the scripted model predicts after n tokens: never an eog token (0..2). */
static int32_t target(int n)
{
    return 10 + (int32_t)((n * 7u + 3u) % 400u);
}

/* --- the scripted engine: n_past tokens evaluated, logits a point mass on target(n_past) --- */

struct fake {
    int n_past;
    float logits[N_VOCAB];
};

static void point(float *row, int32_t tok)
{
    for (int i = 0; i < N_VOCAB; i++)
        row[i] = 0.0f;
    row[tok] = 10.0f;
}

static int fake_eval(void *ud, const int32_t *toks, int n, bool prompt)
{
    (void)toks;
    (void)prompt;
    struct fake *f = ud;
    f->n_past += n;
    point(f->logits, target(f->n_past));
    return 0;
}

static const float *fake_logits(void *ud)
{
    return ((struct fake *)ud)->logits;
}

static int fake_n_past(void *ud)
{
    return ((struct fake *)ud)->n_past;
}

static void fake_reset(void *ud)
{
    ((struct fake *)ud)->n_past = 0;
}

static int fake_eval_rows(void *ud, const int32_t *toks, int n, float *logits)
{
    (void)toks;
    struct fake *f = ud;
    for (int j = 0; j < n; j++)
        point(logits + (size_t)j * N_VOCAB, target(f->n_past + j + 1));
    f->n_past += n;
    point(f->logits, target(f->n_past));
    return 0;
}

static int fake_rollback(void *ud, int n_past)
{
    struct fake *f = ud;
    if (n_past > f->n_past)
        return -22;
    f->n_past = n_past;
    point(f->logits, target(n_past));
    return 0;
}

/* --- the scripted draft source: step s drafts good[s] right tokens, then wrong ones --------- */

struct script {
    int good[MAX_STEP];  /* per step: right drafts before the first wrong one (-1: all right) */
    int count[MAX_STEP]; /* per step: drafts offered (-1: as many as asked) */
    int asked[MAX_STEP]; /* recorded: the max each step asked for */
    int n_steps;
};

static int script_draft(void *ud, const int32_t *ids, int n, int32_t *out, int max)
{
    struct script *s = ud;
    assert_true(s->n_steps < MAX_STEP);
    const int step = s->n_steps++;
    s->asked[step] = max;
    const int nd = s->count[step] < 0 || s->count[step] > max ? max : s->count[step];
    for (int i = 0; i < nd; i++) {
        const bool right = s->good[step] < 0 || i < s->good[step];
        out[i] = right ? target(n + i) : target(n + i) + 1;
    }
    (void)ids;
    return nd;
}

/* Runs a sequence of n_gen tokens from a one-token prompt with spec_max, drafting by s; checks
 * that the tokens are the scripted model's. */
static void run(struct script *s, int spec_max, int n_gen)
{
    struct fake f = {0};
    struct nf_gen_engine e = {.eval = fake_eval,
                              .logits = fake_logits,
                              .n_past = fake_n_past,
                              .reset = fake_reset,
                              .ud = &f,
                              .n_ctx = N_CTX,
                              .n_vocab = N_VOCAB,
                              .eval_rows = fake_eval_rows,
                              .rollback = fake_rollback};
    struct nf_gen_draft d = {.draft = script_draft, .ud = s};
    struct nf_gen_params p = {.max_tokens = n_gen, .draft = &d, .spec_max = spec_max};
    nf_sampler_params_default(&p.sp);
    p.sp.temp = 0.0f;
    const int32_t prompt[1] = {1};
    struct nf_gen_seq q;
    char err[256];
    assert_int_equal(nf_gen_seq_init(&q, &e, vocab, prompt, 1, &p, err, sizeof(err)), 0);
    assert_int_equal(nf_gen_seq_run(&q), 0);
    assert_int_equal(q.stop, NF_GEN_STOP_LENGTH);
    assert_int_equal(q.n_gen, n_gen);
    for (int i = 0; i < n_gen; i++)
        assert_int_equal(q.ids[1 + i], target(1 + i));
    nf_gen_seq_free(&q);
}

static void script_init(struct script *s)
{
    memset(s, 0, sizeof(*s));
    for (int i = 0; i < MAX_STEP; i++)
        s->good[i] = s->count[i] = -1;
}

/* All accepted grows k by 2 up to spec_max; all rejected drops it to 1; a partial acceptance
 * to one past what was accepted. */
static void test_grow_shrink(void **state)
{
    (void)state;
    struct script s;
    script_init(&s);
    s.good[3] = 0; /* step 3: every draft rejected */
    s.good[6] = 2; /* step 6: two accepted, then a rejection */
    run(&s, 0, 200);
    const int want[] = {4, 6, 8, 10, 1, 3, 5, 3, 5, 7, 9, 11, 13, 15, 16, 16, 16};
    const int n_want = (int)(sizeof(want) / sizeof(want[0]));
    assert_true(s.n_steps >= n_want);
    for (int i = 0; i < n_want; i++) {
        if (s.asked[i] != want[i])
            print_message("step %d asked for %d drafts, expected %d\n", i, s.asked[i], want[i]);
        assert_int_equal(s.asked[i], want[i]);
    }
}

/* Repeated rejections keep k at its floor of 1; spec_max bounds the start and the growth. */
static void test_bounds(void **state)
{
    (void)state;
    struct script s;
    script_init(&s);
    for (int i = 0; i < 20; i++)
        s.good[i] = 0;
    run(&s, 0, 30);
    assert_int_equal(s.asked[0], 4);
    for (int i = 1; i < 20; i++)
        assert_int_equal(s.asked[i], 1);
    script_init(&s);
    run(&s, 3, 40);
    for (int i = 0; i < s.n_steps; i++)
        assert_true(s.asked[i] >= 1 && s.asked[i] <= 3);
    assert_int_equal(s.asked[0], 3);
    assert_int_equal(s.asked[1], 3);
}

/* A source that offers fewer drafts than asked, all accepted, still grows k from what was asked;
 * a step without drafts (a plain decode step) leaves k alone. */
static void test_short_and_empty(void **state)
{
    (void)state;
    struct script s;
    script_init(&s);
    s.count[0] = 2; /* 2 of 4 offered, both accepted: k 6 */
    s.count[1] = 0; /* nothing offered: k stays 6 */
    s.count[2] = 0;
    run(&s, 0, 40);
    assert_int_equal(s.asked[0], 4);
    assert_int_equal(s.asked[1], 6);
    assert_int_equal(s.asked[2], 6);
    assert_int_equal(s.asked[3], 6);
    assert_int_equal(s.asked[4], 8);
}

static int setup(void **state)
{
    (void)state;
    if (access(STORIES, R_OK) != 0) {
        print_message("skip: %s is missing\n", STORIES);
        exit(77);
    }
    struct nf_gguf *g = NULL;
    char err[512];
    if (nf_gguf_open(&g, STORIES, err, sizeof(err)) < 0 ||
        nf_vocab_load(&vocab, g, err, sizeof(err)) < 0) {
        fprintf(stderr, "%s\n", err);
        return -1;
    }
    nf_gguf_close(g);
    return nf_vocab_n_tokens(vocab) == N_VOCAB ? 0 : -1;
}

static int teardown(void **state)
{
    (void)state;
    nf_vocab_free(vocab);
    return 0;
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_grow_shrink),
        cmocka_unit_test(test_bounds),
        cmocka_unit_test(test_short_and_empty),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
