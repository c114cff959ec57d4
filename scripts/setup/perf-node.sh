#!/usr/bin/env bash
# perf_analyzer, Triton's load generator, for the Node service's tests and load figures
# (tests/deploy/test_node_protocol.py, docs/serving-node.md). Installs into .deps/perf-node/:
#   bin/perf_analyzer   the build inside the tritonclient 2.51.0 wheel (later builds need glibc 2.38)
#   lib/                libb64.so.0d and libcudart.so.12, which it loads even on a CPU: the copies the
#                       nvidia-pytriton 0.7.0 wheel ships under hashed names, renamed
#   perf_analyzer.sh    runs it with that lib/ on LD_LIBRARY_PATH
# Idempotent: when perf_analyzer.sh already starts, it does nothing else. About 70 MB downloaded, 2 MB kept.
set -euo pipefail
cd "$(dirname "$0")/../.."
DEST=.deps/perf-node
PYTHON=${PYTHON:-python3}

if [ -x "$DEST/perf_analyzer.sh" ] && "$DEST/perf_analyzer.sh" --version >/dev/null 2>&1; then
    echo "perf-node: $DEST/perf_analyzer.sh is already installed and starts"
    exit 0
fi
rm -rf "$DEST"
mkdir -p "$DEST/wheels" "$DEST/bin" "$DEST/lib"
"$PYTHON" -m pip download -q --no-deps -d "$DEST/wheels" tritonclient==2.51.0 nvidia-pytriton==0.7.0 2>&1 \
    | grep -v "is neither a file nor a directory" || true
unzip -q -o -j "$DEST"/wheels/tritonclient-2.51.0-*.whl 'tritonclient-2.51.0.data/data/bin/perf_analyzer' -d "$DEST/bin"
unzip -q -o -j "$DEST"/wheels/nvidia_pytriton-0.7.0-*.whl 'nvidia_pytriton.libs/libb64-*' \
    'nvidia_pytriton.libs/libcudart-*' -d "$DEST/wheels/libs"
mv "$DEST"/wheels/libs/libb64-* "$DEST/lib/libb64.so.0d"
mv "$DEST"/wheels/libs/libcudart-* "$DEST/lib/libcudart.so.12"
chmod +x "$DEST/bin/perf_analyzer"
rm -rf "$DEST/wheels"
cat > "$DEST/perf_analyzer.sh" <<'SH'
#!/usr/bin/env bash
here="$(cd "$(dirname "$0")" && pwd)"
LD_LIBRARY_PATH="$here/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}" exec "$here/bin/perf_analyzer" "$@"
SH
chmod +x "$DEST/perf_analyzer.sh"
"$DEST/perf_analyzer.sh" --version >/dev/null || { echo "perf-node: perf_analyzer does not start"; exit 1; }
echo "perf-node: installed $DEST/perf_analyzer.sh ($("$DEST/perf_analyzer.sh" --version 2>&1 | head -n 1))"
