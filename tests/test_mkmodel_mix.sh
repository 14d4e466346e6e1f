# test_mkmodel_mix.sh - mkmodel --type q4_k_m (llama-quantize's Q4_K_M tensor mix),
# --zero-experts (routed experts as real zero bytes, the rest random), --random-blocks
# (random valid blocks without float quantization) and --tensor-types (a per-tensor recipe),
# and their refusals.
set -u
if [ -z "${NF_BIN:-}" ] || [ ! -x "$NF_BIN" ]; then
    echo "SKIP: NF_BIN (path to nanoflowctl) is not set or not executable"
    exit 77
fi
. "$(dirname "$0")/lib.sh"
T=$(mktemp -d /tmp/nf_test_mkmodel_mix.XXXXXX)
trap 'rm -rf "$T"' EXIT
fail=0
MOE=(--arch qwen3moe --dim 256 --ffn 256 --heads 4 --head-dim 64 --kv-heads 2 --experts 4
    --experts-used 2 --vocab 1024 -t 1)

# Q4_K_M on 16 layers: use_more_bits() picks layers 0, 1, 4, 7, 10, 13, 14, 15, so attn_v and
# ffn_down_exps of those 8 layers plus output.weight are q6_K (17 tensors), as llama-quantize
# Q4_K_M writes them from the same model in f16 (oracle d32676d); the other matrices q4_K.
"$NF_BIN" mkmodel "$T/m.gguf" "${MOE[@]}" --layers 16 --type q4_k_m >/dev/null 2>"$T/err"
check "mkmodel --type q4_k_m" $?
"$NF_BIN" inspect "$T/m.gguf" >"$T/inspect" 2>&1
grep -qE '^q6_K +17 ' "$T/inspect"
check "q4_k_m: 17 q6_K tensors" $?
grep -qE '^q4_K +97 ' "$T/inspect"
check "q4_k_m: 97 q4_K tensors" $?

# --zero-experts: 2 layers x 3 stacked tensors x 4 experts x 256 rows x 144 bytes (q4_K) are
# zero bytes on disk, not holes; everything else is random as without the flag.
EXP=$((2 * 3 * 4 * 256 * 144))
"$NF_BIN" mkmodel "$T/z.gguf" "${MOE[@]}" --layers 2 --type q4_k --zero-experts >/dev/null
check "mkmodel --zero-experts" $?
"$NF_BIN" mkmodel "$T/r.gguf" "${MOE[@]}" --layers 2 --type q4_k >/dev/null
check "mkmodel without --zero-experts" $?
size=$(stat -c %s "$T/z.gguf")
[ "$size" -eq "$(stat -c %s "$T/r.gguf")" ]
check "same size with and without --zero-experts" $?
alloc=$(($(stat -c '%b * %B' "$T/z.gguf")))
[ "$alloc" -ge "$size" ]
check "--zero-experts leaves no holes ($alloc bytes allocated of $size)" $?
nz=$(tr -d '\000' <"$T/z.gguf" | wc -c)
nr=$(tr -d '\000' <"$T/r.gguf" | wc -c)
[ "$nz" -le $((size - EXP)) ] && [ "$nr" -gt $((size - EXP)) ]
check "experts are zero ($nz non-zero bytes, random model $nr, experts $EXP)" $?
"$NF_BIN" run -m "$T/z.gguf" -p hello -n 4 --temp 0 >/dev/null 2>"$T/err"
check "run loads the --zero-experts model" $?

# --random-blocks: mxfp4 experts and q8_0 matrices as random blocks, no float quantization. The
# same bytes for any thread count, a different file than without the flag (same size), no mxfp4
# block with the NaN exponent (run checks every block) and generation works.
GO=(--arch gpt-oss --dim 256 --layers 2 --ffn 256 --heads 4 --kv-heads 2 --head-dim 64
    --experts 4 --experts-used 2 --window 4 --vocab 1024 --type mxfp4)
"$NF_BIN" mkmodel "$T/rb1.gguf" "${GO[@]}" -t 1 --random-blocks >"$T/out" 2>"$T/err" &&
    "$NF_BIN" mkmodel "$T/rb2.gguf" "${GO[@]}" -t 2 --random-blocks >/dev/null 2>&1 &&
    "$NF_BIN" mkmodel "$T/rq.gguf" "${GO[@]}" -t 2 >/dev/null 2>&1
check "mkmodel --random-blocks (and without)" $?
grep -q "MXFP4_MOE (random blocks)" "$T/out"
check "--random-blocks: the summary says so" $?
cmp -s "$T/rb1.gguf" "$T/rb2.gguf"
check "--random-blocks: same bytes with -t 1 and -t 2" $?
[ "$(stat -c %s "$T/rb1.gguf")" -eq "$(stat -c %s "$T/rq.gguf")" ] && ! cmp -s "$T/rb1.gguf" "$T/rq.gguf"
check "--random-blocks: same size, other bytes than quantized floats" $?
"$NF_BIN" run -m "$T/rb1.gguf" -p hello -n 4 --temp 0 >/dev/null 2>"$T/err"
check "run loads and generates from the --random-blocks model ($(head -c 200 "$T/err"))" $?
expect "--random-blocks with --type q4_k" 2 "needs --type q8_0, q4_0 or mxfp4" \
    "$NF_BIN" mkmodel "$T/d.gguf" "${MOE[@]}" --layers 1 --type q4_k --random-blocks
expect "--random-blocks with --zero" 2 "exclude each other" \
    "$NF_BIN" mkmodel "$T/d.gguf" "${GO[@]}" --zero --random-blocks

# --tensor-types: a recipe's types override --type per tensor; bad recipes are refused in one
# line naming the line.
printf '# a recipe\n\nblk.0.attn_v.weight q6_K\nblk.1.ffn_down_exps.weight Q5_k\n' >"$T/r.types"
"$NF_BIN" mkmodel "$T/tt.gguf" "${MOE[@]}" --layers 2 --type q4_k --tensor-types "$T/r.types" \
    >/dev/null 2>"$T/err"
check "mkmodel --tensor-types ($(head -c 200 "$T/err"))" $?
"$NF_BIN" inspect "$T/tt.gguf" >"$T/inspect" 2>&1
grep -qE '^q6_K +1 ' "$T/inspect" && grep -qE '^q5_K +1 ' "$T/inspect" &&
    grep -qE '^q4_K +14 ' "$T/inspect"
check "--tensor-types: one q6_K, one q5_K, the other 14 matrices q4_K" $?
for bad in "blk.9.attn_v.weight q6_K|line 1: the model has no tensor 'blk.9.attn_v.weight'" \
    "blk.0.attn_v.weight q7_K|line 1: unknown or unwritable type 'q7_K'" \
    "blk.0.attn_norm.weight q8_0 x|line 1: expected 'TENSOR TYPE'"; do
    printf '%s\n' "${bad%%|*}" >"$T/bad.types"
    expect "--tensor-types: ${bad%%|*}" 2 "${bad#*|}" \
        "$NF_BIN" mkmodel "$T/d.gguf" "${MOE[@]}" --layers 2 --tensor-types "$T/bad.types"
done
printf 'blk.0.attn_norm.weight q4_K\n' >"$T/bad.types"
expect "--tensor-types: 64-wide rows are not q4_K blocks" 2 \
    "not whole q4_K blocks" "$NF_BIN" mkmodel "$T/d.gguf" --arch qwen3moe --dim 64 --ffn 64 \
    --heads 4 --head-dim 16 --experts 4 --layers 1 --vocab 1024 --tensor-types "$T/bad.types"
expect "--tensor-types: a missing file" 2 "no-such.types" \
    "$NF_BIN" mkmodel "$T/d.gguf" "${MOE[@]}" --layers 2 --tensor-types "$T/no-such.types"

expect "--zero-experts on a dense model" 2 "needs routed experts" \
    "$NF_BIN" mkmodel "$T/d.gguf" --shape tiny --zero-experts
expect "--zero-experts with --zero" 2 "exclude each other" \
    "$NF_BIN" mkmodel "$T/d.gguf" "${MOE[@]}" --layers 2 --zero --zero-experts
expect "--type q4_k_m for phi3" 2 "not supported for --arch phi3" \
    "$NF_BIN" mkmodel "$T/d.gguf" --shape phi3-mini --layers 1 --type q4_k_m
[ -z "$(ls "$T"/d.gguf* 2>/dev/null)" ]
check "refusals write nothing" $?
exit $fail
