/* chat_tmpl.h - the chat flags of gen, run and chat (--chat, --system, --chat-template) and the
 * model's chat template, read from a GGUF or from the running stack's model. */
#ifndef NF_CHAT_TMPL_H
#define NF_CHAT_TMPL_H

#include <stdbool.h>
#include <stddef.h>

#include "chat.h"
#include "gguf.h"

struct nf_chat_opts {
    bool on;            /* --chat (always on for `chat`) */
    const char *system; /* --system TEXT, or NULL */
    const char *tmpl;   /* --chat-template NAME (or a template text), or NULL: the model's */
};

/* Takes --chat, --system TEXT or --chat-template NAME at argv[*i] (advancing *i past a value).
 * Returns 1 when it took one, 0 when argv[*i] is none of them, -1 after printing a usage error
 * (a missing value, an unknown template name). */
int nf_chat_flag(const char *cmd, int argc, char **argv, int *i, struct nf_chat_opts *o);

/* The built-in template names as continuation lines of a --help option entry (indented 26
 * columns, wrapped, each line ending in a newline); a static string. */
const char *nf_chat_help_names(void);

/* The template text and BOS/EOS texts a conversation is rendered with (owned strings). */
struct nf_chat_model {
    char *tmpl, *bos, *eos;
};

/* Fills cm from a model's metadata g: --chat-template when given, else the model's
 * tokenizer.chat_template; without either, "chatml" as llama.cpp does, with a note on stderr.
 * A template no built-in format matches is refused here, before anything runs. Returns 0, or 1
 * after printing one line "nanoflowctl CMD: ...". */
int nf_chat_model_init(const char *cmd, const struct nf_gguf *g, const char *override,
                       struct nf_chat_model *cm);

/* As nf_chat_model_init for the model of the stack running in dir (its stack.conf names the
 * .nft, whose metadata is the source GGUF's). */
int nf_chat_model_init_stack(const char *cmd, const char *dir, const char *override,
                             struct nf_chat_model *cm);

void nf_chat_model_free(struct nf_chat_model *cm);

/* Renders msgs ending with the assistant's generation prompt into *out (malloc'd). Returns 0, or
 * 1 after printing the reason. */
int nf_chat_model_render(const char *cmd, const struct nf_chat_model *cm,
                         const struct nf_chat_msg *msgs, int n, char **out);

/* The one-turn conversation of `gen --chat` and `run --chat`: the --system message if any, then
 * text as the user's message, rendered into *out. Returns 0 or 1 as nf_chat_model_render. */
int nf_chat_render_prompt(const char *cmd, const struct nf_chat_model *cm,
                          const struct nf_chat_opts *o, const char *text, char **out);

#endif
