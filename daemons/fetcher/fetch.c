/* fetch.c - the fetch loop: requests in, slots chosen, whole-tile reads out, checksums checked. */
#include "fetch.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <unistd.h>
#include <xxhash.h>

#include "daemon.h"
#include "nf_err.h"
#include "nft.h"
#include "nf_time.h"

#define PEND_DEMAND       1u
#define PEND_PREFETCH     2u
#define PEND_STALE        4u /* its prefetch read was withdrawn after it started: free on landing */
#define PEND_KV_PUSHED    8u /* a KV tile the predictor's push read, not evicted yet */
#define REQ_BURST         64u
#define SOON_US           200 /* reads in flight and room for more: look at the rings this often */
#define DEMAND_RETRY_MS   1   /* a demand waits for a slot: compute unpins within microseconds */
#define PREFETCH_RETRY_MS 20  /* a prefetch waits for compute to move on */
#define IDLE_MS           1000 /* nothing to do: sleep on fetch_bell (this bounds how stale cur gets) */

static void kv_evict_stale(struct nf_fetcher *ft, uint32_t id);
static void kv_count_pushed(struct nf_fetcher *ft, uint32_t id, bool unused);
static void kv_describe(const struct nf_fetcher *ft, uint32_t id, char *out, size_t len);

/* --- prefetch heap: min-heap of tile ids by (prio, seq), with each tile's position --------- */

static bool heap_less(const struct nf_fetcher *ft, uint32_t a, uint32_t b)
{
    if (ft->prio[a] != ft->prio[b])
        return ft->prio[a] < ft->prio[b];
    return ft->seq[a] < ft->seq[b];
}

static void heap_set(struct nf_fetcher *ft, uint32_t pos, uint32_t id)
{
    ft->heap[pos] = id;
    ft->heap_pos[id] = pos;
}

static void heap_up(struct nf_fetcher *ft, uint32_t pos)
{
    uint32_t id = ft->heap[pos];
    while (pos > 0) {
        uint32_t parent = (pos - 1) / 2;
        if (!heap_less(ft, id, ft->heap[parent]))
            break;
        heap_set(ft, pos, ft->heap[parent]);
        pos = parent;
    }
    heap_set(ft, pos, id);
}

static void heap_down(struct nf_fetcher *ft, uint32_t pos)
{
    uint32_t id = ft->heap[pos];
    for (;;) {
        uint32_t l = 2 * pos + 1, r = l + 1, m = pos;
        uint32_t best = id;
        if (l < ft->heap_len && heap_less(ft, ft->heap[l], best)) {
            m = l;
            best = ft->heap[l];
        }
        if (r < ft->heap_len && heap_less(ft, ft->heap[r], best))
            m = r;
        if (m == pos)
            break;
        heap_set(ft, pos, ft->heap[m]);
        pos = m;
    }
    heap_set(ft, pos, id);
}

static void heap_remove(struct nf_fetcher *ft, uint32_t id)
{
    uint32_t pos = ft->heap_pos[id];
    /* Every caller names a pending prefetch (PEND_PREFETCH: in the heap, at heap_pos). */
    NF_ASSERT((ft->pend[id] & PEND_PREFETCH) && pos < ft->heap_len && ft->heap[pos] == id);
    ft->heap_len--;
    if (pos != ft->heap_len) {
        heap_set(ft, pos, ft->heap[ft->heap_len]);
        heap_down(ft, pos);
        heap_up(ft, ft->heap_pos[ft->heap[pos]]);
    }
    ft->pend[id] &= (uint8_t)~PEND_PREFETCH;
}

static void heap_push(struct nf_fetcher *ft, uint32_t id, uint32_t prio)
{
    if (ft->pend[id] & PEND_PREFETCH) { /* already pending: keep the sooner priority */
        if (prio < ft->prio[id]) {
            ft->prio[id] = prio;
            heap_up(ft, ft->heap_pos[id]);
        }
        return;
    }
    ft->prio[id] = prio;
    ft->seq[id] = ft->next_seq++;
    ft->pend[id] |= PEND_PREFETCH;
    heap_set(ft, ft->heap_len++, id);
    heap_up(ft, ft->heap_len - 1);
}

/* --- diagnostics --------------------------------------------------------------------------- */

static uint32_t kind_of(const struct nf_fetcher *ft, uint32_t id)
{
    if (id >= ft->n_tiles)
        return NF_FETCH_KIND_KV;
    uint32_t k = ft->f->tiles[id].kind;
    return k < NF_FETCH_KIND_KV ? k : NF_FETCH_KIND_KV - 1;
}

/* Accounts the time since the last change of in_flight (call before changing it). */
static void diag_qd(struct nf_fetcher *ft)
{
    uint64_t now = nf_now_ns();
    if (ft->in_flight > 0 && ft->diag.qd_at_ns) {
        ft->diag.qd_ns += (now - ft->diag.qd_at_ns) * ft->in_flight;
        ft->diag.busy_ns += now - ft->diag.qd_at_ns;
        if (ft->in_flight == ft->o.qd)
            ft->diag.full_ns += now - ft->diag.qd_at_ns;
    }
    ft->diag.qd_at_ns = now;
}

/* The calling thread's time on a CPU and waiting on a run queue (ns), from
 * /proc/thread-self/schedstat; false when it cannot be read (no schedstats in the kernel). */
static bool sched_times(uint64_t *run_ns, uint64_t *wait_ns)
{
    FILE *fp = fopen("/proc/thread-self/schedstat", "r");
    if (!fp)
        return false;
    unsigned long long run = 0, wait = 0;
    bool ok = fscanf(fp, "%llu %llu", &run, &wait) == 2;
    fclose(fp);
    *run_ns = run;
    *wait_ns = wait;
    return ok;
}

/* Gives the calling (fetch) thread nice value nice (0: nothing changed). A thread's nice only
 * orders it against the threads of its scheduling group: where the kernel groups processes by
 * session (CONFIG_SCHED_AUTOGROUP, on by default in Debian's kernels), every session first gets
 * an equal share of the CPUs, so the nice of the fetcher's own session's group is set too when
 * the fetcher leads its session (detached), never the group of a session it shares. */
static void set_nice(int nice)
{
    if (nice == 0)
        return;
    /* A nice value is per thread on Linux (the tid as a PRIO_PROCESS who). */
    if (setpriority(PRIO_PROCESS, (id_t)gettid(), nice) != 0) {
        /* Not privileged: as before, only slower on a busy machine. */
        nf_log(NF_LOG_INFO, "cannot set the fetch thread's nice value to %d: %s (left as is)", nice,
               strerror(errno));
        return;
    }
    /* No autogroups (fopen fails): the thread's nice is all there is. */
    FILE *fp = getsid(0) == getpid() ? fopen("/proc/self/autogroup", "w") : NULL;
    bool group = false;
    if (fp) {
        group = fprintf(fp, "%d", nice) > 0;
        group = fclose(fp) == 0 && group;
        if (!group)
            nf_log(NF_LOG_INFO, "cannot set the fetcher's autogroup nice value to %d: %s", nice,
                   strerror(errno));
    }
    nf_log(NF_LOG_INFO, "fetch thread at nice %d%s", nice, group ? ", its session group too" : "");
}

/* Logs where the bytes went (at exit): per kind, reads by demand and by prefetch, megabytes,
 * evictions and those of tiles compute never pinned after their read (wasted reads). */
static void diag_log(const struct nf_fetcher *ft)
{
    const struct nf_fetch_diag *d = &ft->diag;
    const struct nf_stack_counters *ctr = ft->st->ctr;
    uint64_t toks = atomic_load(&ctr->c_prompt_tokens) + atomic_load(&ctr->c_decode_tokens);
    nf_log(NF_LOG_INFO,
           "reads: %" PRIu64 " tokens evaluated; %.2f reads in flight on average while busy "
           "(%.3f s); checksums %.3f s; %" PRIu64 " prefetches dropped (compute had passed "
           "them or did not choose them, or the predictor withdrew them: %" PRIu64
           "; withdrawn after their read started, slot freed on landing: %" PRIu64 "); %" PRIu64
           " loads waited for a slot; %" PRIu64
           " evictions for prefetches; compute stalled %.3f s of %.3f s",
           toks, d->busy_ns ? (double)d->qd_ns / (double)d->busy_ns : 0.0, d->busy_ns * 1e-9,
           d->checksum_ns * 1e-9, d->dropped, d->plan_dropped, d->plan_released, d->no_slot,
           d->evict_by_prefetch, atomic_load(&ctr->c_stall_ns) * 1e-9,
           (atomic_load(&ctr->c_prompt_ns) + atomic_load(&ctr->c_decode_ns)) * 1e-9);
    nf_log(NF_LOG_INFO,
           "reads: time all %u reads in flight %.3f s; none in flight with requests waiting "
           "for a slot %.3f s, with nothing to read %.3f s; %.2f completions per reap; fetch "
           "thread on a CPU %.3f s, waiting for a CPU %.3f s",
           ft->o.qd, d->full_ns * 1e-9, d->starved_ns * 1e-9, d->idle_ns * 1e-9,
           d->reaps ? (double)d->reaped / (double)d->reaps : 0.0, d->sched_run_ns * 1e-9,
           d->sched_wait_ns * 1e-9);
    if (ft->n_kv)
        nf_log(NF_LOG_INFO,
               "reads: KV tiles asked for before their block was durable %" PRIu64
               ", read again at a new generation %" PRIu64,
               d->kv_refused, d->kv_stale);
    for (uint32_t k = 0; k < NF_FETCH_KINDS; k++) {
        if (!d->demand_reads[k] && !d->prefetch_reads[k] && !d->evictions[k])
            continue;
        nf_log(NF_LOG_INFO,
               "reads: %-12s demand %6" PRIu64 " prefetch %6" PRIu64 " MB %9.1f evicted %6" PRIu64
               " of which unused %6" PRIu64,
               k == NF_FETCH_KIND_KV ? "kv" : nf_tile_kind_name((enum nf_tile_kind)k),
               d->demand_reads[k], d->prefetch_reads[k], d->bytes[k] / 1e6, d->evictions[k],
               d->wasted[k]);
    }
}

/* --- free slots ----------------------------------------------------------------------------- */

/* Puts slot back on its class's free stack. */
static void push_free(struct nf_fetcher *ft, uint32_t slot)
{
    uint32_t k = nf_stack_slot_class(ft->st, slot);
    const struct nf_stack_class *c = &ft->st->cfg->classes[k];
    /* A slot is pushed once per time it becomes free: more than the class holds would be a
     * slot freed twice, and would spill into the next class's stack. */
    NF_ASSERT(ft->n_free[k] < c->n_slots);
    ft->free_slots[(uint32_t)c->first_slot + ft->n_free[k]++] = slot;
}

/* A free slot of class k, or NF_NO_SLOT. */
static uint32_t pop_free(struct nf_fetcher *ft, uint32_t k)
{
    if (ft->n_free[k] == 0)
        return NF_NO_SLOT;
    uint32_t first = (uint32_t)ft->st->cfg->classes[k].first_slot;
    return ft->free_slots[first + --ft->n_free[k]];
}

/* --- setup ---------------------------------------------------------------------------------- */

int nf_fetch_init(struct nf_fetcher *ft, struct nf_stack *st, const struct nf_nft *f,
                  const struct nf_fetch_opts *o, char *err, size_t errlen)
{
    memset(ft, 0, sizeof(*ft));
    ft->kv_fd = -1;
    ft->st = st;
    ft->f = f;
    ft->o = *o;
    if (ft->o.qd == 0)
        ft->o.qd = 16;
    if (ft->o.inflight == 0)
        ft->o.inflight = NF_FETCH_INFLIGHT;
    ft->n_tiles = (uint32_t)st->cfg->n_tiles;
    ft->n_kv = (uint32_t)st->cfg->kv_tiles;
    ft->n_ids = ft->n_tiles + ft->n_kv;
    ft->kv_cur = ft->n_tiles;
    ft->n_slots = (uint32_t)st->cfg->n_slots;
    uint32_t nt = ft->n_ids ? ft->n_ids : 1, nl = f->hdr.n_layer;
    ft->pend = calloc(nt, 1);
    ft->dq = calloc(nt, sizeof(*ft->dq));
    ft->heap = calloc(nt, sizeof(*ft->heap));
    ft->heap_pos = calloc(nt, sizeof(*ft->heap_pos));
    ft->prio = calloc(nt, sizeof(*ft->prio));
    ft->seq = calloc(nt, sizeof(*ft->seq));
    ft->logged = calloc(nt, 1);
    ft->free_slots = calloc(ft->n_slots ? ft->n_slots : 1, sizeof(*ft->free_slots));
    ft->ios = calloc(ft->o.qd, sizeof(*ft->ios));
    ft->io_free = calloc(ft->o.qd, sizeof(*ft->io_free));
    ft->done = calloc(ft->o.qd, sizeof(*ft->done));
    ft->loaded = calloc(ft->o.qd, sizeof(*ft->loaded));
    ft->layer_first = calloc((size_t)nl + 1, sizeof(*ft->layer_first));
    if (!ft->pend || !ft->dq || !ft->heap || !ft->heap_pos || !ft->prio || !ft->seq ||
        !ft->logged || !ft->free_slots || !ft->ios || !ft->io_free || !ft->done || !ft->loaded ||
        !ft->layer_first) {
        snprintf(err, errlen, "out of memory for the fetcher's tables (%u tiles, %u slots)",
                 ft->n_tiles, ft->n_slots);
        nf_fetch_free(ft);
        return -ENOMEM;
    }
    /* Slots free in a fresh region: all. Pushed in reverse so each class's first slot is
     * used first. */
    for (uint32_t s = ft->n_slots; s-- > 0;)
        if (atomic_load(&st->slots[s].tile) == NF_NO_TILE)
            push_free(ft, s);
    for (uint32_t i = ft->o.qd; i-- > 0;)
        ft->io_free[ft->n_io_free++] = i;
    /* First tile id of each layer (ids follow use order); [n_layer]: the first tile after the
     * last layer (output norm and output). */
    for (uint32_t l = 0; l <= nl; l++)
        ft->layer_first[l] = ft->n_tiles;
    for (uint32_t i = ft->n_tiles; i-- > 0;) {
        uint32_t l = f->tiles[i].layer;
        if (l < nl)
            ft->layer_first[l] = i;
        else if (i > 0 && f->tiles[i - 1].layer < nl)
            ft->layer_first[nl] = i;
    }
    /* The resident set: at most half of each class, less where the rest would fall below the
     * class's minimum working set (nf_cache_limits); its layers spread in sparse mode. */
    const struct nf_stack_config *cfg = st->cfg;
    uint32_t max_res[NF_STACK_MAX_CLASSES] = {0};
    int rc = nf_cache_init_nft(&ft->cache, f, cfg->classes, cfg->n_classes, o->class_min,
                               cfg->sparsity > 0, max_res);
    if (rc < 0) {
        snprintf(err, errlen, "%s for the resident set",
                 rc == -ENOMEM ? "out of memory" : "bad slot classes");
        nf_fetch_free(ft);
        return rc;
    }
    if (f->hdr.n_expert > 0 && !o->expert_cyclic) {
        if ((rc = nf_cache_freq_init_nft(&ft->freq, f)) < 0) {
            snprintf(err, errlen, "out of memory for the experts' use counts");
            nf_fetch_free(ft);
            return rc;
        }
        ft->use_freq = true;
    }
    nf_log(NF_LOG_INFO, "routed experts evicted by %s",
           ft->use_freq ? "expected next use (decayed frequency)" : "cyclic distance");
    nf_log(NF_LOG_INFO,
           "resident set: %u tiles (%" PRIu64 " bytes) of %u slots, loaded on first use",
           ft->cache.n_resident, ft->cache.resident_bytes, ft->n_slots);
    if (ft->n_kv)
        nf_log(NF_LOG_INFO,
               "slot class %u: %" PRIu64 " slots of %" PRIu64 " bytes for %u KV block tiles of %s",
               cfg->n_classes, cfg->classes[cfg->n_classes].n_slots,
               cfg->classes[cfg->n_classes].slot_size, ft->n_kv, cfg->kv_path);
    for (uint32_t k = 0; k < cfg->n_classes; k++)
        nf_log(NF_LOG_INFO,
               "slot class %u: %" PRIu64 " slots of %" PRIu64
               " bytes, resident set %u tiles (at most %u)",
               k, cfg->classes[k].n_slots, cfg->classes[k].slot_size, ft->cache.class_resident[k],
               max_res[k]);
    rc = nf_fetch_backend_open(ft, err, errlen);
    if (rc < 0) {
        nf_fetch_free(ft);
        return rc;
    }
    return 0;
}

void nf_fetch_free(struct nf_fetcher *ft)
{
    nf_fetch_backend_close(ft);
    if (ft->kv_fd >= 0)
        close(ft->kv_fd);
    nf_cache_free(&ft->cache);
    nf_cache_freq_free(&ft->freq);
    free(ft->pend);
    free(ft->dq);
    free(ft->heap);
    free(ft->heap_pos);
    free(ft->prio);
    free(ft->seq);
    free(ft->logged);
    free(ft->free_slots);
    free(ft->ios);
    free(ft->io_free);
    free(ft->done);
    free(ft->loaded);
    free(ft->layer_first);
    memset(ft, 0, sizeof(*ft));
    ft->kv_fd = -1;
}

/* --- where compute is ----------------------------------------------------------------------- */

/* Reads the activation slots (seqlocks) and, when compute published a newer (step, layer) than
 * seen so far, moves cur to the first tile of the layer after it: compute is working there. */
static void poll_activations(struct nf_fetcher *ft)
{
    const struct nf_stack_config *cfg = ft->st->cfg;
    if (cfg->act_stride == 0)
        return;
    uint64_t best_step = ft->act_step, best_layer = ft->act_layer;
    for (uint32_t l = 0; l < cfg->n_layer; l++) {
        uint64_t step;
        uint32_t layer, n_embd;
        /* One attempt: a slot being written now is read at the next poll. */
        if (!nf_act_slot_read(nf_stack_act(ft->st, l), 1, &step, &layer, &n_embd, NULL, 0))
            continue;
        if (step > best_step || (step == best_step && l + 1 > best_layer)) {
            best_step = step;
            best_layer = l + 1;
        }
    }
    if (best_step != ft->act_step || best_layer != ft->act_layer) {
        ft->act_step = best_step;
        ft->act_layer = best_layer;
        uint32_t first = ft->layer_first[best_layer <= cfg->n_layer ? best_layer : cfg->n_layer];
        if (first < ft->n_tiles)
            ft->cur = first;
    }
}

/* --- requests ------------------------------------------------------------------------------- */

static bool behind_compute(const struct nf_fetcher *ft, uint32_t id);

/* Drops the pending prefetch of tile id (the predictor may ask again). */
static void drop_prefetch(struct nf_fetcher *ft, uint32_t id)
{
    heap_remove(ft, id);
    nf_tile_cancel(ft->st, id);
    ft->diag.dropped++;
    atomic_fetch_add_explicit(&ft->st->ctr->f_prefetch_dropped, 1, memory_order_relaxed);
}

/* The predictor withdrew its prefetch of tile id (nf_tile_prefetch_drop): its latest plan for
 * the tile's layer no longer holds it. A tile compute asked for is kept. A pending request is
 * dropped unread; a prefetch read already submitted cannot be called back (the kernel owns its
 * buffer until it lands), so it is marked to have its slot freed when it lands. */
static void drop_withdrawn(struct nf_fetcher *ft, uint32_t id)
{
    if (ft->pend[id] & PEND_DEMAND)
        return;
    if (ft->pend[id] & PEND_PREFETCH) {
        drop_prefetch(ft, id);
        ft->diag.plan_dropped++;
        atomic_fetch_add_explicit(&ft->st->ctr->f_plan_dropped, 1, memory_order_relaxed);
        return;
    }
    if (atomic_load(&ft->st->tiles[id].state) != NF_TILE_LOADING)
        return; /* read already (kept: compute may be using it) or never asked for */
    ft->pend[id] |= PEND_STALE; /* publish_loaded keeps it if a demand started the read */
}

/* Sparse mode: compute asks for the FFN tiles of the groups it chose, in tile order, as soon as
 * it has chosen them (a tile already loading or ready needs no request). So when it asks for
 * FFN tile id, a pending prefetch of an earlier FFN tile of the same layer that compute did not
 * ask for is a forecast it did not choose: reading it would be wasted. Such prefetches are
 * dropped (if compute does want one after all, its pin finds the tile EMPTY and asks again). */
static void drop_unchosen(struct nf_fetcher *ft, uint32_t id)
{
    const struct nf_nft_tile *tiles = ft->f->tiles;
    if (!(ft->st->cfg->sparsity > 0) || tiles[id].kind != NF_TILE_FFN)
        return;
    uint32_t layer = tiles[id].layer, from = id;
    if (ft->ffn_swept < id && tiles[ft->ffn_swept].layer == layer &&
        tiles[ft->ffn_swept].kind == NF_TILE_FFN)
        from = ft->ffn_swept + 1; /* swept up to there already */
    else
        while (from > 0 && tiles[from - 1].layer == layer && tiles[from - 1].kind == NF_TILE_FFN)
            from--;
    for (uint32_t t = from; t < id; t++)
        if ((ft->pend[t] & (PEND_PREFETCH | PEND_DEMAND)) == PEND_PREFETCH)
            drop_prefetch(ft, t);
    ft->ffn_swept = id;
}

static void take_requests(struct nf_fetcher *ft)
{
    struct nf_tile_req req[REQ_BURST];
    unsigned n;
    while ((n = nf_ring_sc_dequeue_burst(ft->st->demand, req, REQ_BURST, NULL)) > 0) {
        for (unsigned i = 0; i < n; i++) {
            uint32_t id = req[i].tile;
            if (id >= ft->n_ids)
                continue;            /* a broken request cannot name a tile: nothing to load */
            if (id >= ft->n_tiles) { /* a KV block tile: no cycle over the model's tiles */
                if (req[i].prio & NF_TILE_REQ_STALE)
                    kv_evict_stale(ft, id);
                if (ft->pend[id] & PEND_DEMAND)
                    continue;
                ft->pend[id] |= PEND_DEMAND;
                NF_ASSERT(ft->dq_len < ft->n_ids);
                ft->dq[(ft->dq_head + ft->dq_len++) % ft->n_ids] = id;
                continue;
            }
            /* Compute is at or before a tile it asks for: it may ask for tiles it will pin
             * soon (the FFN tiles it chose, a layer's predictor tile), so a demand only moves
             * cur back, never ahead of the tiles compute has not used yet. */
            if (behind_compute(ft, id))
                ft->cur = id;
            drop_unchosen(ft, id);
            ft->pend[id] &= (uint8_t)~PEND_STALE; /* compute wants it after all */
            if (ft->pend[id] & PEND_DEMAND)
                continue;
            ft->pend[id] |= PEND_DEMAND;
            NF_ASSERT(ft->dq_len < ft->n_ids); /* PEND_DEMAND: each tile in the FIFO once */
            ft->dq[(ft->dq_head + ft->dq_len++) % ft->n_ids] = id;
        }
    }
    while ((n = nf_ring_sc_dequeue_burst(ft->st->prefetch, req, REQ_BURST, NULL)) > 0)
        for (unsigned i = 0; i < n; i++) {
            if (req[i].tile >= ft->n_ids)
                continue;
            if (req[i].tile >= ft->n_tiles) { /* a KV tile the predictor pushed */
                if (!(req[i].prio & (NF_TILE_REQ_DROP | NF_TILE_REQ_STALE)))
                    heap_push(ft, req[i].tile, req[i].prio);
                continue;
            }
            if (req[i].prio & NF_TILE_REQ_DROP)
                drop_withdrawn(ft, req[i].tile);
            else
                heap_push(ft, req[i].tile, req[i].prio);
        }
}

/* Moves cur to just after the most recently used tile in the pool: the tile with the largest
 * (last_use step, id) among those compute pinned since they were loaded (a load sets last_use to
 * NF_FETCH_UNUSED; a pin overwrites it with compute's step). Within a layer this is the only
 * signal (activations come once per layer, demands only when prefetching fell behind). */
static void track_compute(struct nf_fetcher *ft)
{
    struct nf_stack *st = ft->st;
    uint64_t best = 0;
    bool found = false;
    for (uint32_t s = 0; s < ft->n_slots; s++) {
        uint32_t id = atomic_load_explicit(&st->slots[s].tile, memory_order_relaxed);
        if (id >= ft->n_tiles)
            continue;
        uint32_t u = atomic_load_explicit(&st->tiles[id].last_use, memory_order_relaxed);
        if (u == NF_FETCH_UNUSED)
            continue;
        if (ft->use_freq)
            nf_cache_freq_observe(&ft->freq, id, u);
        uint64_t key = (uint64_t)u << 32 | id;
        if (!found || key > best) {
            best = key;
            found = true;
        }
    }
    if (found && (!ft->have_use_key || best > ft->use_key)) {
        ft->use_key = best;
        ft->have_use_key = true;
        ft->cur = ((uint32_t)best + 1) % ft->n_tiles;
    }
}

/* True when a read of len bytes may start now: an I/O entry is free, and the bytes in flight
 * stay within o.inflight (a first read always starts, whatever its size). */
static bool io_room(const struct nf_fetcher *ft, uint64_t len)
{
    if (ft->n_io_free == 0)
        return false;
    return ft->in_flight == 0 || ft->inflight_bytes + len <= ft->o.inflight;
}

/* A free slot for tile id in its class k: from the class's free list, else by evicting the tile
 * of that class whose next use is farthest (a prefetch only evicts tiles needed later than
 * itself). NF_NO_SLOT if none. */
static uint32_t get_slot(struct nf_fetcher *ft, uint32_t id, uint32_t k, bool demand)
{
    uint32_t s = pop_free(ft, k);
    if (s != NF_NO_SLOT)
        return s;
    struct nf_stack *st = ft->st;
    const struct nf_stack_class *c = &st->cfg->classes[k];
    uint32_t first = (uint32_t)c->first_slot, end = (uint32_t)(c->first_slot + c->n_slots);
    track_compute(ft);
    /* A prefetched tile is wanted on its next pass: its own expected use is its distance. */
    uint64_t min_dist = demand ? 0 : nf_cache_distance(id, ft->cur, ft->n_tiles);
    uint64_t below = UINT64_MAX, got;
    const struct nf_cache_freq *q = ft->use_freq ? &ft->freq : NULL;
    /* The first tile of compute's layer (a tile outside the layers: cur itself). */
    uint32_t lf = ft->cur;
    if (ft->cur < ft->n_tiles && ft->f->tiles[ft->cur].layer < ft->f->hdr.n_layer)
        lf = ft->layer_first[ft->f->tiles[ft->cur].layer];
    for (uint32_t tries = 0; tries < end - first; tries++) {
        s = nf_cache_pick_victim_in(st->tiles, ft->n_tiles, st->slots, first, end, ft->cur, lf,
                                    min_dist, below, q, &got);
        if (s == NF_NO_SLOT)
            return NF_NO_SLOT;
        uint32_t victim = atomic_load(&st->slots[s].tile);
        bool unused = victim < ft->n_tiles &&
                      atomic_load_explicit(&st->tiles[victim].last_use, memory_order_relaxed) ==
                          NF_FETCH_UNUSED;
        if (nf_slot_try_evict(st, s)) { /* counts f_evictions */
            if (victim < ft->n_tiles) {
                ft->diag.evictions[kind_of(ft, victim)]++;
                ft->diag.wasted[kind_of(ft, victim)] += unused;
            }
            ft->diag.evict_by_prefetch += !demand;
            return s;
        }
        below = got; /* pinned meanwhile: the next candidate */
    }
    return NF_NO_SLOT;
}

static void finish_read(struct nf_fetcher *ft, uint32_t i);

/* Starts the read of len bytes at off of tile id (need of them must arrive) into slot, which
 * begin_load linked: takes an I/O entry (the caller checked one is free) and submits it. */
static void submit_read(struct nf_fetcher *ft, uint32_t id, uint32_t slot, uint64_t off,
                        uint64_t len, uint64_t need, bool demand, uint32_t kv_gen)
{
    struct nf_stack_counters *ctr = ft->st->ctr;
    uint32_t i = ft->io_free[--ft->n_io_free];
    struct nf_fetch_io *io = &ft->ios[i];
    io->tile = id;
    io->slot = slot;
    io->off = off;
    io->len = len;
    io->need = need;
    io->done = 0;
    io->demand = demand;
    io->kv_gen = kv_gen;
    io->start_ns = nf_now_ns();
    diag_qd(ft);
    if (ft->in_flight++ == 0)
        ft->busy_since_ns = io->start_ns;
    ft->inflight_bytes += len;
    if (ft->inflight_bytes > atomic_load_explicit(&ctr->f_inflight_peak, memory_order_relaxed))
        atomic_store_explicit(&ctr->f_inflight_peak, ft->inflight_bytes, memory_order_relaxed);
    atomic_store_explicit(&ctr->f_queue_depth, ft->in_flight, memory_order_relaxed);
    int rc = nf_fetch_backend_submit(ft, i);
    if (rc < 0) {
        io->res = rc;
        finish_read(ft, i); /* marks the tile ERROR and counts the I/O error */
    }
}

/* --- KV block tiles -------------------------------------------------------------------------
 * Ids past the .nft's (stack.h, nf_stack_kv_tile): block b of K or V of (sequence, layer) of
 * the KV file compute writes (common/kv_file.c's layout: K of every sequence and layer, then
 * V; a layer's n_ctx rows; the last block partial). They live in their own class, read without
 * a checksum (the bytes are new), only once compute said the block is durable, and the copy
 * remembers the generation it was read at (nf_kv_tile_pin_wait refuses an older one). */

/* The file span of KV tile id (offset; *len bytes), and its sequence, layer, kind, block. */
static uint64_t kv_span(const struct nf_fetcher *ft, uint32_t id, uint64_t *len, uint32_t *seq,
                        uint32_t *il, uint32_t *kind, uint32_t *b)
{
    const struct nf_stack_config *c = ft->st->cfg;
    uint32_t e = id - ft->n_tiles;
    *b = e % c->kv_n_blk;
    e /= c->kv_n_blk;
    *kind = e % 2;
    e /= 2;
    *il = e % c->n_layer;
    *seq = e / c->n_layer;
    const uint64_t row = *kind ? c->kv_row_v : c->kv_row_k;
    const uint64_t pos = (uint64_t)*b * c->kv_block;
    const uint64_t n = c->n_ctx - pos < c->kv_block ? c->n_ctx - pos : c->kv_block;
    const uint64_t n_seq = c->n_seq ? c->n_seq : 1;
    const uint64_t base = *kind ? n_seq * c->n_layer * c->n_ctx * c->kv_row_k : 0;
    *len = n * row;
    return base + ((uint64_t)e * c->n_ctx + pos) * row;
}

static void kv_describe(const struct nf_fetcher *ft, uint32_t id, char *out, size_t len)
{
    uint64_t bytes;
    uint32_t seq, il, kind, b;
    (void)kv_span(ft, id, &bytes, &seq, &il, &kind, &b);
    snprintf(out, len, "KV sequence %u layer %u %s block %u (%" PRIu64 " bytes)", seq, il,
             kind ? "V" : "K", b, bytes);
}

/* Opens the KV file (O_DIRECT when every block and layer span is whole pages, as compute's;
 * else buffered: a small model's blocks are a few hundred bytes). 0 or a negative errno. */
static int kv_open(struct nf_fetcher *ft)
{
    if (ft->kv_fd >= 0)
        return 0;
    const struct nf_stack_config *c = ft->st->cfg;
    const bool aligned = ((uint64_t)c->kv_block * c->kv_row_k) % 4096 == 0 &&
                         ((uint64_t)c->kv_block * c->kv_row_v) % 4096 == 0 &&
                         ((uint64_t)c->n_ctx * c->kv_row_k) % 4096 == 0 &&
                         ((uint64_t)c->n_ctx * c->kv_row_v) % 4096 == 0;
    ft->kv_fd = open(c->kv_path, O_RDONLY | O_CLOEXEC | (aligned ? O_DIRECT : 0));
    if (ft->kv_fd < 0 && aligned && errno == EINVAL)
        ft->kv_fd = open(c->kv_path, O_RDONLY | O_CLOEXEC);
    if (ft->kv_fd < 0) {
        int rc = -errno;
        nf_log(NF_LOG_ERROR, "KV file %s: %s", c->kv_path, strerror(errno));
        return rc;
    }
    nf_log(NF_LOG_INFO, "KV file %s opened for KV tiles (%s)", c->kv_path,
           aligned ? "O_DIRECT" : "buffered: blocks are not whole pages");
    return 0;
}

/* KV tile id's place in a token step's walks: layer by layer, in a layer sequence by
 * sequence (a batched step's rows, in slot order), a sequence's K blocks then its V blocks. */
static uint32_t kv_walk_pos(const struct nf_fetcher *ft, uint32_t id)
{
    const struct nf_stack_config *c = ft->st->cfg;
    const uint32_t n_seq = c->n_seq ? c->n_seq : 1;
    uint32_t e = id - ft->n_tiles;
    const uint32_t b = e % c->kv_n_blk;
    e /= c->kv_n_blk;
    const uint32_t kind = e % 2;
    e /= 2;
    const uint32_t il = e % c->n_layer, seq = e / c->n_layer;
    return ((il * n_seq + seq) * 2 + kind) * c->kv_n_blk + b;
}

/* How far along the walk's cyclic order tile id comes after compute's newest KV pin. */
static uint32_t kv_walk_dist(const struct nf_fetcher *ft, uint32_t id)
{
    return (kv_walk_pos(ft, id) - kv_walk_pos(ft, ft->kv_cur) + ft->n_kv) % ft->n_kv;
}

/* The KV class's slot whose tile compute needs farthest ahead: the walk reads the tiles in
 * kv_walk_pos order (a layer's K blocks, its V blocks, the next sequence's, the next layer's),
 * so the one just behind where compute is (the newest (last_use, id) it pinned: its requests
 * include blocks it asks for ahead); a copy of an older generation first. Evicts it;
 * NF_NO_SLOT when all are pinned, or, for a prefetch of tile `for_id` (NF_NO_TILE: a demand),
 * when every candidate is needed before it (a push never evicts a tile needed sooner). */
static uint32_t kv_victim(struct nf_fetcher *ft, uint32_t for_id)
{
    struct nf_stack *st = ft->st;
    const struct nf_stack_class *c = &st->cfg->classes[st->cfg->n_classes];
    const uint32_t first = (uint32_t)c->first_slot, end = (uint32_t)(c->first_slot + c->n_slots);
    uint64_t newest = 0;
    for (uint32_t s = first; s < end; s++) {
        uint32_t id = atomic_load_explicit(&st->slots[s].tile, memory_order_relaxed);
        if (id < ft->n_tiles || id >= ft->n_ids)
            continue;
        uint32_t u = atomic_load_explicit(&st->tiles[id].last_use, memory_order_relaxed);
        uint64_t key = (uint64_t)u << 32 | kv_walk_pos(ft, id);
        if (u != NF_FETCH_UNUSED && key >= newest) {
            newest = key;
            ft->kv_cur = id;
        }
    }
    for (int tries = 0; tries < 4; tries++) {
        uint32_t best = NF_NO_SLOT;
        uint64_t best_d = 0;
        for (uint32_t s = first; s < end; s++) {
            uint32_t id = atomic_load_explicit(&st->slots[s].tile, memory_order_relaxed);
            if (id < ft->n_tiles || id >= ft->n_ids ||
                atomic_load_explicit(&st->tiles[id].state, memory_order_relaxed) != NF_TILE_READY ||
                atomic_load_explicit(&st->tiles[id].pins, memory_order_relaxed))
                continue;
            uint64_t d = nf_kv_tile_stale(st, id) ? UINT64_MAX : kv_walk_dist(ft, id);
            if (best == NF_NO_SLOT || d > best_d) {
                best = s;
                best_d = d;
            }
        }
        if (best == NF_NO_SLOT || (for_id != NF_NO_TILE && best_d <= kv_walk_dist(ft, for_id)))
            return NF_NO_SLOT;
        uint32_t victim = atomic_load(&st->slots[best].tile);
        bool unused = atomic_load_explicit(&st->tiles[victim].last_use, memory_order_relaxed) ==
                      NF_FETCH_UNUSED;
        if (nf_slot_try_evict(st, best)) {
            ft->diag.evictions[NF_FETCH_KIND_KV]++;
            ft->diag.wasted[NF_FETCH_KIND_KV] += unused;
            kv_count_pushed(ft, victim, unused);
            return best;
        }
    }
    return NF_NO_SLOT;
}

/* KV tile id is evicted: if a push of the predictor read it, count whether compute pinned it. */
static void kv_count_pushed(struct nf_fetcher *ft, uint32_t id, bool unused)
{
    if (!(ft->pend[id] & PEND_KV_PUSHED))
        return;
    ft->pend[id] &= (uint8_t)~PEND_KV_PUSHED;
    atomic_fetch_add_explicit(unused ? &ft->st->ctr->f_kv_prefetch_unused
                                     : &ft->st->ctr->f_kv_prefetch_used,
                              1, memory_order_relaxed);
}

/* Compute found KV tile id READY at an older generation (NF_TILE_REQ_STALE): evict it so that
 * its demand reads it again. */
static void kv_evict_stale(struct nf_fetcher *ft, uint32_t id)
{
    struct nf_stack *st = ft->st;
    if (!nf_kv_tile_stale(st, id))
        return;
    uint32_t slot = atomic_load_explicit(&st->tiles[id].slot, memory_order_relaxed);
    const bool unused =
        atomic_load_explicit(&st->tiles[id].last_use, memory_order_relaxed) == NF_FETCH_UNUSED;
    if (slot < ft->n_slots && nf_slot_try_evict(st, slot)) {
        push_free(ft, slot);
        kv_count_pushed(ft, id, unused);
        ft->diag.kv_stale++;
        ft->diag.evictions[NF_FETCH_KIND_KV]++;
    }
}

/* start_load for KV tile id, neither loading, ready nor in error. */
static int start_kv_load(struct nf_fetcher *ft, uint32_t id, bool demand)
{
    struct nf_stack *st = ft->st;
    struct nf_stack_counters *ctr = st->ctr;
    const uint32_t w = nf_kv_tile_word(st, id);
    if (!(w & 1u)) { /* not durable: its bytes are not in the file yet (or are being rewritten) */
        ft->diag.kv_refused++;
        nf_tile_cancel(st, id);
        return 0;
    }
    uint64_t len;
    uint32_t seq, il, kind, b;
    const uint64_t off = kv_span(ft, id, &len, &seq, &il, &kind, &b);
    if (!io_room(ft, len))
        return -ENOBUFS;
    int rc = kv_open(ft);
    if (rc < 0) {
        nf_tile_fail(st, id, rc);
        return 0;
    }
    uint32_t slot = pop_free(ft, st->cfg->n_classes);
    if (slot == NF_NO_SLOT)
        slot = kv_victim(ft, demand ? NF_NO_TILE : id);
    if (slot == NF_NO_SLOT) {
        ft->diag.no_slot++;
        return -EAGAIN;
    }
    rc = nf_tile_begin_load(st, id, slot);
    if (rc < 0) {
        push_free(ft, slot);
        if (rc == -EALREADY)
            atomic_fetch_add_explicit(&ctr->f_hits, 1, memory_order_relaxed);
        return 0;
    }
    atomic_fetch_add_explicit(&ctr->f_misses, 1, memory_order_relaxed);
    (demand ? ft->diag.demand_reads : ft->diag.prefetch_reads)[NF_FETCH_KIND_KV]++;
    ft->diag.bytes[NF_FETCH_KIND_KV] += len;
    atomic_fetch_add_explicit(demand ? &ctr->f_kv_demand_reads : &ctr->f_kv_prefetch_reads, 1,
                              memory_order_relaxed);
    if (demand)
        ft->pend[id] &= (uint8_t)~PEND_KV_PUSHED;
    else
        ft->pend[id] |= PEND_KV_PUSHED;
    atomic_store_explicit(&st->tiles[id].last_use, NF_FETCH_UNUSED, memory_order_relaxed);
    submit_read(ft, id, slot, off, len, len, demand, w >> 1);
    return 1;
}

/* Starts the read of tile id. Returns 1 when a read started, 0 when none is needed (already
 * loading or ready: a hit; or in ERROR), -EAGAIN when no slot is free now, -ENOBUFS when the
 * reads in flight must land first (io_room). */
static int start_load(struct nf_fetcher *ft, uint32_t id, bool demand)
{
    struct nf_stack *st = ft->st;
    struct nf_stack_counters *ctr = st->ctr;
    uint32_t state = atomic_load(&st->tiles[id].state);
    if (state == NF_TILE_READY || state == NF_TILE_LOADING) {
        atomic_fetch_add_explicit(&ctr->f_hits, 1, memory_order_relaxed);
        return 0;
    }
    if (state == NF_TILE_ERROR)
        return 0;
    if (id >= ft->n_tiles)
        return start_kv_load(ft, id, demand);
    uint32_t k = nf_cache_class(&ft->cache, id);
    if (k == NF_CACHE_NO_CLASS) {
        /* No slot fits it (the plan sizes the largest class to the largest tile, so only a
         * region made for another index gets here): final, like a read error. */
        if (!ft->logged[id]) {
            char desc[160];
            nf_nft_describe(ft->f, &ft->f->tiles[id], desc, sizeof(desc));
            nf_log(NF_LOG_ERROR,
                   "tile %s: %" PRIu64 " bytes, larger than the pool's slots (%" PRIu64 ")", desc,
                   nf_nft_tile_span(&ft->f->tiles[id]), st->cfg->max_slot_size);
            ft->logged[id] = 1;
        }
        nf_tile_fail(st, id, -E2BIG);
        return 0;
    }
    if (!io_room(ft, nf_nft_tile_span(&ft->f->tiles[id])))
        return -ENOBUFS;
    uint32_t slot = get_slot(ft, id, k, demand);
    if (slot == NF_NO_SLOT) {
        ft->diag.no_slot++;
        return -EAGAIN;
    }
    int rc = nf_tile_begin_load(st, id, slot);
    if (rc < 0) {
        push_free(ft, slot);
        if (rc == -EALREADY)
            atomic_fetch_add_explicit(&ctr->f_hits, 1, memory_order_relaxed);
        return 0;
    }
    atomic_fetch_add_explicit(&ctr->f_misses, 1, memory_order_relaxed);
    (demand ? ft->diag.demand_reads : ft->diag.prefetch_reads)[kind_of(ft, id)]++;
    ft->diag.bytes[kind_of(ft, id)] += nf_nft_tile_span(&ft->f->tiles[id]);
    /* Not used since this load (track_compute); compute's pin overwrites it. */
    atomic_store_explicit(&st->tiles[id].last_use, NF_FETCH_UNUSED, memory_order_relaxed);
    const struct nf_nft_tile *t = &ft->f->tiles[id];
    if (nf_cache_is_resident(&ft->cache, id)) {
        atomic_fetch_or(&st->slots[slot].flags, NF_SLOT_RESIDENT);
        atomic_fetch_add_explicit(&ctr->f_resident_bytes, nf_nft_tile_span(t),
                                  memory_order_relaxed);
    }
    /* An in-place tile's span may run past the end of its GGUF part: its own bytes suffice. */
    submit_read(ft, id, slot, t->offset - nf_nft_tile_skew(t), nf_nft_tile_span(t),
                ft->f->in_place ? nf_nft_tile_skew(t) + t->size : nf_nft_tile_span(t), demand, 0);
    return 1;
}

/* --- completions ---------------------------------------------------------------------------- */

static void release_io(struct nf_fetcher *ft, uint32_t i)
{
    /* Only a read in flight is released, once: the free stack cannot overflow. */
    NF_ASSERT(ft->in_flight > 0 && ft->n_io_free < ft->o.qd);
    ft->io_free[ft->n_io_free++] = i;
    ft->inflight_bytes -= ft->ios[i].len;
    diag_qd(ft);
    if (--ft->in_flight == 0)
        atomic_fetch_add_explicit(&ft->st->ctr->f_busy_ns, nf_now_ns() - ft->busy_since_ns,
                                  memory_order_relaxed);
    atomic_store_explicit(&ft->st->ctr->f_queue_depth, ft->in_flight, memory_order_relaxed);
}

/* Marks tile ERROR with code (what compute's pin_wait reports), frees its slot and logs the
 * first failure of each tile. */
static void fail_tile(struct nf_fetcher *ft, uint32_t tile, uint32_t slot, uint64_t len, int code,
                      const char *why)
{
    struct nf_stack *st = ft->st;
    if (!ft->logged[tile]) {
        char desc[160];
        if (tile >= ft->n_tiles)
            kv_describe(ft, tile, desc, sizeof(desc));
        else
            nf_nft_describe(ft->f, &ft->f->tiles[tile], desc, sizeof(desc));
        nf_log(NF_LOG_ERROR, "tile %s: %s", desc, why);
        ft->logged[tile] = 1;
    }
    nf_tile_fail(st, tile, code);
    if (atomic_load(&st->slots[slot].tile) == NF_NO_TILE) {
        if (atomic_exchange(&st->slots[slot].flags, 0) & NF_SLOT_RESIDENT)
            atomic_fetch_sub_explicit(&st->ctr->f_resident_bytes, len, memory_order_relaxed);
        push_free(ft, slot);
    }
}

static bool want_verify(struct nf_fetcher *ft)
{
    switch (ft->o.verify) {
    case NF_VERIFY_ALL: return true;
    case NF_VERIFY_SAMPLE: return ft->reads_done % NF_VERIFY_SAMPLE_EVERY == 0;
    default: return false;
    }
}

/* Handles the completion of ios[i]: resubmits the rest of a short read; fails the tile on an
 * error; else counts the read, frees the I/O entry and queues the tile for publish_loaded()
 * (checksum, then READY), so the caller can start the next reads before spending CPU on the
 * checksum. */
static void finish_read(struct nf_fetcher *ft, uint32_t i)
{
    struct nf_fetch_io *io = &ft->ios[i];
    struct nf_stack_counters *ctr = ft->st->ctr;
    if (io->res > 0) {
        io->done += (uint64_t)io->res;
        if (io->done < io->need) { /* short read: ask for the rest */
            int rc = nf_fetch_backend_submit(ft, i);
            if (rc == 0)
                return;
            io->res = rc;
        }
    } else if (io->res == 0 && io->done < io->need) {
        io->res = NF_ETRUNCATED; /* end of file inside a tile the index says is there */
    }
    if (io->res < 0) {
        char why[128];
        snprintf(why, sizeof(why), "read failed: %s", nf_strerror(io->res));
        atomic_fetch_add_explicit(&ctr->f_io_errors, 1, memory_order_relaxed);
        fail_tile(ft, io->tile, io->slot, io->len, io->res, why);
        release_io(ft, i);
        return;
    }
    uint64_t us = (nf_now_ns() - io->start_ns) / 1000;
    unsigned b = 0;
    while (b + 1 < NF_LAT_BUCKETS && (us >> (b + 1)) != 0)
        b++;
    atomic_fetch_add_explicit(&ctr->f_lat_hist[b], 1, memory_order_relaxed);
    atomic_fetch_add_explicit(&ctr->f_reads, 1, memory_order_relaxed);
    atomic_fetch_add_explicit(&ctr->f_bytes, io->len, memory_order_relaxed);
    atomic_fetch_add_explicit(io->demand ? &ctr->f_demand_reads : &ctr->f_prefetch_reads, 1,
                              memory_order_relaxed);
    NF_ASSERT(ft->n_loaded < ft->o.qd); /* one entry per read, published before the next reap */
    struct nf_fetch_loaded *l = &ft->loaded[ft->n_loaded++];
    l->tile = io->tile;
    l->slot = io->slot;
    l->len = io->len;
    l->check = io->tile < ft->n_tiles && want_verify(ft); /* KV bytes are new: no checksum */
    l->demand = io->demand;
    l->kv_gen = io->kv_gen;
    ft->reads_done++;
    release_io(ft, i);
}

/* Checks and publishes the tiles finish_read() queued: READY, or ERROR on a checksum
 * mismatch. */
static void publish_loaded(struct nf_fetcher *ft)
{
    uint64_t t0 = nf_now_ns();
    for (uint32_t k = 0; k < ft->n_loaded; k++) {
        const struct nf_fetch_loaded *l = &ft->loaded[k];
        if (l->tile >= ft->n_tiles) { /* the copy is of the generation its read started at */
            nf_kv_tile_set_read_gen(ft->st, l->tile, l->kv_gen);
            nf_tile_end_load(ft->st, l->tile, true);
            continue;
        }
        const struct nf_nft_tile *t = &ft->f->tiles[l->tile];
        bool withdrawn = (ft->pend[l->tile] & PEND_STALE) && !l->demand;
        ft->pend[l->tile] &= (uint8_t)~PEND_STALE;
        if (l->check &&
            nf_nft_tile_sum(ft->f, t, nf_stack_slot_ptr(ft->st, l->slot)) != t->checksum) {
            atomic_fetch_add_explicit(&ft->st->ctr->f_checksum_errors, 1, memory_order_relaxed);
            fail_tile(ft, l->tile, l->slot, l->len, NF_ECHECKSUM,
                      "checksum mismatch (XXH3-64 of the tile read differs from the index)");
            continue;
        }
        nf_tile_end_load(ft->st, l->tile, true);
        /* Withdrawn while it was read (and no demand started the read): free the slot now
         * unless compute pinned it since (a resident tile is never evicted). Compute pinning it
         * later finds it EMPTY and asks again. */
        if (withdrawn && nf_slot_try_evict(ft->st, l->slot)) {
            push_free(ft, l->slot);
            ft->diag.plan_released++;
            atomic_fetch_add_explicit(&ft->st->ctr->f_plan_released, 1, memory_order_relaxed);
        }
    }
    ft->n_loaded = 0;
    ft->diag.checksum_ns += nf_now_ns() - t0;
}

/* Where tile id sits in a token step: its layer, 0 for the tiles before layer 0 (embedding),
 * n_layer for those after the last layer (output norm, output). */
static uint32_t step_pos(const struct nf_fetcher *ft, uint32_t id)
{
    uint32_t nl = ft->f->hdr.n_layer, l = ft->f->tiles[id].layer;
    if (l < nl)
        return l;
    return id < ft->layer_first[0] ? 0 : nl;
}

/* True when compute has passed tile id in the current step: an earlier tile of its layer, or a
 * tile of one of the (n_layer + 1) / 2 positions before compute's in the cyclic layer order. */
static bool behind_compute(const struct nf_fetcher *ft, uint32_t id)
{
    if (id >= ft->n_tiles)
        return false;
    if (id == ft->cur || ft->cur >= ft->n_tiles)
        return false;
    return nf_cache_behind(id, step_pos(ft, id), ft->cur, step_pos(ft, ft->cur),
                           ft->f->hdr.n_layer + 1);
}

/* True when the pending prefetch of tile id comes too late (nf_cache_late): what a predictor
 * that fell behind compute asks for. Dropped instead of read. */
static bool passed(const struct nf_fetcher *ft, uint32_t id)
{
    if (id >= ft->n_tiles)
        return false; /* a pushed KV tile: kv_victim never lets it evict one needed sooner */
    if (id == ft->cur || ft->cur >= ft->n_tiles)
        return false;
    return nf_cache_late(id, step_pos(ft, id), ft->cur, step_pos(ft, ft->cur),
                         ft->f->hdr.n_layer + 1, ft->prio[id]);
}

/* --- the loop ------------------------------------------------------------------------------- */

/* Starts reads for pending requests: every demand first; prefetches (soonest priority first)
 * only when no demand waits. Returns true when a demand is still waiting for a slot. */
static bool serve(struct nf_fetcher *ft)
{
    while (ft->dq_len > 0) {
        uint32_t id = ft->dq[ft->dq_head];
        int rc = start_load(ft, id, true);
        if (rc == -EAGAIN || rc == -ENOBUFS)
            return true;
        ft->dq_head = (ft->dq_head + 1) % ft->n_ids;
        ft->dq_len--;
        ft->pend[id] &= (uint8_t)~PEND_DEMAND;
        if (ft->pend[id] & PEND_PREFETCH)
            heap_remove(ft, id);
    }
    while (ft->heap_len > 0) {
        uint32_t id = ft->heap[0];
        if (passed(ft, id)) {
            drop_prefetch(ft, id);
            continue;
        }
        int rc = start_load(ft, id, false);
        if (rc == -ENOBUFS)
            break; /* the reads in flight first */
        if (rc == -EAGAIN) {
            /* No slot for a tile compute has already passed (a forecast it did not use, or a
             * request that arrived late): drop it instead of letting it block every prefetch
             * behind it until a slot frees up; the predictor asks again when it matters. */
            /* A pushed KV tile with no slot: every KV slot holds a block needed sooner (the
             * predictor pushes again after the next walk). */
            if (ft->n_io_free == 0 || (id < ft->n_tiles && !behind_compute(ft, id)))
                break;
            nf_tile_cancel(ft->st, id);
            ft->diag.dropped++;
            atomic_fetch_add_explicit(&ft->st->ctr->f_prefetch_dropped, 1, memory_order_relaxed);
        }
        heap_remove(ft, id);
    }
    return false;
}

int nf_fetch_run(struct nf_fetcher *ft)
{
    struct nf_stack_sync *sync = ft->st->sync;
    uint32_t *done = ft->done;
    int rc = 0;
    set_nice(ft->o.nice);
    uint64_t run0 = 0, wait0 = 0;
    bool have_sched = sched_times(&run0, &wait0);
    while (!atomic_load(&sync->stop)) {
        uint32_t seen = nf_notify_seq(&sync->fetch_bell);
        poll_activations(ft);
        track_compute(ft);
        take_requests(ft);
        bool demand_blocked = serve(ft);
        if ((rc = nf_fetch_backend_flush(ft)) < 0)
            break;
        if (ft->in_flight == 0) {
            /* Nothing in flight: sleep until a request (or, for a blocked request, until
             * compute has had time to unpin or move on). */
            int ms = demand_blocked ? DEMAND_RETRY_MS : ft->heap_len ? PREFETCH_RETRY_MS : IDLE_MS;
            uint64_t t0 = nf_now_ns();
            if (!atomic_load(&sync->stop))
                nf_notify_wait(&sync->fetch_bell, seen, ms);
            *(demand_blocked || ft->heap_len ? &ft->diag.starved_ns : &ft->diag.idle_ns) +=
                nf_now_ns() - t0;
            continue;
        }
        long timeout = ft->n_io_free > 0 ? SOON_US : -1;
        unsigned n = nf_fetch_backend_reap(ft, done, ft->o.qd, timeout);
        ft->diag.reaps += n > 0;
        ft->diag.reaped += n;
        for (unsigned k = 0; k < n; k++)
            finish_read(ft, done[k]);
        if (ft->n_loaded > 0) {
            /* Refill the queue first: the checksums then overlap the next reads. */
            take_requests(ft);
            serve(ft);
            rc = nf_fetch_backend_flush(ft);
            publish_loaded(ft);
            if (rc < 0)
                break;
        }
    }
    uint64_t run1, wait1;
    if (have_sched && sched_times(&run1, &wait1)) {
        ft->diag.sched_run_ns = run1 - run0;
        ft->diag.sched_wait_ns = wait1 - wait0;
    }
    diag_log(ft);
    /* Let reads in flight land before the pool is unmapped; after a failed submission, those
     * that never reached the kernel first (they would not land). */
    while (ft->in_flight > 0) {
        unsigned n = nf_fetch_backend_abandon(ft, done, ft->o.qd);
        if (n == 0)
            n = nf_fetch_backend_reap(ft, done, ft->o.qd, -1);
        for (unsigned k = 0; k < n; k++) {
            struct nf_fetch_io *io = &ft->ios[done[k]];
            ft->logged[io->tile] = 1; /* not worth a log line at exit */
            fail_tile(ft, io->tile, io->slot, io->len, rc < 0 ? rc : -ECANCELED, "read abandoned");
            release_io(ft, done[k]);
        }
    }
    return rc;
}
