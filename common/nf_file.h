/* nf_file.h - reading a whole (small) file: prompts, calibration texts, logs. */
#ifndef NF_FILE_H
#define NF_FILE_H

#include <stddef.h>

/* Reads the whole file at path into a NUL-terminated buffer the caller frees, and its length
 * (without the NUL) into *len. Returns NULL with errno set (fopen's, EIO or ENOMEM). */
char *nf_read_file(const char *path, size_t *len);

#endif
