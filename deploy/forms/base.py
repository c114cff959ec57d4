"""What every output form provides: each form in this folder is a frozen dataclass of its settings that
subclasses OutputForm."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import onnx

if TYPE_CHECKING:
    from attn_onnx.exporter.spec import ExportSpec, ModelSpec


@dataclass(frozen=True)
class Model:
    """The model as the forms write it: built once, serialized once (`data`; None where `external`)."""

    proto: onnx.ModelProto
    spec: ModelSpec  # the settings with the weight map
    data: bytes | None
    external: bool  # its weights go beside it (asked for, or past protobuf's 2 GiB)
    golden: object  # the module holding the weights as the model does: a bundle's vectors are its answers


class OutputForm:
    OPTIONS: list = []  # click.Options: the one asking for the form first (its target), then the form's own
    named: bool = False  # it takes export-attn's --name (a model name inside the form)

    @classmethod
    def flag(cls) -> str:
        """The option that asks for the form: --out, --bundle, --triton-repo."""
        return cls.OPTIONS[0].opts[0]

    @classmethod
    def from_options(cls, values: dict, name: str) -> OutputForm | None:
        """The form export-attn's option values ask for, or None where its target option is absent."""
        raise NotImplementedError

    def target(self, spec: ExportSpec) -> Path:
        """Where the form writes: the file or folder that is new (REPO/NAME for a Triton repository)."""
        raise NotImplementedError

    def claims(self, spec: ExportSpec) -> list[tuple[Path, str]]:
        """Every path the form writes, each with how a message names it: no other form's may be the same path,
        or lie inside it, or hold it."""
        return [(Path(self.target(spec)), f"{self.label()} {str(self.target(spec))!r}")]

    @classmethod
    def label(cls) -> str:
        """How messages name the form: its option (--out), or its class in the Python API."""
        return cls.flag() if cls.OPTIONS else cls.__name__

    def check(self, spec: ExportSpec, force: bool) -> None:
        """UsageError for what can be refused before any work: the target, a dtype the form cannot carry."""
        raise NotImplementedError

    def write(self, model: Model, force: bool) -> str:
        """Write the form from the exported model; returns the line export-attn prints. Within the pipeline a
        files.staging() transaction is open: a form writes through its helpers (write_folder_atomic,
        model_files.stage_model), which only stage, and the pipeline commits every form together."""
        raise NotImplementedError
