#!/usr/bin/env bash
# run.sh - builds the libFuzzer targets with clang (-DNF_FUZZ=ON) and fuzzes each of them: the GGUF
# reader, the control-frame decoder and the .nft tile-file reader (seeded with small models that
# nanoflowctl generates and converts here).
# Usage: tests/fuzz/run.sh [SECONDS]   (default 60, per target). Exits non-zero if the fuzzer finds a crash,
# a leak or a broken contract; the reproducer is left in $NF_FUZZ_BUILD_DIR/fuzz-artifacts/.
set -euo pipefail
secs=${1:-60}
case "$secs" in
'' | *[!0-9]*) echo "usage: tests/fuzz/run.sh [SECONDS]" >&2; exit 2 ;;
esac
src=$(cd "$(dirname "$0")/../.." && pwd)
build=${NF_FUZZ_BUILD_DIR:-$src/build-fuzz}
command -v clang >/dev/null || { echo "run.sh: clang not found: apt-get install -y clang" >&2; exit 2; }

cmake -S "$src" -B "$build" -DCMAKE_C_COMPILER=clang -DCMAKE_BUILD_TYPE=RelWithDebInfo \
    -DNF_FUZZ=ON >/dev/null
cmake --build "$build" -j2 --target fuzz_gguf fuzz_frame fuzz_nft nanoflowctl

# New inputs go to scratch corpora so that the committed seeds stay as they are.
work=$(mktemp -d "${TMPDIR:-/tmp}/nf-fuzz-XXXXXX")
trap 'rm -rf "$work"' EXIT
mkdir -p "$build/fuzz-artifacts" "$work/gguf" "$work/frame" "$work/nft" "$work/nft-seeds" \
    "$work/gguf-seeds"
ctl="$build/ctl/nanoflowctl"
# GGUF seeds beside the committed ones: the frontier architectures' metadata (MLA ranks, expert
# groups, sigmoid routing, sinks, sliding windows, YaRN) and mxfp4 experts, tiny (60-80 KB).
"$ctl" mkmodel "$work/gguf-seeds/deepseek2.gguf" --arch deepseek2 --dim 32 --layers 2 --ffn 32 \
    --heads 2 --head-dim 24 --rope-dim 8 --kv-lora 32 --v-head 16 --q-lora 32 --dense-layers 1 \
    --dense-ffn 64 --experts 4 --experts-used 2 --shared-experts 1 --sigmoid --expert-groups 2 \
    --groups-used 1 --vocab 259 --type q8_0 >/dev/null
"$ctl" mkmodel "$work/gguf-seeds/glm4moe.gguf" --arch glm4moe --dim 32 --layers 2 --ffn 32 \
    --heads 2 --kv-heads 1 --head-dim 16 --experts 4 --experts-used 2 --expert-groups 2 \
    --groups-used 1 --dense-layers 1 --dense-ffn 64 --nextn 1 --vocab 259 --type q8_0 >/dev/null
"$ctl" mkmodel "$work/gguf-seeds/gpt-oss.gguf" --arch gpt-oss --dim 32 --layers 2 --ffn 32 \
    --heads 2 --kv-heads 1 --head-dim 32 --experts 4 --experts-used 2 --window 4 --rope-scale 32 \
    --ctx 131072 --vocab 259 --type mxfp4 >/dev/null
# Inputs that once failed (tests/fuzz/regress/TARGET/) must pass before fuzzing goes on.
for f in "$src"/tests/fuzz/regress/gguf/*; do
    [ -e "$f" ] || continue
    "$build/tests/fuzz_gguf" -rss_limit_mb=2048 "$f" >/dev/null 2>&1 ||
        { echo "run.sh: fuzz_gguf fails on the regression input $f" >&2; exit 1; }
done
echo "fuzzing the GGUF reader and model loader for $secs s"
"$build/tests/fuzz_gguf" -max_total_time="$secs" -max_len=131072 -timeout=10 -rss_limit_mb=2048 \
    -print_final_stats=1 -error_exitcode=1 -dict="$src/tests/fuzz/gguf.dict" \
    -artifact_prefix="$build/fuzz-artifacts/" "$work/gguf" "$src/tests/fuzz/corpus/gguf" \
    "$work/gguf-seeds"
echo "fuzzing the control-frame decoder for $secs s"
"$build/tests/fuzz_frame" -max_total_time="$secs" -max_len=8192 -timeout=10 -rss_limit_mb=2048 \
    -print_final_stats=1 -error_exitcode=1 -artifact_prefix="$build/fuzz-artifacts/" "$work/frame"

# .nft seeds: a dense model with calibration, two MoE models (q4_0, and mxfp4 experts) and the
# frontier architectures (their GGUF seeds above), tiny, in the file's real layout.
"$ctl" mkmodel "$work/d.gguf" --dim 32 --layers 2 --ffn 64 --heads 4 --kv-heads 2 --vocab 259 \
    --type q8_0 >/dev/null
"$ctl" mkmodel "$work/m.gguf" --dim 32 --layers 1 --ffn 32 --heads 2 --vocab 259 --experts 4 \
    --type q4_0 >/dev/null
"$ctl" mkmodel "$work/x.gguf" --dim 32 --layers 1 --ffn 32 --heads 2 --vocab 259 --experts 4 \
    --type mxfp4 >/dev/null
printf 'a b c d e f g h i j k l m n o p q r s t u v w x y z\n' >"$work/calib.txt"
"$ctl" convert "$work/d.gguf" "$work/nft-seeds/dense.nft" --rank 4 --calibrate "$work/calib.txt" 2>/dev/null
"$ctl" convert "$work/m.gguf" "$work/nft-seeds/moe.nft" 2>/dev/null
"$ctl" convert "$work/x.gguf" "$work/nft-seeds/moe-mxfp4.nft" 2>/dev/null
for a in deepseek2 glm4moe gpt-oss; do
    "$ctl" convert "$work/gguf-seeds/$a.gguf" "$work/nft-seeds/$a.nft" 2>/dev/null
done
for f in "$src"/tests/fuzz/regress/nft/*; do
    [ -e "$f" ] || continue
    "$build/tests/fuzz_nft" -rss_limit_mb=2048 "$f" >/dev/null 2>&1 ||
        { echo "run.sh: fuzz_nft fails on the regression input $f" >&2; exit 1; }
done
echo "fuzzing the .nft reader and loader for $secs s"
"$build/tests/fuzz_nft" -max_total_time="$secs" -max_len=262144 -timeout=10 -rss_limit_mb=2048 \
    -print_final_stats=1 -error_exitcode=1 -artifact_prefix="$build/fuzz-artifacts/" "$work/nft" \
    "$work/nft-seeds"
