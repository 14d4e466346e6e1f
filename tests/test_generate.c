/* test_generate.c - the generation driver (common/generate.h) on stories260K: greedy ids equal
 * llama.cpp's goldens on the in-RAM and the streaming engine, the BOS rule, and every stop
 * reason (eog, length, ctx, cancel by callback and by flag, error) with what it leaves behind. */
#include <errno.h>
#include <math.h>
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
#include "json_mini.h"
#include "model.h"
#include "nf_err.h"
#include "nft.h"
#include "stream.h"
#include "tokenizer.h"

#define STORIES     NF_SHARED_DIR "/models/stories260K.gguf"
#define STORIES_NFT NF_SHARED_DIR "/models/stories260K.nft"
#define GOLDEN      NF_SHARED_DIR "/golden/stories260K.jsonl"
#define GPT2_VOCAB  NF_SHARED_DIR "/golden/vocab/ggml-vocab-gpt-2.gguf"
#define N_PROMPTS   3 /* golden lines checked */

struct golden {
    char *prompt;
    int32_t prompt_ids[64], gen_ids[128];
    int n_prompt, n_gen;
};

static struct nf_model *model;
static struct nf_vocab *vocab;
static struct golden gold[N_PROMPTS];

static int setup(void **state)
{
    (void)state;
    if (access(STORIES, R_OK) != 0 || access(GOLDEN, R_OK) != 0) {
        print_message("skip: %s or %s is missing\n", STORIES, GOLDEN);
        exit(77);
    }
    char err[512];
    if (nf_model_load(&model, STORIES, err, sizeof(err)) ||
        nf_vocab_load(&vocab, model->gguf, err, sizeof(err))) {
        fprintf(stderr, "%s\n", err);
        return -1;
    }
    FILE *f = fopen(GOLDEN, "r");
    if (!f)
        return -1;
    char *line = NULL;
    size_t cap = 0;
    for (int i = 0; i < N_PROMPTS; i++) {
        ssize_t len = getline(&line, &cap, f);
        struct jm_val *o = len > 0 ? jm_parse(line, (size_t)len) : NULL;
        if (!o)
            return -1;
        const struct jm_val *p = jm_get(o, "prompt"), *pi = jm_get(o, "prompt_ids"),
                            *gi = jm_get(o, "gen_ids");
        if (!p || !pi || !gi || pi->n > 64 || gi->n > 128)
            return -1;
        gold[i].prompt = strdup(p->str);
        gold[i].n_prompt = pi->n;
        gold[i].n_gen = gi->n;
        for (int k = 0; k < pi->n; k++)
            gold[i].prompt_ids[k] = (int32_t)pi->kids[k].num;
        for (int k = 0; k < gi->n; k++)
            gold[i].gen_ids[k] = (int32_t)gi->kids[k].num;
        jm_free(o);
    }
    free(line);
    fclose(f);
    return 0;
}

static int teardown(void **state)
{
    (void)state;
    for (int i = 0; i < N_PROMPTS; i++)
        free(gold[i].prompt);
    nf_vocab_free(vocab);
    nf_model_free(model);
    return 0;
}

static struct nf_gen_params greedy(int max_tokens)
{
    struct nf_gen_params p = {.max_tokens = max_tokens};
    nf_sampler_params_default(&p.sp);
    p.sp.temp = 0.0f;
    return p;
}

/* What the callback saw, and when it asks to stop. */
struct seen {
    int n, stop_at; /* stop_at: return 1 on this token's index (-1: never) */
    int32_t ids[128];
    int n_top;
    int32_t top0;
};

static int on_token(void *ud, const struct nf_gen_token *t)
{
    struct seen *s = ud;
    assert_int_equal(t->index, s->n);
    assert_true(t->piece_len >= 0);
    s->n_top = t->n_top;
    s->top0 = t->n_top ? t->top_ids[0] : -1;
    if (t->n_top) {
        assert_int_equal(t->top_ids[0], t->id); /* greedy: the token is the highest logit */
        for (int i = 1; i < t->n_top; i++)
            assert_true(t->top_vals[i] <= t->top_vals[i - 1]);
    }
    s->ids[s->n++] = t->id;
    return t->index == s->stop_at;
}

/* Every generated token is both in seq->ids and seen by the callback. */
static void check_seen(const struct nf_gen_seq *q, const struct seen *s)
{
    assert_int_equal(s->n, q->n_gen);
    assert_memory_equal(s->ids, q->ids + q->n_prompt, sizeof(int32_t) * (size_t)q->n_gen);
}

/* Greedy generation of golden prompt g on e equals llama.cpp's ids. */
static void check_golden(const struct nf_gen_engine *e, const struct golden *g, int n)
{
    char err[256];
    int32_t *ids = NULL;
    int np = nf_gen_tokenize(vocab, g->prompt, strlen(g->prompt), true, &ids, err, sizeof(err));
    assert_int_equal(np, g->n_prompt);
    assert_memory_equal(ids, g->prompt_ids, sizeof(int32_t) * (size_t)np);
    struct seen s = {.stop_at = -1};
    struct nf_gen_params p = greedy(n);
    p.top_logits = 5;
    p.on_token = on_token;
    p.ud = &s;
    struct nf_gen_seq q;
    assert_int_equal(nf_gen_seq_init(&q, e, vocab, ids, np, &p, err, sizeof(err)), 0);
    assert_int_equal(nf_gen_seq_run(&q), 0);
    assert_int_equal(q.stop, NF_GEN_STOP_LENGTH);
    assert_string_equal(nf_gen_stop_name(q.stop), "length");
    assert_int_equal(q.n_gen, n);
    assert_memory_equal(q.ids + np, g->gen_ids, sizeof(int32_t) * (size_t)n);
    assert_int_equal(s.n_top, 5);
    check_seen(&q, &s);
    nf_gen_seq_free(&q);
    free(ids);
}

static void test_golden_ctx(void **state)
{
    (void)state;
    struct nf_ctx *c;
    assert_int_equal(nf_ctx_create(&c, model, 256, 2), 0);
    struct nf_gen_engine e;
    nf_gen_engine_ctx(&e, c);
    for (int i = 0; i < N_PROMPTS; i++)
        check_golden(&e, &gold[i], gold[i].n_gen); /* the sequence is reset each time */
    nf_ctx_free(c);
}

/* With logprobs each token carries its raw logit and the log-sum-exp of the step's logits, as a
 * naive sum over the whole vocabulary (long double, no max shift) gives it. */
struct lp_seen {
    const struct nf_gen_engine *e;
    bool logprobs;
    int n;
};

static int on_token_lp(void *ud, const struct nf_gen_token *t)
{
    struct lp_seen *s = ud;
    const float *l = s->e->logits(s->e->ud); /* still this step's: eval follows the callback */
    assert_float_equal(t->logit, l[t->id], 0);
    if (!s->logprobs) {
        assert_true(t->log_sum_exp == 0.0);
    } else {
        long double sum = expl((long double)l[0]); /* > 0 */
        for (int i = 1; i < s->e->n_vocab; i++)
            sum += expl((long double)l[i]);
        assert_float_equal(t->log_sum_exp, (double)logl(sum), 1e-9);
        assert_true(t->logit - t->log_sum_exp < 0); /* a log-probability */
    }
    s->n++;
    return 0;
}

static void test_logprobs(void **state)
{
    (void)state;
    struct nf_ctx *c;
    assert_int_equal(nf_ctx_create(&c, model, 256, 2), 0);
    struct nf_gen_engine e;
    nf_gen_engine_ctx(&e, c);
    for (int on = 0; on < 2; on++) {
        struct lp_seen s = {.e = &e, .logprobs = on};
        struct nf_gen_params p = greedy(8);
        p.logprobs = on;
        p.on_token = on_token_lp;
        p.ud = &s;
        char err[256];
        struct nf_gen_seq q;
        assert_int_equal(nf_gen_seq_init(&q, &e, vocab, gold[0].prompt_ids, gold[0].n_prompt, &p,
                                         err, sizeof(err)),
                         0);
        assert_int_equal(nf_gen_seq_run(&q), 0);
        assert_int_equal(s.n, 8);
        nf_gen_seq_free(&q);
    }
    nf_ctx_free(c);
}

static void test_golden_stream(void **state)
{
    (void)state;
    if (access(STORIES_NFT, R_OK) != 0) {
        print_message("skip: %s is missing\n", STORIES_NFT);
        skip();
    }
    char err[512];
    struct nf_nft *f;
    assert_int_equal(nf_nft_open(&f, STORIES_NFT, false, err, sizeof(err)), 0);
    struct nf_tile_src src;
    assert_int_equal(nf_tile_src_file_open(&src, f, 64u << 20), 0);
    struct nf_stream_opts o = {.n_ctx = 256, .n_threads = 2};
    struct nf_stream *s;
    assert_int_equal(nf_stream_create(&s, f, &src, &o, err, sizeof(err)), 0);
    struct nf_gen_engine e;
    nf_gen_engine_stream(&e, s);
    check_golden(&e, &gold[0], 40);
    check_golden(&e, &gold[1], 40);
    nf_stream_free(s);
    nf_tile_src_file_close(&src);
    nf_nft_close(f);
}

static void test_bos_rule(void **state)
{
    (void)state;
    char err[256];
    int32_t *ids = NULL;
    /* stories260K (SPM) asks for BOS: the golden prompt ids start with it. */
    assert_true(nf_vocab_add_bos(vocab));
    int n = nf_gen_tokenize(vocab, "Once upon a time", 16, true, &ids, err, sizeof(err));
    assert_int_equal(n, gold[0].n_prompt);
    assert_int_equal(ids[0], nf_vocab_bos(vocab));
    free(ids);
    /* An empty prompt is [BOS]. */
    n = nf_gen_tokenize(vocab, "", 0, true, &ids, err, sizeof(err));
    assert_int_equal(n, 1);
    assert_int_equal(ids[0], nf_vocab_bos(vocab));
    free(ids);
    /* GPT-2's vocabulary does not ask for BOS: none is added. */
    if (access(GPT2_VOCAB, R_OK) != 0) {
        print_message("note: %s is missing, BPE case not checked\n", GPT2_VOCAB);
        return;
    }
    struct nf_gguf *g;
    struct nf_vocab *v;
    assert_int_equal(nf_gguf_open(&g, GPT2_VOCAB, err, sizeof(err)), 0);
    assert_int_equal(nf_vocab_load(&v, g, err, sizeof(err)), 0);
    assert_false(nf_vocab_add_bos(v));
    int32_t want[16];
    const int nw = nf_tokenize(v, "Hello world", 11, false, true, want, 16);
    n = nf_gen_tokenize(v, "Hello world", 11, true, &ids, err, sizeof(err));
    assert_int_equal(n, nw);
    assert_memory_equal(ids, want, sizeof(int32_t) * (size_t)n);
    free(ids);
    nf_vocab_free(v);
    nf_gguf_close(g);
}

static void test_stop_length_ctx_cancel(void **state)
{
    (void)state;
    char err[256];
    struct nf_ctx *c;
    const int n_ctx = 12;
    assert_int_equal(nf_ctx_create(&c, model, n_ctx, 2), 0);
    struct nf_gen_engine e;
    nf_gen_engine_ctx(&e, c);
    const struct golden *g = &gold[0]; /* 5 prompt tokens */
    struct nf_gen_seq q;
    struct seen s = {.stop_at = -1};
    struct nf_gen_params p = greedy(3);
    p.on_token = on_token;
    p.ud = &s;

    /* length: exactly max_tokens, then stop; the steps report running until then. */
    assert_int_equal(nf_gen_seq_init(&q, &e, vocab, g->prompt_ids, g->n_prompt, &p, err, 256), 0);
    assert_int_equal(nf_gen_seq_step(&q), 1); /* the prompt */
    assert_true(q.prompt_done);
    assert_int_equal(q.n_gen, 0);
    assert_int_equal(nf_gen_seq_step(&q), 1);
    assert_int_equal(nf_gen_seq_step(&q), 1);
    assert_int_equal(nf_gen_seq_step(&q), 0);
    assert_int_equal(q.stop, NF_GEN_STOP_LENGTH);
    assert_int_equal(nf_gen_seq_step(&q), 0); /* stays stopped */
    assert_int_equal(q.n_gen, 3);
    assert_memory_equal(q.ids + g->n_prompt, g->gen_ids, 3 * sizeof(int32_t));
    check_seen(&q, &s);
    nf_gen_seq_free(&q);

    /* ctx: a huge max_tokens reserves only what the context can hold and stops when it is
     * full: n_ctx - n_prompt + 1 tokens (every one but the last evaluated). */
    s = (struct seen){.stop_at = -1};
    p.max_tokens = 2147483647;
    assert_int_equal(nf_gen_seq_init(&q, &e, vocab, g->prompt_ids, g->n_prompt, &p, err, 256), 0);
    assert_int_equal(q.cap, n_ctx + 1);
    assert_int_equal(nf_gen_seq_run(&q), 0);
    assert_int_equal(q.stop, NF_GEN_STOP_CTX);
    assert_string_equal(nf_gen_stop_name(q.stop), "ctx");
    assert_int_equal(q.n_gen, n_ctx - g->n_prompt + 1);
    assert_int_equal(c->n_past, n_ctx);
    assert_memory_equal(q.ids + g->n_prompt, g->gen_ids, sizeof(int32_t) * (size_t)q.n_gen);
    check_seen(&q, &s);
    nf_gen_seq_free(&q);

    /* cancel by the callback: the token it was given stays recorded. */
    s = (struct seen){.stop_at = 1};
    p.max_tokens = 5;
    assert_int_equal(nf_gen_seq_init(&q, &e, vocab, g->prompt_ids, g->n_prompt, &p, err, 256), 0);
    assert_int_equal(nf_gen_seq_run(&q), 0);
    assert_int_equal(q.stop, NF_GEN_STOP_CANCEL);
    assert_string_equal(nf_gen_stop_name(q.stop), "cancel");
    assert_int_equal(q.n_gen, 2);
    check_seen(&q, &s);
    nf_gen_seq_free(&q);

    /* cancel by the flag, set before the first token: the prompt is evaluated, nothing
     * generated. */
    atomic_int flag = 1;
    s = (struct seen){.stop_at = -1};
    p.cancel = &flag;
    assert_int_equal(nf_gen_seq_init(&q, &e, vocab, g->prompt_ids, g->n_prompt, &p, err, 256), 0);
    assert_int_equal(nf_gen_seq_run(&q), 0);
    assert_int_equal(q.stop, NF_GEN_STOP_CANCEL);
    assert_int_equal(q.n_gen, 0);
    assert_int_equal(s.n, 0);
    nf_gen_seq_free(&q);
    p.cancel = NULL;

    /* The context must hold the prompt and one more position when generating. */
    assert_int_equal(nf_gen_seq_init(&q, &e, vocab, g->prompt_ids, g->n_prompt, &p, err, 256), 0);
    nf_gen_seq_free(&q);
    int32_t longp[13];
    for (int i = 0; i < 13; i++)
        longp[i] = g->gen_ids[i];
    assert_int_equal(nf_gen_seq_init(&q, &e, vocab, longp, n_ctx, &p, err, 256), NF_ECTXFULL);
    assert_non_null(
        strstr(err, "the prompt has 12 tokens and fills the context of 12: no room to generate"));
    nf_gen_seq_free(&q);
    /* ... but a prompt-only sequence may fill it. */
    struct nf_gen_params po = {.max_tokens = 0};
    assert_int_equal(nf_gen_seq_init(&q, &e, vocab, longp, n_ctx, &po, err, 256), 0);
    assert_int_equal(nf_gen_seq_run(&q), 0);
    assert_int_equal(q.stop, NF_GEN_STOP_LENGTH);
    assert_int_equal(q.n_gen, 0);
    assert_int_equal(c->n_past, n_ctx);
    nf_gen_seq_free(&q);
    assert_int_equal(nf_gen_seq_init(&q, &e, vocab, longp, n_ctx + 1, &po, err, 256), NF_ECTXFULL);
    assert_non_null(strstr(err, "the prompt has 13 tokens but the context holds 12"));
    nf_gen_seq_free(&q);
    /* The context of run and up: at most the trained length (0: unknown, not checked). */
    assert_int_equal(nf_gen_ctx_check(128, 128, err, 256), 0);
    assert_int_equal(nf_gen_ctx_check(129, 128, err, 256), NF_EUSAGE);
    assert_non_null(strstr(err, "context 129 is beyond the model's trained length 128"));
    assert_int_equal(nf_gen_ctx_check(100000, 0, err, 256), 0);
    /* Bad parameters are refused with the field named. */
    p.top_logits = NF_GEN_TOP_LOGITS_MAX + 1;
    assert_int_equal(nf_gen_seq_init(&q, &e, vocab, g->prompt_ids, 5, &p, err, 256), NF_EUSAGE);
    assert_non_null(strstr(err, "top_logits"));
    nf_gen_seq_free(&q);
    nf_ctx_free(c);
}

/* A scripted engine: the logits of step k peak on script[k]; eval fails with fail_rc on
 * evaluation number fail_at (counting the prompt as 0), setting *flag first if given (as a
 * Cancel arriving during the evaluation). */
struct fake {
    int n_vocab, n_past, evals, fail_at, fail_rc;
    const int32_t *script;
    float *logits;
    atomic_int *flag;
};

static int fake_eval(void *ud, const int32_t *toks, int n, bool prompt)
{
    struct fake *f = ud;
    assert_true(prompt == (f->evals == 0));
    (void)toks;
    if (f->evals++ == f->fail_at) {
        if (f->flag)
            atomic_store(f->flag, 1);
        return f->fail_rc;
    }
    f->n_past += n;
    for (int i = 0; i < f->n_vocab; i++)
        f->logits[i] = 0.0f;
    f->logits[f->script[f->evals - 1]] = 10.0f;
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
    struct fake *f = ud;
    f->n_past = 0;
    f->evals = 0;
}

static void test_stop_eog_error(void **state)
{
    (void)state;
    char err[256];
    const int nv = nf_vocab_n_tokens(vocab);
    const int32_t eos = nf_vocab_eos(vocab);
    assert_true(eos >= 0);
    const int32_t script[] = {300, 301, eos, 302, 303};
    struct fake f = {.n_vocab = nv, .fail_at = -1, .script = script};
    f.logits = calloc((size_t)nv, sizeof(float));
    assert_non_null(f.logits);
    const struct nf_gen_engine e = {.eval = fake_eval,
                                    .logits = fake_logits,
                                    .n_past = fake_n_past,
                                    .reset = fake_reset,
                                    .ud = &f,
                                    .n_ctx = 64,
                                    .n_vocab = nv};
    const int32_t prompt[] = {1, 403};
    struct nf_gen_params p = greedy(10);
    struct nf_gen_seq q;

    /* eog: the end-of-generation token is included and ends the sequence. */
    assert_int_equal(nf_gen_seq_init(&q, &e, vocab, prompt, 2, &p, err, sizeof(err)), 0);
    assert_int_equal(nf_gen_seq_run(&q), 0);
    assert_int_equal(q.stop, NF_GEN_STOP_EOG);
    assert_string_equal(nf_gen_stop_name(q.stop), "eog");
    assert_int_equal(q.n_gen, 3);
    assert_int_equal(q.ids[2], 300);
    assert_int_equal(q.ids[3], 301);
    assert_int_equal(q.ids[4], eos);
    nf_gen_seq_free(&q);

    /* error while evaluating a generated token: its id and the code are reported. */
    f.fail_at = 2;
    f.fail_rc = -EIO;
    assert_int_equal(nf_gen_seq_init(&q, &e, vocab, prompt, 2, &p, err, sizeof(err)), 0);
    assert_int_equal(nf_gen_seq_run(&q), -EIO);
    assert_int_equal(q.stop, NF_GEN_STOP_ERROR);
    assert_true(q.eval_failed);
    assert_int_equal(q.n_gen, 2);
    assert_non_null(strstr(q.err, "evaluating token 301"));
    nf_gen_seq_free(&q);

    /* error in the prompt. */
    f.fail_at = 0;
    assert_int_equal(nf_gen_seq_init(&q, &e, vocab, prompt, 2, &p, err, sizeof(err)), 0);
    assert_int_equal(nf_gen_seq_run(&q), -EIO);
    assert_int_equal(q.n_gen, 0);
    assert_non_null(strstr(q.err, "evaluating the prompt"));
    nf_gen_seq_free(&q);

    /* -ECANCELED while the flag is set is a cancel; without the flag, an error. */
    atomic_int flag = 0;
    f.fail_at = 1;
    f.fail_rc = -ECANCELED;
    assert_int_equal(nf_gen_seq_init(&q, &e, vocab, prompt, 2, &p, err, sizeof(err)), 0);
    assert_int_equal(nf_gen_seq_run(&q), -ECANCELED);
    assert_int_equal(q.stop, NF_GEN_STOP_ERROR);
    nf_gen_seq_free(&q);
    p.cancel = &flag;
    f.flag = &flag;
    assert_int_equal(nf_gen_seq_init(&q, &e, vocab, prompt, 2, &p, err, sizeof(err)), 0);
    assert_int_equal(nf_gen_seq_step(&q), 1); /* the prompt */
    assert_int_equal(nf_gen_seq_step(&q), 0); /* token 300, its eval cancelled */
    assert_int_equal(q.stop, NF_GEN_STOP_CANCEL);
    assert_int_equal(q.rc, 0);
    assert_int_equal(q.n_gen, 1);
    nf_gen_seq_free(&q);
    free(f.logits);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_bos_rule),       cmocka_unit_test(test_golden_ctx),
        cmocka_unit_test(test_golden_stream),  cmocka_unit_test(test_stop_length_ctx_cancel),
        cmocka_unit_test(test_stop_eog_error), cmocka_unit_test(test_logprobs),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
