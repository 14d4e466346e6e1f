/* test_gguf.c - GGUF reader: real models, a corpus of hand-built broken files, truncations. */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cmocka.h>

#include "gguf.h"
#include "gguf_write.h"
#include "nf_err.h"

static char tmpdir[256];

/* --- small helpers --- */

static uint8_t *slurp(const char *path, size_t *size)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        return NULL;
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    uint8_t *p = malloc(n > 0 ? (size_t)n : 1);
    assert_non_null(p);
    assert_int_equal(fread(p, 1, (size_t)n, f), (size_t)n);
    fclose(f);
    *size = (size_t)n;
    return p;
}

static void write_file(const char *path, const void *data, size_t len)
{
    FILE *f = fopen(path, "wb");
    assert_non_null(f);
    if (len)
        assert_int_equal(fwrite(data, 1, len, f), len);
    assert_int_equal(fclose(f), 0);
}

/* Asserts an error message is one line that starts with "name: " and mentions needle. */
static void check_msg(const char *err, const char *name, const char *needle)
{
    size_t n = strlen(name);
    if (strncmp(err, name, n) != 0 || strncmp(err + n, ": ", 2) != 0)
        fail_msg("message does not start with the file name '%s': %s", name, err);
    if (strchr(err, '\n'))
        fail_msg("message spans several lines: %s", err);
    if (needle && !strstr(err, needle))
        fail_msg("message lacks '%s': %s", needle, err);
}

static const char *model_path(char *buf, size_t len, const char *dir, const char *file)
{
    snprintf(buf, len, "%s/%s/%s", NF_SHARED_DIR, dir, file);
    return buf;
}

/* --- a GGUF byte builder --- */

struct gbuf {
    uint8_t *p;
    size_t len, cap;
};

static void put(struct gbuf *b, const void *d, size_t n)
{
    if (b->len + n > b->cap) {
        b->cap = (b->len + n) * 2 + 64;
        uint8_t *p = realloc(b->p, b->cap);
        assert_non_null(p);
        b->p = p;
    }
    memcpy(b->p + b->len, d, n);
    b->len += n;
}

static void put_u8(struct gbuf *b, uint8_t v)
{
    put(b, &v, 1);
}

static void put_u32(struct gbuf *b, uint32_t v)
{
    put(b, &v, 4);
}

static void put_u64(struct gbuf *b, uint64_t v)
{
    put(b, &v, 8);
}

static void put_str(struct gbuf *b, const char *s)
{
    put_u64(b, strlen(s));
    put(b, s, strlen(s));
}

static void patch_u32(struct gbuf *b, size_t off, uint32_t v)
{
    memcpy(b->p + off, &v, 4);
}

static void patch_u64(struct gbuf *b, size_t off, uint64_t v)
{
    memcpy(b->p + off, &v, 8);
}

struct tspec {
    const char *name;
    uint32_t n_dims;
    uint64_t ne[4];
    uint32_t type;
    uint64_t offset; /* relative to the data section */
};

/* What the builder writes; tiny_spec() gives a valid file using every value type. */
struct spec {
    char magic[4];
    uint32_t version;
    uint32_t align_type; /* NF_GGUF_UINT32 or NF_GGUF_UINT64 */
    uint64_t align;
    int nest_depth; /* array levels of test.nested */
    bool dup_key;
    uint8_t bool_val;
    int n_tensors;
    struct tspec t[4];
    size_t data_len;
};

/* Offsets of fields that the corruptions patch in place. */
struct layout {
    size_t n_tensors, n_kv, first_key_len, first_vtype, tokens_etype, tokens_count, arr_nested;
    size_t first_tensor;
    size_t data_offset;
};

#define TINY_DATA 304

static struct spec tiny_spec(void)
{
    struct spec s = {
        .magic = {'G', 'G', 'U', 'F'},
        .version = 3,
        .align_type = NF_GGUF_UINT32,
        .align = 32,
        .nest_depth = 3,
        .bool_val = 1,
        .n_tensors = 3,
        .t = {{"tok.a", 2, {8, 2}, NF_TYPE_F32, 0},
              {"tok.b", 1, {64}, NF_TYPE_Q8_0, 64},
              {"tok.c", 2, {256, 1}, NF_TYPE_Q4_K, 160}},
        .data_len = TINY_DATA,
    };
    return s;
}

static void put_nested(struct gbuf *b, int depth)
{
    if (depth == 1) {
        put_u32(b, NF_GGUF_INT32);
        put_u64(b, 2);
        put_u32(b, 7);
        put_u32(b, (uint32_t)-8);
        return;
    }
    put_u32(b, NF_GGUF_ARRAY);
    put_u64(b, 1);
    put_nested(b, depth - 1);
}

static void build(const struct spec *s, struct gbuf *b, struct layout *lo)
{
    memset(b, 0, sizeof(*b));
    memset(lo, 0, sizeof(*lo));
    int n_kv = 17 + (s->dup_key ? 1 : 0);
    put(b, s->magic, 4);
    put_u32(b, s->version);
    lo->n_tensors = b->len;
    put_u64(b, (uint64_t)s->n_tensors);
    lo->n_kv = b->len;
    put_u64(b, (uint64_t)n_kv);

    lo->first_key_len = b->len;
    put_str(b, "general.architecture");
    lo->first_vtype = b->len;
    put_u32(b, NF_GGUF_STRING);
    put_str(b, "llama");
    put_str(b, "general.alignment");
    put_u32(b, s->align_type);
    if (s->align_type == NF_GGUF_UINT64)
        put_u64(b, s->align);
    else
        put_u32(b, (uint32_t)s->align);
    put_str(b, "test.u8");
    put_u32(b, NF_GGUF_UINT8);
    put_u8(b, 200);
    put_str(b, "test.i8");
    put_u32(b, NF_GGUF_INT8);
    put_u8(b, (uint8_t)-5);
    put_str(b, "test.u16");
    put_u32(b, NF_GGUF_UINT16);
    uint16_t u16 = 60000;
    put(b, &u16, 2);
    put_str(b, "test.i16");
    put_u32(b, NF_GGUF_INT16);
    int16_t i16 = -300;
    put(b, &i16, 2);
    put_str(b, "test.u32");
    put_u32(b, NF_GGUF_UINT32);
    put_u32(b, 4000000000u);
    put_str(b, "test.i32");
    put_u32(b, NF_GGUF_INT32);
    put_u32(b, (uint32_t)-7);
    put_str(b, "test.f32");
    put_u32(b, NF_GGUF_FLOAT32);
    float f = 1.5f;
    put(b, &f, 4);
    put_str(b, "test.bool");
    put_u32(b, NF_GGUF_BOOL);
    put_u8(b, s->bool_val);
    put_str(b, "test.u64");
    put_u32(b, NF_GGUF_UINT64);
    put_u64(b, 1ull << 40);
    put_str(b, "test.i64");
    put_u32(b, NF_GGUF_INT64);
    put_u64(b, (uint64_t) - (1ll << 40));
    put_str(b, "test.f64");
    put_u32(b, NF_GGUF_FLOAT64);
    double d = 0.25;
    put(b, &d, 8);
    put_str(b, "test.tokens");
    put_u32(b, NF_GGUF_ARRAY);
    lo->tokens_etype = b->len;
    put_u32(b, NF_GGUF_STRING);
    lo->tokens_count = b->len;
    put_u64(b, 3);
    put_str(b, "a");
    put_str(b, "bc");
    put_str(b, "");
    put_str(b, "test.scores");
    put_u32(b, NF_GGUF_ARRAY);
    put_u32(b, NF_GGUF_FLOAT32);
    put_u64(b, 3);
    float sc[3] = {0.5f, -1.0f, 2.0f};
    put(b, sc, sizeof(sc));
    put_str(b, "test.nested");
    put_u32(b, NF_GGUF_ARRAY);
    lo->arr_nested = b->len;
    put_nested(b, s->nest_depth);
    put_str(b, "test.empty");
    put_u32(b, NF_GGUF_ARRAY);
    put_u32(b, NF_GGUF_UINT8);
    put_u64(b, 0);
    if (s->dup_key) {
        put_str(b, "test.u8");
        put_u32(b, NF_GGUF_UINT8);
        put_u8(b, 1);
    }

    lo->first_tensor = b->len;
    for (int i = 0; i < s->n_tensors; i++) {
        const struct tspec *t = &s->t[i];
        put_str(b, t->name);
        put_u32(b, t->n_dims);
        for (uint32_t k = 0; k < t->n_dims && k < 8; k++)
            put_u64(b, k < 4 ? t->ne[k] : 1);
        put_u32(b, t->type);
        put_u64(b, t->offset);
    }
    uint64_t al = s->align && !(s->align & (s->align - 1)) ? s->align : 32;
    while (b->len % al)
        put_u8(b, 0);
    lo->data_offset = b->len;
    for (size_t i = 0; i < s->data_len; i++)
        put_u8(b, (uint8_t)(i * 7 + 3));
}

/* --- the valid tiny file --- */

static void check_tiny(const struct nf_gguf *g)
{
    const char *s;
    uint32_t u32;
    uint64_t u64, n;
    int64_t i64;
    float f;
    bool bl;
    const void *data;

    assert_int_equal(g->version, 3);
    assert_int_equal(g->n_kv, 17);
    assert_int_equal(g->n_tensors, 3);
    assert_int_equal(g->alignment, 32);
    assert_int_equal(g->data_offset % 32, 0);
    assert_int_equal(g->file_size, g->data_offset + TINY_DATA);

    assert_int_equal(nf_gguf_get_str(g, "general.architecture", &s), 0);
    assert_string_equal(s, "llama");
    assert_int_equal(nf_gguf_get_u32(g, "test.u8", &u32), 0);
    assert_int_equal(u32, 200);
    assert_int_equal(nf_gguf_get_i64(g, "test.i8", &i64), 0);
    assert_int_equal(i64, -5);
    assert_int_equal(nf_gguf_get_u32(g, "test.i8", &u32), NF_EKEYTYPE);
    assert_int_equal(nf_gguf_get_u64(g, "test.u16", &u64), 0);
    assert_int_equal(u64, 60000);
    assert_int_equal(nf_gguf_get_i64(g, "test.i16", &i64), 0);
    assert_int_equal(i64, -300);
    assert_int_equal(nf_gguf_get_u32(g, "test.u32", &u32), 0);
    assert_int_equal(u32, 4000000000u);
    assert_int_equal(nf_gguf_get_i64(g, "test.i32", &i64), 0);
    assert_int_equal(i64, -7);
    assert_int_equal(nf_gguf_get_f32(g, "test.f32", &f), 0);
    assert_true(f == 1.5f);
    assert_int_equal(nf_gguf_get_f32(g, "test.f64", &f), 0);
    assert_true(f == 0.25f);
    assert_int_equal(nf_gguf_get_f32(g, "test.u32", &f), NF_EKEYTYPE);
    assert_int_equal(nf_gguf_get_bool(g, "test.bool", &bl), 0);
    assert_true(bl);
    assert_int_equal(nf_gguf_get_u32(g, "test.u64", &u32), NF_EKEYTYPE); /* 2^40 does not fit */
    assert_int_equal(nf_gguf_get_u64(g, "test.u64", &u64), 0);
    assert_int_equal(u64, 1ull << 40);
    assert_int_equal(nf_gguf_get_i64(g, "test.i64", &i64), 0);
    assert_int_equal(i64, -(1ll << 40));
    assert_int_equal(nf_gguf_get_u64(g, "test.i64", &u64), NF_EKEYTYPE);
    assert_int_equal(nf_gguf_get_str(g, "test.u8", &s), NF_EKEYTYPE);
    assert_int_equal(nf_gguf_get_u32(g, "no.such.key", &u32), NF_ENOKEY);
    assert_null(nf_gguf_get(g, "general.architectur"));

    assert_int_equal(nf_gguf_get_arr(g, "test.tokens", NF_GGUF_STRING, &n, &data), 0);
    assert_int_equal(n, 3);
    const struct nf_gguf_str *toks = data;
    assert_string_equal(toks[0].s, "a");
    assert_string_equal(toks[1].s, "bc");
    assert_int_equal(toks[2].len, 0);
    assert_string_equal(toks[2].s, "");
    assert_int_equal(nf_gguf_get_arr(g, "test.tokens", NF_GGUF_INT32, &n, &data), NF_EKEYTYPE);
    assert_int_equal(nf_gguf_get_arr(g, "test.scores", NF_GGUF_FLOAT32, &n, &data), 0);
    assert_int_equal(n, 3);
    assert_true(((const float *)data)[1] == -1.0f);
    assert_int_equal(nf_gguf_get_arr(g, "test.empty", NF_GGUF_UINT8, &n, &data), 0);
    assert_int_equal(n, 0);

    /* test.nested: [[[7, -8]]] */
    const struct nf_gguf_value *v = nf_gguf_get(g, "test.nested");
    assert_non_null(v);
    for (int level = 0; level < 2; level++) {
        assert_int_equal(v->type, NF_GGUF_ARRAY);
        assert_int_equal(v->v.arr.type, NF_GGUF_ARRAY);
        assert_int_equal(v->v.arr.n, 1);
        v = v->v.arr.data;
    }
    assert_int_equal(v->v.arr.type, NF_GGUF_INT32);
    assert_int_equal(v->v.arr.n, 2);
    assert_int_equal(((const int32_t *)v->v.arr.data)[1], -8);

    const struct nf_gguf_tensor *a = nf_gguf_find_tensor(g, "tok.a");
    const struct nf_gguf_tensor *b = nf_gguf_find_tensor(g, "tok.b");
    const struct nf_gguf_tensor *c = nf_gguf_find_tensor(g, "tok.c");
    assert_non_null(a);
    assert_non_null(b);
    assert_non_null(c);
    assert_null(nf_gguf_find_tensor(g, "tok."));
    assert_int_equal(a->ne[0], 8);
    assert_int_equal(a->ne[1], 2);
    assert_int_equal(a->ne[2], 1);
    assert_int_equal(a->n_elements, 16);
    assert_int_equal(a->size, 64);
    assert_int_equal(b->type, NF_TYPE_Q8_0);
    assert_int_equal(b->size, 68);
    assert_int_equal(c->size, 144);
    assert_int_equal(c->offset, g->data_offset + 160);

    uint8_t buf[144];
    assert_int_equal(nf_gguf_read_tensor(g, c, buf, sizeof(buf)), 0);
    for (size_t i = 0; i < sizeof(buf); i++)
        assert_int_equal(buf[i], (uint8_t)((160 + i) * 7 + 3));
    assert_int_equal(nf_gguf_read_tensor(g, c, buf, 143), NF_EUSAGE);
    assert_int_equal(nf_gguf_pread(g, buf, 2, g->file_size - 1), NF_ETRUNCATED);
    assert_int_equal(nf_gguf_pread(g, buf, 1, g->file_size - 1), 0);
    assert_int_equal(buf[0], (uint8_t)((TINY_DATA - 1) * 7 + 3));
}

static void test_tiny_valid(void **state)
{
    struct spec s = tiny_spec();
    struct gbuf b;
    struct layout lo;
    char path[512], err[512];
    struct nf_gguf *g = NULL;
    build(&s, &b, &lo);

    assert_int_equal(nf_gguf_open_mem(&g, b.p, b.len, err, sizeof(err)), 0);
    check_tiny(g);
    nf_gguf_close(g);

    snprintf(path, sizeof(path), "%s/tiny.gguf", tmpdir);
    write_file(path, b.p, b.len);
    assert_int_equal(nf_gguf_open(&g, path, err, sizeof(err)), 0);
    check_tiny(g);
    assert_string_equal(g->path, path);
    nf_gguf_close(g);

    /* open_fd: the reader dups, the caller's descriptor stays open. */
    int fd = open(path, O_RDONLY);
    assert_true(fd >= 0);
    assert_int_equal(nf_gguf_open_fd(&g, fd, "tiny", err, sizeof(err)), 0);
    check_tiny(g);
    nf_gguf_close(g);
    assert_int_not_equal(fcntl(fd, F_GETFD), -1);
    close(fd);

    /* The deepest nesting accepted is 8 levels. */
    s.nest_depth = 8;
    free(b.p);
    build(&s, &b, &lo);
    assert_int_equal(nf_gguf_open_mem(&g, b.p, b.len, err, sizeof(err)), 0);
    nf_gguf_close(g);

    /* Version 2 is read like version 3. */
    s.version = 2;
    free(b.p);
    build(&s, &b, &lo);
    assert_int_equal(nf_gguf_open_mem(&g, b.p, b.len, err, sizeof(err)), 0);
    assert_int_equal(g->version, 2);
    nf_gguf_close(g);

    /* A larger alignment moves the data section. */
    s.align = 256;
    s.t[1].offset = 256;
    s.t[2].offset = 512;
    s.data_len = 656;
    free(b.p);
    build(&s, &b, &lo);
    assert_int_equal(nf_gguf_open_mem(&g, b.p, b.len, err, sizeof(err)), 0);
    assert_int_equal(g->alignment, 256);
    assert_int_equal(g->data_offset % 256, 0);
    assert_int_equal(nf_gguf_find_tensor(g, "tok.c")->offset, g->data_offset + 512);
    nf_gguf_close(g);
    free(b.p);

    assert_int_equal(nf_gguf_open(&g, "/nonexistent/x.gguf", err, sizeof(err)), -ENOENT);
    assert_null(g);
    check_msg(err, "/nonexistent/x.gguf", "cannot open");
}

/* --- the broken-file corpus --- */

struct bad_case {
    const char *what;
    int code;
    const char *needle;
};

static const struct bad_case bad_cases[] = {
    {"bad magic", NF_EBADMAGIC, "magic"},
    {"version 1", NF_EBADVERSION, "version 1"},
    {"version 4", NF_EBADVERSION, "version 4"},
    {"big-endian", NF_EBADVERSION, "big-endian"},
    {"kv count", NF_ETRUNCATED, "cannot fit"},
    {"tensor count", NF_ETRUNCATED, "cannot fit"},
    {"key length", NF_ETRUNCATED, "length"},
    {"string array count", NF_ETRUNCATED, "array of"},
    {"value type", NF_ECORRUPT, "invalid value type 13"},
    {"array element type", NF_ECORRUPT, "invalid array element type"},
    {"nesting", NF_ECORRUPT, "nested deeper"},
    {"duplicate key", NF_ECORRUPT, "duplicate metadata key 'test.u8'"},
    {"bool value", NF_ECORRUPT, "bool"},
    {"alignment not a power of two", NF_ECORRUPT, "power of two"},
    {"alignment zero", NF_ECORRUPT, "power of two"},
    {"alignment type", NF_ECORRUPT, "general.alignment has type uint64"},
    {"n_dims 0", NF_ESHAPE, "n_dims is 0"},
    {"n_dims 5", NF_ESHAPE, "n_dims is 5"},
    {"dimension 0", NF_ESHAPE, "dimension 1 is 0"},
    {"dimension negative", NF_ESHAPE, "dimension 0 is -64"},
    {"element count overflow", NF_EOVERFLOW, "overflow"},
    {"byte size overflow", NF_EOVERFLOW, "overflow"},
    {"ne[0] not a block multiple", NF_ESHAPE, "multiple of the block size 32"},
    {"unknown type 31", NF_EBADTYPE, "unknown tensor type 31"},
    {"unknown type 36", NF_EBADTYPE, "unknown tensor type 36"},
    {"unknown type 40", NF_EBADTYPE, "unknown tensor type 40"},
    {"unknown type huge", NF_EBADTYPE, "unknown tensor type 4294967295"},
    {"offset not aligned", NF_ECORRUPT, "not a multiple of the alignment"},
    {"data outside the file", NF_ETRUNCATED, "outside the file"},
    {"offset overflow", NF_EOVERFLOW, "overflow"},
    {"overlap", NF_ECORRUPT, "overlap"},
    {"duplicate tensor", NF_ECORRUPT, "duplicate tensor name 'tok.a'"},
    {"tensor name length", NF_ETRUNCATED, "length"},
};

/* Builds bad case i into b (a valid tiny file with one field broken). */
static void build_bad(size_t i, struct gbuf *b)
{
    struct spec s = tiny_spec();
    struct layout lo;
    const char *w = bad_cases[i].what;
#define IS(x) (strcmp(w, (x)) == 0)
    if (IS("bad magic"))
        memcpy(s.magic, "GGML", 4);
    else if (IS("version 1"))
        s.version = 1;
    else if (IS("version 4"))
        s.version = 4;
    else if (IS("big-endian"))
        s.version = 0x03000000;
    else if (IS("nesting"))
        s.nest_depth = 9;
    else if (IS("duplicate key"))
        s.dup_key = true;
    else if (IS("bool value"))
        s.bool_val = 2;
    else if (IS("alignment not a power of two"))
        s.align = 24;
    else if (IS("alignment zero"))
        s.align = 0;
    else if (IS("alignment type"))
        s.align_type = NF_GGUF_UINT64;
    else if (IS("n_dims 0"))
        s.t[1].n_dims = 0;
    else if (IS("n_dims 5"))
        s.t[1].n_dims = 5;
    else if (IS("dimension 0"))
        s.t[0].ne[1] = 0;
    else if (IS("dimension negative"))
        s.t[1].ne[0] = (uint64_t)-64;
    else if (IS("element count overflow")) {
        s.t[2].n_dims = 3;
        s.t[2].ne[1] = 1ull << 30;
        s.t[2].ne[2] = 1ull << 30;
    } else if (IS("byte size overflow")) {
        /* 2^62 F32 elements fit in int64 but 2^64 bytes do not. */
        s.t[0].ne[0] = 1ull << 31;
        s.t[0].ne[1] = 1ull << 31;
    } else if (IS("ne[0] not a block multiple"))
        s.t[1].ne[0] = 48;
    else if (IS("unknown type 31"))
        s.t[1].type = 31;
    else if (IS("unknown type 36"))
        s.t[1].type = 36;
    else if (IS("unknown type 40"))
        s.t[1].type = 40;
    else if (IS("unknown type huge"))
        s.t[1].type = UINT32_MAX;
    else if (IS("offset not aligned"))
        s.t[1].offset = 68;
    else if (IS("data outside the file"))
        s.t[2].offset = 192;
    else if (IS("offset overflow"))
        s.t[2].offset = UINT64_MAX - 31;
    else if (IS("overlap"))
        s.t[2].offset = 96;
    else if (IS("duplicate tensor"))
        s.t[2].name = "tok.a";
    build(&s, b, &lo);
    /* In-place patches of fields the spec cannot express. */
    if (IS("kv count"))
        patch_u64(b, lo.n_kv, 1ull << 60);
    else if (IS("tensor count"))
        patch_u64(b, lo.n_tensors, UINT64_MAX);
    else if (IS("key length"))
        patch_u64(b, lo.first_key_len, UINT64_MAX - 3);
    else if (IS("string array count"))
        patch_u64(b, lo.tokens_count, 1ull << 61);
    else if (IS("value type"))
        patch_u32(b, lo.first_vtype, 13);
    else if (IS("array element type"))
        patch_u32(b, lo.tokens_etype, 0xdeadbeef);
    else if (IS("tensor name length"))
        patch_u64(b, lo.first_tensor, 1ull << 40);
#undef IS
}

static void test_bad_files(void **state)
{
    char path[512], err[512];
    for (size_t i = 0; i < sizeof(bad_cases) / sizeof(bad_cases[0]); i++) {
        const struct bad_case *c = &bad_cases[i];
        struct gbuf b;
        struct nf_gguf *g = (struct nf_gguf *)1;
        build_bad(i, &b);
        snprintf(path, sizeof(path), "%s/bad-%02zu.gguf", tmpdir, i);
        write_file(path, b.p, b.len);
        err[0] = '\0';
        int rc = nf_gguf_open(&g, path, err, sizeof(err));
        if (rc != c->code)
            fail_msg("case '%s': expected %s, got %d (%s): %s", c->what, nf_strerror(c->code), rc,
                     nf_strerror(rc), err);
        assert_null(g);
        check_msg(err, path, c->needle);
        if (getenv("NF_TEST_VERBOSE"))
            printf("%-30s %s\n", c->what, err);
        unlink(path);

        /* The in-memory parser reports the same thing. */
        uint8_t *copy = malloc(b.len);
        assert_non_null(copy);
        memcpy(copy, b.p, b.len);
        assert_int_equal(nf_gguf_open_mem(&g, copy, b.len, err, sizeof(err)), c->code);
        check_msg(err, "<memory>", c->needle);
        free(copy);
        free(b.p);
    }
}

/* Opens every prefix of image shorter than limit (stepping by step) from memory and expects
 * NF_ETRUNCATED with a message that says so. Each prefix gets its own exact-size allocation so
 * that an over-read is caught by the sanitizers. */
static void check_prefixes(const uint8_t *image, size_t from, size_t limit, size_t step)
{
    char err[512];
    for (size_t len = from; len < limit; len += step) {
        uint8_t *copy = malloc(len ? len : 1);
        assert_non_null(copy);
        memcpy(copy, image, len);
        struct nf_gguf *g = NULL;
        int rc = nf_gguf_open_mem(&g, copy, len, err, sizeof(err));
        if (rc != NF_ETRUNCATED)
            fail_msg("prefix of %zu bytes: expected truncation, got %d: %s", len, rc, err);
        check_msg(err, "<memory>", NULL);
        if (!strstr(err, "truncated") && !strstr(err, "outside the file") &&
            !strstr(err, "cannot fit"))
            fail_msg("prefix of %zu bytes: message does not say truncated: %s", len, err);
        free(copy);
    }
}

static void test_truncated_tiny(void **state)
{
    struct spec s = tiny_spec();
    struct gbuf b;
    struct layout lo;
    char path[512], err[512];
    build(&s, &b, &lo);
    check_prefixes(b.p, 0, b.len, 1);
    /* Through the file path as well, at a few places. */
    snprintf(path, sizeof(path), "%s/trunc.gguf", tmpdir);
    for (size_t len = 3; len < b.len; len += b.len / 9) {
        struct nf_gguf *g = NULL;
        write_file(path, b.p, len);
        assert_int_equal(nf_gguf_open(&g, path, err, sizeof(err)), NF_ETRUNCATED);
        check_msg(err, path, NULL);
    }
    unlink(path);
    /* A message names the section and field where the file ended. */
    struct nf_gguf *g = NULL;
    assert_int_equal(nf_gguf_open_mem(&g, b.p, 20, err, sizeof(err)), NF_ETRUNCATED);
    check_msg(err, "<memory>", "metadata kv count");
    assert_int_equal(nf_gguf_open_mem(&g, b.p, lo.tokens_count + 4, err, sizeof(err)),
                     NF_ETRUNCATED);
    check_msg(err, "<memory>", "'test.tokens'");
    free(b.p);
}

static void test_truncated_models(void **state)
{
    char path[512], out[512], err[512];
    size_t size;
    uint8_t *img = slurp(model_path(path, sizeof(path), "models", "stories260K.gguf"), &size);
    if (!img)
        skip();
    struct nf_gguf *g = NULL;
    assert_int_equal(nf_gguf_open_mem(&g, img, size, err, sizeof(err)), 0);
    size_t data_offset = (size_t)g->data_offset;
    nf_gguf_close(g);
    /* Every cut inside the header, and a spread of cuts inside the data. */
    check_prefixes(img, 0, data_offset + 64, 1);
    check_prefixes(img, data_offset + 64, size, 4099);
    free(img);

    /* A 32000-token vocabulary cut at places that straddle the reader's buffer refills. */
    img = slurp(model_path(path, sizeof(path), "models", "llama-2-tiny-random.gguf"), &size);
    if (!img)
        skip();
    snprintf(out, sizeof(out), "%s/trunc-llama2.gguf", tmpdir);
    const size_t cuts[] = {24, 1000, 262143, 262144, 262145, 524300, 700001, 724416, 1750559};
    for (size_t i = 0; i < sizeof(cuts) / sizeof(cuts[0]); i++) {
        assert_true(cuts[i] < size);
        write_file(out, img, cuts[i]);
        g = NULL;
        int rc = nf_gguf_open(&g, out, err, sizeof(err));
        if (rc != NF_ETRUNCATED)
            fail_msg("cut at %zu: expected truncation, got %d: %s", cuts[i], rc, err);
        check_msg(err, out, NULL);
    }
    unlink(out);
    free(img);
}

/* Random mutations of the tiny file: each is refused with a one-line message or, if it happens
 * to stay valid, is fully usable. */
static void test_mutations(void **state)
{
    struct spec s = tiny_spec();
    struct gbuf b;
    struct layout lo;
    char err[512];
    uint64_t x = 0x9e3779b97f4a7c15ull;
    build(&s, &b, &lo);
    uint8_t *copy = malloc(b.len);
    assert_non_null(copy);
    int refused = 0;
    for (int iter = 0; iter < 3000; iter++) {
        memcpy(copy, b.p, b.len);
        int flips = 1 + iter % 4;
        for (int k = 0; k < flips; k++) {
            x ^= x << 13, x ^= x >> 7, x ^= x << 17;
            size_t at = (size_t)(x % lo.data_offset);
            copy[at] = (uint8_t)(x >> 32);
        }
        struct nf_gguf *g = NULL;
        err[0] = '\0';
        int rc = nf_gguf_open_mem(&g, copy, b.len, err, sizeof(err));
        if (rc) {
            refused++;
            assert_true(rc < 0);
            check_msg(err, "<memory>", NULL);
            assert_null(g);
            continue;
        }
        uint8_t buf[TINY_DATA];
        for (uint64_t t = 0; t < g->n_tensors; t++) {
            const struct nf_gguf_tensor *ti = &g->tensors[t];
            /* Names with an embedded NUL cannot be looked up by C string. */
            if (ti->name.len == strlen(ti->name.s))
                assert_ptr_equal(nf_gguf_find_tensor(g, ti->name.s), ti);
            assert_true(ti->size <= sizeof(buf));
            assert_int_equal(nf_gguf_read_tensor(g, ti, buf, sizeof(buf)), 0);
        }
        nf_gguf_close(g);
    }
    assert_true(refused > 0);
    free(copy);
    free(b.p);
}

/* Every ggml type number: known ones give the size ggml gives (ggml-common.h block layouts,
 * transcribed here independently of the reader's table) and agree with nf_type_traits() where
 * NanoFlow computes the type; retired and future numbers are refused. */
static void test_type_sizes(void **state)
{
    static const struct {
        int64_t blck;
        uint64_t size;
    } want[NF_TYPE_COUNT] = {
        [0] = {1, 4},      [1] = {1, 2},      [2] = {32, 18},    [3] = {32, 20},
        [6] = {32, 22},    [7] = {32, 24},    [8] = {32, 34},    [9] = {32, 36},
        [10] = {256, 84},  [11] = {256, 110}, [12] = {256, 144}, [13] = {256, 176},
        [14] = {256, 210}, [15] = {256, 292}, [16] = {256, 66},  [17] = {256, 74},
        [18] = {256, 98},  [19] = {256, 50},  [20] = {32, 18},   [21] = {256, 110},
        [22] = {256, 82},  [23] = {256, 136}, [24] = {1, 1},     [25] = {1, 2},
        [26] = {1, 4},     [27] = {1, 8},     [28] = {1, 8},     [29] = {256, 56},
        [30] = {1, 2},     [34] = {256, 54},  [35] = {256, 66},  [39] = {32, 17},
    };
    char err[512];
    for (uint32_t t = 0; t <= NF_TYPE_COUNT + 1; t++) {
        struct spec s = tiny_spec();
        struct gbuf b;
        struct layout lo;
        bool known = t < NF_TYPE_COUNT && want[t].blck != 0;
        uint64_t size = known ? (uint64_t)(512 / want[t].blck) * want[t].size * 3 : 64;
        s.n_tensors = 1;
        s.t[0] = (struct tspec){"w", 2, {512, 3}, t, 0};
        s.data_len = size;
        build(&s, &b, &lo);
        struct nf_gguf *g = NULL;
        int rc = nf_gguf_open_mem(&g, b.p, b.len, err, sizeof(err));
        if (!known) {
            if (rc != NF_EBADTYPE)
                fail_msg("type %u: expected refusal, got %d: %s", t, rc, err);
            char needle[64];
            snprintf(needle, sizeof(needle), "unknown tensor type %u", t);
            check_msg(err, "<memory>", needle);
            if (t < NF_TYPE_COUNT)
                assert_null(nf_type_traits((enum nf_type)t));
        } else {
            if (rc != 0)
                fail_msg("type %u: %s", t, err);
            const struct nf_gguf_tensor *w = nf_gguf_find_tensor(g, "w");
            assert_non_null(w);
            assert_int_equal(w->type, t);
            assert_int_equal(w->size, size);
            const struct nf_type_traits *tr = nf_type_traits((enum nf_type)t);
            if (tr) {
                assert_int_equal(tr->blck_size, want[t].blck);
                assert_int_equal(tr->type_size, want[t].size);
            }
            nf_gguf_close(g);
            /* A row length that is not a whole number of blocks is refused. */
            if (want[t].blck > 1) {
                free(b.p);
                s.t[0].ne[0] = 512 + (uint64_t)want[t].blck / 2;
                build(&s, &b, &lo);
                assert_int_equal(nf_gguf_open_mem(&g, b.p, b.len, err, sizeof(err)), NF_ESHAPE);
                check_msg(err, "<memory>", "multiple of the block size");
            }
        }
        free(b.p);
    }
}

/* Not a regular file: refused with a message, nothing leaked. */
static void test_not_a_file(void **state)
{
    char err[512];
    struct nf_gguf *g = NULL;
    assert_int_equal(nf_gguf_open(&g, tmpdir, err, sizeof(err)), NF_EUSAGE);
    assert_null(g);
    check_msg(err, tmpdir, "not a regular file");
    assert_int_equal(nf_gguf_open_fd(&g, -1, "bad-fd", err, sizeof(err)), -EBADF);
    check_msg(err, "bad-fd", "descriptor");
    assert_int_equal(nf_gguf_open_mem(&g, NULL, 0, err, sizeof(err)), NF_ETRUNCATED);
    check_msg(err, "<memory>", "magic");
}

/* --- the shared models --- */

static void check_model_common(const char *path, struct nf_gguf *g)
{
    int fd = open(path, O_RDONLY);
    assert_true(fd >= 0);
    uint8_t *a = NULL, *b = NULL;
    for (uint64_t i = 0; i < g->n_tensors; i++) {
        const struct nf_gguf_tensor *t = &g->tensors[i];
        assert_ptr_equal(nf_gguf_find_tensor(g, t->name.s), t);
        assert_true(t->offset >= g->data_offset);
        assert_int_equal((t->offset - g->data_offset) % g->alignment, 0);
        assert_true(t->offset + t->size <= g->file_size);
        int64_t n = 1;
        for (uint32_t d = 0; d < NF_GGUF_MAX_DIMS; d++)
            n *= t->ne[d];
        assert_int_equal(n, t->n_elements);
        /* The first, the last and a few in between: bytes equal a direct pread. */
        if (i == 0 || i + 1 == g->n_tensors || i % 7 == 3) {
            free(a);
            free(b);
            a = malloc(t->size);
            b = malloc(t->size);
            assert_non_null(a);
            assert_non_null(b);
            assert_int_equal(nf_gguf_read_tensor(g, t, a, t->size), 0);
            assert_int_equal(pread(fd, b, t->size, (off_t)t->offset), (ssize_t)t->size);
            assert_memory_equal(a, b, t->size);
        }
    }
    free(a);
    free(b);
    close(fd);
}

static void test_all_shared_files(void **state)
{
    const char *dirs[] = {"models", "golden/vocab"};
    int opened = 0;
    for (int d = 0; d < 2; d++) {
        char dir[512];
        snprintf(dir, sizeof(dir), "%s/%s", NF_SHARED_DIR, dirs[d]);
        DIR *dp = opendir(dir);
        if (!dp)
            continue;
        struct dirent *de;
        while ((de = readdir(dp))) {
            size_t n = strlen(de->d_name);
            if (n < 5 || strcmp(de->d_name + n - 5, ".gguf") != 0)
                continue;
            char path[1024], err[512];
            snprintf(path, sizeof(path), "%s/%s", dir, de->d_name);
            struct nf_gguf *g = NULL;
            int rc = nf_gguf_open(&g, path, err, sizeof(err));
            if (rc)
                fail_msg("%s: %s", path, err);
            const char *arch;
            uint64_t ntok;
            const void *toks;
            assert_int_equal(nf_gguf_get_str(g, "general.architecture", &arch), 0);
            assert_int_equal(
                nf_gguf_get_arr(g, "tokenizer.ggml.tokens", NF_GGUF_STRING, &ntok, &toks), 0);
            assert_true(ntok >= 256);
            if (d == 0) {
                assert_string_equal(arch, "llama");
                assert_true(g->n_tensors > 0);
            } else {
                assert_int_equal(g->n_tensors, 0);
            }
            check_model_common(path, g);
            nf_gguf_close(g);
            opened++;
        }
        closedir(dp);
    }
    if (opened == 0)
        skip();
    assert_true(opened >= 18);
}

static void test_stories260k(void **state)
{
    char path[512], err[512];
    model_path(path, sizeof(path), "models", "stories260K.gguf");
    if (access(path, R_OK) != 0)
        skip();
    struct nf_gguf *g = NULL;
    assert_int_equal(nf_gguf_open(&g, path, err, sizeof(err)), 0);
    const char *s;
    uint32_t u;
    float eps;
    uint64_t n;
    const void *data;
    assert_int_equal(nf_gguf_get_str(g, "general.architecture", &s), 0);
    assert_string_equal(s, "llama");
    assert_int_equal(nf_gguf_get_u32(g, "llama.embedding_length", &u), 0);
    assert_int_equal(u, 64);
    assert_int_equal(nf_gguf_get_u32(g, "llama.block_count", &u), 0);
    assert_int_equal(u, 5);
    assert_int_equal(nf_gguf_get_u32(g, "llama.feed_forward_length", &u), 0);
    assert_int_equal(u, 172);
    assert_int_equal(nf_gguf_get_u32(g, "llama.attention.head_count", &u), 0);
    assert_int_equal(u, 8);
    assert_int_equal(nf_gguf_get_u32(g, "llama.attention.head_count_kv", &u), 0);
    assert_int_equal(u, 4);
    assert_int_equal(nf_gguf_get_f32(g, "llama.attention.layer_norm_rms_epsilon", &eps), 0);
    assert_true(eps > 0 && eps < 1e-3f);
    assert_int_equal(nf_gguf_get_arr(g, "tokenizer.ggml.tokens", NF_GGUF_STRING, &n, &data), 0);
    assert_int_equal(n, 512);
    assert_int_equal(nf_gguf_get_arr(g, "tokenizer.ggml.scores", NF_GGUF_FLOAT32, &n, &data), 0);
    assert_int_equal(n, 512);
    assert_int_equal(g->n_tensors, 48);

    const struct nf_gguf_tensor *t = nf_gguf_find_tensor(g, "token_embd.weight");
    assert_non_null(t);
    assert_int_equal(t->n_dims, 2);
    assert_int_equal(t->ne[0], 64);
    assert_int_equal(t->ne[1], 512);
    assert_int_equal(t->type, NF_TYPE_F32);
    assert_int_equal(t->size, 64 * 512 * 4);
    t = nf_gguf_find_tensor(g, "blk.4.ffn_down.weight");
    assert_non_null(t);
    assert_int_equal(t->ne[0], 172);
    assert_int_equal(t->ne[1], 64);
    assert_null(nf_gguf_find_tensor(g, "blk.5.ffn_down.weight"));
    check_model_common(path, g);
    nf_gguf_close(g);
}

static void test_quantized_models(void **state)
{
    char path[512], err[512];
    struct {
        const char *file;
        const char *tensor;
        enum nf_type type;
    } cases[] = {
        {"llama-2-tiny-random.gguf", "token_embd.weight", NF_TYPE_F16},
        {"zoo-BF16.gguf", "blk.0.attn_q.weight", NF_TYPE_BF16},
        {"zoo-Q4_0.gguf", "blk.0.attn_q.weight", NF_TYPE_Q4_0},
        {"zoo-Q8_0.gguf", "blk.0.attn_q.weight", NF_TYPE_Q8_0},
        {"zoo-Q6_K.gguf", "blk.0.attn_q.weight", NF_TYPE_Q6_K},
        {"zoo-Q4_K_M.gguf", "token_embd.weight", NF_TYPE_Q4_K},
        {"zoo-Q4_K_M.gguf", "output.weight", NF_TYPE_Q6_K},
    };
    int seen = 0;
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        model_path(path, sizeof(path), "models", cases[i].file);
        if (access(path, R_OK) != 0)
            continue;
        struct nf_gguf *g = NULL;
        assert_int_equal(nf_gguf_open(&g, path, err, sizeof(err)), 0);
        const struct nf_gguf_tensor *t = nf_gguf_find_tensor(g, cases[i].tensor);
        assert_non_null(t);
        if (t->type != cases[i].type)
            fail_msg("%s %s: type %d, expected %d", cases[i].file, cases[i].tensor, t->type,
                     cases[i].type);
        nf_gguf_close(g);
        seen++;
    }
    if (!seen)
        skip();
}

/* --- split models (llama.cpp gguf-split layout) --- */

/* How write_split departs from what llama-gguf-split writes, to make broken sets. */
struct split_fault {
    uint32_t bad_no_part; /* this part (>0) says split.no one too high; 0 = none */
    uint32_t arch_part;   /* this part (>0) names general.architecture "qwen2"; 0 = none */
    bool dup_name;        /* part 2's first tensor takes part 1's first tensor's name */
    int64_t total_delta;  /* added to every part's split.tensors.count */
};

/* Writes src as PREFIX-0000i-of-0000N.gguf, per tensors a part in order, all metadata in part 1
 * and split.no (u16), split.count (u16), split.tensors.count (i32) in each; returns N. */
static uint32_t write_split(const struct nf_gguf *src, const char *prefix, uint64_t per,
                            const struct split_fault *f)
{
    uint32_t n = (uint32_t)((src->n_tensors + per - 1) / per);
    for (uint32_t i = 0; i < n; i++) {
        struct nf_gguf_writer *w;
        assert_int_equal(nf_gguf_writer_init(&w), 0);
        if (i == 0)
            for (uint64_t k = 0; k < src->n_kv; k++)
                assert_int_equal(nf_gguf_writer_add_value(w, src->kv[k].key.s, &src->kv[k].value),
                                 0);
        if (i > 0 && i == f->arch_part)
            assert_int_equal(nf_gguf_writer_add_str(w, "general.architecture", "qwen2"), 0);
        uint16_t no = (uint16_t)(i + (i > 0 && i == f->bad_no_part));
        assert_int_equal(nf_gguf_writer_add_u16(w, "split.no", no), 0);
        assert_int_equal(nf_gguf_writer_add_u16(w, "split.count", (uint16_t)n), 0);
        assert_int_equal(
            nf_gguf_writer_add_i32(w, "split.tensors.count",
                                   (int32_t)((int64_t)src->n_tensors + f->total_delta)),
            0);
        uint64_t lo = i * per, hi = lo + per < src->n_tensors ? lo + per : src->n_tensors;
        for (uint64_t j = lo; j < hi; j++) {
            const struct nf_gguf_tensor *t = &src->tensors[j];
            const char *name =
                (f->dup_name && i == 1 && j == lo) ? src->tensors[0].name.s : t->name.s;
            assert_int_equal(nf_gguf_writer_add_tensor(w, name, t->n_dims, t->ne, t->type, NULL),
                             0);
        }
        char path[512];
        snprintf(path, sizeof(path), "%s-%05u-of-%05u.gguf", prefix, i + 1, n);
        int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0644);
        assert_true(fd >= 0);
        assert_int_equal(nf_gguf_writer_write_header(w, fd), 0);
        for (uint64_t j = lo; j < hi; j++) {
            const struct nf_gguf_tensor *t = &src->tensors[j];
            void *buf = malloc(t->size);
            assert_non_null(buf);
            assert_int_equal(nf_gguf_read_tensor(src, t, buf, t->size), 0);
            assert_int_equal(
                pwrite(fd, buf, t->size, (off_t)nf_gguf_writer_tensor_offset(w, j - lo)),
                (ssize_t)t->size);
            free(buf);
        }
        close(fd);
        nf_gguf_writer_free(w);
    }
    return n;
}

/* A split stories260K opens as one table: every tensor's part, shape and bytes as in the whole
 * file; reads are confined to one part. */
static void test_split(void **state)
{
    (void)state;
    char path[512], prefix[300], first[512], err[512];
    struct nf_gguf *w = NULL, *g = NULL;
    model_path(path, sizeof(path), "models", "stories260K.gguf");
    if (nf_gguf_open(&w, path, err, sizeof(err)))
        skip();
    snprintf(prefix, sizeof(prefix), "%s/split", tmpdir);
    const struct split_fault none = {0};
    assert_int_equal(write_split(w, prefix, 20, &none), 3);
    snprintf(first, sizeof(first), "%s-00001-of-00003.gguf", prefix);
    assert_int_equal(nf_gguf_open(&g, first, err, sizeof(err)), 0);
    assert_int_equal(g->n_parts, 3);
    assert_int_equal(g->n_tensors, w->n_tensors);
    uint8_t *a = malloc(1 << 20), *b = malloc(1 << 20);
    assert_non_null(a);
    assert_non_null(b);
    for (uint64_t i = 0; i < w->n_tensors; i++) {
        const struct nf_gguf_tensor *tw = &w->tensors[i];
        const struct nf_gguf_tensor *t = nf_gguf_find_tensor(g, tw->name.s);
        assert_non_null(t);
        assert_int_equal(t->part, i / 20);
        assert_int_equal(t->type, tw->type);
        assert_memory_equal(t->ne, tw->ne, sizeof(t->ne));
        const struct nf_gguf_part *p = &g->parts[t->part];
        assert_true(t->offset >= p->base && t->offset + t->size <= p->base + p->size);
        assert_true(tw->size <= (1 << 20));
        assert_int_equal(nf_gguf_read_tensor(g, t, a, 1 << 20), 0);
        assert_int_equal(nf_gguf_read_tensor(w, tw, b, 1 << 20), 0);
        assert_memory_equal(a, b, t->size);
    }
    for (uint32_t i = 1; i < 3; i++) {
        const struct nf_gguf_part *p = &g->parts[i], *q = &g->parts[i - 1];
        assert_int_equal(p->base % NF_GGUF_PART_GAP, 0);
        assert_true(p->base >= q->base + q->size + NF_GGUF_PART_GAP);
        /* Across the end of a part, and inside the gap: refused. */
        assert_int_equal(nf_gguf_pread(g, a, 2, q->base + q->size - 1), NF_ETRUNCATED);
        assert_int_equal(nf_gguf_pread(g, a, 1, q->base + q->size), NF_ETRUNCATED);
    }
    assert_int_equal(g->file_size, g->parts[2].base + g->parts[2].size);
    free(a);
    free(b);
    nf_gguf_close(g);
    nf_gguf_close(w);
}

/* Broken sets are refused with one line naming the part at fault and what is wrong. */
static void test_split_refused(void **state)
{
    (void)state;
    static const struct {
        struct split_fault f;
        const char *bad, *needle;
    } cases[] = {
        {{.bad_no_part = 1}, "00002-of-00003", "split.no is 2, expected 1"},
        {{.arch_part = 1}, "00002-of-00003", "general.architecture is 'qwen2'"},
        {{.dup_name = true}, "00002-of-00003", "is also in"},
        {{.total_delta = 1},
         "00001-of-00003",
         "split.tensors.count is 49, but the 3 parts hold 48"},
    };
    char path[512], prefix[300], first[512], err[512], name[600];
    struct nf_gguf *w = NULL, *g = NULL;
    model_path(path, sizeof(path), "models", "stories260K.gguf");
    if (nf_gguf_open(&w, path, err, sizeof(err)))
        skip();
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        snprintf(prefix, sizeof(prefix), "%s/bad%zu", tmpdir, i);
        assert_int_equal(write_split(w, prefix, 20, &cases[i].f), 3);
        snprintf(first, sizeof(first), "%s-00001-of-00003.gguf", prefix);
        assert_true(nf_gguf_open(&g, first, err, sizeof(err)) < 0);
        assert_null(g);
        snprintf(name, sizeof(name), "%s-%s.gguf", prefix, cases[i].bad);
        check_msg(err, name, cases[i].needle);
    }
    /* A missing part: named by number and path. */
    snprintf(name, sizeof(name), "%s/bad0-00002-of-00003.gguf", tmpdir);
    assert_int_equal(unlink(name), 0);
    snprintf(first, sizeof(first), "%s/bad0-00001-of-00003.gguf", tmpdir);
    assert_int_equal(nf_gguf_open(&g, first, err, sizeof(err)), -ENOENT);
    assert_non_null(strstr(err, "part 2 of 3 of "));
    assert_non_null(strstr(err, name));
    /* A later part given as the model. */
    snprintf(name, sizeof(name), "%s/bad0-00003-of-00003.gguf", tmpdir);
    assert_int_equal(nf_gguf_open(&g, name, err, sizeof(err)), NF_EUSAGE);
    check_msg(err, name, "this is part 3 of 3 of a split model; give the first part");
    nf_gguf_close(w);
}

static int setup(void **state)
{
    const char *base = getenv("TMPDIR");
    snprintf(tmpdir, sizeof(tmpdir), "%s/nf-test-gguf-XXXXXX", base ? base : "/tmp");
    return mkdtemp(tmpdir) ? 0 : -1;
}

static int teardown(void **state)
{
    DIR *dp = opendir(tmpdir);
    if (dp) {
        struct dirent *de;
        char path[512];
        while ((de = readdir(dp))) {
            if (de->d_name[0] == '.')
                continue;
            snprintf(path, sizeof(path), "%s/%s", tmpdir, de->d_name);
            unlink(path);
        }
        closedir(dp);
    }
    return rmdir(tmpdir);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_tiny_valid),     cmocka_unit_test(test_bad_files),
        cmocka_unit_test(test_truncated_tiny), cmocka_unit_test(test_truncated_models),
        cmocka_unit_test(test_mutations),      cmocka_unit_test(test_type_sizes),
        cmocka_unit_test(test_not_a_file),     cmocka_unit_test(test_all_shared_files),
        cmocka_unit_test(test_stories260k),    cmocka_unit_test(test_quantized_models),
        cmocka_unit_test(test_split),          cmocka_unit_test(test_split_refused),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
