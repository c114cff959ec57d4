"""Bundles are exported once per session and shared (read-only: tests that tamper work on copies)."""

import pytest
from click.testing import CliRunner

from attn_onnx.cli.export_attn import main as export

SMALL = ["--heads", "2", "--embedding-dim", "16"]


@pytest.fixture(scope="session")
def bundle_of(tmp_path_factory):
    """bundle_of(*export_args) -> the bundle folder export-attn writes for those arguments (small widths)."""
    cache = {}
    root = tmp_path_factory.mktemp("bundles")

    def get(*args):
        if args not in cache:
            folder = root / f"b{len(cache)}"
            width = [] if "mask" in args[:2] else SMALL
            result = CliRunner().invoke(export, [*width, *args, "--bundle", str(folder), "--name", "small"])
            assert result.exit_code == 0, result.output
            cache[args] = folder
        return cache[args]

    return get


@pytest.fixture(scope="session")
def bundle(bundle_of):
    return bundle_of()


@pytest.fixture(scope="session")
def float16_bundle(tmp_path_factory):
    """A float16 bundle (heads 2, width 16): vectors as float16 TensorProtos (raw_data), datatype FP16, tolerance
    from the float16 profile. Written through write_bundle with FP16 added to its datatype table, as export-attn
    --bundle --dtype float16 will once bundles take float16 (issue 18, item 3); then this can be
    bundle_of("--dtype", "float16")."""
    from unittest import mock

    from attn_onnx.deploy import bundle
    from attn_onnx.exporter.export import build_module, export_onnx, in_dtype
    from attn_onnx.exporter.spec import ExportSpec

    spec = ExportSpec(heads=2, embedding_dim=16, dtype="float16").validate()
    stored = in_dtype(build_module(spec), "float16")
    proto, spec = export_onnx(spec, stored)
    with mock.patch.dict(bundle.DATATYPES, {"float16": "FP16"}):
        return bundle.write_bundle(tmp_path_factory.mktemp("half") / "bundle", proto, spec, stored, name="half")
