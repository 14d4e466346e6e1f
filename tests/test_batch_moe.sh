#!/usr/bin/env bash
# test_batch_moe.sh - continuous batching through the stack (`up --parallel 4`): several `gen`
# clients started at different times, with prompts of different lengths, different -n, greedy
# and seeded sampling, each get exactly their solo `run --json` output (token lines, gen_ids,
# text) while sharing steps (stats: steps shared by 2+ sequences); a client cancelled with
# Ctrl-C mid-way leaves the others' output intact and its own a prefix of its solo output. On
# moe-Q8_0 (tests/batch_lib.sh).
set -u
. "$(dirname "$0")/lib.sh"
: "${NF_BIN:?NF_BIN must point to nanoflowctl}"
: "${NF_SHARED_DIR:?NF_SHARED_DIR must point to the shared directory}"
. "$(dirname "$0")/batch_lib.sh"
batch_test moe-Q8_0
exit $fail
