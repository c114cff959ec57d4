"""onnxruntime-web's WASM backend, the runtime under transformers.js, run by Node: one long-lived Node process
per check (examples/web/runner.js) holds the session, and every case's tensors travel to it and back as raw
bytes in length-prefixed frames (runners/child.py; the protocol is described at the top of runner.js).

It needs `node` on PATH and `npm ci --ignore-scripts --prefix examples/web` (or scripts/setup/web.sh); where
either is absent the runtime is missing, like any other. An operator the WASM build lacks is SKIPPED.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import numpy as np

from attn_onnx import checkout
from attn_onnx.errors import ProviderError, RuntimeFailure, UnsupportedModelError
from attn_onnx.runtime_check.runners.child import Child

WEB_DIR = checkout.path("examples", "web")  # runner.js and its node_modules
PACKAGE = "onnxruntime-web"
THREADS = 1  # WASM threads: one gives the same answers on every run and machine

# numpy dtype -> onnxruntime-web's tensor type (float16 travels as its bits; bool as one byte per element)
TYPES = {
    "float32": "float32",
    "float64": "float64",
    "float16": "float16",
    "int8": "int8",
    "uint8": "uint8",
    "int32": "int32",
    "int64": "int64",
    "bool": "bool",
}
NUMPY_OF = {v: np.dtype(k) for k, v in TYPES.items()}  # onnxruntime-web's type name -> numpy's

# How onnxruntime's session creation says that it has no kernel for an operator (or operator domain)
_UNSUPPORTED = (
    "Could not find an implementation",
    "NOT_IMPLEMENTED",
    "is not a registered function/op",
    "No Op registered for",
    "No opset import for domain",
)


class WebRunner:
    """One model in onnxruntime-web (WASM), in a Node child process that lives as long as this runner."""

    name = "onnxruntime-web/wasm"

    def __init__(
        self, data: bytes, precision: str = "float32", external: dict[str, bytes] | None = None, threads: int = THREADS
    ):
        self.precision = precision  # the model's dtype; the float32 profile for a float32 model
        node, script = _find()
        self._child = Child([node, str(script), "--threads", str(threads)], "the onnxruntime-web process", WEB_DIR)
        hello = self._child.receive()[0]
        self.versions = {
            "onnxruntime_web": f"{hello['web']} ({hello['backend']} backend, {hello['threads']} "
            f"thread{'s' if hello['threads'] != 1 else ''}, node)"
        }
        external = external or {}
        answer, _ = self._child.request(
            {"op": "load", "model": len(data), "external": [{"path": k, "bytes": len(v)} for k, v in external.items()]},
            [data, *external.values()],
        )
        if not answer["ok"]:
            self.close()
            error = _clean(answer["error"])
            if any(marker in error for marker in _UNSUPPORTED):
                raise UnsupportedModelError(f"onnxruntime-web's WASM backend cannot run this model: {error}")
            raise RuntimeFailure(f"onnxruntime-web could not load the model: {error}")
        self.output_names = answer["outputs"]

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        specs, payloads = _tensors(feeds)
        answer, payload = self._child.request({"op": "run", "inputs": specs}, payloads)
        if not answer["ok"]:
            raise RuntimeError(_clean(answer["error"]))
        outputs, at = {}, 0
        for spec in answer["outputs"]:
            dtype = NUMPY_OF[spec["type"]].newbyteorder("<")
            outputs[spec["name"]] = (
                np.frombuffer(payload, dtype, offset=at, count=spec["bytes"] // dtype.itemsize)
                .reshape(spec["dims"])
                .astype(NUMPY_OF[spec["type"]])
            )
            at += spec["bytes"]
        return outputs

    def time(self, feeds: dict[str, np.ndarray], runs: int) -> list[float]:
        """Seconds of each of `runs` session.run calls on `feeds` after one untimed run, timed inside Node (the
        pipe is not in the figures)."""
        specs, payloads = _tensors(feeds)
        answer, _ = self._child.request({"op": "time", "runs": runs, "inputs": specs}, payloads)
        if not answer["ok"]:
            raise RuntimeError(_clean(answer["error"]))
        return answer["seconds"]

    def close(self) -> None:
        """End the Node process (it also ends when this runner is collected, or Python exits)."""
        self._child.close()


def _tensors(feeds: dict[str, np.ndarray]) -> tuple[list[dict], list[bytes]]:
    """The frame's description of each input and its little-endian bytes."""
    specs, payloads = [], []
    for name, array in feeds.items():
        array = np.ascontiguousarray(array)
        if array.dtype.name not in TYPES:
            raise TypeError(f"onnxruntime-web has no tensor type for {array.dtype.name} (input {name!r})")
        specs.append({"name": name, "type": TYPES[array.dtype.name], "dims": list(array.shape), "bytes": array.nbytes})
        payloads.append(array.astype(array.dtype.newbyteorder("<"), copy=False).tobytes())
    return specs, payloads


def _clean(error: str) -> str:
    """onnxruntime's message without the wrapper's prefix and the C++ source location: "Can't create a session.
    ERROR_CODE: 1, ERROR_MESSAGE: /src/.../model.cc:203 onnxruntime::Model::Model(...) Unsupported model IR
    version: 14, ..." -> "Unsupported model IR version: 14, ..." """
    error = re.sub(r"^.*?ERROR_CODE: \d+, ERROR_MESSAGE: ", "", error)
    error = re.sub(r"^\S+\.(?:cc|h):\d+ (?:\w+ )?[\w:~<>]+\(.*?\) ", "", error)
    return error


def _find() -> tuple[str, Path]:
    """node and runner.js, or ProviderError saying what is missing and how to get it."""
    node = shutil.which("node")
    if node is None:
        raise ProviderError("node is not installed (onnxruntime-web runs under Node.js >= 20)")
    if not (WEB_DIR / "node_modules" / PACKAGE / "package.json").is_file():
        raise ProviderError(
            f"{PACKAGE} is not installed in {WEB_DIR} (run `npm ci --ignore-scripts --prefix "
            f"examples/web`, or scripts/setup/web.sh){checkout.note()}"
        )
    return node, WEB_DIR / "runner.js"


def missing() -> str:
    try:
        _find()
    except ProviderError as exc:
        return str(exc)
    return ""


def versions() -> dict[str, str]:
    return {}  # the runner's own, as its Node process reports them (WebRunner.versions)


def label(provider, config) -> str:
    return WebRunner.name


def make(model, module, config, provider=None) -> WebRunner:
    if model.spec.dtype == "bfloat16":
        raise UnsupportedModelError(
            "onnxruntime-web has no bfloat16 tensor type (its Tensor takes float32, float16 and integer types)"
        )
    external = {}
    if model.external:  # its weights, read from beside it (load_model checked where they lie)
        from attn_onnx.model_files import external_locations

        external = {name: (model.path.parent / name).read_bytes() for name in external_locations(model.proto)}
    return WebRunner(model.data, model.spec.precision, external)
