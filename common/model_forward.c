/* model_forward.c - the llama-family forward pass: mat-vec, RMSNorm, RoPE, attention, SwiGLU,
 * MoE.
 *
 * Exact mode reproduces llama.cpp's CPU backend (AVX-512, plain non-flash attention, F16 KV
 * cache) operation by operation: its float summation orders in the mat-muls, the F16 roundings
 * of Q, K, V and the softmax, n_kv padded to 32, ggml_v_expf in softmax and SwiGLU and the fused
 * RoPE products. A single rounding flip of an activation moves the random-weight models' logits
 * by 0.01-0.05, so close is not enough: with these orders every zoo and MoE golden model is
 * bit-identical on every step, and stories260K drifts by up to 3e-3 for a reason not found yet.
 * What was tried, the numbers and what was ruled out: docs/exactness.md. */
#include <errno.h>
#include <math.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#include "attn.h"
#include "kv_quant.h"
#include "model.h"
#include "nf_err.h"
#include "quants_impl.h"
#include "quants_q4_0x8.h"
#include "quants_rows.h"
#include "threadpool.h"

/* Mat-vecs smaller than this many multiply-adds run on the calling thread only: waking the
 * pool costs more than it saves. */
#define NF_PAR_MIN_WORK 32768

/* Bytes of an interleaved q4_0 matrix's rows a thread unpacks at a time for a product of
 * several tokens: a thread's whole chunk of rows of a 7B with two threads (1376 rows of 4096
 * values, 512 of 11008: 3.1 MiB). Chosen when the prompt GEMM packed the activations again at
 * every call (64-row calls cost the 514-token prompt 9%: 42.4 against 46.7 tok/s); since
 * nf_matmul_convert packs them once per matrix, smaller calls may do as well (not measured). */
#define NF_X8_UNPACK_BYTES ((size_t)4 << 20)

/* Rows unpacked at a time from a matrix of rows of rs bytes: a multiple of 16 (the
 * multi-token kernels' row tile, and of 8 for nf_q4_0x8_unpack), at least 16. */
static int64_t nf_x8_unpack_rows(size_t rs)
{
    const int64_t r = (int64_t)(NF_X8_UNPACK_BYTES / rs) & ~(int64_t)15;
    return r > 16 ? r : 16;
}

/* Models whose weights take up to this many bytes multiply q4_0 in llama.cpp's (repacked)
 * summation order, which reproduces its results bit for bit. That order is a dependent chain
 * of fused multiply-adds per row: it needs several rows in flight, and streaming several rows
 * at once from DRAM measured 2-4x slower on the 7B benchmark than the row-by-row kernels
 * (weights not in the repacked layout). Larger models, whose weights stream from DRAM anyway,
 * keep the fast kernels, whose results differ from llama.cpp's in the last bits of the float
 * sums. Deciding per model (not per matrix) keeps row-range views of a matrix (the streaming
 * engine's) bit-identical to the whole. */
#define NF_EXACT_Q4_0_MAX ((size_t)32 << 20)

/* llama.cpp pads the number of KV cells an attention looks at to a multiple of 32 (without
 * flash attention). */
#define NF_KV_PAD 32

/* The attention walk's scratch (nf_attn_walk_bytes): the scores and sums of as many (token,
 * head) tasks as fit here are kept at once; each wave of them walks the layer's blocks. */
#define NF_WALK_BYTES ((size_t)32 << 20)

static size_t nf_align64(size_t n)
{
    return (n + 63) & ~(size_t)63;
}

/* --- ggml CPU arithmetic, reproduced operation by operation ---------------------------------
 * The goldens come from llama.cpp's CPU backend on an AVX-512 machine. Some of its F32 work is
 * rounded in a way that matters here: F16 roundings of K, V, Q and the softmax make the output
 * jump when an F32 value lands on the other side of a rounding boundary, so the F32 sums must
 * be formed in ggml's order. The helpers below do in scalar code (fmaf is a fused multiply-add,
 * as the vector FMA instructions are) exactly what these ggml routines do:
 *  - ggml_vec_dot_f32 / ggml_vec_dot_f16 (AVX-512: 4 accumulators of 16 lanes over blocks of
 *    64, summed pairwise, then a horizontal add; the tail in double);
 *  - llamafile's tinyBLAS (used for F32/F16 weights when a mat-mul has >= 2 columns and the
 *    dot length is a multiple of 16: one 16-lane accumulator, then a horizontal add).
 * The scalar code is the definition; the attention's hot paths (scores, softmax, KQV) run SIMD
 * kernels that give the same bits (quants_rows.h, attn.h; tests/test_attn_kernels.c). */

static inline float nf_ld(const void *p, bool f16, int i)
{
    return f16 ? nf_fp16_to_fp32(((const nf_fp16_t *)p)[i]) : ((const float *)p)[i];
}

/* ggml_vec_dot_f32 (both F32) or ggml_vec_dot_f16 (both F16) on AVX-512, over n elements of
 * which those from nv on are zero in y (masked attention cells: their products add nothing,
 * but n still decides which part is summed by the vector body); the tail is summed in double.
 * (Summing the F32 tail in float with fused multiply-adds, as ggml_vec_dot_f32's C reads,
 * measured worse on stories260K.) The SIMD paths of nf_ggml_dot_cols give nf__ggml_dot_ref's
 * bits (quants_rows.c); a masked y takes the reference. */
static float nf_ggml_dot(const void *x, const void *y, bool f16, int n, int nv)
{
    if (nv < n)
        return nf__ggml_dot_ref(x, y, f16, n, nv);
    float s;
    nf_ggml_dot_cols(f16 ? NF_TYPE_F16 : NF_TYPE_F32)(n, &s, 1, x, 0, y, 0, 1, 1);
    return s;
}

/* tinyBLAS on AVX-512: a (F32 or F16) times b (F32), n a multiple of 16; b is zero from nv on. */
static float nf_tinyblas_dot(const void *a, bool a16, const void *vb, int n, int nv)
{
    const float *b = vb;
    const int ne = nv < n ? nv : n;
    float acc[16] = {0};
    for (int i = 0; i < ne; i++)
        acc[i & 15] = fmaf(nf_ld(a, a16, i), b[i], acc[i & 15]);
    return nf__hsum16(acc);
}

/* tinyBLAS on AVX-512 with both operands F16 (F16 weights, activations converted). */
static float nf_tinyblas_dot16(const void *a, const void *b, int n)
{
    float acc[16] = {0};
    for (int i = 0; i < n; i += 16)
        for (int l = 0; l < 16; l++)
            acc[l] = fmaf(nf_ld(a, true, i + l), nf_ld(b, true, i + l), acc[l]);
    return nf__hsum16(acc);
}

/* One lane of AVX512-BF16's vdpbf16ps: acc + x[1]*y[1] + x[0]*y[0], the odd product first, each
 * addition rounded once (products of bfloat16 values are exact in float). */
static inline float nf_dpbf16(float acc, const nf_bf16_t *x, const nf_bf16_t *y)
{
    acc += nf_bf16_to_fp32(x[1]) * nf_bf16_to_fp32(y[1]);
    return acc + nf_bf16_to_fp32(x[0]) * nf_bf16_to_fp32(y[0]);
}

/* ggml_vec_dot_bf16 with AVX512-BF16: two 16-lane accumulators over blocks of 64, each reduced
 * and added in double, the tail in double. */
static float nf_ggml_dot_bf16(const nf_bf16_t *x, const nf_bf16_t *y, int n)
{
    float c1[16] = {0}, c2[16] = {0};
    int i = 0;
    for (; i + 64 <= n; i += 64)
        for (int l = 0; l < 16; l++) {
            c1[l] = nf_dpbf16(c1[l], x + i + 2 * l, y + i + 2 * l);
            c2[l] = nf_dpbf16(c2[l], x + i + 32 + 2 * l, y + i + 32 + 2 * l);
        }
    double s = 0.0;
    s += (double)nf__hsum16(c1);
    s += (double)nf__hsum16(c2);
    for (; i < n; i++)
        s += (double)(nf_bf16_to_fp32(x[i]) * nf_bf16_to_fp32(y[i]));
    return (float)s;
}

/* tinyBLAS with AVX512-BF16 (both operands bfloat16, n a multiple of 32): one accumulator. */
static float nf_tinyblas_dot_bf16(const nf_bf16_t *x, const nf_bf16_t *y, int n)
{
    float c[16] = {0};
    for (int i = 0; i < n; i += 32)
        for (int l = 0; l < 16; l++)
            c[l] = nf_dpbf16(c[l], x + i + 2 * l, y + i + 2 * l);
    return nf__hsum16(c);
}

/* The softmax numerator and its sum as ggml_vec_soft_max_f32 computes them on AVX-512: groups
 * of 16 with ggml_v_expf, each group summed in float (_mm512_reduce_add_ps) and added in
 * double; the rest with expf, one by one in double (nf__softmax_exp_ref, attn.c). */
static double nf_softmax_exp(float *y, const float *x, int n, float max)
{
    return nf_softmax_exp_for(nf_kernels_isa())(y, x, n, max);
}

void nf_rmsnorm(float *out, const float *x, const float *w, int n, float eps)
{
    double sum = 0.0;
    for (int i = 0; i < n; i++)
        sum += (double)(x[i] * x[i]);
    const float mean = (float)(sum / n);
    const float scale = 1.0f / sqrtf(mean + eps);
    /* ggml computes x * scale as one op and the multiply by the weight as a second one. */
    for (int i = 0; i < n; i++)
        out[i] = (x[i] * scale) * w[i];
}

/* The activation quantizer llama.cpp's x86 build uses: its AVX2 quantize_row_q8_0 rounds ties
 * to even with 127 / amax, unlike the portable reference; the AVX2 variant from quants.c
 * reproduces it. Without AVX2 the reference is used (a rare off-by-one quant). */
static nf_from_float_fn nf_act_quantizer(enum nf_type t)
{
    nf_from_float_fn f = nf_kernels_isa() >= NF_ISA_AVX2 ? nf_from_float_for(t, NF_ISA_AVX2) : NULL;
    return f ? f : nf_type_traits(t)->from_float;
}

enum nf_mm_kind {
    NF_MM_VEC_DOT,
    NF_MM_ROWS,
    NF_MM_GGML_DOT,
    NF_MM_TINYBLAS,
    NF_MM_TINYBLAS16,
    NF_MM_BF16,
    NF_MM_TINYBLAS_BF16
};

struct nf_matmul_job {
    enum nf_mm_kind kind;
    const struct nf_tensor *w;
    nf_vec_dot_fn dot;
    nf_vec_dot_rows_fn rows_fn;
    nf_vec_dot_mat_fn mat_fn;    /* several tokens through a multi-token kernel; NULL: one by one */
    nf_vec_dot_cols_gs_fn gs_fn; /* w's rows stored by groups gs bytes apart (nf_matmul_each_gs) */
    size_t gs;
    const char *xq;
    size_t xq_stride;
    float *out;
    int n_tok;
    bool x8_rows;      /* w->x8 and a decode step: the interleaved rows kernel */
    char *x8_buf;      /* w->x8 otherwise: per-thread room for unpacked rows */
    size_t x8_bufsz;   /* bytes per thread of x8_buf */
    atomic_llong next; /* first row not yet claimed (nf_matmul_run) */
};

static void nf_matmul_rows(const struct nf_matmul_job *j, int ith, int64_t r0, int64_t r1);

/* Rows are claimed in chunks, about four per thread, so that a thread the scheduler holds back
 * (the fetcher's reads and checksums share the cores) does not hold the whole product: the
 * others take its chunks. A chunk is a multiple of 8 rows, so threads do not share cache lines
 * of out and multi-row kernels get whole groups; each row's floats do not depend on who
 * computes it. */
static void nf_matmul_run(void *arg, int ith, int nth)
{
    struct nf_matmul_job *j = arg;
    const int64_t rows = j->w->ne[1];
    if (nth == 1) {
        nf_matmul_rows(j, ith, 0, rows);
        return;
    }
    /* Multi-token kernels take rows in panels of up to 16 (AVX-512 q4_0): a chunk of 8 would
     * leave half of each panel's lanes idle. */
    const int64_t grain = j->mat_fn ? 16 : 8;
    int64_t per = (rows + 4 * nth - 1) / (4 * nth);
    per = (per + grain - 1) / grain * grain;
    for (;;) {
        /* Relaxed: the claim only partitions the rows; the pool's job hand-off orders the
         * inputs and outputs. */
        const int64_t r0 = atomic_fetch_add_explicit(&j->next, per, memory_order_relaxed);
        if (r0 >= rows)
            return;
        nf_matmul_rows(j, ith, r0, r0 + per < rows ? r0 + per : rows);
    }
}

/* Rows [r0, r1) of the product, rows r0.. in the GGUF layout at w0. */
static void nf_matmul_rows_at(const struct nf_matmul_job *j, const char *w0, int64_t r0, int64_t r1)
{
    const int64_t rows = j->w->ne[1];
    const int n = (int)j->w->ne[0];
    if (j->gs_fn) {
        if (r1 > r0)
            j->gs_fn(n, j->out + r0, (size_t)rows,
                     (const char *)j->w->data + (size_t)r0 * j->w->row_size, j->w->row_size, j->gs,
                     j->xq, j->xq_stride, (int)(r1 - r0), j->n_tok);
        return;
    }
    if (j->mat_fn) {
        /* Every token against the thread's rows at once: each weight block is unpacked once
         * for a tile of tokens (quants_mat*.c). */
        if (r1 > r0)
            j->mat_fn(n, j->out + r0, (size_t)rows, w0, j->w->row_size, j->xq, j->xq_stride,
                      (int)(r1 - r0), j->n_tok);
        return;
    }
    if (j->kind == NF_MM_ROWS) {
        if (r1 <= r0)
            return;
        for (int t = 0; t < j->n_tok; t++)
            j->rows_fn(n, j->out + (size_t)t * rows + r0, j->w->row_size, w0,
                       j->xq + (size_t)t * j->xq_stride, (int)(r1 - r0));
        return;
    }
    for (int64_t r = r0; r < r1; r++) {
        const char *row = w0 + (size_t)(r - r0) * j->w->row_size;
        float *o = &j->out[r];
        for (int t = 0; t < j->n_tok; t++, o += rows) {
            const char *xt = j->xq + (size_t)t * j->xq_stride;
            if (j->kind == NF_MM_VEC_DOT)
                j->dot(n, o, row, xt);
            else if (j->kind == NF_MM_GGML_DOT)
                *o = nf_ggml_dot(row, xt, j->w->type == NF_TYPE_F16, n, n);
            else if (j->kind == NF_MM_BF16)
                *o = nf_ggml_dot_bf16((const nf_bf16_t *)row, (const nf_bf16_t *)xt, n);
            else if (j->kind == NF_MM_TINYBLAS_BF16)
                *o = nf_tinyblas_dot_bf16((const nf_bf16_t *)row, (const nf_bf16_t *)xt, n);
            else if (j->kind == NF_MM_TINYBLAS)
                *o = nf_tinyblas_dot(row, j->w->type == NF_TYPE_F16, (const void *)xt, n, n);
            else
                *o = nf_tinyblas_dot16(row, xt, n);
        }
    }
}

/* Rows [r0, r1) of the product (r0 a multiple of 8: nf_matmul_run's chunks), by thread ith.
 * Interleaved q4_0 rows (quants_q4_0x8.h) go to their decode kernel, which gives each row
 * vec_dot's bits, or are unpacked nf_x8_unpack_rows() at a time for every other kernel. */
static void nf_matmul_rows(const struct nf_matmul_job *j, int ith, int64_t r0, int64_t r1)
{
    const struct nf_tensor *w = j->w;
    if (!w->x8) {
        nf_matmul_rows_at(j, (const char *)w->data + (size_t)r0 * w->row_size, r0, r1);
        return;
    }
    if (j->x8_rows) {
        if (r1 > r0)
            nf__vec_dot_q4_0x8_q8_0_avx512((int)w->ne[0], j->out + r0,
                                           (const char *)w->data + (size_t)r0 * w->row_size, j->xq,
                                           (int)(r1 - r0));
        return;
    }
    char *buf = j->x8_buf + (size_t)ith * j->x8_bufsz;
    const int64_t step = nf_x8_unpack_rows(w->row_size);
    for (int64_t a = r0; a < r1; a += step) {
        const int64_t b = a + step < r1 ? a + step : r1;
        nf_q4_0x8_unpack(buf, w->data, w->ne[0], a, b);
        nf_matmul_rows_at(j, buf, a, b);
    }
}

void nf_matmul_reuse(struct nf_ctx *c, bool on)
{
    c->xq_reuse = on;
    c->xq_of = NULL;
}

/* x (n_tok, n) converted by q into c->xq, unless c->xq already holds it (nf_matmul_reuse):
 * row by row (xq_row_stride apart), or with pack in the q4_0 prompt GEMM's order
 * (nf_q4_0_packed; n_tok * n * 40 / 32 bytes, within the n_tok rows of xq_row_stride >= 4 n
 * bytes), so that the tiles of one matrix, and each thread's rows of a tile, read the
 * activations packed once. */
static void nf_matmul_convert(struct nf_ctx *c, nf_from_float_fn q, nf_q4_0_pack_fn pack,
                              const float *x, int64_t n, int n_tok)
{
    const bool packed = pack != NULL;
    if (c->xq_reuse && c->xq_of == x && c->xq_fn == (const void *)q && c->xq_n == n &&
        c->xq_ntok == n_tok && c->xq_packed == packed)
        return;
    if (packed) {
        NF_ASSERT(nf_q4_0_packed_bytes(n, n_tok) <= (size_t)n_tok * c->xq_row_stride);
        pack(x, (int)n, n_tok, q, c->xq);
    } else {
        for (int t = 0; t < n_tok; t++)
            q(x + (size_t)t * n, (char *)c->xq + (size_t)t * c->xq_row_stride, n);
    }
    c->xq_of = c->xq_reuse ? x : NULL;
    c->xq_fn = (const void *)q;
    c->xq_n = n;
    c->xq_ntok = n_tok;
    c->xq_packed = packed;
}

/* Runs job j (its kind and kernels set) over w's rows on the pool: one thread for a product
 * too small to share. */
static void nf_matmul_start(struct nf_ctx *c, struct nf_matmul_job *j)
{
    const int64_t work = j->w->ne[0] * j->w->ne[1] * j->n_tok;
    atomic_init(&j->next, 0);
    nf_threadpool_run(c->pool, nf_matmul_run, j,
                      work < NF_PAR_MIN_WORK ? 1 : nf_threadpool_size(c->pool));
}

/* nf_matmul, or with each_tok the arithmetic of n_tok separate one-token calls (in one
 * dispatch): n_tok >= 2 then picks neither tinyBLAS's order nor a multi-token kernel. */
static void nf_matmul_do(struct nf_ctx *c, float *out, const struct nf_tensor *w, const float *x,
                         int n_tok, bool each_tok)
{
    const struct nf_type_traits *tr = nf_type_traits(w->type);
    const int64_t n = w->ne[0];
    struct nf_matmul_job j = {.w = w, .dot = tr->vec_dot, .out = out, .n_tok = n_tok};
    /* What a prompt batch of n_tok tokens computes differently from n_tok decode steps. A
     * per-row pass (c->per_row) takes each_tok for every product: each of its rows gets the
     * floats a decode step of that token gets. */
    const bool batch = n_tok >= 2 && !each_tok && !c->per_row;
    if (w->type == NF_TYPE_F32 && batch && n % 16 == 0) {
        /* llama.cpp hands this to tinyBLAS, which takes the activations in F32. */
        j.kind = NF_MM_TINYBLAS;
        j.xq = (const char *)x;
        j.xq_stride = (size_t)n * sizeof(float);
    } else if (w->type == NF_TYPE_F16 && batch && n % 16 == 0) {
        /* x86 tinyBLAS takes F16 weights only with F16 activations: llama.cpp converts the
         * activations to F16 first (as for its own dot) and then calls tinyBLAS. */
        j.kind = NF_MM_TINYBLAS16;
        nf_matmul_convert(c, nf_act_quantizer(NF_TYPE_F16), NULL, x, n, n_tok);
        j.xq = c->xq;
        j.xq_stride = c->xq_row_stride;
    } else if (tr->vec_dot_type == NF_TYPE_F32) {
        j.kind = NF_MM_GGML_DOT;
        j.xq = (const char *)x;
        j.xq_stride = (size_t)n * sizeof(float);
    } else {
        /* Convert the activations as llama.cpp does before every mat-vec. */
        j.kind = w->type == NF_TYPE_F16 ? NF_MM_GGML_DOT : NF_MM_VEC_DOT;
        if (w->type == NF_TYPE_BF16 && c->m->weight_bytes <= NF_EXACT_Q4_0_MAX)
            /* llama.cpp with AVX512-BF16: its dot, or tinyBLAS for prompt batches. These are
             * scalar emulations, so (as for q4_0) only for models that fit in the caches. */
            j.kind = batch && n % 32 == 0 ? NF_MM_TINYBLAS_BF16 : NF_MM_BF16;
        if (w->type == NF_TYPE_Q4_0 && c->m->weight_bytes <= NF_EXACT_Q4_0_MAX) {
            /* llama.cpp repacks q4_0 weights on x86 and sums each row block after block. */
            j.kind = NF_MM_ROWS;
            j.rows_fn = nf_kernels_isa() >= NF_ISA_AVX2 ? nf__vec_dot_q4_0_q8_0_seq_avx2_rows
                                                        : nf__vec_dot_q4_0_q8_0_seq_ref_rows;
        }
        nf_q4_0_pack_fn pack = NULL;
        nf_vec_dot_mat_fn packed_mat;
        if (batch && j.kind == NF_MM_VEC_DOT && w->type == NF_TYPE_Q4_0 &&
            nf_q4_0_packed(nf_kernels_isa(), &pack, &packed_mat))
            j.mat_fn = packed_mat; /* (pack stays NULL otherwise: rows) */
        nf_matmul_convert(c, nf_act_quantizer(tr->vec_dot_type), pack, x, n, n_tok);
        j.xq = c->xq;
        j.xq_stride = c->xq_row_stride;
    }
    /* Prompt chunks: the multi-token kernels. For F32, F16 and BF16 they sum in tinyBLAS's
     * order bit for bit (BF16: AVX512-BF16's, which nf_tinyblas_dot_bf16 emulates), for q8_0,
     * the K-quants and the types of quants_ext.c as vec_dot does; q4_0 (outside the exact
     * order above) within the kernel tolerances. */
    if (batch && !j.mat_fn &&
        (j.kind == NF_MM_VEC_DOT || j.kind == NF_MM_TINYBLAS || j.kind == NF_MM_TINYBLAS16 ||
         j.kind == NF_MM_TINYBLAS_BF16))
        j.mat_fn = tr->vec_dot_mat;
    /* Several tokens each with its one-token arithmetic (a batched step, a per-row pass): the
     * kernels that unpack each weight block once for all of them and sum every output in the
     * one-token kernel's order (quants_rows.h); NULL leaves one call per (row, token). */
    if (n_tok >= 2 && !batch && j.kind == NF_MM_VEC_DOT)
        j.mat_fn = nf_vec_dot_cols(w->type);
    else if (n_tok >= 2 && !batch && j.kind == NF_MM_GGML_DOT)
        j.mat_fn = nf_ggml_dot_cols(w->type);
    /* One token (a decode step): a rows kernel with vec_dot's bits, where one is faster. */
    if (n_tok == 1 && j.kind == NF_MM_VEC_DOT && (j.rows_fn = nf_vec_dot_rows_exact(w->type)))
        j.kind = NF_MM_ROWS;
    /* Interleaved q4_0 (only where the AVX-512 kernels run, whose rows kernel is vec_dot):
     * the decode kernel of the layout, the same bits; any other product unpacks rows. */
    j.x8_rows = w->x8 && n_tok == 1 && j.kind == NF_MM_ROWS && !j.mat_fn &&
                j.rows_fn == nf_vec_dot_rows_exact(NF_TYPE_Q4_0);
    j.x8_buf = c->x8_scratch;
    j.x8_bufsz = c->x8_scratch_stride;
    NF_ASSERT(!w->x8 || j.x8_rows ||
              (j.x8_buf && w->row_size * (size_t)nf_x8_unpack_rows(w->row_size) <= j.x8_bufsz));
    nf_matmul_start(c, &j);
}

void nf_matmul(struct nf_ctx *c, float *out, const struct nf_tensor *w, const float *x, int n_tok)
{
    nf_matmul_do(c, out, w, x, n_tok, false);
}

void nf_matmul_each(struct nf_ctx *c, float *out, const struct nf_tensor *w, const float *x,
                    int n_tok)
{
    /* Each (row, token) product is one vec_dot whatever the split of rows between threads,
     * and the q4_0 row kernel gives a row the same sum in any row range (exactness.md). */
    nf_matmul_do(c, out, w, x, n_tok, true);
}

bool nf_matmul_each_gs_ok(const struct nf_ctx *c, enum nf_type t)
{
    /* nf_matmul_do's choice for several tokens each with its own arithmetic: nf_vec_dot_cols
     * for q4_0 unless the model is small enough for llama.cpp's repacked row order. */
    return t == NF_TYPE_Q4_0 && c->m->weight_bytes > NF_EXACT_Q4_0_MAX && nf_vec_dot_cols_gs(t);
}

void nf_matmul_each_gs(struct nf_ctx *c, float *out, const struct nf_tensor *w, size_t gs,
                       const float *x, int n_tok)
{
    const nf_vec_dot_cols_gs_fn fn = nf_vec_dot_cols_gs(w->type);
    NF_ASSERT(fn && n_tok >= 2 && nf_matmul_each_gs_ok(c, w->type));
    const struct nf_type_traits *tr = nf_type_traits(w->type);
    struct nf_matmul_job j = {
        .w = w, .gs_fn = fn, .gs = gs, .out = out, .n_tok = n_tok, .kind = NF_MM_VEC_DOT};
    nf_matmul_convert(c, nf_act_quantizer(tr->vec_dot_type), NULL, x, w->ne[0], n_tok);
    j.xq = c->xq;
    j.xq_stride = c->xq_row_stride;
    nf_matmul_start(c, &j);
}

/* ggml_vec_dot_f16: products of halves are exact in float; ggml sums them in double in its
 * scalar tail (and in float lanes in its SIMD body, a difference far below the tolerances). */
static float nf_dot_f16(const nf_fp16_t *a, const nf_fp16_t *b, int n)
{
    double s = 0.0;
    for (int i = 0; i < n; i++)
        s += (double)(nf_fp16_to_fp32(a[i]) * nf_fp16_to_fp32(b[i]));
    return (float)s;
}

struct nf_attn_job {
    struct nf_ctx *c;
    int il, pos0, n_tok;
};

/* Row pos of layer il of a cache of type t whose rows hold kvd values, from head kvh's
 * first value (a head's values are whole blocks: nf_kv_types_check). */
static const void *nf_kv_row(const void *cache, enum nf_type t, const struct nf_ctx *c, int il,
                             int pos, int kvh)
{
    const struct nf_hparams *hp = &c->m->hp;
    const size_t row = nf_kv_row_bytes(t, hp->n_head_kv * hp->head_dim);
    return (const char *)cache + ((size_t)il * c->n_ctx + (size_t)pos) * row +
           (size_t)kvh * nf_kv_row_bytes(t, hp->head_dim);
}

/* Scores of a quantized K (kv_quant.h) as llama.cpp's non-flash mul_mat of a quantized K: q
 * (hd floats) quantized to q8_0 into qq, each visible cell's score the type's vec_dot times
 * scale, the others -inf. */
static void nf_attn_scores_kvq(const struct nf_ctx *c, int il, const float *q, int kvh, int lo,
                               int pos, int n_kv, float scale, void *qq, float *sc)
{
    const int hd = c->m->hp.head_dim;
    const struct nf_type_traits *tr = nf_type_traits(c->type_k);
    nf_act_quantizer(tr->vec_dot_type)(q, qq, hd);
    for (int ic = 0; ic < n_kv; ic++) {
        float s = -INFINITY;
        if (ic <= pos && ic >= lo) {
            tr->vec_dot(hd, &s, nf_kv_row(c->k_cache, c->type_k, c, il, ic, kvh), qq);
            s *= scale;
        }
        sc[ic] = s;
    }
}

/* ggml_soft_max_ext over sc (n_kv scores, max taken here) with gpt-oss's sink of head h
 * (ggml_soft_max_add_sinks: a logit of its own in the max and, as expf, in the denominator,
 * with no value row): sc becomes the exponentials; returns 1 / their sum. */
static float nf_attn_softmax(const struct nf_ctx *c, float *sc, int n_kv, int h)
{
    float mx = -INFINITY;
    for (int ic = 0; ic < n_kv; ic++)
        mx = sc[ic] > mx ? sc[ic] : mx;
    const float *sk = c->attn_sinks;
    if (sk)
        mx = sk[h] > mx ? sk[h] : mx;
    double sum = nf_softmax_exp(sc, sc, n_kv, mx);
    if (sk)
        sum += (double)expf(sk[h] - mx);
    return (float)(1.0 / sum);
}

/* The softmax scale of the scores: the model's, 1 where Q was scaled before (gemma3, phi3),
 * else 1 / sqrt(head_dim). */
static float nf_attn_scale(const struct nf_hparams *hp)
{
    return hp->kq_scale                    ? hp->kq_scale
           : hp->q_scale || hp->q_prescale ? 1.0f
                                           : 1.0f / sqrtf((float)hp->head_dim);
}

/* The first cell a query at pos sees: gemma3's local layers see the last n_swa positions
 * (llama.cpp's LLAMA_SWA_TYPE_STANDARD masks a cell when pos - cell >= n_swa); the cells before
 * it are masked like those past pos. The cache still keeps every position of a local layer: a
 * ring of n_swa cells per local layer, which would cut their KV memory, is a later
 * optimisation. */
static int nf_attn_lo(const struct nf_hparams *hp, int il, int pos)
{
    return nf_layer_swa(hp, il) && pos >= hp->n_swa ? pos - hp->n_swa + 1 : 0;
}

/* soft_max_ext's scale and mask over the n_kv scores sc of a query at pos: the cells lo..pos
 * scaled, the others -inf. */
static void nf_attn_mask(float *sc, int n_kv, int lo, int pos, float scale)
{
    for (int ic = 0; ic < n_kv; ic++)
        sc[ic] = ic <= pos && ic >= lo ? sc[ic] * scale : -INFINITY;
}

/* A query tile's outputs out (nt tokens x the g query heads of KV head kvh, vd each) to their
 * rows of c->att. */
static void nf_attn_tile_store(struct nf_ctx *c, int t0, int nt, int kvh, const float *out)
{
    const struct nf_hparams *hp = &c->m->hp;
    const int g = hp->n_head / hp->n_head_kv, vd = nf_head_dim_v(hp);
    for (int tt = 0; tt < nt; tt++)
        memcpy(c->att + ((size_t)(t0 + tt) * hp->n_head + (size_t)kvh * g) * vd,
               out + (size_t)tt * g * vd, sizeof(float) * (size_t)g * vd);
}

/* Attention of one query head of one token over cache positions 0..pos. */
static void nf_attn_head(struct nf_ctx *c, int il, int t, int h, int pos, int n_tok, int n_kv,
                         void *scratch)
{
    const struct nf_hparams *hp = &c->m->hp;
    const int hd = hp->head_dim, kvd = hp->n_head_kv * hp->head_dim, vd = nf_head_dim_v(hp);
    const int kvh = h / (hp->n_head / hp->n_head_kv);
    const float scale = nf_attn_scale(hp);
    /* gemma3 and phi3 scaled Q before (nf_attn_core): their softmax scale is 1, an exact
     * no-op. */
    const int lo = nf_attn_lo(hp, il, pos);
    const float *q = c->q + (size_t)t * hp->n_head * hd + (size_t)h * hd;
    float *out = c->att + (size_t)t * hp->n_head * vd + (size_t)h * vd;
    nf_fp16_t *q16 = scratch;                              /* (hd) */
    nf_fp16_t *acc16 = q16 + hd;                           /* (hd); a quantized K's q8_0 q */
    float *sc = (float *)nf_align64((size_t)(acc16 + hd)); /* (n_ctx) */
    /* A quantized cache (kv_quant.h) takes the plain path whatever the attention mode. */
    const bool kvq = c->type_k != NF_TYPE_F16 || c->type_v != NF_TYPE_F16;
    const nf_fp16_t *kc =
        (const nf_fp16_t *)c->k_cache + (size_t)il * c->n_ctx * kvd + (size_t)kvh * hd;
    /* deepseek2's values are the first vd values of its latent keys (one cache). */
    const nf_fp16_t *vc = (const nf_fp16_t *)(hp->n_lora_kv ? c->k_cache : c->v_cache) +
                          (size_t)il * c->n_ctx * kvd + (size_t)kvh * hd;
    for (int d = 0; d < hd; d++)
        q16[d] = nf_fp32_to_fp16(q[d]);

    if (c->attn_mode == NF_ATTN_FLASH && !kvq) {
        /* ggml_compute_forward_flash_attn_ext_f16: online softmax, V accumulated in F16. */
        float M = -INFINITY, S = 0.0f;
        memset(acc16, 0, sizeof(nf_fp16_t) * (size_t)vd);
        for (int ic = lo; ic <= pos; ic++) {
            float s = nf_dot_f16(kc + (size_t)ic * kvd, q16, hd) * scale;
            float ms = 1.0f, vs = 1.0f;
            const nf_fp16_t *vr = vc + (size_t)ic * kvd;
            if (s > M) {
                const float Mold = M;
                M = s;
                ms = expf(Mold - M);
                for (int d = 0; d < vd; d++)
                    acc16[d] = nf_fp32_to_fp16(nf_fp16_to_fp32(acc16[d]) * ms);
            } else {
                vs = expf(s - M);
            }
            for (int d = 0; d < vd; d++)
                acc16[d] = nf_fp32_to_fp16(nf_fp16_to_fp32(acc16[d]) + nf_fp16_to_fp32(vr[d]) * vs);
            S = S * ms + vs;
        }
        if (c->attn_sinks) { /* ggml's flash kernel: the sink joins the softmax at the end */
            const float sk = c->attn_sinks[h];
            float ms = 1.0f, vs = 1.0f;
            if (sk > M)
                ms = expf(M - sk);
            else
                vs = expf(sk - M);
            for (int d = 0; d < hd && ms != 1.0f; d++)
                acc16[d] = nf_fp32_to_fp16(nf_fp16_to_fp32(acc16[d]) * ms);
            S = S * ms + vs;
        }
        const float inv = S == 0.0f ? 0.0f : 1.0f / S;
        for (int d = 0; d < vd; d++)
            out[d] = nf_fp16_to_fp32(acc16[d]) * inv;
        return;
    }

    /* ggml mul_mat(K, Q) + soft_max_ext(scale, causal mask) + mul_mat(V, softmax), over the
     * n_kv cache cells of the batch (cells past pos are masked with -inf). */
    const bool q_f32 = c->attn_mode == NF_ATTN_F32 && !kvq, p_f32 = q_f32;
    /* Prompt batches (n_tok >= 2): ggml converts Q and the softmax to F16 and hands the two
     * mat-muls to tinyBLAS when the dot length is a multiple of 16. */
    const bool kq_tb = n_tok >= 2 && hd % 16 == 0, kqv_tb = n_tok >= 2 && n_kv % 16 == 0;
    float *vcol = sc + n_kv; /* (n_kv) */
    /* tinyBLAS's order is that of the F16 and F32 multi-token kernels, bit for bit
     * (quants_mat.c): the SIMD kernels stand in for the scalar emulations. */
    const nf_vec_dot_mat_fn mat16 = nf_type_traits(NF_TYPE_F16)->vec_dot_mat;
    if (c->type_k != NF_TYPE_F16)
        nf_attn_scores_kvq(c, il, q, kvh, lo, pos, n_kv, scale, acc16, sc);
    else if (!q_f32) {
        /* tinyBLAS's F16 order in prompt batches, else ggml_vec_dot_f16 per visible cell
         * (nf_ggml_dot's, the SIMD paths of nf_ggml_dot_cols reading each K row once). */
        if (kq_tb)
            mat16(hd, sc, (size_t)n_kv, kc, (size_t)kvd * sizeof(nf_fp16_t), q16, 0, pos + 1, 1);
        else
            nf_ggml_dot_cols(NF_TYPE_F16)(hd, sc + lo, 1, kc + (size_t)lo * kvd,
                                          (size_t)kvd * sizeof(nf_fp16_t), q16, 0, pos + 1 - lo, 1);
        nf_attn_mask(sc, n_kv, lo, pos, scale);
    }
    for (int ic = 0; ic < n_kv && c->type_k == NF_TYPE_F16 && q_f32; ic++) {
        float s = -INFINITY;
        if (ic <= pos && ic >= lo)
            s = nf_tinyblas_dot(kc + (size_t)ic * kvd, true, q, hd, hd) * scale;
        sc[ic] = s;
    }
    const float inv = nf_attn_softmax(c, sc, n_kv, h);
    if (c->type_v != NF_TYPE_F16) {
        /* A quantized V, row by row: out += p * dequant(V row), p in F32 (kv_quant.h). */
        const nf_kv_axpy_fn axpy = nf_kv_axpy_for(c->type_v);
        memset(out, 0, sizeof(float) * (size_t)vd);
        for (int ic = lo; ic <= pos; ic++)
            axpy(out, sc[ic] * inv, nf_kv_row(c->v_cache, c->type_v, c, il, ic, kvh), vd);
        return;
    }
    const enum nf_isa isa = nf_kernels_isa();
    if (p_f32)
        for (int ic = 0; ic < n_kv; ic++)
            sc[ic] *= inv;
    else
        nf_scale_round_f16_for(isa)(sc, n_kv, inv);
    if (p_f32 || kqv_tb) {
        /* tinyBLAS over the unmasked cells (the rest add nothing): what the F32 multi-token
         * kernel gives on each column of V, with V's rows read as they lie in the cache
         * (nf__vec_dot_f16_cols_ref and its SIMD paths, quants_mat*.c). */
        (isa >= NF_ISA_AVX512 ? nf__vec_dot_f16_cols_avx512
         : isa >= NF_ISA_AVX2 ? nf__vec_dot_f16_cols_avx2
                              : nf__vec_dot_f16_cols_ref)(pos + 1, out, vd, vc, (size_t)kvd, sc);
        return;
    }
    /* Each output is nf_ggml_dot(V's column, sc, false, n_kv, pos + 1); the SIMD paths run
     * across the columns, each keeping its own order (attn.h). */
    nf_attn_kqv_for(isa)(out, vd, vc, (size_t)kvd, sc, n_kv, pos + 1, vcol);
}

/* Queries per prompt attention tile (nf_attn_tile): 16, fewer when their score rows over a
 * context of n_ctx cells would pass 1 MiB per thread. */
#define NF_ATTN_TILE_MAXQ 16
static int nf_attn_tile_nq(const struct nf_hparams *hp, int n_ctx)
{
    const size_t row = (size_t)(n_ctx + hp->kv_pad) * sizeof(float);
    int nq = NF_ATTN_TILE_MAXQ;
    while (nq > 1 && (size_t)nq * row > ((size_t)1 << 20))
        nq /= 2;
    return nq;
}

/* A thread's scratch for a tile of nq queries: their Q in F16 (nq, hd), score rows (nq, n_ctx
 * + kv_pad), outputs (nq, vd) and the KQV kernel's lane sums. */
static size_t nf_attn_tile_bytes(const struct nf_hparams *hp, int n_ctx, int nq)
{
    return nf_align64((size_t)nq * (size_t)hp->head_dim * sizeof(nf_fp16_t)) +
           nf_align64((size_t)nq * (size_t)(n_ctx + hp->kv_pad) * sizeof(float)) +
           nf_align64((size_t)nq * (size_t)nf_head_dim_v(hp) * sizeof(float)) +
           NF_KQV_TILE_LANES * sizeof(float);
}

size_t nf_attn_scratch_bytes(const struct nf_hparams *hp, int n_ctx, int n_ubatch)
{
    /* sc and vcol of nf_attn_head: n_kv floats each, n_kv at most n_ctx padded to kv_pad. */
    size_t b = nf_align64((size_t)hp->head_dim * 4 + 64 + (size_t)(n_ctx + hp->kv_pad) * 8);
    if (n_ubatch >= 2) { /* prompt batches: nf_attn_tile's */
        const size_t tb = nf_attn_tile_bytes(hp, n_ctx, nf_attn_tile_nq(hp, n_ctx));
        b = tb > b ? tb : b;
    }
    return b;
}

/* Whether a prompt batch over n_kv cells takes nf_attn_tile: the plain F16 path whose two
 * products are tinyBLAS's (nf_attn_head's kq_tb and kqv_tb), one token's query heads of a KV
 * group fitting a tile. */
static bool nf_attn_tiled(const struct nf_ctx *c, int n_tok, int n_kv)
{
    const struct nf_hparams *hp = &c->m->hp;
    return n_tok >= 2 && !c->per_row && c->attn_mode == NF_ATTN_PLAIN && c->type_k == NF_TYPE_F16 &&
           c->type_v == NF_TYPE_F16 && !hp->n_lora_kv && hp->head_dim % 16 == 0 && n_kv % 16 == 0 &&
           hp->n_head / hp->n_head_kv <= nf_attn_tile_nq(hp, c->n_ctx);
}

/* The prompt attention of tokens t0 .. t0 + nt - 1 for the query heads of KV head kvh, as
 * nf_attn_head computes each (token, head) with n_tok >= 2, bit for bit, but for all the
 * tile's queries at once: KQ is the F16 multi-token kernel over keys x queries (each key row
 * converted once per 4 queries; the cells past a query's position, up to the tile's last,
 * are computed and then masked), the softmax row by row, and KQV the tile kernel (attn.h),
 * each V row converted once per 8 queries; the query heads of a GQA group share the rows. */
static void nf_attn_tile(struct nf_ctx *c, int il, int t0, int nt, int kvh, int pos0, int n_kv,
                         void *scratch)
{
    const struct nf_hparams *hp = &c->m->hp;
    const int hd = hp->head_dim, kvd = hp->n_head_kv * hd, vd = nf_head_dim_v(hp);
    const int g = hp->n_head / hp->n_head_kv, nq = nt * g, n_vis = pos0 + t0 + nt;
    const size_t ldp = (size_t)(c->n_ctx + hp->kv_pad);
    const float scale = nf_attn_scale(hp);
    const int qmax = nf_attn_tile_nq(hp, c->n_ctx);
    nf_fp16_t *q16 = scratch; /* (nq, hd) */
    float *sc = (void *)((char *)scratch + nf_align64((size_t)qmax * hd * sizeof(nf_fp16_t)));
    float *out = sc + (size_t)qmax * ldp;                                  /* (nq, vd) */
    float *lanes = (float *)nf_align64((size_t)(out + (size_t)qmax * vd)); /* lane sums */
    const nf_fp16_t *kc =
        (const nf_fp16_t *)c->k_cache + (size_t)il * c->n_ctx * kvd + (size_t)kvh * hd;
    const nf_fp16_t *vc =
        (const nf_fp16_t *)c->v_cache + (size_t)il * c->n_ctx * kvd + (size_t)kvh * hd;
    const enum nf_isa isa = nf_kernels_isa();
    /* Query q is head kvh * g + q % g of token t0 + q / g: a token's g heads lie together. */
    for (int tt = 0; tt < nt; tt++) {
        const float *q = c->q + ((size_t)(t0 + tt) * hp->n_head + (size_t)kvh * g) * hd;
        for (int e = 0; e < g * hd; e++)
            q16[(size_t)tt * g * hd + e] = nf_fp32_to_fp16(q[e]);
    }
    nf_type_traits(NF_TYPE_F16)
        ->vec_dot_mat(hd, sc, ldp, kc, (size_t)kvd * sizeof(nf_fp16_t), q16,
                      (size_t)hd * sizeof(nf_fp16_t), n_vis, nq);
    for (int qi = 0; qi < nq; qi++) {
        const int pos = pos0 + t0 + qi / g, h = kvh * g + qi % g;
        float *row = sc + (size_t)qi * ldp;
        nf_attn_mask(row, n_kv, nf_attn_lo(hp, il, pos), pos, scale);
        const float inv = nf_attn_softmax(c, row, n_kv, h);
        nf_scale_round_f16_for(isa)(row, n_kv, inv);
        /* The cells past the position add nothing to KQV only as exact zeros. */
        for (int ic = pos + 1; ic < n_vis; ic++)
            row[ic] = 0.0f;
    }
    nf_attn_kqv_tile_for(isa)(out, (size_t)vd, vd, vc, (size_t)kvd, sc, ldp, nq, n_vis, lanes);
    nf_attn_tile_store(c, t0, nt, kvh, out);
}

/* Whether a prompt batch takes nf_attn_tile_q: a quantized K and V (kv_quant.h) whose K type
 * has a multi-token kernel keeping vec_dot's order per pair, one token's query heads of a KV
 * group fitting a tile. */
static bool nf_attn_tiled_q(const struct nf_ctx *c, int n_tok)
{
    const struct nf_hparams *hp = &c->m->hp;
    return n_tok >= 2 && !c->per_row && !c->attn_untiled && c->type_k != NF_TYPE_F16 &&
           c->type_v != NF_TYPE_F16 && !hp->n_lora_kv && nf_vec_dot_cols(c->type_k) &&
           hp->n_head / hp->n_head_kv <= nf_attn_tile_nq(hp, c->n_ctx);
}

/* The prompt attention of a quantized K and V for tokens t0 .. t0 + nt - 1 and the query heads
 * of KV head kvh, as nf_attn_head computes each (token, head) with n_tok >= 2, bit for bit, for
 * the tile's queries at once: each query quantized as there, the scores by the K type's
 * multi-token kernel whose every output is vec_dot's (nf_vec_dot_cols: each K row unpacked once
 * for all the queries; the cells past a query's position, up to the tile's last, are computed
 * and then masked), scaled and masked as there, the softmax row by row, and then each V row,
 * read once, added with the type's axpy into the output of every query that sees it, rows in
 * the same ascending order for each output. */
static void nf_attn_tile_q(struct nf_ctx *c, int il, int t0, int nt, int kvh, int pos0, int n_kv,
                           void *scratch)
{
    const struct nf_hparams *hp = &c->m->hp;
    const int hd = hp->head_dim, kvd = hp->n_head_kv * hd, vd = nf_head_dim_v(hp);
    const int g = hp->n_head / hp->n_head_kv, nq = nt * g, n_vis = pos0 + t0 + nt;
    const size_t ldp = (size_t)(c->n_ctx + hp->kv_pad);
    const float scale = nf_attn_scale(hp);
    const int qmax = nf_attn_tile_nq(hp, c->n_ctx);
    const struct nf_type_traits *tr = nf_type_traits(c->type_k);
    /* A quantized query takes fewer bytes than nf_attn_tile's F16 one (q8_0: 34 per 32). */
    const size_t qrow = nf_kv_row_bytes(tr->vec_dot_type, hd);
    uint8_t *qq = scratch; /* (nq, qrow) */
    float *sc = (void *)((char *)scratch + nf_align64((size_t)qmax * hd * sizeof(nf_fp16_t)));
    float *out = sc + (size_t)qmax * ldp; /* (nq, vd) */
    float inv[NF_ATTN_TILE_MAXQ] = {0};
    int lo[NF_ATTN_TILE_MAXQ] = {0}, lo_min = n_vis;
    /* Query q is head kvh * g + q % g of token t0 + q / g: a token's g heads lie together. */
    for (int qi = 0; qi < nq; qi++)
        nf_act_quantizer(tr->vec_dot_type)(
            c->q + ((size_t)(t0 + qi / g) * hp->n_head + (size_t)kvh * g + qi % g) * hd,
            qq + (size_t)qi * qrow, hd);
    nf_vec_dot_cols(c->type_k)(hd, sc, ldp, nf_kv_row(c->k_cache, c->type_k, c, il, 0, kvh),
                               nf_kv_row_bytes(c->type_k, kvd), qq, qrow, n_vis, nq);
    for (int qi = 0; qi < nq; qi++) {
        const int pos = pos0 + t0 + qi / g, h = kvh * g + qi % g;
        lo[qi] = nf_attn_lo(hp, il, pos);
        lo_min = lo[qi] < lo_min ? lo[qi] : lo_min;
        float *row = sc + (size_t)qi * ldp;
        nf_attn_mask(row, n_kv, lo[qi], pos, scale);
        inv[qi] = nf_attn_softmax(c, row, n_kv, h);
    }
    const nf_kv_axpy_fn axpy = nf_kv_axpy_for(c->type_v);
    memset(out, 0, sizeof(float) * (size_t)nq * (size_t)vd);
    for (int ic = lo_min; ic < n_vis; ic++) {
        const void *vr = nf_kv_row(c->v_cache, c->type_v, c, il, ic, kvh);
        /* Query qi sees cells lo[qi] .. its position pos0 + t0 + qi / g. */
        for (int qi = (ic - pos0 - t0 > 0 ? ic - pos0 - t0 : 0) * g; qi < nq; qi++)
            if (ic >= lo[qi])
                axpy(out + (size_t)qi * vd, sc[(size_t)qi * ldp + ic] * inv[qi], vr, vd);
    }
    nf_attn_tile_store(c, t0, nt, kvh, out);
}

static void nf_attn_run(void *arg, int ith, int nth)
{
    const struct nf_attn_job *j = arg;
    struct nf_ctx *c = j->c;
    void *scratch = (char *)c->att_scratch + (size_t)ith * c->att_scratch_stride;
    const int nh = c->m->hp.n_head;
    /* llama.cpp's KV cache view covers the used cells padded to NF_KV_PAD (the cells past a
     * token's position are masked); the padded length decides the summation order. gemma3's
     * goldens come from a llama.cpp that pads to 256 (kv_pad) within a cache padded likewise,
     * so there the view may reach past n_ctx: those cells are masked and never read. */
    const int pad = c->m->hp.kv_pad ? c->m->hp.kv_pad : NF_KV_PAD;
    int n_kv = (j->pos0 + j->n_tok + pad - 1) / pad * pad;
    const int cap = c->m->hp.kv_pad ? (c->n_ctx + pad - 1) / pad * pad : c->n_ctx;
    n_kv = n_kv < cap ? n_kv : cap;
    const bool tiled_q = nf_attn_tiled_q(c, j->n_tok);
    if (tiled_q || nf_attn_tiled(c, j->n_tok, n_kv)) {
        /* Tiles of tokens x a KV group's heads; with the KV heads inner, consecutive tasks
         * (which alternate between threads) cost about the same. */
        const int nkv = c->m->hp.n_head_kv;
        const int tt = nf_attn_tile_nq(&c->m->hp, c->n_ctx) / (nh / nkv);
        const int ntiles = (j->n_tok + tt - 1) / tt;
        for (int task = ith; task < ntiles * nkv; task += nth) {
            const int t0 = task / nkv * tt;
            (tiled_q ? nf_attn_tile_q : nf_attn_tile)(c, j->il, t0,
                                                      j->n_tok - t0 < tt ? j->n_tok - t0 : tt,
                                                      task % nkv, j->pos0, n_kv, scratch);
        }
        return;
    }
    for (int task = ith; task < j->n_tok * nh; task += nth) {
        const int t = task / nh, pos = j->pos0 + t;
        if (c->per_row) {
            /* Each row as the decode step of its token alone: its own padded view of the
             * cells up to its position, and the one-token (non-tinyBLAS) products. */
            const int kv1 = (pos + pad) / pad * pad;
            nf_attn_head(c, j->il, t, task % nh, pos, 1, kv1 < cap ? kv1 : cap, scratch);
        } else {
            nf_attn_head(c, j->il, t, task % nh, pos, j->n_tok, n_kv, scratch);
        }
    }
}

/* --- the attention walk: the cache's cells block by block (kv_file.h) -----------------------
 * With the cache on disk only a window of its blocks is in memory, so nf_attn_walk computes a
 * layer's attention as nf_attn_head does but cell block after cell block: the scores over the
 * K blocks, the softmax over all of them, then the sums over the V blocks, for a wave of
 * (token, head) tasks at a time whose scores and partial sums are kept (c->walk_buf). Every
 * score is one dot of its own, and the sums over the cells keep their lanes across blocks, in
 * the order of the kernels nf_attn_head calls (nf__ggml_dot_ref, nf__vec_dot_f16_cols_ref,
 * the flash loop, the quantized axpy), so the output is bit-identical to the in-RAM cache's. */

/* One (token, head) task of a wave. */
struct nf_walk_task {
    int t, h, pos, n_kv, lo;
    bool tok2;  /* nf_attn_head's n_tok >= 2: the tinyBLAS products (not per_row) */
    float M, S; /* the flash loop's running max and sum */
    float inv;  /* 1 / the softmax's sum */
};

/* A task's scratch in c->walk_buf; acc is the V sums, lane-major: (128, vd) floats for the
 * one-token products (ggml_vec_dot_f32's 64 lanes, then the products of its tail), (16, vd)
 * for tinyBLAS's. */
struct nf_walk_mem {
    struct nf_walk_task *tk;
    nf_fp16_t *q16;   /* (hd) */
    void *qq;         /* hd values as the quantized K's vec_dot_type */
    nf_fp16_t *acc16; /* (vd) the flash loop's sum */
    float *sc;        /* (n_ctx + kv_pad) */
    float *acc;
};

enum { NF_WALK_INIT, NF_WALK_K, NF_WALK_SOFTMAX, NF_WALK_V, NF_WALK_END, NF_WALK_FLASH };

struct nf_walk_job {
    struct nf_ctx *c;
    int il, pos0, n_tok, n_kv, w0, nw; /* the wave: tasks w0 .. w0 + nw - 1 */
    int phase, c0, c1;                 /* the cells of this step: [c0, c1) */
    nf_kv_f16_fn axpy16, mul16;        /* the F16 V sums' kernels (kv_quant.h) */
    /* The blocks c->kv_need handed out for this step, K (kind 0) and V (1): cell base_c0[k]'s
     * row at base[k], the next cells' rows after it. */
    const char *base[2];
    int base_c0[2];
};

/* Cell ic's row of kind (0: K, 1: V, of the cache's types) from head kvh's first value, in the
 * blocks the job holds (a head's values are whole blocks: nf_kv_types_check). */
static const void *nf_walk_row(const struct nf_walk_job *j, int kind, int ic, int kvh)
{
    const struct nf_hparams *hp = &j->c->m->hp;
    const enum nf_type t = kind ? j->c->type_v : j->c->type_k;
    return j->base[kind] +
           (size_t)(ic - j->base_c0[kind]) * nf_kv_row_bytes(t, hp->n_head_kv * hp->head_dim) +
           (size_t)kvh * nf_kv_row_bytes(t, hp->head_dim);
}

static size_t nf_walk_task_bytes(const struct nf_hparams *hp, int n_ctx, int lanes)
{
    const size_t hd = (size_t)hp->head_dim, vd = (size_t)nf_head_dim_v(hp);
    return nf_align64(sizeof(struct nf_walk_task)) + nf_align64(hd * 2) + nf_align64(hd * 2 + 64) +
           nf_align64(vd * 2) + nf_align64((size_t)(n_ctx + hp->kv_pad) * 4) +
           nf_align64(vd * (size_t)lanes * 4);
}

size_t nf_attn_walk_bytes(const struct nf_hparams *hp, int n_ctx, int n_ubatch, size_t kv_bytes)
{
    const size_t one = nf_walk_task_bytes(hp, n_ctx, 128);
    const size_t per = nf_walk_task_bytes(hp, n_ctx, 16);
    /* 32 MiB, an eighth of the cache in RAM (the walk must save memory) or a chunk's tasks,
     * whichever is least; one task at least. */
    size_t b = NF_WALK_BYTES < kv_bytes / 8 ? NF_WALK_BYTES : kv_bytes / 8;
    const size_t all = (size_t)(n_ubatch > 1 ? n_ubatch : 1) * (size_t)hp->n_head * one;
    b = b < all ? b : all;
    b = b > one ? b : one;
    return b > per ? b : per;
}

static struct nf_walk_mem nf_walk_mem(const struct nf_ctx *c, int i, int lanes)
{
    const struct nf_hparams *hp = &c->m->hp;
    const size_t hd = (size_t)hp->head_dim, vd = (size_t)nf_head_dim_v(hp);
    /* Byte offsets of the parts from the task's start (each 64-byte aligned). */
    const size_t o_q16 = nf_align64(sizeof(struct nf_walk_task)), o_qq = o_q16 + nf_align64(hd * 2),
                 o_acc16 = o_qq + nf_align64(hd * 2 + 64), o_sc = o_acc16 + nf_align64(vd * 2),
                 o_acc = o_sc + nf_align64((size_t)(c->n_ctx + hp->kv_pad) * 4);
    void *base = (char *)c->walk_buf + (size_t)i * nf_walk_task_bytes(hp, c->n_ctx, lanes);
    struct nf_walk_mem w = {.tk = base,
                            .q16 = (void *)((char *)base + o_q16),
                            .qq = (char *)base + o_qq,
                            .acc16 = (void *)((char *)base + o_acc16),
                            .sc = (void *)((char *)base + o_sc),
                            .acc = (void *)((char *)base + o_acc)};
    return w;
}

/* The products of tasks whose order is tinyBLAS's (16 lanes) and of the others (128). */
static int nf_walk_lanes(const struct nf_ctx *c, int n_tok, int n_kv)
{
    const bool kvq = c->type_k != NF_TYPE_F16 || c->type_v != NF_TYPE_F16;
    return (n_tok >= 2 && !c->per_row && n_kv % 16 == 0) || (c->attn_mode == NF_ATTN_F32 && !kvq)
               ? 16
               : 128;
}

/* What nf_attn_head does before its loops: the task's view, Q in F16 (and quantized). */
static void nf_walk_init(const struct nf_walk_job *j, struct nf_walk_mem *w, int g)
{
    const struct nf_ctx *c = j->c;
    const struct nf_hparams *hp = &c->m->hp;
    const int nh = hp->n_head, hd = hp->head_dim, vd = nf_head_dim_v(hp);
    struct nf_walk_task *tk = w->tk;
    tk->t = g / nh;
    tk->h = g % nh;
    tk->pos = j->pos0 + tk->t;
    tk->n_kv = j->n_kv;
    tk->tok2 = j->n_tok >= 2 && !c->per_row;
    if (c->per_row) { /* as nf_attn_run */
        const int pad = hp->kv_pad ? hp->kv_pad : NF_KV_PAD;
        const int cap = hp->kv_pad ? (c->n_ctx + pad - 1) / pad * pad : c->n_ctx;
        const int kv1 = (tk->pos + pad) / pad * pad;
        tk->n_kv = kv1 < cap ? kv1 : cap;
    }
    tk->lo = nf_attn_lo(hp, j->il, tk->pos);
    const float *q = c->q + (size_t)tk->t * nh * hd + (size_t)tk->h * hd;
    for (int d = 0; d < hd; d++)
        w->q16[d] = nf_fp32_to_fp16(q[d]);
    if (c->type_k != NF_TYPE_F16)
        nf_act_quantizer(nf_type_traits(c->type_k)->vec_dot_type)(q, w->qq, hd);
    tk->M = -INFINITY;
    tk->S = 0.0f;
    memset(w->acc16, 0, sizeof(nf_fp16_t) * (size_t)vd);
}

/* The scores of cells [c0, c1) (those up to the task's position). */
static void nf_walk_k(const struct nf_walk_job *j, struct nf_walk_mem *w)
{
    const struct nf_ctx *c = j->c;
    const struct nf_hparams *hp = &c->m->hp;
    const struct nf_walk_task *tk = w->tk;
    const int hd = hp->head_dim, kvd = hp->n_head_kv * hd;
    const int kvh = tk->h / (hp->n_head / hp->n_head_kv), lo = tk->lo;
    const float scale = nf_attn_scale(hp);
    const int c0 = j->c0, c1 = j->c1 < tk->pos + 1 ? j->c1 : tk->pos + 1;
    float *sc = w->sc;
    if (c1 <= c0)
        return;
    if (c->type_k != NF_TYPE_F16) {
        const struct nf_type_traits *tr = nf_type_traits(c->type_k);
        for (int ic = c0; ic < c1; ic++) {
            float s = -INFINITY;
            if (ic >= lo) {
                tr->vec_dot(hd, &s, nf_walk_row(j, 0, ic, kvh), w->qq);
                s *= scale;
            }
            sc[ic] = s;
        }
        return;
    }
    const nf_fp16_t *kc = nf_walk_row(j, 0, c0, kvh); /* cell c0's, the others kvd apart */
    const bool q_f32 = c->attn_mode == NF_ATTN_F32 && c->type_v == NF_TYPE_F16,
               kq_tb = tk->tok2 && hd % 16 == 0;
    if (kq_tb && !q_f32) {
        nf_type_traits(NF_TYPE_F16)
            ->vec_dot_mat(hd, sc + c0, (size_t)tk->n_kv, kc, (size_t)kvd * sizeof(nf_fp16_t),
                          w->q16, 0, c1 - c0, 1);
        for (int ic = c0; ic < c1; ic++)
            sc[ic] = ic >= lo ? sc[ic] * scale : -INFINITY;
        return;
    }
    const float *q = c->q + (size_t)tk->t * hp->n_head * hd + (size_t)tk->h * hd;
    for (int ic = c0; ic < c1; ic++) {
        const nf_fp16_t *kr = kc + (size_t)(ic - c0) * kvd;
        sc[ic] = ic < lo ? -INFINITY
                         : (q_f32   ? nf_tinyblas_dot(kr, true, q, hd, hd)
                            : kq_tb ? nf_tinyblas_dot16(kr, w->q16, hd)
                                    : nf_ggml_dot(kr, w->q16, true, hd, hd)) *
                               scale;
    }
}

/* After the last K block: the masked cells past the position, the softmax, the probabilities
 * as nf_attn_head rounds them, the V sums zeroed. */
static void nf_walk_softmax(const struct nf_walk_job *j, struct nf_walk_mem *w, int lanes)
{
    const struct nf_ctx *c = j->c;
    const int vd = nf_head_dim_v(&c->m->hp);
    struct nf_walk_task *tk = w->tk;
    float *sc = w->sc;
    for (int ic = tk->pos + 1; ic < tk->n_kv; ic++)
        sc[ic] = -INFINITY;
    tk->inv = nf_attn_softmax(c, sc, tk->n_kv, tk->h);
    if (c->type_v != NF_TYPE_F16) {
        memset(c->att + ((size_t)tk->t * c->m->hp.n_head + (size_t)tk->h) * (size_t)vd, 0,
               sizeof(float) * (size_t)vd);
        return;
    }
    const bool p_f32 = c->attn_mode == NF_ATTN_F32 && c->type_k == NF_TYPE_F16;
    for (int ic = 0; ic < tk->n_kv; ic++) {
        sc[ic] *= tk->inv;
        if (!p_f32)
            sc[ic] = nf_fp16_to_fp32(nf_fp32_to_fp16(sc[ic]));
    }
    memset(w->acc, 0, sizeof(float) * (size_t)vd * (size_t)(lanes == 16 ? 16 : 64));
}

/* The V sums over cells [c0, c1). */
static void nf_walk_v(const struct nf_walk_job *j, struct nf_walk_mem *w, int lanes)
{
    const struct nf_ctx *c = j->c;
    const struct nf_hparams *hp = &c->m->hp;
    const struct nf_walk_task *tk = w->tk;
    const int hd = hp->head_dim, kvd = hp->n_head_kv * hd, vd = nf_head_dim_v(hp);
    const int kvh = tk->h / (hp->n_head / hp->n_head_kv);
    const int c0 = j->c0, c1 = j->c1 < tk->pos + 1 ? j->c1 : tk->pos + 1;
    const float *sc = w->sc;
    if (c1 <= c0)
        return;
    if (c->type_v != NF_TYPE_F16) {
        const nf_kv_axpy_fn axpy = nf_kv_axpy_for(c->type_v);
        float *out = c->att + ((size_t)tk->t * hp->n_head + (size_t)tk->h) * (size_t)vd;
        for (int ic = c0 > tk->lo ? c0 : tk->lo; ic < c1; ic++)
            axpy(out, sc[ic] * tk->inv, nf_walk_row(j, 1, ic, kvh), vd);
        return;
    }
    /* (deepseek2's V is its latent, the K cache) cell c0's row, the others kvd apart */
    const nf_fp16_t *vc = nf_walk_row(j, hp->n_lora_kv ? 0 : 1, c0, kvh);
    /* The sums are kept lane-major, (lanes, vd): a cell's V row meets its lane's vd sums in
     * order, the same fused multiply-add per value as the column-wise kernels; j->axpy16 /
     * j->mul16 vectorize that across the values, each value's rounding unchanged. */
    if (lanes == 16) { /* nf__vec_dot_f16_cols_ref: 16 lanes over the cells */
        for (int i = c0; i < c1; i++)
            j->axpy16(w->acc + (size_t)(i & 15) * vd, sc[i], vc + (size_t)(i - c0) * kvd, vd);
        return;
    }
    /* nf__ggml_dot_ref(vcol, sc, false, n_kv, pos + 1): 4 x 16 lanes (lane i & 63) below np,
     * then the tail's products (added in double at the end). */
    const int np = tk->n_kv & ~63, mv = tk->pos + 1 < np ? tk->pos + 1 : np;
    for (int i = c0; i < c1 && i < mv; i++)
        j->axpy16(w->acc + (size_t)(i & 63) * vd, sc[i], vc + (size_t)(i - c0) * kvd, vd);
    for (int i = c0 > np ? c0 : np; i < c1; i++)
        j->mul16(w->acc + (size_t)(64 + i - np) * vd, sc[i], vc + (size_t)(i - c0) * kvd, vd);
}

/* The task's output from its V sums. */
static void nf_walk_end(const struct nf_walk_job *j, struct nf_walk_mem *w, int lanes)
{
    const struct nf_ctx *c = j->c;
    const struct nf_hparams *hp = &c->m->hp;
    const struct nf_walk_task *tk = w->tk;
    const int vd = nf_head_dim_v(hp);
    float *out = c->att + ((size_t)tk->t * hp->n_head + (size_t)tk->h) * (size_t)vd;
    if (c->type_v != NF_TYPE_F16)
        return;
    float a[64];
    if (lanes == 16) {
        for (int d = 0; d < vd; d++) {
            for (int l = 0; l < 16; l++)
                a[l] = w->acc[(size_t)l * vd + d];
            out[d] = nf__hsum16(a);
        }
        return;
    }
    const int np = tk->n_kv & ~63;
    for (int d = 0; d < vd; d++) {
        for (int l = 0; l < 64; l++)
            a[l] = w->acc[(size_t)l * vd + d];
        for (int l = 0; l < 16; l++) {
            a[l] = a[l] + a[32 + l];
            a[16 + l] = a[16 + l] + a[48 + l];
            a[l] = a[l] + a[16 + l];
        }
        double s = np ? (double)nf__hsum16(a) : 0.0;
        for (int i = np; i < tk->pos + 1; i++)
            s += (double)w->acc[(size_t)(64 + i - np) * vd + d];
        out[d] = (float)s;
    }
}

/* nf_attn_head's flash loop over cells [c0, c1); with c0 < 0, its end (sink, output). */
static void nf_walk_flash(const struct nf_walk_job *j, struct nf_walk_mem *w)
{
    const struct nf_ctx *c = j->c;
    const struct nf_hparams *hp = &c->m->hp;
    struct nf_walk_task *tk = w->tk;
    const int hd = hp->head_dim, kvd = hp->n_head_kv * hd, vd = nf_head_dim_v(hp);
    const int kvh = tk->h / (hp->n_head / hp->n_head_kv);
    nf_fp16_t *acc16 = w->acc16;
    if (j->c0 < 0) {
        float *out = c->att + ((size_t)tk->t * hp->n_head + (size_t)tk->h) * (size_t)vd;
        if (c->attn_sinks) {
            const float sk = c->attn_sinks[tk->h];
            float ms = 1.0f, vs = 1.0f;
            if (sk > tk->M)
                ms = expf(tk->M - sk);
            else
                vs = expf(sk - tk->M);
            for (int d = 0; d < hd && ms != 1.0f; d++)
                acc16[d] = nf_fp32_to_fp16(nf_fp16_to_fp32(acc16[d]) * ms);
            tk->S = tk->S * ms + vs;
        }
        const float inv = tk->S == 0.0f ? 0.0f : 1.0f / tk->S;
        for (int d = 0; d < vd; d++)
            out[d] = nf_fp16_to_fp32(acc16[d]) * inv;
        return;
    }
    /* cell c0's rows of K and V (deepseek2's: its latent, the K cache), the others kvd apart */
    const nf_fp16_t *kc = nf_walk_row(j, 0, j->c0, kvh);
    const nf_fp16_t *vc = nf_walk_row(j, hp->n_lora_kv ? 0 : 1, j->c0, kvh);
    const float scale = nf_attn_scale(hp);
    const int c1 = j->c1 < tk->pos + 1 ? j->c1 : tk->pos + 1;
    for (int ic = j->c0 > tk->lo ? j->c0 : tk->lo; ic < c1; ic++) {
        float s = nf_dot_f16(kc + (size_t)(ic - j->c0) * kvd, w->q16, hd) * scale;
        float ms = 1.0f, vs = 1.0f;
        const nf_fp16_t *vr = vc + (size_t)(ic - j->c0) * kvd;
        if (s > tk->M) {
            const float Mold = tk->M;
            tk->M = s;
            ms = expf(Mold - tk->M);
            for (int d = 0; d < vd; d++)
                acc16[d] = nf_fp32_to_fp16(nf_fp16_to_fp32(acc16[d]) * ms);
        } else {
            vs = expf(s - tk->M);
        }
        for (int d = 0; d < vd; d++)
            acc16[d] = nf_fp32_to_fp16(nf_fp16_to_fp32(acc16[d]) + nf_fp16_to_fp32(vr[d]) * vs);
        tk->S = tk->S * ms + vs;
    }
}

static void nf_walk_run(void *arg, int ith, int nth)
{
    const struct nf_walk_job *j = arg;
    const int lanes = nf_walk_lanes(j->c, j->n_tok, j->n_kv);
    for (int i = ith; i < j->nw; i += nth) {
        struct nf_walk_mem w = nf_walk_mem(j->c, i, lanes);
        switch (j->phase) {
        case NF_WALK_INIT: nf_walk_init(j, &w, j->w0 + i); break;
        case NF_WALK_K: nf_walk_k(j, &w); break;
        case NF_WALK_SOFTMAX: nf_walk_softmax(j, &w, lanes); break;
        case NF_WALK_V: nf_walk_v(j, &w, lanes); break;
        case NF_WALK_END: nf_walk_end(j, &w, lanes); break;
        default: nf_walk_flash(j, &w);
        }
    }
}

/* Runs phase over the wave on the pool (work: multiply-adds, for the pool's threshold). */
static void nf_walk_phase(struct nf_walk_job *j, int phase, int c0, int c1, int64_t work)
{
    j->phase = phase;
    j->c0 = c0;
    j->c1 = c1;
    nf_threadpool_run(j->c->pool, nf_walk_run, j,
                      work < NF_PAR_MIN_WORK ? 1 : nf_threadpool_size(j->c->pool));
}

/* Walks cells [0, hi) of kind's blocks (1: V, or deepseek2's latents, kind 0) with phase,
 * asking c->kv_need for each run of resident blocks. Returns 0 or its negative errno. */
static int nf_walk_cells(struct nf_walk_job *j, int phase, int kind, int hi)
{
    struct nf_ctx *c = j->c;
    const int B = c->kv_block, nb = (hi + B - 1) / B;
    const int64_t per_cell = (int64_t)j->nw * c->m->hp.head_dim;
    for (int b = 0; b < nb;) {
        /* The flash loop wants a K block and its V block at once: one block at a time. */
        const void *base;
        int n = c->kv_need(c->kv_need_ud, c, j->il, kind, b, phase == NF_WALK_FLASH ? b + 1 : nb,
                           &base);
        if (n < 0)
            return n;
        j->base[kind] = base;
        j->base_c0[kind] = b * B;
        if (phase == NF_WALK_FLASH && !c->m->hp.n_lora_kv) {
            if ((n = c->kv_need(c->kv_need_ud, c, j->il, 1, b, b + 1, &base)) < 0)
                return n;
            j->base[1] = base;
            j->base_c0[1] = b * B;
        }
        const int c0 = b * B, c1 = (b + n) * B < hi ? (b + n) * B : hi;
        nf_walk_phase(j, phase, c0, c1, per_cell * (c1 - c0));
        b += n;
    }
    return 0;
}

static void nf_attn_walk(struct nf_ctx *c, int il, int pos0, int n_tok)
{
    const struct nf_hparams *hp = &c->m->hp;
    const int nh = hp->n_head;
    const int pad = hp->kv_pad ? hp->kv_pad : NF_KV_PAD;
    int n_kv = (pos0 + n_tok + pad - 1) / pad * pad;
    const int cap = hp->kv_pad ? (c->n_ctx + pad - 1) / pad * pad : c->n_ctx;
    n_kv = n_kv < cap ? n_kv : cap;
    const bool kvq = c->type_k != NF_TYPE_F16 || c->type_v != NF_TYPE_F16;
    const bool flash = c->attn_mode == NF_ATTN_FLASH && !kvq;
    const int lanes = nf_walk_lanes(c, n_tok, n_kv);
    const int per_wave = (int)(c->walk_bytes / nf_walk_task_bytes(hp, c->n_ctx, lanes));
    const int v_kind = hp->n_lora_kv ? 0 : 1;
    struct nf_walk_job j = {.c = c,
                            .il = il,
                            .pos0 = pos0,
                            .n_tok = n_tok,
                            .n_kv = n_kv,
                            .axpy16 = nf_kv_axpy_f16_for(),
                            .mul16 = nf_kv_mul_f16_for()};
    for (int w0 = 0; w0 < n_tok * nh && !c->kv_err; w0 += per_wave) {
        j.w0 = w0;
        j.nw = n_tok * nh - w0 < per_wave ? n_tok * nh - w0 : per_wave;
        const int t_last = (w0 + j.nw - 1) / nh;
        int hi = pos0 + t_last + 1;
        hi = hi < c->n_ctx ? hi : c->n_ctx;
        const int64_t small = (int64_t)j.nw * hp->head_dim;
        nf_walk_phase(&j, NF_WALK_INIT, 0, 0, small);
        int rc;
        if (flash) {
            if ((rc = nf_walk_cells(&j, NF_WALK_FLASH, 0, hi)) == 0)
                nf_walk_phase(&j, NF_WALK_FLASH, -1, 0, small);
        } else if ((rc = nf_walk_cells(&j, NF_WALK_K, 0, hi)) == 0) {
            nf_walk_phase(&j, NF_WALK_SOFTMAX, 0, 0, (int64_t)j.nw * n_kv);
            if ((rc = nf_walk_cells(&j, NF_WALK_V, v_kind, hi)) == 0)
                nf_walk_phase(&j, NF_WALK_END, 0, 0, small);
        }
        if (rc < 0)
            c->kv_err = rc;
    }
}

int nf_attn_walk_init(struct nf_ctx *c, int block, int n_ubatch, nf_kv_need_fn need, void *ud)
{
    const size_t bytes = nf_attn_walk_bytes(&c->m->hp, c->n_ctx, n_ubatch, nf_ctx_kv_bytes(c));
    if (block < 1 || !need)
        return NF_EUSAGE;
    free(c->walk_buf);
    if (!(c->walk_buf = aligned_alloc(64, nf_align64(bytes))))
        return -ENOMEM;
    c->walk_bytes = bytes;
    c->kv_block = block;
    c->kv_need = need;
    c->kv_need_ud = ud;
    c->kv_err = 0;
    return 0;
}

/* Fills c->rope_cos/sin for n_tok positions from pos0 as ggml_rope_cache_init does: the angle
 * of pair i is pos * base^(-2i/n_rot) computed as a running float product, divided by the
 * optional frequency factor, times the linear scaling factor, with YaRN (ext != 0: deepseek2,
 * gpt-oss) blended with the unscaled angle by rope_yarn's ramp over the correction dims corr;
 * cos and sin times mscale. */
static void nf_rope_fill(float *cs, float *sn, int n_rot, float base, float freq_scale,
                         const float *ff, float mscale, int pos0, int n_tok, float ext,
                         const float *corr)
{
    const int half = n_rot / 2;
    const float theta_scale = powf(base, -2.0f / (float)n_rot);
    for (int t = 0; t < n_tok; t++) {
        float theta = (float)(pos0 + t);
        for (int i = 0; i < half; i++) {
            float th = (ff ? theta / ff[i] : theta) * freq_scale;
            if (ext != 0.0f) {
                /* ggml's rope_yarn: pair i blends the interpolated angle with the
                 * extrapolated one by its ramp between the correction dims (the first
                 * product fused, as ggml's C is compiled). The magnitude scaling is in
                 * mscale already (rope_attn_factor). */
                const float extrap = ff ? theta / ff[i] : theta;
                const float y = ((float)i - corr[0]) / fmaxf(0.001f, corr[1] - corr[0]);
                const float ramp = (1 - fminf(1, fmaxf(0, y))) * ext;
                th = fmaf(freq_scale * extrap, 1 - ramp, extrap * ramp);
            }
            cs[(size_t)t * half + i] = cosf(th) * mscale;
            sn[(size_t)t * half + i] = sinf(th) * mscale;
            theta *= theta_scale;
        }
    }
}

void nf_rope_cache(struct nf_ctx *c, int pos0, int n_tok)
{
    const struct nf_hparams *hp = &c->m->hp;
    const float *ff = c->m->rope_freqs.data;
    /* phi3 LongRoPE: llama.cpp's get_rope_factors takes the long factors when the context is
     * longer than the original one; ggml's rope_yarn scales cos and sin by attn_factor (1.0,
     * an exact no-op, for the other architectures). */
    if (!ff && c->m->rope_long.data)
        ff = c->n_ctx > hp->n_ctx_orig ? c->m->rope_long.data : c->m->rope_short.data;
    nf_rope_fill(c->rope_cos, c->rope_sin, hp->n_rot, hp->rope_base, hp->rope_freq_scale, ff,
                 hp->rope_attn_factor, pos0, n_tok, hp->yarn_ext_factor, hp->yarn_corr);
    /* The local layers rotate with their own base and scale (no frequency factors): gemma3's
     * unscaled base 10000, gpt-oss's with the global YaRN scaling over their own base. */
    if (hp->n_swa && hp->yarn_ext_factor != 0.0f)
        nf_rope_fill(c->rope_cos_swa, c->rope_sin_swa, hp->n_rot, hp->rope_base_swa,
                     hp->rope_freq_scale_swa, NULL, hp->rope_attn_factor, pos0, n_tok,
                     hp->yarn_ext_factor, hp->yarn_corr_swa);
    else if (hp->n_swa)
        nf_rope_fill(c->rope_cos_swa, c->rope_sin_swa, hp->n_rot, hp->rope_base_swa,
                     hp->rope_freq_scale_swa, NULL, 1.0f, pos0, n_tok, 0.0f, NULL);
}

/* Rotates the pairs of each head's first n_rot dims: adjacent pairs (x[2i], x[2i+1]) in
 * llama.cpp's NORM mode (llama), pairs half the rotated dims apart (x[i], x[i + n_rot/2]) in
 * its NEOX mode (qwen2, qwen3). Dims past n_rot are left alone. */
static void nf_rope_apply(const struct nf_ctx *c, float *x, int n_heads, int t, bool swa)
{
    for (int h = 0; h < n_heads; h++)
        nf_rope_vec(c, x + (size_t)h * c->m->hp.head_dim, t, swa);
}

void nf_rope_vec(const struct nf_ctx *c, float *v, int t, bool swa)
{
    const struct nf_hparams *hp = &c->m->hp;
    const int half = hp->n_rot / 2;
    const int stride = hp->rope_neox ? 1 : 2, off = hp->rope_neox ? half : 1;
    const float *cs = (swa ? c->rope_cos_swa : c->rope_cos) + (size_t)t * half;
    const float *sn = (swa ? c->rope_sin_swa : c->rope_sin) + (size_t)t * half;
    for (int i = 0; i < half; i++) {
        float *p0 = v + (size_t)i * stride, *p1 = p0 + off;
        const float x0 = *p0, x1 = *p1;
        /* ggml's C is compiled with fused multiply-add contraction, which fuses the first
         * product of each expression. */
        *p0 = fmaf(x0, cs[i], -(x1 * sn[i]));
        *p1 = fmaf(x0, sn[i], x1 * cs[i]);
    }
}

void nf_attn_qk(struct nf_ctx *c, const struct nf_attn_weights *w, int n_tok)
{
    const struct nf_hparams *hp = &c->m->hp;
    const int hd = hp->head_dim, qd = hp->n_head * hd, kvd = hp->n_head_kv * hd;
    /* ggml_add of the bias row to every token's projection (qwen2). */
    const float *bias[3] = {w->bq.data, w->bk.data, w->bv.data};
    float *dst[3] = {c->q, c->k, c->v};
    const int len[3] = {qd, kvd, kvd};
    for (int j = 0; j < 3; j++) {
        if (!bias[j])
            continue;
        for (int t = 0; t < n_tok; t++)
            for (int i = 0; i < len[j]; i++)
                dst[j][(size_t)t * len[j] + i] += bias[j][i];
    }
    /* ggml_rms_norm over each norm-length run of values, then ggml_mul by the norm: each
     * head's head_dim values (qwen3), or each token's whole projection (olmoe, whose norms
     * are n_head * head_dim and n_head_kv * head_dim long). */
    if (w->q_norm.data) {
        const size_t n = (size_t)w->q_norm.ne[0];
        for (size_t r = 0; r < (size_t)n_tok * qd / n; r++)
            nf_rmsnorm(c->q + r * n, c->q + r * n, w->q_norm.data, (int)n, hp->rms_eps);
    }
    if (w->k_norm.data) {
        const size_t n = (size_t)w->k_norm.ne[0];
        for (size_t r = 0; r < (size_t)n_tok * kvd / n; r++)
            nf_rmsnorm(c->k + r * n, c->k + r * n, w->k_norm.data, (int)n, hp->rms_eps);
    }
}

void nf_attn_forward(struct nf_ctx *c, const struct nf_attn_weights *w, int il, int pos0, int n_tok)
{
    const struct nf_hparams *hp = &c->m->hp;
    const int E = hp->n_embd;
    for (int t = 0; t < n_tok; t++)
        nf_rmsnorm(c->xn + (size_t)t * E, c->x + (size_t)t * E, w->norm.data, E, hp->rms_eps);
    nf_matmul(c, c->q, &w->wq, c->xn, n_tok);
    nf_matmul(c, c->k, &w->wk, c->xn, n_tok);
    nf_matmul(c, c->v, &w->wv, c->xn, n_tok);
    nf_attn_qk(c, w, n_tok);
    c->attn_sinks = w->sinks.data;
    nf_attn_core(c, il, pos0, n_tok);
    nf_matmul(c, c->ffo, &w->wo, c->att, n_tok);
    nf_add_bias(c->ffo, &w->bo, 0, n_tok); /* gpt-oss: ggml_add of attn_output.bias */
    nf_post_norm(c, c->ffo, &w->post_norm, n_tok);
    for (size_t i = 0; i < (size_t)n_tok * E; i++)
        c->x[i] += c->ffo[i];
}

void nf_attn_core(struct nf_ctx *c, int il, int pos0, int n_tok)
{
    const struct nf_hparams *hp = &c->m->hp;
    const int qd = hp->n_head * hp->head_dim, kvd = hp->n_head_kv * hp->head_dim;
    const size_t krow = nf_kv_row_bytes(c->type_k, kvd), vrow = nf_kv_row_bytes(c->type_v, kvd);
    char *kc = (char *)c->k_cache + (size_t)il * c->n_ctx * krow;
    char *vc = (char *)c->v_cache + (size_t)il * c->n_ctx * vrow;
    const bool swa = nf_layer_swa(hp, il);
    for (int t = 0; t < n_tok; t++) {
        nf_rope_apply(c, c->q + (size_t)t * qd, hp->n_head, t, swa);
        nf_rope_apply(c, c->k + (size_t)t * kvd, hp->n_head_kv, t, swa);
        if (hp->q_scale) /* gemma3: ggml_scale of Q after RoPE, before its F16 rounding */
            for (int i = 0; i < qd; i++)
                c->q[(size_t)t * qd + i] *= hp->q_scale;
        if (hp->q_prescale) { /* phi3: ggml_scale(Qcur, 1 / sqrt(head_dim)) after RoPE */
            const float qs = 1.0f / sqrtf((float)hp->head_dim);
            for (int i = 0; i < qd; i++)
                c->q[(size_t)t * qd + i] *= qs;
        }
        nf_kv_store_row(c->type_k, kc + (size_t)(pos0 + t) * krow, c->k + (size_t)t * kvd, kvd);
        nf_kv_store_row(c->type_v, vc + (size_t)(pos0 + t) * vrow, c->v + (size_t)t * kvd, kvd);
    }
    nf_attn_heads(c, il, pos0, n_tok);
}

void nf_attn_heads(struct nf_ctx *c, int il, int pos0, int n_tok)
{
    if (c->kv_need && !c->kv_whole) { /* the cache on disk: block by block */
        nf_attn_walk(c, il, pos0, n_tok);
        return;
    }
    const struct nf_hparams *hp = &c->m->hp;
    struct nf_attn_job j = {.c = c, .il = il, .pos0 = pos0, .n_tok = n_tok};
    int64_t work = (int64_t)n_tok * hp->n_head * (pos0 + n_tok) * hp->head_dim;
    nf_threadpool_run(c->pool, nf_attn_run, &j,
                      work < NF_PAR_MIN_WORK ? 1 : nf_threadpool_size(c->pool));
}

/* hb = silu(hb) * hb2, SiLU as ggml: x / (1 + exp(-x)). */
void nf_swiglu(float *hb, const float *hb2, int n_rows, int n)
{
    /* ggml_vec_swiglu_f32 of llama.cpp's AVX-512 build, row by row. */
    const bool v512 = nf_kernels_isa() >= NF_ISA_AVX512;
    for (int r = 0; r < n_rows; r++, hb += n, hb2 += n) {
        if (v512)
            nf__swiglu_avx512(hb, hb2, n);
        else
            nf__swiglu_ref(hb, hb2, n);
    }
}

/* ggml's tanh GELU of one value (ggml_gelu_f32), the first product-sum fused as ggml's C is
 * compiled (FMA contraction). */
static float nf_gelu_tanh(float x)
{
    const float sqrt_2_over_pi = 0.79788456080286535587989211986876f, coef_a = 0.044715f;
    return 0.5f * x * (1.0f + tanhf(sqrt_2_over_pi * x * fmaf(coef_a * x, x, 1.0f)));
}

/* ggml_table_gelu_f16: the GELU of every F16 value, rounded to F16 (built once). */
static nf_fp16_t nf_gelu_table[1 << 16];
static pthread_once_t nf_gelu_once = PTHREAD_ONCE_INIT;

static void nf_gelu_table_init(void)
{
    for (uint32_t i = 0; i < (1u << 16); i++)
        nf_gelu_table[i] = nf_fp32_to_fp16(nf_gelu_tanh(nf_fp16_to_fp32((nf_fp16_t)i)));
}

void nf_geglu(float *hb, const float *hb2, int n_rows, int n)
{
    /* ggml_vec_geglu_f32 with GGML_GELU_FP16 (the CPU backend's default): the GELU looked up
     * by the F16 rounding of x, except past +-10. */
    pthread_once(&nf_gelu_once, nf_gelu_table_init);
    for (size_t i = 0; i < (size_t)n_rows * (size_t)n; i++) {
        const float x = hb[i];
        if (x <= -10.0f)
            hb[i] = 0.0f;
        else if (x >= 10.0f)
            hb[i] = x * hb2[i];
        else
            hb[i] = nf_fp16_to_fp32(nf_gelu_table[nf_fp32_to_fp16(x)]) * hb2[i];
    }
}

void nf_swiglu_oai(float *hb, const float *hb2, int n_rows, int n)
{
    /* ggml_swiglu_oai's constants in llama.cpp's openai-moe graph. */
    const float alpha = 1.702f, limit = 7.0f;
    for (size_t i = 0; i < (size_t)n_rows * (size_t)n; i++) {
        const float x = hb[i] < limit ? hb[i] : limit;
        const float y = hb2[i] < -limit ? -limit : hb2[i] > limit ? limit : hb2[i];
        const float glu = x / (1.0f + expf(alpha * (-x)));
        hb[i] = glu * (y + 1.0f);
    }
}

void nf_add_bias(float *x, const struct nf_tensor *b, int row, int n_tok)
{
    if (!b->data)
        return;
    const int64_t n = b->ne[0];
    const float *br = (const float *)b->data + (size_t)row * (size_t)n;
    for (int t = 0; t < n_tok; t++)
        for (int64_t i = 0; i < n; i++)
            x[(size_t)t * (size_t)n + (size_t)i] += br[i];
}

void nf_ffn_act(const struct nf_hparams *hp, float *hb, const float *hb2, int n_rows, int n)
{
    if (hp->oai_moe)
        nf_swiglu_oai(hb, hb2, n_rows, n);
    else if (hp->ffn_gelu)
        nf_geglu(hb, hb2, n_rows, n);
    else
        nf_swiglu(hb, hb2, n_rows, n);
}

void nf_post_norm(const struct nf_ctx *c, float *x, const struct nf_tensor *norm, int n_tok)
{
    const int E = c->m->hp.n_embd;
    if (!norm->data)
        return;
    for (int t = 0; t < n_tok; t++)
        nf_rmsnorm(x + (size_t)t * E, x + (size_t)t * E, norm->data, E, c->m->hp.rms_eps);
}

void nf_ffn_forward(struct nf_ctx *c, const struct nf_tensor *norm, const struct nf_ffn_weights *w,
                    int n_tok)
{
    const struct nf_hparams *hp = &c->m->hp;
    const int E = hp->n_embd;
    for (int t = 0; t < n_tok; t++)
        nf_rmsnorm(c->xn + (size_t)t * E, c->x + (size_t)t * E, norm->data, E, hp->rms_eps);
    nf_matmul(c, c->hb, &w->gate, c->xn, n_tok);
    nf_matmul(c, c->hb2, &w->up, c->xn, n_tok);
    nf_ffn_act(hp, c->hb, c->hb2, n_tok, (int)w->gate.ne[1]);
    nf_matmul(c, c->ffo, &w->down, c->hb, n_tok);
    nf_post_norm(c, c->ffo, &w->post_norm, n_tok);
    for (size_t i = 0; i < (size_t)n_tok * E; i++)
        c->x[i] += c->ffo[i];
}

/* The 2-D slice of expert e of a 3-D expert tensor. */
static struct nf_tensor nf_expert_view(const struct nf_tensor *t, int e)
{
    struct nf_tensor v = *t;
    v.ne[2] = 1;
    v.data = (char *)t->data + (size_t)e * (size_t)t->ne[1] * t->row_size;
    return v;
}

void nf_moe_forward(struct nf_ctx *c, const struct nf_tensor *norm, const struct nf_moe_weights *w,
                    int n_tok)
{
    const struct nf_hparams *hp = &c->m->hp;
    const int E = hp->n_embd, X = hp->n_expert, K = hp->n_expert_used;
    for (int t = 0; t < n_tok; t++)
        nf_rmsnorm(c->xn + (size_t)t * E, c->x + (size_t)t * E, norm->data, E, hp->rms_eps);
    nf_matmul(c, c->router, &w->gate_inp, c->xn, n_tok);
    nf_add_bias(c->router, &w->gate_inp_b, 0, n_tok); /* gpt-oss's router bias */
    if (w->gate_shexp.data) {
        /* The shared expert on every token, as a dense FFN of its own width, gated (qwen2moe)
         * or not (deepseek2, which has no ffn_gate_inp_shexp). */
        const int S = hp->n_ff_shexp;
        const bool gated = w->gate_inp_shexp.data != NULL; /* glm4moe's is not */
        if (gated)
            nf_matmul(c, c->sh_gate, &w->gate_inp_shexp, c->xn, n_tok);
        nf_matmul(c, c->hb, &w->gate_shexp, c->xn, n_tok);
        nf_matmul(c, c->hb2, &w->up_shexp, c->xn, n_tok);
        nf_swiglu(c->hb, c->hb2, n_tok, S);
        nf_matmul(c, gated ? c->ffo : c->sh_out, &w->down_shexp, c->hb, n_tok);
        if (gated)
            nf_shexp_gate(c, c->ffo, n_tok);
    }
    for (int t = 0; t < n_tok; t++) {
        int sel[64];
        float wsel[64];
        nf_moe_route_layer(hp, c->router + (size_t)t * X, w->exp_probs_b.data, sel, wsel);
        float *xt = c->xn + (size_t)t * E, *ot = c->ffo + (size_t)t * E;
        for (int k = 0; k < K; k++) {
            struct nf_ffn_weights ew = {.gate = nf_expert_view(&w->gate_exps, sel[k]),
                                        .up = nf_expert_view(&w->up_exps, sel[k]),
                                        .down = nf_expert_view(&w->down_exps, sel[k])};
            const float wk = wsel[k];
            nf_matmul(c, c->hb, &ew.gate, xt, 1);
            nf_matmul(c, c->hb2, &ew.up, xt, 1);
            /* gpt-oss: ggml_add_id of the chosen expert's biases around its activation. */
            nf_add_bias(c->hb, &w->gate_exps_b, sel[k], 1);
            nf_add_bias(c->hb2, &w->up_exps_b, sel[k], 1);
            nf_ffn_act(hp, c->hb, c->hb2, 1, hp->n_ff);
            nf_matmul(c, c->eo, &ew.down, c->hb, 1);
            nf_add_bias(c->eo, &w->down_exps_b, sel[k], 1);
            for (int i = 0; i < E; i++)
                ot[i] = k == 0 ? c->eo[i] * wk : ot[i] + c->eo[i] * wk;
        }
    }
    if (w->gate_shexp.data) /* llama.cpp: moe_out + ffn_shexp_out */
        for (size_t i = 0; i < (size_t)n_tok * E; i++)
            c->ffo[i] += c->sh_out[i];
    for (size_t i = 0; i < (size_t)n_tok * E; i++)
        c->x[i] += c->ffo[i];
}

void nf_shexp_gate(struct nf_ctx *c, const float *ffn_out, int n_tok)
{
    const int E = c->m->hp.n_embd;
    for (int t = 0; t < n_tok; t++) {
        /* ggml_div(ggml_silu(g), g), silu as ggml_silu_f32 on a row of one element:
         * g / (1 + expf(-g)). At g = 0 that is 0 / 0; its limit, 1/2, is used instead. */
        const float g = c->sh_gate[t];
        const float sg = g == 0.0f ? 0.5f : (g / (1.0f + expf(-g))) / g;
        for (int i = 0; i < E; i++)
            c->sh_out[(size_t)t * E + i] = ffn_out[(size_t)t * E + i] * sg;
    }
}

void nf_moe_top_k(const float *p, int X, int K, int *sel, float *w)
{
    for (int k = 0; k < K; k++) {
        int best = -1;
        for (int e = 0; e < X; e++) {
            bool taken = false;
            for (int k2 = 0; k2 < k; k2++)
                taken |= sel[k2] == e;
            if (!taken && (best < 0 || p[e] > p[best]))
                best = e;
        }
        sel[k] = best;
        w[k] = p[best];
    }
}

/* v (n) = ggml_soft_max of v in place: ggml_vec_soft_max_f32, then a scale by the inverse sum. */
static void nf_soft_max_row(float *v, int n)
{
    float mx = -INFINITY;
    for (int i = 0; i < n; i++)
        mx = v[i] > mx ? v[i] : mx;
    const float inv = (float)(1.0 / nf_softmax_exp(v, v, n, mx));
    for (int i = 0; i < n; i++)
        v[i] *= inv;
}

void nf_moe_route_raw(float *p, int X, int K, int *sel, float *w)
{
    /* ggml_soft_max, the top K by probability (ggml_argsort_top_k), their probabilities taken
     * as they are (norm_w false). */
    nf_soft_max_row(p, X);
    nf_moe_top_k(p, X, K, sel, w);
}

void nf_moe_route_topk_softmax(const float *p, int X, int K, int *sel, float *w)
{
    /* ggml_top_k of the (biased) logits, then ggml_soft_max over the K chosen ones. */
    nf_moe_top_k(p, X, K, sel, w);
    nf_soft_max_row(w, K);
}

void nf_moe_route_layer(const struct nf_hparams *hp, float *p, const float *bias, int *sel,
                        float *w)
{
    if (hp->moe_sigmoid) /* glm4moe: sigmoid, exp_probs_b, scaled */
        nf_moe_route_sigmoid(&hp->route, p, bias, sel, w);
    else if (hp->arch == NF_ARCH_DEEPSEEK2)
        nf_moe_route_ds(hp, p, bias, sel, w);
    else
        nf_moe_route_hp(hp, p, sel, w);
}

void nf_moe_route_hp(const struct nf_hparams *hp, float *p, int *sel, float *w)
{
    if (hp->oai_moe)
        nf_moe_route_topk_softmax(p, hp->n_expert, hp->n_expert_used, sel, w);
    else if (hp->moe_norm_w)
        nf_moe_route(p, hp->n_expert, hp->n_expert_used, sel, w);
    else
        nf_moe_route_raw(p, hp->n_expert, hp->n_expert_used, sel, w);
}

void nf_moe_route(float *p, int X, int K, int *sel, float *w)
{
    /* Router as llama.cpp's build_moe_ffn (softmax gating, norm_w): softmax over all
     * experts, the top K by probability, their weights renormalized to sum to 1. */
    float mx = -INFINITY;
    for (int e = 0; e < X; e++)
        mx = p[e] > mx ? p[e] : mx;
    double sum = 0.0;
    for (int e = 0; e < X; e++) {
        p[e] = expf(p[e] - mx);
        sum += (double)p[e];
    }
    const float inv = (float)(1.0 / sum);
    for (int e = 0; e < X; e++)
        p[e] *= inv;
    nf_moe_top_k(p, X, K, sel, w);
    float wsum = 0.0f;
    for (int k = 0; k < K; k++)
        wsum += w[k];
    for (int k = 0; k < K; k++)
        w[k] = w[k] / wsum;
}

int nf_ctx_create(struct nf_ctx **out, const struct nf_model *m, int n_ctx, int n_threads)
{
    return nf_ctx_create_ub(out, m, n_ctx, n_threads, NF_MAX_BATCH);
}

int nf_ctx_create_ub(struct nf_ctx **out, const struct nf_model *m, int n_ctx, int n_threads,
                     int n_ubatch)
{
    const struct nf_hparams *hp = &m->hp;
    if (n_ctx < 1 || n_ubatch < 1 || n_ubatch > NF_MAX_UBATCH)
        return NF_EUSAGE;
    struct nf_ctx *c = calloc(1, sizeof(*c));
    if (!c)
        return -ENOMEM;
    c->m = m;
    c->n_ctx = n_ctx;
    c->attn_mode = NF_ATTN_PLAIN;
    c->n_ubatch = n_ubatch;
    int rc = nf_threadpool_create(&c->pool, n_threads);
    if (rc < 0) {
        free(c);
        return rc;
    }
    const size_t B = (size_t)n_ubatch, E = (size_t)hp->n_embd;
    /* hb and hb2 also hold the shared expert's activations (qwen2moe), which may be wider,
     * and those of glm4moe's leading dense layers (n_ff_dense). */
    size_t F = (size_t)(hp->n_ff_shexp > hp->n_ff ? hp->n_ff_shexp : hp->n_ff);
    F = (size_t)hp->n_ff_dense > F ? (size_t)hp->n_ff_dense : F;
    const size_t qd = (size_t)hp->n_head * hp->head_dim, kvd = (size_t)hp->n_head_kv * hp->head_dim;
    const size_t kv = (size_t)hp->n_layer * (size_t)n_ctx * kvd;
    size_t maxin = E > qd ? E : qd;
    maxin = maxin > F ? maxin : F;
    /* 4 bytes per element bounds every vec_dot_type (F32; Q8_K and Q8_0 need less). */
    c->xq_row_stride = nf_align64(maxin * 4 + 64);
    c->att_scratch_stride = nf_attn_scratch_bytes(hp, n_ctx, n_ubatch);
    c->type_k = c->type_v = NF_TYPE_F16;
    c->k_cache = calloc(kv, sizeof(nf_fp16_t));
    /* deepseek2 keeps one latent per token and layer: the values are a part of it. */
    c->v_cache = hp->n_lora_kv ? NULL : calloc(kv, sizeof(nf_fp16_t));
    if (hp->n_lora_kv && nf_mla_ctx_alloc(c, B) < 0) {
        nf_ctx_free(c);
        return -ENOMEM;
    }
    c->x = calloc(B * E, sizeof(float));
    c->xn = calloc(B * E, sizeof(float));
    c->q = calloc(B * qd, sizeof(float));
    c->k = calloc(B * kvd, sizeof(float));
    c->v = calloc(B * kvd, sizeof(float));
    c->att = calloc(B * qd, sizeof(float));
    c->hb = calloc(B * F, sizeof(float));
    c->hb2 = calloc(B * F, sizeof(float));
    c->ffo = calloc(B * E, sizeof(float));
    c->eo = calloc(E, sizeof(float));
    c->router = calloc(B * (size_t)(hp->n_expert ? hp->n_expert : 1), sizeof(float));
    c->logits = calloc((size_t)hp->n_vocab, sizeof(float));
    c->rope_cos = calloc(B * (size_t)hp->n_rot / 2, sizeof(float));
    c->rope_sin = calloc(B * (size_t)hp->n_rot / 2, sizeof(float));
    if (hp->n_swa) {
        c->rope_cos_swa = calloc(B * (size_t)hp->n_rot / 2, sizeof(float));
        c->rope_sin_swa = calloc(B * (size_t)hp->n_rot / 2, sizeof(float));
        if (!c->rope_cos_swa || !c->rope_sin_swa) {
            nf_ctx_free(c);
            return -ENOMEM;
        }
    }
    c->sh_out = calloc(B * E, sizeof(float));
    c->sh_gate = calloc(B, sizeof(float));
    if (posix_memalign(&c->xq, 64, B * c->xq_row_stride))
        c->xq = NULL;
    if (posix_memalign(&c->att_scratch, 64,
                       (size_t)nf_threadpool_size(c->pool) * c->att_scratch_stride))
        c->att_scratch = NULL;
    if (m->x8_row_size) {
        /* Room for nf_x8_unpack_rows() rows of any of the matrices: NF_X8_UNPACK_BYTES, or 16
         * of the widest rows when fewer than 16 of them fit in it. */
        const size_t b = m->x8_row_size * (size_t)nf_x8_unpack_rows(m->x8_row_size);
        c->x8_scratch_stride = nf_align64(b > NF_X8_UNPACK_BYTES ? b : NF_X8_UNPACK_BYTES);
        if (posix_memalign(&c->x8_scratch, 64,
                           (size_t)nf_threadpool_size(c->pool) * c->x8_scratch_stride)) {
            c->x8_scratch = NULL;
            nf_ctx_free(c);
            return -ENOMEM;
        }
    }
    if (!c->k_cache || (!c->v_cache && !hp->n_lora_kv) || !c->x || !c->xn || !c->q || !c->k ||
        !c->v || !c->att || !c->hb || !c->hb2 || !c->ffo || !c->eo || !c->router || !c->logits ||
        !c->rope_cos || !c->rope_sin || !c->xq || !c->att_scratch || !c->sh_out || !c->sh_gate) {
        nf_ctx_free(c);
        return -ENOMEM;
    }
    *out = c;
    return 0;
}

void nf_ctx_free(struct nf_ctx *c)
{
    if (!c)
        return;
    nf_threadpool_free(c->pool);
    void *bufs[] = {c->k_cache,  c->v_cache,  c->x,           c->xn,     c->q,
                    c->k,        c->v,        c->att,         c->hb,     c->hb2,
                    c->ffo,      c->eo,       c->router,      c->logits, c->xq,
                    c->rope_cos, c->rope_sin, c->att_scratch, c->sh_out, c->sh_gate};
    for (size_t i = 0; i < sizeof(bufs) / sizeof(bufs[0]); i++)
        free(bufs[i]);
    free(c->rope_cos_swa);
    free(c->rope_sin_swa);
    free(c->mla_q);
    free(c->mla_qa);
    free(c->mla_in);
    free(c->mla_out);
    free(c->mla_att);
    free(c->walk_buf);
    free(c->x8_scratch);
    free(c);
}

size_t nf_ctx_kv_bytes(const struct nf_ctx *c)
{
    return nf_kv_token_bytes(&c->m->hp, c->type_k, c->type_v) * (size_t)c->n_ctx;
}

int nf_ctx_set_kv_types(struct nf_ctx *c, enum nf_type tk, enum nf_type tv, char *err,
                        size_t errlen)
{
    const struct nf_hparams *hp = &c->m->hp;
    int rc = nf_kv_types_check(hp, tk, tv, err, errlen);
    if (rc < 0)
        return rc;
    if (hp->n_lora_kv || (tk == c->type_k && tv == c->type_v)) {
        c->n_past = 0;
        return 0;
    }
    const size_t rows = (size_t)hp->n_layer * (size_t)c->n_ctx;
    const int kvd = hp->n_head_kv * hp->head_dim;
    void *k = calloc(rows, nf_kv_row_bytes(tk, kvd)), *v = calloc(rows, nf_kv_row_bytes(tv, kvd));
    if (!k || !v) {
        free(k);
        free(v);
        return nf_errf(err, errlen, -ENOMEM, "out of memory for a %s / %s KV cache of %d positions",
                       nf_kv_type_name(tk), nf_kv_type_name(tv), c->n_ctx);
    }
    free(c->k_cache);
    free(c->v_cache);
    c->k_cache = k;
    c->v_cache = v;
    c->type_k = tk;
    c->type_v = tv;
    c->n_past = 0;
    return 0;
}

void nf_ctx_reset(struct nf_ctx *c)
{
    c->n_past = 0;
}

/* Runs one chunk of at most c->n_ubatch tokens through every layer. With rows (n_tok, n_vocab)
 * every token's logits are computed into it (a per-row pass), else the last one's into
 * c->logits when want_logits. */
static void nf_eval_chunk(struct nf_ctx *c, const int32_t *tokens, int n_tok, bool want_logits,
                          float *rows)
{
    const struct nf_model *m = c->m;
    const struct nf_hparams *hp = &m->hp;
    const int E = hp->n_embd;
    const struct nf_type_traits *et = nf_type_traits(m->tok_embd.type);
    for (int t = 0; t < n_tok; t++)
        et->to_float((const char *)m->tok_embd.data + (size_t)tokens[t] * m->tok_embd.row_size,
                     c->x + (size_t)t * E, E);
    if (hp->embd_scale) /* gemma3: ggml_scale of the embeddings by sqrt(n_embd) */
        for (size_t i = 0; i < (size_t)n_tok * E; i++)
            c->x[i] *= hp->embd_scale;
    const int pos0 = c->n_past;
    nf_rope_cache(c, pos0, n_tok);
    int n_tok_ffn = n_tok;
    for (int il = 0; il < hp->n_layer; il++) {
        const struct nf_layer *L = &m->layers[il];
        if (hp->n_lora_kv)
            nf_mla_forward(c, &L->attn, il, pos0, n_tok);
        else
            nf_attn_forward(c, &L->attn, il, pos0, n_tok);
        if (il == hp->n_layer - 1 && !rows) {
            /* Only the output rows are needed past the last attention (llama.cpp's
             * inp_out_ids): the last FFN runs on the last token alone, or not at all. */
            if (!want_logits)
                break;
            memmove(c->x, c->x + (size_t)(n_tok - 1) * E, sizeof(float) * (size_t)E);
            n_tok_ffn = 1;
        }
        if (hp->n_expert && !nf_layer_dense(hp, il))
            nf_moe_forward(c, &L->ffn_norm, &L->moe, n_tok_ffn);
        else
            nf_ffn_forward(c, &L->ffn_norm, &L->ffn, n_tok_ffn);
    }
    c->n_past += n_tok;
    if (rows) {
        for (int t = 0; t < n_tok; t++)
            nf_rmsnorm(c->xn + (size_t)t * E, c->x + (size_t)t * E, m->output_norm.data, E,
                       hp->rms_eps);
        nf_matmul(c, rows, &m->output, c->xn, n_tok);
    } else if (want_logits) {
        nf_rmsnorm(c->xn, c->x, m->output_norm.data, E, hp->rms_eps);
        nf_matmul(c, c->logits, &m->output, c->xn, 1);
    }
}

/* The checks of an eval of n tokens: 0, NF_ECTXFULL or NF_EUSAGE. */
static int nf_ctx_eval_check(const struct nf_ctx *c, const int32_t *tokens, int n)
{
    if (n < 1)
        return NF_EUSAGE;
    if (n > c->n_ctx - c->n_past)
        return NF_ECTXFULL;
    for (int i = 0; i < n; i++)
        if (tokens[i] < 0 || tokens[i] >= c->m->hp.n_vocab)
            return NF_EUSAGE;
    return 0;
}

int nf_ctx_eval(struct nf_ctx *c, const int32_t *tokens, int n)
{
    int rc = nf_ctx_eval_check(c, tokens, n);
    if (rc < 0)
        return rc;
    for (int i = 0; i < n; i += c->n_ubatch) {
        int nb = n - i < c->n_ubatch ? n - i : c->n_ubatch;
        nf_eval_chunk(c, tokens + i, nb, i + nb == n, NULL);
    }
    return 0;
}

int nf_ctx_eval_rows(struct nf_ctx *c, const int32_t *tokens, int n, float *logits)
{
    const size_t V = (size_t)c->m->hp.n_vocab;
    int rc = nf_ctx_eval_check(c, tokens, n);
    if (rc < 0)
        return rc;
    c->per_row = true;
    for (int i = 0; i < n; i += c->n_ubatch) {
        int nb = n - i < c->n_ubatch ? n - i : c->n_ubatch;
        nf_eval_chunk(c, tokens + i, nb, true, logits + (size_t)i * V);
    }
    c->per_row = false;
    /* The last row is also what nf_ctx_eval would have left. */
    memcpy(c->logits, logits + (size_t)(n - 1) * V, sizeof(float) * V);
    return 0;
}

int nf_ctx_rollback(struct nf_ctx *c, int n_past)
{
    if (n_past < 0 || n_past > c->n_past)
        return NF_EUSAGE;
    /* Cells past n_past are never read (attention looks at cells 0..pos only) and are
     * overwritten when their positions are evaluated again. */
    c->n_past = n_past;
    return 0;
}
