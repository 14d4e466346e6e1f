/* shape.c - what a model asks of the pool: slot size classes, working sets, table layout. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "nf_err.h"
#include "nft.h"
#include "quants.h"
#include "stack_int.h"

/* Slots beyond the minimum working set, so a prefetch can land while compute holds its set. */
#define NF_STACK_SPARE_SLOTS 2
/* FFN / expert tiles the minimum pool holds besides one layer's attention set. */
#define NF_STACK_MIN_FFN_TILES 4
/* Tiles up to this size (norms, embedding rows) go in the small class of the pool. */
#define NF_STACK_SMALL_TILE   (64ull << 10)
#define NF_STACK_MIN_DEMAND   64u        /* demand ring entries at least */
#define NF_STACK_MIN_PREFETCH 256u       /* prefetch ring entries at least */
#define NF_STACK_DIM_MAX      (1u << 24) /* widths and vocabulary a plan accepts */
/* Router copies the predictor of a MoE model keeps in private memory, at most: the layers
 * beyond are routed from the pool's ROUTER tiles (daemons/predictor/loop.c pool_route). Every
 * router of qwen3-30b-a3b (50 MB) or gpt-oss-120b (53 MB) fits; deepseek-v3's (426 MB) or
 * kimi-k2's (660 MB) would not fit a 1 GiB stack beside its pool. */
#define NF_STACK_PRED_COPIES_MAX (64ull << 20)

static uint32_t pow2_at_least(uint64_t v)
{
    uint64_t p = 1;
    while (p < v && p < NF_RING_MAX_COUNT)
        p <<= 1;
    return (uint32_t)p;
}

/* Per layer (index n_layer: layer-less tiles) and class, counts used by the shape. */
struct nf_layer_count {
    uint64_t all;
    uint64_t attn_set[NF_STACK_MAX_CLASSES], ffn[NF_STACK_MAX_CLASSES];
    uint64_t groups;
    bool routed; /* a ROUTER, PRED_ROUTER or EXPERT tile: a MoE layer */
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
 *    last class allowed takes whatever remains. The median is that of the tiles other than
 *    routed experts (other[0..n_other), sorted) when some remain: a step reads n_expert_used
 *    of n_expert of those, so their count must not decide the slot of the tiles read every
 *    step (deepseek-v3 has 44,544 expert tiles of 7.9-11.5 MiB and ~7,000 attention, dense
 *    FFN and output tiles of 1 MiB, which an all-tile median put in 11.5 MiB slots).
 * So a tile never sits in a slot more than twice its class's median, except in the last class,
 * and a model whose tiles are all alike gets one class. More classes would cut the waste
 * further but every class costs its own minimum working set and cannot lend slots to another,
 * so the split stops at these natural gaps. */
static void plan_classes(struct nf_stack_shape *sh, const uint64_t *sorted, uint64_t n,
                         const uint64_t *other, uint64_t n_other)
{
    uint64_t i = 0;
    sh->n_classes = 0;
    if (sorted[0] <= NF_STACK_SMALL_TILE && sorted[n - 1] > NF_STACK_SMALL_TILE) {
        i = upper_bound(sorted, n, NF_STACK_SMALL_TILE);
        sh->class_size[sh->n_classes++] = sorted[i - 1];
    }
    while (i < n) {
        uint64_t j = n;
        if (sh->n_classes + 1 < NF_STACK_MAX_CLASSES) {
            /* The rest is every tile above sorted[i - 1]; other's share of it starts at o. */
            uint64_t o = i ? upper_bound(other, n_other, sorted[i - 1]) : 0;
            uint64_t median = o < n_other ? other[o + (n_other - o) / 2] : sorted[i + (n - i) / 2];
            j = upper_bound(sorted, n, 2 * median);
        }
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
        uint64_t padded = nf_nft_tile_span(t);
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

int nf__stack_shape(const struct nf_nft *f, struct nf_stack_shape *sh, char *err, size_t errlen)
{
    const struct nf_nft_header *h = &f->hdr;
    memset(sh, 0, sizeof(*sh));
    /* The bounds keep every product below 2^63 (KV bytes: layers * ctx * 2 * width * 2). */
    if (h->n_layer == 0 || h->n_layer > NF_NFT_MAX_LAYERS || h->n_embd == 0 ||
        h->n_embd > NF_STACK_DIM_MAX || h->n_ff > NF_STACK_DIM_MAX ||
        h->n_vocab > NF_STACK_DIM_MAX || h->n_head == 0 || h->n_head_kv == 0 ||
        h->n_head > h->n_embd || h->n_head_kv > h->n_head || f->n_tiles == 0 ||
        f->n_tiles >= NF_NO_TILE || !f->tiles)
        return nf_errf(err, errlen, NF_ECORRUPT,
                       "%s: header n_layer %u, n_embd %u, n_ff %u, n_vocab %u, n_head %u, "
                       "n_head_kv %u, n_tiles %llu: expected 1..%d layers, widths up to %u, "
                       "n_embd >= n_head >= n_head_kv > 0, 1..%u tiles",
                       f->path, h->n_layer, h->n_embd, h->n_ff, h->n_vocab, h->n_head, h->n_head_kv,
                       (unsigned long long)f->n_tiles, NF_NFT_MAX_LAYERS, NF_STACK_DIM_MAX,
                       NF_NO_TILE - 1);
    sh->n_tiles = f->n_tiles;
    sh->n_layer = h->n_layer;
    sh->n_embd = h->n_embd;
    sh->moe = h->n_expert > 0;
    sh->n_ff = h->n_ff;
    sh->n_vocab = h->n_vocab;
    sh->n_head = h->n_head;
    sh->n_head_kv = h->n_head_kv;

    struct nf_layer_count *lc = calloc((size_t)h->n_layer + 1, sizeof(*lc));
    uint64_t *sizes = malloc(f->n_tiles * sizeof(*sizes)); /* (n_tiles) padded, sorted */
    uint64_t *other = malloc(f->n_tiles * sizeof(*other)); /* (n_other) those not EXPERT */
    if (!lc || !sizes || !other) {
        free(lc);
        free(sizes);
        free(other);
        return nf_errf(err, errlen, -ENOMEM, "stack plan: out of memory");
    }
    uint64_t n_out_tiles = 0, n_other = 0;
    for (uint64_t i = 0; i < f->n_tiles; i++) {
        const struct nf_nft_tile *t = &f->tiles[i];
        uint64_t padded = nf_nft_tile_span(t);
        /* A slot is never smaller than a page (O_DIRECT and the mapping's granularity). */
        sizes[i] = padded > NF_SHM_ALIGN ? padded : NF_SHM_ALIGN;
        if (t->kind != NF_TILE_EXPERT)
            other[n_other++] = sizes[i];
        uint32_t l = t->layer == NF_NFT_NO_LAYER ? h->n_layer : t->layer;
        if (l > h->n_layer) {
            free(lc);
            free(sizes);
            free(other);
            return nf_errf(err, errlen, NF_ECORRUPT, "%s: tile %llu: layer %u, expected < %u",
                           f->path, (unsigned long long)i, t->layer, h->n_layer);
        }
        lc[l].all++;
        if (t->kind == NF_TILE_OUTPUT)
            n_out_tiles++;
        if (t->kind == NF_TILE_FFN && t->group)
            lc[l].groups += t->count / t->group;
        if (t->kind == NF_TILE_ROUTER || t->kind == NF_TILE_PRED_ROUTER ||
            t->kind == NF_TILE_EXPERT)
            lc[l].routed = true;
        /* The predictor daemon of a MoE model keeps the routers and ffn_norms of the first
         * layers, in layer order as nf_forecaster_init reads them, up to
         * NF_STACK_PRED_COPIES_MAX. */
        if (h->n_expert && (t->kind == NF_TILE_PRED_ROUTER || t->kind == NF_TILE_FFN_NORM) &&
            sh->pred_copies + padded <= NF_STACK_PRED_COPIES_MAX)
            sh->pred_copies += padded;
        /* Bundle tiles only: compute reads an in-place index's row slices (type[3] names the
         * projection, type[2] is unset) where they lie, with no down-row scratch (stream.c). */
        if ((t->kind == NF_TILE_FFN || t->kind == NF_TILE_EXPERT) && t->type[3] == NF_SLICE_NONE &&
            t->type[2] < NF_TYPE_COUNT && nf_type_traits((enum nf_type)t->type[2])) {
            /* For MoE tiles count is the expert's slice; the down row is n_ff of the expert,
             * which the header's n_ff gives. A MoE file's FFN tiles are a shared expert
             * (qwen2moe) of its own width, which its tiles' ends give. */
            uint64_t w =
                h->n_expert && t->kind == NF_TILE_FFN ? (uint64_t)t->first + t->count : h->n_ff;
            uint64_t row = nf_row_size((enum nf_type)t->type[2], (int64_t)w);
            if ((uint64_t)h->n_embd * row > sh->down_scratch)
                sh->down_scratch = (uint64_t)h->n_embd * row;
        }
    }
    qsort(sizes, f->n_tiles, sizeof(*sizes), cmp_u64);
    qsort(other, n_other, sizeof(*other), cmp_u64);
    plan_classes(sh, sizes, f->n_tiles, other, n_other);
    free(sizes);
    free(other);
    plan_class_counts(sh, f, lc);
    uint64_t max_all = 0;
    for (uint32_t l = 0; l < h->n_layer; l++) {
        if (lc[l].all > max_all)
            max_all = lc[l].all;
        /* A MoE model's layer reports its experts, but a leading dense layer (glm4moe's or
         * deepseek2's, no router) its FFN groups. */
        uint64_t g = h->n_expert && lc[l].routed ? h->n_expert : lc[l].groups;
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
            /* deepseek2 caches one latent per token and layer (key_length values: kv_lora_rank
             * + rope dims, 576 for V3), not K and V per head. */
            if (!strcmp(arch, "deepseek2") &&
                nf_gguf_get_u64(f->meta, "deepseek2.attention.key_length", &v) == 0 && v > 0 &&
                v <= NF_STACK_DIM_MAX)
                sh->kv_latent = (uint32_t)v;
            /* Heads wider than n_embd / n_head (qwen3, gemma3, glm4moe) say so. */
            snprintf(key, sizeof(key), "%s.attention.key_length", arch);
            if (nf_gguf_get_u64(f->meta, key, &v) == 0 && v > 0 && v <= NF_STACK_DIM_MAX)
                sh->head_k = sh->head_v = (uint32_t)v;
            snprintf(key, sizeof(key), "%s.attention.value_length", arch);
            if (sh->head_k && nf_gguf_get_u64(f->meta, key, &v) == 0 && v > 0 &&
                v <= NF_STACK_DIM_MAX)
                sh->head_v = (uint32_t)v;
        }
    }
    if (!sh->head_k) {
        if (h->n_embd % h->n_head != 0)
            return nf_errf(err, errlen, NF_ECORRUPT,
                           "%s: n_embd %u is not a multiple of n_head %u and the model gives no "
                           "attention.key_length",
                           f->path, h->n_embd, h->n_head);
        sh->head_k = sh->head_v = h->n_embd / h->n_head;
    }
    return 0;
}

void nf__stack_layout(const struct nf_stack_shape *sh, uint64_t n_slots, uint64_t kv_tiles,
                      uint32_t n_seq, struct nf_stack_layout *lo)
{
    lo->tiles_off = nf__align_to(sizeof(struct nf_stack_config), NF_STACK_CL);
    lo->slots_off = nf__align_to(
        lo->tiles_off + (sh->n_tiles + kv_tiles) * sizeof(struct nf_tile_entry), NF_STACK_CL);
    lo->kv_words_off =
        nf__align_to(lo->slots_off + n_slots * sizeof(struct nf_slot_entry), NF_STACK_CL);
    /* With KV tiles, the walk record (struct nf_kv_walk) follows their words. */
    lo->table_bytes =
        kv_tiles
            ? nf__align_to(lo->kv_words_off + kv_tiles * sizeof(struct nf_kv_word), NF_STACK_CL) +
                  sizeof(struct nf_kv_walk)
            : lo->slots_off + n_slots * sizeof(struct nf_slot_entry);
    size_t dsz = 0, psz = 0;
    /* Counts are powers of two within limits and esize 8 is valid: these cannot fail. */
    nf_ring_memsize(sh->demand_count, sizeof(struct nf_tile_req), &dsz);
    nf_ring_memsize(sh->prefetch_count, sizeof(struct nf_tile_req), &psz);
    lo->demand_off = 0;
    lo->demand_size = dsz;
    lo->prefetch_off = nf__align_to(dsz, NF_STACK_CL);
    lo->prefetch_size = psz;
    lo->ring_bytes = lo->prefetch_off + psz;
    lo->act_stride = nf__align_to(sizeof(struct nf_act_slot) + (uint64_t)sh->n_embd * sizeof(float),
                                  NF_STACK_CL);
    lo->used_stride = nf__align_to(sizeof(struct nf_used_slot) +
                                       ((uint64_t)sh->max_groups + 63) / 64 * sizeof(uint64_t),
                                   NF_STACK_CL);
    lo->act_off = 0;
    lo->used_off = (uint64_t)sh->n_layer * lo->act_stride;
    lo->rows_off = lo->used_off + (uint64_t)sh->n_layer * lo->used_stride;
    lo->act_rows = sh->moe && n_seq > 1 ? n_seq : 0;
    lo->act_bytes = lo->rows_off + (uint64_t)sh->n_layer * lo->act_rows * lo->act_stride;
}
