"""check-attn end to end: the full sweep passes on good models; broken ones fail with their cases named."""

import json
import struct

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from safetensors.torch import save_file

from attn_onnx import __version__
from attn_onnx.cli.check_attn import main
from attn_onnx.exporter.spec import ModelSpec
from attn_onnx.runtime_check import CheckConfig, Sweep, check_model
from attn_onnx.runtime_check.plots import PLOT_FILES, plot_names
from tests.runtime_check import broken

SMALL_SWEEP = ["--batches", "1,2,5", "--lengths", "1,7,64"]


def run(*args):
    return CliRunner().invoke(main, list(map(str, args)))


def lines_of(result, status):
    return [line for line in result.output.splitlines() if line.startswith(status + " |")]


@pytest.mark.slow
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
    assert report["versions"]["attn_onnx"] == __version__
    assert report["command"] and report["created"].endswith("+00:00")
    assert report["runners"] == ["onnxruntime/cpu", "onnx-reference"]
    assert report["tolerances"]["onnx-reference"] == {"profile": "float32", "atol": 1e-5, "rtol": 1e-4}
    worst = max(report["cases"], key=lambda c: c["max_abs"])  # the summary's worst is the largest max_abs
    assert report["summary"]["worst"] == {"runner": worst["runner"], "case": worst["case"], "max_abs": worst["max_abs"]}
    assert f"worst: {worst['runner']} {worst['case']} max_abs={worst['max_abs']:.3g}" in summary
    assert report["reference_weights"].startswith("the model's own initializers")
    case = next(c for c in report["cases"] if c["case"] == "b5.q257.kv257.causal+padding")
    assert case["status"] == "PASSED" and case["outputs"][0]["shape"] == [5, 257, 512]
    assert 0 < case["max_abs"] < 1e-5


@pytest.mark.parametrize(
    "fields",
    [
        dict(module="attention", mask="input"),
        dict(mask="causal", attn_probs=True),
        dict(module="mask"),
        dict(mask_dtype="float32", mask="input"),
    ],
    ids=["attention", "mha-causal-probs", "mask", "mha-float32-mask"],
)
def test_other_exports_pass(exported, fields):
    path, spec, _ = exported(**fields)
    result = run(path, "--quiet", *(SMALL_SWEEP if spec.module != "mask" else ["--sizes", "0,1,5,64"]))
    assert result.exit_code == 0, result.output
    assert lines_of(result, "PASSED")[-1].startswith("PASSED | summary |")
    assert not lines_of(result, "FAILED")


def test_neg_inf_mask_fill_is_caught_on_fully_masked_rows(small_mha, tmp_path):
    _, spec, module = small_mha
    path = broken.neg_inf_fill_model(tmp_path / "neg_inf.onnx", spec, module)
    result = run(path, *SMALL_SWEEP, "--json", tmp_path / "report.json")
    assert result.exit_code == 1
    report = json.loads((tmp_path / "report.json").read_text())  # strict JSON: figures are numbers or null
    assert report["status"] == "FAILED" and report["summary"]["failed"] > 0
    nan_case = next(c for c in report["cases"] if c["case"] == "b2.q7.kv7.zeros")
    assert nan_case["max_abs"] is None and nan_case["outputs"][0]["max_abs"] is None
    assert nan_case["outputs"][0]["nonfinite"] == 2 * 7 * 16 and nan_case["failures"]
    assert all(isinstance(c["max_abs"], float | int) or c["max_abs"] is None for c in report["cases"])
    failed = lines_of(result, "FAILED")
    assert any(" | b2.q7.kv7.zeros | " in line and "output: " in line and "NaN/Inf values" in line for line in failed)
    assert any(" | b5.q64.kv64.masked_row | " in line for line in failed)
    assert not any(".ones |" in line or ".causal |" in line for line in failed)  # rows with a key pass
    assert lines_of(result, "FAILED")[-1].startswith("FAILED | summary |")


@pytest.mark.parametrize("bake", ["batch", "length", "all"])
def test_baked_reshapes_are_caught_at_other_shapes(small_mha, tmp_path, bake):
    src, _, _ = small_mha
    path = broken.baked_reshape_model(src, tmp_path / f"baked_{bake}.onnx", bake)
    at_example = check_model(path, CheckConfig(runtimes=("onnxruntime",), sweep=Sweep(shapes=((2, 3, 4),))))
    assert at_example.passed  # right at the example shape ...
    result = run(path, *SMALL_SWEEP)
    assert result.exit_code == 1  # ... and caught elsewhere, with the cases named
    failed = [line.split(" | ")[2] for line in lines_of(result, "FAILED") if "| summary |" not in line]
    if bake == "batch":
        assert not [name for name in failed if name.startswith("b2.")]
        assert [name for name in failed if name.startswith("b5.")], result.output[-2000:]
        assert any(
            "| b1.q7.kv7.ones |" in line and "requested shape:{2,-1,2,8}" in line for line in lines_of(result, "FAILED")
        )
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
    assert len(lines_of(with_weights, "FAILED")) == 37  # every case of both runners, and the summary
    assert run(src, "--quick", "--weights", original).exit_code == 0


def test_cuda_where_absent_is_an_error_or_skipped(exported):
    import onnxruntime as ort

    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("this machine has CUDA")
    path, _, _ = exported()
    result = run(path, "--providers", "cuda", "--quick")
    assert result.exit_code == 1
    assert result.output.strip() == (
        f"Error: requested CUDAExecutionProvider; available: {ort.get_available_providers()}"
    )
    skipped = run(path, "--providers", "cuda", "--runtimes", "onnxruntime", "--quick", "--skip-missing")
    assert skipped.exit_code == 0
    assert lines_of(skipped, "SKIPPED")[0].startswith("SKIPPED | onnxruntime/cuda | - | requested CUDA")
    assert lines_of(skipped, "SKIPPED")[-1] == "SKIPPED | summary | 0 passed, 0 failed, 1 skipped | nothing checked"
    assert not lines_of(skipped, "PASSED")


def test_a_silent_fallback_to_another_provider_fails(monkeypatch, small_mha):
    import onnxruntime as ort

    from attn_onnx.errors import ProviderError
    from attn_onnx.runtime_check.runners.ort_runner import create_ort_session

    class FellBack:
        def __init__(self, *args, **kwargs):
            pass

        def get_providers(self):
            return ["CPUExecutionProvider"]

    monkeypatch.setattr(ort, "get_available_providers", lambda: ["CUDAExecutionProvider", "CPUExecutionProvider"])
    monkeypatch.setattr(ort, "InferenceSession", FellBack)
    with pytest.raises(
        ProviderError,
        match=r"requested CUDAExecutionProvider, but onnxruntime fell back to "
        r"\['CPUExecutionProvider'\]",
    ):
        create_ort_session(small_mha[0], "cuda")


def test_an_absent_openvino_fails_unless_skip_missing(small_mha, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "openvino", None)  # absent, whether or not this machine has it
    result = run(small_mha[0], "--runtimes", "onnxruntime,openvino", "--quick")
    assert result.exit_code == 1
    assert result.output.strip() == "Error: openvino is not installed (pip install '.[openvino]')"
    skipped = run(small_mha[0], "--runtimes", "onnxruntime,openvino", "--quick", "--skip-missing")
    assert skipped.exit_code == 0, skipped.output
    assert lines_of(skipped, "SKIPPED") == [
        "SKIPPED | openvino/cpu | - | openvino is not installed (pip install '.[openvino]')"
    ]
    alone = run(small_mha[0], "--runtimes", "openvino", "--quick")  # nothing checked is never green ...
    assert alone.exit_code == 1
    allowed = run(small_mha[0], "--runtimes", "openvino", "--quick", "--skip-missing")  # ... unless asked for
    assert allowed.exit_code == 0
    assert allowed.output.strip().splitlines()[-1].endswith("| nothing checked")


def test_openvino_where_installed_passes(small_mha):
    pytest.importorskip("openvino")
    result = run(small_mha[0], "--runtimes", "onnxruntime,openvino", "--quick")
    assert result.exit_code == 0, result.output
    assert len([line for line in lines_of(result, "PASSED") if "| openvino/cpu |" in line]) == 18


def test_a_model_without_metadata_is_a_clear_error(tmp_path):
    graph = onnx.helper.make_graph(
        [onnx.helper.make_node("Identity", ["x"], ["y"])],
        "g",
        [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1])],
        [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1])],
    )
    path = tmp_path / "plain.onnx"
    onnx.save(onnx.helper.make_model(graph), str(path))
    result = run(path)
    assert result.exit_code == 1
    assert result.output.startswith("Error: the model has no attn_onnx.* metadata: it was not written by export-attn")
    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(b"\xff" * 64)
    result = run(garbage)
    assert result.exit_code == 1 and result.output.startswith("Error: 'garbage.onnx' is not an ONNX model")


@pytest.mark.parametrize(
    "args, text",
    [
        (["--providers", "cpu,tpu"], "--providers 'tpu': choose from cpu, cuda"),
        (["--runtimes", "onnxruntime,tensorrt"], "unknown runtime(s) or provider(s) ['tensorrt']; runtimes: "),
        (
            ["--masks", "causal,diagonal"],
            "--masks 'diagonal': choose from ones, zeros, causal, padding, causal+padding, masked_row",
        ),
        (["--shapes", "3x11"], "--shapes '3x11': expected BxQxKV items such as 3x11x5"),
        (["--lengths", "1,x"], "cannot parse '1,x' as a comma-separated list of int"),
        (["--plot-case", "b1.q1.kv1.ones"], "--plot-case does not apply without --plots DIR"),
        (["--plot-head", "1"], "--plot-head does not apply without --plots DIR"),
        # options that do not apply to the model or the other options are refused, naming them
        (["--sizes", "1,5"], "--sizes does not apply to a mha model"),
        (["--quick", "--lengths", "3"], "--lengths does not apply with --quick (it is a fixed sweep)"),
        (["--shapes", "1x2x3", "--batches", "4"], "--batches does not apply with --shapes"),
        (["--tf32"], "--tf32 does not apply without cuda in --providers"),
        (["--runtimes", "reference", "--providers", "cpu"], "--providers does not apply without onnxruntime"),
        (["--weights-prefix", "x."], "--weights-prefix needs --weights"),
    ],
)
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
    case = "b2.q20.kv20.causal+padding"
    result = run(path, "--quick", "--plots", tmp_path / "plots", "--plot-case", case)
    assert result.exit_code == 0, result.output
    import matplotlib.image

    for name, size in zip(plot_names(case), PLOT_FILES.values()):
        png = tmp_path / "plots" / name
        assert _png_size(png) == size
        assert np.asarray(matplotlib.image.imread(png)).std() > 0.01  # not a blank canvas
    other = "b3.q11.kv5.masked_row"  # a second case goes beside the first, never over it
    assert run(path, "--quick", "--plots", tmp_path / "plots", "--plot-case", other).exit_code == 0
    assert sorted(p.name for p in (tmp_path / "plots").iterdir()) == sorted(plot_names(case) + plot_names(other))


def test_plots_need_attn_probs(small_mha, tmp_path):
    result = run(small_mha[0], "--quick", "--plots", tmp_path / "plots")
    assert result.exit_code == 2
    assert result.output.strip().splitlines()[-1].startswith("Error: --plots needs a model with an attn_probs")


def test_spec_round_trip_fails_loudly_on_missing_keys():
    from attn_onnx.errors import MetadataError

    props = ModelSpec().to_metadata()
    del props["attn_onnx.heads"]
    with pytest.raises(MetadataError, match="lacks attn_onnx.heads"):
        ModelSpec.from_metadata(props)


# --- every bad option before any work -------------------------------------------------------------------


@pytest.mark.parametrize(
    "args, text",
    [
        (["--json", "{tmp}/missing/dir/r.json"], "--json: the folder '{tmp}/missing/dir' does not exist"),
        (["--json", "{tmp}"], "--json '{tmp}' is a folder; give a file name"),
        (["--plots", "{tmp}/plots"], "--plots needs a model with an attn_probs output"),
        (["--plots", "{model}"], "--plots: '{model}' is a file, not a folder"),
        (["--masks", "diagonal"], "--masks 'diagonal': choose from ones, zeros"),
        (["--runtimes", "onnxruntime==1.2"], "--runtimes 'onnxruntime==1.2': name a release as onnxruntime==MAJOR"),
    ],
    ids=["json-missing-dir", "json-folder", "plots-without-attn-probs", "plots-a-file", "bad-mask", "bad-release"],
)
def test_refusals_come_before_any_work(small_mha, tmp_path, args, text):
    """Refused in a fresh process before torch or onnxruntime is even imported: no sweep ran."""
    from tests.cli.fresh import run_fresh

    model = str(small_mha[0])
    result = run_fresh("check_attn", [model, *(a.format(tmp=tmp_path, model=model) for a in args)])
    assert (result.code, result.torch, result.onnxruntime) == (2, False, False), result.stderr
    assert result.stderr.startswith("Error: " + text.format(tmp=tmp_path, model=model))
    assert len(result.stderr.splitlines()) == 1


def test_masks_on_a_model_without_a_mask_input_are_refused(exported):
    path, _, _ = exported(mask="causal", attn_probs=True)
    result = run(path, "--masks", "zeros")
    assert result.exit_code == 2
    assert result.output.strip() == "Error: --masks does not apply to a model without a mask input (its mask is causal)"


@pytest.mark.parametrize(
    "args, text",
    [
        (["--plot-head", "8"], "--plot-head 8 is out of range: the model has 8 heads"),
        (["--plot-example", "2"], "--plot-example 2 is out of range: case b2.q20.kv20.causal+padding has batch 2"),
        (["--plot-case", "b2.q20"], "case 'b2.q20' is not of the form"),
    ],
)
def test_plot_choices_are_checked_up_front(exported, tmp_path, args, text):
    path, _, _ = exported(attn_probs=True)
    result = run(path, "--plots", tmp_path / "plots", *args)
    assert result.exit_code == 2
    assert result.output.strip().startswith(f"Error: {text}")
    assert not (tmp_path / "plots").exists()


# --- one interface check up front; runtimes that cannot run a model ---------------------------------------


def test_a_renamed_input_is_one_interface_error(small_mha, tmp_path):
    model = onnx.load(str(small_mha[0]))
    for node in model.graph.node:
        node.input[:] = ["attention_mask" if name == "mask" else name for name in node.input]
    next(i for i in model.graph.input if i.name == "mask").name = "attention_mask"
    path = tmp_path / "renamed.onnx"
    onnx.save(model, str(path))
    result = run(path, "--quick")
    assert result.exit_code == 1
    assert result.output.strip().splitlines() == [
        "Error: the model's interface does not match its attn_onnx metadata: missing input 'mask' (bool, rank 3); "
        "unexpected input 'attention_mask'"
    ]


def test_a_changed_dtype_or_rank_is_named(small_mha, tmp_path):
    model = onnx.load(str(small_mha[0]))
    model.graph.output[0].type.tensor_type.elem_type = onnx.TensorProto.DOUBLE
    model.graph.input[0].type.tensor_type.shape.dim.add().dim_value = 1
    path = tmp_path / "changed.onnx"
    onnx.save(model, str(path))
    result = run(path, "--quick")
    assert result.exit_code == 1
    assert result.output.strip() == (
        "Error: the model's interface does not match its attn_onnx metadata: input "
        "'query' has rank 4, expected 3; output 'output' is float64, expected float32"
    )


@pytest.fixture(scope="module")
def ort_optimized(small_mha, tmp_path_factory):
    """The small model as onnxruntime optimizes it offline: com.microsoft.FusedMatMul inside."""
    import onnxruntime as ort

    path = tmp_path_factory.mktemp("optimized") / "optimized.onnx"
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    options.optimized_model_filepath = str(path)
    ort.InferenceSession(str(small_mha[0]), options, providers=["CPUExecutionProvider"])
    assert any(n.domain == "com.microsoft" for n in onnx.load(str(path)).graph.node)
    return path


def test_an_ort_optimized_model_passes_on_onnxruntime_with_the_reference_skipped(ort_optimized):
    result = run(ort_optimized, "--quick")
    assert result.exit_code == 0, result.output
    assert lines_of(result, "SKIPPED") == [
        "SKIPPED | onnx-reference | - | onnx.reference runs standard ONNX operators only; this model uses "
        "com.microsoft.FusedMatMul (an onnxruntime-optimized model?)"
    ]
    assert len([line for line in lines_of(result, "PASSED") if "| onnxruntime/cpu |" in line]) == 18
    assert lines_of(result, "PASSED")[-1].startswith("PASSED | summary | 18 passed, 0 failed, 1 skipped | worst: ")
    only_reference = run(ort_optimized, "--quick", "--runtimes", "reference")  # nothing checked: not green
    assert only_reference.exit_code == 1
    assert only_reference.output.strip().splitlines()[-1] == (
        "FAILED | summary | 0 passed, 0 failed, 1 skipped | nothing checked (pass --skip-missing to allow that)"
    )


# --- truthful, streaming reports ----------------------------------------------------------------------------


def test_result_lines_stream_as_cases_finish(small_mha, monkeypatch):
    import sys

    import attn_onnx.runtime_check.check as check

    seen = []
    real = check.run_case

    def spy(*args, **kwargs):
        sys.stdout.flush()
        seen.append(sys.stdout.buffer.getvalue().decode().count("PASSED | "))
        return real(*args, **kwargs)

    monkeypatch.setattr(check, "run_case", spy)
    result = run(small_mha[0], "--quick")
    assert result.exit_code == 0
    assert seen == list(range(36))  # before each case ran, every earlier one had been printed
    lines = result.output.splitlines()
    assert lines[0].startswith(f"model {small_mha[0]} (sha256 ")
    assert lines[-1].startswith("PASSED | summary | 36 passed")


def test_json_of_a_failing_run_has_numbers_or_null(small_mha, tmp_path):
    report_path = tmp_path / "r.json"
    result = run(small_mha[0], "--quick", "--atol", "0", "--rtol", "0", "--json", report_path)
    assert result.exit_code == 1
    report = json.loads(report_path.read_text())
    assert report["tolerances"]["onnxruntime/cpu"] == {"profile": "user", "atol": 0.0, "rtol": 0.0}
    figures = [c[k] for c in report["cases"] for k in ("max_abs", "max_rel", "needed_atol")]
    assert all(isinstance(f, float | int) for f in figures)
    assert report["command"][1:] == [
        str(small_mha[0]),
        "--quick",
        "--atol",
        "0",
        "--rtol",
        "0",
        "--json",
        str(report_path),
    ]


@pytest.mark.parametrize(
    "fields, profile",
    [(dict(dtype="float16"), (4e-3, 4e-3)), (dict(quantize="int8"), (0.05, 0.05)), ({}, (1e-5, 1e-4))],
    ids=["float16", "int8", "float32"],
)
@pytest.mark.parametrize("given", ["atol", "rtol"])
def test_one_tolerance_given_alone_keeps_the_other_from_the_models_profile(exported, tmp_path, fields, profile, given):
    """`--atol X` alone on a float16 or int8 model used to take rtol from the float32 profile (1e-4)."""
    path, _, _ = exported(heads=2, embedding_dim=16, **fields)
    report_path = tmp_path / "r.json"
    result = run(path, "--quick", "--runtimes", "onnxruntime", f"--{given}", "0.5", "--json", report_path)
    assert result.exit_code == 0, result.output
    tolerance = json.loads(report_path.read_text())["tolerances"]["onnxruntime/cpu"]
    atol, rtol = (0.5, profile[1]) if given == "atol" else (profile[0], 0.5)
    assert (tolerance["profile"], tolerance["atol"], tolerance["rtol"]) == ("user", atol, rtol)


def test_the_model_is_read_and_its_interface_compared_once(small_mha, monkeypatch):
    """check-attn plans from the model it read, and checks that same model: one read, one comparison (it
    compared the interface twice, in its plan and again in check_model)."""
    import sys

    import attn_onnx.runtime_check.check  # noqa: F401 - loaded, so that its names are patched too
    import attn_onnx.runtime_check.model as model_module

    calls = {"load_model": 0, "check_interface": 0}
    for name in calls:
        real = getattr(model_module, name)

        def counting(*args, real=real, name=name, **kwargs):
            calls[name] += 1
            return real(*args, **kwargs)

        for module in [m for n, m in sys.modules.items() if n.startswith("attn_onnx")]:
            if getattr(module, name, None) is real:  # every module that holds the function by name
                monkeypatch.setattr(module, name, counting)
    result = run(small_mha[0], "--quick", "--runtimes", "onnxruntime")
    assert result.exit_code == 0, result.output
    assert calls == {"load_model": 1, "check_interface": 1}
