/* test_server_flood.c - a real nanoflow-fetcher under client floods (issue 9, item 2): Stats
 * requests pipelined and never read, connect/close churn, half-sent 1 MiB frames, more
 * connections than the cap and an idle one. After each, the daemon's anonymous RSS stays
 * within a few MB of where it started and a normal client is still served.
 *
 * Counts are scaled to keep the test to seconds: 50k pipelined requests (without the output
 * bound they grew the fetcher by ~70 MB), 10,000 connect/close cycles, 200 half frames. The
 * fetcher runs with NANOFLOW_FRAME_TIMEOUT_S=2 and NANOFLOW_IDLE_TIMEOUT_S=4 so the timeouts
 * fire within the test. */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <poll.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>

#include "daemon.h"
#include "nf_err.h"
#include "nf_time.h"
#include "nft.h"
#include "stack.h"

#define FETCHER    NF_BUILD_DIR "/daemons/nanoflow-fetcher"
#define MODEL_GGUF NF_SHARED_DIR "/models/stories260K.gguf"
#define SLACK_KB   (4 * 1024) /* "within a few MB" of the start */

/* Under a sanitizer freed memory sits in its quarantine, so RSS says nothing about what the
 * server keeps: the bounds are printed but not checked there (the behaviour still is). */
#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
#define RSS_CHECKED 0
#else
#define RSS_CHECKED 1
#endif
#define assert_rss(cond) assert_true(!RSS_CHECKED || (cond))

static char g_dir[PATH_MAX - 64];
static char g_sock[108], g_log[PATH_MAX];
static pid_t g_pid;
static long g_base_kb; /* the fetcher's RssAnon once it serves */

/* RssAnon of pid in kB (-1 when it cannot be read). */
static long rss_anon_kb(pid_t pid)
{
    char path[64], line[256];
    snprintf(path, sizeof(path), "/proc/%d/status", (int)pid);
    FILE *f = fopen(path, "r");
    if (!f)
        return -1;
    long kb = -1;
    while (fgets(line, sizeof(line), f))
        if (sscanf(line, "RssAnon: %ld kB", &kb) == 1)
            break;
    fclose(f);
    return kb;
}

/* Fails the test when the fetcher's RssAnon is more than slack_kb above the start. */
static void expect_rss_near_base(const char *when, long slack_kb)
{
    long kb = rss_anon_kb(g_pid);
    print_message("%s: RssAnon %ld kB (start %ld kB)\n", when, kb, g_base_kb);
    if (kb < 0 || (RSS_CHECKED && kb > g_base_kb + slack_kb))
        fail_msg("%s: RssAnon %ld kB, more than %ld kB above the start (%ld kB)", when, kb,
                 slack_kb, g_base_kb);
}

static int connect_raw(void)
{
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    struct sockaddr_un a = {.sun_family = AF_UNIX};
    memcpy(a.sun_path, g_sock, sizeof(g_sock));
    if (fd < 0 || connect(fd, (struct sockaddr *)&a, sizeof(a)) < 0) {
        if (fd >= 0)
            close(fd);
        return -1;
    }
    return fd;
}

/* One packed StatsRequest frame into buf; returns its length. */
static size_t stats_frame(uint8_t *buf, size_t cap, uint64_t req_id)
{
    nf_envelope env;
    Nanoflow__StatsRequest sr;
    nanoflow__envelope__init(&env);
    nanoflow__stats_request__init(&sr);
    env.msg_case = NANOFLOW__ENVELOPE__MSG_STATS_REQUEST;
    env.stats_request = &sr;
    env.request_id = req_id;
    size_t len = 0;
    assert_int_equal(nf_frame_encode(&env, 0, buf, cap, &len), 0);
    return len;
}

/* A normal client: connect, Stats, the reply, close. */
static void expect_served(void)
{
    char err[512];
    int fd = nf_client_connect(g_sock, 5000, err, sizeof(err));
    if (fd < 0)
        fail_msg("connect after the flood: %s", err);
    uint8_t buf[64];
    size_t len = stats_frame(buf, sizeof(buf), 9);
    assert_int_equal(write(fd, buf, len), (ssize_t)len);
    nf_envelope *r = NULL;
    assert_int_equal(nf_client_recv(fd, &r, 5000), 1);
    assert_int_equal(r->msg_case, NANOFLOW__ENVELOPE__MSG_STATS);
    assert_int_equal(r->request_id, 9);
    nf_envelope_free(r);
    close(fd);
}

/* True when the log holds pattern. */
static bool log_has(const char *pattern)
{
    FILE *f = fopen(g_log, "r");
    if (!f)
        return false;
    char line[1024];
    bool found = false;
    while (!found && fgets(line, sizeof(line), f))
        found = strstr(line, pattern) != NULL;
    fclose(f);
    return found;
}

/* Waits until fd is closed by the server (recv 0 or an error), up to ms. */
static bool closed_within(int fd, int ms)
{
    double t0 = nf_now_s();
    uint8_t b[65536];
    do {
        struct pollfd p = {.fd = fd, .events = POLLIN};
        if (poll(&p, 1, ms > 0 ? 100 : 0) > 0) {
            ssize_t n = recv(fd, b, sizeof(b), MSG_DONTWAIT);
            if (n == 0 || (n < 0 && errno != EAGAIN && errno != EINTR))
                return true;
        }
    } while ((nf_now_s() - t0) * 1000.0 < ms);
    return false;
}

/* 1. 50k Stats requests pipelined on one connection whose replies are never read. */
static void test_unread_replies(void **state)
{
    (void)state;
    int fd = connect_raw();
    assert_true(fd >= 0);
    uint8_t one[64], chunk[65536];
    size_t flen = stats_frame(one, sizeof(one), 1);
    size_t per = sizeof(chunk) / flen;
    for (size_t i = 0; i < per; i++)
        memcpy(chunk + i * flen, one, flen);
    const size_t total = 50000 * flen;
    size_t sent = 0, off = 0;
    long peak = 0;
    double t0 = nf_now_s(), last_progress = t0;
    while (sent < total && nf_now_s() - last_progress < 1.0 && nf_now_s() - t0 < 10.0) {
        size_t n = per * flen - off;
        if (n > total - sent)
            n = total - sent;
        ssize_t w = send(fd, chunk + off, n, MSG_DONTWAIT | MSG_NOSIGNAL);
        if (w > 0) {
            sent += (size_t)w;
            off = (off + (size_t)w) % (per * flen);
            last_progress = nf_now_s();
        } else {
            usleep(2000);
        }
        long kb = rss_anon_kb(g_pid);
        if (kb > peak)
            peak = kb;
    }
    print_message("sent %zu of %zu request bytes (%zu requests) before the server stopped "
                  "reading; peak RssAnon %ld kB\n",
                  sent, total, sent / flen, peak);
    assert_true(sent < total); /* the daemon stopped reading: its replies were not taken */
    assert_rss(peak <= g_base_kb + SLACK_KB);
    expect_rss_near_base("unread replies, connection open", SLACK_KB);
    close(fd);
    usleep(1500 * 1000); /* a sweep: closes counted, heap trimmed */
    expect_rss_near_base("unread replies, after close", SLACK_KB);
    expect_served();
}

/* 2. 10,000 connect/close cycles, half of them with a Hello exchanged. */
static void test_churn(void **state)
{
    (void)state;
    long peak = 0;
    for (int i = 0; i < 10000; i++) {
        if (i % 2) {
            char err[512];
            int fd = nf_client_connect(g_sock, 5000, err, sizeof(err));
            if (fd < 0)
                fail_msg("cycle %d: %s", i, err);
            close(fd);
        } else {
            int fd = connect_raw();
            if (fd >= 0)
                close(fd);
        }
        if (i % 500 == 0) {
            long kb = rss_anon_kb(g_pid);
            peak = kb > peak ? kb : peak;
        }
    }
    print_message("10000 cycles: peak RssAnon %ld kB\n", peak);
    assert_rss(peak <= g_base_kb + SLACK_KB);
    usleep(1500 * 1000);
    expect_rss_near_base("churn, after", SLACK_KB);
    expect_served();
}

/* 3. 200 connections each announcing a 1 MiB frame and sending half of it, then stalling. */
static void test_half_frames(void **state)
{
    (void)state;
    enum { N = 200, FRAME = 1 << 20 };
    int fds[N];
    size_t sent[N];
    static uint8_t payload[FRAME / 2 + 4];
    memset(payload, 0x55, sizeof(payload));
    payload[0] = 0, payload[1] = 0, payload[2] = 0x10, payload[3] = 0; /* length 1 MiB */
    for (int i = 0; i < N; i++) {
        fds[i] = connect_raw();
        assert_true(fds[i] >= 0);
        sent[i] = 0;
    }
    /* The worst case first: every connection's first piece is already waiting when the
     * server wakes (on a busy machine it does not run between the client's sends). */
    assert_int_equal(kill(g_pid, SIGSTOP), 0);
    for (int i = 0; i < N; i++) {
        ssize_t w = send(fds[i], payload, sizeof(payload), MSG_DONTWAIT | MSG_NOSIGNAL);
        sent[i] = w > 0 ? (size_t)w : 0;
    }
    assert_int_equal(kill(g_pid, SIGCONT), 0);
    long peak = 0;
    for (int k = 0; k < 15; k++) { /* the server reads what waits: watch it do so */
        usleep(20 * 1000);
        long kb = rss_anon_kb(g_pid);
        peak = kb > peak ? kb : peak;
    }
    double t0 = nf_now_s();
    bool progress = true;
    while (progress && nf_now_s() - t0 < 1.5) {
        progress = false;
        for (int i = 0; i < N; i++) {
            if (sent[i] == sizeof(payload))
                continue;
            ssize_t w = send(fds[i], payload + sent[i], sizeof(payload) - sent[i],
                             MSG_DONTWAIT | MSG_NOSIGNAL);
            if (w > 0) {
                sent[i] += (size_t)w;
                progress = true;
            }
        }
        long kb = rss_anon_kb(g_pid);
        peak = kb > peak ? kb : peak;
    }
    size_t all = 0;
    for (int i = 0; i < N; i++)
        all += sent[i];
    print_message("%d half frames: %zu bytes sent; peak RssAnon %ld kB\n", N, all, peak);
    /* Every stalled frame is dropped by the frame timeout (2 s; paused ones restart it). */
    int n_closed = 0;
    bool done[N] = {false};
    for (double t1 = nf_now_s(); n_closed < N && nf_now_s() - t1 < 10.0;) {
        for (int i = 0; i < N; i++)
            if (!done[i] && closed_within(fds[i], 0)) {
                done[i] = true;
                n_closed++;
            }
        usleep(50 * 1000);
    }
    for (int i = 0; i < N; i++)
        close(fds[i]);
    print_message("%d of %d half-frame connections dropped by the server\n", n_closed, N);
    /* Checked once the connections are closed, so a failure does not leave them to the next
     * test. The receive budget (4 MiB) plus one frame may be held while they are pending. */
    assert_rss(peak <= g_base_kb + 2 * SLACK_KB);
    assert_int_equal(n_closed, N);
    if (!log_has("half-sent")) {
        char cmd[PATH_MAX + 32];
        snprintf(cmd, sizeof(cmd), "tail -n 8 '%s'", g_log);
        if (system(cmd) != 0)
            print_message("cannot show %s\n", g_log);
        fail_msg("no line about half-sent frames in %s", g_log);
    }
    usleep(1500 * 1000);
    expect_rss_near_base("half frames, after", SLACK_KB);
    expect_served();
}

/* 4. More connections than the cap (256): the rest are refused with a reason, and logged. */
static void test_conn_cap(void **state)
{
    (void)state;
    enum { N = 300 };
    int fds[N], n_ok = 0, n_refused = 0;
    char err[512];
    for (int i = 0; i < N; i++) {
        fds[i] = nf_client_connect(g_sock, 5000, err, sizeof(err));
        if (fds[i] >= 0)
            n_ok++;
        else if (strstr(err, "too many connections"))
            n_refused++;
        else
            print_message("connection %d: %s\n", i, err);
    }
    print_message("%d connections: %d served, %d refused (%s)\n", N, n_ok, n_refused, err);
    long kb = rss_anon_kb(g_pid);
    for (int i = 0; i < N; i++)
        if (fds[i] >= 0)
            close(fds[i]);
    assert_int_equal(n_ok, 256);
    assert_int_equal(n_refused, N - 256);
    assert_true(log_has("refusing a connection: 256 connections open"));
    print_message("at the cap: RssAnon %ld kB (start %ld kB)\n", kb, g_base_kb);
    assert_rss(kb >= 0 && kb <= g_base_kb + SLACK_KB);
    usleep(300 * 1000);
    expect_served();
}

/* 5. A connection that says Hello and then nothing is closed after the idle timeout (4 s). */
static void test_idle(void **state)
{
    (void)state;
    char err[512];
    int fd = nf_client_connect(g_sock, 5000, err, sizeof(err));
    assert_true(fd >= 0);
    assert_false(closed_within(fd, 2500));
    assert_true(closed_within(fd, 5000));
    close(fd);
    assert_true(log_has("idle for 4 s"));
    expect_served();
}

static int start(void **state)
{
    (void)state;
    if (access(FETCHER, X_OK) != 0 || access(MODEL_GGUF, R_OK) != 0) {
        printf("skip: needs %s and %s\n", FETCHER, MODEL_GGUF);
        return -1;
    }
    snprintf(g_dir, sizeof(g_dir), "/tmp/nf-test-flood-XXXXXX");
    if (!mkdtemp(g_dir))
        return -1;
    char nft[PATH_MAX], run[PATH_MAX], err[512], ram[32];
    snprintf(nft, sizeof(nft), "%s/s.nft", g_dir);
    snprintf(run, sizeof(run), "%s/run", g_dir);
    snprintf(g_log, sizeof(g_log), "%s/fetcher.out", g_dir);
    nf_rundir_path(run, NF_ROLE_FETCHER, "sock", g_sock, sizeof(g_sock));
    struct nf_nft_convert_opts o = {0};
    if (nf_nft_convert(MODEL_GGUF, nft, &o, err, sizeof(err)) < 0) {
        fprintf(stderr, "convert: %s\n", err);
        return -1;
    }
    struct nf_nft *f;
    struct nf_stack_plan plan;
    if (nf_nft_open(&f, nft, false, err, sizeof(err)) < 0)
        return -1;
    nf_stack_plan(f, 4096, 0, 1, &plan, err, sizeof(err));
    snprintf(ram, sizeof(ram), "%llu", (unsigned long long)plan.min_budget * 2);
    nf_nft_close(f);
    g_pid = fork();
    if (g_pid == 0) {
        int fd = open(g_log, O_WRONLY | O_CREAT | O_TRUNC, 0600);
        if (fd >= 0) {
            dup2(fd, 1);
            dup2(fd, 2);
        }
        setenv("NANOFLOW_FRAME_TIMEOUT_S", "2", 1);
        setenv("NANOFLOW_IDLE_TIMEOUT_S", "4", 1);
        unsetenv("NANOFLOW_MAX_CONNS");
        execl(FETCHER, FETCHER, "--foreground", "--run-dir", run, "--model", nft, "--ram", ram,
              (char *)NULL);
        _exit(127);
    }
    for (int i = 0; i < 1000; i++) { /* up to 10 s */
        int fd = nf_client_connect(g_sock, 1000, err, sizeof(err));
        if (fd >= 0) {
            close(fd);
            break;
        }
        if (waitpid(g_pid, NULL, WNOHANG) == g_pid) {
            fprintf(stderr, "nanoflow-fetcher exited early, see %s\n", g_log);
            return -1;
        }
        usleep(10000);
    }
    expect_served();
    usleep(1200 * 1000);
    g_base_kb = rss_anon_kb(g_pid);
    printf("fetcher pid %d serving; RssAnon %ld kB\n", (int)g_pid, g_base_kb);
    return g_base_kb > 0 ? 0 : -1;
}

static int stop(void **state)
{
    (void)state;
    if (g_pid > 0) {
        kill(g_pid, SIGTERM);
        int st = 0;
        for (int i = 0; i < 500 && waitpid(g_pid, &st, WNOHANG) != g_pid; i++)
            usleep(10000);
        if (kill(g_pid, 0) == 0) {
            kill(g_pid, SIGKILL);
            waitpid(g_pid, NULL, 0);
        }
    }
    /* A sanitizer report from the daemon fails the group. */
    if (log_has("Sanitizer") || log_has("runtime error")) {
        fprintf(stderr, "nanoflow-fetcher reported a sanitizer error, see %s (kept)\n", g_log);
        return -1;
    }
    char cmd[PATH_MAX + 16];
    snprintf(cmd, sizeof(cmd), "rm -rf '%s'", g_dir);
    if (g_dir[0] && system(cmd) != 0)
        fprintf(stderr, "could not remove %s\n", g_dir);
    return 0;
}

int main(void)
{
    if (access(FETCHER, X_OK) != 0 || access(MODEL_GGUF, R_OK) != 0) {
        printf("skip: needs %s and %s\n", FETCHER, MODEL_GGUF);
        return 77;
    }
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_unread_replies), cmocka_unit_test(test_churn),
        cmocka_unit_test(test_half_frames),    cmocka_unit_test(test_conn_cap),
        cmocka_unit_test(test_idle),
    };
    return cmocka_run_group_tests(tests, start, stop);
}
