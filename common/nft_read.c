/* nft_read.c - opens and validates .nft tile files, looks tiles up and reads them (see nft.h). */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <xxhash.h>

#include "nf_err.h"
#include "nft.h"

static const char *const kind_names[NF_TILE_KIND_COUNT] = {
    [NF_TILE_EMBD] = "embd",
    [NF_TILE_OUTPUT] = "output",
    [NF_TILE_OUTPUT_NORM] = "output_norm",
    [NF_TILE_ROPE_FREQS] = "rope_freqs",
    [NF_TILE_ATTN_NORM] = "attn_norm",
    [NF_TILE_ATTN_Q] = "attn_q",
    [NF_TILE_ATTN_K] = "attn_k",
    [NF_TILE_ATTN_V] = "attn_v",
    [NF_TILE_ATTN_O] = "attn_o",
    [NF_TILE_FFN_NORM] = "ffn_norm",
    [NF_TILE_FFN] = "ffn",
    [NF_TILE_ROUTER] = "router",
    [NF_TILE_EXPERT] = "expert",
    [NF_TILE_PRED_LOWRANK] = "pred_lowrank",
    [NF_TILE_PRED_ROUTER] = "pred_router",
    [NF_TILE_ATTN_Q_BIAS] = "attn_q_bias",
    [NF_TILE_ATTN_K_BIAS] = "attn_k_bias",
    [NF_TILE_ATTN_V_BIAS] = "attn_v_bias",
    [NF_TILE_ATTN_Q_NORM] = "attn_q_norm",
    [NF_TILE_ATTN_K_NORM] = "attn_k_norm",
    [NF_TILE_ATTN_POST_NORM] = "attn_post_norm",
    [NF_TILE_FFN_POST_NORM] = "ffn_post_norm",
    [NF_TILE_SHEXP_GATE] = "shexp_gate",
    [NF_TILE_EXP_PROBS_B] = "exp_probs_b",
    [NF_TILE_ATTN_Q_A] = "attn_q_a",
    [NF_TILE_ATTN_Q_A_NORM] = "attn_q_a_norm",
    [NF_TILE_ATTN_Q_B] = "attn_q_b",
    [NF_TILE_ATTN_KV_A] = "attn_kv_a",
    [NF_TILE_ATTN_KV_A_NORM] = "attn_kv_a_norm",
    [NF_TILE_ATTN_K_B] = "attn_k_b",
    [NF_TILE_ATTN_V_B] = "attn_v_b",
    [NF_TILE_ATTN_O_BIAS] = "attn_o_bias",
    [NF_TILE_ATTN_SINKS] = "attn_sinks",
    [NF_TILE_ROUTER_BIAS] = "router_bias",
    [NF_TILE_EXP_GATE_BIAS] = "exp_gate_bias",
    [NF_TILE_EXP_UP_BIAS] = "exp_up_bias",
    [NF_TILE_EXP_DOWN_BIAS] = "exp_down_bias",
};

const char *nf_tile_kind_name(enum nf_tile_kind kind)
{
    return (unsigned)kind < NF_TILE_KIND_COUNT ? kind_names[kind] : "?";
}

bool nf_tile_kind_has_layer(enum nf_tile_kind kind)
{
    return !(kind == NF_TILE_EMBD || kind == NF_TILE_OUTPUT || kind == NF_TILE_OUTPUT_NORM ||
             kind == NF_TILE_ROPE_FREQS);
}

/* A computable type (the engine must be able to run what the file holds), or NULL. */
static const struct nf_type_traits *usable_type(uint8_t t)
{
    const struct nf_type_traits *tr = nf_type_traits((enum nf_type)t);
    return tr && tr->compute ? tr : NULL;
}

/* Bytes of rows rows of ne0 elements of type t, or 0 when invalid or overflowing. */
static uint64_t rows_bytes(uint8_t t, uint64_t rows, uint64_t ne0)
{
    const struct nf_type_traits *tr = usable_type(t);
    if (!tr || ne0 == 0 || rows == 0 || ne0 % (uint64_t)tr->blck_size)
        return 0;
    uint64_t row = ne0 / (uint64_t)tr->blck_size * tr->type_size, total;
    return __builtin_mul_overflow(row, rows, &total) ? 0 : total;
}

uint64_t nf_nft_tile_bytes(const struct nf_nft_tile *t)
{
    switch ((enum nf_tile_kind)t->kind) {
    case NF_TILE_FFN:
    case NF_TILE_EXPERT: {
        if (t->type[3] != NF_SLICE_NONE) /* in-place row slice */
            return t->type[3] <= NF_SLICE_DOWN && t->group == t->count
                       ? rows_bytes(t->type[0], t->count, t->ne0)
                       : 0;
        if (t->group == 0 || t->count % t->group)
            return 0;
        uint64_t g = rows_bytes(t->type[0], t->group, t->ne0);
        uint64_t u = rows_bytes(t->type[1], t->group, t->ne0);
        uint64_t d = rows_bytes(t->type[2], t->ne0, t->group);
        uint64_t per, total;
        if (!g || !u || !d || __builtin_add_overflow(g, u, &per) ||
            __builtin_add_overflow(per, d, &per) ||
            __builtin_mul_overflow(per, (uint64_t)(t->count / t->group), &total))
            return 0;
        return total;
    }
    case NF_TILE_PRED_LOWRANK: {
        if ((t->type[0] != NF_TYPE_F16 && t->type[0] != NF_TYPE_F32) || t->rank == 0 ||
            t->count == 0 || t->ne0 == 0)
            return 0;
        uint64_t a = (uint64_t)t->count * t->rank, b = (uint64_t)t->rank * t->ne0, n;
        if (__builtin_add_overflow(a, b, &n) || n > UINT64_MAX / 4)
            return 0;
        return n * (t->type[0] == NF_TYPE_F16 ? 2 : 4);
    }
    case NF_TILE_EMBD:
    case NF_TILE_OUTPUT:
    case NF_TILE_OUTPUT_NORM:
    case NF_TILE_ROPE_FREQS:
    case NF_TILE_ATTN_NORM:
    case NF_TILE_ATTN_Q:
    case NF_TILE_ATTN_K:
    case NF_TILE_ATTN_V:
    case NF_TILE_ATTN_O:
    case NF_TILE_FFN_NORM:
    case NF_TILE_ROUTER:
    case NF_TILE_PRED_ROUTER:
    case NF_TILE_ATTN_Q_BIAS:
    case NF_TILE_ATTN_K_BIAS:
    case NF_TILE_ATTN_V_BIAS:
    case NF_TILE_ATTN_Q_NORM:
    case NF_TILE_ATTN_K_NORM:
    case NF_TILE_ATTN_POST_NORM:
    case NF_TILE_FFN_POST_NORM: return rows_bytes(t->type[0], t->count, t->ne0);
    case NF_TILE_SHEXP_GATE:
    case NF_TILE_EXP_PROBS_B:
    case NF_TILE_ATTN_Q_A:
    case NF_TILE_ATTN_Q_A_NORM:
    case NF_TILE_ATTN_Q_B:
    case NF_TILE_ATTN_KV_A:
    case NF_TILE_ATTN_KV_A_NORM:
    case NF_TILE_ATTN_K_B:
    case NF_TILE_ATTN_V_B:
    case NF_TILE_ATTN_O_BIAS:
    case NF_TILE_ATTN_SINKS:
    case NF_TILE_ROUTER_BIAS:
    case NF_TILE_EXP_GATE_BIAS:
    case NF_TILE_EXP_UP_BIAS:
    case NF_TILE_EXP_DOWN_BIAS: return rows_bytes(t->type[0], t->count, t->ne0);
    case NF_TILE_KIND_COUNT: break;
    }
    return 0;
}

/* Reads [off, off + len) into buf; the end of the file may cut it short once need bytes came
 * (an in-place tile's aligned span may run past its source's end). */
static int read_span(int fd, void *buf, size_t len, uint64_t off, size_t need)
{
    uint8_t *p = buf;
    size_t done = 0;
    while (done < len) {
        ssize_t n = pread(fd, p + done, len - done, (off_t)(off + done));
        if (n < 0) {
            if (errno == EINTR)
                continue;
            return -errno;
        }
        if (n == 0)
            return done >= need ? 0 : NF_ETRUNCATED;
        done += (size_t)n;
    }
    return 0;
}

static int read_full(int fd, void *buf, size_t len, uint64_t off)
{
    uint8_t *p = buf;
    while (len) {
        ssize_t n = pread(fd, p, len, (off_t)off);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            return -errno;
        }
        if (n == 0)
            return NF_ETRUNCATED;
        p += n;
        len -= (size_t)n;
        off += (uint64_t)n;
    }
    return 0;
}

/* Checks a section [off, off + size) is aligned and inside the file. */
static bool section_ok(const struct nf_nft_header *h, uint64_t off, uint64_t size)
{
    uint64_t end;
    return off % NF_NFT_ALIGN == 0 && off >= NF_NFT_ALIGN &&
           !__builtin_add_overflow(off, size, &end) && end <= h->file_size;
}

/* Says what the file at path is when it is not a .nft (a GGUF, or something else named by its
 * first bytes), as the caller's error: a foreign file is described in its own terms, not as a
 * .nft with a bad header. Returns 0 when the file starts with the .nft magic (or cannot be read
 * again), else NF_EBADMAGIC with err set. */
static int check_kind(const char *path, char *err, size_t errlen)
{
    unsigned char b[8];
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return 0;
    ssize_t n = pread(fd, b, sizeof(b), 0);
    close(fd);
    if (n < 0)
        return 0;
    uint32_t magic = NF_NFT_MAGIC;
    if (n >= 4 && !memcmp(b, &magic, 4))
        return 0;
    if (n >= 4 && !memcmp(b, "GGUF", 4))
        return nf_errf_at(err, errlen, NF_EBADMAGIC, path,
                          "this is a GGUF model, not a .nft tile file: make one with 'nanoflowctl "
                          "convert %s OUT.nft' (or give the .gguf to 'nanoflowctl up', which "
                          "converts it)",
                          path);
    if (n == 0)
        return nf_errf_at(err, errlen, NF_EBADMAGIC, path,
                          "an empty file, not a GGUF or .nft file");
    char hex[3 * sizeof(b) + 1];
    for (ssize_t i = 0; i < n; i++)
        snprintf(hex + 3 * i, sizeof(hex) - 3 * (size_t)i, "%02x ", b[i]);
    hex[3 * n - 1] = '\0';
    return nf_errf_at(err, errlen, NF_EBADMAGIC, path, "not a GGUF or .nft file (first bytes %s)",
                      hex);
}

static int check_header(const struct nf_nft_header *h, uint64_t real_size, const char *name,
                        char *err, size_t errlen)
{
    if (h->magic != NF_NFT_MAGIC)
        return nf_errf_at(err, errlen, NF_EBADMAGIC, name,
                          "bad magic 0x%08" PRIx32 " (expected 0x%08x, \"NFT1\")", h->magic,
                          NF_NFT_MAGIC);
    if (h->major != NF_NFT_MAJOR)
        return nf_errf_at(err, errlen, NF_EBADVERSION, name,
                          "format version %u.%u (this reader knows %u.x)", h->major, h->minor,
                          NF_NFT_MAJOR);
    if (h->header_size != sizeof(*h))
        return nf_errf_at(err, errlen, NF_ECORRUPT, name, "header_size %" PRIu32 " (expected %zu)",
                          h->header_size, sizeof(*h));
    uint64_t sum = XXH3_64bits(h, offsetof(struct nf_nft_header, header_checksum));
    if (sum != h->header_checksum)
        return nf_errf_at(err, errlen, NF_ECHECKSUM, name,
                          "header checksum mismatch (stored %016" PRIx64 ", computed %016" PRIx64
                          ")",
                          h->header_checksum, sum);
    if (h->flags & ~NF_NFT_IN_PLACE)
        return nf_errf_at(err, errlen, NF_EBADVERSION, name,
                          "unknown flags 0x%" PRIx32 " (expected 0 or 0x%x)", h->flags,
                          NF_NFT_IN_PLACE);
    if (h->file_size != real_size)
        return nf_errf_at(err, errlen, real_size < h->file_size ? NF_ETRUNCATED : NF_ECORRUPT, name,
                          "header says the file has %" PRIu64 " bytes but it has %" PRIu64,
                          h->file_size, real_size);
    if (h->n_layer == 0 || h->n_layer > NF_NFT_MAX_LAYERS)
        return nf_errf_at(err, errlen, NF_ECORRUPT, name, "n_layer %" PRIu32 " (expected 1..%d)",
                          h->n_layer, NF_NFT_MAX_LAYERS);
    if (!section_ok(h, h->meta_offset, h->meta_size) || h->meta_size == 0)
        return nf_errf_at(err, errlen, NF_ETRUNCATED, name,
                          "metadata [%" PRIu64 ", +%" PRIu64 ") is not inside the file",
                          h->meta_offset, h->meta_size);
    uint64_t per_tile = h->flags & NF_NFT_IN_PLACE ? sizeof(struct nf_nft_tile) : NF_NFT_ALIGN;
    if (h->n_tiles == 0 || h->n_tiles > h->file_size / per_tile ||
        !section_ok(h, h->index_offset, h->n_tiles * sizeof(struct nf_nft_tile)))
        return nf_errf_at(err, errlen, NF_ETRUNCATED, name,
                          "tile index of %" PRIu64 " tiles at %" PRIu64 " does not fit the file",
                          h->n_tiles, h->index_offset);
    if (h->data_offset % NF_NFT_ALIGN || h->data_offset > h->file_size)
        return nf_errf_at(err, errlen, NF_ECORRUPT, name,
                          "data offset %" PRIu64 " (expected 4096-aligned, in file)",
                          h->data_offset);
    return 0;
}

/* Validates every index record and builds the (layer, kind) -> run table. */
static int check_index(struct nf_nft *f, const char *name, char *err, size_t errlen)
{
    const struct nf_nft_header *h = &f->hdr;
    size_t nrun = ((size_t)h->n_layer + 1) * NF_TILE_KIND_COUNT;
    f->run_first = calloc(nrun, sizeof(*f->run_first));
    f->run_count = calloc(nrun, sizeof(*f->run_count));
    if (!f->run_first || !f->run_count)
        return nf_errf_at(err, errlen, -ENOMEM, name, "out of memory");
    uint64_t prev_end = h->data_offset;
    for (uint64_t i = 0; i < f->n_tiles; i++) {
        const struct nf_nft_tile *t = &f->tiles[i];
        if (t->kind >= NF_TILE_KIND_COUNT)
            return nf_errf_at(err, errlen, NF_ECORRUPT, name,
                              "tile %" PRIu64 ": kind %u (expected < %d)", i, t->kind,
                              NF_TILE_KIND_COUNT);
        bool has_layer = nf_tile_kind_has_layer((enum nf_tile_kind)t->kind);
        if (has_layer ? t->layer >= h->n_layer : t->layer != NF_NFT_NO_LAYER)
            return nf_errf_at(err, errlen, NF_ECORRUPT, name,
                              "tile %" PRIu64 " (%s): layer %" PRIu32 " (expected %s)", i,
                              kind_names[t->kind], t->layer,
                              has_layer ? "< n_layer" : "none (0xffffffff)");
        if (t->part >= f->n_parts)
            return nf_errf_at(err, errlen, NF_ECORRUPT, name,
                              "tile %" PRIu64 ": part %u (expected < %" PRIu32 ")", i, t->part,
                              f->n_parts);
        uint64_t want = nf_nft_tile_bytes(t);
        if (want == 0 || want != t->size)
            return nf_errf_at(err, errlen, NF_ECORRUPT, name,
                              "tile %" PRIu64 " (%s): size %" PRIu64
                              " does not match its shape (%" PRIu64
                              " expected; types %u/%u/%u, count %" PRIu32 ", ne0 %" PRIu32 ")",
                              i, kind_names[t->kind], t->size, want, t->type[0], t->type[1],
                              t->type[2], t->count, t->ne0);
        uint64_t end;
        if (f->in_place) {
            /* Tiles lie in the source files, 32-byte aligned, in any order (a PRED_ROUTER
             * names its ROUTER's bytes): each must lie inside its part. */
            if (__builtin_add_overflow(t->offset, t->size, &end) || end > f->part_size[t->part])
                return nf_errf_at(err, errlen, NF_ETRUNCATED, name,
                                  "tile %" PRIu64 " (%s): bytes [%" PRIu64 ", +%" PRIu64
                                  ") lie outside source part %u (%" PRIu64 " bytes)",
                                  i, kind_names[t->kind], t->offset, t->size, t->part,
                                  f->part_size[t->part]);
        } else if (t->offset % NF_NFT_ALIGN || t->offset < prev_end ||
                   __builtin_add_overflow(t->offset, nf_nft_padded(t->size), &end) ||
                   end > h->file_size)
            return nf_errf_at(
                err, errlen,
                t->offset % NF_NFT_ALIGN || t->offset < prev_end ? NF_ECORRUPT : NF_ETRUNCATED,
                name,
                "tile %" PRIu64 " (%s): extent [%" PRIu64 ", +%" PRIu64
                ") is misaligned, overlaps the previous tile or lies outside the file "
                "(size %" PRIu64 ")",
                i, kind_names[t->kind], t->offset, nf_nft_padded(t->size), h->file_size);
        prev_end = end;
        size_t slot = (size_t)(has_layer ? t->layer : h->n_layer) * NF_TILE_KIND_COUNT + t->kind;
        if (f->run_count[slot] == 0) {
            f->run_first[slot] = i;
        } else if (f->run_first[slot] + f->run_count[slot] != i) {
            return nf_errf_at(err, errlen, NF_ECORRUPT, name,
                              "tile %" PRIu64 " (%s): tiles of one layer and kind are "
                              "not contiguous in the index",
                              i, kind_names[t->kind]);
        }
        if (t->index != f->run_count[slot])
            return nf_errf_at(err, errlen, NF_ECORRUPT, name,
                              "tile %" PRIu64 " (%s): index %" PRIu32 " (expected %" PRIu32 ")", i,
                              kind_names[t->kind], t->index, f->run_count[slot]);
        f->run_count[slot]++;
    }
    return 0;
}

/* Reads and validates the calibration section (header fields calib_*), if any. */
static int load_calib(struct nf_nft *f, const char *name, char *err, size_t errlen)
{
    const struct nf_nft_header *h = &f->hdr;
    if (!h->calib_offset && !h->calib_size && !h->calib_levels && !h->calib_checksum)
        return 0;
    uint64_t last_end =
        f->n_tiles ? f->tiles[f->n_tiles - 1].offset + nf_nft_padded(f->tiles[f->n_tiles - 1].size)
                   : h->data_offset;
    if (!section_ok(h, h->calib_offset, h->calib_size) || h->calib_offset < last_end ||
        h->calib_size < sizeof(struct nf_nft_calib_header) || h->calib_size > (1ull << 32))
        return nf_errf_at(err, errlen, NF_ECORRUPT, name,
                          "calibration section [%" PRIu64 ", +%" PRIu64
                          ") is not a section after the last tile inside the file",
                          h->calib_offset, h->calib_size);
    if (posix_memalign(&f->calib, NF_NFT_ALIGN, nf_nft_padded(h->calib_size))) {
        f->calib = NULL;
        return nf_errf_at(err, errlen, -ENOMEM, name, "out of memory for the calibration section");
    }
    int rc = read_full(f->fd, f->calib, nf_nft_padded(h->calib_size), h->calib_offset);
    if (rc)
        return nf_errf_at(err, errlen, rc, name, "reading the calibration section: %s",
                          nf_strerror(rc));
    uint64_t sum = XXH3_64bits(f->calib, h->calib_size);
    if (sum != h->calib_checksum)
        return nf_errf_at(err, errlen, NF_ECHECKSUM, name,
                          "calibration section checksum mismatch (stored %016" PRIx64
                          ", computed %016" PRIx64 ")",
                          h->calib_checksum, sum);
    const struct nf_nft_calib_header *ch = f->calib;
    if (ch->magic != NF_NFT_CALIB_MAGIC || ch->n_layer != h->n_layer ||
        ch->n_levels != h->calib_levels || ch->n_levels < 1 ||
        ch->n_levels > NF_NFT_CALIB_MAX_LEVELS || ch->n_tokens == 0)
        return nf_errf_at(err, errlen, NF_ECORRUPT, name,
                          "calibration header: magic 0x%08" PRIx32 ", %" PRIu32 " layers, %" PRIu32
                          " levels, %" PRIu32 " tokens (expected 0x%08x, %" PRIu32 ", %" PRIu32
                          " in 1..%d, > 0)",
                          ch->magic, ch->n_layer, ch->n_levels, ch->n_tokens, NF_NFT_CALIB_MAGIC,
                          h->n_layer, h->calib_levels, NF_NFT_CALIB_MAX_LEVELS);
    for (uint32_t l = 0; l < ch->n_levels; l++)
        if (!(ch->levels[l] > 0.0f && ch->levels[l] < 1.0f) ||
            (l && !(ch->levels[l] > ch->levels[l - 1])))
            return nf_errf_at(err, errlen, NF_ECORRUPT, name,
                              "calibration level %" PRIu32
                              " is %g (expected increasing, in (0, 1))",
                              l, (double)ch->levels[l]);
    f->calib_layer = calloc(h->n_layer, sizeof(*f->calib_layer));
    /* A layer record of n groups takes at least 12 n bytes of the section (order, mean and one
     * level's frequency per group), so n never exceeds calib_size / 12: the permutation check
     * needs no more, whatever n_ff the header claims. */
    const size_t max_groups = (size_t)(h->calib_size / 12) + 1;
    uint8_t *seen = calloc(max_groups, 1);
    if (!f->calib_layer || !seen) {
        free(seen);
        return nf_errf_at(err, errlen, -ENOMEM, name, "out of memory");
    }
    uint64_t off = sizeof(*ch);
    for (uint32_t il = 0; il < h->n_layer && !rc; il++) {
        const struct nf_nft_calib_layer_hdr *lh = (const void *)((uint8_t *)f->calib + off);
        if (off + sizeof(*lh) > h->calib_size) {
            rc = nf_errf_at(err, errlen, NF_ECORRUPT, name,
                            "calibration of layer %" PRIu32 " lies past the section's end", il);
            break;
        }
        const struct nf_nft_tile *ft = nf_nft_find(f, il, NF_TILE_FFN, 0);
        uint32_t want_group = ft ? ft->group : 0, want_n = ft ? h->n_ff / ft->group : 0;
        uint64_t bytes = sizeof(*lh) + (uint64_t)lh->n_groups * 4 * (2 + ch->n_levels);
        if (lh->n_groups != want_n || (want_n && lh->group != want_group) ||
            off + bytes > h->calib_size) {
            rc = nf_errf_at(err, errlen, NF_ECORRUPT, name,
                            "calibration of layer %" PRIu32 ": %" PRIu32 " groups of %" PRIu32
                            " (expected %" PRIu32 " of %" PRIu32 ", inside the section)",
                            il, lh->n_groups, lh->group, want_n, want_group);
            break;
        }
        f->calib_layer[il] = off;
        const uint32_t *order = (const void *)(lh + 1);
        const float *freq =
            (const float *)(const void *)((const uint8_t *)order + 8 * (size_t)lh->n_groups);
        memset(seen, 0, lh->n_groups < max_groups ? lh->n_groups : max_groups);
        for (uint32_t g = 0; g < lh->n_groups && !rc; g++) {
            if (order[g] >= lh->n_groups || seen[order[g]]++)
                rc = nf_errf_at(err, errlen, NF_ECORRUPT, name,
                                "calibration of layer %" PRIu32
                                ": order is not a permutation of the "
                                "%" PRIu32 " groups",
                                il, lh->n_groups);
        }
        for (uint64_t i = 0; i < (uint64_t)lh->n_groups * ch->n_levels && !rc; i++)
            if (!(freq[i] >= 0.0f && freq[i] <= 1.0f))
                rc = nf_errf_at(err, errlen, NF_ECORRUPT, name,
                                "calibration of layer %" PRIu32
                                ": a frequency is %g (expected 0..1)",
                                il, (double)freq[i]);
        off += bytes;
    }
    free(seen);
    if (!rc && off != h->calib_size)
        rc = nf_errf_at(err, errlen, NF_ECORRUPT, name,
                        "calibration section has %" PRIu64 " bytes, its records %" PRIu64,
                        h->calib_size, off);
    return rc;
}

const struct nf_nft_calib_header *nf_nft_calib(const struct nf_nft *f)
{
    return f ? f->calib : NULL;
}

int nf_nft_calib_layer(const struct nf_nft *f, uint32_t il, struct nf_nft_calib_layer *out)
{
    if (!f || !out)
        return NF_EUSAGE;
    if (!f->calib)
        return NF_ENOKEY;
    if (il >= f->hdr.n_layer)
        return NF_EUSAGE;
    const struct nf_nft_calib_layer_hdr *lh =
        (const void *)((const uint8_t *)f->calib + f->calib_layer[il]);
    out->n_groups = lh->n_groups;
    out->group = lh->group;
    out->act_thr = lh->act_thr;
    out->pred_thr = lh->pred_thr;
    out->order = (const uint32_t *)(lh + 1);
    out->mean_mag =
        (const float *)(const void *)((const uint8_t *)out->order + 4 * (size_t)lh->n_groups);
    out->freq = out->mean_mag + lh->n_groups;
    return 0;
}

/* The files tile data comes from: the .nft itself, or the source parts an in-place index
 * names, each opened (direct when asked and possible) and checked against the size and mtime
 * recorded when the index was built. */
static int open_parts(struct nf_nft *f, bool direct, uint64_t file_size, const char *name,
                      char *err, size_t errlen)
{
    f->in_place = f->hdr.flags & NF_NFT_IN_PLACE;
    uint64_t n = 1, ns = 0, nm = 0;
    const void *paths = NULL, *sizes = NULL, *mtimes = NULL;
    if (f->in_place &&
        (nf_gguf_get_arr(f->meta, "nanoflow.source.paths", NF_GGUF_STRING, &n, &paths) ||
         nf_gguf_get_arr(f->meta, "nanoflow.source.sizes", NF_GGUF_UINT64, &ns, &sizes) ||
         nf_gguf_get_arr(f->meta, "nanoflow.source.mtimes_ns", NF_GGUF_UINT64, &nm, &mtimes) ||
         n == 0 || n > NF_NFT_MAX_PARTS || ns != n || nm != n))
        return nf_errf_at(err, errlen, NF_ECORRUPT, name,
                          "in-place index without a valid nanoflow.source.paths/sizes/mtimes_ns "
                          "list (1..%d files)",
                          NF_NFT_MAX_PARTS);
    f->part_fd = malloc(n * sizeof(*f->part_fd));
    f->part_size = malloc(n * sizeof(*f->part_size));
    if (!f->part_fd || !f->part_size)
        return nf_errf_at(err, errlen, -ENOMEM, name, "out of memory");
    f->n_parts = (uint32_t)n;
    for (uint32_t i = 0; i < f->n_parts; i++)
        f->part_fd[i] = -1;
    if (!f->in_place) {
        f->part_fd[0] = f->fd;
        f->part_size[0] = file_size;
        return 0;
    }
    for (uint32_t i = 0; i < f->n_parts; i++) {
        const char *p = ((const struct nf_gguf_str *)paths)[i].s;
        uint64_t want_size, want_mtime;
        memcpy(&want_size, (const uint8_t *)sizes + 8 * i, 8);
        memcpy(&want_mtime, (const uint8_t *)mtimes + 8 * i, 8);
        int fd = open(p, O_RDONLY | O_CLOEXEC | (direct ? O_DIRECT : 0));
        if (fd < 0 && direct && errno == EINVAL)
            fd = open(p, O_RDONLY | O_CLOEXEC);
        if (fd < 0)
            return nf_errf_at(err, errlen, -ESTALE, name,
                              "its source file %s cannot be opened (%s): rebuild the index "
                              "(nanoflowctl up on the GGUF does)",
                              p, strerror(errno));
        f->part_fd[i] = fd;
        struct stat st;
        if (fstat(fd, &st) != 0)
            return nf_errf_at(err, errlen, -errno, name, "%s: %s", p, strerror(errno));
        uint64_t mt = (uint64_t)st.st_mtim.tv_sec * 1000000000ull + (uint64_t)st.st_mtim.tv_nsec;
        if ((uint64_t)st.st_size != want_size || mt != want_mtime)
            return nf_errf_at(err, errlen, -ESTALE, name,
                              "its source file %s changed since the index was built (%" PRIu64
                              " bytes, mtime %" PRIu64 " ns; the index expects %" PRIu64
                              " bytes, mtime %" PRIu64 " ns): rebuild the index (nanoflowctl up "
                              "on the GGUF does)",
                              p, (uint64_t)st.st_size, mt, want_size, want_mtime);
        f->part_size[i] = want_size;
    }
    return 0;
}

int nf_nft_tile_fd(const struct nf_nft *f, const struct nf_nft_tile *t)
{
    return t->part < f->n_parts ? f->part_fd[t->part] : -1;
}

uint64_t nf_nft_tile_sum(const struct nf_nft *f, const struct nf_nft_tile *t, const void *span)
{
    if (f->in_place)
        return XXH3_64bits((const uint8_t *)span + nf_nft_tile_skew(t), (size_t)t->size);
    return XXH3_64bits(span, (size_t)nf_nft_padded(t->size));
}

int nf_nft_open(struct nf_nft **out, const char *path, bool direct, char *err, size_t errlen)
{
    if (!out || !path)
        return NF_EUSAGE;
    *out = NULL;
    if (err && errlen)
        err[0] = '\0';
    struct nf_nft *f = calloc(1, sizeof(*f));
    if (!f)
        return nf_errf_at(err, errlen, -ENOMEM, path, "out of memory");
    snprintf(f->path, sizeof(f->path), "%s", path);
    int rc;
    f->fd = open(path, O_RDONLY | O_CLOEXEC | (direct ? O_DIRECT : 0));
    if (f->fd < 0 && direct && errno == EINVAL)
        f->fd = open(path, O_RDONLY | O_CLOEXEC); /* the file system has no O_DIRECT */
    if (f->fd < 0) {
        rc = -errno;
        nf_errf_at(err, errlen, 0, path, "cannot open: %s", strerror(errno));
        goto out;
    }
    struct stat st;
    if (fstat(f->fd, &st) != 0 || !S_ISREG(st.st_mode)) {
        rc = NF_EUSAGE;
        nf_errf_at(err, errlen, 0, path, "not a regular file");
        goto out;
    }
    if ((rc = check_kind(path, err, errlen)))
        goto out;
    if ((uint64_t)st.st_size < NF_NFT_ALIGN) {
        rc = NF_ETRUNCATED;
        nf_errf_at(err, errlen, 0, path,
                   "truncated .nft file: %lld bytes, less than its %u-byte header",
                   (long long)st.st_size, NF_NFT_ALIGN);
        goto out;
    }
    /* Sections are read through aligned buffers so that an O_DIRECT descriptor works too. */
    void *page = NULL;
    if (posix_memalign(&page, NF_NFT_ALIGN, NF_NFT_ALIGN)) {
        rc = -ENOMEM;
        goto out;
    }
    rc = read_full(f->fd, page, NF_NFT_ALIGN, 0);
    memcpy(&f->hdr, page, sizeof(f->hdr));
    free(page);
    if (rc) {
        nf_errf_at(err, errlen, 0, path, "reading the header: %s", nf_strerror(rc));
        goto out;
    }
    const struct nf_nft_header *h = &f->hdr;
    if ((rc = check_header(h, (uint64_t)st.st_size, path, err, errlen)))
        goto out;
    /* Metadata. */
    if (posix_memalign(&f->meta_image, NF_NFT_ALIGN, nf_nft_padded(h->meta_size))) {
        rc = -ENOMEM;
        nf_errf_at(err, errlen, 0, path, "out of memory for %" PRIu64 " bytes of metadata",
                   h->meta_size);
        goto out;
    }
    if ((rc = read_full(f->fd, f->meta_image, nf_nft_padded(h->meta_size), h->meta_offset))) {
        nf_errf_at(err, errlen, 0, path, "reading the metadata: %s", nf_strerror(rc));
        goto out;
    }
    uint64_t sum = XXH3_64bits(f->meta_image, h->meta_size);
    if (sum != h->meta_checksum) {
        rc = NF_ECHECKSUM;
        nf_errf_at(err, errlen, 0, path,
                   "metadata checksum mismatch (stored %016" PRIx64 ", computed %016" PRIx64 ")",
                   h->meta_checksum, sum);
        goto out;
    }
    char gerr[256];
    if ((rc = nf_gguf_open_meta_mem(&f->meta, f->meta_image, h->meta_size, gerr, sizeof(gerr)))) {
        nf_errf_at(err, errlen, 0, path, "embedded metadata: %s", gerr);
        goto out;
    }
    /* Index. */
    f->n_tiles = h->n_tiles;
    size_t ibytes = (size_t)(h->n_tiles * sizeof(struct nf_nft_tile));
    if (posix_memalign((void **)&f->tiles, NF_NFT_ALIGN, nf_nft_padded(ibytes))) {
        rc = -ENOMEM;
        nf_errf_at(err, errlen, 0, path, "out of memory for %" PRIu64 " index records", h->n_tiles);
        goto out;
    }
    if ((rc = read_full(f->fd, f->tiles, nf_nft_padded(ibytes), h->index_offset))) {
        nf_errf_at(err, errlen, 0, path, "reading the tile index: %s", nf_strerror(rc));
        goto out;
    }
    sum = XXH3_64bits(f->tiles, ibytes);
    if (sum != h->index_checksum) {
        rc = NF_ECHECKSUM;
        nf_errf_at(err, errlen, 0, path,
                   "tile index checksum mismatch (stored %016" PRIx64 ", computed %016" PRIx64 ")",
                   h->index_checksum, sum);
        goto out;
    }
    if ((rc = open_parts(f, direct, (uint64_t)st.st_size, path, err, errlen)) ||
        (rc = check_index(f, path, err, errlen)) || (rc = load_calib(f, path, err, errlen)))
        goto out;
    *out = f;
    return 0;
out:
    nf_nft_close(f);
    return rc;
}

void nf_nft_close(struct nf_nft *f)
{
    if (!f)
        return;
    for (uint32_t i = 0; f->in_place && i < f->n_parts; i++)
        if (f->part_fd[i] >= 0)
            close(f->part_fd[i]);
    free(f->part_fd);
    free(f->part_size);
    if (f->fd >= 0)
        close(f->fd);
    nf_gguf_close(f->meta);
    free(f->meta_image);
    free(f->tiles);
    free(f->run_first);
    free(f->run_count);
    free(f->calib);
    free(f->calib_layer);
    free(f);
}

struct nf_gguf *nf_nft_gguf(const struct nf_nft *f)
{
    return f ? f->meta : NULL;
}

static bool run_slot(const struct nf_nft *f, uint32_t layer, enum nf_tile_kind kind, size_t *slot)
{
    if ((unsigned)kind >= NF_TILE_KIND_COUNT)
        return false;
    if (nf_tile_kind_has_layer(kind)) {
        if (layer >= f->hdr.n_layer)
            return false;
    } else if (layer != NF_NFT_NO_LAYER) {
        return false;
    } else {
        layer = f->hdr.n_layer;
    }
    *slot = (size_t)layer * NF_TILE_KIND_COUNT + kind;
    return true;
}

const struct nf_nft_tile *nf_nft_find(const struct nf_nft *f, uint32_t layer,
                                      enum nf_tile_kind kind, uint32_t index)
{
    size_t slot;
    if (!f || !run_slot(f, layer, kind, &slot) || index >= f->run_count[slot])
        return NULL;
    return &f->tiles[f->run_first[slot] + index];
}

uint32_t nf_nft_count(const struct nf_nft *f, uint32_t layer, enum nf_tile_kind kind)
{
    size_t slot;
    return f && run_slot(f, layer, kind, &slot) ? f->run_count[slot] : 0;
}

uint64_t nf_nft_tile_id(const struct nf_nft *f, const struct nf_nft_tile *t)
{
    return (uint64_t)(t - f->tiles);
}

const struct nf_nft_tile *nf_nft_embd_row(const struct nf_nft *f, uint32_t token, size_t *offset)
{
    if (!f || f->hdr.embd_rows_per_tile == 0 || token >= f->hdr.n_vocab)
        return NULL;
    const struct nf_nft_tile *t =
        nf_nft_find(f, NF_NFT_NO_LAYER, NF_TILE_EMBD, token / f->hdr.embd_rows_per_tile);
    if (!t || token < t->first || token - t->first >= t->count)
        return NULL;
    if (offset)
        *offset = (size_t)(t->size / t->count * (token - t->first));
    return t;
}

const struct nf_nft_tile *nf_nft_predictor(const struct nf_nft *f, uint32_t layer)
{
    const struct nf_nft_tile *t = nf_nft_find(f, layer, NF_TILE_PRED_LOWRANK, 0);
    return t ? t : nf_nft_find(f, layer, NF_TILE_PRED_ROUTER, 0);
}

void nf_nft_describe(const struct nf_nft *f, const struct nf_nft_tile *t, char *buf, size_t len)
{
    char where[32] = "";
    if (t->layer != NF_NFT_NO_LAYER)
        snprintf(where, sizeof(where), "layer %" PRIu32 " ", t->layer);
    snprintf(buf, len, "%s%s #%" PRIu32 " (id %" PRIu64 ", offset %" PRIu64 ", %" PRIu64 " bytes)",
             where, nf_tile_kind_name((enum nf_tile_kind)t->kind), t->index, nf_nft_tile_id(f, t),
             t->offset, t->size);
}

int nf_nft_read(const struct nf_nft *f, const struct nf_nft_tile *t, void *buf, size_t bufsize,
                char *err, size_t errlen)
{
    if (!f || !t || !buf || t < f->tiles || t >= f->tiles + f->n_tiles)
        return NF_EUSAGE;
    uint64_t padded = nf_nft_tile_span(t), skew = nf_nft_tile_skew(t);
    if ((uintptr_t)buf % NF_NFT_ALIGN || bufsize < padded) {
        nf_errf_at(err, errlen, 0, f->path,
                   "tile buffer of %zu bytes at %p: needs %" PRIu64 " bytes, 4096-aligned", bufsize,
                   buf, padded);
        return NF_EUSAGE;
    }
    /* An in-place tile's span may run past the end of its source file: only the tile's own
     * bytes must arrive. */
    int rc = read_span(nf_nft_tile_fd(f, t), buf, (size_t)padded, t->offset - skew,
                       (size_t)(f->in_place ? skew + t->size : padded));
    char what[128];
    if (rc) {
        nf_nft_describe(f, t, what, sizeof(what));
        nf_errf_at(err, errlen, 0, f->path, "reading tile %s: %s", what, nf_strerror(rc));
        return rc;
    }
    uint64_t sum = nf_nft_tile_sum(f, t, buf);
    if (skew)
        memmove(buf, (uint8_t *)buf + skew, (size_t)t->size);
    if (sum != t->checksum) {
        nf_nft_describe(f, t, what, sizeof(what));
        nf_errf_at(err, errlen, 0, f->path,
                   "tile %s: checksum mismatch (stored %016" PRIx64 ", computed %016" PRIx64 ")",
                   what, t->checksum, sum);
        return NF_ECHECKSUM;
    }
    return 0;
}

int nf_nft_bundle_group(const struct nf_nft_tile *t, const void *buf, uint32_t j,
                        struct nf_nft_bundle *out)
{
    if (!t || !buf || !out || (t->kind != NF_TILE_FFN && t->kind != NF_TILE_EXPERT) ||
        t->group == 0 || j >= t->count / t->group || nf_nft_tile_bytes(t) == 0)
        return NF_EUSAGE;
    out->gate_type = (enum nf_type)t->type[0];
    out->up_type = (enum nf_type)t->type[1];
    out->down_type = (enum nf_type)t->type[2];
    out->gate_row_size = nf_row_size(out->gate_type, t->ne0);
    out->up_row_size = nf_row_size(out->up_type, t->ne0);
    out->down_row_size = nf_row_size(out->down_type, t->group);
    size_t gate = out->gate_row_size * t->group, up = out->up_row_size * t->group;
    size_t per = gate + up + out->down_row_size * t->ne0;
    const uint8_t *p = (const uint8_t *)buf + per * j;
    out->gate = p;
    out->up = p + gate;
    out->down = p + gate + up;
    out->n_neurons = (int)t->group;
    out->n_embd = (int)t->ne0;
    out->first = t->first + j * t->group;
    return 0;
}

int nf_nft_verify(const struct nf_nft *f,
                  void (*bad)(void *ud, const struct nf_nft_tile *t, const char *msg), void *ud)
{
    if (!f)
        return NF_EUSAGE;
    uint64_t cap = 0;
    void *buf = NULL;
    int first_rc = 0;
    char msg[512];
    for (uint64_t i = 0; i < f->n_tiles; i++) {
        const struct nf_nft_tile *t = &f->tiles[i];
        uint64_t need = nf_nft_tile_span(t);
        if (need > cap) {
            free(buf);
            buf = NULL;
            if (posix_memalign(&buf, NF_NFT_ALIGN, (size_t)need))
                return -ENOMEM;
            cap = need;
        }
        int rc = nf_nft_read(f, t, buf, (size_t)cap, msg, sizeof(msg));
        if (rc) {
            if (bad)
                bad(ud, t, msg);
            if (!first_rc)
                first_rc = rc;
        }
    }
    free(buf);
    return first_rc;
}
