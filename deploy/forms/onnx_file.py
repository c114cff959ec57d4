"""--out FILE: the model as one .onnx file (its weights beside it as FILE.data with external data)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import click

from attn_onnx.deploy.forms.base import OutputForm
from attn_onnx.exporter.variants import DEFAULT as DEFAULT_VARIANT
from attn_onnx.files import check_output_file
from attn_onnx.model_files import staged_model


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

    def check(self, spec, force: bool) -> None:
        check_output_file(Path(self.path), force)

    def write(self, model, force: bool) -> str:
        import onnx

        out = Path(self.path)
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
