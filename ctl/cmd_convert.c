/* cmd_convert.c - nanoflowctl convert: write a GGUF model as a .nft tile file. */
#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "cmds.h"
#include "nf_err.h"
#include "nft.h"
#include "nf_time.h"

static const char *const cmd = "convert";

/* The temporary file's name, for the signal handler (which may only call async-safe unlink). */
static char nf_conv_tmp[PATH_MAX];

static void on_signal(int sig)
{
    if (nf_conv_tmp[0])
        unlink(nf_conv_tmp);
    signal(sig, SIG_DFL);
    raise(sig);
}

static void usage(FILE *f)
{
    fprintf(
        f,
        "usage: nanoflowctl convert IN.gguf OUT.nft [--tile-size BYTES] [--rank R] [--f32]\n"
        "                           [--calibrate TEXT_FILE] [--force]\n\n"
        "Writes a llama-architecture GGUF model as a NanoFlow tile file: every weight kept\n"
        "bit-identical, cut into 4096-aligned checksummed tiles (FFN neurons bundled with their\n"
        "gate/up rows and down columns), with a low-rank predictor per dense layer (randomized\n"
        "SVD of ffn_gate) or a copy of the router per MoE layer. The file is written under a\n"
        "temporary name and renamed when complete; temporary files a killed convert left for\n"
        "the same output are removed. An existing OUT.nft is kept unless --force is given.\n\n"
        "  --tile-size BYTES  target tile size, e.g. 512K or 1M (default 1M; 4096..1G)\n"
        "  --rank R           predictor rank (default: the largest keeping all predictors\n"
        "                     within 3%% of the model's bytes)\n"
        "  --f32              store predictors as F32 (default F16)\n"
        "  --calibrate FILE   run the model over the text in FILE (its first 4096 tokens) and\n"
        "                     store per layer each neuron group's activation frequency and\n"
        "                     mean magnitude, thresholds for 50/80/90%% sparsity and a\n"
        "                     hot-first group order (dense models; loads the model in RAM)\n"
        "  --force            replace OUT.nft when it exists\n"
        "  --help, -h         show this help\n");
}

struct bar {
    bool tty;
    double t0; /* nf_now_s() at the start */
};

static void on_progress(void *ud, uint64_t done, uint64_t total, const char *what)
{
    const struct bar *b = ud;
    if (!b->tty)
        return;
    int width = 30, fill = total ? (int)((double)done / (double)total * width) : width;
    fprintf(stderr, "\r[%.*s%*s] %5.1f%% %-14s %6.1fs", fill, "##############################",
            width - fill, "", total ? 100.0 * (double)done / (double)total : 100.0, what,
            nf_now_s() - b->t0);
    fflush(stderr);
}

int nf_cmd_convert(int argc, char **argv)
{
    const char *in = NULL, *out = NULL;
    struct nf_nft_convert_opts o = {0};
    bool force = false;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v;
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
            usage(stdout);
            return 0;
        } else if (nf_arg_is(a, "--tile-size")) {
            if (!(v = nf_arg_value(cmd, argc, argv, &i)) || nf_arg_size(cmd, a, v, &o.tile_size))
                return 2;
            if (o.tile_size < 4096 || o.tile_size > (1u << 30))
                return nf_usage_error(cmd, "--tile-size expects 4096..1G bytes, got '%s'", v);
        } else if (nf_arg_is(a, "--rank")) {
            long r;
            if (!(v = nf_arg_value(cmd, argc, argv, &i)) ||
                nf_arg_long(cmd, "--rank", v, 1, 65536, &r))
                return 2;
            o.rank = (int)r;
        } else if (nf_arg_is(a, "--calibrate")) {
            if (!(v = nf_arg_value(cmd, argc, argv, &i)))
                return 2;
            if (access(v, R_OK) != 0)
                return nf_usage_error(cmd, "--calibrate: cannot read '%s'", v);
            o.calib_text = v;
        } else if (!strcmp(a, "--force")) {
            force = true;
        } else if (!strcmp(a, "--f32")) {
            o.pred_f32 = true;
        } else if (a[0] == '-' && a[1]) {
            return nf_usage_error(cmd, "unknown flag '%s'", a);
        } else if (!in) {
            in = a;
        } else if (!out) {
            out = a;
        } else {
            return nf_usage_error(cmd, "unexpected argument '%s'", a);
        }
    }
    if (!in || !out)
        return nf_usage_error(cmd, "needs IN.gguf and OUT.nft");
    struct stat st;
    if (!force && lstat(out, &st) == 0) {
        fprintf(stderr,
                "nanoflowctl convert: %s already exists; pass --force to replace it, or choose "
                "another output\n",
                out);
        return 1;
    }
    struct bar b = {.tty = isatty(STDERR_FILENO)};
    b.t0 = nf_now_s();
    o.progress = on_progress;
    o.progress_ud = &b;
    o.tmp_path = nf_conv_tmp;
    o.tmp_path_len = sizeof(nf_conv_tmp);
    struct sigaction sa = {.sa_handler = on_signal};
    sigemptyset(&sa.sa_mask);
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGHUP, &sa, NULL);
    signal(SIGXFSZ, SIG_IGN); /* a file size limit fails the write instead of killing us */
    char err[512];
    int rc = nf_nft_convert(in, out, &o, err, sizeof(err));
    if (b.tty)
        fputc('\n', stderr);
    signal(SIGINT, SIG_DFL);
    signal(SIGTERM, SIG_DFL);
    signal(SIGHUP, SIG_DFL);
    if (rc) {
        fprintf(stderr, "nanoflowctl convert: %s\n", err[0] ? err : nf_strerror(rc));
        return 1;
    }
    fprintf(stderr, "nanoflowctl convert: wrote %s in %.1fs\n", out, nf_now_s() - b.t0);
    return 0;
}
