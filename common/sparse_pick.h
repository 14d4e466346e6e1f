/* sparse_pick.h - the sparse-mode selection rule: how many FFN groups a dense layer keeps at a
 * given sparsity, and which ones. Compute's streaming engine (stream.c), the predictor's
 * forecast (daemons/predictor/plan.c) and the in-memory sparse evaluator (model_sparse.c) all
 * call these, so the groups compute reads are exactly the groups the predictor prefetched. */
#ifndef NF_SPARSE_PICK_H
#define NF_SPARSE_PICK_H

#include <stdint.h>

/* Groups kept out of n at sparsity s: (1 - s) * n rounded half up, computed in double from the
 * float s, then clamped to [1, n]; n itself when s <= 0 (or NaN), 0 when n is 0.
 *
 * Why this rule: the predictor forecasts this many groups (plus its margin) and compute must
 * keep no more, or every token misses a group the fetcher was never asked for. Half up in
 * double is the rule the predictor always used and its tests expect (43 groups at 0.5 keep 22);
 * compute's old ceiling kept one group more than forecast on real sizes (344 groups at 0.7:
 * 104 against 103), and model_sparse.c's lrintf rounded halves to even (6 at 0.25: 4, not 5).
 * The float-to-double product keeps sparsities like 0.1f and 0.7f from crossing an integer
 * (0.7f is 0.69999999, so 1 - s is slightly above 0.3 and 0.3 * 10 stays 3). */
uint32_t nf_sparse_keep(uint32_t n, float s);

/* Sparse selection at the granularity of reads (compute and predictor use the same rule): picks
 * k of the n groups of a dense layer whose FFN tiles hold groups [bound[t], bound[t + 1]) for
 * t < n_tiles (bound[0] = 0, bound[n_tiles] = n): whole tiles by their mean group score, best
 * first, while they fit in k, then the best groups of the next tile for the rest, so at most
 * one tile is read for only part of its groups. Ties go to the lower index. Writes the k chosen
 * group indices to out and returns k (clamped to [0, n]). Scratch: tscore (n_tiles floats),
 * order (n_tiles + n u32). */
uint32_t nf_sparse_pick(const float *gscore, uint32_t n, const uint32_t *bound, uint32_t n_tiles,
                        uint32_t k, float *tscore, uint32_t *order, uint32_t *out);

#endif
