/* gen.c - one OpenAI completion through the stack: a Generate to compute over its own control
 * connection, TokenEvents turned into text (stop strings matched across token boundaries, a
 * UTF-8 character never split), and the reply as one JSON object or as Server-Sent Events.
 *
 * A generation owns its upstream connection and lives until compute's GenerateDone (or Error, or
 * the connection's end). A stop string, or a client that goes away, sends Cancel: compute stops
 * before its next token (the engine checks the flag before each layer). */
#include <errno.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <time.h>

#include "gateway.h"
#include "nf_err.h"
#include "nf_time.h"
#include "sampler.h"

struct gw_gen {
    struct gw *g;
    struct gw_conn *c; /* NULL once the client is gone */
    struct gw_up *up;
    struct gw_gen_req q;
    uint64_t req_id;
    char id[48];
    long long created;
    char *text;            /* generated text not yet sent (stream) or all of it (whole reply) */
    size_t len, cap, sent; /* sent: bytes of text already streamed (stream only: 0 after compact) */
    int n_tokens;          /* tokens taken into text (those after a stop are not counted) */
    bool stopped;          /* a stop string matched: text ends before it, Cancel sent */
    bool finished;         /* the reply is complete (or abandoned) */
    struct gw_wait w;      /* its place in the fair queue until it runs */
    bool running;          /* forwarded to compute (counted in g->n_running) */
    double wait_s;         /* seconds it waited in the fair queue */
    json_t *lp;            /* with logprobs: the entries of the tokens not yet sent (gw_lp_token) */
    size_t lp_off;         /* characters before them (completions' text_offset) */
};

void gw_gen_req_free(struct gw_gen_req *q)
{
    free(q->prompt);
    for (int i = 0; i < q->n_stop; i++)
        free(q->stop[i]);
    memset(q, 0, sizeof(*q));
}

static void gen_free(struct gw_gen *x)
{
    x->g->n_gens--;
    if (x->running)
        x->g->n_running--;
    gw_fair_done(x->g, &x->w);
    gw_gen_req_free(&x->q);
    json_decref(x->lp);
    free(x->text);
    free(x);
}

static int text_add(struct gw_gen *x, const void *p, size_t n)
{
    if (x->len + n + 1 > x->cap) {
        size_t cap = x->cap ? x->cap * 2 : 1024;
        while (cap < x->len + n + 1)
            cap *= 2;
        char *t = realloc(x->text, cap);
        if (!t)
            return -ENOMEM;
        x->text = t;
        x->cap = cap;
    }
    if (n) /* an empty piece's p may be NULL, which memcpy must not see */
        memcpy(x->text + x->len, p, n);
    x->len += n;
    x->text[x->len] = 0;
    return 0;
}

/* Length of the longest prefix of s[0..n) that ends on a whole UTF-8 character (an incomplete
 * last character is held back; invalid bytes count as whole, to be replaced). */
static size_t utf8_whole(const char *s, size_t n)
{
    size_t i = n, back = 0;
    while (i > 0 && back < 4 && ((unsigned char)s[i - 1] & 0xC0) == 0x80) {
        i--;
        back++;
    }
    if (i == 0)
        return n;
    unsigned char lead = (unsigned char)s[i - 1];
    size_t need = lead >= 0xF0 && lead < 0xF8 ? 4 : lead >= 0xE0 ? 3 : lead >= 0xC0 ? 2 : 1;
    if (need > 1 && back + 1 < need)
        return i - 1;
    return n;
}

/* The UTF-8 character at s[0..n): its length (1..4) when valid, else minus the length of its
 * "maximal subpart" (1..3: the bytes that begin a well-formed sequence, which one U+FFFD
 * replaces, as Unicode recommends and browsers and Python do). */
static int utf8_char(const unsigned char *s, size_t n)
{
    const unsigned char b = s[0];
    if (b < 0x80)
        return 1;
    int len = b >= 0xC2 && b <= 0xDF   ? 2
              : b >= 0xE0 && b <= 0xEF ? 3
              : b >= 0xF0 && b <= 0xF4 ? 4
                                       : 0;
    if (len == 0)
        return -1; /* a continuation byte, C0, C1 or F5..FF: never a lead */
    /* The second byte's range excludes overlong forms, surrogates and code points past U+10FFFF. */
    const unsigned char lo = b == 0xE0 ? 0xA0 : b == 0xF0 ? 0x90 : 0x80;
    const unsigned char hi = b == 0xED ? 0x9F : b == 0xF4 ? 0x8F : 0xBF;
    for (int t = 1; t < len; t++) {
        if ((size_t)t >= n)
            return -t;
        const unsigned char c = s[t];
        if (t == 1 ? c < lo || c > hi : (c & 0xC0) != 0x80)
            return -t;
    }
    return len;
}

json_t *gw_json_text(const char *s, size_t n)
{
    json_t *j = json_stringn(s, n);
    if (j)
        return j;
    char *o = malloc(n * 3 + 1);
    if (!o)
        return NULL;
    size_t k = 0;
    for (size_t i = 0; i < n;) {
        const int len = utf8_char((const unsigned char *)s + i, n - i);
        if (len > 0) {
            memcpy(o + k, s + i, (size_t)len);
            k += (size_t)len;
            i += (size_t)len;
        } else {
            memcpy(o + k, "\xEF\xBF\xBD", 3);
            k += 3;
            i += (size_t)-len;
        }
    }
    j = json_stringn(o, k);
    free(o);
    return j;
}

/* Searches text from `from` for the earliest stop string; returns its offset or -1. */
static long find_stop(const struct gw_gen *x, size_t from)
{
    long best = -1;
    for (int i = 0; i < x->q.n_stop; i++) {
        const char *s = x->q.stop[i];
        size_t sl = x->q.stop_len[i];
        for (size_t p = from; p + sl <= x->len; p++)
            if (!memcmp(x->text + p, s, sl)) {
                if (best < 0 || (long)p < best)
                    best = (long)p;
                break;
            }
    }
    return best;
}

/* Bytes at the end of text that could begin a stop string (held back until decided). */
static size_t stop_hold(const struct gw_gen *x)
{
    size_t hold = 0;
    for (int i = 0; i < x->q.n_stop; i++) {
        size_t sl = x->q.stop_len[i];
        for (size_t k = sl - 1; k > hold; k--)
            if (k <= x->len && !memcmp(x->text + x->len - k, x->q.stop[i], k)) {
                hold = k;
                break;
            }
    }
    return hold;
}

static const char *object_name(const struct gw_gen *x, bool chunk)
{
    if (x->q.chat)
        return chunk ? "chat.completion.chunk" : "chat.completion";
    return "text_completion";
}

/* The logprobs of the tokens not yet sent, for a choice (takes them; x->lp starts again empty):
 * NULL (JSON null) when they were not asked, or when there are none and !always. */
static json_t *take_lp(struct gw_gen *x, bool always)
{
    if (!x->lp || (!always && json_array_size(x->lp) == 0))
        return NULL;
    json_t *r = gw_lp_render(x->lp, x->q.chat, &x->lp_off);
    x->lp = json_array();
    return r;
}

/* One choice with text t (NULL: none), logprobs lp (NULL: null) and finish reason (NULL: null);
 * takes t and lp. */
static json_t *choice(const struct gw_gen *x, json_t *t, json_t *lp, const char *finish, bool first)
{
    json_t *ch = json_object();
    json_object_set_new(ch, "index", json_integer(0));
    if (x->q.chat) {
        json_t *m = json_object();
        if (first || !x->q.stream)
            json_object_set_new(m, "role", json_string("assistant"));
        if (t)
            json_object_set_new(m, "content", t);
        json_object_set_new(ch, x->q.stream ? "delta" : "message", m);
    } else {
        json_object_set_new(ch, "text", t ? t : json_string(""));
    }
    json_object_set_new(ch, "logprobs", lp ? lp : json_null());
    json_object_set_new(ch, "finish_reason", finish ? json_string(finish) : json_null());
    return ch;
}

static json_t *envelope(const struct gw_gen *x, json_t *choices, bool chunk)
{
    json_t *o = json_object();
    json_object_set_new(o, "id", json_string(x->id));
    json_object_set_new(o, "object", json_string(object_name(x, chunk)));
    json_object_set_new(o, "created", json_integer(x->created));
    json_object_set_new(o, "model", json_string(x->g->model_id));
    json_object_set_new(o, "system_fingerprint", json_string("nanoflow-" NF_VERSION));
    json_object_set_new(o, "choices", choices);
    return o;
}

static json_t *usage(const struct gw_gen *x, int n_prompt)
{
    return json_pack("{s:i,s:i,s:i}", "prompt_tokens", n_prompt, "completion_tokens", x->n_tokens,
                     "total_tokens", n_prompt + x->n_tokens);
}

/* NanoFlow's own figures of a finished generation (an extension field, as llama.cpp's server
 * adds "timings"): its wait in the gateway's fair queue and compute's together and the requests
 * ahead of it (with the gateway's part apart), the prompt and decode speeds, and compute's note
 * when it ran differently from what was asked. */
static json_t *timings(const struct gw_gen *x, const Nanoflow__GenerateDone *d)
{
    json_t *t = json_pack("{s:f,s:i,s:f,s:i}", "queue_wait_s", x->wait_s + d->queue_wait_s,
                          "queued_ahead", (int)(x->w.ahead + d->queued_ahead), "gateway_wait_s",
                          x->wait_s, "gateway_ahead", (int)x->w.ahead);
    if (d->timings) {
        json_object_set_new(t, "prompt_tok_s", json_real(d->timings->prompt_tok_s));
        json_object_set_new(t, "decode_tok_s", json_real(d->timings->decode_tok_s));
    }
    if (d->note && *d->note)
        json_object_set_new(t, "note", json_string(d->note));
    return t;
}

/* Sends o as one event and frees it. A write that fails closes the connection, which detaches
 * x (x->c becomes NULL): every later event is dropped here. */
static int send_event(struct gw_gen *x, json_t *o)
{
    if (!x->c) {
        json_decref(o);
        return -EPIPE;
    }
    char *s = json_dumps(o, JSON_COMPACT | JSON_REAL_PRECISION(9));
    json_decref(o);
    if (!s)
        return -ENOMEM;
    int rc = gw_http_sse_data(x->c, s, strlen(s));
    free(s);
    return rc;
}

/* Streams the text that is decided: not a possible stop-string start, whole characters. */
static void stream_flush(struct gw_gen *x, bool all)
{
    size_t end = all ? x->len : x->len - stop_hold(x);
    if (!all)
        end = x->sent + utf8_whole(x->text + x->sent, end - x->sent);
    if (end <= x->sent || !x->c)
        return;
    json_t *a = json_array();
    json_t *t = gw_json_text(x->text + x->sent, end - x->sent);
    json_array_append_new(a, choice(x, t, take_lp(x, false), NULL, false));
    send_event(x, envelope(x, a, true));
    /* Compact: what is sent is needed only as the context of a stop string across tokens. */
    size_t keep = x->len - end;
    memmove(x->text, x->text + end, keep);
    x->len = keep;
    x->sent = 0;
}

static void send_cancel(struct gw_gen *x)
{
    nf_envelope env;
    Nanoflow__Cancel m;
    nanoflow__envelope__init(&env);
    nanoflow__cancel__init(&m);
    m.target_id = x->req_id;
    env.msg_case = NANOFLOW__ENVELOPE__MSG_CANCEL;
    env.cancel = &m;
    if (x->up)
        gw_up_send(x->up, ++x->g->next_req_id, &env);
}

static void on_token(struct gw_gen *x, const Nanoflow__TokenEvent *t)
{
    if (x->stopped || !x->c)
        return;
    size_t before = x->len;
    if (text_add(x, t->piece.data, t->piece.len) < 0)
        return;
    x->n_tokens++;
    x->g->n_gen_tokens++;
    if (x->lp)
        json_array_append_new(x->lp, gw_lp_token(x->g, t, x->q.top_logprobs));
    size_t maxl = 0;
    for (int i = 0; i < x->q.n_stop; i++)
        maxl = x->q.stop_len[i] > maxl ? x->q.stop_len[i] : maxl;
    if (x->q.n_stop) {
        size_t from = before > maxl ? before - maxl + 1 : 0;
        long at = find_stop(x, from);
        if (at >= 0) {
            x->len = (size_t)at;
            x->text[x->len] = 0;
            x->stopped = true;
            send_cancel(x);
        }
    }
    if (x->q.stream)
        stream_flush(x, x->stopped);
}

static const char *finish_reason(const struct gw_gen *x, const char *stop)
{
    if (x->stopped || !strcmp(stop, "eog"))
        return "stop";
    return "length"; /* "length" (max_tokens) and "ctx" (the context is full) */
}

static void on_done(struct gw_gen *x, const Nanoflow__GenerateDone *d)
{
    if (!x->c)
        return;
    if (!strcmp(d->stop, "cancel") && !x->stopped) {
        /* Cancelled by the stack (a shutdown), not by us. */
        if (x->q.stream) {
            gw_http_sse_end(x->c);
        } else {
            gw_http_error(x->c, 503, "server_error", NULL, "cancelled",
                          "the generation was cancelled by the stack (shutting down?)");
        }
        return;
    }
    const char *fin = finish_reason(x, d->stop);
    int n_prompt = (int)d->n_prompt_ids;
    x->g->n_waited++;
    x->g->wait_s_sum += x->wait_s + d->queue_wait_s;
    if (x->q.stream) {
        stream_flush(x, true);
        json_t *a = json_array();
        json_t *t = x->q.chat ? NULL : json_string("");
        json_array_append_new(a, choice(x, t, take_lp(x, false), fin, false));
        json_t *o = envelope(x, a, true);
        json_object_set_new(o, "timings", timings(x, d));
        send_event(x, o);
        if (x->q.include_usage && x->c) {
            o = envelope(x, json_array(), true);
            json_object_set_new(o, "usage", usage(x, n_prompt));
            send_event(x, o);
        }
        if (x->c)
            gw_http_sse_end(x->c);
        return;
    }
    json_t *a = json_array();
    json_array_append_new(a, choice(x, gw_json_text(x->text, x->len), take_lp(x, true), fin, true));
    json_t *o = envelope(x, a, false);
    json_object_set_new(o, "usage", usage(x, n_prompt));
    json_object_set_new(o, "timings", timings(x, d));
    char *s = json_dumps(o, JSON_COMPACT | JSON_REAL_PRECISION(9));
    json_decref(o);
    if (s)
        gw_http_respond(x->c, 200, "application/json", s, strlen(s), NULL);
    else
        gw_http_error(x->c, 500, "server_error", NULL, NULL, "out of memory");
    free(s);
}

/* An Error from compute: a field it refused or a prompt longer than the context (400: the
 * client's to fix, as OpenAI's context_length_exceeded), else a stack that cannot serve (503). */
static void on_error(struct gw_gen *x, const Nanoflow__Error *e)
{
    if (!x->c)
        return;
    const bool ctx = e->code == NF_ECTXFULL;
    const bool client = ctx || e->code == NF_EUSAGE;
    const char *type = client ? "invalid_request_error" : "server_error";
    const char *param = ctx ? (x->q.chat ? "messages" : "prompt") : NULL;
    const char *code = ctx ? "context_length_exceeded" : NULL;
    if (x->q.stream) {
        char *s = gw_api_error_json(e->message, type, param, code);
        if (s)
            gw_http_sse_data(x->c, s, strlen(s));
        free(s);
        if (x->c)
            gw_http_sse_end(x->c);
        return;
    }
    gw_http_error(x->c, client ? 400 : 503, type, param, code, "%s", e->message);
}

static void finish(struct gw_gen *x)
{
    /* The reply went out through gw_http_respond or gw_http_sse_end, which detached us from
     * the connection (it may already carry its next request). */
    x->finished = true;
    x->c = NULL;
    if (x->up) {
        struct gw_up *u = x->up;
        x->up = NULL;
        gw_up_close(u); /* gen_free in up_close */
    }
}

static void up_msg(struct gw_up *u, nf_envelope *env, void *ud)
{
    (void)u;
    struct gw_gen *x = ud;
    if (x->finished || env->request_id != x->req_id)
        return; /* e.g. the reply to our Cancel when it came too late: nothing to do */
    switch (env->msg_case) {
    case NANOFLOW__ENVELOPE__MSG_TOKEN: on_token(x, env->token); break;
    case NANOFLOW__ENVELOPE__MSG_PROMPT_PROGRESS: break;
    case NANOFLOW__ENVELOPE__MSG_GENERATE_DONE:
        on_done(x, env->generate_done);
        finish(x);
        break;
    case NANOFLOW__ENVELOPE__MSG_ERROR:
        on_error(x, env->error);
        finish(x);
        break;
    default: break;
    }
}

static void up_close(struct gw_up *u, int status, void *ud)
{
    (void)u;
    struct gw_gen *x = ud;
    x->up = NULL;
    if (!x->finished && x->c) {
        if (x->q.stream) {
            gw_http_sse_end(x->c);
        } else {
            gw_http_error(x->c, 503, "server_error", NULL, "stack_unavailable",
                          "compute closed the connection: %s",
                          status ? nf_strerror(status) : "no reason given");
        }
    }
    struct gw *g = x->g;
    gen_free(x);
    gw_gen_pump(g); /* its place is free: the next client's turn */
}

void gw_gen_client_gone(void *ud)
{
    struct gw_gen *x = ud;
    x->c = NULL;
    if (!x->running) { /* still waiting: nothing was sent */
        gen_free(x);
        return;
    }
    if (!x->finished && !x->stopped)
        send_cancel(x); /* GenerateDone (stop "cancel") then ends it */
}

static void fill_id(struct gw_gen *x)
{
    uint64_t r = 0;
    if (getrandom(&r, sizeof(r), GRND_NONBLOCK) != sizeof(r))
        r = x->g->next_req_id ^ (uint64_t)time(NULL);
    snprintf(x->id, sizeof(x->id), "%s-%016llx", x->q.chat ? "chatcmpl" : "cmpl",
             (unsigned long long)r);
}

/* Sends x's Generate to compute (its turn in the fair queue came). On failure x is answered
 * and freed. */
static void gen_launch(struct gw_gen *x)
{
    struct gw *g = x->g;
    struct gw_conn *c = x->c;
    x->running = true;
    g->n_running++;
    x->wait_s = (double)(nf_now_ns() - x->w.t_queued_ns) * 1e-9;
    struct nf_sampler_params sp;
    nf_sampler_params_default(&sp);
    if (x->q.has_temp)
        sp.temp = x->q.temp;
    if (x->q.has_top_p)
        sp.top_p = x->q.top_p;
    if (x->q.has_seed)
        sp.seed = x->q.seed;
    else if (getrandom(&sp.seed, sizeof(sp.seed), GRND_NONBLOCK) != sizeof(sp.seed))
        sp.seed = (uint64_t)time(NULL);
    Nanoflow__SamplingParams s;
    nanoflow__sampling_params__init(&s);
    s.temp = sp.temp;
    s.top_k = sp.top_k;
    s.top_p = sp.top_p;
    s.min_p = sp.min_p;
    s.repeat_penalty = sp.repeat_penalty;
    s.repeat_last_n = sp.repeat_last_n;
    s.seed = sp.seed;
    s.presence_penalty = x->q.presence_penalty;
    s.frequency_penalty = x->q.frequency_penalty;
    Nanoflow__Generate m;
    nanoflow__generate__init(&m);
    m.prompt.data = (uint8_t *)x->q.prompt;
    m.prompt.len = x->q.prompt_len;
    m.sampling = &s;
    m.n_predict = x->q.max_tokens;
    m.logprobs = x->q.logprobs;
    m.top_logits = (uint32_t)x->q.top_logprobs;
    nf_envelope env;
    nanoflow__envelope__init(&env);
    env.msg_case = NANOFLOW__ENVELOPE__MSG_GENERATE;
    env.generate = &m;
    int rc = gw_up_open(g, NF_ROLE_COMPUTE, x->req_id, &env, up_msg, up_close, x, &x->up);
    if (rc < 0) {
        gw_http_error(c, 503, "server_error", NULL, "stack_unavailable", "cannot reach compute: %s",
                      nf_strerror(rc));
        gen_free(x);
        return;
    }
    /* The prompt is in the queued frame now. */
    free(x->q.prompt);
    x->q.prompt = NULL;
    if (x->q.stream) {
        gw_http_sse_begin(c);
        if (x->q.chat) { /* the role first, as OpenAI's first chunk */
            json_t *a = json_array();
            json_array_append_new(a, choice(x, json_string(""), NULL, NULL, true));
            send_event(x, envelope(x, a, true));
        }
    }
}

void gw_gen_pump(struct gw *g)
{
    while (!g->stopping && g->n_running < g->max_running) {
        struct gw_wait *w = gw_fair_pop(g);
        if (!w)
            return;
        gen_launch((struct gw_gen *)((char *)w - offsetof(struct gw_gen, w)));
    }
}

void gw_gen_start(struct gw *g, struct gw_conn *c, struct gw_gen_req *q, const char *client)
{
    if (g->n_gens >= g->max_queue) {
        gw_gen_req_free(q);
        g->n_queue_full++;
        gw_http_error(c, 429, "rate_limit_exceeded", NULL, "queue_full",
                      "%d generations are queued or running, the most this server takes; try "
                      "again later",
                      g->n_gens);
        return;
    }
    struct gw_gen *x = calloc(1, sizeof(*x));
    if (!x) {
        gw_gen_req_free(q);
        gw_http_error(c, 500, "server_error", NULL, NULL, "out of memory");
        return;
    }
    x->g = g;
    x->c = c;
    x->q = *q;
    memset(q, 0, sizeof(*q));
    if (x->q.logprobs) {
        char err[300];
        if (x->q.top_logprobs > 0 && gw_lp_vocab(g, err, sizeof(err)) < 0) {
            gw_gen_req_free(&x->q);
            free(x);
            gw_http_error(c, 503, "server_error", NULL, NULL, "top_logprobs: %s", err);
            return;
        }
        x->lp = json_array();
    }
    x->req_id = ++g->next_req_id;
    x->created = (long long)time(NULL);
    fill_id(x);
    g->n_gens++;
    g->n_gen_total++;
    if (gw_fair_push(g, &x->w, client) < 0) {
        gw_http_error(c, 500, "server_error", NULL, NULL, "out of memory");
        gen_free(x);
        return;
    }
    gw_http_set_job(c, gw_gen_client_gone, x);
    gw_gen_pump(g);
}
