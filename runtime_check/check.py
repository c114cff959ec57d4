"""Run an exported model through every runner on every case and compare with the float64 golden.

from attn_onnx.runtime_check import CheckConfig, check_model
report = check_model("mha.onnx", CheckConfig(runtimes=("onnxruntime", "reference")))
"""

from __future__ import annotations

import datetime
import hashlib
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import onnx

from attn_onnx import __version__
from attn_onnx.errors import ProviderError, UnsupportedModelError, UsageError, short_error
from attn_onnx.runtime_check.cases import QUICK, Sweep, generate_cases
from attn_onnx.runtime_check.compare import OutputComparison, Tolerance, tolerance_for
from attn_onnx.runtime_check.coverage import Coverage, CoverageProbe
from attn_onnx.runtime_check.model import LoadedModel, load_model
from attn_onnx.runtime_check.report import CaseResult, Report, Skipped
from attn_onnx.runtime_check.runners import RUNTIMES, Runner, known, runtime, uses_providers
from attn_onnx.vocab import PROVIDERS

if TYPE_CHECKING:
    import torch

# torch (the golden's) is imported where a check runs, not here: check-attn calls check_runtimes before it
# reads the model, and a refusal there costs well under a second


@dataclass(frozen=True)
class CheckConfig:
    """What a check runs: which runtimes and providers, which cases, held to which tolerances."""

    runtimes: tuple[str, ...] = ("onnxruntime", "reference")  # keys of runners.RUNTIMES, or onnxruntime==X.Y.Z
    providers: tuple[str, ...] = ("cpu",)  # onnxruntime's execution providers: cpu, cuda
    sweep: Sweep = Sweep()  # shapes x masks (or sizes)
    tolerance: Tolerance | None = None  # overrides the runners' profiles for float outputs
    seed: int = 0  # seed of the inputs; a case's data depends only on it and the case's name
    weights: Path | None = None  # compare against this checkpoint instead of the model's initializers
    weights_prefix: str = ""  # where the block sits inside `weights`
    tf32: bool = False  # CUDA: allow TF32, held to the tf32 profile
    skip_missing: bool = False  # a missing runtime or provider is SKIPPED, and "nothing checked" is allowed

    def validate(self) -> CheckConfig:
        check_runtimes(self.runtimes, self.providers)
        given = [v for v in (self.tolerance.atol, self.tolerance.rtol) if v is not None] if self.tolerance else []
        if not all(math.isfinite(v) and v >= 0 for v in given):  # NaN passes any comparison, inf any finite one
            raise UsageError(f"a tolerance is a finite number >= 0, not {self.tolerance}")
        self.sweep.validate()
        return self


def check_runtimes(runtimes: tuple[str, ...], providers: tuple[str, ...]) -> None:
    """The run guard: UsageError, before any work, for a runtime or provider that is not known, a release
    (onnxruntime==X.Y.Z) whose number is not one, or no runtime at all. CheckConfig.validate runs it, and
    check-attn before it reads the model."""
    unknown = [r for r in runtimes if not known(r)] + [p for p in providers if p not in PROVIDERS]
    if unknown:
        raise UsageError(
            f"unknown runtime(s) or provider(s) {unknown}; runtimes: {list(RUNTIMES)} or "
            f"onnxruntime==X.Y.Z, providers: {list(PROVIDERS)}"
        )
    for name in runtimes:
        runtime(name)  # a release's number is checked here
    if not runtimes:
        raise UsageError("no runtime to check with")


QUICK_CONFIG = CheckConfig(runtimes=("onnxruntime",), sweep=QUICK)  # the gate: export-attn, auto, check-attn --quick


def check_model(
    model: str | Path | onnx.ModelProto | LoadedModel,
    config: CheckConfig = CheckConfig(),
    *,
    module: torch.nn.Module | None = None,
    on_start: Callable[[Report], None] | None = None,
    on_result: Callable[[CaseResult, int, int], None] | None = None,
    command: list[str] | None = None,
) -> Report:
    """Check `model` on every case of the config's sweep with every runtime (and provider, for onnxruntime).

    The golden is the exported wrapper around the PyTorch module, in float64: `module` if given, else one
    loaded from `config.weights`, else one rebuilt from the model's own initializers. `on_result` is called
    as each result comes in, with (result, results so far, results in all); `on_start` with the empty
    report once the runners are ready. Returns the report;
    `report.raise_for_failures()` raises.
    """
    import torch

    from attn_onnx.runtime_check.runners.torch_runner import TorchRunner

    config.validate()
    created = datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
    loaded = model if isinstance(model, LoadedModel) else load_model(model)
    spec = loaded.spec  # its interface compared with it by load_model, or by the export that built it
    module, reference_weights = _golden_module(loaded, config, module)
    oracle = TorchRunner(spec, module, torch.float64)  # the float64 PyTorch module: what is right
    runners, skipped = make_runners(loaded, module, config)
    integer = spec.kind.integer_outputs(spec)
    tolerances = {r.name: tolerance_for(r.precision, integer, config.tolerance) for r in runners}
    report = Report(
        model=loaded.name,
        sha256=hashlib.sha256(loaded.data).hexdigest(),
        spec=spec,
        reference_weights=reference_weights,
        seed=config.seed,
        tolerances=tolerances,
        versions=_versions(runners),
        skip_missing=config.skip_missing,
        command=command,
        created=created,
        skipped=skipped,
    )
    expected = spec.output_dtypes()
    cases = generate_cases(spec, config.sweep)
    if on_start:
        on_start(report)
    decoding = spec.kind.decodes  # a KV-cache model: also whole sequences fed through its cache
    if decoding and spec.kind.static_cache:  # its buffers in place, and a batch of unequal lengths
        from attn_onnx.runtime_check.decode_static import case_names, decode_results
    elif decoding:
        from attn_onnx.runtime_check.decode import case_names, decode_results
    total = (len(cases) + (len(case_names()) if decoding else 0)) * len(runners)
    probe = CoverageProbe(loaded.proto, loaded.base_dir)  # which control-flow paths each case takes
    report.coverage = Coverage(probe.paths, required=config.sweep.covers)
    for case in cases:
        feeds = case.feeds(config.seed)
        report.coverage.record(case.name, probe.run(feeds))
        comparable = partial(spec.kind.comparable, spec, feeds)  # a kind's unspecified part zeroed on both sides
        golden_outputs = comparable(oracle.run(feeds))
        for runner in runners:
            result = run_case(
                runner, case.name, case.shape, feeds, golden_outputs, expected, tolerances[runner.name][1], comparable
            )
            report.results.append(result)
            if on_result:
                on_result(result, len(report.results), total)
    if decoding:
        by_name = {name: tolerance for name, (_, tolerance) in tolerances.items()}
        for result in decode_results(runners, module, spec, by_name, config.seed):
            report.results.append(result)
            if on_result:
                on_result(result, len(report.results), total)
    return report


def make_runners(loaded: LoadedModel, module, config: CheckConfig) -> tuple[list[Runner], list[Skipped]]:
    """A runner for each runtime (and provider) asked for; the ones that cannot run here as Skipped.

    A runtime or provider that is missing raises ProviderError unless `config.skip_missing`; one that is
    here but cannot execute the model's operators is always Skipped, with the reason.
    """
    runners, skipped = [], []
    for name in config.runtimes:
        for provider in config.providers if uses_providers(name) else (None,):
            impl = runtime(name)
            try:
                runners.append(impl.make(loaded, module, config, provider))
            except ProviderError as exc:
                if not config.skip_missing:
                    raise
                skipped.append(Skipped(impl.label(provider, config), str(exc)))
            except UnsupportedModelError as exc:
                skipped.append(Skipped(impl.label(provider, config), str(exc)))
    return runners, skipped


def run_case(
    runner: Runner,
    case: str,
    shape: str,
    feeds: dict,
    golden: dict,
    expected: dict,
    tolerance: Tolerance,
    comparable: Callable[[dict], dict] = lambda outputs: outputs,
) -> CaseResult:
    """One runner on one case's feeds, compared with the golden outputs (both as `comparable` leaves them: the
    kind's comparable()); a raising runtime is the finding."""
    try:
        outputs = comparable(runner.run(feeds))
    except Exception as exc:  # the runtime's own error is the finding: a shape it cannot take, say
        return CaseResult(
            runner.name, case, shape, error=f"{runner.name} raised {type(exc).__name__}: {short_error(exc)}"
        )
    missing = [n for n in golden if n not in outputs]
    if missing:
        return CaseResult(runner.name, case, shape, error=f"outputs missing: {missing}")
    comparisons = tuple(OutputComparison.measure(n, outputs[n], golden[n], expected[n], tolerance) for n in golden)
    return CaseResult(runner.name, case, shape, comparisons)


def plot_case(
    model: str | Path | onnx.ModelProto | LoadedModel,
    out_dir: Path,
    case_name: str | None = None,
    *,
    example: int | None = None,
    head: int = 0,
    provider: str = "cpu",
    config: CheckConfig = CheckConfig(),
) -> list[Path]:
    """Write the PNGs of `runtime_check.plots` for one case, run by onnxruntime on `provider`."""
    import torch

    from attn_onnx.runtime_check.cases import default_plot_case, parse_case
    from attn_onnx.runtime_check.plots import write_plots
    from attn_onnx.runtime_check.runners.ort_runner import OrtRunner
    from attn_onnx.runtime_check.runners.torch_runner import TorchRunner

    loaded = model if isinstance(model, LoadedModel) else load_model(model)
    spec = loaded.spec
    if "attn_probs" not in spec.output_names:
        raise UsageError(
            "--plots needs a model with an attn_probs output (export-attn --attn-probs, or --module attention)"
        )
    case = parse_case(case_name or default_plot_case(spec), spec)
    module, _ = _golden_module(loaded, config, None)
    feeds = case.feeds(config.seed)
    runner = OrtRunner(loaded.source(), provider, config.tf32 and provider == "cuda", precision=spec.precision)
    _, tolerance = tolerance_for(runner.precision, False, config.tolerance)
    golden = TorchRunner(spec, module, torch.float64).run(feeds)
    return write_plots(
        out_dir,
        case.name,
        feeds.get("mask"),
        golden["attn_probs"],
        runner.run(feeds)["attn_probs"],
        runner.name,
        example=case.batch - 1 if example is None else example,
        head=head,
        tolerance=tolerance,
    )


def _golden_module(loaded: LoadedModel, config: CheckConfig, module):
    from attn_onnx.runtime_check.reference import reference_module

    if module is not None:
        return module, "the module passed in"
    return reference_module(loaded.proto, loaded.spec, config.weights, config.weights_prefix, loaded.base_dir)


def _versions(runners: Sequence[Runner] = ()) -> dict[str, str]:
    """The libraries' versions: ours, the golden's, and each registered runtime's that is installed here (its
    file's versions()), with what a runner reports of its own runtime (onnxruntime-web's, say)."""
    import torch

    versions = {"attn_onnx": __version__, "torch": torch.__version__, "onnx": onnx.__version__, "numpy": np.__version__}
    for name in RUNTIMES:
        if not runtime(name).missing():
            versions.update(runtime(name).versions())
    for runner in runners:
        versions.update(getattr(runner, "versions", {}))
    return versions
