"""onnxruntime, on exactly the execution provider asked for (never a silent fallback)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx

from attn_onnx.dtypes import FLOAT_DTYPES, is_bfloat16
from attn_onnx.errors import ProviderError, RuntimeFailure, UnsupportedModelError, UsageError, first_line
from attn_onnx.vocab import PROVIDERS


def create_ort_session(model: bytes | str | Path, provider: str = "cpu", tf32: bool = False):
    """An onnxruntime session on exactly `provider` ("cpu" or "cuda"), or ProviderError."""
    import onnxruntime as ort

    if provider not in PROVIDERS:
        raise UsageError(f"unknown provider {provider!r}; choose from {list(PROVIDERS)}")
    wanted = PROVIDERS[provider]
    if provider == "cuda" and hasattr(ort, "preload_dlls"):
        try:
            ort.preload_dlls()  # the CUDA and cuDNN libraries that torch's wheels ship, where present
        except Exception:
            pass
    available = ort.get_available_providers()
    if wanted not in available:
        raise ProviderError(f"requested {wanted}; available: {available}")
    options = {"use_tf32": "1" if tf32 else "0"} if provider == "cuda" else {}
    session_options = ort.SessionOptions()
    session_options.log_severity_level = 4  # fatal only: a failing run is reported as the case's error
    model = str(model) if isinstance(model, Path) else model
    try:
        session = ort.InferenceSession(model, session_options, providers=[(wanted, options)])
    except Exception as exc:
        if "NOT_IMPLEMENTED" in str(exc):  # no kernel for an operator at this dtype: bfloat16 MatMul on CPU, say
            raise UnsupportedModelError(
                f"onnxruntime's {wanted} cannot run this model: {_kernel_missing(exc)}"
            ) from None
        raise RuntimeFailure(f"onnxruntime could not load the model on {wanted}: {first_line(exc)}") from None
    if session.get_providers()[0] != wanted:
        raise ProviderError(f"requested {wanted}, but onnxruntime fell back to {session.get_providers()}")
    return session


def _kernel_missing(exc: Exception) -> str:
    """'Could not find an implementation for MatMul(13) node with name ...' without the name and the prefix."""
    import re

    text = first_line(exc)
    match = re.search(r"Could not find an implementation for (\S+) node", text)
    return f"it has no kernel for {match[1]} at this model's dtype" if match else text


class OrtRunner:
    """onnxruntime with one execution provider; CUDA runs through IO binding with TF32 off by default.

    `precision` is the model's float dtype (float32, float16, bfloat16), or tf32 where CUDA may use it.
    """

    def __init__(
        self, model: bytes | str | Path, provider: str = "cpu", tf32: bool = False, precision: str = "float32"
    ):
        self.provider, self.tf32 = provider, tf32
        self.name = label(provider, tf32=tf32)
        self.precision = "tf32" if tf32 and precision == "float32" else precision
        self.session = create_ort_session(model, provider, tf32)
        self.output_names = [o.name for o in self.session.get_outputs()]

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        if self.provider == "cpu":
            return dict(zip(self.output_names, self.session.run(self.output_names, feeds)))
        import onnxruntime as ort

        binding = self.session.io_binding()
        for name, array in feeds.items():
            binding.bind_ortvalue_input(name, _ortvalue(ort, np.ascontiguousarray(array)))
        for name in self.output_names:
            if self.precision == "bfloat16":
                binding.bind_output(name, "cpu")  # read back through its bits (from_ortvalue)
            else:
                binding.bind_output(name, "cuda", 0)
        self.session.run_with_iobinding(binding)
        if self.precision != "bfloat16":
            return dict(zip(self.output_names, binding.copy_outputs_to_cpu()))
        return dict(zip(self.output_names, (from_ortvalue(v) for v in binding.get_outputs())))


def _ortvalue(ort, array: np.ndarray):
    """The OrtValue bound as an input: on the GPU; bfloat16, which onnxruntime's numpy bridge does not know,
    on the CPU through its bits (onnxruntime copies it over)."""
    if is_bfloat16(array):
        return ort.OrtValue.ortvalue_from_numpy_with_onnx_type(array.view(np.uint16), onnx.TensorProto.BFLOAT16)
    return ort.OrtValue.ortvalue_from_numpy(array, "cuda", 0)


def from_ortvalue(value) -> np.ndarray:
    """An output OrtValue as numpy; a bfloat16 one (which must lie on the CPU) through its bits."""
    if value.data_type() != "tensor(bfloat16)":
        return value.numpy()
    import ctypes

    shape = value.shape()
    bits = np.ctypeslib.as_array((ctypes.c_uint16 * int(np.prod(shape))).from_address(value.data_ptr()))
    return bits.copy().reshape(shape).view(FLOAT_DTYPES["bfloat16"])


def missing() -> str:
    return ""  # a dependency of the package


def versions() -> dict[str, str]:
    import onnxruntime as ort

    return {"onnxruntime": ort.__version__, "onnxruntime_providers": ",".join(ort.get_available_providers())}


def label(provider, config=None, tf32: bool | None = None) -> str:
    tf32 = (config.tf32 and provider == "cuda") if tf32 is None else tf32
    return f"onnxruntime/{provider}" + ("+tf32" if tf32 else "")


def make(model, module, config, provider) -> OrtRunner:
    return OrtRunner(model.source(), provider, tf32=config.tf32 and provider == "cuda", precision=model.spec.precision)
