#!/usr/bin/env bash
# test_spec_stack.sh - speculative decoding through the stack: `up --lookup` makes prompt lookup
# the default, `gen --lookup` / `--no-lookup` choose per request, and every way gives run's
# tokens: greedy on stories260K (the golden), into the context limit, seeded sampling, and
# zoo-Q4_K_M's prompt that ends in eog, requests speculating beside a plain one with up
# --parallel; `stats` and gen --json report drafted, accepted and the acceptance rate; bad flags
# are refused. (`up --draft` alone: test_spec_draft.sh.)
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

# 1. stories260K with `up --lookup`: the default request speculates, --no-lookup does not, and
#    both give run's tokens, which are the golden's.
"$NF_BIN" up -m "$T/m/stories.gguf" --ram 256M -t 1 --lookup --run-dir "$R" >/dev/null 2>"$T/up.err"
check "stories: up --lookup exits 0" $?
P="Once upon a time"
args=(-p "$P" -n 100 --temp 0 --json)
"$NF_BIN" gen --run-dir "$R" "${args[@]}" >"$T/gen.jsonl" 2>"$T/gen.err"
check "stories: gen (the stack's lookup) exits 0" $?
"$NF_BIN" run -m "$M0" -t 1 "${args[@]}" >"$T/run.jsonl" 2>/dev/null
check "stories: run exits 0" $?
gen_matches_run "$T/gen.jsonl" "$T/run.jsonl" "$G"
check "stories: speculative gen equals run and the golden" $?
spec_drafted "$T/gen.jsonl" 1
check "stories: the summary reports drafts" $?
"$NF_BIN" gen --run-dir "$R" --no-lookup "${args[@]}" >"$T/plain.jsonl" 2>/dev/null
spec_same_ids "$T/plain.jsonl" "$T/gen.jsonl"
check "stories: gen --no-lookup gives the same tokens" $?
! grep -q drafted <(tail -n 1 "$T/plain.jsonl")
check "stories: --no-lookup's summary has no draft counts" $?
"$NF_BIN" stats --run-dir "$R" --json >"$T/stats.json" 2>/dev/null
python3 - "$T/stats.json" <<'PY'
import json, sys
c = json.load(open(sys.argv[1]))["compute"]
assert c["drafted"] >= 1 and 0 <= c["accepted"] <= c["drafted"], c
assert abs(c["accept_rate"] - c["accepted"] / c["drafted"]) < 1e-6, c
PY
check "stats: compute shows drafted, accepted and the acceptance rate" $?
"$NF_BIN" stats --run-dir "$R" >"$T/stats.txt" 2>/dev/null
grep -q "acceptance rate" "$T/stats.txt"
check "stats: the table shows the acceptance rate" $?

# 2. Into the context limit (128 positions), and seeded sampling: the same tokens as run.
LONG="Lily and Tom went to the park. They played with a ball. Lily and Tom went to the park. They played with a ball. Lily and Tom went to the park. They"
args=(-p "$LONG" -n 200 --temp 0 --json)
"$NF_BIN" gen --run-dir "$R" "${args[@]}" >"$T/gen.jsonl" 2>/dev/null
"$NF_BIN" run -m "$M0" -t 1 "${args[@]}" >"$T/run.jsonl" 2>/dev/null
spec_same_ids "$T/gen.jsonl" "$T/run.jsonl" ctx
check "stories: speculative gen into the context limit equals run" $?
for seed in 1 2 3; do
    args=(-p "$P" -n 40 --temp 0.8 --seed $seed --json)
    "$NF_BIN" gen --run-dir "$R" "${args[@]}" >"$T/gen.jsonl" 2>/dev/null
    "$NF_BIN" run -m "$M0" -t 1 "${args[@]}" >"$T/run.jsonl" 2>/dev/null
    spec_same_ids "$T/gen.jsonl" "$T/run.jsonl"
    check "stories: seeded sampling ($seed) with lookup equals run" $?
done
"$NF_BIN" down --run-dir "$R" >/dev/null 2>&1

# 3. zoo-Q4_K_M without --lookup: gen --lookup on the prompt that ends in eog equals run.
"$NF_BIN" up -m "$T/m/zoo.gguf" --ram 256M -t 1 --run-dir "$R" >/dev/null 2>"$T/up.err"
check "zoo: up exits 0" $?
P="One day, a big bird flew"
args=(-p "$P" -n 40 --temp 0 --json)
"$NF_BIN" gen --run-dir "$R" --lookup "${args[@]}" >"$T/gen.jsonl" 2>/dev/null
check "zoo: gen --lookup exits 0" $?
"$NF_BIN" run -m "$Z0" -t 1 "${args[@]}" >"$T/run.jsonl" 2>/dev/null
spec_same_ids "$T/gen.jsonl" "$T/run.jsonl" eog
check "zoo: gen --lookup ends in eog with run's tokens" $?
spec_drafted "$T/gen.jsonl" 0
check "zoo: gen --lookup's summary has the draft counts" $?
"$NF_BIN" gen --run-dir "$R" "${args[@]}" >"$T/plain.jsonl" 2>/dev/null
! grep -q drafted <(tail -n 1 "$T/plain.jsonl")
check "zoo: without --lookup (the stack's default: off) no drafts" $?
"$NF_BIN" down --run-dir "$R" >/dev/null 2>&1

# 4. With continuous batching (up --parallel 3 --draft): speculating requests (the draft model,
#    lookup) run beside a plain one at once, each on its own slot, and each gives run's tokens.
"$NF_BIN" up -m "$T/m/stories.gguf" --ram 256M -t 1 --parallel 3 --draft "$T/m/stories.gguf" \
    --run-dir "$R" >/dev/null 2>"$T/up.err"
check "parallel: up --parallel 3 --draft exits 0" $?
P1="Tim had a red ball. He liked to play with it. Tim had a red ball. He liked"
P2="Once upon a time there was a little girl"
FLAGS=(--use-draft --lookup --no-lookup)
PROMPTS=("$P1" "$P1" "$P2")
for k in 0 1 2; do
    "$NF_BIN" gen --run-dir "$R" "${FLAGS[$k]}" -p "${PROMPTS[$k]}" -n 48 --temp 0 --json \
        >"$T/par$k.jsonl" 2>/dev/null &
done
wait
for k in 0 1 2; do
    "$NF_BIN" run -m "$M0" -t 1 -p "${PROMPTS[$k]}" -n 48 --temp 0 --json >"$T/run$k.jsonl" \
        2>/dev/null
    spec_same_ids "$T/par$k.jsonl" "$T/run$k.jsonl"
    check "parallel: gen ${FLAGS[$k]} beside the others equals run" $?
done
spec_drafted "$T/par0.jsonl" 1
check "parallel: the draft model drafted" $?
"$NF_BIN" down --run-dir "$R" >/dev/null 2>&1

# 5. Bad flags: --draft-max out of range; --lookup with --draft.
expect "run --draft-max 17 is refused" 2 "draft-max" \
    "$NF_BIN" run -m "$M0" -p hi --lookup --draft-max 17
expect "run --lookup with --draft is refused" 2 "not both" \
    "$NF_BIN" run -m "$M0" -p hi --lookup --draft "$M0"
exit $fail
