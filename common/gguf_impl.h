/* gguf_impl.h - private to the GGUF reader (gguf.c parses, gguf_lookup.c answers queries). */
#ifndef NF_GGUF_IMPL_H
#define NF_GGUF_IMPL_H

#include <stdint.h>

#include "gguf.h"

struct gguf_chunk;

/* Name index: open addressing over strings stored at the head of fixed-stride records (the key
 * of struct nf_gguf_kv, the name of struct nf_gguf_tensor). */
struct gguf_htab {
    uint32_t *slot; /* record index + 1; 0 is empty */
    uint64_t mask;
};

/* Allocates an empty index for n records: 0 or -ENOMEM. */
int nf__gguf_htab_init(struct gguf_htab *h, uint64_t n);
/* Returns the record index holding (s, len), or -1. */
int64_t nf__gguf_htab_find(const struct gguf_htab *h, const void *base, size_t stride,
                           const char *s, uint64_t len);
/* Inserts record idx; returns -1, or the index of an earlier record with the same name. */
int64_t nf__gguf_htab_insert(struct gguf_htab *h, const void *base, size_t stride, uint32_t idx);

/* Reads exactly len bytes at off: 0, a negated errno, or NF_ETRUNCATED if the file ends first. */
int nf__gguf_pread_full(int fd, void *buf, size_t len, uint64_t off);

/* What nf_gguf_open* hands out: the public struct followed by the reader's own state. */
struct gguf_impl {
    struct nf_gguf pub; /* first, so a struct nf_gguf * converts back */
    const uint8_t *mem; /* image given to nf_gguf_open_mem, else NULL */
    struct gguf_chunk *arena;
    struct gguf_htab kv_index;
    struct gguf_htab tensor_index;
    struct nf_gguf **sub; /* (n_parts) parts 1.. of a split model, owned; sub[0] is NULL */
};

/* Opens one GGUF file as nf_gguf_open() does, but never follows split.* keys. */
int nf__gguf_open_one(struct nf_gguf **out, const char *path, char *err, size_t errlen);

/* Called on a freshly opened first file: when its split.count says the model has more parts,
 * opens and checks them and merges their tensors into g. 0, or a negative code with err set. */
int nf__gguf_split_join(struct nf_gguf *g, char *err, size_t errlen);

#endif
