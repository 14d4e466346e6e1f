/* quants.h - GGML tensor types: block layouts, type traits, conversion and dot-product kernels.
 *
 * Block layouts are bit-identical to ggml's (ggml-common.h) so GGUF tensor data is used as is.
 * Every kernel exists as a portable scalar reference; AVX2 and AVX-512 paths are chosen at run
 * time from CPUID and are tested against the reference (tests/test_quants.c). */
#ifndef NF_QUANTS_H
#define NF_QUANTS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* ggml_type numbering, as stored in GGUF tensor infos. Gaps are retired ggml types. */
enum nf_type {
    NF_TYPE_F32 = 0,
    NF_TYPE_F16 = 1,
    NF_TYPE_Q4_0 = 2,
    NF_TYPE_Q4_1 = 3,
    NF_TYPE_Q5_0 = 6,
    NF_TYPE_Q5_1 = 7,
    NF_TYPE_Q8_0 = 8,
    NF_TYPE_Q8_1 = 9,
    NF_TYPE_Q2_K = 10,
    NF_TYPE_Q3_K = 11,
    NF_TYPE_Q4_K = 12,
    NF_TYPE_Q5_K = 13,
    NF_TYPE_Q6_K = 14,
    NF_TYPE_Q8_K = 15,
    NF_TYPE_IQ2_XXS = 16,
    NF_TYPE_IQ2_XS = 17,
    NF_TYPE_IQ3_XXS = 18,
    NF_TYPE_IQ1_S = 19,
    NF_TYPE_IQ4_NL = 20,
    NF_TYPE_IQ3_S = 21,
    NF_TYPE_IQ2_S = 22,
    NF_TYPE_IQ4_XS = 23,
    NF_TYPE_I8 = 24,
    NF_TYPE_I16 = 25,
    NF_TYPE_I32 = 26,
    NF_TYPE_I64 = 27,
    NF_TYPE_F64 = 28,
    NF_TYPE_IQ1_M = 29,
    NF_TYPE_BF16 = 30,
    NF_TYPE_TQ1_0 = 34,
    NF_TYPE_TQ2_0 = 35,
    NF_TYPE_MXFP4 = 39,
    NF_TYPE_COUNT = 40,
};

typedef uint16_t nf_fp16_t;
typedef uint16_t nf_bf16_t;

#define NF_QK4_0        32
#define NF_QK8_0        32
#define NF_QK_K         256
#define NF_K_SCALE_SIZE 12

/* Legacy 4-bit: x = d * (q - 8), q in [0, 15]; low nibbles hold elements 0..15, high 16..31. */
typedef struct {
    nf_fp16_t d;
    uint8_t qs[NF_QK4_0 / 2];
} nf_block_q4_0;
_Static_assert(sizeof(nf_block_q4_0) == 2 + NF_QK4_0 / 2, "wrong q4_0 block size");

/* Legacy 8-bit: x = d * q. Also the activation type for Q4_0/Q8_0 dot products. */
typedef struct {
    nf_fp16_t d;
    int8_t qs[NF_QK8_0];
} nf_block_q8_0;
_Static_assert(sizeof(nf_block_q8_0) == 2 + NF_QK8_0, "wrong q8_0 block size");

/* Legacy 4-bit with a minimum: x = d * q + m, q in [0, 15]; nibbles ordered as in q4_0. */
typedef struct {
    nf_fp16_t d;
    nf_fp16_t m;
    uint8_t qs[NF_QK4_0 / 2];
} nf_block_q4_1;
_Static_assert(sizeof(nf_block_q4_1) == 4 + NF_QK4_0 / 2, "wrong q4_1 block size");

/* Legacy 5-bit: x = d * (q - 16); the low four bits as in q4_0, the fifth bit of element j is
 * bit j of qh (read as a little-endian 32-bit word). */
typedef struct {
    nf_fp16_t d;
    uint8_t qh[4];
    uint8_t qs[NF_QK4_0 / 2];
} nf_block_q5_0;
_Static_assert(sizeof(nf_block_q5_0) == 2 + 4 + NF_QK4_0 / 2, "wrong q5_0 block size");

/* Legacy 5-bit with a minimum: x = d * q + m, q in [0, 31], bits as in q5_0. */
typedef struct {
    nf_fp16_t d;
    nf_fp16_t m;
    uint8_t qh[4];
    uint8_t qs[NF_QK4_0 / 2];
} nf_block_q5_1;
_Static_assert(sizeof(nf_block_q5_1) == 4 + 4 + NF_QK4_0 / 2, "wrong q5_1 block size");

/* Activation block for q4_1/q5_1: q8_0 plus s = d * sum(qs), which carries their min term. */
typedef struct {
    nf_fp16_t d;
    nf_fp16_t s;
    int8_t qs[NF_QK8_0];
} nf_block_q8_1;
_Static_assert(sizeof(nf_block_q8_1) == 4 + NF_QK8_0, "wrong q8_1 block size");

/* 4-bit non-linear: x = d * nf_kvalues_iq4nl[q]; nibbles ordered as in q4_0. */
typedef struct {
    nf_fp16_t d;
    uint8_t qs[NF_QK4_0 / 2];
} nf_block_iq4_nl;
_Static_assert(sizeof(nf_block_iq4_nl) == 2 + NF_QK4_0 / 2, "wrong iq4_nl block size");

/* The 16 levels of iq4_nl and iq4_xs (ggml's kvalues_iq4nl). */
extern const int8_t nf_kvalues_iq4nl[16];

/* 4-bit non-linear K-type: 8 sub-blocks of 32 with 6-bit scales ls (low four bits in
 * scales_l, nibble j % 2 of byte j / 2; high two bits at bit 2j of scales_h);
 * x = d * (ls - 32) * nf_kvalues_iq4nl[q]; each sub-block's 16 bytes of qs as in q4_0. */
typedef struct {
    nf_fp16_t d;
    uint16_t scales_h;
    uint8_t scales_l[NF_QK_K / 64];
    uint8_t qs[NF_QK_K / 2];
} nf_block_iq4_xs;
_Static_assert(sizeof(nf_block_iq4_xs) == 4 + NF_QK_K / 64 + NF_QK_K / 2,
               "wrong iq4_xs block size");

/* OCP microscaling FP4: 32 E2M1 values sharing one E8M0 exponent e (a power of two, 0xFF is
 * NaN); x = 2^(e - 128) * nf_kvalues_mxfp4[q], the table holding twice the E2M1 values, so the
 * scale is half of E8M0's 2^(e - 127) (ggml's GGML_E8M0_TO_FP32_HALF). Nibbles as in q4_0. */
typedef struct {
    uint8_t e;
    uint8_t qs[NF_QK4_0 / 2];
} nf_block_mxfp4;
_Static_assert(sizeof(nf_block_mxfp4) == 1 + NF_QK4_0 / 2, "wrong mxfp4 block size");

/* Twice the 16 E2M1 values (sign bit 3; 0, 0.5, 1, 1.5, 2, 3, 4, 6), as ggml's kvalues_mxfp4. */
extern const int8_t nf_kvalues_mxfp4[16];

/* The scale of an mxfp4 block, as ggml_e8m0_to_fp32_half: 2^(e - 128) as float bits, e 0 and 1
 * giving the subnormals 2^-128 and 2^-127; e 255 (NaN in E8M0) gives 2^127 here, which
 * nf_blocks_check keeps out of the kernels. */
static inline float nf_e8m0_to_fp32_half(uint8_t e)
{
    union {
        uint32_t u;
        float f;
    } v = {.u = e < 2 ? 0x00200000u << e : (uint32_t)(e - 1) << 23};
    return v.f;
}

/* 2-bit K-quant: 16 sub-blocks of 16, each byte of scales holds a 4-bit scale (low) and min
 * (high); x = d * sc * q - dmin * m. Element 128h + 32j + l is bits 2j..2j+1 of qs[32h + l]. */
typedef struct {
    uint8_t scales[NF_QK_K / 16];
    uint8_t qs[NF_QK_K / 4];
    nf_fp16_t d;
    nf_fp16_t dmin;
} nf_block_q2_K;
_Static_assert(sizeof(nf_block_q2_K) == NF_QK_K / 16 + NF_QK_K / 4 + 4, "wrong q2_K block size");

/* 3-bit K-quant: 16 sub-blocks of 16 with 6-bit signed scales (sc - 32) packed in 12 bytes;
 * the low two bits as in q2_K, the third bit of element 128h + 32j + l is bit 4h + j of
 * hmask[l], and a clear bit subtracts 4: x = d * (sc - 32) * (q - (bit ? 0 : 4)). */
typedef struct {
    uint8_t hmask[NF_QK_K / 8];
    uint8_t qs[NF_QK_K / 4];
    uint8_t scales[12];
    nf_fp16_t d;
} nf_block_q3_K;
_Static_assert(sizeof(nf_block_q3_K) == NF_QK_K / 8 + NF_QK_K / 4 + 12 + 2,
               "wrong q3_K block size");

/* 4-bit K-quant: 8 sub-blocks of 32 with 6-bit scales and mins; x = d*sc*q - dmin*m. */
typedef struct {
    nf_fp16_t d;
    nf_fp16_t dmin;
    uint8_t scales[NF_K_SCALE_SIZE];
    uint8_t qs[NF_QK_K / 2];
} nf_block_q4_K;
_Static_assert(sizeof(nf_block_q4_K) == 4 + NF_K_SCALE_SIZE + NF_QK_K / 2, "wrong q4_K block size");

/* 5-bit K-quant: as q4_K plus one high bit per element in qh. */
typedef struct {
    nf_fp16_t d;
    nf_fp16_t dmin;
    uint8_t scales[NF_K_SCALE_SIZE];
    uint8_t qh[NF_QK_K / 8];
    uint8_t qs[NF_QK_K / 2];
} nf_block_q5_K;
_Static_assert(sizeof(nf_block_q5_K) == 4 + NF_K_SCALE_SIZE + NF_QK_K / 8 + NF_QK_K / 2,
               "wrong q5_K block size");

/* 6-bit K-quant: 16 sub-blocks of 16 with 8-bit scales; x = d * sc * (q - 32). */
typedef struct {
    uint8_t ql[NF_QK_K / 2];
    uint8_t qh[NF_QK_K / 4];
    int8_t scales[NF_QK_K / 16];
    nf_fp16_t d;
} nf_block_q6_K;
_Static_assert(sizeof(nf_block_q6_K) == NF_QK_K / 2 + NF_QK_K / 4 + NF_QK_K / 16 + 2,
               "wrong q6_K block size");

/* 8-bit K activation block: float scale, and sums of each group of 16 quants. */
typedef struct {
    float d;
    int8_t qs[NF_QK_K];
    int16_t bsums[NF_QK_K / 16];
} nf_block_q8_K;
_Static_assert(sizeof(nf_block_q8_K) == 4 + NF_QK_K + 2 * NF_QK_K / 16, "wrong q8_K block size");

/* Instruction sets a kernel can be built for, in increasing order of preference. */
enum nf_isa { NF_ISA_SCALAR = 0, NF_ISA_AVX2, NF_ISA_AVX512, NF_ISA_COUNT };

/* s = dot(x, y) over n elements; x is a row of the weight type, y a row of its vec_dot_type.
 * n is a multiple of the block size of both types. */
typedef void (*nf_vec_dot_fn)(int n, float *s, const void *x, const void *y);
typedef void (*nf_to_float_fn)(const void *x, float *y, int64_t n);
typedef void (*nf_from_float_fn)(const float *x, void *y, int64_t n);
/* s[r] = dot(row r of x, y) for r in [0, nrows); row r starts r * row_stride bytes after x.
 * One call streams nrows weight rows against one activation row, so the activation is loaded
 * once per block for all rows (the fast way to do a matrix-vector product). */
typedef void (*nf_vec_dot_rows_fn)(int n, float *s, size_t row_stride, const void *x, const void *y,
                                   int nrows);
/* s[c * ld + r] = dot(row r of x, row c of y) for r in [0, nrows), c in [0, ncols): row r of x
 * starts r * bx bytes after x, activation row c (already of the vec_dot_type) c * by bytes
 * after y. The multi-token product: SIMD paths load and unpack each weight block once for a
 * tile of activation rows and each activation block once for a tile of weight rows. Sums may
 * be ordered differently from vec_dot's (within the kernel tests' tolerances), except where
 * quants_mat.c says they are identical. */
typedef void (*nf_vec_dot_mat_fn)(int n, float *s, size_t ld, const void *x, size_t bx,
                                  const void *y, size_t by, int nrows, int ncols);

struct nf_type_traits {
    const char *name;            /* ggml's name: "f32", "q4_0", "q4_K", ... */
    int64_t blck_size;           /* elements per block (1 for plain types) */
    size_t type_size;            /* bytes per block */
    bool compute;                /* NanoFlow can dequantize and multiply it */
    enum nf_type vec_dot_type;   /* what activations are converted to for vec_dot */
    nf_to_float_fn to_float;     /* dequantize a row; NULL when !compute */
    nf_from_float_fn from_float; /* quantize a row (reference); NULL when unsupported */
    nf_vec_dot_fn vec_dot;       /* best path for this CPU (set by nf_kernels_init) */
    /* Fastest quantizer for activations of this type (set by nf_kernels_init); SIMD paths may
     * round ties differently from the reference (see quants.c), so use from_float for weights. */
    nf_from_float_fn from_float_act;
    nf_vec_dot_rows_fn vec_dot_rows; /* best multi-row path (set by nf_kernels_init) */
    nf_vec_dot_mat_fn vec_dot_mat;   /* best multi-token path (set by nf_kernels_init) */
};

/* Traits of type t, or NULL when t is not a ggml type (unknown or retired number). */
const struct nf_type_traits *nf_type_traits(enum nf_type t);

/* Bytes taken by n elements of type t; n must be a multiple of the block size. */
size_t nf_row_size(enum nf_type t, int64_t n);

/* Picks the best kernels for this CPU. Idempotent and thread-safe; called by nf_type_traits()
 * users implicitly on first use. NF_ISA env var ("scalar", "avx2", "avx512") caps the choice. */
void nf_kernels_init(void);

/* The instruction set the current kernels use, and the best one this CPU supports. */
enum nf_isa nf_kernels_isa(void);
enum nf_isa nf_cpu_best_isa(void);
const char *nf_isa_name(enum nf_isa isa);

/* The vec_dot kernel of type t built for isa, or NULL if there is no path specific to that isa
 * (tests iterate over ISAs with this to compare each path with NF_ISA_SCALAR). */
nf_vec_dot_fn nf_vec_dot_for(enum nf_type t, enum nf_isa isa);
/* Likewise for quantizing activations into type t (Q8_0, Q8_K, F16, BF16). */
nf_from_float_fn nf_from_float_for(enum nf_type t, enum nf_isa isa);
/* Likewise for the multi-row dot kernel of type t. */
nf_vec_dot_rows_fn nf_vec_dot_rows_for(enum nf_type t, enum nf_isa isa);
/* Likewise for the multi-token kernel of type t. */
nf_vec_dot_mat_fn nf_vec_dot_mat_for(enum nf_type t, enum nf_isa isa);

/* The q4_0 prompt GEMM on activations packed once (for isa: AVX2 or AVX-512; false for the
 * scalar path, which has none). *pack quantizes ncols rows of n floats (x, n apart) with q
 * (Q8_0's activation quantizer) into out, nf_q4_0_packed_bytes(n, ncols) bytes, in the order
 * the kernel reads them; *mat is then nf_vec_dot_mat_for(Q4_0, isa) with y that packed buffer
 * (by is not used) and the same ncols, bit for bit. A product split into many calls on a few
 * rows each (a stack's tiles, a thread's share of them) packs its activations once instead of
 * once per call. */
typedef void (*nf_q4_0_pack_fn)(const float *x, int n, int ncols, nf_from_float_fn q, void *out);
bool nf_q4_0_packed(enum nf_isa isa, nf_q4_0_pack_fn *pack, nf_vec_dot_mat_fn *mat);
size_t nf_q4_0_packed_bytes(int64_t n, int ncols);

/* Checks the blocks of n elements of type t at data for values no kernel may meet: an mxfp4
 * block whose E8M0 exponent is 0xFF (NaN), as llama.cpp's ggml_validate_row_data refuses.
 * Returns 0, or NF_ECORRUPT with *bad_block (when not NULL) the index of the first bad block.
 * Types with no invalid bit pattern always pass. */
int nf_blocks_check(enum nf_type t, const void *data, int64_t n, int64_t *bad_block);

/* Half and bfloat16 conversions, bit-exact with ggml's (round to nearest even). */
float nf_fp16_to_fp32(nf_fp16_t h);
nf_fp16_t nf_fp32_to_fp16(float f);
float nf_bf16_to_fp32(nf_bf16_t h);
nf_bf16_t nf_fp32_to_bf16(float f);

#endif
