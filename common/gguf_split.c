/* gguf_split.c - joins the parts of a split GGUF model (llama.cpp's gguf-split layout). */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "gguf_impl.h"
#include "nf_err.h"

/* gguf-split numbers parts with five digits; more parts than that cannot be named. */
#define GGUF_SPLIT_MAX 99999

/* Reads split.no / split.count of g into *no / *count: 0, or NF_ENOKEY when the file has no
 * split.count (not split), or another negative code with err set. */
static int split_keys(const struct nf_gguf *g, uint32_t *no, uint32_t *count, char *err,
                      size_t errlen)
{
    int rc = nf_gguf_get_u32(g, "split.count", count);
    if (rc == NF_ENOKEY)
        return rc;
    if (rc || *count == 0 || *count > GGUF_SPLIT_MAX)
        return nf_errf(err, errlen, rc ? rc : NF_ECORRUPT,
                       "%s: split.count is not an integer in 1..%d", g->path, GGUF_SPLIT_MAX);
    if ((rc = nf_gguf_get_u32(g, "split.no", no)))
        return nf_errf(err, errlen, rc, "%s: split.count is %u but split.no is %s", g->path, *count,
                       rc == NF_ENOKEY ? "missing" : "not an integer");
    if (*no >= *count)
        return nf_errf(err, errlen, NF_ECORRUPT, "%s: split.no %u is not below split.count %u",
                       g->path, *no, *count);
    return 0;
}

/* The architecture a part names, or "" when it names none (parts after the first carry only the
 * split.* keys). */
static const char *arch_of(const struct nf_gguf *g)
{
    const char *a = NULL;
    return nf_gguf_get_str(g, "general.architecture", &a) ? "" : a;
}

/* Checks part i (opened as s) against the first file g. */
static int check_part(const struct nf_gguf *g, const struct nf_gguf *s, uint32_t i, uint32_t count,
                      char *err, size_t errlen)
{
    uint32_t no = 0, n = 0;
    int rc = split_keys(s, &no, &n, err, errlen);
    if (rc == NF_ENOKEY)
        return nf_errf(err, errlen, NF_ECORRUPT,
                       "%s: part %u of %u of %s has no split.count (not a split part)", s->path,
                       i + 1, count, g->path);
    if (rc)
        return rc;
    if (n != count)
        return nf_errf(err, errlen, NF_ECORRUPT,
                       "%s: split.count is %u, but the first part %s says %u", s->path, n, g->path,
                       count);
    if (no != i)
        return nf_errf(err, errlen, NF_ECORRUPT, "%s: split.no is %u, expected %u (part %u of %u)",
                       s->path, no, i, i + 1, count);
    /* Every part carries its model's tensor total: a part of another model rarely agrees. */
    int64_t t0 = -1, t = -1;
    nf_gguf_get_i64(g, "split.tensors.count", &t0);
    nf_gguf_get_i64(s, "split.tensors.count", &t);
    if (t != t0)
        return nf_errf(err, errlen, NF_ECORRUPT,
                       "%s: split.tensors.count is %" PRId64 ", but the first part %s says %" PRId64
                       " (a part of another model?)",
                       s->path, t, g->path, t0);
    const char *a0 = arch_of(g), *a = arch_of(s);
    if (*a && strcmp(a, a0))
        return nf_errf(err, errlen, NF_ECORRUPT,
                       "%s: general.architecture is '%.64s', but the first part's is '%.64s'",
                       s->path, a, a0);
    return 0;
}

/* Writes into out the name of part i (0-based) of count, given the first part's name, which must
 * end in "-00001-of-NNNNN.gguf" with NNNNN = count. */
static int part_name(char *out, size_t outlen, const char *first, uint32_t i, uint32_t count,
                     char *err, size_t errlen)
{
    char tail[40];
    snprintf(tail, sizeof(tail), "-%05u-of-%05u.gguf", 1u, count);
    size_t n = strlen(first), t = strlen(tail);
    if (n < t || strcmp(first + n - t, tail))
        return nf_errf(err, errlen, NF_EUSAGE,
                       "%s: split.count is %u, so the name should end in '%s' (the first part)",
                       first, count, tail);
    if (snprintf(out, outlen, "%.*s-%05u-of-%05u.gguf", (int)(n - t), first, i + 1, count) >=
        (int)outlen)
        return nf_errf(err, errlen, NF_EUSAGE, "%s: path too long for its parts", first);
    return 0;
}

/* Merges the tensor tables of g (part 0) and sub[1..count) into one, each tensor keeping its part
 * and its offset moved into the joint offset space. */
static int merge_tensors(struct nf_gguf *g, struct nf_gguf **sub, uint32_t count, char *err,
                         size_t errlen)
{
    struct gguf_impl *im = (struct gguf_impl *)g;
    uint64_t total = g->n_tensors;
    for (uint32_t i = 1; i < count; i++)
        total += sub[i]->n_tensors;
    if (total > UINT32_MAX - 1)
        return nf_errf(err, errlen, NF_ECORRUPT, "%s: %" PRIu64 " tensors in all parts", g->path,
                       total);
    struct nf_gguf_tensor *all = calloc(total ? total : 1, sizeof(*all));
    struct gguf_htab idx = {0};
    if (!all || nf__gguf_htab_init(&idx, total)) {
        free(all);
        return nf_errf(err, errlen, -ENOMEM, "%s: out of memory for %" PRIu64 " tensors", g->path,
                       total);
    }
    uint64_t k = 0;
    for (uint32_t i = 0; i < count; i++) {
        const struct nf_gguf *s = i ? sub[i] : g;
        for (uint64_t j = 0; j < s->n_tensors; j++, k++) {
            all[k] = s->tensors[j];
            all[k].offset += g->parts[i].base;
            all[k].part = i;
            int64_t dup = nf__gguf_htab_insert(&idx, all, sizeof(*all), (uint32_t)k);
            if (dup >= 0) {
                int rc = nf_errf(err, errlen, NF_ECORRUPT, "%s: tensor '%.64s' is also in %s",
                                 g->parts[i].path, all[k].name.s, g->parts[all[dup].part].path);
                free(all);
                free(idx.slot);
                return rc;
            }
        }
    }
    free(g->tensors);
    free(im->tensor_index.slot);
    g->tensors = all;
    g->n_tensors = total;
    im->tensor_index = idx;
    return 0;
}

int nf__gguf_split_join(struct nf_gguf *g, char *err, size_t errlen)
{
    struct gguf_impl *im = (struct gguf_impl *)g;
    uint32_t no = 0, count = 0;
    int rc = split_keys(g, &no, &count, err, errlen);
    if (rc == NF_ENOKEY)
        return 0;
    if (rc)
        return rc;
    if (no != 0)
        return nf_errf(err, errlen, NF_EUSAGE,
                       "%s: this is part %u of %u of a split model; give the first part", g->path,
                       no + 1, count);
    if (count == 1)
        return 0;
    struct nf_gguf_part *parts = calloc(count, sizeof(*parts));
    struct nf_gguf **sub = calloc(count, sizeof(*sub));
    if (!parts || !sub) {
        free(parts);
        free(sub);
        return nf_errf(err, errlen, -ENOMEM, "%s: out of memory", g->path);
    }
    parts[0] = g->parts[0];
    free(g->parts);
    g->parts = parts;
    im->sub = sub;
    /* n_parts counts the parts opened so far, so nf_gguf_close releases exactly those. */
    for (uint32_t i = 1; i < count; i++) {
        char name[sizeof(parts[i].path)];
        if ((rc = part_name(name, sizeof(name), g->path, i, count, err, errlen)))
            return rc;
        char serr[512];
        if ((rc = nf__gguf_open_one(&sub[i], name, serr, sizeof(serr))))
            return nf_errf(err, errlen, rc, "part %u of %u of %s: %s", i + 1, count, g->path, serr);
        g->n_parts = i + 1;
        if ((rc = check_part(g, sub[i], i, count, err, errlen)))
            return rc;
        uint64_t end = parts[i - 1].base + parts[i - 1].size + NF_GGUF_PART_GAP;
        parts[i] = (struct nf_gguf_part){.fd = sub[i]->fd,
                                         .base = (end + NF_GGUF_PART_GAP - 1) &
                                                 ~(uint64_t)(NF_GGUF_PART_GAP - 1),
                                         .size = sub[i]->file_size};
        snprintf(parts[i].path, sizeof(parts[i].path), "%s", name);
    }
    int64_t declared = 0;
    if (nf_gguf_get_i64(g, "split.tensors.count", &declared) == 0) {
        uint64_t total = 0;
        for (uint32_t i = 0; i < count; i++)
            total += i ? sub[i]->n_tensors : g->n_tensors;
        if (declared < 0 || (uint64_t)declared != total)
            return nf_errf(err, errlen, NF_ECORRUPT,
                           "%s: split.tensors.count is %" PRId64 ", but the %u parts hold %" PRIu64
                           " tensors",
                           g->path, declared, count, total);
    }
    if ((rc = merge_tensors(g, sub, count, err, errlen)))
        return rc;
    g->file_size = parts[count - 1].base + parts[count - 1].size;
    return 0;
}
