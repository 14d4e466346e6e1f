/* bench_spec.c - nanoflowctl bench's --lookup and --draft rows: the exact stack and run --mmap
 * measured again with speculative decoding, beside the same engine without it in the same run:
 * tok/s per sequence, aggregate tok/s, bytes read per token, drafts verified and accepted, and
 * the speed-up over the plain row. */
#include <math.h>
#include <stdio.h>

#include "bench.h"
#include "stack_snap.h"

const char *nf_bench_spec_name(enum nf_bench_spec kind)
{
    switch (kind) {
    case NF_BENCH_SPEC_LOOKUP: return "lookup";
    case NF_BENCH_SPEC_DRAFT: return "draft";
    case NF_BENCH_SPEC_NONE: break;
    }
    return "";
}

void nf_bench_spec_args(const struct nf_bench *b, enum nf_bench_spec kind, char **argv, int *k)
{
    if (kind == NF_BENCH_SPEC_LOOKUP) {
        argv[(*k)++] = "--lookup";
    } else if (kind == NF_BENCH_SPEC_DRAFT) {
        argv[(*k)++] = "--draft";
        argv[(*k)++] = (char *)b->o.draft;
    }
}

void nf_bench_run_spec(struct nf_bench *b, struct nf_bench_row *r, enum nf_bench_spec kind,
                       bool mmap, int base)
{
    r->spec = kind;
    r->spec_base = base;
    if (mmap)
        nf_bench_run_mmap(b, r);
    else
        nf_bench_run_stack(b, r, 0.0f);
    if (r->ran)
        nf_bench_progress(b, "%s: %ld drafted, %ld accepted", r->mode, r->drafted, r->accepted);
}

double nf_bench_spec_speedup(const struct nf_bench *b, const struct nf_bench_row *r)
{
    if (!r->spec || r->spec_base < 0 || r->spec_base >= b->n_rows || !r->ran)
        return NAN;
    const struct nf_bench_row *p = &b->rows[r->spec_base];
    return p->ran ? nf_snap_ratio(r->tok_s, p->tok_s) : NAN;
}

bool nf_bench_spec_same(const struct nf_bench *b, const struct nf_bench_row *r)
{
    return r->spec && r->spec_base >= 0 && r->spec_base < b->n_rows && r->ids_hash &&
           r->ids_hash == b->rows[r->spec_base].ids_hash && !r->timed_out &&
           !b->rows[r->spec_base].timed_out;
}

bool nf_bench_spec_differs(const struct nf_bench *b, const struct nf_bench_row *r)
{
    if (!r->spec || r->spec_base < 0 || r->spec_base >= b->n_rows)
        return false;
    const struct nf_bench_row *p = &b->rows[r->spec_base];
    return r->ids_hash && p->ids_hash && !r->timed_out && !p->timed_out &&
           r->ids_hash != p->ids_hash;
}

static void fmt(char *buf, size_t len, double v, const char *f)
{
    if (isnan(v) || isinf(v))
        snprintf(buf, len, "-");
    else
        snprintf(buf, len, f, v);
}

/* One line of the table: a speculating row, or the plain row it is compared with. */
static void print_line(const struct nf_bench *b, const struct nf_bench_row *r)
{
    char c[7][32];
    fmt(c[0], 32, r->ran ? r->tok_s : NAN, "%.3f");
    /* One sequence: the stack's compute counters give their own rate; run's is the client's. */
    fmt(c[1], 32, !r->ran ? NAN : r->is_mmap ? r->tok_s : r->agg_tok_s, "%.3f");
    fmt(c[2], 32, r->bytes_per_tok / 1e6, "%.3f");
    fmt(c[3], 32, r->spec ? (double)r->drafted : NAN, "%.0f");
    fmt(c[4], 32, r->spec ? (double)r->accepted : NAN, "%.0f");
    fmt(c[5], 32, r->spec && r->drafted ? 100.0 * (double)r->accepted / (double)r->drafted : NAN,
        "%.1f%%");
    fmt(c[6], 32, r->spec ? nf_bench_spec_speedup(b, r) : 1.0, "%.2fx");
    const char *same = "-";
    if (r->spec && r->spec_base >= 0 && r->ids_hash && b->rows[r->spec_base].ids_hash &&
        !r->timed_out && !b->rows[r->spec_base].timed_out)
        same = nf_bench_spec_same(b, r) ? "yes" : "NO";
    printf("%-13s %13s %15s %9s %8s %9s %7s %9s %11s\n", r->mode, c[0], c[1], c[2], c[3], c[4],
           c[5], c[6], same);
}

void nf_bench_print_spec(const struct nf_bench *b)
{
    bool any = false;
    for (int i = 0; i < b->n_rows; i++)
        any |= b->rows[i].spec != NF_BENCH_SPEC_NONE;
    if (!any)
        return;
    printf("\n%-13s %13s %15s %9s %8s %9s %7s %9s %11s\n", "SPECULATION", "tok/s per seq",
           "aggregate tok/s", "MB/token", "drafted", "accepted", "rate", "speed-up", "same output");
    /* Each plain row that a speculating row is compared with, then those rows. */
    for (int i = 0; i < b->n_rows; i++) {
        bool base = false;
        for (int j = 0; j < b->n_rows; j++)
            base |= b->rows[j].spec && b->rows[j].spec_base == i;
        if (!base)
            continue;
        print_line(b, &b->rows[i]);
        for (int j = 0; j < b->n_rows; j++)
            if (b->rows[j].spec && b->rows[j].spec_base == i)
                print_line(b, &b->rows[j]);
    }
}
