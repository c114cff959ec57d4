"""`check-attn`: prove that an exported model computes what its PyTorch module computes."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from attn_onnx import __version__
from attn_onnx.cli.common import (
    EXIT_FAILURE,
    EXIT_OK,
    CommaChoice,
    OneLineErrorCommand,
    Tolerance,
    comma_list,
    given,
    refuse,
)
from attn_onnx.runtime_check.runners import RELEASE_HELP, RUNTIMES
from attn_onnx.vocab import MASK_PATTERNS, PROVIDERS

GRID = ("batches", "lengths", "shapes", "masks")  # the sweep options of attention models
SWEEP = (*GRID, "sizes")
SWEEP_DIM = {**dict.fromkeys(GRID, "batch"), "sizes": "size"}  # each applies to kinds whose cases set that dim


def _profiles(field: str) -> str:
    """`1e-05 float32, 0.004 float16, ...`: a tolerance's default per precision, for --help."""
    from attn_onnx.runtime_check.compare import PROFILES

    shown = ("float32", "float16", "bfloat16", "int8")
    return (
        ", ".join(f"{getattr(PROFILES[p], field):g} {p}" for p in shown)
        + f"; {getattr(PROFILES['tf32'], field):g} with --tf32"
    )


@click.command("check-attn", cls=OneLineErrorCommand)
@click.version_option(__version__, prog_name="check-attn")
@click.argument("model", type=click.Path(exists=True, dir_okay=False, path_type=Path), required=False)
@click.option(
    "--bundle",
    "bundle_dir",
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    default=None,
    help="Check a bundle (export-attn --bundle) instead of MODEL: every sha256 in its manifest, then "
    "every golden vector set in onnxruntime (and --runtimes) within the manifest's tolerance.",
)
@click.option(
    "--runtimes",
    default="onnxruntime,reference",
    show_default=True,
    metavar="RUNTIME,...",
    help="Comma-separated: "
    + "; ".join(f"{name}: {rt.help}" for name, rt in RUNTIMES.items())
    + "; "
    + RELEASE_HELP
    + ".",
)
@click.option(
    "--providers",
    type=CommaChoice(PROVIDERS, metavar="PROVIDER,..."),
    default="cpu",
    show_default=True,
    help=f"[onnxruntime] Execution providers, comma-separated: {', '.join(PROVIDERS)}.",
)
@click.option(
    "--batches", default="1,2,5", show_default=True, metavar="N,...", help="[mha, attention] Batch sizes of the sweep."
)
@click.option(
    "--lengths",
    default="1,7,64,257",
    show_default=True,
    metavar="N,...",
    help="[mha, attention] Sequence lengths; each as q_len = kv_len, and paired with the next for cross-attention.",
)
@click.option(
    "--shapes",
    default=None,
    metavar="BxQxKV,...",
    help="[mha, attention] Explicit BxQxKV shapes instead of the grid, e.g. '3x11x5,1x7x7'.",
)
@click.option(
    "--masks",
    type=CommaChoice(MASK_PATTERNS, metavar="PATTERN,..."),
    default=None,
    help=f"[models with a mask input] Mask patterns, comma-separated: {', '.join(MASK_PATTERNS)}. [default: all]",
)
@click.option("--sizes", default="1,5,20,64", show_default=True, metavar="N,...", help="[mask] subsequent_mask sizes.")
@click.option(
    "--quick",
    is_flag=True,
    help="The gate: the sweep export-attn runs before it writes and auto runs on "
    "each candidate (three shapes, every mask, the variant's shapes that "
    "reach its every control-flow path); instead of the sweep options.",
)
@click.option(
    "--atol",
    type=Tolerance(),
    default=None,
    help="Absolute tolerance; given alone, rtol stays the profile's. [default: the profile of the model's "
    f"precision: {_profiles('atol')}; exact for integer outputs]",
)
@click.option(
    "--rtol",
    type=Tolerance(),
    default=None,
    help="Relative tolerance; given alone, atol stays the profile's. [default: the profile of the "
    f"model's precision: {_profiles('rtol')}]",
)
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the generated inputs.")
@click.option(
    "--tf32", is_flag=True, help="[cuda] Allow TF32 matmuls (onnxruntime's default), with the looser TF32 tolerances."
)
@click.option(
    "--skip-missing",
    is_flag=True,
    help="Report a missing runtime or provider as SKIPPED instead of failing; a run that checked nothing then exits 0.",
)
@click.option(
    "--weights",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    default=None,
    help="[mha] Compare against this checkpoint (.safetensors or state_dict .pt) instead of the weights in the model.",
)
@click.option("--weights-prefix", default="", help="[mha] with --weights: where the block sits in it.")
@click.option(
    "--json", "json_path", type=click.Path(path_type=Path), default=None, help="Write the full report as JSON here."
)
@click.option(
    "--plots",
    "plots_dir",
    type=click.Path(path_type=Path),
    default=None,
    help="[models with attn_probs] Write PNGs of the mask, the attention probabilities and their "
    "difference into this folder.",
)
@click.option(
    "--plot-case",
    "plot_case_name",
    default=None,
    help="[with --plots] The case to draw. [default: b2.q20.kv20.causal+padding]",
)
@click.option(
    "--plot-example",
    type=int,
    default=None,
    help="[with --plots] The example (batch index) to draw. [default: the last, the padded one]",
)
@click.option("--plot-head", type=int, default=0, show_default=True, help="[with --plots] The head to draw.")
@click.option("--quiet", is_flag=True, help="Print only failed and skipped lines and the summary.")
def main(model, **options):
    """Check MODEL (written by export-attn) against its PyTorch module, in float64, over shapes, masks,
    runtimes and execution providers. Exit 0 when every case passes, 1 when any fails or nothing was
    checked, 2 for a bad option (found before any case runs). Options marked [...] apply only there.

    \b
    Examples:
      check-attn mha.onnx
      check-attn mha.onnx --providers cpu,cuda --skip-missing --json report.json
      check-attn mha.onnx --weights original.safetensors --quick
      check-attn probs.onnx --plots plots/ --plot-case b2.q20.kv20.causal+padding --plot-head 3
    """
    ctx = click.get_current_context()
    if (model is None) == (options["bundle_dir"] is None):
        raise click.UsageError("give MODEL or --bundle DIR (one of them)")
    if options["bundle_dir"] is not None:
        return _check_bundle(ctx, options)
    loaded, config, plots = _plan(ctx, model, options)  # every option checked; nothing heavy imported yet
    from attn_onnx.files import write_atomic
    from attn_onnx.runtime_check.check import check_model, plot_case

    quiet = options["quiet"]
    stream = not sys.stdout.isatty()  # a log or a pipe gets each line as its case finishes

    def start(report):
        click.echo(
            f"model {report.model} (sha256 {report.sha256[:16]}), module {report.spec.module}; "
            f"reference weights: {report.reference_weights}"
        )
        if report.spec.tuning:
            click.echo(_tuning_line(report.spec.tuning))

    def show(result, done, total):
        if not (quiet and result.passed):
            click.echo(result.line())

    with _progress_bar(enabled=not stream) as progress:

        def on_result(result, done, total):
            if stream:
                show(result, done, total)
            elif progress:
                progress(done, total)

        report = check_model(
            loaded, config, on_start=start, on_result=on_result, command=getattr(ctx.command, "command_line", None)
        )
    for line in report.lines() if not stream else [s.line() for s in report.skipped] + report.coverage_lines():
        if not (quiet and line.startswith("PASSED")):
            click.echo(line)
    click.echo(report.summary())
    if options["json_path"]:
        write_atomic(options["json_path"], report.to_json().encode(), force=True)
        click.echo(f"wrote {options['json_path']}")
    if plots:
        for path in plot_case(loaded, config=config, **plots):
            click.echo(f"wrote {path}")
    return EXIT_OK if report.ok else EXIT_FAILURE


BUNDLE_OPTIONS = {"bundle_dir", "runtimes", "providers", "tf32", "skip_missing", "json_path", "quiet"}


def _check_bundle(ctx, options: dict) -> int:
    """check-attn --bundle DIR: hashes first (a changed byte is one error naming the file), then the vectors."""
    from attn_onnx.files import check_output_file

    refuse(ctx, set(ctx.params) - BUNDLE_OPTIONS, "with --bundle (the bundle fixes its cases and tolerance)")
    runtimes = comma_list(options["runtimes"]) if "runtimes" in given(ctx) else ()
    runtimes = ("onnxruntime", *[r for r in runtimes if r != "onnxruntime"])
    providers = options["providers"]
    if "cuda" not in providers:
        refuse(ctx, {"tf32"}, "without cuda in --providers")
    if options["json_path"] is not None:
        check_output_file(options["json_path"], force=True, what="--json")
    from attn_onnx.deploy.bundle import check_bundle
    from attn_onnx.files import write_atomic
    from attn_onnx.runtime_check.check import CheckConfig

    config = CheckConfig(
        runtimes=runtimes, providers=providers, tf32=options["tf32"], skip_missing=options["skip_missing"]
    ).validate()
    report = check_bundle(options["bundle_dir"], config)
    report.command = getattr(ctx.command, "command_line", None)
    click.echo(
        f"bundle {options['bundle_dir']} (model sha256 {report.sha256[:16]}, every file's sha256 as in its "
        f"manifest), module {report.spec.module}"
    )
    for line in report.lines():
        if not (options["quiet"] and line.startswith("PASSED")):
            click.echo(line)
    click.echo(report.summary())
    if options["json_path"]:
        write_atomic(options["json_path"], report.to_json().encode(), force=True)
        click.echo(f"wrote {options['json_path']}")
    return EXIT_OK if report.ok else EXIT_FAILURE


def _plan(ctx, model: Path, options: dict):
    """Every option, path and combination checked against the model's metadata, before any case runs.

    Imports only onnx and numpy (no torch, no onnxruntime): a mistake costs well under a second.
    """
    import importlib.util

    from attn_onnx.errors import UsageError
    from attn_onnx.files import check_output_file, check_output_folder
    from attn_onnx.runtime_check.cases import QUICK, Sweep, default_plot_case, parse_case
    from attn_onnx.runtime_check.check import check_runtimes
    from attn_onnx.runtime_check.compare import Tolerance
    from attn_onnx.runtime_check.model import load_model

    chosen = given(ctx)
    runtimes, providers = comma_list(options["runtimes"]), options["providers"]
    check_runtimes(runtimes, providers)  # the run guard, the one CheckConfig runs
    if "onnxruntime" not in runtimes:
        refuse(ctx, {"providers"}, "without onnxruntime in --runtimes")
    if "cuda" not in providers:
        refuse(ctx, {"tf32"}, "without cuda in --providers")
    if options["quick"]:
        refuse(ctx, chosen & set(SWEEP), "with --quick (it is a fixed sweep)")
    if options["shapes"] is not None:
        refuse(ctx, chosen & {"batches", "lengths"}, "with --shapes (they build the grid --shapes replaces)")
    if options["weights"] is None and "weights_prefix" in chosen:
        raise UsageError("--weights-prefix needs --weights")
    if options["plots_dir"] is None:
        refuse(ctx, chosen & {"plot_case_name", "plot_example", "plot_head"}, "without --plots DIR")
    if options["json_path"] is not None:
        check_output_file(options["json_path"], force=True, what="--json")
    if options["plots_dir"] is not None:
        check_output_folder(options["plots_dir"], "--plots")
        if importlib.util.find_spec("matplotlib") is None:
            raise UsageError("--plots needs matplotlib (pip install '.[plots]')")

    sweep = (
        QUICK
        if options["quick"]
        else Sweep(
            batches=comma_list(options["batches"], int),
            lengths=comma_list(options["lengths"], int),
            masks=options["masks"] or None,
            shapes=_shapes(options["shapes"]),
            sizes=comma_list(options["sizes"], int),
            # a sweep the user narrowed runs the shapes asked for alone; a path it leaves unrun is named, not failed
            cover=not chosen & {"batches", "lengths", "shapes"},
        ).validate()
    )
    tolerance = None  # the one the user left out comes from each runner's profile (the model's precision)
    if options["atol"] is not None or options["rtol"] is not None:
        tolerance = Tolerance(atol=options["atol"], rtol=options["rtol"])

    loaded = load_model(model)
    spec = loaded.spec
    refuse(
        ctx, {o for o in chosen & set(SWEEP) if SWEEP_DIM[o] not in spec.kind.case_dims}, f"to a {spec.module} model"
    )
    if not spec.kind.has_weights:
        refuse(ctx, chosen & {"weights", "weights_prefix"}, f"to a {spec.module} model (it has no weights)")
    if spec.mask != "input":
        refuse(ctx, chosen & {"masks"}, f"to a model without a mask input (its mask is {spec.mask})")
    plots = None
    if options["plots_dir"] is not None:
        if "attn_probs" not in spec.output_names:
            raise UsageError(
                "--plots needs a model with an attn_probs output (export-attn --attn-probs, or --module attention)"
            )
        case = parse_case(options["plot_case_name"] or default_plot_case(spec), spec)
        example = case.batch - 1 if options["plot_example"] is None else options["plot_example"]
        if not 0 <= example < case.batch:
            raise UsageError(f"--plot-example {example} is out of range: case {case.name} has batch {case.batch}")
        if not 0 <= options["plot_head"] < spec.heads:
            raise UsageError(f"--plot-head {options['plot_head']} is out of range: the model has {spec.heads} heads")
        plots = {
            "out_dir": options["plots_dir"],
            "case_name": case.name,
            "example": example,
            "head": options["plot_head"],
            "provider": providers[0] if providers else "cpu",
        }

    from attn_onnx.runtime_check.check import CheckConfig

    config = CheckConfig(
        runtimes=runtimes,
        providers=providers,
        sweep=sweep,
        tolerance=tolerance,
        seed=options["seed"],
        weights=options["weights"],
        weights_prefix=options["weights_prefix"],
        tf32=options["tf32"],
        skip_missing=options["skip_missing"],
    ).validate()
    return loaded, config, plots


def _tuning_line(record: dict) -> str:
    """What export-attn --attention-impl auto decided from, in one line (the metadata's attn_onnx.tuning)."""
    figures = ", ".join(f"{v} {ms:.3g}" for v, ms in sorted(record.get("geomean_ms", {}).items(), key=lambda i: i[1]))
    dropped = "; dropped: " + ", ".join(sorted(record["dropped"])) if record.get("dropped") else ""
    return (
        f"variant {record.get('chosen')} chosen by --attention-impl auto on {record.get('cpu')}, "
        f"{record.get('threads')} thread(s), at {','.join(record.get('shapes', []))} "
        f"(mask {record.get('mask')}): geomean ms {figures or 'not timed (the only candidate)'}{dropped}; "
        f"runs in {record.get('runs_in')}"
    )


def _shapes(text: str | None):
    from attn_onnx.errors import UsageError

    if not text:
        return None
    try:
        shapes = tuple(tuple(int(d) for d in s.lower().split("x")) for s in comma_list(text))
    except ValueError:
        shapes = ((),)
    if any(len(s) != 3 for s in shapes):
        raise UsageError(f"--shapes {text!r}: expected BxQxKV items such as 3x11x5")
    return shapes


class _progress_bar:
    """A progress bar on stderr while a sweep runs, only when stderr is a terminal."""

    def __init__(self, enabled: bool):
        self.enabled = enabled

    def __enter__(self):
        self.bar = None
        return self.update if self.enabled and sys.stderr.isatty() else None

    def update(self, done: int, total: int) -> None:
        if self.bar is None:
            self.bar = click.progressbar(length=total, label="checking", file=sys.stderr)
            self.bar.__enter__()
        self.bar.update(1)

    def __exit__(self, *exc):
        if self.bar is not None:
            self.bar.__exit__(*exc)
