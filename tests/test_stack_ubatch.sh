#!/usr/bin/env bash
# test_stack_ubatch.sh - prefill in ubatches through the stack: `up -ub N` for N = 1 (token by
# token), 7 (the longest golden prompt in three chunks) and 512 (one chunk) gives, on
# stories260K, the same `gen --json` lines as `run -ub N` and the golden's greedy tokens; compute
# reports the ubatch it runs with; a bad -ub is refused, and one too large for the budget is
# refused in one line that names the largest that fits.
set -u
. "$(dirname "$0")/lib.sh"
: "${NF_BIN:?NF_BIN must point to nanoflowctl}"
: "${NF_SHARED_DIR:?NF_SHARED_DIR must point to the shared directory}"
need_stories
need_daemons
T=$(mktemp -d)
export XDG_CACHE_HOME="$T/cache" # the index of the read-only shared model goes here
cleanup() {
    for r in "$T"/run-*; do
        [ -d "$r" ] && "$NF_BIN" down --run-dir "$r" >/dev/null 2>&1
    done
    rm -rf "$T"
}
trap cleanup EXIT

expect "up -ub 0 refused" 2 "expects an integer in \[1, 4096\]" "$NF_BIN" up -m "$M0" -ub 0
expect "up --ubatch-size 4097 refused" 2 "expects an integer" "$NF_BIN" up -m "$M0" \
    --ubatch-size 4097
expect "up -ub without a value refused" 2 "" "$NF_BIN" up -m "$M0" -ub
# 4096 tokens of stories260K's activations take ~19 MiB: over a 40 MiB budget's room.
expect "up -ub 4096 over the budget refused" 1 "at most [0-9]* does; lower -ub" \
    "$NF_BIN" up -m "$M0" --ram 40M -t 1 -ub 4096 --run-dir "$T/run-big"
[ "$(grep -c "nanoflowctl up" "$T/err")" -eq 1 ] && ! grep -q "a RAM budget" "$T/err"
check "the refusal is one line" $?

# The golden's longest prompt (line 6: 16 tokens with BOS).
sed -n 6p "$G" >"$T/golden.jsonl"
python3 -c "import json,sys; sys.stdout.write(json.loads(open(sys.argv[1]).readline())['prompt'])" \
    "$T/golden.jsonl" >"$T/prompt.txt"
N=$(python3 -c "import json,sys; print(len(json.loads(open(sys.argv[1]).readline())['gen_ids']))" \
    "$T/golden.jsonl")
ARGS=(-f "$T/prompt.txt" -n "$N" --temp 0 --json --top-logits 5)
for ub in 1 7 512; do
    R="$T/run-$ub"
    "$NF_BIN" up -m "$M0" --ram 256M -t 1 -ub "$ub" --run-dir "$R" >"$T/up.out" 2>"$T/up.err"
    rc=$?
    check "-ub $ub: up exits 0 (rc $rc)" $rc
    if [ $rc -ne 0 ]; then
        cat "$T/up.err"
        continue
    fi
    grep -q "ubatch $ub," "$R/compute.log"
    check "-ub $ub: compute runs with ubatch $ub" $?
    "$NF_BIN" gen --run-dir "$R" "${ARGS[@]}" >"$T/gen.jsonl" 2>"$T/gen.err"
    check "-ub $ub: gen --json exits 0" $?
    "$NF_BIN" run -m "$M0" -t 1 -ub "$ub" "${ARGS[@]}" >"$T/run.jsonl" 2>/dev/null
    check "-ub $ub: run --json exits 0" $?
    gen_matches_run "$T/gen.jsonl" "$T/run.jsonl" "$T/golden.jsonl"
    check "-ub $ub: gen equals run -ub $ub and the golden" $?
    "$NF_BIN" down --run-dir "$R" >/dev/null 2>&1
    check "-ub $ub: down exits 0" $?
done
exit $fail
