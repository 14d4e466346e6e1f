#!/usr/bin/env bash
# test_plan_head_dim.sh - the stack's plan sizes the KV cache by the model's head widths
# (attention.key_length / value_length) when they are not n_embd / n_head, as qwen3, gemma3 and
# glm4moe's are: a qwen3 of 4 heads of 32 over n_embd 64 caches 512 B a token (2 layers x 2 KV
# heads x 32 x K and V x 2 B), not the 256 B that n_embd / n_head gives; and a model whose n_embd
# is not a multiple of n_head (80 over 6 heads of 16, as glm-4.5's 5120 over 96 heads of 128)
# starts, and `gen` gives `run`'s tokens.
set -u
. "$(dirname "$0")/lib.sh"
: "${NF_BIN:?NF_BIN must point to nanoflowctl}"
need_stories
need_daemons
stack_tmp

V=(--vocab-from "$M0" --type f16 --arch qwen3 --layers 2 --ffn 128 --kv-heads 2)
"$NF_BIN" mkmodel "$T/wide.gguf" "${V[@]}" --dim 64 --heads 4 --head-dim 32 >/dev/null
"$NF_BIN" mkmodel "$T/odd.gguf" "${V[@]}" --dim 80 --heads 6 --head-dim 16 >/dev/null

"$NF_BIN" up -m "$T/wide.gguf" --ram 256M -t 1 -c 128 --run-dir "$T/run-wide" >"$T/wide.out" 2>&1
check "wide heads: up exits 0" $?
grep -q "512 B a token" "$T/wide.out"
check "wide heads: the plan caches 512 B a token ($(grep -o '[0-9]* B a token' "$T/wide.out"))" $?
"$NF_BIN" down --run-dir "$T/run-wide" >/dev/null 2>&1

"$NF_BIN" up -m "$T/odd.gguf" --ram 256M -t 1 -c 128 --run-dir "$T/run-odd" >"$T/odd.out" 2>&1
check "n_embd not a multiple of n_head: up exits 0 ($(tail -1 "$T/odd.out"))" $?
grep -q "256 B a token" "$T/odd.out"
check "n_embd not a multiple of n_head: 256 B a token" $?
"$NF_BIN" gen --run-dir "$T/run-odd" -n 6 --temp 0 --json "Once upon a time" >"$T/gen.json" 2>&1
check "n_embd not a multiple of n_head: gen exits 0" $?
"$NF_BIN" run -m "$T/odd.gguf" -t 1 -n 6 --temp 0 --json -p "Once upon a time" >"$T/run.json" 2>&1
check "n_embd not a multiple of n_head: run exits 0" $?
gen_ids() { python3 -c 'import json,sys; print(json.loads(open(sys.argv[1]).read().splitlines()[-1])["gen_ids"])' "$1"; }
[ "$(gen_ids "$T/gen.json")" = "$(gen_ids "$T/run.json")" ]
check "n_embd not a multiple of n_head: gen gives run's tokens" $?
"$NF_BIN" down --run-dir "$T/run-odd" >/dev/null 2>&1
exit $fail
