#!/usr/bin/env bash
# test_http_concurrent.sh - 32 streaming clients at once against the HTTP front on stories260K
# (completions and chat completions over four prompts, each client on its own connection and
# four of them under their own API key): every stream completes with [DONE], finish_reason
# length and exactly the text `nanoflowctl gen` prints for the same (rendered) prompt, and the
# gateway is empty afterwards.
set -u
. "$(dirname "$0")/lib.sh"
. "$(dirname "$0")/http_lib.sh"
: "${NF_BIN:?NF_BIN must point to nanoflowctl}"
: "${NF_SHARED_DIR:?NF_SHARED_DIR must point to the shared directory}"
need_stories
need_daemons
need_gateway
http_tmp
http_up -m "$M0" --ram 256M -t 1

N=24
P=("Once upon a time" "The little dog" "One day, Lily" "Tom and Sam")
for i in 0 1 2 3; do
    "$NF_BIN" gen --run-dir "$R" -n $N --temp 0 "${P[$i]}" >"$T/gen$i.txt" 2>/dev/null
    # Chat: the user message in chatml (the model has no template), as the gateway renders it.
    printf '<|im_start|>user\n%s<|im_end|>\n<|im_start|>assistant\n' "${P[$i]}" >"$T/chat$i.txt"
    "$NF_BIN" gen --run-dir "$R" -n $N --temp 0 -f "$T/chat$i.txt" >"$T/genchat$i.txt" 2>/dev/null
done
python3 - "$PORT" "$T" $N "${P[@]}" <<'PY'
import http.client, json, sys, threading, time
port, T, N, prompts = int(sys.argv[1]), sys.argv[2], int(sys.argv[3]), sys.argv[4:]
want = {(False, i): open(f"{T}/gen{i}.txt").read().rstrip("\n") for i in range(4)}
want.update({(True, i): open(f"{T}/genchat{i}.txt").read().rstrip("\n") for i in range(4)})
res = {}
def client(k):
    chat, i = k % 2 == 1, (k // 2) % 4
    if chat:
        path, body = "/v1/chat/completions", {"messages": [{"role": "user", "content": prompts[i]}]}
    else:
        path, body = "/v1/completions", {"prompt": prompts[i]}
    body.update(max_tokens=N, temperature=0, stream=True)
    h = {"Content-Type": "application/json"}
    if k % 8 == 0:
        h["Authorization"] = f"Bearer client-{k}"
    text, fin, done, err = "", None, False, None
    try:
        c = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
        c.request("POST", path, json.dumps(body), h)
        r = c.getresponse()
        if r.status != 200:
            err = f"HTTP {r.status}"
        for line in r:
            line = line.decode().rstrip("\n")
            if line == "data: [DONE]":
                done = True
            elif line.startswith("data: "):
                for ch in json.loads(line[6:])["choices"]:
                    text += ch.get("text") or ch.get("delta", {}).get("content") or ""
                    fin = ch["finish_reason"] or fin
    except Exception as e:
        err = repr(e)
    res[k] = (text == want[(chat, i)] and fin == "length" and done and err is None, err, text)
t0 = time.monotonic()
th = [threading.Thread(target=client, args=(k,)) for k in range(32)]
for t in th:
    t.start()
for t in th:
    t.join(180)
bad = [k for k in range(32) if not res.get(k, (False,))[0]]
print(f"  32 clients in {time.monotonic() - t0:.2f} s; wrong or incomplete: {bad}")
for k in bad[:3]:
    print("   ", k, res.get(k))
sys.exit(1 if bad else 0)
PY
check "32 concurrent streaming clients all complete with gen's text" $?
metric() { curl -s "$U/metrics" | awk -v n="$1" '$1 == n {print $2}'; }
[ "$(metric nanoflow_gateway_generations)" = 0 ] && [ "$(metric nanoflow_gateway_queue_len)" = 0 ] &&
    [ "$(metric nanoflow_gateway_fair_wait_seconds_count)" = 32 ]
check "the gateway forwarded 32 and holds none after" $?
exit $fail
