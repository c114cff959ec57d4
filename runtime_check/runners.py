"""One runner per runtime, all with the same small interface: `run(feeds) -> outputs`.

Session creation lives in a loader beside each runner. Runners raise ProviderError when the runtime or
execution provider asked for is missing, or was silently replaced by another.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Protocol

import numpy as np
import onnx
import torch

from exporter.errors import ProviderError, RuntimeFailure, UsageError, first_line
from exporter.spec import ExportSpec
from models import attention, causal_mask, subsequent_mask

PROVIDERS = {"cpu": "CPUExecutionProvider", "cuda": "CUDAExecutionProvider"}
RUNTIMES = ("onnxruntime", "reference", "openvino", "torch")


class Runner(Protocol):
    name: str  # e.g. "onnxruntime/cpu": what the report lines say

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]: ...


# --- PyTorch --------------------------------------------------------------------------------------------

class TorchRunner:
    """The seed's modules in PyTorch: float64 is the golden every runtime is compared against."""

    def __init__(self, spec: ExportSpec, module: torch.nn.Module | None, dtype: torch.dtype = torch.float64):
        self.spec, self.dtype = spec, dtype
        self.name = f"torch/{str(dtype).removeprefix('torch.')}"
        self.module = copy.deepcopy(module).to(dtype).eval() if module is not None else None
        if spec.module == "mha" and module is None:
            raise UsageError("a TorchRunner for module 'mha' needs the MultiHeadedAttention to run")

    @torch.no_grad()
    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        spec = self.spec
        if spec.module == "mask":
            return {"mask": subsequent_mask(int(feeds["size"])).numpy()}
        query, key, value = (torch.from_numpy(feeds[n]).to(self.dtype) for n in ("query", "key", "value"))
        mask = torch.from_numpy(feeds["mask"]) if spec.mask == "input" else None
        if spec.mask == "causal":
            mask = causal_mask(query.size(-2), key.size(-2))  # (1, q_len, kv_len)
            mask = mask.unsqueeze(0) if spec.module == "attention" else mask  # (1, 1, q_len, kv_len)
        if spec.module == "mha":
            output = self.module(query, key, value, mask)
            outputs = {"output": output, "attn_probs": self.module.attn}
        else:
            output, probs = attention(query, key, value, mask=mask)
            outputs = {"output": output, "attn_probs": probs}
        return {name: outputs[name].numpy() for name in spec.output_names}


# --- onnxruntime ----------------------------------------------------------------------------------------

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
        self.name = f"onnxruntime/{provider}" + ("+tf32" if tf32 else "")
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


# --- onnx.reference -------------------------------------------------------------------------------------

class OnnxReferenceRunner:
    """onnx's own ReferenceEvaluator: an independent, spec-following implementation in numpy."""

    name = "onnx-reference"

    def __init__(self, model: onnx.ModelProto):
        from onnx.reference import ReferenceEvaluator

        self.evaluator = ReferenceEvaluator(model)
        self.output_names = [o.name for o in model.graph.output]

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        with np.errstate(all="ignore"):  # NaN from a broken model is the finding, not a warning
            return dict(zip(self.output_names, self.evaluator.run(None, feeds)))


# --- OpenVINO (optional) --------------------------------------------------------------------------------

class OpenVinoRunner:
    """OpenVINO on the CPU, reading the ONNX file directly, at f32 inference precision (never bf16)."""

    name = "openvino/cpu"

    def __init__(self, model: bytes | str | Path):
        try:
            import openvino as ov
        except ImportError:
            raise ProviderError("openvino is not installed (pip install '.[openvino]')") from None
        core = ov.Core()
        data = Path(model).read_bytes() if not isinstance(model, bytes) else model
        compiled = core.compile_model(core.read_model(data), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
        self.request = compiled.create_infer_request()
        self.output_names = [o.get_any_name() for o in compiled.outputs]

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        results = self.request.infer(feeds)
        return {name: np.asarray(value) for name, value in zip(self.output_names, results.values())}

