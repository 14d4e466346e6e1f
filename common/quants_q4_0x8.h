/* quants_q4_0x8.h - internal: q4_0 weights with eight rows interleaved, for decode in RAM.
 *
 * The layout (nf_q4_0x8_ok tells which tensors can take it). A tensor of R rows of n values,
 * R a multiple of 8 and n of 128, has ng = n / 128 groups of four q4_0 blocks (72 bytes) per
 * row and takes the same R * ng * 72 bytes as in the GGUF. The rows 8b .. 8b + 7 still occupy
 * the bytes of those eight rows, [8b * row_size, (8b + 8) * row_size), but in the order:
 *   1. for each group k (576 bytes at 576 k from the start of the eight rows):
 *      a. 8 x 64 bytes: row r's four blocks' quants qs (16 bytes each, block order);
 *      b. 8 x 8 bytes: row r's four block scales d (F16, block order).
 * So a decode step reads one stream per thread, every load is a whole aligned cache line, and
 * one prepared activation group serves eight rows (llama.cpp repacks q4_0 for the same reason,
 * in a layout of its own). The values and the sums are q4_0's: the decode kernel gives each
 * row the bits of q4_0's AVX-512 vec_dot (quants_avx512.c), and every other product unpacks
 * the rows it needs back into the GGUF layout first (nf_q4_0x8_unpack). */
#ifndef NF_QUANTS_Q4_0X8_H
#define NF_QUANTS_Q4_0X8_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* Most groups of a row the decode kernel takes (it prepares a whole activation row on the
 * stack: 256 bytes a group, 64 KiB here): rows up to 32768 values. */
#define NF_Q4_0X8_MAX_GROUPS 256

/* Whether an (n, rows) q4_0 tensor can be interleaved: n a multiple of 128 and at most
 * 128 * NF_Q4_0X8_MAX_GROUPS, rows a multiple of 8, and a CPU with the AVX-512 kernels. */
bool nf_q4_0x8_ok(int64_t n, int64_t rows);

/* Rewrites rows rows of n values (q4_0, GGUF layout) at data into the interleaved layout in
 * place; tmp holds 8 rows (8 * row_size bytes) of scratch. nf_q4_0x8_ok(n, rows) must hold. */
void nf_q4_0x8_repack(void *data, int64_t n, int64_t rows, void *tmp);

/* Writes rows [r0, r1) of the interleaved tensor x (rows of n values) to dst in the GGUF
 * layout (row r0 first); r0 is a multiple of 8, r1 any row up to the tensor's last. */
void nf_q4_0x8_unpack(void *dst, const void *x, int64_t n, int64_t r0, int64_t r1);

/* s[r] = q4_0's AVX-512 vec_dot of row r of the interleaved rows at x (the first of them a
 * multiple of 8 in the tensor) against the q8_0 row y, for r in [0, nrows), nrows a multiple
 * of 8: bit for bit what nf__vec_dot_q4_0_q8_0_avx512 gives the row in the GGUF layout. */
void nf__vec_dot_q4_0x8_q8_0_avx512(int n, float *s, const void *x, const void *y, int nrows);

#endif
