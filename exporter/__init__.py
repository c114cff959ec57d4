"""Export the seed's attention modules to ONNX: the Python API beneath `export-attn`.

    from exporter import ExportSpec, build_module, export_model
    result = export_model(ExportSpec(heads=8, embedding_dim=512), "mha.onnx", module=build_module(ExportSpec()))

Names are imported on first use, so that `export-attn --help` answers without importing torch.
"""

import importlib

__version__ = "0.1.0"

_LAZY = {
    "AttnOnnxError": "exporter.errors",
    "ExportResult": "exporter.export",
    "build_module": "exporter.export",
    "export_model": "exporter.export",
    "export_onnx": "exporter.export",
    "ExportSpec": "exporter.spec",
    "load_state_dict": "exporter.weights",
}

__all__ = [*_LAZY, "__version__"]


def __getattr__(name):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'exporter' has no attribute {name!r}")
