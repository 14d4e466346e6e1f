/* chat_tmpl.c - the chat flags and the model's chat template for gen, run and chat. */
#include "chat_tmpl.h"

#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cmds.h"
#include "nf_err.h"
#include "nf_file.h"
#include "nft.h"
#include "tokenizer.h"

int nf_chat_flag(const char *cmd, int argc, char **argv, int *i, struct nf_chat_opts *o)
{
    const char *a = argv[*i];
    if (!strcmp(a, "--chat")) {
        o->on = true;
        return 1;
    }
    bool sys = nf_arg_is(a, "--system");
    if (!sys && !nf_arg_is(a, "--chat-template"))
        return 0;
    const char *v = nf_arg_value(cmd, argc, argv, i);
    if (!v)
        return -1;
    if (sys) {
        o->system = v;
        return 1;
    }
    if (!nf_chat_detect(v)) {
        nf_usage_error(cmd, "unknown chat template '%s' for --chat-template (one of: %s)", v,
                       nf_chat_names());
        return -1;
    }
    o->tmpl = v;
    return 1;
}

const char *nf_chat_help_names(void)
{
    static char text[1024];
    if (text[0])
        return text;
    const char *names = nf_chat_names(); /* "a, b, c" */
    size_t len = 0, col = 0;
    while (*names && len + 40 < sizeof(text)) {
        size_t w = strcspn(names, " ");
        if (col == 0 || col + 1 + w > 92) {
            len += (size_t)snprintf(text + len, sizeof(text) - len, "%s%26s", col ? "\n" : "", "");
            col = 26;
        } else {
            text[len++] = ' ';
            col++;
        }
        memcpy(text + len, names, w);
        len += w;
        col += w;
        names += w;
        names += strspn(names, " ");
    }
    snprintf(text + len, sizeof(text) - len, "\n");
    return text;
}

void nf_chat_model_free(struct nf_chat_model *cm)
{
    free(cm->tmpl);
    free(cm->bos);
    free(cm->eos);
    cm->tmpl = cm->bos = cm->eos = NULL;
}

/* The text of token tok of v, or "" (owned). */
static char *token_text(const struct nf_vocab *v, int32_t tok)
{
    const char *t = v && tok >= 0 ? nf_vocab_token_text(v, tok) : NULL;
    return strdup(t ? t : "");
}

int nf_chat_model_init(const char *cmd, const struct nf_gguf *g, const char *override,
                       struct nf_chat_model *cm)
{
    memset(cm, 0, sizeof(*cm));
    const char *t = override;
    if (!t) {
        int rc = nf_gguf_get_str(g, "tokenizer.chat_template", &t);
        if (rc == NF_ENOKEY) {
            fprintf(stderr,
                    "nanoflowctl %s: note: the model has no tokenizer.chat_template: using "
                    "chatml, as llama.cpp does (--chat-template NAME to choose)\n",
                    cmd);
            t = "chatml";
        } else if (rc < 0) {
            fprintf(stderr, "nanoflowctl %s: tokenizer.chat_template: %s\n", cmd, nf_strerror(rc));
            return 1;
        }
    }
    if (!nf_chat_detect(t)) {
        /* nf_chat_render says which: an unknown text or a family not rendered. */
        char err[512];
        char *out = NULL;
        const struct nf_chat_msg m = {.role = "user", .content = ""};
        if (nf_chat_render(t, &m, 1, true, NULL, NULL, &out, err, sizeof(err)) == 0) {
            free(out); /* cannot happen: detect and render agree */
            snprintf(err, sizeof(err), "chat template not recognised");
        }
        fprintf(stderr, "nanoflowctl %s: the model's %s\n", cmd, err);
        return 1;
    }
    struct nf_vocab *v = NULL;
    char err[256];
    if (nf_vocab_load(&v, g, err, sizeof(err)) < 0)
        v = NULL; /* BOS/EOS texts are a courtesy to the template; tokenizing reports the rest */
    cm->tmpl = strdup(t);
    cm->bos = token_text(v, v ? nf_vocab_bos(v) : -1);
    cm->eos = token_text(v, v ? nf_vocab_eos(v) : -1);
    nf_vocab_free(v);
    if (!cm->tmpl || !cm->bos || !cm->eos) {
        nf_chat_model_free(cm);
        fprintf(stderr, "nanoflowctl %s: out of memory\n", cmd);
        return 1;
    }
    return 0;
}

/* The model= line of dir/stack.conf (written by `up`) into path. Returns 0 or -1. */
static int stack_model_path(const char *dir, char *path, size_t len)
{
    char conf[PATH_MAX];
    if (!nf_pathf(conf, sizeof(conf), "%s/stack.conf", dir))
        return -1;
    size_t n;
    char *text = nf_read_file(conf, &n);
    if (!text)
        return -1;
    int rc = -1;
    for (char *line = text, *next; line && *line; line = next) {
        next = strchr(line, '\n');
        if (next)
            *next++ = '\0';
        if (!strncmp(line, "model=", 6) && strlen(line + 6) < len) {
            strcpy(path, line + 6);
            rc = 0;
            break;
        }
    }
    free(text);
    return rc;
}

int nf_chat_model_init_stack(const char *cmd, const char *dir, const char *override,
                             struct nf_chat_model *cm)
{
    memset(cm, 0, sizeof(*cm));
    char path[PATH_MAX], err[512];
    if (stack_model_path(dir, path, sizeof(path)) < 0) {
        fprintf(stderr,
                "nanoflowctl %s: no model recorded in %s/stack.conf (is the stack up? see "
                "nanoflowctl status)\n",
                cmd, dir);
        return 1;
    }
    struct nf_nft *f = NULL;
    if (nf_nft_open(&f, path, false, err, sizeof(err)) < 0) {
        fprintf(stderr, "nanoflowctl %s: reading the stack's chat template: %s\n", cmd, err);
        return 1;
    }
    int rc = nf_chat_model_init(cmd, nf_nft_gguf(f), override, cm);
    nf_nft_close(f);
    return rc;
}

int nf_chat_model_render(const char *cmd, const struct nf_chat_model *cm,
                         const struct nf_chat_msg *msgs, int n, char **out)
{
    char err[512];
    if (nf_chat_render(cm->tmpl, msgs, n, true, cm->bos, cm->eos, out, err, sizeof(err)) < 0) {
        fprintf(stderr, "nanoflowctl %s: %s\n", cmd, err);
        return 1;
    }
    return 0;
}

int nf_chat_render_prompt(const char *cmd, const struct nf_chat_model *cm,
                          const struct nf_chat_opts *o, const char *text, char **out)
{
    struct nf_chat_msg m[2];
    int n = 0;
    if (o->system)
        m[n++] = (struct nf_chat_msg){.role = "system", .content = o->system};
    m[n++] = (struct nf_chat_msg){.role = "user", .content = text};
    return nf_chat_model_render(cmd, cm, m, n, out);
}
