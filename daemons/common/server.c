/* server.c - the daemons' control server: a libuv Unix-socket listener speaking control frames.
 *
 * Everything but nf_server_send()/nf_server_set_health() runs on the loop thread. Replies from
 * other threads are packed by the caller, put on a mutex-protected queue and handed to the loop
 * with a uv_async_t; the loop writes them in queue order, so a worker's TokenEvents and its
 * GenerateDone arrive in the order they were sent. Connection ids count up from 1 and are never
 * reused, so a late reply to a closed connection can never reach a newer client. */
#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
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

struct nf_conn {
    uv_pipe_t pipe; /* first member: handle->data is not needed to find the connection */
    struct nf_server *s;
    uint64_t id;
    struct nf_frame_dec dec;
    bool closing; /* no more reads or writes; uv_close pending or done */
    struct nf_conn *next;
    char rbuf[65536];
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
    uint8_t *data;    /* the nf_out holding the bytes (freed in the callback) */
};

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
    int open_handles; /* listener + async + connections not yet closed (loop thread) */
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

static void conn_closed(uv_handle_t *h)
{
    struct nf_conn *c = (struct nf_conn *)h;
    struct nf_server *s = c->s;
    nf_frame_dec_free(&c->dec);
    free(c);
    s->open_handles--;
    server_maybe_free(s);
}

/* Unlinks c from the live list (so sends to it fail with -ENOTCONN), tells the owner, closes. */
static void conn_close(struct nf_conn *c)
{
    if (c->closing)
        return;
    struct nf_server *s = c->s;
    c->closing = true;
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
    free(w->data);
    free(w);
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
    w->data = (uint8_t *)o;
    uv_buf_t b = uv_buf_init((char *)o->data, (unsigned)o->len);
    int rc = uv_write(&w->req, (uv_stream_t *)&c->pipe, &b, 1, write_done);
    if (rc < 0) {
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
    if (s->stopping || !find_conn_locked(s, conn_id)) {
        pthread_mutex_unlock(&s->mu);
        free(o);
        return -ENOTCONN;
    }
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
    nf_log(NF_LOG_WARN, "connection %llu: %s; closing it", (unsigned long long)c->id, msg);
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

static void alloc_cb(uv_handle_t *h, size_t suggested, uv_buf_t *buf)
{
    struct nf_conn *c = (struct nf_conn *)h;
    *buf = uv_buf_init(c->rbuf, sizeof(c->rbuf));
}

static void read_cb(uv_stream_t *st, ssize_t n, const uv_buf_t *buf)
{
    struct nf_conn *c = (struct nf_conn *)st;
    if (c->closing)
        return;
    if (n < 0) {
        if (n != UV_EOF)
            nf_log(NF_LOG_DEBUG, "connection %llu: read: %s", (unsigned long long)c->id,
                   uv_strerror((int)n));
        conn_close(c);
        return;
    }
    if (n == 0)
        return;
    int rc = nf_frame_dec_feed(&c->dec, buf->base, (size_t)n);
    while (rc == 0) {
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
    if (rc == -EMSGSIZE) {
        char msg[128];
        snprintf(msg, sizeof(msg), "frame longer than the %u-byte maximum", c->dec.max_frame);
        conn_fail(c, -EMSGSIZE, msg);
    } else if (rc < 0) {
        conn_fail(c, rc == -ENOMEM ? -ENOMEM : NF_EPROTO,
                  rc == -ENOMEM ? "out of memory" : "malformed frame (not a valid Envelope)");
    }
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
    c->id = ++s->next_id;
    pthread_mutex_lock(&s->mu);
    c->next = s->conns;
    s->conns = c;
    pthread_mutex_unlock(&s->mu);
    int rc = uv_read_start((uv_stream_t *)&c->pipe, alloc_cb, read_cb);
    if (rc < 0)
        conn_close(c);
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
    s->open_handles = 2;
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
