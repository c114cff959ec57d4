"""Forms an exported model ships in, for services that are not written in Python: a verifiable bundle
(model, manifest, golden vectors) and a Triton model repository, beside the plain .onnx file; and the one
export pipeline that validates, builds, checks and writes them. They sit above runtime_check because a
bundle's vectors are the float64 golden's answers, and checking a model runs the runtimes.

    from attn_onnx.deploy import Bundle, OnnxFile, TritonRepo, export_model
    exported = export_model(ExportSpec(heads=8), OnnxFile("mha.onnx"), Bundle("mha-bundle"), module=module)

Names are imported on first use, so that `export-attn --help` answers without importing torch.
"""

from attn_onnx.lazy import lazy_names

_LAZY = {
    "export_model": "attn_onnx.deploy.forms.pipeline",
    "Exported": "attn_onnx.deploy.forms.pipeline",
    "Tuning": "attn_onnx.deploy.forms.pipeline",
    "FORMS": "attn_onnx.deploy.forms",
    "OnnxFile": "attn_onnx.deploy.forms",
    "Bundle": "attn_onnx.deploy.forms",
    "TritonRepo": "attn_onnx.deploy.forms",
}

__all__ = list(_LAZY)

__getattr__ = lazy_names(__name__, _LAZY)
