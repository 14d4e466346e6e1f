/* tokenizer.c - vocabulary loading from GGUF metadata, special-token partitioning, token pieces and
 * streaming detokenization. */
#include <ctype.h>
#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "nf_err.h"
#include "tok_internal.h"
#include "tokenizer.h"
#include "unicode.h"

/* ---- string map ------------------------------------------------------------------------- */

static uint32_t hash_bytes(const char *s, uint32_t n)
{
    uint32_t h = 2166136261u; /* FNV-1a */
    for (uint32_t i = 0; i < n; i++) {
        h ^= (unsigned char)s[i];
        h *= 16777619u;
    }
    return h;
}

int nf_strmap_init(struct nf_strmap *m, uint32_t cap)
{
    memset(m, 0, sizeof(*m));
    uint32_t slots = 16;
    while (slots < 2 * (uint64_t)cap)
        slots *= 2;
    m->mask = slots - 1;
    m->cap = cap;
    m->slot = malloc(slots * sizeof(*m->slot));
    m->key = malloc((cap ? cap : 1) * sizeof(*m->key));
    m->klen = malloc((cap ? cap : 1) * sizeof(*m->klen));
    m->val = malloc((cap ? cap : 1) * sizeof(*m->val));
    if (!m->slot || !m->key || !m->klen || !m->val) {
        nf_strmap_free(m);
        return -ENOMEM;
    }
    memset(m->slot, 0xFF, slots * sizeof(*m->slot));
    return 0;
}

void nf_strmap_free(struct nf_strmap *m)
{
    free(m->slot);
    free(m->key);
    free(m->klen);
    free(m->val);
    memset(m, 0, sizeof(*m));
}

static int32_t *strmap_find_slot(const struct nf_strmap *m, const char *key, uint32_t klen)
{
    for (uint32_t i = hash_bytes(key, klen) & m->mask;; i = (i + 1) & m->mask) {
        int32_t e = m->slot[i];
        if (e < 0 || (m->klen[e] == klen && memcmp(m->key[e], key, klen) == 0))
            return &m->slot[i];
    }
}

int nf_strmap_put(struct nf_strmap *m, const char *key, uint32_t klen, int32_t val, bool replace)
{
    int32_t *s = strmap_find_slot(m, key, klen);
    if (*s >= 0) {
        if (replace)
            m->val[*s] = val;
        return 0;
    }
    if (m->n >= m->cap)
        return -ENOSPC;
    m->key[m->n] = key;
    m->klen[m->n] = klen;
    m->val[m->n] = val;
    *s = (int32_t)m->n++;
    return 0;
}

int32_t nf_strmap_get(const struct nf_strmap *m, const char *key, uint32_t klen)
{
    if (!m->slot)
        return -1;
    int32_t e = *strmap_find_slot(m, key, klen);
    return e < 0 ? -1 : m->val[e];
}

/* ---- loading ------------------------------------------------------------------------------ */

/* The prefix of its error messages: the file's path, or "gguf" for one read from memory. */
static const char *gguf_name(const struct nf_gguf *g)
{
    return g->path[0] ? g->path : "gguf";
}

static uint16_t attr_of_type(int64_t t)
{
    switch (t) {
    case 1: return NF_TATTR_NORMAL;
    case 2: return NF_TATTR_UNKNOWN;
    case 3: return NF_TATTR_CONTROL;
    case 4: return NF_TATTR_USER_DEFINED;
    case 5: return NF_TATTR_UNUSED;
    case 6: return NF_TATTR_BYTE;
    default: return 0; /* undefined */
    }
}

static void get_id(const struct nf_gguf *g, const char *key, int32_t n_tokens, int32_t *id)
{
    uint32_t v;
    /* Out-of-range ids (e.g. 0xFFFFFFFF for "none") keep the default, as llama.cpp does. */
    if (nf_gguf_get_u32(g, key, &v) == 0 && v < (uint32_t)n_tokens)
        *id = (int32_t)v;
}

static void get_flag(const struct nf_gguf *g, const char *key, bool *b)
{
    bool v;
    if (nf_gguf_get_bool(g, key, &v) == 0)
        *b = v;
}

static int load_tokens(struct nf_vocab *v, const struct nf_gguf *g, char *err, size_t errlen)
{
    uint64_t n;
    const void *data;
    int rc = nf_gguf_get_arr(g, "tokenizer.ggml.tokens", NF_GGUF_STRING, &n, &data);
    if (rc)
        return nf_errf_at(err, errlen, rc, gguf_name(g),
                          "tokenizer.ggml.tokens: expected an array of strings (%s)",
                          nf_strerror(rc));
    if (n == 0 || n > INT32_MAX / 2)
        return nf_errf_at(err, errlen, NF_EVOCAB, gguf_name(g),
                          "tokenizer.ggml.tokens: %llu tokens (expected 1..%d)",
                          (unsigned long long)n, INT32_MAX / 2);
    const struct nf_gguf_str *toks = data;
    v->n_tokens = (int32_t)n;
    uint64_t bytes = 0;
    for (uint64_t i = 0; i < n; i++)
        bytes += (toks[i].len ? toks[i].len : 24) + 1;
    if (bytes > UINT32_MAX)
        return nf_errf_at(err, errlen, NF_EVOCAB, gguf_name(g),
                          "tokenizer.ggml.tokens: texts too large");
    v->text = malloc(bytes);
    v->text_off = malloc(n * sizeof(*v->text_off));
    v->text_len = malloc(n * sizeof(*v->text_len));
    v->score = calloc(n, sizeof(*v->score));
    v->attr = malloc(n * sizeof(*v->attr));
    if (!v->text || !v->text_off || !v->text_len || !v->score || !v->attr ||
        nf_strmap_init(&v->tok_map, (uint32_t)n))
        return -ENOMEM;
    uint32_t off = 0;
    for (uint64_t i = 0; i < n; i++) {
        v->text_off[i] = off;
        if (toks[i].len == 0) {
            /* llama.cpp renames empty tokens so that they can never match. */
            off += (uint32_t)sprintf(v->text + off, "[EMPTY_%llu]", (unsigned long long)i);
        } else {
            memcpy(v->text + off, toks[i].s, toks[i].len);
            off += (uint32_t)toks[i].len;
        }
        v->text_len[i] = off - v->text_off[i];
        v->text[off++] = '\0';
        v->attr[i] = NF_TATTR_NORMAL;
    }
    for (int32_t i = 0; i < v->n_tokens; i++) {
        rc = nf_strmap_put(&v->tok_map, nf_vocab_text(v, i), v->text_len[i], i, true);
        if (rc)
            return rc;
    }

    rc = nf_gguf_get_arr(g, "tokenizer.ggml.scores", NF_GGUF_FLOAT32, &n, &data);
    if (rc == 0 && n != (uint64_t)v->n_tokens)
        return nf_errf_at(err, errlen, NF_EVOCAB, gguf_name(g),
                          "tokenizer.ggml.scores: %llu entries, expected %d", (unsigned long long)n,
                          v->n_tokens);
    if (rc == 0)
        memcpy(v->score, data, n * sizeof(float));
    else if (rc != NF_ENOKEY)
        return nf_errf_at(err, errlen, rc, gguf_name(g),
                          "tokenizer.ggml.scores: expected an array of float32");

    const struct nf_gguf_value *tt = nf_gguf_get(g, "tokenizer.ggml.token_type");
    if (tt) {
        if (tt->type != NF_GGUF_ARRAY ||
            (tt->v.arr.type != NF_GGUF_INT32 && tt->v.arr.type != NF_GGUF_UINT32) ||
            tt->v.arr.n != (uint64_t)v->n_tokens)
            return nf_errf_at(err, errlen, NF_EVOCAB, gguf_name(g),
                              "tokenizer.ggml.token_type: expected an array of %d int32",
                              v->n_tokens);
        const int32_t *t = tt->v.arr.data;
        for (int32_t i = 0; i < v->n_tokens; i++)
            v->attr[i] = attr_of_type(t[i]);
    }
    return 0;
}

static int load_merges(struct nf_vocab *v, const struct nf_gguf *g, char *err, size_t errlen)
{
    uint64_t n;
    const void *data;
    int rc = nf_gguf_get_arr(g, "tokenizer.ggml.merges", NF_GGUF_STRING, &n, &data);
    if (rc)
        return nf_errf_at(err, errlen, rc == NF_ENOKEY ? NF_EVOCAB : rc, gguf_name(g),
                          "tokenizer.ggml.merges: a gpt2 tokenizer needs an array of strings (%s)",
                          nf_strerror(rc));
    if (n > INT32_MAX)
        return nf_errf_at(err, errlen, NF_EVOCAB, gguf_name(g),
                          "tokenizer.ggml.merges: too many entries");
    const struct nf_gguf_str *m = data;
    uint64_t bytes = 1;
    for (uint64_t i = 0; i < n; i++)
        bytes += m[i].len + 1;
    v->merge_text = malloc(bytes);
    if (!v->merge_text || nf_strmap_init(&v->merge_map, (uint32_t)n))
        return -ENOMEM;
    size_t off = 0;
    for (uint64_t i = 0; i < n; i++) {
        char *s = v->merge_text + off;
        memcpy(s, m[i].s, m[i].len);
        s[m[i].len] = '\0';
        off += m[i].len + 1;
        /* "left right", split at the first space after the first byte; malformed entries can
         * never match a pair of non-empty texts and are skipped. The first rank wins. */
        const char *sp = m[i].len > 1 ? memchr(s + 1, ' ', m[i].len - 1) : NULL;
        if (!sp)
            continue;
        rc = nf_strmap_put(&v->merge_map, s, (uint32_t)m[i].len, (int32_t)i, false);
        if (rc)
            return rc;
    }
    return 0;
}

int nf_vocab_load(struct nf_vocab **out, const struct nf_gguf *g, char *err, size_t errlen)
{
    *out = NULL;
    if (err && errlen)
        err[0] = '\0';
    const char *model = NULL;
    int rc = nf_gguf_get_str(g, "tokenizer.ggml.model", &model);
    if (rc)
        return nf_errf_at(err, errlen, rc == NF_ENOKEY ? NF_EVOCAB : rc, gguf_name(g),
                          "tokenizer.ggml.model: %s (expected \"llama\" or \"gpt2\")",
                          nf_strerror(rc));
    struct nf_vocab *v = calloc(1, sizeof(*v));
    if (!v)
        return -ENOMEM;
    if (strcmp(model, "llama") == 0) {
        v->type = NF_VOCAB_SPM;
        v->bos = 1;
        v->eos = 2;
        v->unk = 0;
        v->add_bos = true;
        v->add_space_prefix = true;
    } else if (strcmp(model, "gpt2") == 0) {
        v->type = NF_VOCAB_BPE;
        v->bos = 11;
        v->eos = 11;
        v->unk = -1;
    } else {
        rc = nf_errf_at(err, errlen, NF_EVOCAB, gguf_name(g),
                        "tokenizer.ggml.model: unsupported value '%s' (supported: llama, gpt2)",
                        model);
        goto fail;
    }
    v->eot = v->eom = -1;
    rc = load_tokens(v, g, err, errlen);
    if (rc)
        goto fail;
    if (v->bos >= v->n_tokens)
        v->bos = -1;
    if (v->eos >= v->n_tokens)
        v->eos = -1;
    if (v->unk >= v->n_tokens)
        v->unk = -1;

    if (v->type == NF_VOCAB_BPE) {
        const char *pre = NULL;
        if (nf_gguf_get_str(g, "tokenizer.ggml.pre", &pre) != 0 || pre[0] == '\0')
            pre = "default";
        unsigned flags;
        if (nf_pretok_lookup(pre, &v->pre, &flags) != 0) {
            char heads[256];
            nf_pretok_heads(heads, sizeof(heads));
            rc = nf_errf_at(err, errlen, NF_EVOCAB, gguf_name(g),
                            "tokenizer.ggml.pre: unsupported pre-tokenizer '%s' (supported: %s "
                            "and their aliases)",
                            pre, heads);
            goto fail;
        }
        v->ignore_merges = flags & NF_PRE_IGNORE_MERGES;
        if (flags & NF_PRE_ADD_BOS)
            v->add_bos = true;
        if (flags & NF_PRE_NO_BOS)
            v->bos = -1;
        rc = load_merges(v, g, err, errlen);
        if (rc)
            goto fail;
    }

    get_id(g, "tokenizer.ggml.bos_token_id", v->n_tokens, &v->bos);
    get_id(g, "tokenizer.ggml.eos_token_id", v->n_tokens, &v->eos);
    get_id(g, "tokenizer.ggml.unknown_token_id", v->n_tokens, &v->unk);
    get_id(g, "tokenizer.ggml.eot_token_id", v->n_tokens, &v->eot);
    get_id(g, "tokenizer.ggml.eom_token_id", v->n_tokens, &v->eom);
    get_flag(g, "tokenizer.ggml.add_space_prefix", &v->add_space_prefix);
    get_flag(g, "tokenizer.ggml.add_bos_token", &v->add_bos);
    get_flag(g, "tokenizer.ggml.add_eos_token", &v->add_eos);

    rc = nf_vocab_setup_special(v, g);
    if (rc)
        goto fail;
    *out = v;
    return 0;
fail:
    if (rc == -ENOMEM && err && errlen && !err[0])
        nf_errf_at(err, errlen, rc, gguf_name(g), "out of memory loading the vocabulary");
    nf_vocab_free(v);
    return rc;
}

void nf_vocab_free(struct nf_vocab *v)
{
    if (!v)
        return;
    free(v->text);
    free(v->text_off);
    free(v->text_len);
    free(v->score);
    free(v->attr);
    nf_strmap_free(&v->tok_map);
    free(v->merge_text);
    nf_strmap_free(&v->merge_map);
    free(v->special);
    free(v->eog);
    free(v);
}

int32_t nf_vocab_n_tokens(const struct nf_vocab *v)
{
    return v->n_tokens;
}

int32_t nf_vocab_bos(const struct nf_vocab *v)
{
    return v->bos;
}

int32_t nf_vocab_eos(const struct nf_vocab *v)
{
    return v->eos;
}

bool nf_vocab_add_bos(const struct nf_vocab *v)
{
    return v->add_bos;
}

bool nf_vocab_is_eog(const struct nf_vocab *v, int32_t tok)
{
    for (int i = 0; i < v->n_eog; i++) {
        if (v->eog[i] == tok)
            return true;
    }
    return false;
}

const char *nf_vocab_token_text(const struct nf_vocab *v, int32_t tok)
{
    return tok >= 0 && tok < v->n_tokens ? nf_vocab_text(v, tok) : NULL;
}

const char *nf_vocab_type_name(const struct nf_vocab *v)
{
    return v->type == NF_VOCAB_SPM ? "spm" : "bpe";
}

/* ---- tokenizing --------------------------------------------------------------------------- */

/* A piece of the input: raw text [off, off + len) or an already matched special token. */
struct frag {
    int32_t tok; /* -1 for raw text */
    size_t off, len;
};

struct frags {
    struct frag *v;
    size_t n, cap;
};

static int frags_push(struct frags *f, struct frag x)
{
    if (f->n == f->cap) {
        size_t cap = f->cap ? f->cap * 2 : 16;
        struct frag *nv = realloc(f->v, cap * sizeof(*nv));
        if (!nv)
            return -ENOMEM;
        f->v = nv;
        f->cap = cap;
    }
    f->v[f->n++] = x;
    return 0;
}

/* Splits raw fragment fr around every occurrence of special token id (llama.cpp's
 * tokenizer_st_partition), honouring its lstrip/rstrip attributes. */
static int split_on_special(const struct nf_vocab *v, const char *text, struct frag fr, int32_t id,
                            struct frags *out)
{
    const char *st = nf_vocab_text(v, id);
    size_t sl = v->text_len[id];
    size_t off = fr.off, len = fr.len;
    for (;;) {
        const char *m = sl ? memmem(text + off, len, st, sl) : NULL;
        if (!m)
            break;
        size_t at = (size_t)(m - text);
        size_t left = at - off;
        if (v->attr[id] & NF_TATTR_LSTRIP) {
            while (left > 0 && isspace((unsigned char)text[off + left - 1]))
                left--;
        }
        if (left > 0 && frags_push(out, (struct frag){-1, off, left}))
            return -ENOMEM;
        if (frags_push(out, (struct frag){id, 0, 0}))
            return -ENOMEM;
        size_t roff = at + sl, rlen = off + len - roff;
        if (v->attr[id] & NF_TATTR_RSTRIP) {
            while (rlen > 0 && isspace((unsigned char)text[roff])) {
                roff++;
                rlen--;
            }
        }
        off = roff;
        len = rlen;
        if (len == 0)
            return 0;
    }
    return frags_push(out, (struct frag){-1, off, len});
}

static int partition(const struct nf_vocab *v, const char *text, size_t len, bool parse_special,
                     struct frags *cur)
{
    struct frags next = {0};
    int rc = 0;
    if (len > 0)
        rc = frags_push(cur, (struct frag){-1, 0, len});
    for (int s = 0; s < v->n_special && rc == 0; s++) {
        int32_t id = v->special[s];
        /* Control and unknown tokens are plain text unless parse_special; user-defined tokens
         * are always matched first. */
        if (!parse_special && (v->attr[id] & (NF_TATTR_CONTROL | NF_TATTR_UNKNOWN)))
            continue;
        next.n = 0;
        for (size_t i = 0; i < cur->n && rc == 0; i++) {
            if (cur->v[i].tok >= 0)
                rc = frags_push(&next, cur->v[i]);
            else
                rc = split_on_special(v, text, cur->v[i], id, &next);
        }
        struct frags t = *cur;
        *cur = next;
        next = t;
    }
    free(next.v);
    return rc;
}

/* SPM text for one fragment: optional leading space, then every space as U+2581. */
static char *spm_escape(const char *s, size_t n, bool prefix, size_t *outlen)
{
    char *e = malloc(3 * (n + 1));
    if (!e)
        return NULL;
    size_t k = 0;
    if (prefix) {
        memcpy(e, "\xe2\x96\x81", 3);
        k = 3;
    }
    for (size_t i = 0; i < n; i++) {
        if (s[i] == ' ') {
            memcpy(e + k, "\xe2\x96\x81", 3);
            k += 3;
        } else {
            e[k++] = s[i];
        }
    }
    *outlen = k;
    return e;
}

int nf_tokenize(const struct nf_vocab *v, const char *text, size_t len, bool add_bos,
                bool parse_special, int32_t *out, int max_out)
{
    if (!v || (!text && len) || (max_out > 0 && !out) || max_out < 0)
        return -EINVAL;
    struct nf_tok_out o = {out, max_out, 0};
    struct frags fr = {0};
    int rc = partition(v, text, len, parse_special, &fr);
    if (rc)
        goto done;
    if (add_bos && v->add_bos) {
        if (v->bos < 0) {
            rc = NF_EVOCAB; /* the vocabulary asks for BOS but has none */
            goto done;
        }
        nf_tok_push(&o, v->bos);
    }
    bool prev_special = true; /* SPM: the first fragment gets the space prefix */
    for (size_t i = 0; i < fr.n && rc == 0; i++) {
        const struct frag *f = &fr.v[i];
        if (f->tok >= 0) {
            nf_tok_push(&o, f->tok);
            prev_special = true;
            continue;
        }
        if (v->type == NF_VOCAB_SPM) {
            size_t el;
            char *e = spm_escape(text + f->off, f->len, v->add_space_prefix && prev_special, &el);
            if (!e) {
                rc = -ENOMEM;
                break;
            }
            rc = nf_spm_tokenize(v, e, el, &o);
            free(e);
            prev_special = false;
        } else {
            rc = nf_bpe_tokenize(v, text + f->off, f->len, &o);
        }
    }
    if (rc == 0 && add_bos && v->add_eos) {
        if (v->eos < 0)
            rc = NF_EVOCAB;
        else
            nf_tok_push(&o, v->eos);
    }
done:
    free(fr.v);
    return rc ? rc : o.n;
}

/* ---- pieces ------------------------------------------------------------------------------- */

static int copy_out(char *buf, int buflen, const char *s, size_t n)
{
    if (n > INT32_MAX)
        return -E2BIG;
    if ((size_t)buflen >= n && n)
        memcpy(buf, s, n);
    return (int)n;
}

static int hexval(char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    c = (char)toupper((unsigned char)c);
    return (c >= 'A' && c <= 'F') ? c - 'A' + 10 : -1;
}

/* SPM normal token: U+2581 back to spaces. */
static int piece_spm(const char *t, size_t n, char *buf, int buflen)
{
    size_t k = 0;
    for (size_t i = 0; i < n;) {
        bool esc = i + 3 <= n && memcmp(t + i, "\xe2\x96\x81", 3) == 0;
        if ((size_t)buflen > k)
            buf[k] = esc ? ' ' : t[i];
        k++;
        i += esc ? 3 : 1;
    }
    return (int)k;
}

static void put_bytes(char *buf, int buflen, size_t *k, const char *s, size_t n)
{
    for (size_t j = 0; j < n; j++, (*k)++) {
        if ((size_t)buflen > *k)
            buf[*k] = s[j];
    }
}

/* BPE normal token: every code point back to its byte; code points outside the byte map are
 * written as llama.cpp does ("[UNK_BYTE_0x<utf8 hex><token text>]"). */
static int piece_bpe(const char *t, size_t n, char *buf, int buflen)
{
    size_t k = 0;
    for (size_t off = 0; off < n;) {
        size_t start = off;
        int b = nf_unicode_to_byte(nf_utf8_decode(t, n, &off));
        if (b >= 0) {
            char c = (char)b;
            put_bytes(buf, buflen, &k, &c, 1);
            continue;
        }
        char hex[32];
        size_t m = (size_t)snprintf(hex, sizeof(hex), "[UNK_BYTE_0x");
        for (size_t j = start; j < off && m + 3 < sizeof(hex); j++)
            m += (size_t)snprintf(hex + m, sizeof(hex) - m, "%02x", (unsigned char)t[j]);
        put_bytes(buf, buflen, &k, hex, m);
        put_bytes(buf, buflen, &k, t, n);
        put_bytes(buf, buflen, &k, "]", 1);
    }
    return (int)k;
}

int nf_token_to_piece(const struct nf_vocab *v, int32_t tok, char *buf, int buflen)
{
    if (!v || tok < 0 || tok >= v->n_tokens || buflen < 0 || (buflen > 0 && !buf))
        return -EINVAL;
    uint16_t a = v->attr[tok];
    const char *t = nf_vocab_text(v, tok);
    size_t n = v->text_len[tok];
    if (a & (NF_TATTR_UNKNOWN | NF_TATTR_CONTROL))
        return 0;
    if (a & NF_TATTR_USER_DEFINED)
        return copy_out(buf, buflen, t, n);
    if (a & NF_TATTR_NORMAL) {
        return v->type == NF_VOCAB_SPM ? piece_spm(t, n, buf, buflen)
                                       : piece_bpe(t, n, buf, buflen);
    }
    if ((a & NF_TATTR_BYTE) && v->type == NF_VOCAB_SPM) {
        /* "<0xNN>" */
        int hi = n == 6 ? hexval(t[3]) : -1, lo = n == 6 ? hexval(t[4]) : -1;
        if (hi < 0 || lo < 0)
            return 0;
        char c = (char)(hi * 16 + lo);
        return copy_out(buf, buflen, &c, 1);
    }
    return 0; /* unused and undefined tokens have no piece */
}

/* ---- streaming detokenizer ---------------------------------------------------------------- */

void nf_detok_init(struct nf_detok *d)
{
    memset(d, 0, sizeof(*d));
}

/* Length of the prefix of s[0..n) that ends on a character boundary: a trailing lead byte
 * followed by fewer continuation bytes than it announces is held back. Invalid bytes count as
 * whole characters (they are passed through). */
static int complete_prefix(const unsigned char *s, int n)
{
    for (int back = 1; back <= 4 && back <= n; back++) {
        unsigned char c = s[n - back];
        if ((c & 0xC0) == 0x80)
            continue; /* continuation byte: keep looking for the lead */
        int need = (c & 0xE0) == 0xC0 ? 2 : (c & 0xF0) == 0xE0 ? 3 : (c & 0xF8) == 0xF0 ? 4 : 1;
        return back < need ? n - back : n;
    }
    return n;
}

int nf_detok_push(struct nf_detok *d, const char *piece, int piece_len, char *out)
{
    int n = d->n_pending;
    memcpy(out, d->pending, (size_t)n);
    if (piece_len > 0)
        memcpy(out + n, piece, (size_t)piece_len);
    n += piece_len > 0 ? piece_len : 0;
    int k = complete_prefix((const unsigned char *)out, n);
    d->n_pending = n - k;
    memcpy(d->pending, out + k, (size_t)d->n_pending);
    return k;
}

int nf_detok_flush(struct nf_detok *d, char *out)
{
    int n = d->n_pending;
    memcpy(out, d->pending, (size_t)n);
    d->n_pending = 0;
    return n;
}

int nf_tokenize_alloc(const struct nf_vocab *v, const char *text, size_t len, bool add_bos,
                      bool parse_special, size_t extra, int32_t **out)
{
    *out = NULL;
    if (len > INT_MAX / 2 || extra > INT_MAX / 2)
        return -EOVERFLOW;
    /* Most texts give at most a token per byte (plus BOS/EOS); byte fallback can give more. */
    int cap = (int)len + 8;
    for (int attempt = 0; attempt < 2; attempt++) {
        int32_t *ids = malloc(sizeof(int32_t) * ((size_t)cap + extra));
        if (!ids)
            return -ENOMEM;
        int n = nf_tokenize(v, text, len, add_bos, parse_special, ids, cap);
        if (n >= 0 && n <= cap) {
            *out = ids;
            return n;
        }
        free(ids);
        if (n < 0)
            return n;
        cap = n; /* the exact count, known now */
    }
    return -EOVERFLOW; /* the count changed between two runs: cannot happen */
}
