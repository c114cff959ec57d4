"""`export-attn`: export the seed's attention modules to one self-contained ONNX file."""

from __future__ import annotations

from pathlib import Path

import click

from exporter import __version__
from exporter.cli_support import OneLineErrorCommand
from exporter.spec import MASK_DTYPES, MASK_MODES, MODULES, OPSETS


@click.command(cls=OneLineErrorCommand)
@click.version_option(__version__, prog_name="export-attn")
@click.option("--module", "module_kind", type=click.Choice(MODULES), default="mha", show_default=True,
              help="What to export: mha (MultiHeadedAttention), attention (bare masked scaled dot-product "
                   "attention), mask (subsequent_mask as a graph).")
@click.option("--heads", type=int, default=8, show_default=True, help="Number of attention heads.")
@click.option("--embedding-dim", "--d-model", "embedding_dim", type=int, default=None,
              help="Model width; d_k = embedding-dim / heads. [default: 512, or the width of --weights]")
@click.option("--mask", "mask_mode", type=click.Choice(MASK_MODES), default="input", show_default=True,
              help="input: a `mask` input (nonzero = attend); causal: the graph builds subsequent_mask from "
                   "the lengths; none: no mask.")
@click.option("--mask-dtype", type=click.Choice(list(MASK_DTYPES)), default="bool", show_default=True,
              help="Element type of the `mask` input.")
@click.option("--attn-probs", is_flag=True, help="mha: also output the attention probabilities `attn_probs`.")
@click.option("--opset", type=click.IntRange(min(OPSETS), max(OPSETS)), default=18, show_default=True,
              help="ONNX opset of the default domain.")
@click.option("--weights", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              help="Weights: a .safetensors file, or a state_dict .pt/.pth (read with weights_only=True).")
@click.option("--weights-prefix", default="", help="Take the block out of a larger checkpoint, e.g. "
                                                   "'encoder.layers.0.self_attn.'.")
@click.option("--seed", type=int, default=0, show_default=True,
              help="Seed of the random weights used when no --weights are given.")
@click.option("--out", type=click.Path(path_type=Path), required=True, help="The .onnx file to write.")
@click.option("--force", is_flag=True, help="Overwrite --out if it exists.")
@click.option("--no-check", is_flag=True, help="Skip the parity check in onnxruntime after writing.")
def main(module_kind, heads, embedding_dim, mask_mode, mask_dtype, attn_probs, opset, weights, weights_prefix,
         seed, out, force, no_check):
    """Export attention to one self-contained ONNX file with dynamic batch and sequence axes, then check
    it in onnxruntime against PyTorch on shapes unlike the export's.

    \b
    Examples:
      export-attn --heads 8 --out mha.onnx
      export-attn --weights block.safetensors --heads 8 --mask causal --out causal.onnx
      export-attn --module mask --out subsequent_mask.onnx
    """
    from exporter.errors import UsageError
    from exporter.export import build_module, check_writable, export_model
    from exporter.spec import ExportSpec
    from exporter.weights import embedding_dim_of, load_state_dict, weights_label

    if weights is not None and module_kind != "mha":
        raise UsageError(f"--weights applies to --module mha; {module_kind!r} has no weights")
    if weights_prefix and weights is None:
        raise UsageError("--weights-prefix needs --weights")
    state = load_state_dict(weights, weights_prefix) if weights is not None else None
    if embedding_dim is None:
        embedding_dim = (state and embedding_dim_of(state)) or 512
    source = f"file {weights_label(weights, weights_prefix)}" if weights else f"random (seed={seed})"
    spec = ExportSpec(module=module_kind, heads=heads, embedding_dim=embedding_dim, mask=mask_mode,
                      mask_dtype=mask_dtype, attn_probs=attn_probs, opset=opset, weights_source=source).validate()
    check_writable(out, force)
    module = build_module(spec, state, seed) if module_kind == "mha" else None
    result = export_model(spec, out, module=module, force=force)
    _echo_summary(result)
    if not no_check:
        _check(result, module)


def _echo_summary(result) -> None:
    import onnx

    model = onnx.load(str(result.path), load_external_data=False)
    size = result.size_bytes
    size_text = f"{size / 2**20:.1f} MiB" if size >= 2**20 else f"{size / 2**10:.1f} KiB"
    spec = result.spec
    what = spec.module + ("" if spec.module == "mask" else f", heads {spec.heads}, mask {spec.mask}")
    click.echo(f"wrote {result.path} ({size_text}, opset {spec.opset}, {what})")
    for kind, values in (("input", model.graph.input), ("output", model.graph.output)):
        for value in values:
            elem = onnx.helper.tensor_dtype_to_np_dtype(value.type.tensor_type.elem_type)
            dims = [d.dim_param or d.dim_value for d in value.type.tensor_type.shape.dim]
            click.echo(f"  {kind:<6} {value.name:<10} {str(elem):<8} [{', '.join(map(str, dims))}]")


def _check(result, module) -> None:
    from runtime_check import QUICK, check_model

    report = check_model(result.path, runtimes=("onnxruntime",), providers=("cpu",), sweep=QUICK, module=module)
    worst = max(report.results, key=lambda r: r.needed_atol)
    tol = report.tolerances[worst.runner]
    click.echo(f"parity: onnxruntime/cpu vs PyTorch float64 on {len(report.results)} cases "
               f"({', '.join(sorted({r.case.rsplit('.', 1)[0] for r in report.results}))}): "
               f"max_abs={max(r.max_abs for r in report.results):.3g} "
               f"(atol={tol['atol']:g}, rtol={tol['rtol']:g}): {'PASSED' if report.passed else 'FAILED'}")
    for line in report.lines():
        if not line.startswith("PASSED"):
            click.echo(f"  {line}", err=True)
    if not report.passed:
        from exporter.errors import ParityError

        raise ParityError(f"{result.path} was written but fails the parity check: "
                          f"{len(report.failed)} of {len(report.results)} cases failed")
