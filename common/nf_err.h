/* nf_err.h - NanoFlow's error codes and nf_strerror().
 *
 * Functions return 0 on success or a negative code: either a negated errno (-ENOMEM, -EIO, ...)
 * or one of NanoFlow's own codes below, which sit far above the errno range. One X-macro
 * generates both the enum and the message table, so they cannot drift apart. */
#ifndef NF_ERR_H
#define NF_ERR_H

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

#endif
