"""Results as data: one `CaseResult` per runner and case, gathered in a `Report` that prints fixed-format
lines (no timestamps: two runs of the same check print the same text) and writes JSON (which does carry
the command line and a timestamp, for the record)."""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field

from attn_onnx.errors import ParityError
from attn_onnx.exporter.spec import ExportSpec
from attn_onnx.runtime_check.compare import OutputComparison, Tolerance
from attn_onnx.runtime_check.coverage import Coverage

PASSED, FAILED, SKIPPED = "PASSED", "FAILED", "SKIPPED"


@dataclass(frozen=True)
class CaseResult:
    """One runner on one case: every output compared, or the error the runtime raised."""

    runner: str
    case: str  # e.g. b3.q11.kv5.padding
    shape: str = ""  # the case without its mask pattern, e.g. b3.q11.kv5
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
        """The largest absolute error over the outputs; inf where the runtime raised or gave NaN/Inf."""
        return max((c.max_abs for c in self.comparisons), default=math.inf if self.error else 0.0)

    @property
    def max_rel(self) -> float:
        return max((c.max_rel for c in self.comparisons), default=math.inf if self.error else 0.0)

    @property
    def needed_atol(self) -> float:
        return max((c.needed_atol for c in self.comparisons), default=math.inf if self.error else 0.0)

    def line(self) -> str:
        status = PASSED if self.passed else FAILED
        text = (
            f"{status} | {self.runner} | {self.case} | max_abs={self.max_abs:.3g} max_rel={self.max_rel:.3g}"
            f" | needs atol>={self.needed_atol:.3g}"
        )
        return text if self.passed else f"{text} | {'; '.join(self.failures)}"

    def to_dict(self) -> dict:
        return {
            "runner": self.runner,
            "case": self.case,
            "status": PASSED if self.passed else FAILED,
            "max_abs": _number(self.max_abs),
            "max_rel": _number(self.max_rel),
            "needed_atol": _number(self.needed_atol),
            "failures": self.failures,
            "outputs": [{k: _number(v) for k, v in c.to_dict().items()} for c in self.comparisons],
        }


@dataclass(frozen=True)
class Skipped:
    """A runner that was asked for but did not run here, and why."""

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
    tolerances: dict[str, tuple[str, Tolerance]]  # runner -> (profile name, tolerance)
    versions: dict[str, str]
    skip_missing: bool = False  # whether "nothing checked" was allowed
    command: list[str] | None = None  # the command line, when a CLI ran the check
    created: str = ""  # ISO 8601 UTC, when the check started
    results: list[CaseResult] = field(default_factory=list)
    skipped: list[Skipped] = field(default_factory=list)
    coverage: Coverage | None = None  # which control-flow paths the cases ran

    @property
    def failed(self) -> list[CaseResult]:
        return [r for r in self.results if not r.passed]

    @property
    def uncovered(self) -> list[str]:
        """Why the coverage fails the check: the control-flow paths no case ran, where they had to run."""
        return self.coverage.failures if self.coverage is not None else []

    @property
    def passed(self) -> bool:
        return bool(self.results) and not self.failed and not self.uncovered

    def __bool__(self) -> bool:
        return self.passed

    @property
    def nothing_checked(self) -> bool:
        return not self.results

    @property
    def ok(self) -> bool:
        """Whether the check succeeds: every case passed, or nothing ran and --skip-missing allowed that."""
        return self.passed or (self.nothing_checked and self.skip_missing)

    @property
    def status(self) -> str:
        """PASSED, FAILED, or SKIPPED when nothing ran and --skip-missing allowed that."""
        if self.nothing_checked:
            return SKIPPED if self.skip_missing else FAILED
        return PASSED if self.passed else FAILED

    @property
    def worst(self) -> CaseResult | None:
        """The result with the largest absolute error (a runtime error or NaN counts as infinite)."""
        return max(self.results, key=lambda r: r.max_abs, default=None)

    @property
    def shapes(self) -> list[str]:
        """The distinct case shapes, e.g. ['b1.q17.kv6', 'b3.q11.kv5']."""
        return sorted({r.shape for r in self.results})

    def lines(self) -> list[str]:
        return [r.line() for r in self.results] + [s.line() for s in self.skipped] + self.coverage_lines()

    def coverage_lines(self) -> list[str]:
        """The coverage line, for a model with control flow (one without has one path, run by every case)."""
        return [self.coverage.line()] if self.coverage is not None and self.coverage.paths and self.results else []

    def summary(self) -> str:
        n_pass, n_fail = len(self.results) - len(self.failed), len(self.failed)
        text = f"{n_pass} passed, {n_fail} failed, {len(self.skipped)} skipped"
        if self.nothing_checked:
            text += " | nothing checked" + ("" if self.skip_missing else " (pass --skip-missing to allow that)")
        else:
            worst = self.worst
            assert worst is not None  # some case ran
            needed = max(r.needed_atol for r in self.results)
            text += (
                f" | worst: {worst.runner} {worst.case} max_abs={worst.max_abs:.3g}"
                f" | min atol that passes all: {needed:.3g}"
            )
            if self.coverage is not None and self.coverage.paths:
                covered = len(self.coverage.paths) - len(self.coverage.missing)
                text += f" | paths: {covered} of {len(self.coverage.paths)} ran"
        return f"{self.status} | summary | {text}"

    def raise_for_failures(self) -> None:
        """ParityError listing every failing case (all of them, at once)."""
        if self.nothing_checked and not self.skip_missing:
            raise ParityError("nothing was checked: every runner was skipped", report=self)
        if self.failed:
            names = ", ".join(f"{r.runner} {r.case}" for r in self.failed[:10])
            more = f" and {len(self.failed) - 10} more" if len(self.failed) > 10 else ""
            raise ParityError(f"{len(self.failed)} of {len(self.results)} cases failed: {names}{more}", report=self)
        if self.uncovered:
            assert self.coverage is not None  # the failures are its
            raise ParityError(
                f"the cases left control-flow paths unrun: {'; '.join(self.coverage.missing)}", report=self
            )

    def to_dict(self) -> dict:
        spec = dataclasses.asdict(self.spec)
        spec.pop("weights", None)
        worst = self.worst
        return {
            "model": self.model,
            "sha256": self.sha256,
            "spec": spec,
            "reference_weights": self.reference_weights,
            "seed": self.seed,
            "command": self.command,
            "created": self.created,
            "runners": list(self.tolerances),
            "tolerances": {r: {"profile": p, "atol": t.atol, "rtol": t.rtol} for r, (p, t) in self.tolerances.items()},
            "versions": self.versions,
            "passed": self.passed,
            "status": self.status,
            "summary": {
                "passed": len(self.results) - len(self.failed),
                "failed": len(self.failed),
                "skipped": len(self.skipped),
                "nothing_checked": self.nothing_checked,
                "worst": None
                if worst is None
                else {"runner": worst.runner, "case": worst.case, "max_abs": _number(worst.max_abs)},
                "line": self.summary(),
            },
            "skipped": [dataclasses.asdict(s) for s in self.skipped],
            "coverage": None if self.coverage is None else self.coverage.to_dict(),
            "cases": [r.to_dict() for r in self.results],
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, allow_nan=False) + "\n"


def _number(value):
    """JSON has no NaN or Infinity: a figure that is not finite is null (the case's `failures` say why)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, tuple):
        return list(value)
    return value
