/* cmd_gen.c - nanoflowctl gen: generate text with a running stack (talks to compute.sock). The
 * flags, defaults and output are those of `nanoflowctl run`. */
#include <errno.h>
#include <limits.h>
#include <poll.h>
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
#include "nf_time.h"
#include "sampler.h"
#include "stack_ctl.h"
#include "tokenizer.h"

static const char *const cmd = "gen";

#define NF_GEN_DEFAULT_N      128
#define NF_GEN_MAX_TOP_LOGITS 64
/* Seconds without a frame from compute before gen gives up (--timeout): the first token of a
 * cold stack may take a while, a stalled or stopped compute must not hang us. */
#define NF_GEN_DEFAULT_TIMEOUT_S 60

static void usage(FILE *f)
{
    fprintf(f,
            "usage: nanoflowctl gen [PROMPT | -p PROMPT | -f FILE] [options]\n\n"
            "Generates text with the stack started by 'nanoflowctl up'. The generated text (not\n"
            "the prompt) is streamed to stdout as tokens arrive; Ctrl-C cancels the generation.\n"
            "Output is the same as 'nanoflowctl run'.\n\n"
            "  -p, --prompt TEXT       prompt text (default: empty: generation starts from BOS)\n"
            "  -f, --file FILE         read the prompt from FILE\n"
            "  -n, --n-predict N       tokens to generate, 1..1000000 (default: %d); generation\n"
            "                          also stops at an end-of-generation token or a full context\n"
            "                          (the stack's) and at the stack's per-request token\n"
            "                          limit (both set by 'up', see its help)\n"
            "%s"
            "  -s, --seed S            sampling seed (default: taken from the clock)\n"
            "      --chat              send the prompt as a user message in the model's chat\n"
            "                          template (tokenizer.chat_template; chatml when it has\n"
            "                          none), ending where the assistant's reply begins\n"
            "                          (default: off: the prompt is sent as it is)\n"
            "      --system TEXT       a system message before the prompt; implies --chat\n"
            "                          (default: none)\n"
            "      --chat-template NAME  this built-in template instead of the model's (default:\n"
            "                          the model's); implies --chat; NAME is one of\n%s"
            "      --json              JSON Lines as with 'run --json'; the summary adds\n"
            "                          \"queue_wait_s\" and \"queued_ahead\" (the wait behind\n"
            "                          other requests) and compute's \"note\", if any (default:\n"
            "                          off)\n"
            "      --top-logits K      with --json, the K highest logits of each step, 0..%d\n"
            "                          (default: 0)\n"
            "      --lookup            speculative decoding with prompt-lookup drafts (as 'run\n"
            "                          --lookup': the same output); --json's summary adds\n"
            "                          \"drafted\", \"accepted\", \"accept_rate\"\n"
            "      --use-draft         speculative decoding with the stack's draft model (one\n"
            "                          given to 'up')\n"
            "      --no-lookup         no speculative decoding (default: what the stack was\n"
            "                          started with, see 'up --help')\n"
            "      --timeout SECONDS   give up when compute sends nothing for this long,\n"
            "                          0 = wait forever (default: %d)\n"
            "      --run-dir DIR       run directory (default: as for 'up')\n"
            "  -h, --help              show this help\n",
            NF_GEN_DEFAULT_N, NF_SAMPLING_HELP, nf_chat_help_names(), NF_GEN_MAX_TOP_LOGITS,
            NF_GEN_DEFAULT_TIMEOUT_S);
}

struct gen_opts {
    const char *prompt, *prompt_file, *run_dir;
    struct nf_gen_client_opts c;
    struct nf_chat_opts chat;
    bool seed_set;
};

static int parse_args(int argc, char **argv, struct gen_opts *o)
{
    nf_sampler_params_default(&o->c.sp);
    o->c.n_predict = NF_GEN_DEFAULT_N;
    o->c.timeout_s = NF_GEN_DEFAULT_TIMEOUT_S;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = NULL;
        int rc;
        if (!strcmp(a, "-h") || !strcmp(a, "--help")) {
            usage(stdout);
            return 1;
        }
        if (!strcmp(a, "--json")) {
            o->c.json = true;
            continue;
        }
        if (!strcmp(a, "--lookup") || !strcmp(a, "--no-lookup") || !strcmp(a, "--use-draft")) {
            o->c.speculate = a[2] == 'l' ? 1 : a[2] == 'u' ? 2 : -1;
            continue;
        }
        if ((rc = nf_chat_flag(cmd, argc, argv, &i, &o->chat)) != 0) {
            if (rc < 0)
                return 2;
            continue;
        }
        if (a[0] != '-' || !strcmp(a, "-")) {
            if (o->prompt)
                return nf_usage_error(cmd, "more than one prompt given ('%s')", a);
            o->prompt = a;
            continue;
        }
#define VAL()                                         \
    do {                                              \
        if (!(v = nf_arg_value(cmd, argc, argv, &i))) \
            return 2;                                 \
    } while (0)
        if (nf_arg_is(a, "--prompt") || !strcmp(a, "-p")) {
            VAL();
            if (o->prompt)
                return nf_usage_error(cmd, "more than one prompt given");
            o->prompt = v;
        } else if (nf_arg_is(a, "--file") || !strcmp(a, "-f")) {
            VAL();
            o->prompt_file = v;
        } else if (nf_arg_is(a, "--n-predict") || !strcmp(a, "-n")) {
            VAL();
            if (nf_arg_long(cmd, a, v, 1, 1000000, &o->c.n_predict))
                return 2;
        } else if (nf_arg_is(a, "--top-logits")) {
            VAL();
            if (nf_arg_long(cmd, a, v, 0, NF_GEN_MAX_TOP_LOGITS, &o->c.top_logits))
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
    if (o->prompt && o->prompt_file)
        return nf_usage_error(cmd, "give either a prompt or -f FILE, not both");
    if (o->c.top_logits && !o->c.json)
        return nf_usage_error(cmd, "--top-logits needs --json");
    if (o->chat.system || o->chat.tmpl) /* either says the prompt is a chat message */
        o->chat.on = true;
    if (!o->seed_set)
        o->c.sp.seed = (uint64_t)time(NULL) ^ ((uint64_t)clock() << 32);
    return 0;
}

/* How long a connection that closed under us waits for a daemon's death to show. A SIGKILLed
 * compute's socket closes while the kernel still tears it down: /proc shows it running (not yet
 * a zombie) for a moment, and a single look then missed its death (2 gens in 8 in a loop). */
#define GEN_DEATH_GRACE_MS 500

/* Prints why compute failed us: a daemon of the stack that died (named), else what. With
 * grace_ms, looks again for a death every 20 ms for that long before settling for what. */
static void gen_fail(const char *who, const char *dir, const char *what, int grace_ms)
{
    char msg[256];
    for (int waited = 0;; waited += 20) {
        if (nf_ctl_stack_dead(dir, msg, sizeof(msg), NULL)) {
            fprintf(stderr, "nanoflowctl %s: %s\n", who, msg);
            return;
        }
        if (waited >= grace_ms)
            break;
        nf_sleep_ms(20);
    }
    fprintf(stderr, "nanoflowctl %s: %s\n", who, what);
}

static volatile sig_atomic_t nf_gen_interrupted;

static void on_sigint(int sig)
{
    nf_gen_interrupted = 1;
    /* A second Ctrl-C while waiting for the cancel to land ends us at once. */
    signal(sig, SIG_DFL);
}

/* Growing byte and id buffers of the generation. */
struct gen_acc {
    char *text;
    size_t text_len, text_cap;
    int32_t *ids;
    int n_ids, ids_cap;
};

static int acc_push(struct gen_acc *a, int32_t id, const void *piece, size_t len)
{
    if (a->text_len + len + 1 > a->text_cap) {
        size_t cap = 2 * (a->text_len + len + 1);
        char *t = realloc(a->text, cap);
        if (!t)
            return -ENOMEM;
        a->text = t;
        a->text_cap = cap;
    }
    if (len > 0) /* a token may have no bytes (and no piece pointer) */
        memcpy(a->text + a->text_len, piece, len);
    a->text_len += len;
    a->text[a->text_len] = '\0'; /* callers (chat's history) read it as a string */
    if (a->n_ids == a->ids_cap) {
        int cap = a->ids_cap ? 2 * a->ids_cap : 256;
        int32_t *n = realloc(a->ids, sizeof(*n) * (size_t)cap);
        if (!n)
            return -ENOMEM;
        a->ids = n;
        a->ids_cap = cap;
    }
    a->ids[a->n_ids++] = id;
    return 0;
}

int nf_cmd_gen(int argc, char **argv)
{
    struct gen_opts o = {0};
    int rc = parse_args(argc, argv, &o);
    if (rc)
        return rc == 1 ? 0 : rc;
    char dir[PATH_MAX];
    if (nf_ctl_rundir(cmd, o.run_dir, dir, sizeof(dir)) < 0)
        return 1;
    char *prompt = NULL;
    size_t plen = 0;
    if (o.prompt_file) {
        prompt = nf_read_file(o.prompt_file, &plen);
        if (!prompt) {
            fprintf(stderr, "nanoflowctl gen: cannot read prompt file %s: %s\n", o.prompt_file,
                    strerror(errno));
            return 1;
        }
    } else {
        plen = o.prompt ? strlen(o.prompt) : 0;
        prompt = strdup(o.prompt ? o.prompt : "");
        if (!prompt)
            return 1;
    }
    if (o.chat.on) { /* the prompt becomes the user's message in the model's chat format */
        struct nf_chat_model cm;
        char *chat = NULL;
        rc = nf_chat_model_init_stack(cmd, dir, o.chat.tmpl, &cm);
        if (!rc)
            rc = nf_chat_render_prompt(cmd, &cm, &o.chat, prompt, &chat);
        nf_chat_model_free(&cm);
        free(prompt);
        if (rc)
            return 1;
        prompt = chat;
        plen = strlen(chat);
    }
    rc = nf_gen_client_run(cmd, dir, &o.c, prompt, plen, NULL);
    free(prompt);
    return rc;
}

int nf_gen_client_run(const char *who, const char *dir, const struct nf_gen_client_opts *co,
                      const char *prompt, size_t plen, struct nf_gen_reply *reply)
{
    const struct nf_gen_client_opts o = *co;
    char err[512];
    int rc;
    /* The Hello exchange counts against --timeout too (a stopped compute accepts but never
     * answers). */
    int conn_ms = o.timeout_s > 0 && o.timeout_s < 5.0f ? (int)(o.timeout_s * 1000.0f) : 5000;
    int fd = nf_ctl_connect(dir, NF_ROLE_COMPUTE, conn_ms, err, sizeof(err));
    if (fd < 0) {
        if (fd == -ETIMEDOUT)
            snprintf(err, sizeof(err),
                     "compute did not answer within %.1f s: giving up (is it stopped or stuck? "
                     "see nanoflowctl status)",
                     conn_ms / 1000.0);
        gen_fail(who, dir, err, 0);
        return 1;
    }
    nf_envelope req;
    Nanoflow__Generate g;
    Nanoflow__SamplingParams sp;
    nanoflow__envelope__init(&req);
    nanoflow__generate__init(&g);
    nanoflow__sampling_params__init(&sp);
    sp.temp = o.sp.temp;
    sp.top_k = o.sp.top_k;
    sp.top_p = o.sp.top_p;
    sp.min_p = o.sp.min_p;
    sp.repeat_penalty = o.sp.repeat_penalty;
    sp.repeat_last_n = o.sp.repeat_last_n;
    sp.seed = o.sp.seed;
    sp.presence_penalty = o.sp.presence_penalty;
    sp.frequency_penalty = o.sp.frequency_penalty;
    g.prompt.data = (uint8_t *)prompt; /* only read */
    g.prompt.len = plen;
    g.sampling = &sp;
    g.n_predict = (int32_t)o.n_predict;
    g.top_logits = (uint32_t)o.top_logits;
    g.add_bos = true; /* as the model's vocabulary says, like `run` */
    g.speculate = o.speculate;
    req.msg_case = NANOFLOW__ENVELOPE__MSG_GENERATE;
    req.generate = &g;
    uint64_t id = nf_ctl_next_id();
    rc = nf_client_send(fd, id, &req);
    if (rc < 0) {
        snprintf(err, sizeof(err), "sending the request to compute: %s", nf_strerror(rc));
        gen_fail(who, dir, err, GEN_DEATH_GRACE_MS);
        close(fd);
        return 1;
    }
    nf_gen_interrupted = 0;
    /* Ctrl-C cancels the request while it runs; the caller's handler comes back after it (chat
     * keeps its own: a Ctrl-C just after a reply ends must not kill the session). */
    struct sigaction sa = {0}, caller;
    sa.sa_handler = on_sigint;
    sigaction(SIGINT, &sa, &caller);

    struct gen_acc acc = {0};
    struct nf_detok dt;
    nf_detok_init(&dt);
    char *out = NULL;
    size_t out_cap = 0;
    bool cancel_sent = false;
    int ret = 1;
    double last = nf_now_s(); /* when compute last sent a frame (or we sent the request) */
    const bool progress_tty = !o.json && isatty(STDERR_FILENO);
    bool progress_shown = false;
    for (;;) {
        if (nf_gen_interrupted && !cancel_sent) {
            nf_envelope c;
            Nanoflow__Cancel cn;
            nanoflow__envelope__init(&c);
            nanoflow__cancel__init(&cn);
            cn.target_id = id;
            c.msg_case = NANOFLOW__ENVELOPE__MSG_CANCEL;
            c.cancel = &cn;
            nf_client_send(fd, nf_ctl_next_id(), &c);
            cancel_sent = true;
        }
        /* Wait for a whole message while watching for Ctrl-C between messages. */
        struct pollfd p = {.fd = fd, .events = POLLIN};
        int pn = poll(&p, 1, 200);
        double idle = nf_now_s() - last;
        if (o.timeout_s > 0 && idle >= o.timeout_s) {
            if (!o.json && acc.n_ids)
                putchar('\n');
            fflush(stdout);
            snprintf(err, sizeof(err),
                     "compute sent nothing for %.1f s (--timeout %g): giving up (is it stopped "
                     "or stuck? see nanoflowctl status)",
                     idle, (double)o.timeout_s);
            gen_fail(who, dir, err, 0);
            break;
        }
        if (pn == 0 || (pn < 0 && errno == EINTR))
            continue;
        nf_envelope *r = NULL;
        /* The rest of the frame is on its way: wait for it as long as the timeout is left. */
        int left_ms = o.timeout_s > 0 ? (int)((o.timeout_s - idle) * 1000.0) + 1 : -1;
        rc = nf_client_recv(fd, &r, left_ms);
        if (rc <= 0) {
            gen_fail(who, dir,
                     rc == 0 ? "compute closed the connection before the generation ended"
                             : nf_strerror(rc),
                     GEN_DEATH_GRACE_MS);
            break;
        }
        last = nf_now_s();
        if (r->request_id != id && r->request_id != 0) {
            nf_envelope_free(r);
            continue;
        }
        if (r->msg_case == NANOFLOW__ENVELOPE__MSG_PROMPT_PROGRESS) {
            /* A long prompt is being evaluated: the frame itself kept --timeout from firing;
             * on a terminal, show how far it is (erased before the first token). */
            if (progress_tty) {
                fprintf(stderr, "\rprompt: %d/%d tokens", r->prompt_progress->done,
                        r->prompt_progress->total);
                progress_shown = true;
            }
            nf_envelope_free(r);
            continue;
        }
        if (progress_shown) {
            fputs("\r\033[K", stderr);
            progress_shown = false;
        }
        if (r->msg_case == NANOFLOW__ENVELOPE__MSG_TOKEN) {
            const Nanoflow__TokenEvent *t = r->token;
            if (acc_push(&acc, t->id, t->piece.data, t->piece.len) < 0) {
                fprintf(stderr, "nanoflowctl %s: out of memory\n", who);
                nf_envelope_free(r);
                break;
            }
            if (o.json) {
                int32_t top_ids[NF_GEN_MAX_TOP_LOGITS];
                float top_vals[NF_GEN_MAX_TOP_LOGITS];
                int k = 0;
                for (size_t i = 0; i < t->n_top_logits && k < NF_GEN_MAX_TOP_LOGITS; i++, k++) {
                    top_ids[k] = t->top_logits[i]->id;
                    top_vals[k] = t->top_logits[i]->logit;
                }
                nf_gen_token_json(stdout, t->id, (const char *)t->piece.data, (int)t->piece.len, k,
                                  top_ids, top_vals);
            } else {
                if (t->piece.len + 8 > out_cap) {
                    char *no = realloc(out, t->piece.len + 8);
                    if (!no) {
                        nf_envelope_free(r);
                        break;
                    }
                    out = no;
                    out_cap = t->piece.len + 8;
                }
                int ol = nf_detok_push(&dt, (const char *)t->piece.data, (int)t->piece.len, out);
                fwrite(out, 1, (size_t)ol, stdout);
            }
            fflush(stdout);
            nf_envelope_free(r);
            continue;
        }
        if (r->msg_case == NANOFLOW__ENVELOPE__MSG_GENERATE_DONE) {
            const Nanoflow__GenerateDone *d = r->generate_done;
            /* `run` calls a generation that used up -n "length". */
            const char *stop = d->stop && strcmp(d->stop, "n_predict") ? d->stop : "length";
            if (o.json) {
                const int32_t *gen = d->n_gen_ids ? d->gen_ids : acc.ids;
                int n_gen = d->n_gen_ids ? (int)d->n_gen_ids : acc.n_ids;
                double pts = d->timings ? d->timings->prompt_tok_s : 0,
                       dts = d->timings ? d->timings->decode_tok_s : 0;
                const struct nf_gen_summary_extra x = {.n_ctx = (int)d->n_ctx,
                                                       .queued = true,
                                                       .queue_wait_s = d->queue_wait_s,
                                                       .queued_ahead = d->queued_ahead,
                                                       .note = d->note,
                                                       .spec = o.speculate > 0 || d->drafted,
                                                       .drafted = d->drafted,
                                                       .accepted = d->accepted};
                nf_gen_summary_json(stdout, d->prompt_ids, (int)d->n_prompt_ids, gen, n_gen,
                                    acc.text ? acc.text : "", acc.text_len, pts, dts, stop,
                                    d->seed ? d->seed : o.sp.seed, &x);
            } else {
                char tail[16];
                int ol = nf_detok_flush(&dt, tail);
                fwrite(tail, 1, (size_t)ol, stdout);
                putchar('\n');
            }
            fflush(stdout);
            if (d->note && d->note[0])
                fprintf(stderr, "nanoflowctl %s: note: %s\n", who, d->note);
            if (!strcmp(stop, "ctx"))
                nf_gen_ctx_full_note(who, (int)d->n_gen_ids, (int)d->n_ctx, (int)d->n_ctx_train,
                                     "'nanoflowctl up -c'");
            ret = !strcmp(stop, "cancel") ? 130 : 0;
            nf_envelope_free(r);
            break;
        }
        if (r->msg_case == NANOFLOW__ENVELOPE__MSG_ERROR) {
            if (!o.json && acc.n_ids)
                putchar('\n');
            fflush(stdout);
            fprintf(stderr, "nanoflowctl %s: compute: %s\n", who,
                    r->error->message ? r->error->message : nf_strerror(r->error->code));
            nf_envelope_free(r);
            break;
        }
        nf_envelope_free(r);
    }
    sigaction(SIGINT, &caller, NULL);
    if (reply) { /* takes the generated bytes */
        reply->text = acc.text;
        reply->len = acc.text_len;
        acc.text = NULL;
    }
    free(acc.text);
    free(acc.ids);
    free(out);
    close(fd);
    return ret;
}
