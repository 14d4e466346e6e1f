#!/usr/bin/env bash
# test_cli_split.sh - a split GGUF model (llama.cpp gguf-split layout, NAME-0000i-of-0000N.gguf)
# given by its first file: run (RAM and --mmap) and convert give what the whole file gives, the
# stack serves it, and a missing part, a part of another model and a wrong split.count are each
# refused with one line and a non-zero exit.
set -u
. "$(dirname "$0")/lib.sh"
: "${NF_BIN:?NF_BIN must point to nanoflowctl}"
: "${NF_SHARED_DIR:?NF_SHARED_DIR must point to the shared directory}"
MD="$NF_SHARED_DIR/models"
W="$MD/stories260K.gguf"
[ -f "$W" ] || { echo "skip: $W is missing"; exit 77; }
need_python3 "to split the model"
T=$(mktemp -d)
R="$T/run"
cleanup() {
    "$NF_BIN" down --run-dir "$R" >/dev/null 2>&1
    rm -rf "$T"
}
trap cleanup EXIT
export XDG_CACHE_HOME="$T/cache"

split() { gguf_split "$@"; } # tests/lib.sh

# one_line FILE: the error output is exactly one line.
one_line() { [ "$(wc -l <"$1")" -eq 1 ]; }

split "$W" "$T/s" 20
check "the splitter writes three parts" $?
S="$T/s-00001-of-00003.gguf"

# 1. run, in RAM and mapped: the same JSON (tokens, pieces, logits) as on the whole file.
for m in "" --mmap; do
    # shellcheck disable=SC2086
    "$NF_BIN" run $m -m "$W" -p "Once upon a time" --temp 0 -n 24 --json --top-logits 4 -t 1 |
        grep -v tok_s >"$T/w.jsonl"
    # shellcheck disable=SC2086
    "$NF_BIN" run $m -m "$S" -p "Once upon a time" --temp 0 -n 24 --json --top-logits 4 -t 1 |
        grep -v tok_s >"$T/s.jsonl"
    [ "$(wc -l <"$T/s.jsonl")" -eq 24 ] && cmp -s "$T/w.jsonl" "$T/s.jsonl"
    check "run ${m:-(RAM)}: split equals whole (24 tokens)" $?
done
"$NF_BIN" run -m "$W" -p "Lily" --temp 0 -n 32 -t 1 >"$T/w.txt" 2>/dev/null &&
    "$NF_BIN" run -m "$S" -p "Lily" --temp 0 -n 32 -t 1 >"$T/s.txt" 2>/dev/null &&
    [ -s "$T/w.txt" ] && cmp -s "$T/w.txt" "$T/s.txt"
check "run text: split equals whole" $?

# 2. convert: the same tiles (the .nft files are identical), verify passes, run on it is equal.
"$NF_BIN" convert "$W" "$T/w.nft" --tile-size 8K >/dev/null 2>&1 &&
    "$NF_BIN" convert "$S" "$T/s.nft" --tile-size 8K >/dev/null 2>"$T/err"
check "convert the split model" $?
# Same tile table and tile bytes (the embedded metadata differs only by the split.* keys).
python3 - "$T/w.nft" "$T/s.nft" <<'PY'
import struct, sys
def tiles(path):
    d = open(path, 'rb').read()
    index_off, n = struct.unpack_from('<QQ', d, 48)
    out = []
    for i in range(n):
        off, size, rest = struct.unpack_from('<QQ48s', d, index_off + 64 * i)
        out.append((rest, d[off:off + size]))
    return out
a, b = tiles(sys.argv[1]), tiles(sys.argv[2])
assert len(a) > 0 and a == b, (len(a), len(b))
PY
check "the split model's .nft has the whole file's tiles, byte for byte" $?
"$NF_BIN" verify "$T/s.nft" >/dev/null 2>&1
check "verify the split model's .nft" $?
"$NF_BIN" run -m "$T/s.nft" -p "Lily" --temp 0 -n 32 -t 1 >"$T/n.txt" 2>/dev/null &&
    cmp -s "$T/w.txt" "$T/n.txt"
check "run on the .nft equals run on the whole file" $?

# 3. inspect names the parts.
"$NF_BIN" inspect "$S" >"$T/out" 2>&1 &&
    grep -q "48 tensors in 3 parts" "$T/out" &&
    grep -q "part 2  $T/s-00002-of-00003.gguf  [0-9]* bytes, 20 tensors" "$T/out" &&
    grep -q "part 3  $T/s-00003-of-00003.gguf  [0-9]* bytes, 8 tensors" "$T/out"
check "inspect lists the three parts" $?

# 4. up on the first file, gen through the stack: the text run gives on the whole file.
if (need_daemons >/dev/null); then
    "$NF_BIN" up -m "$S" --ram 256M -t 1 --run-dir "$R" >"$T/up.out" 2>"$T/up.err"
    rc=$?
    check "up on the split model" $rc
    [ $rc -eq 0 ] || cat "$T/up.err"
    "$NF_BIN" gen --run-dir "$R" -p "Lily" --temp 0 -n 32 >"$T/g.txt" 2>"$T/g.err" &&
        cmp -s "$T/w.txt" "$T/g.txt"
    check "gen on the split model equals run on the whole file" $?
    "$NF_BIN" down --run-dir "$R" >/dev/null 2>&1
else
    echo "note: the daemons are not built; up/gen not tried"
fi

# 5. Refusals: one line naming the part and what is wrong, exit 1, for run, convert and inspect.
# refused DIR PATTERN WHAT: every command given DIR/s-00001-of-00003.gguf fails with PATTERN.
refused() {
    local c st
    for c in run convert inspect; do
        case $c in
        run) "$NF_BIN" run -m "$1/s-00001-of-00003.gguf" -n 2 >/dev/null 2>"$T/err" ;;
        convert) "$NF_BIN" convert "$1/s-00001-of-00003.gguf" "$T/x.nft" >/dev/null 2>"$T/err" ;;
        inspect) "$NF_BIN" inspect "$1/s-00001-of-00003.gguf" >/dev/null 2>"$T/err" ;;
        esac
        st=$?
        [ $st -eq 1 ] && one_line "$T/err" && grep -q -- "$2" "$T/err"
        st=$?
        check "$c refuses $3" $st
        [ $st -eq 0 ] || cat "$T/err"
    done
    [ ! -e "$T/x.nft" ]
    check "no .nft written for $3" $?
}
mkdir "$T/miss" "$T/other" "$T/count" "$T/count1"
cp "$T/s-00001-of-00003.gguf" "$T/s-00003-of-00003.gguf" "$T/miss/"
refused "$T/miss" "part 2 of 3 of .*s-00002-of-00003.gguf: cannot open: No such file" \
    "a missing part"

# A part of another model: zoo-Q4_0 (39 tensors) split in three, its second part put in place.
if [ -f "$MD/zoo-Q4_0.gguf" ]; then
    split "$MD/zoo-Q4_0.gguf" "$T/other/z" 14
    cp "$T/s-00001-of-00003.gguf" "$T/s-00003-of-00003.gguf" "$T/other/"
    cp "$T/other/z-00002-of-00003.gguf" "$T/other/s-00002-of-00003.gguf"
    refused "$T/other" "s-00002-of-00003.gguf: split.tensors.count is 39, but the first part .* says 48" \
        "a part of another model"
else
    echo "note: $MD/zoo-Q4_0.gguf missing, no part of another model tried"
fi

# set_count FILE N: rewrites FILE's split.count (u16 3) to N in place.
set_count() {
    python3 - "$1" "$2" <<'PY'
import struct, sys
b = bytearray(open(sys.argv[1], 'rb').read())
k = b'split.count'
i = b.index(struct.pack('<Q', len(k)) + k) + 8 + len(k)
assert struct.unpack_from('<IH', b, i) == (2, 3)
struct.pack_into('<H', b, i + 4, int(sys.argv[2]))
open(sys.argv[1], 'wb').write(b)
PY
}
cp "$T"/s-0000?-of-00003.gguf "$T/count/"
set_count "$T/count/s-00002-of-00003.gguf" 4
refused "$T/count" "s-00002-of-00003.gguf: split.count is 4, but the first part .* says 3" \
    "a part with a wrong split.count"
cp "$T"/s-0000?-of-00003.gguf "$T/count1/"
set_count "$T/count1/s-00001-of-00003.gguf" 4
refused "$T/count1" "split.count is 4, so the name should end in '-00001-of-00004.gguf'" \
    "a first part with a wrong split.count"

# Not the first part: named as such.
"$NF_BIN" run -m "$T/s-00002-of-00003.gguf" -n 2 >/dev/null 2>"$T/err"
[ $? -eq 1 ] && one_line "$T/err" && grep -q "this is part 2 of 3 of a split model; give the first part" "$T/err"
check "run refuses a later part given first" $?

exit $fail
