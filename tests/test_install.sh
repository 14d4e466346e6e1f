#!/usr/bin/env bash
# test_install.sh - `cmake --install` into a staging prefix: layout, units naming the staged
# paths, systemd-analyze verify, nanoflow-config, the daemons started exactly as the units say
# (no systemd needed), and the installed nanoflowctl's up/gen/down on stories260K.
set -u
. "$(dirname "$0")/lib.sh"
: "${NF_BIN:?NF_BIN must point to nanoflowctl}"
: "${NF_BUILD_DIR:?NF_BUILD_DIR must point to the build directory}"
: "${NF_SHARED_DIR:?NF_SHARED_DIR must point to the shared directory}"
M0="$NF_SHARED_DIR/models/stories260K.gguf"
if [ ! -f "$M0" ]; then
    echo "skip: $M0 is missing"
    exit 77
fi
need_python3 "to read the units"
for role in fetcher predictor compute; do
    if [ ! -x "$NF_BUILD_DIR/daemons/nanoflow-$role" ]; then
        echo "skip: nanoflow-$role is not built in $NF_BUILD_DIR/daemons"
        exit 77
    fi
done
T=$(mktemp -d)
P="$T/prefix"
R="$T/run-units"
R2="$T/run-up"
cleanup() {
    "$P/bin/nanoflowctl" down --run-dir "$R" >/dev/null 2>&1
    "$P/bin/nanoflowctl" down --run-dir "$R2" >/dev/null 2>&1
    rm -rf "$T"
}
trap cleanup EXIT
export XDG_CACHE_HOME="$T/cache"

# 1. Install into the staging prefix.
cmake --install "$NF_BUILD_DIR" --prefix "$P" >"$T/install.log" 2>&1
rc=$?
check "cmake --install --prefix exits 0" $rc
if [ $rc -ne 0 ]; then
    cat "$T/install.log"
    exit 1
fi
for b in nanoflowctl nanoflow-fetcher nanoflow-predictor nanoflow-compute nanoflow-gateway; do
    [ -f "$P/bin/$b" ] && [ -x "$P/bin/$b" ]
    check "bin/$b is installed and executable" $?
done
[ -x "$P/sbin/nanoflow-config" ]
check "sbin/nanoflow-config is installed and executable" $?
[ -f "$P/etc/nanoflow/nanoflow.conf" ] && grep -q '^NANOFLOW_MODEL=' "$P/etc/nanoflow/nanoflow.conf" &&
    grep -q '^NANOFLOW_RAM=' "$P/etc/nanoflow/nanoflow.conf"
check "etc/nanoflow/nanoflow.conf is the default configuration" $?
[ -f "$P/share/doc/nanoflow/README.deploy.md" ]
check "share/doc/nanoflow/README.deploy.md is installed" $?
U="$P/lib/systemd/system"
for u in nanoflow.target nanoflow.slice nanoflow-fetcher.service nanoflow-predictor.service \
    nanoflow-compute.service nanoflow-gateway.service; do
    [ -f "$U/$u" ] && ! grep -q '@NF_' "$U/$u"
    check "lib/systemd/system/$u is installed with every @NF_...@ substituted" $?
done
for role in fetcher predictor compute; do
    f="$U/nanoflow-$role.service"
    grep -q "^ExecStart=$P/bin/nanoflow-$role --foreground " "$f" &&
        grep -q "^EnvironmentFile=$P/etc/nanoflow/nanoflow.conf$" "$f" &&
        grep -q '^Slice=nanoflow.slice$' "$f" && grep -q '^PartOf=nanoflow.target$' "$f"
    check "nanoflow-$role.service runs $P/bin/nanoflow-$role with the staged config in the slice" $?
done
for role in predictor compute; do
    f="$U/nanoflow-$role.service"
    grep -q '^BindsTo=nanoflow-fetcher.service$' "$f" && grep -q '^After=nanoflow-fetcher.service$' "$f"
    check "nanoflow-$role.service is bound to and ordered after the fetcher" $?
done
grep -q '^MemoryMax=' "$U/nanoflow.slice"
check "nanoflow.slice sets MemoryMax=" $?
f="$U/nanoflow-gateway.service"
grep -q "^ExecStart=$P/bin/nanoflow-gateway --foreground .* --http \${NANOFLOW_HTTP} " "$f" &&
    grep -q '^ExecCondition=.*NANOFLOW_HTTP' "$f" && grep -q '^BindsTo=nanoflow-fetcher.service$' "$f" &&
    grep -q '^Wants=nanoflow-gateway.service$' "$U/nanoflow.target"
check "nanoflow-gateway.service runs the HTTP front only when NANOFLOW_HTTP is set" $?
# A second install keeps an edited configuration and puts the default beside it.
echo "# edited" >>"$P/etc/nanoflow/nanoflow.conf"
cmake --install "$NF_BUILD_DIR" --prefix "$P" >/dev/null 2>&1 &&
    tail -n 1 "$P/etc/nanoflow/nanoflow.conf" | grep -qx "# edited" &&
    [ -f "$P/etc/nanoflow/nanoflow.conf.default" ]
check "reinstall keeps the edited nanoflow.conf (default as nanoflow.conf.default)" $?

# 2. systemd-analyze verify: syntax, dependencies between the units, ExecStart paths exist.
if command -v systemd-analyze >/dev/null; then
    (cd "$U" && systemd-analyze verify ./nanoflow.target ./nanoflow.slice ./nanoflow-fetcher.service \
        ./nanoflow-predictor.service ./nanoflow-compute.service ./nanoflow-gateway.service) \
        >"$T/verify.out" 2>&1
    rc=$?
    # Warnings (unknown keys, bad values) do not change the exit status: they fail the test too.
    [ $rc -eq 0 ] && [ ! -s "$T/verify.out" ]
    check "systemd-analyze verify passes without a warning" $?
    [ -s "$T/verify.out" ] && cat "$T/verify.out"
else
    echo "note: systemd-analyze not found (apt-get install systemd): verify skipped"
fi

# 3. nanoflow-config: refusals, then the config and slice drop-in for stories260K.
NC="$P/sbin/nanoflow-config"
"$NC" --model "$M0" --ram 12Q --no-reload >/dev/null 2>"$T/err"
[ $? -eq 1 ] && grep -q -- "--ram" "$T/err"
check "nanoflow-config refuses a bad --ram" $?
"$NC" --model "$M0" --sparsity 1 --no-reload >/dev/null 2>"$T/err"
[ $? -eq 1 ] && grep -q -- "--sparsity" "$T/err"
check "nanoflow-config refuses --sparsity 1" $?
"$NC" --model "$T/none.gguf" --no-reload >/dev/null 2>"$T/err"
[ $? -eq 1 ] && grep -q "none.gguf" "$T/err"
check "nanoflow-config refuses a missing model" $?
"$NC" --model "$M0" --http nowhere --no-reload >/dev/null 2>"$T/err"
[ $? -eq 1 ] && grep -q -- "--http" "$T/err"
check "nanoflow-config refuses a bad --http" $?
"$NC" --model "$M0" --ram 256M -t 1 --ctx 512 --run-dir "$R" --no-reload >"$T/nc.out" 2>&1
rc=$?
check "nanoflow-config writes the configuration" $rc
[ $rc -ne 0 ] && cat "$T/nc.out"
grep -qx "NANOFLOW_HTTP=" "$P/etc/nanoflow/nanoflow.conf"
check "the HTTP front is off by default (NANOFLOW_HTTP empty)" $?
NFT="$P/var/lib/nanoflow/stories260K.nft"
[ -f "$NFT" ] && grep -qx "NANOFLOW_MODEL=$NFT" "$P/etc/nanoflow/nanoflow.conf" &&
    grep -qx "NANOFLOW_RAM=268435456" "$P/etc/nanoflow/nanoflow.conf" &&
    grep -qx "NANOFLOW_RUN_DIR=$R" "$P/etc/nanoflow/nanoflow.conf"
check "the .gguf is converted to the state dir and the config names it, 256M in bytes" $?
grep -qx "MemoryMax=268435456" "$P/etc/systemd/system/nanoflow.slice.d/memory.conf"
check "the slice drop-in sets MemoryMax= to the budget" $?
"$NC" --check
check "nanoflow-config --check accepts the matching budget" $?
sed -i 's/^NANOFLOW_RAM=.*/NANOFLOW_RAM=512M/' "$P/etc/nanoflow/nanoflow.conf"
"$NC" --check 2>"$T/err"
[ $? -eq 1 ] && grep -q "MemoryMax" "$T/err"
check "nanoflow-config --check refuses a budget edited by hand" $?
sed -i 's/^NANOFLOW_RAM=.*/NANOFLOW_RAM=256M/' "$P/etc/nanoflow/nanoflow.conf"

# 4. The three daemons started as systemd would: Environment= defaults, EnvironmentFile=,
#    ExecStartPre=, ExecStart= with ${VAR} (one argument) and $VAR (split) expanded; all at
#    once (Type=simple), so predictor and compute must wait for the fetcher's region.
python3 - "$U" "$T" >"$T/units.out" 2>&1 <<'PY' &
import os, re, shlex, subprocess, sys
unitdir, tmp = sys.argv[1], sys.argv[2]

def service(role):
    env, files, pre, start = {}, [], [], None
    for line in open(f"{unitdir}/nanoflow-{role}.service"):
        line = line.strip()
        if "=" not in line or line.startswith("#"):
            continue
        k, v = line.split("=", 1)
        if k == "Environment":
            env.update(w.split("=", 1) for w in shlex.split(v))
        elif k == "EnvironmentFile":
            files.append(v.lstrip("-"))
        elif k == "ExecStartPre":
            pre.append(v)
        elif k == "ExecStart":
            start = v
    for f in files:
        for l in open(f):
            l = l.strip()
            if l and not l.startswith("#") and "=" in l:
                k, v = l.split("=", 1)
                env[k] = v
    return env, pre, start

def expand(cmd, env):
    out = []
    for w in cmd.split():
        m = re.fullmatch(r"\$\{(\w+)\}", w)
        if m:
            out.append(env.get(m.group(1), ""))
            continue
        m = re.fullmatch(r"\$(\w+)", w)
        if m:
            out += env.get(m.group(1), "").split()
            continue
        out.append(re.sub(r"\$\{(\w+)\}", lambda mm: env.get(mm.group(1), ""), w))
    return out

procs = []
for role in ("fetcher", "predictor", "compute"):
    env, pre, start = service(role)
    full = dict(os.environ, **env)
    for c in pre:
        subprocess.run(expand(c, env), env=full, check=True)
    argv = expand(start, env)
    print(role, " ".join(argv))
    log = open(f"{tmp}/{role}.journal", "w")
    p = subprocess.Popen(argv, env=full, stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                         start_new_session=True)
    procs.append((role, p))
    print(role, "pid", p.pid, flush=True)
# Like systemd, stay the parent: report how each daemon ends (a clean stop exits 0).
for role, p in procs:
    print(role, "exit", p.wait(), flush=True)
PY
UNITS_PID=$!
for _ in $(seq 100); do
    [ "$(grep -c ' pid ' "$T/units.out")" -eq 3 ] && break
    kill -0 $UNITS_PID 2>/dev/null || break
    sleep 0.1
done
[ "$(grep -c ' pid ' "$T/units.out")" -eq 3 ]
check "the units' commands start (ExecStartPre passes)" $?
cat "$T/units.out"
ready=1
for _ in $(seq 600); do
    if "$P/bin/nanoflowctl" status --run-dir "$R" >"$T/status.out" 2>&1; then
        ready=0
        break
    fi
    sleep 0.1
done
check "the unit-started stack reports three ready daemons" $ready
if [ $ready -ne 0 ]; then
    cat "$T/status.out"
    for role in fetcher predictor compute; do
        echo "--- $role"
        tail -n 5 "$T/$role.journal"
    done
fi
ARGS=(-p "Once upon a time" --temp 0 -n 24)
"$P/bin/nanoflowctl" gen --run-dir "$R" "${ARGS[@]}" >"$T/gen.txt" 2>"$T/gen.err"
check "gen on the unit-started stack exits 0" $?
"$P/bin/nanoflowctl" run -m "$M0" -t 1 "${ARGS[@]}" >"$T/run.txt" 2>/dev/null
[ -s "$T/gen.txt" ] && cmp -s "$T/gen.txt" "$T/run.txt"
check "its text equals the installed nanoflowctl run (exact mode)" $?
"$P/bin/nanoflowctl" down --run-dir "$R" >/dev/null 2>&1
check "down stops the unit-started stack" $?
gone=1
for _ in $(seq 200); do
    if ! kill -0 $UNITS_PID 2>/dev/null; then
        gone=0
        break
    fi
    sleep 0.1
done
wait $UNITS_PID 2>/dev/null
[ $gone -eq 0 ] && [ "$(grep -c ' exit 0$' "$T/units.out")" -eq 3 ] && [ ! -e "$R/fetcher.sock" ]
check "the three daemons exited 0 and left no socket" $?
[ $gone -eq 0 ] || kill $UNITS_PID 2>/dev/null
grep " exit " "$T/units.out"

# 5. The installed nanoflowctl: --help, then up (daemons found beside it in bin/), gen, down.
"$P/bin/nanoflowctl" --help >"$T/help.out" 2>&1 && grep -q "up" "$T/help.out"
check "installed nanoflowctl --help" $?
cp "$M0" "$T/m.gguf"
# --ctx 128: stories260K's trained context (up refuses a longer one).
"$P/bin/nanoflowctl" up -m "$T/m.gguf" --ram 256M -t 1 --ctx 128 --run-dir "$R2" >"$T/up.out" 2>&1
rc=$?
check "installed nanoflowctl up exits 0" $rc
[ $rc -ne 0 ] && cat "$T/up.out"
for role in fetcher predictor compute; do
    pid=$(cat "$R2/$role.pid" 2>/dev/null)
    [ -n "$pid" ] && [ "$(readlink "/proc/$pid/exe")" = "$(readlink -f "$P/bin/nanoflow-$role")" ]
    check "up runs the installed $P/bin/nanoflow-$role" $?
done
"$P/bin/nanoflowctl" gen --run-dir "$R2" "${ARGS[@]}" >"$T/gen2.txt" 2>/dev/null
[ $? -eq 0 ] && cmp -s "$T/gen2.txt" "$T/run.txt"
check "gen on the up-started stack produces the same tokens" $?
"$P/bin/nanoflowctl" down --run-dir "$R2" >/dev/null 2>&1 && [ ! -e "$R2/compute.sock" ]
check "down stops it" $?
exit $fail
