"""A chosen onnxruntime release, `--runtimes onnxruntime==1.20.1`: the one a service pins, often a year or more
behind this package's own. Each release is a `pip install --target` under .deps/onnxruntime/<version>/
(scripts/setup/onnxruntime-releases.sh), run in a child process of this interpreter with that folder first on
its path (ort_release_child.py), so any number of releases can be checked from one process. CPU only.

A release that is not installed is missing, like any runtime, and the error gives the command that installs it.
A model the release cannot load is a failure (RuntimeFailure), not a skip: it is what the user asked to know.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

import numpy as np

from attn_onnx import checkout
from attn_onnx.errors import ProviderError, RuntimeFailure, UsageError
from attn_onnx.runtime_check.runners.child import Child

RELEASES_DIR = checkout.path(".deps", "onnxruntime")
CHILD = Path(__file__).with_name("ort_release_child.py")
PREFIX = "onnxruntime=="
INSTALL = "scripts/setup/onnxruntime-releases.sh"


def is_release(name: str) -> bool:
    return name.startswith(PREFIX)


def version_of(name: str) -> str:
    """'onnxruntime==1.20.1' -> '1.20.1' (UsageError for anything but a release number)."""
    version = name[len(PREFIX) :]
    if not re.fullmatch(r"\d+\.\d+\.\d+", version):
        raise UsageError(
            f"--runtimes {name!r}: name a release as onnxruntime==MAJOR.MINOR.PATCH, e.g. onnxruntime==1.20.1"
        )
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
        self._child = Child(
            [sys.executable, "-s", str(CHILD), str(release_dir(version))], f"the onnxruntime {version} process"
        )
        hello, _ = self._child.receive()
        if hello.get("onnxruntime") != version:  # the folder holds another release: never report under this name
            self.close()
            raise ProviderError(
                f"{release_dir(version)} imports onnxruntime {hello.get('onnxruntime')}, not "
                f"{version}: run {INSTALL} {version}"
            )
        self.versions = {self.name: f"onnxruntime {version} with numpy {hello['numpy']}, in a process of its own"}
        self.output_names: list[str] = []
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
            outputs[spec["name"]] = (
                np.frombuffer(payload, dtype, offset=at, count=spec["bytes"] // dtype.itemsize)
                .reshape(spec["shape"])
                .copy()
            )
            at += spec["bytes"]
        return outputs

    def close(self) -> None:
        self._child.close()

    def _request(self, header: dict, payloads: list[bytes]) -> tuple[dict, bytes]:
        return self._child.request({**header, "bytes": sum(len(p) for p in payloads)}, payloads)


def clean(error: str) -> str:
    """onnxruntime's words without its exception prefix and C++ source location:
    "Fail: [ONNXRuntimeError] : 1 : FAIL : Load model from ... failed:/onnxruntime_src/.../model.cc:179
    onnxruntime::Model::Model(...) Unsupported model IR version: 10, max supported IR version: 9"
    -> "Unsupported model IR version: 10, max supported IR version: 9" """
    error = re.sub(r"^\w+: \[ONNXRuntimeError\] : \d+ : \w+ : ", "", error.strip())
    error = re.sub(r"^(?:Load model from .*? failed:|Failed to load model with error: )", "", error)
    error = re.sub(r"\S+\.(?:cc|h):\d+ (?:\w+ )?[\w:~<>]+\(.*?\) ", "", error)
    return error.splitlines()[0] if error else error


class Release:
    """The runtime interface (runners/__init__.py) for one release: what `runtime('onnxruntime==X')` returns."""

    def __init__(self, name: str):
        self.version = version_of(name)

    def missing(self) -> str:
        if (release_dir(self.version) / "onnxruntime" / "__init__.py").is_file():
            return ""
        return (
            f"onnxruntime {self.version} is not installed in {release_dir(self.version)}: run "
            f"{INSTALL} {self.version}{checkout.note()}"
        )

    def versions(self) -> dict[str, str]:
        return {}  # the runner's own, as its child process reports them (ReleaseRunner.versions)

    def label(self, provider=None, config=None) -> str:
        return f"{PREFIX}{self.version}/cpu"

    def make(self, model, module, config, provider=None) -> ReleaseRunner:
        problem = self.missing()
        if problem:
            raise ProviderError(problem)
        if model.external:
            raise RuntimeFailure(
                "a model with external data is not sent to another release's process; check it "
                "with the package's own onnxruntime"
            )
        return ReleaseRunner(self.version, model.data, model.spec.precision)
