"""Build the ONNX models of the Annotated Transformer's attention modules, in memory: the layer beneath
`export-attn`, whose pipeline (validate, build, check, write) is `attn_onnx.deploy.export_model`.

    from attn_onnx.exporter import ExportSpec, build_module, export_onnx
    spec = ExportSpec(heads=8, embedding_dim=512).validate()
    proto, spec = export_onnx(spec, build_module(spec))

Names are imported on first use, so that `export-attn --help` answers without importing torch.
"""

from attn_onnx import __version__
from attn_onnx.lazy import lazy_names

_LAZY = {
    "build_module": "attn_onnx.exporter.export",
    "export_onnx": "attn_onnx.exporter.export",
    "example_inputs": "attn_onnx.exporter.export",
    "ExportSpec": "attn_onnx.exporter.spec",
    "ModelSpec": "attn_onnx.exporter.spec",
    "KINDS": "attn_onnx.exporter.kinds",
    "VARIANTS": "attn_onnx.exporter.variants",
    "load_state_dict": "attn_onnx.models.weights",
}

__all__ = [*_LAZY, "__version__"]

__getattr__ = lazy_names(__name__, _LAZY)
