/* cmd_run.c - nanoflowctl run (placeholder until its owner lands the real command). */
#include <stdio.h>

#include "cmds.h"

int nf_cmd_run(int argc, char **argv)
{
    fprintf(stderr, "nanoflowctl run: not implemented yet\n");
    return 1;
}
