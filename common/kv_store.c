/* kv_store.c - kept prompt prefixes' KV cells saved in a directory and read back after a restart
 * (kv_store.h has the file format and the rules). */
#include "kv_store.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <xxhash.h>

#include "nf_err.h"
#include "nf_file.h"

static const char nf_kv_store_magic[8] = {'N', 'F', 'K', 'V', 'S', 'T', 'O', 'R'};

/* Bytes of one prefix of n tokens' KV data. */
static uint64_t data_bytes(const struct nf_kv_store_id *id, int n)
{
    return (uint64_t)id->n_layer * (uint64_t)n * (id->row_k + id->row_v);
}

static uint64_t file_bytes(const struct nf_kv_store_id *id, int n)
{
    return sizeof(struct nf_kv_store_header) + sizeof(int32_t) * (uint64_t)n + data_bytes(id, n);
}

/* The file name's number: the identity and the ids hashed, so that two stacks of different
 * models or KV types sharing a directory never write the same name. */
static uint64_t entry_key(const struct nf_kv_store_id *id, const int32_t *ids, int n)
{
    XXH3_state_t *st = XXH3_createState();
    if (!st)
        return XXH3_64bits(ids, sizeof(int32_t) * (size_t)n) ^ XXH3_64bits(id, sizeof(*id));
    XXH3_64bits_reset(st);
    XXH3_64bits_update(st, id, sizeof(*id));
    XXH3_64bits_update(st, ids, sizeof(int32_t) * (size_t)n);
    const uint64_t h = XXH3_64bits_digest(st);
    XXH3_freeState(st);
    return h;
}

static bool entry_path(const struct nf_kv_store *ks, uint64_t key, bool tmp, char *out, size_t len)
{
    return nf_pathf(out, len, "%s/%016llx.nfkv%s", ks->dir, (unsigned long long)key,
                    tmp ? ".tmp" : "");
}

static void warnf(const struct nf_kv_store *ks, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
static void warnf(const struct nf_kv_store *ks, const char *fmt, ...)
{
    if (!ks->warn)
        return;
    char msg[600];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    ks->warn(ks->warn_ud, msg);
}

static uint64_t mtime_ns(const struct stat *sb)
{
    return (uint64_t)sb->st_mtim.tv_sec * 1000000000ull + (uint64_t)sb->st_mtim.tv_nsec;
}

/* Checks a header read from name (size bytes) against the store's identity. Returns NULL when
 * it may be used, else why not. */
static const char *header_check(const struct nf_kv_store *ks, const struct nf_kv_store_header *h,
                                uint64_t size, char *why, size_t whylen)
{
    if (memcmp(h->magic, nf_kv_store_magic, sizeof(h->magic)))
        return "not a KV store file (bad magic)";
    if (h->major != NF_KV_STORE_MAJOR) {
        snprintf(why, whylen, "format version %u, expected %d", h->major, NF_KV_STORE_MAJOR);
        return why;
    }
    if (h->header_size != sizeof(*h))
        return "header size is wrong";
    if (XXH3_64bits(h, offsetof(struct nf_kv_store_header, header_checksum)) != h->header_checksum)
        return "header checksum mismatch";
    const struct nf_kv_store_id *a = &h->id, *b = &ks->id;
    if (a->nft_size != b->nft_size || a->nft_checksum != b->nft_checksum)
        return "saved from another model";
    if (a->type_k != b->type_k || a->type_v != b->type_v || a->row_k != b->row_k ||
        a->row_v != b->row_v || a->n_layer != b->n_layer)
        return "other KV cache types or shape";
    if (a->n_ubatch != b->n_ubatch) {
        snprintf(why, whylen, "saved with ubatch %u, this stack uses %u", a->n_ubatch, b->n_ubatch);
        return why;
    }
    if (a->sparsity_bits != b->sparsity_bits)
        return "saved with another sparsity";
    /* A prefix never ends with a position its prompt evaluated as a chunk of its own
     * (nf_stream_prefix_kept, stream.h). */
    if (h->n_tok < 1 || h->n_tok > (1u << 24) || (b->n_ubatch > 1 && h->n_tok % b->n_ubatch == 1))
        return "token count out of range";
    if (h->data_size != data_bytes(b, (int)h->n_tok))
        return "data size does not match its token count";
    if (size != file_bytes(b, (int)h->n_tok)) {
        snprintf(why, whylen, "%llu bytes, expected %llu (truncated?)", (unsigned long long)size,
                 (unsigned long long)file_bytes(b, (int)h->n_tok));
        return why;
    }
    return NULL;
}

static int entry_add(struct nf_kv_store *ks, const struct nf_kv_store_entry *en)
{
    if (ks->n == ks->cap) {
        const int cap = ks->cap ? 2 * ks->cap : 16;
        struct nf_kv_store_entry *e = realloc(ks->e, sizeof(*e) * (size_t)cap);
        if (!e)
            return -ENOMEM;
        ks->e = e;
        ks->cap = cap;
    }
    ks->e[ks->n++] = *en;
    ks->bytes += en->bytes;
    return 0;
}

/* Forgets entry i and, with unlink_it, deletes its file. */
static void entry_drop(struct nf_kv_store *ks, int i, bool unlink_it)
{
    char p[4200];
    if (unlink_it && entry_path(ks, ks->e[i].key, false, p, sizeof(p)))
        unlink(p);
    ks->bytes -= ks->e[i].bytes;
    free(ks->e[i].ids);
    ks->e[i] = ks->e[--ks->n];
}

/* Indexes DIR/name when usable; a file that is not is reported and left alone. */
static void index_file(struct nf_kv_store *ks, const char *name)
{
    char p[4200], why[160];
    if (!nf_pathf(p, sizeof(p), "%s/%s", ks->dir, name))
        return;
    const int fd = open(p, O_RDONLY | O_CLOEXEC);
    struct stat sb;
    struct nf_kv_store_header h;
    if (fd < 0 || fstat(fd, &sb) < 0) {
        warnf(ks, "kv-store: %s ignored: %s", p, strerror(errno));
        if (fd >= 0)
            close(fd);
        return;
    }
    const char *bad = NULL;
    int32_t *ids = NULL;
    if (pread(fd, &h, sizeof(h), 0) != (ssize_t)sizeof(h))
        bad = "shorter than its header (truncated)";
    else
        bad = header_check(ks, &h, (uint64_t)sb.st_size, why, sizeof(why));
    if (!bad) {
        const size_t ib = sizeof(int32_t) * h.n_tok;
        ids = malloc(ib);
        if (!ids)
            bad = "out of memory for its token ids";
        else if (pread(fd, ids, ib, (off_t)sizeof(h)) != (ssize_t)ib)
            bad = "cannot read its token ids";
        else if (XXH3_64bits(ids, ib) != h.ids_checksum)
            bad = "token ids checksum mismatch";
    }
    close(fd);
    uint64_t key = 0;
    if (!bad && (sscanf(name, "%16llx.nfkv", (unsigned long long *)&key) != 1 ||
                 key != entry_key(&ks->id, ids, (int)h.n_tok)))
        bad = "its name does not match its contents";
    const struct nf_kv_store_entry en = {.ids = ids,
                                         .n = (int)h.n_tok,
                                         .key = key,
                                         .bytes = (uint64_t)sb.st_size,
                                         .used = mtime_ns(&sb)};
    if (!bad && entry_add(ks, &en) < 0)
        bad = "out of memory";
    if (bad) {
        warnf(ks, "kv-store: %s ignored: %s", p, bad);
        free(ids);
    }
}

int nf_kv_store_open(struct nf_kv_store *ks, const char *dir, const struct nf_kv_store_id *id,
                     uint64_t max_bytes, void (*warn)(void *ud, const char *msg), void *warn_ud,
                     char *err, size_t errlen)
{
    *ks = (struct nf_kv_store){.id = *id, .max_bytes = max_bytes, .warn = warn, .warn_ud = warn_ud};
    if (id->n_ubatch < 1 || id->n_layer < 1 || id->row_k < 1)
        return nf_errf(err, errlen, NF_EUSAGE, "kv-store: bad identity (ubatch %u, %u layers)",
                       id->n_ubatch, id->n_layer);
    if (snprintf(ks->dir, sizeof(ks->dir), "%s", dir) >= (int)sizeof(ks->dir))
        return nf_errf(err, errlen, -ENAMETOOLONG, "kv-store: directory name too long");
    if (mkdir(dir, 0700) < 0 && errno != EEXIST)
        return nf_errf(err, errlen, -errno, "kv-store: cannot create %s: %s", dir, strerror(errno));
    DIR *d = opendir(dir);
    if (!d)
        return nf_errf(err, errlen, -errno, "kv-store: cannot open %s: %s", dir, strerror(errno));
    const struct dirent *de;
    while ((de = readdir(d))) {
        const size_t l = strlen(de->d_name);
        if (l > 5 && !strcmp(de->d_name + l - 5, ".nfkv"))
            index_file(ks, de->d_name);
    }
    closedir(d);
    return 0;
}

void nf_kv_store_close(struct nf_kv_store *ks)
{
    for (int i = 0; i < ks->n; i++)
        free(ks->e[i].ids);
    free(ks->e);
    ks->e = NULL;
    ks->n = ks->cap = 0;
    ks->bytes = 0;
}

int nf_kv_store_match(const struct nf_kv_store *ks, const int32_t *ids, int n, int max_n,
                      int *common)
{
    int best = -1, best_l = 0;
    for (int i = 0; i < ks->n; i++) {
        const struct nf_kv_store_entry *e = &ks->e[i];
        if (e->n > max_n)
            continue;
        int l = 0;
        while (l < e->n && l < n && e->ids[l] == ids[l])
            l++;
        if (l > best_l) {
            best = i;
            best_l = l;
        }
    }
    *common = best_l;
    return best;
}

int nf_kv_store_has(const struct nf_kv_store *ks, const int32_t *ids, int n)
{
    for (int i = 0; i < ks->n; i++)
        if (ks->e[i].n == n && !memcmp(ks->e[i].ids, ids, sizeof(int32_t) * (size_t)n))
            return 1;
    return 0;
}

int nf_kv_store_load(struct nf_kv_store *ks, int e, nf_kv_store_rows_fn rows, void *ud, char *err,
                     size_t errlen)
{
    NF_ASSERT(e >= 0 && e < ks->n);
    struct nf_kv_store_entry *en = &ks->e[e];
    char p[4200];
    if (!entry_path(ks, en->key, false, p, sizeof(p)))
        return nf_errf(err, errlen, -ENAMETOOLONG, "kv-store: path too long");
    const int fd = open(p, O_RDONLY | O_CLOEXEC);
    struct nf_kv_store_header h;
    int rc = 0;
    if (fd < 0 || pread(fd, &h, sizeof(h), 0) != (ssize_t)sizeof(h))
        rc = nf_errf(err, errlen, -EIO, "kv-store: %s: cannot read its header", p);
    XXH3_state_t *st = rc == 0 ? XXH3_createState() : NULL;
    if (rc == 0 && !st)
        rc = nf_errf(err, errlen, -ENOMEM, "kv-store: out of memory");
    if (st)
        XXH3_64bits_reset(st);
    /* Straight into the slot's rows, layer by layer: no buffer of the prefix's size. */
    off_t off = (off_t)(sizeof(h) + sizeof(int32_t) * (size_t)en->n);
    for (uint32_t il = 0; rc == 0 && il < ks->id.n_layer; il++)
        for (int which = 0; rc == 0 && which < (ks->id.row_v ? 2 : 1); which++) {
            const size_t len = (size_t)en->n * (which ? ks->id.row_v : ks->id.row_k);
            void *dst = rows(ud, (int)il, which);
            if (!dst)
                rc = nf_errf(err, errlen, NF_EUSAGE, "kv-store: no rows for layer %u", il);
            else if (pread(fd, dst, len, off) != (ssize_t)len)
                rc = nf_errf(err, errlen, -EIO, "kv-store: %s: short read at offset %lld", p,
                             (long long)off);
            else
                XXH3_64bits_update(st, dst, len);
            off += (off_t)len;
        }
    if (rc == 0 && XXH3_64bits_digest(st) != h.data_checksum)
        rc = nf_errf(err, errlen, NF_ECHECKSUM, "kv-store: %s: data checksum mismatch", p);
    if (st)
        XXH3_freeState(st);
    if (fd >= 0)
        close(fd);
    if (rc < 0 && rc != NF_EUSAGE) {
        entry_drop(ks, e, true);
        return rc;
    }
    if (rc == 0) { /* used now: the modification time orders the entries across restarts */
        struct timespec ts[2] = {{.tv_nsec = UTIME_OMIT}, {.tv_nsec = UTIME_NOW}};
        struct stat sb;
        if (utimensat(AT_FDCWD, p, ts, 0) == 0 && stat(p, &sb) == 0)
            en->used = mtime_ns(&sb);
    }
    return rc;
}

/* Writes the file of ids[0..n) to path (fd open on it). 0 or a negative errno with err set. */
static int write_entry(struct nf_kv_store *ks, int fd, const char *path, const int32_t *ids, int n,
                       nf_kv_store_rows_fn rows, void *ud, char *err, size_t errlen)
{
    struct nf_kv_store_header h = {.major = NF_KV_STORE_MAJOR,
                                   .minor = NF_KV_STORE_MINOR,
                                   .header_size = sizeof(h),
                                   .id = ks->id,
                                   .n_tok = (uint32_t)n,
                                   .data_size = data_bytes(&ks->id, n)};
    memcpy(h.magic, nf_kv_store_magic, sizeof(h.magic));
    const size_t ib = sizeof(int32_t) * (size_t)n;
    h.ids_checksum = XXH3_64bits(ids, ib);
    XXH3_state_t *st = XXH3_createState();
    if (!st)
        return nf_errf(err, errlen, -ENOMEM, "kv-store: out of memory");
    XXH3_64bits_reset(st);
    int rc = 0;
    off_t off = (off_t)(sizeof(h) + ib);
    for (uint32_t il = 0; rc == 0 && il < ks->id.n_layer; il++)
        for (int which = 0; rc == 0 && which < (ks->id.row_v ? 2 : 1); which++) {
            const size_t len = (size_t)n * (which ? ks->id.row_v : ks->id.row_k);
            const void *src = rows(ud, (int)il, which);
            if (!src)
                rc = nf_errf(err, errlen, NF_EUSAGE, "kv-store: no rows for layer %u", il);
            else if (pwrite(fd, src, len, off) != (ssize_t)len)
                rc = nf_errf(err, errlen, errno ? -errno : -EIO, "kv-store: writing %s: %s", path,
                             strerror(errno ? errno : EIO));
            else
                XXH3_64bits_update(st, src, len);
            off += (off_t)len;
        }
    h.data_checksum = XXH3_64bits_digest(st);
    XXH3_freeState(st);
    h.header_checksum = XXH3_64bits(&h, offsetof(struct nf_kv_store_header, header_checksum));
    if (rc == 0 && (pwrite(fd, &h, sizeof(h), 0) != (ssize_t)sizeof(h) ||
                    pwrite(fd, ids, ib, (off_t)sizeof(h)) != (ssize_t)ib))
        rc = nf_errf(err, errlen, errno ? -errno : -EIO, "kv-store: writing %s: %s", path,
                     strerror(errno ? errno : EIO));
    return rc;
}

int nf_kv_store_save(struct nf_kv_store *ks, const int32_t *ids, int n, nf_kv_store_rows_fn rows,
                     void *ud, char *err, size_t errlen)
{
    const uint64_t need = file_bytes(&ks->id, n);
    if (n < 1 || need > ks->max_bytes)
        return nf_errf(err, errlen, NF_EUSAGE,
                       "kv-store: a prefix of %d tokens takes %llu bytes, more than the store's "
                       "%llu (--kv-store-max)",
                       n, (unsigned long long)need, (unsigned long long)ks->max_bytes);
    const uint64_t key = entry_key(&ks->id, ids, n);
    for (int i = 0; i < ks->n; i++)
        if (ks->e[i].key == key)
            entry_drop(ks, i--, false); /* replaced by the rename below */
    while (ks->n > 0 && ks->bytes + need > ks->max_bytes) {
        int lru = 0;
        for (int i = 1; i < ks->n; i++)
            if (ks->e[i].used < ks->e[lru].used)
                lru = i;
        entry_drop(ks, lru, true);
    }
    char tmp[4200], path[4200];
    if (!entry_path(ks, key, true, tmp, sizeof(tmp)) ||
        !entry_path(ks, key, false, path, sizeof(path)))
        return nf_errf(err, errlen, -ENAMETOOLONG, "kv-store: path too long");
    const int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    if (fd < 0)
        return nf_errf(err, errlen, -errno, "kv-store: cannot create %s: %s", tmp, strerror(errno));
    int rc = write_entry(ks, fd, tmp, ids, n, rows, ud, err, errlen);
    if (close(fd) < 0 && rc == 0)
        rc = nf_errf(err, errlen, -errno, "kv-store: closing %s: %s", tmp, strerror(errno));
    if (rc == 0 && rename(tmp, path) < 0)
        rc = nf_errf(err, errlen, -errno, "kv-store: renaming %s: %s", tmp, strerror(errno));
    if (rc < 0) {
        unlink(tmp);
        return rc;
    }
    struct nf_kv_store_entry en = {.n = n, .key = key, .bytes = need};
    struct stat sb;
    en.used = stat(path, &sb) == 0 ? mtime_ns(&sb) : 0;
    if (!(en.ids = malloc(sizeof(int32_t) * (size_t)n)) || entry_add(ks, &en) < 0) {
        free(en.ids);
        unlink(path);
        return nf_errf(err, errlen, -ENOMEM, "kv-store: out of memory");
    }
    memcpy(en.ids, ids, sizeof(int32_t) * (size_t)n);
    return 0;
}
