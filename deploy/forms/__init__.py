"""The output forms an export is written in: an .onnx file, a verifiable bundle, a Triton model repository.

A form is one file here plus one line in FORMS. The file holds everything about the form:

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

from pathlib import Path
from typing import TYPE_CHECKING

from attn_onnx.deploy.forms.bundle import Bundle
from attn_onnx.deploy.forms.onnx_file import OnnxFile
from attn_onnx.deploy.forms.triton import TritonRepo

if TYPE_CHECKING:
    from attn_onnx.deploy.pipeline import Model
    from attn_onnx.exporter.spec import ExportSpec

FORMS = {"onnx": OnnxFile, "bundle": Bundle, "triton": TritonRepo}


class OutputForm:
    """What every form provides (the forms are dataclasses; this documents the interface they share)."""

    OPTIONS: list  # click.Options: the one asking for the form first (its target), then the form's own
    named: bool  # it takes export-attn's --name (a model name inside the form)

    @classmethod
    def from_options(cls, values: dict, name: str) -> OutputForm | None:
        """The form export-attn's option values ask for, or None where its target option is absent."""
        raise NotImplementedError

    def target(self, spec: ExportSpec) -> Path:
        """Where the form writes: the file or folder that is new (REPO/NAME for a Triton repository)."""
        raise NotImplementedError

    def check(self, spec: ExportSpec, force: bool) -> None:
        """UsageError for what can be refused before any work: the target, a dtype the form cannot carry."""
        raise NotImplementedError

    def write(self, model: Model, force: bool) -> str:
        """Write the form atomically from the exported model; returns the line export-attn prints."""
        raise NotImplementedError


def target_option(form: type) -> str:
    """The name of the option that asks for `form` (its first): "out", "bundle", "triton_repo"."""
    return form.OPTIONS[0].name


__all__ = ["FORMS", "Bundle", "OnnxFile", "OutputForm", "TritonRepo", "target_option"]
