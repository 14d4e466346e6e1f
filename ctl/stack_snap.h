/* stack_snap.h - snapshots of a running stack's counters (each daemon's Stats reply), as
 * `stats` prints them and `bench` differences them around a generation. */
#ifndef NF_STACK_SNAP_H
#define NF_STACK_SNAP_H

#include <stdbool.h>
#include <stdint.h>

#include "stack_ctl.h"

/* One daemon's own stage: its counters by name, in reply order. */
struct nf_stage_snap {
    bool ok;       /* the daemon answered with its stage */
    char err[256]; /* why not, when !ok */
    int n;
    char name[NF_STATS_MAX_COUNTERS][32];
    uint64_t val[NF_STATS_MAX_COUNTERS];
};

struct nf_stack_snap {
    struct nf_stage_snap st[NF_N_ROLES]; /* in nf_stack_roles order */
    bool has_gw;                         /* the stack runs a gateway (up --http) */
    struct nf_stage_snap gw;             /* its stage "gateway" (the fair queue) when has_gw */
    uint64_t budget, held;               /* the largest ram_budget and ram_held reported */
    double t;                            /* nf_now_s() when taken */
};

/* Asks each daemon of the stack in dir for its Stats (2 s to connect, 5 s for the reply) and
 * keeps the stage named like the daemon's role. A daemon that does not answer leaves its stage
 * !ok with err set ("ROLE: reason"); never fails as a whole. When the stack runs a gateway (its
 * pid file), its Stats go to gw the same way. */
void nf_stack_snap_take(const char *dir, struct nf_stack_snap *s);

/* Counter name of stage s, or 0 when it has none of that name. */
uint64_t nf_stage_ctr(const struct nf_stage_snap *s, const char *name);

/* d = cur minus prev for the counters that only grow (the gateway's too); gauges (queue_depth,
 * resident_bytes, mem_bytes, lookahead, queue_len and the gateway's) keep their current value, and
 * a counter that went back gives 0. */
void nf_stack_snap_delta(struct nf_stack_snap *d, const struct nf_stack_snap *cur,
                         const struct nf_stack_snap *prev);

/* The pool's hit rate: the share of the tiles compute used (stage c) that needed no read by the
 * fetcher (stage f), 1 - loads started / tiles used, at least 0. A model fully resident reads
 * nothing once loaded, so its hit rate tends to 100%; counting only the requests the fetcher
 * sees would give 0%, since compute requests nothing it finds in the pool. With no tile used
 * (or compute unavailable) it is the share of fetcher requests found ready, or NAN. */
double nf_snap_hit_rate(const struct nf_stage_snap *f, const struct nf_stage_snap *c);

/* num / den, or NAN when den is not positive (a rate not measured). */
double nf_snap_ratio(double num, double den);

#endif
