#!/usr/bin/env bash
# test_cli_bench_spec.sh - nanoflowctl bench --lookup / --draft FILE on stories260K: a speculating
# row beside the exact stack and beside mmap, each with drafted, accepted, the rate, the speed-up
# over its plain row and the same tokens as that row; -f FILE as every engine's prompt; bad
# values of the new flags exit 2 with one line.
set -u
. "$(dirname "$0")/lib.sh"
: "${NF_BIN:?NF_BIN must point to nanoflowctl}"
: "${NF_SHARED_DIR:?NF_SHARED_DIR must point to the shared directory}"
need_stories
need_daemons
M="$M0"
T=$(mktemp -d)
export NANOFLOW_BENCH_CGROUP="nanoflow-benchspec-$$"
export XDG_CACHE_HOME="$T/cache" # the converted .nft of the read-only shared model goes here
trap 'rm -rf "$T"' EXIT
# A passage the model goes on repeating (its greedy text), so that prompt lookup drafts hit.
printf 'He wanted to play with the ball. He wanted to play with the ball. He wanted to play with the ball.' \
    >"$T/passage.txt"

# 1. --json: the four speculating rows after their plain rows, with their fields.
"$NF_BIN" bench --model "$M" -n 40 -t 1 -c 128 --sparsity none -f "$T/passage.txt" --lookup \
    --draft "$M" --json >"$T/b.json" 2>"$T/b.err"
check "bench --lookup --draft exits 0" $?
python3 - "$T/b.json" <<'PY'
import json, sys
d = json.load(open(sys.argv[1]))
rows = {r["mode"]: (i, r) for i, r in enumerate(d["rows"])}
for m in ("stack exact", "stack lookup", "stack draft", "mmap", "mmap lookup", "mmap draft"):
    assert m in rows, "no row %s: %s" % (m, list(rows))
for base, kinds in (("stack exact", ("stack lookup", "stack draft")),
                    ("mmap", ("mmap lookup", "mmap draft"))):
    bi, b = rows[base]
    assert b["spec"] is None and b["drafted"] is None and b["spec_speedup"] is None, b
    assert b["prompt_tokens"] > 20, b  # the file's text, not BOS
    for k in kinds:
        i, r = rows[k]
        assert i > bi, (k, i, bi)
        assert r["ran"] and r["error"] is None, r
        assert r["spec"] == k.split()[1], r
        assert r["drafted"] > 0 and 0 <= r["accepted"] <= r["drafted"], r
        assert abs(r["accept_rate"] - r["accepted"] / r["drafted"]) < 1e-3, r
        assert r["spec_speedup"] > 0, r
        assert abs(r["spec_speedup"] - r["tok_s"] / b["tok_s"]) < 1e-3 * r["spec_speedup"], r
        assert r["same_output"] is True, r
        assert r["tokens"] == 40 and r["prompt_tokens"] == b["prompt_tokens"], r
# Drafting for itself, the draft model is always right.
assert rows["stack draft"][1]["accepted"] == rows["stack draft"][1]["drafted"]
PY
check "--json rows: spec, drafted, accepted, rate, speed-up, same output" $?

# 2. The table: the SPECULATION part with its columns, lookup only; every engine's sampler
# with a negative frequency penalty (gen's and run's flag), the rows' tokens still equal.
"$NF_BIN" bench --model "$M" -n 20 -t 1 -c 128 --sparsity none -f "$T/passage.txt" --lookup \
    --frequency-penalty -0.5 >"$T/t.txt" 2>/dev/null
check "bench --lookup --frequency-penalty (table) exits 0" $?
grep -q "sampler: --frequency-penalty -0.5 in every engine" "$T/t.txt"
check "the table's header names the penalty" $?
for col in "SPECULATION" "tok/s per seq" "aggregate tok/s" "drafted" "accepted" "rate" \
    "speed-up" "same output"; do
    grep -q "$col" "$T/t.txt"
    check "table has '$col'" $?
done
grep -Eq '^stack lookup .* yes$' "$T/t.txt" && grep -Eq '^mmap lookup .* yes$' "$T/t.txt"
check "lookup rows give the plain rows' tokens" $?
grep -q "stack draft" "$T/t.txt"
check "no draft row without --draft" $((1 - $?))

# 3. Bad values exit 2 with one line naming the problem.
for args in "--draft $T/none.gguf" "--draft" "-f $T/none.txt" "--file" "-p 8 -f $T/passage.txt" \
    "--lookup=1" "--frequency-penalty 3" "--frequency-penalty x"; do
    # shellcheck disable=SC2086
    "$NF_BIN" bench --model "$M" $args >/dev/null 2>"$T/usage.err"
    rc=$?
    [ $rc -eq 2 ] && [ "$(grep -c . "$T/usage.err")" -eq 1 ] && grep -q "bench" "$T/usage.err"
    check "usage error exits 2 with one line: bench $args (rc $rc: $(head -c 120 "$T/usage.err"))" $?
done
"$NF_BIN" bench --help | grep -q -- "--draft FILE"
check "--help lists --draft" $?

P="$NANOFLOW_BENCH_CGROUP"
ls -d /sys/fs/cgroup/"$P"* /sys/fs/cgroup/memory/"$P"* /sys/fs/cgroup/memory/*/"$P"* \
    /sys/fs/cgroup/memory/*/*/"$P"* 2>/dev/null | grep -q "$P"
check "no bench cgroup left" $((1 - $?))
exit $fail
