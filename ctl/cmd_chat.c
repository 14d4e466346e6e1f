/* cmd_chat.c - nanoflowctl chat: a terminal chat with the running stack. Each line read is a user
 * message; the whole conversation is rendered with the model's chat template and sent as one
 * generation (nf_gen_client_run, as `gen` sends it), whose reply joins the conversation. */
#include <errno.h>
#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "chat_tmpl.h"
#include "cmds.h"
#include "gen_client.h"
#include "gen_output.h"
#include "nf_err.h"
#include "sampler.h"
#include "stack_ctl.h"

static const char *const cmd = "chat";

#define NF_CHAT_DEFAULT_N         256
#define NF_CHAT_DEFAULT_TIMEOUT_S 60

static void usage(FILE *f)
{
    fprintf(
        f,
        "usage: nanoflowctl chat [options]\n\n"
        "Chats with the stack started by 'nanoflowctl up'. Each line read from stdin is a\n"
        "user message; the whole conversation so far is rendered with the model's chat\n"
        "template (tokenizer.chat_template; chatml when it has none) and the reply is\n"
        "streamed to stdout, then kept in the conversation. On a terminal a '> ' prompt is\n"
        "shown; from a pipe only the replies are printed, one per line, until end of input.\n"
        "Ctrl-C stops the current reply (the part shown is kept), not the session.\n\n"
        "Lines that are commands:\n"
        "  /reset                  forget the conversation (the --system message stays)\n"
        "  /exit                   end the session (as end of input does)\n\n"
        "  -n, --n-predict N       tokens per reply at most, 1..1000000 (default: %d); a reply\n"
        "                          also ends at an end-of-generation token or a full context\n"
        "      --system TEXT       a system message at the start of the conversation\n"
        "                          (default: none)\n"
        "      --chat-template NAME  this built-in template instead of the model's\n"
        "                          (default: the model's); NAME is one of\n%s"
        "%s"
        "  -s, --seed S            sampling seed of every reply (default: from the clock)\n"
        "      --timeout SECONDS   give up when compute sends nothing for this long,\n"
        "                          0 = wait forever (default: %d)\n"
        "      --run-dir DIR       run directory (default: as for 'up')\n"
        "  -h, --help              show this help\n",
        NF_CHAT_DEFAULT_N, nf_chat_help_names(), NF_SAMPLING_HELP, NF_CHAT_DEFAULT_TIMEOUT_S);
}

struct chat_opts {
    const char *run_dir;
    struct nf_gen_client_opts c;
    struct nf_chat_opts chat;
    bool seed_set;
};

/* Parses argv; returns 0, 1 after --help, or 2 after a usage error (already printed). */
static int parse_args(int argc, char **argv, struct chat_opts *o)
{
    nf_sampler_params_default(&o->c.sp);
    o->c.n_predict = NF_CHAT_DEFAULT_N;
    o->c.timeout_s = NF_CHAT_DEFAULT_TIMEOUT_S;
    o->chat.on = true;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = NULL;
        int rc;
        if (!strcmp(a, "-h") || !strcmp(a, "--help")) {
            usage(stdout);
            return 1;
        }
        if (!strcmp(a, "--chat"))
            return nf_usage_error(cmd, "unknown flag '%s' (chat is always in chat mode)", a);
        if ((rc = nf_chat_flag(cmd, argc, argv, &i, &o->chat)) != 0) {
            if (rc < 0)
                return 2;
            continue;
        }
        if (a[0] != '-')
            return nf_usage_error(cmd, "unexpected argument '%s' (messages are read from stdin)",
                                  a);
#define VAL()                                         \
    do {                                              \
        if (!(v = nf_arg_value(cmd, argc, argv, &i))) \
            return 2;                                 \
    } while (0)
        if (nf_arg_is(a, "--n-predict") || !strcmp(a, "-n")) {
            VAL();
            if (nf_arg_long(cmd, a, v, 1, 1000000, &o->c.n_predict))
                return 2;
        } else if ((rc = nf_sampling_flag(cmd, argc, argv, &i, &o->c.sp, &o->seed_set)) != 0) {
            if (rc < 0)
                return 2;
        } else if (nf_arg_is(a, "--timeout")) {
            VAL();
            if (nf_arg_float(cmd, a, v, 0.0f, 86400.0f, &o->c.timeout_s))
                return 2;
        } else if (nf_arg_is(a, "--run-dir")) {
            VAL();
            o->run_dir = v;
        } else {
            return nf_usage_error(cmd, "unknown flag '%s'", a);
        }
#undef VAL
    }
    if (!o->seed_set)
        o->c.sp.seed = (uint64_t)time(NULL) ^ ((uint64_t)clock() << 32);
    return 0;
}

/* The conversation: messages whose contents it owns (roles are static strings). */
struct history {
    struct nf_chat_msg *m;
    int n, cap;
};

/* Appends a message; takes ownership of content. Returns 0 or -ENOMEM (content freed). */
static int history_push(struct history *h, const char *role, char *content)
{
    if (h->n == h->cap) {
        int cap = h->cap ? 2 * h->cap : 16;
        struct nf_chat_msg *m = realloc(h->m, sizeof(*m) * (size_t)cap);
        if (!m) {
            free(content);
            return -ENOMEM;
        }
        h->m = m;
        h->cap = cap;
    }
    h->m[h->n++] = (struct nf_chat_msg){.role = role, .content = content};
    return 0;
}

/* Drops the messages from index keep on (the --system message is message 0 when given). */
static void history_cut(struct history *h, int keep)
{
    while (h->n > keep)
        free((char *)h->m[--h->n].content);
}

static volatile sig_atomic_t chat_sigint;

static void on_sigint(int sig)
{
    (void)sig;
    chat_sigint = 1;
}

/* While a line is being read, Ctrl-C interrupts the read (no SA_RESTART) and the session goes
 * on; during a reply nf_gen_client_run has its own handler (Ctrl-C sends Cancel). */
static void catch_sigint(void)
{
    struct sigaction sa = {0};
    sa.sa_handler = on_sigint;
    sigaction(SIGINT, &sa, NULL);
}

/* Sends the conversation and adds the reply to it. Returns 0 (also when the reply was
 * cancelled) or 1 after printing why. */
static int chat_turn(const char *dir, const struct chat_opts *o, const struct nf_chat_model *cm,
                     struct history *h)
{
    char *prompt = NULL;
    if (nf_chat_model_render(cmd, cm, h->m, h->n, &prompt))
        return 1;
    struct nf_gen_reply reply = {0};
    int rc = nf_gen_client_run(cmd, dir, &o->c, prompt, strlen(prompt), &reply);
    free(prompt);
    if (rc == 1) {
        free(reply.text);
        return 1;
    }
    /* The reply as generated (a cancelled one as far as it got), as llama.cpp's chat keeps it. */
    if (history_push(h, "assistant", reply.text ? reply.text : strdup("")) < 0 ||
        !h->m[h->n - 1].content) {
        fprintf(stderr, "nanoflowctl chat: out of memory\n");
        return 1;
    }
    return 0;
}

int nf_cmd_chat(int argc, char **argv)
{
    struct chat_opts o = {0};
    int rc = parse_args(argc, argv, &o);
    if (rc)
        return rc == 1 ? 0 : rc;
    char dir[PATH_MAX];
    if (nf_ctl_rundir(cmd, o.run_dir, dir, sizeof(dir)) < 0)
        return 1;
    struct nf_chat_model cm;
    if (nf_chat_model_init_stack(cmd, dir, o.chat.tmpl, &cm))
        return 1;
    const bool tty = isatty(STDIN_FILENO);
    struct history h = {0};
    int keep = 0, ret = 0;
    if (o.chat.system) {
        char *s = strdup(o.chat.system);
        if (!s || history_push(&h, "system", s) < 0) {
            fprintf(stderr, "nanoflowctl chat: out of memory\n");
            nf_chat_model_free(&cm);
            return 1;
        }
        keep = 1;
    }
    if (tty)
        fprintf(stderr, "chat with the stack in %s: /reset forgets, /exit or Ctrl-D ends\n", dir);
    char *line = NULL;
    size_t cap = 0;
    for (;;) {
        catch_sigint();
        chat_sigint = 0;
        if (tty) {
            fputs("> ", stdout);
            fflush(stdout);
        }
        errno = 0;
        ssize_t n = getline(&line, &cap, stdin);
        if (n < 0) {
            if (errno == EINTR && chat_sigint) { /* Ctrl-C at the prompt: a fresh line */
                clearerr(stdin);
                putchar('\n');
                continue;
            }
            if (tty)
                putchar('\n');
            break; /* end of input */
        }
        while (n > 0 && (line[n - 1] == '\n' || line[n - 1] == '\r'))
            line[--n] = '\0';
        if (n == 0)
            continue;
        if (!strcmp(line, "/exit"))
            break;
        if (!strcmp(line, "/reset")) {
            history_cut(&h, keep);
            if (tty)
                fprintf(stderr, "(conversation forgotten)\n");
            continue;
        }
        char *msg = strdup(line);
        if (!msg || history_push(&h, "user", msg) < 0) {
            fprintf(stderr, "nanoflowctl chat: out of memory\n");
            ret = 1;
            break;
        }
        if (chat_turn(dir, &o, &cm, &h)) {
            ret = 1;
            break;
        }
    }
    signal(SIGINT, SIG_DFL);
    free(line);
    history_cut(&h, 0);
    free(h.m);
    nf_chat_model_free(&cm);
    return ret;
}
