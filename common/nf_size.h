/* nf_size.h - parsing of byte sizes such as "512M" or "1GiB", shared by nanoflowctl and the
 * daemons so every program accepts the same spellings. */
#ifndef NF_SIZE_H
#define NF_SIZE_H

#include <stddef.h>
#include <stdint.h>

/* Parses s: a non-negative number with an optional K, M, G or T suffix (powers of 1024), an
 * optional "i" after the suffix and an optional trailing "B"/"b" ("1G", "1.5GiB", "4096B").
 * Returns 0 with *out set, or -EINVAL (nothing written) for anything else, including values of
 * 1.8e19 bytes or more. */
int nf_parse_size(const char *s, uint64_t *out);

/* Checks a RAM budget given with flag (e.g. "--ram") against the machine's physical RAM plus swap
 * (sysinfo): a budget the machine can never provide is a typo, not a wish. Returns 0 when it fits
 * (or the machine's figure is unknown), else -ERANGE with err set to one line naming the machine's
 * RAM and swap. */
int nf_ram_check(const char *flag, uint64_t bytes, char *err, size_t errlen);

#endif
