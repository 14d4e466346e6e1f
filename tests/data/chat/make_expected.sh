#!/bin/bash
# make_expected.sh - ORACLE-ONLY: regenerates expected/ and cases.tsv with llama.cpp's
# llama_chat_apply_template (tests/golden/tools/chat_render.cpp built as README.md says).
# No test or build step runs this script. Usage: make_expected.sh /tmp/chat_render
set -euo pipefail
R=${1:?usage: make_expected.sh PATH_TO_chat_render}
cd "$(dirname "$0")"
rm -rf expected && mkdir expected
NAMES="chatml llama2 llama2-sys llama2-sys-bos llama2-sys-strip mistral-v1 mistral-v3
mistral-v3-tekken mistral-v7 mistral-v7-tekken phi3 phi4 gemma llama3 deepseek deepseek2
deepseek3 gpt-oss zephyr falcon3 chatglm3 chatglm4 glmedge monarch orion openchat vicuna
vicuna-orca command-r minicpm exaone3 megrez llama4 smolvlm"
# all_renderings TEMPLATE: its renderings of every conversation, with and without add_ass.
all_renderings() {
    for c in conversations/*.txt; do for a in 0 1; do "$R" "$1" "$c" $a; echo; done; done
}
# family TEMPLATE: the built-in name whose renderings of every conversation equal the template's
# (the first in NAMES order), i.e. the family llama.cpp detected; "-" when none does.
CACHE=$(mktemp -d)
trap 'rm -rf "$CACHE"' EXIT
for n in $NAMES; do all_renderings "name:$n" >"$CACHE/$n"; done
family() {
    all_renderings "$1" >"$CACHE/want"
    for n in $NAMES; do
        if cmp -s "$CACHE/$n" "$CACHE/want"; then echo "$n"; return; fi
    done
    echo -
}
{
    printf '# template\tconversation\tadd_assistant\tfamily\texpected (made by make_expected.sh)\n'
    for t in templates/*.jinja $(for n in $NAMES; do echo "name:$n"; done); do
        if [[ $t == name:* ]]; then tn=${t#name:}; fam=$tn; tn=name-$tn; else tn=$(basename "$t" .jinja); fi
        if ! "$R" "$t" conversations/single-user.txt 1 > /dev/null 2>&1; then
            printf '%s\t-\t-\trefused\t-\n' "$t"
            continue
        fi
        [[ $t == name:* ]] || fam=$(family "$t")
        for c in conversations/*.txt; do
            cn=$(basename "$c" .txt)
            for a in 0 1; do
                "$R" "$t" "$c" $a > "expected/$tn.$cn.$a.txt"
                printf '%s\t%s\t%s\t%s\t%s\n' "$t" "$c" $a "$fam" "expected/$tn.$cn.$a.txt"
            done
        done
    done
} > cases.tsv
