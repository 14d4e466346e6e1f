/* fuzz_gguf.c - libFuzzer target: the GGUF reader on arbitrary bytes, then every accessor, then
 * the engine's model loader on an accepted file (what `run -m X.gguf` does: hyperparameters of
 * every architecture, tensor shapes against them, mxfp4 blocks).
 *
 * Besides crashes (ASan/UBSan), it traps on broken contracts: a refusal must be a negative code
 * with a one-line message (naming the file, for the loader), and an accepted file must have every
 * tensor inside the input, found by name and readable. tests/fuzz/run.sh adds small deepseek2,
 * glm4moe and gpt-oss (mxfp4) models from mkmodel to the committed seeds. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "gguf.h"
#include "model.h"

#define CHECK(x)              \
    do {                      \
        if (!(x))             \
            __builtin_trap(); \
    } while (0)

/* Touches every byte of a value so that a bad pointer or length is caught by ASan. */
static uint64_t walk(const struct nf_gguf_value *v, int depth)
{
    uint64_t h = (uint64_t)v->type;
    CHECK(depth <= 8);
    switch (v->type) {
    case NF_GGUF_STRING:
        CHECK(v->v.str.s[v->v.str.len] == '\0');
        for (uint64_t i = 0; i < v->v.str.len; i++)
            h = h * 31 + (unsigned char)v->v.str.s[i];
        break;
    case NF_GGUF_ARRAY:
        if (v->v.arr.type == NF_GGUF_STRING) {
            const struct nf_gguf_str *s = v->v.arr.data;
            for (uint64_t i = 0; i < v->v.arr.n; i++) {
                CHECK(s[i].s[s[i].len] == '\0');
                h += s[i].len;
            }
        } else if (v->v.arr.type == NF_GGUF_ARRAY) {
            const struct nf_gguf_value *a = v->v.arr.data;
            for (uint64_t i = 0; i < v->v.arr.n; i++)
                h += walk(&a[i], depth + 1);
        } else {
            const unsigned char *b = v->v.arr.data;
            uint64_t n = v->v.arr.n;
            switch (v->v.arr.type) {
            case NF_GGUF_UINT16:
            case NF_GGUF_INT16: n *= 2; break;
            case NF_GGUF_UINT32:
            case NF_GGUF_INT32:
            case NF_GGUF_FLOAT32: n *= 4; break;
            case NF_GGUF_UINT64:
            case NF_GGUF_INT64:
            case NF_GGUF_FLOAT64: n *= 8; break;
            default: break;
            }
            for (uint64_t i = 0; i < n; i++)
                h += b[i];
        }
        break;
    default: h += v->v.u64; break;
    }
    return h;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct nf_gguf *g = NULL;
    char err[512];
    err[0] = '\0';
    int rc = nf_gguf_open_mem(&g, data, size, err, sizeof(err));
    if (rc) {
        CHECK(rc < 0 && g == NULL);
        CHECK(strncmp(err, "<memory>: ", 10) == 0 && !strchr(err, '\n'));
        return 0;
    }
    CHECK(g->alignment && !(g->alignment & (g->alignment - 1)));
    volatile uint64_t sink = 0;
    for (uint64_t i = 0; i < g->n_kv; i++) {
        const struct nf_gguf_kv *kv = &g->kv[i];
        const char *k = kv->key.s;
        uint32_t u32;
        uint64_t u64, n;
        int64_t i64;
        float f;
        bool b;
        const char *s;
        const void *arr;
        sink += walk(&kv->value, 1);
        if (kv->key.len != strlen(k))
            continue; /* an embedded NUL: not reachable by C-string lookup */
        CHECK(nf_gguf_get(g, k) == &kv->value);
        sink += (uint64_t)nf_gguf_get_u32(g, k, &u32) + (uint64_t)nf_gguf_get_u64(g, k, &u64) +
                (uint64_t)nf_gguf_get_i64(g, k, &i64) + (uint64_t)nf_gguf_get_f32(g, k, &f) +
                (uint64_t)nf_gguf_get_bool(g, k, &b) + (uint64_t)nf_gguf_get_str(g, k, &s);
        if (kv->value.type == NF_GGUF_ARRAY)
            CHECK(nf_gguf_get_arr(g, k, kv->value.v.arr.type, &n, &arr) == 0 &&
                  n == kv->value.v.arr.n);
    }
    for (uint64_t i = 0; i < g->n_tensors; i++) {
        const struct nf_gguf_tensor *t = &g->tensors[i];
        CHECK(t->offset >= g->data_offset && t->offset + t->size <= size);
        if (t->name.len == strlen(t->name.s))
            CHECK(nf_gguf_find_tensor(g, t->name.s) == t);
        void *buf = malloc(t->size ? t->size : 1);
        CHECK(buf != NULL);
        CHECK(nf_gguf_read_tensor(g, t, buf, t->size) == 0);
        CHECK(memcmp(buf, data + t->offset, t->size) == 0);
        free(buf);
    }
    (void)sink;
    nf_gguf_close(g);

    /* The loader reads a path: the input goes to a memfd, rewritten for every input. */
    static int fd = -1;
    if (fd < 0)
        CHECK((fd = memfd_create("fuzz.gguf", 0)) >= 0);
    CHECK(ftruncate(fd, 0) == 0);
    CHECK(pwrite(fd, data, size, 0) == (ssize_t)size);
    char path[64];
    snprintf(path, sizeof(path), "/proc/self/fd/%d", fd);
    struct nf_model *m = NULL;
    err[0] = '\0';
    rc = nf_model_load(&m, path, err, sizeof(err));
    if (rc < 0)
        CHECK(err[0] != '\0' && !strchr(err, '\n') && strstr(err, path) != NULL);
    else
        nf_model_free(m);
    return 0;
}
