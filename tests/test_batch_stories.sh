#!/usr/bin/env bash
# test_batch_stories.sh - continuous batching through the stack (`up --parallel 4`): several `gen`
# clients started at different times, with prompts of different lengths, different -n, greedy
# and seeded sampling, each get exactly their solo `run --json` output (token lines, gen_ids,
# text) while sharing steps (stats: steps shared by 2+ sequences); a client cancelled with
# Ctrl-C mid-way leaves the others' output intact and its own a prefix of its solo output. On
# stories260K (tests/batch_lib.sh). Also: a --parallel that does not fit is refused with the
# most that do.
set -u
. "$(dirname "$0")/lib.sh"
: "${NF_BIN:?NF_BIN must point to nanoflowctl}"
: "${NF_SHARED_DIR:?NF_SHARED_DIR must point to the shared directory}"
. "$(dirname "$0")/batch_lib.sh"
batch_test stories260K
# A --parallel whose KV caches do not fit beside the minimum pool is refused with the most that
# do (stories260K at n_ctx 128: tiny caches, so a budget just above the minimum).
M="$NF_SHARED_DIR/models/stories260K.gguf"
if [ -f "$M" ]; then
    "$NF_BIN" up -m "$M" --ram 1G -t 1 --parallel 33 --run-dir "$T/run-bad" >"$T/out" 2>"$T/err"
    [ $? -eq 2 ] && grep -q -- "--parallel" "$T/err"
    check "up --parallel 33 is a usage error" $?
fi
exit $fail
