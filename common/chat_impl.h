/* chat_impl.h - private to chat.c and chat_formats.c: the output buffer the renderers append
 * to, and the table of built-in formats. */
#ifndef NF_CHAT_IMPL_H
#define NF_CHAT_IMPL_H

#include <stdbool.h>
#include <stddef.h>

#include "chat.h"

/* A growing output string; a failed allocation is remembered (err) and reported once at the
 * end, so the renderers append without checking every call. */
struct nf_chat__buf {
    char *p;
    size_t len, cap;
    int err;
};

void nf_chat__putn(struct nf_chat__buf *sb, const char *s, size_t n);
void nf_chat__put(struct nf_chat__buf *sb, const char *s);
/* Appends s without the leading and trailing whitespace llama.cpp's trim() strips. */
void nf_chat__put_trim(struct nf_chat__buf *sb, const char *s);
bool nf_chat__is_role(const struct nf_chat_msg *m, const char *role);

/* DeepSeek's markers (fullwidth bars, U+2581 for the spaces). */
#define DS_EOS      \
    "<\xef\xbd\x9c" \
    "end\xe2\x96\x81of\xe2\x96\x81sentence\xef\xbd\x9c>" /* <｜end▁of▁sentence｜> */
#define DS_USER "<\xef\xbd\x9cUser\xef\xbd\x9c>"         /* <｜User｜> */
#define DS_ASST     \
    "<\xef\xbd\x9c" \
    "Assistant\xef\xbd\x9c>" /* <｜Assistant｜> */

/* A format that prints every message as OPEN ROLE AFTER_ROLE CONTENT CLOSE (CLOSE_ASSISTANT
 * instead after an assistant's message, when set), the content trimmed when trim, and GEN as
 * the assistant's generation prompt. */
struct nf_chat__turns {
    const char *open, *after_role, *close, *close_assistant, *gen;
    bool trim;
};

/* One built-in format: its llama.cpp name and either its renderer, which appends the messages
 * to sb and, with add_ass, the assistant's generation prompt (the formats without one ignore
 * it), or, without one, the turns that render it. */
struct nf_chat__format {
    const char *name;
    void (*render)(struct nf_chat__buf *sb, const struct nf_chat_msg *m, int n, bool add_ass);
    struct nf_chat__turns turns;
};

void nf_chat__format_render(const struct nf_chat__format *f, struct nf_chat__buf *sb,
                            const struct nf_chat_msg *m, int n, bool add_ass);

extern const struct nf_chat__format nf_chat__formats[];
extern const size_t nf_chat__n_formats;

#endif
