#!/usr/bin/env bash
# test_stack_liveness.sh - no daemon outlives its stack, deaths are seen at once, no endless
# waits (issue 9, items 3-5), on a real stack on stories260K:
#  1. kill -9 of each daemon in turn: a gen fails within 2 s naming it, status says "dead",
#     up replaces the half-dead stack and a gen gives the golden output again;
#  2. kill -9 of the fetcher, then down: the half-dead stack stops and leaves nothing behind;
#  3. SIGTERM of the fetcher: predictor and compute exit within 2 s;
#  4. SIGSTOP of compute: gen --timeout 2 fails after ~2 s with the message, before the first
#     frame (Hello) and in the middle of a stream;
#  5. kill -9 of compute in the middle of a stream, five times: gen names it;
#  6. down returns only once every daemon has exited, even when a daemon's exit is slow after it
#     removed its pid file (strace delays each daemon's exit_group by 2 s).
set -u
. "$(dirname "$0")/lib.sh"
: "${NF_BIN:?NF_BIN must point to nanoflowctl}"
: "${NF_SHARED_DIR:?NF_SHARED_DIR must point to the shared directory}"
need_stories
need_daemons
T=$(mktemp -d)
R="$T/run"
STOPPED=
cleanup() {
    [ -n "$STOPPED" ] && kill -CONT "$STOPPED" 2>/dev/null
    "$NF_BIN" down --run-dir "$R" >/dev/null 2>&1
    keep_failed
    rm -rf "$T"
}
trap cleanup EXIT
export XDG_CACHE_HOME="$T/cache"
cp "$M0" "$T/m.gguf"
# A trained context of 2048 (tests/lib.sh): `up --ctx 2048` is taken and a generation runs long
# enough to be stopped mid-stream.
patch_ctx "$T/m.gguf" 2048 || exit 1
N=20
# The golden prompt and its first N generated ids as gen --json prints them ("1,2,3"); python
# once only: its start-up takes seconds on a loaded machine, awk and grep do the rest.
python3 - "$G" "$N" "$T/prompt.txt" >"$T/gold.ids" <<'PY'
import json, sys
g = json.loads(open(sys.argv[1]).readline())
open(sys.argv[3], "w").write(g["prompt"])
print(",".join(str(i) for i in g["gen_ids"][:int(sys.argv[2])]))
PY
PROMPT=$(cat "$T/prompt.txt")
GOLD=$(cat "$T/gold.ids")

now() { date +%s.%N; }
# elapsed T0: seconds since T0.
elapsed() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.2f", b - a }'; }
# below X LIMIT: X < LIMIT.
below() { awk -v x="$1" -v l="$2" 'BEGIN { exit !(x < l) }'; }
# gone PID: the process is gone or a zombie (the reaper may be slow).
gone() { ! proc_running "$1"; }

up() {
    "$NF_BIN" up -m "$T/m.gguf" --ram 256M -t 1 --ctx 2048 --run-dir "$R" >"$T/up.out" 2>"$T/up.err"
}

# golden NAME: a greedy gen equals the golden generation's first N ids.
golden() {
    "$NF_BIN" gen --run-dir "$R" -p "$PROMPT" --temp 0 -n $N --json >"$T/gen.jsonl" 2>"$T/gen.err" &&
        tail -n 1 "$T/gen.jsonl" | grep -q "\"gen_ids\":\[$GOLD\]"
    check "$1" $?
}

up
check "up" $?
golden "gen gives the golden output"

# 1. kill -9 of each daemon in turn.
for role in fetcher predictor compute; do
    pid=$(cat "$R/$role.pid")
    kill -9 "$pid"
    # SIGKILL takes effect when the task next runs, which a loaded machine can delay (a gen
    # 0.03 s after the kill once found the fetcher still running and gave its tokens): what
    # is checked is a gen after the death, so wait until the process is gone (at most 2 s).
    for _ in $(seq 200); do
        gone "$pid" && break
        sleep 0.01
    done
    t0=$(now)
    "$NF_BIN" gen --run-dir "$R" -p "$PROMPT" --temp 0 -n $N >/dev/null 2>"$T/err"
    rc=$?
    dt=$(elapsed "$t0")
    [ $rc -ne 0 ] && below "$dt" 2 && grep -q "the $role (pid $pid) died" "$T/err"
    st=$? # the $(...) in the message would reset $?
    check "kill -9 $role: gen fails in ${dt} s naming it (rc $rc: $(cat "$T/err"))" $st
    "$NF_BIN" status --run-dir "$R" >"$T/status.out" 2>"$T/status.err"
    rc=$?
    [ $rc -eq 1 ] && grep -Eq "^$role +$pid +dead" "$T/status.out" &&
        grep -q "the $role (pid $pid) died" "$T/status.err"
    st=$?
    check "kill -9 $role: status says it is dead (rc $rc: $(tr '\n' '|' <"$T/status.out") $(tr '\n' '|' <"$T/status.err"))" $st
    "$NF_BIN" status --run-dir "$R" --json 2>/dev/null |
        grep -q "{\"role\":\"$role\",\"pid\":$pid,\"state\":\"dead\"}"
    check "kill -9 $role: status --json says it is dead" $?
    survivors=$(for r in fetcher predictor compute; do [ $r != $role ] && cat "$R/$r.pid"; done)
    up
    rc=$?
    [ $rc -eq 0 ] && grep -q "the $role (pid $pid) of the stack in $R died" "$T/up.err"
    check "kill -9 $role: up replaces the half-dead stack (rc $rc)" $?
    for p in $survivors; do
        gone "$p"
        check "kill -9 $role: the old stack's pid $p is gone" $?
    done
    golden "kill -9 $role: the new stack gives the golden output"
done

# 2. down on a half-dead stack.
kill -9 "$(cat "$R/fetcher.pid")"
"$NF_BIN" down --run-dir "$R" >/dev/null 2>"$T/err"
st=$? # the $(...) in the message would reset $?
check "down stops a stack whose fetcher died ($(cat "$T/err"))" $st
left=$(ls "$R" | grep -vE '\.log$')
[ -z "$left" ]
check "down leaves only logs ($left)" $?

# 3. SIGTERM of the fetcher stops the whole stack.
up
check "up again" $?
pp=$(cat "$R/predictor.pid")
cp=$(cat "$R/compute.pid")
kill -TERM "$(cat "$R/fetcher.pid")"
t0=$(now)
for _ in $(seq 100); do
    gone "$pp" && gone "$cp" && break
    sleep 0.05
done
dt=$(elapsed "$t0")
gone "$pp" && gone "$cp" && below "$dt" 2
check "SIGTERM of the fetcher: predictor and compute exit in ${dt} s" $?
grep -q "shutting down (the stack is stopping)" "$R/compute.log"
check "compute says why it stopped" $?
"$NF_BIN" down --run-dir "$R" >/dev/null 2>&1

# 4. SIGSTOP of compute: gen gives up after --timeout.
up
check "up for the stall" $?
STOPPED=$(cat "$R/compute.pid")
kill -STOP "$STOPPED"
t0=$(now)
"$NF_BIN" gen --run-dir "$R" -p "$PROMPT" --temp 0 -n $N --timeout 2 >/dev/null 2>"$T/err"
rc=$?
dt=$(elapsed "$t0")
[ $rc -eq 1 ] && ! below "$dt" 1.9 && below "$dt" 4 && grep -q "compute did not answer within 2.0 s" "$T/err"
st=$? # the $(...) in the message would reset $?
check "stopped compute: gen --timeout 2 fails in ${dt} s (rc $rc: $(cat "$T/err"))" $st
kill -CONT "$STOPPED"
# In the middle of a stream: stop compute once tokens flow.
"$NF_BIN" gen --run-dir "$R" -p "Once" --temp 0 -n 1000000 --timeout 2 >"$T/long.txt" 2>"$T/err" &
GP=$!
for _ in $(seq 200); do
    [ -s "$T/long.txt" ] && break
    sleep 0.02
done
kill -STOP "$STOPPED"
t0=$(now)
wait "$GP"
rc=$?
dt=$(elapsed "$t0")
[ $rc -eq 1 ] && below "$dt" 4 && grep -q "compute sent nothing for 2.* s (--timeout 2)" "$T/err"
st=$? # the $(...) in the message would reset $?
check "compute stopped mid-stream: gen fails in ${dt} s (rc $rc: $(cat "$T/err"))" $st
kill -CONT "$STOPPED"
STOPPED=
golden "after SIGCONT the stack serves the golden output"

# 5. kill -9 of compute in the middle of a stream: gen names it. compute's socket closes while
# the kernel still tears the process down (not yet a zombie in /proc), so a gen that looked for
# the death only once said "compute closed the connection" in about 1 try in 4 (the soak).
for i in 1 2 3 4 5; do
    if [ $i -gt 1 ]; then
        up
        rc=$?
        check "kill -9 compute mid-stream ($i/5): up replaces the stack (rc $rc: $(tail -n 3 "$T/up.err" | tr '\n' ' '))" $rc
    fi
    pid=$(cat "$R/compute.pid")
    "$NF_BIN" gen --run-dir "$R" -p "Once" --temp 0 -n 1000000 >"$T/long.txt" 2>"$T/err" &
    GP=$!
    for _ in $(seq 200); do
        [ -s "$T/long.txt" ] && break
        sleep 0.02
    done
    kill -9 "$pid"
    wait "$GP"
    rc=$?
    [ $rc -eq 1 ] && grep -q "the compute (pid $pid) died" "$T/err"
    st=$? # the $(...) in the message would reset $?
    check "kill -9 compute mid-stream ($i/5): gen names it (rc $rc: $(cat "$T/err"))" $st
done

# 6. A daemon removes its pid file, then returns from main; its exit can still take a while (the
# leak check of a sanitizer build, a loaded machine). CI once saw `down` return in that window
# with a daemon still alive: it took the missing pid file for the exit. strace holds each
# daemon's exit_group for 2 s; down must not return before all three are gone. Skipped where
# ptrace is not allowed.
"$NF_BIN" down --run-dir "$R" >/dev/null 2>&1
# LeakSanitizer cannot ptrace a process strace already traces.
ASAN_OPTIONS="${ASAN_OPTIONS:+$ASAN_OPTIONS:}detect_leaks=0" up
check "slow exit: up" $?
pids=$(cat "$R/fetcher.pid" "$R/predictor.pid" "$R/compute.pid")
traced=0
for p in $pids; do
    strace -p "$p" -e trace=exit_group -e inject=exit_group:delay_enter=2000000 \
        -o /dev/null 2>"$T/strace.$p" &
    for _ in $(seq 100); do
        grep -q "attached" "$T/strace.$p" 2>/dev/null && break
        sleep 0.05
    done
    grep -q "attached" "$T/strace.$p" 2>/dev/null && traced=$((traced + 1))
done
if [ "$traced" -eq 3 ]; then
    t0=$(now)
    "$NF_BIN" down --run-dir "$R" >/dev/null 2>"$T/down.err"
    rc=$?
    dt=$(elapsed "$t0")
    alive=
    for p in $pids; do gone "$p" || alive="$alive $p"; done
    [ $rc -eq 0 ] && [ -z "$alive" ]
    check "slow exit: down returns after every daemon exited (rc $rc, ${dt} s, alive:$alive)" $?
else
    echo "skip: slow exit: strace cannot attach here ($(cat "$T"/strace.* | head -n 1))"
    "$NF_BIN" down --run-dir "$R" >/dev/null 2>&1
fi
wait 2>/dev/null
exit $fail
