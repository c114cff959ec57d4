"""export-attn --bundle writes a verifiable bundle; check-attn --bundle proves it, and catches tampering."""

import hashlib
import json
import shutil

import numpy as np
import onnx
import pytest
import torch
from click.testing import CliRunner
from onnx import numpy_helper

from attn_onnx.cli.check_attn import main as check
from attn_onnx.cli.export_attn import main as export
from attn_onnx.deploy.bundle import FORMAT, read_manifest
from attn_onnx.runtime_check.model import load_model
from attn_onnx.runtime_check.reference import reference_module
from tests.deploy.conftest import EVERY_KIND, SMALL


def tensor(path):
    t = onnx.TensorProto()
    t.ParseFromString(path.read_bytes())
    return t.name, numpy_helper.to_array(t)


def test_the_manifest_states_the_contract(bundle):
    m = json.loads((bundle / "manifest.json").read_text())
    assert m["format"] == FORMAT and m["name"] == "small"
    assert m["model"]["sha256"] == hashlib.sha256((bundle / "model.onnx").read_bytes()).hexdigest()
    assert m["model"]["opset"] == 18 and m["model"]["min_onnxruntime"] == "1.18.1"  # measured: docs/compatibility.md
    assert m["model"]["min_onnxruntime_source"].startswith("measured: ")
    assert [(i["name"], i["datatype"], i["dims"], i["shape"]) for i in m["inputs"]] == [
        ("query", "FP32", ["batch", "q_len", 16], [-1, -1, 16]),
        ("key", "FP32", ["batch", "kv_len", 16], [-1, -1, 16]),
        ("value", "FP32", ["batch", "kv_len", 16], [-1, -1, 16]),
        ("mask", "BOOL", ["batch", "mask_q_len", "kv_len"], [-1, -1, -1]),
    ]
    assert [(o["name"], o["dtype"]) for o in m["outputs"]] == [("output", "float32")]
    assert "0 means 'masked'" in m["mask_convention"] and "never NaN" in m["mask_convention"]
    assert m["tolerance"]["atol"] == 1e-5 and m["tolerance"]["rtol"] == 1e-4
    assert set(m["producer"]) >= {"attn_onnx", "torch", "onnx", "onnxruntime"}
    for s in m["test_data_sets"]:
        for f in s["inputs"] + s["outputs"]:
            assert hashlib.sha256((bundle / f["file"]).read_bytes()).hexdigest() == f["sha256"]


def test_vectors_cover_the_cases_a_service_must_get_right(bundle):
    m = read_manifest(bundle)
    shapes = {}
    for s in m["test_data_sets"]:
        inputs = dict(tensor(bundle / f["file"]) for f in s["inputs"])
        assert [f["file"].split("/")[1] for f in s["inputs"]] == [f"input_{k}.pb" for k in range(4)]
        shapes[s["case"]] = inputs
    assert any(i["query"].shape[0] == 1 for i in shapes.values())  # batch 1
    assert any(i["query"].shape[1] != i["key"].shape[1] for i in shapes.values())  # q_len != kv_len
    assert any(i["mask"].shape[1] == 1 and i["mask"].shape[0] > 1 for i in shapes.values())  # padding mask
    assert any((~i["mask"].any(-1)).any() for i in shapes.values())  # a fully-masked row
    causal = shapes["b2.q6.kv6.causal"]["mask"][0]
    assert np.array_equal(causal, np.tril(np.ones((6, 6), bool)))


def test_outputs_are_the_float64_modules_answers(bundle):
    loaded = load_model(bundle / "model.onnx")
    module, _ = reference_module(loaded.proto, loaded.spec)
    module = module.double()
    for s in read_manifest(bundle)["test_data_sets"]:
        inputs = dict(tensor(bundle / f["file"]) for f in s["inputs"])
        _, output = tensor(bundle / s["outputs"][0]["file"])
        with torch.no_grad():
            golden = module(
                *(torch.from_numpy(inputs[n].copy()).double() for n in ("query", "key", "value")),
                torch.from_numpy(inputs["mask"].copy()),
            )
        assert output.dtype == np.float32
        np.testing.assert_array_equal(output, golden.numpy().astype(np.float32))  # the golden's bits, cast


def run_check(*args):
    return CliRunner().invoke(check, list(map(str, args)))


@pytest.mark.parametrize(
    "args",
    [
        (),
        ("--module", "attention", "--mask-dtype", "uint8"),
        ("--mask", "causal", "--attn-probs"),
        ("--module", "mask"),
    ],
    ids=["mha", "attention", "causal", "mask"],
)
def test_check_attn_bundle_passes_every_vector(bundle_of, args):
    folder = bundle_of(*args)
    result = run_check("--bundle", folder, "--runtimes", "onnxruntime,reference,torch")
    assert result.exit_code == 0, result.output
    runs = 3 * len(read_manifest(folder)["test_data_sets"])  # every set on every runtime
    assert result.output.strip().splitlines()[-1].startswith(f"PASSED | summary | {runs} passed, 0 failed")


def test_a_mask_module_bundle_is_exact(bundle_of):
    manifest = read_manifest(bundle_of("--module", "mask"))
    assert manifest["tolerance"]["atol"] == 0 and manifest["tolerance"]["rtol"] == 0
    assert [(i["name"], i["datatype"], i["shape"]) for i in manifest["inputs"]] == [("size", "INT64", [])]


def tampered(bundle, tmp_path, how):
    copy = tmp_path / "copy"
    shutil.copytree(bundle, copy)
    target = copy / ("model.onnx" if how == "model" else "test_data_set_2/output_0.pb")
    data = bytearray(target.read_bytes())
    data[len(data) // 2 if how == "model" else -3] ^= 0x10
    target.write_bytes(bytes(data))
    return copy


@pytest.mark.parametrize("how, named", [("model", "model.onnx"), ("vector", "test_data_set_2/output_0.pb")])
def test_a_tampered_bundle_exits_1_naming_what_changed(bundle, tmp_path, how, named):
    result = run_check("--bundle", tampered(bundle, tmp_path, how))
    assert result.exit_code == 1
    assert result.output.strip().startswith(f"Error: the bundle was changed after it was written: {named} (sha256 ")


def test_a_changed_vector_with_a_matching_hash_fails_on_the_numbers(bundle, tmp_path):
    copy = tmp_path / "b"
    shutil.copytree(bundle, copy)
    manifest = json.loads((copy / "manifest.json").read_text())
    entry = manifest["test_data_sets"][2]["outputs"][0]
    name, expected = tensor(copy / entry["file"])
    expected = expected.copy()
    expected.flat[-1] += 1e-3  # 100x the float32 atol, whatever the value
    (copy / entry["file"]).write_bytes(numpy_helper.from_array(expected, name).SerializeToString())
    entry["sha256"] = hashlib.sha256((copy / entry["file"]).read_bytes()).hexdigest()
    (copy / "manifest.json").write_text(json.dumps(manifest))
    result = run_check("--bundle", copy)
    assert result.exit_code == 1
    assert any(
        line.startswith("FAILED | onnxruntime/cpu | test_data_set_2 (b2.q6.kv6.masked_row)")
        for line in result.output.splitlines()
    )


def test_bundle_options_that_do_not_apply_are_refused(bundle):
    for args, text in (
        (["--quick"], "--quick does not apply with --bundle"),
        ([bundle / "model.onnx"], "give MODEL or --bundle DIR (one of them)"),
    ):
        result = run_check("--bundle", bundle, *args)
        assert result.exit_code == 2 and result.output.strip().startswith(f"Error: {text}")


def test_an_existing_bundle_is_refused_before_any_work_and_kept(bundle, tmp_path):
    before = {p.name: p.read_bytes() for p in bundle.rglob("*") if p.is_file()}
    result = CliRunner().invoke(export, [*SMALL, "--bundle", str(bundle)])
    assert result.exit_code == 2
    assert result.output.strip() == f"Error: '{bundle}' exists; pass --force to replace it"
    assert {p.name: p.read_bytes() for p in bundle.rglob("*") if p.is_file()} == before


def test_a_failed_bundle_leaves_nothing_and_the_earlier_one_intact(bundle, tmp_path, monkeypatch):
    import attn_onnx.deploy.bundle as module

    copy = tmp_path / "bundle"
    shutil.copytree(bundle, copy)
    before = sorted(p.relative_to(copy) for p in copy.rglob("*"))
    calls = []

    def failing(array, name):
        calls.append(name)
        if len(calls) == 7:
            raise OSError("disk full")
        return numpy_helper.from_array(array, name)

    monkeypatch.setattr(module.numpy_helper, "from_array", failing)
    result = CliRunner().invoke(export, [*SMALL, "--bundle", str(copy), "--force"])
    assert result.exit_code == 1 and "disk full" in result.output
    assert sorted(p.relative_to(copy) for p in copy.rglob("*")) == before  # the earlier bundle, untouched
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bundle"]  # no temp folders left


def test_a_folder_that_is_not_a_bundle_is_one_error(bundle, tmp_path):
    result = run_check("--bundle", tmp_path)
    assert result.exit_code == 1
    assert result.output.strip() == f"Error: '{tmp_path}' is not a bundle: it has no manifest.json"
    copy = tmp_path / "copy"
    shutil.copytree(bundle, copy)
    manifest = json.loads((copy / "manifest.json").read_text())
    del manifest["test_data_sets"][0]["outputs"][0]["sha256"]
    (copy / "manifest.json").write_text(json.dumps(manifest))
    result = run_check("--bundle", copy)
    assert result.exit_code == 1
    assert result.output.strip() == (
        f"Error: {copy / 'manifest.json'} is malformed: test_data_sets[0].outputs[0] lacks 'sha256'"
    )


@pytest.fixture(scope="module", params=["causal", "input"])
def cache_bundle(request, tmp_path_factory):
    from click.testing import CliRunner

    from attn_onnx.cli.export_attn import main as export

    folder = tmp_path_factory.mktemp("cache") / "b"
    result = CliRunner().invoke(
        export,
        ["--kv-cache", "--mask", request.param, "--heads", "2", "--embedding-dim", "16", "--bundle", str(folder)],
    )
    assert result.exit_code == 0, result.output
    return folder


def test_a_cache_bundle_carries_a_decode_set_that_says_how_to_thread(cache_bundle):
    manifest = json.loads((cache_bundle / "manifest.json").read_text())
    decode = manifest["decode"]
    assert decode["thread"] == {"present_key": "past_key", "present_value": "past_value"}
    assert decode["first_past"]["shape"] == [2, 2, 0, 8]
    assert [(s["new_tokens"], s["past_len"]) for s in decode["steps"]] == [(4, 0), (1, 4), (1, 5), (1, 6)]
    for step in decode["steps"]:
        assert [f["name"] for f in step["outputs"]] == ["output", "present_key", "present_value"]
        assert "past_key" not in [f["name"] for f in step["inputs"]]  # threaded, never stored
    last = decode["steps"][-1]["outputs"][1]
    assert last["shape"] == [2, 2, 7, 8]  # the cache after 7 tokens


def test_check_bundle_decodes_the_steps_through_the_cache(cache_bundle):
    from attn_onnx.deploy.bundle import check_bundle

    report = check_bundle(cache_bundle)
    assert report.ok, [r.line() for r in report.failed]
    assert [r.shape for r in report.results if r.shape.startswith("decode")] == [f"decode.step{k}" for k in range(4)]


@pytest.mark.parametrize(
    "change, says",
    [
        (lambda d: d["steps"][1].pop("inputs"), "decode.steps[1] lacks 'inputs'"),
        (lambda d: d["steps"][2]["outputs"][0].pop("file"), "decode.steps[2].outputs[0] lacks 'file'"),
        (lambda d: d.pop("first_past"), "decode lacks 'first_past'"),
        (lambda d: d.__setitem__("steps", {}), "decode.steps is not a list"),
        (lambda d: d["steps"].__setitem__(0, 3), "decode.steps[0] is not an object"),
    ],
    ids=["no-inputs", "no-file", "no-first-past", "steps-not-a-list", "step-not-an-object"],
)
def test_a_malformed_decode_entry_is_one_error_naming_it(cache_bundle, tmp_path, change, says):
    """It used to be `Error: unexpected KeyError: 'inputs'`."""
    copy = tmp_path / "b"
    shutil.copytree(cache_bundle, copy)
    manifest = json.loads((copy / "manifest.json").read_text())
    change(manifest["decode"])
    (copy / "manifest.json").write_text(json.dumps(manifest))
    result = run_check("--bundle", copy)
    assert result.exit_code == 1
    assert result.output.strip() == f"Error: {copy / 'manifest.json'} is malformed: {says}"


def test_a_changed_decode_file_fails_the_bundle(cache_bundle, tmp_path):
    from attn_onnx.deploy.bundle import check_bundle
    from attn_onnx.errors import BundleError

    copy = tmp_path / "b"
    shutil.copytree(cache_bundle, copy)
    (copy / "decode" / "step_2" / "output_0.pb").write_bytes(b"\x00")
    with pytest.raises(BundleError, match="decode/step_2/output_0.pb"):
        check_bundle(copy)


def test_the_node_verifier_decodes_the_steps(cache_bundle):
    import subprocess

    from tests.deploy.test_node import NODE, NODE_DIR

    if NODE is None or not (NODE_DIR / "node_modules" / "onnxruntime-node").is_dir():
        pytest.skip("node or onnxruntime-node is not installed (npm ci --ignore-scripts --prefix examples/node)")
    result = subprocess.run(
        [NODE, "verify.js", str(cache_bundle)], cwd=NODE_DIR, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "PASSED | onnxruntime-node | decode/step_3 (1 new, past 6)" in result.stdout


@pytest.mark.parametrize(
    "args, full, padding",
    [
        ((), "(batch, q_len, kv_len)", "(batch, 1, kv_len)"),
        (("--self-attention",), "(batch, q_len, q_len)", "(batch, 1, q_len)"),
        (("--kv-cache", "--mask", "input"), "(batch, q_len, total_len)", "(batch, 1, total_len)"),
        (("--module", "attention"), "(batch, 1, q_len, kv_len)", "(batch, 1, 1, kv_len)"),
    ],
    ids=["mha", "mha-self", "mha-cache", "attention"],
)
def test_the_mask_contract_states_each_kinds_own_mask_dims(bundle_of, args, full, padding):
    """mha-self and mha-cache bundles used to say the mask was 4-D (batch, 1, q_len, kv_len): the contract
    tested `spec.module == "mha"`. It now renders the kind's own dims, the same ones the inputs list."""
    manifest = read_manifest(bundle_of(*args))
    contract = manifest["mask_convention"]
    assert f"{full} (a full mask) or {padding} (a padding mask)" in contract
    mask = next(i for i in manifest["inputs"] if i["name"] == "mask")
    assert len(mask["dims"]) == full.count(",") + 1 == padding.count(",") + 1  # the rank the input has
    assert all(str(d) in full.replace("q_len,", "mask_q_len,", 1) or d == 1 for d in mask["dims"])


def test_a_float16_bundle_carries_float16_vectors_at_the_float16_profile(bundle_of):
    """write_bundle used to raise a bare KeyError: 'float16'. FP16 is the protocol's name; the vectors are
    float16 TensorProtos; the tolerance is the float16 profile (8 units of roundoff), and the bundle checks."""
    folder = bundle_of("--dtype", "float16")
    manifest = read_manifest(folder)
    assert [(i["name"], i["dtype"], i["datatype"]) for i in manifest["inputs"]] == [
        ("query", "float16", "FP16"),
        ("key", "float16", "FP16"),
        ("value", "float16", "FP16"),
        ("mask", "bool", "BOOL"),
    ]
    assert [(o["dtype"], o["datatype"]) for o in manifest["outputs"]] == [("float16", "FP16")]
    assert (manifest["tolerance"]["atol"], manifest["tolerance"]["rtol"]) == (4e-3, 4e-3)
    assert "replaced by -65504" in manifest["mask_convention"]  # float16's lowest, not -1e9 (-inf in float16)
    for entry in manifest["test_data_sets"]:
        for f in entry["inputs"] + entry["outputs"]:
            name, array = tensor(folder / f["file"])
            assert array.dtype == (np.bool_ if name == "mask" else np.float16) and f["dtype"] == str(array.dtype)
    result = run_check("--bundle", folder)
    assert result.exit_code == 0, result.output
    assert result.output.strip().splitlines()[-1].startswith("PASSED | summary | 5 passed, 0 failed")


def test_a_float16_bundle_fails_when_the_model_drifts_past_the_float16_profile(bundle_of, tmp_path):
    """The float16 tolerance is not so loose that anything passes: the output projection scaled by 5% fails."""
    copy = tmp_path / "b"
    shutil.copytree(bundle_of("--dtype", "float16"), copy)
    model = onnx.load(str(copy / "model.onnx"))
    weight_map = json.loads(next(p.value for p in model.metadata_props if p.key == "attn_onnx.weights"))
    name = weight_map["linears.3.weight"]["initializer"]
    init = next(i for i in model.graph.initializer if i.name == name)
    init.CopyFrom(numpy_helper.from_array((numpy_helper.to_array(init) * 1.05).astype(np.float16), name))
    onnx.save(model, str(copy / "model.onnx"))
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["model"]["sha256"] = hashlib.sha256((copy / "model.onnx").read_bytes()).hexdigest()
    (copy / "manifest.json").write_text(json.dumps(manifest))
    result = run_check("--bundle", copy)
    assert result.exit_code == 1 and "FAILED | onnxruntime/cpu | test_data_set_" in result.output


def test_a_bfloat16_bundle_is_refused_before_any_work(tmp_path):
    result = CliRunner().invoke(export, [*SMALL, "--dtype", "bfloat16", "--bundle", str(tmp_path / "b")])
    assert result.exit_code == 2
    assert result.output.strip() == (
        "Error: a bundle takes --dtype float32 or float16, not bfloat16: onnxruntime has no bfloat16 MatMul on a "
        "CPU, so its golden vectors could not be checked here; write the bfloat16 model with --out or --triton-repo"
    )
    assert list(tmp_path.iterdir()) == []
    from attn_onnx.deploy.bundle import write_bundle
    from attn_onnx.errors import UsageError
    from attn_onnx.exporter.spec import ExportSpec

    with pytest.raises(UsageError, match="not bfloat16"):  # the library refuses too, before touching the target
        write_bundle(
            tmp_path / "b", onnx.ModelProto(), ExportSpec(heads=2, embedding_dim=16, dtype="bfloat16"), None, name="m"
        )
    assert list(tmp_path.iterdir()) == []


@EVERY_KIND
def test_every_kinds_manifest_validates_against_the_schema(bundle_of, args):
    """deploy/manifest.schema.json is the bundle format; read_manifest (and Node's reader) hold manifests to it."""
    import jsonschema

    from attn_onnx.deploy.bundle import SCHEMA_FILE

    manifest = json.loads((bundle_of(*args) / "manifest.json").read_text())
    jsonschema.Draft202012Validator(json.loads(SCHEMA_FILE.read_text())).validate(manifest)
    broken = dict(manifest, tolerance={"atol": -1, "rtol": 0})
    assert not jsonschema.Draft202012Validator(json.loads(SCHEMA_FILE.read_text())).is_valid(broken)


# --- the manifest names every dim (issue 27): a service checks a request's inputs against each other by it -----


@pytest.mark.parametrize(
    "args, dims",
    [
        ((), {"batch": {}, "q_len": {}, "kv_len": {}, "mask_q_len": {"is": "q_len", "or_one": True}}),
        (("--self-attention",), {"batch": {}, "q_len": {}, "mask_q_len": {"is": "q_len", "or_one": True}}),
        (("--kv-cache",), {"batch": {}, "q_len": {}, "past_len": {}}),
        (
            ("--kv-cache", "--mask", "input"),
            {
                "batch": {},
                "q_len": {},
                "past_len": {},
                "mask_q_len": {"is": "q_len", "or_one": True},
                "total_len": {"sum": ["past_len", "q_len"]},
            },
        ),
        (("--kv-cache", "--max-len", "32", "--attention-impl", "ort-gqa"), {"batch": {}, "q_len": {}}),
        (("--module", "mask"), {}),
    ],
    ids=["mha", "mha-self", "mha-cache", "mha-cache-input", "mha-static", "mask"],
)
def test_the_manifest_names_every_dim_its_inputs_use(bundle_of, args, dims):
    manifest = read_manifest(bundle_of(*args))
    assert {
        name: {k: v for k, v in rule.items() if k != "description"} for name, rule in manifest["dims"].items()
    } == dims
    assert all(rule["description"] for rule in manifest["dims"].values())
    used = {d for i in manifest["inputs"] for d in i["dims"] if isinstance(d, str)}
    assert set(manifest["dims"]) == used


def test_the_manifest_alone_refuses_the_inputs_that_answered_wrong(bundle):
    """The manifest's inputs and dims are the whole contract: the requests of issue 27 are refused from them."""
    from attn_onnx.exporter.kinds.dims import contract_problem

    manifest = read_manifest(bundle)
    contract = {"inputs": {i["name"]: i["dims"] for i in manifest["inputs"]}, "dims": manifest["dims"]}

    def shapes(query, key, mask):
        return {"query": (*query, 16), "key": (*key, 16), "value": (*key, 16), "mask": mask}

    assert contract_problem(contract, shapes((2, 3), (2, 4), (2, 1, 4))) is None
    assert contract_problem(contract, shapes((2, 3), (2, 4), (2, 3, 1))) == (
        "input 'mask' dim 2 (kv_len) is 1, but input 'key' dim 1 (kv_len) is 4"
    )
    assert contract_problem(contract, shapes((2, 3), (1, 4), (2, 1, 2))) == (
        "input 'key' dim 0 (batch) is 1, but input 'query' dim 0 (batch) is 2"
    )


def test_the_schema_holds_the_dims_entries(bundle):
    import jsonschema

    from attn_onnx.deploy.bundle import SCHEMA_FILE

    validator = jsonschema.Draft202012Validator(json.loads(SCHEMA_FILE.read_text()))
    manifest = json.loads((bundle / "manifest.json").read_text())
    assert validator.is_valid(manifest)
    for broken in (
        {"batch": {}},
        {"batch": {"description": 1}},
        {"mask_q_len": {"description": "x", "or_one": 1}},
        {"total_len": {"description": "x", "sum": ["past_len"]}},
    ):
        assert not validator.is_valid(dict(manifest, dims=broken)), broken
