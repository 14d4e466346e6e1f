/* bench_run.c - nanoflowctl bench's engine runs: the stack at one sparsity (up, gen, its
 * counters, down) and run --mmap, each in its own memory cgroup when there is one. */
#include <errno.h>
#include <fcntl.h>
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
#include "nf_proc.h"
#include "nf_time.h"
#include "stack_ctl.h"
#include "stack_snap.h"

#define NF_BENCH_UP_TIMEOUT  120.0 /* seconds for `up` (it waits 60 s for READY itself) */
#define NF_BENCH_DOWN_WAIT   30.0
#define NF_BENCH_CANCEL_WAIT 15.0 /* after a phase's time box: wait this long for the end */

/* Drops path's pages from the page cache (so each engine starts cold and its reads are charged
 * to its own cgroup). */
void nf_bench_drop_cache(const char *path)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return;
    fdatasync(fd);
    posix_fadvise(fd, 0, 0, POSIX_FADV_DONTNEED);
    close(fd);
}

/* Creates this phase's cgroup when cgroups are in use; false when it could not (row error). */
bool nf_bench_phase_cgroup(struct nf_bench *b, struct nf_cgroup *cg, const char *phase,
                           struct nf_bench_row *r)
{
    if (!b->use_cgroup)
        return true;
    char name[128], why[512];
    const char *env = getenv("NANOFLOW_BENCH_CGROUP");
    snprintf(name, sizeof(name), "%s-%s", env && *env ? env : "nanoflow-bench", phase);
    if (!env || !*env) {
        char pidpart[32];
        snprintf(pidpart, sizeof(pidpart), "-%d", (int)getpid());
        strncat(name, pidpart, sizeof(name) - strlen(name) - 1);
    }
    int rc = nf_cgroup_create(cg, name, b->o.ram, why, sizeof(why));
    if (rc < 0) {
        nf_errf(r->error, sizeof(r->error), 0, "memory cgroup: %s", why);
        return false;
    }
    return true;
}

static void phase_peak(struct nf_cgroup *cg, bool have_cg, struct nf_bench_row *r,
                       uint64_t hwm_bytes)
{
    if (have_cg) {
        bool kernel = false;
        if (nf_cgroup_peak(cg, &r->peak, &kernel) == 0)
            r->peak_src = kernel ? (cg->version == 2 ? "memory.peak" : "memory.max_usage_in_bytes")
                                 : "polled memory usage";
        nf_cgroup_oom(cg, &r->oom_kills, &r->limit_hits);
    } else {
        r->peak = hwm_bytes;
        r->peak_src = "VmHWM";
    }
}

void nf_bench_phase_peak(struct nf_cgroup *cg, bool have_cg, struct nf_bench_row *r,
                         const char *dir)
{
    uint64_t hwm = 0;
    for (int i = 0; i < NF_N_ROLES && !have_cg; i++) {
        int dp = nf_pidfile_read(dir, nf_stack_roles[i]);
        if (dp > 0)
            hwm += nf_proc_value(dp, "status", "VmHWM") * 1024;
    }
    phase_peak(cg, have_cg, r, hwm);
}

/* Reads a generation's JSON Lines from fd (gen --json or run --json): counts tokens (progress),
 * stops the child with sig after the time box, and fills tok_s / tokens. Calls tick(ud, pid)
 * about every 200 ms and after every token. Returns true when the summary line arrived. */
static bool follow_gen(struct nf_bench *b, struct nf_bench_row *r, pid_t pid, int fd, int sig,
                       void (*tick)(void *ud, pid_t pid, int tokens), void *ud)
{
    static struct nf_bench_lines l;
    l.fd = fd;
    l.len = 0;
    l.eof = false;
    size_t consumed = 0;
    double t0 = nf_now_s(), deadline = t0 + (double)b->o.timeout, t_first = 0, t_last = 0;
    double last_report = 0;
    bool signalled = false, summary = false;
    while (!l.eof) {
        double now = nf_now_s();
        if (!signalled && (now > deadline || nf_bench_stop)) {
            kill(pid, sig);
            signalled = true;
            r->timed_out = !nf_bench_stop;
            deadline = now + NF_BENCH_CANCEL_WAIT;
            nf_bench_progress(b, "%s: %s after %d tokens", r->mode,
                              nf_bench_stop ? "interrupted" : "time box reached, stopping",
                              r->tokens);
        } else if (signalled && now > deadline) {
            kill(pid, SIGKILL);
            break;
        }
        char *line = nf_bench_next_line(&l, 200, &consumed);
        tick(ud, pid, r->tokens);
        if (!line)
            continue;
        if (strstr(line, "\"gen_ids\"")) {
            summary = true;
            r->ids_hash = nf_bench_json_list_hash(line, "gen_ids");
            double ts = nf_bench_json_num(line, "decode_tok_s");
            if (!isnan(ts) && ts > 0)
                r->tok_s = ts;
            double pt = nf_bench_json_num(line, "prompt_tok_s");
            double pn = nf_bench_json_num(line, "prompt_tokens");
            if (b->prompt && !isnan(pt) && pt > 0)
                r->prompt_tok_s = pt;
            if (b->prompt && !isnan(pn))
                r->prompt_tokens = (int)pn;
            const double dr = nf_bench_json_num(line, "drafted");
            const double ac = nf_bench_json_num(line, "accepted");
            if (r->spec && !isnan(dr) && !isnan(ac)) {
                r->drafted = (long)dr;
                r->accepted = (long)ac;
            }
            continue;
        }
        if (strncmp(line, "{\"id\":", 6))
            continue;
        r->tokens++;
        t_last = nf_now_s();
        if (r->tokens == 1) {
            t_first = t_last;
            /* From the client's start: the request, the prompt's evaluation (and for run
             * --mmap the model's opening), the first sampled token. */
            if (b->prompt)
                r->ttft = t_first - t0;
            tick(ud, pid, r->tokens); /* the counters at the first token (-d rows) */
        }
        if (b->tty || t_last - last_report > 1.0 || r->tokens == b->o.n) {
            last_report = t_last;
            nf_bench_progress(b, "%s: tokens %d/%ld", r->mode, r->tokens, b->o.n);
        }
    }
    /* Cut short: the rate of the tokens that arrived after the first (prompt) one. */
    if (!summary && r->tokens >= 2 && t_last > t_first)
        r->tok_s = (r->tokens - 1) / (t_last - t_first);
    return summary;
}

struct stack_tick {
    struct nf_cgroup *cg;
    bool have_cg;
    /* -p and -d rows: the stack's counters when the first token arrived (the prompt is done,
     * the decode starts). */
    const char *dir;
    struct nf_stack_snap *first;
    bool have_first;
};

static void stack_tick(void *ud, pid_t pid, int tokens)
{
    (void)pid;
    (void)tokens;
    struct stack_tick *st = ud;
    if (st->have_cg)
        nf_cgroup_poll(st->cg);
    if (st->first && !st->have_first && tokens >= 1) {
        nf_stack_snap_take(st->dir, st->first);
        st->have_first = true;
    }
}

void nf_bench_run_stack(struct nf_bench *b, struct nf_bench_row *r, float sparsity)
{
    char phase[32], dir[PATH_MAX], log[PATH_MAX + 32], sp[32], ram[32], thr[32], n[32];
    if (sparsity > 0)
        snprintf(phase, sizeof(phase), "sparse-%.2f", (double)sparsity);
    else
        snprintf(phase, sizeof(phase), "exact");
    snprintf(r->mode, sizeof(r->mode), sparsity > 0 ? "stack s=%.2f" : "stack exact",
             (double)sparsity);
    if (r->spec) { /* a --lookup / --draft row (bench_spec.c) */
        snprintf(phase, sizeof(phase), "exact-%s", nf_bench_spec_name(r->spec));
        snprintf(r->mode, sizeof(r->mode), "stack %s", nf_bench_spec_name(r->spec));
    }
    r->sparsity = sparsity;
    if (b->depth) { /* a -d row: its own run directory and name */
        const size_t l = strlen(phase);
        snprintf(phase + l, sizeof(phase) - l, "-d%ld", b->depth);
        snprintf(r->mode, sizeof(r->mode), "stack d=%ld", b->depth);
        r->depth = b->depth;
    }
    if ((size_t)snprintf(dir, sizeof(dir), "%s/%s", b->base, phase) >= sizeof(dir)) {
        nf_errf(r->error, sizeof(r->error), 0, "run directory name too long");
        return;
    }
    snprintf(log, sizeof(log), "%s.log", dir);
    snprintf(sp, sizeof(sp), "%g", (double)sparsity);
    snprintf(ram, sizeof(ram), "%llu", (unsigned long long)b->o.ram);
    snprintf(thr, sizeof(thr), "%ld", b->stack_threads);
    snprintf(n, sizeof(n), "%ld", b->o.n);
    struct nf_cgroup cg;
    bool have_cg = b->use_cgroup;
    if (!nf_bench_phase_cgroup(b, &cg, phase, r))
        return;
    /* Sparse mode needs a .nft's neuron bundles: a GGUF's conversion, made once. */
    char model[PATH_MAX];
    snprintf(model, sizeof(model), "%s", b->nft);
    if (sparsity > 0 && b->gguf[0] && nf_up_resolve_model(b->gguf, true, model, sizeof(model))) {
        nf_errf(r->error, sizeof(r->error), 0, "converting %.200s for sparse mode failed", b->gguf);
        return;
    }
    nf_bench_drop_cache(model);
    nf_bench_progress(b, "%s: up (run dir %s%s)", r->mode, dir,
                      have_cg ? ", in its memory cgroup" : "");
    char ctx[32], ub[32];
    snprintf(ctx, sizeof(ctx), "%u", b->n_ctx);
    snprintf(ub, sizeof(ub), "%ld", b->o.ubatch);
    /* One sequence: the whole budget but its KV cache for the pool (--parallel rows are
     * measured by nf_bench_run_parallel). */
    char *up_argv[28] = {NULL,         "up",
                         "--model",    model,
                         "--ram",      ram,
                         "--run-dir",  dir,
                         "-t",         thr,
                         "--sparsity", sp,
                         "--ctx",      ctx,
                         "--parallel", "1",
                         "-ctk",       (char *)nf_kv_type_name((enum nf_type)b->o.type_k),
                         "-ctv",       (char *)nf_kv_type_name((enum nf_type)b->o.type_v)};
    int k = 20;
    nf_bench_spec_args(b, r->spec, up_argv, &k);
    if (b->o.ubatch) {
        up_argv[k++] = "-ub";
        up_argv[k++] = ub;
    }
    if (b->o.kv_offload) {
        up_argv[k++] = "--kv-offload";
        up_argv[k++] = "on";
    }
    up_argv[k] = NULL;
    pid_t pid = nf_bench_spawn(b, up_argv, have_cg ? &cg : NULL, NULL, log);
    int st = pid > 0 ? nf_bench_wait(pid, NF_BENCH_UP_TIMEOUT) : -1;
    if (pid > 0 && st < 0)
        nf_bench_kill_wait(pid);
    if (st != 0) {
        char last[300];
        nf_bench_log_last_line(log, last, sizeof(last));
        nf_errf(r->error, sizeof(r->error), 0, "up failed (%s): %s", st < 0 ? "timeout" : "exit",
                last);
        goto down;
    }
    struct nf_stack_snap *s0 = calloc(1, sizeof(*s0)), *s1 = calloc(1, sizeof(*s1)),
                         *d = calloc(1, sizeof(*d)), *s_first = calloc(1, sizeof(*s_first));
    if (!s0 || !s1 || !d || !s_first) {
        free(s0);
        free(s1);
        free(d);
        free(s_first);
        nf_errf(r->error, sizeof(r->error), 0, "out of memory");
        goto down;
    }
    nf_stack_snap_take(dir, s0);
    nf_bench_progress(b, "%s: gen -n %ld", r->mode, b->o.n);
    char *gen_argv[16] = {NULL,     "gen", "--run-dir", dir, "-n",    n,
                          "--temp", "0",   "--seed",    "1", "--json"};
    k = 11;
    if (b->prompt) {
        gen_argv[k++] = "-p";
        gen_argv[k++] = b->prompt;
    }
    if (b->o.freq_pen) {
        gen_argv[k++] = "--frequency-penalty";
        gen_argv[k++] = (char *)b->o.freq_pen;
    }
    gen_argv[k] = NULL;
    int out_fd = -1;
    pid = nf_bench_spawn(b, gen_argv, NULL, &out_fd, log);
    if (pid < 0) {
        nf_errf(r->error, sizeof(r->error), 0, "cannot start gen: %s", strerror(errno));
    } else {
        struct stack_tick tk = {&cg, have_cg, dir, b->depth || b->prompt ? s_first : NULL, false};
        bool summary = follow_gen(b, r, pid, out_fd, SIGINT, stack_tick, &tk);
        close(out_fd);
        st = nf_bench_wait(pid, NF_BENCH_CANCEL_WAIT);
        if (st < 0)
            nf_bench_kill_wait(pid);
        if (!summary && !r->timed_out) {
            char last[300];
            nf_bench_log_last_line(log, last, sizeof(last));
            nf_errf(r->error, sizeof(r->error), 0, "gen failed: %s", last);
        }
        nf_stack_snap_take(dir, s1);
        r->ran = r->tokens > 0;
        nf_stack_snap_delta(d, s1, s0);
        const struct nf_stage_snap *fe = &d->st[0], *pr = &d->st[1], *co = &d->st[2];
        double bytes = (double)nf_stage_ctr(fe, "bytes");
        double busy = (double)nf_stage_ctr(fe, "busy_ns") * 1e-9;
        double hits = (double)nf_stage_ctr(fe, "hits");
        double used = (double)nf_stage_ctr(co, "tile_bytes_used");
        double miss = (double)nf_stage_ctr(fe, "misses");
        double tp = (double)nf_stage_ctr(pr, "true_pos");
        double fn = (double)nf_stage_ctr(pr, "false_neg");
        double toks =
            (double)(nf_stage_ctr(co, "prompt_tokens") + nf_stage_ctr(co, "decode_tokens"));
        double ns = (double)(nf_stage_ctr(co, "prompt_ns") + nf_stage_ctr(co, "decode_ns"));
        double stall = (double)nf_stage_ctr(co, "stall_ns");
        if (s1->st[0].ok) {
            r->mb_s = nf_snap_ratio(bytes / 1e6, s1->t - s0->t);
            r->busy_mb_s = nf_snap_ratio(bytes / 1e6, busy);
            r->bytes_per_tok = nf_snap_ratio(bytes, toks);
            r->req_hit_rate = nf_snap_ratio(hits, hits + miss);
            /* Bytes compute used that were already resident (a prefetched tile read during
             * this generation counts as read). */
            if (s1->st[2].ok && used > 0) {
                r->used_per_tok = nf_snap_ratio(used, toks);
                r->hit_rate = bytes >= used ? 0.0 : 1.0 - bytes / used;
            }
        }
        if (tk.have_first && s_first->st[0].ok && s0->st[0].ok) { /* the prompt alone */
            nf_stack_snap_delta(d, s_first, s0);
            r->prompt_bytes = (double)nf_stage_ctr(&d->st[0], "bytes");
        }
        if (tk.have_first && s1->st[0].ok && s_first->st[0].ok && s1->st[2].ok &&
            s_first->st[2].ok) { /* the decode alone: from the first token on */
            nf_stack_snap_delta(d, s1, s_first);
            r->dec_bytes_per_tok = nf_snap_ratio((double)nf_stage_ctr(&d->st[0], "bytes"),
                                                 (double)nf_stage_ctr(&d->st[2], "decode_tokens"));
        }
        if (s1->st[1].ok)
            r->recall = nf_snap_ratio(tp, tp + fn);
        if (s1->st[2].ok) {
            r->stall = nf_snap_ratio(stall, ns);
            /* Compute's decode tokens over its decode time (verification passes included,
             * rejected drafts not counted), beside the client's rate. */
            r->agg_tok_s = nf_snap_ratio((double)nf_stage_ctr(co, "decode_tokens"),
                                         (double)nf_stage_ctr(co, "decode_ns") * 1e-9);
        }
        nf_bench_phase_peak(&cg, have_cg, r, dir);
    }
    free(s0);
    free(s1);
    free(d);
    free(s_first);
down:
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

struct mmap_tick {
    struct nf_cgroup *cg;
    bool have_cg;
    uint64_t read_bytes, hwm_kb;
    double t_first_io, t_last_io;
    uint64_t rb_first; /* read_bytes when the first token arrived */
    int last_tokens;
};

static void mmap_tick(void *ud, pid_t pid, int tokens)
{
    struct mmap_tick *m = ud;
    if (m->have_cg)
        nf_cgroup_poll(m->cg);
    uint64_t rb = nf_proc_value(pid, "io", "read_bytes");
    if (rb > m->read_bytes)
        m->read_bytes = rb;
    uint64_t h = nf_proc_value(pid, "status", "VmHWM");
    if (h > m->hwm_kb)
        m->hwm_kb = h;
    if (tokens == 1 && m->last_tokens == 0) {
        m->rb_first = m->read_bytes;
        m->t_first_io = nf_now_s();
    }
    if (tokens > m->last_tokens)
        m->t_last_io = nf_now_s();
    m->last_tokens = tokens;
}

void nf_bench_run_mmap(struct nf_bench *b, struct nf_bench_row *r)
{
    snprintf(r->mode, sizeof(r->mode), "mmap");
    if (r->spec) /* a --lookup / --draft row (bench_spec.c) */
        snprintf(r->mode, sizeof(r->mode), "mmap %s", nf_bench_spec_name(r->spec));
    r->is_mmap = true;
    char phase[32];
    snprintf(phase, sizeof(phase), "mmap%s%s", r->spec ? "-" : "", nf_bench_spec_name(r->spec));
    if (b->depth) { /* a -d row */
        snprintf(phase, sizeof(phase), "mmap-d%ld", b->depth);
        snprintf(r->mode, sizeof(r->mode), "mmap d=%ld", b->depth);
        r->depth = b->depth;
    }
    if (!b->gguf[0]) {
        nf_errf(r->error, sizeof(r->error), 0, "needs the .gguf (the model given is a .nft)");
        return;
    }
    char log[PATH_MAX + 48], thr[32], n[32], ctx[32];
    snprintf(log, sizeof(log), "%s/%s.log", b->base, phase);
    snprintf(thr, sizeof(thr), "%ld", b->o.threads);
    snprintf(n, sizeof(n), "%ld", b->o.n);
    snprintf(ctx, sizeof(ctx), "%u", b->n_ctx ? b->n_ctx : 256u);
    struct nf_cgroup cg;
    bool have_cg = b->use_cgroup;
    if (!nf_bench_phase_cgroup(b, &cg, phase, r))
        return;
    nf_bench_drop_cache(b->gguf);
    nf_bench_progress(b, "%s: run --mmap -n %ld -c %s%s", r->mode, b->o.n, ctx,
                      have_cg ? " in its memory cgroup" : "");
    char ub[32];
    snprintf(ub, sizeof(ub), "%ld", b->o.ubatch);
    char *argv[32] = {NULL, "run", "--mmap", "-m",     b->gguf, "-n",     n,   "-c",
                      ctx,  "-t",  thr,      "--temp", "0",     "--seed", "1", "--json"};
    int k = 16;
    argv[k++] = "-ctk";
    argv[k++] = (char *)nf_kv_type_name((enum nf_type)b->o.type_k);
    argv[k++] = "-ctv";
    argv[k++] = (char *)nf_kv_type_name((enum nf_type)b->o.type_v);
    if (b->o.ubatch) {
        argv[k++] = "-ub";
        argv[k++] = ub;
    }
    if (b->prompt) {
        argv[k++] = "-p";
        argv[k++] = b->prompt;
    }
    if (b->o.freq_pen) {
        argv[k++] = "--frequency-penalty";
        argv[k++] = (char *)b->o.freq_pen;
    }
    nf_bench_spec_args(b, r->spec, argv, &k);
    argv[k] = NULL;
    int out_fd = -1;
    pid_t pid = nf_bench_spawn(b, argv, have_cg ? &cg : NULL, &out_fd, log);
    if (pid < 0) {
        nf_errf(r->error, sizeof(r->error), 0, "cannot start run --mmap: %s", strerror(errno));
    } else {
        struct mmap_tick mt = {.cg = &cg, .have_cg = have_cg};
        double t0 = nf_now_s();
        bool summary = follow_gen(b, r, pid, out_fd, SIGKILL, mmap_tick, &mt);
        double t1 = nf_now_s();
        close(out_fd);
        uint64_t maxrss_kb = 0;
        int st = nf_bench_wait_ru(pid, NF_BENCH_CANCEL_WAIT, &maxrss_kb);
        if (st < 0)
            nf_bench_kill_wait(pid);
        if (maxrss_kb > mt.hwm_kb)
            mt.hwm_kb = maxrss_kb;
        if (!summary && !r->timed_out) {
            char last[300];
            nf_bench_log_last_line(log, last, sizeof(last));
            nf_errf(r->error, sizeof(r->error), 0, "run --mmap failed (exit %d): %s", st, last);
        }
        r->ran = r->tokens > 0;
        /* Every evaluated token: the prompt (BOS) and each generated one but the last. */
        double toks = (double)r->tokens;
        r->bytes_per_tok = nf_snap_ratio((double)mt.read_bytes, toks);
        r->mb_s = nf_snap_ratio((double)mt.read_bytes / 1e6, t1 - t0);
        phase_peak(&cg, have_cg, r, mt.hwm_kb * 1024);
        if (b->depth && r->tokens >= 2) /* the decode alone: after the first token */
            r->dec_bytes_per_tok =
                nf_snap_ratio((double)(mt.read_bytes - mt.rb_first), (double)(r->tokens - 1));
    }
    if (have_cg) {
        int rc = nf_cgroup_remove(&cg);
        if (rc < 0)
            nf_bench_progress(b, "warning: cannot remove cgroup %s: %s", cg.path, strerror(-rc));
    }
}
