"""check-attn --runtimes web: onnxruntime-web's WASM backend under Node, one process per check, held to the
model's profile; SKIPPED where WASM cannot run the model; missing (exit 1 unless --skip-missing) without node
or examples/web/node_modules; and it catches weights changed after export.

The full default sweep (144 cases a variant at width 512) takes 50 to 90 s a variant on this shared machine; CI runs
the quick sweep, and docs/web.md records the full sweep's results. Skipped, visibly, where node or
onnxruntime-web (scripts/setup/web.sh) are absent."""

import shutil
import subprocess
import sys

import numpy as np
import pytest
from click.testing import CliRunner
from onnx import TensorProto, helper
from safetensors.torch import save_file

from attn_onnx.cli.check_attn import main as check
from attn_onnx.errors import UnsupportedModelError
from attn_onnx.exporter.variants import VARIANTS
from attn_onnx.runtime_check import FLOAT32, CheckConfig, check_model
from attn_onnx.runtime_check.cases import QUICK, generate_cases
from attn_onnx.runtime_check.compare import PROFILES
from attn_onnx.runtime_check.runners import child, web_runner
from attn_onnx.runtime_check.runners.web_runner import PACKAGE, WEB_DIR, WebRunner
from tests.exporter.test_variants import variant_fields
from tests.runtime_check import broken
from tests.runtime_check.test_decode import CACHE

NAME = "onnxruntime-web/wasm"
INSTALLED = shutil.which("node") is not None and (WEB_DIR / "node_modules" / PACKAGE).is_dir()
needs_web = pytest.mark.skipif(not INSTALLED, reason="node or onnxruntime-web is absent: run scripts/setup/web.sh")


def run_check(*args):
    return CliRunner().invoke(check, list(map(str, args)))


@needs_web
@pytest.mark.parametrize("variant", list(VARIANTS))
def test_every_variant_passes_the_quick_sweep_in_one_node_process(exported, monkeypatch, variant):
    """Every --attention-impl runs in WASM (the com.microsoft kernels of ort-mha and ort-gqa included), every
    case within the float32 profile; the whole sweep goes through one Node process, not one per case."""
    path, spec, module = exported(**variant_fields(variant))
    started = []
    popen = subprocess.Popen
    monkeypatch.setattr(child.subprocess, "Popen", lambda *a, **k: started.append(a) or popen(*a, **k))
    report = check_model(path, CheckConfig(runtimes=("web",), sweep=QUICK), module=module)
    assert report.passed, "\n".join(report.lines())
    assert [r.case for r in report.results] == [c.name for c in generate_cases(spec, QUICK)]
    assert {r.runner for r in report.results} == {NAME}  # the report says the backend: wasm
    assert report.tolerances[NAME] == ("float32", FLOAT32)
    assert report.versions["onnxruntime_web"].startswith("1.30.0 (wasm backend, 1 thread")
    assert len(started) == 1


@needs_web
def test_a_decoding_model_threads_its_cache_in_the_web_runner(exported):
    path, spec, module = exported(**CACHE)
    report = check_model(path, CheckConfig(runtimes=("web",), sweep=QUICK), module=module)
    assert report.passed, "\n".join(report.lines())
    assert [r.case for r in report.results if r.case.startswith("decode")]  # the whole sequences too


@needs_web
@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_float16_is_held_to_its_profile_and_bfloat16_is_skipped_with_the_reason(exported, dtype):
    path, _, module = exported(**variant_fields("torch-export", mask="input", dtype=dtype))
    report = check_model(path, CheckConfig(runtimes=("web", "torch"), sweep=QUICK), module=module)
    assert report.passed, "\n".join(report.lines())
    if dtype == "float16":
        assert report.tolerances[NAME] == ("float16", PROFILES["float16"])
        assert {r.runner for r in report.results} == {NAME, "torch/float16"}
    else:  # onnxruntime-common's Tensor has no bfloat16 type: nothing could feed one
        assert [(s.runner, s.reason) for s in report.skipped] == [
            (NAME, "onnxruntime-web has no bfloat16 tensor type (its Tensor takes float32, float16 and integer types)")
        ]


def _one_node_model(op: str, elem_type: int, inputs: int = 1, domain: str = "", version: int = 18) -> bytes:
    node = helper.make_node(op, [f"x{i}" for i in range(inputs)], ["y"], domain=domain)
    graph = helper.make_graph(
        [node],
        "g",
        [helper.make_tensor_value_info(f"x{i}", elem_type, [2, 2]) for i in range(inputs)],
        [helper.make_tensor_value_info("y", elem_type, [2, 2])],
    )
    opsets = [helper.make_opsetid("", 18)] + ([helper.make_opsetid(domain, version)] if domain else [])
    model = helper.make_model(graph, opset_imports=opsets)
    model.ir_version = 10
    return model.SerializeToString()


@needs_web
@pytest.mark.parametrize(
    "model, reason",
    [
        (_one_node_model("MatMul", TensorProto.BFLOAT16, 2), "Could not find an implementation for MatMul(13) node"),
        (
            _one_node_model("Frobnicate", TensorProto.FLOAT, domain="com.example"),
            "com.example:Frobnicate(-1) is not a registered function/op",
        ),
    ],
    ids=["no-kernel", "unknown-domain"],
)
def test_an_operator_wasm_lacks_is_unsupported_with_the_reason(model, reason):
    with pytest.raises(UnsupportedModelError, match="onnxruntime-web's WASM backend cannot run this model: ") as err:
        WebRunner(model)
    assert reason in str(err.value) and ".cc:" not in str(err.value)  # onnxruntime's words, not its source lines


@needs_web
def test_tensors_cross_as_exact_bytes_and_a_failing_run_leaves_the_process_serving():
    """The frames carry each dtype's bytes unchanged (float16 as its bits, bool as bytes); a run the runtime
    refuses is that case's error, and the next case still runs."""
    model = helper.make_model(
        helper.make_graph(
            [helper.make_node("Identity", [f"x{i}"], [f"y{i}"]) for i in range(5)],
            "g",
            [helper.make_tensor_value_info(f"x{i}", t, None) for i, t in enumerate(TYPES)],
            [helper.make_tensor_value_info(f"y{i}", t, None) for i, t in enumerate(TYPES)],
        ),
        opset_imports=[helper.make_opsetid("", 18)],
    )
    model.ir_version = 10
    runner = WebRunner(model.SerializeToString())
    rng = np.random.default_rng(0)
    feeds = {
        "x0": rng.standard_normal((3, 1, 5)).astype(np.float32),
        "x1": rng.standard_normal(7).astype(np.float16),
        "x2": rng.integers(-(2**62), 2**62, (2, 3)),
        "x3": rng.random((4, 4)) > 0.5,
        "x4": np.zeros((0, 3), np.float32),
    }
    outputs = runner.run(feeds)
    for i, array in enumerate(feeds.values()):
        assert outputs[f"y{i}"].dtype == array.dtype and outputs[f"y{i}"].shape == array.shape
        assert outputs[f"y{i}"].tobytes() == array.tobytes()
    with pytest.raises(RuntimeError, match="Unexpected input data type"):
        runner.run({**feeds, "x0": feeds["x0"].astype(np.float64)})
    assert runner.run(feeds)["y1"].tobytes() == feeds["x1"].tobytes()
    runner.close()


TYPES = (TensorProto.FLOAT, TensorProto.FLOAT16, TensorProto.INT64, TensorProto.BOOL, TensorProto.FLOAT)


@needs_web
def test_weights_changed_after_export_fail_in_the_web_runner(small_mha, tmp_path):
    """Against the original checkpoint (--weights), a model whose weights changed by 1e-3 after export fails
    every case in the web runner; the untouched model passes the same check."""
    src, spec, module = small_mha
    path = broken.perturbed_weights_model(src, tmp_path / "perturbed.onnx", spec, amount=1e-3)
    original = tmp_path / "original.safetensors"
    save_file(module.state_dict(), str(original))
    result = run_check(path, "--runtimes", "web", "--quick", "--weights", original)
    assert result.exit_code == 1, result.output
    lines = result.output.splitlines()
    assert len([line for line in lines if line.startswith(f"FAILED | {NAME} | ")]) == len(generate_cases(spec, QUICK))
    assert not [line for line in lines if line.startswith("PASSED")]
    assert run_check(src, "--runtimes", "web", "--quick", "--weights", original).exit_code == 0


@pytest.mark.parametrize(
    "absent, error",
    [
        ("node_modules", "onnxruntime-web is not installed in {} (run `npm ci --ignore-scripts --prefix examples/web`"),
        ("node", "node is not installed (onnxruntime-web runs under Node.js >= 20)"),
    ],
    ids=["no-package", "no-node"],
)
def test_the_runner_is_missing_without_node_or_its_package(small_mha, tmp_path, monkeypatch, absent, error):
    if absent == "node_modules":
        monkeypatch.setattr(web_runner, "WEB_DIR", tmp_path)  # a folder without node_modules
    else:
        monkeypatch.setattr(web_runner.shutil, "which", lambda name: None)
    path = small_mha[0]
    result = run_check(path, "--runtimes", "onnxruntime,web", "--quick")
    assert result.exit_code == 1 and result.output.startswith(f"Error: {error.format(tmp_path)}"), result.output
    result = run_check(path, "--runtimes", "onnxruntime,web", "--quick", "--skip-missing")
    assert result.exit_code == 0, result.output
    assert f"SKIPPED | {NAME} | - | {error.format(tmp_path)}" in result.output


def test_a_request_after_close_is_a_runtime_failure_not_a_crash():
    """Child (runners/child.py, both runners' harness): once closed, a request says the process has ended."""
    from attn_onnx.errors import RuntimeFailure

    process = child.Child([sys.executable, "-c", "import sys; sys.stdin.read()"], "the test process")
    process.close()
    with pytest.raises(RuntimeFailure, match="^the test process has ended$"):
        process.request({"bytes": 0}, [])
