#!/usr/bin/env bash
# test_spec_draft.sh - speculative decoding with a draft model through the stack: `up --draft`
# (held in compute's RAM, counted in the budget) drafts for every request by default and gives
# run's tokens on zoo-Q4_K_M, eog prompt included; gen --lookup still works beside it; a draft
# model with another vocabulary is refused by up, and gen --use-draft by a stack without one.
set -u
. "$(dirname "$0")/lib.sh"
: "${NF_BIN:?NF_BIN must point to nanoflowctl}"
: "${NF_SHARED_DIR:?NF_SHARED_DIR must point to the shared directory}"
need_stories
need_daemons
Z0="$NF_SHARED_DIR/models/zoo-Q4_K_M.gguf"
[ -f "$Z0" ] || { echo "skip: $Z0 is missing"; exit 77; }
T=$(mktemp -d)
R="$T/run"
cleanup() {
    "$NF_BIN" down --run-dir "$R" >/dev/null 2>&1
    rm -rf "$T"
}
trap cleanup EXIT
mkdir "$T/m"
cp "$M0" "$T/m/stories.gguf"
cp "$Z0" "$T/m/zoo.gguf"

# zoo-Q4_K_M with `up --draft` (zoo-Q8_0, the same vocabulary): the default request drafts with
# it and gives run's tokens; up says what the draft takes; gen --lookup still works.
D0="$NF_SHARED_DIR/models/zoo-Q8_0.gguf"
"$NF_BIN" up -m "$T/m/zoo.gguf" --ram 256M -t 1 --draft "$D0" --run-dir "$R" >"$T/up.out" 2>"$T/up.err"
check "zoo: up --draft exits 0" $?
grep -q "draft model .*zoo-Q8_0.gguf: .* of the budget" "$T/up.out"
check "zoo: up says what the draft model takes" $?
for P in "One day, a big bird flew" "Once upon a time"; do
    args=(-p "$P" -n 40 --temp 0 --json)
    "$NF_BIN" gen --run-dir "$R" "${args[@]}" >"$T/gen.jsonl" 2>/dev/null
    "$NF_BIN" run -m "$Z0" -t 1 "${args[@]}" >"$T/run.jsonl" 2>/dev/null
    spec_same_ids "$T/gen.jsonl" "$T/run.jsonl" && spec_drafted "$T/gen.jsonl" 1
    check "zoo: gen with the stack's draft model equals run ('$P')" $?
done
"$NF_BIN" gen --run-dir "$R" --lookup "${args[@]}" >"$T/gen.jsonl" 2>/dev/null
spec_same_ids "$T/gen.jsonl" "$T/run.jsonl"
check "zoo: gen --lookup beside a draft model equals run" $?
"$NF_BIN" down --run-dir "$R" >/dev/null 2>&1
if [ -f "$NF_SHARED_DIR/models/llama-2-tiny-random.gguf" ]; then
    expect "up --draft with another vocabulary is refused" 1 "same vocabulary" \
        "$NF_BIN" up -m "$T/m/zoo.gguf" --ram 256M -t 1 \
        --draft "$NF_SHARED_DIR/models/llama-2-tiny-random.gguf" --run-dir "$R"
fi
"$NF_BIN" up -m "$T/m/stories.gguf" --ram 256M -t 1 --run-dir "$R" >/dev/null 2>&1
expect "gen --use-draft on a stack without a draft model is refused" 1 "up --draft" \
    "$NF_BIN" gen --run-dir "$R" --use-draft -p hi -n 4
"$NF_BIN" down --run-dir "$R" >/dev/null 2>&1

exit $fail
