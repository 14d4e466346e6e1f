/* gguf.h - reader for GGUF files (versions 2 and 3).
 *
 * File layout (all little-endian):
 *  1. magic "GGUF" (4 bytes), version (u32), tensor count (u64), metadata kv count (u64).
 *  2. metadata: per entry a key (gguf string: u64 length + bytes, no NUL), a value type (u32) and
 *     the value; arrays are (element type u32, count u64, elements); nested arrays are allowed.
 *  3. tensor infos: name (gguf string), n_dims (u32, 1..4), ne[n_dims] (u64), type (u32, ggml
 *     type), offset (u64, relative to the data section, a multiple of the alignment).
 *  4. padding to general.alignment (u32 metadata key, default 32, a power of two).
 *  5. tensor data.
 *
 * nf_gguf_open() parses sections 1-4 into memory and validates everything (counts and lengths
 * against the file size, types, dimension products, data ranges inside the file and not
 * overlapping). Tensor data is never loaded: callers pread it with nf_gguf_read_tensor().
 *
 * Split models (llama.cpp's gguf-split: NAME-00001-of-0000N.gguf ... NAME-0000N-of-0000N.gguf,
 * each a whole GGUF file with u16 `split.no` (0-based) and `split.count`, the first with all the
 * metadata and i32 `split.tensors.count`) are opened by their first file: nf_gguf_open() opens
 * every part and presents one tensor table. Offsets then live in one address space: part i's
 * bytes sit at [parts[i].base, parts[i].base + parts[i].size), the bases page-aligned with at
 * least NF_GGUF_PART_GAP bytes between parts, so mapping each part at its base gives one image. A
 * single file is the 1-part case (parts[0].base 0). */
#ifndef NF_GGUF_H
#define NF_GGUF_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "quants.h"

enum nf_gguf_vtype {
    NF_GGUF_UINT8 = 0,
    NF_GGUF_INT8 = 1,
    NF_GGUF_UINT16 = 2,
    NF_GGUF_INT16 = 3,
    NF_GGUF_UINT32 = 4,
    NF_GGUF_INT32 = 5,
    NF_GGUF_FLOAT32 = 6,
    NF_GGUF_BOOL = 7,
    NF_GGUF_STRING = 8,
    NF_GGUF_ARRAY = 9,
    NF_GGUF_UINT64 = 10,
    NF_GGUF_INT64 = 11,
    NF_GGUF_FLOAT64 = 12,
    NF_GGUF_VTYPE_COUNT,
};

#define NF_GGUF_MAX_DIMS          4
#define NF_GGUF_DEFAULT_ALIGNMENT 32

/* A string from the file, NUL-terminated in memory (len excludes the NUL). */
struct nf_gguf_str {
    uint64_t len;
    char *s;
};

/* One metadata value. Arrays of scalars keep their elements packed in `data` as in the file
 * (e.g. float[] for FLOAT32); arrays of strings hold struct nf_gguf_str[]; arrays of arrays hold
 * struct nf_gguf_value[]. */
struct nf_gguf_value {
    enum nf_gguf_vtype type;
    union {
        uint64_t u64; /* every unsigned integer type, widened */
        int64_t i64;  /* every signed integer type, widened */
        double f64;   /* FLOAT32 and FLOAT64, widened */
        bool b;
        struct nf_gguf_str str;
        struct {
            enum nf_gguf_vtype type;
            uint64_t n;
            void *data;
        } arr;
    } v;
};

struct nf_gguf_kv {
    struct nf_gguf_str key;
    struct nf_gguf_value value;
};

struct nf_gguf_tensor {
    struct nf_gguf_str name;
    uint32_t n_dims;
    int64_t ne[NF_GGUF_MAX_DIMS]; /* ne[0] is the row length; unused dims are 1 */
    enum nf_type type;
    uint64_t offset; /* absolute offset: in the file, or in the parts' address space */
    uint64_t size;   /* bytes of data */
    int64_t n_elements;
    uint32_t part; /* index into nf_gguf.parts of the file holding the data */
};

/* Bytes kept free between the parts of a split model in the offset space (page-aligned). */
#define NF_GGUF_PART_GAP 65536

/* One file of a (possibly split) model. */
struct nf_gguf_part {
    int fd;        /* owned by the reader; -1 for an in-memory image */
    uint64_t base; /* where the file's byte 0 lies in the offset space */
    uint64_t size; /* the file's size */
    char path[256];
};

struct nf_gguf {
    int fd;
    uint32_t version;
    uint64_t file_size; /* end of the offset space: the file size when not split */
    uint64_t alignment;
    uint64_t data_offset; /* absolute offset of the tensor data section */
    uint64_t n_kv;
    struct nf_gguf_kv *kv;
    uint64_t n_tensors;
    struct nf_gguf_tensor *tensors;
    char path[256];
    uint32_t n_parts;           /* 1 unless split */
    struct nf_gguf_part *parts; /* (n_parts) */
};

/* Opens and validates path; a split model's first file brings in every part (which must all be
 * present, numbered and counted as the first says, of the same architecture, with distinct tensor
 * names). On failure returns a negative code and, if err is not NULL, writes
 * one line naming the file and the problem (e.g. "x.gguf: tensor 'blk.0.attn_q.weight': data
 * [a, b) lies outside the file (size c)"). On success *out owns the open file. */
int nf_gguf_open(struct nf_gguf **out, const char *path, char *err, size_t errlen);

/* Same, on a file descriptor already open (the reader dups it; the caller keeps fd). Split parts
 * are found by name, so here a split model's first file opens alone (its own tensors only). */
int nf_gguf_open_fd(struct nf_gguf **out, int fd, const char *name, char *err, size_t errlen);

/* Parses an in-memory image (used by the fuzzer); tensor reads are then served from `data`,
 * which must outlive the returned object. */
int nf_gguf_open_mem(struct nf_gguf **out, const void *data, size_t size, char *err, size_t errlen);

/* Parses a metadata-only image (a GGUF header whose tensor data was left out, as embedded in a
 * .nft file): everything is validated as by nf_gguf_open_mem except that tensor data may lie past
 * the end of the image. Tensor infos keep their shapes, types and offsets; reading their data
 * fails with NF_ETRUNCATED. `data` must outlive the returned object. */
int nf_gguf_open_meta_mem(struct nf_gguf **out, const void *data, size_t size, char *err,
                          size_t errlen);

void nf_gguf_close(struct nf_gguf *g);

/* Metadata lookup: the entry with this key, or NULL. */
const struct nf_gguf_value *nf_gguf_get(const struct nf_gguf *g, const char *key);

/* Typed getters: 0 on success, NF_ENOKEY when missing, NF_EKEYTYPE when the value cannot be
 * represented (integer getters accept any integer type whose value fits). */
int nf_gguf_get_u32(const struct nf_gguf *g, const char *key, uint32_t *out);
int nf_gguf_get_u64(const struct nf_gguf *g, const char *key, uint64_t *out);
int nf_gguf_get_i64(const struct nf_gguf *g, const char *key, int64_t *out);
int nf_gguf_get_f32(const struct nf_gguf *g, const char *key, float *out);
int nf_gguf_get_bool(const struct nf_gguf *g, const char *key, bool *out);
/* *out points into g (valid until nf_gguf_close). */
int nf_gguf_get_str(const struct nf_gguf *g, const char *key, const char **out);
/* Array of elements of type `type`; *n and *data point into g. */
int nf_gguf_get_arr(const struct nf_gguf *g, const char *key, enum nf_gguf_vtype type, uint64_t *n,
                    const void **data);

/* Tensor lookup by name (hash table, O(1)), or NULL. */
const struct nf_gguf_tensor *nf_gguf_find_tensor(const struct nf_gguf *g, const char *name);

/* Reads len bytes at absolute offset off into buf; 0 or a negative code (a short read at the end
 * of the file, or a range that is not inside one part, is NF_ETRUNCATED). */
int nf_gguf_pread(const struct nf_gguf *g, void *buf, size_t len, uint64_t off);

/* Reads all of t's data into buf (bufsize >= t->size). */
int nf_gguf_read_tensor(const struct nf_gguf *g, const struct nf_gguf_tensor *t, void *buf,
                        size_t bufsize);

const char *nf_gguf_vtype_name(enum nf_gguf_vtype t);

#endif
