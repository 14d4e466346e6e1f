#!/usr/bin/env bash
# test_cli_chat.sh - `nanoflowctl chat` driven through a pipe against a stack on stories260K:
# each greedy reply equals `gen` on the same rendered prompt (the second turn's prompt written
# here by hand in ChatML, with the first reply in it), /reset forgets, /exit ends, Ctrl-C stops
# a reply and not the session; `gen --chat` equals `run --chat`; bad flags and a missing stack
# are refused with one line.
set -u
. "$(dirname "$0")/lib.sh"
: "${NF_BIN:?NF_BIN must point to nanoflowctl}"
: "${NF_SHARED_DIR:?NF_SHARED_DIR must point to the shared directory}"
need_stories
need_daemons
T=$(mktemp -d)
R="$T/run"
cleanup() {
    [ -n "${CP:-}" ] && kill "$CP" 2>/dev/null
    "$NF_BIN" down --run-dir "$R" >/dev/null 2>&1
    rm -rf "$T"
}
trap cleanup EXIT
export XDG_CACHE_HOME="$T/cache"
cp "$M0" "$T/m.gguf"
# A trained context of 2048 instead of 128 (see lib.sh): room for a conversation and for a reply
# long enough to be interrupted.
patch_ctx "$T/m.gguf" 2048 || exit 1

expect "chat without a stack is refused" 1 "stack.conf" "$NF_BIN" chat --run-dir "$T/none"
expect "chat --chat-template foo is refused" 2 "unknown chat template 'foo'" \
    "$NF_BIN" chat --run-dir "$R" --chat-template foo
expect "chat with an argument is refused" 2 "messages are read from stdin" \
    "$NF_BIN" chat --run-dir "$R" hello

"$NF_BIN" up -m "$T/m.gguf" --ram 256M -t 1 --ctx 2048 --run-dir "$R" >"$T/up.out" 2>"$T/up.err"
rc=$?
check "up exits 0" $rc
if [ $rc -ne 0 ]; then
    cat "$T/up.err"
    exit 1
fi

SYS="You tell short stories."
G=(--run-dir "$R" --temp 0 -n 12 --chat-template chatml)
# 1. Two turns, /reset, a third turn. Expected: gen on the same prompts.
printf 'Once upon a time\nWhat did she see?\n/reset\nTell me about a cat.\n' |
    "$NF_BIN" chat "${G[@]}" --system "$SYS" >"$T/chat.out" 2>"$T/chat.err"
check "chat over a pipe exits 0 at end of input" $?
"$NF_BIN" gen "${G[@]}" --chat --system "$SYS" "Once upon a time" >"$T/g1.out" 2>/dev/null &&
    "$NF_BIN" gen "${G[@]}" --chat --system "$SYS" "Once upon a time" --json >"$T/g1.jsonl" \
        2>/dev/null
check "gen --chat turn 1 exits 0" $?
# Turn 2's prompt, rendered here: ChatML with the first reply's exact bytes.
python3 - "$T/g1.jsonl" "$SYS" >"$T/p2.txt" <<'PY'
import json, sys
reply = [json.loads(l) for l in open(sys.argv[1], encoding="utf-8")][-1]["text"]
turns = [("system", sys.argv[2]), ("user", "Once upon a time"), ("assistant", reply),
         ("user", "What did she see?")]
out = "".join("<|im_start|>%s\n%s<|im_end|>\n" % t for t in turns) + "<|im_start|>assistant\n"
sys.stdout.buffer.write(out.encode("utf-8"))
PY
"$NF_BIN" gen --run-dir "$R" --temp 0 -n 12 -f "$T/p2.txt" >"$T/g2.out" 2>/dev/null
check "gen turn 2 exits 0" $?
"$NF_BIN" gen "${G[@]}" --chat --system "$SYS" "Tell me about a cat." >"$T/g3.out" 2>/dev/null
check "gen --chat turn 3 exits 0" $?
cat "$T/g1.out" "$T/g2.out" "$T/g3.out" >"$T/want.out"
cmp -s "$T/chat.out" "$T/want.out"
check "chat's replies equal gen's on the same prompts (history kept, /reset forgets)" $?
[ "$(wc -c <"$T/g1.out")" -gt 1 ] && ! cmp -s "$T/g1.out" "$T/g2.out"
check "the replies are not empty and the second differs from the first" $?

# 2. /exit ends the session: the line after it is not answered.
printf 'Once upon a time\n/exit\nWhat did she see?\n' |
    "$NF_BIN" chat "${G[@]}" --system "$SYS" >"$T/exit.out" 2>/dev/null
rc=$?
[ $rc -eq 0 ] && cmp -s "$T/exit.out" "$T/g1.out"
check "/exit ends the session (rc $rc)" $?

# 3. Another template: Llama 3's format, one turn, equal to gen --chat with it.
printf 'Once upon a time\n' | "$NF_BIN" chat --run-dir "$R" --temp 0 -n 12 \
    --chat-template llama3 >"$T/l3.out" 2>/dev/null
"$NF_BIN" gen --run-dir "$R" --temp 0 -n 12 --chat --chat-template llama3 "Once upon a time" \
    >"$T/gl3.out" 2>/dev/null
cmp -s "$T/l3.out" "$T/gl3.out" && ! cmp -s "$T/l3.out" "$T/g1.out"
check "chat --chat-template llama3 equals gen --chat --chat-template llama3" $?

# 4. gen --chat (template rendered from the stack's .nft) equals run --chat (from the GGUF).
A=(--temp 0 -n 12 --chat --system "$SYS" --json "Once upon a time")
"$NF_BIN" run -m "$T/m.gguf" -t 1 "${A[@]}" >"$T/run.jsonl" 2>/dev/null
python3 - "$T/g1.jsonl" "$T/run.jsonl" <<'PY'
import json, sys
g = [json.loads(l) for l in open(sys.argv[1], encoding="utf-8")][-1]
r = [json.loads(l) for l in open(sys.argv[2], encoding="utf-8")][-1]
assert g["prompt_ids"] == r["prompt_ids"] and g["gen_ids"] == r["gen_ids"], (g, r)
PY
check "gen --chat equals run --chat (prompt_ids and gen_ids)" $?

# 5. Ctrl-C during a reply stops it (Cancel) and the session goes on: the next line is answered.
mkfifo "$T/in"
"$NF_BIN" chat --run-dir "$R" --temp 0 -n 1000000 --chat-template chatml <"$T/in" \
    >"$T/int.out" 2>"$T/int.err" &
CP=$!
exec 3>"$T/in"
echo "Once" >&3
for _ in $(seq 400); do
    [ -s "$T/int.out" ] && break
    sleep 0.05
done
kill -INT "$CP"
sleep 0.5
kill -0 "$CP" 2>/dev/null
check "chat is still running after Ctrl-C" $?
n1=$(wc -c <"$T/int.out")
echo "/reset" >&3
echo "Once upon a time" >&3
for _ in $(seq 400); do
    [ "$(wc -c <"$T/int.out")" -gt "$n1" ] && break
    sleep 0.05
done
sleep 0.3
kill -INT "$CP" # the second reply is long too: stop it as well
sleep 0.3
exec 3>&-
wait "$CP"
rc=$?
CP=
[ $rc -eq 0 ] && [ "$(wc -c <"$T/int.out")" -gt "$n1" ] && ! grep -q "context full" "$T/int.err"
check "after Ctrl-C the next line is answered and end of input exits 0 (rc $rc)" $?
# The first reply was cut short: a strict prefix of the whole greedy reply (512 tokens, the
# stack's per-request limit; computed in this process by run, which is much faster).
"$NF_BIN" run -m "$T/m.gguf" -t 1 --temp 0 -n 512 --chat --chat-template chatml "Once" \
    >"$T/full.out" 2>/dev/null
python3 - "$T/int.out" "$T/full.out" "$n1" <<'PY'
import sys
part = open(sys.argv[1], "rb").read()[: int(sys.argv[3])]
full = open(sys.argv[2], "rb").read()
assert part.endswith(b"\n") and len(part) > 1, part
part = part[:-1]
assert full.startswith(part) and len(part) < len(full) - 1, (len(part), len(full))
PY
check "Ctrl-C cut the reply short (a strict prefix of the whole reply)" $?

"$NF_BIN" down --run-dir "$R" >/dev/null 2>&1
check "down exits 0" $?
exit $fail
