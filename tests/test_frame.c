/* test_frame.c - control frames: every message type round-trips through chunked decoding;
 * oversize, garbage and truncated frames are handled without disturbing other decoders. */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "frame.h"
#include "nf_err.h"

#define N_TYPES 13

/* Fills env (and the sub-messages in the caller's storage) with message type k. */
struct msgs {
    Nanoflow__Hello hello;
    Nanoflow__LoadModel load;
    Nanoflow__LoadModelReply load_reply;
    Nanoflow__SamplingParams sp;
    Nanoflow__Generate gen;
    Nanoflow__TopLogit tl[3];
    Nanoflow__TopLogit *tlp[3];
    Nanoflow__TokenEvent tok;
    Nanoflow__Timings tim;
    Nanoflow__GenerateDone done;
    int32_t prompt_ids[4], gen_ids[3];
    Nanoflow__Cancel cancel;
    Nanoflow__StatsRequest stats_req;
    Nanoflow__StageCounter ctr[2];
    Nanoflow__StageCounter *ctrp[2];
    Nanoflow__StageStats stage;
    Nanoflow__StageStats *stagep[1];
    double q[2];
    Nanoflow__Stats stats;
    Nanoflow__HealthRequest health_req;
    Nanoflow__Health health;
    Nanoflow__Shutdown shutdown;
    Nanoflow__Error error;
};

static void make_msg(struct msgs *m, Nanoflow__Envelope *env, int k)
{
    nanoflow__envelope__init(env);
    env->request_id = 1000 + (uint64_t)k;
    switch (k) {
    case 0:
        nanoflow__hello__init(&m->hello);
        m->hello.protocol_major = NF_PROTO_MAJOR;
        m->hello.protocol_minor = NF_PROTO_MINOR;
        m->hello.role = "ctl";
        m->hello.version = "0.1.0";
        m->hello.pid = 4242;
        env->msg_case = NANOFLOW__ENVELOPE__MSG_HELLO;
        env->hello = &m->hello;
        break;
    case 1:
        nanoflow__load_model__init(&m->load);
        m->load.path = "/models/x.nft";
        m->load.ram_bytes = 1ull << 30;
        m->load.threads = 2;
        m->load.sparsity = 0.5f;
        env->msg_case = NANOFLOW__ENVELOPE__MSG_LOAD_MODEL;
        env->load_model = &m->load;
        break;
    case 2:
        nanoflow__load_model_reply__init(&m->load_reply);
        m->load_reply.model_name = "stories260K";
        m->load_reply.n_vocab = 512;
        env->msg_case = NANOFLOW__ENVELOPE__MSG_LOAD_MODEL_REPLY;
        env->load_model_reply = &m->load_reply;
        break;
    case 3:
        nanoflow__sampling_params__init(&m->sp);
        m->sp.temp = 0.8f;
        m->sp.top_k = 40;
        m->sp.top_p = 0.95f;
        m->sp.min_p = 0.05f;
        m->sp.repeat_penalty = 1.1f;
        m->sp.seed = 0xdeadbeefcafeull;
        nanoflow__generate__init(&m->gen);
        m->gen.prompt.data = (uint8_t *)"Once upon a time\0\xff";
        m->gen.prompt.len = 18;
        m->gen.sampling = &m->sp;
        m->gen.n_predict = 64;
        m->gen.top_logits = 3;
        env->msg_case = NANOFLOW__ENVELOPE__MSG_GENERATE;
        env->generate = &m->gen;
        break;
    case 4:
        for (int i = 0; i < 3; i++) {
            nanoflow__top_logit__init(&m->tl[i]);
            m->tl[i].id = 10 * i;
            m->tl[i].logit = -1.5f * (float)i;
            m->tlp[i] = &m->tl[i];
        }
        nanoflow__token_event__init(&m->tok);
        m->tok.id = 31;
        m->tok.piece.data = (uint8_t *)"\xe2\x96";
        m->tok.piece.len = 2;
        m->tok.n_top_logits = 3;
        m->tok.top_logits = m->tlp;
        env->msg_case = NANOFLOW__ENVELOPE__MSG_TOKEN;
        env->token = &m->tok;
        break;
    case 5:
        nanoflow__timings__init(&m->tim);
        m->tim.prompt_tok_s = 123.5;
        m->tim.decode_tok_s = 45.25;
        nanoflow__generate_done__init(&m->done);
        for (int i = 0; i < 4; i++)
            m->prompt_ids[i] = i + 1;
        for (int i = 0; i < 3; i++)
            m->gen_ids[i] = 500 - i;
        m->done.n_prompt_ids = 4;
        m->done.prompt_ids = m->prompt_ids;
        m->done.n_gen_ids = 3;
        m->done.gen_ids = m->gen_ids;
        m->done.stop = "eog";
        m->done.seed = 7;
        m->done.timings = &m->tim;
        env->msg_case = NANOFLOW__ENVELOPE__MSG_GENERATE_DONE;
        env->generate_done = &m->done;
        break;
    case 6:
        nanoflow__cancel__init(&m->cancel);
        m->cancel.target_id = 77;
        env->msg_case = NANOFLOW__ENVELOPE__MSG_CANCEL;
        env->cancel = &m->cancel;
        break;
    case 7:
        nanoflow__stats_request__init(&m->stats_req);
        env->msg_case = NANOFLOW__ENVELOPE__MSG_STATS_REQUEST;
        env->stats_request = &m->stats_req;
        break;
    case 8:
        for (int i = 0; i < 2; i++) {
            nanoflow__stage_counter__init(&m->ctr[i]);
            m->ctr[i].name = i ? "reads" : "bytes_read";
            m->ctr[i].value = 1ull << (40 + i);
            m->ctrp[i] = &m->ctr[i];
        }
        nanoflow__stage_stats__init(&m->stage);
        m->stage.stage = "fetcher";
        m->stage.n_counters = 2;
        m->stage.counters = m->ctrp;
        m->q[0] = 80.0;
        m->q[1] = 900.5;
        m->stage.n_latency_quantiles_us = 2;
        m->stage.latency_quantiles_us = m->q;
        m->stagep[0] = &m->stage;
        nanoflow__stats__init(&m->stats);
        m->stats.n_stages = 1;
        m->stats.stages = m->stagep;
        m->stats.ram_budget = 1ull << 30;
        env->msg_case = NANOFLOW__ENVELOPE__MSG_STATS;
        env->stats = &m->stats;
        break;
    case 9:
        nanoflow__health_request__init(&m->health_req);
        env->msg_case = NANOFLOW__ENVELOPE__MSG_HEALTH_REQUEST;
        env->health_request = &m->health_req;
        break;
    case 10:
        nanoflow__health__init(&m->health);
        m->health.state = NANOFLOW__HEALTH__STATE__READY;
        m->health.role = "fetcher";
        m->health.uptime_s = 12.5;
        env->msg_case = NANOFLOW__ENVELOPE__MSG_HEALTH;
        env->health = &m->health;
        break;
    case 11:
        nanoflow__shutdown__init(&m->shutdown);
        env->msg_case = NANOFLOW__ENVELOPE__MSG_SHUTDOWN;
        env->shutdown = &m->shutdown;
        break;
    default:
        nanoflow__error__init(&m->error);
        m->error.code = NF_EPROTO;
        m->error.message = "protocol error: frame too large";
        env->msg_case = NANOFLOW__ENVELOPE__MSG_ERROR;
        env->error = &m->error;
        break;
    }
}

/* Payload bytes of env (packed), in a malloc'd buffer. */
static uint8_t *packed(const Nanoflow__Envelope *env, size_t *n)
{
    *n = nanoflow__envelope__get_packed_size(env);
    uint8_t *b = malloc(*n + 1);
    assert_non_null(b);
    assert_int_equal(nanoflow__envelope__pack(env, b), *n);
    return b;
}

/* Encodes every type (REPS times) into one stream, decodes it fed in random chunks and
 * checks each message comes back in order with identical content. */
static void test_round_trip_chunked(void **state)
{
    enum { REPS = 20 };
    static struct msgs m;
    size_t cap = 1 << 16, len = 0;
    uint8_t *stream = malloc(cap);
    assert_non_null(stream);
    for (int r = 0; r < REPS; r++) {
        for (int k = 0; k < N_TYPES; k++) {
            Nanoflow__Envelope env;
            make_msg(&m, &env, k);
            size_t fl = 0;
            assert_int_equal(nf_frame_encode(&env, 0, stream + len, cap - len, &fl), 0);
            assert_int_equal(fl, nf_frame_size(&env));
            len += fl;
        }
    }
    srand(12345);
    for (int pass = 0; pass < 5; pass++) {
        struct nf_frame_dec d;
        assert_int_equal(nf_frame_dec_init(&d, 0), 0);
        size_t off = 0;
        int got = 0;
        while (off < len) {
            size_t chunk = 1 + (size_t)rand() % (pass == 0 ? 3 : 200);
            if (chunk > len - off)
                chunk = len - off;
            assert_int_equal(nf_frame_dec_feed(&d, stream + off, chunk), 0);
            off += chunk;
            nf_envelope *e;
            int rc;
            while ((rc = nf_frame_dec_next(&d, &e)) == 1) {
                int k = got % N_TYPES;
                Nanoflow__Envelope want;
                make_msg(&m, &want, k);
                assert_int_equal(e->msg_case, want.msg_case);
                assert_int_equal(e->request_id, 1000 + (uint64_t)k);
                size_t n1, n2;
                uint8_t *a = packed(e, &n1), *b = packed(&want, &n2);
                assert_int_equal(n1, n2);
                assert_memory_equal(a, b, n1);
                free(a);
                free(b);
                nf_envelope_free(e);
                got++;
            }
            assert_int_equal(rc, 0);
        }
        assert_int_equal(got, REPS * N_TYPES);
        assert_int_equal(nf_frame_dec_pending(&d), 0);
        nf_frame_dec_free(&d);
    }
    free(stream);
}

/* Spot-checks decoded field values (not just bytes) for the richest messages. */
static void test_fields(void **state)
{
    static struct msgs m;
    uint8_t buf[512];
    Nanoflow__Envelope env;
    make_msg(&m, &env, 3);
    size_t fl;
    assert_int_equal(nf_frame_encode(&env, 0, buf, sizeof(buf), &fl), 0);
    assert_int_equal(buf[0] | buf[1] << 8 | buf[2] << 16 | buf[3] << 24, fl - 4);
    struct nf_frame_dec d;
    nf_frame_dec_init(&d, 0);
    assert_int_equal(nf_frame_dec_feed(&d, buf, fl), 0);
    nf_envelope *e;
    assert_int_equal(nf_frame_dec_next(&d, &e), 1);
    assert_int_equal(e->msg_case, NANOFLOW__ENVELOPE__MSG_GENERATE);
    assert_int_equal(e->generate->prompt.len, 18);
    assert_memory_equal(e->generate->prompt.data, "Once upon a time\0\xff", 18);
    assert_float_equal(e->generate->sampling->top_p, 0.95f, 0);
    assert_int_equal(e->generate->sampling->seed, 0xdeadbeefcafeull);
    assert_int_equal(e->generate->n_predict, 64);
    nf_envelope_free(e);
    assert_int_equal(nf_frame_dec_next(&d, &e), 0);
    assert_null(e);
    nf_frame_dec_free(&d);
}

static void put_len(uint8_t *p, uint32_t v)
{
    p[0] = (uint8_t)v;
    p[1] = (uint8_t)(v >> 8);
    p[2] = (uint8_t)(v >> 16);
    p[3] = (uint8_t)(v >> 24);
}

static void test_oversize(void **state)
{
    static struct msgs m;
    struct nf_frame_dec bad, good;
    assert_int_equal(nf_frame_dec_init(&bad, 1024), 0);
    assert_int_equal(nf_frame_dec_init(&good, 1024), 0);
    uint8_t hdr[4];
    put_len(hdr, 1025);
    /* Refused from the header alone, before any payload is buffered. */
    assert_int_equal(nf_frame_dec_feed(&bad, hdr, 4), 0);
    nf_envelope *e;
    assert_int_equal(nf_frame_dec_next(&bad, &e), -EMSGSIZE);
    assert_null(e);
    assert_int_equal(nf_frame_dec_next(&bad, &e), -EMSGSIZE); /* sticky */
    assert_int_equal(nf_frame_dec_feed(&bad, hdr, 4), -EMSGSIZE);
    put_len(hdr, UINT32_MAX);
    struct nf_frame_dec huge;
    nf_frame_dec_init(&huge, 0);
    nf_frame_dec_feed(&huge, hdr, 4);
    assert_int_equal(nf_frame_dec_next(&huge, &e), -EMSGSIZE);
    nf_frame_dec_free(&huge);

    /* Another connection's decoder is unaffected. */
    Nanoflow__Envelope env;
    make_msg(&m, &env, 0);
    uint8_t buf[256];
    size_t fl;
    assert_int_equal(nf_frame_encode(&env, 1024, buf, sizeof(buf), &fl), 0);
    assert_int_equal(nf_frame_dec_feed(&good, buf, fl), 0);
    assert_int_equal(nf_frame_dec_next(&good, &e), 1);
    assert_string_equal(e->hello->role, "ctl");
    nf_envelope_free(e);

    /* The encoder refuses too: over the frame limit, or a buffer too small. */
    Nanoflow__Envelope big;
    make_msg(&m, &big, 3);
    size_t plen = nf_frame_size(&big) - 4;
    assert_int_equal(nf_frame_encode(&big, (uint32_t)plen - 1, buf, sizeof(buf), &fl), -EMSGSIZE);
    assert_int_equal(nf_frame_encode(&big, (uint32_t)plen, buf, sizeof(buf), &fl), 0);
    assert_int_equal(nf_frame_encode(&big, 0, buf, plen + 3, &fl), -ENOBUFS);
    assert_int_equal(nf_frame_encode(&big, 0, buf, 2, &fl), -ENOBUFS);
    nf_frame_dec_free(&bad);
    nf_frame_dec_free(&good);
}

static void test_garbage(void **state)
{
    /* Field 1 with wire type 7 (no such type); a length-delimited field 2 claiming 16 bytes
     * with only 1 present; a varint that never ends; field number 0 behind an overlong tag
     * (which protobuf-c alone would keep as an unknown field), at the top level and inside a
     * Cancel sub-message. */
    static const uint8_t payloads[][11] = {
        {0x0f},
        {0x12, 0x10, 0x01},
        {0x08, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff},
        {0x80, 0x00, 0x00},
        {0x42, 0x03, 0x80, 0x00, 0x00},
    };
    static const size_t lens[] = {1, 3, 11, 3, 5};
    for (int i = 0; i < 5; i++) {
        struct nf_frame_dec d;
        nf_frame_dec_init(&d, 0);
        uint8_t buf[16];
        put_len(buf, (uint32_t)lens[i]);
        memcpy(buf + 4, payloads[i], lens[i]);
        assert_int_equal(nf_frame_dec_feed(&d, buf, 4 + lens[i]), 0);
        nf_envelope *e;
        assert_int_equal(nf_frame_dec_next(&d, &e), NF_EPROTO);
        assert_null(e);
        assert_int_equal(nf_frame_dec_feed(&d, buf, 1), NF_EPROTO);
        nf_frame_dec_free(&d);
    }
    /* An unknown field with a valid number (a newer minor version's addition) is kept. */
    static const uint8_t newer[] = {0x42, 0x03, 0xf8, 0x01 /* field 31, varint */, 0x05};
    struct nf_frame_dec d;
    nf_frame_dec_init(&d, 0);
    uint8_t buf[16];
    put_len(buf, 5);
    memcpy(buf + 4, newer, 5);
    assert_int_equal(nf_frame_dec_feed(&d, buf, 9), 0);
    nf_envelope *e;
    assert_int_equal(nf_frame_dec_next(&d, &e), 1);
    assert_int_equal(e->msg_case, NANOFLOW__ENVELOPE__MSG_CANCEL);
    assert_int_equal(e->cancel->base.n_unknown_fields, 1);
    nf_envelope_free(e);
    nf_frame_dec_free(&d);
}

static void test_truncated_and_empty(void **state)
{
    static struct msgs m;
    Nanoflow__Envelope env;
    make_msg(&m, &env, 8);
    uint8_t buf[512];
    size_t fl;
    assert_int_equal(nf_frame_encode(&env, 0, buf, sizeof(buf), &fl), 0);
    struct nf_frame_dec d;
    nf_frame_dec_init(&d, 0);
    nf_envelope *e;
    /* Header split in two, then all but the last payload byte: still waiting. */
    assert_int_equal(nf_frame_dec_feed(&d, buf, 2), 0);
    assert_int_equal(nf_frame_dec_next(&d, &e), 0);
    assert_int_equal(nf_frame_dec_feed(&d, buf + 2, fl - 3), 0);
    assert_int_equal(nf_frame_dec_next(&d, &e), 0);
    assert_int_equal(nf_frame_dec_pending(&d), fl - 1);
    assert_int_equal(nf_frame_dec_feed(&d, buf + fl - 1, 1), 0);
    assert_int_equal(nf_frame_dec_next(&d, &e), 1);
    assert_int_equal(e->stats->stages[0]->counters[1]->value, 1ull << 41);
    nf_envelope_free(e);

    /* A zero-length frame is a valid empty envelope (no message set). */
    uint8_t zero[4] = {0, 0, 0, 0};
    assert_int_equal(nf_frame_dec_feed(&d, zero, 4), 0);
    assert_int_equal(nf_frame_dec_next(&d, &e), 1);
    assert_int_equal(e->msg_case, NANOFLOW__ENVELOPE__MSG__NOT_SET);
    nf_envelope_free(e);
    assert_int_equal(nf_frame_dec_pending(&d), 0);
    nf_frame_dec_free(&d);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_round_trip_chunked),
        cmocka_unit_test(test_fields),
        cmocka_unit_test(test_oversize),
        cmocka_unit_test(test_garbage),
        cmocka_unit_test(test_truncated_and_empty),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
