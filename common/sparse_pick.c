/* sparse_pick.c - the sparse-mode selection rule shared by compute and the predictor. */
#include <math.h>

#include "sparse_pick.h"

uint32_t nf_sparse_keep(uint32_t n, float s)
{
    if (!(s > 0))
        return n;
    double k = floor((1.0 - (double)s) * n + 0.5);
    if (k < 1)
        k = 1;
    return k > n ? n : (uint32_t)k;
}

/* Sorts idx[0..n) by score[idx[i]] descending, ties by lower index (insertion sort: a layer has
 * at most a few hundred tiles and a tile a few dozen groups). */
static void nf_sort_desc(uint32_t *idx, uint32_t n, const float *score)
{
    for (uint32_t i = 1; i < n; i++) {
        uint32_t v = idx[i], j = i;
        while (j > 0 && (score[idx[j - 1]] < score[v] ||
                         (score[idx[j - 1]] == score[v] && idx[j - 1] > v))) {
            idx[j] = idx[j - 1];
            j--;
        }
        idx[j] = v;
    }
}

uint32_t nf_sparse_pick(const float *gscore, uint32_t n, const uint32_t *bound, uint32_t n_tiles,
                        uint32_t k, float *tscore, uint32_t *order, uint32_t *out)
{
    if (k > n)
        k = n;
    for (uint32_t t = 0; t < n_tiles; t++) {
        float sum = 0;
        for (uint32_t g = bound[t]; g < bound[t + 1]; g++)
            sum += gscore[g];
        tscore[t] = bound[t + 1] > bound[t] ? sum / (float)(bound[t + 1] - bound[t]) : 0;
        order[t] = t;
    }
    nf_sort_desc(order, n_tiles, tscore);
    uint32_t got = 0, r = 0;
    for (; r < n_tiles && got < k; r++) {
        const uint32_t t = order[r], size = bound[t + 1] - bound[t];
        if (got + size > k)
            break;
        for (uint32_t g = bound[t]; g < bound[t + 1]; g++)
            out[got++] = g;
    }
    if (got < k && r < n_tiles) {
        /* The rest from the best remaining tile, its best groups first. */
        const uint32_t t = order[r], size = bound[t + 1] - bound[t];
        uint32_t *gi = order + n_tiles;
        for (uint32_t j = 0; j < size; j++)
            gi[j] = bound[t] + j;
        nf_sort_desc(gi, size, gscore);
        for (uint32_t j = 0; j < size && got < k; j++)
            out[got++] = gi[j];
    }
    return got;
}
