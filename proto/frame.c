/* frame.c - incremental decoder and encoder for length-prefixed control frames. */
#include "frame.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "nf_err.h"

int nf_frame_dec_init(struct nf_frame_dec *d, uint32_t max_frame)
{
    memset(d, 0, sizeof(*d));
    d->max_frame = max_frame ? max_frame : NF_FRAME_MAX_DEFAULT;
    return 0;
}

void nf_frame_dec_free(struct nf_frame_dec *d)
{
    free(d->buf);
    memset(d, 0, sizeof(*d));
}

size_t nf_frame_dec_pending(const struct nf_frame_dec *d)
{
    return d->len - d->pos;
}

int nf_frame_dec_feed(struct nf_frame_dec *d, const void *data, size_t n)
{
    if (d->err)
        return d->err;
    if (n == 0)
        return 0;
    /* Slide the unconsumed tail to the front first, so the buffer only grows for real data. */
    if (d->pos > 0) {
        memmove(d->buf, d->buf + d->pos, d->len - d->pos);
        d->len -= d->pos;
        d->pos = 0;
    }
    if (n > SIZE_MAX - d->len)
        return -ENOMEM;
    if (d->len + n > d->cap) {
        size_t cap = d->cap ? d->cap : 4096;
        while (cap < d->len + n)
            cap = cap > SIZE_MAX / 2 ? d->len + n : cap * 2;
        uint8_t *nb = realloc(d->buf, cap);
        if (!nb)
            return -ENOMEM;
        d->buf = nb;
        d->cap = cap;
    }
    memcpy(d->buf + d->len, data, n);
    d->len += n;
    return 0;
}

static uint32_t get_le32(const uint8_t *p)
{
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

static void put_le32(uint8_t *p, uint32_t v)
{
    p[0] = (uint8_t)v;
    p[1] = (uint8_t)(v >> 8);
    p[2] = (uint8_t)(v >> 16);
    p[3] = (uint8_t)(v >> 24);
}

/* protobuf-c keeps unknown fields for forward compatibility (a newer minor version may add
 * some), but it also keeps one with field number 0 when the tag is an overlong varint, which
 * the protobuf wire format forbids and which protobuf-c itself refuses once re-encoded in short
 * form. Refusing it here keeps "what we accept, we can forward" true. Walks every sub-message
 * present; returns 0 or NF_EPROTO. */
static int check_unknown(const ProtobufCMessage *m, int depth)
{
    if (depth > 8)
        return NF_EPROTO; /* our schema nests 3 deep */
    for (unsigned i = 0; i < m->n_unknown_fields; i++)
        if (m->unknown_fields[i].tag == 0)
            return NF_EPROTO;
    const ProtobufCMessageDescriptor *desc = m->descriptor;
    for (unsigned i = 0; i < desc->n_fields; i++) {
        const ProtobufCFieldDescriptor *f = &desc->fields[i];
        if (f->type != PROTOBUF_C_TYPE_MESSAGE)
            continue;
        const char *base = (const char *)m;
        if (f->label == PROTOBUF_C_LABEL_REPEATED) {
            size_t n = *(const size_t *)(base + f->quantifier_offset);
            ProtobufCMessage *const *arr = *(ProtobufCMessage *const *const *)(base + f->offset);
            for (size_t j = 0; j < n; j++)
                if (arr[j] && check_unknown(arr[j], depth + 1) < 0)
                    return NF_EPROTO;
            continue;
        }
        /* A oneof member is present only when the case word names it. */
        if ((f->flags & PROTOBUF_C_FIELD_FLAG_ONEOF) &&
            *(const uint32_t *)(base + f->quantifier_offset) != f->id)
            continue;
        const ProtobufCMessage *sub = *(ProtobufCMessage *const *)(base + f->offset);
        if (sub && check_unknown(sub, depth + 1) < 0)
            return NF_EPROTO;
    }
    return 0;
}

int nf_frame_dec_next(struct nf_frame_dec *d, nf_envelope **out)
{
    *out = NULL;
    if (d->err)
        return d->err;
    size_t avail = d->len - d->pos;
    if (avail < NF_FRAME_HDR)
        return 0;
    uint32_t plen = get_le32(d->buf + d->pos);
    /* Checked on the header alone: an oversize frame is refused before its payload arrives. */
    if (plen > d->max_frame)
        return d->err = -EMSGSIZE;
    if (avail - NF_FRAME_HDR < plen)
        return 0;
    nf_envelope *env = nanoflow__envelope__unpack(NULL, plen, d->buf + d->pos + NF_FRAME_HDR);
    if (!env)
        return d->err = NF_EPROTO;
    if (check_unknown(&env->base, 0) < 0) {
        nanoflow__envelope__free_unpacked(env, NULL);
        return d->err = NF_EPROTO;
    }
    d->pos += NF_FRAME_HDR + plen;
    if (d->pos == d->len)
        d->pos = d->len = 0;
    *out = env;
    return 1;
}

size_t nf_frame_size(const nf_envelope *env)
{
    return NF_FRAME_HDR + nanoflow__envelope__get_packed_size(env);
}

int nf_frame_encode(const nf_envelope *env, uint32_t max_frame, void *buf, size_t cap, size_t *len)
{
    size_t plen = nanoflow__envelope__get_packed_size(env);
    if (!max_frame)
        max_frame = NF_FRAME_MAX_DEFAULT;
    *len = 0;
    if (plen > max_frame)
        return -EMSGSIZE;
    if (cap < NF_FRAME_HDR || cap - NF_FRAME_HDR < plen)
        return -ENOBUFS;
    uint8_t *p = buf;
    put_le32(p, (uint32_t)plen);
    size_t packed = nanoflow__envelope__pack(env, p + NF_FRAME_HDR);
    if (packed != plen)
        return NF_EPROTO; /* cannot happen with a well-formed message; never send half a frame */
    *len = NF_FRAME_HDR + plen;
    return 0;
}

void nf_envelope_free(nf_envelope *env)
{
    if (env)
        nanoflow__envelope__free_unpacked(env, NULL);
}
