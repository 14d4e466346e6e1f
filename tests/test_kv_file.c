/* test_kv_file.c - the KV cache on disk (common/kv_file.c): blocks written behind, released and
 * read back with the same bytes; the streaming engine with its KV in a file gives the logits of
 * the in-RAM cache bit for bit (stories260K, a quantized zoo model, a MoE model), with tiny
 * blocks so that nearly every position comes back from the file; deepseek2, gemma3 and gpt-oss
 * models from mkmodel; slots, batched steps and rollback; a bad path refused in one line; a
 * quantized cache (q8_0 K, q4_0 V) on disk against the same types in RAM. */
#include <dirent.h>
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include <cmocka.h>

#include "kv_file.h"
#include "kv_quant.h"
#include "model.h"
#include "nf_err.h"
#include "nft.h"
#include "stack.h"
#include "stream.h"

#define ENGINE_TEST_NAME "test_kv_file"
#include "engine_test.h"

#define N_PROMPT 40 /* two chunks of the default ubatch */
#define N_GEN    12
#define N_CTX    128

/* Rows (of one page each) of slot's K and V caches resident in memory (mincore). */
static int resident_rows(struct nf_kv_file *kf, int slot, int n_layer, int n_ctx, size_t row)
{
    int n = 0;
    for (int kind = 0; kind < 2; kind++) {
        uint8_t *base = kind ? nf_kv_file_v(kf, slot) : nf_kv_file_k(kf, slot);
        const size_t len = (size_t)n_layer * (size_t)n_ctx * row;
        unsigned char vec[4096];
        NF_ASSERT(len / 4096 <= sizeof(vec) && row == 4096);
        assert_int_equal(mincore(base, len, vec), 0);
        for (size_t i = 0; i < len / 4096; i++)
            n += vec[i] & 1;
    }
    return n;
}

/* The file layer alone: rows written through the cache's memory survive their release. */
static void test_blocks(void **state)
{
    (void)state;
    char path[600], err[512];
    snprintf(path, sizeof(path), "%s/kv-blocks", tmpdir);
    const int L = 3, C = 40, B = 4;
    const size_t row = 4096; /* a page per row: O_DIRECT, and every release is visible */
    struct nf_kv_file *kf;
    struct nf_kv_file_opts o = {.path = path,
                                .n_layer = L,
                                .n_ctx = C,
                                .n_slots = 2,
                                .block = B,
                                .row_k = row,
                                .row_v = row};
    if (nf_kv_file_open(&kf, &o, err, sizeof(err)) < 0)
        fail_msg("%s", err);
    const size_t nr = row / sizeof(nf_fp16_t);
    for (int slot = 0; slot < 2; slot++)
        for (int pos = 0; pos < 30; pos++)
            for (int il = 0; il < L; il++) {
                assert_int_equal(nf_kv_file_layer_load(kf, slot, il), 0);
                nf_fp16_t *k =
                    (nf_fp16_t *)nf_kv_file_k(kf, slot) + ((size_t)il * C + (size_t)pos) * nr;
                nf_fp16_t *v =
                    (nf_fp16_t *)nf_kv_file_v(kf, slot) + ((size_t)il * C + (size_t)pos) * nr;
                for (size_t i = 0; i < nr; i++) {
                    k[i] = (nf_fp16_t)(slot * 10000 + il * 1000 + pos + (int)i);
                    v[i] = (nf_fp16_t)(k[i] ^ 0x5555);
                }
                /* every earlier position reads back what was written */
                for (int p = 0; p < pos; p++) {
                    const nf_fp16_t *kp = k - (size_t)(pos - p) * nr;
                    assert_int_equal(kp[7], (nf_fp16_t)(slot * 10000 + il * 1000 + p + 7));
                }
                assert_int_equal(nf_kv_file_layer_store(kf, slot, il, pos + 1), 0);
            }
    /* Released blocks read as zeros until loaded again (so the loads above were real). */
    const nf_fp16_t *k0 = nf_kv_file_k(kf, 1);
    assert_int_equal(k0[7], 0);
    assert_int_equal(nf_kv_file_layer_load(kf, 1, 0), 0);
    assert_int_equal(k0[7], (nf_fp16_t)(10000 + 7));
    assert_int_equal(nf_kv_file_layer_store(kf, 1, 0, 30), 0);
    /* Rollback into a released block brings it back: position 9 of block [8, 12). Only that
     * block of each layer is resident then (the bound's newest block): not the later blocks of
     * the file, nor the rows the sequence held resident past them (a prefix reused by the next
     * chat turn rolls back hundreds of positions of every layer at once). */
    assert_int_equal(nf_kv_file_rollback(kf, 0, 9), 0);
    const nf_fp16_t *k8 = (const nf_fp16_t *)nf_kv_file_k(kf, 0) + 8 * nr;
    assert_int_equal(k8[7], (nf_fp16_t)(8 + 7));
    assert_int_equal(resident_rows(kf, 0, L, C, row), 2 * L * B);
    /* The rows written after it come back from the file after their release. */
    for (int pos = 9; pos < 30; pos++)
        for (int il = 0; il < L; il++) {
            assert_int_equal(nf_kv_file_layer_load(kf, 0, il), 0);
            nf_fp16_t *k = (nf_fp16_t *)nf_kv_file_k(kf, 0) + ((size_t)il * C + (size_t)pos) * nr;
            for (size_t i = 0; i < nr; i++)
                k[i] = (nf_fp16_t)(20000 + il * 1000 + pos + (int)i);
            assert_int_equal(nf_kv_file_layer_store(kf, 0, il, pos + 1), 0);
        }
    assert_true(resident_rows(kf, 0, L, C, row) <= 2 * L * 2 * B);
    assert_int_equal(nf_kv_file_layer_load(kf, 0, 2), 0);
    const nf_fp16_t *k2 = (const nf_fp16_t *)nf_kv_file_k(kf, 0) + (size_t)2 * C * nr;
    assert_int_equal(k2[8 * nr + 7], (nf_fp16_t)(2000 + 8 + 7)); /* kept by the rollback */
    assert_int_equal(k2[20 * nr + 7], (nf_fp16_t)(20000 + 2000 + 20 + 7)); /* rewritten */
    assert_int_equal(nf_kv_file_layer_store(kf, 0, 2, 30), 0);
    /* A rollback to a block's start reads nothing back: no row of that block is kept. */
    assert_int_equal(nf_kv_file_rollback(kf, 0, 12), 0);
    assert_int_equal(resident_rows(kf, 0, L, C, row), 0);
    struct nf_kv_file_stats st;
    nf_kv_file_get_stats(kf, &st);
    assert_true(st.write_bytes >= 2ull * 2 * L * 28 * row);
    assert_true(st.read_bytes > 0);
    nf_kv_file_reset(kf, 0);
    nf_kv_file_close(kf);
    assert_int_equal(access(path, F_OK), -1); /* removed */

    /* A directory that does not exist: one line naming the path. */
    o.path = "/nonexistent-dir/kv";
    assert_true(nf_kv_file_open(&kf, &o, err, sizeof(err)) < 0);
    assert_non_null(strstr(err, "/nonexistent-dir/kv"));
}

/* Converts models/NAME.gguf into tmpdir/NAME.nft. */
static void convert(const char *name, char *out, size_t len)
{
    char in[512], err[512];
    snprintf(in, sizeof(in), "%s/models/%s.gguf", NF_SHARED_DIR, name);
    snprintf(out, len, "%s/%s.nft", tmpdir, name);
    if (access(out, R_OK) == 0)
        return;
    struct nf_nft_convert_opts o = {.tile_size = 16384};
    if (nf_nft_convert(in, out, &o, err, sizeof(err)) < 0)
        fail_msg("convert %s: %s", name, err);
}

struct engine {
    struct nf_nft *f;
    struct nf_tile_src src;
    struct nf_stream *s;
};

/* The KV types of the engines engine_open makes (0: f16); test_quant sets them. */
static enum nf_type kv_tk, kv_tv;

static void engine_open(struct engine *e, const char *nft, const char *kv, int block, int n_seq,
                        int ubatch)
{
    char err[512];
    memset(e, 0, sizeof(*e));
    if (nf_nft_open(&e->f, nft, false, err, sizeof(err)) < 0)
        fail_msg("%s", err);
    assert_int_equal(nf_tile_src_file_open(&e->src, e->f, 1ull << 30), 0);
    struct nf_stream_opts o = {.n_ctx = N_CTX,
                               .n_threads = 2,
                               .n_seq = n_seq,
                               .n_ubatch = ubatch,
                               .type_k = kv_tk,
                               .type_v = kv_tv,
                               .kv_path = kv,
                               .kv_block = block};
    if (nf_stream_create(&e->s, e->f, &e->src, &o, err, sizeof(err)) < 0)
        fail_msg("%s", err);
    if (n_seq > 1 && nf_stream_set_slots(e->s, n_seq, err, sizeof(err)) < 0)
        fail_msg("%s", err);
}

static void engine_close(struct engine *e)
{
    nf_stream_free(e->s);
    nf_tile_src_file_close(&e->src);
    nf_nft_close(e->f);
}

/* The prompt and N_GEN greedy steps through an in-RAM engine and one with its KV on disk in
 * blocks of `block` positions: the logits of every step equal bit for bit; then the same after
 * a reset (a second request on the same engine). */
static void check_same_nft(const char *name, const char *nft, int block, int ubatch, int n_gen)
{
    char kv[600];
    snprintf(kv, sizeof(kv), "%s/%s.kv", tmpdir, name);
    struct engine a, b;
    engine_open(&a, nft, NULL, 0, 0, ubatch);
    engine_open(&b, nft, kv, block, 0, ubatch);
    const int nv = nf_stream_hparams(a.s)->n_vocab;
    int32_t tok[N_PROMPT];
    for (int round = 0; round < 2; round++) {
        tok[0] = 1;
        for (int i = 1; i < N_PROMPT; i++)
            tok[i] = (int32_t)((i * 37 + 11 + round * 5) % nv);
        nf_stream_reset(a.s);
        nf_stream_reset(b.s);
        assert_int_equal(nf_stream_eval(a.s, tok, N_PROMPT), 0);
        assert_int_equal(nf_stream_eval(b.s, tok, N_PROMPT), 0);
        for (int step = 0; step <= n_gen; step++) {
            const float *la = nf_stream_logits(a.s), *lb = nf_stream_logits(b.s);
            if (memcmp(la, lb, sizeof(float) * (size_t)nv) != 0)
                fail_msg("%s block %d: logits differ at step %d of round %d", name, block, step,
                         round);
            if (step == n_gen)
                break;
            int32_t t = argmax(la, nv);
            assert_int_equal(nf_stream_eval(a.s, &t, 1), 0);
            assert_int_equal(nf_stream_eval(b.s, &t, 1), 0);
        }
    }
    struct nf_kv_file_stats st, none;
    assert_true(nf_stream_kv_stats(b.s, &st));
    assert_false(nf_stream_kv_stats(a.s, &none));
    print_message("%s block %d: %llu KiB written, %llu KiB read back, identical\n", name, block,
                  (unsigned long long)(st.write_bytes >> 10),
                  (unsigned long long)(st.read_bytes >> 10));
    assert_true(st.read_bytes > 0 && st.write_bytes > 0);
    /* the prompt's later chunks read their layers whole (nf_kv_file_prompt_layer), when an
     * earlier chunk filled a block (deepseek2's latent attention has its own reads) */
    if (block <= 8 && !nf_stream_hparams(b.s)->n_lora_kv)
        assert_true(st.layer_loads > 0);
    if (block <= 8) /* (larger blocks of this tiny model hold more than its whole cache) */
        assert_true(nf_stream_mem_bytes(b.s) < nf_stream_mem_bytes(a.s));
    engine_close(&a);
    engine_close(&b);
    assert_int_equal(access(kv, F_OK), -1);
}

static void check_same(const char *name, int block, int ubatch, int n_gen)
{
    char nft[512];
    convert(name, nft, sizeof(nft));
    check_same_nft(name, nft, block, ubatch, n_gen);
}

static void test_stories(void **state)
{
    (void)state;
    check_same("stories260K", 4, 0, N_GEN);
    check_same("stories260K", 64, 16, 60); /* O_DIRECT: 64 rows of 64 bytes; 3 chunks */
}

static void test_zoo_q4km(void **state)
{
    (void)state;
    check_same("zoo-Q4_K_M", 8, 0, N_GEN);
}

static void test_moe(void **state)
{
    (void)state;
    check_same("moe-Q4_K_M", 8, 0, N_GEN);
}

/* Latent attention (deepseek2: one cache, no V), a sliding window with the cache view padded to
 * 256 (gemma3) and attention sinks (gpt-oss), on models mkmodel writes (the goldens' shapes). */
static void test_arch(void **state)
{
    (void)state;
    static const char *const models[][2] = {
        {"ds2", "--seed 7 --arch deepseek2 --dim 128 --layers 3 --ffn 64 --heads 4 --head-dim 48 "
                "--rope-dim 16 --kv-lora 64 --v-head 32 --q-lora 0 --dense-layers 1 --dense-ffn "
                "256 --experts 8 --experts-used 2 --shared-experts 1 --type q8_0"},
        {"gemma3", "--seed 7 --arch gemma3 --dim 64 --layers 6 --ffn 128 --heads 4 --kv-heads 2 "
                   "--head-dim 32 --window 8 --rope-base 1000000 --rope-scale 8 --tied-output "
                   "--type q8_0"},
        {"gptoss", "--seed 7 --arch gpt-oss --dim 64 --layers 4 --ffn 64 --heads 4 --kv-heads 2 "
                   "--head-dim 64 --experts 8 --experts-used 4 --window 4 --rope-base 150000 "
                   "--rope-scale 32 --ctx 131072 --type q8_0"},
    };
    for (size_t i = 0; i < sizeof(models) / sizeof(models[0]); i++) {
        char cmd[1024], gguf[600], nft[600], err[512];
        snprintf(gguf, sizeof(gguf), "%s/%s.gguf", tmpdir, models[i][0]);
        snprintf(cmd, sizeof(cmd), "%s/ctl/nanoflowctl mkmodel %s %s >/dev/null 2>&1", NF_BUILD_DIR,
                 gguf, models[i][1]);
        if (system(cmd) != 0)
            fail_msg("mkmodel %s failed: %s", models[i][0], cmd);
        snprintf(nft, sizeof(nft), "%s/%s.nft", tmpdir, models[i][0]);
        struct nf_nft_convert_opts o = {.tile_size = 16384};
        if (nf_nft_convert(gguf, nft, &o, err, sizeof(err)) < 0)
            fail_msg("convert %s: %s", models[i][0], err);
        check_same_nft(models[i][0], nft, 8, 0, N_GEN);
    }
}

/* Quantized KV on disk (rows are bytes to the file): K q8_0 and V q4_0 rows (136 and 72 bytes
 * on zoo's 4 KV heads of 32, so no O_DIRECT and blocks that straddle pages) give the logits of
 * the same types in RAM bit for bit, through two requests and with blocks of 4 and 64. */
static void test_quant(void **state)
{
    (void)state;
    char in[512];
    snprintf(in, sizeof(in), "%s/models/zoo-Q8_0.gguf", NF_SHARED_DIR);
    if (access(in, R_OK) != 0) {
        print_message("skipping: %s is missing\n", in);
        skip();
    }
    kv_tk = NF_TYPE_Q8_0;
    kv_tv = NF_TYPE_Q4_0;
    check_same("zoo-Q8_0", 4, 0, N_GEN);
    check_same("zoo-Q8_0", 64, 16, 60); /* 3 chunks, the rows of 2 blocks back from the file */
    kv_tk = kv_tv = 0;
}

/* Two sequences: prompts alone on their slots, then batched steps and a rollback into a block
 * already on disk; each slot's logits equal the in-RAM engine's. */
static void test_slots(void **state)
{
    (void)state;
    char nft[512], kv[600];
    convert("stories260K", nft, sizeof(nft));
    snprintf(kv, sizeof(kv), "%s/slots.kv", tmpdir);
    struct engine a, b;
    engine_open(&a, nft, NULL, 0, 2, 0);
    engine_open(&b, nft, kv, 4, 2, 0);
    const int nv = nf_stream_hparams(a.s)->n_vocab;
    int32_t tok[2][N_PROMPT];
    for (int i = 0; i < 2; i++) {
        tok[i][0] = 1;
        for (int j = 1; j < N_PROMPT; j++)
            tok[i][j] = (int32_t)((j * (31 + i) + 7) % nv);
        int n = N_PROMPT - 9 * i;
        nf_stream_slot_reset(a.s, i);
        nf_stream_slot_reset(b.s, i);
        assert_int_equal(nf_stream_slot_eval(a.s, i, tok[i], n), 0);
        assert_int_equal(nf_stream_slot_eval(b.s, i, tok[i], n), 0);
    }
    const int idx[2] = {0, 1};
    for (int step = 0; step < N_GEN; step++) {
        int32_t t[2];
        for (int i = 0; i < 2; i++) {
            const float *la = nf_stream_slot_logits(a.s, i), *lb = nf_stream_slot_logits(b.s, i);
            if (memcmp(la, lb, sizeof(float) * (size_t)nv) != 0)
                fail_msg("slot %d: logits differ at step %d", i, step);
            t[i] = argmax(la, nv);
        }
        if (step == 6) { /* slot 0 back to a position inside a block written to the file */
            const int back = nf_stream_slot_n_past(a.s, 0) - 7;
            assert_int_equal(nf_stream_slot_rollback(a.s, 0, back), 0);
            assert_int_equal(nf_stream_slot_rollback(b.s, 0, back), 0);
        }
        assert_int_equal(nf_stream_step(a.s, idx, t, 2), 0);
        assert_int_equal(nf_stream_step(b.s, idx, t, 2), 0);
    }
    engine_close(&a);
    engine_close(&b);
}

/* The plan with the KV cache on disk: a context the budget caps in RAM is honoured, the budget
 * holds the resident bound, the file's size is the whole cache. */
static void test_plan(void **state)
{
    (void)state;
    char nft[512], err[512];
    convert("stories260K", nft, sizeof(nft));
    struct nf_nft *f;
    if (nf_nft_open(&f, nft, false, err, sizeof(err)) < 0)
        fail_msg("%s", err);
    struct nf_stack_plan ram, disk;
    const uint64_t budget = 56ull << 20;
    assert_int_equal(nf_stack_plan_seq_ub(f, budget, 65536, 1, 1, 0, &ram, err, sizeof(err)), 0);
    assert_true(ram.n_ctx < 65536); /* 40 MiB of KV in RAM: capped */
    assert_int_equal(ram.kv_block, 0);
    assert_int_equal(nf_stack_plan_kv(f, budget, 65536, 1, 1, 0, NF_TYPE_F16, NF_TYPE_F16, 64,
                                      &disk, err, sizeof(err)),
                     0);
    assert_int_equal(disk.n_ctx, 65536);
    assert_int_equal(disk.kv_block, 64);
    const size_t row = 2 * 2 * 32; /* K and V of one position in one layer: 4 heads of 8, F16 */
    assert_int_equal(disk.kv_file_bytes, 65536ull * 5 * row);
    /* the window and newest blocks, and the layer a prompt chunk reads whole (8 MiB) */
    assert_int_equal(nf_kv_file_prompt_layer(65536, row), 65536ull * row);
    /* (the window's blocks are the pool's KV tiles: a class of as many slots of a block) */
    assert_int_equal(disk.kv_tiles, 5ull * 2 * (65536 / 64));
    assert_int_equal(disk.kv_bytes, 65536ull * row + nf_kv_file_newest_bound(5, 65536, 1, 64, row));
    assert_int_equal(disk.classes[disk.n_classes].n_slots,
                     nf_kv_file_window_blocks(65536, 64, row));
    assert_int_equal(disk.classes[disk.n_classes].slot_size, 64 * row / 2);
    assert_true(disk.kv_bytes < disk.kv_file_bytes / 2);
    print_message("56 MiB: n_ctx %u in RAM; on disk n_ctx %u, %llu KiB resident of a %llu KiB "
                  "file\n",
                  ram.n_ctx, disk.n_ctx, (unsigned long long)(disk.kv_bytes >> 10),
                  (unsigned long long)(disk.kv_file_bytes >> 10));
    nf_nft_close(f);
}

/* The attention walk alone (model_forward.c), on an in-RAM context: kv_need hands out one block
 * of 3 positions at a time (so the lanes of every sum cross block boundaries), checks that the
 * blocks come in the walk's order, and hands each out as a copy in a buffer of its own per kind
 * (as a tile in a pool slot would be), the cache's own rows of the block poisoned meanwhile, so
 * that the walk must read the cells where need says; the logits of a prompt, decode steps and a
 * per-row pass equal the plain attention's bit for bit, in the plain, F32 and flash numerics and
 * with q8_0 / q4_0 caches. */
#define WALK_BLOCK 3
struct walk_seen {
    int il, next[2], calls;
    uint8_t *copy[2]; /* (WALK_BLOCK rows) of K and of V: the block handed out */
    uint8_t *home[2]; /* where the copy's rows live in the cache, poisoned meanwhile */
    uint8_t *saved[2];
    size_t len[2], row[2];
};

/* Puts the rows of the block handed out for kind back in the cache, those still poisoned (a
 * row the engine wrote since, its next position's, is kept). */
static void walk_restore(struct walk_seen *w, int kind)
{
    for (size_t o = 0; w->home[kind] && o < w->len[kind]; o += w->row[kind]) {
        bool poisoned = true;
        for (size_t i = 0; i < w->row[kind] && poisoned; i++)
            poisoned = w->home[kind][o + i] == 0x7f;
        if (poisoned)
            memcpy(w->home[kind] + o, w->saved[kind] + o, w->row[kind]);
    }
    w->home[kind] = NULL;
}

static int walk_need(void *ud, const struct nf_ctx *c, int il, int kind, int b, int b_end,
                     const void **base)
{
    struct walk_seen *w = ud;
    assert_true(kind == 0 || kind == 1);
    if (il != w->il) /* a layer's walk starts at block 0 */
        assert_int_equal(b, 0);
    else if (b != 0) /* (0: the next wave of tasks) */
        assert_int_equal(b, w->next[kind]);
    assert_true(b < b_end);
    w->il = il;
    w->next[kind] = b + 1;
    w->calls++;
    walk_restore(w, 0);
    walk_restore(w, 1);
    const struct nf_hparams *hp = &c->m->hp;
    const enum nf_type t = kind ? c->type_v : c->type_k;
    const size_t row = nf_kv_row_bytes(t, hp->n_head_kv * hp->head_dim);
    const int p0 = b * WALK_BLOCK, p1 = p0 + WALK_BLOCK < c->n_ctx ? p0 + WALK_BLOCK : c->n_ctx;
    uint8_t *home =
        (uint8_t *)(kind ? c->v_cache : c->k_cache) + ((size_t)il * c->n_ctx + (size_t)p0) * row;
    w->len[kind] = (size_t)(p1 - p0) * row;
    w->row[kind] = row;
    assert_true(w->len[kind] <= (size_t)WALK_BLOCK * 4096);
    memcpy(w->copy[kind], home, w->len[kind]);
    memcpy(w->saved[kind], home, w->len[kind]);
    memset(home, 0x7f, w->len[kind]); /* F16 NaNs, absurd scales: a read here shows */
    w->home[kind] = home;
    *base = w->copy[kind];
    return 1;
}

static void test_walk(void **state)
{
    (void)state;
    char nft[512], err[512];
    convert("zoo-Q4_K_M", nft, sizeof(nft));
    struct nf_model *m;
    if (nf_model_load(&m, nft, err, sizeof(err)) < 0)
        fail_msg("%s", err);
    const int nv = m->hp.n_vocab;
    const enum nf_attn_mode modes[] = {NF_ATTN_PLAIN, NF_ATTN_F32, NF_ATTN_FLASH, NF_ATTN_PLAIN};
    float *rows_a = malloc(sizeof(float) * 4 * (size_t)nv);
    float *rows_b = malloc(sizeof(float) * 4 * (size_t)nv);
    assert_non_null(rows_a);
    assert_non_null(rows_b);
    for (size_t k = 0; k < sizeof(modes) / sizeof(modes[0]); k++) {
        struct nf_ctx *a, *b;
        struct walk_seen seen = {.il = -1};
        for (int kd = 0; kd < 2; kd++) { /* rows of at most 4 KiB in this small model */
            seen.copy[kd] = malloc((size_t)WALK_BLOCK * 4096);
            seen.saved[kd] = malloc((size_t)WALK_BLOCK * 4096);
            assert_non_null(seen.copy[kd]);
            assert_non_null(seen.saved[kd]);
        }
        assert_int_equal(nf_ctx_create_ub(&a, m, N_CTX, 2, 16), 0);
        assert_int_equal(nf_ctx_create_ub(&b, m, N_CTX, 2, 16), 0);
        if (k == 3) { /* quantized rows: their own kernels, whatever the mode */
            assert_int_equal(nf_ctx_set_kv_types(a, NF_TYPE_Q8_0, NF_TYPE_Q4_0, err, sizeof(err)),
                             0);
            assert_int_equal(nf_ctx_set_kv_types(b, NF_TYPE_Q8_0, NF_TYPE_Q4_0, err, sizeof(err)),
                             0);
        }
        a->attn_mode = b->attn_mode = modes[k];
        assert_int_equal(nf_attn_walk_init(b, WALK_BLOCK, 16, walk_need, &seen), 0);
        int32_t tok[N_PROMPT];
        tok[0] = 1;
        for (int i = 1; i < N_PROMPT; i++)
            tok[i] = (int32_t)((i * 29 + 3) % nv);
        assert_int_equal(nf_ctx_eval(a, tok, N_PROMPT), 0);
        assert_int_equal(nf_ctx_eval(b, tok, N_PROMPT), 0);
        for (int step = 0; step < 6; step++) {
            if (memcmp(a->logits, b->logits, sizeof(float) * (size_t)nv) != 0)
                fail_msg("mode %zu: logits differ at step %d", k, step);
            int32_t t = argmax(a->logits, nv);
            assert_int_equal(nf_ctx_eval(a, &t, 1), 0);
            assert_int_equal(nf_ctx_eval(b, &t, 1), 0);
        }
        assert_int_equal(nf_ctx_eval_rows(a, tok + 5, 4, rows_a), 0);
        assert_int_equal(nf_ctx_eval_rows(b, tok + 5, 4, rows_b), 0);
        if (memcmp(rows_a, rows_b, sizeof(float) * 4 * (size_t)nv) != 0)
            fail_msg("mode %zu: per-row logits differ", k);
        assert_int_equal(b->kv_err, 0);
        assert_true(seen.calls > 0);
        for (int kd = 0; kd < 2; kd++) {
            walk_restore(&seen, kd);
            free(seen.copy[kd]);
            free(seen.saved[kd]);
        }
        nf_ctx_free(a);
        nf_ctx_free(b);
    }
    free(rows_a);
    free(rows_b);
    nf_model_free(m);
}

/* A context 64 times the window: 4 blocks of 4 positions read back at once from a 2048-position
 * cache of which the prompt and steps fill 212. The logits equal the in-RAM engine's and the
 * most bytes read back at once stay within the window, which is far below the cache (and the
 * engine's memory, window and walk included, below the in-RAM engine's). */
static void test_long(void **state)
{
    (void)state;
    char nft[512], kv[600], err[512];
    convert("stories260K", nft, sizeof(nft));
    snprintf(kv, sizeof(kv), "%s/long.kv", tmpdir);
    struct engine e[2];
    for (int i = 0; i < 2; i++) {
        memset(&e[i], 0, sizeof(e[i]));
        if (nf_nft_open(&e[i].f, nft, false, err, sizeof(err)) < 0)
            fail_msg("%s", err);
        assert_int_equal(nf_tile_src_file_open(&e[i].src, e[i].f, 1ull << 30), 0);
        struct nf_stream_opts o = {.n_ctx = 2048,
                                   .n_threads = 2,
                                   .n_ubatch = 64,
                                   .kv_path = i ? kv : NULL,
                                   .kv_block = 4,
                                   .kv_window = 4,
                                   .kv_prompt_walk = true};
        if (nf_stream_create(&e[i].s, e[i].f, &e[i].src, &o, err, sizeof(err)) < 0)
            fail_msg("%s", err);
    }
    const int nv = nf_stream_hparams(e[0].s)->n_vocab, n_prompt = 200;
    int32_t *tok = malloc(sizeof(int32_t) * (size_t)n_prompt);
    assert_non_null(tok);
    tok[0] = 1;
    for (int i = 1; i < n_prompt; i++)
        tok[i] = (int32_t)((i * 53 + 17) % nv);
    for (int i = 0; i < 2; i++)
        assert_int_equal(nf_stream_eval(e[i].s, tok, n_prompt), 0);
    for (int step = 0; step < 12; step++) {
        const float *la = nf_stream_logits(e[0].s), *lb = nf_stream_logits(e[1].s);
        if (memcmp(la, lb, sizeof(float) * (size_t)nv) != 0)
            fail_msg("logits differ at step %d", step);
        int32_t t = argmax(la, nv);
        for (int i = 0; i < 2; i++)
            assert_int_equal(nf_stream_eval(e[i].s, &t, 1), 0);
    }
    struct nf_kv_file_stats st;
    assert_true(nf_stream_kv_stats(e[1].s, &st));
    const uint64_t whole = nf_kv_file_bytes(5, 2048, 1, 4, 128);
    print_message("n_ctx 2048: window %llu B, most read back at once %llu B, %llu KiB read, "
                  "cache %llu KiB; engine %llu KiB (in RAM %llu KiB)\n",
                  (unsigned long long)st.window, (unsigned long long)st.resident_max,
                  (unsigned long long)(st.read_bytes >> 10), (unsigned long long)(whole >> 10),
                  (unsigned long long)(nf_stream_mem_bytes(e[1].s) >> 10),
                  (unsigned long long)(nf_stream_mem_bytes(e[0].s) >> 10));
    assert_true(st.resident_max > 0 && st.resident_max <= st.window);
    assert_int_equal(st.layer_loads, 0);     /* (kv_prompt_walk: the chunks walked the window) */
    assert_int_equal(st.window, 4 * 4 * 64); /* 4 blocks of 4 rows of K or V: 64 bytes each */
    assert_true(st.read_bytes > whole / 8);  /* (the 300 rows of 5 layers went through it) */
    assert_true(nf_stream_mem_bytes(e[1].s) < nf_stream_mem_bytes(e[0].s));
    for (int i = 0; i < 2; i++)
        engine_close(&e[i]);
    free(tok);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_blocks),   cmocka_unit_test(test_stories),
        cmocka_unit_test(test_zoo_q4km), cmocka_unit_test(test_moe),
        cmocka_unit_test(test_arch),     cmocka_unit_test(test_slots),
        cmocka_unit_test(test_plan),     cmocka_unit_test(test_quant),
        cmocka_unit_test(test_walk),     cmocka_unit_test(test_long),
    };
    return cmocka_run_group_tests(tests, setup_dir, teardown_dir);
}
