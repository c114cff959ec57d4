"""What every output form provides: each form in this folder is a frozen dataclass of its settings that
subclasses OutputForm, and its write returns a Written record. No option and no printed line lives here:
export-attn's options for each form, and the line it prints from a Written, are the CLI's (cli/forms.py)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import onnx

if TYPE_CHECKING:
    import torch

    from attn_onnx.exporter.spec import ExportSpec, ModelSpec


@dataclass(frozen=True)
class Model:
    """The model as the forms write it: built once, serialized once (`data`; None where `external`)."""

    proto: onnx.ModelProto
    spec: ModelSpec  # the settings with the weight map
    data: bytes | None
    external: bool  # its weights go beside it (asked for, or past protobuf's 2 GiB)
    # the PyTorch twin: the module holding the weights as the model does (a bundle's vectors are its answers);
    # None for a kind without weights
    twin: torch.nn.Module | None


@dataclass(frozen=True)
class Written:
    """What one form wrote, as data: the caller presents it (export-attn prints a line per form, cli/forms.py)."""

    form: str  # the form's class: OnnxFile, Bundle, TritonRepo
    path: Path  # the file or folder that is new (REPO/NAME for a Triton model)
    files: tuple[str, ...]  # the files it holds, by name (inside `path` for a folder; a file and its data file)
    detail: dict = field(default_factory=dict)  # the form's own facts: bytes, the model's name, golden sets


@dataclass(frozen=True)
class OutputForm:
    """An output form: a frozen dataclass of its settings, with the checks and the writer of the form.

    `label` is how messages name the form: export-attn gives each its option (--bundle); where empty, its
    class's name (Bundle), as the Python API reads it."""

    label: str = field(default="", kw_only=True, compare=False, repr=False)

    def what(self) -> str:
        """The form in messages: its label, or its class's name."""
        return self.label or type(self).__name__

    def target(self, spec: ExportSpec) -> Path:
        """Where the form writes: the file or folder that is new (REPO/NAME for a Triton repository)."""
        raise NotImplementedError

    def claims(self, spec: ExportSpec) -> list[tuple[Path, str]]:
        """Every path the form writes, each with how a message names it: no other form's may be the same path,
        or lie inside it, or hold it."""
        return [(Path(self.target(spec)), f"{self.what()} {str(self.target(spec))!r}")]

    def check(self, spec: ExportSpec, force: bool) -> None:
        """UsageError for what can be refused before any work: the target, a dtype the form cannot carry."""
        raise NotImplementedError

    def write(self, model: Model, force: bool) -> Written:
        """Write the form from the exported model; returns what it wrote. Within the pipeline a
        files.staging() transaction is open: a form writes through its helpers (write_folder_atomic,
        model_files.stage_model), which only stage, and the pipeline commits every form together."""
        raise NotImplementedError
