#!/usr/bin/env bash
# Everything the tests need, on a fresh Linux machine (Debian 12, Python >= 3.11; root, or sudo, for apt-get):
#   1) .venv with the project, its test extras and OpenVINO (the optional runtime the tests check too);
#   2) the Node example's packages (npm ci --ignore-scripts: the CPU binary ships inside onnxruntime-node);
#   3) each scripts/setup/*.sh: what pip and npm do not bring (the C++ consumer's headers and build, a real
#      Triton server and perf_analyzer, Chromium and onnxruntime-web), each into .deps/<name>/.
# Idempotent: run it again at will. A part that cannot be installed is said so here, and its tests are
# reported as skipped, with the reason, by pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/pip install -q -e '.[test,openvino]'
if command -v npm >/dev/null; then
    npm ci --ignore-scripts --prefix examples/node
else
    echo "setup: npm is absent: the Node tests will be reported as skipped"
fi
for script in scripts/setup/*.sh; do
    if ! bash "$script"; then
        echo "setup: $script failed (see above): the tests that need it will be reported as skipped"
    fi
done
