#!/usr/bin/env bash
# test_deb.sh - CPack builds nanoflow_VERSION_ARCH.deb: control fields (Depends computed or listed),
# contents under /usr and /etc, units naming /usr/bin, the conffile, maintainer scripts that
# succeed without systemd; the packaged nanoflowctl runs.
set -u
. "$(dirname "$0")/lib.sh"
: "${NF_BUILD_DIR:?NF_BUILD_DIR must point to the build directory}"
for t in cpack dpkg-deb; do
    if ! command -v $t >/dev/null; then
        echo "skip: $t not found"
        exit 77
    fi
done
if [ ! -f "$NF_BUILD_DIR/CPackConfig.cmake" ]; then
    echo "skip: $NF_BUILD_DIR/CPackConfig.cmake is missing (configure with deploy/)"
    exit 77
fi
T=$(mktemp -d)
trap 'rm -rf "$T"' EXIT
VERSION=$(sed -n 's/^CMAKE_PROJECT_VERSION:[A-Z]*=//p' "$NF_BUILD_DIR/CMakeCache.txt")
ARCH=$(dpkg --print-architecture)
(cd "$NF_BUILD_DIR" && cpack -G DEB --config CPackConfig.cmake -B "$T/out") >"$T/cpack.log" 2>&1
rc=$?
check "cpack -G DEB exits 0" $rc
DEB="$T/out/nanoflow_${VERSION}_${ARCH}.deb"
[ -f "$DEB" ]
check "it wrote nanoflow_${VERSION}_${ARCH}.deb" $?
if [ $rc -ne 0 ] || [ ! -f "$DEB" ]; then
    tail -n 20 "$T/cpack.log"
    ls "$T/out"
    exit 1
fi

# Control fields.
dpkg-deb -f "$DEB" >"$T/control"
field() { sed -n "s/^$1: //p" "$T/control"; }
[ "$(field Package)" = nanoflow ] && [ "$(field Version)" = "$VERSION" ] &&
    [ "$(field Architecture)" = "$ARCH" ]
check "Package nanoflow, Version $VERSION, Architecture $ARCH" $?
[ -n "$(field Maintainer)" ] && [ -n "$(field Description)" ] && [ -n "$(field Installed-Size)" ]
check "Maintainer, Description and Installed-Size are set" $?
deps=$(field Depends)
for lib in libc6 libuv1 libprotobuf-c1 liburing2 libnuma1 libxxhash0; do
    echo "$deps" | grep -q "\b$lib\b"
    check "Depends names $lib" $?
done
echo "Depends: $deps"

# Contents.
dpkg-deb -c "$DEB" | awk '{print $6}' | sed 's#^\./#/#' >"$T/files"
for f in /usr/bin/nanoflowctl /usr/bin/nanoflow-fetcher /usr/bin/nanoflow-predictor \
    /usr/bin/nanoflow-compute /usr/sbin/nanoflow-config /usr/lib/systemd/system/nanoflow.target \
    /usr/lib/systemd/system/nanoflow.slice /usr/lib/systemd/system/nanoflow-fetcher.service \
    /usr/lib/systemd/system/nanoflow-predictor.service /usr/lib/systemd/system/nanoflow-compute.service \
    /etc/nanoflow/nanoflow.conf /usr/share/doc/nanoflow/README.deploy.md; do
    grep -qx "$f" "$T/files"
    check "the package holds $f" $?
done
! grep -v -e '^/usr/' -e '^/etc/' -e '^/$' -e '^/usr$' -e '^/etc$' "$T/files" | grep -q .
check "everything is under /usr or /etc" $?
! grep -q -e '/_CPack_Packages/' -e '^/usr/etc' "$T/files"
check "no staging path or /usr/etc in it" $?
dpkg-deb -c "$DEB" | awk '$6 ~ /usr\/bin\/nanoflow/ && $1 !~ /^-rwx/ {bad = 1} END {exit bad}'
check "the binaries are executable" $?

# Units and helper name the installed paths.
dpkg-deb -x "$DEB" "$T/x"
for role in fetcher predictor compute; do
    f="$T/x/usr/lib/systemd/system/nanoflow-$role.service"
    grep -q "^ExecStart=/usr/bin/nanoflow-$role --foreground " "$f" &&
        grep -qx "EnvironmentFile=/etc/nanoflow/nanoflow.conf" "$f"
    check "nanoflow-$role.service runs /usr/bin/nanoflow-$role with /etc/nanoflow/nanoflow.conf" $?
done
grep -qx 'ExecStartPre=/usr/sbin/nanoflow-config --check' "$T/x/usr/lib/systemd/system/nanoflow-fetcher.service" &&
    grep -qx 'SYSCONFDIR="/etc"' "$T/x/usr/sbin/nanoflow-config" &&
    grep -qx 'STATEDIR="/var/lib/nanoflow"' "$T/x/usr/sbin/nanoflow-config"
check "nanoflow-config uses /etc and /var/lib/nanoflow" $?
"$T/x/usr/bin/nanoflowctl" --help >/dev/null 2>&1
check "the packaged nanoflowctl runs" $?

# Maintainer scripts: the conffile, and scripts that succeed without systemd.
dpkg-deb -e "$DEB" "$T/ctl"
grep -qx /etc/nanoflow/nanoflow.conf "$T/ctl/conffiles"
check "/etc/nanoflow/nanoflow.conf is a conffile" $?
for s in postinst prerm postrm; do
    [ -x "$T/ctl/$s" ] && sh -n "$T/ctl/$s" && grep -q '/run/systemd/system' "$T/ctl/$s"
    check "$s is executable, valid sh, and calls systemctl only under systemd" $?
done
if [ ! -d /run/systemd/system ]; then
    sh "$T/ctl/postinst" configure && sh "$T/ctl/prerm" remove
    check "postinst configure and prerm remove succeed without systemd" $?
fi
exit $fail
