/* bench_llama.c - llama.cpp's figure beside the -p table's rows: its `llama-bench -p N -n 0`
 * (prompt processing only, one repetition, flash attention off) on the same .gguf with the
 * same threads, in a memory cgroup of the same budget, the file's pages dropped first, as the
 * engines' rows are run. Its prompt tok/s is its pp figure; its time to first token is the
 * prompt's time at that rate (llama-bench samples nothing). */
#include <errno.h>
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "bench.h"
#include "nf_err.h"
#include "nf_time.h"

/* The first executable name on PATH into out; false when there is none. */
static bool find_on_path(const char *name, char *out, size_t len)
{
    const char *path = getenv("PATH");
    while (path && *path) {
        const char *end = strchr(path, ':');
        const size_t n = end ? (size_t)(end - path) : strlen(path);
        if (n && (size_t)snprintf(out, len, "%.*s/%s", (int)n, path, name) < len &&
            access(out, X_OK) == 0)
            return true;
        path = end ? end + 1 : NULL;
    }
    return false;
}

/* Reads llama-bench's JSON Lines from fd until it closes or the time box ends: the pp test's
 * n_prompt and avg_ts into l. Returns false on the time box. */
static bool read_result(struct nf_bench *b, int fd, struct nf_bench_llama *l)
{
    static struct nf_bench_lines lines;
    lines.fd = fd;
    lines.len = 0;
    lines.eof = false;
    size_t consumed = 0;
    const double end = nf_now_s() + (double)b->o.timeout;
    while (!lines.eof && !nf_bench_stop) {
        if (nf_now_s() > end)
            return false;
        char *line = nf_bench_next_line(&lines, 200, &consumed);
        if (!line)
            continue;
        const double np = nf_bench_json_num(line, "n_prompt");
        const double ts = nf_bench_json_num(line, "avg_ts");
        if (np > 0 && np == b->o.prompt && nf_bench_json_num(line, "n_gen") == 0 && ts > 0) {
            l->prompt_tokens = (int)np;
            l->prompt_tok_s = ts;
            l->ttft = np / ts;
        }
    }
    return true;
}

void nf_bench_run_llama(struct nf_bench *b)
{
    struct nf_bench_llama *l = &b->llama;
    l->prompt_tok_s = l->ttft = NAN;
    if (!b->o.prompt || (b->o.llama_bench && !strcmp(b->o.llama_bench, "off")))
        return;
    char exe[PATH_MAX];
    if (b->o.llama_bench)
        snprintf(exe, sizeof(exe), "%s", b->o.llama_bench);
    else if (!find_on_path("llama-bench", exe, sizeof(exe)))
        return; /* not installed: no reference row */
    l->tried = true;
    if (!b->gguf[0]) {
        snprintf(l->error, sizeof(l->error), "needs the .gguf (the model given is a .nft)");
        return;
    }
    struct nf_bench_row tmp = {0};
    struct nf_cgroup cg;
    const bool have_cg = b->use_cgroup;
    if (!nf_bench_phase_cgroup(b, &cg, "llama", &tmp)) {
        snprintf(l->error, sizeof(l->error), "%s", tmp.error);
        return;
    }
    nf_bench_drop_cache(b->gguf);
    char p[32], t[32], log[PATH_MAX + 16];
    snprintf(p, sizeof(p), "%ld", b->o.prompt);
    snprintf(t, sizeof(t), "%ld", b->o.threads);
    snprintf(log, sizeof(log), "%s/llama.log", b->base);
    char *argv[] = {exe, "-m", b->gguf, "-p",  p,   "-n", "0",     "-t",
                    t,   "-r", "1",     "-fa", "0", "-o", "jsonl", NULL};
    nf_bench_progress(b, "llama.cpp: %s -p %s -n 0 -t %s%s", exe, p, t,
                      have_cg ? " in its memory cgroup" : "");
    int fd = -1;
    pid_t pid = nf_bench_spawn_exe(exe, argv, have_cg ? &cg : NULL, &fd, log);
    if (pid < 0) {
        nf_errf(l->error, sizeof(l->error), 0, "cannot start %s: %s", exe, strerror(errno));
    } else {
        const bool in_time = read_result(b, fd, l);
        close(fd);
        int st = nf_bench_wait(pid, in_time ? 30.0 : 0.0);
        if (st < 0) {
            nf_bench_kill_wait(pid);
            snprintf(l->error, sizeof(l->error), "no result within the time box (%ld s)",
                     b->o.timeout);
        } else if (st != 0 || isnan(l->prompt_tok_s)) {
            char last[200];
            nf_bench_log_last_line(log, last, sizeof(last));
            nf_errf(l->error, sizeof(l->error), 0, "%s exited %d without a pp%ld result: %s", exe,
                    st, b->o.prompt, last);
            l->prompt_tok_s = l->ttft = NAN;
        } else {
            l->ran = true;
        }
        bool kernel;
        if (have_cg && nf_cgroup_peak(&cg, &l->peak, &kernel) < 0)
            l->peak = 0;
    }
    if (have_cg && nf_cgroup_remove(&cg) < 0)
        nf_bench_progress(b, "warning: cannot remove cgroup %s", cg.path);
}
