"""Prove that an exported attention model computes what its PyTorch module computes, on the runtimes
and execution providers it will ship on.

    from attn_onnx.runtime_check import CheckConfig, check_model
    report = check_model("mha.onnx", CheckConfig(runtimes=("onnxruntime", "reference"), providers=("cpu",)))
    print(report.summary()); report.raise_for_failures()

Names are imported on first use, so that `check-attn --help` answers without importing torch.
"""

from attn_onnx.lazy import lazy_names

_LAZY = {
    "QUICK": "attn_onnx.runtime_check.cases",
    "Case": "attn_onnx.runtime_check.cases",
    "Sweep": "attn_onnx.runtime_check.cases",
    "generate_cases": "attn_onnx.runtime_check.cases",
    "CheckConfig": "attn_onnx.runtime_check.check",
    "QUICK_CONFIG": "attn_onnx.runtime_check.check",
    "check_model": "attn_onnx.runtime_check.check",
    "plot_case": "attn_onnx.runtime_check.check",
    "FLOAT32": "attn_onnx.runtime_check.compare",
    "TF32": "attn_onnx.runtime_check.compare",
    "OutputComparison": "attn_onnx.runtime_check.compare",
    "Tolerance": "attn_onnx.runtime_check.compare",
    "tolerance_for": "attn_onnx.runtime_check.compare",
    "load_model": "attn_onnx.runtime_check.model",
    "CaseResult": "attn_onnx.runtime_check.report",
    "Report": "attn_onnx.runtime_check.report",
}

__all__ = list(_LAZY)

__getattr__ = lazy_names(__name__, _LAZY)
