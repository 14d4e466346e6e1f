/* nf_err.c - message table for NanoFlow error codes. */
#include "nf_err.h"

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
