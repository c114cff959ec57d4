"""The Node example's bundle reader (examples/node/lib/bundle.js, verify.js) against Python's: the decode steps'
hashes, every TensorProto field a vector may be stored in, and float16 bundles.

Skipped, visibly, where node or the example's node_modules are absent."""

import json
import subprocess

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from tests.deploy.conftest import EVERY_KIND
from tests.deploy.test_node import NODE, NODE_DIR
from tests.deploy.test_node import pytestmark as node_marks

pytestmark = node_marks

# Prints each TensorProto file the reader is given as {name, type, dims, values}, or {error}
READ = """
const b = require('./lib/bundle');
for (const file of process.argv.slice(1)) {
  try {
    const t = b.loadTensor(file);
    const values = Array.from(b.numbers(t), (v) => (Number.isFinite(v) ? v : String(v)));
    console.log(JSON.stringify({ name: t.name, type: t.type, dims: t.dims, values }));
  } catch (err) {
    console.log(JSON.stringify({ error: err.message }));
  }
}
"""


def node_read(*files):
    result = subprocess.run(
        [NODE, "-e", READ, *map(str, files)], cwd=NODE_DIR, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    return [json.loads(line) for line in result.stdout.splitlines()]


def verify(folder):
    return subprocess.run([NODE, "verify.js", str(folder)], cwd=NODE_DIR, capture_output=True, text=True, timeout=120)


def test_a_decode_vector_changed_within_tolerance_fails_verify_naming_it(bundle_of, tmp_path):
    """One float of a decode step's output moved by one ulp: the numbers still pass the manifest's rule, so only
    the hash can catch it, and verify.js must name the file."""
    import shutil

    folder = tmp_path / "bundle"
    shutil.copytree(bundle_of("--kv-cache"), folder)
    manifest = json.loads((folder / "manifest.json").read_text())
    relative = manifest["decode"]["steps"][2]["outputs"][0]["file"]
    tensor = onnx.load_tensor(str(folder / relative))
    original = numpy_helper.to_array(tensor)
    changed = original.copy()
    changed.reshape(-1).view(np.uint32)[3] ^= 1  # the lowest mantissa bit of one float
    tol = manifest["tolerance"]
    assert not np.array_equal(changed, original)
    np.testing.assert_allclose(changed, original, atol=tol["atol"], rtol=tol["rtol"])  # within tolerance
    onnx.save_tensor(numpy_helper.from_array(changed, tensor.name), str(folder / relative))
    result = verify(folder)
    assert result.returncode == 1, result.stdout
    assert result.stderr.startswith("Error: the bundle was changed after it was written: "), result.stderr
    assert f"{relative} (sha256 " in result.stderr


VALUES = {  # (2, 3) of each type, edge values included
    "bool": np.array([[True, False, True], [True, False, False]]),
    "uint8": np.array([[0, 1, 127], [128, 200, 255]], np.uint8),
    "int64": np.array([[-(2**40), -1, 0], [1, 2**40, 7]], np.int64),
    "float32": np.array([[-1.5, 0.0, 3.25], [1e-30, -7e12, 0.1]], np.float32),
    "float16": np.array([[1.0, -2.0, 6.1e-05], [65504.0, 6e-08, 0.1]], np.float16),
}


@pytest.mark.parametrize("raw", [False, True], ids=["typed-fields", "raw_data"])
def test_node_reads_every_field_onnx_helper_writes(tmp_path, raw):
    """onnx.helper.make_tensor with raw=False stores bool, uint8 and float16 (as bit patterns) in int32_data,
    int64 in int64_data, float32 in float_data; with raw=True, in raw_data. Node reads each to the same values."""
    files = []
    for dtype, array in VALUES.items():
        element = helper.np_dtype_to_tensor_dtype(array.dtype)
        values = array.tobytes() if raw else array.ravel()
        tensor = helper.make_tensor(dtype, element, array.shape, values, raw=raw)
        assert bool(tensor.raw_data) == raw
        files.append(tmp_path / f"{dtype}.pb")
        files[-1].write_bytes(tensor.SerializeToString())
    for (dtype, array), got in zip(VALUES.items(), node_read(*files)):
        assert "error" not in got, (dtype, got)
        assert (got["name"], got["type"], got["dims"]) == (dtype, dtype, [2, 3])
        np.testing.assert_array_equal(
            np.asarray(got["values"], np.float64), array.astype(np.float64).ravel(), err_msg=dtype
        )


def test_node_refuses_what_it_does_not_read_with_the_reason(tmp_path):
    cases = {
        "int32": (
            helper.make_tensor("i", TensorProto.INT32, [2], [1, 2]),
            "tensor i: unsupported ONNX data type 6 (int32); this reader takes",
        ),
        "external": (numpy_helper.from_array(np.zeros(2, np.float32), "e"), "tensor e: stored in external data"),
    }
    external = cases["external"][0]
    external.ClearField("raw_data")
    external.data_location = TensorProto.EXTERNAL
    files = []
    for name, (tensor, _) in cases.items():
        files.append(tmp_path / f"{name}.pb")
        files[-1].write_bytes(tensor.SerializeToString())
    for (name, (_, message)), got, file in zip(cases.items(), node_read(*files), files):
        assert got.get("error", "").startswith(f"{file}: {message}"), (name, got)  # the file, then the tensor


def test_a_float16_bundle_verifies_in_node_as_numbers(float16_bundle):
    """Vectors are float16 TensorProtos (data_type 10, raw_data), fed to onnxruntime-node as float16 tensors and
    compared, as numbers, within the manifest's float16 tolerance."""
    manifest = json.loads((float16_bundle / "manifest.json").read_text())
    assert manifest["inputs"][0]["datatype"] == "FP16" and manifest["tolerance"]["atol"] > 1e-5
    first = onnx.load_tensor(str(float16_bundle / manifest["test_data_sets"][0]["inputs"][0]["file"]))
    assert first.data_type == TensorProto.FLOAT16 and first.raw_data
    result = verify(float16_bundle)
    assert result.returncode == 0, result.stdout + result.stderr
    sets = len(manifest["test_data_sets"])
    assert result.stdout.strip().splitlines()[-1] == f"{sets} passed, 0 failed"


def test_a_float16_bundle_with_a_wrong_output_fails_on_the_numbers(float16_bundle, tmp_path):
    """An expected output scaled by 5% (its hash updated): float16 numbers compared as numbers, not as bits."""
    import hashlib
    import shutil

    folder = tmp_path / "bundle"
    shutil.copytree(float16_bundle, folder)
    manifest = json.loads((folder / "manifest.json").read_text())
    entry = manifest["test_data_sets"][1]["outputs"][0]
    tensor = onnx.load_tensor(str(folder / entry["file"]))
    scaled = (numpy_helper.to_array(tensor).astype(np.float32) * 1.05).astype(np.float16)
    onnx.save_tensor(numpy_helper.from_array(scaled, tensor.name), str(folder / entry["file"]))
    entry["sha256"] = hashlib.sha256((folder / entry["file"]).read_bytes()).hexdigest()
    (folder / "manifest.json").write_text(json.dumps(manifest))
    result = verify(folder)
    assert result.returncode == 1, result.stdout
    assert [line.split(" | ")[0] for line in result.stdout.splitlines()[:5]] == [
        "PASSED",
        "FAILED",
        "PASSED",
        "PASSED",
        "PASSED",
    ]


def test_a_malformed_decode_entry_is_one_error_line_naming_it(bundle_of, tmp_path):
    """As check-attn --bundle says it (issue 18, item 4): the key that is missing, exit 1, no stack trace."""
    import shutil

    folder = tmp_path / "bundle"
    shutil.copytree(bundle_of("--kv-cache"), folder)
    manifest = json.loads((folder / "manifest.json").read_text())
    del manifest["decode"]["steps"][1]["inputs"]
    (folder / "manifest.json").write_text(json.dumps(manifest))
    result = verify(folder)
    assert result.returncode == 1
    assert result.stderr == f"Error: {folder / 'manifest.json'} is malformed: decode.steps[1] lacks 'inputs'\n"


@EVERY_KIND
def test_node_validates_every_kinds_manifest_against_the_same_schema(bundle_of, tmp_path, args):
    """lib/bundle.js reads deploy/manifest.schema.json, as Python's read_manifest does: every kind's manifest
    passes, and the same broken one gets the same words from both readers."""
    import shutil

    from attn_onnx.deploy.bundle import manifest_problem

    read = "const {readManifest} = require('./lib/bundle'); readManifest(process.argv[1]); console.log('ok')"
    folder = bundle_of(*args)
    result = subprocess.run([NODE, "-e", read, str(folder)], cwd=NODE_DIR, capture_output=True, text=True, timeout=60)
    assert (result.returncode, result.stdout.strip()) == (0, "ok"), result.stderr
    broken = tmp_path / "broken"
    shutil.copytree(folder, broken)
    manifest = json.loads((broken / "manifest.json").read_text())
    del manifest["test_data_sets"][-1]["outputs"][0]["sha256"]
    manifest["tolerance"]["rtol"] = "0.1"
    (broken / "manifest.json").write_text(json.dumps(manifest))
    result = subprocess.run([NODE, "-e", read, str(broken)], cwd=NODE_DIR, capture_output=True, text=True, timeout=60)
    assert result.returncode != 0
    assert f"manifest.json is malformed: {manifest_problem(manifest)}" in result.stderr
