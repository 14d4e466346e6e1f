/* cmd_tokenize.c - nanoflowctl tokenize (placeholder until its owner lands the real command). */
#include <stdio.h>

#include "cmds.h"

int nf_cmd_tokenize(int argc, char **argv)
{
    fprintf(stderr, "nanoflowctl tokenize: not implemented yet\n");
    return 1;
}
