/* unicode.h - code point properties (general category, White_Space), UTF-8 and GPT-2 byte mapping.
 */
#ifndef NF_UNICODE_H
#define NF_UNICODE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* Unicode general categories; NF_UCAT_Cn (unassigned) is 0. */
enum nf_ucat {
    NF_UCAT_Cn = 0,
    NF_UCAT_Lu,
    NF_UCAT_Ll,
    NF_UCAT_Lt,
    NF_UCAT_Lm,
    NF_UCAT_Lo,
    NF_UCAT_Mn,
    NF_UCAT_Mc,
    NF_UCAT_Me,
    NF_UCAT_Nd,
    NF_UCAT_Nl,
    NF_UCAT_No,
    NF_UCAT_Pc,
    NF_UCAT_Pd,
    NF_UCAT_Ps,
    NF_UCAT_Pe,
    NF_UCAT_Pi,
    NF_UCAT_Pf,
    NF_UCAT_Po,
    NF_UCAT_Sm,
    NF_UCAT_Sc,
    NF_UCAT_Sk,
    NF_UCAT_So,
    NF_UCAT_Zs,
    NF_UCAT_Zl,
    NF_UCAT_Zp,
    NF_UCAT_Cc,
    NF_UCAT_Cf,
    NF_UCAT_Cs,
    NF_UCAT_Co,
    NF_UCAT_COUNT,
};

/* Category groups as llama.cpp's unicode_cpt_flags uses them (regex \p{N}, \p{L}, ...), plus the
 * White_Space bit. Every code point has exactly one group bit; unassigned ones are UNDEFINED. */
enum {
    NF_UFLAG_UNDEFINED = 0x01,
    NF_UFLAG_NUMBER = 0x02,      /* \p{N}: Nd Nl No */
    NF_UFLAG_LETTER = 0x04,      /* \p{L}: Lu Ll Lt Lm Lo */
    NF_UFLAG_SEPARATOR = 0x08,   /* \p{Z}: Zs Zl Zp */
    NF_UFLAG_MARK = 0x10,        /* \p{M}: Mn Mc Me */
    NF_UFLAG_PUNCTUATION = 0x20, /* \p{P}: Pc Pd Ps Pe Pi Pf Po */
    NF_UFLAG_SYMBOL = 0x40,      /* \p{S}: Sm Sc Sk So */
    NF_UFLAG_CONTROL = 0x80,     /* \p{C}: Cc Cf Cs Co */
    NF_UFLAG_WHITESPACE = 0x100, /* White_Space property (regex \s) */
};

#define NF_UNICODE_MAX 0x10FFFF

struct nf_ucat_run {
    uint32_t start;
    uint8_t cat; /* enum nf_ucat */
};
struct nf_urange {
    uint32_t lo, hi; /* inclusive */
};

/* Generated tables (unicode_data.c). */
extern const char nf_unicode_data_version[];
extern const struct nf_ucat_run nf_ucat_runs[];
extern const int nf_ucat_n_runs;
extern const struct nf_urange nf_whitespace_ranges[];
extern const int nf_whitespace_n_ranges;

/* General category of cp; code points above U+10FFFF are Cn. */
enum nf_ucat nf_unicode_category(uint32_t cp);
/* NF_UFLAG_* group bit of cp's category, or'ed with NF_UFLAG_WHITESPACE when it applies. */
unsigned nf_unicode_flags(uint32_t cp);
bool nf_unicode_is_whitespace(uint32_t cp);

/* Byte length of the UTF-8 sequence a lead byte announces, from its top 4 bits (1 for
 * continuation bytes, as llama.cpp's unicode_len_utf8 does). */
int nf_utf8_len(unsigned char lead);

/* Decodes one code point from s[*off..len) and advances *off. Follows llama.cpp's
 * unicode_cpt_from_utf8: the lead byte fixes the length, continuation bytes must be 10xxxxxx;
 * on an invalid or truncated sequence it returns U+FFFD and advances by one byte. */
uint32_t nf_utf8_decode(const char *s, size_t len, size_t *off);

/* Encodes cp (<= 0x1FFFFF) into out; returns the byte count (1..4). */
int nf_utf8_encode(uint32_t cp, char out[4]);

/* GPT-2 byte-level mapping: every byte has a printable code point (bytes 0x21-0x7E, 0xA1-0xAC and
 * 0xAE-0xFF map to themselves, the others to U+0100 upwards in byte order). */
uint32_t nf_byte_to_unicode(uint8_t b);
/* Inverse of nf_byte_to_unicode: the byte, or -1 if cp is not in the image. */
int nf_unicode_to_byte(uint32_t cp);

#endif
