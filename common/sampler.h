/* sampler.h - picking the next token from logits: greedy, or filtered and seeded sampling.
 *
 * Semantics follow llama.cpp's default sampler chain: the penalties over the last N accepted
 * tokens (repetition, then frequency and presence, in one step as llama.cpp's penalties
 * sampler, first in its chain), then top-k, top-p, min-p (on the untempered distribution), then
 * temperature and a draw from the softmax. temp <= 0 is greedy: the penalized argmax (lowest id on
 * ties). The random stream is xoshiro256** seeded through splitmix64, so a seed fixes the output.
 */
#ifndef NF_SAMPLER_H
#define NF_SAMPLER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct nf_sampler_params {
    float temp;           /* <= 0: greedy */
    int top_k;            /* <= 0: off */
    float top_p;          /* >= 1: off */
    float min_p;          /* <= 0: off */
    float repeat_penalty; /* 1: off; positive logits are divided, negative multiplied */
    int repeat_last_n;    /* how many recent tokens the penalties look at (0: off) */
    uint64_t seed;
    /* Additive penalties (OpenAI's and llama.cpp's): a token seen count > 0 times among the last
     * repeat_last_n loses count * frequency_penalty + presence_penalty from its logit. 0: off. */
    float presence_penalty;
    float frequency_penalty;
};

/* llama.cpp's defaults: temp 0.8, top-k 40, top-p 0.95, min-p 0.05, penalty 1.0 over 64, seed 0,
 * presence and frequency penalties 0. */
void nf_sampler_params_default(struct nf_sampler_params *p);

/* The accepted range of every parameter (the same `run`, `gen` and the compute daemon use). */
#define NF_SAMPLER_TEMP_MAX        100.0f
#define NF_SAMPLER_TOP_K_MAX       (1 << 24)
#define NF_SAMPLER_PENALTY_MIN     0.01f
#define NF_SAMPLER_PENALTY_MAX     100.0f
#define NF_SAMPLER_LAST_N_MAX      4096
#define NF_SAMPLER_ADD_PENALTY_MAX 2.0f /* presence and frequency: -2..2, OpenAI's range */

/* Checks every field of p against its range (temp 0..100, top_k 0..2^24, top_p and min_p 0..1,
 * repeat_penalty 0.01..100, repeat_last_n 0..4096, presence_penalty and frequency_penalty -2..2;
 * NaN is out of every range). Returns 0, or NF_EUSAGE with err naming the field, its value and
 * the expected range. */
int nf_sampler_params_check(const struct nf_sampler_params *p, char *err, size_t errlen);

struct nf_sampler;

/* Allocates a sampler for a vocabulary of n_vocab tokens (all the memory sampling needs).
 * Returns 0, -ENOMEM, or NF_EUSAGE for out-of-range parameters. */
int nf_sampler_create(struct nf_sampler **out, const struct nf_sampler_params *p, int n_vocab);
void nf_sampler_free(struct nf_sampler *s);

/* Records a token of the sequence (prompt or generated) for the penalties. */
void nf_sampler_accept(struct nf_sampler *s, int32_t tok);

/* Picks a token from logits (n_vocab values, not modified). Never allocates. */
int32_t nf_sampler_sample(struct nf_sampler *s, const float *logits);

/* Writes into out (n_vocab) the logits after the penalties, the first step of
 * nf_sampler_sample (exposed for tests). Never allocates. */
void nf_sampler_penalized(struct nf_sampler *s, const float *logits, float *out);

/* log(sum(exp(logits[i]))) over logits[0..n) (n >= 1), computed around the maximum so that it
 * neither overflows nor underflows: logits[i] minus it is token i's log-probability. */
double nf_log_sum_exp(const float *logits, int n);

/* The k highest of logits[0..n_vocab) in decreasing order (ties: the lower id first), into
 * ids (k) and vals (k), by partial insertion (k is small: cost O(n_vocab * k) worst case).
 * Returns how many were written: min(k, n_vocab), 0 for k <= 0. */
int nf_top_logits(const float *logits, int n_vocab, int k, int32_t *ids, float *vals);

/* The next raw value of the sampler's generator (exposed for tests). */
uint64_t nf_sampler_rand(struct nf_sampler *s);

#endif
