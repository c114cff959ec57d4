"""onnxruntime, on exactly the execution provider asked for (never a silent fallback)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from attn_onnx.errors import ProviderError, RuntimeFailure, UsageError, first_line
from attn_onnx.runtime_check.runners import PROVIDERS


def create_ort_session(model: bytes | str | Path, provider: str = "cpu", tf32: bool = False):
    """An onnxruntime session on exactly `provider` ("cpu" or "cuda"), or ProviderError."""
    import onnxruntime as ort

    if provider not in PROVIDERS:
        raise UsageError(f"unknown provider {provider!r}; choose from {list(PROVIDERS)}")
    wanted = PROVIDERS[provider]
    if provider == "cuda" and hasattr(ort, "preload_dlls"):
        try:
            ort.preload_dlls()  # the CUDA and cuDNN libraries that torch's wheels ship, where present
        except Exception:  # noqa: BLE001 - the availability check below says what is missing
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
        raise RuntimeFailure(f"onnxruntime could not load the model on {wanted}: {first_line(exc)}") from None
    if session.get_providers()[0] != wanted:
        raise ProviderError(f"requested {wanted}, but onnxruntime fell back to {session.get_providers()}")
    return session


class OrtRunner:
    """onnxruntime with one execution provider; CUDA runs through IO binding with TF32 off by default."""

    def __init__(self, model: bytes | str | Path, provider: str = "cpu", tf32: bool = False):
        self.provider, self.tf32 = provider, tf32
        self.name = label(provider, tf32=tf32)
        self.precision = "tf32" if tf32 else "float32"
        self.session = create_ort_session(model, provider, tf32)
        self.output_names = [o.name for o in self.session.get_outputs()]

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        if self.provider == "cpu":
            return dict(zip(self.output_names, self.session.run(self.output_names, feeds)))
        import onnxruntime as ort

        binding = self.session.io_binding()
        for name, array in feeds.items():
            binding.bind_ortvalue_input(name, ort.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(array),
                                                                              "cuda", 0))
        for name in self.output_names:
            binding.bind_output(name, "cuda", 0)
        self.session.run_with_iobinding(binding)
        return dict(zip(self.output_names, binding.copy_outputs_to_cpu()))


def label(provider, config=None, tf32: bool | None = None) -> str:
    tf32 = (config.tf32 and provider == "cuda") if tf32 is None else tf32
    return f"onnxruntime/{provider}" + ("+tf32" if tf32 else "")


def make(model, module, config, provider) -> OrtRunner:
    return OrtRunner(model.source(), provider, tf32=config.tf32 and provider == "cuda")
