#!/usr/bin/env bash
# test_http_sampling.sh - the sampling fields of the OpenAI front on stories260K, through the
# whole stack: presence_penalty / frequency_penalty (llama.cpp's penalties over the last 64
# tokens) give the text of `gen` and `run` with --presence-penalty / --frequency-penalty;
# logprobs / top_logprobs (chat and completions, whole and streamed) are `run --json`'s logits
# as log-softmax over the whole vocabulary, sorted, as many as asked.
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

# 2. logprobs: compute's log-softmax against run's raw logits. run gives the 64 highest of the
# 512 (stories260K's vocabulary), so the log-sum-exp L that turns them into logprobs is bounded:
# LSE(top 64) <= L <= log(exp(LSE(top 64)) + 448 exp(64th)). Every logprob the API returns
# must be run's logit minus one L within those bounds (1e-4), for the chosen token and for each
# alternative, and the alternatives are run's top ids in order (compared by logprob).
N=12
"$NF_BIN" run -m "$M0" -t 1 -n $N --temp 0 --json --top-logits 64 -p "$P" >"$T/run.jsonl" 2>/dev/null
curl -s "$U/v1/completions" -d "{\"prompt\":\"$P\",\"max_tokens\":$N,\"temperature\":0,\"logprobs\":5}" >"$T/lp.json"
curl -sN "$U/v1/completions" -d "{\"prompt\":\"$P\",\"max_tokens\":$N,\"temperature\":0,\"logprobs\":5,\"stream\":true}" >"$T/lp.sse"
printf '<|im_start|>user\nTell me one.<|im_end|>\n<|im_start|>assistant\n' >"$T/chat_prompt.txt"
"$NF_BIN" run -m "$M0" -t 1 -n $N --temp 0 --json --top-logits 64 -f "$T/chat_prompt.txt" >"$T/run_chat.jsonl" 2>/dev/null
msgs='"messages":[{"role":"user","content":"Tell me one."}]'
curl -s "$U/v1/chat/completions" -d "{$msgs,\"max_tokens\":$N,\"temperature\":0,\"logprobs\":true,\"top_logprobs\":20}" >"$T/lpc.json"
curl -sN "$U/v1/chat/completions" -d "{$msgs,\"max_tokens\":$N,\"temperature\":0,\"logprobs\":true,\"top_logprobs\":20,\"stream\":true}" >"$T/lpc.sse"
curl -s "$U/v1/chat/completions" -d "{$msgs,\"max_tokens\":3,\"temperature\":0,\"logprobs\":true}" >"$T/lp0.json"
python3 - "$T" $N <<'PY'
import json, math, sys
T, N = sys.argv[1], int(sys.argv[2])
V, TOL = 512, 1e-4
fails = 0
def check(name, ok):
    global fails
    print(("ok: " if ok else "FAIL: ") + name)
    fails += not ok
def run_steps(path):
    return [json.loads(l) for l in open(path) if '"top_logits"' in l]
def sse(path):
    ev = [l[6:] for l in open(path).read().split("\n") if l.startswith("data: ")]
    assert ev[-1] == "[DONE]"
    return [json.loads(e) for e in ev[:-1]]
def bounds(tl):
    vals = [v for _, v in tl]
    m = max(vals)
    lo = m + math.log(sum(math.exp(v - m) for v in vals))
    hi = math.log(math.exp(lo - m) + (V - len(vals)) * math.exp(vals[-1] - m)) + m
    return lo, hi
def check_steps(name, steps, toks):
    # toks: per token (chosen logprob, [alternatives' logprobs]).
    ok = len(steps) == len(toks) == N
    worst = 0.0
    for st, (lp, alts) in zip(steps, toks):
        tl = st["top_logits"]
        L = tl[0][1] - alts[0]            # the one log-sum-exp these values imply
        lo, hi = bounds(tl)
        ok = ok and lo - TOL <= L <= hi + TOL
        chosen = dict(tl)[st["id"]]
        worst = max(worst, abs(chosen - L - lp))
        for k, a in enumerate(alts):
            worst = max(worst, abs(tl[k][1] - L - a))
    check(f"{name}: {N} tokens, logprobs = run's logits - log-sum-exp (max error {worst:.2e})",
          ok and worst <= TOL)
c = json.load(open(f"{T}/lp.json"))["choices"][0]["logprobs"]
toks = [(lp, list(alts.values())) for lp, alts in zip(c["token_logprobs"], c["top_logprobs"])]
run = run_steps(f"{T}/run.jsonl")
check_steps("completions", run, toks)
check("completions: 5 alternatives each, sorted, tokens joined are the text",
      all(len(a) == 5 and a == sorted(a, reverse=True) for _, a in toks) and
      "".join(c["tokens"]) == json.load(open(f"{T}/lp.json"))["choices"][0]["text"] and
      c["text_offset"][0] == 0 and c["text_offset"] == sorted(c["text_offset"]))
st = {"tokens": [], "token_logprobs": [], "top_logprobs": [], "text_offset": []}
for e in sse(f"{T}/lp.sse"):
    for ch in e["choices"]:
        for k in st:
            st[k] += (ch["logprobs"] or {}).get(k, [])
check("streamed completions: the same logprobs", st == c)
m = json.load(open(f"{T}/lpc.json"))["choices"][0]["logprobs"]["content"]
toks = [(e["logprob"], [a["logprob"] for a in e["top_logprobs"]]) for e in m]
check_steps("chat", run_steps(f"{T}/run_chat.jsonl"), toks)
check("chat: 20 alternatives each, sorted, the first is the chosen (greedy)",
      all(len(e["top_logprobs"]) == 20 and
          [a["logprob"] for a in e["top_logprobs"]] == sorted((a["logprob"] for a in e["top_logprobs"]), reverse=True) and
          e["top_logprobs"][0]["token"] == e["token"] and bytes(e["bytes"]).decode() == e["token"]
          for e in m))
sc = [x for e in sse(f"{T}/lpc.sse") for ch in e["choices"] if ch["logprobs"] for x in ch["logprobs"]["content"]]
check("streamed chat: the same logprobs", sc == m)
z = json.load(open(f"{T}/lp0.json"))["choices"][0]["logprobs"]["content"]
check("chat without top_logprobs: 3 tokens, no alternatives",
      len(z) == 3 and all(e["top_logprobs"] == [] and e["logprob"] < 0 for e in z))
sys.exit(1 if fails else 0)
PY
check "logprobs checks" $?
exit $fail
