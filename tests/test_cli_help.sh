#!/usr/bin/env bash
# test_cli_help.sh - the command-line surface of nanoflowctl and the daemons: --help, every flag
# the help names is accepted, defaults are stated, unknown flags and bad values exit 2 in one line.
#
# For each command listed by 'nanoflowctl --help' and each daemon binary:
#   - --help exits 0 and prints a usage line;
#   - every flag named anywhere in the help is parsed: run with a plausible value and an
#     obviously missing model (or run directory) it fails later, with exit 1, never with 2;
#   - every value-taking option line of the help states a default (or says "required");
#   - an unknown flag, a flag without its value and bad values ("12abc", negatives, "12Q",
#     unknown names) exit 2 with exactly one stderr line that points to --help.
set -u
: "${NF_BIN:?NF_BIN must point to nanoflowctl}"
DAEMON_DIR="${NF_BUILD_DIR:-$(dirname "$(dirname "$NF_BIN")")}/daemons"
SHARED="${NF_SHARED_DIR:-}"

T=$(mktemp -d /tmp/nf_test_cli_help.XXXXXX)
trap 'rm -rf "$T"' EXIT
MISS="$T/missing"
R="$T/run"
printf 'Once upon a time\n' >"$T/prompt.txt"
printf '# mkmodel --tensor-types: a recipe that changes nothing\n' >"$T/recipe.types"
VOCAB="$SHARED/models/stories260K.gguf"
pass=0
failed=0
ok() { pass=$((pass + 1)); }
bad() {
    echo "FAIL: $*"
    failed=$((failed + 1))
}

# kind FLAG: sets K to how a flag's value is checked: int, float, sfloat (a float that may be
# negative), size, enum, str (any text), file (an existing file), opt (optional number), bool (no
# value), nice (an int in -20..19), or "" when the test does not know it.
# kind and good set a variable instead of printing: a $(...) forks, and this runs hundreds of times.
kind() {
    case "$1" in
    -n | --n-predict | -t | --threads | -c | --ctx-size | --ctx | --top-k | --top-logits | \
        -s | --seed | --rank | --dim | --layers | --layers-override | --ffn | --shared-ffn | \
        --heads | \
        --kv-heads | --head-dim | --experts | --experts-used | --vocab | --alignment | --qd | \
        --numa-node | --lookahead | --attach-timeout | --timeout | --max-tokens-per-request | \
        --window | --rope-dim | --longrope | --sliding-window | --max-conns | --max-queue | \
        --max-running | --parallel) K=int ;;
    --dense-layers | --dense-ffn | --nextn | --shared-experts | --expert-groups | \
        --groups-used) K=int ;;
    --expert-scale | --yarn | --yarn-mscale) K=float ;;
    --q-lora | --kv-lora | --v-head | --yarn-orig) K=int ;;
    --qk-norm) K=bool ;;
    --temp | --top-p | --min-p | --repeat-penalty | --sparsity | --margin | --rope-base | \
        --rms-eps | --rope-scale | --router-skew) K=float ;;
    --ram | --tile-size | --pred-mem | --max-body | --inflight) K=size ;;
    --log-level | --verify | --shape | --type | --arch | --chat-template | --expert-cache) K=enum ;;
    --prefix-cache | --kv-prefetch) K=enum ;;
    -m | --model | -p | --prompt | --run-dir | --name | --system | --http) K=str ;;
    -f | --file | --calibrate | --vocab-from | --api-key-file) K=file ;;
    --watch) K=opt ;;
    --presence-penalty | --frequency-penalty) K=sfloat ;;
    --force) K=bool ;;
    -h | --help | --json | --no-bos | --parse-special | --f32 | --zero | --zero-experts | \
        --foreground | \
        --no-uring | --mmap | --no-repack | --no-cgroup | --tied-output | --rope-freqs | --chat | --sigmoid) K=bool ;;
    --lookup | --no-lookup | --use-draft) K=bool ;;
    --draft) K=file ;;
    --tensor-types) K=file ;;
    --random-blocks) K=bool ;;
    --draft-max) K=int ;;
    -ub | --ubatch-size | --ubatch) K=int ;;
    --kv-block) K=int ;;
    --kv-offload | --llama-bench) K=enum ;;
    --kv-dir) K=str ;;
    -ctk | -ctv | --cache-type-k | --cache-type-v) K=enum ;;
    --n-prompt) K=int ;;
    -d | --n-depth) K=int ;;
    --kv-store) K=str ;;
    --kv-store-max) K=size ;;
    --nice) K=nice ;;
    *) K="" ;;
    esac
}

# good FLAG: sets G to a plausible value for a value-taking flag.
good() {
    case "$1" in
    -n | --n-predict) G=4 ;;
    -t | --threads) G=1 ;;
    -c | --ctx-size | --ctx) G=64 ;;
    --top-k | --rank | --qd | --lookahead | --max-tokens-per-request | --max-conns | \
        --max-queue | --max-running) G=8 ;;
    --max-body) G=1M ;;
    --http) G=127.0.0.1:1 ;;
    --chat-template) G=chatml ;;
    --top-logits | --experts-used | --kv-heads | --parallel) G=2 ;;
    -s | --seed) G=7 ;;
    --dim) G=64 ;;
    --layers | --layers-override) G=2 ;;
    --ffn | --shared-ffn) G=128 ;;
    --heads) G=4 ;;
    --head-dim | --rope-dim) G=16 ;;
    --longrope) G=64 ;;
    --q-lora | --v-head) G=16 ;;
    --kv-lora) G=32 ;;
    --yarn-orig) G=64 ;;
    --yarn) G=4 ;;
    --yarn-mscale) G=1 ;;
    --sliding-window) G=2047 ;;
    --dense-layers | --nextn | --shared-experts | --groups-used) G=1 ;;
    --dense-ffn) G=128 ;;
    --expert-groups) G=2 ;;
    --expert-scale) G=2.5 ;;
    --arch) G=llama ;;
    --experts) G=4 ;;
    --vocab) G=512 ;;
    -ub | --ubatch-size | --ubatch) G=8 ;;
    -ctk | -ctv | --cache-type-k | --cache-type-v) G=q8_0 ;;
    --n-prompt) G=8 ;;
    -d | --n-depth) G=8 ;;
    --kv-store) G="$T/kvs" ;;
    --kv-store-max | --inflight) G=1M ;;
    --draft-max) G=4 ;;
    --nice) G=-5 ;;
    --kv-block) G=4 ;;
    --kv-offload) G=auto ;;
    --llama-bench) G=off ;;
    --kv-dir) G="$T" ;;
    --alignment) G=64 ;;
    --numa-node) G=0 ;;
    --attach-timeout) G=1 ;;
    --timeout) G=5 ;;
    --temp) G=0.5 ;;
    --top-p) G=0.9 ;;
    --min-p | --margin) G=0.1 ;;
    --repeat-penalty) G=1.1 ;;
    --presence-penalty | --frequency-penalty) G=0.5 ;;
    --sparsity) G=0.5 ;;
    --rope-base) G=10000 ;;
    --window | --rope-scale) G=8 ;;
    --rms-eps) G=1e-6 ;;
    --ram) G=1G ;;
    --tile-size) G=512K ;;
    --pred-mem) G=1M ;;
    --log-level) G=warn ;;
    --verify) G=sample ;;
    --expert-cache) G=cyclic ;;
    --prefix-cache | --kv-prefetch) G=off ;;
    --router-skew) G=2 ;;
    --shape) G=tiny ;;
    --type) G=q8_0 ;;
    -m | --model) G="$MISS.nft" ;;
    -p | --prompt | --system) G=hello ;;
    --chat-template) G=chatml ;;
    --run-dir) G="$R" ;;
    --name) G=test-model ;;
    -f | --file | --calibrate | --api-key-file | --draft) G="$T/prompt.txt" ;;
    --vocab-from) G="$VOCAB" ;;
    --tensor-types) G="$T/recipe.types" ;;
    --watch) G=1 ;;
    *) G="" ;;
    esac
}

# flag_ctx FLAG: sets CTX to the arguments a flag needs beside the command's (mkmodel
# --shared-ffn is for --arch qwen2moe only, --window for gemma3, which is dense).
flag_ctx() {
    case "$1" in
    --shared-ffn) CTX=(--arch qwen2moe) ;;
    --window) CTX=(--arch gemma3 --experts 0) ;;
    --random-blocks) CTX=(--type q8_0) ;;
    --dense-layers | --dense-ffn | --nextn | --shared-experts | --expert-scale | --qk-norm)
        CTX=(--arch glm4moe) ;;
    --expert-groups) CTX=(--arch glm4moe --groups-used 1) ;;
    --groups-used) CTX=(--arch glm4moe --expert-groups 2) ;;
    --q-lora | --kv-lora | --v-head | --yarn-orig | --yarn | --yarn-mscale | --sigmoid)
        CTX=(--shape deepseek-v3) ;;
    *) CTX=() ;;
    esac
}

# Arguments that make each command otherwise valid but fail at run time (exit 1): PRE goes
# before the flag under test, POST after it.
pre_args() {
    case "$1" in
    run) echo "--json -m $MISS.gguf" ;;
    tokenize) echo "--model $MISS.gguf" ;;
    mkmodel) echo "$T/nodir/out.gguf --shape tiny-moe" ;;
    convert) echo "$MISS.gguf $T/out.nft" ;;
    verify | inspect) echo "$MISS.nft" ;;
    up) echo "-m $MISS.gguf --run-dir $R --http 127.0.0.1:1" ;;
    down | status | stats) echo "--run-dir $R" ;;
    gen) echo "--json --run-dir $R" ;;
    chat) echo "--run-dir $R" ;;
    bench) echo "--model $MISS.gguf" ;;
    nanoflow-fetcher) echo "--foreground --run-dir $R --model $MISS.nft" ;;
    nanoflow-gateway) echo "--foreground --run-dir $R --model $MISS.nft --attach-timeout 1 --http 127.0.0.1:1" ;;
    nanoflow-*) echo "--foreground --run-dir $R --model $MISS.nft --attach-timeout 1" ;;
    esac
}
post_args() {
    case "$1" in
    tokenize) echo "hello" ;;
    esac
}

# parsed_flags NAME: the flags each parser accepts (read from its source); every one must be
# named in the help. A command not listed here (e.g. bench) is checked from its help alone.
parsed_flags() {
    case "$1" in
    run) echo "-m --model -p --prompt -f --file -n --n-predict --temp --top-k --top-p --min-p" \
        "--repeat-penalty --presence-penalty --frequency-penalty -s --seed -t --threads -c --ctx-size --json --top-logits --mmap --no-repack" \
        "--chat --system --chat-template -ub --ubatch-size -ctk --cache-type-k -ctv" \
        "--cache-type-v" ;;
    tokenize) echo "-m --model --no-bos --parse-special --json" ;;
    mkmodel) echo "--shape --dim --layers --layers-override --ffn --heads --kv-heads --experts" \
        "--experts-used --vocab --ctx --rope-base --rms-eps --type --seed --zero --vocab-from" \
        "--zero-experts --router-skew" \
        "--name --alignment -t --threads --arch --head-dim --tied-output --rope-freqs" \
        "--window --rope-scale --shared-ffn --rope-dim --longrope --sliding-window" \
        "--dense-layers --dense-ffn --nextn --shared-experts --expert-scale --qk-norm" \
        "--expert-groups --groups-used --q-lora --kv-lora --v-head --sigmoid --yarn --yarn-orig" \
        "--yarn-mscale" ;;
    convert) echo "--tile-size --rank --f32 --calibrate" ;;
    inspect | status) echo "--json" ;;
    up) echo "-m --model --ram -t --threads --sparsity -c --ctx --ctx-size --run-dir --log-level" \
        "--max-tokens-per-request --http --api-key-file --chat-template --expert-cache -ub" \
        "--ubatch-size -ctk --cache-type-k -ctv --cache-type-v" ;;
    stats) echo "--run-dir --json --watch" ;;
    gen) echo "-p --prompt -f --file -n --n-predict --temp --top-k --top-p --min-p" \
        "--repeat-penalty --presence-penalty --frequency-penalty -s --seed --json --top-logits" \
        "--run-dir --chat --system" \
        "--chat-template" ;;
    chat) echo "-n --n-predict --system --chat-template --temp --top-k --top-p --min-p" \
        "--repeat-penalty --presence-penalty --frequency-penalty -s --seed --timeout --run-dir" ;;
    nanoflow-fetcher) echo "--model --run-dir --ram -t --threads --sparsity --ctx --ubatch --qd" \
        "--verify --cache-type-k --cache-type-v" \
        "--no-uring --numa-node --expert-cache --foreground --log-level --nice" ;;
    nanoflow-predictor) echo "--model --run-dir --ram -t --threads --sparsity --ctx --lookahead" \
        "--margin --attach-timeout --pred-mem --kv-prefetch --foreground --log-level" ;;
    nanoflow-compute) echo "--model --run-dir --ram -t --threads --sparsity --ctx --ubatch" \
        "--cache-type-k --cache-type-v --attach-timeout --max-tokens-per-request --foreground --log-level" ;;
    nanoflow-gateway) echo "--model --run-dir --ram -t --threads --sparsity --ctx" \
        "--attach-timeout --foreground --log-level --http --api-key-file --chat-template" \
        "--max-conns --max-body --max-queue --max-running" ;;
    esac
}

# flags_of FILE: every flag named in a help text's usage lines and option entries (an option line
# and its indented continuation lines), one per line. Flags in the prose paragraphs are left out:
# they may name another command's flags ("as 'run --mmap' does").
flags_of() {
    awk '
        /^usage:/ { on = 1; print; next }
        on && /^$/ { on = 0 }
        on { print; next }
        /^ +-/ { opt = 1; print; next }
        opt && /^      +[^ -]/ { print; next }
        { opt = 0 }' "$1" |
        grep -oE -- '(^|[][ ,(|])--?[a-zA-Z][a-z0-9-]*' | sed -E 's/^[][ ,(|]//' | sort -u
}

# run_to NAME CMD...: runs CMD with stdin closed; stdout/stderr in $T/NAME.out/.err, exit code
# in $rc. Runs that get past argument parsing (NAME acc) are killed after 10 s (rc 124) should
# they hang; usage errors run without the extra timeout process, as there are hundreds.
# In an ASan build usage errors (NAME ue) also run without LeakSanitizer: they exit(2) straight
# from argument parsing, and LSan's stop-the-world scan at each exit tripled the cost of these
# ~500 runs (~1 s each on a loaded machine); ASan and UBSan still check them.
run_to() {
    local name=$1
    shift
    if [ "$name" = acc ]; then
        timeout 10 "$@" </dev/null >"$T/$name.out" 2>"$T/$name.err"
    elif [ "$name" = ue ]; then
        ASAN_OPTIONS="${ASAN_OPTIONS:+$ASAN_OPTIONS:}detect_leaks=0" \
            "$@" </dev/null >"$T/$name.out" 2>"$T/$name.err"
    else
        "$@" </dev/null >"$T/$name.out" 2>"$T/$name.err"
    fi
    rc=$?
}

# usage_err WHAT CMD...: CMD must exit 2 with exactly one stderr line that mentions --help.
usage_err() {
    local what=$1
    shift
    run_to ue "$@"
    local -a lines
    mapfile -t lines <"$T/ue.err" # builtins only: this runs hundreds of times
    if [ "$rc" -ne 2 ]; then
        bad "$what: exit $rc, want 2: $(head -c 200 "$T/ue.err")"
    elif [ "${#lines[@]}" -ne 1 ]; then
        bad "$what: ${#lines[@]} stderr lines, want 1: $(head -c 300 "$T/ue.err")"
    elif [[ "${lines[0]}" != *--help* ]]; then
        bad "$what: the message does not point to --help: $(cat "$T/ue.err")"
    else
        ok
    fi
}

# defaults_stated HELP LABEL: every option line of HELP whose flag takes a value states a
# default or says the flag is required (continuation lines included).
defaults_stated() {
    awk '
        function flush() { if (entry != "") print entry; entry = "" }
        /^ +-/ { flush(); entry = $0; next }
        /^      +[^ -]/ && entry != "" { entry = entry " " $0; next }
        { flush() }
        END { flush() }' "$1" >"$T/entries"
    # The entry's first flag, or its first long flag when it has one; bash's own regex matching
    # (leftmost match, as grep -o's first) instead of a grep pipeline per entry.
    local re_flag='(--?[a-zA-Z][a-z0-9-]*)' re_long='(^|[ ,])(--[a-z][a-z0-9-]*)'
    local re_default='[Dd][Ee][Ff][Aa][Uu][Ll][Tt]|[Rr][Ee][Qq][Uu][Ii][Rr][Ee][Dd]'
    while IFS= read -r e; do
        local f=""
        [[ "$e" =~ $re_flag ]] && f=${BASH_REMATCH[1]}
        [[ "$e" =~ $re_long ]] && f=${BASH_REMATCH[2]}
        kind "$f"
        case "$K" in
        bool | file | "") continue ;; # an input file has no default
        esac
        if [[ "$e" =~ $re_default ]]; then
            ok
        else
            bad "$2: the help of $f states no default: $e"
        fi
    done <"$T/entries"
}

# check_command LABEL CMD...: all checks for one command (CMD is the binary and, for nanoflowctl,
# the subcommand).
check_command() {
    local label=$1
    shift
    local key=${label##* }
    local -a pre0 post
    read -r -a pre0 <<<"$(pre_args "$key")"
    read -r -a post <<<"$(post_args "$key")"
    run_to help "$@" --help
    if [ "$rc" -ne 0 ] || ! grep -q "^usage: $label" "$T/help.out"; then
        bad "$label --help: exit $rc, usage line missing: $(head -c 200 "$T/help.out")"
        return
    fi
    ok
    defaults_stated "$T/help.out" "$label"
    flags_of "$T/help.out" >"$T/flags"
    local -a flags
    mapfile -t flags <"$T/flags"
    local -A named=()
    for f in "${flags[@]}"; do named[$f]=1; done
    for f in -h --help $(parsed_flags "$key"); do
        if [ -n "${named[$f]:-}" ]; then
            ok
        else
            bad "$label: $f is accepted but its --help does not name it"
        fi
    done
    for f in "${flags[@]}"; do
        local k
        kind "$f"
        k=$K
        # bench's -p is llama-bench's prompt length, a number (elsewhere -p is the prompt).
        [ "$key $f" = "bench -p" ] && k=int
        case "$f" in -h | --help) continue ;; esac
        if [ -z "$k" ]; then
            bad "$label: the help names $f, which this test does not know (add it to kind/good)"
            continue
        fi
        if [ "$f" = --vocab-from ] && [ ! -f "$VOCAB" ]; then
            echo "skip: $label $f ($VOCAB is missing)"
            continue
        fi
        # mkmodel's phi3-only flags are usage errors on the llama preset: use a phi3 one.
        local -a pre=("${pre0[@]}")
        case "$key $f" in
        "mkmodel --rope-dim" | "mkmodel --longrope" | "mkmodel --sliding-window")
            pre=("$T/nodir/out.gguf" --shape phi3-mini) ;;
        esac
        flag_ctx "$f"
        local -a fpre=("${pre[@]}" "${CTX[@]}")
        # Accepted: fails later (exit 1) instead of a usage error.
        local -a val=()
        good "$f"
        [ "$key $f" = "bench -p" ] && G=8
        [ "$k" != bool ] && val=("$G")
        [ -e "$R" ] && rm -rf "$R"
        run_to acc "$@" "${fpre[@]}" "$f" "${val[@]}" "${post[@]}"
        if [ "$rc" -ne 1 ]; then
            bad "$label $f ${val[*]}: exit $rc, want 1 (a runtime failure): $(head -c 300 "$T/acc.err")"
        elif mapfile -t acc <"$T/acc.err" &&
            [[ "${acc[*]}" =~ unknown\ (flag|option)|needs\ a\ value ]]; then
            bad "$label $f ${val[*]}: refused: $(head -c 300 "$T/acc.err")"
        else
            ok
        fi
        # The --flag=value form, and a value given to a flag that takes none.
        if [[ "$f" == --* && "$k" != bool ]]; then
            [ -e "$R" ] && rm -rf "$R"
            run_to acc "$@" "${fpre[@]}" "$f=$G" "${post[@]}"
            if [ "$rc" -eq 1 ]; then ok; else
                bad "$label $f=$G: exit $rc, want 1: $(head -c 300 "$T/acc.err")"
            fi
        elif [[ "$f" == --* ]]; then
            usage_err "$label $f=1 (takes no value)" "$@" "${fpre[@]}" "$f=1" "${post[@]}"
        fi
        # A flag given without its value.
        case "$k" in
        bool | opt) ;;
        *) usage_err "$label $f (no value)" "$@" "${fpre[@]}" "$f" ;;
        esac
        # Bad values.
        local -a bads=()
        case "$k" in
        int) bads=(12abc -5 " -5" 99999999999999999999) ;;
        float | opt) bads=(1.5x -1 nan) ;;
        sfloat) bads=(1.5x -3 nan) ;;
        nice) bads=(12abc 20 -21 99999999999999999999) ;;
        size) bads=(12Q -1G) ;;
        enum) bads=(bogus) ;;
        esac
        for b in "${bads[@]}"; do
            usage_err "$label $f '$b'" "$@" "${fpre[@]}" "$f" "$b" "${post[@]}"
        done
    done
    # Without its required model (or files) a command is a usage error too.
    case "$key" in
    down | status | stats | gen | chat) ;;
    *) usage_err "$label without its required arguments" "$@" ;;
    esac
    usage_err "$label unknown flag" "$@" "${pre0[@]}" --definitely-not-a-flag "${post[@]}"
    if ! grep -q -- "unknown flag '--definitely-not-a-flag'" "$T/ue.err"; then
        bad "$label: the unknown-flag message does not name the flag: $(cat "$T/ue.err")"
    fi
}

# 1. The top level: --help lists every command with a summary; unknown commands and flags.
run_to top "$NF_BIN" --help
if [ "$rc" -ne 0 ] || ! grep -q "^usage: nanoflowctl" "$T/top.out"; then
    bad "nanoflowctl --help: exit $rc"
fi
cmds=$(awk '/^Commands:/ { on = 1; next } on && /^$/ { on = 0 } on && NF >= 2 { print $1 }' \
    "$T/top.out")
if [ "$(echo "$cmds" | wc -w)" -lt 11 ]; then
    bad "nanoflowctl --help lists $(echo "$cmds" | wc -w) commands: $cmds"
fi
for want in run tokenize mkmodel convert verify inspect up down status stats gen; do
    echo "$cmds" | grep -qx "$want" || bad "nanoflowctl --help does not list $want"
done
run_to ver "$NF_BIN" --version
[ "$rc" -eq 0 ] && grep -q "^nanoflowctl " "$T/ver.out" && ok || bad "nanoflowctl --version: exit $rc"
usage_err "nanoflowctl unknown command" "$NF_BIN" frobnicate
usage_err "nanoflowctl unknown flag" "$NF_BIN" --frobnicate
run_to none "$NF_BIN"
[ "$rc" -eq 2 ] && grep -q "^usage: nanoflowctl" "$T/none.err" && ok ||
    bad "nanoflowctl without a command: exit $rc"

# 2. Every command and daemon.
for c in $cmds; do
    check_command "nanoflowctl $c" "$NF_BIN" "$c"
done
for d in fetcher predictor compute gateway; do
    bin="$DAEMON_DIR/nanoflow-$d"
    if [ ! -x "$bin" ]; then
        echo "skip: $bin is not built"
        continue
    fi
    check_command "nanoflow-$d" "$bin"
done

echo "test_cli_help: $pass passed, $failed failed"
[ "$failed" -eq 0 ]
