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
def float16_bundle(bundle_of):
    """A float16 bundle (heads 2, width 16): vectors as float16 TensorProtos (raw_data), datatype FP16, tolerance
    from the float16 profile."""
    return bundle_of("--dtype", "float16")


# export-attn arguments for a bundle of every kind and form a manifest can describe: the schema tests of Python
# (test_bundle.py) and Node (test_node_bundle.py) run over the same list
EVERY_KIND = pytest.mark.parametrize(
    "args",
    [
        (),
        ("--self-attention",),
        ("--kv-cache",),
        ("--kv-cache", "--mask", "input"),
        ("--kv-cache", "--max-len", "32", "--attention-impl", "ort-gqa"),
        ("--module", "attention"),
        ("--module", "mask"),
        ("--dtype", "float16"),
        ("--external-data",),
    ],
    ids=["mha", "mha-self", "mha-cache", "mha-cache-input", "mha-static", "attention", "mask", "float16", "external"],
)
