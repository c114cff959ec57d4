"""The output forms an export is written in: an .onnx file, a verifiable bundle, a Triton model repository; and
the one export pipeline that writes them (pipeline.py: export_model), on the floor above the writers in deploy/.

A form is one file here plus one line in FORMS: a subclass of OutputForm (base.py) holding everything about it:

- its settings, as the fields of a frozen dataclass (`Bundle("mha-bundle", name="mha")`);
- `check(spec, force)`: what can be refused before any work (the target exists, the dtype it cannot carry);
- `write(model, force)`: the writer, given the model exported and checked once, serialized once; it returns
  a `Written` (base.py): the form, the path, the files, the form's own facts.

    from attn_onnx.deploy import Bundle, OnnxFile, export_model
    exported = export_model(spec, OnnxFile("mha.onnx"), Bundle("mha-bundle"), module=module)
    exported.written["Bundle"].path, exported.written["Bundle"].files

Nothing here knows click: export-attn's options for each form, how their values become its settings, and the
line printed from its Written are the CLI's (cli/forms.py). Messages name a form by its `label` (export-attn
gives its option, --bundle), or by its class's name.
"""

from __future__ import annotations

from attn_onnx.deploy.forms.base import OutputForm, Written
from attn_onnx.deploy.forms.bundle import Bundle
from attn_onnx.deploy.forms.onnx_file import OnnxFile
from attn_onnx.deploy.forms.triton import TritonRepo

FORMS = {"onnx": OnnxFile, "bundle": Bundle, "triton": TritonRepo}

__all__ = ["FORMS", "Bundle", "OnnxFile", "OutputForm", "TritonRepo", "Written"]
