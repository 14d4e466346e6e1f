/* stack_snap.c - snapshots of a running stack's counters from the daemons' Stats replies. */
#include "stack_snap.h"

#include <math.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "nf_err.h"
#include "nf_time.h"

#define NF_SNAP_CONNECT_MS 2000
#define NF_SNAP_RPC_MS     5000

uint64_t nf_stage_ctr(const struct nf_stage_snap *s, const char *name)
{
    for (int i = 0; i < s->n; i++)
        if (!strcmp(s->name[i], name))
            return s->val[i];
    return 0;
}

static bool is_gauge(const char *name)
{
    static const char *const g[] = {
        "queue_depth",     "resident_bytes", "mem_bytes",     "lookahead", "queue_len",
        "active",          "parallel",       "queue_clients", "running",   "queue_wait_max_ns",
        "connections",     "kv_type_k",      "kv_type_v",     "kv_bytes",  "kv_token_bytes",
        "kv_resident_max", "kv_window"};
    for (size_t i = 0; i < sizeof(g) / sizeof(g[0]); i++)
        if (!strcmp(name, g[i]))
            return true;
    return false;
}

void nf_stack_snap_take(const char *dir, struct nf_stack_snap *s)
{
    memset(s, 0, sizeof(*s));
    s->t = nf_now_s();
    s->has_gw = nf_pidfile_read(dir, NF_ROLE_GATEWAY) > 0;
    for (int i = 0; i < NF_N_ROLES + s->has_gw; i++) {
        const char *role = i < NF_N_ROLES ? nf_stack_roles[i] : NF_ROLE_GATEWAY;
        struct nf_stage_snap *ss = i < NF_N_ROLES ? &s->st[i] : &s->gw;
        int fd = nf_ctl_connect(dir, role, NF_SNAP_CONNECT_MS, ss->err, sizeof(ss->err));
        if (fd < 0)
            continue;
        nf_envelope req, *r = NULL;
        Nanoflow__StatsRequest sr;
        nanoflow__envelope__init(&req);
        nanoflow__stats_request__init(&sr);
        req.msg_case = NANOFLOW__ENVELOPE__MSG_STATS_REQUEST;
        req.stats_request = &sr;
        int rc = nf_ctl_request(fd, &req, &r, NF_SNAP_RPC_MS);
        close(fd);
        if (rc < 0) {
            snprintf(ss->err, sizeof(ss->err), "%s: %s", role, nf_strerror(rc));
        } else if (r->msg_case == NANOFLOW__ENVELOPE__MSG_ERROR) {
            snprintf(ss->err, sizeof(ss->err), "%s: %s", role, r->error->message);
        } else if (r->msg_case != NANOFLOW__ENVELOPE__MSG_STATS) {
            snprintf(ss->err, sizeof(ss->err), "%s: unexpected reply", role);
        } else {
            const Nanoflow__Stats *st = r->stats;
            if (st->ram_budget > s->budget)
                s->budget = st->ram_budget;
            if (st->ram_held > s->held)
                s->held = st->ram_held; /* the gateway reports 0 for both */
            /* A daemon reports its own stage; take the one named like the role. */
            for (size_t k = 0; k < st->n_stages; k++) {
                const Nanoflow__StageStats *sg = st->stages[k];
                if (!sg->stage || strcmp(sg->stage, role))
                    continue;
                for (size_t c = 0; c < sg->n_counters && ss->n < NF_STATS_MAX_COUNTERS; c++) {
                    snprintf(ss->name[ss->n], sizeof(ss->name[0]), "%s",
                             sg->counters[c]->name ? sg->counters[c]->name : "");
                    ss->val[ss->n++] = sg->counters[c]->value;
                }
                ss->ok = true;
            }
            if (!ss->ok)
                snprintf(ss->err, sizeof(ss->err), "%s: no %s stage in its Stats reply", role,
                         role);
        }
        nf_envelope_free(r);
    }
}

void nf_stack_snap_delta(struct nf_stack_snap *d, const struct nf_stack_snap *cur,
                         const struct nf_stack_snap *prev)
{
    *d = *cur;
    for (int i = 0; i < NF_N_ROLES + 1; i++) {
        struct nf_stage_snap *ds = i < NF_N_ROLES ? &d->st[i] : &d->gw;
        const struct nf_stage_snap *ps = i < NF_N_ROLES ? &prev->st[i] : &prev->gw;
        if (!ds->ok || !ps->ok)
            continue;
        for (int c = 0; c < ds->n; c++) {
            if (is_gauge(ds->name[c]))
                continue;
            uint64_t p = nf_stage_ctr(ps, ds->name[c]);
            ds->val[c] = ds->val[c] >= p ? ds->val[c] - p : 0;
        }
    }
}

double nf_snap_ratio(double num, double den)
{
    return den > 0 ? num / den : NAN;
}

double nf_snap_hit_rate(const struct nf_stage_snap *f, const struct nf_stage_snap *c)
{
    double used = c->ok ? (double)nf_stage_ctr(c, "tiles_used") : 0,
           loads = (double)nf_stage_ctr(f, "misses");
    if (used <= 0) /* compute used nothing: the fetcher's own view, requests found ready */
        return nf_snap_ratio((double)nf_stage_ctr(f, "hits"),
                             (double)(nf_stage_ctr(f, "hits") + nf_stage_ctr(f, "misses")));
    return loads >= used ? 0.0 : 1.0 - loads / used;
}
