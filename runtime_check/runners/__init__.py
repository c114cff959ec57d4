"""One runner per runtime, all with the same small interface: `name`, `precision`, `run(feeds) -> outputs`.

Each runtime is one file here, holding its loader and runner and the functions the check calls:
- `label(provider, config)`: the name report lines use;
- `make(model, module, config, provider)`: the runner. It raises ProviderError when the runtime or provider
  asked for is missing (a failure unless --skip-missing), UnsupportedModelError when it cannot execute this
  model (reported SKIPPED, with the reason);
- `missing()`: why the runtime is not installed here, or "" where it is;
- `versions()`: its libraries' versions, for the report.
A new runtime is that file plus one registration line in RUNTIMES, with its help line for `--runtimes`.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Protocol

import numpy as np


class Runner(Protocol):
    name: str  # e.g. "onnxruntime/cpu": what the report lines say
    precision: str  # the tolerance profile its float outputs are held to: float32, tf32, float64

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]: ...


@dataclass(frozen=True)
class Runtime:
    module: str  # its file here (imported only when the runtime is used: some import heavy libraries)
    help: str  # one line for check-attn --runtimes
    per_provider: bool = False  # made once per --providers entry (onnxruntime's execution providers)


RUNTIMES = {
    "onnxruntime": Runtime(
        "attn_onnx.runtime_check.runners.ort_runner", "onnxruntime, on each of --providers", per_provider=True
    ),
    "reference": Runtime("attn_onnx.runtime_check.runners.reference_runner", "onnx.reference.ReferenceEvaluator"),
    "openvino": Runtime(
        "attn_onnx.runtime_check.runners.openvino_runner", "OpenVINO on the CPU (pip install '.[openvino]')"
    ),
    "torch": Runtime(
        "attn_onnx.runtime_check.runners.torch_runner", "PyTorch float32, to see PyTorch's own float32 error"
    ),
    "web": Runtime(
        "attn_onnx.runtime_check.runners.web_runner",
        "onnxruntime-web's WASM backend under Node (npm ci --ignore-scripts --prefix examples/web)",
    ),
}


RELEASE_HELP = (
    "onnxruntime==X.Y.Z: that onnxruntime release, in a process of its own (CPU; install it with "
    "scripts/setup/onnxruntime-releases.sh X.Y.Z)"
)


def known(name: str) -> bool:
    """A runtime `runtime(name)` can make: one of RUNTIMES, or a release, onnxruntime==X.Y.Z."""
    return name in RUNTIMES or name.startswith("onnxruntime==")


def runtime(name: str):
    """The module of runtime `name` (imported now: some import heavy libraries); for a release, onnxruntime==X.Y.Z,
    an object with the same functions (ort_release_runner.Release)."""
    if name.startswith("onnxruntime=="):
        from attn_onnx.runtime_check.runners.ort_release_runner import Release

        return Release(name)
    return importlib.import_module(RUNTIMES[name].module)


def uses_providers(name: str) -> bool:
    return name in RUNTIMES and RUNTIMES[name].per_provider
