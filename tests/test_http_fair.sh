#!/usr/bin/env bash
# test_http_fair.sh - the gateway's fair queue on stories260K: a client (API key A) that floods
# 10 streamed completions and a second client (key B) that sends 1 once the flood is queued:
# B's request is forwarded next, before the flooder's waiting ones, and all 11 complete with the
# greedy text. The wait and the queue length show in /metrics and `nanoflowctl stats` (gateway
# row), and `status` lists the gateway.
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
patch_ctx "$T/m.gguf" 2048 || exit 1 # room for 600-token generations
# --parallel 1: compute runs one request at a time, so the order served is the gateway's queue.
http_up -m "$T/m.gguf" --ram 256M -t 1 --ctx 2048 --parallel 1

"$NF_BIN" status --run-dir "$R" >"$T/status.txt" 2>&1
grep -Eq "^gateway +[0-9]+ +ready" "$T/status.txt"
check "status lists the gateway, ready" $?

N=600
"$NF_BIN" gen --run-dir "$R" -n $N --temp 0 "Once upon a time" >"$T/gen.txt" 2>/dev/null
python3 - "$PORT" "$T" $N <<'PY'
import http.client, json, sys, threading, time, urllib.request
port, T, N = int(sys.argv[1]), sys.argv[2], int(sys.argv[3])
want = open(f"{T}/gen.txt").read().rstrip("\n")
order, texts, lock = [], {}, threading.Lock()
def client(name, key):
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    body = json.dumps({"prompt": "Once upon a time", "max_tokens": N, "temperature": 0, "stream": True})
    c.request("POST", "/v1/completions", body, {"Authorization": "Bearer " + key, "Content-Type": "application/json"})
    r = c.getresponse()
    text, started = "", False
    for line in r:
        line = line.decode().strip()
        if not line.startswith("data: ") or line == "data: [DONE]":
            continue
        d = json.loads(line[6:])
        for ch in d["choices"]:
            if ch["text"] and not started:
                started = True
                with lock:
                    order.append(name)
            text += ch["text"]
    with lock:
        texts[name] = text
def metrics():
    m = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics").read().decode()
    return {l.split()[0]: float(l.split()[1]) for l in m.splitlines() if l and not l.startswith("#")}
flood = [threading.Thread(target=client, args=(f"A{i}", "key-A")) for i in range(10)]
def accepted():  # requests the gateway holds or has forwarded
    m = metrics()
    return m["nanoflow_gateway_queue_len"] + m["nanoflow_gateway_fair_wait_seconds_count"]
# A0 first, then A1..A9 queue behind it: each started once the gateway has the one before (a
# fixed stagger let A1 overtake A0 on a loaded machine).
for i, t in enumerate(flood):
    t.start()
    for _ in range(1000):
        if accepted() >= i + 1:
            break
        time.sleep(0.005)
# Once all 10 are in the gateway (waiting, or forwarded), B comes: it must be forwarded right
# after the request running then, before every A still waiting.
for _ in range(500):
    m = metrics()
    if m["nanoflow_gateway_queue_len"] + m["nanoflow_gateway_fair_wait_seconds_count"] == 10:
        break
    time.sleep(0.01)
k = int(m["nanoflow_gateway_fair_wait_seconds_count"])  # A requests forwarded before B came
b = threading.Thread(target=client, args=("B", "key-B"))
b.start()
for t in flood + [b]:
    t.join(180)
print(f"  B came with {k} A forwarded and {int(m['nanoflow_gateway_queue_len'])} waiting; started in order:", " ".join(order))
fails = 0
def check(name, ok):
    global fails
    print(("ok: " if ok else "FAIL: ") + name)
    fails += not ok
check("all 11 streams completed with gen's greedy text",
      len(texts) == 11 and all(t == want for t in texts.values()))
check("when B came: A waiting, 1 running, 1 client in the queue (/metrics)",
      m["nanoflow_gateway_queue_len"] >= 5 and m["nanoflow_gateway_running"] == 1
      and m["nanoflow_gateway_queue_clients"] == 1)
check("B was forwarded next, before the flooder's waiting requests",
      order.index("B") == k and all(o != "B" for o in order[:k]))
check("the flooder's own requests kept their order", [o for o in order if o != "B"] == [f"A{i}" for i in range(10)])
sys.exit(1 if fails else 0)
PY
check "fair queue: a second client is served before the flooder's backlog" $?

curl -s "$U/metrics" >"$T/metrics.txt"
awk '$1 == "nanoflow_gateway_fair_wait_seconds_count" {c=$2} $1 == "nanoflow_gateway_fair_wait_max_seconds" {m=$2}
    END {exit !(c == 11 && m > 0.5)}' "$T/metrics.txt"
check "/metrics counts the forwarded requests and their longest wait" $?
"$NF_BIN" stats --run-dir "$R" >"$T/stats.txt" 2>&1
grep -Eq "^gateway +requests queued +0" "$T/stats.txt" && grep -Eq "queue wait \(mean\) +[0-9.]+ ms" "$T/stats.txt" &&
    grep -Eq "queue wait \(max\) +[0-9.]+ ms" "$T/stats.txt"
check "stats has the gateway row: queue length and waits" $?
"$NF_BIN" stats --run-dir "$R" --json >"$T/stats.json" 2>&1
[ "$(jget "$T/stats.json" 'd["gateway"]["queue_len"], d["gateway"]["requests"] == 11, d["gateway"]["queue_wait_max_ms"] > 500')" = "0 True True" ]
check "stats --json has the gateway's queue_len, requests and max wait" $?
exit $fail
