#!/usr/bin/env bash
# test_kv_store_stack.sh - the prefix store across restarts (`up --kv-store DIR`), on
# stories260K with `up -ub 8`: a first `gen`, `down` (the slot's kept prefix, the prompt less
# a last token evaluated as a chunk of its own, is written into DIR), `up` again, and a prompt
# extending the first: it starts from the stored prefix (stats: one kv-store hit, the tokens
# read the first prompt's it shares, by the rule of daemons/compute/gen.h) and gives `run`'s cold output line for line. Then the same on copies of the
# store: with one data byte flipped (found when read: one warning, the file removed), and
# truncated beside a prefix stored by a zoo-Q4_K_M stack (when that model is present: two
# warnings at `up`, both files left alone); no hit, the output still `run`'s. Bad --kv-store /
# --kv-store-max values are refused in one line.
set -u
. "$(dirname "$0")/lib.sh"
: "${NF_BIN:?NF_BIN must point to nanoflowctl}"
: "${NF_SHARED_DIR:?NF_SHARED_DIR must point to the shared directory}"
need_stories
need_daemons
T=$(mktemp -d)
export XDG_CACHE_HOME="$T/cache" # the in-place index of the read-only shared model goes here
R="$T/run"
cleanup() {
    "$NF_BIN" down --run-dir "$R" >/dev/null 2>&1
    rm -rf "$T"
}
trap cleanup EXIT

expect "up --kv-store-max 12Q refused" 2 "expects a size" "$NF_BIN" up -m "$M0" \
    --kv-store "$T/s0" --kv-store-max 12Q
expect "up --kv-store on a file refused" 2 "not a writable directory" "$NF_BIN" up -m "$M0" \
    --kv-store /etc/passwd

P1="Once upon a time, there was a little girl named Lily. She loved to play outside in the park"
P2="$P1 with her dog. One day she found a big red ball"
Z1="The quick brown fox jumps over the lazy dog and runs into the forest to find"

# up_store MODEL STORE: a stack of MODEL on store STORE (-ub 8, one sequence).
up_store() {
    "$NF_BIN" up -m "$1" --ram 256M -t 1 -ub 8 --parallel 1 --run-dir "$R" --kv-store "$2" \
        >"$T/up.out" 2>"$T/up.err"
    local rc=$?
    check "up on $(basename "$2") exits 0 (rc $rc)" $rc
    [ $rc -eq 0 ] || cat "$T/up.err"
    return $rc
}

# gen_run ID MODEL PROMPT: gen on the stack and run of MODEL, into $T/ID.gen and $T/ID.run.
gen_run() {
    "$NF_BIN" gen --run-dir "$R" -p "$3" -n 12 --temp 0 --json --top-logits 3 >"$T/$1.gen" \
        2>"$T/$1.err" </dev/null
    check "gen $1 exits 0" $?
    "$NF_BIN" run -m "$2" -t 1 -ub 8 -p "$3" -n 12 --temp 0 --json --top-logits 3 \
        >"$T/$1.run" 2>/dev/null
}

# verify ID HITS: $T/ID.gen equals $T/ID.run line for line (not the summary's timings); compute's
# stats in $T/ID.stats show HITS kv-store hits and, with a hit, as many tokens read as the
# first prompt's ids and ID's share in whole 8-token chunks (at most ID's length less one).
verify() {
    python3 - "$T" "$1" "$2" <<'PY'
import json, sys
T, r, hits = sys.argv[1], sys.argv[2], int(sys.argv[3])
def lines(p):
    return [json.loads(l) for l in open(p, encoding="utf-8")]
gen, run = lines(f"{T}/{r}.gen"), lines(f"{T}/{r}.run")
same = len(gen) == len(run) and gen[:-1] == run[:-1] and all(
    gen[-1][k] == run[-1][k] for k in ("prompt_ids", "gen_ids", "text", "stop"))
print(("ok: " if same else "FAIL: ") + f"gen {r} gives run's (cold) output, line for line")
st = json.load(open(f"{T}/{r}.stats"))["compute"]
want = 0
if hits:
    a, b = lines(f"{T}/first.run")[-1]["prompt_ids"], gen[-1]["prompt_ids"]
    # nf_stream_prefix_kept and nf_stream_prefix_usable (common/stream.h) at ubatch 8
    a = a[: len(a) - (1 if len(a) % 8 == 1 else 0)]
    l = 0
    while l < len(a) and l < len(b) and a[l] == b[l]:
        l += 1
    want = min(l, len(b) - 1)
    if len(b) - want - (1 if len(b) % 8 == 1 else 0) == 1:
        want -= 1
got = (st.get("kv_store_hits"), st.get("kv_store_reused"))
ok = got == (hits, want) and (not hits or want >= 16)
print(("ok: " if ok else "FAIL: ") + f"gen {r}: kv-store hits, tokens read {got}, want {(hits, want)}")
sys.exit(0 if same and ok else 1)
PY
    [ $? -eq 0 ] || fail=1
}

# First stack: the prompt's chunks go into the store at `down`.
S="$T/store"
up_store "$M0" "$S" || exit 1
gen_run first "$M0" "$P1"
"$NF_BIN" down --run-dir "$R" >/dev/null 2>&1
n=$(ls "$S"/*.nfkv 2>/dev/null | wc -l)
[ "$n" -eq 1 ]
check "down leaves one stored prefix in the store ($n)" $?
cp -r "$S" "$T/flip"
cp -r "$S" "$T/trunc"

# second NAME STORE HITS [WARN...]: a new stack on STORE, a prompt extending the first; HITS
# store hits expected; each WARN a pattern of one of the store's warning lines in compute.log,
# which has one line per WARN and no other.
second() {
    up_store "$M0" "$2" || return
    gen_run "$1" "$M0" "$P2"
    "$NF_BIN" stats --run-dir "$R" --json >"$T/$1.stats" 2>/dev/null
    verify "$1" "$3"
    local w p n=$(($# - 3)) name=$1 hits=$3
    shift 3
    if [ $n -gt 0 ]; then
        w=$(grep -c "WARN.*kv-store" "$R/compute.log")
        [ "$w" -eq $n ]
        check "$name: $n warning line(s) from the store ($w)" $?
        for p in "$@"; do
            grep -q "WARN.*kv-store.*$p" "$R/compute.log"
            check "$name: a warning names '$p'" $?
        done
    fi
    if [ "$hits" -gt 0 ]; then
        "$NF_BIN" stats --run-dir "$R" >"$T/stats.txt" 2>/dev/null
        grep -q "kv-store hits" "$T/stats.txt"
        check "$name: the stats table shows kv-store hits" $?
    fi
    "$NF_BIN" down --run-dir "$R" >/dev/null 2>&1
    rm -f "$R/compute.log"
}

second restart "$S" 1

# One data byte flipped: found when read into the slot, dropped, the prompt evaluated whole.
f=$(ls "$T"/flip/*.nfkv)
python3 -c "import sys; b = bytearray(open(sys.argv[1], 'rb').read()); b[-3] ^= 0x40; open(sys.argv[1], 'wb').write(b)" "$f"
second flipped "$T/flip" 0 "data checksum mismatch"
[ ! -e "$f" ]
check "the corrupt file is removed" $?

# Truncated: ignored when the store is indexed, left in place. With it, when zoo is there, a
# prefix stored by a zoo stack: ignored too, and also left alone (one stack, two warnings).
f=$(ls "$T"/trunc/*.nfkv)
truncate -s -100 "$f"
Z="$NF_SHARED_DIR/models/zoo-Q4_K_M.gguf"
if [ -f "$Z" ]; then
    up_store "$Z" "$T/trunc" || exit 1
    gen_run zfirst "$Z" "$Z1"
    "$NF_BIN" down --run-dir "$R" >/dev/null 2>&1
    zf=$(ls "$T"/trunc/*.nfkv | grep -v "$f")
    rm -f "$R/compute.log"
    second other "$T/trunc" 0 "truncated" "another model"
    [ -n "$zf" ] && [ -f "$zf" ] && [ -f "$f" ]
    check "the other model's and the truncated files are left in place" $?
else
    echo "note: $Z is missing, the other-model case skipped"
    second truncated "$T/trunc" 0 "truncated"
fi
exit $fail
