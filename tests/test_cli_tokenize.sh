# test_cli_tokenize.sh - nanoflowctl tokenize end to end: ids, --no-bos, --parse-special, --json, errors and exit codes.
set -u

if [ -z "${NF_BIN:-}" ] || [ ! -x "$NF_BIN" ]; then
    echo "SKIP: NF_BIN (path to nanoflowctl) is not set or not executable"
    exit 77
fi
SHARED="${NF_SHARED_DIR:-}"
STORIES="$SHARED/models/stories260K.gguf"
LLAMA3="$SHARED/golden/vocab/ggml-vocab-llama-bpe.gguf"
if [ ! -f "$STORIES" ] || [ ! -f "$LLAMA3" ]; then
    echo "SKIP: shared models not found under NF_SHARED_DIR='$SHARED'"
    exit 77
fi

T=$(mktemp -d /tmp/nf_test_cli_tokenize.XXXXXX)
trap 'rm -rf "$T"' EXIT
pass=0
failed=0
ok() { pass=$((pass + 1)); }
bad() {
    echo "FAIL: $*"
    failed=$((failed + 1))
}

# tok ARGS...: runs tokenize; stdout in $T/out, stderr in $T/err, exit code in $rc.
tok() {
    "$NF_BIN" tokenize "$@" >"$T/out" 2>"$T/err"
    rc=$?
}

# expect_out DESCRIPTION EXPECTED: exit 0, empty stderr and exactly EXPECTED on stdout.
expect_out() {
    local want=$2 got
    got=$(cat "$T/out")
    if [ "$rc" -ne 0 ] || [ -s "$T/err" ] || [ "$got" != "$want" ]; then
        bad "$1: exit $rc, stdout '$got' (want '$want'), stderr '$(cat "$T/err")'"
    else
        ok
    fi
}

# expect_err DESCRIPTION CODE PATTERN: exit CODE, nothing on stdout, one stderr line matching PATTERN.
expect_err() {
    local lines
    lines=$(wc -l <"$T/err")
    if [ "$rc" -ne "$2" ] || [ -s "$T/out" ] || [ "$lines" -ne 1 ] || ! grep -q -- "$3" "$T/err"; then
        bad "$1: exit $rc (want $2), $lines stderr lines: '$(cat "$T/err")' (want /$3/)"
    else
        ok
    fi
}

# SentencePiece (stories260K): BOS by default, as in the golden prompt_ids.
tok --model "$STORIES" "Once upon a time"
expect_out "spm default" "1 403 407 261 378"
tok --model "$STORIES" --no-bos "Once upon a time"
expect_out "spm --no-bos" "403 407 261 378"
tok --model="$STORIES" "Sam had a red ball.
He"
expect_out "spm newline, --model=FILE" "1 301 314 381 261 352 266 268 388 426 13 440 411"

# Control tokens are text unless --parse-special.
tok --model "$STORIES" --no-bos --parse-special "<s>hi</s>"
expect_out "--parse-special" "1 270 417 2"
tok --model "$STORIES" --no-bos "<s>hi</s>"
if [ "$rc" -eq 0 ] && ! grep -qw -e 1 -e 2 "$T/out" && [ "$(wc -w <"$T/out")" -gt 4 ]; then
    ok
else
    bad "without --parse-special '<s>' and '</s>' must be plain text: '$(cat "$T/out")'"
fi

# --json: ids and pieces; quotes escaped, control tokens have an empty piece, stray bytes \u00XX.
tok --model "$STORIES" --no-bos --json 'Once upon a "time"'
expect_out "--json" '{"ids":[403,407,261,313,413,369,436],"pieces":[" Once"," upon"," a"," \"","t","ime","\""]}'
tok --model "$STORIES" --json "$(printf 'x\360\235\204\236')"
# U+1D11E has no token in this vocabulary: byte fallback <0xF0><0x9D><0x84><0x9E> (id = 3 + byte).
expect_out "--json byte tokens" '{"ids":[1,410,444,243,160,135,161],"pieces":[""," ","x","\u00f0","\u009d","\u0084","\u009e"]}'

# Byte-level BPE (Llama 3 vocabulary): BOS by default, llama.cpp's ids for "Hello world".
tok --model "$LLAMA3" "Hello world"
expect_out "bpe" "128000 9906 1917"
tok --model "$LLAMA3" --no-bos --parse-special "<|begin_of_text|>Hello"
expect_out "bpe --parse-special" "128000 9906"
# TEXT may start with a dash after --.
tok --model "$LLAMA3" --no-bos --json -- "-x"
expect_out "-- TEXT" '{"ids":[6695],"pieces":["-x"]}'

# --help lists every flag with its default.
tok --help
if [ "$rc" -eq 0 ] && [ ! -s "$T/err" ]; then ok; else bad "--help: exit $rc"; fi
for f in --model --no-bos --parse-special --json; do
    grep -q -- "$f" "$T/out" || bad "--help does not list $f"
done
grep -c "default" "$T/out" | grep -q '^[3-9]' || bad "--help does not give the defaults"
for p in llama-bpe qwen2 deepseek-coder deepseek-v3 smollm olmo gpt-4o tekken glm4 kimi-k2; do
    grep -q -- "$p" "$T/out" || bad "--help does not list the pre-tokenizer $p"
done

# Usage errors: exit 2, one line on stderr.
tok --model "$STORIES" --bogus "x"
expect_err "unknown flag" 2 "unknown flag '--bogus'"
tok --model "$STORIES"
expect_err "missing TEXT" 2 "missing TEXT"
tok "x"
expect_err "missing --model" 2 "model"
tok --model
expect_err "--model without value" 2 "needs a value"
tok --model "$STORIES" a b
expect_err "two texts" 2 "one TEXT"

# Runtime errors: exit 1, one line naming the file.
tok --model "$T/nope.gguf" "x"
expect_err "missing file" 1 "nope.gguf"
printf 'this is not a gguf file, just some text\n' >"$T/text.gguf"
tok --model "$T/text.gguf" "x"
expect_err "not a GGUF" 1 "text.gguf"

# Every pre-tokenizer without a shared vocabulary, on the vocabularies test_tokenizer derives
# from the shared ones (tests/data/vocab/README.md): case 65 of tests/data/vocab (case runs,
# contractions, accents) as llama.cpp tokenizes it (line 65 of NAME.out). test_tokenizer checks
# all cases; this checks the command on each vocabulary.
DATA="$(dirname "$0")/data/vocab"
TT="${NF_BUILD_DIR:-}/tests/test_tokenizer"
case_text() {
    cat "$SHARED/golden/vocab/ggml-vocab-gpt-2.gguf.inp" "$DATA/extra.inp" |
        awk -v k="$1" 'BEGIN { RS = "\n__ggml_vocab_test__\n" } NR == k { printf "%s", $0 }'
}
if [ -x "$TT" ] && "$TT" --write-vocabs "$T" >"$T/err" 2>&1; then
    for v in deepseek-coder deepseek-v3 gpt-4o kimi-k2 tekken chatglm-bpe dbrx qwen35 smollm olmo \
        default gemma-spm; do
        for k in 65; do
            tok --model "$T/$v.gguf" --no-bos -- "$(case_text $k)"
            expect_out "$v case $k" "$(sed -n "${k}p" "$DATA/$v.out" | sed 's/^ //')"
        done
    done
else
    bad "$TT --write-vocabs: $(cat "$T/err")"
fi

# An unknown pre-tokenizer is refused with one line naming it.
if [ -f "$T/olmo.gguf" ]; then
    sed 's/olmo/olmx/' "$T/olmo.gguf" >"$T/olmx.gguf"
    tok --model "$T/olmx.gguf" "x"
    expect_err "unknown pre-tokenizer" 1 "unsupported pre-tokenizer 'olmx'"
fi

echo "test_cli_tokenize: $pass passed, $failed failed"
[ "$failed" -eq 0 ]
