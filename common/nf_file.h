/* nf_file.h - reading a whole (small) file: prompts, calibration texts, logs; building paths. */
#ifndef NF_FILE_H
#define NF_FILE_H

#include <stdbool.h>
#include <stddef.h>

/* Reads the whole file at path into a NUL-terminated buffer the caller frees, and its length
 * (without the NUL) into *len. Returns NULL with errno set (fopen's, EIO or ENOMEM). */
char *nf_read_file(const char *path, size_t *len);

/* snprintf for paths: formats into out (len bytes) and returns false when the result was cut
 * short (the caller must then not use it). */
bool nf_pathf(char *out, size_t len, const char *fmt, ...) __attribute__((format(printf, 3, 4)));

#endif
