#!/usr/bin/env bash
# test_cli_convert.sh - nanoflowctl convert / verify / inspect end to end: success paths, a
# corrupted tile named by verify, usage and runtime error exits, no temporary file left behind.
set -u
BIN=${NF_BIN:?NF_BIN must point to nanoflowctl}
MODELS=${NF_SHARED_DIR:?}/models
[ -r "$MODELS/stories260K.gguf" ] || { echo "skip: no $MODELS/stories260K.gguf"; exit 77; }
T=$(mktemp -d /tmp/test_cli_convert.XXXXXX)
fails=0
check() { # check NAME EXPECTED_EXIT COMMAND...
    local name=$1 want=$2
    shift 2
    "$@" >"$T/out" 2>"$T/err"
    local rc=$?
    if [ $rc -ne "$want" ]; then
        echo "FAIL $name: exit $rc, expected $want"; cat "$T/out" "$T/err"; fails=$((fails + 1))
    else
        echo "ok   $name"
    fi
}
expect() { # expect NAME FILE PATTERN
    if grep -q -- "$3" "$2"; then echo "ok   $1"; else
        echo "FAIL $1: '$3' not in:"; cat "$2"; fails=$((fails + 1)); fi
}

check "convert stories260K" 0 "$BIN" convert "$MODELS/stories260K.gguf" "$T/s.nft" --tile-size 8K
check "verify clean file" 0 "$BIN" verify "$T/s.nft"
expect "verify says OK" "$T/out" "OK"
check "inspect" 0 "$BIN" inspect "$T/s.nft"
expect "inspect lists ffn tiles" "$T/out" "^ffn "
expect "inspect shows predictor share" "$T/out" "predictors: .* of the weights"
expect "inspect shows 90% sparsity" "$T/out" "90% FFN sparsity"
check "inspect --json" 0 "$BIN" inspect --json "$T/s.nft"
expect "json has token_bytes" "$T/out" '"token_bytes":{"0":'
check "convert MoE with --rank and --f32" 0 "$BIN" convert "$MODELS/moe-Q4_K_M.gguf" "$T/m.nft" --rank 4 --f32
check "verify MoE" 0 "$BIN" verify "$T/m.nft"

# Flip one byte inside an FFN tile: verify fails and names it (layer, kind, index, offset).
off=$(command -v python3 >/dev/null && python3 - "$T/s.nft" <<'PY'
import struct, sys
d = open(sys.argv[1], 'rb').read()
index_off, n_tiles = struct.unpack_from('<QQ', d, 48)
for i in range(n_tiles):
    off, size, _, layer, kind = struct.unpack_from('<QQQIH', d, index_off + 64 * i)
    if kind == 10 and layer == 2:
        print(off + size // 2)
        break
PY
)
if [ -z "$off" ]; then echo "FAIL could not locate an ffn tile"; fails=$((fails + 1)); else
    printf '\xff' | dd of="$T/s.nft" bs=1 seek="$off" conv=notrunc status=none
    check "verify corrupted file" 1 "$BIN" verify "$T/s.nft"
    expect "verify names the tile" "$T/err" "layer 2 ffn #0 (id [0-9]*, offset [0-9]*"
    expect "verify says checksum" "$T/err" "checksum mismatch"
fi

# Errors: usage (2) and runtime (1), with no output or temporary file left.
check "convert without args" 2 "$BIN" convert
check "convert bad tile size" 2 "$BIN" convert "$MODELS/stories260K.gguf" "$T/x.nft" --tile-size 12
check "convert bad rank" 2 "$BIN" convert "$MODELS/stories260K.gguf" "$T/x.nft" --rank zero
check "convert unknown flag" 2 "$BIN" convert "$MODELS/stories260K.gguf" "$T/x.nft" --bogus
check "convert rank too large" 1 "$BIN" convert "$MODELS/stories260K.gguf" "$T/x.nft" --rank 1000
expect "rank refusal says why" "$T/err" "rank 1000 is outside"
check "convert missing input" 1 "$BIN" convert "$T/none.gguf" "$T/x.nft"
head -c 5000 "$MODELS/stories260K.gguf" >"$T/trunc.gguf"
check "convert truncated input" 1 "$BIN" convert "$T/trunc.gguf" "$T/x.nft"
check "convert not a gguf" 1 "$BIN" convert "$T/s.nft" "$T/x.nft"
[ ! -e "$T/x.nft" ] && [ -z "$(ls "$T" | grep tmp-)" ] && echo "ok   no output or temp file after failures" ||
    { echo "FAIL leftovers: $(ls "$T")"; fails=$((fails + 1)); }
check "verify missing file" 1 "$BIN" verify "$T/none.nft"
check "verify a gguf" 1 "$BIN" verify "$MODELS/stories260K.gguf"
expect "verify says it is a GGUF" "$T/err" "this is a GGUF model, not a .nft tile file"
check "inspect no args" 2 "$BIN" inspect
check "verify --help" 0 "$BIN" verify --help

# An interrupted convert leaves nothing under the final name (SIGTERM while writing).
"$BIN" convert "$MODELS/zoo-F16.gguf" "$T/int.nft" --tile-size 4K 2>/dev/null &
pid=$!
kill -TERM $pid 2>/dev/null
wait $pid 2>/dev/null
if [ -e "$T/int.nft" ] && ! "$BIN" verify "$T/int.nft" >/dev/null 2>&1; then
    echo "FAIL interrupted convert left a broken $T/int.nft"; fails=$((fails + 1))
elif ls "$T" | grep -q 'int.nft.tmp-'; then
    echo "FAIL interrupted convert left a temporary file"; fails=$((fails + 1))
else
    echo "ok   interrupted convert leaves no partial file"
fi

rm -rf "$T"
[ $fails -eq 0 ] && echo "all passed" || echo "$fails failed"
[ $fails -eq 0 ]
