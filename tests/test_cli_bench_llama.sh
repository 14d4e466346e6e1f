#!/usr/bin/env bash
# test_cli_bench_llama.sh - bench -p N's llama.cpp row on stories260K: with --llama-bench PATH
# (or llama-bench on PATH) bench runs 'PATH -m GGUF -p N -n 0 -t T -r 1 -fa 0 -o jsonl' and
# prints its pp figure as a llama.cpp row of the prompt table ("llama_cpp" in --json); a
# llama-bench that fails is one line of the table and does not fail bench; --llama-bench off
# leaves the row out; a path that is not executable is a usage error. A stand-in script plays
# llama-bench: no test calls llama.cpp.
set -u
. "$(dirname "$0")/lib.sh"
: "${NF_BIN:?NF_BIN must point to nanoflowctl}"
: "${NF_SHARED_DIR:?NF_SHARED_DIR must point to the shared directory}"
need_stories
need_daemons
stack_tmp
export NANOFLOW_BENCH_CGROUP="nanoflow-benchllama-$$"
mkdir -p "$T/bin"
cat >"$T/bin/llama-bench" <<'SH'
#!/bin/sh
echo "$@" >"$(dirname "$0")/args"
if [ -n "${FAKE_FAIL:-}" ]; then
    echo "fake: cannot load model" >&2
    exit 1
fi
echo '{"model_filename": "x", "n_prompt": 0, "n_gen": 32, "avg_ts": 99.0}'
echo '{"model_filename": "x", "n_prompt": 40, "n_gen": 0, "n_depth": 0, "avg_ts": 123.456}'
SH
chmod +x "$T/bin/llama-bench"
B=(bench --model "$M0" -n 2 -t 1 -c 96 -p 40 --sparsity none --run-dir "$T/run")

"$NF_BIN" "${B[@]}" --llama-bench "$T/bin/llama-bench" >"$T/t.txt" 2>"$T/t.err"
check "bench --llama-bench exits 0" $?
grep -q "^llama.cpp  *40  *123.46  *0.32 " "$T/t.txt"
check "the prompt table has llama.cpp's pp40 and the prompt's time at that rate" $?
[ "$(cat "$T/bin/args")" = "-m $M0 -p 40 -n 0 -t 1 -r 1 -fa 0 -o jsonl" ]
check "llama-bench got the GGUF, -p 40, -n 0, -t 1, -r 1, -fa 0 ($(cat "$T/bin/args"))" $?

PATH="$T/bin:$PATH" "$NF_BIN" "${B[@]}" --json >"$T/j.json" 2>/dev/null
check "bench --json with llama-bench on PATH exits 0" $?
python3 -c "import json,sys; d=json.load(open(sys.argv[1]))['llama_cpp']; \
assert d['prompt_tokens'] == 40 and abs(d['prompt_tok_s'] - 123.456) < 1e-6 and d['error'] is None, d" \
    "$T/j.json"
check "--json has llama_cpp's figure" $?

PATH="$T/bin:$PATH" "$NF_BIN" "${B[@]}" --llama-bench off >"$T/off.txt" 2>/dev/null
check "bench --llama-bench off exits 0" $?
! grep -q "^llama.cpp" "$T/off.txt"
check "--llama-bench off: no llama.cpp row" $?

FAKE_FAIL=1 "$NF_BIN" "${B[@]}" --llama-bench "$T/bin/llama-bench" >"$T/f.txt" 2>/dev/null
check "a failing llama-bench does not fail bench" $?
grep -q "^  llama.cpp: .*exited 1 without a pp40 result: fake: cannot load model$" "$T/f.txt"
check "its error is one line under the prompt table" $?

"$NF_BIN" "${B[@]}" --llama-bench "$T/none" >/dev/null 2>"$T/u.err"
rc=$?
[ $rc -eq 2 ] && grep -q "llama-bench: .*is not an executable file" "$T/u.err"
check "--llama-bench with no such file is a usage error (rc $rc)" $?
exit $fail
