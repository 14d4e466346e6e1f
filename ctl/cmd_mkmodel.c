/* cmd_mkmodel.c - nanoflowctl mkmodel (placeholder until its owner lands the real command). */
#include <stdio.h>

#include "cmds.h"

int nf_cmd_mkmodel(int argc, char **argv)
{
    fprintf(stderr, "nanoflowctl mkmodel: not implemented yet\n");
    return 1;
}
