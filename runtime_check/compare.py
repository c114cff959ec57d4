"""Measuring and deciding, kept apart: `OutputComparison.measure` computes the figures, `passed` decides."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np


@dataclass(frozen=True)
class Tolerance:
    """Elementwise |actual - golden| <= atol + rtol * |golden| (numpy.allclose's rule). As a user's override
    (CheckConfig.tolerance), either may be None: that one is then each runner's own profile's."""

    atol: float | None
    rtol: float | None


# float32 against the float64 golden. Measured with `check-attn mha.onnx --runtimes onnxruntime,reference,torch`
# on a default export (README, Tolerances): over the full sweep the worst absolute error is ~1.0e-6 for
# onnxruntime CPU and onnx.reference and ~9e-7 for PyTorch's own float32, on outputs of magnitude ~1; 1e-5
# leaves a ~10x margin for other CPUs' kernels, while weights moved by 1e-3 miss by ~1e-2
# (tests/runtime_check/test_tolerance.py keeps both claims true).
FLOAT32 = Tolerance(atol=1e-5, rtol=1e-4)
# onnxruntime CUDA with TF32 (10-bit mantissa in matmuls): ~5e-4 measured on an H200 for this module.
TF32 = Tolerance(atol=5e-3, rtol=1e-2)
# Integer outputs (the `mask` module) must match exactly.
EXACT = Tolerance(atol=0.0, rtol=0.0)

# A runner states the precision it computes at; its float outputs are held to that profile.
# Reduced precision (export-attn --dtype), against the float64 golden of the same rounded inputs and weights:
# 8 units of roundoff u each (u = 2^-11 for float16, 2^-8 for bfloat16). Measured over the default sweep
# (tests/exporter/test_dtypes.py; README, Tolerances): float16 worst needed atol 2.3u at rtol 8u
# (onnx.reference and torch float16 on the bare attention, kv_len 257; mha 0.9u; onnxruntime CPU 0.5u, max_abs
# 1.2u), a 3.5x margin; bfloat16 worst 3.4u (onnx.reference and torch bfloat16, attention; mha 0.8u), a 2.3x
# margin. Scaling the output projection by 5% (float16) or 20% (bfloat16) fails.
FLOAT16 = Tolerance(atol=4e-3, rtol=4e-3)
BFLOAT16 = Tolerance(atol=3e-2, rtol=3e-2)
# export-attn --quantize int8, against the float64 golden of the dequantized weights the file holds: what is
# left is the activations' on-the-fly uint8 quantization (per tensor, ~1/255 of their range). Measured in the
# 7-bit weight format (exporter/quantize.py FORMAT, exact integers on every x86 CPU) over the default sweep,
# every variant, mha and --self-attention: the default block (heads 8, width 512) on onnxruntime CPU (AVX2)
# max_abs 0.0214, needed atol 0.0189 at rtol 0.05, a 2.6x margin; heads 4, width 32 on onnxruntime and
# onnx.reference alike 0.0125 and 0.0098. Full-range int8 weights on a CPU without VNNI (int16 saturation)
# left 0.15-0.29: the profile's job is to fail that. What quantizing the weights cost on top is a figure
# (export-attn's `accuracy:` line, or check-attn --weights with the float checkpoint), not judged here.
INT8 = Tolerance(atol=0.05, rtol=0.05)
# Not a verdict: a check run only for its figures (export-attn's `accuracy:` line, what rounding the weights
# cost) passes every finite difference. Finite on purpose: CheckConfig refuses NaN and infinite tolerances.
MEASURE_ONLY = Tolerance(atol=float(np.finfo(np.float64).max), rtol=0.0)
PROFILES = {
    "float32": FLOAT32,
    "tf32": TF32,
    "float64": FLOAT32,
    "float16": FLOAT16,
    "bfloat16": BFLOAT16,
    "int8": INT8,
    "exact": EXACT,
}


def tolerance_for(precision: str, integer_outputs: bool, override: Tolerance | None = None) -> tuple[str, Tolerance]:
    """The profile name and tolerance for a runner's outputs: integers exactly, floats by the runner's
    precision, unless the user gave their own atol/rtol (`override`)."""
    if integer_outputs:
        return "exact", EXACT
    if precision not in PROFILES:
        raise ValueError(f"no tolerance profile for precision {precision!r}; known: {list(PROFILES)}")
    if override is not None:  # a value the user left out (None) is the runner's own profile's
        profile = PROFILES[precision]
        return "user", Tolerance(
            atol=profile.atol if override.atol is None else override.atol,
            rtol=profile.rtol if override.rtol is None else override.rtol,
        )
    return precision, PROFILES[precision]


@dataclass(frozen=True)
class OutputComparison:
    """One output of one runner on one case, against the golden."""

    output: str
    shape: tuple[int, ...]
    golden_shape: tuple[int, ...]
    dtype: str
    expected_dtype: str
    max_abs: float
    max_rel: float
    needed_atol: float  # the smallest atol that would pass at this rtol
    nonfinite: int  # NaN or Inf elements in the runner's output
    atol: float
    rtol: float

    @classmethod
    def measure(
        cls, output: str, actual: np.ndarray, golden: np.ndarray, expected_dtype: str, tolerance: Tolerance
    ) -> OutputComparison:
        actual, golden = np.asarray(actual), np.asarray(golden)
        atol, rtol = tolerance.atol, tolerance.rtol
        assert atol is not None and rtol is not None, f"{tolerance} is not resolved (tolerance_for)"
        nonfinite = int(np.size(actual) - np.count_nonzero(np.isfinite(actual)))

        def figures(max_abs: float, max_rel: float, needed_atol: float) -> OutputComparison:
            return cls(
                output=output,
                shape=tuple(actual.shape),
                golden_shape=tuple(golden.shape),
                dtype=str(actual.dtype),
                expected_dtype=expected_dtype,
                nonfinite=nonfinite,
                atol=atol,
                rtol=rtol,
                max_abs=max_abs,
                max_rel=max_rel,
                needed_atol=needed_atol,
            )

        if actual.shape != golden.shape:  # shape is checked before values
            return figures(max_abs=float("inf"), max_rel=float("inf"), needed_atol=float("inf"))
        a, g = actual.astype(np.float64), golden.astype(np.float64)
        with np.errstate(invalid="ignore", divide="ignore"):
            diff = np.abs(a - g)
            rel = np.where(diff == 0, 0.0, diff / np.abs(g))
        if diff.size == 0:
            return figures(max_abs=0.0, max_rel=0.0, needed_atol=0.0)
        bad = ~np.isfinite(diff)
        max_abs = float("inf") if bad.any() else float(diff.max())
        max_rel = float("inf") if bad.any() else float(rel.max())
        needed = float("inf") if bad.any() else max(0.0, float((diff - rtol * np.abs(g)).max()))
        return figures(max_abs=max_abs, max_rel=max_rel, needed_atol=needed)

    @property
    def failures(self) -> list[str]:
        """Why this comparison fails, in words; empty when it passes."""
        if self.shape != self.golden_shape:
            return [f"{self.output}: shape {self.shape} != {self.golden_shape}"]
        reasons = []
        if self.dtype != self.expected_dtype:
            reasons.append(f"{self.output}: dtype {self.dtype} != {self.expected_dtype}")
        if self.nonfinite:
            reasons.append(f"{self.output}: {self.nonfinite} NaN/Inf values")
        elif self.needed_atol > self.atol:
            reasons.append(f"{self.output}: max_abs={self.max_abs:.3g} beyond atol={self.atol:g}, rtol={self.rtol:g}")
        return reasons

    @property
    def passed(self) -> bool:
        return not self.failures

    def __bool__(self) -> bool:
        return self.passed

    def to_dict(self) -> dict:
        return asdict(self) | {"passed": self.passed}
