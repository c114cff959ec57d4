"""A chosen onnxruntime release, `--runtimes onnxruntime==1.20.1`: the one a service pins, often a year or more
behind this package's own. Each release is a `pip install --target` under .deps/onnxruntime/<version>/
(scripts/setup/onnxruntime-releases.sh), run in a child process of this interpreter with that folder first on
its path (ort_release_child.py), so any number of releases can be checked from one process. CPU only.

A release that is not installed is missing, like any runtime, and the error gives the command that installs it.
A model the release cannot load is a failure (RuntimeFailure), not a skip: it is what the user asked to know.
"""

from __future__ import annotations

import json
import re
import struct
import subprocess
import sys
import tempfile
import weakref
from pathlib import Path

import numpy as np

from attn_onnx.errors import ProviderError, RuntimeFailure, UsageError

RELEASES_DIR = Path(__file__).resolve().parents[2] / ".deps" / "onnxruntime"
CHILD = Path(__file__).with_name("ort_release_child.py")
PREFIX = "onnxruntime=="
INSTALL = "scripts/setup/onnxruntime-releases.sh"


def is_release(name: str) -> bool:
    return name.startswith(PREFIX)


def version_of(name: str) -> str:
    """'onnxruntime==1.20.1' -> '1.20.1' (UsageError for anything but a release number)."""
    version = name[len(PREFIX):]
    if not re.fullmatch(r"\d+\.\d+\.\d+", version):
        raise UsageError(f"--runtimes {name!r}: name a release as onnxruntime==MAJOR.MINOR.PATCH, e.g. "
                         "onnxruntime==1.20.1")
    return version


def release_dir(version: str) -> Path:
    return RELEASES_DIR / version


def installed() -> list[str]:
    """The releases under .deps/onnxruntime, oldest first."""
    if not RELEASES_DIR.is_dir():
        return []
    found = [p.name for p in RELEASES_DIR.iterdir() if (p / "onnxruntime" / "__init__.py").is_file()]
    return sorted(found, key=lambda v: tuple(int(x) for x in v.split(".")))


class ReleaseRunner:
    """One model in one onnxruntime release, in a child process that lives as long as this runner."""

    def __init__(self, version: str, data: bytes | None, precision: str = "float32"):
        self.version, self.precision = version, precision
        self.name = f"{PREFIX}{version}/cpu"
        self._stderr = tempfile.TemporaryFile()
        self._process = subprocess.Popen([sys.executable, "-s", str(CHILD), str(release_dir(version))],
                                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._stderr)
        self._finalizer = weakref.finalize(self, _stop, self._process, self._stderr)
        hello, _ = self._receive()
        if hello.get("onnxruntime") != version:  # the folder holds another release: never report under this name
            self.close()
            raise ProviderError(f"{release_dir(version)} imports onnxruntime {hello.get('onnxruntime')}, not "
                                f"{version}: run {INSTALL} {version}")
        self.versions = {self.name: f"onnxruntime {version} with numpy {hello['numpy']}, in a process of its own"}
        self.output_names = []
        if data is None:  # a process with no model yet: `load` gives it one
            return
        try:
            self.load(data)
        except RuntimeFailure:
            self.close()
            raise

    def load(self, data: bytes) -> None:
        """Run `data` from now on (the same process: the compatibility matrix loads one model after another).
        RuntimeFailure, with the release's words, where it cannot load it."""
        answer, _ = self._request({"op": "load"}, [data])
        if not answer["ok"]:
            raise RuntimeFailure(f"onnxruntime {self.version} cannot load the model: {clean(answer['error'])}")
        self.output_names = answer["outputs"]

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        specs, payloads = [], []
        for name, array in feeds.items():
            array = np.ascontiguousarray(array)
            specs.append({"name": name, "dtype": array.dtype.str, "shape": list(array.shape), "bytes": array.nbytes})
            payloads.append(array.tobytes())
        answer, payload = self._request({"op": "run", "inputs": specs}, payloads)
        if not answer["ok"]:
            raise RuntimeError(clean(answer["error"]))
        outputs, at = {}, 0
        for spec in answer["outputs"]:
            dtype = np.dtype(spec["dtype"])
            outputs[spec["name"]] = np.frombuffer(payload, dtype, offset=at, count=spec["bytes"] // dtype.itemsize) \
                .reshape(spec["shape"]).copy()
            at += spec["bytes"]
        return outputs

    def close(self) -> None:
        self._finalizer()

    def _request(self, header: dict, payloads: list[bytes]) -> tuple[dict, bytes]:
        text = json.dumps({**header, "bytes": sum(len(p) for p in payloads)}).encode()
        try:
            self._process.stdin.write(struct.pack("<I", len(text)) + text)
            for payload in payloads:
                self._process.stdin.write(payload)
            self._process.stdin.flush()
        except (BrokenPipeError, ValueError):
            raise RuntimeFailure(f"the onnxruntime {self.version} process has ended{self._last_words()}") from None
        return self._receive()

    def _receive(self) -> tuple[dict, bytes]:
        header = json.loads(self._read(struct.unpack("<I", self._read(4))[0]))
        return header, self._read(header["bytes"])

    def _read(self, n: int) -> bytes:
        data = self._process.stdout.read(n) if n else b""
        if len(data) != n:
            code = self._process.wait()
            raise RuntimeFailure(f"the onnxruntime {self.version} process ended (exit {code}){self._last_words()}")
        return data

    def _last_words(self) -> str:
        self._stderr.seek(0)
        lines = [line for line in self._stderr.read().decode(errors="replace").splitlines() if line.strip()]
        return f": {lines[-1].strip()[:300]}" if lines else ""


def clean(error: str) -> str:
    """onnxruntime's words without its exception prefix and C++ source location:
    "Fail: [ONNXRuntimeError] : 1 : FAIL : Load model from ... failed:/onnxruntime_src/.../model.cc:179
    onnxruntime::Model::Model(...) Unsupported model IR version: 10, max supported IR version: 9"
    -> "Unsupported model IR version: 10, max supported IR version: 9" """
    error = re.sub(r"^\w+: \[ONNXRuntimeError\] : \d+ : \w+ : ", "", error.strip())
    error = re.sub(r"^(?:Load model from .*? failed:|Failed to load model with error: )", "", error)
    error = re.sub(r"\S+\.(?:cc|h):\d+ (?:\w+ )?[\w:~<>]+\(.*?\) ", "", error)
    return error.splitlines()[0] if error else error


def _stop(process: subprocess.Popen, stderr) -> None:
    try:
        process.stdin.close()
        process.wait(timeout=5)
    except (OSError, subprocess.TimeoutExpired):
        process.kill()
        process.wait()
    process.stdout.close()
    stderr.close()


class Release:
    """The runtime interface (runners/__init__.py) for one release: what `runtime('onnxruntime==X')` returns."""

    def __init__(self, name: str):
        self.version = version_of(name)

    def missing(self) -> str:
        if (release_dir(self.version) / "onnxruntime" / "__init__.py").is_file():
            return ""
        return (f"onnxruntime {self.version} is not installed in {release_dir(self.version)}: run "
                f"{INSTALL} {self.version}")

    def versions(self) -> dict[str, str]:
        return {}  # the runner's own, as its child process reports them (ReleaseRunner.versions)

    def label(self, provider=None, config=None) -> str:
        return f"{PREFIX}{self.version}/cpu"

    def make(self, model, module, config, provider=None) -> ReleaseRunner:
        problem = self.missing()
        if problem:
            raise ProviderError(problem)
        if model.external:
            raise RuntimeFailure("a model with external data is not sent to another release's process; check it "
                                 "with the package's own onnxruntime")
        return ReleaseRunner(self.version, model.data, model.spec.precision)
