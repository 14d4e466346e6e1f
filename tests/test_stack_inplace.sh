#!/usr/bin/env bash
# test_stack_inplace.sh - `up` serves a GGUF in place: it writes a small index (NAME.nfi) and no
# copy of the model, and the stack's gen --json equals run --json on stories260K (dense llama), a
# qwen3moe model made by mkmodel and a split GGUF; the index is reused while the model is
# unchanged and rebuilt when a part changes; a truncated GGUF, a corrupt index and a corrupt
# tile are each a clear error.
set -u
. "$(dirname "$0")/lib.sh"
: "${NF_BIN:?NF_BIN must point to nanoflowctl}"
: "${NF_SHARED_DIR:?NF_SHARED_DIR must point to the shared directory}"
need_stories
need_daemons
T=$(mktemp -d)
R="$T/run"
export XDG_CACHE_HOME="$T/cache" # must stay empty: every index goes beside its model
cleanup() {
    "$NF_BIN" down --run-dir "$R" >/dev/null 2>&1
    rm -rf "$T"
}
trap cleanup EXIT
mkdir "$T/m"

# same_gen GEN RUN: gen --json and run --json agree token line for token line (ids, pieces, top
# logits) and in the summary's prompt_ids, gen_ids and text.
same_gen() {
    python3 - "$1" "$2" <<'PY'
import json, sys
gen = [json.loads(l) for l in open(sys.argv[1], encoding="utf-8")]
run = [json.loads(l) for l in open(sys.argv[2], encoding="utf-8")]
assert len(gen) == len(run) > 1, (len(gen), len(run))
assert gen[:-1] == run[:-1], "token lines differ"
for k in ("prompt_ids", "gen_ids", "text"):
    assert gen[-1][k] == run[-1][k], (k, gen[-1][k], run[-1][k])
PY
}

# serve NAME MODEL [first part]: up on MODEL, gen --json equal to run --json, down.
serve() {
    "$NF_BIN" up -m "$2" --ram 256M -t 1 --run-dir "$R" >"$T/up.out" 2>"$T/up.err"
    local rc=$?
    check "$1: up exits 0" $rc
    [ $rc -eq 0 ] || { cat "$T/up.err"; return; }
    local args=(-p "Once upon a time" -n 16 --temp 0 --json --top-logits 4)
    "$NF_BIN" gen --run-dir "$R" "${args[@]}" >"$T/gen.jsonl" 2>"$T/gen.err"
    check "$1: gen exits 0" $?
    "$NF_BIN" run -m "${3:-$2}" -t 1 "${args[@]}" >"$T/run.jsonl" 2>/dev/null
    check "$1: run exits 0" $?
    same_gen "$T/gen.jsonl" "$T/run.jsonl"
    check "$1: gen --json through the stack equals run --json" $?
    "$NF_BIN" down --run-dir "$R" >/dev/null 2>&1
}

# 1. stories260K: index beside the model, nothing else written, a few percent of the model.
M="$T/m/stories.gguf"
cp "$M0" "$M"
serve stories "$M"
grep -q "indexing $M -> $T/m/stories.nfi" "$T/up.err"
check "stories: up says it indexes the GGUF" $?
[ "$(find "$T" -name '*.nft*' | wc -l)" -eq 0 ] && [ ! -e "$T/cache" ] &&
    [ "$(ls "$T/m")" = "$(printf 'stories.gguf\nstories.nfi')" ]
check "stories: up writes the index only (no .nft, nothing in the cache)" $?
isz=$(stat -c %s "$T/m/stories.nfi")
msz=$(stat -c %s "$M")
[ $((isz * 20)) -lt "$msz" ]
check "stories: the index ($isz bytes) is under 5% of the model ($msz bytes)" $?
"$NF_BIN" verify "$T/m/stories.nfi" >/dev/null 2>"$T/err"
check "stories: verify checks every tile of the index against the GGUF" $?
expect "run on the index names the GGUF to run instead" 1 "in-place index of a GGUF: run the GGUF itself (-m $M)" \
    "$NF_BIN" run -m "$T/m/stories.nfi" -p "Once" -n 2

# 2. Reused while unchanged; rebuilt when the model's mtime changes.
serve "stories again" "$M"
grep -q "using cached index" "$T/up.err"
check "stories: the second up reuses the index" $?
touch -d "2020-01-01" "$M"
serve "stories touched" "$M"
grep -q "rebuilding the index: .*stories.gguf changed since the index was built" "$T/up.err"
check "stories: a changed model rebuilds the index" $?

# 3. A qwen3moe model (q/k norms, experts as whole slices), Q4_K.
Q="$T/m/q3moe.gguf"
"$NF_BIN" mkmodel "$Q" --arch qwen3moe --dim 256 --layers 2 --ffn 256 --heads 4 --kv-heads 2 \
    --head-dim 64 --experts 8 --experts-used 2 --vocab 512 --type q4_k --seed 7 >/dev/null 2>&1
check "mkmodel writes a qwen3moe model" $?
serve qwen3moe "$Q"

# 4. A split model: indexed from its first file, gen equal to run on the whole file; a changed
# second part rebuilds the index; with --sparsity a changed third part converts it again.
gguf_split "$M0" "$T/m/s" 20
S="$T/m/s-00001-of-00003.gguf"
serve split "$S" "$M0"
touch -d "2020-01-01" "$T/m/s-00002-of-00003.gguf"
serve "split, part 2 touched" "$S" "$M0"
grep -q "rebuilding the index: .*s-00002-of-00003.gguf changed since" "$T/up.err"
check "split: a changed part rebuilds the index" $?

# --sparsity still converts to a .nft; its cache stamp covers every part too.
sparse_up() {
    "$NF_BIN" up -m "$S" --sparsity 0.5 --ram 256M -t 1 --run-dir "$R" >"$T/up.out" 2>"$T/up.err"
    local rc=$?
    "$NF_BIN" down --run-dir "$R" >/dev/null 2>&1
    return $rc
}
sparse_up && grep -q "converting .*s-00001-of-00003.gguf -> .*\.nft" "$T/up.err"
check "split, --sparsity: up converts to a .nft" $?
sparse_up && grep -q "using cached .*\.nft" "$T/up.err"
check "split, --sparsity: the second up reuses the .nft" $?
touch -d "2021-01-01" "$T/m/s-00003-of-00003.gguf"
sparse_up && grep -q "converting" "$T/up.err"
check "split, --sparsity: a changed third part converts again" $?
rm -f "$T"/m/*.nft "$T"/m/*.nft.src

# 5. Errors. A corrupt index: verify refuses it with one line; up rebuilds it.
IDX="$T/m/stories.nfi"
ioff=$(python3 -c 'import struct,sys; print(struct.unpack_from("<Q", open(sys.argv[1], "rb").read(), 48)[0])' "$IDX")
printf 'X' | dd of="$IDX" bs=1 seek=$((ioff + 20)) conv=notrunc 2>/dev/null # tile 0's checksum
expect "verify refuses a corrupt index" 1 "tile index checksum mismatch" "$NF_BIN" verify "$IDX"
[ "$(wc -l <"$T/err")" -eq 1 ]
check "the corrupt index is one error line" $?
serve "stories, corrupt index" "$M"
grep -q "rebuilding the index: .*checksum mismatch" "$T/up.err"
check "up rebuilds a corrupt index" $?

# A tile's bytes changed in the GGUF with its size and mtime kept: verify names the tile, and
# gen through the stack fails with the fetcher's checksum error instead of a wrong answer.
cp -p "$M" "$T/m/keep.gguf"
off=$(python3 - "$IDX" <<'PY'
import struct, sys
d = open(sys.argv[1], "rb").read()
index_off, n = struct.unpack_from("<QQ", d, 48)
for i in range(n):
    off, size, ck, layer, kind = struct.unpack_from("<QQQIH", d, index_off + 64 * i)
    if kind == 5 and layer == 0:  # layer 0 attn_q #0
        print(off + size // 2)
        break
PY
)
printf '\x55' | dd of="$M" bs=1 seek="$off" conv=notrunc 2>/dev/null
touch -r "$T/m/keep.gguf" "$M"
expect "verify finds the changed tile" 1 "layer 0 attn_q #0.*checksum mismatch" \
    "$NF_BIN" verify "$IDX"
"$NF_BIN" up -m "$M" --ram 256M -t 1 --run-dir "$R" >/dev/null 2>&1
expect "gen fails on the changed tile" 1 "checksum" \
    "$NF_BIN" gen --run-dir "$R" -p "Once upon a time" -n 4 --temp 0
"$NF_BIN" down --run-dir "$R" >/dev/null 2>&1

# A truncated GGUF: the index is stale and rebuilding it fails with the GGUF's own error.
cp "$T/m/keep.gguf" "$M"
truncate -s -4096 "$M"
expect "up refuses a truncated GGUF" 1 "indexing .*stories.gguf" \
    "$NF_BIN" up -m "$M" --ram 256M -t 1 --run-dir "$R"
grep -q "changed since the index was built" "$T/err" &&
    [ "$(grep -c "nanoflowctl up:" "$T/err")" -eq 1 ]
check "the truncated GGUF is named with one error line" $?
exit $fail
