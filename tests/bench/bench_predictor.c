/* bench_predictor.c - quality of the low-rank FFN predictor of a .nft: recall of the truly
 * largest neuron groups and KL divergence of sparse vs exact next-token distributions.
 *
 * usage: bench_predictor MODEL.nft PROMPTS.txt [N_TOKENS (default 32)] [THREADS (default 1)]
 *
 * For each prompt (one a line, a literal \n stands for a newline): greedy decode N tokens in exact
 * mode (nf_ctx_eval). Then the same tokens are fed again one at a time through nf_sparse_eval
 * (teacher forcing). With every group computed, each dense layer's true group magnitudes
 * (sum over the group of |silu(gate) * up|) are compared with the predictor's group scores: recall
 * = |true top-k ∩ predicted top-k| / k with k the groups kept at 50% and 80% sparsity. With the
 * predictor choosing the groups, KL(exact || sparse) of the next-token distributions is measured
 * at every decode step. Prints one table. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "model.h"
#include "nf_err.h"
#include "nft.h"
#include "sparse.h"
#include "tokenizer.h"

static const float levels[] = {0.5f, 0.8f};
#define N_LEVELS 2
static const float kl_levels[] = {0.0f, 0.5f, 0.8f, 0.9f};
#define N_KL 4

struct recall_acc {
    struct nf_sparse *s;
    int n_ff, n_layer;
    bool on; /* measuring this position */
    float *mag, *pred;
    int *idx;
    uint8_t *mt, *mp;
    double *sum;      /* (n_layer, N_LEVELS) */
    double *sum_silu; /* (N_LEVELS) same, groups scored by sum |silu(score)| instead */
    long *count;      /* (n_layer) */
    double *rand;     /* (N_LEVELS) expected recall of a random choice, k / n_groups */
};

static void observe(void *ud, int il, const float *xn, const float *h, const uint8_t *mask)
{
    (void)mask;
    struct recall_acc *a = ud;
    if (!a->on)
        return;
    const int G = a->s->group[il], n = a->n_ff / G;
    for (int g = 0; g < n; g++) {
        float m = 0.0f;
        for (int i = 0; i < G; i++)
            m += fabsf(h[g * G + i]);
        a->mag[g] = m;
    }
    nf_sparse_predict(a->s, il, xn);
    for (int v = 0; v < 2; v++) {
        /* Variant 1 scores a group by sum |silu(score)|: large negative gate pre-activations
         * give small activations, which sum |score| does not see. */
        for (int g = 0; g < n; g++) {
            float m = 0.0f;
            for (int i = 0; i < G && v == 1; i++) {
                const float z = a->s->scores[g * G + i];
                m += fabsf(z / (1.0f + expf(-z)));
            }
            a->pred[g] = v == 0 ? a->s->gscores[g] : m;
        }
        for (int l = 0; l < N_LEVELS; l++) {
            const int k = nf_sparse_keep(n, levels[l]);
            nf_topk_mask(a->mt, a->mag, n, k, a->idx);
            nf_topk_mask(a->mp, a->pred, n, k, a->idx);
            int hit = 0;
            for (int g = 0; g < n; g++)
                hit += a->mt[g] && a->mp[g];
            if (v == 0)
                a->sum[il * N_LEVELS + l] += (double)hit / k;
            else
                a->sum_silu[l] += (double)hit / k / a->n_layer;
            a->rand[l] = (double)k / n;
        }
    }
    a->count[il]++;
}

/* KL(p || q) of the softmax distributions of logits a (exact) and b (sparse), in nats. */
static double kl_div(const float *a, const float *b, int n)
{
    double ma = -INFINITY, mb = -INFINITY, za = 0, zb = 0, kl = 0;
    for (int i = 0; i < n; i++) {
        ma = a[i] > ma ? a[i] : ma;
        mb = b[i] > mb ? b[i] : mb;
    }
    for (int i = 0; i < n; i++) {
        za += exp(a[i] - ma);
        zb += exp(b[i] - mb);
    }
    for (int i = 0; i < n; i++) {
        double lp = a[i] - ma - log(za), lq = b[i] - mb - log(zb);
        kl += exp(lp) * (lp - lq);
    }
    return kl;
}

static int argmax(const float *x, int n)
{
    int b = 0;
    for (int i = 1; i < n; i++)
        if (x[i] > x[b])
            b = i;
    return b;
}

int main(int argc, char **argv)
{
    if (argc < 3) {
        fprintf(stderr, "usage: %s MODEL.nft PROMPTS.txt [N_TOKENS] [THREADS]\n", argv[0]);
        return 2;
    }
    const int N = argc > 3 ? atoi(argv[3]) : 32, threads = argc > 4 ? atoi(argv[4]) : 1;
    if (N < 1 || N > 4096) {
        fprintf(stderr, "N_TOKENS must be 1..4096\n");
        return 2;
    }
    char err[512];
    struct nf_model *m = NULL;
    struct nf_nft *f = NULL;
    struct nf_vocab *v = NULL;
    struct nf_sparse *s = NULL;
    if (nf_model_load(&m, argv[1], err, sizeof(err)) ||
        nf_nft_open(&f, argv[1], false, err, sizeof(err)) ||
        nf_vocab_load(&v, m->gguf, err, sizeof(err)) ||
        nf_sparse_create(&s, m, f, err, sizeof(err))) {
        fprintf(stderr, "bench_predictor: %s\n", err);
        return 1;
    }
    if (m->hp.n_expert) {
        fprintf(stderr, "bench_predictor: %s is a MoE model; this measures dense FFN predictors\n",
                argv[1]);
        return 1;
    }
    FILE *pf = fopen(argv[2], "r");
    if (!pf) {
        perror(argv[2]);
        return 1;
    }
    const int V = m->hp.n_vocab, L = m->hp.n_layer, F = m->hp.n_ff;
    struct recall_acc acc = {.s = s, .n_ff = F, .n_layer = L};
    acc.mag = calloc((size_t)F, sizeof(float));
    acc.pred = calloc((size_t)F, sizeof(float));
    acc.idx = calloc((size_t)F, sizeof(int));
    acc.mt = calloc((size_t)F, 1);
    acc.mp = calloc((size_t)F, 1);
    acc.sum = calloc((size_t)L * N_LEVELS, sizeof(double));
    acc.count = calloc((size_t)L, sizeof(long));
    acc.rand = calloc(N_LEVELS, sizeof(double));
    acc.sum_silu = calloc(N_LEVELS, sizeof(double));
    double kl_sum[N_KL] = {0}, kl_max[N_KL] = {0};
    long agree[N_KL] = {0}, steps = 0;
    float *ex_logits = malloc(sizeof(float) * (size_t)V * (size_t)N);
    int32_t *ids = malloc(sizeof(int32_t) * 4096);
    char line[2048];
    int n_prompts = 0;
    while (fgets(line, sizeof(line), pf)) {
        /* Literal "\n" means a newline; the line's own newline ends it. */
        char text[2048];
        size_t tl = 0;
        for (size_t i = 0; line[i] && line[i] != '\n' && tl + 1 < sizeof(text); i++) {
            if (line[i] == '\\' && line[i + 1] == 'n') {
                text[tl++] = '\n';
                i++;
            } else {
                text[tl++] = line[i];
            }
        }
        text[tl] = '\0';
        if (!tl)
            continue;
        int np = nf_tokenize(v, text, tl, nf_vocab_add_bos(v), true, ids, 4096 - N - 1);
        if (np < 1) {
            fprintf(stderr, "bench_predictor: cannot tokenize '%s'\n", text);
            exit(1); /* a benchmark: the OS frees everything */
        }
        struct nf_ctx *c = NULL;
        if (nf_ctx_create(&c, m, np + N + 1, threads)) {
            fprintf(stderr, "bench_predictor: out of memory\n");
            exit(1); /* a benchmark: the OS frees everything */
        }
        /* Exact mode, as nanoflowctl run: the prompt in one batch, then greedy steps. */
        int n_gen = 0;
        int rc = nf_ctx_eval(c, ids, np);
        while (!rc && n_gen < N) {
            memcpy(ex_logits + (size_t)n_gen * V, c->logits, sizeof(float) * (size_t)V);
            int tok = argmax(c->logits, V);
            ids[np + n_gen++] = tok;
            if (nf_vocab_is_eog(v, tok))
                break;
            rc = nf_ctx_eval(c, &ids[np + n_gen - 1], 1);
        }
        if (rc) {
            fprintf(stderr, "bench_predictor: eval: %s\n", nf_strerror(rc));
            exit(1); /* a benchmark: the OS frees everything */
        }
        /* Teacher-forced passes; position np - 1 + i produces the logits of step i. */
        for (int kl = 0; kl < N_KL; kl++) {
            nf_ctx_reset(c);
            s->sparsity = kl_levels[kl];
            s->observe = kl == 0 ? observe : NULL;
            s->observe_ud = &acc;
            for (int p = 0; p < np + n_gen - 1; p++) {
                acc.on = p >= np - 1;
                if ((rc = nf_sparse_eval(s, c, ids[p]))) {
                    fprintf(stderr, "bench_predictor: sparse eval: %s\n", nf_strerror(rc));
                    exit(1); /* a benchmark: the OS frees everything */
                }
                if (p < np - 1)
                    continue;
                const float *ex = ex_logits + (size_t)(p - (np - 1)) * V;
                double d = kl_div(ex, c->logits, V);
                kl_sum[kl] += d;
                kl_max[kl] = d > kl_max[kl] ? d : kl_max[kl];
                agree[kl] += argmax(ex, V) == argmax(c->logits, V);
            }
        }
        steps += n_gen;
        n_prompts++;
        nf_ctx_free(c);
    }
    fclose(pf);

    char desc[256];
    nf_model_describe(m, desc, sizeof(desc));
    printf("bench_predictor: %s\n  %s\n  predictor rank %d (%s), %d prompts, %ld decode steps "
           "(greedy, up to %d tokens each)\n\n",
           argv[1], desc, s->rank, nf_type_traits(s->pred_type)->name, n_prompts, steps, N);
    printf("recall of the true top-k groups (by sum |silu(gate)*up|) by the predicted top-k\n");
    printf("%-7s %7s", "layer", "groups");
    for (int l = 0; l < N_LEVELS; l++)
        printf("   recall@%2.0f%% (k)", levels[l] * 100);
    printf("\n");
    double tot[N_LEVELS] = {0};
    for (int il = 0; il < L; il++) {
        const int n = F / s->group[il];
        printf("%-7d %7d", il, n);
        for (int l = 0; l < N_LEVELS; l++) {
            double r = acc.count[il] ? acc.sum[il * N_LEVELS + l] / acc.count[il] : 0;
            tot[l] += r / L;
            printf("   %12.3f (%2d)", r, nf_sparse_keep(n, levels[l]));
        }
        printf("\n");
    }
    printf("%-7s %7s", "mean", "");
    for (int l = 0; l < N_LEVELS; l++)
        printf("   %12.3f     ", tot[l]);
    printf("\n%-7s %7s", "silu", "");
    for (int l = 0; l < N_LEVELS; l++)
        printf("   %12.3f     ", acc.count[0] ? acc.sum_silu[l] / acc.count[0] : 0.0);
    printf("\n%-7s %7s", "random", "");
    for (int l = 0; l < N_LEVELS; l++)
        printf("   %12.3f     ", acc.rand[l]);
    printf("\n(mean: groups scored by sum |A B xn| as nf_group_scores; silu: by sum |silu(A B xn)|;"
           "\n random: k / groups)\n\nnext-token distributions, predictor-chosen groups vs exact "
           "mode (teacher-forced)\n");
    printf("%-9s %14s %14s %16s\n", "sparsity", "mean KL (nat)", "max KL (nat)", "top-1 agrees");
    for (int kl = 0; kl < N_KL; kl++)
        printf("%8.0f%% %14.6f %14.6f %15.1f%%\n", kl_levels[kl] * 100, kl_sum[kl] / steps,
               kl_max[kl], 100.0 * agree[kl] / steps);
    printf("(0%%: every neuron computed by the sparse path; its KL is the float-rounding floor)\n");
    free(ex_logits);
    free(ids);
    free(acc.mag);
    free(acc.pred);
    free(acc.idx);
    free(acc.mt);
    free(acc.mp);
    free(acc.sum);
    free(acc.count);
    free(acc.rand);
    free(acc.sum_silu);
    nf_sparse_free(s);
    nf_vocab_free(v);
    nf_nft_close(f);
    nf_model_free(m);
    return 0;
}
