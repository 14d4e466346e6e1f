/* bench_parallel.c - nanoflowctl bench's --parallel rows: a stack started with `up --parallel P`
 * and P `gen` clients at once, so that every step serves P sequences (continuous batching):
 * tok/s per sequence, aggregate tok/s and bytes read per token. */
#include <errno.h>
#include <limits.h>
#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "bench.h"
#include "kv_quant.h"
#include "cmds.h"
#include "nf_err.h"
#include "nf_time.h"
#include "stack_ctl.h"
#include "stack_snap.h"

#define NF_BENCH_UP_TIMEOUT  120.0
#define NF_BENCH_DOWN_WAIT   30.0
#define NF_BENCH_CANCEL_WAIT 15.0

/* The P clients: their pipes, what they streamed, and their summaries' decode rates. */
struct par_client {
    pid_t pid;
    struct nf_bench_lines l;
    size_t consumed;
    int tokens;
    double tok_s; /* GenerateDone's decode tok/s, NAN until the summary */
};

/* Reads every client until all have ended, SIGINT to all after the time box; returns the
 * tokens they streamed in all. Once every client has streamed a token (every prompt is then
 * evaluated: the steps after it are decode steps only) takes the snapshot *mid of dir's
 * counters, and sets *have_mid. */
static int follow_all(struct nf_bench *b, struct nf_bench_row *r, struct par_client *cl, int n,
                      struct nf_cgroup *cg, bool have_cg, const char *dir,
                      struct nf_stack_snap *mid, bool *have_mid)
{
    double deadline = nf_now_s() + (double)b->o.timeout, last_report = 0;
    bool signalled = false;
    int open = n, total = 0;
    while (open > 0) {
        const double now = nf_now_s();
        if (!signalled && (now > deadline || nf_bench_stop)) {
            for (int i = 0; i < n; i++)
                if (!cl[i].l.eof)
                    kill(cl[i].pid, SIGINT);
            signalled = true;
            r->timed_out = !nf_bench_stop;
            deadline = now + NF_BENCH_CANCEL_WAIT;
            nf_bench_progress(b, "%s: %s after %d tokens", r->mode,
                              nf_bench_stop ? "interrupted" : "time box reached, stopping", total);
        } else if (signalled && now > deadline) {
            for (int i = 0; i < n; i++)
                if (!cl[i].l.eof)
                    kill(cl[i].pid, SIGKILL);
            break;
        }
        open = 0;
        for (int i = 0; i < n; i++) {
            struct par_client *c = &cl[i];
            if (c->l.eof)
                continue;
            char *line = nf_bench_next_line(&c->l, 20, &c->consumed);
            if (!c->l.eof)
                open++;
            if (!line)
                continue;
            if (strstr(line, "\"gen_ids\"")) {
                c->tok_s = nf_bench_json_num(line, "decode_tok_s");
            } else if (!strncmp(line, "{\"id\":", 6)) {
                c->tokens++;
                total++;
            }
        }
        if (!*have_mid) {
            int started = 0;
            for (int i = 0; i < n; i++)
                started += cl[i].tokens > 0 || cl[i].l.eof;
            if (started == n) {
                nf_stack_snap_take(dir, mid);
                *have_mid = true;
            }
        }
        if (have_cg)
            nf_cgroup_poll(cg);
        if (nf_now_s() - last_report > 1.0) {
            last_report = nf_now_s();
            nf_bench_progress(b, "%s: tokens %d/%ld", r->mode, total, b->o.n * n);
        }
    }
    return total;
}

/* Fills r's decode-phase figures from the counters' change from mid (every prompt evaluated)
 * to s1: bytes read and tile bytes used per step (every step then is a decode step of the
 * running sequences; a MoE step uses the union of the experts its rows chose). */
static void fill_decode(struct nf_bench_row *r, const struct nf_stack_snap *mid,
                        const struct nf_stack_snap *s1)
{
    struct nf_stack_snap *d = calloc(1, sizeof(*d));
    if (!d)
        return;
    nf_stack_snap_delta(d, s1, mid);
    const double steps = (double)nf_stage_ctr(&d->st[2], "step");
    if (s1->st[0].ok && s1->st[2].ok && mid->st[0].ok && mid->st[2].ok && steps > 0) {
        r->dec_steps = (long)steps;
        r->step_bytes = (double)nf_stage_ctr(&d->st[0], "bytes") / steps;
        r->step_used = (double)nf_stage_ctr(&d->st[2], "tile_bytes_used") / steps;
        const double wall = s1->t - mid->t;
        r->step_mb_s = nf_snap_ratio((double)nf_stage_ctr(&d->st[0], "bytes") / 1e6, wall);
        r->step_busy = nf_snap_ratio((double)nf_stage_ctr(&d->st[0], "busy_ns") * 1e-9, wall);
    }
    free(d);
}

/* Fills r from the counters' change over the clients' run. */
static void fill_row(struct nf_bench_row *r, const struct nf_stack_snap *s0,
                     const struct nf_stack_snap *s1, const struct par_client *cl, int n)
{
    struct nf_stack_snap *d = calloc(1, sizeof(*d));
    if (!d)
        return;
    nf_stack_snap_delta(d, s1, s0);
    const struct nf_stage_snap *fe = &d->st[0], *co = &d->st[2];
    const double bytes = (double)nf_stage_ctr(fe, "bytes");
    const double toks =
        (double)(nf_stage_ctr(co, "prompt_tokens") + nf_stage_ctr(co, "decode_tokens"));
    const double dec = (double)nf_stage_ctr(co, "decode_tokens");
    const double dec_ns = (double)nf_stage_ctr(co, "decode_ns");
    const double all_ns = dec_ns + (double)nf_stage_ctr(co, "prompt_ns");
    if (s1->st[0].ok) {
        r->mb_s = nf_snap_ratio(bytes / 1e6, s1->t - s0->t);
        r->bytes_per_tok = nf_snap_ratio(bytes, toks);
    }
    if (s1->st[2].ok) {
        /* Decode steps' tokens over their time (prompts, evaluated alone, excluded). */
        r->agg_tok_s = nf_snap_ratio(dec, dec_ns * 1e-9);
        r->stall = nf_snap_ratio((double)nf_stage_ctr(co, "stall_ns"), all_ns);
        r->shared_batch = nf_snap_ratio((double)nf_stage_ctr(co, "shared_rows"),
                                        (double)nf_stage_ctr(co, "shared_steps"));
    }
    double sum = 0;
    int k = 0;
    for (int i = 0; i < n; i++)
        if (!isnan(cl[i].tok_s)) {
            sum += cl[i].tok_s;
            k++;
        }
    r->tok_s = k ? sum / k : NAN;
    free(d);
}

void nf_bench_run_parallel(struct nf_bench *b, struct nf_bench_row *r, int n_seq)
{
    char phase[32], dir[PATH_MAX], log[PATH_MAX + 32], ram[32], thr[32], n[32], par[16], ctx[32];
    snprintf(phase, sizeof(phase), "parallel-%d", n_seq);
    snprintf(r->mode, sizeof(r->mode), "stack x%d", n_seq);
    r->n_seq = n_seq;
    r->agg_tok_s = r->shared_batch = r->step_bytes = r->step_used = NAN;
    r->step_mb_s = r->step_busy = NAN;
    if ((size_t)snprintf(dir, sizeof(dir), "%s/%s", b->base, phase) >= sizeof(dir)) {
        nf_errf(r->error, sizeof(r->error), 0, "run directory name too long");
        return;
    }
    snprintf(log, sizeof(log), "%s.log", dir);
    snprintf(ram, sizeof(ram), "%llu", (unsigned long long)b->o.ram);
    snprintf(thr, sizeof(thr), "%ld", b->stack_threads);
    snprintf(n, sizeof(n), "%ld", b->o.n);
    snprintf(par, sizeof(par), "%d", n_seq);
    snprintf(ctx, sizeof(ctx), "%u", b->n_ctx);
    char tmo[32];
    snprintf(tmo, sizeof(tmo), "%ld", b->o.timeout + (long)NF_BENCH_CANCEL_WAIT);
    struct nf_cgroup cg;
    const bool have_cg = b->use_cgroup;
    if (!nf_bench_phase_cgroup(b, &cg, phase, r))
        return;
    nf_bench_drop_cache(b->nft);
    nf_bench_progress(b, "%s: up --parallel %d (run dir %s%s)", r->mode, n_seq, dir,
                      have_cg ? ", in its memory cgroup" : "");
    char ub[32]; /* bench -ub: the prompt chunk of every engine, these too */
    snprintf(ub, sizeof(ub), "%ld", b->o.ubatch);
    char *up_argv[] = {NULL,
                       "up",
                       "--model",
                       b->nft,
                       "--ram",
                       ram,
                       "--run-dir",
                       dir,
                       "-t",
                       thr,
                       "--ctx",
                       ctx,
                       "--parallel",
                       par,
                       "-ctk",
                       (char *)nf_kv_type_name((enum nf_type)b->o.type_k),
                       "-ctv",
                       (char *)nf_kv_type_name((enum nf_type)b->o.type_v),
                       b->o.ubatch ? "-ub" : NULL,
                       ub,
                       NULL};
    pid_t pid = nf_bench_spawn(b, up_argv, have_cg ? &cg : NULL, NULL, log);
    int st = pid > 0 ? nf_bench_wait(pid, NF_BENCH_UP_TIMEOUT) : -1;
    if (pid > 0 && st < 0)
        nf_bench_kill_wait(pid);
    struct par_client *cl = calloc((size_t)n_seq, sizeof(*cl));
    struct nf_stack_snap *s0 = calloc(1, sizeof(*s0)), *s1 = calloc(1, sizeof(*s1));
    struct nf_stack_snap *mid = calloc(1, sizeof(*mid));
    bool have_mid = false;
    if (st != 0 || !cl || !s0 || !s1 || !mid) {
        char last[300];
        nf_bench_log_last_line(log, last, sizeof(last));
        nf_errf(r->error, sizeof(r->error), 0, "up failed (%s): %s",
                st < 0 ? "timeout"
                : st   ? "exit"
                       : "out of memory",
                last);
        goto down;
    }
    nf_stack_snap_take(dir, s0);
    nf_bench_progress(b, "%s: %d x gen -n %ld", r->mode, n_seq, b->o.n);
    int started = 0;
    for (int i = 0; i < n_seq; i++) {
        char prompt[32];
        snprintf(prompt, sizeof(prompt), "Request %d", i + 1);
        /* A client waits for the prompts before its own (evaluated one at a time) without a
         * frame: gen's silence limit is the whole time box. */
        char *gen_argv[16] = {NULL, "gen", "--run-dir", dir,      "-n",        n,  "--temp",
                              "0",  "-p",  prompt,      "--json", "--timeout", tmo};
        if (b->o.freq_pen) {
            gen_argv[13] = "--frequency-penalty";
            gen_argv[14] = (char *)b->o.freq_pen;
        }
        int fd = -1;
        cl[i].tok_s = NAN;
        cl[i].pid = nf_bench_spawn(b, gen_argv, NULL, &fd, log);
        cl[i].l.fd = fd;
        cl[i].l.eof = cl[i].pid < 0;
        started += cl[i].pid > 0;
    }
    if (started < n_seq)
        nf_errf(r->error, sizeof(r->error), 0, "cannot start %d gen clients: %s", n_seq - started,
                strerror(errno));
    r->tokens = follow_all(b, r, cl, n_seq, &cg, have_cg, dir, mid, &have_mid);
    for (int i = 0; i < n_seq; i++) {
        if (cl[i].pid <= 0)
            continue;
        close(cl[i].l.fd);
        if (nf_bench_wait(cl[i].pid, NF_BENCH_CANCEL_WAIT) < 0)
            nf_bench_kill_wait(cl[i].pid);
        if (isnan(cl[i].tok_s) && !r->timed_out && !r->error[0]) {
            char last[300];
            nf_bench_log_last_line(log, last, sizeof(last));
            nf_errf(r->error, sizeof(r->error), 0, "gen %d failed: %s", i + 1, last);
        }
    }
    nf_stack_snap_take(dir, s1);
    r->ran = r->tokens > 0;
    fill_row(r, s0, s1, cl, n_seq);
    if (have_mid)
        fill_decode(r, mid, s1);
    nf_bench_phase_peak(&cg, have_cg, r, dir);
down:
    free(cl);
    free(s0);
    free(s1);
    free(mid);
    nf_bench_progress(b, "%s: down", r->mode);
    char *down_argv[] = {NULL, "down", "--run-dir", dir, NULL};
    pid = nf_bench_spawn(b, down_argv, NULL, NULL, log);
    if (pid > 0 && nf_bench_wait(pid, NF_BENCH_DOWN_WAIT) < 0)
        nf_bench_kill_wait(pid);
    if (have_cg) {
        int rc = nf_cgroup_remove(&cg);
        if (rc < 0)
            nf_bench_progress(b, "warning: cannot remove cgroup %s: %s", cg.path, strerror(-rc));
    }
}
