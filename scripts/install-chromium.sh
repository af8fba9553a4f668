#!/usr/bin/env bash
# Install headless Chromium from Debian's `chromium` package when it is missing.
# The report's browser test (tests/test_report_browser.py) runs this before loading report.html.
# Needs root (or sudo) and access to the Debian package mirrors; does nothing when Chromium is present.
set -euo pipefail

if command -v chromium >/dev/null 2>&1; then
    echo "chromium is installed: $(command -v chromium)"
    exit 0
fi

if [ "$(id -u)" -eq 0 ]; then
    SUDO=()
elif command -v sudo >/dev/null 2>&1; then
    SUDO=(sudo)
else
    echo "install-chromium.sh: not root and no sudo; run as root: apt-get update && apt-get install -y chromium" >&2
    exit 1
fi

export DEBIAN_FRONTEND=noninteractive
"${SUDO[@]}" apt-get update
"${SUDO[@]}" apt-get install -y chromium
command -v chromium
