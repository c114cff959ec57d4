#!/usr/bin/env bash
# needs: venv (scripts/setup-tests.sh starts it once .venv is made)
# Sets up the C++ consumer (examples/cpp) and builds it; idempotent, run it again at will.
#   1) g++, cmake, make, nlohmann-json3-dev and libssl-dev from the system's apt sources, each only if absent;
#   2) onnxruntime's C/C++ API headers from Debian 13's libonnxruntime-dev (Debian 12 has none) into
#      .deps/cpp/include/onnxruntime, fetched with a private apt sources file and lists under .deps/cpp/apt
#      (the system's own sources are left as they are), once;
#   3) configures and builds examples/cpp into .deps/cpp/build against the libonnxruntime.so.1.x that the
#      onnxruntime wheel in $PYTHON's environment ships (default: the repository's .venv).
# Usage: scripts/setup/cpp.sh        (PYTHON=/path/to/python scripts/setup/cpp.sh for another environment)
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
DEPS="$ROOT/.deps/cpp"
PYTHON=${PYTHON:-$ROOT/.venv/bin/python}
say() { echo "setup/cpp: $*"; }
die() { echo "setup/cpp: Error: $*" >&2; exit 1; }
as_root() {
  if [ "$(id -u)" = 0 ]; then "$@"; elif command -v sudo >/dev/null; then sudo "$@"; else die "need root for: $*"; fi
}

# 1) tools and libraries from the system's own sources
missing=()
for tool in g++ cmake make; do command -v "$tool" >/dev/null || missing+=("$tool"); done
for package in nlohmann-json3-dev libssl-dev; do
  dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "ok installed" || missing+=("$package")
done
if [ ${#missing[@]} -gt 0 ]; then
  say "installing ${missing[*]}"
  mkdir -p "$ROOT/.deps"
  (  # one apt-get at a time: scripts/setup-tests.sh runs the parts side by side
    flock 9
    as_root apt-get update -qq
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  ) 9>"$ROOT/.deps/apt.lock"
else
  say "g++, cmake, make, nlohmann-json3-dev and libssl-dev are installed"
fi

# 2) the headers, from Debian 13 (trixie), through the mirror the system already uses
INCLUDE="$DEPS/include/onnxruntime"
if [ -f "$INCLUDE/onnxruntime_cxx_api.h" ]; then
  say "onnxruntime headers already in ${INCLUDE#"$ROOT"/} ($(cat "$DEPS/include/VERSION" 2>/dev/null))"
else
  mirror=""
  if [ -f /etc/apt/sources.list.d/debian.sources ]; then  # deb822: the first URIs of a non-security stanza
    mirror=$(awk 'BEGIN {RS = ""} !/-security/ && match($0, /URIs: *[^ \n]+/) {
                    split(substr($0, RSTART, RLENGTH), a, / +/); print a[2]; exit}' \
               /etc/apt/sources.list.d/debian.sources)
  fi
  if [ -z "$mirror" ] && [ -f /etc/apt/sources.list ]; then
    mirror=$(awk '$1 == "deb" && $0 !~ /-security/ {for (i = 2; i <= NF; i++) if ($i ~ /:\/\//) {print $i; exit}}' \
               /etc/apt/sources.list)
  fi
  [ -n "$mirror" ] || die "found no Debian mirror in /etc/apt/sources.list.d/debian.sources or /etc/apt/sources.list"
  APT="$DEPS/apt"
  rm -rf "$APT" && mkdir -p "$APT/sources.list.d" "$APT/lists/partial" "$APT/archives/partial"
  printf 'Types: deb\nURIs: %s\nSuites: trixie\nComponents: main\nSigned-By: %s\n' \
    "$mirror" /usr/share/keyrings/debian-archive-keyring.gpg > "$APT/sources.list.d/trixie.sources"
  options=(-o Dir::Etc::SourceList=/dev/null -o "Dir::Etc::SourceParts=$APT/sources.list.d"
           -o "Dir::State::Lists=$APT/lists" -o "Dir::Cache::archives=$APT/archives" -o APT::Sandbox::User=root)
  say "fetching libonnxruntime-dev from Debian 13 (trixie) through the system's mirror (private lists in ${APT#"$ROOT"/})"
  apt-get "${options[@]}" -qq update
  (cd "$APT" && apt-get "${options[@]}" -qq download libonnxruntime-dev)
  deb=$(ls "$APT"/libonnxruntime-dev_*.deb)
  rm -rf "$APT/x" && dpkg -x "$deb" "$APT/x"
  [ -f "$APT/x/usr/include/onnxruntime/onnxruntime_cxx_api.h" ] \
    || die "$(basename "$deb") holds no onnxruntime_cxx_api.h"
  rm -rf "$DEPS/include" && mv "$APT/x/usr/include" "$DEPS/include"
  basename "$deb" .deb > "$DEPS/include/VERSION"
  rm -rf "$APT"  # the lists (tens of MB) and the .deb: only the headers are kept
  api=$(awk '/define ORT_API_VERSION/ {print $3}' "$INCLUDE/onnxruntime_c_api.h")
  say "headers in ${INCLUDE#"$ROOT"/} ($(cat "$DEPS/include/VERSION"), C API $api)"
fi

# 3) build against the wheel's library
[ -x "$PYTHON" ] \
  || die "$PYTHON is not there: create the venv first (python3 -m venv .venv && .venv/bin/pip install -e '.[test]')"
LIB_DIR=$("$PYTHON" -c "import onnxruntime, os; print(os.path.join(os.path.dirname(onnxruntime.__file__), 'capi'))") \
  || die "$PYTHON cannot import onnxruntime"
say "building examples/cpp into ${DEPS#"$ROOT"/}/build against $LIB_DIR"
cmake -S "$ROOT/examples/cpp" -B "$DEPS/build" -DONNXRUNTIME_INCLUDE_DIR="$INCLUDE" -DONNXRUNTIME_LIB_DIR="$LIB_DIR" \
  >/dev/null
cmake --build "$DEPS/build" -j "$(nproc)" >/dev/null
say "built ${DEPS#"$ROOT"/}/build/verify_bundle, embed and bench_latency"
