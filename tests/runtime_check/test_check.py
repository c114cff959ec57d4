"""check-attn end to end: the full sweep passes on good models; broken ones fail with their cases named."""

import json
import struct

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from safetensors.torch import save_file

from exporter.spec import ExportSpec
from runtime_check import check_model
from runtime_check.cli import main
from runtime_check.plots import PLOT_FILES
from tests.runtime_check import broken

SMALL_SWEEP = ["--batches", "1,2,5", "--lengths", "1,7,64"]


def run(*args):
    return CliRunner().invoke(main, list(map(str, args)))


def lines_of(result, status):
    return [line for line in result.output.splitlines() if line.startswith(status + " |")]


def test_default_export_passes_the_full_sweep_with_a_json_report(exported, tmp_path):
    path, spec, _ = exported()
    report_path = tmp_path / "report.json"
    result = run(path, "--json", report_path)
    assert result.exit_code == 0, result.output
    passed = lines_of(result, "PASSED")
    summary = passed[-1]
    assert summary.startswith("PASSED | summary | 288 passed, 0 failed, 0 skipped")
    assert any(line.startswith("PASSED | onnxruntime/cpu | b5.q257.kv1.masked_row | max_abs=") for line in passed)
    assert any(line.startswith("PASSED | onnx-reference | b2.q7.kv64.zeros | max_abs=") for line in passed)
    report = json.loads(report_path.read_text())
    assert report["passed"] is True and report["status"] == "PASSED"
    assert report["summary"]["passed"] == 288 and report["summary"]["failed"] == 0
    assert report["sha256"] == __import__("hashlib").sha256(path.read_bytes()).hexdigest()
    assert {"torch", "onnx", "onnxruntime"} <= report["versions"].keys()
    assert report["runners"] == ["onnxruntime/cpu", "onnx-reference"] and set(report["tolerances"]) == {
        "onnxruntime/cpu", "onnx-reference"}
    assert report["reference_weights"].startswith("the model's own initializers")
    case = next(c for c in report["cases"] if c["case"] == "b5.q257.kv257.causal+padding")
    assert case["status"] == "PASSED" and case["outputs"][0]["shape"] == [5, 257, 512]
    assert 0 < case["max_abs"] < 1e-5


@pytest.mark.parametrize("fields", [dict(module="attention", mask="input"), dict(mask="causal", attn_probs=True),
                                    dict(module="mask"), dict(mask_dtype="float32", mask="input")],
                         ids=["attention", "mha-causal-probs", "mask", "mha-float32-mask"])
def test_other_exports_pass(exported, fields):
    path, _, _ = exported(**fields)
    result = run(path, "--quiet", *SMALL_SWEEP)
    assert result.exit_code == 0, result.output
    assert lines_of(result, "PASSED")[-1].startswith("PASSED | summary |")
    assert not lines_of(result, "FAILED")


def test_neg_inf_mask_fill_is_caught_on_fully_masked_rows(small_mha, tmp_path):
    _, spec, module = small_mha
    path = broken.neg_inf_fill_model(tmp_path / "neg_inf.onnx", spec, module)
    result = run(path, *SMALL_SWEEP, "--json", tmp_path / "report.json")
    assert result.exit_code == 1
    report = json.loads((tmp_path / "report.json").read_text())  # strict JSON: NaN and inf as strings
    assert report["status"] == "FAILED" and report["summary"]["failed"] > 0
    nan_case = next(c for c in report["cases"] if c["case"] == "b2.q7.kv7.zeros")
    assert nan_case["max_abs"] == "inf" and nan_case["outputs"][0]["nonfinite"] == 2 * 7 * 16
    failed = lines_of(result, "FAILED")
    assert any(" | b2.q7.kv7.zeros | " in line and "output: " in line and "NaN/Inf values" in line
               for line in failed)
    assert any(" | b5.q64.kv64.masked_row | " in line for line in failed)
    assert not any(".ones |" in line or ".causal |" in line for line in failed)  # rows with a key pass
    assert lines_of(result, "FAILED")[-1].startswith("FAILED | summary |")


@pytest.mark.parametrize("bake", ["batch", "length", "all"])
def test_baked_reshapes_are_caught_at_other_shapes(small_mha, tmp_path, bake):
    src, _, _ = small_mha
    path = broken.baked_reshape_model(src, tmp_path / f"baked_{bake}.onnx", bake)
    at_example = check_model(path, runtimes=("onnxruntime",), sweep=__import__("runtime_check").Sweep(
        shapes=((2, 3, 4),)))
    assert at_example.passed  # right at the example shape ...
    result = run(path, *SMALL_SWEEP)
    assert result.exit_code == 1  # ... and caught elsewhere, with the cases named
    failed = [line.split(" | ")[2] for line in lines_of(result, "FAILED") if "| summary |" not in line]
    if bake == "batch":
        assert not [name for name in failed if name.startswith("b2.")]
        assert [name for name in failed if name.startswith("b5.")], result.output[-2000:]
        assert any("| b1.q7.kv7.ones |" in line and "requested shape:{2,-1,2,8}" in line
                   for line in lines_of(result, "FAILED"))
    else:
        assert any(name.startswith("b1.q7.kv7") for name in failed)


def test_perturbed_weights_need_the_original_checkpoint(small_mha, tmp_path):
    src, spec, module = small_mha
    path = broken.perturbed_weights_model(src, tmp_path / "perturbed.onnx", spec, amount=1e-3)
    original = tmp_path / "original.safetensors"
    save_file(module.state_dict(), str(original))

    from_file = run(path, "--quick")
    assert from_file.exit_code == 0  # a reference rebuilt from the file cannot see it ...
    assert "reference weights: the model's own initializers" in from_file.output

    with_weights = run(path, "--quick", "--weights", original)
    assert with_weights.exit_code == 1  # ... the user's checkpoint can, and the report says which was used
    assert "reference weights: --weights original.safetensors (sha256 " in with_weights.output
    assert len(lines_of(with_weights, "FAILED")) == 17  # every case of both runners, and the summary
    assert run(src, "--quick", "--weights", original).exit_code == 0


def test_cuda_where_absent_is_an_error_or_skipped(exported):
    import onnxruntime as ort

    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("this machine has CUDA")
    path, _, _ = exported()
    result = run(path, "--providers", "cuda", "--quick")
    assert result.exit_code == 1
    assert result.output.strip() == (f"Error: requested CUDAExecutionProvider; available: "
                                     f"{ort.get_available_providers()}")
    skipped = run(path, "--providers", "cuda", "--runtimes", "onnxruntime", "--quick", "--skip-missing")
    assert skipped.exit_code == 0
    assert lines_of(skipped, "SKIPPED")[0].startswith("SKIPPED | onnxruntime/cuda | - | requested CUDA")
    assert lines_of(skipped, "SKIPPED")[-1].startswith("SKIPPED | summary | 0 passed, 0 failed, 1 skipped")
    assert not lines_of(skipped, "PASSED")


def test_a_silent_fallback_to_another_provider_fails(monkeypatch, small_mha):
    import onnxruntime as ort

    from exporter.errors import ProviderError
    from runtime_check.runners import create_ort_session

    class FellBack:
        def __init__(self, *args, **kwargs):
            pass

        def get_providers(self):
            return ["CPUExecutionProvider"]

    monkeypatch.setattr(ort, "get_available_providers", lambda: ["CUDAExecutionProvider", "CPUExecutionProvider"])
    monkeypatch.setattr(ort, "InferenceSession", FellBack)
    with pytest.raises(ProviderError, match=r"requested CUDAExecutionProvider, but onnxruntime fell back to "
                                            r"\['CPUExecutionProvider'\]"):
        create_ort_session(small_mha[0], "cuda")


def test_openvino_runs_or_is_skipped_visibly(small_mha):
    result = run(small_mha[0], "--runtimes", "onnxruntime,openvino", "--quick")
    assert result.exit_code == 0, result.output
    try:
        import openvino  # noqa: F401
    except ImportError:
        assert lines_of(result, "SKIPPED") == ["SKIPPED | openvino/cpu | - | openvino is not installed "
                                               "(pip install '.[openvino]')"]
    else:
        assert len([line for line in lines_of(result, "PASSED") if "| openvino/cpu |" in line]) == 8


def test_a_model_without_metadata_is_a_clear_error(tmp_path):
    graph = onnx.helper.make_graph([onnx.helper.make_node("Identity", ["x"], ["y"])], "g",
                                   [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1])],
                                   [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1])])
    path = tmp_path / "plain.onnx"
    onnx.save(onnx.helper.make_model(graph), str(path))
    result = run(path)
    assert result.exit_code == 1
    assert result.output.startswith("Error: the model has no attn_onnx.* metadata: it was not written by "
                                    "export-attn")
    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(b"\xff" * 64)
    result = run(garbage)
    assert result.exit_code == 1 and result.output.startswith("Error: 'garbage.onnx' is not an ONNX model")


@pytest.mark.parametrize("args, text", [
    (["--providers", "tpu"], "unknown runtime(s) or provider(s) ['tpu']"),
    (["--masks", "diagonal"], "unknown mask kind(s) ['diagonal']"),
    (["--shapes", "3x11"], "--shapes '3x11': expected BxQxKV items such as 3x11x5"),
    (["--lengths", "1,x"], "cannot parse '1,x' as a comma-separated list of int"),
    (["--plot-case", "b1.q1.kv1.ones"], "--plot-case needs --plots DIR"),
])
def test_usage_errors_exit_2(small_mha, args, text):
    result = run(small_mha[0], *args)
    assert result.exit_code == 2
    assert result.output.strip().splitlines()[-1].startswith(f"Error: {text}")


def _png_size(path):
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


def test_plots_are_real_images_of_the_expected_size(exported, tmp_path):
    path, _, _ = exported(attn_probs=True)
    result = run(path, "--quick", "--plots", tmp_path / "plots", "--plot-case", "b2.q20.kv20.causal+padding")
    assert result.exit_code == 0, result.output
    import matplotlib.image

    for name, size in PLOT_FILES.items():
        png = tmp_path / "plots" / name
        assert _png_size(png) == size
        assert np.asarray(matplotlib.image.imread(png)).std() > 0.01  # not a blank canvas
    assert sorted(p.name for p in (tmp_path / "plots").iterdir()) == sorted(PLOT_FILES)


def test_plots_need_attn_probs(small_mha, tmp_path):
    result = run(small_mha[0], "--quick", "--plots", tmp_path / "plots")
    assert result.exit_code == 2
    assert result.output.strip().splitlines()[-1].startswith("Error: --plots needs a model with an attn_probs")


def test_spec_round_trip_fails_loudly_on_missing_keys():
    from exporter.errors import MetadataError

    props = ExportSpec().to_metadata()
    del props["attn_onnx.heads"]
    with pytest.raises(MetadataError, match="lacks attn_onnx.heads"):
        ExportSpec.from_metadata(props)


def test_every_option_has_help():
    import click

    for param in main.params:
        if isinstance(param, click.Option) and param.name not in ("version", "help"):
            assert param.help, param.name
