#!/usr/bin/env bash
# Installs what the build needs when it is missing: libsodium's headers and pkg-config entry.
set -euo pipefail
if pkg-config --exists libsodium 2>/dev/null; then
    exit 0
fi
echo "ensure-deps: libsodium-dev missing; installing it with apt-get" >&2
SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq libsodium-dev pkg-config
pkg-config --exists libsodium
