/* nft.h - NanoFlow tile files (.nft): an SSD-friendly, checksummed layout of a GGUF model.
 *
 * File layout (all little-endian; every section and every tile starts on a 4096-byte boundary and
 * is padded with zeros to a multiple of 4096, so each can be read with O_DIRECT):
 *  1. header (struct nf_nft_header, padded to 4096): magic "NFT1", major/minor version, header
 *     size, flags (NF_NFT_IN_PLACE alone is defined: any other bit is refused), file size, the
 *     offset/size/checksum of the metadata and of the tile index, the offset of the first tile,
 *     hyperparameters (layers,
 *     width, FFN width, vocabulary, experts, heads), the convert settings (tile size, predictor
 *     rank and type, embedding rows per tile), byte totals, the calibration section's place
 *     (version 1.1; zero when absent, as every 1.0 file has it), and last the header checksum
 *     (XXH3-64 of every header byte before it).
 *  2. metadata: a GGUF v3 image holding the source file's metadata (every key, tokenizer
 *     included) and its tensor infos (names, shapes, types), without tensor data. The reader
 *     exposes it as a struct nf_gguf (nf_gguf_open_meta_mem), so hparam and tokenizer code run
 *     unchanged on a .nft. Checksum: XXH3-64 of the image bytes.
 *  3. tile index: n_tiles records of struct nf_nft_tile (64 bytes each). A tile's id is its
 *     position here; ids are stable for a given file. Records are sorted by file offset and,
 *     within each (layer, kind), numbered 0..n-1 contiguously, which gives O(1) lookup.
 *     Checksum: XXH3-64 of the records.
 *  4. tile data, in index order: per tile `size` bytes, zero-padded to a multiple of 4096. Each
 *     tile's checksum is the XXH3-64 of its whole padded extent.
 *  5. optional calibration (minor version 1, written by convert --calibrate), after the last
 *     tile: struct nf_nft_calib_header, then per layer a struct nf_nft_calib_layer_hdr followed
 *     by order (n_groups u32: the groups hottest first), mean_mag (n_groups f32: mean over the
 *     calibration tokens of the group's mean |silu(gate) * up|) and freq (n_levels x n_groups
 *     f32: the fraction of tokens whose group magnitude exceeds act_thr of that level). Per level
 *     s, act_thr is the s-quantile of the layer's group magnitudes and pred_thr the s-quantile
 *     of the predictor's group scores (nf_group_scores), so keeping groups above a threshold
 *     skips a fraction s of them on average. MoE layers have n_groups 0. Checksum: XXH3-64 of
 *     the section's bytes (calib_size, unpadded). *
 * Tile kinds and what their bytes hold (all weights bit-identical to the GGUF source; a "row" is
 * one row of the source tensor, ne[0] elements of its type):
 *  - EMBD: token_embd rows [first, first + count); embd_rows_per_tile rows per tile, chosen so a
 *    tile is a few pages, so a token's row is one small read (tile = token / rows_per_tile).
 *  - OUTPUT: rows of output.weight (absent when the output is tied to token_embd).
 *  - OUTPUT_NORM, ROPE_FREQS: the whole tensor in one tile (phi3's LongRoPE factors: two
 *    ROPE_FREQS tiles, row 0 rope_factors_short, row 1 rope_factors_long).
 *  - ATTN_NORM, FFN_NORM: a layer's norm vector in one tile.
 *  - ATTN_Q, ATTN_K, ATTN_V, ATTN_O: a layer's rows [first, first + count), about tile_size bytes.
 *  - FFN: a dense layer's neurons [first, first + count) as groups of `group` neurons (G = the
 *    block size of ffn_down's type, so ffn_down columns are whole quant blocks; for plain types the
 *    largest power of two <= 32 dividing n_ff). Group j of a tile is laid out as
 *        gate rows (G rows of n_embd, type[0]) | up rows (G rows, type[1]) |
 *        down columns (n_embd rows of G elements, type[2]: block j of each ffn_down row),
 *    so one read brings all a group needs, and nf_nft_bundle_group() gives pointers the
 *    Foundation kernels take directly. Several groups per tile, up to tile_size (one at least).
 *    In a MoE layer FFN tiles hold its shared expert (qwen2moe's ffn_*_shexp, of its own width
 *    n_ff_shexp), which every token uses.
 *  - EXPERT: the same bundle layout for one expert of a MoE layer (its slice of ffn_*_exps);
 *    `expert` names it, and index runs over all experts' tiles of the layer, expert-major.
 *  - ROUTER: a MoE layer's ffn_gate_inp (n_expert rows).
 *  - PRED_LOWRANK: a dense layer's FFN predictor, ffn_gate ~= A B with A (n_ff, rank) then
 *    B (rank, n_embd), row-major, elements of type[0] (F16 or F32); scores = A (B x).
 *  - PRED_ROUTER: a MoE layer's predictor, a copy of its router (type[0], n_expert rows).
 *  - ATTN_Q_BIAS, ATTN_K_BIAS, ATTN_V_BIAS (qwen2), ATTN_Q_NORM, ATTN_K_NORM (qwen3, gemma3):
 *    a layer's bias or per-head norm vector in one tile (one F32 row), present only when the
 *    source has the tensor; readers without these kinds refuse such a file by its kind.
 *  - ATTN_POST_NORM, FFN_POST_NORM (gemma3): a layer's post_attention_norm or post_ffw_norm
 *    vector (n_embd) in one tile, the same way.
 *  - SHEXP_GATE (qwen2moe): a MoE layer's shared-expert gate, ffn_gate_inp_shexp (one row).
 *  - EXP_PROBS_B (glm4moe, deepseek2 V3): a MoE layer's expert score-correction bias,
 * exp_probs_b.bias (n_expert F32, one row). glm4moe's post_attention_norm, its FFN input norm, is
 * the layer's FFN_NORM tile; its leading dense layers (in a MoE model) have FFN tiles and no
 *    PRED_LOWRANK; its next-token-prediction blocks are not in the file.
 *  - deepseek2's latent attention: ATTN_Q_A, ATTN_Q_B, ATTN_KV_A (attn_q_a, attn_q_b,
 *    attn_kv_a_mqa) row tiles like ATTN_Q; ATTN_Q_A_NORM, ATTN_KV_A_NORM one F32 row each;
 *    ATTN_K_B, ATTN_V_B the per-head attn_k_b / attn_v_b as n_head x ne[1] rows, each tile
 *    whole heads. V2-Lite's plain attn_q is ATTN_Q; attn_output ATTN_O. Its leading dense layers
 * have FFN tiles, its MoE layers FFN tiles for the (ungated) shared expert besides the EXPERT ones.
 *  - ATTN_O_BIAS, ATTN_SINKS, ROUTER_BIAS (gpt-oss): a layer's attn_output.bias (n_embd),
 *    attn_sinks (n_head) or ffn_gate_inp.bias (n_expert), one F32 row in one tile (the router
 *    bias is added to the logits the weights come from, not for selection only as EXP_PROBS_B).
 *  - EXP_GATE_BIAS, EXP_UP_BIAS, EXP_DOWN_BIAS (gpt-oss): rows of ffn_gate_exps.bias,
 *    ffn_up_exps.bias (n_ff each) or ffn_down_exps.bias (n_embd), one row per expert, F32,
 *    about tile_size bytes a tile: every token reads its chosen experts' rows. gpt-oss's
 *    post_attention_norm is its FFN norm and goes into the FFN_NORM tile.
 * phi3's fused tensors are cut into these kinds: attn_qkv's Q, K and V row ranges into ATTN_Q,
 * ATTN_K and ATTN_V tiles, its ffn_up's gate half and up half into the FFN bundles.
 * Layer-less kinds (EMBD, OUTPUT, OUTPUT_NORM, ROPE_FREQS) have layer NF_NFT_NO_LAYER.
 *
 * In-place index (version 1.2, header flag NF_NFT_IN_PLACE; `up` names it NAME.nfi): the same
 * header, metadata and tile index, and no tile data (data_offset is the file's end). The
 * metadata adds nanoflow.source.paths (string[]: the GGUF parts, absolute), .sizes and
 * .mtimes_ns (u64[]); a tile's `part` indexes them and its offset is a byte offset in that part
 * (GGUF data is aligned to 32 bytes only, so tiles are not page-aligned: readers read the span
 * nf_nft_tile_span() from offset - nf_nft_tile_skew() and find the tile at the skew). Its checksum
 * is the XXH3-64 of its size bytes. Tiles are in (layer, kind) runs as above, not in file
 * order, and a PRED_ROUTER names its ROUTER's bytes. FFN and EXPERT tiles are row slices
 * (type[3] = enum nf_slice, group = count, type[0] the tensor's type, ne0 its row length):
 * a dense layer's ffn_gate rows, then ffn_up rows, then ffn_down rows, about tile_size bytes a
 * tile; an expert's three whole slices of ffn_gate_exps, ffn_up_exps, ffn_down_exps (expert-major
 * like the bundles). There are no PRED_LOWRANK tiles and no calibration: sparse mode needs a
 * .nft. */
#ifndef NF_NFT_H
#define NF_NFT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "gguf.h"
#include "quants.h"

#define NF_NFT_MAGIC         0x3154464Eu /* "NFT1" */
#define NF_NFT_MAJOR         1
#define NF_NFT_MINOR         1    /* 1.1: calibration section */
#define NF_NFT_MINOR_INPLACE 2    /* 1.2: in-place index (header flag NF_NFT_IN_PLACE) */
#define NF_NFT_IN_PLACE      0x1u /* header flag: tiles live in the source GGUF, see below */
#define NF_NFT_MAX_PARTS     256  /* most source files an in-place index may name */
#define NF_NFT_ALIGN         4096u
#define NF_NFT_NO_LAYER      UINT32_MAX
#define NF_NFT_NO_EXPERT     UINT32_MAX
#define NF_NFT_MAX_LAYERS    4096 /* bounds the lookup table a hostile header could ask for */
#define NF_NFT_EMBD_TILE_MAX (64u * 1024) /* largest embedding tile the row grouping aims for */

enum nf_tile_kind {
    NF_TILE_EMBD = 0,
    NF_TILE_OUTPUT,
    NF_TILE_OUTPUT_NORM,
    NF_TILE_ROPE_FREQS,
    NF_TILE_ATTN_NORM,
    NF_TILE_ATTN_Q,
    NF_TILE_ATTN_K,
    NF_TILE_ATTN_V,
    NF_TILE_ATTN_O,
    NF_TILE_FFN_NORM,
    NF_TILE_FFN,
    NF_TILE_ROUTER,
    NF_TILE_EXPERT,
    NF_TILE_PRED_LOWRANK,
    NF_TILE_PRED_ROUTER,
    NF_TILE_ATTN_Q_BIAS, /* qwen2 */
    NF_TILE_ATTN_K_BIAS,
    NF_TILE_ATTN_V_BIAS,
    NF_TILE_ATTN_Q_NORM, /* qwen3, qwen3moe */
    NF_TILE_ATTN_K_NORM,
    NF_TILE_ATTN_POST_NORM, /* gemma3 */
    NF_TILE_FFN_POST_NORM,
    NF_TILE_SHEXP_GATE,  /* qwen2moe */
    NF_TILE_EXP_PROBS_B, /* glm4moe, deepseek2 V3 */
    NF_TILE_ATTN_Q_A,    /* deepseek2 */
    NF_TILE_ATTN_Q_A_NORM,
    NF_TILE_ATTN_Q_B,
    NF_TILE_ATTN_KV_A,
    NF_TILE_ATTN_KV_A_NORM,
    NF_TILE_ATTN_K_B,
    NF_TILE_ATTN_V_B,
    NF_TILE_ATTN_O_BIAS, /* gpt-oss */
    NF_TILE_ATTN_SINKS,
    NF_TILE_ROUTER_BIAS,
    NF_TILE_EXP_GATE_BIAS,
    NF_TILE_EXP_UP_BIAS,
    NF_TILE_EXP_DOWN_BIAS,
    NF_TILE_KIND_COUNT,
};

/* What an in-place FFN or EXPERT tile holds (type[3]): rows of one of the three tensors. */
enum nf_slice {
    NF_SLICE_NONE = 0, /* a bundle tile (.nft) */
    NF_SLICE_GATE = 1, /* rows [first, +count) of ffn_gate (of the expert's slice) */
    NF_SLICE_UP = 2,
    NF_SLICE_DOWN = 3,
};

/* One tile index record, as stored (64 bytes). */
struct nf_nft_tile {
    uint64_t offset;   /* absolute file offset, a multiple of 4096 */
    uint64_t size;     /* data bytes; the tile takes nf_nft_padded(size) bytes on disk */
    uint64_t checksum; /* XXH3-64 of the padded extent */
    uint32_t layer;    /* NF_NFT_NO_LAYER for layer-less kinds */
    uint16_t kind;     /* enum nf_tile_kind */
    uint16_t part;     /* in-place index: the source GGUF part holding the tile; else 0 */
    uint32_t index;    /* position within (layer, kind) */
    uint32_t expert;   /* EXPERT tiles: the expert; else NF_NFT_NO_EXPERT */
    uint32_t first;    /* first row, or first neuron (FFN/EXPERT: within the expert) */
    uint32_t count;    /* rows, or neurons (FFN/EXPERT), or n_ff (PRED_LOWRANK) */
    uint32_t group;    /* FFN/EXPERT: neurons per group (G); else 0 */
    uint32_t rank;     /* PRED_LOWRANK: the rank; else 0 */
    uint32_t ne0;      /* elements per row (FFN/EXPERT/PRED: n_embd) */
    uint8_t type[4];   /* enum nf_type of gate, up, down (FFN/EXPERT); else type[0] only; in
                        * an in-place index type[3] is the enum nf_slice of a row-slice tile */
};
_Static_assert(sizeof(struct nf_nft_tile) == 64, "nf_nft_tile is 64 bytes on disk");

/* The file header, as stored at offset 0. */
struct nf_nft_header {
    uint32_t magic; /* NF_NFT_MAGIC */
    uint16_t major;
    uint16_t minor;
    uint32_t header_size; /* sizeof(struct nf_nft_header) */
    uint32_t flags;       /* 0 */
    uint64_t file_size;
    uint64_t meta_offset, meta_size, meta_checksum;
    uint64_t index_offset, n_tiles, index_checksum;
    uint64_t data_offset;     /* first tile */
    uint64_t weight_bytes;    /* sum of the source tensors' data bytes */
    uint64_t predictor_bytes; /* sum of the predictor tiles' data bytes */
    uint32_t n_layer, n_embd, n_ff, n_vocab;
    uint32_t n_expert, n_expert_used, n_head, n_head_kv;
    uint32_t tile_size;          /* --tile-size the file was written with */
    uint32_t pred_rank;          /* rank of the low-rank predictors (0: none) */
    uint32_t pred_type;          /* enum nf_type of the low-rank predictors */
    uint32_t embd_rows_per_tile; /* rows per EMBD tile */
    uint32_t tied_output;        /* 1 when there is no output.weight */
    uint32_t calib_levels;       /* sparsity levels in the calibration section (0: none) */
    uint64_t calib_offset, calib_size, calib_checksum; /* 0 when there is no calibration */
    uint64_t header_checksum;                          /* XXH3-64 of the bytes before this field */
};
_Static_assert(sizeof(struct nf_nft_header) == 184, "nf_nft_header layout changed");
_Static_assert(offsetof(struct nf_nft_header, calib_offset) == 152, "1.0 reserved bytes reused");
_Static_assert(offsetof(struct nf_nft_header, header_checksum) == 176, "header checksum moved");

#define NF_NFT_CALIB_MAGIC      0x42434E46u /* "NFCB" */
#define NF_NFT_CALIB_MAX_LEVELS 8

/* The calibration section's header, as stored. */
struct nf_nft_calib_header {
    uint32_t magic; /* NF_NFT_CALIB_MAGIC */
    uint32_t n_layer;
    uint32_t n_levels;                     /* 1..NF_NFT_CALIB_MAX_LEVELS */
    uint32_t n_tokens;                     /* calibration tokens evaluated */
    float levels[NF_NFT_CALIB_MAX_LEVELS]; /* sparsity levels, increasing, in (0, 1) */
};
_Static_assert(sizeof(struct nf_nft_calib_header) == 48, "calibration header is 48 bytes");

/* One layer's calibration record header, as stored; its arrays follow it. */
struct nf_nft_calib_layer_hdr {
    uint32_t n_groups; /* n_ff / group, or 0 (MoE layer) */
    uint32_t group;    /* neurons per group (the layer's FFN tile group) */
    float act_thr[NF_NFT_CALIB_MAX_LEVELS];
    float pred_thr[NF_NFT_CALIB_MAX_LEVELS];
};
_Static_assert(sizeof(struct nf_nft_calib_layer_hdr) == 72, "calibration layer header size");

/* A layer's calibration, pointing into the open file's copy of the section. */
struct nf_nft_calib_layer {
    uint32_t n_groups, group;
    const float *act_thr, *pred_thr; /* (n_levels) */
    const uint32_t *order;           /* (n_groups) hottest first */
    const float *mean_mag;           /* (n_groups) */
    const float *freq;               /* (n_levels, n_groups) */
};

/* An open .nft file. */
struct nf_nft {
    int fd;
    struct nf_nft_header hdr;
    struct nf_nft_tile *tiles; /* (n_tiles) */
    uint64_t n_tiles;
    struct nf_gguf *meta; /* embedded metadata (owned) */
    char path[256];
    /* Private: lookup table, (n_layer + 1, NF_TILE_KIND_COUNT) {first id, count}. */
    uint64_t *run_first;
    uint32_t *run_count;
    void *meta_image;
    void *calib;           /* calibration section (validated), or NULL */
    uint64_t *calib_layer; /* (n_layer) byte offset of each layer record in calib */
    /* The files tile data is read from: the .nft itself (n_parts 1, part_fd[0] == fd), or the
     * source GGUF parts of an in-place index, named in its metadata. */
    bool in_place;
    uint32_t n_parts;
    int *part_fd;        /* (n_parts) */
    uint64_t *part_size; /* (n_parts) */
};

/* A group of neurons inside an FFN or EXPERT tile buffer (pointers into that buffer). */
struct nf_nft_bundle {
    const void *gate; /* (G, n_embd) rows of gate_type */
    const void *up;   /* (G, n_embd) rows of up_type */
    const void *down; /* (n_embd, G): row r holds ffn_down[r][first .. first + G) */
    enum nf_type gate_type, up_type, down_type;
    size_t gate_row_size, up_row_size, down_row_size; /* bytes per row of each part */
    int n_neurons;                                    /* G */
    int n_embd;
    uint32_t first; /* first neuron of the group (within the expert) */
};

/* Bytes a tile of `size` data bytes takes on disk. */
static inline uint64_t nf_nft_padded(uint64_t size)
{
    return (size + NF_NFT_ALIGN - 1) / NF_NFT_ALIGN * NF_NFT_ALIGN;
}

/* Where a tile's bytes start inside the 4096-aligned span read for it: 0 in a .nft, the offset
 * within its page in an in-place index (GGUF data is aligned to 32 bytes only). */
static inline uint64_t nf_nft_tile_skew(const struct nf_nft_tile *t)
{
    return t->offset % NF_NFT_ALIGN;
}

/* Bytes of the aligned span that covers tile t: what a slot or an O_DIRECT buffer for it must
 * hold (nf_nft_padded(size) in a .nft). */
static inline uint64_t nf_nft_tile_span(const struct nf_nft_tile *t)
{
    return nf_nft_padded(nf_nft_tile_skew(t) + t->size);
}

/* The descriptor tile t is read from (O_DIRECT when the file was opened direct). */
int nf_nft_tile_fd(const struct nf_nft *f, const struct nf_nft_tile *t);

/* XXH3-64 of tile t as its index checksum covers it, given the span read for it at span (the
 * padded extent in a .nft; the size bytes at the skew in an in-place index). */
uint64_t nf_nft_tile_sum(const struct nf_nft *f, const struct nf_nft_tile *t, const void *span);

/* Opens and validates path: header and its checksum, metadata (checksum and GGUF parse), index
 * (checksum, kinds, layers, types, numbering, every tile aligned, inside the file, not
 * overlapping, and of the size its shape implies). Tile data is not read (nf_nft_verify does).
 * With direct, tiles are read with O_DIRECT when the file system allows it. On failure returns a
 * negative code and writes one line to err naming the file and the problem. */
int nf_nft_open(struct nf_nft **out, const char *path, bool direct, char *err, size_t errlen);
/* In an in-place index (header flag NF_NFT_IN_PLACE) the metadata also names the source files
 * (nanoflow.source.paths, .sizes, .mtimes_ns): nf_nft_open opens them and refuses the index
 * with -ESTALE when one is missing or its size or mtime changed since the index was built, and
 * checks every tile lies inside its part. */
void nf_nft_close(struct nf_nft *f);

/* The embedded metadata (kv and tensor infos; reading tensor data from it fails). */
struct nf_gguf *nf_nft_gguf(const struct nf_nft *f);

/* O(1) lookup: the tile of (layer, kind, index), or NULL. Use NF_NFT_NO_LAYER (or -1) as the
 * layer of layer-less kinds. */
const struct nf_nft_tile *nf_nft_find(const struct nf_nft *f, uint32_t layer,
                                      enum nf_tile_kind kind, uint32_t index);
/* Number of tiles of (layer, kind). */
uint32_t nf_nft_count(const struct nf_nft *f, uint32_t layer, enum nf_tile_kind kind);
/* The stable id of t (its position in the index). */
uint64_t nf_nft_tile_id(const struct nf_nft *f, const struct nf_nft_tile *t);

/* The EMBD tile holding token's row and the row's byte offset in it, or NULL. */
const struct nf_nft_tile *nf_nft_embd_row(const struct nf_nft *f, uint32_t token, size_t *offset);
/* The predictor tile of layer (PRED_LOWRANK or PRED_ROUTER), or NULL. */
const struct nf_nft_tile *nf_nft_predictor(const struct nf_nft *f, uint32_t layer);

/* Reads tile t into buf (its bytes at buf[0]) and checks its checksum. buf must be 4096-byte
 * aligned and hold nf_nft_tile_span(t) bytes. Returns 0, NF_EUSAGE (buffer too small or
 * misaligned), NF_ECHECKSUM (err names the tile), NF_ETRUNCATED or a negated errno. */
int nf_nft_read(const struct nf_nft *f, const struct nf_nft_tile *t, void *buf, size_t bufsize,
                char *err, size_t errlen);

/* Names a tile for messages: "layer 3 ffn #5 (id 42, offset 1234, 8192 bytes)". */
void nf_nft_describe(const struct nf_nft *f, const struct nf_nft_tile *t, char *buf, size_t len);
const char *nf_tile_kind_name(enum nf_tile_kind kind);
bool nf_tile_kind_has_layer(enum nf_tile_kind kind);

/* Group j of FFN/EXPERT tile t whose bytes are in buf: 0, or NF_EUSAGE when t is not a bundle
 * tile or j is out of range (j < t->count / t->group). */
int nf_nft_bundle_group(const struct nf_nft_tile *t, const void *buf, uint32_t j,
                        struct nf_nft_bundle *out);

/* Data bytes of a tile of this shape (what the index must say), or 0 when the shape is invalid.
 * Used by the writer to plan and by the reader to validate. */
uint64_t nf_nft_tile_bytes(const struct nf_nft_tile *t);

/* Checks every tile's checksum (reading the whole file). Returns 0, or the first error after
 * reporting every bad tile through bad(ud, tile, message) (bad may be NULL). */
int nf_nft_verify(const struct nf_nft *f,
                  void (*bad)(void *ud, const struct nf_nft_tile *t, const char *msg), void *ud);

/* The calibration header of f, or NULL when f has none. */
const struct nf_nft_calib_header *nf_nft_calib(const struct nf_nft *f);
/* Layer il's calibration: 0, or NF_ENOKEY when f has no calibration (NF_EUSAGE: bad layer). */
int nf_nft_calib_layer(const struct nf_nft *f, uint32_t il, struct nf_nft_calib_layer *out);

/* Runs the model in the complete .nft at path over the text in text_path (tokenized with the
 * model's vocabulary, at most max_tokens tokens, evaluated in windows of the model's context)
 * and builds the calibration section for n_levels sparsity levels (see the layout above) into
 * *img (malloc'd, *len bytes). Loads the whole model into RAM. Dense layers only: a model with
 * experts is refused (NF_EARCH). Returns 0 or a negative code with err set. */
int nf_nft_calib_build(const char *path, const char *text_path, const float *levels, int n_levels,
                       int max_tokens, int threads, void **img, size_t *len, char *err,
                       size_t errlen);

/* Converter settings for nf_nft_convert. */
struct nf_nft_convert_opts {
    uint64_t tile_size; /* target tile bytes (0: NF_NFT_DEFAULT_TILE_SIZE) */
    int rank;           /* low-rank predictor rank (0: chosen to keep predictors ~3% or less) */
    bool pred_f32;      /* store predictors as F32 instead of F16 */
    /* Called as the work progresses (may be NULL): bytes of source weights done and total. */
    void (*progress)(void *ud, uint64_t done, uint64_t total, const char *what);
    void *progress_ud;
    /* Where the temporary file's name is kept while it exists (PATH_MAX bytes, may be NULL), so a
     * signal handler can unlink it; emptied once renamed or removed. */
    char *tmp_path;
    size_t tmp_path_len;
    /* convert --calibrate: a text file to calibrate on (NULL: no calibration section), the
     * sparsity levels (NULL: 50/80/90%), the most tokens used (0: 4096) and threads (0: all). */
    const char *calib_text;
    const float *calib_levels;
    int calib_n_levels;
    int calib_max_tokens;
    int calib_threads;
    /* Write an in-place index (see nf_nft_index_build) instead of a .nft. */
    bool in_place;
};

/* Removes the temporary files a killed nf_nft_convert left for out_path ("OUT.tmp-XXXXXX" in
 * its directory) whose writer is gone: a running converter holds an flock on its file, so only
 * files nobody locks are deleted. nf_nft_convert calls it before creating its own. Returns how
 * many were removed. */
int nf_nft_tmp_sweep(const char *out_path);

#define NF_NFT_DEFAULT_TILE_SIZE (1024u * 1024)

/* Builds the in-place index of the GGUF in_path (split or not) into out_path: a .nft 1.2 file
 * with the header flag NF_NFT_IN_PLACE holding the header, the metadata (plus the source files'
 * paths, sizes and mtimes) and the tile index, and no tile data. Tiles are row ranges of the
 * source tensors and whole experts (one tile per expert and tensor); each record's offset and
 * part say where its bytes lie in the source, its checksum is the XXH3-64 of those size bytes,
 * computed here by reading the source once, tile by tile, in file order, with the page cache
 * dropped behind (memory: the index and one tile). Dense FFN layers become row slices of
 * ffn_gate, ffn_up and ffn_down (FFN tiles with type[3] = enum nf_slice, group = count); there
 * are no low-rank predictors (sparse mode needs a .nft); MoE layers keep ROUTER and a
 * PRED_ROUTER naming the same bytes. Uses o's tile_size, progress and tmp_path. */
int nf_nft_index_build(const char *in_path, const char *out_path,
                       const struct nf_nft_convert_opts *o, char *err, size_t errlen);
#define NF_NFT_PRED_SHARE 0.03 /* budget of the predictors, as a share of the weights */

/* Converts the GGUF in_path into out_path: plans the tiles, writes them layer by layer into a
 * temporary file beside out_path, fsyncs it and renames it into place (on any failure the
 * temporary file is removed and out_path is untouched). Memory stays bounded by about one layer's
 * tensor plus the predictor's workspace. Inputs it cannot represent are refused with a reason
 * (NF_EARCH, NF_EBADTYPE, NF_ESHAPE, NF_ENOTENSOR...). */
int nf_nft_convert(const char *in_path, const char *out_path, const struct nf_nft_convert_opts *o,
                   char *err, size_t errlen);

#endif
