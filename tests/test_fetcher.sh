#!/usr/bin/env bash
# test_fetcher.sh - nanoflow-fetcher's command line and lifecycle: usage errors, a budget too
# small, detaching once ready, one fetcher per run dir, the pread fallback logged once, SIGTERM
# leaving no shm object, socket or pid file. (Tile I/O itself: test_fetcher_io.)
set -u
FETCHER="${NF_BUILD_DIR:?}/daemons/nanoflow-fetcher"
MODEL="${NF_SHARED_DIR:?}/models/stories260K.gguf"
if [[ ! -x "$FETCHER" || ! -r "$MODEL" || -z "${NF_BIN:-}" ]]; then
    echo "skip: needs $FETCHER, $MODEL and NF_BIN"
    exit 77
fi
T=$(mktemp -d /tmp/nf-test-fetcher-sh-XXXXXX)
PIDS=()
cleanup() {
    for p in "${PIDS[@]}"; do kill -KILL "$p" 2>/dev/null; done
    rm -rf "$T"
}
trap cleanup EXIT
fails=0
fail() { echo "FAIL: $*"; fails=$((fails + 1)); }
ok() { echo "ok: $*"; }

"$NF_BIN" convert "$MODEL" "$T/s.nft" >/dev/null 2>&1 || { echo "FAIL: convert"; exit 1; }

# Usage errors exit 2 with a message; --help exits 0.
"$FETCHER" --help >"$T/help" 2>&1 && grep -q -- "--verify" "$T/help" && ok "--help" || fail "--help"
"$FETCHER" --model "$T/s.nft" --bogus >/dev/null 2>"$T/err"; rc=$?
[[ $rc == 2 ]] && grep -q "unknown flag '--bogus'" "$T/err" && ok "unknown flag" || fail "unknown flag rc=$rc"
"$FETCHER" --run-dir "$T/r0" >/dev/null 2>"$T/err"; rc=$?
[[ $rc == 2 ]] && grep -q -- "--model" "$T/err" && ok "missing --model" || fail "missing --model rc=$rc"
"$FETCHER" --model "$T/s.nft" --verify maybe >/dev/null 2>"$T/err"; rc=$?
[[ $rc == 2 ]] && grep -q "maybe" "$T/err" && ok "bad --verify" || fail "bad --verify rc=$rc"

# A missing model and a budget too small fail (exit 1) with the reason in the log.
"$FETCHER" --run-dir "$T/r1" --model "$T/nope.nft" --foreground 2>"$T/err"; rc=$?
[[ $rc == 1 ]] && grep -q "nope.nft" "$T/err" && ok "missing model named" || fail "missing model rc=$rc"
"$FETCHER" --run-dir "$T/r1" --model "$T/s.nft" --ram 1M; rc=$?
[[ $rc == 1 ]] && grep -q "below the minimum" "$T/r1/fetcher.log" && ok "budget too small" ||
    fail "budget too small rc=$rc: $(tail -2 "$T/r1/fetcher.log")"
[[ ! -e "$T/r1/fetcher.pid" && ! -e "$T/r1/fetcher.sock" ]] && ok "failed start leaves no pid/socket" ||
    fail "failed start left files"

# Detached start: returns 0 once ready, socket and pid file in place, region present.
"$FETCHER" --run-dir "$T/r2" --model "$T/s.nft" --ram 64M --no-uring; rc=$?
pid=$(cat "$T/r2/fetcher.pid" 2>/dev/null)
[[ -n "$pid" ]] && PIDS+=("$pid")
[[ $rc == 0 && -S "$T/r2/fetcher.sock" && -n "$pid" ]] && kill -0 "$pid" && ok "detached start" ||
    fail "detached start rc=$rc"
shm=$(grep -o "region /nanoflow-[0-9a-f]*" "$T/r2/fetcher.log" | head -1 | cut -d' ' -f2)
[[ -n "$shm" && -e "/dev/shm$shm" ]] && ok "region $shm exists" || fail "region missing"
n=$(grep -c "pread thread pool" "$T/r2/fetcher.log")
[[ $n == 1 ]] && ok "pread fallback logged once" || fail "pread fallback logged $n times"
"$FETCHER" --run-dir "$T/r2" --model "$T/s.nft" --ram 64M; rc=$?
[[ $rc == 1 ]] && grep -q "already running" "$T/r2/fetcher.log" && ok "one fetcher per run dir" ||
    fail "second fetcher rc=$rc"
kill -0 "$pid" 2>/dev/null && ok "first fetcher still running" || fail "first fetcher died"

# SIGTERM is a clean shutdown: nothing left behind.
kill -TERM "$pid"
for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.05; done
if kill -0 "$pid" 2>/dev/null; then
    fail "fetcher still running 5 s after SIGTERM"
else
    ok "SIGTERM exit"
fi
[[ ! -e "/dev/shm$shm" && ! -e "$T/r2/fetcher.sock" && ! -e "$T/r2/fetcher.pid" ]] &&
    ok "no shm, socket or pid file left" || fail "leftovers after SIGTERM"
grep -q "exiting (clean)" "$T/r2/fetcher.log" && ok "clean exit logged" || fail "no clean exit in log"

if [[ $fails -gt 0 ]]; then
    echo "$fails check(s) failed"
    exit 1
fi
echo "all checks passed"
