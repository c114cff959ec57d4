#!/usr/bin/env bash
# The web runtime's set-up, idempotent: Debian's chromium (headless, for tests/deploy/test_web_page.py) and
# onnxruntime-web in examples/web/node_modules (for `check-attn --runtimes web` and the page).
# Run from anywhere: bash scripts/setup/web.sh. Needs root for apt-get (Debian 12) and npm.
set -euo pipefail
cd "$(dirname "$0")/../.."

if command -v chromium >/dev/null; then
    echo "web: chromium present ($(chromium --version 2>/dev/null | head -1))"
elif command -v apt-get >/dev/null; then
    echo "web: installing chromium (apt-get, --no-install-recommends: about 113 MB)"
    mkdir -p .deps
    (  # one apt-get at a time: scripts/setup-tests.sh runs the parts side by side
        flock 9
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium >/dev/null
    ) 9>.deps/apt.lock
    echo "web: installed $(chromium --version 2>/dev/null | head -1)"
else
    echo "web: no apt-get here: install chromium yourself (the browser test is skipped without it)"
fi

if ! command -v npm >/dev/null; then
    echo "web: npm is absent: the web runner and the page need Node >= 20 and npm"
    exit 1
fi
wanted=$(node -p "require('./examples/web/package-lock.json').packages['node_modules/onnxruntime-web'].version")
have=$(node -p "try { require('./examples/web/node_modules/onnxruntime-web/package.json').version } catch { '' }")
if [ "$have" = "$wanted" ]; then
    echo "web: examples/web/node_modules has onnxruntime-web $have"
else
    echo "web: npm ci --ignore-scripts --prefix examples/web (onnxruntime-web $wanted, about 148 MB)"
    npm ci --ignore-scripts --prefix examples/web --no-audit --no-fund
fi
