#!/usr/bin/env bash
# Installs Debian's chromium for the server's browser test (tests/server/test_server_browser.py), which
# drives it with Playwright's Python package (executable_path=/usr/bin/chromium; Playwright never
# downloads a browser). Does nothing when /usr/bin/chromium is already there. Needs root (or sudo).
# The test skips itself when the browser is missing, so a failure here only loses that one test.
set -uo pipefail

if [ -x /usr/bin/chromium ]; then
    echo "install-browser: /usr/bin/chromium present ($(/usr/bin/chromium --version 2>/dev/null | head -n1))"
    exit 0
fi
if ! command -v apt-get >/dev/null 2>&1; then
    echo "install-browser: no apt-get here; the browser test will be skipped" >&2
    exit 0
fi
SUDO=""
if [ "$(id -u)" -ne 0 ]; then
    if command -v sudo >/dev/null 2>&1; then SUDO="sudo -n"; else
        echo "install-browser: not root and no sudo; the browser test will be skipped" >&2
        exit 0
    fi
fi
export DEBIAN_FRONTEND=noninteractive
if $SUDO apt-get update -qq && $SUDO apt-get install -y -qq chromium >/dev/null; then
    echo "install-browser: installed $(/usr/bin/chromium --version 2>/dev/null | head -n1)"
else
    echo "install-browser: apt-get install chromium failed; the browser test will be skipped" >&2
fi
exit 0
