# batch_lib.sh - the continuous-batching check the test_batch_*.sh tests share (sourced after
# lib.sh): batch_check NAME starts a stack of models/NAME.gguf with `up --parallel 4`, runs
# several `gen` clients started at different times, with prompts of different lengths,
# different -n, greedy and seeded sampling, and checks each gets exactly its solo `run --json`
# output (token lines, gen_ids, text) while they shared steps (stats: steps shared by 2+
# sequences); a client cancelled with Ctrl-C mid-way leaves the others' output intact and gets
# a prefix of its solo output. Needs T (a scratch directory) and NF_BIN, NF_SHARED_DIR;
# BATCH_NEED_SHARED=0 waives the shared-steps check (for a model too fast to be sure its
# staggered clients overlap on a loaded machine); BATCH_CTX=N runs a copy of the model whose
# trained context is patched to N, so that the client to be cancelled is still
# generating when its Ctrl-C comes.

# Clients: name, delay before starting (s), -n, sampling flags, prompt.
CLIENTS=(
    "a|0|60|--temp 0|Once upon a time, there was a little girl named Lily. She loved to play"
    "b|0.15|40|--seed 7 --temp 0.8|The cat"
    "c|0.3|50|--seed 123 --temp 0.8 --top-k 20|One day, a big dog"
    "d|0.45|30|--temp 0|Tom"
)

batch_check() {
    local name=$1 M="$NF_SHARED_DIR/models/$1.gguf" R="$T/run-$1"
    local c id delay n flags prompt p xpid xrc grc runs pids rc
    M="$NF_SHARED_DIR/models/$name.gguf"
    if [ ! -f "$M" ]; then
        echo "note: $M is missing, skipped"
        return
    fi
    R="$T/run-$name"
    if [ -n "${BATCH_CTX:-}" ]; then
        cp "$M" "$T/$name.gguf" && patch_ctx "$T/$name.gguf" "$BATCH_CTX" || {
            check "$name: a copy with a context of $BATCH_CTX" 1
            return
        }
        M="$T/$name.gguf"
    fi
    # Each client alone, in RAM, meanwhile.
    runs=()
    for c in "${CLIENTS[@]}"; do
        IFS='|' read -r id delay n flags prompt <<<"$c"
        # shellcheck disable=SC2086 # flags are words
        "$NF_BIN" run -m "$M" -t 1 -p "$prompt" -n "$n" $flags --json >"$T/$id.run" 2>/dev/null &
        runs+=($!)
    done
    "$NF_BIN" run -m "$M" -t 1 -p "Once upon a time" -n 1000 --temp 0 --json >"$T/x.run" \
        2>/dev/null &
    runs+=($!)
    "$NF_BIN" up -m "$M" --ram 256M -t 1 --parallel 4 --run-dir "$R" >"$T/up.out" 2>"$T/up.err"
    rc=$?
    check "$name: up --parallel 4 exits 0 (rc $rc)" $rc
    if [ $rc -ne 0 ]; then
        cat "$T/up.err"
        return
    fi
    grep -q "parallel 4 sequences" "$T/up.out"
    check "$name: up reports 4 sequences" $?
    # The clients, staggered; x is cancelled with SIGINT once it has streamed a few tokens.
    "$NF_BIN" gen --run-dir "$R" -p "Once upon a time" -n 1000 --temp 0 --json >"$T/x.gen" \
        2>"$T/x.err" </dev/null &
    xpid=$!
    pids=()
    for c in "${CLIENTS[@]}"; do
        IFS='|' read -r id delay n flags prompt <<<"$c"
        sleep "$delay"
        # shellcheck disable=SC2086
        "$NF_BIN" gen --run-dir "$R" -p "$prompt" -n "$n" $flags --json >"$T/$id.gen" \
            2>"$T/$id.err" </dev/null &
        pids+=($!)
        if [ "$id" = a ]; then # x is cancelled while a runs beside it
            for _ in $(seq 3000); do # up to 30 s: a loaded machine starts clients slowly
                [ "$(wc -l <"$T/x.gen")" -ge 3 ] && break
                sleep 0.01
            done
            kill -INT "$xpid"
        fi
    done
    wait "$xpid"
    xrc=$?
    grc=0
    for p in "${pids[@]}"; do
        wait "$p" || grc=1
    done
    check "$name: every gen exits 0" $grc
    [ $xrc -eq 130 ]
    check "$name: the cancelled gen exits 130 (rc $xrc)" $?
    "$NF_BIN" stats --run-dir "$R" --json >"$T/stats.json" 2>/dev/null
    python3 - "$T/stats.json" "${BATCH_NEED_SHARED:-1}" <<'PY'
import json, sys
c = json.load(open(sys.argv[1]))["compute"]
assert c["shared_steps"] > 0 or sys.argv[2] == "0", c
assert c["parallel"] == 4 and c["active"] == 0, c
print("shared steps", c["shared_steps"], "sequences per shared step", c["shared_batch"])
PY
    check "$name: stats shows shared steps, 4 at most, none active now" $?
    for p in "${runs[@]}"; do
        wait "$p"
    done
    for c in "${CLIENTS[@]}"; do
        IFS='|' read -r id delay n flags prompt <<<"$c"
        python3 - "$T/$id.gen" "$T/$id.run" <<'PY'
import json, sys
gen = [json.loads(l) for l in open(sys.argv[1], encoding="utf-8")]
run = [json.loads(l) for l in open(sys.argv[2], encoding="utf-8")]
assert gen[:-1] == run[:-1], "token lines differ"
g, r = gen[-1], run[-1]
for k in ("prompt_ids", "gen_ids", "text", "stop"):
    assert g[k] == r[k], (k, g[k], r[k])
PY
        check "$name: client $id ($flags, -n $n) equals its solo run" $?
    done
    python3 - "$T/x.gen" "$T/x.run" <<'PY'
import json, sys
gen = [json.loads(l) for l in open(sys.argv[1], encoding="utf-8")]
run = json.loads(open(sys.argv[2], encoding="utf-8").readlines()[-1])
g = gen[-1]
assert g["stop"] == "cancel", g["stop"]
n = len(g["gen_ids"])
assert 3 <= n < len(run["gen_ids"]) and g["gen_ids"] == run["gen_ids"][:n], (g, run)
PY
    check "$name: the cancelled client got a prefix of its solo run" $?
    "$NF_BIN" down --run-dir "$R" >/dev/null 2>&1
    check "$name: down exits 0" $?
}

# batch_test NAME: a test_batch_*.sh's whole check of models/NAME.gguf: skips (exit 77) unless
# python3, the daemons and the model are there, makes the scratch directory (stack_tmp, T) and
# runs batch_check NAME. Whether the staggered clients overlap depends on the machine's load (a
# loaded run saw none share a step once), so shared steps are not required unless
# BATCH_NEED_SHARED=1 (test_batch_engine checks them deterministically); each client's exact
# output always is. The shared models are trained for 128 or 256 tokens, which the client to be
# cancelled (-n 1000) reached before its Ctrl-C on loaded machines (stories260K at load 20,
# moe-Q8_0 and zoo-Q4_K_M under the sanitizers at -j2): the stack runs a copy whose context is
# 2048 unless BATCH_CTX says otherwise.
batch_test() {
    need_python3 "to read JSON"
    need_daemons
    if [ ! -f "$NF_SHARED_DIR/models/$1.gguf" ]; then
        echo "skip: $NF_SHARED_DIR/models/$1.gguf is missing"
        exit 77
    fi
    stack_tmp
    export NANOFLOW_PROGRESS_MS=0 BATCH_NEED_SHARED=${BATCH_NEED_SHARED:-0}
    export BATCH_CTX=${BATCH_CTX:-2048}
    batch_check "$1"
}
