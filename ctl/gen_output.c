/* gen_output.c - JSON Lines output of a generation (shared by `run` and `gen`), prompt files. */
#include "cmds.h"
#include "gen_output.h"

#include <errno.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

void nf_json_str(FILE *f, const unsigned char *s, size_t n)
{
    fputc('"', f);
    for (size_t i = 0; i < n;) {
        unsigned c = s[i];
        size_t len = c < 0x80             ? 1
                     : (c & 0xE0) == 0xC0 ? 2
                     : (c & 0xF0) == 0xE0 ? 3
                     : (c & 0xF8) == 0xF0 ? 4
                                          : 0;
        bool ok = len > 0 && i + len <= n && !(len == 2 && c < 0xC2);
        for (size_t k = 1; ok && k < len; k++)
            ok = (s[i + k] & 0xC0) == 0x80;
        if (!ok) {
            fprintf(f, "\\u%04x", c);
            i++;
            continue;
        }
        if (len > 1)
            fwrite(s + i, 1, len, f);
        else if (c == '"' || c == '\\')
            fprintf(f, "\\%c", c);
        else if (c == '\n')
            fputs("\\n", f);
        else if (c == '\t')
            fputs("\\t", f);
        else if (c == '\r')
            fputs("\\r", f);
        else if (c < 0x20 || c == 0x7F)
            fprintf(f, "\\u%04x", c);
        else
            fputc((int)c, f);
        i += len;
    }
    fputc('"', f);
}

void nf_json_ids(FILE *f, const int32_t *ids, int n)
{
    fputc('[', f);
    for (int i = 0; i < n; i++)
        fprintf(f, "%s%d", i ? "," : "", ids[i]);
    fputc(']', f);
}

void nf_gen_token_json(FILE *f, int32_t tok, const char *piece, int plen, int k,
                       const int32_t *top_ids, const float *top_vals)
{
    fprintf(f, "{\"id\":%d,\"piece\":", tok);
    nf_json_str(f, (const unsigned char *)piece, (size_t)plen);
    fprintf(f, ",\"hex\":\"");
    for (int i = 0; i < plen; i++)
        fprintf(f, "%02x", (unsigned char)piece[i]);
    fputc('"', f);
    if (k > 0) {
        fprintf(f, ",\"top_logits\":[");
        for (int i = 0; i < k; i++)
            fprintf(f, "%s[%d,%.6f]", i ? "," : "", top_ids[i], top_vals[i]);
        fputc(']', f);
    }
    fprintf(f, "}\n");
}

void nf_gen_summary_json(FILE *f, const int32_t *prompt_ids, int n_prompt, const int32_t *gen_ids,
                         int n_gen, const char *text, size_t text_len, double prompt_tok_s,
                         double decode_tok_s, const char *stop, uint64_t seed,
                         const struct nf_gen_summary_extra *x)
{
    fprintf(f, "{\"prompt_ids\":");
    nf_json_ids(f, prompt_ids, n_prompt);
    fprintf(f, ",\"gen_ids\":");
    nf_json_ids(f, gen_ids, n_gen);
    fprintf(f, ",\"text\":");
    nf_json_str(f, (const unsigned char *)text, text_len);
    fprintf(f,
            ",\"prompt_tokens\":%d,\"gen_tokens\":%d,\"prompt_tok_s\":%.3f,"
            "\"decode_tok_s\":%.3f,\"stop\":\"%s\",\"seed\":%llu",
            n_prompt, n_gen, prompt_tok_s, decode_tok_s, stop, (unsigned long long)seed);
    if (x && x->n_ctx > 0)
        fprintf(f, ",\"n_ctx\":%d", x->n_ctx);
    if (x && x->queued)
        fprintf(f, ",\"queue_wait_s\":%.3f,\"queued_ahead\":%u", x->queue_wait_s, x->queued_ahead);
    if (x && x->spec)
        fprintf(f, ",\"drafted\":%ld,\"accepted\":%ld,\"accept_rate\":%.3f", x->drafted,
                x->accepted, x->drafted ? (double)x->accepted / (double)x->drafted : 0.0);
    if (x && x->note && x->note[0]) {
        fprintf(f, ",\"note\":");
        nf_json_str(f, (const unsigned char *)x->note, strlen(x->note));
    }
    fprintf(f, "}\n");
}

void nf_gen_ctx_full_note(const char *cmd, int n_gen, int n_ctx, int n_ctx_train, const char *raise)
{
    if (n_ctx_train > 0 && n_ctx >= n_ctx_train)
        fprintf(stderr,
                "nanoflowctl %s: context full after %d tokens (n_ctx %d, the model's trained "
                "length)\n",
                cmd, n_gen, n_ctx);
    else
        fprintf(stderr,
                "nanoflowctl %s: context full after %d tokens (n_ctx %d); use %s to raise it\n",
                cmd, n_gen, n_ctx, raise);
}

int nf_sampling_flag(const char *cmd, int argc, char **argv, int *i, struct nf_sampler_params *sp,
                     bool *seed_set)
{
    const char *a = argv[*i];
    const bool seed = nf_arg_is(a, "--seed") || !strcmp(a, "-s");
    if (!seed && !nf_arg_is(a, "--temp") && !nf_arg_is(a, "--top-k") && !nf_arg_is(a, "--top-p") &&
        !nf_arg_is(a, "--min-p") && !nf_arg_is(a, "--repeat-penalty") &&
        !nf_arg_is(a, "--presence-penalty") && !nf_arg_is(a, "--frequency-penalty"))
        return 0;
    const char *v = nf_arg_value(cmd, argc, argv, i);
    if (!v)
        return -1;
    long lv;
    int rc;
    if (seed) {
        rc = nf_arg_u64(cmd, a, v, &sp->seed);
        *seed_set = true;
    } else if (nf_arg_is(a, "--temp")) {
        rc = nf_arg_float(cmd, a, v, 0.0f, 100.0f, &sp->temp);
    } else if (nf_arg_is(a, "--top-k")) {
        rc = nf_arg_long(cmd, a, v, 0, 1 << 24, &lv);
        sp->top_k = (int)lv;
    } else if (nf_arg_is(a, "--top-p")) {
        rc = nf_arg_float(cmd, a, v, 0.0f, 1.0f, &sp->top_p);
    } else if (nf_arg_is(a, "--min-p")) {
        rc = nf_arg_float(cmd, a, v, 0.0f, 1.0f, &sp->min_p);
    } else if (nf_arg_is(a, "--presence-penalty")) {
        rc = nf_arg_float(cmd, a, v, -NF_SAMPLER_ADD_PENALTY_MAX, NF_SAMPLER_ADD_PENALTY_MAX,
                          &sp->presence_penalty);
    } else if (nf_arg_is(a, "--frequency-penalty")) {
        rc = nf_arg_float(cmd, a, v, -NF_SAMPLER_ADD_PENALTY_MAX, NF_SAMPLER_ADD_PENALTY_MAX,
                          &sp->frequency_penalty);
    } else {
        rc = nf_arg_float(cmd, a, v, 0.01f, 100.0f, &sp->repeat_penalty);
    }
    return rc < 0 ? -1 : 1;
}
