/* nft_calib.c - convert --calibrate: per-group activation statistics of a .nft over a text. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "generate.h"
#include "model.h"
#include "nf_err.h"
#include "nf_file.h"
#include "nft.h"
#include "sparse.h"
#include "tokenizer.h"

#define NF_CALIB_DEFAULT_TOKENS 4096
#define NF_CALIB_WINDOW         512 /* positions per evaluation window (capped by the model) */

/* What the observer records: per layer, (n_tokens, n_groups) group magnitudes and predictor
 * group scores. */
struct calib_run {
    struct nf_sparse *s;
    struct nf_ctx *c;
    int n_layer, n_ff;
    long tok; /* index of the token being evaluated */
    float **mag, **pred;
};

static void observe(void *ud, int il, const float *xn, const float *h, const uint8_t *mask)
{
    (void)mask;
    struct calib_run *r = ud;
    const int G = r->s->group[il], n = r->n_ff / G;
    float *mag = r->mag[il] + (size_t)r->tok * n, *pred = r->pred[il] + (size_t)r->tok * n;
    for (int g = 0; g < n; g++) {
        float m = 0.0f;
        for (int i = 0; i < G; i++)
            m += h[g * G + i] < 0 ? -h[g * G + i] : h[g * G + i];
        mag[g] = m / (float)G;
    }
    nf_sparse_predict(r->s, il, xn);
    memcpy(pred, r->s->gscores, sizeof(float) * (size_t)n);
}

/* The generation driver's engine for calibration: c evaluated one token at a time through the
 * sparse FFN (sparsity 0: every group), so the observer sees each token; r->tok counts them. */
static int calib_eval(void *ud, const int32_t *toks, int n, bool prompt)
{
    (void)prompt;
    struct calib_run *r = ud;
    for (int i = 0; i < n; i++, r->tok++) {
        int rc = nf_sparse_eval(r->s, r->c, toks[i]);
        if (rc)
            return rc;
    }
    return 0;
}

static const float *calib_logits(void *ud)
{
    const struct calib_run *r = ud;
    return r->c->logits;
}

static int calib_n_past(void *ud)
{
    const struct calib_run *r = ud;
    return r->c->n_past;
}

static void calib_reset(void *ud)
{
    const struct calib_run *r = ud;
    nf_ctx_reset(r->c);
}

static int cmp_float(const void *a, const void *b)
{
    const float x = *(const float *)a, y = *(const float *)b;
    return (x > y) - (x < y);
}

/* The q-quantile of sorted[0..n) (nearest rank). */
static float quantile(const float *sorted, size_t n, float q)
{
    size_t i = (size_t)((double)q * (double)n);
    return sorted[i < n ? i : n - 1];
}

struct hot_key {
    const float *freq, *mean;
};

static int cmp_hot(const void *a, const void *b, void *ud)
{
    const struct hot_key *k = ud;
    const uint32_t i = *(const uint32_t *)a, j = *(const uint32_t *)b;
    if (k->freq[i] != k->freq[j])
        return k->freq[i] > k->freq[j] ? -1 : 1;
    if (k->mean[i] != k->mean[j])
        return k->mean[i] > k->mean[j] ? -1 : 1;
    return (i > j) - (i < j);
}

/* Serializes the statistics of n_tok tokens into a calibration section. */
static int serialize(const struct calib_run *r, long n_tok, const float *levels, int n_levels,
                     void **img, size_t *len)
{
    size_t total = sizeof(struct nf_nft_calib_header);
    for (int il = 0; il < r->n_layer; il++)
        total += sizeof(struct nf_nft_calib_layer_hdr) +
                 (size_t)(r->n_ff / r->s->group[il]) * 4 * (2 + (size_t)n_levels);
    uint8_t *p = calloc(1, total);
    float *sorted = malloc(sizeof(float) * (size_t)n_tok * (size_t)r->n_ff);
    if (!p || !sorted) {
        free(p);
        free(sorted);
        return -ENOMEM;
    }
    struct nf_nft_calib_header *ch = (void *)p;
    ch->magic = NF_NFT_CALIB_MAGIC;
    ch->n_layer = (uint32_t)r->n_layer;
    ch->n_levels = (uint32_t)n_levels;
    ch->n_tokens = (uint32_t)n_tok;
    memcpy(ch->levels, levels, sizeof(float) * (size_t)n_levels);
    size_t off = sizeof(*ch);
    for (int il = 0; il < r->n_layer; il++) {
        const int n = r->n_ff / r->s->group[il];
        const size_t cnt = (size_t)n_tok * (size_t)n;
        struct nf_nft_calib_layer_hdr *lh = (void *)(p + off);
        uint32_t *order = (uint32_t *)(lh + 1);
        float *mean = (float *)(void *)((uint8_t *)order + sizeof(uint32_t) * (size_t)n);
        float *freq = mean + n;
        lh->n_groups = (uint32_t)n;
        lh->group = (uint32_t)r->s->group[il];
        memcpy(sorted, r->pred[il], sizeof(float) * cnt);
        qsort(sorted, cnt, sizeof(float), cmp_float);
        for (int l = 0; l < n_levels; l++)
            lh->pred_thr[l] = quantile(sorted, cnt, levels[l]);
        memcpy(sorted, r->mag[il], sizeof(float) * cnt);
        qsort(sorted, cnt, sizeof(float), cmp_float);
        for (int l = 0; l < n_levels; l++)
            lh->act_thr[l] = quantile(sorted, cnt, levels[l]);
        for (int g = 0; g < n; g++) {
            double sum = 0;
            long above[NF_NFT_CALIB_MAX_LEVELS] = {0};
            for (long t = 0; t < n_tok; t++) {
                const float m = r->mag[il][(size_t)t * n + g];
                sum += m;
                for (int l = 0; l < n_levels; l++)
                    above[l] += m > lh->act_thr[l];
            }
            mean[g] = (float)(sum / (double)n_tok);
            for (int l = 0; l < n_levels; l++)
                freq[(size_t)l * n + g] = (float)((double)above[l] / (double)n_tok);
            order[g] = (uint32_t)g;
        }
        /* Hot first: most often above the highest level's threshold, then the largest mean. */
        struct hot_key k = {freq + (size_t)(n_levels - 1) * n, mean};
        qsort_r(order, (size_t)n, sizeof(uint32_t), cmp_hot, &k);
        off += sizeof(*lh) + (size_t)n * 4 * (2 + (size_t)n_levels);
    }
    free(sorted);
    *img = p;
    *len = total;
    return 0;
}

int nf_nft_calib_build(const char *path, const char *text_path, const float *levels, int n_levels,
                       int max_tokens, int threads, void **img, size_t *len, char *err,
                       size_t errlen)
{
    static const float def_levels[] = {0.5f, 0.8f, 0.9f};
    if (!levels) {
        levels = def_levels;
        n_levels = 3;
    }
    if (n_levels < 1 || n_levels > NF_NFT_CALIB_MAX_LEVELS)
        return nf_errf(err, errlen, NF_EUSAGE, "calibration needs 1..%d sparsity levels",
                       NF_NFT_CALIB_MAX_LEVELS);
    for (int l = 0; l < n_levels; l++)
        if (!(levels[l] > 0.0f && levels[l] < 1.0f) || (l && !(levels[l] > levels[l - 1])))
            return nf_errf(err, errlen, NF_EUSAGE,
                           "calibration levels must increase within (0, 1), got %g",
                           (double)levels[l]);
    if (max_tokens <= 0)
        max_tokens = NF_CALIB_DEFAULT_TOKENS;
    struct nf_model *m = NULL;
    struct nf_nft *f = NULL;
    struct nf_vocab *v = NULL;
    struct nf_sparse *s = NULL;
    struct nf_ctx *c = NULL;
    struct calib_run r = {0};
    int32_t *ids = NULL;
    size_t tlen = 0;
    char *text = nf_read_file(text_path, &tlen);
    int rc;
    if (!text)
        return nf_errf(err, errlen, -errno, "%s: cannot read the calibration text: %s", text_path,
                       strerror(errno));
    if ((rc = nf_model_load(&m, path, err, errlen)) ||
        (rc = nf_nft_open(&f, path, false, err, errlen)) ||
        (rc = nf_vocab_load(&v, m->gguf, err, errlen)))
        goto out;
    if (m->hp.n_expert) {
        rc = nf_errf(err, errlen, NF_EARCH,
                     "%s: --calibrate covers dense FFN layers; this model has %d experts per "
                     "layer (MoE calibration is not implemented)",
                     path, m->hp.n_expert);
        goto out;
    }
    if ((rc = nf_sparse_create(&s, m, f, err, errlen)))
        goto out;
    /* The driver's BOS rule, special tokens not parsed (the text is data, not a chat). */
    int n = nf_gen_tokenize(v, text, tlen, false, &ids, err, errlen);
    if (n < 1) {
        rc = nf_errf(err, errlen, n < 0 ? n : NF_EUSAGE, "%s: the text gives no tokens", text_path);
        goto out;
    }
    n = n < max_tokens ? n : max_tokens;
    int window = m->hp.n_ctx_train < NF_CALIB_WINDOW ? m->hp.n_ctx_train : NF_CALIB_WINDOW;
    if ((rc = nf_ctx_create(&c, m, window, threads))) {
        rc = nf_errf(err, errlen, rc, "creating a context: %s", nf_strerror(rc));
        goto out;
    }
    r.s = s;
    r.c = c;
    r.n_layer = m->hp.n_layer;
    r.n_ff = m->hp.n_ff;
    r.mag = calloc((size_t)r.n_layer, sizeof(float *));
    r.pred = calloc((size_t)r.n_layer, sizeof(float *));
    for (int il = 0; r.mag && r.pred && il < r.n_layer; il++) {
        r.mag[il] = malloc(sizeof(float) * (size_t)n * (size_t)r.n_ff);
        r.pred[il] = malloc(sizeof(float) * (size_t)n * (size_t)r.n_ff);
        if (!r.mag[il] || !r.pred[il])
            break;
    }
    if (!r.mag || !r.pred || !r.mag[r.n_layer - 1] || !r.pred[r.n_layer - 1]) {
        rc = nf_errf(err, errlen, -ENOMEM, "out of memory for the statistics of %d tokens", n);
        goto out;
    }
    /* Every neuron computed (sparsity 0); the observer records each dense layer. */
    s->sparsity = 0.0f;
    s->observe = observe;
    s->observe_ud = &r;
    /* Windows of `window` tokens, each a prompt-only sequence from an empty context. */
    const struct nf_gen_engine e = {.eval = calib_eval,
                                    .logits = calib_logits,
                                    .n_past = calib_n_past,
                                    .reset = calib_reset,
                                    .ud = &r,
                                    .n_ctx = c->n_ctx,
                                    .n_vocab = m->hp.n_vocab};
    const struct nf_gen_params gp = {.max_tokens = 0};
    for (int at = 0; at < n; at += window) {
        struct nf_gen_seq q;
        if ((rc = nf_gen_seq_init(&q, &e, v, ids + at, n - at < window ? n - at : window, &gp, err,
                                  errlen)) == 0 &&
            (rc = nf_gen_seq_run(&q)) != 0)
            nf_errf(err, errlen, rc, "%s: evaluating token %ld: %s", path, r.tok, nf_strerror(rc));
        nf_gen_seq_free(&q);
        if (rc)
            goto out;
    }
    if ((rc = serialize(&r, n, levels, n_levels, img, len)))
        nf_errf(err, errlen, rc, "out of memory");
out:
    if (r.mag)
        for (int il = 0; il < r.n_layer; il++)
            free(r.mag[il]);
    if (r.pred)
        for (int il = 0; il < r.n_layer; il++)
            free(r.pred[il]);
    free(r.mag);
    free(r.pred);
    free(ids);
    free(text);
    nf_ctx_free(c);
    nf_sparse_free(s);
    nf_vocab_free(v);
    nf_nft_close(f);
    nf_model_free(m);
    return rc;
}
