/* generate.h - the one generation driver behind `run`, the compute daemon and `convert
 * --calibrate`: tokenize a prompt (one BOS rule), evaluate it on an engine, sample, apply the
 * stop rules and hand every token to a callback.
 *
 * The rules, in the order a step applies them (llama.cpp's, which the goldens were made with):
 *  1. BOS: the prompt text is tokenized with BOS added exactly when the vocabulary says so
 *     (tokenizer.ggml.add_bos_token, nf_vocab_add_bos); an empty prompt becomes [BOS].
 *  2. The context must hold the prompt and, when tokens are to be generated, one more position;
 *     it may not exceed the model's trained length (nf_gen_ctx_check, for the callers that size
 *     it).
 *  3. Each step: the cancel flag is checked; a token is sampled from the last logits, recorded,
 *     turned into its piece and passed to on_token (a nonzero return cancels); then generation
 *     stops at an end-of-generation token ("eog"), after max_tokens ("length") or when the
 *     context is full ("ctx"); otherwise the token is evaluated.
 *
 * Speculative decoding (params.draft set, off by default): after a token is sampled, a draft
 * source guesses the k tokens that follow it; the engine evaluates the token and the guesses in
 * one pass (eval_rows: every position's logits, each as a decode step would compute it), and
 * the step samples from those logits in order, exactly as plain decoding would, keeping the
 * guesses while the sampled token equals them: the first sampled token that differs (or the one
 * after the last guess) ends the step and the rejected positions are rolled back. Each sample
 * sees the logits and sampler state plain decoding gives it, so the output is the same token
 * for token, greedy or seeded. For sampling this is the standard rejection rule for a draft
 * that is a point mass (accept x with probability p(x), else draw from the residual): a draw
 * from p that lands on x accepts it, one that does not is a draw from p without x. Rule 3's
 * stops apply to every token of an accepted run as to a plain step. k adapts to the
 * acceptance: it starts at min(4, spec_max); a pass whose drafts were all accepted grows it by
 * 2, one that rejected a draft sets it to one past the drafts it accepted (1 when it rejected
 * them all), always within 1..spec_max; a step without drafts leaves it (spec_adapt,
 * tests/test_spec_adapt.c). Rejected drafts cost a verification row each, accepted ones save a
 * pass, so k follows the length of the runs the source gets right.
 *
 * All state of one sequence lives in its struct nf_gen_seq (the caller owns it, no globals), and
 * nf_gen_seq_step advances it by one token, so a caller can later interleave several sequences.
 * The engine is reached through struct nf_gen_engine: the in-RAM nf_ctx and the streaming
 * nf_stream have adapters here; a caller may bring its own (counters, sparse evaluation). */
#ifndef NF_GENERATE_H
#define NF_GENERATE_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "model.h"
#include "sampler.h"
#include "stream.h"
#include "tokenizer.h"

/* Most draft tokens one speculative step verifies. */
#define NF_GEN_SPEC_MAX 16

/* Most top logits a token event can carry. */
#define NF_GEN_TOP_LOGITS_MAX 64

/* An engine holding one sequence's KV cache. eval evaluates n tokens at positions n_past..
 * (prompt: true for the prompt batch) and leaves the last one's logits in logits(); it returns
 * 0 or a negative code (NF_ECTXFULL, -ECANCELED, a tile's pin error...). reset forgets the
 * sequence. n_ctx and n_vocab are fixed for the engine's life. */
struct nf_gen_engine {
    int (*eval)(void *ud, const int32_t *toks, int n, bool prompt);
    const float *(*logits)(void *ud); /* (n_vocab) */
    int (*n_past)(void *ud);
    void (*reset)(void *ud);
    void *ud;
    int n_ctx;
    int n_vocab;
    /* Optional (NULL: no speculative decoding): eval_rows evaluates n tokens like eval and
     * writes every one's logits (n, n_vocab), each as a one-token eval would compute it
     * (nf_ctx_eval_rows); rollback forgets the positions from n_past on. Both return 0 or a
     * negative code. */
    int (*eval_rows)(void *ud, const int32_t *toks, int n, float *logits);
    int (*rollback)(void *ud, int n_past);
};

/* Adapters for the two engines of model.h and stream.h (ud = c or s, which must outlive e). */
void nf_gen_engine_ctx(struct nf_gen_engine *e, struct nf_ctx *c);
void nf_gen_engine_stream(struct nf_gen_engine *e, struct nf_stream *s);

/* A source of draft tokens. draft writes up to max (1..NF_GEN_SPEC_MAX) guesses of the tokens
 * following ids[0..n) (the prompt and the tokens generated so far) into out and returns how
 * many (0: no guess, the step decodes plainly), or a negative code that ends the sequence with
 * an error. */
struct nf_gen_draft {
    int (*draft)(void *ud, const int32_t *ids, int n, int32_t *out, int max);
    void *ud;
};

/* Prompt lookup (spec_lookup.c): the draft is what followed the latest earlier occurrence of
 * the sequence's last ngram_max..ngram_min tokens (the longest that occurs), up to max tokens,
 * copied as an overlapping copy: where it reaches the end of the sequence it goes on with its
 * own output, so text repeating with a period p drafts max tokens, not p. Needs no model:
 * strong where the output repeats its input (extraction, edits, code) or itself. */
struct nf_gen_lookup {
    int ngram_min, ngram_max; /* clamped into 1 <= min <= max <= 8 */
};
/* Fills d to draft by prompt lookup with l (clamped here; l must outlive d). */
void nf_gen_draft_lookup(struct nf_gen_draft *d, struct nf_gen_lookup *l);

/* A draft model (spec_draft.c): a small model with the target's vocabulary, in RAM with its own
 * context c (n_ctx at least the target's), decoding greedily ahead of the target (a point-mass
 * draft). Between steps it keeps the positions the sequence still shares (accepted drafts) and
 * rolls back the rest. */
struct nf_gen_draft_model {
    struct nf_ctx *c;         /* not owned */
    const struct nf_vocab *v; /* eog tokens end a draft */
    int32_t *ids;             /* (c->n_ctx) the tokens in c's KV cache */
    int n_ids;
};
/* Fills d to draft with dm over c (which must outlive d). Returns 0 or -ENOMEM; dm needs
 * nf_gen_draft_model_free either way. */
int nf_gen_draft_model_init(struct nf_gen_draft *d, struct nf_gen_draft_model *dm, struct nf_ctx *c,
                            const struct nf_vocab *v);
void nf_gen_draft_model_free(struct nf_gen_draft_model *dm);
/* Bytes a draft model with hyperparameters hp takes besides its weights when it drafts in a
 * context of n_ctx on n_threads threads: its KV cache and scratch, its token record and the
 * target's verification rows (for the budget of `up --draft`). */
uint64_t nf_gen_draft_ctx_bytes(const struct nf_hparams *hp, int n_ctx, int n_threads);
/* The draft callback of a draft model (ud = dm). */
int nf_gen_draft_model_run(void *ud, const int32_t *ids, int n, int32_t *out, int max);
/* Whether draft can draft for target: the same tokens (count, texts, BOS and EOS). Returns 0,
 * or NF_EUSAGE with err saying the first difference. */
int nf_gen_vocab_check(const struct nf_vocab *target, const struct nf_vocab *draft, char *err,
                       size_t errlen);

/* Why a sequence stopped. */
enum nf_gen_stop {
    NF_GEN_RUNNING = 0,
    NF_GEN_STOP_EOG,    /* an end-of-generation token was sampled (it is included) */
    NF_GEN_STOP_LENGTH, /* max_tokens were generated */
    NF_GEN_STOP_CTX,    /* the context is full */
    NF_GEN_STOP_CANCEL, /* the cancel flag or on_token asked to stop */
    NF_GEN_STOP_ERROR,  /* seq->rc and seq->err say what failed */
};

/* "eog", "length", "ctx", "cancel", "error" (what `run --json` and GenerateDone report), or
 * "running". */
const char *nf_gen_stop_name(enum nf_gen_stop stop);

/* One generated token as on_token sees it (valid during the call only). */
struct nf_gen_token {
    int32_t id;
    int index;         /* 0 for the first generated token */
    const char *piece; /* (piece_len) bytes, may end inside a UTF-8 character */
    int piece_len;
    int n_top;              /* top_logits of the params, or fewer for a tiny vocabulary */
    const int32_t *top_ids; /* (n_top) highest logits of this step, highest first */
    const float *top_vals;  /* (n_top) */
    float logit;            /* the token's raw logit (before the sampler's penalties) */
    double log_sum_exp;     /* with params logprobs: log(sum(exp(all n_vocab logits))), so that
                               a logit minus it is a log-probability; else 0 */
};

struct nf_gen_params {
    int max_tokens; /* >= 0; 0 only evaluates the prompt (no sampler is made) */
    int top_logits; /* 0..NF_GEN_TOP_LOGITS_MAX logits passed with each token */
    struct nf_sampler_params sp;
    /* Optional (NULL): checked before each token; an eval that fails with -ECANCELED while it
     * is set ends the sequence as a cancel rather than an error. */
    const atomic_int *cancel;
    /* Optional (NULL): called for every generated token; a nonzero return stops the sequence
     * with NF_GEN_STOP_CANCEL (the token stays recorded). */
    int (*on_token)(void *ud, const struct nf_gen_token *t);
    void *ud;
    bool logprobs; /* fill nf_gen_token.log_sum_exp (one pass over the vocabulary per token) */
    /* Optional (NULL): speculative decoding with this source (the engine needs eval_rows and
     * rollback); spec_max bounds k (1..NF_GEN_SPEC_MAX, 0: NF_GEN_SPEC_MAX). */
    const struct nf_gen_draft *draft;
    int spec_max;
};

/* One sequence. The caller allocates it; nf_gen_seq_init fills it, nf_gen_seq_free releases
 * what it holds. The fields are read-only for the caller. */
struct nf_gen_seq {
    const struct nf_gen_engine *e;
    const struct nf_vocab *v;
    struct nf_gen_params p;
    int32_t *ids; /* (cap) the prompt, then the generated tokens */
    int cap;      /* n_prompt + the most tokens the context lets it generate */
    int n_prompt, n_gen;
    enum nf_gen_stop stop;
    int rc;           /* with NF_GEN_STOP_ERROR: the negative code */
    bool eval_failed; /* with NF_GEN_STOP_ERROR: the engine's eval returned rc */
    char err[256];    /* with NF_GEN_STOP_ERROR: one line ("evaluating token 5: ...") */
    bool prompt_done; /* the prompt has been evaluated */
    uint64_t t_start_ns, t_prompt_ns, t_end_ns; /* nf_now_ns at the first step, after the
                                                   prompt, at the stop */
    /* Speculative decoding: tokens drafted and verified, those accepted, verification passes
     * (evals of more than one token after the prompt). */
    int n_drafted, n_accepted, n_verify;
    /* Private. */
    struct nf_sampler *smp;
    char *piece; /* (piece_cap) */
    int piece_cap;
    int32_t top_ids[NF_GEN_TOP_LOGITS_MAX];
    float top_vals[NF_GEN_TOP_LOGITS_MAX];
    int spec_k;        /* drafts asked for at the next step */
    bool spec_pending; /* the last generated token is not evaluated yet */
    float *spec_rows;  /* (NF_GEN_SPEC_MAX + 1, n_vocab) logits of a verification pass */
    int32_t spec_batch[NF_GEN_SPEC_MAX + 1];
};

/* The context rule of `run`, `up -c` and so of `gen` (whose stack `up` sizes): a context longer
 * than the model's trained length n_ctx_train (context_length) is refused, as the model was
 * never trained on such positions and its output past them is garbage. Returns 0, or NF_EUSAGE
 * with err ("context 4096 is beyond the model's trained length 128 (context_length); use -c 128
 * or less"). */
int nf_gen_ctx_check(long n_ctx, int n_ctx_train, char *err, size_t errlen);

/* Tokenizes text[0..len) with the driver's BOS rule (rule 1 above; parse_special as
 * nf_tokenize) into a malloc'd array *out (freed by the caller). Returns the count (>= 1), or a
 * negative code with err set and *out NULL (NF_EUSAGE for an empty prompt when the vocabulary
 * has no BOS token). */
int nf_gen_tokenize(const struct nf_vocab *v, const char *text, size_t len, bool parse_special,
                    int32_t **out, char *err, size_t errlen);

/* Prepares q to generate from prompt (n_prompt ids, copied) on e, which must outlive q; v gives
 * the pieces and the end-of-generation tokens. Checks params and the context (rule 2: NF_ECTXFULL
 * "the prompt has N tokens but the context holds M"), allocates everything the steps need (ids
 * for at most min(max_tokens, n_ctx - n_prompt + 1) generated tokens, the sampler) and feeds
 * the prompt to the sampler's repetition window. Nothing is evaluated yet. Returns 0, or a
 * negative code with err set; q needs nf_gen_seq_free either way. */
int nf_gen_seq_init(struct nf_gen_seq *q, const struct nf_gen_engine *e, const struct nf_vocab *v,
                    const int32_t *prompt, int n_prompt, const struct nf_gen_params *p, char *err,
                    size_t errlen);

/* Advances q: the first call resets the engine and evaluates the prompt, every later one
 * generates one token (rule 3), or with speculative decoding the tokens of one verified run.
 * Returns 1 while the sequence runs, 0 once it has stopped (q->stop says why; a stopped sequence
 * stays stopped). Does not allocate except to grow the piece buffer for an unusually long piece. */
int nf_gen_seq_step(struct nf_gen_seq *q);

/* For an engine that evaluates a sequence's decode tokens later, with other sequences' (the
 * compute daemon's batched step): its eval records the token and returns 0, and when the
 * batched evaluation of tok failed with rc < 0 the caller ends q here, as a failed eval inside
 * nf_gen_seq_step would (a cancel when q's cancel flag is set and rc is -ECANCELED, else an
 * error naming tok). Returns 0. */
int nf_gen_seq_eval_failed(struct nf_gen_seq *q, int rc, int32_t tok);

/* Steps q until it stops. Returns q->rc (0 unless it stopped with NF_GEN_STOP_ERROR). */
int nf_gen_seq_run(struct nf_gen_seq *q);

void nf_gen_seq_free(struct nf_gen_seq *q);

#endif
