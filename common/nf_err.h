/* nf_err.h - NanoFlow's error codes and nf_strerror().
 *
 * Functions return 0 on success or a negative code: either a negated errno (-ENOMEM, -EIO, ...)
 * or one of NanoFlow's own codes below, which sit far above the errno range. One X-macro
 * generates both the enum and the message table, so they cannot drift apart. */
#ifndef NF_ERR_H
#define NF_ERR_H

#include <stddef.h>

#define NF_ERRNO_MAP(XX)                              \
    XX(BADMAGIC, "bad magic number")                  \
    XX(BADVERSION, "unsupported format version")      \
    XX(TRUNCATED, "file is truncated")                \
    XX(CORRUPT, "file is corrupt")                    \
    XX(BADTYPE, "unknown or unsupported tensor type") \
    XX(OVERFLOW, "size or count overflows")           \
    XX(NOKEY, "metadata key not found")               \
    XX(KEYTYPE, "metadata key has the wrong type")    \
    XX(NOTENSOR, "tensor not found")                  \
    XX(SHAPE, "tensor has the wrong shape")           \
    XX(ARCH, "unsupported model architecture")        \
    XX(VOCAB, "unsupported or invalid vocabulary")    \
    XX(CHECKSUM, "checksum mismatch")                 \
    XX(USAGE, "invalid arguments")                    \
    XX(CTXFULL, "context window is full")             \
    XX(PROTO, "protocol error")

enum {
    NF_ERR_BASE_ = -100000,
#define XX(name, msg) NF_E##name,
    NF_ERRNO_MAP(XX)
#undef XX
        NF_ERR_END_
};

/* Returns a static message for err (a NanoFlow code or a negated errno); never NULL. */
const char *nf_strerror(int err);

/* Formats a message into err (errlen bytes, always terminated; nothing when err is NULL or errlen
 * is 0) and returns code, so a failure path reads `return nf_errf(err, errlen, -EIO, "...")`.
 * The message is one line: control characters (from a quoted name or string) become '?'. */
int nf_errf(char *err, size_t errlen, int code, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

/* As nf_errf, with "prefix: " before the message (a file or tensor name). */
int nf_errf_at(char *err, size_t errlen, int code, const char *prefix, const char *fmt, ...)
    __attribute__((format(printf, 5, 6)));

/* NF_ASSERT(cond): an invariant of NanoFlow's own state, checked in every build (never use it on
 * input: input is validated and refused with a message). A broken invariant prints the file,
 * line, function and condition to stderr and aborts, so it shows as a crash with a core instead
 * of a silent wrong answer. */
#define NF_ASSERT(cond)                                          \
    do {                                                         \
        if (__builtin_expect(!(cond), 0))                        \
            nf_assert_fail(#cond, __FILE__, __LINE__, __func__); \
    } while (0)

_Noreturn void nf_assert_fail(const char *cond, const char *file, int line, const char *func);

#endif
