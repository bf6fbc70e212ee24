#!/bin/sh
# Make sure Debian's `chromium` is installed: the status page test renders the page in a real
# headless Chromium. Called by `make test` (and `make unit`) before pytest; a no-op when it is
# already there. Needs root (as `make test` runs in CI) or sudo.
set -eu
if command -v chromium >/dev/null 2>&1; then
    exit 0
fi
if ! command -v apt-get >/dev/null 2>&1; then
    echo "ensure_chromium: no apt-get here; install Chromium and put 'chromium' on PATH" >&2
    exit 1
fi
SUDO=""
if [ "$(id -u)" != "0" ]; then
    SUDO="sudo"
fi
echo "ensure_chromium: installing Debian's chromium for the status page test" >&2
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends chromium >/dev/null
command -v chromium >/dev/null
