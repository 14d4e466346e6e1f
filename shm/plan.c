/* plan.c - how a RAM budget is split: context length, pool classes, private memory. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "kv_file.h"
#include "kv_quant.h"
#include "model.h"
#include "nf_err.h"
#include "nft.h"
#include "stack_int.h"

#define NF_STACK_CTX_MAX (1u << 24) /* context length a plan accepts */

/* "1.5 GiB" style sizes for messages. */
static const char *fmt_size(char *buf, size_t len, uint64_t b)
{
    static const char *unit[] = {"B", "KiB", "MiB", "GiB", "TiB"};
    double v = (double)b;
    int u = 0;
    while (v >= 1024 && u < 4) {
        v /= 1024;
        u++;
    }
    if (u == 0)
        snprintf(buf, len, "%llu B", (unsigned long long)b);
    else
        snprintf(buf, len, "%.1f %s", v, unit[u]);
    return buf;
}

/* Bytes of a KV cache row of n values of type t: f16 halves, or 32-value blocks of q8_0 (34
 * bytes) or q4_0 (18 bytes), as ggml's (quants.h). */
static uint64_t kv_row_bytes(uint32_t t, uint64_t n)
{
    const uint64_t blocks = (n + NF_QK8_0 - 1) / NF_QK8_0;
    switch (t) {
    case NF_TYPE_Q8_0: return blocks * sizeof(nf_block_q8_0);
    case NF_TYPE_Q4_0: return blocks * sizeof(nf_block_q4_0);
    default: return n * sizeof(nf_fp16_t);
    }
}

/* K and V of one position in every layer, in the shape's cache types (deepseek2: its F16
 * latent, the one thing cached). */
static uint64_t kv_token_bytes(const struct nf_stack_shape *sh)
{
    if (sh->kv_latent)
        return (uint64_t)sh->n_layer * sh->kv_latent * 2;
    uint64_t k_dim = (uint64_t)sh->n_head_kv * sh->head_k;
    uint64_t v_dim = (uint64_t)sh->n_head_kv * sh->head_v;
    return (uint64_t)sh->n_layer *
           (kv_row_bytes(sh->type_k, k_dim) + kv_row_bytes(sh->type_v, v_dim));
}

/* The attention hyperparameters the scratch bounds need, from the shape: the widest cell
 * padding (gemma3's 256) and the latent's whole width as deepseek2's values. */
static struct nf_hparams plan_attn_hp(const struct nf_stack_shape *sh)
{
    return (struct nf_hparams){.n_head = (int)sh->n_head,
                               .head_dim = (int)(sh->kv_latent ? sh->kv_latent : sh->head_k),
                               .n_lora_kv = (int)sh->kv_latent,
                               .kv_pad = 256};
}

/* Compute's prompt chunk in tokens. */
static uint32_t plan_ub(const struct nf_stack_shape *sh)
{
    return sh->n_ubatch ? sh->n_ubatch : NF_STACK_UBATCH;
}

/* The layer a prompt chunk reads back whole with the KV cache on disk (nf_kv_file_prompt_layer;
 * 0: its chunks walk the window, as deepseek2's latent attention reads its own layers). */
static uint64_t kv_prompt_layer(const struct nf_stack_shape *sh, uint32_t n_ctx)
{
    if (sh->kv_latent || plan_ub(sh) < 2)
        return 0;
    return nf_kv_file_prompt_layer((int)n_ctx, (size_t)(kv_token_bytes(sh) / sh->n_layer));
}

/* The attention walk's scratch with the KV cache on disk (nf_attn_walk_bytes): for single
 * tokens only when prompt chunks read their layer whole. */
static uint64_t kv_walk_bytes(const struct nf_stack_shape *sh, uint32_t n_ctx)
{
    const struct nf_hparams hp = plan_attn_hp(sh);
    return nf_attn_walk_bytes(&hp, (int)n_ctx, kv_prompt_layer(sh, n_ctx) ? 1 : (int)plan_ub(sh),
                              (size_t)(kv_token_bytes(sh) * n_ctx));
}

/* One compute thread's attention scratch (nf_attn_scratch_bytes: prompt tiles included). */
static uint64_t att_scratch_bytes(const struct nf_stack_shape *sh, uint32_t n_ctx)
{
    const struct nf_hparams hp = plan_attn_hp(sh);
    return nf_attn_scratch_bytes(&hp, (int)n_ctx, (int)plan_ub(sh));
}

/* Fills the byte counts of a plan with counts[k] slots in class k and context n_ctx; returns
 * the total. */
/* KV block tiles in the pool unless NANOFLOW_KV_TILES is "off" (every process of a stack sees
 * the environment `up` started it with, so they all compute the same plan): then compute reads
 * the blocks back into its own window, the path before the tiles, kept to compare them. */
static bool kv_tiles_on(void)
{
    const char *e = getenv("NANOFLOW_KV_TILES");
    return !e || strcmp(e, "off") != 0;
}

uint64_t nf__plan_total(const struct nf_stack_shape *sh, const uint64_t *counts, uint32_t n_ctx,
                        uint32_t n_threads, struct nf_stack_plan *p)
{
    uint64_t n_slots = 0, pool = 0;
    p->n_classes = sh->n_classes;
    for (uint32_t k = 0; k < sh->n_classes; k++) {
        struct nf_stack_class *c = &p->classes[k];
        c->slot_size = sh->class_size[k];
        c->n_slots = counts[k];
        c->first_slot = n_slots;
        c->pool_off = pool;
        n_slots += counts[k];
        pool += counts[k] * sh->class_size[k];
        p->class_min[k] = sh->class_min[k];
        p->class_tiles[k] = sh->class_tiles[k];
    }
    /* The KV cache on disk read through the pool: a class of its own past the weights' (when
     * one is free; deepseek2's latent reads its layers itself), as many slots of a block as
     * compute's read-back window would hold, which the plan no longer reserves (below). */
    const uint64_t n_seq = p->n_seq ? p->n_seq : 1;
    p->kv_tiles = 0;
    p->kv_n_blk = 0;
    p->kv_row_k = p->kv_row_v = 0;
    if (p->kv_block && !sh->kv_latent && sh->n_classes < NF_STACK_MAX_CLASSES && kv_tiles_on() &&
        sh->n_tiles + n_seq * sh->n_layer * 2 * ((n_ctx + p->kv_block - 1) / p->kv_block) <
            NF_NO_TILE) {
        p->kv_row_k = kv_row_bytes(sh->type_k, (uint64_t)sh->n_head_kv * sh->head_k);
        p->kv_row_v = kv_row_bytes(sh->type_v, (uint64_t)sh->n_head_kv * sh->head_v);
        p->kv_n_blk = (n_ctx + p->kv_block - 1) / p->kv_block;
        p->kv_tiles = n_seq * sh->n_layer * 2 * p->kv_n_blk;
        const uint64_t row = p->kv_row_k > p->kv_row_v ? p->kv_row_k : p->kv_row_v;
        struct nf_stack_class *c = &p->classes[sh->n_classes];
        c->slot_size = nf__align_to((uint64_t)p->kv_block * row, NF_SHM_ALIGN);
        c->n_slots = (uint64_t)nf_kv_file_window_blocks((int)n_ctx, (int)p->kv_block,
                                                        (size_t)(p->kv_row_k + p->kv_row_v));
        c->first_slot = n_slots;
        c->pool_off = pool;
        n_slots += c->n_slots;
        pool += c->n_slots * c->slot_size;
    }
    struct nf_stack_layout lo;
    nf__stack_layout(sh, n_slots, p->kv_tiles, (uint32_t)n_seq, &lo);
    p->n_slots = n_slots;
    p->pool_bytes = pool;
    p->area_sizes[NF_SHM_TILE_POOL] = p->pool_bytes;
    p->area_sizes[NF_SHM_TILE_TABLE] = lo.table_bytes;
    p->area_sizes[NF_SHM_REQ_RING] = lo.ring_bytes;
    p->area_sizes[NF_SHM_COMPLETION] = sizeof(struct nf_stack_sync);
    p->area_sizes[NF_SHM_ACTIVATIONS] = lo.act_bytes;
    p->area_sizes[NF_SHM_COUNTERS] = sizeof(struct nf_stack_counters);
    /* The region as nf_shm_create lays it out: a header page, then each area page-aligned. */
    uint64_t region = NF_SHM_ALIGN;
    for (int i = 0; i < NF_SHM_NAREAS; i++)
        region += nf__align_to(p->area_sizes[i], NF_SHM_ALIGN);
    p->region_bytes = region;
    /* Kernel memory charged to the stack: the page tables of each process's mapping of the
     * region (8 bytes per 4 KiB page, region / 512, doubled for partly used table pages and
     * the io_uring registration) and the sockets', logs' and slab's page cache. */
    p->kernel_bytes = NF_STACK_MAPPINGS * (region / 256) + NF_STACK_KERNEL_BYTES;

    p->kv_token_bytes = kv_token_bytes(sh);
    p->type_k = sh->type_k ? sh->type_k : NF_TYPE_F16;
    p->type_v = sh->type_v ? sh->type_v : NF_TYPE_F16;
    p->kv_bytes = p->kv_token_bytes * n_ctx * n_seq;
    p->kv_file_bytes = 0;
    if (p->kv_block) { /* on disk: only the resident blocks (kv_file.h), rows of the types */
        p->kv_file_bytes = p->kv_bytes;
        const size_t row = (size_t)(p->kv_token_bytes / sh->n_layer);
        p->kv_bytes = kv_prompt_layer(sh, n_ctx) + nf_kv_file_resident_bound((int)sh->n_layer,
                                                                             (int)n_ctx, (int)n_seq,
                                                                             (int)p->kv_block, row);
        if (p->kv_tiles) /* the window's blocks are the pool's KV class (above) */
            p->kv_bytes = kv_prompt_layer(sh, n_ctx) +
                          nf_kv_file_newest_bound((int)sh->n_layer, (int)n_ctx, (int)n_seq,
                                                  (int)p->kv_block, row);
    }
    /* Compute's float activations: per token of a prompt chunk (the ubatch) the residual and
     * its normed copies, q/k/v, attention output, FFN hidden states and their quantized
     * copies; then logits twice (raw and sampled), and the attention scores (per head, n_ctx
     * each; each thread's attention scratch is added below); with several sequences each one's
     * logits, a step's logits and activations row by row (a MoE row's expert outputs too). */
    const uint64_t ub = plan_ub(sh);
    uint64_t act_floats = (8ull * sh->n_embd + 4ull * sh->n_ff) * ub + 2ull * sh->n_vocab +
                          (uint64_t)sh->n_head * n_ctx;
    if (n_seq > 1)
        act_floats += n_seq * (2ull * sh->n_vocab + 16ull * sh->n_embd + 4ull * sh->n_ff);
    p->n_ubatch = (uint32_t)ub;
    p->down_scratch = sh->down_scratch;
    p->compute_private = NF_STACK_PROC_BYTES + p->kv_bytes + sh->down_scratch +
                         act_floats * sizeof(float) + n_threads * att_scratch_bytes(sh, n_ctx);
    if (p->kv_block) /* the attention walk's scores and sums (independent of n_ctx past 32 MiB) */
        p->compute_private += kv_walk_bytes(sh, n_ctx);
    /* The predictor reads a dense model's low-rank predictor tiles from the pool and keeps a
     * MoE model's routers (small) in private copies; it keeps scores and inputs. */
    uint64_t groups = sh->max_groups ? sh->max_groups : 1;
    p->predictor_private = NF_STACK_PROC_BYTES + sh->pred_copies +
                           (2ull * sh->n_ff + 2ull * sh->n_embd + 2 * groups) * sizeof(float);
    /* The fetcher keeps per-tile policy state and its io_uring / worker queues. */
    p->fetcher_private = NF_STACK_PROC_BYTES + (sh->n_tiles + p->kv_tiles) * 16 + (256ull << 10);
    p->n_ctx = n_ctx;
    return p->region_bytes + p->kernel_bytes + p->compute_private + p->predictor_private +
           p->fetcher_private;
}

/* What one more slot of `size` bytes costs: itself, its table entry and its page tables. */
static uint64_t slot_cost(uint64_t size)
{
    return size + sizeof(struct nf_slot_entry) + NF_STACK_MAPPINGS * (size / 256);
}

/* Splits `rest` bytes (what the budget leaves beyond the minimum pool) between the classes,
 * adding slots to counts[] (which hold the minimum). Compute scans every tile of a token step
 * in order, so a farthest-next-use cache of C bytes in a class saves about C bytes of reads per
 * step as long as C is below what a step reads from that class; a byte of cache saves about as
 * much in any class, but none beyond a class's step set (those tiles would be reread anyway or
 * never read). Hence:
 *  1. a class whose whole step set costs at most 1/32 of rest gets it at once (the small
 *     class's norms: ~1 MiB for a 7B model, every one read every step);
 *  2. the rest is shared in proportion to the bytes a step reads from each class, a class
 *     never getting more slots than its step set (what it cannot take is shared again among
 *     the others), so every class keeps about the same fraction of its step;
 *  3. what rounding leaves goes slot by slot to the classes that read the most, then beyond
 *     the step sets (embedding rows of other tokens) up to each class's tile count.
 * The plan does not know the sparsity: a step counts every FFN tile and the predictor tiles
 * (which compute reads only in sparse mode; the predictor class is ~3% of a 7B step). */
static void plan_split(const struct nf_stack_shape *sh, uint64_t rest, uint64_t *counts)
{
    uint32_t nk = sh->n_classes;
    uint64_t cap[NF_STACK_MAX_CLASSES], cost[NF_STACK_MAX_CLASSES];
    for (uint32_t k = 0; k < nk; k++) {
        cap[k] = sh->class_step[k] > counts[k] ? sh->class_step[k] : counts[k];
        if (cap[k] > sh->class_tiles[k])
            cap[k] = sh->class_tiles[k] > counts[k] ? sh->class_tiles[k] : counts[k];
        cost[k] = slot_cost(sh->class_size[k]);
    }
    uint64_t cheap = rest / 32;
    for (uint32_t k = 0; k < nk; k++) {
        uint64_t add = cap[k] - counts[k];
        if (add > 0 && add <= cheap / cost[k]) {
            counts[k] += add;
            rest -= add * cost[k];
            cheap -= add * cost[k];
        }
    }
    for (uint32_t iter = 0; iter < nk; iter++) {
        double need = 0;
        for (uint32_t k = 0; k < nk; k++)
            if (counts[k] < cap[k])
                need += (double)sh->class_need[k];
        if (need <= 0)
            break;
        bool capped = false;
        uint64_t avail = rest;
        for (uint32_t k = 0; k < nk; k++) {
            if (counts[k] >= cap[k])
                continue;
            double share = (double)avail * ((double)sh->class_need[k] / need);
            uint64_t add = (uint64_t)(share / (double)cost[k]);
            if (add > rest / cost[k]) /* floating rounding */
                add = rest / cost[k];
            if (add >= cap[k] - counts[k]) {
                add = cap[k] - counts[k];
                capped = true;
            }
            counts[k] += add;
            rest -= add * cost[k];
        }
        if (!capped)
            break;
    }
    /* Leftovers: classes by bytes read per step, most first; then beyond the step sets. */
    uint32_t order[NF_STACK_MAX_CLASSES];
    for (uint32_t k = 0; k < nk; k++) {
        uint32_t j = k;
        while (j > 0 && sh->class_need[order[j - 1]] < sh->class_need[k]) {
            order[j] = order[j - 1];
            j--;
        }
        order[j] = k;
    }
    for (int pass = 0; pass < 2; pass++) {
        for (uint32_t i = 0; i < nk; i++) {
            uint32_t k = order[i];
            uint64_t limit = pass ? sh->class_tiles[k] : cap[k];
            if (counts[k] >= limit)
                continue;
            uint64_t add = rest / cost[k];
            if (add > limit - counts[k])
                add = limit - counts[k];
            counts[k] += add;
            rest -= add * cost[k];
        }
    }
}

/* Takes one slot from the class above its minimum that reads the most per step (page rounding
 * may push a split over the budget by a slot or two). Returns false when every class is at its
 * minimum. */
static bool plan_shrink(const struct nf_stack_shape *sh, uint64_t *counts)
{
    int best = -1;
    for (uint32_t k = 0; k < sh->n_classes; k++)
        if (counts[k] > sh->class_min[k] && (best < 0 || sh->class_need[k] >= sh->class_need[best]))
            best = (int)k;
    if (best < 0)
        return false;
    counts[best]--;
    return true;
}

/* "6 x 16.0 KiB + 47 x 1.0 MiB" style description of a pool for messages. */
static const char *fmt_classes(char *buf, size_t len, const struct nf_stack_shape *sh,
                               const uint64_t *counts)
{
    size_t o = 0;
    buf[0] = '\0';
    for (uint32_t k = 0; k < sh->n_classes && o < len; k++) {
        char s[32];
        int n = snprintf(buf + o, len - o, "%s%llu x %s", k ? " + " : "",
                         (unsigned long long)counts[k], fmt_size(s, sizeof(s), sh->class_size[k]));
        if (n < 0)
            break;
        o += (size_t)n;
    }
    return buf;
}

int nf_stack_plan(const struct nf_nft *f, uint64_t ram_budget, uint32_t n_ctx_req,
                  uint32_t n_threads, struct nf_stack_plan *plan, char *err, size_t errlen)
{
    return nf_stack_plan_seq_ub(f, ram_budget, n_ctx_req, n_threads, 1, 0, plan, err, errlen);
}

int nf_stack_plan_seq(const struct nf_nft *f, uint64_t ram_budget, uint32_t n_ctx_req,
                      uint32_t n_threads, uint32_t n_seq, struct nf_stack_plan *plan, char *err,
                      size_t errlen)
{
    return nf_stack_plan_seq_ub(f, ram_budget, n_ctx_req, n_threads, n_seq, 0, plan, err, errlen);
}

int nf_stack_plan_ub(const struct nf_nft *f, uint64_t ram_budget, uint32_t n_ctx_req,
                     uint32_t n_threads, uint32_t n_ubatch, struct nf_stack_plan *plan, char *err,
                     size_t errlen)
{
    return nf_stack_plan_seq_ub(f, ram_budget, n_ctx_req, n_threads, 1, n_ubatch, plan, err,
                                errlen);
}

/* The total of the minimum pool with n_seq sequences at n_ctx (p is scratch). */
static uint64_t min_total(const struct nf_stack_shape *sh, uint32_t n_ctx, uint32_t n_threads,
                          uint32_t n_seq, struct nf_stack_plan *p)
{
    p->n_seq = n_seq;
    return nf__plan_total(sh, sh->class_min, n_ctx, n_threads, p);
}

/* The most sequences, up to NF_STACK_SEQ_MAX, whose caches fit beside the minimum pool at
 * n_ctx (0 when not even one does). */
static uint32_t seq_fit(const struct nf_stack_shape *sh, uint64_t ram_budget, uint32_t n_ctx,
                        uint32_t n_threads, struct nf_stack_plan *p)
{
    uint32_t n = 0;
    while (n < NF_STACK_SEQ_MAX && min_total(sh, n_ctx, n_threads, n + 1, p) <= ram_budget)
        n++;
    return n;
}

int nf_stack_plan_seq_ub(const struct nf_nft *f, uint64_t ram_budget, uint32_t n_ctx_req,
                         uint32_t n_threads, uint32_t n_seq, uint32_t n_ubatch,
                         struct nf_stack_plan *plan, char *err, size_t errlen)
{
    return nf_stack_plan_kv(f, ram_budget, n_ctx_req, n_threads, n_seq, n_ubatch, NF_TYPE_F16,
                            NF_TYPE_F16, 0, plan, err, errlen);
}

int nf_stack_plan_kv(const struct nf_nft *f, uint64_t ram_budget, uint32_t n_ctx_req,
                     uint32_t n_threads, uint32_t n_seq, uint32_t n_ubatch, uint32_t type_k,
                     uint32_t type_v, uint32_t kv_block, struct nf_stack_plan *plan, char *err,
                     size_t errlen)
{
    memset(plan, 0, sizeof(*plan));
    type_k = type_k ? type_k : NF_TYPE_F16;
    type_v = type_v ? type_v : NF_TYPE_F16;
    if (!nf_kv_type_ok((enum nf_type)type_k) || !nf_kv_type_ok((enum nf_type)type_v))
        return nf_errf(err, errlen, NF_EUSAGE,
                       "stack plan: KV cache types %u / %u, expected f16 (%d), q8_0 (%d) or q4_0 "
                       "(%d)",
                       type_k, type_v, NF_TYPE_F16, NF_TYPE_Q8_0, NF_TYPE_Q4_0);
    struct nf_stack_shape sh;
    int rc = nf__stack_shape(f, &sh, err, errlen);
    if (rc < 0)
        return rc;
    sh.type_k = type_k;
    sh.type_v = type_v;
    if (n_threads == 0)
        n_threads = 1;
    if (n_ctx_req > NF_STACK_CTX_MAX || n_threads > 4096 || n_seq > NF_STACK_SEQ_MAX ||
        n_ubatch > 4096)
        return nf_errf(err, errlen, NF_EUSAGE,
                       "stack plan: context %u, threads %u, %u sequences and ubatch %u, expected "
                       "at most %u, 4096, %u and 4096",
                       n_ctx_req, n_threads, n_seq, n_ubatch, NF_STACK_CTX_MAX, NF_STACK_SEQ_MAX);
    const bool seq_auto = n_seq == 0, ub_auto = n_ubatch == 0;
    sh.n_ubatch = n_ubatch;
    uint32_t want = n_ctx_req;
    if (want == 0) {
        want = sh.n_ctx_model ? sh.n_ctx_model : NF_STACK_CTX_LIMIT;
        /* (capped just below, so a hostile context_length cannot overflow either) */
        if (want > NF_STACK_CTX_LIMIT)
            want = NF_STACK_CTX_LIMIT;
    }
    uint32_t ctx_min = want < NF_STACK_MIN_CTX ? want : NF_STACK_MIN_CTX;

    struct nf_stack_plan p;
    memset(&p, 0, sizeof(p));
    p.kv_block = kv_block;
    uint64_t min_budget = nf__plan_total(&sh, sh.class_min, ctx_min, n_threads, &p);
    p.ram_budget = ram_budget;
    p.min_budget = min_budget;
    p.n_ctx_want = want;
    p.n_ctx_min = ctx_min;
    p.min_slots = sh.min_slots;
    p.demand_count = sh.demand_count;
    p.prefetch_count = sh.prefetch_count;
    p.max_groups = sh.max_groups;
    if (ram_budget < min_budget && n_ubatch > 1) {
        /* Is it the ubatch? The largest one the minimum pool leaves room for, if any. */
        struct nf_stack_plan q = p;     /* (one sequence, as min_budget) */
        uint32_t lo = 0, hi = n_ubatch; /* hi does not fit */
        while (hi - lo > 1) {
            uint32_t mid = lo + (hi - lo) / 2;
            sh.n_ubatch = mid;
            if (nf__plan_total(&sh, sh.class_min, ctx_min, n_threads, &q) <= ram_budget)
                lo = mid;
            else
                hi = mid;
        }
        sh.n_ubatch = n_ubatch;
        if (lo > 0) {
            *plan = p;
            char b[32], m[32];
            return nf_errf(err, errlen, -ENOSPC,
                           "a prompt ubatch of %u tokens does not fit the budget %s (it needs %s "
                           "with the minimum pool): at most %u does",
                           n_ubatch, fmt_size(b, sizeof(b), ram_budget),
                           fmt_size(m, sizeof(m), min_budget), lo);
        }
    }
    if (ram_budget < min_budget) {
        *plan = p;
        char b[32], m[32], pool[160], kv[32], priv[32];
        const char *name = strrchr(f->path, '/') ? strrchr(f->path, '/') + 1 : f->path;
        return nf_errf(
            err, errlen, -ENOSPC,
            "budget %s is below the minimum %s for %s (pool %llu slots: %s, KV cache "
            "%s at n_ctx %u, private memory %s)",
            fmt_size(b, sizeof(b), ram_budget), fmt_size(m, sizeof(m), min_budget),
            name[0] ? name : "the model", (unsigned long long)sh.min_slots,
            fmt_classes(pool, sizeof(pool), &sh, sh.class_min),
            fmt_size(kv, sizeof(kv), p.kv_bytes), ctx_min,
            fmt_size(priv, sizeof(priv),
                     p.compute_private - p.kv_bytes + p.predictor_private + p.fetcher_private));
    }

    /* Sequences: a given count must fit beside the minimum pool at the smallest context the
     * plan may cap to (a larger context is then capped for them, as for one sequence). */
    const uint32_t seq_ctx = ctx_min;
    if (!seq_auto && min_total(&sh, seq_ctx, n_threads, n_seq, &p) > ram_budget) {
        const uint32_t fit = seq_fit(&sh, ram_budget, seq_ctx, n_threads, &p);
        char b[32];
        *plan = p;
        return nf_errf(err, errlen, NF_EUSAGE,
                       "%u sequences do not fit in the budget %s at n_ctx %u (their KV caches "
                       "beside the minimum pool): at most %u do",
                       n_seq, fmt_size(b, sizeof(b), ram_budget), seq_ctx, fit ? fit : 1);
    }

    /* Context: without a request, the largest multiple of NF_STACK_MIN_CTX whose KV caches
     * take at most a quarter of the budget (the pool should get most of it), but not below
     * ctx_min nor above the model's default. */
    uint32_t n_ctx = want;
    if (n_ctx_req == 0 && !kv_block) {
        uint64_t q = ram_budget / 4 / kv_token_bytes(&sh) / (seq_auto ? 1 : n_seq);
        q = q / NF_STACK_MIN_CTX * NF_STACK_MIN_CTX;
        if (q < ctx_min)
            q = ctx_min;
        if (q < n_ctx)
            n_ctx = (uint32_t)q;
    }
    /* Chosen sequences: the most, up to NF_STACK_SEQ_DEFAULT, whose caches at that context
     * take at most a quarter of the budget and fit beside the minimum pool (at least 1). */
    if (seq_auto) {
        uint64_t q = ram_budget / 4 / (kv_token_bytes(&sh) * n_ctx);
        const uint32_t fit = seq_fit(&sh, ram_budget, n_ctx, n_threads, &p);
        q = q < fit ? q : fit;
        n_seq = q < 1 ? 1 : q > NF_STACK_SEQ_DEFAULT ? NF_STACK_SEQ_DEFAULT : (uint32_t)q;
    }
    p.n_seq = n_seq;
    /* Then: that context if the minimum pool fits beside it, else the largest that does
     * (binary search: the total grows with n_ctx), rounded down to a multiple of
     * NF_STACK_MIN_CTX when above it. */
    if (nf__plan_total(&sh, sh.class_min, n_ctx, n_threads, &p) > ram_budget) {
        uint32_t lo = ctx_min, hi = n_ctx; /* lo fits, hi does not */
        while (hi - lo > 1) {
            uint32_t mid = lo + (hi - lo) / 2;
            if (nf__plan_total(&sh, sh.class_min, mid, n_threads, &p) <= ram_budget)
                lo = mid;
            else
                hi = mid;
        }
        n_ctx = lo;
        if (n_ctx > NF_STACK_MIN_CTX)
            n_ctx = n_ctx / NF_STACK_MIN_CTX * NF_STACK_MIN_CTX;
    }

    /* Ubatch: without a request, the largest of NF_STACK_UBATCH_MAX, its halves down to
     * NF_STACK_UBATCH (and not past the context) whose activations and attention scratch take
     * at most a quarter of the budget (what a ubatch adds to the plan over one token) and
     * leave room for the minimum pool: a prompt then reads the weights once per ubatch, and
     * the pool keeps most of the budget for decoding. Else NF_STACK_UBATCH, as before. */
    if (ub_auto) {
        struct nf_stack_plan q = p;
        sh.n_ubatch = 1;
        const uint64_t one = nf__plan_total(&sh, sh.class_min, n_ctx, n_threads, &q);
        uint32_t ub = NF_STACK_UBATCH;
        for (uint32_t u = NF_STACK_UBATCH_MAX; u > NF_STACK_UBATCH; u /= 2) {
            if (u > n_ctx)
                continue;
            sh.n_ubatch = u;
            const uint64_t t = nf__plan_total(&sh, sh.class_min, n_ctx, n_threads, &q);
            if (t <= ram_budget && t - one <= ram_budget / 4) {
                ub = u;
                break;
            }
        }
        sh.n_ubatch = ub;
    }

    /* Pool: every byte left, split between the classes (plan_split), but never more slots in a
     * class than it has tiles (nothing would use them); so never more than slot ids can name
     * either (n_tiles < NF_NO_TILE == NF_NO_SLOT). */
    uint64_t base = nf__plan_total(&sh, sh.class_min, n_ctx, n_threads, &p);
    uint64_t counts[NF_STACK_MAX_CLASSES];
    memcpy(counts, sh.class_min, sizeof(counts));
    plan_split(&sh, ram_budget - base, counts);
    /* Page rounding of the areas may push the estimate over by a slot or two. */
    while (nf__plan_total(&sh, counts, n_ctx, n_threads, &p) > ram_budget &&
           plan_shrink(&sh, counts))
        ;
    nf__plan_total(&sh, counts, n_ctx, n_threads, &p);
    *plan = p;
    return 0;
}

uint32_t nf_stack_compute_threads(uint32_t requested)
{
    if (requested > 0)
        return requested;
    long n = sysconf(_SC_NPROCESSORS_ONLN);
    return n > 1 ? (uint32_t)n : 1;
}

uint32_t nf_stack_decode_threads(uint32_t requested)
{
    if (requested > 0)
        return requested;
    long n = sysconf(_SC_NPROCESSORS_ONLN);
    return n > 2 ? (uint32_t)(n - 1) : 1;
}
