/* http.c - the gateway's HTTP/1.1 connections: libuv TCP, http-parser, responses and
 * Server-Sent Events (chunked), and the limits that keep any client from growing our memory.
 *
 * Limits (each answered with its status, then the connection is closed):
 *   - at most g->max_conns connections (kept below RLIMIT_NOFILE): more get 503 and are closed;
 *   - the request line and headers together at most GW_MAX_HEAD bytes: 431;
 *   - a body above g->max_body: 413 (from Content-Length before any body byte is kept, or as
 *     chunked bytes arrive);
 *   - a request not whole within g->header_timeout_ms of its first byte (slow-loris): 408;
 *   - a keep-alive connection without a request for g->idle_timeout_ms: closed;
 *   - a client that leaves GW_OUT_MAX bytes of its response unread: closed (its generation is
 *     cancelled);
 *   - a connection answered with "Connection: close" is half-closed and its input dropped for
 *     at most GW_LINGER_MS (so a client still sending a refused body reads the 413).
 * One request at a time per connection: bytes a client sends while its request is answered
 * (pipelining) are kept, up to one read buffer, and parsed after the response; reading goes on
 * meanwhile so that a disconnect is seen at once and cancels the generation. */
#include <arpa/inet.h>
#include <errno.h>
#include <malloc.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "gateway.h"
#include "nf_err.h"

enum conn_phase {
    PH_IDLE,    /* no byte of a request yet */
    PH_READING, /* request line, headers or body arriving */
    PH_BUSY,    /* answered by the router: response in progress */
};

struct gw_conn {
    uv_tcp_t tcp; /* first member */
    struct gw *g;
    http_parser p;
    enum conn_phase phase;
    char *url; /* (url_len) bytes, at most GW_MAX_HEAD: allocated with a request's first byte */
    size_t url_len, head_bytes;
    char field[32]; /* the header name being read (longer names are not ours) */
    size_t field_len;
    bool field_done, want_value;       /* in a value; it is the Authorization header */
    bool want_expect, expect_continue; /* the Expect header; it asks for 100-continue */
    char auth[1024];
    char peer[INET6_ADDRSTRLEN]; /* the client's address, for the fair queue */
    size_t auth_len;
    char *body; /* (body_len) bytes of capacity body_cap, NUL-terminated */
    size_t body_len, body_cap;
    bool complete; /* on_message_complete seen */
    int refuse;    /* status to answer instead of routing (413, 431 ...) */
    char *pending; /* bytes after the request, parsed after the response */
    size_t pending_len;
    bool keep_alive, sse, closing, close_after;
    bool chunked;   /* the event stream uses chunked encoding (HTTP/1.1; 1.0 ends it by closing) */
    bool lingering; /* answered and half-closed: reading (and dropping) until EOF */
    uv_shutdown_t shut;
    size_t out_bytes;        /* written but not yet completed */
    uint64_t t_start_ms;     /* first byte of the current request */
    uint64_t last_active_ms; /* last read or completed write */
    void (*gone)(void *ud);  /* the work answering the request: told when the client goes */
    void *gone_ud;
    struct gw_conn *next;
};

struct gw_wreq {
    uv_write_t req;
    size_t len;
    bool close_after;
    char data[];
};

static char rbuf[65536]; /* the one read buffer (one loop thread) */

static void conn_parse(struct gw_conn *c, const char *data, size_t n);

/* glibc keeps a large freed body in its heap (and raises its mmap threshold after freeing
 * one): the sweep gives it back once one was freed. */
static void body_free(struct gw_conn *c)
{
    if (c->body_cap >= GW_TRIM_BYTES)
        c->g->trim = true;
    free(c->body);
    c->body = NULL;
    c->body_cap = 0;
}

static void conn_closed(uv_handle_t *h)
{
    struct gw_conn *c = (struct gw_conn *)h;
    body_free(c);
    free(c->url);
    if (++c->g->closes_since_trim >= 16) /* a burst of closes: their memory back too */
        c->g->trim = true;
    free(c->pending);
    free(c);
}

static void conn_close(struct gw_conn *c)
{
    if (c->closing)
        return;
    struct gw *g = c->g;
    c->closing = true;
    g->n_conns--;
    for (struct gw_conn **pp = &g->conns; *pp; pp = &(*pp)->next)
        if (*pp == c) {
            *pp = c->next;
            break;
        }
    if (c->gone) {
        void (*gone)(void *) = c->gone;
        c->gone = NULL;
        gone(c->gone_ud);
    }
    uv_close((uv_handle_t *)&c->tcp, conn_closed);
}

void gw_http_set_job(struct gw_conn *c, void (*gone)(void *ud), void *ud)
{
    c->gone = gone;
    c->gone_ud = ud;
}

static void shutdown_done(uv_shutdown_t *req, int status)
{
    (void)req;
    (void)status; /* the sweep or the client's EOF closes the connection */
}

static void write_done(uv_write_t *req, int status)
{
    struct gw_wreq *w = (struct gw_wreq *)req;
    struct gw_conn *c = (struct gw_conn *)req->handle;
    c->out_bytes -= w->len;
    bool close_after = w->close_after;
    free(w);
    if (c->closing)
        return;
    c->last_active_ms = uv_now(c->g->loop);
    if (status < 0) {
        conn_close(c);
        return;
    }
    if (close_after) {
        /* Lingering close: the client may still be sending the body we refused (413). Closing
         * now would reset the connection and lose the answer, so the write side is shut down
         * and what arrives is dropped until EOF or GW_LINGER_MS (the sweep). */
        c->lingering = true;
        if (uv_shutdown(&c->shut, (uv_stream_t *)&c->tcp, shutdown_done) < 0)
            conn_close(c);
    }
}

/* Writes n bytes (copied). Returns 0 or -EPIPE when the connection is gone or dropped. */
static int conn_write(struct gw_conn *c, const char *data, size_t n, bool close_after)
{
    if (c->closing)
        return -EPIPE;
    if (c->out_bytes + n > GW_OUT_MAX) {
        nf_log(NF_LOG_WARN, "http: a client left %zu bytes unread; closing it", c->out_bytes);
        conn_close(c);
        return -EPIPE;
    }
    struct gw_wreq *w = malloc(sizeof(*w) + n);
    if (!w) {
        conn_close(c);
        return -EPIPE;
    }
    memcpy(w->data, data, n);
    w->len = n;
    w->close_after = close_after;
    uv_buf_t b = uv_buf_init(w->data, (unsigned)n);
    if (uv_write(&w->req, (uv_stream_t *)&c->tcp, &b, 1, write_done) < 0) {
        free(w);
        conn_close(c);
        return -EPIPE;
    }
    c->out_bytes += n;
    return 0;
}

/* Resets the request state and parses what the client sent meanwhile. */
static void request_done(struct gw_conn *c)
{
    if (c->closing)
        return;
    c->gone = NULL;
    c->sse = false;
    if (c->close_after) {
        /* The last write closes the connection once it is out. */
        return;
    }
    c->phase = PH_IDLE;
    c->url_len = c->head_bytes = c->field_len = c->auth_len = c->body_len = 0;
    c->field_done = c->want_value = c->complete = false;
    c->want_expect = c->expect_continue = false;
    c->refuse = 0;
    body_free(c);
    free(c->url);
    c->url = NULL;
    http_parser_init(&c->p, HTTP_REQUEST);
    c->p.data = c;
    if (c->pending_len) {
        char *p = c->pending;
        size_t n = c->pending_len;
        c->pending = NULL;
        c->pending_len = 0;
        conn_parse(c, p, n);
        free(p);
    }
}

static const char *status_text(int status)
{
    switch (status) {
    case 200: return "OK";
    case 400: return "Bad Request";
    case 401: return "Unauthorized";
    case 404: return "Not Found";
    case 405: return "Method Not Allowed";
    case 408: return "Request Timeout";
    case 413: return "Content Too Large";
    case 429: return "Too Many Requests";
    case 431: return "Request Header Fields Too Large";
    case 500: return "Internal Server Error";
    case 503: return "Service Unavailable";
    default: return "Unknown";
    }
}

static void count_status(struct gw *g, int status)
{
    g->n_requests++;
    if (status < 300)
        g->n_2xx++;
    else if (status < 500)
        g->n_4xx++;
    else
        g->n_5xx++;
}

void gw_http_respond(struct gw_conn *c, int status, const char *ctype, const char *body, size_t len,
                     const char *extra)
{
    count_status(c->g, status);
    if (!c->keep_alive || status == 408 || status == 413 || status == 431 || c->refuse)
        c->close_after = true;
    char head[1024];
    int n = snprintf(head, sizeof(head),
                     "HTTP/1.1 %d %s\r\nContent-Type: %s\r\nContent-Length: %zu\r\n%s%s\r\n",
                     status, status_text(status), ctype ? ctype : "text/plain", body ? len : 0,
                     c->close_after ? "Connection: close\r\n" : "", extra ? extra : "");
    size_t total = (size_t)n + (body ? len : 0);
    char *buf = malloc(total);
    if (!buf) {
        conn_close(c);
        return;
    }
    memcpy(buf, head, (size_t)n);
    if (body)
        memcpy(buf + n, body, len);
    conn_write(c, buf, total, c->close_after);
    free(buf);
    request_done(c);
}

char *gw_api_error_json(const char *msg, const char *type, const char *param, const char *code)
{
    json_t *e = json_pack("{s:{s:s,s:s,s:s?,s:s?}}", "error", "message", msg, "type", type, "param",
                          param, "code", code);
    if (!e) /* msg not valid UTF-8 (it quotes client input): say so without it */
        e = json_pack("{s:{s:s,s:s,s:s?,s:s?}}", "error", "message",
                      "invalid request (the message quoting it is not valid UTF-8)", "type", type,
                      "param", param, "code", code);
    char *s = e ? json_dumps(e, JSON_COMPACT) : NULL;
    json_decref(e);
    return s;
}

void gw_http_error(struct gw_conn *c, int status, const char *type, const char *param,
                   const char *code, const char *fmt, ...)
{
    char msg[600];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    char *s = gw_api_error_json(msg, type, param, code);
    char extra[64] = "";
    if (status == 401)
        snprintf(extra, sizeof(extra), "WWW-Authenticate: Bearer\r\n");
    else if (status == 429 || status == 503)
        snprintf(extra, sizeof(extra), "Retry-After: 1\r\n");
    gw_http_respond(c, status, "application/json", s, s ? strlen(s) : 0, extra);
    free(s);
}

void gw_http_sse_begin(struct gw_conn *c)
{
    count_status(c->g, 200);
    c->sse = true;
    /* HTTP/1.0 has no chunked encoding: the stream then ends with the connection. */
    c->chunked = c->p.http_major > 1 || (c->p.http_major == 1 && c->p.http_minor >= 1);
    if (!c->chunked)
        c->keep_alive = false;
    char head[256];
    int n = snprintf(head, sizeof(head),
                     "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
                     "Cache-Control: no-cache\r\n%s\r\n",
                     c->chunked ? "Transfer-Encoding: chunked\r\n" : "Connection: close\r\n");
    conn_write(c, head, (size_t)n, false);
}

int gw_http_sse_data(struct gw_conn *c, const char *json, size_t len)
{
    size_t n = len + 32;
    char *buf = malloc(n);
    if (!buf)
        return -ENOMEM;
    int h = c->chunked ? snprintf(buf, n, "%zx\r\ndata: ", len + 8) : snprintf(buf, n, "data: ");
    memcpy(buf + h, json, len);
    memcpy(buf + h + len, "\n\n\r\n", c->chunked ? 4 : 2);
    int rc = conn_write(c, buf, (size_t)h + len + (c->chunked ? 4 : 2), false);
    free(buf);
    return rc;
}

void gw_http_sse_end(struct gw_conn *c)
{
    static const char tail[] = "e\r\ndata: [DONE]\n\n\r\n0\r\n\r\n";
    static const char tail10[] = "data: [DONE]\n\n";
    if (!c->keep_alive)
        c->close_after = true;
    if (c->chunked)
        conn_write(c, tail, sizeof(tail) - 1, c->close_after);
    else
        conn_write(c, tail10, sizeof(tail10) - 1, c->close_after);
    request_done(c);
}

/* --- parsing ---------------------------------------------------------------------------------- */

static int on_message_begin(http_parser *p)
{
    struct gw_conn *c = p->data;
    c->phase = PH_READING;
    c->t_start_ms = uv_now(c->g->loop);
    if (!c->url && !(c->url = malloc(GW_MAX_HEAD + 1)))
        return -1;
    return 0;
}

static int head_add(struct gw_conn *c, size_t n)
{
    c->head_bytes += n;
    if (c->head_bytes > GW_MAX_HEAD) {
        c->refuse = 431;
        return -1;
    }
    return 0;
}

static int on_url(http_parser *p, const char *at, size_t n)
{
    struct gw_conn *c = p->data;
    if (head_add(c, n))
        return -1;
    memcpy(c->url + c->url_len, at, n); /* url_len <= head_bytes < GW_MAX_HEAD */
    c->url_len += n;
    return 0;
}

static int on_header_field(http_parser *p, const char *at, size_t n)
{
    struct gw_conn *c = p->data;
    if (head_add(c, n))
        return -1;
    if (c->field_done) { /* a new header begins */
        c->field_len = 0;
        c->field_done = false;
    }
    size_t room = sizeof(c->field) - 1 - c->field_len;
    size_t k = n < room ? n : room;
    memcpy(c->field + c->field_len, at, k);
    c->field_len += k;
    c->field[c->field_len] = 0;
    return 0;
}

static int on_header_value(http_parser *p, const char *at, size_t n)
{
    struct gw_conn *c = p->data;
    if (head_add(c, n))
        return -1;
    if (!c->field_done) {
        c->field_done = true;
        c->want_value = !strcasecmp(c->field, "authorization");
        c->want_expect = !strcasecmp(c->field, "expect");
        if (c->want_value)
            c->auth_len = 0;
    }
    if (c->want_expect && n >= 12 && !strncasecmp(at, "100-continue", 12))
        c->expect_continue = true;
    if (c->want_value) {
        if (c->auth_len + n >= sizeof(c->auth)) {
            c->refuse = 431;
            return -1;
        }
        memcpy(c->auth + c->auth_len, at, n);
        c->auth_len += n;
        c->auth[c->auth_len] = 0;
    }
    return 0;
}

static int on_headers_complete(http_parser *p)
{
    struct gw_conn *c = p->data;
    c->keep_alive = http_should_keep_alive(p);
    /* ULLONG_MAX: no Content-Length (chunked or none): counted as it arrives. */
    if (p->content_length != ULLONG_MAX && p->content_length > c->g->max_body) {
        c->refuse = 413;
        return -1;
    }
    /* curl and others wait (curl: 1 s) for this before sending a large body. */
    if (c->expect_continue && p->http_major == 1 && p->http_minor >= 1) {
        static const char cont[] = "HTTP/1.1 100 Continue\r\n\r\n";
        conn_write(c, cont, sizeof(cont) - 1, false);
    }
    return 0;
}

static int on_body(http_parser *p, const char *at, size_t n)
{
    struct gw_conn *c = p->data;
    if (c->body_len + n > c->g->max_body) {
        c->refuse = 413;
        return -1;
    }
    if (c->body_len + n + 1 > c->body_cap) {
        size_t cap = c->body_cap ? c->body_cap : 4096;
        while (cap < c->body_len + n + 1)
            cap *= 2;
        if (cap > c->g->max_body + 1)
            cap = c->g->max_body + 1;
        char *nb = realloc(c->body, cap);
        if (!nb)
            return -1;
        c->body = nb;
        c->body_cap = cap;
    }
    memcpy(c->body + c->body_len, at, n);
    c->body_len += n;
    c->body[c->body_len] = 0;
    return 0;
}

static int on_message_complete(http_parser *p)
{
    struct gw_conn *c = p->data;
    c->complete = true;
    http_parser_pause(p, 1); /* one request at a time: the rest waits in pending */
    return 0;
}

static const http_parser_settings settings = {
    .on_message_begin = on_message_begin,
    .on_url = on_url,
    .on_header_field = on_header_field,
    .on_header_value = on_header_value,
    .on_headers_complete = on_headers_complete,
    .on_body = on_body,
    .on_message_complete = on_message_complete,
};

/* The request is whole: hand it to the router. */
static void conn_route(struct gw_conn *c)
{
    c->phase = PH_BUSY;
    c->url[c->url_len] = 0;
    char *q = strchr(c->url, '?');
    if (q)
        *q = 0;
    struct gw_request r = {
        .method = (enum http_method)c->p.method,
        .path = c->url,
        .body = c->body ? c->body : "",
        .body_len = c->body_len,
        .auth = c->auth_len ? c->auth : NULL,
        .peer = c->peer,
    };
    gw_api_dispatch(c->g, c, &r);
}

/* Keeps bytes that arrive while a request is answered (bounded: past one read buffer the
 * client is pipelining far more than any client does, and is closed). */
static void keep_pending(struct gw_conn *c, const char *data, size_t n)
{
    if (c->pending_len + n > sizeof(rbuf)) {
        conn_close(c);
        return;
    }
    char *np = realloc(c->pending, c->pending_len + n);
    if (!np) {
        conn_close(c);
        return;
    }
    memcpy(np + c->pending_len, data, n);
    c->pending = np;
    c->pending_len += n;
}

static void conn_parse(struct gw_conn *c, const char *data, size_t n)
{
    if (c->phase == PH_BUSY) {
        keep_pending(c, data, n);
        return;
    }
    size_t used = http_parser_execute(&c->p, &settings, data, n);
    enum http_errno e = HTTP_PARSER_ERRNO(&c->p);
    if (c->refuse) {
        c->phase = PH_BUSY;
        if (c->refuse == 413)
            gw_http_error(c, 413, "invalid_request_error", NULL, "request_too_large",
                          "request body larger than the %llu-byte limit",
                          (unsigned long long)c->g->max_body);
        else
            gw_http_error(c, 431, "invalid_request_error", NULL, "headers_too_large",
                          "request line and headers larger than %d bytes", GW_MAX_HEAD);
        return;
    }
    if (e != HPE_OK && e != HPE_PAUSED) {
        c->phase = PH_BUSY;
        c->keep_alive = false;
        gw_http_error(c, 400, "invalid_request_error", NULL, "bad_http", "malformed HTTP: %s",
                      http_errno_description(e));
        return;
    }
    if (!c->complete)
        return;
    http_parser_pause(&c->p, 0);
    if (used < n)
        keep_pending(c, data + used, n - used);
    if (!c->closing)
        conn_route(c);
}

static void alloc_cb(uv_handle_t *h, size_t suggested, uv_buf_t *buf)
{
    (void)h;
    (void)suggested;
    *buf = uv_buf_init(rbuf, sizeof(rbuf));
}

static void read_cb(uv_stream_t *s, ssize_t n, const uv_buf_t *buf)
{
    struct gw_conn *c = (struct gw_conn *)s;
    if (c->closing)
        return;
    if (n < 0) {
        conn_close(c); /* EOF included: a client gone cancels its generation */
        return;
    }
    if (n == 0)
        return;
    if (c->close_after) /* answered for good: drop the rest (see write_done) */
        return;
    c->last_active_ms = uv_now(c->g->loop);
    conn_parse(c, buf->base, (size_t)n);
}

static void accept_cb(uv_stream_t *l, int status)
{
    struct gw *g = l->data;
    if (status < 0) {
        nf_log(NF_LOG_WARN, "http accept: %s", uv_strerror(status));
        return;
    }
    struct gw_conn *c = calloc(1, sizeof(*c));
    if (!c)
        return;
    c->g = g;
    uv_tcp_init(g->loop, &c->tcp);
    if (uv_accept(l, (uv_stream_t *)&c->tcp) < 0 || g->stopping) {
        c->closing = true;
        uv_close((uv_handle_t *)&c->tcp, conn_closed);
        return;
    }
    if (g->n_conns >= g->max_conns) {
        g->n_refused++;
        char *s = gw_api_error_json("too many connections; try again later", "server_error", NULL,
                                    "too_many_connections");
        char head[256];
        int h = snprintf(head, sizeof(head),
                         "HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n"
                         "Content-Length: %zu\r\nConnection: close\r\nRetry-After: 1\r\n\r\n",
                         s ? strlen(s) : 0);
        uv_buf_t b[2] = {uv_buf_init(head, (unsigned)h), uv_buf_init(s, s ? strlen(s) : 0)};
        uv_try_write((uv_stream_t *)&c->tcp, b, s ? 2 : 1);
        free(s);
        c->closing = true;
        uv_close((uv_handle_t *)&c->tcp, conn_closed);
        return;
    }
    g->n_conns++;
    c->next = g->conns;
    g->conns = c;
    struct sockaddr_storage sa;
    int salen = sizeof(sa);
    if (uv_tcp_getpeername(&c->tcp, (struct sockaddr *)&sa, &salen) == 0)
        uv_ip_name((struct sockaddr *)&sa, c->peer, sizeof(c->peer));
    c->last_active_ms = uv_now(g->loop);
    uv_tcp_nodelay(&c->tcp, 1);
    http_parser_init(&c->p, HTTP_REQUEST);
    c->p.data = c;
    if (uv_read_start((uv_stream_t *)&c->tcp, alloc_cb, read_cb) < 0)
        conn_close(c);
}

/* Once a second: requests that do not arrive in time (408) and idle keep-alive connections. */
static void sweep_cb(uv_timer_t *t)
{
    struct gw *g = t->data;
    uint64_t now = uv_now(g->loop);
    for (struct gw_conn *c = g->conns, *next; c; c = next) {
        next = c->next;
        if (c->lingering) {
            if (now - c->last_active_ms > GW_LINGER_MS)
                conn_close(c);
        } else if (c->phase == PH_READING && now - c->t_start_ms > g->header_timeout_ms) {
            c->phase = PH_BUSY;
            c->keep_alive = false;
            gw_http_error(c, 408, "invalid_request_error", NULL, "request_timeout",
                          "request not received within %llu s",
                          (unsigned long long)g->header_timeout_ms / 1000);
        } else if (c->phase == PH_IDLE && now - c->last_active_ms > g->idle_timeout_ms) {
            conn_close(c);
        }
    }
    if (g->trim) {
        malloc_trim(0);
        g->trim = false;
        g->closes_since_trim = 0;
    }
}

/* "host:port" or "[v6]:port" into a socket address. */
static int parse_addr(const char *addr, struct sockaddr_storage *ss, char *err, size_t errlen)
{
    char host[128];
    const char *colon = strrchr(addr, ':');
    if (!colon || colon == addr || colon - addr >= (long)sizeof(host))
        return nf_errf(err, errlen, -EINVAL, "--http %s: expected HOST:PORT, e.g. 127.0.0.1:8080",
                       addr);
    char *end;
    long port = strtol(colon + 1, &end, 10);
    if (*end || port < 1 || port > 65535 || end == colon + 1)
        return nf_errf(err, errlen, -EINVAL, "--http %s: port expected in 1..65535", addr);
    snprintf(host, sizeof(host), "%.*s", (int)(colon - addr), addr);
    if (host[0] == '[' && host[strlen(host) - 1] == ']') {
        memmove(host, host + 1, strlen(host));
        host[strlen(host) - 1] = 0;
        if (uv_ip6_addr(host, (int)port, (struct sockaddr_in6 *)ss) == 0)
            return 0;
    } else if (uv_ip4_addr(host, (int)port, (struct sockaddr_in *)ss) == 0) {
        return 0;
    }
    return nf_errf(err, errlen, -EINVAL, "--http %s: '%s' is not an IPv4 or [IPv6] address", addr,
                   host);
}

int gw_http_start(struct gw *g, const char *addr, char *err, size_t errlen)
{
    struct sockaddr_storage ss;
    memset(&ss, 0, sizeof(ss));
    int rc = parse_addr(addr, &ss, err, errlen);
    if (rc < 0)
        return rc;
    uv_tcp_init(g->loop, &g->listener);
    g->listener.data = g;
    rc = uv_tcp_bind(&g->listener, (const struct sockaddr *)&ss, 0);
    if (rc == 0)
        rc = uv_listen((uv_stream_t *)&g->listener, 511, accept_cb);
    if (rc < 0) {
        uv_close((uv_handle_t *)&g->listener, NULL);
        return nf_errf(err, errlen, rc, "cannot listen on %s: %s", addr, uv_strerror(rc));
    }
    uv_timer_init(g->loop, &g->sweep);
    g->sweep.data = g;
    uv_timer_start(&g->sweep, sweep_cb, 1000, 1000);
    return 0;
}

void gw_http_stop(struct gw *g)
{
    g->stopping = true;
    while (g->conns)
        conn_close(g->conns);
    if (!uv_is_closing((uv_handle_t *)&g->listener))
        uv_close((uv_handle_t *)&g->listener, NULL);
    if (!uv_is_closing((uv_handle_t *)&g->sweep))
        uv_close((uv_handle_t *)&g->sweep, NULL);
}
