/* quants_q4_0x8.c - the eight-row interleaved q4_0 layout (quants_q4_0x8.h): repack, unpack. */
#include <string.h>

#include "quants_impl.h"
#include "quants_q4_0x8.h"

enum { GROUP = 4 * sizeof(nf_block_q4_0), ROWS = 8 };

bool nf_q4_0x8_ok(int64_t n, int64_t rows)
{
    return nf_kernels_isa() == NF_ISA_AVX512 && n > 0 && n % (4 * NF_QK4_0) == 0 &&
           n / (4 * NF_QK4_0) <= NF_Q4_0X8_MAX_GROUPS && rows > 0 && rows % ROWS == 0;
}

/* Group k of the eight rows at src (GGUF layout, rows rs bytes apart) into the 576 bytes at
 * dst (item 1 of the layout). */
static void nf_q4_0x8_pack_group(char *dst, const char *src, size_t rs, int64_t k)
{
    for (int r = 0; r < ROWS; r++) {
        const nf_block_q4_0 *b = (const nf_block_q4_0 *)(src + (size_t)r * rs) + 4 * k;
        for (int i = 0; i < 4; i++) {
            memcpy(dst + 64 * r + 16 * i, b[i].qs, 16);
            memcpy(dst + 64 * ROWS + 8 * r + 2 * i, &b[i].d, 2);
        }
    }
}

void nf_q4_0x8_repack(void *data, int64_t n, int64_t rows, void *tmp)
{
    const int64_t ng = n / (4 * NF_QK4_0);
    const size_t rs = (size_t)ng * GROUP;
    for (int64_t b = 0; b < rows / ROWS; b++) {
        char *p = (char *)data + (size_t)b * ROWS * rs;
        memcpy(tmp, p, ROWS * rs);
        for (int64_t k = 0; k < ng; k++)
            nf_q4_0x8_pack_group(p + (size_t)k * ROWS * GROUP, tmp, rs, k);
    }
}

void nf_q4_0x8_unpack(void *dst, const void *x, int64_t n, int64_t r0, int64_t r1)
{
    const int64_t ng = n / (4 * NF_QK4_0);
    const size_t rs = (size_t)ng * GROUP;
    for (int64_t r = r0; r < r1; r++) {
        const char *blk = (const char *)x + (size_t)(r / ROWS) * ROWS * rs;
        const int j = (int)(r % ROWS);
        nf_block_q4_0 *out = (nf_block_q4_0 *)((char *)dst + (size_t)(r - r0) * rs);
        for (int64_t k = 0; k < ng; k++) {
            const char *g = blk + (size_t)k * ROWS * GROUP;
            for (int i = 0; i < 4; i++) {
                memcpy(out[4 * k + i].qs, g + 64 * j + 16 * i, 16);
                memcpy(&out[4 * k + i].d, g + 64 * ROWS + 8 * j + 2 * i, 2);
            }
        }
    }
}
