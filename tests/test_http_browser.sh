#!/usr/bin/env bash
# test_http_browser.sh - the chat page at / in a real browser: headless Chromium from Debian
# (/usr/bin/chromium) driven by playwright-core from npm, against the HTTP front on
# llama-2-tiny-random (its gibberish never ends early, so a 1500-token reply is still running
# when Stop is pressed). It types a message, sees the streamed reply grow (greedy: the start of
# `nanoflowctl gen`'s text for the chatml-rendered message), presses Stop, and checks the reply ends "[stopped]", the buttons
# are back and the stack cancelled the generation; the stats panel shows /metrics figures. A
# screenshot is kept as a test artefact under the build directory (its path is printed).
#
# Skips (exit 77) saying why without Chromium (`apt-get install chromium`, or
# NF_WITH_BROWSER=1 deploy/install-deps.sh), Node/npm, or the npm registry. playwright-core is
# installed at test time into the test's temporary directory, then kept in the build tree
# (tests-npm-browser/) so that later runs skip npm (~20 s here).
set -u
. "$(dirname "$0")/lib.sh"
. "$(dirname "$0")/http_lib.sh"
: "${NF_BIN:?NF_BIN must point to nanoflowctl}"
: "${NF_SHARED_DIR:?NF_SHARED_DIR must point to the shared directory}"
need_daemons
M1="$NF_SHARED_DIR/models/llama-2-tiny-random.gguf"
if [ ! -f "$M1" ]; then
    echo "skip: $M1 is missing"
    exit 77
fi
need_gateway
CHROMIUM=${NF_CHROMIUM:-/usr/bin/chromium}
if [ ! -x "$CHROMIUM" ]; then
    echo "skip: $CHROMIUM is not installed (apt-get install chromium, or NF_WITH_BROWSER=1 deploy/install-deps.sh)"
    exit 77
fi
if ! command -v node >/dev/null || ! command -v npm >/dev/null; then
    echo "skip: node and npm are needed for playwright-core"
    exit 77
fi
http_tmp
NPM_DIR="${NF_BUILD_DIR:-$T}/tests-npm-browser"
if [ ! -f "$NPM_DIR/node_modules/playwright-core/package.json" ]; then
    mkdir -p "$T/npm"
    if ! PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1 timeout 120 npm install --no-audit --no-fund \
        --loglevel=error --prefix "$T/npm" playwright-core@1 >"$T/npm.log" 2>&1; then
        echo "skip: npm install playwright-core failed (registry unreachable?): $(tail -n 2 "$T/npm.log")"
        exit 77
    fi
    rm -rf "$NPM_DIR.tmp.$$"
    mv "$T/npm" "$NPM_DIR.tmp.$$" && { mv -T "$NPM_DIR.tmp.$$" "$NPM_DIR" 2>/dev/null ||
        rm -rf "$NPM_DIR.tmp.$$"; }
    [ -f "$NPM_DIR/node_modules/playwright-core/package.json" ] || NPM_DIR="$T/npm"
fi
echo "playwright-core $(python3 -c "import json,sys; print(json.load(open(sys.argv[1]))['version'])" "$NPM_DIR/node_modules/playwright-core/package.json"), $("$CHROMIUM" --version 2>/dev/null)"

http_up -m "$M1" --ram 256M -t 1 --ctx 2048
MSG="Tell me a story."
printf '<|im_start|>user\n%s<|im_end|>\n<|im_start|>assistant\n' "$MSG" >"$T/chat_prompt.txt"
"$NF_BIN" gen --run-dir "$R" -n 100 --temp 0 -f "$T/chat_prompt.txt" >"$T/gen.txt" 2>/dev/null
ART="${NF_BUILD_DIR:-$T}/test-artifacts"
mkdir -p "$ART"
SHOT="$ART/chat_page.png"
rm -f "$SHOT"

cat >"$T/drive.js" <<'JS'
const { chromium } = require("playwright-core");
const fs = require("fs");
const [url, exe, msg, genFile, shot] = process.argv.slice(2);
// gen's first 100 tokens: the page's text and it must agree as far as both go.
const want = fs.readFileSync(genFile, "utf8").replace(/\n$/, "");
const agree = (t) => want.startsWith(t) || t.startsWith(want);
let fails = 0;
const check = (name, ok) => { console.log((ok ? "ok: " : "FAIL: ") + name); if (!ok) fails++; };
(async () => {
  const browser = await chromium.launch({ executablePath: exe, headless: true,
                                          args: ["--no-sandbox", "--disable-gpu"] });
  try {
    const page = await browser.newPage({ viewport: { width: 1100, height: 700 } });
    const errors = [];
    page.on("pageerror", (e) => errors.push(String(e)));
    await page.goto(url, { waitUntil: "load" });
    await page.fill("#max", "1500");
    await page.fill("#temp", "0");
    await page.fill("#input", msg);
    await page.press("#input", "Enter");
    const reply = page.locator(".msg.assistant span").last();
    // The streamed reply appears and grows while Stop is enabled; Stop is pressed in the page
    // the moment 40 characters are there (a round trip from here can take seconds on a loaded
    // machine, and Playwright's click waits for animation frames).
    const seen = await page.waitForFunction(() => {
      const s = [...document.querySelectorAll(".msg.assistant span")].pop();
      if (!s || s.textContent.length < 40) return false;
      const st = { text: s.textContent, stop: !document.getElementById("stop").disabled,
                   send: document.getElementById("send").disabled };
      document.getElementById("stop").click();
      return st;
    }, null, { timeout: 60000, polling: 10 });
    const { text: partial, stop, send } = await seen.jsonValue();
    check(`the reply streams in (${partial.length} characters when Stop was pressed) while Stop is enabled`,
          stop && send);
    check("what streamed so far is the start of gen's greedy text", agree(partial));
    await page.waitForFunction(() => !document.getElementById("send").disabled, null,
                               { timeout: 60000 });
    const final = await reply.textContent();
    const text = final.replace(/ \[stopped\]$/, "");
    check(`Stop ends the reply with [stopped] after ${text.length} characters`,
          final.endsWith(" [stopped]") && agree(text) && text.length >= partial.length);
    check("Send is back, Stop disabled", await page.isDisabled("#stop"));
    // The stats panel (polled every 2 s from /metrics) shows the stack's figures.
    await page.waitForFunction(() => /tok\/s|MB|%/.test(document.getElementById("stats").textContent),
                               null, { timeout: 60000 });
    check("the stats panel shows the stack's figures", true);
    check("no script error on the page", errors.length === 0);
    await page.screenshot({ path: shot, fullPage: true });
  } finally {
    await browser.close();
  }
  process.exit(fails ? 1 : 0);
})().catch((e) => { console.log("FAIL: " + e.message); process.exit(1); });
JS
t0=$(date +%s.%N)
# The timeouts guard against a hang only: on a loaded machine Chromium alone can take a minute.
NODE_PATH="$NPM_DIR/node_modules" timeout 240 node "$T/drive.js" "$U/" "$CHROMIUM" "$MSG" "$T/gen.txt" "$SHOT"
check "the chat page in headless Chromium: type, stream, stop" $?
echo "  browser part took $(python3 -c "import sys,time; print(f'{time.time() - float(sys.argv[1]):.1f}')" "$t0") s"
[ -s "$SHOT" ] && echo "  screenshot: $SHOT"
[ -s "$SHOT" ]
check "a screenshot is kept" $?
metric() { curl -s "$U/metrics" | awk -v n="$1" '$1 == n {print $2}'; }
for _ in $(seq 20); do
    [ "$(metric nanoflow_gateway_generations)" = 0 ] && break
    sleep 0.1
done
[ "$(metric nanoflow_gateway_generations)" = 0 ]
check "the stopped generation was cancelled (none left in the gateway)" $?
exit $fail
