/* stack_int.h - what the files of the stack (shape.c, plan.c, stack.c) share; not public.
 *
 * shape.c reads a model's shape (tile classes, minimum working sets, ring sizes) and lays the
 * tables out in their areas; plan.c splits a budget over that shape; stack.c creates a region
 * from a plan and checks one it attaches to against the same layout rules. */
#ifndef NF_STACK_INT_H
#define NF_STACK_INT_H

#include <stddef.h>
#include <stdint.h>

#include "stack.h"

#define NF_STACK_CL 64u /* cache line: alignment of the tables inside an area */

/* What the plan needs to know about a model, gathered from its header and tile index. */
struct nf_stack_shape {
    uint64_t n_tiles;
    uint32_t n_layer, n_embd, n_ff, n_vocab, n_head, n_head_kv;
    uint32_t demand_count; /* ring entries */
    uint32_t prefetch_count;
    uint32_t max_groups;
    uint64_t down_scratch;   /* n_embd rows of the largest ffn_down row */
    uint64_t pred_copies;    /* MoE: the predictor's private copies of routers and ffn_norms */
    uint32_t n_ctx_model;    /* context_length from the metadata, 0 when absent */
    uint32_t kv_latent;      /* deepseek2: F16 values cached per token and layer, else 0 */
    uint32_t head_k, head_v; /* K and V values per head: attention.key_length / value_length, else
                              * n_embd / n_head */
    /* The pool's classes (plan_classes), by increasing slot size. */
    uint32_t n_classes;
    uint64_t class_size[NF_STACK_MAX_CLASSES];  /* bytes per slot */
    uint64_t class_tiles[NF_STACK_MAX_CLASSES]; /* tiles that go in the class */
    uint64_t class_min[NF_STACK_MAX_CLASSES];   /* minimum working set in slots */
    uint64_t class_step[NF_STACK_MAX_CLASSES];  /* tiles one token step reads */
    uint64_t class_need[NF_STACK_MAX_CLASSES];  /* bytes one token step reads */
    uint64_t min_slots;                         /* the sum of class_min */
    uint32_t n_ubatch; /* compute's prompt chunk in tokens (nf_stack_plan_ub); 0: the default */
    uint32_t type_k, type_v; /* KV cache element types (nf_stack_plan_kv); 0: f16 */
    uint32_t moe;            /* routed experts (n_expert > 0): a batched step's rows are
                              * published one by one (nf_stack_act_row) */
};

/* Where the tables sit inside their areas (shared by the plan and create). */
struct nf_stack_layout {
    uint64_t tiles_off, slots_off, kv_words_off, table_bytes;
    uint64_t demand_off, demand_size, prefetch_off, prefetch_size, ring_bytes;
    uint64_t act_stride, used_stride, act_off, used_off, act_bytes;
    uint64_t rows_off; /* the row slots (nf_stack_act_row) after the used slots */
    uint32_t act_rows; /* row slots per layer: n_seq for a MoE model with n_seq > 1, else 0 */
};

static inline uint64_t nf__align_to(uint64_t v, uint64_t a)
{
    return (v + a - 1) / a * a;
}

/* Reads what the plan needs from f's header and tile index into sh: the slot size classes
 * (plan_classes in shape.c), their minimum working sets and per-step reads, ring sizes and
 * the largest group count. Returns 0, NF_ECORRUPT for a header or tile out of bounds, or
 * -ENOMEM, with a message in err. */
int nf__stack_shape(const struct nf_nft *f, struct nf_stack_shape *sh, char *err, size_t errlen);

/* Where the config, tile and slot tables, rings and activation slots sit in their areas for
 * shape sh with n_slots pool slots and kv_tiles KV block tiles (their entries after the
 * .nft's, their words after the slots), and n_seq sequences (0 is taken as 1: a MoE model
 * with more than one gets n_seq activation row slots per layer). */
void nf__stack_layout(const struct nf_stack_shape *sh, uint64_t n_slots, uint64_t kv_tiles,
                      uint32_t n_seq, struct nf_stack_layout *lo);

/* Fills the byte counts of a plan with counts[k] slots in class k and context n_ctx, for
 * p->n_seq sequences (an input: 0 is taken as 1); returns the total. */
uint64_t nf__plan_total(const struct nf_stack_shape *sh, const uint64_t *counts, uint32_t n_ctx,
                        uint32_t n_threads, struct nf_stack_plan *p);

#endif
