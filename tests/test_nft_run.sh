#!/usr/bin/env bash
# test_nft_run.sh - nanoflowctl run on a .nft: the same tokens and logits as on the source GGUF for
# every shared model, and a corrupted tile stops the run with a checksum error and no tokens.
set -u
BIN=${NF_BIN:?NF_BIN must point to nanoflowctl}
MODELS=${NF_SHARED_DIR:?}/models
command -v python3 >/dev/null || { echo "skip: python3 is needed to compare JSON"; exit 77; }
ls "$MODELS"/*.gguf >/dev/null 2>&1 || { echo "skip: no models in $MODELS"; exit 77; }
T=$(mktemp -d /tmp/test_nft_run.XXXXXX)
trap 'rm -rf "$T"' EXIT
fails=0
ok() { echo "ok   $1"; }
bad() { echo "FAIL $1"; fails=$((fails + 1)); }

# Every token line (id, piece, bytes, top-5 logits) and the summary's ids and text must be
# identical; timing fields are left out.
same_json() {
    python3 - "$1" "$2" <<'PY'
import json, sys
def load(p):
    rows = [json.loads(l) for l in open(p) if l.strip()]
    toks = [r for r in rows if 'gen_ids' not in r]
    summ = [r for r in rows if 'gen_ids' in r]
    if len(summ) != 1 or not toks:
        sys.exit('%s: expected token lines and one summary' % p)
    s = summ[0]
    return toks, {k: s[k] for k in ('prompt_ids', 'gen_ids', 'text', 'stop')}
a, b = load(sys.argv[1]), load(sys.argv[2])
if a != b:
    for i, (x, y) in enumerate(zip(a[0], b[0])):
        if x != y:
            sys.exit('step %d differs: gguf %s, nft %s' % (i, x, y))
    sys.exit('summaries differ: gguf %s, nft %s' % (a[1], b[1]))
PY
}

for gguf in "$MODELS"/*.gguf; do
    name=$(basename "$gguf" .gguf)
    nft="$T/$name.nft"
    # A small tile size gives every tensor several tiles, so reassembly is exercised.
    if ! "$BIN" convert "$gguf" "$nft" --tile-size 8K 2>"$T/err"; then
        bad "convert $name: $(cat "$T/err")"
        continue
    fi
    for prompt in "Once upon a time" "Sam had a red ball.
He"; do
        args=(run --json --top-logits 5 --temp 0 -n 16 -t 2 -p "$prompt")
        "$BIN" "${args[@]}" --model "$gguf" >"$T/a.json" 2>"$T/a.err" || { bad "run $name gguf: $(cat "$T/a.err")"; continue; }
        "$BIN" "${args[@]}" --model "$nft" >"$T/b.json" 2>"$T/b.err" || { bad "run $name nft: $(cat "$T/b.err")"; continue; }
        if msg=$(same_json "$T/a.json" "$T/b.json" 2>&1); then ok "$name: same gen_ids and top logits (${prompt%%
*})"; else bad "$name: $msg"; fi
    done
done

# A flipped byte inside a tile: run exits non-zero naming the tile, and prints no token.
s="$T/stories260K.nft"
if [ -r "$s" ]; then
    for kind in 10 5 0; do # ffn, attn_q, embd
        cp "$s" "$T/bad.nft"
        read -r toff off < <(python3 - "$T/bad.nft" "$kind" <<'PY'
import struct, sys
d = open(sys.argv[1], 'rb').read()
index_off, n_tiles = struct.unpack_from('<QQ', d, 48)
for i in range(n_tiles):
    off, size, _, layer, kind = struct.unpack_from('<QQQIH', d, index_off + 64 * i)
    if kind == int(sys.argv[2]):
        print(off, off + size // 3)
        break
PY
)
        printf '\x5a' | dd of="$T/bad.nft" bs=1 seek="$off" conv=notrunc status=none
        "$BIN" run --model "$T/bad.nft" -p "Once upon a time" -n 8 --temp 0 >"$T/out" 2>"$T/err"
        rc=$?
        if [ $rc -eq 0 ]; then bad "corrupt tile kind $kind: run exited 0"; fi
        if [ -s "$T/out" ]; then bad "corrupt tile kind $kind: run printed '$(cat "$T/out")'"; fi
        if grep -q "checksum mismatch" "$T/err" && grep -q "#0 (id [0-9]*, offset $toff," "$T/err"; then
            ok "corrupt tile kind $kind: exit $rc, checksum error names the tile"
        else
            bad "corrupt tile kind $kind: stderr was: $(cat "$T/err")"
        fi
    done
else
    bad "no stories260K.nft to corrupt"
fi

# convert --calibrate: verify accepts the file, inspect shows the calibration, run is unchanged;
# a flipped byte in the calibration section is caught.
S="$MODELS/stories260K.gguf"
if [ -r "$S" ]; then
    printf 'Once upon a time, there was a little girl. She liked to play in the park.\n%.0s' 1 2 3 4 >"$T/calib.txt"
    if "$BIN" convert "$S" "$T/c.nft" --calibrate "$T/calib.txt" 2>"$T/err"; then
        "$BIN" verify "$T/c.nft" >"$T/out" 2>&1 && ok "verify accepts a calibrated file" || bad "verify calibrated: $(cat "$T/out")"
        "$BIN" inspect "$T/c.nft" >"$T/out" 2>&1
        if grep -q "^calibration: [1-9][0-9]* tokens" "$T/out" && grep -q "^4  *[0-9]" "$T/out"; then
            ok "inspect shows the calibration"; else bad "inspect: $(cat "$T/out")"; fi
        "$BIN" run --json --top-logits 5 --temp 0 -n 16 -t 2 -p "Once upon a time" --model "$S" >"$T/a.json" 2>&1
        "$BIN" run --json --top-logits 5 --temp 0 -n 16 -t 2 -p "Once upon a time" --model "$T/c.nft" >"$T/b.json" 2>&1
        if msg=$(same_json "$T/a.json" "$T/b.json" 2>&1); then ok "calibrated file runs the same"; else bad "calibrated run: $msg"; fi
        coff=$(python3 -c "import struct,sys; print(struct.unpack_from('<Q', open(sys.argv[1],'rb').read(), 152)[0])" "$T/c.nft")
        printf '\x01' | dd of="$T/c.nft" bs=1 seek=$((coff + 60)) conv=notrunc status=none
        if ! "$BIN" verify "$T/c.nft" >"$T/out" 2>&1 && grep -q "calibration section checksum mismatch" "$T/out"; then
            ok "corrupt calibration refused"; else bad "corrupt calibration: $(cat "$T/out")"; fi
    else
        bad "convert --calibrate: $(cat "$T/err")"
    fi
    "$BIN" convert "$MODELS/moe-Q8_0.gguf" "$T/m.nft" --calibrate "$T/calib.txt" 2>"$T/err"
    if [ $? -eq 1 ] && grep -q "MoE" "$T/err" && [ ! -e "$T/m.nft" ] && ! ls "$T"/m.nft.tmp-* >/dev/null 2>&1; then
        ok "calibrate refuses MoE, leaves no file"; else bad "calibrate MoE: $(cat "$T/err")"; fi
fi

[ $fails -eq 0 ] && echo "all passed" || echo "$fails failed"
[ $fails -eq 0 ]
