/* slots.c - the per-layer activation and used-set slots compute publishes under a seqlock. */
#include <sched.h>
#include <string.h>

#include "seqlock.h"
#include "stack.h"

struct nf_act_slot *nf_stack_act(const struct nf_stack *st, uint32_t layer)
{
    if (layer >= st->cfg->n_layer)
        return NULL;
    return (struct nf_act_slot *)(st->act_base + (uint64_t)layer * st->cfg->act_stride);
}

struct nf_used_slot *nf_stack_used(const struct nf_stack *st, uint32_t layer)
{
    if (layer >= st->cfg->n_layer)
        return NULL;
    return (struct nf_used_slot *)(st->used_base + (uint64_t)layer * st->cfg->used_stride);
}

void nf_act_slot_publish(struct nf_act_slot *a, uint64_t step, uint32_t layer, const float *x,
                         uint32_t n_embd)
{
    uint64_t sn = nf_seqlock_write_begin(&a->seq);
    a->step = step;
    a->layer = layer;
    a->n_embd = n_embd;
    memcpy(a->x, x, sizeof(float) * (size_t)n_embd);
    nf_seqlock_write_end(&a->seq, sn);
}

void nf_used_slot_publish(struct nf_used_slot *u, uint64_t step, uint32_t layer,
                          const uint64_t *bits, uint32_t n_groups)
{
    uint64_t sn = nf_seqlock_write_begin(&u->seq);
    u->step = step;
    u->layer = layer;
    u->n_groups = n_groups;
    memcpy(u->bits, bits, ((size_t)n_groups + 63) / 64 * sizeof(uint64_t));
    nf_seqlock_write_end(&u->seq, sn);
}

uint64_t nf_act_slot_read(const struct nf_act_slot *a, int tries, uint64_t *step, uint32_t *layer,
                          uint32_t *n_embd, float *x, uint32_t x_len)
{
    for (int i = 0; i < tries; i++) {
        uint64_t sn = nf_seqlock_read_begin(&a->seq);
        if (sn == 0)
            return 0;
        if (sn & 1) {
            /* The writer is inside for a few microseconds at most: let it run. */
            if (i + 1 < tries)
                sched_yield();
            continue;
        }
        *step = a->step;
        *layer = a->layer;
        *n_embd = a->n_embd;
        if (x && *n_embd == x_len)
            memcpy(x, a->x, sizeof(float) * x_len);
        if (!nf_seqlock_read_retry(&a->seq, sn))
            return sn;
    }
    return 0;
}

uint64_t nf_used_slot_read(const struct nf_used_slot *u, int tries, uint64_t *step,
                           uint32_t *n_groups, uint64_t *bits, uint32_t words)
{
    for (int i = 0; i < tries; i++) {
        uint64_t sn = nf_seqlock_read_begin(&u->seq);
        if (sn == 0)
            return 0;
        if (sn & 1) {
            if (i + 1 < tries)
                sched_yield();
            continue;
        }
        *step = u->step;
        *n_groups = u->n_groups;
        uint32_t w = (*n_groups + 63) / 64;
        if (w > words)
            w = words;
        memset(bits, 0, sizeof(uint64_t) * words);
        memcpy(bits, u->bits, sizeof(uint64_t) * w);
        if (!nf_seqlock_read_retry(&u->seq, sn))
            return sn;
    }
    return 0;
}
