#!/usr/bin/env bash
# test_http_openai.sh - the official `openai` npm client against the HTTP front (up --http) on
# stories260K: a non-streamed and a streamed chat completion and a completion, greedy, whose
# text equals `nanoflowctl gen` for the same (chatml-rendered) prompt; usage and finish_reason
# as the client parses them. The package is installed at test time from the npm registry into
# the build tree (tests-npm/, reused by later runs: npm itself takes ~20 s here); without Node,
# npm or the registry the test is skipped (exit 77) saying why.
set -u
. "$(dirname "$0")/lib.sh"
. "$(dirname "$0")/http_lib.sh"
: "${NF_BIN:?NF_BIN must point to nanoflowctl}"
: "${NF_SHARED_DIR:?NF_SHARED_DIR must point to the shared directory}"
need_stories
need_daemons
need_gateway
if ! command -v node >/dev/null || ! command -v npm >/dev/null; then
    echo "skip: node and npm are needed for the openai client"
    exit 77
fi
http_tmp
NPM_DIR="${NF_BUILD_DIR:-$T}/tests-npm"
if [ ! -f "$NPM_DIR/node_modules/openai/package.json" ]; then
    mkdir -p "$T/npm"
    if ! timeout 120 npm install --no-audit --no-fund --loglevel=error --prefix "$T/npm" \
        openai@7 >"$T/npm.log" 2>&1; then
        echo "skip: npm install openai failed (registry unreachable?): $(tail -n 2 "$T/npm.log")"
        exit 77
    fi
    rm -rf "$NPM_DIR.tmp.$$"
    mv "$T/npm" "$NPM_DIR.tmp.$$" && { mv -T "$NPM_DIR.tmp.$$" "$NPM_DIR" 2>/dev/null ||
        rm -rf "$NPM_DIR.tmp.$$"; }
    [ -f "$NPM_DIR/node_modules/openai/package.json" ] || NPM_DIR="$T/npm"
fi
echo "openai $(python3 -c "import json,sys; print(json.load(open(sys.argv[1]))['version'])" "$NPM_DIR/node_modules/openai/package.json") from $NPM_DIR"

cp "$M0" "$T/m.gguf"
echo "k-$$" >"$T/key"
http_up -m "$T/m.gguf" --ram 256M -t 1 --api-key-file "$T/key"

printf '<|im_start|>system\nYou tell stories.<|im_end|>\n<|im_start|>user\nTell me one.<|im_end|>\n<|im_start|>assistant\n' >"$T/chat_prompt.txt"
printf 'Once upon a time' >"$T/prompt.txt"
"$NF_BIN" gen --run-dir "$R" -n 24 --temp 0 -f "$T/chat_prompt.txt" >"$T/gen_chat.txt" 2>/dev/null
"$NF_BIN" gen --run-dir "$R" -n 24 --temp 0 -f "$T/prompt.txt" >"$T/gen.txt" 2>/dev/null

cat >"$T/client.js" <<'JS'
const [dir, port, key, out] = process.argv.slice(2);
const { OpenAI } = require(dir + "/node_modules/openai");
const fs = require("fs");
const client = new OpenAI({ baseURL: `http://127.0.0.1:${port}/v1`, apiKey: key, maxRetries: 0 });
const messages = [
  { role: "system", content: "You tell stories." },
  { role: "user", content: "Tell me one." },
];
(async () => {
  const r = {};
  const models = await client.models.list();
  r.models = models.data.map((m) => m.id);
  const chat = await client.chat.completions.create({ model: r.models[0], messages, max_tokens: 24, temperature: 0 });
  r.chat = chat.choices[0].message.content;
  r.chat_finish = chat.choices[0].finish_reason;
  r.chat_usage = chat.usage.completion_tokens;
  const stream = await client.chat.completions.create({ model: r.models[0], messages, max_tokens: 24, temperature: 0, stream: true });
  r.chat_stream = "";
  for await (const chunk of stream) {
    const c = chunk.choices[0];
    if (c && c.delta && c.delta.content) r.chat_stream += c.delta.content;
    if (c && c.finish_reason) r.chat_stream_finish = c.finish_reason;
  }
  const comp = await client.completions.create({ model: r.models[0], prompt: "Once upon a time", max_tokens: 24, temperature: 0 });
  r.completion = comp.choices[0].text;
  r.completion_finish = comp.choices[0].finish_reason;
  try {
    await client.completions.create({ model: r.models[0], prompt: "x", n: 3 });
    r.bad = "accepted";
  } catch (e) {
    r.bad = `${e.status} ${e.param}`;
  }
  fs.writeFileSync(out, JSON.stringify(r));
})().catch((e) => {
  console.error("client error:", e);
  process.exit(1);
});
JS
timeout 60 node "$T/client.js" "$NPM_DIR" "$PORT" "k-$$" "$T/r.json"
check "the openai client runs its requests" $?
[ -s "$T/r.json" ] || exit 1
[ "$(jget "$T/r.json" 'd["chat"]')" = "$(cat "$T/gen_chat.txt")" ] &&
    [ "$(jget "$T/r.json" 'd["chat_finish"], d["chat_usage"]')" = "length 24" ]
check "openai chat.completions.create equals gen on the rendered prompt" $?
[ "$(jget "$T/r.json" 'd["chat_stream"]')" = "$(cat "$T/gen_chat.txt")" ] &&
    [ "$(jget "$T/r.json" 'd["chat_stream_finish"]')" = length ]
check "openai streamed chat completion equals gen" $?
[ "$(jget "$T/r.json" 'd["completion"]')" = "$(cat "$T/gen.txt")" ] &&
    [ "$(jget "$T/r.json" 'd["completion_finish"]')" = length ]
check "openai completions.create equals gen" $?
[ "$(jget "$T/r.json" 'd["bad"]')" = "400 n" ]
check "the client sees n=3 refused: 400 naming n" $?
exit $fail
