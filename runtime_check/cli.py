"""`check-attn`: prove that an exported model computes what its PyTorch module computes."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from exporter import __version__
from exporter.cli_support import EXIT_FAILURE, EXIT_OK, OneLineErrorCommand, comma_list


@click.command(cls=OneLineErrorCommand)
@click.version_option(__version__, prog_name="check-attn")
@click.argument("model", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--runtimes", default="onnxruntime,reference", show_default=True,
              help="Comma-separated: onnxruntime, reference (onnx.reference), openvino (optional extra), "
                   "torch (PyTorch float32, to see PyTorch's own float32 error).")
@click.option("--providers", default="cpu", show_default=True,
              help="onnxruntime execution providers, comma-separated: cpu, cuda.")
@click.option("--batches", default="1,2,5", show_default=True, help="Batch sizes of the sweep.")
@click.option("--lengths", default="1,7,64,257", show_default=True,
              help="Sequence lengths; each as q_len = kv_len, and paired with the next for cross-attention.")
@click.option("--shapes", default=None, help="Explicit BxQxKV shapes instead of the grid, e.g. '3x11x5,1x7x7'.")
@click.option("--masks", default=None, help="Mask kinds, comma-separated: ones, zeros, causal, padding, "
                                            "causal+padding, masked_row. [default: all]")
@click.option("--sizes", default="1,5,20,64", show_default=True, help="Sizes for a `mask` module model.")
@click.option("--quick", is_flag=True, help="The small sweep export-attn runs (two shapes, four masks).")
@click.option("--atol", type=click.FloatRange(min=0), default=None,
              help="Absolute tolerance. [default: 1e-05; 5e-03 with --tf32; exact for integer outputs]")
@click.option("--rtol", type=click.FloatRange(min=0), default=None,
              help="Relative tolerance. [default: 1e-04; 1e-02 with --tf32]")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the generated inputs.")
@click.option("--tf32", is_flag=True, help="CUDA: allow TF32 matmuls (onnxruntime's default), with the "
                                           "looser TF32 tolerances.")
@click.option("--skip-missing", is_flag=True, help="Report a missing provider as SKIPPED instead of failing.")
@click.option("--weights", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              help="Compare against this checkpoint (.safetensors or state_dict .pt) instead of the weights "
                   "in the model.")
@click.option("--weights-prefix", default="", help="Key prefix of the block inside --weights.")
@click.option("--json", "json_path", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Write the full report as JSON here.")
@click.option("--plots", "plots_dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Write PNGs of the mask, the attention probabilities and their difference here.")
@click.option("--plot-case", "plot_case_name", default=None,
              help="The case to draw, e.g. 'b2.q20.kv20.causal+padding'. [default: that one]")
@click.option("--quiet", is_flag=True, help="Print only failed and skipped lines and the summary.")
def main(model, runtimes, providers, batches, lengths, shapes, masks, sizes, quick, atol, rtol, seed, tf32,
         skip_missing, weights, weights_prefix, json_path, plots_dir, plot_case_name, quiet):
    """Check MODEL (written by export-attn) against its PyTorch module, in float64, over shapes, masks,
    runtimes and execution providers. Exit 0 when every case passes, 1 when any fails.

    \b
    Examples:
      check-attn mha.onnx
      check-attn mha.onnx --providers cpu,cuda --skip-missing --json report.json
      check-attn mha.onnx --weights original.safetensors --quick
      check-attn probs.onnx --plots plots/ --plot-case b2.q20.kv20.causal+padding
    """
    from exporter.errors import UsageError
    from exporter.export import write_atomic
    from runtime_check.cases import QUICK, Sweep
    from runtime_check.check import check_model, plot_case
    from runtime_check.compare import FLOAT32, TF32, Tolerance

    if quick:
        sweep = QUICK
    else:
        parsed_shapes = None
        if shapes:
            try:
                parsed_shapes = tuple(tuple(int(d) for d in s.lower().split("x")) for s in comma_list(shapes))
            except ValueError:
                raise UsageError(f"--shapes {shapes!r}: expected BxQxKV items such as 3x11x5") from None
            if any(len(s) != 3 for s in parsed_shapes):
                raise UsageError(f"--shapes {shapes!r}: expected BxQxKV items such as 3x11x5")
        sweep = Sweep(batches=comma_list(batches, int), lengths=comma_list(lengths, int),
                      masks=comma_list(masks) or None, shapes=parsed_shapes, sizes=comma_list(sizes, int))
    sweep.validate()
    tolerance = None
    if atol is not None or rtol is not None:
        default = TF32 if tf32 else FLOAT32
        tolerance = Tolerance(atol=default.atol if atol is None else atol, rtol=default.rtol if rtol is None else rtol)
    if plot_case_name and not plots_dir:
        raise UsageError("--plot-case needs --plots DIR")

    with _progress_bar() as progress:
        report = check_model(model, runtimes=comma_list(runtimes), providers=comma_list(providers), sweep=sweep,
                             tolerance=tolerance, seed=seed, weights=weights, weights_prefix=weights_prefix,
                             tf32=tf32, skip_missing=skip_missing, progress=progress)
    click.echo(f"model {report.model} (sha256 {report.sha256[:16]}), module {report.spec.module}; "
               f"reference weights: {report.reference_weights}")
    for line in report.lines():
        if not (quiet and line.startswith("PASSED")):
            click.echo(line)
    click.echo(report.summary())
    if json_path:
        write_atomic(json_path, report.to_json().encode(), force=True)
        click.echo(f"wrote {json_path}")
    if plots_dir:
        provider = comma_list(providers)[0] if comma_list(providers) else "cpu"
        for path in plot_case(model, plots_dir, plot_case_name, provider=provider, tf32=tf32, seed=seed,
                              weights=weights, weights_prefix=weights_prefix):
            click.echo(f"wrote {path}")
    return EXIT_FAILURE if report.failed or report.status == "FAILED" else EXIT_OK


class _progress_bar:
    """A progress bar on stderr while a sweep runs, only when stderr is a terminal."""

    def __enter__(self):
        self.bar = None
        return self.update if sys.stderr.isatty() else None

    def update(self, done: int, total: int) -> None:
        if self.bar is None:
            self.bar = click.progressbar(length=total, label="checking", file=sys.stderr)
            self.bar.__enter__()
        self.bar.update(1)

    def __exit__(self, *exc):
        if self.bar is not None:
            self.bar.__exit__(*exc)
