/* json_mini.h - a tiny JSON reader for test fixtures (the golden .jsonl files); test-only.
 *
 * jm_parse() builds a tree of struct jm_val in one malloc'ed node array per container. Strings
 * are unescaped (\uXXXX including surrogate pairs becomes UTF-8). Numbers are doubles. It
 * rejects malformed input by returning NULL; it is not hardened for hostile input. */
#ifndef NF_JSON_MINI_H
#define NF_JSON_MINI_H

#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

enum jm_type { JM_NULL, JM_BOOL, JM_NUM, JM_STR, JM_ARR, JM_OBJ };

struct jm_val {
    enum jm_type type;
    double num;          /* JM_NUM, JM_BOOL (0/1) */
    char *str;           /* JM_STR (NUL-terminated; may contain NULs, see len) */
    size_t len;          /* JM_STR byte length */
    struct jm_val *kids; /* JM_ARR / JM_OBJ elements */
    char **keys;         /* JM_OBJ keys */
    int n;
};

struct jm_parser {
    const char *s;
    size_t i, len;
};

static void jm_ws(struct jm_parser *p)
{
    while (p->i < p->len && strchr(" \t\r\n", p->s[p->i]))
        p->i++;
}

static int jm_hex4(struct jm_parser *p, unsigned *out)
{
    unsigned v = 0;
    for (int k = 0; k < 4; k++) {
        if (p->i >= p->len)
            return -1;
        char ch = p->s[p->i++];
        v <<= 4;
        if (ch >= '0' && ch <= '9')
            v |= (unsigned)(ch - '0');
        else if (ch >= 'a' && ch <= 'f')
            v |= (unsigned)(ch - 'a' + 10);
        else if (ch >= 'A' && ch <= 'F')
            v |= (unsigned)(ch - 'A' + 10);
        else
            return -1;
    }
    *out = v;
    return 0;
}

static size_t jm_utf8(unsigned cp, char *o)
{
    if (cp < 0x80) {
        o[0] = (char)cp;
        return 1;
    }
    if (cp < 0x800) {
        o[0] = (char)(0xC0 | (cp >> 6));
        o[1] = (char)(0x80 | (cp & 0x3F));
        return 2;
    }
    if (cp < 0x10000) {
        o[0] = (char)(0xE0 | (cp >> 12));
        o[1] = (char)(0x80 | ((cp >> 6) & 0x3F));
        o[2] = (char)(0x80 | (cp & 0x3F));
        return 3;
    }
    o[0] = (char)(0xF0 | (cp >> 18));
    o[1] = (char)(0x80 | ((cp >> 12) & 0x3F));
    o[2] = (char)(0x80 | ((cp >> 6) & 0x3F));
    o[3] = (char)(0x80 | (cp & 0x3F));
    return 4;
}

/* Parses a string at p->i (which is at the opening quote) into a new buffer. */
static char *jm_str(struct jm_parser *p, size_t *olen)
{
    p->i++;
    char *o = malloc(p->len - p->i + 1);
    size_t n = 0;
    if (!o)
        return NULL;
    while (p->i < p->len && p->s[p->i] != '"') {
        char ch = p->s[p->i++];
        if (ch != '\\') {
            o[n++] = ch;
            continue;
        }
        if (p->i >= p->len)
            break;
        ch = p->s[p->i++];
        unsigned cp, lo;
        switch (ch) {
        case 'n': o[n++] = '\n'; break;
        case 't': o[n++] = '\t'; break;
        case 'r': o[n++] = '\r'; break;
        case 'b': o[n++] = '\b'; break;
        case 'f': o[n++] = '\f'; break;
        case 'u':
            if (jm_hex4(p, &cp))
                goto bad;
            if (cp >= 0xD800 && cp < 0xDC00 && p->i + 1 < p->len && p->s[p->i] == '\\' &&
                p->s[p->i + 1] == 'u') {
                p->i += 2;
                if (jm_hex4(p, &lo))
                    goto bad;
                cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
            }
            n += jm_utf8(cp, o + n);
            break;
        default: o[n++] = ch; break;
        }
    }
    if (p->i >= p->len)
        goto bad;
    p->i++;
    o[n] = '\0';
    *olen = n;
    return o;
bad:
    free(o);
    return NULL;
}

static void jm_free_val(struct jm_val *v)
{
    if (v->type == JM_STR)
        free(v->str);
    for (int k = 0; k < v->n; k++) {
        jm_free_val(&v->kids[k]);
        if (v->keys)
            free(v->keys[k]);
    }
    free(v->kids);
    free(v->keys);
    memset(v, 0, sizeof(*v));
}

static int jm_value(struct jm_parser *p, struct jm_val *v, int depth)
{
    memset(v, 0, sizeof(*v));
    jm_ws(p);
    if (p->i >= p->len || depth > 64)
        return -1;
    char ch = p->s[p->i];
    if (ch == '"') {
        v->type = JM_STR;
        v->str = jm_str(p, &v->len);
        return v->str ? 0 : -1;
    }
    if (ch == '[' || ch == '{') {
        bool obj = ch == '{';
        int cap = 0;
        v->type = obj ? JM_OBJ : JM_ARR;
        p->i++;
        jm_ws(p);
        if (p->i < p->len && p->s[p->i] == (obj ? '}' : ']')) {
            p->i++;
            return 0;
        }
        for (;;) {
            if (v->n == cap) {
                cap = cap ? cap * 2 : 8;
                struct jm_val *nk = realloc(v->kids, sizeof(*nk) * (size_t)cap);
                char **nkeys = obj ? realloc(v->keys, sizeof(char *) * (size_t)cap) : NULL;
                if (!nk || (obj && !nkeys)) {
                    if (nk)
                        v->kids = nk;
                    if (nkeys)
                        v->keys = nkeys;
                    return -1;
                }
                v->kids = nk;
                if (obj)
                    v->keys = nkeys;
            }
            if (obj) {
                size_t kl;
                jm_ws(p);
                if (p->i >= p->len || p->s[p->i] != '"')
                    return -1;
                char *key = jm_str(p, &kl);
                if (!key)
                    return -1;
                v->keys[v->n] = key;
                jm_ws(p);
                if (p->i >= p->len || p->s[p->i] != ':') {
                    v->kids[v->n++].type = JM_NULL;
                    return -1;
                }
                p->i++;
            }
            int rc = jm_value(p, &v->kids[v->n], depth + 1);
            v->n++;
            if (rc)
                return -1;
            jm_ws(p);
            if (p->i < p->len && p->s[p->i] == ',') {
                p->i++;
                continue;
            }
            if (p->i < p->len && p->s[p->i] == (obj ? '}' : ']')) {
                p->i++;
                return 0;
            }
            return -1;
        }
    }
    if (!strncmp(p->s + p->i, "true", 4) || !strncmp(p->s + p->i, "false", 5)) {
        v->type = JM_BOOL;
        v->num = p->s[p->i] == 't';
        p->i += p->s[p->i] == 't' ? 4 : 5;
        return 0;
    }
    if (!strncmp(p->s + p->i, "null", 4)) {
        p->i += 4;
        return 0;
    }
    char *end;
    v->type = JM_NUM;
    v->num = strtod(p->s + p->i, &end);
    if (end == p->s + p->i)
        return -1;
    p->i = (size_t)(end - p->s);
    return 0;
}

/* Parses text[0..len) (which must be NUL-terminated at len); NULL on malformed input. */
static struct jm_val *jm_parse(const char *text, size_t len)
{
    struct jm_parser p = {text, 0, len};
    struct jm_val *v = calloc(1, sizeof(*v));
    if (!v)
        return NULL;
    if (jm_value(&p, v, 0) == 0) {
        jm_ws(&p);
        if (p.i == p.len)
            return v;
    }
    jm_free_val(v);
    free(v);
    return NULL;
}

static void jm_free(struct jm_val *v)
{
    if (v) {
        jm_free_val(v);
        free(v);
    }
}

/* Member `key` of object v, or NULL. */
static const struct jm_val *jm_get(const struct jm_val *v, const char *key)
{
    if (!v || v->type != JM_OBJ)
        return NULL;
    for (int k = 0; k < v->n; k++)
        if (!strcmp(v->keys[k], key))
            return &v->kids[k];
    return NULL;
}

#endif
