/* gguf_write.h - streaming writer for GGUF v3 files (the layout is described in gguf.h).
 *
 * The writer builds only the header in memory: metadata and tensor infos. Tensor data is never
 * held: once every key and tensor is added, the caller asks for the header, writes it at offset 0
 * and then writes (or leaves as a file hole) each tensor's bytes at its absolute offset, in any
 * order and from any thread. Typical use:
 *
 *     struct nf_gguf_writer *w;
 *     nf_gguf_writer_init(&w);
 *     nf_gguf_writer_add_str(w, "general.architecture", "llama");
 *     nf_gguf_writer_add_u32(w, "general.alignment", 64);   // optional, default 32
 *     nf_gguf_writer_add_tensor(w, "output_norm.weight", 1, ne, NF_TYPE_F32, &idx);
 *     nf_gguf_writer_write_header(w, fd);                    // also sizes the file
 *     pwrite(fd, data, size, nf_gguf_writer_tensor_offset(w, idx));
 *     nf_gguf_writer_free(w);
 *
 * Every add function validates its input (key length, duplicate keys or tensor names, dimension
 * counts, row lengths that are a multiple of the type's block size, size overflow) and returns 0
 * or a negative code; after a failure the writer is unchanged and may still be used. */
#ifndef NF_GGUF_WRITE_H
#define NF_GGUF_WRITE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "gguf.h"
#include "quants.h"

/* Longest tensor name ggml accepts (GGML_MAX_NAME is 64 including the NUL). */
#define NF_GGUF_MAX_NAME 63

struct nf_gguf_writer;

/* Allocates an empty writer (GGUF version 3, alignment 32). */
int nf_gguf_writer_init(struct nf_gguf_writer **out);
void nf_gguf_writer_free(struct nf_gguf_writer *w);

/* Scalar metadata. Adding "general.alignment" (u32, a power of two) also sets the alignment of the
 * tensor data; it must then come before the first tensor. */
int nf_gguf_writer_add_u8(struct nf_gguf_writer *w, const char *key, uint8_t v);
int nf_gguf_writer_add_i8(struct nf_gguf_writer *w, const char *key, int8_t v);
int nf_gguf_writer_add_u16(struct nf_gguf_writer *w, const char *key, uint16_t v);
int nf_gguf_writer_add_i16(struct nf_gguf_writer *w, const char *key, int16_t v);
int nf_gguf_writer_add_u32(struct nf_gguf_writer *w, const char *key, uint32_t v);
int nf_gguf_writer_add_i32(struct nf_gguf_writer *w, const char *key, int32_t v);
int nf_gguf_writer_add_u64(struct nf_gguf_writer *w, const char *key, uint64_t v);
int nf_gguf_writer_add_i64(struct nf_gguf_writer *w, const char *key, int64_t v);
int nf_gguf_writer_add_f32(struct nf_gguf_writer *w, const char *key, float v);
int nf_gguf_writer_add_f64(struct nf_gguf_writer *w, const char *key, double v);
int nf_gguf_writer_add_bool(struct nf_gguf_writer *w, const char *key, bool v);
/* NUL-terminated string; nf_gguf_writer_add_strn takes a length (the bytes may hold NULs). */
int nf_gguf_writer_add_str(struct nf_gguf_writer *w, const char *key, const char *v);
int nf_gguf_writer_add_strn(struct nf_gguf_writer *w, const char *key, const char *v, size_t len);

/* Array of n scalars of type `type` (not STRING or ARRAY), packed in `data` as in the file: e.g.
 * float[] for FLOAT32, and one byte per element (0 or 1) for BOOL. */
int nf_gguf_writer_add_arr(struct nf_gguf_writer *w, const char *key, enum nf_gguf_vtype type,
                           const void *data, uint64_t n);

/* Array of n strings; lens may be NULL, in which case every string is NUL-terminated. */
int nf_gguf_writer_add_arr_str(struct nf_gguf_writer *w, const char *key, const char *const *strs,
                               const size_t *lens, uint64_t n);

/* Any value as the reader returns it (nested arrays included): used to copy metadata from one
 * GGUF file into another. */
int nf_gguf_writer_add_value(struct nf_gguf_writer *w, const char *key,
                             const struct nf_gguf_value *v);

/* Declares a tensor: ne[0] is the row length, which must be a multiple of the type's block size.
 * Its data gets the next aligned offset; *index (if not NULL) receives its position for
 * nf_gguf_writer_tensor_offset(). */
int nf_gguf_writer_add_tensor(struct nf_gguf_writer *w, const char *name, uint32_t n_dims,
                              const int64_t *ne, enum nf_type type, uint64_t *index);

uint64_t nf_gguf_writer_n_kv(const struct nf_gguf_writer *w);
uint64_t nf_gguf_writer_n_tensors(const struct nf_gguf_writer *w);
uint64_t nf_gguf_writer_alignment(const struct nf_gguf_writer *w);

/* Bytes of sections 1-4 (header, metadata, tensor infos and padding): the absolute offset of the
 * tensor data section. Valid at any time; grows as keys and tensors are added. */
uint64_t nf_gguf_writer_data_offset(const struct nf_gguf_writer *w);

/* Size of the whole file: data offset plus every tensor's data, the last one unpadded. */
uint64_t nf_gguf_writer_file_size(const struct nf_gguf_writer *w);

/* Absolute file offset and byte size of tensor `index` (in the order added); UINT64_MAX for an
 * index out of range. Offsets move when keys or tensors are added before writing the header. */
uint64_t nf_gguf_writer_tensor_offset(const struct nf_gguf_writer *w, uint64_t index);
uint64_t nf_gguf_writer_tensor_size(const struct nf_gguf_writer *w, uint64_t index);

/* Serializes sections 1-4 into a malloc'ed buffer of nf_gguf_writer_data_offset() bytes; the
 * caller owns *buf. */
int nf_gguf_writer_header(const struct nf_gguf_writer *w, void **buf, size_t *len);

/* Writes sections 1-4 at offset 0 of fd with pwrite, then extends the file with ftruncate to
 * nf_gguf_writer_file_size() (so data never written reads back as zeros and takes no disk). */
int nf_gguf_writer_write_header(const struct nf_gguf_writer *w, int fd);

/* General.file_type value (llama.cpp's llama_ftype) for a file whose matrices are all `type`;
 * -1 for types llama.cpp has no "mostly" file type for. */
int nf_gguf_ftype_for(enum nf_type type);

#endif
