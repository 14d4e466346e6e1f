#!/usr/bin/env bash
# test_cli_longtok.sh - texts that give more tokens than bytes: with a byte-fallback-only
# vocabulary (mkmodel's synthetic one) each space becomes three byte tokens. run, tokenize and
# convert --calibrate must tokenize them whole (they used to size the id buffer from the byte
# count: run refused the prompt and calibration read past the buffer).
set -u
. "$(dirname "$0")/lib.sh"
: "${NF_BIN:?NF_BIN must point to nanoflowctl}"
need_python3 "to read JSON"
T=$(mktemp -d)
trap 'rm -rf "$T"' EXIT
"$NF_BIN" mkmodel "$T/m.gguf" --dim 32 --layers 2 --ffn 64 --heads 4 --kv-heads 2 --vocab 259 \
    --type q8_0 >/dev/null 2>"$T/err"
check "mkmodel a tiny byte-vocabulary model" $?
python3 -c "import sys; sys.stdout.write('a ' * 60 + 'b')" >"$T/p.txt" # 121 bytes

"$NF_BIN" tokenize -m "$T/m.gguf" "$(cat "$T/p.txt")" >"$T/tok.txt" 2>"$T/err"
check "tokenize exits 0" $?
n_tok=$(wc -w <"$T/tok.txt")
[ "$n_tok" -gt 121 ]
check "tokenize gives more tokens than bytes ($n_tok)" $?

"$NF_BIN" run -m "$T/m.gguf" -f "$T/p.txt" -n 4 --temp 0 --json >"$T/run.jsonl" 2>"$T/err"
check "run accepts the prompt (rc $?)" $?
python3 - "$T/run.jsonl" "$T/tok.txt" <<'PY'
import json, sys
lines = [json.loads(l) for l in open(sys.argv[1])]
want = [int(x) for x in open(sys.argv[2]).read().split()]
assert lines[-1]["prompt_ids"] == want, (len(lines[-1]["prompt_ids"]), len(want))
assert len(lines[-1]["gen_ids"]) == 4
PY
check "run's prompt_ids are tokenize's, 4 tokens generated" $?

"$NF_BIN" convert "$T/m.gguf" "$T/c.nft" --rank 4 --calibrate "$T/p.txt" >/dev/null 2>"$T/err"
rc=$?
check "convert --calibrate on the text exits 0 (rc $rc)" $rc
[ $rc -eq 0 ] || cat "$T/err"
"$NF_BIN" verify "$T/c.nft" >/dev/null 2>&1
check "the calibrated file verifies" $?
exit $fail
