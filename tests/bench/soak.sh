#!/usr/bin/env bash
# soak.sh - issue 9's soak benchmark (not a test): a stack on stories260K (or --model), inside a
# 1 GiB memory cgroup when one can be made, serves N generations from C concurrent clients
# (the goldens' prompts, greedy and seeded) while a disturber floods each daemon's socket
# (connect/close churn, unread pipelined Stats requests, half-sent frames), sends Cancel from
# foreign connections and SIGKILLs a random daemon every M generations followed by `up`.
# Every daemon's VmRSS / RssAnon and the cgroup's usage go to a CSV each second; at the end one
# table: generations completed / failed by cause / wrong outputs, duration, memory per daemon,
# cgroup peak and OOM kills. The driver is soak.py beside this script (python3, standard
# library). Exits 0 when every completed output equals its reference and every failure was a
# killed daemon's, 1 otherwise, 77 when it cannot run.
#
# Usage: tests/bench/soak.sh [-n N] [-c CLIENTS] [--kill-every M] [--duration SECONDS]
#          [--model FILE.gguf] [--tokens K] [--csv FILE] [--no-cgroup] [--bin NANOFLOWCTL]
# --model must be a model of ../shared/golden (its greedy references are the golden gen_ids).
set -u
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
SHARED=${NF_SHARED_DIR:-$ROOT/../shared}
BIN=${NF_BIN:-$ROOT/build/ctl/nanoflowctl}
MODEL=$SHARED/models/stories260K.gguf
N=2000 CLIENTS=16 KILL_EVERY=100 DURATION=3600 TOKENS=32 CSV='' USE_CG=1
LIMIT=$((1024 * 1024 * 1024))
usage() { sed -n 's/^# \{0,1\}//; 13,15p' "$0"; exit 2; }
while [ $# -gt 0 ]; do
    case "$1" in
    -n) N=$2; shift ;;
    -c | --clients) CLIENTS=$2; shift ;;
    --kill-every) KILL_EVERY=$2; shift ;;
    --duration) DURATION=$2; shift ;;
    --model) MODEL=$2; shift ;;
    --tokens) TOKENS=$2; shift ;;
    --csv) CSV=$2; shift ;;
    --bin) BIN=$2; shift ;;
    --no-cgroup) USE_CG= ;;
    -h | --help) usage ;;
    *) echo "soak.sh: unknown argument $1" >&2; usage ;;
    esac
    [ $# -gt 0 ] && shift
done
skip() { echo "soak: skipped: $*"; exit 77; }
[ -x "$BIN" ] || skip "no nanoflowctl at $BIN (build first, or --bin)"
command -v python3 >/dev/null || skip "python3 is needed"
GOLDEN=$SHARED/golden/$(basename "$MODEL" .gguf).jsonl
[ -r "$MODEL" ] || skip "no model $MODEL"
[ -r "$GOLDEN" ] || skip "no golden $GOLDEN for the model's greedy references"

T=$(mktemp -d /tmp/nf-soak.XXXXXX)
R=$T/run
[ -n "$CSV" ] || CSV=${TMPDIR:-/tmp}/nf-soak-$$.csv # kept: the memory over time
CG='' CGROOT='' CG_NOTE=''
cg_drop() {
    [ -n "$CG" ] && [ -d "$CG" ] || return 0
    local p
    while read -r p; do kill -9 "$p" 2>/dev/null; done <"$CG/cgroup.procs"
    for _ in $(seq 50); do
        [ -z "$(cat "$CG/cgroup.procs" 2>/dev/null)" ] && break
        sleep 0.1
    done
    rmdir "$CG" 2>/dev/null || echo "soak: could not remove $CG" >&2
}
# shellcheck disable=SC2317 # called by the EXIT trap
cleanup() {
    trap - EXIT INT TERM
    [ -n "${DRIVER:-}" ] && kill "$DRIVER" 2>/dev/null && wait "$DRIVER" 2>/dev/null
    "$BIN" down --run-dir "$R" >/dev/null 2>&1
    cg_drop
    rm -rf "$T"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# The memory cgroup: v2 when the unified hierarchy has the memory controller, else v1.
if [ -z "$USE_CG" ]; then
    CG_NOTE="--no-cgroup"
elif [ "$(id -u)" != 0 ]; then
    CG_NOTE="not root"
elif [ -r /sys/fs/cgroup/cgroup.controllers ] && grep -qw memory /sys/fs/cgroup/cgroup.controllers; then
    CGROOT=/sys/fs/cgroup
    grep -qw memory "$CGROOT/cgroup.subtree_control" ||
        echo +memory >"$CGROOT/cgroup.subtree_control" 2>/dev/null
    if mkdir "$CGROOT/nf-soak-$$" 2>/dev/null; then
        CG=$CGROOT/nf-soak-$$
        echo $LIMIT >"$CG/memory.max" && echo 0 >"$CG/memory.swap.max" 2>/dev/null
    fi
elif [ -e /sys/fs/cgroup/memory/memory.limit_in_bytes ]; then
    CGROOT=/sys/fs/cgroup/memory
    if mkdir "$CGROOT/nf-soak-$$" 2>/dev/null; then
        CG=$CGROOT/nf-soak-$$
        echo $LIMIT >"$CG/memory.limit_in_bytes"
    fi
fi
if [ -n "$USE_CG" ] && [ -z "$CG" ] && [ -z "$CG_NOTE" ]; then
    CG_NOTE="cannot create a memory cgroup under ${CGROOT:-/sys/fs/cgroup}"
fi
if [ -n "$CG" ] && ! bash -c 'echo $$ >"$0/cgroup.procs"' "$CG" 2>/dev/null; then
    CG_NOTE="cannot move a process into $CG"
    cg_drop
    CG=
fi
[ -n "$CG_NOTE" ] && echo "soak: running without a memory cgroup: $CG_NOTE"

export XDG_CACHE_HOME=$T/cache
cp "$MODEL" "$T/model.gguf"
# `up` (first and after each kill) runs inside the cgroup: the daemons inherit it.
UP="'$BIN' up -m '$T/model.gguf' --ram 256M -t 1 --run-dir '$R'"
[ -n "$CG" ] && UP="echo \$\$ >'$CG/cgroup.procs' && exec $UP"
python3 "$HERE/soak.py" --bin "$BIN" --model "$T/model.gguf" --golden "$GOLDEN" --run-dir "$R" \
    --up-cmd "$UP" --csv "$CSV" --cgroup "$CG" --cgroup-note "$CG_NOTE" --limit $LIMIT \
    -n "$N" --clients "$CLIENTS" --kill-every "$KILL_EVERY" --duration "$DURATION" \
    --tokens "$TOKENS" &
DRIVER=$!
wait $DRIVER
rc=$?
DRIVER=
exit $rc
