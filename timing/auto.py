"""export-attn --attention-impl auto: export every variant that accepts the spec, check each on the quick sweep,
time the ones that pass side by side at the user's shapes on this machine, and keep the fastest.

    choice = tune(spec, prepare(spec, module), shapes=[(1, 128), (4, 512)])
    choice.proto, choice.spec           # the chosen model, its metadata recording the choice (attn_onnx.tuning)
    print(choice.table())

A static cache (mha-static) is timed as it serves: at each shape (batch x length), one new token into caches
holding `length` tokens, the buffers bound in place.

The timing is bench-attn's (timing/engine.py interleaved: rotated rounds, three sessions per variant, a pause
before each contender); the figure per variant is the geometric mean over the shapes of its median latency, so a
long shape does not drown the short ones. A variant that fails the check is dropped with the reason and never
timed: a fast wrong answer is never chosen.
"""

from __future__ import annotations

import math
import os
import statistics
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import onnx

from attn_onnx.errors import UsageError
from attn_onnx.exporter.export import Prepared, describe, export_prepared
from attn_onnx.exporter.spec import ExportSpec, ModelSpec
from attn_onnx.exporter.variants import VARIANTS
from attn_onnx.vocab import MASK_PATTERNS

if TYPE_CHECKING:
    import torch

    from attn_onnx.runtime_check.report import Report

DEFAULT_SHAPES = ((1, 16), (1, 128), (1, 512))  # batch x length, self-attention lengths
# bench-attn's own rounds and share of a round, so that auto decides on the figures bench-attn would give (with 5
# rounds of 30 ms, auto's pick at (1,16) was 68% slower than the fastest in a bench-attn run); about a minute at the
# default shapes and width 512 on 2 cores, exports and checks included
DEFAULT_ROUNDS = 7
DEFAULT_MASK_PATTERN = "causal+padding"  # bench-attn's; the mask pattern fed to a model with a mask input while timing
TARGET_S = 0.05  # each contender's share of a round (bench.py's _timed), bench-attn's


@dataclass
class Candidate:
    variant: str
    runs_in: str  # where it runs (the variant's own word)
    proto: onnx.ModelProto | None = None  # once exported
    spec: ExportSpec | None = None  # the settings it would build; once exported, its model's ModelSpec
    dropped: str = ""  # why it is out: it cannot build the spec, or it failed the check
    max_abs: float | None = None  # on the quick sweep, against the float64 module
    median_ms: dict[str, float] = field(default_factory=dict)  # "1x128" -> median over rounds
    geomean_ms: float | None = None
    report: Report | None = None  # its check's
    twin: torch.nn.Module | None = None  # the module it was checked against: the weights it holds (int8: dequantized)

    def exported(self) -> tuple[onnx.ModelProto, ModelSpec]:
        """Its model and that model's spec: a candidate still in the race (not `dropped`) has passed the check."""
        assert self.proto is not None and isinstance(self.spec, ModelSpec), f"{self.variant} was not exported"
        return self.proto, self.spec


@dataclass
class Choice:
    proto: onnx.ModelProto
    spec: ModelSpec  # the chosen variant's, with the record in spec.tuning
    candidates: list[Candidate]
    shapes: list[tuple[int, int]]
    cpu: str
    threads: int
    rounds: int

    @property
    def chosen(self) -> Candidate:
        return next(c for c in self.candidates if c.variant == self.spec.variant)

    @property
    def report(self):
        """The chosen variant's check (export-attn's quick sweep): the pipeline does not check it again."""
        return self.chosen.report

    @property
    def twin(self):
        """The module the chosen model was checked against (int8: its dequantized weights)."""
        return self.chosen.twin

    def _shapes_are(self) -> str:
        if self.spec.kind.static_cache:
            return "batch x cache length: one new token each, the buffers bound in place"
        return "batch x length"

    def table(self) -> str:
        shapes = [_shape_name(s) for s in self.shapes]
        width = max(14, *(len(c.variant) + 2 for c in self.candidates))
        lines = [
            f"--attention-impl auto on {self.cpu}, {self.threads} thread(s), {self.rounds} interleaved rounds; "
            f"median ms per shape ({self._shapes_are()}), {self.spec.precision}",
            f"  {'variant':<{width}}" + "".join(f"{s:>10}" for s in shapes) + f"{'geomean':>10}{'max_abs':>10}"
            "  runs in",
        ]
        ranked = sorted(self.candidates, key=lambda c: (bool(c.dropped), c.geomean_ms or 0.0, c.variant))
        for c in ranked:
            mark = "  <- chosen" if c.variant == self.spec.variant else ""
            if c.dropped:
                lines.append(f"  {c.variant:<{width}}dropped: {c.dropped}")
                continue
            if c.geomean_ms is None:
                lines.append(
                    f"  {c.variant:<{width}}the only candidate, not timed; max_abs {c.max_abs:.1e}  {c.runs_in}{mark}"
                )
                continue
            lines.append(
                f"  {c.variant:<{width}}"
                + "".join(f"{c.median_ms[s]:>10.3f}" for s in shapes)
                + f"{c.geomean_ms:>10.3f}{c.max_abs:>10.1e}  {c.runs_in}{mark}"
            )
        return "\n".join(lines)


def candidates(spec: ExportSpec, standard_ops: bool = False, opset: int | None = None) -> list[Candidate]:
    """Every variant, each either with the spec it would build or dropped with the reason it cannot."""
    found = []
    for variant in VARIANTS.values():
        candidate = Candidate(variant.name, variant.runs_in)
        if standard_ops and not variant.standard_ops:
            candidate.dropped = f"not standard ONNX operators ({variant.runs_in})"
        else:
            try:
                candidate.spec = spec.replace(
                    variant=variant.name, opset=opset or max(spec.opset, variant.min_opset)
                ).validate()
            except UsageError as exc:
                candidate.dropped = str(exc)
        found.append(candidate)
    return found


def tune(
    spec: ExportSpec,
    weights: Prepared,
    shapes=DEFAULT_SHAPES,
    *,
    rounds: int = DEFAULT_ROUNDS,
    mask_pattern: str = DEFAULT_MASK_PATTERN,
    standard_ops: bool = False,
    opset: int | None = None,
    threads: int | None = None,
    on_line: Callable[[str], None] = lambda text: None,
    refused: Callable[[ExportSpec], str | None] = lambda spec: None,
) -> Choice:
    """Export, check and time every candidate; the fastest correct one, its metadata recording why.

    `weights` are the export's, prepared once (exporter.export.prepare); `opset` pins the opset (else each
    variant gets max(spec.opset, its minimum)); `refused(spec)` says why a candidate may not ship, or None (the
    pipeline's --target-onnxruntime: the compatibility table's verdict there), and drops it before it is even
    exported. UsageError when no candidate survives."""
    from attn_onnx.timing.engine import cpu_model, feeds_at, interleaved, sessions

    shapes = [tuple(s) for s in shapes]
    if spec.dtype == "bfloat16":
        raise UsageError(
            "--attention-impl auto times candidates in onnxruntime, which has no bfloat16 MatMul on a "
            "CPU; choose a variant by name for --dtype bfloat16"
        )
    if mask_pattern not in MASK_PATTERNS:
        raise UsageError(f"--tune-mask {mask_pattern!r}: choose from {list(MASK_PATTERNS)}")
    threads = threads or len(os.sched_getaffinity(0))
    if spec.kind.static_cache:  # a shape is one new token into caches of that length: at most max_len - 1
        shapes = list(dict.fromkeys((batch, min(length, spec.max_len - 1)) for batch, length in shapes))
    found = candidates(spec, standard_ops, opset)
    for c in found:
        problem = c.spec is not None and refused(c.spec)
        if problem:
            c.spec, c.dropped = None, problem
    for c in found:
        if c.spec is None:
            on_line(f"auto: {c.variant}: dropped ({c.dropped})")
            continue
        on_line(f"auto: {c.variant}: exporting and checking")
        _export_and_check(c, weights)
    alive = [c for c in found if not c.dropped]
    if not alive:
        reasons = "; ".join(f"{c.variant}: {c.dropped}" for c in found)
        raise UsageError(f"--attention-impl auto found no variant that builds and passes the check: {reasons}")
    by_shape = {}
    if len(alive) > 1:  # one candidate needs no race
        runs = {c.variant: sessions(c.exported()[0], threads) for c in alive}
        for batch, length in shapes:
            name = _shape_name((batch, length))
            on_line(f"auto: timing {len(alive)} variants at {name} ({rounds} rounds)")
            if spec.kind.static_cache:  # the step as it serves: one token, the buffers bound in place
                calls = {c.variant: _static_call(runs[c.variant], batch, length, spec) for c in alive}
            else:  # one draw: every candidate on the same inputs
                feeds = feeds_at(alive[0].exported()[1], batch, length, mask_pattern)
                calls = {c.variant: _call(runs[c.variant], feeds) for c in alive}
            by_shape[name] = interleaved(calls, rounds, TARGET_S)
        geomean_ms: dict[str, float] = {}
        for c in alive:
            c.median_ms = {s: statistics.median(times[c.variant]) * 1e3 for s, times in by_shape.items()}
            c.geomean_ms = geomean_ms[c.variant] = math.exp(statistics.fmean(math.log(v) for v in c.median_ms.values()))
        best = min(alive, key=lambda c: geomean_ms[c.variant])
    else:
        best = alive[0]
    cpu = cpu_model()
    record = {
        "chosen": best.variant,
        "runs_in": best.runs_in,
        "shapes": [_shape_name(s) for s in shapes],
        "mask": mask_pattern if spec.mask == "input" else spec.mask,
        "cpu": cpu,
        "threads": threads,
        "rounds": rounds,
        "standard_ops": standard_ops,
        "precision": spec.precision,
        "median_ms": {c.variant: {s: _figure(v) for s, v in c.median_ms.items()} for c in alive if c.median_ms},
        "geomean_ms": {c.variant: _figure(c.geomean_ms) for c in alive if c.geomean_ms is not None},
        "dropped": {c.variant: c.dropped for c in found if c.dropped},
    }
    best_proto, best_spec = best.exported()
    chosen = best_spec.replace(tuning=record)
    describe(best_proto, chosen)  # the metadata now records the choice
    return Choice(best_proto, chosen, found, shapes, cpu, threads, rounds)


def _export_and_check(candidate: Candidate, weights: Prepared) -> None:
    """The candidate's model, checked on the quick sweep; `dropped` says why where it fails."""
    from attn_onnx.runtime_check.check import QUICK_CONFIG, check_model
    from attn_onnx.runtime_check.reference import model_twin

    assert candidate.spec is not None  # tune exports only the candidates with a spec
    try:
        candidate.proto, candidate.spec = export_prepared(candidate.spec, weights)
    except Exception as exc:  # a variant that cannot export this spec is out, with the exporter's word
        candidate.dropped = f"the export failed: {type(exc).__name__}: {str(exc).splitlines()[0][:200]}"
        return
    candidate.twin = model_twin(candidate.proto, candidate.spec, weights.twin)  # int8: dequantized
    report = candidate.report = check_model(candidate.proto, QUICK_CONFIG, module=candidate.twin)
    if report.nothing_checked:
        candidate.dropped = "onnxruntime cannot run it here: " + "; ".join(s.reason for s in report.skipped)
    elif report.failed:
        worst = report.failed[0]
        candidate.dropped = (
            f"failed the check ({len(report.failed)} of {len(report.results)} cases; {worst.line()[:160]})"
        )
    elif not report.ok:  # right on every case, but a path of its graph no case ran: not proven
        assert report.coverage is not None  # the only other way to fail
        candidate.dropped = f"the check never ran {'; '.join(report.coverage.missing)}"
    else:
        assert report.worst is not None  # some case ran
        candidate.max_abs = report.worst.max_abs


def _call(runs, feeds) -> Callable[[int], object]:
    from attn_onnx.timing.engine import SESSIONS

    return lambda number: runs[number % SESSIONS].run(None, feeds)


def _static_call(runs, batch: int, past: int, spec: ExportSpec) -> Callable[[int], object]:
    """A static-cache step timed as it serves: one new token for each of `batch` sequences holding `past` tokens,
    the cache's buffers bound as past and present (runtime_check.static_cache), so the in-place forms are timed
    in place and the others with the copy they make. The same token every call, the lengths set back each time."""
    import numpy as np

    from attn_onnx.runtime_check.static_cache import StaticCache
    from attn_onnx.timing.engine import SESSIONS

    caches = [StaticCache(run, batch) for run in runs]
    token = np.random.default_rng((batch, past)).standard_normal((batch, 1, spec.embedding_dim), dtype=np.float32)

    return lambda number: caches[number % SESSIONS].step_at(past, token)


def _figure(ms: float) -> float:
    return float(f"{ms:.6g}")


def _shape_name(shape: tuple[int, int]) -> str:
    return f"{shape[0]}x{shape[1]}"
