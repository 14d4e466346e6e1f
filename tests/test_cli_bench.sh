#!/usr/bin/env bash
# test_cli_bench.sh - nanoflowctl bench on stories260K: the table has every column, --json is one
# object with every field, cgroup creation failure and --no-cgroup fall back to running without
# (saying why), bad flags exit 2, and nothing (stack, cgroup, run dir) is left behind.
set -u
. "$(dirname "$0")/lib.sh"
: "${NF_BIN:?NF_BIN must point to nanoflowctl}"
: "${NF_SHARED_DIR:?NF_SHARED_DIR must point to the shared directory}"
M="$NF_SHARED_DIR/models/stories260K.gguf"
if [ ! -f "$M" ]; then
    echo "skip: $M is missing"
    exit 77
fi
need_python3 "to parse --json"
BIN_DIR=$(dirname "$NF_BIN")
if [ ! -x "$BIN_DIR/../daemons/nanoflow-compute" ] && ! command -v nanoflow-compute >/dev/null &&
    [ ! -x "$BIN_DIR/nanoflow-compute" ]; then
    echo "skip: the stack daemons are not built"
    exit 77
fi
T=$(mktemp -d)
# This test's cgroups get their own prefix, so that the leftover check below sees only ours
# (another bench may run on the machine meanwhile).
export NANOFLOW_BENCH_CGROUP="nanoflow-benchtest-$$"
export XDG_CACHE_HOME="$T/cache" # the converted .nft of the read-only shared model goes here
trap 'rm -rf "$T"' EXIT

# 1. Text table: every column and every engine row, ratios filled in, run dir removed.
"$NF_BIN" bench --model "$M" -n 4 -t 2 --run-dir "$T/run" >"$T/table.txt" 2>"$T/table.err"
rc=$?
check "bench exits 0 (rc $rc)" $rc
for col in "tok/s" "MB/s read" "busy MB/s" "MB/token" "hit rate" "recall" "stall" "peak mem" \
    "vs mmap" "I/O bound" "vs bound"; do
    grep -q "$col" "$T/table.txt"
    check "table has column '$col'" $?
done
for row in "stack exact" "stack s=0.50" "mmap"; do
    grep -Eq "^$row +[0-9]" "$T/table.txt"
    check "table has a measured '$row' row" $?
done
grep -Eq "^stack exact .* [0-9.]+x +[0-9.]+ +[0-9.]+x$" "$T/table.txt"
check "exact row has vs mmap, I/O bound and vs bound" $?
grep -q "raw read: [0-9.]* MB/s" "$T/table.txt"
check "raw read bandwidth printed" $?
grep -q "memory cgroup:" "$T/table.txt"
check "says whether a memory cgroup is used" $?
grep -q "stack exact: tokens 4/4" "$T/table.err" && grep -q "mmap: tokens" "$T/table.err"
check "progress on stderr" $?
! ls "$T/run"/exact/*.sock >/dev/null 2>&1 && [ -f "$T/run/exact.log" ]
check "no socket left in the run dir (logs kept)" $?

# 2. --json: one object with the fields; rows with numbers.
# -c 96: within stories260K's trained context of 128 (up refuses a longer one).
"$NF_BIN" bench --model "$M" -n 3 -t 1 -c 96 --sparsity 0.3,0.6 --json >"$T/b.json" 2>"$T/b.err"
check "bench --json exits 0" $?
python3 - "$T/b.json" <<'PY'
import json, sys
o = json.load(open(sys.argv[1]))
assert isinstance(o, dict)
for k in ("model", "nft", "ram_budget", "n_predict", "cgroup", "raw", "rows"):
    assert k in o, k
assert o["ram_budget"] == 1 << 30 and o["n_predict"] == 3 and o["n_ctx"] == 96, o
assert o["raw"]["ok"] is True and o["raw"]["mb_s"] > 0 and o["raw"]["qd"] == 16, o["raw"]
assert [r["mode"] for r in o["rows"]] == ["stack exact", "stack s=0.30", "stack s=0.60", "mmap"]
fields = ("tok_s", "mb_s", "busy_mb_s", "bytes_per_token", "hit_rate", "recall", "stall_share",
          "peak_bytes", "vs_mmap", "io_bound_tok_s", "vs_io_bound", "tokens", "error")
for r in o["rows"]:
    for k in fields:
        assert k in r, (r["mode"], k)
    assert r["ran"] and r["tokens"] == 3 and r["error"] is None, r
    assert r["tok_s"] > 0 and r["peak_bytes"] > 0, r
    # bench drops the model's pages before each engine, but the kernel keeps those another
    # process has mapped (other tests reading stories260K at -j2), so the mmap row may read
    # nothing; it then has no I/O bound. The stack reads with O_DIRECT: always bytes.
    if r["mode"] == "mmap" and r["bytes_per_token"] == 0:
        assert r["io_bound_tok_s"] is None and r["vs_io_bound"] is None, r
        continue
    assert r["bytes_per_token"] > 0, r
    assert r["io_bound_tok_s"] > 0 and r["vs_io_bound"] > 0, r
for r in o["rows"][:3]:
    assert r["vs_mmap"] > 0 and 0 <= r["hit_rate"] <= 1 and 0 <= r["stall_share"] <= 1, r
# Recall is scored only when the predictor's forecast for a step meets compute's used set of that
# step; in 3 tokens on a loaded machine (sanitizers, -j2) none may be, so null is allowed here
# (test_predictor_daemon checks the scoring itself).
rc = o["rows"][1]["recall"]
assert o["rows"][1]["sparsity"] == 0.3, o["rows"][1]
assert rc is None or 0 <= rc <= 1, o["rows"][1]
if o["cgroup"]["used"]:
    assert o["cgroup"]["version"] in (1, 2)
    for r in o["rows"]:
        assert r["peak_source"].startswith("memory") or r["peak_source"].startswith("polled"), r
        assert r["oom_kills"] == 0, r
else:
    assert o["cgroup"]["reason"]
PY
check "--json is one object with every field" $?

# 2b. -p N: a prompt of N tokens for every engine; each row has its prompt tok/s and TTFT, the
#     table a PROMPT section; a prompt past the context is a usage error.
"$NF_BIN" bench --model "$M" -n 3 -t 1 -c 96 -p 40 --sparsity none --json >"$T/p.json" 2>/dev/null
check "bench -p exits 0" $?
python3 - "$T/p.json" <<'PY'
import json, sys
o = json.load(open(sys.argv[1]))
assert o["n_prompt"] == 40, o["n_prompt"]
assert [r["mode"] for r in o["rows"]] == ["stack exact", "mmap"]
for r in o["rows"]:
    assert r["prompt_tokens"] == 40 and r["prompt_tok_s"] > 0 and r["ttft_s"] > 0, r
stack = o["rows"][0]
assert isinstance(stack["prompt_bytes"], (int, float)) and stack["prompt_bytes"] >= 0, stack
assert o["rows"][1]["prompt_bytes"] is None, o["rows"][1]
PY
check "-p: every row has prompt tokens, prompt tok/s and TTFT; the stack its bytes read" $?
"$NF_BIN" bench --model "$M" -n 3 -t 1 -c 96 -p 40 --sparsity none >"$T/p.txt" 2>/dev/null &&
    grep -Eq "^stack exact +40 +[0-9.]+ +[0-9.]+ +[0-9]+$" "$T/p.txt" && grep -q "prompt = 40 tokens" "$T/p.txt"
check "-p: the table's PROMPT section" $?
"$NF_BIN" bench --model "$M" -n 3 -c 96 -p 100 >/dev/null 2>"$T/pctx.err"
rc=$?
[ $rc -eq 2 ] && grep -q "need a context of 103 tokens" "$T/pctx.err"
check "-p past the context: exit 2 with the reason (rc $rc)" $?

# 3. Cgroup creation failure (an impossible cgroup name) and --no-cgroup: runs without, says
#    why, peak from VmHWM.
NANOFLOW_BENCH_CGROUP="bad/name" "$NF_BIN" bench --model "$M" -n 2 -t 1 --sparsity none --json \
    >"$T/nocg.json" 2>"$T/nocg.err"
check "bench with a failing cgroup exits 0" $?
python3 - "$T/nocg.json" <<'PY'
import json, sys
o = json.load(open(sys.argv[1]))
assert o["cgroup"]["used"] is False and "bad cgroup name" in o["cgroup"]["reason"], o["cgroup"]
assert [r["mode"] for r in o["rows"]] == ["stack exact", "mmap"]
for r in o["rows"]:
    assert r["ran"] and r["peak_source"] == "VmHWM" and r["peak_bytes"] > 0, r
PY
check "cgroup failure: runs without it, gives the reason, VmHWM peaks" $?
grep -q "memory cgroups not used: bad cgroup name" "$T/nocg.err"
check "cgroup failure reason on stderr" $?
"$NF_BIN" bench --model "$M" -n 2 -t 1 --sparsity none --no-cgroup >"$T/nocg.txt" 2>/dev/null
check "--no-cgroup exits 0" $?
grep -q "memory cgroup: not used (--no-cgroup)" "$T/nocg.txt"
check "--no-cgroup says so in the table" $?

# 4. A .nft model: stack rows measured, the mmap row says it needs the .gguf (exit 0: --help
# says a .nft has no mmap row).
NFT=$(python3 -c "import json,sys; print(json.load(open(sys.argv[1]))['nft'])" "$T/b.json")
"$NF_BIN" bench --model "$NFT" -n 2 -t 1 --sparsity none >"$T/nft.txt" 2>/dev/null
rc=$?
[ $rc -eq 0 ] && grep -Eq "^stack exact +[0-9]" "$T/nft.txt" && grep -q "mmap: needs the .gguf" "$T/nft.txt"
check "a .nft model: stack measured, mmap row explains (exit $rc)" $?

# 5. Usage errors exit 2 with a one-line reason.
for args in "" "--model" "--model $M --bogus" "--model $M -n 1" "--model $M --sparsity 1.5" \
    "--model $M --sparsity 0.5,x" "--model $M --ram 0" "--model $M --timeout 2" "--model $M -t -1" "--model $M -p 1" \
    "--model $M -p x"; do
    # shellcheck disable=SC2086
    "$NF_BIN" bench $args >/dev/null 2>"$T/usage.err"
    rc=$?
    [ $rc -eq 2 ] && [ "$(grep -c . "$T/usage.err")" -ge 1 ] && grep -q "bench" "$T/usage.err"
    check "usage error exits 2: bench $args (rc $rc)" $?
done
"$NF_BIN" bench --help | grep -q -- "--no-cgroup"
check "--help lists the flags" $?
"$NF_BIN" --help | grep -q "bench"
check "nanoflowctl --help lists bench" $?

# 6. Nothing left behind: no bench cgroup, no nanoflow-bench run dir of ours, no daemon.
P="$NANOFLOW_BENCH_CGROUP"
ls -d /sys/fs/cgroup/"$P"* /sys/fs/cgroup/memory/"$P"* /sys/fs/cgroup/memory/*/"$P"* \
    /sys/fs/cgroup/memory/*/*/"$P"* 2>/dev/null | grep -q "$P"
check "no bench cgroup left" $((1 - $?))
pgrep -f "run-dir $T" >/dev/null
check "no daemon left" $((1 - $?))

exit $fail
