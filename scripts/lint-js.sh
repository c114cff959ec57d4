#!/usr/bin/env bash
# ESLint's recommended rules over every .js and .mjs file in examples/ (examples/lint/eslint.config.mjs says which
# files run in Node and which in the browser). Installs eslint into examples/lint/node_modules first (npm ci) when it
# is absent or older than examples/lint/package-lock.json. Exit non-zero on any finding, warnings included.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

LINT=examples/lint
# node_modules/.package-lock.json is npm's record of what it installed, written as an install ends: absent (never
# installed, or cut short) or older than the lock (the lock changed since) means install again
INSTALLED=$LINT/node_modules/.package-lock.json
if [[ ! -f $INSTALLED || $LINT/package-lock.json -nt $INSTALLED ]]; then
    if ! out=$(npm ci --ignore-scripts --prefix "$LINT" --no-audit --no-fund 2>&1); then  # its words only on failure
        printf '%s\n' "$out" >&2
        exit 1
    fi
    touch "$INSTALLED"  # newer than the lock even where both fall in one tick of the clock
fi

# eslint's own output; on success the formatter adds one line: eslint: examples/ clean (N files)
"$LINT/node_modules/.bin/eslint" --config "$LINT/eslint.config.mjs" --format "./$LINT/formatter.mjs" --max-warnings 0 \
    examples/
