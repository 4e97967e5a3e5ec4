#!/usr/bin/env bash
# Set up a fresh Debian/Ubuntu machine for patchbay: system packages, a virtualenv in .venv/,
# and the C core built into it. Safe to run again: it only does what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi

# libmnl/libnftables to build the C core; iproute2, nftables and conntrack for the tests'
# cross-checks (the library itself never runs them); util-linux for setpriv/unshare; iperf3
# for the link tests.
PACKAGES="gcc libc6-dev python3 python3-dev python3-venv libmnl-dev libnftables-dev nftables iproute2 conntrack util-linux iperf3 tayga iputils-ping git chromium"
# cargo builds the sims' [[binary]] crates; a rustup toolchain on PATH will do as well.
command -v cargo >/dev/null 2>&1 || PACKAGES="$PACKAGES cargo"
missing=""
for pkg in $PACKAGES; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing="$missing $pkg"
done
if [ -n "$missing" ]; then
    echo "setup: installing$missing"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq $missing >/dev/null
fi

# The system Python (not a pyenv/conda one): unprivileged users must be able to run it for
# the rootless tests. patchbay needs 3.11 or newer; where the distribution's python3 is older
# (Ubuntu 22.04 has 3.10), its python3.11 packages are used.
PYTHON=/usr/bin/python3
if ! $PYTHON -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
    PYTHON=/usr/bin/python3.11
    if [ ! -x $PYTHON ]; then
        echo "setup: installing python3.11 (the system python3 is older than 3.11)"
        $SUDO apt-get update -qq
        DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq python3.11 python3.11-dev python3.11-venv >/dev/null
    fi
fi
if [ ! -x .venv/bin/python ]; then
    echo "setup: creating .venv"
    $PYTHON -m venv .venv
    .venv/bin/pip install -q --upgrade pip
fi
echo "setup: installing patchbay (building the C core)"
.venv/bin/pip install -q -e '.[test,bench]'
