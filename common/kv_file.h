/* kv_file.h - the KV cache as blocks of a file on the SSD (issue 15, item 1).
 *
 * The streaming engine's KV cache keeps its in-RAM layout, (slot, layer, n_ctx, row), but in an
 * address range reserved without memory (MAP_NORESERVE): only the pages in use are resident. A
 * row is bytes here (row_k, row_v): F16 halves, or the q8_0 / q4_0 blocks of kv_quant.h.
 * The file mirrors that layout byte for byte (K of every slot and layer, then V), cut into
 * blocks of `block` positions per layer:
 *  - the newest block of each layer and slot (the one being written) stays resident;
 *  - older blocks are written to the file as they fill up (write-behind, io_uring, O_DIRECT
 *    when the block is a multiple of 4096 bytes), and their pages are released once the write
 *    completed, so a row is always durable in the file or still resident;
 *  - the attention walks a layer's cells block by block (nf_attn_walk, model_forward.c: the
 *    K blocks for the scores, then the V blocks for the sums) and asks for each block with
 *    nf_kv_file_need: a file-backed block is read back into a slot of the window, a buffer
 *    of a fixed number of blocks (nf_kv_file_window_blocks) mapped and touched once at open
 *    and reused (never its pages given back), whose oldest block makes room for a new one,
 *    and the reads of the blocks that follow in the walk (the rest of the layer, then the
 *    next layer's) are issued ahead, as many as the window holds;
 *    nf_kv_file_layer_store gives the layer's blocks back after its attention.
 *  - deepseek2's latent attention still reads a whole layer back (nf_kv_file_layer_load).
 * So the attention kernels see exactly the rows of the in-RAM cache (bit-identical output),
 * while the resident KV is the window plus the newest blocks of each layer, whatever n_ctx.
 *
 * A sequence only ever reads back blocks it wrote itself since its slot was reset, and the file
 * is created empty (truncated) when the engine starts: a crashed process leaves nothing that a
 * later request can read. All calls must come from one thread (the engine's). */
#ifndef NF_KV_FILE_H
#define NF_KV_FILE_H

#include <stddef.h>
#include <stdint.h>

struct nf_kv_file_opts {
    const char *path; /* the file, created or truncated; removed by nf_kv_file_close */
    int n_layer, n_ctx, n_slots;
    int block;    /* positions per block (>= 1) */
    size_t row_k; /* bytes of one position's K row in one layer */
    size_t row_v; /* the same for V; 0: no V cache (deepseek2's latent) */
    int window;   /* blocks the window holds (>= 2); 0: nf_kv_file_window_blocks */
};

/* Monotonic counters. */
struct nf_kv_file_stats {
    uint64_t read_bytes, write_bytes; /* bytes read back and written */
    uint64_t wait_ns;                 /* time nf_kv_file_layer_load waited for reads */
    uint64_t layer_loads;             /* layers nf_kv_file_layer_load read back whole */
    uint64_t resident_max; /* most bytes read back and resident at once (window + whole layers) */
    uint64_t window;       /* what the window holds at most: its blocks times the widest row */
};

struct nf_kv_file;

/* Creates (O_TRUNC) the file, reserves the address range and sets up io_uring (a pread/pwrite
 * fallback when io_uring is not available). Returns 0 or a negative errno with a one-line
 * reason in err naming the path. */
int nf_kv_file_open(struct nf_kv_file **out, const struct nf_kv_file_opts *o, char *err,
                    size_t errlen);
/* Waits for the I/O in flight, releases the memory and removes the file. NULL is a no-op. */
void nf_kv_file_close(struct nf_kv_file *kf);

/* Slot `slot`'s caches: (n_layer, n_ctx) rows of row_k bytes and of row_v bytes (NULL without
 * V); the rows' element type is the caller's. */
void *nf_kv_file_k(struct nf_kv_file *kf, int slot);
void *nf_kv_file_v(struct nf_kv_file *kf, int slot);

/* Issues the reads of layer il's file-backed blocks of slot (nothing when they are resident or
 * already on their way). */
void nf_kv_file_layer_prefetch(struct nf_kv_file *kf, int slot, int il);
/* Makes every position of layer il of slot resident: issues its reads if needed and waits for
 * them. Returns 0 or a negative errno (a failed read, with nf_kv_file_error saying which). */
int nf_kv_file_layer_load(struct nf_kv_file *kf, int slot, int il);
/* The attention walk: makes block b (positions [b * block, (b + 1) * block)) of layer il of
 * slot resident, of K (kind 0) or V (kind 1), waiting for its read if it is file-backed, and
 * issues the reads of the blocks that follow it in the walk's order. Returns how many blocks
 * from b on (at most b_end - b) are resident now and stay so until the next call, their rows
 * one after the other from *base (position b * block's row: in the window's memory for a
 * file-backed block, at its address in nf_kv_file_k / _v for a resident one; a run is one or
 * the other), or a negative errno (a failed read; nf_kv_file_error says which). */
int nf_kv_file_need(struct nf_kv_file *kf, int slot, int il, int kind, int b, int b_end,
                    const void **base);
/* Issues the reads of the first blocks of the walk from layer il on (as many as the window
 * holds), so that they overlap what runs before layer il's attention. Returns 0 or a negative
 * errno. */
int nf_kv_file_walk_prefetch(struct nf_kv_file *kf, int slot, int il);
/* After layer il's attention wrote its rows up to position n_end (exclusive): submits the
 * writes of the blocks that filled up, and releases the file-backed blocks whose writes
 * completed. Returns 0 or a negative errno of an earlier failed write. */
int nf_kv_file_layer_store(struct nf_kv_file *kf, int slot, int il, int n_end);

/* Forgets slot's sequence (waits for its I/O, releases its pages). */
void nf_kv_file_reset(struct nf_kv_file *kf, int slot);
/* Keeps the first n_past positions of slot's sequence, later ones to be overwritten: the block
 * holding position n_past becomes resident again (read back if it was released, nothing when
 * n_past starts a block), and the pages of the positions after that block are given back, so
 * that at most that block of each layer is resident after it. Returns 0 or a negative errno. */
int nf_kv_file_rollback(struct nf_kv_file *kf, int slot, int n_past);

/* Blocks of (slot, il) durable in the file and given back from memory: [0, this). Blocks from
 * there on are resident (nf_kv_file_need hands out their own addresses). */
int nf_kv_file_durable_blocks(const struct nf_kv_file *kf, int slot, int il);

void nf_kv_file_get_stats(const struct nf_kv_file *kf, struct nf_kv_file_stats *out);
/* The window's default size in blocks for blocks of `block` positions of row bytes (K and V):
 * about 16 MiB, or half a layer's blocks for n_ctx positions when that is less, at least 4 and
 * at most 1024 blocks. */
int nf_kv_file_window_blocks(int n_ctx, int block, size_t row);
/* The most KV bytes resident at once by construction: per slot two blocks of every layer (the
 * newest and one being written), plus the window (nf_kv_file_window_blocks blocks of K and V
 * rows, counted whole); at most the whole cache. Independent of n_ctx past that. */
uint64_t nf_kv_file_resident_bound(int n_layer, int n_ctx, int n_slots, int block, size_t row);
/* The same without the window: per slot two blocks of every layer, at most the whole cache
 * (what stays in compute's memory when the pool holds the blocks read back). */
uint64_t nf_kv_file_newest_bound(int n_layer, int n_ctx, int n_slots, int block, size_t row);
/* A prompt chunk's attention reads its layer back whole (nf_kv_file_layer_load) instead of
 * walking the window when the layer's rows for n_ctx positions take at most this many bytes:
 * the chunk's queries then share each cell's read and the in-RAM attention's query tiles, where
 * the walk reads the layer once per wave of (token, head) tasks and scores each task alone. */
#define NF_KV_LAYER_BYTES ((uint64_t)64 << 20)
/* The bytes a prompt chunk reads back whole, resident beside nf_kv_file_resident_bound while
 * its layer's attention runs: n_ctx * row (K and V of one position in one layer) when that is at
 * most NF_KV_LAYER_BYTES, else 0 (the chunk walks the window). */
uint64_t nf_kv_file_prompt_layer(int n_ctx, size_t row);
/* The file's size for these options (sparse: blocks take disk space as they are written). */
uint64_t nf_kv_file_bytes(int n_layer, int n_ctx, int n_slots, int block, size_t row);
const char *nf_kv_file_error(const struct nf_kv_file *kf);
int nf_kv_file_n_slots(const struct nf_kv_file *kf);

#endif
