/* gen_output.h - the output of a generation shared by `run` and `gen`: JSON Lines objects per
 * token and the final summary, and reading a prompt file. */
#ifndef NF_GEN_OUTPUT_H
#define NF_GEN_OUTPUT_H

#include <stddef.h>
#include <stdint.h>
#include <stdbool.h>
#include <stdio.h>

#include "nf_file.h" /* nf_read_file, for the prompt file */
#include "sampler.h"

/* Writes bytes as a JSON string: valid UTF-8 passes through, bytes that are not part of a valid
 * sequence become \u00XX, quotes, backslashes and control characters are escaped. */
void nf_json_str(FILE *f, const unsigned char *s, size_t n);
/* Writes [a,b,...]. */
void nf_json_ids(FILE *f, const int32_t *ids, int n);

/* One token's line: {"id","piece","hex"[,"top_logits":[[id,logit],...]]} (top_logits when
 * k > 0; top_ids/top_vals hold the k highest logits, highest first). */
void nf_gen_token_json(FILE *f, int32_t tok, const char *piece, int plen, int k,
                       const int32_t *top_ids, const float *top_vals);

/* Members of the summary after "seed", each optional. */
struct nf_gen_summary_extra {
    int n_ctx;   /* > 0: "n_ctx", the context length (stop "ctx": it is full) */
    bool queued; /* `gen`: "queue_wait_s" and "queued_ahead" from compute's reply */
    double queue_wait_s;
    unsigned queued_ahead;
    const char *note; /* NULL or "": none; else "note" (e.g. n_predict clamped by compute) */
    /* Speculative decoding was on: "drafted", "accepted" and "accept_rate" (accepted /
     * drafted, 0 when nothing was drafted). */
    bool spec;
    long drafted, accepted;
};

/* The final summary line of --json output (x may be NULL). */
void nf_gen_summary_json(FILE *f, const int32_t *prompt_ids, int n_prompt, const int32_t *gen_ids,
                         int n_gen, const char *text, size_t text_len, double prompt_tok_s,
                         double decode_tok_s, const char *stop, uint64_t seed,
                         const struct nf_gen_summary_extra *x);

/* Says on stderr that the generation of `nanoflowctl cmd` stopped at a full context: "context
 * full after N tokens (n_ctx M); use RAISE to raise it", or, when n_ctx is already the model's
 * trained length n_ctx_train, that it cannot be raised. The same line for `run` and `gen`. */
void nf_gen_ctx_full_note(const char *cmd, int n_gen, int n_ctx, int n_ctx_train,
                          const char *raise);

/* The --help lines of the sampling flags nf_sampling_flag() parses, but --seed (whose default
 * each command words itself). */
#define NF_SAMPLING_HELP                                                                 \
    "      --temp T            temperature; 0 = greedy (default: 0.8)\n"                 \
    "      --top-k K           keep the K most likely tokens, 0 = off (default: 40)\n"   \
    "      --top-p P           nucleus filter, 1 = off (default: 0.95)\n"                \
    "      --min-p M           drop tokens below M x the top probability, 0 = off\n"     \
    "                          (default: 0.05)\n"                                        \
    "      --repeat-penalty R  penalty on the last 64 tokens, 1 = off (default: 1.0)\n"  \
    "      --presence-penalty P  subtract P from the logit of every token seen in the\n" \
    "                          last 64, -2..2, 0 = off (default: 0.0)\n"                 \
    "      --frequency-penalty F  subtract F x its count in the last 64 from a\n"        \
    "                          token's logit, -2..2, 0 = off (default: 0.0)\n"

/* Parses argv[*i] if it is one of the sampling flags `run` and `gen` share (--temp, --top-k,
 * --top-p, --min-p, --repeat-penalty, --presence-penalty, --frequency-penalty, --seed/-s), with the
 * same ranges in both, into sp
 * (*seed_set becomes true for a seed), advancing *i past its value. Returns 1 when the flag was
 * consumed, 0 when argv[*i] is not a sampling flag, or -1 after printing a usage error. */
int nf_sampling_flag(const char *cmd, int argc, char **argv, int *i, struct nf_sampler_params *sp,
                     bool *seed_set);

#endif
