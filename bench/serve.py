"""bench-attn serve: load figures from perf_analyzer, Triton's own load generator (from .deps/triton, made by
scripts/setup/triton.sh), against the model served over the Open Inference Protocol.

Targets: Triton's Python backend (`export-attn --triton-backend python`) over HTTP with binary tensors and over
gRPC, and the Node service (examples/node/server.js) over HTTP binary, HTTP JSON and gRPC. One model (random
weights, seed 0) is exported once into a bundle and a Triton repository; each server is started on 127.0.0.1
with free ports and stopped by its PID.

Each row is one perf_analyzer run at one concurrency: inputs of one shape (batch, len) for self-attention
(query = key = value) with a real padding mask (each sequence keeps a prefix of its keys, no row is fully
masked), fed from an --input-data file. perf_analyzer gives throughput (here in requests of that shape per
second, whether the server takes the batch as perf_analyzer's -b or as whole tensors) and client p50/p99
latency; the server's statistics (GET /v2/models/NAME/stats) read before and after
the run give the compute-infer time per request (the model's own time: for a batched execution, each request
of the batch counts the batch's time) and executions against requests (dynamic batching at work).
"""

from __future__ import annotations

import base64
import csv
import json
import os
import subprocess
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from attn_onnx.bench.servers import NodeService, TritonServer, http_json, tool
from attn_onnx.errors import RuntimeFailure

MODEL = "attn"
SHAPES = ((1, 16), (1, 128), (4, 512))
CONCURRENCY = (1, 4)
# perf_analyzer's windows: each row is measured over 3 windows of WINDOW_MS whose throughput and p50 agree
# within STABILITY percent (max/min), trying up to TRIALS windows; a machine shared with other work rarely holds
# tighter than that. A row that does not settle is tried once more with windows twice as long.
WINDOW_MS, STABILITY, TRIALS = 2000, 100, 8
WARMUP_REQUESTS = 20  # per target and shape, before its rows: sessions warm, pages touched; not reported


@dataclass(frozen=True)
class Target:
    server: str  # "triton" or "node"
    protocol: str  # "http" or "grpc"
    tensors: str  # "binary" or "json"


TARGETS = {
    "triton-http": Target("triton", "http", "binary"),
    "triton-grpc": Target("triton", "grpc", "binary"),
    "node-http": Target("node", "http", "binary"),
    "node-json": Target("node", "http", "json"),
    "node-grpc": Target("node", "grpc", "binary"),
}


@dataclass
class Row:
    target: str
    batch: int
    length: int
    concurrency: int
    throughput: float | None = None  # requests (each of shape (batch, length)) per second
    p50_us: float | None = None
    p99_us: float | None = None
    compute_infer_us: float | None = None  # per request, from the server's statistics
    requests: int | None = None  # counted by the server during the run
    executions: int | None = None
    error: str | None = None


@dataclass
class ServeBench:
    cpu: str
    heads: int
    embedding_dim: int
    queue_delay_us: int
    window_ms: int = WINDOW_MS
    load: list[float] = field(default_factory=list)  # the 1-minute load average at the start and at the end
    rows: list[Row] = field(default_factory=list)
    not_run: dict[str, str] = field(default_factory=dict)  # target -> why
    versions: dict[str, str] = field(default_factory=dict)

    def to_json(self) -> dict:
        return asdict(self)


def padding_mask(batch: int, length: int) -> np.ndarray:
    """(batch, length, length) bool: sequence i attends its first valid_i keys; valid_i is the whole length for
    even i and three quarters of it for odd i (a batch of one is padded), never 0, so no row is fully masked."""
    valid = np.array([length if i % 2 else max(1, (3 * length) // 4) for i in range(batch)])
    keys = np.arange(length)[None, None, :] < valid[:, None, None]  # (batch, 1, length)
    return np.ascontiguousarray(np.broadcast_to(keys, (batch, length, length)))


def input_data(path: Path, batch: int, length: int, width: int, batched: bool, seed: int = 0) -> None:
    """perf_analyzer's --input-data file for one request of (batch, length): self-attention inputs and the
    padding mask, as base64 bytes. `batched` (the model's config has max_batch_size > 0): one entry per sequence,
    without the batch dim, run with -b batch; otherwise one entry with the whole tensors."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((batch, length, width), dtype=np.float32)
    mask = padding_mask(batch, length)

    def tensor(a):
        return {"b64": base64.b64encode(np.ascontiguousarray(a).tobytes()).decode(), "shape": list(a.shape)}

    def entry(x, mask):
        return {"query": tensor(x), "key": tensor(x), "value": tensor(x), "mask": tensor(mask)}

    data = [entry(x[i], mask[i]) for i in range(batch)] if batched else [entry(x, mask)]
    path.write_text(json.dumps({"data": data}))


def model_stats(address: str) -> dict | None:
    """(compute-infer ns, its count, executions, successful requests) of MODEL from GET .../stats; None if absent."""
    try:
        status, body = http_json(f"http://{address}/v2/models/{MODEL}/stats")
        stats = body["model_stats"][0]
        return (
            {
                "ns": int(stats["inference_stats"]["compute_infer"]["ns"]),
                "count": int(stats["inference_stats"]["compute_infer"]["count"]),
                "executions": int(stats["execution_count"]),
                "requests": int(stats["inference_stats"]["success"]["count"]),
            }
            if status == 200
            else None
        )
    except (OSError, KeyError, IndexError, TypeError, ValueError):
        return None


def perf_analyzer(
    url: str,
    target: Target,
    data: Path,
    batch: int,
    concurrency: int,
    csv_path: Path,
    request_count: int | None = None,
    model: str = MODEL,
    window_ms: int = WINDOW_MS,
) -> dict:
    """One perf_analyzer run (a fixed `request_count`, or windows until stable); its CSV row, or RuntimeFailure
    with its first error line."""
    command = [
        str(tool("perf_analyzer")),
        "-m",
        model,
        "-u",
        url,
        "-i",
        target.protocol,
        "-b",
        str(batch),
        "--input-data",
        str(data),
        "--concurrency-range",
        str(concurrency),
        "-f",
        str(csv_path),
    ]
    if request_count:
        command += ["--request-count", str(request_count)]
    else:
        command += ["-p", str(window_ms), "-s", str(STABILITY), "-r", str(TRIALS)]
    if target.tensors == "json":
        command += ["--input-tensor-format", "json", "--output-tensor-format", "json"]
    csv_path.unlink(missing_ok=True)
    result = subprocess.run(command, capture_output=True, text=True, timeout=600)
    if result.returncode != 0 or not csv_path.exists():
        lines = [line.strip() for line in (result.stdout + result.stderr).splitlines() if line.strip()]
        errors = [line for line in lines if "rror" in line or "ailed" in line] or lines[-1:] or ["no output"]
        raise RuntimeFailure(f"perf_analyzer exited with {result.returncode}: {errors[0]}")
    with open(csv_path) as f:
        return next(csv.DictReader(f))


def tool_version(path: Path) -> str | None:
    """What `path --version` says its version is (perf_analyzer prints "Perf Analyzer Version X.Y.Z (commit
    ...)": X.Y.Z); None where it does not say."""
    import re

    try:
        result = subprocess.run([str(path), "--version"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    found = re.search(r"[Vv]ersion\s+(\d+(?:\.\d+)+)", result.stdout + result.stderr)
    return found[1] if result.returncode == 0 and found else None


def served_versions(server: str, address: str) -> dict[str, str]:
    """The versions a running server states: its own, from the Open Inference Protocol's server metadata
    (GET /v2: {"name": "triton", "version": "X.Y.Z"}, keyed by that name), and for the Node service `node
    --version`. A server that does not say is left out."""
    versions = {}
    try:
        status, body = http_json(f"http://{address}/v2")
    except OSError:
        status, body = None, None
    if status == 200 and isinstance(body, dict) and body.get("version"):
        versions[str(body.get("name") or server)] = str(body["version"])
    if server == "node":
        node = subprocess.run(["node", "--version"], capture_output=True, text=True).stdout.strip()
        if node:
            versions["node"] = node
    return versions


def _export(folder: Path, heads: int, embedding_dim: int, queue_delay_us: int) -> tuple[Path, Path]:
    """The model (mask input, float32, random weights seed 0) as a bundle and a Python-backend Triton repository,
    written by export-attn's pipeline (export-attn --bundle B --triton-repo R --triton-backend python)."""
    from attn_onnx.deploy.forms import Bundle, TritonRepo
    from attn_onnx.deploy.forms.pipeline import export_model
    from attn_onnx.exporter.spec import ExportSpec

    bundle, repo = folder / "bundle", folder / "repo"
    export_model(
        ExportSpec(heads=heads, embedding_dim=embedding_dim),
        Bundle(bundle, MODEL),
        TritonRepo(repo, MODEL, backend="python", max_queue_delay_us=queue_delay_us),
        seed=0,
        check=False,
    )
    return bundle, repo


def _measure(bench: ServeBench, name: str, address: str, url: str, shapes, folder: Path, on_line) -> None:
    """Every shape and concurrency of one target, rows appended to `bench`."""
    target = TARGETS[name]
    status, config = http_json(f"http://{address}/v2/models/{MODEL}/config")
    batched = status == 200 and isinstance(config, dict) and int(config.get("max_batch_size", 0)) > 0
    for batch, length in shapes:
        data = folder / f"data-{name}-{batch}x{length}.json"
        input_data(data, batch, length, bench.embedding_dim, batched)
        per_request = batch if batched else 1
        try:
            perf_analyzer(url, target, data, per_request, 1, folder / "warmup.csv", request_count=WARMUP_REQUESTS)
        except RuntimeFailure as exc:
            bench.rows += [Row(name, batch, length, c, error=str(exc)) for c in CONCURRENCY]
            on_line(f"  {name} ({batch},{length}): {exc}")
            continue
        for concurrency in CONCURRENCY:
            row = Row(name, batch, length, concurrency)
            before = model_stats(address)
            try:
                try:
                    result = perf_analyzer(url, target, data, per_request, concurrency, folder / "row.csv")
                except RuntimeFailure as exc:
                    if "stable measurement" not in str(exc):
                        raise
                    on_line(
                        f"  {name} ({batch},{length}) c{concurrency}: unsettled; again with windows of "
                        f"{2 * WINDOW_MS} ms"
                    )
                    result = perf_analyzer(
                        url, target, data, per_request, concurrency, folder / "row.csv", window_ms=2 * WINDOW_MS
                    )
            except RuntimeFailure as exc:
                row.error = str(exc)
            else:
                row.throughput = float(result["Inferences/Second"]) / per_request  # perf_analyzer counts -b
                row.p50_us, row.p99_us = float(result["p50 latency"]), float(result["p99 latency"])
            after = model_stats(address)
            if before and after and after["count"] > before["count"]:
                row.compute_infer_us = (after["ns"] - before["ns"]) / (after["count"] - before["count"]) / 1e3
                row.requests = after["requests"] - before["requests"]
                row.executions = after["executions"] - before["executions"]
            bench.rows.append(row)
            on_line(f"  {line(row)}")


def run_serve_bench(
    targets: list[str], shapes=SHAPES, heads: int = 8, embedding_dim: int = 512, queue_delay_us: int = 0, on_line=print
) -> ServeBench:
    """Export the model once, serve it with each server the targets need, and measure every target."""
    import onnxruntime

    from attn_onnx.timing.engine import cpu_model

    # every version is asked of the tool or server itself; one that does not say is left out
    versions = {
        "perf_analyzer": tool_version(tool("perf_analyzer")),  # RuntimeFailure saying how to get it
        "onnxruntime": onnxruntime.__version__,
    }  # this process's: the export's (Triton's venv is pinned to it)
    bench = ServeBench(
        cpu_model(), heads, embedding_dim, queue_delay_us, versions={k: v for k, v in versions.items() if v}
    )
    bench.load.append(os.getloadavg()[0])
    with tempfile.TemporaryDirectory(prefix="attn-serve-") as tmp:
        folder = Path(tmp)
        on_line(f"exporting the model ({heads} heads, width {embedding_dim}) into a bundle and a Triton repository")
        bundle, repo = _export(folder, heads, embedding_dim, queue_delay_us)
        for server in ("triton", "node"):
            names = [n for n in targets if TARGETS[n].server == server]
            if not names:
                continue
            try:
                with (
                    TritonServer(repo, log_path=folder / "triton.log")
                    if server == "triton"
                    else NodeService(bundle, log_path=folder / "node.log")
                ) as running:
                    on_line(f"{server}: serving on {running.http} (HTTP), {running.grpc} (gRPC)")
                    bench.versions.update(served_versions(server, running.http))
                    for name in names:
                        url = running.grpc if TARGETS[name].protocol == "grpc" else running.http
                        _measure(bench, name, running.http, url, shapes, folder, on_line)
            except (RuntimeFailure, OSError) as exc:
                for name in names:
                    if not any(r.target == name for r in bench.rows):
                        bench.not_run[name] = str(exc)
                on_line(f"{server}: not run: {exc}")
    bench.load.append(os.getloadavg()[0])
    return bench


def line(row: Row) -> str:
    """One row as text."""
    head = f"{row.target:<12}({row.batch},{row.length})".ljust(24) + f"c{row.concurrency}"
    if row.error:
        return f"{head}  failed: {row.error}"
    assert row.p50_us is not None and row.p99_us is not None  # a row without an error was measured
    infer = f"{row.compute_infer_us:10.0f}" if row.compute_infer_us is not None else f"{'-':>10}"
    batching = f"{row.executions}/{row.requests}" if row.requests is not None else "-"
    return f"{head}{row.throughput:10.1f}{row.p50_us / 1e3:9.2f}{row.p99_us / 1e3:9.2f}{infer}{batching:>14}"


def table(bench: ServeBench) -> str:
    lines = [
        f"bench-attn serve: {bench.cpu} ({os.cpu_count()} CPUs); width {bench.embedding_dim}, {bench.heads} "
        f"heads, self-attention with a padding mask, float32; Triton's max_queue_delay_microseconds "
        f"{bench.queue_delay_us}; perf_analyzer windows of {bench.window_ms} ms; load average "
        f"{' -> '.join(f'{x:.1f}' for x in bench.load) or '-'}; "
        + ", ".join(f"{k} {v}" for k, v in bench.versions.items()),
        f"{'target':<12}{'shape':<12}conc{'req/s':>10}{'p50 ms':>9}{'p99 ms':>9}{'infer us':>10}{'execs/reqs':>14}",
    ]
    lines += [line(row) for row in bench.rows]
    lines += [f"{name:<12}not run: {why}" for name, why in bench.not_run.items()]
    lines.append(
        "infer us: the server's compute-infer time per request, from its statistics (a batched "
        "execution counts its whole time for each of its requests); execs/reqs: executions and "
        "requests the server counted during the row"
    )
    return "\n".join(lines)
