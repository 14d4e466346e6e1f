#!/usr/bin/env bash
# test_stack_e2e.sh - the whole streaming stack on stories260K: up, status, gen (exact mode:
# the same JSON Lines and text as `nanoflowctl run`, gen_ids equal to the golden), stats, down;
# afterwards no daemon process, socket, pid file or /dev/shm object of the stack is left. Then a
# stack at the model's own context: up -c past it is refused, and gen and run stop at the same
# token when the context is full, saying so.
set -u
. "$(dirname "$0")/lib.sh"
: "${NF_BIN:?NF_BIN must point to nanoflowctl}"
: "${NF_SHARED_DIR:?NF_SHARED_DIR must point to the shared directory}"
need_stories
need_daemons
T=$(mktemp -d)
R="$T/run"
R2="$T/run2"
cleanup() {
    "$NF_BIN" down --run-dir "$R" >/dev/null 2>&1
    "$NF_BIN" down --run-dir "$R2" >/dev/null 2>&1
    rm -rf "$T"
}
trap cleanup EXIT
export XDG_CACHE_HOME="$T/cache"
cp "$M0" "$T/m.gguf" # the converted .nft is cached beside the copy
# The copy claims a trained context of 2048 instead of 128 (llama.context_length, a u32 patched in
# place; the arithmetic does not read it), so that `up --ctx 2048` is taken and a generation runs
# long enough to be interrupted (section 4). Sections 1-3 stay within 128 tokens.
patch_ctx "$T/m.gguf" 2048 || exit 1
python3 -c "import json,sys; sys.stdout.write(json.loads(open(sys.argv[1]).readline())['prompt'])" \
    "$G" >"$T/prompt.txt"
SHM=$(python3 -c "
import os, sys
h = 0xcbf29ce484222325
for b in os.path.abspath(sys.argv[1]).encode():
    h = ((h ^ b) * 0x100000001b3) & 0xffffffffffffffff
print('/dev/shm/nanoflow-%016x' % h)" "$R")

# 1. up: converts once, starts the three daemons, prints where they run.
# --ctx 2048: long enough for a generation to be interrupted (section 4).
"$NF_BIN" up -m "$T/m.gguf" --ram 256M -t 1 --ctx 2048 --run-dir "$R" >"$T/up.out" 2>"$T/up.err"
rc=$?
check "up exits 0" $rc
if [ $rc -ne 0 ]; then
    cat "$T/up.err"
    exit 1
fi
for role in fetcher predictor compute; do
    grep -q "$role *pid [0-9]" "$T/up.out"
    check "up names the $role pid" $?
done
[ -e "$SHM" ]
check "the shared region exists ($SHM)" $?
"$NF_BIN" up -m "$T/m.gguf" --run-dir "$R" >/dev/null 2>"$T/err"
[ $? -eq 1 ] && grep -q "already running" "$T/err"
check "second up says already running" $?

# 2. status: three ready daemons whose pids are those of the pid files.
"$NF_BIN" status --run-dir "$R" --json >"$T/status.json"
check "status exits 0" $?
PIDS=$(python3 - "$T/status.json" "$R" <<'PY'
import json, sys
s = json.load(open(sys.argv[1]))
ds = s["daemons"]
assert [d["role"] for d in ds] == ["fetcher", "predictor", "compute"], ds
for d in ds:
    assert d["state"] == "ready", d
    assert d["uptime_s"] >= 0, d
    assert int(open(sys.argv[2] + "/" + d["role"] + ".pid").read()) == d["pid"], d
print(" ".join(str(d["pid"]) for d in ds))
PY
)
check "status: three ready daemons with their pid files' pids" $?
"$NF_BIN" status --run-dir "$R" | grep -c " ready " | grep -qx 3
check "status table shows three ready rows" $?

# 3. gen equals run (exact mode): JSON token lines identical (ids, pieces, top logits), the summary
#    identical but for the timings, gen_ids equal to the golden ones; the text output too.
ARGS=(-f "$T/prompt.txt" --temp 0 -n 60 --seed 3)
"$NF_BIN" gen --run-dir "$R" "${ARGS[@]}" --json --top-logits 5 >"$T/gen.jsonl" 2>"$T/gen.err"
check "gen --json exits 0" $?
"$NF_BIN" run -m "$T/m.gguf" -t 1 "${ARGS[@]}" --json --top-logits 5 >"$T/run.jsonl" 2>/dev/null
check "run --json exits 0" $?
python3 - "$T/gen.jsonl" "$T/run.jsonl" "$G" <<'PY'
import json, sys
gen = [json.loads(l) for l in open(sys.argv[1], encoding="utf-8")]
run = [json.loads(l) for l in open(sys.argv[2], encoding="utf-8")]
gold = json.loads(open(sys.argv[3]).readline())
assert len(gen) == len(run), (len(gen), len(run))
assert gen[:-1] == run[:-1], "token lines differ"
g, r = gen[-1], run[-1]
for k in ("prompt_tok_s", "decode_tok_s"):
    g.pop(k), r.pop(k)
assert g.pop("queued_ahead") == 0 and g.pop("queue_wait_s") >= 0, g  # only gen has a queue
assert g == r, (g, r)
assert g["gen_ids"] == gold["gen_ids"][:len(g["gen_ids"])], g["gen_ids"]
assert g["prompt_ids"] == gold["prompt_ids"]
PY
check "gen --json equals run --json and the golden gen_ids" $?
"$NF_BIN" gen --run-dir "$R" "${ARGS[@]}" >"$T/gen.txt" 2>/dev/null
"$NF_BIN" run -m "$T/m.gguf" -t 1 "${ARGS[@]}" >"$T/run.txt" 2>/dev/null
cmp -s "$T/gen.txt" "$T/run.txt"
check "gen text equals run text" $?
# A positional prompt is the same as -p.
"$NF_BIN" gen --run-dir "$R" "Once upon a time" --temp 0 -n 8 --json >"$T/pos.jsonl" &&
    "$NF_BIN" gen --run-dir "$R" -p "Once upon a time" --temp 0 -n 8 --json >"$T/p.jsonl"
python3 -c "
import json, sys
a = [json.loads(l) for l in open(sys.argv[1])][-1]
b = [json.loads(l) for l in open(sys.argv[2])][-1]
assert a['gen_ids'] == b['gen_ids'] and len(a['gen_ids']) == 8" "$T/pos.jsonl" "$T/p.jsonl"
check "positional prompt equals -p" $?

# 4. Ctrl-C: gen sends Cancel once the first token is out, prints the summary with stop "cancel"
#    and exits 130; the stack goes on serving.
"$NF_BIN" gen --run-dir "$R" -n 1000000 --temp 0 --json "Once" >"$T/cancel.jsonl" 2>/dev/null &
GP=$!
for _ in $(seq 400); do
    [ -s "$T/cancel.jsonl" ] && break
    sleep 0.05
done
kill -INT "$GP"
wait "$GP"
rc=$?
[ $rc -eq 130 ] && tail -n 1 "$T/cancel.jsonl" | grep -q '"stop":"cancel"'
check "Ctrl-C cancels gen (rc $rc, stop cancel)" $?
"$NF_BIN" gen --run-dir "$R" -p "Once upon a time" --temp 0 -n 8 --json >"$T/after.jsonl"
cmp -s "$T/after.jsonl" "$T/p.jsonl" ||
    python3 -c "
import json, sys
a = [json.loads(l) for l in open(sys.argv[1])][-1]
b = [json.loads(l) for l in open(sys.argv[2])][-1]
assert a['gen_ids'] == b['gen_ids']" "$T/after.jsonl" "$T/p.jsonl"
check "the stack serves the same generation after a cancel" $?

# 5. stats: every stage answers; compute counted the tokens, the fetcher read tiles, memory held
#    is within the budget.
"$NF_BIN" stats --run-dir "$R" --json >"$T/stats.json"
check "stats exits 0" $?
python3 - "$T/stats.json" <<'PY'
import json, sys
s = json.load(open(sys.argv[1]))
for st in ("predictor", "fetcher", "compute", "memory"):
    assert st in s and "error" not in s[st], (st, s.get(st))
assert s["compute"]["tokens"] > 0, s["compute"]
assert s["compute"]["decode_tok_s"] > 0, s["compute"]
assert s["compute"]["queue_len"] == 0 and s["compute"]["queue_wait_ms"] >= 0, s["compute"]
assert s["compute"]["clamped"] == 1, s["compute"]  # section 4's -n 1000000
assert s["fetcher"]["reads"] > 0, s["fetcher"]
assert s["memory"]["budget"] == 256 << 20, s["memory"]
assert 0 < s["memory"]["held"] <= s["memory"]["budget"], s["memory"]
PY
check "stats --json: tokens, reads, queue, memory within budget" $?
"$NF_BIN" stats --run-dir "$R" >"$T/stats.txt"
grep -q "^predictor" "$T/stats.txt" && grep -q "^fetcher" "$T/stats.txt" &&
    grep -q "^compute" "$T/stats.txt" && grep -q "^memory" "$T/stats.txt"
check "stats table has the four sections" $?
timeout 2 "$NF_BIN" stats --run-dir "$R" --json --watch 0.3 >"$T/watch.jsonl"
[ "$(wc -l <"$T/watch.jsonl")" -ge 2 ] && python3 -c "
import json, sys
for l in open(sys.argv[1]):
    assert json.loads(l)['interval_s'] > 0" "$T/watch.jsonl"
check "stats --watch refreshes" $?

# 6. down: stops everything and leaves nothing behind but the logs.
"$NF_BIN" down --run-dir "$R" >"$T/down.out" 2>"$T/down.err"
check "down exits 0" $?
alive=
for p in $PIDS; do
    # The state read once (a zombie reaped between two reads would look alive); Z and X gone.
    st=$(sed -n 's/^State:[[:space:]]*//p' "/proc/$p/status" 2>/dev/null)
    if [ -n "$st" ] && [ "${st#[ZX]}" = "$st" ]; then
        alive="$alive $p"
    fi
done
[ -z "$alive" ]
check "no daemon process left ($alive)" $?
left=$(ls "$R" | grep -vE '\.log$')
[ -z "$left" ]
check "only logs left in the run dir ($left)" $?
[ ! -e "$SHM" ]
check "no shm object left" $?
[ -s "$R/fetcher.log" ] && [ -s "$R/compute.log" ]
check "logs kept" $?
"$NF_BIN" down --run-dir "$R" >/dev/null 2>"$T/err"
[ $? -eq 1 ] && grep -q "no stack running" "$T/err"
check "second down says no stack running" $?

# 7. The model's own context (128): up -c past it is refused; gen and run stop at the same token
#    when it is full, both saying so on stderr and with stop "ctx" in the JSON; a prompt longer
#    than the context is refused.
cp "$M0" "$T/s.gguf"
"$NF_BIN" up -m "$T/s.gguf" --ram 256M -t 1 -c 100000 --run-dir "$R2" >/dev/null 2>"$T/err"
[ $? -eq 1 ] && grep -q "context 100000 is beyond the model's trained length 128" "$T/err" &&
    [ ! -e "$R2/compute.sock" ]
st=$? # the $(...) in the message would reset $?
check "up -c 100000 is refused ($(tail -n 1 "$T/err"))" $st
"$NF_BIN" up -m "$T/s.gguf" --ram 256M -t 1 --run-dir "$R2" >"$T/up2.out" 2>/dev/null &&
    grep -q "n_ctx 128" "$T/up2.out"
check "up takes the model's context by default" $?
CTX_ARGS=(--temp 0 -n 500 --json "Once upon a time")
"$NF_BIN" gen --run-dir "$R2" "${CTX_ARGS[@]}" >"$T/gctx.jsonl" 2>"$T/gctx.err"
grc=$?
"$NF_BIN" run -m "$T/s.gguf" -t 1 "${CTX_ARGS[@]}" >"$T/rctx.jsonl" 2>"$T/rctx.err"
rrc=$?
python3 - "$T/gctx.jsonl" "$T/rctx.jsonl" <<'PY'
import json, sys
g = [json.loads(l) for l in open(sys.argv[1])][-1]
r = [json.loads(l) for l in open(sys.argv[2])][-1]
assert g["stop"] == r["stop"] == "ctx" and g["n_ctx"] == r["n_ctx"] == 128, (g, r)
assert g["gen_ids"] == r["gen_ids"], (g["gen_ids"], r["gen_ids"])
assert g["prompt_tokens"] + g["gen_tokens"] - 1 == 128
PY
check "gen and run stop at the same token with stop ctx (exit $grc, $rrc)" $?
n=$(python3 -c "import json,sys; print([json.loads(l) for l in open(sys.argv[1])][-1]['gen_tokens'])" "$T/gctx.jsonl")
want="context full after $n tokens (n_ctx 128, the model's trained length)"
[ $grc -eq 0 ] && [ "$(cat "$T/gctx.err")" = "nanoflowctl gen: $want" ] &&
    [ $rrc -eq 0 ] && [ "$(cat "$T/rctx.err")" = "nanoflowctl run: $want" ]
st=$? # the $(...) in the message would reset $?
check "gen and run say the context is full ($(cat "$T/gctx.err"))" $st
python3 -c "print('Once upon a time ' * 100)" >"$T/long.txt"
"$NF_BIN" gen --run-dir "$R2" -f "$T/long.txt" >/dev/null 2>"$T/err"
[ $? -eq 1 ] && grep -q "the prompt has [0-9]* tokens but the context holds 128" "$T/err"
st=$? # the $(...) in the message would reset $?
check "gen refuses a prompt longer than the context ($(cat "$T/err"))" $st
"$NF_BIN" down --run-dir "$R2" >/dev/null 2>&1
check "down of the second stack" $?
exit $fail
