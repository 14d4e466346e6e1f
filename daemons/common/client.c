/* client.c - the blocking control client (nanoflowctl, tests): connect + Hello, send, receive. */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include "daemon.h"
#include "nf_err.h"
#include "nf_time.h"

#ifndef NF_VERSION
#define NF_VERSION "0.0.0"
#endif

/* Milliseconds left until deadline (-1: no deadline), never below 0. */
static int left_ms(long long deadline)
{
    if (deadline < 0)
        return -1;
    long long l = deadline - nf_now_ms();
    return l < 0 ? 0 : l > INT_MAX ? INT_MAX : (int)l;
}

static int wait_fd(int fd, short ev, long long deadline)
{
    for (;;) {
        struct pollfd p = {.fd = fd, .events = ev};
        int n = poll(&p, 1, left_ms(deadline));
        if (n > 0)
            return 0;
        if (n == 0)
            return -ETIMEDOUT;
        if (errno != EINTR)
            return -errno;
        if (deadline >= 0 && left_ms(deadline) == 0)
            return -ETIMEDOUT;
    }
}

/* Reads exactly n bytes. Returns 1, 0 on EOF before the first byte, or a negative code
 * (-EPIPE for EOF in the middle, -ETIMEDOUT, or a read error). */
static int read_full(int fd, void *buf, size_t n, long long deadline)
{
    size_t got = 0;
    while (got < n) {
        ssize_t r = recv(fd, (char *)buf + got, n - got, MSG_DONTWAIT);
        if (r > 0) {
            got += (size_t)r;
            continue;
        }
        if (r == 0)
            return got == 0 ? 0 : -EPIPE;
        if (errno == EINTR)
            continue;
        if (errno != EAGAIN && errno != EWOULDBLOCK)
            return -errno;
        struct pollfd p = {.fd = fd, .events = POLLIN};
        int pn = poll(&p, 1, left_ms(deadline));
        if (pn == 0)
            return -ETIMEDOUT;
        /* A signal (Ctrl-C in `gen`) must not drop half a frame: keep reading; the caller
         * checks its flags between whole messages. */
        if (pn < 0 && errno != EINTR)
            return -errno;
    }
    return 1;
}

int nf_client_send(int fd, uint64_t req_id, nf_envelope *env)
{
    env->request_id = req_id;
    size_t n = nf_frame_size(env);
    uint8_t stackbuf[4096];
    uint8_t *buf = n <= sizeof(stackbuf) ? stackbuf : malloc(n);
    if (!buf)
        return -ENOMEM;
    size_t len;
    int rc = nf_frame_encode(env, 0, buf, n, &len);
    size_t off = 0;
    long long deadline = nf_now_ms() + 30000; /* a daemon that stops reading for 30 s is stuck */
    while (rc == 0 && off < len) {
        ssize_t w = send(fd, buf + off, len - off, MSG_NOSIGNAL | MSG_DONTWAIT);
        if (w > 0) {
            off += (size_t)w;
        } else if (w < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
            rc = wait_fd(fd, POLLOUT, deadline);
        } else if (w < 0 && errno != EINTR) {
            rc = -errno;
        }
    }
    if (buf != stackbuf)
        free(buf);
    return rc;
}

int nf_client_recv(int fd, nf_envelope **out, int timeout_ms)
{
    *out = NULL;
    long long deadline = timeout_ms < 0 ? -1 : nf_now_ms() + timeout_ms;
    uint8_t hdr[NF_FRAME_HDR];
    int rc = read_full(fd, hdr, sizeof(hdr), deadline);
    if (rc <= 0)
        return rc;
    uint32_t plen =
        (uint32_t)hdr[0] | (uint32_t)hdr[1] << 8 | (uint32_t)hdr[2] << 16 | (uint32_t)hdr[3] << 24;
    if (plen > NF_FRAME_MAX_DEFAULT)
        return -EMSGSIZE;
    uint8_t *buf = malloc(plen ? plen : 1);
    if (!buf)
        return -ENOMEM;
    rc = read_full(fd, buf, plen, deadline);
    if (rc == 0 && plen > 0)
        rc = -EPIPE;
    if (rc < 0) {
        free(buf);
        return rc;
    }
    nf_envelope *env = nanoflow__envelope__unpack(NULL, plen, buf);
    free(buf);
    if (!env)
        return NF_EPROTO;
    *out = env;
    return 1;
}

/* The directory part of path, for messages. */
static void dir_of(const char *path, char *out, size_t len)
{
    snprintf(out, len, "%s", path);
    char *slash = strrchr(out, '/');
    if (slash && slash != out)
        *slash = '\0';
    else if (slash)
        slash[1] = '\0';
    else
        snprintf(out, len, ".");
}

int nf_client_peer_pid(const char *sock_path, char *err, size_t errlen)
{
    struct sockaddr_un a = {.sun_family = AF_UNIX};
    if (strlen(sock_path) >= sizeof(a.sun_path))
        return nf_errf(err, errlen, -ENAMETOOLONG, "socket path too long: %s", sock_path);
    memcpy(a.sun_path, sock_path, strlen(sock_path) + 1);
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    if (fd < 0)
        return nf_errf(err, errlen, -errno, "socket: %s", strerror(errno));
    /* The listener's credentials come with the connection itself: no need for the server to
     * accept or answer (a stopped or hung daemon is identified too). */
    int rc = 0;
    struct ucred cred;
    socklen_t cl = sizeof(cred);
    if (connect(fd, (struct sockaddr *)&a, sizeof(a)) < 0)
        rc = nf_errf(err, errlen, -errno, "cannot connect to %s: %s", sock_path, strerror(errno));
    else if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &cl) < 0)
        rc = nf_errf(err, errlen, -errno, "%s: cannot identify the server: %s", sock_path,
                     strerror(errno));
    else if (cred.uid != geteuid() && cred.uid != 0)
        rc = nf_errf(err, errlen, -EPERM, "%s is served by uid %u (pid %d), not by uid %u or root",
                     sock_path, (unsigned)cred.uid, (int)cred.pid, (unsigned)geteuid());
    else
        rc = (int)cred.pid;
    close(fd);
    return rc;
}

int nf_client_connect(const char *sock_path, int timeout_ms, char *err, size_t errlen)
{
    struct sockaddr_un a = {.sun_family = AF_UNIX};
    if (strlen(sock_path) >= sizeof(a.sun_path)) {
        snprintf(err, errlen, "socket path too long: %s", sock_path);
        return -ENAMETOOLONG;
    }
    memcpy(a.sun_path, sock_path, strlen(sock_path) + 1);
    long long deadline = timeout_ms < 0 ? -1 : nf_now_ms() + timeout_ms;
    char dir[PATH_MAX];
    dir_of(sock_path, dir, sizeof(dir));
    int fd = -1, rc;
    for (;;) {
        fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
        if (fd < 0) {
            rc = -errno;
            snprintf(err, errlen, "socket: %s", strerror(errno));
            return rc;
        }
        if (connect(fd, (struct sockaddr *)&a, sizeof(a)) == 0)
            break;
        rc = -errno;
        close(fd);
        fd = -1;
        if (rc == -ENOENT || rc == -ECONNREFUSED) {
            snprintf(err, errlen, "no stack running in %s (%s: %s)", dir, sock_path, strerror(-rc));
            return rc;
        }
        /* A full backlog (EAGAIN on Unix sockets): retry until the deadline. */
        if (rc != -EAGAIN && rc != -EINTR) {
            snprintf(err, errlen, "cannot connect to %s: %s", sock_path, strerror(-rc));
            return rc;
        }
        if (deadline >= 0 && left_ms(deadline) == 0) {
            snprintf(err, errlen, "cannot connect to %s: timed out after %d ms", sock_path,
                     timeout_ms);
            return -ETIMEDOUT;
        }
        struct timespec ts = {0, 5 * 1000 * 1000};
        nanosleep(&ts, NULL);
    }
    /* Nothing (not even Hello) goes to a server run by another user: whoever made the socket
     * would read our prompts and answer them. */
    struct ucred cred;
    socklen_t cl = sizeof(cred);
    if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &cl) < 0) {
        rc = -errno;
        snprintf(err, errlen, "%s: cannot identify the server: %s", sock_path, strerror(-rc));
        close(fd);
        return rc;
    }
    if (cred.uid != geteuid() && cred.uid != 0) {
        snprintf(err, errlen,
                 "%s is served by uid %u (pid %d), not by uid %u or root; refusing to talk to it",
                 sock_path, (unsigned)cred.uid, (int)cred.pid, (unsigned)geteuid());
        close(fd);
        return -EPERM;
    }
    nf_envelope env;
    Nanoflow__Hello h;
    nanoflow__envelope__init(&env);
    nanoflow__hello__init(&h);
    h.protocol_major = NF_PROTO_MAJOR;
    h.protocol_minor = NF_PROTO_MINOR;
    h.role = (char *)"ctl";
    h.version = (char *)NF_VERSION;
    h.pid = (uint32_t)getpid();
    env.msg_case = NANOFLOW__ENVELOPE__MSG_HELLO;
    env.hello = &h;
    int sent = nf_client_send(fd, 0, &env);
    /* A server that refuses us (too many connections) writes an Error and closes before our
     * Hello arrives: read that reason rather than report a broken pipe. */
    nf_envelope *r = NULL;
    for (;;) {
        rc = nf_client_recv(fd, &r, sent < 0 ? 0 : left_ms(deadline));
        if (rc != -EINTR)
            break;
    }
    if (sent < 0 && (rc <= 0 || r->msg_case != NANOFLOW__ENVELOPE__MSG_ERROR)) {
        nf_envelope_free(r);
        snprintf(err, errlen, "%s: sending Hello: %s", sock_path, nf_strerror(sent));
        close(fd);
        return sent;
    }
    if (rc <= 0) {
        snprintf(err, errlen, "%s: no Hello reply: %s", sock_path,
                 rc == 0 ? "connection closed" : nf_strerror(rc));
        close(fd);
        return rc == 0 ? -ECONNRESET : rc;
    }
    if (r->msg_case == NANOFLOW__ENVELOPE__MSG_ERROR) {
        snprintf(err, errlen, "%s refused the connection: %s", sock_path,
                 r->error->message ? r->error->message : "");
        rc = r->error->code < 0 ? r->error->code : NF_EPROTO;
    } else if (r->msg_case != NANOFLOW__ENVELOPE__MSG_HELLO) {
        snprintf(err, errlen, "%s: expected Hello, got message %d", sock_path, (int)r->msg_case);
        rc = NF_EPROTO;
    } else if (r->hello->protocol_major != NF_PROTO_MAJOR) {
        snprintf(err, errlen, "%s speaks protocol %u.%u, this client %d.%d", sock_path,
                 r->hello->protocol_major, r->hello->protocol_minor, NF_PROTO_MAJOR,
                 NF_PROTO_MINOR);
        rc = NF_EPROTO;
    } else {
        rc = 0;
    }
    nf_envelope_free(r);
    if (rc < 0) {
        close(fd);
        return rc;
    }
    return fd;
}
