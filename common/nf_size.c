/* nf_size.c - byte sizes with K/M/G/T suffixes. */
#include "nf_size.h"

#include <errno.h>
#include <stdlib.h>

int nf_parse_size(const char *s, uint64_t *out)
{
    char *end;
    errno = 0;
    double v = strtod(s, &end);
    if (errno || end == s || !(v >= 0)) /* !(v >= 0) also refuses NaN */
        return -EINVAL;
    double mul = 1;
    switch (*end) {
    case 'k':
    case 'K':
        mul = 1024.0;
        end++;
        break;
    case 'm':
    case 'M':
        mul = 1024.0 * 1024;
        end++;
        break;
    case 'g':
    case 'G':
        mul = 1024.0 * 1024 * 1024;
        end++;
        break;
    case 't':
    case 'T':
        mul = 1024.0 * 1024 * 1024 * 1024;
        end++;
        break;
    default: break;
    }
    if (*end == 'i' && mul > 1)
        end++;
    if (*end == 'B' || *end == 'b')
        end++;
    if (*end != '\0' || v * mul >= 1.8e19)
        return -EINVAL;
    *out = (uint64_t)(v * mul);
    return 0;
}
