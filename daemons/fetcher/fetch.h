/* fetch.h - the fetcher's read engine: request intake, slot choice, reads and their completion.
 *
 * One thread (nf_fetch_run) owns everything here. It drains the demand ring before the prefetch
 * ring, keeps requests that cannot get a slot yet pending (demand FIFO; prefetches in a heap by
 * priority), starts whole-tile reads into pool slots through one of two back ends (io_uring with
 * registered buffers and file, or a pool of pread threads when io_uring is unavailable), checks
 * each tile's XXH3-64 after its read and publishes it READY or ERROR. It sleeps on fetch_bell
 * when there is nothing to do and nothing in flight. All memory is allocated by nf_fetch_init;
 * the loop itself does not allocate. */
#ifndef NF_FETCH_H
#define NF_FETCH_H

#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>

#include "cache.h"
#include "stack.h"

struct nf_nft;

enum nf_verify_mode { NF_VERIFY_NONE = 0, NF_VERIFY_SAMPLE, NF_VERIFY_ALL };
#define NF_VERIFY_SAMPLE_EVERY 16 /* --verify sample checks one read in 16 */
/* last_use of a tile not pinned since it was loaded (the value nf_cache_pick_victim and
 * nf_cache_freq_observe take for "not used") */
#define NF_FETCH_UNUSED NF_CACHE_FREQ_NONE

/* The fetch thread's default nice value (--nice). It is mostly asleep, but each time reads land
 * it must run at once to resubmit them: when compute, the predictor and other processes keep
 * both CPUs busy it waited about 3x as long for a CPU as it ran, every read of the queue had
 * landed by the time it reaped (10-15 completions of 16 per reap), and the disk sat idle.
 * At -10 (thread and session group) sparse mode read at about twice the bandwidth while busy;
 * see docs/measurements.md. Needs CAP_SYS_NICE (or RLIMIT_NICE): without it the value is left
 * as it is. */
#define NF_FETCH_NICE (-10)

/* Bytes in flight at most, past the first read (--inflight): enough to keep a drive busy
 * (a read of tens of MB is split by the kernel into many requests), not the pool's largest
 * class, whose slots are then free to keep tiles for their next use. See docs/measurements.md,
 * "Bytes in flight". */
#define NF_FETCH_INFLIGHT ((uint64_t)128 << 20)

struct nf_fetch_opts {
    unsigned qd;                /* reads in flight at most (--qd) */
    uint64_t inflight;          /* bytes in flight at most, past the first read (--inflight) */
    enum nf_verify_mode verify; /* --verify */
    bool no_uring;              /* --no-uring: use the pread pool even if io_uring works */
    bool expert_cyclic;         /* --expert-cache cyclic: routed experts by cyclic distance only */
    int nice; /* --nice: the fetch thread's nice value (0: left as it is; NF_FETCH_NICE) */
    /* Slots the resident set must leave in each class (the plan's class_min). */
    uint32_t class_min[NF_STACK_MAX_CLASSES];
};

/* One read in flight. */
struct nf_fetch_io {
    uint32_t tile, slot;
    uint64_t off, len; /* file offset and bytes of the tile's aligned span */
    uint64_t need;     /* bytes that must arrive (len, or to the tile's end in an in-place
                        * index, whose span may run past the end of the GGUF part) */
    uint64_t done;     /* bytes read so far (short reads are resubmitted for the rest) */
    uint64_t start_ns; /* submission time, for the latency histogram */
    bool demand;
    int res;         /* pread back end: result of the last pread (bytes or -errno) */
    uint32_t kv_gen; /* a KV tile: the generation of its block when the read started */
};

/* A tile read completely, waiting for its checksum and READY. */
struct nf_fetch_loaded {
    uint32_t tile, slot;
    uint64_t len;
    bool check;  /* verify its checksum (--verify) */
    bool demand; /* read for a demand */
    uint32_t kv_gen;
};

/* The most one read asks for. io_uring takes a 32-bit length and Linux moves at most
 * 2 GiB - 4 KiB in one read call, so a longer tile (a slot may be 4 GiB or more) is read in
 * pieces of at most this size, the rest following as after a short read. A multiple of the
 * O_DIRECT alignment, so every piece starts aligned. */
#define NF_FETCH_READ_MAX (1u << 30)

/* Bytes the next read of io asks for: what is left of its tile, at most NF_FETCH_READ_MAX. */
static inline uint32_t nf_fetch_read_len(const struct nf_fetch_io *io)
{
    uint64_t left = io->len - io->done;
    return left < NF_FETCH_READ_MAX ? (uint32_t)left : NF_FETCH_READ_MAX;
}

struct nf_fetch_backend; /* io.c */

/* What the fetcher did, by tile kind (enum nf_tile_kind), logged when the loop stops: where
 * the bytes went (reads by demand or prefetch), which tiles were thrown out again (evictions,
 * and those of tiles compute never pinned since their read: wasted reads), the mean queue depth
 * while busy and the time spent on checksums. Private to the fetch thread. */
#define NF_FETCH_KINDS   17
#define NF_FETCH_KIND_KV (NF_FETCH_KINDS - 1) /* KV block tiles (the .nft's kinds below it) */
struct nf_fetch_diag {
    uint64_t demand_reads[NF_FETCH_KINDS], prefetch_reads[NF_FETCH_KINDS];
    uint64_t bytes[NF_FETCH_KINDS];
    uint64_t evictions[NF_FETCH_KINDS], wasted[NF_FETCH_KINDS];
    uint64_t evict_by_prefetch; /* evictions made for a prefetch (the rest for demands) */
    uint64_t qd_ns, busy_ns;    /* integral of reads in flight over time, and busy time */
    uint64_t qd_at_ns;          /* last change of in_flight */
    uint64_t checksum_ns;       /* time spent in XXH3 */
    uint64_t dropped;           /* prefetches dropped unread (passed, unchosen or withdrawn) */
    uint64_t plan_dropped;      /* of those, withdrawn by the predictor (nf_tile_prefetch_drop) */
    uint64_t plan_released;     /* withdrawn after the read started: slot freed on landing */
    uint64_t no_slot;           /* start_load found no slot (request left pending) */
    /* Where the fetch thread's time went, to tell a slow disk from a fetcher that did not keep
     * it busy: time with all qd reads in flight; time with none in flight while requests waited
     * for a slot, and while there was nothing to read; reaps that found completions and the
     * completions they took (many per reap: the thread came late); the thread's time on a CPU
     * and waiting for one (/proc/thread-self/schedstat, 0 when unavailable). */
    uint64_t full_ns, starved_ns, idle_ns;
    uint64_t reaps, reaped;
    uint64_t sched_run_ns, sched_wait_ns;
    uint64_t kv_refused; /* KV tiles asked for before their block was durable (not read) */
    uint64_t kv_stale;   /* KV tiles evicted to be read again at their block's new generation */
};

struct nf_fetcher {
    struct nf_stack *st;
    const struct nf_nft *f;
    struct nf_fetch_opts o;
    struct nf_cache cache;
    struct nf_cache_freq freq; /* routed experts' use frequency (cache.h) */
    bool use_freq;             /* a MoE model, --expert-cache freq */
    uint32_t n_tiles, n_slots;
    /* KV block tiles (cfg->kv_tiles): ids n_tiles .. n_ids - 1, read from kv_fd (the KV file
     * compute writes, opened at the first such request; -1 before); the per-id tables below
     * cover them too (n_ids entries). kv_cur: the last one compute asked for. */
    uint32_t n_kv, n_ids, kv_cur;
    int kv_fd;
    /* Pending requests. pend[id]: bit 0 in the demand FIFO, bit 1 in the prefetch heap. */
    uint8_t *pend; /* (n_ids) */
    uint32_t *dq;  /* (n_ids) demand FIFO, circular */
    uint32_t dq_head, dq_len;
    uint32_t *heap;     /* (n_tiles) prefetch min-heap of tile ids by (prio, seq) */
    uint32_t *heap_pos; /* (n_tiles) position in heap */
    uint32_t *prio;     /* (n_tiles) request priority */
    uint64_t *seq;      /* (n_tiles) arrival order, ties broken first come first served */
    uint32_t heap_len;
    uint64_t next_seq;
    /* Free slots (not holding a tile), a stack per class: class k's occupies free_slots[first
     * .. first + n_free[k]) where first is the class's first slot id. */
    uint32_t *free_slots; /* (n_slots) */
    uint32_t n_free[NF_STACK_MAX_CLASSES];
    /* Reads in flight: ios[i] for i in the in-flight set; free ones on a stack. */
    struct nf_fetch_io *ios;        /* (qd) */
    uint32_t *io_free;              /* (qd) */
    uint32_t *done;                 /* (qd) completed io indices of one reap */
    struct nf_fetch_loaded *loaded; /* (qd) reads done, not yet checked and published */
    uint32_t n_loaded;
    uint32_t n_io_free;
    uint32_t in_flight;
    uint64_t inflight_bytes; /* the spans of the reads in flight */
    uint64_t busy_since_ns;
    uint64_t reads_done;   /* for --verify sample */
    uint8_t *logged;       /* (n_tiles) an error for this tile was logged already */
    uint32_t *layer_first; /* (n_layer + 1) first tile id of each layer; [n_layer] after */
    /* Where compute is: the tile it last demanded or the layer after the last activation. */
    uint32_t cur;
    uint64_t act_step, act_layer;
    uint64_t use_key;   /* newest (last_use step << 32 | id) seen in the pool */
    bool have_use_key;  /* newest activation seen (step, layer + 1; 0: none yet) */
    uint32_t ffn_swept; /* sparse mode: the last FFN tile compute asked for (drop_unchosen) */
    struct nf_fetch_backend *be;
    const char *backend_name;
    struct nf_fetch_diag diag;
};

/* Prepares the fetcher for stack st (created for .nft f, whose fd was opened with O_DIRECT):
 * allocates every table, chooses the resident set and sets up the I/O back end (io_uring, or
 * the pread pool when io_uring cannot be set up or o->no_uring; the fallback is logged once).
 * Returns 0 or a negative code with a message in err. */
int nf_fetch_init(struct nf_fetcher *ft, struct nf_stack *st, const struct nf_nft *f,
                  const struct nf_fetch_opts *o, char *err, size_t errlen);
/* Runs the fetch loop until sync->stop is set. Returns 0, or a negative code when reads cannot
 * go on (io_uring_submit failed for good): the reads in flight are then failed with that code,
 * and the caller is to stop the stack. */
int nf_fetch_run(struct nf_fetcher *ft);
/* Releases everything nf_fetch_init set up (the loop must have returned). */
void nf_fetch_free(struct nf_fetcher *ft);

/* --- Back ends (io.c) ---------------------------------------------------------------------- */
/* Sets up io_uring (registered pool and file) or, failing that, the pread pool. */
int nf_fetch_backend_open(struct nf_fetcher *ft, char *err, size_t errlen);
void nf_fetch_backend_close(struct nf_fetcher *ft);
/* Submits the (rest of the) read of ios[io]. Returns 0 or a negative code. */
int nf_fetch_backend_submit(struct nf_fetcher *ft, uint32_t io);
/* Pushes submitted reads to the kernel (io_uring batches them; no-op for pread). Returns 0, or
 * the code of an io_uring_submit failure that does not pass (logged; the reads still queued
 * will not complete: take them with nf_fetch_backend_abandon). A transient one (-EBUSY,
 * -EAGAIN) returns 0: the next reap takes completions and pushes again. */
int nf_fetch_backend_flush(struct nf_fetcher *ft);
/* After nf_fetch_backend_flush failed: moves up to max reads that never reached the kernel
 * into done[] (io indices) and returns their count; 0 otherwise. */
unsigned nf_fetch_backend_abandon(struct nf_fetcher *ft, uint32_t *done, unsigned max);
/* Collects completed reads into done[] (io indices, at most max; each ios[i].res set to the
 * byte count or -errno). Waits up to timeout_us for the first one (0: do not wait, < 0: wait
 * until one completes or fetch_bell rings for the pread pool). Returns the count. */
unsigned nf_fetch_backend_reap(struct nf_fetcher *ft, uint32_t *done, unsigned max,
                               long timeout_us);

#endif
