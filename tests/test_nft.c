/* test_nft.c - .nft tile files: conversion of every shared model, bit-identical tiles, metadata
 * round trip, lookup, checksums, hostile files, refusals, and the low-rank predictor. */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <xxhash.h>

#include <cmocka.h>

#include "gguf.h"
#include "gguf_write.h"
#include "nf_err.h"
#include "nft.h"
#include "predictor.h"

static char tmpdir[256];

static int setup_dir(void **state)
{
    snprintf(tmpdir, sizeof(tmpdir), "/tmp/test_nft-XXXXXX");
    return mkdtemp(tmpdir) ? 0 : -1;
}

static int teardown_dir(void **state)
{
    DIR *d = opendir(tmpdir);
    struct dirent *e;
    char p[600];
    while (d && (e = readdir(d)))
        if (e->d_name[0] != '.') {
            snprintf(p, sizeof(p), "%s/%s", tmpdir, e->d_name);
            unlink(p);
        }
    if (d)
        closedir(d);
    rmdir(tmpdir);
    return 0;
}

static void *aligned(size_t n)
{
    void *p = NULL;
    assert_int_equal(posix_memalign(&p, NF_NFT_ALIGN, n ? n : NF_NFT_ALIGN), 0);
    return p;
}

static void convert(const char *in, const char *out, uint64_t tile_size, int rank)
{
    struct nf_nft_convert_opts o = {.tile_size = tile_size, .rank = rank};
    char err[512];
    int rc = nf_nft_convert(in, out, &o, err, sizeof(err));
    if (rc)
        fail_msg("convert %s: %s", in, err);
}

/* Compares two metadata values (as the GGUF reader returns them). */
static bool same_value(const struct nf_gguf_value *a, const struct nf_gguf_value *b)
{
    if (a->type != b->type)
        return false;
    switch (a->type) {
    case NF_GGUF_STRING:
        return a->v.str.len == b->v.str.len && !memcmp(a->v.str.s, b->v.str.s, a->v.str.len);
    case NF_GGUF_ARRAY: {
        if (a->v.arr.type != b->v.arr.type || a->v.arr.n != b->v.arr.n)
            return false;
        if (a->v.arr.type == NF_GGUF_STRING) {
            const struct nf_gguf_str *x = a->v.arr.data, *y = b->v.arr.data;
            for (uint64_t i = 0; i < a->v.arr.n; i++)
                if (x[i].len != y[i].len || memcmp(x[i].s, y[i].s, x[i].len))
                    return false;
            return true;
        }
        if (a->v.arr.type == NF_GGUF_ARRAY) {
            const struct nf_gguf_value *x = a->v.arr.data, *y = b->v.arr.data;
            for (uint64_t i = 0; i < a->v.arr.n; i++)
                if (!same_value(&x[i], &y[i]))
                    return false;
            return true;
        }
        static const size_t sz[NF_GGUF_VTYPE_COUNT] = {1, 1, 2, 2, 4, 4, 4, 1, 0, 0, 8, 8, 8};
        return !memcmp(a->v.arr.data, b->v.arr.data, a->v.arr.n * sz[a->v.arr.type]);
    }
    default: return !memcmp(&a->v, &b->v, sizeof(a->v.u64));
    }
}

/* The source tensor a tile's bytes come from. */
static const char *tensor_of(const struct nf_nft_tile *t, char *buf, size_t len, int part)
{
    static const char *const glob[] = {[NF_TILE_EMBD] = "token_embd",
                                       [NF_TILE_OUTPUT] = "output",
                                       [NF_TILE_OUTPUT_NORM] = "output_norm",
                                       [NF_TILE_ROPE_FREQS] = "rope_freqs"};
    static const char *const lay[NF_TILE_KIND_COUNT] = {
        [NF_TILE_ATTN_NORM] = "attn_norm", [NF_TILE_ATTN_Q] = "attn_q",
        [NF_TILE_ATTN_K] = "attn_k",       [NF_TILE_ATTN_V] = "attn_v",
        [NF_TILE_ATTN_O] = "attn_output",  [NF_TILE_FFN_NORM] = "ffn_norm",
        [NF_TILE_ROUTER] = "ffn_gate_inp", [NF_TILE_PRED_ROUTER] = "ffn_gate_inp"};
    static const char *const ffn[3] = {"ffn_gate", "ffn_up", "ffn_down"};
    static const char *const exps[3] = {"ffn_gate_exps", "ffn_up_exps", "ffn_down_exps"};
    if (t->layer == NF_NFT_NO_LAYER)
        snprintf(buf, len, "%s.weight", glob[t->kind]);
    else if (t->kind == NF_TILE_FFN)
        snprintf(buf, len, "blk.%u.%s.weight", t->layer, ffn[part]);
    else if (t->kind == NF_TILE_EXPERT)
        snprintf(buf, len, "blk.%u.%s.weight", t->layer, exps[part]);
    else
        snprintf(buf, len, "blk.%u.%s.weight", t->layer, lay[t->kind]);
    return buf;
}

/* Reassembles every source tensor from the tiles of f and compares it with g's bytes. */
static void check_bit_identical(const struct nf_gguf *g, const struct nf_nft *f)
{
    uint8_t **img = calloc(g->n_tensors, sizeof(*img));
    uint8_t **seen = calloc(g->n_tensors, sizeof(*seen));
    assert_non_null(img);
    for (uint64_t i = 0; i < g->n_tensors; i++) {
        img[i] = calloc(1, g->tensors[i].size);
        seen[i] = calloc(1, g->tensors[i].size);
        assert_true(img[i] && seen[i]);
    }
    char name[96], err[512];
    for (uint64_t id = 0; id < f->n_tiles; id++) {
        const struct nf_nft_tile *t = &f->tiles[id];
        /* O(1) lookup finds exactly this record. */
        assert_ptr_equal(nf_nft_find(f, t->layer, (enum nf_tile_kind)t->kind, t->index), t);
        assert_int_equal(nf_nft_tile_id(f, t), id);
        size_t cap = nf_nft_padded(t->size);
        uint8_t *buf = aligned(cap);
        int rc = nf_nft_read(f, t, buf, cap, err, sizeof(err));
        if (rc)
            fail_msg("%s", err);
        if (t->kind == NF_TILE_PRED_LOWRANK) {
            free(buf);
            continue;
        }
        if (t->kind == NF_TILE_FFN || t->kind == NF_TILE_EXPERT) {
            const struct nf_gguf_tensor *src[3];
            for (int p = 0; p < 3; p++) {
                src[p] = nf_gguf_find_tensor(g, tensor_of(t, name, sizeof(name), p));
                assert_non_null(src[p]);
            }
            uint64_t e = t->kind == NF_TILE_EXPERT ? t->expert : 0;
            uint64_t n_ff = (uint64_t)src[0]->ne[1];
            for (uint32_t j = 0; j < t->count / t->group; j++) {
                struct nf_nft_bundle b;
                assert_int_equal(nf_nft_bundle_group(t, buf, j, &b), 0);
                assert_int_equal(b.first, t->first + j * t->group);
                const void *part[2] = {b.gate, b.up};
                size_t rs[2] = {b.gate_row_size, b.up_row_size};
                for (int p = 0; p < 2; p++) {
                    uint64_t off = (e * n_ff + b.first) * rs[p];
                    uint64_t idx = (uint64_t)(src[p] - g->tensors);
                    memcpy(img[idx] + off, part[p], rs[p] * t->group);
                    memset(seen[idx] + off, 1, rs[p] * t->group);
                }
                uint64_t idx = (uint64_t)(src[2] - g->tensors);
                uint64_t full = nf_row_size(src[2]->type, src[2]->ne[0]);
                for (uint32_t r = 0; r < t->ne0; r++) {
                    uint64_t off = (e * t->ne0 + r) * full + b.first / t->group * b.down_row_size;
                    memcpy(img[idx] + off, (const uint8_t *)b.down + r * b.down_row_size,
                           b.down_row_size);
                    memset(seen[idx] + off, 1, b.down_row_size);
                }
            }
            assert_int_equal(
                nf_nft_bundle_group(t, buf, t->count / t->group, &(struct nf_nft_bundle){0}),
                NF_EUSAGE);
        } else {
            const struct nf_gguf_tensor *src =
                nf_gguf_find_tensor(g, tensor_of(t, name, sizeof(name), 0));
            assert_non_null(src);
            uint64_t idx = (uint64_t)(src - g->tensors);
            uint64_t off = nf_row_size(src->type, src->ne[0]) * t->first;
            assert_true(off + t->size <= src->size);
            if (t->kind != NF_TILE_PRED_ROUTER) {
                memcpy(img[idx] + off, buf, t->size);
                memset(seen[idx] + off, 1, t->size);
            } else {
                uint8_t *want = malloc(src->size);
                assert_int_equal(nf_gguf_read_tensor(g, src, want, src->size), 0);
                assert_memory_equal(buf, want, src->size);
                free(want);
            }
        }
        /* Padding is zero. */
        for (size_t i = t->size; i < cap; i++)
            assert_int_equal(buf[i], 0);
        free(buf);
    }
    for (uint64_t i = 0; i < g->n_tensors; i++) {
        const struct nf_gguf_tensor *t = &g->tensors[i];
        uint8_t *want = malloc(t->size);
        assert_int_equal(nf_gguf_read_tensor(g, t, want, t->size), 0);
        for (uint64_t b = 0; b < t->size; b++)
            if (!seen[i][b])
                fail_msg("%s: byte %lu is in no tile", t->name.s, (unsigned long)b);
        if (memcmp(want, img[i], t->size))
            fail_msg("%s: tiles differ from the source", t->name.s);
        free(want);
        free(img[i]);
        free(seen[i]);
    }
    free(img);
    free(seen);
}

static void check_metadata(const struct nf_gguf *g, const struct nf_nft *f)
{
    const struct nf_gguf *m = nf_nft_gguf(f);
    assert_non_null(m);
    assert_int_equal(m->n_kv, g->n_kv);
    for (uint64_t i = 0; i < g->n_kv; i++) {
        const struct nf_gguf_value *v = nf_gguf_get(m, g->kv[i].key.s);
        assert_non_null(v);
        if (!same_value(v, &g->kv[i].value))
            fail_msg("metadata key '%s' differs", g->kv[i].key.s);
    }
    assert_int_equal(m->n_tensors, g->n_tensors);
    for (uint64_t i = 0; i < g->n_tensors; i++) {
        const struct nf_gguf_tensor *a = &g->tensors[i], *b = nf_gguf_find_tensor(m, a->name.s);
        assert_non_null(b);
        assert_int_equal(a->type, b->type);
        assert_int_equal(a->n_dims, b->n_dims);
        assert_memory_equal(a->ne, b->ne, sizeof(a->ne));
        /* The metadata holds no tensor data: reads are refused, never served from elsewhere. */
        uint8_t *data = malloc(b->size);
        assert_int_equal(nf_gguf_read_tensor(m, b, data, b->size), NF_ETRUNCATED);
        free(data);
    }
}

static void test_every_model(void **state)
{
    DIR *d = opendir(NF_SHARED_DIR "/models");
    if (!d)
        skip();
    struct dirent *e;
    int n = 0;
    while ((e = readdir(d))) {
        size_t len = strlen(e->d_name);
        if (len < 5 || strcmp(e->d_name + len - 5, ".gguf"))
            continue;
        char in[512], out[1024], err[512];
        snprintf(in, sizeof(in), "%s/models/%s", NF_SHARED_DIR, e->d_name);
        snprintf(out, sizeof(out), "%s/%s.nft", tmpdir, e->d_name);
        /* A small tile size splits attention, embedding and FFN into several tiles. */
        convert(in, out, 16384, 0);
        struct nf_gguf *g;
        struct nf_nft *f;
        assert_int_equal(nf_gguf_open(&g, in, err, sizeof(err)), 0);
        if (nf_nft_open(&f, out, true, err, sizeof(err)))
            fail_msg("%s", err);
        check_metadata(g, f);
        check_bit_identical(g, f);
        assert_int_equal(nf_nft_verify(f, NULL, NULL), 0);
        /* Lookups outside the file give NULL. */
        assert_null(nf_nft_find(f, f->hdr.n_layer, NF_TILE_ATTN_Q, 0));
        assert_null(nf_nft_find(f, 0, NF_TILE_EMBD, 0));
        assert_null(nf_nft_find(f, NF_NFT_NO_LAYER, NF_TILE_EMBD,
                                nf_nft_count(f, NF_NFT_NO_LAYER, NF_TILE_EMBD)));
        assert_null(nf_nft_embd_row(f, f->hdr.n_vocab, NULL));
        size_t off;
        const struct nf_nft_tile *t = nf_nft_embd_row(f, f->hdr.n_vocab - 1, &off);
        assert_non_null(t);
        assert_true(off < t->size);
        for (uint32_t il = 0; il < f->hdr.n_layer; il++)
            assert_non_null(nf_nft_predictor(f, il));
        nf_nft_close(f);
        nf_gguf_close(g);
        unlink(out);
        n++;
    }
    closedir(d);
    assert_true(n >= 1);
}

static void make_stories(char *out, size_t len, const char *name)
{
    snprintf(out, len, "%s/%s", tmpdir, name);
    convert(NF_SHARED_DIR "/models/stories260K.gguf", out, 8192, 0);
}

static void flip(const char *path, uint64_t off)
{
    int fd = open(path, O_RDWR);
    assert_true(fd >= 0);
    uint8_t b;
    assert_int_equal(pread(fd, &b, 1, (off_t)off), 1);
    b ^= 0x10;
    assert_int_equal(pwrite(fd, &b, 1, (off_t)off), 1);
    close(fd);
}

struct bad_list {
    int n;
    uint64_t id[8];
    char msg[256];
};

static void on_bad(void *ud, const struct nf_nft_tile *t, const char *msg)
{
    struct bad_list *b = ud;
    (void)t;
    if (b->n < 8)
        b->id[b->n] = t->offset; /* offsets identify tiles uniquely */
    b->n++;
    snprintf(b->msg, sizeof(b->msg), "%s", msg);
}

/* A flipped byte anywhere in any tile (data or padding) is caught and the tile named. */
static void test_flipped_byte(void **state)
{
    char path[512], err[512];
    make_stories(path, sizeof(path), "flip.nft");
    struct nf_nft *f;
    assert_int_equal(nf_nft_open(&f, path, false, err, sizeof(err)), 0);
    uint64_t n = f->n_tiles;
    struct nf_nft_tile *tiles = malloc(n * sizeof(*tiles));
    memcpy(tiles, f->tiles, n * sizeof(*tiles));
    nf_nft_close(f);
    for (uint64_t i = 0; i < n; i++) {
        const struct nf_nft_tile *t = &tiles[i];
        uint64_t off = t->offset + (i * 7919) % nf_nft_padded(t->size);
        flip(path, off);
        assert_int_equal(nf_nft_open(&f, path, false, err, sizeof(err)), 0);
        struct bad_list bad = {0};
        assert_int_equal(nf_nft_verify(f, on_bad, &bad), NF_ECHECKSUM);
        assert_int_equal(bad.n, 1);
        assert_int_equal(bad.id[0], t->offset);
        char want[160];
        nf_nft_describe(f, &f->tiles[i], want, sizeof(want));
        assert_non_null(strstr(bad.msg, want));
        assert_non_null(strstr(bad.msg, nf_tile_kind_name((enum nf_tile_kind)t->kind)));
        uint8_t *buf = aligned(nf_nft_padded(t->size));
        assert_int_equal(
            nf_nft_read(f, &f->tiles[i], buf, nf_nft_padded(t->size), err, sizeof(err)),
            NF_ECHECKSUM);
        assert_non_null(strstr(err, want));
        free(buf);
        nf_nft_close(f);
        flip(path, off);
    }
    assert_int_equal(nf_nft_open(&f, path, false, err, sizeof(err)), 0);
    assert_int_equal(nf_nft_verify(f, NULL, NULL), 0);
    /* Reads check the buffer. */
    uint8_t *buf = aligned(2 * NF_NFT_ALIGN);
    assert_int_equal(nf_nft_read(f, &f->tiles[0], buf + 1, 4096, NULL, 0), NF_EUSAGE);
    assert_int_equal(nf_nft_read(f, &f->tiles[0], buf, 16, NULL, 0), NF_EUSAGE);
    free(buf);
    nf_nft_close(f);
    free(tiles);
    unlink(path);
}

static uint8_t *slurp(const char *path, size_t *len)
{
    FILE *fp = fopen(path, "rb");
    assert_non_null(fp);
    fseek(fp, 0, SEEK_END);
    *len = (size_t)ftell(fp);
    rewind(fp);
    uint8_t *p = malloc(*len);
    assert_int_equal(fread(p, 1, *len, fp), *len);
    fclose(fp);
    return p;
}

static void spit(const char *path, const void *p, size_t len)
{
    FILE *fp = fopen(path, "wb");
    assert_non_null(fp);
    assert_int_equal(fwrite(p, 1, len, fp), len);
    fclose(fp);
}

/* Recomputes the index and header checksums after an edit, so deeper checks are reached. */
static void reseal(uint8_t *img)
{
    struct nf_nft_header h;
    memcpy(&h, img, sizeof(h));
    if (h.index_offset < 4096 || h.n_tiles > 100000)
        goto header;
    h.index_checksum = XXH3_64bits(img + h.index_offset, h.n_tiles * sizeof(struct nf_nft_tile));
header:
    h.header_checksum = XXH3_64bits(&h, offsetof(struct nf_nft_header, header_checksum));
    memcpy(img, &h, sizeof(h));
}

static int open_image(const char *path, const uint8_t *img, size_t len, char *err, size_t errlen)
{
    spit(path, img, len);
    struct nf_nft *f;
    int rc = nf_nft_open(&f, path, false, err, errlen);
    if (rc == 0)
        nf_nft_close(f);
    return rc;
}

static void test_hostile(void **state)
{
    char path[512], bad[512], err[512];
    make_stories(path, sizeof(path), "good.nft");
    snprintf(bad, sizeof(bad), "%s/bad.nft", tmpdir);
    size_t len;
    uint8_t *good = slurp(path, &len), *img = malloc(len);
    struct nf_nft_header h;
    memcpy(&h, good, sizeof(h));
    /* Truncations anywhere. */
    size_t cuts[] = {0,
                     3,
                     100,
                     4096,
                     (size_t)h.meta_offset + 10,
                     (size_t)h.index_offset + 64,
                     (size_t)h.data_offset,
                     len - 1};
    for (size_t i = 0; i < sizeof(cuts) / sizeof(cuts[0]); i++) {
        int rc = open_image(bad, good, cuts[i], err, sizeof(err));
        assert_true(rc < 0);
        assert_true(strlen(err) > 0);
    }
    /* Damage to header, metadata and index is caught by their checksums. */
    uint64_t spots[] = {0,
                        8,
                        100,
                        h.meta_offset + 5,
                        h.meta_offset + h.meta_size - 1,
                        h.index_offset + 3,
                        h.index_offset + 64 * 5 + 20};
    for (size_t i = 0; i < sizeof(spots) / sizeof(spots[0]); i++) {
        memcpy(img, good, len);
        img[spots[i]] ^= 0x01;
        assert_true(open_image(bad, img, len, err, sizeof(err)) < 0);
    }
    /* Resealed edits of the index and header reach the structural checks. */
    struct nf_nft_tile *t0 = (struct nf_nft_tile *)(img + h.index_offset);
    for (int k = 0; k < 12; k++) {
        memcpy(img, good, len);
        struct nf_nft_header *hh = (struct nf_nft_header *)img;
        struct nf_nft_tile *t = t0 + 3;
        switch (k) {
        case 0: t->kind = NF_TILE_KIND_COUNT; break;
        case 1: t->offset += 1; break;
        case 2: t->offset = t0[2].offset; break; /* overlap */
        case 3: t->size += 1; break;
        case 4: t->count = 0; break;
        case 5: t->type[0] = 99; break;
        case 6: t->index = 7; break;
        case 7: t->layer = 1000; break;
        case 8: hh->n_layer = 1u << 30; break;
        case 9: hh->n_tiles = UINT64_MAX / 64; break;
        case 10: hh->major = 2; break;
        case 11: t0[hh->n_tiles - 1].offset = len; break; /* last tile past the end */
        }
        reseal(img);
        int rc = open_image(bad, img, len, err, sizeof(err));
        if (rc >= 0)
            fail_msg("edit %d was accepted", k);
        assert_true(strlen(err) > 0);
    }
    /* Random resealed corruption of the index never crashes the reader. */
    uint64_t s = 12345;
    for (int it = 0; it < 300; it++) {
        memcpy(img, good, len);
        for (int j = 0; j < 4; j++) {
            s = s * 6364136223846793005ull + 1442695040888963407ull;
            size_t at = (size_t)(h.index_offset + (s >> 33) % (h.n_tiles * 64));
            img[at] = (uint8_t)(s >> 13);
        }
        reseal(img);
        (void)open_image(bad, img, len, err, sizeof(err));
    }
    /* A directory and a missing file are refused. */
    struct nf_nft *f;
    assert_true(nf_nft_open(&f, tmpdir, false, err, sizeof(err)) < 0);
    assert_int_equal(nf_nft_open(&f, "/nonexistent/x.nft", false, err, sizeof(err)), -ENOENT);
    free(img);
    free(good);
    unlink(bad);
    unlink(path);
}

/* Writes a copy of stories260K's header with changes: another architecture, an extra tensor, or
 * one tensor's type changed (tensor data is left as a hole). */
static void make_variant(const char *dst, const char *arch, const char *extra, enum nf_type retype)
{
    struct nf_gguf *g;
    char err[256];
    assert_int_equal(nf_gguf_open(&g, NF_SHARED_DIR "/models/stories260K.gguf", err, sizeof(err)),
                     0);
    struct nf_gguf_writer *w;
    assert_int_equal(nf_gguf_writer_init(&w), 0);
    for (uint64_t i = 0; i < g->n_kv; i++) {
        if (arch && !strcmp(g->kv[i].key.s, "general.architecture"))
            assert_int_equal(nf_gguf_writer_add_str(w, "general.architecture", arch), 0);
        else
            assert_int_equal(nf_gguf_writer_add_value(w, g->kv[i].key.s, &g->kv[i].value), 0);
    }
    for (uint64_t i = 0; i < g->n_tensors; i++) {
        const struct nf_gguf_tensor *t = &g->tensors[i];
        enum nf_type ty =
            retype != NF_TYPE_COUNT && !strcmp(t->name.s, "blk.1.ffn_up.weight") ? retype : t->type;
        assert_int_equal(nf_gguf_writer_add_tensor(w, t->name.s, t->n_dims, t->ne, ty, NULL), 0);
    }
    if (extra) {
        int64_t ne[1] = {64};
        assert_int_equal(nf_gguf_writer_add_tensor(w, extra, 1, ne, NF_TYPE_F32, NULL), 0);
    }
    int fd = open(dst, O_RDWR | O_CREAT | O_TRUNC, 0644);
    assert_true(fd >= 0);
    assert_int_equal(nf_gguf_writer_write_header(w, fd), 0);
    close(fd);
    nf_gguf_writer_free(w);
    nf_gguf_close(g);
}

static int count_files(void)
{
    DIR *d = opendir(tmpdir);
    struct dirent *e;
    int n = 0;
    while ((e = readdir(d)))
        n += e->d_name[0] != '.';
    closedir(d);
    return n;
}

static void test_refusals(void **state)
{
    char in[512], out[512], err[512];
    snprintf(in, sizeof(in), "%s/variant.gguf", tmpdir);
    snprintf(out, sizeof(out), "%s/variant.nft", tmpdir);
    struct {
        const char *arch, *extra;
        enum nf_type retype;
        int want;
        const char *says;
    } cases[] = {
        {"gpt2", NULL, NF_TYPE_COUNT, NF_EARCH, "'gpt2' is not supported"},
        /* Keys are read under the architecture's prefix: llama.* does not count for qwen3moe. */
        {"qwen3moe", NULL, NF_TYPE_COUNT, NF_ENOKEY, "'qwen3moe.embedding_length' is missing"},
        {NULL, "blk.0.attn_q.bias", NF_TYPE_COUNT, NF_EARCH, "blk.0.attn_q.bias"},
        {"olmoe", NULL, NF_TYPE_COUNT, NF_ENOKEY, "'olmoe.embedding_length' is missing"},
        /* A shared expert outside qwen2moe is refused, not ignored. */
        {NULL, "blk.0.ffn_gate_inp_shexp.weight", NF_TYPE_COUNT, NF_EARCH,
         "blk.0.ffn_gate_inp_shexp.weight"},
        {NULL, NULL, NF_TYPE_Q8_1, NF_EBADTYPE, "blk.1.ffn_up.weight"},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        make_variant(in, cases[i].arch, cases[i].extra, cases[i].retype);
        int before = count_files();
        int rc = nf_nft_convert(in, out, NULL, err, sizeof(err));
        assert_int_equal(rc, cases[i].want);
        assert_non_null(strstr(err, cases[i].says));
        assert_int_equal(count_files(), before); /* no output, no temporary file left */
        unlink(in);
    }
    /* A rank above min(n_ff, n_embd) is refused. */
    struct nf_nft_convert_opts o = {.rank = 65};
    assert_int_equal(
        nf_nft_convert(NF_SHARED_DIR "/models/stories260K.gguf", out, &o, err, sizeof(err)),
        NF_EUSAGE);
    assert_int_equal(access(out, F_OK), -1);
    /* The output directory must exist; nothing is created elsewhere. */
    snprintf(out, sizeof(out), "%s/missing-dir/x.nft", tmpdir);
    assert_true(
        nf_nft_convert(NF_SHARED_DIR "/models/stories260K.gguf", out, NULL, err, sizeof(err)) < 0);
}

/* A matrix of known rank is recovered by a fit of that rank. */
static void test_lowrank_exact(void **state)
{
    enum { M = 96, N = 64, R = 5 };
    float *W = malloc(M * N * sizeof(float)), *A = malloc(M * R * sizeof(float));
    float *B = malloc(R * N * sizeof(float));
    uint64_t s = 7;
    float u[M][R], v[R][N];
    for (int i = 0; i < M; i++)
        for (int r = 0; r < R; r++) {
            s = s * 6364136223846793005ull + 1;
            u[i][r] = (float)((double)(s >> 11) / 9007199254740992.0 - 0.5);
        }
    for (int r = 0; r < R; r++)
        for (int j = 0; j < N; j++) {
            s = s * 6364136223846793005ull + 1;
            v[r][j] = (float)((double)(s >> 11) / 9007199254740992.0 - 0.5) * (float)(R - r);
        }
    double norm = 0;
    for (int i = 0; i < M; i++)
        for (int j = 0; j < N; j++) {
            float x = 0;
            for (int r = 0; r < R; r++)
                x += u[i][r] * v[r][j];
            W[i * N + j] = x;
            norm += (double)x * x;
        }
    assert_int_equal(nf_lowrank_fit(W, NF_TYPE_F32, N * sizeof(float), M, N, R, 1, 1, A, B), 0);
    double e2 = 0;
    for (int i = 0; i < M; i++)
        for (int j = 0; j < N; j++) {
            double x = 0;
            for (int r = 0; r < R; r++)
                x += (double)A[i * R + r] * B[r * N + j];
            e2 += (x - W[i * N + j]) * (x - W[i * N + j]);
        }
    assert_true(sqrt(e2 / norm) < 1e-4);
    /* Scores through the F32 path equal A (B x). */
    float x[N], sc[M], tmp[R];
    for (int j = 0; j < N; j++)
        x[j] = (float)sin(j);
    nf_lowrank_scores(sc, A, B, NF_TYPE_F32, M, N, R, x, tmp);
    for (int i = 0; i < M; i++) {
        double want = 0;
        for (int j = 0; j < N; j++)
            want += (double)W[i * N + j] * x[j];
        assert_float_equal(sc[i], want, 1e-3);
    }
    assert_int_equal(nf_lowrank_fit(W, NF_TYPE_F32, N * sizeof(float), M, N, N + 1, 1, 1, A, B),
                     NF_EUSAGE);
    free(W);
    free(A);
    free(B);
}

/* On stories260K the predicted top half of neuron groups overlaps the true top half (by |gate|)
 * clearly better than chance (50%), for inputs shaped like the FFN's (normed embeddings). */
static void test_predictor_stories(void **state)
{
    char path[512], err[512];
    make_stories(path, sizeof(path), "pred.nft");
    struct nf_nft *f;
    struct nf_gguf *g;
    assert_int_equal(nf_nft_open(&f, path, false, err, sizeof(err)), 0);
    assert_int_equal(nf_gguf_open(&g, NF_SHARED_DIR "/models/stories260K.gguf", err, sizeof(err)),
                     0);
    int n_embd = (int)f->hdr.n_embd, n_ff = (int)f->hdr.n_ff;
    float *embd = malloc((size_t)n_embd * f->hdr.n_vocab * sizeof(float));
    float *gate = malloc((size_t)n_embd * n_ff * sizeof(float)), norm[64];
    assert_int_equal(n_embd, 64);
    assert_int_equal(nf_gguf_read_tensor(g, nf_gguf_find_tensor(g, "token_embd.weight"), embd,
                                         (size_t)n_embd * f->hdr.n_vocab * sizeof(float)),
                     0);
    double overlap = 0;
    int trials = 0;
    for (uint32_t il = 0; il < f->hdr.n_layer; il++) {
        char name[64];
        snprintf(name, sizeof(name), "blk.%u.ffn_gate.weight", il);
        assert_int_equal(nf_gguf_read_tensor(g, nf_gguf_find_tensor(g, name), gate,
                                             (size_t)n_embd * n_ff * sizeof(float)),
                         0);
        snprintf(name, sizeof(name), "blk.%u.ffn_norm.weight", il);
        assert_int_equal(nf_gguf_read_tensor(g, nf_gguf_find_tensor(g, name), norm, sizeof(norm)),
                         0);
        const struct nf_nft_tile *pt = nf_nft_predictor(f, il);
        assert_non_null(pt);
        assert_int_equal(pt->kind, NF_TILE_PRED_LOWRANK);
        uint8_t *buf = aligned(nf_nft_padded(pt->size));
        assert_int_equal(nf_nft_read(f, pt, buf, nf_nft_padded(pt->size), err, sizeof(err)), 0);
        const void *A = buf;
        const void *B = buf + (size_t)pt->count * pt->rank * 2;
        int G = (int)nf_nft_find(f, il, NF_TILE_FFN, 0)->group, ng = n_ff / G;
        for (uint32_t tok = 1; tok < f->hdr.n_vocab; tok += 7) {
            float x[64], sc[512], truth[512], gs[512], gt[512], tmp[512];
            double ss = 0;
            for (int j = 0; j < n_embd; j++)
                ss += (double)embd[tok * n_embd + j] * embd[tok * n_embd + j];
            float inv = (float)(1.0 / sqrt(ss / n_embd + 1e-5));
            for (int j = 0; j < n_embd; j++)
                x[j] = embd[tok * n_embd + j] * inv * norm[j];
            for (int i = 0; i < n_ff; i++) {
                float a = 0;
                for (int j = 0; j < n_embd; j++)
                    a += gate[i * n_embd + j] * x[j];
                truth[i] = a;
            }
            nf_lowrank_scores(sc, A, B, (enum nf_type)pt->type[0], n_ff, n_embd, (int)pt->rank, x,
                              tmp);
            nf_group_scores(gs, sc, n_ff, G);
            nf_group_scores(gt, truth, n_ff, G);
            /* Top half of each ranking, by counting how many groups beat each one. */
            int half = ng / 2, hit = 0;
            for (int a = 0; a < ng; a++) {
                int above_p = 0, above_t = 0;
                for (int b = 0; b < ng; b++) {
                    above_p += gs[b] > gs[a];
                    above_t += gt[b] > gt[a];
                }
                hit += above_p < half && above_t < half;
            }
            overlap += (double)hit / half;
            trials++;
        }
        free(buf);
    }
    overlap /= trials;
    print_message("stories260K predictor (rank %u): top-50%% group overlap %.3f (chance 0.5)\n",
                  f->hdr.pred_rank, overlap);
    assert_true(overlap > 0.6);
    free(embd);
    free(gate);
    nf_gguf_close(g);
    nf_nft_close(f);
    unlink(path);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_lowrank_exact), cmocka_unit_test(test_every_model),
        cmocka_unit_test(test_flipped_byte),  cmocka_unit_test(test_hostile),
        cmocka_unit_test(test_refusals),      cmocka_unit_test(test_predictor_stories),
    };
    return cmocka_run_group_tests(tests, setup_dir, teardown_dir);
}
