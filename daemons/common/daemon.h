/* daemon.h - what every NanoFlow daemon shares: logging, the run directory, the libuv control
 * server, and the blocking client nanoflowctl uses.
 *
 * Run directory (--run-dir DIR, else $NANOFLOW_RUN_DIR, else $XDG_RUNTIME_DIR/nanoflow, else
 * /run/nanoflow for root or /tmp/nanoflow-UID): created 0700; holds ROLE.sock (0600), ROLE.pid,
 * ROLE.log for ROLE in fetcher, predictor, compute, and stack.conf (the arguments `up` used).
 * The shared-memory name is derived from the run directory's path, so several stacks with
 * different run directories run side by side. */
#ifndef NF_DAEMON_H
#define NF_DAEMON_H

#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <uv.h>

#include "frame.h"

/* --- Logging: one line per event: "TIME ROLE[PID] LEVEL message" (monotonic seconds). ---- */
enum nf_log_level { NF_LOG_ERROR = 0, NF_LOG_WARN, NF_LOG_INFO, NF_LOG_DEBUG };
/* Sets the role name and the destination (path NULL: stderr). Returns 0 or a negated errno. */
int nf_log_open(const char *role, const char *path, enum nf_log_level level);
void nf_log(enum nf_log_level level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
void nf_log_close(void);
/* Parses a level name ("error", "warn", "info", "debug"; any case) for --log-level. Returns 0 or
 * -EINVAL. */
int nf_log_level_parse(const char *s, enum nf_log_level *out);

/* --- Run directory ------------------------------------------------------------------------ */
#define NF_ROLE_FETCHER   "fetcher"
#define NF_ROLE_PREDICTOR "predictor"
#define NF_ROLE_COMPUTE   "compute"

/* Resolves the run directory from arg (may be NULL) and the environment into out. */
int nf_rundir_resolve(const char *arg, char *out, size_t len);
/* Creates dir (and missing parents) with mode 0700; refuses an existing dir not owned by us
 * or accessible to others. Returns 0 or a negative code with a message in err. */
int nf_rundir_create(const char *dir, char *err, size_t errlen);
/* dir/ROLE.SUFFIX into out (suffix "sock", "pid" or "log"). */
void nf_rundir_path(const char *dir, const char *role, const char *suffix, char *out, size_t len);
/* The shm object name of the stack in dir: "/nanoflow-" + 16 hex digits of a hash of the path. */
void nf_rundir_shm_name(const char *dir, char *out, size_t len);
/* Writes our pid to dir/ROLE.pid (O_EXCL after removing a stale file whose pid is dead).
 * Returns 0, -EEXIST when a live process holds it. */
int nf_pidfile_create(const char *dir, const char *role);
/* Reads dir/ROLE.pid; returns the pid if that process is alive, else 0. */
int nf_pidfile_read(const char *dir, const char *role);
void nf_pidfile_remove(const char *dir, const char *role);

/* --- Start-up and exit shared by the daemons (start.c) ------------------------------------- */
/* Resolves and creates the run directory (into dir), detaches unless foreground (with detach,
 * or nf_daemon_detach when NULL), opens the log (dir/ROLE.log, or stderr in the foreground) and
 * writes dir/ROLE.pid. Returns 0, or 1 after saying why (on stderr, or in the log once open). */
int nf_daemon_begin(const char *role, const char *run_dir_arg, bool foreground,
                    enum nf_log_level level, int (*detach)(const char *log_path, void *ud),
                    void *ud, char *dir, size_t dirlen);
/* Removes the pid file, logs the exit and closes the log. */
void nf_daemon_end(const char *role, const char *dir, int status);
/* Own session (forking first if we lead a process group), stdin from /dev/null, stdout and
 * stderr appended to log_path. Returns 0 or a negated errno. */
int nf_daemon_detach(const char *log_path);
/* --log-level for role: 0, or -EINVAL after printing the one-line refusal. */
int nf_daemon_log_level(const char *role, const char *arg, enum nf_log_level *out);

/* --- Control server (libuv, one loop thread) ----------------------------------------------- */
struct nf_server;

/* Called on the loop thread for every request frame other than Hello and HealthRequest, which
 * the server answers itself (an envelope with no known message gets an Error reply from the
 * server too). conn_id identifies the client connection for replies; ids start at 1 and are
 * never reused. env (with env->request_id) is valid only during the call: the server frees it
 * afterwards, so copy what a worker thread keeps. */
typedef void (*nf_server_cb)(struct nf_server *s, uint64_t conn_id, nf_envelope *env, void *ud);
/* Called on the loop thread when a connection closes (to cancel its work). May be NULL. */
typedef void (*nf_server_close_cb)(struct nf_server *s, uint64_t conn_id, void *ud);

/* Listens on sock_path (removed first if stale; mode 0600) on loop. Malformed or oversized
 * frames get an Error reply and that connection is closed; the server and other clients go on.
 * Returns 0 or a negative code. */
int nf_server_start(struct nf_server **out, uv_loop_t *loop, const char *sock_path,
                    const char *role, nf_server_cb cb, nf_server_close_cb close_cb, void *ud);
/* Health state reported to clients (Nanoflow__Health__State values). Any thread. */
void nf_server_set_health(struct nf_server *s, int state);
/* Sends env to connection conn_id with request id req_id. Safe from ANY thread (frames are
 * packed by the caller's thread and queued to the loop with uv_async). Returns 0 or -ENOTCONN
 * when the connection is gone. */
int nf_server_send(struct nf_server *s, uint64_t conn_id, uint64_t req_id, nf_envelope *env);
/* The reply to a Shutdown request: sets the health to STOPPING and sends a Health message
 * (role, pid, uptime) to conn_id. Loop thread. */
int nf_server_send_stopping(struct nf_server *s, uint64_t conn_id, uint64_t req_id);
/* Convenience: an Error reply. */
int nf_server_send_error(struct nf_server *s, uint64_t conn_id, uint64_t req_id, int code,
                         const char *fmt, ...) __attribute__((format(printf, 5, 6)));
/* Stops listening, removes the socket file, closes every connection and frees s once the
 * handles are closed (loop must run afterwards to let close callbacks fire). Loop thread only.
 * Other threads must stop calling nf_server_send before the loop runs again after this call
 * (join the workers first, or have them check a flag the loop thread sets). Also note:
 * nf_server_start ignores SIGPIPE process-wide (a client vanishing mid-reply must not kill us),
 * and refuses (-EADDRINUSE) a socket path on which a live server still accepts. */
void nf_server_stop(struct nf_server *s);

/* --- Blocking client (nanoflowctl, tests) --------------------------------------------------- */
/* Connects to sock_path and exchanges Hello. Returns a socket fd or a negative code (with a
 * message in err: "no stack running in DIR" for -ENOENT/-ECONNREFUSED). */
int nf_client_connect(const char *sock_path, int timeout_ms, char *err, size_t errlen);
/* Sends one envelope (request id req_id). Returns 0 or a negative code. */
int nf_client_send(int fd, uint64_t req_id, nf_envelope *env);
/* Receives one envelope (free with nf_envelope_free). Returns 1, 0 on orderly close,
 * -ETIMEDOUT, or a negative code. */
int nf_client_recv(int fd, nf_envelope **out, int timeout_ms);

/* --- Stats replies (shared by the three daemons) -------------------------------------------- */
struct nf_stack;
struct nf_stack_counters;

/* Storage for one Stats message with one stage (no allocation: lives on the caller's stack). */
#define NF_STATS_MAX_COUNTERS 64
struct nf_stats_msg {
    Nanoflow__Stats stats;
    Nanoflow__StageStats stage;
    Nanoflow__StageStats *stagep[1];
    Nanoflow__StageCounter ctr[NF_STATS_MAX_COUNTERS];
    Nanoflow__StageCounter *ctrp[NF_STATS_MAX_COUNTERS];
    double quantiles[2];
};

/* Fills m with stage's counters read from ctr (stage: NF_ROLE_FETCHER, _PREDICTOR or _COMPUTE).
 * Counter names (StageCounter.name) per stage:
 *   fetcher:   reads bytes demand_reads prefetch_reads hits misses evictions checksum_errors
 *              io_errors busy_ns queue_depth* resident_bytes* mem_bytes* lat_hist_00..31
 *              (latency_quantiles_us: p50, p99 from the histogram)
 *   predictor: predictions requests pred_ns true_pos false_pos false_neg lookahead* mem_bytes*
 *   compute:   prompt_tokens prompt_ns decode_tokens decode_ns stall_ns tiles_used
 *              tile_bytes_used step groups_skipped groups_total mem_bytes*
 * (* = gauge, the others only grow). ram_budget is the stack's budget; ram_held is
 * region_bytes plus the three processes' mem_* gauges. Returns 0 or -EINVAL for another stage. */
int nf_stats_fill(struct nf_stats_msg *m, const char *stage, const struct nf_stack_counters *ctr,
                  uint64_t ram_budget, uint64_t region_bytes);
/* Appends counter name = v to m (name must outlive m: a string literal); dropped once m holds
 * NF_STATS_MAX_COUNTERS. For a daemon's counters that are not in the shared region. */
void nf_stats_add(struct nf_stats_msg *m, const char *name, uint64_t v);
/* Convenience for a daemon: fills from st (its counters, budget and region size) and sends the
 * Stats reply to conn_id. Any thread. */
int nf_stats_reply(struct nf_server *s, uint64_t conn_id, uint64_t req_id,
                   const struct nf_stack *st, const char *stage);
/* The q-quantile (0..1) in microseconds of a latency histogram whose bucket i counts latencies
 * in [2^i, 2^(i+1)) us (interpolated within the bucket); 0 when the histogram is empty. */
double nf_lat_quantile_us(const uint64_t *hist, int n_buckets, double q);

#endif
