/* args.c - strict parsing of nanoflowctl flag values, with one-line errors. */
#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cmds.h"
#include "kv_quant.h"
#include "nf_size.h"

int nf_usage_error(const char *cmd, const char *fmt, ...)
{
    va_list ap;
    fprintf(stderr, "nanoflowctl %s: ", cmd);
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fprintf(stderr, " (try 'nanoflowctl %s --help')\n", cmd);
    return 2;
}

int nf_arg_long(const char *cmd, const char *flag, const char *val, long min, long max, long *out)
{
    char *end;
    errno = 0;
    long v = strtol(val, &end, 10);
    if (errno || end == val || *end != '\0' || v < min || v > max) {
        nf_usage_error(cmd, "%s expects an integer in [%ld, %ld], got '%s'", flag, min, max, val);
        return -1;
    }
    *out = v;
    return 0;
}

int nf_arg_kv_type(const char *cmd, const char *flag, const char *val, int *out)
{
    enum nf_type t;
    if (nf_kv_type_parse(val, &t) < 0) {
        nf_usage_error(cmd, "%s expects one of %s, got '%s'", flag, NF_KV_TYPE_NAMES, val);
        return -1;
    }
    *out = (int)t;
    return 0;
}

int nf_arg_u64(const char *cmd, const char *flag, const char *val, uint64_t *out)
{
    char *end;
    errno = 0;
    unsigned long long v = strtoull(val, &end, 10);
    /* strtoull skips blanks and negates "-5" into a huge value: refuse any minus sign. */
    if (errno || end == val || *end != '\0' || strchr(val, '-')) {
        nf_usage_error(cmd, "%s expects a non-negative integer, got '%s'", flag, val);
        return -1;
    }
    *out = v;
    return 0;
}

int nf_arg_float(const char *cmd, const char *flag, const char *val, float min, float max,
                 float *out)
{
    char *end;
    errno = 0;
    float v = strtof(val, &end);
    if (errno || end == val || *end != '\0' || !isfinite(v) || v < min || v > max) {
        nf_usage_error(cmd, "%s expects a number in [%g, %g], got '%s'", flag, min, max, val);
        return -1;
    }
    *out = v;
    return 0;
}

int nf_arg_size(const char *cmd, const char *flag, const char *val, uint64_t *out)
{
    if (nf_parse_size(val, out) == 0)
        return 0;
    nf_usage_error(cmd, "%s expects a size such as 512M or 1G, got '%s'", flag, val);
    return -1;
}

int nf_arg_ram(const char *cmd, const char *flag, const char *val, uint64_t *out)
{
    char why[256];
    if (nf_arg_size(cmd, flag, val, out))
        return -1;
    if (nf_ram_check(flag, *out, why, sizeof(why)) < 0) {
        nf_usage_error(cmd, "%s", why);
        return -1;
    }
    return 0;
}

bool nf_arg_is(const char *arg, const char *name)
{
    size_t n = strlen(name);
    return strncmp(arg, name, n) == 0 && (arg[n] == '\0' || (arg[n] == '=' && name[1] == '-'));
}

const char *nf_arg_value(const char *cmd, int argc, char **argv, int *i)
{
    const char *eq = strchr(argv[*i], '=');
    if (argv[*i][1] == '-' && eq)
        return eq + 1;
    if (*i + 1 >= argc) {
        nf_usage_error(cmd, "%s needs a value", argv[*i]);
        return NULL;
    }
    return argv[++*i];
}
