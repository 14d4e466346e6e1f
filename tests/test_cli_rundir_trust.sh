#!/usr/bin/env bash
# test_cli_rundir_trust.sh - hostile run directories (issue 9, item 1): another user's directory,
# world-writable ones, a world-writable non-sticky parent, symlinked parents, a socket served by
# another user, and pid files naming processes that are not the stack's daemons. Each must be
# refused with one line naming the path and what is wrong, exit non-zero, send nothing to the
# hostile server and signal nothing (the `sleep` named by the pid files survives).
# Needs root (to create a second user, removed at the end); skips with 77 otherwise.
set -u
: "${NF_BIN:?NF_BIN must point to nanoflowctl}"
. "$(dirname "$0")/lib.sh" # check
if [ "$(id -u)" -ne 0 ] || ! command -v useradd >/dev/null || ! command -v python3 >/dev/null; then
    echo "skip: needs root, useradd and python3 (to make a second user and a hostile server)"
    exit 77
fi
OTHER="nftrust$$"
if ! useradd --system --no-create-home --shell /usr/sbin/nologin "$OTHER" 2>/dev/null; then
    echo "skip: cannot create the user $OTHER"
    exit 77
fi
OUID=$(id -u "$OTHER")
T=$(mktemp -d /tmp/nf-trust-XXXXXX)
SLEEPER= SERVER=
cleanup() {
    [ -n "$SLEEPER" ] && kill "$SLEEPER" 2>/dev/null
    [ -n "$SERVER" ] && kill "$SERVER" 2>/dev/null
    wait 2>/dev/null
    rm -rf "$T"
    userdel "$OTHER" 2>/dev/null
}
trap cleanup EXIT

# expect NAME WANT_RC PATTERN CMD...: runs CMD, checks its exit code and that stderr matches;
# also that stderr is one line.
EXPECT_TIMEOUT=60 # a refused command must not hang the test

# every_cmd NAME PATTERN DIR: status, stats, gen and down all refuse DIR with PATTERN, exit 1.
every_cmd() {
    expect "$1: status" 1 "$2" "$NF_BIN" status --run-dir "$3"
    expect "$1: stats" 1 "$2" "$NF_BIN" stats --run-dir "$3"
    expect "$1: gen" 1 "$2" "$NF_BIN" gen --run-dir "$3" -n 1 "Once upon"
    expect "$1: down" 1 "$2" "$NF_BIN" down --run-dir "$3"
}

sleep 300 &
SLEEPER=$!
# plant DIR: pid files in DIR naming the sleep.
plant() {
    local r
    for r in fetcher predictor compute; do echo "$SLEEPER" >"$1/$r.pid"; done
}
sleeper_alive() {
    kill -0 "$SLEEPER" 2>/dev/null
    check "$1: the sleep named by the pid files was not signalled" $?
}

# 1. Another user's run directory (what /tmp/nanoflow-UID looks like when someone made it
#    first): refused naming the owner, not "no stack running".
A="$T/other"
mkdir -m 0700 "$A"
plant "$A"
chown -R "$OTHER" "$A"
every_cmd "other owner" "$A is owned by uid $OUID ($OTHER)" "$A"
expect "other owner: up" 1 "$A is owned by uid $OUID" "$NF_BIN" up -m /nonexistent.gguf \
    --run-dir "$A"
sleeper_alive "other owner"

# 2. A world-writable run directory (with or without the sticky bit).
B="$T/ww"
mkdir "$B"
plant "$B"
chmod 0777 "$B"
every_cmd "world-writable" "$B is writable by everyone (mode 0777)" "$B"
chmod 1777 "$B"
expect "world-writable sticky: status" 1 "$B is writable by everyone (mode 1777)" \
    "$NF_BIN" status --run-dir "$B"
chmod 0770 "$B"
expect "group-writable: status" 1 "$B is writable by its group (mode 0770)" \
    "$NF_BIN" status --run-dir "$B"
sleeper_alive "world-writable"

# 3. Under a world-writable parent that is not sticky (anyone may rename the run dir away and
#    put their own in its place); a sticky one (/tmp) is fine.
P="$T/pub"
mkdir -p "$P/run"
chmod 0700 "$P/run"
plant "$P/run"
chmod 0777 "$P"
every_cmd "world-writable parent" "$P is writable by everyone (mode 0777) and not sticky" "$P/run"
expect "world-writable parent: up" 1 "$P is writable by everyone" "$NF_BIN" up \
    -m /nonexistent.gguf --run-dir "$P/run"
chmod 1777 "$P"
rm -f "$P/run/"*.pid
expect "sticky parent accepted" 1 "no stack running in $P/run" "$NF_BIN" status --run-dir "$P/run"
sleeper_alive "world-writable parent"

# 4. Through a symlinked parent: one the other user made, and one root made in a directory
#    everyone may write to (only a link only root could have placed, such as /var/run, counts).
mkdir -p "$T/real/run"
chmod 0700 "$T/real/run"
plant "$T/real/run"
ln -s "$T/real" "$T/link-other"
chown -h "$OTHER" "$T/link-other"
every_cmd "symlink by another user" "$T/link-other is a symbolic link" "$T/link-other/run"
ln -s "$T/real" "$P/link-root"
expect "root's symlink in a sticky world-writable dir: status" 1 "$P/link-root is a symbolic link" \
    "$NF_BIN" status --run-dir "$P/link-root/run"
expect "root's symlink in a sticky world-writable dir: down" 1 "$P/link-root is a symbolic link" \
    "$NF_BIN" down --run-dir "$P/link-root/run"
sleeper_alive "symlinked parent"

# 5. A sound run directory whose pid files name the sleep (a crash and pid reuse, or a planted
#    file) and no socket: down refuses to signal it and says so.
R="$T/run"
mkdir -m 0700 "$R"
plant "$R"
expect "pid file, no socket: down" 1 "names pid $SLEEPER but no fetcher socket is there to confirm" \
    "$NF_BIN" down --run-dir "$R"
sleeper_alive "pid file without a socket"

# A server on ROLE.sock in DIR: python3 binds the socket as root, then listens as UID (the
# credentials SO_PEERCRED reports are taken at listen time); answers each connection's first
# frame with a Hello and appends the number of bytes each connection sent to DIR/received.
start_server() {
    rm -f "$1/received"
    python3 - "$1/$2.sock" "$3" "$1/received" <<'EOF' &
import os, socket, struct, sys
path, uid, log = sys.argv[1], int(sys.argv[2]), sys.argv[3]
out = open(log, "a")
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
s.bind(path)
if uid:
    os.setgid(uid); os.setuid(uid)
s.listen(16)
hello = b"\x08\x01\x1a\x07fetcher"
env = b"\x12" + bytes([len(hello)]) + hello
while True:
    c, _ = s.accept()
    n = 0
    while True:
        b = c.recv(65536)
        if not b:
            break
        if n == 0:
            c.sendall(struct.pack("<I", len(env)) + env)
        n += len(b)
    c.close()
    out.write("%d\n" % n)
    out.flush()
EOF
    SERVER=$!
    for _ in $(seq 100); do [ -S "$1/$2.sock" ] && break; sleep 0.05; done
    sleep 0.2
}
stop_server() {
    kill "$SERVER" 2>/dev/null
    wait "$SERVER" 2>/dev/null
    SERVER=
    rm -f "$1"/*.sock
}

# 6. A socket served by another user (a planted socket): nothing is sent to it.
start_server "$R" compute "$OUID"
for role in fetcher predictor; do ln -s compute.sock "$R/$role.sock"; done
plant "$R"
every_cmd "socket of another user" "is served by uid $OUID" "$R"
sleeper_alive "socket of another user"
got=$(awk '{s += $1} END {print s + 0}' "$R/received" 2>/dev/null || echo 0)
[ "$got" -eq 0 ]
check "socket of another user: it received nothing (got $got bytes)" $?
stop_server "$R"

# 7. A socket served by us whose peer is not the pid in the pid file, and then one whose peer
#    is that pid but not the daemon's binary: down sends Shutdown but signals neither.
start_server "$R" fetcher 0
plant "$R"
expect "pid file names another process than the socket's: down" 1 \
    "names pid $SLEEPER but the fetcher socket is served by pid $SERVER" \
    "$NF_BIN" down --run-dir "$R"
sleeper_alive "peer pid mismatch"
stop_server "$R"
start_server "$R" fetcher 0
echo "$SERVER" >"$R/fetcher.pid"
expect "socket peer is not nanoflow-fetcher: down" 1 "pid $SERVER is .*python.*, not nanoflow-fetcher" \
    "$NF_BIN" down --run-dir "$R"
kill -0 "$SERVER" 2>/dev/null
check "socket peer is not nanoflow-fetcher: it was not signalled" $?
stop_server "$R"

# 8. The daemons refuse a hostile run directory themselves.
FETCHER="$(dirname "$NF_BIN")/../daemons/nanoflow-fetcher"
if [ -x "$FETCHER" ]; then
    P2="$T/pub2"
    mkdir -m 0777 "$P2"
    chmod 0777 "$P2"
    expect "fetcher refuses a world-writable parent" 1 "$P2 is writable by everyone" \
        "$FETCHER" --foreground --run-dir "$P2/run" --model /nonexistent.nft
fi

exit $fail
