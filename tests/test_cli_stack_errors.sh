#!/usr/bin/env bash
# test_cli_stack_errors.sh - up/down/status/stats/gen error paths that need no running daemons:
# no stack -> a clear message and exit 1, bad flags -> exit 2, a budget below the plan's minimum
# -> refused naming the minimum, a live pid -> "already running"; nothing is left behind.
set -u
. "$(dirname "$0")/lib.sh" # expect
: "${NF_BIN:?NF_BIN must point to nanoflowctl}"
: "${NF_SHARED_DIR:?NF_SHARED_DIR must point to the shared directory}"
M0="$NF_SHARED_DIR/models/stories260K.gguf"
if [ ! -f "$M0" ]; then
    echo "skip: $M0 is missing"
    exit 77
fi
T=$(mktemp -d)
SLEEPER=
cleanup() {
    [ -n "$SLEEPER" ] && kill "$SLEEPER" 2>/dev/null
    rm -rf "$T"
}
trap cleanup EXIT
export XDG_CACHE_HOME="$T/cache" NANOFLOW_RUN_DIR="$T/default-run"
R="$T/run"
fail=0

# 1. No stack running: every client command says so and exits 1.
expect "down without a stack" 1 "no stack running in $R" "$NF_BIN" down --run-dir "$R"
expect "status without a stack" 1 "no stack running in $R" "$NF_BIN" status --run-dir "$R"
expect "status --json without a stack" 1 "no stack running" "$NF_BIN" status --run-dir "$R" --json
expect "stats without a stack" 1 "no stack running in $R" "$NF_BIN" stats --run-dir "$R"
expect "gen without a stack" 1 "no stack running in $R" "$NF_BIN" gen --run-dir "$R" "Once upon"
expect "default run dir from NANOFLOW_RUN_DIR" 1 "no stack running in $T/default-run" \
    "$NF_BIN" status
[ ! -s "$T/out" ]
if [ $? -ne 0 ]; then echo "FAIL: status without a stack printed to stdout"; fail=1; fi

# 2. Usage errors exit 2 and point to --help.
expect "up without --model" 2 "--model FILE is required" "$NF_BIN" up --run-dir "$R"
expect "up bad --ram" 2 "--ram" "$NF_BIN" up -m "$M0" --ram lots
expect "up --sparsity out of range" 2 "--sparsity" "$NF_BIN" up -m "$M0" --sparsity 1.5
expect "up bad -t" 2 "-t" "$NF_BIN" up -m "$M0" -t -3
expect "up unknown flag" 2 "unknown flag" "$NF_BIN" up -m "$M0" --bogus
expect "up bad --log-level" 2 "--log-level" "$NF_BIN" up -m "$M0" --log-level loud
expect "up --run-dir without value" 2 "" "$NF_BIN" up -m "$M0" --run-dir
expect "down unknown flag" 2 "unknown flag" "$NF_BIN" down --force
expect "status unknown flag" 2 "unknown flag" "$NF_BIN" status --all
expect "stats bad --watch" 2 "--watch" "$NF_BIN" stats --watch never
expect "stats --watch 0" 2 "--watch" "$NF_BIN" stats --watch=0
expect "gen -n 0" 2 "-n" "$NF_BIN" gen -n 0 hi
expect "gen two prompts" 2 "more than one prompt" "$NF_BIN" gen hello -p world
expect "gen prompt and file" 2 "not both" "$NF_BIN" gen -p hi -f "$T/p.txt"
expect "gen --top-logits without --json" 2 "--top-logits needs --json" "$NF_BIN" gen \
    --top-logits 3 hi
expect "gen --temp out of range" 2 "--temp" "$NF_BIN" gen --temp -1 hi
expect "gen unknown flag" 2 "unknown flag" "$NF_BIN" gen --model x hi
for c in up down status stats gen; do
    "$NF_BIN" "$c" --help >"$T/help" 2>&1
    rc=$?
    if [ $rc -ne 0 ] || ! grep -q "usage: nanoflowctl $c" "$T/help"; then
        echo "FAIL: $c --help (rc $rc)"
        fail=1
    fi
done
echo "ok: --help of every stack command"

# 3. Runtime refusals of up (exit 1) that start nothing.
expect "up with a missing model" 1 "$T/none.gguf" "$NF_BIN" up -m "$T/none.gguf" --run-dir "$R"
mkdir -p "$T/open" && chmod 755 "$T/open"
expect "up refuses a run dir others can enter" 1 "expected 0700" "$NF_BIN" up -m "$M0" \
    --run-dir "$T/open"
printf 'not a model at all' >"$T/bad.nft"
expect "up with a file that is no model" 1 "$T/bad.nft" "$NF_BIN" up -m "$T/bad.nft" --run-dir "$R"

# A budget below the minimum is refused with the minimum (bytes) named. The model is copied so
# its in-place index is cached beside the copy, never in the shared directory.
cp "$M0" "$T/m.gguf"
expect "up with a 1M budget is refused" 1 "too small" "$NF_BIN" up -m "$T/m.gguf" --ram 1M \
    --run-dir "$R"
min=$(sed -n 's/.*it needs at least [^(]*(\([0-9]*\) bytes.*/\1/p' "$T/err")
if [ -z "$min" ] || [ "$min" -le $((1 << 20)) ]; then
    echo "FAIL: the refusal names no minimum above 1M: $(cat "$T/err")"
    fail=1
else
    echo "ok: minimum named ($min bytes)"
fi
[ -f "$T/m.nfi" ] && [ ! -e "$T/m.nft" ]
if [ $? -ne 0 ]; then echo "FAIL: the index is not cached beside the copy (or a .nft was)"; fail=1; fi
# One byte below the minimum is still refused; the second up reuses the cached index.
expect "up one byte below the minimum" 1 "too small" "$NF_BIN" up -m "$T/m.gguf" \
    --ram $((min - 1)) --run-dir "$R"
grep -q "using cached" "$T/err"
if [ $? -ne 0 ]; then echo "FAIL: second up did not reuse the cached index"; fail=1; fi
left=$(ls "$R" 2>/dev/null | grep -E '\.(sock|pid)$')
if [ -n "$left" ]; then echo "FAIL: refused up left files: $left"; fail=1; fi

# 4. A live pid in the run dir means "already running"; status/stats report it as not answering.
mkdir -p "$R" && chmod 700 "$R"
sleep 60 &
SLEEPER=$!
echo "$SLEEPER" >"$R/compute.pid"
expect "up while a pid is live" 1 "already running" "$NF_BIN" up -m "$T/m.gguf" --run-dir "$R"
expect "status with a silent daemon" 1 "0 of 3 daemons answer" "$NF_BIN" status --run-dir "$R"
grep -q "compute *$SLEEPER *not responding" "$T/out"
if [ $? -ne 0 ]; then echo "FAIL: status row of the silent daemon: $(cat "$T/out")"; fail=1; fi
kill "$SLEEPER" 2>/dev/null
wait "$SLEEPER" 2>/dev/null
SLEEPER=
# A stale pid file (dead process) is not a running stack.
expect "status with a stale pid file" 1 "no stack running" "$NF_BIN" status --run-dir "$R"

exit $fail
