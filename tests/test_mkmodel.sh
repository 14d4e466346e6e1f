# test_mkmodel.sh - nanoflowctl mkmodel end to end: every type, determinism, --zero holes, errors.
set -u

if [ -z "${NF_BIN:-}" ] || [ ! -x "$NF_BIN" ]; then
    echo "SKIP: NF_BIN (path to nanoflowctl) is not set or not executable"
    exit 77
fi
SHARED="${NF_SHARED_DIR:-}"

T=$(mktemp -d /tmp/nf_test_mkmodel.XXXXXX)
trap 'rm -rf "$T"' EXIT
pass=0
failed=0

ok() {
    pass=$((pass + 1))
}
bad() {
    echo "FAIL: $*"
    failed=$((failed + 1))
}

# No temporary file may survive a run, whatever its outcome.
no_temp_left() {
    local left
    left=$(find "$T" -name '*.tmp-*' | head -n 5)
    if [ -n "$left" ]; then
        bad "temporary files left behind after $1: $left"
        rm -f "$T"/*.tmp-*
    else
        ok
    fi
}

# mk NAME ARGS...: runs mkmodel writing $T/NAME; output in $T/out.txt, stderr in $T/err.txt.
mk() {
    local name=$1
    shift
    "$NF_BIN" mkmodel "$T/$name" "$@" >"$T/out.txt" 2>"$T/err.txt"
}

# expect_fail CODE PATTERN ARGS...: mkmodel must exit with CODE, print one line matching
# PATTERN on stderr, and leave neither the output nor a temporary file.
expect_fail() {
    local code=$1 pattern=$2
    shift 2
    rm -f "$T/bad.gguf"
    "$NF_BIN" mkmodel "$T/bad.gguf" "$@" >"$T/out.txt" 2>"$T/err.txt"
    local rc=$?
    if [ "$rc" -ne "$code" ]; then
        bad "mkmodel $* exited $rc, expected $code (stderr: $(cat "$T/err.txt"))"
    elif ! grep -q -- "$pattern" "$T/err.txt"; then
        bad "mkmodel $*: stderr '$(cat "$T/err.txt")' does not match '$pattern'"
    elif [ -e "$T/bad.gguf" ]; then
        bad "mkmodel $* failed but left $T/bad.gguf"
    else
        ok
    fi
    no_temp_left "mkmodel $*"
}

# 1. A tiny model of every type; sizes follow the type's bits per weight.
declare -A size
for ty in f32 f16 bf16 q8_0 q4_0 q4_k q5_k q6_k q4_1 q5_0 q5_1 iq4_nl q2_k q3_k iq4_xs; do
    if mk "tiny-$ty.gguf" --shape tiny --vocab 512 --type "$ty"; then
        size[$ty]=$(stat -c %s "$T/tiny-$ty.gguf")
        if grep -q "wrote .*tiny-$ty.gguf" "$T/out.txt"; then ok; else bad "no summary line for $ty"; fi
    else
        bad "mkmodel --type $ty failed: $(cat "$T/err.txt")"
        size[$ty]=0
    fi
    no_temp_left "mkmodel --type $ty"
done
# Bytes per weight order: f32 > f16 = bf16 > q8_0 > q6_k > q5_k > q4_k = q4_0 (both 4.5 bits),
# q5_1 > q5_0 > q4_1 > q4_0 = iq4_nl, q4_k > iq4_xs > q3_k > q2_k.
if [ "${size[f32]}" -gt "${size[f16]}" ] && [ "${size[f16]}" -eq "${size[bf16]}" ] &&
    [ "${size[f16]}" -gt "${size[q8_0]}" ] && [ "${size[q8_0]}" -gt "${size[q6_k]}" ] &&
    [ "${size[q6_k]}" -gt "${size[q5_k]}" ] && [ "${size[q5_k]}" -gt "${size[q4_k]}" ] &&
    [ "${size[q4_k]}" -eq "${size[q4_0]}" ] && [ "${size[q5_1]}" -gt "${size[q5_0]}" ] &&
    [ "${size[q5_0]}" -gt "${size[q4_1]}" ] && [ "${size[q4_1]}" -gt "${size[q4_0]}" ] &&
    [ "${size[q4_0]}" -eq "${size[iq4_nl]}" ] && [ "${size[q4_k]}" -gt "${size[iq4_xs]}" ] &&
    [ "${size[iq4_xs]}" -gt "${size[q3_k]}" ] && [ "${size[q3_k]}" -gt "${size[q2_k]}" ]; then
    ok
else
    bad "file sizes do not follow the types: $(for k in "${!size[@]}"; do printf '%s=%s ' "$k" "${size[$k]}"; done)"
fi
if [ "$(head -c 4 "$T/tiny-q4_0.gguf")" = "GGUF" ]; then ok; else bad "no GGUF magic"; fi

# 2. Determinism: same seed -> same bytes, whatever the thread count; another seed differs.
mk a.gguf --shape tiny-moe --vocab 400 --type q4_k --seed 42 --threads 1 || bad "seed 42 run 1"
mk b.gguf --shape tiny-moe --vocab 400 --type q4_k --seed 42 --threads 2 || bad "seed 42 run 2"
mk c.gguf --shape tiny-moe --vocab 400 --type q4_k --seed 43 || bad "seed 43 run"
if cmp -s "$T/a.gguf" "$T/b.gguf"; then ok; else bad "same seed gave different files"; fi
if ! cmp -s "$T/a.gguf" "$T/c.gguf" && [ "$(stat -c %s "$T/a.gguf")" = "$(stat -c %s "$T/c.gguf")" ]; then
    ok
else
    bad "different seeds gave the same bytes (or different sizes)"
fi
# A preset with a flag overridden, written over an existing file.
if mk a.gguf --shape mixtral-8x7b --layers 1 --dim 256 --heads 8 --ffn 256 --vocab 300 --type q8_0 &&
    grep -q "nanoflow-mixtral-8x7b" "$T/out.txt"; then
    ok
else
    bad "--shape mixtral-8x7b with overrides: $(cat "$T/err.txt")"
fi

# 3. --zero: a 70B shape whose apparent size is the whole model but which takes almost no disk.
if mk z70.gguf --shape llama-70b --type q4_0 --zero; then
    apparent=$(stat -c %s "$T/z70.gguf")
    used_kib=$(du -k "$T/z70.gguf" | cut -f1)
    # 68.98B weights at 4.5 bits are about 38.8 GB; the header, vocab and norms a few MiB.
    if [ "$apparent" -gt 38000000000 ] && [ "$apparent" -lt 40000000000 ]; then ok; else
        bad "--zero llama-70b apparent size $apparent"; fi
    if [ "$used_kib" -lt 65536 ]; then ok; else bad "--zero llama-70b uses $used_kib KiB of disk"; fi
    # The data past the header reads as zeros (a hole).
    if [ "$(dd if="$T/z70.gguf" bs=1M skip=20000 count=1 2>/dev/null | tr -d '\0' | wc -c)" -eq 0 ]; then
        ok
    else
        bad "--zero data is not zero"
    fi
    rm -f "$T/z70.gguf"
else
    bad "--zero llama-70b failed: $(cat "$T/err.txt")"
fi
no_temp_left "--zero"

# 4. --vocab-from copies a real vocabulary (and its size).
if [ -n "$SHARED" ] && [ -f "$SHARED/models/stories260K.gguf" ]; then
    if mk vf.gguf --shape tiny --type f16 --vocab-from "$SHARED/models/stories260K.gguf"; then
        ok
    else
        bad "--vocab-from failed: $(cat "$T/err.txt")"
    fi
fi

# 5. Refusals: usage errors exit 2 with one clear line; runtime failures exit 1.
"$NF_BIN" mkmodel --shape tiny >/dev/null 2>"$T/err.txt"
rc=$?
if [ "$rc" -eq 2 ] && grep -q "missing the output file" "$T/err.txt"; then ok; else
    bad "no OUT: rc=$rc, stderr: $(cat "$T/err.txt")"; fi
expect_fail 2 "unknown --shape 'llama-9b'" --shape llama-9b
expect_fail 2 "unknown --type 'iq2_xxs'" --shape tiny --type iq2_xxs
expect_fail 2 "unknown flag '--bogus'" --shape tiny --bogus
expect_fail 2 "--dim is missing" --layers 2 --ffn 64 --heads 4
expect_fail 2 "--heads is missing" --dim 64 --layers 2 --ffn 64
expect_fail 2 "--dim 100 is not a multiple of --heads 3" --dim 100 --layers 1 --ffn 64 --heads 3
expect_fail 2 "--heads 8 is not a multiple of --kv-heads 3" --shape tiny --kv-heads 3
expect_fail 2 "--experts-used 3 is more than --experts 2" --shape tiny --experts 2 --experts-used 3
expect_fail 2 "needs --experts" --shape tiny --experts-used 2
expect_fail 2 "multiple of 256" --dim 384 --layers 1 --ffn 512 --heads 6 --type q4_k
expect_fail 2 "multiple of 32" --dim 48 --layers 1 --ffn 64 --heads 4 --type q4_0
expect_fail 2 "--vocab expects an integer in \[259" --shape tiny --vocab 100
expect_fail 2 "--layers expects an integer" --shape tiny --layers 0
expect_fail 2 "--dim needs a value" --dim
expect_fail 2 "exclude each other" --shape tiny --vocab 300 --vocab-from "$T/tiny-f32.gguf"
expect_fail 2 "no-such.gguf" --shape tiny --vocab-from "$T/no-such.gguf"
printf 'not a gguf file' >"$T/junk.gguf"
expect_fail 2 "junk.gguf" --shape tiny --vocab-from "$T/junk.gguf"
expect_fail 2 "not a power of two" --shape tiny --alignment 48
expect_fail 2 "unknown --arch 'gpt2'" --shape tiny --arch gpt2
expect_fail 2 "--arch qwen3moe needs --experts" --shape tiny --arch qwen3moe
expect_fail 2 "--arch qwen2 is dense" --shape tiny-moe --arch qwen2
expect_fail 2 "--rope-freqs is for --arch llama" --shape tiny --arch qwen3 --rope-freqs
expect_fail 2 "--arch qwen2moe needs --experts" --shape tiny --arch qwen2moe
expect_fail 2 "--shared-ffn is for --arch qwen2moe" --shape tiny-moe --arch olmoe --shared-ffn 64
expect_fail 2 "--arch olmoe needs --kv-heads = --heads" --shape tiny-moe --arch olmoe
expect_fail 2 "requires output.weight" --shape tiny-moe --arch qwen2moe --tied-output
expect_fail 2 "--arch gpt-oss needs --experts" --shape tiny --arch gpt-oss
expect_fail 2 "requires output.weight for --arch gpt-oss" --shape gpt-oss-20b --tied-output
expect_fail 2 "--window is for --arch gemma3 or gpt-oss" --shape tiny --window 8
expect_fail 2 "--nextn is for --arch glm4moe" --shape tiny --nextn 1
expect_fail 2 "--expert-scale is for --arch glm4moe" --shape tiny-moe --expert-scale 2.5
expect_fail 2 "--arch glm4moe needs --experts" --shape tiny --arch glm4moe
expect_fail 2 "--dense-layers 3 is more than --layers 2" --shape tiny-moe --arch glm4moe \
    --dense-layers 3
expect_fail 2 "go together" --shape tiny-moe --arch glm4moe --expert-groups 2
expect_fail 2 "go together" --shape tiny-moe --arch glm4moe --expert-groups 2 --groups-used 2
expect_fail 2 "--rope-dim 34 must be even, 2 to the head dim 32" --shape tiny-moe --arch glm4moe \
    --rope-dim 34
# The GLM presets as file holes: GLM-4.5 (355B, plus its nextn block) and GLM-4.5-Air (106B,
# plus its nextn block); Air's expert width 1408 takes q8_0, not a K-type.
for p in "glm-4.5 q4_k 356.786B" "glm-4.5-air q8_0 109.227B"; do
    read -r shape ty want <<<"$p"
    if mk glm.gguf --shape "$shape" --type "$ty" --zero && grep -q "$want params" "$T/out.txt"; then
        ok
    else
        bad "--shape $shape --zero: $(cat "$T/out.txt" "$T/err.txt" 2>/dev/null)"
    fi
    rm -f "$T/glm.gguf"
done
# The qwen presets at their published sizes, as file holes: Qwen3-30B-A3B has 30.5B parameters.
if mk q30.gguf --shape qwen3-30b-a3b --type q4_k --zero && grep -q "30.532B params" "$T/out.txt"; then
    ok
else
    bad "--shape qwen3-30b-a3b --zero: $(cat "$T/out.txt" "$T/err.txt" 2>/dev/null)"
fi
rm -f "$T/q30.gguf"
# Qwen1.5-MoE-A2.7B (14.3B parameters, shared expert included) and OLMoE-1B-7B (6.92B).
for p in "qwen1.5-moe-a2.7b q5_0 14.316B" "olmoe-1b-7b q4_k 6.919B"; do
    read -r shape ty want <<<"$p"
    if mk moe.gguf --shape "$shape" --type "$ty" --zero && grep -q "$want params" "$T/out.txt"; then
        ok
    else
        bad "--shape $shape --zero: $(cat "$T/out.txt" "$T/err.txt" 2>/dev/null)"
    fi
    rm -f "$T/moe.gguf"
done
# gpt-oss-20b and -120b at their published sizes (20.9B, 116.8B parameters), as file holes.
for p in "gpt-oss-20b 20.915B" "gpt-oss-120b 116.829B"; do
    read -r shape want <<<"$p"
    if mk go.gguf --shape "$shape" --type q8_0 --zero && grep -q "$want params" "$T/out.txt"; then
        ok
    else
        bad "--shape $shape --zero: $(cat "$T/out.txt" "$T/err.txt" 2>/dev/null)"
    fi
    rm -f "$T/go.gguf"
done
# gpt-oss with --type mxfp4 (as the published files): the experts' weights mxfp4, their biases
# f32, so run loads it.
if mk go.gguf --arch gpt-oss --dim 64 --layers 2 --ffn 64 --heads 4 --kv-heads 2 --head-dim 64 \
    --experts 4 --experts-used 2 --type mxfp4 &&
    "$NF_BIN" run -m "$T/go.gguf" -p hi -n 1 --temp 0 >/dev/null 2>"$T/err.txt"; then
    ok
else
    bad "gpt-oss --type mxfp4: $(cat "$T/out.txt" "$T/err.txt" 2>/dev/null)"
fi
rm -f "$T/go.gguf"
# Not enough disk: a 405B model in f32 (1.6 TB) is refused before anything is written.
expect_fail 1 "not enough free disk space" --shape llama3-405b --type f32
# A write that fails half-way (file size limit) leaves no temporary file and no output.
( ulimit -f 1024; "$NF_BIN" mkmodel "$T/bad.gguf" --shape tiny --type f32 >/dev/null 2>"$T/err.txt" )
rc=$?
if [ "$rc" -eq 1 ] && grep -q "File too large" "$T/err.txt" && [ ! -e "$T/bad.gguf" ]; then ok; else
    bad "write failure: rc=$rc, stderr: $(cat "$T/err.txt")"; fi
no_temp_left "a failed write"
# A directory that does not exist.
rm -f "$T/err.txt"
"$NF_BIN" mkmodel "$T/no/such/dir/m.gguf" --shape tiny >/dev/null 2>"$T/err.txt"
rc=$?
if [ "$rc" -eq 1 ] && grep -q "no/such/dir" "$T/err.txt"; then ok; else
    bad "missing directory: rc=$rc, stderr: $(cat "$T/err.txt")"; fi

# 6. The generated models load and generate in `nanoflowctl run`.
"$NF_BIN" run --model "$T/tiny-q4_0.gguf" -p "Hello" -n 2 >"$T/run.txt" 2>&1
if grep -q "not implemented yet" "$T/run.txt"; then
    echo "note: nanoflowctl run is still a placeholder; the load-and-generate checks are skipped"
else
    for ty in f32 f16 bf16 q8_0 q4_0 q4_k q5_k q6_k q4_1 q5_0 q5_1 iq4_nl q2_k q3_k iq4_xs; do
        if "$NF_BIN" run --model "$T/tiny-$ty.gguf" -p "Once upon a time" -n 4 --temp 0 --json \
            >"$T/run.txt" 2>"$T/run.err" && grep -q '"gen_ids"' "$T/run.txt"; then
            ok
        else
            bad "run on the $ty model: $(tail -n 3 "$T/run.err")"
        fi
    done
    mk moe.gguf --shape tiny-moe --vocab 600 --type q8_0 || bad "tiny-moe"
    if "$NF_BIN" run --model "$T/moe.gguf" -p "Hi" -n 4 --temp 0 --json >"$T/run.txt" \
        2>"$T/run.err" && grep -q '"gen_ids"' "$T/run.txt"; then ok; else
        bad "run on the MoE model: $(tail -n 3 "$T/run.err")"; fi
fi

echo "test_mkmodel: $pass passed, $failed failed"
[ "$failed" -eq 0 ]
