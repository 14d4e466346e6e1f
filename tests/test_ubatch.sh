#!/bin/bash
# test_ubatch.sh - prompts evaluated in one ubatch (the default), in several (-ub 7) and token by
# token (-ub 1) give llama.cpp's greedy output on the longest prompts of every shared golden model
# (shared/golden/README.md: stories260K exactly; the random-weight models up to the first step
# whose golden top-2 gap is below 0.02), and one ubatch the same tokens as token by token.
# Also: a bad -ub is refused with one line.
. "$(dirname "$0")/lib.sh"
need_stories
T=$(mktemp -d)
trap 'rm -rf "$T"' EXIT

expect "-ub 0 refused" 2 "expects an integer in \[1, 4096\]" "$NF_BIN" run -m "$M0" -ub 0 hi
expect "--ubatch-size 4097 refused" 2 "expects an integer" "$NF_BIN" run -m "$M0" \
    --ubatch-size 4097 hi
expect "-ub without a value refused" 2 "" "$NF_BIN" run -m "$M0" -ub

python3 - "$NF_BIN" "$NF_SHARED_DIR" <<'PY'
import glob, json, os, subprocess, sys
nf, shared = sys.argv[1], sys.argv[2]
bad = 0
checked = 0
for gpath in sorted(glob.glob(os.path.join(shared, "golden", "*.jsonl"))):
    name = os.path.basename(gpath)[:-6]
    model = os.path.join(shared, "models", name + ".gguf")
    if not os.path.exists(model):
        continue
    exact = name.startswith("stories")
    # The longest prompts (14-16 tokens: three chunks at -ub 7): 3 for stories260K, 2 else.
    lines = open(gpath, encoding="utf-8").read().splitlines()
    for line in [lines[i] for i in ((1, 5, 6) if exact else (1, 5)) if i < len(lines)]:
        g = json.loads(line)
        want = g["gen_ids"]
        if not exact:
            for s, top in enumerate(g["top_logits"]):
                if top[0][1] - top[1][1] < 0.02:
                    want = want[:s]
                    break
        got = {}
        for ub in ("512", "32", "7", "1"):
            r = subprocess.run([nf, "run", "-m", model, "-p", g["prompt"].replace("\\n", "\n"),
                                "-n", str(len(g["gen_ids"])), "--temp", "0", "--json",
                                "-t", "2", "-ub", ub], capture_output=True, text=True)
            if r.returncode != 0:
                print(f"FAIL: {name} -ub {ub}: rc {r.returncode}: {r.stderr[:300]}")
                bad = 1
                continue
            summ = json.loads(r.stdout.strip().splitlines()[-1])
            got[ub] = summ["gen_ids"]
            if summ["prompt_ids"] != g["prompt_ids"]:
                print(f"FAIL: {name} -ub {ub}: prompt_ids {summ['prompt_ids']}")
                bad = 1
            if summ["gen_ids"][:len(want)] != want:
                print(f"FAIL: {name} -ub {ub} '{g['prompt']}': {summ['gen_ids']} vs golden {want}")
                bad = 1
            checked += 1
        if exact and len(got) == 4 and len({tuple(v) for v in got.values()}) != 1:
            print(f"FAIL: {name} '{g['prompt']}': ubatch sizes disagree: {got}")
            bad = 1
    print(f"{'ok' if not bad else 'FAIL'}: {name} -ub 512/32/7/1 against the golden")
if checked == 0:
    print("FAIL: no golden model found")
    bad = 1
sys.exit(bad)
PY
check "every ubatch size gives the goldens' greedy output" $?
exit $fail
