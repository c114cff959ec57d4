"""Run an exported model through every runner on every case and compare with the float64 golden."""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import onnx
import torch

from exporter.errors import MetadataError, ProviderError, UsageError, first_line
from exporter.spec import ExportSpec
from runtime_check.cases import Sweep, generate_cases
from runtime_check.compare import EXACT, FLOAT32, TF32, OutputComparison, Tolerance
from runtime_check.reference import reference_module
from runtime_check.report import CaseResult, Report, Skipped
from runtime_check.runners import (PROVIDERS, RUNTIMES, OnnxReferenceRunner, OpenVinoRunner, OrtRunner,
                                   Runner, TorchRunner)


def load_model(model: str | Path | onnx.ModelProto) -> tuple[onnx.ModelProto, bytes, str]:
    """The model as a proto, its bytes, and a name for reports."""
    if isinstance(model, onnx.ModelProto):
        return model, model.SerializeToString(), "<in memory>"
    path = Path(model)
    data = path.read_bytes()
    try:
        proto = onnx.load_from_string(data)
    except Exception as exc:  # protobuf's DecodeError and friends
        raise MetadataError(f"{path.name!r} is not an ONNX model: {first_line(exc)}") from None
    if not proto.graph.node:
        raise MetadataError(f"{path.name!r} is not an ONNX model (its graph is empty)")
    return proto, data, str(path)


def check_model(
    model: str | Path | onnx.ModelProto,
    *,
    runtimes: Sequence[str] = ("onnxruntime", "reference"),
    providers: Sequence[str] = ("cpu",),
    sweep: Sweep = Sweep(),
    tolerance: Tolerance | None = None,
    seed: int = 0,
    weights: str | Path | None = None,
    weights_prefix: str = "",
    module: torch.nn.Module | None = None,
    tf32: bool = False,
    skip_missing: bool = False,
    progress: Callable[[int, int], None] | None = None,  # called with (runs done, runs in all)
) -> Report:
    """Check `model` on every case of `sweep` with every runtime (and provider, for onnxruntime).

    The golden is the PyTorch module in float64: `module` if given, else one loaded from `weights`, else
    one rebuilt from the model's own initializers. Returns the report; `report.raise_for_failures()` raises.
    """
    unknown = [r for r in runtimes if r not in RUNTIMES] + [p for p in providers if p not in PROVIDERS]
    if unknown:
        raise UsageError(f"unknown runtime(s) or provider(s) {unknown}; runtimes: {list(RUNTIMES)}, "
                         f"providers: {list(PROVIDERS)}")
    proto, data, name, spec, module, reference_weights = _prepare(model, weights, weights_prefix, module)
    golden = TorchRunner(spec, module, torch.float64)
    runners, skipped = _make_runners(runtimes, providers, proto, data, spec, module, tf32, skip_missing)

    def tolerance_for(runner: Runner) -> Tolerance:
        if spec.module == "mask":
            return EXACT
        return tolerance or (TF32 if runner.name.endswith("+tf32") else FLOAT32)

    report = Report(model=name, sha256=hashlib.sha256(data).hexdigest(), spec=spec,
                    reference_weights=reference_weights, seed=seed,
                    tolerances={r.name: vars(tolerance_for(r)) for r in runners},
                    versions=_versions(), skipped=skipped)
    expected = {n: ("uint8" if spec.module == "mask" else spec.dtype) for n in spec.output_names}
    cases = generate_cases(spec, sweep)
    total = len(cases) * len(runners)
    for case in cases:
        feeds = case.feeds(seed)
        golden_outputs = golden.run(feeds)
        for runner in runners:
            report.results.append(_run_case(runner, case.name, feeds, golden_outputs, expected,
                                            tolerance_for(runner)))
            if progress:
                progress(len(report.results), total)
    return report


def plot_case(model: str | Path | onnx.ModelProto, out_dir: Path, case_name: str | None = None, *,
              provider: str = "cpu", tf32: bool = False, seed: int = 0, weights: str | Path | None = None,
              weights_prefix: str = "") -> list[Path]:
    """Write the PNGs of `runtime_check.plots` for one case, run by onnxruntime on `provider`."""
    from runtime_check.cases import default_plot_case, parse_case
    from runtime_check.plots import write_plots

    proto, data, _, spec, module, _ = _prepare(model, weights, weights_prefix, None)
    if "attn_probs" not in spec.output_names:
        raise UsageError("--plots needs a model with an attn_probs output (export-attn --attn-probs, or "
                         "--module attention)")
    case = parse_case(case_name or default_plot_case(spec), spec)
    feeds = case.feeds(seed)
    runner = OrtRunner(data, provider, tf32)
    golden = TorchRunner(spec, module, torch.float64).run(feeds)
    return write_plots(out_dir, case.name, feeds.get("mask"), golden["attn_probs"],
                       runner.run(feeds)["attn_probs"], runner.name)


def _prepare(model, weights, weights_prefix, module):
    """Load the model, read its spec, and find the module of its golden (and a word on its weights)."""
    proto, data, name = load_model(model)
    spec = ExportSpec.from_metadata({p.key: p.value for p in proto.metadata_props})
    if module is not None:
        reference_weights = "the module passed in"
    else:
        module, reference_weights = reference_module(proto, spec, weights, weights_prefix)
    return proto, data, name, spec, module, reference_weights


def _run_case(runner: Runner, case: str, feeds: dict, golden: dict, expected: dict,
              tolerance: Tolerance) -> CaseResult:
    try:
        outputs = runner.run(feeds)
    except Exception as exc:  # the runtime's own error is the finding: a shape it cannot take, say
        return CaseResult(runner.name, case, error=f"{runner.name} raised {type(exc).__name__}: {_short(exc)}")
    missing = [n for n in golden if n not in outputs]
    if missing:
        return CaseResult(runner.name, case, error=f"outputs missing: {missing}")
    comparisons = tuple(OutputComparison.measure(n, outputs[n], golden[n], expected[n], tolerance)
                        for n in golden)
    return CaseResult(runner.name, case, comparisons)


def _short(exc: BaseException) -> str:
    """A runtime's error without its source locations and C++ signatures (the status message remains)."""
    import re

    text = first_line(exc)
    text = re.sub(r"/onnxruntime_src/\S+ (?:\w+ )?onnxruntime::\S+\(.*?\) ", "", text)
    return text if len(text) <= 300 else text[:297] + "..."


def _make_runners(runtimes, providers, proto, data, spec, module, tf32, skip_missing):
    runners: list[Runner] = []
    skipped: list[Skipped] = []
    for runtime in runtimes:
        try:
            if runtime == "onnxruntime":
                for provider in providers:
                    try:
                        runners.append(OrtRunner(data, provider, tf32=tf32 and provider == "cuda"))
                    except ProviderError as exc:
                        if not skip_missing:
                            raise
                        skipped.append(Skipped(f"onnxruntime/{provider}", str(exc)))
            elif runtime == "reference":
                runners.append(OnnxReferenceRunner(proto))
            elif runtime == "openvino":
                runners.append(OpenVinoRunner(data))
            elif runtime == "torch":
                runners.append(TorchRunner(spec, module, torch.float32))
        except ProviderError as exc:
            if runtime != "openvino":  # an optional extra: reported SKIPPED when absent
                raise
            skipped.append(Skipped("openvino/cpu", str(exc)))
    return runners, skipped


def _versions() -> dict[str, str]:
    import onnxruntime as ort

    versions = {"torch": torch.__version__, "onnx": onnx.__version__, "onnxruntime": ort.__version__,
                "numpy": np.__version__,
                "onnxruntime_providers": ",".join(ort.get_available_providers())}
    try:
        import openvino

        versions["openvino"] = openvino.__version__
    except ImportError:
        pass
    return versions
