/* cmd_bench.c - nanoflowctl bench: raw disk bandwidth, the stack's decode (exact, sparse, and
 * several sequences at once) and the plain-mmap engine, side by side on one model under one RAM
 * budget, in one table. */
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <limits.h>
#include <math.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "bench.h"
#include "cmds.h"
#include "nf_file.h"
#include "nf_time.h"
#include "stack.h"
#include "stack_ctl.h"
#include "stack_snap.h"
#include "stream.h"

volatile sig_atomic_t nf_bench_stop;

static void on_signal(int sig)
{
    (void)sig;
    nf_bench_stop = 1;
}

void nf_bench_progress(struct nf_bench *b, const char *fmt, ...)
{
    char msg[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    fprintf(stderr, "bench [%5.1fs] %s\n", nf_now_s() - b->t_start, msg);
}

static int rm_entry(const char *path, const struct stat *st, int type, struct FTW *ftw)
{
    (void)st;
    (void)type;
    (void)ftw;
    remove(path);
    return 0;
}

/* Can we make memory cgroups? Tries once with a probe cgroup; sets b->use_cgroup and where,
 * or why not. */
static void probe_cgroup(struct nf_bench *b)
{
    if (b->o.no_cgroup) {
        snprintf(b->cg_why, sizeof(b->cg_why), "--no-cgroup");
    } else {
        struct nf_cgroup probe;
        char name[96];
        const char *env = getenv("NANOFLOW_BENCH_CGROUP");
        snprintf(name, sizeof(name), "%s-probe-%d", env && *env ? env : "nanoflow-bench",
                 (int)getpid());
        if (nf_cgroup_create(&probe, name, b->o.ram, b->cg_why, sizeof(b->cg_why)) == 0) {
            b->use_cgroup = true;
            b->cg_version = probe.version;
            snprintf(b->cg_where, sizeof(b->cg_where), "%.*s",
                     (int)(strrchr(probe.path, '/') - probe.path), probe.path);
            nf_cgroup_remove(&probe);
        }
    }
}

/* The columns computed from other rows: the I/O bound from the raw read, vs mmap, and the mmap
 * engine's hit rate from the exact engine's bytes per token. */
static void fill_ratios(struct nf_bench *b, struct nf_bench_row *mm)
{
    for (int i = 0; i < b->n_rows; i++) {
        struct nf_bench_row *r = &b->rows[i];
        if (!r->ran)
            continue;
        if (b->raw.ok && r->bytes_per_tok > 0)
            r->io_bound = b->raw.mb_s * 1e6 / r->bytes_per_tok;
        r->vs_io_bound = nf_snap_ratio(r->tok_s, r->io_bound);
        const struct nf_bench_row *ref = r->depth ? NULL : mm; /* -d rows: mmap at that depth */
        for (int j = 0; r->depth && j < b->n_rows; j++)
            if (b->rows[j].is_mmap && b->rows[j].depth == r->depth)
                ref = &b->rows[j];
        if (!r->is_mmap && ref && ref->ran)
            r->vs_mmap = nf_snap_ratio(r->tok_s, ref->tok_s);
    }
    /* The mmap engine uses the exact engine's bytes per token: what it did not read was hit. */
    if (mm && mm->ran && b->n_rows > 1 && b->rows[0].ran && b->rows[0].used_per_tok > 0 &&
        mm->bytes_per_tok >= 0) {
        double u = b->rows[0].used_per_tok;
        mm->hit_rate = mm->bytes_per_tok >= u ? 0.0 : 1.0 - mm->bytes_per_tok / u;
    }
}

/* --- main --------------------------------------------------------------------------------- */

static void row_init(struct nf_bench_row *r);

/* The -d rows: for each depth, the exact stack and (with a .gguf) run --mmap generating after a
 * prompt of that many tokens, which stands in for -p's prompt meanwhile. */
static void run_depths(struct nf_bench *b)
{
    char *prompt = b->prompt;
    for (int i = 0; i < b->o.n_depth && !nf_bench_stop; i++) {
        b->depth = b->o.depth[i];
        if (!(b->prompt = nf_bench_prompt_text(b->depth)))
            break;
        struct nf_bench_row *r = &b->rows[b->n_rows++];
        row_init(r);
        nf_bench_run_stack(b, r, 0.0f);
        if (b->gguf[0] && !nf_bench_stop) {
            r = &b->rows[b->n_rows++];
            row_init(r);
            nf_bench_run_mmap(b, r);
        }
        free(b->prompt);
    }
    b->prompt = prompt;
    b->depth = 0;
}

static void row_init(struct nf_bench_row *r)
{
    memset(r, 0, sizeof(*r));
    r->tok_s = r->mb_s = r->busy_mb_s = r->bytes_per_tok = NAN;
    r->hit_rate = r->req_hit_rate = r->used_per_tok = r->recall = r->stall = NAN;
    r->vs_mmap = r->io_bound = r->vs_io_bound = NAN;
    r->agg_tok_s = r->shared_batch = NAN;
    r->prompt_tok_s = r->ttft = NAN;
    r->spec_base = -1;
    r->dec_bytes_per_tok = r->prompt_bytes = NAN;
}

int nf_cmd_bench(int argc, char **argv)
{
    static struct nf_bench b; /* large (rows, paths): not on the stack */
    memset(&b, 0, sizeof(b));
    int rc = nf_bench_parse_args(argc, argv, &b.o);
    if (rc)
        return rc == 1 ? 0 : rc;
    b.t_start = nf_now_s();
    b.tty = isatty(2);
    ssize_t sl = readlink("/proc/self/exe", b.self, sizeof(b.self) - 1);
    if (sl <= 0) {
        fprintf(stderr, "nanoflowctl bench: cannot find our own binary: %s\n", strerror(errno));
        return 1;
    }
    b.self[sl] = '\0';
    char absm[PATH_MAX];
    if (!realpath(b.o.model, absm)) {
        fprintf(stderr, "nanoflowctl bench: %s: %s\n", b.o.model, strerror(errno));
        return 1;
    }
    /* A .gguf is served in place through the cached index `up` uses (sparse phases resolve
     * it again, to its .nft conversion). */
    if (nf_up_resolve_model(absm, false, b.nft, sizeof(b.nft)))
        return 1;
    if (strcmp(absm, b.nft))
        snprintf(b.gguf, sizeof(b.gguf), "%s", absm);
    char err[512];
    struct nf_nft *f = NULL;
    if ((rc = nf_nft_open(&f, b.nft, false, err, sizeof(err))) < 0) {
        fprintf(stderr, "nanoflowctl bench: %s\n", err);
        return 1;
    }
    struct nf_stack_plan plan;
    /* The stack rows get -t as given (for 0 the stack picks per step); the other engines the
     * count of the stack's one-sequence decode step. The plan is the stack's, for its pool. */
    b.stack_threads = b.o.threads;
    b.o.threads = (long)nf_stack_decode_threads((uint32_t)b.o.threads);
    const uint32_t pool_threads = nf_stack_compute_threads((uint32_t)b.stack_threads);
    if (nf_stack_plan_kv(f, b.o.ram, (uint32_t)b.o.ctx, pool_threads, 1, (uint32_t)b.o.ubatch,
                         (uint32_t)b.o.type_k, (uint32_t)b.o.type_v,
                         b.o.kv_offload ? NF_KV_BLOCK : 0, &plan, err, sizeof(err)) < 0) {
        fprintf(stderr, "nanoflowctl bench: %s\n", err);
        nf_nft_close(f);
        return 1;
    }
    if (b.o.kv_auto && b.o.ctx > 0 && plan.n_ctx < (uint32_t)b.o.ctx) { /* as up's auto */
        b.o.kv_offload = true;
        if (nf_stack_plan_kv(f, b.o.ram, (uint32_t)b.o.ctx, pool_threads, 1, (uint32_t)b.o.ubatch,
                             (uint32_t)b.o.type_k, (uint32_t)b.o.type_v, NF_KV_BLOCK, &plan, err,
                             sizeof(err)) < 0) {
            fprintf(stderr, "nanoflowctl bench: %s\n", err);
            nf_nft_close(f);
            return 1;
        }
    }
    b.n_ctx = plan.n_ctx;
    if (b.o.prompt && (uint64_t)b.o.prompt + (uint64_t)b.o.n > b.n_ctx) {
        fprintf(stderr,
                "nanoflowctl bench: -p %ld and -n %ld need a context of %ld tokens, the plan "
                "has %u: give -c\n",
                b.o.prompt, b.o.n, b.o.prompt + b.o.n, b.n_ctx);
        nf_nft_close(f);
        return 2;
    }
    for (int i = 0; i < b.o.n_depth; i++)
        if ((uint64_t)b.o.depth[i] + (uint64_t)b.o.n > b.n_ctx) {
            fprintf(stderr,
                    "nanoflowctl bench: -d %ld and -n %ld need a context of %ld tokens, the plan "
                    "has %u: give -c\n",
                    b.o.depth[i], b.o.n, b.o.depth[i] + b.o.n, b.n_ctx);
            nf_nft_close(f);
            return 2;
        }
    if (b.o.prompt_file) { /* -f: the file's text, verbatim, as run -f and gen -f read it */
        size_t len = 0;
        if (!(b.prompt = nf_read_file(b.o.prompt_file, &len)) || strlen(b.prompt) != len) {
            fprintf(stderr, "nanoflowctl bench: -f %s: %s\n", b.o.prompt_file,
                    b.prompt ? "holds a NUL byte" : strerror(errno));
            free(b.prompt);
            nf_nft_close(f);
            return 2;
        }
    }
    if (b.o.prompt && !(b.prompt = nf_bench_prompt_text(b.o.prompt))) {
        fprintf(stderr, "nanoflowctl bench: out of memory\n");
        nf_nft_close(f);
        return 1;
    }

    if (b.o.run_dir) {
        snprintf(b.base, sizeof(b.base), "%s", b.o.run_dir);
        if (nf_rundir_create(b.base, err, sizeof(err)) < 0) {
            fprintf(stderr, "nanoflowctl bench: %s\n", err);
            nf_nft_close(f);
            return 1;
        }
    } else {
        snprintf(b.base, sizeof(b.base), "/tmp/nanoflow-bench-XXXXXX");
        if (!mkdtemp(b.base)) {
            fprintf(stderr, "nanoflowctl bench: cannot create %s: %s\n", b.base, strerror(errno));
            nf_nft_close(f);
            return 1;
        }
        b.base_made = true;
    }
    struct sigaction sa = {0};
    sa.sa_handler = on_signal;
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);

    probe_cgroup(&b);
    if (b.use_cgroup)
        nf_bench_progress(&b, "memory cgroups: v%d under %s, limit %llu bytes per engine",
                          b.cg_version, b.cg_where, (unsigned long long)b.o.ram);
    else
        nf_bench_progress(&b, "memory cgroups not used: %s (peak memory from VmHWM)", b.cg_why);

    /* Pending writeback (a conversion just written, say) would slow the first pass down. */
    int sfd = open(b.nft, O_RDONLY | O_CLOEXEC);
    if (sfd >= 0) {
        syncfs(sfd);
        close(sfd);
    }
    nf_bench_raw_read(&b, f, &b.raw_pass[0]);
    if (b.raw_pass[0].ok)
        nf_bench_progress(&b, "raw: %.1f MB/s (%s)", b.raw_pass[0].mb_s, b.raw_pass[0].backend);
    else
        nf_bench_progress(&b, "raw: failed: %s", b.raw_pass[0].error);

    float levels[NF_BENCH_MAX_LEVELS + 1] = {0};
    int n_levels = 1;
    for (int i = 0; i < b.o.n_levels; i++)
        levels[n_levels++] = b.o.levels[i];
    for (int i = 0; i < n_levels && !nf_bench_stop; i++) {
        struct nf_bench_row *r = &b.rows[b.n_rows++];
        row_init(r);
        nf_bench_run_stack(&b, r, levels[i]);
    }
    /* --lookup / --draft: the exact stack again with speculative decoding (rows[0] is the
     * exact stack). */
    const enum nf_bench_spec kinds[2] = {b.o.lookup ? NF_BENCH_SPEC_LOOKUP : NF_BENCH_SPEC_NONE,
                                         b.o.draft ? NF_BENCH_SPEC_DRAFT : NF_BENCH_SPEC_NONE};
    for (int i = 0; i < 2 && !nf_bench_stop; i++) {
        if (!kinds[i])
            continue;
        struct nf_bench_row *r = &b.rows[b.n_rows++];
        row_init(r);
        nf_bench_run_spec(&b, r, kinds[i], false, 0);
    }
    for (int i = 0; i < b.o.n_parallel && !nf_bench_stop; i++) {
        struct nf_bench_row *r = &b.rows[b.n_rows++];
        row_init(r);
        nf_bench_run_parallel(&b, r, b.o.parallel[i]);
    }
    struct nf_bench_row *mm = NULL;
    if (!nf_bench_stop) {
        mm = &b.rows[b.n_rows++];
        row_init(mm);
        nf_bench_run_mmap(&b, mm);
        for (int i = 0; i < 2 && !nf_bench_stop && b.gguf[0]; i++) {
            if (!kinds[i])
                continue;
            struct nf_bench_row *r = &b.rows[b.n_rows++];
            row_init(r);
            nf_bench_run_spec(&b, r, kinds[i], true, (int)(mm - b.rows));
        }
    }
    if (!nf_bench_stop)
        nf_bench_run_llama(&b);
    run_depths(&b);
    /* A second raw pass after the engines: the bound uses the faster of the two, so a disk
     * busy with someone else's writes during one pass does not flatter the engines. */
    if (!nf_bench_stop && b.raw_pass[0].ok) {
        nf_bench_raw_read(&b, f, &b.raw_pass[1]);
        if (b.raw_pass[1].ok)
            nf_bench_progress(&b, "raw (after the engines): %.1f MB/s", b.raw_pass[1].mb_s);
    }
    nf_nft_close(f);
    b.raw = b.raw_pass[0];
    if (b.raw_pass[1].ok && (!b.raw.ok || b.raw_pass[1].mb_s > b.raw.mb_s))
        b.raw = b.raw_pass[1];
    fill_ratios(&b, mm);
    if (b.o.json)
        nf_bench_print_json(&b);
    else
        nf_bench_print_table(&b);
    fflush(stdout);
    free(b.prompt);
    if (b.base_made)
        nftw(b.base, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
    nf_bench_progress(&b, "done");
    bool ok = b.raw.ok && !nf_bench_stop;
    for (int i = 0; i < b.n_rows; i++) {
        /* A .nft has no GGUF to map: its mmap rows say so in the table, as --help promises,
         * and are not failures. */
        if (b.rows[i].is_mmap && !b.gguf[0])
            continue;
        ok = ok && b.rows[i].ran && !b.rows[i].error[0];
        if (nf_bench_spec_differs(&b, &b.rows[i])) {
            fprintf(stderr, "nanoflowctl bench: %s gave other tokens than %s\n", b.rows[i].mode,
                    b.rows[b.rows[i].spec_base].mode);
            ok = false;
        }
    }
    return nf_bench_stop ? 130 : ok ? 0 : 1;
}
