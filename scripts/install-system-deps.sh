#!/usr/bin/env bash
# Debian packages the test suite needs: RELION 3.1 (the conventions oracle), PostgreSQL (store
# tests on a real server), Chromium (browser tests) and npm (front-end build). Installs only
# what is missing; needs root (or sudo).
set -euo pipefail
need=()
command -v relion_project >/dev/null 2>&1 || need+=(relion)
ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || need+=(postgresql)
command -v runuser >/dev/null 2>&1 || need+=(util-linux)
command -v chromium >/dev/null 2>&1 || need+=(chromium)
command -v npm >/dev/null 2>&1 || need+=(npm)
if [ ${#need[@]} -eq 0 ]; then
    exit 0
fi
SUDO=""
if [ "$(id -u)" -ne 0 ]; then
    SUDO="sudo"
fi
echo "installing Debian packages: ${need[*]}"
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
