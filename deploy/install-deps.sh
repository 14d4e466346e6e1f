#!/usr/bin/env bash
# install-deps.sh - installs NanoFlow's build and test dependencies from Debian (run as root).
set -euo pipefail
pkgs=(build-essential cmake pkg-config libuv1-dev libprotobuf-c-dev protobuf-c-compiler
      liburing-dev libnuma-dev libcmocka-dev libxxhash-dev
      libjansson-dev libhttp-parser-dev # the HTTP front (nanoflow-gateway): JSON and HTTP/1.1
      dpkg-dev file python3 # python3 reads JSON in the shell tests; dpkg-shlibdeps and file compute the .deb's Depends (cpack -G DEB)
      strace # test_stack_liveness holds a daemon's exit with it
      clang-format cppcheck) # tests/run.sh checks the format and runs cppcheck before it builds
# clang builds the libFuzzer targets; the tests use it when present.
if [ "${NF_WITH_CLANG:-1}" = 1 ]; then pkgs+=(clang libclang-rt-14-dev); fi
# Chromium drives the chat page in test_http_browser (headless, with playwright-core from npm).
# It is large (~300 MB installed), so only on request (NF_WITH_BROWSER=1) or in CI (CI=true);
# without it that test is skipped (exit 77) saying so.
if [ "${NF_WITH_BROWSER:-0}" = 1 ] || [ "${CI:-}" = true ]; then pkgs+=(chromium); fi
missing=()
for p in "${pkgs[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -eq 0 ]; then
    echo "install-deps: all dependencies present"
    exit 0
fi
if [ "$(id -u)" != 0 ]; then
    echo "install-deps: missing ${missing[*]}; run as root or: sudo apt-get install -y ${missing[*]}" >&2
    exit 1
fi
export DEBIAN_FRONTEND=noninteractive
# Another apt or dpkg (unattended-upgrades on a fresh machine) may hold the lock: wait for it
# (up to 10 minutes) instead of failing at once.
lock=(-o DPkg::Lock::Timeout=600)
apt-get "${lock[@]}" update -qq
apt-get "${lock[@]}" install -y -qq --no-install-recommends "${missing[@]}"
