/* test_server.c - the daemons' control server and client in one process: Hello/Health, unknown
 * and malformed frames, oversize lengths, many clients, replies sent from another thread, and
 * the run-directory helpers (resolution, shm names, pid files). */
#include <errno.h>
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cmocka.h>

#include "daemon.h"
#include "nf_err.h"
#include "stack.h"

#define TIMEOUT_MS 10000
#define MAX_SEEN   256

/* One server on its own loop thread, plus what its callbacks saw. */
struct fixture {
    char dir[64];
    char sock[128];
    uv_loop_t loop;
    uv_async_t stop_async;
    struct nf_server *srv;
    pthread_t thread;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    uint64_t seen_conn[MAX_SEEN], seen_req[MAX_SEEN];
    int seen_case[MAX_SEEN];
    int n_seen;
    uint64_t closed[MAX_SEEN];
    int n_closed;
};

static void on_request(struct nf_server *s, uint64_t conn_id, nf_envelope *env, void *ud)
{
    struct fixture *f = ud;
    pthread_mutex_lock(&f->mu);
    if (f->n_seen < MAX_SEEN) {
        f->seen_conn[f->n_seen] = conn_id;
        f->seen_req[f->n_seen] = env->request_id;
        f->seen_case[f->n_seen] = (int)env->msg_case;
        f->n_seen++;
    }
    pthread_cond_broadcast(&f->cv);
    pthread_mutex_unlock(&f->mu);
    /* Like a daemon: a message this role does not serve gets an Error reply. */
    if (env->msg_case == NANOFLOW__ENVELOPE__MSG_LOAD_MODEL)
        nf_server_send_error(s, conn_id, env->request_id, -ENOTSUP, "LoadModel not served here");
}

static void on_close(struct nf_server *s, uint64_t conn_id, void *ud)
{
    struct fixture *f = ud;
    pthread_mutex_lock(&f->mu);
    if (f->n_closed < MAX_SEEN)
        f->closed[f->n_closed++] = conn_id;
    pthread_cond_broadcast(&f->cv);
    pthread_mutex_unlock(&f->mu);
}

static void stop_cb(uv_async_t *a)
{
    struct fixture *f = a->data;
    nf_server_stop(f->srv);
    uv_close((uv_handle_t *)a, NULL);
}

static void *loop_main(void *arg)
{
    struct fixture *f = arg;
    uv_run(&f->loop, UV_RUN_DEFAULT);
    return NULL;
}

static int setup(void **state)
{
    struct fixture *f = calloc(1, sizeof(*f));
    if (!f)
        return -1;
    snprintf(f->dir, sizeof(f->dir), "/tmp/nf-test-server-XXXXXX");
    if (!mkdtemp(f->dir)) {
        free(f);
        return -1;
    }
    nf_rundir_path(f->dir, "test", "sock", f->sock, sizeof(f->sock));
    pthread_mutex_init(&f->mu, NULL);
    pthread_cond_init(&f->cv, NULL);
    uv_loop_init(&f->loop);
    uv_async_init(&f->loop, &f->stop_async, stop_cb);
    f->stop_async.data = f;
    if (nf_server_start(&f->srv, &f->loop, f->sock, "test", on_request, on_close, f) < 0)
        return -1;
    nf_server_set_health(f->srv, NANOFLOW__HEALTH__STATE__READY);
    pthread_create(&f->thread, NULL, loop_main, f);
    *state = f;
    return 0;
}

static int teardown(void **state)
{
    struct fixture *f = *state;
    uv_async_send(&f->stop_async);
    pthread_join(f->thread, NULL);
    int rc = uv_loop_close(&f->loop);
    struct stat st;
    int sock_left = stat(f->sock, &st) == 0;
    rmdir(f->dir);
    pthread_cond_destroy(&f->cv);
    pthread_mutex_destroy(&f->mu);
    free(f);
    /* Every handle closed (loop_close would say EBUSY) and the socket file removed. */
    return rc == 0 && !sock_left ? 0 : -1;
}

static int connect_ok(struct fixture *f)
{
    char err[256];
    int fd = nf_client_connect(f->sock, TIMEOUT_MS, err, sizeof(err));
    if (fd < 0)
        print_error("connect: %s\n", err);
    assert_true(fd >= 0);
    return fd;
}

/* Receives one envelope, failing the test on timeout or close. */
static nf_envelope *recv_ok(int fd)
{
    nf_envelope *env = NULL;
    int rc = nf_client_recv(fd, &env, TIMEOUT_MS);
    assert_int_equal(rc, 1);
    return env;
}

static void expect_health(int fd, uint64_t req)
{
    nf_envelope env;
    Nanoflow__HealthRequest hr;
    nanoflow__envelope__init(&env);
    nanoflow__health_request__init(&hr);
    env.msg_case = NANOFLOW__ENVELOPE__MSG_HEALTH_REQUEST;
    env.health_request = &hr;
    assert_int_equal(nf_client_send(fd, req, &env), 0);
    nf_envelope *r = recv_ok(fd);
    assert_int_equal(r->msg_case, NANOFLOW__ENVELOPE__MSG_HEALTH);
    assert_int_equal(r->request_id, req);
    assert_int_equal(r->health->state, NANOFLOW__HEALTH__STATE__READY);
    assert_string_equal(r->health->role, "test");
    assert_int_equal(r->health->pid, (uint32_t)getpid());
    assert_true(r->health->uptime_s >= 0.0);
    nf_envelope_free(r);
}

/* Writes a raw frame: a u32 LE length then n payload bytes. */
static void send_raw(int fd, uint32_t len, const void *payload, size_t n)
{
    uint8_t buf[64];
    buf[0] = (uint8_t)len;
    buf[1] = (uint8_t)(len >> 8);
    buf[2] = (uint8_t)(len >> 16);
    buf[3] = (uint8_t)(len >> 24);
    assert_true(n <= sizeof(buf) - 4);
    if (n)
        memcpy(buf + 4, payload, n);
    assert_int_equal(write(fd, buf, 4 + n), (ssize_t)(4 + n));
}

/* The next message is an Error with code, then the server closes the connection. */
static void expect_error_then_close(int fd, int code)
{
    nf_envelope *r = recv_ok(fd);
    assert_int_equal(r->msg_case, NANOFLOW__ENVELOPE__MSG_ERROR);
    assert_int_equal(r->error->code, code);
    assert_true(strlen(r->error->message) > 0);
    nf_envelope_free(r);
    nf_envelope *more = NULL;
    assert_int_equal(nf_client_recv(fd, &more, TIMEOUT_MS), 0);
}

static void test_hello_health(void **state)
{
    struct fixture *f = *state;
    int fd = connect_ok(f);
    expect_health(fd, 1);
    expect_health(fd, 2);
    nf_server_set_health(f->srv, NANOFLOW__HEALTH__STATE__BUSY);
    nf_envelope env;
    Nanoflow__HealthRequest hr;
    nanoflow__envelope__init(&env);
    nanoflow__health_request__init(&hr);
    env.msg_case = NANOFLOW__ENVELOPE__MSG_HEALTH_REQUEST;
    env.health_request = &hr;
    assert_int_equal(nf_client_send(fd, 3, &env), 0);
    nf_envelope *r = recv_ok(fd);
    assert_int_equal(r->health->state, NANOFLOW__HEALTH__STATE__BUSY);
    nf_envelope_free(r);
    nf_server_set_health(f->srv, NANOFLOW__HEALTH__STATE__READY);
    /* Hello and Health never reach the callback. */
    pthread_mutex_lock(&f->mu);
    assert_int_equal(f->n_seen, 0);
    pthread_mutex_unlock(&f->mu);
    close(fd);
}

static void test_wrong_major_refused(void **state)
{
    struct fixture *f = *state;
    int fd = connect_ok(f); /* a correct Hello first, then one from a future major version */
    nf_envelope env;
    Nanoflow__Hello h;
    nanoflow__envelope__init(&env);
    nanoflow__hello__init(&h);
    h.protocol_major = NF_PROTO_MAJOR + 1;
    h.role = "ctl";
    env.msg_case = NANOFLOW__ENVELOPE__MSG_HELLO;
    env.hello = &h;
    assert_int_equal(nf_client_send(fd, 5, &env), 0);
    expect_error_then_close(fd, NF_EPROTO);
    close(fd);
}

static void test_unknown_message(void **state)
{
    struct fixture *f = *state;
    int fd = connect_ok(f);
    /* request_id 7, then field 99 (not in this protocol version; 15 became PromptProgress) as a
     * varint. */
    const uint8_t unknown[] = {0x08, 0x07, 0x98, 0x06, 0x01};
    send_raw(fd, sizeof(unknown), unknown, sizeof(unknown));
    nf_envelope *r = recv_ok(fd);
    assert_int_equal(r->msg_case, NANOFLOW__ENVELOPE__MSG_ERROR);
    assert_int_equal(r->request_id, 7);
    assert_int_equal(r->error->code, NF_EPROTO);
    nf_envelope_free(r);
    /* A message the role does not serve: the callback answers with an Error. */
    nf_envelope env;
    Nanoflow__LoadModel lm;
    nanoflow__envelope__init(&env);
    nanoflow__load_model__init(&lm);
    env.msg_case = NANOFLOW__ENVELOPE__MSG_LOAD_MODEL;
    env.load_model = &lm;
    assert_int_equal(nf_client_send(fd, 8, &env), 0);
    r = recv_ok(fd);
    assert_int_equal(r->msg_case, NANOFLOW__ENVELOPE__MSG_ERROR);
    assert_int_equal(r->request_id, 8);
    assert_int_equal(r->error->code, -ENOTSUP);
    nf_envelope_free(r);
    /* The connection is still usable. */
    expect_health(fd, 9);
    close(fd);
}

static void test_malformed_closes_only_that_connection(void **state)
{
    struct fixture *f = *state;
    int good = connect_ok(f);
    int bad = connect_ok(f);
    const uint8_t garbage[] = {0xff, 0xff, 0xff, 0xff, 0xff};
    send_raw(bad, sizeof(garbage), garbage, sizeof(garbage));
    expect_error_then_close(bad, NF_EPROTO);
    close(bad);
    expect_health(good, 1);
    /* The server still accepts new clients. */
    int again = connect_ok(f);
    expect_health(again, 2);
    close(again);
    close(good);
}

static void test_oversize_refused(void **state)
{
    struct fixture *f = *state;
    int fd = connect_ok(f);
    /* Only the header: the server must refuse on the length alone, without waiting for 2 GB. */
    send_raw(fd, 0x7fffffffu, NULL, 0);
    expect_error_then_close(fd, -EMSGSIZE);
    close(fd);
    int other = connect_ok(f);
    expect_health(other, 1);
    close(other);
}

static void test_many_clients(void **state)
{
    struct fixture *f = *state;
    enum { N = 50 };
    int fds[N];
    for (int i = 0; i < N; i++)
        fds[i] = connect_ok(f);
    for (int i = 0; i < N; i++)
        expect_health(fds[i], 100 + (uint64_t)i);
    /* A StatsRequest from each goes to the callback with distinct connection ids. */
    nf_envelope env;
    Nanoflow__StatsRequest sr;
    nanoflow__envelope__init(&env);
    nanoflow__stats_request__init(&sr);
    env.msg_case = NANOFLOW__ENVELOPE__MSG_STATS_REQUEST;
    env.stats_request = &sr;
    for (int i = 0; i < N; i++)
        assert_int_equal(nf_client_send(fds[i], 500 + (uint64_t)i, &env), 0);
    pthread_mutex_lock(&f->mu);
    while (f->n_seen < N)
        pthread_cond_wait(&f->cv, &f->mu);
    for (int i = 0; i < N; i++) {
        assert_int_equal(f->seen_case[i], NANOFLOW__ENVELOPE__MSG_STATS_REQUEST);
        for (int j = 0; j < i; j++)
            assert_true(f->seen_conn[i] != f->seen_conn[j]);
    }
    pthread_mutex_unlock(&f->mu);
    for (int i = 0; i < N; i++)
        close(fds[i]);
    pthread_mutex_lock(&f->mu);
    while (f->n_closed < N)
        pthread_cond_wait(&f->cv, &f->mu);
    pthread_mutex_unlock(&f->mu);
}

/* Sends a Generate and returns the connection id the callback saw for it. */
static uint64_t generate_conn(struct fixture *f, int fd, uint64_t req)
{
    nf_envelope env;
    Nanoflow__Generate g;
    nanoflow__envelope__init(&env);
    nanoflow__generate__init(&g);
    g.n_predict = 4;
    env.msg_case = NANOFLOW__ENVELOPE__MSG_GENERATE;
    env.generate = &g;
    pthread_mutex_lock(&f->mu);
    int before = f->n_seen;
    pthread_mutex_unlock(&f->mu);
    assert_int_equal(nf_client_send(fd, req, &env), 0);
    pthread_mutex_lock(&f->mu);
    while (f->n_seen == before)
        pthread_cond_wait(&f->cv, &f->mu);
    assert_int_equal(f->seen_case[before], NANOFLOW__ENVELOPE__MSG_GENERATE);
    assert_int_equal(f->seen_req[before], req);
    uint64_t conn = f->seen_conn[before];
    pthread_mutex_unlock(&f->mu);
    return conn;
}

static void test_send_from_other_thread(void **state)
{
    struct fixture *f = *state;
    int fd = connect_ok(f);
    uint64_t conn = generate_conn(f, fd, 42);
    /* This thread is not the loop thread: a stream of events, then the done message. */
    enum { N = 200 };
    for (int i = 0; i < N; i++) {
        nf_envelope env;
        Nanoflow__TokenEvent t;
        nanoflow__envelope__init(&env);
        nanoflow__token_event__init(&t);
        t.id = i;
        env.msg_case = NANOFLOW__ENVELOPE__MSG_TOKEN;
        env.token = &t;
        assert_int_equal(nf_server_send(f->srv, conn, 42, &env), 0);
    }
    nf_envelope env;
    Nanoflow__GenerateDone d;
    nanoflow__envelope__init(&env);
    nanoflow__generate_done__init(&d);
    d.stop = "n_predict";
    env.msg_case = NANOFLOW__ENVELOPE__MSG_GENERATE_DONE;
    env.generate_done = &d;
    assert_int_equal(nf_server_send(f->srv, conn, 42, &env), 0);
    for (int i = 0; i < N; i++) {
        nf_envelope *r = recv_ok(fd);
        assert_int_equal(r->msg_case, NANOFLOW__ENVELOPE__MSG_TOKEN);
        assert_int_equal(r->request_id, 42);
        assert_int_equal(r->token->id, i);
        nf_envelope_free(r);
    }
    nf_envelope *r = recv_ok(fd);
    assert_int_equal(r->msg_case, NANOFLOW__ENVELOPE__MSG_GENERATE_DONE);
    assert_string_equal(r->generate_done->stop, "n_predict");
    nf_envelope_free(r);
    close(fd);
    /* After the close callback, sends to that connection fail instead of reaching anyone. */
    pthread_mutex_lock(&f->mu);
    for (;;) {
        int found = 0;
        for (int i = 0; i < f->n_closed; i++)
            found |= f->closed[i] == conn;
        if (found)
            break;
        pthread_cond_wait(&f->cv, &f->mu);
    }
    pthread_mutex_unlock(&f->mu);
    assert_int_equal(nf_server_send(f->srv, conn, 42, &env), -ENOTCONN);
    /* A new client never gets an old connection id. */
    int fd2 = connect_ok(f);
    uint64_t conn2 = generate_conn(f, fd2, 43);
    assert_true(conn2 > conn);
    close(fd2);
}

static void test_client_no_server(void **state)
{
    char err[256];
    int fd = nf_client_connect("/tmp/nf-no-such-dir-xyz/compute.sock", 1000, err, sizeof(err));
    assert_int_equal(fd, -ENOENT);
    assert_non_null(strstr(err, "no stack running in /tmp/nf-no-such-dir-xyz"));
}

static void test_rundir(void **state)
{
    char dir[64] = "/tmp/nf-test-rundir-XXXXXX";
    assert_non_null(mkdtemp(dir));
    char sub[128], out[256], out2[256], err[256];
    snprintf(sub, sizeof(sub), "%s/a/b", dir);
    assert_int_equal(nf_rundir_resolve(sub, out, sizeof(out)), 0);
    assert_string_equal(out, sub);
    snprintf(sub, sizeof(sub), "%s/a/b//", dir);
    assert_int_equal(nf_rundir_resolve(sub, out2, sizeof(out2)), 0);
    assert_string_equal(out, out2);
    /* Relative paths become absolute, so the shm name does not depend on how it was spelled. */
    char cwd[256];
    assert_non_null(getcwd(cwd, sizeof(cwd)));
    assert_int_equal(chdir(dir), 0);
    assert_int_equal(nf_rundir_resolve("./a/b", out2, sizeof(out2)), 0);
    assert_int_equal(chdir(cwd), 0);
    assert_string_equal(out, out2);
    char n1[64], n2[64];
    nf_rundir_shm_name(out, n1, sizeof(n1));
    nf_rundir_shm_name(out2, n2, sizeof(n2));
    assert_string_equal(n1, n2);
    assert_int_equal(strlen(n1), strlen("/nanoflow-") + 16);
    nf_rundir_shm_name(dir, n2, sizeof(n2));
    assert_string_not_equal(n1, n2);
    /* Environment fallback. */
    setenv("NANOFLOW_RUN_DIR", out, 1);
    assert_int_equal(nf_rundir_resolve(NULL, out2, sizeof(out2)), 0);
    assert_string_equal(out, out2);
    unsetenv("NANOFLOW_RUN_DIR");

    assert_int_equal(nf_rundir_create(out, err, sizeof(err)), 0);
    struct stat st;
    assert_int_equal(stat(out, &st), 0);
    assert_int_equal(st.st_mode & 0777, 0700);
    /* A directory others can enter is refused with its mode named. */
    assert_int_equal(chmod(out, 0755), 0);
    assert_int_equal(nf_rundir_create(out, err, sizeof(err)), -EPERM);
    assert_non_null(strstr(err, "0755"));
    assert_int_equal(chmod(out, 0700), 0);

    /* Pid files: ours is live; a second create sees our own pid and succeeds; a dead pid's
     * file is stale and replaced; a live foreign pid refuses. */
    assert_int_equal(nf_pidfile_read(out, "fetcher"), 0);
    assert_int_equal(nf_pidfile_create(out, "fetcher"), 0);
    assert_int_equal(nf_pidfile_read(out, "fetcher"), getpid());
    nf_pidfile_remove(out, "fetcher");
    assert_int_equal(nf_pidfile_read(out, "fetcher"), 0);
    pid_t child = fork();
    if (child == 0)
        _exit(0);
    assert_true(child > 0);
    waitpid(child, NULL, 0);
    char path[256];
    nf_rundir_path(out, "fetcher", "pid", path, sizeof(path));
    FILE *pf = fopen(path, "w");
    fprintf(pf, "%d\n", (int)child);
    fclose(pf);
    assert_int_equal(nf_pidfile_read(out, "fetcher"), 0);
    assert_int_equal(nf_pidfile_create(out, "fetcher"), 0);
    assert_int_equal(nf_pidfile_read(out, "fetcher"), getpid());
    pf = fopen(path, "w");
    fprintf(pf, "%d\n", (int)getppid());
    fclose(pf);
    assert_int_equal(nf_pidfile_create(out, "fetcher"), -EEXIST);
    nf_pidfile_remove(out, "fetcher");
    rmdir(out);
    snprintf(sub, sizeof(sub), "%s/a", dir);
    rmdir(sub);
    rmdir(dir);
}

static uint64_t counter(const struct nf_stats_msg *m, const char *name)
{
    for (size_t i = 0; i < m->stage.n_counters; i++)
        if (!strcmp(m->stage.counters[i]->name, name))
            return m->stage.counters[i]->value;
    fail_msg("counter %s missing", name);
    return 0;
}

static void test_stats_fill(void **state)
{
    uint64_t hist[NF_LAT_BUCKETS] = {0};
    assert_true(nf_lat_quantile_us(hist, NF_LAT_BUCKETS, 0.5) == 0.0);
    hist[3] = 100; /* all in [8, 16) us */
    assert_true(nf_lat_quantile_us(hist, NF_LAT_BUCKETS, 0.5) == 12.0);
    hist[10] = 1; /* one slow read in [1024, 2048) */
    double p99 = nf_lat_quantile_us(hist, NF_LAT_BUCKETS, 0.99);
    double p999 = nf_lat_quantile_us(hist, NF_LAT_BUCKETS, 0.999);
    assert_true(p99 >= 8.0 && p99 < 16.0);
    assert_true(p999 >= 1024.0 && p999 < 2048.0);

    static struct nf_stack_counters ctr;
    memset(&ctr, 0, sizeof(ctr));
    atomic_store(&ctr.f_reads, 7);
    atomic_store(&ctr.f_bytes, 7 << 20);
    atomic_store(&ctr.f_lat_hist[5], 4);
    atomic_store(&ctr.p_true_pos, 9);
    atomic_store(&ctr.c_decode_tokens, 11);
    atomic_store(&ctr.mem_fetcher, 100);
    atomic_store(&ctr.mem_predictor, 20);
    atomic_store(&ctr.mem_compute, 3);
    struct nf_stats_msg m;
    assert_int_equal(nf_stats_fill(&m, NF_ROLE_FETCHER, &ctr, 1 << 30, 1000), 0);
    assert_string_equal(m.stage.stage, "fetcher");
    assert_int_equal(counter(&m, "reads"), 7);
    assert_int_equal(counter(&m, "bytes"), 7 << 20);
    assert_int_equal(counter(&m, "lat_hist_05"), 4);
    assert_int_equal(counter(&m, "mem_bytes"), 100);
    assert_int_equal(m.stats.ram_budget, 1 << 30);
    assert_int_equal(m.stats.ram_held, 1123);
    assert_int_equal(m.stage.n_latency_quantiles_us, 2);
    assert_true(m.stage.latency_quantiles_us[0] >= 32.0 && m.stage.latency_quantiles_us[0] < 64.0);
    /* It packs as a frame (every pointer set). */
    nf_envelope env;
    nanoflow__envelope__init(&env);
    env.msg_case = NANOFLOW__ENVELOPE__MSG_STATS;
    env.stats = &m.stats;
    assert_true(nf_frame_size(&env) > 32 * 12);
    assert_int_equal(nf_stats_fill(&m, NF_ROLE_PREDICTOR, &ctr, 1 << 30, 1000), 0);
    assert_int_equal(counter(&m, "true_pos"), 9);
    assert_int_equal(m.stage.n_latency_quantiles_us, 0);
    assert_int_equal(nf_stats_fill(&m, NF_ROLE_COMPUTE, &ctr, 1 << 30, 1000), 0);
    assert_int_equal(counter(&m, "decode_tokens"), 11);
    assert_int_equal(counter(&m, "mem_bytes"), 3);
    assert_int_equal(nf_stats_fill(&m, "other", &ctr, 1 << 30, 1000), -EINVAL);
}

int main(void)
{
    nf_log_open("test", NULL, NF_LOG_ERROR);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_hello_health, setup, teardown),
        cmocka_unit_test_setup_teardown(test_wrong_major_refused, setup, teardown),
        cmocka_unit_test_setup_teardown(test_unknown_message, setup, teardown),
        cmocka_unit_test_setup_teardown(test_malformed_closes_only_that_connection, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_oversize_refused, setup, teardown),
        cmocka_unit_test_setup_teardown(test_many_clients, setup, teardown),
        cmocka_unit_test_setup_teardown(test_send_from_other_thread, setup, teardown),
        cmocka_unit_test(test_client_no_server),
        cmocka_unit_test(test_rundir),
        cmocka_unit_test(test_stats_fill),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
