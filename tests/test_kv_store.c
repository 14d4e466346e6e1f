/* test_kv_store.c - the prefix store's files (common/kv_store.c): a saved prefix is indexed again
 * by a new store and read back byte for byte into the rows; the longest shared prefix is the
 * match; the bound drops the least recently used (a load refreshes an entry); a flipped data byte
 * fails the load and removes the file; files of another identity, truncated or with a bad header
 * are ignored with one warning each and left in place; a prefix larger than the bound is refused
 * in one line. */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cmocka.h>

#include "kv_store.h"
#include "nf_err.h"

static char dir[] = "/tmp/test_kv_store-XXXXXX";

#define L     3  /* layers */
#define NCTX  64 /* positions per layer of the fake slot */
#define ROW_K 24
#define ROW_V 40

/* A fake slot: (L, NCTX) rows of K and of V. */
struct slot {
    uint8_t k[L][NCTX][ROW_K];
    uint8_t v[L][NCTX][ROW_V];
};

static void *rows(void *ud, int il, int which)
{
    struct slot *s = ud;
    return which ? (void *)s->v[il] : (void *)s->k[il];
}

static void fill(struct slot *s, int seed)
{
    uint8_t *p = (uint8_t *)s;
    for (size_t i = 0; i < sizeof(*s); i++)
        p[i] = (uint8_t)(i * 31u + (unsigned)seed * 7u);
}

static int n_warn;
static char last_warn[600];
static void warn(void *ud, const char *msg)
{
    (void)ud;
    n_warn++;
    snprintf(last_warn, sizeof(last_warn), "%s", msg);
}

static const struct nf_kv_store_id id0 = {.nft_size = 123456,
                                          .nft_checksum = 0x1234,
                                          .type_k = 1,
                                          .type_v = 1,
                                          .n_layer = L,
                                          .n_ubatch = 8,
                                          .row_k = ROW_K,
                                          .row_v = ROW_V};

static void open_store(struct nf_kv_store *ks, const struct nf_kv_store_id *id, uint64_t max)
{
    char err[512];
    n_warn = 0;
    if (nf_kv_store_open(ks, dir, id, max, warn, NULL, err, sizeof(err)) < 0)
        fail_msg("%s", err);
}

static void empty_dir(void)
{
    char cmd[200];
    snprintf(cmd, sizeof(cmd), "rm -f %s/*", dir);
    assert_int_equal(system(cmd), 0);
}

static int count_files(void)
{
    char cmd[200];
    snprintf(cmd, sizeof(cmd), "ls %s | wc -l", dir);
    FILE *f = popen(cmd, "r");
    int n = -1;
    assert_non_null(f);
    assert_int_equal(fscanf(f, "%d", &n), 1);
    pclose(f);
    return n;
}

static void ids_of(int32_t *ids, int n, int first)
{
    for (int i = 0; i < n; i++)
        ids[i] = first + i;
}

/* Saved, indexed by a new store, matched and read back byte for byte. */
static void test_round_trip(void **state)
{
    (void)state;
    empty_dir();
    static struct slot a, b;
    fill(&a, 1);
    struct nf_kv_store ks;
    char err[512];
    int32_t ids[40];
    ids_of(ids, 40, 100);
    open_store(&ks, &id0, 1 << 20);
    assert_int_equal(nf_kv_store_save(&ks, ids, 16, rows, &a, err, sizeof(err)), 0);
    assert_int_equal(nf_kv_store_save(&ks, ids, 32, rows, &a, err, sizeof(err)), 0);
    assert_int_equal(ks.n, 2);
    nf_kv_store_close(&ks);

    open_store(&ks, &id0, 1 << 20);
    assert_int_equal(n_warn, 0);
    assert_int_equal(ks.n, 2);
    assert_true(nf_kv_store_has(&ks, ids, 32));
    assert_false(nf_kv_store_has(&ks, ids, 24));
    int common = 0;
    const int e = nf_kv_store_match(&ks, ids, 40, NCTX, &common);
    assert_true(e >= 0);
    assert_int_equal(common, 32);
    assert_int_equal(ks.e[e].n, 32);
    assert_int_equal(nf_kv_store_match(&ks, ids, 40, 20, &common) >= 0, 1);
    assert_int_equal(common, 16); /* at most 20 tokens: the 16-token entry */
    memset(&b, 0, sizeof(b));
    assert_int_equal(nf_kv_store_load(&ks, e, rows, &b, err, sizeof(err)), 0);
    for (int il = 0; il < L; il++) {
        assert_memory_equal(a.k[il], b.k[il], (size_t)32 * ROW_K);
        assert_memory_equal(a.v[il], b.v[il], (size_t)32 * ROW_V);
    }
    int32_t other[40];
    ids_of(other, 40, 5000);
    assert_int_equal(nf_kv_store_match(&ks, other, 40, NCTX, &common), -1);
    assert_int_equal(common, 0);
    nf_kv_store_close(&ks);
}

/* The bound: the least recently used goes first, a load makes an entry recent. */
static void test_lru(void **state)
{
    (void)state;
    empty_dir();
    static struct slot a;
    fill(&a, 2);
    char err[512];
    const uint64_t one =
        sizeof(struct nf_kv_store_header) + 16 * 4 + (uint64_t)L * 16 * (ROW_K + ROW_V);
    struct nf_kv_store ks;
    open_store(&ks, &id0, 3 * one);
    int32_t x[16], y[16], z[16], w[16];
    ids_of(x, 16, 1000);
    ids_of(y, 16, 2000);
    ids_of(z, 16, 3000);
    ids_of(w, 16, 4000);
    assert_int_equal(nf_kv_store_save(&ks, x, 16, rows, &a, err, sizeof(err)), 0);
    usleep(20000); /* distinct modification times */
    assert_int_equal(nf_kv_store_save(&ks, y, 16, rows, &a, err, sizeof(err)), 0);
    usleep(20000);
    assert_int_equal(nf_kv_store_save(&ks, z, 16, rows, &a, err, sizeof(err)), 0);
    usleep(20000);
    int common;
    const int ex = nf_kv_store_match(&ks, x, 16, NCTX, &common);
    assert_int_equal(nf_kv_store_load(&ks, ex, rows, &a, err, sizeof(err)), 0); /* x is recent */
    usleep(20000);
    assert_int_equal(nf_kv_store_save(&ks, w, 16, rows, &a, err, sizeof(err)), 0);
    assert_int_equal(ks.n, 3);
    assert_true(ks.bytes <= 3 * one);
    assert_true(nf_kv_store_has(&ks, x, 16));
    assert_false(nf_kv_store_has(&ks, y, 16)); /* the least recently used */
    assert_true(nf_kv_store_has(&ks, z, 16));
    assert_true(nf_kv_store_has(&ks, w, 16));
    assert_int_equal(count_files(), 3);
    /* A prefix larger than the whole bound: refused, nothing dropped. */
    int32_t big[60];
    ids_of(big, 60, 9000);
    assert_int_equal(nf_kv_store_save(&ks, big, 60, rows, &a, err, sizeof(err)), NF_EUSAGE);
    assert_non_null(strstr(err, "--kv-store-max"));
    assert_int_equal(ks.n, 3);
    nf_kv_store_close(&ks);
}

/* Path of the only file in dir. */
static void only_file(char *out, size_t len)
{
    char cmd[200];
    snprintf(cmd, sizeof(cmd), "ls %s/*.nfkv", dir);
    FILE *f = popen(cmd, "r");
    assert_non_null(f);
    assert_non_null(fgets(out, (int)len, f));
    out[strcspn(out, "\n")] = 0;
    pclose(f);
}

static void flip_byte(const char *path, long off_from_end)
{
    FILE *f = fopen(path, "r+b");
    assert_non_null(f);
    assert_int_equal(fseek(f, off_from_end, off_from_end < 0 ? SEEK_END : SEEK_SET), 0);
    const int c = fgetc(f);
    assert_int_equal(fseek(f, -1, SEEK_CUR), 0);
    fputc(c ^ 0x10, f);
    fclose(f);
}

/* Corrupt data: the load fails with a checksum mismatch and the file goes; a bad header, a
 * truncated file and another identity are ignored with one warning each and stay. */
static void test_bad_files(void **state)
{
    (void)state;
    char err[512], path[400];
    static struct slot a, b;
    fill(&a, 3);
    int32_t ids[16];
    ids_of(ids, 16, 7);
    struct nf_kv_store ks;
    int common;

    empty_dir();
    open_store(&ks, &id0, 1 << 20);
    assert_int_equal(nf_kv_store_save(&ks, ids, 16, rows, &a, err, sizeof(err)), 0);
    nf_kv_store_close(&ks);
    only_file(path, sizeof(path));
    flip_byte(path, -5);
    open_store(&ks, &id0, 1 << 20);
    assert_int_equal(ks.n, 1); /* the header is fine: found out when read */
    assert_int_equal(nf_kv_store_load(&ks, nf_kv_store_match(&ks, ids, 16, NCTX, &common), rows, &b,
                                      err, sizeof(err)),
                     NF_ECHECKSUM);
    assert_non_null(strstr(err, "data checksum mismatch"));
    assert_int_equal(ks.n, 0);
    assert_int_equal(access(path, F_OK), -1);
    nf_kv_store_close(&ks);

    /* Header byte flipped (n_tok's), truncated, another model, another ubatch. */
    const struct {
        long off;          /* byte to flip, or 0 */
        off_t truncate_by; /* bytes cut off the end, or 0 */
        struct nf_kv_store_id id;
        const char *why;
    } cases[] = {
        {offsetof(struct nf_kv_store_header, n_tok), 0, id0, "header checksum mismatch"},
        {0, 7, id0, "truncated"},
        {0,
         0,
         {.nft_size = 999,
          .nft_checksum = 0x1234,
          .type_k = 1,
          .type_v = 1,
          .n_layer = L,
          .n_ubatch = 8,
          .row_k = ROW_K,
          .row_v = ROW_V},
         "another model"},
        {0,
         0,
         {.nft_size = 123456,
          .nft_checksum = 0x1234,
          .type_k = 1,
          .type_v = 1,
          .n_layer = L,
          .n_ubatch = 16,
          .row_k = ROW_K,
          .row_v = ROW_V},
         "ubatch 8"},
    };
    for (size_t c = 0; c < sizeof(cases) / sizeof(cases[0]); c++) {
        empty_dir();
        open_store(&ks, &id0, 1 << 20);
        assert_int_equal(nf_kv_store_save(&ks, ids, 16, rows, &a, err, sizeof(err)), 0);
        nf_kv_store_close(&ks);
        only_file(path, sizeof(path));
        if (cases[c].off)
            flip_byte(path, cases[c].off);
        if (cases[c].truncate_by) {
            struct stat sb;
            assert_int_equal(stat(path, &sb), 0);
            assert_int_equal(truncate(path, sb.st_size - cases[c].truncate_by), 0);
        }
        open_store(&ks, &cases[c].id, 1 << 20);
        assert_int_equal(ks.n, 0);
        assert_int_equal(n_warn, 1);
        if (!strstr(last_warn, cases[c].why))
            fail_msg("case %zu: warning '%s' lacks '%s'", c, last_warn, cases[c].why);
        assert_int_equal(access(path, F_OK), 0); /* left in place */
        nf_kv_store_close(&ks);
    }
}

/* Token counts (ubatch 8): any but one more than a multiple of the ubatch, which would end
 * with a position its prompt evaluated as a chunk of its own (nf_stream_prefix_kept). */
static void test_token_counts(void **state)
{
    (void)state;
    char err[512];
    static struct slot a;
    fill(&a, 4);
    int32_t ids[19];
    ids_of(ids, 19, 300);
    struct nf_kv_store ks;
    empty_dir();
    open_store(&ks, &id0, 1 << 20);
    assert_int_equal(nf_kv_store_save(&ks, ids, 19, rows, &a, err, sizeof(err)), 0);
    nf_kv_store_close(&ks);
    open_store(&ks, &id0, 1 << 20);
    assert_int_equal(n_warn, 0);
    assert_int_equal(ks.n, 1);
    nf_kv_store_close(&ks);
    empty_dir();
    open_store(&ks, &id0, 1 << 20);
    assert_int_equal(nf_kv_store_save(&ks, ids, 17, rows, &a, err, sizeof(err)), 0);
    nf_kv_store_close(&ks);
    open_store(&ks, &id0, 1 << 20);
    assert_int_equal(ks.n, 0);
    assert_int_equal(n_warn, 1);
    assert_non_null(strstr(last_warn, "token count out of range"));
    nf_kv_store_close(&ks);
}

int main(void)
{
    if (!mkdtemp(dir)) {
        perror("mkdtemp");
        return 1;
    }
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_round_trip),
        cmocka_unit_test(test_lru),
        cmocka_unit_test(test_token_counts),
        cmocka_unit_test(test_bad_files),
    };
    const int rc = cmocka_run_group_tests(tests, NULL, NULL);
    empty_dir();
    rmdir(dir);
    return rc;
}
