/* spec_draft.c - a small draft model as the draft source of speculative decoding: the draft
 * model (in RAM, its own KV cache) decodes greedily ahead of the target. */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "generate.h"
#include "nf_err.h"

int nf_gen_vocab_check(const struct nf_vocab *target, const struct nf_vocab *draft, char *err,
                       size_t errlen)
{
    const int32_t n = nf_vocab_n_tokens(target), nd = nf_vocab_n_tokens(draft);
    if (n != nd)
        return nf_errf(err, errlen, NF_EUSAGE,
                       "the draft model's vocabulary has %d tokens, the model's %d: a draft model "
                       "needs the same vocabulary",
                       nd, n);
    if (nf_vocab_bos(target) != nf_vocab_bos(draft) || nf_vocab_eos(target) != nf_vocab_eos(draft))
        return nf_errf(err, errlen, NF_EUSAGE,
                       "the draft model's BOS/EOS tokens are %d/%d, the model's %d/%d: a draft "
                       "model needs the same vocabulary",
                       nf_vocab_bos(draft), nf_vocab_eos(draft), nf_vocab_bos(target),
                       nf_vocab_eos(target));
    for (int32_t t = 0; t < n; t++) {
        const char *a = nf_vocab_token_text(target, t), *b = nf_vocab_token_text(draft, t);
        if (strcmp(a ? a : "", b ? b : ""))
            return nf_errf(err, errlen, NF_EUSAGE,
                           "token %d is '%s' in the draft model's vocabulary but '%s' in the "
                           "model's: a draft model needs the same vocabulary",
                           t, b ? b : "", a ? a : "");
    }
    return 0;
}

int nf_gen_draft_model_init(struct nf_gen_draft *d, struct nf_gen_draft_model *dm, struct nf_ctx *c,
                            const struct nf_vocab *v)
{
    memset(dm, 0, sizeof(*dm));
    dm->c = c;
    dm->v = v;
    dm->ids = malloc(sizeof(int32_t) * (size_t)c->n_ctx);
    if (!dm->ids)
        return -ENOMEM;
    *d = (struct nf_gen_draft){.draft = nf_gen_draft_model_run, .ud = dm};
    return 0;
}

void nf_gen_draft_model_free(struct nf_gen_draft_model *dm)
{
    free(dm->ids);
    dm->ids = NULL;
}

/* The index of the largest logit (the lowest id on ties, as the greedy sampler). */
static int32_t argmax(const float *x, int n)
{
    int32_t b = 0;
    for (int i = 1; i < n; i++)
        if (x[i] > x[b])
            b = i;
    return b;
}

/* Evaluates tok on the draft context and records it. */
static int dm_eval(struct nf_gen_draft_model *dm, const int32_t *toks, int n)
{
    int rc = nf_ctx_eval(dm->c, toks, n);
    if (rc < 0)
        return rc;
    memcpy(dm->ids + dm->n_ids, toks, sizeof(int32_t) * (size_t)n);
    dm->n_ids += n;
    return 0;
}

int nf_gen_draft_model_run(void *ud, const int32_t *ids, int n, int32_t *out, int max)
{
    struct nf_gen_draft_model *dm = ud;
    struct nf_ctx *c = dm->c;
    const int V = c->m->hp.n_vocab;
    /* Keep what the draft context shares with the sequence (its accepted drafts included),
     * drop the rest, and evaluate what it lacks; the last token is evaluated again when it is
     * all there is, for its logits. */
    int p = 0;
    while (p < dm->n_ids && p < n && dm->ids[p] == ids[p])
        p++;
    if (p == n)
        p = n - 1;
    if (n + max - 1 > c->n_ctx) /* no room to draft: the target's context is the same */
        max = c->n_ctx - n + 1;
    if (max < 1 || n > c->n_ctx)
        return 0;
    int rc = nf_ctx_rollback(c, p);
    if (rc < 0)
        return rc;
    dm->n_ids = p;
    if ((rc = dm_eval(dm, ids + p, n - p)) < 0)
        return rc;
    int nd = 0;
    while (nd < max) {
        const int32_t t = argmax(c->logits, V);
        out[nd++] = t;
        if (nd == max || nf_vocab_is_eog(dm->v, t))
            break;
        if ((rc = dm_eval(dm, &t, 1)) < 0)
            return rc;
    }
    return nd;
}

uint64_t nf_gen_draft_ctx_bytes(const struct nf_hparams *hp, int n_ctx, int n_threads)
{
    const uint64_t B = NF_MAX_BATCH, E = (uint64_t)hp->n_embd, V = (uint64_t)hp->n_vocab;
    const uint64_t qd = (uint64_t)hp->n_head * (uint64_t)hp->head_dim;
    const uint64_t kvd = (uint64_t)hp->n_head_kv * (uint64_t)hp->head_dim;
    const uint64_t F = (uint64_t)(hp->n_ff_shexp > hp->n_ff ? hp->n_ff_shexp : hp->n_ff);
    uint64_t maxin = E > qd ? E : qd;
    maxin = maxin > F ? maxin : F;
    /* nf_ctx_create's F16 KV cache and scratch (see model_forward.c), the draft's token record,
     * and the target's verification rows (NF_GEN_SPEC_MAX + 1 of n_vocab logits). */
    const uint64_t kv = 2ull * 2ull * (uint64_t)hp->n_layer * (uint64_t)n_ctx * kvd;
    const uint64_t act =
        4ull * (B * (4 * E + 2 * qd + 2 * kvd + 2 * F + maxin + 16 + (uint64_t)hp->n_rot) + V);
    const uint64_t att = (uint64_t)(n_threads > 0 ? n_threads : 1) *
                         ((uint64_t)hp->head_dim * 4 + 128 + ((uint64_t)n_ctx + 256) * 8);
    return kv + act + att + 4ull * (uint64_t)n_ctx + 4ull * (NF_GEN_SPEC_MAX + 1) * V;
}
