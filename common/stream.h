/* stream.h - the tile-streaming forward pass: a llama model evaluated from the tiles of a .nft.
 *
 * The engine holds no weights. Every tile it needs is pinned through a struct nf_tile_src (the
 * shared tile pool in the compute daemon, plain preads in tests), used in place and unpinned.
 * It runs the arithmetic of model_forward.c on tensor views over the pinned bytes:
 *  - attention and output matrices are split by rows, and a mat-vec over a row range gives the
 *    same floats per row as over the whole matrix;
 *  - exact mode (sparsity 0) copies each FFN group's ffn_down columns into a per-layer
 *    row-major scratch as the groups arrive and runs the ordinary mat-vec on it, so the logits
 *    are bit-identical to nf_ctx_eval on the same model;
 *  - sparse mode (0 < sparsity < 1) scores the groups of each dense layer with the .nft's
 *    low-rank predictor on the actual FFN input and computes only the top (1 - sparsity)
 *    fraction, adding each group's down contribution to the output (approximate by design);
 *  - MoE layers compute the router from the actual input and touch only the chosen experts'
 *    tiles (exact).
 * The KV cache, scratch and thread pool are allocated by nf_stream_create; evaluating tokens
 * allocates nothing. All calls on one engine must come from the thread that created it. */
#ifndef NF_STREAM_H
#define NF_STREAM_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "model.h"
#include "nft.h"
#include "sparse_pick.h"

/* KV block tiles of a shared pool (shm/stack.h): the KV cache on disk (nf_stream_opts kv_path)
 * read back by the pool's owner instead of the engine's own window (kv_file.h). Block b of K
 * (kind 0) or V (1) of layer il of sequence slot is tile first + ((slot * n_layer + il) * 2 +
 * kind) * ceil(n_ctx / block) + b; the engine uses them only when the geometry below is its
 * cache's. pin pins a durable block's tile as nf_tile_src.pin does (released with its unpin),
 * refusing a copy of an older generation; mark says a block's bytes in the file are durable
 * (its write completed: true) or are to be rewritten (a rollback, a slot's next sequence:
 * false, a new generation), so a copy read before is never used. ahead: how many blocks of
 * the walk the engine asks for (nf_tile_src.want) ahead of the one it pins (at least 1).
 * walked (optional, NULL): layer il's attention walk just ended, and this eval's walks visit
 * the tiles of slots[0..n) in that order (a batched step's rows; n 0 when the eval reads its
 * layers whole or walks no tile), so the source can have the next layers' tiles read now. */
struct nf_tile_src_kv {
    uint32_t first;
    int n_slots, n_ctx, block, ahead;
    size_t row_k, row_v;
    const uint8_t *(*pin)(void *ud, uint32_t id, int *rc);
    void (*mark)(void *ud, uint32_t id, bool durable);
    void (*walked)(void *ud, uint32_t il, const int *slots, int n);
};

/* Where tile bytes come from. pin returns the bytes of tile id (stable until unpin), or NULL
 * with *rc set (NF_ECHECKSUM, -EIO, -ECANCELED, -ETIMEDOUT...). layer_done and used are
 * optional (NULL): layer_done receives the residual stream of the last token after each layer;
 * used receives the FFN groups (dense) or experts (MoE) the layer computed, as a bitmap of
 * n_groups bits. The engine calls them all from its own thread. */
struct nf_tile_src {
    const uint8_t *(*pin)(void *ud, uint32_t id, int *rc);
    void (*unpin)(void *ud, uint32_t id);
    void (*layer_done)(void *ud, uint32_t layer, const float *x, int n_embd);
    void (*used)(void *ud, uint32_t layer, const uint64_t *bits, uint32_t n_groups);
    void *ud;
    /* Optional (NULL): a hint that tile id will be pinned soon, in call order (sparse mode names
     * the FFN tiles of a layer right after choosing its groups, so their reads all start at
     * once); flush ends a batch of hints. */
    void (*want)(void *ud, uint32_t id, bool flush);
    /* Optional (NULL): the KV cache's blocks as tiles (must outlive the engine). */
    const struct nf_tile_src_kv *kv;
    /* Optional (NULL): whether tile id can be pinned now without a read (in memory), a hint only
     * (the tile may come or go right after). A batched MoE step runs the experts of its union
     * whose tiles are in memory first and asks for the others in the order it will run them,
     * so the missing experts are read while the present ones are computed. */
    bool (*present)(void *ud, uint32_t id);
    /* Optional (NULL): row `row` of a batched step's residual stream after `layer`, called
     * once per row and layer as soon as that row is final: in a MoE layer, when the last of its
     * experts has run (the others still running), so that a forecast of the next layer's
     * experts can start from the rows done before the layer is; else at the layer's end.
     * layer_done still follows with the last row. */
    void (*row_done)(void *ud, uint32_t layer, uint32_t row, const float *x, int n_embd);
};

struct nf_stream_opts {
    int n_ctx;     /* KV cache positions (>= 1) */
    int n_threads; /* <= 0: one per CPU */
    /* Threads of a decode step (a one-token chunk, a batched step of any number of rows), at
     * most n_threads; 0: n_threads. Prompt chunks of several tokens use n_threads: they have
     * the work for them, while a decode step's products are too small per tile to pay for a
     * second thread's wake-ups, and under a RAM cap it would take the fetcher's core. */
    int n_threads_one;
    float sparsity; /* 0: exact; in (0, 1): the fraction of FFN groups skipped */
    int n_ubatch;   /* tokens per prompt chunk, each chunk one pass over the tiles; 0: 32
                     * (NF_MAX_BATCH), at most NF_MAX_UBATCH */
    int n_seq;      /* most sequences nf_stream_set_slots will be given (0: up to the ubatch):
                     * the activation buffers hold max(n_ubatch, n_seq) rows */
    /* KV cache element types (kv_quant.h): NF_TYPE_F16, Q8_0 or Q4_0; 0 (as zeroed options
     * leave them): f16. */
    enum nf_type type_k, type_v;
    /* The KV cache in this file on the SSD (kv_file.h), cut in blocks of kv_block positions
     * (0: NF_KV_BLOCK), its rows of type_k and type_v as in RAM; with it, nf_stream_set_slots
     * takes at most max(1, n_seq) sequences. NULL: the KV cache in RAM. The output is the same
     * bit for bit. */
    const char *kv_path;
    int kv_block;
    int kv_window; /* blocks read back at once (kv_file.h); 0: nf_kv_file_window_blocks */
    /* Prompt chunks walk the window too (false: they read their layer back whole when it takes
     * at most NF_KV_LAYER_BYTES, nf_kv_file_prompt_layer) */
    bool kv_prompt_walk;
};

#define NF_KV_BLOCK 64 /* positions per KV block on disk: 1 MiB of K and V for Llama-2-7B */

/* Monotonic counters of one engine. */
struct nf_stream_stats {
    uint64_t tiles_pinned, tile_bytes;     /* pins and the data bytes they covered */
    uint64_t groups_total, groups_skipped; /* dense FFN groups per token, and those skipped */
};

struct nf_stream;

/* Creates an engine for the open .nft f (which must outlive it) reading tiles through src
 * (copied). Checks the metadata (nf_model_hparams) and that every tile the forward pass needs
 * is present with the expected shape. Returns 0 or a negative code with a one-line reason in
 * err (NF_EUSAGE for bad options, NF_ECORRUPT for a missing tile, -ENOMEM...). */
int nf_stream_create(struct nf_stream **out, const struct nf_nft *f, const struct nf_tile_src *src,
                     const struct nf_stream_opts *o, char *err, size_t errlen);
void nf_stream_free(struct nf_stream *s);

/* Forgets the sequence (n_past = 0). */
void nf_stream_reset(struct nf_stream *s);

/* Evaluates n tokens at positions n_past.., like nf_ctx_eval, leaving the logits of the last one
 * in nf_stream_logits. Returns 0, NF_ECTXFULL (nothing evaluated), NF_EUSAGE (token out of the
 * vocabulary), -ECANCELED when the abort flag was set, or the pin error of a tile (then
 * nf_stream_error names the tile). After an error the sequence is undefined: reset it. */
int nf_stream_eval(struct nf_stream *s, const int32_t *tokens, int n);

/* Evaluates n tokens at positions n_past.. as n decode steps would, in one pass over the tiles
 * per ubatch of tokens, and writes every token's logits into logits (n, n_vocab): each row
 * bit-identical to what nf_stream_eval of that token alone leaves (nf_ctx_eval_rows' per-row
 * kernels and attention; in sparse mode each token's groups are summed as its own step would).
 * Returns as nf_stream_eval; nf_stream_logits gets the last row. */
int nf_stream_eval_rows(struct nf_stream *s, const int32_t *tokens, int n, float *logits);
/* Rolls the sequence back to its first n_past positions (nf_ctx_rollback): 0 or NF_EUSAGE. */
int nf_stream_rollback(struct nf_stream *s, int n_past);

/* An abort flag checked before every layer (NULL: none); any nonzero value stops the eval. */
void nf_stream_set_abort(struct nf_stream *s, const atomic_int *flag);

/* A callback after each chunk (the ubatch) of an eval of several chunks, and after each layer of
 * a chunk longer than NF_MAX_BATCH tokens, with the tokens of that eval done so far (a chunk's
 * share by layers) and in all (NULL: none); done < total, except after the last chunk. It runs
 * on the evaluating thread and must not call back into s. */
typedef void (*nf_stream_progress_cb)(void *ud, int done, int total);
void nf_stream_set_progress(struct nf_stream *s, nf_stream_progress_cb cb, void *ud);

/* Several sequences (continuous batching). nf_stream_set_slots gives the engine n KV caches
 * (slots 0..n-1, 1 <= n <= NF_MAX_BATCH, once; slot 0 is the cache the calls above use). A
 * sequence's prompt is evaluated alone (nf_stream_slot_eval: nf_stream_eval on its slot);
 * nf_stream_step then advances several at once, one token each: every tile is pinned once for
 * all rows, each row computed with the arithmetic of its solo step (so each slot's logits are
 * bit-identical to evaluating its sequence alone), attention over each slot's own cache, and
 * for MoE the union of the experts the rows chose. Returns as nf_stream_eval; the abort flag
 * stops a step before a layer, and after any error the rows' slots must be reset. */
int nf_stream_set_slots(struct nf_stream *s, int n, char *err, size_t errlen);
int nf_stream_n_slots(const struct nf_stream *s); /* 0 before nf_stream_set_slots */
void nf_stream_slot_reset(struct nf_stream *s, int i);
int nf_stream_slot_eval(struct nf_stream *s, int i, const int32_t *tokens, int n);
/* Prefix reuse (daemons/compute/gen.h). A prompt is evaluated in chunks of the ubatch (ub)
 * from position 0, and every multi-token kernel gives a token the same bits whatever the
 * chunk's extent (tests/test_matmul_split.c, tests/test_ubatch_invariance.c), so a position's
 * cells depend only on whether its chunk had one token (the one-token kernels) or more. Of a
 * prompt of n tokens, nf_stream_prefix_kept gives the positions whose cells a cold evaluation
 * of any longer prompt computes alike: all n, less the last when it was a chunk of its own
 * (n % ub == 1, ub > 1). nf_stream_slot_eval_rest is nf_stream_slot_eval for the rest of a
 * prompt whose start the slot holds: chunks of up to ub tokens, two or more each, but the last
 * token alone exactly when a cold evaluation of the whole prompt (n_past + n tokens) takes it
 * alone; as few chunks as nf_stream_slot_eval's. nf_stream_prefix_usable gives, of l kept
 * positions a prompt of n tokens starts with, how many it may reuse so that such chunks exist:
 * at most n - 1 (the last token's logits are needed), one fewer when a single token would be
 * left before the cold run's last one-token chunk or the end (or, with ub 2, an odd count). */
int nf_stream_prefix_kept(int n, int ub);
int nf_stream_prefix_usable(int l, int n, int ub);
int nf_stream_slot_eval_rest(struct nf_stream *s, int i, const int32_t *tokens, int n);
/* toks[r] for slot idx[r], r < n (distinct slots). */
int nf_stream_step(struct nf_stream *s, const int *idx, const int32_t *toks, int n);
const float *nf_stream_slot_logits(const struct nf_stream *s, int i); /* (n_vocab) */
int nf_stream_slot_n_past(const struct nf_stream *s, int i);
/* nf_stream_eval_rows and nf_stream_rollback on slot i alone (speculative decoding's
 * verification of one sequence; its rows bit-identical to that slot's solo steps). */
int nf_stream_slot_eval_rows(struct nf_stream *s, int i, const int32_t *tokens, int n,
                             float *logits);
int nf_stream_slot_rollback(struct nf_stream *s, int i, int n_past);
/* Slot i's KV rows of layer il, positions from 0: K (which 0) or V (which 1) rows of
 * nf_stream_kv_row_bytes bytes each, contiguous up to n_ctx (the prefix store reads and
 * writes a slot's cells through it, kv_store.h). NULL when the KV cache is on disk (its rows
 * are not all resident) or there is no such cache (V of deepseek2's latent attention). */
void *nf_stream_slot_kv_rows(struct nf_stream *s, int i, int il, int which);
/* Bytes of one position's K (which 0) or V (which 1) row in one layer; 0 for no V. */
size_t nf_stream_kv_row_bytes(const struct nf_stream *s, int which);
/* Slot i holds positions [0, n) written through nf_stream_slot_kv_rows: 0, or NF_EUSAGE when n
 * is out of 0..n_ctx or the KV cache is on disk. */
int nf_stream_slot_kv_filled(struct nf_stream *s, int i, int n);

const float *nf_stream_logits(const struct nf_stream *s); /* (n_vocab) */
const struct nf_hparams *nf_stream_hparams(const struct nf_stream *s);
int nf_stream_n_past(const struct nf_stream *s);
int nf_stream_n_ctx(const struct nf_stream *s);
/* Tokens per prompt chunk (the ubatch): nf_stream_eval cuts n tokens into chunks of this many
 * from its first position (nf_stream_slot_eval_rest: as many chunks, sized otherwise). */
int nf_stream_ubatch(const struct nf_stream *s);
/* Groups (dense) or experts (MoE) per layer: the length of the used bitmaps. */
uint32_t nf_stream_n_groups(const struct nf_stream *s);
/* The message of the last failed eval ("" if none). */
const char *nf_stream_error(const struct nf_stream *s);
void nf_stream_get_stats(const struct nf_stream *s, struct nf_stream_stats *out);
/* Bytes of private memory the engine allocated (KV cache, scratch), for budget checks. */
uint64_t nf_stream_mem_bytes(const struct nf_stream *s);
/* The KV file's counters: false (out untouched) when the KV cache is in RAM. */
struct nf_kv_file_stats;
bool nf_stream_kv_stats(const struct nf_stream *s, struct nf_kv_file_stats *out);

/* A tile source reading f with nf_nft_read (checksums verified) into a cache of about
 * cache_bytes (at least two tiles), evicting unpinned tiles in clock order. src->ud owns the
 * cache; release it with nf_tile_src_file_close. Returns 0 or -ENOMEM. */
int nf_tile_src_file_open(struct nf_tile_src *src, const struct nf_nft *f, uint64_t cache_bytes);
void nf_tile_src_file_close(struct nf_tile_src *src);
/* Reads done by a file source so far (cache misses). */
uint64_t nf_tile_src_file_reads(const struct nf_tile_src *src);

#endif
