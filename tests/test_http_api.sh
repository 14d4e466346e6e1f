#!/usr/bin/env bash
# test_http_api.sh - the OpenAI-compatible front (up --http) on stories260K: greedy completions
# and chat completions, whole and streamed (Server-Sent Events), equal `nanoflowctl gen` for the
# same (rendered) prompt; usage counts; stop strings across token boundaries; /health,
# /v1/models, /metrics; a client that disconnects cancels its generation; the chat page at /;
# down stops the front.
set -u
. "$(dirname "$0")/lib.sh"
. "$(dirname "$0")/http_lib.sh"
: "${NF_BIN:?NF_BIN must point to nanoflowctl}"
: "${NF_SHARED_DIR:?NF_SHARED_DIR must point to the shared directory}"
need_stories
need_daemons
need_gateway
http_tmp
cp "$M0" "$T/m.gguf"
# A trained context of 2048 (patched) so that a generation runs long enough to be cut (part 5).
patch_ctx "$T/m.gguf" 2048 || exit 1

http_up -m "$T/m.gguf" --ram 256M -t 1 --ctx 2048
grep -q "gateway *pid [0-9].*http://127.0.0.1:$PORT/" "$T/up.out"
check "up names the gateway and its address" $?

# 1. /health, /v1/models, /metrics.
code=$(curl -s -o "$T/health.json" -w '%{http_code}' "$U/health")
[ "$code" = 200 ] && [ "$(jget "$T/health.json" 'd["status"], sorted(d["daemons"]), set(v["state"] for v in d["daemons"].values())')" = "ok ['compute', 'fetcher', 'predictor'] {'ready'}" ]
check "/health is 200 with three ready daemons" $?
curl -s "$U/v1/models" >"$T/models.json"
[ "$(jget "$T/models.json" 'd["object"], len(d["data"]), d["data"][0]["object"]')" = "list 1 model" ]
check "/v1/models lists the model" $?

# 2. Completions: whole and streamed equal gen's greedy text; usage counts gen's tokens.
P="Once upon a time"
"$NF_BIN" gen --run-dir "$R" -n 30 --temp 0 "$P" >"$T/gen.txt" 2>/dev/null
"$NF_BIN" gen --run-dir "$R" -n 30 --temp 0 --json "$P" >"$T/gen.jsonl" 2>/dev/null
NPROMPT=$(tail -n 1 "$T/gen.jsonl" | python3 -c "import json,sys; print(len(json.load(sys.stdin)['prompt_ids']))")
body='{"model":"x","prompt":"Once upon a time","max_tokens":30,"temperature":0}'
curl -s "$U/v1/completions" -H 'Content-Type: application/json' -d "$body" >"$T/c.json"
jget "$T/c.json" 'd["choices"][0]["text"]' >"$T/c.txt"
cmp -s "$T/gen.txt" "$T/c.txt"
check "completion text equals gen's" $?
[ "$(jget "$T/c.json" 'd["object"], d["choices"][0]["finish_reason"], d["usage"]["prompt_tokens"], d["usage"]["completion_tokens"], d["usage"]["total_tokens"]')" = "text_completion length $NPROMPT 30 $((NPROMPT + 30))" ]
check "completion: finish_reason length, usage $NPROMPT + 30 tokens" $?
[ "$(jget "$T/c.json" 'd["timings"]["queued_ahead"], d["timings"]["queue_wait_s"] >= 0, d["timings"]["decode_tok_s"] > 0')" = "0 True True" ]
check "completion: timings with the queue wait and speeds" $?
curl -sN "$U/v1/completions" -d "${body%\}},\"stream\":true,\"stream_options\":{\"include_usage\":true}}" >"$T/cs.sse"
sse_text "$T/cs.sse" >"$T/cs.txt"
[ "$(head -n -1 "$T/cs.txt")" = "$(cat "$T/gen.txt")" ] && [ "$(tail -n 1 "$T/cs.txt")" = length ]
check "streamed completion text equals gen's, ends with length and [DONE]" $?
grep -q "\"usage\":{\"prompt_tokens\":$NPROMPT,\"completion_tokens\":30," "$T/cs.sse"
check "streamed completion: usage chunk with include_usage" $?

# 3. Chat completions: the messages rendered as chatml (the model has no template), then gen.
printf '<|im_start|>system\nYou tell stories.<|im_end|>\n<|im_start|>user\nTell me one.<|im_end|>\n<|im_start|>assistant\n' >"$T/chat_prompt.txt"
"$NF_BIN" gen --run-dir "$R" -n 20 --temp 0 -f "$T/chat_prompt.txt" >"$T/gen_chat.txt" 2>/dev/null
msgs='"messages":[{"role":"system","content":"You tell stories."},{"role":"user","content":[{"type":"text","text":"Tell me one."}]}]'
curl -s "$U/v1/chat/completions" -d "{$msgs,\"max_completion_tokens\":20,\"temperature\":0}" >"$T/ch.json"
jget "$T/ch.json" 'd["choices"][0]["message"]["content"]' >"$T/ch.txt"
cmp -s "$T/gen_chat.txt" "$T/ch.txt" &&
    [ "$(jget "$T/ch.json" 'd["object"], d["choices"][0]["message"]["role"], d["usage"]["completion_tokens"]')" = "chat.completion assistant 20" ]
check "chat completion equals gen on the rendered prompt" $?
curl -sN "$U/v1/chat/completions" -d "{$msgs,\"max_tokens\":20,\"temperature\":0,\"stream\":true}" >"$T/chs.sse"
sse_text "$T/chs.sse" >"$T/chs.txt"
[ "$(head -n -1 "$T/chs.txt")" = "$(cat "$T/gen_chat.txt")" ] && [ "$(tail -n 1 "$T/chs.txt")" = length ] &&
    head -n 1 "$T/chs.sse" | grep -q '"delta":{"role":"assistant","content":""}'
check "streamed chat completion equals gen, role first" $?

# 4. Stop strings, also one spanning several tokens (" little g" + "ir" + "l"): the text ends
# before it, finish_reason stop, whole and streamed alike.
full=$(cat "$T/gen.txt")
for stop in '"little"' '["zzz","ttle girl"]'; do
    s=$(python3 -c "import json,sys; v=json.loads(sys.argv[1]); print(v if isinstance(v,str) else v[1])" "$stop")
    want=${full%%"$s"*}
    curl -s "$U/v1/completions" -d "{\"prompt\":\"$P\",\"max_tokens\":30,\"temperature\":0,\"stop\":$stop}" >"$T/st.json"
    [ "$(jget "$T/st.json" 'd["choices"][0]["text"]')" = "$want" ] &&
        [ "$(jget "$T/st.json" 'd["choices"][0]["finish_reason"]')" = stop ]
    check "stop $stop: text ends before it, finish_reason stop" $?
    curl -sN "$U/v1/completions" -d "{\"prompt\":\"$P\",\"max_tokens\":30,\"temperature\":0,\"stop\":$stop,\"stream\":true}" >"$T/st.sse"
    sse_text "$T/st.sse" >"$T/st.txt"
    [ "$(head -n -1 "$T/st.txt")" = "$want" ] && [ "$(tail -n 1 "$T/st.txt")" = stop ]
    check "stop $stop streamed: the same text, never past the stop" $?
done

# 5. A client that disconnects mid-stream cancels its generation: compute's decode counter stops
# far below the 500 asked for (stories260K decodes about 1000 tokens a second: the tokens
# decoded while the gateway notices the closed socket are many on a fast machine).
metric() { curl -s "$U/metrics" | awk -v n="$1" '$1 == n {print $2}'; }
before=$(metric nanoflow_compute_decode_tokens_total)
seen=$(python3 - "$PORT" <<'PY'
import socket, sys
s = socket.create_connection(("127.0.0.1", int(sys.argv[1])))
b = b'{"prompt":"Once","max_tokens":500,"temperature":0,"stream":true}'
s.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % len(b) + b)
got = b""
while got.count(b"data: ") < 3:
    got += s.recv(65536)
s.close()
print(got.count(b"data: "))
PY
)
sleep 1
after=$(metric nanoflow_compute_decode_tokens_total)
sleep 0.5
after2=$(metric nanoflow_compute_decode_tokens_total)
echo "  client saw $seen chunks; compute decoded $((after - before)) tokens for it"
[ "$after" = "$after2" ] && [ $((after - before)) -lt 250 ]
check "disconnect cancels the generation (compute stopped at $((after - before)) tokens)" $?
[ "$(metric nanoflow_gateway_generations)" = 0 ]
check "no generation left in the gateway" $?
curl -s "$U/v1/completions" -d "$body" >"$T/c2.json"
jget "$T/c2.json" 'd["choices"][0]["text"]' | cmp -s - "$T/gen.txt"
check "the front serves the same completion after the cancel" $?

# 6. /metrics: Prometheus text from the three daemons' Stats and the gateway's own.
curl -s "$U/metrics" >"$T/metrics.txt"
for m in nanoflow_compute_decode_tokens_total nanoflow_fetcher_bytes_total \
    nanoflow_fetcher_hit_ratio nanoflow_compute_queue_len nanoflow_predictor_mem_bytes \
    nanoflow_ram_held_bytes nanoflow_gateway_tokens_total; do
    grep -q "^$m [0-9]" "$T/metrics.txt"
    check "/metrics has $m" $?
done
[ "$(awk '$1 == "nanoflow_compute_decode_tokens_total" {print ($2 > 100)}' "$T/metrics.txt")" = 1 ]
check "/metrics counts the decoded tokens" $?

# 7. The chat page at /: served whole from the binary, no external assets, its script valid
# JavaScript that streams /v1/chat/completions, stops with an AbortController and polls /metrics.
code=$(curl -s -o "$T/page.html" -w '%{http_code} %{content_type}' "$U/")
[ "$code" = "200 text/html; charset=utf-8" ] && grep -q 'id="stop"' "$T/page.html" &&
    grep -q '/v1/chat/completions' "$T/page.html" && grep -q 'AbortController' "$T/page.html" &&
    grep -q '"/metrics"' "$T/page.html" && ! grep -Eq '(src|href)="(https?:)?//' "$T/page.html"
check "/ serves the chat page (stop button, streaming, stats), no external assets" $?
if command -v node >/dev/null; then
    python3 -c "import re,sys; sys.stdout.write(re.search(r'<script>(.*)</script>', open(sys.argv[1]).read(), re.S).group(1))" \
        "$T/page.html" >"$T/page.js"
    node --check "$T/page.js"
    check "the page's script parses (node --check)" $?
fi

# 8. down stops the front too.
GWPID=$(cat "$R/gateway.pid")
"$NF_BIN" down --run-dir "$R" >/dev/null 2>&1
check "down exits 0" $?
for _ in 1 2 3 4 5 6 7 8 9 10; do # down returns once the pid file is gone: exit and reaping follow
    [ "$(ps -o stat= -p "$GWPID" 2>/dev/null | cut -c1)" != "" ] && [ "$(ps -o stat= -p "$GWPID" | cut -c1)" != Z ] || break
    sleep 0.2
done
[ ! -e "$R/gateway.pid" ] && [ "$(ps -o stat= -p "$GWPID" 2>/dev/null | cut -c1)" != S ] &&
    ! curl -s -m 2 "$U/health" >/dev/null
check "the gateway is gone after down" $?
exit $fail
