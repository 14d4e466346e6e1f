/* bench_report.c - nanoflowctl bench's report: one table with its notes, or one JSON object. */
#include <math.h>
#include <stdio.h>
#include <string.h>

#include "bench.h"
#include "gen_output.h"
#include "stack.h"
#include "stack_ctl.h"

static void fmt_num(char *buf, size_t len, double v, const char *fmt)
{
    if (isnan(v))
        snprintf(buf, len, "-");
    else
        snprintf(buf, len, fmt, v);
}

void nf_bench_print_table(const struct nf_bench *b)
{
    char sz[32];
    printf("nanoflowctl bench: %s\n", b->gguf[0] ? b->gguf : b->nft);
    printf("  tiles: %s\n", b->nft);
    char pr[64];
    if (b->o.prompt)
        snprintf(pr, sizeof(pr), "%ld tokens (-p)", b->o.prompt);
    else if (b->o.prompt_file)
        snprintf(pr, sizeof(pr), "-f %.50s", b->o.prompt_file);
    else
        snprintf(pr, sizeof(pr), "BOS");
    char thr[64];
    if (b->stack_threads)
        snprintf(thr, sizeof(thr), "%ld threads per engine", b->o.threads);
    else
        snprintf(thr, sizeof(thr), "%ld threads per engine (%u in stack prompt chunks)",
                 b->o.threads, nf_stack_compute_threads(0));
    printf("  budget %s, context %u tokens, %ld tokens per engine (greedy, prompt = %s), %s, "
           "time box %ld s\n",
           nf_ctl_fmt_size(sz, sizeof(sz), b->o.ram), b->n_ctx, b->o.n, pr, thr, b->o.timeout);
    if (b->o.freq_pen)
        printf("  sampler: --frequency-penalty %s in every engine\n", b->o.freq_pen);
    if (b->o.kv_offload)
        printf("  KV cache of the stack rows on disk (up --kv-offload on), in the run directory\n");
    if (b->use_cgroup)
        printf("  memory cgroup: v%d, a fresh one per engine under %s, limit %llu bytes "
               "(peak = the cgroup's, page cache included)\n",
               b->cg_version, b->cg_where, (unsigned long long)b->o.ram);
    else
        printf("  memory cgroup: not used (%s); peak = the processes' VmHWM (the stack's shared "
               "region counted in each daemon)\n",
               b->cg_why);
    if (b->raw.ok) {
        printf("  raw read: %.1f MB/s (%s, O_DIRECT, qd %u, %llu tiles of %.0f KiB on average, "
               "%.1f MiB in file order in %.2f s)\n",
               b->raw.mb_s, b->raw.backend, NF_BENCH_QD, (unsigned long long)b->raw.reads,
               b->raw.avg_tile / 1024.0, (double)b->raw.bytes / 1048576.0, b->raw.secs);
        char after[64];
        fmt_num(after, sizeof(after), b->raw_pass[1].ok ? b->raw_pass[1].mb_s : NAN, "%.1f MB/s");
        printf("            the faster of two passes: before the engines %.1f MB/s, after %s\n",
               b->raw_pass[0].mb_s, after);
    } else
        printf("  raw read: failed: %s\n", b->raw.error);
    printf("\n%-13s %8s %10s %10s %9s %8s %7s %7s %11s %8s %10s %9s\n", "ENGINE", "tok/s",
           "MB/s read", "busy MB/s", "MB/token", "hit rate", "recall", "stall", "peak mem",
           "vs mmap", "I/O bound", "vs bound");
    printf("%-13s %8s %10s %10s %9s %8s %7s %7s %11s %8s %10s %9s\n", "", "", "", "", "", "", "",
           "", "", "", "tok/s", "");
    for (int i = 0; i < b->n_rows; i++) {
        const struct nf_bench_row *r = &b->rows[i];
        char c[12][32];
        fmt_num(c[0], 32, r->ran ? r->tok_s : NAN, "%.3f");
        fmt_num(c[1], 32, r->mb_s, "%.1f");
        fmt_num(c[2], 32, r->busy_mb_s, "%.1f");
        fmt_num(c[3], 32, r->bytes_per_tok / 1e6, "%.1f");
        fmt_num(c[4], 32, r->hit_rate * 100.0, "%.1f%%");
        fmt_num(c[5], 32, r->recall * 100.0, "%.1f%%");
        fmt_num(c[6], 32, r->stall * 100.0, "%.1f%%");
        if (r->peak)
            nf_ctl_fmt_size(c[7], 32, r->peak);
        else
            snprintf(c[7], 32, "-");
        fmt_num(c[8], 32, r->vs_mmap, "%.2fx");
        fmt_num(c[9], 32, r->io_bound, "%.3f");
        fmt_num(c[10], 32, r->vs_io_bound, "%.2fx");
        printf("%-13s %8s %10s %10s %9s %8s %7s %7s %11s %8s %10s %9s\n", r->mode, c[0], c[1], c[2],
               c[3], c[4], c[5], c[6], c[7], c[8], c[9], c[10]);
    }
    bool par = false;
    for (int i = 0; i < b->n_rows; i++)
        par |= b->rows[i].n_seq > 0;
    if (par) {
        printf("\n%-13s %9s %13s %15s %9s %12s %12s %10s %9s %10s %11s\n", "SEQUENCES", "at once",
               "tok/s per seq", "aggregate tok/s", "MB/token", "MB/dec. step", "used MB/step",
               "per shared", "dec. MB/s", "disk busy", "peak mem");
        for (int i = 0; i < b->n_rows; i++) {
            const struct nf_bench_row *r = &b->rows[i];
            if (!r->n_seq)
                continue;
            char c[9][32];
            fmt_num(c[0], 32, r->ran ? r->tok_s : NAN, "%.3f");
            fmt_num(c[1], 32, r->ran ? r->agg_tok_s : NAN, "%.3f");
            fmt_num(c[2], 32, r->bytes_per_tok / 1e6, "%.1f");
            fmt_num(c[3], 32, r->step_bytes / 1e6, "%.1f");
            fmt_num(c[4], 32, r->step_used / 1e6, "%.1f");
            fmt_num(c[5], 32, r->shared_batch, "%.2f");
            fmt_num(c[6], 32, r->step_mb_s, "%.0f");
            fmt_num(c[7], 32, r->step_busy * 100.0, "%.1f%%");
            if (r->peak)
                nf_ctl_fmt_size(c[8], 32, r->peak);
            else
                snprintf(c[8], 32, "-");
            printf("%-13s %9d %13s %15s %9s %12s %12s %10s %9s %10s %11s\n", r->mode, r->n_seq,
                   c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7], c[8]);
        }
    }
    nf_bench_print_spec(b);
    if (b->prompt) {
        printf("\n%-13s %14s %13s %9s %13s\n", "PROMPT", "prompt tokens", "prompt tok/s", "TTFT s",
               "MB read");
        for (int i = 0; i < b->n_rows; i++) {
            const struct nf_bench_row *r = &b->rows[i];
            if (r->n_seq) /* --parallel rows send their own short prompts */
                continue;
            char c[4][32];
            fmt_num(c[0], 32, r->prompt_tokens ? (double)r->prompt_tokens : NAN, "%.0f");
            fmt_num(c[1], 32, r->prompt_tok_s, "%.2f");
            fmt_num(c[2], 32, r->ttft, "%.2f");
            fmt_num(c[3], 32, r->prompt_bytes / 1e6, "%.0f");
            printf("%-13s %14s %13s %9s %13s\n", r->mode, c[0], c[1], c[2], c[3]);
        }
        const struct nf_bench_llama *l = &b->llama;
        if (l->tried && l->ran) {
            char c[3][32];
            fmt_num(c[0], 32, l->prompt_tok_s, "%.2f");
            fmt_num(c[1], 32, l->ttft, "%.2f");
            printf("%-13s %14d %13s %9s %13s\n", "llama.cpp", l->prompt_tokens, c[0], c[1], "-");
            printf("  llama.cpp: llama-bench -p %d -n 0 (pp%d, -fa 0); its TTFT is the prompt's "
                   "time at that rate\n",
                   l->prompt_tokens, l->prompt_tokens);
        } else if (l->tried) {
            printf("%-13s %14s %13s %9s %13s\n", "llama.cpp", "-", "-", "-", "-");
            printf("  llama.cpp: %s\n", l->error);
        }
    }
    if (b->o.n_depth) {
        printf("\n%-13s %8s %14s %9s %12s %14s %11s\n", "DEPTH", "depth", "prompt tokens", "TTFT s",
               "decode tok/s", "MB/dec. token", "peak mem");
        for (int i = 0; i < b->n_rows; i++) {
            const struct nf_bench_row *r = &b->rows[i];
            if (!r->depth)
                continue;
            char c[5][32];
            fmt_num(c[0], 32, r->prompt_tokens ? (double)r->prompt_tokens : NAN, "%.0f");
            fmt_num(c[1], 32, r->ttft, "%.2f");
            fmt_num(c[2], 32, r->ran ? r->tok_s : NAN, "%.3f");
            fmt_num(c[3], 32, r->dec_bytes_per_tok / 1e6, "%.2f");
            if (r->peak)
                nf_ctl_fmt_size(c[4], 32, r->peak);
            else
                snprintf(c[4], 32, "-");
            printf("%-13s %8ld %14s %9s %12s %14s %11s\n", r->mode, r->depth, c[0], c[1], c[2],
                   c[3], c[4]);
        }
    }
    printf("\n");
    for (int i = 0; i < b->n_rows; i++) {
        const struct nf_bench_row *r = &b->rows[i];
        if (r->error[0])
            printf("  %s: %s%s\n", r->mode, r->timed_out ? "time box reached; " : "", r->error);
        else if (r->timed_out)
            printf("  %s: time box reached after %d of %ld tokens (rate from those)\n", r->mode,
                   r->tokens, b->o.n);
        if (r->oom_kills || r->limit_hits)
            printf("  %s: cgroup OOM kills %llu, limit reached %llu times\n", r->mode,
                   (unsigned long long)r->oom_kills, (unsigned long long)r->limit_hits);
    }
    printf(
        "tok/s: decode tokens per second (the stack's GenerateDone timings, run's summary).\n"
        "MB/s read: bytes read from disk over the generation's wall time (stack: fetcher\n"
        "bytes; mmap: the process's read_bytes); busy MB/s: fetcher bytes per second with a\n"
        "read in flight. MB/token: bytes read per evaluated token (1 MB = 10^6 bytes).\n"
        "hit rate: share of the weight bytes used per token that needed no read (stack:\n"
        "1 - fetched / tile bytes compute used; mmap: 1 - read / what exact mode uses).\n"
        "recall: predictor vs the FFN groups or experts compute used ('-': not tracked, as\n"
        "in exact mode); stall: share of compute time waiting for tiles. I/O bound =\n"
        "raw MB/s / MB per token; vs bound = tok/s / I/O bound; vs mmap = tok/s / mmap tok/s.\n");
    bool spec = false;
    for (int i = 0; i < b->n_rows; i++)
        spec |= b->rows[i].spec != NF_BENCH_SPEC_NONE;
    if (spec)
        printf("SPECULATION (--lookup, --draft): the plain row, then the same engine with\n"
               "speculative decoding ('up --lookup' / 'up --draft FILE', 'run --mmap --lookup'\n"
               "/ '--draft FILE'); aggregate tok/s: stack: compute's decode tokens over its\n"
               "decode time (a draft model's own time not in it), run: its own rate (one\n"
               "sequence); drafted / accepted: draft tokens\n"
               "verified / kept (the summary's); rate = accepted / drafted; speed-up = tok/s /\n"
               "the plain row's tok/s; same output: its tokens ('gen_ids') equal the plain\n"
               "row's, as speculation requires ('-': a generation was cut short).\n");
    if (b->prompt)
        printf("prompt tok/s: the engine's prompt tokens over its prompt evaluation time (its\n"
               "summary); TTFT: from the client's start (gen; run --mmap: the process, the\n"
               "model's opening included) to the first generated token.\n");
    if (b->o.n_depth)
        printf("d=N rows (-d, llama-bench's depth): the exact stack and run --mmap generating\n"
               "after a prompt of N tokens (BOS and words 'the'): TTFT from the client's start\n"
               "to the first token (the prompt's evaluation included), decode tok/s after it\n"
               "(attention over N and more cached positions), MB/dec. token: bytes read per\n"
               "decode token from the first token on (the prompt's reads excluded); their vs\n"
               "mmap compares with mmap at the same depth.\n");
    if (par)
        printf("stack xN (--parallel): 'up --parallel N' and N gen clients at once (prompts\n"
               "'Request K', greedy); tok/s per seq: the mean of their GenerateDone rates;\n"
               "aggregate tok/s: compute's decode tokens over its decode steps' time (each\n"
               "prompt is evaluated alone, outside it); MB/token: fetcher bytes per evaluated\n"
               "token; MB/dec. step: fetcher bytes per compute step once every client had its\n"
               "first token (all prompts evaluated: decode steps only); used MB/step: the tile\n"
               "bytes compute used per such step (MoE: the union of the rows' experts); per\n"
               "shared: sequences per step that served two or more; dec. MB/s and disk busy:\n"
               "fetcher bytes per second over those steps' wall time, and the share of it with\n"
               "a read in flight.\n");
}

static void jnum(const char *key, double v, bool comma)
{
    if (isnan(v) || isinf(v))
        printf("\"%s\":null", key);
    else
        printf("\"%s\":%.6g", key, v);
    if (comma)
        putchar(',');
}

/* "peak_bytes": the peak in bytes, or null when unknown (0), and a comma. */
static void jpeak(uint64_t peak)
{
    if (peak)
        printf("\"peak_bytes\":%llu,", (unsigned long long)peak);
    else
        printf("\"peak_bytes\":null,");
}

static void jstr(const char *key, const char *s, bool comma)
{
    printf("\"%s\":", key);
    if (s)
        nf_json_str(stdout, (const unsigned char *)s, strlen(s));
    else
        printf("null");
    if (comma)
        putchar(',');
}

void nf_bench_print_json(const struct nf_bench *b)
{
    printf("{");
    jstr("model", b->gguf[0] ? b->gguf : b->nft, true);
    jstr("nft", b->nft, true);
    printf("\"ram_budget\":%llu,\"n_predict\":%ld,\"threads\":%ld,\"timeout_s\":%ld,"
           "\"n_ctx\":%u,\"n_prompt\":%ld,",
           (unsigned long long)b->o.ram, b->o.n, b->o.threads, b->o.timeout, b->n_ctx, b->o.prompt);
    printf("\"kv_offload\":%s,", b->o.kv_offload ? "true" : "false");
    printf("\"n_depth\":[");
    for (int i = 0; i < b->o.n_depth; i++)
        printf("%s%ld", i ? "," : "", b->o.depth[i]);
    printf("],");
    printf("\"cgroup\":{\"used\":%s,", b->use_cgroup ? "true" : "false");
    if (b->use_cgroup)
        printf("\"version\":%d,", b->cg_version);
    jstr("where", b->use_cgroup ? b->cg_where : NULL, true);
    jstr("reason", b->use_cgroup ? NULL : b->cg_why, false);
    printf("},\"raw\":{\"ok\":%s,", b->raw.ok ? "true" : "false");
    jstr("backend", b->raw.backend, true);
    printf("\"qd\":%u,\"bytes\":%llu,\"reads\":%llu,", NF_BENCH_QD,
           (unsigned long long)b->raw.bytes, (unsigned long long)b->raw.reads);
    jnum("secs", b->raw.secs, true);
    jnum("avg_tile_bytes", b->raw.avg_tile, true);
    jnum("mb_s", b->raw.ok ? b->raw.mb_s : NAN, true);
    jnum("mb_s_before", b->raw_pass[0].ok ? b->raw_pass[0].mb_s : NAN, true);
    jnum("mb_s_after", b->raw_pass[1].ok ? b->raw_pass[1].mb_s : NAN, true);
    jstr("error", b->raw.error[0] ? b->raw.error : NULL, false);
    printf("},\"rows\":[");
    for (int i = 0; i < b->n_rows; i++) {
        const struct nf_bench_row *r = &b->rows[i];
        printf("%s{", i ? "," : "");
        jstr("mode", r->mode, true);
        jstr("engine", r->is_mmap ? "mmap" : "stack", true);
        jnum("sparsity", r->sparsity, true);
        printf("\"ran\":%s,\"timed_out\":%s,\"tokens\":%d,", r->ran ? "true" : "false",
               r->timed_out ? "true" : "false", r->tokens);
        jnum("tok_s", r->ran ? r->tok_s : NAN, true);
        jnum("mb_s", r->mb_s, true);
        jnum("busy_mb_s", r->busy_mb_s, true);
        jnum("bytes_per_token", r->bytes_per_tok, true);
        jnum("hit_rate", r->hit_rate, true);
        jnum("request_hit_rate", r->req_hit_rate, true);
        jnum("used_bytes_per_token", r->used_per_tok, true);
        jnum("recall", r->recall, true);
        jnum("stall_share", r->stall, true);
        jpeak(r->peak);
        jstr("peak_source", r->peak_src, true);
        printf("\"oom_kills\":%llu,\"limit_hits\":%llu,", (unsigned long long)r->oom_kills,
               (unsigned long long)r->limit_hits);
        jnum("vs_mmap", r->vs_mmap, true);
        jnum("io_bound_tok_s", r->io_bound, true);
        jnum("vs_io_bound", r->vs_io_bound, true);
        printf("\"n_seq\":%d,", r->n_seq);
        jnum("aggregate_tok_s", r->n_seq ? r->agg_tok_s : NAN, true);
        jnum("shared_batch", r->n_seq ? r->shared_batch : NAN, true);
        jnum("decode_step_bytes", r->n_seq ? r->step_bytes : NAN, true);
        jnum("decode_step_used_bytes", r->n_seq ? r->step_used : NAN, true);
        jnum("decode_mb_s", r->n_seq ? r->step_mb_s : NAN, true);
        jnum("decode_disk_busy", r->n_seq ? r->step_busy : NAN, true);
        printf("\"prompt_tokens\":%d,", r->prompt_tokens);
        jnum("prompt_tok_s", r->prompt_tok_s, true);
        jnum("ttft_s", r->ttft, true);
        jnum("prompt_bytes", r->prompt_bytes, true);
        jstr("spec", r->spec ? nf_bench_spec_name(r->spec) : NULL, true);
        if (r->spec)
            printf("\"drafted\":%ld,\"accepted\":%ld,", r->drafted, r->accepted);
        else
            printf("\"drafted\":null,\"accepted\":null,");
        jnum("accept_rate", r->spec && r->drafted ? (double)r->accepted / (double)r->drafted : NAN,
             true);
        jnum("spec_speedup", nf_bench_spec_speedup(b, r), true);
        if (r->spec)
            printf("\"same_output\":%s,", nf_bench_spec_same(b, r) ? "true" : "false");
        else
            printf("\"same_output\":null,");
        printf("\"depth\":%ld,", r->depth);
        jnum("decode_bytes_per_token", r->dec_bytes_per_tok, true);
        jstr("error", r->error[0] ? r->error : NULL, false);
        printf("}");
    }
    printf("]");
    const struct nf_bench_llama *l = &b->llama;
    if (l->tried) {
        printf(",\"llama_cpp\":{");
        printf("\"prompt_tokens\":%d,", l->prompt_tokens);
        jnum("prompt_tok_s", l->prompt_tok_s, true);
        jnum("ttft_s", l->ttft, true);
        jpeak(l->peak);
        jstr("error", l->error[0] ? l->error : NULL, false);
        printf("}");
    }
    printf("}\n");
}
