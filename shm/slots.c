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

struct nf_act_slot *nf_stack_act_row(const struct nf_stack *st, uint32_t layer, uint32_t row)
{
    if (layer >= st->cfg->n_layer || row >= st->cfg->act_rows)
        return NULL;
    return (struct nf_act_slot *)(st->rows_base + ((uint64_t)layer * st->cfg->act_rows + row) *
                                                      st->cfg->act_stride);
}

struct nf_used_slot *nf_stack_used(const struct nf_stack *st, uint32_t layer)
{
    if (layer >= st->cfg->n_layer)
        return NULL;
    return (struct nf_used_slot *)(st->used_base + (uint64_t)layer * st->cfg->used_stride);
}

/* The data under a seqlock is read while the writer may be writing it (the copy is then
 * discarded): every access is a relaxed atomic so that this is not a data race in C11's sense
 * (Boehm, "Can seqlocks get along with programming language memory models?", 2012) and
 * ThreadSanitizer checks the rest. On x86-64 these are the plain moves memcpy would make, one
 * element at a time: 4096 floats (a 7B layer) take a few microseconds. The fences in seqlock.h
 * order them against the sequence word. */
#define SET(field, v) __atomic_store_n(&(field), (v), __ATOMIC_RELAXED)
#define GET(field)    __atomic_load_n(&(field), __ATOMIC_RELAXED)

void nf_act_slot_publish(struct nf_act_slot *a, uint64_t step, uint32_t layer, const float *x,
                         uint32_t n_embd)
{
    uint64_t sn = nf_seqlock_write_begin(&a->seq);
    SET(a->step, step);
    SET(a->layer, layer);
    SET(a->n_embd, n_embd);
    for (uint32_t i = 0; i < n_embd; i++) {
        float v = x[i];
        __atomic_store(&a->x[i], &v, __ATOMIC_RELAXED);
    }
    nf_seqlock_write_end(&a->seq, sn);
}

void nf_used_slot_publish(struct nf_used_slot *u, uint64_t step, uint32_t layer,
                          const uint64_t *bits, uint32_t n_groups)
{
    uint64_t sn = nf_seqlock_write_begin(&u->seq);
    SET(u->step, step);
    SET(u->layer, layer);
    SET(u->n_groups, n_groups);
    for (size_t w = 0; w < ((size_t)n_groups + 63) / 64; w++)
        SET(u->bits[w], bits[w]);
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
        *step = GET(a->step);
        *layer = GET(a->layer);
        *n_embd = GET(a->n_embd);
        if (x && *n_embd == x_len)
            for (uint32_t i = 0; i < x_len; i++)
                __atomic_load(&a->x[i], &x[i], __ATOMIC_RELAXED);
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
        *step = GET(u->step);
        *n_groups = GET(u->n_groups);
        uint32_t w = (*n_groups + 63) / 64;
        if (w > words)
            w = words;
        memset(bits, 0, sizeof(uint64_t) * words);
        for (uint32_t i = 0; i < w; i++)
            bits[i] = GET(u->bits[i]);
        if (!nf_seqlock_read_retry(&u->seq, sn))
            return sn;
    }
}
