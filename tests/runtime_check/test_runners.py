"""Every runner takes the same cases and agrees with the golden, so none drifts; the golden is the exported
wrapper itself; tolerances come from a runner's precision profile."""

import numpy as np
import pytest

from attn_onnx.models import AttentionGraph, MhaGraph, SubsequentMaskGraph
from attn_onnx.runtime_check import FLOAT32, TF32, CheckConfig, Tolerance, check_model, tolerance_for
from attn_onnx.runtime_check.cases import QUICK, generate_cases
from attn_onnx.runtime_check.compare import EXACT
from attn_onnx.runtime_check.runners import RUNTIMES, runtime
from attn_onnx.runtime_check.runners.torch_runner import TorchRunner

AVAILABLE = tuple(name for name in RUNTIMES if not runtime(name).missing())  # every registered runtime here
KINDS = {
    "mha-probs": dict(heads=2, embedding_dim=16, attn_probs=True),
    "mha-causal": dict(heads=2, embedding_dim=16, mask="causal"),
    "attention-uint8": dict(module="attention", heads=2, embedding_dim=16, mask_dtype="uint8"),
    "mask": dict(module="mask"),
}


@pytest.mark.parametrize("fields", KINDS.values(), ids=KINDS)
def test_the_same_cases_through_every_available_runner(exported, fields):
    path, spec, module = exported(**fields)
    report = check_model(path, CheckConfig(runtimes=AVAILABLE, sweep=QUICK), module=module)
    labels = {name: runtime(name).label("cpu", CheckConfig()) for name in AVAILABLE}  # torch's: torch/<dtype>
    cases = [c.name for c in generate_cases(spec, QUICK)]
    for name in AVAILABLE:
        ran = [r.case for r in report.results if r.runner in (labels[name], f"{labels[name]}/{spec.dtype}")]
        assert ran == cases, name  # every runner, every case, in the same order
    assert report.passed, "\n".join(report.lines())
    if spec.module == "mask":
        assert all(r.max_abs == 0 for r in report.results)  # integers: exact everywhere


@pytest.mark.parametrize(
    "fields, graph",
    [(KINDS["mha-probs"], MhaGraph), (KINDS["attention-uint8"], AttentionGraph), (KINDS["mask"], SubsequentMaskGraph)],
    ids=["mha", "attention", "mask"],
)
def test_the_golden_runs_the_exported_wrapper_in_float64(exported, fields, graph):
    _, spec, module = exported(**fields)
    golden = TorchRunner(spec, module)
    assert type(golden.graph) is graph
    assert all(p.dtype.is_floating_point is False or str(p.dtype) == "torch.float64" for p in golden.graph.parameters())
    feeds = generate_cases(spec, QUICK)[0].feeds(0)
    outputs = golden.run(feeds)
    assert list(outputs) == spec.output_names
    assert all(o.dtype == (np.uint8 if spec.module == "mask" else np.float64) for o in outputs.values())


def test_tolerance_comes_from_the_runners_precision_profile():
    assert tolerance_for("float32", False) == ("float32", FLOAT32)
    assert tolerance_for("tf32", False) == ("tf32", TF32)
    assert tolerance_for("tf32", True) == ("exact", EXACT)  # integer outputs are exact, whoever computes them
    mine = Tolerance(atol=1e-3, rtol=0)
    assert tolerance_for("tf32", False, mine) == ("user", mine)
    with pytest.raises(ValueError, match="no tolerance profile for precision 'bf16'"):
        tolerance_for("bf16", False)


@pytest.mark.skipif("openvino" not in AVAILABLE, reason="openvino is not installed (pip install '.[openvino]')")
def test_a_model_openvino_cannot_compile_is_skipped_with_the_reason(exported):
    """ort-gqa's com.microsoft.GroupQueryAttention does not convert in OpenVINO: SKIPPED naming the operator,
    and onnxruntime still checks the model (it used to end the whole check with an unexpected RuntimeError)."""
    path, spec, module = exported(heads=2, embedding_dim=16, variant="ort-gqa", opset=18)
    report = check_model(path, CheckConfig(runtimes=("onnxruntime", "openvino"), sweep=QUICK), module=module)
    assert [(s.runner, s.reason) for s in report.skipped] == [
        (
            "openvino/cpu",
            "OpenVINO cannot compile this model: Conversion is failed for: com.microsoft.GroupQueryAttention",
        )
    ]
    assert {r.runner for r in report.results} == {"onnxruntime/cpu"}
    assert report.passed and len(report.results) == len(generate_cases(spec, QUICK))


def test_every_runtime_is_one_file_that_describes_itself():
    """A runtime is its file plus one registration line: it says its own help line, whether it is installed,
    its versions, and its report name; check-attn's --runtimes help and the report's versions come from them."""
    from click.testing import CliRunner

    from attn_onnx.cli.check_attn import main as check
    from attn_onnx.runtime_check.check import _versions

    help_text = " ".join(CliRunner().invoke(check, ["--help"]).output.split())
    for name, registered in RUNTIMES.items():
        module = runtime(name)
        assert all(callable(getattr(module, f)) for f in ("label", "make", "missing", "versions")), name
        assert f"{name}: {' '.join(registered.help.split())}"[:40] in help_text, name
        assert isinstance(module.missing(), str)
    versions = _versions()
    assert {"attn_onnx", "torch", "onnx", "numpy", "onnxruntime"} <= set(versions)
    assert ("openvino" in versions) == (not runtime("openvino").missing())
