"""The output forms an export is written in: an .onnx file, a verifiable bundle, a Triton model repository; and
the one export pipeline that writes them (pipeline.py: export_model), on the floor above the writers in deploy/.

A form is one file here plus one line in FORMS: a subclass of OutputForm (base.py) holding everything about it:

- its settings, as the fields of a dataclass (`Bundle("mha-bundle", name="mha")`), for the Python API;
- its export-attn options (`OPTIONS`: the one that asks for the form first, then the form's own), and
  `from_options`, which reads them back;
- `check(spec, force)`: what can be refused before any work (the target exists, the dtype it cannot carry);
- `write(model, force)`: the writer, given the model exported and checked once, serialized once.

    from attn_onnx.deploy import Bundle, OnnxFile, export_model
    export_model(spec, OnnxFile("mha.onnx"), Bundle("mha-bundle"), module=module)

export-attn takes every form's options from here; the exporter below knows none of them.
"""

from __future__ import annotations

from attn_onnx.deploy.forms.base import OutputForm
from attn_onnx.deploy.forms.bundle import Bundle
from attn_onnx.deploy.forms.onnx_file import OnnxFile
from attn_onnx.deploy.forms.triton import TritonRepo

FORMS = {"onnx": OnnxFile, "bundle": Bundle, "triton": TritonRepo}

__all__ = ["FORMS", "Bundle", "OnnxFile", "OutputForm", "TritonRepo"]
