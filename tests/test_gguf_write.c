/* test_gguf_write.c - GGUF writer round trips through the reader, and mkmodel's output checked. */
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <setjmp.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cmocka.h>

#include "gguf.h"
#include "gguf_write.h"
#include "model.h"
#include "nf_err.h"
#include "quants.h"
#include "tokenizer.h"

#define run_mkmodel(...) run_mkmodel_argv((const char *const[]){__VA_ARGS__})

static char tmpdir[256];

static int setup_dir(void **state)
{
    snprintf(tmpdir, sizeof(tmpdir), "/tmp/nf_test_gguf_write.XXXXXX");
    return mkdtemp(tmpdir) ? 0 : -1;
}

static int teardown_dir(void **state)
{
    char cmd[512];
    snprintf(cmd, sizeof(cmd), "rm -rf '%s'", tmpdir);
    return system(cmd) == 0 ? 0 : -1;
}

static void path_in_tmp(char *buf, size_t len, const char *name)
{
    snprintf(buf, len, "%s/%s", tmpdir, name);
}

/* Writes w's header and the given tensor bytes into path. */
static void write_file(const struct nf_gguf_writer *w, const char *path, const void *const *data)
{
    int fd = open(path, O_RDWR | O_CREAT | O_TRUNC, 0644);
    assert_true(fd >= 0);
    assert_int_equal(nf_gguf_writer_write_header(w, fd), 0);
    for (uint64_t i = 0; data && i < nf_gguf_writer_n_tensors(w); i++) {
        uint64_t size = nf_gguf_writer_tensor_size(w, i);
        ssize_t n = pwrite(fd, data[i], size, (off_t)nf_gguf_writer_tensor_offset(w, i));
        assert_int_equal(n, (ssize_t)size);
    }
    struct stat st;
    assert_int_equal(fstat(fd, &st), 0);
    assert_int_equal((uint64_t)st.st_size, nf_gguf_writer_file_size(w));
    close(fd);
}

static struct nf_gguf *open_ok(const char *path)
{
    struct nf_gguf *g = NULL;
    char err[512] = "";
    int rc = nf_gguf_open(&g, path, err, sizeof(err));
    if (rc)
        fail_msg("nf_gguf_open(%s): %s", path, err);
    return g;
}

/* Every scalar type, every array type, strings with NULs and UTF-8, and nested arrays. */
static void test_every_value_type(void **state)
{
    struct nf_gguf_writer *w;
    assert_int_equal(nf_gguf_writer_init(&w), 0);
    assert_int_equal(nf_gguf_writer_add_u8(w, "t.u8", 200), 0);
    assert_int_equal(nf_gguf_writer_add_i8(w, "t.i8", -100), 0);
    assert_int_equal(nf_gguf_writer_add_u16(w, "t.u16", 60000), 0);
    assert_int_equal(nf_gguf_writer_add_i16(w, "t.i16", -30000), 0);
    assert_int_equal(nf_gguf_writer_add_u32(w, "t.u32", 4000000000u), 0);
    assert_int_equal(nf_gguf_writer_add_i32(w, "t.i32", -2000000000), 0);
    assert_int_equal(nf_gguf_writer_add_u64(w, "t.u64", 0xfedcba9876543210ull), 0);
    assert_int_equal(nf_gguf_writer_add_i64(w, "t.i64", -0x123456789abcll), 0);
    assert_int_equal(nf_gguf_writer_add_f32(w, "t.f32", 0.125f), 0);
    assert_int_equal(nf_gguf_writer_add_f64(w, "t.f64", -1e-300), 0);
    assert_int_equal(nf_gguf_writer_add_bool(w, "t.true", true), 0);
    assert_int_equal(nf_gguf_writer_add_bool(w, "t.false", false), 0);
    assert_int_equal(nf_gguf_writer_add_str(w, "t.str", "h\xc3\xa9llo \xe2\x96\x81"), 0);
    assert_int_equal(nf_gguf_writer_add_strn(w, "t.strn", "a\0b", 3), 0);
    assert_int_equal(nf_gguf_writer_add_str(w, "t.empty", ""), 0);

    const int8_t ai8[] = {-1, 2, -3};
    const uint16_t au16[] = {1, 65535};
    const int32_t ai32[] = {-7, 0, 7, 1 << 30};
    const float af32[] = {1.5f, -2.25f, 3e-8f};
    const double af64[] = {1e300, -0.5};
    const uint8_t abool[] = {1, 0, 1};
    const uint64_t au64[] = {1ull << 63, 5};
    assert_int_equal(nf_gguf_writer_add_arr(w, "a.i8", NF_GGUF_INT8, ai8, 3), 0);
    assert_int_equal(nf_gguf_writer_add_arr(w, "a.u16", NF_GGUF_UINT16, au16, 2), 0);
    assert_int_equal(nf_gguf_writer_add_arr(w, "a.i32", NF_GGUF_INT32, ai32, 4), 0);
    assert_int_equal(nf_gguf_writer_add_arr(w, "a.f32", NF_GGUF_FLOAT32, af32, 3), 0);
    assert_int_equal(nf_gguf_writer_add_arr(w, "a.f64", NF_GGUF_FLOAT64, af64, 2), 0);
    assert_int_equal(nf_gguf_writer_add_arr(w, "a.bool", NF_GGUF_BOOL, abool, 3), 0);
    assert_int_equal(nf_gguf_writer_add_arr(w, "a.u64", NF_GGUF_UINT64, au64, 2), 0);
    assert_int_equal(nf_gguf_writer_add_arr(w, "a.empty", NF_GGUF_UINT32, NULL, 0), 0);
    const char *strs[] = {"<unk>", "", "\xe2\x96\x81the", "x"};
    assert_int_equal(nf_gguf_writer_add_arr_str(w, "a.str", strs, NULL, 4), 0);
    const size_t lens[] = {2, 0, 1};
    const char *strs2[] = {"\0z", "", "q"};
    assert_int_equal(nf_gguf_writer_add_arr_str(w, "a.strlen", strs2, lens, 3), 0);

    /* An array of two arrays of i32, built the way the reader represents it. */
    int32_t inner0[] = {1, 2}, inner1[] = {3};
    struct nf_gguf_value inner[2] = {
        {.type = NF_GGUF_ARRAY, .v.arr = {NF_GGUF_INT32, 2, inner0}},
        {.type = NF_GGUF_ARRAY, .v.arr = {NF_GGUF_INT32, 1, inner1}},
    };
    struct nf_gguf_value nested = {.type = NF_GGUF_ARRAY, .v.arr = {NF_GGUF_ARRAY, 2, inner}};
    assert_int_equal(nf_gguf_writer_add_value(w, "a.nested", &nested), 0);
    struct nf_gguf_value neg = {.type = NF_GGUF_INT16, .v.i64 = -5};
    assert_int_equal(nf_gguf_writer_add_value(w, "v.i16", &neg), 0);
    assert_int_equal(nf_gguf_writer_n_kv(w), 27);

    char path[512];
    path_in_tmp(path, sizeof(path), "types.gguf");
    write_file(w, path, NULL);
    nf_gguf_writer_free(w);

    struct nf_gguf *g = open_ok(path);
    assert_int_equal(g->version, 3);
    assert_int_equal(g->n_kv, 27);
    assert_int_equal(g->n_tensors, 0);
    uint64_t u;
    int64_t i;
    float f;
    bool b;
    const char *s;
    assert_int_equal(nf_gguf_get(g, "t.u8")->type, NF_GGUF_UINT8);
    assert_int_equal(nf_gguf_get_u64(g, "t.u8", &u), 0);
    assert_int_equal(u, 200);
    assert_int_equal(nf_gguf_get(g, "t.i8")->type, NF_GGUF_INT8);
    assert_int_equal(nf_gguf_get_i64(g, "t.i8", &i), 0);
    assert_int_equal(i, -100);
    assert_int_equal(nf_gguf_get_u64(g, "t.u16", &u), 0);
    assert_int_equal(u, 60000);
    assert_int_equal(nf_gguf_get_i64(g, "t.i16", &i), 0);
    assert_int_equal(i, -30000);
    assert_int_equal(nf_gguf_get(g, "t.u32")->type, NF_GGUF_UINT32);
    assert_int_equal(nf_gguf_get_u64(g, "t.u32", &u), 0);
    assert_int_equal(u, 4000000000u);
    assert_int_equal(nf_gguf_get_i64(g, "t.i32", &i), 0);
    assert_int_equal(i, -2000000000);
    assert_int_equal(nf_gguf_get_u64(g, "t.u64", &u), 0);
    assert_true(u == 0xfedcba9876543210ull);
    assert_int_equal(nf_gguf_get_i64(g, "t.i64", &i), 0);
    assert_true(i == -0x123456789abcll);
    assert_int_equal(nf_gguf_get_f32(g, "t.f32", &f), 0);
    assert_true(f == 0.125f);
    assert_int_equal(nf_gguf_get(g, "t.f64")->type, NF_GGUF_FLOAT64);
    assert_true(nf_gguf_get(g, "t.f64")->v.f64 == -1e-300);
    assert_int_equal(nf_gguf_get_bool(g, "t.true", &b), 0);
    assert_true(b);
    assert_int_equal(nf_gguf_get_bool(g, "t.false", &b), 0);
    assert_false(b);
    assert_int_equal(nf_gguf_get_str(g, "t.str", &s), 0);
    assert_string_equal(s, "h\xc3\xa9llo \xe2\x96\x81");
    const struct nf_gguf_value *v = nf_gguf_get(g, "t.strn");
    assert_non_null(v);
    assert_int_equal(v->v.str.len, 3);
    assert_memory_equal(v->v.str.s, "a\0b", 3);
    assert_int_equal(nf_gguf_get_str(g, "t.empty", &s), 0);
    assert_string_equal(s, "");

    uint64_t n;
    const void *d;
    assert_int_equal(nf_gguf_get_arr(g, "a.i8", NF_GGUF_INT8, &n, &d), 0);
    assert_int_equal(n, 3);
    assert_memory_equal(d, ai8, sizeof(ai8));
    assert_int_equal(nf_gguf_get_arr(g, "a.u16", NF_GGUF_UINT16, &n, &d), 0);
    assert_memory_equal(d, au16, sizeof(au16));
    assert_int_equal(nf_gguf_get_arr(g, "a.i32", NF_GGUF_INT32, &n, &d), 0);
    assert_int_equal(n, 4);
    assert_memory_equal(d, ai32, sizeof(ai32));
    assert_int_equal(nf_gguf_get_arr(g, "a.f32", NF_GGUF_FLOAT32, &n, &d), 0);
    assert_memory_equal(d, af32, sizeof(af32));
    assert_int_equal(nf_gguf_get_arr(g, "a.f64", NF_GGUF_FLOAT64, &n, &d), 0);
    assert_memory_equal(d, af64, sizeof(af64));
    assert_int_equal(nf_gguf_get_arr(g, "a.bool", NF_GGUF_BOOL, &n, &d), 0);
    assert_memory_equal(d, abool, sizeof(abool));
    assert_int_equal(nf_gguf_get_arr(g, "a.u64", NF_GGUF_UINT64, &n, &d), 0);
    assert_memory_equal(d, au64, sizeof(au64));
    assert_int_equal(nf_gguf_get_arr(g, "a.empty", NF_GGUF_UINT32, &n, &d), 0);
    assert_int_equal(n, 0);
    assert_int_equal(nf_gguf_get_arr(g, "a.str", NF_GGUF_STRING, &n, &d), 0);
    assert_int_equal(n, 4);
    const struct nf_gguf_str *gs = d;
    for (int k = 0; k < 4; k++)
        assert_string_equal(gs[k].s, strs[k]);
    assert_int_equal(nf_gguf_get_arr(g, "a.strlen", NF_GGUF_STRING, &n, &d), 0);
    gs = d;
    assert_int_equal(gs[0].len, 2);
    assert_memory_equal(gs[0].s, "\0z", 2);
    assert_int_equal(gs[1].len, 0);
    assert_string_equal(gs[2].s, "q");
    v = nf_gguf_get(g, "a.nested");
    assert_non_null(v);
    assert_int_equal(v->type, NF_GGUF_ARRAY);
    assert_int_equal(v->v.arr.type, NF_GGUF_ARRAY);
    assert_int_equal(v->v.arr.n, 2);
    const struct nf_gguf_value *in = v->v.arr.data;
    assert_int_equal(in[0].v.arr.type, NF_GGUF_INT32);
    assert_int_equal(in[0].v.arr.n, 2);
    assert_memory_equal(in[0].v.arr.data, inner0, sizeof(inner0));
    assert_int_equal(in[1].v.arr.n, 1);
    assert_memory_equal(in[1].v.arr.data, inner1, sizeof(inner1));
    assert_int_equal(nf_gguf_get(g, "v.i16")->type, NF_GGUF_INT16);
    assert_int_equal(nf_gguf_get_i64(g, "v.i16", &i), 0);
    assert_int_equal(i, -5);
    nf_gguf_close(g);
}

/* Tensors of several types and ranks: offsets aligned, shapes, types and bytes read back. */
static void test_tensors_round_trip(void **state)
{
    struct nf_gguf_writer *w;
    assert_int_equal(nf_gguf_writer_init(&w), 0);
    assert_int_equal(nf_gguf_writer_add_str(w, "general.architecture", "test"), 0);
    assert_int_equal(nf_gguf_writer_add_u32(w, "general.alignment", 64), 0);
    assert_int_equal(nf_gguf_writer_alignment(w), 64);

    const int64_t ne_a[] = {3};            /* f32, 12 bytes: the next offset needs padding */
    const int64_t ne_b[] = {64, 2};        /* q8_0: 2 blocks per row */
    const int64_t ne_c[] = {4, 3, 2};      /* f16, 3-D */
    const int64_t ne_d[] = {256, 1, 1, 2}; /* q4_K, 4-D */
    uint64_t ia, ib, ic, id;
    assert_int_equal(nf_gguf_writer_add_tensor(w, "a", 1, ne_a, NF_TYPE_F32, &ia), 0);
    assert_int_equal(nf_gguf_writer_add_tensor(w, "b.weight", 2, ne_b, NF_TYPE_Q8_0, &ib), 0);
    assert_int_equal(nf_gguf_writer_add_tensor(w, "c", 3, ne_c, NF_TYPE_F16, &ic), 0);
    assert_int_equal(nf_gguf_writer_add_tensor(w, "d", 4, ne_d, NF_TYPE_Q4_K, &id), 0);
    assert_int_equal(ib, 1);
    assert_int_equal(nf_gguf_writer_tensor_size(w, ia), 12);
    assert_int_equal(nf_gguf_writer_tensor_size(w, ib), 2 * 2 * 34);
    assert_int_equal(nf_gguf_writer_tensor_size(w, ic), 24 * 2);
    assert_int_equal(nf_gguf_writer_tensor_size(w, id), 2 * 144);
    assert_int_equal(nf_gguf_writer_tensor_offset(w, 4), UINT64_MAX);
    for (uint64_t k = 0; k < 4; k++)
        assert_int_equal(nf_gguf_writer_tensor_offset(w, k) % 64, 0);
    assert_int_equal(nf_gguf_writer_data_offset(w) % 64, 0);

    uint8_t da[12], db[136], dc[48], dd[288];
    uint8_t *bufs[] = {da, db, dc, dd};
    size_t sizes[] = {sizeof(da), sizeof(db), sizeof(dc), sizeof(dd)};
    for (int k = 0; k < 4; k++)
        for (size_t j = 0; j < sizes[k]; j++)
            bufs[k][j] = (uint8_t)(j * 7 + k * 31 + 1);
    /* Keep the f16 and q4_K scales finite: the reader does not look at values, but be tidy. */
    const void *data[] = {da, db, dc, dd};
    char path[512];
    path_in_tmp(path, sizeof(path), "tensors.gguf");
    write_file(w, path, data);
    uint64_t data_off = nf_gguf_writer_data_offset(w);
    nf_gguf_writer_free(w);

    struct nf_gguf *g = open_ok(path);
    assert_int_equal(g->alignment, 64);
    assert_int_equal(g->data_offset, data_off);
    assert_int_equal(g->n_tensors, 4);
    const char *names[] = {"a", "b.weight", "c", "d"};
    const enum nf_type types[] = {NF_TYPE_F32, NF_TYPE_Q8_0, NF_TYPE_F16, NF_TYPE_Q4_K};
    const int64_t *nes[] = {ne_a, ne_b, ne_c, ne_d};
    const uint32_t dims[] = {1, 2, 3, 4};
    for (int k = 0; k < 4; k++) {
        const struct nf_gguf_tensor *t = nf_gguf_find_tensor(g, names[k]);
        assert_non_null(t);
        assert_int_equal(t->type, types[k]);
        assert_int_equal(t->n_dims, dims[k]);
        for (uint32_t dd2 = 0; dd2 < NF_GGUF_MAX_DIMS; dd2++)
            assert_int_equal(t->ne[dd2], dd2 < dims[k] ? nes[k][dd2] : 1);
        assert_int_equal(t->size, sizes[k]);
        uint8_t back[512];
        assert_int_equal(nf_gguf_read_tensor(g, t, back, sizeof(back)), 0);
        assert_memory_equal(back, bufs[k], sizes[k]);
    }
    nf_gguf_close(g);
}

/* Bad input is refused with a code and leaves the writer as it was. */
static void test_refusals(void **state)
{
    struct nf_gguf_writer *w;
    assert_int_equal(nf_gguf_writer_init(&w), 0);
    assert_int_equal(nf_gguf_writer_add_u32(w, "k", 1), 0);
    uint64_t before = nf_gguf_writer_data_offset(w);
    assert_int_equal(nf_gguf_writer_add_u32(w, "k", 2), -EEXIST);
    assert_int_equal(nf_gguf_writer_add_str(w, "k", "again"), -EEXIST);
    assert_int_equal(nf_gguf_writer_add_str(w, "", "x"), -EINVAL);
    assert_int_equal(nf_gguf_writer_add_str(w, NULL, "x"), -EINVAL);
    assert_int_equal(nf_gguf_writer_add_u32(w, "general.alignment", 48), -EINVAL);
    assert_int_equal(nf_gguf_writer_add_u32(w, "general.alignment", 0), -EINVAL);
    const uint8_t badbool[] = {0, 2};
    assert_int_equal(nf_gguf_writer_add_arr(w, "b", NF_GGUF_BOOL, badbool, 2), -EINVAL);
    assert_int_equal(nf_gguf_writer_add_arr(w, "s", NF_GGUF_STRING, badbool, 2), -EINVAL);
    assert_int_equal(nf_gguf_writer_n_kv(w), 1);
    assert_int_equal(nf_gguf_writer_data_offset(w), before);

    const int64_t ne[] = {33, 2}, ne_ok[] = {32, 2}, ne_zero[] = {32, 0};
    assert_int_equal(nf_gguf_writer_add_tensor(w, "q", 2, ne, NF_TYPE_Q4_0, NULL), NF_ESHAPE);
    assert_int_equal(nf_gguf_writer_add_tensor(w, "q", 2, ne_zero, NF_TYPE_Q4_0, NULL), NF_ESHAPE);
    assert_int_equal(nf_gguf_writer_add_tensor(w, "q", 0, ne_ok, NF_TYPE_Q4_0, NULL), -EINVAL);
    assert_int_equal(nf_gguf_writer_add_tensor(w, "q", 5, ne_ok, NF_TYPE_Q4_0, NULL), -EINVAL);
    assert_int_equal(nf_gguf_writer_add_tensor(w, "q", 2, ne_ok, (enum nf_type)4, NULL),
                     NF_EBADTYPE);
    char longname[80];
    memset(longname, 'n', sizeof(longname) - 1);
    longname[sizeof(longname) - 1] = '\0';
    assert_int_equal(nf_gguf_writer_add_tensor(w, longname, 2, ne_ok, NF_TYPE_F32, NULL), -EINVAL);
    const int64_t huge[] = {1ll << 40, 1ll << 40};
    assert_int_equal(nf_gguf_writer_add_tensor(w, "h", 2, huge, NF_TYPE_F32, NULL), NF_EOVERFLOW);
    assert_int_equal(nf_gguf_writer_n_tensors(w), 0);
    assert_int_equal(nf_gguf_writer_add_tensor(w, "q", 2, ne_ok, NF_TYPE_Q4_0, NULL), 0);
    assert_int_equal(nf_gguf_writer_add_tensor(w, "q", 2, ne_ok, NF_TYPE_F32, NULL), -EEXIST);
    /* The alignment fixes every offset, so it cannot change after the first tensor. */
    assert_int_equal(nf_gguf_writer_add_u32(w, "general.alignment", 64), -EINVAL);
    assert_int_equal(nf_gguf_writer_n_tensors(w), 1);

    char path[512];
    path_in_tmp(path, sizeof(path), "refusals.gguf");
    write_file(w, path, NULL);
    nf_gguf_writer_free(w);
    struct nf_gguf *g = open_ok(path);
    assert_int_equal(g->n_kv, 1);
    assert_int_equal(g->n_tensors, 1);
    nf_gguf_close(g);
}

/* Copying every key of a real model with add_value reproduces them exactly. */
static void test_copy_real_metadata(void **state)
{
    char src[512];
    snprintf(src, sizeof(src), "%s/models/llama-2-tiny-random.gguf", NF_SHARED_DIR);
    if (access(src, R_OK) != 0)
        skip();
    struct nf_gguf *a = open_ok(src);
    struct nf_gguf_writer *w;
    assert_int_equal(nf_gguf_writer_init(&w), 0);
    for (uint64_t k = 0; k < a->n_kv; k++)
        assert_int_equal(nf_gguf_writer_add_value(w, a->kv[k].key.s, &a->kv[k].value), 0);
    char path[512];
    path_in_tmp(path, sizeof(path), "copy.gguf");
    write_file(w, path, NULL);
    nf_gguf_writer_free(w);

    struct nf_gguf *b = open_ok(path);
    assert_int_equal(b->n_kv, a->n_kv);
    for (uint64_t k = 0; k < a->n_kv; k++) {
        const struct nf_gguf_value *va = &a->kv[k].value, *vb = nf_gguf_get(b, a->kv[k].key.s);
        assert_non_null(vb);
        assert_int_equal(va->type, vb->type);
        if (va->type == NF_GGUF_STRING) {
            assert_int_equal(va->v.str.len, vb->v.str.len);
            assert_memory_equal(va->v.str.s, vb->v.str.s, va->v.str.len);
        } else if (va->type == NF_GGUF_ARRAY) {
            assert_int_equal(va->v.arr.type, vb->v.arr.type);
            assert_int_equal(va->v.arr.n, vb->v.arr.n);
            if (va->v.arr.type == NF_GGUF_STRING) {
                const struct nf_gguf_str *sa = va->v.arr.data, *sb = vb->v.arr.data;
                for (uint64_t j = 0; j < va->v.arr.n; j++) {
                    assert_int_equal(sa[j].len, sb[j].len);
                    assert_memory_equal(sa[j].s, sb[j].s, sa[j].len);
                }
            }
        } else {
            assert_memory_equal(&va->v, &vb->v, sizeof(va->v.u64));
        }
    }
    nf_gguf_close(b);
    nf_gguf_close(a);
}

/* Runs nanoflowctl mkmodel with the arguments in args (NULL-terminated); returns its exit code. */
static int run_mkmodel_argv(const char *const *args)
{
    char bin[512];
    snprintf(bin, sizeof(bin), "%s/ctl/nanoflowctl", NF_BUILD_DIR);
    const char *argv[40] = {bin, "mkmodel"};
    int argc = 2;
    for (; args[argc - 2] && argc < 39; argc++)
        argv[argc] = args[argc - 2];
    argv[argc] = NULL;
    pid_t pid = fork();
    if (pid == 0) {
        int devnull = open("/dev/null", O_WRONLY);
        dup2(devnull, 1);
        execv(bin, (char *const *)argv);
        _exit(127);
    }
    int st;
    waitpid(pid, &st, 0);
    return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

static void check_tensor(const struct nf_gguf *g, const char *name, enum nf_type type, int64_t n0,
                         int64_t n1, int64_t n2)
{
    const struct nf_gguf_tensor *t = nf_gguf_find_tensor(g, name);
    if (!t)
        fail_msg("tensor %s missing", name);
    assert_int_equal(t->type, type);
    assert_int_equal(t->ne[0], n0);
    assert_int_equal(t->ne[1], n1);
    assert_int_equal(t->ne[2], n2);
}

/* Dequantized values of tensor name: norms all 1.0, matrices with mean ~0 and std ~0.02. */
static void check_values(const struct nf_gguf *g, const char *name, bool ones)
{
    const struct nf_gguf_tensor *t = nf_gguf_find_tensor(g, name);
    assert_non_null(t);
    uint8_t *raw = malloc(t->size);
    float *x = malloc((size_t)t->n_elements * sizeof(float));
    assert_non_null(raw);
    assert_non_null(x);
    assert_int_equal(nf_gguf_read_tensor(g, t, raw, t->size), 0);
    const struct nf_type_traits *tr = nf_type_traits(t->type);
    assert_non_null(tr->to_float);
    tr->to_float(raw, x, t->n_elements);
    double sum = 0, sq = 0;
    for (int64_t i = 0; i < t->n_elements; i++) {
        if (ones)
            assert_true(x[i] == 1.0f);
        sum += x[i];
        sq += (double)x[i] * x[i];
    }
    if (!ones) {
        double mean = sum / t->n_elements, sd = sqrt(sq / t->n_elements - mean * mean);
        assert_true(fabs(mean) < 0.002);
        assert_true(sd > 0.017 && sd < 0.023);
    }
    free(x);
    free(raw);
}

/* mkmodel's tiny MoE shape: every key llama.cpp reads, tensor names and shapes, and values. */
static void test_mkmodel_tiny_moe(void **state)
{
    char path[512];
    path_in_tmp(path, sizeof(path), "moe.gguf");
    assert_int_equal(run_mkmodel(path, "--shape", "tiny-moe", "--type", "q8_0", "--vocab", "300",
                                 "--layers", "3", "--seed", "9", NULL),
                     0);
    struct nf_gguf *g = open_ok(path);
    const char *s;
    uint32_t u;
    float f;
    bool b;
    assert_int_equal(nf_gguf_get_str(g, "general.architecture", &s), 0);
    assert_string_equal(s, "llama");
    assert_int_equal(nf_gguf_get_u32(g, "general.file_type", &u), 0);
    assert_int_equal(u, 7);
    assert_int_equal(nf_gguf_get_u32(g, "general.alignment", &u), 0);
    assert_int_equal(u, 32);
    const struct {
        const char *key;
        uint32_t v;
    } want[] = {
        {"llama.context_length", 2048},
        {"llama.embedding_length", 256},
        {"llama.block_count", 3},
        {"llama.feed_forward_length", 512},
        {"llama.attention.head_count", 8},
        {"llama.attention.head_count_kv", 2},
        {"llama.rope.dimension_count", 32},
        {"llama.vocab_size", 300},
        {"llama.expert_count", 4},
        {"llama.expert_used_count", 2},
        {"tokenizer.ggml.bos_token_id", 1},
        {"tokenizer.ggml.eos_token_id", 2},
        {"tokenizer.ggml.unknown_token_id", 0},
    };
    for (size_t k = 0; k < sizeof(want) / sizeof(want[0]); k++) {
        assert_int_equal(nf_gguf_get_u32(g, want[k].key, &u), 0);
        if (u != want[k].v)
            fail_msg("%s = %u, expected %u", want[k].key, u, want[k].v);
    }
    assert_int_equal(nf_gguf_get_f32(g, "llama.rope.freq_base", &f), 0);
    assert_true(f == 10000.0f);
    assert_int_equal(nf_gguf_get_f32(g, "llama.attention.layer_norm_rms_epsilon", &f), 0);
    assert_true(f == 1e-5f);
    assert_int_equal(nf_gguf_get_bool(g, "tokenizer.ggml.add_bos_token", &b), 0);
    assert_true(b);
    assert_int_equal(nf_gguf_get_str(g, "tokenizer.ggml.model", &s), 0);
    assert_string_equal(s, "llama");
    uint64_t n;
    const void *d;
    assert_int_equal(nf_gguf_get_arr(g, "tokenizer.ggml.tokens", NF_GGUF_STRING, &n, &d), 0);
    assert_int_equal(n, 300);
    const struct nf_gguf_str *tok = d;
    assert_string_equal(tok[0].s, "<unk>");
    assert_string_equal(tok[1].s, "<s>");
    assert_string_equal(tok[2].s, "</s>");
    assert_string_equal(tok[3].s, "<0x00>");
    assert_string_equal(tok[258].s, "<0xFF>");
    assert_string_equal(tok[259].s, "\xe2\x96\x81");
    assert_int_equal(nf_gguf_get_arr(g, "tokenizer.ggml.token_type", NF_GGUF_INT32, &n, &d), 0);
    assert_int_equal(n, 300);
    const int32_t *tt = d;
    assert_int_equal(tt[0], 2);
    assert_int_equal(tt[1], 3);
    assert_int_equal(tt[100], 6);
    assert_int_equal(tt[299], 1);
    assert_int_equal(nf_gguf_get_arr(g, "tokenizer.ggml.scores", NF_GGUF_FLOAT32, &n, &d), 0);
    assert_int_equal(n, 300);

    assert_int_equal(g->n_tensors, 3 + 3 * 10);
    check_tensor(g, "token_embd.weight", NF_TYPE_Q8_0, 256, 300, 1);
    check_tensor(g, "output_norm.weight", NF_TYPE_F32, 256, 1, 1);
    check_tensor(g, "output.weight", NF_TYPE_Q8_0, 256, 300, 1);
    check_tensor(g, "blk.2.attn_norm.weight", NF_TYPE_F32, 256, 1, 1);
    check_tensor(g, "blk.2.attn_q.weight", NF_TYPE_Q8_0, 256, 256, 1);
    check_tensor(g, "blk.2.attn_k.weight", NF_TYPE_Q8_0, 256, 64, 1);
    check_tensor(g, "blk.2.attn_v.weight", NF_TYPE_Q8_0, 256, 64, 1);
    check_tensor(g, "blk.2.attn_output.weight", NF_TYPE_Q8_0, 256, 256, 1);
    check_tensor(g, "blk.2.ffn_norm.weight", NF_TYPE_F32, 256, 1, 1);
    check_tensor(g, "blk.2.ffn_gate_inp.weight", NF_TYPE_F32, 256, 4, 1);
    check_tensor(g, "blk.2.ffn_gate_exps.weight", NF_TYPE_Q8_0, 256, 512, 4);
    check_tensor(g, "blk.2.ffn_up_exps.weight", NF_TYPE_Q8_0, 256, 512, 4);
    check_tensor(g, "blk.2.ffn_down_exps.weight", NF_TYPE_Q8_0, 512, 256, 4);
    assert_null(nf_gguf_find_tensor(g, "blk.3.attn_q.weight"));
    check_values(g, "blk.1.ffn_norm.weight", true);
    check_values(g, "blk.1.ffn_down_exps.weight", false);
    check_values(g, "blk.0.ffn_gate_inp.weight", false);
    check_values(g, "token_embd.weight", false);
    nf_gguf_close(g);
}

/* The dense tiny shape in F32 and --vocab-from copying a real vocabulary. */
static void test_mkmodel_dense_vocab_from(void **state)
{
    char src[512], path[512];
    snprintf(src, sizeof(src), "%s/models/stories260K.gguf", NF_SHARED_DIR);
    if (access(src, R_OK) != 0)
        skip();
    path_in_tmp(path, sizeof(path), "dense.gguf");
    assert_int_equal(run_mkmodel(path, "--dim", "64", "--layers", "2", "--ffn", "96", "--heads",
                                 "4", "--kv-heads", "2", "--type", "f32", "--vocab-from", src,
                                 NULL),
                     0);
    struct nf_gguf *a = open_ok(src), *g = open_ok(path);
    uint32_t u;
    assert_int_equal(nf_gguf_get_u32(g, "llama.vocab_size", &u), 0);
    assert_int_equal(u, 512);
    assert_null(nf_gguf_get(g, "llama.expert_count"));
    int copied = 0;
    for (uint64_t k = 0; k < a->n_kv; k++) {
        if (strncmp(a->kv[k].key.s, "tokenizer.", 10) != 0)
            continue;
        const struct nf_gguf_value *vb = nf_gguf_get(g, a->kv[k].key.s);
        assert_non_null(vb);
        assert_int_equal(vb->type, a->kv[k].value.type);
        copied++;
    }
    assert_true(copied >= 5);
    check_tensor(g, "token_embd.weight", NF_TYPE_F32, 64, 512, 1);
    check_tensor(g, "blk.1.attn_k.weight", NF_TYPE_F32, 64, 32, 1);
    check_tensor(g, "blk.1.ffn_gate.weight", NF_TYPE_F32, 64, 96, 1);
    check_tensor(g, "blk.1.ffn_down.weight", NF_TYPE_F32, 96, 64, 1);
    assert_null(nf_gguf_find_tensor(g, "blk.1.ffn_gate_inp.weight"));
    check_values(g, "blk.1.attn_norm.weight", true);
    check_values(g, "blk.1.ffn_up.weight", false);
    nf_gguf_close(g);
    nf_gguf_close(a);
}

/* The synthetic vocabulary loads in the tokenizer, merges pieces and round-trips any text (byte
 * fallback); the model loads and evaluates to finite logits. */
static void test_mkmodel_loads(void **state)
{
    char path[512];
    path_in_tmp(path, sizeof(path), "load.gguf");
    assert_int_equal(run_mkmodel(path, "--shape", "tiny", "--vocab", "700", "--type", "q4_0", NULL),
                     0);
    struct nf_gguf *g = open_ok(path);
    struct nf_vocab *v = NULL;
    char err[512] = "";
    if (nf_vocab_load(&v, g, err, sizeof(err)) != 0)
        fail_msg("nf_vocab_load: %s", err);
    assert_int_equal(nf_vocab_n_tokens(v), 700);
    assert_int_equal(nf_vocab_bos(v), 1);
    assert_int_equal(nf_vocab_eos(v), 2);
    assert_true(nf_vocab_add_bos(v));
    const char *text = "Hello world, the quick fox \xc3\xa9t\xc3\xa9\n";
    int32_t toks[128];
    int n = nf_tokenize(v, text, strlen(text), true, false, toks, 128);
    assert_true(n > 1 && n <= 128);
    assert_int_equal(toks[0], 1);
    /* Pieces such as " wo" exist, so there are fewer tokens than bytes. */
    assert_true((size_t)n < strlen(text));
    char joined[256] = "";
    size_t len = 0;
    for (int i = 1; i < n; i++) {
        assert_true(toks[i] >= 0 && toks[i] < 700);
        int pl = nf_token_to_piece(v, toks[i], joined + len, (int)(sizeof(joined) - len - 1));
        assert_true(pl >= 0);
        len += (size_t)pl;
    }
    joined[len] = '\0';
    /* SentencePiece prefixes the text with a space. */
    assert_string_equal(joined + 1, text);
    nf_vocab_free(v);
    nf_gguf_close(g);

    struct nf_model *m = NULL;
    if (nf_model_load(&m, path, err, sizeof(err)) != 0)
        fail_msg("nf_model_load: %s", err);
    struct nf_ctx *c = NULL;
    assert_int_equal(nf_ctx_create(&c, m, 16, 1), 0);
    assert_int_equal(nf_ctx_eval(c, toks, 4), 0);
    for (int i = 0; i < 700; i++)
        assert_true(isfinite(c->logits[i]));
    nf_ctx_free(c);
    nf_model_free(m);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_every_value_type), cmocka_unit_test(test_tensors_round_trip),
        cmocka_unit_test(test_refusals),         cmocka_unit_test(test_copy_real_metadata),
        cmocka_unit_test(test_mkmodel_tiny_moe), cmocka_unit_test(test_mkmodel_dense_vocab_from),
        cmocka_unit_test(test_mkmodel_loads),
    };
    return cmocka_run_group_tests(tests, setup_dir, teardown_dir);
}
