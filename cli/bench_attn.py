"""`bench-attn`: time the export variants in onnxruntime against PyTorch eager and SDPA, beside the sgemm
limit measured in the same run. A benchmark, not a test."""

from __future__ import annotations

import json
import os
from pathlib import Path

import click

from attn_onnx import __version__
from attn_onnx.cli.common import OneLineErrorCommand, batch_lengths, comma_list, given, refuse
from attn_onnx.errors import RuntimeFailure, UsageError
from attn_onnx.exporter.variants import VARIANTS

SHAPES = "1x16,8x128,1x512,4x512,1x2048"


@click.command("bench-attn", cls=OneLineErrorCommand)
@click.version_option(__version__, prog_name="bench-attn")
@click.option("--attention-impl", "impls", default=",".join(VARIANTS), show_default=True,
              help="Comma-separated export variants to time in onnxruntime.")
@click.option("--shapes", default=SHAPES, show_default=True, help="Comma-separated BATCHxLEN (self-attention).")
@click.option("--threads", default=None, help="Comma-separated thread counts. [default: the CPUs this process "
              "may use]")
@click.option("--heads", type=click.IntRange(min=1), default=8, show_default=True)
@click.option("--embedding-dim", type=click.IntRange(min=1), default=512, show_default=True)
@click.option("--rounds", type=click.IntRange(min=1), default=7, show_default=True,
              help="Interleaved rounds; each contender's figure is its median over them.")
@click.option("--memory", "memory_shape", default=None, metavar="BATCHxLEN",
              help="Also run each variant once at this shape (e.g. 1x8192) in a fresh process and report its "
              "peak RSS.")
@click.option("--decode", "decode_lens", default=None, metavar="PAST,...",
              help="Also time one decoding step through the KV cache (--kv-cache export) at these cache lengths "
              "(e.g. 128,512,2047) against recomputing all past+1 tokens with the plain causal export.")
@click.option("--self-attention", is_flag=True, help="Feed one tensor as query, key and value, and also time "
              "each variant exported with --self-attention (one packed QKV MatMul) as ort:<variant>/self.")
@click.option("--dtypes", default="float32", show_default=True, help="Comma-separated: also time each variant "
              "exported at these --dtype values (float16; bfloat16 has no kernels in onnxruntime's CPU), as "
              "ort:<variant>@float16. Its max_abs is against the float64 module of the float32 weights.")
@click.option("--quantize", is_flag=True, help="Also time each variant exported with --quantize int8, as "
              "ort:<variant>@int8.")
@click.option("--serve", "serve_targets", default=None, metavar="TARGET,...|all",
              help="Instead: load figures from perf_analyzer (bash scripts/setup/triton.sh first) against the model "
                   "served by Triton's Python backend (triton-http, triton-grpc) and the Node service (node-http, "
                   "node-json, node-grpc), at concurrency 1 and 4 and --shapes [default: 1x16,1x128,4x512] with a "
                   "padding mask (docs/serving-triton.md).")
@click.option("--runtimes", is_flag=True, help="Instead: one model's latency in onnxruntime (Python), "
              "onnxruntime-node, onnxruntime-web (WASM) and onnxruntime's C++ API (examples/cpp), timed side by side "
              "in interleaved rounds at --shapes [default: 1x16,1x128,1x512]; a runtime not installed here is "
              "reported as not run.")
@click.option("--triton-max-queue-delay-us", "queue_delay_us", type=click.IntRange(min=0), default=0,
              show_default=True, help="[with --serve] Triton's dynamic batcher's max_queue_delay_microseconds.")
@click.option("--json", "json_path", type=click.Path(path_type=Path), default=None, help="Also write the results.")
@click.option("--plot", "plot_path", type=click.Path(path_type=Path), default=None,
              help="Also draw a PNG: median latency per shape, each contender.")
def main(impls, shapes, threads, heads, embedding_dim, rounds, memory_shape, decode_lens, self_attention, dtypes,
         quantize, serve_targets, runtimes, queue_delay_us, json_path, plot_path):
    """Time the attention block, causal+padding mask input, float32: each export variant in onnxruntime
    (CPU), PyTorch eager of the Annotated Transformer's MultiHeadedAttention, and PyTorch SDPA with the same
    weights, in interleaved rounds.
    Prints per shape the median latency, ratios to SDPA and to the straight export, in how many rounds each
    contender beat SDPA timed in the same round (a paired count: 4 of 7 is a tie), achieved GFLOP/s, the
    fraction of the sgemm limit (onnxruntime MatMul at 2048^3, measured in the same run), and each
    variant's max abs error against the float64 MultiHeadedAttention. Always with the CPU model.

    \b
    Examples:
      bench-attn
      bench-attn --attention-impl torch-export,ort-mha --shapes 4x512,1x2048 --json bench.json --plot bench.png
      bench-attn --serve all
    """
    from attn_onnx.files import check_output_file, write_atomic

    if serve_targets is not None:
        return _serve(serve_targets, shapes, heads, embedding_dim, queue_delay_us, json_path)
    if runtimes:
        return _runtimes(shapes, threads, heads, embedding_dim, rounds, json_path)
    refuse(click.get_current_context(), {"queue_delay_us"}, "without --serve")

    variants = list(comma_list(impls))
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown or not variants:
        raise UsageError(f"--attention-impl {impls!r}: choose from {list(VARIANTS)}")
    dtype_list = list(comma_list(dtypes))
    if not dtype_list or any(d not in ("float32", "float16") for d in dtype_list):
        raise UsageError(f"--dtypes {dtypes!r}: choose from float32, float16 (bfloat16 has no MatMul kernel in "
                         "onnxruntime's CPU)")
    shape_list = batch_lengths(shapes, "--shapes")
    memory = batch_lengths(memory_shape, "--memory") if memory_shape else None
    if memory is not None and len(memory) != 1:
        raise UsageError(f"--memory {memory_shape!r}: give one BATCHxLEN")
    memory = memory[0] if memory else None
    past_lens = list(comma_list(decode_lens, int)) if decode_lens else []
    if decode_lens and (not past_lens or min(past_lens) < 0):
        raise UsageError(f"--decode {decode_lens!r}: give cache lengths >= 0, e.g. 128,512,2047")
    thread_list = list(comma_list(threads, int)) if threads else [len(os.sched_getaffinity(0))]
    if not thread_list or min(thread_list) < 1:
        raise UsageError("--threads must be >= 1")
    if embedding_dim % heads:
        raise UsageError(f"--embedding-dim {embedding_dim} is not divisible by --heads {heads}")
    if json_path is not None:
        check_output_file(json_path, force=True, what="--json")
    if plot_path is not None:
        if plot_path.suffix.lower() != ".png":
            raise UsageError(f"--plot {str(plot_path)!r} must end in .png")
        check_output_file(plot_path, force=True, what="--plot")
        from attn_onnx.bench.plot import require_matplotlib

        require_matplotlib()

    from attn_onnx.bench.bench import fastest, run_bench

    bench = run_bench(variants, shape_list, thread_list, heads, embedding_dim, rounds,
                      on_line=lambda text: click.echo(text, err=True), self_attention=self_attention,
                      dtypes=dtype_list, quantize=quantize)
    click.echo(table(bench))
    for n in thread_list:
        for batch, length in shape_list:
            best = fastest(bench, batch, length, n)
            if best is not None:
                export = f"{best.vs_export:.2f}x torch-export, " if best.vs_export else ""  # when it was timed
                click.echo(f"fastest correct at ({batch},{length}), {n} thread(s): {best.contender}, "
                           f"{best.vs_sdpa:.2f}x SDPA (faster in {best.faster_rounds} of {rounds} rounds), "
                           f"{export}{best.limit_fraction:.0%} of the sgemm limit")
    data = bench.to_json()
    if memory is not None:
        from attn_onnx.bench.memory import peak_rss

        data["memory"] = {"batch": memory[0], "length": memory[1], "threads": thread_list[0],
                          "variants": peak_rss(variants, *memory, thread_list[0], heads, embedding_dim)}
        click.echo(memory_table(data["memory"]))
    if past_lens:
        from attn_onnx.bench.decode import decode_bench

        data["decode"] = {"threads": thread_list[0], "steps": decode_bench(past_lens, thread_list[0], heads,
                                                                            embedding_dim, rounds)}
        click.echo(decode_table(data["decode"]))
    if json_path is not None:
        write_atomic(json_path, json.dumps(data, indent=1).encode(), force=True)
        click.echo(f"wrote {json_path}")
    if plot_path is not None:
        from attn_onnx.bench.plot import draw

        write_atomic(plot_path, draw(bench), force=True)
        click.echo(f"wrote {plot_path}")


def _runtimes(shapes: str, threads: str | None, heads: int, embedding_dim: int, rounds: int, json_path) -> None:
    from attn_onnx.bench.runtimes import SHAPES as RUNTIME_SHAPES
    from attn_onnx.bench.runtimes import run_runtimes_bench
    from attn_onnx.bench.runtimes import table as runtimes_table
    from attn_onnx.files import check_output_file, write_atomic

    ctx = click.get_current_context()
    refuse(ctx, given(ctx) - {"runtimes", "shapes", "threads", "heads", "embedding_dim", "rounds", "json_path"},
           "with --runtimes")
    shape_list = batch_lengths(shapes, "--shapes") if "shapes" in given(ctx) else list(RUNTIME_SHAPES)
    thread_list = list(comma_list(threads, int)) if threads else [len(os.sched_getaffinity(0))]
    if len(thread_list) != 1 or thread_list[0] < 1:
        raise UsageError("--threads with --runtimes: give one thread count >= 1")
    if embedding_dim % heads:
        raise UsageError(f"--embedding-dim {embedding_dim} is not divisible by --heads {heads}")
    if json_path is not None:
        check_output_file(json_path, force=True, what="--json")
    bench = run_runtimes_bench(shape_list, heads, embedding_dim, rounds, thread_list[0],
                               on_line=lambda text: click.echo(text, err=True))
    click.echo(runtimes_table(bench))
    if json_path is not None:
        write_atomic(json_path, json.dumps(bench.to_json(), indent=1).encode(), force=True)
        click.echo(f"wrote {json_path}")


def _serve(targets: str, shapes: str, heads: int, embedding_dim: int, queue_delay_us: int, json_path) -> None:
    from attn_onnx.bench.serve import SHAPES as SERVE_SHAPES
    from attn_onnx.bench.serve import TARGETS, run_serve_bench
    from attn_onnx.bench.serve import table as serve_table
    from attn_onnx.files import check_output_file, write_atomic

    ctx = click.get_current_context()
    refuse(ctx, given(ctx) - {"serve_targets", "queue_delay_us", "shapes", "heads", "embedding_dim", "json_path"},
           "with --serve")
    names = list(TARGETS) if targets == "all" else list(comma_list(targets))
    if not names or any(n not in TARGETS for n in names):
        raise UsageError(f"--serve {targets!r}: choose from all, {', '.join(TARGETS)}")
    shape_list = batch_lengths(shapes, "--shapes") if "shapes" in given(ctx) else list(SERVE_SHAPES)
    if embedding_dim % heads:
        raise UsageError(f"--embedding-dim {embedding_dim} is not divisible by --heads {heads}")
    if json_path is not None:
        check_output_file(json_path, force=True, what="--json")
    bench = run_serve_bench(names, shape_list, heads, embedding_dim, queue_delay_us,
                            on_line=lambda text: click.echo(text, err=True))
    click.echo(serve_table(bench))
    if json_path is not None:
        write_atomic(json_path, json.dumps(bench.to_json(), indent=1).encode(), force=True)
        click.echo(f"wrote {json_path}")
    if all(row.error for row in bench.rows):
        raise RuntimeFailure("no target was measured (the table says why)")


def table(bench) -> str:
    """The results as text, one block per (threads, shape)."""
    lines = [f"bench-attn {__version__}: {bench.cpu}; width {bench.embedding_dim}, {bench.heads} heads, "
             "causal+padding mask input, float32 unless marked @; "
             + ", ".join(f"{k} {v}" for k, v in bench.versions.items() if k != "attn_onnx")]
    width = max([22, *(len(t.contender) + 2 for t in bench.timings)])
    for n in bench.threads:
        lines.append(f"threads {n}: sgemm limit (onnxruntime MatMul 2048^3) {bench.sgemm_gflops[n]:.0f} GFLOP/s; "
                     f"torch.matmul {bench.torch_sgemm_gflops[n]:.0f} GFLOP/s")
        head = f"  {'contender':<{width}}{'median ms':>10}{'vs sdpa':>9}{'beat sdpa':>10}{'vs export':>10}" \
               f"{'GFLOP/s':>9}{'% limit':>9}{'max_abs':>10}"
        for shape in dict.fromkeys((t.batch, t.length) for t in bench.timings if t.threads == n):
            lines += [f" ({shape[0]},{shape[1]})", head]
            for t in bench.timings:
                if (t.batch, t.length, t.threads) == (*shape, n):
                    err = f"{t.max_abs:.1e}" if t.max_abs is not None else "-"
                    export = f"{t.vs_export:.2f}x" if t.vs_export else "-"
                    beat = f"{t.faster_rounds}/{len(t.rounds_ms)}" if t.faster_rounds is not None else "-"
                    lines.append(f"  {t.contender:<{width}}{t.median_ms:>10.3f}{t.vs_sdpa:>8.2f}x{beat:>10}"
                                 f"{export:>10}{t.gflops:>9.1f}{t.limit_fraction:>9.0%}{err:>10}")
    return "\n".join(lines)


def memory_table(memory: dict) -> str:
    lines = [f"peak RSS of one run at ({memory['batch']},{memory['length']}), {memory['threads']} thread(s), "
             "in a fresh onnxruntime process:",
             f"  {'variant':<22}{'peak MiB':>10}{'run MiB':>10}  (run: above the loaded session; inputs "
             f"{next(iter(memory['variants'].values())).get('inputs_mib', 0):.0f} MiB)"]
    for name, m in memory["variants"].items():
        if "error" in m:
            lines.append(f"  {name:<22}failed: {m['error']}")
        else:
            lines.append(f"  {name:<22}{m['peak_mib']:>10.0f}{m['run_mib']:>10.0f}")
    return "\n".join(lines)


def decode_table(decode: dict) -> str:
    lines = [f"decoding, batch 1, {decode['threads']} thread(s): one new token through the KV cache (--kv-cache) "
             "vs recomputing past+1 tokens with the plain causal export",
             f"  {'past_len':>8}{'step ms':>10}{'recompute ms':>14}{'speedup':>9}"]
    for row in decode["steps"]:
        lines.append(f"  {row['past_len']:>8}{row['step_ms']:>10.3f}{row['recompute_ms']:>14.3f}"
                     f"{row['speedup']:>8.1f}x")
    return "\n".join(lines)
