/* region.c - creating, opening and validating a stack's shared-memory region. */
#include "region.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "nf_err.h"

/* The header is shared between processes and builds: freeze its layout. */
_Static_assert(offsetof(struct nf_shm_header, magic) == 0, "shm header layout");
_Static_assert(offsetof(struct nf_shm_header, major) == 8, "shm header layout");
_Static_assert(offsetof(struct nf_shm_header, minor) == 10, "shm header layout");
_Static_assert(offsetof(struct nf_shm_header, header_size) == 12, "shm header layout");
_Static_assert(offsetof(struct nf_shm_header, total_size) == 16, "shm header layout");
_Static_assert(offsetof(struct nf_shm_header, flags) == 24, "shm header layout");
_Static_assert(offsetof(struct nf_shm_header, n_areas) == 32, "shm header layout");
_Static_assert(offsetof(struct nf_shm_header, creator_pid) == 36, "shm header layout");
_Static_assert(offsetof(struct nf_shm_header, areas) == 40, "shm header layout");
_Static_assert(sizeof(struct nf_shm_header) == 40 + 16 * NF_SHM_AREA_MAX, "shm header size");
_Static_assert(sizeof(struct nf_shm_header) <= NF_SHM_ALIGN, "header fits before the areas");
_Static_assert(NF_SHM_NAREAS <= NF_SHM_AREA_MAX, "area table too small");
_Static_assert(ATOMIC_LLONG_LOCK_FREE == 2, "64-bit atomics must be lock-free (address-free)");

static int check_name(struct nf_shm *s, const char *name)
{
    size_t n = name ? strlen(name) : 0;
    if (n < 2 || name[0] != '/' || strchr(name + 1, '/') || n >= sizeof(s->name)) {
        return nf_errf(s->err, sizeof(s->err), -EINVAL,
                       "shm name \"%s\": expected \"/\" followed by 1 to %zu characters, no other "
                       "\"/\"",
                       name ? name : "(null)", sizeof(s->name) - 2);
    }
    memcpy(s->name, name, n + 1);
    return 0;
}

static uint64_t align_up(uint64_t v)
{
    return (v + NF_SHM_ALIGN - 1) & ~(uint64_t)(NF_SHM_ALIGN - 1);
}

int nf_shm_create(struct nf_shm *s, const char *name, const uint64_t sizes[NF_SHM_NAREAS])
{
    memset(s, 0, sizeof(*s));
    int rc = check_name(s, name);
    if (rc < 0)
        return rc;

    /* Lay the areas out in id order, each on its own NF_SHM_ALIGN boundary. */
    struct nf_shm_area_desc areas[NF_SHM_NAREAS];
    uint64_t off = align_up(sizeof(struct nf_shm_header));
    for (int i = 0; i < NF_SHM_NAREAS; i++) {
        if (sizes[i] > (UINT64_MAX >> 2) - off) {
            return nf_errf(s->err, sizeof(s->err), NF_EOVERFLOW,
                           "shm %s: area %d size %llu overflows the region", name, i,
                           (unsigned long long)sizes[i]);
        }
        areas[i].offset = off;
        areas[i].size = sizes[i];
        off = align_up(off + sizes[i]);
    }
    if (off > (uint64_t)SIZE_MAX || off > (uint64_t)INT64_MAX) {
        return nf_errf(s->err, sizeof(s->err), NF_EOVERFLOW,
                       "shm %s: total size %llu does not fit in memory", name,
                       (unsigned long long)off);
    }

    int fd = shm_open(name, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
    if (fd < 0) {
        rc = -errno;
        return nf_errf(s->err, sizeof(s->err), rc, "shm %s: shm_open: %s", name, strerror(errno));
    }
    if (ftruncate(fd, (off_t)off) < 0) {
        rc = -errno;
        nf_errf(s->err, sizeof(s->err), rc, "shm %s: sizing to %llu bytes: %s", name,
                (unsigned long long)off, strerror(errno));
        goto fail;
    }
    void *base = mmap(NULL, (size_t)off, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    if (base == MAP_FAILED) {
        rc = -errno;
        nf_errf(s->err, sizeof(s->err), rc, "shm %s: mmap of %llu bytes: %s", name,
                (unsigned long long)off, strerror(errno));
        goto fail;
    }
    close(fd);

    struct nf_shm_header *h = base;
    h->major = NF_SHM_MAJOR;
    h->minor = NF_SHM_MINOR;
    h->header_size = sizeof(*h);
    h->total_size = off;
    h->flags = 0;
    h->n_areas = NF_SHM_NAREAS;
    h->creator_pid = (uint32_t)getpid();
    memcpy(h->areas, areas, sizeof(areas));
    /* Release pairs with the acquire load of magic in nf_shm_open(): an opener that sees the
     * magic sees a complete header. */
    atomic_store_explicit(&h->magic, NF_SHM_MAGIC, memory_order_release);
    s->base = base;
    s->size = (size_t)off;
    return 0;
fail:
    close(fd);
    shm_unlink(name);
    return rc;
}

/* Validates the header of a mapping of st_size bytes; fills s->err on refusal. */
static int check_header(struct nf_shm *s, const struct nf_shm_header *h, uint64_t st_size)
{
    const char *n = s->name;
    /* Acquire pairs with the release store of magic in nf_shm_create(). */
    uint64_t magic =
        atomic_load_explicit(&((struct nf_shm_header *)h)->magic, memory_order_acquire);
    if (magic == 0) {
        /* Sized (zero-filled) but the creator has not published the header yet. */
        return nf_errf(s->err, sizeof(s->err), -EAGAIN,
                       "shm %s: still being initialized by its creator", n);
    }
    if (magic != NF_SHM_MAGIC) {
        return nf_errf(s->err, sizeof(s->err), NF_EBADMAGIC,
                       "shm %s: magic 0x%016llx, expected 0x%016llx (\"NFSHMRGN\")", n,
                       (unsigned long long)magic, (unsigned long long)NF_SHM_MAGIC);
    }
    if (h->major != NF_SHM_MAJOR) {
        return nf_errf(s->err, sizeof(s->err), NF_EBADVERSION,
                       "shm %s: major version %u, expected %u", n, h->major, NF_SHM_MAJOR);
    }
    if (h->flags & ~NF_SHM_FLAGS_KNOWN) {
        return nf_errf(s->err, sizeof(s->err), NF_EBADVERSION,
                       "shm %s: unknown flag bits 0x%llx, expected none outside 0x%llx", n,
                       (unsigned long long)(h->flags & ~NF_SHM_FLAGS_KNOWN),
                       (unsigned long long)NF_SHM_FLAGS_KNOWN);
    }
    if (h->total_size != st_size) {
        return nf_errf(s->err, sizeof(s->err),
                       h->total_size > st_size ? NF_ETRUNCATED : NF_ECORRUPT,
                       "shm %s: total_size %llu, expected the object's size %llu", n,
                       (unsigned long long)h->total_size, (unsigned long long)st_size);
    }
    if (h->header_size < sizeof(*h) || h->header_size > h->total_size) {
        return nf_errf(s->err, sizeof(s->err), NF_ECORRUPT,
                       "shm %s: header_size %u, expected %zu to total_size %llu", n, h->header_size,
                       sizeof(*h), (unsigned long long)h->total_size);
    }
    if (h->n_areas < NF_SHM_NAREAS || h->n_areas > NF_SHM_AREA_MAX) {
        return nf_errf(s->err, sizeof(s->err), NF_ECORRUPT, "shm %s: n_areas %u, expected %d to %d",
                       n, h->n_areas, NF_SHM_NAREAS, NF_SHM_AREA_MAX);
    }
    for (uint32_t i = 0; i < h->n_areas; i++) {
        const struct nf_shm_area_desc *a = &h->areas[i];
        if (a->offset < h->header_size || a->offset % NF_SHM_ALIGN != 0 ||
            a->offset > h->total_size || a->size > h->total_size - a->offset) {
            return nf_errf(s->err, sizeof(s->err), NF_ECORRUPT,
                           "shm %s: area %u at offset %llu size %llu, expected a %u-aligned range "
                           "in [%u, %llu)",
                           n, i, (unsigned long long)a->offset, (unsigned long long)a->size,
                           NF_SHM_ALIGN, h->header_size, (unsigned long long)h->total_size);
        }
    }
    return 0;
}

int nf_shm_open(struct nf_shm *s, const char *name)
{
    memset(s, 0, sizeof(*s));
    int rc = check_name(s, name);
    if (rc < 0)
        return rc;
    int fd = shm_open(name, O_RDWR | O_CLOEXEC, 0);
    if (fd < 0) {
        rc = -errno;
        return nf_errf(s->err, sizeof(s->err), rc, "shm %s: shm_open: %s", name, strerror(errno));
    }
    struct stat st;
    if (fstat(fd, &st) < 0) {
        rc = -errno;
        nf_errf(s->err, sizeof(s->err), rc, "shm %s: fstat: %s", name, strerror(errno));
        close(fd);
        return rc;
    }
    if (st.st_size == 0) {
        /* nf_shm_create() has made the object but not yet sized it. */
        close(fd);
        return nf_errf(s->err, sizeof(s->err), -EAGAIN, "shm %s: still being created (0 bytes)",
                       name);
    }
    if ((uint64_t)st.st_size < sizeof(struct nf_shm_header)) {
        close(fd);
        return nf_errf(s->err, sizeof(s->err), NF_ETRUNCATED,
                       "shm %s: %lld bytes, expected at least a %zu-byte header", name,
                       (long long)st.st_size, sizeof(struct nf_shm_header));
    }
    void *base = mmap(NULL, (size_t)st.st_size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    rc = base == MAP_FAILED ? -errno : 0;
    close(fd);
    if (rc < 0) {
        return nf_errf(s->err, sizeof(s->err), rc, "shm %s: mmap: %s", name, strerror(-rc));
    }
    rc = check_header(s, base, (uint64_t)st.st_size);
    if (rc < 0) {
        munmap(base, (size_t)st.st_size);
        return rc;
    }
    s->base = base;
    s->size = (size_t)st.st_size;
    return 0;
}

void *nf_shm_area(const struct nf_shm *s, enum nf_shm_area_id id, uint64_t *size)
{
    const struct nf_shm_header *h = s->base;
    if (!h || (int)id < 0 || id >= NF_SHM_NAREAS)
        return NULL;
    if (size)
        *size = h->areas[id].size;
    return (uint8_t *)s->base + h->areas[id].offset;
}

int nf_shm_reserve(struct nf_shm *s)
{
    if (!s->base)
        return -EINVAL;
    int fd = shm_open(s->name, O_RDWR | O_CLOEXEC, 0);
    if (fd < 0) {
        int rc = -errno;
        return nf_errf(s->err, sizeof(s->err), rc, "shm %s: shm_open: %s", s->name,
                       strerror(errno));
    }
    int rc = -posix_fallocate(fd, 0, (off_t)s->size); /* returns the error, not errno */
    close(fd);
    if (rc < 0)
        return nf_errf(s->err, sizeof(s->err), rc,
                       "shm %s: reserving %zu bytes: %s (is /dev/shm large enough?)", s->name,
                       s->size, strerror(-rc));
    return 0;
}

void nf_shm_close(struct nf_shm *s)
{
    if (s->base)
        munmap(s->base, s->size);
    s->base = NULL;
    s->size = 0;
}

int nf_shm_unlink(const char *name)
{
    return shm_unlink(name) < 0 ? -errno : 0;
}
