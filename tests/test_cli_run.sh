#!/usr/bin/env bash
# test_cli_run.sh - nanoflowctl run end to end on stories260K: golden text, JSON Lines, errors,
# the positional prompt, and the context rule (refusals, the full-context stop).
set -u
. "$(dirname "$0")/lib.sh"
: "${NF_BIN:?NF_BIN must point to nanoflowctl}"
: "${NF_SHARED_DIR:?NF_SHARED_DIR must point to the shared directory}"
M="$NF_SHARED_DIR/models/stories260K.gguf"
G="$NF_SHARED_DIR/golden/stories260K.jsonl"
if [ ! -f "$M" ] || [ ! -f "$G" ]; then
    echo "skip: $M or $G is missing"
    exit 77
fi
need_python3 "to read the golden JSON"
T=$(mktemp -d)
trap 'rm -rf "$T"' EXIT

# 1. Greedy text equals llama.cpp's for the first golden prompt (stdout: generated text + newline).
python3 -c "import json,sys; o=json.loads(open(sys.argv[1]).readline()); sys.stdout.write(o['prompt']); open(sys.argv[2],'w').write(o['gen_text'] + '\n')" "$G" "$T/want.txt" >"$T/prompt.txt"
"$NF_BIN" run -m "$M" -f "$T/prompt.txt" --temp 0 -n 100 -t 2 >"$T/got.txt" 2>"$T/err.txt"
check "greedy run exits 0" $?
cmp -s "$T/got.txt" "$T/want.txt"
check "greedy text equals the golden text" $?
[ ! -s "$T/err.txt" ]
check "greedy run writes nothing to stderr" $?

# 2. --json: one object per token, then the summary; ids equal the golden ones.
"$NF_BIN" run --model "$M" -p "$(cat "$T/prompt.txt")" --temp 0 -n 20 --json --top-logits 5 >"$T/out.jsonl"
check "json run exits 0" $?
python3 - "$T/out.jsonl" "$G" <<'PY'
import json, sys
lines = [json.loads(l) for l in open(sys.argv[1], encoding="utf-8")]
gold = json.loads(open(sys.argv[2]).readline())
*toks, final = lines
for k in ("prompt_ids", "gen_ids", "text", "prompt_tokens", "prompt_tok_s", "decode_tok_s"):
    assert k in final, k
assert final["prompt_ids"] == gold["prompt_ids"], final["prompt_ids"]
assert final["gen_ids"] == gold["gen_ids"][:20], final["gen_ids"]
assert [t["id"] for t in toks] == final["gen_ids"]
assert final["prompt_tokens"] == len(gold["prompt_ids"])
for t, want in zip(toks, gold["top_logits"]):
    assert len(t["top_logits"]) == 5 and t["top_logits"][0][0] == t["id"]
    assert bytes.fromhex(t["hex"]).decode("utf-8", "replace") == t["piece"]
assert final["text"] == "".join(t["piece"] for t in toks)
assert final["text"] == gold["gen_text"][:len(final["text"])]
PY
check "json structure and ids" $?

# 3. Sampling is reproducible with a seed.
"$NF_BIN" run -m "$M" -p "Once upon" --temp 0.9 --seed 42 -n 30 >"$T/s1.txt"
"$NF_BIN" run -m "$M" -p "Once upon" --temp 0.9 --seed 42 -n 30 -t 1 >"$T/s2.txt"
cmp -s "$T/s1.txt" "$T/s2.txt"
check "same seed, same text" $?

# 4. Errors: exit 2 for usage, 1 for runtime failures, one line on stderr.
err_case() { # err_case NAME WANT_RC ARGS...
    local name=$1 want=$2
    shift 2
    "$NF_BIN" run "$@" >/dev/null 2>"$T/e.txt"
    local rc=$?
    [ "$rc" -eq "$want" ] && [ "$(wc -l <"$T/e.txt")" -eq 1 ]
    st=$? # the $(...) in the message would reset $?
    check "$name (rc $rc, want $want; $(head -c 120 "$T/e.txt"))" $st
}
err_case "unknown flag" 2 -m "$M" --bogus
err_case "bad temperature" 2 -m "$M" --temp abc
err_case "missing model flag" 2 -p hi
err_case "missing model file" 1 -m "$T/none.gguf" -p hi
err_case "missing prompt file" 1 -m "$M" -f "$T/none.txt"
printf 'GGUF garbage' >"$T/bad.gguf"
err_case "corrupt model" 1 -m "$T/bad.gguf" -p hi
V="$NF_SHARED_DIR/golden/vocab/ggml-vocab-gpt-2.gguf"
if [ -f "$V" ]; then
    err_case "unsupported architecture" 1 -m "$V" -p hi
    grep -q "not supported" "$T/e.txt"
    check "architecture message says not supported" $?
fi
err_case "two prompts" 2 -m "$M" hello -p world
grep -q "more than one prompt" "$T/e.txt"
check "two prompts: says more than one prompt" $?
err_case "a prompt and a prompt file" 2 -m "$M" hello -f "$T/prompt.txt"
err_case "-c past the trained length" 1 -m "$M" -c 129 hi
grep -q "context 129 is beyond the model's trained length 128 (context_length); use -c 128" \
    "$T/e.txt"
check "-c past the trained length: names the limit" $?
python3 -c "print('Once upon a time ' * 100)" >"$T/long.txt"
err_case "a prompt longer than the context" 1 -m "$M" -f "$T/long.txt"
grep -q "the prompt has [0-9]* tokens but the context holds 128 (the model was trained for 128" \
    "$T/e.txt"
check "a prompt longer than the context: says so" $?

# 5. A positional prompt is the prompt, as in gen.
"$NF_BIN" run -m "$M" "Once upon a time" --temp 0 -n 8 >"$T/pos.txt" 2>&1 &&
    "$NF_BIN" run -m "$M" -p "Once upon a time" --temp 0 -n 8 >"$T/p.txt" 2>&1
check "positional prompt exits 0" $?
cmp -s "$T/pos.txt" "$T/p.txt"
check "positional prompt equals -p" $?

# 6. A full context ends the generation with a line on stderr, exit 0 and stop "ctx": at the
#    model's trained length 128 by default (no longer raised to fit -n), at -c when given.
"$NF_BIN" run -m "$M" "Once upon a time" --temp 0 -n 500 --json >"$T/ctx.jsonl" 2>"$T/ctx.err"
rc=$?
n=$(python3 -c "
import json, sys
f = [json.loads(l) for l in open(sys.argv[1])][-1]
assert f['stop'] == 'ctx' and f['n_ctx'] == 128 and f['prompt_tokens'] + f['gen_tokens'] == 129
print(f['gen_tokens'])" "$T/ctx.jsonl")
check "full context: stop ctx at 128 positions (rc $rc)" $?
[ $rc -eq 0 ] && [ "$(cat "$T/ctx.err")" = \
    "nanoflowctl run: context full after $n tokens (n_ctx 128, the model's trained length)" ]
st=$? # the $(...) in the message would reset $?
check "full context: one line on stderr ($(cat "$T/ctx.err"))" $st
"$NF_BIN" run -m "$M" "Once upon a time" --temp 0 -n 500 -c 64 >/dev/null 2>"$T/ctx.err"
[ $? -eq 0 ] && [ "$(cat "$T/ctx.err")" = \
    "nanoflowctl run: context full after 60 tokens (n_ctx 64); use -c to raise it" ]
st=$? # the $(...) in the message would reset $?
check "full context at -c 64: says to raise -c ($(cat "$T/ctx.err"))" $st
exit $fail
