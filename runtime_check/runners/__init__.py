"""One runner per runtime, all with the same small interface: `name`, `precision`, `run(feeds) -> outputs`.

Each runtime is one file here, holding its loader and runner and two functions the check calls:
`label(provider, config)` (the name report lines use) and `make(model, module, config, provider)`.
`make` raises ProviderError when the runtime or provider asked for is missing (a failure unless
--skip-missing), UnsupportedModelError when it cannot execute this model (reported SKIPPED).
A new runtime is one new file, added to RUNTIMES.
"""

from __future__ import annotations

import importlib
from typing import Protocol

import numpy as np

PROVIDERS = {"cpu": "CPUExecutionProvider", "cuda": "CUDAExecutionProvider"}  # onnxruntime's


class Runner(Protocol):
    name: str  # e.g. "onnxruntime/cpu": what the report lines say
    precision: str  # the tolerance profile its float outputs are held to: float32, tf32, float64

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]: ...


# runtime -> (module, whether it runs once per --providers entry)
RUNTIMES = {
    "onnxruntime": ("attn_onnx.runtime_check.runners.ort_runner", True),
    "reference": ("attn_onnx.runtime_check.runners.reference_runner", False),
    "openvino": ("attn_onnx.runtime_check.runners.openvino_runner", False),
    "torch": ("attn_onnx.runtime_check.runners.torch_runner", False),
    "web": ("attn_onnx.runtime_check.runners.web_runner", False),
}


def runtime(name: str):
    """The module of runtime `name` (imported now: some import heavy libraries)."""
    return importlib.import_module(RUNTIMES[name][0])


def uses_providers(name: str) -> bool:
    return RUNTIMES[name][1]
