"""export-attn's output forms: for each form in deploy/forms/, the options that ask for it and set it, how their
values become the form's settings, and the line printed for what it wrote. The forms themselves know no option.

A new form: its file and FORMS line in deploy/forms/, and its entry in FORM_OPTIONS here (its options, how
they become its settings, its printed line), which export-attn inserts where --out, --bundle and --triton-repo
stand. tests/deploy/test_pipeline.py fails on a form in FORMS without an entry here.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import click

from attn_onnx.deploy.forms import Bundle, OnnxFile, OutputForm, TritonRepo, Written
from attn_onnx.vocab import TRITON_BACKENDS


@dataclass(frozen=True)
class FormOptions:
    """One output form as export-attn asks for it."""

    form: type[OutputForm]  # its class in deploy/forms/
    options: tuple[click.Option, ...]  # the option that asks for the form (its target) first, then the form's own
    line: Callable[[Written, object], str]  # what export-attn prints for what it wrote (and the Exported)
    settings: Callable[[dict], dict] = lambda values: {}  # its fields from the option values (--name's too)
    named: bool = False  # it takes --name (a model name inside the form)

    @property
    def flag(self) -> str:
        """The option that asks for the form: --out, --bundle, --triton-repo."""
        return self.options[0].opts[0]

    @property
    def own(self) -> list[str]:
        """The parameter names of the form's own options (not its target's)."""
        return [option.name for option in self.options[1:]]

    def asked(self, values: dict) -> OutputForm | None:
        """The form the option values ask for, named in messages by its option; None without its target."""
        target = values[self.options[0].name]
        # each form's constructor is its own class's (its target, then its fields): OutputForm's says none of it
        make: Callable[..., OutputForm] = self.form
        return None if target is None else make(target, **self.settings(values), label=self.flag)


def written_line(written: Written, exported) -> str:
    """What export-attn prints for one form it wrote (`exported`: the pipeline's Exported, for the model's spec
    and interface)."""
    return next(f for f in FORM_OPTIONS.values() if f.form.__name__ == written.form).line(written, exported)


def _onnx_file_line(written: Written, exported) -> str:
    import onnx

    from attn_onnx.exporter.variants import DEFAULT as DEFAULT_VARIANT

    spec, size = exported.spec, written.detail["bytes"]
    size_text = f"{size / 2**20:.1f} MiB" if size >= 2**20 else f"{size / 2**10:.1f} KiB"
    how = f", {spec.variant}" if spec.variant != DEFAULT_VARIANT else ""
    how += f", optimized ({spec.optimize})" if spec.optimize else ""
    how += f", projections {spec.quantize}" if spec.quantize else ""
    how += f", weights in {written.files[1]}" if len(written.files) > 1 else ""
    lines = [f"wrote {written.path} ({size_text}, opset {spec.opset}, {spec.kind.summary(spec)}{how})"]
    for side, values in (("input", exported.proto.graph.input), ("output", exported.proto.graph.output)):
        for value in values:
            elem = onnx.helper.tensor_dtype_to_np_dtype(value.type.tensor_type.elem_type)
            dims = [d.dim_param or d.dim_value for d in value.type.tensor_type.shape.dim]
            lines.append(f"  {side:<6} {value.name:<10} {str(elem):<8} [{', '.join(map(str, dims))}]")
    return "\n".join(lines)


def _bundle_line(written: Written, exported) -> str:
    return (
        f"wrote bundle {written.path}/ ({written.detail['name']!r}: {', '.join(written.files)}, "
        f"{written.detail['golden_sets']} golden vector sets)"
    )


def _triton_repo_line(written: Written, exported) -> str:
    vectors = " and golden vectors" if written.detail["golden_sets"] else ""
    return (
        f"wrote Triton model {written.path}/ ({written.detail['backend']} backend: {', '.join(written.files)}{vectors})"
    )


def _bundle_settings(values: dict) -> dict:
    return {"name": values["name"]}


def _triton_repo_settings(values: dict) -> dict:
    return {
        "name": values["name"],
        "max_batch_size": values["triton_max_batch"],
        "gpu": values["triton_gpu"],
        "backend": values["triton_backend"],
        "max_queue_delay_us": values["triton_max_queue_delay_us"],
    }


def _target(flag: str, metavar: str, help: str) -> click.Option:
    return click.Option([flag], type=click.Path(path_type=Path), default=None, metavar=metavar, help=help)


FORM_OPTIONS = {
    "onnx": FormOptions(OnnxFile, (_target("--out", "FILE", "The .onnx file to write."),), _onnx_file_line),
    "bundle": FormOptions(
        Bundle,
        (
            _target(
                "--bundle",
                "DIR",
                "Write a verifiable bundle folder: model.onnx, manifest.json and golden vectors "
                "(test_data_set_N/) from the float64 PyTorch module.",
            ),
        ),
        _bundle_line,
        settings=_bundle_settings,
        named=True,
    ),
    "triton": FormOptions(
        TritonRepo,
        (
            _target(
                "--triton-repo",
                "DIR",
                "Write the model into this Triton model repository: REPO/NAME/config.pbtxt "
                "and REPO/NAME/1/model.onnx (onnxruntime backend).",
            ),
            click.Option(
                ["--triton-max-batch"],
                type=click.IntRange(min=0),
                default=8,
                show_default=True,
                help="[with --triton-repo] max_batch_size for Triton's dynamic batching (0: off).",
            ),
            click.Option(
                ["--triton-gpu"], is_flag=True, help="[with --triton-repo] A GPU instance group instead of CPU."
            ),
            click.Option(
                ["--triton-backend"],
                type=click.Choice(TRITON_BACKENDS),
                default="onnxruntime",
                show_default=True,
                help="[with --triton-repo] onnxruntime: Triton's onnxruntime backend "
                "(NVIDIA's containers); python: its Python backend, with 1/model.py running the model in "
                "onnxruntime and batching the requests (the tested path here; docs/serving-triton.md).",
            ),
            click.Option(
                ["--triton-max-queue-delay-us"],
                type=click.IntRange(min=0),
                default=0,
                show_default=True,
                help="[with --triton-repo] How long Triton's dynamic batcher may hold a request for others "
                "to join its batch, in microseconds (0, Triton's default: only those already queued).",
            ),
        ),
        _triton_repo_line,
        settings=_triton_repo_settings,
        named=True,
    ),
}
