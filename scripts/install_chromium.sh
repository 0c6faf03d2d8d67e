#!/usr/bin/env bash
# Install headless Chromium for the report render test (tests/test_report.py, marker "browser").
# Idempotent: does nothing when /usr/bin/chromium already exists. Debian/Ubuntu (apt) only;
# needs root or passwordless sudo. Usage: scripts/install_chromium.sh
set -euo pipefail

if [ -x /usr/bin/chromium ]; then
  echo "chromium already installed: $(/usr/bin/chromium --version 2>/dev/null || echo /usr/bin/chromium)"
  exit 0
fi

if ! command -v apt-get >/dev/null 2>&1; then
  echo "install_chromium.sh: apt-get not found; install Chromium as /usr/bin/chromium by hand" >&2
  exit 1
fi

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
  if sudo -n true 2>/dev/null; then
    SUDO="sudo -n"
  else
    echo "install_chromium.sh: needs root (or passwordless sudo) to apt-get install chromium" >&2
    exit 1
  fi
fi

export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -q
# Debian names the package "chromium"; Ubuntu's "chromium-browser" is a snap shim that does not
# work in containers, so only the Debian package is tried.
$SUDO apt-get install -y -q --no-install-recommends chromium fonts-dejavu-core

if [ ! -x /usr/bin/chromium ]; then
  echo "install_chromium.sh: apt-get finished but /usr/bin/chromium is missing" >&2
  exit 1
fi
echo "installed: $(/usr/bin/chromium --version 2>/dev/null || echo /usr/bin/chromium)"
