/* region.h - one stack's POSIX shared-memory region: versioned header plus sub-areas by offset.
 *
 * Layout of a region (all integers little-endian, as the machine writes them):
 *   1. header (struct nf_shm_header) at offset 0: magic "NFSHMRGN", major/minor version,
 *      header size, total size, flags (none defined: any set bit is refused), creator pid,
 *      then n_areas descriptors {offset, size} indexed by enum nf_shm_area_id;
 *   2. the areas themselves, each starting on a 4096-byte boundary (the tile pool must be
 *      aligned for O_DIRECT), in id order, none overlapping the header.
 * The header holds offsets only, never pointers: every process maps the region at its own
 * address. A reader refuses another major version; a newer minor version may only append
 * (a larger header, more areas), which an older reader ignores. */
#ifndef NF_REGION_H
#define NF_REGION_H

#include <limits.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>

#define NF_SHM_MAGIC       0x4e4752534d48464eull /* "NFSHMRGN" in memory order */
#define NF_SHM_MAJOR       1
#define NF_SHM_MINOR       0
#define NF_SHM_ALIGN       4096u
#define NF_SHM_AREA_MAX    16
#define NF_SHM_FLAGS_KNOWN 0ull

enum nf_shm_area_id {
    NF_SHM_TILE_POOL,   /* tile slots, O_DIRECT aligned */
    NF_SHM_TILE_TABLE,  /* tile -> slot, state, pin count */
    NF_SHM_REQ_RING,    /* predictor -> fetcher request ring */
    NF_SHM_COMPLETION,  /* completion words compute waits on */
    NF_SHM_ACTIVATIONS, /* per-layer activation exchange, compute -> predictor */
    NF_SHM_COUNTERS,    /* per-stage counters */
    NF_SHM_NAREAS
};

struct nf_shm_area_desc {
    uint64_t offset; /* from the start of the region; a multiple of NF_SHM_ALIGN */
    uint64_t size;   /* bytes (0: area unused) */
};

struct nf_shm_header {
    _Atomic uint64_t magic; /* NF_SHM_MAGIC, stored last by the creator */
    uint16_t major;
    uint16_t minor;
    uint32_t header_size; /* sizeof(struct nf_shm_header) of the creator */
    uint64_t total_size;  /* bytes of the whole region, equal to the object's size */
    uint64_t flags;
    uint32_t n_areas; /* descriptors in use, >= NF_SHM_NAREAS for this major version */
    uint32_t creator_pid;
    struct nf_shm_area_desc areas[NF_SHM_AREA_MAX];
};

/* A process's view of a mapped region. */
struct nf_shm {
    void *base;          /* mapping (NULL when closed) */
    size_t size;         /* bytes mapped */
    char name[NAME_MAX]; /* shm object name, "/..." */
    char err[256];       /* why the last create/open failed */
};

/* Creates the shm object name ("/x", no other slash, O_EXCL, mode 0600), sizes it for a
 * header plus areas of sizes[id] bytes and maps it. Returns 0 or a negative code with s->err
 * set: -EINVAL (bad name), -EEXIST, -ENOMEM, -ENOSPC, NF_EOVERFLOW. Nothing is left behind on
 * failure. The caller eventually calls nf_shm_close() and nf_shm_unlink(). */
int nf_shm_create(struct nf_shm *s, const char *name, const uint64_t sizes[NF_SHM_NAREAS]);

/* Maps an existing region and validates its header. Returns 0 or a negative code with s->err
 * naming the field and the expected value: -ENOENT, -EAGAIN (the creator has not sized the
 * object or published its header yet: retry), NF_ETRUNCATED (object smaller than its
 * header or its total_size), NF_EBADMAGIC, NF_EBADVERSION (other major version or unknown
 * flags), NF_ECORRUPT (sizes or area offsets out of bounds). */
int nf_shm_open(struct nf_shm *s, const char *name);

/* Address of area id in this process's mapping, and its size in *size if not NULL. */
void *nf_shm_area(const struct nf_shm *s, enum nf_shm_area_id id, uint64_t *size);

/* Allocates every page of the region now (posix_fallocate on the object), so that a /dev/shm
 * too small for it fails here with -ENOSPC instead of a SIGBUS on first touch later. Call it
 * after any NUMA placement of the mapping (pages land where the policy says when allocated).
 * Returns 0 or a negated errno, with s->err set. */
int nf_shm_reserve(struct nf_shm *s);

/* Unmaps the region (the object stays until nf_shm_unlink()). */
void nf_shm_close(struct nf_shm *s);

/* Removes the shm object name. Returns 0 or a negated errno (-ENOENT when absent). */
int nf_shm_unlink(const char *name);

#endif
