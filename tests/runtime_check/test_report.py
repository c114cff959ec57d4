"""Reports tell the truth: the worst case is the largest error, nothing checked is never green."""

import json

import numpy as np

from attn_onnx.exporter.spec import ExportSpec
from attn_onnx.runtime_check.compare import FLOAT32, OutputComparison
from attn_onnx.runtime_check.report import CaseResult, Report, Skipped


def result(case, actual, golden):
    comparison = OutputComparison.measure(
        "output", np.asarray(actual, np.float32), np.asarray(golden, np.float64), "float32", FLOAT32
    )
    return CaseResult("onnxruntime/cpu", case, case.rsplit(".", 1)[0], (comparison,))


def report(results, skipped=(), skip_missing=False):
    return Report(
        model="m.onnx",
        sha256="0" * 64,
        spec=ExportSpec(),
        reference_weights="w",
        seed=0,
        tolerances={"onnxruntime/cpu": ("float32", FLOAT32)},
        versions={},
        skip_missing=skip_missing,
        results=list(results),
        skipped=list(skipped),
    )


def test_worst_is_the_largest_absolute_error_not_the_largest_needed_atol():
    big = result("b1.q1.kv1.ones", [1000.05], [1000.0])  # max_abs 5e-2, but rtol covers it: needs atol 0
    small = result("b1.q1.kv1.zeros", [2e-6], [0.0])  # max_abs 2e-6, needs atol 2e-6
    assert big.max_abs > small.max_abs and big.needed_atol < small.needed_atol
    r = report([small, big])
    assert r.worst is big
    assert "worst: onnxruntime/cpu b1.q1.kv1.ones max_abs=0.05 |" in r.summary()
    assert r.summary().endswith("min atol that passes all: 2e-06")


def test_nothing_checked_is_a_failure_unless_allowed():
    skipped = [Skipped("openvino/cpu", "openvino is not installed")]
    assert not report([], skipped).ok and report([], skipped).status == "FAILED"
    allowed = report([], skipped, skip_missing=True)
    assert allowed.ok and allowed.status == "SKIPPED"
    assert allowed.summary() == "SKIPPED | summary | 0 passed, 0 failed, 1 skipped | nothing checked"


def test_failed_figures_are_null_in_strict_json():
    bad = result("b1.q1.kv1.zeros", [np.nan], [0.25])
    data = json.loads(report([bad]).to_json())
    assert data["cases"][0]["max_abs"] is None and data["summary"]["worst"]["max_abs"] is None
    assert data["cases"][0]["failures"] == ["output: 1 NaN/Inf values"]
