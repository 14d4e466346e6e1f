/* stack.c - the stack's shared region: budget plan, create/attach, and the tile protocol. */
#include "stack.h"

#include <errno.h>
#include <sched.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "nf_err.h"
#include "nft.h"
#include "quants.h"

/* The config and the per-tile/per-slot tables are shared between processes and builds. */
_Static_assert(offsetof(struct nf_tile_entry, state) == 0, "tile entry layout");
_Static_assert(offsetof(struct nf_tile_entry, slot) == 4, "tile entry layout");
_Static_assert(offsetof(struct nf_tile_entry, pins) == 8, "tile entry layout");
_Static_assert(offsetof(struct nf_tile_entry, last_use) == 12, "tile entry layout");
_Static_assert(offsetof(struct nf_stack_config, magic) == 0, "stack config layout");
_Static_assert(ATOMIC_INT_LOCK_FREE == 2, "32-bit atomics must be lock-free (address-free)");

/* Slots beyond the minimum working set, so a prefetch can land while compute holds its set. */
#define NF_STACK_SPARE_SLOTS 2
/* FFN / expert tiles the minimum pool holds besides one layer's attention set. */
#define NF_STACK_MIN_FFN_TILES 4
/* Tiles up to this size (norms, embedding rows) go in the small class of the pool. */
#define NF_STACK_SMALL_TILE (64ull << 10)
/* The largest slot a region may declare (a tile is at most this big in any sane .nft). */
#define NF_STACK_MAX_SLOT     (1ull << 32)
#define NF_STACK_MIN_DEMAND   64u  /* demand ring entries at least */
#define NF_STACK_MIN_PREFETCH 256u /* prefetch ring entries at least */
#define NF_STACK_CL           64u  /* cache line: alignment of the tables inside an area */
/* Longest single sleep of nf_tile_pin_wait, so a stop flag set without a bell is still seen. */
#define NF_STACK_WAIT_SLICE_MS 200
#define NF_STACK_DIM_MAX       (1u << 24) /* widths and vocabulary a plan accepts */
#define NF_STACK_CTX_MAX       (1u << 24) /* context length a plan accepts */

static int errf(char *err, size_t errlen, int rc, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
static int errf(char *err, size_t errlen, int rc, const char *fmt, ...)
{
    if (err && errlen) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(err, errlen, fmt, ap);
        va_end(ap);
    }
    return rc;
}

static uint64_t align_to(uint64_t v, uint64_t a)
{
    return (v + a - 1) / a * a;
}

static uint32_t pow2_at_least(uint64_t v)
{
    uint64_t p = 1;
    while (p < v && p < NF_RING_MAX_COUNT)
        p <<= 1;
    return (uint32_t)p;
}

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

/* --- Plan ---------------------------------------------------------------------------------- */

/* What the plan needs to know about a model, gathered from its header and tile index. */
struct nf_stack_shape {
    uint64_t n_tiles;
    uint32_t n_layer, n_embd, n_ff, n_vocab, n_head, n_head_kv;
    uint32_t demand_count; /* ring entries */
    uint32_t prefetch_count;
    uint32_t max_groups;
    uint64_t down_scratch; /* n_embd rows of the largest ffn_down row */
    uint64_t pred_copies;  /* MoE: the predictor's private copies of routers and ffn_norms */
    uint32_t n_ctx_model;  /* context_length from the metadata, 0 when absent */
    /* The pool's classes (plan_classes), by increasing slot size. */
    uint32_t n_classes;
    uint64_t class_size[NF_STACK_MAX_CLASSES];  /* bytes per slot */
    uint64_t class_tiles[NF_STACK_MAX_CLASSES]; /* tiles that go in the class */
    uint64_t class_min[NF_STACK_MAX_CLASSES];   /* minimum working set in slots */
    uint64_t class_step[NF_STACK_MAX_CLASSES];  /* tiles one token step reads */
    uint64_t class_need[NF_STACK_MAX_CLASSES];  /* bytes one token step reads */
    uint64_t min_slots;                         /* the sum of class_min */
};

/* Per layer (index n_layer: layer-less tiles) and class, counts used by the shape. */
struct nf_layer_count {
    uint64_t all;
    uint64_t attn_set[NF_STACK_MAX_CLASSES], ffn[NF_STACK_MAX_CLASSES];
    uint64_t groups;
};

int nf_stack_class_of(const struct nf_stack_class *classes, uint32_t n_classes, uint64_t padded)
{
    for (uint32_t k = 0; k < n_classes && k < NF_STACK_MAX_CLASSES; k++)
        if (padded <= classes[k].slot_size)
            return (int)k;
    return -1;
}

static int class_of_shape(const struct nf_stack_shape *sh, uint64_t padded)
{
    for (uint32_t k = 0; k < sh->n_classes; k++)
        if (padded <= sh->class_size[k])
            return (int)k;
    return -1;
}

static int cmp_u64(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

/* First index in sorted[0..n) holding a value > v. */
static uint64_t upper_bound(const uint64_t *sorted, uint64_t n, uint64_t v)
{
    uint64_t lo = 0, hi = n;
    while (lo < hi) {
        uint64_t mid = lo + (hi - lo) / 2;
        if (sorted[mid] <= v)
            lo = mid + 1;
        else
            hi = mid;
    }
    return lo;
}

/* Chooses the slot size classes from the padded tile sizes (sorted ascending, n > 0). A slot
 * is as large as the largest tile of its class, so the bytes a class wastes are the differences
 * between its tiles and that largest one; one slot size for a model whose predictor tiles are
 * 3.4 MiB, its matrix tiles ~1 MiB and its norms and embedding rows 12-16 KiB would spend 3.4
 * MiB on each of them. The rule:
 *  - the tiles of at most NF_STACK_SMALL_TILE bytes (norms, embedding rows, rope frequencies)
 *    form the small class, sized to the largest of them;
 *  - of the rest, the tiles up to twice the median size form the next class (for a dense model
 *    the main class: attention, FFN and output tiles, which are all within a few percent of
 *    one another), sized to the largest of them; the tiles above that (the oversize ones, like
 *    the per-layer low-rank predictor tiles) repeat the step with their own median, and the
 *    last class allowed takes whatever remains.
 * So a tile never sits in a slot more than twice its class's median, except in the last class,
 * and a model whose tiles are all alike gets one class. More classes would cut the waste
 * further but every class costs its own minimum working set and cannot lend slots to another,
 * so the split stops at these natural gaps. */
static void plan_classes(struct nf_stack_shape *sh, const uint64_t *sorted, uint64_t n)
{
    uint64_t i = 0;
    sh->n_classes = 0;
    if (sorted[0] <= NF_STACK_SMALL_TILE && sorted[n - 1] > NF_STACK_SMALL_TILE) {
        i = upper_bound(sorted, n, NF_STACK_SMALL_TILE);
        sh->class_size[sh->n_classes++] = sorted[i - 1];
    }
    while (i < n) {
        uint64_t j = n;
        if (sh->n_classes + 1 < NF_STACK_MAX_CLASSES)
            j = upper_bound(sorted, n, 2 * sorted[i + (n - i) / 2]);
        sh->class_size[sh->n_classes++] = sorted[j - 1];
        i = j;
    }
}

/* Counts the tiles of each class, its minimum working set and what a token step reads from
 * it. The minimum of a class is what compute may hold pinned in it at once plus room to load:
 * the largest layer's attention-side set of that class (norms, q/k/v/o, router, predictor)
 * plus a few of its FFN / expert tiles, one embedding tile, one output tile (an embedding tile
 * again when the output is tied), the single-tile tensors, and NF_STACK_SPARE_SLOTS spare
 * slots for prefetch. Classes cannot lend slots to each other, so each needs its own spare: for
 * the predictor tiles' class that is 1 (compute pins layer L's in sparse mode) + 2 (the
 * predictor daemon peeks at layer L + 1's while a third loads), which is deadlock-free since
 * compute waits on other classes' tiles while it holds its predictor tile, never on a second
 * one of this class, and the predictor only tries (nf_tile_try_peek) and never waits. */
static void plan_class_counts(struct nf_stack_shape *sh, const struct nf_nft *f,
                              struct nf_layer_count *lc)
{
    const struct nf_nft_header *h = &f->hdr;
    bool embd[NF_STACK_MAX_CLASSES] = {false}, out[NF_STACK_MAX_CLASSES] = {false};
    uint64_t single[NF_STACK_MAX_CLASSES] = {0}, embd_max[NF_STACK_MAX_CLASSES] = {0};
    uint64_t experts[NF_STACK_MAX_CLASSES] = {0};
    for (uint64_t i = 0; i < f->n_tiles; i++) {
        const struct nf_nft_tile *t = &f->tiles[i];
        uint64_t padded = nf_nft_padded(t->size);
        int k = class_of_shape(sh, padded); /* >= 0: the last class fits the largest tile */
        uint32_t l = t->layer == NF_NFT_NO_LAYER ? h->n_layer : t->layer;
        sh->class_tiles[k]++;
        switch ((enum nf_tile_kind)t->kind) {
        case NF_TILE_EMBD:
            /* A step reads one embedding row. */
            embd[k] = true;
            if (padded > embd_max[k])
                embd_max[k] = padded;
            continue;
        case NF_TILE_OUTPUT: out[k] = true; break;
        case NF_TILE_OUTPUT_NORM:
        case NF_TILE_ROPE_FREQS: single[k]++; break;
        case NF_TILE_FFN:
        case NF_TILE_EXPERT: lc[l].ffn[k]++; break;
        default: lc[l].attn_set[k]++; break;
        }
        if (t->kind == NF_TILE_EXPERT && h->n_expert > 0 && h->n_expert_used < h->n_expert) {
            /* A step reads the used experts' tiles only (n_expert_used of n_expert). */
            sh->class_need[k] += padded * h->n_expert_used / h->n_expert;
            experts[k]++;
        } else {
            sh->class_need[k] += padded;
            sh->class_step[k]++;
        }
    }
    sh->min_slots = 0;
    for (uint32_t k = 0; k < sh->n_classes; k++) {
        uint64_t max_set = 0;
        for (uint32_t l = 0; l < h->n_layer; l++) {
            uint64_t ffn =
                lc[l].ffn[k] < NF_STACK_MIN_FFN_TILES ? lc[l].ffn[k] : NF_STACK_MIN_FFN_TILES;
            if (lc[l].attn_set[k] + ffn > max_set)
                max_set = lc[l].attn_set[k] + ffn;
        }
        /* Layer-less FFN-kind tiles do not exist; layer-less others are the singles above. */
        uint64_t m = max_set + (embd[k] ? 1 : 0) + (out[k] || (embd[k] && h->tied_output) ? 1 : 0) +
                     single[k] + NF_STACK_SPARE_SLOTS;
        if (m > sh->class_tiles[k])
            m = sh->class_tiles[k];
        sh->class_min[k] = m;
        sh->min_slots += m;
        if (embd[k]) {
            sh->class_need[k] += embd_max[k];
            sh->class_step[k]++;
        }
        if (experts[k])
            sh->class_step[k] += (experts[k] * h->n_expert_used + h->n_expert - 1) / h->n_expert;
    }
}

static int stack_shape(const struct nf_nft *f, struct nf_stack_shape *sh, char *err, size_t errlen)
{
    const struct nf_nft_header *h = &f->hdr;
    memset(sh, 0, sizeof(*sh));
    /* The bounds keep every product below 2^63 (KV bytes: layers * ctx * 2 * width * 2). */
    if (h->n_layer == 0 || h->n_layer > NF_NFT_MAX_LAYERS || h->n_embd == 0 ||
        h->n_embd > NF_STACK_DIM_MAX || h->n_ff > NF_STACK_DIM_MAX ||
        h->n_vocab > NF_STACK_DIM_MAX || h->n_head == 0 || h->n_head_kv == 0 ||
        h->n_head > h->n_embd || h->n_head_kv > h->n_head || h->n_embd % h->n_head != 0 ||
        f->n_tiles == 0 || f->n_tiles >= NF_NO_TILE || !f->tiles)
        return errf(err, errlen, NF_ECORRUPT,
                    "%s: header n_layer %u, n_embd %u, n_ff %u, n_vocab %u, n_head %u, "
                    "n_head_kv %u, n_tiles %llu: expected 1..%d layers, widths up to %u, "
                    "n_embd a multiple of n_head >= n_head_kv > 0, 1..%u tiles",
                    f->path, h->n_layer, h->n_embd, h->n_ff, h->n_vocab, h->n_head, h->n_head_kv,
                    (unsigned long long)f->n_tiles, NF_NFT_MAX_LAYERS, NF_STACK_DIM_MAX,
                    NF_NO_TILE - 1);
    sh->n_tiles = f->n_tiles;
    sh->n_layer = h->n_layer;
    sh->n_embd = h->n_embd;
    sh->n_ff = h->n_ff;
    sh->n_vocab = h->n_vocab;
    sh->n_head = h->n_head;
    sh->n_head_kv = h->n_head_kv;

    struct nf_layer_count *lc = calloc((size_t)h->n_layer + 1, sizeof(*lc));
    uint64_t *sizes = malloc(f->n_tiles * sizeof(*sizes)); /* (n_tiles) padded, sorted */
    if (!lc || !sizes) {
        free(lc);
        free(sizes);
        return errf(err, errlen, -ENOMEM, "stack plan: out of memory");
    }
    uint64_t n_out_tiles = 0;
    for (uint64_t i = 0; i < f->n_tiles; i++) {
        const struct nf_nft_tile *t = &f->tiles[i];
        uint64_t padded = nf_nft_padded(t->size);
        /* A slot is never smaller than a page (O_DIRECT and the mapping's granularity). */
        sizes[i] = padded > NF_SHM_ALIGN ? padded : NF_SHM_ALIGN;
        uint32_t l = t->layer == NF_NFT_NO_LAYER ? h->n_layer : t->layer;
        if (l > h->n_layer) {
            free(lc);
            free(sizes);
            return errf(err, errlen, NF_ECORRUPT, "%s: tile %llu: layer %u, expected < %u", f->path,
                        (unsigned long long)i, t->layer, h->n_layer);
        }
        lc[l].all++;
        if (t->kind == NF_TILE_OUTPUT)
            n_out_tiles++;
        if (t->kind == NF_TILE_FFN && t->group)
            lc[l].groups += t->count / t->group;
        /* The predictor daemon of a MoE model keeps every layer's router and ffn_norm. */
        if (h->n_expert && (t->kind == NF_TILE_PRED_ROUTER || t->kind == NF_TILE_FFN_NORM))
            sh->pred_copies += padded;
        if ((t->kind == NF_TILE_FFN || t->kind == NF_TILE_EXPERT) && t->type[2] < NF_TYPE_COUNT &&
            nf_type_traits((enum nf_type)t->type[2])) {
            /* For MoE tiles count is the expert's slice; the down row is n_ff of the expert,
             * which the header's n_ff gives. */
            uint64_t row = nf_row_size((enum nf_type)t->type[2], h->n_ff);
            if ((uint64_t)h->n_embd * row > sh->down_scratch)
                sh->down_scratch = (uint64_t)h->n_embd * row;
        }
    }
    qsort(sizes, f->n_tiles, sizeof(*sizes), cmp_u64);
    plan_classes(sh, sizes, f->n_tiles);
    free(sizes);
    plan_class_counts(sh, f, lc);
    uint64_t max_all = 0;
    for (uint32_t l = 0; l < h->n_layer; l++) {
        if (lc[l].all > max_all)
            max_all = lc[l].all;
        uint64_t g = h->n_expert ? h->n_expert : lc[l].groups;
        if (g > sh->max_groups)
            sh->max_groups = (uint32_t)g;
    }
    free(lc);
    /* Demand: everything compute may be blocked on at once is at most a layer (or the output
     * matrix); prefetch: a few layers ahead. */
    uint64_t d = max_all > n_out_tiles ? max_all : n_out_tiles;
    sh->demand_count = pow2_at_least(d > NF_STACK_MIN_DEMAND ? d : NF_STACK_MIN_DEMAND);
    uint64_t p = 4 * (uint64_t)sh->demand_count;
    sh->prefetch_count = pow2_at_least(p > NF_STACK_MIN_PREFETCH ? p : NF_STACK_MIN_PREFETCH);

    if (f->meta) {
        const char *arch = NULL;
        char key[128];
        uint64_t v;
        if (nf_gguf_get_str(f->meta, "general.architecture", &arch) == 0 && arch) {
            snprintf(key, sizeof(key), "%s.context_length", arch);
            if (nf_gguf_get_u64(f->meta, key, &v) == 0 && v > 0)
                sh->n_ctx_model = v > UINT32_MAX ? UINT32_MAX : (uint32_t)v;
        }
    }
    return 0;
}

/* Where the tables sit inside their areas (shared by the plan and create). */
struct nf_stack_layout {
    uint64_t tiles_off, slots_off, table_bytes;
    uint64_t demand_off, demand_size, prefetch_off, prefetch_size, ring_bytes;
    uint64_t act_stride, used_stride, act_off, used_off, act_bytes;
};

static void stack_layout(const struct nf_stack_shape *sh, uint64_t n_slots,
                         struct nf_stack_layout *lo)
{
    lo->tiles_off = align_to(sizeof(struct nf_stack_config), NF_STACK_CL);
    lo->slots_off =
        align_to(lo->tiles_off + sh->n_tiles * sizeof(struct nf_tile_entry), NF_STACK_CL);
    lo->table_bytes = lo->slots_off + n_slots * sizeof(struct nf_slot_entry);
    size_t dsz = 0, psz = 0;
    /* Counts are powers of two within limits and esize 8 is valid: these cannot fail. */
    nf_ring_memsize(sh->demand_count, sizeof(struct nf_tile_req), &dsz);
    nf_ring_memsize(sh->prefetch_count, sizeof(struct nf_tile_req), &psz);
    lo->demand_off = 0;
    lo->demand_size = dsz;
    lo->prefetch_off = align_to(dsz, NF_STACK_CL);
    lo->prefetch_size = psz;
    lo->ring_bytes = lo->prefetch_off + psz;
    lo->act_stride =
        align_to(sizeof(struct nf_act_slot) + (uint64_t)sh->n_embd * sizeof(float), NF_STACK_CL);
    lo->used_stride = align_to(sizeof(struct nf_used_slot) +
                                   ((uint64_t)sh->max_groups + 63) / 64 * sizeof(uint64_t),
                               NF_STACK_CL);
    lo->act_off = 0;
    lo->used_off = (uint64_t)sh->n_layer * lo->act_stride;
    lo->act_bytes = lo->used_off + (uint64_t)sh->n_layer * lo->used_stride;
}

/* F16 K and V of one position in every layer. */
static uint64_t kv_token_bytes(const struct nf_stack_shape *sh)
{
    uint64_t head_dim = sh->n_embd / sh->n_head;
    uint64_t kv_dim = (uint64_t)sh->n_head_kv * head_dim;
    return (uint64_t)sh->n_layer * 2 * kv_dim * 2;
}

/* Fills the byte counts of a plan with counts[k] slots in class k and context n_ctx; returns
 * the total. */
static uint64_t plan_total(const struct nf_stack_shape *sh, const uint64_t *counts, uint32_t n_ctx,
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
    struct nf_stack_layout lo;
    stack_layout(sh, n_slots, &lo);
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
        region += align_to(p->area_sizes[i], NF_SHM_ALIGN);
    p->region_bytes = region;
    /* Kernel memory charged to the stack: the page tables of each process's mapping of the
     * region (8 bytes per 4 KiB page, region / 512, doubled for partly used table pages and
     * the io_uring registration) and the sockets', logs' and slab's page cache. */
    p->kernel_bytes = NF_STACK_MAPPINGS * (region / 256) + NF_STACK_KERNEL_BYTES;

    p->kv_bytes = kv_token_bytes(sh) * n_ctx;
    /* Compute's float activations: residual and its normed copies, q/k/v, attention output,
     * FFN hidden states and their quantized copies, logits twice (raw and sampled), and the
     * attention scores (per head and per thread, n_ctx each). */
    uint64_t act_floats = 8ull * sh->n_embd + 4ull * sh->n_ff + 2ull * sh->n_vocab +
                          ((uint64_t)sh->n_head + n_threads) * n_ctx;
    p->down_scratch = sh->down_scratch;
    p->compute_private =
        NF_STACK_PROC_BYTES + p->kv_bytes + sh->down_scratch + act_floats * sizeof(float);
    /* The predictor reads a dense model's low-rank predictor tiles from the pool and keeps a
     * MoE model's routers (small) in private copies; it keeps scores and inputs. */
    uint64_t groups = sh->max_groups ? sh->max_groups : 1;
    p->predictor_private = NF_STACK_PROC_BYTES + sh->pred_copies +
                           (2ull * sh->n_ff + 2ull * sh->n_embd + 2 * groups) * sizeof(float);
    /* The fetcher keeps per-tile policy state and its io_uring / worker queues. */
    p->fetcher_private = NF_STACK_PROC_BYTES + sh->n_tiles * 16 + (256ull << 10);
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
    memset(plan, 0, sizeof(*plan));
    struct nf_stack_shape sh;
    int rc = stack_shape(f, &sh, err, errlen);
    if (rc < 0)
        return rc;
    if (n_threads == 0)
        n_threads = 1;
    if (n_ctx_req > NF_STACK_CTX_MAX || n_threads > 4096)
        return errf(err, errlen, NF_EUSAGE,
                    "stack plan: context %u and threads %u, expected at most %u and 4096",
                    n_ctx_req, n_threads, NF_STACK_CTX_MAX);
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
    uint64_t min_budget = plan_total(&sh, sh.class_min, ctx_min, n_threads, &p);
    p.ram_budget = ram_budget;
    p.min_budget = min_budget;
    p.n_ctx_want = want;
    p.n_ctx_min = ctx_min;
    p.min_slots = sh.min_slots;
    p.demand_count = sh.demand_count;
    p.prefetch_count = sh.prefetch_count;
    p.max_groups = sh.max_groups;
    if (ram_budget < min_budget) {
        *plan = p;
        char b[32], m[32], pool[160], kv[32], priv[32];
        const char *name = strrchr(f->path, '/') ? strrchr(f->path, '/') + 1 : f->path;
        return errf(
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

    /* Context: without a request, the largest multiple of NF_STACK_MIN_CTX whose KV cache
     * takes at most a quarter of the budget (the pool should get most of it), but not below
     * ctx_min nor above the model's default. */
    uint32_t n_ctx = want;
    if (n_ctx_req == 0) {
        uint64_t q = ram_budget / 4 / kv_token_bytes(&sh);
        q = q / NF_STACK_MIN_CTX * NF_STACK_MIN_CTX;
        if (q < ctx_min)
            q = ctx_min;
        if (q < n_ctx)
            n_ctx = (uint32_t)q;
    }
    /* Then: that context if the minimum pool fits beside it, else the largest that does
     * (binary search: the total grows with n_ctx), rounded down to a multiple of
     * NF_STACK_MIN_CTX when above it. */
    if (plan_total(&sh, sh.class_min, n_ctx, n_threads, &p) > ram_budget) {
        uint32_t lo = ctx_min, hi = n_ctx; /* lo fits, hi does not */
        while (hi - lo > 1) {
            uint32_t mid = lo + (hi - lo) / 2;
            if (plan_total(&sh, sh.class_min, mid, n_threads, &p) <= ram_budget)
                lo = mid;
            else
                hi = mid;
        }
        n_ctx = lo;
        if (n_ctx > NF_STACK_MIN_CTX)
            n_ctx = n_ctx / NF_STACK_MIN_CTX * NF_STACK_MIN_CTX;
    }

    /* Pool: every byte left, split between the classes (plan_split), but never more slots in a
     * class than it has tiles (nothing would use them); so never more than slot ids can name
     * either (n_tiles < NF_NO_TILE == NF_NO_SLOT). */
    uint64_t base = plan_total(&sh, sh.class_min, n_ctx, n_threads, &p);
    uint64_t counts[NF_STACK_MAX_CLASSES];
    memcpy(counts, sh.class_min, sizeof(counts));
    plan_split(&sh, ram_budget - base, counts);
    /* Page rounding of the areas may push the estimate over by a slot or two. */
    while (plan_total(&sh, counts, n_ctx, n_threads, &p) > ram_budget && plan_shrink(&sh, counts))
        ;
    plan_total(&sh, counts, n_ctx, n_threads, &p);
    *plan = p;
    return 0;
}

/* --- Create / attach ------------------------------------------------------------------------ */

/* Checks a plan's class table before create uses it: 1..NF_STACK_MAX_CLASSES classes of
 * increasing slot sizes (multiples of NF_SHM_ALIGN), each with slots, together n_slots (less
 * than NF_NO_SLOT), the largest fitting the model's largest tile. */
static int plan_check_classes(const struct nf_stack_plan *plan, const struct nf_stack_shape *sh,
                              const char *name, const char *path, char *err, size_t errlen)
{
    uint64_t largest = sh->class_size[sh->n_classes - 1], total = 0;
    if (plan->n_classes == 0 || plan->n_classes > NF_STACK_MAX_CLASSES)
        return errf(err, errlen, NF_EUSAGE, "stack %s: plan has %u slot classes, expected 1..%d",
                    name, plan->n_classes, NF_STACK_MAX_CLASSES);
    for (uint32_t k = 0; k < plan->n_classes; k++) {
        const struct nf_stack_class *c = &plan->classes[k];
        uint64_t prev = k ? plan->classes[k - 1].slot_size : 0;
        if (c->n_slots == 0 || c->n_slots >= NF_NO_SLOT || c->slot_size <= prev ||
            c->slot_size % NF_SHM_ALIGN != 0 || c->slot_size > NF_STACK_MAX_SLOT)
            return errf(err, errlen, NF_EUSAGE,
                        "stack %s: plan class %u has %llu slots of %llu bytes, expected 1..%u "
                        "slots of a multiple of %u bytes above %llu (the class before) and at "
                        "most %llu",
                        name, k, (unsigned long long)c->n_slots, (unsigned long long)c->slot_size,
                        NF_NO_SLOT - 1, NF_SHM_ALIGN, (unsigned long long)prev,
                        (unsigned long long)NF_STACK_MAX_SLOT);
        total += c->n_slots;
    }
    if (total != plan->n_slots || total >= NF_NO_SLOT)
        return errf(err, errlen, NF_EUSAGE,
                    "stack %s: plan has %llu slots but its classes %llu, expected the same and "
                    "below %u",
                    name, (unsigned long long)plan->n_slots, (unsigned long long)total, NF_NO_SLOT);
    if (plan->classes[plan->n_classes - 1].slot_size < largest)
        return errf(err, errlen, NF_EUSAGE,
                    "stack %s: plan's largest slots are %llu bytes, expected >= %llu (the "
                    "largest tile of %s)",
                    name, (unsigned long long)plan->classes[plan->n_classes - 1].slot_size,
                    (unsigned long long)largest, path);
    return 0;
}

/* Points st's fields into its mapping per the config. */
static void stack_bind(struct nf_stack *st)
{
    struct nf_stack_config *c = st->cfg;
    uint8_t *table = nf_shm_area(&st->shm, NF_SHM_TILE_TABLE, NULL);
    uint8_t *rings = nf_shm_area(&st->shm, NF_SHM_REQ_RING, NULL);
    uint8_t *act = nf_shm_area(&st->shm, NF_SHM_ACTIVATIONS, NULL);
    st->tiles = (struct nf_tile_entry *)(table + c->tiles_off);
    st->slots = (struct nf_slot_entry *)(table + c->slots_off);
    st->pool = nf_shm_area(&st->shm, NF_SHM_TILE_POOL, NULL);
    st->demand = (struct nf_ring *)(rings + c->demand_ring_off);
    st->prefetch = (struct nf_ring *)(rings + c->prefetch_ring_off);
    st->act_base = act + c->act_off;
    st->used_base = act + c->used_off;
    st->sync = nf_shm_area(&st->shm, NF_SHM_COMPLETION, NULL);
    st->ctr = nf_shm_area(&st->shm, NF_SHM_COUNTERS, NULL);
}

int nf_stack_create(struct nf_stack *st, const char *name, const struct nf_nft *f,
                    const struct nf_stack_plan *plan, float sparsity, uint32_t n_threads, char *err,
                    size_t errlen)
{
    memset(st, 0, sizeof(*st));
    struct nf_stack_shape sh;
    int rc = stack_shape(f, &sh, err, errlen);
    if (rc < 0)
        return rc;
    rc = plan_check_classes(plan, &sh, name, f->path, err, errlen);
    if (rc < 0)
        return rc;
    /* The plan's classes (normally the ones the shape chose; a caller may pass others). */
    uint64_t counts[NF_STACK_MAX_CLASSES] = {0};
    sh.n_classes = plan->n_classes;
    for (uint32_t k = 0; k < plan->n_classes; k++) {
        sh.class_size[k] = plan->classes[k].slot_size;
        counts[k] = plan->classes[k].n_slots;
    }
    struct nf_stack_plan p;
    memset(&p, 0, sizeof(p));
    plan_total(&sh, counts, plan->n_ctx, n_threads ? n_threads : 1, &p);
    struct nf_stack_layout lo;
    stack_layout(&sh, plan->n_slots, &lo);

    rc = nf_shm_create(&st->shm, name, p.area_sizes);
    if (rc < 0)
        return errf(err, errlen, rc, "%s", st->shm.err);

    /* The object is zero-filled by ftruncate; everything not set below starts at 0. */
    struct nf_stack_config *c = nf_shm_area(&st->shm, NF_SHM_TILE_TABLE, NULL);
    st->cfg = c;
    c->ram_budget = plan->ram_budget;
    c->n_tiles = sh.n_tiles;
    c->n_slots = p.n_slots;
    c->n_classes = p.n_classes;
    memcpy(c->classes, p.classes, sizeof(c->classes));
    c->max_slot_size = p.classes[p.n_classes - 1].slot_size;
    c->demand_ring_off = lo.demand_off;
    c->demand_ring_size = lo.demand_size;
    c->prefetch_ring_off = lo.prefetch_off;
    c->prefetch_ring_size = lo.prefetch_size;
    c->tiles_off = lo.tiles_off;
    c->slots_off = lo.slots_off;
    c->act_off = lo.act_off;
    c->used_off = lo.used_off;
    c->act_stride = lo.act_stride;
    c->used_stride = lo.used_stride;
    c->nft_file_size = f->hdr.file_size;
    c->nft_header_checksum = f->hdr.header_checksum;
    c->kv_bytes = plan->kv_bytes;
    c->n_ctx = plan->n_ctx;
    c->n_layer = sh.n_layer;
    c->n_embd = sh.n_embd;
    c->n_vocab = sh.n_vocab;
    c->max_groups = sh.max_groups;
    c->sparsity = sparsity;
    c->n_threads = n_threads;
    snprintf(c->nft_path, sizeof(c->nft_path), "%s", f->path);
    stack_bind(st);

    for (uint64_t i = 0; i < c->n_tiles; i++) {
        atomic_init(&st->tiles[i].state, NF_TILE_EMPTY);
        atomic_init(&st->tiles[i].slot, NF_NO_SLOT);
        atomic_init(&st->tiles[i].pins, 0);
        atomic_init(&st->tiles[i].last_use, 0);
    }
    for (uint64_t i = 0; i < c->n_slots; i++) {
        atomic_init(&st->slots[i].tile, NF_NO_TILE);
        atomic_init(&st->slots[i].flags, 0);
    }
    if ((rc = nf_ring_init(st->demand, lo.demand_size, sh.demand_count,
                           sizeof(struct nf_tile_req))) < 0 ||
        (rc = nf_ring_init(st->prefetch, lo.prefetch_size, sh.prefetch_count,
                           sizeof(struct nf_tile_req))) < 0) {
        errf(err, errlen, rc, "stack %s: ring init failed: %s", name, nf_strerror(rc));
        goto fail;
    }
    nf_notify_init(&st->sync->fetch_bell);
    nf_notify_init(&st->sync->tile_done);
    nf_notify_init(&st->sync->act_bell);
    atomic_init(&st->sync->stop, 0);
    atomic_init(&st->sync->ready_mask, 0);

    /* Per-layer group counts for the used bitmaps (FFN groups, or experts for MoE). */
    for (uint32_t l = 0; l < sh.n_layer; l++) {
        struct nf_act_slot *a = nf_stack_act(st, l);
        atomic_init(&a->seq, 0);
        a->layer = l;
        a->n_embd = sh.n_embd;
        struct nf_used_slot *u = nf_stack_used(st, l);
        atomic_init(&u->seq, 0);
        u->layer = l;
        u->n_groups = f->hdr.n_expert;
    }
    if (!f->hdr.n_expert) {
        for (uint64_t i = 0; i < f->n_tiles; i++) {
            const struct nf_nft_tile *t = &f->tiles[i];
            if (t->kind == NF_TILE_FFN && t->group && t->layer < sh.n_layer)
                nf_stack_used(st, t->layer)->n_groups += t->count / t->group;
        }
    }
    /* Release pairs with the acquire load of the config magic in nf_stack_attach(): an
     * attacher that sees the magic sees every table, ring and word initialized above. */
    atomic_store_explicit((_Atomic uint64_t *)&c->magic, NF_STACK_CONFIG_MAGIC,
                          memory_order_release);
    return 0;
fail:
    nf_shm_close(&st->shm);
    nf_shm_unlink(name);
    memset(st, 0, sizeof(*st));
    return rc;
}

/* Checks that [off, off + size) lies within an area of area_size bytes. */
static bool in_area(uint64_t off, uint64_t size, uint64_t area_size)
{
    return off <= area_size && size <= area_size - off;
}

/* Checks the class table of a region's config against its pool area of pool_size bytes (and,
 * with f, that the largest class fits f's largest tile): what nf_stack_slot_ptr() relies on. */
static int check_classes(const struct nf_stack_config *c, uint64_t pool_size,
                         const struct nf_nft *f, const char *name, char *err, size_t errlen)
{
    if (c->n_classes == 0 || c->n_classes > NF_STACK_MAX_CLASSES)
        return errf(err, errlen, NF_ECORRUPT, "stack %s: config field n_classes %u, expected 1..%d",
                    name, c->n_classes, NF_STACK_MAX_CLASSES);
    uint64_t first = 0, off = 0;
    for (uint32_t k = 0; k < c->n_classes; k++) {
        const struct nf_stack_class *s = &c->classes[k];
        uint64_t prev = k ? c->classes[k - 1].slot_size : 0;
        const char *bad = NULL;
        if (s->slot_size <= prev || s->slot_size % NF_SHM_ALIGN || s->slot_size > NF_STACK_MAX_SLOT)
            bad = "slot_size (a multiple of 4096 above the class before)";
        else if (s->n_slots == 0 || s->n_slots >= NF_NO_SLOT)
            bad = "n_slots (1 or more)";
        else if (s->first_slot != first)
            bad = "first_slot (the slots of the classes before)";
        else if (s->pool_off != off)
            bad = "pool_off (the bytes of the classes before)";
        else if (s->n_slots > (pool_size - off) / s->slot_size)
            bad = "n_slots * slot_size (beyond the pool area)";
        if (bad)
            return errf(err, errlen, NF_ECORRUPT,
                        "stack %s: config class %u (%llu slots of %llu bytes from slot %llu, "
                        "pool offset %llu): field %s out of bounds; pool area %llu bytes",
                        name, k, (unsigned long long)s->n_slots, (unsigned long long)s->slot_size,
                        (unsigned long long)s->first_slot, (unsigned long long)s->pool_off, bad,
                        (unsigned long long)pool_size);
        first += s->n_slots;
        off += s->n_slots * s->slot_size;
    }
    uint64_t largest = c->classes[c->n_classes - 1].slot_size;
    if (first != c->n_slots || largest != c->max_slot_size)
        return errf(err, errlen, NF_ECORRUPT,
                    "stack %s: config n_slots %llu and max_slot_size %llu, expected the classes' "
                    "%llu slots and largest slot size %llu",
                    name, (unsigned long long)c->n_slots, (unsigned long long)c->max_slot_size,
                    (unsigned long long)first, (unsigned long long)largest);
    if (f) {
        for (uint64_t i = 0; i < f->n_tiles; i++)
            if (nf_nft_padded(f->tiles[i].size) > largest)
                return errf(err, errlen, NF_ECORRUPT,
                            "stack %s: largest slots %llu bytes, expected >= %llu (tile %llu of "
                            "%s)",
                            name, (unsigned long long)largest,
                            (unsigned long long)nf_nft_padded(f->tiles[i].size),
                            (unsigned long long)i, f->path);
    }
    return 0;
}

int nf_stack_attach(struct nf_stack *st, const char *name, const struct nf_nft *f, char *err,
                    size_t errlen)
{
    memset(st, 0, sizeof(*st));
    int rc = nf_shm_open(&st->shm, name);
    if (rc < 0)
        return errf(err, errlen, rc, "%s", st->shm.err);
    uint64_t sz[NF_SHM_NAREAS];
    for (int i = 0; i < NF_SHM_NAREAS; i++)
        nf_shm_area(&st->shm, i, &sz[i]);
    struct nf_stack_config *c = nf_shm_area(&st->shm, NF_SHM_TILE_TABLE, NULL);
    if (sz[NF_SHM_TILE_TABLE] < sizeof(*c)) {
        rc = errf(err, errlen, NF_ECORRUPT,
                  "stack %s: tile table area %llu bytes, expected at least %zu", name,
                  (unsigned long long)sz[NF_SHM_TILE_TABLE], sizeof(*c));
        goto fail;
    }
    /* Acquire pairs with the release store of the magic at the end of nf_stack_create(). */
    uint64_t magic = atomic_load_explicit((_Atomic uint64_t *)&c->magic, memory_order_acquire);
    if (magic == 0) {
        rc = errf(err, errlen, -EAGAIN, "stack %s: still being initialized by its creator", name);
        goto fail;
    }
    if (magic == NF_STACK_CONFIG_MAGIC_V1) {
        rc = errf(err, errlen, NF_EBADMAGIC,
                  "stack %s: config magic \"NFNSTACK\" (one slot size, an older NanoFlow's "
                  "layout), expected \"NFNSTAK2\" (slot size classes): stop the old stack "
                  "and start it again",
                  name);
        goto fail;
    }
    if (magic != NF_STACK_CONFIG_MAGIC) {
        rc = errf(err, errlen, NF_EBADMAGIC,
                  "stack %s: config magic 0x%016llx, expected 0x%016llx (\"NFNSTAK2\")", name,
                  (unsigned long long)magic, (unsigned long long)NF_STACK_CONFIG_MAGIC);
        goto fail;
    }
    if (f && (c->nft_file_size != f->hdr.file_size ||
              c->nft_header_checksum != f->hdr.header_checksum || c->n_tiles != f->n_tiles)) {
        rc = errf(err, errlen, NF_EUSAGE,
                  "stack %s was made for %s (%llu bytes, header checksum %016llx, %llu tiles), "
                  "not for %s (%llu bytes, header checksum %016llx, %llu tiles)",
                  name, c->nft_path, (unsigned long long)c->nft_file_size,
                  (unsigned long long)c->nft_header_checksum, (unsigned long long)c->n_tiles,
                  f->path, (unsigned long long)f->hdr.file_size,
                  (unsigned long long)f->hdr.header_checksum, (unsigned long long)f->n_tiles);
        goto fail;
    }
    const char *bad = NULL;
    if (c->n_tiles == 0 || c->n_tiles >= NF_NO_TILE ||
        !in_area(c->tiles_off, c->n_tiles * sizeof(struct nf_tile_entry), sz[NF_SHM_TILE_TABLE]) ||
        c->tiles_off % NF_STACK_CL)
        bad = "tiles_off/n_tiles";
    else if (c->n_slots == 0 || c->n_slots >= NF_NO_SLOT ||
             !in_area(c->slots_off, c->n_slots * sizeof(struct nf_slot_entry),
                      sz[NF_SHM_TILE_TABLE]) ||
             c->slots_off % NF_STACK_CL)
        bad = "slots_off/n_slots";
    else if (!in_area(c->demand_ring_off, c->demand_ring_size, sz[NF_SHM_REQ_RING]) ||
             c->demand_ring_off % NF_STACK_CL)
        bad = "demand_ring_off/size";
    else if (!in_area(c->prefetch_ring_off, c->prefetch_ring_size, sz[NF_SHM_REQ_RING]) ||
             c->prefetch_ring_off % NF_STACK_CL)
        bad = "prefetch_ring_off/size";
    else if (c->n_layer == 0 || c->n_layer > NF_NFT_MAX_LAYERS ||
             c->act_stride < sizeof(struct nf_act_slot) + (uint64_t)c->n_embd * sizeof(float) ||
             c->used_stride <
                 sizeof(struct nf_used_slot) + ((uint64_t)c->max_groups + 63) / 64 * 8 ||
             c->act_stride % NF_STACK_CL || c->used_stride % NF_STACK_CL ||
             c->act_off % NF_STACK_CL || c->used_off % NF_STACK_CL ||
             !in_area(c->act_off, c->n_layer * c->act_stride, sz[NF_SHM_ACTIVATIONS]) ||
             !in_area(c->used_off, c->n_layer * c->used_stride, sz[NF_SHM_ACTIVATIONS]))
        bad = "activation/used slots";
    else if (sz[NF_SHM_COMPLETION] < sizeof(struct nf_stack_sync))
        bad = "completion area size";
    else if (sz[NF_SHM_COUNTERS] < sizeof(struct nf_stack_counters))
        bad = "counters area size";
    if (bad) {
        rc = errf(err, errlen, NF_ECORRUPT, "stack %s: config field %s out of its area bounds",
                  name, bad);
        goto fail;
    }
    if ((rc = check_classes(c, sz[NF_SHM_TILE_POOL], f, name, err, errlen)) < 0)
        goto fail;
    st->cfg = c;
    stack_bind(st);
    if ((rc = nf_ring_check(st->demand, c->demand_ring_size)) < 0 ||
        (rc = nf_ring_check(st->prefetch, c->prefetch_ring_size)) < 0) {
        errf(err, errlen, rc, "stack %s: request ring refused: %s", name, nf_strerror(rc));
        goto fail;
    }
    if (st->demand->esize != sizeof(struct nf_tile_req) ||
        st->prefetch->esize != sizeof(struct nf_tile_req)) {
        rc = errf(err, errlen, NF_ECORRUPT, "stack %s: ring entry size %u/%u, expected %zu", name,
                  st->demand->esize, st->prefetch->esize, sizeof(struct nf_tile_req));
        goto fail;
    }
    return 0;
fail:
    nf_shm_close(&st->shm);
    memset(st, 0, sizeof(*st));
    return rc;
}

void nf_stack_detach(struct nf_stack *st)
{
    nf_shm_close(&st->shm);
    memset(st, 0, sizeof(*st));
}

int nf_stack_unlink(const char *name)
{
    return nf_shm_unlink(name);
}

/* --- Tile protocol -------------------------------------------------------------------------- */

const uint8_t *nf_tile_try_peek(struct nf_stack *st, uint32_t id)
{
    if (id >= st->cfg->n_tiles)
        return NULL;
    struct nf_tile_entry *t = &st->tiles[id];
    /* The same Dekker pairing with nf_slot_try_evict() as nf_tile_try_pin() below. */
    atomic_fetch_add_explicit(&t->pins, 1, memory_order_seq_cst);
    if (atomic_load_explicit(&t->state, memory_order_seq_cst) != NF_TILE_READY) {
        atomic_fetch_sub_explicit(&t->pins, 1, memory_order_release);
        return NULL;
    }
    return nf_stack_slot_ptr(st, atomic_load_explicit(&t->slot, memory_order_relaxed));
}

const uint8_t *nf_tile_try_pin(struct nf_stack *st, uint32_t id, uint64_t step)
{
    if (id >= st->cfg->n_tiles)
        return NULL;
    struct nf_tile_entry *t = &st->tiles[id];
    /* Dekker pairing, compute side: seq-cst increment of pins, then seq-cst load of state.
     * Pairs with the seq-cst CAS READY -> EVICTING then seq-cst load of pins in
     * nf_slot_try_evict(): in the single total order one side sees the other, so either we see
     * EVICTING (and back off) or the fetcher sees our pin (and puts READY back). */
    atomic_fetch_add_explicit(&t->pins, 1, memory_order_seq_cst);
    uint32_t s = atomic_load_explicit(&t->state, memory_order_seq_cst);
    if (s != NF_TILE_READY) {
        /* Release: nothing was read; pairs with the fetcher's seq-cst load of pins. */
        atomic_fetch_sub_explicit(&t->pins, 1, memory_order_release);
        return NULL;
    }
    /* Ordered after the state load (seq-cst, so also acquire), which synchronizes with the
     * release store of READY in nf_tile_end_load(): the slot index and the slot's bytes written
     * before READY are visible here. */
    uint32_t slot = atomic_load_explicit(&t->slot, memory_order_relaxed);
    /* Relaxed: an eviction hint only, no data depends on it. */
    atomic_store_explicit(&t->last_use, (uint32_t)step, memory_order_relaxed);
    return nf_stack_slot_ptr(st, slot);
}

void nf_tile_unpin(struct nf_stack *st, uint32_t id)
{
    if (id >= st->cfg->n_tiles)
        return;
    /* Release: our reads of the slot's bytes happen before the fetcher, whose seq-cst (acquire)
     * load of pins in nf_slot_try_evict() reads this decrement, reuses the slot. */
    atomic_fetch_sub_explicit(&st->tiles[id].pins, 1, memory_order_release);
}

static uint64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

int nf_tile_error(const struct nf_stack *st, uint32_t id)
{
    if (id >= st->cfg->n_tiles)
        return 0;
    struct nf_tile_entry *t = &st->tiles[id];
    /* Acquire pairs with the release store of ERROR in nf_tile_fail(), after the code. */
    if (atomic_load_explicit(&t->state, memory_order_acquire) != NF_TILE_ERROR)
        return 0;
    uint32_t code = atomic_load_explicit(&t->slot, memory_order_relaxed);
    return code ? -(int)code : -EIO;
}

int nf_tile_request(struct nf_stack *st, uint32_t id, bool flush)
{
    if (id >= st->cfg->n_tiles)
        return -EINVAL;
    struct nf_tile_entry *t = &st->tiles[id];
    int rc = 0;
    /* Acquire pairs with the fetcher's release stores of LOADING/READY/EMPTY. */
    uint32_t s = atomic_load_explicit(&t->state, memory_order_acquire);
    bool won = false;
    if (s == NF_TILE_EMPTY) {
        /* Acq-rel CAS pairs with the predictor's CAS in nf_tile_prefetch() and the fetcher's in
         * nf_tile_begin_load(); losing it means someone else moved the tile: look again. */
        uint32_t e = NF_TILE_EMPTY;
        won = atomic_compare_exchange_strong_explicit(&t->state, &e, NF_TILE_QUEUED,
                                                      memory_order_acq_rel, memory_order_acquire);
        s = won ? NF_TILE_QUEUED : e;
    }
    if (s == NF_TILE_QUEUED) {
        struct nf_tile_req req = {.tile = id, .prio = 0};
        rc = nf_ring_sp_enqueue_bulk(st->demand, &req, 1, NULL) == 1 ? 1 : -ENOBUFS;
        if (rc < 0 && won) {
            /* Nothing enqueued: EMPTY again unless someone moved it meanwhile (release pairs
             * with the next asker's CAS). */
            uint32_t q = NF_TILE_QUEUED;
            atomic_compare_exchange_strong_explicit(&t->state, &q, NF_TILE_EMPTY,
                                                    memory_order_release, memory_order_relaxed);
        }
    }
    if (flush || rc == -ENOBUFS)
        nf_notify_wake(&st->sync->fetch_bell);
    return rc;
}

const uint8_t *nf_tile_pin_wait(struct nf_stack *st, uint32_t id, uint64_t step, int timeout_ms,
                                int *rc)
{
    int dummy;
    if (!rc)
        rc = &dummy;
    *rc = 0;
    if (id >= st->cfg->n_tiles) {
        *rc = -EINVAL;
        return NULL;
    }
    const uint8_t *p = nf_tile_try_pin(st, id, step);
    if (p)
        return p;
    struct nf_tile_entry *t = &st->tiles[id];
    struct nf_stack_sync *sy = st->sync;
    uint64_t t0 = now_ns();
    uint64_t deadline = timeout_ms >= 0 ? t0 + (uint64_t)timeout_ms * 1000000ull : UINT64_MAX;
    bool requested = false; /* a demand request of ours is in the ring for this QUEUED spell */
    for (;;) {
        /* Sample the bell before checking the condition (notify.h usage). */
        uint32_t seen = nf_notify_seq(&sy->tile_done);
        p = nf_tile_try_pin(st, id, step);
        if (p)
            break;
        /* Acquire pairs with the release store of stop by whoever shuts the stack down. */
        if (atomic_load_explicit(&sy->stop, memory_order_acquire)) {
            *rc = -ECANCELED;
            break;
        }
        /* Acquire pairs with the fetcher's release stores of LOADING/ERROR/EMPTY. */
        uint32_t s = atomic_load_explicit(&t->state, memory_order_acquire);
        int slice = NF_STACK_WAIT_SLICE_MS;
        if (s == NF_TILE_ERROR) {
            *rc = nf_tile_error(st, id);
            break;
        }
        if (s == NF_TILE_EMPTY) {
            /* Acq-rel CAS pairs with the predictor's CAS in nf_tile_prefetch() and the fetcher's
             * CAS in nf_tile_begin_load(); losing it just means someone else moved it. */
            uint32_t e = NF_TILE_EMPTY;
            if (atomic_compare_exchange_strong_explicit(&t->state, &e, NF_TILE_QUEUED,
                                                        memory_order_acq_rel, memory_order_acquire))
                requested = false;
            s = e == NF_TILE_EMPTY ? NF_TILE_QUEUED : e;
        }
        if (s == NF_TILE_QUEUED && !requested) {
            /* Served before prefetches even when the predictor queued it first. */
            struct nf_tile_req req = {.tile = id, .prio = 0};
            if (nf_ring_sp_enqueue_bulk(st->demand, &req, 1, NULL) == 1)
                requested = true;
            else
                slice = 1; /* ring full: the fetcher drains it; retry soon */
            nf_notify_wake(&sy->fetch_bell);
        } else if (s != NF_TILE_QUEUED) {
            /* LOADING, READY (it just became so: pin again) or EVICTING: our request, if any,
             * has been taken. EVICTING turns back into READY without a bell: poll. */
            requested = false;
            if (s == NF_TILE_READY)
                continue;
            if (s == NF_TILE_EVICTING)
                slice = 1;
        }
        uint64_t now = now_ns();
        if (now >= deadline) {
            *rc = -ETIMEDOUT;
            break;
        }
        if (deadline != UINT64_MAX && (deadline - now) / 1000000ull < (uint64_t)slice)
            slice = (int)((deadline - now) / 1000000ull) + 1;
        nf_notify_wait(&sy->tile_done, seen, slice);
    }
    atomic_fetch_add_explicit(&st->ctr->c_stall_ns, now_ns() - t0, memory_order_relaxed);
    return p;
}

int nf_tile_prefetch(struct nf_stack *st, uint32_t id, uint32_t prio, bool flush)
{
    if (id >= st->cfg->n_tiles)
        return -EINVAL;
    struct nf_tile_entry *t = &st->tiles[id];
    uint32_t e = NF_TILE_EMPTY;
    int rc = 0;
    /* Acq-rel CAS EMPTY -> QUEUED pairs with compute's CAS in nf_tile_pin_wait() and the
     * fetcher's CAS QUEUED -> LOADING in nf_tile_begin_load(): exactly one asker wins. */
    if (atomic_load_explicit(&t->state, memory_order_relaxed) == NF_TILE_EMPTY &&
        atomic_compare_exchange_strong_explicit(&t->state, &e, NF_TILE_QUEUED, memory_order_acq_rel,
                                                memory_order_relaxed)) {
        struct nf_tile_req req = {.tile = id, .prio = prio};
        if (nf_ring_sp_enqueue_bulk(st->prefetch, &req, 1, NULL) == 1) {
            rc = 1;
        } else {
            /* Nothing was enqueued: put EMPTY back unless compute or the fetcher moved it
             * meanwhile (compute's demand request then covers it). Release pairs with the next
             * asker's CAS. */
            uint32_t q = NF_TILE_QUEUED;
            atomic_compare_exchange_strong_explicit(&t->state, &q, NF_TILE_EMPTY,
                                                    memory_order_release, memory_order_relaxed);
            rc = -ENOBUFS;
            flush = true; /* make sure the fetcher drains the full ring */
        }
    }
    if (flush)
        nf_notify_wake(&st->sync->fetch_bell);
    return rc;
}

bool nf_tile_cancel(struct nf_stack *st, uint32_t id)
{
    if (id >= st->cfg->n_tiles)
        return false;
    uint32_t q = NF_TILE_QUEUED;
    /* Release pairs with the acquire of the next CAS EMPTY -> QUEUED by compute or predictor. */
    if (!atomic_compare_exchange_strong_explicit(&st->tiles[id].state, &q, NF_TILE_EMPTY,
                                                 memory_order_release, memory_order_relaxed))
        return false;
    /* A compute thread blocked on it re-requests it at once instead of at its next slice. */
    nf_notify_wake(&st->sync->tile_done);
    return true;
}

int nf_tile_begin_load(struct nf_stack *st, uint32_t id, uint32_t slot)
{
    if (id >= st->cfg->n_tiles || slot >= st->cfg->n_slots)
        return -EINVAL;
    struct nf_tile_entry *t = &st->tiles[id];
    struct nf_slot_entry *se = &st->slots[slot];
    /* Acquire pairs with the release stores of NF_NO_TILE in nf_slot_try_evict() and
     * nf_tile_fail() (which a worker thread may call): whatever was done with the slot before
     * it was freed happens before it is reused. */
    if (atomic_load_explicit(&se->tile, memory_order_acquire) != NF_NO_TILE)
        return -EBUSY;
    uint32_t s = atomic_load_explicit(&t->state, memory_order_relaxed);
    for (;;) {
        if (s != NF_TILE_EMPTY && s != NF_TILE_QUEUED)
            return -EALREADY;
        /* Acq-rel CAS pairs with the EMPTY -> QUEUED CASes of compute and predictor (they may
         * move EMPTY to QUEUED under us: retry with what we saw). */
        if (atomic_compare_exchange_weak_explicit(&t->state, &s, NF_TILE_LOADING,
                                                  memory_order_acq_rel, memory_order_relaxed))
            break;
    }
    /* Relaxed: published to compute by the release store of READY in nf_tile_end_load(). */
    atomic_store_explicit(&t->slot, slot, memory_order_relaxed);
    atomic_store_explicit(&se->tile, id, memory_order_relaxed);
    return 0;
}

void nf_tile_fail(struct nf_stack *st, uint32_t id, int err)
{
    if (id >= st->cfg->n_tiles)
        return;
    struct nf_tile_entry *t = &st->tiles[id];
    uint32_t slot = atomic_load_explicit(&t->slot, memory_order_relaxed);
    if (slot < st->cfg->n_slots &&
        atomic_load_explicit(&st->slots[slot].tile, memory_order_relaxed) == id)
        /* Release pairs with the acquire load in nf_tile_begin_load(). */
        atomic_store_explicit(&st->slots[slot].tile, NF_NO_TILE, memory_order_release);
    if (err >= 0)
        err = -EIO;
    atomic_store_explicit(&t->slot, (uint32_t)-err, memory_order_relaxed);
    /* Release pairs with the acquire load of state in nf_tile_error(): the code is visible. */
    atomic_store_explicit(&t->state, NF_TILE_ERROR, memory_order_release);
    nf_notify_wake(&st->sync->tile_done);
}

void nf_tile_end_load(struct nf_stack *st, uint32_t id, bool ok)
{
    if (id >= st->cfg->n_tiles)
        return;
    if (!ok) {
        nf_tile_fail(st, id, -EIO);
        return;
    }
    /* Release pairs with the seq-cst load of state in nf_tile_try_pin(): the slot index and
     * the tile's bytes in the slot are visible to whoever sees READY. */
    atomic_store_explicit(&st->tiles[id].state, NF_TILE_READY, memory_order_release);
    nf_notify_wake(&st->sync->tile_done);
}

bool nf_slot_try_evict(struct nf_stack *st, uint32_t slot)
{
    if (slot >= st->cfg->n_slots)
        return false;
    struct nf_slot_entry *se = &st->slots[slot];
    uint32_t id = atomic_load_explicit(&se->tile, memory_order_relaxed);
    if (id == NF_NO_TILE)
        return true;
    if (atomic_load_explicit(&se->flags, memory_order_relaxed) & NF_SLOT_RESIDENT ||
        id >= st->cfg->n_tiles)
        return false;
    struct nf_tile_entry *t = &st->tiles[id];
    uint32_t r = NF_TILE_READY;
    /* Dekker pairing, fetcher side: seq-cst CAS READY -> EVICTING then seq-cst load of pins;
     * pairs with the seq-cst pins increment then state load in nf_tile_try_pin(). */
    if (!atomic_compare_exchange_strong_explicit(&t->state, &r, NF_TILE_EVICTING,
                                                 memory_order_seq_cst, memory_order_relaxed))
        return false;
    if (atomic_load_explicit(&t->pins, memory_order_seq_cst) != 0) {
        /* Release pairs with the seq-cst load in nf_tile_try_pin(): READY again, slot intact. */
        atomic_store_explicit(&t->state, NF_TILE_READY, memory_order_release);
        return false;
    }
    atomic_store_explicit(&t->slot, NF_NO_SLOT, memory_order_relaxed);
    /* Release pairs with the acquire load in nf_tile_begin_load(). */
    atomic_store_explicit(&se->tile, NF_NO_TILE, memory_order_release);
    /* Release pairs with the acquire CAS EMPTY -> QUEUED of the next asker. */
    atomic_store_explicit(&t->state, NF_TILE_EMPTY, memory_order_release);
    atomic_fetch_add_explicit(&st->ctr->f_evictions, 1, memory_order_relaxed);
    return true;
}

uint32_t nf_stack_compute_threads(uint32_t requested)
{
    if (requested > 0)
        return requested;
    long n = sysconf(_SC_NPROCESSORS_ONLN);
    return n > 2 ? (uint32_t)(n - 1) : 1;
}

void nf_stack_stop(struct nf_stack *st, uint32_t ready_bit)
{
    struct nf_stack_sync *sy = st->sync;
    atomic_fetch_and(&sy->ready_mask, ~ready_bit);
    atomic_store(&sy->stop, 1);
    nf_notify_wake(&sy->fetch_bell);
    nf_notify_wake(&sy->tile_done);
    nf_notify_wake(&sy->act_bell);
}
