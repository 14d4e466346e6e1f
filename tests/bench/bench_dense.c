/* bench_dense.c - decode speed of the in-RAM dense path: tok/s and GB/s of weights per token.
 *
 * Loads a GGUF model fully into RAM (nf_model_load), then for each thread count evaluates a
 * short prompt and decodes -n tokens greedily, timing only the decode steps. The "weights
 * touched" per token are every matrix the forward pass reads (all layers and the output head)
 * plus one embedding row; for MoE models only the experts a token uses count. Prints one table.
 *
 * Usage: bench_dense --model FILE [-n TOKENS] [--threads LIST] [--prompt-tokens P] [--json]
 * Typical: nanoflowctl mkmodel /tmp/7b.gguf --shape llama-7b --type q4_0 && bench_dense --model
 * /tmp/7b.gguf (a second run finds the file in the page cache). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "model.h"
#include "nf_err.h"
#include "nf_time.h"
#include "threadpool.h"

static size_t tensor_bytes(const struct nf_tensor *t)
{
    return t->data ? t->row_size * (size_t)t->ne[1] * (size_t)(t->ne[2] > 0 ? t->ne[2] : 1) : 0;
}

/* Bytes of weights one decode step reads. */
static double bytes_per_token(const struct nf_model *m)
{
    const struct nf_hparams *hp = &m->hp;
    double b = (double)m->tok_embd.row_size + (double)tensor_bytes(&m->output) +
               (double)tensor_bytes(&m->output_norm);
    for (int il = 0; il < hp->n_layer; il++) {
        const struct nf_layer *l = &m->layers[il];
        b += (double)(tensor_bytes(&l->attn.norm) + tensor_bytes(&l->attn.wq) +
                      tensor_bytes(&l->attn.wk) + tensor_bytes(&l->attn.wv) +
                      tensor_bytes(&l->attn.wo) + tensor_bytes(&l->ffn_norm));
        if (hp->n_expert > 0) {
            double per_expert =
                (double)(tensor_bytes(&l->moe.gate_exps) + tensor_bytes(&l->moe.up_exps) +
                         tensor_bytes(&l->moe.down_exps)) /
                hp->n_expert;
            b += (double)tensor_bytes(&l->moe.gate_inp) + per_expert * hp->n_expert_used;
        } else {
            b += (double)(tensor_bytes(&l->ffn.gate) + tensor_bytes(&l->ffn.up) +
                          tensor_bytes(&l->ffn.down));
        }
    }
    return b;
}

static int argmax(const float *x, int n)
{
    int best = 0;
    for (int i = 1; i < n; i++)
        if (x[i] > x[best])
            best = i;
    return best;
}

static void usage(FILE *f)
{
    fprintf(f, "usage: bench_dense --model FILE [-n TOKENS (32)] [--threads LIST (1,2)]\n"
               "                   [--prompt-tokens P (8)] [--json]\n");
}

int main(int argc, char **argv)
{
    const char *path = NULL;
    const char *threads = "1,2";
    int n_gen = 32, n_prompt = 8, json = 0;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if ((!strcmp(a, "--model") || !strcmp(a, "-m")) && i + 1 < argc)
            path = argv[++i];
        else if (!strcmp(a, "-n") && i + 1 < argc)
            n_gen = atoi(argv[++i]);
        else if (!strcmp(a, "--threads") && i + 1 < argc)
            threads = argv[++i];
        else if (!strcmp(a, "--prompt-tokens") && i + 1 < argc)
            n_prompt = atoi(argv[++i]);
        else if (!strcmp(a, "--json"))
            json = 1;
        else if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
            usage(stdout);
            return 0;
        } else {
            fprintf(stderr, "bench_dense: unknown or incomplete argument '%s'\n", a);
            usage(stderr);
            return 2;
        }
    }
    if (!path || n_gen < 1 || n_prompt < 1 || n_prompt > NF_MAX_BATCH) {
        usage(stderr);
        return 2;
    }

    char err[512];
    struct nf_model *m;
    double t0 = nf_now_s();
    int rc = nf_model_load(&m, path, err, sizeof(err));
    if (rc < 0) {
        fprintf(stderr, "bench_dense: %s\n", err);
        return 1;
    }
    double load_s = nf_now_s() - t0;
    double bpt = bytes_per_token(m);
    char desc[256];
    nf_model_describe(m, desc, sizeof(desc));
    if (!json) {
        printf("model: %s\n%s\nloaded in %.1f s; weights read per token: %.1f MB; ISA: %s\n\n",
               path, desc, load_s, bpt / 1e6, nf_isa_name(nf_kernels_isa()));
        printf("| threads | prompt tok/s | decode tok/s | ms/token | weights GB/s |\n");
        printf("|--------:|-------------:|-------------:|---------:|-------------:|\n");
    }

    int32_t *toks = malloc(sizeof(int32_t) * (size_t)(n_prompt + 1));
    if (!toks)
        return 1;
    for (int i = 0; i < n_prompt; i++)
        toks[i] = (int32_t)((i * 7919 + 13) % m->hp.n_vocab);

    char *list = strdup(threads);
    int status = 0;
    for (char *save = NULL, *tok = strtok_r(list, ",", &save); tok;
         tok = strtok_r(NULL, ",", &save)) {
        int nt = atoi(tok);
        struct nf_ctx *c;
        rc = nf_ctx_create(&c, m, n_prompt + n_gen + 1, nt);
        if (rc < 0) {
            fprintf(stderr, "bench_dense: context for %d threads: %s\n", nt, nf_strerror(rc));
            status = 1;
            break;
        }
        double tp = nf_now_s();
        rc = nf_ctx_eval(c, toks, n_prompt);
        double prompt_s = nf_now_s() - tp;
        int32_t next = argmax(c->logits, m->hp.n_vocab);
        double td = nf_now_s();
        for (int i = 0; i < n_gen && rc == 0; i++) {
            rc = nf_ctx_eval(c, &next, 1);
            next = argmax(c->logits, m->hp.n_vocab);
        }
        double dec_s = nf_now_s() - td;
        if (rc < 0) {
            fprintf(stderr, "bench_dense: eval failed: %s\n", nf_strerror(rc));
            nf_ctx_free(c);
            status = 1;
            break;
        }
        double tps = n_gen / dec_s;
        if (json)
            printf("{\"threads\":%d,\"prompt_tok_s\":%.3f,\"decode_tok_s\":%.3f,"
                   "\"weights_gb_s\":%.3f,\"bytes_per_token\":%.0f}\n",
                   nf_threadpool_size(c->pool), n_prompt / prompt_s, tps, tps * bpt / 1e9, bpt);
        else
            printf("| %7d | %12.2f | %12.2f | %8.1f | %12.2f |\n", nf_threadpool_size(c->pool),
                   n_prompt / prompt_s, tps, 1e3 / tps, tps * bpt / 1e9);
        fflush(stdout);
        nf_ctx_free(c);
    }
    free(list);
    free(toks);
    nf_model_free(m);
    return status;
}
