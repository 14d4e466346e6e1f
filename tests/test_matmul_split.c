/* test_matmul_split.c - a token's result of a multi-token product (the vec_dot_mat of prompt
 * chunks) does not depend on the call it is in: for every type the prompt GEMM dispatch serves
 * (nf_matmul: f32, f16, bf16, q4_0 and its packed path, q8_0, the K-quants, the types of
 * quants_ext.c, mxfp4), at every ISA, each output of a 300-token product is bit for bit the
 * same as in the product's tokens split into calls of other sizes (2 + 5 + 293, 152 + 148,
 * 153 + 147, 1 + 150 + 149, 64 x 4 + 44), with the weight rows split between 1 and 2 threads
 * as nf_matmul_run splits them (chunks of 16 rows claimed in turn). This is what lets a KV slot
 * keep a prompt whose last chunk was shorter than the ubatch (daemons/compute/gen.h): the cells
 * of a position do not depend on how many tokens its chunk had. */
#include <setjmp.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "quants_impl.h"
#include "threadpool.h"

#define NTOK 300  /* tokens of the whole product */
#define NROW 40   /* weight rows: two full q4_0 panels of 16 and a partial one */
#define NEL  2048 /* row length: 64 q4_0 blocks, 8 K-quant super-blocks */

static const enum nf_type types[] = {NF_TYPE_F32,  NF_TYPE_F16,  NF_TYPE_BF16,   NF_TYPE_Q4_0,
                                     NF_TYPE_Q8_0, NF_TYPE_Q4_K, NF_TYPE_Q5_K,   NF_TYPE_Q6_K,
                                     NF_TYPE_Q4_1, NF_TYPE_Q5_0, NF_TYPE_Q5_1,   NF_TYPE_IQ4_NL,
                                     NF_TYPE_Q2_K, NF_TYPE_Q3_K, NF_TYPE_IQ4_XS, NF_TYPE_MXFP4};

/* Token splits compared with the whole product: sizes summing to NTOK, 0-terminated. */
static const int splits[][8] = {
    {2, 5, 293}, {152, 148}, {153, 147}, {1, 150, 149}, {64, 64, 64, 64, 44}};

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

/* One product to run: weights x (NROW rows of bx bytes), activations y (tokens t0..t0+nc of
 * by bytes each, or packed for the q4_0 GEMM), outputs s (ld NROW). */
struct job {
    nf_vec_dot_mat_fn f;
    const char *x, *y;
    size_t bx, by;
    float *s;
    int nc;
    atomic_int next;
};

/* nf_matmul_run's split (common/model_forward.c): rows claimed in chunks of a multiple of 16,
 * about four a thread. */
static void run_rows(void *arg, int ith, int nth)
{
    (void)ith;
    struct job *j = arg;
    int per = (NROW + 4 * nth - 1) / (4 * nth);
    per = (per + 15) / 16 * 16;
    for (;;) {
        const int r0 = atomic_fetch_add(&j->next, per);
        if (r0 >= NROW)
            return;
        const int r1 = r0 + per < NROW ? r0 + per : NROW;
        j->f(NEL, j->s + r0, NROW, j->x + (size_t)r0 * j->bx, j->bx, j->y, j->by, r1 - r0, j->nc);
    }
}

/* The product of tokens [t0, t0 + nc) into out (ld NROW) on nth threads: activations quantized
 * row by row (yq, by apart), or packed by pack from the floats yf. */
static void product(struct nf_threadpool *pool, int nth, nf_vec_dot_mat_fn f, nf_q4_0_pack_fn pack,
                    const char *x, size_t bx, const char *yq, size_t by, const float *yf, int t0,
                    int nc, float *out)
{
    struct job j = {.f = f, .x = x, .bx = bx, .by = by, .s = out + (size_t)t0 * NROW, .nc = nc};
    void *buf = NULL;
    if (pack) {
        buf = malloc(nf_q4_0_packed_bytes(NEL, nc));
        assert_non_null(buf);
        pack(yf + (size_t)t0 * NEL, NEL, nc, nf_from_float_for(NF_TYPE_Q8_0, NF_ISA_AVX2), buf);
        j.y = buf;
    } else {
        j.y = yq + (size_t)t0 * by;
    }
    atomic_init(&j.next, 0);
    nf_threadpool_run(pool, run_rows, &j, nth);
    free(buf);
}

/* Compares every split of one kernel with its whole product; returns the outputs compared. */
static long check_kernel(struct nf_threadpool *pool, enum nf_type t, enum nf_isa isa,
                         nf_vec_dot_mat_fn f, nf_q4_0_pack_fn pack, const char *x, size_t bx,
                         const char *yq, size_t by, const float *yf)
{
    const size_t nout = (size_t)NTOK * NROW;
    float *whole = malloc(sizeof(float) * nout), *part = malloc(sizeof(float) * nout);
    assert_true(whole && part);
    long compared = 0;
    for (int nth = 1; nth <= 2; nth++) {
        product(pool, nth, f, pack, x, bx, yq, by, yf, 0, NTOK, whole);
        for (size_t si = 0; si < sizeof(splits) / sizeof(splits[0]); si++) {
            memset(part, 0xff, sizeof(float) * nout);
            int t0 = 0;
            for (int k = 0; splits[si][k]; k++) {
                product(pool, nth, f, pack, x, bx, yq, by, yf, t0, splits[si][k], part);
                t0 += splits[si][k];
            }
            assert_int_equal(t0, NTOK);
            for (int c = 0; c < NTOK; c++)
                for (int r = 0; r < NROW; r++) {
                    const size_t i = (size_t)c * NROW + r;
                    if (memcmp(&whole[i], &part[i], sizeof(float)) != 0)
                        fail_msg("%s %s%s, %d thread(s), split %zu: token %d row %d: %.9g in "
                                 "the %d-token call, %.9g in the split",
                                 nf_type_traits(t)->name, nf_isa_name(isa), pack ? " packed" : "",
                                 nth, si, c, r, whole[i], part[i], NTOK);
                }
            compared += (long)nout;
        }
    }
    free(whole);
    free(part);
    return compared;
}

static void test_split_invariance(void **state)
{
    (void)state;
    struct nf_threadpool *pool;
    assert_int_equal(nf_threadpool_create(&pool, 2), 0);
    long compared = 0;
    int kernels = 0;
    float *src = malloc(sizeof(float) * NEL);
    float *yf = malloc(sizeof(float) * (size_t)NTOK * NEL);
    assert_true(src && yf);
    for (size_t i = 0; i < (size_t)NTOK * NEL; i++)
        yf[i] = rng_gauss();
    for (size_t ti = 0; ti < sizeof(types) / sizeof(types[0]); ti++) {
        const enum nf_type t = types[ti];
        const struct nf_type_traits *tr = nf_type_traits(t);
        const enum nf_type yt = tr->vec_dot_type;
        const size_t bx = nf_row_size(t, NEL), by = nf_row_size(yt, NEL);
        char *x = malloc(bx * NROW), *yq = malloc(by * NTOK);
        assert_true(x && yq);
        for (int r = 0; r < NROW; r++) {
            for (int i = 0; i < NEL; i++)
                src[i] = rng_gauss() * ((i * 7 + r) % 64 == 0 ? 30.0f : 1.0f);
            tr->from_float(src, x + (size_t)r * bx, NEL);
        }
        for (int c = 0; c < NTOK; c++)
            nf_type_traits(yt)->from_float(yf + (size_t)c * NEL, yq + (size_t)c * by, NEL);
        for (int isa = NF_ISA_SCALAR; isa <= (int)nf_cpu_best_isa(); isa++) {
            nf_vec_dot_mat_fn f = nf_vec_dot_mat_for(t, (enum nf_isa)isa);
            if (f) {
                compared += check_kernel(pool, t, (enum nf_isa)isa, f, NULL, x, bx, yq, by, yf);
                kernels++;
            }
            nf_q4_0_pack_fn pack;
            nf_vec_dot_mat_fn packed;
            if (t == NF_TYPE_Q4_0 && nf_q4_0_packed((enum nf_isa)isa, &pack, &packed)) {
                compared +=
                    check_kernel(pool, t, (enum nf_isa)isa, packed, pack, x, bx, yq, by, yf);
                kernels++;
            }
        }
        free(x);
        free(yq);
    }
    free(src);
    free(yf);
    nf_threadpool_free(pool);
    print_message("%d kernels, %ld outputs compared\n", kernels, compared);
    assert_true(kernels >= (int)(sizeof(types) / sizeof(types[0])));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_split_invariance),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
