/* unicode.c - code point property lookups over the generated tables, UTF-8, GPT-2 byte mapping. */
#include "unicode.h"

static const unsigned ucat_group[NF_UCAT_COUNT] = {
    [NF_UCAT_Cn] = NF_UFLAG_UNDEFINED,   [NF_UCAT_Lu] = NF_UFLAG_LETTER,
    [NF_UCAT_Ll] = NF_UFLAG_LETTER,      [NF_UCAT_Lt] = NF_UFLAG_LETTER,
    [NF_UCAT_Lm] = NF_UFLAG_LETTER,      [NF_UCAT_Lo] = NF_UFLAG_LETTER,
    [NF_UCAT_Mn] = NF_UFLAG_MARK,        [NF_UCAT_Mc] = NF_UFLAG_MARK,
    [NF_UCAT_Me] = NF_UFLAG_MARK,        [NF_UCAT_Nd] = NF_UFLAG_NUMBER,
    [NF_UCAT_Nl] = NF_UFLAG_NUMBER,      [NF_UCAT_No] = NF_UFLAG_NUMBER,
    [NF_UCAT_Pc] = NF_UFLAG_PUNCTUATION, [NF_UCAT_Pd] = NF_UFLAG_PUNCTUATION,
    [NF_UCAT_Ps] = NF_UFLAG_PUNCTUATION, [NF_UCAT_Pe] = NF_UFLAG_PUNCTUATION,
    [NF_UCAT_Pi] = NF_UFLAG_PUNCTUATION, [NF_UCAT_Pf] = NF_UFLAG_PUNCTUATION,
    [NF_UCAT_Po] = NF_UFLAG_PUNCTUATION, [NF_UCAT_Sm] = NF_UFLAG_SYMBOL,
    [NF_UCAT_Sc] = NF_UFLAG_SYMBOL,      [NF_UCAT_Sk] = NF_UFLAG_SYMBOL,
    [NF_UCAT_So] = NF_UFLAG_SYMBOL,      [NF_UCAT_Zs] = NF_UFLAG_SEPARATOR,
    [NF_UCAT_Zl] = NF_UFLAG_SEPARATOR,   [NF_UCAT_Zp] = NF_UFLAG_SEPARATOR,
    [NF_UCAT_Cc] = NF_UFLAG_CONTROL,     [NF_UCAT_Cf] = NF_UFLAG_CONTROL,
    [NF_UCAT_Cs] = NF_UFLAG_CONTROL,     [NF_UCAT_Co] = NF_UFLAG_CONTROL,
};

enum nf_ucat nf_unicode_category(uint32_t cp)
{
    if (cp > NF_UNICODE_MAX)
        return NF_UCAT_Cn;
    /* Binary search for the last run starting at or before cp (run 0 starts at 0). */
    int lo = 0, hi = nf_ucat_n_runs - 1;
    while (lo < hi) {
        int mid = lo + (hi - lo + 1) / 2;
        if (nf_ucat_runs[mid].start <= cp)
            lo = mid;
        else
            hi = mid - 1;
    }
    return (enum nf_ucat)nf_ucat_runs[lo].cat;
}

bool nf_unicode_is_whitespace(uint32_t cp)
{
    for (int i = 0; i < nf_whitespace_n_ranges; i++) {
        if (cp < nf_whitespace_ranges[i].lo)
            return false;
        if (cp <= nf_whitespace_ranges[i].hi)
            return true;
    }
    return false;
}

unsigned nf_unicode_flags(uint32_t cp)
{
    unsigned f = ucat_group[nf_unicode_category(cp)];
    if (nf_unicode_is_whitespace(cp))
        f |= NF_UFLAG_WHITESPACE;
    return f;
}

int nf_utf8_len(unsigned char lead)
{
    static const unsigned char len_by_top4[16] = {1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 2, 2, 3, 4};
    return len_by_top4[lead >> 4];
}

static bool is_cont(const char *s, size_t len, size_t i)
{
    return i < len && ((unsigned char)s[i] & 0xC0) == 0x80;
}

uint32_t nf_utf8_decode(const char *s, size_t len, size_t *off)
{
    size_t i = *off;
    unsigned c = (unsigned char)s[i];
    if (!(c & 0x80)) {
        *off = i + 1;
        return c;
    }
    if ((c & 0xE0) == 0xC0 && is_cont(s, len, i + 1)) {
        *off = i + 2;
        return ((c & 0x1Fu) << 6) | ((unsigned char)s[i + 1] & 0x3Fu);
    }
    if ((c & 0xF0) == 0xE0 && is_cont(s, len, i + 1) && is_cont(s, len, i + 2)) {
        *off = i + 3;
        return ((c & 0x0Fu) << 12) | (((unsigned char)s[i + 1] & 0x3Fu) << 6) |
               ((unsigned char)s[i + 2] & 0x3Fu);
    }
    if ((c & 0xF8) == 0xF0 && is_cont(s, len, i + 1) && is_cont(s, len, i + 2) &&
        is_cont(s, len, i + 3)) {
        *off = i + 4;
        return ((c & 0x07u) << 18) | (((unsigned char)s[i + 1] & 0x3Fu) << 12) |
               (((unsigned char)s[i + 2] & 0x3Fu) << 6) | ((unsigned char)s[i + 3] & 0x3Fu);
    }
    *off = i + 1;
    return 0xFFFD;
}

int nf_utf8_encode(uint32_t cp, char out[4])
{
    if (cp < 0x80) {
        out[0] = (char)cp;
        return 1;
    }
    if (cp < 0x800) {
        out[0] = (char)(0xC0 | (cp >> 6));
        out[1] = (char)(0x80 | (cp & 0x3F));
        return 2;
    }
    if (cp < 0x10000) {
        out[0] = (char)(0xE0 | (cp >> 12));
        out[1] = (char)(0x80 | ((cp >> 6) & 0x3F));
        out[2] = (char)(0x80 | (cp & 0x3F));
        return 3;
    }
    out[0] = (char)(0xF0 | ((cp >> 18) & 0x07));
    out[1] = (char)(0x80 | ((cp >> 12) & 0x3F));
    out[2] = (char)(0x80 | ((cp >> 6) & 0x3F));
    out[3] = (char)(0x80 | (cp & 0x3F));
    return 4;
}

static bool byte_is_printable(unsigned b)
{
    return (b >= 0x21 && b <= 0x7E) || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE);
}

uint32_t nf_byte_to_unicode(uint8_t b)
{
    /* The 68 non-printable bytes take U+0100, U+0101, ... in increasing byte order:
     * 0x00-0x20 (33 bytes), then 0x7F-0xA0 (34 bytes), then 0xAD. */
    if (byte_is_printable(b))
        return b;
    if (b <= 0x20)
        return 0x100u + b;
    if (b <= 0xA0)
        return 0x100u + 33 + (b - 0x7Fu);
    return 0x100u + 67; /* 0xAD */
}

int nf_unicode_to_byte(uint32_t cp)
{
    if (cp < 0x100)
        return byte_is_printable(cp) ? (int)cp : -1;
    uint32_t n = cp - 0x100;
    if (n < 33)
        return (int)n;
    if (n < 67)
        return (int)(0x7F + n - 33);
    if (n == 67)
        return 0xAD;
    return -1;
}
