/* cmd_run.c - nanoflowctl run: generate text from a GGUF model in this process (no daemons). */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "chat_tmpl.h"
#include "cmds.h"
#include "gen_output.h"
#include "generate.h"
#include "model.h"
#include "nf_err.h"
#include "sampler.h"
#include "tokenizer.h"

static const char *const cmd = "run";

#define NF_RUN_DEFAULT_N       128
#define NF_RUN_DEFAULT_CTX_CAP 4096
/* Prompt tokens per forward chunk (see docs/measurements.md, "Prompt ubatch"). */
#define NF_RUN_DEFAULT_UBATCH 512

static void usage(FILE *f)
{
    fprintf(
        f,
        "usage: nanoflowctl run --model FILE [PROMPT | -p PROMPT | -f FILE] [options]\n\n"
        "Generates text with a llama-family GGUF model entirely in RAM, in this process. The\n"
        "generated text (not the prompt) is streamed to stdout as it is produced.\n"
        "Architectures (general.architecture): llama, qwen2, qwen3, qwen3moe, gemma3, qwen2moe,\n"
        "olmoe, phi3 (Phi-3/3.5, Phi-4-mini), glm4moe (GLM-4.5/4.6/Air), deepseek2\n"
        "(DeepSeek-V2/V3/R1, Kimi-K2: latent attention with a compressed KV cache), gpt-oss\n"
        "(gpt-oss-20b/120b).\n\n"
        "  -m, --model FILE        GGUF model (required)\n"
        "  -p, --prompt TEXT       prompt text (default: empty: generation starts from BOS)\n"
        "  -f, --file FILE         read the prompt from FILE\n"
        "  -n, --n-predict N       tokens to generate, 1..1000000 (default: %d); generation\n"
        "                          also stops at an end-of-generation token or a full context\n"
        "%s"
        "  -s, --seed S            sampling seed (default: taken from the clock; printed in\n"
        "                          --json output)\n"
        "  -t, --threads N         compute threads (default: 0 = all CPUs)\n"
        "  -ub, --ubatch-size N    prompt tokens evaluated together, 1..%d: each weight\n"
        "                          matrix is read once per N tokens, and N tokens of\n"
        "                          activations are kept (default: %d)\n"
        "      --mmap              map the GGUF read-only and let the page cache serve the\n"
        "                          weights on demand (as llama.cpp's default mmap loading)\n"
        "                          instead of reading them into RAM (default: off)\n"
        "      --no-repack         keep q4_0 weights in the GGUF's layout; by default, read\n"
        "                          into RAM on an AVX-512 CPU without --lookup or --draft,\n"
        "                          their rows are interleaved by eight for decoding (the\n"
        "                          same results)\n"
        "  -c, --ctx-size N        context length in tokens, at most the model's trained\n"
        "                          context_length (default: context_length capped at %d, as\n"
        "                          for 'up'); a prompt longer than the context is refused and\n"
        "                          generation stops, saying so, when the context is full\n"
        "  -ctk, --cache-type-k T  KV cache type of K: f16, q8_0 or q4_0 (default: f16);\n"
        "                          q8_0 takes about half the bytes, q4_0 a quarter, in\n"
        "                          blocks of 32 per head (the head size must be a multiple\n"
        "                          of 32); MLA models (deepseek2) keep their f16 latent and\n"
        "                          refuse a quantized type\n"
        "  -ctv, --cache-type-v T  KV cache type of V, likewise (default: f16); a quantized\n"
        "                          V is dequantized row by row in the attention (llama.cpp\n"
        "                          needs flash attention for it, NanoFlow does not)\n"
        "      --chat              use the prompt as a user message in the model's chat\n"
        "                          template (tokenizer.chat_template; chatml when it has\n"
        "                          none), ending where the assistant's reply begins\n"
        "                          (default: off: the prompt is used as it is)\n"
        "      --system TEXT       a system message before the prompt; implies --chat\n"
        "                          (default: none)\n"
        "      --chat-template NAME  this built-in template instead of the model's (default:\n"
        "                          the model's); implies --chat; NAME is one of\n%s"
        "      --json              JSON Lines on stdout instead of text: one object per token\n"
        "                          {\"id\",\"piece\",\"hex\"[,\"top_logits\"]} and a final "
        "summary\n"
        "                          {\"prompt_ids\",\"gen_ids\",\"text\",\"prompt_tokens\",\n"
        "                          "
        "\"gen_tokens\",\"prompt_tok_s\",\"decode_tok_s\",\"stop\",\"seed\",\"n_ctx\"};\n"
        "                          stop is eog, length or ctx (the context is full).\n"
        "                          Strings are UTF-8; bytes that do not form valid UTF-8 (a piece\n"
        "                          ending inside a character) are written as \\u00XX, and \"hex\"\n"
        "                          holds the piece's exact bytes (default: off)\n"
        "      --top-logits K      with --json, add the K highest logits of each step as\n"
        "                          [[id, logit], ...], 0..%d (default: 0)\n"
        "      --lookup            speculative decoding with prompt lookup drafts: the tokens\n"
        "                          that followed the latest earlier occurrence of the last\n"
        "                          3..1 tokens are verified in one pass; the output is the\n"
        "                          same token for token (greedy or seeded); --json's summary\n"
        "                          adds \"drafted\", \"accepted\", \"accept_rate\" (default: off)\n"
        "      --draft FILE        speculative decoding with a small draft model (a GGUF with\n"
        "                          the same vocabulary, in RAM beside the model) decoding\n"
        "                          greedily ahead; the output is the same (default: none)\n"
        "      --draft-max K       with --lookup or --draft, the most drafts verified per\n"
        "                          pass, 1..%d; fewer when drafts are rejected (default: %d)\n"
        "  -h, --help              show this help\n",
        NF_RUN_DEFAULT_N, NF_SAMPLING_HELP, NF_MAX_UBATCH, NF_RUN_DEFAULT_UBATCH,
        NF_RUN_DEFAULT_CTX_CAP, nf_chat_help_names(), NF_GEN_TOP_LOGITS_MAX, NF_GEN_SPEC_MAX,
        NF_GEN_SPEC_MAX);
}

struct run_opts {
    const char *model, *prompt, *prompt_file, *draft;
    long n_predict, threads, n_ctx, top_logits, n_ubatch, draft_max;
    int type_k, type_v; /* KV cache element types (enum nf_type) */
    bool json, seed_set, use_mmap, lookup, no_repack;
    struct nf_sampler_params sp;
    struct nf_chat_opts chat;
};

/* Parses argv; returns 0, 1 after --help, or 2 after a usage error (already printed). */
static int parse_args(int argc, char **argv, struct run_opts *o)
{
    nf_sampler_params_default(&o->sp);
    o->n_predict = NF_RUN_DEFAULT_N;
    o->n_ubatch = NF_RUN_DEFAULT_UBATCH;
    o->type_k = o->type_v = NF_TYPE_F16;
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
        if (!strcmp(a, "--no-repack")) {
            o->no_repack = true;
            continue;
        }
        if (!strcmp(a, "--lookup")) {
            o->lookup = true;
            continue;
        }
        if ((rc = nf_chat_flag(cmd, argc, argv, &i, &o->chat)) != 0) {
            if (rc < 0)
                return 2;
            continue;
        }
        if (a[0] != '-' || !strcmp(a, "-")) { /* a positional prompt, as `gen` takes it */
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
        if (nf_arg_is(a, "--model") || !strcmp(a, "-m")) {
            VAL();
            o->model = v;
        } else if (nf_arg_is(a, "--prompt") || !strcmp(a, "-p")) {
            VAL();
            if (o->prompt)
                return nf_usage_error(cmd, "more than one prompt given");
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
        } else if (nf_arg_is(a, "--ubatch-size") || !strcmp(a, "-ub")) {
            VAL();
            if (nf_arg_long(cmd, a, v, 1, NF_MAX_UBATCH, &o->n_ubatch))
                return 2;
        } else if (nf_arg_is(a, "--cache-type-k") || !strcmp(a, "-ctk")) {
            VAL();
            if (nf_arg_kv_type(cmd, a, v, &o->type_k))
                return 2;
        } else if (nf_arg_is(a, "--cache-type-v") || !strcmp(a, "-ctv")) {
            VAL();
            if (nf_arg_kv_type(cmd, a, v, &o->type_v))
                return 2;
        } else if (nf_arg_is(a, "--draft")) {
            VAL();
            o->draft = v;
        } else if (nf_arg_is(a, "--draft-max")) {
            VAL();
            if (nf_arg_long(cmd, a, v, 1, NF_GEN_SPEC_MAX, &o->draft_max))
                return 2;
        } else if (nf_arg_is(a, "--top-logits")) {
            VAL();
            if (nf_arg_long(cmd, a, v, 0, NF_GEN_TOP_LOGITS_MAX, &o->top_logits))
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
        return nf_usage_error(cmd, "give either a prompt or -f FILE, not both");
    if (o->top_logits && !o->json)
        return nf_usage_error(cmd, "--top-logits needs --json");
    if (o->lookup && o->draft)
        return nf_usage_error(cmd, "give either --lookup or --draft FILE, not both");
    if (o->chat.system || o->chat.tmpl) /* either says the prompt is a chat message */
        o->chat.on = true;
    if (!o->seed_set)
        o->sp.seed = (uint64_t)time(NULL) ^ ((uint64_t)clock() << 32);
    return 0;
}

/* What the per-token callback writes to and accumulates. */
struct run_out {
    bool json;
    char *text; /* (text_cap) the generated bytes so far */
    size_t text_len, text_cap;
    char *out; /* (out_cap) detokenizer output */
    size_t out_cap;
    struct nf_detok dt;
};

/* Streams one token: its JSON object, or the text that completes UTF-8 characters. Returns
 * -ENOMEM (stopping the generation) when a buffer cannot grow. */
static int on_token(void *ud, const struct nf_gen_token *t)
{
    struct run_out *o = ud;
    const size_t pl = (size_t)t->piece_len;
    if (o->text_len + pl > o->text_cap) {
        char *nt = realloc(o->text, 2 * (o->text_len + pl));
        if (!nt)
            return -ENOMEM;
        o->text = nt;
        o->text_cap = 2 * (o->text_len + pl);
    }
    memcpy(o->text + o->text_len, t->piece, pl);
    o->text_len += pl;
    if (o->json) {
        nf_gen_token_json(stdout, t->id, t->piece, t->piece_len, t->n_top, t->top_ids, t->top_vals);
    } else {
        if (pl + 8 > o->out_cap) {
            char *no = realloc(o->out, pl + 8);
            if (!no)
                return -ENOMEM;
            o->out = no;
            o->out_cap = pl + 8;
        }
        int ol = nf_detok_push(&o->dt, t->piece, t->piece_len, o->out);
        fwrite(o->out, 1, (size_t)ol, stdout);
    }
    fflush(stdout);
    return 0;
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
    struct nf_model *dmod = NULL; /* --draft */
    struct nf_vocab *dvoc = NULL;
    struct nf_ctx *dctx = NULL;
    struct nf_gen_draft_model dm = {0};
    struct nf_gen_seq q = {0};
    struct run_out ro = {.json = o.json, .out_cap = 256 + 8, .text_cap = 4096};
    char *prompt = NULL;
    int32_t *ids = NULL;
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
    /* Speculative steps verify several tokens per product, which unpack interleaved rows. */
    struct nf_model_load_opts lo = {.use_mmap = o.use_mmap,
                                    .repack = !o.no_repack && !o.lookup && !o.draft};
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
    if (o.chat.on) { /* the prompt becomes the user's message in the model's chat format */
        struct nf_chat_model cm;
        char *chat = NULL;
        rc = nf_chat_model_init(cmd, m->gguf, o.chat.tmpl, &cm);
        if (!rc)
            rc = nf_chat_render_prompt(cmd, &cm, &o.chat, prompt, &chat);
        nf_chat_model_free(&cm);
        if (rc)
            goto done;
        free(prompt);
        prompt = chat;
        plen = strlen(chat);
    }
    /* Tokenize (BOS as the vocabulary says, special tokens parsed, as llama.cpp's CLI does). */
    int n_prompt = nf_gen_tokenize(v, prompt, plen, true, &ids, err, sizeof(err));
    if (n_prompt < 0) {
        fprintf(stderr, "nanoflowctl run: %s\n", err);
        goto done;
    }
    /* The context rule of `up` (nf_gen_ctx_check): never past the trained length, by default
     * that length capped at NF_RUN_DEFAULT_CTX_CAP, so `run` and `gen` stop at the same place. */
    const int n_train = m->hp.n_ctx_train;
    long n_ctx = o.n_ctx;
    if (!n_ctx)
        n_ctx = n_train < NF_RUN_DEFAULT_CTX_CAP ? n_train : NF_RUN_DEFAULT_CTX_CAP;
    if (nf_gen_ctx_check(n_ctx, n_train, err, sizeof(err)) < 0) {
        fprintf(stderr, "nanoflowctl run: %s: %s\n", o.model, err);
        goto done;
    }
    if ((rc = nf_ctx_create_ub(&c, m, (int)n_ctx, (int)o.threads, (int)o.n_ubatch)) < 0) {
        fprintf(stderr, "nanoflowctl run: creating a context of %ld tokens: %s\n", n_ctx,
                nf_strerror(rc));
        goto done;
    }
    if ((rc = nf_ctx_set_kv_types(c, (enum nf_type)o.type_k, (enum nf_type)o.type_v, err,
                                  sizeof(err))) < 0) {
        fprintf(stderr, "nanoflowctl run: %s: %s\n", o.model, err);
        goto done;
    }
    struct nf_gen_engine eng;
    nf_gen_engine_ctx(&eng, c);
    struct nf_gen_lookup lk = {.ngram_min = 1, .ngram_max = 3};
    struct nf_gen_draft draft;
    nf_gen_draft_lookup(&draft, &lk);
    if (o.draft) { /* the draft model: same vocabulary, same context, in RAM */
        if ((rc = nf_model_load(&dmod, o.draft, err, sizeof(err))) < 0 ||
            (rc = nf_vocab_load(&dvoc, dmod->gguf, err, sizeof(err))) < 0 ||
            (rc = nf_gen_vocab_check(v, dvoc, err, sizeof(err))) < 0) {
            fprintf(stderr, "nanoflowctl run: --draft %s: %s\n", o.draft, err);
            goto done;
        }
        if ((rc = nf_ctx_create_ub(&dctx, dmod, (int)n_ctx, (int)o.threads, (int)o.n_ubatch)) < 0 ||
            (rc = nf_gen_draft_model_init(&draft, &dm, dctx, dvoc)) < 0) {
            fprintf(stderr, "nanoflowctl run: --draft %s: creating its context: %s\n", o.draft,
                    nf_strerror(rc));
            goto done;
        }
    }
    const struct nf_gen_params gp = {.max_tokens = (int)o.n_predict,
                                     .top_logits = (int)o.top_logits,
                                     .sp = o.sp,
                                     .on_token = on_token,
                                     .ud = &ro,
                                     .draft = o.lookup || o.draft ? &draft : NULL,
                                     .spec_max = (int)o.draft_max};
    if ((rc = nf_gen_seq_init(&q, &eng, v, ids, n_prompt, &gp, err, sizeof(err))) < 0) {
        if (rc != NF_ECTXFULL)
            fprintf(stderr, "nanoflowctl run: %s\n", err);
        else if (n_prompt < n_train) /* the prompt and a generated token fit the model */
            fprintf(stderr, "nanoflowctl run: %s (the model was trained for %d: raise -c)\n", err,
                    n_train);
        else
            fprintf(stderr, "nanoflowctl run: %s (the model was trained for %d: shorten it)\n", err,
                    n_train);
        goto done;
    }
    ro.out = malloc(ro.out_cap);
    ro.text = malloc(ro.text_cap);
    if (!ro.out || !ro.text)
        goto oom;
    nf_detok_init(&ro.dt);
    nf_gen_seq_run(&q);
    if (q.stop == NF_GEN_STOP_ERROR) {
        fprintf(stderr, "nanoflowctl run: %s\n", q.err);
        goto done;
    }
    if (q.stop == NF_GEN_STOP_CANCEL) /* only on_token stops it so: a buffer could not grow */
        goto oom;
    const double prompt_s = (double)(q.t_prompt_ns - q.t_start_ns) * 1e-9,
                 decode_s = (double)(q.t_end_ns - q.t_prompt_ns) * 1e-9;
    if (o.json) {
        nf_gen_summary_json(stdout, q.ids, q.n_prompt, q.ids + q.n_prompt, q.n_gen, ro.text,
                            ro.text_len, q.n_prompt / (prompt_s > 0 ? prompt_s : 1e-9),
                            (q.n_gen > 1 ? q.n_gen - 1 : 0) / (decode_s > 0 ? decode_s : 1e-9),
                            nf_gen_stop_name(q.stop), o.sp.seed,
                            &(struct nf_gen_summary_extra){.n_ctx = (int)n_ctx,
                                                           .spec = o.lookup || o.draft,
                                                           .drafted = q.n_drafted,
                                                           .accepted = q.n_accepted});
    } else {
        int ol = nf_detok_flush(&ro.dt, ro.out);
        fwrite(ro.out, 1, (size_t)ol, stdout);
        putchar('\n');
    }
    fflush(stdout);
    if (q.stop == NF_GEN_STOP_CTX)
        nf_gen_ctx_full_note(cmd, q.n_gen, (int)n_ctx, n_train, "-c");
    ret = 0;
    goto done;
oom:
    fprintf(stderr, "nanoflowctl run: out of memory\n");
done:
    nf_gen_seq_free(&q);
    free(prompt);
    free(ro.text);
    free(ro.out);
    free(ids);
    nf_ctx_free(c);
    nf_vocab_free(v);
    nf_model_free(m);
    nf_gen_draft_model_free(&dm);
    nf_ctx_free(dctx);
    nf_vocab_free(dvoc);
    nf_model_free(dmod);
    return ret;
}
