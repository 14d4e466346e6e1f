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

/* Reader: begins a copy under a stable (even, non-zero) sequence, spending one of *tries per
 * call and per odd sequence met (the writer is inside for a few microseconds at most: yield to it
 * between tries). Returns the sequence, or 0 when the slot was never written or no try is left. */
static uint64_t begin_stable(const _Atomic uint64_t *seq, int *tries)
{
    while (*tries > 0) {
        (*tries)--;
        uint64_t sn = nf_seqlock_read_begin(seq);
        if (sn == 0 || !(sn & 1))
            return sn;
        if (*tries > 0)
            sched_yield();
    }
    return 0;
}

uint64_t nf_act_slot_read(const struct nf_act_slot *a, int tries, uint64_t *step, uint32_t *layer,
                          uint32_t *n_embd, float *x, uint32_t x_len)
{
    for (;;) {
        uint64_t sn = begin_stable(&a->seq, &tries);
        if (sn == 0)
            return 0;
        *step = a->step;
        *layer = a->layer;
        *n_embd = a->n_embd;
        if (x && *n_embd == x_len)
            memcpy(x, a->x, sizeof(float) * x_len);
        if (!nf_seqlock_read_retry(&a->seq, sn))
            return sn;
    }
}

uint64_t nf_used_slot_read(const struct nf_used_slot *u, int tries, uint64_t *step,
                           uint32_t *n_groups, uint64_t *bits, uint32_t words)
{
    for (;;) {
        uint64_t sn = begin_stable(&u->seq, &tries);
        if (sn == 0)
            return 0;
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
}
