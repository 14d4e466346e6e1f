/* bench_args.c - nanoflowctl bench's command line: usage and options. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "bench.h"
#include "kv_quant.h"
#include "cmds.h"
#include "nf_size.h"

static const char *const cmd = "bench";

static void usage(FILE *f)
{
    fprintf(f,
            "usage: nanoflowctl bench --model FILE [options]\n\n"
            "Measures, side by side on the same model and RAM budget, and prints one table:\n"
            "  raw    O_DIRECT reads of the .nft's tiles in file order with io_uring at the\n"
            "         fetcher's queue depth (%u), up to 2 GiB: the disk's bandwidth;\n"
            "  stack  the streaming stack's decode in exact mode and at each --sparsity level\n"
            "         (each a fresh 'up' in its own run directory, 'gen', 'stats', 'down');\n"
            "  mmap   'run --mmap': the same engine with the GGUF mapped read-only, the page\n"
            "         cache serving weights on demand (as llama.cpp by default); the file's\n"
            "         cached pages are dropped first. Needs a .gguf model.\n"
            "When it can create a memory cgroup (root, cgroup v2 or v1), each engine runs in a\n"
            "fresh cgroup limited to --ram and the peak is the cgroup's (page cache included);\n"
            "otherwise it says why and the peak is the processes' VmHWM. A .gguf is converted\n"
            "once to the cached .nft that 'up' uses. Progress goes to stderr.\n\n"
            "  -m, --model FILE      .gguf (all rows) or .nft (no mmap row) model (required)\n"
            "      --ram SIZE        RAM budget, K/M/G/T suffixes (default: 1G)\n"
            "  -n, --n-predict N     tokens generated per engine, 2..100000 (default: 8)\n"
            "      --sparsity LIST   comma-separated sparse levels, each 0 < S <= 0.99, measured\n"
            "                        after exact mode; 'none' for exact only (default: 0.5)\n"
            "      --parallel LIST   comma-separated sequence counts, each 1..32: one more\n"
            "                        exact stack row per count, started with 'up --parallel N'\n"
            "                        and N 'gen' clients at once (continuous batching): tok/s\n"
            "                        per sequence, aggregate tok/s, bytes read per token\n"
            "                        (default: none)\n"
            "  -t, --threads N       compute threads of every engine, the stack's and mmap's\n"
            "                        alike; 0 = what 'up' picks: one per CPU for the stack's\n"
            "                        prompt chunks, one per CPU but one, at least 1, for its\n"
            "                        decode steps (batched too) and for mmap\n"
            "                        (default: 0)\n"
            "  -c, --ctx-size N      context length of every engine, 0..1048576; the stack's\n"
            "                        KV cache is reserved from the budget for all of it, so\n"
            "                        a short context leaves more to the tile pool (default: 0 =\n"
            "                        what 'up' picks: KV cache at most a quarter of the budget)\n"
            "  -ub, --ubatch-size N  prompt tokens evaluated together by every engine, 1..4096\n"
            "                        ('up -ub', 'run -ub'; default: theirs, 32)\n"
            "  -ctk, --cache-type-k T  KV cache type of K of every engine, as up's and run's\n"
            "                        flag: f16, q8_0 or q4_0 (default: f16)\n"
            "  -ctv, --cache-type-v T  KV cache type of V of every engine, likewise (default:\n"
            "                        f16)\n"
            "  -p, --n-prompt N      a prompt of N tokens (BOS and N - 1 words 'the') for every\n"
            "                        engine, 2..65536, as llama-bench -p: adds each row's prompt\n"
            "                        tok/s and time to first token; the context must hold N\n"
            "                        + -n tokens (default: none, the prompt is BOS)\n"
            "      --llama-bench PATH  with -p N: llama.cpp's llama-bench on the .gguf with\n"
            "                        the same -p N and -t, -n 0, once, flash attention off, in\n"
            "                        a memory cgroup of the same budget: a llama.cpp row in\n"
            "                        the prompt table; off: no such row (default: llama-bench\n"
            "                        on PATH, if there is one)\n"
            "  -f, --file FILE       every engine's prompt: the text of FILE (as 'gen -f' and\n"
            "                        'run -f' read it), e.g. a passage to repeat, which\n"
            "                        speculation can draft from; not with -p (default: none)\n"
            "      --lookup          one more row beside the exact stack and one beside mmap\n"
            "                        with speculative decoding by prompt lookup ('up --lookup',\n"
            "                        'run --lookup'): tok/s per sequence, aggregate tok/s,\n"
            "                        MB per token, drafted, accepted, acceptance rate and the\n"
            "                        speed-up over the plain row (default: off)\n"
            "      --draft FILE      likewise with the draft model FILE (a GGUF with the\n"
            "                        model's vocabulary; 'up --draft', 'run --draft'); with\n"
            "                        --lookup, both rows (default: none)\n"
            "      --frequency-penalty F  every engine's sampler subtracts F x its count in\n"
            "                        the last 64 tokens from a token's logit ('gen' and 'run'\n"
            "                        flag), -2..2; greedy all the same; a negative F makes the\n"
            "                        text repeat itself, which lookup drafts hit (default: 0)\n"
            "  -d, --n-depth LIST    comma-separated context depths, each 2..1048576, as\n"
            "                        llama-bench -d: one more exact stack row and mmap row\n"
            "                        per depth, generating after a prompt of that many tokens\n"
            "                        (BOS and words 'the'): decode tok/s, TTFT, MB read per\n"
            "                        decode token at that depth; the context must hold the\n"
            "                        depth + -n tokens (default: none)\n"
            "      --kv-offload M    on: the stack rows (not --parallel's) plan and run with\n"
            "                        the KV cache on disk ('up --kv-offload on'), so -c is\n"
            "                        not capped by the budget; auto: on when the -c given\n"
            "                        does not fit in RAM; off: in RAM, -c capped (default: off)\n"
            "      --timeout SECS    time box of each engine's generation, 5..3600 (default: 70);\n"
            "                        a phase cut short reports the tokens it finished\n"
            "      --run-dir DIR     base directory for the stacks' run directories and logs\n"
            "                        (default: a fresh /tmp/nanoflow-bench-XXXXXX, removed after)\n"
            "      --no-cgroup       do not create memory cgroups\n"
            "      --json            one JSON object on stdout instead of the table\n"
            "  -h, --help            show this help\n",
            NF_BENCH_QD);
}

static int parse_levels(const char *v, struct nf_bench_opts *o)
{
    o->n_levels = 0;
    if (!strcmp(v, "none") || !strcmp(v, "0"))
        return 0;
    char tmp[256];
    if (strlen(v) >= sizeof(tmp))
        return nf_usage_error(cmd, "--sparsity list is too long");
    snprintf(tmp, sizeof(tmp), "%s", v);
    for (char *s = NULL, *t = strtok_r(tmp, ",", &s); t; t = strtok_r(NULL, ",", &s)) {
        if (o->n_levels == NF_BENCH_MAX_LEVELS)
            return nf_usage_error(cmd, "--sparsity takes at most %d levels", NF_BENCH_MAX_LEVELS);
        float f;
        if (nf_arg_float(cmd, "--sparsity", t, 0.01f, 0.99f, &f))
            return 2;
        o->levels[o->n_levels++] = f;
    }
    if (o->n_levels == 0)
        return nf_usage_error(cmd, "--sparsity expects a list like 0.5,0.8 or 'none', got '%s'", v);
    return 0;
}

static int parse_parallel(const char *v, struct nf_bench_opts *o)
{
    char tmp[256];
    o->n_parallel = 0;
    if (strlen(v) >= sizeof(tmp))
        return nf_usage_error(cmd, "--parallel list is too long");
    snprintf(tmp, sizeof(tmp), "%s", v);
    for (char *s = NULL, *t = strtok_r(tmp, ",", &s); t; t = strtok_r(NULL, ",", &s)) {
        if (o->n_parallel == NF_BENCH_MAX_LEVELS)
            return nf_usage_error(cmd, "--parallel takes at most %d counts", NF_BENCH_MAX_LEVELS);
        long n;
        if (nf_arg_long(cmd, "--parallel", t, 1, 32, &n))
            return 2;
        o->parallel[o->n_parallel++] = (int)n;
    }
    if (o->n_parallel == 0)
        return nf_usage_error(cmd, "--parallel expects a list like 1,4,8, got '%s'", v);
    return 0;
}

static int parse_depth(const char *v, struct nf_bench_opts *o)
{
    char tmp[256];
    o->n_depth = 0;
    if (strlen(v) >= sizeof(tmp))
        return nf_usage_error(cmd, "-d list is too long");
    snprintf(tmp, sizeof(tmp), "%s", v);
    for (char *s = NULL, *t = strtok_r(tmp, ",", &s); t; t = strtok_r(NULL, ",", &s)) {
        if (o->n_depth == NF_BENCH_MAX_LEVELS)
            return nf_usage_error(cmd, "-d takes at most %d depths", NF_BENCH_MAX_LEVELS);
        if (nf_arg_long(cmd, "-d", t, 2, 1048576, &o->depth[o->n_depth++]))
            return 2;
    }
    if (o->n_depth == 0)
        return nf_usage_error(cmd, "-d expects a list like 512,4096, got '%s'", v);
    return 0;
}

int nf_bench_parse_args(int argc, char **argv, struct nf_bench_opts *o)
{
    o->ram = 1ull << 30;
    o->n = 8;
    o->timeout = 70; /* 3 engines stay under 5 minutes in all */
    o->type_k = o->type_v = NF_TYPE_F16;
    o->levels[0] = 0.5f;
    o->n_levels = 1;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v;
        if (!strcmp(a, "-h") || !strcmp(a, "--help")) {
            usage(stdout);
            return 1;
        }
        if (!strcmp(a, "--json")) {
            o->json = true;
            continue;
        }
        if (!strcmp(a, "--lookup")) {
            o->lookup = true;
            continue;
        }
        if (!strcmp(a, "--no-cgroup")) {
            o->no_cgroup = true;
            continue;
        }
        if (!(nf_arg_is(a, "--model") || !strcmp(a, "-m") || nf_arg_is(a, "--ram") ||
              nf_arg_is(a, "--n-predict") || !strcmp(a, "-n") || nf_arg_is(a, "--sparsity") ||
              nf_arg_is(a, "--threads") || !strcmp(a, "-t") || nf_arg_is(a, "--timeout") ||
              nf_arg_is(a, "--run-dir") || nf_arg_is(a, "--ctx-size") || !strcmp(a, "-c") ||
              nf_arg_is(a, "--parallel") || nf_arg_is(a, "--ubatch-size") || !strcmp(a, "-ub") ||
              nf_arg_is(a, "--cache-type-k") || !strcmp(a, "-ctk") ||
              nf_arg_is(a, "--cache-type-v") || !strcmp(a, "-ctv") || nf_arg_is(a, "--n-prompt") ||
              !strcmp(a, "-p") || nf_arg_is(a, "--draft") || nf_arg_is(a, "--file") ||
              !strcmp(a, "-f") || nf_arg_is(a, "--n-depth") || !strcmp(a, "-d") ||
              nf_arg_is(a, "--kv-offload") || nf_arg_is(a, "--frequency-penalty") ||
              nf_arg_is(a, "--llama-bench")))
            return nf_usage_error(cmd, "unknown flag '%s'", a);
        if (!(v = nf_arg_value(cmd, argc, argv, &i)))
            return 2;
        if (nf_arg_is(a, "--model") || !strcmp(a, "-m")) {
            o->model = v;
        } else if (nf_arg_is(a, "--ram")) {
            if (nf_arg_ram(cmd, "--ram", v, &o->ram))
                return 2;
            if (o->ram == 0)
                return nf_usage_error(cmd, "--ram must be above 0");
        } else if (nf_arg_is(a, "--n-predict") || !strcmp(a, "-n")) {
            if (nf_arg_long(cmd, a, v, 2, 100000, &o->n))
                return 2;
        } else if (nf_arg_is(a, "--sparsity")) {
            int rc = parse_levels(v, o);
            if (rc)
                return rc;
        } else if (nf_arg_is(a, "--parallel")) {
            int rc = parse_parallel(v, o);
            if (rc)
                return rc;
        } else if (nf_arg_is(a, "--threads") || !strcmp(a, "-t")) {
            if (nf_arg_long(cmd, a, v, 0, 1024, &o->threads))
                return 2;
        } else if (nf_arg_is(a, "--ctx-size") || !strcmp(a, "-c")) {
            if (nf_arg_long(cmd, a, v, 0, 1048576, &o->ctx))
                return 2;
        } else if (nf_arg_is(a, "--ubatch-size") || !strcmp(a, "-ub")) {
            if (nf_arg_long(cmd, a, v, 1, 4096, &o->ubatch))
                return 2;
        } else if (nf_arg_is(a, "--cache-type-k") || !strcmp(a, "-ctk")) {
            if (nf_arg_kv_type(cmd, a, v, &o->type_k))
                return 2;
        } else if (nf_arg_is(a, "--cache-type-v") || !strcmp(a, "-ctv")) {
            if (nf_arg_kv_type(cmd, a, v, &o->type_v))
                return 2;
        } else if (nf_arg_is(a, "--n-prompt") || !strcmp(a, "-p")) {
            if (nf_arg_long(cmd, a, v, 2, 65536, &o->prompt))
                return 2;
        } else if (nf_arg_is(a, "--draft")) {
            if (access(v, R_OK) < 0)
                return nf_usage_error(cmd, "--draft %s: %s", v, strerror(errno));
            o->draft = v;
        } else if (nf_arg_is(a, "--file") || !strcmp(a, "-f")) {
            if (access(v, R_OK) < 0)
                return nf_usage_error(cmd, "%s %s: %s", a, v, strerror(errno));
            o->prompt_file = v;
        } else if (nf_arg_is(a, "--frequency-penalty")) {
            float f;
            if (nf_arg_float(cmd, a, v, -2.0f, 2.0f, &f))
                return 2;
            o->freq_pen = v;
        } else if (nf_arg_is(a, "--n-depth") || !strcmp(a, "-d")) {
            int rc = parse_depth(v, o);
            if (rc)
                return rc;
        } else if (nf_arg_is(a, "--kv-offload")) {
            if (strcmp(v, "on") && strcmp(v, "off") && strcmp(v, "auto"))
                return nf_usage_error(cmd, "--kv-offload expects auto, on or off, got '%s'", v);
            o->kv_offload = !strcmp(v, "on");
            o->kv_auto = !strcmp(v, "auto");
        } else if (nf_arg_is(a, "--llama-bench")) {
            if (strcmp(v, "off") && access(v, X_OK))
                return nf_usage_error(cmd, "--llama-bench: '%s' is not an executable file (%s)", v,
                                      strerror(errno));
            o->llama_bench = v;
        } else if (nf_arg_is(a, "--timeout")) {
            if (nf_arg_long(cmd, a, v, 5, 3600, &o->timeout))
                return 2;
        } else {
            o->run_dir = v;
        }
    }
    if (!o->model)
        return nf_usage_error(cmd, "--model FILE is required");
    if (o->prompt && o->prompt_file)
        return nf_usage_error(cmd, "give either -p N or -f FILE, not both");
    return 0;
}

char *nf_bench_prompt_text(long n_tokens)
{
    const long words = n_tokens > 1 ? n_tokens - 1 : 0;
    char *p = malloc((size_t)words * 4 + 1);
    if (!p)
        return NULL;
    size_t len = 0;
    for (long i = 0; i < words; i++) {
        memcpy(p + len, i ? " the" : "the", i ? 4 : 3);
        len += i ? 4 : 3;
    }
    p[len] = '\0';
    return p;
}
