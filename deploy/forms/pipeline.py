"""The one export pipeline: validate the spec, build the model, check it against the float64 PyTorch module,
and write it in each output form asked for. export-attn only wires its options to it.

    from attn_onnx.deploy import Bundle, OnnxFile, export_model
    from attn_onnx.exporter import ExportSpec

    exported = export_model(ExportSpec(heads=8), OnnxFile("mha.onnx"), Bundle("mha-bundle"), module=module)
    exported.proto, exported.spec, exported.twin, exported.report   # what was built, and its check

Each step is done once: the spec is validated once (here, before any work), the forms' targets are checked
before the export (existing ones, data files beside them, two forms at one path or one inside another),
the model is serialized once and that one copy is checked and written in every form (a model past 2 GiB,
whose weights must lie beside it, is saved and checked from a file instead). A model that fails the check
is written nowhere (ParityError, with the report).

The forms are written all or none: each is staged under a temp name beside its target, then one commit
moves them all into place (files.Transaction); a failure or an interrupt before or during the commit
leaves no form written and every earlier target as it was.
"""

from __future__ import annotations

import dataclasses
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import onnx

from attn_onnx.deploy.forms.base import Model, Written
from attn_onnx.errors import ParityError
from attn_onnx.exporter.spec import ExportSpec, ModelSpec


@dataclass(frozen=True)
class Tuning:
    """--attention-impl auto: time every variant that passes the check at `shapes` and keep the fastest."""

    shapes: tuple = ((1, 16), (1, 128), (1, 512))  # (batch, length), self-attention
    rounds: int = 7  # bench-attn's interleaved rounds
    mask_pattern: str = "causal+padding"  # the mask pattern fed while timing, for a model with a mask input
    standard_ops: bool = False  # only variants of standard ONNX operators
    opset: int | None = None  # pinned; else each candidate at max(spec.opset, its minimum)


@dataclass
class Exported:
    """What export_model built and wrote."""

    proto: onnx.ModelProto
    spec: ModelSpec  # what the model's metadata states: the settings, the weight map, auto's record
    module: object  # the PyTorch module as given or built (None for the mask module kind, which has no weights)
    twin: object  # `module` with the model's weights: rounded to its dtype, or dequantized (int8)
    report: object = None  # the parity check's Report (None with check=False)
    accuracy: object = None  # a reduced-precision model against the module as given: its worst CaseResult
    choice: object = None  # --attention-impl auto's Choice (its table), where tuned
    target_report: object = None  # the quick sweep in the --target-onnxruntime release, where it is installed
    written: dict[str, Written] = field(default_factory=dict)  # form -> what it wrote (forms/base.py)


def export_model(
    spec: ExportSpec,
    *forms,
    module=None,
    state: dict | None = None,
    seed: int = 0,
    weights_source: str = "",
    check: bool = True,
    force: bool = False,
    external_data: bool = False,
    tuning: Tuning | None = None,
    target: str | None = None,
    on_line: Callable[[str], None] = lambda text: None,
) -> Exported:
    """Export `spec` and write it in each of `forms` (OnnxFile, Bundle, TritonRepo; a bare path is an
    OnnxFile); with no form, nothing is written and the model is returned.

    The weights: `module` (any module with MultiHeadedAttention's interface), else `state` (a state_dict),
    else random from `seed`; `weights_source` says where they came from, in the metadata. `check` runs the
    quick parity sweep in onnxruntime first. `tuning` chooses the
    variant (--attention-impl auto), reporting progress to `on_line`. `target` (an onnxruntime release, e.g.
    "1.20.1"): a spec the compatibility table says does not run right there is refused before any work (auto
    drops such candidates), and where that release is installed the check runs in it too.
    """
    from attn_onnx.deploy.forms.onnx_file import OnnxFile

    forms = tuple(OnnxFile(f) if isinstance(f, (str, Path)) else f for f in forms)
    spec.validate()
    check_targets(forms, spec, force)
    if target is not None and tuning is None:
        from attn_onnx.errors import UsageError

        problem = _refused_on(target)(spec)
        if problem:
            raise UsageError(problem)
    from attn_onnx.exporter.export import export_prepared, prepare
    from attn_onnx.runtime_check.reference import model_twin

    weights = prepare(spec, module, state, seed, weights_source)  # once: auto's candidates share it
    module = weights.module
    choice = None
    if tuning is not None:
        from attn_onnx.timing.auto import tune

        choice = tune(
            spec,
            weights,
            tuning.shapes,
            rounds=tuning.rounds,
            mask_pattern=tuning.mask_pattern,
            standard_ops=tuning.standard_ops,
            opset=tuning.opset,
            on_line=on_line,
            refused=_refused_on(target),
        )
        proto, spec, twin = choice.proto, choice.spec, choice.twin
    else:
        proto, spec = export_prepared(spec, weights)
        twin = model_twin(proto, spec, weights.twin)  # int8: the dequantized weights the model holds
    proto = _for_runtime(proto, spec, target)
    from attn_onnx.model_files import needs_external

    external = external_data or needs_external(proto)
    model = Model(proto, spec, None if external else proto.SerializeToString(), external, twin)
    exported = Exported(proto, spec, module, twin, choice=choice)
    targets = targets_of(forms, spec)
    if check or choice is not None:  # auto checked every candidate on this sweep: the winner's report stands
        exported.report, exported.accuracy = _check(model, module, forms, targets, choice and choice.report)
    if target is not None and check:
        exported.target_report = _check_on_release(model, target, targets)
    from attn_onnx.files import staging

    with staging(force) as txn:  # every form staged beside its target, then committed together, or none
        for form in forms:
            exported.written[type(form).__name__] = form.write(model, force)
        txn.commit()
    return exported


def _refused_on(target: str | None):
    """Why a spec may not ship for onnxruntime `target` (the compatibility table's cell there), or None."""
    if target is None:
        return lambda spec: None
    from attn_onnx.deploy.compatibility import check_target, target_problem

    release = check_target(target)

    def refused(spec: ExportSpec) -> str | None:
        problem = target_problem(spec, release)
        return f"--target-onnxruntime {target}: {problem}" if problem else None

    return refused


def _for_runtime(proto, spec: ExportSpec, target: str | None):
    """The model as it ships: at the IR version the --target-onnxruntime release reads (1.16 and 1.17 read 9,
    the exporter writes 10), and with the oldest onnxruntime that runs it right in its metadata
    (attn_onnx.min_onnxruntime, the bundle manifest's claim, and where it comes from)."""
    from attn_onnx.deploy.compatibility import lowered_ir, min_onnxruntime
    from attn_onnx.exporter.spec import METADATA_PREFIX

    if target is not None:
        proto = lowered_ir(proto, target)
    release, measured = min_onnxruntime(proto, spec)
    for key, value in (
        ("min_onnxruntime", release),
        (
            "min_onnxruntime_source",
            "measured (docs/compatibility.md)"
            if measured
            else "not measured: the oldest release its opset and IR version allow",
        ),
    ):
        onnx.helper.set_model_props(
            proto, {**{p.key: p.value for p in proto.metadata_props}, METADATA_PREFIX + key: value}
        )
    return proto


def _check_on_release(model: Model, target: str, targets: str):
    """The quick sweep in onnxruntime `target` itself, where it is installed (ParityError unless it passes);
    None where it is not (the CLI says so)."""
    from attn_onnx.runtime_check.check import QUICK_CONFIG, check_model
    from attn_onnx.runtime_check.model import LoadedModel
    from attn_onnx.runtime_check.runners.ort_release_runner import installed

    if target not in installed() or model.data is None:
        return None
    report = check_model(
        LoadedModel(model.proto, model.data, "<in memory>", model.spec),
        dataclasses.replace(QUICK_CONFIG, runtimes=(f"onnxruntime=={target}",)),
        module=model.twin,
    )
    if not report.ok:
        raise ParityError(
            f"the exported model fails the parity check on onnxruntime {target} ({_why(report)}); "
            f"nothing was written to {targets} (--no-check writes it anyway)",
            report,
        )
    return report


def check_targets(forms, spec: ExportSpec, force: bool) -> None:
    """Refuse, before any work, what the forms could not write: two forms (or a form and another's data
    file) at the same path or one inside the other, then each form's own checks (its target exists without
    `force`, its folder cannot be written, a dtype it cannot carry)."""
    import os

    from attn_onnx.errors import UsageError

    claims = [
        (i, Path(os.path.realpath(path)), what) for i, form in enumerate(forms) for path, what in form.claims(spec)
    ]
    for n, (i, a, what_a) in enumerate(claims):
        for j, b, what_b in claims[n + 1 :]:
            if i == j:
                continue
            if a == b:
                raise UsageError(f"{what_a} and {what_b} are the same path; give each form a path of its own")
            if b in a.parents or a in b.parents:
                inner, outer = (what_a, what_b) if b in a.parents else (what_b, what_a)
                raise UsageError(f"{inner} lies inside {outer}; give each form a path of its own")
    for form in forms:
        form.check(spec, force)


def _why(report) -> str:
    """Why a gate's report fails, in a few words: the cases that failed, or the paths no case ran."""
    if report.failed:
        return f"{len(report.failed)} of {len(report.results)} cases failed"
    if report.uncovered:
        return f"its cases never ran {'; '.join(report.coverage.missing)}"
    return "nothing was checked"


def targets_of(forms, spec: ExportSpec) -> str:
    """Where `forms` write, for messages: "m.onnx or b or r/mha"."""
    return " or ".join(str(form.target(spec)) for form in forms) or "nothing"


def _check(model: Model, module, forms, targets: str, report=None):
    """The quick parity sweep in onnxruntime (onnx.reference where onnxruntime cannot run the model here),
    unless `report` holds it already; ParityError, with the report, unless it passes. Where the twin's
    weights differ from the module's (reduced precision, int8), also the worst case against the module as
    given: what rounding cost."""
    from attn_onnx.runtime_check.check import QUICK_CONFIG, check_model
    from attn_onnx.runtime_check.compare import MEASURE_ONLY

    def run(loaded, report=report):
        config = QUICK_CONFIG
        if report is None:
            report = check_model(loaded, config, module=model.twin)
        if report.nothing_checked:  # no bfloat16 MatMul in onnxruntime's CPU: onnx.reference checks it
            config = dataclasses.replace(config, runtimes=("onnxruntime", "reference"))
            report = check_model(loaded, config, module=model.twin)
        if not report.ok:
            raise ParityError(
                f"the exported model fails the parity check ({_why(report)}); nothing was written "
                f"to {targets} (--no-check writes it anyway, for inspection)",
                report,
            )
        accuracy = None
        if model.twin is not module:
            accuracy = check_model(loaded, dataclasses.replace(config, tolerance=MEASURE_ONLY), module=module).worst
        return report, accuracy

    from attn_onnx.runtime_check.model import LoadedModel, check_interface

    check_interface(model.proto, model.spec)  # the graph's inputs and outputs are what its metadata says
    if not model.external:
        assert model.data is not None  # serialized, as every model without external data is
        return run(LoadedModel(model.proto, model.data, "<in memory>", model.spec))
    # past 2 GiB a model runs only from a file: saved (and checked by onnx.checker) in a temp folder
    from attn_onnx.exporter.export import check_onnx
    from attn_onnx.model_files import save_model

    near = forms[0].target(model.spec).parent if forms else None
    with tempfile.TemporaryDirectory(prefix=".attn-onnx-check.", dir=near if near and near.is_dir() else None) as tmp:
        path = Path(tmp) / "model.onnx"
        save_model(model.proto, path, True)
        check_onnx(path)
        return run(LoadedModel(model.proto, path.read_bytes(), str(path), model.spec, path, True))
