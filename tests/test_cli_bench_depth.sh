#!/usr/bin/env bash
# test_cli_bench_depth.sh - nanoflowctl bench -d (llama-bench's depth) on stories260K: bad
# lists and a depth the context cannot hold are refused in one line with exit 2; -d 8,40 -n 4
# adds a measured exact-stack and mmap row per depth (--json: depth, prompt tokens = depth,
# TTFT, decode tok/s, bytes read per decode token; the table: the DEPTH section).
set -u
. "$(dirname "$0")/lib.sh"
: "${NF_BIN:?NF_BIN must point to nanoflowctl}"
: "${NF_SHARED_DIR:?NF_SHARED_DIR must point to the shared directory}"
need_stories
need_daemons
T=$(mktemp -d)
export NANOFLOW_BENCH_CGROUP="nanoflow-benchdepth-$$"
export XDG_CACHE_HOME="$T/cache" # the in-place index of the read-only shared model goes here
trap 'rm -rf "$T"' EXIT

expect "bench -d 0 refused" 2 "expects an integer in \[2, 1048576\], got '0'" \
    "$NF_BIN" bench -m "$M0" -d 0
expect "bench -d 8,x refused" 2 "got 'x'" "$NF_BIN" bench -m "$M0" -d 8,x
expect "bench -d , refused" 2 "expects a list" "$NF_BIN" bench -m "$M0" -d ,
expect "bench with 9 depths refused" 2 "at most 8 depths" "$NF_BIN" bench -m "$M0" \
    -d 2,3,4,5,6,7,8,9,10
expect "bench -d past the context refused" 2 "need a context of 204 tokens" \
    "$NF_BIN" bench -m "$M0" -c 120 -n 4 -d 200
for f in "$T/out" "$T/err"; do
    [ "$(wc -l <"$f")" -le 1 ]
    check "the refusal is one line ($(basename "$f"))" $?
done

# -c 120: within stories260K's trained context of 128 (up refuses a longer one).
"$NF_BIN" bench -m "$M0" -n 4 -t 1 -c 120 --sparsity none -d 8,40 --json >"$T/b.json" \
    2>"$T/b.err"
check "bench -d 8,40 --json exits 0" $?
python3 - "$T/b.json" <<'PY'
import json, sys
fail = 0
def check(what, ok):
    global fail
    print(("ok: " if ok else "FAIL: ") + what)
    fail |= not ok
b = json.load(open(sys.argv[1]))
check("n_depth lists the depths", b["n_depth"] == [8, 40])
rows = {r["mode"]: r for r in b["rows"]}
check("rows without -d have depth 0", rows["stack exact"]["depth"] == 0 and rows["mmap"]["depth"] == 0)
for d in (8, 40):
    for eng in ("stack", "mmap"):
        r = rows.get(f"{eng} d={d}")
        check(f"{eng} d={d} row present", r is not None)
        if r is None:
            continue
        check(f"{eng} d={d}: ran, depth {d}, prompt of {d} tokens",
              r["ran"] and r["depth"] == d and r["prompt_tokens"] == d and r["tokens"] == 4)
        # (bytes per decode token: null when this tiny model's generation ended before the
        # bench read the stack's counters at the first token)
        dbt = r["decode_bytes_per_token"]
        check(f"{eng} d={d}: TTFT and decode tok/s measured, bytes per decode token >= 0",
              all(isinstance(r[k], (int, float)) and r[k] >= 0 for k in ("ttft_s", "tok_s"))
              and r["tok_s"] > 0 and (dbt is None or dbt >= 0))
sys.exit(fail)
PY
[ $? -eq 0 ] || fail=1
"$NF_BIN" bench -m "$M0" -n 3 -t 1 -c 120 --sparsity none -d 8 >"$T/b.txt" 2>/dev/null
check "bench -d 8 (table) exits 0" $?
grep -Eq "^stack d=8 +8 +8 +[0-9.]+ +[0-9.]+ +([0-9.]+|-) +[0-9.]+ [KMG]iB$" "$T/b.txt"
check "the DEPTH table has the stack d=8 row with its figures" $?
exit $fail
