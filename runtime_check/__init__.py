"""Prove that an exported attention model computes what its PyTorch module computes, on the runtimes
and execution providers it will ship on.

    from runtime_check import check_model
    report = check_model("mha.onnx", runtimes=("onnxruntime", "reference"), providers=("cpu",))
    print(report.summary()); report.raise_for_failures()

Names are imported on first use, so that `check-attn --help` answers without importing torch.
"""

import importlib

_LAZY = {
    "QUICK": "runtime_check.cases",
    "Case": "runtime_check.cases",
    "Sweep": "runtime_check.cases",
    "generate_cases": "runtime_check.cases",
    "check_model": "runtime_check.check",
    "plot_case": "runtime_check.check",
    "FLOAT32": "runtime_check.compare",
    "TF32": "runtime_check.compare",
    "OutputComparison": "runtime_check.compare",
    "Tolerance": "runtime_check.compare",
    "CaseResult": "runtime_check.report",
    "Report": "runtime_check.report",
}

__all__ = list(_LAZY)


def __getattr__(name):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'runtime_check' has no attribute {name!r}")
