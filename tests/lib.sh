# lib.sh - what the shell tests share; source it with . "$(dirname "$0")/lib.sh".
# Not a test itself (ctest registers tests/test_*.sh only).

fail=0

# check NAME STATUS: prints "ok: NAME" when STATUS is 0, else "FAIL: NAME" and sets fail=1.
check() {
    if [ "$2" -ne 0 ]; then
        echo "FAIL: $1"
        fail=1
    else
        echo "ok: $1"
    fi
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
# interrupted. Returns non-zero when the key is not the expected u32 128.
patch_ctx() {
    python3 - "$1" "$2" <<'PY'
import struct, sys
b = bytearray(open(sys.argv[1], "rb").read())
key = b"llama.context_length"
i = b.index(struct.pack("<Q", len(key)) + key) + 8 + len(key)
assert struct.unpack_from("<II", b, i) == (4, 128), struct.unpack_from("<II", b, i)
struct.pack_into("<I", b, i + 4, int(sys.argv[2]))
open(sys.argv[1], "wb").write(b)
PY
}
