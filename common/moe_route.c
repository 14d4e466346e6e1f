/* moe_route.c - expert selection with a score-correction bias, expert groups and a routed
 * scaling factor after a sigmoid (DeepSeek-V3, GLM-4.5) or a softmax (DeepSeek-V2), as
 * llama.cpp's build_moe_ffn computes it. */
#include <math.h>
#include <stdbool.h>

#include "model.h"
#include "nf_err.h"

/* The largest expert count the routing handles: nf_model_hparams refuses more. */
#define NF_MOE_ROUTE_MAX_X 4096

/* sel (K <= 64) = indices of the K largest of s (n), in decreasing order, the first of equal
 * values first (ggml_argsort_top_k: a descending sort, the first K kept). */
static void nf_route_top(const float *s, int n, int K, int *sel)
{
    float v[64];
    nf_moe_top_k(s, n, K, sel, v);
}

/* DeepSeek-V3's group limit: every group scored by the sum of its two highest selection
 * scores (ggml_argsort_top_k of 2, then ggml_sum_rows: the two added in double, rounded once,
 * which equals their float sum), the n_group_used best groups kept and every expert of the
 * others set to -INFINITY in s, so the top K never picks them. */
static void nf_route_mask_groups(float *s, int X, int n_group, int n_group_used)
{
    const int per = X / n_group;
    float gscore[NF_MOE_ROUTE_MAX_X / 2];
    int top[2], keep[NF_MOE_ROUTE_MAX_X / 2];
    for (int g = 0; g < n_group; g++) {
        nf_route_top(s + (size_t)g * per, per, 2, top);
        gscore[g] = (float)((double)s[g * per + top[0]] + (double)s[g * per + top[1]]);
    }
    nf_route_top(gscore, n_group, n_group_used, keep);
    for (int g = 0; g < n_group; g++) {
        bool kept = false;
        for (int j = 0; j < n_group_used; j++)
            kept |= keep[j] == g;
        if (!kept)
            for (int e = 0; e < per; e++)
                s[g * per + e] = -INFINITY;
    }
}

void nf_moe_route_sigmoid(const struct nf_moe_sigmoid_route *r, float *p, const float *bias,
                          int *sel, float *w)
{
    NF_ASSERT(r->n_expert >= 2 && r->n_expert <= NF_MOE_ROUTE_MAX_X);
    /* ggml_sigmoid (op_sigmoid: 1 / (1 + expf(-x))). */
    for (int e = 0; e < r->n_expert; e++)
        p[e] = 1.0f / (1.0f + expf(-p[e]));
    nf_moe_route_select(r, p, bias, sel, w);
}

void nf_moe_route_select(const struct nf_moe_sigmoid_route *r, const float *p, const float *bias,
                         int *sel, float *w)
{
    const int X = r->n_expert, K = r->n_expert_used;
    NF_ASSERT(X >= 2 && X <= NF_MOE_ROUTE_MAX_X && K >= 1 && K <= 64 && K <= X);
    NF_ASSERT(r->n_group <= 1 ||
              (X % r->n_group == 0 && X / r->n_group >= 2 && r->n_group_used >= 1 &&
               r->n_group_used <= r->n_group && r->n_group_used <= 64));
    /* The gate values p stay unbiased for the weights; the selection scores add exp_probs_b
     * (ggml_add). */
    float s[NF_MOE_ROUTE_MAX_X];
    for (int e = 0; e < X; e++)
        s[e] = bias ? p[e] + bias[e] : p[e];
    if (r->n_group > 1)
        nf_route_mask_groups(s, X, r->n_group, r->n_group_used);
    nf_route_top(s, X, K, sel);
    for (int k = 0; k < K; k++)
        w[k] = p[sel[k]];
    if (r->norm_w) {
        /* ggml_sum_rows (a double sum, rounded to float), clamped to the smallest normal F16
         * (6.103515625e-5) against a division by zero, then ggml_div. */
        double sum = 0.0;
        for (int k = 0; k < K; k++)
            sum += (double)w[k];
        float fs = (float)sum;
        fs = fs < 6.103515625e-5f ? 6.103515625e-5f : fs;
        for (int k = 0; k < K; k++)
            w[k] = w[k] / fs;
    }
    /* ggml_scale, which llama.cpp skips for a scale of 0 or 1. */
    if (r->scale != 0.0f && r->scale != 1.0f)
        for (int k = 0; k < K; k++)
            w[k] = w[k] * r->scale;
}
