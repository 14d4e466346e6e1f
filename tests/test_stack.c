/* test_stack.c - stack plan arithmetic, region create/attach, the tile state machine, and a
 * two-process (and two-thread) pin/evict stress test over the shared region. */
#include <errno.h>
#include <pthread.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>

#include "kv_file.h"
#include "nf_err.h"
#include "nft.h"
#include "stack.h"

static char tmpdir[256];
static char nft_path[512];
static struct nf_nft *stories; /* stories260K converted once for the whole run */

/* Every shm name a test uses, so the last test can check none is left in /dev/shm. */
static char names[16][64];
static int n_names;

static const char *uniq_name(void)
{
    assert_true(n_names < 16);
    snprintf(names[n_names], sizeof(names[0]), "/nf-test-stack-%d-%d", (int)getpid(), n_names);
    return names[n_names++];
}

static bool shm_exists(const char *name)
{
    char path[128];
    struct stat st;
    snprintf(path, sizeof(path), "/dev/shm%s", name);
    return stat(path, &st) == 0;
}

static uint64_t align_page(uint64_t v)
{
    return (v + 4095) / 4096 * 4096;
}

static int setup_all(void **state)
{
    snprintf(tmpdir, sizeof(tmpdir), "/tmp/nf-test-stack-XXXXXX");
    if (!mkdtemp(tmpdir))
        return -1;
    snprintf(nft_path, sizeof(nft_path), "%s/stories260K.nft", tmpdir);
    char err[512];
    int rc =
        nf_nft_convert(NF_SHARED_DIR "/models/stories260K.gguf", nft_path, NULL, err, sizeof(err));
    if (rc < 0) {
        fprintf(stderr, "convert: %s\n", err);
        return -1;
    }
    rc = nf_nft_open(&stories, nft_path, false, err, sizeof(err));
    if (rc < 0) {
        fprintf(stderr, "open: %s\n", err);
        return -1;
    }
    return 0;
}

static int teardown_all(void **state)
{
    nf_nft_close(stories);
    unlink(nft_path);
    rmdir(tmpdir);
    return 0;
}

/* --- Plan ----------------------------------------------------------------------------------- */

static uint64_t plan_sum(const struct nf_stack_plan *p)
{
    return p->region_bytes + p->kernel_bytes + p->compute_private + p->predictor_private +
           p->fetcher_private;
}

/* Checks what must hold for every plan of model f. */
static void check_plan(const struct nf_nft *f, const struct nf_stack_plan *p)
{
    uint64_t max_padded = 0;
    for (uint64_t i = 0; i < f->n_tiles; i++)
        if (nf_nft_padded(f->tiles[i].size) > max_padded)
            max_padded = nf_nft_padded(f->tiles[i].size);
    /* Classes: increasing page multiples, the last one the largest tile, contiguous slot ids
     * and bytes, each at least its minimum and at most its tiles. */
    assert_true(p->n_classes >= 1 && p->n_classes <= NF_STACK_MAX_CLASSES);
    assert_int_equal(p->classes[p->n_classes - 1].slot_size, max_padded);
    uint64_t slots = 0, bytes = 0, min = 0, tiles = 0;
    for (uint32_t k = 0; k < p->n_classes; k++) {
        const struct nf_stack_class *c = &p->classes[k];
        assert_int_equal(c->slot_size % 4096, 0);
        if (k)
            assert_true(c->slot_size > p->classes[k - 1].slot_size);
        assert_int_equal(c->first_slot, slots);
        assert_int_equal(c->pool_off, bytes);
        assert_true(c->n_slots >= p->class_min[k] && c->n_slots <= p->class_tiles[k]);
        assert_true(p->class_min[k] >= 1);
        slots += c->n_slots;
        bytes += c->n_slots * c->slot_size;
        min += p->class_min[k];
        tiles += p->class_tiles[k];
    }
    assert_int_equal(p->n_slots, slots);
    assert_int_equal(p->pool_bytes, bytes);
    assert_int_equal(p->min_slots, min);
    assert_int_equal(tiles, f->n_tiles);
    /* Every tile goes in the smallest class that fits it, and that class counts it. */
    uint64_t counted[NF_STACK_MAX_CLASSES] = {0};
    for (uint64_t i = 0; i < f->n_tiles; i++) {
        uint64_t padded = nf_nft_padded(f->tiles[i].size);
        int k = nf_stack_class_of(p->classes, p->n_classes, padded);
        assert_true(k >= 0);
        assert_true(padded <= p->classes[k].slot_size);
        if (k > 0)
            assert_true(padded > p->classes[k - 1].slot_size);
        counted[k]++;
    }
    for (uint32_t k = 0; k < p->n_classes; k++)
        assert_int_equal(counted[k], p->class_tiles[k]);
    assert_int_equal(p->area_sizes[NF_SHM_TILE_POOL], p->pool_bytes);
    uint64_t region = 4096;
    for (int i = 0; i < NF_SHM_NAREAS; i++)
        region += align_page(p->area_sizes[i]);
    assert_int_equal(p->region_bytes, region);
    /* Kernel memory: page tables of three mappings of the region, plus 4 MiB. */
    assert_int_equal(p->kernel_bytes, 3 * (region / 256) + (4ull << 20));
    uint64_t head_dim = f->hdr.n_embd / f->hdr.n_head;
    assert_int_equal(p->kv_bytes, (uint64_t)(p->n_seq ? p->n_seq : 1) * f->hdr.n_layer * p->n_ctx *
                                      2 * f->hdr.n_head_kv * head_dim * 2);
    assert_true(p->compute_private >= p->kv_bytes + p->down_scratch + NF_STACK_PROC_BYTES);
    assert_true(p->predictor_private >= NF_STACK_PROC_BYTES);
    assert_true(p->fetcher_private >= NF_STACK_PROC_BYTES);
    assert_true(plan_sum(p) <= p->ram_budget);
    assert_true(p->n_slots >= p->min_slots && p->n_slots <= f->n_tiles);
    assert_true(p->n_ctx >= p->n_ctx_min && p->n_ctx <= p->n_ctx_want);
    assert_true(p->min_budget <= p->ram_budget);
}

/* Several sequences (`up --parallel`): n_seq KV caches in the plan, a count that does not fit
 * refused with the most that do, and a count chosen from the budget. */
static void test_plan_seq(void **state)
{
    (void)state;
    char err[512];
    struct nf_stack_plan p1, p4, p;
    assert_int_equal(nf_stack_plan_seq(stories, 64ull << 20, 128, 1, 1, &p1, err, sizeof(err)), 0);
    assert_int_equal(nf_stack_plan_seq(stories, 64ull << 20, 128, 1, 4, &p4, err, sizeof(err)), 0);
    assert_int_equal(p1.n_seq, 1);
    assert_int_equal(p4.n_seq, 4);
    assert_int_equal(p4.kv_bytes, 4 * p1.kv_bytes);
    assert_true(p4.pool_bytes <= p1.pool_bytes); /* the caches come out of the pool */
    check_plan(stories, &p4);
    /* nf_stack_plan is one sequence. */
    assert_int_equal(nf_stack_plan(stories, 64ull << 20, 128, 1, &p, err, sizeof(err)), 0);
    assert_int_equal(p.n_seq, 1);
    assert_int_equal(p.pool_bytes, p1.pool_bytes);
    /* Chosen: stories' caches are tiny, so the default's most. */
    assert_int_equal(nf_stack_plan_seq(stories, 64ull << 20, 128, 1, 0, &p, err, sizeof(err)), 0);
    assert_int_equal(p.n_seq, NF_STACK_SEQ_DEFAULT);
    /* Just above the one-sequence minimum, 32 sequences do not fit: refused with the most. */
    const uint64_t min = p1.min_budget;
    int rc = nf_stack_plan_seq(stories, min, 128, 1, 32, &p, err, sizeof(err));
    assert_int_equal(rc, NF_EUSAGE);
    assert_non_null(strstr(err, "32 sequences do not fit"));
    unsigned fit = 0;
    const char *at = strstr(err, "at most ");
    assert_non_null(at);
    assert_int_equal(sscanf(at, "at most %u", &fit), 1);
    assert_true(fit >= 1 && fit < 32);
    if (fit > 1)
        assert_int_equal(nf_stack_plan_seq(stories, min, 128, 1, fit, &p, err, sizeof(err)), 0);
    assert_int_equal(nf_stack_plan_seq(stories, min, 128, 1, fit + 1, &p, err, sizeof(err)),
                     NF_EUSAGE);
    /* Out of range. */
    assert_int_equal(
        nf_stack_plan_seq(stories, 64ull << 20, 128, 1, NF_STACK_SEQ_MAX + 1, &p, err, sizeof(err)),
        NF_EUSAGE);
}

static void test_plan_stories(void **state)
{
    struct nf_stack_plan p;
    char err[512] = "";
    /* A roomy budget: the model's own context (128) and a slot for every tile. */
    int rc = nf_stack_plan(stories, 1ull << 30, 0, 2, &p, err, sizeof(err));
    assert_int_equal(rc, 0);
    check_plan(stories, &p);
    assert_int_equal(p.n_ctx, 128);
    assert_int_equal(p.n_ctx_want, 128);
    assert_int_equal(p.n_slots, stories->n_tiles);
    /* The default context keeps the KV cache within a quarter of the budget. */
    assert_true(p.kv_bytes <= p.ram_budget / 4);
    /* 5 layers, 2 KV heads' worth of width 32 (4 of 8 heads, head_dim 8), F16. */
    assert_int_equal(p.kv_bytes, 5ull * 128 * 2 * 32 * 2);
    /* The down scratch is n_embd rows of n_ff F32 values. */
    assert_int_equal(p.down_scratch, 64ull * 172 * 4);
    /* A request above the model's context is honoured when it fits. */
    rc = nf_stack_plan(stories, 1ull << 30, 1024, 2, &p, err, sizeof(err));
    assert_int_equal(rc, 0);
    assert_int_equal(p.n_ctx, 1024);
    check_plan(stories, &p);

    /* At exactly the minimum: the minimum pool and context. */
    uint64_t min = p.min_budget;
    rc = nf_stack_plan(stories, min, 1024, 2, &p, err, sizeof(err));
    assert_int_equal(rc, 0);
    check_plan(stories, &p);
    assert_int_equal(p.n_slots, p.min_slots);
    assert_int_equal(p.n_ctx, NF_STACK_MIN_CTX);
    assert_int_equal(plan_sum(&p), min);
    /* The default at the minimum budget of the default: the model's context, the KV cache
     * still within a quarter. */
    rc = nf_stack_plan(stories, 1ull << 30, 0, 2, &p, err, sizeof(err));
    assert_int_equal(rc, 0);
    rc = nf_stack_plan(stories, p.min_budget, 0, 2, &p, err, sizeof(err));
    assert_int_equal(rc, 0);
    check_plan(stories, &p);
    assert_int_equal(p.n_ctx, 128);
    assert_int_equal(p.n_slots, p.min_slots);
    assert_true(p.kv_bytes <= p.ram_budget / 4);

    /* One byte less is refused, naming the budget, the minimum and the model. */
    rc = nf_stack_plan(stories, min - 1, 1024, 2, &p, err, sizeof(err));
    assert_int_equal(rc, -ENOSPC);
    assert_int_equal(p.min_budget, min);
    assert_non_null(strstr(err, "is below the minimum"));
    assert_non_null(strstr(err, "stories260K.nft"));
}

/* A llama-7B-shaped header and index (no file behind it: the plan reads only these). */
struct fake_model {
    struct nf_nft f;
    struct nf_nft_tile tiles[4096];
};

/* An empty index for path, of a file of file_size bytes whose header checksums to checksum. */
static void fake_init(struct fake_model *m, const char *path, uint64_t file_size, uint64_t checksum)
{
    memset(m, 0, sizeof(*m));
    m->f.hdr.file_size = file_size;
    m->f.hdr.header_checksum = checksum;
    snprintf(m->f.path, sizeof(m->f.path), "%s", path);
    m->f.tiles = m->tiles;
}

static void fake_shape(struct fake_model *m, uint32_t n_layer, uint32_t n_embd, uint32_t n_ff,
                       uint32_t n_vocab, uint32_t n_head, uint32_t n_head_kv)
{
    struct nf_nft_header *h = &m->f.hdr;
    h->n_layer = n_layer;
    h->n_embd = n_embd;
    h->n_ff = n_ff;
    h->n_vocab = n_vocab;
    h->n_head = n_head;
    h->n_head_kv = n_head_kv;
}

static void add_tiles(struct fake_model *m, uint32_t layer, enum nf_tile_kind kind, uint32_t n,
                      uint64_t size)
{
    for (uint32_t i = 0; i < n; i++) {
        assert_true(m->f.n_tiles < 4096);
        struct nf_nft_tile *t = &m->tiles[m->f.n_tiles++];
        memset(t, 0, sizeof(*t));
        t->layer = layer;
        t->kind = (uint16_t)kind;
        t->index = i;
        t->size = size;
        t->expert = NF_NFT_NO_EXPERT;
        if (kind == NF_TILE_FFN) {
            t->count = 11008 / n;
            t->group = 32;
            t->type[0] = t->type[1] = t->type[2] = NF_TYPE_Q4_0;
        }
    }
}

static void make_7b(struct fake_model *m)
{
    fake_init(m, "/models/hand.nft", 3800ull << 20, 0x1234);
    fake_shape(m, 32, 4096, 11008, 32000, 32, 8);
    add_tiles(m, NF_NFT_NO_LAYER, NF_TILE_EMBD, 500, 36864);
    for (uint32_t l = 0; l < 32; l++) {
        add_tiles(m, l, NF_TILE_ATTN_NORM, 1, 16384);
        add_tiles(m, l, NF_TILE_ATTN_Q, 9, 1032192);
        add_tiles(m, l, NF_TILE_ATTN_K, 3, 786432);
        add_tiles(m, l, NF_TILE_ATTN_V, 3, 786432);
        add_tiles(m, l, NF_TILE_ATTN_O, 9, 1032192);
        add_tiles(m, l, NF_TILE_FFN_NORM, 1, 16384);
        add_tiles(m, l, NF_TILE_FFN, 43, 1040000);
        add_tiles(m, l, NF_TILE_PRED_LOWRANK, 1, 700000);
    }
    add_tiles(m, NF_NFT_NO_LAYER, NF_TILE_OUTPUT_NORM, 1, 16384);
    add_tiles(m, NF_NFT_NO_LAYER, NF_TILE_OUTPUT, 70, 1032192);
}

/* The predictor's share: a dense model's low-rank tiles are read from the pool, a MoE model's
 * routers and ffn_norms are private copies, so the plan counts them. */
static void test_plan_predictor_share(void **state)
{
    static struct fake_model m;
    make_7b(&m);
    struct nf_stack_plan p;
    char err[512] = "";
    assert_int_equal(nf_stack_plan(&m.f, 1ull << 30, 0, 2, &p, err, sizeof(err)), 0);
    const uint64_t work = (2ull * 11008 + 2ull * 4096) * sizeof(float);
    assert_int_equal(p.predictor_private,
                     NF_STACK_PROC_BYTES + work + 2ull * p.max_groups * sizeof(float));
    /* The same tiles as a MoE model with 8 experts whose predictor tiles are routers. */
    m.f.hdr.n_expert = 8;
    m.f.hdr.n_expert_used = 2;
    for (uint64_t i = 0; i < m.f.n_tiles; i++)
        if (m.tiles[i].kind == NF_TILE_PRED_LOWRANK)
            m.tiles[i].kind = NF_TILE_PRED_ROUTER;
    assert_int_equal(nf_stack_plan(&m.f, 1ull << 30, 0, 2, &p, err, sizeof(err)), 0);
    check_plan(&m.f, &p);
    assert_int_equal(p.max_groups, 8);
    assert_int_equal(p.predictor_private, NF_STACK_PROC_BYTES + 32 * (align_page(700000) + 16384) +
                                              work + 2ull * 8 * sizeof(float));
}

/* The prompt ubatch a plan picks by itself (n_ubatch 0): the largest of 512, 256, .. 32, at
 * most the context, whose activations and scratch (what the plan adds over a ubatch of one
 * token) take at most a quarter of the budget beside the minimum pool; a given one is kept. */
static void test_plan_ubatch(void **state)
{
    static struct fake_model m;
    make_7b(&m);
    struct nf_stack_plan p, q, one;
    char err[512] = "";
    /* 1 GiB at -c 640 (the 512-token prompt benchmark): 512, one read of the weights. */
    assert_int_equal(nf_stack_plan_ub(&m.f, 1ull << 30, 640, 2, 0, &p, err, sizeof(err)), 0);
    check_plan(&m.f, &p);
    assert_int_equal(p.n_ubatch, NF_STACK_UBATCH_MAX);
    assert_int_equal(nf_stack_plan_ub(&m.f, 1ull << 30, 640, 2, 512, &q, err, sizeof(err)), 0);
    assert_int_equal(q.pool_bytes, p.pool_bytes); /* the same plan as -ub 512 */
    assert_int_equal(q.compute_private, p.compute_private);
    /* nf_stack_plan (what `up` without -ub uses) chooses too, within the context it picks. */
    assert_int_equal(nf_stack_plan(&m.f, 1ull << 30, 0, 2, &p, err, sizeof(err)), 0);
    check_plan(&m.f, &p);
    assert_true(p.n_ubatch >= NF_STACK_UBATCH && p.n_ubatch <= NF_STACK_UBATCH_MAX);
    assert_true(p.n_ubatch <= p.n_ctx);
    /* Never past the context: -c 256 gets 256. */
    assert_int_equal(nf_stack_plan_ub(&m.f, 1ull << 30, 256, 2, 0, &p, err, sizeof(err)), 0);
    assert_int_equal(p.n_ubatch, 256);
    /* Budgets from 1 GiB down: the choice is the largest power of two whose share fits the
     * quarter (checked against the plans with that ubatch given), so it shrinks with them. */
    uint32_t last = NF_STACK_UBATCH_MAX + 1;
    int below = 0;
    for (uint64_t mib = 1024; mib >= 256; mib -= 64) {
        const uint64_t b = mib << 20;
        if (nf_stack_plan_ub(&m.f, b, 640, 2, 0, &p, err, sizeof(err)) < 0)
            break;
        check_plan(&m.f, &p);
        assert_true(p.n_ubatch <= last);
        last = p.n_ubatch;
        below += p.n_ubatch < NF_STACK_UBATCH_MAX;
        assert_int_equal(nf_stack_plan_ub(&m.f, b, 640, 2, 1, &one, err, sizeof(err)), 0);
        if (p.n_ubatch > NF_STACK_UBATCH)
            assert_true(p.compute_private - one.compute_private <= b / 4);
        if (p.n_ubatch < NF_STACK_UBATCH_MAX) { /* twice as many would not do */
            const int rc = nf_stack_plan_ub(&m.f, b, 640, 2, p.n_ubatch * 2, &q, err, sizeof(err));
            assert_true(rc < 0 || q.compute_private - one.compute_private > b / 4);
        }
    }
    assert_true(below > 0); /* some budget of the range chose less than 512 */
    /* A given ubatch is kept, and one too large for the budget is refused by name. */
    assert_int_equal(nf_stack_plan_ub(&m.f, 1ull << 30, 640, 2, 64, &p, err, sizeof(err)), 0);
    assert_int_equal(p.n_ubatch, 64);
    assert_int_equal(nf_stack_plan_ub(&m.f, 1ull << 30, 640, 2, 4096, &p, err, sizeof(err)),
                     -ENOSPC);
    assert_non_null(strstr(err, "ubatch of 4096"));
}

static void test_plan_handmade(void **state)
{
    static struct fake_model m;
    make_7b(&m);
    struct nf_stack_plan p;
    char err[512] = "";
    /* No metadata: the default context 4096, whose KV cache is exactly a quarter of 2 GiB. */
    int rc = nf_stack_plan(&m.f, 2ull << 30, 0, 4, &p, err, sizeof(err));
    assert_int_equal(rc, 0);
    check_plan(&m.f, &p);
    assert_int_equal(p.n_ctx_want, NF_STACK_CTX_LIMIT);
    assert_int_equal(p.n_ctx, 4096);
    assert_int_equal(p.kv_bytes, 512ull << 20); /* 32 layers * 4096 * K,V * 1024 * F16 */
    assert_true(p.kv_bytes <= p.ram_budget / 4);
    /* Two classes: the small one (norms, 36 KiB embedding rows) and the main one (matrices and
     * the 0.7 MiB predictor tiles, all within twice the median). */
    assert_int_equal(p.n_classes, 2);
    assert_int_equal(p.classes[0].slot_size, 36864);
    assert_int_equal(p.classes[1].slot_size, align_page(1040000));
    /* Small: 2 norms of the largest layer + embd + output norm + 2 spare. Main: the other 25
     * attention-side tiles (q/k/v/o, predictor) + 4 FFN tiles + output + 2 spare. */
    assert_int_equal(p.class_min[0], 2 + 1 + 1 + 2);
    assert_int_equal(p.class_min[1], 25 + 4 + 1 + 2);
    assert_int_equal(p.min_slots, p.class_min[0] + p.class_min[1]);
    /* The small class holds what a step reads there: 64 layer norms, the output norm and an
     * embedding row (beyond its minimum, which holds one of each kind). */
    assert_true(p.classes[0].n_slots >= 64 + 1 + 1);
    assert_true(p.n_slots > 500); /* the pool took the rest */
    assert_int_equal(p.down_scratch, 4096ull * (11008 / 32 * 18));
    assert_int_equal(p.max_groups, 43 * (11008 / 43 / 32));
    assert_true(p.demand_count >= 27 + 43 && (p.demand_count & (p.demand_count - 1)) == 0);
    assert_true(p.prefetch_count > p.demand_count);

    /* 1 GiB: the default context is lowered to a quarter of the budget (256 MiB of KV cache,
     * 2048 positions) and the pool gets the rest; a request for 4096 is honoured since it fits,
     * with a smaller pool. */
    rc = nf_stack_plan(&m.f, 1ull << 30, 0, 4, &p, err, sizeof(err));
    assert_int_equal(rc, 0);
    check_plan(&m.f, &p);
    assert_int_equal(p.n_ctx, 2048);
    assert_int_equal(p.kv_bytes, 256ull << 20);
    assert_true(p.pool_bytes > (512ull << 20));
    struct nf_stack_plan req;
    rc = nf_stack_plan(&m.f, 1ull << 30, 4096, 4, &req, err, sizeof(err));
    assert_int_equal(rc, 0);
    check_plan(&m.f, &req);
    assert_int_equal(req.n_ctx, 4096);
    assert_true(req.kv_bytes > req.ram_budget / 4);
    assert_true(req.n_slots < p.n_slots);

    /* 400 MiB: the quarter (100 MiB) rounds down to 768 positions. */
    rc = nf_stack_plan(&m.f, 400ull << 20, 0, 4, &p, err, sizeof(err));
    assert_int_equal(rc, 0);
    check_plan(&m.f, &p);
    assert_int_equal(p.n_ctx, 768);
    assert_true(p.kv_bytes <= p.ram_budget / 4);
    /* A request that does not fit is capped to what fits beside the minimum pool, on a 256
     * step. */
    rc = nf_stack_plan(&m.f, 400ull << 20, 4096, 4, &p, err, sizeof(err));
    assert_int_equal(rc, 0);
    check_plan(&m.f, &p);
    assert_true(p.n_ctx < 4096 && p.n_ctx > 768);
    assert_int_equal(p.n_ctx % 256, 0);
    /* The pool keeps what the 256 rounding frees (at most 32 MiB of KV cache): ~32 slots. */
    assert_true(p.n_slots < p.min_slots + 40);
    uint32_t capped = p.n_ctx;
    /* Asking for 256 more than that gets the same cap (it did not fit). */
    rc = nf_stack_plan(&m.f, 400ull << 20, capped + 256, 4, &p, err, sizeof(err));
    assert_int_equal(rc, 0);
    assert_int_equal(p.n_ctx, capped);
    /* Asking for less than the cap is honoured exactly, the pool grows instead. */
    struct nf_stack_plan small;
    rc = nf_stack_plan(&m.f, 400ull << 20, 512, 4, &small, err, sizeof(err));
    assert_int_equal(rc, 0);
    assert_int_equal(small.n_ctx, 512);
    assert_true(small.n_slots > p.n_slots);

    /* 50 MiB cannot hold the minimum: refused, with the minimum filled in. */
    rc = nf_stack_plan(&m.f, 50ull << 20, 0, 4, &p, err, sizeof(err));
    assert_int_equal(rc, -ENOSPC);
    assert_true(p.min_budget > 50ull << 20);
    assert_non_null(strstr(err, "budget 50.0 MiB is below the minimum"));
    assert_non_null(strstr(err, "hand.nft"));
    rc = nf_stack_plan(&m.f, p.min_budget, 0, 4, &p, err, sizeof(err));
    assert_int_equal(rc, 0);
    assert_int_equal(p.n_ctx, NF_STACK_MIN_CTX);

    /* Absurd requests are refused rather than overflowing. */
    rc = nf_stack_plan(&m.f, 2ull << 30, UINT32_MAX, 4, &p, err, sizeof(err));
    assert_int_equal(rc, NF_EUSAGE);
    /* A header that cannot be planned is refused, not divided by zero. */
    m.f.hdr.n_head = 0;
    rc = nf_stack_plan(&m.f, 2ull << 30, 0, 4, &p, err, sizeof(err));
    assert_int_equal(rc, NF_ECORRUPT);
    assert_non_null(strstr(err, "n_head 0"));
}

/* --- Create / attach ------------------------------------------------------------------------ */

static void create_ok(struct nf_stack *st, const char *name, const struct nf_nft *f,
                      const struct nf_stack_plan *p)
{
    char err[512];
    int rc = nf_stack_create(st, name, f, p, 0.0f, 2, err, sizeof(err));
    if (rc < 0)
        fail_msg("create %s: %s", name, err);
}

static void test_create_attach(void **state)
{
    struct nf_stack_plan p;
    char err[512];
    assert_int_equal(nf_stack_plan(stories, 256ull << 20, 0, 2, &p, err, sizeof(err)), 0);
    const char *name = uniq_name();
    struct nf_stack a, b;
    create_ok(&a, name, stories, &p);
    assert_true(shm_exists(name));
    assert_int_equal(a.shm.size, p.region_bytes);
    assert_int_equal(nf_stack_create(&b, name, stories, &p, 0.0f, 2, err, sizeof(err)), -EEXIST);

    assert_int_equal(nf_stack_attach(&b, name, stories, err, sizeof(err)), 0);
    assert_int_equal(b.cfg->magic, NF_STACK_CONFIG_MAGIC);
    assert_int_equal(b.cfg->n_tiles, stories->n_tiles);
    assert_int_equal(b.cfg->n_slots, p.n_slots);
    assert_int_equal(b.cfg->n_classes, p.n_classes);
    assert_memory_equal(b.cfg->classes, p.classes, sizeof(p.classes[0]) * p.n_classes);
    assert_int_equal(b.cfg->max_slot_size, p.classes[p.n_classes - 1].slot_size);
    assert_int_equal(b.cfg->n_ctx, p.n_ctx);
    assert_int_equal(b.cfg->n_layer, 5);
    assert_int_equal(b.cfg->n_embd, 64);
    assert_int_equal(b.cfg->max_groups, p.max_groups);
    assert_string_equal(b.cfg->nft_path, nft_path);
    assert_int_equal((uintptr_t)b.pool % 4096, 0);
    for (uint64_t i = 0; i < b.cfg->n_tiles; i++) {
        assert_int_equal(b.tiles[i].state, NF_TILE_EMPTY);
        assert_int_equal(b.tiles[i].slot, NF_NO_SLOT);
        assert_int_equal(b.tiles[i].pins, 0);
    }
    for (uint64_t i = 0; i < b.cfg->n_slots; i++)
        assert_int_equal(b.slots[i].tile, NF_NO_TILE);
    assert_int_equal(b.demand->count, p.demand_count);
    assert_int_equal(b.prefetch->count, p.prefetch_count);
    assert_int_equal(nf_ring_count(b.demand), 0);
    uint32_t groups = 0;
    for (uint32_t l = 0; l < 5; l++) {
        assert_int_equal(nf_stack_act(&b, l)->layer, l);
        assert_int_equal(nf_stack_act(&b, l)->n_embd, 64);
        assert_int_equal(nf_stack_used(&b, l)->layer, l);
        groups += nf_stack_used(&b, l)->n_groups;
    }
    assert_null(nf_stack_act(&b, 5));
    assert_null(nf_stack_used(&b, 5));
    /* stories260K: n_ff 172 in groups of 4 (largest power of two dividing it) per layer. */
    assert_int_equal(groups, 5 * 43);
    /* Writes through one mapping are seen through the other. */
    nf_stack_slot_ptr(&a, 0)[7] = 0x5a;
    assert_int_equal(nf_stack_slot_ptr(&b, 0)[7], 0x5a);
    nf_stack_act(&a, 3)->x[63] = 1.5f;
    assert_true(nf_stack_act(&b, 3)->x[63] == 1.5f);
    atomic_store(&a.ctr->c_step, 42);
    assert_int_equal(atomic_load(&b.ctr->c_step), 42);

    /* Attaching without a model skips the identity check. */
    struct nf_stack c;
    assert_int_equal(nf_stack_attach(&c, name, NULL, err, sizeof(err)), 0);
    nf_stack_detach(&c);

    nf_stack_detach(&b);
    nf_stack_detach(&a);
    assert_null(a.shm.base);
    assert_int_equal(nf_stack_unlink(name), 0);
    assert_false(shm_exists(name));
    assert_int_equal(nf_stack_attach(&b, name, stories, err, sizeof(err)), -ENOENT);
    assert_int_equal(nf_stack_unlink(name), -ENOENT);
}

static void test_attach_refusals(void **state)
{
    struct nf_stack_plan p;
    char err[512];
    assert_int_equal(nf_stack_plan(stories, 256ull << 20, 0, 2, &p, err, sizeof(err)), 0);
    const char *name = uniq_name();
    struct nf_stack a, b;
    create_ok(&a, name, stories, &p);

    /* Another model (same shape, different header checksum or size) is refused. */
    struct nf_nft other = *stories;
    other.hdr.header_checksum ^= 1;
    snprintf(other.path, sizeof(other.path), "/elsewhere/other.nft");
    assert_int_equal(nf_stack_attach(&b, name, &other, err, sizeof(err)), NF_EUSAGE);
    assert_non_null(strstr(err, "was made for"));
    assert_non_null(strstr(err, "other.nft"));
    assert_null(b.shm.base);
    other = *stories;
    other.hdr.file_size += 4096;
    assert_int_equal(nf_stack_attach(&b, name, &other, err, sizeof(err)), NF_EUSAGE);

    /* A damaged config is refused. */
    uint64_t tiles_off = a.cfg->tiles_off;
    a.cfg->tiles_off = a.shm.size;
    assert_int_equal(nf_stack_attach(&b, name, stories, err, sizeof(err)), NF_ECORRUPT);
    assert_non_null(strstr(err, "tiles_off"));
    a.cfg->tiles_off = tiles_off;
    uint32_t count = a.demand->count;
    a.demand->count = 3;
    assert_int_equal(nf_stack_attach(&b, name, stories, err, sizeof(err)), NF_ECORRUPT);
    assert_non_null(strstr(err, "ring"));
    a.demand->count = count;
    assert_int_equal(nf_stack_attach(&b, name, stories, err, sizeof(err)), 0);
    nf_stack_detach(&b);
    atomic_store((_Atomic uint64_t *)&a.cfg->magic, 0x1122334455667788ull);
    assert_int_equal(nf_stack_attach(&b, name, stories, err, sizeof(err)), NF_EBADMAGIC);
    /* Before the creator publishes the config: try again later. */
    atomic_store((_Atomic uint64_t *)&a.cfg->magic, 0);
    assert_int_equal(nf_stack_attach(&b, name, stories, err, sizeof(err)), -EAGAIN);
    nf_stack_detach(&a);
    assert_int_equal(nf_stack_unlink(name), 0);

    /* A plan whose slots are smaller than the model's largest tile is refused at create. */
    struct nf_stack_plan bad = p;
    bad.classes[0].slot_size = 0;
    assert_int_equal(nf_stack_create(&a, name, stories, &bad, 0.0f, 2, err, sizeof(err)),
                     NF_EUSAGE);
    assert_false(shm_exists(name));
}

/* A model shaped like llama-7B Q4_0 as converted (16 of its 32 layers, 200 embedding rows):
 * 11.5 KiB embedding rows and 16 KiB norms, ~0.9-1 MiB attention, FFN and output tiles, and a
 * 3.2 MiB low-rank predictor tile per layer. */
static void make_7b_pred(struct fake_model *m)
{
    fake_init(m, "/models/pred7b.nft", 2000ull << 20, 0x7b7b);
    fake_shape(m, 16, 4096, 11008, 32000, 32, 32);
    add_tiles(m, NF_NFT_NO_LAYER, NF_TILE_EMBD, 200, 11520);
    for (uint32_t l = 0; l < 16; l++) {
        add_tiles(m, l, NF_TILE_ATTN_NORM, 1, 16384);
        add_tiles(m, l, NF_TILE_ATTN_Q, 10, 943718);
        add_tiles(m, l, NF_TILE_ATTN_K, 10, 943718);
        add_tiles(m, l, NF_TILE_ATTN_V, 10, 943718);
        add_tiles(m, l, NF_TILE_ATTN_O, 10, 943718);
        add_tiles(m, l, NF_TILE_FFN_NORM, 1, 16384);
        add_tiles(m, l, NF_TILE_FFN, 86, 884738);
        add_tiles(m, l, NF_TILE_PRED_LOWRANK, 1, 3383296);
    }
    add_tiles(m, NF_NFT_NO_LAYER, NF_TILE_OUTPUT_NORM, 1, 16384);
    add_tiles(m, NF_NFT_NO_LAYER, NF_TILE_OUTPUT, 71, 1038336);
}

static void test_plan_classes(void **state)
{
    static struct fake_model m;
    make_7b_pred(&m);
    struct nf_stack_plan p;
    char err[512] = "";
    int rc = nf_stack_plan(&m.f, 1ull << 30, 512, 2, &p, err, sizeof(err));
    assert_int_equal(rc, 0);
    check_plan(&m.f, &p);
    /* Three classes: small (norms, embedding rows), main (the largest ordinary tile: an
     * output tile), large (the predictor tiles). */
    assert_int_equal(p.n_classes, 3);
    assert_int_equal(p.classes[0].slot_size, 16384);
    assert_int_equal(p.classes[1].slot_size, align_page(1038336));
    assert_int_equal(p.classes[2].slot_size, align_page(3383296));
    assert_int_equal(p.class_tiles[0], 200 + 16 * 2 + 1);
    assert_int_equal(p.class_tiles[1], 16 * (40 + 86) + 71);
    assert_int_equal(p.class_tiles[2], 16);
    /* Minimum: small 2 norms + embedding row + output norm + 2 spare; main 40 attention + 4
     * FFN + output + 2 spare; large: compute's predictor tile + 2 spare (the predictor daemon
     * peeks at the next one while a third loads). */
    assert_int_equal(p.class_min[0], 2 + 1 + 1 + 2);
    assert_int_equal(p.class_min[1], 40 + 4 + 1 + 2);
    assert_int_equal(p.class_min[2], 1 + 2);
    /* The small class keeps everything a step reads there (all norms and a row). */
    assert_true(p.classes[0].n_slots >= 16 * 2 + 1 + 1);
    /* The budget is used: in no class that could take more would another slot fit (a slot
     * also costs its table entry and page tables: 2 * slot_size bounds that). */
    for (uint32_t k = 0; k < p.n_classes; k++)
        if (p.classes[k].n_slots < p.class_tiles[k])
            assert_true(plan_sum(&p) + 2 * p.classes[k].slot_size > p.ram_budget);
    /* Beyond the minimum, the large class's share of the pool follows its share of a step's
     * bytes (16 predictor tiles of 3.2 MiB out of ~1.9 GB), within a slot. */
    double step = 16.0 * align_page(3383296), all = step;
    all += 16.0 * (2 * 16384 + 40 * align_page(943718) + 86 * align_page(884738)) +
           71.0 * align_page(1038336) + 16384 + 12288;
    double extra_large = (double)(p.classes[2].n_slots - p.class_min[2]) * align_page(3383296);
    double extra_main = (double)(p.classes[1].n_slots - p.class_min[1]) * align_page(1038336);
    double want = step / all * (extra_large + extra_main);
    assert_true(extra_large <= want + align_page(3383296) &&
                extra_large + align_page(3383296) >= want);
    /* Against one slot size (the largest tile's), the main class alone holds ~3x the slots. */
    assert_true(p.classes[1].n_slots > 5 * p.pool_bytes / p.classes[2].slot_size / 2);

    /* A budget large enough for the whole model: every class holds all its tiles. */
    rc = nf_stack_plan(&m.f, 8ull << 30, 512, 2, &p, err, sizeof(err));
    assert_int_equal(rc, 0);
    check_plan(&m.f, &p);
    for (uint32_t k = 0; k < p.n_classes; k++)
        assert_int_equal(p.classes[k].n_slots, p.class_tiles[k]);

    /* At the minimum budget every class is at its minimum; one byte less is refused with the
     * minimum pool named class by class. */
    rc = nf_stack_plan(&m.f, 1ull << 30, 512, 2, &p, err, sizeof(err));
    uint64_t min = p.min_budget;
    rc = nf_stack_plan(&m.f, min, 512, 2, &p, err, sizeof(err));
    assert_int_equal(rc, 0);
    check_plan(&m.f, &p);
    for (uint32_t k = 0; k < p.n_classes; k++)
        assert_int_equal(p.classes[k].n_slots, p.class_min[k]);
    rc = nf_stack_plan(&m.f, min - 1, 512, 2, &p, err, sizeof(err));
    assert_int_equal(rc, -ENOSPC);
    assert_non_null(strstr(err, "pool 56 slots: 6 x 16.0 KiB + 47 x 1016.0 KiB + 3 x 3.2 MiB"));

    /* Tiles all alike: one class. */
    make_7b_pred(&m);
    for (uint64_t i = 0; i < m.f.n_tiles; i++)
        m.tiles[i].size = 900000;
    rc = nf_stack_plan(&m.f, 1ull << 30, 512, 2, &p, err, sizeof(err));
    assert_int_equal(rc, 0);
    check_plan(&m.f, &p);
    assert_int_equal(p.n_classes, 1);
}

/* A deepseek-v3-like in-place index cut to 13 layers and 32 experts: a leading dense layer of
 * 100 FFN row slices, 40 attention tiles of 1 MiB a layer, and in the 12 MoE layers a router
 * and its predictor copy of 7.3 MiB each and 32 experts of three slices (7.9, 7.9 and 11.5
 * MiB). The expert slices outnumber the 1 MiB tiles. */
static void make_v3_cut(struct fake_model *m)
{
    fake_init(m, "/models/v3cut.nfi", 40ull << 30, 0x3d3);
    fake_shape(m, 13, 7168, 2048, 129280, 128, 128);
    m->f.hdr.n_expert = 32;
    m->f.hdr.n_expert_used = 8;
    add_tiles(m, NF_NFT_NO_LAYER, NF_TILE_EMBD, 100, 28672);
    const uint64_t mib = 1ull << 20, router = 32ull * 7168 * 4 * 8; /* 7.3 MiB */
    for (uint32_t l = 0; l < 13; l++) {
        add_tiles(m, l, NF_TILE_ATTN_NORM, 1, 28672);
        add_tiles(m, l, NF_TILE_ATTN_O, 40, mib);
        add_tiles(m, l, NF_TILE_FFN_NORM, 1, 28672);
        if (l == 0) {
            add_tiles(m, l, NF_TILE_FFN, 100, mib);
            continue;
        }
        add_tiles(m, l, NF_TILE_ROUTER, 1, router);
        add_tiles(m, l, NF_TILE_PRED_ROUTER, 1, router);
        for (uint32_t e = 0; e < 32; e++) {
            add_tiles(m, l, NF_TILE_EXPERT, 2, 2048ull * 4032);
            add_tiles(m, l, NF_TILE_EXPERT, 1, 7168ull * 1680);
        }
    }
    add_tiles(m, NF_NFT_NO_LAYER, NF_TILE_OUTPUT_NORM, 1, 28672);
    add_tiles(m, NF_NFT_NO_LAYER, NF_TILE_OUTPUT, 50, mib);
    /* Row slices of an in-place index: type[3] names the projection, type[2] is unset. */
    for (uint64_t i = 0; i < m->f.n_tiles; i++)
        if (m->tiles[i].kind == NF_TILE_FFN || m->tiles[i].kind == NF_TILE_EXPERT) {
            m->tiles[i].type[2] = 0;
            m->tiles[i].type[3] = NF_SLICE_GATE;
        }
}

static void test_plan_moe_classes(void **state)
{
    static struct fake_model m;
    make_v3_cut(&m);
    struct nf_stack_plan p;
    char err[512] = "";
    assert_int_equal(nf_stack_plan(&m.f, 1ull << 30, 256, 2, &p, err, sizeof(err)), 0);
    check_plan(&m.f, &p);
    /* The 1 MiB tiles read every step get 1 MiB slots although the expert slices are the
     * majority: small, 1 MiB, and the routers with the experts in 11.5 MiB slots. */
    assert_int_equal(p.n_classes, 3);
    assert_int_equal(p.classes[1].slot_size, 1ull << 20);
    assert_int_equal(p.classes[2].slot_size, align_page(7168ull * 1680));
    assert_int_equal(p.class_tiles[1], 13 * 40 + 100 + 50);
    /* Minimum of the large class: a layer's router and its copy, 4 experts, 2 spare. */
    assert_int_equal(p.class_min[2], 2 + 4 + 2);
    /* Row slices need no down-row scratch in compute. */
    assert_int_equal(p.down_scratch, 0);
    /* The predictor keeps the first layers' routers and norms up to 64 MiB (8 of the 12
     * routers here); the others it reads from the pool. */
    const uint64_t copy = align_page(32ull * 7168 * 4 * 8) + 28672;
    assert_true(p.predictor_private >= NF_STACK_PROC_BYTES + 8 * copy);
    assert_true(p.predictor_private < NF_STACK_PROC_BYTES + (64ull << 20) + (1ull << 20));
}

/* A small model with three tile sizes (8 KiB, 40 KiB-ish and 160 KiB), so its region is small
 * enough to create in a test. */
static void make_small_classes(struct fake_model *m)
{
    fake_init(m, "/models/classes.nft", 64ull << 20, 0x5c);
    fake_shape(m, 4, 256, 512, 512, 4, 4);
    add_tiles(m, NF_NFT_NO_LAYER, NF_TILE_EMBD, 16, 8192);
    for (uint32_t l = 0; l < 4; l++) {
        add_tiles(m, l, NF_TILE_ATTN_NORM, 1, 1024);
        add_tiles(m, l, NF_TILE_ATTN_Q, 4, 160000);
        add_tiles(m, l, NF_TILE_ATTN_O, 4, 163840);
        add_tiles(m, l, NF_TILE_FFN_NORM, 1, 1024);
        add_tiles(m, l, NF_TILE_FFN, 8, 150000);
        add_tiles(m, l, NF_TILE_PRED_LOWRANK, 1, 1000000);
    }
    add_tiles(m, NF_NFT_NO_LAYER, NF_TILE_OUTPUT_NORM, 1, 1024);
    add_tiles(m, NF_NFT_NO_LAYER, NF_TILE_OUTPUT, 4, 160000);
}

static void test_slot_addresses(void **state)
{
    static struct fake_model m;
    make_small_classes(&m);
    struct nf_stack_plan p;
    char err[512] = "";
    assert_int_equal(nf_stack_plan(&m.f, 48ull << 20, 256, 1, &p, err, sizeof(err)), 0);
    check_plan(&m.f, &p);
    assert_int_equal(p.n_classes, 3);
    for (uint32_t k = 0; k < 3; k++)
        assert_true(p.classes[k].n_slots > p.class_min[k]); /* each class got a share */
    const char *name = uniq_name();
    struct nf_stack a, b;
    create_ok(&a, name, &m.f, &p);
    assert_int_equal(nf_stack_attach(&b, name, &m.f, err, sizeof(err)), 0);
    assert_int_equal(nf_stack_pool_bytes(&b), p.pool_bytes);
    uint64_t pool_area = 0;
    nf_shm_area(&b.shm, NF_SHM_TILE_POOL, &pool_area);
    assert_true(p.pool_bytes <= pool_area);
    /* Every slot: in its class's id range, page-aligned, inside the pool, right after the
     * slot before it (so no two overlap); tag the first and last byte of each. */
    const uint8_t *end = b.pool;
    for (uint32_t s = 0; s < b.cfg->n_slots; s++) {
        uint32_t k = nf_stack_slot_class(&b, s);
        const struct nf_stack_class *c = &b.cfg->classes[k];
        assert_true(s >= c->first_slot && s < c->first_slot + c->n_slots);
        uint8_t *ptr = nf_stack_slot_ptr(&b, s);
        uint64_t size = nf_stack_slot_size(&b, s);
        assert_int_equal(size, c->slot_size);
        assert_int_equal((uintptr_t)ptr % 4096, 0);
        assert_ptr_equal(ptr, end);
        end = ptr + size;
        assert_true(end <= b.pool + p.pool_bytes);
        ptr[0] = (uint8_t)s;
        ptr[size - 1] = (uint8_t)(s * 7 + 1);
    }
    assert_ptr_equal(end, b.pool + p.pool_bytes);
    for (uint32_t s = 0; s < a.cfg->n_slots; s++) {
        const uint8_t *ptr = nf_stack_slot_ptr(&a, s);
        assert_int_equal(ptr[0], (uint8_t)s);
        assert_int_equal(ptr[nf_stack_slot_size(&a, s) - 1], (uint8_t)(s * 7 + 1));
    }
    /* Every tile fits the class it goes in. */
    for (uint64_t i = 0; i < m.f.n_tiles; i++) {
        int k = nf_stack_class_of(b.cfg->classes, b.cfg->n_classes, nf_nft_padded(m.tiles[i].size));
        assert_true(k >= 0 && nf_nft_padded(m.tiles[i].size) <= b.cfg->classes[k].slot_size);
    }
    assert_int_equal(nf_stack_class_of(b.cfg->classes, b.cfg->n_classes, 2ull << 20), -1);
    nf_stack_detach(&b);

    /* A corrupt class table is refused, naming the field. */
    static const struct {
        const char *what;
        int field; /* which damage */
    } cases[] = {
        {"n_classes", 0},     {"n_classes", 1},    {"slot_size", 2}, {"slot_size", 3},
        {"n_slots (1", 4},    {"first_slot", 5},   {"pool_off", 6},  {"beyond the pool", 7},
        {"max_slot_size", 8}, {"expected >= ", 9},
    };
    struct nf_stack_config *c = a.cfg;
    struct nf_stack_config saved = *c;
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        switch (cases[i].field) {
        case 0: c->n_classes = 0; break;
        case 1: c->n_classes = NF_STACK_MAX_CLASSES + 1; break;
        case 2: c->classes[1].slot_size += 100; break;                    /* not a page multiple */
        case 3: c->classes[1].slot_size = c->classes[0].slot_size; break; /* not increasing */
        case 4: c->classes[2].n_slots = 0; break;
        case 5: c->classes[1].first_slot++; break;
        case 6: c->classes[2].pool_off += 4096; break;
        case 7:
            c->classes[2].slot_size = (pool_area / 4096 + 1) * 4096;
            c->max_slot_size = c->classes[2].slot_size;
            break;
        case 8: c->max_slot_size += 4096; break;
        case 9: /* the largest class too small for the model's largest tile */
            c->classes[2].slot_size = c->classes[1].slot_size + 4096;
            c->max_slot_size = c->classes[2].slot_size;
            break;
        }
        assert_int_equal(nf_stack_attach(&b, name, &m.f, err, sizeof(err)), NF_ECORRUPT);
        if (!strstr(err, cases[i].what))
            fail_msg("case %zu: \"%s\" not in: %s", i, cases[i].what, err);
        assert_null(b.shm.base);
        *c = saved;
    }
    assert_int_equal(nf_stack_attach(&b, name, &m.f, err, sizeof(err)), 0);
    nf_stack_detach(&b);
    /* A region of the first layout (one slot size) is refused by name. */
    atomic_store((_Atomic uint64_t *)&c->magic, NF_STACK_CONFIG_MAGIC_V1);
    assert_int_equal(nf_stack_attach(&b, name, &m.f, err, sizeof(err)), NF_EBADMAGIC);
    assert_non_null(strstr(err, "older NanoFlow"));
    atomic_store((_Atomic uint64_t *)&c->magic, NF_STACK_CONFIG_MAGIC);
    /* A plan with a damaged class table is refused at create. */
    nf_stack_detach(&a);
    assert_int_equal(nf_stack_unlink(name), 0);
    struct nf_stack_plan bad = p;
    bad.classes[1].n_slots++;
    assert_int_equal(nf_stack_create(&a, name, &m.f, &bad, 0.0f, 1, err, sizeof(err)), NF_EUSAGE);
    bad = p;
    bad.classes[2].slot_size = bad.classes[1].slot_size + 4096;
    assert_int_equal(nf_stack_create(&a, name, &m.f, &bad, 0.0f, 1, err, sizeof(err)), NF_EUSAGE);
    assert_non_null(strstr(err, "largest tile"));
    assert_false(shm_exists(name));
}

/* --- State machine -------------------------------------------------------------------------- */

static uint32_t state_of(struct nf_stack *st, uint32_t id)
{
    return atomic_load(&st->tiles[id].state);
}

static void test_state_machine(void **state)
{
    struct nf_stack_plan p;
    char err[512];
    assert_int_equal(nf_stack_plan(stories, 256ull << 20, 0, 2, &p, err, sizeof(err)), 0);
    assert_true(p.n_slots >= 3 && stories->n_tiles >= 8);
    const char *name = uniq_name();
    struct nf_stack st;
    create_ok(&st, name, stories, &p);
    struct nf_tile_req req;

    /* Predictor asks: EMPTY -> QUEUED, one request; asking again does nothing. */
    assert_int_equal(nf_tile_prefetch(&st, 5, 3, true), 1);
    assert_int_equal(state_of(&st, 5), NF_TILE_QUEUED);
    assert_int_equal(nf_tile_prefetch(&st, 5, 3, true), 0);
    assert_int_equal(nf_ring_sc_dequeue_burst(st.prefetch, &req, 1, NULL), 1);
    assert_int_equal(req.tile, 5);
    assert_int_equal(req.prio, 3);
    assert_int_equal(nf_ring_count(st.prefetch), 0);
    assert_null(nf_tile_try_pin(&st, 5, 1));
    assert_int_equal(st.tiles[5].pins, 0);

    /* Fetcher loads it into slot 1. */
    assert_int_equal(nf_tile_begin_load(&st, 5, 1), 0);
    assert_int_equal(state_of(&st, 5), NF_TILE_LOADING);
    assert_int_equal(st.tiles[5].slot, 1);
    assert_int_equal(st.slots[1].tile, 5);
    assert_int_equal(nf_tile_begin_load(&st, 5, 2), -EALREADY);
    assert_int_equal(nf_tile_begin_load(&st, 6, 1), -EBUSY);
    assert_int_equal(nf_tile_begin_load(&st, 6, (uint32_t)p.n_slots), -EINVAL);
    assert_int_equal(nf_tile_prefetch(&st, 5, 1, false), 0);
    assert_null(nf_tile_try_pin(&st, 5, 1));
    memset(nf_stack_slot_ptr(&st, 1), 0xa5, nf_stack_slot_size(&st, 1));
    uint32_t done = nf_notify_seq(&st.sync->tile_done);
    nf_tile_end_load(&st, 5, true);
    assert_int_equal(state_of(&st, 5), NF_TILE_READY);
    assert_int_not_equal(nf_notify_seq(&st.sync->tile_done), done);

    /* Compute pins it; eviction is refused while pinned, allowed after. */
    const uint8_t *b = nf_tile_try_pin(&st, 5, 77);
    assert_ptr_equal(b, nf_stack_slot_ptr(&st, 1));
    assert_int_equal(b[nf_stack_slot_size(&st, 1) - 1], 0xa5);
    assert_int_equal(st.tiles[5].last_use, 77);
    int rc = 1;
    assert_ptr_equal(nf_tile_pin_wait(&st, 5, 78, 0, &rc), b); /* a second pin */
    assert_int_equal(rc, 0);
    assert_int_equal(st.tiles[5].pins, 2);
    assert_false(nf_slot_try_evict(&st, 1));
    assert_int_equal(state_of(&st, 5), NF_TILE_READY);
    nf_tile_unpin(&st, 5);
    assert_false(nf_slot_try_evict(&st, 1));
    nf_tile_unpin(&st, 5);
    assert_int_equal(atomic_load(&st.ctr->f_evictions), 0);
    assert_true(nf_slot_try_evict(&st, 1));
    assert_int_equal(state_of(&st, 5), NF_TILE_EMPTY);
    assert_int_equal(st.tiles[5].slot, NF_NO_SLOT);
    assert_int_equal(st.slots[1].tile, NF_NO_TILE);
    assert_int_equal(atomic_load(&st.ctr->f_evictions), 1);
    assert_true(nf_slot_try_evict(&st, 1)); /* already free */
    assert_null(nf_tile_try_pin(&st, 5, 1));

    /* A resident slot is never evicted. */
    assert_int_equal(nf_tile_begin_load(&st, 6, 1), 0);
    nf_tile_end_load(&st, 6, true);
    atomic_store(&st.slots[1].flags, NF_SLOT_RESIDENT);
    assert_false(nf_slot_try_evict(&st, 1));
    atomic_store(&st.slots[1].flags, 0);
    assert_true(nf_slot_try_evict(&st, 1));

    /* Compute blocked on an EMPTY tile: a demand request (prio 0), then a timeout. */
    uint64_t stall = atomic_load(&st.ctr->c_stall_ns);
    assert_null(nf_tile_pin_wait(&st, 7, 1, 20, &rc));
    assert_int_equal(rc, -ETIMEDOUT);
    assert_true(atomic_load(&st.ctr->c_stall_ns) > stall);
    assert_int_equal(state_of(&st, 7), NF_TILE_QUEUED);
    assert_int_equal(nf_ring_sc_dequeue_burst(st.demand, &req, 1, NULL), 1);
    assert_int_equal(req.tile, 7);
    assert_int_equal(req.prio, 0);
    /* A tile the predictor queued still gets a demand request (served first). */
    assert_int_equal(nf_tile_prefetch(&st, 4, 2, false), 1);
    assert_null(nf_tile_pin_wait(&st, 4, 1, 5, &rc));
    assert_int_equal(rc, -ETIMEDOUT);
    assert_int_equal(nf_ring_sc_dequeue_burst(st.demand, &req, 1, NULL), 1);
    assert_int_equal(req.tile, 4);
    /* The fetcher drops the prefetch: QUEUED -> EMPTY. */
    assert_true(nf_tile_cancel(&st, 4));
    assert_false(nf_tile_cancel(&st, 4));
    assert_int_equal(state_of(&st, 4), NF_TILE_EMPTY);
    assert_int_equal(nf_ring_sc_dequeue_burst(st.prefetch, &req, 1, NULL), 1);

    /* A failed read: compute gets the fetcher's code, the slot is free again. */
    assert_int_equal(nf_tile_begin_load(&st, 7, 2), 0);
    nf_tile_fail(&st, 7, NF_ECHECKSUM);
    assert_int_equal(state_of(&st, 7), NF_TILE_ERROR);
    assert_int_equal(st.slots[2].tile, NF_NO_TILE);
    assert_int_equal(nf_tile_error(&st, 7), NF_ECHECKSUM);
    assert_null(nf_tile_pin_wait(&st, 7, 1, -1, &rc));
    assert_int_equal(rc, NF_ECHECKSUM);
    assert_int_equal(nf_tile_begin_load(&st, 7, 2), -EALREADY);
    assert_int_equal(nf_tile_begin_load(&st, 3, 2), 0);
    nf_tile_end_load(&st, 3, false);
    assert_null(nf_tile_pin_wait(&st, 3, 1, -1, &rc));
    assert_int_equal(rc, -EIO);
    assert_int_equal(nf_tile_error(&st, 5), 0);

    /* A full prefetch ring: -ENOBUFS and the tile stays EMPTY. */
    struct nf_tile_req fill = {.tile = 0, .prio = 9};
    while (nf_ring_sp_enqueue_bulk(st.prefetch, &fill, 1, NULL) == 1)
        ;
    assert_int_equal(nf_tile_prefetch(&st, 2, 1, false), -ENOBUFS);
    assert_int_equal(state_of(&st, 2), NF_TILE_EMPTY);

    /* A daemon found dead ends a pin wait with -EOWNERDEAD (daemons/common/live.c). */
    atomic_store(&st.sync->dead_mask, NF_READY_FETCHER);
    assert_null(nf_tile_pin_wait(&st, 2, 1, -1, &rc));
    assert_int_equal(rc, -EOWNERDEAD);
    atomic_store(&st.sync->dead_mask, 0);
    /* Stopping wakes a blocked pin with -ECANCELED. */
    atomic_store(&st.sync->stop, 1);
    assert_null(nf_tile_pin_wait(&st, 2, 1, -1, &rc));
    assert_int_equal(rc, -ECANCELED);
    /* Out of range ids. */
    assert_null(nf_tile_pin_wait(&st, (uint32_t)stories->n_tiles, 1, 0, &rc));
    assert_int_equal(rc, -EINVAL);
    assert_int_equal(nf_tile_prefetch(&st, (uint32_t)stories->n_tiles, 1, false), -EINVAL);
    assert_null(nf_tile_try_pin(&st, UINT32_MAX, 1));

    nf_stack_detach(&st);
    assert_int_equal(nf_stack_unlink(name), 0);
}

/* --- Stress: a fetcher serving demand and prefetch requests through a tiny pool, evicting
 * aggressively, against a compute side that pins random tiles and checks their bytes. ------ */

#define STRESS_TILES   48
#define STRESS_SLOTS   6
#define STRESS_HOLD    3 /* pins compute holds at once (< slots, so the fetcher can progress) */
#define STRESS_PINS    20000
#define STRESS_SECONDS 20

static uint64_t rng_next(uint64_t *s)
{
    *s ^= *s << 13;
    *s ^= *s >> 7;
    *s ^= *s << 17;
    return *s;
}

/* Fills the slot with the tile id (as 32-bit words): the bytes say which tile they are. */
static void fill_pattern(uint8_t *p, uint64_t size, uint32_t id)
{
    for (uint64_t i = 0; i + 4 <= size; i += 4)
        memcpy(p + i, &id, 4);
}

static bool pattern_ok(const uint8_t *p, uint64_t size, uint32_t id)
{
    for (uint64_t i = 0; i + 4 <= size; i += 4) {
        uint32_t v;
        memcpy(&v, p + i, 4);
        if (v != id)
            return false;
    }
    return true;
}

/* Picks a free slot, evicting (round robin from a random start) when none is free. */
static int fetcher_slot(struct nf_stack *st, uint64_t *rng)
{
    uint32_t n = (uint32_t)st->cfg->n_slots;
    for (uint32_t s = 0; s < n; s++)
        if (atomic_load_explicit(&st->slots[s].tile, memory_order_relaxed) == NF_NO_TILE)
            return (int)s;
    uint32_t start = (uint32_t)(rng_next(rng) % n);
    for (uint32_t k = 0; k < n; k++)
        if (nf_slot_try_evict(st, (start + k) % n))
            return (int)((start + k) % n);
    return -1;
}

/* Loads one tile; returns 0, 1 when no slot is available now, or a negative code. */
static int fetcher_load(struct nf_stack *st, uint32_t id, uint64_t *rng)
{
    uint32_t s = atomic_load(&st->tiles[id].state);
    if (s != NF_TILE_EMPTY && s != NF_TILE_QUEUED)
        return 0; /* a stale or duplicate request */
    int slot = fetcher_slot(st, rng);
    if (slot < 0)
        return 1;
    int rc = nf_tile_begin_load(st, id, (uint32_t)slot);
    if (rc == -EALREADY)
        return 0;
    if (rc < 0)
        return rc;
    fill_pattern(nf_stack_slot_ptr(st, (uint32_t)slot), nf_stack_slot_size(st, (uint32_t)slot), id);
    nf_tile_end_load(st, id, true);
    /* Aggressive: also evict another random slot right away. */
    uint32_t other = (uint32_t)(rng_next(rng) % st->cfg->n_slots);
    if (other != (uint32_t)slot)
        nf_slot_try_evict(st, other);
    return 0;
}

/* The fetcher loop: demand requests first, prefetches only into free slots (else dropped
 * with nf_tile_cancel), sleeps on fetch_bell when idle. Returns 0 or a negative code. */
static int fetcher_run(struct nf_stack *st)
{
    uint64_t rng = 0x9e3779b97f4a7c15ull ^ (uint64_t)getpid();
    struct nf_tile_req pending[64];
    unsigned n_pending = 0;
    while (!atomic_load(&st->sync->stop)) {
        uint32_t seen = nf_notify_seq(&st->sync->fetch_bell);
        n_pending +=
            nf_ring_sc_dequeue_burst(st->demand, pending + n_pending, 64 - n_pending, NULL);
        unsigned keep = 0;
        for (unsigned i = 0; i < n_pending; i++) {
            if (pending[i].tile >= st->cfg->n_tiles)
                return -EINVAL;
            int rc = fetcher_load(st, pending[i].tile, &rng);
            if (rc < 0)
                return rc;
            if (rc == 1)
                pending[keep++] = pending[i];
        }
        n_pending = keep;
        struct nf_tile_req req;
        bool busy = n_pending > 0;
        while (nf_ring_sc_dequeue_burst(st->prefetch, &req, 1, NULL) == 1) {
            busy = true;
            if (req.tile >= st->cfg->n_tiles)
                return -EINVAL;
            bool free_slot = false;
            for (uint32_t s = 0; s < st->cfg->n_slots && !free_slot; s++)
                free_slot = atomic_load(&st->slots[s].tile) == NF_NO_TILE;
            if (free_slot) {
                int rc = fetcher_load(st, req.tile, &rng);
                if (rc < 0)
                    return rc;
            } else {
                nf_tile_cancel(st, req.tile);
            }
        }
        if (n_pending) {
            sched_yield(); /* every slot pinned: compute will unpin soon */
        } else if (!busy) {
            /* Idle: keep evicting whatever is unpinned for a while, to race compute's pins,
             * then sleep until the next request. */
            for (int k = 0; k < 256 && nf_ring_count(st->demand) == 0; k++) {
                nf_slot_try_evict(st, (uint32_t)(rng_next(&rng) % st->cfg->n_slots));
                for (volatile int d = 0; d < 100; d++)
                    ;
            }
            nf_notify_wait(&st->sync->fetch_bell, seen, 1);
        }
    }
    return 0;
}

static void *fetcher_thread(void *arg)
{
    intptr_t rc = fetcher_run(arg);
    return (void *)rc;
}

/* Compute (and predictor) side: pins random tiles, holds a few, checks every byte. */
static void compute_run(struct nf_stack *st, int n_pins)
{
    uint64_t rng = 12345;
    uint32_t held[STRESS_HOLD];
    int n_held = 0;
    time_t t_end = time(NULL) + STRESS_SECONDS;
    for (int i = 0; i < n_pins && time(NULL) < t_end; i++) {
        if (rng_next(&rng) % 4 == 0) /* play predictor too */
            nf_tile_prefetch(st, (uint32_t)(rng_next(&rng) % STRESS_TILES), 1, true);
        if (n_held == STRESS_HOLD || (n_held > 0 && rng_next(&rng) % 2)) {
            int k = (int)(rng_next(&rng) % (uint64_t)n_held);
            uint32_t slot = atomic_load(&st->tiles[held[k]].slot);
            const uint8_t *b = nf_stack_slot_ptr(st, slot);
            /* Still intact while pinned, whatever the fetcher evicted meanwhile. */
            if (!pattern_ok(b, nf_stack_slot_size(st, slot), held[k]))
                fail_msg("tile %u changed while pinned", held[k]);
            nf_tile_unpin(st, held[k]);
            held[k] = held[--n_held];
            continue;
        }
        uint32_t id = (uint32_t)(rng_next(&rng) % STRESS_TILES);
        int rc = 0;
        const uint8_t *b = nf_tile_pin_wait(st, id, (uint64_t)i, 10000, &rc);
        if (!b)
            fail_msg("pin_wait tile %u: %s", id, nf_strerror(rc));
        if (!pattern_ok(b, nf_stack_slot_size(st, atomic_load(&st->tiles[id].slot)), id))
            fail_msg("tile %u: slot bytes belong to another tile", id);
        held[n_held++] = id;
    }
    while (n_held > 0)
        nf_tile_unpin(st, held[--n_held]);
}

/* A region with STRESS_TILES one-page tiles and STRESS_SLOTS slots. */
static void stress_region(struct nf_stack *st, const char *name, struct fake_model *m)
{
    fake_init(m, "stress.nft", 1 << 20, 77);
    fake_shape(m, 4, 64, 128, 256, 4, 4);
    for (uint32_t l = 0; l < 4; l++)
        add_tiles(m, l, NF_TILE_ATTN_Q, STRESS_TILES / 4, 4096);
    struct nf_stack_plan p;
    char err[512];
    assert_int_equal(nf_stack_plan(&m->f, 256ull << 20, 256, 1, &p, err, sizeof(err)), 0);
    assert_int_equal(p.n_classes, 1); /* one-page tiles: one class */
    p.n_slots = STRESS_SLOTS;
    p.classes[0].n_slots = STRESS_SLOTS;
    create_ok(st, name, &m->f, &p);
}

static void test_stress_processes(void **state)
{
    static struct fake_model m;
    const char *name = uniq_name();
    struct nf_stack st;
    stress_region(&st, name, &m);
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        prctl(PR_SET_PDEATHSIG, SIGKILL); /* never outlive a failed test */
        struct nf_stack fs;
        char err[512];
        int rc = nf_stack_attach(&fs, name, &m.f, err, sizeof(err));
        if (rc == 0)
            rc = fetcher_run(&fs);
        else
            fprintf(stderr, "child attach: %s\n", err);
        _exit(rc == 0 ? 0 : 1);
    }
    compute_run(&st, STRESS_PINS);
    atomic_store(&st.sync->stop, 1);
    nf_notify_wake(&st.sync->fetch_bell);
    int status = 0;
    assert_int_equal(waitpid(pid, &status, 0), pid);
    assert_true(WIFEXITED(status));
    assert_int_equal(WEXITSTATUS(status), 0);
    /* The test exercised eviction (the pool is far smaller than the tiles). */
    print_message("stress (processes): %llu evictions, %.1f ms stalled\n",
                  (unsigned long long)atomic_load(&st.ctr->f_evictions),
                  (double)atomic_load(&st.ctr->c_stall_ns) / 1e6);
    assert_true(atomic_load(&st.ctr->f_evictions) > 100);
    for (uint32_t i = 0; i < STRESS_TILES; i++)
        assert_int_equal(st.tiles[i].pins, 0);
    nf_stack_detach(&st);
    assert_int_equal(nf_stack_unlink(name), 0);
}

/* The same with the fetcher on a thread, so ThreadSanitizer (NF_TSAN) sees both sides. */
static void test_stress_threads(void **state)
{
    static struct fake_model m;
    const char *name = uniq_name();
    struct nf_stack st, fs;
    stress_region(&st, name, &m);
    char err[512];
    assert_int_equal(nf_stack_attach(&fs, name, &m.f, err, sizeof(err)), 0);
    pthread_t th;
    assert_int_equal(pthread_create(&th, NULL, fetcher_thread, &fs), 0);
    compute_run(&st, STRESS_PINS / 4);
    atomic_store(&st.sync->stop, 1);
    nf_notify_wake(&st.sync->fetch_bell);
    void *ret = NULL;
    assert_int_equal(pthread_join(th, &ret), 0);
    assert_int_equal((intptr_t)ret, 0);
    print_message("stress (threads): %llu evictions, %.1f ms stalled\n",
                  (unsigned long long)atomic_load(&st.ctr->f_evictions),
                  (double)atomic_load(&st.ctr->c_stall_ns) / 1e6);
    assert_true(atomic_load(&st.ctr->f_evictions) > 10);
    nf_stack_detach(&fs);
    nf_stack_detach(&st);
    assert_int_equal(nf_stack_unlink(name), 0);
}

static void test_no_leftovers(void **state)
{
    for (int i = 0; i < n_names; i++)
        if (shm_exists(names[i]))
            fail_msg("%s left in /dev/shm", names[i]);
}

/* KV block tiles (issue 15): with the KV cache on disk the plan gives their blocks a class of
 * their own past the weights' (the window's share of the budget), the region numbers them past
 * the .nft's tiles, and a pin refuses a copy read at an older generation than its block's: it
 * asks the fetcher (NF_TILE_REQ_STALE on the demand ring) to evict it and read it again. */
static void test_kv_tiles(void **state)
{
    (void)state;
    struct nf_stack_plan p, ram;
    char err[512];
    assert_int_equal(nf_stack_plan_kv(stories, 64ull << 20, 128, 1, 1, 0, NF_TYPE_F16, NF_TYPE_F16,
                                      0, &ram, err, sizeof(err)),
                     0);
    assert_int_equal(ram.kv_tiles, 0);
    assert_int_equal(nf_stack_plan_kv(stories, 64ull << 20, 128, 1, 1, 0, NF_TYPE_F16, NF_TYPE_F16,
                                      4, &p, err, sizeof(err)),
                     0);
    /* 1 sequence x 5 layers x K and V x 32 blocks of 4 positions; rows of 4 heads of 8 f16 */
    assert_int_equal(p.kv_n_blk, 32);
    assert_int_equal(p.kv_tiles, 1 * 5 * 2 * 32);
    assert_int_equal(p.kv_row_k, 64);
    assert_int_equal(p.kv_row_v, 64);
    const struct nf_stack_class *kc = &p.classes[p.n_classes];
    assert_true(p.n_classes < NF_STACK_MAX_CLASSES);
    assert_int_equal(kc->slot_size, 4096); /* 256 bytes, a page */
    assert_int_equal(kc->n_slots, nf_kv_file_window_blocks(128, 4, 128));
    assert_int_equal(kc->first_slot + kc->n_slots, p.n_slots);
    assert_int_equal(kc->pool_off + kc->n_slots * kc->slot_size, p.pool_bytes);

    const char *name = uniq_name();
    struct nf_stack fe, cp; /* the fetcher's view and compute's */
    create_ok(&fe, name, stories, &p);
    assert_int_equal(nf_stack_attach(&cp, name, stories, err, sizeof(err)), 0);
    assert_int_equal(cp.cfg->kv_tiles, p.kv_tiles);
    assert_int_equal(nf_stack_pool_classes(cp.cfg), p.n_classes + 1);
    assert_int_equal(nf_stack_pool_bytes(&cp), p.pool_bytes);
    const uint32_t slot = (uint32_t)kc->first_slot + 2;
    assert_int_equal(nf_stack_slot_class(&cp, slot), p.n_classes);
    assert_ptr_equal(nf_stack_slot_ptr(&cp, slot), cp.pool + kc->pool_off + 2 * 4096);
    const uint32_t id = nf_stack_kv_tile(cp.cfg, 0, 2, 1, 3);
    assert_int_equal(id, stories->n_tiles + (2 * 2 + 1) * 32 + 3);
    assert_int_equal(nf_stack_n_ids(cp.cfg), stories->n_tiles + p.kv_tiles);

    /* Not durable until compute says so; then the fetcher reads it at generation 0. */
    assert_int_equal(nf_kv_tile_word(&fe, id), 0);
    nf_kv_tile_durable(&cp, id);
    assert_int_equal(nf_kv_tile_word(&fe, id), 1);
    assert_int_equal(nf_tile_request(&cp, id, true), 1);
    struct nf_tile_req req;
    assert_int_equal(nf_ring_sc_dequeue_burst(fe.demand, &req, 1, NULL), 1);
    assert_int_equal(req.tile, id);
    assert_int_equal(req.prio, 0);
    assert_int_equal(nf_tile_begin_load(&fe, id, slot), 0);
    memset(nf_stack_slot_ptr(&fe, slot), 'A', 256);
    nf_kv_tile_set_read_gen(&fe, id, nf_kv_tile_word(&fe, id) >> 1);
    nf_tile_end_load(&fe, id, true);
    int rc = 0;
    const uint8_t *q = nf_kv_tile_pin_wait(&cp, id, 1, 1000, &rc);
    assert_non_null(q);
    assert_int_equal(q[255], 'A');
    nf_tile_unpin(&cp, id);
    assert_false(nf_kv_tile_stale(&fe, id));

    /* A rollback rewrites the block: a new generation, not durable, then durable again. The
     * pool's copy is stale: a pin is refused and asks for a new read (nobody serves it here:
     * the wait times out), never returning the old bytes. */
    nf_kv_tile_invalidate(&cp, id);
    assert_int_equal(nf_kv_tile_word(&fe, id), 2);
    assert_true(nf_kv_tile_stale(&fe, id));
    nf_kv_tile_durable(&cp, id);
    assert_int_equal(nf_kv_tile_word(&fe, id), 3);
    assert_null(nf_kv_tile_pin_wait(&cp, id, 2, 30, &rc));
    assert_int_equal(rc, -ETIMEDOUT);
    assert_int_equal(cp.tiles[id].pins, 0);
    assert_true(nf_ring_sc_dequeue_burst(fe.demand, &req, 1, NULL) == 1);
    assert_int_equal(req.tile, id);
    assert_int_equal(req.prio, NF_TILE_REQ_STALE);
    while (nf_ring_sc_dequeue_burst(fe.demand, &req, 1, NULL) == 1) /* (asked each slice) */
        assert_int_equal(req.tile, id);
    /* The fetcher evicts it and reads the new generation: the pin gets those bytes. */
    assert_true(nf_slot_try_evict(&fe, slot));
    assert_int_equal(state_of(&fe, id), NF_TILE_EMPTY);
    assert_int_equal(nf_tile_begin_load(&fe, id, slot), 0);
    memset(nf_stack_slot_ptr(&fe, slot), 'B', 256);
    nf_kv_tile_set_read_gen(&fe, id, nf_kv_tile_word(&fe, id) >> 1);
    nf_tile_end_load(&fe, id, true);
    q = nf_kv_tile_pin_wait(&cp, id, 3, 1000, &rc);
    assert_non_null(q);
    assert_int_equal(q[0], 'B');
    nf_tile_unpin(&cp, id);
    /* Weight tile ids are not KV tiles. */
    assert_null(nf_kv_tile_pin_wait(&cp, 0, 3, 0, &rc));
    assert_int_equal(rc, -EINVAL);
    nf_stack_detach(&cp);
    nf_stack_detach(&fe);
    assert_int_equal(nf_stack_unlink(name), 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_plan_stories),     cmocka_unit_test(test_plan_seq),
        cmocka_unit_test(test_plan_handmade),    cmocka_unit_test(test_plan_predictor_share),
        cmocka_unit_test(test_plan_ubatch),      cmocka_unit_test(test_plan_classes),
        cmocka_unit_test(test_plan_moe_classes), cmocka_unit_test(test_slot_addresses),
        cmocka_unit_test(test_create_attach),    cmocka_unit_test(test_attach_refusals),
        cmocka_unit_test(test_state_machine),    cmocka_unit_test(test_stress_processes),
        cmocka_unit_test(test_stress_threads),   cmocka_unit_test(test_kv_tiles),
        cmocka_unit_test(test_no_leftovers),
    };
    return cmocka_run_group_tests(tests, setup_all, teardown_all);
}
