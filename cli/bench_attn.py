"""`bench-attn`: time the attention block, one subcommand per question. `variants`: the export variants in
onnxruntime against PyTorch eager and SDPA, beside the sgemm limit; `runtimes`: one model in every runtime it
ships to; `serve`: load figures against the served model; `decode`: a KV-cache step, concat and static, against
the memory limit.
A benchmark, not a test. Bare `bench-attn` prints its help (there is no default subcommand)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import click

from attn_onnx import __version__
from attn_onnx.bench.serve import TARGETS as SERVE_TARGETS
from attn_onnx.cli.common import CommaChoice, OneLineErrorGroup, batch_lengths, comma_list
from attn_onnx.errors import RuntimeFailure, UsageError
from attn_onnx.exporter.kinds.mha_static import MIN_MAX_LEN
from attn_onnx.exporter.variants import VARIANTS

# each subcommand's default shapes, as its help shows them (tests/bench: equal to its module's SHAPES)
VARIANT_SHAPES = "1x16,8x128,1x512,4x512,1x2048"
RUNTIME_SHAPES = "1x16,1x128,1x512"
SERVE_SHAPES = "1x16,1x128,4x512"
PAST_LENS = "128,512,2047"
BATCH_LENS = "1023,2047,3071,4095,5119,6143,7167,8191"
BENCH_DTYPES = ("float32", "float16")  # bfloat16 has no MatMul kernel in onnxruntime's CPU


def _options(*options):
    """Apply click options in the order written (shared ones included)."""

    def apply(command):
        for option in reversed(options):
            command = option(command)
        return command

    return apply


def _shapes(default: str):
    return click.option(
        "--shapes",
        default=default,
        show_default=True,
        metavar="BATCHxLEN,...",
        help="Self-attention shapes (query, key and value of one length) to time, comma-separated.",
    )


HEADS = click.option(
    "--heads", type=click.IntRange(min=1), default=8, show_default=True, help="Attention heads of the timed model."
)
WIDTH = click.option(
    "--embedding-dim",
    type=click.IntRange(min=1),
    default=512,
    show_default=True,
    help="Model width of the timed model; d_k = embedding-dim / heads.",
)
ROUNDS = click.option(
    "--rounds",
    type=click.IntRange(min=1),
    default=7,
    show_default=True,
    help="Interleaved rounds; each contender's figure is its median over them.",
)
ONE_THREAD_COUNT = click.option(
    "--threads",
    type=click.IntRange(min=1),
    default=None,
    help="Intra-op threads. [default: the CPUs this process may use]",
)
JSON = click.option(
    "--json",
    "json_path",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Also write the results to this JSON file.",
)


@click.group("bench-attn", cls=OneLineErrorGroup, invoke_without_command=True, subcommand_metavar="COMMAND [ARGS]...")
@click.version_option(__version__, prog_name="bench-attn")
@click.pass_context
def main(ctx):
    """Time the attention block on this machine's CPU: the export variants against PyTorch, one model in each
    runtime, the served model under load, a KV-cache decoding step. Each subcommand prints a table (progress
    on stderr) and, with --json, writes its figures. Without a subcommand, this help.

    \b
    Examples:
      bench-attn variants
      bench-attn variants --attention-impl torch-export,ort-mha --shapes 4x512,1x2048 --json b.json --plot b.png
      bench-attn runtimes --json runtimes.json
      bench-attn serve --targets triton-http,triton-grpc --shapes 1x16
      bench-attn decode --past-lens 128,512,2047
    """
    if ctx.invoked_subcommand is None:
        click.echo(ctx.get_help())


@main.command("variants", short_help="The export variants in onnxruntime against PyTorch eager and SDPA.")
@_options(
    click.option(
        "--attention-impl",
        "variants",
        type=CommaChoice(VARIANTS),
        default=",".join(VARIANTS),
        show_default=True,
        help="Export variants to time in onnxruntime, comma-separated.",
    ),
    _shapes(VARIANT_SHAPES),
    click.option(
        "--threads",
        default=None,
        metavar="N,...",
        help="Thread counts, comma-separated: the whole run at each. [default: the CPUs this process may use]",
    ),
    HEADS,
    WIDTH,
    ROUNDS,
    click.option(
        "--self-attention",
        is_flag=True,
        help="Feed one tensor as query, key and value, and also time "
        "each variant exported with --self-attention (one packed QKV MatMul) as ort:<variant>/self.",
    ),
    click.option(
        "--dtypes",
        type=CommaChoice(BENCH_DTYPES, note=" (bfloat16 has no MatMul kernel in onnxruntime's CPU)"),
        default="float32",
        show_default=True,
        help="Also time each variant exported at these --dtype "
        "values, as ort:<variant>@float16, comma-separated. Its max_abs is against the float64 module of "
        "the float32 weights.",
    ),
    click.option(
        "--quantize", is_flag=True, help="Also time each variant exported with --quantize int8, as ort:<variant>@int8."
    ),
    click.option(
        "--memory",
        "memory_shape",
        default=None,
        metavar="BATCHxLEN",
        help="Also run each variant once at this shape (e.g. 1x8192) in a fresh process and report its peak RSS.",
    ),
    JSON,
    click.option(
        "--plot",
        "plot_path",
        type=click.Path(dir_okay=False, path_type=Path),
        default=None,
        help="Also draw a PNG here: median latency per shape, each contender.",
    ),
)
def variants(**options):
    """Time the attention block, causal+padding mask input, float32: each export variant in onnxruntime
    (CPU), PyTorch eager of the Annotated Transformer's MultiHeadedAttention, and PyTorch SDPA with the same
    weights, in interleaved rounds.
    Prints per shape the median latency, ratios to SDPA and to the straight export, in how many rounds each
    contender beat SDPA timed in the same round (a paired count: 4 of 7 is a tie), achieved GFLOP/s, the
    fraction of the sgemm limit (onnxruntime MatMul at 2048^3, measured in the same run), and each
    variant's max abs error against the float64 MultiHeadedAttention. Always with the CPU model.

    \b
    Examples:
      bench-attn variants
      bench-attn variants --attention-impl torch-export,ort-mha --shapes 4x512,1x2048 --json b.json --plot b.png
      bench-attn variants --memory 1x8192
    """
    settings, memory = _variants_plan(options)
    from attn_onnx.bench.bench import run_bench
    from attn_onnx.cli.bench_tables import fastest_lines, memory_table, variants_table

    bench = run_bench(settings, on_line=_progress)
    click.echo(variants_table(bench))
    for line in fastest_lines(bench, settings.rounds):
        click.echo(line)
    data = bench.to_json()
    if memory is not None:
        from attn_onnx.bench.memory import peak_rss

        threads = settings.threads[0]
        data["memory"] = {
            "batch": memory[0],
            "length": memory[1],
            "threads": threads,
            "variants": peak_rss(list(settings.variants), *memory, threads, settings.heads, settings.embedding_dim),
        }
        click.echo(memory_table(data["memory"]))
    _write_json(options["json_path"], data)
    if options["plot_path"] is not None:
        from attn_onnx.bench.plot import draw
        from attn_onnx.files import write_atomic

        write_atomic(options["plot_path"], draw(bench), force=True)
        click.echo(f"wrote {options['plot_path']}")


def _variants_plan(options: dict):
    """`variants`' settings and its --memory shape (or None), every option checked before any work."""
    from attn_onnx.files import check_output_file

    shapes = batch_lengths(options["shapes"], "--shapes")
    memory: tuple[int, int] | None = None
    if options["memory_shape"]:
        given = batch_lengths(options["memory_shape"], "--memory")
        if len(given) != 1:
            raise UsageError(f"--memory {options['memory_shape']!r}: give one BATCHxLEN")
        memory = given[0]
    threads = list(comma_list(options["threads"], int)) if options["threads"] else [_cpus()]
    if not threads or min(threads) < 1:
        raise UsageError("--threads must be >= 1")
    _check_width(options)
    _check_json(options["json_path"])
    if options["plot_path"] is not None:
        if options["plot_path"].suffix.lower() != ".png":
            raise UsageError(f"--plot {str(options['plot_path'])!r} must end in .png")
        check_output_file(options["plot_path"], force=True, what="--plot")
        from attn_onnx.bench.plot import require_matplotlib

        require_matplotlib()
    from attn_onnx.bench.bench import BenchSettings  # torch: only once every option is known good

    settings = BenchSettings(
        variants=options["variants"],
        shapes=tuple(shapes),
        threads=tuple(threads),
        heads=options["heads"],
        embedding_dim=options["embedding_dim"],
        rounds=options["rounds"],
        self_attention=options["self_attention"],
        dtypes=options["dtypes"],
        quantize=options["quantize"],
    )
    return settings, memory


@main.command("runtimes", short_help="One model in onnxruntime's Python, Node, WASM and C++ runtimes.")
@_options(_shapes(RUNTIME_SHAPES), ONE_THREAD_COUNT, HEADS, WIDTH, ROUNDS, JSON)
def runtimes(shapes: str, threads: int | None, heads: int, embedding_dim: int, rounds: int, json_path):
    """One model's latency in onnxruntime (Python), onnxruntime-node, onnxruntime-web (WASM, one thread) and
    onnxruntime's C++ API (examples/cpp), timed side by side in interleaved rounds: the same export
    (torch-export, causal+padding mask input, float32) on the same inputs, each runtime timing its own runs in
    its own process. A runtime not installed here is reported as not run, with the reason.

    \b
    Examples:
      bench-attn runtimes
      bench-attn runtimes --shapes 1x16,1x512 --threads 1 --json runtimes.json
    """
    shape_list = batch_lengths(shapes, "--shapes")
    _check_width({"heads": heads, "embedding_dim": embedding_dim})
    _check_json(json_path)
    from attn_onnx.bench.runtimes import run_runtimes_bench, table

    bench = run_runtimes_bench(shape_list, heads, embedding_dim, rounds, threads or _cpus(), on_line=_progress)
    click.echo(table(bench))
    _write_json(json_path, bench.to_json())


@main.command("serve", short_help="Load figures from perf_analyzer against Triton and the Node service.")
@_options(
    click.option(
        "--targets",
        type=CommaChoice(SERVE_TARGETS, every="all"),
        default="all",
        show_default=True,
        help="What to load, comma-separated: Triton's Python backend over HTTP with binary tensors "
        "(triton-http) and over gRPC (triton-grpc); the Node service over HTTP binary (node-http), "
        "HTTP JSON (node-json) and gRPC (node-grpc); all: every one.",
    ),
    _shapes(SERVE_SHAPES),
    HEADS,
    WIDTH,
    click.option(
        "--triton-max-queue-delay-us",
        "queue_delay_us",
        type=click.IntRange(min=0),
        default=0,
        show_default=True,
        help="Triton's dynamic batcher's max_queue_delay_microseconds: how long it may "
        "hold a request for others to join its batch.",
    ),
    JSON,
)
def serve(targets: tuple[str, ...], shapes: str, heads: int, embedding_dim: int, queue_delay_us: int, json_path):
    """Load figures from perf_analyzer (bash scripts/setup/triton.sh first) against one model served by
    Triton's Python backend and by the Node service (examples/node), at concurrency 1 and 4, with a padding
    mask: requests per second, client p50 and p99, the server's compute time per request and its batching
    (docs/serving-triton.md). Each server starts on 127.0.0.1 with free ports and is stopped by its PID.

    \b
    Examples:
      bench-attn serve
      bench-attn serve --targets triton-http,triton-grpc --shapes 1x16 --triton-max-queue-delay-us 100
    """
    shape_list = batch_lengths(shapes, "--shapes")
    _check_width({"heads": heads, "embedding_dim": embedding_dim})
    _check_json(json_path)
    from attn_onnx.bench.serve import run_serve_bench, table

    bench = run_serve_bench(list(targets), shape_list, heads, embedding_dim, queue_delay_us, on_line=_progress)
    click.echo(table(bench))
    _write_json(json_path, bench.to_json())
    if all(row.error for row in bench.rows):
        raise RuntimeFailure("no target was measured (the table says why)")


@main.command("decode", short_help="A KV-cache decoding step, concat and static, against the memory limit.")
@_options(
    click.option(
        "--past-lens",
        default=PAST_LENS,
        show_default=True,
        metavar="PAST,...",
        help="Cache lengths to time one decoding step at, batch 1, comma-separated (0: the first token).",
    ),
    click.option(
        "--batch-lens",
        default=BATCH_LENS,
        show_default=True,
        metavar="PAST,...",
        help="The batch scenario: one sequence per length, comma-separated, each one step at its own length "
        "(empty: no batch scenario).",
    ),
    click.option(
        "--max-len",
        type=click.IntRange(min=MIN_MAX_LEN),
        default=None,
        help="The static cache's capacity in tokens (export-attn --max-len), one for every length. "
        "[default: the longest of --past-lens and --batch-lens, + 1]",
    ),
    click.option(
        "--rss-steps",
        type=click.IntRange(min=0),
        default=1000,
        show_default=True,
        help="Decoding steps to watch each form's RSS over, from 1024 cached tokens, each form in a fresh process "
        "(0: no memory figures).",
    ),
    ONE_THREAD_COUNT,
    HEADS,
    WIDTH,
    ROUNDS,
    JSON,
)
def decode(
    past_lens: str,
    batch_lens: str,
    max_len: int | None,
    rss_steps: int,
    threads: int | None,
    heads: int,
    embedding_dim: int,
    rounds: int,
    json_path,
):
    """One decoding step three ways: `concat`, an export-attn --kv-cache model, which returns the cache one token
    longer in new buffers; and the static cache in place (export-attn --kv-cache --max-len, its ort-gqa and
    onnx-attention forms, stepped through StaticCache with the buffers bound as past and present). All in
    onnxruntime, interleaved rounds, medians, each call cold.

    Batch 1, per cache length: each form's step, its speed-up over concat (and concat's over recomputing all
    past_len + 1 tokens with the plain causal export), the bytes it must read (its valid cache and its weights),
    the limit they give at the machine's streaming rate (measured in the same rounds with the same threads),
    the share of it reached, and what its outputs allocate per call. The batch scenario: sequences of the
    --batch-lens lengths, one step each; the static forms step them in one call, concat both padded to the
    longest with a mask and one call per sequence. Then each form's RSS before and after --rss-steps steps, and
    what a step allocates, measured (docs/decoding.md).

    \b
    Examples:
      bench-attn decode
      bench-attn decode --past-lens 2047,8191 --json decode.json
      bench-attn decode --past-lens 0,16,128 --batch-lens "" --rss-steps 0 --threads 1
    """
    lengths = list(comma_list(past_lens, int))
    if not lengths or min(lengths) < 0:
        raise UsageError(f"--past-lens {past_lens!r}: give cache lengths >= 0, e.g. {PAST_LENS}")
    batch = list(comma_list(batch_lens, int))
    if batch and min(batch) < 0:
        raise UsageError(f"--batch-lens {batch_lens!r}: give cache lengths >= 0, e.g. {BATCH_LENS}")
    longest = max(lengths + batch)
    if max_len is not None and max_len <= longest:
        raise UsageError(
            f"--max-len {max_len} does not hold the longest cache length {longest} and its new token: "
            f"give at least {longest + 1}"
        )
    _check_width({"heads": heads, "embedding_dim": embedding_dim})
    _check_json(json_path)
    from attn_onnx.bench.decode import decode_bench
    from attn_onnx.cli.bench_tables import decode_table

    bench = decode_bench(
        tuple(lengths),
        threads or _cpus(),
        heads,
        embedding_dim,
        rounds,
        batch_lens=tuple(batch),
        max_len=max_len,
        rss_steps=rss_steps,
    )
    click.echo(decode_table(bench))
    _write_json(json_path, bench.to_json())


def _cpus() -> int:
    """The CPUs this process may use: the default thread count."""
    return len(os.sched_getaffinity(0))


def _progress(text: str) -> None:
    click.echo(text, err=True)


def _check_width(options: dict) -> None:
    if options["embedding_dim"] % options["heads"]:
        raise UsageError(f"--embedding-dim {options['embedding_dim']} is not divisible by --heads {options['heads']}")


def _check_json(path: Path | None) -> None:
    if path is not None:
        from attn_onnx.files import check_output_file

        check_output_file(path, force=True, what="--json")


def _write_json(path: Path | None, data: dict) -> None:
    if path is not None:
        from attn_onnx.files import write_atomic

        write_atomic(path, json.dumps(data, indent=1).encode(), force=True)
        click.echo(f"wrote {path}")
