#!/usr/bin/env bash
# test_http_sampling.sh - the sampling fields of the OpenAI front on stories260K, through the
# whole stack: presence_penalty / frequency_penalty (llama.cpp's penalties over the last 64
# tokens) give the text of `gen` and `run` with --presence-penalty / --frequency-penalty.
set -u
. "$(dirname "$0")/lib.sh"
. "$(dirname "$0")/http_lib.sh"
: "${NF_BIN:?NF_BIN must point to nanoflowctl}"
: "${NF_SHARED_DIR:?NF_SHARED_DIR must point to the shared directory}"
need_stories
need_daemons
need_gateway
T=$(mktemp -d)
R="$T/run"
cleanup() {
    "$NF_BIN" down --run-dir "$R" >/dev/null 2>&1
    rm -rf "$T"
}
trap cleanup EXIT
export XDG_CACHE_HOME="$T/cache"
PORT=$(free_port)
U="http://127.0.0.1:$PORT"
http_up -m "$M0" --ram 256M -t 1

# 1. Penalties: greedy text with them equals gen's and run's with the same flags, and differs
# from the text without them (so they reach the sampler, not only the parser).
P="Once upon a time"
PEN=(--presence-penalty 0.5 --frequency-penalty 1.0)
"$NF_BIN" gen --run-dir "$R" -n 40 --temp 0 "$P" >"$T/plain.txt" 2>/dev/null
"$NF_BIN" gen --run-dir "$R" -n 40 --temp 0 "${PEN[@]}" "$P" >"$T/gen_pen.txt" 2>"$T/gen_pen.err"
check "gen --presence-penalty --frequency-penalty exits 0" $?
"$NF_BIN" run -m "$M0" -t 1 -n 40 --temp 0 "${PEN[@]}" -p "$P" >"$T/run_pen.txt" 2>/dev/null
cmp -s "$T/gen_pen.txt" "$T/run_pen.txt"
check "gen and run agree with the penalties" $?
! cmp -s "$T/plain.txt" "$T/gen_pen.txt"
check "the penalties change the greedy text" $?
body='{"prompt":"Once upon a time","max_tokens":40,"temperature":0,"presence_penalty":0.5,"frequency_penalty":1.0}'
curl -s "$U/v1/completions" -d "$body" >"$T/c.json"
jget "$T/c.json" 'd["choices"][0]["text"]' | cmp -s - "$T/gen_pen.txt"
check "HTTP completion with the penalties equals gen's" $?
curl -sN "$U/v1/completions" -d "${body%\}},\"stream\":true}" >"$T/cs.sse"
sse_text "$T/cs.sse" | head -n -1 | cmp -s - "$T/gen_pen.txt"
check "streamed, too" $?
# Only one of them: presence alone.
"$NF_BIN" gen --run-dir "$R" -n 40 --temp 0 --presence-penalty 1.5 "$P" >"$T/gen_pres.txt" 2>/dev/null
curl -s "$U/v1/completions" -d '{"prompt":"Once upon a time","max_tokens":40,"temperature":0,"presence_penalty":1.5}' >"$T/p.json"
jget "$T/p.json" 'd["choices"][0]["text"]' | cmp -s - "$T/gen_pres.txt"
check "presence_penalty alone equals gen --presence-penalty" $?
code=$(curl -s -o "$T/bad.json" -w '%{http_code}' "$U/v1/completions" -d '{"prompt":"a","frequency_penalty":2.5}')
[ "$code" = 400 ] && [ "$(jget "$T/bad.json" 'd["error"]["param"]')" = frequency_penalty ]
check "frequency_penalty 2.5 is a 400 naming the field" $?
"$NF_BIN" gen --run-dir "$R" -n 4 --presence-penalty 3 "$P" >/dev/null 2>"$T/flag.err"
[ $? = 2 ] && grep -q -- "--presence-penalty" "$T/flag.err"
check "gen --presence-penalty 3 is a usage error" $?
exit $fail
