/* cmd_run.c - nanoflowctl run: generate text from a GGUF model in this process (no daemons). */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "cmds.h"
#include "gen_output.h"
#include "model.h"
#include "nf_err.h"
#include "sampler.h"
#include "tokenizer.h"
#include "nf_time.h"

static const char *const cmd = "run";

#define NF_RUN_DEFAULT_N       128
#define NF_RUN_DEFAULT_CTX_CAP 4096
#define NF_RUN_MAX_TOP_LOGITS  64

static void usage(FILE *f)
{
    fprintf(
        f,
        "usage: nanoflowctl run --model FILE [-p PROMPT | -f FILE] [options]\n\n"
        "Generates text with a llama-family GGUF model entirely in RAM, in this process. The\n"
        "generated text (not the prompt) is streamed to stdout as it is produced.\n\n"
        "  -m, --model FILE        GGUF model (required)\n"
        "  -p, --prompt TEXT       prompt text (default: empty: generation starts from BOS)\n"
        "  -f, --file FILE         read the prompt from FILE\n"
        "  -n, --n-predict N       tokens to generate, 1..1000000 (default: %d); generation\n"
        "                          also stops at an end-of-generation token or a full context\n"
        "      --temp T            temperature; 0 = greedy (default: 0.8)\n"
        "      --top-k K           keep the K most likely tokens, 0 = off (default: 40)\n"
        "      --top-p P           nucleus filter, 1 = off (default: 0.95)\n"
        "      --min-p M           drop tokens below M x the top probability, 0 = off\n"
        "                          (default: 0.05)\n"
        "      --repeat-penalty R  penalty on the last 64 tokens, 1 = off (default: 1.0)\n"
        "  -s, --seed S            sampling seed (default: taken from the clock; printed in\n"
        "                          --json output)\n"
        "  -t, --threads N         compute threads (default: 0 = all CPUs)\n"
        "      --mmap              map the GGUF read-only and let the page cache serve the\n"
        "                          weights on demand (as llama.cpp's default mmap loading)\n"
        "                          instead of reading them into RAM (default: off)\n"
        "  -c, --ctx-size N        context length in tokens (default: the model's\n"
        "                          context_length capped at %d, raised to fit prompt + -n)\n"
        "      --json              JSON Lines on stdout instead of text: one object per token\n"
        "                          {\"id\",\"piece\",\"hex\"[,\"top_logits\"]} and a final "
        "summary\n"
        "                          {\"prompt_ids\",\"gen_ids\",\"text\",\"prompt_tokens\",\n"
        "                          "
        "\"gen_tokens\",\"prompt_tok_s\",\"decode_tok_s\",\"stop\",\"seed\"}.\n"
        "                          Strings are UTF-8; bytes that do not form valid UTF-8 (a piece\n"
        "                          ending inside a character) are written as \\u00XX, and \"hex\"\n"
        "                          holds the piece's exact bytes (default: off)\n"
        "      --top-logits K      with --json, add the K highest logits of each step as\n"
        "                          [[id, logit], ...], 0..%d (default: 0)\n"
        "  -h, --help              show this help\n",
        NF_RUN_DEFAULT_N, NF_RUN_DEFAULT_CTX_CAP, NF_RUN_MAX_TOP_LOGITS);
}

struct run_opts {
    const char *model, *prompt, *prompt_file;
    long n_predict, threads, n_ctx, top_logits;
    bool json, seed_set, use_mmap;
    struct nf_sampler_params sp;
};

/* Parses argv; returns 0, 1 after --help, or 2 after a usage error (already printed). */
static int parse_args(int argc, char **argv, struct run_opts *o)
{
    nf_sampler_params_default(&o->sp);
    o->n_predict = NF_RUN_DEFAULT_N;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = NULL;
        int rc;
        if (!strcmp(a, "-h") || !strcmp(a, "--help")) {
            usage(stdout);
            return 1;
        }
        if (!strcmp(a, "--json")) {
            o->json = true;
            continue;
        }
        if (!strcmp(a, "--mmap")) {
            o->use_mmap = true;
            continue;
        }
#define VAL()                                         \
    do {                                              \
        if (!(v = nf_arg_value(cmd, argc, argv, &i))) \
            return 2;                                 \
    } while (0)
        if (nf_arg_is(a, "--model") || !strcmp(a, "-m")) {
            VAL();
            o->model = v;
        } else if (nf_arg_is(a, "--prompt") || !strcmp(a, "-p")) {
            VAL();
            o->prompt = v;
        } else if (nf_arg_is(a, "--file") || !strcmp(a, "-f")) {
            VAL();
            o->prompt_file = v;
        } else if (nf_arg_is(a, "--n-predict") || !strcmp(a, "-n")) {
            VAL();
            if (nf_arg_long(cmd, a, v, 1, 1000000, &o->n_predict))
                return 2;
        } else if (nf_arg_is(a, "--threads") || !strcmp(a, "-t")) {
            VAL();
            if (nf_arg_long(cmd, a, v, 0, 1024, &o->threads))
                return 2;
        } else if (nf_arg_is(a, "--ctx-size") || !strcmp(a, "-c")) {
            VAL();
            if (nf_arg_long(cmd, a, v, 1, 1 << 24, &o->n_ctx))
                return 2;
        } else if (nf_arg_is(a, "--top-logits")) {
            VAL();
            if (nf_arg_long(cmd, a, v, 0, NF_RUN_MAX_TOP_LOGITS, &o->top_logits))
                return 2;
        } else if ((rc = nf_sampling_flag(cmd, argc, argv, &i, &o->sp, &o->seed_set)) != 0) {
            if (rc < 0)
                return 2;
        } else {
            return nf_usage_error(cmd, "unknown flag '%s'", a);
        }
#undef VAL
    }
    if (!o->model)
        return nf_usage_error(cmd, "--model FILE is required");
    if (o->prompt && o->prompt_file)
        return nf_usage_error(cmd, "give either -p PROMPT or -f FILE, not both");
    if (o->top_logits && !o->json)
        return nf_usage_error(cmd, "--top-logits needs --json");
    if (!o->seed_set)
        o->sp.seed = (uint64_t)time(NULL) ^ ((uint64_t)clock() << 32);
    return 0;
}

/* Prints the per-token JSON object (the k highest logits of this step when k > 0). */
static void json_token(const struct nf_ctx *c, int32_t tok, const char *piece, int plen, int k,
                       int32_t *top_ids)
{
    float top_vals[NF_RUN_MAX_TOP_LOGITS];
    int nk = 0;
    if (k > 0) {
        /* The k highest logits by partial selection (k is small). */
        const int nv = c->m->hp.n_vocab;
        for (int i = 0; i < nv; i++) {
            int pos = nk < k ? nk++ : k;
            if (pos == k && !(c->logits[i] > c->logits[top_ids[k - 1]]))
                continue;
            if (pos == k)
                pos = k - 1;
            while (pos > 0 && c->logits[i] > c->logits[top_ids[pos - 1]]) {
                top_ids[pos] = top_ids[pos - 1];
                pos--;
            }
            top_ids[pos] = i;
        }
        for (int i = 0; i < nk; i++)
            top_vals[i] = c->logits[top_ids[i]];
    }
    nf_gen_token_json(stdout, tok, piece, plen, nk, top_ids, top_vals);
}

int nf_cmd_run(int argc, char **argv)
{
    struct run_opts o = {0};
    int rc = parse_args(argc, argv, &o);
    if (rc)
        return rc == 1 ? 0 : rc;
    char err[512] = "";
    struct nf_model *m = NULL;
    struct nf_vocab *v = NULL;
    struct nf_ctx *c = NULL;
    struct nf_sampler *s = NULL;
    char *prompt = NULL, *text = NULL, *piece = NULL, *out = NULL;
    int32_t *ids = NULL, top_ids[NF_RUN_MAX_TOP_LOGITS];
    int ret = 1;
    size_t plen = 0;
    if (o.prompt_file) {
        prompt = nf_read_file(o.prompt_file, &plen);
        if (!prompt) {
            fprintf(stderr, "nanoflowctl run: cannot read prompt file %s: %s\n", o.prompt_file,
                    strerror(errno));
            goto done;
        }
    } else {
        plen = o.prompt ? strlen(o.prompt) : 0;
        prompt = strdup(o.prompt ? o.prompt : "");
        if (!prompt)
            goto oom;
    }
    struct nf_model_load_opts lo = {.use_mmap = o.use_mmap};
    if ((rc = nf_model_load_ex(&m, o.model, &lo, err, sizeof(err))) < 0) {
        fprintf(stderr, "nanoflowctl run: %s\n", err);
        goto done;
    }
    if ((rc = nf_vocab_load(&v, m->gguf, err, sizeof(err))) < 0) {
        fprintf(stderr, "nanoflowctl run: %s\n", err);
        goto done;
    }
    if (nf_vocab_n_tokens(v) > m->hp.n_vocab) {
        fprintf(stderr, "nanoflowctl run: %s: vocabulary has %d tokens but token_embd.weight %d\n",
                o.model, nf_vocab_n_tokens(v), m->hp.n_vocab);
        goto done;
    }
    /* Tokenize (BOS as the vocabulary says, special tokens parsed, as llama.cpp's CLI does). */
    int n_prompt = nf_tokenize_alloc(v, prompt, plen, nf_vocab_add_bos(v), true,
                                     (size_t)o.n_predict + 1, &ids);
    if (n_prompt < 0) {
        fprintf(stderr, "nanoflowctl run: tokenizing the prompt failed: %s\n",
                nf_strerror(n_prompt));
        goto done;
    }
    if (n_prompt == 0) {
        if (nf_vocab_bos(v) < 0) {
            fprintf(stderr, "nanoflowctl run: empty prompt and the vocabulary has no BOS token\n");
            goto done;
        }
        ids[n_prompt++] = nf_vocab_bos(v);
    }
    long n_ctx = o.n_ctx;
    if (!n_ctx) {
        n_ctx =
            m->hp.n_ctx_train < NF_RUN_DEFAULT_CTX_CAP ? m->hp.n_ctx_train : NF_RUN_DEFAULT_CTX_CAP;
        if (n_ctx < n_prompt + o.n_predict)
            n_ctx = n_prompt + o.n_predict;
    }
    if (n_ctx < n_prompt + 1) {
        fprintf(stderr,
                "nanoflowctl run: the prompt has %d tokens but the context holds %ld (raise -c)\n",
                n_prompt, n_ctx);
        goto done;
    }
    if ((rc = nf_ctx_create(&c, m, (int)n_ctx, (int)o.threads)) < 0 ||
        (rc = nf_sampler_create(&s, &o.sp, m->hp.n_vocab)) < 0) {
        fprintf(stderr, "nanoflowctl run: creating a context of %ld tokens: %s\n", n_ctx,
                nf_strerror(rc));
        goto done;
    }
    int piece_cap = 256;
    piece = malloc((size_t)piece_cap);
    out = malloc((size_t)piece_cap + 8);
    size_t text_cap = 4096, text_len = 0;
    text = malloc(text_cap);
    if (!piece || !out || !text)
        goto oom;
    for (int i = 0; i < n_prompt; i++)
        nf_sampler_accept(s, ids[i]);

    double t0 = nf_now_s();
    if ((rc = nf_ctx_eval(c, ids, n_prompt)) < 0) {
        fprintf(stderr, "nanoflowctl run: evaluating the prompt: %s\n", nf_strerror(rc));
        goto done;
    }
    double t1 = nf_now_s();
    struct nf_detok dt;
    nf_detok_init(&dt);
    int n_gen = 0;
    const char *stop = "length";
    for (;;) {
        int32_t tok = nf_sampler_sample(s, c->logits);
        ids[n_prompt + n_gen++] = tok;
        nf_sampler_accept(s, tok);
        int pl = nf_token_to_piece(v, tok, piece, piece_cap);
        if (pl > piece_cap) {
            char *np = realloc(piece, (size_t)pl), *no = realloc(out, (size_t)pl + 8);
            if (np)
                piece = np;
            if (no)
                out = no;
            if (!np || !no)
                goto oom;
            piece_cap = pl;
            pl = nf_token_to_piece(v, tok, piece, piece_cap);
        }
        if (pl < 0) {
            fprintf(stderr, "nanoflowctl run: token %d has no piece: %s\n", tok, nf_strerror(pl));
            goto done;
        }
        if (text_len + (size_t)pl > text_cap) {
            char *nt = realloc(text, 2 * (text_len + (size_t)pl));
            if (!nt)
                goto oom;
            text = nt;
            text_cap = 2 * (text_len + (size_t)pl);
        }
        memcpy(text + text_len, piece, (size_t)pl);
        text_len += (size_t)pl;
        if (o.json) {
            json_token(c, tok, piece, pl, (int)o.top_logits, top_ids);
        } else {
            int ol = nf_detok_push(&dt, piece, pl, out);
            fwrite(out, 1, (size_t)ol, stdout);
        }
        fflush(stdout);
        if (nf_vocab_is_eog(v, tok)) {
            stop = "eog";
            break;
        }
        if (n_gen >= o.n_predict)
            break;
        if (c->n_past >= c->n_ctx) {
            stop = "ctx";
            break;
        }
        if ((rc = nf_ctx_eval(c, &tok, 1)) < 0) {
            fprintf(stderr, "nanoflowctl run: evaluating token %d: %s\n", tok, nf_strerror(rc));
            goto done;
        }
    }
    double t2 = nf_now_s();
    if (o.json) {
        nf_gen_summary_json(stdout, ids, n_prompt, ids + n_prompt, n_gen, text, text_len,
                            n_prompt / (t1 - t0 > 0 ? t1 - t0 : 1e-9),
                            (n_gen > 1 ? n_gen - 1 : 0) / (t2 - t1 > 0 ? t2 - t1 : 1e-9), stop,
                            o.sp.seed);
    } else {
        int ol = nf_detok_flush(&dt, out);
        fwrite(out, 1, (size_t)ol, stdout);
        putchar('\n');
    }
    fflush(stdout);
    ret = 0;
    goto done;
oom:
    fprintf(stderr, "nanoflowctl run: out of memory\n");
done:
    free(prompt);
    free(text);
    free(piece);
    free(out);
    free(ids);
    nf_sampler_free(s);
    nf_ctx_free(c);
    nf_vocab_free(v);
    nf_model_free(m);
    return ret;
}
