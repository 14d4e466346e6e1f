/* cmds.h - nanoflowctl subcommands and the small argument helpers they share. */
#ifndef NF_CMDS_H
#define NF_CMDS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* Each subcommand gets argv after the subcommand name (argv[0] is the subcommand) and returns
 * the process exit code: 0 success, 1 runtime failure, 2 usage error. */
int nf_cmd_run(int argc, char **argv);
int nf_cmd_tokenize(int argc, char **argv);
int nf_cmd_mkmodel(int argc, char **argv);
int nf_cmd_convert(int argc, char **argv);
int nf_cmd_verify(int argc, char **argv);
int nf_cmd_inspect(int argc, char **argv);
int nf_cmd_up(int argc, char **argv);
int nf_cmd_down(int argc, char **argv);
int nf_cmd_status(int argc, char **argv);
int nf_cmd_stats(int argc, char **argv);
int nf_cmd_gen(int argc, char **argv);
int nf_cmd_chat(int argc, char **argv);
int nf_cmd_bench(int argc, char **argv);

/* cmd_up.c: resolves model as `up` does into the absolute path the daemons open: a .nft as
 * given; for a .gguf its in-place index (built once), or with sparse its .nft conversion (made
 * once); progress on stderr. Returns 0, or 1 after printing the reason. */
int nf_up_resolve_model(const char *model, bool sparse, char *nft, size_t len);

/* Parse helpers: on a bad value they print one line to stderr naming the command, the flag, the
 * accepted range and the offending text, with a pointer to --help, and return -1. */
int nf_arg_long(const char *cmd, const char *flag, const char *val, long min, long max, long *out);
int nf_arg_u64(const char *cmd, const char *flag, const char *val, uint64_t *out);
int nf_arg_float(const char *cmd, const char *flag, const char *val, float min, float max,
                 float *out);
/* Size with an optional K/M/G/T suffix (powers of 1024), e.g. "1G". */
int nf_arg_size(const char *cmd, const char *flag, const char *val, uint64_t *out);
/* A RAM budget: a size as nf_arg_size takes it that this machine could hold (nf_ram_check). */
int nf_arg_ram(const char *cmd, const char *flag, const char *val, uint64_t *out);

/* A KV cache element type (--cache-type-k / -v): f16, q8_0 or q4_0, as an enum nf_type. */
int nf_arg_kv_type(const char *cmd, const char *flag, const char *val, int *out);

/* Prints "nanoflowctl CMD: MSG" plus "Try 'nanoflowctl CMD --help'." and returns 2. */
int nf_usage_error(const char *cmd, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* Returns the value of flag argv[*i] ("--flag VALUE" or "--flag=VALUE"), advancing *i, or NULL
 * after printing an error when the value is missing. `name` is the flag being matched; returns
 * NULL without printing and leaves *i when argv[*i] is not that flag (check with nf_arg_is). */
bool nf_arg_is(const char *arg, const char *name);
const char *nf_arg_value(const char *cmd, int argc, char **argv, int *i);

#endif
