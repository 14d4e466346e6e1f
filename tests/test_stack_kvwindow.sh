#!/usr/bin/env bash
# test_stack_kvwindow.sh - the KV cache on disk through the stack with a context many times what
# is read back at once (`up --kv-offload on --kv-block 4`): stories260K at its whole context (128
# positions, 5 layers: an 80 KiB cache, of which a class of 16 slots of KV block tiles, each a
# block of 4 rows of 64 bytes, is in the pool) gives `run`'s 110 greedy tokens. The blocks read
# back are the pool's tiles, which the fetcher reads (more bytes than the whole cache: every step
# reads the past back), not compute's window: the most compute read back at once
# (kv_resident_max) stayed within its window (kv_window), and none of it was the walk's.
set -u
. "$(dirname "$0")/lib.sh"
: "${NF_BIN:?NF_BIN must point to nanoflowctl}"
: "${NF_SHARED_DIR:?NF_SHARED_DIR must point to the shared directory}"
need_stories
need_daemons
T=$(mktemp -d)
export XDG_CACHE_HOME="$T/cache" # the index of the read-only shared models goes here
R="$T/run"
trap '"$NF_BIN" down --run-dir "$R" >/dev/null 2>&1; rm -rf "$T"' EXIT

"$NF_BIN" up -m "$M0" --ram 64M -t 1 -c 128 --kv-offload on --kv-block 4 --run-dir "$R" \
    >"$T/up.out" 2>"$T/up.err"
check "up --kv-offload on exits 0" $?
"$NF_BIN" gen --run-dir "$R" -p "Once upon a time" -n 110 --temp 0 >"$T/gen.txt" 2>"$T/gen.err"
check "gen exits 0" $?
"$NF_BIN" run -m "$M0" -t 1 -c 128 -p "Once upon a time" -n 110 --temp 0 >"$T/run.txt" 2>/dev/null
cmp -s "$T/gen.txt" "$T/run.txt" && [ -s "$T/gen.txt" ]
check "110 tokens through the window equal run's" $?
"$NF_BIN" stats --run-dir "$R" --json >"$T/stats.json" 2>"$T/stats.err"
check "stats exits 0" $?
python3 - "$T/stats.json" <<'PY'
import json, sys
c = json.load(open(sys.argv[1]))["compute"]
whole = 5 * 128 * 128  # layers x positions x (K + V row bytes)
assert c["kv_window"] == 16 * 4 * 64, c["kv_window"]
assert c["kv_resident_max"] <= c["kv_window"], (c["kv_resident_max"], c["kv_window"])
assert c["kv_window"] * 16 < whole
assert c["kv_read_bytes"] < whole, c["kv_read_bytes"]  # (the walk's blocks are the pool's)
print(f"window {c['kv_window']} B, most read back at once {c['kv_resident_max']} B, "
      f"{c['kv_read_bytes'] >> 10} KiB read back by compute, cache {whole >> 10} KiB")
PY
check "kv_resident_max <= kv_window, far below the cache" $?
"$NF_BIN" down --run-dir "$R" >/dev/null 2>&1
python3 - "$R/fetcher.log" <<'PY'
import re, sys
log = open(sys.argv[1]).read()
whole = 5 * 128 * 128
m = re.search(r"reads: kv +demand +(\d+) prefetch +(\d+) MB +([\d.]+)", log)
assert m and float(m.group(3)) * 1e6 > whole, m and m.group(0)
print("fetcher:", m.group(0))
PY
check "the fetcher read the KV blocks back as tiles, more than the whole cache" $?
exit $fail
