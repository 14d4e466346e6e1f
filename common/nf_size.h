/* nf_size.h - parsing of byte sizes such as "512M" or "1GiB", shared by nanoflowctl and the
 * daemons so every program accepts the same spellings. */
#ifndef NF_SIZE_H
#define NF_SIZE_H

#include <stdint.h>

/* Parses s: a non-negative number with an optional K, M, G or T suffix (powers of 1024), an
 * optional "i" after the suffix and an optional trailing "B"/"b" ("1G", "1.5GiB", "4096B").
 * Returns 0 with *out set, or -EINVAL (nothing written) for anything else, including values of
 * 1.8e19 bytes or more. */
int nf_parse_size(const char *s, uint64_t *out);

#endif
