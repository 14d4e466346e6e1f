/* chat.c - chat templates: family detection from the template text and per-family rendering.
 *
 * The formats and the detection order follow llama.cpp's built-in path (llm_chat_detect_template
 * and llm_chat_apply_template in its src/llama-chat.cpp, read for the facts only); the renderings
 * in tests/data/chat/ were produced by llama.cpp itself and tests/test_chat.c checks them. */
#include "chat.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "nf_err.h"

/* A growing output string; a failed allocation is remembered and reported once at the end, so
 * the renderers can append without checking every call. */
struct sbuf {
    char *p;
    size_t len, cap;
    int err;
};

static void sb_putn(struct sbuf *sb, const char *s, size_t n)
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

static void sb_put(struct sbuf *sb, const char *s)
{
    sb_putn(sb, s, strlen(s));
}

/* The whitespace llama.cpp's trim() strips: isspace() in the C locale. */
static bool is_space(char c)
{
    return c == ' ' || c == '\t' || c == '\n' || c == '\v' || c == '\f' || c == '\r';
}

/* Appends s without its leading and trailing whitespace. */
static void sb_put_trim(struct sbuf *sb, const char *s)
{
    size_t n = strlen(s);
    while (n > 0 && is_space(*s)) {
        s++;
        n--;
    }
    while (n > 0 && is_space(s[n - 1]))
        n--;
    sb_putn(sb, s, n);
}

static bool is_role(const struct nf_chat_msg *m, const char *role)
{
    return strcmp(m->role, role) == 0;
}

/* ChatML (Qwen2, Qwen3 and many others): every turn in <|im_start|>ROLE ... <|im_end|>. */
static void render_chatml(struct sbuf *sb, const struct nf_chat_msg *m, int n, bool add_ass)
{
    for (int i = 0; i < n; i++) {
        sb_put(sb, "<|im_start|>");
        sb_put(sb, m[i].role);
        sb_put(sb, "\n");
        sb_put(sb, m[i].content);
        sb_put(sb, "<|im_end|>\n");
    }
    if (add_ass)
        sb_put(sb, "<|im_start|>assistant\n");
}

/* Phi-4: ChatML with <|im_sep|> after the role instead of a newline. */
static void render_phi4(struct sbuf *sb, const struct nf_chat_msg *m, int n, bool add_ass)
{
    for (int i = 0; i < n; i++) {
        sb_put(sb, "<|im_start|>");
        sb_put(sb, m[i].role);
        sb_put(sb, "<|im_sep|>");
        sb_put(sb, m[i].content);
        sb_put(sb, "<|im_end|>");
    }
    if (add_ass)
        sb_put(sb, "<|im_start|>assistant<|im_sep|>");
}

/* Llama 2 and its variants: [INST] ... [/INST] turns, the system prompt inside the first one
 * (in <<SYS>> for the variants that support it). The format has no generation prompt: a user
 * turn already ends where the reply begins, so add_ass changes nothing. */
static void render_llama2_common(struct sbuf *sb, const struct nf_chat_msg *m, int n, bool sys,
                                 bool bos_inside, bool strip)
{
    bool inside_turn = true; /* the first [INST] is printed without BOS */
    sb_put(sb, "[INST] ");
    for (int i = 0; i < n; i++) {
        if (!inside_turn) {
            inside_turn = true;
            sb_put(sb, bos_inside ? "<s>[INST] " : "[INST] ");
        }
        void (*put)(struct sbuf *, const char *) = strip ? sb_put_trim : sb_put;
        if (is_role(&m[i], "system")) {
            sb_put(sb, sys ? "<<SYS>>\n" : "");
            put(sb, m[i].content);
            sb_put(sb, sys ? "\n<</SYS>>\n\n" : "\n");
        } else if (is_role(&m[i], "user")) {
            put(sb, m[i].content);
            sb_put(sb, " [/INST]");
        } else {
            put(sb, m[i].content);
            sb_put(sb, "</s>");
            inside_turn = false;
        }
    }
}

static void render_llama2(struct sbuf *sb, const struct nf_chat_msg *m, int n, bool add_ass)
{
    (void)add_ass;
    render_llama2_common(sb, m, n, false, false, false);
}

static void render_llama2_sys(struct sbuf *sb, const struct nf_chat_msg *m, int n, bool add_ass)
{
    (void)add_ass;
    render_llama2_common(sb, m, n, true, false, false);
}

static void render_llama2_sys_bos(struct sbuf *sb, const struct nf_chat_msg *m, int n, bool add_ass)
{
    (void)add_ass;
    render_llama2_common(sb, m, n, true, true, false);
}

static void render_llama2_sys_strip(struct sbuf *sb, const struct nf_chat_msg *m, int n,
                                    bool add_ass)
{
    (void)add_ass;
    render_llama2_common(sb, m, n, true, false, true);
}

/* Mistral v1 / v3 / v3-tekken: [INST] turns with the system prompt prefixed to the next user
 * message; the three differ only in the spaces around the markers, and v3 trims the assistant's
 * messages. No generation prompt (add_ass changes nothing). */
static void render_mistral_v13(struct sbuf *sb, const struct nf_chat_msg *m, int n,
                               const char *lead, const char *trail, bool trim_assistant)
{
    bool inside_turn = false;
    for (int i = 0; i < n; i++) {
        if (!inside_turn) {
            sb_put(sb, lead);
            sb_put(sb, "[INST]");
            sb_put(sb, trail);
            inside_turn = true;
        }
        if (is_role(&m[i], "system")) {
            sb_put(sb, m[i].content);
            sb_put(sb, "\n\n");
        } else if (is_role(&m[i], "user")) {
            sb_put(sb, m[i].content);
            sb_put(sb, lead);
            sb_put(sb, "[/INST]");
        } else {
            sb_put(sb, trail);
            if (trim_assistant)
                sb_put_trim(sb, m[i].content);
            else
                sb_put(sb, m[i].content);
            sb_put(sb, "</s>");
            inside_turn = false;
        }
    }
}

static void render_mistral_v1(struct sbuf *sb, const struct nf_chat_msg *m, int n, bool add_ass)
{
    (void)add_ass;
    render_mistral_v13(sb, m, n, " ", " ", false);
}

static void render_mistral_v3(struct sbuf *sb, const struct nf_chat_msg *m, int n, bool add_ass)
{
    (void)add_ass;
    render_mistral_v13(sb, m, n, "", " ", true);
}

static void render_mistral_v3_tekken(struct sbuf *sb, const struct nf_chat_msg *m, int n,
                                     bool add_ass)
{
    (void)add_ass;
    render_mistral_v13(sb, m, n, "", "", false);
}

/* Mistral v7 (and v7-tekken, without the space after each opening marker): [SYSTEM_PROMPT] and
 * [INST] blocks. No generation prompt. */
static void render_mistral_v7_common(struct sbuf *sb, const struct nf_chat_msg *m, int n,
                                     const char *sp)
{
    for (int i = 0; i < n; i++) {
        if (is_role(&m[i], "system")) {
            sb_put(sb, "[SYSTEM_PROMPT]");
            sb_put(sb, sp);
            sb_put(sb, m[i].content);
            sb_put(sb, "[/SYSTEM_PROMPT]");
        } else if (is_role(&m[i], "user")) {
            sb_put(sb, "[INST]");
            sb_put(sb, sp);
            sb_put(sb, m[i].content);
            sb_put(sb, "[/INST]");
        } else {
            sb_put(sb, sp);
            sb_put(sb, m[i].content);
            sb_put(sb, "</s>");
        }
    }
}

static void render_mistral_v7(struct sbuf *sb, const struct nf_chat_msg *m, int n, bool add_ass)
{
    (void)add_ass;
    render_mistral_v7_common(sb, m, n, " ");
}

static void render_mistral_v7_tekken(struct sbuf *sb, const struct nf_chat_msg *m, int n,
                                     bool add_ass)
{
    (void)add_ass;
    render_mistral_v7_common(sb, m, n, "");
}

/* Phi-3: <|ROLE|>\n ... <|end|>\n. */
static void render_phi3(struct sbuf *sb, const struct nf_chat_msg *m, int n, bool add_ass)
{
    for (int i = 0; i < n; i++) {
        sb_put(sb, "<|");
        sb_put(sb, m[i].role);
        sb_put(sb, "|>\n");
        sb_put(sb, m[i].content);
        sb_put(sb, "<|end|>\n");
    }
    if (add_ass)
        sb_put(sb, "<|assistant|>\n");
}

/* Gemma: <start_of_turn>ROLE\n ... <end_of_turn>\n with "model" for the assistant. Gemma has no
 * system role: system messages are trimmed, concatenated and put at the top of the next user
 * turn. Every message is trimmed. */
static void render_gemma(struct sbuf *sb, const struct nf_chat_msg *m, int n, bool add_ass)
{
    struct sbuf sys = {0};
    for (int i = 0; i < n; i++) {
        if (is_role(&m[i], "system")) {
            sb_put_trim(&sys, m[i].content);
            continue;
        }
        bool model = is_role(&m[i], "assistant");
        sb_put(sb, "<start_of_turn>");
        sb_put(sb, model ? "model" : m[i].role);
        sb_put(sb, "\n");
        if (sys.len > 0 && !model) {
            sb_putn(sb, sys.p, sys.len);
            sb_put(sb, "\n\n");
            sys.len = 0;
        }
        sb_put_trim(sb, m[i].content);
        sb_put(sb, "<end_of_turn>\n");
    }
    if (add_ass)
        sb_put(sb, "<start_of_turn>model\n");
    if (sys.err)
        sb->err = sys.err;
    free(sys.p);
}

/* Llama 3: <|start_header_id|>ROLE<|end_header_id|>\n\n ... <|eot_id|>, contents trimmed; the
 * <|begin_of_text|> of the Jinja text is the tokenizer's BOS and not printed. */
static void render_llama3(struct sbuf *sb, const struct nf_chat_msg *m, int n, bool add_ass)
{
    for (int i = 0; i < n; i++) {
        sb_put(sb, "<|start_header_id|>");
        sb_put(sb, m[i].role);
        sb_put(sb, "<|end_header_id|>\n\n");
        sb_put_trim(sb, m[i].content);
        sb_put(sb, "<|eot_id|>");
    }
    if (add_ass)
        sb_put(sb, "<|start_header_id|>assistant<|end_header_id|>\n\n");
}

/* DeepSeek Coder: ### Instruction: / ### Response: blocks; other roles are dropped. */
static void render_deepseek(struct sbuf *sb, const struct nf_chat_msg *m, int n, bool add_ass)
{
    for (int i = 0; i < n; i++) {
        if (is_role(&m[i], "system")) {
            sb_put(sb, m[i].content);
        } else if (is_role(&m[i], "user")) {
            sb_put(sb, "### Instruction:\n");
            sb_put(sb, m[i].content);
            sb_put(sb, "\n");
        } else if (is_role(&m[i], "assistant")) {
            sb_put(sb, "### Response:\n");
            sb_put(sb, m[i].content);
            sb_put(sb, "\n<|EOT|>\n");
        }
    }
    if (add_ass)
        sb_put(sb, "### Response:\n");
}

#define DS_EOS      \
    "<\xef\xbd\x9c" \
    "end\xe2\x96\x81of\xe2\x96\x81sentence\xef\xbd\x9c>" /* <｜end▁of▁sentence｜> */
#define DS_USER "<\xef\xbd\x9cUser\xef\xbd\x9c>"         /* <｜User｜> */
#define DS_ASST     \
    "<\xef\xbd\x9c" \
    "Assistant\xef\xbd\x9c>" /* <｜Assistant｜> */

/* DeepSeek V2: User: / Assistant: paragraphs; other roles are dropped. */
static void render_deepseek2(struct sbuf *sb, const struct nf_chat_msg *m, int n, bool add_ass)
{
    for (int i = 0; i < n; i++) {
        if (is_role(&m[i], "system")) {
            sb_put(sb, m[i].content);
            sb_put(sb, "\n\n");
        } else if (is_role(&m[i], "user")) {
            sb_put(sb, "User: ");
            sb_put(sb, m[i].content);
            sb_put(sb, "\n\n");
        } else if (is_role(&m[i], "assistant")) {
            sb_put(sb, "Assistant: ");
            sb_put(sb, m[i].content);
            sb_put(sb, DS_EOS);
        }
    }
    if (add_ass)
        sb_put(sb, "Assistant:");
}

/* DeepSeek V3 and R1: <｜User｜> / <｜Assistant｜> markers; other roles are dropped. */
static void render_deepseek3(struct sbuf *sb, const struct nf_chat_msg *m, int n, bool add_ass)
{
    for (int i = 0; i < n; i++) {
        if (is_role(&m[i], "system")) {
            sb_put(sb, m[i].content);
            sb_put(sb, "\n\n");
        } else if (is_role(&m[i], "user")) {
            sb_put(sb, DS_USER);
            sb_put(sb, m[i].content);
        } else if (is_role(&m[i], "assistant")) {
            sb_put(sb, DS_ASST);
            sb_put(sb, m[i].content);
            sb_put(sb, DS_EOS);
        }
    }
    if (add_ass)
        sb_put(sb, DS_ASST);
}

/* gpt-oss (OpenAI's harmony format): <|start|>ROLE<|message|> ... <|end|>, the assistant's
 * messages closed by <|return|>. */
static void render_gpt_oss(struct sbuf *sb, const struct nf_chat_msg *m, int n, bool add_ass)
{
    for (int i = 0; i < n; i++) {
        sb_put(sb, "<|start|>");
        sb_put(sb, m[i].role);
        sb_put(sb, "<|message|>");
        sb_put(sb, m[i].content);
        sb_put(sb, is_role(&m[i], "assistant") ? "<|return|>" : "<|end|>");
    }
    if (add_ass)
        sb_put(sb, "<|start|>assistant");
}

typedef void (*render_fn)(struct sbuf *sb, const struct nf_chat_msg *m, int n, bool add_ass);

/* The built-in formats, by the names llama.cpp gives them. */
static const struct {
    const char *name;
    render_fn render;
} formats[] = {
    {.name = "chatml", .render = render_chatml},
    {.name = "llama2", .render = render_llama2},
    {.name = "llama2-sys", .render = render_llama2_sys},
    {.name = "llama2-sys-bos", .render = render_llama2_sys_bos},
    {.name = "llama2-sys-strip", .render = render_llama2_sys_strip},
    {.name = "mistral-v1", .render = render_mistral_v1},
    {.name = "mistral-v3", .render = render_mistral_v3},
    {.name = "mistral-v3-tekken", .render = render_mistral_v3_tekken},
    {.name = "mistral-v7", .render = render_mistral_v7},
    {.name = "mistral-v7-tekken", .render = render_mistral_v7_tekken},
    {.name = "phi3", .render = render_phi3},
    {.name = "phi4", .render = render_phi4},
    {.name = "gemma", .render = render_gemma},
    {.name = "llama3", .render = render_llama3},
    {.name = "deepseek", .render = render_deepseek},
    {.name = "deepseek2", .render = render_deepseek2},
    {.name = "deepseek3", .render = render_deepseek3},
    {.name = "gpt-oss", .render = render_gpt_oss},
};
#define N_FORMATS (sizeof(formats) / sizeof(formats[0]))

static int format_index(const char *name)
{
    for (size_t i = 0; i < N_FORMATS; i++)
        if (strcmp(formats[i].name, name) == 0)
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
    return i < 0 ? NULL : formats[i].name;
}

const char *nf_chat_names(void)
{
    static char names[512];
    if (!names[0]) {
        size_t len = 0;
        for (size_t i = 0; i < N_FORMATS; i++)
            len += (size_t)snprintf(names + len, sizeof(names) - len, "%s%s", i ? ", " : "",
                                    formats[i].name);
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
    struct sbuf sb = {0};
    formats[f].render(&sb, msgs, n_msgs, add_assistant);
    sb_put(&sb, ""); /* an empty rendering is still a string */
    if (sb.err) {
        free(sb.p);
        return nf_errf(err, errlen, sb.err, "chat template: out of memory");
    }
    *out = sb.p;
    return 0;
}
