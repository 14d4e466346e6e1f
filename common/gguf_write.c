/* gguf_write.c - streaming GGUF v3 writer: metadata and tensor infos in memory, data by offset. */
#include "gguf_write.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "nf_err.h"

#define NF_GGUF_MAGIC   0x46554747u /* "GGUF" read as a little-endian u32 */
#define NF_GGUF_VERSION 3u
/* Fixed part of section 1: magic, version, tensor count, kv count. */
#define NF_GGUF_FIXED_HEADER 24u
/* Keys longer than this are certainly a caller bug; llama.cpp's longest are under 64 bytes. */
#define NF_GGUF_MAX_KEY 65535u

struct nf_gguf_wtensor {
    char name[NF_GGUF_MAX_NAME + 1];
    uint32_t n_dims;
    int64_t ne[NF_GGUF_MAX_DIMS];
    enum nf_type type;
    uint64_t rel_offset; /* from the start of the data section */
    uint64_t size;
};

struct nf_gguf_writer {
    /* Section 2, serialized as keys are added. */
    uint8_t *kv;
    size_t kv_len, kv_cap;
    char **keys; /* for duplicate detection */
    uint64_t n_kv, keys_cap;

    struct nf_gguf_wtensor *tensors;
    uint64_t n_tensors, tensors_cap;
    uint64_t tinfo_len; /* bytes of section 3 */
    uint64_t data_end;  /* end of the last tensor, relative to the data section */
    uint64_t alignment;
};

static uint64_t align_up(uint64_t x, uint64_t a)
{
    return (x + a - 1) / a * a;
}

int nf_gguf_writer_init(struct nf_gguf_writer **out)
{
    struct nf_gguf_writer *w = calloc(1, sizeof(*w));
    if (!w)
        return -ENOMEM;
    w->alignment = NF_GGUF_DEFAULT_ALIGNMENT;
    *out = w;
    return 0;
}

void nf_gguf_writer_free(struct nf_gguf_writer *w)
{
    if (!w)
        return;
    for (uint64_t i = 0; i < w->n_kv; i++)
        free(w->keys[i]);
    free(w->keys);
    free(w->kv);
    free(w->tensors);
    free(w);
}

/* Makes room for n more bytes in the kv buffer. */
static int kv_reserve(struct nf_gguf_writer *w, size_t n)
{
    if (w->kv_len + n <= w->kv_cap)
        return 0;
    size_t cap = w->kv_cap ? w->kv_cap : 4096;
    while (cap < w->kv_len + n) {
        if (cap > SIZE_MAX / 2)
            return NF_EOVERFLOW;
        cap *= 2;
    }
    uint8_t *p = realloc(w->kv, cap);
    if (!p)
        return -ENOMEM;
    w->kv = p;
    w->kv_cap = cap;
    return 0;
}

static int put(struct nf_gguf_writer *w, const void *p, size_t n)
{
    int rc = kv_reserve(w, n);
    if (rc)
        return rc;
    if (n)
        memcpy(w->kv + w->kv_len, p, n);
    w->kv_len += n;
    return 0;
}

/* The machine is little-endian (x86-64), as GGUF is: values are copied as they are in memory. */
static int put_u32(struct nf_gguf_writer *w, uint32_t v)
{
    return put(w, &v, 4);
}

static int put_u64(struct nf_gguf_writer *w, uint64_t v)
{
    return put(w, &v, 8);
}

static int put_str(struct nf_gguf_writer *w, const char *s, size_t len)
{
    int rc = put_u64(w, len);
    return rc ? rc : put(w, s, len);
}

/* Bytes of one element of a scalar type, or 0 for STRING/ARRAY/unknown. */
static size_t scalar_size(enum nf_gguf_vtype t)
{
    switch (t) {
    case NF_GGUF_UINT8:
    case NF_GGUF_INT8:
    case NF_GGUF_BOOL: return 1;
    case NF_GGUF_UINT16:
    case NF_GGUF_INT16: return 2;
    case NF_GGUF_UINT32:
    case NF_GGUF_INT32:
    case NF_GGUF_FLOAT32: return 4;
    case NF_GGUF_UINT64:
    case NF_GGUF_INT64:
    case NF_GGUF_FLOAT64: return 8;
    default: return 0;
    }
}

/* Checks the key and appends it (and the value type) to the kv section; on success the caller
 * appends the value and then calls key_commit(). */
static int key_begin(struct nf_gguf_writer *w, const char *key, enum nf_gguf_vtype type)
{
    if (!w || !key)
        return -EINVAL;
    size_t len = strlen(key);
    if (len == 0 || len > NF_GGUF_MAX_KEY)
        return -EINVAL;
    for (uint64_t i = 0; i < w->n_kv; i++)
        if (!strcmp(w->keys[i], key))
            return -EEXIST;
    int rc = put_str(w, key, len);
    return rc ? rc : put_u32(w, (uint32_t)type);
}

static int key_commit(struct nf_gguf_writer *w, const char *key)
{
    if (w->n_kv == w->keys_cap) {
        uint64_t cap = w->keys_cap ? w->keys_cap * 2 : 32;
        char **k = realloc(w->keys, cap * sizeof(*k));
        if (!k)
            return -ENOMEM;
        w->keys = k;
        w->keys_cap = cap;
    }
    char *copy = strdup(key);
    if (!copy)
        return -ENOMEM;
    w->keys[w->n_kv++] = copy;
    return 0;
}

/* Appends key, type and the raw bytes of a scalar; rolls back on failure. */
static int add_scalar(struct nf_gguf_writer *w, const char *key, enum nf_gguf_vtype type,
                      const void *v)
{
    if (!w)
        return -EINVAL;
    size_t mark = w->kv_len;
    int rc = key_begin(w, key, type);
    if (!rc)
        rc = put(w, v, scalar_size(type));
    if (!rc)
        rc = key_commit(w, key);
    if (rc)
        w->kv_len = mark;
    return rc;
}

int nf_gguf_writer_add_u8(struct nf_gguf_writer *w, const char *key, uint8_t v)
{
    return add_scalar(w, key, NF_GGUF_UINT8, &v);
}

int nf_gguf_writer_add_i8(struct nf_gguf_writer *w, const char *key, int8_t v)
{
    return add_scalar(w, key, NF_GGUF_INT8, &v);
}

int nf_gguf_writer_add_u16(struct nf_gguf_writer *w, const char *key, uint16_t v)
{
    return add_scalar(w, key, NF_GGUF_UINT16, &v);
}

int nf_gguf_writer_add_i16(struct nf_gguf_writer *w, const char *key, int16_t v)
{
    return add_scalar(w, key, NF_GGUF_INT16, &v);
}

int nf_gguf_writer_add_u32(struct nf_gguf_writer *w, const char *key, uint32_t v)
{
    bool is_align = key && !strcmp(key, "general.alignment");
    if (is_align) {
        /* The alignment decides every tensor offset, so it cannot change once tensors exist. */
        if (!w || v == 0 || (v & (v - 1)) != 0 || w->n_tensors > 0)
            return -EINVAL;
    }
    int rc = add_scalar(w, key, NF_GGUF_UINT32, &v);
    if (!rc && is_align)
        w->alignment = v;
    return rc;
}

int nf_gguf_writer_add_i32(struct nf_gguf_writer *w, const char *key, int32_t v)
{
    return add_scalar(w, key, NF_GGUF_INT32, &v);
}

int nf_gguf_writer_add_u64(struct nf_gguf_writer *w, const char *key, uint64_t v)
{
    return add_scalar(w, key, NF_GGUF_UINT64, &v);
}

int nf_gguf_writer_add_i64(struct nf_gguf_writer *w, const char *key, int64_t v)
{
    return add_scalar(w, key, NF_GGUF_INT64, &v);
}

int nf_gguf_writer_add_f32(struct nf_gguf_writer *w, const char *key, float v)
{
    return add_scalar(w, key, NF_GGUF_FLOAT32, &v);
}

int nf_gguf_writer_add_f64(struct nf_gguf_writer *w, const char *key, double v)
{
    return add_scalar(w, key, NF_GGUF_FLOAT64, &v);
}

int nf_gguf_writer_add_bool(struct nf_gguf_writer *w, const char *key, bool v)
{
    uint8_t b = v ? 1 : 0;
    return add_scalar(w, key, NF_GGUF_BOOL, &b);
}

int nf_gguf_writer_add_strn(struct nf_gguf_writer *w, const char *key, const char *v, size_t len)
{
    if (!w || (!v && len))
        return -EINVAL;
    size_t mark = w->kv_len;
    int rc = key_begin(w, key, NF_GGUF_STRING);
    if (!rc)
        rc = put_str(w, v, len);
    if (!rc)
        rc = key_commit(w, key);
    if (rc)
        w->kv_len = mark;
    return rc;
}

int nf_gguf_writer_add_str(struct nf_gguf_writer *w, const char *key, const char *v)
{
    if (!v)
        return -EINVAL;
    return nf_gguf_writer_add_strn(w, key, v, strlen(v));
}

/* Appends the body of an array (element type, count, elements) of scalars. */
static int put_scalar_arr(struct nf_gguf_writer *w, enum nf_gguf_vtype type, const void *data,
                          uint64_t n)
{
    size_t es = scalar_size(type);
    if (!es || (!data && n))
        return -EINVAL;
    if (n > SIZE_MAX / es)
        return NF_EOVERFLOW;
    if (type == NF_GGUF_BOOL)
        for (uint64_t i = 0; i < n; i++)
            if (((const uint8_t *)data)[i] > 1)
                return -EINVAL;
    int rc = put_u32(w, (uint32_t)type);
    if (!rc)
        rc = put_u64(w, n);
    return rc ? rc : put(w, data, (size_t)(n * es));
}

int nf_gguf_writer_add_arr(struct nf_gguf_writer *w, const char *key, enum nf_gguf_vtype type,
                           const void *data, uint64_t n)
{
    if (!w)
        return -EINVAL;
    size_t mark = w->kv_len;
    int rc = key_begin(w, key, NF_GGUF_ARRAY);
    if (!rc)
        rc = put_scalar_arr(w, type, data, n);
    if (!rc)
        rc = key_commit(w, key);
    if (rc)
        w->kv_len = mark;
    return rc;
}

int nf_gguf_writer_add_arr_str(struct nf_gguf_writer *w, const char *key, const char *const *strs,
                               const size_t *lens, uint64_t n)
{
    if (!w || (!strs && n))
        return -EINVAL;
    size_t mark = w->kv_len;
    int rc = key_begin(w, key, NF_GGUF_ARRAY);
    if (!rc)
        rc = put_u32(w, NF_GGUF_STRING);
    if (!rc)
        rc = put_u64(w, n);
    for (uint64_t i = 0; !rc && i < n; i++) {
        if (!strs[i] && !(lens && lens[i] == 0)) {
            rc = -EINVAL;
            break;
        }
        rc = put_str(w, strs[i], lens ? lens[i] : strlen(strs[i]));
    }
    if (!rc)
        rc = key_commit(w, key);
    if (rc)
        w->kv_len = mark;
    return rc;
}

/* Appends a value's bytes (no key, no leading type): recursive for arrays of arrays. */
static int put_value(struct nf_gguf_writer *w, const struct nf_gguf_value *v, int depth)
{
    switch (v->type) {
    case NF_GGUF_UINT8:
    case NF_GGUF_UINT16:
    case NF_GGUF_UINT32:
    case NF_GGUF_UINT64:
    case NF_GGUF_INT8:
    case NF_GGUF_INT16:
    case NF_GGUF_INT32:
    case NF_GGUF_INT64:
        /* The reader widens integers; the low bytes of the widened value are the original. */
        return put(w, &v->v.u64, scalar_size(v->type));
    case NF_GGUF_FLOAT32: {
        float f = (float)v->v.f64;
        return put(w, &f, 4);
    }
    case NF_GGUF_FLOAT64: return put(w, &v->v.f64, 8);
    case NF_GGUF_BOOL: {
        uint8_t b = v->v.b ? 1 : 0;
        return put(w, &b, 1);
    }
    case NF_GGUF_STRING: return put_str(w, v->v.str.s, v->v.str.len);
    case NF_GGUF_ARRAY: break;
    default: return -EINVAL;
    }
    /* Arrays nest at most a few levels in practice; the bound keeps recursion finite. */
    if (depth > 8)
        return -EINVAL;
    enum nf_gguf_vtype et = v->v.arr.type;
    uint64_t n = v->v.arr.n;
    if (et == NF_GGUF_STRING) {
        const struct nf_gguf_str *s = v->v.arr.data;
        int rc = put_u32(w, NF_GGUF_STRING);
        if (!rc)
            rc = put_u64(w, n);
        for (uint64_t i = 0; !rc && i < n; i++)
            rc = put_str(w, s[i].s, s[i].len);
        return rc;
    }
    if (et == NF_GGUF_ARRAY) {
        const struct nf_gguf_value *a = v->v.arr.data;
        int rc = put_u32(w, NF_GGUF_ARRAY);
        if (!rc)
            rc = put_u64(w, n);
        for (uint64_t i = 0; !rc && i < n; i++)
            rc = a[i].type == NF_GGUF_ARRAY ? put_value(w, &a[i], depth + 1) : -EINVAL;
        return rc;
    }
    return put_scalar_arr(w, et, v->v.arr.data, n);
}

int nf_gguf_writer_add_value(struct nf_gguf_writer *w, const char *key,
                             const struct nf_gguf_value *v)
{
    if (!w || !v)
        return -EINVAL;
    if (v->type == NF_GGUF_UINT32 && key && !strcmp(key, "general.alignment"))
        return nf_gguf_writer_add_u32(w, key, (uint32_t)v->v.u64);
    size_t mark = w->kv_len;
    int rc = key_begin(w, key, v->type);
    if (!rc)
        rc = put_value(w, v, 0);
    if (!rc)
        rc = key_commit(w, key);
    if (rc)
        w->kv_len = mark;
    return rc;
}

int nf_gguf_writer_add_tensor(struct nf_gguf_writer *w, const char *name, uint32_t n_dims,
                              const int64_t *ne, enum nf_type type, uint64_t *index)
{
    if (!w || !name || !ne || n_dims < 1 || n_dims > NF_GGUF_MAX_DIMS)
        return -EINVAL;
    size_t len = strlen(name);
    if (len == 0 || len > NF_GGUF_MAX_NAME)
        return -EINVAL;
    const struct nf_type_traits *tr = nf_type_traits(type);
    if (!tr || tr->blck_size <= 0 || tr->type_size == 0)
        return NF_EBADTYPE;
    for (uint32_t d = 0; d < n_dims; d++)
        if (ne[d] <= 0)
            return NF_ESHAPE;
    if (ne[0] % tr->blck_size != 0)
        return NF_ESHAPE;
    /* Size = row bytes times the number of rows, checked for overflow at each step. */
    uint64_t size = (uint64_t)(ne[0] / tr->blck_size);
    if (size > UINT64_MAX / tr->type_size)
        return NF_EOVERFLOW;
    size *= tr->type_size;
    for (uint32_t d = 1; d < n_dims; d++) {
        if (size > (UINT64_MAX >> 2) / (uint64_t)ne[d])
            return NF_EOVERFLOW;
        size *= (uint64_t)ne[d];
    }
    for (uint64_t i = 0; i < w->n_tensors; i++)
        if (!strcmp(w->tensors[i].name, name))
            return -EEXIST;
    uint64_t off = align_up(w->data_end, w->alignment);
    if (off > (UINT64_MAX >> 2) - size)
        return NF_EOVERFLOW;
    if (w->n_tensors == w->tensors_cap) {
        uint64_t cap = w->tensors_cap ? w->tensors_cap * 2 : 64;
        struct nf_gguf_wtensor *t = realloc(w->tensors, cap * sizeof(*t));
        if (!t)
            return -ENOMEM;
        w->tensors = t;
        w->tensors_cap = cap;
    }
    struct nf_gguf_wtensor *t = &w->tensors[w->n_tensors];
    memset(t, 0, sizeof(*t));
    memcpy(t->name, name, len + 1);
    t->n_dims = n_dims;
    for (uint32_t d = 0; d < NF_GGUF_MAX_DIMS; d++)
        t->ne[d] = d < n_dims ? ne[d] : 1;
    t->type = type;
    t->rel_offset = off;
    t->size = size;
    w->data_end = off + size;
    /* Name string, n_dims, dims, type, offset. */
    w->tinfo_len += 8 + len + 4 + 8ull * n_dims + 4 + 8;
    if (index)
        *index = w->n_tensors;
    w->n_tensors++;
    return 0;
}

uint64_t nf_gguf_writer_n_kv(const struct nf_gguf_writer *w)
{
    return w->n_kv;
}

uint64_t nf_gguf_writer_n_tensors(const struct nf_gguf_writer *w)
{
    return w->n_tensors;
}

uint64_t nf_gguf_writer_alignment(const struct nf_gguf_writer *w)
{
    return w->alignment;
}

uint64_t nf_gguf_writer_data_offset(const struct nf_gguf_writer *w)
{
    return align_up(NF_GGUF_FIXED_HEADER + w->kv_len + w->tinfo_len, w->alignment);
}

uint64_t nf_gguf_writer_file_size(const struct nf_gguf_writer *w)
{
    return nf_gguf_writer_data_offset(w) + w->data_end;
}

uint64_t nf_gguf_writer_tensor_offset(const struct nf_gguf_writer *w, uint64_t index)
{
    if (index >= w->n_tensors)
        return UINT64_MAX;
    return nf_gguf_writer_data_offset(w) + w->tensors[index].rel_offset;
}

uint64_t nf_gguf_writer_tensor_size(const struct nf_gguf_writer *w, uint64_t index)
{
    if (index >= w->n_tensors)
        return UINT64_MAX;
    return w->tensors[index].size;
}

int nf_gguf_writer_header(const struct nf_gguf_writer *w, void **buf, size_t *len)
{
    uint64_t total = nf_gguf_writer_data_offset(w);
    if (total > SIZE_MAX)
        return NF_EOVERFLOW;
    uint8_t *p = calloc(1, (size_t)total);
    if (!p)
        return -ENOMEM;
    uint8_t *q = p;
#define EMIT(src, n)           \
    do {                       \
        memcpy(q, (src), (n)); \
        q += (n);              \
    } while (0)
    uint32_t magic = NF_GGUF_MAGIC, version = NF_GGUF_VERSION;
    EMIT(&magic, 4);
    EMIT(&version, 4);
    EMIT(&w->n_tensors, 8);
    EMIT(&w->n_kv, 8);
    if (w->kv_len)
        EMIT(w->kv, w->kv_len);
    for (uint64_t i = 0; i < w->n_tensors; i++) {
        const struct nf_gguf_wtensor *t = &w->tensors[i];
        uint64_t nlen = strlen(t->name);
        uint32_t type = (uint32_t)t->type;
        EMIT(&nlen, 8);
        EMIT(t->name, nlen);
        EMIT(&t->n_dims, 4);
        for (uint32_t d = 0; d < t->n_dims; d++)
            EMIT(&t->ne[d], 8);
        EMIT(&type, 4);
        EMIT(&t->rel_offset, 8);
    }
#undef EMIT
    /* The rest of the buffer is the zero padding up to the data section. */
    *buf = p;
    *len = (size_t)total;
    return 0;
}

int nf_gguf_writer_write_header(const struct nf_gguf_writer *w, int fd)
{
    void *buf;
    size_t len;
    int rc = nf_gguf_writer_header(w, &buf, &len);
    if (rc)
        return rc;
    size_t done = 0;
    while (done < len) {
        ssize_t n = pwrite(fd, (const uint8_t *)buf + done, len - done, (off_t)done);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0) {
            rc = n < 0 ? -errno : -EIO;
            break;
        }
        done += (size_t)n;
    }
    free(buf);
    if (!rc && ftruncate(fd, (off_t)nf_gguf_writer_file_size(w)) != 0)
        rc = -errno;
    return rc;
}

int nf_gguf_ftype_for(enum nf_type type)
{
    /* llama_ftype values (llama.h); the K-types map to their "_S" (uniform) variants. */
    switch (type) {
    case NF_TYPE_F32: return 0;
    case NF_TYPE_F16: return 1;
    case NF_TYPE_Q4_0: return 2;
    case NF_TYPE_Q4_1: return 3;
    case NF_TYPE_Q8_0: return 7;
    case NF_TYPE_Q5_0: return 8;
    case NF_TYPE_Q5_1: return 9;
    case NF_TYPE_Q2_K: return 10;
    case NF_TYPE_Q3_K: return 11;
    case NF_TYPE_Q4_K: return 14;
    case NF_TYPE_Q5_K: return 16;
    case NF_TYPE_Q6_K: return 18;
    case NF_TYPE_IQ4_NL: return 25;
    case NF_TYPE_IQ4_XS: return 30;
    case NF_TYPE_BF16: return 32;
    default: return -1;
    }
}
