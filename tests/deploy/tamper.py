"""Changing a bundle on purpose, as the tests of every verifier do: a byte flipped, a value moved, the weights
changed, and the manifest re-signed so that only the numbers can tell."""

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper


def copy_of(bundle: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "bundle"
    shutil.copytree(bundle, copy)
    return copy


def flip_a_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[-3] ^= 0x10
    path.write_bytes(bytes(data))


def move_a_value(path: Path, by: float = 1e-3) -> None:
    """The last value of a TensorProto moved by `by` (100x the float32 atol, whatever the value): a change the
    numbers must catch, unlike a flipped bit, whose size depends on the data."""
    tensor = onnx.TensorProto()
    tensor.ParseFromString(path.read_bytes())
    array = numpy_helper.to_array(tensor).copy()
    array.flat[-1] += by
    path.write_bytes(numpy_helper.from_array(array, tensor.name).SerializeToString())


def rehash(bundle: Path) -> None:
    """The manifest re-signed to match its files: only the numbers can tell a change now."""
    manifest = json.loads((bundle / "manifest.json").read_text())
    digest = lambda f: hashlib.sha256((bundle / f).read_bytes()).hexdigest()  # noqa: E731
    manifest["model"]["sha256"] = digest(manifest["model"]["file"])
    for entry in manifest["test_data_sets"] + manifest.get("decode", {}).get("steps", []):
        for f in entry["inputs"] + entry["outputs"]:
            f["sha256"] = digest(f["file"])
    (bundle / "manifest.json").write_text(json.dumps(manifest))


def change_a_weight(bundle: Path) -> None:
    model = onnx.load(bundle / "model.onnx")
    weight = max(model.graph.initializer, key=lambda t: np.prod(t.dims))
    array = numpy_helper.to_array(weight).copy()
    array.flat[: array.size // 4] += 0.01
    weight.CopyFrom(numpy_helper.from_array(array, weight.name))
    onnx.save(model, bundle / "model.onnx")
    rehash(bundle)


def _rewrite(path: Path, change) -> None:
    """The TensorProto at `path` with its array changed in place by `change(array)`."""
    tensor = onnx.TensorProto()
    tensor.ParseFromString(path.read_bytes())
    array = numpy_helper.to_array(tensor).copy()
    change(array)
    path.write_bytes(numpy_helper.from_array(array, tensor.name).SerializeToString())


def move_a_valid_value(path: Path, lengths: list[int], by: float = 1e-3) -> None:
    """The last valid value of the last batch row of an output with valid_lengths (a static cache's present:
    [b, -1, lengths[b] - 1, -1]) moved by `by`: inside the part every verifier compares."""

    def change(array):
        array[-1, -1, lengths[-1] - 1, -1] += by

    _rewrite(path, change)


def noise_beyond(path: Path, lengths: list[int], scale: float = 1.0) -> None:
    """Noise of `scale` (far past any tolerance) in every batch row's positions from lengths[b] on (axis 2): the
    part of an output with valid_lengths that no verifier compares."""
    rng = np.random.default_rng(7)

    def change(array):
        for b, length in enumerate(lengths):
            tail = array[b, :, length:]
            tail[...] = (rng.standard_normal(tail.shape) * scale).astype(array.dtype)
        assert any(length < array.shape[2] for length in lengths), "no tail to fill"

    _rewrite(path, change)
