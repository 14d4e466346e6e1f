#!/usr/bin/env bash
# run.sh - builds the libFuzzer targets with clang (-DNF_FUZZ=ON) and fuzzes each of them: the GGUF
# reader and the control-frame decoder.
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
cmake --build "$build" -j2 --target fuzz_gguf fuzz_frame

# New inputs go to scratch corpora so that the committed seeds stay as they are.
work=$(mktemp -d "${TMPDIR:-/tmp}/nf-fuzz-XXXXXX")
trap 'rm -rf "$work"' EXIT
mkdir -p "$build/fuzz-artifacts" "$work/gguf" "$work/frame"
echo "fuzzing the GGUF reader for $secs s"
"$build/tests/fuzz_gguf" -max_total_time="$secs" -max_len=16384 -timeout=10 -rss_limit_mb=2048 \
    -print_final_stats=1 -error_exitcode=1 -dict="$src/tests/fuzz/gguf.dict" \
    -artifact_prefix="$build/fuzz-artifacts/" "$work/gguf" "$src/tests/fuzz/corpus/gguf"
echo "fuzzing the control-frame decoder for $secs s"
"$build/tests/fuzz_frame" -max_total_time="$secs" -max_len=8192 -timeout=10 -rss_limit_mb=2048 \
    -print_final_stats=1 -error_exitcode=1 -artifact_prefix="$build/fuzz-artifacts/" "$work/frame"
