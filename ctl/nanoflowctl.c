/* nanoflowctl.c - the NanoFlow command-line tool: subcommand dispatch and top-level help. */
#include <stdio.h>
#include <string.h>

#include "cmds.h"

struct nf_cmd {
    const char *name;
    int (*fn)(int argc, char **argv);
    const char *summary;
};

static const struct nf_cmd nf_cmds[] = {
    {"run", nf_cmd_run, "generate text from a GGUF model in this process (no daemons)"},
    {"tokenize", nf_cmd_tokenize, "print the token ids of a text under a model's vocabulary"},
    {"mkmodel", nf_cmd_mkmodel, "write a GGUF model with deterministic random or zero weights"},
    {"convert", nf_cmd_convert, "write a GGUF model as a .nft tile file with FFN predictors"},
    {"verify", nf_cmd_verify, "check a .nft file's index and every tile checksum"},
    {"inspect", nf_cmd_inspect, "print a .nft file's tiles, predictor share and bytes per token"},
    {"up", nf_cmd_up, "start a streaming stack (fetcher, predictor, compute) under a RAM budget"},
    {"down", nf_cmd_down, "stop the streaming stack"},
    {"status", nf_cmd_status, "show the stack's daemons: pid, health, uptime"},
    {"stats", nf_cmd_stats, "show per-stage throughput and memory held vs budget"},
    {"gen", nf_cmd_gen, "generate text with the running stack (output as with run)"},
    {"chat", nf_cmd_chat, "chat with the running stack in the terminal (or from a pipe)"},
    {"bench", nf_cmd_bench, "measure disk, stack and plain-mmap decode side by side on a model"},
};

static void usage(FILE *f)
{
    fprintf(f, "usage: nanoflowctl COMMAND [OPTIONS]\n\n"
               "NanoFlow runs GGUF language models under a fixed RAM budget.\n\nCommands:\n");
    for (size_t i = 0; i < sizeof(nf_cmds) / sizeof(nf_cmds[0]); i++)
        fprintf(f, "  %-10s %s\n", nf_cmds[i].name, nf_cmds[i].summary);
    fprintf(f, "\nOptions:\n"
               "  -h, --help   show this help\n"
               "  --version    print the version\n"
               "\nRun 'nanoflowctl COMMAND --help' for the options of a command.\n");
}

int main(int argc, char **argv)
{
    if (argc < 2) {
        usage(stderr);
        return 2;
    }
    if (!strcmp(argv[1], "--help") || !strcmp(argv[1], "-h") || !strcmp(argv[1], "help")) {
        usage(stdout);
        return 0;
    }
    if (!strcmp(argv[1], "--version")) {
        printf("nanoflowctl %s\n", NF_VERSION);
        return 0;
    }
    for (size_t i = 0; i < sizeof(nf_cmds) / sizeof(nf_cmds[0]); i++)
        if (!strcmp(argv[1], nf_cmds[i].name))
            return nf_cmds[i].fn(argc - 1, argv + 1);
    fprintf(stderr, "nanoflowctl: unknown %s '%s' (try 'nanoflowctl --help')\n",
            argv[1][0] == '-' ? "flag" : "command", argv[1]);
    return 2;
}
