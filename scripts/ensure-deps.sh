#!/usr/bin/env bash
# Installs what the build and tests need when it is missing: libsodium's headers and pkg-config
# entry, and python3's cryptography module.
set -euo pipefail
# The second UDS-HS1 implementation (interop/python, run by PythonInteropTests) needs python3's
# `cryptography` module; without it those tests are skipped, saying so.
if command -v python3 >/dev/null 2>&1 && ! python3 -c 'import cryptography' 2>/dev/null; then
    echo "ensure-deps: python3 module cryptography missing; installing it with pip" >&2
    python3 -m pip install --quiet cryptography \
        || echo "ensure-deps: could not install cryptography; the Python interop tests will be skipped" >&2
fi
if pkg-config --exists libsodium 2>/dev/null; then
    exit 0
fi
echo "ensure-deps: libsodium-dev missing; installing it with apt-get" >&2
SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq libsodium-dev pkg-config
pkg-config --exists libsodium
