#!/usr/bin/env bash
# test_prefix_stack.sh - prefix reuse through the stack (`up --prefix-cache`, on by default), on
# stories260K, zoo-Q4_K_M and moe-Q4_K_M with `up -ub 8 --parallel 2`: a first `gen`, an
# unrelated one (which takes the other slot), then a second turn whose prompt is the first's
# prompt, its output and more words: it starts from the first's kept prompt (stats: a hit, the
# tokens reused are the first prompt's, all of them unless its last 8-token chunk had one token)
# and gives `run`'s cold output line for line, greedy and seeded; a prompt that diverges mid-way
# reuses the common part; with `--prefix-cache off` nothing is reused and the output is the same; a bad
# --prefix-cache value is refused. Stories260K again with the KV cache on disk in blocks of 4,
# and of 12 (a rollback that ends inside a block).
set -u
. "$(dirname "$0")/lib.sh"
: "${NF_BIN:?NF_BIN must point to nanoflowctl}"
: "${NF_SHARED_DIR:?NF_SHARED_DIR must point to the shared directory}"
need_stories
need_daemons
stack_tmp

expect "up --prefix-cache maybe refused" 2 "expects on or off" "$NF_BIN" up -m "$M0" \
    --prefix-cache maybe

P1="Once upon a time, there was a little girl named Lily. She loved to play outside in the park"
Q="The cat sat on the mat and looked at the big red ball that the dog had left."
P3="Once upon a time, there was a little girl named Lily. She had a big red ball and a cat"

# verify NAME OFF: one python3 run (slow to start on a loaded machine) checks a stack's outputs
# in $T: every ID.gen equals ID.run line for line (the summary's ids, text and stop; not its
# timings), and the change of compute's prefix_hits and prefix_reused between the stats taken
# before and after each request is what the rule of daemons/compute/gen.h gives: the common
# prefix of the prompt's ids and those the slot kept (the prompt the slot ran last, less its
# last token when that was a chunk of its own), at most the prompt's length less one, one less
# when a single token would be left before the end or a last one-token chunk, 0 below 16; or
# nothing with OFF. Slots: 1 and q take one each (q the other: the least recently used), 2 must
# take 1's, 2s 2's, and 3 (diverging mid-way) the slot with the longer reuse.
verify() {
    python3 - "$T" "$1" "$2" <<'PY'
import json, sys
T, name, off = sys.argv[1], sys.argv[2], sys.argv[3] == "off"
fail = 0
def check(what, ok):
    global fail
    print(("ok: " if ok else "FAIL: ") + name + ": " + what)
    fail |= not ok
def lines(p):
    return [json.loads(l) for l in open(p, encoding="utf-8")]
ids = {}
for r in ("1", "q", "2", "2s", "3"):
    gen, run = lines(f"{T}/{r}.gen"), lines(f"{T}/{r}.run")
    same = len(gen) == len(run) and gen[:-1] == run[:-1] and all(
        gen[-1][k] == run[-1][k] for k in ("prompt_ids", "gen_ids", "text", "stop"))
    check(f"gen {r} gives run's (cold) output, line for line", same)
    ids[r] = gen[-1]["prompt_ids"]
def reuse(kept, n):
    # nf_stream_prefix_kept and nf_stream_prefix_usable (common/stream.h) at ubatch 8
    k = kept[: len(kept) - (1 if len(kept) % 8 == 1 else 0)]
    l = 0
    while l < len(k) and l < len(n) and k[l] == n[l]:
        l += 1
    l = min(l, len(n) - 1)
    if len(n) - l - (1 if len(n) % 8 == 1 else 0) == 1:
        l -= 1
    return l if l >= 16 else 0
slots = []  # the prompts the two slots kept, as the requests ran
stats = [json.load(open(f"{T}/s{i}.stats"))["compute"] for i in range(6)]
for i, r in enumerate(("1", "q", "2", "2s", "3")):
    want = 0 if off else max([reuse(k, ids[r]) for k in slots] + [0])
    if not off:
        best = [k for k in slots if reuse(k, ids[r]) == want]
        if want and best:
            slots.remove(best[0])
        elif len(slots) == 2:
            slots.pop(0)
        slots.append(ids[r])
    got = (stats[i + 1]["prefix_hits"] - stats[i]["prefix_hits"],
           stats[i + 1]["prefix_reused"] - stats[i]["prefix_reused"])
    check(f"gen {r} reuses {want} prompt tokens (hits, reused: {got})", got == (int(want > 0), want))
if not off:
    check("the second turns and the diverging prompt hit",
          all(reuse(a, ids[b]) >= 16 for a, b in ((ids["1"], "2"), (ids["2"], "2s"), (ids["2s"], "3"))))
sys.exit(fail)
PY
    [ $? -eq 0 ] || fail=1
}

# prefix_check NAME MODEL [off|disk|disk12]: the scenario of the header on a stack of MODEL (with
# off: up --prefix-cache off, where nothing may be reused; with disk: the KV cache on disk in
# blocks of 4, `up --kv-offload on --kv-block 4`, so a kept prefix comes back from the file; with
# disk12: blocks of 12, so that the rollback to a kept prefix can end inside a block, which it
# reads back from the file while the blocks after it are given back).
prefix_check() {
    local name=$1 M=$2 mode=${3:-} off= R="$T/run-$1" rc text k=0
    local upf=(-m "$M" --ram 256M -t 1 -ub 8 --parallel 2 --run-dir "$R")
    [ "$mode" = off ] && off=off && upf+=(--prefix-cache off)
    [ "$mode" = disk ] && upf+=(--kv-offload on --kv-block 4)
    [ "$mode" = disk12 ] && upf+=(--kv-offload on --kv-block 12)
    "$NF_BIN" up "${upf[@]}" >"$T/up.out" 2>"$T/up.err"
    rc=$?
    check "$name: up exits 0 (rc $rc)" $rc
    if [ $rc -ne 0 ]; then
        cat "$T/up.err"
        return
    fi
    if [ "${mode#disk}" != "$mode" ]; then
        grep -q "KV cache on disk" "$T/up.out"
        check "$name: up puts the KV cache on disk" $?
    fi
    "$NF_BIN" stats --run-dir "$R" --json >"$T/s0.stats" 2>/dev/null
    # g ID PROMPT N [FLAGS...]: gen and run of PROMPT with the same flags into $T/ID.gen and
    # $T/ID.run (run's output depends on the model and the request only: the off stack reuses
    # it), then the stats into $T/sK.stats.
    g() {
        local id=$1 p=$2 n=$3
        shift 3
        "$NF_BIN" gen --run-dir "$R" -p "$p" -n "$n" --json --top-logits 3 "$@" >"$T/$id.gen" \
            2>"$T/$id.err" </dev/null
        check "$name: gen $id exits 0" $?
        k=$((k + 1))
        "$NF_BIN" stats --run-dir "$R" --json >"$T/s$k.stats" 2>/dev/null
        [ -n "$off" ] && [ -s "$T/$id.run" ] ||
            "$NF_BIN" run -m "$M" -t 1 -ub 8 -p "$p" -n "$n" --json --top-logits 3 "$@" \
                >"$T/$id.run" 2>/dev/null
    }
    g 1 "$P1" 20 --temp 0
    g q "$Q" 12 --temp 0
    # The second turn: P1, its output (run's text output: the generated text) and more.
    text=$("$NF_BIN" run -m "$M" -t 1 -ub 8 -p "$P1" -n 20 --temp 0 2>/dev/null)
    g 2 "$P1$text One day" 16 --temp 0
    g 2s "$P1$text One day" 16 --seed 9 --temp 0.8
    g 3 "$P3" 12 --temp 0
    verify "$name" "$off"
    if [ -z "$off" ]; then
        "$NF_BIN" stats --run-dir "$R" >"$T/stats.txt" 2>/dev/null
        grep -q "prefix hits" "$T/stats.txt" && grep -q "prompt tokens reused" "$T/stats.txt"
        check "$name: the stats table shows prefix hits and tokens reused" $?
    fi
    "$NF_BIN" down --run-dir "$R" >/dev/null 2>&1
}

prefix_check stories "$M0"
prefix_check stories-off "$M0" off
prefix_check stories-disk "$M0" disk
prefix_check stories-disk12 "$M0" disk12
for m in zoo-Q4_K_M moe-Q4_K_M; do
    if [ -f "$NF_SHARED_DIR/models/$m.gguf" ]; then
        prefix_check "$m" "$NF_SHARED_DIR/models/$m.gguf"
    else
        echo "note: $NF_SHARED_DIR/models/$m.gguf is missing, skipped"
    fi
done
exit $fail
