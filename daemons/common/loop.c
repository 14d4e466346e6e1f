/* loop.c - the control loop every daemon runs: the server on ROLE.sock, SIGTERM/SIGINT, the
 * memory gauge's timer, Stats and Shutdown, and the one shutdown sequence. */
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <unistd.h>

#include "daemon.h"
#include "nf_err.h"
#include "stack.h"

/* How long the loop goes on after a shutdown began, so that the Shutdown reply leaves before
 * the server closes its connections. */
#define NF_LINGER_MS 50

static void close_handle(uv_handle_t *h, void *arg)
{
    (void)arg;
    if (!uv_is_closing(h))
        uv_close(h, NULL);
}

/* After the Shutdown reply had a loop turn to go out: joins the daemon's threads that send
 * frames (they must be gone before the server is), stops serving and closes every handle left,
 * the daemon's own included, so that uv_run returns. */
static void on_stop_timer(uv_timer_t *t)
{
    struct nf_daemon_loop *dl = t->data;
    if (dl->hooks->stop)
        dl->hooks->stop(dl);
    nf_server_stop(dl->srv);
    dl->srv = NULL;
    uv_walk(&dl->loop, close_handle, NULL);
}

void nf_daemon_loop_shutdown(struct nf_daemon_loop *dl, const char *why)
{
    if (dl->stopping)
        return;
    dl->stopping = true;
    nf_log(NF_LOG_INFO, "shutting down (%s)", why);
    nf_server_set_health(dl->srv, NANOFLOW__HEALTH__STATE__STOPPING);
    /* As every daemon on Shutdown (stack.md): stop every loop of the stack and wake it. */
    nf_stack_stop(dl->st, dl->ready_bit);
    if (dl->hooks->shutdown)
        dl->hooks->shutdown(dl);
    uv_timer_start(&dl->stop_timer, on_stop_timer, NF_LINGER_MS, 0);
}

static void on_mem_timer(uv_timer_t *t)
{
    struct nf_daemon_loop *dl = t->data;
    dl->hooks->mem(dl);
}

/* Every NF_LIVE_CHECK_MS: the stack stopped by another daemon stops us too; another daemon
 * that died is reported once through hooks->dead, then marked for every process. */
static void on_live_timer(uv_timer_t *t)
{
    struct nf_daemon_loop *dl = t->data;
    if (dl->stopping)
        return;
    /* Acquire pairs with the release store of stop in nf_stack_stop(). */
    if (atomic_load_explicit(&dl->st->sync->stop, memory_order_acquire)) {
        nf_daemon_loop_shutdown(dl, "the stack is stopping");
        return;
    }
    uint32_t fresh = nf_live_check(dl->st) & ~dl->ready_bit & ~dl->dead_seen;
    if (!fresh)
        return;
    char msg[256];
    nf_live_message(dl->st, fresh, msg, sizeof(msg));
    nf_log(NF_LOG_ERROR, "%s", msg);
    dl->dead_seen |= fresh;
    if (dl->hooks->dead)
        dl->hooks->dead(dl, fresh, msg);
    nf_live_mark(dl->st, fresh);
}

static void on_request(struct nf_server *s, uint64_t conn, nf_envelope *env, void *ud)
{
    struct nf_daemon_loop *dl = ud;
    const uint64_t req = env->request_id;
    switch (env->msg_case) {
    case NANOFLOW__ENVELOPE__MSG_STATS_REQUEST: {
        /* The counters live in the region (the numbers any process sees); only the private
         * memory gauge is refreshed first. */
        if (dl->hooks->mem)
            dl->hooks->mem(dl);
        int rc = dl->hooks->stats ? dl->hooks->stats(dl, conn, req)
                                  : nf_stats_reply(s, conn, req, dl->st, dl->role);
        if (rc < 0 && rc != -ENOTCONN)
            nf_server_send_error(s, conn, req, rc, "stats: %s", nf_strerror(rc));
        return;
    }
    case NANOFLOW__ENVELOPE__MSG_SHUTDOWN:
        nf_server_send_stopping(s, conn, req);
        nf_daemon_loop_shutdown(dl, "Shutdown request");
        return;
    default:
        if (dl->hooks->request && dl->hooks->request(dl, conn, env))
            return;
        nf_server_send_error(s, conn, req, NF_EPROTO, "the %s does not handle this message (%d)",
                             dl->role, (int)env->msg_case);
    }
}

static void on_close(struct nf_server *s, uint64_t conn, void *ud)
{
    (void)s;
    struct nf_daemon_loop *dl = ud;
    if (dl->hooks->conn_closed)
        dl->hooks->conn_closed(dl, conn);
}

static void on_signal(uv_signal_t *h, int signum)
{
    nf_daemon_loop_shutdown(h->data, signum == SIGTERM ? "SIGTERM" : "SIGINT");
}

int nf_daemon_loop_start(struct nf_daemon_loop *dl, const char *role, const char *dir,
                         struct nf_stack *st, unsigned ready_bit,
                         const struct nf_daemon_hooks *hooks, void *ud, char *err, size_t errlen)
{
    dl->role = role;
    dl->st = st;
    dl->ready_bit = ready_bit;
    dl->hooks = hooks;
    dl->ud = ud;
    int rc = uv_loop_init(&dl->loop);
    if (rc < 0)
        return nf_errf(err, errlen, rc, "uv_loop_init: %s", uv_strerror(rc));
    dl->loop_init = true;
    nf_rundir_path(dir, role, "sock", dl->sock, sizeof(dl->sock));
    rc = nf_server_start(&dl->srv, &dl->loop, dl->sock, role, on_request, on_close, dl);
    if (rc < 0) {
        dl->srv = NULL;
        return nf_errf(err, errlen, rc, "cannot serve %s: %s", dl->sock, nf_strerror(rc));
    }
    uv_signal_init(&dl->loop, &dl->sigterm);
    uv_signal_init(&dl->loop, &dl->sigint);
    uv_timer_init(&dl->loop, &dl->stop_timer);
    dl->sigterm.data = dl->sigint.data = dl->stop_timer.data = dl;
    uv_signal_start(&dl->sigterm, on_signal, SIGTERM);
    uv_signal_start(&dl->sigint, on_signal, SIGINT);
    nf_live_register(st, ready_bit);
    uv_timer_init(&dl->loop, &dl->live_timer);
    dl->live_timer.data = dl;
    uv_timer_start(&dl->live_timer, on_live_timer, NF_LIVE_CHECK_MS, NF_LIVE_CHECK_MS);
    if (hooks->mem) {
        uv_timer_init(&dl->loop, &dl->mem_timer);
        dl->mem_timer.data = dl;
        uv_timer_start(&dl->mem_timer, on_mem_timer, 0, 1000);
    }
    return 0;
}

void nf_daemon_loop_ready(struct nf_daemon_loop *dl)
{
    atomic_fetch_or(&dl->st->sync->ready_mask, dl->ready_bit);
    nf_server_set_health(dl->srv, NANOFLOW__HEALTH__STATE__READY);
}

void nf_daemon_loop_run(struct nf_daemon_loop *dl)
{
    uv_run(&dl->loop, UV_RUN_DEFAULT);
}

void nf_daemon_loop_close(struct nf_daemon_loop *dl)
{
    if (dl->st && dl->st->sync)
        nf_live_unregister(dl->st, dl->ready_bit);
    if (dl->srv) { /* startup failed after the server started */
        nf_server_stop(dl->srv);
        dl->srv = NULL;
    }
    if (dl->loop_init) {
        uv_walk(&dl->loop, close_handle, NULL);
        uv_run(&dl->loop, UV_RUN_DEFAULT);
        uv_loop_close(&dl->loop);
        dl->loop_init = false;
    }
}
