/* stream.c - the tile-streaming forward pass (see stream.h) and the file-backed tile source. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kv_file.h"
#include "kv_quant.h"
#include "nf_err.h"
#include "predictor.h"
#include "quants_rows.h"
#include "stream.h"
#include "threadpool.h"

struct nf_stream {
    const struct nf_nft *f;
    struct nf_tile_src src;
    struct nf_model shell; /* hparams and rope_freqs only: what nf_ctx reads from a model */
    /* (n_layer) each layer's attention extras (biases, q/k norms; nf_attn_qk reads them),
     * copied from their small tiles at creation into ext_data; NULL for a plain llama model. */
    struct nf_attn_weights *ext;
    float *ext_data;
    struct nf_tensor *ffn_post; /* (n_layer) gemma3's post_ffw_norm, in ext_data; else NULL */
    struct nf_tensor *router_b; /* (n_layer) gpt-oss's router bias, in ext_data; else NULL */
    /* gpt-oss: the chosen expert's bias rows (n_ff, n_ff, n_embd), copied from its
     * EXP_*_BIAS tiles per use; eb_on while they apply (nf_stream_slices adds gate and up). */
    float *eb_gate, *eb_up, *eb_down;
    bool eb_on;
    float *probs_b; /* (n_layer, n_expert) glm4moe's exp_probs_b (zero in dense layers); or NULL */
    struct nf_ctx *c;
    float sparsity;
    const atomic_int *abort;
    nf_stream_progress_cb progress; /* after each chunk of a multi-chunk eval; may be NULL */
    void *progress_ud;
    int prog_done, prog_total; /* tokens before the current chunk, and in the whole eval */
    uint32_t max_groups;       /* most FFN groups (dense) or experts (MoE) of any layer */
    uint32_t n_groups;         /* of the current layer */
    int group;                 /* neurons per FFN group of the current layer */
    enum nf_type down_type;    /* ffn_down's type in the current layer */
    int ff;                    /* width of the FFN being run: n_ff, or n_ff_shexp (qwen2moe) */
    int ub;                    /* tokens per chunk (the ubatch) */
    int rows;                  /* max(ub, opts n_seq): the (rows, ...) buffers hold this many */
    float *tmp;                /* (rows, max_rows) one tile's mat-vec output */
    size_t max_rows;           /* most rows of any row tile or group */
    void *down;           /* (n_embd rows of n_ff elements of down_type) reassembled ffn_down */
    size_t down_row_size; /* bytes per reassembled row in the current layer */
    /* Whether the last nf_stream_bundles reassembled ffn_down by groups of 128 columns
     * (nf_stream_down_grouped) instead of in contiguous rows. */
    bool down_grouped;
    float *scores;    /* (n_ff) predictor neuron scores */
    float *gscores;   /* (n_groups) */
    float *ptmp;      /* (rank) */
    uint32_t *bound;  /* (max_groups + 1) first group of each FFN tile of the layer */
    uint32_t n_bound; /* FFN tiles of the layer (bound[n_bound] = n_groups) */
    bool slices;      /* the current layer's FFN tiles are in-place row slices */
    uint32_t *order;  /* (2 max_groups) nf_sparse_pick scratch */
    uint32_t *pick;   /* (max_groups) groups chosen for one token */
    float *tscore;    /* (max_groups) tile scores */
    /* Sparse FFN scratch (sparse dense models only; NULL otherwise). */
    uint8_t *xq;       /* (rows, 2, xq_stride) xn converted for gate and up vec_dots */
    size_t xq_stride;  /* bytes per converted row (4 n_embd: room for any vec_dot type) */
    float *sacc;       /* (n_threads, rows, n_embd) per-thread down sums */
    float *swork;      /* (n_threads, 2 max_rows + n_embd) gate, up and one group's down */
    uint8_t *shq;      /* (n_threads, 4 max_rows + 64) a group's activation converted */
    uint32_t *spairs;  /* (rows max_groups) (token << 16 | group in tile) of one tile */
    int n_threads;     /* the pool's threads (the sparse scratch holds this many) */
    int n_threads_one; /* of a one-token step (nf_stream_opts), <= n_threads */
    uint8_t *sel;      /* (rows, n_groups) groups selected per token */
    uint64_t *bits;    /* (ceil(n_groups / 64)) used bitmap */
    struct nf_stream_stats st;
    uint64_t mem;
    char err[320];
    /* Several sequences (nf_stream_set_slots; 0 / NULL before). */
    int n_slots;
    struct nf_kv_slot *slots;   /* (n_slots) slot 0 borrows c's cache and logits */
    int batch;                  /* rows of the batched step running now, else 0 */
    struct nf_ctx *views;       /* (n_slots) row r of c bound to its slot, during a step */
    float *blogits;             /* (n_slots, n_vocab) a step's logits, row by row */
    float *mxn;                 /* (n_slots, n_embd) MoE: the rows that chose one expert */
    float *mout;                /* (n_slots, n_embd) their expert's outputs */
    float *meo;                 /* (n_slots, n_expert_used, n_embd) every row's outputs */
    bool row_pub[NF_MAX_BATCH]; /* rows of this layer already given to src.row_done */
    /* (n_tok, n_vocab) during nf_stream_eval_rows: the chunk's logits; else NULL */
    float *row_logits;
    /* The KV cache on disk (nf_stream_opts kv_path; NULL: in RAM): the slot c is bound to
     * outside a batched step, and each row's slot during one. */
    struct nf_kv_file *kvf;
    int kv_slot;
    int kv_rows[NF_MAX_BATCH];
    bool kv_whole; /* prompt chunks read their layer back whole (nf_kv_file_prompt_layer) */
    /* The blocks as tiles of the source's pool (src.kv, when its geometry is the file's): the
     * walk pins a durable block's tile instead of reading it into the window. kv_pub: per
     * (slot, layer) the blocks marked durable, [0, kv_pub); kv_pinned: the K and V tiles the
     * walk holds (NF_STREAM_NO_KV: none). */
    bool kv_tiles;
    int kv_n_blk;
    int *kv_pub; /* (n_slots of the file, n_layer) */
    uint32_t kv_pinned[2];
};

#define NF_STREAM_NO_KV UINT32_MAX

/* --- tiles ----------------------------------------------------------------------------- */

static const uint8_t *nf_stream_pin(struct nf_stream *s, const struct nf_nft_tile *t, int *rc)
{
    uint32_t id = (uint32_t)nf_nft_tile_id(s->f, t);
    const uint8_t *p = s->src.pin(s->src.ud, id, rc);
    if (!p) {
        char d[160];
        nf_nft_describe(s->f, t, d, sizeof(d));
        if (*rc >= 0)
            *rc = -EIO;
        snprintf(s->err, sizeof(s->err), "%s: %s", d, nf_strerror(*rc));
        return NULL;
    }
    s->st.tiles_pinned++;
    s->st.tile_bytes += t->size;
    return p;
}

static void nf_stream_unpin(struct nf_stream *s, const struct nf_nft_tile *t)
{
    s->src.unpin(s->src.ud, (uint32_t)nf_nft_tile_id(s->f, t));
}

/* Caps the pool for a prompt chunk of n_tok tokens: n_threads_one threads for one token,
 * every thread for more. */
static void nf_stream_threads(struct nf_stream *s, int n_tok)
{
    nf_threadpool_limit(s->c->pool, n_tok > 1 ? 0 : s->n_threads_one);
}

/* A tensor view over a row tile's bytes: t->count rows of t->ne0 elements of t->type[0]. */
static struct nf_tensor nf_rows_view(const struct nf_nft_tile *t, const void *p)
{
    struct nf_tensor v = {.type = (enum nf_type)t->type[0],
                          .ne = {t->ne0, t->count, 1},
                          .row_size = nf_row_size((enum nf_type)t->type[0], t->ne0),
                          .data = (void *)p};
    return v;
}

/* out (n_tok, w->ne[1]) = x times w's rows: as a prompt chunk (nf_matmul), or in a batched
 * step as each sequence's own decode step computes its row (nf_matmul_each). */
static void nf_stream_matmul(struct nf_stream *s, float *out, const struct nf_tensor *w,
                             const float *x, int n_tok)
{
    if (s->batch)
        nf_matmul_each(s->c, out, w, x, n_tok);
    else
        nf_matmul(s->c, out, w, x, n_tok);
}

/* out (n_tok, rows) = x (n_tok, ne0) times the rows of every tile of (layer, kind), where rows
 * is the total row count; each tile's rows are computed in place or through s->tmp. */
static int nf_stream_mm(struct nf_stream *s, float *out, uint32_t layer, enum nf_tile_kind kind,
                        size_t rows, const float *x, int n_tok)
{
    const uint32_t n = nf_nft_count(s->f, layer, kind);
    nf_matmul_reuse(s->c, true); /* x is converted once for all the tiles */
    for (uint32_t i = 0; i < n; i++) {
        const struct nf_nft_tile *t = nf_nft_find(s->f, layer, kind, i);
        int rc;
        const uint8_t *p = nf_stream_pin(s, t, &rc);
        if (!p) {
            nf_matmul_reuse(s->c, false);
            return rc;
        }
        struct nf_tensor v = nf_rows_view(t, p);
        if (n == 1 || n_tok == 1) {
            nf_stream_matmul(s, out + t->first, &v, x, n_tok);
        } else {
            nf_stream_matmul(s, s->tmp, &v, x, n_tok);
            for (int k = 0; k < n_tok; k++)
                memcpy(out + (size_t)k * rows + t->first, s->tmp + (size_t)k * t->count,
                       sizeof(float) * t->count);
        }
        nf_stream_unpin(s, t);
    }
    nf_matmul_reuse(s->c, false);
    return 0;
}

/* xn (n_tok, n_embd) = RMSNorm of x with the single-tile norm vector of (layer, kind). */
static int nf_stream_norm(struct nf_stream *s, float *xn, const float *x, uint32_t layer,
                          enum nf_tile_kind kind, int n_tok)
{
    const struct nf_hparams *hp = &s->shell.hp;
    const struct nf_nft_tile *t = nf_nft_find(s->f, layer, kind, 0);
    int rc;
    const uint8_t *p = nf_stream_pin(s, t, &rc);
    if (!p)
        return rc;
    const void *pv = p;
    const float *pf = pv; /* (n_embd) F32, checked at creation */
    for (int k = 0; k < n_tok; k++)
        nf_rmsnorm(xn + (size_t)k * hp->n_embd, x + (size_t)k * hp->n_embd, pf, hp->n_embd,
                   hp->rms_eps);
    nf_stream_unpin(s, t);
    return 0;
}

/* hb[k][first..] = gate rows of group b times xn[k], and likewise hb2 with the up rows. */
static void nf_stream_gate_up(struct nf_stream *s, const struct nf_nft_bundle *b, const float *xn,
                              int n_tok)
{
    struct nf_ctx *c = s->c;
    const size_t F = (size_t)s->ff, G = (size_t)b->n_neurons;
    struct nf_tensor gv = {.type = b->gate_type,
                           .ne = {b->n_embd, b->n_neurons, 1},
                           .row_size = b->gate_row_size,
                           .data = (void *)b->gate};
    struct nf_tensor uv = {.type = b->up_type,
                           .ne = {b->n_embd, b->n_neurons, 1},
                           .row_size = b->up_row_size,
                           .data = (void *)b->up};
    if (n_tok == 1) {
        nf_stream_matmul(s, c->hb + b->first, &gv, xn, 1);
        nf_stream_matmul(s, c->hb2 + b->first, &uv, xn, 1);
        return;
    }
    nf_stream_matmul(s, s->tmp, &gv, xn, n_tok);
    for (int k = 0; k < n_tok; k++)
        memcpy(c->hb + (size_t)k * F + b->first, s->tmp + (size_t)k * G, sizeof(float) * G);
    nf_stream_matmul(s, s->tmp, &uv, xn, n_tok);
    for (int k = 0; k < n_tok; k++)
        memcpy(c->hb2 + (size_t)k * F + b->first, s->tmp + (size_t)k * G, sizeof(float) * G);
}

/* Copying the ffn_down columns of one bundle tile into the reassembled matrix, parallel over
 * rows: per row, each group contributes down_row_size bytes at the group's block offset. */
struct nf_down_job {
    struct nf_stream *s;
    const struct nf_nft_tile *t;
    const uint8_t *p;
};

/* Copies n groups' slices of row r; the common slice sizes get constant-size copies, which the
 * compiler turns into a few moves (a memcpy call per 18-byte slice would dominate). */
#define NF_DOWN_COPY(SZ)             \
    for (uint32_t j = 0; j < n; j++) \
    memcpy(dst + j * (size_t)(SZ), src[j] + r * (size_t)(SZ), (SZ))

static void nf_down_run(void *arg, int ith, int nth)
{
    const struct nf_down_job *jb = arg;
    const struct nf_stream *s = jb->s;
    const struct nf_nft_tile *t = jb->t;
    const uint32_t ng = t->count / t->group;
    const uint8_t *src[64];
    size_t drs = 0, off = 0;
    for (uint32_t j0 = 0; j0 < ng; j0 += 64) {
        const uint32_t n = ng - j0 < 64 ? ng - j0 : 64;
        for (uint32_t j = 0; j < n; j++) {
            struct nf_nft_bundle b;
            nf_nft_bundle_group(t, jb->p, j0 + j, &b);
            src[j] = b.down;
            drs = b.down_row_size;
            if (j == 0)
                off = nf_row_size(b.down_type, b.first);
        }
        const size_t E = (size_t)s->shell.hp.n_embd;
        const size_t r0 = E * (size_t)ith / (size_t)nth, r1 = E * (size_t)(ith + 1) / (size_t)nth;
        for (size_t r = r0; r < r1; r++) {
            char *dst = (char *)s->down + r * s->down_row_size + off;
            switch (drs) {
            case 18: NF_DOWN_COPY(18); break;   /* q4_0 */
            case 34: NF_DOWN_COPY(34); break;   /* q8_0 */
            case 144: NF_DOWN_COPY(144); break; /* q4_K */
            case 176: NF_DOWN_COPY(176); break; /* q5_K */
            case 210: NF_DOWN_COPY(210); break; /* q6_K */
            default: NF_DOWN_COPY(drs); break;
            }
        }
    }
}

/* A batched step's layout of the reassembled ffn_down (n_embd rows, ff columns of q4_0): by
 * groups of NF_DOWN_GROUP columns (four blocks, 72 bytes per row), group q of row r at
 * s->down + (q * n_embd + r) * 72. A bundle tile then fills its groups' rows one after the
 * other, sequential writes, where contiguous rows take a few bytes of every row at a stride of
 * a whole row, each a cache line written in part, once per tile (a fifth of an 8-row batched
 * step, docs/measurements.md); nf_matmul_each_gs reads it with the same arithmetic. */
#define NF_DOWN_GROUP 128

/* Whether the bundle tiles [i0, i1) of (layer, kind) and a step of n_tok rows take that
 * layout: a batched step of two or more rows, q4_0 down with its grouped kernel, and every
 * bundle group within one 128-column group. */
static bool nf_stream_down_grouped(const struct nf_stream *s, uint32_t layer,
                                   enum nf_tile_kind kind, uint32_t i0, uint32_t i1, int n_tok)
{
    if (!s->batch || n_tok < 2 || s->down_type != NF_TYPE_Q4_0 || s->ff % NF_DOWN_GROUP ||
        !nf_matmul_each_gs_ok(s->c, NF_TYPE_Q4_0))
        return false;
    for (uint32_t i = i0; i < i1; i++) {
        const struct nf_nft_tile *t = nf_nft_find(s->f, layer, kind, i);
        if ((enum nf_type)t->type[2] != NF_TYPE_Q4_0 || t->group == 0 || t->group % 32 ||
            NF_DOWN_GROUP % t->group || t->first % t->group)
            return false;
    }
    return true;
}

/* The grouped layout's copy of one bundle group's down columns (n_embd rows of
 * b->down_row_size bytes, one after the other in the tile) into its 128-column group. */
static void nf_down_group(const struct nf_stream *s, const struct nf_nft_bundle *b)
{
    const size_t E = (size_t)s->shell.hp.n_embd, GB = nf_row_size(NF_TYPE_Q4_0, NF_DOWN_GROUP);
    const size_t drs = b->down_row_size;
    char *dst = (char *)s->down + (size_t)(b->first / NF_DOWN_GROUP) * E * GB +
                nf_row_size(NF_TYPE_Q4_0, b->first % NF_DOWN_GROUP);
    const uint8_t *src = b->down;
    if (drs == 18) { /* groups of 32 neurons: one block a row */
        for (size_t r = 0; r < E; r++)
            memcpy(dst + r * GB, src + r * 18, 18);
    } else {
        for (size_t r = 0; r < E; r++)
            memcpy(dst + r * GB, src + r * drs, drs);
    }
}

/* Asks the caches for n bytes at p (no effect on any result): a bundle group's down columns,
 * read from DRAM while its gate and up rows are multiplied, so that the copy after them reads
 * the caches (the copy was memory-bound: docs/measurements.md). */
static void nf_prefetch(const void *p, size_t n)
{
    for (size_t off = 0; off < n; off += 64)
        __builtin_prefetch((const char *)p + off, 0, 2);
}

static void nf_stream_put_down(struct nf_stream *s, const struct nf_nft_tile *t, const uint8_t *p)
{
    struct nf_down_job jb = {s, t, p};
    const size_t bytes =
        (size_t)s->shell.hp.n_embd * nf_row_size((enum nf_type)t->type[2], t->count);
    nf_threadpool_run(s->c->pool, nf_down_run, &jb,
                      bytes < 65536 ? 1 : nf_threadpool_size(s->c->pool));
}

/* out (n_tok, n_embd) = x (n_tok, ff) times the reassembled ffn_down, in the layout the last
 * nf_stream_bundles chose. */
static void nf_stream_down_mm(struct nf_stream *s, float *out, const float *x, int n_tok)
{
    const struct nf_hparams *hp = &s->shell.hp;
    if (s->down_grouped) {
        const size_t GB = nf_row_size(NF_TYPE_Q4_0, NF_DOWN_GROUP);
        struct nf_tensor v = {
            .type = NF_TYPE_Q4_0, .ne = {s->ff, hp->n_embd, 1}, .row_size = GB, .data = s->down};
        nf_matmul_each_gs(s->c, out, &v, GB * (size_t)hp->n_embd, x, n_tok);
        return;
    }
    struct nf_tensor v = {.type = s->down_type,
                          .ne = {s->ff, hp->n_embd, 1},
                          .row_size = s->down_row_size,
                          .data = s->down};
    nf_stream_matmul(s, out, &v, x, n_tok);
}

/* Gate/up of every group of the bundle tiles [i0, i1) of (layer, kind) for n_tok tokens, with
 * ffn_down reassembled on the way. */
static int nf_stream_bundles(struct nf_stream *s, uint32_t layer, enum nf_tile_kind kind,
                             uint32_t i0, uint32_t i1, const float *xn, int n_tok)
{
    /* xn is converted once for every group's gate and up (once each when their vec_dot types
     * differ: the conversions then alternate). */
    s->down_grouped = nf_stream_down_grouped(s, layer, kind, i0, i1, n_tok);
    nf_matmul_reuse(s->c, true);
    for (uint32_t i = i0; i < i1; i++) {
        const struct nf_nft_tile *t = nf_nft_find(s->f, layer, kind, i);
        int rc;
        const uint8_t *p = nf_stream_pin(s, t, &rc);
        if (!p) {
            nf_matmul_reuse(s->c, false);
            return rc;
        }
        for (uint32_t j = 0; j < t->count / t->group; j++) {
            struct nf_nft_bundle b;
            nf_nft_bundle_group(t, p, j, &b);
            if (s->down_grouped)
                nf_prefetch(b.down, (size_t)b.n_embd * b.down_row_size);
            nf_stream_gate_up(s, &b, xn, n_tok);
            if (s->down_grouped)
                nf_down_group(s, &b);
        }
        if (!s->down_grouped)
            nf_stream_put_down(s, t, p);
        nf_stream_unpin(s, t);
    }
    nf_matmul_reuse(s->c, false);
    return 0;
}

/* In-place index: the row-slice tiles [i0, i1) of (layer, kind), gate, up then down (checked
 * at creation): the gate and up rows times xn (n_tok, n_embd) into c->hb and c->hb2, SwiGLU
 * once the first down tile comes, then the down rows times c->hb into out (n_tok, n_embd). Each
 * row is the dot product the whole matrix would give it, so this equals the in-RAM FFN. */
static int nf_stream_slices(struct nf_stream *s, uint32_t layer, enum nf_tile_kind kind,
                            uint32_t i0, uint32_t i1, const float *xn, float *out, int n_tok)
{
    struct nf_ctx *c = s->c;
    const size_t E = (size_t)s->shell.hp.n_embd, F = (size_t)s->ff;
    bool act = false;
    /* xn is converted once for all the gate and up tiles, c->hb once for the down tiles. */
    nf_matmul_reuse(c, true);
    for (uint32_t i = i0; i < i1; i++) {
        const struct nf_nft_tile *t = nf_nft_find(s->f, layer, kind, i);
        const bool down = t->type[3] == NF_SLICE_DOWN;
        if (down && !act) {
            if (s->eb_on) { /* gpt-oss: the expert's gate and up biases (n_tok is 1) */
                for (size_t j = 0; j < F; j++) {
                    c->hb[j] += s->eb_gate[j];
                    c->hb2[j] += s->eb_up[j];
                }
            }
            nf_ffn_act(&s->shell.hp, c->hb, c->hb2, n_tok, (int)F);
            nf_matmul_reuse(c, true); /* forgets the conversions made before */
            act = true;
        }
        float *o = down ? out : t->type[3] == NF_SLICE_GATE ? c->hb : c->hb2;
        const size_t rows = down ? E : F;
        int rc;
        const uint8_t *p = nf_stream_pin(s, t, &rc);
        if (!p) {
            nf_matmul_reuse(c, false);
            return rc;
        }
        struct nf_tensor v = nf_rows_view(t, p);
        if (t->count == rows || n_tok == 1) {
            nf_stream_matmul(s, o + t->first, &v, down ? c->hb : xn, n_tok);
        } else {
            nf_stream_matmul(s, s->tmp, &v, down ? c->hb : xn, n_tok);
            for (int k = 0; k < n_tok; k++)
                memcpy(o + (size_t)k * rows + t->first, s->tmp + (size_t)k * t->count,
                       sizeof(float) * t->count);
        }
        nf_stream_unpin(s, t);
    }
    nf_matmul_reuse(c, false);
    return 0;
}

static void nf_stream_report_used(struct nf_stream *s, uint32_t il)
{
    if (s->src.used)
        s->src.used(s->src.ud, il, s->bits, s->n_groups);
}

/* Dense FFN, exact: c->ffo (n_tok, n_embd) = down(swiglu(gate xn, up xn)). */
static int nf_stream_ffn_exact(struct nf_stream *s, uint32_t il, int n_tok)
{
    struct nf_ctx *c = s->c;
    const uint32_t n = nf_nft_count(s->f, il, NF_TILE_FFN);
    int rc;
    if (s->slices) {
        if ((rc = nf_stream_slices(s, il, NF_TILE_FFN, 0, n, c->xn, c->ffo, n_tok)) < 0)
            return rc;
    } else {
        if ((rc = nf_stream_bundles(s, il, NF_TILE_FFN, 0, n, c->xn, n_tok)) < 0)
            return rc;
        nf_ffn_act(&s->shell.hp, c->hb, c->hb2, n_tok, s->ff);
        nf_stream_down_mm(s, c->ffo, c->hb, n_tok);
    }
    memset(s->bits, 0, sizeof(uint64_t) * ((s->n_groups + 63) / 64));
    for (uint32_t g = 0; g < s->n_groups; g++)
        s->bits[g / 64] |= 1ull << (g % 64);
    s->st.groups_total += (uint64_t)s->n_groups * (uint64_t)n_tok;
    nf_stream_report_used(s, il);
    return 0;
}

/* Chooses the groups of token k from the predictor's scores of xn. */
static void nf_stream_select(struct nf_stream *s, const struct nf_nft_tile *pt, const uint8_t *p,
                             const float *xn, int k)
{
    const struct nf_hparams *hp = &s->shell.hp;
    const enum nf_type pty = (enum nf_type)pt->type[0];
    const void *B = p + nf_row_size(pty, (int64_t)hp->n_ff * pt->rank);
    nf_lowrank_scores(s->scores, p, B, pty, hp->n_ff, hp->n_embd, (int)pt->rank, xn, s->ptmp);
    nf_group_scores(s->gscores, s->scores, hp->n_ff, s->group);
    uint32_t keep = nf_sparse_keep(s->n_groups, s->sparsity);
    /* Whole tiles first: skipped groups only save reads when their whole tile is skipped. */
    keep = nf_sparse_pick(s->gscores, s->n_groups, s->bound, s->n_bound, keep, s->tscore, s->order,
                          s->pick);
    uint8_t *sel = s->sel + (size_t)k * s->n_groups;
    memset(sel, 0, s->n_groups);
    for (uint32_t r = 0; r < keep; r++) {
        sel[s->pick[r]] = 1;
        s->bits[s->pick[r] / 64] |= 1ull << (s->pick[r] % 64);
    }
    s->st.groups_total += s->n_groups;
    s->st.groups_skipped += s->n_groups - keep;
}

/* Converts n activations to type vdt for a vec_dot (plain copy for F32). */
static void nf_act_convert(enum nf_type vdt, const float *x, void *out, int64_t n)
{
    if (vdt == NF_TYPE_F32) {
        memcpy(out, x, sizeof(float) * (size_t)n);
        return;
    }
    const struct nf_type_traits *tr = nf_type_traits(vdt);
    (tr->from_float_act ? tr->from_float_act : tr->from_float)(x, out, n);
}

/* out[r] = dot(row r of w, y) for rows rows of n elements of type wt, rows stride bytes apart. */
static void nf_dot_rows(enum nf_type wt, int n, float *out, size_t stride, const void *w,
                        const void *y, int rows)
{
    const struct nf_type_traits *tr = nf_type_traits(wt);
    if (tr->vec_dot_rows) {
        tr->vec_dot_rows(n, out, stride, w, y, rows);
        return;
    }
    for (int r = 0; r < rows; r++)
        tr->vec_dot(n, out + r, (const uint8_t *)w + (size_t)r * stride, y);
}

/* The chosen (token, group) pairs of one FFN tile, split over the thread pool: each thread
 * computes whole groups single-threaded and adds their down contributions to its own sums
 * (one pool dispatch per tile instead of three per group). */
struct nf_sparse_job {
    struct nf_stream *s;
    const struct nf_nft_tile *t;
    const uint8_t *p;
    uint32_t n_pairs;
};

static void nf_sparse_run(void *arg, int ith, int nth)
{
    const struct nf_sparse_job *jb = arg;
    struct nf_stream *s = jb->s;
    const int E = s->shell.hp.n_embd;
    const size_t R = s->max_rows;
    float *acc = s->sacc + (size_t)ith * s->rows * (size_t)E;
    float *h = s->swork + (size_t)ith * (2 * R + (size_t)E), *h2 = h + R, *eo = h2 + R;
    uint8_t *hq = s->shq + (size_t)ith * (4 * R + 64);
    for (uint32_t i = (uint32_t)ith; i < jb->n_pairs; i += (uint32_t)nth) {
        const uint32_t k = s->spairs[i] >> 16, j = s->spairs[i] & 0xffffu;
        struct nf_nft_bundle b;
        nf_nft_bundle_group(jb->t, jb->p, j, &b);
        const int G = b.n_neurons;
        const uint8_t *xg = s->xq + (size_t)k * 2 * s->xq_stride, *xu = xg + s->xq_stride;
        nf_dot_rows(b.gate_type, E, h, b.gate_row_size, b.gate, xg, G);
        nf_dot_rows(b.up_type, E, h2, b.up_row_size, b.up, xu, G);
        nf_ffn_act(&s->shell.hp, h, h2, 1, G);
        nf_act_convert(nf_type_traits(b.down_type)->vec_dot_type, h, hq, G);
        nf_dot_rows(b.down_type, G, eo, b.down_row_size, b.down, hq, E);
        float *o = acc + (size_t)k * E;
        for (int e = 0; e < E; e++)
            o[e] += eo[e];
    }
}

/* Lists in s->spairs the chosen (token, group) pairs of tokens [k0, k1) among the ng groups
 * from g0 (one FFN tile), group by group; returns their count. */
static uint32_t nf_sparse_pairs(struct nf_stream *s, uint32_t g0, uint32_t ng, int k0, int k1)
{
    uint32_t np = 0;
    for (uint32_t j = 0; j < ng; j++)
        for (int k = k0; k < k1; k++)
            if (s->sel[(size_t)k * s->n_groups + g0 + j])
                s->spairs[np++] = (uint32_t)k << 16 | j;
    return np;
}

/* Dense FFN, sparse: only the predicted groups, their down contributions added group by
 * group (per thread, then the threads' sums in thread order) into c->ffo. */
static int nf_stream_ffn_sparse(struct nf_stream *s, uint32_t il, int n_tok)
{
    struct nf_ctx *c = s->c;
    const int E = s->shell.hp.n_embd;
    const struct nf_nft_tile *pt = nf_nft_predictor(s->f, il);
    int rc;
    const uint8_t *p = nf_stream_pin(s, pt, &rc);
    if (!p)
        return rc;
    memset(s->bits, 0, sizeof(uint64_t) * ((s->n_groups + 63) / 64));
    const uint32_t n = nf_nft_count(s->f, il, NF_TILE_FFN);
    for (uint32_t i = 0; i < n; i++) {
        const struct nf_nft_tile *t = nf_nft_find(s->f, il, NF_TILE_FFN, i);
        s->bound[i] = t->first / t->group;
    }
    s->bound[n] = s->n_groups;
    s->n_bound = n;
    for (int k = 0; k < n_tok; k++)
        nf_stream_select(s, pt, p, c->xn + (size_t)k * E, k);
    nf_stream_unpin(s, pt);
    memset(c->ffo, 0, sizeof(float) * (size_t)n_tok * E);
    if (s->src.want) {
        /* Every tile the chosen groups need, in use order: the reads start together. */
        uint32_t last = UINT32_MAX;
        for (uint32_t i = 0; i < n; i++) {
            const struct nf_nft_tile *t = nf_nft_find(s->f, il, NF_TILE_FFN, i);
            const uint32_t g0 = t->first / t->group, ng = t->count / t->group;
            bool any = false;
            for (uint32_t g = g0; g < g0 + ng && !any; g++)
                any = (s->bits[g / 64] >> (g % 64)) & 1;
            if (!any)
                continue;
            if (last != UINT32_MAX)
                s->src.want(s->src.ud, last, false);
            last = (uint32_t)nf_nft_tile_id(s->f, t);
        }
        if (last != UINT32_MAX)
            s->src.want(s->src.ud, last, true);
    }
    /* Each token's input converted once for the gate and up vec_dots of every group. */
    const struct nf_nft_tile *t0 = nf_nft_find(s->f, il, NF_TILE_FFN, 0);
    const struct nf_type_traits *gtr = nf_type_traits((enum nf_type)t0->type[0]),
                                *utr = nf_type_traits((enum nf_type)t0->type[1]);
    for (int k = 0; k < n_tok; k++) {
        uint8_t *xg = s->xq + (size_t)k * 2 * s->xq_stride;
        nf_act_convert(gtr->vec_dot_type, c->xn + (size_t)k * E, xg, E);
        nf_act_convert(utr->vec_dot_type, c->xn + (size_t)k * E, xg + s->xq_stride, E);
    }
    const int nth = s->n_threads;
    memset(s->sacc, 0, sizeof(float) * (size_t)nth * s->rows * E);
    for (uint32_t i = 0; i < n; i++) {
        const struct nf_nft_tile *t = nf_nft_find(s->f, il, NF_TILE_FFN, i);
        const uint32_t g0 = t->first / t->group, ng = t->count / t->group;
        if (nf_sparse_pairs(s, g0, ng, 0, n_tok) == 0)
            continue;
        if (!(p = nf_stream_pin(s, t, &rc)))
            return rc;
        /* A batched step, or a per-row pass (c->per_row), runs each row's pairs as its own
         * decode step would (the same split between threads, so the same sums); a prompt
         * chunk runs all of them at once. */
        const bool each = s->batch || c->per_row;
        for (int k = 0; k < (each ? n_tok : 1); k++) {
            const uint32_t np =
                each ? nf_sparse_pairs(s, g0, ng, k, k + 1) : nf_sparse_pairs(s, g0, ng, 0, n_tok);
            if (np == 0)
                continue;
            /* A row of a batched step takes the threads of its solo step: the split decides
             * the order of the sums. */
            const int nt = each ? s->n_threads_one : nth;
            struct nf_sparse_job jb = {s, t, p, np};
            nf_threadpool_run(c->pool, nf_sparse_run, &jb, np < (uint32_t)nt ? (int)np : nt);
        }
        nf_stream_unpin(s, t);
    }
    for (int th = 0; th < nth; th++) {
        const float *a = s->sacc + (size_t)th * s->rows * E;
        for (size_t i = 0; i < (size_t)n_tok * E; i++)
            c->ffo[i] += a[i];
    }
    nf_stream_report_used(s, il);
    return 0;
}

/* gpt-oss: copies expert e's rows of layer il's EXP_GATE_BIAS, EXP_UP_BIAS and EXP_DOWN_BIAS
 * tiles (row tiles of one row per expert, checked at creation) into s->eb_gate, eb_up,
 * eb_down. */
static int nf_stream_expert_bias(struct nf_stream *s, uint32_t il, uint32_t e)
{
    static const enum nf_tile_kind kinds[3] = {NF_TILE_EXP_GATE_BIAS, NF_TILE_EXP_UP_BIAS,
                                               NF_TILE_EXP_DOWN_BIAS};
    float *dst[3] = {s->eb_gate, s->eb_up, s->eb_down};
    for (int k = 0; k < 3; k++) {
        const uint32_t n = nf_nft_count(s->f, il, kinds[k]);
        for (uint32_t i = 0; i < n; i++) {
            const struct nf_nft_tile *t = nf_nft_find(s->f, il, kinds[k], i);
            if (e < t->first || e >= t->first + t->count)
                continue;
            int rc;
            const uint8_t *p = nf_stream_pin(s, t, &rc);
            if (!p)
                return rc;
            memcpy(dst[k], p + sizeof(float) * t->ne0 * (e - t->first), sizeof(float) * t->ne0);
            nf_stream_unpin(s, t);
            break;
        }
    }
    return 0;
}

/* Routes token row k of c->router in layer il as nf_moe_forward does (nf_moe_route_layer,
 * with the layer's exp_probs_b when the model has one). Shared by the one-sequence and the
 * batched MoE paths. */
static void nf_stream_route(struct nf_stream *s, uint32_t il, int k, int *sel, float *w)
{
    const size_t X = (size_t)s->shell.hp.n_expert;
    nf_moe_route_layer(&s->shell.hp, s->c->router + (size_t)k * X,
                       s->probs_b ? s->probs_b + il * X : NULL, sel, w);
}

/* MoE FFN: the router on the actual input, then only the chosen experts (as nf_moe_forward). */
static int nf_stream_moe(struct nf_stream *s, uint32_t il, int n_tok)
{
    struct nf_ctx *c = s->c;
    const struct nf_hparams *hp = &s->shell.hp;
    const int E = hp->n_embd, X = hp->n_expert, K = hp->n_expert_used;
    int rc = nf_stream_mm(s, c->router, il, NF_TILE_ROUTER, (size_t)X, c->xn, n_tok);
    if (rc < 0)
        return rc;
    if (s->router_b) /* gpt-oss */
        nf_add_bias(c->router, &s->router_b[il], 0, n_tok);
    memset(s->bits, 0, sizeof(uint64_t) * ((s->n_groups + 63) / 64));
    const uint32_t per = nf_nft_count(s->f, il, NF_TILE_EXPERT) / (uint32_t)X;
    for (int k = 0; k < n_tok; k++) {
        int sel[64];
        float w[64];
        nf_stream_route(s, il, k, sel, w);
        if (s->src.want) {
            /* Every tile of the chosen experts, in use order, asked for at once: a tile the
             * predictor did not forecast is read with the others instead of one at a time as
             * compute reaches it, and a forecast one still queued is served first. */
            for (int j = 0; j < K; j++) {
                const uint32_t e = (uint32_t)sel[j];
                for (uint32_t i = e * per; i < (e + 1) * per; i++)
                    s->src.want(
                        s->src.ud,
                        (uint32_t)nf_nft_tile_id(s->f, nf_nft_find(s->f, il, NF_TILE_EXPERT, i)),
                        j == K - 1 && i == (e + 1) * per - 1);
            }
        }
        float *xt = c->xn + (size_t)k * E, *ot = c->ffo + (size_t)k * E;
        for (int j = 0; j < K; j++) {
            const uint32_t e = (uint32_t)sel[j];
            s->bits[e / 64] |= 1ull << (e % 64);
            if (hp->oai_moe && (rc = nf_stream_expert_bias(s, il, e)) < 0)
                return rc;
            s->eb_on = hp->oai_moe;
            if (s->slices) {
                rc = nf_stream_slices(s, il, NF_TILE_EXPERT, e * per, (e + 1) * per, xt, c->eo, 1);
                s->eb_on = false;
                if (rc < 0)
                    return rc;
            } else {
                rc = nf_stream_bundles(s, il, NF_TILE_EXPERT, e * per, (e + 1) * per, xt, 1);
                s->eb_on = false;
                if (rc < 0)
                    return rc;
                if (hp->oai_moe) /* as nf_moe_forward: the biases around the activation */
                    for (int i = 0; i < hp->n_ff; i++) {
                        c->hb[i] += s->eb_gate[i];
                        c->hb2[i] += s->eb_up[i];
                    }
                nf_ffn_act(hp, c->hb, c->hb2, 1, hp->n_ff);
                nf_stream_down_mm(s, c->eo, c->hb, 1);
            }
            if (hp->oai_moe)
                for (int i = 0; i < E; i++)
                    c->eo[i] += s->eb_down[i];
            for (int i = 0; i < E; i++)
                ot[i] = j == 0 ? c->eo[i] * w[j] : ot[i] + c->eo[i] * w[j];
        }
    }
    nf_stream_report_used(s, il);
    return 0;
}

/* The tiles of layer il's expert e (per tiles each, in use order) that the source does not
 * hold now (every one without a present hint). */
static uint32_t nf_stream_expert_missing(const struct nf_stream *s, uint32_t il, uint32_t e,
                                         uint32_t per)
{
    if (!s->src.present)
        return per;
    uint32_t n = 0;
    for (uint32_t i = e * per; i < (e + 1) * per; i++)
        n += !s->src.present(
            s->src.ud, (uint32_t)nf_nft_tile_id(s->f, nf_nft_find(s->f, il, NF_TILE_EXPERT, i)));
    return n;
}

/* Row k's MoE output ot (n_embd) from its K expert outputs eo (K, n_embd) weighted by w, summed
 * in its choice order as nf_stream_moe sums them for one token. */
static void nf_moe_row_sum(float *ot, const float *eo, const float *w, int K, int E)
{
    for (int j = 0; j < K; j++)
        for (int i = 0; i < E; i++)
            ot[i] = j == 0 ? eo[(size_t)j * E + i] * w[j] : ot[i] + eo[(size_t)j * E + i] * w[j];
}

/* MoE FFN of a batched step: each row routed as alone; every expert some row chose (the
 * union) pinned once and run on those rows, the experts with the fewest tiles still to read
 * first (ties by index: the one-token order when nothing is in memory), so the experts already
 * in the pool are computed while the others are read, each expert's output kept apart; then
 * each row's expert outputs weighted and summed in its own choice order, as nf_stream_moe sums
 * them for one token (the order the experts ran in changes no bit). */
static int nf_stream_moe_batch(struct nf_stream *s, uint32_t il, int n_tok)
{
    struct nf_ctx *c = s->c;
    const struct nf_hparams *hp = &s->shell.hp;
    /* gpt-oss (router and expert biases): row by row, as nf_stream_moe runs one token. */
    if (hp->oai_moe)
        return nf_stream_moe(s, il, n_tok);
    const int E = hp->n_embd, X = hp->n_expert, K = hp->n_expert_used;
    int rc = nf_stream_mm(s, c->router, il, NF_TILE_ROUTER, (size_t)X, c->xn, n_tok);
    if (rc < 0)
        return rc;
    memset(s->bits, 0, sizeof(uint64_t) * ((s->n_groups + 63) / 64));
    const uint32_t per = nf_nft_count(s->f, il, NF_TILE_EXPERT) / (uint32_t)X;
    int sel[NF_MAX_BATCH][64], left[NF_MAX_BATCH];
    float w[NF_MAX_BATCH][64];
    /* A row whose experts have all run is final before the others when nothing follows the
     * routed experts in this layer (no shared expert, no post-FFN norm): it goes to
     * src.row_done then, with its output summed at once (the same sums, in the same order). */
    const bool early = s->src.row_done && !s->ffn_post && !hp->n_ff_shexp;
    memset(s->row_pub, 0, sizeof(s->row_pub));
    for (int k = 0; k < n_tok; k++) {
        left[k] = K;
        nf_stream_route(s, il, k, sel[k], w[k]);
        for (int j = 0; j < K; j++)
            s->bits[sel[k][j] / 64] |= 1ull << (sel[k][j] % 64);
    }
    /* The union in run order: insertion by (tiles missing, index). At most n_tok * K experts
     * (a row's K choices are distinct). */
    uint32_t order[NF_MAX_BATCH * 64], miss[NF_MAX_BATCH * 64], n_run = 0;
    for (uint32_t e = 0; e < (uint32_t)X; e++) {
        if (!((s->bits[e / 64] >> (e % 64)) & 1))
            continue;
        const uint32_t m = nf_stream_expert_missing(s, il, e, per);
        uint32_t at = n_run++;
        for (; at > 0 && miss[at - 1] > m; at--) {
            order[at] = order[at - 1];
            miss[at] = miss[at - 1];
        }
        order[at] = e;
        miss[at] = m;
    }
    if (s->src.want) { /* the union's tiles, asked for at once in run order */
        uint32_t last = UINT32_MAX;
        for (uint32_t r = 0; r < n_run; r++) {
            const uint32_t e = order[r];
            for (uint32_t i = e * per; i < (e + 1) * per; i++) {
                if (last != UINT32_MAX)
                    s->src.want(s->src.ud, last, false);
                last = (uint32_t)nf_nft_tile_id(s->f, nf_nft_find(s->f, il, NF_TILE_EXPERT, i));
            }
        }
        if (last != UINT32_MAX)
            s->src.want(s->src.ud, last, true);
    }
    for (uint32_t r = 0; r < n_run; r++) {
        const uint32_t e = order[r];
        int rk[NF_MAX_BATCH], rj[NF_MAX_BATCH], m = 0;
        for (int k = 0; k < n_tok; k++)
            for (int j = 0; j < K; j++)
                if (sel[k][j] == (int)e) {
                    rk[m] = k;
                    rj[m] = j;
                    memcpy(s->mxn + (size_t)m++ * E, c->xn + (size_t)k * E, sizeof(float) * E);
                }
        if (s->slices) {
            rc =
                nf_stream_slices(s, il, NF_TILE_EXPERT, e * per, (e + 1) * per, s->mxn, s->mout, m);
            if (rc < 0)
                return rc;
        } else {
            rc = nf_stream_bundles(s, il, NF_TILE_EXPERT, e * per, (e + 1) * per, s->mxn, m);
            if (rc < 0)
                return rc;
            nf_ffn_act(hp, c->hb, c->hb2, m, hp->n_ff);
            nf_stream_down_mm(s, s->mout, c->hb, m);
        }
        for (int i = 0; i < m; i++)
            memcpy(s->meo + ((size_t)rk[i] * K + rj[i]) * E, s->mout + (size_t)i * E,
                   sizeof(float) * E);
        /* Rows whose last expert this was, while experts remain: final now (mxn is free until
         * the next expert). */
        for (int i = 0; early && r + 1 < n_run && i < m; i++) {
            const int k = rk[i];
            if (--left[k] > 0)
                continue;
            float *ot = c->ffo + (size_t)k * E, *xr = s->mxn;
            nf_moe_row_sum(ot, s->meo + (size_t)k * K * E, w[k], K, E);
            for (int j = 0; j < E; j++)
                xr[j] = c->x[(size_t)k * E + j] + ot[j];
            s->row_pub[k] = true;
            s->src.row_done(s->src.ud, il, (uint32_t)k, xr, E);
        }
    }
    for (int k = 0; k < n_tok; k++)
        if (!s->row_pub[k])
            nf_moe_row_sum(c->ffo + (size_t)k * E, s->meo + (size_t)k * K * E, w[k], K, E);
    nf_stream_report_used(s, il);
    return 0;
}

/* The shared expert, on every token: c->sh_out (n_tok, n_embd) = its FFN (the layer's FFN
 * tiles, run as the exact dense path) times the sigmoid of its gate (qwen2moe's SHEXP_GATE
 * tile; glm4moe's is ungated), as nf_moe_forward computes it. */
static int nf_stream_shexp(struct nf_stream *s, uint32_t il, int n_tok)
{
    struct nf_ctx *c = s->c;
    /* deepseek2's shared expert has no gate (no SHEXP_GATE tile). */
    const bool gated = nf_nft_count(s->f, il, NF_TILE_SHEXP_GATE) > 0;
    int rc = gated ? nf_stream_mm(s, c->sh_gate, il, NF_TILE_SHEXP_GATE, 1, c->xn, n_tok) : 0;
    if (rc < 0)
        return rc;
    const struct nf_nft_tile *t0 = nf_nft_find(s->f, il, NF_TILE_FFN, 0);
    const uint32_t n = nf_nft_count(s->f, il, NF_TILE_FFN);
    s->ff = s->shell.hp.n_ff_shexp;
    if (t0->type[3] != NF_SLICE_NONE) { /* an in-place index: row slices of the GGUF */
        if ((rc = nf_stream_slices(s, il, NF_TILE_FFN, 0, n, c->xn, c->ffo, n_tok)) < 0)
            return rc;
    } else {
        s->down_type = (enum nf_type)t0->type[2];
        s->down_row_size = nf_row_size(s->down_type, s->ff);
        if ((rc = nf_stream_bundles(s, il, NF_TILE_FFN, 0, n, c->xn, n_tok)) < 0)
            return rc;
        nf_swiglu(c->hb, c->hb2, n_tok, s->ff);
        nf_stream_down_mm(s, c->ffo, c->hb, n_tok);
    }
    if (gated)
        nf_shexp_gate(c, c->ffo, n_tok);
    else
        memcpy(c->sh_out, c->ffo, sizeof(float) * (size_t)n_tok * (size_t)s->shell.hp.n_embd);
    return 0;
}

/* deepseek2's latent attention block from its tiles, as nf_mla_forward: the q and kv
 * projections through nf_stream_mm, attn_k_b and attn_v_b a tile (whole heads) at a time. */
static int nf_stream_mla(struct nf_stream *s, uint32_t il, int pos0, int n_tok)
{
    struct nf_ctx *c = s->c;
    const struct nf_hparams *hp = &s->shell.hp;
    const size_t H = (size_t)hp->n_head, K = (size_t)hp->n_embd_head_k_mla;
    const size_t QA = (size_t)hp->n_lora_q, D = (size_t)hp->head_dim;
    int rc;
    if ((rc = nf_stream_norm(s, c->xn, c->x, il, NF_TILE_ATTN_NORM, n_tok)))
        return rc;
    if (QA) {
        if ((rc = nf_stream_mm(s, c->mla_qa, il, NF_TILE_ATTN_Q_A, QA, c->xn, n_tok)))
            return rc;
        for (int t = 0; t < n_tok; t++)
            nf_rmsnorm(c->mla_qa + (size_t)t * QA, c->mla_qa + (size_t)t * QA,
                       s->ext[il].q_a_norm.data, (int)QA, hp->rms_eps);
        rc = nf_stream_mm(s, c->mla_q, il, NF_TILE_ATTN_Q_B, H * K, c->mla_qa, n_tok);
    } else {
        rc = nf_stream_mm(s, c->mla_q, il, NF_TILE_ATTN_Q, H * K, c->xn, n_tok);
    }
    if (rc || (rc = nf_stream_mm(s, c->k, il, NF_TILE_ATTN_KV_A, D, c->xn, n_tok)))
        return rc;
    /* A batched step runs the per-row parts (RoPE and norm, attn_k_b / attn_v_b, attention
     * over the sequence's own latent cache) on each row's view, one token as its solo step
     * would; otherwise once on c for all n_tok tokens. */
    const int nv = s->batch ? n_tok : 1, nt = s->batch ? 1 : n_tok;
    for (int r = 0; r < nv; r++)
        nf_mla_prep(s->batch ? &s->views[r] : c, s->ext[il].kv_a_norm.data, nt);
    for (int part = 0; part < 2; part++) {
        const enum nf_tile_kind kind = part ? NF_TILE_ATTN_V_B : NF_TILE_ATTN_K_B;
        const uint32_t per = part ? (uint32_t)hp->n_embd_head_v_mla : (uint32_t)hp->n_lora_kv;
        for (int r = 0; part && r < nv; r++)
            nf_mla_attend_latent(s->batch ? &s->views[r] : c, (int)il,
                                 s->batch ? s->views[r].n_past : pos0, nt);
        for (uint32_t i = 0, n = nf_nft_count(s->f, il, kind); i < n; i++) {
            const struct nf_nft_tile *t = nf_nft_find(s->f, il, kind, i);
            const uint8_t *p = nf_stream_pin(s, t, &rc);
            if (!p)
                return rc;
            struct nf_tensor v = nf_rows_view(t, p); /* whole heads (nf_stream_check_mla) */
            v.ne[1] = per;
            v.ne[2] = t->count / per;
            for (int r = 0; r < nv; r++) {
                struct nf_ctx *cr = s->batch ? &s->views[r] : c;
                if (part)
                    nf_mla_values(cr, &v, (int)(t->first / per), nt);
                else
                    nf_mla_absorb(cr, &v, (int)(t->first / per), nt);
            }
            nf_stream_unpin(s, t);
        }
    }
    if ((rc = nf_stream_mm(s, c->ffo, il, NF_TILE_ATTN_O, (size_t)hp->n_embd, c->mla_att, n_tok)))
        return rc;
    for (size_t i = 0; i < (size_t)n_tok * (size_t)hp->n_embd; i++)
        c->x[i] += c->ffo[i];
    return 0;
}

/* --- the KV cache on disk (kv_file.h) ------------------------------------------------------ */

/* The slot of row r of the running eval (one slot outside a batched step). */
static int nf_stream_kv_slot(const struct nf_stream *s, int r)
{
    return s->batch ? s->kv_rows[r] : s->kv_slot;
}

/* The attention walk's kv_need (model.h) for c, the engine's context or a batched step's row
 * view: block b of the row's slot resident (kv_file.h), at *base. */
/* The tile id of block b of kind of layer il of slot (nf_tile_src_kv). */
static uint32_t nf_stream_kv_id(const struct nf_stream *s, int slot, int il, int kind, int b)
{
    return s->src.kv->first +
           (uint32_t)(((slot * s->shell.hp.n_layer + il) * 2 + kind) * s->kv_n_blk + b);
}

/* Releases the KV tiles the walk holds. */
static void nf_stream_kv_unpin(struct nf_stream *s)
{
    for (int k = 0; k < 2; k++)
        if (s->kv_pinned[k] != NF_STREAM_NO_KV) {
            s->src.unpin(s->src.ud, s->kv_pinned[k]);
            s->kv_pinned[k] = NF_STREAM_NO_KV;
        }
}

/* Marks the blocks of slot whose durability changed since the last call (every layer, or
 * layer il when il >= 0): those that became durable, and those a rollback or a reset is to
 * rewrite (a new generation: a copy read before is never pinned). */
static void nf_stream_kv_mark(struct nf_stream *s, int slot, int il)
{
    if (!s->kv_tiles)
        return;
    const int n_layer = s->shell.hp.n_layer;
    for (int l = il < 0 ? 0 : il; l < (il < 0 ? n_layer : il + 1); l++) {
        int *pub = &s->kv_pub[slot * n_layer + l];
        const int nb = nf_kv_file_durable_blocks(s->kvf, slot, l);
        for (int b = *pub; b < nb; b++)
            for (int k = 0; k < 2; k++)
                s->src.kv->mark(s->src.ud, nf_stream_kv_id(s, slot, l, k, b), true);
        for (int b = nb; b < *pub; b++)
            for (int k = 0; k < 2; k++)
                s->src.kv->mark(s->src.ud, nf_stream_kv_id(s, slot, l, k, b), false);
        *pub = nb;
    }
}

static int nf_stream_kv_need(void *ud, const struct nf_ctx *c, int il, int kind, int b, int b_end,
                             const void **base)
{
    struct nf_stream *s = ud;
    const int slot = c == s->c ? s->kv_slot : nf_stream_kv_slot(s, (int)(c - s->views));
    if (s->kv_tiles && b < nf_kv_file_durable_blocks(s->kvf, slot, il)) {
        /* A durable block: its tile, pinned until the walk's next block of the kind. */
        const uint32_t id = nf_stream_kv_id(s, slot, il, kind, b);
        if (s->kv_pinned[kind] != NF_STREAM_NO_KV) {
            s->src.unpin(s->src.ud, s->kv_pinned[kind]);
            s->kv_pinned[kind] = NF_STREAM_NO_KV;
        }
        int rc = 0;
        const uint8_t *p = s->src.kv->pin(s->src.ud, id, &rc);
        if (!p) {
            snprintf(s->err, sizeof(s->err), "KV tile of layer %d %s block %d: %s", il,
                     kind ? "V" : "K", b, nf_strerror(rc < 0 ? rc : -EIO));
            return rc < 0 ? rc : -EIO;
        }
        s->kv_pinned[kind] = id;
        *base = p;
        /* The block `ahead` blocks further along the walk (the layer's K blocks, then its V
         * blocks): its read starts now, so that as many are on their way. */
        const int nb = nf_kv_file_durable_blocks(s->kvf, slot, il), j = b + s->src.kv->ahead;
        if (s->src.want && (j < nb || (kind == 0 && j - nb < nb)))
            s->src.want(s->src.ud,
                        j < nb ? nf_stream_kv_id(s, slot, il, kind, j)
                               : nf_stream_kv_id(s, slot, il, 1, j - nb),
                        true);
        return 1;
    }
    int n = nf_kv_file_need(s->kvf, slot, il, kind, b, b_end, base);
    if (n < 0)
        snprintf(s->err, sizeof(s->err), "%s", nf_kv_file_error(s->kvf));
    return n;
}

/* Before layer il's attention: the reads of its first blocks (and those after them) issued,
 * for every row's slot, while the norm and Q, K, V products run; for a prompt chunk that reads
 * its layer whole (s->kv_whole), the reads of the whole layer (nf_stream_kv_whole waits). */
static int nf_stream_kv_load(struct nf_stream *s, uint32_t il, int n_tok)
{
    const int nr = s->batch ? n_tok : 1;
    s->c->kv_err = 0;
    s->c->kv_whole = s->kv_whole && !s->batch && n_tok >= 2;
    for (int r = 0; s->batch && r < n_tok; r++) {
        s->views[r].kv_err = 0;
        s->views[r].kv_whole = false;
    }
    if (s->c->kv_whole) { /* (a failed read is seen again by the load that waits) */
        nf_kv_file_layer_prefetch(s->kvf, s->kv_slot, (int)il);
        return 0;
    }
    for (int r = 0; r < nr && s->kv_tiles && s->src.want; r++) { /* the walk's first blocks */
        const int slot = nf_stream_kv_slot(s, r);
        const int nb = nf_kv_file_durable_blocks(s->kvf, slot, (int)il);
        for (int b = 0; b < nb && b < s->src.kv->ahead; b++)
            s->src.want(s->src.ud, nf_stream_kv_id(s, slot, (int)il, 0, b),
                        b + 1 == nb || b + 1 == s->src.kv->ahead);
    }
    for (int r = 0; r < nr && !s->kv_tiles; r++) {
        int rc = nf_kv_file_walk_prefetch(s->kvf, nf_stream_kv_slot(s, r), (int)il);
        if (rc < 0) {
            snprintf(s->err, sizeof(s->err), "%s", nf_kv_file_error(s->kvf));
            return rc;
        }
    }
    return 0;
}

/* Before a prompt chunk's attention over its whole layer: waits for the layer's reads. */
static int nf_stream_kv_whole(struct nf_stream *s, uint32_t il)
{
    int rc = nf_kv_file_layer_load(s->kvf, s->kv_slot, (int)il);
    if (rc < 0)
        snprintf(s->err, sizeof(s->err), "%s", nf_kv_file_error(s->kvf));
    return rc;
}

/* The error an attention walk of layer il left in the context or the row views. */
static int nf_stream_kv_err(struct nf_stream *s, int n_tok)
{
    int rc = s->c->kv_err;
    for (int r = 0; s->batch && r < n_tok && rc == 0; r++)
        rc = s->views[r].kv_err;
    return rc;
}

/* After layer il's attention stored its rows: write-behind of the blocks that filled up. */
static int nf_stream_kv_store(struct nf_stream *s, uint32_t il, int pos0, int n_tok)
{
    const int nr = s->batch ? n_tok : 1;
    nf_stream_kv_unpin(s); /* the layer's walk is over */
    int rc0 = nf_stream_kv_err(s, n_tok);
    if (rc0 < 0)
        return rc0; /* (s->err says which read) */
    for (int r = 0; r < nr; r++) {
        const int end = s->batch ? s->views[r].n_past + 1 : pos0 + n_tok;
        int rc = nf_kv_file_layer_store(s->kvf, nf_stream_kv_slot(s, r), (int)il, end);
        if (rc < 0) {
            snprintf(s->err, sizeof(s->err), "%s", nf_kv_file_error(s->kvf));
            return rc;
        }
        nf_stream_kv_mark(s, nf_stream_kv_slot(s, r), (int)il);
    }
    if (s->kv_tiles && s->src.kv->walked) {
        /* The slots whose tiles this eval's walks visit, in the walk's order. */
        int slots[NF_MAX_BATCH];
        const int n = s->c->kv_whole ? 0 : nr;
        for (int r = 0; r < n; r++)
            slots[r] = nf_stream_kv_slot(s, r);
        s->src.kv->walked(s->src.ud, il, slots, n);
    }
    return 0;
}

/* Puts the engine's caches (c's, then each slot's past the first) in kv's reserved range:
 * the in-RAM buffers nf_ctx_create and nf_kv_slots_create allocated are given back untouched. */
static void nf_stream_kv_bind(struct nf_stream *s, int first, int n)
{
    for (int i = first; i < n; i++) {
        void **k = i ? &s->slots[i].k_cache : &s->c->k_cache;
        void **v = i ? &s->slots[i].v_cache : &s->c->v_cache;
        free(*k);
        free(*v);
        *k = nf_kv_file_k(s->kvf, i);
        *v = nf_kv_file_v(s->kvf, i);
    }
}

/* Opens the KV file of o->kv_path for max(1, n_seq) slots and binds c's cache to slot 0. The
 * file's rows are the cache's, of c's element types (nf_ctx_set_kv_types ran before): f16
 * halves or q8_0 / q4_0 blocks, bytes to the file. */
static int nf_stream_kv_open(struct nf_stream *s, const struct nf_stream_opts *o, char *err,
                             size_t errlen)
{
    const struct nf_hparams *hp = &s->shell.hp;
    const int kvd = hp->n_head_kv * hp->head_dim;
    const struct nf_kv_file_opts ko = {.path = o->kv_path,
                                       .n_layer = hp->n_layer,
                                       .n_ctx = o->n_ctx,
                                       .n_slots = o->n_seq > 1 ? o->n_seq : 1,
                                       .block = o->kv_block > 0 ? o->kv_block : NF_KV_BLOCK,
                                       .window = o->kv_window,
                                       .row_k = nf_kv_row_bytes(s->c->type_k, kvd),
                                       .row_v =
                                           hp->n_lora_kv ? 0 : nf_kv_row_bytes(s->c->type_v, kvd)};
    int rc = nf_kv_file_open(&s->kvf, &ko, err, errlen);
    if (rc < 0)
        return rc;
    /* Prompt chunks read their layer whole when it is small enough (deepseek2's latent
     * attention has its own whole-layer reads); then only single-token steps walk, and the
     * walk's scratch is sized for them. */
    const uint64_t whole = o->kv_prompt_walk || hp->n_lora_kv
                               ? 0
                               : nf_kv_file_prompt_layer(o->n_ctx, ko.row_k + ko.row_v);
    s->kv_whole = whole > 0;
    /* The pool's KV tiles when the source has them for exactly this file's blocks. */
    const struct nf_tile_src_kv *sk = s->src.kv;
    s->kv_pinned[0] = s->kv_pinned[1] = NF_STREAM_NO_KV;
    s->kv_n_blk = (o->n_ctx + ko.block - 1) / ko.block;
    s->kv_tiles = sk && sk->pin && sk->mark && sk->ahead >= 1 && sk->n_slots == ko.n_slots &&
                  sk->n_ctx == ko.n_ctx && sk->block == ko.block && sk->row_k == ko.row_k &&
                  sk->row_v == ko.row_v && ko.row_v > 0;
    if (s->kv_tiles &&
        !(s->kv_pub = calloc((size_t)ko.n_slots * (size_t)hp->n_layer, sizeof(*s->kv_pub))))
        return nf_errf(err, errlen, -ENOMEM, "kv file: out of memory");
    const int walk_ub = s->kv_whole ? 1 : s->c->n_ubatch;
    if ((rc = nf_attn_walk_init(s->c, ko.block, walk_ub, nf_stream_kv_need, s)) < 0)
        return nf_errf(err, errlen, rc, "kv file: no memory for the attention walk");
    s->mem += nf_attn_walk_bytes(hp, o->n_ctx, walk_ub, nf_ctx_kv_bytes(s->c));
    /* The resident KV replaces the whole cache in the engine's memory count. */
    s->mem -= nf_ctx_kv_bytes(s->c);
    /* (With the pool's tiles the window's blocks are the pool's.) */
    s->mem += whole + (s->kv_tiles ? nf_kv_file_newest_bound : nf_kv_file_resident_bound)(
                          hp->n_layer, o->n_ctx, ko.n_slots, ko.block, ko.row_k + ko.row_v);
    nf_stream_kv_bind(s, 0, 1);
    return 0;
}

/* --- the forward pass -------------------------------------------------------------------- */

static int nf_stream_layer(struct nf_stream *s, uint32_t il, int pos0, int n_tok, bool want_logits)
{
    struct nf_ctx *c = s->c;
    const struct nf_hparams *hp = &s->shell.hp;
    const size_t E = (size_t)hp->n_embd;
    const size_t qd = (size_t)hp->n_head * hp->head_dim, kvd = (size_t)hp->n_head_kv * hp->head_dim;
    int rc;
    if (s->sparsity > 0 && !hp->n_expert && s->src.want &&
        ((int)il < hp->n_layer - 1 || want_logits)) {
        /* The layer's predictor tile is pinned right after attention: its read overlaps the
         * attention (the predictor daemon prefetches attention and FFN tiles, not this). */
        const struct nf_nft_tile *pt = nf_nft_predictor(s->f, il);
        if (pt)
            s->src.want(s->src.ud, (uint32_t)nf_nft_tile_id(s->f, pt), true);
    }
    if (s->kvf && (rc = nf_stream_kv_load(s, il, n_tok)) < 0)
        return rc;
    if (hp->n_lora_kv) {
        if ((rc = nf_stream_mla(s, il, pos0, n_tok)) ||
            (s->kvf && (rc = nf_stream_kv_store(s, il, pos0, n_tok)) < 0))
            return rc;
        goto ffn;
    }
    if ((rc = nf_stream_norm(s, c->xn, c->x, il, NF_TILE_ATTN_NORM, n_tok)) ||
        (rc = nf_stream_mm(s, c->q, il, NF_TILE_ATTN_Q, qd, c->xn, n_tok)) ||
        (rc = nf_stream_mm(s, c->k, il, NF_TILE_ATTN_K, kvd, c->xn, n_tok)) ||
        (rc = nf_stream_mm(s, c->v, il, NF_TILE_ATTN_V, kvd, c->xn, n_tok)))
        return rc;
    if (s->ext)
        nf_attn_qk(c, &s->ext[il], n_tok);
    c->attn_sinks = s->ext ? s->ext[il].sinks.data : NULL; /* gpt-oss */
    if (s->batch) /* each row over its own sequence's cache */
        for (int r = 0; r < n_tok; r++) {
            s->views[r].attn_sinks = c->attn_sinks;
            nf_attn_core(&s->views[r], (int)il, s->views[r].n_past, 1);
        }
    else {
        if (c->kv_whole && (rc = nf_stream_kv_whole(s, il)) < 0)
            return rc;
        nf_attn_core(c, (int)il, pos0, n_tok);
    }
    if (s->kvf && (rc = nf_stream_kv_store(s, il, pos0, n_tok)) < 0)
        return rc;
    if ((rc = nf_stream_mm(s, c->ffo, il, NF_TILE_ATTN_O, E, c->att, n_tok)))
        return rc;
    if (s->ext) /* gpt-oss's attn_output.bias (nothing without one) */
        nf_add_bias(c->ffo, &s->ext[il].bo, 0, n_tok);
    if (s->ext) /* gemma3's post_attention_norm (nothing without one) */
        nf_post_norm(c, c->ffo, &s->ext[il].post_norm, n_tok);
    for (size_t i = 0; i < (size_t)n_tok * E; i++)
        c->x[i] += c->ffo[i];
ffn:;
    int n_ffn = n_tok;
    if ((int)il == hp->n_layer - 1 && !s->batch && !s->row_logits) {
        /* As nf_eval_chunk: past the last attention only the last token's row is needed (in a
         * batched step every row is a sequence's last token; a per-row pass needs them all). */
        if (!want_logits)
            return 0;
        memmove(c->x, c->x + (size_t)(n_tok - 1) * E, sizeof(float) * E);
        n_ffn = 1;
    }
    if ((rc = nf_stream_norm(s, c->xn, c->x, il, NF_TILE_FFN_NORM, n_ffn)))
        return rc;
    /* A MoE model's layer has experts unless it is one of the leading dense layers (glm4moe,
     * deepseek2), which run a dense FFN of their own width. */
    const bool moe = hp->n_expert && !nf_layer_dense(hp, (int)il);
    const int F = nf_layer_n_ff(hp, (int)il);
    if (moe && hp->n_ff_shexp && (rc = nf_stream_shexp(s, il, n_ffn)) < 0)
        return rc;
    /* The layer's group size and ffn_down type (they may differ between layers). */
    const struct nf_nft_tile *t0 = nf_nft_find(s->f, il, moe ? NF_TILE_EXPERT : NF_TILE_FFN, 0);
    s->group = (int)t0->group;
    s->slices = t0->type[3] != NF_SLICE_NONE;
    s->n_groups = moe         ? (uint32_t)hp->n_expert
                  : s->slices ? nf_nft_count(s->f, il, NF_TILE_FFN) /* one unit a tile */
                              : (uint32_t)F / t0->group;
    s->down_type = (enum nf_type)t0->type[2];
    s->down_row_size = nf_row_size(s->down_type, F);
    s->ff = F;
    if (moe)
        rc = s->batch ? nf_stream_moe_batch(s, il, n_ffn) : nf_stream_moe(s, il, n_ffn);
    else if (s->sparsity > 0 && !hp->n_expert)
        rc = nf_stream_ffn_sparse(s, il, n_ffn);
    else
        rc = nf_stream_ffn_exact(s, il, n_ffn);
    if (rc < 0)
        return rc;
    if (s->ffn_post) /* gemma3's post_ffw_norm */
        nf_post_norm(c, c->ffo, &s->ffn_post[il], n_ffn);
    if (moe && hp->n_ff_shexp) /* as nf_moe_forward: moe_out + ffn_shexp_out */
        for (size_t i = 0; i < (size_t)n_ffn * E; i++)
            c->ffo[i] += c->sh_out[i];
    for (size_t i = 0; i < (size_t)n_ffn * E; i++)
        c->x[i] += c->ffo[i];
    if (s->batch && s->src.row_done)
        for (int r = 0; r < n_ffn; r++)
            if (!s->row_pub[r])
                s->src.row_done(s->src.ud, il, (uint32_t)r, c->x + (size_t)r * E, hp->n_embd);
    memset(s->row_pub, 0, sizeof(s->row_pub));
    if (s->src.layer_done)
        s->src.layer_done(s->src.ud, il, c->x + (size_t)(n_ffn - 1) * E, hp->n_embd);
    return 0;
}

static int nf_stream_embed(struct nf_stream *s, const int32_t *tokens, int n_tok)
{
    const int E = s->shell.hp.n_embd;
    for (int k = 0; k < n_tok; k++) {
        size_t off;
        const struct nf_nft_tile *t = nf_nft_embd_row(s->f, (uint32_t)tokens[k], &off);
        int rc;
        const uint8_t *p = nf_stream_pin(s, t, &rc);
        if (!p)
            return rc;
        float *x = s->c->x + (size_t)k * E;
        nf_type_traits((enum nf_type)t->type[0])->to_float(p + off, x, E);
        nf_stream_unpin(s, t);
        if (s->shell.hp.embd_scale) /* gemma3, as nf_eval_chunk */
            for (int i = 0; i < E; i++)
                x[i] *= s->shell.hp.embd_scale;
    }
    return 0;
}

static int nf_stream_chunk(struct nf_stream *s, const int32_t *tokens, int n_tok, bool want_logits)
{
    struct nf_ctx *c = s->c;
    const struct nf_hparams *hp = &s->shell.hp;
    nf_stream_threads(s, n_tok);
    int rc = nf_stream_embed(s, tokens, n_tok);
    if (rc < 0)
        return rc;
    const int pos0 = c->n_past;
    nf_rope_cache(c, pos0, n_tok);
    for (uint32_t il = 0; il < (uint32_t)hp->n_layer; il++) {
        if (s->abort && atomic_load(s->abort)) {
            snprintf(s->err, sizeof(s->err), "evaluation cancelled");
            return -ECANCELED;
        }
        if ((rc = nf_stream_layer(s, il, pos0, n_tok, want_logits)))
            return rc;
        /* A chunk larger than the default one (up -ub) can take minutes through a capped pool:
         * it reports after each layer too, so that clients waiting for a sign of life do not
         * give up. */
        const int part = (int)((int64_t)n_tok * (il + 1) / hp->n_layer);
        if (s->progress && n_tok > NF_MAX_BATCH && il + 1 < (uint32_t)hp->n_layer &&
            part > (int)((int64_t)n_tok * il / hp->n_layer))
            s->progress(s->progress_ud, s->prog_done + part, s->prog_total);
    }
    c->n_past += n_tok;
    if (s->row_logits) { /* a per-row pass: every token's logits */
        if ((rc = nf_stream_norm(s, c->xn, c->x, NF_NFT_NO_LAYER, NF_TILE_OUTPUT_NORM, n_tok)))
            return rc;
        return nf_stream_mm(s, s->row_logits, NF_NFT_NO_LAYER,
                            s->f->hdr.tied_output ? NF_TILE_EMBD : NF_TILE_OUTPUT,
                            (size_t)hp->n_vocab, c->xn, n_tok);
    }
    if (!want_logits)
        return 0;
    if ((rc = nf_stream_norm(s, c->xn, c->x, NF_NFT_NO_LAYER, NF_TILE_OUTPUT_NORM, 1)))
        return rc;
    return nf_stream_mm(s, c->logits, NF_NFT_NO_LAYER,
                        s->f->hdr.tied_output ? NF_TILE_EMBD : NF_TILE_OUTPUT, (size_t)hp->n_vocab,
                        c->xn, 1);
}

/* The checks of an eval of n tokens: 0, or NF_ECTXFULL / NF_EUSAGE with s->err set. */
static int nf_stream_eval_check(struct nf_stream *s, const int32_t *tokens, int n)
{
    const struct nf_ctx *c = s->c;
    s->err[0] = 0;
    if (n < 1)
        return NF_EUSAGE;
    if (n > c->n_ctx - c->n_past) {
        snprintf(s->err, sizeof(s->err), "%d tokens do not fit: %d of %d positions used", n,
                 c->n_past, c->n_ctx);
        return NF_ECTXFULL;
    }
    for (int i = 0; i < n; i++)
        if (tokens[i] < 0 || tokens[i] >= s->shell.hp.n_vocab) {
            snprintf(s->err, sizeof(s->err), "token id %d outside the vocabulary [0, %d)",
                     tokens[i], s->shell.hp.n_vocab);
            return NF_EUSAGE;
        }
    return 0;
}

/* The size of the chunk at token i of n: the ubatch, or with rest (nf_stream_slot_eval_rest) a
 * chunk of two tokens or more, but the last token alone when a cold evaluation of the whole
 * prompt (n_past + n tokens from position 0) evaluates it alone. */
static int nf_stream_chunk_size(const struct nf_stream *s, int i, int n, bool rest)
{
    const int ub = s->ub;
    if (!rest || ub == 1)
        return n - i < ub ? n - i : ub;
    const int body = n - ((s->c->n_past + n) % ub == 1);
    const int left = body - i;
    if (left <= 0)
        return 1; /* the cold run's last chunk of one token */
    if (left <= ub)
        return left;
    return left - ub == 1 ? ub - 1 : ub; /* ub + 1 left: ub - 1, then 2 */
}

/* nf_stream_eval; with rest, the chunks of nf_stream_slot_eval_rest. */
static int nf_stream_eval_chunks(struct nf_stream *s, const int32_t *tokens, int n, bool rest)
{
    const int bad = nf_stream_eval_check(s, tokens, n);
    if (bad < 0)
        return bad;
    /* One chunk per ubatch: each tile is pinned once for all its tokens. */
    for (int i = 0; i < n;) {
        const int nb = nf_stream_chunk_size(s, i, n, rest);
        s->prog_done = i;
        s->prog_total = n;
        int rc = nf_stream_chunk(s, tokens + i, nb, i + nb == n);
        if (rc < 0)
            return rc;
        i += nb;
        if (s->progress && n > s->ub)
            s->progress(s->progress_ud, i, n);
    }
    return 0;
}

int nf_stream_eval(struct nf_stream *s, const int32_t *tokens, int n)
{
    return nf_stream_eval_chunks(s, tokens, n, false);
}

int nf_stream_eval_rows(struct nf_stream *s, const int32_t *tokens, int n, float *logits)
{
    struct nf_ctx *c = s->c;
    const size_t V = (size_t)s->shell.hp.n_vocab;
    int rc = nf_stream_eval_check(s, tokens, n);
    if (rc < 0)
        return rc;
    c->per_row = true;
    /* Chunks of the ubatch, as nf_stream_eval: the (ub, ...) buffers hold that many rows. */
    for (int i = 0; i < n && rc == 0; i += s->ub) {
        const int nb = n - i < s->ub ? n - i : s->ub;
        s->prog_done = i;
        s->prog_total = n;
        s->row_logits = logits + (size_t)i * V;
        rc = nf_stream_chunk(s, tokens + i, nb, true);
    }
    c->per_row = false;
    s->row_logits = NULL;
    if (rc == 0) /* the last row is also what nf_stream_eval would have left */
        memcpy(c->logits, logits + (size_t)(n - 1) * V, sizeof(float) * V);
    return rc;
}

int nf_stream_rollback(struct nf_stream *s, int n_past)
{
    if (s->kvf && n_past >= 0 && n_past <= s->c->n_past) {
        int rc = nf_kv_file_rollback(s->kvf, s->kv_slot, n_past);
        nf_stream_kv_mark(s, s->kv_slot, -1);
        if (rc < 0)
            return rc;
    }
    return nf_ctx_rollback(s->c, n_past);
}

/* --- several sequences -------------------------------------------------------------------- */

int nf_stream_set_slots(struct nf_stream *s, int n, char *err, size_t errlen)
{
    const struct nf_hparams *hp = &s->shell.hp;
    if (s->slots || n < 1 || n > NF_MAX_BATCH)
        return nf_errf(err, errlen, NF_EUSAGE, "stream: %d sequences, expected 1..%d (once)", n,
                       NF_MAX_BATCH);
    if (n > s->rows)
        return nf_errf(err, errlen, NF_EUSAGE,
                       "stream: %d sequences, but its buffers hold %d rows (nf_stream_opts n_seq)",
                       n, s->rows);
    const size_t E = (size_t)hp->n_embd, K = (size_t)(hp->n_expert_used ? hp->n_expert_used : 1);
    /* A step has at most n rows. */
    const size_t N = (size_t)n;
    if (s->kvf && n > nf_kv_file_n_slots(s->kvf))
        return nf_errf(err, errlen, NF_EUSAGE,
                       "stream: %d sequences, but the KV file holds %d (nf_stream_opts n_seq)", n,
                       nf_kv_file_n_slots(s->kvf));
    int rc = nf_kv_slots_create(&s->slots, s->c, n);
    if (rc == 0)
        s->n_slots = n;    /* nf_stream_free releases them from here on */
    if (rc == 0 && s->kvf) /* (slot 0 borrows c's, bound already) */
        nf_stream_kv_bind(s, 1, n);
    s->views = calloc(N, sizeof(*s->views));
    s->blogits = malloc(sizeof(float) * N * (size_t)hp->n_vocab);
    if (hp->n_expert) {
        s->mxn = malloc(sizeof(float) * N * E);
        s->mout = malloc(sizeof(float) * N * E);
        s->meo = malloc(sizeof(float) * N * K * E);
    }
    if (rc < 0 || !s->views || !s->blogits || (hp->n_expert && (!s->mxn || !s->mout || !s->meo)))
        return nf_errf(err, errlen, -ENOMEM, "out of memory for %d sequences' KV caches", n);
    /* (with the KV file, a slot's cache is in its resident bound already: its logits only) */
    const size_t slot_bytes = nf_kv_slot_bytes(s->c) - (s->kvf ? nf_ctx_kv_bytes(s->c) : 0);
    s->mem += (uint64_t)(n - 1) * slot_bytes + sizeof(*s->views) * N +
              sizeof(float) * N * ((size_t)hp->n_vocab + (hp->n_expert ? (2 + K) * E : 0));
    return 0;
}

int nf_stream_n_slots(const struct nf_stream *s)
{
    return s->n_slots;
}

void nf_stream_slot_reset(struct nf_stream *s, int i)
{
    NF_ASSERT(i >= 0 && i < s->n_slots);
    if (s->kvf) {
        nf_kv_file_reset(s->kvf, i);
        nf_stream_kv_mark(s, i, -1);
    }
    s->slots[i].n_past = 0;
}

static int nf_stream_slot_eval_chunks(struct nf_stream *s, int i, const int32_t *tokens, int n,
                                      bool rest)
{
    NF_ASSERT(i >= 0 && i < s->n_slots);
    nf_ctx_bind(s->c, &s->slots[i]);
    s->kv_slot = i;
    int rc = nf_stream_eval_chunks(s, tokens, n, rest);
    s->kv_slot = 0;
    s->slots[i].n_past = s->c->n_past;
    nf_ctx_bind(s->c, &s->slots[0]);
    return rc;
}

int nf_stream_slot_eval(struct nf_stream *s, int i, const int32_t *tokens, int n)
{
    return nf_stream_slot_eval_chunks(s, i, tokens, n, false);
}

int nf_stream_slot_eval_rest(struct nf_stream *s, int i, const int32_t *tokens, int n)
{
    return nf_stream_slot_eval_chunks(s, i, tokens, n, true);
}

int nf_stream_prefix_kept(int n, int ub)
{
    return n - (ub > 1 && n % ub == 1);
}

int nf_stream_prefix_usable(int l, int n, int ub)
{
    l = l < n - 1 ? l : n - 1;
    if (l < 0)
        return 0;
    /* nf_stream_slot_eval_rest evaluates the tokens from l in chunks of two or more, but the
     * last alone when a cold run's last chunk has one token: one token before that (or two
     * chunks of two and one with a ubatch of 2) would take the one-token kernels where the cold
     * run's chunk has more; one position fewer is reused instead. */
    if (ub > 1) {
        const int body = n - l - (n % ub == 1);
        if (body == 1 || (ub == 2 && body % 2 == 1))
            l--;
    }
    return l < 0 ? 0 : l;
}

int nf_stream_slot_eval_rows(struct nf_stream *s, int i, const int32_t *tokens, int n,
                             float *logits)
{
    NF_ASSERT(i >= 0 && i < s->n_slots);
    nf_ctx_bind(s->c, &s->slots[i]);
    s->kv_slot = i;
    int rc = nf_stream_eval_rows(s, tokens, n, logits);
    s->kv_slot = 0;
    s->slots[i].n_past = s->c->n_past;
    nf_ctx_bind(s->c, &s->slots[0]);
    return rc;
}

int nf_stream_slot_rollback(struct nf_stream *s, int i, int n_past)
{
    NF_ASSERT(i >= 0 && i < s->n_slots);
    if (n_past < 0 || n_past > s->slots[i].n_past)
        return NF_EUSAGE;
    if (s->kvf) {
        int rc = nf_kv_file_rollback(s->kvf, i, n_past);
        nf_stream_kv_mark(s, i, -1);
        if (rc < 0)
            return rc;
    }
    s->slots[i].n_past = n_past; /* as nf_ctx_rollback: later cells are never read */
    return 0;
}

size_t nf_stream_kv_row_bytes(const struct nf_stream *s, int which)
{
    const struct nf_hparams *hp = &s->shell.hp;
    const int kvd = hp->n_head_kv * hp->head_dim;
    if (which == 0)
        return nf_kv_row_bytes(s->c->type_k, kvd);
    return hp->n_lora_kv ? 0 : nf_kv_row_bytes(s->c->type_v, kvd);
}

void *nf_stream_slot_kv_rows(struct nf_stream *s, int i, int il, int which)
{
    NF_ASSERT(i >= 0 && i < s->n_slots);
    const size_t row = nf_stream_kv_row_bytes(s, which);
    char *base = which ? s->slots[i].v_cache : s->slots[i].k_cache;
    if (s->kvf || !row || !base || il < 0 || il >= s->shell.hp.n_layer)
        return NULL;
    return base + (size_t)il * (size_t)s->c->n_ctx * row;
}

int nf_stream_slot_kv_filled(struct nf_stream *s, int i, int n)
{
    NF_ASSERT(i >= 0 && i < s->n_slots);
    if (s->kvf || n < 0 || n > s->c->n_ctx)
        return NF_EUSAGE;
    s->slots[i].n_past = n;
    return 0;
}

const float *nf_stream_slot_logits(const struct nf_stream *s, int i)
{
    NF_ASSERT(i >= 0 && i < s->n_slots);
    return s->slots[i].logits;
}

int nf_stream_slot_n_past(const struct nf_stream *s, int i)
{
    NF_ASSERT(i >= 0 && i < s->n_slots);
    return s->slots[i].n_past;
}

/* Checks a step's rows: distinct valid slots with room, tokens in the vocabulary. */
static int nf_stream_step_check(struct nf_stream *s, const int *idx, const int32_t *toks, int n)
{
    if (n < 1 || n > s->n_slots) {
        snprintf(s->err, sizeof(s->err), "a step of %d sequences, expected 1..%d", n, s->n_slots);
        return NF_EUSAGE;
    }
    for (int r = 0; r < n; r++) {
        bool dup = false;
        for (int q = 0; q < r; q++)
            dup |= idx[q] == idx[r];
        if (idx[r] < 0 || idx[r] >= s->n_slots || dup) {
            snprintf(s->err, sizeof(s->err), "slot %d is out of range or repeated", idx[r]);
            return NF_EUSAGE;
        }
        if (toks[r] < 0 || toks[r] >= s->shell.hp.n_vocab) {
            snprintf(s->err, sizeof(s->err), "token id %d outside the vocabulary [0, %d)", toks[r],
                     s->shell.hp.n_vocab);
            return NF_EUSAGE;
        }
        if (s->slots[idx[r]].n_past >= s->c->n_ctx) {
            snprintf(s->err, sizeof(s->err), "slot %d: its %d positions are used", idx[r],
                     s->c->n_ctx);
            return NF_ECTXFULL;
        }
    }
    return 0;
}

int nf_stream_step(struct nf_stream *s, const int *idx, const int32_t *toks, int n)
{
    struct nf_ctx *c = s->c;
    const struct nf_hparams *hp = &s->shell.hp;
    s->err[0] = 0;
    int rc = nf_stream_step_check(s, idx, toks, n);
    if (rc < 0)
        return rc;
    /* A batched step runs on the one-token count too: its products are a tile's few hundred
     * rows times n rows, too little work per dispatch for a second thread to pay for its
     * wake-ups beside the fetcher (the 7B's 8 sequences in 1 GiB measured 5.1-5.2 aggregate
     * tok/s on two threads, 6.4 on one: docs/measurements.md). */
    nf_threadpool_limit(s->c->pool, s->n_threads_one);
    if ((rc = nf_stream_embed(s, toks, n)) < 0)
        return rc;
    for (int r = 0; r < n; r++) {
        s->kv_rows[r] = idx[r];
        nf_ctx_row_view(&s->views[r], c, r, &s->slots[idx[r]]);
        nf_rope_cache(&s->views[r], s->views[r].n_past, 1);
    }
    s->batch = n;
    for (uint32_t il = 0; il < (uint32_t)hp->n_layer && rc == 0; il++) {
        if (s->abort && atomic_load(s->abort)) {
            snprintf(s->err, sizeof(s->err), "evaluation cancelled");
            rc = -ECANCELED;
        } else {
            rc = nf_stream_layer(s, il, 0, n, true);
        }
    }
    if (rc == 0)
        rc = nf_stream_norm(s, c->xn, c->x, NF_NFT_NO_LAYER, NF_TILE_OUTPUT_NORM, n);
    if (rc == 0)
        rc = nf_stream_mm(s, s->blogits, NF_NFT_NO_LAYER,
                          s->f->hdr.tied_output ? NF_TILE_EMBD : NF_TILE_OUTPUT,
                          (size_t)hp->n_vocab, c->xn, n);
    s->batch = 0;
    if (rc < 0)
        return rc;
    for (int r = 0; r < n; r++) {
        struct nf_kv_slot *sl = &s->slots[idx[r]];
        memcpy(sl->logits, s->blogits + (size_t)r * hp->n_vocab, sizeof(float) * hp->n_vocab);
        sl->n_past++;
    }
    return 0;
}

/* --- creation: every tile the forward pass uses is checked once here ----------------------- */

/* Checks that the tiles of (layer, kind) cover rows [0, rows) in order with rows of ne0
 * computable elements (f32 only when want_f32); updates *max_rows. */
static int nf_stream_check_rows(const struct nf_nft *f, uint32_t layer, enum nf_tile_kind kind,
                                uint64_t rows, uint64_t ne0, bool want_f32, size_t *max_rows,
                                char *err, size_t errlen)
{
    const uint32_t n = nf_nft_count(f, layer, kind);
    uint64_t next = 0;
    for (uint32_t i = 0; i < n; i++) {
        const struct nf_nft_tile *t = nf_nft_find(f, layer, kind, i);
        const enum nf_type ty = (enum nf_type)t->type[0];
        const struct nf_type_traits *tr = nf_type_traits(ty);
        const struct nf_type_traits *dt = tr ? nf_type_traits(tr->vec_dot_type) : NULL;
        char d[160];
        nf_nft_describe(f, t, d, sizeof(d));
        if (t->first != next || t->ne0 != ne0 || t->count == 0)
            return nf_errf(err, errlen, NF_ECORRUPT,
                           "%s: %s holds rows [%u, +%u) of %u elements, expected row %llu "
                           "of %llu elements",
                           f->path, d, t->first, t->count, t->ne0, (unsigned long long)next,
                           (unsigned long long)ne0);
        if (!tr || !tr->compute || !dt || !dt->from_float || ne0 % (uint64_t)dt->blck_size ||
            (want_f32 && ty != NF_TYPE_F32))
            return nf_errf(err, errlen, NF_EBADTYPE,
                           "%s: %s has type %s, which the forward pass cannot use here", f->path, d,
                           tr ? tr->name : "unknown");
        next += t->count;
        *max_rows = t->count > *max_rows ? t->count : *max_rows;
    }
    if (next != rows)
        return nf_errf(err, errlen, NF_ECORRUPT,
                       "%s: layer %d %s tiles hold %llu rows, expected %llu", f->path,
                       layer == NF_NFT_NO_LAYER ? -1 : (int)layer, nf_tile_kind_name(kind),
                       (unsigned long long)next, (unsigned long long)rows);
    return 0;
}

/* Checks the bundle tiles [i0, i1) of (layer, kind) cover neurons [0, n_ff) of expert `expert`
 * with one group size and one set of types; returns the group size in *group. */
static int nf_stream_check_bundles(const struct nf_nft *f, uint32_t layer, enum nf_tile_kind kind,
                                   uint32_t i0, uint32_t i1, uint32_t expert, uint32_t n_ff,
                                   uint32_t n_embd, uint32_t *group, uint8_t types[3], char *err,
                                   size_t errlen)
{
    /* The layer's first bundle tile sets the group size and the types for all. */
    const struct nf_nft_tile *t0 = nf_nft_find(f, layer, kind, 0);
    if (!t0)
        return nf_errf(err, errlen, NF_ECORRUPT, "%s: layer %u has no %s tiles", f->path, layer,
                       nf_tile_kind_name(kind));
    *group = t0->group;
    memcpy(types, t0->type, 3);
    uint32_t next = 0;
    for (uint32_t i = i0; i < i1; i++) {
        const struct nf_nft_tile *t = nf_nft_find(f, layer, kind, i);
        char d[160];
        nf_nft_describe(f, t, d, sizeof(d));
        bool ok = t->first == next && t->ne0 == n_embd && t->group == *group && t->group &&
                  t->count % t->group == 0 && t->expert == expert && !memcmp(types, t->type, 3);
        for (int k = 0; k < 3 && ok; k++) {
            const struct nf_type_traits *tr = nf_type_traits((enum nf_type)t->type[k]);
            const struct nf_type_traits *dt = tr ? nf_type_traits(tr->vec_dot_type) : NULL;
            const uint64_t len = k == 2 ? t->group : n_embd;
            ok = tr && tr->compute && dt && dt->from_float && len % (uint64_t)dt->blck_size == 0;
        }
        if (!ok)
            return nf_errf(err, errlen, NF_ECORRUPT,
                           "%s: %s does not continue the layer's groups at neuron %u "
                           "(group %u, expert %u, computable types)",
                           f->path, d, next, *group, expert);
        next += t->count;
    }
    if (next != n_ff)
        return nf_errf(err, errlen, NF_ECORRUPT,
                       "%s: layer %u %s tiles hold %u neurons, expected %u", f->path, layer,
                       nf_tile_kind_name(kind), next, n_ff);
    return 0;
}

/* In-place index: checks the row-slice tiles [i0, i1) of (layer, kind) hold, in this order,
 * ffn_gate rows [0, n_ff), ffn_up rows [0, n_ff) and ffn_down rows [0, n_embd) of expert
 * `expert`, in computable types; *max_rows grows to the largest tile (the dense path's tmp). */
static int nf_stream_check_slices(const struct nf_nft *f, uint32_t layer, enum nf_tile_kind kind,
                                  uint32_t i0, uint32_t i1, uint32_t expert, uint32_t n_ff,
                                  uint32_t n_embd, size_t *max_rows, char *err, size_t errlen)
{
    uint32_t next[3] = {0, 0, 0}, cur = 0;
    for (uint32_t i = i0; i < i1; i++) {
        const struct nf_nft_tile *t = nf_nft_find(f, layer, kind, i);
        const uint32_t k = (uint32_t)t->type[3] - 1;
        const struct nf_type_traits *tr = nf_type_traits((enum nf_type)t->type[0]);
        const struct nf_type_traits *dt = tr ? nf_type_traits(tr->vec_dot_type) : NULL;
        const uint32_t ne0 = k == 2 ? n_ff : n_embd;
        char d[160];
        nf_nft_describe(f, t, d, sizeof(d));
        if (k > 2 || k < cur || t->expert != expert || t->first != next[k] || t->ne0 != ne0 ||
            t->count == 0 || !tr || !tr->compute || !dt || !dt->from_float ||
            ne0 % (uint64_t)dt->blck_size)
            return nf_errf(err, errlen, NF_ECORRUPT,
                           "%s: %s is not the next row slice of the layer's ffn_gate, ffn_up, "
                           "ffn_down (expert %u, computable types)",
                           f->path, d, expert);
        cur = k;
        next[k] += t->count;
        if (kind == NF_TILE_FFN && t->count > *max_rows)
            *max_rows = t->count;
    }
    if (next[0] != n_ff || next[1] != n_ff || next[2] != n_embd)
        return nf_errf(err, errlen, NF_ECORRUPT,
                       "%s: layer %u %s slices hold %u/%u/%u rows of gate/up/down, expected "
                       "%u/%u/%u",
                       f->path, layer, nf_tile_kind_name(kind), next[0], next[1], next[2], n_ff,
                       n_ff, n_embd);
    return 0;
}

/* Checks one layer; *max_groups and *down_row grow to what it needs. */
/* deepseek2's latent attention tiles of layer il: the q path (low rank, or plain attn_q), the kv
 * latent, attn_k_b / attn_v_b in tiles of whole heads, attn_output, and none of the llama
 * attention kinds. */
static int nf_stream_check_mla(const struct nf_nft *f, const struct nf_hparams *hp, uint32_t il,
                               size_t *max_rows, char *err, size_t errlen)
{
    const uint64_t E = (uint64_t)hp->n_embd, H = (uint64_t)hp->n_head;
    const uint64_t K = (uint64_t)hp->n_embd_head_k_mla, R = (uint64_t)hp->n_rot;
    const uint64_t L = (uint64_t)hp->n_lora_kv, QA = (uint64_t)hp->n_lora_q;
    const uint64_t VM = (uint64_t)hp->n_embd_head_v_mla;
    size_t one = 0;
    int rc;
    if ((rc = nf_stream_check_rows(f, il, NF_TILE_ATTN_NORM, 1, E, true, &one, err, errlen)) ||
        (rc = nf_stream_check_rows(f, il, NF_TILE_ATTN_Q_A, QA ? QA : 0, E, false, max_rows, err,
                                   errlen)) ||
        (rc = nf_stream_check_rows(f, il, NF_TILE_ATTN_Q_A_NORM, QA ? 1 : 0, QA, true, &one, err,
                                   errlen)) ||
        (rc = nf_stream_check_rows(f, il, NF_TILE_ATTN_Q_B, QA ? H * K : 0, QA, false, max_rows,
                                   err, errlen)) ||
        (rc = nf_stream_check_rows(f, il, NF_TILE_ATTN_Q, QA ? 0 : H * K, E, false, max_rows, err,
                                   errlen)) ||
        (rc = nf_stream_check_rows(f, il, NF_TILE_ATTN_K, 0, E, false, &one, err, errlen)) ||
        (rc = nf_stream_check_rows(f, il, NF_TILE_ATTN_V, 0, E, false, &one, err, errlen)) ||
        (rc = nf_stream_check_rows(f, il, NF_TILE_ATTN_KV_A, L + R, E, false, max_rows, err,
                                   errlen)) ||
        (rc = nf_stream_check_rows(f, il, NF_TILE_ATTN_KV_A_NORM, 1, L, true, &one, err, errlen)) ||
        (rc = nf_stream_check_rows(f, il, NF_TILE_ATTN_K_B, H * L, K - R, false, &one, err,
                                   errlen)) ||
        (rc = nf_stream_check_rows(f, il, NF_TILE_ATTN_V_B, H * VM, L, false, &one, err, errlen)) ||
        (rc = nf_stream_check_rows(f, il, NF_TILE_ATTN_O, E, H * VM, false, max_rows, err,
                                   errlen)) ||
        (rc = nf_stream_check_rows(f, il, NF_TILE_EXP_PROBS_B,
                                   nf_nft_count(f, il, NF_TILE_EXP_PROBS_B) ? 1 : 0,
                                   (uint64_t)hp->n_expert, true, &one, err, errlen)))
        return rc;
    for (int part = 0; part < 2; part++) {
        const enum nf_tile_kind kind = part ? NF_TILE_ATTN_V_B : NF_TILE_ATTN_K_B;
        const uint64_t per = part ? VM : L;
        for (uint32_t i = 0, n = nf_nft_count(f, il, kind); i < n; i++) {
            const struct nf_nft_tile *t = nf_nft_find(f, il, kind, i);
            if (t->first % per || t->count % per)
                return nf_errf(err, errlen, NF_ECORRUPT,
                               "%s: layer %u: %s tile %u (rows %u, +%u) does not hold whole heads "
                               "of %llu rows",
                               f->path, il, nf_tile_kind_name(kind), i, t->first, t->count,
                               (unsigned long long)per);
        }
    }
    return 0;
}

static int nf_stream_check_layer(const struct nf_nft *f, const struct nf_hparams *hp0, uint32_t il,
                                 bool sparse, size_t *max_rows, uint32_t *max_groups,
                                 size_t *down_row, char *err, size_t errlen)
{
    /* deepseek2's leading dense layers are checked as a dense model's (their own width, no
     * shared expert), its MoE layers without a shared-expert gate. */
    struct nf_hparams lh = *hp0;
    const struct nf_hparams *hp = &lh;
    if (hp0->arch == NF_ARCH_DEEPSEEK2 && nf_layer_dense(hp0, (int)il)) {
        lh.n_expert = 0;
        lh.n_ff = lh.n_ff_dense;
        lh.n_ff_shexp = 0;
    }
    /* glm4moe's (and, with lh, deepseek2's) leading dense layers: FFN tiles of their own width in a
     * MoE model. */
    const bool moe = hp->n_expert && !nf_layer_dense(hp, (int)il);
    const uint64_t E = (uint64_t)hp->n_embd, F = (uint64_t)nf_layer_n_ff(hp, (int)il);
    const uint32_t X = moe ? (uint32_t)hp->n_expert : 0;
    const uint64_t qd = (uint64_t)hp->n_head * hp->head_dim;
    const uint64_t kvd = (uint64_t)hp->n_head_kv * hp->head_dim;
    const bool shexp = moe && hp->n_ff_shexp > 0,
               gated = shexp && !hp->moe_sigmoid && hp->arch != NF_ARCH_DEEPSEEK2;
    size_t one = 0;
    int rc;
    if (hp->arch == NF_ARCH_DEEPSEEK2) {
        if ((rc = nf_stream_check_mla(f, hp, il, max_rows, err, errlen)) ||
            (rc = nf_stream_check_rows(f, il, NF_TILE_FFN_NORM, 1, E, true, &one, err, errlen)))
            return rc;
    } else if ((rc = nf_stream_check_rows(f, il, NF_TILE_ATTN_NORM, 1, E, true, &one, err,
                                          errlen)) ||
               (rc = nf_stream_check_rows(f, il, NF_TILE_ATTN_Q, qd, E, false, max_rows, err,
                                          errlen)) ||
               (rc = nf_stream_check_rows(f, il, NF_TILE_ATTN_K, kvd, E, false, max_rows, err,
                                          errlen)) ||
               (rc = nf_stream_check_rows(f, il, NF_TILE_ATTN_V, kvd, E, false, max_rows, err,
                                          errlen)) ||
               (rc = nf_stream_check_rows(f, il, NF_TILE_ATTN_O, E, qd, false, max_rows, err,
                                          errlen)) ||
               (rc = nf_stream_check_rows(f, il, NF_TILE_FFN_NORM, 1, E, true, &one, err, errlen)))
        return rc;
    /* The architecture's attention extras: each one F32 row, present exactly when needed (the
     * shared expert's gate too, of any computable type). q/k norms are per head, or over the
     * whole projection (olmoe). */
    const bool full = hp->arch == NF_ARCH_OLMOE;
    const struct {
        enum nf_tile_kind kind;
        bool want;
        uint64_t ne0;
    } ext[] = {{NF_TILE_ATTN_Q_BIAS, hp->qkv_bias, qd},
               {NF_TILE_ATTN_K_BIAS, hp->qkv_bias, kvd},
               {NF_TILE_ATTN_V_BIAS, hp->qkv_bias, kvd},
               {NF_TILE_ATTN_Q_NORM, hp->qk_norm, full ? qd : (uint64_t)hp->head_dim},
               {NF_TILE_ATTN_K_NORM, hp->qk_norm, full ? kvd : (uint64_t)hp->head_dim},
               {NF_TILE_ATTN_POST_NORM, hp->post_norms, E},
               {NF_TILE_FFN_POST_NORM, hp->post_norms, E},
               {NF_TILE_SHEXP_GATE, gated, E},
               {NF_TILE_EXP_PROBS_B, moe && hp->moe_sigmoid, X},
               {NF_TILE_ATTN_O_BIAS, hp->oai_moe, E},
               {NF_TILE_ATTN_SINKS, hp->oai_moe, (uint64_t)hp->n_head},
               {NF_TILE_ROUTER_BIAS, moe && hp->oai_moe, (uint64_t)hp->n_expert}};
    for (size_t i = 0; i < sizeof(ext) / sizeof(ext[0]); i++)
        if ((hp->arch != NF_ARCH_DEEPSEEK2 || ext[i].kind != NF_TILE_EXP_PROBS_B) && /* MLA's */
            (rc = nf_stream_check_rows(f, il, ext[i].kind, ext[i].want ? 1 : 0, ext[i].ne0,
                                       ext[i].kind != NF_TILE_SHEXP_GATE, &one, err, errlen)))
            return rc;
    /* gpt-oss's expert biases: one F32 row per expert. */
    const uint64_t XB = moe && hp->oai_moe ? (uint64_t)hp->n_expert : 0;
    if ((rc = nf_stream_check_rows(f, il, NF_TILE_EXP_GATE_BIAS, XB, F, true, &one, err, errlen)) ||
        (rc = nf_stream_check_rows(f, il, NF_TILE_EXP_UP_BIAS, XB, F, true, &one, err, errlen)) ||
        (rc = nf_stream_check_rows(f, il, NF_TILE_EXP_DOWN_BIAS, XB, E, true, &one, err, errlen)))
        return rc;
    if (shexp) {
        /* The shared expert: the MoE layer's FFN tiles, of its own width. */
        uint32_t g = 0;
        uint8_t ty[3] = {0};
        const uint32_t S = (uint32_t)hp->n_ff_shexp, n = nf_nft_count(f, il, NF_TILE_FFN);
        const struct nf_nft_tile *s0 = nf_nft_find(f, il, NF_TILE_FFN, 0);
        if (s0 && s0->type[3] != NF_SLICE_NONE) {
            /* Row slices (an in-place index): no bundle group and no down-row scratch. */
            if ((rc = nf_stream_check_slices(f, il, NF_TILE_FFN, 0, n, NF_NFT_NO_EXPERT, S,
                                             (uint32_t)E, max_rows, err, errlen)))
                return rc;
        } else {
            if ((rc = nf_stream_check_bundles(f, il, NF_TILE_FFN, 0, n, NF_NFT_NO_EXPERT, S,
                                              (uint32_t)E, &g, ty, err, errlen)))
                return rc;
            *max_rows = g > *max_rows ? g : *max_rows;
            const size_t dr = nf_row_size((enum nf_type)ty[2], (int64_t)S);
            *down_row = dr > *down_row ? dr : *down_row;
        }
    }
    uint32_t group = 0;
    uint8_t types[3] = {0};
    const struct nf_nft_tile *t0 = nf_nft_find(f, il, moe ? NF_TILE_EXPERT : NF_TILE_FFN, 0);
    if (t0 && t0->type[3] != NF_SLICE_NONE) {
        const uint32_t n = nf_nft_count(f, il, X ? NF_TILE_EXPERT : NF_TILE_FFN);
        if (sparse)
            return nf_errf(err, errlen, NF_EUSAGE,
                           "%s: an in-place index has no FFN predictors; for --sparsity convert "
                           "the GGUF to a .nft first (nanoflowctl convert)",
                           f->path);
        if (X &&
            (rc = nf_stream_check_rows(f, il, NF_TILE_ROUTER, X, E, false, max_rows, err, errlen)))
            return rc;
        if (X && n % X)
            return nf_errf(err, errlen, NF_ECORRUPT,
                           "%s: layer %u has %u expert tiles, expected a multiple of %u", f->path,
                           il, n, X);
        for (uint32_t e = 0; e < (X ? X : 1); e++)
            if ((rc = nf_stream_check_slices(f, il, X ? NF_TILE_EXPERT : NF_TILE_FFN,
                                             X ? e * (n / X) : 0, X ? (e + 1) * (n / X) : n,
                                             X ? e : NF_NFT_NO_EXPERT, (uint32_t)F, (uint32_t)E,
                                             max_rows, err, errlen)))
                return rc;
        const uint32_t units = X ? X : n;
        *max_groups = units > *max_groups ? units : *max_groups;
        return 0;
    }
    if (moe) {
        const uint32_t n = nf_nft_count(f, il, NF_TILE_EXPERT);
        if ((rc = nf_stream_check_rows(f, il, NF_TILE_ROUTER, X, E, false, max_rows, err, errlen)))
            return rc;
        if (n == 0 || n % X)
            return nf_errf(err, errlen, NF_ECORRUPT,
                           "%s: layer %u has %u expert tiles, expected a multiple of %u", f->path,
                           il, n, X);
        for (uint32_t e = 0; e < X; e++)
            if ((rc = nf_stream_check_bundles(f, il, NF_TILE_EXPERT, e * (n / X), (e + 1) * (n / X),
                                              e, (uint32_t)F, (uint32_t)E, &group, types, err,
                                              errlen)))
                return rc;
        *max_groups = X > *max_groups ? X : *max_groups;
    } else {
        if ((rc = nf_stream_check_bundles(f, il, NF_TILE_FFN, 0, nf_nft_count(f, il, NF_TILE_FFN),
                                          NF_NFT_NO_EXPERT, (uint32_t)F, (uint32_t)E, &group, types,
                                          err, errlen)))
            return rc;
        *max_groups = (uint32_t)F / group > *max_groups ? (uint32_t)F / group : *max_groups;
        const struct nf_nft_tile *pt = nf_nft_predictor(f, il);
        if (sparse && !hp->n_expert &&
            (!pt || pt->kind != NF_TILE_PRED_LOWRANK || pt->count != F || pt->ne0 != E ||
             pt->rank == 0 || (pt->type[0] != NF_TYPE_F16 && pt->type[0] != NF_TYPE_F32)))
            return nf_errf(err, errlen, NF_ECORRUPT,
                           "%s: layer %u has no usable low-rank predictor tile (needed "
                           "for --sparsity)",
                           f->path, il);
    }
    *max_rows = group > *max_rows ? group : *max_rows;
    const size_t dr = nf_row_size((enum nf_type)types[2], (int64_t)F);
    *down_row = dr > *down_row ? dr : *down_row;
    return 0;
}

static int nf_stream_check(struct nf_stream *s, char *err, size_t errlen, size_t *down_row)
{
    const struct nf_nft *f = s->f;
    const struct nf_hparams *hp = &s->shell.hp;
    const struct nf_nft_header *h = &f->hdr;
    if ((int)h->n_layer != hp->n_layer || (int)h->n_embd != hp->n_embd ||
        (int)h->n_vocab != hp->n_vocab || (int)h->n_ff != hp->n_ff ||
        (int)h->n_expert != hp->n_expert)
        return nf_errf(err, errlen, NF_ECORRUPT,
                       "%s: header (layers %u, dim %u, vocab %u, ffn %u, experts %u) "
                       "disagrees with the metadata (%d, %d, %d, %d, %d)",
                       f->path, h->n_layer, h->n_embd, h->n_vocab, h->n_ff, h->n_expert,
                       hp->n_layer, hp->n_embd, hp->n_vocab, hp->n_ff, hp->n_expert);
    const uint64_t E = (uint64_t)hp->n_embd, V = (uint64_t)hp->n_vocab;
    size_t one = 0;
    int rc;
    if ((rc = nf_stream_check_rows(f, NF_NFT_NO_LAYER, NF_TILE_EMBD, V, E, false, &one, err,
                                   errlen)) ||
        (rc = nf_stream_check_rows(f, NF_NFT_NO_LAYER,
                                   h->tied_output ? NF_TILE_EMBD : NF_TILE_OUTPUT, V, E, false,
                                   &s->max_rows, err, errlen)) ||
        (rc = nf_stream_check_rows(f, NF_NFT_NO_LAYER, NF_TILE_OUTPUT_NORM, 1, E, true, &one, err,
                                   errlen)))
        return rc;
    /* rope_freqs in one row, or phi3's LongRoPE factors as rows 0 (short) and 1 (long). */
    const uint64_t rope_rows = hp->arch == NF_ARCH_PHI3 ? 2 : 1;
    if (nf_nft_count(f, NF_NFT_NO_LAYER, NF_TILE_ROPE_FREQS) &&
        (rc = nf_stream_check_rows(f, NF_NFT_NO_LAYER, NF_TILE_ROPE_FREQS, rope_rows,
                                   (uint64_t)hp->n_rot / 2, true, &one, err, errlen)))
        return rc;
    for (uint32_t il = 0; il < h->n_layer; il++)
        if ((rc = nf_stream_check_layer(f, hp, il, s->sparsity > 0, &s->max_rows, &s->max_groups,
                                        down_row, err, errlen)))
            return rc;
    return 0;
}

/* Copies phi3's LongRoPE factor tiles (nf_stream_check: rows 0 and 1 of ROPE_FREQS) into
 * s->shell.rope_short and rope_long, which nf_rope_cache chooses between by the context. */
static int nf_stream_load_longrope(struct nf_stream *s, char *err, size_t errlen)
{
    struct nf_tensor *dst[2] = {&s->shell.rope_short, &s->shell.rope_long};
    for (uint32_t i = 0; i < 2; i++) {
        const struct nf_nft_tile *t = nf_nft_find(s->f, NF_NFT_NO_LAYER, NF_TILE_ROPE_FREQS, i);
        int rc;
        const uint8_t *p = nf_stream_pin(s, t, &rc);
        if (!p)
            return nf_errf(err, errlen, rc, "%s", s->err);
        float *ff = malloc(sizeof(float) * t->ne0);
        if (ff)
            memcpy(ff, p, sizeof(float) * t->ne0);
        nf_stream_unpin(s, t);
        if (!ff)
            return nf_errf(err, errlen, -ENOMEM, "out of memory");
        *dst[i] = nf_rows_view(t, ff);
        s->mem += sizeof(float) * t->ne0;
    }
    return 0;
}

/* Copies the optional rope_freqs tile into s->shell.rope_freqs (nf_rope_cache reads it). */
static int nf_stream_load_rope(struct nf_stream *s, char *err, size_t errlen)
{
    const struct nf_nft_tile *t = nf_nft_find(s->f, NF_NFT_NO_LAYER, NF_TILE_ROPE_FREQS, 0);
    if (t && s->shell.hp.arch == NF_ARCH_PHI3)
        return nf_stream_load_longrope(s, err, errlen);
    if (!t || s->shell.hp.arch != NF_ARCH_LLAMA) /* as nf_model_load: llama uses it alone */
        return 0;
    int rc;
    const uint8_t *p = nf_stream_pin(s, t, &rc);
    if (!p)
        return nf_errf(err, errlen, rc, "%s", s->err);
    const size_t n = (size_t)t->ne0;
    float *ff = malloc(sizeof(float) * n);
    if (ff)
        memcpy(ff, p, sizeof(float) * n);
    nf_stream_unpin(s, t);
    if (!ff)
        return nf_errf(err, errlen, -ENOMEM, "out of memory");
    s->shell.rope_freqs = nf_rows_view(t, ff);
    s->mem += sizeof(float) * n;
    return 0;
}

/* Copies the one-row F32 tile (il, kind), when the file has it, to *p and points dst at the
 * copy (*p advanced past it). */
static int nf_stream_copy_row(struct nf_stream *s, uint32_t il, enum nf_tile_kind kind,
                              struct nf_tensor *dst, float **p, char *err, size_t errlen)
{
    const struct nf_nft_tile *t = nf_nft_find(s->f, il, kind, 0);
    if (!t || !dst) /* nf_stream_check: absent exactly when the arch has none */
        return 0;
    int rc;
    const uint8_t *src = nf_stream_pin(s, t, &rc);
    if (!src)
        return nf_errf(err, errlen, rc, "%s", s->err);
    memcpy(*p, src, sizeof(float) * t->ne0);
    nf_stream_unpin(s, t);
    *dst = nf_rows_view(t, *p);
    *p += t->ne0;
    return 0;
}

/* deepseek2's small per-layer vectors (the q and kv low-rank norms) copied into s->ext, as
 * nf_stream_load_ext does for the other architectures' extras (V3's exp_probs_b goes with
 * glm4moe's, nf_stream_load_probs_b). */
static int nf_stream_load_ds(struct nf_stream *s, char *err, size_t errlen)
{
    const struct nf_hparams *hp = &s->shell.hp;
    const size_t per = (size_t)hp->n_lora_q + (size_t)hp->n_lora_kv;
    s->ext = calloc((size_t)hp->n_layer, sizeof(*s->ext));
    s->ext_data = malloc(sizeof(float) * per * (size_t)hp->n_layer);
    if (!s->ext || !s->ext_data)
        return nf_errf(err, errlen, -ENOMEM, "out of memory for the latent attention's norms");
    s->mem += (sizeof(*s->ext) + sizeof(float) * per) * (size_t)hp->n_layer;
    float *p = s->ext_data;
    for (uint32_t il = 0; il < (uint32_t)hp->n_layer; il++) {
        struct nf_tensor *dst[] = {&s->ext[il].q_a_norm, &s->ext[il].kv_a_norm};
        static const enum nf_tile_kind kinds[] = {NF_TILE_ATTN_Q_A_NORM, NF_TILE_ATTN_KV_A_NORM};
        for (size_t i = 0; i < sizeof(kinds) / sizeof(kinds[0]); i++) {
            int rc = nf_stream_copy_row(s, il, kinds[i], dst[i], &p, err, errlen);
            if (rc)
                return rc;
        }
    }
    return 0;
}

/* Copies every layer's attention extras (biases, q/k norms) into s->ext / s->ext_data: a
 * few KiB per layer, read once so the forward pass never waits on these small tiles. */
static int nf_stream_load_ext(struct nf_stream *s, char *err, size_t errlen)
{
    const struct nf_hparams *hp = &s->shell.hp;
    if (hp->arch == NF_ARCH_DEEPSEEK2)
        return nf_stream_load_ds(s, err, errlen);
    if (!hp->qkv_bias && !hp->qk_norm && !hp->post_norms)
        return 0;
    const size_t qd = (size_t)hp->n_head * hp->head_dim, kvd = (size_t)hp->n_head_kv * hp->head_dim;
    const size_t per =
        (hp->qkv_bias ? qd + 2 * kvd : 0) +
        (hp->qk_norm ? hp->arch == NF_ARCH_OLMOE ? qd + kvd : 2 * (size_t)hp->head_dim : 0) +
        (hp->post_norms ? 2 * (size_t)hp->n_embd : 0) +
        (hp->oai_moe ? (size_t)(hp->n_embd + hp->n_head + hp->n_expert) : 0);
    s->ext = calloc((size_t)hp->n_layer, sizeof(*s->ext));
    s->ext_data = malloc(sizeof(float) * per * (size_t)hp->n_layer);
    if (hp->post_norms)
        s->ffn_post = calloc((size_t)hp->n_layer, sizeof(*s->ffn_post));
    if (hp->oai_moe) {
        s->router_b = calloc((size_t)hp->n_layer, sizeof(*s->router_b));
        s->eb_gate = malloc(sizeof(float) * (2 * (size_t)hp->n_ff + (size_t)hp->n_embd));
        s->eb_up = s->eb_gate ? s->eb_gate + hp->n_ff : NULL;
        s->eb_down = s->eb_gate ? s->eb_up + hp->n_ff : NULL;
    }
    if (!s->ext || !s->ext_data || (hp->post_norms && !s->ffn_post) ||
        (hp->oai_moe && (!s->router_b || !s->eb_gate)))
        return nf_errf(err, errlen, -ENOMEM, "out of memory for the attention extras");
    s->mem += (sizeof(*s->ext) + sizeof(float) * per) * (size_t)hp->n_layer;
    float *p = s->ext_data;
    for (uint32_t il = 0; il < (uint32_t)hp->n_layer; il++) {
        struct nf_attn_weights *w = &s->ext[il];
        /* The post norms are not attention extras, but as small and read the same way. */
        struct nf_tensor *dst[] = {&w->bq,
                                   &w->bk,
                                   &w->bv,
                                   &w->q_norm,
                                   &w->k_norm,
                                   &w->post_norm,
                                   s->ffn_post ? &s->ffn_post[il] : NULL,
                                   &w->bo,
                                   &w->sinks,
                                   s->router_b ? &s->router_b[il] : NULL};
        static const enum nf_tile_kind kinds[] = {
            NF_TILE_ATTN_Q_BIAS, NF_TILE_ATTN_K_BIAS,    NF_TILE_ATTN_V_BIAS,   NF_TILE_ATTN_Q_NORM,
            NF_TILE_ATTN_K_NORM, NF_TILE_ATTN_POST_NORM, NF_TILE_FFN_POST_NORM, NF_TILE_ATTN_O_BIAS,
            NF_TILE_ATTN_SINKS,  NF_TILE_ROUTER_BIAS};
        for (size_t i = 0; i < sizeof(kinds) / sizeof(kinds[0]); i++) {
            int rc = nf_stream_copy_row(s, il, kinds[i], dst[i], &p, err, errlen);
            if (rc)
                return rc;
        }
    }
    return 0;
}

/* Copies every MoE layer's exp_probs_b tile (glm4moe, deepseek2 V3; nf_stream_check: present
 * exactly there) into s->probs_b: n_expert floats a layer, read once like the attention
 * extras. s->probs_b stays NULL for a model without them. */
static int nf_stream_load_probs_b(struct nf_stream *s, char *err, size_t errlen)
{
    const struct nf_hparams *hp = &s->shell.hp;
    uint32_t n = 0;
    for (uint32_t il = 0; il < (uint32_t)hp->n_layer; il++)
        n += nf_nft_count(s->f, il, NF_TILE_EXP_PROBS_B);
    if (n == 0)
        return 0;
    const size_t X = (size_t)hp->n_expert;
    s->probs_b = calloc((size_t)hp->n_layer * X, sizeof(float));
    if (!s->probs_b)
        return nf_errf(err, errlen, -ENOMEM, "out of memory for the expert biases");
    s->mem += sizeof(float) * (size_t)hp->n_layer * X;
    for (uint32_t il = 0; il < (uint32_t)hp->n_layer; il++) {
        const struct nf_nft_tile *t = nf_nft_find(s->f, il, NF_TILE_EXP_PROBS_B, 0);
        if (!t)
            continue;
        int rc;
        const uint8_t *src = nf_stream_pin(s, t, &rc);
        if (!src)
            return nf_errf(err, errlen, rc, "%s", s->err);
        memcpy(s->probs_b + il * X, src, sizeof(float) * X);
        nf_stream_unpin(s, t);
    }
    return 0;
}

/* Gives the engine's context the KV cache types of o (0 for either: f16), refused in one line
 * when the model cannot keep them (nf_kv_types_check). */
static int nf_stream_kv_types(struct nf_stream *s, const struct nf_stream_opts *o, char *err,
                              size_t errlen)
{
    const enum nf_type tk = o->type_k ? o->type_k : NF_TYPE_F16;
    const enum nf_type tv = o->type_v ? o->type_v : NF_TYPE_F16;
    char why[256];
    int rc = nf_ctx_set_kv_types(s->c, tk, tv, why, sizeof(why));
    return rc < 0 ? nf_errf(err, errlen, rc, "%s: %s", s->f->path, why) : 0;
}

int nf_stream_create(struct nf_stream **out, const struct nf_nft *f, const struct nf_tile_src *src,
                     const struct nf_stream_opts *o, char *err, size_t errlen)
{
    if (!src || !src->pin || !src->unpin || !o || o->n_ctx < 1 || !(o->sparsity >= 0.0f) ||
        o->sparsity >= 1.0f)
        return nf_errf(err, errlen, NF_EUSAGE,
                       "stream: need a tile source, n_ctx >= 1 and sparsity in [0, 1)");
    nf_kernels_init();
    struct nf_stream *s = calloc(1, sizeof(*s));
    if (!s)
        return nf_errf(err, errlen, -ENOMEM, "out of memory");
    s->f = f;
    s->src = *src;
    s->sparsity = o->sparsity;
    size_t down_row = 0;
    int rc = nf_model_hparams(&s->shell.hp, nf_nft_gguf(f), err, errlen);
    if (rc < 0 || (rc = nf_stream_check(s, err, errlen, &down_row)) < 0)
        goto fail;
    /* nf_moe_route picks at most 64 experts a token (the expert count itself is not bounded:
     * the used bitmaps are sized by it; Qwen3-30B-A3B has 128 experts, 8 used). */
    if (s->shell.hp.n_expert_used > 64) {
        rc = nf_errf(err, errlen, NF_EARCH,
                     "%s: more than 64 experts used per token are not supported", f->path);
        goto fail;
    }
    /* The kernels' summation order depends on the model's size (model_forward.c): the shell
     * must report the whole model's weight bytes for the results to match nf_ctx_eval's. */
    s->shell.weight_bytes = (size_t)f->hdr.weight_bytes;
    s->ub = o->n_ubatch > 0 ? o->n_ubatch : NF_MAX_BATCH;
    /* The (rows, ...) buffers hold a prompt chunk or a batched step of n_seq sequences. */
    s->rows = o->n_seq > s->ub ? o->n_seq : s->ub;
    if ((rc = nf_ctx_create_ub(&s->c, &s->shell, o->n_ctx, o->n_threads, s->rows)) < 0) {
        nf_errf(err, errlen, rc, "creating the run state: %s", nf_strerror(rc));
        goto fail;
    }
    s->n_threads = nf_threadpool_size(s->c->pool);
    s->n_threads_one =
        o->n_threads_one > 0 && o->n_threads_one < s->n_threads ? o->n_threads_one : s->n_threads;
    if ((rc = nf_stream_kv_types(s, o, err, errlen)) < 0)
        goto fail;
    const struct nf_hparams *hp = &s->shell.hp;
    const size_t E = (size_t)hp->n_embd, G = s->max_groups;
    size_t F = (size_t)(hp->n_ff_shexp > hp->n_ff ? hp->n_ff_shexp : hp->n_ff);
    F = (size_t)hp->n_ff_dense > F ? (size_t)hp->n_ff_dense : F; /* glm4moe's dense layers */
    const size_t words = (G + 63) / 64;
    s->tmp = malloc(sizeof(float) * (size_t)s->rows * s->max_rows);
    if (posix_memalign(&s->down, 64, E * down_row + 64))
        s->down = NULL;
    s->scores = malloc(sizeof(float) * F);
    s->gscores = malloc(sizeof(float) * G);
    s->ptmp = malloc(sizeof(float) * (f->hdr.pred_rank ? f->hdr.pred_rank : 1));
    s->bound = malloc(sizeof(uint32_t) * (G + 1));
    s->order = malloc(sizeof(uint32_t) * 2 * G);
    s->pick = malloc(sizeof(uint32_t) * G);
    s->tscore = malloc(sizeof(float) * G);
    s->sel = malloc((size_t)s->rows * G);
    s->bits = calloc(words, sizeof(uint64_t));
    if (!s->tmp || !s->down || !s->scores || !s->gscores || !s->ptmp || !s->bound || !s->order ||
        !s->pick || !s->tscore || !s->sel || !s->bits) {
        rc = nf_errf(err, errlen, -ENOMEM, "out of memory for the stream scratch");
        goto fail;
    }
    if (s->sparsity > 0 && !hp->n_expert) {
        const size_t R = s->max_rows, T = (size_t)s->n_threads;
        s->xq_stride = (4 * E + 63) / 64 * 64;
        s->xq = malloc((size_t)s->rows * 2 * s->xq_stride);
        s->sacc = malloc(sizeof(float) * T * (size_t)s->rows * E);
        s->swork = malloc(sizeof(float) * T * (2 * R + E));
        s->shq = malloc(T * (4 * R + 64));
        s->spairs = malloc(sizeof(uint32_t) * (size_t)s->rows * G);
        if (!s->xq || !s->sacc || !s->swork || !s->shq || !s->spairs) {
            rc = nf_errf(err, errlen, -ENOMEM, "out of memory for the sparse scratch");
            goto fail;
        }
        if (s->max_groups > 65535) { /* spairs packs a group index in 16 bits */
            rc = nf_errf(err, errlen, NF_ECORRUPT,
                         "%s: %u FFN groups in a layer, sparse mode takes at most 65535", f->path,
                         s->max_groups);
            goto fail;
        }
        s->mem += (size_t)s->rows * 2 * s->xq_stride +
                  T * (sizeof(float) * ((size_t)s->rows * E + 2 * R + E) + 4 * R + 64) +
                  sizeof(uint32_t) * (size_t)s->rows * G;
    }
    s->mem += nf_ctx_kv_bytes(s->c) +
              sizeof(float) * (size_t)s->rows * (s->max_rows + 6 * E + 2 * F) + E * down_row +
              sizeof(float) * (F + 2 * G) + (size_t)s->rows * G;
    if (o->kv_path && (rc = nf_stream_kv_open(s, o, err, errlen)) < 0)
        goto fail;
    if ((rc = nf_stream_load_rope(s, err, errlen)) < 0 ||
        (rc = nf_stream_load_ext(s, err, errlen)) < 0 ||
        (rc = nf_stream_load_probs_b(s, err, errlen)) < 0)
        goto fail;
    *out = s;
    return 0;
fail:
    nf_stream_free(s);
    return rc;
}

void nf_stream_free(struct nf_stream *s)
{
    if (!s)
        return;
    if (s->slots) /* c frees its own cache and logits, slot 0's */
        nf_ctx_bind(s->c, &s->slots[0]);
    if (s->kvf) { /* the caches are the KV file's memory */
        if (s->kv_tiles)
            nf_stream_kv_unpin(s);
        free(s->kv_pub);
        for (int i = 0; i < s->n_slots; i++)
            s->slots[i].k_cache = s->slots[i].v_cache = NULL;
        if (s->c)
            s->c->k_cache = s->c->v_cache = NULL;
        nf_kv_file_close(s->kvf);
    }
    nf_ctx_free(s->c);
    free(s->shell.rope_freqs.data);
    free(s->shell.rope_short.data);
    free(s->shell.rope_long.data);
    free(s->ext);
    free(s->ext_data);
    free(s->probs_b);
    free(s->ffn_post);
    free(s->router_b);
    free(s->eb_gate);
    free(s->tmp);
    free(s->down);
    free(s->scores);
    free(s->gscores);
    free(s->ptmp);
    free(s->bound);
    free(s->order);
    free(s->pick);
    free(s->tscore);
    free(s->xq);
    free(s->sacc);
    free(s->swork);
    free(s->shq);
    free(s->spairs);
    free(s->sel);
    free(s->bits);
    nf_kv_slots_free(s->slots, s->n_slots);
    free(s->views);
    free(s->blogits);
    free(s->mxn);
    free(s->mout);
    free(s->meo);
    free(s);
}

void nf_stream_reset(struct nf_stream *s)
{
    if (s->kvf) {
        nf_kv_file_reset(s->kvf, s->kv_slot);
        nf_stream_kv_mark(s, s->kv_slot, -1);
    }
    nf_ctx_reset(s->c);
}

void nf_stream_set_progress(struct nf_stream *s, nf_stream_progress_cb cb, void *ud)
{
    s->progress = cb;
    s->progress_ud = ud;
}

void nf_stream_set_abort(struct nf_stream *s, const atomic_int *flag)
{
    s->abort = flag;
}

const float *nf_stream_logits(const struct nf_stream *s)
{
    return s->c->logits;
}

const struct nf_hparams *nf_stream_hparams(const struct nf_stream *s)
{
    return &s->shell.hp;
}

int nf_stream_n_past(const struct nf_stream *s)
{
    return s->c->n_past;
}

int nf_stream_n_ctx(const struct nf_stream *s)
{
    return s->c->n_ctx;
}

int nf_stream_ubatch(const struct nf_stream *s)
{
    return s->ub;
}

uint32_t nf_stream_n_groups(const struct nf_stream *s)
{
    return s->max_groups;
}

const char *nf_stream_error(const struct nf_stream *s)
{
    return s->err;
}

void nf_stream_get_stats(const struct nf_stream *s, struct nf_stream_stats *out)
{
    *out = s->st;
}

uint64_t nf_stream_mem_bytes(const struct nf_stream *s)
{
    return s->mem;
}

bool nf_stream_kv_stats(const struct nf_stream *s, struct nf_kv_file_stats *out)
{
    if (!s->kvf)
        return false;
    nf_kv_file_get_stats(s->kvf, out);
    return true;
}

/* --- file-backed tile source --------------------------------------------------------------- */

struct nf_file_src {
    const struct nf_nft *f;
    uint64_t slot_size; /* the largest padded tile */
    uint32_t n_slots;
    uint32_t hand;       /* clock hand */
    uint8_t *buf;        /* (n_slots * slot_size), 4096-aligned */
    uint32_t *slot_tile; /* (n_slots) tile held or NF_FILE_NONE */
    uint32_t *slot_pins; /* (n_slots) */
    uint8_t *slot_ref;   /* (n_slots) clock reference bit */
    uint32_t *tile_slot; /* (n_tiles) slot or NF_FILE_NONE */
    uint64_t reads;
    char err[256]; /* the last read error (names the tile) */
};

#define NF_FILE_NONE UINT32_MAX

static const uint8_t *nf_file_pin(void *ud, uint32_t id, int *rc)
{
    struct nf_file_src *fs = ud;
    NF_ASSERT(id < fs->f->n_tiles); /* the engine pins tiles it found in fs->f's index */
    uint32_t sl = fs->tile_slot[id];
    if (sl == NF_FILE_NONE) {
        /* Clock: the first unpinned slot whose reference bit is clear (two sweeps). */
        for (uint32_t k = 0; k < 2 * fs->n_slots + 1 && sl == NF_FILE_NONE; k++) {
            const uint32_t h = fs->hand;
            fs->hand = (fs->hand + 1) % fs->n_slots;
            if (fs->slot_pins[h])
                continue;
            if (fs->slot_ref[h])
                fs->slot_ref[h] = 0;
            else
                sl = h;
        }
        if (sl == NF_FILE_NONE) {
            *rc = -ENOBUFS;
            return NULL;
        }
        if (fs->slot_tile[sl] != NF_FILE_NONE)
            fs->tile_slot[fs->slot_tile[sl]] = NF_FILE_NONE;
        fs->slot_tile[sl] = NF_FILE_NONE;
        int r = nf_nft_read(fs->f, &fs->f->tiles[id], fs->buf + (size_t)sl * fs->slot_size,
                            fs->slot_size, fs->err, sizeof(fs->err));
        fs->reads++;
        if (r < 0) {
            *rc = r;
            return NULL;
        }
        fs->slot_tile[sl] = id;
        fs->tile_slot[id] = sl;
    }
    fs->slot_pins[sl]++;
    fs->slot_ref[sl] = 1;
    *rc = 0;
    return fs->buf + (size_t)sl * fs->slot_size;
}

static bool nf_file_present(void *ud, uint32_t id)
{
    const struct nf_file_src *fs = ud;
    return id < fs->f->n_tiles && fs->tile_slot[id] != NF_FILE_NONE;
}

static void nf_file_unpin(void *ud, uint32_t id)
{
    struct nf_file_src *fs = ud;
    /* The engine unpins only what it pinned, and a pinned tile keeps its slot. */
    NF_ASSERT(id < fs->f->n_tiles);
    const uint32_t sl = fs->tile_slot[id];
    NF_ASSERT(sl != NF_FILE_NONE && fs->slot_pins[sl] > 0);
    fs->slot_pins[sl]--;
}

int nf_tile_src_file_open(struct nf_tile_src *src, const struct nf_nft *f, uint64_t cache_bytes)
{
    struct nf_file_src *fs = calloc(1, sizeof(*fs));
    if (!fs)
        return -ENOMEM;
    fs->f = f;
    for (uint64_t i = 0; i < f->n_tiles; i++) {
        const uint64_t p = nf_nft_tile_span(&f->tiles[i]);
        fs->slot_size = p > fs->slot_size ? p : fs->slot_size;
    }
    if (fs->slot_size == 0)
        fs->slot_size = NF_NFT_ALIGN;
    uint64_t n = cache_bytes / fs->slot_size;
    n = n < 2 ? 2 : n > f->n_tiles ? f->n_tiles : n;
    n = n < 2 ? 2 : n;
    fs->n_slots = (uint32_t)n;
    if (posix_memalign((void **)&fs->buf, NF_NFT_ALIGN, fs->n_slots * fs->slot_size))
        fs->buf = NULL;
    fs->slot_tile = malloc(sizeof(uint32_t) * fs->n_slots);
    fs->slot_pins = calloc(fs->n_slots, sizeof(uint32_t));
    fs->slot_ref = calloc(fs->n_slots, 1);
    fs->tile_slot = malloc(sizeof(uint32_t) * (f->n_tiles ? f->n_tiles : 1));
    if (!fs->buf || !fs->slot_tile || !fs->slot_pins || !fs->slot_ref || !fs->tile_slot) {
        struct nf_tile_src tmp = {.ud = fs};
        nf_tile_src_file_close(&tmp);
        return -ENOMEM;
    }
    for (uint32_t i = 0; i < fs->n_slots; i++)
        fs->slot_tile[i] = NF_FILE_NONE;
    for (uint64_t i = 0; i < f->n_tiles; i++)
        fs->tile_slot[i] = NF_FILE_NONE;
    *src = (struct nf_tile_src){
        .pin = nf_file_pin, .unpin = nf_file_unpin, .present = nf_file_present, .ud = fs};
    return 0;
}

void nf_tile_src_file_close(struct nf_tile_src *src)
{
    struct nf_file_src *fs = src ? src->ud : NULL;
    if (!fs)
        return;
    free(fs->buf);
    free(fs->slot_tile);
    free(fs->slot_pins);
    free(fs->slot_ref);
    free(fs->tile_slot);
    free(fs);
    src->ud = NULL;
}

uint64_t nf_tile_src_file_reads(const struct nf_tile_src *src)
{
    const struct nf_file_src *fs = src->ud;
    return fs->reads;
}
