/* gguf_lookup.c - GGUF reader queries: name index, metadata getters, tensor lookup, reads. */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "gguf_impl.h"
#include "nf_err.h"

static uint64_t hash_bytes(const char *s, uint64_t len)
{
    uint64_t h = 0xcbf29ce484222325ull; /* FNV-1a */
    for (uint64_t i = 0; i < len; i++) {
        h ^= (unsigned char)s[i];
        h *= 0x100000001b3ull;
    }
    return h;
}

int nf__gguf_htab_init(struct gguf_htab *h, uint64_t n)
{
    uint64_t cap = 8;
    while (cap < 2 * n)
        cap <<= 1;
    h->slot = calloc(cap, sizeof(*h->slot));
    if (!h->slot)
        return -ENOMEM;
    h->mask = cap - 1;
    return 0;
}

static const struct nf_gguf_str *rec_str(const void *base, size_t stride, uint64_t i)
{
    return (const struct nf_gguf_str *)((const char *)base + i * stride);
}

/* Returns the record index holding (s, len), or -1. */
int64_t nf__gguf_htab_find(const struct gguf_htab *h, const void *base, size_t stride,
                           const char *s, uint64_t len)
{
    if (!h->slot)
        return -1;
    for (uint64_t i = hash_bytes(s, len) & h->mask;; i = (i + 1) & h->mask) {
        uint32_t v = h->slot[i];
        if (v == 0)
            return -1;
        const struct nf_gguf_str *e = rec_str(base, stride, v - 1);
        if (e->len == len && memcmp(e->s, s, len) == 0)
            return v - 1;
    }
}

/* Inserts record idx; returns -1, or the index of an earlier record with the same name. */
int64_t nf__gguf_htab_insert(struct gguf_htab *h, const void *base, size_t stride, uint32_t idx)
{
    const struct nf_gguf_str *k = rec_str(base, stride, idx);
    uint64_t i = hash_bytes(k->s, k->len) & h->mask;
    for (;; i = (i + 1) & h->mask) {
        uint32_t v = h->slot[i];
        if (v == 0)
            break;
        const struct nf_gguf_str *e = rec_str(base, stride, v - 1);
        if (e->len == k->len && memcmp(e->s, k->s, k->len) == 0)
            return v - 1;
    }
    h->slot[i] = idx + 1;
    return -1;
}

static const struct gguf_impl *impl_of(const struct nf_gguf *g)
{
    return (const struct gguf_impl *)g;
}

/* Reads exactly len bytes at off; NF_ETRUNCATED if the file ends first. */
int nf__gguf_pread_full(int fd, void *buf, size_t len, uint64_t off)
{
    char *p = buf;
    while (len > 0) {
        size_t chunk = len > (1u << 30) ? (1u << 30) : len;
        ssize_t r = pread(fd, p, chunk, (off_t)off);
        if (r < 0) {
            if (errno == EINTR)
                continue;
            return -errno;
        }
        if (r == 0)
            return NF_ETRUNCATED;
        p += r;
        len -= (size_t)r;
        off += (uint64_t)r;
    }
    return 0;
}

int nf_gguf_pread(const struct nf_gguf *g, void *buf, size_t len, uint64_t off)
{
    if (!g || (!buf && len))
        return NF_EUSAGE;
    if (off > g->file_size || len > g->file_size - off)
        return NF_ETRUNCATED;
    const struct gguf_impl *im = impl_of(g);
    if (im->mem) {
        if (len)
            memcpy(buf, im->mem + off, len);
        return 0;
    }
    if (g->n_parts <= 1)
        return nf__gguf_pread_full(g->fd, buf, len, off);
    /* Split: the range must lie inside one part (parts are in base order). */
    uint32_t lo = 0, hi = g->n_parts;
    while (hi - lo > 1) {
        uint32_t mid = lo + (hi - lo) / 2;
        if (g->parts[mid].base <= off)
            lo = mid;
        else
            hi = mid;
    }
    const struct nf_gguf_part *pt = &g->parts[lo];
    uint64_t rel = off - pt->base;
    if (rel > pt->size || len > pt->size - rel)
        return NF_ETRUNCATED;
    return nf__gguf_pread_full(pt->fd, buf, len, rel);
}

int nf_gguf_read_tensor(const struct nf_gguf *g, const struct nf_gguf_tensor *t, void *buf,
                        size_t bufsize)
{
    if (!g || !t || t->size > bufsize)
        return NF_EUSAGE;
    return nf_gguf_pread(g, buf, (size_t)t->size, t->offset);
}

/* --- lookups --- */

const struct nf_gguf_value *nf_gguf_get(const struct nf_gguf *g, const char *key)
{
    if (!g || !key)
        return NULL;
    int64_t i = nf__gguf_htab_find(&impl_of(g)->kv_index, g->kv, sizeof(*g->kv), key, strlen(key));
    return i < 0 ? NULL : &g->kv[i].value;
}

const struct nf_gguf_tensor *nf_gguf_find_tensor(const struct nf_gguf *g, const char *name)
{
    if (!g || !name)
        return NULL;
    int64_t i = nf__gguf_htab_find(&impl_of(g)->tensor_index, g->tensors, sizeof(*g->tensors), name,
                                   strlen(name));
    return i < 0 ? NULL : &g->tensors[i];
}

static bool is_unsigned(enum nf_gguf_vtype t)
{
    return t == NF_GGUF_UINT8 || t == NF_GGUF_UINT16 || t == NF_GGUF_UINT32 || t == NF_GGUF_UINT64;
}

static bool is_signed(enum nf_gguf_vtype t)
{
    return t == NF_GGUF_INT8 || t == NF_GGUF_INT16 || t == NF_GGUF_INT32 || t == NF_GGUF_INT64;
}

int nf_gguf_get_u64(const struct nf_gguf *g, const char *key, uint64_t *out)
{
    const struct nf_gguf_value *v = nf_gguf_get(g, key);
    if (!v)
        return NF_ENOKEY;
    if (is_unsigned(v->type)) {
        *out = v->v.u64;
        return 0;
    }
    if (is_signed(v->type) && v->v.i64 >= 0) {
        *out = (uint64_t)v->v.i64;
        return 0;
    }
    return NF_EKEYTYPE;
}

int nf_gguf_get_u32(const struct nf_gguf *g, const char *key, uint32_t *out)
{
    uint64_t x;
    int rc = nf_gguf_get_u64(g, key, &x);
    if (rc)
        return rc;
    if (x > UINT32_MAX)
        return NF_EKEYTYPE;
    *out = (uint32_t)x;
    return 0;
}

int nf_gguf_get_i64(const struct nf_gguf *g, const char *key, int64_t *out)
{
    const struct nf_gguf_value *v = nf_gguf_get(g, key);
    if (!v)
        return NF_ENOKEY;
    if (is_signed(v->type)) {
        *out = v->v.i64;
        return 0;
    }
    if (is_unsigned(v->type) && v->v.u64 <= INT64_MAX) {
        *out = (int64_t)v->v.u64;
        return 0;
    }
    return NF_EKEYTYPE;
}

int nf_gguf_get_f32(const struct nf_gguf *g, const char *key, float *out)
{
    const struct nf_gguf_value *v = nf_gguf_get(g, key);
    if (!v)
        return NF_ENOKEY;
    if (v->type != NF_GGUF_FLOAT32 && v->type != NF_GGUF_FLOAT64)
        return NF_EKEYTYPE;
    *out = (float)v->v.f64;
    return 0;
}

int nf_gguf_get_bool(const struct nf_gguf *g, const char *key, bool *out)
{
    const struct nf_gguf_value *v = nf_gguf_get(g, key);
    if (!v)
        return NF_ENOKEY;
    if (v->type != NF_GGUF_BOOL)
        return NF_EKEYTYPE;
    *out = v->v.b;
    return 0;
}

int nf_gguf_get_str(const struct nf_gguf *g, const char *key, const char **out)
{
    const struct nf_gguf_value *v = nf_gguf_get(g, key);
    if (!v)
        return NF_ENOKEY;
    if (v->type != NF_GGUF_STRING)
        return NF_EKEYTYPE;
    *out = v->v.str.s;
    return 0;
}

int nf_gguf_get_arr(const struct nf_gguf *g, const char *key, enum nf_gguf_vtype type, uint64_t *n,
                    const void **data)
{
    const struct nf_gguf_value *v = nf_gguf_get(g, key);
    if (!v)
        return NF_ENOKEY;
    if (v->type != NF_GGUF_ARRAY || v->v.arr.type != type)
        return NF_EKEYTYPE;
    *n = v->v.arr.n;
    *data = v->v.arr.data;
    return 0;
}
