"""--bundle DIR: a verifiable bundle, the model with its manifest and golden vectors (deploy/bundle.py)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import click

from attn_onnx.deploy.bundle import bundle_cases, check_bundle_dtype, check_bundle_name, write_bundle
from attn_onnx.deploy.forms.base import OutputForm
from attn_onnx.files import check_output_dir


@dataclass(frozen=True)
class Bundle(OutputForm):
    folder: str | Path
    name: str = ""  # the model's name in the manifest; the module kind's where empty

    OPTIONS = [click.Option(["--bundle"], type=click.Path(path_type=Path), default=None, metavar="DIR",
                            help="Write a verifiable bundle folder: model.onnx, manifest.json and golden vectors "
                                 "(test_data_set_N/) from the float64 PyTorch module.")]
    named = True

    @classmethod
    def from_options(cls, values: dict, name: str) -> Bundle | None:
        return None if values["bundle"] is None else cls(values["bundle"], name)

    def target(self, spec) -> Path:
        return Path(self.folder)

    def check(self, spec, force: bool) -> None:
        check_bundle_name(self.name or spec.module)
        check_bundle_dtype(spec.dtype)
        check_output_dir(Path(self.folder), force, "--bundle")

    def write(self, model, force: bool) -> str:
        name = self.name or model.spec.module
        path = write_bundle(self.folder, model.proto, model.spec, model.golden, name=name, force=force,
                            external=model.external, data=model.data)
        data = ", model.onnx.data" if model.external else ""
        return (f"wrote bundle {path}/ ({name!r}: model.onnx{data}, manifest.json, "
                f"{len(bundle_cases(model.spec))} golden vector sets)")
