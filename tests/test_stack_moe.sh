#!/usr/bin/env bash
# test_stack_moe.sh - the streaming stack on the shared Mixtral-style models: up, exact-mode
# gen --json equal to `nanoflowctl run --json` (token lines with top logits, gen_ids) and to the
# golden gen_ids, stats, down, and nothing of the stack left afterwards.
set -u
. "$(dirname "$0")/lib.sh"
: "${NF_BIN:?NF_BIN must point to nanoflowctl}"
: "${NF_SHARED_DIR:?NF_SHARED_DIR must point to the shared directory}"
need_python3 "to read JSON"
need_daemons
stack_tmp
ran=0

for name in moe-Q8_0 moe-Q4_K_M; do
    M="$NF_SHARED_DIR/models/$name.gguf"
    G="$NF_SHARED_DIR/golden/$name.jsonl"
    if [ ! -f "$M" ] || [ ! -f "$G" ]; then
        echo "note: $M or $G is missing, skipped"
        continue
    fi
    ran=1
    R="$T/run-$name"
    python3 -c "import json,sys; sys.stdout.write(json.loads(open(sys.argv[1]).readline())['prompt'])" \
        "$G" >"$T/prompt.txt"
    N=$(python3 -c "import json,sys; print(len(json.loads(open(sys.argv[1]).readline())['gen_ids']))" "$G")
    "$NF_BIN" up -m "$M" --ram 256M -t 1 --run-dir "$R" >"$T/up.out" 2>"$T/up.err"
    rc=$?
    check "$name: up exits 0 (rc $rc)" $rc
    if [ $rc -ne 0 ]; then
        cat "$T/up.err"
        continue
    fi
    ARGS=(-f "$T/prompt.txt" -n "$N" --temp 0 --json --top-logits 5)
    "$NF_BIN" gen --run-dir "$R" "${ARGS[@]}" >"$T/gen.jsonl" 2>"$T/gen.err"
    check "$name: gen --json exits 0" $?
    "$NF_BIN" run -m "$M" -t 1 "${ARGS[@]}" >"$T/run.jsonl" 2>/dev/null
    check "$name: run --json exits 0" $?
    gen_matches_run "$T/gen.jsonl" "$T/run.jsonl" "$G"
    check "$name: gen --json equals run --json and the golden gen_ids" $?
    "$NF_BIN" stats --run-dir "$R" --json >"$T/stats.json" 2>/dev/null
    python3 - "$T/stats.json" <<'PY'
import json, sys
s = json.load(open(sys.argv[1]))
text = json.dumps(s)
assert "recall" in text and "hit" in text, "stats lacks predictor recall or cache hit rate"
PY
    check "$name: stats --json reports recall and hit rate" $?
    "$NF_BIN" down --run-dir "$R" >/dev/null 2>"$T/down.err"
    check "$name: down exits 0" $?
    left=$(find "$R" -name '*.sock' -o -name '*.pid' | wc -l)
    [ "$left" -eq 0 ]
    check "$name: no socket or pid file left ($left)" $?
    ! pgrep -f "nanoflow-.*--run-dir $R( |$)" >/dev/null
    check "$name: no daemon left" $?
done
if [ $ran -eq 0 ]; then
    echo "skip: no MoE model in $NF_SHARED_DIR/models"
    exit 77
fi
exit $fail
