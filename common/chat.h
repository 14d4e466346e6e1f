/* chat.h - chat templates: a conversation rendered into the prompt text a chat model expects.
 *
 * A GGUF carries its chat template in `tokenizer.chat_template` (a Jinja text). Like llama.cpp's
 * built-in path (llama_chat_apply_template), NanoFlow does not interpret the Jinja: it recognises
 * the model family from marker strings in the text (nf_chat_detect) and renders the messages with
 * that family's fixed format, so the result equals llama.cpp's for the same messages byte for
 * byte (tests/data/chat/ holds llama.cpp's renderings; tests/test_chat.c compares them). A
 * built-in name ("chatml", "llama3", ...) may be given instead of a template text, which is how
 * `--chat-template NAME` overrides the model's template. */
#ifndef NF_CHAT_H
#define NF_CHAT_H

#include <stdbool.h>
#include <stddef.h>

/* One message of a conversation; role is "system", "user" or "assistant" (other roles are
 * rendered as each family renders an unknown role). Both strings are borrowed. */
struct nf_chat_msg {
    const char *role;
    const char *content;
};

/* Renders msgs with tmpl (the GGUF's tokenizer.chat_template text, or a built-in name such as
 * "chatml", "llama2", "llama3", "mistral-v7", "gemma", "phi3", "deepseek", "deepseek3",
 * "gpt-oss"); with add_assistant the prompt ends where the assistant's reply begins. *out is
 * malloc'd (the caller frees it). Returns 0, or a negative errno with a one-line reason in err
 * (unknown template: names it and says to pass --chat-template NAME). bos/eos: the vocabulary's
 * BOS/EOS text, for templates that print them (may be NULL; the built-in formats, like
 * llama.cpp's, print neither: the tokenizer adds BOS). */
int nf_chat_render(const char *tmpl, const struct nf_chat_msg *msgs, int n_msgs, bool add_assistant,
                   const char *bos, const char *eos, char **out, char *err, size_t errlen);

/* Returns the built-in name a template text (or a built-in name) matches, or NULL when no
 * built-in format matches it. The returned string is static. */
const char *nf_chat_detect(const char *tmpl);

/* Returns the built-in names, comma-separated, for help texts and error messages (static). */
const char *nf_chat_names(void);

#endif
