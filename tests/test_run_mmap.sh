#!/usr/bin/env bash
# test_run_mmap.sh - nanoflowctl run --mmap (weights served from a read-only mapping of the GGUF)
# gives the same --json output as run with the weights read into RAM; a .nft is refused.
set -u
. "$(dirname "$0")/lib.sh"
: "${NF_BIN:?NF_BIN must point to nanoflowctl}"
: "${NF_SHARED_DIR:?NF_SHARED_DIR must point to the shared directory}"
MD="$NF_SHARED_DIR/models"
if [ ! -f "$MD/stories260K.gguf" ]; then
    echo "skip: $MD/stories260K.gguf is missing"
    exit 77
fi
need_python3 "to compare the JSON output"
T=$(mktemp -d)
trap 'rm -rf "$T"' EXIT

# The JSON Lines without the timing fields (the only part that may differ between two runs).
strip_timings() {
    python3 - "$1" <<'PY'
import json, sys
for line in open(sys.argv[1], encoding="utf-8"):
    o = json.loads(line)
    o.pop("prompt_tok_s", None)
    o.pop("decode_tok_s", None)
    print(json.dumps(o, sort_keys=True))
PY
}

# 1. Identical tokens, pieces, top logits and summary: greedy and seeded sampling, a dense model,
#    a quantized one and a MoE one when present.
for name in stories260K zoo-Q4_0 moe-Q4_K_M; do
    M="$MD/$name.gguf"
    [ -f "$M" ] || { echo "note: $M missing, not compared"; continue; }
    for samp in "--temp 0 --seed 1" "--temp 0.9 --seed 7"; do
        # shellcheck disable=SC2086
        "$NF_BIN" run -m "$M" -p "Once upon a time" $samp -n 16 --json --top-logits 4 -t 2 \
            >"$T/ram.jsonl" 2>"$T/ram.err"
        r1=$?
        # shellcheck disable=SC2086
        "$NF_BIN" run --mmap -m "$M" -p "Once upon a time" $samp -n 16 --json --top-logits 4 -t 2 \
            >"$T/map.jsonl" 2>"$T/map.err"
        r2=$?
        check "$name ($samp): run and run --mmap exit 0" $((r1 | r2))
        strip_timings "$T/ram.jsonl" >"$T/ram.txt" && strip_timings "$T/map.jsonl" >"$T/map.txt"
        check "$name ($samp): output parses" $?
        [ "$(wc -l <"$T/ram.txt")" -eq 17 ] && cmp -s "$T/ram.txt" "$T/map.txt"
        check "$name ($samp): run --mmap --json equals run --json (16 tokens + summary)" $?
    done
done

# 2. Text mode too (the default output path).
M="$MD/stories260K.gguf"
"$NF_BIN" run -m "$M" -p "Lily" --temp 0 -n 40 -t 1 >"$T/a.txt" 2>/dev/null &&
    "$NF_BIN" run --mmap -m "$M" -p "Lily" --temp 0 -n 40 -t 1 >"$T/b.txt" 2>/dev/null &&
    [ -s "$T/a.txt" ] && cmp -s "$T/a.txt" "$T/b.txt"
check "text output equal" $?

# 3. A .nft tile file cannot be mapped: refused with a reason, exit 1.
"$NF_BIN" convert "$M" "$T/s.nft" >/dev/null 2>&1
check "convert stories260K to a .nft" $?
"$NF_BIN" run --mmap -m "$T/s.nft" -n 2 >/dev/null 2>"$T/nft.err"
rc=$?
[ $rc -eq 1 ] && grep -q "cannot be mapped" "$T/nft.err"
check "run --mmap on a .nft is refused with a reason (exit $rc)" $?

# 4. A missing file is an error naming it.
"$NF_BIN" run --mmap -m "$T/nope.gguf" -n 1 >/dev/null 2>"$T/miss.err"
[ $? -eq 1 ] && grep -q "nope.gguf" "$T/miss.err"
check "missing model refused" $?

# 5. --mmap shows in run --help.
"$NF_BIN" run --help | grep -q -- "--mmap"
check "--help lists --mmap" $?

exit $fail
