/* model_nft.c - loading a model from a .nft tile file: every tensor reassembled from its tiles. */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "model.h"
#include "nf_err.h"
#include "nft.h"

/* The open tile file and one tile buffer large enough for its largest tile. */
struct nft_src {
    struct nf_nft *f;
    void *buf; /* 4096-aligned, cap bytes */
    size_t cap;
};

static void src_close(void *p)
{
    struct nft_src *s = p;
    if (!s)
        return;
    nf_nft_close(s->f);
    free(s->buf);
    free(s);
}

/* Which tiles hold a tensor, from its GGUF name. */
struct tensor_place {
    enum nf_tile_kind kind;
    uint32_t layer;
    int part; /* FFN/EXPERT: 0 gate, 1 up, 2 down; NF_PART_QKV; else -1 */
};

/* phi3's attn_qkv: the rows of the ATTN_Q, then ATTN_K, then ATTN_V tiles. */
#define NF_PART_QKV 3

static int place_of(const char *name, struct tensor_place *p)
{
    static const struct {
        const char *name;
        enum nf_tile_kind kind;
        int part;
    } per_layer[] = {
        {"attn_norm.weight", NF_TILE_ATTN_NORM, -1},
        {"attn_q.weight", NF_TILE_ATTN_Q, -1},
        {"attn_k.weight", NF_TILE_ATTN_K, -1},
        {"attn_v.weight", NF_TILE_ATTN_V, -1},
        {"attn_output.weight", NF_TILE_ATTN_O, -1},
        {"ffn_norm.weight", NF_TILE_FFN_NORM, -1},
        {"ffn_gate_inp.weight", NF_TILE_ROUTER, -1},
        {"ffn_gate.weight", NF_TILE_FFN, 0},
        {"ffn_up.weight", NF_TILE_FFN, 1},
        {"ffn_down.weight", NF_TILE_FFN, 2},
        {"ffn_gate_exps.weight", NF_TILE_EXPERT, 0},
        {"ffn_up_exps.weight", NF_TILE_EXPERT, 1},
        {"ffn_down_exps.weight", NF_TILE_EXPERT, 2},
        {"attn_q.bias", NF_TILE_ATTN_Q_BIAS, -1},
        {"attn_k.bias", NF_TILE_ATTN_K_BIAS, -1},
        {"attn_v.bias", NF_TILE_ATTN_V_BIAS, -1},
        {"attn_q_norm.weight", NF_TILE_ATTN_Q_NORM, -1},
        {"attn_k_norm.weight", NF_TILE_ATTN_K_NORM, -1},
        {"post_attention_norm.weight", NF_TILE_ATTN_POST_NORM, -1},
        {"post_ffw_norm.weight", NF_TILE_FFN_POST_NORM, -1},
        /* qwen2moe's shared expert: FFN tiles of its MoE layer. */
        {"ffn_gate_inp_shexp.weight", NF_TILE_SHEXP_GATE, -1},
        {"ffn_gate_shexp.weight", NF_TILE_FFN, 0},
        {"ffn_up_shexp.weight", NF_TILE_FFN, 1},
        {"ffn_down_shexp.weight", NF_TILE_FFN, 2},
        {"attn_qkv.weight", NF_TILE_ATTN_Q, NF_PART_QKV},
        {"attn_q_a.weight", NF_TILE_ATTN_Q_A, -1},
        {"attn_q_a_norm.weight", NF_TILE_ATTN_Q_A_NORM, -1},
        {"attn_q_b.weight", NF_TILE_ATTN_Q_B, -1},
        {"attn_kv_a_mqa.weight", NF_TILE_ATTN_KV_A, -1},
        {"attn_kv_a_norm.weight", NF_TILE_ATTN_KV_A_NORM, -1},
        {"attn_k_b.weight", NF_TILE_ATTN_K_B, -1},
        {"attn_v_b.weight", NF_TILE_ATTN_V_B, -1},
        {"exp_probs_b.bias", NF_TILE_EXP_PROBS_B, -1},
        /* gpt-oss (its post_attention_norm is the FFN_NORM tile: src_read_tensor) */
        {"attn_output.bias", NF_TILE_ATTN_O_BIAS, -1},
        {"attn_sinks.weight", NF_TILE_ATTN_SINKS, -1},
        {"ffn_gate_inp.bias", NF_TILE_ROUTER_BIAS, -1},
        {"ffn_gate_exps.bias", NF_TILE_EXP_GATE_BIAS, -1},
        {"ffn_up_exps.bias", NF_TILE_EXP_UP_BIAS, -1},
        {"ffn_down_exps.bias", NF_TILE_EXP_DOWN_BIAS, -1},
    };
    static const struct {
        const char *name;
        enum nf_tile_kind kind;
    } global[] = {{"token_embd.weight", NF_TILE_EMBD},
                  {"output.weight", NF_TILE_OUTPUT},
                  {"output_norm.weight", NF_TILE_OUTPUT_NORM},
                  {"rope_freqs.weight", NF_TILE_ROPE_FREQS},
                  {"rope_factors_short.weight", NF_TILE_ROPE_FREQS},
                  {"rope_factors_long.weight", NF_TILE_ROPE_FREQS}};
    for (size_t i = 0; i < sizeof(global) / sizeof(global[0]); i++)
        if (!strcmp(name, global[i].name)) {
            *p = (struct tensor_place){global[i].kind, NF_NFT_NO_LAYER, -1};
            return 0;
        }
    unsigned layer;
    int pos = 0;
    if (sscanf(name, "blk.%u.%n", &layer, &pos) == 1 && pos > 0)
        for (size_t i = 0; i < sizeof(per_layer) / sizeof(per_layer[0]); i++)
            if (!strcmp(name + pos, per_layer[i].name)) {
                *p = (struct tensor_place){per_layer[i].kind, layer, per_layer[i].part};
                return 0;
            }
    return NF_ENOTENSOR;
}

/* Whether the .nft's metadata names architecture `name` (phi3: its ffn_up is fused; glm4moe:
 * its FFN input norm, post_attention_norm, is in the FFN_NORM tiles). */
static bool nf_nft_meta_arch_is(const struct nf_nft *f, const char *name)
{
    const char *arch = NULL;
    return nf_gguf_get_str(f->meta, "general.architecture", &arch) == 0 && arch &&
           !strcmp(arch, name);
}

/* Copies a row tile (rows [first, first + count) of the tensor) into dst. */
static int put_rows(const struct nf_nft_tile *t, const struct nf_gguf_tensor *gt, const void *buf,
                    uint8_t *dst, uint64_t *rows_done, const char *what, char *err, size_t errlen)
{
    uint64_t rows = (uint64_t)gt->ne[1] * (uint64_t)gt->ne[2];
    size_t row = nf_row_size(gt->type, gt->ne[0]);
    if (t->type[0] != gt->type || t->ne0 != (uint64_t)gt->ne[0] || t->first != *rows_done ||
        (uint64_t)t->first + t->count > rows)
        return nf_errf(err, errlen, NF_ECORRUPT,
                       "tile %s does not continue tensor '%s' (type %u, ne0 %" PRIu32
                       ", rows [%" PRIu32 ", +%" PRIu32 "); expected type %d, ne0 %" PRId64
                       ", first row %" PRIu64 " of %" PRIu64 ")",
                       what, gt->name.s, t->type[0], t->ne0, t->first, t->count, (int)gt->type,
                       gt->ne[0], *rows_done, rows);
    memcpy(dst + row * t->first, buf, row * t->count);
    *rows_done += t->count;
    return 0;
}

/* Copies one part (gate rows, up rows or down columns) of every group of a bundle tile into the
 * tensor it came from. For EXPERT tiles the tensor is 3-D and expert e's slice is written. */
static int put_bundle(const struct nf_nft_tile *t, const struct nf_gguf_tensor *gt, int part,
                      const void *buf, uint8_t *dst, uint64_t *done, const char *what, char *err,
                      size_t errlen)
{
    uint64_t n_ff = (uint64_t)(part == 2 ? gt->ne[0] : gt->ne[1]);
    uint64_t n_embd = (uint64_t)(part == 2 ? gt->ne[1] : gt->ne[0]);
    uint64_t n_exp = (uint64_t)gt->ne[2];
    uint64_t e = t->kind == NF_TILE_EXPERT ? t->expert : 0;
    if (t->type[part] != gt->type || t->ne0 != n_embd || e >= n_exp ||
        (uint64_t)t->first + t->count > n_ff || t->first != *done % n_ff || *done / n_ff != e)
        return nf_errf(err, errlen, NF_ECORRUPT,
                       "tile %s does not continue tensor '%s' (type %u, ne0 %" PRIu32
                       ", neurons [%" PRIu32 ", +%" PRIu32 "), expert %" PRIu64
                       "; expected type %d, ne0 %" PRIu64 ", neuron %" PRIu64 " of %" PRIu64
                       " in expert %" PRIu64 ")",
                       what, gt->name.s, t->type[part], t->ne0, t->first, t->count, e,
                       (int)gt->type, n_embd, *done % n_ff, n_ff, *done / n_ff);
    size_t full = nf_row_size(gt->type, (int64_t)(part == 2 ? n_ff : n_embd));
    uint8_t *base = dst + e * (part == 2 ? n_embd : n_ff) * full;
    for (uint32_t j = 0; j < t->count / t->group; j++) {
        struct nf_nft_bundle b;
        if (nf_nft_bundle_group(t, buf, j, &b))
            return nf_errf(err, errlen, NF_ECORRUPT, "tile %s: bad bundle group %" PRIu32, what, j);
        if (part == 0) {
            memcpy(base + full * b.first, b.gate, b.gate_row_size * (size_t)b.n_neurons);
        } else if (part == 1) {
            memcpy(base + full * b.first, b.up, b.up_row_size * (size_t)b.n_neurons);
        } else {
            /* Group j's G columns are whole blocks of every ffn_down row. */
            size_t col = nf_row_size(gt->type, b.first);
            for (uint64_t r = 0; r < n_embd; r++)
                memcpy(base + r * full + col, (const uint8_t *)b.down + r * b.down_row_size,
                       b.down_row_size);
        }
    }
    *done += t->count;
    return 0;
}

/* Prefixes the file name to the message a put_* function wrote to err; returns rc. */
static int with_path(const struct nf_nft *f, int rc, char *err, size_t errlen)
{
    char msg[512];
    snprintf(msg, sizeof(msg), "%s", err ? err : "");
    return nf_errf(err, errlen, rc, "%s: %s", f->path, msg);
}

/* Copies every row tile of (layer, kind) into consecutive rows of dst (row bytes each), from
 * row 0; *rows gets the count. */
static int read_kind_rows(struct nft_src *s, const struct nf_gguf_tensor *gt, uint32_t layer,
                          enum nf_tile_kind kind, uint8_t *dst, uint64_t max_rows, uint64_t *rows,
                          char *err, size_t errlen)
{
    const struct nf_nft *f = s->f;
    struct nf_gguf_tensor part = *gt;
    part.ne[1] = (int64_t)max_rows;
    part.ne[2] = 1;
    uint64_t done = 0;
    char what[160];
    for (uint32_t i = 0, n = nf_nft_count(f, layer, kind); i < n; i++) {
        const struct nf_nft_tile *t = nf_nft_find(f, layer, kind, i);
        nf_nft_describe(f, t, what, sizeof(what));
        int rc = nf_nft_read(f, t, s->buf, s->cap, err, errlen);
        if (rc)
            return rc;
        if ((rc = put_rows(t, &part, s->buf, dst, &done, what, err, errlen)))
            return with_path(f, rc, err, errlen);
    }
    *rows = done;
    return 0;
}

/* phi3's fused tensors from the tiles they were cut into: attn_qkv from the ATTN_Q, ATTN_K and
 * ATTN_V tiles, one after the other; ffn_up (gate rows, then up rows) from the FFN bundles'
 * gate and up parts. */
static int read_fused(struct nft_src *s, const struct nf_gguf_tensor *gt,
                      const struct tensor_place *pl, uint8_t *dst, char *err, size_t errlen)
{
    const struct nf_nft *f = s->f;
    const size_t row = nf_row_size(gt->type, gt->ne[0]);
    const uint64_t total = (uint64_t)gt->ne[1];
    uint64_t done = 0;
    int rc = 0;
    if (pl->part == NF_PART_QKV) {
        static const enum nf_tile_kind kinds[3] = {NF_TILE_ATTN_Q, NF_TILE_ATTN_K, NF_TILE_ATTN_V};
        for (int k = 0; k < 3 && !rc; k++) {
            uint64_t got = 0;
            rc = read_kind_rows(s, gt, pl->layer, kinds[k], dst + done * row, total - done, &got,
                                err, errlen);
            done += got;
        }
    } else {
        /* ffn_up of 2 n_ff rows: part 0 (gate) into the first half, part 1 into the second. */
        struct nf_gguf_tensor half = *gt;
        half.ne[1] = gt->ne[1] / 2;
        for (int part = 0; part < 2 && !rc; part++) {
            uint64_t got = 0;
            char what[160];
            for (uint32_t i = 0, n = nf_nft_count(f, pl->layer, NF_TILE_FFN); i < n && !rc; i++) {
                const struct nf_nft_tile *t = nf_nft_find(f, pl->layer, NF_TILE_FFN, i);
                nf_nft_describe(f, t, what, sizeof(what));
                if ((rc = nf_nft_read(f, t, s->buf, s->cap, err, errlen)))
                    return rc;
                if ((rc = put_bundle(t, &half, part, s->buf, dst + (size_t)part * half.ne[1] * row,
                                     &got, what, err, errlen)))
                    return with_path(f, rc, err, errlen);
            }
            done += got;
        }
    }
    if (rc)
        return rc;
    if (done != total)
        return nf_errf(err, errlen, NF_ECORRUPT,
                       "%s: tensor '%s': its tiles cover %" PRIu64 " of %" PRIu64 " rows", f->path,
                       gt->name.s, done, total);
    return 0;
}

/* phi3's LongRoPE factors: row 0 (short) or row 1 (long) of the ROPE_FREQS tiles. */
static int read_longrope(struct nft_src *s, const struct nf_gguf_tensor *gt, uint8_t *dst,
                         char *err, size_t errlen)
{
    const struct nf_nft *f = s->f;
    const uint32_t want = strstr(gt->name.s, "_long") ? 1 : 0;
    const struct nf_nft_tile *t = nf_nft_find(f, NF_NFT_NO_LAYER, NF_TILE_ROPE_FREQS, want);
    if (!t || t->first != want || t->count != 1 || t->type[0] != NF_TYPE_F32 ||
        t->ne0 != (uint64_t)gt->ne[0] || t->size != gt->size)
        return nf_errf(err, errlen, NF_ECORRUPT, "%s: tensor '%s' has no matching rope_freqs tile",
                       f->path, gt->name.s);
    int rc = nf_nft_read(f, t, s->buf, s->cap, err, errlen);
    if (rc)
        return rc;
    memcpy(dst, s->buf, (size_t)gt->size);
    return 0;
}

/* Reads tensor gt from its tiles (each checksummed) into dst. */
static int src_read_tensor(void *p, const struct nf_gguf_tensor *gt, void *dst, size_t len,
                           char *err, size_t errlen)
{
    struct nft_src *s = p;
    const struct nf_nft *f = s->f;
    struct tensor_place pl;
    if (place_of(gt->name.s, &pl))
        return nf_errf(err, errlen, NF_ENOTENSOR, "%s: tensor '%s' has no tiles in a .nft", f->path,
                       gt->name.s);
    if (len < gt->size)
        return nf_errf(err, errlen, NF_EUSAGE,
                       "%s: tensor '%s': buffer of %zu bytes, needs %" PRIu64, f->path, gt->name.s,
                       len, gt->size);
    if (pl.part == NF_PART_QKV ||
        (pl.part == 1 && strstr(gt->name.s, "ffn_up") && nf_nft_meta_arch_is(f, "phi3")))
        return read_fused(s, gt, &pl, dst, err, errlen);
    if (pl.kind == NF_TILE_ROPE_FREQS && strncmp(gt->name.s, "rope_factors_", 13) == 0)
        return read_longrope(s, gt, dst, err, errlen);
    if (pl.kind == NF_TILE_ATTN_POST_NORM &&
        (nf_nft_meta_arch_is(f, "glm4moe") || nf_nft_meta_arch_is(f, "gpt-oss")))
        pl.kind = NF_TILE_FFN_NORM; /* their FFN input norm (nft_write.c) */
    uint32_t n = nf_nft_count(f, pl.layer, pl.kind);
    uint64_t total = pl.part < 0 ? (uint64_t)gt->ne[1] * (uint64_t)gt->ne[2]
                                 : (uint64_t)gt->ne[pl.part == 2 ? 0 : 1] * (uint64_t)gt->ne[2];
    uint64_t done = 0;
    char what[160];
    for (uint32_t i = 0; i < n; i++) {
        const struct nf_nft_tile *t = nf_nft_find(f, pl.layer, pl.kind, i);
        nf_nft_describe(f, t, what, sizeof(what));
        int rc = nf_nft_read(f, t, s->buf, s->cap, err, errlen);
        if (rc)
            return rc;
        rc = pl.part < 0 ? put_rows(t, gt, s->buf, dst, &done, what, err, errlen)
                         : put_bundle(t, gt, pl.part, s->buf, dst, &done, what, err, errlen);
        if (rc)
            return with_path(f, rc, err, errlen);
    }
    if (done != total)
        return nf_errf(err, errlen, NF_ECORRUPT,
                       "%s: tensor '%s': its %s tiles cover %" PRIu64 " of %" PRIu64 " %s", f->path,
                       gt->name.s, nf_tile_kind_name(pl.kind), done, total,
                       pl.part < 0 ? "rows" : "neurons");
    return 0;
}

int nf_model_nft_source(struct nf_model *m, const char *path, char *err, size_t errlen)
{
    /* Sniff the magic; anything unreadable is left to the GGUF reader's messages. */
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return 0;
    uint32_t magic = 0;
    ssize_t got = pread(fd, &magic, sizeof(magic), 0);
    close(fd);
    if (got != (ssize_t)sizeof(magic) || magic != NF_NFT_MAGIC)
        return 0;
    struct nft_src *s = calloc(1, sizeof(*s));
    if (!s)
        return nf_errf(err, errlen, -ENOMEM, "%s: out of memory", path);
    int rc = nf_nft_open(&s->f, path, false, err, errlen);
    if (rc)
        goto fail;
    if (s->f->in_place) {
        /* Its tiles are the GGUF's own bytes: the GGUF itself loads (or maps) directly. */
        const void *paths = NULL;
        uint64_t n = 0;
        nf_gguf_get_arr(nf_nft_gguf(s->f), "nanoflow.source.paths", NF_GGUF_STRING, &n, &paths);
        rc = nf_errf(err, errlen, NF_EUSAGE,
                     "%s is the in-place index of a GGUF: run the GGUF itself (-m %s)", path,
                     n ? ((const struct nf_gguf_str *)paths)[0].s : "MODEL.gguf");
        goto fail;
    }
    uint64_t cap = NF_NFT_ALIGN;
    for (uint64_t i = 0; i < s->f->n_tiles; i++)
        if (nf_nft_tile_span(&s->f->tiles[i]) > cap)
            cap = nf_nft_tile_span(&s->f->tiles[i]);
    s->cap = (size_t)cap;
    if (posix_memalign(&s->buf, NF_NFT_ALIGN, s->cap)) {
        s->buf = NULL;
        rc = nf_errf(err, errlen, -ENOMEM, "%s: out of memory for a %zu-byte tile buffer", path,
                     s->cap);
        goto fail;
    }
    /* The model gets its own parse of the embedded metadata (the image stays owned by the
     * tile file, which nf_model_free closes after the model's gguf). */
    char gerr[256];
    if ((rc = nf_gguf_open_meta_mem(&m->gguf, s->f->meta_image, s->f->hdr.meta_size, gerr,
                                    sizeof(gerr)))) {
        m->gguf = NULL;
        rc = nf_errf(err, errlen, rc, "%s: embedded metadata: %s", path, gerr);
        goto fail;
    }
    snprintf(m->gguf->path, sizeof(m->gguf->path), "%s", path);
    m->read_tensor = src_read_tensor;
    m->close_src = src_close;
    m->src = s;
    return 1;
fail:
    src_close(s);
    return rc;
}
