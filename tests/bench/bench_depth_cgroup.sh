#!/usr/bin/env bash
# bench_depth_cgroup.sh - issue 15, item 4: decode at context depth in a memory cgroup of RAM.
#  1. `nanoflowctl bench -d DEPTHS --kv-offload on -c CTX` (each engine in its own fresh cgroup
#     of RAM, made by bench): the exact stack and run --mmap, TTFT and decode tok/s after a
#     prompt of each depth, bytes read per decode token;
#  2. when llama.cpp's llama-completion is in LLAMA_BIN_DIR: a conversation of about CTX tokens
#     (CTX - 200 random words of a small vocabulary, -n 8, -fa off -c CTX) in a fresh cgroup of
#     RAM: whether it finishes or is OOM-killed (exit status, the cgroup's oom_kill count and
#     peak), and how long it ran.
# Prints bench's table, then one line for llama.cpp; the raw outputs stay in $OUT.
#
# Usage: bench_depth_cgroup.sh NANOFLOWCTL MODEL.gguf [LLAMA_BIN_DIR]
# env: DEPTHS (512,4096), CTX (4096), N (8), RAM (1G), TIMEOUT (seconds per engine, 3600),
# OUT (a fresh directory). Needs root (memory cgroups). A benchmark, not a test: it may call
# llama.cpp.
set -u
BIN=${1:?usage: bench_depth_cgroup.sh NANOFLOWCTL MODEL.gguf [LLAMA_BIN_DIR]}
M=${2:?usage: bench_depth_cgroup.sh NANOFLOWCTL MODEL.gguf [LLAMA_BIN_DIR]}
LB=${3:-/work/shared/oracle/llama.cpp/bin}
DEPTHS=${DEPTHS:-512,4096} CTX=${CTX:-4096} N=${N:-8} RAM=${RAM:-1G} TIMEOUT=${TIMEOUT:-3600}
OUT=${OUT:-$(mktemp -d /tmp/bench-depth-XXXXXX)}
skip() { echo "bench_depth_cgroup: skipped: $*"; exit 77; }
[ -x "$BIN" ] || skip "no nanoflowctl at $BIN"
[ -f "$M" ] || skip "no model at $M"
[ "$(id -u)" -eq 0 ] || skip "needs root (memory cgroups)"
mkdir -p "$OUT"

"$BIN" bench -m "$M" --ram "$RAM" -c "$CTX" --kv-offload on -n "$N" --sparsity none \
    -d "$DEPTHS" --timeout "$TIMEOUT" --run-dir "$OUT/bench" >"$OUT/bench.txt" 2>"$OUT/bench.err"
echo "bench exit $?"
cat "$OUT/bench.txt"

if [ ! -x "$LB/llama-completion" ]; then
    echo "llama.cpp: no llama-completion in $LB: not run"
    exit 0
fi
# The cgroup: v2 under the root, or v1's memory hierarchy under this shell's own group.
if [ -r /sys/fs/cgroup/cgroup.controllers ] && grep -qw memory /sys/fs/cgroup/cgroup.controllers; then
    CG=/sys/fs/cgroup/nf-depth-$$ LIMIT=memory.max PEAK=memory.peak
    OOM() { sed -n 's/^oom_kill //p' "$CG/memory.events"; }
else
    CG=/sys/fs/cgroup/memory$(sed -n 's/^[0-9]*:memory://p' /proc/self/cgroup)/nf-depth-$$
    LIMIT=memory.limit_in_bytes PEAK=memory.max_usage_in_bytes
    OOM() { sed -n 's/^oom_kill //p' "$CG/memory.oom_control"; }
fi
mkdir "$CG" && echo "$(numfmt --from=iec "$RAM")" >"$CG/$LIMIT" || skip "cannot create $CG"
[ -e "$CG/memory.memsw.limit_in_bytes" ] && echo "$(numfmt --from=iec "$RAM")" >"$CG/memory.memsw.limit_in_bytes"
python3 -c "
import random
w = 'the cat sat on a mat and looked at big red ball that dog had left in garden one day'.split()
random.seed(1)
print(' '.join(random.choice(w) for _ in range($CTX - 200)))" >"$OUT/conversation.txt"
t0=$(date +%s)
timeout "$TIMEOUT" bash -c 'echo $$ >"$0/cgroup.procs" && exec "$@"' "$CG" "$LB/llama-completion" \
    -m "$M" -fa off -c "$CTX" -f "$OUT/conversation.txt" -n "$N" -t "$(($(nproc) > 1 ? $(nproc) - 1 : 1))" \
    --temp 0 -no-cnv >"$OUT/llama.out" 2>"$OUT/llama.err"
rc=$?
echo "llama.cpp llama-completion -fa off -c $CTX, a $CTX-token conversation in a $RAM cgroup:" \
    "exit $rc$([ $rc -eq 137 ] && echo ' (SIGKILL)'), oom_kill $(OOM), peak $(cat "$CG/$PEAK")" \
    "bytes, $(($(date +%s) - t0)) s"
rmdir "$CG"
