"""`export-attn`: export the Annotated Transformer's attention modules to one self-contained ONNX file."""

from __future__ import annotations

from pathlib import Path

import click

from attn_onnx import __version__
from attn_onnx.cli.common import OneLineErrorCommand, batch_lengths, given, refuse
from attn_onnx.cli.forms import FORM_OPTIONS, written_line
from attn_onnx.exporter.kinds import KINDS, MODULES
from attn_onnx.exporter.kinds.base import KIND_SETTINGS
from attn_onnx.exporter.kinds.mha_static import MIN_MAX_LEN
from attn_onnx.exporter.spec import OPSETS
from attn_onnx.exporter.variants import DEFAULT as DEFAULT_VARIANT
from attn_onnx.exporter.variants import VARIANTS
from attn_onnx.vocab import CAUSAL_ALIGNS, DTYPES, MASK_DTYPES, MASK_MODES, MASK_PATTERNS, QUANTIZE_MODES

# export-attn options that name a setting some kinds take and others do not (exporter/kinds/: KIND_SETTINGS);
# each is its setting's own name but for these
SETTING_OF = {"weights_prefix": "weights", "seed": "weights"}


def _setting(option: str) -> str | None:
    setting = SETTING_OF.get(option, option)
    return setting if setting in KIND_SETTINGS else None


def _param(kind) -> str:
    """The option of a kind that is a form of another (--kv-cache: kv_cache)."""
    return kind.flag.lstrip("-").replace("-", "_")


def _applies(option: str) -> str:
    """`[mha, attention]`: the module kinds an option applies to, for its help."""
    selects = [k for k in KINDS.values() if k.extends and _param(k) == option]  # --kv-cache: mha, --kv-cache
    return (
        "["
        + ", ".join(
            name if name in MODULES else kind.flag  # forms of mha go by their flags
            for name, kind in KINDS.items()
            if _setting(option) in kind.settings or any(name in (s.extends, s.name) for s in selects)
        )
        + "]"
    )


TARGETS = [form.flag for form in FORM_OPTIONS.values()]  # --out, --bundle, --triton-repo
NAMED = " or ".join(form.flag for form in FORM_OPTIONS.values() if form.named)  # the forms --name applies to


@click.command("export-attn", cls=OneLineErrorCommand)
@click.version_option(__version__, prog_name="export-attn")
@click.option(
    "--module",
    type=click.Choice(MODULES),
    default="mha",
    show_default=True,
    help="What to export: " + "; ".join(f"{name}: {KINDS[name].help}" for name in MODULES) + ". Forms of mha "
    "have flags of their own: "
    + ", ".join(f"{kind.flag} ({kind.name} in the metadata)" for name, kind in KINDS.items() if name not in MODULES)
    + ".",
)
@click.option("--heads", type=int, default=8, show_default=True, help=f"{_applies('heads')} Attention heads.")
@click.option(
    "--embedding-dim",
    "--d-model",
    "embedding_dim",
    type=int,
    default=None,
    help=f"{_applies('embedding_dim')} Model width; d_k = embedding-dim / heads. "
    "[default: 512, or the width of --weights]",
)
@click.option(
    "--mask",
    type=click.Choice(MASK_MODES),
    default="input",
    show_default=True,
    help=f"{_applies('mask')} input: a `mask` input (nonzero = attend); causal: the graph builds "
    "subsequent_mask from the lengths; none: no mask.",
)
@click.option(
    "--causal-align",
    type=click.Choice(CAUSAL_ALIGNS),
    default="top-left",
    show_default=True,
    help=f"{_applies('causal_align')} with --mask causal: top-left, query i attends "
    "keys 0..i (the Annotated Transformer's subsequent_mask); bottom-right, query i attends keys "
    "0..kv_len-q_len+i (new tokens after a prefix, as in decoding). They agree when q_len == kv_len.",
)
@click.option(
    "--mask-dtype",
    type=click.Choice(list(MASK_DTYPES)),
    default="bool",
    show_default=True,
    help=f"{_applies('mask_dtype')} with --mask input: element type of the `mask` input.",
)
@click.option(
    "--kv-cache",
    is_flag=True,
    help=f"{_applies('kv_cache')} Export one decoding step with a KV cache: "
    "inputs past_key/past_value (batch, heads, past_len, d_k), outputs present_key/present_value; the "
    "causal mask built in, bottom-right aligned. check-attn also decodes whole sequences through it.",
)
@click.option(
    "--max-len",
    type=click.IntRange(min=MIN_MAX_LEN),
    default=None,
    metavar="N",
    help=f"{_applies('max_len')} With --kv-cache: a static cache of N tokens, written in place. Inputs "
    "past_key/past_value (batch, heads, N, d_k), the cache's buffers, and past_len (batch,) int64, each "
    "sequence's length (they may differ); outputs the buffers with the new tokens written: bind each present to "
    "its past (IO binding) and the step copies nothing. Implies --opset 24.",
)
@click.option(
    "--self-attention",
    is_flag=True,
    help=f"{_applies('self_attention')} One input x as query, key "
    "and value (mask: batch, len or 1, len); the hand-built variants project all three with one packed "
    "MatMul.",
)
@click.option(
    "--dtype",
    type=click.Choice(list(DTYPES)),
    default="float32",
    show_default=True,
    help=f"{_applies('dtype')} Element type of the float inputs, outputs and weights. float16 fills "
    "masked scores with -65504 (its -1e9 would be -inf, a NaN row); onnxruntime's CPU runs it through "
    "inserted casts. bfloat16 has no MatMul kernel in onnxruntime's CPU: it is checked with "
    "onnx.reference here, and runs in onnxruntime on CUDA.",
)
@click.option(
    "--attn-probs",
    is_flag=True,
    help=f"{_applies('attn_probs')} Also output the attention probabilities `attn_probs` (attention always does).",
)
@click.option(
    "--attention-impl",
    "variant",
    type=click.Choice([*VARIANTS, "auto"]),
    default=DEFAULT_VARIANT,
    show_default=True,
    help="How attention is built: "
    + "; ".join(f"{v.name}: {v.help} ({v.runs_in})" for v in VARIANTS.values())
    + ". Each keeps the Annotated "
    "Transformer's semantics, a fully-masked row attending uniformly included. auto: export every "
    "variant that accepts the spec, check each, time those that pass at --tune-shapes on this machine, "
    "and write the fastest (the table it decided from is printed and kept in the metadata).",
)
@click.option(
    "--tune-shapes",
    default="1x16,1x128,1x512",
    show_default=True,
    metavar="BATCHxLEN,...",
    help="[with --attention-impl auto] The shapes to time the candidates at (self-attention lengths); "
    "the fastest by geometric mean over them wins.",
)
@click.option(
    "--tune-rounds",
    type=click.IntRange(min=1),
    default=7,
    show_default=True,
    help="[with --attention-impl auto] Interleaved timing rounds (bench-attn's); each figure is a median.",
)
@click.option(
    "--tune-mask",
    type=click.Choice(list(MASK_PATTERNS)),
    default="causal+padding",
    show_default=True,
    help="[with --attention-impl auto and --mask input] The mask fed while timing: the kind your "
    "service feeds (tiled skips what a causal mask hides).",
)
@click.option(
    "--standard-ops",
    is_flag=True,
    help="[with --attention-impl auto] Only variants of standard ONNX "
    "operators (no com.microsoft kernels): for OpenVINO, the browser, onnx.reference.",
)
@click.option(
    "--optimize",
    is_flag=True,
    help="Write the graph as onnxruntime optimizes it offline, at its "
    "portable 'extended' level (fusions into com.microsoft ops; no CPU-specific layouts). Runs in "
    "onnxruntime; the metadata is kept.",
)
@click.option(
    "--quantize",
    type=click.Choice(QUANTIZE_MODES),
    default=None,
    help=f"{_applies('quantize')} Quantize the "
    "projections' weights to int8 (onnxruntime's dynamic quantization: int8 weights per output channel, "
    "uint8 activations per tensor, computed on the fly). check-attn holds it to the int8 profile; the "
    "export prints what it cost against the float weights.",
)
@click.option(
    "--opset",
    type=click.IntRange(min(OPSETS), max(OPSETS)),
    default=None,
    help="ONNX opset of the default domain. [default: 18; 23 for onnx-attention]",
)
@click.option(
    "--weights",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    default=None,
    help=f"{_applies('weights')} A .safetensors file, or a state_dict .pt/.pth (read with weights_only=True).",
)
@click.option(
    "--weights-prefix",
    default="",
    help=f"{_applies('weights_prefix')} with --weights: take the "
    "block out of a larger checkpoint, e.g. "
    "'encoder.layers.0.self_attn'.",
)
@click.option(
    "--seed",
    type=int,
    default=0,
    show_default=True,
    help=f"{_applies('seed')} without --weights: seed of the random weights.",
)
@click.option(
    "--name",
    default=None,
    help=f"[with {NAMED}] The model's name in the manifest, the service's URLs "
    "and the Triton repository. [default: the module]",
)
@click.option(
    "--external-data",
    is_flag=True,
    help="Write the weights beside the model as ONNX external data "
    "(model.onnx.data, a relative location; in a bundle or Triton model too). Automatic past 2 GiB, "
    "protobuf's limit for one file.",
)
@click.option(
    "--force", is_flag=True, help=f"Overwrite what {', '.join(TARGETS[:-1])} or {TARGETS[-1]} would write if it exists."
)
@click.option(
    "--target-onnxruntime",
    "target",
    default=None,
    metavar="X.Y.Z",
    help="The onnxruntime release the model must run right on (a service's pinned one): a variant, "
    "kind, dtype and mask that docs/compatibility.md measured wrong or unloadable there is refused "
    "before any work (auto drops it); the model is written at the IR version the release reads "
    "(1.16 and 1.17: 9), and where that release is installed (scripts/setup/"
    "onnxruntime-releases.sh X.Y.Z) the parity check runs in it too.",
)
@click.option("--no-check", is_flag=True, help="Skip the parity check in onnxruntime before writing.")
def main(**options):
    """Export attention to one self-contained ONNX file with dynamic batch and sequence axes. Before it is
    written, it is checked in onnxruntime against PyTorch (float64) on shapes unlike the export's; a model
    that fails is not written. Options marked [mha, ...] apply only to those modules.

    \b
    Examples:
      export-attn --heads 8 --out mha.onnx
      export-attn --weights block.safetensors --heads 8 --mask causal --out causal.onnx
      export-attn --module mask --out subsequent_mask.onnx
      export-attn --attention-impl ort-mha --mask causal --out fast.onnx
    """
    from attn_onnx.errors import Interrupted, ParityError

    ctx = click.get_current_context()
    kind = KINDS[options["module"]]
    chosen = [form for form in KINDS.values() if form.extends and options[_param(form)]]  # --kv-cache, ...
    for form in chosen:  # a form of a form (--max-len of --kv-cache) needs its own and refines it
        parent = KINDS[form.extends]
        if parent.extends and parent not in chosen:
            raise click.UsageError(f"{form.flag} applies to {parent.flag}: add {parent.flag}")
    chosen = [form for form in chosen if not any(c.extends == form.name for c in chosen)]
    if len(chosen) > 1:
        raise click.UsageError(f"{chosen[0].flag} and {chosen[1].flag} exclude each other")
    if chosen:
        root = chosen[0]
        while KINDS[root.extends].extends:
            root = KINDS[root.extends]
        if options["module"] != root.extends:
            raise click.UsageError(f"{root.flag} applies to --module {root.extends}, not {options['module']}")
        kind = chosen[0]
        options.update(kind.implied(options, given(ctx)))
    refuse(ctx, {o for o in given(ctx) if _setting(o) and _setting(o) not in kind.settings}, f"to --module {kind.name}")
    if options["mask"] != "input":
        refuse(ctx, {"mask_dtype"}, f"to --mask {options['mask']} (the model has no mask input)")
    if options["mask"] != "causal":
        refuse(ctx, {"causal_align"}, f"to --mask {options['mask']} (it aligns the built-in causal mask)")
    auto = options["variant"] == "auto"
    if not auto:
        refuse(ctx, {"tune_shapes", "tune_rounds", "tune_mask", "standard_ops"}, "without --attention-impl auto")
    elif options["mask"] != "input":
        refuse(ctx, {"tune_mask"}, f"to --mask {options['mask']} (the model builds its own mask)")
    if auto and options["optimize"] and options["standard_ops"]:
        raise click.UsageError(
            "--standard-ops and --optimize exclude each other: the optimized graph holds com.microsoft operators"
        )
    if options["target"] is not None:
        from attn_onnx.deploy.compatibility import check_target

        check_target(options["target"])
    if options["weights"] is None and "weights_prefix" in given(ctx):
        raise click.UsageError("--weights-prefix needs --weights")
    if options["weights"] is not None:
        refuse(ctx, {"seed"}, "with --weights (it seeds random weights)")
    values = {**options, "name": options["name"] or kind.name}
    asked = [(form, form.asked(values)) for form in FORM_OPTIONS.values()]
    for form, settings in asked:
        if settings is None:
            refuse(ctx, set(form.own), f"without {form.flag}")
    forms = [settings for _, settings in asked if settings is not None]
    if not forms:
        asks = [f"{form.flag} {form.options[0].metavar}" for form in FORM_OPTIONS.values()]
        raise click.UsageError(f"say where to write: {', '.join(asks[:-1])} or {asks[-1]}")
    if not any(form.named for form, settings in asked if settings is not None):
        refuse(ctx, {"name"}, f"without {NAMED}")
    tuning = None
    if auto:
        from attn_onnx.deploy.forms.pipeline import Tuning

        tuning = Tuning(
            shapes=tuple(batch_lengths(options["tune_shapes"], "--tune-shapes")),
            rounds=options["tune_rounds"],
            mask_pattern=options["tune_mask"],
            standard_ops=options["standard_ops"],
            opset=options["opset"],
        )
    variant = VARIANTS[DEFAULT_VARIANT if auto else options["variant"]]  # auto: every option checked as for it
    spec, state, source = _spec(kind, options, variant)
    from attn_onnx.deploy.forms.pipeline import export_model, targets_of

    targets = targets_of(forms, spec)

    try:
        exported = export_model(
            spec,
            *forms,
            state=state,
            seed=options["seed"],
            weights_source=source,
            check=not options["no_check"],
            force=options["force"],
            external_data=options["external_data"],
            tuning=tuning,
            target=options["target"],
            on_line=lambda text: click.echo(text, err=True),
        )
    except ParityError as exc:
        _echo_check(exc.report, None, spec)
        raise
    except KeyboardInterrupt:
        from attn_onnx.cli.common import signal_name

        raise Interrupted(f"{signal_name()}; nothing was written to {targets}") from None
    if exported.choice is not None:
        click.echo(exported.choice.table())
    if exported.report is not None:
        _echo_check(exported.report, exported.accuracy, exported.spec)
    if exported.target_report is not None:
        _echo_check(exported.target_report, None, exported.spec)
    elif options["target"] is not None and not options["no_check"]:
        click.echo(
            f"parity: onnxruntime {options['target']} is not installed here, so the model was not run in it "
            f"(scripts/setup/onnxruntime-releases.sh {options['target']})"
        )
    for written in exported.written.values():
        click.echo(written_line(written, exported))


def _spec(kind, options: dict, variant):
    """The settings of the export (validated by the pipeline, once), the state_dict of --weights, and where
    the weights come from (for the metadata)."""
    from attn_onnx.exporter.spec import ExportSpec

    state, source, weights, prefix = None, "", options["weights"], options["weights_prefix"]
    embedding_dim = options["embedding_dim"]
    if weights is not None:  # without, the pipeline draws random weights and says so ("random (seed=N)")
        from attn_onnx.models.weights import embedding_dim_of, load_state_dict, weights_label

        state = load_state_dict(weights, prefix)
        embedding_dim = embedding_dim or embedding_dim_of(state)
        source = f"file {weights_label(weights, prefix)}"
    spec = ExportSpec(
        module=kind.name,
        heads=options["heads"],
        embedding_dim=embedding_dim or 512,
        mask=options["mask"],
        mask_dtype=options["mask_dtype"],
        attn_probs=options["attn_probs"],
        dtype=options["dtype"],
        quantize=options["quantize"] or "",
        opset=options["opset"] or max(18, variant.min_opset),
        variant=variant.name,
        optimize="extended" if options["optimize"] else "",
        causal_align=options["causal_align"],
        max_len=options["max_len"] or 0,
    )
    return spec, state, source


def _echo_check(report, accuracy, spec) -> None:
    """The parity check's lines: what was skipped, the worst case against its tolerance, each failed case
    (stderr); and, for reduced precision, the accuracy against the module as given."""
    for skipped in report.skipped:
        click.echo(f"parity: {skipped.runner} SKIPPED: {skipped.reason}")
    runner = next(iter(report.tolerances))
    _, tol = report.tolerances[runner]
    worst = report.worst
    click.echo(
        f"parity: {runner} vs PyTorch float64 on {len(report.results)} cases ({', '.join(report.shapes)}): "
        f"max_abs={worst.max_abs:.3g} (atol={tol.atol:g}, rtol={tol.rtol:g}): {report.status}"
    )
    for result in report.failed:
        click.echo(f"  {result.line()}", err=True)
    if accuracy is not None:
        click.echo(
            f"accuracy: {accuracy.runner} at {spec.precision} vs the float32 module (in float64) on the same "
            f"cases: max_abs={accuracy.max_abs:.3g} ({accuracy.case}); the weights rounded to "
            f"{spec.precision} included (a figure, not a pass/fail)"
        )


# every output form's options (cli/forms.py), where --out, --bundle and --triton-repo stood
_at = next(i for i, p in enumerate(main.params) if p.name == "name")
main.params[_at:_at] = [option for form in FORM_OPTIONS.values() for option in form.options]
