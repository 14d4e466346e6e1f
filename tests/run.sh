#!/usr/bin/env bash
# run.sh - builds NanoFlow and runs the whole test suite (what CI runs).
# Usage: tests/run.sh [--sanitize] [--fuzz SECONDS]
#   default: Release build in build/, then every ctest test.
#   --sanitize: also an ASan+UBSan build in build-asan/ running the unit tests.
#   --fuzz S: also builds the libFuzzer targets with clang and runs each for S seconds.
set -euo pipefail
cd "$(dirname "$0")/.."
sanitize=0
fuzz=0
while [ $# -gt 0 ]; do
    case "$1" in
    --sanitize) sanitize=1 ;;
    --fuzz) fuzz="$2"; shift ;;
    *) echo "usage: tests/run.sh [--sanitize] [--fuzz SECONDS]" >&2; exit 2 ;;
    esac
    shift
done
jobs=$(nproc)
cmake -S . -B build -DCMAKE_BUILD_TYPE=Release >/dev/null
cmake --build build -j"$jobs"
ctest --test-dir build --output-on-failure -j"$jobs"
if [ "$sanitize" = 1 ]; then
    cmake -S . -B build-asan -DCMAKE_BUILD_TYPE=Debug -DNF_SANITIZE=ON >/dev/null
    cmake --build build-asan -j"$jobs"
    ASAN_OPTIONS=detect_leaks=1 ctest --test-dir build-asan --output-on-failure -j"$jobs" -LE slow
fi
if [ "$fuzz" != 0 ]; then
    for f in tests/fuzz/run*.sh; do
        [ -e "$f" ] && bash "$f" "$fuzz"
    done
fi
