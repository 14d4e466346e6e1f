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
