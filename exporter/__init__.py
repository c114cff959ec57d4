"""Export the seed's attention modules to ONNX: the Python API beneath `export-attn`.

    from attn_onnx.exporter import ExportSpec, build_module, export_model
    result = export_model(ExportSpec(heads=8, embedding_dim=512), "mha.onnx", module=build_module(ExportSpec()))

Names are imported on first use, so that `export-attn --help` answers without importing torch.
"""

import importlib

from attn_onnx import __version__

_LAZY = {
    "ExportResult": "attn_onnx.exporter.export",
    "build_module": "attn_onnx.exporter.export",
    "export_model": "attn_onnx.exporter.export",
    "export_onnx": "attn_onnx.exporter.export",
    "example_inputs": "attn_onnx.exporter.export",
    "ExportSpec": "attn_onnx.exporter.spec",
    "KINDS": "attn_onnx.exporter.kinds",
    "VARIANTS": "attn_onnx.exporter.variants",
    "load_state_dict": "attn_onnx.exporter.weights",
}

__all__ = [*_LAZY, "__version__"]


def __getattr__(name):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'attn_onnx.exporter' has no attribute {name!r}")
