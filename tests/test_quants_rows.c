/* test_quants_rows.c - the per-row exact multi-token kernels (quants_rows.h): every output bit
 * for bit what the one-token kernel gives for its pair, for weight rows 1..17 (and a tile of
 * 40), activation rows 1..17, row lengths with one or several 8192-element chunks and a tail,
 * odd strides; the decode step's q4_0 rows kernel against vec_dot, and the same for q4_0 rows
 * interleaved by eight (quants_q4_0x8.h) with that layout's round trip. Runs at the best ISA, then
 * again under NF_ISA=avx2 and NF_ISA=scalar (each a child process: the kernel choice is made once
 * per process). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cmocka.h>

#include "quants_impl.h"
#include "quants_q4_0x8.h"
#include "quants_rows.h"

#define MAXR 40 /* weight rows */
#define MAXC 17 /* activation rows */

static uint64_t rng_state = 0x9e3779b97f4a7c15ull;

static float rng_gauss(void)
{
    double a = 0;
    for (int i = 0; i < 4; i++) {
        rng_state ^= rng_state << 13;
        rng_state ^= rng_state >> 7;
        rng_state ^= rng_state << 17;
        a += (double)(rng_state >> 11) / (double)(1ull << 53);
    }
    return (float)((a - 2.0) * 1.7);
}

/* MAXR rows of type t (the weights) and MAXC rows of type yt, n elements each, odd strides. */
static void make(enum nf_type t, enum nf_type yt, int n, char **x, size_t *bx, char **y, size_t *by)
{
    *bx = nf_row_size(t, n) + 8;
    *by = nf_row_size(yt, n) + 4; /* q8_K holds a float: 4-byte aligned rows */
    *x = calloc(MAXR, *bx);
    *y = calloc(MAXC, *by);
    float *src = malloc(sizeof(float) * (size_t)n);
    assert_true(*x && *y && src);
    for (int r = 0; r < MAXR; r++) {
        for (int i = 0; i < n; i++)
            src[i] = rng_gauss() * ((i * 5 + r) % 64 == 0 ? 30.0f : 1.0f);
        nf_type_traits(t)->from_float(src, *x + r * *bx, n);
    }
    for (int c = 0; c < MAXC; c++) {
        for (int i = 0; i < n; i++)
            src[i] = rng_gauss();
        nf_type_traits(yt)->from_float(src, *y + c * *by, n);
    }
    free(src);
}

typedef float (*pair_fn)(enum nf_type t, int n, const void *x, const void *y);

static float pair_vec_dot(enum nf_type t, int n, const void *x, const void *y)
{
    float v;
    nf_type_traits(t)->vec_dot(n, &v, x, y);
    return v;
}

static float pair_ggml(enum nf_type t, int n, const void *x, const void *y)
{
    return nf__ggml_dot_ref(x, y, t == NF_TYPE_F16, n, n);
}

/* Every (nrows, ncols) of interest against the pair kernel, bit for bit. */
static void check_cols(enum nf_type t, enum nf_type yt, nf_vec_dot_mat_fn cols, pair_fn pair, int n)
{
    char *x, *y;
    size_t bx, by;
    make(t, yt, n, &x, &bx, &y, &by);
    float *want = malloc(sizeof(float) * MAXR * MAXC);
    const size_t ld = MAXR + 3; /* wider than the tile */
    float *got = malloc(sizeof(float) * ld * MAXC);
    assert_true(want && got);
    for (int r = 0; r < MAXR; r++)
        for (int c = 0; c < MAXC; c++)
            want[c * MAXR + r] = pair(t, n, x + r * bx, y + c * by);
    static const int rows[] = {1, 2, 3, 4, 5, 7, 8, 9, 16, 17, 33, 40};
    for (size_t ri = 0; ri < sizeof(rows) / sizeof(rows[0]); ri++)
        for (int nc = 1; nc <= MAXC; nc++) {
            const int nr = rows[ri];
            for (size_t i = 0; i < ld * MAXC; i++)
                got[i] = -1234.5f;
            cols(n, got, ld, x, bx, y, by, nr, nc);
            for (int c = 0; c < MAXC; c++)
                for (int r = 0; r < (int)ld; r++) {
                    const float g = got[(size_t)c * ld + r];
                    if (c >= nc || r >= nr) {
                        if (g != -1234.5f)
                            fail_msg("%s n=%d: %dx%d wrote outside at (%d, %d)",
                                     nf_type_traits(t)->name, n, nr, nc, r, c);
                    } else if (memcmp(&g, &want[c * MAXR + r], sizeof(g)) != 0) {
                        fail_msg("%s n=%d isa %s: %dx%d output (%d, %d) = %.9g, one-token "
                                 "kernel %.9g",
                                 nf_type_traits(t)->name, n, nf_isa_name(nf_kernels_isa()), nr, nc,
                                 r, c, (double)g, (double)want[c * MAXR + r]);
                    }
                }
        }
    free(want);
    free(got);
    free(x);
    free(y);
}

static void test_quant_types(void **state)
{
    (void)state;
    static const enum nf_type types[] = {NF_TYPE_Q4_0, NF_TYPE_Q8_0, NF_TYPE_Q4_K, NF_TYPE_Q5_K,
                                         NF_TYPE_Q6_K, NF_TYPE_Q2_K, NF_TYPE_Q3_K, NF_TYPE_MXFP4};
    for (size_t i = 0; i < sizeof(types) / sizeof(types[0]); i++) {
        const enum nf_type t = types[i];
        const struct nf_type_traits *tr = nf_type_traits(t);
        nf_vec_dot_mat_fn cols = nf_vec_dot_cols(t);
        assert_non_null(cols);
        /* One chunk, several chunks with a partial last one, and (32-element blocks) a tail
         * past the last group of four blocks. */
        const int ns32[] = {256, 4096, 32 * (4 * 70 + 3), 11008};
        const int ns256[] = {256, 4096, 256 * 43};
        const bool k = tr->blck_size == 256;
        for (int j = 0; j < (k ? 3 : 4); j++)
            check_cols(t, tr->vec_dot_type, cols, pair_vec_dot, k ? ns256[j] : ns32[j]);
    }
    /* Types without one fall back to vec_dot per pair. */
    assert_null(nf_vec_dot_cols(NF_TYPE_F32));
}

/* The kernel for ffn_down stored by groups of four blocks (nf_vec_dot_cols_gs): the rows of
 * make()'s matrix copied group by group, group k of row r at r * 72 + k * gs (gs wider than
 * the rows' groups, as a whole matrix's is), every output bit for bit the one-token kernel's
 * on the contiguous row. AVX-512 only: NULL at the other ISAs. */
static void test_cols_grouped(void **state)
{
    (void)state;
    const nf_vec_dot_cols_gs_fn fn = nf_vec_dot_cols_gs(NF_TYPE_Q4_0);
    if (nf_kernels_isa() != NF_ISA_AVX512) {
        assert_null(fn);
        return;
    }
    assert_non_null(fn);
    assert_null(nf_vec_dot_cols_gs(NF_TYPE_Q8_0));
    const int ns[] = {128, 4096, 11008}; /* one group; one chunk; two chunks, a partial one */
    for (int j = 0; j < 3; j++) {
        const int n = ns[j], ng = n / 128;
        char *x, *y;
        size_t bx, by;
        make(NF_TYPE_Q4_0, NF_TYPE_Q8_0, n, &x, &bx, &y, &by);
        const size_t gs = MAXR * 72 + 40;
        char *g = calloc((size_t)ng, gs);
        float *want = malloc(sizeof(float) * MAXR * MAXC);
        const size_t ld = MAXR + 3;
        float *got = malloc(sizeof(float) * ld * MAXC);
        assert_true(g && want && got);
        for (int r = 0; r < MAXR; r++)
            for (int k = 0; k < ng; k++)
                memcpy(g + (size_t)k * gs + (size_t)r * 72, x + (size_t)r * bx + (size_t)k * 72,
                       72);
        for (int r = 0; r < MAXR; r++)
            for (int c = 0; c < MAXC; c++)
                want[c * MAXR + r] = pair_vec_dot(NF_TYPE_Q4_0, n, x + r * bx, y + c * by);
        static const int rows[] = {1, 3, 8, 17, 33, 40};
        for (size_t ri = 0; ri < sizeof(rows) / sizeof(rows[0]); ri++)
            for (int nc = 1; nc <= MAXC; nc++) {
                const int nr = rows[ri];
                for (size_t i = 0; i < ld * MAXC; i++)
                    got[i] = -1234.5f;
                fn(n, got, ld, g, 72, gs, y, by, nr, nc);
                for (int c = 0; c < MAXC; c++)
                    for (int r = 0; r < (int)ld; r++) {
                        const float v = got[(size_t)c * ld + r];
                        if (c >= nc || r >= nr) {
                            if (v != -1234.5f)
                                fail_msg("grouped n=%d: %dx%d wrote outside at (%d, %d)", n, nr, nc,
                                         r, c);
                        } else if (memcmp(&v, &want[c * MAXR + r], sizeof(v)) != 0) {
                            fail_msg("grouped n=%d: %dx%d output (%d, %d) = %.9g, one-token "
                                     "kernel %.9g",
                                     n, nr, nc, r, c, (double)v, (double)want[c * MAXR + r]);
                        }
                    }
            }
        free(g);
        free(want);
        free(got);
        free(x);
        free(y);
    }
}

static void test_ggml_dot(void **state)
{
    (void)state;
    const int ns[] = {64, 288, 4096 + 17, 40};
    for (int j = 0; j < 4; j++) {
        check_cols(NF_TYPE_F32, NF_TYPE_F32, nf_ggml_dot_cols(NF_TYPE_F32), pair_ggml, ns[j]);
        check_cols(NF_TYPE_F16, NF_TYPE_F16, nf_ggml_dot_cols(NF_TYPE_F16), pair_ggml, ns[j]);
    }
    assert_null(nf_ggml_dot_cols(NF_TYPE_Q4_0));
}

/* The decode step's rows kernel (nf_vec_dot_rows_exact): for every row count 1..17, 33 and
 * 40, and starting at every row 0..3 (the row ranges threads and tiles take), each output bit
 * for bit vec_dot's for its row; nothing written past the rows asked for. */
static void test_rows_exact(void **state)
{
    (void)state;
    const enum nf_type t = NF_TYPE_Q4_0;
    const struct nf_type_traits *tr = nf_type_traits(t);
    nf_vec_dot_rows_fn rows = nf_vec_dot_rows_exact(t);
    assert_non_null(rows);
    const int ns[] = {32, 128, 256, 4096, 32 * (4 * 70 + 3), 11008};
    for (size_t j = 0; j < sizeof(ns) / sizeof(ns[0]); j++) {
        const int n = ns[j];
        char *x, *y;
        size_t bx, by;
        make(t, tr->vec_dot_type, n, &x, &bx, &y, &by);
        float want[MAXR], got[MAXR + 1];
        for (int r = 0; r < MAXR; r++)
            tr->vec_dot(n, &want[r], x + r * bx, y);
        for (int r0 = 0; r0 < 4; r0++)
            for (int nr = 1; r0 + nr <= MAXR; nr++) {
                if (nr > 17 && nr != 33 && nr != MAXR - r0)
                    continue;
                for (int r = 0; r <= MAXR; r++)
                    got[r] = -1234.5f;
                rows(n, got, bx, x + r0 * bx, y, nr);
                for (int r = 0; r <= nr; r++) {
                    if (r == nr) {
                        if (got[r] != -1234.5f)
                            fail_msg("q4_0 n=%d rows %d+%d wrote past its rows", n, r0, nr);
                    } else if (memcmp(&got[r], &want[r0 + r], sizeof(float)) != 0) {
                        fail_msg("q4_0 n=%d isa %s: rows %d+%d, row %d = %.9g, vec_dot %.9g", n,
                                 nf_isa_name(nf_kernels_isa()), r0, nr, r0 + r, (double)got[r],
                                 (double)want[r0 + r]);
                    }
                }
            }
        free(x);
        free(y);
    }
    /* Types whose rows kernel would be vec_dot row by row have none. */
    assert_null(nf_vec_dot_rows_exact(NF_TYPE_F32));
}

/* The interleaved q4_0 layout: unpacking any row range gives back the GGUF's bytes, and the
 * decode kernel gives every row, from every block of eight rows, the bits of vec_dot on the
 * row as the GGUF stores it, writing nothing past its rows. Only where the AVX-512 kernels
 * run (elsewhere no tensor takes the layout, which nf_q4_0x8_ok says). */
static void test_q4_0x8(void **state)
{
    (void)state;
    const enum nf_type t = NF_TYPE_Q4_0;
    const struct nf_type_traits *tr = nf_type_traits(t);
    if (nf_kernels_isa() != NF_ISA_AVX512) {
        assert_false(nf_q4_0x8_ok(4096, 4096));
        return;
    }
    assert_false(nf_q4_0x8_ok(4096 + 32, 8));
    assert_false(nf_q4_0x8_ok(4096, 12));
    assert_false(nf_q4_0x8_ok(128 * (NF_Q4_0X8_MAX_GROUPS + 1), 8));
    /* One group; one chunk; a second chunk of 1, 3 (odd: the last group alone) and 22
     * groups. */
    const int ns[] = {128, 4096, 128 * 65, 128 * 67, 11008};
    for (size_t j = 0; j < sizeof(ns) / sizeof(ns[0]); j++) {
        const int n = ns[j];
        assert_true(nf_q4_0x8_ok(n, MAXR));
        char *x, *y;
        size_t bx, by;
        make(t, tr->vec_dot_type, n, &x, &bx, &y, &by);
        const size_t rs = nf_row_size(t, n);
        void *plain = NULL, *packed = NULL, *back = malloc(MAXR * rs), *tmp = malloc(8 * rs);
        assert_int_equal(posix_memalign(&plain, 64, MAXR * rs), 0);
        assert_int_equal(posix_memalign(&packed, 64, MAXR * rs), 0);
        assert_true(back && tmp);
        for (int r = 0; r < MAXR; r++)
            memcpy((char *)plain + r * rs, x + r * bx, rs);
        memcpy(packed, plain, MAXR * rs);
        nf_q4_0x8_repack(packed, n, MAXR, tmp);
        assert_true(memcmp(packed, plain, MAXR * rs) != 0);
        for (int r0 = 0; r0 < MAXR; r0 += 8)
            for (int r1 = r0 + 1; r1 <= MAXR; r1 += 3) {
                memset(back, 0x5a, MAXR * rs);
                nf_q4_0x8_unpack(back, packed, n, r0, r1);
                if (memcmp(back, (char *)plain + r0 * rs, (size_t)(r1 - r0) * rs) != 0)
                    fail_msg("q4_0x8 n=%d: rows %d..%d do not unpack to the GGUF's", n, r0, r1);
            }
        float want[MAXR], got[MAXR + 1];
        for (int r = 0; r < MAXR; r++)
            tr->vec_dot(n, &want[r], (char *)plain + r * rs, y);
        for (int r0 = 0; r0 < MAXR; r0 += 8)
            for (int nr = 8; r0 + nr <= MAXR; nr += 8) {
                for (int r = 0; r <= MAXR; r++)
                    got[r] = -1234.5f;
                nf__vec_dot_q4_0x8_q8_0_avx512(n, got, (char *)packed + r0 * rs, y, nr);
                if (got[nr] != -1234.5f)
                    fail_msg("q4_0x8 n=%d rows %d+%d wrote past its rows", n, r0, nr);
                for (int r = 0; r < nr; r++)
                    if (memcmp(&got[r], &want[r0 + r], sizeof(float)) != 0)
                        fail_msg("q4_0x8 n=%d: rows %d+%d, row %d = %.9g, vec_dot %.9g", n, r0, nr,
                                 r0 + r, (double)got[r], (double)want[r0 + r]);
            }
        free(plain);
        free(packed);
        free(back);
        free(tmp);
        free(x);
        free(y);
    }
}

/* The same tests under a lower ISA, in a child process. */
static int run_isa(const char *isa)
{
    pid_t pid = fork();
    if (pid == 0) {
        setenv("NF_ISA", isa, 1);
        execl("/proc/self/exe", "test_quants_rows", (char *)NULL);
        _exit(127);
    }
    int st = 0;
    if (pid < 0 || waitpid(pid, &st, 0) != pid || !WIFEXITED(st))
        return 1;
    return WEXITSTATUS(st);
}

int main(void)
{
    nf_kernels_init();
    printf("kernels: %s\n", nf_isa_name(nf_kernels_isa()));
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_quant_types), cmocka_unit_test(test_cols_grouped),
        cmocka_unit_test(test_ggml_dot),    cmocka_unit_test(test_rows_exact),
        cmocka_unit_test(test_q4_0x8),
    };
    int rc = cmocka_run_group_tests(tests, NULL, NULL);
    if (!getenv("NF_ISA")) {
        if (nf_cpu_best_isa() > NF_ISA_AVX2)
            rc |= run_isa("avx2");
        rc |= run_isa("scalar");
    }
    return rc;
}
