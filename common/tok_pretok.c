/* tok_pretok.c - byte-level BPE pre-tokenizers: llama.cpp's unicode_regex_split, one hand-written
 * matcher per regex. */
#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "nf_err.h"
#include "tok_internal.h"
#include "tokenizer.h"
#include "unicode.h"

/* Growable list of word lengths (in code points). */
struct lens {
    uint32_t *v;
    size_t n, cap;
    int err;
};

static void lens_push(struct lens *l, size_t len)
{
    if (len == 0 || l->err)
        return;
    if (l->n == l->cap) {
        size_t cap = l->cap ? l->cap * 2 : 64;
        uint32_t *v = realloc(l->v, cap * sizeof(*v));
        if (!v) {
            l->err = -ENOMEM;
            return;
        }
        l->v = v;
        l->cap = cap;
    }
    l->v[l->n++] = (uint32_t)len;
}

/* The text seen by the splitters. `flags` are the NF_UFLAG_* of each code point; `wcp` is the
 * code point as llama.cpp's std::wregex path sees it (non-ASCII whitespace replaced by U+000B,
 * because std::wregex's \s only knows ASCII); `col` is the code point as its byte-regex path sees
 * it (see collapse()). */
struct ptext {
    const uint32_t *cps;
    const uint16_t *flags;
    const uint32_t *wcp;
    const uint8_t *col;
};

/* Flags at pos inside the fragment [., end), 0 outside (llama.cpp's OUT_OF_RANGE). */
static unsigned flags_at(const struct ptext *t, size_t pos, size_t end)
{
    return pos < end ? t->flags[pos] : 0;
}

#define F_WS  NF_UFLAG_WHITESPACE
#define F_LET NF_UFLAG_LETTER
#define F_NUM NF_UFLAG_NUMBER

/* [^\s\p{L}\p{N}] inside the fragment (every in-range code point has a nonzero group bit). */
static bool is_other(unsigned f)
{
    return f && !(f & (F_WS | F_LET | F_NUM));
}

static uint32_t ascii_lower(uint32_t c)
{
    return (c >= 'A' && c <= 'Z') ? c + 32 : c;
}

/* Length of a contraction ('s 't 're 've 'm 'll 'd) at pos, or 0. */
static size_t contraction(const struct ptext *t, size_t pos, size_t end, bool any_case)
{
    if (t->cps[pos] != '\'' || pos + 1 >= end)
        return 0;
    uint32_t c1 = t->cps[pos + 1];
    if (any_case)
        c1 = ascii_lower(c1);
    if (c1 == 's' || c1 == 't' || c1 == 'm' || c1 == 'd')
        return 2;
    if (pos + 2 < end) {
        uint32_t c2 = t->cps[pos + 2];
        if (any_case)
            c2 = ascii_lower(c2);
        if ((c1 == 'r' && c2 == 'e') || (c1 == 'v' && c2 == 'e') || (c1 == 'l' && c2 == 'l'))
            return 3;
    }
    return 0;
}

/* Trailing whitespace handling shared by both custom splitters: \s+(?!\S) then \s+. */
static size_t ws_run_len(const struct ptext *t, size_t pos, size_t end)
{
    size_t n = 0;
    while (flags_at(t, pos + n, end) & F_WS)
        n++;
    return n;
}

/* 's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)  (GPT-2) */
static void split_gpt2(const struct ptext *t, size_t ini, size_t end, struct lens *out)
{
    size_t pos = ini;
    while (pos < end) {
        size_t start = pos;
        uint32_t cpt = t->cps[pos];
        size_t c = contraction(t, pos, end, false);
        if (c) {
            lens_push(out, c);
            pos += c;
            continue;
        }
        bool sp = cpt == ' ';
        unsigned f2 = sp ? flags_at(t, pos + 1, end) : t->flags[pos];
        if ((f2 & F_LET) || (f2 & F_NUM) || is_other(f2)) {
            unsigned want = (f2 & F_LET) ? F_LET : (f2 & F_NUM) ? F_NUM : 0;
            pos += sp;
            if (want) {
                while (flags_at(t, pos, end) & want)
                    pos++;
            } else {
                while (is_other(flags_at(t, pos, end)))
                    pos++;
            }
            lens_push(out, pos - start);
            continue;
        }
        size_t nws = ws_run_len(t, pos, end);
        if (nws > 1 && pos + nws < end) {
            pos += nws - 1; /* \s+(?!\S): leave the last space for the next word */
        } else if (nws > 0) {
            pos += nws;
        } else {
            pos++; /* no alternative matches: the code point stands alone */
        }
        lens_push(out, pos - start);
    }
}

/* \s*[\r\n]+|\s+(?!\S)|\s+ at pos: the whitespace run up to its last CR or LF, else the run
 * less its last code point when a non-space follows (that one starts the next word), else the
 * whole run. 0 when pos is not whitespace. */
static size_t ws_tail(const struct ptext *t, size_t pos, size_t end)
{
    size_t nws = 0, last_nl = 0;
    while (flags_at(t, pos + nws, end) & F_WS) {
        uint32_t c = t->cps[pos + nws];
        if (c == '\r' || c == '\n')
            last_nl = nws + 1;
        nws++;
    }
    if (last_nl > 0)
        return last_nl;
    if (nws > 1 && pos + nws < end)
        return nws - 1;
    return nws;
}

/* The end of the Llama 3 regex's match at pos when it is none of the letter alternatives:
 * \p{N}{1,max_digits} | ?[^\s<letter>\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+, else the code
 * point alone (no alternative matches). Shared by the Llama 3 family and Kimi-K2. */
static size_t llama3_rest(const struct ptext *t, size_t pos, size_t end, size_t max_digits,
                          unsigned letter)
{
    const size_t start = pos;
    const unsigned f = t->flags[pos];
    if (f & F_NUM) {
        while ((flags_at(t, pos, end) & F_NUM) && pos - start < max_digits)
            pos++;
        return pos;
    }
    bool sp = t->cps[pos] == ' ';
    unsigned f2 = sp ? flags_at(t, pos + 1, end) : f;
    const unsigned word = F_WS | letter | F_NUM;
    if (f2 && !(f2 & word)) {
        pos += sp;
        for (unsigned g = flags_at(t, pos, end); g && !(g & word); g = flags_at(t, pos, end))
            pos++;
        while (pos < end && (t->cps[pos] == '\r' || t->cps[pos] == '\n'))
            pos++;
        return pos;
    }
    size_t nws = ws_tail(t, pos, end);
    return pos + (nws ? nws : 1);
}

/* (?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,max_digits}|
 *  ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+   (Llama 3: max_digits 3; Qwen2: 1).
 * Qwen3.5 reads [\p{L}\p{M}] for \p{L} and [^\s\p{L}\p{M}\p{N}] for the symbol run: `letter`
 * is F_LET or F_LET | NF_UFLAG_MARK. */
static void split_llama3(const struct ptext *t, size_t ini, size_t end, size_t max_digits,
                         unsigned letter, struct lens *out)
{
    size_t pos = ini;
    while (pos < end) {
        size_t start = pos;
        uint32_t cpt = t->cps[pos];
        unsigned f = t->flags[pos];
        size_t c = contraction(t, pos, end, true);
        if (c) {
            lens_push(out, c);
            pos += c;
            continue;
        }
        if (!(cpt == '\r' || cpt == '\n' || (f & F_NUM)) &&
            ((f & letter) || (flags_at(t, pos + 1, end) & letter))) {
            pos++;
            while (flags_at(t, pos, end) & letter)
                pos++;
            lens_push(out, pos - start);
            continue;
        }
        pos = llama3_rest(t, pos, end, max_digits, letter);
        lens_push(out, pos - start);
    }
}

/* Han ideographs as llama.cpp's Kimi-K2 splitter counts them (unicode_cpt_is_han): the CJK
 * Unified Ideographs, Extensions A to F, and the Compatibility Ideographs and their
 * Supplement. */
static bool is_han(uint32_t c)
{
    return (c >= 0x4E00 && c <= 0x9FFF) || (c >= 0x3400 && c <= 0x4DBF) ||
           (c >= 0x20000 && c <= 0x2A6DF) || (c >= 0x2A700 && c <= 0x2EBEF) ||
           (c >= 0xF900 && c <= 0xFAFF) || (c >= 0x2F800 && c <= 0x2FA1F);
}

/* A letter other than a Han ideograph, inside the fragment. */
static bool kimi_letter(const struct ptext *t, size_t pos, size_t end)
{
    return (flags_at(t, pos, end) & F_LET) && !is_han(t->cps[pos]);
}

/* Kimi-K2's regex as llama.cpp splits it (one hand-written pass for the whole regex):
 *   [\p{Han}]+ | [^\r\n\p{L}\p{N}]?[non-Han letters]+(?i:'s|'t|'re|'ve|'m|'ll|'d)? |
 *   \p{N}{1,3} | ?[^\s\p{L}\p{N}]+[\r\n]* | \s*[\r\n]+ | \s+(?!\S) | \s+
 * The regex's two letter alternatives (an upper-then-lower and an upper-only run) become one
 * run of letters whatever their case, as in llama.cpp: "getUserName" is one word. A
 * contraction only follows letters ("'sup" is one word, not "'s" "up"), and Han runs are
 * words of their own. */
static void split_kimi_k2(const struct ptext *t, size_t ini, size_t end, struct lens *out)
{
    size_t pos = ini;
    while (pos < end) {
        size_t start = pos;
        uint32_t cpt = t->cps[pos];
        unsigned f = t->flags[pos];
        if (is_han(cpt)) {
            while (pos < end && is_han(t->cps[pos]))
                pos++;
            lens_push(out, pos - start);
            continue;
        }
        bool lead = !(cpt == '\r' || cpt == '\n' || (f & (F_LET | F_NUM)));
        if (kimi_letter(t, pos, end) || (lead && kimi_letter(t, pos + 1, end))) {
            pos += lead;
            while (kimi_letter(t, pos, end))
                pos++;
            if (pos < end)
                pos += contraction(t, pos, end, true);
            lens_push(out, pos - start);
            continue;
        }
        pos = llama3_rest(t, pos, end, 3, F_LET);
        lens_push(out, pos - start);
    }
}

static bool in_ranges(const struct nf_urange *r, size_t n, uint32_t c)
{
    for (size_t i = 0; i < n; i++) {
        if (c >= r[i].lo && c <= r[i].hi)
            return true;
    }
    return false;
}

/* DeepSeek LLM's character classes, copied from its tokenizer.json regexes (as llama.cpp has
 * them). The letter class is Unicode's cased letters (LC) of an older version. */
static const struct nf_urange ds_letters[] = {
    {0x0041, 0x005A},   {0x0061, 0x007A},   {0x00B5, 0x00B5},   {0x00C0, 0x00D6},
    {0x00D8, 0x00F6},   {0x00F8, 0x01BA},   {0x01BC, 0x01BF},   {0x01C4, 0x0293},
    {0x0295, 0x02AF},   {0x0370, 0x0373},   {0x0376, 0x0377},   {0x037B, 0x037D},
    {0x037F, 0x037F},   {0x0386, 0x0386},   {0x0388, 0x038A},   {0x038C, 0x038C},
    {0x038E, 0x03A1},   {0x03A3, 0x03F5},   {0x03F7, 0x0481},   {0x048A, 0x052F},
    {0x0531, 0x0556},   {0x10A0, 0x10C5},   {0x13A0, 0x13F5},   {0x13F8, 0x13FD},
    {0x1C90, 0x1CBA},   {0x1CBD, 0x1CBF},   {0x1D00, 0x1D2B},   {0x1D6B, 0x1D77},
    {0x1D79, 0x1D9A},   {0x1E00, 0x1F15},   {0x1F18, 0x1F1D},   {0x1F20, 0x1F45},
    {0x1F48, 0x1F4D},   {0x1F50, 0x1F57},   {0x1F59, 0x1F59},   {0x1F5B, 0x1F5B},
    {0x1F5D, 0x1F5D},   {0x1F5F, 0x1F7D},   {0x1F80, 0x1FB4},   {0x1FB6, 0x1FBC},
    {0x1FBE, 0x1FBE},   {0x1FC2, 0x1FC4},   {0x1FC6, 0x1FCC},   {0x1FD0, 0x1FD3},
    {0x1FD6, 0x1FDB},   {0x1FE0, 0x1FEC},   {0x1FF2, 0x1FF4},   {0x1FF6, 0x1FFC},
    {0x2102, 0x2102},   {0x2107, 0x2107},   {0x210A, 0x2113},   {0x2115, 0x2115},
    {0x2119, 0x211D},   {0x2124, 0x2124},   {0x2126, 0x2126},   {0x2128, 0x2128},
    {0x212A, 0x212D},   {0x212F, 0x2134},   {0x2139, 0x2139},   {0x213C, 0x213F},
    {0x2145, 0x2149},   {0x214E, 0x214E},   {0x2183, 0x2184},   {0x2C00, 0x2C7B},
    {0x2C7E, 0x2CE4},   {0x2CEB, 0x2CEE},   {0x2CF2, 0x2CF3},   {0xA640, 0xA66D},
    {0xA680, 0xA69B},   {0xA722, 0xA76F},   {0xA771, 0xA787},   {0xA78B, 0xA78E},
    {0xAB70, 0xABBF},   {0xFB00, 0xFB06},   {0xFB13, 0xFB17},   {0xFF21, 0xFF3A},
    {0xFF41, 0xFF5A},   {0x10400, 0x1044F}, {0x104B0, 0x104D3}, {0x104D8, 0x104FB},
    {0x10C80, 0x10CB2}, {0x10CC0, 0x10CF2}, {0x118A0, 0x118DF}, {0x1E900, 0x1E943},
};
static const struct nf_urange ds_punct[] = {
    {0x0021, 0x002F}, {0x003A, 0x007E}, {0xFF01, 0xFF0F},
    {0xFF1A, 0xFF5E}, {0x2018, 0x201F}, {0x3000, 0x3002},
};
static const struct nf_urange ds_cjk[] = {
    {0x4E00, 0x9FA5},
    {0x0800, 0x4E00},
    {0xAC00, 0xD7FF},
};
static const struct nf_urange ds3_cjk[] = {
    {0x4E00, 0x9FA5},
    {0x3040, 0x309F},
    {0x30A0, 0x30FF},
};
#define N_OF(a) (sizeof(a) / sizeof((a)[0]))

/* ---- llama.cpp's byte-regex view ---------------------------------------------------------
 * The regexes llama.cpp has no hand-written splitter for run through std::regex over one byte per
 * code point: ASCII stays itself, other whitespace becomes U+000B, and every other code point the
 * byte of its category group, \p{X} in the regex becoming [<that byte><the ASCII members>]. Two
 * consequences the matchers below keep: the ASCII members of \p{P} and \p{S} are a fixed list
 * (it lacks '~', which is then neither), and non-ASCII letters are neither upper- nor lowercase,
 * so (?=\p{L})[^a-z] and (?=\p{L})[^A-Z] both accept them. */
enum { COL_OTHER = 0xD0, COL_N, COL_L, COL_P, COL_M, COL_S, COL_NONE = 0x100 };

static uint8_t collapse(uint32_t cp, unsigned flags)
{
    if (cp < 0x80)
        return (uint8_t)cp;
    if (flags & F_WS)
        return 0x0B;
    switch (flags & ~(unsigned)F_WS) {
    case F_NUM: return COL_N;
    case F_LET: return COL_L;
    case NF_UFLAG_PUNCTUATION: return COL_P;
    case NF_UFLAG_MARK: return COL_M;
    case NF_UFLAG_SYMBOL: return COL_S;
    default: return COL_OTHER;
    }
}

/* The byte at pos inside the fragment, COL_NONE outside (no class matches it). */
static unsigned col_at(const struct ptext *t, size_t pos, size_t end)
{
    return pos < end ? t->col[pos] : COL_NONE;
}

static bool c_ws(unsigned c) /* \s */
{
    return c == ' ' || (c >= 0x09 && c <= 0x0D);
}
static bool c_upper(unsigned c) /* (?=\p{L})[^a-z] */
{
    return c == COL_L || (c >= 'A' && c <= 'Z');
}
static bool c_lower(unsigned c) /* (?=\p{L})[^A-Z] */
{
    return c == COL_L || (c >= 'a' && c <= 'z');
}
static bool c_let(unsigned c) /* \p{L} */
{
    return c_upper(c) || c_lower(c);
}
static bool c_num(unsigned c) /* \p{N} */
{
    return c == COL_N || (c >= '0' && c <= '9');
}
static bool c_punct(unsigned c) /* \p{P}: !-#%-*,-/:-;?-@[-]_{} and the rest of Unicode's P */
{
    return c == COL_P || (c >= 0x21 && c <= 0x23) || (c >= 0x25 && c <= 0x2A) ||
           (c >= 0x2C && c <= 0x2F) || c == 0x3A || c == 0x3B || c == 0x3F || c == 0x40 ||
           (c >= 0x5B && c <= 0x5D) || c == 0x5F || c == 0x7B || c == 0x7D;
}
static bool c_sym(unsigned c) /* \p{S}: $+<=>^`| and the rest of Unicode's S */
{
    return c == COL_S || c == '$' || c == '+' || (c >= '<' && c <= '>') || c == '^' || c == '`' ||
           c == '|';
}
static bool c_crlf(unsigned c)
{
    return c == '\r' || c == '\n';
}
/* [^\r\n\p{L}\p{N}] */
static bool c_not_crlf_let_num(unsigned c)
{
    return c != COL_NONE && !c_crlf(c) && !c_let(c) && !c_num(c);
}
/* [^\s\p{L}\p{N}] */
static bool c_not_ws_let_num(unsigned c)
{
    return c != COL_NONE && !c_ws(c) && !c_let(c) && !c_num(c);
}

static size_t run_of(const struct ptext *t, size_t pos, size_t end, bool (*cls)(unsigned))
{
    size_t q = pos;
    while (cls(col_at(t, q, end)))
        q++;
    return q - pos;
}

/* \s?<class>+ over the byte view (DeepSeek Coder's \s?\p{L}+ and \s?\p{P}+). */
static size_t opt_ws_run(const struct ptext *t, size_t pos, size_t end, bool (*cls)(unsigned))
{
    size_t p = pos + (c_ws(col_at(t, pos, end)) && cls(col_at(t, pos + 1, end)));
    size_t n = run_of(t, p, end, cls);
    return n ? p - pos + n : 0;
}

/* GPT-4o (o200k) and Tekken, at pos:
 *   [^\r\n\p{L}\p{N}]?U*W+C? | [^\r\n\p{L}\p{N}]?U+W*C? | \p{N}{1,max_digits} |
 *    ?[^\s\p{L}\p{N}]+[\r\n/]* | \s*[\r\n]+ | \s+(?!\S) | \s+
 * with U = (?=\p{L})[^a-z], W = (?=\p{L})[^A-Z] and C the contractions
 * (?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD]) (GPT-4o only). */
static size_t match_o200k(const struct ptext *t, size_t pos, size_t end, bool contractions,
                          size_t max_digits)
{
    unsigned c = col_at(t, pos, end);
    /* The optional prefix is never a letter, so dropping it cannot make a letter run match. */
    size_t q = pos + c_not_crlf_let_num(c);
    size_t u = run_of(t, q, end, c_upper);
    /* U*W+: U* backs off to the last position from which a W run starts. */
    size_t k = u + 1, e = 0;
    while (k-- > 0) {
        if (c_lower(col_at(t, q + k, end)))
            break;
    }
    if (k <= u) /* found: W+ from q + k */
        e = q + k + run_of(t, q + k, end, c_lower);
    else if (u > 0) /* U+W*: no W follows, the upper run alone */
        e = q + u;
    if (e) {
        if (contractions && e < end)
            e += contraction(t, e, end, true);
        return e - pos;
    }
    if (c_num(c)) {
        size_t n = run_of(t, pos, end, c_num);
        return n < max_digits ? n : max_digits;
    }
    size_t p = pos + (c == ' ' && c_not_ws_let_num(col_at(t, pos + 1, end)));
    size_t n = run_of(t, p, end, c_not_ws_let_num);
    if (n) {
        p += n;
        while (c_crlf(col_at(t, p, end)) || col_at(t, p, end) == '/')
            p++;
        return p - pos;
    }
    return ws_tail(t, pos, end);
}

static bool c_ascii_punct(unsigned c) /* [!"#$%&'()*+,\-./:;<=>?@\[\\\]^_`{|}~] */
{
    return (c >= 0x21 && c <= 0x2F) || (c >= 0x3A && c <= 0x40) || (c >= 0x5B && c <= 0x60) ||
           (c >= 0x7B && c <= 0x7E);
}
static bool c_ascii_let(unsigned c) /* [A-Za-z] */
{
    return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z');
}
static bool c_let_mark(unsigned c) /* [\p{L}\p{M}] */
{
    return c_let(c) || c == COL_M;
}
static bool c_punct_sym(unsigned c) /* [\p{P}\p{S}] */
{
    return c_punct(c) || c_sym(c);
}

/* DeepSeek V3's last regex, at pos:
 *   [!"#$%&'()*+,\-./:;<=>?@\[\\\]^_`{|}~][A-Za-z]+ | [^\r\n\p{L}\p{P}\p{S}]?[\p{L}\p{M}]+ |
 *    ?[\p{P}\p{S}]+[\r\n]* | \s*[\r\n]+ | \s+(?!\S) | \s+
 * 0 when none matches there (e.g. a '~' before a digit). */
static size_t match_ds3(const struct ptext *t, size_t pos, size_t end)
{
    unsigned c = col_at(t, pos, end);
    if (c_ascii_punct(c) && c_ascii_let(col_at(t, pos + 1, end)))
        return 1 + run_of(t, pos + 1, end, c_ascii_let);
    bool pre = c != COL_NONE && !c_crlf(c) && !c_let(c) && !c_punct_sym(c);
    if (pre && c_let_mark(col_at(t, pos + 1, end)))
        return 1 + run_of(t, pos + 1, end, c_let_mark);
    size_t n = run_of(t, pos, end, c_let_mark);
    if (n)
        return n;
    size_t p = pos + (c == ' ' && c_punct_sym(col_at(t, pos + 1, end)));
    n = run_of(t, p, end, c_punct_sym);
    if (n)
        return p - pos + n + run_of(t, p + n, end, c_crlf);
    return ws_tail(t, pos, end);
}

/* Regex-style stages: a matcher returns the length of the match starting at pos (0: none). */
enum stage {
    ST_GPT2,        /* custom GPT-2 splitter */
    ST_LLAMA3,      /* custom Llama 3 splitter */
    ST_QWEN2,       /* the Llama 3 regex with \p{N} instead of \p{N}{1,3} */
    ST_QWEN35,      /* Qwen2's with [\p{L}\p{M}] for \p{L} */
    ST_PUNCT_RUN,   /* [\p{P}\$\+<=>\^~\|`]+ (Falcon) */
    ST_PUNCT_DFLT,  /* [\p{P}\$\+<=>\^~\|]+ (the default: no backquote) */
    ST_DIGITS3,     /* [0-9][0-9][0-9] */
    ST_NUMBERS,     /* \p{N}+ */
    ST_NUMBER1,     /* \p{N} */
    ST_NUMBERS3,    /* \p{N}{1,3} */
    ST_DS_NEWLINE,  /* [\r\n] */
    ST_DS_LETTERS,  /* \s?[letters]+ */
    ST_DS_PUNCT,    /* \s?[punctuation]+ */
    ST_DS_TRAIL_WS, /* \s+$ */
    ST_DS_CJK,      /* [CJK]+ */
    ST_DSC_LETTERS, /* \s?\p{L}+ (DeepSeek Coder) */
    ST_DSC_PUNCT,   /* \s?\p{P}+ (DeepSeek Coder) */
    ST_DS3_CJK,     /* [一-龥぀-ゟ゠-ヿ]+ (DeepSeek V3: CJK ideographs, hiragana, katakana) */
    ST_DS3_MAIN,    /* DeepSeek V3's word regex, match_ds3() */
    ST_O200K,       /* GPT-4o, match_o200k() */
    ST_TEKKEN,      /* Tekken, match_o200k() without contractions, single digits */
    ST_KIMI_K2,     /* custom Kimi-K2 splitter */
};

/* Runs of code points satisfying a class, optionally preceded by one whitespace (\s?). */
static size_t class_run(const struct ptext *t, size_t pos, size_t end, bool opt_ws,
                        const struct nf_urange *r, size_t nr)
{
    size_t p = pos;
    if (opt_ws && (t->flags[p] & F_WS) && p + 1 < end && in_ranges(r, nr, t->wcp[p + 1]))
        p++;
    size_t q = p;
    while (q < end && in_ranges(r, nr, t->wcp[q]))
        q++;
    return q > p ? q - pos : 0;
}

static size_t match_at(enum stage st, const struct ptext *t, size_t pos, size_t end)
{
    size_t q = pos;
    switch (st) {
    case ST_PUNCT_RUN:
    case ST_PUNCT_DFLT: {
        /* \p{P} plus the listed ASCII symbols: with the backquote, every ASCII punctuation or
         * symbol character. */
        unsigned c;
        while ((c = col_at(t, q, end)) != COL_NONE &&
               (c_punct(c) || (c_ascii_punct(c) && (c != '`' || st == ST_PUNCT_RUN))))
            q++;
        return q - pos;
    }
    case ST_DIGITS3:
        for (; q < pos + 3; q++) {
            if (q >= end || t->cps[q] < '0' || t->cps[q] > '9')
                return 0;
        }
        return 3;
    case ST_NUMBERS:
        while (q < end && (t->flags[q] & F_NUM))
            q++;
        return q - pos;
    case ST_NUMBER1: return (t->flags[pos] & F_NUM) ? 1 : 0;
    case ST_DS_NEWLINE: return (t->cps[pos] == '\r' || t->cps[pos] == '\n') ? 1 : 0;
    case ST_DS_LETTERS: return class_run(t, pos, end, true, ds_letters, N_OF(ds_letters));
    case ST_DS_PUNCT: return class_run(t, pos, end, true, ds_punct, N_OF(ds_punct));
    case ST_DS_CJK: return class_run(t, pos, end, false, ds_cjk, N_OF(ds_cjk));
    case ST_NUMBERS3: {
        size_t n = run_of(t, pos, end, c_num);
        return n < 3 ? n : 3;
    }
    case ST_DSC_LETTERS: return opt_ws_run(t, pos, end, c_let);
    case ST_DSC_PUNCT: return opt_ws_run(t, pos, end, c_punct);
    case ST_DS3_CJK: return class_run(t, pos, end, false, ds3_cjk, N_OF(ds3_cjk));
    case ST_DS3_MAIN: return match_ds3(t, pos, end);
    case ST_O200K: return match_o200k(t, pos, end, true, 3);
    case ST_TEKKEN: return match_o200k(t, pos, end, false, 1);
    default: return 0;
    }
}

/* Splits fragment [ini, end) with one stage, keeping unmatched text between matches as words. */
static void split_stage(enum stage st, const struct ptext *t, size_t ini, size_t end,
                        struct lens *out)
{
    switch (st) {
    case ST_GPT2: split_gpt2(t, ini, end, out); return;
    case ST_LLAMA3: split_llama3(t, ini, end, 3, F_LET, out); return;
    case ST_QWEN2: split_llama3(t, ini, end, 1, F_LET, out); return;
    case ST_QWEN35: split_llama3(t, ini, end, 1, F_LET | NF_UFLAG_MARK, out); return;
    case ST_KIMI_K2: split_kimi_k2(t, ini, end, out); return;
    case ST_DS_TRAIL_WS: {
        /* \s+$ matches once: the whitespace run that ends the fragment. */
        size_t p = end;
        while (p > ini && (t->flags[p - 1] & F_WS))
            p--;
        lens_push(out, p - ini);
        lens_push(out, end - p);
        return;
    }
    default: break;
    }
    size_t gap = ini;
    for (size_t pos = ini; pos < end;) {
        size_t m = match_at(st, t, pos, end);
        if (m == 0) {
            pos++;
            continue;
        }
        lens_push(out, pos - gap);
        lens_push(out, m);
        pos += m;
        gap = pos;
    }
    lens_push(out, end - gap);
}

static int stages_of(enum nf_pretok pre, const enum stage **st)
{
    static const enum stage gpt2[] = {ST_GPT2};
    static const enum stage llama3[] = {ST_LLAMA3};
    static const enum stage qwen2[] = {ST_QWEN2};
    static const enum stage qwen35[] = {ST_QWEN35};
    static const enum stage falcon[] = {ST_PUNCT_RUN, ST_GPT2, ST_DIGITS3};
    static const enum stage dflt[] = {ST_PUNCT_DFLT, ST_GPT2, ST_NUMBERS, ST_DIGITS3};
    static const enum stage deepseek[] = {ST_DS_NEWLINE,  ST_DS_LETTERS, ST_DS_PUNCT,
                                          ST_DS_TRAIL_WS, ST_DS_CJK,     ST_NUMBERS};
    static const enum stage deepseek_coder[] = {ST_DS_NEWLINE, ST_DSC_LETTERS, ST_DSC_PUNCT,
                                                ST_DS_CJK, ST_NUMBER1};
    static const enum stage deepseek3[] = {ST_NUMBERS3, ST_DS3_CJK, ST_DS3_MAIN};
    static const enum stage starcoder[] = {ST_NUMBER1, ST_GPT2};
    static const enum stage gpt4o[] = {ST_O200K};
    static const enum stage tekken[] = {ST_TEKKEN};
    static const enum stage kimi_k2[] = {ST_KIMI_K2};
    switch (pre) {
    case NF_PRETOK_GPT2: *st = gpt2; return N_OF(gpt2);
    case NF_PRETOK_LLAMA3: *st = llama3; return N_OF(llama3);
    case NF_PRETOK_QWEN2: *st = qwen2; return N_OF(qwen2);
    case NF_PRETOK_QWEN35: *st = qwen35; return N_OF(qwen35);
    case NF_PRETOK_FALCON: *st = falcon; return N_OF(falcon);
    case NF_PRETOK_DEEPSEEK_LLM: *st = deepseek; return N_OF(deepseek);
    case NF_PRETOK_DEEPSEEK_CODER: *st = deepseek_coder; return N_OF(deepseek_coder);
    case NF_PRETOK_DEEPSEEK3: *st = deepseek3; return N_OF(deepseek3);
    case NF_PRETOK_STARCODER: *st = starcoder; return N_OF(starcoder);
    case NF_PRETOK_GPT4O: *st = gpt4o; return N_OF(gpt4o);
    case NF_PRETOK_TEKKEN: *st = tekken; return N_OF(tekken);
    case NF_PRETOK_KIMI_K2: *st = kimi_k2; return N_OF(kimi_k2);
    case NF_PRETOK_DEFAULT:
    default: *st = dflt; return N_OF(dflt);
    }
}

int nf_pretok_split(enum nf_pretok pre, const uint32_t *cps, size_t n, uint32_t **words,
                    size_t *n_words)
{
    *words = NULL;
    *n_words = 0;
    if (n == 0)
        return 0;
    uint16_t *flags = malloc(n * sizeof(*flags));
    uint32_t *wcp = malloc(n * sizeof(*wcp));
    uint8_t *col = malloc(n);
    struct lens cur = {0}, next = {0};
    int rc = -ENOMEM;
    if (!flags || !wcp || !col)
        goto done;
    for (size_t i = 0; i < n; i++) {
        flags[i] = (uint16_t)nf_unicode_flags(cps[i]);
        wcp[i] = (cps[i] > 0x7F && (flags[i] & F_WS)) ? 0x0B : cps[i];
        col[i] = collapse(cps[i], flags[i]);
    }
    struct ptext t = {cps, flags, wcp, col};
    lens_push(&cur, n);
    const enum stage *st;
    int n_st = stages_of(pre, &st);
    for (int s = 0; s < n_st && !cur.err; s++) {
        size_t start = 0;
        next.n = 0;
        for (size_t i = 0; i < cur.n; i++) {
            split_stage(st[s], &t, start, start + cur.v[i], &next);
            start += cur.v[i];
        }
        struct lens tmp = cur;
        cur = next;
        next = tmp;
        if (next.err)
            cur.err = next.err;
    }
    if (!cur.err) {
        *words = cur.v;
        *n_words = cur.n;
        cur.v = NULL;
        rc = 0;
    }
done:
    free(cur.v);
    free(next.v);
    free(flags);
    free(wcp);
    free(col);
    return rc;
}

/* ---- names ----------------------------------------------------------------------------- */

struct pre_name {
    const char *name;
    enum nf_pretok pre;
    unsigned flags;
};

/* The tokenizer.ggml.pre values accepted, with the splitting rules and settings llama.cpp
 * applies to them (llama_vocab::impl::load). Names of one family follow each other; the
 * list printed on a refusal is built from this table. */
static const struct pre_name pre_names[] = {
    {"default", NF_PRETOK_DEFAULT, 0},
    {"gpt-2", NF_PRETOK_GPT2, 0},
    {"phi-2", NF_PRETOK_GPT2, 0},
    {"mpt", NF_PRETOK_GPT2, 0},
    {"olmo", NF_PRETOK_GPT2, 0},
    {"jais", NF_PRETOK_GPT2, 0},
    {"trillion", NF_PRETOK_GPT2, 0},
    {"granite-docling", NF_PRETOK_GPT2, 0},
    {"exaone4", NF_PRETOK_GPT2, 0},
    {"gigachat", NF_PRETOK_GPT2, 0},
    {"a.x-4.0", NF_PRETOK_GPT2, 0},
    {"mellum", NF_PRETOK_GPT2, 0},
    {"llama-bpe", NF_PRETOK_LLAMA3, NF_PRE_IGNORE_MERGES | NF_PRE_ADD_BOS},
    {"llama3", NF_PRETOK_LLAMA3, NF_PRE_IGNORE_MERGES | NF_PRE_ADD_BOS},
    {"llama-v3", NF_PRETOK_LLAMA3, NF_PRE_IGNORE_MERGES | NF_PRE_ADD_BOS},
    {"falcon3", NF_PRETOK_LLAMA3, NF_PRE_IGNORE_MERGES | NF_PRE_ADD_BOS},
    {"falcon-h1", NF_PRETOK_LLAMA3, NF_PRE_IGNORE_MERGES | NF_PRE_ADD_BOS},
    {"pixtral", NF_PRETOK_LLAMA3, NF_PRE_IGNORE_MERGES | NF_PRE_ADD_BOS},
    {"midm-2.0", NF_PRETOK_LLAMA3, NF_PRE_IGNORE_MERGES | NF_PRE_ADD_BOS},
    {"lfm2", NF_PRETOK_LLAMA3, NF_PRE_IGNORE_MERGES | NF_PRE_ADD_BOS},
    {"dbrx", NF_PRETOK_LLAMA3, 0},
    {"smaug-bpe", NF_PRETOK_LLAMA3, 0},
    {"chatglm-bpe", NF_PRETOK_LLAMA3, NF_PRE_NO_BOS},
    {"glm4", NF_PRETOK_LLAMA3, NF_PRE_NO_BOS},
    {"falcon", NF_PRETOK_FALCON, 0},
    {"deepseek-llm", NF_PRETOK_DEEPSEEK_LLM, 0},
    {"deepseek-coder", NF_PRETOK_DEEPSEEK_CODER, 0},
    {"deepseek-v3", NF_PRETOK_DEEPSEEK3, 0},
    {"hunyuan-dense", NF_PRETOK_DEEPSEEK3, 0},
    {"kimi-k2", NF_PRETOK_KIMI_K2, 0},
    {"qwen2", NF_PRETOK_QWEN2, 0},
    {"deepseek-r1-qwen", NF_PRETOK_QWEN2, 0},
    {"megrez", NF_PRETOK_QWEN2, 0},
    {"stablelm2", NF_PRETOK_QWEN2, 0},
    {"hunyuan", NF_PRETOK_QWEN2, 0},
    {"kormo", NF_PRETOK_QWEN2, 0},
    {"qwen35", NF_PRETOK_QWEN35, 0},
    {"starcoder", NF_PRETOK_STARCODER, 0},
    {"refact", NF_PRETOK_STARCODER, 0},
    {"smollm", NF_PRETOK_STARCODER, 0},
    {"command-r", NF_PRETOK_STARCODER, 0},
    {"codeshell", NF_PRETOK_STARCODER, 0},
    {"exaone", NF_PRETOK_STARCODER, 0},
    {"minerva-7b", NF_PRETOK_STARCODER, 0},
    {"gpt-4o", NF_PRETOK_GPT4O, 0},
    {"llama4", NF_PRETOK_GPT4O, 0},
    {"minimax-m2", NF_PRETOK_GPT4O, 0},
    {"tekken", NF_PRETOK_TEKKEN, NF_PRE_IGNORE_MERGES | NF_PRE_ADD_BOS},
};

/* The names of pre_names joined by ", ", filled once (pthread_once) and read-only afterwards. */
static char pre_list[1024];

static void build_pre_list(void)
{
    size_t k = 0;
    for (size_t i = 0; i < N_OF(pre_names); i++) {
        int m =
            snprintf(pre_list + k, sizeof(pre_list) - k, "%s%s", i ? ", " : "", pre_names[i].name);
        NF_ASSERT(m > 0 && (size_t)m < sizeof(pre_list) - k);
        k += (size_t)m;
    }
}

void nf_pretok_heads(char *buf, size_t len)
{
    size_t k = 0;
    buf[0] = '\0';
    for (size_t i = 0; i < N_OF(pre_names); i++) {
        if (i > 0 && pre_names[i].pre == pre_names[i - 1].pre &&
            pre_names[i].flags == pre_names[i - 1].flags)
            continue;
        int m = snprintf(buf + k, len - k, "%s%s", k ? ", " : "", pre_names[i].name);
        NF_ASSERT(m > 0 && (size_t)m < len - k);
        k += (size_t)m;
    }
}

const char *nf_vocab_pre_names(void) /* tokenizer.h */
{
    static pthread_once_t once = PTHREAD_ONCE_INIT;
    pthread_once(&once, build_pre_list);
    return pre_list;
}

int nf_pretok_lookup(const char *name, enum nf_pretok *pre, unsigned *flags)
{
    for (size_t i = 0; i < N_OF(pre_names); i++) {
        if (strcmp(pre_names[i].name, name) == 0) {
            *pre = pre_names[i].pre;
            *flags = pre_names[i].flags;
            return 0;
        }
    }
    return -ENOENT;
}
