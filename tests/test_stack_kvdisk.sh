#!/usr/bin/env bash
# test_stack_kvdisk.sh - the KV cache on disk through the stack (`up --kv-offload on`): with
# blocks of 4 positions (nearly every position is read back from the file) stories260K gives the
# golden greedy tokens of all 8 prompts and the same `gen --json` lines as `run`; so do
# zoo-Q4_K_M and moe-Q4_K_M (blocks of 8), and zoo-Q8_0 with a q8_0 / q4_0 KV cache on disk;
# bad flags are refused; `down` removes the file.
# test_stack_kvdisk_crash.sh has auto mode, the free-disk check and the kill -9 case.
set -u
. "$(dirname "$0")/lib.sh"
: "${NF_BIN:?NF_BIN must point to nanoflowctl}"
: "${NF_SHARED_DIR:?NF_SHARED_DIR must point to the shared directory}"
need_stories
need_daemons
T=$(mktemp -d)
export XDG_CACHE_HOME="$T/cache" # the index of the read-only shared models goes here
cleanup() {
    for r in "$T"/run-*; do
        [ -d "$r" ] && "$NF_BIN" down --run-dir "$r" >/dev/null 2>&1
    done
    rm -rf "$T"
}
trap cleanup EXIT

expect "up --kv-offload bad refused" 2 "expects auto, on or off" "$NF_BIN" up -m "$M0" \
    --kv-offload maybe
expect "up --kv-block 0 refused" 2 "expects an integer" "$NF_BIN" up -m "$M0" --kv-block 0
expect "up --kv-dir missing refused" 2 "kv-dir $T/nowhere" "$NF_BIN" up -m "$M0" \
    --kv-dir "$T/nowhere"

# 1. stories260K, KV on disk in blocks of 4: every golden prompt.
R="$T/run-stories"
"$NF_BIN" up -m "$M0" --ram 64M -t 1 -c 128 --kv-offload on --kv-block 4 --run-dir "$R" \
    >"$T/up.out" 2>"$T/up.err"
check "stories: up --kv-offload on exits 0" $?
grep -q "KV cache on disk: $R/nanoflow-[0-9a-f]*.kv (.*blocks of 4 positions" "$T/up.out"
check "stories: up reports the KV file" $?
KV=$(sed -n 's/.*KV cache on disk: \([^ ]*\) .*/\1/p' "$T/up.out")
[ -f "$KV" ]
check "stories: the KV file exists" $?
# (python3 starts slowly on a loaded machine: the prompts are cut out and the outputs checked
# in one call each.)
python3 - "$G" "$T" <<'PY'
import json, sys
for i, line in enumerate(open(sys.argv[1], encoding="utf-8"), 1):
    g = json.loads(line)
    open(f"{sys.argv[2]}/golden{i}.jsonl", "w").write(line)
    open(f"{sys.argv[2]}/prompt{i}.txt", "w").write(g["prompt"])
    open(f"{sys.argv[2]}/n{i}", "w").write(str(len(g["gen_ids"])))
PY
for i in 1 2 3 4 5 6 7 8; do
    ARGS=(-f "$T/prompt$i.txt" -n "$(cat "$T/n$i")" --temp 0 --json --top-logits 5)
    "$NF_BIN" gen --run-dir "$R" "${ARGS[@]}" >"$T/gen$i.jsonl" 2>"$T/gen.err"
    check "stories prompt $i: gen exits 0" $?
    "$NF_BIN" run -m "$M0" -t 1 -c 128 "${ARGS[@]}" >"$T/run$i.jsonl" 2>/dev/null
done
python3 - "$T" <<'PY'
import json, sys
for i in range(1, 9):
    d = sys.argv[1]
    gen = [json.loads(l) for l in open(f"{d}/gen{i}.jsonl", encoding="utf-8")]
    run = [json.loads(l) for l in open(f"{d}/run{i}.jsonl", encoding="utf-8")]
    golden = json.loads(open(f"{d}/golden{i}.jsonl").readline())
    assert len(gen) == len(run) and gen[:-1] == run[:-1], f"prompt {i}: token lines differ"
    g, r = gen[-1], run[-1]
    assert g["prompt_ids"] == r["prompt_ids"] == golden["prompt_ids"], f"prompt {i}: prompt_ids"
    assert g["gen_ids"] == r["gen_ids"] == golden["gen_ids"], f"prompt {i}: gen_ids"
    assert g["text"] == r["text"], f"prompt {i}: text"
PY
check "stories: all 8 prompts with the KV on disk equal run and the golden" $?
# A longer greedy story: 100 positions, 25 blocks per layer written and read back.
"$NF_BIN" gen --run-dir "$R" -p "Once upon a time" -n 100 --temp 0 >"$T/gen.txt" 2>/dev/null
"$NF_BIN" run -m "$M0" -t 1 -c 128 -p "Once upon a time" -n 100 --temp 0 >"$T/run.txt" 2>/dev/null
cmp -s "$T/gen.txt" "$T/run.txt" && [ -s "$T/gen.txt" ]
check "stories: 100 tokens with the KV on disk equal run's" $?
"$NF_BIN" down --run-dir "$R" >/dev/null 2>&1
check "stories: down exits 0" $?
[ ! -e "$KV" ]
check "stories: down removed the KV file" $?

# 2. A quantized zoo model and a MoE model (blocks of 8): gen equals run line for line; and a
# quantized KV cache on disk (zoo-Q8_0, -ctk q8_0 -ctv q4_0: rows of 136 and 72 bytes) equals
# run with the same types.
for m in zoo-Q4_K_M moe-Q4_K_M zoo-Q8_0; do
    R="$T/run-$m"
    CT=()
    [ "$m" = zoo-Q8_0 ] && CT=(-ctk q8_0 -ctv q4_0)
    "$NF_BIN" up -m "$NF_SHARED_DIR/models/$m.gguf" --ram 128M -t 1 -c 128 --kv-offload on \
        --kv-block 8 "${CT[@]}" --run-dir "$R" >"$T/up.out" 2>"$T/up.err"
    check "$m: up --kv-offload on ${CT[*]} exits 0" $?
    if [ ${#CT[@]} -gt 0 ]; then
        grep -q "KV cache K q8_0, V q4_0" "$T/up.out" && grep -q "KV cache on disk" "$T/up.out"
        check "$m: up plans a q8_0 / q4_0 KV cache on disk" $?
    fi
    ARGS=(-p "Once upon a time" -n 100 --temp 0 --json --top-logits 3)
    "$NF_BIN" gen --run-dir "$R" "${ARGS[@]}" >"$T/gen-$m.jsonl" 2>/dev/null
    "$NF_BIN" run -m "$NF_SHARED_DIR/models/$m.gguf" -t 1 -c 128 "${ARGS[@]}" "${CT[@]}" \
        >"$T/run-$m.jsonl" 2>/dev/null
    "$NF_BIN" down --run-dir "$R" >/dev/null 2>&1
done
python3 - "$T" <<'PY'
import json, sys
for m in ("zoo-Q4_K_M", "moe-Q4_K_M", "zoo-Q8_0"):
    gen = [json.loads(l) for l in open(f"{sys.argv[1]}/gen-{m}.jsonl", encoding="utf-8")]
    run = [json.loads(l) for l in open(f"{sys.argv[1]}/run-{m}.jsonl", encoding="utf-8")]
    assert len(gen) == len(run) and len(gen) > 20, (m, len(gen), len(run))
    assert gen[:-1] == run[:-1], f"{m}: token lines differ"
    assert gen[-1]["gen_ids"] == run[-1]["gen_ids"], m
PY
check "zoo-Q4_K_M, moe-Q4_K_M, zoo-Q8_0 (q8_0 / q4_0 KV): gen with the KV on disk equals run" $?

exit $fail
