/* nf_size.c - byte sizes with K/M/G/T suffixes. */
#include "nf_size.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/sysinfo.h>

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

int nf_ram_check(const char *flag, uint64_t bytes, char *err, size_t errlen)
{
    struct sysinfo si;
    if (sysinfo(&si) != 0 || si.totalram == 0)
        return 0; /* unknown: nothing to compare with */
    uint64_t unit = si.mem_unit ? si.mem_unit : 1, ram = (uint64_t)si.totalram * unit,
             swap = (uint64_t)si.totalswap * unit;
    if (bytes <= ram + swap)
        return 0;
    const double gib = 1024.0 * 1024 * 1024;
    snprintf(err, errlen,
             "%s of %.1f GiB is more than this machine could ever use: it has %.1f GiB of RAM "
             "and %.1f GiB of swap",
             flag, (double)bytes / gib, (double)ram / gib, (double)swap / gib);
    return -ERANGE;
}
