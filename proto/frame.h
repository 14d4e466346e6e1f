/* frame.h - length-prefixed control frames: u32 little-endian length, then one packed Envelope.
 *
 * Wire format of one frame:
 *   1. length: u32, little-endian, the number of payload bytes that follow (0 allowed);
 *   2. payload: a protobuf-encoded nanoflow.Envelope of exactly `length` bytes.
 * A length above the connection's maximum (NF_FRAME_MAX_DEFAULT unless configured) is refused
 * before any payload is buffered, so a hostile or confused peer cannot make us allocate much.
 *
 * The decoder is incremental: feed it bytes in whatever chunks the socket delivers, then pull
 * whole messages until it says it needs more. Each connection owns its own decoder, so an error
 * on one connection never disturbs another. */
#ifndef NF_FRAME_H
#define NF_FRAME_H

#include <stddef.h>
#include <stdint.h>

#include "nanoflow.pb-c.h"

#define NF_FRAME_HDR         4u
#define NF_FRAME_MAX_DEFAULT (1u << 20) /* 1 MiB: a Generate with a long prompt fits easily */

/* Protocol version carried in Hello; a peer with another major version is refused. */
#define NF_PROTO_MAJOR 1
#define NF_PROTO_MINOR 0

typedef Nanoflow__Envelope nf_envelope;

struct nf_frame_dec {
    uint8_t *buf; /* bytes received and not yet consumed: buf[pos, len) */
    size_t pos, len, cap;
    uint32_t max_frame; /* largest accepted payload length */
    int err;            /* sticky: once a frame is bad the stream is out of sync */
};

/* Initializes an empty decoder accepting payloads of at most max_frame bytes (0 means
 * NF_FRAME_MAX_DEFAULT). Returns 0. Pair with nf_frame_dec_free(). */
int nf_frame_dec_init(struct nf_frame_dec *d, uint32_t max_frame);
void nf_frame_dec_free(struct nf_frame_dec *d);

/* Appends n received bytes (copied). Returns 0, -ENOMEM, or the decoder's sticky error.
 * Call nf_frame_dec_next() until it returns 0 after every feed: the buffer then never holds
 * more than one partial frame plus the last chunk. */
int nf_frame_dec_feed(struct nf_frame_dec *d, const void *data, size_t n);

/* Takes the next whole message. Returns 1 and sets *out (free it with nf_envelope_free()),
 * 0 when more bytes are needed, or a negative code that stays set for this decoder:
 * -EMSGSIZE when the declared length exceeds the maximum, NF_EPROTO when the payload is not a
 * valid Envelope. After an error the caller should report it to the peer and close. */
int nf_frame_dec_next(struct nf_frame_dec *d, nf_envelope **out);

/* Number of buffered bytes not yet returned as messages (a partial frame). */
size_t nf_frame_dec_pending(const struct nf_frame_dec *d);

/* Size of env's frame (header + payload) in bytes. */
size_t nf_frame_size(const nf_envelope *env);

/* Packs env as one frame into buf (cap bytes) and sets *len to the frame size. Returns 0,
 * -EMSGSIZE when the payload exceeds max_frame (0: NF_FRAME_MAX_DEFAULT), or -ENOBUFS when
 * cap is too small (nothing useful is written then). */
int nf_frame_encode(const nf_envelope *env, uint32_t max_frame, void *buf, size_t cap, size_t *len);

/* Frees a message returned by nf_frame_dec_next(); NULL is accepted. */
void nf_envelope_free(nf_envelope *env);

#endif
