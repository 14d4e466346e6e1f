/* main.c - nanoflow-gateway: the stack's OpenAI-compatible HTTP front (see gateway.h).
 *
 * Startup: flags, the API key file, the run directory, detach, the pid file, the .nft's metadata
 * (the model's name and chat template), the stack's region (attached once the fetcher created
 * it: the gateway reads its stop word and the daemons' liveness records, nothing else), the HTTP
 * listener and the control server on gateway.sock (Hello and Health, Shutdown). It stops with the
 * stack: on Shutdown, SIGTERM/SIGINT, or the region's stop word (compute's Shutdown sets it). */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "chat.h"
#include "gateway.h"
#include "gguf.h"
#include "nf_err.h"
#include "nft.h"
#include "tokenizer.h"

struct gateway {
    struct nf_daemon_args o;
    const char *http, *key_file, *chat_template;
    long max_conns, max_queue, max_running;
    uint64_t max_body;
    char dir[PATH_MAX];
    char key[256];
    struct nf_nft *f;
    struct nf_stack st;
    bool attached;
    uv_loop_t loop;
    bool loop_init;
    struct nf_server *srv;
    uv_signal_t sigterm, sigint;
    uv_timer_t watch;
    struct gw g;
};

static void usage(FILE *out)
{
    fprintf(out,
            "usage: nanoflow-gateway --model FILE.nft --http HOST:PORT [--run-dir DIR]\n"
            "                        [--api-key-file FILE] [--chat-template NAME]\n"
            "                        [--max-conns N] [--max-body SIZE] [--max-queue N]\n"
            "                        [--attach-timeout S] [--foreground]\n"
            "                        [--log-level error|warn|info|debug]\n\n"
            "Serves the stack's model over an OpenAI-compatible HTTP API (POST /v1/completions,\n"
            "POST /v1/chat/completions, GET /v1/models, /health, /metrics), forwarding each\n"
            "generation to nanoflow-compute. Normally started by 'nanoflowctl up --http'.\n\n"
            "  --model FILE         the stack's .nft tile file (required: its name and chat\n"
            "                       template)\n"
            "  --http HOST:PORT     address to listen on, e.g. 127.0.0.1:8080 or [::1]:8080\n"
            "                       (required)\n"
            "  --api-key-file FILE  require 'Authorization: Bearer KEY' with the key on the\n"
            "                       file's first line (/health stays open)\n"
            "  --chat-template NAME format chat messages as NAME (%s) instead of the\n"
            "                       model's tokenizer.chat_template (default: the model's,\n"
            "                       else chatml as llama.cpp's server)\n"
            "  --max-conns N        HTTP connections at once, 1..65536 (default %d)\n"
            "  --max-body SIZE      request body limit, K/M suffixes (default 2M)\n"
            "  --max-queue N        generations queued or running at once, 1..4096; more get\n"
            "                       429 (default %d)\n"
            "  --max-running N      of those, forwarded to compute at once, 1..4096; the rest\n"
            "                       wait in the gateway, served round-robin per client (API\n"
            "                       key, else address) (default: --parallel, the sequences\n"
            "                       compute runs at once, which up passes; else %d)\n"
            "  --run-dir DIR        run directory (default: as nanoflowctl's)\n"
            "  --ram SIZE, -t, --threads N, --sparsity S, --ctx N\n"
            "                       the stack's flags, which 'up' passes to every daemon:\n"
            "                       checked and accepted, unused by the gateway (default: none)\n"
            "  --attach-timeout S   seconds to wait for the stack's region (default 30)\n"
            "  --foreground         stay attached, log to stderr\n"
            "  --log-level L        error, warn, info or debug (default: info)\n"
            "  -h, --help           show this help\n\n"
            "Environment: NANOFLOW_HTTP_HEADER_TIMEOUT_S (a request's line, headers and body\n"
            "arrive within it, default %d), NANOFLOW_HTTP_IDLE_TIMEOUT_S (keep-alive without\n"
            "a request, default %d), NANOFLOW_HTTP_MAX_QUEUE (--max-queue when not given),\n"
            "NANOFLOW_HTTP_MAX_RUNNING (--max-running when not given).\n",
            nf_chat_names(), GW_MAX_CONNS_DEFAULT, GW_MAX_QUEUE_DEFAULT, GW_MAX_RUNNING_DEFAULT,
            GW_HEADER_TIMEOUT_S, GW_IDLE_TIMEOUT_S);
}

enum {
    ARG_HTTP = NF_ARG_OWN,
    ARG_KEY,
    ARG_TEMPLATE,
    ARG_MAX_CONNS,
    ARG_MAX_BODY,
    ARG_MAX_QUEUE,
    ARG_MAX_RUNNING,
};

static const struct option own_opts[] = {
    {"http", required_argument, NULL, ARG_HTTP},
    {"api-key-file", required_argument, NULL, ARG_KEY},
    {"chat-template", required_argument, NULL, ARG_TEMPLATE},
    {"max-conns", required_argument, NULL, ARG_MAX_CONNS},
    {"max-body", required_argument, NULL, ARG_MAX_BODY},
    {"max-queue", required_argument, NULL, ARG_MAX_QUEUE},
    {"max-running", required_argument, NULL, ARG_MAX_RUNNING},
    {NULL, 0, NULL, 0},
};

static int parse_own(int val, const char *arg, void *ud)
{
    struct gateway *m = ud;
    switch (val) {
    case ARG_HTTP: m->http = arg; return 0;
    case ARG_KEY: m->key_file = arg; return 0;
    case ARG_TEMPLATE:
        m->chat_template = nf_chat_detect(arg) ? arg : NULL;
        return m->chat_template ? 0 : -EINVAL;
    case ARG_MAX_CONNS: return nf_daemon_arg_long(arg, 1, 65536, &m->max_conns);
    case ARG_MAX_QUEUE: return nf_daemon_arg_long(arg, 1, 4096, &m->max_queue);
    case ARG_MAX_RUNNING: return nf_daemon_arg_long(arg, 1, 4096, &m->max_running);
    case ARG_MAX_BODY:
        if (nf_daemon_arg_size(arg, &m->max_body) < 0 || m->max_body > (64u << 20))
            return -EINVAL;
        return 0;
    default: return -EINVAL;
    }
}

/* The key: the file's first line without surrounding white space, 1..255 bytes. */
static int read_key(struct gateway *m, char *err, size_t errlen)
{
    FILE *f = fopen(m->key_file, "r");
    if (!f)
        return nf_errf(err, errlen, -errno, "--api-key-file %s: %s", m->key_file, strerror(errno));
    char line[512];
    bool got = fgets(line, sizeof(line), f) != NULL;
    fclose(f);
    char *s = line, *e;
    if (got) {
        while (*s == ' ' || *s == '\t')
            s++;
        e = s + strlen(s);
        while (e > s && (e[-1] == '\n' || e[-1] == '\r' || e[-1] == ' ' || e[-1] == '\t'))
            *--e = 0;
    }
    const size_t len = got ? strlen(s) : 0;
    if (len == 0 || len >= sizeof(m->key))
        return nf_errf(err, errlen, NF_EUSAGE,
                       "--api-key-file %s: expected the key (1..255 bytes) on its first line",
                       m->key_file);
    memcpy(m->key, s, len + 1);
    return 0;
}

/* A timeout from the environment (seconds, 1..86400), else def; in milliseconds. Also reads
 * NANOFLOW_HTTP_MAX_QUEUE and NANOFLOW_HTTP_MAX_RUNNING (counts in the same range). */
static uint64_t env_timeout_ms(const char *name, int def)
{
    const char *v = getenv(name);
    if (v && *v) {
        char *end;
        long x = strtol(v, &end, 10);
        if (!*end && x >= 1 && x <= 86400)
            return (uint64_t)x * 1000u;
        nf_log(NF_LOG_WARN, "ignoring %s=%s (expected 1..86400 seconds); using %d", name, v, def);
    }
    return (uint64_t)def * 1000u;
}

static void shutdown_gw(struct gateway *m, const char *why)
{
    if (m->g.stopping)
        return;
    nf_log(NF_LOG_INFO, "shutting down (%s)", why);
    if (m->srv)
        nf_server_set_health(m->srv, NANOFLOW__HEALTH__STATE__STOPPING);
    gw_http_stop(&m->g);
    if (m->srv) {
        nf_server_stop(m->srv);
        m->srv = NULL;
    }
    uv_close((uv_handle_t *)&m->sigterm, NULL);
    uv_close((uv_handle_t *)&m->sigint, NULL);
    uv_close((uv_handle_t *)&m->watch, NULL);
}

static void on_request(struct nf_server *s, uint64_t conn, nf_envelope *env, void *ud)
{
    struct gateway *m = ud;
    if (env->msg_case == NANOFLOW__ENVELOPE__MSG_SHUTDOWN) {
        nf_server_send_stopping(s, conn, env->request_id);
        shutdown_gw(m, "Shutdown request");
        return;
    }
    if (env->msg_case == NANOFLOW__ENVELOPE__MSG_STATS_REQUEST) {
        int rc = gw_stats_reply(&m->g, s, conn, env->request_id);
        if (rc < 0 && rc != -ENOTCONN)
            nf_server_send_error(s, conn, env->request_id, rc, "stats: %s", nf_strerror(rc));
        return;
    }
    nf_server_send_error(s, conn, env->request_id, NF_EPROTO,
                         "the gateway does not handle this message (%d)", (int)env->msg_case);
}

static void on_signal(uv_signal_t *h, int signum)
{
    shutdown_gw(h->data, signum == SIGTERM ? "SIGTERM" : "SIGINT");
}

/* The stack stopping (compute's Shutdown sets the stop word) stops the gateway too. */
static void on_watch(uv_timer_t *t)
{
    struct gateway *m = t->data;
    /* Acquire pairs with the release store of stop in nf_stack_stop(). */
    if (atomic_load_explicit(&m->st.sync->stop, memory_order_acquire))
        shutdown_gw(m, "the stack is stopping");
}

/* The model's id for /v1/models: general.name, else the file's base name without .nft. */
static void model_id(struct gateway *m)
{
    const char *name = NULL;
    if (nf_gguf_get_str(nf_nft_gguf(m->f), "general.name", &name) == 0 && name && *name) {
        snprintf(m->g.model_id, sizeof(m->g.model_id), "%s", name);
        return;
    }
    const char *slash = strrchr(m->o.model, '/');
    snprintf(m->g.model_id, sizeof(m->g.model_id), "%s", slash ? slash + 1 : m->o.model);
    char *dot = strrchr(m->g.model_id, '.');
    if (dot && !strcmp(dot, ".nft"))
        *dot = 0;
}

static int start(struct gateway *m, char *err, size_t errlen)
{
    int rc = nf_nft_open(&m->f, m->o.model, false, err, errlen);
    if (rc < 0)
        return rc;
    model_id(m);
    m->g.gguf = nf_nft_gguf(m->f);
    const char *tmpl = NULL;
    if (m->chat_template) {
        m->g.chat_template = m->chat_template;
    } else if (nf_gguf_get_str(nf_nft_gguf(m->f), "tokenizer.chat_template", &tmpl) == 0 && tmpl) {
        m->g.chat_template = tmpl;
        if (!nf_chat_detect(tmpl))
            nf_log(NF_LOG_WARN,
                   "the model's chat template is not one NanoFlow knows: /v1/chat/completions "
                   "will refuse requests; restart with --chat-template NAME (%s)",
                   nf_chat_names());
    } else {
        m->g.chat_template = "chatml"; /* llama.cpp's server default for a model without one */
        nf_log(NF_LOG_INFO, "the model has no tokenizer.chat_template: chat uses chatml");
    }
    if ((rc = nf_daemon_attach(&m->st, m->dir, m->f, m->o.attach_timeout_s, &m->attached, err,
                               errlen)) < 0)
        return rc;
    return 0;
}

static int serve(struct gateway *m, char *err, size_t errlen)
{
    int rc = uv_loop_init(&m->loop);
    if (rc < 0)
        return nf_errf(err, errlen, rc, "uv_loop_init: %s", uv_strerror(rc));
    m->loop_init = true;
    struct gw *g = &m->g;
    g->loop = &m->loop;
    snprintf(g->dir, sizeof(g->dir), "%s", m->dir);
    g->st = &m->st;
    g->api_key = m->key_file ? m->key : NULL;
    g->max_body = m->max_body ? m->max_body : GW_MAX_BODY_DEFAULT;
    g->max_conns = m->max_conns ? (int)m->max_conns : GW_MAX_CONNS_DEFAULT;
    g->max_queue = m->max_queue ? (int)m->max_queue : GW_MAX_QUEUE_DEFAULT;
    if (!m->max_queue) /* `up --http` passes no gateway flag: the environment may set it */
        g->max_queue = (int)(env_timeout_ms("NANOFLOW_HTTP_MAX_QUEUE", g->max_queue) / 1000u);
    /* Without --max-running: as many as compute runs at once (--parallel, which `up` passes
     * every daemon), so HTTP requests join its batch. */
    g->max_running = m->max_running  ? (int)m->max_running
                     : m->o.parallel ? (int)m->o.parallel
                                     : GW_MAX_RUNNING_DEFAULT;
    if (!m->max_running)
        g->max_running = (int)(env_timeout_ms("NANOFLOW_HTTP_MAX_RUNNING", g->max_running) / 1000u);
    g->header_timeout_ms = env_timeout_ms("NANOFLOW_HTTP_HEADER_TIMEOUT_S", GW_HEADER_TIMEOUT_S);
    g->idle_timeout_ms = env_timeout_ms("NANOFLOW_HTTP_IDLE_TIMEOUT_S", GW_IDLE_TIMEOUT_S);
    g->started_at = (long long)time(NULL);
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur != RLIM_INFINITY &&
        (rlim_t)g->max_conns + 64 > rl.rlim_cur) {
        /* Every refusal is ours, with a reason: accept never fails for want of descriptors. */
        g->max_conns = rl.rlim_cur > 128 ? (int)(rl.rlim_cur - 64) : 64;
        nf_log(NF_LOG_INFO, "serving at most %d HTTP connections (RLIMIT_NOFILE %llu)",
               g->max_conns, (unsigned long long)rl.rlim_cur);
    }
    if ((rc = gw_http_start(g, m->http, err, errlen)) < 0)
        return rc;
    char sock[PATH_MAX + 64];
    nf_rundir_path(m->dir, NF_ROLE_GATEWAY, "sock", sock, sizeof(sock));
    rc = nf_server_start(&m->srv, &m->loop, sock, NF_ROLE_GATEWAY, on_request, NULL, m);
    if (rc < 0) {
        m->srv = NULL;
        gw_http_stop(g);
        return nf_errf(err, errlen, rc, "cannot serve %s: %s", sock, nf_strerror(rc));
    }
    uv_signal_init(&m->loop, &m->sigterm);
    uv_signal_init(&m->loop, &m->sigint);
    m->sigterm.data = m->sigint.data = m;
    uv_signal_start(&m->sigterm, on_signal, SIGTERM);
    uv_signal_start(&m->sigint, on_signal, SIGINT);
    uv_timer_init(&m->loop, &m->watch);
    m->watch.data = m;
    uv_timer_start(&m->watch, on_watch, NF_LIVE_CHECK_MS, NF_LIVE_CHECK_MS);
    nf_server_set_health(m->srv, NANOFLOW__HEALTH__STATE__READY);
    nf_log(NF_LOG_INFO, "serving http://%s/ for %s (pid %d)%s", m->http, g->model_id, (int)getpid(),
           g->api_key ? ", API key required" : "");
    uv_run(&m->loop, UV_RUN_DEFAULT);
    return 0;
}

static void close_handle(uv_handle_t *h, void *arg)
{
    (void)arg;
    if (!uv_is_closing(h))
        uv_close(h, NULL);
}

static void cleanup(struct gateway *m)
{
    if (m->loop_init) {
        if (m->srv)
            nf_server_stop(m->srv);
        uv_walk(&m->loop, close_handle, NULL);
        uv_run(&m->loop, UV_RUN_DEFAULT);
        uv_loop_close(&m->loop);
    }
    if (m->attached)
        nf_stack_detach(&m->st);
    nf_vocab_free(m->g.vocab);
    if (m->f)
        nf_nft_close(m->f);
}

int main(int argc, char **argv)
{
    static struct gateway m;
    char err[PATH_MAX + 512] = "";
    const struct nf_daemon_argspec spec = {.role = NF_ROLE_GATEWAY,
                                           .attaches = true,
                                           .usage = usage,
                                           .own = own_opts,
                                           .parse = parse_own,
                                           .ud = &m};
    int rc = nf_daemon_args_parse(argc, argv, &spec, &m.o);
    if (rc)
        return rc == 1 ? 0 : 2;
    if (!m.http) {
        fprintf(stderr, "nanoflow-gateway: --http HOST:PORT is required (see --help)\n");
        return 2;
    }
    if (m.key_file && read_key(&m, err, sizeof(err)) < 0) {
        fprintf(stderr, "nanoflow-gateway: %s\n", err);
        return 2;
    }
    if (nf_daemon_begin(NF_ROLE_GATEWAY, m.o.run_dir, m.o.foreground, m.o.level, NULL, NULL, m.dir,
                        sizeof(m.dir)))
        return 1;
    rc = start(&m, err, sizeof(err));
    if (rc == 0)
        rc = serve(&m, err, sizeof(err));
    if (rc < 0)
        nf_log(NF_LOG_ERROR, "%s", err[0] ? err : nf_strerror(rc));
    cleanup(&m);
    nf_daemon_end(NF_ROLE_GATEWAY, m.dir, rc);
    return rc == 0 ? 0 : 1;
}
