/* server.c - the daemons' control server: a libuv Unix-socket listener speaking control frames.
 *
 * Everything but nf_server_send()/nf_server_set_health() runs on the loop thread. Replies from
 * other threads are packed by the caller, put on a mutex-protected queue and handed to the loop
 * with a uv_async_t; the loop writes them in queue order, so a worker's TokenEvents and its
 * GenerateDone arrive in the order they were sent. Connection ids count up from 1 and are never
 * reused, so a late reply to a closed connection can never reach a newer client.
 *
 * No client can grow the daemon's memory without bound (each limit logs why, at most one line
 * per NF_SERVER_LOG_EVERY_S per kind, with a count of the rest):
 *   - at most NF_SERVER_MAX_CONNS connections (kept below RLIMIT_NOFILE); more are answered
 *     with an Error and closed;
 *   - a connection whose unsent replies pass NF_SERVER_OUT_SOFT is not read from (nor are its
 *     already-read requests dispatched) until they drain to half that; past NF_SERVER_OUT_HARD
 *     (replies a worker keeps sending) it is closed;
 *   - one server-wide read buffer; a connection holds only the frame it is reading (sized by
 *     the decoder, freed once consumed), and all connections together at most
 *     NF_SERVER_RX_BUDGET: past it, a connection reads only into the buffer it holds (a fresh
 *     one: 4 KiB) and is paused when that is full, until others finish;
 *   - a frame half-sent for NF_SERVER_FRAME_TIMEOUT_S, or a connection idle (nothing read or
 *     written) for NF_SERVER_IDLE_TIMEOUT_S, is dropped;
 *   - after a burst of closes or large frees the heap is trimmed (malloc_trim).
 * The environment may lower or raise the connection cap and the two timeouts
 * (NANOFLOW_MAX_CONNS, NANOFLOW_FRAME_TIMEOUT_S, NANOFLOW_IDLE_TIMEOUT_S). */
#include <errno.h>
#include <malloc.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include "daemon.h"
#include "nf_err.h"
#include "nf_time.h"

#ifndef NF_VERSION
#define NF_VERSION "0.0.0"
#endif

#define NF_SERVER_MAX_CONNS       256
#define NF_SERVER_OUT_SOFT        (256u << 10) /* a few hundred replies: plenty for any client */
#define NF_SERVER_OUT_HARD        (8u << 20)   /* ~250k tokens of TokenEvents nobody reads */
#define NF_SERVER_RX_BUDGET       (4u << 20)   /* partial frames of all connections together */
#define NF_SERVER_RX_MIN_READ     4096u        /* a fresh connection's read past the budget */
#define NF_SERVER_FRAME_TIMEOUT_S 10           /* a client writes a frame in one go */
#define NF_SERVER_IDLE_TIMEOUT_S  600          /* long enough for the longest prompt's prefill */
#define NF_SERVER_LOG_EVERY_S     10
#define NF_SERVER_TRIM_CLOSES     16         /* closes since the last trim that warrant one */
#define NF_SERVER_TRIM_BYTES      (1u << 20) /* or bytes of buffers freed since then */

struct nf_conn {
    uv_pipe_t pipe; /* first member: handle->data is not needed to find the connection */
    struct nf_server *s;
    uint64_t id;
    struct nf_frame_dec dec;
    bool closing;             /* no more reads or writes; uv_close pending or done */
    bool reading;             /* uv_read_start in effect */
    bool out_paused;          /* too many unsent replies: neither read nor dispatch */
    bool rx_paused;           /* the server's receive budget is spent: do not read */
    bool failed;              /* the stream is broken: only the Error reply is left to write */
    _Atomic size_t out_bytes; /* bytes queued or being written to this connection */
    size_t rx_held;           /* decoder bytes allocated, as counted in s->rx_held */
    uint64_t last_active_ms;  /* uv_now of the last read or completed write */
    uint64_t frame_start_ms;  /* uv_now when the pending partial frame began, 0: none */
    struct nf_conn *next;
};

/* Rate-limited reports of one kind of misbehaving client. */
enum { NF_BAD_REFUSED, NF_BAD_FRAME, NF_BAD_SLOW, NF_BAD_TIMEOUT, NF_BAD_IDLE, NF_BAD_KINDS };
struct nf_bad_log {
    uint64_t last_ms; /* uv_now of the last line, 0: none yet */
    unsigned suppressed;
};
static const char *const nf_bad_what[NF_BAD_KINDS] = {
    [NF_BAD_REFUSED] = "connections refused",
    [NF_BAD_FRAME] = "connections with bad frames closed",
    [NF_BAD_SLOW] = "connections not reading their replies closed",
    [NF_BAD_TIMEOUT] = "connections dropped with a half-sent frame",
    [NF_BAD_IDLE] = "idle connections closed",
};

/* One packed frame waiting for the loop thread. */
struct nf_out {
    struct nf_out *next;
    uint64_t conn_id;
    size_t len;
    uint8_t data[];
};

struct nf_wreq {
    uv_write_t req;
    bool close_after; /* the Error reply to a broken stream: close once it is written */
    size_t len;       /* counted in the connection's out_bytes until written */
    uint8_t *data;    /* the nf_out holding the bytes (freed in the callback) */
};

static void conn_process(struct nf_conn *c);

struct nf_server {
    uv_loop_t *loop;
    uv_pipe_t listener;
    uv_async_t async;
    char path[108];
    char role[32];
    nf_server_cb cb;
    nf_server_close_cb close_cb;
    void *ud;
    _Atomic int health;
    double t0; /* nf_now_s() at init */
    uint64_t next_id;
    uv_timer_t sweep; /* once a second: timeouts, deferred log counts, heap trim */
    int max_conns, n_conns;
    uint64_t frame_timeout_ms, idle_timeout_ms;
    size_t rx_held; /* sum of the connections' rx_held */
    unsigned closes_since_trim;
    size_t freed_since_trim;
    struct nf_bad_log bad[NF_BAD_KINDS];
    char rbuf[65536]; /* the one read buffer: read_cb consumes it before the next read */
    int open_handles; /* listener + async + timer + connections not yet closed (loop thread) */
    bool stopping;
    pthread_mutex_t mu;    /* guards conns (membership) and the out queue */
    struct nf_conn *conns; /* live connections (not closing) */
    struct nf_out *q_head, *q_tail;
};

static double uptime_s(const struct nf_server *s)
{
    return nf_now_s() - s->t0;
}

static void server_maybe_free(struct nf_server *s)
{
    if (!s->stopping || s->open_handles > 0)
        return;
    struct nf_out *o = s->q_head;
    while (o) {
        struct nf_out *n = o->next;
        free(o);
        o = n;
    }
    pthread_mutex_destroy(&s->mu);
    free(s);
}

static void handle_closed(uv_handle_t *h)
{
    struct nf_server *s = h->data;
    s->open_handles--;
    server_maybe_free(s);
}

static void resume_rx(struct nf_server *s);
static void maybe_trim(struct nf_server *s, bool sweep);

static void conn_closed(uv_handle_t *h)
{
    struct nf_conn *c = (struct nf_conn *)h;
    struct nf_server *s = c->s;
    s->rx_held -= c->rx_held;
    s->freed_since_trim += c->dec.cap;
    s->closes_since_trim++;
    nf_frame_dec_free(&c->dec);
    free(c);
    s->open_handles--;
    resume_rx(s);
    if (!s->stopping)
        maybe_trim(s, false);
    server_maybe_free(s);
}

/* Gives freed memory back to the system after a burst of closes or large frees: glibc keeps
 * freed chunks (and raises its mmap threshold after freeing a large one, so the next frame
 * buffers come from the heap). Loop thread. */
static void maybe_trim(struct nf_server *s, bool sweep)
{
    if (s->freed_since_trim < NF_SERVER_TRIM_BYTES &&
        !(sweep && s->closes_since_trim >= NF_SERVER_TRIM_CLOSES))
        return;
    malloc_trim(0);
    s->closes_since_trim = 0;
    s->freed_since_trim = 0;
}

/* Logs one misbehaving client of kind: the first in NF_SERVER_LOG_EVERY_S gets a line, the
 * rest are counted and reported by the sweep timer. Loop thread. */
static void bad_client(struct nf_server *s, int kind, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static void bad_client(struct nf_server *s, int kind, const char *fmt, ...)
{
    struct nf_bad_log *b = &s->bad[kind];
    uint64_t now = uv_now(s->loop);
    if (b->last_ms && now - b->last_ms < NF_SERVER_LOG_EVERY_S * 1000u) {
        b->suppressed++;
        return;
    }
    char msg[256];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    nf_log(NF_LOG_WARN, "%s", msg);
    b->last_ms = now;
}

/* Unlinks c from the live list (so sends to it fail with -ENOTCONN), tells the owner, closes. */
static void conn_close(struct nf_conn *c)
{
    if (c->closing)
        return;
    struct nf_server *s = c->s;
    c->closing = true;
    s->n_conns--;
    pthread_mutex_lock(&s->mu);
    for (struct nf_conn **pp = &s->conns; *pp; pp = &(*pp)->next)
        if (*pp == c) {
            *pp = c->next;
            break;
        }
    pthread_mutex_unlock(&s->mu);
    uv_read_stop((uv_stream_t *)&c->pipe);
    if (s->close_cb)
        s->close_cb(s, c->id, s->ud);
    uv_close((uv_handle_t *)&c->pipe, conn_closed);
}

static void write_done(uv_write_t *req, int status)
{
    struct nf_wreq *w = (struct nf_wreq *)req;
    struct nf_conn *c = (struct nf_conn *)req->handle;
    if (status < 0 && status != UV_ECANCELED && !c->closing)
        nf_log(NF_LOG_DEBUG, "connection %llu: write failed: %s", (unsigned long long)c->id,
               uv_strerror(status));
    if ((status < 0 && status != UV_ECANCELED) || w->close_after)
        conn_close(c);
    size_t left = atomic_fetch_sub(&c->out_bytes, w->len) - w->len;
    c->s->freed_since_trim += w->len;
    free(w->data);
    free(w);
    if (c->closing)
        return;
    c->last_active_ms = uv_now(c->s->loop);
    /* The client reads again: dispatch what it already sent, then read more. */
    if (c->out_paused && left <= NF_SERVER_OUT_SOFT / 2) {
        c->out_paused = false;
        conn_process(c);
    }
}

/* Starts writing one packed frame (takes ownership of o). Loop thread. */
static void conn_write(struct nf_conn *c, struct nf_out *o, bool close_after)
{
    struct nf_wreq *w = malloc(sizeof(*w));
    if (!w) {
        free(o);
        conn_close(c);
        return;
    }
    w->close_after = close_after;
    w->len = o->len;
    w->data = (uint8_t *)o;
    uv_buf_t b = uv_buf_init((char *)o->data, (unsigned)o->len);
    int rc = uv_write(&w->req, (uv_stream_t *)&c->pipe, &b, 1, write_done);
    if (rc < 0) {
        atomic_fetch_sub(&c->out_bytes, o->len);
        free(o);
        free(w);
        conn_close(c);
    }
}

static struct nf_out *pack(uint64_t conn_id, uint64_t req_id, nf_envelope *env, int *rc)
{
    env->request_id = req_id;
    size_t n = nf_frame_size(env);
    struct nf_out *o = malloc(sizeof(*o) + n);
    if (!o) {
        *rc = -ENOMEM;
        return NULL;
    }
    o->next = NULL;
    o->conn_id = conn_id;
    *rc = nf_frame_encode(env, 0, o->data, n, &o->len);
    if (*rc < 0) {
        free(o);
        return NULL;
    }
    return o;
}

static struct nf_conn *find_conn_locked(struct nf_server *s, uint64_t id)
{
    for (struct nf_conn *c = s->conns; c; c = c->next)
        if (c->id == id)
            return c;
    return NULL;
}

static void async_drain(uv_async_t *a)
{
    struct nf_server *s = a->data;
    pthread_mutex_lock(&s->mu);
    struct nf_out *o = s->q_head;
    s->q_head = s->q_tail = NULL;
    pthread_mutex_unlock(&s->mu);
    while (o) {
        struct nf_out *n = o->next;
        o->next = NULL;
        /* Membership only changes on this thread, so the lookup stays valid while we write. */
        pthread_mutex_lock(&s->mu);
        struct nf_conn *c = find_conn_locked(s, o->conn_id);
        pthread_mutex_unlock(&s->mu);
        if (c && !c->closing && atomic_load(&c->out_bytes) > NF_SERVER_OUT_HARD) {
            /* Replies a worker keeps sending to a client that reads none of them. */
            bad_client(s, NF_BAD_SLOW,
                       "connection %llu: %zu bytes of replies unread; closing it (logged at "
                       "most every %d s)",
                       (unsigned long long)c->id, atomic_load(&c->out_bytes),
                       NF_SERVER_LOG_EVERY_S);
            conn_close(c);
        }
        if (c && !c->closing)
            conn_write(c, o, false);
        else
            free(o);
        o = n;
    }
}

int nf_server_send(struct nf_server *s, uint64_t conn_id, uint64_t req_id, nf_envelope *env)
{
    int rc;
    struct nf_out *o = pack(conn_id, req_id, env, &rc);
    if (!o)
        return rc;
    pthread_mutex_lock(&s->mu);
    struct nf_conn *c = s->stopping ? NULL : find_conn_locked(s, conn_id);
    if (!c) {
        pthread_mutex_unlock(&s->mu);
        free(o);
        return -ENOTCONN;
    }
    atomic_fetch_add(&c->out_bytes, o->len); /* under mu: c stays in the list meanwhile */
    if (s->q_tail)
        s->q_tail->next = o;
    else
        s->q_head = o;
    s->q_tail = o;
    /* Under the lock: nf_server_stop() closes the async handle under the same lock. */
    uv_async_send(&s->async);
    pthread_mutex_unlock(&s->mu);
    return 0;
}

static void fill_error(nf_envelope *env, Nanoflow__Error *e, int code, const char *msg)
{
    nanoflow__envelope__init(env);
    nanoflow__error__init(e);
    e->code = code;
    e->message = (char *)msg;
    env->msg_case = NANOFLOW__ENVELOPE__MSG_ERROR;
    env->error = e;
}

int nf_server_send_error(struct nf_server *s, uint64_t conn_id, uint64_t req_id, int code,
                         const char *fmt, ...)
{
    char msg[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    nf_envelope env;
    Nanoflow__Error e;
    fill_error(&env, &e, code, msg);
    return nf_server_send(s, conn_id, req_id, &env);
}

/* Loop thread: reports a broken stream to the peer and closes the connection after the write. */
static void conn_fail(struct nf_conn *c, int code, const char *msg)
{
    bad_client(c->s, NF_BAD_FRAME, "connection %llu: %s; closing it (logged at most every %d s)",
               (unsigned long long)c->id, msg, NF_SERVER_LOG_EVERY_S);
    nf_envelope env;
    Nanoflow__Error e;
    fill_error(&env, &e, code, msg);
    int rc;
    struct nf_out *o = pack(c->id, 0, &env, &rc);
    if (!o) {
        conn_close(c);
        return;
    }
    uv_read_stop((uv_stream_t *)&c->pipe);
    c->reading = false;
    c->failed = true;
    atomic_fetch_add(&c->out_bytes, o->len);
    conn_write(c, o, true);
}

static void reply_now(struct nf_conn *c, uint64_t req_id, nf_envelope *env)
{
    int rc;
    struct nf_out *o = pack(c->id, req_id, env, &rc);
    if (!o) {
        nf_log(NF_LOG_ERROR, "connection %llu: cannot pack a reply: %s", (unsigned long long)c->id,
               nf_strerror(rc));
        conn_close(c);
        return;
    }
    /* Through the queue, behind anything a worker already queued for this connection. */
    atomic_fetch_add(&c->out_bytes, o->len);
    pthread_mutex_lock(&c->s->mu);
    if (c->s->q_tail)
        c->s->q_tail->next = o;
    else
        c->s->q_head = o;
    c->s->q_tail = o;
    pthread_mutex_unlock(&c->s->mu);
    async_drain(&c->s->async);
}

/* Loop thread: one decoded request. Returns false when the connection was closed. */
static bool conn_dispatch(struct nf_conn *c, nf_envelope *env)
{
    struct nf_server *s = c->s;
    switch (env->msg_case) {
    case NANOFLOW__ENVELOPE__MSG_HELLO: {
        const Nanoflow__Hello *h = env->hello;
        if (h->protocol_major != NF_PROTO_MAJOR) {
            char msg[160];
            snprintf(msg, sizeof(msg),
                     "protocol version %u.%u not supported (this %s speaks %d.%d)",
                     h->protocol_major, h->protocol_minor, s->role, NF_PROTO_MAJOR, NF_PROTO_MINOR);
            conn_fail(c, NF_EPROTO, msg);
            return false;
        }
        nf_envelope r;
        Nanoflow__Hello hr;
        nanoflow__envelope__init(&r);
        nanoflow__hello__init(&hr);
        hr.protocol_major = NF_PROTO_MAJOR;
        hr.protocol_minor = NF_PROTO_MINOR;
        hr.role = s->role;
        hr.version = (char *)NF_VERSION;
        hr.pid = (uint32_t)getpid();
        r.msg_case = NANOFLOW__ENVELOPE__MSG_HELLO;
        r.hello = &hr;
        reply_now(c, env->request_id, &r);
        return !c->closing;
    }
    case NANOFLOW__ENVELOPE__MSG_HEALTH_REQUEST: {
        nf_envelope r;
        Nanoflow__Health hh;
        nanoflow__envelope__init(&r);
        nanoflow__health__init(&hh);
        hh.state = (Nanoflow__Health__State)atomic_load(&s->health);
        hh.role = s->role;
        hh.pid = (uint32_t)getpid();
        hh.uptime_s = uptime_s(s);
        r.msg_case = NANOFLOW__ENVELOPE__MSG_HEALTH;
        r.health = &hh;
        reply_now(c, env->request_id, &r);
        return !c->closing;
    }
    case NANOFLOW__ENVELOPE__MSG__NOT_SET: {
        /* A message from a newer peer (an unknown oneof field) or an empty envelope. */
        nf_envelope r;
        Nanoflow__Error e;
        fill_error(&r, &e, NF_EPROTO, "unknown or empty message");
        reply_now(c, env->request_id, &r);
        return !c->closing;
    }
    default: s->cb(s, c->id, env, s->ud); return !c->closing;
    }
}

/* Past the receive budget a connection reads only into the space its decoder already holds
 * (a fresh connection: one small piece, enough for a small frame); with neither, the read fails
 * with UV_ENOBUFS and read_cb pauses the connection. So a flood of connections that all start a
 * large frame at once holds the budget plus 4 KiB each, not a doubled buffer each. */
static void alloc_cb(uv_handle_t *h, size_t suggested, uv_buf_t *buf)
{
    struct nf_conn *c = (struct nf_conn *)h;
    struct nf_server *s = c->s;
    size_t len = sizeof(s->rbuf);
    (void)suggested;
    if (s->rx_held >= NF_SERVER_RX_BUDGET) {
        size_t used = c->dec.len - c->dec.pos;
        size_t space = c->dec.cap - used;
        if (c->dec.cap == 0)
            space = NF_SERVER_RX_MIN_READ;
        len = space < len ? space : len;
    }
    *buf = uv_buf_init(len ? s->rbuf : NULL, (unsigned)len);
}

static void read_cb(uv_stream_t *st, ssize_t n, const uv_buf_t *buf);

/* Starts or stops reading c as its pauses say. Loop thread. */
static void conn_update_reading(struct nf_conn *c)
{
    bool want = !c->closing && !c->failed && !c->out_paused && !c->rx_paused;
    if (want == c->reading)
        return;
    if (want && uv_read_start((uv_stream_t *)&c->pipe, alloc_cb, read_cb) < 0) {
        conn_close(c);
        return;
    }
    if (!want)
        uv_read_stop((uv_stream_t *)&c->pipe);
    c->reading = want;
}

/* Lets connections paused on the receive budget read again once it has room. */
static void resume_rx(struct nf_server *s)
{
    if (s->rx_held >= NF_SERVER_RX_BUDGET || s->stopping)
        return;
    for (struct nf_conn *c = s->conns; c; c = c->next) {
        if (!c->rx_paused)
            continue;
        c->rx_paused = false;
        conn_update_reading(c);
    }
}

/* Dispatches the whole frames c's decoder holds (while its replies are not piling up), then
 * releases the decoder's buffer if it is empty, accounts what it holds, and reads on or not.
 * Loop thread. */
static void conn_process(struct nf_conn *c)
{
    struct nf_server *s = c->s;
    int rc = 0;
    if (c->failed)
        return;
    while (!c->closing) {
        if (atomic_load(&c->out_bytes) > NF_SERVER_OUT_SOFT) {
            c->out_paused = true; /* resumed by write_done */
            break;
        }
        nf_envelope *env = NULL;
        rc = nf_frame_dec_next(&c->dec, &env);
        if (rc <= 0)
            break;
        bool alive = conn_dispatch(c, env);
        nf_envelope_free(env);
        if (!alive)
            return;
        rc = 0;
    }
    if (c->closing)
        return;
    if (rc == -EMSGSIZE) {
        char msg[128];
        snprintf(msg, sizeof(msg), "frame longer than the %u-byte maximum", c->dec.max_frame);
        conn_fail(c, -EMSGSIZE, msg);
        return;
    }
    if (rc < 0) {
        conn_fail(c, rc == -ENOMEM ? -ENOMEM : NF_EPROTO,
                  rc == -ENOMEM ? "out of memory" : "malformed frame (not a valid Envelope)");
        return;
    }
    size_t pending = nf_frame_dec_pending(&c->dec);
    if (pending == 0 && c->dec.cap > 0) {
        /* Nothing buffered: give the buffer back (an idle connection holds none). */
        uint32_t max = c->dec.max_frame;
        s->freed_since_trim += c->dec.cap;
        nf_frame_dec_free(&c->dec);
        nf_frame_dec_init(&c->dec, max);
    }
    if (pending == 0)
        c->frame_start_ms = 0;
    else if (c->frame_start_ms == 0)
        c->frame_start_ms = uv_now(s->loop);
    s->rx_held = s->rx_held - c->rx_held + c->dec.cap;
    c->rx_held = c->dec.cap;
    if (pending > 0 && s->rx_held > NF_SERVER_RX_BUDGET && !c->out_paused)
        c->rx_paused = true; /* resumed by resume_rx when others give theirs back */
    conn_update_reading(c);
    resume_rx(s);
}

static void read_cb(uv_stream_t *st, ssize_t n, const uv_buf_t *buf)
{
    struct nf_conn *c = (struct nf_conn *)st;
    if (c->closing)
        return;
    if (n == UV_ENOBUFS) {
        c->rx_paused = true; /* alloc_cb: the budget is spent; resume_rx reads on */
        conn_update_reading(c);
        return;
    }
    if (n < 0) {
        if (n != UV_EOF)
            nf_log(NF_LOG_DEBUG, "connection %llu: read: %s", (unsigned long long)c->id,
                   uv_strerror((int)n));
        conn_close(c);
        return;
    }
    if (n == 0)
        return;
    c->last_active_ms = uv_now(c->s->loop);
    int rc = nf_frame_dec_feed(&c->dec, buf->base, (size_t)n);
    if (rc < 0) {
        conn_fail(c, rc == -ENOMEM ? -ENOMEM : NF_EPROTO,
                  rc == -ENOMEM ? "out of memory" : "malformed frame (not a valid Envelope)");
        return;
    }
    conn_process(c);
}

/* Answers a connection over the cap with an Error (best effort, it is not read) and closes
 * it. c is not in the live list. */
static void conn_refuse(struct nf_server *s, struct nf_conn *c)
{
    bad_client(s, NF_BAD_REFUSED,
               "refusing a connection: %d connections open, the most this %s serves (logged at "
               "most every %d s)",
               s->n_conns, s->role, NF_SERVER_LOG_EVERY_S);
    char msg[128];
    snprintf(msg, sizeof(msg), "too many connections (%d open); try again later", s->n_conns);
    nf_envelope env;
    Nanoflow__Error e;
    fill_error(&env, &e, -EMFILE, msg);
    int rc;
    struct nf_out *o = pack(0, 0, &env, &rc);
    if (o) {
        uv_buf_t b = uv_buf_init((char *)o->data, (unsigned)o->len);
        uv_try_write((uv_stream_t *)&c->pipe, &b, 1);
        free(o);
    }
    c->closing = true;
    uv_close((uv_handle_t *)&c->pipe, conn_closed);
}

static void accept_cb(uv_stream_t *l, int status)
{
    struct nf_server *s = l->data;
    if (status < 0) {
        nf_log(NF_LOG_WARN, "accept: %s", uv_strerror(status));
        return;
    }
    struct nf_conn *c = calloc(1, sizeof(*c));
    if (!c) {
        nf_log(NF_LOG_ERROR, "accept: out of memory");
        return;
    }
    uv_pipe_init(s->loop, &c->pipe, 0);
    s->open_handles++;
    c->s = s;
    nf_frame_dec_init(&c->dec, 0);
    if (uv_accept(l, (uv_stream_t *)&c->pipe) < 0 || s->stopping) {
        c->closing = true;
        uv_close((uv_handle_t *)&c->pipe, conn_closed);
        return;
    }
    if (s->n_conns >= s->max_conns) {
        conn_refuse(s, c);
        return;
    }
    c->id = ++s->next_id;
    c->last_active_ms = uv_now(s->loop);
    s->n_conns++;
    pthread_mutex_lock(&s->mu);
    c->next = s->conns;
    s->conns = c;
    pthread_mutex_unlock(&s->mu);
    conn_update_reading(c);
}

/* Once a second: drops half-sent frames and idle connections, reports the log lines the rate
 * limit held back, and trims the heap after a burst. */
static void sweep_cb(uv_timer_t *t)
{
    struct nf_server *s = t->data;
    uint64_t now = uv_now(s->loop);
    for (struct nf_conn *c = s->conns, *next; c; c = next) {
        next = c->next; /* conn_close unlinks c */
        /* A frame still arriving (or waiting for the receive budget: under a flood a slow
         * legitimate client may lose its frame too, told why). Frames held back because
         * the client does not read its replies fall under the idle rule instead. */
        bool partial = c->frame_start_ms && !c->out_paused;
        if (partial && now - c->frame_start_ms > s->frame_timeout_ms) {
            bad_client(s, NF_BAD_TIMEOUT,
                       "connection %llu: a frame half-sent for %llu s (%zu bytes buffered); "
                       "dropping it (logged at most every %d s)",
                       (unsigned long long)c->id, (unsigned long long)s->frame_timeout_ms / 1000,
                       nf_frame_dec_pending(&c->dec), NF_SERVER_LOG_EVERY_S);
            conn_close(c);
        } else if (!partial && now - c->last_active_ms > s->idle_timeout_ms) {
            /* Nothing read and no reply taken for that long: a forgotten or stuck client. */
            bad_client(s, NF_BAD_IDLE,
                       "connection %llu: idle for %llu s; closing it (logged at most every %d s)",
                       (unsigned long long)c->id, (unsigned long long)s->idle_timeout_ms / 1000,
                       NF_SERVER_LOG_EVERY_S);
            conn_close(c);
        }
    }
    for (int k = 0; k < NF_BAD_KINDS; k++) {
        struct nf_bad_log *b = &s->bad[k];
        if (b->suppressed && now - b->last_ms >= NF_SERVER_LOG_EVERY_S * 1000u) {
            nf_log(NF_LOG_WARN, "%u more %s in the last %d s", b->suppressed, nf_bad_what[k],
                   NF_SERVER_LOG_EVERY_S);
            b->suppressed = 0;
            b->last_ms = now;
        }
    }
    maybe_trim(s, true);
}

/* A limit from the environment variable name (a positive integer), else def. */
static long env_limit(const char *name, long def)
{
    const char *v = getenv(name);
    if (!v || !*v)
        return def;
    char *end;
    long x = strtol(v, &end, 10);
    if (*end || x <= 0) {
        nf_log(NF_LOG_WARN, "ignoring %s=%s (not a positive integer); using %ld", name, v, def);
        return def;
    }
    return x;
}

/* The connection cap (env or default), kept below the descriptor limit so accept() never
 * fails for want of descriptors and every refusal is ours, with a reason. */
static int conn_cap(void)
{
    long cap = env_limit("NANOFLOW_MAX_CONNS", NF_SERVER_MAX_CONNS);
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur != RLIM_INFINITY) {
        long room = (long)rl.rlim_cur - 64; /* the daemon's own files, io_uring, logs */
        if (room < 1)
            room = 1;
        if (cap > room) {
            nf_log(NF_LOG_INFO, "serving at most %ld connections (RLIMIT_NOFILE %llu)", room,
                   (unsigned long long)rl.rlim_cur);
            cap = room;
        }
    }
    return cap > INT32_MAX ? INT32_MAX : (int)cap;
}

/* True when something accepts connections on path (a live server: do not steal its socket). */
static bool socket_live(const char *path)
{
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return false;
    struct sockaddr_un a = {.sun_family = AF_UNIX};
    snprintf(a.sun_path, sizeof(a.sun_path), "%s", path);
    bool live = connect(fd, (struct sockaddr *)&a, sizeof(a)) == 0;
    close(fd);
    return live;
}

int nf_server_start(struct nf_server **out, uv_loop_t *loop, const char *sock_path,
                    const char *role, nf_server_cb cb, nf_server_close_cb close_cb, void *ud)
{
    *out = NULL;
    if (!loop || !sock_path || !cb)
        return -EINVAL;
    if (strlen(sock_path) >= sizeof(((struct sockaddr_un *)0)->sun_path))
        return -ENAMETOOLONG;
    if (socket_live(sock_path)) {
        nf_log(NF_LOG_ERROR, "%s: another server is listening there", sock_path);
        return -EADDRINUSE;
    }
    if (unlink(sock_path) < 0 && errno != ENOENT)
        return -errno;
    /* A client that disconnects mid-reply must not kill the daemon with SIGPIPE. */
    signal(SIGPIPE, SIG_IGN);
    struct nf_server *s = calloc(1, sizeof(*s));
    if (!s)
        return -ENOMEM;
    s->loop = loop;
    snprintf(s->path, sizeof(s->path), "%s", sock_path);
    snprintf(s->role, sizeof(s->role), "%s", role ? role : "daemon");
    s->cb = cb;
    s->close_cb = close_cb;
    s->ud = ud;
    atomic_init(&s->health, NANOFLOW__HEALTH__STATE__STARTING);
    s->t0 = nf_now_s();
    pthread_mutex_init(&s->mu, NULL);
    int rc = uv_pipe_init(loop, &s->listener, 0);
    if (rc < 0)
        goto fail_mu;
    s->listener.data = s;
    rc = uv_async_init(loop, &s->async, async_drain);
    if (rc < 0) {
        uv_close((uv_handle_t *)&s->listener, NULL);
        goto fail_mu_late;
    }
    s->async.data = s;
    s->max_conns = conn_cap();
    s->frame_timeout_ms =
        (uint64_t)env_limit("NANOFLOW_FRAME_TIMEOUT_S", NF_SERVER_FRAME_TIMEOUT_S) * 1000u;
    s->idle_timeout_ms =
        (uint64_t)env_limit("NANOFLOW_IDLE_TIMEOUT_S", NF_SERVER_IDLE_TIMEOUT_S) * 1000u;
    uv_timer_init(loop, &s->sweep);
    s->sweep.data = s;
    uv_timer_start(&s->sweep, sweep_cb, 1000, 1000);
    s->open_handles = 3;
    rc = uv_pipe_bind(&s->listener, sock_path);
    if (rc == 0 && chmod(sock_path, 0600) < 0)
        rc = -errno;
    if (rc == 0)
        rc = uv_listen((uv_stream_t *)&s->listener, 128, accept_cb);
    if (rc < 0) {
        nf_log(NF_LOG_ERROR, "%s: cannot listen: %s", sock_path, uv_strerror(rc));
        unlink(sock_path);
        s->stopping = true;
        uv_close((uv_handle_t *)&s->listener, handle_closed);
        uv_close((uv_handle_t *)&s->async, handle_closed);
        uv_close((uv_handle_t *)&s->sweep, handle_closed);
        return rc; /* s is freed by the close callbacks when the loop runs */
    }
    *out = s;
    return 0;
fail_mu_late:
    /* The listener's close callback is NULL and s is not referenced by it: run the loop once so
     * libuv finishes the close before s goes away. */
    uv_run(loop, UV_RUN_NOWAIT);
fail_mu:
    pthread_mutex_destroy(&s->mu);
    free(s);
    return rc;
}

void nf_server_set_health(struct nf_server *s, int state)
{
    atomic_store(&s->health, state);
}

void nf_server_stop(struct nf_server *s)
{
    if (!s || s->stopping)
        return;
    pthread_mutex_lock(&s->mu);
    s->stopping = true;
    pthread_mutex_unlock(&s->mu);
    unlink(s->path);
    while (s->conns)
        conn_close(s->conns);
    uv_close((uv_handle_t *)&s->listener, handle_closed);
    uv_close((uv_handle_t *)&s->sweep, handle_closed);
    pthread_mutex_lock(&s->mu);
    uv_close((uv_handle_t *)&s->async, handle_closed);
    pthread_mutex_unlock(&s->mu);
}

int nf_server_send_stopping(struct nf_server *s, uint64_t conn_id, uint64_t req_id)
{
    nf_server_set_health(s, NANOFLOW__HEALTH__STATE__STOPPING);
    nf_envelope r;
    Nanoflow__Health h;
    nanoflow__envelope__init(&r);
    nanoflow__health__init(&h);
    h.state = NANOFLOW__HEALTH__STATE__STOPPING;
    h.role = s->role;
    h.pid = (uint32_t)getpid();
    h.uptime_s = uptime_s(s);
    r.msg_case = NANOFLOW__ENVELOPE__MSG_HEALTH;
    r.health = &h;
    return nf_server_send(s, conn_id, req_id, &r);
}
