#!/usr/bin/env bash
# Everything the tests need, on a fresh Linux machine (Debian 12, Python >= 3.11; root, or sudo, for apt-get):
#   1) .venv with the project, its test extras and OpenVINO (the optional runtime the tests check too);
#   2) the Node example's packages (npm ci --ignore-scripts: the CPU binary ships inside onnxruntime-node), and
#      eslint for the examples' JavaScript (examples/lint);
#   3) each scripts/setup/*.sh: what pip and npm do not bring (the C++ consumer's headers and build, a real
#      Triton server and perf_analyzer, Chromium and onnxruntime-web), each into .deps/<name>/.
# The parts are mostly downloads, so they run side by side: the venv, the Node packages and the parts that do
# not read the venv first; the parts that do (setup/*.sh with "needs: venv" in their header) once it is made.
# Each part's output is printed, whole, when it ends. Two parts that apt-get install wait for each other.
# Idempotent: run it again at will. A part that cannot be installed is said so here, and its tests are
# reported as skipped, with the reason, by pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
logs=.deps/setup-logs
rm -rf "$logs" && mkdir -p "$logs"
started=$SECONDS

start() {  # start NAME COMMAND...: in the background, its output to $logs/NAME.log, its status to NAME.rc
    local name=$1; shift
    ( set +e; "$@" >"$logs/$name.log" 2>&1; echo $? >"$logs/$name.rc" ) &
}

finish() {  # finish NAME...: wait for each, print its output; 1 if one failed
    local name failed=0
    for name in "$@"; do
        while [ ! -f "$logs/$name.rc" ]; do sleep 0.2; done
        sed "s/^/[$name] /" "$logs/$name.log"
        local rc
        rc=$(cat "$logs/$name.rc")
        echo "setup: $name done ($((SECONDS - started)) s since the start, exit $rc)"
        [ "$rc" = 0 ] || failed=1
    done
    return $failed
}

venv() {
    [ -x .venv/bin/python ] || python3 -m venv .venv
    .venv/bin/pip install -q -e '.[test,openvino]'
}

node_packages() {
    if command -v npm >/dev/null; then
        npm ci --ignore-scripts --prefix examples/node --no-audit --no-fund
        npm ci --ignore-scripts --prefix examples/lint --no-audit --no-fund  # eslint (scripts/lint-js.sh)
    else
        echo "setup: npm is absent: the Node tests will be reported as skipped"
    fi
}

early=() late=()
for script in scripts/setup/*.sh; do
    if grep -q '^# needs: venv' "$script"; then late+=("$script"); else early+=("$script"); fi
done

start venv venv
start node node_packages
for script in "${early[@]}"; do start "$(basename "$script" .sh)" bash "$script"; done
finish venv  # the venv is needed: without it, nothing below can run
for script in "${late[@]}"; do start "$(basename "$script" .sh)" bash "$script"; done

finish node
# A part of scripts/setup/ that fails leaves its tests skipped (they say why), not the set-up failed.
for script in "${early[@]}" "${late[@]}"; do
    name=$(basename "$script" .sh)
    finish "$name" || echo "setup: $script failed (see above): the tests that need it will be reported as skipped"
done
echo "setup: all parts done in $((SECONDS - started)) s"
