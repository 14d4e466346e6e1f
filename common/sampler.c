/* sampler.c - repetition, presence and frequency penalties, top-k / top-p / min-p filters,
 * temperature, seeded draws. */
#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "nf_err.h"
#include "sampler.h"

struct nf_cand {
    int32_t id;
    float logit;
    float p;
};

struct nf_sampler {
    struct nf_sampler_params prm;
    int n_vocab;
    struct nf_cand *cand; /* (n_vocab) working set */
    int32_t *recent;      /* (repeat_last_n) ring of the last accepted tokens */
    int n_recent, recent_head;
    uint64_t rng[4];
};

void nf_sampler_params_default(struct nf_sampler_params *p)
{
    p->temp = 0.8f;
    p->top_k = 40;
    p->top_p = 0.95f;
    p->min_p = 0.05f;
    p->repeat_penalty = 1.0f;
    p->repeat_last_n = 64;
    p->seed = 0;
    p->presence_penalty = 0.0f;
    p->frequency_penalty = 0.0f;
}

/* True when lo <= x <= hi (false for NaN). */
static bool in_range(float x, float lo, float hi)
{
    return x >= lo && x <= hi;
}

int nf_sampler_params_check(const struct nf_sampler_params *p, char *err, size_t errlen)
{
    if (!in_range(p->temp, 0.0f, NF_SAMPLER_TEMP_MAX))
        return nf_errf(err, errlen, NF_EUSAGE, "temp %g is out of range, expected 0..%g",
                       (double)p->temp, (double)NF_SAMPLER_TEMP_MAX);
    if (p->top_k < 0 || p->top_k > NF_SAMPLER_TOP_K_MAX)
        return nf_errf(err, errlen, NF_EUSAGE, "top_k %d is out of range, expected 0..%d", p->top_k,
                       NF_SAMPLER_TOP_K_MAX);
    if (!in_range(p->top_p, 0.0f, 1.0f))
        return nf_errf(err, errlen, NF_EUSAGE, "top_p %g is out of range, expected 0..1",
                       (double)p->top_p);
    if (!in_range(p->min_p, 0.0f, 1.0f))
        return nf_errf(err, errlen, NF_EUSAGE, "min_p %g is out of range, expected 0..1",
                       (double)p->min_p);
    if (!in_range(p->repeat_penalty, NF_SAMPLER_PENALTY_MIN, NF_SAMPLER_PENALTY_MAX))
        return nf_errf(err, errlen, NF_EUSAGE, "repeat_penalty %g is out of range, expected %g..%g",
                       (double)p->repeat_penalty, (double)NF_SAMPLER_PENALTY_MIN,
                       (double)NF_SAMPLER_PENALTY_MAX);
    if (p->repeat_last_n < 0 || p->repeat_last_n > NF_SAMPLER_LAST_N_MAX)
        return nf_errf(err, errlen, NF_EUSAGE, "repeat_last_n %d is out of range, expected 0..%d",
                       p->repeat_last_n, NF_SAMPLER_LAST_N_MAX);
    const float am = NF_SAMPLER_ADD_PENALTY_MAX;
    if (!in_range(p->presence_penalty, -am, am))
        return nf_errf(err, errlen, NF_EUSAGE,
                       "presence_penalty %g is out of range, expected %g..%g",
                       (double)p->presence_penalty, (double)-am, (double)am);
    if (!in_range(p->frequency_penalty, -am, am))
        return nf_errf(err, errlen, NF_EUSAGE,
                       "frequency_penalty %g is out of range, expected %g..%g",
                       (double)p->frequency_penalty, (double)-am, (double)am);
    return 0;
}

static uint64_t nf_splitmix64(uint64_t *x)
{
    uint64_t z = (*x += 0x9e3779b97f4a7c15ULL);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}

static uint64_t nf_rotl(uint64_t x, int k)
{
    return (x << k) | (x >> (64 - k));
}

uint64_t nf_sampler_rand(struct nf_sampler *s)
{
    uint64_t *r = s->rng;
    const uint64_t out = nf_rotl(r[1] * 5, 7) * 9;
    const uint64_t t = r[1] << 17;
    r[2] ^= r[0];
    r[3] ^= r[1];
    r[1] ^= r[2];
    r[0] ^= r[3];
    r[2] ^= t;
    r[3] = nf_rotl(r[3], 45);
    return out;
}

int nf_sampler_create(struct nf_sampler **out, const struct nf_sampler_params *p, int n_vocab)
{
    if (n_vocab < 1 || !(p->temp == p->temp) || !(p->top_p >= 0) || !(p->min_p <= 1) ||
        !(p->repeat_penalty > 0) || p->repeat_last_n < 0 ||
        !(p->presence_penalty == p->presence_penalty) ||
        !(p->frequency_penalty == p->frequency_penalty) || p->repeat_last_n > NF_SAMPLER_LAST_N_MAX)
        return NF_EUSAGE;
    struct nf_sampler *s = calloc(1, sizeof(*s));
    if (!s)
        return -ENOMEM;
    s->prm = *p;
    s->n_vocab = n_vocab;
    s->cand = calloc((size_t)n_vocab, sizeof(*s->cand));
    s->recent = calloc((size_t)(p->repeat_last_n ? p->repeat_last_n : 1), sizeof(int32_t));
    if (!s->cand || !s->recent) {
        nf_sampler_free(s);
        return -ENOMEM;
    }
    uint64_t x = p->seed;
    for (int i = 0; i < 4; i++)
        s->rng[i] = nf_splitmix64(&x);
    *out = s;
    return 0;
}

void nf_sampler_free(struct nf_sampler *s)
{
    if (!s)
        return;
    free(s->cand);
    free(s->recent);
    free(s);
}

void nf_sampler_accept(struct nf_sampler *s, int32_t tok)
{
    const int n = s->prm.repeat_last_n;
    if (n == 0)
        return;
    s->recent[s->recent_head] = tok;
    s->recent_head = (s->recent_head + 1) % n;
    if (s->n_recent < n)
        s->n_recent++;
}

/* Sorts candidates by logit, highest first; ties by lower id (a total order, so the result
 * does not depend on the sort algorithm). */
static int nf_cand_cmp(const void *a, const void *b)
{
    const struct nf_cand *x = a, *y = b;
    if (x->logit != y->logit)
        return x->logit > y->logit ? -1 : 1;
    return (x->id > y->id) - (x->id < y->id);
}

/* Fills p with the softmax of the (sorted) candidates' logits divided by temp. */
static void nf_softmax(struct nf_cand *c, int n, float temp)
{
    const float mx = c[0].logit;
    double sum = 0.0;
    for (int i = 0; i < n; i++) {
        c[i].p = expf((c[i].logit - mx) / temp);
        sum += c[i].p;
    }
    for (int i = 0; i < n; i++)
        c[i].p = (float)(c[i].p / sum);
}

/* Fills the candidates with logits and applies the penalties as llama.cpp's penalties sampler:
 * for each distinct token among the recent ones, seen count times, the repetition penalty
 * (divides a positive logit, multiplies a negative one), then logit -= count * frequency +
 * presence. The candidates' p counts occurrences meanwhile (softmax overwrites it later). */
static void nf_penalize(struct nf_sampler *s, const float *logits)
{
    const struct nf_sampler_params *p = &s->prm;
    struct nf_cand *c = s->cand;
    const int n = s->n_vocab;
    for (int i = 0; i < n; i++) {
        c[i].id = i;
        c[i].logit = logits[i];
        c[i].p = 0.0f;
    }
    if (p->repeat_penalty == 1.0f && p->presence_penalty == 0.0f && p->frequency_penalty == 0.0f)
        return;
    for (int i = 0; i < s->n_recent; i++)
        if (s->recent[i] >= 0 && s->recent[i] < n)
            c[s->recent[i]].p += 1.0f;
    for (int i = 0; i < s->n_recent; i++) {
        const int32_t t = s->recent[i];
        if (t < 0 || t >= n || c[t].p == 0.0f)
            continue; /* out of the vocabulary, or already done */
        const float count = c[t].p;
        c[t].p = 0.0f;
        if (c[t].logit <= 0)
            c[t].logit *= p->repeat_penalty;
        else
            c[t].logit /= p->repeat_penalty;
        c[t].logit -= count * p->frequency_penalty + p->presence_penalty;
    }
}

void nf_sampler_penalized(struct nf_sampler *s, const float *logits, float *out)
{
    nf_penalize(s, logits);
    for (int i = 0; i < s->n_vocab; i++)
        out[i] = s->cand[i].logit;
}

double nf_log_sum_exp(const float *logits, int n)
{
    float mx = logits[0];
    for (int i = 1; i < n; i++)
        if (logits[i] > mx)
            mx = logits[i];
    double sum = exp((double)logits[0] - (double)mx); /* > 0 */
    for (int i = 1; i < n; i++)
        sum += exp((double)logits[i] - (double)mx);
    return (double)mx + log(sum);
}

int32_t nf_sampler_sample(struct nf_sampler *s, const float *logits)
{
    const struct nf_sampler_params *p = &s->prm;
    struct nf_cand *c = s->cand;
    int n = s->n_vocab;
    nf_penalize(s, logits);
    if (p->temp <= 0) {
        int best = 0;
        for (int i = 1; i < n; i++)
            if (c[i].logit > c[best].logit)
                best = i;
        return c[best].id;
    }
    qsort(c, (size_t)n, sizeof(*c), nf_cand_cmp);
    if (p->top_k > 0 && p->top_k < n)
        n = p->top_k;
    if (p->top_p < 1.0f) {
        nf_softmax(c, n, 1.0f);
        double cum = 0.0;
        for (int i = 0; i < n; i++) {
            cum += c[i].p;
            if (cum >= p->top_p) {
                n = i + 1;
                break;
            }
        }
    }
    if (p->min_p > 0.0f) {
        /* Keep tokens whose probability is at least min_p times the top one's. */
        const float thresh = c[0].logit + logf(p->min_p);
        int keep = 1;
        while (keep < n && c[keep].logit >= thresh)
            keep++;
        n = keep;
    }
    nf_softmax(c, n, p->temp);
    /* A uniform draw in [0, 1) from the top 24 bits, then the inverse CDF. */
    const float r = (float)(nf_sampler_rand(s) >> 40) * (1.0f / 16777216.0f);
    double cum = 0.0;
    for (int i = 0; i < n; i++) {
        cum += c[i].p;
        if (r < cum)
            return c[i].id;
    }
    return c[n - 1].id;
}

int nf_top_logits(const float *logits, int n_vocab, int k, int32_t *ids, float *vals)
{
    int nk = 0;
    for (int i = 0; i < n_vocab && k > 0; i++) {
        int pos = nk < k ? nk++ : k;
        if (pos == k && !(logits[i] > logits[ids[k - 1]]))
            continue;
        if (pos == k)
            pos = k - 1;
        while (pos > 0 && logits[i] > logits[ids[pos - 1]]) {
            ids[pos] = ids[pos - 1];
            pos--;
        }
        ids[pos] = i;
    }
    for (int i = 0; i < nk; i++)
        vals[i] = logits[ids[i]];
    return nk;
}
