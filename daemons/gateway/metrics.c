/* metrics.c - /health and /metrics: a Health or Stats request to each of the three daemons at
 * once (GW_UPSTREAM_TIMEOUT_MS for all), then one answer. /health is 200 only when every daemon
 * answers READY or BUSY and none is dead or the stack stopping; /metrics is Prometheus text
 * (version 0.0.4) of the daemons' Stats counters and the gateway's own. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "gateway.h"
#include "nf_err.h"
#include "nf_proc.h"

#define GW_N_ROLES 3
static const char *const gw_roles[GW_N_ROLES] = {NF_ROLE_FETCHER, NF_ROLE_PREDICTOR,
                                                 NF_ROLE_COMPUTE};

/* A growing text buffer (the metrics page: a few KiB). */
struct tbuf {
    char *p;
    size_t len, cap;
    bool err;
};

static void tb_printf(struct tbuf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void tb_printf(struct tbuf *b, const char *fmt, ...)
{
    for (int tries = 0; tries < 2 && !b->err; tries++) {
        va_list ap;
        va_start(ap, fmt);
        int n = vsnprintf(b->p ? b->p + b->len : NULL, b->p ? b->cap - b->len : 0, fmt, ap);
        va_end(ap);
        if (n < 0) {
            b->err = true;
            return;
        }
        if (b->p && b->len + (size_t)n < b->cap) {
            b->len += (size_t)n;
            return;
        }
        size_t cap = b->cap ? b->cap : 4096;
        while (cap <= b->len + (size_t)n)
            cap *= 2;
        char *np = realloc(b->p, cap);
        if (!np) {
            b->err = true;
            return;
        }
        b->p = np;
        b->cap = cap;
    }
}

struct fan;
struct fan_call {
    struct fan *f;
    struct gw_up *up;
    int idx;
};

struct fan {
    struct gw *g;
    struct gw_conn *c; /* NULL once the client is gone */
    bool metrics;
    int pending; /* calls still open */
    uv_timer_t timer;
    struct fan_call calls[GW_N_ROLES];
    /* Health: the state each daemon reported (-1: none) and its pid. */
    int state[GW_N_ROLES];
    uint32_t pid[GW_N_ROLES];
    char why[GW_N_ROLES][128];
    /* Metrics: each daemon's part of the page. */
    struct tbuf part[GW_N_ROLES];
    bool answered;
};

static bool is_gauge(const char *name)
{
    static const char *const g[] = {"queue_depth", "resident_bytes", "mem_bytes", "lookahead",
                                    "queue_len"};
    for (size_t i = 0; i < sizeof(g) / sizeof(g[0]); i++)
        if (!strcmp(name, g[i]))
            return true;
    return false;
}

static void stats_text(struct tbuf *b, const Nanoflow__Stats *s, bool with_ram)
{
    for (size_t i = 0; i < s->n_stages; i++) {
        const Nanoflow__StageStats *st = s->stages[i];
        uint64_t hits = 0, misses = 0;
        for (size_t k = 0; k < st->n_counters; k++) {
            const char *n = st->counters[k]->name;
            uint64_t v = st->counters[k]->value;
            if (!strncmp(n, "lat_hist_", 9))
                continue; /* the quantiles below summarize it */
            if (!strcmp(n, "hits"))
                hits = v;
            if (!strcmp(n, "misses"))
                misses = v;
            bool gauge = is_gauge(n);
            tb_printf(b, "# TYPE nanoflow_%s_%s%s %s\nnanoflow_%s_%s%s %llu\n", st->stage, n,
                      gauge ? "" : "_total", gauge ? "gauge" : "counter", st->stage, n,
                      gauge ? "" : "_total", (unsigned long long)v);
        }
        if (!strcmp(st->stage, NF_ROLE_FETCHER)) {
            tb_printf(b,
                      "# TYPE nanoflow_fetcher_hit_ratio gauge\nnanoflow_fetcher_hit_ratio %.6f\n",
                      hits + misses ? (double)hits / (double)(hits + misses) : 0.0);
            static const char *const q[] = {"0.5", "0.99"};
            if (st->n_latency_quantiles_us)
                tb_printf(b, "# TYPE nanoflow_fetcher_read_latency_us summary\n");
            for (size_t k = 0; k < st->n_latency_quantiles_us && k < 2; k++)
                tb_printf(b, "nanoflow_fetcher_read_latency_us{quantile=\"%s\"} %.3f\n", q[k],
                          st->latency_quantiles_us[k]);
        }
    }
    if (with_ram)
        tb_printf(b,
                  "# TYPE nanoflow_ram_budget_bytes gauge\nnanoflow_ram_budget_bytes %llu\n"
                  "# TYPE nanoflow_ram_held_bytes gauge\nnanoflow_ram_held_bytes %llu\n",
                  (unsigned long long)s->ram_budget, (unsigned long long)s->ram_held);
}

static void gateway_text(struct tbuf *b, const struct gw *g)
{
    tb_printf(b,
              "# TYPE nanoflow_gateway_http_requests_total counter\n"
              "nanoflow_gateway_http_requests_total{class=\"2xx\"} %llu\n"
              "nanoflow_gateway_http_requests_total{class=\"4xx\"} %llu\n"
              "nanoflow_gateway_http_requests_total{class=\"5xx\"} %llu\n"
              "# TYPE nanoflow_gateway_connections gauge\nnanoflow_gateway_connections %d\n"
              "# TYPE nanoflow_gateway_connections_refused_total counter\n"
              "nanoflow_gateway_connections_refused_total %llu\n"
              "# TYPE nanoflow_gateway_generations gauge\nnanoflow_gateway_generations %d\n"
              "# TYPE nanoflow_gateway_generations_total counter\n"
              "nanoflow_gateway_generations_total %llu\n"
              "# TYPE nanoflow_gateway_tokens_total counter\nnanoflow_gateway_tokens_total %llu\n"
              "# TYPE nanoflow_gateway_mem_bytes gauge\nnanoflow_gateway_mem_bytes %llu\n"
              "# TYPE nanoflow_gateway_queue_wait_seconds summary\n"
              "nanoflow_gateway_queue_wait_seconds_sum %.6f\n"
              "nanoflow_gateway_queue_wait_seconds_count %llu\n",
              (unsigned long long)g->n_2xx, (unsigned long long)g->n_4xx,
              (unsigned long long)g->n_5xx, g->n_conns, (unsigned long long)g->n_refused, g->n_gens,
              (unsigned long long)g->n_gen_total, (unsigned long long)g->n_gen_tokens,
              (unsigned long long)nf_proc_private_bytes(getpid()), g->wait_s_sum,
              (unsigned long long)g->n_waited);
    /* The fair queue (fair.c): generations waiting in the gateway, the clients they belong to,
     * those forwarded to compute, and the waits of those forwarded. */
    tb_printf(b,
              "# TYPE nanoflow_gateway_queue_len gauge\nnanoflow_gateway_queue_len %d\n"
              "# TYPE nanoflow_gateway_queue_clients gauge\nnanoflow_gateway_queue_clients %d\n"
              "# TYPE nanoflow_gateway_running gauge\nnanoflow_gateway_running %d\n"
              "# TYPE nanoflow_gateway_queue_full_total counter\n"
              "nanoflow_gateway_queue_full_total %llu\n"
              "# TYPE nanoflow_gateway_fair_wait_seconds summary\n"
              "nanoflow_gateway_fair_wait_seconds_sum %.6f\n"
              "nanoflow_gateway_fair_wait_seconds_count %llu\n"
              "# TYPE nanoflow_gateway_fair_wait_max_seconds gauge\n"
              "nanoflow_gateway_fair_wait_max_seconds %.6f\n",
              g->n_waiting, g->n_clients, g->n_running, (unsigned long long)g->n_queue_full,
              (double)g->wait_ns_sum * 1e-9, (unsigned long long)g->n_started,
              (double)g->wait_ns_max * 1e-9);
}

static const char *state_name(int s)
{
    switch (s) {
    case NANOFLOW__HEALTH__STATE__STARTING: return "starting";
    case NANOFLOW__HEALTH__STATE__READY: return "ready";
    case NANOFLOW__HEALTH__STATE__BUSY: return "busy";
    case NANOFLOW__HEALTH__STATE__STOPPING: return "stopping";
    default: return "unreachable";
    }
}

static void answer_health(struct fan *f)
{
    struct gw *g = f->g;
    uint32_t dead = nf_live_check(g->st) | atomic_load(&g->st->sync->dead_mask);
    bool ok = !dead && !atomic_load(&g->st->sync->stop);
    json_t *d = json_object();
    for (int i = 0; i < GW_N_ROLES; i++) {
        bool up = f->state[i] == NANOFLOW__HEALTH__STATE__READY ||
                  f->state[i] == NANOFLOW__HEALTH__STATE__BUSY;
        ok = ok && up;
        json_t *r =
            json_pack("{s:s,s:I}", "state", state_name(f->state[i]), "pid", (json_int_t)f->pid[i]);
        if (f->why[i][0])
            json_object_set_new(r, "error", json_string(f->why[i]));
        json_object_set_new(d, gw_roles[i], r);
    }
    json_t *o = json_pack("{s:s,s:o}", "status", ok ? "ok" : "unavailable", "daemons", d);
    if (dead) {
        char msg[256];
        nf_live_message(g->st, dead, msg, sizeof(msg));
        json_object_set_new(o, "error", json_string(msg));
    }
    char *s = json_dumps(o, JSON_COMPACT);
    json_decref(o);
    gw_http_respond(f->c, ok ? 200 : 503, "application/json", s, s ? strlen(s) : 0,
                    ok ? NULL : "Retry-After: 1\r\n");
    free(s);
}

static void answer_metrics(struct fan *f)
{
    struct tbuf b = {0};
    for (int i = 0; i < GW_N_ROLES; i++) {
        if (f->part[i].len)
            tb_printf(&b, "%.*s", (int)f->part[i].len, f->part[i].p);
        tb_printf(&b, "# TYPE nanoflow_%s_up gauge\nnanoflow_%s_up %d\n", gw_roles[i], gw_roles[i],
                  f->part[i].len > 0);
    }
    gateway_text(&b, f->g);
    if (b.err)
        gw_http_error(f->c, 500, "server_error", NULL, NULL, "out of memory");
    else
        gw_http_respond(f->c, 200, "text/plain; version=0.0.4", b.p, b.len, NULL);
    free(b.p);
}

static void fan_timer_closed(uv_handle_t *h)
{
    struct fan *f = h->data;
    for (int i = 0; i < GW_N_ROLES; i++)
        free(f->part[i].p);
    free(f);
}

/* Answers once (all replies in, or the timeout), then frees f when the calls are closed. */
static void fan_answer(struct fan *f)
{
    if (!f->answered) {
        f->answered = true;
        uv_timer_stop(&f->timer);
        if (f->c) {
            struct gw_conn *c = f->c;
            gw_http_set_job(c, NULL, NULL);
            if (f->metrics)
                answer_metrics(f);
            else
                answer_health(f);
        }
        f->c = NULL;
        for (int i = 0; i < GW_N_ROLES; i++)
            if (f->calls[i].up)
                gw_up_close(f->calls[i].up);
    }
    if (f->pending == 0 && !uv_is_closing((uv_handle_t *)&f->timer))
        uv_close((uv_handle_t *)&f->timer, fan_timer_closed);
}

static void fan_gone(void *ud)
{
    struct fan *f = ud;
    f->c = NULL;
    fan_answer(f);
}

static void fan_timeout(uv_timer_t *t)
{
    struct fan *f = t->data;
    for (int i = 0; i < GW_N_ROLES; i++)
        if (f->calls[i].up && !f->why[i][0])
            snprintf(f->why[i], sizeof(f->why[i]), "no reply within %d ms", GW_UPSTREAM_TIMEOUT_MS);
    fan_answer(f);
}

static void call_msg(struct gw_up *u, nf_envelope *env, void *ud)
{
    struct fan_call *fc = ud;
    struct fan *f = fc->f;
    (void)u;
    int i = fc->idx;
    if (env->msg_case == NANOFLOW__ENVELOPE__MSG_HEALTH && !f->metrics) {
        f->state[i] = env->health->state;
        f->pid[i] = env->health->pid;
    } else if (env->msg_case == NANOFLOW__ENVELOPE__MSG_STATS && f->metrics) {
        stats_text(&f->part[i], env->stats, !strcmp(gw_roles[i], NF_ROLE_COMPUTE));
    } else if (env->msg_case == NANOFLOW__ENVELOPE__MSG_ERROR) {
        snprintf(f->why[i], sizeof(f->why[i]), "%s", env->error->message);
    }
    gw_up_close(fc->up);
}

static void call_close(struct gw_up *u, int status, void *ud)
{
    struct fan_call *fc = ud;
    struct fan *f = fc->f;
    (void)u;
    fc->up = NULL;
    if (status < 0 && !f->why[fc->idx][0])
        snprintf(f->why[fc->idx], sizeof(f->why[fc->idx]), "%s", nf_strerror(status));
    f->pending--;
    if (f->pending == 0 || f->answered)
        fan_answer(f);
}

static void fan_start(struct gw *g, struct gw_conn *c, bool metrics)
{
    struct fan *f = calloc(1, sizeof(*f));
    if (!f) {
        gw_http_error(c, 500, "server_error", NULL, NULL, "out of memory");
        return;
    }
    f->g = g;
    f->c = c;
    f->metrics = metrics;
    uv_timer_init(g->loop, &f->timer);
    f->timer.data = f;
    uv_timer_start(&f->timer, fan_timeout, GW_UPSTREAM_TIMEOUT_MS, 0);
    gw_http_set_job(c, fan_gone, f);
    for (int i = 0; i < GW_N_ROLES; i++) {
        f->state[i] = -1;
        f->calls[i] = (struct fan_call){.f = f, .idx = i};
        nf_envelope env;
        Nanoflow__HealthRequest hr;
        Nanoflow__StatsRequest sr;
        nanoflow__envelope__init(&env);
        if (metrics) {
            nanoflow__stats_request__init(&sr);
            env.msg_case = NANOFLOW__ENVELOPE__MSG_STATS_REQUEST;
            env.stats_request = &sr;
        } else {
            nanoflow__health_request__init(&hr);
            env.msg_case = NANOFLOW__ENVELOPE__MSG_HEALTH_REQUEST;
            env.health_request = &hr;
        }
        int rc = gw_up_open(g, gw_roles[i], ++g->next_req_id, &env, call_msg, call_close,
                            &f->calls[i], &f->calls[i].up);
        if (rc < 0)
            snprintf(f->why[i], sizeof(f->why[i]), "%s", nf_strerror(rc));
        else
            f->pending++;
    }
    if (f->pending == 0)
        fan_answer(f);
}

void gw_health(struct gw *g, struct gw_conn *c)
{
    fan_start(g, c, false);
}

void gw_metrics(struct gw *g, struct gw_conn *c)
{
    fan_start(g, c, true);
}

int gw_stats_reply(const struct gw *g, struct nf_server *s, uint64_t conn, uint64_t req_id)
{
    struct nf_stats_msg m;
    memset(&m, 0, sizeof(m));
    nanoflow__stats__init(&m.stats);
    nanoflow__stage_stats__init(&m.stage);
    m.stagep[0] = &m.stage;
    m.stats.n_stages = 1;
    m.stats.stages = m.stagep;
    m.stage.counters = m.ctrp;
    m.stage.stage = (char *)NF_ROLE_GATEWAY;
    nf_stats_add(&m, "queue_len", (uint64_t)g->n_waiting);
    nf_stats_add(&m, "queue_clients", (uint64_t)g->n_clients);
    nf_stats_add(&m, "running", (uint64_t)g->n_running);
    nf_stats_add(&m, "requests", g->n_started);
    nf_stats_add(&m, "queue_wait_ns", g->wait_ns_sum);
    nf_stats_add(&m, "queue_wait_max_ns", g->wait_ns_max);
    nf_stats_add(&m, "queue_full", g->n_queue_full);
    nf_stats_add(&m, "connections", (uint64_t)g->n_conns);
    nf_stats_add(&m, "tokens", g->n_gen_tokens);
    nf_stats_add(&m, "mem_bytes", nf_proc_private_bytes(getpid()));
    nf_envelope env;
    nanoflow__envelope__init(&env);
    env.msg_case = NANOFLOW__ENVELOPE__MSG_STATS;
    env.stats = &m.stats;
    return nf_server_send(s, conn, req_id, &env);
}
