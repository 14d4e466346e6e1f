#!/usr/bin/env bash
# bench_prefix.sh - prefix reuse across chat turns (`up --prefix-cache`, issue 15): on one
# stack with the prefix cache on and on one with it off, a first turn (a history of about
# 2,000 tokens: the start of docs/architecture.md, 20 tokens generated) and a second turn (the
# history, the first turn's output and about 50 new tokens, 20 generated), each timed from the
# start of `gen` to its first token line (time to first token, the client's view); prints one
# table with the prompt tokens, those reused (stats' prefix_reused), the time to first token
# and the second turn's as a share of the first's.
# Usage: bench_prefix.sh NANOFLOWCTL MODEL.gguf [RAM] [CTX] [HISTORY_CHARS] [UP FLAGS...]
# (defaults 1G, 4096, 4230: 2,027 tokens with mkmodel's synthetic vocabulary). MODES="on" runs
# the prefix cache's stack only (default "on off": a cold turn 1 of the full 7B takes minutes).
# With both modes it also says whether turn 2 generated the same ids with the prefix reused as
# cold. KEEP=DIR copies each turn's output (MODE-TURN.json: the last line has prompt_ids and
# gen_ids) into DIR, so that runs split over several invocations can be compared. Not a test.
set -u
BIN=${1:?usage: bench_prefix.sh NANOFLOWCTL MODEL.gguf [RAM] [CTX] [HISTORY_CHARS]}
M=${2:?usage: bench_prefix.sh NANOFLOWCTL MODEL.gguf [RAM] [CTX] [HISTORY_CHARS]}
RAM=${3:-1G}
CTX=${4:-4096}
CHARS=${5:-4230}
shift 5 2>/dev/null || shift $#
SRC="$(dirname "$0")/../../docs/architecture.md"
T=$(mktemp -d)
trap 'for r in on off; do "$BIN" down --run-dir "$T/run-$r" >/dev/null 2>&1; done; rm -rf "$T"' EXIT
HIST=$(head -c "$CHARS" "$SRC")
NEW=" Now, in a few words: which daemon reads the tiles from the disk, and why?"

# turn RUN ID PROMPT: gen of PROMPT (20 tokens, greedy); its time to first token in ms goes to
# $T/ID.ttft, its output to $T/ID.json, the stats before and after to $T/ID.s0 and $T/ID.s1.
turn() {
    local r=$1 id=$2 s
    "$BIN" stats --run-dir "$r" --json >"$T/$id.s0"
    s=$(date +%s%N)
    "$BIN" gen --run-dir "$r" -p "$3" -n 20 --temp 0 --json --timeout 1200 2>"$T/$id.err" | {
        IFS= read -r line
        echo $((($(date +%s%N) - s) / 1000000)) >"$T/$id.ttft"
        printf '%s\n' "$line"
        cat
    } >"$T/$id.json"
    "$BIN" stats --run-dir "$r" --json >"$T/$id.s1"
}

MODES=${MODES:-on off}
for mode in $MODES; do
    R="$T/run-$mode"
    if ! "$BIN" up -m "$M" --ram "$RAM" -c "$CTX" --parallel 1 --prefix-cache "$mode" \
        --run-dir "$R" "$@" >"$T/up.out" 2>&1; then
        cat "$T/up.out"
        exit 1
    fi
    turn "$R" "$mode-1" "$HIST"
    TEXT=$(python3 -c "import json,sys; print(json.loads(open(sys.argv[1]).read().splitlines()[-1])['text'], end='')" "$T/$mode-1.json")
    turn "$R" "$mode-2" "$HIST$TEXT$NEW"
    "$BIN" down --run-dir "$R" >/dev/null 2>&1
    if [ -n "${KEEP:-}" ]; then
        mkdir -p "$KEEP" && cp "$T/$mode-1.json" "$T/$mode-2.json" "$KEEP/"
    fi
done

python3 - "$T" "$M" $MODES <<'PY'
import json, sys
T, model, modes = sys.argv[1], sys.argv[2], sys.argv[3:]
print(f"model {model}")
print(f"{'prefix cache':<13} {'turn':>4} {'prompt tokens':>13} {'reused':>6} {'first token, ms':>15} "
      f"{'vs turn 1':>9}")
for mode in modes:
    t1 = None
    for turn in (1, 2):
        base = f"{T}/{mode}-{turn}"
        lines = open(base + ".json").read().splitlines()
        if not lines:
            sys.exit(f"{mode}, turn {turn}: gen failed: {open(base + '.err').read().strip()}")
        out = json.loads(lines[-1])
        s0, s1 = (json.load(open(base + s))["compute"] for s in (".s0", ".s1"))
        reused = s1["prefix_reused"] - s0["prefix_reused"]
        ttft = int(open(base + ".ttft").read())
        t1 = t1 or ttft
        print(f"{mode:<13} {turn:>4} {len(out['prompt_ids']):>13} {reused:>6} {ttft:>15} "
              f"{100.0 * ttft / t1:>8.1f}%")
if "on" in modes and "off" in modes:
    ids = [json.loads(open(f"{T}/{m}-2.json").read().splitlines()[-1])["gen_ids"]
           for m in ("on", "off")]
    print(f"turn 2 ids, prefix reused vs cold: {'same' if ids[0] == ids[1] else 'DIFFERENT'} "
          f"({len(ids[0])} and {len(ids[1])} ids)")
PY
