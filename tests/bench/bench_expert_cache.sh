#!/usr/bin/env bash
# bench_expert_cache.sh - the fetcher's routed-expert eviction side by side: `up --expert-cache
# freq` (expected next use from decayed use frequency) against `cyclic` (layer-order distance
# only), on two generated MoE models larger than the budget, one with near-uniform routing
# (random routers) and one with skewed routing (mkmodel --router-skew). Prints, per model and
# policy: the fetcher's hit rate (tiles compute used that needed no read), MB read per token and
# decode tok/s, from `stats --json` after one greedy generation.
# Usage: bench_expert_cache.sh [NANOFLOWCTL] [DIR]; env: RAM (default 256M), N (tokens, 96),
# SKEW (router skew, 4). Skips (exit 77) with the reason when it cannot run.
set -u
BIN=${1:-${NF_BIN:-build/ctl/nanoflowctl}}
DIR=${2:-$(mktemp -d)}
RAM=${RAM:-256M}
N=${N:-96}
SKEW=${SKEW:-4}
skip() { echo "bench_expert_cache: skipped: $*"; exit 77; }
[ -x "$BIN" ] || skip "no nanoflowctl at $BIN"
avail=$(($(df --output=avail -B1 "$DIR" | tail -1)))
[ "$avail" -gt $((1200 * 1024 * 1024)) ] || skip "$DIR has $avail bytes free, needs 1.2 GB"
R="$DIR/run"
trap '"$BIN" down --run-dir "$R" >/dev/null 2>&1' EXIT
# A qwen3moe shape of ~500 MB: 8 layers of 32 experts (4 used), Q8_0.
SHAPE="--arch qwen3moe --dim 1024 --layers 8 --experts 32 --experts-used 4 --ffn 512 --heads 8
    --kv-heads 4 --type q8_0"
for m in uniform skewed; do
    [ -f "$DIR/$m.gguf" ] && continue
    extra=""
    [ $m = skewed ] && extra="--router-skew $SKEW"
    # shellcheck disable=SC2086
    "$BIN" mkmodel "$DIR/$m.gguf" $SHAPE $extra >/dev/null || skip "mkmodel failed"
done
PROMPT="Once upon a time there was a little robot who lived in a quiet town by the sea"
printf '%-8s %-7s %9s %9s %9s %10s\n' model policy hit_rate MB/token tok/s evictions
for m in uniform skewed; do
    for p in cyclic freq; do
        "$BIN" up -m "$DIR/$m.gguf" --ram "$RAM" --run-dir "$R" --expert-cache $p >/dev/null ||
            skip "up failed"
        "$BIN" gen --run-dir "$R" -p "$PROMPT" -n "$N" --temp 0 >/dev/null || skip "gen failed"
        "$BIN" stats --run-dir "$R" --json | python3 -c '
import json, sys
s = json.load(sys.stdin)
f, c = s["fetcher"], s["compute"]
print("%-8s %-7s %9.3f %9.1f %9.2f %10d" % (sys.argv[1], sys.argv[2], f["hit_rate"],
      f["bytes_per_token"] / 1e6, c["decode_tok_s"], f["evictions"]))' "$m" "$p"
        "$BIN" down --run-dir "$R" >/dev/null
    done
done
echo "(--ram $RAM, $N tokens greedy, router skew $SKEW; command: $0 $BIN $DIR)"
