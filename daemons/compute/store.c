/* store.c - nanoflow-compute's prefix store (`up --kv-store DIR`, gen.h): the slots' kept
 * prefixes written into the directory before they are lost, and read back into a slot for a
 * request that extends one after a restart. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "gen.h"
#include "nf_err.h"

static void store_warn(void *ud, const char *msg)
{
    (void)ud;
    nf_log(NF_LOG_WARN, "%s", msg);
}

/* The store's gauges, after a change (worker, takes mu). */
static void store_gauges(struct nf_gen *g)
{
    pthread_mutex_lock(&g->mu);
    g->n_store_entries = (uint64_t)g->ks->n;
    g->n_store_bytes = g->ks->bytes;
    pthread_mutex_unlock(&g->mu);
}

int nf_gen_store_open(struct nf_gen *g)
{
    if (!g->kv_store_dir[0])
        return 0;
    if (g->prefix_off) {
        nf_log(NF_LOG_WARN, "kv-store: %s not used: --prefix-cache off keeps no prefix",
               g->kv_store_dir);
        return 0;
    }
    if (g->kv_block) {
        nf_log(NF_LOG_WARN,
               "kv-store: %s not used: the KV cache is on disk (--kv-offload), its "
               "rows are not all in memory to be saved or filled",
               g->kv_store_dir);
        return 0;
    }
    const struct nf_hparams *hp = nf_stream_hparams(g->s);
    const float sp = g->sparsity;
    struct nf_kv_store_id id = {.nft_size = g->f->hdr.file_size,
                                .nft_checksum = g->f->hdr.header_checksum,
                                .type_k = (uint32_t)(g->type_k ? g->type_k : NF_TYPE_F16),
                                .type_v = (uint32_t)(g->type_v ? g->type_v : NF_TYPE_F16),
                                .n_layer = (uint32_t)hp->n_layer,
                                .n_ubatch = (uint32_t)nf_stream_ubatch(g->s),
                                .row_k = nf_stream_kv_row_bytes(g->s, 0),
                                .row_v = nf_stream_kv_row_bytes(g->s, 1)};
    memcpy(&id.sparsity_bits, &sp, sizeof(sp));
    g->ks = calloc(1, sizeof(*g->ks));
    if (!g->ks)
        return nf_errf(g->init_err, sizeof(g->init_err), -ENOMEM, "out of memory");
    const uint64_t max = g->kv_store_max ? g->kv_store_max : NF_GEN_KV_STORE_MAX;
    int rc = nf_kv_store_open(g->ks, g->kv_store_dir, &id, max, store_warn, NULL, g->init_err,
                              sizeof(g->init_err));
    if (rc < 0) {
        free(g->ks);
        g->ks = NULL;
        return rc;
    }
    nf_log(NF_LOG_INFO, "kv-store: %s: %d stored prefixes, %llu bytes (at most %llu)",
           g->kv_store_dir, g->ks->n, (unsigned long long)g->ks->bytes, (unsigned long long)max);
    store_gauges(g);
    return 0;
}

void nf_gen_store_close(struct nf_gen *g)
{
    if (!g->ks)
        return;
    nf_kv_store_close(g->ks);
    free(g->ks);
    g->ks = NULL;
}

/* The rows of a slot, for kv_store.c. */
struct store_rows {
    struct nf_stream *s;
    int slot;
};

static void *store_rows(void *ud, int il, int which)
{
    const struct store_rows *sr = ud;
    return nf_stream_slot_kv_rows(sr->s, sr->slot, il, which);
}

/* Writes slot's kept prefix into the store unless it holds it already. */
static void store_save(struct nf_gen *g, int slot)
{
    struct nf_gen_kept *k = &g->kept[slot];
    if (k->saved || k->n < 1)
        return;
    k->saved = true; /* tried once: a failure is not retried for each request */
    if (nf_kv_store_has(g->ks, k->ids, k->n))
        return;
    char err[600];
    struct store_rows sr = {.s = g->s, .slot = slot};
    if (nf_kv_store_save(g->ks, k->ids, k->n, store_rows, &sr, err, sizeof(err)) < 0) {
        nf_log(NF_LOG_WARN, "%s", err);
        return;
    }
    pthread_mutex_lock(&g->mu);
    g->n_store_saved++;
    pthread_mutex_unlock(&g->mu);
    store_gauges(g);
    nf_log(NF_LOG_INFO, "kv-store: saved the %d-token prefix of slot %d", k->n, slot);
}

void nf_gen_store_flush(struct nf_gen *g)
{
    for (int i = 0; g->ks && i < g->parallel; i++)
        store_save(g, i);
}

void nf_gen_store_prepare(struct nf_gen_run *r, int n)
{
    struct nf_gen *g = r->g;
    if (!g->ks || n < 1)
        return;
    struct nf_gen_kept *k = &g->kept[r->slot];
    /* The stored prefix sharing the most with the prompt, by the kept prefixes' rule
     * (nf_stream_prefix_usable, at least NF_GEN_PREFIX_MIN). */
    int common = 0;
    const int e = nf_kv_store_match(g->ks, r->ids, n, nf_stream_n_ctx(g->s), &common);
    int l = nf_stream_prefix_usable(common, n, nf_stream_ubatch(g->s));
    if (l < NF_GEN_PREFIX_MIN)
        l = 0;
    const int reuse = l > r->reuse ? l : r->reuse;
    /* The slot's kept prefix is overwritten past what the request reuses: saved first. */
    if (reuse < k->n)
        store_save(g, r->slot);
    if (l <= r->reuse)
        return;
    /* Read into the slot: its kept prefix becomes the stored one. */
    const int en = g->ks->e[e].n;
    char err[600];
    struct store_rows sr = {.s = g->s, .slot = r->slot};
    nf_stream_slot_reset(g->s, r->slot);
    k->n = 0;
    r->reuse = 0;
    r->common = 0;
    int rc = nf_kv_store_load(g->ks, e, store_rows, &sr, err, sizeof(err));
    if (rc == 0)
        rc = nf_stream_slot_kv_filled(g->s, r->slot, en);
    if (rc < 0) {
        nf_log(NF_LOG_WARN, "%s; the prompt is evaluated whole", err);
        nf_stream_slot_reset(g->s, r->slot);
        store_gauges(g);
        return;
    }
    memcpy(k->ids, g->ks->e[e].ids, sizeof(int32_t) * (size_t)en);
    k->n = en;
    k->saved = true;
    k->used = ++g->kept_clock;
    r->reuse = l;
    r->common = common;
    pthread_mutex_lock(&g->mu);
    g->n_store_hits++;
    g->n_store_reused += (uint64_t)l;
    pthread_mutex_unlock(&g->mu);
    nf_log(NF_LOG_INFO, "request %llu: %d prompt tokens read from the kv-store into slot %d",
           (unsigned long long)r->j->req_id, l, r->slot);
}
