#!/usr/bin/env bash
# bench_convert.sh - converts a generated llama-7b Q4_0 GGUF inside a 1 GiB memory cgroup and
# prints the time, the cgroup's peak memory (page cache included) and the converter's peak RSS.
# Usage: bench_convert.sh [NANOFLOWCTL] [IN.gguf] [OUT_DIR]; needs root for the cgroup (cgroup v1
# memory controller or cgroup v2). Skips (exit 77) with the reason when it cannot run.
set -u
BIN=${1:-${NF_BIN:-build/ctl/nanoflowctl}}
IN=${2:-/work/models-cache/llama-7b-q4_0.gguf}
DIR=${3:-$(dirname "$IN")}
LIMIT=$((1024 * 1024 * 1024))
OUT="$DIR/bench-convert-$$.nft"
skip() { echo "bench_convert: skipped: $*"; exit 77; }

[ -x "$BIN" ] || skip "no nanoflowctl at $BIN"
[ -r "$IN" ] || skip "no input model $IN (generate one with: nanoflowctl mkmodel OUT.gguf --shape llama-7b --type q4_0)"
need=$(stat -c %s "$IN")
avail=$(($(df --output=avail -B1 "$DIR" | tail -1)))
[ "$avail" -gt $((need + need / 4)) ] || skip "$DIR has $avail bytes free, needs about $((need + need / 4))"

CG=""
if [ -d /sys/fs/cgroup/memory ] && mkdir "/sys/fs/cgroup/memory/nf-bench-$$" 2>/dev/null; then
    CG=/sys/fs/cgroup/memory/nf-bench-$$
    echo $LIMIT >"$CG/memory.limit_in_bytes" || skip "cannot set memory.limit_in_bytes"
    LIMIT_FILE=memory.limit_in_bytes PEAK_FILE=memory.max_usage_in_bytes
elif [ -f /sys/fs/cgroup/cgroup.controllers ] && mkdir "/sys/fs/cgroup/nf-bench-$$" 2>/dev/null; then
    CG=/sys/fs/cgroup/nf-bench-$$
    echo $LIMIT >"$CG/memory.max" || skip "cannot set memory.max"
    LIMIT_FILE=memory.max PEAK_FILE=memory.peak
else
    skip "cannot create a memory cgroup (needs root and a memory controller)"
fi
cleanup() {
    rm -f "$OUT" "$OUT".tmp-*
    [ -n "$CG" ] && rmdir "$CG" 2>/dev/null
}
trap cleanup EXIT

start=$(date +%s.%N)
# The child joins the cgroup before exec'ing the converter; /usr/bin/time reports its max RSS.
bash -c "echo \$\$ >'$CG/cgroup.procs' && exec /usr/bin/time -f '%M' '$BIN' convert '$IN' '$OUT'" \
    2>"$OUT.log"
rc=$?
end=$(date +%s.%N)
peak=$(cat "$CG/$PEAK_FILE")
rss_kb=$(tail -1 "$OUT.log")
if [ $rc -ne 0 ]; then
    echo "bench_convert: convert failed (exit $rc):"
    cat "$OUT.log"
    rm -f "$OUT.log"
    exit 1
fi
"$BIN" inspect "$OUT" | sed -n '/predictors:/p'
rm -f "$OUT.log"
printf '%-28s %12s %16s %16s %12s\n' model seconds "cgroup peak MiB" "max RSS MiB" "limit MiB"
printf '%-28s %12.1f %16.1f %16.1f %12d\n' "$(basename "$IN")" "$(echo "$end - $start" | bc)" \
    "$(echo "$peak / 1048576" | bc -l)" "$(echo "$rss_kb / 1024" | bc -l)" $((LIMIT / 1048576))
