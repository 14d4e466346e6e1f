#!/usr/bin/env bash
# bench_gptoss_read.sh - issue 11's real read at 100B+ scale: a GGUF far larger than RAM (made
# with `mkmodel --shape gpt-oss-120b --type mxfp4 --random-blocks`, random experts, about 140
# MB/s; --layers cuts it to the disk) decoded by the stack and by
# llama.cpp, each in its own fresh memory cgroup of RAM, beside the raw O_DIRECT read bound of
# the same run. PAIRS times, alternating: raw read, stack, llama.cpp; the machine's load average
# (`uptime`) beside each row. Prints one table; the raw outputs stay in $OUT.
#
# Per row: decode tok/s after a warm-up (the stack: token arrival times of `gen --json`, the
# first WARM tokens left out; llama.cpp: llama-bench's tg, which runs its own warm-up token),
# bytes read per forward pass (the stack: `stats`; llama.cpp: the process's read_bytes, page
# faults included, over N + 1 tokens), the stack's hit rate, stall share and compute/I-O
# overlap (the share of the fetcher's busy time during which compute was not waiting on
# tiles), and the cgroup's peak (page cache included) and failcnt.
#
# The I/O bound is the raw read rate (O_DIRECT, QD threads of 4 MiB reads over RAW_GB of the
# model's middle, page cache dropped first) over the bytes one token reads (`inspect` of the
# index: every tile a token uses, routed experts in the share used).
#
# Usage: bench_gptoss_read.sh NANOFLOWCTL MODEL.gguf [LLAMA_BIN_DIR]
# env: N (tokens generated, 16), WARM (2), PAIRS (2), THREADS (compute threads of both engines,
# 1: what `up` picks on 2 CPUs), RAM (1G), RAW_GB (4), QD (16), OUT (a fresh directory).
# Needs root (memory cgroup, drop_caches). A benchmark, not a test: it may call llama.cpp.
set -u
BIN=${1:?usage: bench_gptoss_read.sh NANOFLOWCTL MODEL.gguf [LLAMA_BIN_DIR]}
M=${2:?usage: bench_gptoss_read.sh NANOFLOWCTL MODEL.gguf [LLAMA_BIN_DIR]}
LB=${3:-/work/shared/oracle/llama.cpp/bin}
N=${N:-16} WARM=${WARM:-2} PAIRS=${PAIRS:-2} THREADS=${THREADS:-1} RAM=${RAM:-1G}
RAW_GB=${RAW_GB:-4} QD=${QD:-16}
OUT=${OUT:-$(mktemp -d /tmp/bench-gptoss-XXXXXX)}
skip() { echo "bench_gptoss_read: skipped: $*"; exit 77; }
[ -x "$BIN" ] || skip "no nanoflowctl at $BIN"
[ -f "$M" ] || skip "no model at $M"
[ "$(id -u)" -eq 0 ] || skip "needs root (memory cgroup, drop_caches)"
[ -x "$LB/llama-bench" ] || echo "bench_gptoss_read: no llama-bench in $LB: no llama.cpp rows"
if [ -r /sys/fs/cgroup/cgroup.controllers ] && grep -qw memory /sys/fs/cgroup/cgroup.controllers; then
    CGROOT=/sys/fs/cgroup LIMIT_FILE=memory.max PEAK_FILE=memory.peak FAIL_FILE=
elif [ -e /sys/fs/cgroup/memory/memory.limit_in_bytes ]; then
    CGROOT=/sys/fs/cgroup/memory LIMIT_FILE=memory.limit_in_bytes
    PEAK_FILE=memory.max_usage_in_bytes FAIL_FILE=memory.failcnt
else
    skip "no memory cgroup (v1 or v2)"
fi
mkdir -p "$OUT"
R="$OUT/run" CG=
cleanup() {
    "$BIN" down --run-dir "$R" >/dev/null 2>&1
    [ -n "$CG" ] && rmdir "$CG" 2>/dev/null
}
trap cleanup EXIT
limit=$(numfmt --from=iec "$RAM")
cg_new() {
    CG=$CGROOT/nf-gptoss-$$-$1
    mkdir "$CG" && echo "$limit" >"$CG/$LIMIT_FILE"
}
cg_done() {
    peak=$(cat "$CG/$PEAK_FILE") fail=-
    [ -n "$FAIL_FILE" ] && fail=$(cat "$CG/$FAIL_FILE")
    rmdir "$CG"
    CG=
}
in_cg() { bash -c 'echo $$ >"$0/cgroup.procs" && exec "$@"' "$CG" "$@"; }
drop() { sync && echo 3 >/proc/sys/vm/drop_caches; }
load() { cut -d' ' -f1 /proc/loadavg; }

# The measuring helpers: raw O_DIRECT reads, a timed generation, a process's read bytes.
read -r -d '' PY <<'EOF'
import json, mmap, os, subprocess, sys, threading, time
mode = sys.argv[1]
if mode == "raw":  # raw PATH GB QD: O_DIRECT reads of 4 MiB, QD at once, from the middle
    path, gb, qd = sys.argv[2], float(sys.argv[3]), int(sys.argv[4])
    bs = 4 << 20
    size = os.path.getsize(path)
    n = min(int(gb * 1e9) // bs, size // bs - 1)
    start = (size // 2 - n * bs // 2) // bs * bs
    fd = os.open(path, os.O_RDONLY | os.O_DIRECT)
    nxt, lock, done = [0], threading.Lock(), [0]
    def worker():
        buf = mmap.mmap(-1, bs)
        while True:
            with lock:
                i = nxt[0]; nxt[0] += 1
            if i >= n:
                return
            got = os.preadv(fd, [buf], start + i * bs)
            with lock:
                done[0] += got
    t0 = time.monotonic()
    ts = [threading.Thread(target=worker) for _ in range(qd)]
    for t in ts: t.start()
    for t in ts: t.join()
    dt = time.monotonic() - t0
    print(json.dumps({"bytes": done[0], "s": dt, "gb_s": done[0] / dt / 1e9}))
elif mode == "gen":  # gen WARM CMD...: token arrival times of gen --json
    warm = int(sys.argv[2])
    t0 = time.monotonic(); ts = []; summary = {}
    p = subprocess.Popen(sys.argv[3:], stdout=subprocess.PIPE, text=True)
    for line in p.stdout:
        j = json.loads(line)
        if "id" in j: ts.append(time.monotonic())
        else: summary = j
    p.wait()
    k = len(ts) - 1 - warm
    rate = k / (ts[-1] - ts[warm]) if k > 0 else 0.0
    print(json.dumps({"tokens": len(ts), "wall_s": time.monotonic() - t0, "tok_s": rate,
                      "gen_decode_tok_s": summary.get("decode_tok_s"), "rc": p.returncode,
                      "gen_ids": summary.get("gen_ids")}))
elif mode == "io":  # io OUTFILE CMD...: CMD's wall time and read_bytes (polled until it exits)
    t0 = time.monotonic(); rb = 0
    with open(sys.argv[2], "w") as f, open(sys.argv[2] + ".err", "w") as e:
        p = subprocess.Popen(sys.argv[3:], stdout=f, stderr=e)
        while p.poll() is None:
            try:
                for l in open(f"/proc/{p.pid}/io"):
                    if l.startswith("read_bytes:"): rb = int(l.split()[1])
            except OSError:
                pass
            time.sleep(0.2)
    print(json.dumps({"read_bytes": rb, "wall_s": time.monotonic() - t0, "rc": p.returncode}))
EOF
jget() { python3 -c 'import json,sys; v=json.loads(sys.argv[1]); print(eval(sys.argv[2]))' "$@"; }

echo "model: $M ($(stat -c %s "$M") bytes), budget $RAM, $THREADS compute thread(s), N $N"
echo "raw outputs: $OUT"
TOKB=
ROWS=() SUM=()
for pair in $(seq 1 "$PAIRS"); do
    drop
    l=$(load)
    raw=$(python3 -c "$PY" raw "$M" "$RAW_GB" "$QD")
    gbs=$(jget "$raw" 'round(v["gb_s"], 3)')
    ROWS+=("$(printf '%-4s %-10s %5s %8s %9s %9s %6s %6s %7s %10s %9s' "$pair" raw "$l" \
        "-" "-" "$gbs GB/s" - - - - -)")

    # The stack: up, a warm-up-free decode of N tokens from BOS, stats, down.
    cg_new stack
    drop
    l=$(load)
    in_cg "$BIN" up -m "$M" --ram "$RAM" -t "$THREADS" --run-dir "$R" >"$OUT/up-$pair.log" 2>&1 ||
        { echo "up failed: $(tail -1 "$OUT/up-$pair.log")"; exit 1; }
    if [ -z "$TOKB" ]; then
        TOKB=$("$BIN" inspect "${M%.gguf}.nfi" | awk '/ 0% FFN sparsity:/ {print $4}')
        echo "bytes one token reads (inspect, routed experts in the share used): $TOKB"
    fi
    g=$(in_cg python3 -c "$PY" gen "$WARM" "$BIN" gen --run-dir "$R" -n "$N" --temp 0 --json \
        --timeout 900)
    "$BIN" stats --run-dir "$R" --json >"$OUT/stats-$pair.json"
    "$BIN" stats --run-dir "$R" >"$OUT/stats-$pair.txt"
    echo "$g" >"$OUT/gen-$pair.json"
    in_cg "$BIN" down --run-dir "$R" >/dev/null 2>&1
    cg_done
    s=$(cat "$OUT/stats-$pair.json")
    ts=$(jget "$g" 'round(v["tok_s"], 3)')
    fe=$(python3 - "$s" "$g" <<'EOF'
import json, sys
s, g = json.loads(sys.argv[1]), json.loads(sys.argv[2])
f, c = s["fetcher"], s["compute"]
total = f["bytes_per_token"] * c["tokens"]
busy = total / (f["mb_s"] * 1e6)
stall = c["stall_share"] * g["wall_s"]
print("%.1f %.1f%% %.1f%% %.1f%% %.0f" % (f["bytes_per_token"] / 1e6, 100 * f["hit_rate"],
      100 * c["stall_share"], 100 * max(0.0, (busy - stall) / busy), f["mb_s"]))
EOF
    )
    read -r mbt hit stall ovl busy <<<"$fe"
    ROWS+=("$(printf '%-4s %-10s %5s %8s %9s %9s %6s %6s %7s %10s %9s' "$pair" stack "$l" "$ts" \
        "$mbt" "$busy MB/s" "$hit" "$stall" "$ovl" "$((peak >> 20)) MiB" "$fail")")
    echo "${ROWS[-1]}"

    lt=
    # llama.cpp: llama-bench's decode of N tokens (mmap, no prompt) in its own fresh cgroup.
    [ -x "$LB/llama-bench" ] || continue
    cg_new llama
    drop
    l=$(load)
    io=$(in_cg python3 -c "$PY" io "$OUT/llama-$pair.json" "$LB/llama-bench" -m "$M" -p 0 \
        -n "$N" -t "$THREADS" -fa 0 -r 1 -o json)
    cg_done
    lt=$(python3 -c 'import json,sys; print(round(json.load(open(sys.argv[1]))[0]["avg_ts"], 4))' \
        "$OUT/llama-$pair.json" 2>/dev/null || echo failed)
    lmb=$(jget "$io" 'round(v["read_bytes"] / ('"$N"' + 1) / 1e6, 1)')
    ROWS+=("$(printf '%-4s %-10s %5s %8s %9s %9s %6s %6s %7s %10s %9s' "$pair" llama.cpp "$l" \
        "$lt" "$lmb" - - - - "$((peak >> 20)) MiB" "$fail")")
    echo "${ROWS[-1]}"
    SUM+=("$(python3 -c '
import sys
gbs, tokb, st, lt = float(sys.argv[1]), float(sys.argv[2]), float(sys.argv[3]), sys.argv[4]
b = gbs * 1e9 / tokb
x = "%.1fx llama.cpp" % (st / float(lt)) if lt not in ("", "failed") else "no llama.cpp"
print("pair %s: I/O bound %.3f tok/s; stack %.2fx the bound, %s" % (sys.argv[5], b, st / b, x))
' "$gbs" "$TOKB" "$ts" "${lt:-}" "$pair")")
done
echo
printf '%-4s %-10s %5s %8s %9s %9s %6s %6s %7s %10s %9s\n' pair engine load tok/s MB/token \
    "read rate" hit stall overlap peak failcnt
printf '%s\n' "${ROWS[@]}" "${SUM[@]}"
echo "I/O bound = raw GB/s / $TOKB bytes per token; goal: stack >= 3x llama.cpp, >= 0.8x bound"
