/* kv_store.h - kept prompt prefixes' KV cells saved in a directory, to be used again after a
 * restart (`up --kv-store DIR`, issue 15, item 3).
 *
 * The compute daemon's prefix reuse (daemons/compute/gen.h) keeps, in each KV cache slot, the
 * cells of a prompt (less a last token evaluated as a chunk of its own: a prefix's token count
 * is never 1 more than a multiple of the ubatch, else the file is refused). The store writes
 * such a prefix into DIR as one file
 * and, after a restart, reads it back into a slot's cache, so that a prompt extending it skips
 * evaluating those positions. The cells are the bytes a cold evaluation leaves, so the output
 * is the same bit for bit; a file is only used when everything that shapes those bytes is the
 * same: the model file, the KV element types, the ubatch (which decides which positions were
 * chunks of one token) and the sparsity.
 *
 * File format (DIR/<16 hex digits>.nfkv, native little-endian, written to a temporary name and
 * renamed, so that a reader sees whole files or none):
 *  1. the header, struct nf_kv_store_header: magic "NFKVSTOR", major and minor version,
 *     header size; the identity (struct nf_kv_store_id: the .nft's size and header checksum,
 *     the KV types, n_layer, the bytes of one position's K and V row in one layer, the ubatch
 *     and the sparsity's float bits); the prefix's token count n; XXH3-64 of the token ids and
 *     of the KV data; the data's size; last the XXH3-64 of the bytes before it;
 *  2. the n token ids (int32);
 *  3. the KV data, layer by layer: n rows of row_k bytes (K, positions 0..n-1), then n rows of
 *     row_v bytes (V; none when row_v is 0). The rows are those of one layer of a slot's cache,
 *     which does not depend on the context length.
 *
 * A file whose header, identity, size or ids do not check is ignored (one warning each, never
 * used, left in place: it may be another stack's); one whose data does not check is found out
 * when it is read into a slot (nf_kv_store_load fails: the caller resets the slot) and is
 * removed. The directory is bounded (max_bytes): saving drops the least recently used entries
 * (by file modification time, which a load refreshes) until the new one fits. Only the headers
 * and ids are held in memory; the data goes straight between the file and the slot's cache.
 * Not thread-safe: one thread (compute's worker) uses a store. */
#ifndef NF_KV_STORE_H
#define NF_KV_STORE_H

#include <stddef.h>
#include <stdint.h>

#define NF_KV_STORE_MAJOR       1
#define NF_KV_STORE_MINOR       0
#define NF_KV_STORE_DEFAULT_MAX (2ull << 30) /* --kv-store-max default: 2 GiB */

/* What a stored prefix's cells depend on: all must match for a file to be used. */
struct nf_kv_store_id {
    uint64_t nft_size;     /* bytes of the .nft */
    uint64_t nft_checksum; /* its header checksum (covers the metadata and tile index sums) */
    uint32_t type_k, type_v;
    uint32_t n_layer;
    uint32_t n_ubatch;
    uint64_t row_k, row_v; /* bytes of one position's K / V row in one layer (row_v 0: no V) */
    uint32_t sparsity_bits;
    uint32_t reserved; /* 0 */
};
_Static_assert(sizeof(struct nf_kv_store_id) == 56, "store identity layout");

struct nf_kv_store_header {
    char magic[8]; /* "NFKVSTOR" */
    uint16_t major, minor;
    uint32_t header_size; /* sizeof(struct nf_kv_store_header) */
    struct nf_kv_store_id id;
    uint32_t n_tok;
    uint32_t reserved; /* 0 */
    uint64_t ids_checksum, data_checksum, data_size;
    uint64_t header_checksum; /* XXH3-64 of the bytes before this field */
};
_Static_assert(sizeof(struct nf_kv_store_header) == 112, "store header layout");

/* One usable stored prefix (its ids in memory, its data in the file). */
struct nf_kv_store_entry {
    int32_t *ids; /* (n) */
    int n;
    uint64_t key;   /* the file name's number */
    uint64_t bytes; /* the file's size */
    uint64_t used;  /* file mtime, ns: the least recent goes first */
};

struct nf_kv_store {
    char dir[4096];
    struct nf_kv_store_id id;
    uint64_t max_bytes, bytes; /* bound, and the usable entries' total */
    struct nf_kv_store_entry *e;
    int n, cap;
    void (*warn)(void *ud, const char *msg); /* one line per ignored file */
    void *warn_ud;
};

/* The rows of layer il of the slot being read or written: K (which 0) or V (which 1), n
 * rows of the identity's row size from the returned address; NULL on error. */
typedef void *(*nf_kv_store_rows_fn)(void *ud, int il, int which);

/* Creates dir if needed and indexes its usable files (headers and ids only). Files of another
 * identity, truncated or with a bad header are reported through warn (may be NULL) and
 * skipped. Returns 0 or a negative errno with a one-line reason in err naming the directory. */
int nf_kv_store_open(struct nf_kv_store *ks, const char *dir, const struct nf_kv_store_id *id,
                     uint64_t max_bytes, void (*warn)(void *ud, const char *msg), void *warn_ud,
                     char *err, size_t errlen);
void nf_kv_store_close(struct nf_kv_store *ks);

/* The entry sharing the longest common prefix with ids[0..n) among those of at most max_n
 * tokens (*common set to its length), or -1 when none shares a token. */
int nf_kv_store_match(const struct nf_kv_store *ks, const int32_t *ids, int n, int max_n,
                      int *common);
/* True when an entry holds exactly ids[0..n). */
int nf_kv_store_has(const struct nf_kv_store *ks, const int32_t *ids, int n);

/* Reads entry e's data into the rows rows() gives, checking its checksum, and marks it used.
 * Returns 0; NF_ECHECKSUM or -EIO (the rows hold garbage: the caller discards them; the entry
 * is removed, its file deleted) with the reason in err. */
int nf_kv_store_load(struct nf_kv_store *ks, int e, nf_kv_store_rows_fn rows, void *ud, char *err,
                     size_t errlen);
/* Saves the prefix ids[0..n) whose rows rows() gives (replacing an entry of the same ids),
 * first dropping the least recently used entries until it fits max_bytes. Returns 0, NF_EUSAGE
 * (it alone is larger than max_bytes: nothing written) or a negative errno, with err set. */
int nf_kv_store_save(struct nf_kv_store *ks, const int32_t *ids, int n, nf_kv_store_rows_fn rows,
                     void *ud, char *err, size_t errlen);

#endif
