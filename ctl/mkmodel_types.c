/* mkmodel_types.c - mkmodel --tensor-types FILE: per-tensor types from a recipe, so mkmodel can
 * write the tensor mix another tool chose (llama-quantize's Q5_K_M for deepseek2, say).
 *
 * The recipe is text, one tensor a line: its name and a type name as ggml spells it ("q4_K",
 * "mxfp4"; case does not matter), separated by blanks. Blank lines and lines starting with '#'
 * are skipped. Every named tensor must be one the model has, and its rows must be whole blocks
 * of the type; tensors the recipe does not name keep the type --type gave them. */
#include <ctype.h>
#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>

#include "cmds.h"
#include "mkmodel.h"

#define CMD "mkmodel"

/* The type whose ggml name is s (any case), with a quantizer or F32; -1 when there is none. */
static int type_by_name(const char *s)
{
    for (int i = 0; i < NF_TYPE_COUNT; i++) {
        const struct nf_type_traits *tr = nf_type_traits((enum nf_type)i);
        if (tr && tr->name && !strcasecmp(tr->name, s) &&
            (i == NF_TYPE_F32 || tr->from_float != NULL))
            return i;
    }
    return -1;
}

static struct nf_mk_tensor *find_tensor(struct nf_mk_tensor *t, size_t n, const char *name)
{
    for (size_t i = 0; i < n; i++)
        if (!strcmp(t[i].name, name))
            return &t[i];
    return NULL;
}

int nf_mk_tensor_types_apply(const char *path, struct nf_mk_tensor *t, size_t n)
{
    FILE *f = fopen(path, "r");
    if (!f)
        return nf_usage_error(CMD, "--tensor-types %s: %s", path, strerror(errno));
    char line[512];
    int lineno = 0, rc = 0;
    while (!rc && fgets(line, sizeof(line), f)) {
        lineno++;
        char *p = line;
        while (isspace((unsigned char)*p))
            p++;
        if (*p == '\0' || *p == '#')
            continue;
        char name[NF_GGUF_MAX_NAME + 1], type[32], extra[2];
        int got = sscanf(p, "%63s %31s %1s", name, type, extra);
        if (got != 2) {
            rc = nf_usage_error(CMD, "--tensor-types %s line %d: expected 'TENSOR TYPE'", path,
                                lineno);
            break;
        }
        struct nf_mk_tensor *x = find_tensor(t, n, name);
        int ty = type_by_name(type);
        if (!x)
            rc = nf_usage_error(CMD, "--tensor-types %s line %d: the model has no tensor '%s'",
                                path, lineno, name);
        else if (ty < 0)
            rc = nf_usage_error(CMD, "--tensor-types %s line %d: unknown or unwritable type '%s'",
                                path, lineno, type);
        else if (x->ne[0] % nf_type_traits((enum nf_type)ty)->blck_size != 0)
            rc = nf_usage_error(CMD,
                                "--tensor-types %s line %d: tensor %s has rows of %lld elements, "
                                "not whole %s blocks of %lld",
                                path, lineno, name, (long long)x->ne[0],
                                nf_type_traits((enum nf_type)ty)->name,
                                (long long)nf_type_traits((enum nf_type)ty)->blck_size);
        else
            x->type = (enum nf_type)ty;
    }
    fclose(f);
    return rc;
}
