/* stats.c - a daemon's Stats reply, read from the stack's shared counters. */
#include <errno.h>
#include <stdio.h>
#include <string.h>

#include "daemon.h"
#include "stack.h"

/* Counter names must outlive the message: fixed strings, and the histogram's names below. */
static const char *const nf_hist_names[NF_LAT_BUCKETS] = {
    "lat_hist_00", "lat_hist_01", "lat_hist_02", "lat_hist_03", "lat_hist_04", "lat_hist_05",
    "lat_hist_06", "lat_hist_07", "lat_hist_08", "lat_hist_09", "lat_hist_10", "lat_hist_11",
    "lat_hist_12", "lat_hist_13", "lat_hist_14", "lat_hist_15", "lat_hist_16", "lat_hist_17",
    "lat_hist_18", "lat_hist_19", "lat_hist_20", "lat_hist_21", "lat_hist_22", "lat_hist_23",
    "lat_hist_24", "lat_hist_25", "lat_hist_26", "lat_hist_27", "lat_hist_28", "lat_hist_29",
    "lat_hist_30", "lat_hist_31",
};
_Static_assert(NF_LAT_BUCKETS == 32, "histogram names");

double nf_lat_quantile_us(const uint64_t *hist, int n_buckets, double q)
{
    uint64_t total = 0;
    for (int i = 0; i < n_buckets; i++)
        total += hist[i];
    if (total == 0)
        return 0.0;
    double target = q * (double)total;
    uint64_t below = 0;
    for (int i = 0; i < n_buckets; i++) {
        if (hist[i] > 0 && (double)(below + hist[i]) >= target) {
            double lo = (double)(1ull << i), frac = (target - (double)below) / (double)hist[i];
            if (frac < 0)
                frac = 0;
            return lo + lo * frac; /* the bucket spans [lo, 2 lo) */
        }
        below += hist[i];
    }
    return (double)(1ull << (n_buckets - 1)) * 2.0;
}

static void add(struct nf_stats_msg *m, const char *name, uint64_t v)
{
    size_t i = m->stage.n_counters;
    if (i >= NF_STATS_MAX_COUNTERS)
        return;
    nanoflow__stage_counter__init(&m->ctr[i]);
    m->ctr[i].name = (char *)name;
    m->ctr[i].value = v;
    m->ctrp[i] = &m->ctr[i];
    m->stage.n_counters = i + 1;
}

void nf_stats_add(struct nf_stats_msg *m, const char *name, uint64_t v)
{
    add(m, name, v);
}

#define LD(x) atomic_load_explicit(&ctr->x, memory_order_relaxed)

int nf_stats_fill(struct nf_stats_msg *m, const char *stage, const struct nf_stack_counters *ctr,
                  uint64_t ram_budget, uint64_t region_bytes)
{
    memset(m, 0, sizeof(*m));
    nanoflow__stats__init(&m->stats);
    nanoflow__stage_stats__init(&m->stage);
    m->stagep[0] = &m->stage;
    m->stats.n_stages = 1;
    m->stats.stages = m->stagep;
    m->stage.counters = m->ctrp;
    m->stats.ram_budget = ram_budget;
    /* The region once, plus each daemon's private bytes (nf_proc_private_bytes: RssAnon, which
     * leaves out the region's pages, so nothing is counted twice). */
    m->stats.ram_held = region_bytes + LD(mem_fetcher) + LD(mem_predictor) + LD(mem_compute);
    if (!strcmp(stage, NF_ROLE_FETCHER)) {
        m->stage.stage = (char *)NF_ROLE_FETCHER;
        add(m, "reads", LD(f_reads));
        add(m, "bytes", LD(f_bytes));
        add(m, "demand_reads", LD(f_demand_reads));
        add(m, "prefetch_reads", LD(f_prefetch_reads));
        add(m, "hits", LD(f_hits));
        add(m, "misses", LD(f_misses));
        add(m, "evictions", LD(f_evictions));
        add(m, "checksum_errors", LD(f_checksum_errors));
        add(m, "io_errors", LD(f_io_errors));
        add(m, "busy_ns", LD(f_busy_ns));
        add(m, "queue_depth", LD(f_queue_depth));
        add(m, "inflight_peak_bytes", LD(f_inflight_peak));
        add(m, "resident_bytes", LD(f_resident_bytes));
        add(m, "prefetch_dropped", LD(f_prefetch_dropped));
        add(m, "plan_dropped", LD(f_plan_dropped));
        add(m, "plan_released", LD(f_plan_released));
        add(m, "kv_prefetch_reads", LD(f_kv_prefetch_reads));
        add(m, "kv_demand_reads", LD(f_kv_demand_reads));
        add(m, "kv_prefetch_used", LD(f_kv_prefetch_used));
        add(m, "kv_prefetch_unused", LD(f_kv_prefetch_unused));
        add(m, "mem_bytes", LD(mem_fetcher));
        uint64_t hist[NF_LAT_BUCKETS];
        for (int i = 0; i < NF_LAT_BUCKETS; i++) {
            hist[i] = LD(f_lat_hist[i]);
            add(m, nf_hist_names[i], hist[i]);
        }
        m->quantiles[0] = nf_lat_quantile_us(hist, NF_LAT_BUCKETS, 0.50);
        m->quantiles[1] = nf_lat_quantile_us(hist, NF_LAT_BUCKETS, 0.99);
        m->stage.latency_quantiles_us = m->quantiles;
        m->stage.n_latency_quantiles_us = 2;
    } else if (!strcmp(stage, NF_ROLE_PREDICTOR)) {
        m->stage.stage = (char *)NF_ROLE_PREDICTOR;
        add(m, "predictions", LD(p_predictions));
        add(m, "requests", LD(p_requests));
        add(m, "pred_ns", LD(p_pred_ns));
        add(m, "true_pos", LD(p_true_pos));
        add(m, "false_pos", LD(p_false_pos));
        add(m, "false_neg", LD(p_false_neg));
        add(m, "lookahead", LD(p_lookahead));
        add(m, "kv_requests", LD(p_kv_requests));
        add(m, "mem_bytes", LD(mem_predictor));
    } else if (!strcmp(stage, NF_ROLE_COMPUTE)) {
        m->stage.stage = (char *)NF_ROLE_COMPUTE;
        add(m, "prompt_tokens", LD(c_prompt_tokens));
        add(m, "prompt_ns", LD(c_prompt_ns));
        add(m, "decode_tokens", LD(c_decode_tokens));
        add(m, "decode_ns", LD(c_decode_ns));
        add(m, "stall_ns", LD(c_stall_ns));
        add(m, "tiles_used", LD(c_tiles_used));
        add(m, "tile_bytes_used", LD(c_tile_bytes_used));
        add(m, "step", LD(c_step));
        add(m, "groups_skipped", LD(c_groups_skipped));
        add(m, "groups_total", LD(c_groups_total));
        add(m, "mem_bytes", LD(mem_compute));
    } else {
        return -EINVAL;
    }
    return 0;
}

int nf_stats_reply(struct nf_server *s, uint64_t conn_id, uint64_t req_id,
                   const struct nf_stack *st, const char *stage)
{
    struct nf_stats_msg m;
    int rc = nf_stats_fill(&m, stage, st->ctr, st->cfg->ram_budget, st->shm.size);
    if (rc < 0)
        return rc;
    nf_envelope env;
    nanoflow__envelope__init(&env);
    env.msg_case = NANOFLOW__ENVELOPE__MSG_STATS;
    env.stats = &m.stats;
    return nf_server_send(s, conn_id, req_id, &env);
}
