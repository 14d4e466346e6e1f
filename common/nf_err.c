/* nf_err.c - message table for NanoFlow error codes. */
#include "nf_err.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const char *const nf__err_msgs[] = {
#define XX(name, msg) msg,
    NF_ERRNO_MAP(XX)
#undef XX
};

const char *nf_strerror(int err)
{
    if (err > NF_ERR_BASE_ && err < NF_ERR_END_)
        return nf__err_msgs[err - NF_ERR_BASE_ - 1];
    if (err < 0)
        return strerror(-err);
    return err == 0 ? "success" : "unknown error";
}

/* A message is one line whatever the file said: control characters from a name or string it
 * quotes (a hostile architecture "\n", a tensor name with a tab) become '?'. */
static void one_line(char *s)
{
    for (; *s; s++)
        if ((unsigned char)*s < 0x20 || *s == 0x7f)
            *s = '?';
}

int nf_errf(char *err, size_t errlen, int code, const char *fmt, ...)
{
    if (err && errlen) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(err, errlen, fmt, ap);
        va_end(ap);
        one_line(err);
    }
    return code;
}

int nf_errf_at(char *err, size_t errlen, int code, const char *prefix, const char *fmt, ...)
{
    if (err && errlen) {
        int n = snprintf(err, errlen, "%s: ", prefix);
        if (n >= 0 && (size_t)n < errlen) {
            va_list ap;
            va_start(ap, fmt);
            vsnprintf(err + n, errlen - (size_t)n, fmt, ap);
            va_end(ap);
        }
        one_line(err);
    }
    return code;
}

void nf_assert_fail(const char *cond, const char *file, int line, const char *func)
{
    fprintf(stderr, "nanoflow: internal error: %s:%d: %s: assertion '%s' failed\n", file, line,
            func, cond);
    fflush(stderr);
    abort();
}
