# lib.sh - what the shell tests share; source it with . "$(dirname "$0")/lib.sh".
# Not a test itself (ctest registers tests/test_*.sh only).

fail=0
# This directory (where gguf_lib.py is, for the Python helpers below).
NF_TESTS_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)

# proc_running PID: true while PID runs (a zombie, Z, or a process being reaped, X, is gone).
# Its state is read once: a zombie reaped between two reads would look alive.
proc_running() {
    local st
    st=$(sed -n 's/^State:[[:space:]]*//p' "/proc/$1/status" 2>/dev/null)
    [ -n "$st" ] && [ "${st#[ZX]}" = "$st" ]
}

# check NAME STATUS: prints "ok: NAME" when STATUS is 0, else "FAIL: NAME" and sets fail=1.
check() {
    if [ "$2" -ne 0 ]; then
        echo "FAIL: $1"
        fail=1
    else
        echo "ok: $1"
    fi
}

# expect NAME WANT_RC PATTERN CMD...: runs CMD (stdin from /dev/null; under `timeout
# $EXPECT_TIMEOUT` when that is set), checks its exit code and that its stderr contains PATTERN
# (none when empty); CMD's stdout and stderr are left in $T/out and $T/err.
expect() {
    local name=$1 want=$2 pat=$3
    shift 3
    if [ -n "${EXPECT_TIMEOUT:-}" ]; then
        timeout "$EXPECT_TIMEOUT" "$@" >"$T/out" 2>"$T/err" </dev/null
    else
        "$@" >"$T/out" 2>"$T/err" </dev/null
    fi
    local rc=$?
    if [ "$rc" -ne "$want" ]; then
        echo "FAIL: $name (rc $rc, want $want): $(head -c 400 "$T/err")"
        fail=1
    elif [ -n "$pat" ] && ! grep -q -- "$pat" "$T/err"; then
        echo "FAIL: $name: stderr lacks '$pat': $(head -c 400 "$T/err")"
        fail=1
    else
        echo "ok: $name (rc $rc): $(head -n 1 "$T/err")"
    fi
}

# need_python3 WHY: skips the test (exit 77) unless python3 is on PATH; WHY ("to read JSON")
# says what the test needs it for.
need_python3() {
    if ! command -v python3 >/dev/null; then
        echo "skip: python3 is needed $1"
        exit 77
    fi
}

# stack_tmp: sets T to a fresh scratch directory and XDG_CACHE_HOME to $T/cache (where the
# in-place index of a read-only shared model goes); on exit every stack whose run directory is
# $T/run-* is brought down and T is removed.
stack_tmp() {
    T=$(mktemp -d)
    export XDG_CACHE_HOME="$T/cache"
    trap stack_tmp_cleanup EXIT
}

stack_tmp_cleanup() {
    local d
    for d in "$T"/run-*; do
        [ -d "$d" ] && "$NF_BIN" down --run-dir "$d" >/dev/null 2>&1
    done
    keep_failed
    rm -rf "$T"
}

# keep_failed: when NF_TEST_KEEP names a directory and the test failed (fail=1), copies the
# scratch directory T (outputs, run directories with the daemons' logs; not the model copies,
# *.gguf) to NF_TEST_KEEP/TEST.DATE.PID before it is removed, so that a failure seen once in a
# loop (`ctest --repeat until-fail:50`) can be read afterwards. Call it from the EXIT trap.
keep_failed() {
    [ -n "${NF_TEST_KEEP:-}" ] && [ "$fail" -ne 0 ] && [ -d "${T:-}" ] || return 0
    local dst
    dst="$NF_TEST_KEEP/$(basename "$0" .sh).$(date +%H%M%S).$$"
    mkdir -p "$dst" && tar -C "$T" --exclude='*.gguf' -cf - . 2>/dev/null | tar -C "$dst" -xf - &&
        echo "kept: $dst"
}

# need_daemons: skips the test (exit 77) unless the three stack daemons are where `up` looks for
# them: beside $NF_BIN, in its ../daemons (the build tree), or on PATH.
need_daemons() {
    local bindir role d found
    bindir=$(dirname "$NF_BIN")
    for role in fetcher predictor compute; do
        found=
        for d in "$bindir" "$bindir/../daemons" "$bindir/../daemons/$role"; do
            [ -x "$d/nanoflow-$role" ] && found=1
        done
        command -v "nanoflow-$role" >/dev/null && found=1
        if [ -z "$found" ]; then
            echo "skip: nanoflow-$role is not built (looked beside $NF_BIN, in its ../daemons, on PATH)"
            exit 77
        fi
    done
}

# patch_ctx FILE N: rewrites llama.context_length of the GGUF FILE (128 in stories260K) to N in
# place (a u32; the arithmetic does not read it), so that `up --ctx N` passes the rule that
# refuses a context past the trained length and a generation can run long enough to be
# interrupted. Returns non-zero when the key is not a u32.
patch_ctx() {
    python3 - "$1" "$2" <<'PY'
import struct, sys
b = bytearray(open(sys.argv[1], "rb").read())
key = b"llama.context_length"
i = b.index(struct.pack("<Q", len(key)) + key) + 8 + len(key)
assert struct.unpack_from("<I", b, i)[0] == 4, struct.unpack_from("<I", b, i)  # a uint32
struct.pack_into("<I", b, i + 4, int(sys.argv[2]))
open(sys.argv[1], "wb").write(b)
PY
}

# gen_matches_run GEN RUN GOLDEN [tie]: the stack's `gen --json` output GEN equals `run --json`'s
# RUN token line for token line, with the same prompt_ids, text and gen_ids, and those match the
# first line of GOLDEN: prompt_ids exactly; gen_ids all of them, or with `tie` (random-weight
# models, shared/golden/README.md) up to the first step whose golden top-2 gap is below 0.02.
gen_matches_run() {
    python3 - "$@" <<'PY'
import json, sys
gen = [json.loads(l) for l in open(sys.argv[1], encoding="utf-8")]
run = [json.loads(l) for l in open(sys.argv[2], encoding="utf-8")]
golden = json.loads(open(sys.argv[3]).readline())
tie = len(sys.argv) > 4 and sys.argv[4] == "tie"
assert len(gen) == len(run), (len(gen), len(run))
assert gen[:-1] == run[:-1], "token lines differ"
g, r = gen[-1], run[-1]
assert g["prompt_ids"] == r["prompt_ids"] == golden["prompt_ids"], "prompt_ids"
assert g["gen_ids"] == r["gen_ids"], (g["gen_ids"], r["gen_ids"])
want = golden["gen_ids"]
if tie:
    for s, top in enumerate(golden["top_logits"]):
        if top[0][1] - top[1][1] < 0.02:
            want = want[:s]
            break
    assert g["gen_ids"][:len(want)] == want, (g["gen_ids"], golden["gen_ids"], len(want))
else:
    assert g["gen_ids"] == want, (g["gen_ids"], want)
assert g["text"] == r["text"], "text"
PY
}

# golden_ram_nft NAME MODEL GOLDEN: MODEL (a .gguf, split or not) against llama.cpp's GOLDEN in
# RAM and through the .nft that convert makes of it ($T/NAME.nft, 8 KiB tiles), with
# test_golden ($TG) and its rules for NF_GOLDEN_MODEL; outputs in $T.
golden_ram_nft() {
    local name=$1 m=$2 g=$3 rc
    NF_GOLDEN_MODEL="$m" NF_GOLDEN_FILE="$g" "$TG" >"$T/tg.out" 2>&1
    rc=$?
    check "$name: in RAM matches the golden" $rc
    [ $rc -ne 0 ] && cat "$T/tg.out"
    "$NF_BIN" convert "$m" "$T/$name.nft" --tile-size 8K >/dev/null 2>"$T/err"
    rc=$?
    check "$name: convert exits 0" $rc
    [ $rc -ne 0 ] && cat "$T/err"
    NF_GOLDEN_MODEL="$T/$name.nft" NF_GOLDEN_FILE="$g" "$TG" >"$T/tg.out" 2>&1
    rc=$?
    check "$name: the .nft matches the golden" $rc
    [ $rc -ne 0 ] && cat "$T/tg.out"
}

# golden_stack NAME MODEL GOLDEN: the stack on MODEL (up --ram 256M -t 1 in $T/run-NAME) with
# the golden's first prompt: gen --json must equal run --json and the golden's gen_ids up to its
# first near tie; then down. Outputs in $T.
golden_stack() {
    local name=$1 m=$2 g=$3 rc r="$T/run-$1"
    python3 -c "import json,sys; sys.stdout.write(json.loads(open(sys.argv[1]).readline())['prompt'])" \
        "$g" >"$T/prompt.txt"
    "$NF_BIN" up -m "$m" --ram 256M -t 1 --run-dir "$r" >"$T/up.out" 2>"$T/up.err"
    rc=$?
    check "$name: up exits 0 (rc $rc)" $rc
    if [ $rc -ne 0 ]; then
        cat "$T/up.err"
        return
    fi
    local args=(-f "$T/prompt.txt" -n 24 --temp 0 --json --top-logits 5)
    "$NF_BIN" gen --run-dir "$r" "${args[@]}" >"$T/gen.jsonl" 2>"$T/gen.err"
    check "$name: gen --json exits 0" $?
    "$NF_BIN" run -m "$m" -t 1 "${args[@]}" >"$T/run.jsonl" 2>/dev/null
    check "$name: run --json exits 0" $?
    gen_matches_run "$T/gen.jsonl" "$T/run.jsonl" "$g" tie
    check "$name: gen --json equals run --json and the golden gen_ids" $?
    "$NF_BIN" down --run-dir "$r" >/dev/null 2>"$T/down.err"
    rc=$?
    check "$name: down exits 0" $rc
    [ $rc -ne 0 ] && cat "$T/down.err"
}

# need_stories: sets M0 to the shared stories260K model and G to its llama.cpp golden, or skips
# (exit 77) when either is missing or python3 (which reads the golden's JSON) is not there.
need_stories() {
    M0="$NF_SHARED_DIR/models/stories260K.gguf"
    G="$NF_SHARED_DIR/golden/stories260K.jsonl"
    if [ ! -f "$M0" ] || [ ! -f "$G" ]; then
        echo "skip: $M0 or $G is missing"
        exit 77
    fi
    need_python3 "to read JSON"
}

# gguf_split SRC PREFIX PER: writes PREFIX-0000i-of-0000N.gguf as llama-gguf-split --split
# --split-max-tensors PER does: PER tensors a part in file order, all metadata in the first part,
# split.no (u16), split.count (u16) and split.tensors.count (i32) in every part.
gguf_split() {
    python3 - "$NF_TESTS_DIR" "$@" <<'PY'
import struct, sys
sys.path.insert(0, sys.argv.pop(1))
from gguf_lib import Gguf  # tests/gguf_lib.py
def split(src, prefix, per):
    d = open(src, 'rb').read()
    g = Gguf(d, src)
    ts = [[t.name, t.ne, t.ty, t.off] for t in g.tensors]
    ends = sorted(t[3] for t in ts) + [len(d) - g.base]
    for t in ts:
        t.append(min(e for e in ends if e > t[3]) - t[3])  # data span incl. padding
    parts = [ts[i:i + per] for i in range(0, len(ts), per)]
    n, align = len(parts), g.align
    def kv(key, t, fmt, v):
        return struct.pack('<Q', len(key)) + key + struct.pack('<I' + fmt, t, v)
    for i, pt in enumerate(parts):
        keys = (g.kvs if i == 0 else []) + [kv(b'split.no', 2, 'H', i), kv(b'split.count', 2, 'H', n),
                                            kv(b'split.tensors.count', 5, 'i', len(ts))]
        info, data = b'', b''
        for name, ne, ty, off, size in pt:
            data += b'\0' * (-len(data) % align)
            info += struct.pack('<Q', len(name)) + name + struct.pack('<I', len(ne))
            info += struct.pack('<%dQ' % len(ne), *ne) + struct.pack('<IQ', ty, len(data))
            data += d[g.base + off:g.base + off + size]
        head = b'GGUF' + struct.pack('<IQQ', g.version, len(pt), len(keys)) + b''.join(keys) + info
        head += b'\0' * (-len(head) % align)
        open('%s-%05d-of-%05d.gguf' % (prefix, i + 1, n), 'wb').write(head + data)
split(sys.argv[1], sys.argv[2], int(sys.argv[3]))
PY
}

# Speculative decoding's tests (test_spec_stack.sh, test_spec_draft.sh):
# spec_same_ids A B [STOP]: the summaries of two --json outputs have the same gen_ids and text (and
# stop STOP when given).
spec_same_ids() {
    python3 - "$@" <<'PY'
import json, sys
a = json.loads(open(sys.argv[1]).read().splitlines()[-1])
b = json.loads(open(sys.argv[2]).read().splitlines()[-1])
assert a["gen_ids"] == b["gen_ids"], (a["gen_ids"], b["gen_ids"])
assert a["text"] == b["text"]
if len(sys.argv) > 3:
    assert a["stop"] == b["stop"] == sys.argv[3], (a["stop"], b["stop"])
PY
}

# spec_drafted FILE MIN: the summary of FILE reports drafted >= MIN, accepted <= drafted and the rate.
spec_drafted() {
    python3 - "$1" "$2" <<'PY'
import json, sys
s = json.loads(open(sys.argv[1]).read().splitlines()[-1])
assert s["drafted"] >= int(sys.argv[2]), s
assert 0 <= s["accepted"] <= s["drafted"], s
assert abs(s["accept_rate"] - (s["accepted"] / s["drafted"] if s["drafted"] else 0)) < 1e-3, s
PY
}
