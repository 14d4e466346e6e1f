/* fuzz_nft.c - libFuzzer target: the .nft tile-file reader and the engine's .nft loader on
 * arbitrary files.
 *
 * Random bytes rarely survive the header, metadata, index and tile checksums, so before opening
 * the harness recomputes every checksum the mutated bytes declare (tiles first, then the index,
 * the metadata, the calibration section and last the header). Mutations therefore reach the
 * semantic checks: hyperparameters, the embedded GGUF image, tile kinds, shapes, numbering,
 * offsets and the calibration records. Besides crashes (ASan/UBSan) it traps on broken
 * contracts: a refusal is a negative code with a one-line message naming the file, and an
 * accepted file has every indexed tile inside the file, found by its (layer, kind, index) and
 * readable. tests/fuzz/run.sh makes the seeds with nanoflowctl (mkmodel, convert). */
#define _GNU_SOURCE
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>
#include <xxhash.h>

#include "model.h"
#include "nft.h"

#define CHECK(x)              \
    do {                      \
        if (!(x))             \
            __builtin_trap(); \
    } while (0)

#define MAX_TILE (1u << 20) /* tiles read back; the seeds' are a few KiB */

static int in_file(uint64_t off, uint64_t len, size_t size)
{
    return off <= size && len <= size - off;
}

/* Rewrites the checksums of buf (size bytes) to match what its header and index declare. */
static void fix_checksums(uint8_t *buf, size_t size)
{
    struct nf_nft_header h;
    if (size < sizeof(h))
        return;
    memcpy(&h, buf, sizeof(h));
    if (in_file(h.index_offset, h.n_tiles * sizeof(struct nf_nft_tile), size) &&
        h.n_tiles <= size / sizeof(struct nf_nft_tile)) {
        for (uint64_t i = 0; i < h.n_tiles; i++) {
            struct nf_nft_tile t;
            uint8_t *rec = buf + h.index_offset + i * sizeof(t);
            memcpy(&t, rec, sizeof(t));
            uint64_t padded = nf_nft_padded(t.size);
            if (t.size <= size && in_file(t.offset, padded, size)) {
                t.checksum = XXH3_64bits(buf + t.offset, padded);
                memcpy(rec, &t, sizeof(t));
            }
        }
        h.index_checksum =
            XXH3_64bits(buf + h.index_offset, h.n_tiles * sizeof(struct nf_nft_tile));
    }
    if (in_file(h.meta_offset, h.meta_size, size))
        h.meta_checksum = XXH3_64bits(buf + h.meta_offset, h.meta_size);
    if (in_file(h.calib_offset, h.calib_size, size) && h.calib_size)
        h.calib_checksum = XXH3_64bits(buf + h.calib_offset, h.calib_size);
    h.header_checksum = XXH3_64bits(&h, offsetof(struct nf_nft_header, header_checksum));
    memcpy(buf, &h, sizeof(h));
}

/* A refusal: a negative code and one line that names the file. */
static void check_refusal(int rc, const char *err, const char *path)
{
    CHECK(rc < 0);
    CHECK(err[0] != '\0' && !strchr(err, '\n'));
    CHECK(strstr(err, path) != NULL);
}

static void walk(const struct nf_nft *f, size_t size, const char *path)
{
    static uint8_t *buf;
    if (!buf)
        CHECK(posix_memalign((void **)&buf, NF_NFT_ALIGN, MAX_TILE) == 0);
    char err[512], desc[256];
    for (uint64_t id = 0; id < f->n_tiles; id++) {
        const struct nf_nft_tile *t = &f->tiles[id];
        uint64_t padded = nf_nft_padded(t->size);
        CHECK(t->offset % NF_NFT_ALIGN == 0 && in_file(t->offset, padded, size));
        CHECK(nf_nft_tile_id(f, t) == id);
        CHECK(nf_nft_find(f, t->layer, (enum nf_tile_kind)t->kind, t->index) == t);
        nf_nft_describe(f, t, desc, sizeof(desc));
        CHECK(strchr(desc, '\n') == NULL);
        if (padded > MAX_TILE)
            continue;
        err[0] = '\0';
        int rc = nf_nft_read(f, t, buf, MAX_TILE, err, sizeof(err));
        if (rc < 0) {
            check_refusal(rc, err, path);
            continue;
        }
        if (t->kind == NF_TILE_FFN || t->kind == NF_TILE_EXPERT) {
            CHECK(t->group > 0);
            for (uint32_t j = 0; j < t->count / t->group; j++) {
                struct nf_nft_bundle b;
                CHECK(nf_nft_bundle_group(t, buf, j, &b) == 0);
                const uint8_t *end = buf + t->size;
                CHECK((const uint8_t *)b.gate >= buf &&
                      (const uint8_t *)b.gate + (size_t)b.n_neurons * b.gate_row_size <= end);
                CHECK((const uint8_t *)b.up + (size_t)b.n_neurons * b.up_row_size <= end);
                CHECK((const uint8_t *)b.down + (size_t)b.n_embd * b.down_row_size <= end);
            }
        }
    }
    for (uint32_t tok = 0; tok < f->hdr.n_vocab && tok < 4096; tok++) {
        size_t off = 0;
        const struct nf_nft_tile *t = nf_nft_embd_row(f, tok, &off);
        if (t)
            CHECK(off < t->size);
    }
    for (uint32_t il = 0; il < f->hdr.n_layer; il++) {
        (void)nf_nft_predictor(f, il);
        struct nf_nft_calib_layer cl;
        if (nf_nft_calib(f) && nf_nft_calib_layer(f, il, &cl) == 0)
            for (uint32_t g = 0; g < cl.n_groups; g++)
                CHECK(cl.order[g] < cl.n_groups);
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static int fd = -1;
    if (fd < 0)
        CHECK((fd = memfd_create("fuzz.nft", 0)) >= 0);
    uint8_t *buf = malloc(size ? size : 1);
    CHECK(buf != NULL);
    memcpy(buf, data, size);
    fix_checksums(buf, size);
    CHECK(ftruncate(fd, 0) == 0);
    CHECK(pwrite(fd, buf, size, 0) == (ssize_t)size);
    free(buf);
    char path[64], err[512];
    snprintf(path, sizeof(path), "/proc/self/fd/%d", fd);

    struct nf_nft *f = NULL;
    err[0] = '\0';
    int rc = nf_nft_open(&f, path, false, err, sizeof(err));
    if (rc < 0) {
        CHECK(f == NULL);
        check_refusal(rc, err, path);
        return 0;
    }
    walk(f, size, path);
    nf_nft_close(f);

    /* The engine's loader on the same file (what `run --model X.nft` does). */
    struct nf_model *m = NULL;
    err[0] = '\0';
    rc = nf_model_load(&m, path, err, sizeof(err));
    if (rc < 0)
        check_refusal(rc, err, path);
    else
        nf_model_free(m);
    return 0;
}
