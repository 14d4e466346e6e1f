/* cmd_verify.c - nanoflowctl verify: check a .nft file's index and every tile checksum. */
#include <inttypes.h>
#include <stdio.h>
#include <string.h>

#include "cmds.h"
#include "nf_err.h"
#include "nft.h"

static const char *const cmd = "verify";

static void usage(FILE *f)
{
    fprintf(f,
            "usage: nanoflowctl verify FILE.nft\n\n"
            "Checks the header, metadata and tile index of a NanoFlow tile file, then reads every\n"
            "tile and checks its checksum. Each bad tile is named (layer, kind, index, offset).\n"
            "Exit status: 0 when everything is intact, 1 otherwise.\n\n"
            "  --help, -h   show this help\n");
}

struct tally {
    uint64_t bad;
};

static void on_bad(void *ud, const struct nf_nft_tile *t, const char *msg)
{
    struct tally *c = ud;
    c->bad++;
    fprintf(stderr, "nanoflowctl verify: %s\n", msg);
}

int nf_cmd_verify(int argc, char **argv)
{
    const char *path = NULL;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--help") || !strcmp(argv[i], "-h")) {
            usage(stdout);
            return 0;
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
    int rc = nf_nft_open(&f, path, true, err, sizeof(err));
    if (rc) {
        fprintf(stderr, "nanoflowctl verify: %s\n", err);
        return 1;
    }
    struct tally t = {0};
    rc = nf_nft_verify(f, on_bad, &t);
    if (rc && !t.bad)
        fprintf(stderr, "nanoflowctl verify: %s: %s\n", path, nf_strerror(rc));
    else if (rc)
        fprintf(stderr, "nanoflowctl verify: %s: %" PRIu64 " of %" PRIu64 " tiles are bad\n", path,
                t.bad, f->n_tiles);
    else
        printf("%s: OK, %" PRIu64 " tiles, %" PRIu64 " bytes\n", path, f->n_tiles,
               f->hdr.file_size);
    nf_nft_close(f);
    return rc ? 1 : 0;
}
