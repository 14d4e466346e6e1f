#!/usr/bin/env bash
# test_http_moe.sh - the HTTP front (up --http --chat-template chatml) on the shared MoE model:
# a greedy completion and a chat completion, whole and streamed, equal `nanoflowctl gen` for the
# same (rendered) prompt, as on stories260K (test_http_api.sh).
set -u
. "$(dirname "$0")/lib.sh"
. "$(dirname "$0")/http_lib.sh"
: "${NF_BIN:?NF_BIN must point to nanoflowctl}"
: "${NF_SHARED_DIR:?NF_SHARED_DIR must point to the shared directory}"
need_daemons
need_gateway
M="$NF_SHARED_DIR/models/moe-Q4_K_M.gguf"
if [ ! -f "$M" ]; then
    echo "skip: $M is missing"
    exit 77
fi
http_tmp
http_up -m "$M" --ram 256M -t 1 --chat-template chatml

printf 'The quick brown fox' >"$T/prompt.txt"
printf '<|im_start|>user\nHello there<|im_end|>\n<|im_start|>assistant\n' >"$T/chat_prompt.txt"
"$NF_BIN" gen --run-dir "$R" -n 16 --temp 0 -f "$T/prompt.txt" >"$T/gen.txt" 2>/dev/null
"$NF_BIN" gen --run-dir "$R" -n 16 --temp 0 -f "$T/chat_prompt.txt" >"$T/gen_chat.txt" 2>/dev/null
[ -s "$T/gen.txt" ] && [ -s "$T/gen_chat.txt" ]
check "gen answers on the MoE stack" $?
# The random weights emit bytes that are not UTF-8: JSON carries them as U+FFFD, one per maximal
# invalid subpart (as Python decodes them, and browsers). gen prints the text and a newline.
for f in gen gen_chat; do
    python3 -c "import sys; sys.stdout.write(open(sys.argv[1],'rb').read().decode('utf-8','replace')[:-1])" \
        "$T/$f.txt" >"$T/$f.u8"
done

body='{"prompt":"The quick brown fox","max_tokens":16,"temperature":0}'
curl -s "$U/v1/completions" -d "$body" >"$T/c.json"
[ "$(jget "$T/c.json" 'd["choices"][0]["text"]')" = "$(cat "$T/gen.u8")" ]
check "MoE completion equals gen" $?
curl -sN "$U/v1/completions" -d "${body%\}},\"stream\":true}" >"$T/cs.sse"
sse_text "$T/cs.sse" >"$T/cs.txt"
[ "$(head -n -1 "$T/cs.txt")" = "$(cat "$T/gen.u8")" ]
check "MoE streamed completion equals gen" $?
msgs='"messages":[{"role":"user","content":"Hello there"}],"max_tokens":16,"temperature":0'
curl -s "$U/v1/chat/completions" -d "{$msgs}" >"$T/ch.json"
[ "$(jget "$T/ch.json" 'd["choices"][0]["message"]["content"]')" = "$(cat "$T/gen_chat.u8")" ]
check "MoE chat completion equals gen on the chatml rendering" $?
curl -sN "$U/v1/chat/completions" -d "{$msgs,\"stream\":true}" >"$T/chs.sse"
sse_text "$T/chs.sse" >"$T/chs.txt"
[ "$(head -n -1 "$T/chs.txt")" = "$(cat "$T/gen_chat.u8")" ]
check "MoE streamed chat completion equals gen" $?
exit $fail
