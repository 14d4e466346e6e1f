/* quants_mat_impl.h - internal: the tiling shared by the register-blocked multi-token kernels
 * (quants_mat_avx2.c, quants_mat_avx512.c). */
#ifndef NF_QUANTS_MAT_IMPL_H
#define NF_QUANTS_MAT_IMPL_H

#define ALWAYS_INLINE inline __attribute__((always_inline))
/* Unrolls a tile loop completely, so the accumulators live in registers (-O2 does not). */
#define UNROLL _Pragma("GCC unroll 16")

/* Calls TILE(rt, ct, s, x, y) over nrows x ncols in tiles of RT x CT, then the edges one row or
 * one column wide (so each tile size is a compile-time constant). */
#define FOR_TILES(RT, CT, TILE)                                                                    \
    do {                                                                                           \
        int r_ = 0;                                                                                \
        for (; r_ + (RT) <= nrows; r_ += (RT)) {                                                   \
            int c_ = 0;                                                                            \
            for (; c_ + (CT) <= ncols; c_ += (CT))                                                 \
                TILE((RT), (CT), s + (size_t)c_ * ld + r_, x + (size_t)r_ * bx,                    \
                     y + (size_t)c_ * by);                                                         \
            for (; c_ < ncols; c_++)                                                               \
                TILE((RT), 1, s + (size_t)c_ * ld + r_, x + (size_t)r_ * bx, y + (size_t)c_ * by); \
        }                                                                                          \
        for (; r_ < nrows; r_++) {                                                                 \
            int c_ = 0;                                                                            \
            for (; c_ + (CT) <= ncols; c_ += (CT))                                                 \
                TILE(1, (CT), s + (size_t)c_ * ld + r_, x + (size_t)r_ * bx, y + (size_t)c_ * by); \
            for (; c_ < ncols; c_++)                                                               \
                TILE(1, 1, s + (size_t)c_ * ld + r_, x + (size_t)r_ * bx, y + (size_t)c_ * by);    \
        }                                                                                          \
    } while (0)

#endif
