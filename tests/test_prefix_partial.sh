#!/usr/bin/env bash
# test_prefix_partial.sh - prefix reuse keeps a prompt that is not a multiple of the ubatch
# (daemons/compute/gen.h), through the stack on stories260K, with the KV cache in RAM and on disk
# (`--kv-offload on --kv-block 4`): a first turn, then a second whose prompt is the first's, its
# output and more words. At the stack's default ubatch the second turn reuses the whole first
# prompt (35 tokens, far from a multiple of the ubatch); at `-ub 8` it reuses all 35 tokens of a
# prompt whose last chunk had 3, all 39 of one whose last chunk had 7, and 48 of one of 49 (its
# last token was a chunk of its own: not kept); and a request of the 35-token prompt and a
# period (36 tokens) reuses 34 (a 35th would leave one token, a chunk of one where a cold run's
# has 4). stats' prefix_hits and prefix_reused say so, exactly, and every second turn gives
# `run`'s cold output line for line (ids, text, top logits).
set -u
. "$(dirname "$0")/lib.sh"
: "${NF_BIN:?NF_BIN must point to nanoflowctl}"
: "${NF_SHARED_DIR:?NF_SHARED_DIR must point to the shared directory}"
need_stories
need_daemons
need_python3 "to read JSON"
stack_tmp

BASE="Once upon a time, there was a little boy named Tom. He liked to run in the green park with his dog"
P35="$BASE"                                 # 35 tokens: 4 x 8 + 3
P39="$BASE and his cat"                     # 39 tokens: 4 x 8 + 7
P49="$BASE and his cat Max every day after" # 49 tokens: 6 x 8 + 1

# verify ID N WANT: turn 2 of case ID ($T/ID-2.gen) equals its cold run ($T/ID-2.run) line for
# line; turn 1 had N prompt tokens; the stats before and after turn 2 ($T/ID.s0, $T/ID.s1) show
# one hit and WANT tokens reused, which is also what the rule gives for the two prompts' ids.
verify() {
    python3 - "$T" "$@" <<'PY'
import json, sys
T, cid, n, want = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
fail = 0
def check(what, ok):
    global fail
    print(("ok: " if ok else "FAIL: ") + cid + ": " + what)
    fail |= not ok
def lines(p):
    return [json.loads(l) for l in open(p, encoding="utf-8")]
gen, run, first = lines(f"{T}/{cid}-2.gen"), lines(f"{T}/{cid}-2.run"), lines(f"{T}/{cid}-1.gen")
same = len(gen) == len(run) and gen[:-1] == run[:-1] and all(
    gen[-1][k] == run[-1][k] for k in ("prompt_ids", "gen_ids", "text", "stop"))
check("turn 2 gives run's (cold) output, line for line", same)
a, b = first[-1]["prompt_ids"], gen[-1]["prompt_ids"]
check(f"turn 1 has {n} prompt tokens ({len(a)})", len(a) == n)
check("turn 2's prompt starts with turn 1's", b[: len(a)] == a)
s0, s1 = (json.load(open(f"{T}/{cid}.s{i}"))["compute"] for i in (0, 1))
got = (s1["prefix_hits"] - s0["prefix_hits"], s1["prefix_reused"] - s0["prefix_reused"])
check(f"turn 2 reuses {want} of its {len(b)} prompt tokens (hits, reused: {got})",
      got == (1, want))
sys.exit(fail)
PY
    [ $? -eq 0 ] || fail=1
}

# turns ID P N WANT UB [SUFFIX]: turn 1 (P, 12 tokens) and turn 2 (P, turn 1's text, " One day";
# or P and SUFFIX; 8 tokens) on the stack at $R, turn 2 also cold with `run` (-ub UB, or the
# default when 0).
turns() {
    local id=$1 p=$2 n=$3 want=$4 ub=$5 suffix=${6:-} text p2
    local ubf=()
    [ "$ub" -gt 0 ] && ubf=(-ub "$ub")
    "$NF_BIN" gen --run-dir "$R" -p "$p" -n 12 --temp 0 --json >"$T/$id-1.gen" 2>"$T/$id.err" \
        </dev/null
    check "$id: turn 1 exits 0" $?
    text=$(python3 -c "import json,sys; print(json.loads(open(sys.argv[1]).read().splitlines()[-1])['text'], end='')" "$T/$id-1.gen")
    p2="$p$text One day"
    [ -n "$suffix" ] && p2="$p$suffix"
    "$NF_BIN" stats --run-dir "$R" --json >"$T/$id.s0" 2>/dev/null
    "$NF_BIN" gen --run-dir "$R" -p "$p2" -n 8 --temp 0 --json --top-logits 3 >"$T/$id-2.gen" \
        2>>"$T/$id.err" </dev/null
    check "$id: turn 2 exits 0" $?
    "$NF_BIN" stats --run-dir "$R" --json >"$T/$id.s1" 2>/dev/null
    "$NF_BIN" run -m "$M0" -t 1 "${ubf[@]}" -p "$p2" -n 8 --temp 0 --json --top-logits 3 \
        >"$T/$id-2.run" 2>/dev/null
    verify "$id" "$n" "$want"
}

# stack NAME UB [UP FLAGS...]: a stack of stories260K with one slot (-ub UB, or the default).
stack() {
    local name=$1 ub=$2 rc
    shift 2
    R="$T/run-$name"
    local ubf=()
    [ "$ub" -gt 0 ] && ubf=(-ub "$ub")
    "$NF_BIN" up -m "$M0" --ram 256M -t 1 --parallel 1 "${ubf[@]}" --run-dir "$R" "$@" \
        >"$T/up.out" 2>"$T/up.err"
    rc=$?
    check "$name: up exits 0 (rc $rc)" $rc
    [ $rc -eq 0 ] || cat "$T/up.err"
    return $rc
}

for kv in ram disk; do
    kvf=()
    [ "$kv" = disk ] && kvf=(--kv-offload on --kv-block 4)
    if stack "default-$kv" 0 "${kvf[@]}"; then
        turns "default-$kv-35" "$P35" 35 35 0
        "$NF_BIN" down --run-dir "$R" >/dev/null 2>&1
    fi
    if stack "ub8-$kv" 8 "${kvf[@]}"; then
        turns "ub8-$kv-35" "$P35" 35 35 8
        turns "ub8-$kv-49" "$P49" 49 48 8
        turns "ub8-$kv-39" "$P39" 39 39 8
        turns "ub8-$kv-36" "$P35" 35 34 8 "."
        "$NF_BIN" down --run-dir "$R" >/dev/null 2>&1
    fi
done
exit $fail
