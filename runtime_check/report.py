"""Results as data: one `CaseResult` per runner and case, gathered in a `Report` that prints fixed-format
lines (no timestamps: two runs of the same check print the same text) and writes JSON."""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field

from exporter.errors import ParityError
from exporter.spec import ExportSpec
from runtime_check.compare import OutputComparison

PASSED, FAILED, SKIPPED = "PASSED", "FAILED", "SKIPPED"


@dataclass(frozen=True)
class CaseResult:
    """One runner on one case: every output compared, or the error the runtime raised."""

    runner: str
    case: str
    comparisons: tuple[OutputComparison, ...] = ()
    error: str | None = None

    @property
    def failures(self) -> list[str]:
        if self.error is not None:
            return [self.error]
        return [reason for c in self.comparisons for reason in c.failures]

    @property
    def passed(self) -> bool:
        return not self.failures

    def __bool__(self) -> bool:
        return self.passed

    @property
    def max_abs(self) -> float:
        return max((c.max_abs for c in self.comparisons), default=math.inf if self.error else 0.0)

    @property
    def max_rel(self) -> float:
        return max((c.max_rel for c in self.comparisons), default=math.inf if self.error else 0.0)

    @property
    def needed_atol(self) -> float:
        return max((c.needed_atol for c in self.comparisons), default=math.inf if self.error else 0.0)

    def line(self) -> str:
        status = PASSED if self.passed else FAILED
        text = (f"{status} | {self.runner} | {self.case} | max_abs={self.max_abs:.3g} max_rel={self.max_rel:.3g}"
                f" | needs atol>={self.needed_atol:.3g}")
        return text if self.passed else f"{text} | {'; '.join(self.failures)}"

    def to_dict(self) -> dict:
        return {"runner": self.runner, "case": self.case, "status": PASSED if self.passed else FAILED,
                "max_abs": _finite_or_str(self.max_abs), "max_rel": _finite_or_str(self.max_rel),
                "needed_atol": _finite_or_str(self.needed_atol), "failures": self.failures,
                "outputs": [{k: _finite_or_str(v) for k, v in c.to_dict().items()} for c in self.comparisons]}


@dataclass(frozen=True)
class Skipped:
    """A runner that was asked for but could not run here, and why."""

    runner: str
    reason: str

    def line(self) -> str:
        return f"{SKIPPED} | {self.runner} | - | {self.reason}"


@dataclass
class Report:
    """Everything a check found, and what it compared against."""

    model: str  # the file's path, or "<in memory>"
    sha256: str  # of the serialized model
    spec: ExportSpec
    reference_weights: str  # which weights the PyTorch golden used
    seed: int
    tolerances: dict[str, dict]  # runner -> {"atol", "rtol"}
    versions: dict[str, str]
    results: list[CaseResult] = field(default_factory=list)
    skipped: list[Skipped] = field(default_factory=list)

    @property
    def failed(self) -> list[CaseResult]:
        return [r for r in self.results if not r.passed]

    @property
    def passed(self) -> bool:
        return bool(self.results) and not self.failed

    def __bool__(self) -> bool:
        return self.passed

    @property
    def status(self) -> str:
        """PASSED, FAILED, or SKIPPED when nothing ran because every runner asked for was skipped."""
        if not self.results and self.skipped:
            return SKIPPED
        return PASSED if self.passed else FAILED

    def lines(self) -> list[str]:
        return [r.line() for r in self.results] + [s.line() for s in self.skipped]

    def summary(self) -> str:
        n_pass, n_fail = len(self.results) - len(self.failed), len(self.failed)
        text = f"{n_pass} passed, {n_fail} failed, {len(self.skipped)} skipped"
        if self.results:
            worst = max(self.results, key=lambda r: r.needed_atol)
            text += (f" | worst: {worst.runner} {worst.case} max_abs={worst.max_abs:.3g}"
                     f" | min atol that passes all: {worst.needed_atol:.3g}")
        return f"{self.status} | summary | {text}"

    def raise_for_failures(self) -> None:
        """ParityError listing every failing case (all of them, at once)."""
        if not self.results:
            raise ParityError("no case ran: every runner was skipped", report=self)
        if self.failed:
            names = ", ".join(f"{r.runner} {r.case}" for r in self.failed[:10])
            more = f" and {len(self.failed) - 10} more" if len(self.failed) > 10 else ""
            raise ParityError(f"{len(self.failed)} of {len(self.results)} cases failed: {names}{more}",
                              report=self)

    def to_dict(self) -> dict:
        spec = dataclasses.asdict(self.spec)
        spec.pop("weights")
        return {"model": self.model, "sha256": self.sha256, "spec": spec,
                "reference_weights": self.reference_weights, "seed": self.seed,
                "runners": list(self.tolerances), "tolerances": self.tolerances,
                "versions": self.versions, "passed": self.passed, "status": self.status,
                "summary": {"passed": len(self.results) - len(self.failed), "failed": len(self.failed),
                            "skipped": len(self.skipped), "line": self.summary()},
                "skipped": [dataclasses.asdict(s) for s in self.skipped],
                "cases": [r.to_dict() for r in self.results]}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, allow_nan=False) + "\n"


def _finite_or_str(value):
    """JSON has no NaN or Infinity: write them as strings."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, tuple):
        return list(value)
    return value
