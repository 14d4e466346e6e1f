/* cmd_up.c - nanoflowctl up / down: start the three daemons of a stack, and stop them. */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "chat.h"
#include "cmds.h"
#include "kv_quant.h"
#include "generate.h"
#include "model.h"
#include "nf_err.h"
#include "nf_file.h"
#include "nf_size.h"
#include "nft.h"
#include "stack.h"
#include "stack_ctl.h"
#include "nf_time.h"

#define NF_UP_READY_TIMEOUT_MS   60000
#define NF_UP_DEFAULT_MAX_TOKENS 512 /* compute's default (NF_GEN_DEFAULT_MAX_TOKENS) */

static void up_usage(FILE *f)
{
    fprintf(f,
            "usage: nanoflowctl up --model FILE [options]\n\n"
            "Starts a streaming stack (fetcher, predictor, compute daemons) that runs the model\n"
            "within a RAM budget, streaming weight tiles from the SSD. A .gguf model (split or\n"
            "not) is served in place: up reads it once to build a small index, NAME.nfi (tile\n"
            "table and checksums, cached beside it when that directory is writable, else in\n"
            "$XDG_CACHE_HOME/nanoflow or ~/.cache/nanoflow, and rebuilt when a file of the model\n"
            "changes); no copy of the weights is written. With --sparsity the GGUF is converted\n"
            "once to a cached .nft instead (sparse mode needs its neuron bundles).\n\n"
            "  -m, --model FILE     .gguf or .nft model (required)\n"
            "      --ram SIZE       RAM budget of the whole stack, K/M/G/T suffixes (default: 1G)\n"
            "  -t, --threads N      compute threads (default: 0 = one per CPU for prompt chunks,\n"
            "                       one per CPU but one, at least 1, for decode steps, batched\n"
            "                       too: there the fetcher and the predictor need a core)\n"
            "      --sparsity S     share of FFN groups skipped per token, 0..0.99; 0 = exact\n"
            "                       (default: 0); dense models only, refused for MoE\n"
            "  -c, --ctx N          context length, also --ctx-size, at most the model's trained\n"
            "                       context_length (default: that length, capped at 4096 and by\n"
            "                       the budget)\n"
            "      --parallel N     sequences generated at once (continuous batching: requests\n"
            "                       join the running ones at the next token), 1..32, each with\n"
            "                       its KV cache in the budget; too many is refused with the\n"
            "                       most that fit (default: up to 4, as many as take at most a\n"
            "                       quarter of the budget)\n"
            "  -ctk, --cache-type-k T  KV cache type of K: f16, q8_0 or q4_0 (default: f16);\n"
            "                       the plan counts its bytes (q8_0 about half of f16's, q4_0\n"
            "                       a quarter), so the same --ram holds a longer context or a\n"
            "                       larger pool; the head size must be a multiple of 32, and\n"
            "                       MLA models (deepseek2) keep their f16 latent and refuse it\n"
            "  -ctv, --cache-type-v T  KV cache type of V, likewise (default: f16)\n"
            "  -ub, --ubatch-size N prompt tokens evaluated together, 1..%d: each weight tile\n"
            "                       is read once per chunk of N, whose activations the plan\n"
            "                       reserves in the budget (default: from the budget, the\n"
            "                       largest of 512, 256, .. 32 whose activations take at\n"
            "                       most a quarter of it; a larger N that does not fit is\n"
            "                       refused with the largest that does)\n"
            "      --kv-offload M   where the KV cache lives: off, in RAM; on, in a file on\n"
            "                       the SSD in blocks of 64 positions (only the blocks in use\n"
            "                       stay in the budget, so -c is limited by disk, not RAM);\n"
            "                       auto, on when the -c asked for does not fit the budget in\n"
            "                       RAM (default: auto)\n"
            "      --kv-dir DIR     directory of the KV file (default: the run directory)\n"
            "      --kv-block N     positions per KV block on disk, 1..65536 (default: 64;\n"
            "                       small blocks are for tests)\n"
            "      --kv-store DIR   keep the prefixes the prefix cache keeps (their KV cells) in\n"
            "                       DIR across restarts: saved when a request overwrites one\n"
            "                       and at `down`, read back for a prompt that extends one\n"
            "                       after the next `up` (the same output as a cold run); DIR\n"
            "                       is created if missing; files of another model, KV type or\n"
            "                       ubatch, truncated or corrupt are ignored with a warning in\n"
            "                       compute.log; not used with the KV cache on disk\n"
            "                       (default: none)\n"
            "      --kv-store-max SIZE\n"
            "                       bound of DIR's files, the least recently used dropped\n"
            "                       first (default: 2G)\n"
            "      --max-tokens-per-request N\n"
            "                       tokens one generation may produce, 1..1000000; requests\n"
            "                       asking more are clamped so that queued ones wait less\n"
            "                       (default: %d)\n"
            "      --lookup         speculative decoding with prompt-lookup drafts for every\n"
            "                       request that does not ask otherwise (gen's flags); the output\n"
            "                       is the same (default: off)\n"
            "      --draft FILE     a small draft model (GGUF, the model's vocabulary) that\n"
            "                       compute holds in RAM and drafts with for every request\n"
            "                       that does not ask otherwise (gen's flags);\n"
            "                       its file and context are counted in the budget, the\n"
            "                       stack's daemons plan with the rest (default: none)\n"
            "      --prefix-cache on|off\n"
            "                       keep each sequence's prompt KV in its slot after it ends; a\n"
            "                       request whose prompt extends a kept one (the next turn of a\n"
            "                       chat, a shared system prompt) starts from it, with the same\n"
            "                       output as a cold run (default: on)\n"
            "      --expert-cache P routed-expert tiles a load evicts first (MoE models): freq,\n"
            "                       those least often chosen lately; cyclic, the farthest in\n"
            "                       layer order as for dense tiles (default: freq)\n"
            "      --run-dir DIR    run directory (default: $NANOFLOW_RUN_DIR, else\n"
            "                       $XDG_RUNTIME_DIR/nanoflow, else /run/nanoflow for root,\n"
            "                       else /tmp/nanoflow-UID)\n"
            "      --log-level L    daemon log level: error, warn, info, debug (default: info)\n"
            "      --http HOST:PORT also start the OpenAI-compatible HTTP front there\n"
            "                       (nanoflow-gateway), e.g. 127.0.0.1:8080 (default: off)\n"
            "      --api-key-file FILE\n"
            "                       with --http: require 'Authorization: Bearer KEY', the key\n"
            "                       on the file's first line\n"
            "      --chat-template NAME\n"
            "                       with --http: chat format instead of the model's template\n"
            "                       (default: the model's tokenizer.chat_template, else chatml)\n"
            "  -h, --help           show this help\n",
            NF_MAX_UBATCH, NF_UP_DEFAULT_MAX_TOKENS);
}

/* --- .gguf -> cached .nft ------------------------------------------------------------------ */

static char nf_up_tmp[PATH_MAX]; /* the converter's temporary file while it exists */

static void up_on_signal(int sig)
{
    if (nf_up_tmp[0])
        unlink(nf_up_tmp);
    signal(sig, SIG_DFL);
    raise(sig);
}

struct progress {
    int last_pct;
    bool tty;
    const char *what; /* "converting" or "indexing" */
};

static void up_progress(void *ud, uint64_t done, uint64_t total, const char *what)
{
    struct progress *p = ud;
    int pct = total ? (int)(done * 100 / total) : 100;
    if (pct == p->last_pct || (!p->tty && pct / 10 == p->last_pct / 10 && pct != 100))
        return;
    p->last_pct = pct;
    if (p->tty)
        fprintf(stderr, "\r%s: %3d%% %-40.40s", p->what, pct, what ? what : "");
    else
        fprintf(stderr, "%s: %3d%%\n", p->what, pct);
    if (p->tty && pct == 100)
        fputc('\n', stderr);
}

static bool is_gguf(const char *path)
{
    char magic[4];
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return false;
    bool ok = read(fd, magic, 4) == 4 && !memcmp(magic, "GGUF", 4);
    close(fd);
    return ok;
}

/* True when the directory's mode bits let us write there. Root passes access() everywhere, but a
 * read-only shared model directory (r-x) must still not receive converted files. */
static bool dir_writable(const char *dir)
{
    struct stat st;
    if (stat(dir, &st) < 0 || access(dir, W_OK) < 0)
        return false;
    if (st.st_uid == geteuid())
        return st.st_mode & S_IWUSR;
    if (st.st_gid == getegid())
        return st.st_mode & S_IWGRP;
    return st.st_mode & S_IWOTH;
}

/* The cache entry for gguf: dir/NAME.EXT (ext "nft": a converted copy, whose sidecar
 * NAME.nft.src records the source's size and mtime; "nfi": the in-place index, which records
 * every part's itself) with dir beside the source when writable, else the user cache (file name
 * made unique by a hash of the source path). */
static int cache_path(const char *gguf, const char *ext, char *out, size_t len)
{
    char dir[PATH_MAX], base[NAME_MAX + 1];
    const char *slash = strrchr(gguf, '/');
    nf_pathf(base, sizeof(base), "%s", slash ? slash + 1 : gguf);
    char *dot = strrchr(base, '.');
    if (dot && !strcmp(dot, ".gguf"))
        *dot = '\0';
    if (slash)
        snprintf(dir, sizeof(dir), "%.*s", (int)(slash - gguf), gguf);
    else
        snprintf(dir, sizeof(dir), ".");
    if (dir_writable(dir[0] ? dir : "/")) {
        return nf_pathf(out, len, "%s/%s.%s", dir[0] ? dir : "", base, ext) ? 0 : -ENAMETOOLONG;
    }
    const char *xdg = getenv("XDG_CACHE_HOME"), *home = getenv("HOME");
    if (xdg && *xdg)
        snprintf(dir, sizeof(dir), "%s/nanoflow", xdg);
    else if (home && *home)
        snprintf(dir, sizeof(dir), "%s/.cache/nanoflow", home);
    else
        return -ENOENT;
    char err[256];
    int rc = nf_rundir_create(dir, err, sizeof(err)); /* mkdir -p, 0700, ours */
    if (rc < 0 && rc != -EPERM)
        return rc;
    uint64_t h = 0xcbf29ce484222325ull;
    for (const unsigned char *s = (const unsigned char *)gguf; *s; s++)
        h = (h ^ *s) * 0x100000001b3ull;
    if (!nf_pathf(out, len, "%s/%s-%08llx.%s", dir, base, (unsigned long long)(h & 0xffffffffu),
                  ext))
        return -ENAMETOOLONG;
    return 0;
}

/* The .nft cache's stamp of the GGUF absm: "SIZE SEC NSEC" of every part (a split model's
 * first file brings in the others), one line each, so that a change to any part is seen. Empty
 * when the model does not open (the conversion then says why). */
static void src_stamp(const char *absm, char *out, size_t len)
{
    out[0] = '\0';
    struct nf_gguf *g = NULL;
    char err[256];
    if (nf_gguf_open(&g, absm, err, sizeof(err)) < 0)
        return;
    size_t n = 0;
    for (uint32_t i = 0; i < g->n_parts && n < len; i++) {
        struct stat st;
        if (fstat(g->parts[i].fd, &st) != 0) {
            out[0] = '\0';
            break;
        }
        n += (size_t)snprintf(out + n, len - n, "%llu %llu %llu\n", (unsigned long long)st.st_size,
                              (unsigned long long)st.st_mtim.tv_sec,
                              (unsigned long long)st.st_mtim.tv_nsec);
    }
    nf_gguf_close(g);
}

static bool cache_fresh(const char *nft, const char *stamp)
{
    char side[PATH_MAX + 8], have[8192];
    snprintf(side, sizeof(side), "%s.src", nft);
    FILE *f = fopen(side, "r");
    if (!f)
        return false;
    size_t n = fread(have, 1, sizeof(have) - 1, f);
    fclose(f);
    have[n] = '\0';
    struct stat st;
    return stamp[0] && !strcmp(have, stamp) && stat(nft, &st) == 0;
}

/* Writes the in-place index (in_place) or the .nft conversion of the GGUF absm to out, with
 * progress on stderr; SIGINT and SIGTERM remove the temporary file. Returns 0 or a negative
 * code with err set. */
static int build(const char *absm, const char *out, bool in_place, char *err, size_t errlen)
{
    struct progress pg = {
        .last_pct = -1, .tty = isatty(2), .what = in_place ? "indexing" : "converting"};
    struct nf_nft_convert_opts o = {0};
    o.progress = up_progress;
    o.progress_ud = &pg;
    o.tmp_path = nf_up_tmp;
    o.tmp_path_len = sizeof(nf_up_tmp);
    signal(SIGINT, up_on_signal);
    signal(SIGTERM, up_on_signal);
    int rc = in_place ? nf_nft_index_build(absm, out, &o, err, errlen)
                      : nf_nft_convert(absm, out, &o, err, errlen);
    signal(SIGINT, SIG_DFL);
    signal(SIGTERM, SIG_DFL);
    return rc;
}

/* The in-place index of the GGUF absm at idx: reused when it opens (nf_nft_open checks that
 * no part of the model changed since it was built), else built. Returns 0 or 1 (error
 * printed). */
static int resolve_index(const char *absm, char *idx, size_t len)
{
    int rc = cache_path(absm, "nfi", idx, len);
    if (rc < 0) {
        fprintf(stderr, "nanoflowctl up: no writable place for the index of %s: %s\n", absm,
                nf_strerror(rc));
        return 1;
    }
    char err[1024];
    struct nf_nft *f = NULL;
    if (access(idx, F_OK) == 0) {
        if (nf_nft_open(&f, idx, false, err, sizeof(err)) == 0) {
            nf_nft_close(f);
            fprintf(stderr, "using cached index %s\n", idx);
            return 0;
        }
        fprintf(stderr, "rebuilding the index: %s\n", err);
    }
    fprintf(stderr, "indexing %s -> %s (reads the model once; the weights stay in the GGUF)\n",
            absm, idx);
    double t0 = nf_now_s();
    if (build(absm, idx, true, err, sizeof(err)) < 0) {
        fprintf(stderr, "nanoflowctl up: indexing %s: %s\n", absm, err);
        return 1;
    }
    struct stat st;
    if (stat(idx, &st) == 0)
        fprintf(stderr, "index: %lld bytes written in %.1f s\n", (long long)st.st_size,
                nf_now_s() - t0);
    return 0;
}

/* Resolves model into the absolute path of what the daemons open: a .nft as given, the in-place
 * index of a .gguf (built once), or with sparse a .gguf's cached .nft conversion (sparse mode
 * needs the neuron bundles). Returns 0 or 1 (error printed). */
static int resolve_model(const char *model, bool sparse, char *nft, size_t len)
{
    char absm[PATH_MAX];
    if (!realpath(model, absm)) {
        fprintf(stderr, "nanoflowctl up: %s: %s\n", model, strerror(errno));
        return 1;
    }
    if (!is_gguf(absm)) {
        snprintf(nft, len, "%s", absm);
        return 0;
    }
    if (!sparse)
        return resolve_index(absm, nft, len);
    char stamp[8192];
    src_stamp(absm, stamp, sizeof(stamp));
    int rc = cache_path(absm, "nft", nft, len);
    if (rc < 0) {
        fprintf(stderr, "nanoflowctl up: no writable place for the converted model of %s: %s\n",
                absm, nf_strerror(rc));
        return 1;
    }
    if (cache_fresh(nft, stamp)) {
        fprintf(stderr, "using cached %s\n", nft);
        return 0;
    }
    fprintf(stderr, "converting %s -> %s (once; later runs reuse it)\n", absm, nft);
    char err[512];
    if (build(absm, nft, false, err, sizeof(err)) < 0) {
        fprintf(stderr, "nanoflowctl up: converting %s: %s\n", absm, err);
        return 1;
    }
    char side[PATH_MAX + 8];
    snprintf(side, sizeof(side), "%s.src", nft);
    FILE *f = fopen(side, "w");
    if (f) {
        fputs(stamp, f);
        if (fclose(f) != 0)
            unlink(side);
    }
    return 0;
}

int nf_up_resolve_model(const char *model, bool sparse, char *nft, size_t len)
{
    return resolve_model(model, sparse, nft, len);
}

/* --- Finding and starting the daemons ------------------------------------------------------- */

/* Looks for nanoflow-ROLE beside our own binary, then in a build tree's daemons/ directory,
 * then on PATH. */
static int find_daemon(const char *role, char *out, size_t len, char *looked, size_t looked_len)
{
    char self[PATH_MAX];
    ssize_t n = readlink("/proc/self/exe", self, sizeof(self) - 1);
    looked[0] = '\0';
    if (n > 0) {
        self[n] = '\0';
        char *slash = strrchr(self, '/');
        if (slash)
            *slash = '\0';
        for (int i = 0; i < 3; i++) {
            char cand[PATH_MAX];
            if (i == 0)
                nf_pathf(cand, sizeof(cand), "%s/nanoflow-%s", self, role);
            else if (i == 1)
                nf_pathf(cand, sizeof(cand), "%s/../daemons/nanoflow-%s", self, role);
            else
                nf_pathf(cand, sizeof(cand), "%s/../daemons/%s/nanoflow-%s", self, role, role);
            if (access(cand, X_OK) == 0) {
                if (!realpath(cand, out))
                    snprintf(out, len, "%s", cand);
                return 0;
            }
            size_t l = strlen(looked);
            nf_pathf(looked + l, looked_len - l, "%s%s", l ? ", " : "", cand);
        }
    }
    const char *path = getenv("PATH");
    if (path) {
        char buf[4096];
        snprintf(buf, sizeof(buf), "%s", path);
        for (char *save = NULL, *d = strtok_r(buf, ":", &save); d; d = strtok_r(NULL, ":", &save)) {
            char cand[PATH_MAX];
            snprintf(cand, sizeof(cand), "%s/nanoflow-%s", d, role);
            if (access(cand, X_OK) == 0) {
                snprintf(out, len, "%s", cand);
                return 0;
            }
        }
        size_t l = strlen(looked);
        snprintf(looked + l, looked_len - l, "%sPATH", l ? ", " : "");
    }
    return -ENOENT;
}

struct up_opts {
    const char *model, *run_dir, *log_level;
    const char *http, *chat_template; /* --http, --chat-template: the gateway's */
    const char *expert_cache;         /* --expert-cache: the fetcher's (NULL: its default) */
    char api_key_file[PATH_MAX];      /* --api-key-file made absolute ("" for none) */
    uint64_t ram;
    long threads, n_ctx, max_tokens;
    long parallel;      /* --parallel; 0: the plan's choice, then the plan's count */
    long n_ubatch;      /* -ub: compute's prompt chunk; 0: the daemons' default */
    int type_k, type_v; /* -ctk / -ctv (enum nf_type); 0: f16 */
    float sparsity;
    bool lookup;          /* --lookup: compute speculates with prompt lookup by default */
    bool prefix_off;      /* --prefix-cache off: compute keeps no prefix between requests */
    char draft[PATH_MAX]; /* --draft FILE made absolute ("" for none) */
    uint64_t stack_ram;   /* the budget the daemons plan with: --ram less the draft model's */

    /* The KV cache on disk: --kv-offload off|on|auto (NULL: auto), --kv-dir DIR (made absolute
     * in kv_dir_abs), --kv-block, after planning the plan's (0: the KV cache in RAM). */
    const char *kv_offload, *kv_dir;
    char kv_dir_abs[PATH_MAX];
    long kv_block;
    /* --kv-store DIR made absolute ("" for none), --kv-store-max (0: compute's default). */
    char kv_store[PATH_MAX];
    uint64_t kv_store_max;
};

static pid_t spawn_daemon(const char *bin, const char *role, const char *dir, const char *nft,
                          const struct up_opts *o)
{
    char logp[PATH_MAX], ram[32], thr[32], sp[32], ctx[32], maxtok[32], par[32], ub[32], kvb[32];
    nf_rundir_path(dir, role, "log", logp, sizeof(logp));
    snprintf(ram, sizeof(ram), "%llu", (unsigned long long)(o->stack_ram ? o->stack_ram : o->ram));
    snprintf(thr, sizeof(thr), "%ld", o->threads);
    snprintf(sp, sizeof(sp), "%.6g", (double)o->sparsity);
    snprintf(ctx, sizeof(ctx), "%ld", o->n_ctx);
    snprintf(par, sizeof(par), "%ld", o->parallel);
    char *argv[48];
    int k = 0;
    argv[k++] = (char *)bin;
    argv[k++] = "--run-dir";
    argv[k++] = (char *)dir;
    argv[k++] = "--model";
    argv[k++] = (char *)nft;
    argv[k++] = "--ram";
    argv[k++] = ram;
    argv[k++] = "-t";
    argv[k++] = thr;
    argv[k++] = "--sparsity";
    argv[k++] = sp;
    argv[k++] = "--ctx";
    argv[k++] = ctx;
    if (o->lookup && !strcmp(role, NF_ROLE_COMPUTE))
        argv[k++] = "--lookup";
    if (o->prefix_off && !strcmp(role, NF_ROLE_COMPUTE)) {
        argv[k++] = "--prefix-cache";
        argv[k++] = "off";
    }
    char ksmax[32];
    if (o->kv_store[0] && !strcmp(role, NF_ROLE_COMPUTE)) {
        argv[k++] = "--kv-store";
        argv[k++] = (char *)o->kv_store;
        if (o->kv_store_max) {
            snprintf(ksmax, sizeof(ksmax), "%llu", (unsigned long long)o->kv_store_max);
            argv[k++] = "--kv-store-max";
            argv[k++] = ksmax;
        }
    }
    if (o->draft[0] && !strcmp(role, NF_ROLE_COMPUTE)) {
        argv[k++] = "--draft";
        argv[k++] = (char *)o->draft;
    }
    argv[k++] = "--parallel";
    argv[k++] = par;
    if (o->kv_block && strcmp(role, NF_ROLE_GATEWAY)) { /* every daemon plans with it */
        snprintf(kvb, sizeof(kvb), "%ld", o->kv_block);
        argv[k++] = "--kv-block";
        argv[k++] = kvb;
        if (o->kv_dir && (!strcmp(role, NF_ROLE_COMPUTE) || !strcmp(role, NF_ROLE_FETCHER))) {
            argv[k++] = "--kv-dir";
            argv[k++] = (char *)o->kv_dir_abs;
        }
    }
    if (o->n_ubatch) {
        snprintf(ub, sizeof(ub), "%ld", o->n_ubatch);
        argv[k++] = "--ubatch";
        argv[k++] = ub;
    }
    if (o->type_k) { /* every daemon takes them: the fetcher plans with them */
        argv[k++] = "--cache-type-k";
        argv[k++] = (char *)nf_kv_type_name((enum nf_type)o->type_k);
    }
    if (o->type_v) {
        argv[k++] = "--cache-type-v";
        argv[k++] = (char *)nf_kv_type_name((enum nf_type)o->type_v);
    }
    if (o->max_tokens && !strcmp(role, NF_ROLE_COMPUTE)) {
        snprintf(maxtok, sizeof(maxtok), "%ld", o->max_tokens);
        argv[k++] = "--max-tokens-per-request";
        argv[k++] = maxtok;
    }
    if (o->expert_cache && !strcmp(role, NF_ROLE_FETCHER)) {
        argv[k++] = "--expert-cache";
        argv[k++] = (char *)o->expert_cache;
    }
    if (o->log_level) {
        argv[k++] = "--log-level";
        argv[k++] = (char *)o->log_level;
    }
    if (!strcmp(role, NF_ROLE_GATEWAY)) {
        argv[k++] = "--http";
        argv[k++] = (char *)o->http;
        if (o->api_key_file[0]) {
            argv[k++] = "--api-key-file";
            argv[k++] = (char *)o->api_key_file;
        }
        if (o->chat_template) {
            argv[k++] = "--chat-template";
            argv[k++] = (char *)o->chat_template;
        }
    }
    argv[k] = NULL;
    fflush(NULL);
    pid_t pid = fork();
    if (pid != 0)
        return pid;
    /* Child: early failures (before the daemon opens its own log) land in ROLE.log too. */
    int in = open("/dev/null", O_RDONLY);
    int out = open(logp, O_WRONLY | O_CREAT | O_APPEND, 0600);
    if (in >= 0)
        dup2(in, 0);
    if (out >= 0) {
        dup2(out, 1);
        dup2(out, 2);
    }
    signal(SIGINT, SIG_DFL);
    signal(SIGTERM, SIG_DFL);
    execv(bin, argv);
    fprintf(stderr, "nanoflowctl up: cannot execute %s: %s\n", bin, strerror(errno));
    _exit(127);
}

/* Prints the last lines of dir/ROLE.log (the failing daemon's reason). */
static void print_log_tail(const char *dir, const char *role)
{
    char logp[PATH_MAX];
    nf_rundir_path(dir, role, "log", logp, sizeof(logp));
    FILE *f = fopen(logp, "r");
    if (!f)
        return;
    char buf[4096];
    fseek(f, 0, SEEK_END);
    long sz = ftell(f);
    long from = sz > (long)sizeof(buf) - 1 ? sz - (long)sizeof(buf) + 1 : 0;
    fseek(f, from, SEEK_SET);
    size_t n = fread(buf, 1, sizeof(buf) - 1, f);
    fclose(f);
    buf[n] = '\0';
    /* The last 6 lines. */
    int lines = 0;
    char *p = buf + n;
    while (p > buf) {
        if (p[-1] == '\n' && p != buf + n && ++lines == 6)
            break;
        p--;
    }
    if (*p == '\0')
        return;
    fprintf(stderr, "last lines of %s:\n", logp);
    for (char *save = NULL, *l = strtok_r(p, "\n", &save); l; l = strtok_r(NULL, "\n", &save))
        fprintf(stderr, "  %s\n", l);
}

/* A pidfd for pid (signals through it cannot reach a process that reused the pid), or -1. */
static int pid_open(pid_t pid)
{
    return (int)syscall(SYS_pidfd_open, pid, 0);
}

static void pid_signal(int pfd, pid_t pid, int sig)
{
    if (pfd >= 0)
        syscall(SYS_pidfd_send_signal, pfd, sig, NULL, 0);
    else
        kill(pid, sig);
}

/* True while the process is running (pidfd readable means it exited). */
static bool pid_running(int pfd, pid_t pid)
{
    if (pfd >= 0) {
        struct pollfd p = {.fd = pfd, .events = POLLIN};
        return poll(&p, 1, 0) == 0;
    }
    return kill(pid, 0) == 0;
}

/* A pidfd pinning pid, which the caller verified as role's daemon: checked again once pinned,
 * as that process may have exited and its pid been reused since. -1 without pidfds, -2 when
 * pid is no longer the daemon (it is gone). */
static int pin_daemon(int pid, const char *role)
{
    char err[PATH_MAX + 64];
    int pfd = pid_open(pid);
    if (pfd >= 0 && nf_pid_is_daemon(pid, role, err, sizeof(err)) < 0) {
        close(pfd);
        return -2;
    }
    return pfd < 0 ? -1 : pfd;
}

/* True once daemon pid has exited. A daemon removes its pid file before it returns from main
 * (and, under a sanitizer, before the leak check at exit): with a pidfd only the process's
 * exit counts, or `down` could return while a daemon still holds memory and files; without
 * one, the pid file naming another pid (or none) has to do. */
static bool daemon_gone(const char *dir, const char *role, int pid, int pfd)
{
    return (pfd < 0 && nf_pidfile_read(dir, role) != pid) || !pid_running(pfd, pid);
}

/* Sends SIGTERM, then SIGKILL after term_ms, to pid, a daemon of role the caller has verified
 * (nf_ctl_daemon_pid, or our own unreaped child); returns once it is gone (or after kill_ms
 * more). */
static bool stop_pid(const char *dir, const char *role, int pid, int term_ms, int kill_ms)
{
    double t0 = nf_now_s();
    bool termed = term_ms == 0, killed = false, gone = false;
    int pfd = pin_daemon(pid, role);
    if (pfd == -2)
        return true;
    if (termed)
        pid_signal(pfd, pid, SIGTERM);
    for (;;) {
        waitpid(pid, NULL, WNOHANG); /* reap it if it is our child */
        if (daemon_gone(dir, role, pid, pfd)) {
            gone = true;
            break;
        }
        double el = (nf_now_s() - t0) * 1000.0;
        if (!termed && el >= term_ms) {
            pid_signal(pfd, pid, SIGTERM);
            termed = true;
        }
        if (!killed && el >= term_ms + kill_ms) {
            pid_signal(pfd, pid, SIGKILL);
            killed = true;
        }
        if (el >= term_ms + kill_ms + 5000)
            break;
        nf_sleep_ms(20);
    }
    if (pfd >= 0)
        close(pfd);
    return gone;
}

/* Stops what `up` started after a failure: every daemon with a live pid that is our own
 * unreaped child or proves to be the stack's daemon, then the files. */
static void up_abort(const char *dir, const pid_t *children, int n_children)
{
    for (int i = NF_N_ROLES - 1; i >= 0; i--) {
        const char *role = nf_stack_roles[i];
        int pid = nf_pidfile_read(dir, role);
        if (pid <= 0)
            continue;
        bool ours = i < n_children && children[i] == pid && waitpid(pid, NULL, WNOHANG) == 0;
        if (!ours) {
            char why[PATH_MAX + 512];
            pid = nf_ctl_daemon_pid(dir, role, why, sizeof(why));
            if (pid < 0)
                fprintf(stderr, "nanoflowctl up: %s\n", why);
        }
        if (pid > 0)
            stop_pid(dir, role, pid, 0, 3000);
    }
    for (int i = 0; i < n_children; i++) {
        if (children[i] > 0 && waitpid(children[i], NULL, WNOHANG) == 0) {
            kill(children[i], SIGKILL);
            waitpid(children[i], NULL, 0);
        }
    }
    nf_ctl_cleanup_rundir(dir);
}

static void send_shutdown(int fd)
{
    nf_envelope req;
    Nanoflow__Shutdown sd;
    nanoflow__envelope__init(&req);
    nanoflow__shutdown__init(&sd);
    req.msg_case = NANOFLOW__ENVELOPE__MSG_SHUTDOWN;
    req.shutdown = &sd;
    nf_client_send(fd, nf_ctl_next_id(), &req);
}

/* A daemon whose socket is already gone while its pid file still names a live nanoflow-ROLE
 * process is most likely exiting: the stop word of an earlier Shutdown (compute's stops the
 * whole stack) makes every daemon close its socket, then unmap the region and remove its pid
 * file. It cannot be confirmed as the stack's daemon any more, so it is never signalled; this
 * only waits up to 10 s for it to finish on its own. True when it did. */
static bool exiting_on_its_own(const char *dir, const char *role)
{
    char err[PATH_MAX + 64];
    int pid = nf_pidfile_read(dir, role);
    if (pid <= 0 || nf_pid_is_daemon(pid, role, err, sizeof(err)) < 0)
        return pid <= 0;
    int pfd = pin_daemon(pid, role);
    bool gone = pfd == -2;
    for (int waited = 0; !gone && waited < 10000; waited += 50) {
        if (daemon_gone(dir, role, pid, pfd))
            gone = true;
        else
            nf_sleep_ms(50);
    }
    if (pfd >= 0)
        close(pfd);
    return gone;
}

/* Stops every daemon of the stack in dir that still runs (those of a half-dead stack too):
 * Shutdown to compute, predictor, then fetcher, SIGTERM after 10 s, SIGKILL after 15 s; then
 * removes the run directory's files but the logs. A pid is signalled only once it proves to be
 * its socket's server running the daemon's binary (nf_ctl_daemon_pid), never on the pid file
 * alone: a crash and pid reuse, or a planted file, would name someone else's process. Returns
 * 0, or 1 after saying which daemon does not exit or could not be confirmed. */
static int stop_stack(const char *cmd, const char *dir)
{
    int ret = 0, pids[NF_N_ROLES + 1];
    char why[NF_N_ROLES + 1][PATH_MAX + 512];
    /* Every pid is confirmed before the first Shutdown: compute's stops the whole stack, and a
     * daemon on its way out has already removed its socket and pid file. */
    for (int i = NF_N_ROLES; i >= 0; i--) {
        const char *role = i == NF_N_ROLES ? NF_ROLE_GATEWAY : nf_stack_roles[i];
        pids[i] = nf_ctl_daemon_pid(dir, role, why[i], sizeof(why[i]));
    }
    /* The HTTP front first (when `up --http` started one), then the stack's three. */
    for (int i = NF_N_ROLES; i >= 0; i--) {
        const char *role = i == NF_N_ROLES ? NF_ROLE_GATEWAY : nf_stack_roles[i];
        char err[512];
        int pid = pids[i];
        int fd = nf_ctl_connect(dir, role, 2000, err, sizeof(err));
        if (fd == -EPERM) {
            fprintf(stderr, "nanoflowctl %s: %s\n", cmd, err);
            ret = 1;
        }
        if (fd >= 0) {
            send_shutdown(fd);
            close(fd);
        }
        if (pid < 0 && exiting_on_its_own(dir, role)) {
            pid = 0; /* gone without a signal: nothing was trusted */
        } else if (pid < 0) {
            fprintf(stderr, "nanoflowctl %s: %s\n", cmd, why[i]);
            ret = 1;
        } else if (pid > 0 && !stop_pid(dir, role, pid, 10000, 5000)) {
            fprintf(stderr, "nanoflowctl %s: %s (pid %d) does not exit\n", cmd, role, pid);
            ret = 1;
        }
    }
    nf_ctl_cleanup_rundir(dir);
    return ret;
}

/* Waits until ROLE reports READY. Returns 0, or 1 after printing why not. */
static int wait_ready(const char *dir, const char *role, pid_t child)
{
    double t0 = nf_now_s(), child_gone_at = 0;
    int fd = -1;
    char err[512] = "";
    for (;;) {
        double el = (nf_now_s() - t0) * 1000.0;
        if (el > NF_UP_READY_TIMEOUT_MS) {
            fprintf(stderr, "nanoflowctl up: %s did not become ready within %d s%s%s\n", role,
                    NF_UP_READY_TIMEOUT_MS / 1000, err[0] ? ": " : "", err);
            break;
        }
        int status;
        if (child > 0 && waitpid(child, &status, WNOHANG) == child) {
            child = 0;
            child_gone_at = nf_now_s();
            /* Exit 0 is a daemon that detached into a grandchild; anything else failed. */
            if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
                if (WIFSIGNALED(status))
                    fprintf(stderr, "nanoflowctl up: %s was killed by signal %d\n", role,
                            WTERMSIG(status));
                else
                    fprintf(stderr, "nanoflowctl up: %s exited with status %d\n", role,
                            WEXITSTATUS(status));
                break;
            }
        }
        if (child == 0 && child_gone_at > 0 && nf_now_s() - child_gone_at > 5.0 &&
            nf_pidfile_read(dir, role) == 0) {
            fprintf(stderr, "nanoflowctl up: %s exited without leaving a running daemon\n", role);
            break;
        }
        if (fd < 0)
            fd = nf_ctl_connect(dir, role, 1000, err, sizeof(err));
        if (fd >= 0) {
            nf_envelope req, *r = NULL;
            Nanoflow__HealthRequest hr;
            nanoflow__envelope__init(&req);
            nanoflow__health_request__init(&hr);
            req.msg_case = NANOFLOW__ENVELOPE__MSG_HEALTH_REQUEST;
            req.health_request = &hr;
            int rc = nf_ctl_request(fd, &req, &r, 5000);
            if (rc == 0 && r->msg_case == NANOFLOW__ENVELOPE__MSG_HEALTH) {
                int st = r->health->state;
                nf_envelope_free(r);
                if (st == NANOFLOW__HEALTH__STATE__READY) {
                    close(fd);
                    return 0;
                }
                if (st == NANOFLOW__HEALTH__STATE__STOPPING) {
                    fprintf(stderr, "nanoflowctl up: %s is stopping instead of starting\n", role);
                    break;
                }
            } else {
                snprintf(err, sizeof(err), "health request: %s",
                         rc < 0 ? nf_strerror(rc) : "unexpected reply");
                nf_envelope_free(r);
                close(fd);
                fd = -1;
            }
        }
        nf_sleep_ms(50);
    }
    if (fd >= 0)
        close(fd);
    print_log_tail(dir, role);
    return 1;
}

static int up_parse(int argc, char **argv, struct up_opts *o)
{
    static const char *const cmd = "up";
    o->ram = 1ull << 30;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v;
        if (!strcmp(a, "-h") || !strcmp(a, "--help")) {
            up_usage(stdout);
            return 1;
        }
        if (!strcmp(a, "--lookup")) {
            o->lookup = true;
            continue;
        }
        if (!(nf_arg_is(a, "--model") || !strcmp(a, "-m") || nf_arg_is(a, "--ram") ||
              nf_arg_is(a, "--threads") || !strcmp(a, "-t") || nf_arg_is(a, "--sparsity") ||
              nf_arg_is(a, "--ctx") || nf_arg_is(a, "--ctx-size") || !strcmp(a, "-c") ||
              nf_arg_is(a, "--run-dir") || nf_arg_is(a, "--log-level") ||
              nf_arg_is(a, "--max-tokens-per-request") || nf_arg_is(a, "--http") ||
              nf_arg_is(a, "--api-key-file") || nf_arg_is(a, "--chat-template") ||
              nf_arg_is(a, "--parallel") || nf_arg_is(a, "--draft") ||
              nf_arg_is(a, "--expert-cache") || nf_arg_is(a, "--ubatch-size") ||
              !strcmp(a, "-ub") || nf_arg_is(a, "--cache-type-k") || !strcmp(a, "-ctk") ||
              nf_arg_is(a, "--cache-type-v") || !strcmp(a, "-ctv") ||
              nf_arg_is(a, "--prefix-cache") || nf_arg_is(a, "--kv-offload") ||
              nf_arg_is(a, "--kv-dir") || nf_arg_is(a, "--kv-block") ||
              nf_arg_is(a, "--kv-store") || nf_arg_is(a, "--kv-store-max")))
            return nf_usage_error(cmd, "unknown flag '%s'", a);
        if (!(v = nf_arg_value(cmd, argc, argv, &i)))
            return 2;
        if (nf_arg_is(a, "--model") || !strcmp(a, "-m")) {
            o->model = v;
        } else if (nf_arg_is(a, "--ram")) {
            if (nf_arg_ram(cmd, "--ram", v, &o->ram))
                return 2;
        } else if (nf_arg_is(a, "--threads") || !strcmp(a, "-t")) {
            if (nf_arg_long(cmd, a, v, 0, 1024, &o->threads))
                return 2;
        } else if (nf_arg_is(a, "--sparsity")) {
            if (nf_arg_float(cmd, a, v, 0.0f, 0.99f, &o->sparsity))
                return 2;
        } else if (nf_arg_is(a, "--ctx") || nf_arg_is(a, "--ctx-size") || !strcmp(a, "-c")) {
            if (nf_arg_long(cmd, a, v, 0, 1 << 24, &o->n_ctx))
                return 2;
        } else if (nf_arg_is(a, "--parallel")) {
            if (nf_arg_long(cmd, a, v, 1, NF_STACK_SEQ_MAX, &o->parallel))
                return 2;
        } else if (nf_arg_is(a, "--ubatch-size") || !strcmp(a, "-ub")) {
            if (nf_arg_long(cmd, a, v, 1, NF_MAX_UBATCH, &o->n_ubatch))
                return 2;
        } else if (nf_arg_is(a, "--cache-type-k") || !strcmp(a, "-ctk")) {
            if (nf_arg_kv_type(cmd, a, v, &o->type_k))
                return 2;
        } else if (nf_arg_is(a, "--cache-type-v") || !strcmp(a, "-ctv")) {
            if (nf_arg_kv_type(cmd, a, v, &o->type_v))
                return 2;
        } else if (nf_arg_is(a, "--kv-offload")) {
            if (strcmp(v, "auto") && strcmp(v, "on") && strcmp(v, "off"))
                return nf_usage_error(cmd, "--kv-offload expects auto, on or off, got '%s'", v);
            o->kv_offload = v;
        } else if (nf_arg_is(a, "--kv-dir")) {
            struct stat st;
            errno = 0;
            if (!realpath(v, o->kv_dir_abs) || stat(o->kv_dir_abs, &st) < 0 ||
                !S_ISDIR(st.st_mode) || access(o->kv_dir_abs, W_OK) < 0) {
                fprintf(stderr, "nanoflowctl up: --kv-dir %s: %s\n", v,
                        errno ? strerror(errno) : "not a directory");
                return 2;
            }
            o->kv_dir = v;
        } else if (nf_arg_is(a, "--kv-store")) {
            /* Created here (one level) so that a path that cannot be is refused now. */
            struct stat st;
            const char *why = NULL;
            if (mkdir(v, 0700) < 0 && errno != EEXIST)
                why = strerror(errno);
            else if (!realpath(v, o->kv_store) || stat(o->kv_store, &st) < 0)
                why = strerror(errno);
            else if (!S_ISDIR(st.st_mode) || access(o->kv_store, W_OK) < 0)
                why = "not a writable directory";
            if (why) {
                fprintf(stderr, "nanoflowctl up: --kv-store %s: %s\n", v, why);
                o->kv_store[0] = 0;
                return 2;
            }
        } else if (nf_arg_is(a, "--kv-store-max")) {
            if (nf_arg_size(cmd, a, v, &o->kv_store_max))
                return 2;
            if (o->kv_store_max < 4096)
                return nf_usage_error(cmd, "--kv-store-max %s is below 4K", v);
        } else if (nf_arg_is(a, "--kv-block")) {
            if (nf_arg_long(cmd, a, v, 1, NF_KV_BLOCK_MAX, &o->kv_block))
                return 2;
        } else if (nf_arg_is(a, "--max-tokens-per-request")) {
            if (nf_arg_long(cmd, a, v, 1, 1000000, &o->max_tokens))
                return 2;
        } else if (nf_arg_is(a, "--run-dir")) {
            o->run_dir = v;
        } else if (nf_arg_is(a, "--draft")) {
            if (!realpath(v, o->draft) || access(o->draft, R_OK) < 0) {
                fprintf(stderr, "nanoflowctl up: --draft %s: %s\n", v, strerror(errno));
                return 2;
            }
        } else if (nf_arg_is(a, "--http")) {
            o->http = v;
        } else if (nf_arg_is(a, "--prefix-cache")) {
            if (strcmp(v, "on") && strcmp(v, "off"))
                return nf_usage_error(cmd, "--prefix-cache expects on or off, got '%s'", v);
            o->prefix_off = !strcmp(v, "off");
        } else if (nf_arg_is(a, "--expert-cache")) {
            if (strcmp(v, "freq") && strcmp(v, "cyclic"))
                return nf_usage_error(cmd, "--expert-cache expects freq or cyclic, got '%s'", v);
            o->expert_cache = v;
        } else if (nf_arg_is(a, "--api-key-file")) {
            if (!realpath(v, o->api_key_file) || access(o->api_key_file, R_OK) < 0) {
                fprintf(stderr, "nanoflowctl up: --api-key-file %s: %s\n", v, strerror(errno));
                return 2;
            }
        } else if (nf_arg_is(a, "--chat-template")) {
            if (!nf_chat_detect(v))
                return nf_usage_error(cmd, "--chat-template expects one of %s, got '%s'",
                                      nf_chat_names(), v);
            o->chat_template = v;
        } else {
            if (strcmp(v, "error") && strcmp(v, "warn") && strcmp(v, "info") && strcmp(v, "debug"))
                return nf_usage_error(
                    cmd, "--log-level expects error, warn, info or debug, got '%s'", v);
            o->log_level = v;
        }
    }
    if (!o->model)
        return nf_usage_error(cmd, "--model FILE is required");
    if (o->ram == 0)
        return nf_usage_error(cmd, "--ram must be above 0");
    if (!o->http && (o->api_key_file[0] || o->chat_template))
        return nf_usage_error(cmd, "--api-key-file and --chat-template need --http HOST:PORT");
    return 0;
}

/* Starts the HTTP front of `up --http` once the stack is ready. Returns its pid, or -1 after
 * stopping it and the stack (children: the three daemons `up` started) and saying why. */
static int up_gateway(const struct up_opts *o, const char *dir, const char *nft,
                      const pid_t *children)
{
    char bin[PATH_MAX], looked[2048];
    if (find_daemon(NF_ROLE_GATEWAY, bin, sizeof(bin), looked, sizeof(looked)) < 0) {
        fprintf(stderr, "nanoflowctl up: nanoflow-%s not found (looked in %s)\n", NF_ROLE_GATEWAY,
                looked);
        up_abort(dir, children, NF_N_ROLES);
        return -1;
    }
    pid_t child = spawn_daemon(bin, NF_ROLE_GATEWAY, dir, nft, o);
    if (child < 0 || wait_ready(dir, NF_ROLE_GATEWAY, child)) {
        if (child < 0)
            fprintf(stderr, "nanoflowctl up: cannot start %s: %s\n", bin, strerror(errno));
        int pid = nf_pidfile_read(dir, NF_ROLE_GATEWAY);
        if (pid > 0 &&
            (pid == child || nf_pid_is_daemon(pid, NF_ROLE_GATEWAY, looked, sizeof(looked)) == 0))
            stop_pid(dir, NF_ROLE_GATEWAY, pid, 0, 3000);
        if (child > 0 && waitpid(child, NULL, WNOHANG) == 0) {
            kill(child, SIGKILL);
            waitpid(child, NULL, 0);
        }
        up_abort(dir, children, NF_N_ROLES);
        fprintf(stderr, "nanoflowctl up: stack not started; nothing is left running\n");
        return -1;
    }
    return nf_pidfile_read(dir, NF_ROLE_GATEWAY);
}

/* Starts the stack described by o in the run directory dir (existing and checked). Returns 0,
 * or 1 after printing why not. */
/* What `up --draft` reserves for the draft model inside the budget: its file (the weights, read
 * into compute's RAM) and what it needs to draft at n_ctx (nf_gen_draft_ctx_bytes). Checks that
 * it is a model we run with the vocabulary of the stack's model f. Returns 0, or 1 after saying
 * why not. */
/* Free bytes of the file system holding path, or of its nearest existing parent (the run
 * directory may not exist yet); stale, the bytes of a stale file that `up` removes, counts as
 * free. */
static uint64_t up_free_bytes(const char *path, const char *stale)
{
    char p[PATH_MAX];
    struct statvfs vs;
    struct stat st;
    snprintf(p, sizeof(p), "%s", path);
    while (statvfs(p, &vs) < 0) {
        char *slash = strrchr(p, '/');
        if (!slash || slash == p)
            return statvfs("/", &vs) < 0 ? 0 : (uint64_t)vs.f_bavail * vs.f_frsize;
        *slash = 0;
    }
    const uint64_t old = stat(stale, &st) == 0 ? (uint64_t)st.st_blocks * 512 : 0;
    return (uint64_t)vs.f_bavail * vs.f_frsize + old;
}

/* --kv-offload: on, or auto when -c was asked for and the plan in RAM capped it, re-plans with
 * the KV cache on disk (nf_stack_plan_kv), whose file must fit the free space of its
 * directory. Sets o->kv_block (0: the KV cache stays in RAM). Returns 0, or 1 after saying why
 * on stderr. */
static int up_kv_plan(struct up_opts *o, const struct nf_nft *f, const char *dir,
                      struct nf_stack_plan *plan)
{
    const char *mode = o->kv_offload ? o->kv_offload : "auto";
    const bool on = !strcmp(mode, "on") ||
                    (!strcmp(mode, "auto") && o->n_ctx > 0 && plan->n_ctx < (uint32_t)o->n_ctx);
    const long block = o->kv_block ? o->kv_block : NF_KV_BLOCK;
    o->kv_block = 0;
    if (!on)
        return 0;
    char err[512], kvp[PATH_MAX], b1[32], b2[32];
    int rc = nf_stack_plan_kv(f, o->stack_ram ? o->stack_ram : o->ram, (uint32_t)o->n_ctx,
                              nf_stack_compute_threads((uint32_t)o->threads), (uint32_t)o->parallel,
                              (uint32_t)o->n_ubatch, (uint32_t)o->type_k, (uint32_t)o->type_v,
                              (uint32_t)block, plan, err, sizeof(err));
    if (rc < 0) {
        fprintf(stderr, "nanoflowctl up: planning with the KV cache on disk: %s\n", err);
        return 1;
    }
    const char *kd = o->kv_dir ? o->kv_dir_abs : dir;
    nf_rundir_kv_path(dir, o->kv_dir ? o->kv_dir_abs : NULL, kvp, sizeof(kvp));
    const uint64_t avail = up_free_bytes(kd, kvp);
    if (avail < plan->kv_file_bytes) {
        fprintf(stderr,
                "nanoflowctl up: the KV file at n_ctx %u needs %s in %s, which has %s free: "
                "lower -c or choose --kv-dir on a larger disk\n",
                plan->n_ctx, nf_ctl_fmt_size(b1, sizeof(b1), plan->kv_file_bytes), kd,
                nf_ctl_fmt_size(b2, sizeof(b2), avail));
        return 1;
    }
    o->kv_block = block;
    return 0;
}

static int up_draft_bytes(const struct up_opts *o, const struct nf_nft *f, uint32_t n_ctx,
                          uint64_t *bytes)
{
    char err[512];
    struct nf_gguf *g = NULL;
    struct nf_vocab *tv = NULL, *dv = NULL;
    struct nf_hparams hp;
    struct stat sb;
    int rc;
    if ((rc = nf_gguf_open(&g, o->draft, err, sizeof(err))) < 0 ||
        (rc = nf_model_hparams(&hp, g, err, sizeof(err))) < 0 ||
        (rc = nf_vocab_load(&dv, g, err, sizeof(err))) < 0 ||
        (rc = nf_vocab_load(&tv, nf_nft_gguf(f), err, sizeof(err))) < 0 ||
        (rc = nf_gen_vocab_check(tv, dv, err, sizeof(err))) < 0) {
        fprintf(stderr, "nanoflowctl up: --draft %s: %s\n", o->draft, err);
    } else if (stat(o->draft, &sb) < 0) {
        fprintf(stderr, "nanoflowctl up: --draft %s: %s\n", o->draft, strerror(errno));
        rc = -errno;
    } else {
        const int thr = (int)nf_stack_compute_threads((uint32_t)o->threads);
        *bytes = (uint64_t)sb.st_size + nf_gen_draft_ctx_bytes(&hp, (int)n_ctx, thr);
    }
    nf_vocab_free(tv);
    nf_vocab_free(dv);
    if (g)
        nf_gguf_close(g);
    return rc < 0;
}

static int up_in_dir(const struct up_opts *o, const char *dir)
{
    char err[512];
    int rc;
    for (int i = 0; i < NF_N_ROLES; i++) {
        int pid = nf_pidfile_read(dir, nf_stack_roles[i]);
        if (pid <= 0)
            continue;
        /* A stack with a dead daemon is stopped and a new one started (simpler than starting
         * the missing daemon into the old region: the fetcher owns and creates the region, and
         * a stack whose daemon died may have lost requests or tiles half-loaded). */
        char msg[256];
        int pids[NF_N_ROLES];
        unsigned dead = nf_ctl_stack_dead(dir, msg, sizeof(msg), pids);
        if (!dead) {
            fprintf(stderr,
                    "nanoflowctl up: a stack is already running in %s (%s pid %d); stop it with "
                    "'nanoflowctl down --run-dir %s'\n",
                    dir, nf_stack_roles[i], pid, dir);
            return 1;
        }
        fprintf(stderr,
                "nanoflowctl up: the %s (pid %d) of the stack in %s died: stopping the rest of "
                "that stack and starting a new one\n",
                nf_live_role(dead), pids[__builtin_ctz(dead)], dir);
        if (stop_stack("up", dir))
            return 1;
        break;
    }
    char nft[PATH_MAX];
    if (resolve_model(o->model, o->sparsity > 0, nft, sizeof(nft)))
        return 1;
    struct nf_nft *f = NULL;
    if ((rc = nf_nft_open(&f, nft, false, err, sizeof(err))) < 0) {
        fprintf(stderr, "nanoflowctl up: %s\n", err);
        char src[PATH_MAX];
        if (realpath(o->model, src) && strcmp(src, nft) && o->sparsity > 0) /* our .nft cache */
            fprintf(stderr,
                    "  %s is the cached conversion of %s and is damaged: delete it ('rm %s "
                    "%s.src') and run up again, or re-convert it with 'nanoflowctl convert "
                    "--force %s %s'\n",
                    nft, src, nft, nft, src, nft);
        return 1;
    }
    /* -c past the trained length is refused, as `run -c` is (nf_gen_ctx_check). */
    struct nf_hparams hp;
    if ((rc = nf_model_hparams(&hp, nf_nft_gguf(f), err, sizeof(err))) < 0 ||
        (rc = nf_gen_ctx_check(o->n_ctx, hp.n_ctx_train, err, sizeof(err))) < 0) {
        fprintf(stderr, "nanoflowctl up: %s: %s\n", nft, err);
        nf_nft_close(f);
        return 1;
    }
    /* Sparsity skips FFN neuron groups of dense layers; a MoE layer's work is chosen by its
     * router, so the flag would silently do nothing there. */
    if (hp.n_expert > 0 && o->sparsity > 0) {
        fprintf(stderr,
                "nanoflowctl up: --sparsity %g applies to dense models only: %s is a "
                "mixture-of-experts model (%d experts, %d used per token); drop --sparsity\n",
                (double)o->sparsity, nft, hp.n_expert, hp.n_expert_used);
        nf_nft_close(f);
        return 1;
    }
    /* A KV cache type the model cannot keep (MLA, head size) is refused here, in one line. */
    if ((rc = nf_kv_types_check(&hp, o->type_k ? (enum nf_type)o->type_k : NF_TYPE_F16,
                                o->type_v ? (enum nf_type)o->type_v : NF_TYPE_F16, err,
                                sizeof(err))) < 0) {
        fprintf(stderr, "nanoflowctl up: %s: %s\n", nft, err);
        nf_nft_close(f);
        return 1;
    }
    struct nf_stack_plan plan;
    rc = nf_stack_plan_kv(f, o->ram, (uint32_t)o->n_ctx,
                          nf_stack_compute_threads((uint32_t)o->threads), (uint32_t)o->parallel,
                          (uint32_t)o->n_ubatch, (uint32_t)o->type_k, (uint32_t)o->type_v, 0, &plan,
                          err, sizeof(err));
    struct up_opts so = *o; /* o with the draft model's share taken out of the stack's budget */
    if (rc == 0 && o->draft[0]) {
        uint64_t dbytes = 0;
        if (up_draft_bytes(o, f, plan.n_ctx, &dbytes)) {
            nf_nft_close(f);
            return 1;
        }
        so.stack_ram = dbytes < o->ram ? o->ram - dbytes : 0;
        rc = nf_stack_plan_kv(f, so.stack_ram, (uint32_t)o->n_ctx,
                              nf_stack_compute_threads((uint32_t)o->threads), (uint32_t)o->parallel,
                              (uint32_t)o->n_ubatch, (uint32_t)o->type_k, (uint32_t)o->type_v, 0,
                              &plan, err, sizeof(err));
        if (rc == -ENOSPC) {
            char b1[32], b2[32], b3[32];
            fprintf(stderr,
                    "nanoflowctl up: a RAM budget of %s is too small for %s with the draft "
                    "model %s, which takes %s of it: the stack needs at least %s more (raise "
                    "--ram)\n",
                    nf_ctl_fmt_size(b1, sizeof(b1), o->ram), nft, o->draft,
                    nf_ctl_fmt_size(b2, sizeof(b2), dbytes),
                    nf_ctl_fmt_size(b3, sizeof(b3), plan.min_budget));
            nf_nft_close(f);
            return 1;
        }
    }
    if (rc == 0 && up_kv_plan(&so, f, dir, &plan)) {
        nf_nft_close(f);
        return 1;
    }
    o = &so;
    nf_nft_close(f);
    char b1[32], b2[32], b3[32], b4[32];
    if (rc == -ENOSPC && strstr(err, "ubatch")) {
        fprintf(stderr, "nanoflowctl up: -ub %ld: %s; lower -ub or raise --ram\n", o->n_ubatch,
                err);
        return 1;
    }
    if (rc == -ENOSPC) {
        fprintf(stderr,
                "nanoflowctl up: a RAM budget of %s is too small for %s: it needs at least %s "
                "(%llu bytes; raise --ram)\n  %s\n",
                nf_ctl_fmt_size(b1, sizeof(b1), o->ram), nft,
                nf_ctl_fmt_size(b2, sizeof(b2), plan.min_budget),
                (unsigned long long)plan.min_budget, err);
        return 1;
    }
    if (rc < 0) {
        fprintf(stderr, "nanoflowctl up: planning %s under %s: %s\n", nft,
                nf_ctl_fmt_size(b1, sizeof(b1), o->ram), err[0] ? err : nf_strerror(rc));
        return 1;
    }
    /* Every daemon plans with the sequence count chosen here. */
    struct up_opts od = *o;
    od.parallel = plan.n_seq;
    od.n_ubatch = plan.n_ubatch; /* and the ubatch the plan chose (or was given) */
    /* Every binary must exist before anything starts. */
    char bins[NF_N_ROLES][PATH_MAX];
    for (int i = 0; i < NF_N_ROLES; i++) {
        char looked[2048];
        if (find_daemon(nf_stack_roles[i], bins[i], sizeof(bins[i]), looked, sizeof(looked)) < 0) {
            fprintf(stderr, "nanoflowctl up: nanoflow-%s not found (looked in %s)\n",
                    nf_stack_roles[i], looked);
            return 1;
        }
    }
    /* Leftovers of a crashed stack (no live pid was found above). */
    nf_ctl_cleanup_rundir(dir);
    char conf[PATH_MAX];
    nf_pathf(conf, sizeof(conf), "%s/stack.conf", dir);
    FILE *cf = fopen(conf, "w");
    if (cf) {
        fprintf(cf, "model=%s\nram=%llu\nthreads=%ld\nsparsity=%.6g\nctx=%ld\n", nft,
                (unsigned long long)o->ram, o->threads, (double)o->sparsity, o->n_ctx);
        if (o->kv_block) { /* for nf_ctl_cleanup_rundir: `down` removes the file */
            char kvp[PATH_MAX];
            nf_rundir_kv_path(dir, o->kv_dir ? o->kv_dir_abs : NULL, kvp, sizeof(kvp));
            fprintf(cf, "kv_file=%s\n", kvp);
        }
        fclose(cf);
    }
    pid_t children[NF_N_ROLES] = {0};
    int pids[NF_N_ROLES] = {0};
    for (int i = 0; i < NF_N_ROLES; i++) {
        children[i] = spawn_daemon(bins[i], nf_stack_roles[i], dir, nft, &od);
        if (children[i] < 0) {
            fprintf(stderr, "nanoflowctl up: cannot start %s: %s\n", bins[i], strerror(errno));
            up_abort(dir, children, i);
            return 1;
        }
        if (wait_ready(dir, nf_stack_roles[i], children[i])) {
            up_abort(dir, children, i + 1);
            fprintf(stderr, "nanoflowctl up: stack not started; nothing is left running\n");
            return 1;
        }
        pids[i] = nf_pidfile_read(dir, nf_stack_roles[i]);
    }
    int gw_pid = 0;
    if (o->http && (gw_pid = up_gateway(&od, dir, nft, children)) < 0)
        return 1;
    /* The pool as "N slots: n0 x size0 + n1 x size1 ..." (one entry per slot size class). */
    char pool_desc[192];
    size_t pd = (size_t)snprintf(pool_desc, sizeof(pool_desc),
                                 "%llu slots:", (unsigned long long)plan.n_slots);
    for (uint32_t k = 0; k < plan.n_classes && pd < sizeof(pool_desc); k++) {
        int w = snprintf(pool_desc + pd, sizeof(pool_desc) - pd, "%s %llu x %s", k ? " +" : "",
                         (unsigned long long)plan.classes[k].n_slots,
                         nf_ctl_fmt_size(b3, sizeof(b3), plan.classes[k].slot_size));
        if (w > 0)
            pd += (size_t)w;
    }
    if (plan.kv_tiles && plan.n_classes < NF_STACK_MAX_CLASSES && pd < sizeof(pool_desc)) {
        /* The KV block tiles' class (the blocks read back, through the fetcher). */
        const struct nf_stack_class *c = &plan.classes[plan.n_classes];
        int w =
            snprintf(pool_desc + pd, sizeof(pool_desc) - pd, " + %llu x %s for KV blocks",
                     (unsigned long long)c->n_slots, nf_ctl_fmt_size(b3, sizeof(b3), c->slot_size));
        if (w > 0)
            pd += (size_t)w;
    }
    char b5[32];
    printf("stack up in %s\n  model %s\n  budget %s: pool %s (%s), KV %s, n_ctx %u\n"
           "  KV cache K %s, V %s: %s a token\n"
           "  parallel %u sequences, prompt ubatch %u tokens\n",
           dir, nft, nf_ctl_fmt_size(b1, sizeof(b1), o->ram),
           nf_ctl_fmt_size(b2, sizeof(b2), plan.pool_bytes), pool_desc,
           nf_ctl_fmt_size(b4, sizeof(b4), plan.kv_bytes), plan.n_ctx,
           nf_kv_type_name((enum nf_type)plan.type_k), nf_kv_type_name((enum nf_type)plan.type_v),
           nf_ctl_fmt_size(b5, sizeof(b5), plan.kv_token_bytes), plan.n_seq, plan.n_ubatch);
    if (o->kv_block) {
        char kvp[PATH_MAX];
        nf_rundir_kv_path(dir, o->kv_dir ? o->kv_dir_abs : NULL, kvp, sizeof(kvp));
        printf("  KV cache on disk: %s (%s, blocks of %ld positions; %s of it resident)\n", kvp,
               nf_ctl_fmt_size(b1, sizeof(b1), plan.kv_file_bytes), o->kv_block,
               nf_ctl_fmt_size(b2, sizeof(b2), plan.kv_bytes));
    }
    if (o->draft[0])
        printf("  draft model %s: %s of the budget (its weights, KV cache and scratch in "
               "compute)\n",
               o->draft, nf_ctl_fmt_size(b1, sizeof(b1), o->ram - o->stack_ram));
    for (int i = 0; i < NF_N_ROLES; i++)
        printf("  %-9s pid %d  log %s/%s.log\n", nf_stack_roles[i], pids[i], dir,
               nf_stack_roles[i]);
    if (o->http)
        printf("  %-9s pid %d  log %s/%s.log  http://%s/\n", NF_ROLE_GATEWAY, gw_pid, dir,
               NF_ROLE_GATEWAY, o->http);
    return 0;
}

int nf_cmd_up(int argc, char **argv)
{
    struct up_opts o = {0};
    int rc = up_parse(argc, argv, &o);
    if (rc)
        return rc == 1 ? 0 : rc;
    char dir[PATH_MAX], err[512];
    if (nf_ctl_rundir("up", o.run_dir, dir, sizeof(dir)) < 0)
        return 1;
    bool created = nf_rundir_check(dir, err, sizeof(err)) == -ENOENT;
    if ((rc = nf_rundir_create(dir, err, sizeof(err))) < 0) {
        fprintf(stderr, "nanoflowctl up: %s\n", err);
        return 1;
    }
    rc = up_in_dir(&o, dir);
    /* A failed up takes back the run directory it made. rmdir removes only an empty one: the
     * logs of daemons that failed to start stay (their last lines were shown). */
    if (rc && created) {
        nf_ctl_cleanup_rundir(dir);
        rmdir(dir);
    }
    return rc;
}

/* --- down ----------------------------------------------------------------------------------- */

static void down_usage(FILE *f)
{
    fprintf(f, "usage: nanoflowctl down [--run-dir DIR]\n\n"
               "Stops the stack in the run directory: Shutdown to compute, predictor, then\n"
               "fetcher; a daemon still running after 10 s gets SIGTERM, after 15 s SIGKILL.\n"
               "Sockets, pid files and the shared-memory object are removed; logs stay.\n\n"
               "      --run-dir DIR    run directory (default: as for 'up')\n"
               "  -h, --help           show this help\n");
}

int nf_cmd_down(int argc, char **argv)
{
    const char *run_dir = NULL;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "-h") || !strcmp(a, "--help")) {
            down_usage(stdout);
            return 0;
        }
        if (!nf_arg_is(a, "--run-dir"))
            return nf_usage_error("down", "unknown flag '%s'", a);
        if (!(run_dir = nf_arg_value("down", argc, argv, &i)))
            return 2;
    }
    char dir[PATH_MAX];
    if (nf_ctl_rundir("down", run_dir, dir, sizeof(dir)) < 0)
        return 1;
    if (!nf_ctl_stack_present(dir)) {
        nf_ctl_cleanup_rundir(dir);
        fprintf(stderr, "nanoflowctl down: no stack running in %s\n", dir);
        return 1;
    }
    int ret = stop_stack("down", dir);
    if (ret == 0)
        printf("stack in %s stopped\n", dir);
    return ret;
}
