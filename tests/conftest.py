"""Exports are slow (seconds each): every variant is exported once per session and shared."""

import pytest

from attn_onnx.deploy import export_model
from attn_onnx.exporter.export import build_module
from attn_onnx.exporter.spec import ExportSpec


@pytest.fixture(scope="session")
def exported(tmp_path_factory):
    """exported(**spec_fields) -> (path, spec, module): the model for that spec, written once."""
    cache = {}
    folder = tmp_path_factory.mktemp("models")

    def get(**fields):
        key = tuple(sorted(fields.items()))
        if key not in cache:
            spec = ExportSpec(**fields).validate()
            module = build_module(spec, seed=0) if spec.kind.has_weights else None
            name = "_".join(f"{k}-{v}" for k, v in key) or "default"
            path = folder / f"{name}.onnx"
            result = export_model(spec, path, seed=0, check=False)  # the same weights as `module`
            cache[key] = (path, result.spec, module)
        return cache[key]

    return get


@pytest.fixture(scope="session")
def small_mha(exported):
    """A small mha (2 heads, 16 wide) for the tests that build broken variants of it."""
    return exported(heads=2, embedding_dim=16)

