#!/usr/bin/env bash
# test_cli_surprises.sh - issue 9's "no silent surprises" on the command line, each checked by its
# message and exit code: stale convert temporaries swept (only those no writer holds), convert
# refusing to overwrite without --force, a damaged cached .nft named with its fix, --ram beyond
# the machine refused (up, bench, a daemon), a GGUF or foreign file described as what it is, a
# failed up taking back its run directory, --sparsity refused on MoE, the README quickstart
# keeping the first error visible, install-deps waiting for the apt lock, and the stats hit rate
# of a resident model with the recall footnote.
set -u
. "$(dirname "$0")/lib.sh" # expect
: "${NF_BIN:?NF_BIN must point to nanoflowctl}"
: "${NF_SHARED_DIR:?NF_SHARED_DIR must point to the shared directory}"
M="$NF_SHARED_DIR/models"
ROOT=$(cd "$(dirname "$0")/.." && pwd)
for f in stories260K.gguf moe-Q4_K_M.gguf zoo-F16.gguf; do
    [ -r "$M/$f" ] || { echo "skip: $M/$f is missing"; exit 77; }
done
T=$(mktemp -d /tmp/test_cli_surprises.XXXXXX)
HOLDER= STACK=
cleanup() {
    [ -n "$HOLDER" ] && kill "$HOLDER" 2>/dev/null
    [ -n "$STACK" ] && "$NF_BIN" down --run-dir "$STACK" >/dev/null 2>&1
    rm -rf "$T"
}
trap cleanup EXIT
export XDG_CACHE_HOME="$T/cache"
fail=0
ok() { # ok NAME STATUS
    if [ "$2" -eq 0 ]; then echo "ok: $1"; else echo "FAIL: $1"; fail=1; fi
}

# --- item 15: convert keeps an existing output unless --force ---------------------------------
cp "$M/stories260K.gguf" "$T/s.gguf"
expect "convert writes a new output" 0 "wrote" "$NF_BIN" convert "$T/s.gguf" "$T/s.nft"
sum=$(md5sum <"$T/s.nft")
touch -d @1000000000 "$T/s.nft"
expect "convert refuses an existing output" 1 "already exists; pass --force" \
    "$NF_BIN" convert "$T/s.gguf" "$T/s.nft"
ok "the existing output is untouched" "$([ "$(stat -c %Y "$T/s.nft")" = 1000000000 ] && echo 0 || echo 1)"
expect "convert --force replaces it" 0 "wrote" "$NF_BIN" convert "$T/s.gguf" "$T/s.nft" --force
ok "the replaced output is the same conversion" "$([ "$(md5sum <"$T/s.nft")" = "$sum" ] && echo 0 || echo 1)"

# --- item 8: stale temporaries of a killed convert are swept, live ones kept -----------------
"$NF_BIN" convert "$M/zoo-F16.gguf" "$T/z.nft" --tile-size 4K 2>/dev/null &
pid=$!
for _ in $(seq 200); do
    ls "$T" | grep -q '^z.nft.tmp-' && break
    sleep 0.02
done
kill -KILL $pid 2>/dev/null
wait $pid 2>/dev/null
killed=$(ls "$T" | grep -c '^z.nft.tmp-')
printf x >"$T/z.nft.tmp-stale1"         # no writer: swept
printf x >"$T/z.nft.tmp-live01"         # held by a running writer: kept
printf x >"$T/z.nft.tmp-toolong7"       # not a name mkstemp makes: kept
printf x >"$T/other.nft.tmp-stale1"     # another output's: kept
(exec 9<"$T/z.nft.tmp-live01" && flock -x 9 && exec sleep 60) </dev/null >/dev/null 2>&1 &
HOLDER=$!
for _ in $(seq 100); do # until the holder has the lock
    flock -n -x "$T/z.nft.tmp-live01" true || break
    sleep 0.02
done
expect "convert after a SIGKILLed one" 0 "wrote" "$NF_BIN" convert "$M/zoo-F16.gguf" "$T/z.nft"
left=$(cd "$T" && ls | grep 'tmp-' | sort | tr '\n' ' ')
ok "SIGKILL left a temporary ($killed) and the next convert swept it and the unlocked one; kept: $left" \
    "$([ "$killed" -ge 1 ] && [ "$left" = "other.nft.tmp-stale1 z.nft.tmp-live01 z.nft.tmp-toolong7 " ] && echo 0 || echo 1)"
kill "$HOLDER" 2>/dev/null
wait "$HOLDER" 2>/dev/null
HOLDER=

# --- item 8: a damaged cached .nft is named, with the command that fixes it -------------------
cp "$T/s.nft" "$T/c.nft" # a clean copy for later
# $T/s.nft becomes up --sparsity's cache of $T/s.gguf (up without it serves the GGUF in place)
# with the sidecar of the source's size and mtime.
python3 - "$T/s.gguf" "$T/s.nft.src" <<'PY'
import os, sys
st = os.stat(sys.argv[1])
open(sys.argv[2], "w").write("%d %d %d\n" % (st.st_size, st.st_mtime_ns // 10**9, st.st_mtime_ns % 10**9))
PY
printf '\x00\x00\x00\x00\x00\x00\x00\x00' | dd of="$T/s.nft" bs=1 seek=64 conv=notrunc status=none
expect "up on a damaged cache names it" 1 "s.nft is the cached conversion of $T/s.gguf and is damaged" \
    "$NF_BIN" up -m "$T/s.gguf" --sparsity 0.5 --ram 256M --run-dir "$T/run1"
expect "... and gives the command to fix it" 1 "nanoflowctl convert --force $T/s.gguf $T/s.nft" \
    "$NF_BIN" up -m "$T/s.gguf" --sparsity 0.5 --ram 256M --run-dir "$T/run1"

# --- item 15: a failed up takes back the run directory it created ----------------------------
ok "the failed up left no run directory" "$([ ! -e "$T/run1" ] && echo 0 || echo 1)"
mkdir -m 700 "$T/mine"
touch "$T/mine/keep"
expect "up fails in an existing run dir" 1 "damaged" "$NF_BIN" up -m "$T/s.gguf" --sparsity 0.5 \
    --run-dir "$T/mine"
ok "a run dir up did not create is kept, with its files" "$([ -f "$T/mine/keep" ] && echo 0 || echo 1)"

# --- item 8: --ram beyond the machine's RAM + swap -------------------------------------------
expect "up --ram 99999T" 2 "more than this machine could ever use: it has .* GiB of RAM" \
    "$NF_BIN" up -m "$T/c.nft" --ram 99999T --run-dir "$T/run2"
ok "the refused up left no run directory" "$([ ! -e "$T/run2" ] && echo 0 || echo 1)"
expect "bench --ram 99999T" 2 "more than this machine could ever use" \
    "$NF_BIN" bench -m "$T/s.gguf" --ram 99999T
FETCHER=
for d in "$(dirname "$NF_BIN")" "$(dirname "$NF_BIN")/../daemons"; do
    [ -x "$d/nanoflow-fetcher" ] && FETCHER="$d/nanoflow-fetcher"
done
if [ -n "$FETCHER" ]; then
    expect "nanoflow-fetcher --ram 99999T" 2 "^nanoflow-fetcher: --ram of .* more than this machine" \
        "$FETCHER" --model "$T/c.nft" --ram 99999T --run-dir "$T/run3"
    ok "the daemon said it in one line" "$([ "$(wc -l <"$T/err")" -eq 1 ] && echo 0 || echo 1)"
fi
expect "up --ram 1G is still fine to parse" 2 "unknown flag" "$NF_BIN" up -m x --ram 1G --bogus

# --- item 10: a GGUF or a foreign file is described as what it is ---------------------------
head -c 3000 "$T/s.gguf" >"$T/broken.gguf"
expect "verify on a GGUF says so" 1 "this is a GGUF model, not a .nft tile file: make one with 'nanoflowctl convert" \
    "$NF_BIN" verify "$T/s.gguf"
expect "inspect describes a GGUF" 0 "" "$NF_BIN" inspect "$M/moe-Q4_K_M.gguf"
ok "... architecture, tensors, types and the convert command" \
    "$(grep -q 'a GGUF model (version 3), not a .nft tile file' "$T/out" && grep -q '^architecture: llama' "$T/out" &&
        grep -q '^tensors: 33, ' "$T/out" && grep -q '^q4_K  *12 ' "$T/out" &&
        grep -q "nanoflowctl convert $M/moe-Q4_K_M.gguf OUT.nft" "$T/out" && echo 0 || echo 1)"
expect "inspect --json of a GGUF" 0 "" "$NF_BIN" inspect --json "$T/s.gguf"
ok "... is JSON with format gguf" \
    "$(python3 -c 'import json,sys; d=json.load(open(sys.argv[1])); sys.exit(0 if d["format"]=="gguf" and d["tensors"]==48 else 1)' "$T/out" && echo 0 || echo 1)"
expect "inspect a truncated GGUF" 1 "broken.gguf" "$NF_BIN" inspect "$T/broken.gguf"
for c in inspect verify; do
    expect "$c on an ELF file" 1 "not a GGUF or .nft file (first bytes 7f 45 4c 46" "$NF_BIN" $c "$(command -v bash)"
done
: >"$T/empty.nft"
expect "verify an empty file" 1 "an empty file, not a GGUF or .nft file" "$NF_BIN" verify "$T/empty.nft"
head -c 100 "$T/c.nft" >"$T/short.nft"
expect "verify a truncated .nft" 1 "truncated .nft file: 100 bytes" "$NF_BIN" verify "$T/short.nft"
cp "$(command -v bash)" "$T/elf.nft"
expect "up on a foreign .nft" 1 "not a GGUF or .nft file (first bytes 7f 45 4c 46" \
    "$NF_BIN" up -m "$T/elf.nft" --run-dir "$T/run4"
expect "up on a truncated GGUF speaks GGUF" 1 "indexing $T/broken.gguf" \
    "$NF_BIN" up -m "$T/broken.gguf" --run-dir "$T/run4"
ok "no .nft terms for the GGUF" "$(grep -q 'NFT1\|4096-byte' "$T/err" && echo 1 || echo 0)"

# --- item 14: --sparsity is refused on a MoE model --------------------------------------------
"$NF_BIN" convert "$M/moe-Q4_K_M.gguf" "$T/moe.nft" 2>/dev/null
expect "up --sparsity on MoE" 1 "--sparsity 0.5 applies to dense models only: .*moe.nft is a mixture-of-experts model (8 experts, 2 used per token)" \
    "$NF_BIN" up -m "$T/moe.nft" --sparsity 0.5 --run-dir "$T/run5"
ok "the refused up left no run directory" "$([ ! -e "$T/run5" ] && echo 0 || echo 1)"

# --- item 13: install-deps waits for the apt lock; the quickstart keeps the first error ------
mkdir -p "$T/fake"
cat >"$T/fake/dpkg-query" <<'EOF'
#!/bin/sh
exit 1
EOF
cat >"$T/fake/apt-get" <<EOF
#!/bin/sh
echo "\$*" >>"$T/apt.log"
EOF
cat >"$T/fake/id" <<'EOF'
#!/bin/sh
echo 0
EOF
chmod +x "$T/fake/"*
PATH="$T/fake:$PATH" bash "$ROOT/deploy/install-deps.sh" >/dev/null 2>&1
ok "install-deps: update and install both wait for the lock" \
    "$([ "$(grep -c 'DPkg::Lock::Timeout=600' "$T/apt.log" 2>/dev/null)" = 2 ] && echo 0 || echo 1)"
qs=$(sed -n '/^## Quickstart/,/^## /p' "$ROOT/README.md" | sed -n '/^```sh/,/^```/p' | sed '1d;$d')
ok "README has a one-line quickstart" "$([ "$(printf '%s\n' "$qs" | wc -l)" -eq 1 ] && echo 0 || echo 1)"
# Runs the quickstart in a scratch tree whose steps are stubs: FAILAT names the step that fails.
quickstart() {
    local q="$T/qs"
    rm -rf "$q" && mkdir -p "$q/deploy" "$q/build/ctl" "$q/bin"
    printf '#!/bin/sh\necho install >>%s/log\n' "$q" >"$q/deploy/install-deps.sh"
    printf '#!/bin/sh\necho cmake >>%s/log\n' "$q" >"$q/bin/cmake"
    cat >"$q/build/ctl/nanoflowctl" <<EOF
#!/bin/sh
echo "\$1" >>$q/log
if [ "\$1" = "$1" ]; then echo "nanoflowctl \$1: the real error" >&2; exit 1; fi
if [ "\$1" = down ]; then echo "stack stopped"; fi
exit 0
EOF
    chmod +x "$q/deploy/install-deps.sh" "$q/bin/cmake" "$q/build/ctl/nanoflowctl"
    (cd "$q" && PATH="$q/bin:$PATH" bash -c "$qs") >"$q/out" 2>&1
    echo $? >"$q/rc"
}
quickstart up
ok "quickstart: a failed up stops the chain, no down, its error last, exit 1" \
    "$([ "$(cat "$T/qs/rc")" = 1 ] && ! grep -q down "$T/qs/log" &&
        [ "$(tail -n 1 "$T/qs/out")" = "nanoflowctl up: the real error" ] && echo 0 || echo 1)"
quickstart gen
ok "quickstart: a failed gen still stops the stack and exits 1" \
    "$([ "$(cat "$T/qs/rc")" = 1 ] && grep -q down "$T/qs/log" &&
        grep -q "gen: the real error" "$T/qs/out" && echo 0 || echo 1)"
quickstart none
ok "quickstart: success runs up, gen, down and exits 0" \
    "$([ "$(cat "$T/qs/rc")" = 0 ] && [ "$(tr '\n' ' ' <"$T/qs/log")" = "install cmake cmake up gen down " ] && echo 0 || echo 1)"

# --- item 14: a resident model's hit rate, the recall footnote (needs the daemons) -----------
have_daemons=1
for role in fetcher predictor compute; do
    found=
    for d in "$(dirname "$NF_BIN")" "$(dirname "$NF_BIN")/../daemons"; do
        [ -x "$d/nanoflow-$role" ] && found=1
    done
    [ -n "$found" ] || have_daemons=
done
if [ -z "$have_daemons" ]; then
    echo "skip: stats hit rate (the daemons are not built)"
else
    STACK="$T/run6"
    expect "up a resident model" 0 "" "$NF_BIN" up -m "$T/c.nft" --ram 256M -t 1 --run-dir "$STACK"
    for _ in 1 2; do
        "$NF_BIN" gen --run-dir "$STACK" -n 40 --temp 0 "Once upon a time" >/dev/null 2>&1
    done
    "$NF_BIN" stats --run-dir "$STACK" >"$T/stats" 2>&1
    "$NF_BIN" stats --run-dir "$STACK" --json >"$T/stats.json" 2>&1
    hr=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["fetcher"]["hit_rate"])' "$T/stats.json")
    ok "stats: a resident model's hit rate is high ($hr)" \
        "$(python3 -c 'import sys; sys.exit(0 if float(sys.argv[1]) > 0.8 else 1)' "$hr" && echo 0 || echo 1)"
    ok "stats: the '-' recall has its footnote" \
        "$(grep -q '^ *recall (1) *-$' "$T/stats" && grep -q '^(1) recall and precision are measured only in sparse' "$T/stats" && echo 0 || echo 1)"
    "$NF_BIN" down --run-dir "$STACK" >/dev/null 2>&1
    STACK=
fi

# --- item 12: the help names the default run directory a root user really gets ---------------
# Every command and daemon that takes --run-dir resolves it with nf_rundir_default: /run/nanoflow
# for root without NANOFLOW_RUN_DIR or XDG_RUNTIME_DIR (the help once said /tmp/nanoflow-UID).
h=$("$NF_BIN" up --help 2>&1 | tr -s ' \n' ' ')
case "$h" in
*"/run/nanoflow for root"*) rc=0 ;;
*) rc=1 ;;
esac
ok "up --help names /run/nanoflow for root" $rc
for c in gen stats status down; do # the others refer to up's rule
    "$NF_BIN" "$c" --help 2>&1 | grep -q -- "--run-dir DIR.*as for 'up'"
    ok "$c --help takes the run directory as up does" $?
done
if [ "$(id -u)" = 0 ] && [ -d /run ]; then
    out=$(env -u NANOFLOW_RUN_DIR -u XDG_RUNTIME_DIR "$NF_BIN" status 2>&1)
    case "$out" in
    *"/run/nanoflow"*) rc=0 ;;
    *) rc=1 ;;
    esac
    ok "status as root looks in /run/nanoflow ($out)" $rc
fi

[ $fail -eq 0 ] && echo "all passed"
exit $fail
