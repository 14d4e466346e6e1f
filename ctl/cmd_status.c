/* cmd_status.c - nanoflowctl status (each daemon's pid, uptime, health) and stats (per-stage
 * throughput and memory held vs budget, from the daemons' Stats replies). */
#include <errno.h>
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "cmds.h"
#include "kv_quant.h"
#include "gen_output.h"
#include "nf_err.h"
#include "stack_ctl.h"
#include "stack_snap.h"
#include "nf_time.h"

#define NF_CTL_RPC_TIMEOUT_MS 5000

static const char *state_name(int st)
{
    switch (st) {
    case NANOFLOW__HEALTH__STATE__STARTING: return "starting";
    case NANOFLOW__HEALTH__STATE__READY: return "ready";
    case NANOFLOW__HEALTH__STATE__BUSY: return "busy";
    case NANOFLOW__HEALTH__STATE__STOPPING: return "stopping";
    default: return "unknown";
    }
}

static void jerr(const char *msg)
{
    printf("\"error\":");
    nf_json_str(stdout, (const unsigned char *)msg, strlen(msg));
}

static void jdir(const char *dir)
{
    printf("{\"run_dir\":");
    nf_json_str(stdout, (const unsigned char *)dir, strlen(dir));
}

/* Parses the common [--run-dir DIR] [--json] flags (and --watch [SECS] for stats). Returns 0,
 * 1 after --help, 2 on a usage error. */
static int parse_common(const char *cmd, int argc, char **argv, const char **run_dir, bool *json,
                        double *watch, void (*usage)(FILE *))
{
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "-h") || !strcmp(a, "--help")) {
            usage(stdout);
            return 1;
        }
        if (!strcmp(a, "--json")) {
            *json = true;
        } else if (watch && !strcmp(a, "--watch")) {
            *watch = 2.0;
            /* Optional value: the next argument when it is a number. */
            if (i + 1 < argc && argv[i + 1][0] != '-') {
                float v;
                if (nf_arg_float(cmd, "--watch", argv[i + 1], 0.1f, 3600.0f, &v))
                    return 2;
                *watch = v;
                i++;
            }
        } else if (watch && !strncmp(a, "--watch=", 8)) {
            float v;
            if (nf_arg_float(cmd, "--watch", a + 8, 0.1f, 3600.0f, &v))
                return 2;
            *watch = v;
        } else if (nf_arg_is(a, "--run-dir")) {
            if (!(*run_dir = nf_arg_value(cmd, argc, argv, &i)))
                return 2;
        } else {
            return nf_usage_error(cmd, "unknown flag '%s'", a);
        }
    }
    return 0;
}

/* --- status --------------------------------------------------------------------------------- */

static void status_usage(FILE *f)
{
    fprintf(f, "usage: nanoflowctl status [--run-dir DIR] [--json]\n\n"
               "Shows each daemon of the stack: pid, health state and uptime, and the HTTP\n"
               "gateway when the stack runs one (up --http). Exits 1 unless the three daemons\n"
               "answer.\n\n"
               "      --run-dir DIR    run directory (default: as for 'up')\n"
               "      --json           one JSON object instead of the table\n"
               "  -h, --help           show this help\n");
}

int nf_cmd_status(int argc, char **argv)
{
    const char *run_dir = NULL;
    bool json = false;
    int rc = parse_common("status", argc, argv, &run_dir, &json, NULL, status_usage);
    if (rc)
        return rc == 1 ? 0 : rc;
    char dir[PATH_MAX];
    if (nf_ctl_rundir("status", run_dir, dir, sizeof(dir)) < 0)
        return 1;
    if (!nf_ctl_stack_present(dir)) {
        fprintf(stderr, "nanoflowctl status: no stack running in %s\n", dir);
        return 1;
    }
    /* A daemon that died (the liveness records in the region) shows as "dead" with the pid it
     * had, and the reason follows the table. */
    char dead_msg[256] = "";
    int live_pids[NF_N_ROLES] = {0};
    unsigned dead = nf_ctl_stack_dead(dir, dead_msg, sizeof(dead_msg), live_pids);
    int n_ok = 0;
    if (json) {
        jdir(dir);
        printf(",\"daemons\":[");
    } else
        printf("%-10s %8s  %-10s %10s\n", "DAEMON", "PID", "STATE", "UPTIME");
    /* The gateway (up --http) follows the three daemons when its pid file says it runs; it is
     * not one of the daemons the stack needs, so it does not count in the exit status. */
    const bool gw = nf_pidfile_read(dir, NF_ROLE_GATEWAY) > 0;
    for (int i = 0; i < NF_N_ROLES + gw; i++) {
        const char *role = i < NF_N_ROLES ? nf_stack_roles[i] : NF_ROLE_GATEWAY;
        int pid = nf_pidfile_read(dir, role);
        char err[512] = "";
        const char *state = "down";
        double uptime = -1;
        int fd = nf_ctl_connect(dir, role, 2000, err, sizeof(err));
        if (fd >= 0) {
            nf_envelope req, *r = NULL;
            Nanoflow__HealthRequest hr;
            nanoflow__envelope__init(&req);
            nanoflow__health_request__init(&hr);
            req.msg_case = NANOFLOW__ENVELOPE__MSG_HEALTH_REQUEST;
            req.health_request = &hr;
            rc = nf_ctl_request(fd, &req, &r, NF_CTL_RPC_TIMEOUT_MS);
            if (rc == 0 && r->msg_case == NANOFLOW__ENVELOPE__MSG_HEALTH) {
                state = state_name(r->health->state);
                uptime = r->health->uptime_s;
                if (r->health->pid)
                    pid = (int)r->health->pid;
                n_ok += i < NF_N_ROLES;
            } else {
                state = "not responding";
                snprintf(err, sizeof(err), "%s", rc < 0 ? nf_strerror(rc) : "unexpected reply");
            }
            nf_envelope_free(r);
            close(fd);
        } else if (fd == -EPERM) {
            fprintf(stderr, "nanoflowctl status: %s\n", err); /* a socket we must not trust */
            state = "refused";
        } else if (pid > 0) {
            state = "not responding";
        }
        if (i < NF_N_ROLES && (dead & (1u << i))) {
            state = "dead";
            pid = live_pids[i];
        }
        if (json) {
            printf("%s{\"role\":\"%s\",\"pid\":%d,\"state\":\"%s\"", i ? "," : "", role, pid,
                   state);
            if (uptime >= 0)
                printf(",\"uptime_s\":%.3f", uptime);
            printf("}");
        } else {
            char up[32] = "-", pids[16] = "-";
            if (uptime >= 0)
                snprintf(up, sizeof(up), "%.1f s", uptime);
            if (pid > 0)
                snprintf(pids, sizeof(pids), "%d", pid);
            printf("%-10s %8s  %-10s %10s\n", role, pids, state, up);
        }
    }
    /* The plan the fetcher made (the region's config), when there is a region to read. */
    struct nf_ctl_plan_info pi;
    const bool have_plan = nf_ctl_stack_plan_info(dir, &pi) == 0;
    if (json) {
        printf("]");
        if (have_plan)
            printf(",\"plan\":{\"ram_budget\":%llu,\"pool_bytes\":%llu,\"n_ctx\":%u,"
                   "\"n_ubatch\":%u,\"n_seq\":%u}",
                   (unsigned long long)pi.ram_budget, (unsigned long long)pi.pool_bytes, pi.n_ctx,
                   pi.n_ubatch, pi.n_seq);
        printf("}\n");
    } else if (have_plan) {
        char b1[32], b2[32];
        printf("plan: budget %s, pool %s, n_ctx %u, prompt ubatch %u tokens, %u sequences\n",
               nf_ctl_fmt_size(b1, sizeof(b1), pi.ram_budget),
               nf_ctl_fmt_size(b2, sizeof(b2), pi.pool_bytes), pi.n_ctx, pi.n_ubatch, pi.n_seq);
    }
    if (dead)
        fprintf(stderr, "nanoflowctl status: %s\n", dead_msg);
    if (n_ok < NF_N_ROLES) {
        fprintf(stderr, "nanoflowctl status: %d of %d daemons answer in %s\n", n_ok, NF_N_ROLES,
                dir);
        return 1;
    }
    return 0;
}

/* --- stats ---------------------------------------------------------------------------------- */

/* One metric: a text row or a JSON member (NaN: not measured yet). */
static void metric(bool json, bool *first, const char *stage, const char *key, const char *label,
                   double v, const char *unit)
{
    if (json) {
        printf("%s\"%s\":", *first ? "" : ",", key);
        if (isnan(v))
            printf("null");
        else
            printf("%.6g", v);
        *first = false;
        return;
    }
    if (isnan(v))
        printf("%-10s %-22s %14s\n", *first ? stage : "", label, "-");
    else if (!strcmp(unit, "%"))
        printf("%-10s %-22s %13.1f%%\n", *first ? stage : "", label, v * 100.0);
    else
        printf("%-10s %-22s %14.6g %s\n", *first ? stage : "", label, v, unit);
    *first = false;
}

/* A metric that is the stage's counter of the same name. */
static void counter(bool json, bool *first, const char *stage, const struct nf_stage_snap *s,
                    const char *key, const char *label, const char *unit)
{
    metric(json, first, stage, key, label, (double)nf_stage_ctr(s, key), unit);
}

static void print_stats(const char *dir, const struct nf_stack_snap *s, bool json, double interval)
{
    const struct nf_stage_snap *f = &s->st[0], *p = &s->st[1], *c = &s->st[2];
    if (json) {
        jdir(dir);
        printf(",\"interval_s\":%.3f,\"ram_budget\":%llu,\"ram_held\":%llu", interval,
               (unsigned long long)s->budget, (unsigned long long)s->held);
    } else
        printf("%-10s %-22s %14s\n", "STAGE", "METRIC", "VALUE");
    bool first, no_recall = false;
    /* predictor */
    if (json)
        printf(",\"predictor\":{");
    first = true;
    if (p->ok) {
        double tp = (double)nf_stage_ctr(p, "true_pos"), fp = (double)nf_stage_ctr(p, "false_pos"),
               fn = (double)nf_stage_ctr(p, "false_neg"),
               np = (double)nf_stage_ctr(p, "predictions"), ns = (double)nf_stage_ctr(p, "pred_ns");
        metric(json, &first, "predictor", "predictions_s", "predictions/s",
               nf_snap_ratio(np, ns * 1e-9), "/s");
        no_recall = isnan(nf_snap_ratio(tp, tp + fn));
        metric(json, &first, "predictor", "recall", no_recall ? "recall (1)" : "recall",
               nf_snap_ratio(tp, tp + fn), "%");
        metric(json, &first, "predictor", "precision", "precision", nf_snap_ratio(tp, tp + fp),
               "%");
        metric(json, &first, "predictor", "latency_us", "latency", nf_snap_ratio(ns * 1e-3, np),
               "us");
        counter(json, &first, "predictor", p, "requests", "tile requests", "");
        counter(json, &first, "predictor", p, "lookahead", "lookahead", "layers");
        counter(json, &first, "predictor", p, "kv_requests", "KV tile pushes", "");
    } else if (json) {
        jerr(p->err);
    } else {
        printf("%-10s unavailable: %s\n", "predictor", p->err);
    }
    /* fetcher */
    if (json)
        printf("},\"fetcher\":{");
    first = true;
    if (f->ok) {
        double busy = (double)nf_stage_ctr(f, "busy_ns") * 1e-9,
               bytes = (double)nf_stage_ctr(f, "bytes"), reads = (double)nf_stage_ctr(f, "reads");
        uint64_t hist[32];
        for (int i = 0; i < 32; i++) {
            char nm[16];
            snprintf(nm, sizeof(nm), "lat_hist_%02d", i);
            hist[i] = nf_stage_ctr(f, nm);
        }
        double tokens =
            c->ok ? (double)(nf_stage_ctr(c, "prompt_tokens") + nf_stage_ctr(c, "decode_tokens"))
                  : 0;
        uint64_t nh = 0;
        for (int i = 0; i < 32; i++)
            nh += hist[i];
        metric(json, &first, "fetcher", "mb_s", "read throughput", nf_snap_ratio(bytes / 1e6, busy),
               "MB/s");
        metric(json, &first, "fetcher", "iops", "IOPS", nf_snap_ratio(reads, busy), "/s");
        metric(json, &first, "fetcher", "p50_us", "read latency p50",
               nh ? nf_lat_quantile_us(hist, 32, 0.50) : NAN, "us");
        metric(json, &first, "fetcher", "p99_us", "read latency p99",
               nh ? nf_lat_quantile_us(hist, 32, 0.99) : NAN, "us");
        metric(json, &first, "fetcher", "hit_rate", "hit rate", nf_snap_hit_rate(f, c), "%");
        metric(json, &first, "fetcher", "bytes_per_token", "bytes per token",
               nf_snap_ratio(bytes, tokens), "B");
        counter(json, &first, "fetcher", f, "queue_depth", "queue depth", "");
        counter(json, &first, "fetcher", f, "inflight_peak_bytes", "in flight at most", "B");
        metric(json, &first, "fetcher", "reads", "reads", reads, "");
        counter(json, &first, "fetcher", f, "evictions", "evictions", "");
        counter(json, &first, "fetcher", f, "checksum_errors", "checksum errors", "");
        counter(json, &first, "fetcher", f, "prefetch_dropped", "prefetches dropped", "");
        counter(json, &first, "fetcher", f, "plan_dropped", "withdrawn unread", "");
        counter(json, &first, "fetcher", f, "plan_released", "withdrawn after read", "");
        counter(json, &first, "fetcher", f, "kv_prefetch_reads", "KV reads pushed", "");
        counter(json, &first, "fetcher", f, "kv_demand_reads", "KV reads asked by compute", "");
        counter(json, &first, "fetcher", f, "kv_prefetch_used", "KV pushed, pinned", "");
        counter(json, &first, "fetcher", f, "kv_prefetch_unused", "KV pushed, evicted unused", "");
    } else if (json) {
        jerr(f->err);
    } else {
        printf("%-10s unavailable: %s\n", "fetcher", f->err);
    }
    /* compute */
    if (json)
        printf("},\"compute\":{");
    first = true;
    if (c->ok) {
        double pn = (double)nf_stage_ctr(c, "prompt_ns"), dn = (double)nf_stage_ctr(c, "decode_ns");
        double gt = (double)nf_stage_ctr(c, "groups_total");
        metric(json, &first, "compute", "prompt_tok_s", "prompt",
               nf_snap_ratio((double)nf_stage_ctr(c, "prompt_tokens"), pn * 1e-9), "tok/s");
        metric(json, &first, "compute", "decode_tok_s", "decode",
               nf_snap_ratio((double)nf_stage_ctr(c, "decode_tokens"), dn * 1e-9), "tok/s");
        metric(json, &first, "compute", "stall_share", "stalled on tiles",
               nf_snap_ratio((double)nf_stage_ctr(c, "stall_ns"), pn + dn), "%");
        metric(json, &first, "compute", "tokens", "tokens",
               (double)(nf_stage_ctr(c, "prompt_tokens") + nf_stage_ctr(c, "decode_tokens")), "");
        metric(json, &first, "compute", "groups_skipped", "FFN groups skipped",
               nf_snap_ratio((double)nf_stage_ctr(c, "groups_skipped"), gt), "%");
        counter(json, &first, "compute", c, "active", "sequences active", "");
        counter(json, &first, "compute", c, "parallel", "sequences at most", "");
        counter(json, &first, "compute", c, "shared_steps", "steps shared (2+ sequences)", "");
        metric(json, &first, "compute", "shared_batch", "sequences per shared step",
               nf_snap_ratio((double)nf_stage_ctr(c, "shared_rows"),
                             (double)nf_stage_ctr(c, "shared_steps")),
               "");
        counter(json, &first, "compute", c, "queue_len", "requests queued", "");
        metric(json, &first, "compute", "queue_wait_ms", "queue wait (mean)",
               nf_snap_ratio((double)nf_stage_ctr(c, "queue_wait_ns") * 1e-6,
                             (double)nf_stage_ctr(c, "requests")),
               "ms");
        counter(json, &first, "compute", c, "clamped", "requests clamped", "");
        /* Speculative decoding: draft tokens verified, accepted, and the acceptance rate. */
        metric(json, &first, "compute", "drafted", "drafted", (double)nf_stage_ctr(c, "drafted"),
               "");
        counter(json, &first, "compute", c, "accepted", "drafts accepted", "");
        metric(
            json, &first, "compute", "accept_rate", "acceptance rate",
            nf_snap_ratio((double)nf_stage_ctr(c, "accepted"), (double)nf_stage_ctr(c, "drafted")),
            "%");
        /* The KV cache: its types by name, its bytes (all sequences) and bytes a token. */
        const uint64_t ck = nf_stage_ctr(c, "kv_type_k"), cv = nf_stage_ctr(c, "kv_type_v");
        const char *tk = nf_kv_type_name(ck ? (enum nf_type)ck : NF_TYPE_F16);
        const char *tv = nf_kv_type_name(cv ? (enum nf_type)cv : NF_TYPE_F16);
        const unsigned long long kvb = nf_stage_ctr(c, "kv_bytes"),
                                 kvt = nf_stage_ctr(c, "kv_token_bytes");
        char kb[32];
        if (json)
            printf(",\"kv_type_k\":\"%s\",\"kv_type_v\":\"%s\",\"kv_bytes\":%llu,"
                   "\"kv_token_bytes\":%llu",
                   tk, tv, kvb, kvt);
        else
            printf("%-10s %-22s %9s / %s\n%-10s %-22s %14s\n%-10s %-22s %12llu B\n", "",
                   "KV cache K / V", tk, tv, "", "KV cache bytes",
                   nf_ctl_fmt_size(kb, sizeof(kb), kvb), "", "KV bytes a token", kvt);
        /* The KV cache on disk (kv_file.h): bytes read back and written, and the most read
         * back at once beside the window that bounds it. */
        const unsigned long long kvw = nf_stage_ctr(c, "kv_window"),
                                 kvm = nf_stage_ctr(c, "kv_resident_max"),
                                 kvr = nf_stage_ctr(c, "kv_read_bytes"),
                                 kvo = nf_stage_ctr(c, "kv_write_bytes");
        char kb2[32], kb3[32], kb4[32];
        if (kvw && json)
            printf(",\"kv_read_bytes\":%llu,\"kv_write_bytes\":%llu,\"kv_resident_max\":%llu,"
                   "\"kv_window\":%llu",
                   kvr, kvo, kvm, kvw);
        else if (kvw)
            printf("%-10s %-22s %14s\n%-10s %-22s %14s\n%-10s %-22s %9s / %s\n", "", "KV read back",
                   nf_ctl_fmt_size(kb, sizeof(kb), kvr), "", "KV written",
                   nf_ctl_fmt_size(kb2, sizeof(kb2), kvo), "", "KV read back at once",
                   nf_ctl_fmt_size(kb3, sizeof(kb3), kvm), nf_ctl_fmt_size(kb4, sizeof(kb4), kvw));
        /* Prefix reuse: requests started from a kept prefix, the prompt tokens they did not
         * evaluate, and those as a share of all prompt tokens (evaluated or not). */
        const double reused = (double)nf_stage_ctr(c, "prefix_reused");
        counter(json, &first, "compute", c, "prefix_hits", "prefix hits", "");
        metric(json, &first, "compute", "prefix_reused", "prompt tokens reused", reused, "");
        metric(json, &first, "compute", "prefix_saved", "prompt tokens saved",
               nf_snap_ratio(reused, reused + (double)nf_stage_ctr(c, "prompt_tokens")), "%");
        /* The prefix store (up --kv-store): requests started from a stored prefix, the
         * prompt tokens read from it, prefixes written, and its files (the table shows them
         * once the store is in use). */
        const char *ks[][2] = {{"kv_store_hits", "kv-store hits"},
                               {"kv_store_reused", "kv-store tokens read"},
                               {"kv_store_saved", "kv-store prefixes saved"},
                               {"kv_store_entries", "kv-store prefixes"},
                               {"kv_store_bytes", "kv-store bytes"}};
        bool ks_used = json;
        for (size_t i = 0; i < sizeof(ks) / sizeof(ks[0]); i++)
            ks_used |= nf_stage_ctr(c, ks[i][0]) > 0;
        for (size_t i = 0; ks_used && i < sizeof(ks) / sizeof(ks[0]); i++)
            metric(json, &first, "compute", ks[i][0], ks[i][1], (double)nf_stage_ctr(c, ks[i][0]),
                   i == 4 ? "B" : "");
    } else if (json) {
        jerr(c->err);
    } else {
        printf("%-10s unavailable: %s\n", "compute", c->err);
    }
    /* gateway: only when the stack runs one (up --http) */
    if (s->has_gw) {
        const struct nf_stage_snap *g = &s->gw;
        if (json)
            printf("},\"gateway\":{");
        first = true;
        if (g->ok) {
            const double n = (double)nf_stage_ctr(g, "requests");
            counter(json, &first, "gateway", g, "queue_len", "requests queued", "");
            counter(json, &first, "gateway", g, "queue_clients", "clients queued", "");
            counter(json, &first, "gateway", g, "running", "requests at compute", "");
            metric(json, &first, "gateway", "requests", "requests forwarded", n, "");
            metric(json, &first, "gateway", "queue_wait_ms", "queue wait (mean)",
                   nf_snap_ratio((double)nf_stage_ctr(g, "queue_wait_ns") * 1e-6, n), "ms");
            metric(json, &first, "gateway", "queue_wait_max_ms", "queue wait (max)",
                   (double)nf_stage_ctr(g, "queue_wait_max_ns") * 1e-6, "ms");
            counter(json, &first, "gateway", g, "queue_full", "refused, queue full", "");
            counter(json, &first, "gateway", g, "connections", "HTTP connections", "");
        } else if (json) {
            jerr(g->err);
        } else {
            printf("%-10s unavailable: %s\n", "gateway", g->err);
        }
    }
    /* memory */
    if (json) {
        printf("},\"memory\":{\"budget\":%llu,\"held\":%llu", (unsigned long long)s->budget,
               (unsigned long long)s->held);
        for (int i = 0; i < NF_N_ROLES; i++)
            if (s->st[i].ok)
                printf(",\"%s\":%llu", nf_stack_roles[i],
                       (unsigned long long)nf_stage_ctr(&s->st[i], "mem_bytes"));
        printf("}}\n");
    } else {
        char b1[32], b2[32];
        printf("%-10s %-22s %14s\n", "memory", "held", nf_ctl_fmt_size(b1, sizeof(b1), s->held));
        printf("%-10s %-22s %14s\n", "", "budget", nf_ctl_fmt_size(b2, sizeof(b2), s->budget));
        printf("%-10s %-22s %13.1f%%\n", "", "held / budget",
               s->budget ? 100.0 * (double)s->held / (double)s->budget : 0.0);
        for (int i = 0; i < NF_N_ROLES; i++)
            if (s->st[i].ok) {
                char lab[32];
                snprintf(lab, sizeof(lab), "%s private", nf_stack_roles[i]);
                printf("%-10s %-22s %14s\n", "", lab,
                       nf_ctl_fmt_size(b1, sizeof(b1), nf_stage_ctr(&s->st[i], "mem_bytes")));
            }
        if (no_recall)
            printf("(1) recall and precision are measured only in sparse (--sparsity > 0) or MoE "
                   "mode:\n    an exact dense model runs every FFN group, so nothing is "
                   "predicted\n");
    }
    fflush(stdout);
}

static void stats_usage(FILE *f)
{
    fprintf(f, "usage: nanoflowctl stats [--run-dir DIR] [--json] [--watch [SECS]]\n\n"
               "Per-stage numbers of the stack: predictor (predictions/s, recall, precision,\n"
               "latency), fetcher (MB/s and IOPS while reading, p50/p99 read latency, hit rate:\n"
               "the share of the tiles compute used that needed no read, bytes per token, queue\n"
               "depth), compute (prompt and decode tok/s, share of time stalled on tiles,\n"
               "speculative decoding's drafted and accepted tokens and acceptance rate, prefix\n"
               "reuse's hits, prompt tokens reused and their share of all prompt tokens, and\n"
               "with up --kv-store the store's hits, tokens read, prefixes saved and held), the\n"
               "HTTP gateway when the stack runs one (requests and clients in its fair queue,\n"
               "mean and longest queue wait), and memory held vs the budget. Rates are per busy\n"
               "second of the stage; with --watch they cover the last interval.\n\n"
               "      --run-dir DIR    run directory (default: as for 'up')\n"
               "      --json           one JSON object (per refresh) instead of the table\n"
               "      --watch [SECS]   refresh every SECS seconds (default: 2) until interrupted\n"
               "  -h, --help           show this help\n");
}

int nf_cmd_stats(int argc, char **argv)
{
    const char *run_dir = NULL;
    bool json = false;
    double watch = 0;
    int rc = parse_common("stats", argc, argv, &run_dir, &json, &watch, stats_usage);
    if (rc)
        return rc == 1 ? 0 : rc;
    char dir[PATH_MAX];
    if (nf_ctl_rundir("stats", run_dir, dir, sizeof(dir)) < 0)
        return 1;
    if (!nf_ctl_stack_present(dir)) {
        fprintf(stderr, "nanoflowctl stats: no stack running in %s\n", dir);
        return 1;
    }
    static struct nf_stack_snap cur, prev, d;
    nf_stack_snap_take(dir, &cur);
    int n_ok = cur.st[0].ok + cur.st[1].ok + cur.st[2].ok;
    if (n_ok == 0) {
        fprintf(stderr, "nanoflowctl stats: no daemon answers in %s (%s)\n", dir, cur.st[0].err);
        return 1;
    }
    if (watch <= 0) {
        print_stats(dir, &cur, json, 0);
        return n_ok == NF_N_ROLES ? 0 : 1;
    }
    bool tty = !json && isatty(1);
    for (;;) {
        prev = cur;
        struct timespec ts = {(time_t)watch, (long)((watch - (double)(time_t)watch) * 1e9)};
        nanosleep(&ts, NULL);
        nf_stack_snap_take(dir, &cur);
        if (cur.st[0].ok + cur.st[1].ok + cur.st[2].ok == 0) {
            fprintf(stderr, "nanoflowctl stats: the stack in %s stopped answering\n", dir);
            return 1;
        }
        nf_stack_snap_delta(&d, &cur, &prev);
        if (tty)
            printf("\033[H\033[J");
        print_stats(dir, &d, json, cur.t - prev.t);
        if (!json)
            putchar('\n');
    }
}
