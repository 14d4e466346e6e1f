/* stack.h - what the three daemons share: the layout of one stack's region and the tile protocol.
 *
 * The fetcher creates the region (nf_stack_create) from a plan (nf_stack_plan) computed from
 * the .nft header and the RAM budget; compute and predictor attach to it (nf_stack_attach).
 * Every structure below lives in the region and holds offsets or indices, never pointers.
 *
 * Areas (shm/region.h ids) and what this module puts in them:
 *  1. NF_SHM_TILE_POOL: n_slots slots in up to NF_STACK_MAX_CLASSES size classes
 *     (struct nf_stack_class, in the config): class c holds the slots first_slot ..
 *     first_slot + n_slots - 1 (one global numbering over all classes), each slot_size bytes (a
 *     multiple of 4096) from pool_off on; classes are in increasing slot size and a tile lives
 *     only in the smallest class whose slots fit it. Registered with io_uring by the fetcher,
 *     read in place by compute.
 *  2. NF_SHM_TILE_TABLE: struct nf_stack_config, then n_tiles struct nf_tile_entry (indexed by
 *     the .nft tile id), then n_slots struct nf_slot_entry.
 *  3. NF_SHM_REQ_RING: two SPSC rings of struct nf_tile_req: the demand ring (compute ->
 *     fetcher: tiles compute is blocked on, served first) then the prefetch ring (predictor ->
 *     fetcher). Offsets in struct nf_stack_config.
 *  4. NF_SHM_COMPLETION: struct nf_stack_sync (doorbells and completion words).
 *  5. NF_SHM_ACTIVATIONS: per layer a struct nf_act_slot (the hidden state compute publishes
 *     after each layer, for the predictor) and per layer a struct nf_used_slot (the FFN groups /
 *     experts compute actually used, for the predictor's recall and precision).
 *  6. NF_SHM_COUNTERS: struct nf_stack_counters.
 *
 * Tile states and who moves them (every transition is an atomic store or CAS on `state`):
 *     EMPTY --(predictor or compute: CAS, then enqueue a request)--> QUEUED
 *     EMPTY/QUEUED --(fetcher: picks a slot, submits the read)--> LOADING
 *     LOADING --(fetcher: read done, checksum ok; store-release, then wake tile_done)--> READY
 *     LOADING --(read or checksum failed)--> ERROR (compute reports the error, never computes)
 *     READY --(fetcher eviction: CAS READY->EVICTING, then pins must be 0, else back to READY)
 *           --> EMPTY
 * Pinning (compute): pins += 1 (seq_cst), then load state; use the slot only if READY, else
 * pins -= 1. The fetcher's CAS to EVICTING followed by its pins load (both seq_cst) pairs with
 * this, so a pinned tile is never evicted and an evicting tile is never used. */
#ifndef NF_STACK_H
#define NF_STACK_H

#include <limits.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>

#include "notify.h"
#include "region.h"
#include "ring.h"
#include "seqlock.h"

struct nf_nft;

/* The config magic names the layout: "NFNSTAK2" has the slot size classes; a region made with
 * the single slot size of the first layout ("NFNSTACK") is refused by name. */
#define NF_STACK_CONFIG_MAGIC    0x324b4154534e4e46ull /* "NFNSTAK2" */
#define NF_STACK_CONFIG_MAGIC_V1 0x4b434154534e4e46ull /* "NFNSTACK" (one slot size) */

/* Slot size classes of the tile pool (see nf_stack_plan for how they are chosen). */
#define NF_STACK_MAX_CLASSES 4

enum nf_tile_state {
    NF_TILE_EMPTY = 0,
    NF_TILE_QUEUED,
    NF_TILE_LOADING,
    NF_TILE_READY,
    NF_TILE_EVICTING,
    NF_TILE_ERROR,
};

#define NF_NO_SLOT UINT32_MAX
#define NF_NO_TILE UINT32_MAX

/* Slot flags. */
#define NF_SLOT_RESIDENT 1u /* never evicted (hot set chosen by the fetcher) */

struct nf_tile_entry {
    _Atomic uint32_t state;    /* enum nf_tile_state */
    _Atomic uint32_t slot;     /* pool slot while LOADING/READY/EVICTING, else NF_NO_SLOT */
    _Atomic uint32_t pins;     /* compute threads using the tile's bytes */
    _Atomic uint32_t last_use; /* compute's step counter when last pinned (for eviction) */
};
_Static_assert(sizeof(struct nf_tile_entry) == 16, "tile entry layout");

struct nf_slot_entry {
    _Atomic uint32_t tile;  /* tile id held, or NF_NO_TILE */
    _Atomic uint32_t flags; /* NF_SLOT_* */
};
_Static_assert(sizeof(struct nf_slot_entry) == 8, "slot entry layout");

/* A request for one tile. prio: smaller is sooner (0 = compute is blocked on it; the predictor
 * uses 1 + the number of layers until the tile is needed). */
struct nf_tile_req {
    uint32_t tile;
    uint32_t prio;
};
_Static_assert(sizeof(struct nf_tile_req) == 8, "request layout");
/* prio flag on the prefetch ring: not a request but its withdrawal (nf_tile_prefetch_drop). */
#define NF_TILE_REQ_DROP 0x80000000u
/* prio flag on the demand ring: KV tile `tile` is READY at an older generation than its
 * block's; evict it and read it again (nf_kv_tile_pin_wait). */
#define NF_TILE_REQ_STALE 0x40000000u

/* One slot size class of the pool: n_slots slots of slot_size bytes, global slot ids
 * first_slot .. first_slot + n_slots - 1, the first at byte pool_off of the pool. */
struct nf_stack_class {
    uint64_t slot_size; /* a multiple of 4096 */
    uint64_t n_slots;   /* >= 1 */
    uint64_t first_slot;
    uint64_t pool_off; /* the sum of the earlier classes' n_slots * slot_size */
};
_Static_assert(sizeof(struct nf_stack_class) == 32, "class layout");

/* Written once by the creator before the region's magic is published; read-only afterwards. */
struct nf_stack_config {
    uint64_t magic;         /* NF_STACK_CONFIG_MAGIC */
    uint64_t ram_budget;    /* --ram of the whole stack */
    uint64_t n_tiles;       /* tiles in the .nft index */
    uint64_t n_slots;       /* pool slots (all classes) */
    uint64_t max_slot_size; /* bytes per slot of the largest class (>= the largest padded tile) */
    uint64_t demand_ring_off, demand_ring_size;     /* within NF_SHM_REQ_RING */
    uint64_t prefetch_ring_off, prefetch_ring_size; /* within NF_SHM_REQ_RING */
    uint64_t tiles_off, slots_off;                  /* within NF_SHM_TILE_TABLE */
    uint64_t act_off, used_off;                     /* within NF_SHM_ACTIVATIONS */
    uint64_t act_stride, used_stride;               /* bytes per layer of each */
    uint64_t nft_file_size; /* identifies the model with nft_header_checksum */
    uint64_t nft_header_checksum;
    uint64_t kv_bytes; /* compute's KV cache (private) per the plan */
    uint32_t n_ctx;    /* context length the budget allows */
    uint32_t n_layer, n_embd, n_vocab;
    uint32_t max_groups; /* largest number of FFN groups / experts in a layer */
    float sparsity;      /* 0: exact mode */
    uint32_t n_threads;
    uint32_t n_classes; /* 1..NF_STACK_MAX_CLASSES */
    uint32_t n_seq;     /* sequences compute runs at once, each with a KV cache of kv_bytes / n_seq
                         * (0 in a region made before it: 1) */
    /* The KV cache's element types kv_bytes counts (enum nf_type: f16, q8_0, q4_0; 0 in a
     * region made before them: f16). */
    uint16_t kv_type_k, kv_type_v;
    uint32_t kv_block; /* compute's KV cache on disk in blocks of this many positions (0: in
                        * RAM, and in a region made before it); `up --kv-offload` */
    uint32_t n_ubatch; /* compute's prompt chunk the plan reserved activations for (0 in a
                        * region made before it: NF_STACK_UBATCH) */
    struct nf_stack_class classes[NF_STACK_MAX_CLASSES]; /* (n_classes) by slot size */
    char nft_path[PATH_MAX];
    /* KV block tiles (the KV cache on disk read through the pool; 0 in a region made before
     * them, with the KV cache in RAM, or when the weights use every class): ids n_tiles ..
     * n_tiles + kv_tiles - 1 (nf_stack_kv_tile), in the class classes[n_classes] past the
     * weights' (nf_stack_pool_classes), read by the fetcher from kv_path. */
    uint64_t kv_tiles;
    uint64_t kv_row_k, kv_row_v; /* bytes of one position's K and V rows in one layer */
    uint64_t kv_words_off;       /* within NF_SHM_TILE_TABLE: (kv_tiles) struct nf_kv_word */
    uint32_t kv_n_blk;           /* blocks of each (sequence, layer, K or V): n_ctx / kv_block,
                                  * rounded up */
    uint32_t kv_reserved;
    char kv_path[PATH_MAX]; /* the file compute writes (set by the creator before ready) */
    /* A batched step's rows for the predictor (0 in a region made before them): act_rows row
     * slots per layer (struct nf_act_slot of act_stride bytes each, layer-major) from
     * act_rows_off on in NF_SHM_ACTIVATIONS; n_seq of them for a MoE model run with n_seq > 1,
     * else none (nf_stack_act_row). */
    uint64_t act_rows_off;
    uint32_t act_rows;
    uint32_t act_rows_reserved;
};

/* Per KV tile: what compute says of its block and what the fetcher read. A block's bytes in
 * the file change (a rollback or a slot's next sequence rewrites them), so compute bumps its
 * generation when it rewrites it and sets durable once the write completed; the fetcher reads
 * only a durable block and records the generation it read, and a pin of a tile read at an
 * older generation is refused (nf_kv_tile_pin_wait). */
struct nf_kv_word {
    _Atomic uint32_t gen;      /* compute: generation << 1 | durable */
    _Atomic uint32_t read_gen; /* fetcher: the generation (gen >> 1) the slot's bytes are of */
};
_Static_assert(sizeof(struct nf_kv_word) == 8, "kv word layout");

/* Compute -> predictor, with KV block tiles: the attention walk of `layer` in token step `step`
 * just ended, and the walks of this eval visit the KV tiles of these n sequences (cache slots),
 * in this order (a batched step's rows; n 0 when the eval reads its layers whole, as a prompt
 * chunk does, or walks no tile). A seqlock like the activation slots (shm/slots.c); it follows
 * the KV words in NF_SHM_TILE_TABLE (nf_stack_kv_walk_off). The predictor pushes the next
 * layers' KV tiles from it (nf_kv_walk_read); a wrong guess costs a read, never a stale or
 * non-durable block: the fetcher checks the block word. */
#define NF_KV_WALK_MAX 32u /* NF_STACK_SEQ_MAX */
struct nf_kv_walk {
    _Atomic uint64_t seq; /* odd while being written, even when stable (seqlock) */
    uint64_t step;
    uint32_t layer;
    uint32_t n;
    uint32_t slot[NF_KV_WALK_MAX];
};
_Static_assert(sizeof(struct nf_kv_walk) == 24 + 4 * NF_KV_WALK_MAX, "kv walk layout");

/* The bits of nf_stack_sync.ready_mask: a daemon sets its bit once it is attached and ready, and
 * clears it when it stops. The one definition every daemon, tool and test uses. */
enum nf_ready_bit {
    NF_READY_FETCHER = 1u << 0,
    NF_READY_PREDICTOR = 1u << 1,
    NF_READY_COMPUTE = 1u << 2,
};

/* Daemons of a stack: the index of a daemon's record in nf_stack_sync.live is the position of its
 * ready bit (NF_READY_FETCHER -> 0, NF_READY_PREDICTOR -> 1, NF_READY_COMPUTE -> 2). */
#define NF_STACK_DAEMONS 3

/* enum nf_live_state: where a daemon's record in nf_stack_sync.live stands. */
enum nf_live_state {
    NF_LIVE_NONE = 0, /* not registered yet */
    NF_LIVE_UP,       /* its process runs (pid, start) */
    NF_LIVE_EXITED,   /* it exited cleanly (after stopping the stack) */
    NF_LIVE_DEAD,     /* another process found it gone without having exited cleanly */
};

/* One daemon's liveness record (daemons/common/live.c writes and checks them): the daemon stores
 * pid and start, then state UP (release); a checker loads state (acquire), then pid and start,
 * and calls the daemon dead when /proc/PID is gone, a zombie, or started at another time (the
 * pid was reused). */
struct nf_stack_live {
    _Atomic uint32_t state; /* enum nf_live_state */
    _Atomic int32_t pid;
    _Atomic uint64_t start; /* field 22 of /proc/PID/stat: clock ticks after boot */
};

/* Doorbells and completion words (NF_SHM_COMPLETION). */
struct nf_stack_sync {
    struct nf_notify fetch_bell; /* rung after enqueueing a request: wakes the fetcher */
    struct nf_notify tile_done;  /* rung by the fetcher after tiles become READY or ERROR */
    struct nf_notify act_bell;   /* rung by compute after publishing a layer's activation */
    _Atomic uint32_t stop;       /* set on shutdown: every loop exits */
    _Atomic uint32_t ready_mask; /* enum nf_ready_bit: attached and ready */
    /* enum nf_ready_bit: the daemons found dead (set once, never cleared: the stack is broken
     * and nanoflowctl down && up makes a new one). Tile waits end when it is not 0. */
    _Atomic uint32_t dead_mask;
    uint32_t reserved;
    struct nf_stack_live live[NF_STACK_DAEMONS]; /* by ready-bit position */
};

/* Compute -> predictor: the residual stream after layer `layer` of token step `seq`. */
struct nf_act_slot {
    _Atomic uint64_t seq; /* odd while being written, even when stable (seqlock) */
    uint64_t step;        /* compute's token step */
    uint32_t layer;
    uint32_t n_embd;
    float x[]; /* (n_embd) */
};

/* Compute -> predictor: which FFN groups (dense) or experts (MoE) a layer used at step. */
struct nf_used_slot {
    _Atomic uint64_t seq; /* seqlock as above */
    uint64_t step;
    uint32_t layer;
    uint32_t n_groups;
    uint64_t bits[]; /* (ceil(n_groups / 64)) */
};

/* Per-stage counters: monotonically increasing unless named otherwise; any process may read. */
#define NF_LAT_BUCKETS \
    32 /* read latency histogram: bucket i counts latencies in [2^i, 2^(i+1)) us */
struct nf_stack_counters {
    /* fetcher */
    _Atomic uint64_t f_reads, f_bytes, f_demand_reads, f_prefetch_reads;
    _Atomic uint64_t f_hits, f_misses; /* requests found READY vs needing a read */
    _Atomic uint64_t f_evictions, f_checksum_errors, f_io_errors;
    _Atomic uint64_t f_busy_ns;     /* time with at least one read in flight */
    _Atomic uint64_t f_queue_depth; /* current reads in flight (gauge) */
    _Atomic uint64_t f_lat_hist[NF_LAT_BUCKETS];
    _Atomic uint64_t f_resident_bytes; /* gauge */
    /* predictor */
    _Atomic uint64_t p_predictions, p_requests, p_pred_ns;
    _Atomic uint64_t p_true_pos, p_false_pos, p_false_neg; /* vs compute's used sets */
    _Atomic uint64_t p_lookahead; /* gauge: current lookahead depth in layers */
    /* compute */
    _Atomic uint64_t c_prompt_tokens, c_prompt_ns, c_decode_tokens, c_decode_ns;
    _Atomic uint64_t c_stall_ns; /* time blocked waiting for tiles */
    _Atomic uint64_t c_tiles_used, c_tile_bytes_used, c_step;
    _Atomic uint64_t c_groups_skipped, c_groups_total;
    /* memory held, per process (gauges, bytes: private RSS as each process measures it) */
    _Atomic uint64_t mem_fetcher, mem_predictor, mem_compute;
    /* fetcher, appended: prefetches dropped unread (compute had passed them or did not choose
     * them, or the predictor's plan no longer held them); of those, dropped because the plan
     * changed (nf_tile_prefetch_drop); and plan-dropped reads already submitted, whose slot was
     * freed as soon as they landed */
    _Atomic uint64_t f_prefetch_dropped, f_plan_dropped, f_plan_released;
    /* fetcher, appended: KV block tiles read because the predictor pushed them (prefetch ring)
     * or because compute asked (demand ring: its pins and its requests ahead of the walk); of
     * the pushed ones, those compute pinned before they were evicted, and those evicted unused */
    _Atomic uint64_t f_kv_prefetch_reads, f_kv_demand_reads, f_kv_prefetch_used,
        f_kv_prefetch_unused;
    /* predictor, appended: KV block tiles it pushed on the prefetch ring */
    _Atomic uint64_t p_kv_requests;
    /* fetcher, appended: the most bytes it has had in flight at once (gauge) */
    _Atomic uint64_t f_inflight_peak;
};

/* The plan: how the budget is split. Everyone computes the same plan from the same inputs. */
struct nf_stack_plan {
    uint64_t ram_budget;
    uint64_t region_bytes; /* the whole shared region (pool + tables + rings + ...) */
    uint64_t pool_bytes;   /* sum over the classes of n_slots * slot_size */
    uint64_t n_slots;      /* all classes */
    uint64_t kv_bytes;     /* compute's KV cache */
    uint64_t compute_private, predictor_private, fetcher_private; /* estimates incl. code */
    uint64_t min_budget; /* the smallest budget this model can run with */
    uint32_t n_ctx;      /* context length after capping to the budget */
    uint64_t area_sizes[NF_SHM_NAREAS];
    /* Added after the first version of this header (append-only): */
    uint32_t n_ctx_want; /* the request, or the model's default capped at 4096 */
    uint32_t n_ctx_min;  /* the smallest context the plan may cap to */
    uint64_t min_slots;  /* the minimum pool: the sum of class_min (NF_STACK_SPARE_SLOTS) */
    uint32_t demand_count, prefetch_count; /* ring entries (powers of two) */
    uint32_t max_groups;                   /* as in struct nf_stack_config */
    uint64_t down_scratch; /* bytes of compute's per-layer ffn_down scratch (exact mode) */
    uint64_t kernel_bytes; /* page tables of the region's mappings, page cache (estimate) */
    /* The pool's slot size classes (replacing the single slot_size of the first version). */
    uint32_t n_classes;                                  /* 1..NF_STACK_MAX_CLASSES */
    struct nf_stack_class classes[NF_STACK_MAX_CLASSES]; /* by increasing slot size */
    uint64_t class_min[NF_STACK_MAX_CLASSES];            /* the minimum slots of each class */
    uint64_t class_tiles[NF_STACK_MAX_CLASSES];          /* tiles that go in each class */
    uint32_t n_seq;    /* sequences compute runs at once (kv_bytes holds all their caches) */
    uint32_t n_ubatch; /* compute's prompt chunk (tokens) whose activations compute_private holds */
    uint32_t type_k, type_v; /* the KV cache's element types (enum nf_type; nf_stack_plan_kv) */
    uint64_t kv_token_bytes; /* bytes of one position of one sequence (every layer, K and V) */
    /* The KV cache on disk (nf_stack_plan_kv): kv_block positions per block (0: in RAM), the
     * file's size; kv_bytes is then only what stays resident. */
    uint32_t kv_block;
    uint64_t kv_file_bytes;
    /* KV block tiles in the pool (kv_block > 0 and a class free: classes[n_classes] is theirs,
     * its slots counted in n_slots and pool_bytes, in place of compute's read-back window);
     * 0: compute reads the blocks back itself. */
    uint64_t kv_tiles;
    uint32_t kv_n_blk;
    uint64_t kv_row_k, kv_row_v;
};

/* Budget constants of the plan. */
#define NF_STACK_PROC_BYTES   (8ull << 20) /* code, libraries and stacks of each process */
#define NF_STACK_MIN_CTX      256u         /* n_ctx is never capped below this (or the request) */
#define NF_STACK_CTX_LIMIT    4096u        /* cap on the model's default context length */
#define NF_STACK_MAPPINGS     3u           /* processes mapping the region (page tables) */
#define NF_STACK_KERNEL_BYTES (4ull << 20) /* sockets', logs' and slab's page cache */
#define NF_STACK_UBATCH       32u  /* smallest prompt chunk a plan picks (NF_MAX_BATCH, model.h) */
#define NF_STACK_UBATCH_MAX   512u /* largest prompt chunk a plan picks by itself */

/* Computes the plan for model f under budget ram_budget with the requested context length
 * and thread count. The pool's slot size classes come from the model's tile sizes and the pool
 * bytes are split between them by what a token step reads (see plan_classes in shape.c and
 * plan_split in plan.c). A request is honoured if the minimum pool fits beside it,
 * else capped to the largest that does. Without one (0) the context is the model's (capped at 4096)
 * lowered so that the KV cache takes at most a quarter of the budget (a multiple of 256, not below
 * 256 or the model's context if smaller). Kernel memory (page tables of the three mappings of the
 * region, region / 256 each, and 4 MiB of page cache) is reserved, in the minimum too; the pool
 * gets the rest. Returns 0, or -ENOSPC when the budget is below plan->min_budget (which is still
 * filled in, so the caller can say what is needed), with a one-line reason in err. */
int nf_stack_plan(const struct nf_nft *f, uint64_t ram_budget, uint32_t n_ctx_req,
                  uint32_t n_threads, struct nf_stack_plan *plan, char *err, size_t errlen);
/* The plan for n_seq sequences run at once (`up --parallel`): n_seq KV caches and their logits
 * in compute's private memory (nf_stack_plan is n_seq 1). n_seq 0 chooses it from the budget:
 * the most, up to NF_STACK_SEQ_DEFAULT, whose caches take at most a quarter of the budget and
 * leave room for the minimum pool. A given n_seq (1..NF_STACK_SEQ_MAX) whose caches do not fit
 * beside the minimum pool at the smallest context the plan may cap to is refused with NF_EUSAGE
 * naming the largest that fits; the context is then chosen (or capped) for n_seq caches. */
int nf_stack_plan_seq(const struct nf_nft *f, uint64_t ram_budget, uint32_t n_ctx_req,
                      uint32_t n_threads, uint32_t n_seq, struct nf_stack_plan *plan, char *err,
                      size_t errlen);
#define NF_STACK_SEQ_DEFAULT 4u  /* most sequences a plan chooses by itself */
#define NF_STACK_SEQ_MAX     32u /* most sequences a plan takes (NF_MAX_BATCH) */

/* The same for a compute daemon that evaluates prompts n_ubatch tokens at a time (1..4096):
 * compute_private holds that many tokens' activations, so a larger ubatch leaves less to the
 * pool (or the context). -ENOSPC names the ubatch when it is what does not fit. n_ubatch 0
 * (what nf_stack_plan uses) chooses it once the context is chosen: the largest of
 * NF_STACK_UBATCH_MAX, 256, ... down to NF_STACK_UBATCH, at most n_ctx, whose activations and
 * scratch take at most a quarter of the budget beside the minimum pool, else NF_STACK_UBATCH;
 * plan->n_ubatch says which. */
int nf_stack_plan_ub(const struct nf_nft *f, uint64_t ram_budget, uint32_t n_ctx_req,
                     uint32_t n_threads, uint32_t n_ubatch, struct nf_stack_plan *plan, char *err,
                     size_t errlen);
/* Both: n_seq sequences (as nf_stack_plan_seq) and prompt chunks of n_ubatch tokens (as
 * nf_stack_plan_ub); the two above are this with n_ubatch 0 and n_seq 1. */
int nf_stack_plan_seq_ub(const struct nf_nft *f, uint64_t ram_budget, uint32_t n_ctx_req,
                         uint32_t n_threads, uint32_t n_seq, uint32_t n_ubatch,
                         struct nf_stack_plan *plan, char *err, size_t errlen);

/* All of the above with the KV cache's element types and, optionally, on disk; the others
 * are this with f16 in RAM.
 *  - type_k and type_v are NF_TYPE_F16, Q8_0 or Q4_0 (0: f16; anything else NF_EUSAGE), and
 *    the plan counts their bytes per position (plan->kv_token_bytes: a q8_0 row takes 34/64 of
 *    an f16 one, q4_0 18/64), so the same budget holds a longer context or leaves a larger
 *    pool. MLA models (deepseek2) count their f16 latent whatever the types (compute refuses
 *    quantized types for them).
 *  - kv_block > 0 puts compute's KV cache on disk in blocks of kv_block positions (0: in RAM).
 *    The budget then holds only the resident KV (the window of blocks read back, and per
 *    sequence two blocks of every layer, of kv_token_bytes per position:
 *    nf_kv_file_resident_bound, independent of n_ctx) and compute the attention walk's
 *    scratch (nf_attn_walk_bytes), so the context is not capped by RAM: a request is honoured
 *    whenever the minimum pool fits beside that, and without one the model's default (capped
 *    at 4096) is not lowered to a quarter of the budget. plan->kv_file_bytes is the file's
 *    size, for the caller's free-disk check. */
int nf_stack_plan_kv(const struct nf_nft *f, uint64_t ram_budget, uint32_t n_ctx_req,
                     uint32_t n_threads, uint32_t n_seq, uint32_t n_ubatch, uint32_t type_k,
                     uint32_t type_v, uint32_t kv_block, struct nf_stack_plan *plan, char *err,
                     size_t errlen);

/* Compute threads for a requested count: the request, or for 0 one per online CPU. They are
 * the threads of compute's pool (the plan reserves their scratch) and what prompt chunks of
 * several tokens use: a chunk has the arithmetic to keep every core busy (a tile's rows times
 * up to a ubatch of tokens), and the fetcher, at nice -10 (NF_FETCH_NICE), still gets the CPU
 * when a read completes. */
uint32_t nf_stack_compute_threads(uint32_t requested);

/* Threads of a decode step (one sequence's, or a batched step of several: nf_stream_opts
 * n_threads_one) for a requested count: the request, or for 0 one per online CPU but one (at
 * least 1): a decode step's products are small per tile (a few hundred rows times one row per
 * sequence), a second thread's wake-ups cost more than it brings beside the fetcher (reads,
 * checksums) and the predictor, and on a 2-core machine one compute thread measured faster
 * than two, in exact and in sparse mode and for 8 sequences at once (docs/measurements.md). */
uint32_t nf_stack_decode_threads(uint32_t requested);

/* A process's view of the stack's region. */
struct nf_stack {
    struct nf_shm shm;
    struct nf_stack_config *cfg;
    struct nf_stack_sync *sync;
    struct nf_tile_entry *tiles; /* (n_tiles) */
    struct nf_slot_entry *slots; /* (n_slots) */
    uint8_t *pool;               /* (pool bytes: every class's n_slots * slot_size) */
    struct nf_ring *demand;      /* compute -> fetcher */
    struct nf_ring *prefetch;    /* predictor -> fetcher */
    uint8_t *act_base, *used_base, *rows_base;
    struct nf_stack_counters *ctr;
    struct nf_kv_word *kv;      /* (cfg->kv_tiles) */
    struct nf_kv_walk *kv_walk; /* with KV tiles, else NULL */
};

/* Creates and initializes the region `name` for model f per plan (fetcher). Returns 0 or a
 * negative code with a message in err. */
int nf_stack_create(struct nf_stack *st, const char *name, const struct nf_nft *f,
                    const struct nf_stack_plan *plan, float sparsity, uint32_t n_threads, char *err,
                    size_t errlen);

/* Attaches to an existing region (compute, predictor, tests), checking that it was made for f
 * (same file size and header checksum; f may be NULL to skip that check). Returns 0, -EAGAIN
 * while the creator is still initializing it, or a negative code with a message in err. */
int nf_stack_attach(struct nf_stack *st, const char *name, const struct nf_nft *f, char *err,
                    size_t errlen);

/* nf_stack_detach unmaps (every process; st is zeroed); the creator calls nf_stack_unlink(name)
 * last, after the others have detached (0 or a negated errno, -ENOENT when absent). */
void nf_stack_detach(struct nf_stack *st);
int nf_stack_unlink(const char *name);

/* The class of global slot id slot (an index into cfg->classes; the last class for an id out
 * of range, which callers never pass). At most NF_STACK_MAX_CLASSES steps: O(1). */
/* Classes of the pool: the weights' n_classes, and the KV tiles' after them when there are. */
static inline uint32_t nf_stack_pool_classes(const struct nf_stack_config *c)
{
    return c->n_classes + (c->kv_tiles ? 1u : 0u);
}

/* Tile ids: the .nft's, then the KV tiles'. */
static inline uint64_t nf_stack_n_ids(const struct nf_stack_config *c)
{
    return c->n_tiles + c->kv_tiles;
}

/* The id of KV tile (sequence seq, layer il, kind 0 K or 1 V, block b): kv_file.c's entry
 * order past the .nft's ids. */
static inline uint32_t nf_stack_kv_tile(const struct nf_stack_config *c, uint32_t seq, uint32_t il,
                                        uint32_t kind, uint32_t b)
{
    return (uint32_t)c->n_tiles + ((seq * c->n_layer + il) * 2 + kind) * c->kv_n_blk + b;
}

/* Where struct nf_kv_walk sits in NF_SHM_TILE_TABLE: the first cache line past the KV words. */
static inline uint64_t nf_stack_kv_walk_off(const struct nf_stack_config *c)
{
    return (c->kv_words_off + c->kv_tiles * sizeof(struct nf_kv_word) + 63u) / 64u * 64u;
}

static inline uint32_t nf_stack_slot_class(const struct nf_stack *st, uint32_t slot)
{
    const struct nf_stack_config *c = st->cfg;
    const uint32_t n = nf_stack_pool_classes(c);
    uint32_t k = 0;
    while (k + 1 < n && slot >= c->classes[k].first_slot + c->classes[k].n_slots)
        k++;
    return k;
}

static inline uint8_t *nf_stack_slot_ptr(const struct nf_stack *st, uint32_t slot)
{
    const struct nf_stack_class *k = &st->cfg->classes[nf_stack_slot_class(st, slot)];
    return st->pool + k->pool_off + (slot - k->first_slot) * k->slot_size;
}

static inline uint64_t nf_stack_slot_size(const struct nf_stack *st, uint32_t slot)
{
    return st->cfg->classes[nf_stack_slot_class(st, slot)].slot_size;
}

/* Bytes of the whole pool (every class's slots). */
static inline uint64_t nf_stack_pool_bytes(const struct nf_stack *st)
{
    const struct nf_stack_class *k = &st->cfg->classes[nf_stack_pool_classes(st->cfg) - 1];
    return k->pool_off + k->n_slots * k->slot_size;
}

/* The class a tile of `padded` bytes goes in: the smallest whose slots fit it, or -1 when none
 * does. Works on a config or a plan's class table. */
int nf_stack_class_of(const struct nf_stack_class *classes, uint32_t n_classes, uint64_t padded);
/* Shutdown of the whole stack (every daemon on a Shutdown request or signal): clears the
 * caller's ready bit, sets `stop` and wakes every bell so that every loop sees it. */
void nf_stack_stop(struct nf_stack *st, uint32_t ready_bit);

/* --- Activation and used-set slots (shm/slots.c) ------------------------------------------ */

/* Layer layer's slots (NULL for a layer out of range). */
struct nf_act_slot *nf_stack_act(const struct nf_stack *st, uint32_t layer);
struct nf_used_slot *nf_stack_used(const struct nf_stack *st, uint32_t layer);
/* Row `row` of a batched step's residual stream after layer `layer` (compute publishes each
 * row of a MoE model's batched step as soon as it is final, so that the predictor forecasts
 * the union of the rows' experts): NULL past cfg->act_rows (0 unless the stack runs a MoE
 * model with n_seq > 1) or n_layer. */
struct nf_act_slot *nf_stack_act_row(const struct nf_stack *st, uint32_t layer, uint32_t row);

/* Each slot is a seqlock (shm/seqlock.h) with a single writer, the compute thread that runs the
 * layers; the predictor and the fetcher read. The caller checks that n_embd floats or
 * ceil(n_groups / 64) words fit the slot's stride (cfg->act_stride, cfg->used_stride). */
void nf_act_slot_publish(struct nf_act_slot *a, uint64_t step, uint32_t layer, const float *x,
                         uint32_t n_embd);
void nf_used_slot_publish(struct nf_used_slot *u, uint64_t step, uint32_t layer,
                          const uint64_t *bits, uint32_t n_groups);

/* Reads activation slot a in up to tries attempts (yielding the CPU between them while the
 * writer is inside): its step, layer and n_embd, and when x is not NULL and the slot holds
 * x_len floats (n_embd == x_len) the vector into x. Returns the sequence of the whole copy (even,
 * non-zero), or 0 when the slot was never written or a writer was inside at every attempt (the
 * outputs then mean nothing). */
uint64_t nf_act_slot_read(const struct nf_act_slot *a, int tries, uint64_t *step, uint32_t *layer,
                          uint32_t *n_embd, float *x, uint32_t x_len);
/* Reads used slot u likewise: its step and n_groups, and its bitmap into bits[0..words)
 * (zero-filled beyond the slot's ceil(n_groups / 64) words, truncated to words). */
uint64_t nf_used_slot_read(const struct nf_used_slot *u, int tries, uint64_t *step,
                           uint32_t *n_groups, uint64_t *bits, uint32_t words);

/* --- Tile protocol ---------------------------------------------------------------------- */

/* Compute: pins tile id if READY and returns its bytes (stable until nf_tile_unpin), or NULL
 * when it is not READY (nothing pinned). */
const uint8_t *nf_tile_try_pin(struct nf_stack *st, uint32_t id, uint64_t step);
void nf_tile_unpin(struct nf_stack *st, uint32_t id);
/* As nf_tile_try_pin without recording a use (last_use is the fetcher's signal of where compute
 * is): for readers other than compute, like the predictor reading a predictor tile. Release
 * with nf_tile_unpin. */
const uint8_t *nf_tile_try_peek(struct nf_stack *st, uint32_t id);

/* Compute: pins tile id, requesting it on the demand ring if needed and sleeping on tile_done
 * until it is READY. Returns the bytes, or NULL with *rc set: NF_ECHECKSUM / -EIO when the
 * fetcher marked it ERROR, -ECANCELED when the stack is stopping, -EOWNERDEAD when a daemon of
 * the stack died (sync->dead_mask), -ETIMEDOUT after timeout_ms (< 0: none). Adds the time slept
 * to c_stall_ns. Must be called by one compute thread only (the demand ring has one producer). */
const uint8_t *nf_tile_pin_wait(struct nf_stack *st, uint32_t id, uint64_t step, int timeout_ms,
                                int *rc);

/* Compute (the thread that calls nf_tile_pin_wait): asks for tile id on the demand ring without
 * waiting, as a hint that it will pin it soon (EMPTY -> QUEUED, or a QUEUED prefetch raised to
 * demand). Returns 1 if a request was enqueued, 0 if not needed (loading, ready, error), -ENOBUFS
 * when the demand ring is full (nf_tile_pin_wait asks again). Rings fetch_bell when flush. */
int nf_tile_request(struct nf_stack *st, uint32_t id, bool flush);

/* Predictor: asks for tile id with priority prio unless it is already queued, loading or ready
 * (CAS EMPTY -> QUEUED). Returns 1 if a request was enqueued, 0 if not needed, -ENOBUFS when
 * the prefetch ring is full (the tile stays EMPTY). Rings fetch_bell only when flush is true
 * (batch requests, then flush once). */
int nf_tile_prefetch(struct nf_stack *st, uint32_t id, uint32_t prio, bool flush);

/* Predictor: withdraws its prefetch of tile id, which its latest plan no longer holds, when the
 * tile is QUEUED or LOADING: the fetcher then drops the request if it has not started the read
 * (QUEUED -> EMPTY), or frees the slot as soon as the read lands; a tile compute asked for is
 * kept. Returns 1 if the withdrawal was enqueued, 0 if not needed, -ENOBUFS when the prefetch
 * ring is full. Rings fetch_bell only when flush is true. */
int nf_tile_prefetch_drop(struct nf_stack *st, uint32_t id, bool flush);

/* Fetcher side. The functions that link or unlink slots (begin_load, try_evict) run on one
 * fetcher thread; end_load and fail may run on I/O worker threads. */
/* Starts loading tile id into slot (chosen by the fetcher's policy; the slot must be free):
 * state EMPTY/QUEUED -> LOADING, slot and tile entries linked. Returns 0, or -EALREADY when the
 * tile is already LOADING/READY (or EVICTING/ERROR; nothing changed), -EBUSY when the slot is
 * not free, -EINVAL for an id or slot out of range. */
int nf_tile_begin_load(struct nf_stack *st, uint32_t id, uint32_t slot);
/* Marks a loaded tile READY (or ERROR with -EIO when ok is false) and wakes waiters. */
void nf_tile_end_load(struct nf_stack *st, uint32_t id, bool ok);
/* Marks a LOADING tile ERROR with code err (NF_ECHECKSUM, -EIO, ...: what nf_tile_pin_wait
 * returns for it), frees its slot and wakes waiters. While a tile is ERROR its entry's `slot`
 * field holds the negated code instead of a slot index. ERROR is final for the region's life. */
void nf_tile_fail(struct nf_stack *st, uint32_t id, int err);
/* The code of an ERROR tile (0 when the tile is not ERROR). */
int nf_tile_error(const struct nf_stack *st, uint32_t id);
/* Fetcher: gives up a request it will not serve (a prefetch it drops): QUEUED -> EMPTY, so
 * the predictor may ask again. Returns true if it did. Never needed for demand requests (the
 * fetcher serves them all; compute re-requests EMPTY tiles anyway). */
bool nf_tile_cancel(struct nf_stack *st, uint32_t id);
/* Tries to evict the tile held in slot (READY, unpinned, not resident): returns true when the
 * slot is now free (also when it already was). Counts f_evictions. */
bool nf_slot_try_evict(struct nf_stack *st, uint32_t slot);

/* --- KV block tiles (shm/kvtile.c) -------------------------------------------------------- */

/* Compute: the block of KV tile id is durable in the file at its current generation (its
 * write completed): the fetcher may read it. */
void nf_kv_tile_durable(struct nf_stack *st, uint32_t id);
/* Compute: the block of KV tile id is to be rewritten: a new generation, not durable. A copy
 * of the old bytes in the pool is no longer pinned (nf_kv_tile_pin_wait). */
void nf_kv_tile_invalidate(struct nf_stack *st, uint32_t id);
/* Compute: as nf_tile_pin_wait for a durable KV tile, refusing a copy read at an older
 * generation than the block's: it is unpinned, the fetcher asked (NF_TILE_REQ_STALE on the
 * demand ring) to evict it and read it again, and the wait goes on. */
const uint8_t *nf_kv_tile_pin_wait(struct nf_stack *st, uint32_t id, uint64_t step, int timeout_ms,
                                   int *rc);
/* Fetcher: the block word of KV tile id (gen << 1 | durable), read before its read starts. */
uint32_t nf_kv_tile_word(const struct nf_stack *st, uint32_t id);
/* Fetcher: records that the slot of KV tile id holds generation gen (before READY). */
void nf_kv_tile_set_read_gen(struct nf_stack *st, uint32_t id, uint32_t gen);
/* True when KV tile id is READY at an older generation than its block's. */
bool nf_kv_tile_stale(const struct nf_stack *st, uint32_t id);
/* True when KV tile id's block is durable (the fetcher would read it). */
bool nf_kv_tile_durable_now(const struct nf_stack *st, uint32_t id);
/* Compute: the walk of layer in step ended; this eval's walks visit slots[0..n) (n at most
 * NF_KV_WALK_MAX, 0: none). No-op without KV tiles. */
void nf_kv_walk_publish(struct nf_stack *st, uint64_t step, uint32_t layer, const uint32_t *slots,
                        uint32_t n);
/* Predictor: reads the walk record (seqlock, up to tries attempts): its step, layer, and the
 * slots into slots[0..*n) (slots holds NF_KV_WALK_MAX). Returns the stable sequence, or 0 when
 * it was never written, the writer stayed inside, or there are no KV tiles. */
uint64_t nf_kv_walk_read(const struct nf_stack *st, int tries, uint64_t *step, uint32_t *layer,
                         uint32_t *slots, uint32_t *n);

#endif
