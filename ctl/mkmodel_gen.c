/* mkmodel_gen.c - parallel generation and quantization of a model's weights, written by offset.
 *
 * The tensors are cut into chunks of whole rows (about NF_MK_CHUNK elements). Worker threads take
 * the next chunk under a mutex, fill it from a counter-based generator, quantize it and pwrite it
 * at its offset, so memory stays at two chunk buffers per thread whatever the model size and the
 * bytes do not depend on which thread did what. */
#include <errno.h>
#include <math.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "mkmodel.h"
#include "nf_err.h"
#include "nf_time.h"

/* Elements per chunk: 4 MiB of floats, small enough for the cache-friendly quantizers, large
 * enough that pwrite calls stay few. */
#define NF_MK_CHUNK (1 << 20)

/* SplitMix64's finalizer: a bijective 64-bit mix that passes BigCrush as a counter-based PRNG. */
static inline uint64_t mix64(uint64_t z)
{
    z ^= z >> 30;
    z *= 0xbf58476d1ce4e5b9ull;
    z ^= z >> 27;
    z *= 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

/* Per-tensor stream key: the seed and the tensor name (FNV-1a) mixed together. */
static uint64_t tensor_key(uint64_t seed, const char *name)
{
    uint64_t h = 0xcbf29ce484222325ull;
    for (const unsigned char *p = (const unsigned char *)name; *p; p++)
        h = (h ^ *p) * 0x100000001b3ull;
    return mix64(mix64(seed) ^ h);
}

#define GOLDEN 0x9e3779b97f4a7c15ull

/* Fills out[0..n) with elements first..first+n of a RANDOM tensor: element e is the low (e even)
 * or high (e odd) 32 bits of mix64(key + (e / 2 + 1) * GOLDEN), as a signed integer scaled to a
 * uniform value in [-a, a) with a = sqrt(3) * NF_MK_STD (so the standard deviation is NF_MK_STD).
 */
static void fill_random(float *out, uint64_t key, uint64_t first, size_t n)
{
    const float scale = 1.7320508f * NF_MK_STD / 2147483648.0f;
    size_t i = 0;
    uint64_t e = first;
    if (n && (e & 1)) {
        out[i++] = (float)(int32_t)(mix64(key + (e / 2 + 1) * GOLDEN) >> 32) * scale;
        e++;
    }
    for (; i + 2 <= n; i += 2, e += 2) {
        uint64_t h = mix64(key + (e / 2 + 1) * GOLDEN);
        out[i] = (float)(int32_t)(uint32_t)h * scale;
        out[i + 1] = (float)(int32_t)(h >> 32) * scale;
    }
    if (i < n)
        out[i] = (float)(int32_t)(uint32_t)mix64(key + (e / 2 + 1) * GOLDEN) * scale;
}

/* Whether --random-blocks writes tensor t's blocks straight from the generator. */
static bool random_blocks(const struct nf_mk_gen *g, const struct nf_mk_tensor *t)
{
    return g->random_blocks && t->fill == NF_MK_RANDOM &&
           (t->type == NF_TYPE_MXFP4 || t->type == NF_TYPE_Q8_0 || t->type == NF_TYPE_Q4_0);
}

/* Fills blocks first..first+nb of a RANDOM tensor of type `type` (mxfp4, q8_0 or q4_0) into out
 * without any float work: block b's quants are the bytes of mix64(key + (b * w + j + 1) *
 * GOLDEN) for its w words j (2 for the 16 bytes of mxfp4 and q4_0, 4 for q8_0's 32), and its
 * scale is fixed so that the values spread about as RANDOM's uniform noise of [-a, a] does:
 * q8_0 d = a / 127 (quants in [-127, 127]: a byte of -128 becomes -127, as quantizers never
 * write -128), q4_0 d = a / 8, mxfp4 the exponent the reference quantizer gives a block whose
 * largest value is a (never 0xFF). Valid blocks by construction, at the generator's speed. */
static void fill_blocks(void *out, enum nf_type type, uint64_t key, uint64_t first, size_t nb)
{
    const float a = 1.7320508f * NF_MK_STD;
    const uint8_t e = (uint8_t)(floorf(log2f(a)) - 2 + 127);
    const nf_fp16_t d = nf_fp32_to_fp16(type == NF_TYPE_Q4_0 ? a / 8 : a / 127);
    for (size_t i = 0; i < nb; i++) {
        uint8_t *qs;
        size_t nq;
        if (type == NF_TYPE_MXFP4) {
            nf_block_mxfp4 *y = (nf_block_mxfp4 *)out + i;
            y->e = e;
            qs = y->qs, nq = sizeof(y->qs);
        } else if (type == NF_TYPE_Q4_0) {
            nf_block_q4_0 *y = (nf_block_q4_0 *)out + i;
            y->d = d;
            qs = y->qs, nq = sizeof(y->qs);
        } else {
            NF_ASSERT(type == NF_TYPE_Q8_0);
            nf_block_q8_0 *y = (nf_block_q8_0 *)out + i;
            y->d = d;
            qs = (uint8_t *)y->qs, nq = sizeof(y->qs);
        }
        const uint64_t words = nq / 8, b = first + i;
        for (uint64_t j = 0; j < words; j++) {
            uint64_t w = mix64(key + (b * words + j + 1) * GOLDEN);
            memcpy(qs + 8 * j, &w, sizeof(w));
        }
        if (type == NF_TYPE_Q8_0)
            for (size_t j = 0; j < nq; j++)
                if (qs[j] == 0x80) /* -128 */
                    qs[j] = 0x81;  /* -127 */
    }
}

struct gen_state {
    const struct nf_mk_tensor *t;
    size_t n;
    const struct nf_mk_gen *g;
    int fd;
    size_t buf_elems; /* capacity of each worker's float buffer */

    pthread_mutex_t lock; /* guards the cursor, err and running */
    pthread_cond_t done;
    size_t cur_tensor;
    int64_t cur_row;
    int err;
    int running;

    _Atomic uint64_t written;
};

static bool tensor_wanted(const struct gen_state *s, size_t i)
{
    return !(s->g->zero && s->t[i].fill == NF_MK_RANDOM);
}

static int64_t tensor_rows(const struct nf_mk_tensor *t)
{
    return t->ne[1] * t->ne[2] * t->ne[3];
}

static int64_t rows_per_chunk(const struct nf_mk_tensor *t)
{
    int64_t r = NF_MK_CHUNK / t->ne[0];
    return r < 1 ? 1 : r;
}

/* Takes the next chunk: 1 and fills *ti, *row, *nrows; 0 when the work is done or failed. */
static int next_chunk(struct gen_state *s, size_t *ti, int64_t *row, int64_t *nrows)
{
    pthread_mutex_lock(&s->lock);
    int got = 0;
    while (!s->err && s->cur_tensor < s->n) {
        const struct nf_mk_tensor *t = &s->t[s->cur_tensor];
        if (!tensor_wanted(s, s->cur_tensor) || s->cur_row >= tensor_rows(t)) {
            s->cur_tensor++;
            s->cur_row = 0;
            continue;
        }
        int64_t left = tensor_rows(t) - s->cur_row;
        int64_t r = rows_per_chunk(t);
        *ti = s->cur_tensor;
        *row = s->cur_row;
        *nrows = left < r ? left : r;
        s->cur_row += *nrows;
        got = 1;
        break;
    }
    pthread_mutex_unlock(&s->lock);
    return got;
}

static int pwrite_all(int fd, const void *buf, size_t len, uint64_t off)
{
    const uint8_t *p = buf;
    while (len) {
        ssize_t n = pwrite(fd, p, len, (off_t)off);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            return n < 0 ? -errno : -EIO;
        p += n;
        len -= (size_t)n;
        off += (uint64_t)n;
    }
    return 0;
}

/* A MoE router: blk.N.ffn_gate_inp.weight (not a shared expert's gate, _shexp). */
static bool is_router(const struct nf_mk_tensor *t)
{
    const char *suf = ".ffn_gate_inp.weight";
    size_t n = strlen(t->name), k = strlen(suf);
    return n > k && !strcmp(t->name + n - k, suf);
}

/* Scales rows [row, row + nrows) of router t (in buf) by exp(-skew * e / (rows - 1)) for row e:
 * larger logits for the low experts, which then win the top-k more often (--router-skew). */
static void skew_rows(float *buf, const struct nf_mk_tensor *t, int64_t row, int64_t nrows,
                      float skew)
{
    int64_t rows = 1;
    for (uint32_t d = 1; d < t->n_dims; d++)
        rows *= t->ne[d];
    for (int64_t r = 0; r < nrows; r++) {
        int64_t e = (row + r) % rows; /* the expert (one router per tensor) */
        float f = rows > 1 ? expf(-skew * (float)e / (float)(rows - 1)) : 1.0f;
        for (int64_t i = 0; i < t->ne[0]; i++)
            buf[r * t->ne[0] + i] *= f;
    }
}

/* Generates, converts and writes rows [row, row + nrows) of tensor t. */
static int do_chunk(struct gen_state *s, const struct nf_mk_tensor *t, int64_t row, int64_t nrows,
                    float *fbuf, void *qbuf)
{
    size_t n = (size_t)(nrows * t->ne[0]);
    uint64_t first = (uint64_t)row * (uint64_t)t->ne[0];
    size_t row_bytes = nf_row_size(t->type, t->ne[0]);
    size_t len = row_bytes * (size_t)nrows;
    int rc;
    if (t->fill == NF_MK_ZEROS) {
        /* All-zero bytes decode to 0.0 in every type (zero scales, zero quants); they are written
         * so the blocks exist on disk, unlike --zero's holes. len <= the n floats of qbuf. */
        memset(qbuf, 0, len);
        if (!(rc = pwrite_all(s->fd, qbuf, len, t->offset + (uint64_t)row * row_bytes)))
            atomic_fetch_add_explicit(&s->written, len, memory_order_relaxed);
        return rc;
    }
    if (random_blocks(s->g, t)) {
        /* Whole rows of whole blocks: element `first` starts a block. */
        fill_blocks(qbuf, t->type, tensor_key(s->g->seed, t->name), first / NF_QK4_0, n / NF_QK4_0);
        if (!(rc = pwrite_all(s->fd, qbuf, len, t->offset + (uint64_t)row * row_bytes)))
            atomic_fetch_add_explicit(&s->written, len, memory_order_relaxed);
        return rc;
    }
    if (t->fill == NF_MK_ONES) {
        for (size_t i = 0; i < n; i++)
            fbuf[i] = 1.0f;
    } else if (t->fill == NF_MK_VALUES) {
        memcpy(fbuf, t->values + first, sizeof(float) * n);
    } else {
        fill_random(fbuf, tensor_key(s->g->seed, t->name), first, n);
        if (t->fill == NF_MK_NEAR_ONE)
            for (size_t i = 0; i < n; i++)
                fbuf[i] = 1.0f + NF_MK_NEAR_ONE_SCALE * fbuf[i];
        if (t->fill == NF_MK_WIDE)
            for (size_t i = 0; i < n; i++)
                fbuf[i] = NF_MK_WIDE_SCALE * fbuf[i];
        else if (s->g->router_skew > 0 && is_router(t))
            skew_rows(fbuf, t, row, nrows, s->g->router_skew);
    }
    const void *out = fbuf;
    if (t->type != NF_TYPE_F32) {
        const struct nf_type_traits *tr = nf_type_traits(t->type);
        if (!tr || !tr->from_float)
            return NF_EBADTYPE;
        tr->from_float(fbuf, qbuf, (int64_t)n);
        out = qbuf;
    }
    rc = pwrite_all(s->fd, out, len, t->offset + (uint64_t)row * row_bytes);
    if (!rc)
        atomic_fetch_add_explicit(&s->written, len, memory_order_relaxed);
    return rc;
}

static void *worker(void *arg)
{
    struct gen_state *s = arg;
    /* The largest chunk is buf_elems floats; a quantized chunk is never larger than its floats. */
    float *fbuf = malloc(s->buf_elems * sizeof(float));
    void *qbuf = malloc(s->buf_elems * sizeof(float));
    int rc = (fbuf && qbuf) ? 0 : -ENOMEM;
    size_t ti;
    int64_t row, nrows;
    while (!rc && next_chunk(s, &ti, &row, &nrows))
        rc = do_chunk(s, &s->t[ti], row, nrows, fbuf, qbuf);
    free(fbuf);
    free(qbuf);
    pthread_mutex_lock(&s->lock);
    if (rc && !s->err)
        s->err = rc;
    s->running--;
    pthread_cond_signal(&s->done);
    pthread_mutex_unlock(&s->lock);
    return NULL;
}

static void print_progress(uint64_t done, uint64_t total, double secs)
{
    double gib = 1024.0 * 1024 * 1024;
    double rate = secs > 0 ? done / secs / (1024.0 * 1024) : 0;
    fprintf(stderr, "\rmkmodel: %.2f / %.2f GiB written (%3.0f%%), %.0f MiB/s   ", done / gib,
            total / gib, total ? 100.0 * done / total : 100.0, rate);
}

int nf_mk_write_data(int fd, const struct nf_mk_tensor *t, size_t n, const struct nf_mk_gen *g,
                     uint64_t *written)
{
    struct gen_state s;
    memset(&s, 0, sizeof(s));
    s.t = t;
    s.n = n;
    s.g = g;
    s.fd = fd;
    uint64_t total = 0;
    s.buf_elems = 1;
    for (size_t i = 0; i < n; i++) {
        if (!tensor_wanted(&s, i))
            continue;
        size_t e = (size_t)(rows_per_chunk(&t[i]) * t[i].ne[0]);
        if (e > s.buf_elems)
            s.buf_elems = e;
        total += t[i].size;
    }
    atomic_init(&s.written, 0);
    pthread_mutex_init(&s.lock, NULL);
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&s.done, &ca);
    pthread_condattr_destroy(&ca);

    int nt = g->threads < 1 ? 1 : g->threads;
    pthread_t *tids = calloc((size_t)nt, sizeof(*tids));
    if (!tids)
        return -ENOMEM;
    int started = 0;
    for (; started < nt; started++) {
        pthread_mutex_lock(&s.lock);
        s.running++;
        pthread_mutex_unlock(&s.lock);
        if (pthread_create(&tids[started], NULL, worker, &s) != 0) {
            pthread_mutex_lock(&s.lock);
            s.running--;
            if (started == 0)
                s.err = -EAGAIN;
            pthread_mutex_unlock(&s.lock);
            break;
        }
    }

    /* Wait for the workers, waking every half second to redraw the progress line. */
    double t0 = nf_now_s();
    pthread_mutex_lock(&s.lock);
    while (s.running > 0) {
        struct timespec ts = nf_deadline_ms(500);
        pthread_cond_timedwait(&s.done, &s.lock, &ts);
        if (g->progress && s.running > 0)
            print_progress(atomic_load(&s.written), total, nf_now_s() - t0);
    }
    pthread_mutex_unlock(&s.lock);
    for (int i = 0; i < started; i++)
        pthread_join(tids[i], NULL);
    free(tids);
    if (g->progress) {
        print_progress(atomic_load(&s.written), total, nf_now_s() - t0);
        fputc('\n', stderr);
    }
    pthread_cond_destroy(&s.done);
    pthread_mutex_destroy(&s.lock);
    *written = atomic_load(&s.written);
    return s.err;
}
