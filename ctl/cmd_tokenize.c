/* cmd_tokenize.c - nanoflowctl tokenize: print the token ids (and pieces) of a text with a model's
 * vocabulary. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cmds.h"
#include "gguf.h"
#include "nf_err.h"
#include "tokenizer.h"

static const char *const cmd = "tokenize";

static void usage(FILE *f)
{
    fprintf(
        f, "usage: nanoflowctl tokenize --model FILE [--no-bos] [--parse-special] [--json] "
           "[--] TEXT\n\n"
           "Tokenizes TEXT with the vocabulary of a GGUF model (tokenizer.ggml.*), as llama.cpp's\n"
           "llama_tokenize does, and prints the token ids space-separated on one line.\n\n"
           "  -m, --model FILE   GGUF file holding the vocabulary (required)\n"
           "  --no-bos           do not add BOS/EOS (default: add them when the vocabulary's\n"
           "                     add_bos_token/add_eos_token say so)\n"
           "  --parse-special    match control tokens written in TEXT, e.g. <s> (default: off;\n"
           "                     user-defined tokens are always matched)\n"
           "  --json             print {\"ids\":[...],\"pieces\":[...]} instead (default: off);\n"
           "                     a piece is the token's bytes (control tokens: empty), bytes that\n"
           "                     are not valid UTF-8 are written as \\u00XX\n"
           "  --help, -h         show this help\n\n"
           "Vocabularies: tokenizer.ggml.model llama (SentencePiece) or gpt2 (byte-level BPE),\n"
           "the latter with one of these tokenizer.ggml.pre values (none means default):\n");
    /* The list comes from the tokenizer's table, wrapped at 90 columns. */
    const char *names = nf_vocab_pre_names();
    int col = 0;
    while (*names) {
        size_t n = strcspn(names, ",");
        if (col > 0 && col + (int)n + 2 > 90) {
            fputs(",\n", f);
            col = 0;
        } else if (col > 0) {
            fputs(", ", f);
            col += 2;
        }
        if (col == 0) {
            fputs("  ", f);
            col = 2;
        }
        fwrite(names, 1, n, f);
        col += (int)n;
        names += n;
        names += strspn(names, ", ");
    }
    fputs("\n", f);
}

/* Writes piece bytes as a JSON string body: valid UTF-8 passes through, invalid bytes become
 * \u00XX, control characters and quotes are escaped. */
static void json_piece(const unsigned char *s, int n)
{
    putchar('"');
    for (int i = 0; i < n;) {
        unsigned c = s[i];
        int len = c < 0x80             ? 1
                  : (c & 0xE0) == 0xC0 ? 2
                  : (c & 0xF0) == 0xE0 ? 3
                  : (c & 0xF8) == 0xF0 ? 4
                                       : 0;
        bool ok = len > 0 && i + len <= n;
        for (int k = 1; ok && k < len; k++)
            ok = (s[i + k] & 0xC0) == 0x80;
        if (!ok) {
            printf("\\u%04x", c);
            i++;
            continue;
        }
        if (len > 1) {
            fwrite(s + i, 1, (size_t)len, stdout);
        } else if (c == '"' || c == '\\') {
            printf("\\%c", c);
        } else if (c == '\n') {
            fputs("\\n", stdout);
        } else if (c == '\t') {
            fputs("\\t", stdout);
        } else if (c == '\r') {
            fputs("\\r", stdout);
        } else if (c < 0x20 || c == 0x7F) {
            printf("\\u%04x", c);
        } else {
            putchar((int)c);
        }
        i += len;
    }
    putchar('"');
}

static int print_json(const struct nf_vocab *v, const int32_t *ids, int n)
{
    int cap = 256;
    char *buf = malloc((size_t)cap);
    if (!buf)
        return -1;
    fputs("{\"ids\":[", stdout);
    for (int i = 0; i < n; i++)
        printf("%s%d", i ? "," : "", ids[i]);
    fputs("],\"pieces\":[", stdout);
    for (int i = 0; i < n; i++) {
        int m = nf_token_to_piece(v, ids[i], buf, cap);
        if (m > cap) {
            char *nb = realloc(buf, (size_t)m);
            if (!nb) {
                free(buf);
                return -1;
            }
            buf = nb;
            cap = m;
            m = nf_token_to_piece(v, ids[i], buf, cap);
        }
        if (m < 0)
            m = 0;
        if (i)
            putchar(',');
        json_piece((const unsigned char *)buf, m);
    }
    fputs("]}\n", stdout);
    free(buf);
    return 0;
}

int nf_cmd_tokenize(int argc, char **argv)
{
    const char *model = NULL, *text = NULL;
    bool no_bos = false, parse_special = false, json = false, flags_done = false;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (!flags_done && a[0] == '-' && a[1] != '\0') {
            if (!strcmp(a, "--")) {
                flags_done = true;
            } else if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
                usage(stdout);
                return 0;
            } else if (nf_arg_is(a, "--model") || !strcmp(a, "-m")) {
                model = nf_arg_value(cmd, argc, argv, &i);
                if (!model)
                    return 2;
            } else if (!strcmp(a, "--no-bos")) {
                no_bos = true;
            } else if (!strcmp(a, "--parse-special")) {
                parse_special = true;
            } else if (!strcmp(a, "--json")) {
                json = true;
            } else {
                return nf_usage_error(cmd, "unknown flag '%s'", a);
            }
            continue;
        }
        if (text)
            return nf_usage_error(cmd,
                                  "expected one TEXT argument, got another: '%s' (quote the "
                                  "text)",
                                  a);
        text = a;
    }
    if (!model)
        return nf_usage_error(cmd, "--model FILE is required");
    if (!text)
        return nf_usage_error(cmd, "missing TEXT");

    char err[512];
    struct nf_gguf *g;
    int rc = nf_gguf_open(&g, model, err, sizeof(err));
    if (rc) {
        fprintf(stderr, "nanoflowctl %s: %s\n", cmd, err[0] ? err : nf_strerror(rc));
        return 1;
    }
    struct nf_vocab *v;
    rc = nf_vocab_load(&v, g, err, sizeof(err));
    nf_gguf_close(g);
    if (rc) {
        fprintf(stderr, "nanoflowctl %s: %s\n", cmd, err[0] ? err : nf_strerror(rc));
        return 1;
    }
    size_t len = strlen(text);
    int32_t *ids = NULL;
    int n = nf_tokenize_alloc(v, text, len, !no_bos, parse_special, 0, &ids);
    int ret = 0;
    if (n < 0) {
        fprintf(stderr, "nanoflowctl %s: %s: tokenizing failed: %s\n", cmd, model, nf_strerror(n));
        ret = 1;
    } else if (json) {
        if (print_json(v, ids, n)) {
            fprintf(stderr, "nanoflowctl %s: out of memory\n", cmd);
            ret = 1;
        }
    } else {
        for (int i = 0; i < n; i++)
            printf("%s%d", i ? " " : "", ids[i]);
        putchar('\n');
    }
    if (fflush(stdout) != 0 && ret == 0) {
        fprintf(stderr, "nanoflowctl %s: writing the output failed\n", cmd);
        ret = 1;
    }
    free(ids);
    nf_vocab_free(v);
    return ret;
}
