/* fuzz_frame.c - libFuzzer target: the control-frame decoder on arbitrary byte streams.
 *
 * The first input byte picks a chunk-size pattern so that frame boundaries fall anywhere.
 * Besides crashes (ASan/UBSan), it traps on broken contracts: next() returns only 1, 0,
 * -EMSGSIZE or NF_EPROTO; errors are sticky; every decoded message re-encodes to a frame that
 * decodes to the same bytes. */
#include <errno.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "frame.h"
#include "nf_err.h"

#define CHECK(x)              \
    do {                      \
        if (!(x))             \
            __builtin_trap(); \
    } while (0)

#define FUZZ_MAX_FRAME 4096u

static void round_trip(const nf_envelope *e)
{
    /* The re-encoding can be longer than the input frame (protobuf-c packs repeated scalars
     * that arrived unpacked), so it gets the default limit and a buffer of its own size. */
    size_t cap = nf_frame_size(e), len = 0, len2 = 0;
    uint8_t *buf = malloc(cap), *buf2 = malloc(cap);
    CHECK(buf && buf2);
    CHECK(nf_frame_encode(e, 0, buf, cap, &len) == 0 && len == cap);
    struct nf_frame_dec d;
    nf_frame_dec_init(&d, 0);
    CHECK(nf_frame_dec_feed(&d, buf, len) == 0);
    nf_envelope *e2 = NULL;
    CHECK(nf_frame_dec_next(&d, &e2) == 1);
    CHECK(nf_frame_encode(e2, 0, buf2, cap, &len2) == 0);
    CHECK(len == len2 && memcmp(buf, buf2, len) == 0);
    nf_envelope_free(e2);
    CHECK(nf_frame_dec_next(&d, &e2) == 0 && nf_frame_dec_pending(&d) == 0);
    nf_frame_dec_free(&d);
    free(buf);
    free(buf2);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1)
        return 0;
    unsigned pattern = data[0];
    data++;
    size--;
    struct nf_frame_dec d;
    nf_frame_dec_init(&d, FUZZ_MAX_FRAME);
    size_t off = 0;
    int err = 0;
    unsigned x = pattern;
    while (off < size) {
        x = x * 1103515245u + 12345u;
        size_t chunk = pattern & 1 ? size - off : 1 + (x >> 16) % 64;
        if (chunk > size - off)
            chunk = size - off;
        int rc = nf_frame_dec_feed(&d, data + off, chunk);
        CHECK(rc == 0 || (err && rc == err));
        off += chunk;
        nf_envelope *e = NULL;
        while ((rc = nf_frame_dec_next(&d, &e)) == 1) {
            CHECK(e != NULL && !err);
            round_trip(e);
            nf_envelope_free(e);
        }
        CHECK(e == NULL);
        CHECK(rc == 0 || rc == -EMSGSIZE || rc == NF_EPROTO);
        CHECK(!err || rc == err);
        if (rc < 0)
            err = rc;
        if (!err)
            CHECK(nf_frame_dec_pending(&d) < NF_FRAME_HDR + FUZZ_MAX_FRAME);
    }
    nf_frame_dec_free(&d);
    return 0;
}
