/* api.c - the gateway's routes and the OpenAI request bodies checked field by field: every
 * wrong type or value is a 400 naming the field (error.param), every field the stack cannot
 * honour a 400 saying so, never a silent default. */
#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "chat.h"
#include "gateway.h"
#include "nf_err.h"

/* The longest generation a request may ask (as compute's Generate.n_predict). */
#define GW_MAX_TOKENS 1000000
/* OpenAI's default max_tokens of /v1/completions; /v1/chat/completions has none (compute's
 * per-request limit then applies). */
#define GW_COMPLETIONS_DEFAULT_TOKENS 16

/* A 400 for field param (printf-style message); returns -1 for the caller to return. */
static int bad(struct gw_conn *c, const char *param, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static int bad(struct gw_conn *c, const char *param, const char *fmt, ...)
{
    char msg[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    gw_http_error(c, 400, "invalid_request_error", param, "invalid_value", "%s", msg);
    return -1;
}

static const char *type_name(const json_t *v)
{
    switch (json_typeof(v)) {
    case JSON_OBJECT: return "an object";
    case JSON_ARRAY: return "an array";
    case JSON_STRING: return "a string";
    case JSON_INTEGER: return "an integer";
    case JSON_REAL: return "a number";
    case JSON_TRUE:
    case JSON_FALSE: return "a boolean";
    default: return "null";
    }
}

/* Optional number key in [lo, hi]: 1 when given (into *out), 0 when absent or null, -1 after a
 * 400. */
static int get_number(struct gw_conn *c, json_t *o, const char *key, double lo, double hi,
                      double *out)
{
    json_t *v = json_object_get(o, key);
    if (!v || json_is_null(v))
        return 0;
    if (!json_is_number(v))
        return bad(c, key, "%s must be a number, got %s", key, type_name(v));
    double d = json_number_value(v);
    if (!(d >= lo && d <= hi))
        return bad(c, key, "%s %g is out of range, expected %g..%g", key, d, lo, hi);
    *out = d;
    return 1;
}

static int get_int(struct gw_conn *c, json_t *o, const char *key, long long lo, long long hi,
                   long long *out)
{
    json_t *v = json_object_get(o, key);
    if (!v || json_is_null(v))
        return 0;
    if (!json_is_integer(v))
        return bad(c, key, "%s must be an integer, got %s", key, type_name(v));
    long long x = json_integer_value(v);
    if (x < lo || x > hi)
        return bad(c, key, "%s %lld is out of range, expected %lld..%lld", key, x, lo, hi);
    *out = x;
    return 1;
}

static int get_bool(struct gw_conn *c, json_t *o, const char *key, bool *out)
{
    json_t *v = json_object_get(o, key);
    if (!v || json_is_null(v))
        return 0;
    if (!json_is_boolean(v))
        return bad(c, key, "%s must be a boolean, got %s", key, type_name(v));
    *out = json_is_true(v);
    return 1;
}

/* Fields the stack cannot honour: refused when set to anything but their no-op value. */
static int refuse_unsupported(struct gw_conn *c, json_t *o, bool chat)
{
    long long n = 1;
    int r;
    if ((r = get_int(c, o, "n", 1, 128, &n)) < 0)
        return -1;
    if (n != 1)
        return bad(c, "n", "n %lld is not supported: this server returns 1 choice (n = 1)", n);
    if (!chat) {
        long long best = 1;
        if (get_int(c, o, "best_of", 1, 128, &best) < 0)
            return -1;
        if (best != 1)
            return bad(c, "best_of", "best_of %lld is not supported (only 1)", best);
        bool echo = false;
        if (get_bool(c, o, "echo", &echo) < 0)
            return -1;
        if (echo)
            return bad(c, "echo", "echo is not supported");
        json_t *sfx = json_object_get(o, "suffix");
        if (sfx && !json_is_null(sfx) && !(json_is_string(sfx) && !json_string_length(sfx)))
            return bad(c, "suffix", "suffix is not supported");
    }
    json_t *lb = json_object_get(o, "logit_bias");
    if (lb && !json_is_null(lb) && !(json_is_object(lb) && json_object_size(lb) == 0))
        return bad(c, "logit_bias", "logit_bias is not supported");
    static const char *const tools[] = {"tools", "functions", "tool_choice", "function_call"};
    for (int i = 0; chat && i < 4; i++) {
        json_t *t = json_object_get(o, tools[i]);
        if (t && !json_is_null(t) && !(json_is_array(t) && json_array_size(t) == 0) &&
            !(json_is_string(t) && !strcmp(json_string_value(t), "none")))
            return bad(c, tools[i], "%s is not supported (no tool calling)", tools[i]);
    }
    json_t *rf = json_object_get(o, "response_format");
    if (chat && rf && !json_is_null(rf)) {
        json_t *ty = json_is_object(rf) ? json_object_get(rf, "type") : NULL;
        if (!json_is_string(ty) || strcmp(json_string_value(ty), "text"))
            return bad(c, "response_format",
                       "response_format other than {\"type\":\"text\"} is not supported");
    }
    return 0;
}

/* logprobs, as OpenAI has them: chat takes logprobs (boolean) and top_logprobs (0..20, which
 * needs logprobs true); completions take logprobs N (0..20 alternatives, null: none). */
static int get_logprobs(struct gw_conn *c, json_t *o, bool chat, struct gw_gen_req *q)
{
    long long n = 0;
    int r;
    if (!chat) {
        json_t *tl = json_object_get(o, "top_logprobs");
        if (tl && !json_is_null(tl))
            return bad(c, "top_logprobs",
                       "top_logprobs is a chat field: /v1/completions takes logprobs N");
        if ((r = get_int(c, o, "logprobs", 0, GW_MAX_TOP_LOGPROBS, &n)) < 0)
            return -1;
        q->logprobs = r > 0;
        q->top_logprobs = (int)n;
        return 0;
    }
    if (get_bool(c, o, "logprobs", &q->logprobs) < 0)
        return -1;
    if ((r = get_int(c, o, "top_logprobs", 0, GW_MAX_TOP_LOGPROBS, &n)) < 0)
        return -1;
    if (n > 0 && !q->logprobs)
        return bad(c, "top_logprobs", "top_logprobs needs logprobs: true");
    q->top_logprobs = (int)n;
    return 0;
}

/* stop: a string or an array of up to GW_MAX_STOP strings, each 1..GW_MAX_STOP_LEN bytes. */
static int get_stop(struct gw_conn *c, json_t *o, struct gw_gen_req *q)
{
    json_t *v = json_object_get(o, "stop");
    if (!v || json_is_null(v))
        return 0;
    json_t *one[1] = {v};
    size_t n = 1;
    if (json_is_array(v)) {
        n = json_array_size(v);
        if (n > GW_MAX_STOP)
            return bad(c, "stop", "stop has %zu strings, expected at most %d", n, GW_MAX_STOP);
    } else if (!json_is_string(v)) {
        return bad(c, "stop", "stop must be a string or an array of strings, got %s", type_name(v));
    }
    for (size_t i = 0; i < n; i++) {
        json_t *s = json_is_array(v) ? json_array_get(v, i) : one[0];
        if (!json_is_string(s))
            return bad(c, "stop", "stop[%zu] must be a string, got %s", i, type_name(s));
        size_t len = json_string_length(s);
        if (len == 0 || len > GW_MAX_STOP_LEN)
            return bad(c, "stop", "stop[%zu] has %zu bytes, expected 1..%d", i, len,
                       GW_MAX_STOP_LEN);
        q->stop[q->n_stop] = malloc(len + 1);
        if (!q->stop[q->n_stop])
            return bad(c, "stop", "out of memory");
        memcpy(q->stop[q->n_stop], json_string_value(s), len + 1);
        q->stop_len[q->n_stop++] = len;
    }
    return 0;
}

/* The fields both endpoints share. */
static int get_common(struct gw_conn *c, json_t *o, bool chat, struct gw_gen_req *q)
{
    json_t *m = json_object_get(o, "model");
    if (m && !json_is_null(m) && !json_is_string(m))
        return bad(c, "model", "model must be a string, got %s", type_name(m));
    if (refuse_unsupported(c, o, chat) < 0)
        return -1;
    if (get_bool(c, o, "stream", &q->stream) < 0)
        return -1;
    json_t *so = json_object_get(o, "stream_options");
    if (so && !json_is_null(so)) {
        if (!json_is_object(so))
            return bad(c, "stream_options", "stream_options must be an object, got %s",
                       type_name(so));
        json_t *iu = json_object_get(so, "include_usage");
        if (iu && !json_is_null(iu) && !json_is_boolean(iu))
            return bad(c, "stream_options.include_usage",
                       "stream_options.include_usage must be a boolean, got %s", type_name(iu));
        q->include_usage = iu && json_is_true(iu);
    }
    long long mt = chat ? 0 : GW_COMPLETIONS_DEFAULT_TOKENS;
    const char *mt_key = "max_tokens";
    if (chat && json_object_get(o, "max_completion_tokens") &&
        !json_is_null(json_object_get(o, "max_completion_tokens")))
        mt_key = "max_completion_tokens";
    if (get_int(c, o, mt_key, 1, GW_MAX_TOKENS, &mt) < 0)
        return -1;
    q->max_tokens = (int)mt;
    double d;
    int r;
    if ((r = get_number(c, o, "temperature", 0, 2, &d)) < 0)
        return -1;
    q->has_temp = r;
    q->temp = (float)d;
    if ((r = get_number(c, o, "top_p", 0, 1, &d)) < 0)
        return -1;
    q->has_top_p = r;
    q->top_p = (float)d;
    long long seed;
    if ((r = get_int(c, o, "seed", INT64_MIN, INT64_MAX, &seed)) < 0)
        return -1;
    q->has_seed = r;
    q->seed = (uint64_t)seed;
    /* As llama.cpp's server: over the sampler's window (the last 64 tokens, prompt included). */
    d = 0;
    if (get_number(c, o, "presence_penalty", -2, 2, &d) < 0)
        return -1;
    q->presence_penalty = (float)d;
    d = 0;
    if (get_number(c, o, "frequency_penalty", -2, 2, &d) < 0)
        return -1;
    q->frequency_penalty = (float)d;
    if (get_logprobs(c, o, chat, q) < 0)
        return -1;
    return get_stop(c, o, q);
}

static int get_prompt(struct gw_conn *c, json_t *o, struct gw_gen_req *q)
{
    json_t *p = json_object_get(o, "prompt");
    if (!p)
        return bad(c, "prompt", "prompt is required");
    if (json_is_array(p)) {
        if (json_array_size(p) != 1 || !json_is_string(json_array_get(p, 0)))
            return bad(c, "prompt",
                       "prompt must be a string or an array of one string (token arrays and "
                       "several prompts are not supported)");
        p = json_array_get(p, 0);
    }
    if (!json_is_string(p))
        return bad(c, "prompt", "prompt must be a string, got %s", type_name(p));
    q->prompt_len = json_string_length(p);
    q->prompt = malloc(q->prompt_len + 1);
    if (!q->prompt)
        return bad(c, "prompt", "out of memory");
    memcpy(q->prompt, json_string_value(p), q->prompt_len + 1);
    return 0;
}

/* A message's content: a string, or an array of {"type":"text","text":...} parts joined. Returns
 * a malloc'd string, or NULL after a 400. */
static char *message_content(struct gw_conn *c, json_t *v, size_t i)
{
    char param[64];
    snprintf(param, sizeof(param), "messages[%zu].content", i);
    if (json_is_string(v))
        return strdup(json_string_value(v));
    if (!json_is_array(v)) {
        bad(c, param, "%s must be a string or an array of text parts, got %s", param,
            v ? type_name(v) : "nothing");
        return NULL;
    }
    size_t total = 0;
    for (size_t k = 0; k < json_array_size(v); k++) {
        json_t *part = json_array_get(v, k);
        json_t *ty = json_object_get(part, "type"), *tx = json_object_get(part, "text");
        if (!json_is_string(ty) || strcmp(json_string_value(ty), "text") || !json_is_string(tx)) {
            bad(c, param,
                "%s[%zu] must be {\"type\":\"text\",\"text\":STRING} (only text is "
                "supported)",
                param, k);
            return NULL;
        }
        total += json_string_length(tx);
    }
    char *s = malloc(total + 1), *p = s;
    if (!s) {
        bad(c, param, "out of memory");
        return NULL;
    }
    for (size_t k = 0; k < json_array_size(v); k++) {
        json_t *tx = json_object_get(json_array_get(v, k), "text");
        memcpy(p, json_string_value(tx), json_string_length(tx));
        p += json_string_length(tx);
    }
    *p = 0;
    return s;
}

/* messages rendered with the model's chat template into q->prompt. */
static int get_messages(struct gw *g, struct gw_conn *c, json_t *o, struct gw_gen_req *q,
                        const char *tmpl)
{
    json_t *ms = json_object_get(o, "messages");
    if (!json_is_array(ms) || json_array_size(ms) == 0)
        return bad(c, "messages", "messages must be a non-empty array of {role, content}");
    size_t n = json_array_size(ms);
    if (n > 100000)
        return bad(c, "messages", "messages has %zu entries, expected at most 100000", n);
    struct nf_chat_msg *msgs = calloc(n, sizeof(*msgs));
    char **contents = calloc(n, sizeof(*contents));
    int rc = -1;
    if (!msgs || !contents) {
        bad(c, "messages", "out of memory");
        goto out;
    }
    for (size_t i = 0; i < n; i++) {
        json_t *m = json_array_get(ms, i);
        char param[64];
        snprintf(param, sizeof(param), "messages[%zu]", i);
        if (!json_is_object(m)) {
            bad(c, param, "%s must be an object, got %s", param, type_name(m));
            goto out;
        }
        json_t *role = json_object_get(m, "role");
        snprintf(param, sizeof(param), "messages[%zu].role", i);
        const char *r = json_is_string(role) ? json_string_value(role) : NULL;
        if (!r || (strcmp(r, "system") && strcmp(r, "user") && strcmp(r, "assistant") &&
                   strcmp(r, "developer"))) {
            bad(c, param, "%s must be \"system\", \"developer\", \"user\" or \"assistant\"", param);
            goto out;
        }
        msgs[i].role = strcmp(r, "developer") ? r : "system";
        if (!(contents[i] = message_content(c, json_object_get(m, "content"), i)))
            goto out;
        msgs[i].content = contents[i];
    }
    char err[512];
    int r = nf_chat_render(tmpl, msgs, (int)n, true, NULL, NULL, &q->prompt, err, sizeof(err));
    if (r < 0) {
        gw_http_error(c, 501, "server_error", NULL, "chat_template", "%s", err);
        goto out;
    }
    q->prompt_len = strlen(q->prompt);
    rc = 0;
    (void)g;
out:
    for (size_t i = 0; contents && i < n; i++)
        free(contents[i]);
    free(contents);
    free(msgs);
    return rc;
}

/* Parses the body as one JSON object, or answers 400. */
static json_t *parse_body(struct gw_conn *c, const struct gw_request *r)
{
    json_error_t e;
    json_t *o = json_loadb(r->body, r->body_len, JSON_REJECT_DUPLICATES, &e);
    if (!o) {
        gw_http_error(c, 400, "invalid_request_error", NULL, "invalid_json",
                      "invalid JSON body at line %d column %d: %s", e.line, e.column, e.text);
        return NULL;
    }
    if (!json_is_object(o)) {
        gw_http_error(c, 400, "invalid_request_error", NULL, "invalid_json",
                      "the body must be a JSON object, got %s", type_name(o));
        json_decref(o);
        return NULL;
    }
    return o;
}

static void completion(struct gw *g, struct gw_conn *c, const struct gw_request *r, bool chat)
{
    json_t *o = parse_body(c, r);
    if (!o)
        return;
    struct gw_gen_req q = {.chat = chat};
    int rc = get_common(c, o, chat, &q);
    if (rc == 0)
        rc = chat ? get_messages(g, c, o, &q, g->chat_template) : get_prompt(c, o, &q);
    json_decref(o);
    if (rc < 0) {
        gw_gen_req_free(&q);
        return;
    }
    /* Who the fair queue serves in turn: the API key, else the peer address (fair.c). */
    char client[GW_CLIENT_ID_MAX];
    if (r->auth && !strncasecmp(r->auth, "Bearer ", 7))
        snprintf(client, sizeof(client), "key %s", r->auth + 7);
    else
        snprintf(client, sizeof(client), "addr %s", r->peer ? r->peer : "?");
    gw_gen_start(g, c, &q, client);
}

static void models(struct gw *g, struct gw_conn *c)
{
    json_t *o =
        json_pack("{s:s,s:[{s:s,s:s,s:I,s:s}]}", "object", "list", "data", "id", g->model_id,
                  "object", "model", "created", (json_int_t)g->started_at, "owned_by", "nanoflow");
    char *s = o ? json_dumps(o, JSON_COMPACT) : NULL;
    json_decref(o);
    if (s)
        gw_http_respond(c, 200, "application/json", s, strlen(s), NULL);
    else
        gw_http_error(c, 500, "server_error", NULL, NULL, "out of memory");
    free(s);
}

/* Constant-time comparison of the bearer token with the key. */
static bool auth_ok(const struct gw *g, const char *auth)
{
    if (!g->api_key)
        return true;
    if (!auth || strncasecmp(auth, "Bearer ", 7))
        return false;
    const char *tok = auth + 7;
    size_t a = strlen(tok), b = strlen(g->api_key);
    unsigned char diff = a != b;
    for (size_t i = 0; i < a && i < b; i++)
        diff |= (unsigned char)(tok[i] ^ g->api_key[i]);
    return diff == 0;
}

struct route {
    const char *path;
    enum http_method method;
    bool open; /* served without the API key */
    int id;
};
enum { R_COMPLETIONS, R_CHAT, R_MODELS, R_HEALTH, R_METRICS, R_PAGE };
static const struct route routes[] = {
    {"/v1/completions", HTTP_POST, false, R_COMPLETIONS},
    {"/v1/chat/completions", HTTP_POST, false, R_CHAT},
    {"/v1/models", HTTP_GET, false, R_MODELS},
    {"/health", HTTP_GET, true, R_HEALTH},
    {"/metrics", HTTP_GET, false, R_METRICS},
    {"/", HTTP_GET, true, R_PAGE},
};

/* The page's scripts and styles are inline and it fetches only this server. */
#define GW_PAGE_HEADERS                                                                   \
    "Cache-Control: no-cache\r\nX-Content-Type-Options: nosniff\r\n"                      \
    "Content-Security-Policy: default-src 'self'; script-src 'unsafe-inline'; style-src " \
    "'unsafe-inline'\r\n"

void gw_api_dispatch(struct gw *g, struct gw_conn *c, const struct gw_request *r)
{
    const struct route *rt = NULL;
    for (size_t i = 0; i < sizeof(routes) / sizeof(routes[0]); i++)
        if (!strcmp(r->path, routes[i].path))
            rt = &routes[i];
    if (!rt) {
        gw_http_error(c, 404, "invalid_request_error", NULL, "not_found", "no route %s %.200s",
                      http_method_str(r->method), r->path);
        return;
    }
    if (r->method != rt->method) {
        char allow[64];
        snprintf(allow, sizeof(allow), "Allow: %s\r\n", http_method_str(rt->method));
        char *s = NULL;
        char msg[160];
        snprintf(msg, sizeof(msg), "%s takes %s, not %s", rt->path, http_method_str(rt->method),
                 http_method_str(r->method));
        s = gw_api_error_json(msg, "invalid_request_error", NULL, "method_not_allowed");
        gw_http_respond(c, 405, "application/json", s, s ? strlen(s) : 0, allow);
        free(s);
        return;
    }
    if (!rt->open && !auth_ok(g, r->auth)) {
        gw_http_error(c, 401, "invalid_request_error", NULL, "invalid_api_key",
                      "missing or wrong API key (send Authorization: Bearer KEY)");
        return;
    }
    switch (rt->id) {
    case R_COMPLETIONS: completion(g, c, r, false); break;
    case R_CHAT: completion(g, c, r, true); break;
    case R_MODELS: models(g, c); break;
    case R_HEALTH: gw_health(g, c); break;
    case R_METRICS: gw_metrics(g, c); break;
    case R_PAGE:
        gw_http_respond(c, 200, "text/html; charset=utf-8", (const char *)gw_page_html,
                        gw_page_html_len, GW_PAGE_HEADERS);
        break;
    default: gw_http_error(c, 404, "invalid_request_error", NULL, "not_found", "no route");
    }
}
