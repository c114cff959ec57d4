"""`export-attn`: export the Annotated Transformer's attention modules to one self-contained ONNX file."""

from __future__ import annotations

from pathlib import Path

import click

from attn_onnx import __version__
from attn_onnx.cli.common import OneLineErrorCommand, batch_lengths, given, refuse
from attn_onnx.exporter.kinds import KINDS, MODULES
from attn_onnx.exporter.kinds.base import COMMON_EXPORT_OPTIONS
from attn_onnx.exporter.spec import OPSETS, ExportSpec
from attn_onnx.exporter.variants import DEFAULT as DEFAULT_VARIANT
from attn_onnx.exporter.variants import VARIANTS
from attn_onnx.vocab import CAUSAL_ALIGNS, DTYPES, MASK_DTYPES, MASK_KINDS, MASK_MODES, QUANTIZE_MODES, TRITON_BACKENDS


def _applies(option: str) -> str:
    """`[mha, attention]`: the module kinds an option applies to, for its help."""
    return "[" + ", ".join(name if name in MODULES else kind.flag  # forms of mha go by their flags
                           for name, kind in KINDS.items() if option in kind.export_options) + "]"


@click.command("export-attn", cls=OneLineErrorCommand)
@click.version_option(__version__, prog_name="export-attn")
@click.option("--module", "module_kind", type=click.Choice(MODULES), default="mha", show_default=True,
              help="What to export: " + "; ".join(f"{name}: {KINDS[name].help}" for name in MODULES) + ". Forms of mha "
                   "have flags of their own: " + ", ".join(f"{kind.flag} ({kind.name} in the metadata)"
                                                           for name, kind in KINDS.items() if name not in MODULES)
                   + ".")
@click.option("--heads", type=int, default=8, show_default=True, help=f"{_applies('heads')} Attention heads.")
@click.option("--embedding-dim", "--d-model", "embedding_dim", type=int, default=None,
              help=f"{_applies('embedding_dim')} Model width; d_k = embedding-dim / heads. "
                   "[default: 512, or the width of --weights]")
@click.option("--mask", "mask_mode", type=click.Choice(MASK_MODES), default="input", show_default=True,
              help=f"{_applies('mask_mode')} input: a `mask` input (nonzero = attend); causal: the graph builds "
                   "subsequent_mask from the lengths; none: no mask.")
@click.option("--causal-align", type=click.Choice(CAUSAL_ALIGNS), default="top-left",
              show_default=True, help=f"{_applies('causal_align')} with --mask causal: top-left, query i attends "
              "keys 0..i (the Annotated Transformer's subsequent_mask); bottom-right, query i attends keys "
              "0..kv_len-q_len+i (new tokens after a prefix, as in decoding). They agree when q_len == kv_len.")
@click.option("--mask-dtype", type=click.Choice(list(MASK_DTYPES)), default="bool", show_default=True,
              help=f"{_applies('mask_dtype')} with --mask input: element type of the `mask` input.")
@click.option("--kv-cache", is_flag=True, help=f"{_applies('kv_cache')} Export one decoding step with a KV cache: "
              "inputs past_key/past_value (batch, heads, past_len, d_k), outputs present_key/present_value; the "
              "causal mask built in, bottom-right aligned. check-attn also decodes whole sequences through it.")
@click.option("--self-attention", is_flag=True, help=f"{_applies('self_attention')} One input x as query, key "
              "and value (mask: batch, len or 1, len); the hand-built variants project all three with one packed "
              "MatMul.")
@click.option("--dtype", type=click.Choice(list(DTYPES)), default="float32", show_default=True,
              help=f"{_applies('dtype')} Element type of the float inputs, outputs and weights. float16 fills "
              "masked scores with -65504 (its -1e9 would be -inf, a NaN row); onnxruntime's CPU runs it through "
              "inserted casts. bfloat16 has no MatMul kernel in onnxruntime's CPU: it is checked with "
              "onnx.reference here, and runs in onnxruntime on CUDA.")
@click.option("--attn-probs", is_flag=True, help=f"{_applies('attn_probs')} Also output the attention "
                                                 "probabilities `attn_probs` (attention always does).")
@click.option("--attention-impl", "variant", type=click.Choice([*VARIANTS, "auto"]), default=DEFAULT_VARIANT,
              show_default=True, help="How attention is built: " + "; ".join(
                  f"{v.name}: {v.help} ({v.runtimes})" for v in VARIANTS.values()) + ". Each keeps the Annotated "
              "Transformer's semantics, a fully-masked row attending uniformly included. auto: export every "
              "variant that accepts the spec, check each, time those that pass at --tune-shapes on this machine, "
              "and write the fastest (the table it decided from is printed and kept in the metadata).")
@click.option("--tune-shapes", default="1x16,1x128,1x512", show_default=True, metavar="BATCHxLEN,...",
              help="[with --attention-impl auto] The shapes to time the candidates at (self-attention lengths); "
                   "the fastest by geometric mean over them wins.")
@click.option("--tune-rounds", type=click.IntRange(min=1), default=7, show_default=True,
              help="[with --attention-impl auto] Interleaved timing rounds (bench-attn's); each figure is a median.")
@click.option("--tune-mask", type=click.Choice(list(MASK_KINDS)), default="causal+padding", show_default=True,
              help="[with --attention-impl auto and --mask input] The mask fed while timing: the kind your "
                   "service feeds (tiled skips what a causal mask hides).")
@click.option("--standard-ops", is_flag=True, help="[with --attention-impl auto] Only variants of standard ONNX "
              "operators (no com.microsoft kernels): for OpenVINO, the browser, onnx.reference.")
@click.option("--optimize", is_flag=True, help="Write the graph as onnxruntime optimizes it offline, at its "
              "portable 'extended' level (fusions into com.microsoft ops; no CPU-specific layouts). Runs in "
              "onnxruntime; the metadata is kept.")
@click.option("--quantize", type=click.Choice(QUANTIZE_MODES), default=None,
              help=f"{_applies('quantize')} Quantize the "
              "projections' weights to int8 (onnxruntime's dynamic quantization: int8 weights per output channel, "
              "uint8 activations per tensor, computed on the fly). check-attn holds it to the int8 profile; the "
              "export prints what it cost against the float weights.")
@click.option("--opset", type=click.IntRange(min(OPSETS), max(OPSETS)), default=None,
              help="ONNX opset of the default domain. [default: 18; 23 for onnx-attention]")
@click.option("--weights", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              help=f"{_applies('weights')} A .safetensors file, or a state_dict .pt/.pth (read with "
                   "weights_only=True).")
@click.option("--weights-prefix", default="", help=f"{_applies('weights_prefix')} with --weights: take the "
                                                   "block out of a larger checkpoint, e.g. "
                                                   "'encoder.layers.0.self_attn'.")
@click.option("--seed", type=int, default=0, show_default=True,
              help=f"{_applies('seed')} without --weights: seed of the random weights.")
@click.option("--out", type=click.Path(path_type=Path), default=None, help="The .onnx file to write.")
@click.option("--bundle", "bundle_dir", type=click.Path(path_type=Path), default=None,
              help="Write a verifiable bundle folder: model.onnx, manifest.json and golden vectors "
                   "(test_data_set_N/) from the float64 PyTorch module.")
@click.option("--triton-repo", type=click.Path(path_type=Path), default=None,
              help="Write the model into this Triton model repository: REPO/NAME/config.pbtxt and "
                   "REPO/NAME/1/model.onnx (onnxruntime backend).")
@click.option("--name", default=None, help="[with --bundle or --triton-repo] The model's name in the manifest, "
                                           "the service's URLs and the Triton repository. [default: the module]")
@click.option("--triton-max-batch", type=click.IntRange(min=0), default=8, show_default=True,
              help="[with --triton-repo] max_batch_size for Triton's dynamic batching (0: off).")
@click.option("--triton-gpu", is_flag=True, help="[with --triton-repo] A GPU instance group instead of CPU.")
@click.option("--triton-backend", type=click.Choice(TRITON_BACKENDS), default="onnxruntime",
              show_default=True, help="[with --triton-repo] onnxruntime: Triton's onnxruntime backend (NVIDIA's "
              "containers); python: its Python backend, with 1/model.py running the model in onnxruntime and "
              "batching the requests (the tested path here; docs/serving-triton.md).")
@click.option("--triton-max-queue-delay-us", type=click.IntRange(min=0), default=0, show_default=True,
              help="[with --triton-repo] How long Triton's dynamic batcher may hold a request for others to join "
                   "its batch, in microseconds (0, Triton's default: only those already queued).")
@click.option("--external-data", is_flag=True, help="Write the weights beside the model as ONNX external data "
              "(model.onnx.data, a relative location; in a bundle or Triton model too). Automatic past 2 GiB, "
              "protobuf's limit for one file.")
@click.option("--force", is_flag=True, help="Overwrite --out, --bundle or the --triton-repo model if they exist.")
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
    from attn_onnx.errors import Interrupted
    from attn_onnx.files import check_output_dir, check_output_file

    ctx = click.get_current_context()
    kind = KINDS[options["module_kind"]]
    forms = [form for form in KINDS.values() if form.option and options[form.option]]  # --kv-cache, ...
    if len(forms) > 1:
        raise click.UsageError(f"{forms[0].flag} and {forms[1].flag} exclude each other")
    if forms:
        if options["module_kind"] != forms[0].form_of:
            raise click.UsageError(f"{forms[0].flag} applies to --module {forms[0].form_of}, not "
                                   f"{options['module_kind']}")
        kind = forms[0]
        kind.complete_options(options, given(ctx))
    refuse(ctx, given(ctx) - COMMON_EXPORT_OPTIONS - kind.export_options, f"to --module {kind.name}")
    if options["mask_mode"] != "input":
        refuse(ctx, {"mask_dtype"}, f"to --mask {options['mask_mode']} (the model has no mask input)")
    if options["mask_mode"] != "causal":
        refuse(ctx, {"causal_align"}, f"to --mask {options['mask_mode']} (it aligns the built-in causal mask)")
    auto = options["variant"] == "auto"
    if not auto:
        refuse(ctx, {"tune_shapes", "tune_rounds", "tune_mask", "standard_ops"}, "without --attention-impl auto")
    elif options["mask_mode"] != "input":
        refuse(ctx, {"tune_mask"}, f"to --mask {options['mask_mode']} (the model builds its own mask)")
    if auto and options["optimize"] and options["standard_ops"]:
        raise click.UsageError("--standard-ops and --optimize exclude each other: the optimized graph holds "
                               "com.microsoft operators")
    pinned_opset = options["opset"]  # auto: each candidate at max(18, its minimum) unless pinned
    variant = VARIANTS[DEFAULT_VARIANT if auto else options["variant"]]  # auto: every option checked as for it
    options["opset"] = options["opset"] or max(18, variant.min_opset)
    tune_shapes = batch_lengths(options["tune_shapes"], "--tune-shapes") if auto else None
    ExportSpec(module=kind.name, attn_probs=options["attn_probs"], opset=options["opset"], variant=variant.name,
               dtype=options["dtype"], mask=options["mask_mode"], causal_align=options["causal_align"]).validate()
    if options["weights"] is None and "weights_prefix" in given(ctx):
        raise click.UsageError("--weights-prefix needs --weights")
    if options["weights"] is not None:
        refuse(ctx, {"seed"}, "with --weights (it seeds random weights)")
    out, bundle, repo, force = options["out"], options["bundle_dir"], options["triton_repo"], options["force"]
    if out is None and bundle is None and repo is None:
        raise click.UsageError("say where to write: --out FILE, --bundle DIR or --triton-repo DIR")
    if bundle is None and repo is None:
        refuse(ctx, {"name"}, "without --bundle or --triton-repo")
    if repo is None:
        refuse(ctx, {"triton_max_batch", "triton_gpu", "triton_backend", "triton_max_queue_delay_us"},
               "without --triton-repo")
    name = options["name"] or kind.name
    from attn_onnx.deploy.bundle import check_bundle_dtype
    from attn_onnx.deploy.triton import check_backend, check_name

    if bundle is not None:
        check_bundle_dtype(options["dtype"])

    check_name(name)
    check_backend(options["triton_backend"], options["dtype"])
    if out is not None:
        check_output_file(out, force)
    if bundle is not None:
        check_output_dir(bundle, force, "--bundle")
    if repo is not None:  # the repository may hold other models: only REPO/NAME is ours
        if repo.exists() and not repo.is_dir():
            raise click.UsageError(f"--triton-repo {str(repo)!r} is a file; give a folder")
        check_output_dir(repo / name if repo.exists() else repo, force, "--triton-repo")
    targets = " or ".join(str(p) for p in (out, bundle, repo and repo / name) if p is not None)
    try:
        _export(kind, options, name, targets, tune_shapes, pinned_opset)
    except KeyboardInterrupt:
        from attn_onnx.cli.common import signal_name

        raise Interrupted(f"{signal_name()}; nothing was written to {targets}") from None


def _export(kind, options, name: str, targets: str, tune_shapes=None, pinned_opset=None) -> None:
    from attn_onnx.exporter.export import check_onnx, export_onnx, in_dtype
    from attn_onnx.exporter.spec import ExportSpec
    from attn_onnx.exporter.weights import embedding_dim_of, load_state_dict, weights_label
    from attn_onnx.model_files import needs_external, staged_model
    from attn_onnx.runtime_check.reference import reference_module

    weights, prefix = options["weights"], options["weights_prefix"]
    state = load_state_dict(weights, prefix) if weights is not None else None
    embedding_dim = options["embedding_dim"] or (state and embedding_dim_of(state)) or 512
    source = f"file {weights_label(weights, prefix)}" if weights else f"random (seed={options['seed']})"
    spec = ExportSpec(module=kind.name, heads=options["heads"], embedding_dim=embedding_dim,
                      mask=options["mask_mode"], mask_dtype=options["mask_dtype"], attn_probs=options["attn_probs"],
                      dtype=options["dtype"], quantize=options["quantize"] or "",
                      opset=options["opset"], variant=DEFAULT_VARIANT if tune_shapes else options["variant"],
                      optimize="extended" if options["optimize"] else "", causal_align=options["causal_align"],
                      weights_source=source if kind.has_weights else "").validate()
    module = kind.build_module(spec, state, options["seed"]) if kind.has_weights else None
    stored = in_dtype(module, spec.dtype)  # the weights as the model holds them: rounded to its dtype
    if tune_shapes is not None:  # --attention-impl auto
        from attn_onnx.bench.auto import tune

        choice = tune(spec, stored, tune_shapes, rounds=options["tune_rounds"], mask=options["tune_mask"],
                      standard_ops=options["standard_ops"], opset=pinned_opset,
                      on_line=lambda text: click.echo(text, err=True))
        click.echo(choice.table())
        proto, spec = choice.proto, choice.spec
    else:
        proto, spec = export_onnx(spec, stored)
    if spec.quantize:  # int8: the dequantized weights, read back through the weight map
        stored, _ = reference_module(proto, spec)
    force, out = options["force"], options["out"]
    external = options["external_data"] or needs_external(proto)
    # Saved under a temp name beside the first target and checked there (past 2 GiB a model can only be
    # run from a file); --out is then moved into place, the other forms written from the same model.
    first = out or options["bundle_dir"] or options["triton_repo"]
    with staged_model(proto, first.with_name(out.name if out else "model.onnx"), external) as (staged, commit):
        if external:
            check_onnx(staged)  # past 2 GiB, onnx.checker could not see it in memory
        if not options["no_check"]:
            _check(staged if external else proto, module, stored, spec, targets)
        if out is not None:
            size = commit(force)
            _echo_summary(out, proto, spec, size, external)
    if options["bundle_dir"] is not None:
        from attn_onnx.deploy.bundle import bundle_cases, write_bundle

        path = write_bundle(options["bundle_dir"], proto, spec, stored, name=name, force=force, external=external)
        data = ", model.onnx.data" if external else ""
        click.echo(f"wrote bundle {path}/ ({name!r}: model.onnx{data}, manifest.json, "
                   f"{len(bundle_cases(spec))} golden vector sets)")
    if options["triton_repo"] is not None:
        from attn_onnx.deploy.triton import write_repository

        path = write_repository(options["triton_repo"], proto, spec, name=name, force=force,
                                max_batch_size=options["triton_max_batch"], gpu=options["triton_gpu"],
                                external=external, backend=options["triton_backend"],
                                max_queue_delay_us=options["triton_max_queue_delay_us"])
        data = ", 1/model.onnx.data" if external else ""
        data += ", 1/model.py" if options["triton_backend"] == "python" else ""
        click.echo(f"wrote Triton model {path}/ ({options['triton_backend']} backend: config.pbtxt, "
                   f"1/model.onnx{data})")


def _check(proto, module, stored, spec, targets: str) -> None:
    """The quick parity check, on the model in memory: a model that fails is never written.

    The golden holds the weights as the model does (`stored`: rounded to its dtype, or dequantized); where
    they differ from the module as given, the export also gets its accuracy against that module, as a
    figure: what rounding cost.
    """
    import dataclasses

    from attn_onnx.errors import ParityError
    from attn_onnx.runtime_check.check import QUICK_CONFIG, check_model
    from attn_onnx.runtime_check.compare import Tolerance

    config = QUICK_CONFIG
    report = check_model(proto, config, module=stored)
    if report.nothing_checked:  # onnxruntime cannot run it here (no bfloat16 MatMul on a CPU): onnx.reference
        config = dataclasses.replace(config, runtimes=("onnxruntime", "reference"))
        report = check_model(proto, config, module=stored)
    for skipped in report.skipped:
        click.echo(f"parity: {skipped.runner} SKIPPED: {skipped.reason}")
    runner = next(iter(report.tolerances))
    profile, tol = report.tolerances[runner]
    worst = report.worst
    click.echo(f"parity: {runner} vs PyTorch float64 on {len(report.results)} cases ({', '.join(report.shapes)}): "
               f"max_abs={worst.max_abs:.3g} (atol={tol.atol:g}, rtol={tol.rtol:g}): {report.status}")
    for result in report.failed:
        click.echo(f"  {result.line()}", err=True)
    if not report.ok:
        raise ParityError(f"the exported model fails the parity check ({len(report.failed)} of "
                          f"{len(report.results)} cases failed); nothing was written to {targets} "
                          "(--no-check writes it anyway, for inspection)")
    if stored is not module:
        worst = check_model(proto, dataclasses.replace(config, tolerance=Tolerance(float("inf"), 0.0)),
                            module=module).worst
        click.echo(f"accuracy: {worst.runner} at {spec.precision} vs the float32 module (in float64) on the same "
                   f"cases: max_abs={worst.max_abs:.3g} ({worst.case}); the weights rounded to {spec.precision} "
                   "included (a figure, not a pass/fail)")


def _echo_summary(out: Path, proto, spec, size: int, external: bool) -> None:
    import onnx

    size_text = f"{size / 2**20:.1f} MiB" if size >= 2**20 else f"{size / 2**10:.1f} KiB"
    how = f", {spec.variant}" if spec.variant != DEFAULT_VARIANT else ""
    how += f", optimized ({spec.optimize})" if spec.optimize else ""
    how += f", projections {spec.quantize}" if spec.quantize else ""
    how += f", weights in {out.name}.data" if external else ""
    click.echo(f"wrote {out} ({size_text}, opset {spec.opset}, {spec.kind.summary(spec)}{how})")
    for side, values in (("input", proto.graph.input), ("output", proto.graph.output)):
        for value in values:
            elem = onnx.helper.tensor_dtype_to_np_dtype(value.type.tensor_type.elem_type)
            dims = [d.dim_param or d.dim_value for d in value.type.tensor_type.shape.dim]
            click.echo(f"  {side:<6} {value.name:<10} {str(elem):<8} [{', '.join(map(str, dims))}]")
