/* bench.h - what the parts of nanoflowctl bench share: its options, the measured rows, the run
 * state, and the functions of each part (arguments, raw read, child processes, engine runs,
 * report). */
#ifndef NF_BENCH_H
#define NF_BENCH_H

#include <signal.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <sys/types.h>

#include "cgroup.h"
#include "nft.h"

#define NF_BENCH_MAX_LEVELS 8
#define NF_BENCH_QD         16u /* the fetcher's default --qd */

struct nf_bench_opts {
    const char *model, *run_dir;
    uint64_t ram;
    long n, threads, timeout, ctx;
    long ubatch;        /* -ub: prompt chunk of every engine; 0: their default */
    int type_k, type_v; /* -ctk / -ctv of every engine (enum nf_type; f16 by default) */
    long prompt;        /* -p: prompt tokens of every engine's generation; 0: BOS only */
    float levels[NF_BENCH_MAX_LEVELS];
    int n_levels;
    int parallel[NF_BENCH_MAX_LEVELS]; /* --parallel: sequences at once of each extra row */
    int n_parallel;
    /* -d / --n-depth: context depths (llama-bench's -d): one more exact stack row (and mmap
     * row) per depth, its decode measured after a prompt of that many tokens */
    long depth[NF_BENCH_MAX_LEVELS];
    int n_depth;
    /* --kv-offload on (or auto and -c above what the budget holds in RAM): the stack rows with
     * the KV cache on disk (up's flag); kv_auto: auto was asked for */
    bool kv_offload, kv_auto;
    bool json, no_cgroup;
    bool lookup;             /* --lookup: a speculating twin of the exact stack and mmap rows */
    const char *draft;       /* --draft FILE: likewise with this draft model (NULL: none) */
    const char *prompt_file; /* -f: every engine's prompt, read from this file (NULL: none) */
    const char *freq_pen;    /* --frequency-penalty: every engine's, as given (NULL: theirs, 0) */
    /* --llama-bench PATH | off: llama.cpp's llama-bench for the -p table's reference row
     * (NULL: llama-bench on PATH, the row left out when there is none) */
    const char *llama_bench;
};

/* llama.cpp's prompt figure on the same GGUF, threads and budget (-p N, bench_llama.c). */
struct nf_bench_llama {
    bool tried, ran;
    char error[384];
    int prompt_tokens;   /* its n_prompt */
    double prompt_tok_s; /* its avg_ts of the pp test */
    double ttft;         /* prompt_tokens / prompt_tok_s: its prompt's time, no sampling */
    uint64_t peak;       /* its memory cgroup's peak (bytes); 0 = unknown */
};

/* Speculative decoding of a row (--lookup, --draft). */
enum nf_bench_spec { NF_BENCH_SPEC_NONE = 0, NF_BENCH_SPEC_LOOKUP, NF_BENCH_SPEC_DRAFT };

/* One measured engine. Doubles are NAN when not measured or not applicable. */
struct nf_bench_row {
    char mode[32];
    float sparsity;
    bool is_mmap, ran, timed_out;
    char error[384];
    int tokens;           /* tokens generated */
    double tok_s;         /* decode tokens per second */
    double mb_s;          /* MB read from disk per second of the generation */
    double busy_mb_s;     /* stack: fetcher MB per second with reads in flight */
    double bytes_per_tok; /* bytes read from disk per evaluated token */
    double hit_rate;      /* share of the weight bytes used that needed no disk read */
    double req_hit_rate;  /* stack: fetcher requests found loading or ready */
    double used_per_tok;  /* stack: tile bytes compute used per evaluated token */
    double recall, stall;
    uint64_t peak; /* bytes; 0 = unknown */
    const char *peak_src;
    uint64_t oom_kills, limit_hits;
    double vs_mmap, io_bound, vs_io_bound;
    int n_seq;           /* --parallel rows: sequences at once (tok_s is per sequence); else 0 */
    double agg_tok_s;    /* --parallel rows: decode tokens of all sequences per second */
    double shared_batch; /* --parallel rows: sequences per step that served 2 or more */
    double step_bytes;   /* --parallel rows: bytes read per step once every prompt was evaluated */
    double step_used;    /* --parallel rows: tile bytes compute used per step, likewise */
    long dec_steps;      /* --parallel rows: the steps step_bytes is over */
    double step_mb_s;    /* --parallel rows: MB read per second over those steps' wall time */
    double step_busy;    /* --parallel rows: share of that time with a read in flight */
    int prompt_tokens;   /* -p: the prompt's tokens as the engine counted them (BOS included) */
    double prompt_tok_s; /* -p: prompt tokens per second (the engine's summary) */
    double ttft;         /* -p: seconds from the request to the first generated token */
    enum nf_bench_spec spec;  /* --lookup / --draft rows: how this row speculates */
    int spec_base;            /* with spec: the index of the same engine's plain row, or -1 */
    long drafted, accepted;   /* with spec: draft tokens verified and accepted (the summary's) */
    uint64_t ids_hash;        /* FNV-1a of the summary's "gen_ids" list; 0: no summary */
    long depth;               /* -d rows: the prompt's tokens before the decode; else 0 */
    double dec_bytes_per_tok; /* -d rows: bytes read per decode token after the first */
    double prompt_bytes;      /* -p, -d stack rows: bytes read before the first token */
};

struct nf_bench_raw {
    bool ok;
    char error[256];
    const char *backend;
    uint64_t bytes, reads;
    double secs, mb_s, avg_tile;
};

struct nf_bench {
    struct nf_bench_opts o;
    char self[PATH_MAX];
    char gguf[PATH_MAX]; /* empty when the model is a .nft */
    char nft[PATH_MAX];
    char base[PATH_MAX];
    bool base_made;
    bool use_cgroup;
    int cg_version;
    char cg_why[512];
    char cg_where[PATH_MAX];
    uint32_t n_ctx; /* the stack's context per its plan, used for run --mmap too */
    /* -t as given, passed to the stack rows' up (0: the stack picks per step,
     * nf_stack_compute_threads and nf_stack_decode_threads); o.threads is then what the
     * other engines get, the stack's one-sequence decode count */
    long stack_threads;
    struct nf_bench_raw raw;         /* the faster successful pass (the bound's bandwidth) */
    struct nf_bench_raw raw_pass[2]; /* before and after the engines */
    /* the levels' rows, 4 speculation rows, a stack and mmap row per -d */
    struct nf_bench_row rows[4 * NF_BENCH_MAX_LEVELS + 6];
    int n_rows;
    bool tty;
    double t_start;
    char *prompt; /* -p: the prompt text (o.prompt - 1 words after BOS), -f: the file's text;
                     NULL without either */
    long depth;   /* while a -d row runs: its depth (prompt is then its prompt); else 0 */
    struct nf_bench_llama llama;
};

/* Set by SIGINT / SIGTERM: every phase stops as soon as it can. */
extern volatile sig_atomic_t nf_bench_stop;

/* A progress line on stderr, stamped with the seconds since the bench started. */
void nf_bench_progress(struct nf_bench *b, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

/* bench_args.c: parses the command line into o (defaults first). Returns 0, 1 when --help was
 * printed, or 2 on a usage error (already printed). */
int nf_bench_parse_args(int argc, char **argv, struct nf_bench_opts *o);

/* The prompt of -p N: N - 1 repetitions of the word "the" ("the the ..."), which the
 * tokenizers of the supported families (SentencePiece and GPT-2 BPE alike) read as one token
 * each, so with BOS the prompt is N tokens; each row reports the count its engine saw. Returns
 * NULL when out of memory. The caller frees it. */
char *nf_bench_prompt_text(long n_tokens);

/* bench_raw.c: reads f's tiles (in file order, padded extents, up to 2 GiB) O_DIRECT with
 * NF_BENCH_QD reads in flight: io_uring with registered buffers, or pread when io_uring cannot
 * be set up. Fills r (r->ok false and r->error set on failure). */
void nf_bench_raw_read(struct nf_bench *b, const struct nf_nft *f, struct nf_bench_raw *r);

/* bench_child.c: child processes of nanoflowctl itself and what they print. */

/* Starts self with argv (NULL-terminated, argv[0] ignored). stdout goes to *out_fd (a pipe we
 * read) when out_fd is not NULL, else to log; stderr to log. With cg, the child moves itself into
 * the cgroup before exec so everything it starts inherits it. Returns the pid or -1. */
pid_t nf_bench_spawn(struct nf_bench *b, char **argv, const struct nf_cgroup *cg, int *out_fd,
                     const char *log);
/* The same for another program: exe with argv as given (argv[0] included). */
pid_t nf_bench_spawn_exe(const char *exe, char **argv, const struct nf_cgroup *cg, int *out_fd,
                         const char *log);

/* Waits up to secs for child pid; returns its exit code (128 + signal when killed) or -1. When
 * maxrss_kb is not NULL it receives the child's peak resident size (wait4's ru_maxrss), which
 * catches a child too short-lived for the /proc samples. */
int nf_bench_wait_ru(pid_t pid, double secs, uint64_t *maxrss_kb);
/* nf_bench_wait_ru without the peak. */
int nf_bench_wait(pid_t pid, double secs);
/* SIGKILL to pid, then waits up to 10 s for it. */
void nf_bench_kill_wait(pid_t pid);

/* The last non-empty line of a log file into out. */
void nf_bench_log_last_line(const char *log, char *out, size_t len);

/* A number following "key": in a JSON line, or NAN. */
double nf_bench_json_num(const char *line, const char *key);
/* FNV-1a of the JSON array following "key": in line (never 0), or 0 when there is none: tells
 * whether two generations gave the same tokens. */
uint64_t nf_bench_json_list_hash(const char *line, const char *key);

/* Line reader over a pipe. */
struct nf_bench_lines {
    int fd;
    char buf[1 << 16];
    size_t len;
    bool eof;
};

/* Returns the next complete line (NUL-terminated, in l->buf, valid until the next call) or NULL
 * when none arrives within ms milliseconds (check l->eof). Overlong lines are cut. */
char *nf_bench_next_line(struct nf_bench_lines *l, int ms, size_t *consumed);

/* bench_run.c: one engine, measured into r. The stack in exact mode (sparsity 0) or sparse:
 * a fresh `up` in its own run directory (and memory cgroup), `gen`, the counters, `down`. */
void nf_bench_run_stack(struct nf_bench *b, struct nf_bench_row *r, float sparsity);
/* `run --mmap` on the .gguf (a row error when the model is a .nft). */
void nf_bench_run_mmap(struct nf_bench *b, struct nf_bench_row *r);

/* bench_llama.c: with -p N, llama.cpp's `llama-bench -p N -n 0` on the same .gguf with the
 * same threads, in a memory cgroup of the same budget, into b->llama (--llama-bench PATH, else
 * llama-bench on PATH; nothing when there is none or with --llama-bench off). */
void nf_bench_run_llama(struct nf_bench *b);
/* The phase's memory cgroup when cgroups are in use (false: a row error); the page cache of
 * path dropped; the phase's peak memory (the cgroup's, else the stack daemons' VmHWM). */
bool nf_bench_phase_cgroup(struct nf_bench *b, struct nf_cgroup *cg, const char *phase,
                           struct nf_bench_row *r);
void nf_bench_drop_cache(const char *path);
void nf_bench_phase_peak(struct nf_cgroup *cg, bool have_cg, struct nf_bench_row *r,
                         const char *dir);

/* bench_parallel.c: the exact stack with `up --parallel n_seq` and n_seq `gen` clients at once
 * (continuous batching), measured into r: tok_s per sequence (their GenerateDone timings),
 * agg_tok_s (compute's decode tokens over its decode time), bytes read per evaluated token. */
void nf_bench_run_parallel(struct nf_bench *b, struct nf_bench_row *r, int n_seq);

/* bench_spec.c: the --lookup / --draft rows. nf_bench_run_spec measures the exact stack (base
 * is the stack exact row) or run --mmap (base is the mmap row) again with speculative decoding
 * kind into r, in the same way as its plain row, and notes base for the speed-up.
 * nf_bench_spec_args appends the flags of kind to argv at *k (up's or run's: --lookup, or
 * --draft FILE). nf_bench_spec_name is "lookup" or "draft" ("" for none). */
void nf_bench_run_spec(struct nf_bench *b, struct nf_bench_row *r, enum nf_bench_spec kind,
                       bool mmap, int base);
void nf_bench_spec_args(const struct nf_bench *b, enum nf_bench_spec kind, char **argv, int *k);
const char *nf_bench_spec_name(enum nf_bench_spec kind);
/* The speed-up of r over its plain row (NAN when either did not run), and the SPECULATION table
 * and its note (nothing when no row speculates). */
double nf_bench_spec_speedup(const struct nf_bench *b, const struct nf_bench_row *r);
/* Whether r gave the same tokens as its plain row (both generations complete). */
bool nf_bench_spec_same(const struct nf_bench *b, const struct nf_bench_row *r);
/* Whether r and its plain row both gave complete token lists and they differ: speculative
 * decoding broke exactness, and bench exits 1 after saying so on stderr. */
bool nf_bench_spec_differs(const struct nf_bench *b, const struct nf_bench_row *r);
void nf_bench_print_spec(const struct nf_bench *b);

/* bench_report.c: the results as one table with notes, or as one JSON object, on stdout. */
void nf_bench_print_table(const struct nf_bench *b);
void nf_bench_print_json(const struct nf_bench *b);

#endif
