#!/usr/bin/env bash
# Install the JavaScript clients of the test matrix (tests/js: openai-node, the Vercel AI SDK)
# exactly as pinned in tests/js/package-lock.json, when node_modules is missing or was installed
# from another lock file. Called by `make test` before pytest; needs Node.js >= 20 and npm.
set -euo pipefail
cd "$(dirname "$0")/../tests/js"
if ! command -v node >/dev/null || ! command -v npm >/dev/null; then
    echo "ensure_js: Node.js >= 20 with npm is needed for the JavaScript client tests" >&2
    exit 1
fi
stamp=node_modules/.installed-from-lock
if [ ! -f "$stamp" ] || ! cmp -s package-lock.json "$stamp"; then
    npm ci --no-audit --no-fund --loglevel=error
    cp package-lock.json "$stamp"
fi
