"""OpenVINO on the CPU (an optional extra: pip install '.[openvino]'), reading the ONNX model directly, at
f32 inference precision (never its bf16 default on CPUs that have bf16)."""

from __future__ import annotations

import numpy as np

from attn_onnx.errors import ProviderError, UnsupportedModelError


class OpenVinoRunner:
    name = "openvino/cpu"

    def __init__(self, data: bytes, precision: str = "float32"):
        self.precision = precision  # the model's dtype; OpenVINO computes at f32 inside
        try:
            import openvino as ov
        except ImportError:
            raise ProviderError("openvino is not installed (pip install '.[openvino]')") from None
        core = ov.Core()
        try:
            compiled = core.compile_model(core.read_model(data), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
        except RuntimeError as exc:  # an operator OpenVINO cannot read or compile (com.microsoft ops, say)
            raise UnsupportedModelError(f"OpenVINO cannot compile this model: {_first_line(exc)}") from None
        self.request = compiled.create_infer_request()
        self.output_names = [o.get_any_name() for o in compiled.outputs]

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        results = self.request.infer(feeds)
        return {name: np.asarray(value) for name, value in zip(self.output_names, results.values())}


def _first_line(exc: Exception) -> str:
    """OpenVINO's message in one line: the operators it failed on (its conversion summary) if it gives them,
    else its first line that is not a C++ source location."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    failed = [line for line in lines if line.startswith("-- Conversion is failed for:")]
    if failed:
        return failed[-1][3:]
    useful = [line for line in lines if not line.startswith(("Exception from", "Check '"))]
    return (useful or lines or [type(exc).__name__])[0][:300]


def missing() -> str:
    import importlib.util

    return "" if importlib.util.find_spec("openvino") else "openvino is not installed (pip install '.[openvino]')"


def versions() -> dict[str, str]:
    if missing():
        return {}
    import openvino

    return {"openvino": openvino.__version__}


def label(provider, config) -> str:
    return OpenVinoRunner.name


def make(model, module, config, provider=None) -> OpenVinoRunner:
    if model.spec.dtype == "bfloat16":
        raise UnsupportedModelError(
            "this runner does not feed bfloat16 arrays to OpenVINO (numpy has no bfloat16 of its own)"
        )
    return OpenVinoRunner(model.source(), model.spec.precision)
