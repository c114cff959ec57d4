#!/usr/bin/env bash
# needs: venv (scripts/setup-tests.sh starts it once .venv is made)
# onnxruntime releases side by side, for `check-attn --runtimes onnxruntime==X.Y.Z` and the compatibility table
# (scripts/compat_matrix.py, tests/deploy/test_compatibility.py): each one a `pip install --target` of its wheel
# under .deps/onnxruntime/<version>/, with numpy < 2 beside the releases built against numpy 1 (before 1.19).
# Nothing is installed into the venv itself. Idempotent.
#   bash scripts/setup/onnxruntime-releases.sh            # every release deploy/compatibility.json names
#   bash scripts/setup/onnxruntime-releases.sh 1.20.1     # that one
set -euo pipefail
cd "$(dirname "$0")/../.."
PYTHON=${PYTHON:-.venv/bin/python}
root=.deps/onnxruntime
mkdir -p "$root"

if [ $# -gt 0 ]; then
    releases=("$@")
else
    mapfile -t releases < <("$PYTHON" -c 'import json; print("\n".join(json.load(open("deploy/compatibility.json"))["releases"]))')
fi

install() {  # install VERSION: into $root/VERSION, through a temp name
    local version=$1 dir=$root/$1
    if [ -f "$dir/onnxruntime/__init__.py" ]; then
        echo "onnxruntime-releases: $dir has onnxruntime $version"
        return
    fi
    local extra=()
    if [ "$(printf '%s\n' "$version" 1.19.0 | sort -V | head -1)" != 1.19.0 ]; then extra=("numpy<2"); fi
    rm -rf "$dir.tmp"
    if ! "$PYTHON" -m pip install -q --disable-pip-version-check --no-deps --target "$dir.tmp" \
            "onnxruntime==$version" "${extra[@]}" 2>"$dir.log"; then
        echo "onnxruntime-releases: could not install onnxruntime $version: $(grep -v WARNING "$dir.log" | tail -1)"
        rm -rf "$dir.tmp"
        return 1
    fi
    rm -f "$dir.log"
    mv "$dir.tmp" "$dir"
    echo "onnxruntime-releases: installed onnxruntime $version${extra:+ with ${extra[*]}} into $dir"
}
export -f install
export root PYTHON
printf '%s\n' "${releases[@]}" | xargs -P 4 -I{} bash -c 'install {}'
