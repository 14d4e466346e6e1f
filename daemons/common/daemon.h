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

#include <getopt.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
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
/* The optional HTTP front (nanoflow-gateway, `up --http`): not one of the stack's three. */
#define NF_ROLE_GATEWAY "gateway"

/* Resolves the run directory from arg (may be NULL) and the environment into out. */
int nf_rundir_resolve(const char *arg, char *out, size_t len);
/* Checks that the run directory dir (absolute) can be trusted before anything in it is used:
 * every component from "/" down is a directory (no symbolic link, except one only root could
 * have made, such as /var/run, whose target is then checked the same way), owned by root or by
 * us, and not writable by others unless sticky (/tmp); dir itself is not group- or
 * world-writable. Returns 0; -ENOENT when dir (or a parent) does not exist and everything
 * above it is sound; or a negative code (-EPERM, -ENOTDIR, -EACCES ...) with one line in err
 * naming the path and what is wrong with it. */
int nf_rundir_check(const char *dir, char *err, size_t errlen);
/* Creates dir (and missing parents, 0700) after the checks of nf_rundir_check on every
 * component; refuses a dir not owned by us or accessible to others. Returns 0 or a negative
 * code with a message in err. */
int nf_rundir_create(const char *dir, char *err, size_t errlen);
/* Checks that pid runs the daemon binary of role (/proc/PID/exe named nanoflow-ROLE). This
 * alone does not make pid the stack's daemon: the caller also matches it against the peer pid
 * of the role's socket (nf_client_peer_pid) before signalling it. Returns 0 or a negative code
 * with the reason in err. */
int nf_pid_is_daemon(int pid, const char *role, char *err, size_t errlen);
/* dir/ROLE.SUFFIX into out (suffix "sock", "pid" or "log"). */
void nf_rundir_path(const char *dir, const char *role, const char *suffix, char *out, size_t len);
/* The shm object name of the stack in dir: "/nanoflow-" + 16 hex digits of a hash of the path. */
void nf_rundir_shm_name(const char *dir, char *out, size_t len);
/* The KV file of the stack in dir (`up --kv-offload`): in kv_dir, or in dir when kv_dir is NULL,
 * named "nanoflow-" + the hash of nf_rundir_shm_name + ".kv" (several stacks may share kv_dir). */
void nf_rundir_kv_path(const char *dir, const char *kv_dir, char *out, size_t len);
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
struct nf_nft;
struct nf_stack;
/* Attaches st to the region of the stack in dir, built for f: retries while the fetcher has not
 * created it yet, then waits for the fetcher's ready bit; *attached is set once st holds the
 * region (detach it even after a failure). Gives up after timeout_s seconds in all. Returns 0,
 * -ECANCELED when the stack stops meanwhile, -ETIMEDOUT, or nf_stack_attach's code; a message
 * in err on failure. */
int nf_daemon_attach(struct nf_stack *st, const char *dir, const struct nf_nft *f, int timeout_s,
                     bool *attached, char *err, size_t errlen);

/* --- Liveness of the stack's daemons (live.c) ---------------------------------------------- */
/* How often each daemon checks the others (and the stop word): a death is seen within this. */
#define NF_LIVE_CHECK_MS 250

/* The start time (field 22 of /proc/PID/stat, clock ticks after boot) of process pid into
 * *start. Returns 0, or -ESRCH when there is no such process or it is a zombie. */
int nf_proc_start_time(int pid, uint64_t *start);
/* Records our pid and start time in the region as the daemon of ready_bit (enum nf_ready_bit),
 * state UP; nf_live_unregister marks it EXITED (a clean exit, after the stack was stopped). */
void nf_live_register(struct nf_stack *st, unsigned ready_bit);
void nf_live_unregister(struct nf_stack *st, unsigned ready_bit);
/* The daemons (ready bits) that are dead: marked so (in sync->dead_mask, or a record already
 * DEAD whose bit nf_live_mark has yet to add), or registered UP while their process is gone, a
 * zombie, or another process with the same pid. Reads only. */
uint32_t nf_live_check(const struct nf_stack *st);
/* Marks the daemons in dead DEAD and adds them to sync->dead_mask (ringing every bell when that
 * changed it), so that tile waits end and the other daemons refuse work. */
void nf_live_mark(struct nf_stack *st, uint32_t dead);
/* The role name and recorded pid of the first daemon in dead ("?" and 0 for none). */
const char *nf_live_role(uint32_t dead);
int nf_live_pid(const struct nf_stack *st, uint32_t dead);
/* "the ROLE (pid N) died: restart the stack with nanoflowctl down && nanoflowctl up" for the
 * first daemon in dead. */
void nf_live_message(const struct nf_stack *st, uint32_t dead, char *buf, size_t len);

/* --- Command line shared by the daemons (args.c) -------------------------------------------- */
/* The stack's flags, which `nanoflowctl up` passes to every daemon alike. */
struct nf_daemon_args {
    const char *run_dir;     /* --run-dir DIR (NULL: nf_rundir_resolve's default) */
    const char *model;       /* --model FILE.nft (required) */
    uint64_t ram;            /* --ram SIZE: positive, at most 9e18; 0 when not given */
    int threads;             /* -t, --threads N in 0..1024; -1 when not given */
    float sparsity;          /* --sparsity S in [0, 1); -1 when not given */
    uint32_t ctx;            /* --ctx N in 0..2^24; 0 when not given */
    uint32_t parallel;       /* --parallel N in 0..NF_STACK_SEQ_MAX sequences; 0: the plan's */
    int attach_timeout_s;    /* --attach-timeout S in 1..3600 (default 30), with spec->attaches */
    bool foreground;         /* --foreground */
    enum nf_log_level level; /* --log-level L (default info) */
    uint32_t ubatch;         /* --ubatch N in 1..4096: compute's prompt chunk; 0 when not given */
    /* --cache-type-k / --cache-type-v T (f16, q8_0, q4_0) as enum nf_type; 0 when not given:
     * the fetcher plans the KV cache with them, compute keeps it so (else the region's). */
    uint32_t type_k, type_v;
    uint32_t kv_block; /* --kv-block N in 0..NF_KV_BLOCK_MAX: compute's KV cache on disk in blocks
                        * of N positions (the plan's kv_block); 0 (default): in RAM */
};
#define NF_KV_BLOCK_MAX 65536

/* getopt_long values of a daemon's own flags start here (below: the shared ones). */
#define NF_ARG_OWN 512

/* What a daemon adds to the shared flags. */
struct nf_daemon_argspec {
    const char *role; /* NF_ROLE_*: "nanoflow-ROLE: ..." in the messages */
    bool attaches;    /* takes --attach-timeout (the daemons that wait for the fetcher) */
    void (*usage)(FILE *out);
    /* The daemon's own long options (val >= NF_ARG_OWN; NULL-terminated; may be NULL) and their
     * parser: 0, or -EINVAL for a bad value, which the caller then refuses in one line. */
    const struct option *own;
    int (*parse)(int val, const char *arg, void *ud);
    void *ud;
};

/* Parses argv: the shared flags into a, the daemon's own through spec->parse. Also takes
 * "--flag=value". Returns 0, 1 after --help (usage on stdout: exit 0), or 2 after a usage error
 * (one line on stderr naming the flag and pointing to --help: exit 2). */
int nf_daemon_args_parse(int argc, char **argv, const struct nf_daemon_argspec *spec,
                         struct nf_daemon_args *a);
/* Value checks the daemons' own flags share; each returns 0 or -EINVAL. An integer in
 * [lo, hi]; a float in [lo, hi); a size as nf_parse_size spells it, positive, in an int64. */
int nf_daemon_arg_long(const char *s, long lo, long hi, long *out);
int nf_daemon_arg_float(const char *s, float lo, float hi, float *out);
int nf_daemon_arg_size(const char *s, uint64_t *out);

/* --- Control loop shared by the daemons (loop.c) ------------------------------------------- */
/* The loop answers Hello and Health (the server), Stats (from the region's counters) and
 * Shutdown itself; SIGTERM and SIGINT shut down as Shutdown does, and so does the stop word of
 * the region set by another daemon (checked every NF_LIVE_CHECK_MS). On the same timer it
 * checks the other daemons' liveness records (live.c): one found dead is logged, passed to
 * hooks->dead and marked in sync->dead_mask; the daemon goes on running (to say why it refuses
 * work) until `down`. Shutdown: health STOPPING,
 * the stack stopped (nf_stack_stop: our ready bit cleared, sync->stop set, every bell rung),
 * hooks->shutdown, then 50 ms later (the reply goes out) hooks->stop, the server
 * stopped and every handle closed, so nf_daemon_loop_run returns. All hooks run on the loop
 * thread and may be NULL. */
struct nf_daemon_loop;
struct nf_daemon_hooks {
    /* Any other request: returns false when the daemon does not handle it (the loop then
     * replies with an Error). */
    bool (*request)(struct nf_daemon_loop *dl, uint64_t conn_id, nf_envelope *env);
    /* A client connection closed (cancel its work). */
    void (*conn_closed)(struct nf_daemon_loop *dl, uint64_t conn_id);
    /* Refreshes the daemon's private memory gauge: every second and before each Stats reply. */
    void (*mem)(struct nf_daemon_loop *dl);
    /* Answers a Stats request with the daemon's own counters added (NULL: the region's
     * counters alone, nf_stats_reply). Returns 0 or a negative code (the loop replies with an
     * Error). */
    int (*stats)(struct nf_daemon_loop *dl, uint64_t conn_id, uint64_t req_id);
    /* The shutdown began: cancel running work. */
    void (*shutdown)(struct nf_daemon_loop *dl);
    /* Before the server stops: join every thread that sends frames. */
    void (*stop)(struct nf_daemon_loop *dl);
    /* Other daemons of the stack died (their ready bits in dead; msg names the first): called
     * before they are marked in sync->dead_mask, so that what the hook sends goes out before
     * any tile wait fails. */
    void (*dead)(struct nf_daemon_loop *dl, uint32_t dead, const char *msg);
};

/* Caller-allocated (zeroed) and kept in place from start to close. */
struct nf_daemon_loop {
    uv_loop_t loop;
    struct nf_server *srv; /* NULL once stopped */
    uv_signal_t sigterm, sigint;
    uv_timer_t mem_timer;  /* hooks->mem every second */
    uv_timer_t stop_timer; /* lets the Shutdown reply leave before the server closes */
    uv_timer_t live_timer; /* the stop word and the other daemons' liveness */
    uint32_t dead_seen;    /* the daemons already passed to hooks->dead */
    const char *role;
    struct nf_stack *st;
    unsigned ready_bit; /* enum nf_ready_bit: ours in sync->ready_mask */
    const struct nf_daemon_hooks *hooks;
    void *ud; /* the daemon's, for its hooks */
    char sock[4096 + 64];
    bool loop_init, stopping;
};

/* Initializes dl's loop, serves dir/ROLE.sock and installs the signal handlers and timers; st
 * is the attached stack. Returns 0 or a negative code with a message in err (call
 * nf_daemon_loop_close either way). */
int nf_daemon_loop_start(struct nf_daemon_loop *dl, const char *role, const char *dir,
                         struct nf_stack *st, unsigned ready_bit,
                         const struct nf_daemon_hooks *hooks, void *ud, char *err, size_t errlen);
/* Sets our ready bit in sync->ready_mask and the health READY. */
void nf_daemon_loop_ready(struct nf_daemon_loop *dl);
/* Runs the loop until the shutdown closed every handle. */
void nf_daemon_loop_run(struct nf_daemon_loop *dl);
/* Begins the shutdown (once; later calls do nothing). Loop thread. */
void nf_daemon_loop_shutdown(struct nf_daemon_loop *dl, const char *why);
/* Stops the server if it still runs (threads that send frames joined first), closes every
 * handle and the loop. */
void nf_daemon_loop_close(struct nf_daemon_loop *dl);

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
 * Every client's memory is bounded (see server.c): at most 256 connections (the environment's
 * NANOFLOW_MAX_CONNS, kept below RLIMIT_NOFILE; more get an Error), no reading from a client
 * that leaves 256 KiB of replies unread, a half-sent frame dropped after 10 s
 * (NANOFLOW_FRAME_TIMEOUT_S) and an idle connection after 600 s (NANOFLOW_IDLE_TIMEOUT_S).
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
/* Connects to sock_path, checks that the server runs as our uid or root (SO_PEERCRED; else
 * -EPERM before a byte is sent) and exchanges Hello. Returns a socket fd or a negative code
 * (with a message in err: "no stack running in DIR" for -ENOENT/-ECONNREFUSED). */
int nf_client_connect(const char *sock_path, int timeout_ms, char *err, size_t errlen);
/* The pid of the process listening on sock_path (SO_PEERCRED of a fresh connection, closed
 * again without a byte sent; the server need not answer), or a negative code with err set
 * (-EPERM when it runs as another uid than ours or root). */
int nf_client_peer_pid(const char *sock_path, char *err, size_t errlen);
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
