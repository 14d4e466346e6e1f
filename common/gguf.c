/* gguf.c - GGUF v2/v3 reader: parses and validates the header, serves tensor data by pread.
 *
 * Everything the header declares is checked against the file before it is believed: a count or
 * length is compared with the bytes that remain before anything is allocated for it, so memory
 * use stays within a small multiple of the file size whatever the file says. Error codes:
 *   NF_EBADMAGIC   the file does not start with "GGUF";
 *   NF_EBADVERSION version other than 2 or 3;
 *   NF_ETRUNCATED  the file ends before something it declares (a field, a string, an array, the
 *                  tensor data);
 *   NF_ESHAPE      n_dims outside 1..4, a dimension <= 0, ne[0] not a multiple of the block;
 *   NF_EOVERFLOW   element count or byte size does not fit in 63 bits;
 *   NF_EBADTYPE    unknown ggml tensor type;
 *   NF_ECORRUPT    everything else (duplicates, overlaps, misalignment, bad value types, ...).
 * The header is read through one buffer refilled by pread; tensor data is never read here. */
#include "gguf.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "gguf_impl.h"
#include "nf_err.h"

#if !defined(__BYTE_ORDER__) || __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "gguf.c assumes a little-endian host (GGUF scalars are stored little-endian)"
#endif

#define GGUF_MAX_DEPTH   8           /* deepest array nesting accepted (arrays of arrays of ...) */
#define GGUF_BUF_SIZE    (256 << 10) /* header read buffer */
#define GGUF_ARENA_CHUNK (64 << 10)
#define GGUF_MIN_KV      13 /* key length (8) + value type (4) + smallest value (1) */
#define GGUF_MIN_TENSOR  32 /* name length (8) + n_dims (4) + ne[0] (8) + type (4) + offset (8) */
#define GGUF_NAME_SHOW   64 /* longest name quoted in an error message */

/* Block geometry of every ggml type, so that files holding types NanoFlow cannot compute can
 * still be read and validated (values from ggml's type_traits / ggml-common.h). */
struct gguf_type_geom {
    const char *name;   /* ggml's name */
    int64_t blck_size;  /* elements per block */
    uint32_t type_size; /* bytes per block */
};

static const struct gguf_type_geom gguf_geom[NF_TYPE_COUNT] = {
    [NF_TYPE_F32] = {"f32", 1, 4},
    [NF_TYPE_F16] = {"f16", 1, 2},
    [NF_TYPE_Q4_0] = {"q4_0", 32, 18},
    [NF_TYPE_Q4_1] = {"q4_1", 32, 20},
    [NF_TYPE_Q5_0] = {"q5_0", 32, 22},
    [NF_TYPE_Q5_1] = {"q5_1", 32, 24},
    [NF_TYPE_Q8_0] = {"q8_0", 32, 34},
    [NF_TYPE_Q8_1] = {"q8_1", 32, 36},
    [NF_TYPE_Q2_K] = {"q2_K", 256, 84},
    [NF_TYPE_Q3_K] = {"q3_K", 256, 110},
    [NF_TYPE_Q4_K] = {"q4_K", 256, 144},
    [NF_TYPE_Q5_K] = {"q5_K", 256, 176},
    [NF_TYPE_Q6_K] = {"q6_K", 256, 210},
    [NF_TYPE_Q8_K] = {"q8_K", 256, 292},
    [NF_TYPE_IQ2_XXS] = {"iq2_xxs", 256, 66},
    [NF_TYPE_IQ2_XS] = {"iq2_xs", 256, 74},
    [NF_TYPE_IQ3_XXS] = {"iq3_xxs", 256, 98},
    [NF_TYPE_IQ1_S] = {"iq1_s", 256, 50},
    [NF_TYPE_IQ4_NL] = {"iq4_nl", 32, 18},
    [NF_TYPE_IQ3_S] = {"iq3_s", 256, 110},
    [NF_TYPE_IQ2_S] = {"iq2_s", 256, 82},
    [NF_TYPE_IQ4_XS] = {"iq4_xs", 256, 136},
    [NF_TYPE_I8] = {"i8", 1, 1},
    [NF_TYPE_I16] = {"i16", 1, 2},
    [NF_TYPE_I32] = {"i32", 1, 4},
    [NF_TYPE_I64] = {"i64", 1, 8},
    [NF_TYPE_F64] = {"f64", 1, 8},
    [NF_TYPE_IQ1_M] = {"iq1_m", 256, 56},
    [NF_TYPE_BF16] = {"bf16", 1, 2},
    [NF_TYPE_TQ1_0] = {"tq1_0", 256, 54},
    [NF_TYPE_TQ2_0] = {"tq2_0", 256, 66},
    [NF_TYPE_MXFP4] = {"mxfp4", 32, 17},
};

/* Bytes of one scalar of each value type in the file (0 for STRING and ARRAY). */
static const uint8_t gguf_vsize[NF_GGUF_VTYPE_COUNT] = {
    [NF_GGUF_UINT8] = 1,  [NF_GGUF_INT8] = 1,  [NF_GGUF_UINT16] = 2,  [NF_GGUF_INT16] = 2,
    [NF_GGUF_UINT32] = 4, [NF_GGUF_INT32] = 4, [NF_GGUF_FLOAT32] = 4, [NF_GGUF_BOOL] = 1,
    [NF_GGUF_UINT64] = 8, [NF_GGUF_INT64] = 8, [NF_GGUF_FLOAT64] = 8,
};

static const char *const gguf_vname[NF_GGUF_VTYPE_COUNT] = {
    [NF_GGUF_UINT8] = "uint8",     [NF_GGUF_INT8] = "int8",     [NF_GGUF_UINT16] = "uint16",
    [NF_GGUF_INT16] = "int16",     [NF_GGUF_UINT32] = "uint32", [NF_GGUF_INT32] = "int32",
    [NF_GGUF_FLOAT32] = "float32", [NF_GGUF_BOOL] = "bool",     [NF_GGUF_STRING] = "string",
    [NF_GGUF_ARRAY] = "array",     [NF_GGUF_UINT64] = "uint64", [NF_GGUF_INT64] = "int64",
    [NF_GGUF_FLOAT64] = "float64",
};

const char *nf_gguf_vtype_name(enum nf_gguf_vtype t)
{
    if ((unsigned)t >= NF_GGUF_VTYPE_COUNT)
        return "invalid";
    return gguf_vname[t];
}

/* --- arena: every string and array of one file lives here and is freed at once --- */

struct gguf_chunk {
    struct gguf_chunk *next;
    size_t used;
    size_t cap;
    size_t pad_; /* keeps the data that follows 16-byte aligned */
};

static void *arena_alloc(struct gguf_chunk **arena, size_t n)
{
    n = (n + 7) & ~(size_t)7;
    struct gguf_chunk *c = *arena;
    if (!c || c->cap - c->used < n) {
        size_t cap = n > GGUF_ARENA_CHUNK ? n : GGUF_ARENA_CHUNK;
        c = malloc(sizeof(*c) + cap);
        if (!c)
            return NULL;
        c->used = 0;
        c->cap = cap;
        /* A chunk made for one large request goes behind the current one so that the current
         * chunk's free space is not abandoned. */
        if (*arena && cap == n) {
            c->next = (*arena)->next;
            (*arena)->next = c;
            c->used = n;
            return c + 1;
        }
        c->next = *arena;
        *arena = c;
    }
    void *p = (char *)(c + 1) + c->used;
    c->used += n;
    return p;
}

static void arena_free(struct gguf_chunk *c)
{
    while (c) {
        struct gguf_chunk *next = c->next;
        free(c);
        c = next;
    }
}

/* --- the opened file --- */

void nf_gguf_close(struct nf_gguf *g)
{
    if (!g)
        return;
    struct gguf_impl *im = (struct gguf_impl *)g;
    if (g->fd >= 0)
        close(g->fd);
    if (im->sub)
        for (uint32_t i = 1; i < g->n_parts; i++)
            nf_gguf_close(im->sub[i]);
    free(im->sub);
    free(g->parts);
    free(g->kv);
    free(g->tensors);
    free(im->kv_index.slot);
    free(im->tensor_index.slot);
    arena_free(im->arena);
    free(im);
}

/* --- parser --- */

struct parser {
    struct gguf_impl *g;
    const char *name; /* file name for messages */
    char *err;
    size_t errlen;
    int fd;
    const uint8_t *mem;
    uint64_t size;
    bool meta_only; /* tensor data is absent: skip the data-inside-the-file check */
    uint64_t pos;   /* next byte to parse */
    uint8_t *buf;   /* window [buf_off, buf_off + buf_len) of the file */
    uint64_t buf_off;
    size_t buf_len;
    char where[160]; /* the section being parsed, e.g. "metadata entry 3 ('general.name')" */
};

/* Copies a name from the file into out for quoting: at most GGUF_NAME_SHOW bytes, control and
 * non-ASCII bytes as '?', so that a hostile name cannot break the one-line message. */
static const char *show(char out[GGUF_NAME_SHOW + 4], const char *s, uint64_t len)
{
    uint64_t n = len > GGUF_NAME_SHOW ? GGUF_NAME_SHOW : len;
    for (uint64_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        out[i] = (c >= 0x20 && c < 0x7f) ? (char)c : '?';
    }
    if (len > n)
        memcpy(out + n, "...", 4);
    else
        out[n] = '\0';
    return out;
}

static uint64_t remaining(const struct parser *p)
{
    return p->size - p->pos;
}

static int read_bytes(struct parser *p, void *dst, uint64_t n, const char *field)
{
    if (n > remaining(p))
        return nf_errf_at(p->err, p->errlen, NF_ETRUNCATED, p->name,
                          "truncated in %s: %s needs %" PRIu64 " bytes at offset %" PRIu64
                          " but the file has %" PRIu64,
                          p->where, field, n, p->pos, p->size);
    if (p->mem) {
        if (n)
            memcpy(dst, p->mem + p->pos, n);
        p->pos += n;
        return 0;
    }
    uint8_t *d = dst;
    while (n > 0) {
        if (p->pos >= p->buf_off && p->pos < p->buf_off + p->buf_len) {
            uint64_t at = p->pos - p->buf_off;
            uint64_t k = p->buf_len - at < n ? p->buf_len - at : n;
            memcpy(d, p->buf + at, k);
            d += k;
            n -= k;
            p->pos += k;
            continue;
        }
        int rc;
        if (n >= GGUF_BUF_SIZE) {
            /* Large arrays bypass the buffer. */
            rc = nf__gguf_pread_full(p->fd, d, n, p->pos);
            if (rc == 0) {
                p->pos += n;
                return 0;
            }
        } else {
            uint64_t want = remaining(p) < GGUF_BUF_SIZE ? remaining(p) : GGUF_BUF_SIZE;
            rc = nf__gguf_pread_full(p->fd, p->buf, want, p->pos);
            if (rc == 0) {
                p->buf_off = p->pos;
                p->buf_len = want;
                continue;
            }
        }
        if (rc == NF_ETRUNCATED)
            return nf_errf_at(p->err, p->errlen, rc, p->name,
                              "truncated in %s: the file shrank while being read", p->where);
        return nf_errf_at(p->err, p->errlen, rc, p->name,
                          "read error in %s at offset %" PRIu64 ": %s", p->where, p->pos,
                          nf_strerror(rc));
    }
    return 0;
}

static int read_u32(struct parser *p, uint32_t *v, const char *field)
{
    return read_bytes(p, v, 4, field);
}

static int read_u64(struct parser *p, uint64_t *v, const char *field)
{
    return read_bytes(p, v, 8, field);
}

static int read_str(struct parser *p, struct nf_gguf_str *out, const char *field)
{
    uint64_t len;
    int rc = read_u64(p, &len, field);
    if (rc)
        return rc;
    if (len > remaining(p))
        return nf_errf_at(p->err, p->errlen, NF_ETRUNCATED, p->name,
                          "truncated in %s: %s has length %" PRIu64 " but only %" PRIu64
                          " bytes remain in the file",
                          p->where, field, len, remaining(p));
    char *s = arena_alloc(&p->g->arena, (size_t)len + 1);
    if (!s)
        return nf_errf_at(p->err, p->errlen, -ENOMEM, p->name, "out of memory reading %s of %s",
                          field, p->where);
    rc = read_bytes(p, s, len, field);
    if (rc)
        return rc;
    s[len] = '\0';
    out->len = len;
    out->s = s;
    return 0;
}

static int read_value(struct parser *p, enum nf_gguf_vtype type, int depth,
                      struct nf_gguf_value *val);

/* Reads an array body (element type, count, elements) at nesting level depth (1 = top). */
static int read_array(struct parser *p, int depth, struct nf_gguf_value *val)
{
    uint32_t et;
    uint64_t n;
    int rc = read_u32(p, &et, "array element type");
    if (rc)
        return rc;
    if (et >= NF_GGUF_VTYPE_COUNT)
        return nf_errf_at(p->err, p->errlen, NF_ECORRUPT, p->name,
                          "%s: invalid array element type %u (valid: 0..%d)", p->where, et,
                          NF_GGUF_VTYPE_COUNT - 1);
    if (et == NF_GGUF_ARRAY && depth >= GGUF_MAX_DEPTH)
        return nf_errf_at(p->err, p->errlen, NF_ECORRUPT, p->name,
                          "%s: arrays nested deeper than %d levels", p->where, GGUF_MAX_DEPTH);
    rc = read_u64(p, &n, "array count");
    if (rc)
        return rc;
    uint64_t min_elem = et == NF_GGUF_STRING ? 8 : et == NF_GGUF_ARRAY ? 12 : gguf_vsize[et];
    if (n > remaining(p) / min_elem)
        return nf_errf_at(p->err, p->errlen, NF_ETRUNCATED, p->name,
                          "truncated in %s: array of %" PRIu64
                          " %s elements needs at least %" PRIu64 " bytes each but only %" PRIu64
                          " bytes remain in the file",
                          p->where, n, gguf_vname[et], min_elem, remaining(p));
    val->v.arr.type = (enum nf_gguf_vtype)et;
    val->v.arr.n = n;
    val->v.arr.data = NULL;
    if (n == 0)
        return 0;
    size_t esize = et == NF_GGUF_STRING  ? sizeof(struct nf_gguf_str)
                   : et == NF_GGUF_ARRAY ? sizeof(struct nf_gguf_value)
                                         : gguf_vsize[et];
    size_t bytes;
    if (__builtin_mul_overflow((size_t)n, esize, &bytes))
        return nf_errf_at(p->err, p->errlen, NF_EOVERFLOW, p->name,
                          "%s: array of %" PRIu64 " elements is too large", p->where, n);
    void *data = arena_alloc(&p->g->arena, bytes);
    if (!data)
        return nf_errf_at(p->err, p->errlen, -ENOMEM, p->name,
                          "out of memory for an array of %" PRIu64 " in %s", n, p->where);
    val->v.arr.data = data;
    if (et == NF_GGUF_STRING) {
        struct nf_gguf_str *s = data;
        for (uint64_t i = 0; i < n; i++)
            if ((rc = read_str(p, &s[i], "array string")))
                return rc;
        return 0;
    }
    if (et == NF_GGUF_ARRAY) {
        struct nf_gguf_value *a = data;
        for (uint64_t i = 0; i < n; i++) {
            a[i].type = NF_GGUF_ARRAY;
            if ((rc = read_array(p, depth + 1, &a[i])))
                return rc;
        }
        return 0;
    }
    if ((rc = read_bytes(p, data, bytes, "array elements")))
        return rc;
    if (et == NF_GGUF_BOOL) {
        const uint8_t *b = data;
        for (uint64_t i = 0; i < n; i++)
            if (b[i] > 1)
                return nf_errf_at(p->err, p->errlen, NF_ECORRUPT, p->name,
                                  "%s: bool array element %" PRIu64 " is %u (not 0/1)", p->where, i,
                                  b[i]);
    }
    return 0;
}

static int read_value(struct parser *p, enum nf_gguf_vtype type, int depth,
                      struct nf_gguf_value *val)
{
    uint8_t raw[8];
    int rc;
    val->type = type;
    if (type == NF_GGUF_STRING)
        return read_str(p, &val->v.str, "string value");
    if (type == NF_GGUF_ARRAY)
        return read_array(p, depth, val);
    if ((rc = read_bytes(p, raw, gguf_vsize[type], "value")))
        return rc;
    switch (type) {
    case NF_GGUF_UINT8: val->v.u64 = raw[0]; break;
    case NF_GGUF_INT8: val->v.i64 = (int8_t)raw[0]; break;
    case NF_GGUF_UINT16: {
        uint16_t x;
        memcpy(&x, raw, 2);
        val->v.u64 = x;
        break;
    }
    case NF_GGUF_INT16: {
        int16_t x;
        memcpy(&x, raw, 2);
        val->v.i64 = x;
        break;
    }
    case NF_GGUF_UINT32: {
        uint32_t x;
        memcpy(&x, raw, 4);
        val->v.u64 = x;
        break;
    }
    case NF_GGUF_INT32: {
        int32_t x;
        memcpy(&x, raw, 4);
        val->v.i64 = x;
        break;
    }
    case NF_GGUF_FLOAT32: {
        float x;
        memcpy(&x, raw, 4);
        val->v.f64 = x;
        break;
    }
    case NF_GGUF_BOOL:
        if (raw[0] > 1)
            return nf_errf_at(p->err, p->errlen, NF_ECORRUPT, p->name,
                              "%s: bool value is %u (not 0/1)", p->where, raw[0]);
        val->v.b = raw[0] != 0;
        break;
    case NF_GGUF_UINT64: memcpy(&val->v.u64, raw, 8); break;
    case NF_GGUF_INT64: memcpy(&val->v.i64, raw, 8); break;
    case NF_GGUF_FLOAT64: memcpy(&val->v.f64, raw, 8); break;
    default:
        return nf_errf_at(p->err, p->errlen, NF_ECORRUPT, p->name, "%s: invalid value type %d",
                          p->where, (int)type);
    }
    return 0;
}

static int parse_header(struct parser *p)
{
    struct nf_gguf *g = &p->g->pub;
    uint8_t magic[4];
    int rc;
    snprintf(p->where, sizeof(p->where), "the file header");
    if ((rc = read_bytes(p, magic, 4, "magic")))
        return rc;
    if (memcmp(magic, "GGUF", 4) != 0)
        return nf_errf_at(p->err, p->errlen, NF_EBADMAGIC, p->name,
                          "bad magic %02x %02x %02x %02x (expected \"GGUF\"): not a GGUF file",
                          magic[0], magic[1], magic[2], magic[3]);
    if ((rc = read_u32(p, &g->version, "version")))
        return rc;
    if (g->version == 1)
        return nf_errf_at(
            p->err, p->errlen, NF_EBADVERSION, p->name,
            "GGUF version 1 is not supported (only versions 2 and 3 are; re-convert the "
            "model with a current llama.cpp)");
    if (g->version != 2 && g->version != 3) {
        uint32_t sw = __builtin_bswap32(g->version);
        return nf_errf_at(p->err, p->errlen, NF_EBADVERSION, p->name,
                          "unsupported GGUF version %u (expected 2 or 3)%s", g->version,
                          sw >= 1 && sw <= 3 ? "; this looks like a big-endian GGUF file" : "");
    }
    if ((rc = read_u64(p, &g->n_tensors, "tensor count")) ||
        (rc = read_u64(p, &g->n_kv, "metadata kv count")))
        return rc;
    uint64_t rem = remaining(p);
    if (g->n_kv > rem / GGUF_MIN_KV || g->n_tensors > rem / GGUF_MIN_TENSOR ||
        g->n_kv * GGUF_MIN_KV + g->n_tensors * GGUF_MIN_TENSOR > rem)
        return nf_errf_at(p->err, p->errlen, NF_ETRUNCATED, p->name,
                          "header declares %" PRIu64 " metadata entries and %" PRIu64
                          " tensors, which cannot fit in the %" PRIu64 " bytes left in the file",
                          g->n_kv, g->n_tensors, rem);
    if (g->n_kv >= UINT32_MAX || g->n_tensors >= UINT32_MAX)
        return nf_errf_at(p->err, p->errlen, NF_EOVERFLOW, p->name,
                          "too many metadata entries or tensors");
    return 0;
}

static int parse_kv(struct parser *p)
{
    struct nf_gguf *g = &p->g->pub;
    char shown[GGUF_NAME_SHOW + 4];
    int rc;
    g->kv = calloc(g->n_kv ? g->n_kv : 1, sizeof(*g->kv));
    if (!g->kv || nf__gguf_htab_init(&p->g->kv_index, g->n_kv))
        return nf_errf_at(p->err, p->errlen, -ENOMEM, p->name,
                          "out of memory for %" PRIu64 " metadata entries", g->n_kv);
    for (uint64_t i = 0; i < g->n_kv; i++) {
        struct nf_gguf_kv *kv = &g->kv[i];
        uint32_t type;
        snprintf(p->where, sizeof(p->where), "metadata entry %" PRIu64, i);
        if ((rc = read_str(p, &kv->key, "key")))
            return rc;
        snprintf(p->where, sizeof(p->where), "metadata entry %" PRIu64 " ('%s')", i,
                 show(shown, kv->key.s, kv->key.len));
        int64_t dup = nf__gguf_htab_insert(&p->g->kv_index, g->kv, sizeof(*g->kv), (uint32_t)i);
        if (dup >= 0)
            return nf_errf_at(p->err, p->errlen, NF_ECORRUPT, p->name,
                              "duplicate metadata key '%s' (entries %" PRId64 " and %" PRIu64 ")",
                              shown, dup, i);
        if ((rc = read_u32(p, &type, "value type")))
            return rc;
        if (type >= NF_GGUF_VTYPE_COUNT)
            return nf_errf_at(p->err, p->errlen, NF_ECORRUPT, p->name,
                              "%s: invalid value type %u (valid: 0..%d)", p->where, type,
                              NF_GGUF_VTYPE_COUNT - 1);
        if ((rc = read_value(p, (enum nf_gguf_vtype)type, 1, &kv->value)))
            return rc;
    }
    g->alignment = NF_GGUF_DEFAULT_ALIGNMENT;
    const struct nf_gguf_value *a = nf_gguf_get(g, "general.alignment");
    if (a) {
        if (a->type != NF_GGUF_UINT32)
            return nf_errf_at(p->err, p->errlen, NF_ECORRUPT, p->name,
                              "general.alignment has type %s (expected uint32)",
                              nf_gguf_vtype_name(a->type));
        if (a->v.u64 == 0 || (a->v.u64 & (a->v.u64 - 1)) != 0)
            return nf_errf_at(p->err, p->errlen, NF_ECORRUPT, p->name,
                              "general.alignment is %" PRIu64 " (expected a power of two)",
                              a->v.u64);
        g->alignment = a->v.u64;
    }
    return 0;
}

/* Reads one tensor info and checks it on its own (shape, type, size, offset alignment). */
static int parse_tensor_info(struct parser *p, uint64_t i, struct nf_gguf_tensor *t)
{
    char shown[GGUF_NAME_SHOW + 4];
    int rc;
    snprintf(p->where, sizeof(p->where), "tensor info %" PRIu64, i);
    if ((rc = read_str(p, &t->name, "name")))
        return rc;
    show(shown, t->name.s, t->name.len);
    snprintf(p->where, sizeof(p->where), "tensor info %" PRIu64 " ('%s')", i, shown);
    int64_t dup =
        nf__gguf_htab_insert(&p->g->tensor_index, p->g->pub.tensors, sizeof(*t), (uint32_t)i);
    if (dup >= 0)
        return nf_errf_at(p->err, p->errlen, NF_ECORRUPT, p->name,
                          "duplicate tensor name '%s' (tensors %" PRId64 " and %" PRIu64 ")", shown,
                          dup, i);
    if ((rc = read_u32(p, &t->n_dims, "n_dims")))
        return rc;
    if (t->n_dims < 1 || t->n_dims > NF_GGUF_MAX_DIMS)
        return nf_errf_at(p->err, p->errlen, NF_ESHAPE, p->name,
                          "tensor '%s': n_dims is %u (expected 1..%d)", shown, t->n_dims,
                          NF_GGUF_MAX_DIMS);
    for (int d = 0; d < NF_GGUF_MAX_DIMS; d++)
        t->ne[d] = 1;
    for (uint32_t d = 0; d < t->n_dims; d++) {
        uint64_t ne;
        if ((rc = read_u64(p, &ne, "dimension")))
            return rc;
        t->ne[d] = (int64_t)ne;
    }
    uint32_t type;
    uint64_t rel;
    if ((rc = read_u32(p, &type, "type")) || (rc = read_u64(p, &rel, "offset")))
        return rc;

    int64_t nel = 1;
    for (uint32_t d = 0; d < t->n_dims; d++) {
        if (t->ne[d] <= 0)
            return nf_errf_at(p->err, p->errlen, NF_ESHAPE, p->name,
                              "tensor '%s': dimension %u is %" PRId64 " (must be > 0)", shown, d,
                              t->ne[d]);
        if (__builtin_mul_overflow(nel, t->ne[d], &nel))
            return nf_errf_at(p->err, p->errlen, NF_EOVERFLOW, p->name,
                              "tensor '%s': element count overflows (dimensions %" PRId64
                              " x %" PRId64 " x %" PRId64 " x %" PRId64 ")",
                              shown, t->ne[0], t->ne[1], t->ne[2], t->ne[3]);
    }
    t->n_elements = nel;
    if (type >= NF_TYPE_COUNT || gguf_geom[type].blck_size == 0)
        return nf_errf_at(p->err, p->errlen, NF_EBADTYPE, p->name,
                          "tensor '%s': unknown tensor type %u", shown, type);
    t->type = (enum nf_type)type;
    const struct gguf_type_geom *geo = &gguf_geom[type];
    if (t->ne[0] % geo->blck_size != 0)
        return nf_errf_at(p->err, p->errlen, NF_ESHAPE, p->name,
                          "tensor '%s': ne[0] = %" PRId64
                          " is not a multiple of the block size %" PRId64 " of type %s",
                          shown, t->ne[0], geo->blck_size, geo->name);
    uint64_t size = (uint64_t)(t->ne[0] / geo->blck_size) * geo->type_size;
    for (uint32_t d = 1; d < t->n_dims; d++)
        if (__builtin_mul_overflow(size, (uint64_t)t->ne[d], &size) || size > INT64_MAX)
            return nf_errf_at(p->err, p->errlen, NF_EOVERFLOW, p->name,
                              "tensor '%s': byte size overflows (dimensions %" PRId64 " x %" PRId64
                              " x %" PRId64 " x %" PRId64 ")",
                              shown, t->ne[0], t->ne[1], t->ne[2], t->ne[3]);
    t->size = size;
    if (rel % p->g->pub.alignment != 0)
        return nf_errf_at(p->err, p->errlen, NF_ECORRUPT, p->name,
                          "tensor '%s': offset %" PRIu64
                          " is not a multiple of the alignment %" PRIu64,
                          shown, rel, p->g->pub.alignment);
    t->offset = rel; /* made absolute once the data section is known */
    return 0;
}

struct span {
    uint64_t begin, end;
    uint32_t idx;
};

static int span_cmp(const void *a, const void *b)
{
    const struct span *x = a, *y = b;
    return x->begin < y->begin ? -1 : x->begin > y->begin;
}

/* Places every tensor in the data section and checks it lies in the file without overlaps. */
static int place_tensors(struct parser *p)
{
    struct nf_gguf *g = &p->g->pub;
    char s1[GGUF_NAME_SHOW + 4], s2[GGUF_NAME_SHOW + 4];
    uint64_t pad = (g->alignment - p->pos % g->alignment) % g->alignment;
    if (__builtin_add_overflow(p->pos, pad, &g->data_offset))
        return nf_errf_at(p->err, p->errlen, NF_EOVERFLOW, p->name,
                          "data section offset overflows");
    if (g->n_tensors == 0)
        return 0;
    struct span *sp = malloc(g->n_tensors * sizeof(*sp));
    if (!sp)
        return nf_errf_at(p->err, p->errlen, -ENOMEM, p->name,
                          "out of memory for %" PRIu64 " tensors", g->n_tensors);
    int rc = 0;
    for (uint64_t i = 0; i < g->n_tensors; i++) {
        struct nf_gguf_tensor *t = &g->tensors[i];
        uint64_t begin, end;
        show(s1, t->name.s, t->name.len);
        if (__builtin_add_overflow(g->data_offset, t->offset, &begin)) {
            rc = nf_errf_at(p->err, p->errlen, NF_EOVERFLOW, p->name,
                            "tensor '%s': offset %" PRIu64 " overflows", s1, t->offset);
            goto out;
        }
        if (__builtin_add_overflow(begin, t->size, &end) || (!p->meta_only && end > g->file_size)) {
            /* end may have wrapped; report it as begin + size then. */
            if (end < begin)
                rc = nf_errf_at(p->err, p->errlen, NF_ETRUNCATED, p->name,
                                "tensor '%s': data at %" PRIu64 " of %" PRIu64
                                " bytes lies outside the file (size %" PRIu64 ")",
                                s1, begin, t->size, g->file_size);
            else
                rc = nf_errf_at(p->err, p->errlen, NF_ETRUNCATED, p->name,
                                "tensor '%s': data [%" PRIu64 ", %" PRIu64
                                ") lies outside the file (size %" PRIu64 ")",
                                s1, begin, end, g->file_size);
            goto out;
        }
        t->offset = begin;
        sp[i] = (struct span){begin, end, (uint32_t)i};
    }
    qsort(sp, g->n_tensors, sizeof(*sp), span_cmp);
    for (uint64_t i = 1; i < g->n_tensors; i++) {
        if (sp[i].begin < sp[i - 1].end) {
            const struct nf_gguf_tensor *a = &g->tensors[sp[i - 1].idx];
            const struct nf_gguf_tensor *b = &g->tensors[sp[i].idx];
            rc = nf_errf_at(p->err, p->errlen, NF_ECORRUPT, p->name,
                            "tensors '%s' [%" PRIu64 ", %" PRIu64 ") and '%s' [%" PRIu64
                            ", %" PRIu64 ") overlap",
                            show(s1, a->name.s, a->name.len), sp[i - 1].begin, sp[i - 1].end,
                            show(s2, b->name.s, b->name.len), sp[i].begin, sp[i].end);
            goto out;
        }
    }
out:
    free(sp);
    return rc;
}

static int parse(struct parser *p)
{
    struct nf_gguf *g = &p->g->pub;
    int rc;
    if ((rc = parse_header(p)) || (rc = parse_kv(p)))
        return rc;
    g->tensors = calloc(g->n_tensors ? g->n_tensors : 1, sizeof(*g->tensors));
    if (!g->tensors || nf__gguf_htab_init(&p->g->tensor_index, g->n_tensors))
        return nf_errf_at(p->err, p->errlen, -ENOMEM, p->name,
                          "out of memory for %" PRIu64 " tensors", g->n_tensors);
    for (uint64_t i = 0; i < g->n_tensors; i++)
        if ((rc = parse_tensor_info(p, i, &g->tensors[i])))
            return rc;
    return place_tensors(p);
}

/* Parses the file behind fd (taking ownership of fd) or the image mem. */
static int open_common(struct nf_gguf **out, int fd, const uint8_t *mem, uint64_t size,
                       const char *name, char *err, size_t errlen, bool meta_only)
{
    struct parser p = {.name = name,
                       .err = err,
                       .errlen = errlen,
                       .fd = fd,
                       .mem = mem,
                       .size = size,
                       .meta_only = meta_only};
    if (err && errlen)
        err[0] = '\0';
    p.g = calloc(1, sizeof(*p.g));
    if (!mem)
        p.buf = malloc(GGUF_BUF_SIZE);
    struct nf_gguf_part *part = calloc(1, sizeof(*part));
    if (!p.g || !part || (!mem && !p.buf)) {
        free(p.g);
        free(part);
        free(p.buf);
        if (fd >= 0)
            close(fd);
        return nf_errf_at(p.err, p.errlen, -ENOMEM, p.name, "out of memory");
    }
    struct nf_gguf *g = &p.g->pub;
    g->fd = fd;
    g->file_size = size;
    snprintf(g->path, sizeof(g->path), "%s", name);
    *part = (struct nf_gguf_part){.fd = fd, .base = 0, .size = size};
    snprintf(part->path, sizeof(part->path), "%s", name);
    g->parts = part;
    g->n_parts = 1;
    p.g->mem = mem;
    int rc = parse(&p);
    free(p.buf);
    if (rc) {
        nf_gguf_close(g);
        return rc;
    }
    *out = g;
    return 0;
}

static int open_owned_fd(struct nf_gguf **out, int fd, const char *name, char *err, size_t errlen)
{
    struct parser p = {.name = name, .err = err, .errlen = errlen};
    struct stat st;
    if (fstat(fd, &st) != 0) {
        int rc = -errno;
        close(fd);
        return nf_errf_at(p.err, p.errlen, rc, p.name, "cannot stat: %s", strerror(-rc));
    }
    if (!S_ISREG(st.st_mode)) {
        close(fd);
        return nf_errf_at(p.err, p.errlen, NF_EUSAGE, p.name, "not a regular file");
    }
    return open_common(out, fd, NULL, (uint64_t)st.st_size, name, err, errlen, false);
}

int nf__gguf_open_one(struct nf_gguf **out, const char *path, char *err, size_t errlen)
{
    if (!out || !path)
        return NF_EUSAGE;
    *out = NULL;
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        int rc = -errno;
        struct parser p = {.name = path, .err = err, .errlen = errlen};
        return nf_errf_at(p.err, p.errlen, rc, p.name, "cannot open: %s", strerror(-rc));
    }
    return open_owned_fd(out, fd, path, err, errlen);
}

int nf_gguf_open(struct nf_gguf **out, const char *path, char *err, size_t errlen)
{
    int rc = nf__gguf_open_one(out, path, err, errlen);
    if (rc == 0 && (rc = nf__gguf_split_join(*out, err, errlen))) {
        nf_gguf_close(*out);
        *out = NULL;
    }
    return rc;
}

int nf_gguf_open_fd(struct nf_gguf **out, int fd, const char *name, char *err, size_t errlen)
{
    if (!out)
        return NF_EUSAGE;
    *out = NULL;
    if (!name)
        name = "<fd>";
    int own = fcntl(fd, F_DUPFD_CLOEXEC, 0);
    if (own < 0) {
        int rc = -errno;
        struct parser p = {.name = name, .err = err, .errlen = errlen};
        return nf_errf_at(p.err, p.errlen, rc, p.name, "cannot dup file descriptor %d: %s", fd,
                          strerror(-rc));
    }
    return open_owned_fd(out, own, name, err, errlen);
}

int nf_gguf_open_mem(struct nf_gguf **out, const void *data, size_t size, char *err, size_t errlen)
{
    static const uint8_t empty[1];
    if (!out || (!data && size))
        return NF_EUSAGE;
    *out = NULL;
    return open_common(out, -1, data ? data : empty, size, "<memory>", err, errlen, false);
}

int nf_gguf_open_meta_mem(struct nf_gguf **out, const void *data, size_t size, char *err,
                          size_t errlen)
{
    static const uint8_t empty[1];
    if (!out || (!data && size))
        return NF_EUSAGE;
    *out = NULL;
    return open_common(out, -1, data ? data : empty, size, "<metadata>", err, errlen, true);
}
