"""The C++ consumer (examples/cpp): verify_bundle runs a bundle's golden sets and decode steps in onnxruntime's
C++ API and prints verify.js's lines; embed runs the lines a service needs; bench_latency times a model.

Built once per session into .deps/cpp/build (scripts/setup/cpp.sh builds there too, so this is a no-op after
it) against this interpreter's onnxruntime. Skipped, visibly, where g++ or cmake are absent or the headers
were not fetched (run scripts/setup/cpp.sh)."""

import hashlib
import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from attn_onnx.exporter.variants import VARIANTS
from tests.deploy.tamper import change_a_weight, copy_of, move_a_value, rehash

ROOT = Path(__file__).resolve().parents[2]
DEPS = ROOT / ".deps" / "cpp"
INCLUDE = DEPS / "include" / "onnxruntime"
BUILD = DEPS / "build"
LINE = re.compile(r"^(PASSED|FAILED) \| onnxruntime-cpp \| (.+?) \| max_abs=(\S+)(?: \| (.+))?$")
pytestmark = [
    pytest.mark.skipif(shutil.which("g++") is None, reason="g++ is not installed: run scripts/setup/cpp.sh"),
    pytest.mark.skipif(shutil.which("cmake") is None, reason="cmake is not installed: run scripts/setup/cpp.sh"),
    pytest.mark.skipif(
        not (INCLUDE / "onnxruntime_cxx_api.h").is_file(),
        reason="onnxruntime's C++ headers are not in .deps/cpp: run scripts/setup/cpp.sh",
    ),
    pytest.mark.skipif(
        not Path("/usr/include/nlohmann/json.hpp").is_file() or not Path("/usr/include/openssl/evp.h").is_file(),
        reason="nlohmann-json3-dev or libssl-dev is not installed: run scripts/setup/cpp.sh",
    ),
]


@pytest.fixture(scope="session")
def build():
    """examples/cpp configured and built against the onnxruntime this interpreter imports."""
    import onnxruntime

    lib_dir = Path(onnxruntime.__file__).parent / "capi"
    for command in (
        [
            "cmake",
            "-S",
            ROOT / "examples" / "cpp",
            "-B",
            BUILD,
            f"-DONNXRUNTIME_INCLUDE_DIR={INCLUDE}",
            f"-DONNXRUNTIME_LIB_DIR={lib_dir}",
        ],
        ["cmake", "--build", BUILD, "-j", str(os.cpu_count() or 1)],
    ):
        result = subprocess.run(list(map(str, command)), capture_output=True, text=True, timeout=600)
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return BUILD


def verify(build, folder):
    return subprocess.run([str(build / "verify_bundle"), str(folder)], capture_output=True, text=True, timeout=120)


def parsed(stdout):
    """(verdict, label, max_abs, reasons) per set line, and the summary line."""
    lines = stdout.strip().splitlines()
    matches = [LINE.match(line) for line in lines[:-1]]
    assert all(matches), lines
    return [m.groups() for m in matches], lines[-1]


def labels(manifest):
    from attn_onnx.deploy.bundle import step_label

    sets = [f"{s['folder']} ({s['case']})" for s in manifest["test_data_sets"]]
    return sets + [step_label(s) for s in manifest.get("decode", {}).get("steps", [])]


def manifest_of(folder):
    return json.loads((folder / "manifest.json").read_text())


def sha256(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.parametrize(
    "args",
    [
        (),
        ("--kv-cache",),
        ("--kv-cache", "--max-len", "32", "--attention-impl", "ort-gqa"),
        ("--external-data",),
        ("--dtype", "float16"),
    ],
    ids=["default", "kv-cache", "static-cache", "external-weights", "float16"],
)
def test_every_set_and_decode_step_passes_one_line_each(build, bundle_of, args):
    folder = bundle_of(*args)
    manifest = manifest_of(folder)
    result = verify(build, folder)
    assert result.returncode == 0, result.stdout + result.stderr
    rows, summary = parsed(result.stdout)
    assert [(verdict, label) for verdict, label, _, _ in rows] == [("PASSED", label) for label in labels(manifest)]
    assert all(float(max_abs) <= manifest["tolerance"]["atol"] for _, _, max_abs, _ in rows)
    assert summary == f"{len(rows)} passed, 0 failed" and result.stderr == ""
    if args == ("--kv-cache",):  # the decode steps ran, threading the cache: the sets, then 4 steps
        assert len(manifest["decode"]["steps"]) == 4 and rows[-1][1] == "decode/step_3 (1 new, past 6)"
    elif "--max-len" in args:  # a static cache's buffers from zeros, lengths per sequence, presents' valid part
        assert len(manifest["decode"]["steps"]) == 6 and rows[-1][1] == "decode/step_5 (1 new, past [1, 5])"


NODE_DIR = ROOT / "examples" / "node"


@pytest.mark.skipif(
    shutil.which("node") is None or not (NODE_DIR / "node_modules" / "onnxruntime-node").is_dir(),
    reason="node or examples/node/node_modules is absent: no verify.js to compare with",
)
def test_the_lines_are_verify_js_lines(build, bundle_of, tmp_path):
    """Line for line as verify.js prints them, the runtime's name and the measured max_abs aside; a failure's
    reason too, JavaScript's number formatting included (atol=0.00001)."""
    folder = tmp_path / "b"
    shutil.copytree(bundle_of("--kv-cache"), folder)
    _shift_weights(folder)

    def lines(command):
        result = subprocess.run(command, capture_output=True, text=True, timeout=120)
        assert result.returncode == 1, result.stderr
        return [
            re.sub(
                r"max_abs=\S+",
                "max_abs=M",
                line.replace("onnxruntime-node", "RUNTIME").replace("onnxruntime-cpp", "RUNTIME"),
            )
            for line in result.stdout.splitlines()
        ]

    node = lines(["node", str(NODE_DIR / "verify.js"), str(folder)])
    assert lines([str(build / "verify_bundle"), str(folder)]) == node
    assert "beyond atol=0.00001, rtol=0.0001" in node[0]


def _tamper(path, where):
    data = bytearray(path.read_bytes())
    data[where] ^= 0x10
    path.write_bytes(bytes(data))


@pytest.mark.parametrize(
    "args, relative",
    [
        ((), "model.onnx"),
        ((), "test_data_set_2/output_0.pb"),
        (("--kv-cache",), "decode/step_2/input_0.pb"),
        (("--external-data",), "model.onnx.data"),
    ],
    ids=["model", "vector", "decode-vector", "external-weights"],
)
def test_a_changed_file_is_one_error_line_naming_it(build, bundle_of, tmp_path, args, relative):
    folder = tmp_path / "b"
    shutil.copytree(bundle_of(*args), folder)
    path = folder / relative
    _tamper(path, len(path.read_bytes()) // 2 if relative.startswith("model") else -3)
    result = verify(build, folder)
    assert result.returncode == 1 and result.stdout == ""
    expected = manifest_of(folder)
    said = sha256(folder / relative)[:12]
    stated = next(f["sha256"] for f in _files(expected) if f["file"] == relative)[:12]
    assert result.stderr == (
        f"Error: the bundle was changed after it was written: {relative} (sha256 {said}..., "
        f"the manifest says {stated}...)\n"
    )


def _files(manifest):
    yield manifest["model"]
    if "data" in manifest["model"]:
        yield manifest["model"]["data"]
    for entry in manifest["test_data_sets"] + manifest.get("decode", {}).get("steps", []):
        yield from entry["inputs"] + entry["outputs"]


def test_missing_and_escaping_files_are_named(build, bundle, tmp_path):
    folder = tmp_path / "b"
    shutil.copytree(bundle, folder)
    (folder / "test_data_set_1" / "input_3.pb").unlink()
    manifest = manifest_of(folder)
    manifest["test_data_sets"][0]["inputs"][0]["file"] = "../outside.pb"
    (folder / "manifest.json").write_text(json.dumps(manifest))
    result = verify(build, folder)
    assert result.returncode == 1
    assert result.stderr == (
        "Error: the bundle was changed after it was written: ../outside.pb (outside the bundle); "
        "test_data_set_1/input_3.pb (missing)\n"
    )


def _shift_weights(folder, by=1e-3):
    """Every float weight moved by `by` after the export, and the manifest re-hashed to match: the files agree
    with the manifest, the numbers no longer agree with the golden vectors."""
    model = onnx.load(str(folder / "model.onnx"))
    for init in model.graph.initializer:
        array = numpy_helper.to_array(init)
        if array.dtype == np.float32 and array.size > 1:
            init.CopyFrom(numpy_helper.from_array(array + np.float32(by), init.name))
    onnx.save(model, str(folder / "model.onnx"))
    manifest = manifest_of(folder)
    manifest["model"]["sha256"] = sha256(folder / "model.onnx")
    (folder / "manifest.json").write_text(json.dumps(manifest))


def test_weights_changed_after_export_fail_on_the_numbers(build, bundle, tmp_path):
    folder = tmp_path / "b"
    shutil.copytree(bundle, folder)
    _shift_weights(folder)
    result = verify(build, folder)
    assert result.returncode == 1, result.stdout + result.stderr
    rows, summary = parsed(result.stdout)
    assert [label for _, label, _, _ in rows] == labels(manifest_of(folder))
    for verdict, _, max_abs, reason in rows:  # moved by 1e-3, the outputs miss by ~1e-2: far beyond 1e-5
        assert verdict == "FAILED" and float(max_abs) > 1e-3
        assert reason == f"output: max_abs={max_abs} beyond atol=0.00001, rtol=0.0001"
    assert summary == f"0 passed, {len(rows)} failed"


def test_a_model_onnxruntime_cannot_load_is_one_error_line(build, bundle, tmp_path):
    folder = tmp_path / "b"
    shutil.copytree(bundle, folder)
    (folder / "model.onnx").write_bytes(b"not a model")
    manifest = manifest_of(folder)
    manifest["model"]["sha256"] = sha256(folder / "model.onnx")
    (folder / "manifest.json").write_text(json.dumps(manifest))
    result = verify(build, folder)
    assert result.returncode == 1 and result.stdout == ""
    assert result.stderr.startswith("Error: onnxruntime: ") and result.stderr.count("\n") == 1


@pytest.mark.parametrize(
    "how, code, message",
    [
        ("missing", 1, "Error: {folder}: no such folder"),
        ("no-manifest", 1, "Error: {folder} is not a bundle: it has no manifest.json"),
        ("bad-json", 1, "Error: {folder}/manifest.json is not valid JSON: "),
        (
            "other-format",
            1,
            "Error: {folder}/manifest.json is not an attn-onnx bundle manifest (format is not attn-onnx-bundle/1)",
        ),
        ("no-sha256", 1, "Error: {folder}/manifest.json is malformed: test_data_sets[1].outputs[0] lacks 'sha256'"),
        ("truncated-vector", 1, "Error: {folder}/test_data_set_0/input_0.pb: truncated TensorProto"),
        ("no-args", 2, "Error: give a bundle folder (usage: verify_bundle BUNDLE_DIR)"),
        ("two-args", 2, "Error: give one bundle folder (usage: verify_bundle BUNDLE_DIR)"),
    ],
)
def test_a_bad_bundle_or_usage_is_one_error_line(build, bundle, tmp_path, how, code, message):
    folder = tmp_path / "b"
    if how not in ("missing", "no-args", "two-args"):
        shutil.copytree(bundle, folder)
    manifest = folder / "manifest.json"
    if how == "no-manifest":
        manifest.unlink()
    elif how == "bad-json":
        manifest.write_text('{"format": ')
    elif how == "other-format":
        manifest.write_text('{"format": "something-else/1"}')
    elif how == "no-sha256":
        data = json.loads(manifest.read_text())
        del data["test_data_sets"][1]["outputs"][0]["sha256"]
        manifest.write_text(json.dumps(data))
    elif how == "truncated-vector":  # a key (dims, a varint) and no value, re-hashed: the decoder's own finding
        data = json.loads(manifest.read_text())
        (folder / "test_data_set_0" / "input_0.pb").write_bytes(b"\x08")
        data["test_data_sets"][0]["inputs"][0]["sha256"] = sha256(folder / "test_data_set_0" / "input_0.pb")
        manifest.write_text(json.dumps(data))
    args = {"no-args": [], "two-args": [str(folder), str(folder)]}.get(how, [str(folder)])
    result = subprocess.run([str(build / "verify_bundle"), *args], capture_output=True, text=True, timeout=60)
    assert result.returncode == code and result.stdout == ""
    assert result.stderr.startswith(message.format(folder=folder)) and result.stderr.count("\n") == 1


@pytest.mark.parametrize("variant", [v for v in VARIANTS if v != "torch-export"])  # the default: above
def test_every_graph_variant_verifies_in_the_cpp_api(build, bundle_of, variant):
    """The hand-built graphs (a Loop, If branches, com.microsoft kernels) pass every golden set, fully-masked
    rows included, as in Python and Node."""
    folder = bundle_of("--attention-impl", variant)
    result = verify(build, folder)
    assert result.returncode == 0, result.stdout + result.stderr
    rows, summary = parsed(result.stdout)
    expected = [("PASSED", label) for label in labels(manifest_of(folder))]  # coverage sets included
    assert [(verdict, label) for verdict, label, _, _ in rows] == expected
    assert summary == f"{len(rows)} passed, 0 failed"


# --- every element type a bundle may hold: a hand-made bundle of Identity nodes ---------------------------

TYPED = {  # name -> (ONNX type, an array of that type)
    "f32": (TensorProto.FLOAT, np.array([[1.5, -2.25, 3.0]], np.float32)),
    "f16": (TensorProto.FLOAT16, np.array([[0.5, -1.0009765625, 65504.0]], np.float16)),
    "b": (TensorProto.BOOL, np.array([[True, False, True]])),
    "u8": (TensorProto.UINT8, np.array([[0, 7, 255]], np.uint8)),
    "i64": (TensorProto.INT64, np.array([[-(2**40), 0, 3]], np.int64)),
}


def _typed_bundle(folder, expected=None, atol=4e-3, inputs=None):
    """A bundle whose model passes each typed input through (`inputs`: name -> array, in place of TYPED's);
    its one set's expected outputs are TYPED's, or `expected`'s (name -> TensorProto), written in the typed
    fields (float_data, int32_data, int64_data) rather than raw_data, so that both of the decoder's ways are
    read."""
    folder.mkdir()
    graph = helper.make_graph(
        [helper.make_node("Identity", [name], [f"{name}_out"]) for name in TYPED],
        "typed",
        [helper.make_tensor_value_info(name, t, [1, 3]) for name, (t, _) in TYPED.items()],
        [helper.make_tensor_value_info(f"{name}_out", t, [1, 3]) for name, (t, _) in TYPED.items()],
    )
    onnx.save(
        helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=10), str(folder / "model.onnx")
    )
    (folder / "test_data_set_0").mkdir()
    entries_in, entries_out = [], []
    for k, (name, (t, array)) in enumerate(TYPED.items()):
        proto = (expected or {}).get(name) or helper.make_tensor(
            f"{name}_out", t, array.shape, array.flatten().tolist(), raw=False
        )
        given = numpy_helper.from_array((inputs or {}).get(name, array), name)
        for side, tensor, entries in (("input", given, entries_in), ("output", proto, entries_out)):
            path = folder / "test_data_set_0" / f"{side}_{k}.pb"
            path.write_bytes(tensor.SerializeToString())
            entries.append({"file": f"test_data_set_0/{side}_{k}.pb", "name": tensor.name, "sha256": sha256(path)})
    dtypes = {
        "f32": ("float32", "FP32"),
        "f16": ("float16", "FP16"),
        "b": ("bool", "BOOL"),
        "u8": ("uint8", "UINT8"),
        "i64": ("int64", "INT64"),
    }
    io = [
        {"name": name, "dtype": dtypes[name][0], "datatype": dtypes[name][1], "dims": [1, 3], "shape": [1, 3]}
        for name in TYPED
    ]
    manifest = {
        "format": "attn-onnx-bundle/1",
        "name": "typed",
        "mask_convention": "no mask",
        "inputs": io,
        "outputs": [dict(i, name=f"{i['name']}_out") for i in io],
        "model": {"file": "model.onnx", "sha256": sha256(folder / "model.onnx")},
        "tolerance": {"atol": atol, "rtol": atol},
        "test_data_sets": [
            {"folder": "test_data_set_0", "case": "typed", "inputs": entries_in, "outputs": entries_out}
        ],
    }
    (folder / "manifest.json").write_text(json.dumps(manifest))
    return folder


def test_float16_bool_uint8_int64_and_float32_tensors_round_trip(build, tmp_path):
    result = verify(build, _typed_bundle(tmp_path / "typed"))
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout == "PASSED | onnxruntime-cpp | test_data_set_0 (typed) | max_abs=0.00\n1 passed, 0 failed\n"


@pytest.mark.parametrize(
    "name, tensor, reason",
    [
        (
            "f16",
            helper.make_tensor("f16_out", TensorProto.FLOAT16, [1, 3], [0.5, -1.0, 65504.0]),
            "f16_out: max_abs=0.000977 beyond atol=0.0001, rtol=0.0001",
        ),  # one float16 ulp at 1
        (
            "f16",
            helper.make_tensor("f16_out", TensorProto.FLOAT, [1, 3], [0.5, -1.0009765625, 65504.0]),
            "f16_out: type float16 != float32",
        ),
        ("u8", helper.make_tensor("u8_out", TensorProto.UINT8, [3, 1], [0, 7, 255]), "u8_out: shape [1,3] != [3,1]"),
        (
            "i64",
            helper.make_tensor("i64_out", TensorProto.INT64, [1, 3], [-(2**40), 0, 4]),
            "i64_out: max_abs=1.00 beyond atol=0.0001, rtol=0.0001",
        ),
        (
            "b",
            helper.make_tensor("b_out", TensorProto.BOOL, [1, 3], [True, True, True]),
            "b_out: max_abs=1.00 beyond atol=0.0001, rtol=0.0001",
        ),
    ],
    ids=["float16-value", "type", "shape", "int64-value", "bool-value"],
)
def test_a_wrong_value_type_or_shape_of_any_type_fails_its_set(build, tmp_path, name, tensor, reason):
    result = verify(build, _typed_bundle(tmp_path / "typed", {name: tensor}, atol=1e-4))
    _fails_with(result, reason)


def test_nan_and_inf_outputs_fail_whatever_the_tolerance(build, tmp_path):
    result = verify(
        build,
        _typed_bundle(tmp_path / "typed", atol=1e9, inputs={"f32": np.array([[1.5, np.nan, np.inf]], np.float32)}),
    )
    _fails_with(result, "f32_out: 2 NaN/Inf values")


def _fails_with(result, reason):
    assert result.returncode == 1
    rows, summary = parsed(result.stdout)
    ((verdict, _, _, said),) = rows
    assert summary == "0 passed, 1 failed"
    assert verdict == "FAILED" and said == reason


# --- the embedding example and the latency helper ------------------------------------------------------------


def test_embed_runs_requests_on_one_session_as_python_does(build, bundle):
    """embed's three requests (its README's lines) give the outputs onnxruntime's Python API gives."""
    import onnxruntime as ort

    result = subprocess.run([str(build / "embed"), str(bundle)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert re.fullmatch(
        rf"verified on onnxruntime-cpp {re.escape(ort.__version__)}: 5 golden sets and decode steps "
        r"passed in \d+ ms\n",
        result.stderr,
    ), result.stderr
    session = ort.InferenceSession(str(bundle / "model.onnx"), providers=["CPUExecutionProvider"])
    lines = []
    for batch, q_len, kv_len in ((1, 5, 5), (2, 4, 7), (3, 9, 4)):
        query = np.sin(np.float32(0.01) * np.arange(batch * q_len * 16, dtype=np.float32)).reshape(batch, q_len, 16)
        memory = np.cos(np.float32(0.02) * np.arange(batch * kv_len * 16, dtype=np.float32)).reshape(batch, kv_len, 16)
        mask = (np.arange(kv_len)[None, :] < kv_len - np.arange(batch)[:, None])[:, None, :]
        output = session.run(None, {"query": query, "key": memory, "value": memory, "mask": mask})[0]
        lines.append((output.shape, float(output.astype(np.float64).sum())))
    said = [
        re.fullmatch(r"output \((\d+), (\d+), (\d+)\) sum (\S+)", line).groups() for line in result.stdout.splitlines()
    ]
    assert [tuple(map(int, s[:3])) for s in said] == [shape for shape, _ in lines]
    np.testing.assert_allclose([float(s[3]) for s in said], [total for _, total in lines], rtol=1e-5, atol=1e-4)


def _needs(release):
    def change(copy):
        manifest = json.loads((copy / "manifest.json").read_text())
        manifest["model"]["min_onnxruntime"] = release
        (copy / "manifest.json").write_text(json.dumps(manifest))

    return change


def _moved_and_re_signed(relative):
    def change(copy):
        move_a_value(copy / relative)
        rehash(copy)

    return change


@pytest.mark.parametrize(
    "change, said",
    [
        (
            _moved_and_re_signed("test_data_set_2/output_0.pb"),
            "golden set test_data_set_2 (b2.q6.kv6.masked_row) fails on onnxruntime-cpp {v}: output: "
            "max_abs=0.00100 beyond "
            "atol=0.00001, rtol=0.0001; not serving (--no-verify serves anyway)",
        ),
        (change_a_weight, "golden set test_data_set_0 (b1.q5.kv5.ones) fails on onnxruntime-cpp {v}: output: max_abs="),
        (
            lambda copy: move_a_value(copy / "test_data_set_0" / "input_0.pb"),
            "the bundle was changed after it was written: test_data_set_0/input_0.pb (sha256 ",
        ),
        (
            _needs("99.1.0"),
            "the bundle needs onnxruntime >= 99.1.0 (its manifest's min_onnxruntime); this runs onnxruntime-cpp {v}",
        ),
    ],
    ids=["changed-and-re-signed-output", "changed-weights", "changed-unsigned", "newer-runtime"],
)
def test_embed_refuses_a_bundle_this_runtime_does_not_answer_right(build, bundle, tmp_path, change, said):
    """The service verifies before it serves: nothing on stdout (no request ran), one line on stderr, exit 1.
    --no-verify serves a bundle whose sets fail (and says so), never one that needs a newer onnxruntime."""
    import onnxruntime as ort

    copy = copy_of(bundle, tmp_path)
    change(copy)
    result = subprocess.run([str(build / "embed"), str(copy)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 1 and result.stdout == "", result.stdout
    assert result.stderr.startswith("Error: " + said.format(v=ort.__version__)), result.stderr
    assert result.stderr.count("\n") == 1
    result = subprocess.run(
        [str(build / "embed"), str(copy), "--no-verify"], capture_output=True, text=True, timeout=60
    )
    if "min_onnxruntime" in said:
        assert result.returncode == 1 and "needs onnxruntime >= 99.1.0" in result.stderr
    elif "sha256" not in said:
        assert result.returncode == 0 and len(result.stdout.splitlines()) == 3
        assert result.stderr == "verification skipped (--no-verify): the bundle's golden sets were not run\n"


def test_embed_serves_a_bundle_whose_claim_is_its_own_runtime(build, bundle, tmp_path):
    import onnxruntime as ort

    copy = copy_of(bundle, tmp_path)
    _needs(ort.__version__)(copy)
    result = subprocess.run([str(build / "embed"), str(copy)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    result = subprocess.run([str(build / "embed"), str(copy), "--verify"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and result.stderr == "Error: usage: embed BUNDLE_DIR [--no-verify]\n"


def test_bench_latency_answers_each_round_and_refuses_a_bad_line(build, bundle):
    command = [
        str(build / "bench_latency"),
        str(bundle / "model.onnx"),
        str(bundle / "test_data_set_1"),
        "--threads",
        "1",
    ]
    result = subprocess.run(command, input="2\n2\n", capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    times = [float(line) for line in result.stdout.split()]
    assert len(times) == 2 and all(0 < t < 1000 for t in times)
    result = subprocess.run(command, input="soon\n", capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and result.stderr == "Error: a line on stdin must be TARGET_MS, got 'soon'\n"
