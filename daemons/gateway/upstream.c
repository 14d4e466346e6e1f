/* upstream.c - the gateway's asynchronous control connections to the daemons' sockets: connect,
 * check the server's uid (as nf_client_connect does), Hello, frames out, Envelopes in. */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "gateway.h"
#include "nf_err.h"

#ifndef NF_VERSION
#define NF_VERSION "0.0.0"
#endif

/* A daemon's replies to one gateway request are small; a frame larger than this is refused. */
#define GW_UP_MAX_FRAME (1u << 20)

struct gw_out {
    struct gw_out *next;
    size_t len;
    uint8_t data[];
};

struct gw_up {
    uv_pipe_t pipe; /* first member */
    uv_connect_t creq;
    struct gw *g;
    struct nf_frame_dec dec;
    gw_up_msg_cb on_msg;
    gw_up_close_cb on_close;
    void *ud;
    struct gw_out *q_head, *q_tail; /* frames waiting for the connection */
    int status;                     /* why it closed (0: asked to) */
    bool connected, hello_ok, closing;
};

struct gw_wreq {
    uv_write_t req;
    struct gw_out *o;
};

static void up_closed(uv_handle_t *h)
{
    struct gw_up *u = (struct gw_up *)h;
    if (u->on_close)
        u->on_close(u, u->status, u->ud);
    while (u->q_head) {
        struct gw_out *n = u->q_head->next;
        free(u->q_head);
        u->q_head = n;
    }
    nf_frame_dec_free(&u->dec);
    free(u);
}

static void up_fail(struct gw_up *u, int status)
{
    if (u->closing)
        return;
    u->closing = true;
    u->status = status;
    uv_close((uv_handle_t *)&u->pipe, up_closed);
}

void gw_up_close(struct gw_up *u)
{
    up_fail(u, 0);
}

static void write_done(uv_write_t *req, int status)
{
    struct gw_wreq *w = (struct gw_wreq *)req;
    struct gw_up *u = (struct gw_up *)req->handle;
    free(w->o);
    free(w);
    if (status < 0 && status != UV_ECANCELED)
        up_fail(u, status);
}

static void up_write(struct gw_up *u, struct gw_out *o)
{
    struct gw_wreq *w = malloc(sizeof(*w));
    if (!w) {
        free(o);
        up_fail(u, -ENOMEM);
        return;
    }
    w->o = o;
    uv_buf_t b = uv_buf_init((char *)o->data, (unsigned)o->len);
    int rc = uv_write(&w->req, (uv_stream_t *)&u->pipe, &b, 1, write_done);
    if (rc < 0) {
        free(o);
        free(w);
        up_fail(u, rc);
    }
}

static struct gw_out *pack(uint64_t req_id, nf_envelope *env, int *rc)
{
    env->request_id = req_id;
    size_t n = nf_frame_size(env);
    struct gw_out *o = malloc(sizeof(*o) + n);
    if (!o) {
        *rc = -ENOMEM;
        return NULL;
    }
    o->next = NULL;
    *rc = nf_frame_encode(env, 0, o->data, n, &o->len);
    if (*rc < 0) {
        free(o);
        return NULL;
    }
    return o;
}

int gw_up_send(struct gw_up *u, uint64_t req_id, nf_envelope *env)
{
    if (u->closing)
        return -ENOTCONN;
    int rc;
    struct gw_out *o = pack(req_id, env, &rc);
    if (!o)
        return rc;
    if (u->connected) {
        up_write(u, o);
        return 0;
    }
    if (u->q_tail)
        u->q_tail->next = o;
    else
        u->q_head = o;
    u->q_tail = o;
    return 0;
}

static void alloc_cb(uv_handle_t *h, size_t suggested, uv_buf_t *buf)
{
    (void)suggested;
    (void)h;
    static char rbuf[65536]; /* one loop thread; read_cb consumes it before the next read */
    *buf = uv_buf_init(rbuf, sizeof(rbuf));
}

/* The Hello reply: an Error (refused) or a Hello with our protocol major. */
static int check_hello(const nf_envelope *env)
{
    if (env->msg_case == NANOFLOW__ENVELOPE__MSG_HELLO && env->hello &&
        env->hello->protocol_major == NF_PROTO_MAJOR)
        return 0;
    return env->msg_case == NANOFLOW__ENVELOPE__MSG_ERROR ? env->error->code : NF_EPROTO;
}

static void read_cb(uv_stream_t *s, ssize_t n, const uv_buf_t *buf)
{
    struct gw_up *u = (struct gw_up *)s;
    if (u->closing)
        return;
    if (n < 0) {
        up_fail(u, n == UV_EOF ? -ECONNRESET : (int)n);
        return;
    }
    if (n == 0)
        return;
    int rc = nf_frame_dec_feed(&u->dec, buf->base, (size_t)n);
    while (rc >= 0 && !u->closing) {
        nf_envelope *env = NULL;
        rc = nf_frame_dec_next(&u->dec, &env);
        if (rc <= 0)
            break;
        if (!u->hello_ok) {
            int hr = check_hello(env);
            nf_envelope_free(env);
            if (hr < 0) {
                up_fail(u, hr);
                return;
            }
            u->hello_ok = true;
            continue;
        }
        u->on_msg(u, env, u->ud);
        nf_envelope_free(env);
    }
    if (rc < 0)
        up_fail(u, rc);
}

/* The server must run as our uid or root, as nf_client_connect checks: a socket planted by
 * another user must not receive prompts. */
static int check_peer(struct gw_up *u)
{
    uv_os_fd_t fd;
    if (uv_fileno((uv_handle_t *)&u->pipe, &fd) < 0)
        return -EBADF;
    struct ucred cr;
    socklen_t len = sizeof(cr);
    if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cr, &len) < 0)
        return -errno;
    if (cr.uid != 0 && cr.uid != geteuid())
        return -EPERM;
    return 0;
}

static void connect_cb(uv_connect_t *req, int status)
{
    struct gw_up *u = req->data;
    if (u->closing)
        return;
    if (status < 0) {
        up_fail(u, status);
        return;
    }
    int rc = check_peer(u);
    if (rc < 0) {
        nf_log(NF_LOG_ERROR, "upstream socket: %s", nf_strerror(rc));
        up_fail(u, rc);
        return;
    }
    u->connected = true;
    rc = uv_read_start((uv_stream_t *)&u->pipe, alloc_cb, read_cb);
    if (rc < 0) {
        up_fail(u, rc);
        return;
    }
    while (u->q_head && !u->closing) {
        struct gw_out *o = u->q_head;
        u->q_head = o->next;
        if (!u->q_head)
            u->q_tail = NULL;
        o->next = NULL;
        up_write(u, o);
    }
}

int gw_up_open(struct gw *g, const char *role, uint64_t req_id, nf_envelope *first,
               gw_up_msg_cb on_msg, gw_up_close_cb on_close, void *ud, struct gw_up **out)
{
    struct gw_up *u = calloc(1, sizeof(*u));
    if (!u)
        return -ENOMEM;
    u->g = g;
    u->on_msg = on_msg;
    u->ud = ud;
    nf_frame_dec_init(&u->dec, GW_UP_MAX_FRAME);
    int rc = uv_pipe_init(g->loop, &u->pipe, 0);
    if (rc < 0) {
        free(u);
        return rc;
    }
    nf_envelope hello;
    Nanoflow__Hello h;
    nanoflow__envelope__init(&hello);
    nanoflow__hello__init(&h);
    h.protocol_major = NF_PROTO_MAJOR;
    h.protocol_minor = NF_PROTO_MINOR;
    h.role = "ctl";
    h.version = NF_VERSION;
    h.pid = (uint32_t)getpid();
    hello.msg_case = NANOFLOW__ENVELOPE__MSG_HELLO;
    hello.hello = &h;
    if ((rc = gw_up_send(u, 0, &hello)) < 0 || (rc = gw_up_send(u, req_id, first)) < 0) {
        up_fail(u, rc);
        return rc; /* on_close is not set yet: no callback */
    }
    char path[PATH_MAX + 64];
    nf_rundir_path(g->dir, role, "sock", path, sizeof(path));
    u->creq.data = u;
    uv_pipe_connect(&u->creq, &u->pipe, path, connect_cb);
    u->on_close = on_close;
    *out = u;
    return 0;
}
