#!/usr/bin/env bash
# test_stack_kvdisk_crash.sh - the KV cache on disk through the stack, continued:
# `--kv-offload auto` puts the KV on disk only when the -c asked for does not fit the budget in
# RAM (and then does not cap it), `off` keeps it in RAM; a KV file larger than the disk's free
# space is refused in one line; a kill -9 of compute mid-generation leaves nothing the next
# request reads: `up` over the dead stack removes its (scribbled over) file and the next
# request gives `run`'s tokens; `down` removes the file.
set -u
. "$(dirname "$0")/lib.sh"
: "${NF_BIN:?NF_BIN must point to nanoflowctl}"
: "${NF_SHARED_DIR:?NF_SHARED_DIR must point to the shared directory}"
need_stories
need_daemons
T=$(mktemp -d)
export XDG_CACHE_HOME="$T/cache" # the index of the read-only shared models goes here
cleanup() {
    for r in "$T"/run-*; do
        [ -d "$r" ] && "$NF_BIN" down --run-dir "$r" >/dev/null 2>&1
    done
    rm -rf "$T"
}
trap cleanup EXIT

# 1. auto: stories260K with its context raised to 65536 (patch_ctx): 40 MiB of KV in RAM does
#    not fit a 56 MiB budget beside the stack's ~30 MiB minimum, so -c 65536 goes to disk (two
#    layers' context resident: 16 MiB); -c 128 stays in RAM.
cp "$M0" "$T/long.gguf"
patch_ctx "$T/long.gguf" 65536
R="$T/run-auto"
"$NF_BIN" up -m "$T/long.gguf" --ram 56M -t 1 -c 65536 --parallel 1 --run-dir "$R" \
    >"$T/up.out" 2>"$T/up.err"
check "auto: up -c 65536 in a 56 MiB budget exits 0" $?
grep -q "n_ctx 65536" "$T/up.out" && grep -q "KV cache on disk" "$T/up.out"
check "auto: the context is not capped, the KV is on disk" $?
"$NF_BIN" gen --run-dir "$R" -p "Once upon a time" -n 60 --temp 0 >"$T/gen.txt" 2>/dev/null
"$NF_BIN" run -m "$T/long.gguf" -t 1 -c 256 -p "Once upon a time" -n 60 --temp 0 \
    >"$T/run.txt" 2>/dev/null
cmp -s "$T/gen.txt" "$T/run.txt" && [ -s "$T/gen.txt" ]
check "auto: gen equals run" $?
"$NF_BIN" down --run-dir "$R" >/dev/null 2>&1
R="$T/run-auto-ram"
"$NF_BIN" up -m "$T/long.gguf" --ram 56M -t 1 -c 128 --parallel 1 --run-dir "$R" \
    >"$T/up.out" 2>"$T/up.err"
check "auto: up -c 128 exits 0" $?
! grep -q "KV cache on disk" "$T/up.out"
check "auto: -c 128 keeps the KV in RAM" $?
"$NF_BIN" down --run-dir "$R" >/dev/null 2>&1
"$NF_BIN" up -m "$T/long.gguf" --ram 56M -t 1 -c 65536 --parallel 1 --kv-offload off \
    --run-dir "$R" >"$T/up.out" 2>"$T/up.err"
check "auto: up --kv-offload off exits 0" $?
! grep -q "KV cache on disk" "$T/up.out" && ! grep -q "n_ctx 65536" "$T/up.out"
check "auto: --kv-offload off keeps the KV in RAM and caps the context" $?
"$NF_BIN" down --run-dir "$R" >/dev/null 2>&1

# 2. A KV file larger than the free space of its directory is refused in one line: stories260K
#    at 2^24 positions takes 10 GiB per sequence; enough sequences to pass the free space (the
#    budget given holds their resident blocks, 4 GiB each: nothing is allocated).
cp "$M0" "$T/huge.gguf"
patch_ctx "$T/huge.gguf" 16777216
#    The KV directory is the smaller of $T's file system and /dev/shm: `up` refuses a budget
#    above the machine's RAM first, so 5 GiB per sequence must stay below it.
KD=$T
FREE_G=$(df -BG --output=avail "$T" | tail -1 | tr -dc 0-9)
SHM_G=$( [ -d /dev/shm ] && [ -w /dev/shm ] && df -BG --output=avail /dev/shm | tail -1 | tr -dc 0-9)
if [ -n "$SHM_G" ] && [ "$SHM_G" -lt "$FREE_G" ]; then
    KD=/dev/shm
    FREE_G=$SHM_G
fi
MEM_G=$(awk '/^MemTotal:/ { print int($2 / 1048576) }' /proc/meminfo)
NSEQ=$((FREE_G / 10 + 1))
if [ "$NSEQ" -le 32 ] && [ $((NSEQ * 5)) -lt "$MEM_G" ]; then
    expect "a KV file over the free disk refused" 1 "needs .* free: lower -c" "$NF_BIN" up \
        -m "$T/huge.gguf" --ram $((NSEQ * 5))G -t 1 -c 16777216 --parallel "$NSEQ" \
        --kv-offload on --kv-dir "$KD" --run-dir "$T/run-huge"
    [ "$(grep -c "nanoflowctl up" "$T/err")" -eq 1 ]
    check "the refusal is one line" $?
else
    echo "skip: $KD has ${FREE_G}G free: ${NSEQ} sequences' KV files, a budget of" \
        "$((NSEQ * 5))G against ${MEM_G}G of RAM"
fi

# 3. kill -9 of compute mid-generation: `up` again starts a new stack over the dead one (the
#    old KV file, scribbled over, removed; a new one created empty); its output is run's.
R="$T/run-kill"
"$NF_BIN" up -m "$T/long.gguf" --ram 64M -t 1 -c 4096 --kv-offload on --kv-block 4 \
    --parallel 1 --run-dir "$R" >"$T/up.out" 2>"$T/up.err"
check "kill: up exits 0" $?
KV=$(sed -n 's/.*KV cache on disk: \([^ ]*\) .*/\1/p' "$T/up.out")
"$NF_BIN" gen --run-dir "$R" -p "Once upon a time" -n 3000 --temp 1 --seed 5 \
    >"$T/killed.txt" 2>&1 &
GEN=$!
for _ in $(seq 100); do # until the sequence has filled a few blocks
    [ "$(wc -c <"$T/killed.txt")" -gt 200 ] && break
    sleep 0.05
done
CPID=$(cat "$R/compute.pid")
kill -9 "$CPID"
wait $GEN
GRC=$?
[ "$GRC" -ne 0 ]
check "kill: gen fails when compute is killed mid-generation (rc $GRC)" $?
[ -f "$KV" ]
check "kill: the dead compute left its KV file" $?
# Scribble over the dead stack's file, as a torn write would: none of it may be read.
dd if=/dev/urandom of="$KV" bs=4096 count=16 conv=notrunc status=none
"$NF_BIN" up -m "$T/long.gguf" --ram 64M -t 1 -c 4096 --kv-offload on --kv-block 4 \
    --parallel 1 --run-dir "$R" >"$T/up2.out" 2>"$T/up2.err"
check "kill: up over the dead stack exits 0" $?
"$NF_BIN" gen --run-dir "$R" -p "Once upon a time" -n 120 --temp 0 >"$T/gen.txt" 2>/dev/null
"$NF_BIN" run -m "$T/long.gguf" -t 1 -c 4096 -p "Once upon a time" -n 120 --temp 0 \
    >"$T/run.txt" 2>/dev/null
cmp -s "$T/gen.txt" "$T/run.txt" && [ -s "$T/gen.txt" ]
check "kill: the next request after the crash equals run" $?
"$NF_BIN" down --run-dir "$R" >/dev/null 2>&1
[ ! -e "$KV" ]
check "kill: down removed the KV file" $?
exit $fail
