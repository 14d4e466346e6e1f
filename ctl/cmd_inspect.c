/* cmd_inspect.c - nanoflowctl inspect: print the layout of a .nft tile file. */
#include <inttypes.h>
#include <stdio.h>
#include <string.h>

#include "cmds.h"
#include "gen_output.h"
#include "gguf.h"
#include "nf_err.h"
#include "nft.h"
#include "quants.h"

static const char *const cmd = "inspect";

static void usage(FILE *f)
{
    fprintf(
        f, "usage: nanoflowctl inspect FILE.nft [--json]\n\n"
           "Prints a NanoFlow tile file's layout: hyperparameters, tiles per kind and their\n"
           "bytes, the predictors' bytes and share of the model, and the bytes one token reads\n"
           "at 0%%, 50%%, 80%% and 90%% FFN sparsity (disk bytes, tiles padded to 4096; FFN tiles\n"
           "taken in proportion, MoE experts in the proportion used per token).\n\n"
           "A GGUF model is described instead: architecture, tensors per type and bytes.\n\n"
           "A split GGUF model (NAME-00001-of-0000N.gguf, its first file) is opened with all\n"
           "its parts, which are listed with their sizes and tensor counts.\n\n"
           "  --json       print one JSON object instead\n"
           "  --help, -h   show this help\n");
}

static const int sparsity[] = {0, 50, 80, 90};
#define N_SPARSITY (sizeof(sparsity) / sizeof(sparsity[0]))

struct layout {
    uint64_t tiles[NF_TILE_KIND_COUNT], bytes[NF_TILE_KIND_COUNT], disk[NF_TILE_KIND_COUNT];
    uint64_t token[N_SPARSITY];
};

static void measure(const struct nf_nft *f, struct layout *s)
{
    memset(s, 0, sizeof(*s));
    uint64_t max_embd = 0;
    for (uint64_t i = 0; i < f->n_tiles; i++) {
        const struct nf_nft_tile *t = &f->tiles[i];
        s->tiles[t->kind]++;
        s->bytes[t->kind] += t->size;
        s->disk[t->kind] += nf_nft_padded(t->size);
        if (t->kind == NF_TILE_EMBD && nf_nft_padded(t->size) > max_embd)
            max_embd = nf_nft_padded(t->size);
    }
    /* Always read per token: attention, norms, routers, predictors, the head and one embedding
     * tile (the whole embedding when the head is tied to it). */
    uint64_t fixed = max_embd;
    for (int k = 0; k < NF_TILE_KIND_COUNT; k++)
        if (k != NF_TILE_EMBD && k != NF_TILE_FFN && k != NF_TILE_EXPERT)
            fixed += s->disk[k];
    if (f->hdr.tied_output)
        fixed += s->disk[NF_TILE_EMBD];
    double moe = f->hdr.n_expert ? (double)f->hdr.n_expert_used / f->hdr.n_expert : 0;
    for (size_t j = 0; j < N_SPARSITY; j++) {
        double keep = 1.0 - sparsity[j] / 100.0;
        /* A MoE file's FFN tiles are a shared expert (qwen2moe, glm4moe) or a leading dense
         * layer (glm4moe), read by every token. */
        double keep_ffn = f->hdr.n_expert ? 1.0 : keep;
        s->token[j] = fixed + (uint64_t)(keep_ffn * (double)s->disk[NF_TILE_FFN]) +
                      (uint64_t)(keep * moe * (double)s->disk[NF_TILE_EXPERT]);
    }
}

/* The calibration section, when present: per layer the thresholds of each sparsity level, the
 * share of groups that are hot (above the highest level's threshold at least half the time) and
 * the hottest groups. */
static void print_calib(const struct nf_nft *f)
{
    const struct nf_nft_calib_header *ch = nf_nft_calib(f);
    if (!ch) {
        printf("\ncalibration: none\n");
        return;
    }
    printf("\ncalibration: %" PRIu32 " tokens, %" PRIu64 " bytes; levels", ch->n_tokens,
           f->hdr.calib_size);
    for (uint32_t l = 0; l < ch->n_levels; l++)
        printf(" %.0f%%", ch->levels[l] * 100.0);
    printf("\n%-6s %7s  %-28s  %-28s  %s\n", "layer", "groups", "activation thresholds",
           "predictor thresholds", "hottest groups (freq at top level)");
    for (uint32_t il = 0; il < f->hdr.n_layer; il++) {
        struct nf_nft_calib_layer cl;
        if (nf_nft_calib_layer(f, il, &cl) || cl.n_groups == 0) {
            printf("%-6" PRIu32 " %7s\n", il, "-");
            continue;
        }
        char a[64] = "", p[64] = "";
        for (uint32_t l = 0, na = 0, np = 0; l < ch->n_levels; l++) {
            na += (uint32_t)snprintf(a + na, sizeof(a) - na, "%s%.3g", l ? "/" : "",
                                     (double)cl.act_thr[l]);
            np += (uint32_t)snprintf(p + np, sizeof(p) - np, "%s%.3g", l ? "/" : "",
                                     (double)cl.pred_thr[l]);
            if (na >= sizeof(a) || np >= sizeof(p))
                break;
        }
        printf("%-6" PRIu32 " %7" PRIu32 "  %-28s  %-28s ", il, cl.n_groups, a, p);
        const float *top = cl.freq + (size_t)(ch->n_levels - 1) * cl.n_groups;
        for (uint32_t g = 0; g < cl.n_groups && g < 4; g++)
            printf(" %" PRIu32 "(%.2f)", cl.order[g], (double)top[cl.order[g]]);
        printf("\n");
    }
}

/* The architecture of the embedded metadata, with gemma3's and gpt-oss's sliding windows and
 * glm4moe's routing, leading dense layers and skipped next-token-prediction blocks. */
static void print_arch(const struct nf_nft *f)
{
    const struct nf_gguf *g = nf_nft_gguf(f);
    const char *arch = NULL;
    uint32_t win = 0, dense = 0, nextn = 0;
    float scale = 0;
    if (nf_gguf_get_str(g, "general.architecture", &arch) < 0)
        arch = "?";
    printf("architecture: %s", arch);
    if (nf_gguf_get_u32(g, "gemma3.attention.sliding_window", &win) == 0)
        printf(" (sliding window %u, every 6th layer global)", win);
    if (nf_gguf_get_u32(g, "gpt-oss.attention.sliding_window", &win) == 0)
        printf(" (sliding window %u on the even layers, the odd ones global; attention sinks)",
               win);
    if (!strcmp(arch, "glm4moe")) {
        nf_gguf_get_u32(g, "glm4moe.leading_dense_block_count", &dense);
        nf_gguf_get_u32(g, "glm4moe.nextn_predict_layers", &nextn);
        nf_gguf_get_f32(g, "glm4moe.expert_weights_scale", &scale);
        printf(" (sigmoid routing with expert bias, scale %g; %u leading dense layers; %u "
               "next-token-prediction blocks skipped)",
               (double)scale, dense, nextn);
    }
    printf("\n");
}

static void print_text(const struct nf_nft *f, const char *path, const struct layout *s)
{
    const struct nf_nft_header *h = &f->hdr;
    printf("%s: NanoFlow tile file v%u.%u, %" PRIu64 " bytes, %" PRIu64 " tiles (tile size %u)\n",
           path, h->major, h->minor, h->file_size, f->n_tiles, h->tile_size);
    print_arch(f);
    printf("model: %u layers, n_embd %u, n_ff %u, n_vocab %u, heads %u/%u, experts %u (%u used), "
           "%s output\n",
           h->n_layer, h->n_embd, h->n_ff, h->n_vocab, h->n_head, h->n_head_kv, h->n_expert,
           h->n_expert_used, h->tied_output ? "tied" : "separate");
    printf("\n%-14s %8s %14s %14s\n", "kind", "tiles", "bytes", "disk bytes");
    for (int k = 0; k < NF_TILE_KIND_COUNT; k++)
        if (s->tiles[k])
            printf("%-14s %8" PRIu64 " %14" PRIu64 " %14" PRIu64 "\n",
                   nf_tile_kind_name((enum nf_tile_kind)k), s->tiles[k], s->bytes[k], s->disk[k]);
    printf("\nweights: %" PRIu64 " bytes\n", h->weight_bytes);
    printf("predictors: %" PRIu64 " bytes, %.2f%% of the weights (rank %u, %s)\n",
           h->predictor_bytes,
           h->weight_bytes ? 100.0 * (double)h->predictor_bytes / (double)h->weight_bytes : 0.0,
           h->pred_rank, h->pred_rank ? nf_type_traits((enum nf_type)h->pred_type)->name : "-");
    printf("\nbytes one token reads:\n");
    for (size_t j = 0; j < N_SPARSITY; j++)
        printf("  %2d%% FFN sparsity: %14" PRIu64 " (%.1f MiB)\n", sparsity[j], s->token[j],
               (double)s->token[j] / 1048576.0);
    print_calib(f);
}

static void print_json(const struct nf_nft *f, const char *path, const struct layout *s)
{
    const struct nf_nft_header *h = &f->hdr;
    printf("{\"file\":\"");
    for (const char *p = path; *p; p++)
        printf(*p == '"' || *p == '\\' ? "\\%c" : "%c", *p);
    printf("\",\"version\":\"%u.%u\",\"file_bytes\":%" PRIu64 ",\"tiles\":%" PRIu64
           ",\"tile_size\":%u,\"n_layer\":%u,\"n_embd\":%u,\"n_ff\":%u,\"n_vocab\":%u,"
           "\"n_expert\":%u,\"n_expert_used\":%u,\"tied_output\":%s,\"kinds\":{",
           h->major, h->minor, h->file_size, f->n_tiles, h->tile_size, h->n_layer, h->n_embd,
           h->n_ff, h->n_vocab, h->n_expert, h->n_expert_used, h->tied_output ? "true" : "false");
    const char *sep = "";
    for (int k = 0; k < NF_TILE_KIND_COUNT; k++)
        if (s->tiles[k]) {
            printf(
                "%s\"%s\":{\"tiles\":%" PRIu64 ",\"bytes\":%" PRIu64 ",\"disk_bytes\":%" PRIu64 "}",
                sep, nf_tile_kind_name((enum nf_tile_kind)k), s->tiles[k], s->bytes[k], s->disk[k]);
            sep = ",";
        }
    printf("},\"weight_bytes\":%" PRIu64 ",\"predictor_bytes\":%" PRIu64
           ",\"predictor_share\":%.6f,\"pred_rank\":%u,\"token_bytes\":{",
           h->weight_bytes, h->predictor_bytes,
           h->weight_bytes ? (double)h->predictor_bytes / (double)h->weight_bytes : 0.0,
           h->pred_rank);
    for (size_t j = 0; j < N_SPARSITY; j++)
        printf("%s\"%d\":%" PRIu64, j ? "," : "", sparsity[j], s->token[j]);
    printf("}}\n");
}

/* The parts of a split GGUF (one line each, or a JSON array's elements): its path, size and
 * tensor count. */
static void print_parts(const struct nf_gguf *g, bool json)
{
    for (uint32_t i = 0; i < g->n_parts; i++) {
        const struct nf_gguf_part *p = &g->parts[i];
        uint64_t n = 0;
        for (uint64_t j = 0; j < g->n_tensors; j++)
            n += g->tensors[j].part == i;
        if (json) {
            printf("%s{\"path\":", i ? "," : "");
            nf_json_str(stdout, (const unsigned char *)p->path, strlen(p->path));
            printf(",\"bytes\":%" PRIu64 ",\"tensors\":%" PRIu64 "}", p->size, n);
        } else {
            printf("  part %u  %s  %" PRIu64 " bytes, %" PRIu64 " tensors\n", i + 1, p->path,
                   p->size, n);
        }
    }
}

/* A GGUF given to inspect is described in its own terms (architecture, tensors per type, size)
 * with the command that makes the .nft inspect otherwise reads. Returns 0, or 1 after printing
 * why the GGUF cannot be read. */
static int inspect_gguf(const char *path, bool json)
{
    struct nf_gguf *g = NULL;
    char err[512];
    if (nf_gguf_open(&g, path, err, sizeof(err)) < 0) {
        fprintf(stderr, "nanoflowctl inspect: %s\n", err);
        return 1;
    }
    const char *arch = "unknown";
    nf_gguf_get_str(g, "general.architecture", &arch);
    uint64_t n_of[NF_TYPE_COUNT] = {0}, bytes_of[NF_TYPE_COUNT] = {0}, weights = 0;
    for (uint64_t i = 0; i < g->n_tensors; i++) {
        const struct nf_gguf_tensor *t = &g->tensors[i];
        weights += t->size;
        if ((unsigned)t->type < NF_TYPE_COUNT) {
            n_of[t->type]++;
            bytes_of[t->type] += t->size;
        }
    }
    if (json) {
        printf("{\"file\":");
        nf_json_str(stdout, (const unsigned char *)path, strlen(path));
        printf(",\"format\":\"gguf\",\"gguf_version\":%" PRIu32 ",\"architecture\":", g->version);
        nf_json_str(stdout, (const unsigned char *)arch, strlen(arch));
        printf(",\"tensors\":%" PRIu64 ",\"file_bytes\":%" PRIu64 ",\"weight_bytes\":%" PRIu64
               ",\"types\":{",
               g->n_tensors, g->file_size, weights);
        bool first = true;
        for (int t = 0; t < NF_TYPE_COUNT; t++)
            if (n_of[t]) {
                const struct nf_type_traits *tr = nf_type_traits((enum nf_type)t);
                printf("%s\"%s\":{\"tensors\":%" PRIu64 ",\"bytes\":%" PRIu64 "}", first ? "" : ",",
                       tr && tr->name ? tr->name : "?", n_of[t], bytes_of[t]);
                first = false;
            }
        printf("}");
        if (g->n_parts > 1) {
            printf(",\"parts\":[");
            print_parts(g, true);
            printf("]");
        }
        printf("}\n");
    } else {
        printf("%s: a GGUF model (version %" PRIu32 "), not a .nft tile file\n"
               "architecture: %s\ntensors: %" PRIu64 ", %" PRIu64 " bytes of weights in a %" PRIu64
               "-byte file\n%-8s %8s %14s\n",
               path, g->version, arch, g->n_tensors, weights, g->file_size, "type", "tensors",
               "bytes");
        for (int t = 0; t < NF_TYPE_COUNT; t++)
            if (n_of[t]) {
                const struct nf_type_traits *tr = nf_type_traits((enum nf_type)t);
                printf("%-8s %8" PRIu64 " %14" PRIu64 "\n", tr && tr->name ? tr->name : "?",
                       n_of[t], bytes_of[t]);
            }
        if (g->n_parts > 1) {
            printf("%" PRIu64 " tensors in %u parts\n", g->n_tensors, g->n_parts);
            print_parts(g, false);
        }
        printf("its tile layout: 'nanoflowctl convert %s OUT.nft', then inspect OUT.nft\n", path);
    }
    nf_gguf_close(g);
    return 0;
}

int nf_cmd_inspect(int argc, char **argv)
{
    const char *path = NULL;
    bool json = false;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--help") || !strcmp(argv[i], "-h")) {
            usage(stdout);
            return 0;
        } else if (!strcmp(argv[i], "--json")) {
            json = true;
        } else if (argv[i][0] == '-' && argv[i][1]) {
            return nf_usage_error(cmd, "unknown flag '%s'", argv[i]);
        } else if (!path) {
            path = argv[i];
        } else {
            return nf_usage_error(cmd, "unexpected argument '%s'", argv[i]);
        }
    }
    if (!path)
        return nf_usage_error(cmd, "needs FILE.nft");
    struct nf_nft *f;
    char err[512];
    int rc = nf_nft_open(&f, path, false, err, sizeof(err));
    if (rc == NF_EBADMAGIC && strstr(err, "is a GGUF model"))
        return inspect_gguf(path, json);
    if (rc) {
        fprintf(stderr, "nanoflowctl inspect: %s\n", err);
        return 1;
    }
    struct layout s;
    measure(f, &s);
    if (json)
        print_json(f, path, &s);
    else
        print_text(f, path, &s);
    nf_nft_close(f);
    return 0;
}
