/* cpu.c - CPUID/XGETBV detection and the run-time choice of quant kernels (NF_ISA caps it). */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#if defined(__x86_64__) || defined(__i386__)
#include <cpuid.h>
#define NF_X86 1
#endif

#include "quants_impl.h"

#if NF_X86
static uint64_t xgetbv0(void)
{
    uint32_t lo, hi;
    __asm__ volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
    return ((uint64_t)hi << 32) | lo;
}
#endif

/* AVX2 needs AVX2, FMA and F16C from CPUID and the OS saving YMM state (XCR0 bits 1-2);
 * AVX-512 needs F, BW, VL, DQ, VNNI and the OS saving opmask and ZMM state (XCR0 bits 5-7).
 * A CPU that has the instructions but runs under an OS that does not enable the state would
 * fault on the first instruction, hence the XGETBV checks. */
static enum nf_isa detect_isa(void)
{
#if NF_X86
    unsigned a, b, c, d;
    if (!__get_cpuid(1, &a, &b, &c, &d))
        return NF_ISA_SCALAR;
    bool fma = c & (1u << 12), osxsave = c & (1u << 27), avx = c & (1u << 28);
    bool f16c = c & (1u << 29);
    if (!osxsave || !avx || !fma || !f16c)
        return NF_ISA_SCALAR;
    uint64_t xcr0 = xgetbv0();
    if ((xcr0 & 0x6) != 0x6)
        return NF_ISA_SCALAR;
    if (!__get_cpuid_count(7, 0, &a, &b, &c, &d))
        return NF_ISA_SCALAR;
    if (!(b & (1u << 5)))
        return NF_ISA_SCALAR;
    bool f = b & (1u << 16), dq = b & (1u << 17), bw = b & (1u << 30), vl = b & (1u << 31);
    bool vnni = c & (1u << 11);
    if (f && dq && bw && vl && vnni && (xcr0 & 0xe6) == 0xe6)
        return NF_ISA_AVX512;
    return NF_ISA_AVX2;
#else
    return NF_ISA_SCALAR;
#endif
}

/* AVX512-BF16 (vdpbf16ps): CPUID leaf 7 subleaf 1, EAX bit 5, on top of the AVX-512 level. */
static bool detect_avx512bf16(void)
{
#if NF_X86
    unsigned a, b, c, d;
    if (!__get_cpuid_count(7, 1, &a, &b, &c, &d))
        return false;
    return a & (1u << 5);
#else
    return false;
#endif
}

static pthread_once_t cpu_once = PTHREAD_ONCE_INIT;
static enum nf_isa cpu_isa;
static bool cpu_bf16;

static void cpu_init(void)
{
    cpu_isa = detect_isa();
    cpu_bf16 = cpu_isa == NF_ISA_AVX512 && detect_avx512bf16();
}

bool nf_cpu_has_avx512bf16(void)
{
    pthread_once(&cpu_once, cpu_init);
    return cpu_bf16;
}

enum nf_isa nf_cpu_best_isa(void)
{
    pthread_once(&cpu_once, cpu_init);
    return cpu_isa;
}

const char *nf_isa_name(enum nf_isa isa)
{
    switch (isa) {
    case NF_ISA_SCALAR: return "scalar";
    case NF_ISA_AVX2: return "avx2";
    case NF_ISA_AVX512: return "avx512";
    default: return "unknown";
    }
}

/* Multi-row kernels made of single-row ones, for types and ISAs without a dedicated one.
 * (AVX2 kernels that interleave 4 rows were tried: streaming 4 rows at once ran at half the
 * bandwidth of one row at a time on Zen 5, so AVX2 goes row by row.) */
#define ROWS_FROM(fn)                                                                          \
    static void fn##_rows(int n, float *s, size_t bs, const void *x, const void *y, int nrows) \
    {                                                                                          \
        for (int r = 0; r < nrows; r++)                                                        \
            fn(n, s + r, (const char *)x + (size_t)r * bs, y);                                 \
    }

ROWS_FROM(nf__vec_dot_f32_ref)
ROWS_FROM(nf__vec_dot_f16_ref)
ROWS_FROM(nf__vec_dot_bf16_ref)
ROWS_FROM(nf__vec_dot_q4_0_q8_0_ref)
ROWS_FROM(nf__vec_dot_q8_0_q8_0_ref)
ROWS_FROM(nf__vec_dot_q4_K_q8_K_ref)
ROWS_FROM(nf__vec_dot_q5_K_q8_K_ref)
ROWS_FROM(nf__vec_dot_q6_K_q8_K_ref)
ROWS_FROM(nf__vec_dot_q8_K_q8_K_ref)
ROWS_FROM(nf__vec_dot_f32_avx2)
ROWS_FROM(nf__vec_dot_f16_avx2)
ROWS_FROM(nf__vec_dot_bf16_avx2)
ROWS_FROM(nf__vec_dot_q4_0_q8_0_avx2)
ROWS_FROM(nf__vec_dot_q8_0_q8_0_avx2)
ROWS_FROM(nf__vec_dot_q4_K_q8_K_avx2)
ROWS_FROM(nf__vec_dot_q5_K_q8_K_avx2)
ROWS_FROM(nf__vec_dot_q6_K_q8_K_avx2)
ROWS_FROM(nf__vec_dot_f32_avx512)
ROWS_FROM(nf__vec_dot_f16_avx512)
/* The types of quants_ext.c have a kernel in every tier. */
#define ROWS_FROM_ALL(fn) ROWS_FROM(fn##_ref) ROWS_FROM(fn##_avx2) ROWS_FROM(fn##_avx512)
ROWS_FROM_ALL(nf__vec_dot_q4_1_q8_1)
ROWS_FROM_ALL(nf__vec_dot_q5_0_q8_0)
ROWS_FROM_ALL(nf__vec_dot_q5_1_q8_1)
ROWS_FROM_ALL(nf__vec_dot_iq4_nl_q8_0)
ROWS_FROM_ALL(nf__vec_dot_q2_K_q8_K)
ROWS_FROM_ALL(nf__vec_dot_q3_K_q8_K)
ROWS_FROM_ALL(nf__vec_dot_iq4_xs_q8_K)
ROWS_FROM_ALL(nf__vec_dot_mxfp4_q8_0)

/* Per type and ISA: the paths specific to that ISA. The AVX-512 q8_0 kernel prepares the
 * activation per call, which only pays off over several rows, so single-row q8_0 stays AVX2.
 * Per type and ISA: the paths specific to that ISA (NULL: none, use a lower ISA's).
 * from_float is indexed by the activation type it produces. */
struct kernel_set {
    nf_vec_dot_fn vec_dot[NF_ISA_COUNT];
    nf_vec_dot_rows_fn rows[NF_ISA_COUNT];
    nf_from_float_fn from_float[NF_ISA_COUNT];
    nf_vec_dot_mat_fn mat[NF_ISA_COUNT];
};

#define K3(ref, avx2, avx512) \
    {                         \
        ref, avx2, avx512     \
    }

#define EXT_KERNELS(fn)                                              \
    {                                                                \
        .vec_dot = K3(fn##_ref, fn##_avx2, fn##_avx512),             \
        .rows = K3(fn##_ref_rows, fn##_avx2_rows, fn##_avx512_rows), \
        .mat = K3(fn##_ref_mat, fn##_avx2_mat, fn##_avx512_mat)      \
    }
/* The same with register-blocked multi-token kernels (quants_mat_ext_avx2.c,
 * quants_mat_ext_avx512.c, quants_mat_avx512.c). */
#define EXT_KERNELS_MAT(fn)                                          \
    {                                                                \
        .vec_dot = K3(fn##_ref, fn##_avx2, fn##_avx512),             \
        .rows = K3(fn##_ref_rows, fn##_avx2_rows, fn##_avx512_rows), \
        .mat = K3(fn##_ref_mat, fn##_mat_avx2, fn##_mat_avx512)      \
    }

static const struct kernel_set kernels[NF_TYPE_COUNT] = {
    [NF_TYPE_F32] = {.vec_dot =
                         K3(nf__vec_dot_f32_ref, nf__vec_dot_f32_avx2, nf__vec_dot_f32_avx512),
                     .rows = K3(nf__vec_dot_f32_ref_rows, nf__vec_dot_f32_avx2_rows,
                                nf__vec_dot_f32_avx512_rows),
                     .mat = K3(nf__vec_dot_f32_mat_ref, nf__vec_dot_f32_mat_avx2,
                               nf__vec_dot_f32_mat_avx512)},
    [NF_TYPE_F16] = {.vec_dot =
                         K3(nf__vec_dot_f16_ref, nf__vec_dot_f16_avx2, nf__vec_dot_f16_avx512),
                     .rows = K3(nf__vec_dot_f16_ref_rows, nf__vec_dot_f16_avx2_rows,
                                nf__vec_dot_f16_avx512_rows),
                     .from_float = K3(nf__quantize_row_f16_ref, nf__quantize_row_f16_avx2, NULL),
                     .mat = K3(nf__vec_dot_f16_mat_ref, nf__vec_dot_f16_mat_avx2,
                               nf__vec_dot_f16_mat_avx512)},
    [NF_TYPE_BF16] = {.vec_dot = K3(nf__vec_dot_bf16_ref, nf__vec_dot_bf16_avx2, NULL),
                      .rows = K3(nf__vec_dot_bf16_ref_rows, nf__vec_dot_bf16_avx2_rows, NULL),
                      .from_float = K3(nf__quantize_row_bf16_ref, nf__quantize_row_bf16_avx2, NULL),
                      /* AVX-512 only with AVX512-BF16 (mat_paths) */
                      .mat = K3(nf__vec_dot_bf16_mat_ref, nf__vec_dot_bf16_mat_avx2,
                                nf__vec_dot_bf16_mat_avx512bf16)},
    [NF_TYPE_Q4_0] = {.vec_dot = K3(nf__vec_dot_q4_0_q8_0_ref, nf__vec_dot_q4_0_q8_0_avx2,
                                    nf__vec_dot_q4_0_q8_0_avx512),
                      .rows = K3(nf__vec_dot_q4_0_q8_0_ref_rows, nf__vec_dot_q4_0_q8_0_avx2_rows,
                                 nf__vec_dot_q4_0_q8_0_rows_avx512),
                      .mat = K3(nf__vec_dot_q4_0_q8_0_ref_mat, nf__vec_dot_q4_0_q8_0_mat_avx2,
                                nf__vec_dot_q4_0_q8_0_mat_avx512)},
    [NF_TYPE_Q8_0] = {.vec_dot = K3(nf__vec_dot_q8_0_q8_0_ref, nf__vec_dot_q8_0_q8_0_avx2, NULL),
                      .rows = K3(nf__vec_dot_q8_0_q8_0_ref_rows, nf__vec_dot_q8_0_q8_0_avx2_rows,
                                 nf__vec_dot_q8_0_q8_0_rows_avx512),
                      .from_float = K3(nf__quantize_row_q8_0_ref, nf__quantize_row_q8_0_avx2, NULL),
                      .mat = K3(nf__vec_dot_q8_0_q8_0_ref_mat, nf__vec_dot_q8_0_q8_0_mat_avx2,
                                nf__vec_dot_q8_0_q8_0_mat_avx512)},
    [NF_TYPE_Q4_K] = {.vec_dot = K3(nf__vec_dot_q4_K_q8_K_ref, nf__vec_dot_q4_K_q8_K_avx2, NULL),
                      .rows =
                          K3(nf__vec_dot_q4_K_q8_K_ref_rows, nf__vec_dot_q4_K_q8_K_avx2_rows, NULL),
                      .mat = K3(nf__vec_dot_q4_K_q8_K_ref_mat, nf__vec_dot_q4_K_q8_K_mat_avx2,
                                nf__vec_dot_q4_K_q8_K_mat_avx512)},
    [NF_TYPE_Q5_K] = {.vec_dot = K3(nf__vec_dot_q5_K_q8_K_ref, nf__vec_dot_q5_K_q8_K_avx2, NULL),
                      .rows =
                          K3(nf__vec_dot_q5_K_q8_K_ref_rows, nf__vec_dot_q5_K_q8_K_avx2_rows, NULL),
                      .mat = K3(nf__vec_dot_q5_K_q8_K_ref_mat, nf__vec_dot_q5_K_q8_K_mat_avx2,
                                nf__vec_dot_q5_K_q8_K_mat_avx512)},
    [NF_TYPE_Q6_K] = {.vec_dot = K3(nf__vec_dot_q6_K_q8_K_ref, nf__vec_dot_q6_K_q8_K_avx2, NULL),
                      .rows =
                          K3(nf__vec_dot_q6_K_q8_K_ref_rows, nf__vec_dot_q6_K_q8_K_avx2_rows, NULL),
                      .mat = K3(nf__vec_dot_q6_K_q8_K_ref_mat, nf__vec_dot_q6_K_q8_K_mat_avx2,
                                nf__vec_dot_q6_K_q8_K_mat_avx512)},
    [NF_TYPE_Q8_K] = {.vec_dot = K3(nf__vec_dot_q8_K_q8_K_ref, NULL, NULL),
                      .rows = K3(nf__vec_dot_q8_K_q8_K_ref_rows, NULL, NULL),
                      .mat = K3(nf__vec_dot_q8_K_q8_K_ref_mat, NULL, NULL),
                      .from_float =
                          K3(nf__quantize_row_q8_K_ref, nf__quantize_row_q8_K_avx2, NULL)},
    /* The types of quants_ext.c: a kernel in every tier. q8_1 is only an activation type. */
    [NF_TYPE_Q4_1] = EXT_KERNELS_MAT(nf__vec_dot_q4_1_q8_1),
    [NF_TYPE_Q5_0] = EXT_KERNELS_MAT(nf__vec_dot_q5_0_q8_0),
    [NF_TYPE_Q5_1] = EXT_KERNELS_MAT(nf__vec_dot_q5_1_q8_1),
    [NF_TYPE_IQ4_NL] = EXT_KERNELS_MAT(nf__vec_dot_iq4_nl_q8_0),
    [NF_TYPE_Q2_K] = EXT_KERNELS_MAT(nf__vec_dot_q2_K_q8_K),
    [NF_TYPE_Q3_K] = EXT_KERNELS_MAT(nf__vec_dot_q3_K_q8_K),
    [NF_TYPE_IQ4_XS] = EXT_KERNELS_MAT(nf__vec_dot_iq4_xs_q8_K),
    [NF_TYPE_MXFP4] = EXT_KERNELS(nf__vec_dot_mxfp4_q8_0),
    [NF_TYPE_Q8_1] = {.from_float =
                          K3(nf__quantize_row_q8_1_ref, nf__quantize_row_q8_1_avx2, NULL)},
};

/* The multi-token paths of type t: bf16's AVX-512 one needs AVX512-BF16 as well. */
static void mat_paths(enum nf_type t, nf_vec_dot_mat_fn out[NF_ISA_COUNT])
{
    for (int i = 0; i < NF_ISA_COUNT; i++)
        out[i] = kernels[t].mat[i];
    if (t == NF_TYPE_BF16 && !nf_cpu_has_avx512bf16())
        out[NF_ISA_AVX512] = NULL;
}

static pthread_once_t kernels_once = PTHREAD_ONCE_INIT;
static enum nf_isa kernels_isa;

/* The path of the highest ISA <= isa that exists in fns (the scalar one always does). */
#define BEST_UPTO(fns, isa)          \
    ({                               \
        int i_ = (int)(isa);         \
        while (i_ > 0 && !(fns)[i_]) \
            i_--;                    \
        (fns)[i_];                   \
    })

static void kernels_init(void)
{
    enum nf_isa isa = nf_cpu_best_isa();
    const char *cap = getenv("NF_ISA");
    if (cap && *cap) {
        enum nf_isa want = NF_ISA_COUNT;
        for (int i = 0; i < NF_ISA_COUNT; i++)
            if (strcmp(cap, nf_isa_name((enum nf_isa)i)) == 0)
                want = (enum nf_isa)i;
        if (want == NF_ISA_COUNT)
            fprintf(stderr, "nanoflow: NF_ISA=%s ignored: expected scalar, avx2 or avx512\n", cap);
        else if (want < isa)
            isa = want;
    }
    kernels_isa = isa;
    for (int t = 0; t < NF_TYPE_COUNT; t++) {
        const struct kernel_set *k = &kernels[t];
        if (k->vec_dot[0]) {
            nf__traits[t].vec_dot = BEST_UPTO(k->vec_dot, isa);
            nf__traits[t].vec_dot_rows = BEST_UPTO(k->rows, isa);
            nf_vec_dot_mat_fn mat[NF_ISA_COUNT];
            mat_paths((enum nf_type)t, mat);
            nf__traits[t].vec_dot_mat = BEST_UPTO(mat, isa);
        }
        if (k->from_float[0])
            nf__traits[t].from_float_act = BEST_UPTO(k->from_float, isa);
        else if (nf__traits[t].compute)
            nf__traits[t].from_float_act = nf__traits[t].from_float;
    }
}

void nf_kernels_init(void)
{
    pthread_once(&kernels_once, kernels_init);
}

enum nf_isa nf_kernels_isa(void)
{
    nf_kernels_init();
    return kernels_isa;
}

static bool valid(enum nf_type t, enum nf_isa isa)
{
    return (int)t >= 0 && t < NF_TYPE_COUNT && (int)isa >= 0 && isa < NF_ISA_COUNT &&
           isa <= nf_cpu_best_isa();
}

nf_vec_dot_fn nf_vec_dot_for(enum nf_type t, enum nf_isa isa)
{
    return valid(t, isa) ? kernels[t].vec_dot[isa] : NULL;
}

nf_from_float_fn nf_from_float_for(enum nf_type t, enum nf_isa isa)
{
    return valid(t, isa) ? kernels[t].from_float[isa] : NULL;
}

nf_vec_dot_rows_fn nf_vec_dot_rows_for(enum nf_type t, enum nf_isa isa)
{
    return valid(t, isa) ? kernels[t].rows[isa] : NULL;
}

nf_vec_dot_mat_fn nf_vec_dot_mat_for(enum nf_type t, enum nf_isa isa)
{
    if (!valid(t, isa))
        return NULL;
    nf_vec_dot_mat_fn mat[NF_ISA_COUNT];
    mat_paths(t, mat);
    return mat[isa];
}

bool nf_q4_0_packed(enum nf_isa isa, nf_q4_0_pack_fn *pack, nf_vec_dot_mat_fn *mat)
{
    if (!valid(NF_TYPE_Q4_0, isa) || isa < NF_ISA_AVX2)
        return false;
    *pack = nf__q4_0_pack_act_avx2;
    *mat = isa >= NF_ISA_AVX512 ? nf__vec_dot_q4_0_packed_mat_avx512
                                : nf__vec_dot_q4_0_packed_mat_avx2;
    return true;
}

size_t nf_q4_0_packed_bytes(int64_t n, int ncols)
{
    return (size_t)(n / 32) * (size_t)ncols * 40; /* struct y_blk, quants_mat_q4_0_impl.h */
}
