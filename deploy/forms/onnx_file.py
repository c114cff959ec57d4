"""The model as one .onnx file (its weights beside it as FILE.data with external data); export-attn's --out."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from attn_onnx.deploy.forms.base import OutputForm, Written
from attn_onnx.errors import OutputExistsError, UsageError
from attn_onnx.files import check_output_file, current_staging
from attn_onnx.model_files import data_file, stage_model, staged_model


@dataclass(frozen=True)
class OnnxFile(OutputForm):
    path: str | Path  # the .onnx file to write

    def target(self, spec) -> Path:
        return Path(self.path)

    def claims(self, spec) -> list[tuple[Path, str]]:
        out = Path(self.path)
        return [
            (out, f"{self.what()} {str(out)!r}"),
            (data_file(out), f"the data file of {self.what()}, {str(data_file(out))!r}"),
        ]

    def check(self, spec, force: bool) -> None:
        out = Path(self.path)
        check_output_file(out, force, self.what())
        data = data_file(out)  # the model's pair: written with external data, else an earlier export's, removed
        if data.is_dir():
            raise UsageError(f"{str(data)!r}, where {self.what()} {str(out)!r} keeps its weights, is a folder")
        if data.exists() and not force:
            raise OutputExistsError(
                f"{str(data)!r} exists (the data file of {self.what()} {str(out)!r}); pass --force to overwrite it"
            )

    def write(self, model, force: bool) -> Written:
        """detail: {"bytes": the model's and its data file's}."""
        out = Path(self.path)
        if current_staging() is not None:  # the pipeline commits it with the other forms
            size = sum(f.stat().st_size for f in stage_model(model.proto, out, model.external, model.data))
        else:
            with staged_model(model.proto, out, model.external, model.data) as (_, commit):
                size = commit(force)
        files = (out.name, data_file(out).name) if model.external else (out.name,)
        return Written(type(self).__name__, out, files, {"bytes": size})
