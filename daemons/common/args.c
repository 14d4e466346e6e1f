/* args.c - the command line every daemon shares: the stack's flags, parsed once with getopt_long.
 */
#include <errno.h>
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "daemon.h"
#include "kv_quant.h"
#include "nf_err.h"
#include "nf_size.h"
#include "stack.h"

/* getopt_long values of the shared flags; a daemon's own start at NF_ARG_OWN. */
enum {
    ARG_RUN_DIR = 256,
    ARG_MODEL,
    ARG_RAM,
    ARG_SPARSITY,
    ARG_CTX,
    ARG_FOREGROUND,
    ARG_LOG_LEVEL,
    ARG_ATTACH,
    ARG_PARALLEL,
    ARG_UBATCH,
    ARG_CACHE_TYPE_K,
    ARG_CACHE_TYPE_V,
    ARG_KV_BLOCK,
};
_Static_assert(ARG_KV_BLOCK < NF_ARG_OWN, "the shared flags' values run into the daemons' own");

static const struct option shared_opts[] = {
    {"run-dir", required_argument, NULL, ARG_RUN_DIR},
    {"model", required_argument, NULL, ARG_MODEL},
    {"ram", required_argument, NULL, ARG_RAM},
    {"threads", required_argument, NULL, 't'},
    {"sparsity", required_argument, NULL, ARG_SPARSITY},
    {"ctx", required_argument, NULL, ARG_CTX},
    {"foreground", no_argument, NULL, ARG_FOREGROUND},
    {"log-level", required_argument, NULL, ARG_LOG_LEVEL},
    {"parallel", required_argument, NULL, ARG_PARALLEL},
    {"help", no_argument, NULL, 'h'},
    {"ubatch", required_argument, NULL, ARG_UBATCH},
    {"cache-type-k", required_argument, NULL, ARG_CACHE_TYPE_K},
    {"cache-type-v", required_argument, NULL, ARG_CACHE_TYPE_V},
    {"kv-block", required_argument, NULL, ARG_KV_BLOCK},
};
#define N_SHARED (sizeof(shared_opts) / sizeof(shared_opts[0]))
static const struct option attach_opt = {"attach-timeout", required_argument, NULL, ARG_ATTACH};
#define MAX_OPTS 32 /* shared, --attach-timeout, a daemon's own and the terminator */

int nf_daemon_arg_long(const char *s, long lo, long hi, long *out)
{
    char *end;
    errno = 0;
    long v = strtol(s, &end, 10);
    if (errno || end == s || *end || v < lo || v > hi)
        return -EINVAL;
    *out = v;
    return 0;
}

int nf_daemon_arg_float(const char *s, float lo, float hi, float *out)
{
    char *end;
    errno = 0;
    float v = strtof(s, &end);
    if (errno || end == s || *end || !(v >= lo && v < hi))
        return -EINVAL;
    *out = v;
    return 0;
}

int nf_daemon_arg_size(const char *s, uint64_t *out)
{
    uint64_t v;
    if (nf_parse_size(s, &v) < 0 || v == 0 || v > (uint64_t)9.0e18)
        return -EINVAL;
    *out = v;
    return 0;
}

/* Parses the value of shared flag c into a: 0 or -EINVAL. */
static int parse_shared(const char *role, int c, const char *v, struct nf_daemon_args *a)
{
    char why[256];
    long n;
    int rc = 0;
    switch (c) {
    case ARG_RUN_DIR: a->run_dir = v; break;
    case ARG_MODEL: a->model = v; break;
    case ARG_RAM:
        if ((rc = nf_daemon_arg_size(v, &a->ram)) == 0 &&
            (rc = nf_ram_check("--ram", a->ram, why, sizeof(why))) < 0)
            fprintf(stderr, "nanoflow-%s: %s\n", role, why);
        break;
    case 't':
        if ((rc = nf_daemon_arg_long(v, 0, 1024, &n)) == 0)
            a->threads = (int)n;
        break;
    case ARG_SPARSITY: rc = nf_daemon_arg_float(v, 0, 1, &a->sparsity); break;
    case ARG_CTX:
        if ((rc = nf_daemon_arg_long(v, 0, 1 << 24, &n)) == 0)
            a->ctx = (uint32_t)n;
        break;
    case ARG_PARALLEL:
        if ((rc = nf_daemon_arg_long(v, 0, NF_STACK_SEQ_MAX, &n)) == 0)
            a->parallel = (uint32_t)n;
        break;
    case ARG_UBATCH:
        if ((rc = nf_daemon_arg_long(v, 1, 4096, &n)) == 0)
            a->ubatch = (uint32_t)n;
        break;
    case ARG_CACHE_TYPE_K:
    case ARG_CACHE_TYPE_V: { /* f16, q8_0 or q4_0 (the caller names the flag and --help) */
        enum nf_type t;
        if ((rc = nf_kv_type_parse(v, &t)) < 0)
            rc = -EINVAL;
        else if (c == ARG_CACHE_TYPE_K)
            a->type_k = (uint32_t)t;
        else
            a->type_v = (uint32_t)t;
        break;
    }
    case ARG_KV_BLOCK:
        if ((rc = nf_daemon_arg_long(v, 0, NF_KV_BLOCK_MAX, &n)) == 0)
            a->kv_block = (uint32_t)n;
        break;
    case ARG_FOREGROUND: a->foreground = true; break;
    case ARG_LOG_LEVEL: rc = nf_log_level_parse(v, &a->level); break;
    case ARG_ATTACH:
        if ((rc = nf_daemon_arg_long(v, 1, 3600, &n)) == 0)
            a->attach_timeout_s = (int)n;
        break;
    default: NF_ASSERT(!"a shared flag without a parser"); /* the table above lists no other */
    }
    return rc;
}

int nf_daemon_args_parse(int argc, char **argv, const struct nf_daemon_argspec *spec,
                         struct nf_daemon_args *a)
{
    struct option lo[MAX_OPTS];
    size_t n = 0;
    for (size_t i = 0; i < N_SHARED; i++)
        lo[n++] = shared_opts[i];
    if (spec->attaches)
        lo[n++] = attach_opt;
    for (const struct option *o = spec->own; o && o->name; o++) {
        NF_ASSERT(n + 1 < MAX_OPTS && o->val >= NF_ARG_OWN);
        lo[n++] = *o;
    }
    lo[n] = (struct option){NULL, 0, NULL, 0};

    memset(a, 0, sizeof(*a));
    a->threads = -1;
    a->sparsity = -1;
    a->level = NF_LOG_INFO;
    a->attach_timeout_s = 30;
    const char *role = spec->role;
    opterr = 0;
    optind = 1;
    int c, idx;
    while (idx = -1, (c = getopt_long(argc, argv, ":t:h", lo, &idx)) != -1) {
        int rc;
        if (c == 'h') {
            spec->usage(stdout);
            return 1;
        } else if (c == ':') {
            fprintf(stderr, "nanoflow-%s: %s needs a value (try 'nanoflow-%s --help')\n", role,
                    argv[optind - 1], role);
            return 2;
        } else if (c == '?') {
            const char *k = argv[optind - 1];
            if (optopt && !strncmp(k, "--", 2) && strchr(k, '='))
                fprintf(stderr, "nanoflow-%s: %.*s takes no value (try 'nanoflow-%s --help')\n",
                        role, (int)(strchr(k, '=') - k), k, role);
            else
                fprintf(stderr, "nanoflow-%s: unknown flag '%s' (try 'nanoflow-%s --help')\n", role,
                        k, role);
            return 2;
        }
        rc = c >= NF_ARG_OWN ? spec->parse(c, optarg, spec->ud) : parse_shared(role, c, optarg, a);
        if (rc == -ERANGE) /* already said why (parse_shared's --ram bound) */
            return 2;
        if (rc < 0) {
            /* The flag as given: "--name" (also from "--name=value"), or "-t". */
            char name[40];
            if (idx >= 0)
                snprintf(name, sizeof(name), "--%s", lo[idx].name);
            else
                snprintf(name, sizeof(name), "-%c", c);
            fprintf(stderr, "nanoflow-%s: invalid value '%s' for %s (try 'nanoflow-%s --help')\n",
                    role, optarg, name, role);
            return 2;
        }
    }
    if (optind < argc) {
        fprintf(stderr, "nanoflow-%s: unexpected argument '%s' (try 'nanoflow-%s --help')\n", role,
                argv[optind], role);
        return 2;
    }
    if (!a->model) {
        fprintf(stderr, "nanoflow-%s: --model FILE.nft is required (try 'nanoflow-%s --help')\n",
                role, role);
        return 2;
    }
    return 0;
}
