/* test_tokenizer.c - tokenizers against llama.cpp's test vectors and goldens, hand-made
 * vocabularies, pieces and streaming detokenization. */
#include <dirent.h>
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "gguf.h"
#include "gguf_write.h"
#include "nf_err.h"
#include "tok_internal.h"
#include "tokenizer.h"
#include "unicode.h"

#define MAX_IDS 8192

static char *slurp(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        return NULL;
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    rewind(f);
    char *b = malloc((size_t)n + 1);
    if (b && fread(b, 1, (size_t)n, f) != (size_t)n) {
        free(b);
        b = NULL;
    }
    fclose(f);
    if (b) {
        b[n] = '\0';
        *len = (size_t)n;
    }
    return b;
}

/* The open GGUF file, or NULL when it does not exist; any other failure fails the test. */
static struct nf_gguf *open_gguf(const char *path)
{
    char err[512];
    struct nf_gguf *g;
    int rc = nf_gguf_open(&g, path, err, sizeof(err));
    if (rc == -ENOENT)
        return NULL;
    if (rc)
        fail_msg("%s", err);
    return g;
}

static struct nf_vocab *load_vocab_file(const char *path)
{
    char err[512];
    struct nf_gguf *g = open_gguf(path);
    if (!g)
        return NULL;
    struct nf_vocab *v;
    int rc = nf_vocab_load(&v, g, err, sizeof(err));
    nf_gguf_close(g);
    if (rc)
        fail_msg("%s: %s", path, err);
    return v;
}

/* Tokenizes and checks that a too-small buffer reports the same count. */
static int tokenize(const struct nf_vocab *v, const char *s, size_t len, bool bos, bool special,
                    int32_t *ids)
{
    int n = nf_tokenize(v, s, len, bos, special, ids, MAX_IDS);
    assert_true(n >= 0 && n <= MAX_IDS);
    if (n > 0) {
        int32_t one;
        assert_int_equal(nf_tokenize(v, s, len, bos, special, &one, 1), n);
        assert_int_equal(one, ids[0]);
    }
    return n;
}

/* Concatenated pieces of ids[0..n) into out (NUL-terminated); returns the length. */
static size_t detok_all(const struct nf_vocab *v, const int32_t *ids, int n, char *out, size_t cap)
{
    size_t k = 0;
    for (int i = 0; i < n; i++) {
        int m = nf_token_to_piece(v, ids[i], out + k, (int)(cap - k - 1));
        assert_true(m >= 0 && (size_t)m < cap - k);
        k += (size_t)m;
    }
    out[k] = '\0';
    return k;
}

/* Checks every case of inp (cases separated by "\n__ggml_vocab_test__\n") against the matching
 * line of out: nf_tokenize (no BOS, no special parsing) gives the line's ids, and the pieces give
 * the input back (after the SentencePiece space prefix when `prefix`, unless the ids hold the
 * unknown token). Returns the number of cases; modifies inp and out. */
static int check_cases(const char *name, const struct nf_vocab *v, char *inp, char *out,
                       bool prefix)
{
    static const char sep[] = "\n__ggml_vocab_test__\n";
    int32_t *ids = malloc(MAX_IDS * sizeof(*ids));
    char *back = malloc(1 << 16);
    assert_non_null(ids);
    assert_non_null(back);
    char *s = inp, *o = out;
    int n_cases = 0;
    for (char *e; (e = strstr(s, sep)) != NULL; s = e + strlen(sep), n_cases++) {
        *e = '\0';
        char *eol = strchr(o, '\n');
        if (!eol)
            fail_msg("%s: no expected ids for case %d (\"%s\")", name, n_cases, s);
        *eol = '\0';
        int n = tokenize(v, s, strlen(s), false, false, ids);
        int k = 0;
        bool unk = false;
        for (char *p = o, *end; *p; p = end, k++) {
            long want = strtol(p, &end, 10);
            if (end == p)
                break;
            if (k >= n || ids[k] != want)
                fail_msg("%s case %d (\"%s\"): token %d is %d, expected %ld (line \"%s\")", name,
                         n_cases, s, k, k < n ? ids[k] : -1, want, o);
            const char *t = nf_vocab_token_text(v, ids[k]);
            unk |= strcmp(t, "<unk>") == 0;
        }
        if (k != n)
            fail_msg("%s case %d: %d tokens, expected %d", name, n_cases, n, k);
        size_t bl = detok_all(v, ids, n, back, 1 << 16);
        const char *cmp = back;
        if (prefix && bl > 0 && back[0] == ' ')
            cmp++;
        if (!unk && strcmp(cmp, s) != 0)
            fail_msg("%s case %d: detokenized \"%s\", expected \"%s\"", name, n_cases, cmp, s);
        o = eol + 1;
    }
    if (*o)
        fail_msg("%s: more expected lines than cases (%d)", name, n_cases);
    free(ids);
    free(back);
    return n_cases;
}

static const char *const shared_vocabs[] = {
    "llama-spm", "phi-3", "gpt-2", "falcon", "deepseek-llm", "llama-bpe", "qwen2",
};
#define N_SHARED       (sizeof(shared_vocabs) / sizeof(shared_vocabs[0]))
#define N_SHARED_CASES 46

static bool is_spm(const struct nf_vocab *v)
{
    return strcmp(nf_vocab_type_name(v), "spm") == 0;
}

/* Every case of ggml-vocab-X.gguf.inp tokenizes (no BOS, no special parsing) to the matching
 * line of .out, and the pieces give the input back. */
static void test_vocab_vectors(void **state)
{
    (void)state;
    for (size_t i = 0; i < N_SHARED; i++) {
        char path[1024], ipath[1100], opath[1100];
        snprintf(path, sizeof(path), "%s/golden/vocab/ggml-vocab-%s.gguf", NF_SHARED_DIR,
                 shared_vocabs[i]);
        struct nf_vocab *v = load_vocab_file(path);
        if (!v)
            skip();
        snprintf(ipath, sizeof(ipath), "%s.inp", path);
        snprintf(opath, sizeof(opath), "%s.out", path);
        size_t ilen, olen;
        char *inp = slurp(ipath, &ilen), *outp = slurp(opath, &olen);
        assert_non_null(inp);
        assert_non_null(outp);
        assert_int_equal(check_cases(shared_vocabs[i], v, inp, outp, is_spm(v)), N_SHARED_CASES);
        free(inp);
        free(outp);
        nf_vocab_free(v);
    }
}

/* ---- the two golden fields this test reads, from one JSON line ------------------------------ */

static int hex4(const char *s)
{
    int v = 0;
    for (int i = 0; i < 4; i++) {
        char c = s[i];
        int d = c >= '0' && c <= '9'   ? c - '0'
                : c >= 'a' && c <= 'f' ? c - 'a' + 10
                : c >= 'A' && c <= 'F' ? c - 'A' + 10
                                       : -1;
        if (d < 0)
            return -1;
        v = v * 16 + d;
    }
    return v;
}

/* Unescapes the JSON string value of "key" in line into out (NUL-terminated); returns its byte
 * length or -1. */
static int json_str_field(const char *line, const char *key, char *out, int cap)
{
    char pat[64];
    snprintf(pat, sizeof(pat), "\"%s\":\"", key);
    const char *s = strstr(line, pat);
    if (!s)
        return -1;
    s += strlen(pat);
    int k = 0;
    while (*s && *s != '"' && k + 4 < cap) {
        if (*s != '\\') {
            out[k++] = *s++;
            continue;
        }
        s++;
        char c = *s++;
        switch (c) {
        case 'n': out[k++] = '\n'; break;
        case 't': out[k++] = '\t'; break;
        case 'r': out[k++] = '\r'; break;
        case 'b': out[k++] = '\b'; break;
        case 'f': out[k++] = '\f'; break;
        case 'u': {
            int cp = hex4(s);
            if (cp < 0)
                return -1;
            s += 4;
            if (cp >= 0xD800 && cp < 0xDC00 && s[0] == '\\' && s[1] == 'u') {
                int lo = hex4(s + 2);
                if (lo < 0xDC00 || lo > 0xDFFF)
                    return -1;
                cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
                s += 6;
            }
            k += nf_utf8_encode((uint32_t)cp, out + k);
            break;
        }
        default: out[k++] = c; break; /* \" \\ \/ */
        }
    }
    if (*s != '"')
        return -1;
    out[k] = '\0';
    return k;
}

/* Parses the integer array value of "key" into ids; returns the count or -1. */
static int json_ids_field(const char *line, const char *key, int32_t *ids, int cap)
{
    char pat[64];
    snprintf(pat, sizeof(pat), "\"%s\":[", key);
    const char *s = strstr(line, pat);
    if (!s)
        return -1;
    s += strlen(pat);
    int n = 0;
    while (*s && *s != ']' && n < cap) {
        char *end;
        long v = strtol(s, &end, 10);
        if (end == s)
            return -1;
        ids[n++] = (int32_t)v;
        s = end;
        if (*s == ',')
            s++;
    }
    return *s == ']' ? n : -1;
}

/* Every golden's prompt_ids equals nf_tokenize(prompt, add_bos = vocab default, parse_special). */
static void test_golden_prompts(void **state)
{
    (void)state;
    char dir[1024];
    snprintf(dir, sizeof(dir), "%s/golden", NF_SHARED_DIR);
    DIR *d = opendir(dir);
    if (!d)
        skip();
    int32_t *ids = malloc(MAX_IDS * sizeof(*ids)), *want = malloc(MAX_IDS * sizeof(*want));
    char *prompt = malloc(4096);
    assert_true(ids && want && prompt);
    int n_files = 0, n_prompts = 0;
    for (struct dirent *de; (de = readdir(d)) != NULL;) {
        size_t nl = strlen(de->d_name);
        if (nl < 7 || strcmp(de->d_name + nl - 6, ".jsonl") != 0)
            continue;
        char path[2048], mpath[2048];
        snprintf(path, sizeof(path), "%s/%s", dir, de->d_name);
        snprintf(mpath, sizeof(mpath), "%s/models/%.*s.gguf", NF_SHARED_DIR, (int)(nl - 6),
                 de->d_name);
        struct nf_vocab *v = load_vocab_file(mpath);
        assert_non_null(v);
        size_t len;
        char *text = slurp(path, &len);
        assert_non_null(text);
        for (char *line = text, *eol; *line; line = eol + 1) {
            eol = strchr(line, '\n');
            if (!eol)
                eol = line + strlen(line);
            char saved = *eol;
            *eol = '\0';
            if (eol > line) {
                int plen = json_str_field(line, "prompt", prompt, 4096);
                int nwant = json_ids_field(line, "prompt_ids", want, MAX_IDS);
                assert_true(plen >= 0 && nwant >= 0);
                int n = tokenize(v, prompt, (size_t)plen, true, true, ids);
                if (n != nwant)
                    fail_msg("%s: \"%s\": %d tokens, expected %d", de->d_name, prompt, n, nwant);
                for (int k = 0; k < n; k++) {
                    if (ids[k] != want[k])
                        fail_msg("%s: \"%s\": token %d is %d, expected %d", de->d_name, prompt, k,
                                 ids[k], want[k]);
                }
                n_prompts++;
            }
            *eol = saved;
            if (!saved)
                break;
        }
        free(text);
        nf_vocab_free(v);
        n_files++;
    }
    closedir(d);
    free(ids);
    free(want);
    free(prompt);
    print_message("%d golden files, %d prompts checked\n", n_files, n_prompts);
    assert_true(n_files >= 1);
    assert_true(n_prompts >= 8 * n_files);
}

/* ---- hand-made vocabularies -------------------------------------------------------------- */

struct tok_spec {
    const char *text;
    float score;
    int32_t type; /* 1 normal, 2 unknown, 3 control, 4 user-defined, 6 byte */
};

/* Builds a GGUF image holding a vocabulary and loads it (the image is freed before returning).
 * Returns nf_vocab_load's code; err receives its message. */
static int make_vocab(struct nf_vocab **out, const char *model, const char *pre,
                      const struct tok_spec *toks, int n, const char *const *merges, int n_merges,
                      char *err, size_t errlen)
{
    struct nf_gguf_writer *w;
    assert_int_equal(nf_gguf_writer_init(&w), 0);
    const char *texts[64];
    float scores[64];
    int32_t types[64];
    assert_true(n <= 64);
    for (int i = 0; i < n; i++) {
        texts[i] = toks[i].text;
        scores[i] = toks[i].score;
        types[i] = toks[i].type;
    }
    assert_int_equal(nf_gguf_writer_add_str(w, "tokenizer.ggml.model", model), 0);
    if (pre)
        assert_int_equal(nf_gguf_writer_add_str(w, "tokenizer.ggml.pre", pre), 0);
    assert_int_equal(
        nf_gguf_writer_add_arr_str(w, "tokenizer.ggml.tokens", texts, NULL, (uint64_t)n), 0);
    assert_int_equal(
        nf_gguf_writer_add_arr(w, "tokenizer.ggml.scores", NF_GGUF_FLOAT32, scores, (uint64_t)n),
        0);
    assert_int_equal(
        nf_gguf_writer_add_arr(w, "tokenizer.ggml.token_type", NF_GGUF_INT32, types, (uint64_t)n),
        0);
    if (merges)
        assert_int_equal(nf_gguf_writer_add_arr_str(w, "tokenizer.ggml.merges", merges, NULL,
                                                    (uint64_t)n_merges),
                         0);
    void *img;
    size_t len;
    assert_int_equal(nf_gguf_writer_header(w, &img, &len), 0);
    nf_gguf_writer_free(w);
    struct nf_gguf *g;
    assert_int_equal(nf_gguf_open_mem(&g, img, len, err, errlen), 0);
    int rc = nf_vocab_load(out, g, err, errlen);
    nf_gguf_close(g);
    free(img);
    return rc;
}

#define U2581 "\xe2\x96\x81"

/* The SPM merge takes the best-scoring adjacent pair first: with "ab" above "bc" the text "abc"
 * becomes ab|c, the other way round a|bc. Bytes without a token fall back to <0xNN>. */
static void test_spm_merge_order(void **state)
{
    (void)state;
    char err[256];
    struct tok_spec t[] = {
        {"<unk>", 0, 2}, {"<s>", 0, 3},    {"</s>", 0, 3}, {"<0xC3>", 0, 6},   {"<0xA9>", 0, 6},
        {U2581, -1, 1},  {"a", -2, 1},     {"b", -2, 1},   {"c", -2, 1},       {"ab", -3, 1},
        {"bc", -4, 1},   {"<0x41>", 0, 6}, {"x y", 0, 4},  {U2581 "x", -1, 1},
    };
    const int n = (int)(sizeof(t) / sizeof(t[0]));
    struct nf_vocab *v;
    assert_int_equal(make_vocab(&v, "llama", NULL, t, n, NULL, 0, err, sizeof(err)), 0);
    int32_t ids[16];
    /* "ab" (-3) beats "bc" (-4). */
    assert_int_equal(nf_tokenize(v, "abc", 3, true, false, ids, 16), 4);
    assert_int_equal(ids[0], 1); /* BOS: SPM default */
    assert_int_equal(ids[1], 5);
    assert_int_equal(ids[2], 9);
    assert_int_equal(ids[3], 8);
    nf_vocab_free(v);
    t[10].score = -2.5f; /* now "bc" wins */
    assert_int_equal(make_vocab(&v, "llama", NULL, t, n, NULL, 0, err, sizeof(err)), 0);
    assert_int_equal(nf_tokenize(v, "abc", 3, false, false, ids, 16), 3);
    assert_int_equal(ids[1], 6);
    assert_int_equal(ids[2], 10);
    /* Byte fallback: "é" has no token, its bytes do; "Z" has neither, so it is <unk>. */
    assert_int_equal(nf_tokenize(v, "\xc3\xa9Z", 3, false, false, ids, 16), 4);
    assert_int_equal(ids[0], 5);
    assert_int_equal(ids[1], 3);
    assert_int_equal(ids[2], 4);
    assert_int_equal(ids[3], 0);
    /* A user-defined token is matched even without parse_special, and the text after it gets
     * the space prefix again. Control tokens only with parse_special. */
    assert_int_equal(nf_tokenize(v, "x yx", 4, false, false, ids, 16), 2);
    assert_int_equal(ids[0], 12);
    assert_int_equal(ids[1], 13);
    assert_int_equal(nf_tokenize(v, "</s>", 4, false, true, ids, 16), 1);
    assert_int_equal(ids[0], 2);
    assert_true(nf_tokenize(v, "</s>", 4, false, false, ids, 16) > 1);
    /* Pieces: U+2581 -> space, byte tokens -> their byte, control -> nothing. */
    char buf[16];
    assert_int_equal(nf_token_to_piece(v, 13, buf, sizeof(buf)), 2);
    assert_memory_equal(buf, " x", 2);
    assert_int_equal(nf_token_to_piece(v, 11, buf, sizeof(buf)), 1);
    assert_int_equal(buf[0], 'A');
    assert_int_equal(nf_token_to_piece(v, 2, buf, sizeof(buf)), 0);
    assert_int_equal(nf_token_to_piece(v, 13, buf, 1), 2); /* too small: size reported */
    assert_true(nf_token_to_piece(v, n, buf, sizeof(buf)) < 0);
    assert_true(nf_vocab_is_eog(v, 2));
    assert_false(nf_vocab_is_eog(v, 1));
    nf_vocab_free(v);
}

/* Byte-level BPE: merges apply by rank; bytes are mapped to printable code points. */
static void test_bpe_merges(void **state)
{
    (void)state;
    char err[256];
    struct tok_spec t[] = {
        {"a", 0, 1},
        {"b", 0, 1},
        {"c", 0, 1},
        {"ab", 0, 1},
        {"bc", 0, 1},
        {"abc", 0, 1},
        {"\xc4\xa0", 0, 1}, /* "Ġ" is the space byte */
        {"\xc4\xa0"
         "a",
         0, 1},
        {"<|end|>", 0, 3},
    };
    const int n = (int)(sizeof(t) / sizeof(t[0]));
    const char *m1[] = {"b c", "a b", "ab c", "\xc4\xa0 a"};
    struct nf_vocab *v;
    assert_int_equal(make_vocab(&v, "gpt2", "gpt-2", t, n, m1, 4, err, sizeof(err)), 0);
    assert_false(nf_vocab_add_bos(v));
    int32_t ids[16];
    /* "b c" has the best rank: a|bc, then "a bc" is no merge. */
    assert_int_equal(nf_tokenize(v, "abc", 3, true, false, ids, 16), 2);
    assert_int_equal(ids[0], 0);
    assert_int_equal(ids[1], 4);
    /* " a" is one pre-token (" ?\p{L}+") and merges into "Ġa". */
    assert_int_equal(nf_tokenize(v, " a", 2, false, false, ids, 16), 1);
    assert_int_equal(ids[0], 7);
    char buf[16];
    assert_int_equal(nf_token_to_piece(v, 7, buf, sizeof(buf)), 2);
    assert_memory_equal(buf, " a", 2);
    assert_int_equal(nf_tokenize(v, "<|end|>", 7, false, true, ids, 16), 1);
    assert_int_equal(ids[0], 8);
    assert_true(nf_vocab_is_eog(v, 8)); /* recognized by its text */
    nf_vocab_free(v);

    const char *m2[] = {"a b", "ab c", "b c"};
    assert_int_equal(make_vocab(&v, "gpt2", "gpt-2", t, n, m2, 3, err, sizeof(err)), 0);
    assert_int_equal(nf_tokenize(v, "abc", 3, false, false, ids, 16), 1);
    assert_int_equal(ids[0], 5);
    nf_vocab_free(v);
}

static void test_refusals(void **state)
{
    (void)state;
    char err[512];
    struct tok_spec t[] = {{"a", 0, 1}, {"b", 0, 1}};
    const char *m[] = {"a b"};
    struct nf_vocab *v = NULL;
    assert_int_equal(make_vocab(&v, "gpt2", "no-such-pre", t, 2, m, 1, err, sizeof(err)),
                     NF_EVOCAB);
    assert_null(v);
    assert_non_null(strstr(err, "tokenizer.ggml.pre"));
    assert_non_null(strstr(err, "no-such-pre"));
    assert_non_null(strstr(err, "llama-bpe"));
    assert_non_null(strstr(err, "qwen2"));
    assert_int_equal(make_vocab(&v, "bert", NULL, t, 2, NULL, 0, err, sizeof(err)), NF_EVOCAB);
    assert_non_null(strstr(err, "tokenizer.ggml.model"));
    assert_int_equal(make_vocab(&v, "gpt2", "gpt-2", t, 2, NULL, 0, err, sizeof(err)), NF_EVOCAB);
    assert_non_null(strstr(err, "tokenizer.ggml.merges"));
}

/* A character split over byte tokens comes out whole, only once its last byte arrives. */
static void test_streaming_detok(void **state)
{
    (void)state;
    char path[1024];
    snprintf(path, sizeof(path), "%s/golden/vocab/ggml-vocab-llama-spm.gguf", NF_SHARED_DIR);
    struct nf_vocab *v = load_vocab_file(path);
    if (!v)
        skip();
    const char *text = "a\xf0\x9d\x84\x9e"
                       "b"; /* U+1D11E has no token: four byte tokens */
    int32_t ids[16];
    int n = nf_tokenize(v, text, strlen(text), false, false, ids, 16);
    assert_true(n >= 6);
    int first_byte = -1;
    for (int i = 0; i < n && first_byte < 0; i++) {
        const char *t = nf_vocab_token_text(v, ids[i]);
        if (strcmp(t, "<0xF0>") == 0)
            first_byte = i;
    }
    assert_true(first_byte > 0 && first_byte + 4 < n);
    struct nf_detok d;
    nf_detok_init(&d);
    char all[64];
    size_t k = 0;
    for (int i = 0; i < n; i++) {
        char piece[32], out[48];
        int m = nf_token_to_piece(v, ids[i], piece, sizeof(piece));
        assert_true(m >= 0);
        int got = nf_detok_push(&d, piece, m, out);
        if (i > first_byte - 1 && i < first_byte + 3)
            assert_int_equal(got, 0); /* inside the character: held back */
        if (i == first_byte + 3) {
            assert_int_equal(got, 4);
            assert_memory_equal(out, "\xf0\x9d\x84\x9e", 4);
        }
        memcpy(all + k, out, (size_t)got);
        k += (size_t)got;
    }
    k += (size_t)nf_detok_flush(&d, all + k);
    all[k] = '\0';
    assert_string_equal(all, " a\xf0\x9d\x84\x9e"
                             "b");
    nf_vocab_free(v);

    /* An incomplete sequence at the end is flushed as is; invalid bytes pass through. */
    char out[32];
    nf_detok_init(&d);
    assert_int_equal(nf_detok_push(&d, "x\xe2\x96", 3, out), 1);
    assert_int_equal(d.n_pending, 2);
    assert_int_equal(nf_detok_flush(&d, out), 2);
    assert_memory_equal(out, "\xe2\x96", 2);
    assert_int_equal(nf_detok_push(&d, "\x80\x80", 2, out), 2);
    assert_int_equal(nf_detok_flush(&d, out), 0);
}

static void test_unicode(void **state)
{
    (void)state;
    assert_int_equal(nf_unicode_category('A'), NF_UCAT_Lu);
    assert_int_equal(nf_unicode_category(0x00E9), NF_UCAT_Ll);
    assert_int_equal(nf_unicode_category('7'), NF_UCAT_Nd);
    assert_int_equal(nf_unicode_category(0x00BD), NF_UCAT_No);
    assert_int_equal(nf_unicode_category(0x4E00), NF_UCAT_Lo);
    assert_int_equal(nf_unicode_category(0x0301), NF_UCAT_Mn);
    assert_int_equal(nf_unicode_category(0x1F600), NF_UCAT_So);
    assert_int_equal(nf_unicode_category(0x0378), NF_UCAT_Cn);
    assert_int_equal(nf_unicode_category(0x10FFFF), NF_UCAT_Cn);
    assert_int_equal(nf_unicode_category(0x110000), NF_UCAT_Cn);
    assert_true(nf_unicode_flags(0x3000) & NF_UFLAG_WHITESPACE);
    assert_true(nf_unicode_flags(0x85) & NF_UFLAG_WHITESPACE);
    assert_false(nf_unicode_flags(0x1C) & NF_UFLAG_WHITESPACE);
    assert_int_equal(nf_unicode_flags(','), NF_UFLAG_PUNCTUATION);
    for (int b = 0; b < 256; b++)
        assert_int_equal(nf_unicode_to_byte(nf_byte_to_unicode((uint8_t)b)), b);
    assert_int_equal(nf_byte_to_unicode(' '), 0x120);
    size_t off = 0;
    assert_int_equal(nf_utf8_decode("\xc3", 1, &off), 0xFFFD);
    assert_int_equal(off, 1);
    off = 0;
    assert_int_equal(nf_utf8_decode("\xe2\x96\x81", 3, &off), 0x2581);
    assert_int_equal(off, 3);
}

/* ---- vocabularies derived from the shared ones -------------------------------------------- */

/* Gemma's SentencePiece vocabulary has user-defined tokens (matched in the raw text before the
 * merges, even without special parsing) and control tokens; these are appended to llama-spm's. */
static const struct tok_spec gemma_extra[] = {
    {"<start_of_turn>", 0, 4}, {"<end_of_turn>", 0, 3}, {"<h1>", 0, 4},
    {"</h1>", 0, 4},           {"\t\t", 0, 4},
};

/* Tokens llama.cpp treats by their text: fill-in-the-middle (made control, the pad, repo and
 * file-separator ones ending generation), gpt-oss's message tokens (always user-defined), its
 * "<|end|>" next to "<|return|>" and "<|call|>" (not an end of generation), and "</s>" next to
 * "<|tool_response>" (a normal token); appended to Qwen2's vocabulary. */
static const struct tok_spec special_extra[] = {
    {"<|fim_prefix|>", 0, 4},   {"<|fim_pad|>", 0, 1}, {"<|repo_name|>", 0, 1},
    {"<|file_sep|>", 0, 4},     {"<|return|>", 0, 3},  {"<|call|>", 0, 3},
    {"<|end|>", 0, 3},          {"<|channel|>", 0, 3}, {"<|message|>", 0, 1},
    {"<|tool_response>", 0, 1},
};
#define N_OF(a) (sizeof(a) / sizeof((a)[0]))

/* A pre-tokenizer (or SentencePiece setting) without a vocabulary of its own in ../shared: the
 * shared vocabulary `src` rewritten with another tokenizer.ggml.pre, or made Gemma-like. The
 * expected ids come from llama.cpp on the same files (tests/data/vocab/README.md). */
struct derived {
    const char *name; /* tests/data/vocab/NAME.out */
    const char *src;  /* ../shared/golden/vocab/ggml-vocab-SRC.gguf */
    const char *pre;  /* tokenizer.ggml.pre written instead of the source's; NULL keeps it */
    const struct tok_spec *extra; /* tokens appended (NULL: none) */
    size_t n_extra;
    bool no_space_prefix; /* tokenizer.ggml.add_space_prefix false */
    /* llama.cpp's llama_vocab_get_add_bos, llama_vocab_bos and every id llama_vocab_is_eog
     * accepts (-1 ends the list), for the file. */
    bool add_bos;
    int32_t bos, eog[10];
};

static const struct derived derived_vocabs[] = {
    {"deepseek-coder",
     "deepseek-llm",
     "deepseek-coder",
     NULL,
     0,
     false,
     true,
     100000,
     {100001, -1}},
    {"deepseek-v3", "deepseek-llm", "deepseek-v3", NULL, 0, false, true, 100000, {100001, -1}},
    {"gpt-4o", "llama-bpe", "gpt-4o", NULL, 0, false, false, 128000, {128001, 128009, -1}},
    {"tekken", "llama-bpe", "tekken", NULL, 0, false, true, 128000, {128001, 128009, -1}},
    {"kimi-k2", "llama-bpe", "kimi-k2", NULL, 0, false, false, 128000, {128001, 128009, -1}},
    {"chatglm-bpe",
     "llama-bpe",
     "chatglm-bpe",
     NULL,
     0,
     false,
     false,
     128000,
     {128001, 128009, -1}},
    {"dbrx", "llama-bpe", "dbrx", NULL, 0, false, false, 128000, {128001, 128009, -1}},
    {"qwen35", "qwen2", "qwen35", NULL, 0, false, false, 151643, {128247, 151643, 151645, -1}},
    {"smollm", "gpt-2", "smollm", NULL, 0, false, false, 50256, {50256, -1}},
    {"olmo", "gpt-2", "olmo", NULL, 0, false, false, 50256, {50256, -1}},
    {"default", "gpt-2", "default", NULL, 0, false, false, 50256, {50256, -1}},
    {"gemma-spm", "llama-spm", NULL, gemma_extra, N_OF(gemma_extra), true, true, 1, {2, 32001, -1}},
    {"qwen2-special",
     "qwen2",
     NULL,
     special_extra,
     N_OF(special_extra),
     false,
     false,
     151643,
     {151643, 151645, 151937, 151938, 151939, 151940, 151941, 151945, -1}},
};
#define N_DERIVED (sizeof(derived_vocabs) / sizeof(derived_vocabs[0]))

static bool key_is(const struct nf_gguf_kv *kv, const char *key)
{
    return kv->key.len == strlen(key) && memcmp(kv->key.s, key, kv->key.len) == 0;
}

/* Appends d's extra tokens to the source's tokens, scores and token types. */
static void add_tokens(struct nf_gguf_writer *w, const struct nf_gguf *g, const struct derived *d)
{
    uint64_t n, ns = 0, nt;
    const void *tok, *sc = NULL, *ty;
    assert_int_equal(nf_gguf_get_arr(g, "tokenizer.ggml.tokens", NF_GGUF_STRING, &n, &tok), 0);
    /* BPE vocabularies may have no scores: then none are written. */
    if (nf_gguf_get_arr(g, "tokenizer.ggml.scores", NF_GGUF_FLOAT32, &ns, &sc) != 0)
        sc = NULL;
    assert_int_equal(nf_gguf_get_arr(g, "tokenizer.ggml.token_type", NF_GGUF_INT32, &nt, &ty), 0);
    assert_true((!sc || ns == n) && nt == n);
    uint64_t m = n + d->n_extra;
    const char **texts = malloc(m * sizeof(*texts));
    size_t *lens = malloc(m * sizeof(*lens));
    float *scores = malloc(m * sizeof(*scores));
    int32_t *types = malloc(m * sizeof(*types));
    assert_true(texts && lens && scores && types);
    const struct nf_gguf_str *ts = tok;
    for (uint64_t i = 0; i < n; i++) {
        texts[i] = ts[i].s;
        lens[i] = ts[i].len;
    }
    if (sc)
        memcpy(scores, sc, n * sizeof(*scores));
    memcpy(types, ty, n * sizeof(*types));
    for (size_t i = 0; i < d->n_extra; i++) {
        texts[n + i] = d->extra[i].text;
        lens[n + i] = strlen(d->extra[i].text);
        scores[n + i] = d->extra[i].score;
        types[n + i] = d->extra[i].type;
    }
    assert_int_equal(nf_gguf_writer_add_arr_str(w, "tokenizer.ggml.tokens", texts, lens, m), 0);
    if (sc)
        assert_int_equal(
            nf_gguf_writer_add_arr(w, "tokenizer.ggml.scores", NF_GGUF_FLOAT32, scores, m), 0);
    assert_int_equal(
        nf_gguf_writer_add_arr(w, "tokenizer.ggml.token_type", NF_GGUF_INT32, types, m), 0);
    free(texts);
    free(lens);
    free(scores);
    free(types);
}

/* The GGUF image of derived vocabulary d (malloc'd, *len bytes), or NULL when its source is
 * missing. Every key of the source is copied except the ones d replaces. */
static void *derive_image(const struct derived *d, size_t *len)
{
    char path[1024];
    snprintf(path, sizeof(path), "%s/golden/vocab/ggml-vocab-%s.gguf", NF_SHARED_DIR, d->src);
    struct nf_gguf *g = open_gguf(path);
    if (!g)
        return NULL;
    struct nf_gguf_writer *w;
    assert_int_equal(nf_gguf_writer_init(&w), 0);
    for (uint64_t i = 0; i < g->n_kv; i++) {
        const struct nf_gguf_kv *kv = &g->kv[i];
        if ((d->pre && key_is(kv, "tokenizer.ggml.pre")) ||
            (d->extra &&
             (key_is(kv, "tokenizer.ggml.tokens") || key_is(kv, "tokenizer.ggml.scores") ||
              key_is(kv, "tokenizer.ggml.token_type"))) ||
            (d->no_space_prefix && key_is(kv, "tokenizer.ggml.add_space_prefix")))
            continue;
        char key[256];
        assert_true(kv->key.len < sizeof(key));
        memcpy(key, kv->key.s, kv->key.len);
        key[kv->key.len] = '\0';
        assert_int_equal(nf_gguf_writer_add_value(w, key, &kv->value), 0);
    }
    if (d->pre)
        assert_int_equal(nf_gguf_writer_add_str(w, "tokenizer.ggml.pre", d->pre), 0);
    if (d->extra)
        add_tokens(w, g, d);
    if (d->no_space_prefix)
        assert_int_equal(nf_gguf_writer_add_bool(w, "tokenizer.ggml.add_space_prefix", false), 0);
    void *img;
    assert_int_equal(nf_gguf_writer_header(w, &img, len), 0);
    nf_gguf_writer_free(w);
    nf_gguf_close(g);
    return img;
}

/* The cases of tests/data/vocab: the shared .inp followed by extra.inp (malloc'd). */
static char *all_cases(void)
{
    char p1[1024], p2[1024];
    snprintf(p1, sizeof(p1), "%s/golden/vocab/ggml-vocab-gpt-2.gguf.inp", NF_SHARED_DIR);
    snprintf(p2, sizeof(p2), "%s/tests/data/vocab/extra.inp", NF_SOURCE_DIR);
    size_t l1, l2;
    char *a = slurp(p1, &l1), *b = slurp(p2, &l2);
    if (!a || !b) {
        free(a);
        free(b);
        return NULL;
    }
    char *all = realloc(a, l1 + l2 + 1);
    assert_non_null(all);
    memcpy(all + l1, b, l2 + 1);
    free(b);
    return all;
}

static void check_data_vectors(const char *name, const struct nf_vocab *v, bool prefix)
{
    char opath[1024];
    snprintf(opath, sizeof(opath), "%s/tests/data/vocab/%s.out", NF_SOURCE_DIR, name);
    size_t olen;
    char *outp = slurp(opath, &olen), *inp = all_cases();
    assert_non_null(outp);
    assert_non_null(inp);
    int n = check_cases(name, v, inp, outp, prefix);
    assert_true(n > N_SHARED_CASES);
    free(inp);
    free(outp);
}

/* tests/data/vocab: the shared vocabularies on the added cases, and the derived ones on all. */
static void test_data_vectors(void **state)
{
    (void)state;
    for (size_t i = 0; i < N_SHARED; i++) {
        char path[1024];
        snprintf(path, sizeof(path), "%s/golden/vocab/ggml-vocab-%s.gguf", NF_SHARED_DIR,
                 shared_vocabs[i]);
        struct nf_vocab *v = load_vocab_file(path);
        if (!v)
            skip();
        check_data_vectors(shared_vocabs[i], v, is_spm(v));
        nf_vocab_free(v);
    }
    for (size_t i = 0; i < N_DERIVED; i++) {
        size_t len;
        void *img = derive_image(&derived_vocabs[i], &len);
        if (!img)
            skip();
        char err[512];
        struct nf_gguf *g;
        struct nf_vocab *v;
        assert_int_equal(nf_gguf_open_mem(&g, img, len, err, sizeof(err)), 0);
        const struct derived *d = &derived_vocabs[i];
        if (nf_vocab_load(&v, g, err, sizeof(err)))
            fail_msg("%s: %s", d->name, err);
        check_data_vectors(d->name, v, is_spm(v) && !d->no_space_prefix);
        assert_int_equal(nf_vocab_add_bos(v), d->add_bos);
        assert_int_equal(nf_vocab_bos(v), d->bos);
        int n_eog = 0, k = 0;
        for (int32_t id = 0; id < nf_vocab_n_tokens(v); id++)
            n_eog += nf_vocab_is_eog(v, id);
        for (; d->eog[k] >= 0; k++) {
            if (!nf_vocab_is_eog(v, d->eog[k]))
                fail_msg("%s: token %d does not end generation", d->name, d->eog[k]);
        }
        assert_int_equal(n_eog, k);
        nf_vocab_free(v);
        nf_gguf_close(g);
        free(img);
    }
}

/* The words each pre-tokenizer splits the cases into, as code point counts (a line per case),
 * against llama.cpp's unicode_regex_split with the regexes it gives that pre-tokenizer
 * (tests/data/vocab/pretok-NAME.out): differences the merges would hide show here. */
static void test_pretok_splits(void **state)
{
    (void)state;
    static const char *const names[] = {
        "default",        "gpt-2",       "llama-bpe", "qwen2",  "qwen35", "falcon",  "deepseek-llm",
        "deepseek-coder", "deepseek-v3", "starcoder", "gpt-4o", "tekken", "kimi-k2",
    };
    static const char sep[] = "\n__ggml_vocab_test__\n";
    uint32_t *cps = malloc(MAX_IDS * sizeof(*cps));
    assert_non_null(cps);
    for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++) {
        enum nf_pretok pre;
        unsigned flags;
        assert_int_equal(nf_pretok_lookup(names[i], &pre, &flags), 0);
        char opath[1024];
        snprintf(opath, sizeof(opath), "%s/tests/data/vocab/pretok-%s.out", NF_SOURCE_DIR,
                 names[i]);
        size_t olen;
        char *inp = all_cases(), *outp = slurp(opath, &olen);
        if (!inp)
            skip();
        assert_non_null(outp);
        char *s = inp, *o = outp;
        int n_cases = 0;
        for (char *e; (e = strstr(s, sep)) != NULL; s = e + strlen(sep), n_cases++) {
            size_t len = (size_t)(e - s), n = 0;
            assert_true(len < MAX_IDS);
            for (size_t off = 0; off < len;)
                cps[n++] = nf_utf8_decode(s, len, &off);
            uint32_t *words;
            size_t n_words;
            assert_int_equal(nf_pretok_split(pre, cps, n, &words, &n_words), 0);
            char *eol = strchr(o, '\n');
            assert_non_null(eol);
            size_t k = 0;
            for (char *p = o, *end; p < eol; p = end, k++) {
                unsigned long want = strtoul(p, &end, 10);
                if (end == p)
                    break;
                if (k >= n_words || words[k] != want)
                    fail_msg("%s case %d: word %zu has %u code points, expected %lu", names[i],
                             n_cases, k, k < n_words ? words[k] : 0, want);
            }
            if (k != n_words)
                fail_msg("%s case %d: %zu words, expected %zu", names[i], n_cases, n_words, k);
            free(words);
            o = eol + 1;
        }
        assert_true(n_cases > N_SHARED_CASES);
        free(inp);
        free(outp);
    }
    free(cps);
}

/* `test_tokenizer --write-vocabs DIR` writes the derived vocabularies as DIR/NAME.gguf (to run
 * llama.cpp on them) instead of testing. */
static int write_vocabs(const char *dir)
{
    for (size_t i = 0; i < N_DERIVED; i++) {
        size_t len;
        void *img = derive_image(&derived_vocabs[i], &len);
        if (!img) {
            fprintf(stderr, "%s: source vocabulary missing under %s\n", derived_vocabs[i].name,
                    NF_SHARED_DIR);
            return 1;
        }
        char path[1024];
        snprintf(path, sizeof(path), "%s/%s.gguf", dir, derived_vocabs[i].name);
        FILE *f = fopen(path, "wb");
        bool ok = f && fwrite(img, 1, len, f) == len;
        if (f && fclose(f) != 0)
            ok = false;
        free(img);
        if (!ok) {
            fprintf(stderr, "%s: %s\n", path, strerror(errno));
            return 1;
        }
    }
    return 0;
}

int main(int argc, char **argv)
{
    if (argc == 3 && strcmp(argv[1], "--write-vocabs") == 0)
        return write_vocabs(argv[2]);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_unicode),         cmocka_unit_test(test_spm_merge_order),
        cmocka_unit_test(test_bpe_merges),      cmocka_unit_test(test_refusals),
        cmocka_unit_test(test_streaming_detok), cmocka_unit_test(test_vocab_vectors),
        cmocka_unit_test(test_golden_prompts),  cmocka_unit_test(test_data_vectors),
        cmocka_unit_test(test_pretok_splits),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
