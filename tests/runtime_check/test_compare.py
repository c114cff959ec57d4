"""Comparisons: shape before values, NaN fails, the needed atol is the one that would pass."""

import numpy as np
import pytest

from attn_onnx.runtime_check.compare import FLOAT32, OutputComparison, Tolerance
from attn_onnx.runtime_check.report import CaseResult


def measure(actual, golden, tolerance=FLOAT32, dtype="float32"):
    return OutputComparison.measure("output", np.asarray(actual, np.float32), np.asarray(golden), dtype, tolerance)


def test_within_tolerance_passes_with_figures():
    c = measure([1.0, 2.0], [1.0 + 2e-6, 2.0])
    assert c.passed and c.failures == []
    assert c.max_abs == pytest.approx(2e-6, rel=1e-2)
    assert c.needed_atol == pytest.approx(max(0.0, 2e-6 - 1e-4 * 1.000002), abs=1e-9)


def test_needed_atol_is_the_minimum_that_passes():
    tol = Tolerance(atol=0.0, rtol=0.1)
    c = measure([1.5, 0.0], [1.0, 0.2], tol)
    assert c.needed_atol == pytest.approx(0.4, rel=1e-6)  # 0.5 - 0.1 * 1.0
    assert not c.passed
    assert measure([1.5, 0.0], [1.0, 0.2], Tolerance(atol=c.needed_atol * 1.0001, rtol=0.1)).passed


def test_nan_fails_even_where_the_golden_is_finite():
    c = measure([np.nan, 1.0], [0.25, 1.0])
    assert not c.passed and c.nonfinite == 1
    assert c.failures == ["output: 1 NaN/Inf values"]


def test_shape_is_checked_before_values():
    c = measure(np.zeros((2, 3)), np.zeros((3, 2)))
    assert c.failures == ["output: shape (2, 3) != (3, 2)"]


def test_dtype_must_match():
    c = OutputComparison.measure("output", np.zeros(2, np.float64), np.zeros(2), "float32", FLOAT32)
    assert c.failures == ["output: dtype float64 != float32"]


def test_case_line_has_the_fixed_format():
    ok = CaseResult("onnxruntime/cpu", "b1.q7.kv7.ones", (measure([1.0], [1.0]),))
    assert ok.line() == "PASSED | onnxruntime/cpu | b1.q7.kv7.ones | max_abs=0 max_rel=0 | needs atol>=0"
    bad = CaseResult("onnxruntime/cpu", "b1.q7.kv7.ones", error="onnxruntime/cpu raised Fail: shape")
    assert bad.line().startswith("FAILED | onnxruntime/cpu | b1.q7.kv7.ones | max_abs=inf")
    assert bad.line().endswith("| onnxruntime/cpu raised Fail: shape") and not bad


@pytest.mark.parametrize(
    "atol, rtol", [(float("nan"), None), (None, float("nan")), (float("inf"), 0.0), (0.0, float("inf")), (-1e-5, None)]
)
def test_a_tolerance_that_passes_anything_is_refused_before_any_case(atol, rtol):
    """|a - b| <= NaN is never false and |a - b| <= inf never for a finite a: such a check passes any model."""
    from attn_onnx.errors import UsageError
    from attn_onnx.runtime_check.check import CheckConfig

    with pytest.raises(UsageError, match="a tolerance is a finite number >= 0"):
        CheckConfig(tolerance=Tolerance(atol=atol, rtol=rtol)).validate()
