"""--out FILE: the model as one .onnx file (its weights beside it as FILE.data with external data)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import click

from attn_onnx.deploy.forms.base import OutputForm
from attn_onnx.exporter.variants import DEFAULT as DEFAULT_VARIANT
from attn_onnx.errors import OutputExistsError, UsageError
from attn_onnx.files import check_output_file, current_staging
from attn_onnx.model_files import data_file, stage_model, staged_model


@dataclass(frozen=True)
class OnnxFile(OutputForm):
    path: str | Path

    OPTIONS = [click.Option(["--out"], type=click.Path(path_type=Path), default=None, metavar="FILE",
                            help="The .onnx file to write.")]

    @classmethod
    def from_options(cls, values: dict, name: str) -> OnnxFile | None:
        return None if values["out"] is None else cls(values["out"])

    def target(self, spec) -> Path:
        return Path(self.path)

    def claims(self, spec) -> list[tuple[Path, str]]:
        out = Path(self.path)
        return [(out, f"--out {str(out)!r}"), (data_file(out), f"the data file of --out, {str(data_file(out))!r}")]

    def check(self, spec, force: bool) -> None:
        out = Path(self.path)
        check_output_file(out, force)
        data = data_file(out)  # the model's pair: written with external data, else an earlier export's, removed
        if data.is_dir():
            raise UsageError(f"{str(data)!r}, where --out {str(out)!r} keeps its weights, is a folder")
        if data.exists() and not force:
            raise OutputExistsError(f"{str(data)!r} exists (the data file of --out {str(out)!r}); pass --force "
                                    "to overwrite it")

    def write(self, model, force: bool) -> str:
        import onnx

        out = Path(self.path)
        if current_staging() is not None:  # the pipeline commits it with the other forms
            size = sum(f.stat().st_size for f in stage_model(model.proto, out, model.external, model.data))
        else:
            with staged_model(model.proto, out, model.external, model.data) as (_, commit):
                size = commit(force)
        spec = model.spec
        size_text = f"{size / 2**20:.1f} MiB" if size >= 2**20 else f"{size / 2**10:.1f} KiB"
        how = f", {spec.variant}" if spec.variant != DEFAULT_VARIANT else ""
        how += f", optimized ({spec.optimize})" if spec.optimize else ""
        how += f", projections {spec.quantize}" if spec.quantize else ""
        how += f", weights in {out.name}.data" if model.external else ""
        lines = [f"wrote {out} ({size_text}, opset {spec.opset}, {spec.kind.summary(spec)}{how})"]
        for side, values in (("input", model.proto.graph.input), ("output", model.proto.graph.output)):
            for value in values:
                elem = onnx.helper.tensor_dtype_to_np_dtype(value.type.tensor_type.elem_type)
                dims = [d.dim_param or d.dim_value for d in value.type.tensor_type.shape.dim]
                lines.append(f"  {side:<6} {value.name:<10} {str(elem):<8} [{', '.join(map(str, dims))}]")
        return "\n".join(lines)
