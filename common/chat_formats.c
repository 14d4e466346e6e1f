/* chat_formats.c - the built-in chat formats, a row of markers or a renderer each, as llama.cpp's
 * llm_chat_apply_template prints them (facts read from its src/llama-chat.cpp; checked against
 * its output by tests/test_chat.c). */
#include <stdlib.h>
#include <string.h>

#include "chat_impl.h"

/* The formats that wrap every message the same way (nf_chat__turns). */
static void render_turns(struct nf_chat__buf *sb, const struct nf_chat__turns *t,
                         const struct nf_chat_msg *m, int n, bool add_ass)
{
    for (int i = 0; i < n; i++) {
        nf_chat__put(sb, t->open);
        nf_chat__put(sb, m[i].role);
        nf_chat__put(sb, t->after_role);
        if (t->trim)
            nf_chat__put_trim(sb, m[i].content);
        else
            nf_chat__put(sb, m[i].content);
        bool ass = t->close_assistant && nf_chat__is_role(&m[i], "assistant");
        nf_chat__put(sb, ass ? t->close_assistant : t->close);
    }
    if (add_ass)
        nf_chat__put(sb, t->gen);
}

void nf_chat__format_render(const struct nf_chat__format *f, struct nf_chat__buf *sb,
                            const struct nf_chat_msg *m, int n, bool add_ass)
{
    if (f->render)
        f->render(sb, m, n, add_ass);
    else
        render_turns(sb, &f->turns, m, n, add_ass);
}

/* Llama 2 and its variants: [INST] ... [/INST] turns, the system prompt inside the first one
 * (in <<SYS>> for the variants that support it). The format has no generation prompt: a user
 * turn already ends where the reply begins, so add_ass changes nothing. */
static void render_llama2_common(struct nf_chat__buf *sb, const struct nf_chat_msg *m, int n,
                                 bool sys, bool bos_inside, bool strip)
{
    bool inside_turn = true; /* the first [INST] is printed without BOS */
    nf_chat__put(sb, "[INST] ");
    for (int i = 0; i < n; i++) {
        if (!inside_turn) {
            inside_turn = true;
            nf_chat__put(sb, bos_inside ? "<s>[INST] " : "[INST] ");
        }
        void (*put)(struct nf_chat__buf *, const char *) = strip ? nf_chat__put_trim : nf_chat__put;
        if (nf_chat__is_role(&m[i], "system")) {
            nf_chat__put(sb, sys ? "<<SYS>>\n" : "");
            put(sb, m[i].content);
            nf_chat__put(sb, sys ? "\n<</SYS>>\n\n" : "\n");
        } else if (nf_chat__is_role(&m[i], "user")) {
            put(sb, m[i].content);
            nf_chat__put(sb, " [/INST]");
        } else {
            put(sb, m[i].content);
            nf_chat__put(sb, "</s>");
            inside_turn = false;
        }
    }
}

static void render_llama2(struct nf_chat__buf *sb, const struct nf_chat_msg *m, int n, bool add_ass)
{
    (void)add_ass;
    render_llama2_common(sb, m, n, false, false, false);
}

static void render_llama2_sys(struct nf_chat__buf *sb, const struct nf_chat_msg *m, int n,
                              bool add_ass)
{
    (void)add_ass;
    render_llama2_common(sb, m, n, true, false, false);
}

static void render_llama2_sys_bos(struct nf_chat__buf *sb, const struct nf_chat_msg *m, int n,
                                  bool add_ass)
{
    (void)add_ass;
    render_llama2_common(sb, m, n, true, true, false);
}

static void render_llama2_sys_strip(struct nf_chat__buf *sb, const struct nf_chat_msg *m, int n,
                                    bool add_ass)
{
    (void)add_ass;
    render_llama2_common(sb, m, n, true, false, true);
}

/* Mistral v1 / v3 / v3-tekken: [INST] turns with the system prompt prefixed to the next user
 * message; the three differ only in the spaces around the markers, and v3 trims the assistant's
 * messages. No generation prompt (add_ass changes nothing). */
static void render_mistral_v13(struct nf_chat__buf *sb, const struct nf_chat_msg *m, int n,
                               const char *lead, const char *trail, bool trim_assistant)
{
    bool inside_turn = false;
    for (int i = 0; i < n; i++) {
        if (!inside_turn) {
            nf_chat__put(sb, lead);
            nf_chat__put(sb, "[INST]");
            nf_chat__put(sb, trail);
            inside_turn = true;
        }
        if (nf_chat__is_role(&m[i], "system")) {
            nf_chat__put(sb, m[i].content);
            nf_chat__put(sb, "\n\n");
        } else if (nf_chat__is_role(&m[i], "user")) {
            nf_chat__put(sb, m[i].content);
            nf_chat__put(sb, lead);
            nf_chat__put(sb, "[/INST]");
        } else {
            nf_chat__put(sb, trail);
            if (trim_assistant)
                nf_chat__put_trim(sb, m[i].content);
            else
                nf_chat__put(sb, m[i].content);
            nf_chat__put(sb, "</s>");
            inside_turn = false;
        }
    }
}

static void render_mistral_v1(struct nf_chat__buf *sb, const struct nf_chat_msg *m, int n,
                              bool add_ass)
{
    (void)add_ass;
    render_mistral_v13(sb, m, n, " ", " ", false);
}

static void render_mistral_v3(struct nf_chat__buf *sb, const struct nf_chat_msg *m, int n,
                              bool add_ass)
{
    (void)add_ass;
    render_mistral_v13(sb, m, n, "", " ", true);
}

static void render_mistral_v3_tekken(struct nf_chat__buf *sb, const struct nf_chat_msg *m, int n,
                                     bool add_ass)
{
    (void)add_ass;
    render_mistral_v13(sb, m, n, "", "", false);
}

/* Mistral v7 (and v7-tekken, without the space after each opening marker): [SYSTEM_PROMPT] and
 * [INST] blocks. No generation prompt. */
static void render_mistral_v7_common(struct nf_chat__buf *sb, const struct nf_chat_msg *m, int n,
                                     const char *sp)
{
    for (int i = 0; i < n; i++) {
        if (nf_chat__is_role(&m[i], "system")) {
            nf_chat__put(sb, "[SYSTEM_PROMPT]");
            nf_chat__put(sb, sp);
            nf_chat__put(sb, m[i].content);
            nf_chat__put(sb, "[/SYSTEM_PROMPT]");
        } else if (nf_chat__is_role(&m[i], "user")) {
            nf_chat__put(sb, "[INST]");
            nf_chat__put(sb, sp);
            nf_chat__put(sb, m[i].content);
            nf_chat__put(sb, "[/INST]");
        } else {
            nf_chat__put(sb, sp);
            nf_chat__put(sb, m[i].content);
            nf_chat__put(sb, "</s>");
        }
    }
}

static void render_mistral_v7(struct nf_chat__buf *sb, const struct nf_chat_msg *m, int n,
                              bool add_ass)
{
    (void)add_ass;
    render_mistral_v7_common(sb, m, n, " ");
}

static void render_mistral_v7_tekken(struct nf_chat__buf *sb, const struct nf_chat_msg *m, int n,
                                     bool add_ass)
{
    (void)add_ass;
    render_mistral_v7_common(sb, m, n, "");
}

/* Gemma: <start_of_turn>ROLE\n ... <end_of_turn>\n with "model" for the assistant. Gemma has no
 * system role: system messages are trimmed, concatenated and put at the top of the next user
 * turn. Every message is trimmed. */
static void render_gemma(struct nf_chat__buf *sb, const struct nf_chat_msg *m, int n, bool add_ass)
{
    struct nf_chat__buf sys = {0};
    for (int i = 0; i < n; i++) {
        if (nf_chat__is_role(&m[i], "system")) {
            nf_chat__put_trim(&sys, m[i].content);
            continue;
        }
        bool model = nf_chat__is_role(&m[i], "assistant");
        nf_chat__put(sb, "<start_of_turn>");
        nf_chat__put(sb, model ? "model" : m[i].role);
        nf_chat__put(sb, "\n");
        if (sys.len > 0 && !model) {
            nf_chat__putn(sb, sys.p, sys.len);
            nf_chat__put(sb, "\n\n");
            sys.len = 0;
        }
        nf_chat__put_trim(sb, m[i].content);
        nf_chat__put(sb, "<end_of_turn>\n");
    }
    if (add_ass)
        nf_chat__put(sb, "<start_of_turn>model\n");
    if (sys.err)
        sb->err = sys.err;
    free(sys.p);
}

/* DeepSeek Coder: ### Instruction: / ### Response: blocks; other roles are dropped. */
static void render_deepseek(struct nf_chat__buf *sb, const struct nf_chat_msg *m, int n,
                            bool add_ass)
{
    for (int i = 0; i < n; i++) {
        if (nf_chat__is_role(&m[i], "system")) {
            nf_chat__put(sb, m[i].content);
        } else if (nf_chat__is_role(&m[i], "user")) {
            nf_chat__put(sb, "### Instruction:\n");
            nf_chat__put(sb, m[i].content);
            nf_chat__put(sb, "\n");
        } else if (nf_chat__is_role(&m[i], "assistant")) {
            nf_chat__put(sb, "### Response:\n");
            nf_chat__put(sb, m[i].content);
            nf_chat__put(sb, "\n<|EOT|>\n");
        }
    }
    if (add_ass)
        nf_chat__put(sb, "### Response:\n");
}

/* DeepSeek V2: User: / Assistant: paragraphs; other roles are dropped. */
static void render_deepseek2(struct nf_chat__buf *sb, const struct nf_chat_msg *m, int n,
                             bool add_ass)
{
    for (int i = 0; i < n; i++) {
        if (nf_chat__is_role(&m[i], "system")) {
            nf_chat__put(sb, m[i].content);
            nf_chat__put(sb, "\n\n");
        } else if (nf_chat__is_role(&m[i], "user")) {
            nf_chat__put(sb, "User: ");
            nf_chat__put(sb, m[i].content);
            nf_chat__put(sb, "\n\n");
        } else if (nf_chat__is_role(&m[i], "assistant")) {
            nf_chat__put(sb, "Assistant: ");
            nf_chat__put(sb, m[i].content);
            nf_chat__put(sb, DS_EOS);
        }
    }
    if (add_ass)
        nf_chat__put(sb, "Assistant:");
}

/* DeepSeek V3 and R1: <｜User｜> / <｜Assistant｜> markers; other roles are dropped. */
static void render_deepseek3(struct nf_chat__buf *sb, const struct nf_chat_msg *m, int n,
                             bool add_ass)
{
    for (int i = 0; i < n; i++) {
        if (nf_chat__is_role(&m[i], "system")) {
            nf_chat__put(sb, m[i].content);
            nf_chat__put(sb, "\n\n");
        } else if (nf_chat__is_role(&m[i], "user")) {
            nf_chat__put(sb, DS_USER);
            nf_chat__put(sb, m[i].content);
        } else if (nf_chat__is_role(&m[i], "assistant")) {
            nf_chat__put(sb, DS_ASST);
            nf_chat__put(sb, m[i].content);
            nf_chat__put(sb, DS_EOS);
        }
    }
    if (add_ass)
        nf_chat__put(sb, DS_ASST);
}

/* ChatGLM 3 and 4, GLM-Edge: <|ROLE|> then the content on the next line (ChatGLM 3 indents
 * it by a space), after a [gMASK] prefix for ChatGLM. */
static void render_glm_common(struct nf_chat__buf *sb, const struct nf_chat_msg *m, int n,
                              const char *prefix, const char *nl, const char *gen)
{
    nf_chat__put(sb, prefix);
    for (int i = 0; i < n; i++) {
        nf_chat__put(sb, "<|");
        nf_chat__put(sb, m[i].role);
        nf_chat__put(sb, "|>");
        nf_chat__put(sb, nl);
        nf_chat__put(sb, m[i].content);
    }
    nf_chat__put(sb, gen);
}

static void render_chatglm3(struct nf_chat__buf *sb, const struct nf_chat_msg *m, int n,
                            bool add_ass)
{
    render_glm_common(sb, m, n, "[gMASK]sop", "\n ", add_ass ? "<|assistant|>" : "");
}

static void render_chatglm4(struct nf_chat__buf *sb, const struct nf_chat_msg *m, int n,
                            bool add_ass)
{
    render_glm_common(sb, m, n, "[gMASK]<sop>", "\n", add_ass ? "<|assistant|>\n" : "");
}

static void render_glmedge(struct nf_chat__buf *sb, const struct nf_chat_msg *m, int n,
                           bool add_ass)
{
    render_glm_common(sb, m, n, "", "\n", add_ass ? "<|assistant|>" : "");
}

/* Monarch: ROLE\n ... </s>\n, every message but the first after <s>. */
static void render_monarch(struct nf_chat__buf *sb, const struct nf_chat_msg *m, int n,
                           bool add_ass)
{
    for (int i = 0; i < n; i++) {
        nf_chat__put(sb, i ? "<s>" : "");
        nf_chat__put(sb, m[i].role);
        nf_chat__put(sb, "\n");
        nf_chat__put(sb, m[i].content);
        nf_chat__put(sb, "</s>\n");
    }
    if (add_ass)
        nf_chat__put(sb, "<s>assistant\n");
}

/* Orion: Human: / Assistant: turns closed by </s>, system messages merged into the next user
 * turn. No generation prompt (a user turn ends with it). */
static void render_orion(struct nf_chat__buf *sb, const struct nf_chat_msg *m, int n, bool add_ass)
{
    (void)add_ass;
    struct nf_chat__buf sys = {0};
    for (int i = 0; i < n; i++) {
        if (nf_chat__is_role(&m[i], "system")) {
            nf_chat__put(&sys, m[i].content);
        } else if (nf_chat__is_role(&m[i], "user")) {
            nf_chat__put(sb, "Human: ");
            if (sys.len > 0) {
                nf_chat__putn(sb, sys.p, sys.len);
                nf_chat__put(sb, "\n\n");
                sys.len = 0;
            }
            nf_chat__put(sb, m[i].content);
            nf_chat__put(sb, "\n\nAssistant: </s>");
        } else {
            nf_chat__put(sb, m[i].content);
            nf_chat__put(sb, "</s>");
        }
    }
    if (sys.err)
        sb->err = sys.err;
    free(sys.p);
}

/* OpenChat: GPT4 Correct Role: turns; a system message is printed bare. */
static void render_openchat(struct nf_chat__buf *sb, const struct nf_chat_msg *m, int n,
                            bool add_ass)
{
    for (int i = 0; i < n; i++) {
        if (!nf_chat__is_role(&m[i], "system")) {
            char first[2] = {m[i].role[0], '\0'};
            if (first[0] >= 'a' && first[0] <= 'z')
                first[0] = (char)(first[0] - 'a' + 'A');
            nf_chat__put(sb, "GPT4 Correct ");
            nf_chat__put(sb, first);
            nf_chat__put(sb, m[i].role[0] ? m[i].role + 1 : "");
            nf_chat__put(sb, ": ");
        }
        nf_chat__put(sb, m[i].content);
        nf_chat__put(sb, "<|end_of_turn|>");
    }
    if (add_ass)
        nf_chat__put(sb, "GPT4 Correct Assistant:");
}

/* Vicuna (and the Orca variant, with a SYSTEM: prefix): USER: / ASSISTANT: lines; other roles
 * are dropped. */
static void render_vicuna_common(struct nf_chat__buf *sb, const struct nf_chat_msg *m, int n,
                                 bool add_ass, bool orca)
{
    for (int i = 0; i < n; i++) {
        if (nf_chat__is_role(&m[i], "system")) {
            nf_chat__put(sb, orca ? "SYSTEM: " : "");
            nf_chat__put(sb, m[i].content);
            nf_chat__put(sb, orca ? "\n" : "\n\n");
        } else if (nf_chat__is_role(&m[i], "user")) {
            nf_chat__put(sb, "USER: ");
            nf_chat__put(sb, m[i].content);
            nf_chat__put(sb, "\n");
        } else if (nf_chat__is_role(&m[i], "assistant")) {
            nf_chat__put(sb, "ASSISTANT: ");
            nf_chat__put(sb, m[i].content);
            nf_chat__put(sb, "</s>\n");
        }
    }
    if (add_ass)
        nf_chat__put(sb, "ASSISTANT:");
}

static void render_vicuna(struct nf_chat__buf *sb, const struct nf_chat_msg *m, int n, bool add_ass)
{
    render_vicuna_common(sb, m, n, add_ass, false);
}

static void render_vicuna_orca(struct nf_chat__buf *sb, const struct nf_chat_msg *m, int n,
                               bool add_ass)
{
    render_vicuna_common(sb, m, n, add_ass, true);
}

/* Command-R: <|START_OF_TURN_TOKEN|> turns with role tokens, contents trimmed; other roles are
 * dropped. */
static void render_command_r(struct nf_chat__buf *sb, const struct nf_chat_msg *m, int n,
                             bool add_ass)
{
    for (int i = 0; i < n; i++) {
        const char *tok = nf_chat__is_role(&m[i], "system")      ? "<|SYSTEM_TOKEN|>"
                          : nf_chat__is_role(&m[i], "user")      ? "<|USER_TOKEN|>"
                          : nf_chat__is_role(&m[i], "assistant") ? "<|CHATBOT_TOKEN|>"
                                                                 : NULL;
        if (!tok)
            continue;
        nf_chat__put(sb, "<|START_OF_TURN_TOKEN|>");
        nf_chat__put(sb, tok);
        nf_chat__put_trim(sb, m[i].content);
        nf_chat__put(sb, "<|END_OF_TURN_TOKEN|>");
    }
    if (add_ass)
        nf_chat__put(sb, "<|START_OF_TURN_TOKEN|><|CHATBOT_TOKEN|>");
}

/* MiniCPM: <用户>...<AI> around trimmed user messages, other messages trimmed and bare. No
 * generation prompt. */
static void render_minicpm(struct nf_chat__buf *sb, const struct nf_chat_msg *m, int n,
                           bool add_ass)
{
    (void)add_ass;
    for (int i = 0; i < n; i++) {
        bool user = nf_chat__is_role(&m[i], "user");
        nf_chat__put(sb, user ? "<\xe7\x94\xa8\xe6\x88\xb7>" : ""); /* <用户> */
        nf_chat__put_trim(sb, m[i].content);
        nf_chat__put(sb, user ? "<AI>" : "");
    }
}

/* EXAONE 3: [|ROLE|] turns, contents trimmed; a user turn ends with a newline only. */
static void render_exaone3(struct nf_chat__buf *sb, const struct nf_chat_msg *m, int n,
                           bool add_ass)
{
    for (int i = 0; i < n; i++) {
        const char *open = nf_chat__is_role(&m[i], "system")      ? "[|system|]"
                           : nf_chat__is_role(&m[i], "user")      ? "[|user|]"
                           : nf_chat__is_role(&m[i], "assistant") ? "[|assistant|]"
                                                                  : NULL;
        if (!open)
            continue;
        nf_chat__put(sb, open);
        nf_chat__put_trim(sb, m[i].content);
        nf_chat__put(sb, nf_chat__is_role(&m[i], "user") ? "\n" : "[|endofturn|]\n");
    }
    if (add_ass)
        nf_chat__put(sb, "[|assistant|]");
}

/* SmolVLM: <|im_start|> once, then User: / Assistant: lines closed by <end_of_utterance>. */
static void render_smolvlm(struct nf_chat__buf *sb, const struct nf_chat_msg *m, int n,
                           bool add_ass)
{
    nf_chat__put(sb, "<|im_start|>");
    for (int i = 0; i < n; i++) {
        if (nf_chat__is_role(&m[i], "system")) {
            nf_chat__put(sb, m[i].content);
            nf_chat__put(sb, "\n\n");
            continue;
        }
        nf_chat__put(sb, nf_chat__is_role(&m[i], "user") ? "User: " : "Assistant: ");
        nf_chat__put(sb, m[i].content);
        nf_chat__put(sb, "<end_of_utterance>\n");
    }
    if (add_ass)
        nf_chat__put(sb, "Assistant:");
}

/* The built-in formats, by the names llama.cpp gives them. */
const struct nf_chat__format nf_chat__formats[] = {
    /* ChatML (Qwen2, Qwen3 and many others): every turn in <|im_start|>ROLE ... <|im_end|>. */
    {.name = "chatml",
     .turns = {.open = "<|im_start|>",
               .after_role = "\n",
               .close = "<|im_end|>\n",
               .gen = "<|im_start|>assistant\n"}},
    {.name = "llama2", .render = render_llama2},
    {.name = "llama2-sys", .render = render_llama2_sys},
    {.name = "llama2-sys-bos", .render = render_llama2_sys_bos},
    {.name = "llama2-sys-strip", .render = render_llama2_sys_strip},
    {.name = "mistral-v1", .render = render_mistral_v1},
    {.name = "mistral-v3", .render = render_mistral_v3},
    {.name = "mistral-v3-tekken", .render = render_mistral_v3_tekken},
    {.name = "mistral-v7", .render = render_mistral_v7},
    {.name = "mistral-v7-tekken", .render = render_mistral_v7_tekken},
    /* Phi-3: <|ROLE|>\n ... <|end|>\n. */
    {.name = "phi3",
     .turns = {.open = "<|", .after_role = "|>\n", .close = "<|end|>\n", .gen = "<|assistant|>\n"}},
    /* Phi-4: ChatML with <|im_sep|> after the role instead of a newline. */
    {.name = "phi4",
     .turns = {.open = "<|im_start|>",
               .after_role = "<|im_sep|>",
               .close = "<|im_end|>",
               .gen = "<|im_start|>assistant<|im_sep|>"}},
    {.name = "gemma", .render = render_gemma},
    /* Llama 3: <|start_header_id|>ROLE<|end_header_id|>\n\n ... <|eot_id|>, contents trimmed; the
     * <|begin_of_text|> of the Jinja text is the tokenizer's BOS and not printed. */
    {.name = "llama3",
     .turns = {.open = "<|start_header_id|>",
               .after_role = "<|end_header_id|>\n\n",
               .close = "<|eot_id|>",
               .trim = true,
               .gen = "<|start_header_id|>assistant<|end_header_id|>\n\n"}},
    {.name = "deepseek", .render = render_deepseek},
    {.name = "deepseek2", .render = render_deepseek2},
    {.name = "deepseek3", .render = render_deepseek3},
    /* gpt-oss (OpenAI's harmony format): <|start|>ROLE<|message|> ... <|end|>, the assistant's
     * messages closed by <|return|>. */
    {.name = "gpt-oss",
     .turns = {.open = "<|start|>",
               .after_role = "<|message|>",
               .close = "<|end|>",
               .close_assistant = "<|return|>",
               .gen = "<|start|>assistant"}},
    /* Zephyr: <|ROLE|>\n ... <|endoftext|>\n. */
    {.name = "zephyr",
     .turns = {.open = "<|",
               .after_role = "|>\n",
               .close = "<|endoftext|>\n",
               .gen = "<|assistant|>\n"}},
    /* Falcon 3: <|ROLE|>\n ... \n. */
    {.name = "falcon3",
     .turns = {.open = "<|", .after_role = "|>\n", .close = "\n", .gen = "<|assistant|>\n"}},
    {.name = "chatglm3", .render = render_chatglm3},
    {.name = "chatglm4", .render = render_chatglm4},
    {.name = "glmedge", .render = render_glmedge},
    {.name = "monarch", .render = render_monarch},
    {.name = "orion", .render = render_orion},
    {.name = "openchat", .render = render_openchat},
    {.name = "vicuna", .render = render_vicuna},
    {.name = "vicuna-orca", .render = render_vicuna_orca},
    {.name = "command-r", .render = render_command_r},
    {.name = "minicpm", .render = render_minicpm},
    {.name = "exaone3", .render = render_exaone3},
    /* Megrez: <|role_start|>ROLE<|role_end|> ... <|turn_end|>. */
    {.name = "megrez",
     .turns = {.open = "<|role_start|>",
               .after_role = "<|role_end|>",
               .close = "<|turn_end|>",
               .gen = "<|role_start|>assistant<|role_end|>"}},
    /* Llama 4: <|header_start|>ROLE<|header_end|>\n\n ... <|eot|>, contents trimmed. */
    {.name = "llama4",
     .turns = {.open = "<|header_start|>",
               .after_role = "<|header_end|>\n\n",
               .close = "<|eot|>",
               .trim = true,
               .gen = "<|header_start|>assistant<|header_end|>\n\n"}},
    {.name = "smolvlm", .render = render_smolvlm},
};
const size_t nf_chat__n_formats = sizeof(nf_chat__formats) / sizeof(nf_chat__formats[0]);
