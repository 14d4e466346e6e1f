#!/usr/bin/env bash
# bench_frontier_start.sh - the 100B+ class inside a 1 GiB memory cgroup (issue 11): for each
# mkmodel preset given (default: every frontier preset mkmodel knows among qwen3-235b-a22b,
# deepseek-v3, kimi-k2, glm-4.5, gpt-oss-120b), generates the model with --zero (all-zero
# matrices as file holes: the file has its real size, the disk holds almost nothing; experts
# mxfp4 for gpt-oss, Q4_K_M for the others), then runs
# `up MODEL.gguf` (the in-place index is built there), a 4-token greedy `gen` and `down`, all
# inside one fresh memory cgroup limited to 1 GiB, and prints the file size, the time of each
# part, the tokens generated and the cgroup's peak memory (page cache included).
# Usage: bench_frontier_start.sh [NANOFLOWCTL] [DIR] [PRESET...]; needs root and a memory
# cgroup (v1 or v2). Skips (exit 77) with the reason when it cannot run. Each model is deleted
# after its row (KEEP=1 keeps them).
set -u
BIN=${1:-${NF_BIN:-build/ctl/nanoflowctl}}
DIR=${2:-${TMPDIR:-/tmp}}
shift 2 2>/dev/null || shift $#
LIMIT=$((1 << 30))
skip() { echo "bench_frontier_start: skipped: $*"; exit 77; }
[ -x "$BIN" ] || skip "no nanoflowctl at $BIN"
[ "$(id -u)" -eq 0 ] || skip "needs root for the memory cgroup"
PRESETS=("$@")
if [ ${#PRESETS[@]} -eq 0 ]; then
    known=$("$BIN" mkmodel --help)
    for p in qwen3-235b-a22b deepseek-v3 kimi-k2 glm-4.5 gpt-oss-120b; do
        grep -q -- "$p" <<<"$known" && PRESETS+=("$p")
    done
fi
[ ${#PRESETS[@]} -gt 0 ] || skip "mkmodel knows none of the frontier presets"

CG=
if [ -r /sys/fs/cgroup/cgroup.controllers ] && grep -qw memory /sys/fs/cgroup/cgroup.controllers; then
    CGV=2 CGROOT=/sys/fs/cgroup LIMIT_FILE=memory.max PEAK_FILE=memory.peak
elif [ -e /sys/fs/cgroup/memory/memory.limit_in_bytes ]; then
    CGV=1 CGROOT=/sys/fs/cgroup/memory LIMIT_FILE=memory.limit_in_bytes
    PEAK_FILE=memory.max_usage_in_bytes
else
    skip "no memory cgroup (v1 or v2)"
fi
R="$DIR/frontier-run-$$"
M=
cleanup() {
    "$BIN" down --run-dir "$R" >/dev/null 2>&1
    [ -n "$M" ] && [ "${KEEP:-0}" != 1 ] && rm -f "$M" "${M%.gguf}.nfi"
    [ -n "$CG" ] && rmdir "$CG" 2>/dev/null
}
trap cleanup EXIT
# in_cg CMD...: runs CMD with this shell's child moved into the cgroup first.
in_cg() { bash -c 'echo $$ >"$0/cgroup.procs" && exec "$@"' "$CG" "$@"; }
now() { date +%s.%N; }
secs() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.1f", b - a }'; }

printf '%-16s %8s %9s %7s %7s %6s %12s %12s %s\n' preset GB mkmodel_s up_s gen_s tokens \
    "up peak MiB" "gen peak MiB" "(limit $((LIMIT >> 20)) MiB, cgroup v$CGV)"
for p in "${PRESETS[@]}"; do
    M="$DIR/frontier-$p-$$.gguf"
    t0=$(now)
    # The types such models ship in: gpt-oss's experts in mxfp4, the others' Q4_K_M.
    case "$p" in
    gpt-oss*) ty=mxfp4 ;;
    *) ty=q4_k_m ;;
    esac
    "$BIN" mkmodel "$M" --shape "$p" --zero --type "$ty" >"$DIR/frontier-$$.log" 2>&1 ||
        { echo "$p: mkmodel failed: $(tail -1 "$DIR/frontier-$$.log")"; continue; }
    t1=$(now)
    CG=$CGROOT/nf-frontier-$$
    mkdir "$CG" || skip "cannot create $CG"
    echo $LIMIT >"$CG/$LIMIT_FILE"
    ok=1
    in_cg "$BIN" up -m "$M" --run-dir "$R" --ram 1G >"$DIR/frontier-$$.log" 2>&1 || ok=0
    t2=$(now)
    peak_up=$(cat "$CG/$PEAK_FILE")
    # v1 resets its peak on a write: the generation's own peak, once the index is built (the
    # index build reads the whole GGUF, whose page cache the cgroup is charged for).
    gen_peak_ok=0
    [ $CGV = 1 ] && echo 0 >"$CG/$PEAK_FILE" 2>/dev/null && gen_peak_ok=1
    n=0
    if [ $ok = 1 ]; then
        out=$(in_cg "$BIN" gen --run-dir "$R" -p "Hello" -n 4 --temp 0 --json --timeout 900 2>>"$DIR/frontier-$$.log" |
            tail -n 1)
        n=$(python3 -c 'import json,sys; print(len(json.loads(sys.argv[1])["gen_ids"]))' "$out" \
            2>/dev/null || echo 0)
    fi
    t3=$(now)
    in_cg "$BIN" down --run-dir "$R" >/dev/null 2>&1
    peak=$(cat "$CG/$PEAK_FILE")
    [ $gen_peak_ok = 1 ] || peak_up=$peak
    size=$(stat -c %s "$M")
    gp="$(echo "$peak / 1048576" | bc -l | xargs printf '%.1f')"
    [ $gen_peak_ok = 1 ] || gp="n/a"
    printf '%-16s %8.1f %9s %7s %7s %6s %12.1f %12s\n' "$p" "$(echo "$size / 1000000000" | bc -l)" \
        "$(secs "$t0" "$t1")" "$(secs "$t1" "$t2")" "$(secs "$t2" "$t3")" "$n" \
        "$(echo "$peak_up / 1048576" | bc -l)" "$gp"
    [ $ok = 1 ] || { echo "$p: up failed:"; tail -3 "$DIR/frontier-$$.log"; }
    rmdir "$CG" 2>/dev/null
    CG=
    [ "${KEEP:-0}" = 1 ] || rm -f "$M" "${M%.gguf}.nfi"
    M=
done
rm -f "$DIR/frontier-$$.log"
