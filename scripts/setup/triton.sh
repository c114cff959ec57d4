#!/usr/bin/env bash
# needs: venv (scripts/setup-tests.sh starts it once .venv is made)
# A real Triton server and perf_analyzer, idempotent, all under .deps/triton/ (nothing installed system-wide):
#   wheel/      the nvidia-pytriton wheel unpacked: tritonserver 2.51, its Python backend, its libraries
#   venv/       the Python backend's environment: numpy < 2 (numpy 2 makes every output empty) and onnxruntime
#   client/     the tritonclient 2.51.0 wheel unpacked, for its perf_analyzer (newer ones need glibc 2.38)
#   lib/        libb64.so.0d and libcudart.so.12, linked to the wheel's copies under their plain names
#   bin/        tritonserver and perf_analyzer wrappers that set PATH and LD_LIBRARY_PATH as each needs
# Run from anywhere: bash scripts/setup/triton.sh. Needs python3 (3.8 to 3.13) with venv, and pip.
# Used by tests/deploy/test_triton_live.py and bench/serve.py (both skip or refuse without it).
set -euo pipefail
cd "$(dirname "$0")/../.."
root=.deps/triton
PYTRITON=0.7.0 TRITONCLIENT=2.51.0
PYTHON=${PYTHON:-python3}
mkdir -p "$root/downloads" "$root/bin" "$root/lib"
root=$(cd "$root" && pwd)

unpack() {  # unpack WHEEL (pip download, no deps) into DIR, once; DIR holds a stamp naming the version
    local spec=$1 dir=$2
    if [ "$(cat "$dir/.unpacked" 2>/dev/null)" = "$spec" ]; then
        echo "triton: $dir has $spec"
        return
    fi
    echo "triton: pip download $spec and unpack it into $dir"
    "$PYTHON" -m pip download -q --no-deps --dest "$root/downloads" "$spec"
    local name=${spec%%==*}
    local wheel
    wheel=$(ls "$root/downloads/${name//-/_}-${spec##*==}-"*.whl | head -1)
    rm -rf "$dir.tmp" "$dir"
    "$PYTHON" -m zipfile -e "$wheel" "$dir.tmp"
    echo "$spec" >"$dir.tmp/.unpacked"
    mv "$dir.tmp" "$dir"
    rm -f "$wheel"
}

# 1) tritonserver and its Python backend, with the stub for this Python beside libtriton_python.so
unpack "nvidia-pytriton==$PYTRITON" "$root/wheel"
server=$root/wheel/pytriton/tritonserver
chmod +x "$server/bin/tritonserver" "$server"/python_backend_stubs/*/triton_python_backend_stub
pyver=$("$PYTHON" -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')
stub=$server/python_backend_stubs/$pyver/triton_python_backend_stub
if [ ! -f "$stub" ]; then
    echo "triton: the wheel has no Python backend stub for Python $pyver (it has $(ls "$server/python_backend_stubs" | tr '\n' ' '))"
    exit 1
fi
cp -p "$stub" "$server/backends/python/triton_python_backend_stub"

# 2) the Python backend's venv: the stub embeds the first python3 on PATH and takes its sys.prefix
ort=$(.venv/bin/python -c 'import onnxruntime; print(onnxruntime.__version__)' 2>/dev/null || true)
want="numpy<2 onnxruntime${ort:+==$ort}"
if [ "$(cat "$root/venv/.wanted" 2>/dev/null)" = "$pyver $want" ]; then
    echo "triton: $root/venv has $want (Python $pyver)"
else
    echo "triton: making the Python backend's venv $root/venv: $want (Python $pyver)"
    rm -rf "$root/venv"
    "$PYTHON" -m venv "$root/venv"
    "$root/venv/bin/pip" install -q "numpy<2" "onnxruntime${ort:+==$ort}"
    echo "$pyver $want" >"$root/venv/.wanted"
fi
# the stub links libpython: the venv's base interpreter's, not the system's (Debian's 3.11.2 fails to start)
pylib=$("$root/venv/bin/python" -c 'import sysconfig; print(sysconfig.get_config_var("LIBDIR"))')

# 3) perf_analyzer from the tritonclient 2.51.0 wheel, and the two libraries it wants under their plain names
unpack "tritonclient==$TRITONCLIENT" "$root/client"
perf=$(ls "$root"/client/tritonclient-*.data/data/bin/perf_analyzer)
chmod +x "$perf"
ln -sfn "$(ls "$root"/wheel/nvidia_pytriton.libs/libb64-*.so.0d)" "$root/lib/libb64.so.0d"
ln -sfn "$(ls "$root"/wheel/nvidia_pytriton.libs/libcudart-*.so.12*)" "$root/lib/libcudart.so.12"

# 4) the wrappers
cat >"$root/bin/tritonserver" <<EOF
#!/usr/bin/env bash
# tritonserver from the nvidia-pytriton wheel, its Python backend on this repository's venv (setup/triton.sh):
# the stub embeds the first python3 on PATH and links the libpython of that venv's base interpreter.
export PATH="$root/venv/bin:\$PATH"
export LD_LIBRARY_PATH="$pylib:$root/wheel/nvidia_pytriton.libs\${LD_LIBRARY_PATH:+:\$LD_LIBRARY_PATH}"
exec "$server/bin/tritonserver" --backend-directory="$server/backends" "\$@"
EOF
cat >"$root/bin/perf_analyzer" <<EOF
#!/usr/bin/env bash
# perf_analyzer from the tritonclient $TRITONCLIENT wheel (setup/triton.sh).
export LD_LIBRARY_PATH="$root/lib\${LD_LIBRARY_PATH:+:\$LD_LIBRARY_PATH}"
exec "$perf" "\$@"
EOF
chmod +x "$root/bin/tritonserver" "$root/bin/perf_analyzer"

# 5) both start
usage=$("$root/bin/tritonserver" --help 2>&1 || true)  # it prints its usage and exits 1
[[ $usage == Usage:* ]] || { echo "triton: $root/bin/tritonserver does not start: ${usage:0:300}"; exit 1; }
"$root/bin/perf_analyzer" --version >/dev/null 2>&1 || { echo "triton: $root/bin/perf_analyzer does not start"; exit 1; }
echo "triton: ready: $root/bin/tritonserver and $root/bin/perf_analyzer"
