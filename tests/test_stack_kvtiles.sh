#!/usr/bin/env bash
# test_stack_kvtiles.sh - the KV cache on disk read through the pool as KV block tiles (`up
# --kv-offload on`; stories260K at -c 128 in blocks of 4 positions: 320 tiles per sequence for
# a class of 16 slots, so every step evicts and reads KV tiles again). Rollbacks (prompt lookup's
# rejected drafts rewrite durable blocks at a new generation) and slot reuse (a slot's next
# sequence rewrites its blocks from 0, with the last one's tiles still in the pool), alone and
# two sequences at once, give `run`'s tokens; the fetcher reports the KV tiles it read, through a
# buffered descriptor for those blocks of 256 bytes and with O_DIRECT for blocks of a page. The
# predictor pushes the next layers' KV tiles after each attention walk and compute pins what it
# pushed (stats: kv_requests, kv_prefetch_reads, kv_prefetch_used); with NANOFLOW_KV_PREFETCH=off
# it pushes none, and the tokens are the same.
set -u
. "$(dirname "$0")/lib.sh"
: "${NF_BIN:?NF_BIN must point to nanoflowctl}"
: "${NF_SHARED_DIR:?NF_SHARED_DIR must point to the shared directory}"
need_stories
need_daemons
stack_tmp
R="$T/run-1"
R2="$T/run-2"

"$NF_BIN" up -m "$M0" --ram 64M -t 1 -c 128 --kv-offload on --kv-block 4 --parallel 2 --lookup \
    --prefix-cache off --run-dir "$R" >"$T/up.out" 2>"$T/up.err"
check "up --kv-offload on --lookup --parallel 2 exits 0" $?
grep -q "KV block tiles" "$R/fetcher.log"
check "the fetcher gives the KV blocks a class of the pool" $?

# 1. Rollbacks: speculation's rejected drafts roll the sequence back into blocks already
#    durable (and read as tiles); a repetitive prompt drafts a lot.
LONG="Lily and Tom went to the park. They played with a ball. Lily and Tom went to the park. They played with a ball. Lily and Tom went to the park. They"
for p in "Once upon a time" "$LONG"; do
    args=(-p "$p" -n 100 --temp 0 --json)
    "$NF_BIN" gen --run-dir "$R" "${args[@]}" >"$T/gen.jsonl" 2>"$T/gen.err"
    "$NF_BIN" run -m "$M0" -t 1 -c 128 "${args[@]}" >"$T/run.jsonl" 2>/dev/null
    spec_same_ids "$T/gen.jsonl" "$T/run.jsonl"
    check "rollback: speculative gen over KV tiles equals run (${p:0:16}...)" $?
done
"$NF_BIN" stats --run-dir "$R" --json >"$T/stats.json" 2>/dev/null
python3 - "$T/stats.json" <<'PY'
import json, sys
c = json.load(open(sys.argv[1]))["compute"]
assert c["drafted"] > c["accepted"] >= 0, c  # some drafts were rejected: rollbacks
PY
check "rollback: some drafts were rejected (rolled back)" $?

# 2. Slot reuse: the same prompts again (each slot's next sequence rewrites its blocks from 0
#    while the previous sequence's tiles are in the pool), then two at once.
for p in "$LONG" "Once upon a time"; do
    args=(-p "$p" -n 60 --temp 0 --json)
    "$NF_BIN" gen --run-dir "$R" --no-lookup "${args[@]}" >"$T/gen.jsonl" 2>/dev/null
    "$NF_BIN" run -m "$M0" -t 1 -c 128 "${args[@]}" >"$T/run.jsonl" 2>/dev/null
    spec_same_ids "$T/gen.jsonl" "$T/run.jsonl"
    check "reuse: a slot's next sequence over KV tiles equals run (${p:0:16}...)" $?
done
args=(-n 80 --temp 0 --json)
"$NF_BIN" run -m "$M0" -t 1 -c 128 -p "Once upon a time" "${args[@]}" >"$T/ra.jsonl" 2>/dev/null
"$NF_BIN" run -m "$M0" -t 1 -c 128 -p "The little dog" "${args[@]}" >"$T/rb.jsonl" 2>/dev/null
# two_at_once DIR [GEN FLAGS]: both prompts generated at once by the stack in DIR; each output
# must be run's.
two_at_once() {
    local dir=$1 a
    shift
    "$NF_BIN" gen --run-dir "$dir" "$@" -p "Once upon a time" "${args[@]}" >"$T/a.jsonl" \
        2>/dev/null &
    a=$!
    "$NF_BIN" gen --run-dir "$dir" "$@" -p "The little dog" "${args[@]}" >"$T/b.jsonl" 2>/dev/null
    wait $a
    spec_same_ids "$T/a.jsonl" "$T/ra.jsonl" && spec_same_ids "$T/b.jsonl" "$T/rb.jsonl"
}
two_at_once "$R" --no-lookup
check "reuse: two sequences at once over KV tiles equal run" $?

# The predictor's pushes: read by the fetcher from the prefetch ring, and pinned by compute
# before their eviction (most of them: a push is of a block the next walk reads).
"$NF_BIN" stats --run-dir "$R" --json >"$T/stats.json" 2>/dev/null
python3 - "$T/stats.json" <<'PY'
import json, sys
s = json.load(open(sys.argv[1]))
p, f = s["predictor"], s["fetcher"]
print("predictor kv_requests", p["kv_requests"], "fetcher kv_prefetch_reads",
      f["kv_prefetch_reads"], "used", f["kv_prefetch_used"], "unused",
      f["kv_prefetch_unused"], "kv_demand_reads", f["kv_demand_reads"])
assert p["kv_requests"] > 100, p
assert f["kv_prefetch_reads"] > 100, f
assert f["kv_prefetch_used"] > 100, f
assert f["kv_prefetch_used"] >= 4 * f["kv_prefetch_unused"], f
assert f["inflight_peak_bytes"] > 0, f
PY
check "the predictor pushed KV tiles, read and then pinned by compute" $?

"$NF_BIN" down --run-dir "$R" >/dev/null 2>&1
python3 - "$R/fetcher.log" <<'PY'
import re, sys
log = open(sys.argv[1]).read()
m = re.search(r"reads: kv +demand +(\d+) prefetch +(\d+) MB +([\d.]+)", log)
assert m and int(m.group(1)) + int(m.group(2)) > 1000, m and m.group(0)
print("fetcher:", m.group(0))
PY
check "the fetcher read the KV blocks as tiles" $?
grep -q "opened for KV tiles (buffered" "$R/fetcher.log"
check "blocks of 256 bytes are read through a buffered descriptor" $?

# 3. Blocks of whole pages (64 positions of 64 bytes): read with O_DIRECT, as compute writes
#    them (where the file system has it), still run's tokens.
"$NF_BIN" up -m "$M0" --ram 64M -t 1 -c 128 --kv-offload on --kv-block 64 --parallel 1 \
    --run-dir "$R2" >"$T/up.out" 2>"$T/up.err"
check "up --kv-block 64 exits 0" $?
"$NF_BIN" gen --run-dir "$R2" -p "Once upon a time" -n 110 --temp 0 >"$T/gen.txt" 2>/dev/null
"$NF_BIN" run -m "$M0" -t 1 -c 128 -p "Once upon a time" -n 110 --temp 0 >"$T/run.txt" 2>/dev/null
cmp -s "$T/gen.txt" "$T/run.txt" && [ -s "$T/gen.txt" ]
check "blocks of a page: 110 tokens over KV tiles equal run's" $?
"$NF_BIN" down --run-dir "$R2" >/dev/null 2>&1
if [ "$(stat -f -c %T "$T")" = tmpfs ]; then
    echo "skip: $T is tmpfs (no O_DIRECT)"
else
    # Read by compute's requests or by the predictor's pushes: which one asks for a block
    # first depends on timing, so either count may be 0 (the fetcher's lines are printed on a
    # failure).
    grep -q "opened for KV tiles (O_DIRECT)" "$R2/fetcher.log" &&
        grep -Eq "reads: kv +demand +([1-9]|0 +prefetch +[1-9])" "$R2/fetcher.log"
    ok=$?
    [ $ok -eq 0 ] || grep -E "KV tiles|reads: kv" "$R2/fetcher.log"
    check "blocks of a page are read as tiles with O_DIRECT" $ok
fi
# 4. The predictor's KV pushes off (NANOFLOW_KV_PREFETCH=off): compute's own requests ahead of
#    its walk read every block, the same tokens two sequences at once.
R3="$T/run-3"
NANOFLOW_KV_PREFETCH=off "$NF_BIN" up -m "$M0" --ram 64M -t 1 -c 128 --kv-offload on \
    --kv-block 4 --parallel 2 --prefix-cache off --run-dir "$R3" >"$T/up.out" 2>"$T/up.err"
check "up with NANOFLOW_KV_PREFETCH=off exits 0" $?
two_at_once "$R3"
check "pushes off: two sequences at once over KV tiles equal run" $?
"$NF_BIN" stats --run-dir "$R3" --json >"$T/stats.json" 2>/dev/null
python3 - "$T/stats.json" <<'PY'
import json, sys
s = json.load(open(sys.argv[1]))
p, f = s["predictor"], s["fetcher"]
assert p["kv_requests"] == 0 and f["kv_prefetch_reads"] == 0, (p, f)
assert f["kv_demand_reads"] > 100, f
PY
check "pushes off: no KV push, compute's requests read the blocks" $?
grep -q "KV pushes off" "$R3/predictor.log"
check "pushes off: the predictor says so" $?
"$NF_BIN" down --run-dir "$R3" >/dev/null 2>&1
exit $fail
