# http_lib.sh - what the HTTP front's tests share (source after lib.sh). Not a test itself.

# The tests call python3 often to read JSON: the system's starts in a tenth of the time a
# version manager's shim takes, which keeps each test within its time.
if [ -x /usr/bin/python3 ]; then
    PATH="/usr/bin:$PATH"
fi

# need_gateway: skips (exit 77) unless nanoflow-gateway is built where `up` looks for it (its
# path then in GW_FOUND), and curl is there.
need_gateway() {
    local bindir d
    bindir=$(dirname "$NF_BIN")
    for d in "$bindir" "$bindir/../daemons" "$bindir/../daemons/gateway"; do
        [ -x "$d/nanoflow-gateway" ] && [ -z "${GW_FOUND:-}" ] && GW_FOUND="$d/nanoflow-gateway"
    done
    [ -z "${GW_FOUND:-}" ] && command -v nanoflow-gateway >/dev/null && GW_FOUND=$(command -v nanoflow-gateway)
    if [ -z "${GW_FOUND:-}" ]; then
        echo "skip: nanoflow-gateway is not built"
        exit 77
    fi
    if ! command -v curl >/dev/null; then
        echo "skip: curl is needed"
        exit 77
    fi
}

# free_port: a TCP port on 127.0.0.1 that nothing listens on right now.
free_port() {
    python3 -c "import socket; s=socket.socket(); s.bind(('127.0.0.1',0)); print(s.getsockname()[1])"
}

# http_tmp: a test's scratch (stack_tmp: T, XDG_CACHE_HOME, every stack brought down on exit),
# R the run directory of its stack, PORT a free port and U the front's base URL there.
http_tmp() {
    stack_tmp
    R="$T/run-http"
    PORT=$(free_port)
    U="http://127.0.0.1:$PORT"
}

# jget FILE EXPR: prints the Python expression EXPR evaluated on the JSON in FILE (as d).
jget() {
    python3 -c "import json,sys; d=json.load(open(sys.argv[1])); print($2)" "$1"
}

# sse_text FILE: the text of a Server-Sent Events completion stream (completions' choices[0].text
# or chat's delta.content joined), after checking that it ends with data: [DONE]; then a line
# with the finish reason.
sse_text() {
    python3 - "$1" <<'PY'
import json, sys
events = [l[6:] for l in open(sys.argv[1], encoding="utf-8").read().split("\n") if l.startswith("data: ")]
assert events and events[-1] == "[DONE]", events[-3:]
text, fin = "", None
for e in events[:-1]:
    d = json.loads(e)
    for c in d["choices"]:
        text += c.get("text") or c.get("delta", {}).get("content") or ""
        fin = c["finish_reason"] or fin
sys.stdout.write(text + "\n" + str(fin))
PY
}

# http_up ARGS...: `nanoflowctl up --run-dir $R --http 127.0.0.1:$PORT ARGS...` (T, R and PORT
# set by http_tmp), checked; on failure its stderr is shown and the test ends (exit 1).
http_up() {
    "$NF_BIN" up --run-dir "$R" --http "127.0.0.1:$PORT" "$@" >"$T/up.out" 2>"$T/up.err"
    local rc=$?
    check "up --http $* exits 0" $rc
    if [ $rc -ne 0 ]; then
        cat "$T/up.err"
        exit 1
    fi
}
