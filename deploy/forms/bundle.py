"""A verifiable bundle, the model with its manifest and golden vectors (deploy/bundle.py); export-attn's
--bundle."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from attn_onnx.deploy.bundle import (
    MANIFEST_FILE,
    MODEL_FILE,
    bundle_cases,
    check_bundle_dtype,
    check_bundle_name,
    write_bundle,
)
from attn_onnx.deploy.forms.base import OutputForm, Written
from attn_onnx.files import check_output_dir
from attn_onnx.model_files import data_file


@dataclass(frozen=True)
class Bundle(OutputForm):
    folder: str | Path  # the bundle folder to write
    name: str = ""  # the model's name in the manifest; the module kind's where empty

    def target(self, spec) -> Path:
        return Path(self.folder)

    def check(self, spec, force: bool) -> None:
        check_bundle_name(self.name or spec.module)
        check_bundle_dtype(spec.dtype)
        check_output_dir(Path(self.folder), force, self.what())

    def write(self, model, force: bool) -> Written:
        """detail: {"name": the model's name in the manifest, "golden_sets": how many test_data_set_N}."""
        name = self.name or model.spec.module
        path = write_bundle(
            self.folder,
            model.proto,
            model.spec,
            model.twin,
            name=name,
            force=force,
            external=model.external,
            data=model.data,
        )
        data = (data_file(Path(MODEL_FILE)).name,) if model.external else ()
        return Written(
            type(self).__name__,
            Path(path),
            (MODEL_FILE, *data, MANIFEST_FILE),
            {"name": name, "golden_sets": len(bundle_cases(model.spec))},
        )
