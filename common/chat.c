/* chat.c - chat templates: the family of a template text (llama.cpp's detection order), the
 * names, and nf_chat_render() around the per-family renderers of chat_formats.c.
 *
 * The detection follows llama.cpp's built-in path (llm_chat_detect_template in its
 * src/llama-chat.cpp, read for the facts only); the renderings in tests/data/chat/ were produced
 * by llama.cpp itself and tests/test_chat.c checks them. */
#include "chat.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "chat_impl.h"
#include "nf_err.h"

void nf_chat__putn(struct nf_chat__buf *sb, const char *s, size_t n)
{
    if (sb->err)
        return;
    if (sb->len + n + 1 > sb->cap) {
        size_t cap = sb->cap ? sb->cap : 256;
        while (cap < sb->len + n + 1)
            cap *= 2;
        char *p = realloc(sb->p, cap);
        if (!p) {
            sb->err = -ENOMEM;
            return;
        }
        sb->p = p;
        sb->cap = cap;
    }
    memcpy(sb->p + sb->len, s, n);
    sb->len += n;
    sb->p[sb->len] = '\0';
}

void nf_chat__put(struct nf_chat__buf *sb, const char *s)
{
    nf_chat__putn(sb, s, strlen(s));
}

/* The whitespace llama.cpp's trim() strips: isspace() in the C locale. */
static bool is_space(char c)
{
    return c == ' ' || c == '\t' || c == '\n' || c == '\v' || c == '\f' || c == '\r';
}

/* Appends s without its leading and trailing whitespace. */
void nf_chat__put_trim(struct nf_chat__buf *sb, const char *s)
{
    size_t n = strlen(s);
    while (n > 0 && is_space(*s)) {
        s++;
        n--;
    }
    while (n > 0 && is_space(s[n - 1]))
        n--;
    nf_chat__putn(sb, s, n);
}

bool nf_chat__is_role(const struct nf_chat_msg *m, const char *role)
{
    return strcmp(m->role, role) == 0;
}

static int format_index(const char *name)
{
    for (size_t i = 0; i < nf_chat__n_formats; i++)
        if (strcmp(nf_chat__formats[i].name, name) == 0)
            return (int)i;
    return -1;
}

static bool has(const char *tmpl, const char *s)
{
    return strstr(tmpl, s) != NULL;
}

/* The family llama.cpp's detection gives a template text, in its order (the first match wins,
 * so a family NanoFlow does not render still has its place: its markers must not fall through
 * to a later family). Returns a family name, or NULL when nothing matches. */
static const char *detect_family(const char *t)
{
    if (has(t, "<|im_start|>"))
        return has(t, "<|im_sep|>") ? "phi4" : has(t, "<end_of_utterance>") ? "smolvlm" : "chatml";
    if (strncmp(t, "mistral", 7) == 0 || has(t, "[INST]")) {
        if (has(t, "[SYSTEM_PROMPT]"))
            return "mistral-v7";
        if (has(t, "' [INST] ' + system_message") || has(t, "[AVAILABLE_TOOLS]")) {
            if (has(t, " [INST]"))
                return "mistral-v1";
            if (has(t, "\"[INST]\""))
                return "mistral-v3-tekken";
            return "mistral-v3";
        }
        if (has(t, "content.strip()"))
            return "llama2-sys-strip";
        if (has(t, "bos_token + '[INST]"))
            return "llama2-sys-bos";
        if (has(t, "<<SYS>>"))
            return "llama2-sys";
        return "llama2";
    }
    if (has(t, "<|assistant|>") && has(t, "<|end|>"))
        return "phi3";
    if (has(t, "[gMASK]<sop>"))
        return "chatglm4";
    if (has(t, "<|assistant|>") && has(t, "<|user|>"))
        return has(t, "</s>") ? "falcon3" : "glmedge";
    if (has(t, "<|{{ item['role'] }}|>") && has(t, "<|begin_of_image|>"))
        return "glmedge";
    if (has(t, "<|user|>") && has(t, "<|endoftext|>"))
        return "zephyr";
    if (has(t, "bos_token + message['role']"))
        return "monarch";
    if (has(t, "<start_of_turn>"))
        return "gemma";
    if (has(t, "'\\n\\nAssistant: ' + eos_token"))
        return "orion";
    if (has(t, "GPT4 Correct "))
        return "openchat";
    if (has(t, "USER: ") && has(t, "ASSISTANT: "))
        return has(t, "SYSTEM: ") ? "vicuna-orca" : "vicuna";
    if (has(t, "### Instruction:") && has(t, "<|EOT|>"))
        return "deepseek";
    if (has(t, "<|START_OF_TURN_TOKEN|>") && has(t, "<|USER_TOKEN|>"))
        return "command-r";
    if (has(t, "<|start_header_id|>") && has(t, "<|end_header_id|>"))
        return "llama3";
    if (has(t, "[gMASK]sop"))
        return "chatglm3";
    if (has(t, "<\xe7\x94\xa8\xe6\x88\xb7>")) /* <用户> */
        return "minicpm";
    if (has(t, "'Assistant: ' + message['content'] + eos_token"))
        return "deepseek2";
    if (has(t, DS_ASST) && has(t, DS_USER) && has(t, DS_EOS))
        return "deepseek3";
    if (has(t, "[|system|]") && has(t, "[|assistant|]") && has(t, "[|endofturn|]"))
        return has(t, "[|tool|]") ? "exaone4" : "exaone3";
    if (has(t, "<|start_of_role|>"))
        return "granite";
    if (has(t, "<|role_start|>"))
        return "megrez";
    if (has(t, "<|header_start|>") && has(t, "<|header_end|>"))
        return "llama4";
    if (has(t, "<|start|>") && has(t, "<|channel|>"))
        return "gpt-oss";
    return NULL;
}

const char *nf_chat_detect(const char *tmpl)
{
    if (!tmpl)
        return NULL;
    int i = format_index(tmpl);
    if (i < 0) {
        const char *family = detect_family(tmpl);
        i = family ? format_index(family) : -1;
    }
    return i < 0 ? NULL : nf_chat__formats[i].name;
}

const char *nf_chat_names(void)
{
    static char names[1024];
    if (!names[0]) {
        size_t len = 0;
        for (size_t i = 0; i < nf_chat__n_formats; i++)
            len += (size_t)snprintf(names + len, sizeof(names) - len, "%s%s", i ? ", " : "",
                                    nf_chat__formats[i].name);
    }
    return names;
}

/* A short quotable excerpt of a template text for error messages: its first line, cut at 40
 * bytes. */
static void excerpt(const char *tmpl, char *buf, size_t len)
{
    size_t n = strcspn(tmpl, "\n");
    if (n > 40)
        n = 40;
    if (n >= len)
        n = len - 1;
    memcpy(buf, tmpl, n);
    buf[n] = '\0';
}

int nf_chat_render(const char *tmpl, const struct nf_chat_msg *msgs, int n_msgs, bool add_assistant,
                   const char *bos, const char *eos, char **out, char *err, size_t errlen)
{
    (void)bos; /* the built-in formats print neither (see chat.h) */
    (void)eos;
    if (!tmpl || !out || n_msgs < 0 || (n_msgs > 0 && !msgs))
        return nf_errf(err, errlen, -EINVAL, "chat template: invalid arguments");
    *out = NULL;
    for (int i = 0; i < n_msgs; i++)
        if (!msgs[i].role || !msgs[i].content)
            return nf_errf(err, errlen, -EINVAL, "chat message %d has no %s", i,
                           msgs[i].role ? "content" : "role");
    int f = format_index(tmpl);
    if (f < 0) {
        const char *family = detect_family(tmpl);
        f = family ? format_index(family) : -1;
        char ex[48];
        excerpt(tmpl, ex, sizeof(ex));
        if (!family)
            return nf_errf(err, errlen, -ENOTSUP,
                           "unknown chat template \"%s%s\": pass --chat-template NAME (%s)", ex,
                           strlen(ex) < strlen(tmpl) ? "..." : "", nf_chat_names());
        if (f < 0)
            return nf_errf(err, errlen, -ENOTSUP,
                           "chat template family \"%s\" is not supported: pass --chat-template "
                           "NAME (%s)",
                           family, nf_chat_names());
    }
    struct nf_chat__buf sb = {0};
    nf_chat__format_render(&nf_chat__formats[f], &sb, msgs, n_msgs, add_assistant);
    nf_chat__put(&sb, ""); /* an empty rendering is still a string */
    if (sb.err) {
        free(sb.p);
        return nf_errf(err, errlen, sb.err, "chat template: out of memory");
    }
    *out = sb.p;
    return 0;
}
